//! HTTP/2 connections of the pool ([`super::pool`]): every call is a stream, at most the
//! smaller of the server's current `SETTINGS_MAX_CONCURRENT_STREAMS` and
//! `--upstream-http2-streams` on one connection.
//!
//! Why not reqwest's HTTP/2: it puts every call on one connection per host, so once the
//! server's stream limit is reached (often 100–256 behind a CDN or a load balancer) further
//! long polls wait inside hyper, for up to a QR lifetime each, and go out later as complete
//! requests whose browsers may long have left. The pool never lets a call queue: a connection
//! at its limit takes no more leases and another connection is opened. It is also much lighter
//! per pending long poll: reqwest + hyper-util's pool cost about 9 KiB per pending call on top
//! of the stream (heaptrack, benches/README.md), and hyper's own client still a task, a
//! callback and a channel slot; here a pending call is its h2 stream and its own future.
//!
//! - The limit is read live from the connection (a server may lower it at any time). Until
//!   the server's first SETTINGS arrive it is 0 (`initial_max_send_streams(0)`), and a new
//!   connection is handed out only once they have: before, h2 would assume 100 streams.
//! - A [`Lease`] holds a stream slot for as long as a call's future lives: dropping the call
//!   (a browser hung up) drops the response future, which resets the stream (`RST_STREAM`) at
//!   once and frees the slot. The connection and the other calls on it go on.
//! - A stream the server never took (a GOAWAY's streams past its last id, `REFUSED_STREAM`, a
//!   connection that closed before the request left) is reported as such, so the pool sends
//!   it again elsewhere, and the connection takes no more leases ("draining").
//! - Connections are pinged every 30 s, so a dead one fails its calls (which the client
//!   retries) instead of leaving them to the poll timeout.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Request, Response};

use super::connect::Stream;
use super::pool::{CallError, PoolError};

/// How a connection is checked for life: a ping every `every`, answered within `timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keepalive {
    pub every: Duration,
    pub timeout: Duration,
}

/// Every 30 s each connection is pinged (long polls pending or not), so one that died silently
/// fails its calls (which the client retries) instead of leaving them to the poll timeout.
pub(crate) const KEEPALIVE: Keepalive = Keepalive {
    every: Duration::from_secs(30),
    timeout: Duration::from_secs(10),
};
/// How often a new connection looks whether the server's SETTINGS have arrived (h2 gives no
/// signal for it); one round trip, so a few looks.
const SETTINGS_LOOK: Duration = Duration::from_millis(1);

/// One HTTP/2 connection, spoken with the `h2` crate: hyper's client adds, per request, a
/// spawned task for the response, a oneshot callback and a dispatch-channel envelope, all alive
/// for as long as a long poll is pending.
pub(crate) struct H2Conn {
    /// The serving thread that opened it, whose runtime runs its task ([`super::pool`]).
    pub shard: usize,
    sender: h2::client::SendRequest<Bytes>,
    /// Set by the connection's task when the connection has ended.
    ended: Arc<AtomicBool>,
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
    /// `deadline`. The connection runs in its own task (with its keepalive) until it closes.
    pub async fn handshake(
        stream: Stream,
        deadline: Instant,
        keepalive: Keepalive,
    ) -> Result<Arc<H2Conn>, PoolError> {
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_max_send_streams(0)
            .enable_push(false)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "upstream HTTP/2 handshake failed");
                PoolError::Connect
            })?;
        let ended = Arc::new(AtomicBool::new(false));
        let mark = ended.clone();
        let ping_pong = connection.ping_pong();
        tokio::spawn(async move {
            let pings = async move {
                let Some(mut ping_pong) = ping_pong else {
                    return std::future::pending().await;
                };
                loop {
                    tokio::time::sleep(keepalive.every).await;
                    let pong =
                        tokio::time::timeout(keepalive.timeout, ping_pong.ping(h2::Ping::opaque()));
                    if !matches!(pong.await, Ok(Ok(_))) {
                        return;
                    }
                }
            };
            tokio::select! {
                ended = connection => if let Err(e) = ended {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                },
                // Dropping the connection fails the streams on it; the client retries them.
                () = pings => tracing::debug!("upstream HTTP/2 connection: no answer to a ping"),
            }
            mark.store(true, Ordering::Release);
        });
        let conn = Arc::new(H2Conn {
            shard: super::pool::thread_shard(),
            sender,
            ended,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        });
        while conn.server_limit() == 0 {
            if conn.closed() || Instant::now() >= deadline {
                tracing::debug!("upstream HTTP/2 connection: no SETTINGS from the server");
                return Err(PoolError::Connect);
            }
            tokio::time::sleep(SETTINGS_LOOK).await;
        }
        Ok(conn)
    }

    /// The server's current `SETTINGS_MAX_CONCURRENT_STREAMS` (unlimited: `usize::MAX`).
    fn server_limit(&self) -> usize {
        self.sender.current_max_send_streams()
    }

    /// Whether the connection is gone.
    pub fn closed(&self) -> bool {
        self.ended.load(Ordering::Acquire)
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
    /// Sends `req` with `body` on the leased stream. A stream the server never took is
    /// [`CallError::NotSent`] and the connection takes no more leases. Dropping the returned
    /// future, or the response's body, resets the stream (`RST_STREAM`).
    pub async fn send(
        &self,
        req: Request<()>,
        body: Bytes,
    ) -> Result<Response<h2::RecvStream>, CallError> {
        let not_sent = |e: h2::Error| {
            tracing::debug!(error = %e, "upstream HTTP/2 connection refused a new stream");
            self.conn.draining.store(true, Ordering::Release);
            CallError::NotSent
        };
        // Nothing has left yet if either of these fails.
        let mut sender = self.conn.sender.clone().ready().await.map_err(not_sent)?;
        let (response, mut send) = sender.send_request(req, false).map_err(not_sent)?;
        // Buffered by h2 until the stream's window allows it (a Unipile body is far smaller
        // than the initial window).
        send.send_data(body, true)
            .map_err(|_| CallError::Failed("request failed".into()))?;
        response.await.map_err(|e| {
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

/// Whether the server cannot have acted on a request whose stream was opened: refused
/// (`REFUSED_STREAM`, RFC 9113 section 8.7) or past a GOAWAY's last stream id. A GOAWAY error
/// also reaches streams under that id if the server then closes the connection without
/// answering them; sending one of those again is what RFC 9113 leaves to the client, and
/// harmless for a long poll.
fn never_taken(e: &h2::Error) -> bool {
    e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
}
