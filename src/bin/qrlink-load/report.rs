//! The report: latency percentiles, rates, outcomes, errors and process figures, as JSON and
//! as a table for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::procfs::ProcSample;

/// Latency summary in milliseconds (µs precision), nearest-rank percentiles.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Number of measurements.
    pub n: usize,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Stats {
    /// Summarizes microsecond measurements (may be negative: cross-process clock readings).
    pub fn of_micros(mut us: Vec<i64>) -> Stats {
        if us.is_empty() {
            return Stats::default();
        }
        us.sort_unstable();
        let n = us.len();
        let at = |q: f64| {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            us[rank - 1] as f64 / 1000.0
        };
        Stats {
            n,
            min: us[0] as f64 / 1000.0,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: us[n - 1] as f64 / 1000.0,
            mean: us.iter().sum::<i64>() as f64 / n as f64 / 1000.0,
        }
    }
}

/// Session counts.
#[derive(Debug, Default, Serialize)]
pub struct Sessions {
    /// Asked for.
    pub planned: u64,
    /// Started before the duration limit.
    pub started: u64,
    /// Got their first QR.
    pub reached_qr: u64,
    /// Ended as their role planned (hung up, account, or provider timeout), with no error.
    pub ok: u64,
    /// Ended with an error (see `errors`).
    pub failed: u64,
    /// Still running at the duration limit.
    pub aborted: u64,
    /// Most sessions open at once, as seen by the sampler.
    pub peak_open: i64,
}

/// Throughput.
#[derive(Debug, Default, Serialize)]
pub struct Rates {
    /// Offered start rate, sessions/s.
    pub offered_per_s: f64,
    /// Sessions started per second of the ramp (start of the first to start of the last).
    pub started_per_s: f64,
    /// First QRs per second, first start to last first QR.
    pub achieved_per_s: f64,
    /// The worst full second of the ramp (first QRs in that second).
    pub sustained_min_per_s: f64,
    /// First QRs in each second from the start.
    pub first_qrs_per_second: Vec<u64>,
    /// Seconds from the first start to the last start.
    pub ramp_s: f64,
    /// Seconds from the first start to the last session's end.
    pub wall_s: f64,
}

/// The latencies.
#[derive(Debug, Default, Serialize)]
pub struct Latencies {
    /// TCP connect + WebSocket handshake (ws mode).
    pub connect: Stats,
    /// ws: upgrade → first `qr` frame; express: `POST /api/intent` → its answer.
    pub first_qr: Stats,
    /// Session start (before connecting) → first QR.
    pub start_to_first_qr: Stats,
    /// Simulator's answer to the scanned poll (`ended` of its record) → `account` received.
    pub frame: Stats,
    /// Client hang-up → the simulator saw the upstream poll close (`hung_up` record `ended`).
    pub hangup_to_upstream_closed: Stats,
}

/// What became of the sampled hang-ups.
#[derive(Debug, Default, Serialize)]
pub struct HangUps {
    /// Sessions that hung up mid-poll on purpose.
    pub sampled: u64,
    /// Whose upstream poll the simulator saw closed.
    pub upstream_closed: u64,
    /// Whose upstream poll was still open when the report was made (`settle` after the end).
    pub upstream_still_open: u64,
    /// Whose upstream poll stayed open until the simulator answered it (a QR rotation): the
    /// hang-up never reached the upstream.
    pub upstream_answered_after_hangup: u64,
    /// Whose upstream poll had been answered before the hang-up, or had not started.
    pub other: u64,
}

/// Figures of one process measured from `/proc`.
#[derive(Debug, Default, Serialize)]
pub struct ProcReport {
    /// Its pid.
    pub pid: u32,
    /// Before the first session.
    pub before: Option<ProcSample>,
    /// `plateau_delay` after every session had its first QR (or failed): all held sessions open.
    pub plateau: Option<ProcSample>,
    /// Sessions open at the plateau reading.
    pub plateau_open: i64,
    /// Largest RSS seen, KiB.
    pub peak_rss_kib: u64,
    /// `settle` after the last session ended.
    pub after: Option<ProcSample>,
    /// (plateau RSS − before RSS) / sessions open at the plateau, KiB.
    pub rss_per_open_session_kib: Option<f64>,
    /// Least-squares slope of RSS over open sessions during the ramp, KiB per session: the
    /// marginal cost, free of one-time allocations.
    pub rss_slope_kib_per_session: Option<f64>,
    /// (after RSS − before RSS) / before RSS, percent: memory not given back.
    pub rss_after_vs_before_pct: Option<f64>,
    /// CPU from before to the plateau / sessions started, ms: the cost of a pending attempt.
    pub cpu_ms_per_session_to_plateau: Option<f64>,
    /// CPU from before to after / sessions started, ms: the whole life of a session.
    pub cpu_ms_per_session_total: Option<f64>,
}

/// One point of the sampler's time series.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Milliseconds since the first start.
    pub t_ms: u64,
    /// Sessions open.
    pub open: i64,
    /// Sessions that had their first QR so far.
    pub ready: u64,
    /// Gateway RSS, KiB (0 without `--gateway-pid`).
    pub gateway_rss_kib: u64,
    /// Gateway CPU time so far, ms.
    pub gateway_cpu_ms: u64,
}

/// The whole report.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// `--label`.
    pub label: Option<String>,
    /// `ws` or `express`.
    pub mode: String,
    /// What was loaded.
    pub url: String,
    /// Provider linked.
    pub provider: String,
    /// The command line, for the record.
    pub command: String,
    /// Session counts.
    pub sessions: Sessions,
    /// Sessions by how they ended.
    pub outcomes: BTreeMap<String, u64>,
    /// Failed sessions by error kind.
    pub errors: BTreeMap<String, u64>,
    /// Throughput.
    pub rate: Rates,
    /// Latencies, ms.
    pub latency_ms: Latencies,
    /// Size of the first QR message (bytes), median.
    pub first_qr_bytes_p50: usize,
    /// Sampled hang-ups.
    pub hangups: HangUps,
    /// Sampled scans that could not be matched to a simulator answer.
    pub frames_unmatched: u64,
    /// The gateway (or peer) process, with `--gateway-pid`.
    pub gateway: Option<ProcReport>,
    /// The simulator process, with `--sim-pid`.
    pub simulator: Option<ProcReport>,
    /// This load generator.
    pub load_generator: Option<ProcReport>,
    /// The sampler's series (gateway figures when a pid was given).
    pub timeline: Vec<Point>,
    /// `--churn`: the gateway before and after, and the leak verdicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<crate::churn::ChurnReport>,
    /// `--resume-cycles`: the cycles, the resume → replay latency, the checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<crate::resume::ResumeReport>,
    /// `--resume-on-drop`: the drops, resumes, losses and the drop → replay latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_on_drop: Option<crate::drop_resume::DropReport>,
    /// Sessions the run left detached (protocol v1.1), and what they cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detached: Option<DetachedReport>,
    /// `--soak`: the readings every `--soak-sample-every`, the windows and the flatness verdicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<crate::soak::SoakReport>,
}

/// Sessions the run left detached and what each costs the gateway. With resume on (the
/// gateway's default grace is 120 s) a session whose page hung up is kept, with no socket and no
/// upstream request, until its grace passes; the `after` reading (`--settle` after the last
/// session) comes well within it, so every session that hung up is still there.
#[derive(Debug, Clone, Serialize)]
pub struct DetachedReport {
    /// `qrlink_sessions_detached` before the run.
    pub before: i64,
    /// And after (`--settle` after the last session ended, or after the drain).
    pub after: i64,
    /// Gateway RSS before the run, KiB.
    pub rss_before_kib: Option<u64>,
    /// Gateway RSS after, KiB.
    pub rss_after_kib: Option<u64>,
    /// (after RSS − before RSS) / (after − before detached), KiB.
    pub rss_per_detached_session_kib: Option<f64>,
    /// The same run's attached figure: (plateau − before) / sessions open at the plateau, KiB.
    pub rss_per_attached_session_kib: Option<f64>,
}

impl DetachedReport {
    /// From the gateway's metrics before and after and its `/proc` figures; `None` unless the
    /// run left sessions detached.
    pub fn new(
        before: Option<crate::churn::Scraped>,
        after: Option<crate::churn::Scraped>,
        gateway: Option<&ProcReport>,
    ) -> Option<DetachedReport> {
        let before_n = before.and_then(|m| m.sessions_detached).unwrap_or(0);
        let after_n = after?.sessions_detached?;
        if after_n <= before_n {
            return None;
        }
        let rss = |s: Option<&ProcSample>| s.map(|s| s.rss_kib);
        let rss_before = gateway.and_then(|g| rss(g.before.as_ref()));
        let rss_after = gateway.and_then(|g| rss(g.after.as_ref()));
        Some(DetachedReport {
            before: before_n,
            after: after_n,
            rss_before_kib: rss_before,
            rss_after_kib: rss_after,
            rss_per_detached_session_kib: match (rss_before, rss_after) {
                (Some(b), Some(a)) => Some((a as f64 - b as f64) / (after_n - before_n) as f64),
                _ => None,
            },
            rss_per_attached_session_kib: gateway.and_then(|g| g.rss_per_open_session_kib),
        })
    }
}

fn row(out: &mut String, name: &str, s: &Stats) {
    if s.n == 0 {
        let _ = writeln!(out, "  {name:<26} {:>7}", "-");
        return;
    }
    let _ = writeln!(
        out,
        "  {name:<26} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        s.n, s.p50, s.p90, s.p99, s.max
    );
}

fn proc_lines(out: &mut String, name: &str, p: &ProcReport) {
    let mib = |k: u64| k as f64 / 1024.0;
    let rss =
        |s: &Option<ProcSample>| s.map_or("-".to_owned(), |s| format!("{:.1}", mib(s.rss_kib)));
    let fds = |s: &Option<ProcSample>| {
        s.and_then(|s| s.fds)
            .map_or("-".to_owned(), |f| f.to_string())
    };
    let _ = writeln!(
        out,
        "{name} pid {}: RSS MiB before {} / plateau {} ({} open) / peak {:.1} / after {}; fds {} / {} / {}",
        p.pid,
        rss(&p.before),
        rss(&p.plateau),
        p.plateau_open,
        mib(p.peak_rss_kib),
        rss(&p.after),
        fds(&p.before),
        fds(&p.plateau),
        fds(&p.after),
    );
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v:.2} {unit}"));
    let _ = writeln!(
        out,
        "  memory/session {} (slope {}), after vs before {}; CPU/session {} to plateau, {} total",
        opt(p.rss_per_open_session_kib, "KiB"),
        opt(p.rss_slope_kib_per_session, "KiB"),
        opt(p.rss_after_vs_before_pct, "%"),
        opt(p.cpu_ms_per_session_to_plateau, "ms"),
        opt(p.cpu_ms_per_session_total, "ms"),
    );
}

impl Report {
    /// The table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let s = &self.sessions;
        let _ = writeln!(
            out,
            "qrlink-load {}{} {} provider={}",
            self.mode,
            self.label
                .as_ref()
                .map_or(String::new(), |l| format!(" [{l}]")),
            self.url,
            self.provider
        );
        let _ = writeln!(
            out,
            "sessions: planned {} started {} first-QR {} ok {} failed {} aborted {} peak-open {}",
            s.planned, s.started, s.reached_qr, s.ok, s.failed, s.aborted, s.peak_open
        );
        let r = &self.rate;
        let _ = writeln!(
            out,
            "rate: offered {:.0}/s started {:.0}/s achieved {:.0}/s (worst full second {:.0}/s); ramp {:.2} s, wall {:.2} s",
            r.offered_per_s,
            r.started_per_s,
            r.achieved_per_s,
            r.sustained_min_per_s,
            r.ramp_s,
            r.wall_s
        );
        let _ = writeln!(
            out,
            "  {:<26} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "n", "p50", "p90", "p99", "max"
        );
        let l = &self.latency_ms;
        row(&mut out, "connect+handshake", &l.connect);
        row(&mut out, "first qr", &l.first_qr);
        row(&mut out, "start -> first qr", &l.start_to_first_qr);
        row(&mut out, "upstream answer -> frame", &l.frame);
        row(
            &mut out,
            "hang-up -> upstream closed",
            &l.hangup_to_upstream_closed,
        );
        if self.hangups.sampled > 0 {
            let h = &self.hangups;
            let _ = writeln!(
                out,
                "hang-ups: sampled {} upstream closed {} still open {} answered later {} other {}",
                h.sampled,
                h.upstream_closed,
                h.upstream_still_open,
                h.upstream_answered_after_hangup,
                h.other
            );
        }
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            out,
            "outcomes: {}; first QR message {} bytes",
            outcomes.join(", "),
            self.first_qr_bytes_p50
        );
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "errors: {}", errors.join(", "));
        }
        if let Some(p) = &self.gateway {
            proc_lines(&mut out, "gateway", p);
        }
        if let Some(p) = &self.simulator {
            proc_lines(&mut out, "simulator", p);
        }
        if let Some(p) = &self.load_generator {
            proc_lines(&mut out, "load generator", p);
        }
        if let Some(d) = &self.detached {
            let kib = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} KiB"));
            let mib =
                |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{:.1}", v as f64 / 1024.0));
            let _ = writeln!(
                out,
                "detached: {} -> {} sessions, gateway RSS {} -> {} MiB: {} per detached session ({} per attached)",
                d.before,
                d.after,
                mib(d.rss_before_kib),
                mib(d.rss_after_kib),
                kib(d.rss_per_detached_session_kib),
                kib(d.rss_per_attached_session_kib),
            );
        }
        if let Some(r) = &self.resume {
            r.table(&mut out);
        }
        if let Some(d) = &self.resume_on_drop {
            d.table(&mut out);
        }
        if let Some(c) = &self.churn {
            c.table(&mut out);
        }
        if let Some(s) = &self.soak {
            s.table(&mut out);
        }
        out
    }
}

/// Least-squares slope of y over x; `None` without at least 5 points spread over x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 5 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_in_milliseconds() {
        let s = Stats::of_micros((1..=100).map(|v| v * 1000).collect());
        assert_eq!(
            (s.n, s.p50, s.p90, s.p99, s.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(Stats::of_micros(vec![]).n, 0);
    }

    #[test]
    fn slope_fits_a_line() {
        let pts: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 7.0)).collect();
        assert!((slope(&pts).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(slope(&pts[..3]), None);
    }
}
