//! Recent deliveries, for the dashboard's deliveries panel (`GET /api/deliveries`): the last
//! [`RECENT`] webhooks this node handled, each as it stands now.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

use super::outbox::Message;

/// Deliveries the journal keeps.
pub const RECENT: usize = 100;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Queued, not tried yet.
    Pending,
    /// An attempt failed; another is scheduled.
    Retrying,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed.
    Failed,
    /// The receiver answered 410 (to this one or an earlier one): not sent.
    Gone,
    /// Still pending when the gateway stopped: in the in-memory outbox, or (cluster mode) never
    /// written to Redis, which was unreachable.
    Lost,
}

/// One delivery as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The `webhook-id`.
    pub id: Box<str>,
    /// The event `type`.
    pub event: &'static str,
    /// The session it tells about.
    pub session: Box<str>,
    /// Where it stands.
    pub status: Status,
    /// Attempts made.
    pub attempts: u32,
    /// The last answer's HTTP status, if there was an answer.
    pub last_status: Option<u16>,
    /// When the next attempt is due (RFC 3339), while retrying.
    pub next_retry_at: Option<String>,
    /// When this entry last changed (RFC 3339).
    pub updated_at: String,
}

/// The last [`RECENT`] deliveries, newest last.
#[derive(Debug)]
pub struct Journal {
    entries: Mutex<VecDeque<Entry>>,
    /// Bumped on every update, so a caller can wait for a delivery to get somewhere.
    version: watch::Sender<u64>,
}

impl Default for Journal {
    fn default() -> Journal {
        Journal {
            entries: Mutex::default(),
            version: watch::Sender::new(0),
        }
    }
}

impl Journal {
    /// Records where a delivery stands now.
    pub fn update(
        &self,
        msg: &Message,
        status: Status,
        last_status: Option<u16>,
        next_retry: Option<SystemTime>,
    ) {
        let entry = Entry {
            id: msg.id.clone(),
            event: msg.event,
            session: msg.session.clone(),
            status,
            attempts: msg.attempts,
            last_status,
            next_retry_at: next_retry.map(rfc3339),
            updated_at: rfc3339(SystemTime::now()),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Most updates are about a recent delivery: look from the newest end.
        match entries.iter().rposition(|e| e.id == entry.id) {
            Some(i) => entries[i] = entry,
            None => {
                if entries.len() == RECENT {
                    entries.pop_front();
                }
                entries.push_back(entry);
            }
        }
        drop(entries);
        self.version.send_modify(|v| *v += 1);
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The deliveries kept, newest first.
    pub fn recent(&self) -> Vec<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().rev().cloned().collect()
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
