//! The webhook outbox in Redis (cluster mode): pending webhooks outlive the node that queued
//! them, and any node delivers them.
//!
//! Three keys under the cluster's prefix, hash-tagged alike so the scripts and transactions
//! that touch two of them stay on one slot of a Redis Cluster:
//! - `{prefix}{webhooks}`, a stream read by the consumer group `deliverers`, one consumer per
//!   node (its node id). An entry is one webhook due now: field `m`, the [`Wire`] message (its
//!   `webhook-id`, event, session, body, queue time and attempts so far). A node takes new
//!   entries with XREADGROUP and, every quarter of `claim_idle`, claims with XAUTOCLAIM those
//!   another node took and left unsettled longer than `claim_idle` (a little more than the
//!   attempt timeout: that node is dead or stuck).
//! - `{prefix}{webhooks}:due`, a sorted set of webhooks waiting for a retry, by due time (unix
//!   ms). Whichever node looks first moves the due ones back to the stream ([`PROMOTE`]).
//! - `{prefix}{webhooks}:pending`, a sorted set of every pending webhook's id by queue time:
//!   the count and the age of the oldest for the panel and the gauges, in O(log n).
//!
//! Settling deletes the entry (XACK then XDEL in one transaction), so the stream holds only
//! what is pending and Redis memory does not grow with delivered webhooks. `MAXLEN` is not
//! used: it would trim webhooks still pending behind a receiver that is down.
//!
//! Writes (a push, a settle) never wait on Redis: they queue here, in order, and a writer task
//! sends them, keeping them until Redis takes them. While Redis is unreachable new webhooks
//! wait in this process (logged once per outage, each failed call counted in
//! `qrlink_webhook_outbox_errors_total`); only those are lost if the process stops before Redis
//! returns. What reached Redis is never lost to a restart or a dead node: it is delivered by
//! whichever node takes or claims it, under the same `webhook-id`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::outbox::{Message, Settle};

/// The consumer group every node reads the stream in.
const GROUP: &str = "deliverers";
/// Longest a read blocks: also how late a retry another node scheduled may be moved back.
const BLOCK: Duration = Duration::from_millis(250);
/// How often the writer refreshes the pending count when nothing is written.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Writes sent in one transaction at most.
const BATCH: usize = 512;

/// Moves the retries due by `ARGV[1]` (unix ms) from the due set (`KEYS[2]`) back to the
/// stream (`KEYS[1]`), at most 100 a call, atomically: a retry is in exactly one of the two.
const PROMOTE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, m in ipairs(due) do
  redis.call('XADD', KEYS[1], '*', 'm', m)
  redis.call('ZREM', KEYS[2], m)
end
return #due
";

/// Where the Redis outbox lives.
#[derive(Debug, Clone)]
pub struct RedisOutboxConfig {
    /// `redis://` or `rediss://` (may carry a password: never logged).
    pub url: String,
    /// Key prefix (`--redis-prefix`).
    pub prefix: String,
    /// This node's consumer name (`--node-id`).
    pub node: String,
    /// A webhook taken by a node and not settled for this long is claimed by another.
    pub claim_idle: Duration,
}

/// A webhook as it travels through Redis.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    id: String,
    event: String,
    session: String,
    body: String,
    queued_ms: u64,
    attempts: u32,
}

/// A write waiting for Redis.
#[derive(Debug)]
enum Op {
    /// A new webhook: into the stream and the pending set.
    Push {
        wire: String,
        id: Box<str>,
        queued_ms: u64,
        event: &'static str,
    },
    /// Done with: off the stream and the pending set.
    Done { entry: String, id: Box<str> },
    /// An attempt failed: off the stream, into the due set.
    Retry {
        entry: String,
        due_ms: u64,
        wire: String,
    },
    /// A second entry for a webhook already in flight here: off the stream only.
    Drop { entry: String },
}

/// What the reader keeps between takes.
#[derive(Debug)]
struct Reader {
    conn: Option<ConnectionManager>,
    /// Entries read and not handed out yet (at most the room the deliverer had).
    buffer: VecDeque<Box<Message>>,
    next_claim: Instant,
    /// Where the claim scan goes on (`0-0`: from the start, at the next scan).
    claim_cursor: String,
    failing: bool,
}

/// The outbox in Redis. See the module docs.
pub struct RedisOutbox {
    client: redis::Client,
    node: String,
    stream: String,
    due: String,
    pending: String,
    claim_idle: Duration,
    /// Writes in order, kept until Redis has them.
    writes: Mutex<VecDeque<Op>>,
    wake_writer: Notify,
    /// Woken when a write reaches Redis or a message is settled (shutdown waits on both).
    changed: Notify,
    /// Messages taken and not settled yet: their stream entry, by `webhook-id`.
    in_flight: Mutex<HashMap<Box<str>, String>>,
    reader: tokio::sync::Mutex<Reader>,
    /// The pending set's size and oldest queue time (unix ms), as the writer last read them.
    stats: Mutex<(usize, Option<u64>)>,
    /// Stops the writer: this process delivers no more.
    stop: CancellationToken,
    /// Shutting down: take nothing new from the stream (other nodes will), finish what is here.
    draining: AtomicBool,
    writer_failing: AtomicBool,
}

impl std::fmt::Debug for RedisOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the client: its URL may carry a password.
        f.debug_struct("RedisOutbox")
            .field("stream", &self.stream)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single push, pop or insert.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The local instant `ms` (unix ms) was, as near as this clock can tell.
fn instant_of(ms: u64) -> Instant {
    let age = unix_ms(SystemTime::now()).saturating_sub(ms);
    let now = Instant::now();
    now.checked_sub(Duration::from_millis(age)).unwrap_or(now)
}

/// The `&'static str` of a known event type (the journal and metrics keep them static).
fn event_of(name: &str) -> Option<&'static str> {
    super::event::TYPES.into_iter().find(|e| *e == name)
}

fn why(e: &redis::RedisError) -> String {
    // The error's text, never the URL (it may carry a password).
    e.to_string()
}

impl RedisOutbox {
    /// The outbox at `config.url`, with its writer task started. Nothing connects until the
    /// first write or read; a Redis that is down now is tried again until it answers.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn start(config: &RedisOutboxConfig) -> Result<Arc<RedisOutbox>, String> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("QRLINK_REDIS_URL is not a usable Redis URL ({})", why(&e)))?;
        let base = format!("{}{{webhooks}}", config.prefix);
        let outbox = Arc::new(RedisOutbox {
            client,
            node: config.node.clone(),
            due: format!("{base}:due"),
            pending: format!("{base}:pending"),
            stream: base,
            claim_idle: config.claim_idle,
            writes: Mutex::default(),
            wake_writer: Notify::new(),
            changed: Notify::new(),
            in_flight: Mutex::default(),
            reader: tokio::sync::Mutex::new(Reader {
                conn: None,
                buffer: VecDeque::new(),
                next_claim: Instant::now(),
                claim_cursor: "0-0".to_owned(),
                failing: false,
            }),
            stats: Mutex::default(),
            stop: CancellationToken::new(),
            draining: AtomicBool::new(false),
            writer_failing: AtomicBool::new(false),
        });
        tokio::spawn(outbox.clone().writer());
        Ok(outbox)
    }

    /// A connection with the group in place. `block` is the longest a command on it blocks.
    async fn connect(&self, block: Duration) -> Result<ConnectionManager, redis::RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2) + block))
            .set_max_delay(Duration::from_secs(1));
        let mut conn = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        self.ensure_group(&mut conn).await?;
        Ok(conn)
    }

    /// Creates the stream and its group unless they exist (from the start of the stream: what
    /// was queued before any node read it is delivered too).
    async fn ensure_group(&self, conn: &mut ConnectionManager) -> Result<(), redis::RedisError> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    fn queue(&self, op: Op) {
        lock(&self.writes).push_back(op);
        self.wake_writer.notify_one();
    }

    /// Queues a new webhook (into Redis as soon as it answers).
    pub fn push(&self, msg: Message) {
        let queued_ms =
            unix_ms(SystemTime::now()).saturating_sub(msg.queued.elapsed().as_millis() as u64);
        let wire = wire_of(&msg, queued_ms);
        self.queue(Op::Push {
            wire,
            id: msg.id,
            queued_ms,
            event: msg.event,
        });
    }

    /// Waits for a due webhook (new, claimed from a dead node, or a retry now due) and takes
    /// it; reads at most `room` at once, so none waits here while another node could send it.
    pub async fn take(&self, room: usize) -> Box<Message> {
        let room = room.max(1);
        let mut reader = self.reader.lock().await;
        loop {
            if let Some(msg) = reader.buffer.pop_front() {
                return msg;
            }
            if self.draining.load(Ordering::Relaxed) {
                // What is new is for the nodes that stay.
                return std::future::pending().await;
            }
            let conn = match reader.conn.clone() {
                Some(c) => c,
                None => match self.connect(BLOCK).await {
                    Ok(c) => {
                        reader.conn = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        self.read_failed(&mut reader, &e).await;
                        continue;
                    }
                },
            };
            match self.read(&mut reader, conn, room).await {
                Ok(()) => {
                    if reader.failing {
                        tracing::info!("webhooks are taken from Redis again");
                        reader.failing = false;
                    }
                }
                Err(e) => {
                    if e.code() == Some("NOGROUP") {
                        // The stream went (FLUSHALL, an operator): set it up again.
                        reader.conn = None;
                    }
                    self.read_failed(&mut reader, &e).await;
                }
            }
        }
    }

    async fn read_failed(&self, reader: &mut Reader, e: &redis::RedisError) {
        if !reader.failing {
            tracing::warn!(error = %why(e), "cannot take webhooks from Redis; retrying");
            reader.failing = true;
        }
        metrics::counter!("qrlink_webhook_outbox_errors_total", "op" => "take").increment(1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// One round: retries now due back to the stream, claims from dead nodes when it is time,
    /// then new entries (blocking at most [`BLOCK`], less if a claim is due sooner).
    async fn read(
        &self,
        reader: &mut Reader,
        mut conn: ConnectionManager,
        room: usize,
    ) -> Result<(), redis::RedisError> {
        let now_ms = unix_ms(SystemTime::now());
        let next_due: Vec<String> = redis::pipe()
            .cmd("EVAL")
            .arg(PROMOTE)
            .arg(2)
            .arg(&self.stream)
            .arg(&self.due)
            .arg(now_ms)
            .ignore()
            .cmd("ZRANGE")
            .arg(&self.due)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async::<(Vec<String>,)>(&mut conn)
            .await?
            .0;
        if Instant::now() >= reader.next_claim {
            let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(GROUP)
                .arg(&self.node)
                .arg(self.claim_idle.as_millis() as u64)
                .arg(&reader.claim_cursor)
                .arg("COUNT")
                .arg(room)
                .query_async(&mut conn)
                .await?;
            // A scan looks at a bounded part of the pending entries: go on from where it
            // stopped at once, start again from the beginning a while later.
            reader.next_claim = match claimed.next_stream_id.as_str() {
                "0-0" => Instant::now() + claim_every(self.claim_idle),
                _ => Instant::now(),
            };
            reader.claim_cursor = claimed.next_stream_id;
            if !claimed.claimed.is_empty() {
                tracing::info!(
                    claimed = claimed.claimed.len(),
                    "webhooks another node left pending are delivered here"
                );
            }
            self.accept(reader, claimed.claimed);
            if !reader.buffer.is_empty() {
                return Ok(());
            }
        }
        let mut block = BLOCK.min(reader.next_claim.saturating_duration_since(Instant::now()));
        // [member, score] of the first retry due.
        if let Some(at) = next_due.get(1).and_then(|s| s.parse::<f64>().ok()) {
            let until = Duration::from_millis((at as u64).saturating_sub(now_ms));
            block = block.min(until);
        }
        let read: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.node)
            .arg("COUNT")
            .arg(room)
            .arg("BLOCK")
            // 0 would block for ever.
            .arg((block.as_millis() as u64).max(1))
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let entries = read.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
        self.accept(reader, entries.collect());
        Ok(())
    }

    /// Entries read or claimed become messages in flight here.
    fn accept(&self, reader: &mut Reader, entries: Vec<StreamId>) {
        let mut in_flight = lock(&self.in_flight);
        for entry in entries {
            let wire = entry
                .get::<String>("m")
                .and_then(|m| serde_json::from_str::<Wire>(&m).ok());
            let Some((wire, event)) = wire.and_then(|w| event_of(&w.event).map(|e| (w, e))) else {
                tracing::warn!(entry = %entry.id, "an entry of the webhook stream is not a webhook; dropped");
                self.queue(Op::Drop { entry: entry.id });
                continue;
            };
            match in_flight.get(wire.id.as_str()) {
                // Claimed back while its attempt runs here: that attempt settles it.
                Some(e) if *e == entry.id => continue,
                // The same webhook twice in the stream (a push written twice): once is enough.
                Some(_) => {
                    self.queue(Op::Drop { entry: entry.id });
                    continue;
                }
                None => {}
            }
            let queued = instant_of(wire.queued_ms);
            let id: Box<str> = wire.id.into();
            in_flight.insert(id.clone(), entry.id);
            reader.buffer.push_back(Box::new(Message {
                id,
                event,
                session: wire.session.into(),
                body: Bytes::from(wire.body),
                queued,
                attempts: wire.attempts,
            }));
        }
    }

    /// Settles a message [`RedisOutbox::take`] gave out.
    pub fn settle(&self, id: &str, settle: Settle) {
        let Some(entry) = lock(&self.in_flight).remove(id) else {
            return;
        };
        match settle {
            Settle::Done => self.queue(Op::Done {
                entry,
                id: id.into(),
            }),
            Settle::RetryAt(at, msg) => {
                let wait = at.saturating_duration_since(Instant::now());
                let now_ms = unix_ms(SystemTime::now());
                let queued_ms = now_ms.saturating_sub(msg.queued.elapsed().as_millis() as u64);
                self.queue(Op::Retry {
                    entry,
                    due_ms: now_ms + wait.as_millis() as u64,
                    wire: wire_of(&msg, queued_ms),
                });
            }
        }
        self.changed.notify_waiters();
    }

    /// Gives up the webhooks read here and not handed out yet (after a 410): settled as done.
    pub fn clear(&self) -> Vec<Message> {
        let Ok(mut reader) = self.reader.try_lock() else {
            // A take is reading: its buffer is empty.
            return Vec::new();
        };
        let cleared: Vec<Message> = reader.buffer.drain(..).map(|m| *m).collect();
        drop(reader);
        for msg in &cleared {
            self.settle(&msg.id, Settle::Done);
        }
        cleared
    }

    /// Stops writing; returns the events of the webhooks that never reached Redis (lost with
    /// this process). What is in flight here stays pending in Redis, for another node.
    pub fn drop_all(&self) -> Vec<&'static str> {
        self.stop.cancel();
        let writes = std::mem::take(&mut *lock(&self.writes));
        lock(&self.in_flight).clear();
        self.changed.notify_waiters();
        writes
            .into_iter()
            .filter_map(|op| match op {
                Op::Push { event, .. } => Some(event),
                _ => None,
            })
            .collect()
    }

    /// Pending webhooks across the cluster (as last read, at most a second ago) plus those
    /// that have not reached Redis yet, and when the oldest was queued.
    pub fn pending(&self) -> (usize, Option<Instant>) {
        let (in_redis, oldest_ms) = *lock(&self.stats);
        let writes = lock(&self.writes);
        let unwritten = writes.iter().filter_map(|op| match op {
            Op::Push { queued_ms, .. } => Some(*queued_ms),
            _ => None,
        });
        let (count, oldest) = unwritten.fold((in_redis, oldest_ms), |(n, oldest), q| {
            (n + 1, Some(oldest.map_or(q, |o| o.min(q))))
        });
        (count, oldest.map(instant_of))
    }

    /// Resolves once nothing is in flight here and every write has reached Redis: what is
    /// left is Redis's, for any node (retries due later included).
    /// From now on nothing new is taken (this node is shutting down).
    pub async fn settled_before(&self, _deadline: Instant) {
        self.draining.store(true, Ordering::Relaxed);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if lock(&self.in_flight).is_empty() && lock(&self.writes).is_empty() {
                return;
            }
            changed.await;
        }
    }

    /// Sends the queued writes, in order, one transaction at a time; keeps them while Redis
    /// does not take them; refreshes the pending count.
    async fn writer(self: Arc<Self>) {
        let mut conn: Option<ConnectionManager> = None;
        let mut stats_at = Instant::now();
        loop {
            let wake = self.wake_writer.notified();
            if lock(&self.writes).is_empty() {
                tokio::select! {
                    () = wake => {}
                    () = tokio::time::sleep_until(stats_at) => {}
                    () = self.stop.cancelled() => return,
                }
            }
            if self.stop.is_cancelled() {
                return;
            }
            let c = match conn.clone() {
                Some(c) => c,
                None => match self.connect(Duration::ZERO).await {
                    Ok(c) => {
                        conn = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        self.write_failed(&e).await;
                        continue;
                    }
                },
            };
            let (pipe, n) = self.batch();
            let written = match n {
                0 => Ok(()),
                _ => pipe.query_async::<()>(&mut c.clone()).await,
            };
            match written {
                Ok(()) => {
                    // `drop_all` may have taken them meanwhile.
                    let mut writes = lock(&self.writes);
                    let written = n.min(writes.len());
                    writes.drain(..written);
                    drop(writes);
                    if self.writer_failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("Redis takes webhooks again; those kept here are in it");
                    }
                    self.changed.notify_waiters();
                }
                Err(e) => {
                    if e.code() == Some("NOGROUP") {
                        conn = None;
                    }
                    self.write_failed(&e).await;
                    continue;
                }
            }
            if n > 0 || Instant::now() >= stats_at {
                if let Ok(stats) = self.read_stats(&mut c.clone()).await {
                    *lock(&self.stats) = stats;
                }
                stats_at = Instant::now() + STATS_EVERY;
            }
        }
    }

    async fn write_failed(&self, e: &redis::RedisError) {
        if !self.writer_failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %why(e),
                "cannot reach Redis: new webhooks wait in this process until it answers (lost if it stops first)");
        }
        metrics::counter!("qrlink_webhook_outbox_errors_total", "op" => "write").increment(1);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = self.stop.cancelled() => {}
        }
    }

    /// The first writes, as one transaction, and how many they are.
    fn batch(&self) -> (redis::Pipeline, usize) {
        let writes = lock(&self.writes);
        let mut pipe = redis::pipe();
        pipe.atomic();
        let n = writes.len().min(BATCH);
        for op in writes.iter().take(n) {
            match op {
                Op::Push {
                    wire,
                    id,
                    queued_ms,
                    ..
                } => {
                    pipe.cmd("XADD")
                        .arg(&self.stream)
                        .arg("*")
                        .arg("m")
                        .arg(wire)
                        .ignore();
                    pipe.cmd("ZADD")
                        .arg(&self.pending)
                        .arg(queued_ms)
                        .arg(&**id)
                        .ignore();
                }
                Op::Done { entry, id } => {
                    self.delete(&mut pipe, entry);
                    pipe.cmd("ZREM").arg(&self.pending).arg(&**id).ignore();
                }
                Op::Retry {
                    entry,
                    due_ms,
                    wire,
                } => {
                    self.delete(&mut pipe, entry);
                    pipe.cmd("ZADD")
                        .arg(&self.due)
                        .arg(due_ms)
                        .arg(wire)
                        .ignore();
                }
                Op::Drop { entry } => self.delete(&mut pipe, entry),
            }
        }
        (pipe, n)
    }

    /// Acknowledges an entry and deletes it: the stream keeps only what is pending.
    fn delete(&self, pipe: &mut redis::Pipeline, entry: &str) {
        pipe.cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(entry)
            .ignore();
        pipe.cmd("XDEL").arg(&self.stream).arg(entry).ignore();
    }

    async fn read_stats(
        &self,
        conn: &mut ConnectionManager,
    ) -> Result<(usize, Option<u64>), redis::RedisError> {
        let (count, oldest): (usize, Vec<String>) = redis::pipe()
            .cmd("ZCARD")
            .arg(&self.pending)
            .cmd("ZRANGE")
            .arg(&self.pending)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        // [member, score]
        let oldest = oldest.get(1).and_then(|s| s.parse::<f64>().ok());
        Ok((count, oldest.map(|at| at as u64)))
    }
}

/// How often a node looks for webhooks a dead node left pending.
fn claim_every(claim_idle: Duration) -> Duration {
    (claim_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

fn wire_of(msg: &Message, queued_ms: u64) -> String {
    serde_json::to_string(&Wire {
        id: msg.id.to_string(),
        event: msg.event.to_owned(),
        session: msg.session.to_string(),
        // Bodies are serde_json's output: UTF-8.
        body: String::from_utf8_lossy(&msg.body).into_owned(),
        queued_ms,
        attempts: msg.attempts,
    })
    .expect("webhook messages serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_scan_runs_often_enough_to_meet_the_idle_time_but_not_in_a_loop() {
        assert_eq!(claim_every(Duration::from_secs(20)), Duration::from_secs(5));
        assert_eq!(
            claim_every(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            claim_every(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn a_message_survives_the_wire_with_its_id_attempts_and_queue_time() {
        let msg = Message {
            id: "msg_1".into(),
            event: "link.expired",
            session: "ses_1".into(),
            body: Bytes::from_static(br#"{"type":"link.expired"}"#),
            queued: Instant::now(),
            attempts: 3,
        };
        let wire: Wire = serde_json::from_str(&wire_of(&msg, 1234)).unwrap();
        assert_eq!(
            (wire.id.as_str(), wire.attempts, wire.queued_ms),
            ("msg_1", 3, 1234)
        );
        assert_eq!(event_of(&wire.event), Some("link.expired"));
        assert_eq!(wire.body.as_bytes(), &msg.body[..]);
        assert_eq!(event_of("link.other"), None);
    }
}
