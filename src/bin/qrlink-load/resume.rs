//! `--resume-cycles N` (protocol v1.1, DESIGN.md §8): a simulated browser that loses its socket
//! and gets its session back, N times, then ends it.
//!
//! After its first `qr` (which carries the resume token) a `Resume` session hangs up
//! (`--resume-hangup`: a 1001 Close as a reload sends, waited out until the gateway drops the
//! connection, or a TCP close without a close handshake, as a lost network; `mix` alternates),
//! opens `?resume=TOKEN` on a new connection, and times the request (TCP connect) → the replayed
//! frame. The replay must be a `qr` or `checkpoint` of the same session with `replay:true`, and
//! the same `seq` and `rotation` as the last frame the browser saw; a later `seq` is accepted and
//! counted (a rotation the browser had not read yet when it hung up). At the end the session
//! sends `cancel` or hangs up once more and leaves the grace to end it (`--resume-finish`).
//!
//! The report has the cycles done, the latencies, the failures by kind, the gateway's resume
//! counters (before → after), and, when every session resumes, the churn's leak readings and
//! verdicts (`crate::churn`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::time::{sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::churn::{self, Drain, GatewayState, Leaks, Scraped, Verdict};
use crate::report::Stats;
use crate::session::{Ctx, End, Exit, SessionResult};
use crate::ws_mode::{self, Frame, Next, Ws};

/// How a resume session loses its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HangUp {
    /// A WebSocket Close 1001 (a reload, a navigation), then waiting until the gateway drops
    /// the connection: the session is detached before the resume arrives.
    Close,
    /// The TCP connection closed without a close handshake (a lost network); the resume follows
    /// at once, so it may reach the gateway before the hang-up does and take the session over.
    Drop,
    /// Even cycles close, odd ones drop.
    Mix,
}

impl HangUp {
    fn of(self, cycle: u32) -> Exit {
        match self {
            HangUp::Close => Exit::Close,
            HangUp::Drop => Exit::Drop,
            HangUp::Mix if cycle % 2 == 0 => Exit::Close,
            HangUp::Mix => Exit::Drop,
        }
    }
}

/// How a resume session ends after its last cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// `{"type":"cancel"}` and the gateway's Close 1000: the session ends at once.
    Cancel,
    /// A last 1001 Close: the session stays detached until the gateway's grace ends it (the
    /// leak check then waits that long, bounded by `--drain-timeout`).
    Leave,
}

/// What `Resume` sessions do (from the flags).
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Detach/resume cycles per session.
    pub cycles: u32,
    /// How each cycle loses the socket.
    pub hangup: HangUp,
    /// How the session ends.
    pub finish: Finish,
    /// First QR → first hang-up.
    pub after: Duration,
    /// Hang-up → resume request (0: at once, as a reload).
    pub pause: Duration,
}

/// What one session's cycles measured.
#[derive(Debug, Clone, Default)]
pub struct CycleLog {
    /// Cycles that got their replay, checked.
    pub done: u32,
    /// Resume request (TCP connect) → replayed frame read, µs.
    pub to_replay_us: Vec<i64>,
    /// WebSocket upgrade done → replayed frame read, µs: the gateway's own part.
    pub upgrade_to_replay_us: Vec<i64>,
    /// Replays with a later `seq` than the browser had seen.
    pub newer: u32,
    /// Hang-ups by Close 1001.
    pub closed: u32,
    /// Hang-ups by a dropped connection.
    pub dropped: u32,
}

/// What the browser last saw of its session.
#[derive(Debug)]
pub struct Shown {
    /// `ses_…`.
    pub session: String,
    /// The last frame's `seq`.
    pub seq: u64,
    /// The last `qr` frame's rotation (`None` for a checkpoint).
    pub rotation: Option<u32>,
    /// The resume token.
    pub token: String,
}

impl Shown {
    /// From a first `qr` frame; `None` if it carries no resume token (resume off).
    pub fn from_first(frame: &Frame) -> Option<Shown> {
        Some(Shown {
            session: frame.session.clone()?,
            seq: frame.seq?,
            rotation: frame.rotation,
            token: frame.resume.clone()?,
        })
    }

    /// Takes a frame read on the attached socket: a rotation moves what a replay must match.
    pub fn saw(&mut self, frame: &Frame) {
        if let Some(seq) = frame.seq {
            self.seq = seq;
            self.rotation = frame.rotation;
        }
    }
}

/// Runs the cycles of session `i` after its first QR, then ends it; failures name the step
/// (`resume_…`).
pub async fn run(ctx: &Ctx, i: u64, mut ws: Ws, mut shown: Shown, r: &mut SessionResult) -> End {
    let plan = ctx.resume;
    let step = ctx.step_timeout;
    let mut log = Box::<CycleLog>::default();
    let start_at = r.first_qr_at.unwrap_or_else(Instant::now) + plan.after;
    if let Err(kind) = read_until(&mut ws, &mut shown, start_at).await {
        r.resume = Some(log);
        return End::Failed(kind);
    }
    // With `--resume-url` the session moves at every cycle: to the other gateway, back, …
    let here = (ctx.target, resume_url(&ctx.url, &shown.token));
    let there = ctx
        .resume_to
        .as_ref()
        .map(|(at, url)| (*at, resume_url(url, &shown.token)));
    for cycle in 0..plan.cycles {
        let (at, url) = match &there {
            Some(there) if cycle % 2 == 0 => there,
            _ => &here,
        };
        let how = plan.hangup.of(cycle);
        match how {
            Exit::Close => log.closed += 1,
            _ => log.dropped += 1,
        }
        if let Err(kind) = hang_up(ws, how, step).await {
            r.resume = Some(log);
            return End::Failed(kind);
        }
        if !plan.pause.is_zero() {
            tokio::time::sleep(plan.pause).await;
        }
        let asked = Instant::now();
        let resumed = match ws_mode::open_at(ctx, *at, i, url).await {
            Ok(ws) => ws,
            Err(kind) => {
                r.resume = Some(log);
                return End::Failed(format!("resume_{kind}"));
            }
        };
        ws = resumed;
        let upgraded = Instant::now();
        match timeout(step, ws_mode::next(&mut ws)).await {
            Err(_) => {
                r.resume = Some(log);
                return End::Failed("resume_replay_timeout".to_owned());
            }
            Ok(Next::Frame(frame, _)) => {
                let now = Instant::now();
                match check_replay(&shown, &frame) {
                    Ok(newer) => {
                        log.newer += u32::from(newer);
                        log.done += 1;
                        log.to_replay_us.push((now - asked).as_micros() as i64);
                        log.upgrade_to_replay_us
                            .push((now - upgraded).as_micros() as i64);
                        shown.saw(&frame);
                    }
                    Err(kind) => {
                        r.resume = Some(log);
                        return End::Failed(kind);
                    }
                }
            }
            Ok(Next::Close(code)) => {
                r.resume = Some(log);
                return End::Failed(format!("resume_closed_{code}"));
            }
            Ok(Next::Gone(kind)) => {
                r.resume = Some(log);
                return End::Failed(format!("resume_{kind}"));
            }
        }
    }
    r.resume = Some(log);
    match ctx.resume.finish {
        Finish::Cancel => ws_mode::leave(ws, Exit::Cancel, step).await,
        Finish::Leave => ws_mode::leave(ws, Exit::Close, step).await,
    }
}

/// `url` with `resume=TOKEN` added to its query (the token is URL-safe: base62, `_` and `.`).
pub fn resume_url(url: &str, token: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}resume={token}")
}

/// Whether `frame` is the replay of what the browser saw: `Ok(true)` when it is a later frame
/// of the same session (a rotation not read before the hang-up).
pub fn check_replay(shown: &Shown, frame: &Frame) -> Result<bool, String> {
    match frame.kind.as_str() {
        "qr" | "checkpoint" => {}
        "error" => {
            let code = frame.code.as_deref().unwrap_or_default();
            return Err(format!("resume_error_{code}"));
        }
        other => return Err(format!("resume_first_frame_{other}")),
    }
    if !frame.replay {
        return Err("resume_not_a_replay".to_owned());
    }
    if frame.session.as_deref() != Some(shown.session.as_str()) {
        return Err("resume_other_session".to_owned());
    }
    if frame.resume.as_deref() != Some(shown.token.as_str()) {
        return Err("resume_other_token".to_owned());
    }
    let seq = frame.seq.unwrap_or(0);
    if seq < shown.seq {
        return Err("resume_older_seq".to_owned());
    }
    if seq == shown.seq && frame.rotation != shown.rotation {
        return Err("resume_rotation_changed".to_owned());
    }
    Ok(seq > shown.seq)
}

/// Reads the attached socket until `until` (a rotation may arrive meanwhile; anything else
/// ends the session).
async fn read_until(ws: &mut Ws, shown: &mut Shown, until: Instant) -> Result<(), String> {
    loop {
        tokio::select! {
            () = sleep_until(until.into()) => return Ok(()),
            msg = ws_mode::next(ws) => match msg {
                Next::Frame(frame, _) if frame.kind == "qr" => shown.saw(&frame),
                Next::Frame(frame, _) => return Err(format!("resume_unexpected_frame_{}", frame.kind)),
                Next::Close(code) => return Err(format!("resume_closed_while_attached_{code}")),
                Next::Gone(kind) => return Err(format!("resume_lost_{kind}")),
            },
        }
    }
}

/// Loses the socket: a Close 1001 waited out (the gateway has detached the session when it
/// drops the connection), or the TCP connection dropped.
async fn hang_up(mut ws: Ws, how: Exit, step: Duration) -> Result<(), String> {
    if how != Exit::Close {
        drop(ws);
        return Ok(());
    }
    let away = CloseFrame {
        code: CloseCode::Away,
        reason: "".into(),
    };
    if ws.send(Message::Close(Some(away))).await.is_err() {
        return Err("resume_close_send".to_owned());
    }
    match timeout(step, async { while ws.next().await.is_some() {} }).await {
        Ok(()) => Ok(()),
        Err(_) => Err("resume_close_not_closed".to_owned()),
    }
}

/// The gateway's resume counters from `/metrics`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counters {
    /// `qrlink_resumes_total`.
    pub resumes: Option<u64>,
    /// `qrlink_takeovers_total`.
    pub takeovers: Option<u64>,
    /// `qrlink_resume_expiries_total`.
    pub expiries: Option<u64>,
    /// `qrlink_sessions_detached`.
    pub detached: Option<i64>,
}

impl Counters {
    /// The counters of a scrape; one that was read but lacks a counter reads 0 (the exporter
    /// shows a counter only once it has counted).
    fn of(m: Option<Scraped>) -> Counters {
        m.map_or_else(Counters::default, |m| Counters {
            resumes: Some(m.resumes_total.unwrap_or(0)),
            takeovers: Some(m.takeovers_total.unwrap_or(0)),
            expiries: Some(m.resume_expiries_total.unwrap_or(0)),
            detached: Some(m.sessions_detached.unwrap_or(0)),
        })
    }
}

/// The leak check of a run where every session resumes: the churn's readings and verdicts.
#[derive(Debug, Clone, Serialize)]
pub struct LeakCheck {
    /// After the warm-up, the gateway idle.
    pub before: GatewayState,
    /// Waiting for the gateway to settle, and the final reading.
    pub drain: Drain,
    /// Largest gateway RSS the sampler saw, KiB.
    pub peak_rss_kib: u64,
    /// Leaked sessions, tasks, fds and the RSS ratio.
    #[serde(flatten)]
    pub leaks: Leaks,
    /// One line per criterion: the cycles, then the leaks.
    pub verdicts: Vec<Verdict>,
}

/// The resume part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ResumeReport {
    /// `--resume-cycles`.
    pub cycles_per_session: u32,
    /// `--resume-hangup`.
    pub hangup: HangUp,
    /// `--resume-finish`.
    pub finish: Finish,
    /// `--resume-pause-ms`.
    pub pause_ms: u64,
    /// Sessions with the resume role that reached their first QR.
    pub sessions: u64,
    /// Cycles those sessions were to do.
    pub cycles_planned: u64,
    /// Cycles that got their replay, checked.
    pub cycles_done: u64,
    /// Hang-ups by Close 1001 and by a dropped connection.
    pub hangups_close: u64,
    /// See `hangups_close`.
    pub hangups_drop: u64,
    /// Replays of a later frame than the browser had seen (a rotation in flight).
    pub replays_newer: u64,
    /// Resume request (TCP connect) → replayed frame, ms.
    pub resume_to_replay_ms: Stats,
    /// Upgrade done → replayed frame, ms.
    pub upgrade_to_replay_ms: Stats,
    /// Failed resume sessions by error kind.
    pub failures: BTreeMap<String, u64>,
    /// The gateway's counters before the run.
    pub gateway_before: Counters,
    /// After the run (and the drain, with the leak check).
    pub gateway_after: Counters,
    /// With every session resuming: the leak readings and verdicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leak: Option<LeakCheck>,
}

/// What the leak check saw, for [`ResumeReport::new`].
pub struct LeakInput {
    /// The baseline.
    pub before: GatewayState,
    /// The drain.
    pub drain: Drain,
    /// Peak gateway RSS, KiB.
    pub peak_rss_kib: u64,
    /// Sessions aborted at the duration limit.
    pub aborted: u64,
}

impl ResumeReport {
    /// Puts the figures together from the resume sessions' results and the gateway readings.
    pub fn new(
        plan: &Plan,
        results: &[SessionResult],
        before: Option<Scraped>,
        after: Option<Scraped>,
        leak: Option<LeakInput>,
    ) -> ResumeReport {
        let mine = || {
            results
                .iter()
                .filter(|r| r.role == crate::session::Role::Resume)
        };
        let mut to_replay = Vec::new();
        let mut upgrade = Vec::new();
        let mut failures = BTreeMap::new();
        let (mut sessions, mut done, mut newer, mut closed, mut dropped) = (0, 0, 0, 0, 0);
        for r in mine() {
            if r.first_qr_at.is_some() {
                sessions += 1;
            }
            if let End::Failed(kind) = &r.end {
                *failures.entry(kind.clone()).or_insert(0u64) += 1;
            }
            if let Some(log) = &r.resume {
                done += u64::from(log.done);
                newer += u64::from(log.newer);
                closed += u64::from(log.closed);
                dropped += u64::from(log.dropped);
                to_replay.extend_from_slice(&log.to_replay_us);
                upgrade.extend_from_slice(&log.upgrade_to_replay_us);
            }
        }
        let planned = sessions * u64::from(plan.cycles);
        let leak = leak.map(|l| {
            let (leaks, mut leak_verdicts) = churn::leak_verdicts(&l.before, &l.drain, l.peak_rss_kib);
            let failed: u64 = failures.values().sum();
            let mut verdicts = vec![Verdict {
                criterion: "cycles",
                pass: done == planned && planned > 0 && failed == 0 && l.aborted == 0,
                detail: format!(
                    "{done} of {planned} detach/resume cycles, {failed} sessions failed, {} aborted",
                    l.aborted
                ),
            }];
            verdicts.append(&mut leak_verdicts);
            LeakCheck {
                before: l.before,
                drain: l.drain,
                peak_rss_kib: l.peak_rss_kib,
                leaks,
                verdicts,
            }
        });
        ResumeReport {
            cycles_per_session: plan.cycles,
            hangup: plan.hangup,
            finish: plan.finish,
            pause_ms: plan.pause.as_millis() as u64,
            sessions,
            cycles_planned: planned,
            cycles_done: done,
            hangups_close: closed,
            hangups_drop: dropped,
            replays_newer: newer,
            resume_to_replay_ms: Stats::of_micros(to_replay),
            upgrade_to_replay_ms: Stats::of_micros(upgrade),
            failures,
            gateway_before: Counters::of(before),
            gateway_after: Counters::of(after),
            leak,
        }
    }

    /// Lines for the table.
    pub fn table(&self, out: &mut String) {
        let s = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
        let _ = writeln!(
            out,
            "resume: {} sessions × {} cycles ({:?} hang-ups: {} close, {} drop; then {:?}): {} of {} done, {} replays of a later frame",
            self.sessions,
            self.cycles_per_session,
            self.hangup,
            self.hangups_close,
            self.hangups_drop,
            self.finish,
            self.cycles_done,
            self.cycles_planned,
            self.replays_newer,
        );
        for (name, st) in [
            ("resume -> replay", &self.resume_to_replay_ms),
            ("upgrade -> replay", &self.upgrade_to_replay_ms),
        ] {
            let _ = writeln!(
                out,
                "  {name:<18} n {} p50 {:.3} p99 {:.3} max {:.3} ms",
                st.n, st.p50, st.p99, st.max
            );
        }
        let (b, a) = (&self.gateway_before, &self.gateway_after);
        let _ = writeln!(
            out,
            "  gateway: resumes {} -> {}, takeovers {} -> {}, expiries {} -> {}, detached {} -> {}",
            s(b.resumes),
            s(a.resumes),
            s(b.takeovers),
            s(a.takeovers),
            s(b.expiries),
            s(a.expiries),
            b.detached.map_or("?".to_owned(), |v| v.to_string()),
            a.detached.map_or("?".to_owned(), |v| v.to_string()),
        );
        if !self.failures.is_empty() {
            let f: Vec<String> = self
                .failures
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "  failures: {}", f.join(", "));
        }
        if let Some(l) = &self.leak {
            churn::state_lines(out, &l.before, &l.drain);
            churn::verdict_lines(out, &l.verdicts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &str) -> Frame {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_replay_must_match_what_the_browser_saw() {
        let first = frame(
            r#"{"type":"qr","session":"ses_a","seq":1,"rotation":1,"intent_id":"i","resume":"ses_a.t"}"#,
        );
        let shown = Shown::from_first(&first).unwrap();
        let replay = |json: &str| check_replay(&shown, &frame(json));
        assert_eq!(
            replay(
                r#"{"type":"qr","session":"ses_a","seq":1,"rotation":1,"replay":true,"resume":"ses_a.t"}"#
            ),
            Ok(false)
        );
        assert_eq!(
            replay(
                r#"{"type":"qr","session":"ses_a","seq":2,"rotation":2,"replay":true,"resume":"ses_a.t"}"#
            ),
            Ok(true),
            "a rotation the browser had not read"
        );
        for (json, kind) in [
            (
                r#"{"type":"qr","session":"ses_a","seq":1,"rotation":1,"resume":"ses_a.t"}"#,
                "resume_not_a_replay",
            ),
            (
                r#"{"type":"qr","session":"ses_b","seq":1,"rotation":1,"replay":true,"resume":"ses_a.t"}"#,
                "resume_other_session",
            ),
            (
                r#"{"type":"qr","session":"ses_a","seq":1,"rotation":2,"replay":true,"resume":"ses_a.t"}"#,
                "resume_rotation_changed",
            ),
            (
                r#"{"type":"error","session":"","seq":1,"code":"session/expired"}"#,
                "resume_error_session/expired",
            ),
        ] {
            assert_eq!(replay(json), Err(kind.to_owned()), "{json}");
        }
        let v1 = frame(r#"{"type":"qr","session":"ses_a","seq":1,"rotation":1}"#);
        assert!(Shown::from_first(&v1).is_none(), "no token: resume is off");
    }

    #[test]
    fn mixed_hang_ups_alternate_and_the_token_joins_the_query() {
        let exits: Vec<Exit> = (0..4).map(|c| HangUp::Mix.of(c)).collect();
        assert_eq!(exits, [Exit::Close, Exit::Drop, Exit::Close, Exit::Drop]);
        assert_eq!(
            resume_url("ws://h/ws/link/whatsapp?qr=svg", "ses_a.t"),
            "ws://h/ws/link/whatsapp?qr=svg&resume=ses_a.t"
        );
        assert_eq!(resume_url("ws://h/x", "t"), "ws://h/x?resume=t");
    }
}
