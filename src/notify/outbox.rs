//! The outbox: webhooks waiting for their next attempt.
//!
//! [`Outbox`] is the seam between the deliverer and where pending webhooks live:
//! - [`Memory`] (one process): a queue ordered by due time in this process, so a restart loses
//!   what is pending (counted as `lost`, README "Tell your backend").
//! - [`RedisOutbox`] (cluster mode): a Redis Stream with a consumer group. `push` is XADD;
//!   `take` is XREADGROUP of new entries plus XAUTOCLAIM of those a dead node left pending;
//!   `settle` is XACK (and XDEL), or for a retry XACK and the entry in a sorted set by due time
//!   that a node moves back to the stream when it is due. The message's `id` (the
//!   `webhook-id`) travels in the entry, so every node retries under the same id.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use super::redis_outbox::{RedisOutbox, RedisOutboxConfig};

/// One webhook: its body and the id every attempt carries.
#[derive(Debug, Clone)]
pub struct Message {
    /// The `webhook-id`: the same on every attempt, so a receiver can drop a duplicate.
    pub id: Box<str>,
    /// The event `type` (`link.succeeded`, …), for metrics and the dashboard.
    pub event: &'static str,
    /// The session it tells about, for the dashboard.
    pub session: Box<str>,
    /// The JSON body, signed as is.
    pub body: Bytes,
    /// When the outcome was queued: the age of a pending delivery, and latency.
    pub queued: Instant,
    /// Attempts made so far.
    pub attempts: u32,
}

/// What became of a message taken from the outbox.
#[derive(Debug)]
pub enum Settle {
    /// Nothing more to do with it (delivered, given up, refused for good).
    Done,
    /// Try again at this time.
    RetryAt(Instant, Box<Message>),
}

/// Where pending webhooks wait. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Outbox {
    /// In this process's memory.
    Memory(std::sync::Arc<Memory>),
    /// In Redis, shared by every node (cluster mode).
    Redis(std::sync::Arc<RedisOutbox>),
}

impl Outbox {
    /// An empty in-memory outbox.
    pub fn memory() -> Outbox {
        Outbox::Memory(Default::default())
    }

    /// The outbox in Redis (cluster mode), its writer started.
    pub fn redis(config: &RedisOutboxConfig) -> Result<Outbox, String> {
        RedisOutbox::start(config).map(Outbox::Redis)
    }

    /// Where pending webhooks wait: `memory` or `redis`.
    pub fn name(&self) -> &'static str {
        match self {
            Outbox::Memory(_) => "memory",
            Outbox::Redis(_) => "redis",
        }
    }

    /// Queues a new webhook, due now.
    pub fn push(&self, msg: Message) {
        match self {
            Outbox::Memory(m) => m.push(Instant::now(), Box::new(msg)),
            Outbox::Redis(r) => r.push(msg),
        }
    }

    /// Waits for the next message that is due and takes it; it counts as pending, in flight,
    /// until [`Outbox::settle`]. `room`: how many the caller could start now (the Redis
    /// outbox reads no more than that at once, so none waits here that another node could send).
    pub async fn take(&self, room: usize) -> Box<Message> {
        match self {
            Outbox::Memory(m) => m.take().await,
            Outbox::Redis(r) => r.take(room).await,
        }
    }

    /// Settles a message [`Outbox::take`] gave out.
    pub fn settle(&self, id: &str, settle: Settle) {
        match self {
            Outbox::Memory(m) => m.settle(id, settle),
            Outbox::Redis(r) => r.settle(id, settle),
        }
    }

    /// Removes every message waiting for an attempt (not those in flight) and returns them.
    pub fn clear(&self) -> Vec<Message> {
        match self {
            Outbox::Memory(m) => m.clear(),
            Outbox::Redis(r) => r.clear(),
        }
    }

    /// Forgets every pending message this process holds, waiting or in flight (it stops
    /// delivering), and returns the events of those lost with it: all of them in memory; in
    /// Redis only those that never reached it (the rest wait there for another node).
    pub fn drop_all(&self) -> Vec<&'static str> {
        match self {
            Outbox::Memory(m) => m.drop_all(),
            Outbox::Redis(r) => r.drop_all(),
        }
    }

    /// Messages pending (waiting or in flight) and when the oldest was queued.
    pub fn pending(&self) -> (usize, Option<Instant>) {
        match self {
            Outbox::Memory(m) => m.pending(),
            Outbox::Redis(r) => r.pending(),
        }
    }

    /// Resolves once nothing is in flight and nothing waiting is due before `deadline` (in
    /// memory), or once nothing is in flight and every write reached Redis (in Redis: what
    /// waits there is for any node, whenever it is due).
    pub async fn settled_before(&self, deadline: Instant) {
        match self {
            Outbox::Memory(m) => m.settled_before(deadline).await,
            Outbox::Redis(r) => r.settled_before(deadline).await,
        }
    }
}

/// The in-memory outbox.
#[derive(Debug, Default)]
pub struct Memory {
    queue: Mutex<Queue>,
    /// Woken on every change: the deliverer waiting for a due message, a shutdown waiting for
    /// the outbox to settle.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: BinaryHeap<Due>,
    /// Messages taken and not settled yet: their queue time (for the oldest pending's age)
    /// and event (for counting them lost).
    in_flight: HashMap<Box<str>, (Instant, &'static str)>,
    /// Ties between equal due times go first in, first out.
    seq: u64,
}

#[derive(Debug)]
struct Due {
    at: Instant,
    seq: u64,
    msg: Box<Message>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest due must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl Memory {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every update is a single push, pop or insert: a panic cannot leave it half done.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, at: Instant, msg: Box<Message>) {
        {
            let mut q = self.lock();
            q.seq += 1;
            let seq = q.seq;
            q.waiting.push(Due { at, seq, msg });
        }
        self.changed.notify_waiters();
    }

    async fn take(&self) -> Box<Message> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the queue is looked at, so a push in between is not missed.
            changed.as_mut().enable();
            let next = {
                let mut q = self.lock();
                match q.waiting.peek().map(|d| d.at) {
                    Some(at) if at <= Instant::now() => {
                        let due = q.waiting.pop().expect("peeked");
                        q.in_flight
                            .insert(due.msg.id.clone(), (due.msg.queued, due.msg.event));
                        return due.msg;
                    }
                    next => next,
                }
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    fn settle(&self, id: &str, settle: Settle) {
        {
            let mut q = self.lock();
            q.in_flight.remove(id);
            if let Settle::RetryAt(at, msg) = settle {
                q.seq += 1;
                let seq = q.seq;
                q.waiting.push(Due { at, seq, msg });
            }
        }
        self.changed.notify_waiters();
    }

    fn clear(&self) -> Vec<Message> {
        let cleared = std::mem::take(&mut self.lock().waiting);
        self.changed.notify_waiters();
        cleared.into_iter().map(|d| *d.msg).collect()
    }

    fn drop_all(&self) -> Vec<&'static str> {
        let mut q = self.lock();
        let waiting = std::mem::take(&mut q.waiting);
        let in_flight = std::mem::take(&mut q.in_flight);
        drop(q);
        self.changed.notify_waiters();
        waiting
            .into_iter()
            .map(|d| d.msg.event)
            .chain(in_flight.into_values().map(|(_, event)| event))
            .collect()
    }

    fn pending(&self) -> (usize, Option<Instant>) {
        let q = self.lock();
        let oldest = q
            .waiting
            .iter()
            .map(|d| d.msg.queued)
            .chain(q.in_flight.values().map(|(queued, _)| *queued))
            .min();
        (q.waiting.len() + q.in_flight.len(), oldest)
    }

    async fn settled_before(&self, deadline: Instant) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let q = self.lock();
                let next_due = q.waiting.peek().map(|d| d.at);
                if q.in_flight.is_empty() && next_due.is_none_or(|at| at > deadline) {
                    return;
                }
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(id: &str) -> Message {
        Message {
            id: id.into(),
            event: "link.succeeded",
            session: "ses_1".into(),
            body: Bytes::from_static(b"{}"),
            queued: Instant::now(),
            attempts: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn messages_come_out_when_due_in_order_and_retries_wait_their_turn() {
        let outbox = Outbox::memory();
        outbox.push(msg("a"));
        outbox.push(msg("b"));
        let a = outbox.take(1).await;
        assert_eq!(&*a.id, "a");
        assert_eq!(outbox.pending().0, 2, "one waiting, one in flight");
        let later = Instant::now() + Duration::from_secs(5);
        outbox.settle("a", Settle::RetryAt(later, a));
        assert_eq!(&*outbox.take(1).await.id, "b");
        outbox.settle("b", Settle::Done);
        let start = Instant::now();
        let again = outbox.take(1).await;
        assert_eq!(&*again.id, "a");
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        outbox.settle("a", Settle::Done);
        assert_eq!(outbox.pending(), (0, None));
    }

    #[tokio::test(start_paused = true)]
    async fn settled_before_waits_for_what_is_in_flight_or_due_in_time() {
        let outbox = Outbox::memory();
        outbox.push(msg("a"));
        let a = outbox.take(1).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.settled_before(deadline).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a is in flight");
        // Due after the deadline: no reason to wait for it.
        outbox.settle("a", Settle::RetryAt(deadline + Duration::from_secs(1), a));
        waiting.await.unwrap();
        assert_eq!(outbox.clear().len(), 1);
        assert_eq!(outbox.pending(), (0, None));
    }
}
