//! Upstream failures reach the browser as the right frame, or not at all when a retry hides them.

use crate::common;

use crate::common::{TestGateway, frames_until_close};
use qrlink::link::protocol::{ServerFrame, close, message_for};
use qrlink::simulator::{Endpoint, Fault, PollOutcome};

/// The link-attempt errors of UNIPILE.md that the browser must see by name.
const USER_ERRORS: [(&str, u16); 5] = [
    ("api/proxy_auth_error", 401),
    ("api/proxy_error", 502),
    ("api/proxy_timeout", 504),
    ("api/already_exists", 403),
    ("api/account_restricted", 403),
];

fn error(kind: &str, status: u16) -> Fault {
    Fault::Error {
        error_type: kind.to_owned(),
        status,
        detail: Some(format!("detail of {kind}")),
    }
}

#[tokio::test]
async fn each_user_facing_error_at_intent_time_gives_an_error_frame_with_its_code() {
    let gw = TestGateway::start().await;
    for (kind, status) in USER_ERRORS {
        gw.sim().push_fault(Endpoint::Intent, error(kind, status));
        let mut client = gw.connect("/ws/link/whatsapp").await;
        let (frames, code) = frames_until_close(&mut client).await;
        assert_eq!(
            frames.len(),
            1,
            "{kind}: expected only the error, got {frames:?}"
        );
        match &frames[0].frame {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, kind);
                assert_eq!(e.message, message_for(kind));
                assert_eq!(
                    e.detail.as_deref(),
                    Some(format!("detail of {kind}").as_str())
                );
                assert!(e.req_id.is_some(), "{kind}: req_id passes through");
            }
            other => panic!("{kind}: expected an error frame, got {other:?}"),
        }
        assert_eq!(code, close::NORMAL);
    }
}

#[tokio::test]
async fn each_user_facing_error_during_the_poll_gives_an_error_frame_after_the_qr() {
    let gw = TestGateway::start().await;
    for (kind, status) in USER_ERRORS {
        gw.sim()
            .push_fault(Endpoint::Checkpoint, error(kind, status));
        let mut client = gw.connect("/ws/link/whatsapp").await;
        let (frames, code) = frames_until_close(&mut client).await;
        assert!(matches!(frames[0].frame, ServerFrame::Qr(_)), "{frames:?}");
        match &frames[1].frame {
            ServerFrame::Error(e) => assert_eq!(e.code, kind),
            other => panic!("{kind}: expected an error frame, got {other:?}"),
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(code, close::NORMAL);
    }
}

#[tokio::test]
async fn two_503s_then_success_are_retried_without_an_error_frame() {
    let gw = TestGateway::start().await;
    gw.sim()
        .push_fault(Endpoint::Intent, Fault::Status { status: 503 });
    gw.sim()
        .push_fault(Endpoint::Intent, Fault::Status { status: 503 });
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let qr = client.qr().await;
    assert_eq!(qr.rotation, 1);
    let intents_requests = gw
        .sim()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/intent"))
        .count();
    assert_eq!(intents_requests, 3, "two failures and one success");
}

#[tokio::test]
async fn a_poll_failing_with_502_then_500_is_retried_transparently() {
    let gw = TestGateway::start().await;
    gw.sim()
        .push_fault(Endpoint::Checkpoint, Fault::Status { status: 502 });
    gw.sim()
        .push_fault(Endpoint::Checkpoint, error("api/internal_error", 500));
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let qr = client.qr().await;
    let intent = qr.intent_id.clone();
    // Wait until the retried poll is the one in flight, then scan.
    gw.sim()
        .wait_for_polls(|polls| {
            polls
                .iter()
                .filter(|p| p.intent_id == intent)
                .any(|p| matches!(p.outcome, PollOutcome::Pending))
                && polls.iter().filter(|p| p.intent_id == intent).count() >= 3
        })
        .await;
    gw.sim().scan(&intent).unwrap();
    let (frames, _) = frames_until_close(&mut client).await;
    assert!(
        matches!(frames.last().unwrap().frame, ServerFrame::Account { .. }),
        "{frames:?}"
    );
}

#[tokio::test]
async fn a_429_with_retry_after_is_honoured_and_retried() {
    let gw = TestGateway::start().await;
    gw.sim().push_fault(
        Endpoint::Intent,
        Fault::RateLimited {
            retry_after_secs: 1,
        },
    );
    let started = std::time::Instant::now();
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let qr = client.qr().await;
    assert_eq!(qr.rotation, 1);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(950),
        "Retry-After: 1 must be waited out, took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_outage_longer_than_the_budget_gives_upstream_unavailable() {
    let gw = TestGateway::with(
        common::sim_config(std::time::Duration::from_millis(300), 3),
        &["--upstream-retry-budget", "300ms"],
    )
    .await;
    for _ in 0..200 {
        gw.sim()
            .push_fault(Endpoint::Intent, Fault::Status { status: 503 });
    }
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let err = client.error().await;
    assert_eq!(err.code, "gateway/upstream_unavailable");
    assert!(err.retryable);
    assert_eq!(client.closed().await, close::NORMAL);
}

#[tokio::test]
async fn a_malformed_body_gives_upstream_invalid() {
    let gw = TestGateway::start().await;
    gw.sim().push_fault(Endpoint::Checkpoint, Fault::Malformed);
    let mut client = gw.connect("/ws/link/whatsapp").await;
    client.qr().await;
    let err = client.error().await;
    assert_eq!(err.code, "gateway/upstream_invalid");
    assert_eq!(client.closed().await, close::NORMAL);
}

#[tokio::test]
async fn an_oauth_url_gives_unsupported_step() {
    let gw = TestGateway::start().await;
    gw.sim().push_fault(Endpoint::Intent, Fault::OauthUrl);
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let err = client.error().await;
    assert_eq!(err.code, "gateway/unsupported_step");
    assert!(!err.retryable);
}

#[tokio::test]
async fn a_bad_api_key_is_reported_without_revealing_it() {
    let gw = TestGateway::with(
        common::sim_config(std::time::Duration::from_millis(300), 3),
        &["--unipile-api-key", "not-the-right-key"],
    )
    .await;
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let (frames, _) = frames_until_close(&mut client).await;
    let text = serde_json::to_string(&frames).unwrap();
    match &frames[0].frame {
        ServerFrame::Error(e) => assert!(e.code.starts_with("api/"), "{e:?}"),
        other => panic!("expected an error frame, got {other:?}"),
    }
    assert!(!text.contains("not-the-right-key"), "{text}");
    assert!(!text.contains(common::API_KEY), "{text}");
}
