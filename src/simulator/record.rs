//! What the simulator remembers for tests: every checkpoint call with its start, end and outcome
//! (hang-ups included), and every `/v2/auth/*` request body.
//!
//! A checkpoint handler holds a [`PollGuard`]; if hyper drops the handler because the caller
//! closed the connection, the guard's `Drop` records [`PollOutcome::HungUp`] at that instant.
//! That is how tests prove the gateway really aborts its upstream poll.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use serde_json::Value;
use tokio::sync::watch;

/// One call to `POST /v2/auth/checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PollRecord {
    /// The `intent_id` of the request body (empty when the body had none).
    pub intent_id: String,
    /// When the handler started. Serialized as Unix microseconds.
    #[serde(serialize_with = "instant_as_unix_micros")]
    pub started: Instant,
    /// When it answered or the caller hung up; `None` while pending. Serialized as Unix
    /// microseconds.
    #[serde(serialize_with = "option_instant_as_unix_micros")]
    pub ended: Option<Instant>,
    /// How it ended.
    pub outcome: PollOutcome,
}

/// How a checkpoint call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PollOutcome {
    /// Still waiting.
    Pending,
    /// The simulator produced a response.
    Answered {
        /// Its HTTP status.
        status: u16,
        /// The `object` of its body (`AuthenticationQrCode`, `Account`,
        /// `AuthenticationCheckpoint`, `OauthUrl`), `Error:<type>` for Unipile errors (e.g.
        /// `Error:provider/timeout`), `Status` for a bare status fault, `Malformed` for a
        /// malformed-body fault.
        object: String,
    },
    /// The caller closed the connection before an answer was produced.
    HungUp,
}

/// One request received on `/v2/auth/*`, as the gateway sent it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    /// The path relative to the mount point, e.g. `/v2/auth/intent`.
    pub path: String,
    /// The JSON body; `Value::Null` when the body was not JSON.
    pub body: Value,
    /// Whether an `X-API-KEY` header was present (its value is never kept).
    pub has_api_key: bool,
}

/// The simulator's memory of calls.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// Every checkpoint call in start order; a watch channel so `wait_for_polls` wakes on each
    /// change instead of sleeping.
    polls: watch::Sender<Vec<PollRecord>>,
    /// Every `/v2/auth/*` request in arrival order.
    requests: Mutex<Vec<RecordedRequest>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            polls: watch::Sender::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        }
    }
}

impl Recorder {
    /// Remembers a request body.
    pub fn request(&self, request: RecordedRequest) {
        lock(&self.requests).push(request);
    }

    /// A copy of every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    /// Records a checkpoint call starting now; the returned index identifies it.
    pub fn start_poll(&self, intent_id: String) -> (usize, Instant) {
        let started = Instant::now();
        let mut index = 0;
        self.polls.send_modify(|polls| {
            index = polls.len();
            polls.push(PollRecord {
                intent_id,
                started,
                ended: None,
                outcome: PollOutcome::Pending,
            });
        });
        (index, started)
    }

    /// Ends poll `index` with `outcome`, unless it already ended.
    pub fn end_poll(&self, index: usize, outcome: PollOutcome) {
        let ended = Instant::now();
        self.polls
            .send_if_modified(|polls| match polls.get_mut(index) {
                Some(record) if record.outcome == PollOutcome::Pending => {
                    record.ended = Some(ended);
                    record.outcome = outcome;
                    true
                }
                _ => false,
            });
    }

    /// A copy of every poll record.
    pub fn polls(&self) -> Vec<PollRecord> {
        self.polls.borrow().clone()
    }

    /// The poll records of one intent.
    pub fn polls_of(&self, intent_id: &str) -> Vec<PollRecord> {
        self.polls
            .borrow()
            .iter()
            .filter(|p| p.intent_id == intent_id)
            .cloned()
            .collect()
    }

    /// Resolves once `pred` holds for the poll records; re-checks on every change.
    pub async fn wait_for_polls<F: Fn(&[PollRecord]) -> bool>(&self, pred: F) {
        let mut rx = self.polls.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|polls| pred(polls)).await;
    }
}

/// Owned by a checkpoint handler: records how the call ended, even when the handler is dropped.
#[must_use = "dropping the guard records the poll as hung up"]
pub(crate) struct PollGuard {
    recorder: Arc<Recorder>,
    index: usize,
    started: Instant,
}

impl PollGuard {
    /// Records a checkpoint call for `intent_id` starting now.
    pub fn start(recorder: Arc<Recorder>, intent_id: String) -> Self {
        let (index, started) = recorder.start_poll(intent_id);
        PollGuard {
            recorder,
            index,
            started,
        }
    }

    /// When the call started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Records the answer about to be sent.
    pub fn answered(&self, status: u16, object: String) {
        self.recorder
            .end_poll(self.index, PollOutcome::Answered { status, object });
    }
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        // A no-op when `answered` ran first: only a pending record becomes a hang-up.
        self.recorder.end_poll(self.index, PollOutcome::HungUp);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover the data anyway rather than cascade.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Converts an `Instant` to approximate Unix microseconds (Instants have no epoch).
pub(crate) fn unix_micros(at: Instant) -> u64 {
    let now_instant = Instant::now();
    let now_system = SystemTime::now();
    let system = if at <= now_instant {
        now_system.checked_sub(now_instant - at)
    } else {
        now_system.checked_add(at - now_instant)
    };
    system
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn instant_as_unix_micros<S: Serializer>(at: &Instant, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(unix_micros(*at))
}

fn option_instant_as_unix_micros<S: Serializer>(
    at: &Option<Instant>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_some(&unix_micros(*at)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_records_a_hang_up() {
        let recorder = Arc::new(Recorder::default());
        drop(PollGuard::start(recorder.clone(), "acc_1".to_owned()));
        let polls = recorder.polls();
        assert_eq!(polls.len(), 1);
        assert_eq!(polls[0].outcome, PollOutcome::HungUp);
        assert!(polls[0].ended.is_some());
    }

    #[test]
    fn an_answered_guard_is_not_a_hang_up_when_dropped() {
        let recorder = Arc::new(Recorder::default());
        let guard = PollGuard::start(recorder.clone(), "acc_1".to_owned());
        guard.answered(200, "Account".to_owned());
        drop(guard);
        let expected = PollOutcome::Answered {
            status: 200,
            object: "Account".to_owned(),
        };
        assert_eq!(recorder.polls()[0].outcome, expected);
    }

    #[test]
    fn poll_records_serialize_instants_as_unix_micros() {
        let recorder = Arc::new(Recorder::default());
        let _guard = PollGuard::start(recorder.clone(), "acc_1".to_owned());
        let json = serde_json::to_value(&recorder.polls()[0]).expect("serializable");
        assert!(
            json["started"]
                .as_u64()
                .is_some_and(|t| t > 1_600_000_000_000_000)
        );
        assert!(json["ended"].is_null());
        assert_eq!(json["outcome"]["kind"], "pending");
    }

    #[tokio::test]
    async fn wait_for_polls_wakes_when_a_record_changes() {
        let recorder = Arc::new(Recorder::default());
        let waiter = {
            let recorder = recorder.clone();
            tokio::spawn(async move {
                recorder
                    .wait_for_polls(|p| p.iter().any(|r| r.outcome == PollOutcome::HungUp))
                    .await;
            })
        };
        drop(PollGuard::start(recorder.clone(), "acc_1".to_owned()));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("wait_for_polls should resolve")
            .expect("task should not panic");
    }
}
