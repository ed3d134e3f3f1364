//! Bad input from a client gets an error frame and the right close code, never a panic or hang.

use crate::common::{Next, TestGateway};
use qrlink::link::protocol::{MAX_CLIENT_MESSAGE_BYTES, ServerFrame, close};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn an_unknown_provider_gets_an_error_frame_and_close_1008() {
    let gw = TestGateway::start().await;
    let mut client = gw.connect("/ws/link/myspace").await;
    let err = client.error().await;
    assert_eq!(err.code, "request/unknown_provider");
    assert!(!err.retryable);
    assert_eq!(client.closed().await, close::POLICY);
    assert!(gw.sim().intent_ids().is_empty(), "no upstream work started");
}

#[tokio::test]
async fn binary_data_gets_an_error_frame_and_close_1003() {
    let gw = TestGateway::start().await;
    let mut client = gw.connect("/ws/link/whatsapp").await;
    client.qr().await;
    client.send(Message::Binary(vec![1, 2, 3].into())).await;
    let err = client.error().await;
    assert_eq!(err.code, "request/invalid_message");
    assert_eq!(client.closed().await, close::UNSUPPORTED_DATA);
    gw.wait_for_no_sessions().await;
}

#[tokio::test]
async fn malformed_json_gets_an_error_frame_and_close_1007() {
    let gw = TestGateway::start().await;
    let mut client = gw.connect("/ws/link/whatsapp").await;
    client.qr().await;
    client.send(Message::Text("{\"type\": cancel".into())).await;
    let err = client.error().await;
    assert_eq!(err.code, "request/invalid_message");
    assert_eq!(client.closed().await, close::INVALID_PAYLOAD);
}

#[tokio::test]
async fn an_oversized_message_gets_an_error_frame_and_close_1009() {
    let gw = TestGateway::start().await;
    let mut client = gw.connect("/ws/link/whatsapp").await;
    client.qr().await;
    let huge = json!({"type":"code","code":"x".repeat(MAX_CLIENT_MESSAGE_BYTES * 4)});
    client.send_json(huge).await;
    let err = client.error().await;
    assert_eq!(err.code, "request/invalid_message");
    assert_eq!(client.closed().await, close::TOO_BIG);
    gw.wait_for_no_sessions().await;
}

#[tokio::test]
async fn unknown_message_types_are_ignored_for_forward_compatibility() {
    let gw = TestGateway::start().await;
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let qr = client.qr().await;
    client
        .send_json(json!({"type":"hello_from_the_future","v":2}))
        .await;
    gw.sim().scan(&qr.intent_id).unwrap();
    assert!(matches!(
        client.frame().await.frame,
        ServerFrame::Account { .. }
    ));
}

#[tokio::test]
async fn cancel_stops_the_attempt_and_closes_1000() {
    let gw = TestGateway::start().await;
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let qr = client.qr().await;
    client.send_json(json!({"type":"cancel"})).await;
    match client.next().await {
        Next::Close(code) => assert_eq!(code, close::NORMAL),
        other => panic!("expected a close after cancel, got {other:?}"),
    }
    let intent = qr.intent_id.clone();
    gw.wait_for_poll(&intent, qrlink::simulator::PollOutcome::HungUp)
        .await;
    gw.wait_for_no_sessions().await;
}
