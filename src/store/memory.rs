//! The in-memory store: every session of this process in a DashMap, the watch events on a
//! broadcast channel, a grace timer per detached session.
//!
//! A session's resumable record (the last `qr` or `checkpoint` frame, the seq counter, where the
//! attempt stands, which socket holds it) sits behind one small mutex, taken once per frame and
//! at attach and detach, never across an await. A detached session keeps no socket and no
//! upstream request: its record, the QR string to render again on replay, and one sleeping timer
//! task (benches/README.md, "Resume", for what that costs).
//!
//! Every attached session pays for what resume keeps, so the record is kept small: one `Notify`
//! and two atomics instead of a cancellation token per cancel and per takeover (each a 100-byte
//! allocation), the last frame packed into one allocation, the resume secret inline, and the
//! attempt's cursor only while detached (an attached socket holds its own).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cluster::{Adopted, ClaimError, Cluster, WireLast};
use super::limits::Limits;
use super::stats::{NodeStats, Stats};
use super::{
    Outcome, Phase, ResumeRefused, Resumed, SessionInfo, StoreConfig, WATCH_BUFFER, WatchEvent,
};
use crate::link::protocol::{Envelope, QrFrame, ServerFrame, codes};

use crate::link::{self, Cursor, LinkRequest, QrFormats};
use crate::notify::{Ending, Notes, Notifier};
use crate::secret;

/// Random base62 characters of a resume secret: 24 of them, about 142 bits.
const RESUME_SECRET_LEN: usize = 24;

/// How long a frame waits for its record to reach Redis (cluster mode) before it goes anyway.
const WRITE_WAIT: Duration = Duration::from_millis(50);

/// How long a resume waits for the socket it takes over to let go of the session. That socket
/// only has to drop its attempt, which never waits on anything; this bounds a wedged task.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// The store's state.
#[derive(Debug)]
pub struct Memory {
    sessions: DashMap<String, Arc<Session>>,
    /// The number of open sessions, so callers can wait for a count instead of polling.
    count: watch::Sender<usize>,
    /// Session events for watchers; sending never blocks a link attempt.
    pub(super) events: broadcast::Sender<WatchEvent>,
    /// Admission limits (overall and per client address).
    pub(super) limits: Limits,
    /// How long a detached session waits; zero = resume off.
    grace: Duration,
    /// The gateway's socket tasks; the grace timers join them so shutdown waits for them too.
    tracker: TaskTracker,
    /// The gateway's shutdown: detached sessions end at once (in cluster mode they are left in
    /// Redis for another node).
    shutdown: CancellationToken,
    /// Cluster mode: what other nodes need of this node's sessions goes to Redis.
    pub(super) cluster: Option<Arc<Cluster>>,
    /// Told of every ending (webhooks).
    notifier: Notifier,
    /// This node's numbers for the dashboard.
    pub(super) stats: Stats,
}

/// One link attempt, attached to a socket or detached.
#[derive(Debug)]
pub struct Session {
    /// `ses_…`, also the `session` field of every frame.
    pub id: String,
    /// The provider being linked.
    pub provider: String,
    /// The client's address when the attempt started (after trusted-proxy resolution).
    pub client: SocketAddr,
    /// Wall-clock start, for snapshots.
    pub started_at: SystemTime,
    /// Monotonic start, for durations and the attempt's deadline.
    pub started: Instant,
    /// The secret half of the resume token (base62); `None` when resume is off.
    resume_secret: Option<[u8; RESUME_SECRET_LEN]>,
    /// QR codes shown so far.
    rotation: AtomicU32,
    /// A [`Phase`] as u8, so snapshots read it without a lock.
    phase: AtomicU8,
    /// Cancelled by an operator (`DELETE /api/sessions/{id}`).
    cancelled: AtomicBool,
    /// The ticket of the attachment asked to let go by a resume (takeover); 0 = none.
    evict: AtomicU32,
    /// Set once, by whatever ends the session first; unset at the end means `disconnected`.
    outcome: OnceLock<(Outcome, Option<String>)>,
    /// What a resume needs, and which socket holds the session.
    record: Mutex<Record>,
    /// Woken on every change someone may wait for: a cancel or a takeover (the attached socket
    /// waits), the socket letting go or the session ending (a resume waits).
    changed: Notify,
    /// What the frames said that the webhook tells (intent, account).
    notes: Notes,
}

/// A session's resumable state.
#[derive(Debug)]
struct Record {
    /// The last frame's `seq`.
    seq: u64,
    /// The last `qr` or `checkpoint` frame as sent, for a replay.
    last: Option<Last>,
    /// Where the attempt stood when its socket let go; taken by the next socket.
    cursor: Option<Box<Cursor>>,
    /// What the attempt links and how its QR is rendered.
    request: Arc<LinkRequest>,
    /// The attached socket's ticket; `None` while detached.
    holder: Option<u32>,
    /// The last ticket handed out.
    tickets: u32,
    /// The grace timer of a detached session.
    timer: Option<AbortHandle>,
    /// Cluster mode: the place in the node's write queue of the write that made the session
    /// known in Redis here (its opening, or its attaching after a resume). A frame waits for
    /// that write, not for its own record (see [`Attachment::written`]).
    known_at: u64,
}

/// The last `qr` or `checkpoint` frame as it was sent, without QR renderings: the session id
/// and token are the session's own.
#[derive(Debug)]
struct Last {
    seq: u64,
    frame: Kept,
}

#[derive(Debug)]
enum Kept {
    /// A `qr` frame: its intent id, `expires_at` and the string it encodes (rendered again on
    /// replay: a rendered SVG is 4–5 KB, the string 50–250 bytes), packed in one allocation.
    Qr {
        rotation: u32,
        intent_len: u32,
        expires_len: u32,
        has_code: bool,
        packed: Box<str>,
    },
    /// A `checkpoint` frame (rare, so boxed to keep the record small).
    Checkpoint(Box<ServerFrame>),
}

/// Why an attached socket must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// An operator cancelled the session.
    Cancelled,
    /// A resume took the session over.
    TakenOver,
}

/// A socket's hold on a session. Dropped without [`Attachment::end`] or
/// [`Attachment::detach`] (a panic), it ends the session.
#[derive(Debug)]
#[must_use = "the session ends when the attachment is dropped"]
pub struct Attachment {
    store: Arc<Memory>,
    session: Arc<Session>,
    /// This socket's ticket: a resume elsewhere asks it to let go by naming it.
    ticket: u32,
    settled: bool,
}

impl Memory {
    pub(super) fn new(
        config: StoreConfig,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        cluster: Option<Arc<Cluster>>,
    ) -> Memory {
        let limits = Limits::new(
            config.max_sessions,
            config.max_sessions_per_ip,
            config.sessions_per_ip_per_minute,
        );
        limits.spawn_sweeper(&tracker, shutdown.clone());
        Memory {
            sessions: DashMap::new(),
            count: watch::Sender::new(0),
            events: broadcast::Sender::new(WATCH_BUFFER),
            limits,
            grace: config.resume_grace,
            tracker,
            shutdown,
            cluster,
            notifier: config.notifier,
            stats: Stats::new(),
        }
    }

    /// Tells this node's watchers (and, in cluster mode, the other nodes') about an event;
    /// builds nothing when nobody can watch.
    fn publish(&self, event: impl FnOnce() -> WatchEvent) {
        match &self.cluster {
            Some(cluster) => {
                let event = event();
                cluster.published(&event);
                self.deliver(event);
            }
            None => {
                if self.events.receiver_count() > 0 {
                    let _ = self.events.send(event());
                }
            }
        }
    }

    /// Whether a watcher of this node is listening.
    pub(super) fn watched(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Hands an event to this node's watchers.
    pub(super) fn deliver(&self, event: WatchEvent) {
        if self.watched() {
            let _ = self.events.send(event);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// This node's dashboard stats as of now (named after its cluster node, or `node`).
    pub(super) fn stats_named(&self, node: &str) -> NodeStats {
        let name = self.cluster.as_ref().map_or(node, |c| c.node());
        self.stats.read(name, self.len() as u64)
    }

    /// This node's dashboard stats as other nodes see them (cluster mode).
    pub(super) fn stats(&self) -> NodeStats {
        self.stats_named("")
    }

    pub(super) fn detached(&self) -> usize {
        self.sessions
            .iter()
            .filter(|s| Phase::from_u8(s.phase.load(Ordering::Relaxed)) == Phase::Detached)
            .count()
    }

    pub(super) async fn wait_for_count(&self, pred: impl Fn(usize) -> bool) {
        let mut rx = self.count.subscribe();
        // Only fails if the sender is gone, and `self` holds it.
        let _ = rx.wait_for(|n| pred(*n)).await;
    }

    pub(super) fn open(
        store: &Arc<Memory>,
        client: SocketAddr,
        request: LinkRequest,
    ) -> Attachment {
        let session = Arc::new(Session {
            id: secret::random_base62("ses_", 20),
            provider: request.provider.clone(),
            client,
            started_at: SystemTime::now(),
            started: Instant::now(),
            resume_secret: (!store.grace.is_zero()).then(new_resume_secret),
            rotation: AtomicU32::new(0),
            phase: AtomicU8::new(Phase::Starting as u8),
            cancelled: AtomicBool::new(false),
            evict: AtomicU32::new(0),
            outcome: OnceLock::new(),
            record: Mutex::new(Record {
                seq: 0,
                last: None,
                cursor: None,
                request: Arc::new(request),
                holder: Some(1),
                tickets: 1,
                timer: None,
                known_at: 0,
            }),
            changed: Notify::new(),
            notes: Notes::default(),
        });
        store.sessions.insert(session.id.clone(), session.clone());
        store.count.send_modify(|n| *n += 1);
        metrics::gauge!("qrlink_sessions_active", "provider" => session.provider.clone())
            .increment(1.0);
        if let Some(cluster) = &store.cluster {
            let mut record = session.lock();
            record.known_at = cluster.opened(
                &session.id,
                session.client,
                session.started_at,
                session.resume_secret.as_ref().map(|s| &s[..]),
                &record.request,
            );
        }
        store.publish(|| WatchEvent::Opened {
            session: session.id.clone(),
            provider: session.provider.clone(),
            client: session.client.ip().to_string(),
            at: rfc3339(session.started_at),
            node: store.cluster.as_ref().map(|c| c.node().to_owned()),
        });
        Attachment {
            store: store.clone(),
            session,
            ticket: 1,
            settled: false,
        }
    }

    pub(super) async fn resume(
        store: &Arc<Memory>,
        token: &str,
        provider: &str,
        formats: Option<QrFormats>,
    ) -> Result<Resumed, ResumeRefused> {
        let refused = |reason: ResumeRefused| {
            let label = match reason {
                ResumeRefused::Expired => "expired",
                ResumeRefused::WrongProvider => "wrong_provider",
                ResumeRefused::Busy => "busy",
            };
            metrics::counter!("qrlink_resume_refused_total", "reason" => label).increment(1);
            reason
        };
        let (id, secret) =
            parse_resume_token(token).ok_or_else(|| refused(ResumeRefused::Expired))?;
        let local = store.sessions.get(id).map(|s| s.clone());
        let session = match (local, &store.cluster) {
            (Some(session), _) => session,
            (None, Some(cluster)) => match cluster.claim(id, secret.as_bytes(), provider).await {
                Ok(adopted) => Memory::adopt(store, id, secret, adopted),
                Err(ClaimError::WrongProvider) => {
                    return Err(refused(ResumeRefused::WrongProvider));
                }
                Err(ClaimError::Busy) => return Err(refused(ResumeRefused::Busy)),
                Err(ClaimError::Unknown | ClaimError::Unavailable) => {
                    return Err(refused(ResumeRefused::Expired));
                }
            },
            (None, None) => return Err(refused(ResumeRefused::Expired)),
        };
        let matches = session
            .resume_secret
            .as_ref()
            .is_some_and(|s| secret::constant_time_eq(s, secret.as_bytes()));
        if !matches {
            return Err(refused(ResumeRefused::Expired));
        }
        if session.provider != provider {
            return Err(refused(ResumeRefused::WrongProvider));
        }
        let mut took_over = false;
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        let (replay, ticket) = loop {
            let released = session.changed.notified();
            tokio::pin!(released);
            // Registered before the record is looked at, so a release in between is not missed.
            released.as_mut().enable();
            {
                let mut record = session.lock();
                if session.outcome.get().is_some() || !store.sessions.contains_key(id) {
                    return Err(refused(ResumeRefused::Expired));
                }
                match record.holder {
                    None => {
                        let Some(replay) = record.replay(&session.id, formats, token) else {
                            return Err(refused(ResumeRefused::Expired));
                        };
                        // Never 0, which means "nobody" in `evict`.
                        record.tickets = record.tickets.checked_add(1).unwrap_or(1);
                        let ticket = record.tickets;
                        record.holder = Some(ticket);
                        session.evict.store(0, Ordering::Release);
                        if let Some(f) = formats {
                            let mut request = (*record.request).clone();
                            request.formats = f;
                            record.request = Arc::new(request);
                        }
                        if let Some(timer) = record.timer.take() {
                            timer.abort();
                            metrics::gauge!("qrlink_sessions_detached").decrement(1.0);
                        }
                        session.set_phase(match replay.frame {
                            ServerFrame::Checkpoint { .. } => Phase::Checkpoint,
                            _ => Phase::Qr,
                        });
                        break (replay, ticket);
                    }
                    Some(current) => {
                        // Asked once: the wake-up would otherwise wake this loop too, forever.
                        if session.evict.swap(current, Ordering::AcqRel) != current {
                            session.changed.notify_waiters();
                        }
                        took_over = true;
                    }
                }
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(refused(ResumeRefused::Busy));
            }
        };
        metrics::counter!("qrlink_resumes_total").increment(1);
        if let Some(cluster) = &store.cluster {
            session.lock().known_at = cluster.attached(&session.id);
        }
        if took_over {
            metrics::counter!("qrlink_takeovers_total").increment(1);
        }
        store.publish(|| WatchEvent::Resumed {
            session: session.id.clone(),
            at: rfc3339(SystemTime::now()),
        });
        Ok(Resumed {
            attachment: Attachment {
                store: store.clone(),
                session,
                ticket,
                settled: false,
            },
            replay,
        })
    }

    pub(super) fn cancel(&self, id: &str) -> bool {
        match self.sessions.get(id) {
            Some(s) => {
                s.cancelled.store(true, Ordering::Release);
                s.changed.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// Makes a session claimed from Redis (another node's, or a dead node's) one of this
    /// node's, detached, so that the resume that claimed it attaches it as any other.
    fn adopt(store: &Arc<Memory>, id: &str, secret: &str, adopted: Adopted) -> Arc<Session> {
        let mut resume_secret = [0; RESUME_SECRET_LEN];
        let secret_ok = secret.len() == RESUME_SECRET_LEN;
        if secret_ok {
            resume_secret.copy_from_slice(secret.as_bytes());
        }
        let age = SystemTime::now()
            .duration_since(adopted.started_at)
            .unwrap_or_default();
        let last = adopted.last.and_then(Last::from_wire);
        let session = Arc::new(Session {
            id: id.to_owned(),
            provider: adopted.provider,
            client: adopted.client,
            started_at: adopted.started_at,
            started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            resume_secret: secret_ok.then_some(resume_secret),
            rotation: AtomicU32::new(adopted.rotation),
            phase: AtomicU8::new(Phase::Detached as u8),
            cancelled: AtomicBool::new(false),
            evict: AtomicU32::new(0),
            outcome: OnceLock::new(),
            record: Mutex::new(Record {
                seq: adopted.seq,
                last,
                cursor: Some(Box::new(adopted.cursor)),
                request: Arc::new(adopted.request),
                holder: None,
                tickets: 0,
                timer: None,
                known_at: 0,
            }),
            changed: Notify::new(),
            // Its first `qr` went out on another node: the intent comes with the record.
            notes: Notes::with_intent(adopted.intent.as_deref()),
        });
        // A resume racing this one on this node for the same session finds it here.
        let entry = store.sessions.entry(id.to_owned()).or_insert_with(|| {
            store.count.send_modify(|n| *n += 1);
            metrics::gauge!("qrlink_sessions_active", "provider" => session.provider.clone())
                .increment(1.0);
            session.clone()
        });
        entry.clone()
    }

    /// Another node resumes session `id`: its socket here (if any) lets go, its cursor goes to
    /// Redis, and this node forgets it without ending it.
    pub(super) async fn hand_off(store: &Arc<Memory>, id: &str) {
        let Some(session) = store.sessions.get(id).map(|s| s.clone()) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            let changed = session.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match session.lock().holder {
                None => break,
                Some(current) => {
                    if session.evict.swap(current, Ordering::AcqRel) != current {
                        session.changed.notify_waiters();
                    }
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
        metrics::counter!("qrlink_takeovers_total").increment(1);
        store.forget(&session);
    }

    /// Counts a session removed from the registry. When none is left, the registry gives back
    /// the room of its high-water mark (a burst of 54,000 sessions held detached kept about
    /// 2 MiB of empty table; benches/README.md "Churn").
    fn count_one_less(&self) {
        let mut empty = false;
        self.count.send_modify(|n| {
            *n -= 1;
            empty = *n == 0;
        });
        if empty {
            self.sessions.shrink_to_fit();
        }
    }

    /// Takes a session off this node without ending it: another node has it now (or will,
    /// from Redis, after this node shuts down).
    fn forget(&self, session: &Session) {
        if self.sessions.remove(&session.id).is_none() {
            return;
        }
        self.count_one_less();
        metrics::gauge!("qrlink_sessions_active", "provider" => session.provider.clone())
            .decrement(1.0);
        if let Some(timer) = session.lock().timer.take() {
            timer.abort();
            metrics::gauge!("qrlink_sessions_detached").decrement(1.0);
        }
        session.changed.notify_waiters();
    }

    pub(super) fn snapshot(&self) -> Vec<SessionInfo> {
        let node = self.cluster.as_ref().map(|c| c.node().to_owned());
        let mut all: Vec<SessionInfo> = self
            .sessions
            .iter()
            .map(|s| SessionInfo {
                node: node.clone(),
                ..s.info()
            })
            .collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.age_ms));
        all
    }

    /// Keeps a session whose socket let go for the grace, or ends it when it cannot be resumed
    /// (resume off, nothing shown yet to resume, an outcome already set, shutting down).
    fn detach(store: &Arc<Memory>, session: &Arc<Session>, cursor: Cursor) {
        {
            let mut record = session.lock();
            record.holder = None;
            let could_resume = session.resume_secret.is_some()
                && record.last.is_some()
                && session.outcome.get().is_none();
            if let (true, true, Some(cluster)) =
                (could_resume, store.shutdown.is_cancelled(), &store.cluster)
            {
                // Shutting down in cluster mode: the page resumes on another node, from Redis.
                cluster.detached(&session.id, &cursor);
                drop(record);
                store.forget(session);
                return;
            }
            let resumable = could_resume && !store.shutdown.is_cancelled();
            if resumable {
                if let Some(cluster) = &store.cluster {
                    cluster.detached(&session.id, &cursor);
                }
                record.cursor = Some(Box::new(cursor));
                session.set_phase(Phase::Detached);
                record.timer = Some(Memory::start_grace(store, session));
                metrics::gauge!("qrlink_sessions_detached").increment(1.0);
            }
            drop(record);
            if !resumable {
                store.end(session);
                return;
            }
        }
        session.changed.notify_waiters();
        store.publish(|| WatchEvent::Detached {
            session: session.id.clone(),
            at: rfc3339(SystemTime::now()),
        });
    }

    /// The grace timer of a detached session: it ends the session as `disconnected` when the
    /// grace passes, at once when an operator cancels it or the gateway shuts down. A resume
    /// aborts it.
    fn start_grace(store: &Arc<Memory>, session: &Arc<Session>) -> AbortHandle {
        let (tracker, grace) = (store.tracker.clone(), store.grace);
        let (store, session) = (store.clone(), session.clone());
        let timer = tracker.spawn(async move {
            let outcome = tokio::select! {
                () = tokio::time::sleep(grace) => Outcome::Disconnected,
                () = session.cancelled() => Outcome::Cancelled,
                () = store.shutdown.cancelled() => Outcome::Shutdown,
            };
            {
                let mut record = session.lock();
                // A resume that won the race attached it; it is not ours to end.
                if record.holder.is_some() || record.timer.take().is_none() {
                    return;
                }
            }
            metrics::gauge!("qrlink_sessions_detached").decrement(1.0);
            if outcome == Outcome::Disconnected {
                metrics::counter!("qrlink_resume_expiries_total").increment(1);
            }
            session.set_outcome(outcome, None);
            store.end(&session);
        });
        timer.abort_handle()
    }

    /// Reports the end of a session that a gone node had (cluster mode, taken from Redis by
    /// [`super::cluster`]): `disconnected` when nobody resumed it within the grace, as a
    /// detached session's grace ends here, or `cancelled` by an operator; to the watchers and
    /// the webhook.
    pub(super) fn ended_on_a_gone_node(
        &self,
        id: &str,
        outcome: Outcome,
        provider: &str,
        state: Option<&str>,
        intent_id: Option<&str>,
        started_at: std::time::SystemTime,
    ) {
        if outcome == Outcome::Disconnected {
            metrics::counter!("qrlink_resume_expiries_total").increment(1);
        }
        let notes = crate::notify::event::Notes::with_intent(intent_id);
        let duration = started_at.elapsed().unwrap_or_default();
        self.report_end(id, provider, state, &notes, (outcome, None), duration);
    }

    /// Counts an ended session and tells the webhook and the watchers how it ended (for this
    /// node's sessions, [`Memory::end`]; for a gone node's, [`Memory::ended_on_a_gone_node`]).
    fn report_end(
        &self,
        id: &str,
        provider: &str,
        state: Option<&str>,
        notes: &Notes,
        (outcome, code): (Outcome, Option<String>),
        duration: Duration,
    ) {
        metrics::counter!("qrlink_sessions_ended_total",
            "provider" => provider.to_owned(), "outcome" => outcome.as_str())
        .increment(1);
        super::tell_outbox(&self.notifier, outcome, code.as_deref(), |kind| Ending {
            session: id,
            provider,
            state,
            kind,
            duration,
            notes,
        });
        self.publish(|| WatchEvent::Closed {
            session: id.to_owned(),
            outcome,
            duration_ms: duration.as_millis() as u64,
            code,
        });
    }

    /// Removes a session and tells watchers how it ended.
    fn end(&self, session: &Session) {
        if self.sessions.remove(&session.id).is_none() {
            return;
        }
        self.count_one_less();
        if let Some(cluster) = &self.cluster {
            cluster.ended(&session.id);
        }
        let (outcome, code) = session
            .outcome
            .get_or_init(|| (Outcome::Disconnected, None))
            .clone();
        metrics::gauge!("qrlink_sessions_active", "provider" => session.provider.clone())
            .decrement(1.0);
        // A resume waiting on this session finds it ended.
        session.changed.notify_waiters();
        let duration = session.started.elapsed();
        self.stats.ended(outcome, duration);
        let request = session.lock().request.clone();
        self.report_end(
            &session.id,
            &session.provider,
            request.state.as_deref(),
            &session.notes,
            (outcome, code),
            duration,
        );
    }
}

impl Record {
    /// The last `qr` or `checkpoint` frame as it was sent, for a socket that resumes with
    /// `formats` (default: the session's): the QR rendered again, `replay` and the token set.
    fn replay(&self, id: &str, formats: Option<QrFormats>, token: &str) -> Option<Envelope> {
        let last = self.last.as_ref()?;
        let frame = match &last.frame {
            Kept::Checkpoint(frame) => (**frame).clone(),
            Kept::Qr { rotation, .. } => {
                let (intent_id, expires_at, qrcode) = last.frame.qr_parts()?;
                let mut q = QrFrame {
                    rotation: *rotation,
                    intent_id: intent_id.to_owned(),
                    expires_at: expires_at.to_owned(),
                    svg: None,
                    text: None,
                    raw: None,
                };
                if let Some(qrcode) = qrcode {
                    let formats = formats.unwrap_or(self.request.formats);
                    // It rendered when it was first sent; the same string renders the same way.
                    link::render_qr(&mut q, qrcode, formats).ok()?;
                }
                ServerFrame::Qr(q)
            }
        };
        let mut env = Envelope::new(id, last.seq, frame);
        env.replay = true;
        env.resume = Some(token.to_owned());
        Some(env)
    }
}

impl Last {
    /// A last frame read back from Redis.
    fn from_wire(wire: WireLast) -> Option<Last> {
        match wire {
            WireLast::Qr {
                seq,
                rotation,
                intent_id,
                expires_at,
                qrcode,
            } => {
                let frame = ServerFrame::Qr(QrFrame {
                    rotation,
                    intent_id,
                    expires_at,
                    svg: None,
                    text: None,
                    raw: None,
                });
                Some(Last {
                    seq,
                    frame: Kept::of(&frame, qrcode)?,
                })
            }
            WireLast::Checkpoint { seq, frame } => Some(Last {
                seq,
                frame: Kept::of(&frame, None)?,
            }),
        }
    }
}

impl Kept {
    /// The frame to keep of `frame` (with `qrcode`, the string a `qr` frame encodes); `None`
    /// for frames a resume does not replay.
    fn of(frame: &ServerFrame, qrcode: Option<String>) -> Option<Kept> {
        match frame {
            ServerFrame::Qr(q) => {
                let code = qrcode.as_deref().unwrap_or("");
                let mut packed =
                    String::with_capacity(q.intent_id.len() + q.expires_at.len() + code.len());
                packed.push_str(&q.intent_id);
                packed.push_str(&q.expires_at);
                packed.push_str(code);
                Some(Kept::Qr {
                    rotation: q.rotation,
                    intent_len: u32::try_from(q.intent_id.len()).ok()?,
                    expires_len: u32::try_from(q.expires_at.len()).ok()?,
                    has_code: qrcode.is_some(),
                    packed: packed.into_boxed_str(),
                })
            }
            ServerFrame::Checkpoint { .. } => Some(Kept::Checkpoint(Box::new(frame.clone()))),
            _ => None,
        }
    }

    /// A kept `qr` frame's intent id, `expires_at` and encoded string.
    fn qr_parts(&self) -> Option<(&str, &str, Option<&str>)> {
        let Kept::Qr {
            intent_len,
            expires_len,
            has_code,
            packed,
            ..
        } = self
        else {
            return None;
        };
        let (intent_id, rest) = packed.split_at_checked(*intent_len as usize)?;
        let (expires_at, code) = rest.split_at_checked(*expires_len as usize)?;
        Some((intent_id, expires_at, has_code.then_some(code)))
    }
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, Record> {
        // A panic while holding it leaves the record as consistent as any single field write.
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an operator cancelled the session.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Resolves once an operator cancels the session.
    pub async fn cancelled(&self) {
        self.wait_until(Session::is_cancelled).await;
    }

    /// Resolves once `done` holds; it is looked at again after every change announced on
    /// `changed`, having registered for the next one first, so none is missed.
    async fn wait_until(&self, done: impl Fn(&Session) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return;
            }
            changed.await;
        }
    }

    /// Records a state change.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Records how the session ends; the first call wins.
    pub fn set_outcome(&self, outcome: Outcome, code: Option<String>) {
        let _ = self.outcome.set((outcome, code));
    }

    /// Updates phase, rotation, outcome and metrics from a frame about to be sent.
    fn note_frame(&self, frame: &ServerFrame) {
        match frame {
            ServerFrame::Qr(q) => {
                self.set_phase(Phase::Qr);
                self.rotation.store(q.rotation, Ordering::Relaxed);
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
                    codes::CANCELLED => self.set_outcome(Outcome::Cancelled, None),
                    codes::SHUTTING_DOWN => self.set_outcome(Outcome::Shutdown, None),
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
            started_at: rfc3339(self.started_at),
            age_ms: self.started.elapsed().as_millis() as u64,
            client: self.client.ip().to_string(),
            node: None,
        }
    }
}

impl std::ops::Deref for Attachment {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl Attachment {
    /// What the attempt links and how it renders (the formats of the latest socket).
    pub fn request(&self) -> Arc<LinkRequest> {
        self.session.lock().request.clone()
    }

    /// Where the attempt stands: where this socket's attempt picks up (taken: the socket keeps
    /// it current and hands it back on [`Attachment::detach`]).
    pub fn cursor(&self) -> Cursor {
        self.session
            .lock()
            .cursor
            .take()
            .map(|c| *c)
            .unwrap_or_default()
    }

    /// Resolves when this socket must stop: an operator cancelled the session, or a resume
    /// elsewhere took it over. Cancel-safe; one waiter registration for both.
    pub async fn interrupted(&self) -> Interrupt {
        let ticket = self.ticket;
        self.session
            .wait_until(|s| s.is_cancelled() || s.evict.load(Ordering::Acquire) == ticket)
            .await;
        if self.session.is_cancelled() {
            Interrupt::Cancelled
        } else {
            Interrupt::TakenOver
        }
    }

    /// Numbers a frame about to be sent and records what it means: phase, outcome, metrics,
    /// and, for `qr` and `checkpoint` while resume is on, the frame a resume replays. A `qr`
    /// frame comes with the string it encodes in `raw`; it is kept for the replay and taken off
    /// the frame unless this socket asked for `raw`. Returns the frame with its resume token.
    pub fn record(&self, mut frame: ServerFrame) -> Envelope {
        self.session.note_frame(&frame);
        // Without webhooks nothing reads the notes: no intent id kept per session.
        if self.store.notifier.enabled() {
            self.session.notes.note(&frame);
        }
        let mut record = self.session.lock();
        let qrcode = match &mut frame {
            ServerFrame::Qr(q) if record.request.formats.raw => q.raw.clone(),
            ServerFrame::Qr(q) => q.raw.take(),
            _ => None,
        };
        record.seq += 1;
        let mut env = Envelope::new(self.session.id.clone(), record.seq, frame);
        // A terminal frame is not written: the session's end, right after it, deletes the hash.
        if let Some(cluster) = self
            .store
            .cluster
            .as_ref()
            .filter(|_| !env.frame.is_terminal())
        {
            let wire = self
                .session
                .resume_secret
                .is_some()
                .then(|| WireLast::of(&env.frame, env.seq, qrcode.as_deref()))
                .flatten();
            cluster.recorded(
                &self.session.id,
                env.seq,
                self.session.rotation.load(Ordering::Relaxed),
                Phase::from_u8(self.session.phase.load(Ordering::Relaxed)),
                wire,
            );
        }
        if let Some(secret) = &self.session.resume_secret {
            // Without its renderings: the frame whole would keep the 4–5 KB SVG.
            if let Some(kept) = Kept::of(&env.frame, qrcode) {
                record.last = Some(Last {
                    seq: env.seq,
                    frame: kept,
                });
                let secret = std::str::from_utf8(secret).unwrap_or_default();
                env.resume = Some(format!("{}.{secret}", self.session.id));
            }
        }
        env
    }

    /// Cluster mode: waits until Redis knows this session here (its opening, or its attaching
    /// after a resume, is written), at most [`WRITE_WAIT`]; at once otherwise, and at once in
    /// the steady state: that write left long before the first QR came back from upstream.
    ///
    /// A frame does not wait for its own record. A resume on another node while this node is
    /// alive asks it to hand the session over, and the handover's writes (after the record,
    /// in queue order) come before its ack, so that node reads the latest; only a node killed
    /// within the moment between a frame and its record (about a millisecond; the writes'
    /// round trip) leaves the frame before it to replay. Waiting for every record put a Redis
    /// round trip in front of every frame (first-QR p50 about 9 ms at 2,100 attempts/s on
    /// three nodes: benches/README "Cluster").
    pub async fn written(&self) {
        if let Some(cluster) = &self.store.cluster {
            let known_at = self.session.lock().known_at;
            cluster.flush_to(known_at, WRITE_WAIT).await;
        }
    }

    /// Publishes a frame just sent to watchers, without its resume token; builds nothing when
    /// nobody watches.
    pub fn publish_frame(&self, env: Envelope) {
        self.store.publish(|| {
            let mut env = env;
            env.resume = None;
            WatchEvent::Frame(Arc::new(env))
        });
    }

    /// This socket lets go without ending the attempt: the session waits for a resume for the
    /// grace (or ends now when it cannot be resumed). `cursor` is where the attempt stood.
    pub fn detach(mut self, cursor: Cursor) {
        self.settled = true;
        Memory::detach(&self.store, &self.session, cursor);
    }

    /// Ends the session with the outcome its frames set (`disconnected` when none did).
    pub fn end(mut self) {
        self.settled = true;
        self.store.end(&self.session);
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.settled {
            self.store.end(&self.session);
        }
    }
}

/// Splits a resume token `ses_….<secret>` into the session id and the secret; `None` for
/// anything not of that shape, which no session can match. Checked before the lookup so that
/// garbage never reaches the directory; whether the secret is right is the caller's constant-time
/// comparison.
fn parse_resume_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    (id.starts_with("ses_") && !secret.is_empty()).then_some((id, secret))
}

/// A new resume secret: base62, so its bytes are ASCII.
fn new_resume_secret() -> [u8; RESUME_SECRET_LEN] {
    let mut out = [0; RESUME_SECRET_LEN];
    out.copy_from_slice(secret::random_base62("", RESUME_SECRET_LEN).as_bytes());
    out
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Resume;
    use crate::store::Store;

    fn addr() -> SocketAddr {
        "127.0.0.1:1234".parse().unwrap()
    }

    fn store(grace: Duration) -> Store {
        Store::memory(
            StoreConfig {
                resume_grace: grace,
                max_sessions: 100,
                max_sessions_per_ip: 100,
                sessions_per_ip_per_minute: 100,
                notifier: Notifier::disabled(),
            },
            TaskTracker::new(),
            CancellationToken::new(),
        )
    }

    fn request(provider: &str) -> LinkRequest {
        LinkRequest {
            provider: provider.into(),
            account_id: None,
            state: None,
            proxy: None,
            formats: QrFormats::default(),
            qr_ttl: Duration::from_secs(60),
        }
    }

    fn qr(rotation: u32) -> ServerFrame {
        ServerFrame::Qr(QrFrame {
            rotation,
            intent_id: "acc_1".into(),
            expires_at: "2026-11-28T10:00:00.000Z".into(),
            svg: Some("<svg/>".into()),
            text: None,
            raw: Some("2@payload".into()),
        })
    }

    fn poll_cursor(rotation: u32) -> Cursor {
        Cursor {
            rotation,
            next: Resume::Poll {
                intent_id: "acc_1".into(),
                shown: None,
            },
        }
    }

    #[tokio::test]
    async fn an_ended_attachment_removes_its_session() {
        let store = store(Duration::ZERO);
        let a = store.open(addr(), request("whatsapp"));
        assert_eq!(store.len(), 1);
        assert!(a.id.starts_with("ses_") && a.id.len() == 24);
        assert_eq!(store.snapshot()[0].provider, "whatsapp");
        a.end();
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_attachment_ends_its_session_as_disconnected() {
        let store = store(Duration::from_secs(60));
        let mut rx = store.subscribe();
        drop(store.open(addr(), request("telegram")));
        assert!(store.is_empty());
        let _opened = rx.try_recv().unwrap();
        assert!(matches!(
            rx.try_recv().unwrap(),
            WatchEvent::Closed {
                outcome: Outcome::Disconnected,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn cancel_reaches_the_session_token() {
        let store = store(Duration::ZERO);
        let a = store.open(addr(), request("telegram"));
        assert!(!a.is_cancelled());
        assert!(store.cancel(&a.id).await);
        assert!(a.is_cancelled());
        assert_eq!(a.interrupted().await, Interrupt::Cancelled);
        assert!(!store.cancel("ses_nope").await);
    }

    #[tokio::test]
    async fn watchers_see_opened_then_closed_with_the_outcome() {
        let store = store(Duration::ZERO);
        let mut rx = store.subscribe();
        let a = store.open(addr(), request("whatsapp"));
        let id = a.id.clone();
        let _ = a.record(ServerFrame::Timeout { rotations: 2 });
        a.end();
        match rx.try_recv().unwrap() {
            WatchEvent::Opened { session, .. } => assert_eq!(session, id),
            other => panic!("expected opened, got {other:?}"),
        }
        match rx.try_recv().unwrap() {
            WatchEvent::Closed { outcome, .. } => assert_eq!(outcome, Outcome::Timeout),
            other => panic!("expected closed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn snapshot_reports_phase_and_rotation() {
        let store = store(Duration::ZERO);
        let a = store.open(addr(), request("whatsapp"));
        let _ = a.record(qr(3));
        let info = &store.snapshot()[0];
        assert_eq!((info.phase, info.rotation), (Phase::Qr, 3));
    }

    #[tokio::test]
    async fn without_a_grace_frames_carry_no_token_and_a_detach_ends_the_session() {
        let store = store(Duration::ZERO);
        let a = store.open(addr(), request("whatsapp"));
        let env = a.record(qr(1));
        assert_eq!(env.resume, None);
        assert_eq!(env.frame, {
            let mut f = qr(1);
            if let ServerFrame::Qr(q) = &mut f {
                q.raw = None;
            }
            f
        });
        a.detach(poll_cursor(1));
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn a_detached_session_resumes_with_its_last_frame_replayed() {
        let store = store(Duration::from_secs(60));
        let a = store.open(addr(), request("whatsapp"));
        let first = a.record(qr(1));
        let token = first.resume.clone().expect("a resume token");
        let (id, secret) = token.split_once('.').unwrap();
        assert_eq!(id, a.id);
        assert!(secret.len() >= 22, "at least 128 bits: {token}");
        a.detach(poll_cursor(1));
        assert_eq!(store.snapshot()[0].phase, Phase::Detached);
        assert_eq!(store.detached(), 1);

        let resumed = store.resume(&token, "whatsapp", None).await.unwrap();
        let replay = resumed.replay;
        assert!(replay.replay);
        assert_eq!((replay.seq, &replay.session), (1, &first.session));
        match &replay.frame {
            ServerFrame::Qr(q) => {
                assert_eq!(q.rotation, 1);
                assert!(q.svg.as_deref().is_some_and(|s| s.starts_with("<svg")));
                assert_eq!(q.raw, None, "raw only when asked for");
            }
            other => panic!("expected the qr, got {other:?}"),
        }
        assert_eq!(resumed.attachment.cursor(), poll_cursor(1));
        assert_eq!(store.detached(), 0);
        let next = resumed.attachment.record(qr(2));
        assert_eq!(next.seq, 2, "seq goes on");
        resumed.attachment.end();
    }

    #[tokio::test]
    async fn a_resume_that_works_counts_one_resume_and_no_refusal() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // This test's runtime is this thread: every metric below lands in `recorder`.
        let _local = metrics::set_default_local_recorder(&recorder);
        let store = store(Duration::from_secs(60));
        let a = store.open(addr(), request("whatsapp"));
        let token = a.record(qr(1)).resume.unwrap();
        a.detach(poll_cursor(1));
        store
            .resume(&token, "whatsapp", None)
            .await
            .unwrap()
            .attachment
            .end();
        let _ = store.resume("ses_nope.secret", "whatsapp", None).await;
        let text = handle.render();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        assert_eq!(value("qrlink_resumes_total "), 1.0, "{text}");
        assert_eq!(
            value("qrlink_resume_refused_total{reason=\"expired\"} "),
            1.0,
            "only the unknown token is a refusal: {text}"
        );
    }

    #[tokio::test]
    async fn wrong_unknown_and_foreign_tokens_are_refused_and_leave_the_session() {
        let store = store(Duration::from_secs(60));
        let a = store.open(addr(), request("whatsapp"));
        let token = a.record(qr(1)).resume.unwrap();
        a.detach(poll_cursor(1));
        let forged = format!("{}x", token);
        for bad in ["", "nodot", "ses_unknown.secret", forged.as_str()] {
            assert_eq!(
                store.resume(bad, "whatsapp", None).await.unwrap_err(),
                ResumeRefused::Expired,
                "{bad}"
            );
        }
        assert_eq!(
            store.resume(&token, "telegram", None).await.unwrap_err(),
            ResumeRefused::WrongProvider
        );
        let resumed = store.resume(&token, "whatsapp", None).await.unwrap();
        resumed.attachment.end();
        assert_eq!(
            store.resume(&token, "whatsapp", None).await.unwrap_err(),
            ResumeRefused::Expired,
            "an ended session"
        );
    }

    #[tokio::test]
    async fn a_resume_takes_over_an_attached_socket_once_it_lets_go() {
        let store = store(Duration::from_secs(60));
        let a = store.open(addr(), request("whatsapp"));
        let token = a.record(qr(1)).resume.unwrap();
        let resuming = tokio::spawn({
            let store = store.clone();
            async move { store.resume(&token, "whatsapp", None).await }
        });
        assert_eq!(a.interrupted().await, Interrupt::TakenOver);
        a.detach(poll_cursor(1));
        let resumed = resuming.await.unwrap().unwrap();
        // The new socket is not asked to stop, and picks up where the old one let go.
        let interrupted = resumed.attachment.interrupted();
        assert_eq!(futures_util::FutureExt::now_or_never(interrupted), None);
        assert_eq!(resumed.attachment.cursor(), poll_cursor(1));
        assert_eq!(store.len(), 1);
        resumed.attachment.end();
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_ends_a_detached_session_as_disconnected() {
        let store = store(Duration::from_secs(120));
        let mut rx = store.subscribe();
        let a = store.open(addr(), request("whatsapp"));
        let token = a.record(qr(1)).resume.unwrap();
        a.detach(poll_cursor(1));
        store.wait_for_count(|n| n == 0).await;
        let events: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(
            matches!(
                events.last(),
                Some(WatchEvent::Closed {
                    outcome: Outcome::Disconnected,
                    ..
                })
            ),
            "{events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, WatchEvent::Detached { .. }))
        );
        assert_eq!(
            store.resume(&token, "whatsapp", None).await.unwrap_err(),
            ResumeRefused::Expired
        );
    }

    #[tokio::test]
    async fn cancelling_a_detached_session_ends_it_at_once() {
        let store = store(Duration::from_secs(120));
        let mut rx = store.subscribe();
        let a = store.open(addr(), request("whatsapp"));
        let _ = a.record(qr(1));
        let id = a.id.clone();
        a.detach(poll_cursor(1));
        assert!(store.cancel(&id).await);
        store.wait_for_count(|n| n == 0).await;
        let closed = std::iter::from_fn(|| rx.try_recv().ok()).last();
        assert!(
            matches!(
                closed,
                Some(WatchEvent::Closed {
                    outcome: Outcome::Cancelled,
                    ..
                })
            ),
            "{closed:?}"
        );
    }

    #[tokio::test]
    async fn nothing_shown_yet_means_a_detach_ends_the_session() {
        let store = store(Duration::from_secs(60));
        let a = store.open(addr(), request("whatsapp"));
        a.detach(Cursor::default());
        assert!(store.is_empty());
    }
}

#[cfg(test)]
#[path = "memory_props.rs"]
mod props;
