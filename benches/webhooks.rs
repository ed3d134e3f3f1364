//! Webhook figures (issue 11), through the call the store makes when a session ends
//! (`Notifier::ended`), with a receiver on loopback in the same process:
//! - outcome → delivery: the time from `ended` to the receiver reading the request, over 1,000
//!   outcomes paced at 500/s and over 1,000 at once (p50, p99, max);
//! - memory per pending delivery beyond its body: 100,000 outcomes queued behind a receiver
//!   that never answers (one attempt in flight), heap counted by a counting allocator.
//!
//! With `redis-server` on the PATH, the latencies again with the cluster mode's outbox (a Redis
//! Stream, src/notify/redis_outbox.rs) on a redis-server the bench starts on a free port, and
//! the Redis memory per pending webhook (`used_memory`, 10,000 pending).
//!
//! `cargo bench --bench webhooks` (benches/README.md, "Webhooks").

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use qrlink::link::protocol::{QrFrame, ServerFrame};
use qrlink::notify::outbox::RedisOutboxConfig;
use qrlink::notify::signing::Secrets;
use qrlink::notify::{Ending, Kind, Notes, Notifier, WebhookConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Counts live heap bytes.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SECRET: &str = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMDEyMzQ1Njc4OQ==";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        latency("paced 500/s", 1000, Duration::from_millis(2), None).await;
        latency("burst", 1000, Duration::ZERO, None).await;
        memory(100_000).await;
        let Some(redis) = RedisServer::start() else {
            println!("no redis-server on the PATH: the Redis outbox is not measured");
            return;
        };
        let outbox = |prefix: &str| RedisOutboxConfig {
            url: redis.url(),
            prefix: prefix.to_owned(),
            node: "bench-node".into(),
            claim_idle: Duration::from_secs(20),
        };
        latency(
            "paced 500/s, Redis outbox",
            1000,
            Duration::from_millis(2),
            Some(outbox("b1:")),
        )
        .await;
        latency(
            "burst, Redis outbox",
            1000,
            Duration::ZERO,
            Some(outbox("b2:")),
        )
        .await;
        redis_memory(&redis, outbox("b3:"), 10_000).await;
    });
}

/// A redis-server on a free loopback port, no persistence; killed when dropped.
struct RedisServer {
    child: std::process::Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A session's notes as a scanned WhatsApp attempt leaves them.
fn notes() -> Notes {
    let notes = Notes::default();
    notes.note(&ServerFrame::Qr(QrFrame {
        rotation: 1,
        intent_id: "acc_7Hq2LmN9pQr4StUv6WxYz1".into(),
        expires_at: String::new(),
        svg: None,
        text: None,
        raw: None,
    }));
    let account = serde_json::json!({"object": "Account", "id": "acc_7Hq2LmN9pQr4StUv6WxYz1",
        "name": "+33 6 12 34 56 78", "provider": "WHATSAPP", "status": "running",
        "created_at": "2026-11-28T10:01:02.345Z"});
    notes.note(&ServerFrame::Account {
        account: account.as_object().unwrap().clone(),
        state: None,
        result: None,
    });
    notes
}

fn session(i: usize) -> String {
    format!("ses_{i:020}")
}

fn ending<'a>(session: &'a str, notes: &'a Notes) -> Ending<'a> {
    Ending {
        session,
        provider: "whatsapp",
        state: Some("user-0000000042"),
        kind: Kind::Succeeded,
        duration: Duration::from_millis(23_456),
        notes,
    }
}

async fn notifier(url: String, concurrency: usize, redis: Option<RedisOutboxConfig>) -> Notifier {
    Notifier::start(WebhookConfig {
        url: url.parse().unwrap(),
        secrets: Secrets::parse(SECRET).unwrap(),
        timeout: Duration::from_secs(15),
        concurrency,
        retry_scale: 1.0,
        node: "bench-node".into(),
        redis,
    })
    .unwrap()
}

/// A receiver that answers 204 and reports (session, arrival) of each webhook.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(String, Instant)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    async fn receive(
        State(tx): State<mpsc::UnboundedSender<(String, Instant)>>,
        body: Bytes,
    ) -> StatusCode {
        let at = Instant::now();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let _ = tx.send((v["data"]["session"].as_str().unwrap().to_owned(), at));
        StatusCode::NO_CONTENT
    }
    let app = Router::new().fallback(receive).with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn latency(label: &str, n: usize, every: Duration, redis: Option<RedisOutboxConfig>) {
    let (url, mut arrivals) = receiver().await;
    let notifier = notifier(url, 32, redis).await;
    let notes = notes();
    let sessions: Vec<String> = (0..n).map(session).collect();
    let mut sent = HashMap::with_capacity(n);
    let mut tick = tokio::time::interval(every.max(Duration::from_nanos(1)));
    for s in &sessions {
        if !every.is_zero() {
            tick.tick().await;
        }
        sent.insert(s.clone(), Instant::now());
        notifier.ended(ending(s, &notes));
    }
    let mut micros = Vec::with_capacity(n);
    while micros.len() < n {
        let (s, at) = tokio::time::timeout(Duration::from_secs(30), arrivals.recv())
            .await
            .expect("every webhook arrives")
            .unwrap();
        micros.push((at - sent[&s]).as_micros() as u64);
    }
    micros.sort_unstable();
    let q = |p: f64| micros[((micros.len() as f64 * p).ceil() as usize).clamp(1, micros.len()) - 1];
    println!(
        "outcome → delivery, {label}, {n} outcomes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        q(0.50) as f64 / 1000.0,
        q(0.99) as f64 / 1000.0,
        *micros.last().unwrap() as f64 / 1000.0
    );
    notifier.drain(Instant::now()).await;
}

/// A receiver that reads the request and never answers: the first attempt waits (15 s
/// timeout), everything else stays pending. Its URL, and a signal per request.
async fn hanging_receiver() -> (String, Arc<tokio::sync::Notify>) {
    let arrived = Arc::new(tokio::sync::Notify::new());
    let app = Router::new().fallback({
        let arrived = arrived.clone();
        move || async move {
            arrived.notify_one();
            std::future::pending::<StatusCode>().await
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, arrived)
}

async fn memory(n: usize) {
    let (notifier, rest) = stalled(n, None).await;
    let before = LIVE.load(Ordering::Relaxed);
    rest.queue(&notifier);
    let after = LIVE.load(Ordering::Relaxed);
    let pending = notifier.deliveries().pending;
    assert_eq!(pending, n, "all pending");
    rest.report("memory per pending delivery", after - before);
    let _keep = Arc::new(notifier);
}

/// The outcomes queued behind a stalled first delivery.
struct Rest {
    sessions: Vec<String>,
    notes: Notes,
    body_len: usize,
}

impl Rest {
    fn queue(&self, notifier: &Notifier) {
        for s in &self.sessions {
            notifier.ended(ending(s, &self.notes));
        }
    }

    fn report(&self, label: &str, grew: isize) {
        let per = grew as f64 / self.sessions.len() as f64;
        println!(
            "{label}, {} queued: {per:.0} bytes in all, body {} bytes, {:.0} bytes beyond the body",
            self.sessions.len(),
            self.body_len,
            per - self.body_len as f64
        );
    }
}

/// A notifier whose first of `n` deliveries hangs at a receiver that never answers (so the
/// client's connection and the attempt in flight are in a baseline taken now), and the other
/// `n - 1` outcomes, to queue behind it.
async fn stalled(n: usize, redis: Option<RedisOutboxConfig>) -> (Notifier, Rest) {
    let (url, arrived) = hanging_receiver().await;
    let notifier = notifier(url, 1, redis).await;
    let notes = notes();
    let mut sessions: Vec<String> = (0..n).map(session).collect();
    let body_len = ending(&sessions[0], &notes)
        .body("bench-node", SystemTime::now())
        .len();
    notifier.ended(ending(&sessions[0], &notes));
    arrived.notified().await;
    sessions.remove(0);
    let rest = Rest {
        sessions,
        notes,
        body_len,
    };
    (notifier, rest)
}

/// Redis's `used_memory` per pending webhook: `n` outcomes queued behind a receiver that never
/// answers (one attempt in flight), once every write has reached Redis.
async fn redis_memory(redis: &RedisServer, outbox: RedisOutboxConfig, n: usize) {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pending_key = format!("{}{{webhooks}}:pending", outbox.prefix);
    let (notifier, rest) = stalled(n, Some(outbox)).await;
    let before = used_memory(&mut conn).await;
    rest.queue(&notifier);
    // Every webhook written (the pending set counts what reached Redis).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let in_redis: usize = redis::cmd("ZCARD")
            .arg(&pending_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if in_redis == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {in_redis} of {n} reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = used_memory(&mut conn).await;
    rest.report(
        "Redis memory per pending webhook",
        (after - before) as isize,
    );
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory")
}
