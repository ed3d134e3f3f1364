//! Cluster mode (DESIGN.md section 9): the sessions of several nodes shared through Redis.
//!
//! Each node keeps its own sessions in [`super::memory`] (their sockets, timers and waiters are
//! local by nature) and mirrors what another node needs into Redis:
//!
//! - a hash per session, `{prefix}{ses_…}` (hash-tagged, so Redis Cluster can take it later):
//!   provider, node, client, start, the SHA-256 of the resume secret (never the secret), the
//!   request, seq, rotation, phase, the last `qr`/`checkpoint` frame (with the QR string), the
//!   cursor of a detached session and `holder` (the node whose socket has it, empty while
//!   detached). Its TTL is the attempt's longest life plus the grace while attached, the grace
//!   once detached; an ended session's hash is deleted.
//! - the directory `{prefix}sessions` (a set of ids), for `GET /api/sessions` on any node;
//! - `{prefix}node:{id}`, a heartbeat with a 2 s TTL: a node whose key is gone is dead and its
//!   sessions are resumable anywhere;
//! - `{prefix}nodes`, the set of nodes that have run: a node gone (killed, or shut down) with
//!   sessions nobody resumed has them ended by another node once the resume grace has passed
//!   (`Cluster::sweeper`: the `closed` event and the webhook they would otherwise never get),
//!   then leaves the set; `{prefix}sweep:{id}`, the lock of the node sweeping it;
//! - `{prefix}stats`, a hash with each node's dashboard numbers ([`super::stats`]) as a field,
//!   written with every heartbeat; a dead node's field goes when a dashboard next reads;
//! - `{prefix}node:{id}:cmd`, a list each node pops: `handoff` (a resume elsewhere wants the
//!   session: take it off the socket, write its cursor, forget it here), `cancel` (an operator's
//!   DELETE on another node), and `ack` back to the asking node.
//!
//! Writes go through one ordered queue per node; a frame waits at most `WRITE_WAIT` for the
//! write that made its session known here, never for its own record (`Attachment::written`
//! in memory.rs says why). An ack is queued after the writes it follows, so a node that
//! receives it reads the state they wrote. What one pipeline takes is coalesced first (a
//! session's consecutive writes become one HSET, the writes of a session that ends in it are
//! left out, watch events share a stream entry), so that under load an attempt costs fewer
//! commands: about 15 for an attempt with one QR and its account at 100 attempts/s, fewer under
//! load (benches/README "Cluster"). A pipeline that failed is tried again as it was; Redis may
//! have run it (a timeout), so stream entries are numbered per node and readers drop repeats.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::memory::Memory;
use super::stats::NodeStats;
use super::{Denied, Outcome, Phase, SessionInfo, WatchEvent};
use crate::link::protocol::{Envelope, ServerFrame};
use crate::link::{Cursor, LinkRequest, QrFormats, Resume};

/// A node's heartbeat lives this long; it is renewed every [`HEARTBEAT_EVERY`]: a node that
/// misses three renewals in a row is taken for dead. A resume that lands while a killed node's
/// heartbeat still lives waits for it to go (the node cannot hand the session over), so this is
/// most of the time a kill -9 costs the pages (benches/README "Cluster": drop → replay).
const HEARTBEAT_TTL: Duration = Duration::from_secs(2);
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// How long a node waits for another node's ack (a handoff or a cancel).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a blocking pop of the command list waits before it looks at shutdown again.
const POP_BLOCK_SECS: f64 = 1.0;
/// How often a node looks for nodes that died or left with sessions nobody resumed; a sweep
/// lock lives three times this long.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// At most one log line per failing operation this often.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// What the node last saw of Redis.
const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Stream entries kept (about: `MAXLEN ~`), each one or more watch events (up to
/// [`EVENTS_PER_ENTRY`]: what one write took); a node that was away longer than these take to
/// fill misses the oldest.
const EVENTS_KEPT: usize = 10_000;

/// Watch events one stream entry holds at most (the events one write batch took).
const EVENTS_PER_ENTRY: usize = 32;

/// Stream entries read at most at once.
const EVENTS_READ: usize = 512;
/// After a read that caught up, the events reader waits this long before the next one, so
/// that under load one read takes many events: other nodes' watchers see an event at most this
/// much later.
const EVENTS_PACE: Duration = Duration::from_millis(10);

/// The `{prefix}stats` hash (a field per node, written with each heartbeat) lives this long
/// after the last node's last write.
const STATS_TTL: Duration = Duration::from_secs(10);

/// What a node needs to join the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://`.
    pub url: String,
    /// This node's name.
    pub node: String,
    /// Key prefix.
    pub prefix: String,
    /// Open sessions per client address, across nodes.
    pub max_sessions_per_ip: usize,
    /// New sessions per client address per minute, across nodes.
    pub sessions_per_ip_per_minute: u32,
}

/// A node's link to the others.
pub struct Cluster {
    node: String,
    /// When this process joined (ms since the epoch): with an entry's number, which of this
    /// node's stream entries a reader has seen, across restarts under the same name.
    boot: u64,
    prefix: String,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    /// The writer's own connection: its pipelines never queue ahead of an admission or a
    /// resume's reads.
    writer_conn: OnceCell<ConnectionManager>,
    /// When each failing operation was last logged: at most one line per [`LOG_EVERY`] per
    /// operation, however many calls fail (a Redis that flaps under load would fill the log).
    failing: DashMap<&'static str, std::time::Instant>,
    writes: mpsc::UnboundedSender<Write>,
    /// The queue's other end, until [`Cluster::start`] hands it to the writer task.
    unwritten: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Write>>>,
    /// Writes queued, and writes Redis has taken: equal when the queue is flushed.
    queued: AtomicU64,
    written: tokio::sync::watch::Sender<u64>,
    /// Whether Redis answered the last write or heartbeat: [`UNKNOWN`], [`UP`] or [`DOWN`].
    up: std::sync::atomic::AtomicU8,
    /// Nodes found without a heartbeat, and when (see [`Cluster::alive`]).
    dead: DashMap<String, std::time::Instant>,
    /// Acks this node waits for, by request number.
    pending: DashMap<u64, oneshot::Sender<()>>,
    next_request: AtomicU64,
    /// Per-address limits: open sessions, new ones a minute.
    limits: (usize, u32),
    /// TTLs of a session's hash: while attached, once detached.
    attached_ttl: Duration,
    grace: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// One queued write.
#[derive(Debug)]
enum Write {
    /// Sets fields of a session's hash and, when it changes, its TTL; `listed` adds it to the
    /// directory.
    Session {
        id: String,
        fields: Vec<(&'static str, String)>,
        ttl: Option<Duration>,
        listed: bool,
    },
    /// Deletes a session's hash and takes it off the directory.
    Ended { id: String },
    /// Appends a command to a node's list.
    Command { node: String, body: String },
    /// Appends a watch event to the stream every node reads.
    Event {
        body: String,
        /// The entry's number among this node's, set when its batch is made: a reader drops
        /// an entry whose number it has seen (a batch retried after Redis ran it).
        entry: u64,
    },
    /// Releases an address's admission.
    Release { key: String },
}

/// A command between nodes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Command {
    Handoff {
        session: String,
        from: String,
        request: u64,
    },
    Cancel {
        session: String,
        from: String,
        request: u64,
    },
    Ack {
        request: u64,
    },
}

/// A watch event in the stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    Opened {
        session: String,
        provider: String,
        client: String,
        at: String,
        /// Absent from the events of a node of an older version (a rolling deploy).
        #[serde(default)]
        node: Option<String>,
    },
    Frame {
        envelope: Envelope,
    },
    Detached {
        session: String,
        at: String,
    },
    Resumed {
        session: String,
        at: String,
    },
    Closed {
        session: String,
        outcome: Outcome,
        duration_ms: u64,
        code: Option<String>,
    },
}

impl WireEvent {
    fn of(event: &WatchEvent) -> WireEvent {
        match event.clone() {
            WatchEvent::Opened {
                session,
                provider,
                client,
                at,
                node,
            } => WireEvent::Opened {
                session,
                provider,
                client,
                at,
                node,
            },
            WatchEvent::Frame(env) => {
                let mut envelope = (*env).clone();
                envelope.resume = None;
                if let ServerFrame::Qr(q) = &mut envelope.frame {
                    q.svg = None;
                    q.text = None;
                    q.raw = None;
                }
                WireEvent::Frame { envelope }
            }
            WatchEvent::Detached { session, at } => WireEvent::Detached { session, at },
            WatchEvent::Resumed { session, at } => WireEvent::Resumed { session, at },
            WatchEvent::Closed {
                session,
                outcome,
                duration_ms,
                code,
            } => WireEvent::Closed {
                session,
                outcome,
                duration_ms,
                code,
            },
        }
    }

    fn into_event(self) -> WatchEvent {
        match self {
            WireEvent::Opened {
                session,
                provider,
                client,
                at,
                node,
            } => WatchEvent::Opened {
                session,
                provider,
                client,
                at,
                node,
            },
            WireEvent::Frame { envelope } => WatchEvent::Frame(Arc::new(envelope)),
            WireEvent::Detached { session, at } => WatchEvent::Detached { session, at },
            WireEvent::Resumed { session, at } => WatchEvent::Resumed { session, at },
            WireEvent::Closed {
                session,
                outcome,
                duration_ms,
                code,
            } => WatchEvent::Closed {
                session,
                outcome,
                duration_ms,
                code,
            },
        }
    }
}

/// A gone node, as this node's sweeper knows it ([`Cluster::sweeper`]).
struct Gone {
    /// When this node found it gone.
    since: std::time::Instant,
    /// Once this node sweeps it: its sessions and when each is due to end.
    plan: Option<Vec<(String, std::time::Instant)>>,
}

/// A session's record as read back from Redis, for the node that adopts it.
#[derive(Debug)]
pub(super) struct Adopted {
    pub(super) provider: String,
    pub(super) client: std::net::SocketAddr,
    pub(super) started_at: SystemTime,
    pub(super) request: LinkRequest,
    pub(super) seq: u64,
    pub(super) rotation: u32,
    pub(super) last: Option<WireLast>,
    pub(super) cursor: Cursor,
    /// The intent of its first `qr`, for its webhook.
    pub(super) intent: Option<String>,
}

/// The last `qr` or `checkpoint` frame as kept in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum WireLast {
    Qr {
        seq: u64,
        rotation: u32,
        intent_id: String,
        expires_at: String,
        qrcode: Option<String>,
    },
    Checkpoint {
        seq: u64,
        frame: ServerFrame,
    },
}

impl WireLast {
    /// What Redis keeps of `frame` (numbered `seq`; `qrcode` is the string a `qr` frame
    /// encodes), for a resume on another node; `None` for frames a resume does not replay.
    pub(super) fn of(frame: &ServerFrame, seq: u64, qrcode: Option<&str>) -> Option<WireLast> {
        match frame {
            ServerFrame::Qr(q) => Some(WireLast::Qr {
                seq,
                rotation: q.rotation,
                intent_id: q.intent_id.clone(),
                expires_at: q.expires_at.clone(),
                qrcode: qrcode.map(str::to_owned),
            }),
            ServerFrame::Checkpoint { .. } => Some(WireLast::Checkpoint {
                seq,
                frame: frame.clone(),
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct WireRequest {
    provider: String,
    account_id: Option<String>,
    state: Option<String>,
    proxy: Option<Value>,
    svg: bool,
    text: bool,
    raw: bool,
    qr_ttl_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "next", rename_all = "snake_case")]
enum WireCursor {
    Start {
        rotation: u32,
    },
    Poll {
        rotation: u32,
        intent_id: String,
        shown: Option<Value>,
    },
    Answer {
        rotation: u32,
        intent_id: String,
        checkpoint: Value,
        answers: u32,
    },
}

/// Admits one more session from an address across every node, atomically. `KEYS[1]` is the
/// address's hash: `active` (its open sessions, under `ARGV[1]`) and a token bucket of `ARGV[2]`
/// a minute (`tokens`, `at`). `ARGV[3]` is now in ms, `ARGV[4]` how long an open session may
/// hold the count. One hash, so an admission is the script and three commands (HMGET, HSET,
/// PEXPIRE): Redis's INFO commandstats counts the commands a script runs. 1 = admitted.
const ADMIT: &str = r"
local max_active = tonumber(ARGV[1])
local per_minute = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local held = redis.call('HMGET', KEYS[1], 'active', 'tokens', 'at')
local active = tonumber(held[1]) or 0
if active >= max_active then return 0 end
local tokens = tonumber(held[2]) or per_minute
local at = tonumber(held[3]) or now
tokens = math.min(per_minute, tokens + math.max(0, now - at) * per_minute / 60000)
if tokens < 1 then return 0 end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'active', active + 1, 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[4]), math.ceil((per_minute - tokens) * 60000 / per_minute)))
return 1
";

/// Releases what [`ADMIT`] counted. With sessions still open that is all; the last one gives
/// the key the time its bucket takes to be full again (an expired bucket is a full one), or
/// deletes it when it is full already. `ARGV[1]` is the bucket's rate a minute, `ARGV[2]` now.
/// Takes a gone node's session (KEYS[1]) if it is still that node's (ARGV[1]): its fields, and
/// the hash deleted; nothing if a resume moved it meanwhile.
const TAKE: &str = r"
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return false end
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return fields
";

const RELEASE: &str = r"
local active = redis.call('HINCRBY', KEYS[1], 'active', -1)
if active > 0 then return 1 end
local per_minute = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or per_minute
local at = tonumber(held[2]) or now
tokens = math.min(per_minute, tokens + math.max(0, now - at) * per_minute / 60000)
local refill = math.ceil((per_minute - tokens) * 60000 / per_minute)
if refill < 1 then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], refill) end
return 1
";

/// An admission counted in Redis; released (through the write queue) when dropped.
#[derive(Debug)]
pub struct Hold {
    cluster: Arc<Cluster>,
    key: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.cluster.queue(Write::Release {
            key: std::mem::take(&mut self.key),
        });
    }
}

/// How a question to another node ended.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Acked,
    TimedOut,
    /// Its heartbeat went while we waited.
    NodeGone,
}

/// Why a session could not be taken from Redis.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ClaimError {
    /// No such session, or the secret does not match.
    Unknown,
    /// Another provider's session.
    WrongProvider,
    /// Its node did not let go in time.
    Busy,
    /// Redis did not answer.
    Unavailable,
}

impl Cluster {
    /// A node of the cluster at `config.url`; nothing connects until [`Cluster::start`].
    pub fn new(
        config: &ClusterConfig,
        grace: Duration,
        max_attempt: Duration,
    ) -> Result<Arc<Cluster>, String> {
        let limits = (
            config.max_sessions_per_ip,
            config.sessions_per_ip_per_minute,
        );
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("QRLINK_REDIS_URL is not a usable Redis URL ({})", why(&e)))?;
        let (writes, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            node: config.node.clone(),
            boot: unix_ms(SystemTime::now()),
            prefix: config.prefix.clone(),
            client,
            conn: OnceCell::new(),
            writer_conn: OnceCell::new(),
            failing: DashMap::new(),
            writes,
            unwritten: std::sync::Mutex::new(Some(rx)),
            queued: AtomicU64::new(0),
            written: tokio::sync::watch::Sender::new(0),
            pending: DashMap::new(),
            dead: DashMap::new(),
            up: std::sync::atomic::AtomicU8::new(UNKNOWN),
            next_request: AtomicU64::new(1),
            limits,
            attached_ttl: max_attempt + grace,
            grace,
        });
        Ok(cluster)
    }

    fn set_up(&self, up: bool) {
        self.up.store(if up { UP } else { DOWN }, Ordering::Relaxed);
        metrics::gauge!("qrlink_redis_up").set(if up { 1.0 } else { 0.0 });
    }

    /// Whether Redis answers, and how many writes wait for it (for `/healthz`; also sets the
    /// `qrlink_redis_pending_writes` gauge, which the writer calls it for after each pipeline).
    pub(super) fn health(&self) -> (bool, u64) {
        let pending = self
            .queued
            .load(Ordering::Acquire)
            .saturating_sub(*self.written.borrow());
        metrics::gauge!("qrlink_redis_pending_writes").set(pending as f64);
        (self.up.load(Ordering::Relaxed) != DOWN, pending)
    }

    /// This node's name.
    pub(super) fn node(&self) -> &str {
        &self.node
    }

    /// Starts the node's tasks: the writer, the heartbeat and the command reader, which acts
    /// on `memory` (this node's sessions).
    pub(super) fn start(
        self: &Arc<Self>,
        memory: Weak<Memory>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let rx = self
            .unwritten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rx) = rx {
            tokio::spawn(self.clone().writer(rx));
        }
        tracker.spawn(self.clone().heartbeat(memory.clone(), shutdown.clone()));
        tracker.spawn(self.clone().events(memory.clone(), shutdown.clone()));
        tracker.spawn(self.clone().sweeper(memory.clone(), shutdown.clone()));
        tracker.spawn(self.clone().commands(memory, shutdown));
    }

    fn key(&self, id: &str) -> String {
        format!("{}{{{id}}}", self.prefix)
    }

    fn directory(&self) -> String {
        format!("{}sessions", self.prefix)
    }

    fn events_key(&self) -> String {
        format!("{}events", self.prefix)
    }

    fn stats_key(&self) -> String {
        format!("{}stats", self.prefix)
    }

    /// The set of nodes that have run, until the last of a gone node's sessions has ended.
    fn nodes_key(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// The lock of the node sweeping gone node `node`.
    fn sweep_key(&self, node: &str) -> String {
        format!("{}sweep:{node}", self.prefix)
    }

    /// The open count and token bucket of client address `ip` (already [`super::limits::key_of`]).
    fn ip_key(&self, ip: std::net::IpAddr) -> String {
        format!("{}{{ip:{ip}}}", self.prefix)
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }

    fn command_key(&self, node: &str) -> String {
        format!("{}node:{node}:cmd", self.prefix)
    }

    async fn conn(&self) -> Option<ConnectionManager> {
        self.connect(&self.conn, "connect").await
    }

    async fn connect(
        &self,
        cell: &OnceCell<ConnectionManager>,
        op: &'static str,
    ) -> Option<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(1));
        let conn = cell
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await;
        match conn {
            Ok(conn) => Some(conn.clone()),
            Err(e) => {
                self.degraded(op, &e);
                None
            }
        }
    }

    /// Counts a failure of `op` (`qrlink_redis_errors_total`), and logs it unless `op` was
    /// logged within [`LOG_EVERY`]: one line per outage, not one per call.
    fn degraded(&self, op: &'static str, e: &redis::RedisError) {
        metrics::counter!("qrlink_redis_errors_total", "op" => op).increment(1);
        let now = std::time::Instant::now();
        let mut logged = self.failing.entry(op).or_insert(now - LOG_EVERY * 2);
        if now.duration_since(*logged) >= LOG_EVERY {
            *logged = now;
            tracing::warn!(op, error = %why(e), "redis failing; degraded until it answers again (qrlink_redis_errors_total counts each failure)");
        }
    }

    /// Queues a write; returns its place in the queue (see [`Cluster::flush_to`]).
    fn queue(&self, write: Write) -> u64 {
        let place = self.queued.fetch_add(1, Ordering::AcqRel) + 1;
        if self.writes.send(write).is_err() {
            self.written.send_modify(|n| *n += 1);
        }
        place
    }

    /// Waits until Redis has taken every write queued so far, at most `limit`.
    pub(super) async fn flush(&self, limit: Duration) {
        self.flush_to(self.queued.load(Ordering::Acquire), limit)
            .await;
    }

    /// Waits until Redis has taken the writes up to `place` in the queue, at most `limit`.
    pub(super) async fn flush_to(&self, place: u64, limit: Duration) {
        if *self.written.borrow() >= place {
            return;
        }
        let mut rx = self.written.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n >= place)).await;
    }

    /// The writer: takes what is queued, sends it as one pipeline, and on a Redis error keeps
    /// it and tries again (a write is never dropped; the frame it follows went out already).
    async fn writer(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Write>) {
        let mut batch = Vec::new();
        // The writes the batch was made of: it may hold fewer once coalesced.
        let mut taken = 0;
        let mut entries = 0;
        let mut failing = false;
        loop {
            if batch.is_empty() {
                match rx.recv().await {
                    Some(w) => batch.push(w),
                    None => return,
                }
                while let Ok(w) = rx.try_recv() {
                    batch.push(w);
                    if batch.len() >= 512 {
                        break;
                    }
                }
                taken = batch.len() as u64;
                coalesce(&mut batch);
                for write in &mut batch {
                    if let Write::Event { entry, .. } = write {
                        entries += 1;
                        *entry = entries;
                    }
                }
            }
            // A batch that failed is tried again as it was (Redis may have run it all the
            // same: the events' entries are numbered, so readers drop an entry seen twice).
            let Some(mut conn) = self.connect(&self.writer_conn, "connect").await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut pipe = redis::pipe();
            for w in &batch {
                self.add_to(&mut pipe, w);
            }
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => {
                    self.set_up(true);
                    if failing {
                        tracing::info!("redis writes caught up");
                        failing = false;
                    }
                    batch.clear();
                    self.written.send_modify(|w| *w += taken);
                    self.health();
                }
                Err(e) => {
                    self.set_up(false);
                    if !failing {
                        tracing::warn!(error = %why(&e), queued = batch.len(), "redis writes failing; they are kept and retried");
                        failing = true;
                    }
                    metrics::counter!("qrlink_redis_errors_total", "op" => "write").increment(1);
                    self.health();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn add_to(&self, pipe: &mut redis::Pipeline, write: &Write) {
        match write {
            Write::Session {
                id,
                fields,
                ttl,
                listed,
            } => {
                let key = self.key(id);
                pipe.hset_multiple(&key, fields).ignore();
                if let Some(ttl) = ttl {
                    pipe.pexpire(&key, ttl.as_millis() as i64).ignore();
                }
                if *listed {
                    pipe.sadd(self.directory(), id).ignore();
                }
            }
            Write::Ended { id } => {
                pipe.del(self.key(id)).ignore();
                pipe.srem(self.directory(), id).ignore();
            }
            Write::Release { key } => {
                pipe.cmd("EVAL")
                    .arg(RELEASE)
                    .arg(1)
                    .arg(key)
                    .arg(self.limits.1)
                    .arg(unix_ms(SystemTime::now()))
                    .ignore();
            }
            Write::Event { body, entry } => {
                pipe.cmd("XADD")
                    .arg(self.events_key())
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(EVENTS_KEPT)
                    .arg("*")
                    .arg("node")
                    .arg(&self.node)
                    .arg("boot")
                    .arg(self.boot)
                    .arg("n")
                    .arg(*entry)
                    .arg("event")
                    .arg(body)
                    .ignore();
            }
            Write::Command { node, body } => {
                let key = self.command_key(node);
                pipe.rpush(&key, body).ignore();
                pipe.pexpire(&key, ACK_TIMEOUT.as_millis() as i64 * 4)
                    .ignore();
            }
        }
    }

    /// Renews the node's heartbeat every [`HEARTBEAT_EVERY`], with its dashboard stats
    /// written first (so that a node seen alive has its stats in Redis).
    async fn heartbeat(self: Arc<Self>, memory: Weak<Memory>, shutdown: CancellationToken) {
        let key = self.node_key(&self.node);
        // Announced on the stream (it also makes the stream exist from the start, so the keys
        // under the prefix are the same before and after sessions come and go).
        let up = serde_json::json!({"type": "node_up", "node": self.node});
        self.queue(Write::Event {
            body: up.to_string(),
            entry: 0,
        });
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    // Leaving: other nodes take this node's sessions from Redis at once rather
                    // than asking a node that no longer answers.
                    if let Some(mut conn) = self.conn().await {
                        let _: redis::RedisResult<()> = conn.del(&key).await;
                        let _: redis::RedisResult<()> = conn.hdel(self.stats_key(), &self.node).await;
                    }
                    break;
                }
                _ = tick.tick() => {}
            }
            if let Some(mut conn) = self.conn().await {
                let mut pipe = redis::pipe();
                if let Some(memory) = memory.upgrade() {
                    let stats = serde_json::to_string(&memory.stats()).unwrap_or_default();
                    pipe.hset(self.stats_key(), &self.node, stats).ignore();
                    pipe.pexpire(self.stats_key(), STATS_TTL.as_millis() as i64)
                        .ignore();
                }
                pipe.pset_ex(&key, 1, HEARTBEAT_TTL.as_millis() as u64)
                    .ignore();
                pipe.sadd(self.nodes_key(), &self.node).ignore();
                let set: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
                self.set_up(set.is_ok());
                if let Err(e) = set {
                    metrics::counter!("qrlink_redis_errors_total", "op" => "heartbeat")
                        .increment(1);
                    tracing::debug!(error = %why(&e), "heartbeat failed");
                }
            }
        }
    }

    /// Admits a session from address `ip` across every node. `Ok(None)` when Redis does not
    /// answer: the attempt goes on under this node's limits alone (logged, counted).
    pub(super) async fn admit(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
    ) -> Result<Option<Hold>, Denied> {
        // A Redis known to be down is not waited for: the attempt goes on at once.
        let conn = match self.up.load(Ordering::Relaxed) {
            DOWN => None,
            _ => self.conn().await,
        };
        let Some(mut conn) = conn else {
            metrics::counter!("qrlink_redis_errors_total", "op" => "limits").increment(1);
            return Ok(None);
        };
        let key = self.ip_key(ip);
        let admitted: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(ADMIT)
            .arg(1)
            .arg(&key)
            .arg(self.limits.0)
            .arg(self.limits.1)
            .arg(unix_ms(SystemTime::now()))
            .arg(self.attached_ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        match admitted {
            Ok(1) => Ok(Some(Hold {
                cluster: self.clone(),
                key,
            })),
            Ok(_) => Err(Denied::RateLimited),
            Err(e) => {
                // This node's limits alone apply meanwhile.
                self.degraded("limits", &e);
                Ok(None)
            }
        }
    }

    /// Whether `node` is alive (its heartbeat is there). A node found dead is taken for dead
    /// for [`HEARTBEAT_EVERY`] without asking again: when a node is killed, every page of its
    /// sessions resumes at once and each resume waits on this.
    async fn alive(&self, conn: &mut ConnectionManager, node: &str) -> bool {
        if node == self.node {
            return true;
        }
        if self
            .dead
            .get(node)
            .is_some_and(|seen| seen.elapsed() < HEARTBEAT_EVERY)
        {
            return false;
        }
        let alive = conn.exists(self.node_key(node)).await.unwrap_or(false);
        if alive {
            self.dead.remove(node);
        } else {
            self.dead.insert(node.to_owned(), std::time::Instant::now());
        }
        alive
    }

    /// A connection of its own for a loop that blocks on Redis (a pop, a stream read), with a
    /// response timeout above the block; `None` once the node shuts down.
    async fn blocking_conn(&self, shutdown: &CancellationToken) -> Option<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_max_delay(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                c = ConnectionManager::new_with_config(self.client.clone(), config.clone()) => match c {
                    Ok(c) => return Some(c),
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                },
            }
        }
    }

    /// Pops this node's commands and acts on them.
    async fn commands(self: Arc<Self>, memory: Weak<Memory>, shutdown: CancellationToken) {
        let key = self.command_key(&self.node);
        // Its own connection: a blocking pop would hold up the shared one.
        let Some(mut conn) = self.blocking_conn(&shutdown).await else {
            return;
        };
        loop {
            let popped: redis::RedisResult<Option<(String, String)>> = tokio::select! {
                () = shutdown.cancelled() => return,
                r = conn.blpop(&key, POP_BLOCK_SECS) => r,
            };
            let body = match popped {
                Ok(Some((_, body))) => body,
                Ok(None) => continue,
                Err(e) => {
                    metrics::counter!("qrlink_redis_errors_total", "op" => "commands").increment(1);
                    tracing::debug!(error = %why(&e), "command pop failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Ok(command) = serde_json::from_str::<Command>(&body) else {
                tracing::warn!("unreadable cluster command ignored");
                continue;
            };
            match command {
                Command::Ack { request } => {
                    if let Some((_, tx)) = self.pending.remove(&request) {
                        let _ = tx.send(());
                    }
                }
                Command::Cancel {
                    session,
                    from,
                    request,
                } => {
                    if let Some(memory) = memory.upgrade() {
                        memory.cancel(&session);
                    }
                    self.ack(from, request);
                }
                Command::Handoff {
                    session,
                    from,
                    request,
                } => {
                    let (memory, this) = (memory.clone(), self.clone());
                    // Its own task: the socket it takes the session from may take a moment.
                    tokio::spawn(async move {
                        if let Some(memory) = memory.upgrade() {
                            Memory::hand_off(&memory, &session).await;
                        }
                        this.ack(from, request);
                    });
                }
            }
        }
    }

    /// A watch event of this node's, for the other nodes' watchers (this node's own get it
    /// directly). QR renderings stay out of the stream: they are kilobytes per QR, and a remote
    /// watcher gets the frame's rotation, intent and expiry.
    pub(super) fn published(&self, event: &WatchEvent) {
        let wire = WireEvent::of(event);
        if let Ok(body) = serde_json::to_string(&wire) {
            self.queue(Write::Event { body, entry: 0 });
        }
    }

    /// Reads the other nodes' watch events from the stream, from the last id seen (a Redis
    /// outage loses none of them), for this node's watchers.
    async fn events(self: Arc<Self>, memory: Weak<Memory>, shutdown: CancellationToken) {
        let key = self.events_key();
        let Some(mut conn) = self.blocking_conn(&shutdown).await else {
            return;
        };
        // From now on (a watcher's snapshot covers what came before). Not `$`: that would skip
        // what arrives between two reads.
        let mut last = format!("{}-0", unix_ms(SystemTime::now()));
        // Each node's last entry read: (its boot, the entry's number).
        let mut seen: HashMap<String, (u64, u64)> = HashMap::new();
        let mut failing = false;
        loop {
            let mut xread = redis::cmd("XREAD");
            xread
                .arg("COUNT")
                .arg(EVENTS_READ)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&key)
                .arg(&last);
            let read = xread.query_async::<Option<redis::streams::StreamReadReply>>(&mut conn);
            let reply = tokio::select! {
                () = shutdown.cancelled() => return,
                r = read => r,
            };
            let reply = match reply {
                Ok(reply) => {
                    if failing {
                        tracing::info!("watch events from other nodes flow again");
                        failing = false;
                    }
                    reply
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %why(&e), "cannot read other nodes' watch events; retrying");
                        failing = true;
                    }
                    metrics::counter!("qrlink_redis_errors_total", "op" => "events").increment(1);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Some(memory) = memory.upgrade() else {
                return;
            };
            let mut read = 0;
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                read += 1;
                last = entry.id.clone();
                let node: String = entry.get("node").unwrap_or_default();
                if node == self.node {
                    continue;
                }
                let (boot, n): (u64, u64) = (
                    entry.get("boot").unwrap_or_default(),
                    entry.get("n").unwrap_or_default(),
                );
                match seen.get_mut(&node) {
                    // Seen already: that node's write was run twice (see `writer`).
                    Some(prev) if prev.0 == boot && n <= prev.1 => continue,
                    Some(prev) => *prev = (boot, n),
                    None => {
                        seen.insert(node, (boot, n));
                    }
                }
                if !memory.watched() {
                    // Nobody watches here: the entry is only counted past.
                    continue;
                }
                let body: String = entry.get("event").unwrap_or_default();
                let events = if body.starts_with('[') {
                    serde_json::from_str::<Vec<WireEvent>>(&body).unwrap_or_default()
                } else {
                    serde_json::from_str::<WireEvent>(&body)
                        .into_iter()
                        .collect()
                };
                for event in events {
                    memory.deliver(event.into_event());
                }
            }
            drop(memory);
            if (1..EVENTS_READ).contains(&read) {
                // Caught up: let the next events gather a moment rather than read them one by
                // one (a read each is a Redis command per event per node).
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(EVENTS_PACE) => {}
                }
            }
        }
    }

    fn ack(&self, node: String, request: u64) {
        let body = serde_json::to_string(&Command::Ack { request }).unwrap_or_default();
        self.queue(Write::Command { node, body });
    }

    /// Sends `command` (built with a request number) to `node` and waits for its ack, or for
    /// the node's heartbeat to go (killed: nobody will answer, and what it had is in Redis).
    async fn ask(
        &self,
        conn: &mut ConnectionManager,
        node: &str,
        command: impl FnOnce(u64) -> Command,
    ) -> Asked {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.insert(request, tx);
        let body = serde_json::to_string(&command(request)).unwrap_or_default();
        self.queue(Write::Command {
            node: node.to_owned(),
            body,
        });
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        tokio::pin!(rx);
        let asked = loop {
            tokio::select! {
                acked = &mut rx => break if acked.is_ok() { Asked::Acked } else { Asked::TimedOut },
                () = tokio::time::sleep_until(deadline) => break Asked::TimedOut,
                () = tokio::time::sleep(HEARTBEAT_EVERY / 4) => {
                    if !self.alive(conn, node).await {
                        break Asked::NodeGone;
                    }
                }
            }
        };
        self.pending.remove(&request);
        asked
    }

    // --- What memory.rs tells the cluster ---

    /// A session opened on this node; returns the write's place in the queue.
    pub(super) fn opened(
        &self,
        id: &str,
        client: std::net::SocketAddr,
        started_at: SystemTime,
        secret: Option<&[u8]>,
        request: &LinkRequest,
    ) -> u64 {
        let wire = WireRequest {
            provider: request.provider.clone(),
            account_id: request.account_id.clone(),
            state: request.state.clone(),
            proxy: request.proxy.clone(),
            svg: request.formats.svg,
            text: request.formats.text,
            raw: request.formats.raw,
            qr_ttl_ms: request.qr_ttl.as_millis() as u64,
        };
        let mut fields = vec![
            ("provider", request.provider.clone()),
            ("node", self.node.clone()),
            ("holder", self.node.clone()),
            ("client", client.to_string()),
            ("started_ms", unix_ms(started_at).to_string()),
            ("request", serde_json::to_string(&wire).unwrap_or_default()),
            ("phase", (Phase::Starting as u8).to_string()),
            ("rotation", "0".into()),
            ("seq", "0".into()),
        ];
        if let Some(secret) = secret {
            fields.push(("secret", hash(secret)));
        }
        self.queue(Write::Session {
            id: id.to_owned(),
            fields,
            ttl: Some(self.attached_ttl),
            listed: true,
        })
    }

    /// A frame was numbered on this node: the session's phase, rotation, seq, and the frame a
    /// resume replays (when it is one).
    pub(super) fn recorded(
        &self,
        id: &str,
        seq: u64,
        rotation: u32,
        phase: Phase,
        last: Option<WireLast>,
    ) {
        let mut fields = vec![
            ("seq", seq.to_string()),
            ("rotation", rotation.to_string()),
            ("phase", (phase as u8).to_string()),
        ];
        if let Some(last) = last {
            if let WireLast::Qr { intent_id, .. } = &last {
                // A checkpoint that follows is on the same intent.
                fields.push(("intent", intent_id.clone()));
            }
            fields.push(("last", serde_json::to_string(&last).unwrap_or_default()));
        }
        self.queue(Write::Session {
            id: id.to_owned(),
            fields,
            // Set when it was opened or attached here, and the same until it is detached.
            ttl: None,
            listed: false,
        });
    }

    /// The session's socket let go: where the attempt stood, for whichever node resumes it.
    pub(super) fn detached(&self, id: &str, cursor: &Cursor) {
        self.queue(Write::Session {
            id: id.to_owned(),
            fields: vec![
                (
                    "cursor",
                    serde_json::to_string(&WireCursor::of(cursor)).unwrap_or_default(),
                ),
                ("phase", (Phase::Detached as u8).to_string()),
                ("holder", String::new()),
            ],
            ttl: Some(self.grace),
            listed: false,
        });
    }

    /// A socket on this node attached the session (a resume); returns the write's place in
    /// the queue.
    pub(super) fn attached(&self, id: &str) -> u64 {
        self.queue(Write::Session {
            id: id.to_owned(),
            fields: vec![("node", self.node.clone()), ("holder", self.node.clone())],
            ttl: Some(self.attached_ttl),
            listed: true,
        })
    }

    /// The session ended.
    pub(super) fn ended(&self, id: &str) {
        self.queue(Write::Ended { id: id.to_owned() });
    }

    // --- What other nodes' sessions need ---

    /// Takes session `id` from wherever it is (another node's socket, another node's grace, a
    /// dead node) for a resume here with `secret` on `provider`'s path.
    pub(super) async fn claim(
        &self,
        id: &str,
        secret: &[u8],
        provider: &str,
    ) -> Result<Adopted, ClaimError> {
        let mut conn = self.conn().await.ok_or(ClaimError::Unavailable)?;
        let key = self.key(id);
        let fields: HashMap<String, String> = conn
            .hgetall(&key)
            .await
            .map_err(|_| ClaimError::Unavailable)?;
        let matches = fields.get("secret").is_some_and(|h| {
            crate::secret::constant_time_eq(h.as_bytes(), hash(secret).as_bytes())
        });
        if !matches {
            return Err(ClaimError::Unknown);
        }
        if fields.get("provider").map(String::as_str) != Some(provider) {
            return Err(ClaimError::WrongProvider);
        }
        let node = fields.get("node").cloned().unwrap_or_default();
        let fields = if node != self.node && self.alive(&mut conn, &node).await {
            // It lives on a node that is up: that node lets go and writes where it stood.
            let from = self.node.clone();
            let session = id.to_owned();
            let asked = self
                .ask(&mut conn, &node, |request| Command::Handoff {
                    session,
                    from,
                    request,
                })
                .await;
            if asked == Asked::TimedOut {
                return Err(ClaimError::Busy);
            }
            let fields: HashMap<String, String> = conn
                .hgetall(&key)
                .await
                .map_err(|_| ClaimError::Unavailable)?;
            if fields.is_empty() {
                return Err(ClaimError::Unknown);
            }
            fields
        } else {
            fields
        };
        Adopted::read(&fields).ok_or(ClaimError::Unknown)
    }

    /// Ends, for good, the sessions of nodes that died or left and that nobody resumed: a
    /// session lives in its node's memory, so with its node gone nothing else would end it, and
    /// its hash would expire in Redis with no `closed` event and no webhook. A node gone (its
    /// heartbeat missing) for the resume grace has its remaining sessions ended here as
    /// `disconnected` (`link.abandoned`, as a detached session's grace ends on a live node),
    /// one node sweeping each gone node (a lock in Redis); a session whose hash would expire
    /// sooner is ended before it does. The sweeping node looks through the directory once per
    /// gone node (again only if the sweep moves to another node), not every second: with
    /// thousands of sessions that look is thousands of commands. A resume that moved a session elsewhere took it off the
    /// gone node, and the take is atomic on the hash, so a session is ended once, not both
    /// resumed and ended. When none of its sessions is left, the gone node leaves the set of
    /// nodes.
    async fn sweeper(self: Arc<Self>, memory: Weak<Memory>, shutdown: CancellationToken) {
        let mut gone: HashMap<String, Gone> = HashMap::new();
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(mut conn) = self.conn().await else {
                continue;
            };
            let Ok(nodes) = conn.smembers::<_, Vec<String>>(self.nodes_key()).await else {
                continue;
            };
            let others: Vec<String> = nodes.into_iter().filter(|n| *n != self.node).collect();
            let mut pipe = redis::pipe();
            for node in &others {
                pipe.exists(self.node_key(node));
            }
            let Ok(alive) = pipe.query_async::<Vec<bool>>(&mut conn).await else {
                continue;
            };
            let now_gone: Vec<String> = others
                .into_iter()
                .zip(alive)
                .filter_map(|(node, alive)| (!alive).then_some(node))
                .collect();
            gone.retain(|node, _| now_gone.contains(node));
            for node in now_gone {
                let g = gone.entry(node.clone()).or_insert_with(|| Gone {
                    since: std::time::Instant::now(),
                    plan: None,
                });
                if !self.sweep_lock(&mut conn, &node).await {
                    // Another node sweeps it; if this one takes over, it looks again.
                    g.plan = None;
                    continue;
                }
                if g.plan.is_none() {
                    g.plan = self.plan(&mut conn, &node, g.since).await;
                }
                let Some(plan) = &mut g.plan else { continue };
                self.sweep(&mut conn, &node, plan, &memory).await;
                if plan.is_empty() {
                    // Nothing of it is left: it leaves the set of nodes (a node that comes
                    // back adds itself with its next heartbeat).
                    let _: redis::RedisResult<()> = conn.srem(self.nodes_key(), &node).await;
                    let _: redis::RedisResult<()> = conn.del(self.sweep_key(&node)).await;
                }
            }
        }
    }

    /// Whether this node sweeps gone node `node` now: the lock is free or already its own.
    async fn sweep_lock(&self, conn: &mut ConnectionManager, node: &str) -> bool {
        let key = self.sweep_key(node);
        let ttl = (SWEEP_EVERY * 3).as_millis() as u64;
        let taken: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&key)
            .arg(&self.node)
            .arg("NX")
            .arg("PX")
            .arg(ttl)
            .query_async(conn)
            .await;
        match taken {
            Ok(Some(_)) => true,
            Ok(None) => {
                let holder: Option<String> = conn.get(&key).await.ok().flatten();
                if holder.as_deref() == Some(self.node.as_str()) {
                    let _: redis::RedisResult<()> = conn.pexpire(&key, ttl as i64).await;
                    return true;
                }
                false
            }
            Err(_) => false,
        }
    }

    /// Gone node `node`'s sessions (one look through the directory) and when each is due to
    /// end: the grace after `since`, or just before its hash would expire if that is sooner.
    /// `None` when Redis does not answer.
    async fn plan(
        &self,
        conn: &mut ConnectionManager,
        node: &str,
        since: std::time::Instant,
    ) -> Option<Vec<(String, std::time::Instant)>> {
        let ids: Vec<String> = conn.smembers(self.directory()).await.ok()?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hget(self.key(id), "node").pttl(self.key(id));
        }
        let rows: Vec<(Option<String>, i64)> = pipe.query_async(conn).await.ok()?;
        let now = std::time::Instant::now();
        let graced = since + self.grace;
        Some(
            ids.into_iter()
                .zip(rows)
                .filter(|(_, (owner, _))| owner.as_deref() == Some(node))
                .map(|(id, (_, ttl_ms))| {
                    let due = match u64::try_from(ttl_ms) {
                        // -1: no expiry (-2, gone, was filtered out with its owner).
                        Err(_) => graced,
                        Ok(ms) => graced.min(
                            (now + Duration::from_millis(ms))
                                .checked_sub(SWEEP_EVERY * 2)
                                .unwrap_or(now),
                        ),
                    };
                    (id, due)
                })
                .collect(),
        )
    }

    /// Ends the sessions of `plan` (gone node `node`'s) that are due; keeps the others, and
    /// those Redis did not answer for, for the next sweep.
    async fn sweep(
        &self,
        conn: &mut ConnectionManager,
        node: &str,
        plan: &mut Vec<(String, std::time::Instant)>,
        memory: &Weak<Memory>,
    ) {
        let now = std::time::Instant::now();
        let mut kept = Vec::new();
        for (id, due) in plan.drain(..) {
            if due > now {
                kept.push((id, due));
                continue;
            }
            match self.take(conn, &id, node).await {
                Ok(Some(taken)) => {
                    if let Some(memory) = memory.upgrade() {
                        taken.end(&memory, &id, Outcome::Disconnected);
                    }
                }
                // Resumed elsewhere meanwhile.
                Ok(None) => {}
                Err(()) => kept.push((id, due)),
            }
        }
        *plan = kept;
    }

    /// Takes session `id` off gone node `node` (atomically: `None` if a resume moved it
    /// meanwhile), with its hash and directory entry, and gives back the place the gone node
    /// held in its client's per-address count.
    async fn take(
        &self,
        conn: &mut ConnectionManager,
        id: &str,
        node: &str,
    ) -> Result<Option<Adopted>, ()> {
        let taken: redis::RedisResult<Option<Vec<String>>> = redis::cmd("EVAL")
            .arg(TAKE)
            .arg(1)
            .arg(self.key(id))
            .arg(node)
            .query_async(conn)
            .await;
        let Some(flat) = taken.map_err(|_| ())? else {
            return Ok(None);
        };
        let _: redis::RedisResult<()> = conn.srem(self.directory(), id).await;
        let fields: HashMap<String, String> = flat
            .chunks_exact(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect();
        let Some(adopted) = Adopted::read(&fields) else {
            return Ok(None);
        };
        self.queue(Write::Release {
            key: self.ip_key(super::limits::key_of(adopted.client.ip())),
        });
        Ok(Some(adopted))
    }

    /// Cancels a session on the node that has it. False if no node has it.
    pub(super) async fn cancel(&self, id: &str, memory: &Memory) -> bool {
        let Some(mut conn) = self.conn().await else {
            return false;
        };
        let node: Option<String> = conn.hget(self.key(id), "node").await.ok().flatten();
        let Some(node) = node else { return false };
        if node != self.node && self.alive(&mut conn, &node).await {
            let (session, from) = (id.to_owned(), self.node.clone());
            let asked = self
                .ask(&mut conn, &node, |request| Command::Cancel {
                    session,
                    from,
                    request,
                })
                .await;
            match asked {
                Asked::Acked => return true,
                Asked::TimedOut => return false,
                Asked::NodeGone => {}
            }
        }
        // Its node is gone: nobody else will end it.
        match self.take(&mut conn, id, &node).await {
            Ok(Some(taken)) => {
                taken.end(memory, id, Outcome::Cancelled);
                true
            }
            Ok(None) => false,
            Err(()) => {
                self.ended(id);
                true
            }
        }
    }

    /// The dashboard stats of every other node that is alive (`None` when Redis does not
    /// answer); the fields of dead nodes are taken out of the hash.
    pub(super) async fn stats(&self) -> Option<Vec<NodeStats>> {
        let mut conn = self.conn().await?;
        let all: HashMap<String, String> = conn.hgetall(self.stats_key()).await.ok()?;
        let others: Vec<(String, String)> =
            all.into_iter().filter(|(n, _)| *n != self.node).collect();
        let mut pipe = redis::pipe();
        for (node, _) in &others {
            pipe.exists(self.node_key(node));
        }
        let alive: Vec<bool> = pipe.query_async(&mut conn).await.ok()?;
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for ((node, body), alive) in others.into_iter().zip(alive) {
            match serde_json::from_str::<NodeStats>(&body) {
                Ok(stats) if alive => out.push(stats),
                _ if alive => {}
                _ => dead.push(node),
            }
        }
        if !dead.is_empty() {
            let _: redis::RedisResult<()> = conn.hdel(self.stats_key(), dead).await;
        }
        Some(out)
    }

    /// Every node's open sessions, oldest first.
    pub(super) async fn snapshot(&self) -> Option<Vec<SessionInfo>> {
        let mut conn = self.conn().await?;
        let ids: Vec<String> = conn.smembers(self.directory()).await.ok()?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET").arg(self.key(id)).arg(&[
                "provider",
                "node",
                "phase",
                "rotation",
                "started_ms",
                "client",
                "holder",
            ]);
        }
        let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut conn).await.ok()?;
        let now = unix_ms(SystemTime::now());
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, row) in ids.into_iter().zip(rows) {
            let [provider, node, phase, rotation, started, client, _holder] =
                <[Option<String>; 7]>::try_from(row).ok()?;
            let (Some(provider), Some(started)) =
                (provider, started.and_then(|s| s.parse::<u64>().ok()))
            else {
                // Its hash expired (a dead node's session past its TTL).
                gone.push(id);
                continue;
            };
            out.push(SessionInfo {
                id,
                provider,
                phase: Phase::from_u8(phase.and_then(|p| p.parse().ok()).unwrap_or(0)),
                rotation: rotation.and_then(|r| r.parse().ok()).unwrap_or(0),
                started_at: humantime::format_rfc3339_millis(
                    UNIX_EPOCH + Duration::from_millis(started),
                )
                .to_string(),
                age_ms: now.saturating_sub(started),
                client: client
                    .and_then(|c| c.parse::<std::net::SocketAddr>().ok())
                    .map(|c| c.ip().to_string())
                    .unwrap_or_default(),
                node,
            });
        }
        if !gone.is_empty() {
            let _: redis::RedisResult<()> = conn.srem(self.directory(), gone).await;
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.age_ms));
        Some(out)
    }
}

impl Adopted {
    /// Tells `memory`'s watchers and the webhook that this session, taken from a gone node
    /// ([`Cluster::take`]), ended with `outcome`.
    fn end(&self, memory: &Memory, id: &str, outcome: Outcome) {
        memory.ended_on_a_gone_node(
            id,
            outcome,
            &self.provider,
            self.request.state.as_deref(),
            self.intent.as_deref(),
            self.started_at,
        );
    }

    fn read(fields: &HashMap<String, String>) -> Option<Adopted> {
        let wire: WireRequest = serde_json::from_str(fields.get("request")?).ok()?;
        let last: Option<WireLast> = fields
            .get("last")
            .and_then(|l| serde_json::from_str(l).ok());
        let rotation = fields
            .get("rotation")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let cursor = match fields
            .get("cursor")
            .and_then(|c| serde_json::from_str::<WireCursor>(c).ok())
        {
            Some(c) => c.into_cursor(),
            // Its node died while attached: it stood where its last frame put it.
            None => match &last {
                Some(WireLast::Qr {
                    rotation,
                    intent_id,
                    ..
                }) => Cursor {
                    rotation: *rotation,
                    next: Resume::Poll {
                        intent_id: intent_id.clone(),
                        shown: None,
                    },
                },
                // The checkpoint is asked again on the page (replayed) and answered there.
                Some(WireLast::Checkpoint {
                    frame: ServerFrame::Checkpoint { checkpoint, .. },
                    ..
                }) => Cursor {
                    rotation,
                    next: Resume::Answer {
                        intent_id: fields.get("intent")?.clone(),
                        checkpoint: checkpoint.clone(),
                        answers: 0,
                    },
                },
                _ => Cursor::default(),
            },
        };
        Some(Adopted {
            provider: fields.get("provider")?.clone(),
            client: fields.get("client")?.parse().ok()?,
            started_at: UNIX_EPOCH + Duration::from_millis(fields.get("started_ms")?.parse().ok()?),
            request: LinkRequest {
                provider: wire.provider,
                account_id: wire.account_id,
                state: wire.state,
                proxy: wire.proxy,
                formats: QrFormats {
                    svg: wire.svg,
                    text: wire.text,
                    raw: wire.raw,
                },
                qr_ttl: Duration::from_millis(wire.qr_ttl_ms),
            },
            seq: fields.get("seq").and_then(|s| s.parse().ok()).unwrap_or(0),
            rotation,
            last,
            cursor,
            intent: fields.get("intent").cloned(),
        })
    }
}

impl WireCursor {
    fn of(cursor: &Cursor) -> WireCursor {
        let rotation = cursor.rotation;
        match &cursor.next {
            Resume::Start => WireCursor::Start { rotation },
            Resume::Poll { intent_id, shown } => WireCursor::Poll {
                rotation,
                intent_id: intent_id.clone(),
                shown: shown.clone(),
            },
            Resume::Answer {
                intent_id,
                checkpoint,
                answers,
            } => WireCursor::Answer {
                rotation,
                intent_id: intent_id.clone(),
                checkpoint: checkpoint.clone(),
                answers: *answers,
            },
        }
    }

    fn into_cursor(self) -> Cursor {
        match self {
            WireCursor::Start { rotation } => Cursor {
                rotation,
                next: Resume::Start,
            },
            WireCursor::Poll {
                rotation,
                intent_id,
                shown,
            } => Cursor {
                rotation,
                next: Resume::Poll { intent_id, shown },
            },
            WireCursor::Answer {
                rotation,
                intent_id,
                checkpoint,
                answers,
            } => Cursor {
                rotation,
                next: Resume::Answer {
                    intent_id,
                    checkpoint,
                    answers,
                },
            },
        }
    }
}

/// Fewer commands for the same end state: within one batch, a session's writes that follow
/// each other (no command to another node in between, which may read them) become one, and the
/// writes of a session that ends in the same batch are left out (its hash is deleted anyway).
/// Under load one batch holds an attempt's opening and its first frame, or its last frame and
/// its end.
fn coalesce(batch: &mut Vec<Write>) {
    if batch.len() < 2 {
        return;
    }
    // The index in `out` of each session's latest write since the last command, and of the
    // watch events' entry being filled.
    let mut latest: HashMap<String, usize> = HashMap::new();
    let mut events: Option<(usize, usize)> = None;
    let mut out: Vec<Option<Write>> = Vec::with_capacity(batch.len());
    for write in batch.drain(..) {
        match write {
            Write::Session {
                id,
                fields,
                ttl,
                listed,
            } => match latest.get(&id).and_then(|&i| out[i].as_mut()) {
                Some(Write::Session {
                    fields: earlier,
                    ttl: earlier_ttl,
                    listed: earlier_listed,
                    ..
                }) => {
                    // HSET takes repeated fields in order: the later value wins.
                    earlier.extend(fields);
                    *earlier_ttl = ttl.or(*earlier_ttl);
                    *earlier_listed |= listed;
                }
                _ => {
                    latest.insert(id.clone(), out.len());
                    out.push(Some(Write::Session {
                        id,
                        fields,
                        ttl,
                        listed,
                    }));
                }
            },
            Write::Ended { id } => {
                if let Some(i) = latest.remove(&id) {
                    out[i] = None;
                }
                out.push(Some(Write::Ended { id }));
            }
            Write::Event { body, entry } => match events {
                Some((i, n)) if n < EVENTS_PER_ENTRY => {
                    if let Some(Write::Event { body: shared, .. }) = &mut out[i] {
                        // One entry, several events: a JSON array of them.
                        if n == 1 {
                            shared.insert(0, '[');
                        } else {
                            shared.pop();
                        }
                        shared.push(',');
                        shared.push_str(&body);
                        shared.push(']');
                    }
                    events = Some((i, n + 1));
                }
                _ => {
                    events = Some((out.len(), 1));
                    out.push(Some(Write::Event { body, entry }));
                }
            },
            command @ Write::Command { .. } => {
                latest.clear();
                events = None;
                out.push(Some(command));
            }
            other => out.push(Some(other)),
        }
    }
    batch.extend(out.into_iter().flatten());
}

/// What went wrong with Redis, for a log line: the kind only (an error's text may quote the
/// URL, password and all).
fn why(e: &redis::RedisError) -> String {
    format!("{:?}", e.kind())
}

/// SHA-256 of a resume secret, hex: what Redis keeps instead of the secret.
fn hash(secret: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, fields: &[(&'static str, &str)], ttl: Option<u64>, listed: bool) -> Write {
        Write::Session {
            id: id.into(),
            fields: fields.iter().map(|&(k, v)| (k, v.to_owned())).collect(),
            ttl: ttl.map(Duration::from_millis),
            listed,
        }
    }

    fn event(body: &str) -> Write {
        Write::Event {
            body: body.into(),
            entry: 0,
        }
    }

    fn described(batch: &[Write]) -> Vec<String> {
        batch
            .iter()
            .map(|w| match w {
                Write::Session {
                    id,
                    fields,
                    ttl,
                    listed,
                } => {
                    let fields: Vec<String> =
                        fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!(
                        "session {id} [{}] ttl={ttl:?} listed={listed}",
                        fields.join(" ")
                    )
                }
                Write::Ended { id } => format!("ended {id}"),
                Write::Command { node, body } => format!("command {node} {body}"),
                Write::Event { body, .. } => format!("event {body}"),
                Write::Release { key } => format!("release {key}"),
            })
            .collect()
    }

    #[test]
    fn a_sessions_writes_in_one_batch_become_one_and_the_later_value_and_ttl_win() {
        let mut batch = vec![
            session("a", &[("phase", "0"), ("seq", "0")], Some(100), true),
            session("b", &[("seq", "1")], None, false),
            session("a", &[("seq", "1")], None, false),
            session("a", &[("phase", "5")], Some(7), false),
        ];
        coalesce(&mut batch);
        assert_eq!(
            described(&batch),
            [
                "session a [phase=0 seq=0 seq=1 phase=5] ttl=Some(7ms) listed=true",
                "session b [seq=1] ttl=None listed=false",
            ]
        );
    }

    #[test]
    fn a_session_that_ends_in_the_batch_leaves_only_its_end() {
        let mut batch = vec![
            session("a", &[("seq", "2")], None, false),
            event(r#"{"e":1}"#),
            Write::Ended { id: "a".into() },
            session("b", &[("seq", "1")], None, false),
        ];
        coalesce(&mut batch);
        assert_eq!(
            described(&batch),
            [
                "event {\"e\":1}",
                "ended a",
                "session b [seq=1] ttl=None listed=false"
            ]
        );
    }

    #[test]
    fn a_command_to_another_node_is_a_barrier_nothing_moves_across() {
        // The node that gets the ack reads what the writes before it wrote, and nothing after.
        let mut batch = vec![
            session("a", &[("phase", "6")], Some(1), false),
            event(r#"{"e":1}"#),
            Write::Command {
                node: "n2".into(),
                body: "ack".into(),
            },
            session("a", &[("holder", "")], None, false),
            event(r#"{"e":2}"#),
            Write::Ended { id: "a".into() },
        ];
        coalesce(&mut batch);
        assert_eq!(
            described(&batch),
            [
                "session a [phase=6] ttl=Some(1ms) listed=false",
                "event {\"e\":1}",
                "command n2 ack",
                "event {\"e\":2}",
                "ended a",
            ]
        );
    }

    #[test]
    fn events_share_an_entry_as_a_json_array_up_to_the_limit() {
        let mut batch: Vec<Write> = (0..EVENTS_PER_ENTRY + 2)
            .map(|i| event(&format!(r#"{{"e":{i}}}"#)))
            .collect();
        coalesce(&mut batch);
        let bodies: Vec<String> = batch
            .iter()
            .map(|w| match w {
                Write::Event { body, .. } => body.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(bodies.len(), 2);
        let first: Vec<Value> = serde_json::from_str(&bodies[0]).unwrap();
        let second: Vec<Value> = serde_json::from_str(&bodies[1]).unwrap();
        assert_eq!(first.len(), EVENTS_PER_ENTRY);
        assert_eq!(first[0]["e"], 0);
        assert_eq!(second.len(), 2);
        assert_eq!(second[1]["e"], EVENTS_PER_ENTRY + 1);
        // One event alone stays an object, as before entries were shared.
        let mut one = vec![event(r#"{"e":0}"#)];
        coalesce(&mut one);
        assert_eq!(described(&one), ["event {\"e\":0}"]);
    }
}
