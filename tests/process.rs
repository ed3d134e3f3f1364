//! The real binary: SIGTERM during open sessions, and what its logs may never contain.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{API_KEY, TestSimulator, WAIT, WsClient, frames_until_close, sim_config};
use qrlink::protocol::{ServerFrame, close};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// The binary, its address, and everything it logged so far.
struct Running {
    child: Child,
    addr: String,
    logs: Arc<Mutex<String>>,
}

async fn start_binary(upstream: &str, rust_log: &str) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qrlink"))
        .args(["--listen", "127.0.0.1:0", "--unipile-api-url", upstream])
        .args(["--unipile-api-key", API_KEY, "--shutdown-grace", "5s"])
        .args(["--max-sessions-per-ip", "1000"])
        .env("RUST_LOG", rust_log)
        .env_remove("QRLINK_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the qrlink binary starts");
    let logs = Arc::new(Mutex::new(String::new()));
    let (addr_tx, addr_rx) = oneshot::channel();
    let mut addr_tx = Some(addr_tx);
    for stream in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let logs = logs.clone();
        let mut addr_tx = addr_tx.take();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("open http://").nth(1) {
                    if let Some(tx) = addr_tx.take() {
                        let addr = rest.split(['/', ' ']).next().unwrap_or_default();
                        let _ = tx.send(addr.to_owned());
                    }
                }
                let mut l = logs.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let addr = tokio::time::timeout(WAIT, addr_rx)
        .await
        .expect("the binary says where it listens")
        .expect("the binary printed its address");
    Running { child, addr, logs }
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_during_open_sessions_gives_each_shutting_down_and_the_process_exits_cleanly() {
    let sim = TestSimulator::start(sim_config(Duration::from_secs(30), 2)).await;
    let mut bin = start_binary(&sim.url(), "info").await;
    let mut clients = Vec::new();
    for provider in ["whatsapp", "telegram", "google_messages", "whatsapp"] {
        let mut c = WsClient::connect(&format!("ws://{}/ws/link/{provider}", bin.addr)).await;
        c.qr().await;
        clients.push(c);
    }
    sigterm(&bin.child);
    for c in &mut clients {
        let (frames, code) = frames_until_close(c).await;
        match &frames[..] {
            [f] => match &f.frame {
                ServerFrame::Error(e) => {
                    assert_eq!(e.code, "gateway/shutting_down");
                    assert!(e.retryable);
                }
                other => panic!("expected shutting_down, got {other:?}"),
            },
            other => panic!("expected one error frame, got {other:?}"),
        }
        assert_eq!(code, close::GOING_AWAY);
    }
    let status = tokio::time::timeout(WAIT, bin.child.wait())
        .await
        .expect("the process exits within the grace period")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn neither_the_api_key_nor_any_qr_string_appears_in_trace_logs() {
    let sim = TestSimulator::start(sim_config(Duration::from_millis(200), 3)).await;
    let bin = start_binary(&sim.url(), "trace").await;

    // A scanned flow with every rendering, a timed-out flow, and an upstream error.
    let mut c = WsClient::connect(&format!(
        "ws://{}/ws/link/whatsapp?qr=svg,text,raw",
        bin.addr
    ))
    .await;
    let qr = c.qr().await;
    sim.sim.scan(&qr.intent_id).unwrap();
    let (frames, _) = frames_until_close(&mut c).await;
    assert!(matches!(
        frames.last().unwrap().frame,
        ServerFrame::Account { .. }
    ));

    let mut c = WsClient::connect(&format!("ws://{}/ws/link/telegram?qr=raw", bin.addr)).await;
    let (frames, _) = frames_until_close(&mut c).await;
    assert!(matches!(
        frames.last().unwrap().frame,
        ServerFrame::Timeout { .. }
    ));

    sim.sim.push_fault(
        qrlink::simulator::Endpoint::Intent,
        qrlink::simulator::Fault::Error {
            error_type: "api/already_exists".into(),
            status: 403,
            detail: Some("acc_secret_existing_account".into()),
        },
    );
    let mut c = WsClient::connect(&format!("ws://{}/ws/link/whatsapp", bin.addr)).await;
    let err = c.error().await;
    assert_eq!(err.code, "api/already_exists");

    let logs = bin.logs.lock().unwrap().clone();
    assert!(
        logs.contains("link attempt opened"),
        "logs were captured:\n{logs}"
    );
    assert!(!logs.contains(API_KEY), "the API key leaked into the logs");
    assert!(
        !logs.contains("acc_secret_existing_account"),
        "upstream detail leaked into the logs"
    );
    let mut checked = 0;
    for intent in sim.sim.intent_ids() {
        for code in sim.sim.issued_qrs(&intent) {
            checked += 1;
            assert!(
                !logs.contains(&code),
                "QR string {code} leaked into the logs"
            );
        }
    }
    assert!(
        checked >= 4,
        "expected several QR strings to check, got {checked}"
    );
}
