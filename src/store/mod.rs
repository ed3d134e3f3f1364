//! The store: every link attempt's record, attached to a socket or detached and waiting for its
//! page, behind one interface: the directory behind `/api/sessions`, the watch events, resume and
//! takeover, and the admission limits.
//!
//! The socket code sees [`Store`] and the [`Attachment`] it hands out, never a backend. One
//! backend today, [`memory`] (a DashMap in this process); cluster mode adds a Redis one here,
//! behind the same methods, without touching the link attempt or the socket code.
//!
//! An attachment is a `#[must_use]` guard: a socket task ends it ([`Attachment::end`]), detaches
//! it ([`Attachment::detach`]), or drops it (a panic), which ends the session as
//! `disconnected`, so no path can leak a session.
//!
//! Every ending, whatever ends the session (a terminal frame, a cancel, a hang-up, a grace that
//! passed, shutdown), goes through one place per backend, where the session leaves the
//! directory; there the backend calls [`tell_outbox`], once, for the webhook.

pub mod cluster;
pub mod limits;
pub mod memory;
pub mod stats;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::link::protocol::{Envelope, codes};
use crate::link::{LinkRequest, QrFormats};
use crate::notify::{Ending, Kind, Notifier};

pub use limits::{Denied, Permit};
pub use memory::{Attachment, Interrupt, Session};

/// Events buffered per watcher before a slow one starts losing them (and is told so with a
/// `lagged` event). Link attempts never wait for watchers.
pub const WATCH_BUFFER: usize = 1024;

/// How a session ended, for `closed` events and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// The client went away without a terminal frame (and did not resume within the grace).
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

/// Tells the outbox how a session ended (DESIGN.md section 10). Every backend calls this
/// exactly once per session, where it takes the session out of its directory, so that no
/// ending is told twice and none is missed; the outbox behind `notifier` is the backend's
/// concern. `ending` gets the webhook's kind and is only called when webhooks are on.
pub fn tell_outbox<'a>(
    notifier: &Notifier,
    outcome: Outcome,
    code: Option<&'a str>,
    ending: impl FnOnce(Kind<'a>) -> Ending<'a>,
) {
    if !notifier.enabled() {
        return;
    }
    let kind = match outcome {
        Outcome::Account => Kind::Succeeded,
        Outcome::Timeout => Kind::Expired,
        Outcome::Error => Kind::Failed {
            code: code.unwrap_or(codes::UPSTREAM_INVALID),
        },
        // The browser was told `gateway/shutting_down`; a detached page is told nothing, but
        // for the backend it ended the same way.
        Outcome::Shutdown => Kind::Failed {
            code: codes::SHUTTING_DOWN,
        },
        Outcome::Cancelled => Kind::Abandoned {
            reason: "cancelled",
        },
        Outcome::Disconnected => Kind::Abandoned {
            reason: "disconnected",
        },
    };
    notifier.ended(ending(kind));
}

/// Samples this node's open sessions for the dashboard's chart on every slot of
/// [`stats::SAMPLE_EVERY`] until shutdown (or the store is gone).
async fn sample_open_sessions(
    memory: std::sync::Weak<memory::Memory>,
    shutdown: CancellationToken,
) {
    loop {
        let wait = stats::until_next_sample(std::time::SystemTime::now());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(memory) = memory.upgrade() else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        memory.stats.sample(now, memory.len() as u64);
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
        /// The node the session opened on (cluster mode).
        node: Option<String>,
    },
    /// A frame as sent to the session's browser, without its resume token (QR content is
    /// stripped per watcher).
    Frame(Arc<Envelope>),
    /// A session's socket went away without ending it; it waits for a resume.
    Detached {
        /// Session id.
        session: String,
        /// RFC 3339 time.
        at: String,
    },
    /// A socket resumed a detached (or taken over) session.
    Resumed {
        /// Session id.
        session: String,
        /// RFC 3339 time.
        at: String,
    },
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
    /// No socket: waiting for the page to resume within the grace.
    Detached = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Qr,
            2 => Phase::Checkpoint,
            3 => Phase::Closing,
            4 => Phase::Detached,
            _ => Phase::Starting,
        }
    }
}

/// A session as `GET /api/sessions` shows it (never its resume token).
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
    /// The node the session is on (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Why a resume token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefused {
    /// No session has this token: unknown, ended, or past its grace (`session/expired`).
    #[error("unknown, ended or expired session")]
    Expired,
    /// The token is for a session of another provider; that session is left as it was.
    #[error("the session links another provider")]
    WrongProvider,
    /// The socket attached to the session did not let go in time.
    #[error("the attached socket did not let go")]
    Busy,
}

/// A socket re-attached to its session.
#[derive(Debug)]
pub struct Resumed {
    /// The session, attached to the new socket.
    pub attachment: Attachment,
    /// The last `qr` or `checkpoint` frame exactly as it was sent, with `replay` set and the
    /// QR rendered in the formats this socket asked for.
    pub replay: Envelope,
}

/// What a store needs from the gateway.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long a detached session waits for a resume; zero turns resume off.
    pub resume_grace: Duration,
    /// Concurrent sessions overall.
    pub max_sessions: usize,
    /// Concurrent sessions per client address.
    pub max_sessions_per_ip: usize,
    /// New sessions per client address per minute.
    pub sessions_per_ip_per_minute: u32,
    /// Where every session's ending goes ([`tell_outbox`]); disabled without webhooks.
    pub notifier: Notifier,
}

/// The session store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Memory(Arc<memory::Memory>),
}

impl Store {
    /// A store in this process's memory. Detached sessions' grace timers and the admission
    /// limits' sweeper join `tracker` and end at once when `shutdown` is cancelled.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the sweeper is a task).
    pub fn memory(config: StoreConfig, tracker: TaskTracker, shutdown: CancellationToken) -> Store {
        Store::new(config, tracker, shutdown, None)
    }

    /// A store in this process's memory that, given a `cluster`, shares what other nodes need
    /// through Redis (DESIGN.md section 9) and starts the node's cluster tasks.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn new(
        config: StoreConfig,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        cluster: Option<Arc<cluster::Cluster>>,
    ) -> Store {
        let memory = Arc::new(memory::Memory::new(
            config,
            tracker.clone(),
            shutdown.clone(),
            cluster.clone(),
        ));
        tracker.spawn(sample_open_sessions(
            Arc::downgrade(&memory),
            shutdown.clone(),
        ));
        if let Some(cluster) = &cluster {
            cluster.start(Arc::downgrade(&memory), &tracker, shutdown);
        }
        Store {
            backend: Backend::Memory(memory),
        }
    }

    /// The store's state for `/healthz`: `memory`, or in cluster mode the node, whether Redis
    /// answers and the writes waiting for it.
    pub fn health(&self) -> serde_json::Value {
        match &self.memory_backend().cluster {
            None => serde_json::json!({"store": "memory"}),
            Some(cluster) => {
                let (up, pending) = cluster.health();
                serde_json::json!({
                    "store": "redis",
                    "node": cluster.node(),
                    "redis": if up { "up" } else { "down" },
                    "pending_writes": pending,
                })
            }
        }
    }

    /// Whether this node is one of a cluster.
    pub fn is_cluster(&self) -> bool {
        self.memory_backend().cluster.is_some()
    }

    /// Waits (at most `limit`) until what this node owes Redis is written: at shutdown, so the
    /// sessions it leaves can be resumed elsewhere.
    pub async fn flush(&self, limit: Duration) {
        if let Some(cluster) = &self.memory_backend().cluster {
            cluster.flush(limit).await;
        }
    }

    fn memory_backend(&self) -> &Arc<memory::Memory> {
        match &self.backend {
            Backend::Memory(m) => m,
        }
    }

    /// Admits a new link attempt from `ip`: the overall cap, then the address's limits.
    pub async fn admit(&self, ip: IpAddr) -> Result<Permit, Denied> {
        let m = self.memory_backend();
        let permit = m.limits.admit(ip, m.len())?;
        self.admit_across_nodes(ip, permit).await
    }

    /// Cluster mode: the address's limits across every node, atomically in Redis, on top of
    /// this node's own (which never refuse what the cluster would admit).
    async fn admit_across_nodes(&self, ip: IpAddr, mut permit: Permit) -> Result<Permit, Denied> {
        if let Some(cluster) = &self.memory_backend().cluster {
            // Boxed: the socket task holds this future's state for its whole life otherwise.
            permit.remote = Box::pin(cluster.admit(limits::key_of(ip))).await?;
        }
        Ok(permit)
    }

    /// Admits a resume from `ip`: the address's limits as for a new attempt, but not the
    /// overall cap, which already counts the session (a resumed session counts once).
    pub async fn admit_resume(&self, ip: IpAddr) -> Result<Permit, Denied> {
        let permit = self.memory_backend().limits.admit(ip, 0)?;
        self.admit_across_nodes(ip, permit).await
    }

    /// Opens a session for a new link attempt, attached to the calling socket.
    #[must_use = "the session ends when the attachment is dropped"]
    pub fn open(&self, client: SocketAddr, request: LinkRequest) -> Attachment {
        memory::Memory::open(self.memory_backend(), client, request)
    }

    /// Re-attaches the session of a resume token (`?resume=`) to the calling socket, taking it
    /// over from the socket attached now, if any.
    pub async fn resume(
        &self,
        token: &str,
        provider: &str,
        formats: Option<QrFormats>,
    ) -> Result<Resumed, ResumeRefused> {
        memory::Memory::resume(self.memory_backend(), token, provider, formats).await
    }

    /// Cancels a session, attached or detached (its browser, if any, gets
    /// `session/cancelled`). False if no such session.
    pub async fn cancel(&self, id: &str) -> bool {
        let memory = self.memory_backend();
        if memory.cancel(id) {
            return true;
        }
        match &memory.cluster {
            Some(cluster) => cluster.cancel(id, memory).await,
            None => false,
        }
    }

    /// This node's open sessions, attached or detached, oldest first.
    pub fn snapshot(&self) -> Vec<SessionInfo> {
        self.memory_backend().snapshot()
    }

    /// Every node's open sessions in cluster mode (this node's if Redis does not answer),
    /// oldest first.
    pub async fn snapshot_all(&self) -> Vec<SessionInfo> {
        let memory = self.memory_backend();
        match &memory.cluster {
            Some(cluster) => match cluster.snapshot().await {
                Some(all) => all,
                None => memory.snapshot(),
            },
            None => memory.snapshot(),
        }
    }

    /// Number of open sessions, attached or detached.
    pub fn len(&self) -> usize {
        self.memory_backend().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of detached sessions.
    pub fn detached(&self) -> usize {
        self.memory_backend().detached()
    }

    /// Resolves once the number of open sessions satisfies `pred`.
    pub async fn wait_for_count(&self, pred: impl Fn(usize) -> bool) {
        self.memory_backend().wait_for_count(pred).await
    }

    /// Events from now on (subscribe before taking a snapshot so nothing falls between).
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.memory_backend().events.subscribe()
    }

    /// Watchers connected.
    pub fn watchers(&self) -> usize {
        self.memory_backend().events.receiver_count()
    }

    /// The dashboard's numbers (`GET /api/stats`): this node's (named `node` in memory mode),
    /// and in cluster mode every live node's, with their sums.
    pub async fn stats(&self, node: &str) -> stats::ClusterStats {
        let memory = self.memory_backend();
        let own = memory.stats_named(node);
        let name = own.node.clone();
        match &memory.cluster {
            None => stats::ClusterStats::of(&name, false, true, vec![own]),
            Some(cluster) => {
                let others = cluster.stats().await;
                let complete = others.is_some();
                let mut all = others.unwrap_or_default();
                all.push(own);
                stats::ClusterStats::of(&name, true, complete, all)
            }
        }
    }

    /// Addresses the admission limits track (for tests and metrics).
    pub fn tracked_addresses(&self) -> usize {
        self.memory_backend().limits.tracked()
    }
}
