//! Churn (`--churn`): sessions opened and closed as fast as `--rate`, and what the gateway
//! keeps afterwards. Each session waits for its first `qr` frame and leaves (`--churn-mix`: a
//! WebSocket Close, a dropped TCP connection, or `{"type":"cancel"}`). The gateway is read
//! before (after the warm-up, once it is idle) and after (once its `qrlink_sessions_active`
//! sum is back to 0 and, bounded by `--drain-timeout`, its tasks and fds are back to the
//! baseline): RSS and fds from `/proc/PID`, alive tasks and active sessions from `/metrics`.
//!
//! Leaked sessions are the active sessions after; leaked tasks and fds are after − before;
//! RSS passes when after ≤ 1.10 × before.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::procfs;
use crate::session::Exit;

/// How much bigger than before the gateway's RSS may be after the churn (issue #6: 10%).
pub const RSS_TOLERANCE: f64 = 1.10;
/// The churn rate issue #6 asks for, sessions/s.
pub const GOAL_RATE: f64 = 500.0;
/// How often the gateway is read while waiting for it to settle.
const POLL: Duration = Duration::from_millis(100);

/// The share of each way to leave, as weights (`--churn-mix close,drop,cancel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Weight of sessions that send a WebSocket Close.
    pub close: u32,
    /// Weight of sessions that drop the TCP connection.
    pub drop: u32,
    /// Weight of sessions that send `cancel`.
    pub cancel: u32,
}

impl Mix {
    /// How session `i` leaves: in every run of `close + drop + cancel` sessions, the first
    /// `close` send a Close, the next `drop` drop, the rest cancel.
    pub fn exit_of(&self, i: u64) -> Exit {
        let total = u64::from(self.close + self.drop + self.cancel).max(1);
        let k = i % total;
        if k < u64::from(self.close) {
            Exit::Close
        } else if k < u64::from(self.close + self.drop) {
            Exit::Drop
        } else {
            Exit::Cancel
        }
    }
}

/// Parses `80,10,10` (close, drop, cancel weights).
pub fn parse_mix(s: &str) -> Result<Mix, String> {
    let parts: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?}: expected three weights, e.g. 80,10,10"))?;
    match parts[..] {
        [close, drop, cancel] if close.saturating_add(drop).saturating_add(cancel) > 0 => {
            if u64::from(close) + u64::from(drop) + u64::from(cancel) > 1_000_000 {
                return Err(format!("{s:?}: weights too large"));
            }
            Ok(Mix {
                close,
                drop,
                cancel,
            })
        }
        _ => Err(format!(
            "{s:?}: expected three weights (close, drop, cancel), not all 0"
        )),
    }
}

/// The gateway as `/metrics` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Scraped {
    /// Sum of `qrlink_sessions_active` over providers.
    pub sessions_active: i64,
    /// `qrlink_runtime_tasks_alive`, when the gateway exports it.
    pub tasks_alive: Option<u64>,
    /// `qrlink_process_open_fds` (the gateway's own count: includes the scrape's socket).
    pub open_fds: Option<u64>,
    /// `qrlink_sessions_detached` (v1.1): counted in `sessions_active` too, until their grace
    /// ends them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_detached: Option<i64>,
    /// `qrlink_resumes_total` (v1.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumes_total: Option<u64>,
    /// `qrlink_takeovers_total` (v1.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub takeovers_total: Option<u64>,
    /// `qrlink_resume_expiries_total` (v1.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_expiries_total: Option<u64>,
}

/// Reads the figures out of Prometheus text.
pub fn parse_metrics(text: &str) -> Scraped {
    let mut out = Scraped::default();
    let mut sessions = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let Some(value) = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
        else {
            continue;
        };
        match &line[..name_end] {
            "qrlink_sessions_active" => sessions += value,
            "qrlink_runtime_tasks_alive" => out.tasks_alive = Some(value.max(0.0) as u64),
            "qrlink_process_open_fds" => out.open_fds = Some(value.max(0.0) as u64),
            "qrlink_sessions_detached" => out.sessions_detached = Some(value.round() as i64),
            "qrlink_resumes_total" => out.resumes_total = Some(value.max(0.0) as u64),
            "qrlink_takeovers_total" => out.takeovers_total = Some(value.max(0.0) as u64),
            "qrlink_resume_expiries_total" => {
                out.resume_expiries_total = Some(value.max(0.0) as u64);
            }
            _ => {}
        }
    }
    out.sessions_active = sessions.round() as i64;
    out
}

/// Reads the gateway's `/metrics` (a new connection each time, closed after the answer, so
/// the reader adds the same one socket and one task to every reading).
pub struct Gauges {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    pid: Option<u32>,
}

/// One reading of the gateway.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GatewayState {
    /// `VmRSS`, KiB (with `--gateway-pid`).
    pub rss_kib: Option<u64>,
    /// Entries of `/proc/PID/fd`, counted from outside (no scrape in flight).
    pub fds: Option<u64>,
    /// OS threads.
    pub threads: Option<u64>,
    /// What `/metrics` said; `None` if it could not be read.
    pub metrics: Option<Scraped>,
}

impl GatewayState {
    fn sessions_active(&self) -> Option<i64> {
        self.metrics.map(|m| m.sessions_active)
    }

    fn tasks(&self) -> Option<u64> {
        self.metrics.and_then(|m| m.tasks_alive)
    }
}

impl Gauges {
    /// A reader of `url` (loopback, checked by the caller); `QRLINK_ADMIN_TOKEN`, when set, is
    /// sent as a Bearer token (without one the gateway answers loopback peers).
    pub fn new(url: String, pid: Option<u32>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| e.to_string())?;
        let token = std::env::var("QRLINK_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        Ok(Gauges {
            http,
            url,
            token,
            pid,
        })
    }

    /// The metrics URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Scrapes `/metrics`.
    pub async fn scrape(&self) -> Result<Scraped, String> {
        let mut req = self.http.get(&self.url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{}: {}", self.url, crate::control::short_error(&e)))?;
        if !resp.status().is_success() {
            return Err(format!(
                "{} answered {} (set QRLINK_ADMIN_TOKEN if the gateway has one)",
                self.url,
                resp.status().as_u16()
            ));
        }
        let text = resp
            .text()
            .await
            .map_err(|e| format!("{}: {e}", self.url))?;
        Ok(parse_metrics(&text))
    }

    /// Reads the gateway: `/metrics` first, then `/proc` once the scrape's socket is closed.
    pub async fn read(&self) -> GatewayState {
        let metrics = self.scrape().await.ok();
        let proc = self.pid.and_then(|p| procfs::sample(p, true).ok());
        GatewayState {
            rss_kib: proc.map(|s| s.rss_kib),
            fds: proc.and_then(|s| s.fds),
            threads: proc.map(|s| s.threads),
            metrics,
        }
    }

    /// Waits until the gateway has no active session (`limit` at most); the last reading,
    /// and whether it got there.
    pub async fn wait_idle(&self, limit: Duration) -> (GatewayState, bool) {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.read().await;
            if state.sessions_active() == Some(0) {
                return (state, true);
            }
            if Instant::now() >= deadline {
                return (state, false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// After the churn: waits (`limit` at most) until the gateway has no active session, then
    /// until its alive tasks and open fds are back to `before` or lower. With resume on (the
    /// default, 120 s), sessions that hung up stay detached, and counted active, until their
    /// grace ends them: `limit` must be longer than the gateway's grace.
    pub async fn drain(&self, before: &GatewayState, limit: Duration) -> Drain {
        let start = Instant::now();
        let deadline = start + limit;
        let mut drain = Drain::default();
        loop {
            let state = self.read().await;
            if drain.at_end.is_none() {
                drain.at_end = Some(state);
            }
            let t = start.elapsed().as_secs_f64();
            if drain.sessions_zero_after_s.is_none() && state.sessions_active() == Some(0) {
                drain.sessions_zero_after_s = Some(t);
                drain.at_sessions_zero = Some(state);
            }
            let back = |now: Option<u64>, was: Option<u64>| match (now, was) {
                (Some(now), Some(was)) => now <= was,
                _ => true,
            };
            if drain.sessions_zero_after_s.is_some()
                && back(state.tasks(), before.tasks())
                && back(state.fds, before.fds)
            {
                drain.back_to_baseline_after_s = Some(t);
                drain.after = state;
                return drain;
            }
            if Instant::now() >= deadline {
                drain.after = state;
                return drain;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// What waiting for the gateway to settle after the churn saw.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Drain {
    /// The first reading, right after the last session's end (detached sessions show here).
    pub at_end: Option<GatewayState>,
    /// Seconds from the last session's end until the gateway's active sessions read 0.
    pub sessions_zero_after_s: Option<f64>,
    /// The reading at that moment.
    pub at_sessions_zero: Option<GatewayState>,
    /// Seconds until tasks and fds were back to the baseline (or lower); `None`: not within
    /// `--drain-timeout`.
    pub back_to_baseline_after_s: Option<f64>,
    /// The final reading: the figures below are computed from it.
    pub after: GatewayState,
}

/// One criterion of the churn goal.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// What is checked.
    pub criterion: &'static str,
    /// Whether it holds (`false` also when it could not be measured).
    pub pass: bool,
    /// The figures behind it.
    pub detail: String,
}

/// What the gateway kept: the figures behind the leak verdicts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Leaks {
    /// after RSS / before RSS.
    pub rss_ratio: Option<f64>,
    /// The gateway's active sessions after (should be 0).
    pub leaked_sessions: Option<i64>,
    /// Alive tasks after − before.
    pub leaked_tasks: Option<i64>,
    /// Open fds after − before (`/proc/PID/fd`).
    pub leaked_fds: Option<i64>,
}

/// The churn part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    /// `--churn-mix` weights: close, drop, cancel.
    pub mix: [u32; 3],
    /// The gateway's metrics URL.
    pub metrics_url: String,
    /// After the warm-up, the gateway idle.
    pub before: GatewayState,
    /// Waiting for the gateway to settle, and the final reading.
    pub drain: Drain,
    /// Largest gateway RSS the sampler saw during the churn, KiB.
    pub peak_rss_kib: u64,
    /// Leaked sessions, tasks, fds and the RSS ratio.
    #[serde(flatten)]
    pub leaks: Leaks,
    /// One line per criterion.
    pub verdicts: Vec<Verdict>,
}

/// What the churn run itself did, for the verdicts.
pub struct RunFigures {
    /// Sessions started.
    pub started: u64,
    /// Sessions that left as planned.
    pub ok: u64,
    /// Failed sessions.
    pub failed: u64,
    /// Still running at the duration limit.
    pub aborted: u64,
    /// Offered rate, sessions/s.
    pub offered: f64,
    /// First QRs per second over the run.
    pub achieved: f64,
    /// The worst full second.
    pub worst_second: f64,
}

fn diff(after: Option<u64>, before: Option<u64>) -> Option<i64> {
    Some(after? as i64 - before? as i64)
}

fn show<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

/// The leak figures and verdicts (sessions, tasks, fds, RSS within 10%) from the baseline and
/// the drain; shared by `--churn` and `--resume-cycles`.
pub fn leak_verdicts(
    before: &GatewayState,
    drain: &Drain,
    peak_rss_kib: u64,
) -> (Leaks, Vec<Verdict>) {
    let after = drain.after;
    let rss_ratio = match (before.rss_kib, after.rss_kib) {
        (Some(b), Some(a)) if b > 0 => Some(a as f64 / b as f64),
        _ => None,
    };
    let leaked_sessions = after.sessions_active();
    let leaked_tasks = diff(after.tasks(), before.tasks());
    let leaked_fds = diff(after.fds, before.fds);
    let mib = |k: Option<u64>| k.map_or("?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
    let verdicts = vec![
        Verdict {
            criterion: "leaked sessions",
            pass: leaked_sessions == Some(0),
            detail: format!(
                "qrlink_sessions_active after: {}{}",
                show(leaked_sessions),
                drain
                    .sessions_zero_after_s
                    .map_or(String::new(), |t| format!(
                        " (0 within {t:.1} s of the end)"
                    ))
            ),
        },
        Verdict {
            criterion: "leaked tasks",
            pass: leaked_tasks.is_some_and(|d| d <= 0),
            detail: format!(
                "qrlink_runtime_tasks_alive {} before, {} after: {}",
                show(before.tasks()),
                show(after.tasks()),
                show(leaked_tasks)
            ),
        },
        Verdict {
            criterion: "leaked fds",
            pass: leaked_fds.is_some_and(|d| d <= 0),
            detail: format!(
                "/proc/PID/fd {} before, {} after: {}",
                show(before.fds),
                show(after.fds),
                show(leaked_fds)
            ),
        },
        Verdict {
            criterion: "RSS back within 10%",
            pass: rss_ratio.is_some_and(|r| r <= RSS_TOLERANCE),
            detail: format!(
                "{} MiB before, peak {:.1}, {} after: {}",
                mib(before.rss_kib),
                peak_rss_kib as f64 / 1024.0,
                mib(after.rss_kib),
                rss_ratio.map_or("?".to_owned(), |r| format!("{r:.2}×"))
            ),
        },
    ];
    let leaks = Leaks {
        rss_ratio,
        leaked_sessions,
        leaked_tasks,
        leaked_fds,
    };
    (leaks, verdicts)
}

/// Table lines for a gateway reading before, at the end, at sessions 0 and after.
pub fn state_lines(out: &mut String, before: &GatewayState, drain: &Drain) {
    let line = |s: &GatewayState| {
        format!(
            "RSS {} MiB, fds {} (its own count {}), tasks {}, threads {}, sessions active {} (detached {})",
            s.rss_kib
                .map_or("?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0)),
            show(s.fds),
            show(s.metrics.and_then(|m| m.open_fds)),
            show(s.tasks()),
            show(s.threads),
            show(s.sessions_active()),
            show(s.metrics.and_then(|m| m.sessions_detached)),
        )
    };
    let _ = writeln!(out, "  gateway before: {}", line(before));
    if let Some(e) = &drain.at_end {
        let _ = writeln!(out, "  at the end:     {}", line(e));
    }
    if let Some(z) = &drain.at_sessions_zero {
        let _ = writeln!(out, "  at sessions 0:  {}", line(z));
    }
    let _ = writeln!(out, "  gateway after:  {}", line(&drain.after));
}

/// One table line per verdict.
pub fn verdict_lines(out: &mut String, verdicts: &[Verdict]) {
    for v in verdicts {
        let _ = writeln!(
            out,
            "verdict {:<20} {}  {}",
            v.criterion,
            if v.pass { "PASS" } else { "FAIL" },
            v.detail
        );
    }
}

impl ChurnReport {
    /// Puts the figures and verdicts together.
    pub fn new(
        mix: Mix,
        metrics_url: String,
        before: GatewayState,
        drain: Drain,
        peak_rss_kib: u64,
        run: &RunFigures,
    ) -> ChurnReport {
        let (leaks, mut leak_verdicts) = leak_verdicts(&before, &drain, peak_rss_kib);
        let mut verdicts = vec![
            Verdict {
                criterion: "sessions",
                pass: run.failed == 0 && run.aborted == 0 && run.ok == run.started,
                detail: format!(
                    "{} of {} opened and closed, {} failed, {} aborted",
                    run.ok, run.started, run.failed, run.aborted
                ),
            },
            Verdict {
                criterion: "rate",
                pass: run.offered >= GOAL_RATE && run.achieved >= 0.99 * run.offered,
                detail: format!(
                    "achieved {:.0}/s of {:.0}/s offered (goal ≥ {GOAL_RATE:.0}/s, kept within 1%); worst full second {:.0}",
                    run.achieved, run.offered, run.worst_second
                ),
            },
        ];
        verdicts.append(&mut leak_verdicts);
        ChurnReport {
            mix: [mix.close, mix.drop, mix.cancel],
            metrics_url,
            before,
            drain,
            peak_rss_kib,
            leaks,
            verdicts,
        }
    }

    /// Lines for the table.
    pub fn table(&self, out: &mut String) {
        let [c, d, x] = self.mix;
        let _ = writeln!(
            out,
            "churn: mix close {c} / drop {d} / cancel {x}; gateway sessions 0 after {} s, tasks and fds back after {} s",
            self.drain
                .sessions_zero_after_s
                .map_or("?".to_owned(), |t| format!("{t:.1}")),
            self.drain
                .back_to_baseline_after_s
                .map_or("(not within the drain timeout)".to_owned(), |t| format!(
                    "{t:.1}"
                )),
        );
        state_lines(out, &self.before, &self.drain);
        verdict_lines(out, &self.verdicts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_parses_and_spreads_exits() {
        let mix = parse_mix("8, 1,1").unwrap();
        let exits: Vec<Exit> = (0..20).map(|i| mix.exit_of(i)).collect();
        assert_eq!(exits.iter().filter(|e| **e == Exit::Close).count(), 16);
        assert_eq!(exits.iter().filter(|e| **e == Exit::Drop).count(), 2);
        assert_eq!(exits[8], Exit::Drop);
        assert_eq!(exits[9], Exit::Cancel);
        assert!(parse_mix("0,0,0").is_err() && parse_mix("1,2").is_err());
        assert!(parse_mix("a,b,c").is_err());
        assert_eq!(parse_mix("0,1,0").unwrap().exit_of(7), Exit::Drop);
    }

    #[test]
    fn metrics_are_summed_over_providers() {
        let text = "# TYPE qrlink_sessions_active gauge\n\
            qrlink_sessions_active{provider=\"whatsapp\"} 2\n\
            qrlink_sessions_active{provider=\"telegram\"} 1\n\
            qrlink_sessions_active_other 9\n\
            # TYPE qrlink_runtime_tasks_alive gauge\n\
            qrlink_runtime_tasks_alive 17\n\
            qrlink_process_open_fds 23\n";
        assert_eq!(
            parse_metrics(text),
            Scraped {
                sessions_active: 3,
                tasks_alive: Some(17),
                open_fds: Some(23),
                ..Scraped::default()
            }
        );
        assert_eq!(parse_metrics("").tasks_alive, None);
    }

    #[test]
    fn verdicts_follow_the_figures() {
        let state = |rss, fds, tasks, sessions| GatewayState {
            rss_kib: Some(rss),
            fds: Some(fds),
            threads: Some(3),
            metrics: Some(Scraped {
                sessions_active: sessions,
                tasks_alive: Some(tasks),
                open_fds: Some(fds + 1),
                ..Scraped::default()
            }),
        };
        let run = RunFigures {
            started: 100,
            ok: 100,
            failed: 0,
            aborted: 0,
            offered: 500.0,
            achieved: 499.0,
            worst_second: 480.0,
        };
        let drain = Drain {
            after: state(1150, 12, 9, 0),
            ..Drain::default()
        };
        let r = ChurnReport::new(
            parse_mix("8,1,1").unwrap(),
            String::new(),
            state(1000, 10, 9, 0),
            drain,
            5000,
            &run,
        );
        let pass = |c: &str| r.verdicts.iter().find(|v| v.criterion == c).unwrap().pass;
        assert!(
            pass("sessions") && pass("rate") && pass("leaked sessions") && pass("leaked tasks")
        );
        assert!(!pass("leaked fds") && !pass("RSS back within 10%"));
        assert_eq!(
            (r.leaks.leaked_fds, r.leaks.leaked_tasks),
            (Some(2), Some(0))
        );
        let mut table = String::new();
        r.table(&mut table);
        assert!(
            table.contains("verdict leaked fds") && table.contains("FAIL"),
            "{table}"
        );
    }
}
