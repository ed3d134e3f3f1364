//! The shipped default, `--upstream-http auto`, against the simulator over HTTPS as
//! `qrlink simulate --tls` serves it: the gateway speaks what ALPN agreed (HTTP/2 streams, or a
//! connection per pending long poll when the server offers only HTTP/1.1), trusts the
//! self-signed certificate only through `--upstream-ca-file`, and links accounts either way.

use std::process::Stdio;
use std::time::Duration;

use crate::common::binary::start_binary_with;
use crate::common::{
    TestGateway, TestSimulator, WAIT, WsClient, ends_with_the_account, sim_config,
};
use qrlink::simulator::{Alpn, PollOutcome};
use qrlink::{Config, Gateway};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Opens `n` attempts, waits until each has its long poll pending upstream, and returns the
/// clients with their intents.
async fn pending(gw: &TestGateway, n: usize) -> Vec<(WsClient, String)> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let mut client = gw.connect("/ws/link/whatsapp").await;
        let intent = client.qr().await.intent_id;
        gw.wait_for_poll(&intent, PollOutcome::Pending).await;
        clients.push((client, intent));
    }
    clients
}

async fn gateway(alpn: Alpn, args: &[&str]) -> TestGateway {
    let sim = TestSimulator::start_tls(sim_config(Duration::from_secs(30), 2), alpn).await;
    TestGateway::in_front_of(sim, args).await
}

#[tokio::test]
async fn by_default_a_tls_upstream_offering_h2_carries_every_long_poll_on_one_connection() {
    for alpn in [Alpn::Both, Alpn::H2] {
        let gw = gateway(alpn, &[]).await;
        let clients = pending(&gw, 10).await;
        assert_eq!(
            gw.sim().connections_accepted(),
            1,
            "{alpn:?}: ten pending polls"
        );
        assert_eq!(gw.state.upstream.http2_connections(), Some(1), "{alpn:?}");
        for (mut client, intent) in clients {
            gw.sim().scan(&intent).unwrap();
            ends_with_the_account(&mut client).await;
        }
        gw.wait_for_no_sessions().await;
    }
}

#[tokio::test]
async fn by_default_a_tls_upstream_offering_only_http_1_1_gets_a_connection_per_pending_poll() {
    let gw = gateway(Alpn::Http1, &[]).await;
    let clients = pending(&gw, 10).await;
    // Ten long polls pending, each on its own connection; the intents' short calls reused
    // idle ones, so there are no more connections than that plus the few idle.
    let accepted = gw.sim().connections_accepted();
    assert!(
        (10..=12).contains(&accepted),
        "{accepted} connections for 10 pending polls"
    );
    assert_eq!(gw.state.upstream.http2_connections(), Some(0));
    for (mut client, intent) in clients {
        gw.sim().scan(&intent).unwrap();
        ends_with_the_account(&mut client).await;
    }
    gw.wait_for_no_sessions().await;
    assert!(
        gw.state.upstream.idle_http1_connections() >= 1,
        "the answered polls' connections are kept"
    );
}

#[tokio::test]
async fn http2_only_against_a_server_that_refuses_h2_ends_the_attempt_with_a_clear_error() {
    let gw = gateway(
        Alpn::Http1,
        &["--upstream-http", "2", "--upstream-retry-budget", "200ms"],
    )
    .await;
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let error = client.error().await;
    assert_eq!(error.code, "gateway/upstream_unavailable");
    assert_eq!(
        gw.sim().connections_accepted(),
        1,
        "HTTP/2 refused: nothing else tried"
    );
}

#[tokio::test]
async fn without_the_ca_file_the_self_signed_certificate_is_refused() {
    let sim = TestSimulator::start_tls(sim_config(Duration::from_secs(30), 2), Alpn::Both).await;
    let url = sim.url();
    // The simulator's file is not given: only the web roots are trusted.
    let plain = TestGateway::with(
        sim_config(Duration::from_secs(30), 2),
        &[
            "--unipile-api-url",
            &url,
            "--upstream-retry-budget",
            "200ms",
        ],
    )
    .await;
    let mut client = plain.connect("/ws/link/whatsapp").await;
    assert_eq!(client.error().await.code, "gateway/upstream_unavailable");
    assert!(sim.sim.intent_ids().is_empty(), "no request got through");
}

#[test]
fn a_ca_file_that_is_missing_or_holds_no_certificate_stops_the_gateway_at_start() {
    let empty = std::env::temp_dir().join(format!("qrlink-test-empty-{}.pem", std::process::id()));
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for (file, says) in [
        (empty.display().to_string(), "no PEM certificate"),
        ("/nonexistent/ca.pem".to_owned(), "/nonexistent/ca.pem"),
    ] {
        let config = Config::from_args([
            "--unipile-api-key",
            "k",
            "--unipile-api-url",
            "https://localhost:1",
            "--upstream-ca-file",
            &file,
        ])
        .unwrap();
        let err = Gateway::new(config, "127.0.0.1:0".parse().unwrap())
            .expect_err("the gateway refuses to start")
            .to_string();
        assert!(
            err.contains("--upstream-ca-file") && err.contains(says),
            "{err}"
        );
    }
    let _ = std::fs::remove_file(empty);
}

#[tokio::test]
async fn qrlink_simulate_tls_writes_its_certificate_and_the_binary_with_its_defaults_links_through_it()
 {
    let cert =
        std::env::temp_dir().join(format!("qrlink-test-simulate-{}.pem", std::process::id()));
    let mut sim = Command::new(env!("CARGO_BIN_EXE_qrlink"))
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            crate::common::API_KEY,
            "--tls",
        ])
        .arg("--cert-out")
        .arg(&cert)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("qrlink simulate starts");
    let mut lines = BufReader::new(sim.stderr.take().unwrap()).lines();
    let port = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("UNIPILE_API_URL at https://").nth(1) {
                let addr = rest.split(' ').next().unwrap();
                return addr.rsplit(':').next().unwrap().to_owned();
            }
        }
        panic!("qrlink simulate --tls ended without saying where it listens");
    })
    .await
    .expect("qrlink simulate --tls says where it listens");
    assert!(
        std::fs::read_to_string(&cert)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    // The gateway binary with its defaults (auto), trusting the written certificate.
    let gw = start_binary_with(
        &format!("https://localhost:{port}"),
        "info",
        &["--upstream-ca-file", &cert.display().to_string()],
        &[],
    )
    .await;
    let mut client = WsClient::connect(&format!("ws://{}/ws/link/whatsapp", gw.addr)).await;
    let qr = client.qr().await;
    // Plain HTTP on the same port reaches the control API: scan, then the account arrives.
    let scanned = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/_control/scan/{}",
            qr.intent_id
        ))
        .send()
        .await
        .unwrap();
    assert!(scanned.status().is_success(), "{}", scanned.status());
    ends_with_the_account(&mut client).await;
    let _ = std::fs::remove_file(cert);
}
