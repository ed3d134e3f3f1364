//! The session registry: every open link attempt, over a DashMap.
//!
//! The DashMap stays behind verb methods. [`SessionRegistry::register`] returns a `#[must_use]`
//! [`SessionGuard`] whose `Drop` removes the session, so a socket task that ends for any reason
//! (terminal frame, hang-up, panic, shutdown) can never leak an entry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Instant, SystemTime};

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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
}

impl Default for SessionRegistry {
    fn default() -> Self {
        SessionRegistry {
            sessions: Arc::default(),
            count: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl SessionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
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
        });
        self.sessions.insert(session.id.clone(), session.clone());
        self.count.send_modify(|n| *n += 1);
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
        if self.registry.sessions.remove(&self.session.id).is_some() {
            self.registry.count.send_modify(|n| *n -= 1);
        }
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
    fn snapshot_reports_phase_and_rotation() {
        let reg = SessionRegistry::new();
        let guard = reg.register("whatsapp", addr());
        guard.set_phase(Phase::Qr);
        guard.set_rotation(3);
        let info = &reg.snapshot()[0];
        assert_eq!((info.phase, info.rotation), (Phase::Qr, 3));
    }
}
