//! The QR flow end to end: gateway and simulator over real TCP, a real WebSocket client.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{
    TWOFA, TestGateway, WsClient, ends_with_the_account, frames_until_close, sim_config,
};
use qrlink::link::protocol::{ServerFrame, close};
use serde_json::json;

#[tokio::test]
async fn rotation_then_scan_gives_two_different_qrs_then_the_account_and_close_1000() {
    let gw = TestGateway::start().await;
    let mut client = gw.connect("/ws/link/whatsapp?qr=svg,raw").await;

    let first = client.qr().await;
    assert_eq!(first.rotation, 1);
    assert!(first.intent_id.starts_with("acc_"), "{}", first.intent_id);
    assert!(first.svg.as_deref().unwrap().starts_with("<svg"));
    let second = client.qr().await;
    assert_eq!(second.rotation, 2);
    assert_eq!(second.intent_id, first.intent_id);
    assert_ne!(second.raw, first.raw, "a rotation must bring a new code");
    assert_ne!(second.svg, first.svg);

    gw.sim().scan(&second.intent_id).expect("scan");
    let account = client.frame().await;
    match &account.frame {
        ServerFrame::Account {
            account,
            state,
            result,
        } => {
            assert!(account["id"].as_str().unwrap().starts_with("acc_"));
            assert_eq!(account["provider"], "whatsapp");
            assert_eq!(*state, None);
            assert_eq!(*result, None, "no result token without connect tokens");
        }
        other => panic!("expected an account frame, got {other:?}"),
    }
    assert_eq!(account.seq, 3, "frames are numbered 1, 2, 3");
    assert_eq!(client.closed().await, close::NORMAL);
    gw.wait_for_no_sessions().await;
}

#[tokio::test]
async fn no_scan_gives_every_qr_then_a_timeout() {
    let gw = TestGateway::with(sim_config(Duration::from_millis(60), 3), &[]).await;
    let mut client = gw.connect("/ws/link/google_messages").await;
    let (frames, code) = frames_until_close(&mut client).await;
    let kinds: Vec<_> = frames
        .iter()
        .map(|f| match &f.frame {
            ServerFrame::Qr(q) => format!("qr{}", q.rotation),
            ServerFrame::Timeout { rotations } => format!("timeout{rotations}"),
            other => panic!("unexpected frame {other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["qr1", "qr2", "qr3", "timeout3"]);
    let session = &frames[0].session;
    assert!(frames.iter().all(|f| &f.session == session));
    assert_eq!(
        frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(code, close::NORMAL);
}

#[tokio::test]
async fn qr_frames_carry_an_expiry_estimate_from_the_provider_lifetime() {
    let gw = TestGateway::with(
        sim_config(Duration::from_secs(5), 2),
        &["--qr-ttl", "60s,telegram=30s"],
    )
    .await;
    let mut client = gw.connect("/ws/link/telegram").await;
    let qr = client.qr().await;
    let expires = humantime::parse_rfc3339(&qr.expires_at).expect("RFC 3339");
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left > Duration::from_secs(27) && left <= Duration::from_secs(31),
        "telegram QR should expire in about 30 s, got {left:?}"
    );
}

#[tokio::test]
async fn text_and_raw_renderings_come_only_when_asked() {
    let gw = TestGateway::start().await;
    let mut plain = gw.connect("/ws/link/whatsapp").await;
    let q = plain.qr().await;
    assert!(q.svg.is_some() && q.text.is_none() && q.raw.is_none());

    let mut terminal = gw.connect("/ws/link/whatsapp?qr=text").await;
    let q = terminal.qr().await;
    assert!(q.svg.is_none() && q.raw.is_none());
    let text = q.text.expect("text rendering");
    assert!(text.contains('█') || text.contains('▀'), "{text}");
    let issued = gw.sim().issued_qrs(&q.intent_id);
    assert!(!text.contains(issued[0].as_str()));
}

#[tokio::test]
async fn telegram_2fa_checkpoint_then_the_right_code_gives_the_account() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(5), 2), &[]).await;
    let mut client = gw.connect("/ws/link/telegram").await;
    let qr = client.qr().await;
    gw.sim().scan(&qr.intent_id).unwrap();
    match client.frame().await.frame {
        ServerFrame::Checkpoint { checkpoint, .. } => assert_eq!(checkpoint["type"], "2FA"),
        other => panic!("expected a checkpoint frame, got {other:?}"),
    }
    client.send_json(json!({"type":"code","code":TWOFA})).await;
    match client.frame().await.frame {
        ServerFrame::Account { account, .. } => assert_eq!(account["provider"], "telegram"),
        other => panic!("expected an account frame, got {other:?}"),
    }
    assert_eq!(client.closed().await, close::NORMAL);
}

#[tokio::test]
async fn a_wrong_2fa_code_asks_again_with_its_error_and_the_right_one_then_links() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(5), 2), &[]).await;
    let mut client = gw.connect("/ws/link/telegram").await;
    let qr = client.qr().await;
    gw.sim().scan(&qr.intent_id).unwrap();
    assert!(matches!(
        client.frame().await.frame,
        ServerFrame::Checkpoint { error: None, .. }
    ));
    client
        .send_json(json!({"type":"code","code":"wrong guess"}))
        .await;
    match client.frame().await.frame {
        ServerFrame::Checkpoint {
            checkpoint,
            error: Some(error),
        } => {
            assert_eq!(checkpoint["type"], "2FA");
            assert_eq!(error.code, "provider/invalid_checkpoint_code");
            assert_eq!(
                error.message,
                qrlink::link::protocol::message_for(&error.code)
            );
        }
        other => panic!("expected the checkpoint again, got {other:?}"),
    }
    client.send_json(json!({"type":"code","code":TWOFA})).await;
    assert!(matches!(
        client.frame().await.frame,
        ServerFrame::Account { .. }
    ));
    assert_eq!(client.closed().await, close::NORMAL);
}

#[tokio::test]
async fn three_wrong_2fa_codes_end_the_attempt_with_the_error() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(5), 2), &[]).await;
    let mut client = gw.connect("/ws/link/telegram").await;
    let qr = client.qr().await;
    gw.sim().scan(&qr.intent_id).unwrap();
    for attempt in 0..qrlink::link::protocol::MAX_CHECKPOINT_ATTEMPTS {
        match client.frame().await.frame {
            ServerFrame::Checkpoint { error, .. } => assert_eq!(error.is_some(), attempt > 0),
            other => panic!("expected a checkpoint, got {other:?}"),
        }
        client
            .send_json(json!({"type":"code","code":format!("guess {attempt}")}))
            .await;
    }
    let err = client.error().await;
    assert_eq!(err.code, "provider/invalid_checkpoint_code");
    assert!(err.retryable);
    assert_eq!(client.closed().await, close::NORMAL);
}

#[tokio::test]
async fn relinking_sends_the_account_id_upstream_and_gets_that_account_back() {
    let gw = TestGateway::start().await;
    let mut client = gw
        .connect("/ws/link/whatsapp?account_id=acc_existing123")
        .await;
    let qr = client.qr().await;
    gw.sim().scan(&qr.intent_id).unwrap();
    match client.frame().await.frame {
        ServerFrame::Account { account, .. } => assert_eq!(account["id"], "acc_existing123"),
        other => panic!("expected an account frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_attempts_each_get_their_own_qr_and_end_cleanly() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(10), 2), &[]).await;
    let url = format!("ws://{}/ws/link/whatsapp?qr=raw", gw.addr);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = WsClient::connect(&url).await;
            let qr = client.qr().await;
            (client, qr)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let raws: HashSet<_> = clients
        .iter()
        .map(|(_, q)| q.raw.clone().unwrap())
        .collect();
    let intents: HashSet<_> = clients.iter().map(|(_, q)| q.intent_id.clone()).collect();
    assert_eq!(raws.len(), 200, "every attempt gets its own code");
    assert_eq!(intents.len(), 200);
    assert_eq!(gw.state.store.len(), 200);

    let mut finished = Vec::new();
    for (mut client, qr) in clients {
        gw.sim().scan(&qr.intent_id).unwrap();
        finished.push(tokio::spawn(async move {
            ends_with_the_account(&mut client).await;
        }));
    }
    for f in finished {
        f.await.unwrap();
    }
    gw.wait_for_no_sessions().await;
}

#[tokio::test]
async fn the_svg_of_each_qr_frame_scans_back_to_exactly_the_string_the_simulator_issued() {
    let gw = TestGateway::with(sim_config(Duration::from_millis(300), 2), &[]).await;
    for provider in ["whatsapp", "telegram", "google_messages"] {
        let mut client = gw
            .connect(&format!("/ws/link/{provider}?qr=svg,text"))
            .await;
        let first = client.qr().await;
        let second = client.qr().await;
        let issued = gw.sim().issued_qrs(&first.intent_id);
        assert_eq!(issued.len(), 2, "{provider}");
        for (frame, code) in [(&first, &issued[0]), (&second, &issued[1])] {
            let svg = frame.svg.as_deref().expect("svg asked for");
            assert_eq!(&common::scan::scan_svg(svg), code, "{provider} SVG");
            let text = frame.text.as_deref().expect("text asked for");
            assert_eq!(&common::scan::scan_text(text), code, "{provider} text");
        }
    }
}
