//! Bad input from a client gets an error frame and the right close code, never a panic or hang.

use std::net::SocketAddr;

use crate::common::{Next, TestGateway, WAIT};
use qrlink::link::protocol::{MAX_CLIENT_MESSAGE_BYTES, ServerFrame, close};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// Sends an upgrade request of `/ws/link/whatsapp` with these version and key header lines
/// over a fresh TCP connection and returns the response head.
async fn upgrade_head(addr: SocketAddr, version_and_key: &str) -> String {
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws/link/whatsapp HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\n{version_and_key}\r\n"
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(WAIT, async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = raw.read(&mut chunk).await.expect("a response");
            assert!(n > 0, "closed before the response head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a response head in time");
    let text = String::from_utf8(buf).expect("an ASCII head");
    text[..text.find("\r\n\r\n").expect("a head") + 2].to_owned()
}

/// The status code of a response head.
fn status(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// A response header's value, by case-insensitive name.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

const GOOD_KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test]
async fn a_wrong_websocket_version_gets_426_naming_version_13() {
    let gw = TestGateway::start().await;
    for version in [
        "Sec-WebSocket-Version: 8\r\n",
        "Sec-WebSocket-Version: 14\r\n",
        "Sec-WebSocket-Version: 13, 8\r\n",
        "",
    ] {
        let head = upgrade_head(gw.addr, &format!("{version}{GOOD_KEY}")).await;
        assert_eq!(status(&head), "426", "for {version:?}: {head}");
        assert_eq!(
            header(&head, "sec-websocket-version"),
            Some("13"),
            "for {version:?}: {head}"
        );
    }
    let head = upgrade_head(gw.addr, &format!("Sec-WebSocket-Version: 13\r\n{GOOD_KEY}")).await;
    assert_eq!(status(&head), "101", "version 13 upgrades: {head}");
}

#[tokio::test]
async fn a_websocket_key_that_is_not_16_bytes_of_base64_gets_400() {
    let gw = TestGateway::start().await;
    for key in [
        "",
        "x",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZXg=",
        "dGhlIHNhbXBsZSBub25jZXh4eA==",
        "dGhlIHNhbXBsZSBub25jZR==",
        "dGhlIHNhbXBsZSBub25j*Q==",
    ] {
        let head = upgrade_head(
            gw.addr,
            &format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"),
        )
        .await;
        assert_eq!(status(&head), "400", "for key {key:?}: {head}");
    }
    let head = upgrade_head(gw.addr, "Sec-WebSocket-Version: 13\r\n").await;
    assert_eq!(status(&head), "400", "without a key: {head}");
    assert!(gw.sim().intent_ids().is_empty(), "no upstream work started");
}
