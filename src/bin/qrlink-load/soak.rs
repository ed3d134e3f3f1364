//! Soak (`--soak`, issue #14): the gateway under a long mixed load, sampled every
//! `--soak-sample-every`, and judged flat or not.
//!
//! Each session has a role from `--soak-mix hangup,resume,scan,timeout`: a plain hang-up right
//! after its first QR (Close 1001 and dropped connection alternating: the session detaches and
//! the gateway's grace ends it), a resume (`--resume-cycles` detach/resume cycles, then
//! `cancel`, `crate::resume`), a scan through the control API (`--scan-after-ms`, then
//! `account`), or a timeout (waits for the `timeout` frame: the simulator runs with short QR
//! lifetimes, `--qr-ttl`/`--qr-count`, so its intents give up in seconds). Meanwhile upstream
//! faults are scripted through the simulator's control API at `--soak-faults` per second,
//! cycling through [`FAULTS`]; the simulator's queues are per endpoint, not per intent, so each
//! fault lands on whichever session calls next.
//!
//! The verdict compares the means of two windows of `--soak-window`: the first starts at
//! `--soak-steady-after` (the steady state: with the default 120 s grace, detached sessions pile
//! up for 2 minutes before expiries balance the hang-ups), the last ends with the offered load.
//! RSS, fds (`/proc/PID/fd`) and alive tasks (`/metrics`) pass when last ≤ 1.10 × first.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::churn::{Drain, GatewayState, Gauges, Leaks, Verdict};
use crate::control::SimControl;
use crate::procfs;
use crate::session::{Exit, Live, Role};

/// How much the last window's mean may exceed the first's (issue #14: 10%).
pub const FLAT_TOLERANCE: f64 = 1.10;

/// The faults scripted in turn: (endpoint, the control API's fault JSON, a name for the report).
/// Proxy errors, 5xx and 429 are retried by the gateway within its budget; a stall holds one long
/// poll until its session goes; `resource_not_found` on a poll ends that session with an error;
/// a late answer races a hang-up.
pub const FAULTS: &[(&str, &str, &str)] = &[
    (
        "intent",
        r#"{"kind":"error","error_type":"api/proxy_error","status":502}"#,
        "intent_proxy_error_502",
    ),
    ("intent", r#"{"kind":"status","status":503}"#, "intent_503"),
    (
        "intent",
        r#"{"kind":"rate_limited","retry_after_secs":1}"#,
        "intent_429_retry_after_1s",
    ),
    (
        "checkpoint",
        r#"{"kind":"error","error_type":"api/proxy_error","status":502}"#,
        "poll_proxy_error_502",
    ),
    (
        "checkpoint",
        r#"{"kind":"status","status":500}"#,
        "poll_500",
    ),
    (
        "checkpoint",
        r#"{"kind":"rate_limited","retry_after_secs":1}"#,
        "poll_429_retry_after_1s",
    ),
    ("checkpoint", r#"{"kind":"stall"}"#, "poll_stall"),
    (
        "checkpoint",
        r#"{"kind":"error","error_type":"api/resource_not_found","status":404}"#,
        "poll_resource_not_found_404",
    ),
    (
        "checkpoint",
        r#"{"kind":"late_answer","ms":500}"#,
        "poll_late_answer_500ms",
    ),
    (
        "intent",
        r#"{"kind":"delay","ms":500}"#,
        "intent_delay_500ms",
    ),
];

/// The share of each role, as weights (`--soak-mix hangup,resume,scan,timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mix {
    /// Hang up after the first QR and leave the session to the grace.
    pub hangup: u32,
    /// Detach and resume (`--resume-cycles`), then cancel.
    pub resume: u32,
    /// Scanned: `account`.
    pub scan: u32,
    /// Wait for the provider's `timeout`.
    pub timeout: u32,
}

impl Mix {
    /// The role of session `i`: in every run of `hangup + resume + scan + timeout` sessions, in
    /// that order; hang-ups alternate a Close 1001 and a dropped connection from run to run.
    pub fn role_of(&self, i: u64) -> Role {
        let total = u64::from(self.hangup + self.resume + self.scan + self.timeout).max(1);
        let k = i % total;
        let (h, r, s) = (
            u64::from(self.hangup),
            u64::from(self.hangup + self.resume),
            u64::from(self.hangup + self.resume + self.scan),
        );
        if k < h {
            if (i / total + k) % 2 == 0 {
                Role::Churn(Exit::Close)
            } else {
                Role::Churn(Exit::Drop)
            }
        } else if k < r {
            Role::Resume
        } else if k < s {
            Role::Scan
        } else {
            Role::Timeout
        }
    }
}

/// Parses `40,20,20,20` (hang-up, resume, scan, timeout weights).
pub fn parse_mix(s: &str) -> Result<Mix, String> {
    let parts: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?}: expected four weights, e.g. 40,20,20,20"))?;
    match parts[..] {
        [hangup, resume, scan, timeout]
            if parts.iter().map(|&p| u64::from(p)).sum::<u64>() > 0
                && parts.iter().map(|&p| u64::from(p)).sum::<u64>() <= 1_000_000 =>
        {
            Ok(Mix {
                hangup,
                resume,
                scan,
                timeout,
            })
        }
        _ => Err(format!(
            "{s:?}: expected four weights (hangup, resume, scan, timeout), not all 0"
        )),
    }
}

/// Faults scripted so far, by name, and pushes the simulator refused or missed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Injected {
    /// Faults queued, by [`FAULTS`] name.
    pub by_kind: BTreeMap<String, u64>,
    /// All of them.
    pub total: u64,
    /// Pushes that failed (the simulator did not answer 2xx).
    pub push_errors: u64,
}

/// Queues `rate` faults per second on the simulator, in [`FAULTS`] order, until aborted.
pub async fn inject(sim: SimControl, rate: f64, injected: Arc<Mutex<Injected>>) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        let (endpoint, fault, name) = FAULTS[(n % FAULTS.len() as u64) as usize];
        let ok = sim.push_fault(endpoint, fault).await.is_ok();
        let mut i = injected.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            *i.by_kind.entry(name.to_owned()).or_insert(0) += 1;
            i.total += 1;
        } else {
            i.push_errors += 1;
        }
    }
}

/// One reading of the soak.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SoakPoint {
    /// Seconds since the first session started.
    pub t_s: f64,
    /// Gateway `VmRSS`, KiB.
    pub rss_kib: Option<u64>,
    /// Gateway fds (`/proc/PID/fd`).
    pub fds: Option<u64>,
    /// `qrlink_runtime_tasks_alive`.
    pub tasks: Option<u64>,
    /// Gateway OS threads.
    pub threads: Option<u64>,
    /// `qrlink_sessions_active` (attached and detached).
    pub sessions_active: Option<i64>,
    /// `qrlink_sessions_detached`.
    pub sessions_detached: Option<i64>,
    /// Sessions this tool has open (sockets).
    pub client_open: i64,
    /// Sessions that had their first QR so far.
    pub ready: u64,
    /// Simulator `VmRSS`, KiB (it keeps every intent, by design).
    pub sim_rss_kib: Option<u64>,
}

/// Reads the gateway (and the simulator) every `every` until aborted.
pub async fn sample(
    gauges: Gauges,
    every: Duration,
    start: Instant,
    ctx: Arc<crate::session::Ctx>,
    sim_pid: Option<u32>,
    points: Arc<Mutex<Vec<SoakPoint>>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let g = gauges.read().await;
        let point = point_of(start, &g, &ctx.live, sim_pid);
        points.lock().unwrap_or_else(|p| p.into_inner()).push(point);
    }
}

fn point_of(start: Instant, g: &GatewayState, live: &Live, sim_pid: Option<u32>) -> SoakPoint {
    SoakPoint {
        t_s: start.elapsed().as_secs_f64(),
        rss_kib: g.rss_kib,
        fds: g.fds,
        tasks: g.metrics.and_then(|m| m.tasks_alive),
        threads: g.threads,
        sessions_active: g.metrics.map(|m| m.sessions_active),
        sessions_detached: g.metrics.and_then(|m| m.sessions_detached),
        client_open: live.open.load(Ordering::Relaxed),
        ready: live.ready.load(Ordering::Relaxed),
        sim_rss_kib: sim_pid
            .and_then(|p| procfs::sample(p, false).ok())
            .map(|s| s.rss_kib),
    }
}

/// Means of the readings in `[from_s, to_s)`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Window {
    /// Start, seconds since the first session.
    pub from_s: f64,
    /// End.
    pub to_s: f64,
    /// Readings in it.
    pub n: usize,
    /// Mean gateway RSS, KiB.
    pub rss_kib: Option<f64>,
    /// Mean fds.
    pub fds: Option<f64>,
    /// Mean alive tasks.
    pub tasks: Option<f64>,
    /// Mean active sessions.
    pub sessions_active: Option<f64>,
    /// Mean detached sessions.
    pub sessions_detached: Option<f64>,
}

impl Window {
    fn of(points: &[SoakPoint], from_s: f64, to_s: f64) -> Window {
        let inside: Vec<&SoakPoint> = points
            .iter()
            .filter(|p| p.t_s >= from_s && p.t_s < to_s)
            .collect();
        let mean = |f: &dyn Fn(&SoakPoint) -> Option<f64>| {
            let v: Vec<f64> = inside.iter().filter_map(|p| f(p)).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        Window {
            from_s,
            to_s,
            n: inside.len(),
            rss_kib: mean(&|p| p.rss_kib.map(|v| v as f64)),
            fds: mean(&|p| p.fds.map(|v| v as f64)),
            tasks: mean(&|p| p.tasks.map(|v| v as f64)),
            sessions_active: mean(&|p| p.sessions_active.map(|v| v as f64)),
            sessions_detached: mean(&|p| p.sessions_detached.map(|v| v as f64)),
        }
    }
}

/// The soak part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// `--soak-mix`.
    pub mix: Mix,
    /// `--soak-faults`, per second.
    pub faults_per_s: f64,
    /// What was scripted.
    pub faults: Injected,
    /// `--soak-sample-every`, seconds.
    pub sample_every_s: f64,
    /// How long the load was offered (sessions / rate), seconds.
    pub load_s: f64,
    /// First reading where the detached sessions reached 95% of their last-window mean: when the
    /// grace's pile-up was over.
    pub detached_steady_at_s: Option<f64>,
    /// The first window (from `--soak-steady-after`).
    pub first: Window,
    /// The last window (ending with the load).
    pub last: Window,
    /// RSS, fds, tasks: last ≤ 1.10 × first; then the sessions check.
    pub verdicts: Vec<Verdict>,
    /// After the load: the gateway draining through the grace (`--drain-timeout`), from the
    /// baseline taken after the warm-up.
    pub before: GatewayState,
    /// See `before`.
    pub drain: Drain,
    /// Leaks after the drain (as in churn).
    #[serde(flatten)]
    pub leaks: Leaks,
    /// Their verdicts (informative: the soak's verdict is the flatness above).
    pub drain_verdicts: Vec<Verdict>,
    /// Every reading.
    pub points: Vec<SoakPoint>,
}

/// What the run did, for the sessions verdict.
pub struct Run {
    /// Sessions started.
    pub started: u64,
    /// Failed.
    pub failed: u64,
    /// Aborted at the duration limit.
    pub aborted: u64,
}

/// The settings the report is built from.
pub struct Settings {
    /// `--soak-mix`.
    pub mix: Mix,
    /// `--soak-faults`.
    pub faults_per_s: f64,
    /// `--soak-sample-every`.
    pub sample_every: Duration,
    /// `--soak-steady-after`.
    pub steady_after: Duration,
    /// `--soak-window`.
    pub window: Duration,
    /// sessions / rate.
    pub load: Duration,
}

impl SoakReport {
    /// The windows and verdicts from the readings.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        s: &Settings,
        faults: Injected,
        points: Vec<SoakPoint>,
        before: GatewayState,
        drain: Drain,
        peak_rss_kib: u64,
        run: &Run,
    ) -> SoakReport {
        let (load, win) = (s.load.as_secs_f64(), s.window.as_secs_f64());
        let steady = s.steady_after.as_secs_f64();
        let first = Window::of(&points, steady, steady + win);
        let last = Window::of(&points, load - win, load);
        let detached_steady_at_s = last.sessions_detached.and_then(|goal| {
            points
                .iter()
                .find(|p| p.sessions_detached.is_some_and(|d| d as f64 >= 0.95 * goal))
                .map(|p| p.t_s)
        });
        let flat = |criterion: &'static str, unit: &str, f: Option<f64>, l: Option<f64>| {
            let ratio = match (f, l) {
                (Some(f), Some(l)) if f > 0.0 => Some(l / f),
                _ => None,
            };
            Verdict {
                criterion,
                pass: ratio.is_some_and(|r| r <= FLAT_TOLERANCE),
                detail: format!(
                    "mean {} {unit} over {:.0}–{:.0} s, {} over {:.0}–{:.0} s: {}",
                    f.map_or("?".to_owned(), |v| format!("{v:.1}")),
                    first.from_s,
                    first.to_s,
                    l.map_or("?".to_owned(), |v| format!("{v:.1}")),
                    last.from_s,
                    last.to_s,
                    ratio.map_or("?".to_owned(), |r| format!("{r:.3}×")),
                ),
            }
        };
        let mib = |k: Option<f64>| k.map(|k| k / 1024.0);
        let verdicts = vec![
            flat("RSS flat", "MiB", mib(first.rss_kib), mib(last.rss_kib)),
            flat("fds flat", "fds", first.fds, last.fds),
            flat("tasks flat", "tasks", first.tasks, last.tasks),
            Verdict {
                criterion: "sessions",
                pass: run.aborted == 0 && run.failed <= faults.total,
                detail: format!(
                    "{} started, {} failed (at most one per scripted fault: {}), {} aborted",
                    run.started, run.failed, faults.total, run.aborted
                ),
            },
        ];
        let (leaks, drain_verdicts) = crate::churn::leak_verdicts(&before, &drain, peak_rss_kib);
        SoakReport {
            mix: s.mix,
            faults_per_s: s.faults_per_s,
            faults,
            sample_every_s: s.sample_every.as_secs_f64(),
            load_s: load,
            detached_steady_at_s,
            first,
            last,
            verdicts,
            before,
            drain,
            leaks,
            drain_verdicts,
            points,
        }
    }

    /// Lines for the table.
    pub fn table(&self, out: &mut String) {
        let m = self.mix;
        let _ = writeln!(
            out,
            "soak: mix hang-up {} / resume {} / scan {} / timeout {}; {} faults scripted ({:.1}/s, {} pushes failed); {} readings every {:.0} s; detached at 95% of steady after {} s",
            m.hangup,
            m.resume,
            m.scan,
            m.timeout,
            self.faults.total,
            self.faults_per_s,
            self.faults.push_errors,
            self.points.len(),
            self.sample_every_s,
            self.detached_steady_at_s
                .map_or("?".to_owned(), |t| format!("{t:.0}")),
        );
        for (name, w) in [("first", &self.first), ("last", &self.last)] {
            let f = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.1}"));
            let _ = writeln!(
                out,
                "  {name:<5} window {:.0}–{:.0} s ({} readings): RSS {} MiB, fds {}, tasks {}, sessions {} (detached {})",
                w.from_s,
                w.to_s,
                w.n,
                f(w.rss_kib.map(|k| k / 1024.0)),
                f(w.fds),
                f(w.tasks),
                f(w.sessions_active),
                f(w.sessions_detached),
            );
        }
        crate::churn::verdict_lines(out, &self.verdicts);
        let _ = writeln!(out, "  after the load (drain through the grace):");
        crate::churn::state_lines(out, &self.before, &self.drain);
        crate::churn::verdict_lines(out, &self.drain_verdicts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_parses_and_spreads_roles() {
        let mix = parse_mix("4, 2,2,2").unwrap();
        let roles: Vec<Role> = (0..100).map(|i| mix.role_of(i)).collect();
        let count = |f: &dyn Fn(&Role) -> bool| roles.iter().filter(|r| f(r)).count();
        assert_eq!(count(&|r| matches!(r, Role::Churn(_))), 40);
        assert_eq!(count(&|r| *r == Role::Churn(Exit::Drop)), 20);
        assert_eq!(count(&|r| *r == Role::Resume), 20);
        assert_eq!(count(&|r| *r == Role::Scan), 20);
        assert_eq!(count(&|r| *r == Role::Timeout), 20);
        assert!(parse_mix("0,0,0,0").is_err() && parse_mix("1,2,3").is_err());
    }

    #[test]
    fn every_scripted_fault_is_valid_json_for_a_known_endpoint() {
        for (endpoint, fault, _) in FAULTS {
            assert!(matches!(*endpoint, "intent" | "checkpoint"), "{endpoint}");
            let v: serde_json::Value = serde_json::from_str(fault).expect(fault);
            assert!(v["kind"].is_string(), "{fault}");
        }
    }

    #[test]
    fn a_growing_gateway_fails_and_a_flat_one_passes() {
        let points: Vec<SoakPoint> = (0..180)
            .map(|k| SoakPoint {
                t_s: k as f64 * 10.0,
                rss_kib: Some(10_000 + k * 100),
                fds: Some(50),
                tasks: Some(1_000),
                sessions_detached: Some(100),
                ..SoakPoint::default()
            })
            .collect();
        let settings = Settings {
            mix: parse_mix("1,1,1,1").unwrap(),
            faults_per_s: 1.0,
            sample_every: Duration::from_secs(10),
            steady_after: Duration::from_secs(300),
            window: Duration::from_secs(300),
            load: Duration::from_secs(1800),
        };
        let run = Run {
            started: 10,
            failed: 0,
            aborted: 0,
        };
        let r = SoakReport::new(
            &settings,
            Injected::default(),
            points,
            GatewayState::default(),
            Drain::default(),
            0,
            &run,
        );
        let pass = |c: &str| r.verdicts.iter().find(|v| v.criterion == c).unwrap().pass;
        assert!(!pass("RSS flat") && pass("fds flat") && pass("tasks flat") && pass("sessions"));
        assert_eq!((r.first.n, r.last.n), (30, 30));
        assert_eq!(r.detached_steady_at_s, Some(0.0));
    }
}
