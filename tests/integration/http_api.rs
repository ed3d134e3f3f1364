//! The plain HTTP side: health, readiness, providers, sessions, the embedded page, demo mode.

use crate::common;

use std::time::Duration;

use crate::common::{TestGateway, WAIT, WsClient, frames_until_close};
use qrlink::link::protocol::ServerFrame;
use qrlink::{Config, Gateway};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[tokio::test]
async fn health_and_readiness_answer_while_serving() {
    let gw = TestGateway::start().await;
    let health = reqwest::get(gw.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(gw.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn providers_lists_each_configured_provider_with_its_qr_lifetime() {
    let gw = TestGateway::start().await;
    let body: serde_json::Value = reqwest::get(gw.url("/api/providers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = body["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["qr_ttl_secs"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("whatsapp".to_owned(), 60),
            ("google_messages".to_owned(), 60),
            ("telegram".to_owned(), 30)
        ]
    );
}

#[tokio::test]
async fn sessions_lists_an_open_attempt_and_forgets_it_when_it_ends() {
    let gw = TestGateway::with(common::sim_config(Duration::from_secs(30), 2), &[]).await;
    let mut client = gw.connect("/ws/link/telegram").await;
    client.qr().await;
    let body: serde_json::Value = reqwest::get(gw.url("/api/sessions"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sessions = body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["provider"], "telegram");
    assert_eq!(sessions[0]["phase"], "qr");
    assert_eq!(sessions[0]["client"], "127.0.0.1");
    drop(client);
    gw.wait_for_no_sessions().await;
    let body: serde_json::Value = reqwest::get(gw.url("/api/sessions"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["sessions"], serde_json::json!([]));
}

#[tokio::test]
async fn the_link_page_is_served_with_a_strict_content_security_policy() {
    let gw = TestGateway::start().await;
    let page = reqwest::get(gw.url("/")).await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert!(page.text().await.unwrap().contains("app.js"));
    let js = reqwest::get(gw.url("/app.js")).await.unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let missing = reqwest::get(gw.url("/nope.txt")).await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// `cargo run` with no API key: the gateway calls its own embedded simulator, and the QR codes
/// encode the simulator's scan page, which a phone (or this test) can open.
#[tokio::test]
async fn demo_mode_runs_the_whole_flow_against_the_embedded_simulator() {
    common::init_logs();
    let config = Config::from_args(["--listen", "127.0.0.1:0", "--demo-qr-ttl", "30s"]).unwrap();
    assert!(
        config.unipile_api_key.is_none(),
        "demo mode needs UNIPILE_API_KEY unset"
    );
    let listener = TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Gateway::new(config, addr).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(gateway.serve(listener, async move {
        let _ = stopped.await;
    }));

    let page: serde_json::Value = reqwest::get(format!("http://{addr}/config.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["demo"], true);
    assert_eq!(page["simulator"], "/simulator");
    assert_eq!(page["resume_grace_secs"], 120.0, "resume is on by default");
    // The countdown follows the embedded simulator's codes (`--demo-qr-ttl 30s`, Telegram half).
    let ttl = |id: &str| {
        page["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["qr_ttl_secs"].as_u64().unwrap())
    };
    assert_eq!((ttl("whatsapp"), ttl("telegram")), (Some(30), Some(15)));

    let mut client = WsClient::connect(&format!("ws://{addr}/ws/link/whatsapp?qr=raw")).await;
    let qr = client.qr().await;
    let expires = humantime::parse_rfc3339(&qr.expires_at).unwrap();
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left > Duration::from_secs(25) && left <= Duration::from_secs(30),
        "the demo code lives 30 s, expires_at says {left:?}"
    );
    let raw = qr.raw.clone().unwrap();
    let scan_url = format!("http://{addr}/simulator/scan/{}", qr.intent_id);
    assert!(
        raw.starts_with(&scan_url),
        "demo QR {raw} should open {scan_url}"
    );
    let scan_page = reqwest::get(&raw).await.unwrap();
    assert_eq!(scan_page.status(), 200);

    let scanned = reqwest::Client::new().post(&scan_url).send().await.unwrap();
    assert!(scanned.status().is_success(), "{}", scanned.status());
    let (frames, _) = tokio::time::timeout(WAIT, frames_until_close(&mut client))
        .await
        .unwrap();
    assert!(
        matches!(frames.last().unwrap().frame, ServerFrame::Account { .. }),
        "{frames:?}"
    );
    let _ = stop.send(());
}

/// `GET /api/stats` as JSON.
async fn stats_of(gw: &TestGateway) -> serde_json::Value {
    let resp = reqwest::get(gw.url("/api/stats")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn stats_count_this_nodes_endings_its_open_sessions_and_time_to_scan() {
    let gw = TestGateway::with(
        common::sim_config(Duration::from_secs(30), 2),
        &["--node-id", "solo"],
    )
    .await;
    let before = stats_of(&gw).await;
    assert_eq!(
        (&before["node"], &before["cluster"], &before["complete"]),
        (
            &serde_json::json!("solo"),
            &serde_json::json!(false),
            &serde_json::json!(true)
        )
    );
    assert_eq!(before["nodes"].as_array().unwrap().len(), 1, "{before}");
    assert_eq!(before["total"]["ended"]["account"], 0);

    let mut linked = gw.connect("/ws/link/whatsapp").await;
    let qr = linked.qr().await;
    let mut cancelled = gw.connect("/ws/link/telegram").await;
    cancelled.qr().await;
    let open = stats_of(&gw).await;
    assert_eq!(open["nodes"][0]["open"], 2, "{open}");
    assert_eq!(open["total"]["open"], 2, "{open}");

    gw.sim().scan(&qr.intent_id).unwrap();
    common::ends_with_the_account(&mut linked).await;
    cancelled
        .send_json(serde_json::json!({"type": "cancel"}))
        .await;
    frames_until_close(&mut cancelled).await;
    gw.wait_for_no_sessions().await;

    let after = stats_of(&gw).await;
    let node = &after["nodes"][0];
    assert_eq!(node["node"], "solo");
    assert_eq!(node["open"], 0);
    let ended = &node["ended"];
    assert_eq!(
        (
            &ended["account"],
            &ended["cancelled"],
            &ended["timeout"],
            &ended["error"]
        ),
        (&1.into(), &1.into(), &0.into(), &0.into()),
        "{after}"
    );
    let scans = &node["time_to_scan"];
    let counts: Vec<u64> = serde_json::from_value(scans["counts"].clone()).unwrap();
    assert_eq!(counts.iter().sum::<u64>(), 1, "one linked: {scans}");
    assert_eq!(counts[0], 1, "scanned at once: under 2 s: {scans}");
    assert!(scans["sum_ms"].as_u64().unwrap() < 2_000, "{scans}");
    assert_eq!(
        after["total"]["ended"], node["ended"],
        "one node: the sums are its own"
    );
    assert_eq!(after["total"]["time_to_scan"], node["time_to_scan"]);
}

#[tokio::test]
async fn stats_need_the_admin_token_when_one_is_set() {
    let gw = TestGateway::with(
        common::sim_config(Duration::from_secs(30), 2),
        &["--admin-token", "s3cret"],
    )
    .await;
    let refused = reqwest::get(gw.url("/api/stats")).await.unwrap();
    assert_eq!(refused.status(), 401);
    let allowed = reqwest::Client::new()
        .get(gw.url("/api/stats"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
}
