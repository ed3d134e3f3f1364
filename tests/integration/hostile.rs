//! Hostile clients: slow headers, clients that never read, 1-byte fragments, a ping flood, a
//! storm of bad tokens, huge headers and a half-open connection. Each attack is bounded in time
//! and runs next to a good session, opened before it, that must still link after it.
//!
//! Where the attack needs bytes a WebSocket library would not send, the client is a raw
//! `TcpStream`. What the kernel holds for each connection is read from `/proc/net/tcp`
//! (Linux), matched to this process's sockets by inode, so tests running in parallel in the
//! same binary do not disturb the counts.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use qrlink::http::auth::{Claims, mint, now_secs};
use qrlink::link::protocol::{Envelope, MAX_CLIENT_MESSAGE_BYTES, ServerFrame, close, codes};
use qrlink::simulator::ProviderSim;
use qrlink::store::{Phase, WatchEvent};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_util::sync::CancellationToken;

use crate::common::{
    TWOFA, TestGateway, WAIT, WsClient, ends_with_the_account, frames_until_close, sim_config,
};

/// RFC 6455 §1.3's example key; any 16 bytes of base64 do.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// QRs that outlive every attack, so the good session still shows its first one at the end,
/// and pings every 500 ms, which keep the good session's reader (and its 15 s per-message
/// wait) busy however long an attack lasts. Later flags win.
async fn gateway(extra: &[&str]) -> TestGateway {
    let mut args = vec!["--ping-interval", "500ms"];
    args.extend_from_slice(extra);
    TestGateway::with(sim_config(Duration::from_secs(30), 2), &args).await
}

/// A plain link attempt kept open through an attack: its QR came before the attack, a task
/// reads on (answering the gateway's pings) and must end with the account once it is scanned.
struct GoodSession {
    intent: String,
    reader: JoinHandle<()>,
}

impl GoodSession {
    async fn open(gw: &TestGateway, path: &str) -> GoodSession {
        let mut client = gw.connect(path).await;
        let intent = client.qr().await.intent_id;
        let reader = tokio::spawn(async move { ends_with_the_account(&mut client).await });
        GoodSession { intent, reader }
    }

    /// Scans the QR shown before the attack; the session must end with the account.
    async fn links(self, gw: &TestGateway) {
        gw.sim().scan(&self.intent).unwrap_or_else(|e| {
            panic!("expected the good session's QR still scannable after the attack, got {e}")
        });
        tokio::time::timeout(WAIT, self.reader)
            .await
            .expect("expected the good session to end soon after its scan, it did not")
            .unwrap_or_else(|e| panic!("expected the good session to end with the account: {e}"));
    }
}

/// A TCP socket of this process as the kernel shows it.
#[derive(Debug, Clone, Copy)]
struct TcpEntry {
    local: SocketAddr,
    remote: SocketAddr,
    /// `/proc/net/tcp` `st`: 0x0A is LISTEN.
    state: u8,
    /// Bytes in the send queue not yet acknowledged by the peer.
    tx_queue: u64,
    /// Bytes received and not yet read by the application.
    rx_queue: u64,
}

/// This process's IPv4 TCP sockets (sockets in TIME_WAIT belong to no process and are left out).
/// Read off the runtime's thread: the kernel takes tens of milliseconds to print the table on a
/// busy machine, which would stall the gateway under test.
async fn own_tcp_sockets() -> Vec<TcpEntry> {
    tokio::task::spawn_blocking(read_own_tcp_sockets)
        .await
        .unwrap()
}

fn read_own_tcp_sockets() -> Vec<TcpEntry> {
    let own: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd (these tests need Linux)")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let addr = |field: &str| {
        let (ip, port) = field.split_once(':').unwrap();
        // The address is printed as the in-memory (network order) u32 in host order.
        let ip = u32::from_str_radix(ip, 16).unwrap().to_ne_bytes();
        SocketAddr::from((Ipv4Addr::from(ip), u16::from_str_radix(port, 16).unwrap()))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if !own.contains(f[9]) {
                return None;
            }
            let (tx, rx) = f[4].split_once(':').unwrap();
            Some(TcpEntry {
                local: addr(f[1]),
                remote: addr(f[2]),
                state: u8::from_str_radix(f[3], 16).unwrap(),
                tx_queue: u64::from_str_radix(tx, 16).unwrap(),
                rx_queue: u64::from_str_radix(rx, 16).unwrap(),
            })
        })
        .collect()
}

/// The gateway's side of its client connections (its listener left out): one file descriptor
/// each.
async fn gateway_sockets(gw: &TestGateway) -> Vec<TcpEntry> {
    own_tcp_sockets()
        .await
        .into_iter()
        .filter(|s| s.local == gw.addr && s.state != 0x0A)
        .collect()
}

/// Waits until `done` holds, looking every 20 ms (a task count has no event to wait on),
/// bounded by [`WAIT`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let polled = tokio::time::timeout(WAIT, async {
        let mut every = tokio::time::interval(Duration::from_millis(20));
        while !done() {
            every.tick().await;
        }
    })
    .await;
    assert!(
        polled.is_ok(),
        "expected {what} within {WAIT:?}, it did not happen"
    );
}

/// Waits until the gateway holds exactly `n` client connections. The kernel tells no one when
/// a socket is released, so this looks every 100 ms, bounded by [`WAIT`].
async fn wait_for_gateway_sockets(gw: &TestGateway, n: usize) {
    let mut last = Vec::new();
    let polled = tokio::time::timeout(WAIT, async {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            last = gateway_sockets(gw).await;
            if last.len() == n {
                return;
            }
            every.tick().await;
        }
    })
    .await;
    assert!(
        polled.is_ok(),
        "expected the gateway back to {n} client connection(s), it holds {}: {last:?}",
        last.len()
    );
}

fn upgrade_request(addr: SocketAddr, path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra_headers}\r\n"
    )
}

/// Where the response head ends in `buf`, if it has arrived.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn status_of(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\r').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// One server frame (unmasked, as RFC 6455 §5.1 requires) at the start of `buf`: its opcode,
/// its payload and its length on the wire; `None` until all of it has arrived.
fn server_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "expected an unmasked server frame");
    let (len, start) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        126 => return None,
        127 => panic!("expected no 64-bit frame lengths (the gateway fragments large messages)"),
        n => (usize::from(n), 2),
    };
    let end = start + len;
    (buf.len() >= end).then(|| (buf[0] & 0x0F, &buf[start..end], end))
}

/// The whole text messages in what a server sent (fragments joined; pings skipped; a message
/// cut short by the end of the connection left out).
fn whole_messages(mut bytes: &[u8]) -> Vec<String> {
    let (mut messages, mut partial) = (Vec::new(), Vec::new());
    while let Some((opcode, payload, used)) = server_frame(bytes) {
        let fin = bytes[0] & 0x80 != 0;
        if opcode <= 0x1 {
            partial.extend_from_slice(payload);
            if fin {
                messages.push(String::from_utf8(std::mem::take(&mut partial)).unwrap());
            }
        }
        bytes = &bytes[used..];
    }
    messages
}

/// A masked client frame with FIN set (payloads under 126 bytes).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37, 0xFA, 0x21, 0x3D];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Completes an upgrade by hand on `stream`; returns the bytes that followed the 101 head.
async fn raw_upgrade(stream: &mut TcpStream, addr: SocketAddr, path: &str) -> Vec<u8> {
    stream
        .write_all(upgrade_request(addr, path, "").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(end) = head_end(&buf) {
                return end;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the upgrade answer");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("expected the upgrade answered in time");
    assert_eq!(
        status_of(&buf),
        Some(101),
        "expected 101, got {}",
        String::from_utf8_lossy(&buf[..end])
    );
    buf.split_off(end)
}

/// A typed client over a socket the test made itself (to size its buffers).
async fn client_over(stream: TcpStream, addr: SocketAddr, path: &str) -> WsClient {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("expected the upgrade in time")
    .expect("expected the upgrade to succeed");
    WsClient { ws }
}

/// A TCP connection to the gateway whose receive buffer is as small as the kernel allows, so
/// a client that stops reading stalls the gateway's writes after a few kilobytes.
async fn small_window_stream(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

// 1. Slowloris.

/// Connections that trickle header bytes, plus a few that send nothing at all.
const SLOWLORIS: usize = 100;
/// One header byte per this: the attack's own pacing.
const TRICKLE: Duration = Duration::from_millis(50);

/// Opens a connection and trickles an endless request head (or stays silent) until the
/// gateway cuts it; returns how long it held on, and what the gateway said.
async fn slowloris(addr: SocketAddr, silent: bool, ready: mpsc::Sender<()>) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    if !silent {
        stream
            .write_all(b"GET /ws/link/whatsapp HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
    }
    ready.send(()).await.unwrap();
    let (mut read, mut write) = stream.split();
    let trickle = async {
        if silent {
            return std::future::pending().await;
        }
        for &byte in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n".iter().cycle() {
            tokio::time::sleep(TRICKLE).await;
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    };
    let mut answer = Vec::new();
    tokio::select! {
        // A reset after the answer is fine: what was read stays in `answer`.
        _ = read.read_to_end(&mut answer) => {}
        () = trickle => {}
    }
    (start.elapsed(), answer)
}

#[tokio::test]
async fn slow_header_senders_are_cut_at_the_handshake_timeout_and_new_clients_are_still_served() {
    let gw = gateway(&["--handshake-timeout", "500ms"]).await;
    let good = GoodSession::open(&gw, "/ws/link/whatsapp").await;
    let baseline = gateway_sockets(&gw).await.len();

    let (ready_tx, mut ready) = mpsc::channel(SLOWLORIS);
    let attackers: Vec<_> = (0..SLOWLORIS)
        .map(|i| tokio::spawn(slowloris(gw.addr, i % 10 == 0, ready_tx.clone())))
        .collect();
    for _ in 0..SLOWLORIS {
        tokio::time::timeout(WAIT, ready.recv())
            .await
            .expect("expected every slow connection open in time");
    }
    // While all of them hold a connection, a new client still gets its QR.
    let asked = Instant::now();
    let mut fresh = gw.connect("/ws/link/telegram").await;
    fresh.qr().await;
    let fresh_latency = asked.elapsed();

    let mut held = Vec::new();
    for attacker in attackers {
        let (how_long, answer) = tokio::time::timeout(WAIT, attacker)
            .await
            .expect("expected every slow connection cut in time")
            .unwrap();
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
            "expected nothing or 408 for a slow request head, got {}",
            String::from_utf8_lossy(&answer)
        );
        held.push(how_long);
    }
    let longest = held.iter().max().unwrap();
    // The timeout counts from the connection's first read, whatever trickles in after it.
    assert!(
        *longest < Duration::from_secs(3),
        "expected each slow connection cut about 500 ms after it opened, the longest held {longest:?}"
    );
    eprintln!(
        "slowloris: {SLOWLORIS} connections cut after {:?}..{longest:?}; a new client's QR took {fresh_latency:?}",
        held.iter().min().unwrap()
    );
    drop(fresh);
    wait_for_gateway_sockets(&gw, baseline).await;
    good.links(&gw).await;
}

// 2. A client that never reads.

/// Clients that read nothing after the upgrade.
const NEVER_READING: usize = 2;

#[tokio::test]
async fn clients_that_never_read_hold_a_bounded_queue_and_are_dropped_within_a_keepalive_round() {
    // google_messages issues a QR every 5 ms, asked for in every rendering (about 20 KB a
    // frame), so frames pile up behind a client that reads nothing. On loopback the kernel
    // grows the gateway's send buffer to megabytes before a write blocks, so the send timeout
    // may not see the stall in time; the keepalive (a ping every second that the client never
    // answers, 2 s of silence at most) ends the session whatever the buffers hold.
    let mut sim = sim_config(Duration::from_secs(30), 2);
    sim.providers.retain(|p| p.name != "google_messages");
    sim.providers.push(ProviderSim::new(
        "google_messages",
        Duration::from_millis(5),
        1_000_000,
    ));
    let gw = TestGateway::with(sim, &["--ping-interval", "1s", "--client-timeout", "2s"]).await;
    let good = GoodSession::open(&gw, "/ws/link/whatsapp").await;
    let mut events = gw.state.store.subscribe();

    let started = Instant::now();
    // Raw sockets: a WebSocket library would answer the gateway's pings while the test drains
    // them, and a pong written to a connection the gateway has closed makes its kernel reset
    // the connection and drop what it still had to deliver.
    let mut clients = Vec::new();
    for _ in 0..NEVER_READING {
        let mut stream = small_window_stream(gw.addr).await;
        let path = "/ws/link/google_messages?qr=svg,text,raw";
        let early = raw_upgrade(&mut stream, gw.addr, path).await;
        clients.push((stream.local_addr().unwrap(), stream, early));
    }
    // What each session published, counted from the watch events, until all of them ended;
    // meanwhile, the most the kernel held for any of them.
    let mut published: HashMap<String, usize> = HashMap::new();
    let mut ended: HashMap<String, u64> = HashMap::new();
    // The kernel's share of what is held, measured beside the loop (reading /proc/net/tcp takes
    // longer the more sockets the machine has) so that it never delays the events.
    let (unsent, unread) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn({
        let (unsent, unread, sampling) = (unsent.clone(), unread.clone(), sampling.clone());
        let locals: Vec<SocketAddr> = clients.iter().map(|(local, ..)| *local).collect();
        async move {
            let mut sample = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    () = sampling.cancelled() => return,
                    _ = sample.tick() => {}
                }
                for s in own_tcp_sockets().await {
                    if locals.contains(&s.remote) {
                        unsent.fetch_max(s.tx_queue, Ordering::Relaxed);
                    }
                    if locals.contains(&s.local) {
                        unread.fetch_max(s.rx_queue, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    let ended_in_time = tokio::time::timeout(WAIT, async {
        while ended.len() < NEVER_READING {
            match events.recv().await.expect("watch events") {
                WatchEvent::Opened {
                    session, provider, ..
                } if provider == "google_messages" => {
                    published.insert(session, 0);
                }
                WatchEvent::Frame(env) => {
                    if let Some(n) = published.get_mut(&env.session) {
                        *n += 1;
                    }
                }
                WatchEvent::Closed {
                    session,
                    duration_ms,
                    ..
                } if published.contains_key(&session) => {
                    ended.insert(session, duration_ms);
                }
                _ => {}
            }
        }
    })
    .await;
    sampling.cancel();
    sampler.await.unwrap();
    let (most_unsent, most_unread) = (
        unsent.load(Ordering::Relaxed),
        unread.load(Ordering::Relaxed),
    );
    ended_in_time.unwrap_or_else(|_| {
        panic!(
            "expected every never-reading session ended, ended {ended:?}; published {published:?}, \
             most unsent {most_unsent} B, most unread {most_unread} B"
        )
    });
    let all_ended = started.elapsed();

    // Now read what the kernel delivered: whole messages, until the gateway's hang-up.
    let mut delivered = Vec::new();
    for (_, mut stream, mut bytes) in clients {
        tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes))
            .await
            .expect("expected the connection to end after the session did")
            .expect("expected the gateway's hang-up to be a clean one");
        let messages = whole_messages(&bytes);
        let first: Envelope = serde_json::from_str(&messages[0]).unwrap();
        delivered.push((first.session, messages.len()));
    }
    for (session, got) in &delivered {
        let sent = published[session];
        // Published but never delivered: the frame whose send timed out, and at most the link
        // attempt's frame queue of 4 (link_socket::FRAME_QUEUE); nothing else piles up.
        assert!(
            sent - got <= 5,
            "expected at most 5 frames held for a client that never reads, {sent} published and {got} delivered"
        );
    }
    let longest = ended.values().max().unwrap();
    assert!(
        *longest < 5_000,
        "expected each never-reading session dropped within a keepalive round (1 s + 2 s), the longest lasted {longest} ms"
    );
    eprintln!(
        "never reading: {NEVER_READING} sessions ended after {:?} (longest {longest} ms); \
         frames (published, delivered) {:?}; most unsent in the gateway's kernel buffer {most_unsent} B, \
         most unread in the client's {most_unread} B",
        all_ended,
        delivered
            .iter()
            .map(|(s, got)| (published[s], *got))
            .collect::<Vec<_>>()
    );
    good.links(&gw).await;
}

// 3. 1-byte fragments.

/// Sends `text` as one message of 1-byte frames: a Text frame, then Continuation frames, the
/// last with FIN; a Ping falls among them (RFC 6455 §5.4 allows control frames there).
async fn send_in_1_byte_fragments(client: &mut WsClient, text: &str) {
    for (i, byte) in text.bytes().enumerate() {
        let opcode = if i == 0 { Data::Text } else { Data::Continue };
        let last = i == text.len() - 1;
        let frame = Frame::message(vec![byte], OpCode::Data(opcode), last);
        client.send(Message::Frame(frame)).await;
        if i == text.len() / 2 {
            client.send(Message::Ping(b"between".to_vec().into())).await;
        }
    }
}

#[tokio::test]
async fn messages_in_1_byte_fragments_are_reassembled_and_an_endless_one_is_cut_with_1009() {
    let gw = gateway(&[]).await;
    let good = GoodSession::open(&gw, "/ws/link/whatsapp").await;

    // A 2FA answer in 1-byte fragments.
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut twofa = client_over(stream, gw.addr, "/ws/link/telegram").await;
    let qr = twofa.qr().await;
    gw.sim().scan(&qr.intent_id).unwrap();
    match twofa.frame().await.frame {
        ServerFrame::Checkpoint { checkpoint, .. } => assert_eq!(checkpoint["type"], "2FA"),
        other => panic!("expected a checkpoint frame, got {other:?}"),
    }
    let code = json!({"type":"code","code":TWOFA}).to_string();
    send_in_1_byte_fragments(&mut twofa, &code).await;
    ends_with_the_account(&mut twofa).await;

    // A cancel in 1-byte fragments.
    let mut cancelling = gw.connect("/ws/link/whatsapp").await;
    cancelling.qr().await;
    send_in_1_byte_fragments(&mut cancelling, r#"{"type":"cancel"}"#).await;
    let (frames, code) = frames_until_close(&mut cancelling).await;
    assert!(
        frames.is_empty() && code == close::NORMAL,
        "expected a cancel to close 1000 with no frame, got {frames:?} and {code}"
    );

    // A message that never ends: 1-byte Continuation frames until the gateway cuts it.
    let endless = gw.connect("/ws/link/whatsapp").await;
    let (mut tx, mut rx) = endless.ws.split();
    let writer = tokio::spawn(async move {
        let start = Frame::message(vec![b'{'], OpCode::Data(Data::Text), false);
        let mut sent = 0usize;
        let mut frame = Some(start);
        // Bounded: ten times the limit, far more than the gateway needs to see.
        while sent < 10 * MAX_CLIENT_MESSAGE_BYTES {
            let next = frame
                .take()
                .unwrap_or_else(|| Frame::message(vec![b' '], OpCode::Data(Data::Continue), false));
            if tx.send(Message::Frame(next)).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let (mut error, mut close_code) = (None, None);
    tokio::time::timeout(WAIT, async {
        while let Some(msg) = rx.next().await {
            match msg {
                Ok(Message::Text(t)) => {
                    let env: Envelope = serde_json::from_str(&t).unwrap();
                    if let ServerFrame::Error(e) = env.frame {
                        error = Some(e.code);
                    }
                }
                Ok(Message::Close(frame)) => {
                    close_code = frame.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("expected an error frame and a close, got {e}"),
            }
        }
    })
    .await
    .expect("expected the endless message cut in time");
    assert_eq!(
        (error.as_deref(), close_code),
        (Some(codes::INVALID_MESSAGE), Some(close::TOO_BIG)),
        "expected request/invalid_message and close 1009 for an endless message"
    );
    let sent = tokio::time::timeout(WAIT, writer)
        .await
        .expect("expected the writer to stop once the gateway closed")
        .unwrap();
    assert!(
        sent > MAX_CLIENT_MESSAGE_BYTES,
        "expected the cut only past {MAX_CLIENT_MESSAGE_BYTES} bytes, it came after {sent} frames"
    );
    good.links(&gw).await;
}

// 4. A ping flood.

/// Pings from the client that reads its pongs.
const PINGS: usize = 5_000;
/// Pings at most from the client that never reads (it is cut well before).
const UNREAD_PINGS_CAP: usize = 200_000;

#[tokio::test]
async fn a_ping_flood_is_answered_or_dropped_and_a_flooder_that_never_reads_is_cut() {
    let gw = gateway(&["--ping-interval", "200ms", "--client-timeout", "1s"]).await;
    let good = GoodSession::open(&gw, "/ws/link/whatsapp").await;

    // A client that reads: thousands of pings, then a cancel that must still be heard.
    let mut flooder = gw.connect("/ws/link/whatsapp").await;
    flooder.qr().await;
    let (mut tx, mut rx) = flooder.ws.split();
    let reader = tokio::spawn(async move {
        let mut pongs = 0usize;
        loop {
            match tokio::time::timeout(WAIT, rx.next()).await {
                Ok(Some(Ok(Message::Pong(_)))) => pongs += 1,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return (pongs, frame.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("expected pongs then a close, got {other:?}"),
            }
        }
    });
    let payload = vec![0x5A; 125];
    let flood_started = Instant::now();
    for i in 0..PINGS {
        tx.feed(Message::Ping(payload.clone().into()))
            .await
            .unwrap();
        if i % 64 == 63 {
            tx.flush().await.unwrap();
        }
    }
    tx.send(Message::Text(r#"{"type":"cancel"}"#.into()))
        .await
        .unwrap();
    let (pongs, code) = tokio::time::timeout(WAIT, reader)
        .await
        .expect("expected the flooder's cancel answered in time")
        .unwrap();
    let answered_in = flood_started.elapsed();
    assert_eq!(
        code,
        Some(close::NORMAL),
        "expected the cancel to close 1000"
    );
    assert!(
        (1..=PINGS).contains(&pongs),
        "expected between 1 and {PINGS} pongs (a pong not yet sent is replaced by the next), got {pongs}"
    );
    gw.state.store.wait_for_count(|n| n == 1).await;

    // A client that never reads: pings without end on a small window. Its pongs pile up to
    // the gateway's write buffer and no further, and the next keepalive cannot go out.
    let mut raw = small_window_stream(gw.addr).await;
    raw_upgrade(&mut raw, gw.addr, "/ws/link/whatsapp").await;
    tokio::time::timeout(WAIT, gw.state.store.wait_for_count(|n| n == 2))
        .await
        .expect("expected the flooder's session open");
    let local = raw.local_addr().unwrap();
    let (_read_half, mut write_half) = raw.into_split();
    let chunk: Vec<u8> = (0..1_000)
        .flat_map(|_| client_frame(0x9, &payload))
        .collect();
    let unread_started = Instant::now();
    let flood = tokio::spawn(async move {
        let mut sent = 0;
        while sent < UNREAD_PINGS_CAP && write_half.write_all(&chunk).await.is_ok() {
            sent += 1_000;
        }
        sent
    });
    // Meanwhile a new client is served without delay.
    let asked = Instant::now();
    let mut fresh = gw.connect("/ws/link/telegram").await;
    fresh.qr().await;
    let fresh_latency = asked.elapsed();
    let kernel_held = gateway_sockets(&gw)
        .await
        .iter()
        .find(|s| s.remote == local)
        .map(|s| s.tx_queue);
    drop(fresh);
    tokio::time::timeout(WAIT, gw.state.store.wait_for_count(|n| n == 1))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "expected the never-reading flooder dropped, sessions {:?}",
                gw.state.store.snapshot()
            )
        });
    let cut_after = unread_started.elapsed();
    let unread_sent = tokio::time::timeout(WAIT, flood)
        .await
        .expect("expected the flood to stop once the gateway dropped it")
        .unwrap();
    assert!(
        unread_sent < UNREAD_PINGS_CAP,
        "expected the gateway to drop the never-reading flooder, it took all {unread_sent} pings"
    );
    assert!(
        cut_after < Duration::from_secs(5),
        "expected the never-reading flooder cut within a keepalive round (200 ms + 1 s), took {cut_after:?}"
    );
    eprintln!(
        "ping flood: {PINGS} pings, {pongs} pongs, cancel answered after {answered_in:?}; \
         a never-reading flooder got {unread_sent} pings in and was cut after {cut_after:?} \
         (gateway kernel send queue {kernel_held:?} B); a new client's QR took {fresh_latency:?}"
    );
    good.links(&gw).await;
}

// 5. 10,000 bad tokens from one address.

const SECRET: &str = "connect-token-secret-for-tests";
const BAD_UPGRADES: usize = 10_000;
/// Upgrades in flight at once, each on its own connection (an upgrade takes the connection).
const STORM_CONNECTIONS: usize = 16;

fn claims(exp: u64) -> Claims {
    Claims {
        sub: "user-42".into(),
        exp,
        iat: Some(now_secs()),
        provider: None,
        account_id: None,
        proxy: None,
    }
}

/// One upgrade with a bad token: it must be answered 101, then `request/unauthorized`, then
/// Close 1008; the client closes back and waits for the gateway to hang up.
async fn bad_token_upgrade(addr: SocketAddr, path: &str) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buf = raw_upgrade(&mut stream, addr, path).await;
    let mut chunk = [0u8; 1024];
    let (error, close_code) = loop {
        if let Some((0x1, text, used)) = server_frame(&buf)
            && let Some((0x8, close, _)) = server_frame(&buf[used..])
        {
            let env: Envelope = serde_json::from_slice(text).unwrap();
            let ServerFrame::Error(e) = env.frame else {
                panic!("expected an error frame, got {env:?}");
            };
            break (e.code, u16::from_be_bytes([close[0], close[1]]));
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "expected an error frame and a close, the connection ended"
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    assert_eq!(
        (error.as_str(), close_code),
        (codes::UNAUTHORIZED, close::POLICY),
        "expected request/unauthorized and 1008 for {path}"
    );
    stream
        .write_all(&client_frame(0x8, &close::POLICY.to_be_bytes()))
        .await
        .unwrap();
    // The gateway hangs up once the close handshake is done; a reset is a hang-up too.
    let _ = stream.read_to_end(&mut Vec::new()).await;
}

#[tokio::test]
async fn ten_thousand_upgrades_with_bad_tokens_are_each_refused_and_leave_nothing_behind() {
    let gw = gateway(&["--token-secret", SECRET]).await;
    let good_token = mint(SECRET, &claims(now_secs() + 300));
    let good = GoodSession::open(&gw, &format!("/ws/link/whatsapp?token={good_token}")).await;
    let sockets_before = gateway_sockets(&gw).await.len();
    let tasks_before = gw.state.tracker.len();

    let forged = mint("not-the-secret", &claims(now_secs() + 300));
    let mut stale = claims(now_secs() - 120);
    stale.iat = Some(now_secs() - 180);
    let expired = mint(SECRET, &stale);
    let paths: Vec<String> = vec![
        "/ws/link/whatsapp".into(),
        "/ws/link/whatsapp?token=garbage".into(),
        format!("/ws/link/whatsapp?token={forged}"),
        format!("/ws/link/whatsapp?token={expired}"),
    ];
    let started = Instant::now();
    let workers: Vec<_> = (0..STORM_CONNECTIONS)
        .map(|w| {
            let (addr, paths) = (gw.addr, paths.clone());
            tokio::spawn(async move {
                for i in (w..BAD_UPGRADES).step_by(STORM_CONNECTIONS) {
                    bad_token_upgrade(addr, &paths[i % paths.len()]).await;
                }
            })
        })
        .collect();
    // Bounded: the debug build does these in 4–5 s on a busy 2-core machine.
    tokio::time::timeout(Duration::from_secs(120), async {
        for worker in workers {
            worker.await.unwrap();
        }
    })
    .await
    .expect("expected 10,000 refusals within 120 s");
    let took = started.elapsed();

    wait_for_gateway_sockets(&gw, sockets_before).await;
    wait_until("the socket tasks back to the good session's", || {
        gw.state.tracker.len() == tasks_before
    })
    .await;
    assert_eq!(
        gw.sim().intent_ids().len(),
        1,
        "expected no upstream work for refused tokens"
    );
    let health = reqwest::get(gw.url("/healthz")).await.unwrap().status();
    assert_eq!(health, 200, "expected the gateway healthy after the storm");
    eprintln!(
        "bad tokens: {BAD_UPGRADES} upgrades refused in {took:?} ({:.0}/s) on {STORM_CONNECTIONS} connections at a time",
        BAD_UPGRADES as f64 / took.as_secs_f64()
    );
    good.links(&gw).await;
}

// 6. 100 KB of headers.

/// Sends `request` and reads the answer until the gateway hangs up; the status, if any.
async fn status_for(addr: SocketAddr, request: String) -> Option<u16> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    // Written alongside the read: the gateway may answer and hang up before taking it all.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(request.as_bytes()).await;
        write
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, read.read_to_end(&mut answer))
        .await
        .expect("expected the gateway to answer and hang up in time");
    drop(writer.await);
    status_of(&answer)
}

#[tokio::test]
async fn an_upgrade_with_100_kb_of_headers_is_refused_with_an_http_error() {
    let gw = gateway(&[]).await;
    let good = GoodSession::open(&gw, "/ws/link/whatsapp").await;
    let path = "/ws/link/whatsapp";
    let one_big = format!("X-Big: {}\r\n", "a".repeat(100 * 1024));
    let many_small: String = (0..1_000)
        .map(|i| format!("X-Filler-{i:04}: {}\r\n", "b".repeat(84)))
        .collect();
    let long_url = format!("{path}?pad={}", "c".repeat(100 * 1024));
    let cases = [
        (
            "one 100 KB header",
            upgrade_request(gw.addr, path, &one_big),
        ),
        (
            "1,000 headers of 100 bytes",
            upgrade_request(gw.addr, path, &many_small),
        ),
        ("a 100 KB URL", upgrade_request(gw.addr, &long_url, "")),
    ];
    for (what, request) in cases {
        let status = status_for(gw.addr, request).await;
        assert!(
            matches!(status, Some(414 | 431)),
            "expected {what} refused with 431 (or 414), got {status:?}"
        );
    }
    assert_eq!(
        gw.state.store.snapshot().len(),
        1,
        "expected no session from the oversized requests"
    );
    good.links(&gw).await;
}

// 7. Half-open TCP.

async fn wait_detached(events: &mut broadcast::Receiver<WatchEvent>, id: &str) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(WatchEvent::Detached { session, .. }) if session == id => return,
                Ok(_) => continue,
                Err(e) => panic!("expected a detached event, the watch ended: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected session {id} detached in time"));
}

#[tokio::test]
async fn a_half_open_client_is_detached_by_the_ping_timeout_then_resumed_and_linked() {
    let gw = gateway(&[
        "--resume-grace",
        "60s",
        "--ping-interval",
        "200ms",
        "--client-timeout",
        "1s",
    ])
    .await;
    let good = GoodSession::open(&gw, "/ws/link/whatsapp").await;
    let mut events = gw.state.store.subscribe();

    // Upgraded over a plain TCP stream; after its first QR the client is never polled again,
    // so it answers no ping and sends nothing, yet its socket stays open: to the gateway it
    // looks like a peer whose network vanished.
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut silent = client_over(stream, gw.addr, "/ws/link/google_messages").await;
    let first = silent.frame().await;
    let went_silent = Instant::now();
    let token = first
        .resume
        .clone()
        .unwrap_or_else(|| panic!("expected a resume token on {first:?}"));
    let intent = match &first.frame {
        ServerFrame::Qr(q) => q.intent_id.clone(),
        other => panic!("expected a qr frame, got {other:?}"),
    };
    wait_detached(&mut events, &first.session).await;
    let detached_after = went_silent.elapsed();
    assert!(
        detached_after < Duration::from_secs(3),
        "expected the detach a ping round after the 1 s client timeout, it took {detached_after:?}"
    );
    let phase = gw
        .state
        .store
        .snapshot()
        .into_iter()
        .find(|s| s.id == first.session)
        .map(|s| s.phase);
    assert_eq!(
        phase,
        Some(Phase::Detached),
        "expected the session detached"
    );

    // The gateway let go of the silent connection: past its pings, the stream ends.
    tokio::time::timeout(WAIT, async {
        loop {
            match silent.ws.next().await {
                Some(Ok(Message::Ping(_))) => continue,
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(other)) => panic!("expected only pings then the end, got {other:?}"),
            }
        }
    })
    .await
    .expect("expected the gateway to drop the silent connection");

    let mut resumed = gw
        .connect(&format!("/ws/link/google_messages?resume={token}"))
        .await;
    let replay = resumed.frame().await;
    assert!(
        replay.replay && replay.seq == first.seq,
        "expected the first qr replayed, got {replay:?}"
    );
    gw.sim().scan(&intent).unwrap();
    ends_with_the_account(&mut resumed).await;
    eprintln!("half-open: detached {detached_after:?} after the client went silent");
    good.links(&gw).await;
}
