//! One authentication intent's state machine: QR rotation, scan, 2FA, and its end.
//!
//! Nothing runs in the background: expiry is computed when someone looks (a poll or a scan), and
//! a long poll that must wait gets the instant to wait until. The HTTP layer does the waiting.
//!
//! A caller may abandon a poll (hang up) and poll the same intent again later, as the gateway
//! does when a browser drops and resumes. UNIPILE.md ("Polling again after a poll was
//! abandoned") leaves that undocumented; the simulator's guess: the provider rotates QRs on its
//! own clock whether or not anyone polls, so an unwatched intent still times out when its last
//! QR would have expired; a re-poll answers at once with whatever happened meanwhile (a new QR,
//! the Account, the 2FA checkpoint, the timeout); and a final answer is kept until a caller
//! really received it.

use std::time::Instant;

use serde_json::{Value, json};

use super::ProviderSim;
use super::mint::{IssuedQr, Minter};
use super::reply::Reply;

/// Why [`Simulator::scan`](super::Simulator::scan) did not link anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// No intent has this id.
    #[error("No authentication intent has this id.")]
    UnknownIntent,
    /// The intent was already scanned, waits for a 2FA code, or is linked.
    #[error("This intent is not waiting for a QR scan.")]
    NotWaitingForScan,
    /// The QR code scanned is no longer the current one, or the intent timed out.
    #[error("This QR code has expired.")]
    Expired,
}

/// Where an intent is in its flow.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// Showing QR codes until one is scanned or all expired.
    WaitingForScan,
    /// Scanned; the provider wants the 2FA password as a checkpoint code.
    WaitingFor2fa,
    /// Scanned (and 2FA solved if needed); the next poll answers this Account.
    Linked(Value),
    /// Over. Polls that started before `at` still get `answer`, and so does any poll until
    /// `answer` has been delivered; after that, later polls get 404.
    Done {
        /// When the intent ended.
        at: Instant,
        /// An `Account` or a `provider/timeout` error.
        answer: Reply,
        /// Whether a caller that did not hang up received `answer` (see [`Intent::delivered`]).
        delivered: bool,
    },
}

/// What a poll should do next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Answer now.
    Answer(Reply),
    /// Answer now with the intent's final answer (an `Account` or `provider/timeout`); once it
    /// has reached a caller that did not hang up, call [`Intent::delivered`].
    Final(Reply),
    /// Nothing to say yet: wait until this instant (the current QR's expiry) or a change.
    WaitUntil(Instant),
}

/// One intent.
#[derive(Debug)]
pub(crate) struct Intent {
    /// `acc_…`, as returned to the caller.
    pub id: String,
    /// The provider's simulated behaviour.
    pub provider: ProviderSim,
    /// The id the linked Account gets: the relinked `account_id`, else the intent id.
    pub account_id: String,
    /// `credentials.twofa` from the intent request.
    pub twofa: Option<String>,
    /// Every QR issued, in order; the last one is current.
    pub qrs: Vec<IssuedQr>,
    /// Where the flow is.
    pub phase: Phase,
}

impl Intent {
    /// A new intent with its first QR issued now.
    pub fn new(
        id: String,
        provider: ProviderSim,
        account_id: Option<String>,
        twofa: Option<String>,
        minter: &Minter,
    ) -> Self {
        let first = minter.qr(&provider.name, &id);
        Intent {
            account_id: account_id.unwrap_or_else(|| id.clone()),
            id,
            provider,
            twofa,
            qrs: vec![first],
            phase: Phase::WaitingForScan,
        }
    }

    /// The `AuthenticationQrCode` object for the current QR.
    pub fn qr_object(&self) -> Value {
        let qr = self.qrs.last().map_or("", |q| q.qr.as_str());
        json!({"object": "AuthenticationQrCode", "qrcode": qr, "intent_id": self.id})
    }

    /// When the current QR stops being scannable.
    pub fn current_expiry(&self) -> Option<Instant> {
        self.qrs.last().map(|q| q.issued_at + self.provider.qr_ttl)
    }

    /// The next step of a checkpoint call that started at `started`, when `start_qr` QRs had
    /// been issued, carrying `code`. Returns whether the intent changed (waiters must be woken).
    pub fn poll(
        &mut self,
        now: Instant,
        started: Instant,
        start_qr: usize,
        code: &str,
        minter: &Minter,
    ) -> (Step, bool) {
        if let Phase::Done {
            at,
            answer,
            delivered,
        } = &self.phase
        {
            // A final answer whose poll was abandoned is not lost: the next poll gets it.
            let step = if started <= *at || !delivered {
                Step::Final(answer.clone())
            } else {
                Step::Answer(Reply::intent_not_found())
            };
            return (step, false);
        }
        if let Phase::Linked(account) = &self.phase {
            let answer = Reply::object(account.clone());
            return (Step::Final(self.finish(now, answer)), true);
        }
        if matches!(self.phase, Phase::WaitingFor2fa) {
            return self.solve_2fa(now, code, minter);
        }
        if !code.is_empty() {
            let detail = "No checkpoint is waiting for a code: send an empty code while the QR \
                          code waits to be scanned.";
            return (Step::Answer(Reply::invalid(detail)), false);
        }
        if self.qrs.len() > start_qr {
            // Another poll rotated the QR while this one waited: it gets the new QR too.
            return (Step::Answer(Reply::object(self.qr_object())), false);
        }
        let Some(expiry) = self.current_expiry() else {
            return (Step::Answer(Reply::intent_not_found()), false);
        };
        if now < expiry {
            return (Step::WaitUntil(expiry), false);
        }
        if self.rotate(now, started, expiry, minter) {
            (Step::Answer(Reply::object(self.qr_object())), true)
        } else {
            (Step::Final(self.finish(now, timeout_reply())), true)
        }
    }

    /// Issues the QR that follows the current one, which expired at `expiry`; false when the
    /// provider has no QR left (the intent times out).
    ///
    /// A poll that was waiting when the QR expired rotates it then and there (issued `now`, a
    /// wake-up a little late delays the schedule, as a live provider session would). A poll that
    /// started after the expiry comes back to an intent nobody watched: the provider went on
    /// rotating on its own clock, so every QR that would have come up meanwhile is issued
    /// back-dated to when it would have, and the intent is out of QRs if the last one would
    /// already have expired.
    fn rotate(&mut self, now: Instant, started: Instant, expiry: Instant, minter: &Minter) -> bool {
        let count = self.provider.qr_count as usize;
        let watched = started <= expiry;
        let ttl = self.provider.qr_ttl;
        let missed = if watched || ttl.is_zero() {
            0
        } else {
            // Whole QR lifetimes that went by unwatched since `expiry`.
            usize::try_from((now - expiry).as_nanos() / ttl.as_nanos()).unwrap_or(usize::MAX)
        };
        let mut issued_at = if watched { now } else { expiry };
        for _ in 0..=missed {
            if self.qrs.len() >= count {
                return false;
            }
            let mut qr = minter.qr(&self.provider.name, &self.id);
            qr.issued_at = issued_at;
            self.qrs.push(qr);
            issued_at += ttl;
        }
        true
    }

    /// The "user scanned the QR" event; `code` is the scan page's `?c=`, if it had one.
    pub fn scan(
        &mut self,
        now: Instant,
        code: Option<&str>,
        minter: &Minter,
    ) -> Result<(), ScanError> {
        match &self.phase {
            Phase::WaitingForScan => {}
            Phase::Done { answer, .. } if answer.label == TIMEOUT_LABEL => {
                return Err(ScanError::Expired);
            }
            _ => return Err(ScanError::NotWaitingForScan),
        }
        let current = self.qrs.last().ok_or(ScanError::Expired)?;
        let stale = code.is_some_and(|c| c != current.code);
        if stale || self.current_expiry().is_none_or(|expiry| now >= expiry) {
            return Err(ScanError::Expired);
        }
        let needs_2fa = self
            .provider
            .twofa_password
            .as_ref()
            .is_some_and(|password| self.twofa.as_ref() != Some(password));
        self.phase = if needs_2fa {
            Phase::WaitingFor2fa
        } else {
            Phase::Linked(self.account(minter))
        };
        Ok(())
    }

    /// Ends the intent as timed out (a scripted `provider/timeout` fault). The fault's own answer
    /// tells the poll that carried it, so the timeout counts as delivered.
    pub fn time_out(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Done { .. }) {
            self.finish(now, timeout_reply());
            self.delivered();
        }
    }

    /// The final answer of a [`Step::Final`] reached a caller that did not hang up: from now on,
    /// polls that start after the end get 404 `api/resource_not_found`.
    pub fn delivered(&mut self) {
        if let Phase::Done { delivered, .. } = &mut self.phase {
            *delivered = true;
        }
    }

    /// A short name of the phase, for the control API.
    pub fn phase_name(&self) -> &'static str {
        match &self.phase {
            Phase::WaitingForScan => "waiting_for_scan",
            Phase::WaitingFor2fa => "waiting_for_2fa",
            Phase::Linked(_) => "linked",
            Phase::Done { answer, .. } if answer.label == TIMEOUT_LABEL => "timed_out",
            Phase::Done { .. } => "done",
        }
    }

    fn solve_2fa(&mut self, now: Instant, code: &str, minter: &Minter) -> (Step, bool) {
        if code.is_empty() {
            let checkpoint = json!({
                "object": "AuthenticationCheckpoint",
                "intent_id": self.id,
                "checkpoint": {"type": "2FA", "platform": "APP"},
            });
            return (Step::Answer(Reply::object(checkpoint)), false);
        }
        if self.provider.twofa_password.as_deref() == Some(code) {
            let answer = Reply::object(self.account(minter));
            (Step::Final(self.finish(now, answer)), true)
        } else {
            let reply = Reply::error(
                401,
                "provider/invalid_checkpoint_code",
                Some("The 2FA password is not correct."),
            );
            (Step::Answer(reply), false)
        }
    }

    fn account(&self, minter: &Minter) -> Value {
        minter.account(&self.provider.name, &self.account_id)
    }

    fn finish(&mut self, now: Instant, answer: Reply) -> Reply {
        self.phase = Phase::Done {
            at: now,
            answer: answer.clone(),
            delivered: false,
        };
        answer
    }
}

const TIMEOUT_LABEL: &str = "Error:provider/timeout";

fn timeout_reply() -> Reply {
    Reply::error(
        504,
        "provider/timeout",
        Some("Nobody scanned the QR code in time."),
    )
}

#[cfg(test)]
#[path = "intent_tests.rs"]
mod tests;
