//! Webhooks (DESIGN.md section 10): every outcome POSTed to a real receiver over TCP, signed
//! as Standard Webhooks 1.0 and checked with the official `standardwebhooks` library; retries
//! under the same id on the (scaled) schedule, `Retry-After`, 410, the timeout, rotation.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::receiver::{Answer, Received, Receiver};
use crate::common::{TestGateway, WAIT, WsClient, frames_until_close, sim_config};
use qrlink::http::auth::{Claims, mint, now_secs};
use qrlink::link::protocol::ServerFrame;
use qrlink::notify::Deliveries;
use qrlink::notify::journal::Status;
use qrlink::simulator::{Endpoint, Fault};
use serde_json::{Value, json};
use standardwebhooks::Webhook;

pub(crate) const SECRET: &str = "whsec_dGVzdC13ZWJob29rLXNlY3JldC1vbmU=";
const OTHER_SECRET: &str = "whsec_dGVzdC13ZWJob29rLXNlY3JldC10d28=";
const TOKEN_SECRET: &str = "webhook-tests-connect-token-secret";

/// A gateway that POSTs outcomes to `receiver`, with connect tokens on (so `state` is set)
/// and `extra` flags last.
async fn gateway(receiver: &Receiver, extra: &[&str]) -> TestGateway {
    let url = receiver.url();
    let mut args = vec![
        "--webhook-url",
        &url,
        "--webhook-secret",
        SECRET,
        "--token-secret",
        TOKEN_SECRET,
        "--node-id",
        "node-under-test",
    ];
    args.extend_from_slice(extra);
    TestGateway::with(sim_config(Duration::from_millis(300), 3), &args).await
}

fn token(sub: &str) -> String {
    mint(
        TOKEN_SECRET,
        &Claims {
            sub: sub.into(),
            exp: now_secs() + 300,
            iat: Some(now_secs()),
            provider: None,
            account_id: None,
            proxy: None,
        },
    )
}

async fn open(gw: &TestGateway, provider: &str, sub: &str) -> WsClient {
    gw.connect(&format!("/ws/link/{provider}?token={}", token(sub)))
        .await
}

/// A WhatsApp attempt cancelled by its client once its QR is shown: one `link.abandoned`.
async fn cancelled_attempt(gw: &TestGateway, sub: &str) {
    let mut c = open(gw, "whatsapp", sub).await;
    c.qr().await;
    c.send_json(json!({"type": "cancel"})).await;
}

async fn get_text(url: &str) -> String {
    let answer = reqwest::get(url).await.unwrap();
    assert!(answer.status().is_success(), "{url}: {}", answer.status());
    answer.text().await.unwrap()
}

/// Verifies a webhook with the official library and `secret`; returns its body.
pub(crate) fn verified(secret: &str, r: &Received) -> Value {
    Webhook::new(secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .unwrap_or_else(|e| panic!("webhook does not verify with {secret}: {e:?}"));
    r.json()
}

async fn wait_for_deliveries(gw: &TestGateway, pred: impl Fn(&Deliveries) -> bool) -> Deliveries {
    tokio::time::timeout(WAIT, gw.state.notifier.wait_for(pred))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "deliveries never got there: {:?}",
                gw.state.notifier.deliveries()
            )
        })
}

#[tokio::test]
async fn each_outcome_is_delivered_once_signed_and_with_its_data() {
    let receiver = Receiver::start().await;
    let gw = gateway(&receiver, &["--resume-grace", "300ms"]).await;
    let mut sessions = HashMap::new();

    // link.succeeded: scanned.
    let mut c = open(&gw, "whatsapp", "user-ok").await;
    let qr = c.qr().await;
    gw.sim().scan(&qr.intent_id).unwrap();
    let (frames, _) = frames_until_close(&mut c).await;
    let ServerFrame::Account { account, .. } = &frames.last().unwrap().frame else {
        panic!("expected the account, got {frames:?}");
    };
    sessions.insert(
        "user-ok",
        (frames[0].session.clone(), Some(qr.intent_id.clone())),
    );
    let account = account.clone();

    // link.failed: the upstream refuses the intent.
    gw.sim().push_fault(
        Endpoint::Intent,
        Fault::Error {
            error_type: "api/already_exists".into(),
            status: 403,
            detail: None,
        },
    );
    let mut c = open(&gw, "whatsapp", "user-failed").await;
    let (frames, _) = frames_until_close(&mut c).await;
    sessions.insert("user-failed", (frames[0].session.clone(), None));

    // link.expired: nobody scans.
    let mut c = open(&gw, "google_messages", "user-expired").await;
    let (frames, _) = frames_until_close(&mut c).await;
    assert!(matches!(
        frames.last().unwrap().frame,
        ServerFrame::Timeout { .. }
    ));
    let ServerFrame::Qr(q) = &frames[0].frame else {
        panic!("{frames:?}")
    };
    sessions.insert(
        "user-expired",
        (frames[0].session.clone(), Some(q.intent_id.clone())),
    );

    // link.abandoned, cancelled.
    let mut c = open(&gw, "telegram", "user-cancelled").await;
    let qr = c.frame().await;
    let ServerFrame::Qr(q) = &qr.frame else {
        panic!("{qr:?}")
    };
    sessions.insert(
        "user-cancelled",
        (qr.session.clone(), Some(q.intent_id.clone())),
    );
    c.send_json(json!({"type": "cancel"})).await;
    frames_until_close(&mut c).await;

    // link.abandoned, the page went away and the grace passed.
    let mut c = open(&gw, "whatsapp", "user-gone").await;
    let qr = c.frame().await;
    let ServerFrame::Qr(q) = &qr.frame else {
        panic!("{qr:?}")
    };
    sessions.insert("user-gone", (qr.session.clone(), Some(q.intent_id.clone())));
    drop(c);

    let got = receiver.wait_for(5).await;
    let feed = wait_for_deliveries(&gw, |d| {
        d.recent.len() == 5 && d.recent.iter().all(|e| e.status == Status::Delivered)
    })
    .await;
    assert_eq!(feed.pending, 0);
    assert_eq!(receiver.received().len(), 5, "each delivered once: {got:?}");

    let by_state: HashMap<String, (Value, &Received)> = got
        .iter()
        .map(|r| {
            let body = verified(SECRET, r);
            (
                body["data"]["state"].as_str().unwrap().to_owned(),
                (body, r),
            )
        })
        .collect();
    let expect = |state: &str, ty: &str, provider: &str, extra: (&str, Value)| {
        let (body, r) = &by_state[state];
        let (session, intent) = &sessions[state];
        assert_eq!(body["type"], ty, "{body}");
        let data = &body["data"];
        assert_eq!(data["session"], session.as_str(), "{body}");
        assert_eq!(data["provider"], provider, "{body}");
        assert_eq!(data["node"], "node-under-test", "{body}");
        assert_eq!(data["intent_id"], json!(intent), "{body}");
        assert!(data["duration_ms"].as_u64().is_some(), "{body}");
        assert_eq!(data[extra.0], extra.1, "{body}");
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
        assert!(r.header("webhook-id").starts_with("msg_"));
        let ts: u64 = r.header("webhook-timestamp").parse().unwrap();
        assert!(ts.abs_diff(now_secs()) <= 5);
        assert_eq!(r.header("content-type"), "application/json");
    };
    expect(
        "user-ok",
        "link.succeeded",
        "whatsapp",
        ("account", Value::Object(account)),
    );
    expect(
        "user-failed",
        "link.failed",
        "whatsapp",
        ("code", json!("api/already_exists")),
    );
    expect(
        "user-expired",
        "link.expired",
        "google_messages",
        ("reason", Value::Null),
    );
    expect(
        "user-cancelled",
        "link.abandoned",
        "telegram",
        ("reason", json!("cancelled")),
    );
    expect(
        "user-gone",
        "link.abandoned",
        "whatsapp",
        ("reason", json!("disconnected")),
    );
    let ids: std::collections::HashSet<_> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 5, "one id per webhook");
}

#[tokio::test]
async fn a_failed_attempt_is_retried_with_the_same_id_at_the_schedules_interval() {
    let receiver = Receiver::scripted([Answer::Status(500)]).await;
    // 5 s × 0.1 = 500 ms, ±20 % jitter.
    let gw = gateway(&receiver, &["--webhook-retry-scale", "0.1"]).await;
    cancelled_attempt(&gw, "user-retry").await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(got[0].body, got[1].body, "the same webhook");
    verified(SECRET, &got[0]);
    verified(SECRET, &got[1]);
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(400) && gap < Duration::from_millis(1600),
        "the first retry comes 5 s × 0.1 ± 20 % later, got {gap:?}"
    );
    let feed = wait_for_deliveries(&gw, |d| {
        d.recent
            .first()
            .is_some_and(|e| e.status == Status::Delivered)
    })
    .await;
    assert_eq!(feed.recent[0].attempts, 2, "{feed:?}");
    assert_eq!(feed.recent[0].event, "link.abandoned");
}

#[tokio::test]
async fn retry_after_is_honoured_over_a_shorter_schedule() {
    let receiver = Receiver::scripted([Answer::RetryAfter(503, "1")]).await;
    // The schedule alone would retry after 5 ms.
    let gw = gateway(&receiver, &["--webhook-retry-scale", "0.001"]).await;
    cancelled_attempt(&gw, "user-ra").await;
    let retrying = wait_for_deliveries(&gw, |d| {
        d.recent
            .first()
            .is_some_and(|e| e.status == Status::Retrying)
    })
    .await;
    assert_eq!(retrying.recent[0].last_status, Some(503));
    assert!(retrying.recent[0].next_retry_at.is_some(), "{retrying:?}");
    let got = receiver.wait_for(2).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "Retry-After: 1 waited, got {gap:?}"
    );
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
}

#[tokio::test]
async fn a_410_stops_every_delivery_to_the_url() {
    let receiver = Receiver::scripted([Answer::Status(410)]).await;
    let gw = gateway(&receiver, &["--webhook-retry-scale", "0.001"]).await;
    cancelled_attempt(&gw, "user-1").await;
    let feed = wait_for_deliveries(&gw, |d| d.gone).await;
    assert_eq!(feed.recent[0].status, Status::Gone);
    assert_eq!(feed.recent[0].last_status, Some(410));

    cancelled_attempt(&gw, "user-2").await;
    let feed = wait_for_deliveries(&gw, |d| d.recent.len() == 2).await;
    assert_eq!(feed.recent[0].status, Status::Gone, "{feed:?}");
    assert_eq!(feed.recent[0].attempts, 0, "never sent: {feed:?}");
    assert_eq!(feed.pending, 0);
    assert_eq!(receiver.received().len(), 1, "nothing after the 410");
}

#[tokio::test]
async fn a_receiver_that_hangs_is_cut_at_the_timeout_and_retried() {
    let receiver = Receiver::scripted([Answer::Hang]).await;
    let gw = gateway(
        &receiver,
        &[
            "--webhook-timeout",
            "500ms",
            "--webhook-retry-scale",
            "0.001",
        ],
    )
    .await;
    cancelled_attempt(&gw, "user-hang").await;
    let got = receiver.wait_for(2).await;
    // Measured where the receiver read each request, a little after the gateway's clock for
    // the first one started.
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(400) && gap < Duration::from_secs(3),
        "cut at 500 ms then retried after ~5 ms, got {gap:?}"
    );
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
}

#[tokio::test]
async fn two_secrets_give_two_signatures_that_each_verify() {
    let receiver = Receiver::start().await;
    let both = format!("{SECRET} {OTHER_SECRET}");
    let gw = gateway(&receiver, &["--webhook-secret", &both]).await;
    cancelled_attempt(&gw, "user-rotate").await;
    let got = receiver.wait_for(1).await;
    let signatures: Vec<&str> = got[0].header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    for (signature, secret, other) in [
        (signatures[0], SECRET, OTHER_SECRET),
        (signatures[1], OTHER_SECRET, SECRET),
    ] {
        assert!(signature.starts_with("v1,"), "{signature}");
        let mut alone = got[0].clone();
        alone
            .headers
            .insert("webhook-signature", signature.parse().unwrap());
        verified(secret, &alone);
        assert!(
            Webhook::new(other)
                .unwrap()
                .verify(&alone.body, &alone.headers)
                .is_err(),
            "a signature verifies with its own secret only"
        );
    }
}

#[tokio::test]
async fn pending_deliveries_get_the_shutdown_grace() {
    let receiver = Receiver::scripted([Answer::Status(503)]).await;
    // The retry comes ~500 ms after the failure, inside the 3 s grace.
    let mut gw = gateway(&receiver, &["--webhook-retry-scale", "0.1"]).await;
    cancelled_attempt(&gw, "user-shutdown").await;
    receiver.wait_for(1).await;
    gw.shut_down();
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    let served = gw.served.take().unwrap();
    tokio::time::timeout(WAIT, served)
        .await
        .expect("the gateway stops after the delivery")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_deliveries_feed_and_the_metrics_show_attempts_retries_and_pending() {
    let receiver = Receiver::scripted([Answer::Status(502)]).await;
    // The retry comes 5 s × 0.2 = 1 s (±20 %) later: pending long enough to be seen.
    let gw = gateway(&receiver, &["--webhook-retry-scale", "0.2"]).await;
    let mut c = open(&gw, "telegram", "user-feed").await;
    let session = c.frame().await.session;
    c.send_json(json!({"type": "cancel"})).await;
    receiver.wait_for(1).await;
    wait_for_deliveries(&gw, |d| {
        d.recent
            .first()
            .is_some_and(|e| e.status == Status::Retrying)
    })
    .await;

    let feed: Value = serde_json::from_str(&get_text(&gw.url("/api/deliveries")).await).unwrap();
    assert_eq!(feed["enabled"], true, "{feed}");
    assert_eq!(feed["outbox"], "memory", "{feed}");
    assert_eq!(feed["pending"], 1, "{feed}");
    assert!(feed["oldest_pending_ms"].as_u64().is_some(), "{feed}");
    let entry = &feed["recent"][0];
    assert_eq!(entry["event"], "link.abandoned", "{feed}");
    assert_eq!(entry["session"], session.as_str(), "{feed}");
    assert_eq!(entry["status"], "retrying", "{feed}");
    assert_eq!(entry["attempts"], 1, "{feed}");
    assert_eq!(entry["last_status"], 502, "{feed}");
    assert!(
        entry["next_retry_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{feed}"
    );

    let metrics = get_text(&gw.url("/metrics")).await;
    // The recorder is shared by every gateway in this process: at least this test's values.
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
    };
    assert!(value("qrlink_webhook_attempts_total{result=\"http_5xx\"}") >= 1.0);
    assert!(value("qrlink_webhook_pending") >= 1.0);
    assert!(value("qrlink_webhook_oldest_pending_seconds") > 0.0);

    receiver.wait_for(2).await;
    wait_for_deliveries(&gw, |d| {
        d.pending == 0 && d.recent[0].status == Status::Delivered
    })
    .await;
    let metrics = get_text(&gw.url("/metrics")).await;
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "qrlink_webhook_deliveries_total{event=\"link.abandoned\",result=\"delivered\"}"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn no_more_attempts_than_the_concurrency_are_in_flight() {
    let receiver = Receiver::scripted([Answer::Hang, Answer::Hang, Answer::Hang]).await;
    let gw = gateway(
        &receiver,
        &["--webhook-concurrency", "2", "--webhook-timeout", "1s"],
    )
    .await;
    for sub in ["user-a", "user-b", "user-c"] {
        cancelled_attempt(&gw, sub).await;
    }
    let got = receiver.wait_for(3).await;
    // The first two hang; the third goes out only when one of them is cut at the timeout
    // (1 s after the gateway sent it, a little less after the receiver read it; without the
    // limit the three come within milliseconds).
    let gap = got[2].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(800),
        "a third attempt started while two were in flight, {gap:?} after the first"
    );
    let ids: std::collections::HashSet<_> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 3, "three webhooks, not a retry: {got:?}");
}
