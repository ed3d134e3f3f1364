//! Resume (protocol v1.1): a link attempt outlives its socket. A hang-up detaches the session,
//! `?resume=TOKEN` re-attaches it with its last frame replayed, the same intent is polled again,
//! a second socket takes over the first, and what cannot be resumed is refused.

use std::time::{Duration, Instant};

use qrlink::link::protocol::{Envelope, ServerFrame, close, codes};
use qrlink::simulator::{Endpoint, Fault, PollOutcome};
use qrlink::store::{Outcome, Phase, WatchEvent};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::{
    self, Next, TWOFA, TestGateway, WAIT, WsClient, intent_of, intents_started, qr_envelope,
    token_of,
};

/// QRs that outlive any test step, and a grace long enough for every resume below.
async fn gateway(extra: &[&str]) -> TestGateway {
    let mut args = vec!["--resume-grace", "60s"];
    args.extend_from_slice(extra);
    TestGateway::with(common::sim_config(Duration::from_secs(30), 3), &args).await
}

/// Waits for a watch event about `session` that `pred` accepts.
async fn wait_for_event(
    events: &mut broadcast::Receiver<WatchEvent>,
    what: &str,
    pred: impl Fn(&WatchEvent) -> bool,
) -> WatchEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(ev) if pred(&ev) => return ev,
                Ok(_) => continue,
                Err(e) => panic!("watch events ended while waiting for {what}: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected {what}"))
}

async fn wait_detached(events: &mut broadcast::Receiver<WatchEvent>, id: &str) {
    wait_for_event(
        events,
        "a detached event",
        |ev| matches!(ev, WatchEvent::Detached { session, .. } if session == id),
    )
    .await;
}

/// Closes like a browser leaving the page (reload, navigation): Close 1001, then the
/// gateway's Close in answer.
async fn leave_page(mut client: WsClient) {
    let away = CloseFrame {
        code: CloseCode::Away,
        reason: "".into(),
    };
    client.send(Message::Close(Some(away))).await;
    match client.next().await {
        Next::Close(_) | Next::Eof => {}
        other => panic!("expected the close answered, got {other:?}"),
    }
}

/// Re-attaches to the session of `token` on `provider`'s path.
async fn resume(gw: &TestGateway, provider: &str, token: &str) -> WsClient {
    gw.connect(&format!("/ws/link/{provider}?resume={token}"))
        .await
}

/// Opens a WhatsApp attempt, takes its first `qr`, hangs up without a close handshake (a
/// dropped network) and waits for the session to detach.
async fn detached_whatsapp(
    gw: &TestGateway,
    events: &mut broadcast::Receiver<WatchEvent>,
) -> Envelope {
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let first = qr_envelope(&mut client).await;
    drop(client);
    wait_detached(events, &first.session).await;
    first
}

#[tokio::test]
async fn a_hang_up_detaches_and_a_resume_replays_the_qr_then_a_scan_links_on_the_same_intent() {
    let gw = gateway(&[]).await;
    let mut events = gw.state.store.subscribe();
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let first = qr_envelope(&mut client).await;
    let (intent, token) = (intent_of(&first), token_of(&first));
    gw.wait_for_poll(&intent, PollOutcome::Pending).await;

    // Hang up without a close handshake, as a dropped network does.
    let hung_up_at = Instant::now();
    drop(client);
    gw.wait_for_poll(&intent, PollOutcome::HungUp).await;
    let poll = gw
        .sim()
        .polls()
        .into_iter()
        .find(|p| p.intent_id == intent && p.outcome == PollOutcome::HungUp)
        .unwrap();
    let lag = poll.ended.unwrap().saturating_duration_since(hung_up_at);
    assert!(
        lag <= Duration::from_millis(100),
        "the upstream poll ended {lag:?} after the hang-up"
    );
    wait_detached(&mut events, &first.session).await;
    let listed = gw.state.store.snapshot();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].phase, Phase::Detached);

    let mut resumed = resume(&gw, "whatsapp", &token).await;
    let replay = qr_envelope(&mut resumed).await;
    assert!(replay.replay, "the first frame is a replay: {replay:?}");
    assert_eq!(
        (&replay.session, replay.seq, &replay.resume),
        (&first.session, first.seq, &first.resume)
    );
    assert_eq!(replay.frame, first.frame, "the qr exactly as it was");

    // The same intent is polled again, and a scan now links it.
    tokio::time::timeout(
        WAIT,
        gw.sim().wait_for_polls(|polls| {
            polls
                .iter()
                .filter(|p| p.intent_id == intent && p.outcome == PollOutcome::Pending)
                .count()
                == 1
                && polls.iter().filter(|p| p.intent_id == intent).count() == 2
        }),
    )
    .await
    .expect("a second poll of the same intent");
    gw.sim().scan(&intent).unwrap();
    let (frames, code) = common::frames_until_close(&mut resumed).await;
    match frames.as_slice() {
        [account] => {
            assert!(
                matches!(account.frame, ServerFrame::Account { .. }),
                "{account:?}"
            );
            assert_eq!(account.seq, first.seq + 1, "seq goes on across sockets");
        }
        other => panic!("expected the account alone, got {other:?}"),
    }
    assert_eq!(code, close::NORMAL);
    assert_eq!(intents_started(&gw), 1, "never a second Start Auth Intent");
    wait_for_event(&mut events, "the closed event", |ev| {
        matches!(
            ev,
            WatchEvent::Closed {
                outcome: Outcome::Account,
                ..
            }
        )
    })
    .await;
    gw.wait_for_no_sessions().await;
}

#[tokio::test]
async fn a_scan_while_detached_arrives_as_the_account_right_after_the_replay() {
    let gw = gateway(&[]).await;
    let mut events = gw.state.store.subscribe();
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let first = qr_envelope(&mut client).await;
    let (intent, token) = (intent_of(&first), token_of(&first));
    gw.wait_for_poll(&intent, PollOutcome::Pending).await;
    drop(client);
    wait_detached(&mut events, &first.session).await;

    // The phone scans while the page is away.
    gw.sim().scan(&intent).unwrap();

    let mut resumed = resume(&gw, "whatsapp", &token).await;
    let replay = qr_envelope(&mut resumed).await;
    assert!(replay.replay);
    common::ends_with_the_account(&mut resumed).await;
    assert_eq!(intents_started(&gw), 1);
}

#[tokio::test]
async fn a_telegram_2fa_checkpoint_survives_a_reload_and_the_code_links_it() {
    let gw = gateway(&[]).await;
    let mut events = gw.state.store.subscribe();
    let mut client = gw.connect("/ws/link/telegram").await;
    let first = qr_envelope(&mut client).await;
    gw.sim().scan(&intent_of(&first)).unwrap();
    let checkpoint = client.frame().await;
    assert!(
        matches!(checkpoint.frame, ServerFrame::Checkpoint { .. }),
        "expected the 2FA checkpoint, got {checkpoint:?}"
    );
    let token = token_of(&checkpoint);
    assert_eq!(token, token_of(&first), "one token for the session's life");

    leave_page(client).await;
    wait_detached(&mut events, &first.session).await;

    let mut resumed = resume(&gw, "telegram", &token).await;
    let replay = resumed.frame().await;
    assert!(replay.replay);
    assert_eq!(
        (replay.seq, &replay.frame),
        (checkpoint.seq, &checkpoint.frame)
    );
    resumed
        .send_json(serde_json::json!({"type": "code", "code": TWOFA}))
        .await;
    common::ends_with_the_account(&mut resumed).await;
    assert_eq!(intents_started(&gw), 1);
}

#[tokio::test]
async fn a_2fa_answer_unipile_took_while_the_page_was_away_arrives_as_the_account() {
    let gw = gateway(&[]).await;
    let mut events = gw.state.store.subscribe();
    let mut client = gw.connect("/ws/link/telegram").await;
    let first = qr_envelope(&mut client).await;
    let intent = intent_of(&first);
    gw.sim().scan(&intent).unwrap();
    let checkpoint = client.frame().await;
    // Unipile takes the answer but is slow to say so; the page drops meanwhile.
    gw.sim()
        .push_fault(Endpoint::Checkpoint, Fault::LateAnswer { ms: 10_000 });
    client
        .send_json(serde_json::json!({"type": "code", "code": TWOFA}))
        .await;
    tokio::time::timeout(
        WAIT,
        gw.sim().wait_for_polls(|polls| {
            polls
                .iter()
                .rfind(|p| p.intent_id == intent)
                .is_some_and(|p| p.outcome == PollOutcome::Pending)
                && polls.iter().filter(|p| p.intent_id == intent).count() >= 2
        }),
    )
    .await
    .expect("the answer's poll in flight");
    drop(client);
    wait_detached(&mut events, &first.session).await;

    let mut resumed = gw
        .connect(&format!(
            "/ws/link/telegram?resume={}",
            token_of(&checkpoint)
        ))
        .await;
    let replay = resumed.frame().await;
    assert!(replay.replay && matches!(replay.frame, ServerFrame::Checkpoint { .. }));
    common::ends_with_the_account(&mut resumed).await;
}

#[tokio::test]
async fn a_second_socket_takes_over_and_the_first_is_closed_4000_without_a_terminal_frame() {
    let gw = gateway(&[]).await;
    let mut first_tab = gw.connect("/ws/link/whatsapp").await;
    let first = qr_envelope(&mut first_tab).await;
    let intent = intent_of(&first);
    gw.wait_for_poll(&intent, PollOutcome::Pending).await;

    let mut second_tab = resume(&gw, "whatsapp", &token_of(&first)).await;
    match first_tab.next().await {
        Next::Close(code) => assert_eq!(code, close::RESUMED_ELSEWHERE),
        other => panic!("expected close 4000 and no frame, got {other:?}"),
    }
    let replay = qr_envelope(&mut second_tab).await;
    assert!(replay.replay);
    gw.wait_for_poll(&intent, PollOutcome::HungUp).await;
    gw.sim().scan(&intent).unwrap();
    common::ends_with_the_account(&mut second_tab).await;
    assert_eq!(intents_started(&gw), 1);

    // The recorder is shared by every gateway in this process: counted at least this once.
    let metrics = reqwest::get(gw.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in ["qrlink_takeovers_total", "qrlink_resumes_total"] {
        let value: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"));
        assert!(value >= 1.0, "{name} {value}");
    }
}

/// Expects `session/expired` and close 1008 for a resume.
async fn expect_expired(gw: &TestGateway, path: &str) {
    let mut client = gw.connect(path).await;
    let error = client.error().await;
    assert_eq!(error.code, codes::SESSION_EXPIRED);
    assert!(error.retryable, "start a new attempt");
    assert_eq!(client.closed().await, close::POLICY);
}

#[tokio::test]
async fn unknown_and_ended_sessions_are_refused_as_expired() {
    let gw = gateway(&[]).await;
    for token in [
        "nonsense",
        "ses_AAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBBBB",
        "",
    ] {
        expect_expired(&gw, &format!("/ws/link/whatsapp?resume={token}")).await;
    }
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let first = qr_envelope(&mut client).await;
    gw.sim().scan(&intent_of(&first)).unwrap();
    common::ends_with_the_account(&mut client).await;
    gw.wait_for_no_sessions().await;
    expect_expired(
        &gw,
        &format!("/ws/link/whatsapp?resume={}", token_of(&first)),
    )
    .await;

    // A token with a byte changed is another token.
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let live = qr_envelope(&mut client).await;
    let mut forged = token_of(&live);
    let last = forged.pop().unwrap();
    forged.push(if last == 'a' { 'b' } else { 'a' });
    expect_expired(&gw, &format!("/ws/link/whatsapp?resume={forged}")).await;
}

#[tokio::test]
async fn a_token_on_another_providers_path_is_refused_and_the_session_stays_resumable() {
    let gw = gateway(&[]).await;
    let mut events = gw.state.store.subscribe();
    let first = detached_whatsapp(&gw, &mut events).await;
    let token = token_of(&first);

    let mut wrong = resume(&gw, "telegram", &token).await;
    let error = wrong.error().await;
    assert_eq!(error.code, codes::UNAUTHORIZED);
    assert_eq!(wrong.closed().await, close::POLICY);
    assert_eq!(gw.state.store.snapshot()[0].phase, Phase::Detached);

    let mut right = resume(&gw, "whatsapp", &token).await;
    assert!(qr_envelope(&mut right).await.replay);
}

#[tokio::test]
async fn when_the_grace_passes_the_session_ends_disconnected_and_its_token_is_refused() {
    let gw = gateway(&["--resume-grace", "300ms"]).await;
    let mut events = gw.state.store.subscribe();
    let first = detached_whatsapp(&gw, &mut events).await;
    let closed = wait_for_event(&mut events, "the closed event", |ev| {
        matches!(ev, WatchEvent::Closed { .. })
    })
    .await;
    assert!(
        matches!(
            closed,
            WatchEvent::Closed {
                outcome: Outcome::Disconnected,
                ..
            }
        ),
        "{closed:?}"
    );
    gw.wait_for_no_sessions().await;
    assert_eq!(gw.state.store.detached(), 0);
    expect_expired(
        &gw,
        &format!("/ws/link/whatsapp?resume={}", token_of(&first)),
    )
    .await;
}

#[tokio::test]
async fn with_a_grace_of_zero_frames_carry_no_token_and_a_hang_up_ends_the_session() {
    let gw = gateway(&["--resume-grace", "0"]).await;
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let text = client.ws_text().await;
    assert!(!text.contains("\"resume\""), "{text}");
    drop(client);
    gw.wait_for_no_sessions().await;
    expect_expired(&gw, "/ws/link/whatsapp?resume=ses_x.y").await;
}

#[tokio::test]
async fn an_upstream_that_forgot_the_intent_ends_the_resumed_attempt_with_a_retryable_error() {
    let gw = gateway(&[]).await;
    let mut events = gw.state.store.subscribe();
    let first = detached_whatsapp(&gw, &mut events).await;
    gw.sim().push_fault(
        Endpoint::Checkpoint,
        Fault::Error {
            error_type: "api/resource_not_found".into(),
            status: 404,
            detail: None,
        },
    );
    let mut resumed = resume(&gw, "whatsapp", &token_of(&first)).await;
    assert!(qr_envelope(&mut resumed).await.replay);
    let error = resumed.error().await;
    assert_eq!(error.code, "api/resource_not_found");
    assert!(error.retryable);
    assert_eq!(resumed.closed().await, close::NORMAL);
    gw.wait_for_no_sessions().await;
}

#[tokio::test]
async fn a_resume_may_ask_for_other_qr_formats() {
    let gw = gateway(&[]).await;
    let mut events = gw.state.store.subscribe();
    let first = detached_whatsapp(&gw, &mut events).await;
    let mut resumed = gw
        .connect(&format!(
            "/ws/link/whatsapp?resume={}&qr=text,raw",
            token_of(&first)
        ))
        .await;
    let replay = qr_envelope(&mut resumed).await;
    match (&replay.frame, &first.frame) {
        (ServerFrame::Qr(now), ServerFrame::Qr(then)) => {
            assert_eq!(
                (now.rotation, &now.expires_at),
                (then.rotation, &then.expires_at)
            );
            assert!(now.svg.is_none() && now.text.is_some());
            let raw = now.raw.as_deref().expect("raw when asked for");
            assert_eq!(common::scan::scan_text(now.text.as_deref().unwrap()), raw);
            assert_eq!(common::scan::scan_svg(then.svg.as_deref().unwrap()), raw);
        }
        other => panic!("expected two qr frames, got {other:?}"),
    }
}

#[tokio::test]
async fn a_resume_needs_no_connect_token_but_counts_against_the_address_limits() {
    let secret = "resume-test-secret-0123456789abcdef";
    let gw = gateway(&[
        "--token-secret",
        secret,
        "--sessions-per-ip-per-minute",
        "2",
    ])
    .await;
    let now = qrlink::http::auth::now_secs();
    let token = qrlink::http::auth::mint(
        secret,
        &qrlink::http::auth::Claims {
            sub: "user-7".into(),
            exp: now + 60,
            iat: Some(now),
            provider: None,
            account_id: None,
            proxy: None,
        },
    );
    let mut events = gw.state.store.subscribe();
    let mut client = gw
        .connect(&format!("/ws/link/whatsapp?token={token}"))
        .await;
    let first = qr_envelope(&mut client).await;
    drop(client);
    wait_detached(&mut events, &first.session).await;

    // The second admission of the minute: the resume itself.
    let resume = format!("/ws/link/whatsapp?resume={}", token_of(&first));
    let mut resumed = gw.connect(&resume).await;
    assert!(qr_envelope(&mut resumed).await.replay);
    drop(resumed);
    wait_detached(&mut events, &first.session).await;

    // The third is over the per-minute budget, resume or not.
    let mut refused = gw.connect(&resume).await;
    assert_eq!(refused.error().await.code, codes::RATE_LIMITED);
    assert_eq!(refused.closed().await, close::TRY_AGAIN_LATER);
    assert_eq!(gw.state.store.len(), 1, "the session is still there");
}

#[tokio::test]
async fn watchers_see_detached_and_resumed_but_never_the_resume_token() {
    let gw = gateway(&[]).await;
    let mut watcher = gw.connect("/ws/watch").await;
    let snapshot = watcher.ws_text().await;
    assert!(snapshot.contains("\"snapshot\""), "{snapshot}");
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let first = qr_envelope(&mut client).await;
    let token = token_of(&first);
    drop(client);

    let mut seen = Vec::new();
    while !seen.iter().any(|t: &String| t.contains("\"detached\"")) {
        seen.push(watcher.ws_text().await);
    }
    let listed = reqwest::get(gw.url("/api/sessions"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains("\"detached\""), "{listed}");
    let mut resumed = resume(&gw, "whatsapp", &token).await;
    qr_envelope(&mut resumed).await;
    while !seen.iter().any(|t: &String| t.contains("\"resumed\"")) {
        seen.push(watcher.ws_text().await);
    }
    let secret = token.split_once('.').unwrap().1;
    for text in seen.iter().chain([&listed]) {
        assert!(
            !text.contains(secret) && !text.contains("\"resume\""),
            "{text}"
        );
    }
}
