//! The real binary: SIGTERM during open sessions, and what its logs may never contain.

use std::process::Stdio;
use std::time::Duration;

use crate::common::binary::{start_binary, start_binary_with};
use crate::common::receiver::{Answer, Receiver};
use crate::common::{API_KEY, TestSimulator, WAIT, WsClient, frames_until_close, sim_config};
use qrlink::http::auth::{Claims, mint, now_secs};
use qrlink::link::protocol::{ServerFrame, close};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TOKEN_SECRET: &str = "process-test-token-secret";
/// Two webhook secrets (rotation): both sign every webhook.
const WEBHOOK_SECRETS: &str =
    "whsec_cHJvY2Vzcy10ZXN0LXdlYmhvb2stb25l whsec_cHJvY2Vzcy10ZXN0LXdlYmhvb2stdHdv";

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
    sigterm_ends_every_session_and_the_process(&mut bin.child, &mut clients).await;
}

/// SIGTERM: each of `clients` gets `gateway/shutting_down` (retryable) and close 1001, and the
/// process exits with success within the grace period.
async fn sigterm_ends_every_session_and_the_process(child: &mut Child, clients: &mut [WsClient]) {
    sigterm(child);
    for c in clients {
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
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the process exits within the grace period")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn neither_the_api_key_nor_tokens_nor_any_qr_string_appear_in_trace_logs() {
    let sim = TestSimulator::start(sim_config(Duration::from_millis(200), 3)).await;
    // Webhooks on, the first attempt refused, so retries log too.
    let receiver = Receiver::scripted([Answer::Status(500)]).await;
    let hooks = receiver.url();
    let bin = start_binary_with(
        &sim.url(),
        "trace",
        &["--token-secret", TOKEN_SECRET, "--webhook-url", &hooks],
        &[
            ("QRLINK_WEBHOOK_SECRET", WEBHOOK_SECRETS),
            ("QRLINK_WEBHOOK_RETRY_SCALE", "0.01"),
        ],
    )
    .await;
    let token = mint(
        TOKEN_SECRET,
        &Claims {
            sub: "user-7".into(),
            exp: now_secs() + 300,
            iat: Some(now_secs()),
            provider: None,
            account_id: None,
            proxy: None,
        },
    );

    // A scanned flow with every rendering, a timed-out flow, and an upstream error.
    let mut c = WsClient::connect(&format!(
        "ws://{}/ws/link/whatsapp?qr=svg,text,raw&token={token}",
        bin.addr
    ))
    .await;
    let qr = c.qr().await;
    sim.sim.scan(&qr.intent_id).unwrap();
    let (frames, _) = frames_until_close(&mut c).await;
    let ServerFrame::Account { result, .. } = &frames.last().unwrap().frame else {
        panic!("expected the account, got {frames:?}");
    };
    let result = result.clone().expect("a result token");

    let mut c = WsClient::connect(&format!(
        "ws://{}/ws/link/telegram?qr=raw&token={token}",
        bin.addr
    ))
    .await;
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
    let mut c =
        WsClient::connect(&format!("ws://{}/ws/link/whatsapp?token={token}", bin.addr)).await;
    let err = c.error().await;
    assert_eq!(err.code, "api/already_exists");

    // A resumed flow (resume is on by default): its token travels in a URL too.
    let mut c =
        WsClient::connect(&format!("ws://{}/ws/link/whatsapp?token={token}", bin.addr)).await;
    let first = c.frame().await;
    let resume = first.resume.clone().expect("resume is on by default");
    drop(c);
    let mut c = WsClient::connect(&format!(
        "ws://{}/ws/link/whatsapp?resume={resume}",
        bin.addr
    ))
    .await;
    let replay = c.frame().await;
    assert!(replay.replay, "{replay:?}");
    let ServerFrame::Qr(qr) = &replay.frame else {
        panic!("expected the qr replayed, got {replay:?}");
    };
    sim.sim.scan(&qr.intent_id).unwrap();
    let (frames, _) = frames_until_close(&mut c).await;
    assert!(matches!(
        frames.last().unwrap().frame,
        ServerFrame::Account { .. }
    ));

    // Four outcomes, the first webhook attempt refused and retried.
    let webhooks = receiver.wait_for(5).await;
    let logs = bin
        .wait_for_log(|l| {
            l.contains("link attempt resumed")
                && (l.contains("session ended by the gateway")
                    || l.matches("link attempt opened").count() >= 4)
                && l.contains("webhook attempt failed")
        })
        .await;
    assert!(
        !logs.contains(&result),
        "the result token leaked into the logs"
    );
    for secret in WEBHOOK_SECRETS.split(' ') {
        let key = secret.trim_start_matches("whsec_");
        assert!(!logs.contains(key), "a webhook secret leaked into the logs");
    }
    let mut signatures = 0;
    for w in &webhooks {
        for sig in w.header("webhook-signature").split(' ') {
            signatures += 1;
            let (_, b64) = sig.split_once(',').expect("v1,<base64>");
            assert!(
                !logs.contains(b64),
                "a webhook signature leaked into the logs"
            );
        }
    }
    assert_eq!(signatures, 10, "two signatures on each of five webhooks");
    assert!(
        logs.contains("link attempt opened"),
        "logs were captured:\n{logs}"
    );
    assert!(!logs.contains(API_KEY), "the API key leaked into the logs");
    assert!(
        !logs.contains(&token),
        "the connect token leaked into the logs"
    );
    assert!(
        !logs.contains(TOKEN_SECRET),
        "the token secret leaked into the logs"
    );
    let (_, resume_secret) = resume.split_once('.').expect("id.secret");
    assert!(
        !logs.contains(resume_secret),
        "the resume token leaked into the logs"
    );
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

#[tokio::test]
async fn a_quiet_log_level_keeps_the_websocket_libraries_quiet_too() {
    // The cap on tungstenite's level must never raise it: under `warn` a closed WebSocket used
    // to log two tungstenite `debug` lines.
    let sim = TestSimulator::start(sim_config(Duration::from_secs(30), 2)).await;
    let bin = start_binary(&sim.url(), "warn,qrlink=info").await;
    let mut c = WsClient::connect(&format!("ws://{}/ws/link/whatsapp", bin.addr)).await;
    c.qr().await;
    c.send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    // The gateway reads the Close (where tungstenite would log), then logs the disconnect.
    let logs = bin
        .wait_for_log(|l| l.contains("client disconnected"))
        .await;
    assert!(
        !logs.contains("tungstenite") && !logs.contains("DEBUG"),
        "debug lines under RUST_LOG=warn:\n{logs}"
    );
}

#[tokio::test]
async fn qrlink_token_mints_a_token_the_gateway_accepts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qrlink"))
        .args(["token", "--secret", TOKEN_SECRET, "--sub", "user-9"])
        .args(["--provider", "whatsapp", "--ttl", "2m"])
        .output()
        .expect("qrlink token runs");
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let claims = qrlink::http::auth::verify(
        TOKEN_SECRET,
        Duration::from_secs(600),
        Some(&token),
        "whatsapp",
    )
    .expect("the minted token verifies");
    assert_eq!(claims.sub, "user-9");
    assert!(claims.exp <= now_secs() + 120);

    let sim = TestSimulator::start(sim_config(Duration::from_secs(30), 2)).await;
    let bin = start_binary_with(&sim.url(), "info", &["--token-secret", TOKEN_SECRET], &[]).await;
    let mut c =
        WsClient::connect(&format!("ws://{}/ws/link/whatsapp?token={token}", bin.addr)).await;
    let qr = c.qr().await;
    sim.sim.scan(&qr.intent_id).unwrap();
    let (account_id, result) = match c.frame().await.frame {
        ServerFrame::Account {
            state,
            account,
            result,
        } => {
            assert_eq!(state.as_deref(), Some("user-9"));
            (account["id"].clone(), result.expect("a result token"))
        }
        other => panic!("expected an account frame, got {other:?}"),
    };

    // `qrlink verify-result` checks it by hand, with the secret from the environment.
    let verify = |secret: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_qrlink"))
            .args(["verify-result", &result])
            .env("QRLINK_TOKEN_SECRET", secret)
            .output()
            .expect("qrlink verify-result runs")
    };
    let out = verify(TOKEN_SECRET);
    assert!(out.status.success(), "{out:?}");
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["account_id"], account_id);
    assert_eq!(claims["sub"], "user-9");
    assert_eq!(claims["provider"], "whatsapp");
    assert_eq!(claims["iss"], "qrlink");
    let out = verify("not-the-secret");
    assert!(!out.status.success(), "a forged token must fail: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad signature"), "{stderr}");
    assert!(
        !stderr.contains(&result),
        "the token is not echoed: {stderr}"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_session_span() {
    let sim = TestSimulator::start(sim_config(Duration::from_secs(30), 2)).await;
    let bin = start_binary_with(&sim.url(), "info", &[], &[("QRLINK_LOG_FORMAT", "json")]).await;
    let mut c = WsClient::connect(&format!("ws://{}/ws/link/telegram", bin.addr)).await;
    c.qr().await;
    drop(c);
    // The disconnect is logged by the session's task; wait for that line to arrive.
    let logs = bin
        .wait_for_log(|l| l.contains("client disconnected"))
        .await;
    let mut session_lines = 0;
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["span"]["name"] == "session" {
            session_lines += 1;
            assert!(
                v["span"]["id"].as_str().unwrap().starts_with("ses_"),
                "{line}"
            );
            assert_eq!(v["span"]["provider"], "telegram", "{line}");
        }
    }
    assert!(
        session_lines >= 2,
        "opened and disconnected inside the span:\n{logs}"
    );
}

#[tokio::test]
async fn qrlink_simulate_serves_the_unipile_api_on_its_own_and_requires_its_key() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qrlink"))
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            "sim-key",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("qrlink simulate starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("UNIPILE_API_URL at http://").nth(1) {
                return rest.split([' ', '/']).next().unwrap().to_owned();
            }
        }
        panic!("qrlink simulate ended without saying where it listens");
    })
    .await
    .expect("qrlink simulate says where it listens");
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v2/auth/intent");
    let body = serde_json::json!({"provider": "whatsapp", "credentials": {"qrcode": true}});
    let refused = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let answer: serde_json::Value = http
        .post(&url)
        .header("x-api-key", "sim-key")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["object"], "AuthenticationQrCode");
    assert!(answer["intent_id"].as_str().unwrap().starts_with("acc_"));
}

#[tokio::test]
async fn startup_refuses_bad_webhook_settings_with_one_clear_line() {
    for (args, says) in [
        (
            &["--webhook-url", "https://app.example/hooks"][..],
            "--webhook-url needs --webhook-secret",
        ),
        (
            &[
                "--webhook-url",
                "https://app.example/hooks",
                "--webhook-secret",
                "hunter2",
            ][..],
            "does not start with whsec_",
        ),
        (
            &[
                "--webhook-url",
                "https://app.example/hooks",
                "--webhook-secret",
                "whsec_!!",
            ][..],
            "not whsec_ followed by base64",
        ),
        (
            &[
                "--webhook-url",
                "ftp://app.example/",
                "--webhook-secret",
                "whsec_c2VjcmV0",
            ][..],
            "must be an http:// or https:// URL",
        ),
    ] {
        let out = tokio::time::timeout(
            WAIT,
            Command::new(env!("CARGO_BIN_EXE_qrlink"))
                .args(["--listen", "127.0.0.1:0"])
                .args(args)
                .env_remove("QRLINK_WEBHOOK_SECRET")
                .env_remove("QRLINK_WEBHOOK_URL")
                // One line even where backtraces are asked for.
                .env("RUST_BACKTRACE", "1")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("the binary exits at once")
        .unwrap();
        assert!(!out.status.success(), "{args:?} must be refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line for {args:?}: {stderr}");
        assert!(lines[0].contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "no secret echoed: {stderr}");
    }
}

/// Voluntary context switches of each of `pid`'s threads named `qrlink-N` (the serving threads
/// after the first): a thread that nobody wakes, waiting in its runtime for work, has none.
fn serving_thread_wakeups(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("a Linux /proc") {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let name = name.trim();
        let serving = name.strip_prefix("qrlink-").map(str::parse::<usize>);
        if !matches!(serving, Some(Ok(_))) {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.insert(name.to_owned(), switches);
    }
    out
}

/// `--threads 3`: three threads, each with its own listening socket on the one port, every one
/// of them serving link attempts; another gateway cannot take the port; SIGTERM ends the
/// sessions of every thread with `gateway/shutting_down` and the process exits cleanly.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn with_three_serving_threads_each_serves_attempts_the_port_stays_ours_and_sigterm_ends_all()
{
    let sim = TestSimulator::start(sim_config(Duration::from_secs(30), 2)).await;
    let mut bin = start_binary_with(&sim.url(), "info", &["--threads", "3"], &[]).await;
    bin.wait_for_log(|l| l.contains("threads=3")).await;
    let pid = bin.child.id().expect("running");
    // The calling thread serves too, and two more (started just after the log line).
    let started = tokio::time::Instant::now();
    let before = loop {
        let threads = serving_thread_wakeups(pid);
        if threads.keys().eq(["qrlink-1", "qrlink-2"].iter()) {
            break threads;
        }
        assert!(started.elapsed() < WAIT, "serving threads: {threads:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // 60 connections from as many source ports: the kernel hashes each to one of the three
    // sockets, so that one thread gets none is a chance of 3 × (2/3)^60, about 1e-10.
    let mut clients = Vec::new();
    for i in 0..60 {
        let provider = ["whatsapp", "telegram", "google_messages"][i % 3];
        let mut c = WsClient::connect(&format!("ws://{}/ws/link/{provider}", bin.addr)).await;
        c.qr().await;
        clients.push(c);
    }
    let after = serving_thread_wakeups(pid);
    for (name, n) in &after {
        assert!(
            *n > before[name],
            "{name} served nothing: {before:?} → {after:?}"
        );
    }

    // Another gateway on the same address is refused (no SO_REUSEPORT sharing with it).
    let second = Command::new(env!("CARGO_BIN_EXE_qrlink"))
        .args(["--listen", &bin.addr, "--threads", "2"])
        .args([
            "--unipile-api-url",
            &sim.url(),
            "--unipile-api-key",
            API_KEY,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let second = tokio::time::timeout(WAIT, second)
        .await
        .expect("the second gateway exits at once")
        .unwrap();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains(&format!("cannot listen on {}", bin.addr)),
        "{said}"
    );

    sigterm_ends_every_session_and_the_process(&mut bin.child, &mut clients).await;
}
