//! What every simulated browser shares (settings, live counters) and what each one reports.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::control::SimControl;

/// What a session does once it has its first QR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Stays open `hold` (reading rotations), then hangs up politely: the bulk of the load.
    Hold,
    /// Gets scanned through the control API `scan_after` after its first QR, and measures the
    /// `account` frame against the simulator's answer time.
    Scan,
    /// Hangs up `hangup_after` after its first QR, while the upstream long poll is in flight,
    /// and measures when the simulator saw the upstream request close.
    HangUp,
    /// Churn: leaves right after its first QR, the way `Exit` says.
    Churn(Exit),
    /// `--resume-cycles`: hangs up and resumes its session with `?resume=` again and again,
    /// then ends it (`crate::resume`).
    Resume,
    /// `--soak`: waits for the provider's `timeout` frame (bounded by `timeout_wait`).
    Timeout,
}

/// How a churn session leaves once it has its first QR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Sends a WebSocket Close (1001, a closing tab) and waits for the gateway to close the
    /// connection.
    Close,
    /// Drops the TCP connection without a word (a killed browser, a lost network).
    Drop,
    /// Sends `{"type":"cancel"}` and waits for the gateway's Close 1000.
    Cancel,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client hung up as planned.
    HungUp,
    /// `account` arrived (a scanned session).
    Account,
    /// `timeout` arrived: nobody scanned before the provider gave up.
    Timeout,
    /// The client dropped its TCP connection (churn).
    Dropped,
    /// The client sent `cancel` and the gateway closed with 1000 (churn).
    Cancelled,
    /// Anything else; the string is the error kind of the report.
    Failed(String),
    /// Still running when the duration limit struck.
    Aborted,
}

impl End {
    /// The outcome name of the report.
    pub fn name(&self) -> &str {
        match self {
            End::HungUp => "hung_up",
            End::Account => "account",
            End::Timeout => "timeout",
            End::Dropped => "dropped",
            End::Cancelled => "cancelled",
            End::Failed(_) => "failed",
            End::Aborted => "aborted",
        }
    }
}

/// What one session measured.
#[derive(Debug, Clone)]
pub struct SessionResult {
    /// Its role.
    pub role: Role,
    /// TCP connect plus WebSocket handshake (ws mode).
    pub connect: Option<Duration>,
    /// Upgrade done → first `qr` frame (ws); `POST /api/intent` → its answer (express).
    pub first_qr: Option<Duration>,
    /// Session start → first QR.
    pub start_to_qr: Option<Duration>,
    /// When the first QR arrived (for the per-second rate).
    pub first_qr_at: Option<Instant>,
    /// The upstream intent, for the control API.
    pub intent_id: Option<String>,
    /// QRs received (first one and rotations).
    pub qrs: u32,
    /// Size of the first QR message, bytes.
    pub first_qr_bytes: usize,
    /// Unix µs when `account` was received (scanned sessions).
    pub account_at_us: Option<i64>,
    /// Unix µs when the client hung up (hang-up sessions).
    pub hung_up_at_us: Option<i64>,
    /// Resume sessions: what their cycles measured (boxed: most sessions have none).
    pub resume: Option<Box<crate::resume::CycleLog>>,
    /// `--resume-on-drop` held sessions: their drops and resumes (boxed, as `resume`).
    pub dropped: Option<Box<crate::drop_resume::DropLog>>,
    /// How it ended.
    pub end: End,
}

impl SessionResult {
    /// A result with nothing measured yet.
    pub fn new(role: Role) -> Self {
        SessionResult {
            role,
            connect: None,
            first_qr: None,
            start_to_qr: None,
            first_qr_at: None,
            intent_id: None,
            qrs: 0,
            first_qr_bytes: 0,
            account_at_us: None,
            hung_up_at_us: None,
            resume: None,
            dropped: None,
            end: End::Aborted,
        }
    }

    /// Ends the session with an error of `kind`.
    pub fn fail(mut self, kind: impl Into<String>) -> Self {
        self.end = End::Failed(kind.into());
        self
    }

    /// Ends the session with `end`.
    pub fn ended(mut self, end: End) -> Self {
        self.end = end;
        self
    }
}

/// Live counters, read by the sampler and the plateau watcher while sessions run.
#[derive(Debug, Default)]
pub struct Live {
    /// Sessions open now (upgraded socket, or pending attempt in express mode).
    pub open: AtomicI64,
    /// Sessions that got their first QR.
    pub ready: AtomicU64,
    /// Sessions that failed before their first QR.
    pub failed_early: AtomicU64,
}

impl Live {
    /// Sessions that are past their first QR or will never get one.
    pub fn settled(&self) -> u64 {
        self.ready.load(Ordering::Relaxed) + self.failed_early.load(Ordering::Relaxed)
    }
}

/// What every session needs.
#[derive(Debug)]
pub struct Ctx {
    /// Where the load goes (resolved, loopback).
    pub target: SocketAddr,
    /// ws mode: the full link URL with its query; express mode: the peer's base URL.
    pub url: String,
    /// Resume: another gateway to resume on, and the link URL there (`--resume-url`).
    pub resume_to: Option<(SocketAddr, String)>,
    /// Provider to link.
    pub provider: String,
    /// Source addresses to spread connections over (empty: the kernel's choice).
    pub sources: Vec<IpAddr>,
    /// Express mode: one HTTP client per source address (or one without).
    pub http: Vec<reqwest::Client>,
    /// The simulator's control API, for scans and records.
    pub sim: Option<SimControl>,
    /// How long `Hold` sessions stay open after their first QR.
    pub hold: Duration,
    /// When `Scan` sessions are scanned after their first QR.
    pub scan_after: Duration,
    /// When `HangUp` sessions hang up after their first QR.
    pub hangup_after: Duration,
    /// Bound on each step: connect, first QR, scan → account, close handshake.
    pub step_timeout: Duration,
    /// How long `Timeout` sessions wait for the `timeout` frame after their first QR.
    pub timeout_wait: Duration,
    /// What `Resume` sessions do.
    pub resume: crate::resume::Plan,
    /// `--resume-on-drop`: where held sessions that lose their socket resume.
    pub on_drop: Option<crate::drop_resume::Plan>,
    /// Live counters.
    pub live: Live,
}

impl Ctx {
    /// The source address of session `i` (round robin), if any were given.
    pub fn source(&self, i: u64) -> Option<IpAddr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[(i % self.sources.len() as u64) as usize])
        }
    }

    /// The HTTP client of session `i` (express mode).
    pub fn http(&self, i: u64) -> &reqwest::Client {
        &self.http[(i % self.http.len() as u64) as usize]
    }
}

/// What a finished scan task means for its session: nothing, or the failure label to report.
pub fn scan_outcome(
    done: Result<Result<(), String>, tokio::task::JoinError>,
) -> Result<(), String> {
    match done {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("scan_{e}")),
        Err(_) => Err("scan_task".to_owned()),
    }
}

/// Now, in microseconds since the Unix epoch: the clock the simulator's records use.
pub fn unix_now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Marks a session open for as long as the guard lives, so an early return cannot skew the
/// live count.
pub struct OpenGuard<'a>(&'a Live);

impl<'a> OpenGuard<'a> {
    /// Counts one more open session.
    pub fn new(live: &'a Live) -> Self {
        live.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(live)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}
