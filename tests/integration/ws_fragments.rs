//! Large messages on `/ws/link/{provider}` go out as fragmented WebSocket messages (RFC 6455
//! §5.4) so the gateway's per-socket out buffer stays small; clients still get whole messages.
//! The raw client here does the HTTP upgrade by hand and reads frames as they are on the wire.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::{TestGateway, WAIT, sim_config};
use qrlink::http::link_socket::FRAGMENT_SIZE;
use qrlink::link::protocol::{Envelope, ServerFrame, close};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameSocket};

/// RFC 6455 §1.3's example key and the accept value it must get.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A gateway whose QRs outlive the test, so no rotation interleaves with what is checked.
async fn slow_gateway() -> TestGateway {
    TestGateway::with(sim_config(Duration::from_secs(30), 2), &[]).await
}

/// Runs blocking socket code off the runtime thread, which keeps serving the gateway.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("raw client panicked")
}

/// Sends a raw HTTP request and returns the response head and whatever followed it.
fn http_exchange(addr: SocketAddr, request: &str) -> (TcpStream, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).expect("response head in time");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    (stream, head, buf[end..].to_vec())
}

fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

/// The value of a response header, by case-insensitive name.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

/// A WebSocket client that shows each frame as it arrived.
struct RawClient {
    frames: FrameSocket<TcpStream>,
    head: String,
}

impl RawClient {
    fn connect(addr: SocketAddr, path: &str, extra_headers: &str) -> RawClient {
        let (stream, head, rest) = http_exchange(addr, &upgrade_request(addr, path, extra_headers));
        assert_eq!(status_of(&head), 101, "{head}");
        RawClient {
            frames: FrameSocket::from_partially_read(stream, rest),
            head,
        }
    }

    fn frame(&mut self) -> Frame {
        self.frames
            .read(None)
            .expect("a frame in time")
            .expect("a frame, not the end of the connection")
    }

    /// The frames of the next data message, in order; control frames between them are skipped
    /// (RFC 6455 allows them there).
    fn message(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let f = self.frame();
            match f.header().opcode {
                OpCode::Control(Control::Ping | Control::Pong) => continue,
                OpCode::Control(c) => panic!("expected a data frame, got {c:?} after {frames:?}"),
                OpCode::Data(_) => {}
            }
            let last = f.header().is_final;
            frames.push(f);
            if last {
                return frames;
            }
        }
    }

    /// The next frame that is not a ping or pong, expected to be Close; its code.
    fn close_code(&mut self) -> u16 {
        loop {
            let f = self.frame();
            match f.header().opcode {
                OpCode::Control(Control::Ping | Control::Pong) => continue,
                OpCode::Control(Control::Close) => {
                    let p = f.payload();
                    return u16::from_be_bytes([p[0], p[1]]);
                }
                other => panic!("expected a close, got {other:?}"),
            }
        }
    }

    /// Sends a masked frame, as a client must.
    fn send(&mut self, mut frame: Frame) {
        frame.header_mut().mask = Some([0x37, 0xfa, 0x21, 0x3d]);
        self.frames.send(frame).unwrap();
    }

    fn send_text(&mut self, text: &str) {
        let frame = Frame::message(text.as_bytes().to_vec(), OpCode::Data(Data::Text), true);
        self.send(frame);
    }
}

fn reassemble(frames: &[Frame]) -> Envelope {
    let bytes: Vec<u8> = frames.iter().flat_map(|f| f.payload().to_vec()).collect();
    let text = String::from_utf8(bytes).expect("a text message is UTF-8 as a whole");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text} does not parse: {e}"))
}

#[tokio::test]
async fn a_qr_message_arrives_as_fragments_of_at_most_the_fragment_size() {
    let gw = slow_gateway().await;
    let addr = gw.addr;
    let (head, frames, close_code) = blocking(move || {
        let mut c = RawClient::connect(
            addr,
            "/ws/link/whatsapp?qr=svg,text,raw",
            "Sec-WebSocket-Protocol: qrlink.v1\r\n",
        );
        let frames = c.message();
        c.send_text(r#"{"type":"cancel"}"#);
        let code = c.close_code();
        c.send(Frame::close(None));
        (c.head, frames, code)
    })
    .await;

    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some(ACCEPT),
        "{head}"
    );
    assert_eq!(header(&head, "sec-websocket-protocol"), Some("qrlink.v1"));
    assert!(
        header(&head, "upgrade")
            .unwrap()
            .eq_ignore_ascii_case("websocket")
    );

    let total: usize = frames.iter().map(|f| f.payload().len()).sum();
    assert!(
        frames.len() >= total.div_ceil(FRAGMENT_SIZE) && frames.len() >= 2,
        "a {total}-byte qr message came in {} frame(s)",
        frames.len()
    );
    let (first, rest) = frames.split_first().unwrap();
    assert_eq!(first.header().opcode, OpCode::Data(Data::Text));
    for (i, f) in frames.iter().enumerate() {
        assert!(
            f.payload().len() <= FRAGMENT_SIZE,
            "fragment {i} carries {} bytes",
            f.payload().len()
        );
        assert_eq!(
            f.header().is_final,
            i == frames.len() - 1,
            "FIN of fragment {i}"
        );
    }
    for f in rest {
        assert_eq!(f.header().opcode, OpCode::Data(Data::Continue));
    }
    let env = reassemble(&frames);
    assert_eq!(env.seq, 1);
    match env.frame {
        ServerFrame::Qr(qr) => {
            assert_eq!(qr.rotation, 1);
            assert!(qr.svg.unwrap().starts_with("<svg"));
            assert!(qr.text.is_some() && qr.raw.is_some());
        }
        other => panic!("expected a qr frame, got {other:?}"),
    }
    // The client's masked `cancel` was read as usual.
    assert_eq!(close_code, close::NORMAL);
    gw.wait_for_no_sessions().await;
}

#[tokio::test]
async fn small_messages_go_out_whole_and_unspoken_subprotocols_are_not_echoed() {
    let gw = slow_gateway().await;
    let addr = gw.addr;
    let (head, frames, close_code) = blocking(move || {
        let mut c = RawClient::connect(
            addr,
            "/ws/link/myspace",
            "Sec-WebSocket-Protocol: qrlink.token.abc\r\n",
        );
        let frames = c.message();
        let code = c.close_code();
        (c.head, frames, code)
    })
    .await;
    assert_eq!(header(&head, "sec-websocket-protocol"), None, "{head}");
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].header().opcode, OpCode::Data(Data::Text));
    match reassemble(&frames).frame {
        ServerFrame::Error(e) => assert_eq!(e.code, "request/unknown_provider"),
        other => panic!("expected an error frame, got {other:?}"),
    }
    assert_eq!(close_code, u16::from(CloseCode::Policy));
}

#[tokio::test]
async fn typed_clients_still_get_whole_qr_messages() {
    let gw = slow_gateway().await;
    let mut client = gw.connect("/ws/link/whatsapp?qr=svg,text").await;
    let text = client.ws_text().await;
    assert!(text.len() > 2 * FRAGMENT_SIZE, "{} bytes", text.len());
    let env: Envelope = serde_json::from_str(&text).unwrap();
    assert!(matches!(env.frame, ServerFrame::Qr(q) if q.rotation == 1));
}

#[tokio::test]
async fn requests_that_are_not_websocket_upgrades_are_refused() {
    let gw = slow_gateway().await;
    let addr = gw.addr;
    let path = "/ws/link/whatsapp";
    let base = |extra: &str| upgrade_request(addr, path, extra);
    let cases: Vec<(String, u16)> = vec![
        (format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"), 400),
        (base("").replacen("GET", "POST", 1), 405),
        // RFC 6455 4.2.2: another version gets 426 with the one this server speaks.
        (base("").replace("Version: 13", "Version: 8"), 426),
        (
            base("").replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""),
            400,
        ),
        (
            base("").replace("Connection: Upgrade", "Connection: keep-alive"),
            400,
        ),
        (base("").replace("Upgrade: websocket", "Upgrade: h2c"), 400),
        (base("Origin: https://evil.example\r\n"), 403),
        // `Connection` is a token list.
        (
            base("").replace("Connection: Upgrade", "Connection: keep-alive, Upgrade"),
            101,
        ),
    ];
    for (request, expected) in cases {
        let head = blocking(move || http_exchange(addr, &request).1).await;
        assert_eq!(status_of(&head), expected, "{head}");
    }
}
