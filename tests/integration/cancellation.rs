//! When the browser goes, the upstream work stops at once and the session leaves the registry.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{TestGateway, WAIT};
use qrlink::link::protocol::close;
use qrlink::simulator::PollOutcome;

#[tokio::test]
async fn a_client_that_hangs_up_mid_poll_makes_the_simulator_record_the_hang_up_within_100ms() {
    let gw = TestGateway::with(common::sim_config(Duration::from_secs(30), 2), &[]).await;
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let qr = client.qr().await;
    let intent = qr.intent_id.clone();
    gw.wait_for_poll(&intent, PollOutcome::Pending).await;
    assert_eq!(gw.state.store.len(), 1);

    // Hang up without a close handshake, as a closed tab on a dropped network would.
    let hung_up_at = Instant::now();
    drop(client);

    gw.wait_for_poll(&intent, PollOutcome::HungUp).await;
    let poll = gw
        .sim()
        .polls()
        .into_iter()
        .find(|p| p.intent_id == intent && matches!(p.outcome, PollOutcome::HungUp))
        .unwrap();
    let lag = poll.ended.unwrap().saturating_duration_since(hung_up_at);
    assert!(
        lag <= Duration::from_millis(100),
        "upstream request closed {lag:?} after the client hung up"
    );
    gw.wait_for_no_sessions().await;
}

#[tokio::test]
async fn deleting_a_session_through_the_api_cancels_it_for_its_browser() {
    let gw = TestGateway::with(common::sim_config(Duration::from_secs(30), 2), &[]).await;
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let first = client.qr().await;
    let listed: serde_json::Value = reqwest::get(gw.url("/api/sessions"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = listed["sessions"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed["sessions"][0]["provider"], "whatsapp");
    assert_eq!(listed["sessions"][0]["rotation"], first.rotation);

    let resp = reqwest::Client::new()
        .delete(gw.url(&format!("/api/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let err = client.error().await;
    assert_eq!(err.code, "session/cancelled");
    assert_eq!(client.closed().await, close::NORMAL);
    gw.wait_for_no_sessions().await;

    let again = reqwest::Client::new()
        .delete(gw.url(&format!("/api/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn shutdown_tells_every_open_session_and_closes_1001() {
    let mut gw = TestGateway::with(common::sim_config(Duration::from_secs(30), 2), &[]).await;
    let mut clients = Vec::new();
    for provider in ["whatsapp", "google_messages", "telegram"] {
        let mut c = gw.connect(&format!("/ws/link/{provider}")).await;
        c.qr().await;
        clients.push(c);
    }
    gw.shut_down();
    for c in &mut clients {
        let err = c.error().await;
        assert_eq!(err.code, "gateway/shutting_down");
        assert!(err.retryable);
        assert_eq!(c.closed().await, close::GOING_AWAY);
    }
    let served = gw.served.take().unwrap();
    tokio::time::timeout(WAIT, served)
        .await
        .expect("serve returns within the grace period")
        .unwrap()
        .unwrap();
}
