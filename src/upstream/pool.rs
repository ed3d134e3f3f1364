//! The connections to Unipile: HTTP/2 streams where the server speaks it, else one HTTP/1.1
//! connection per call in flight, idle ones kept for the next call (`--upstream-http`).
//!
//! - `auto` (the default): on `https://`, ALPN offers `h2` and `http/1.1` and each new
//!   connection speaks what the server picked. The pool remembers what the last new
//!   connection spoke: while it is HTTP/2, calls lease streams and connections are opened one
//!   at a time (a burst opens one, not one per call); while it is HTTP/1.1, every call that
//!   finds no idle connection opens its own at once. On plain `http://`, HTTP/1.1.
//! - `2`: HTTP/2 only (ALPN `h2`, or prior knowledge on plain HTTP); `1.1`: HTTP/1.1 only.
//! - A call the server never took (see [`SendError::NotSent`]) is sent once more, on another
//!   connection, before it counts as a failure: the retry budget is for failures, and a
//!   GOAWAY or a keep-alive connection closed while idle is not one.
//! - With the gateway serving from several threads ([`crate::Gateway::serve_threads`]), each
//!   thread leases streams only on the HTTP/2 connections it opened (their tasks run in its
//!   runtime): a call and the connection it rides then wake each other without waking another
//!   thread. (Idle HTTP/1.1 connections go to whichever thread asks: each carries one call.)
//! - Idle connections are closed by a timer ([`IDLE_TIMEOUT`]); of the idle HTTP/2 ones at
//!   most one is kept at all, of the HTTP/1.1 ones [`MAX_IDLE_HTTP1`].

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::HeaderValue;

use super::connect::{Dialer, Protocol};
use super::h1::{self, Answer, H1Conn, H1Error};
use super::h2pool::{H2Conn, KEEPALIVE, Keepalive, Lease};
use super::{append_limited, retry_after};

/// An idle connection is closed after this long (reqwest's pool waits 90 s; servers and load
/// balancers often close idle connections after 60 s, and one closed under a new call costs
/// that call a second try).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// Idle HTTP/1.1 connections kept for the next short call; more are closed at once.
const MAX_IDLE_HTTP1: usize = 64;

thread_local! {
    /// Which of the gateway's serving threads this is (0 outside them).
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as serving thread `n` (see [`thread_shard`]).
pub fn set_thread_shard(n: usize) {
    SHARD.with(|s| s.set(n));
}

/// The serving thread the caller runs on: connections are leased within it.
pub(crate) fn thread_shard() -> usize {
    SHARD.with(std::cell::Cell::get)
}

const UNKNOWN: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

/// Why a call could not be made; none of these carries a URL, a header or a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// DNS, TCP connect, proxy, TLS handshake or HTTP/2 handshake failed or timed out (the
    /// cause is logged at debug).
    #[error("connection failed")]
    Connect,
    /// The TLS server did not agree to HTTP/2.
    #[error("the upstream does not speak HTTP/2 (ALPN); use --upstream-http auto or 1.1")]
    NoH2,
}

/// Why a call failed.
#[derive(Debug, PartialEq)]
pub(crate) enum CallError {
    /// No connection to send it on.
    Pool(PoolError),
    /// The server cannot have acted on it (refused stream, GOAWAY, a connection closed before
    /// the request got in): safe to send again elsewhere.
    NotSent,
    /// Anything else, with its reason (no URL, header or body).
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Pool(e) => e.fmt(f),
            CallError::NotSent => f.write_str("request not taken"),
            CallError::Failed(reason) => f.write_str(reason),
        }
    }
}

/// One request to send: the absolute URI, the headers, the body.
pub(crate) struct Outgoing<'a> {
    pub uri: &'a hyper::Uri,
    pub headers: &'a [(&'static str, &'a HeaderValue)],
    pub body: &'a Bytes,
}

/// The pool; cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    dialer: Dialer,
    /// `--upstream-http2-streams`.
    streams_cap: usize,
    /// `IDLE_TIMEOUT`, shorter in tests.
    idle_timeout: Duration,
    /// HTTP/2 pings (`KEEPALIVE`, shorter in tests).
    keepalive: Keepalive,
    h2: Mutex<Vec<Arc<H2Conn>>>,
    h1_idle: Mutex<Vec<(H1Conn, Instant)>>,
    /// What the last new connection spoke ([`UNKNOWN`] before the first).
    learned: AtomicU8,
    /// Held while an HTTP/2 connection is being opened, so a burst opens one, not one per
    /// call; holds when the last attempt failed, and how.
    connecting: tokio::sync::Mutex<Option<(Instant, PoolError)>>,
    reaper: AtomicBool,
}

enum Checkout {
    H2(Lease),
    H1(H1Conn),
}

impl Pool {
    /// A pool with no connection yet; the first call opens one.
    pub fn new(dialer: Dialer, streams_cap: usize, idle_timeout: Duration) -> Pool {
        Self::with_keepalive(dialer, streams_cap, idle_timeout, KEEPALIVE)
    }

    /// [`Pool::new`] with HTTP/2 pings of its own.
    pub(crate) fn with_keepalive(
        dialer: Dialer,
        streams_cap: usize,
        idle_timeout: Duration,
        keepalive: Keepalive,
    ) -> Pool {
        let learned = if dialer.http1_only() { HTTP1 } else { UNKNOWN };
        Pool {
            inner: Arc::new(Inner {
                dialer,
                streams_cap: streams_cap.max(1),
                idle_timeout,
                keepalive,
                h2: Mutex::new(Vec::new()),
                h1_idle: Mutex::new(Vec::new()),
                learned: AtomicU8::new(learned),
                connecting: tokio::sync::Mutex::new(None),
                reaper: AtomicBool::new(false),
            }),
        }
    }

    /// Open HTTP/2 connections, `None` when every connection speaks HTTP/1.1 by configuration.
    pub fn h2_connections(&self) -> Option<usize> {
        if self.inner.dialer.http1_only() {
            return None;
        }
        let mut conns = self.inner.h2.lock().expect("pool lock");
        conns.retain(|c| !c.closed());
        Some(conns.len())
    }

    /// Idle HTTP/1.1 connections kept.
    pub fn idle_http1(&self) -> usize {
        self.inner.h1_idle.lock().expect("pool lock").len()
    }

    /// Sends the request and reads the answer. A request the server never took is sent once
    /// more on another connection.
    pub async fn send(&self, out: &Outgoing<'_>) -> Result<Answer, CallError> {
        match self.send_once(out).await {
            Err(CallError::NotSent) => {
                tracing::debug!(
                    "upstream did not take the request; sending it on another connection"
                );
                match self.send_once(out).await {
                    Err(CallError::NotSent) => {
                        Err(CallError::Failed("request refused twice".into()))
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    async fn send_once(&self, out: &Outgoing<'_>) -> Result<Answer, CallError> {
        // Boxed: the TLS and HTTP/2 handshakes' state is kilobytes, and without the box every
        // pending call's future would be that large for its whole life.
        let checkout = Box::pin(self.checkout()).await.map_err(CallError::Pool)?;
        match checkout {
            Checkout::H2(lease) => send_h2(&lease, out).await,
            Checkout::H1(conn) => {
                let (answer, again) = conn.call(self.h1_request(out)).await;
                if let Some(conn) = again {
                    self.idle_h1(conn);
                }
                answer.map_err(|e| match e {
                    H1Error::NotSent => CallError::NotSent,
                    H1Error::Failed(reason) => CallError::Failed(reason),
                })
            }
        }
    }

    /// The HTTP/1.1 request: origin form, or absolute form to a forwarding proxy.
    fn h1_request(&self, out: &Outgoing<'_>) -> Vec<u8> {
        let uri = out.uri;
        let host = uri.authority().map_or("", |a| a.as_str());
        let mut headers: Vec<(&str, &[u8])> = out
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_bytes()))
            .collect();
        let target = match self.inner.dialer.forward_proxy() {
            Some(auth) => {
                if let Some(auth) = auth {
                    headers.push(("proxy-authorization", auth.as_bytes()));
                }
                uri.to_string()
            }
            None => uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        };
        h1::request(&target, host, &headers, out.body)
    }

    async fn checkout(&self) -> Result<Checkout, PoolError> {
        self.start_reaper();
        loop {
            if let Some(lease) = self.try_lease() {
                return Ok(Checkout::H2(lease));
            }
            if self.inner.learned.load(Ordering::Acquire) == HTTP1 {
                if let Some(conn) = self.take_idle_h1() {
                    return Ok(Checkout::H1(conn));
                }
                // Each HTTP/1.1 call needs a connection of its own: no waiting in line.
                return self.open().await;
            }
            let asked = Instant::now();
            let mut last_failure = self.inner.connecting.lock().await;
            if let Some(lease) = self.try_lease() {
                return Ok(Checkout::H2(lease));
            }
            if self.inner.learned.load(Ordering::Acquire) == HTTP1 {
                continue;
            }
            // A connect that failed while this call waited answers for it too: against an
            // upstream that black-holes connections, each waiting call would otherwise sit out
            // a whole connect timeout in turn. The caller's retry policy decides when to try
            // again.
            if let Some((at, error)) = *last_failure
                && at >= asked
            {
                return Err(error);
            }
            return match self.open().await {
                Ok(checkout) => Ok(checkout),
                Err(error) => {
                    *last_failure = Some((Instant::now(), error));
                    Err(error)
                }
            };
        }
    }

    /// A new connection, used by the calling call; an HTTP/2 one joins the pool.
    async fn open(&self) -> Result<Checkout, PoolError> {
        let started = Instant::now();
        let dialed = self.inner.dialer.dial().await?;
        match dialed.protocol {
            Protocol::Http1 => {
                self.inner.learned.store(HTTP1, Ordering::Release);
                Ok(Checkout::H1(H1Conn::new(dialed.stream)))
            }
            Protocol::Http2 => {
                let deadline = started + self.inner.dialer.timeout();
                let conn = H2Conn::handshake(dialed.stream, deadline, self.inner.keepalive).await?;
                self.inner.learned.store(HTTP2, Ordering::Release);
                let mut conns = self.inner.h2.lock().expect("pool lock");
                let lease = conn.try_lease(self.inner.streams_cap);
                conns.push(conn);
                drop(conns);
                match lease {
                    Some(lease) => Ok(Checkout::H2(lease)),
                    // A server that allows no stream at all (SETTINGS_MAX_CONCURRENT_STREAMS
                    // 0): nothing to do but fail the call.
                    None => Err(PoolError::Connect),
                }
            }
        }
    }

    /// A slot on this thread's oldest open connection that has one, forgetting closed
    /// connections and all of this thread's idle ones but one.
    fn try_lease(&self) -> Option<Lease> {
        let cap = self.inner.streams_cap;
        let shard = thread_shard();
        let mut conns = self.inner.h2.lock().expect("pool lock");
        let mut idle_kept = false;
        conns.retain(|c| {
            if c.closed() {
                return false;
            }
            if c.shard == shard && c.in_flight() == 0 {
                // Draining ones are dropped when idle: the server wants them gone.
                let keep = !idle_kept && c.usable();
                idle_kept |= keep;
                return keep;
            }
            true
        });
        conns
            .iter()
            .filter(|c| c.shard == shard)
            .find_map(|c| c.try_lease(cap))
    }

    fn take_idle_h1(&self) -> Option<H1Conn> {
        // The most recently used first: the one least likely to have been closed by the server.
        self.inner
            .h1_idle
            .lock()
            .expect("pool lock")
            .pop()
            .map(|(c, _)| c)
    }

    fn idle_h1(&self, conn: H1Conn) {
        let mut idle = self.inner.h1_idle.lock().expect("pool lock");
        if idle.len() < MAX_IDLE_HTTP1 {
            idle.push((conn, Instant::now()));
        }
    }

    /// Starts, once, the task that closes idle connections; it ends with the pool.
    fn start_reaper(&self) {
        if self.inner.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = self.inner.idle_timeout / 4;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let timeout = inner.idle_timeout;
                inner
                    .h2
                    .lock()
                    .expect("pool lock")
                    .retain(|c| !c.closed() && !c.idle_for(timeout));
                inner
                    .h1_idle
                    .lock()
                    .expect("pool lock")
                    .retain(|(_, since)| since.elapsed() < timeout);
            }
        });
    }
}

/// The request as a stream of the leased connection, and its answer read while the lease is
/// held.
async fn send_h2(lease: &Lease, out: &Outgoing<'_>) -> Result<Answer, CallError> {
    let mut req = hyper::Request::post(out.uri.clone());
    for (name, value) in out.headers {
        req = req.header(*name, (*value).clone());
    }
    let req = req
        .header("content-length", out.body.len())
        .body(())
        .map_err(|_| CallError::Failed("request failed".into()))?;
    let resp = lease.send(req, out.body.clone()).await?;
    let status: StatusCode = resp.status();
    let retry_after = retry_after(resp.headers());
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| CallError::Failed("body read failed".into()))?;
        // Given back at once: the connection's window is shared by every pending call.
        let _ = body.flow_control().release_capacity(chunk.len());
        append_limited(&mut buf, &chunk).map_err(CallError::Failed)?;
    }
    Ok(Answer {
        status,
        retry_after,
        body: buf,
    })
}
