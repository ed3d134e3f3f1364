//! HTTP/2 connections of the pool ([`super::pool`]): every call is a stream, at most the
//! smaller of the server's current `SETTINGS_MAX_CONCURRENT_STREAMS` and
//! `--upstream-http2-streams` on one connection.
//!
//! Why not reqwest's HTTP/2: it puts every call on one connection per host, so once the
//! server's stream limit is reached (often 100–256 behind a CDN or a load balancer) further
//! long polls wait inside hyper, for up to a QR lifetime each, and go out later as complete
//! requests whose browsers may long have left. The pool never lets hyper queue: a connection
//! at its limit takes no more leases and another connection is opened. It is also much lighter
//! per pending long poll: a stream costs about 2 KiB in the gateway, where reqwest +
//! hyper-util's pool cost about 9 KiB on top of it (heaptrack, benches/README.md).
//!
//! - The limit is read live from hyper's connection (a server may lower it at any time). Until
//!   the server's first SETTINGS arrive it is 0 (`initial_max_send_streams(0)`), and a new
//!   connection is handed out only once they have: before, hyper would assume 100 streams.
//! - A [`Lease`] holds a stream slot for as long as a call's future lives: dropping the call
//!   (a browser hung up) drops the response future, which resets the stream (`RST_STREAM`) at
//!   once and frees the slot. The connection and the other calls on it go on.
//! - A stream the server never took (a GOAWAY's streams past its last id, `REFUSED_STREAM`, a
//!   connection that closed before the request left) is reported as such, so the pool sends
//!   it again elsewhere, and the connection takes no more leases ("draining").
//! - Connections are pinged every 30 s, so a dead one fails its calls (which the client
//!   retries) instead of leaving them to the poll timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::connect::Stream;
use super::pool::{CallError, PoolError};

/// Every 30 s a connection idle at the frame level (long polls pending, nothing said) is
/// pinged, so a connection that died silently fails its calls instead of leaving them to the
/// poll timeout.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Time a keepalive ping has to come back.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a new connection looks whether the server's SETTINGS have arrived (hyper gives no
/// signal for it); one round trip, so a few looks.
const SETTINGS_LOOK: Duration = Duration::from_millis(1);

type Driver = http2::Connection<TokioIo<Stream>, Full<Bytes>, TokioExecutor>;

/// One HTTP/2 connection.
pub(crate) struct H2Conn {
    sender: http2::SendRequest<Full<Bytes>>,
    /// hyper's connection future, polled by its own task, kept here to read the server's
    /// current stream limit; dropped once it has ended, which fails the requests still queued
    /// in it as never sent (kept, they would wait forever).
    driver: Arc<Mutex<Option<Pin<Box<Driver>>>>>,
    in_flight: AtomicUsize,
    /// Set when a stream was refused or the server said GOAWAY: no new leases.
    draining: AtomicBool,
    /// When the last call on it ended (for the idle timer).
    idle_since: Mutex<Instant>,
}

/// A stream slot on a connection, released on drop.
pub(crate) struct Lease {
    conn: Arc<H2Conn>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.conn.idle_since.lock().expect("idle lock") = Instant::now();
        }
    }
}

impl H2Conn {
    /// The HTTP/2 handshake on `stream`, then the server's SETTINGS waited for until
    /// `deadline`. The connection runs in its own task until it closes.
    pub async fn handshake(stream: Stream, deadline: Instant) -> Result<Arc<H2Conn>, PoolError> {
        let (sender, driver) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_max_send_streams(0)
            .keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "upstream HTTP/2 handshake failed");
                PoolError::Connect
            })?;
        let driver = Arc::new(Mutex::new(Some(Box::pin(driver))));
        let polled = driver.clone();
        tokio::spawn(async move {
            let ended = std::future::poll_fn(|cx| {
                let mut driver = polled.lock().expect("driver lock");
                let Some(conn) = driver.as_mut() else {
                    return std::task::Poll::Ready(Ok(()));
                };
                let ended = std::task::ready!(conn.as_mut().poll(cx));
                *driver = None;
                std::task::Poll::Ready(ended)
            })
            .await;
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        let conn = Arc::new(H2Conn {
            sender,
            driver,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        });
        while conn.server_limit() == 0 {
            if conn.sender.is_closed() || Instant::now() >= deadline {
                tracing::debug!("upstream HTTP/2 connection: no SETTINGS from the server");
                return Err(PoolError::Connect);
            }
            tokio::time::sleep(SETTINGS_LOOK).await;
        }
        Ok(conn)
    }

    /// The server's current `SETTINGS_MAX_CONCURRENT_STREAMS` (unlimited: `usize::MAX`); 0
    /// once the connection has ended.
    fn server_limit(&self) -> usize {
        self.driver
            .lock()
            .expect("driver lock")
            .as_ref()
            .map_or(0, |conn| conn.current_max_send_streams())
    }

    /// Whether the connection is gone (closed, or told to go away).
    pub fn closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Whether it may take new calls at all.
    pub fn usable(&self) -> bool {
        !self.closed() && !self.draining.load(Ordering::Acquire)
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Idle (no call) for at least `timeout`.
    pub fn idle_for(&self, timeout: Duration) -> bool {
        self.in_flight() == 0 && self.idle_since.lock().expect("idle lock").elapsed() >= timeout
    }

    /// A stream slot, if the connection has one under `cap` and the server's limit. Called
    /// under the pool's lock, so two calls cannot take the last slot together.
    pub fn try_lease(self: &Arc<Self>, cap: usize) -> Option<Lease> {
        if !self.usable() || self.in_flight() >= cap.min(self.server_limit()) {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Lease { conn: self.clone() })
    }
}

impl Lease {
    /// Sends `req` on the leased stream. A stream the server never took is
    /// [`CallError::NotSent`] and the connection takes no more leases.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<hyper::body::Incoming>, CallError> {
        let mut sender = self.conn.sender.clone();
        sender.send_request(req).await.map_err(|e| {
            if never_taken(&e) {
                self.conn.draining.store(true, Ordering::Release);
                CallError::NotSent
            } else {
                tracing::debug!(error = %e, "upstream HTTP/2 request failed");
                CallError::Failed("request failed".into())
            }
        })
    }
}

/// Whether the server cannot have acted on the request: never written (the connection closed
/// first), refused (`REFUSED_STREAM`, RFC 9113 section 8.7), or past a GOAWAY's last stream id.
/// A GOAWAY error also reaches streams under that id if the server then closes the connection
/// without answering them; sending one of those again is what RFC 9113 leaves to the client,
/// and harmless for a long poll.
fn never_taken(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        source = s.source();
    }
    false
}
