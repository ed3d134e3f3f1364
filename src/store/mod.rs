//! The session registry: every open link attempt, over a DashMap.
//!
//! The DashMap stays behind verb methods. [`SessionRegistry::register`] returns a `#[must_use]`
//! [`SessionGuard`] whose `Drop` removes the session, so a socket task that ends for any reason
//! (terminal frame, hang-up, panic, shutdown) can never leak an entry.

pub mod limits;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::link::protocol::{Envelope, ServerFrame};

/// Events buffered per watcher before a slow one starts losing them (and is told so with a
/// `lagged` event). Link attempts never wait for watchers.
pub const WATCH_BUFFER: usize = 1024;

/// How a session ended, for `closed` events and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The account was linked.
    Account,
    /// Nobody scanned in time.
    Timeout,
    /// An error frame ended it.
    Error,
    /// The client or an operator cancelled it.
    Cancelled,
    /// The client went away without a terminal frame.
    Disconnected,
    /// The gateway shut down.
    Shutdown,
}

impl Outcome {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Account => "account",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
            Outcome::Disconnected => "disconnected",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// What watchers (`/ws/watch`) receive, besides the snapshot.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// A session started.
    Opened {
        /// Session id.
        session: String,
        /// Provider.
        provider: String,
        /// Client IP address.
        client: String,
        /// RFC 3339 start time.
        at: String,
    },
    /// A frame as sent to the session's browser (QR content is stripped per watcher).
    Frame(Arc<Envelope>),
    /// A session ended.
    Closed {
        /// Session id.
        session: String,
        /// How it ended.
        outcome: Outcome,
        /// Its length.
        duration_ms: u64,
        /// The error code, when `outcome` is `error`.
        code: Option<String>,
    },
}

/// What a session is doing now, for snapshots and dashboards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Phase {
    /// Start Auth Intent in flight.
    Starting = 0,
    /// A QR is shown; waiting for the scan.
    Qr = 1,
    /// Waiting for the client's checkpoint code.
    Checkpoint = 2,
    /// A terminal frame was sent; the socket is closing.
    Closing = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Qr,
            2 => Phase::Checkpoint,
            3 => Phase::Closing,
            _ => Phase::Starting,
        }
    }
}

/// One open link attempt.
#[derive(Debug)]
pub struct Session {
    /// `ses_…`, also the `session` field of every frame.
    pub id: String,
    /// The provider being linked.
    pub provider: String,
    /// The client's address (after trusted-proxy resolution).
    pub client: SocketAddr,
    /// Wall-clock start, for snapshots.
    pub started_at: SystemTime,
    /// Monotonic start, for durations.
    pub started: Instant,
    /// Cancelled by an operator (`DELETE /api/sessions/{id}`).
    pub cancel: CancellationToken,
    /// QR codes shown so far.
    rotation: AtomicU32,
    /// A [`Phase`] as u8, so the socket task updates it without a lock.
    phase: AtomicU8,
    /// Set once, by whatever ends the session first; unset at drop means `disconnected`.
    outcome: OnceLock<(Outcome, Option<String>)>,
}

impl Session {
    /// Records a state change.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Records a new QR.
    pub fn set_rotation(&self, rotation: u32) {
        self.rotation.store(rotation, Ordering::Relaxed);
    }

    /// Records how the session ends; the first call wins.
    pub fn set_outcome(&self, outcome: Outcome, code: Option<String>) {
        let _ = self.outcome.set((outcome, code));
    }

    /// Updates phase, rotation and outcome from a frame about to be sent.
    pub fn record_frame(&self, frame: &ServerFrame) {
        match frame {
            ServerFrame::Qr(q) => {
                self.set_phase(Phase::Qr);
                self.set_rotation(q.rotation);
                metrics::counter!("qrlink_qr_issued_total", "provider" => self.provider.clone())
                    .increment(1);
                if q.rotation == 1 {
                    metrics::histogram!("qrlink_time_to_first_qr_seconds", "provider" => self.provider.clone())
                        .record(self.started.elapsed().as_secs_f64());
                }
            }
            ServerFrame::Checkpoint { .. } => self.set_phase(Phase::Checkpoint),
            ServerFrame::Account { .. } => {
                self.set_phase(Phase::Closing);
                self.set_outcome(Outcome::Account, None);
                metrics::histogram!("qrlink_time_to_scan_seconds", "provider" => self.provider.clone())
                    .record(self.started.elapsed().as_secs_f64());
            }
            ServerFrame::Timeout { .. } => {
                self.set_phase(Phase::Closing);
                self.set_outcome(Outcome::Timeout, None);
            }
            ServerFrame::Error(e) => {
                self.set_phase(Phase::Closing);
                // `closed` names the code for errors only; cancel and shutdown say it all.
                match e.code.as_str() {
                    crate::link::protocol::codes::CANCELLED => {
                        self.set_outcome(Outcome::Cancelled, None)
                    }
                    crate::link::protocol::codes::SHUTTING_DOWN => {
                        self.set_outcome(Outcome::Shutdown, None)
                    }
                    _ => self.set_outcome(Outcome::Error, Some(e.code.clone())),
                }
            }
        }
    }

    /// The current state, for snapshots.
    pub fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id.clone(),
            provider: self.provider.clone(),
            phase: Phase::from_u8(self.phase.load(Ordering::Relaxed)),
            rotation: self.rotation.load(Ordering::Relaxed),
            started_at: humantime::format_rfc3339_millis(self.started_at).to_string(),
            age_ms: self.started.elapsed().as_millis() as u64,
            client: self.client.ip().to_string(),
        }
    }
}

/// A session as `GET /api/sessions` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// Session id.
    pub id: String,
    /// Provider.
    pub provider: String,
    /// What it is doing.
    pub phase: Phase,
    /// QR codes shown so far.
    pub rotation: u32,
    /// Start, RFC 3339.
    pub started_at: String,
    /// Age in milliseconds.
    pub age_ms: u64,
    /// Client IP address.
    pub client: String,
}

/// Every open session. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionRegistry {
    sessions: Arc<DashMap<String, Arc<Session>>>,
    /// The number of open sessions, so callers can wait for a count instead of polling.
    count: Arc<watch::Sender<usize>>,
    /// Session events for watchers; sending never blocks a link attempt.
    events: broadcast::Sender<WatchEvent>,
}

impl Default for SessionRegistry {
    fn default() -> Self {
        SessionRegistry {
            sessions: Arc::default(),
            count: Arc::new(watch::Sender::new(0)),
            events: broadcast::Sender::new(WATCH_BUFFER),
        }
    }
}

impl SessionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events from now on (subscribe before taking a snapshot so nothing falls between).
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.events.subscribe()
    }

    /// Watchers connected.
    pub fn watchers(&self) -> usize {
        self.events.receiver_count()
    }

    /// Publishes a frame a session just sent; builds nothing when nobody watches.
    pub fn publish_frame(&self, envelope: impl FnOnce() -> Envelope) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(WatchEvent::Frame(Arc::new(envelope())));
        }
    }

    fn publish(&self, event: impl FnOnce() -> WatchEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event());
        }
    }

    /// Resolves once the number of open sessions satisfies `pred`.
    pub async fn wait_for_count(&self, pred: impl Fn(usize) -> bool) {
        let mut rx = self.count.subscribe();
        // Only fails if the sender is gone, and `self` holds it.
        let _ = rx.wait_for(|n| pred(*n)).await;
    }

    /// Adds a session; it stays until the returned guard is dropped.
    #[must_use = "the session is removed when the guard is dropped"]
    pub fn register(&self, provider: &str, client: SocketAddr) -> SessionGuard {
        let session = Arc::new(Session {
            id: new_session_id(),
            provider: provider.to_owned(),
            client,
            started_at: SystemTime::now(),
            started: Instant::now(),
            cancel: CancellationToken::new(),
            rotation: AtomicU32::new(0),
            phase: AtomicU8::new(Phase::Starting as u8),
            outcome: OnceLock::new(),
        });
        self.sessions.insert(session.id.clone(), session.clone());
        self.count.send_modify(|n| *n += 1);
        metrics::gauge!("qrlink_sessions_active", "provider" => session.provider.clone())
            .increment(1.0);
        self.publish(|| WatchEvent::Opened {
            session: session.id.clone(),
            provider: session.provider.clone(),
            client: session.client.ip().to_string(),
            at: humantime::format_rfc3339_millis(session.started_at).to_string(),
        });
        SessionGuard {
            registry: self.clone(),
            session,
        }
    }

    /// The session with this id, if open.
    pub fn lookup(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.get(id).map(|s| s.clone())
    }

    /// Cancels a session (its browser gets `session/cancelled`). False if no such session.
    pub fn cancel(&self, id: &str) -> bool {
        match self.lookup(id) {
            Some(s) => {
                s.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Open sessions, oldest first.
    pub fn snapshot(&self) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = self.sessions.iter().map(|s| s.info()).collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.age_ms));
        all
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// Keeps a session registered; removes it on drop.
#[derive(Debug)]
pub struct SessionGuard {
    registry: SessionRegistry,
    session: Arc<Session>,
}

impl std::ops::Deref for SessionGuard {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self.registry.sessions.remove(&self.session.id).is_none() {
            return;
        }
        self.registry.count.send_modify(|n| *n -= 1);
        let s = &self.session;
        let (outcome, code) = s
            .outcome
            .get()
            .cloned()
            .unwrap_or((Outcome::Disconnected, None));
        let provider = s.provider.clone();
        metrics::gauge!("qrlink_sessions_active", "provider" => provider.clone()).decrement(1.0);
        metrics::counter!("qrlink_sessions_ended_total",
            "provider" => provider, "outcome" => outcome.as_str())
        .increment(1);
        self.registry.publish(|| WatchEvent::Closed {
            session: s.id.clone(),
            outcome,
            duration_ms: s.started.elapsed().as_millis() as u64,
            code,
        });
    }
}

/// `ses_` and 20 random base62 characters (about 119 bits): unguessable, so knowing one session
/// id gives no handle on another.
fn new_session_id() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    let mut id = String::with_capacity(24);
    id.push_str("ses_");
    id.extend(
        rand::rng()
            .sample_iter(Alphanumeric)
            .take(20)
            .map(char::from),
    );
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:1234".parse().unwrap()
    }

    #[test]
    fn a_dropped_guard_removes_its_session() {
        let reg = SessionRegistry::new();
        let guard = reg.register("whatsapp", addr());
        assert_eq!(reg.len(), 1);
        assert!(guard.id.starts_with("ses_") && guard.id.len() == 24);
        assert_eq!(reg.snapshot()[0].provider, "whatsapp");
        drop(guard);
        assert!(reg.is_empty());
    }

    #[test]
    fn cancel_reaches_the_session_token() {
        let reg = SessionRegistry::new();
        let guard = reg.register("telegram", addr());
        assert!(!guard.cancel.is_cancelled());
        assert!(reg.cancel(&guard.id));
        assert!(guard.cancel.is_cancelled());
        assert!(!reg.cancel("ses_nope"));
    }

    #[test]
    fn watchers_see_opened_then_closed_with_the_outcome() {
        let reg = SessionRegistry::new();
        let mut rx = reg.subscribe();
        let guard = reg.register("whatsapp", addr());
        let id = guard.id.clone();
        guard.record_frame(&ServerFrame::Timeout { rotations: 2 });
        drop(guard);
        match rx.try_recv().unwrap() {
            WatchEvent::Opened { session, .. } => assert_eq!(session, id),
            other => panic!("expected opened, got {other:?}"),
        }
        match rx.try_recv().unwrap() {
            WatchEvent::Closed { outcome, .. } => assert_eq!(outcome, Outcome::Timeout),
            other => panic!("expected closed, got {other:?}"),
        }
    }

    #[test]
    fn a_session_dropped_without_an_outcome_is_disconnected() {
        let reg = SessionRegistry::new();
        let mut rx = reg.subscribe();
        drop(reg.register("telegram", addr()));
        let _opened = rx.try_recv().unwrap();
        assert!(matches!(
            rx.try_recv().unwrap(),
            WatchEvent::Closed {
                outcome: Outcome::Disconnected,
                ..
            }
        ));
    }

    #[test]
    fn snapshot_reports_phase_and_rotation() {
        let reg = SessionRegistry::new();
        let guard = reg.register("whatsapp", addr());
        guard.set_phase(Phase::Qr);
        guard.set_rotation(3);
        let info = &reg.snapshot()[0];
        assert_eq!((info.phase, info.rotation), (Phase::Qr, 3));
    }
}
