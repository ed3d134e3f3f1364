//! `qrlink-load`: the load generator of issue #6. Opens N link sessions against a qrlink gateway
//! (`--mode ws`) or against the do-it-yourself long-poll peer (`--mode express`), at a given
//! rate and concurrency, and reports sessions/s, first-QR latency, upstream answer → frame
//! latency (scans through the simulator's control API), client hang-up → upstream closed
//! latency, errors by kind, and the target's RSS and CPU per session from `/proc`.
//!
//! It refuses non-loopback targets, stops by itself (`--sessions` and `--duration-limit`), and
//! spreads its sockets over `--source-ips` when one address would run out of ports.
//!
//! # Layout
//! - `main.rs`: flags, the pacer, the sampler, putting the report together.
//! - `churn.rs`: `--churn`: how sessions leave, the gateway's readings before and after, the
//!   leak verdicts.
//! - `resume.rs`: `--resume-cycles`: sessions that hang up and resume (protocol v1.1), the
//!   resume → replay latency, the checks on the replayed frame.
//! - `drop_resume.rs`: `--resume-on-drop`: held sessions that lose their socket (a node
//!   killed) resume on other nodes on the link page's schedule; drops, resumes, losses and the
//!   drop → replay latency.
//! - `soak.rs`: `--soak`: a long mixed load (hang-ups, resumes, scans, timeouts, scripted
//!   upstream faults), the gateway read every few seconds, the flatness verdicts.
//! - `session.rs`: roles, per-session results, the shared context and live counters.
//! - `ws_mode.rs` / `express_mode.rs`: one simulated browser of each kind.
//! - `control.rs`: the simulator's control API (scan, faults, poll records).
//! - `procfs.rs`: RSS, CPU and fds of a process.
//! - `report.rs`: percentiles, the JSON report and the table.
//! - `target.rs`: loopback checks, source addresses, bound connects.
#![forbid(unsafe_code)]

mod churn;
mod control;
mod drop_resume;
mod express_mode;
mod procfs;
mod report;
mod resume;
mod session;
mod soak;
mod target;
mod ws_mode;

/// The same allocator as the gateway's: glibc's malloc took 14% of this tool's CPU at 2,500
/// sessions/s, time taken from the processes it measures on the same cores.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use control::SimControl;
use procfs::ProcSample;
use report::{HangUps, Latencies, Point, ProcReport, Rates, Report, Sessions, Stats};
use session::{Ctx, End, Live, Role, SessionResult};

/// Open many qrlink link sessions (or Express long-poll attempts) and measure them.
#[derive(Debug, Clone, Parser)]
#[command(name = "qrlink-load", version, about)]
struct Args {
    /// ws mode: the gateway (`ws://127.0.0.1:3000`; `/ws/link/{provider}` is appended unless
    /// the path already names it). express mode: the peer (`http://127.0.0.1:3200`).
    #[arg(long, default_value = "ws://127.0.0.1:3000")]
    url: String,
    /// `ws`: WebSockets against qrlink; `express`: the long-poll peer of benches/peer-express.
    #[arg(long, value_enum, default_value = "ws")]
    mode: Mode,
    /// Sessions to open in all.
    #[arg(long, default_value_t = 100)]
    sessions: u64,
    /// Sessions started per second (`3000` or `3000/s`).
    #[arg(long, default_value = "100/s", value_parser = parse_rate)]
    rate: f64,
    /// Most sessions open at once; the pacer waits for a free slot beyond it.
    #[arg(long, default_value_t = 10_000)]
    concurrency: usize,
    /// Provider to link.
    #[arg(long, default_value = "whatsapp")]
    provider: String,
    /// ws mode: the `qr` query parameter (`svg`, `text`, `raw`, comma separated).
    #[arg(long, default_value = "svg")]
    qr: String,
    /// How long each ordinary session stays open after its first QR, then hangs up (ms).
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// Scan a sample of sessions this long after their first QR (ms) through the simulator's
    /// control API, and measure the upstream answer → frame latency. Needs `--sim-url`.
    #[arg(long)]
    scan_after_ms: Option<u64>,
    /// How many sessions to scan (spread evenly over the run).
    #[arg(long, default_value_t = 100)]
    scan_sample: u64,
    /// How many sessions hang up mid-poll to measure hang-up → upstream closed. Needs `--sim-url`.
    #[arg(long, default_value_t = 0)]
    hangup_sample: u64,
    /// When the sampled sessions hang up, after their first QR (ms): the long poll has
    /// started by then.
    #[arg(long, default_value_t = 300)]
    hangup_after_ms: u64,
    /// The simulator's base URL (`http://127.0.0.1:3100`), for scans and poll records.
    #[arg(long)]
    sim_url: Option<String>,
    /// Stop after this long whatever is left (sessions still running are counted aborted).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    duration_limit: Duration,
    /// Bound on each step of a session: connect, first QR, scan → account, close.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    step_timeout: Duration,
    /// Source addresses to spread connections over, e.g. `127.0.0.2-127.0.0.20`.
    #[arg(long)]
    source_ips: Option<String>,
    /// The gateway's (or peer's) pid on this machine: sample its RSS, CPU and fds.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// The simulator's pid: sample it too (to see it is not the bottleneck).
    #[arg(long)]
    sim_pid: Option<u32>,
    /// Sessions to run (same rate, no hold) before measuring, so one-time costs of the target
    /// (connection pools, thread stacks, a JIT) stay out of the per-session figures.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// How long after every session had its first QR the plateau reading is taken.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    plateau_delay: Duration,
    /// How long after the last session ended the `after` reading is taken (and hang-ups
    /// are checked).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Sampler period.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    /// Worker threads of this tool's runtime; 1 runs everything on the main thread (a tokio
    /// current-thread runtime), which costs the least CPU per session (no wake-ups across
    /// threads), so the most of the machine's cores is left to what is measured.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the JSON report here (`-` for stdout; the table then goes to stderr).
    #[arg(long)]
    json: Option<PathBuf>,
    /// A name for this run in the report.
    #[arg(long)]
    label: Option<String>,
    /// Churn (ws mode): every session leaves right after its first QR (see `--churn-mix`),
    /// and the gateway is checked for leaks: RSS and fds (`--gateway-pid`), alive tasks and
    /// active sessions (its `/metrics`), read once idle after the warm-up and again once
    /// settled after the churn.
    #[arg(long)]
    churn: bool,
    /// Churn: weights of the ways to leave, `close,drop,cancel`: a WebSocket Close, a dropped
    /// TCP connection, `{"type":"cancel"}`.
    #[arg(long, default_value = "80,10,10", value_parser = churn::parse_mix)]
    churn_mix: churn::Mix,
    /// Churn: the gateway's metrics (default: `/metrics` on the `--url` host and port).
    /// `QRLINK_ADMIN_TOKEN` from the environment is sent if set.
    #[arg(long)]
    metrics_url: Option<String>,
    /// Churn: how long to wait, after the warm-up and after the churn, for the gateway's active
    /// sessions to reach 0 and (after) its tasks and fds to come back to the baseline.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Resume (ws mode, protocol v1.1): each resume session hangs up and resumes its session
    /// with `?resume=` this many times after its first QR, then ends it (`--resume-finish`).
    /// Without `--resume-sample` every session does, and the gateway is checked for leaks as
    /// in `--churn` (its readings before and after, `--drain-timeout`).
    #[arg(long, default_value_t = 0)]
    resume_cycles: u32,
    /// Resume: only this many sessions (spread over the run) resume; the others hold as usual,
    /// so the resumes run with that many sessions open around them. No leak check then.
    #[arg(long)]
    resume_sample: Option<u64>,
    /// Resume: how each cycle loses its socket: `close` (1001, as a reload), `drop` (TCP close,
    /// as a lost network), `mix` (alternating).
    #[arg(long, value_enum, default_value = "mix")]
    resume_hangup: resume::HangUp,
    /// Resume: after the last cycle, `cancel` the session or `leave` it detached for the
    /// gateway's grace to end (the leak check then needs `--drain-timeout` > the grace).
    #[arg(long, value_enum, default_value = "cancel")]
    resume_finish: resume::Finish,
    /// Resume: first QR → first hang-up (ms).
    #[arg(long, default_value_t = 0)]
    resume_after_ms: u64,
    /// Resume: hang-up → resume request (ms); 0 resumes at once, as a reload does.
    #[arg(long, default_value_t = 0)]
    resume_pause_ms: u64,
    /// Resume: alternate the resumes between this gateway (host and port; the path and query
    /// are `--url`'s) and `--url`'s, so that every resume moves the session to the other node
    /// of a cluster (cluster mode, README "Run several nodes").
    #[arg(long)]
    resume_url: Option<String>,
    /// Resume on drop (ws mode, protocol v1.1): held sessions whose socket is lost without a
    /// terminal frame (EOF, a reset, close 1006/1012: the node was killed or restarted) resume
    /// with their last token on these gateways (comma separated, round robin; the path and
    /// query are `--url`'s), as the link page does: attempts after about 0.25, 0.5, 1, 2 s, then
    /// every 5 s; a refused attempt (connection refused, HTTP 503, `gateway/overloaded`) is
    /// retried, `session/expired` loses the session. Reports drops, resumes, losses and the
    /// drop → replayed frame latency.
    #[arg(long, value_name = "URL[,URL…]")]
    resume_on_drop: Option<String>,
    /// Resume on drop: how long after the drop a session keeps trying (the gateway's default
    /// grace).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    resume_on_drop_within: Duration,
    /// Soak (ws mode): every session takes a role from `--soak-mix`, upstream faults are
    /// scripted on the simulator (`--soak-faults`, needs `--sim-url`), the gateway is read
    /// every `--soak-sample-every`, and its RSS, fds and tasks must be flat: the mean over the
    /// last `--soak-window` of the load within 10% of the mean over the window that starts at
    /// `--soak-steady-after`. After the load it drains as in `--churn` (`--drain-timeout`).
    #[arg(long)]
    soak: bool,
    /// Soak: weights of the roles, `hangup,resume,scan,timeout`: hang up after the first QR
    /// (Close 1001 and dropped connection alternating) and leave the session to the grace;
    /// `--resume-cycles` detach/resume cycles then `cancel`; scanned (`--scan-after-ms`);
    /// wait for the provider's `timeout` (run the simulator with short `--qr-ttl`/`--qr-count`).
    #[arg(long, default_value = "40,20,20,20", value_parser = soak::parse_mix)]
    soak_mix: soak::Mix,
    /// Soak: upstream faults scripted per second through the simulator's control API, in turn:
    /// proxy errors, 5xx, 429 with Retry-After, stalls, `resource_not_found` on a poll, late
    /// answers, delays (`soak::FAULTS`); 0 for none.
    #[arg(long, default_value_t = 10.0)]
    soak_faults: f64,
    /// Soak: how often the gateway is read (RSS, fds, tasks, sessions).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    soak_sample_every: Duration,
    /// Soak: when the first window starts, after the first session; the steady state, once
    /// the detached sessions stop piling up (the gateway's grace, 120 s by default, and more).
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    soak_steady_after: Duration,
    /// Soak: length of the first and last windows.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    soak_window: Duration,
    /// Soak: how long a timeout session waits for its `timeout` frame after its first QR.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout_wait: Duration,
}

impl Args {
    /// Whether the run checks the gateway for leaks: churn, and resume runs where every session
    /// resumes (with held sessions around, the gateway cannot come back to its baseline).
    fn leak_check(&self) -> bool {
        !self.soak && (self.churn || (self.resume_cycles > 0 && self.resume_sample.is_none()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// WebSocket sessions against qrlink.
    Ws,
    /// HTTP long-poll attempts against the Express peer.
    Express,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s");
    let rate: f64 = n.parse().map_err(|_| format!("{s:?} is not a rate"))?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err("the rate must be positive".to_owned())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // 0 and 1 both mean the current-thread runtime here.
    let runtime = match qrlink::config::runtime(args.threads.max(1)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qrlink-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qrlink-load: {e}");
            ExitCode::from(2)
        }
    }
}

/// Everything sampled while the load runs.
#[derive(Default)]
struct Readings {
    points: Vec<Point>,
    gateway_peak: u64,
    sim_peak: u64,
    self_peak: u64,
    peak_open: i64,
    /// (open sessions, gateway RSS KiB) while the ramp runs, for the marginal slope.
    ramp: Vec<(f64, f64)>,
    plateau: Option<PlateauReading>,
}

struct PlateauReading {
    open: i64,
    gateway: Option<ProcSample>,
    sim: Option<ProcSample>,
    me: Option<ProcSample>,
}

fn build_ctx(args: &Args) -> Result<Ctx, String> {
    let mut url = url::Url::parse(&args.url).map_err(|e| format!("--url {}: {e}", args.url))?;
    let target = target::loopback_addr(&url)?;
    match args.mode {
        Mode::Ws => {
            if !matches!(url.scheme(), "ws") {
                return Err("ws mode needs a ws:// URL (TLS is not supported)".to_owned());
            }
            if !url.path().contains("/ws/link/") {
                let path = format!(
                    "{}/ws/link/{}",
                    url.path().trim_end_matches('/'),
                    args.provider
                );
                url.set_path(&path);
            }
            if url.query().is_none() {
                url.query_pairs_mut().append_pair("qr", &args.qr);
            }
        }
        Mode::Express => {
            if url.scheme() != "http" {
                return Err("express mode needs an http:// URL".to_owned());
            }
        }
    }
    let sources = match &args.source_ips {
        Some(spec) => target::parse_source_ips(spec)?,
        None => Vec::new(),
    };
    let sim = match &args.sim_url {
        Some(s) => {
            let sim_url = url::Url::parse(s).map_err(|e| format!("--sim-url {s}: {e}"))?;
            target::loopback_addr(&sim_url)?;
            Some(SimControl::new(s).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    if args.churn && args.mode != Mode::Ws {
        return Err("--churn drives WebSocket sessions: ws mode only".to_owned());
    }
    if args.resume_cycles > 0 && (args.mode != Mode::Ws || args.churn) {
        return Err(
            "--resume-cycles drives WebSocket sessions: ws mode, without --churn".to_owned(),
        );
    }
    if args.soak && (args.mode != Mode::Ws || args.churn || args.resume_sample.is_some()) {
        return Err(
            "--soak drives WebSocket sessions: ws mode, without --churn or --resume-sample"
                .to_owned(),
        );
    }
    if args.soak && (sim.is_none() || args.scan_after_ms.is_none()) {
        return Err(
            "--soak scans and scripts faults: it needs --sim-url and --scan-after-ms".to_owned(),
        );
    }
    if args.soak && !(args.soak_faults >= 0.0 && args.soak_faults.is_finite()) {
        return Err("--soak-faults must be 0 or more per second".to_owned());
    }
    if sim.is_none() && (args.scan_after_ms.is_some() || args.hangup_sample > 0) {
        return Err("scans and hang-up measurements need --sim-url".to_owned());
    }
    let http = if args.mode == Mode::Express {
        let builder = || {
            reqwest::Client::builder()
                .tcp_nodelay(true)
                .pool_max_idle_per_host(usize::MAX)
        };
        let clients: Result<Vec<_>, _> = if sources.is_empty() {
            vec![builder().build()].into_iter().collect()
        } else {
            sources
                .iter()
                .map(|ip| builder().local_address(*ip).build())
                .collect()
        };
        clients.map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let on_drop = match &args.resume_on_drop {
        Some(_) if args.mode != Mode::Ws || args.churn || args.soak => {
            return Err(
                "--resume-on-drop resumes held WebSocket sessions: ws mode, without --churn or --soak"
                    .to_owned(),
            );
        }
        Some(list) => Some(drop_resume::Plan {
            nodes: drop_resume::parse_nodes(list, &url)?,
            within: args.resume_on_drop_within,
        }),
        None => None,
    };
    let resume_to = match &args.resume_url {
        Some(other) => {
            let other = url::Url::parse(other).map_err(|e| format!("--resume-url {other}: {e}"))?;
            let other_target = target::loopback_addr(&other)?;
            let mut moved = url.clone();
            moved
                .set_host(other.host_str())
                .map_err(|e| format!("--resume-url: {e}"))?;
            moved
                .set_port(other.port())
                .map_err(|()| "--resume-url: no port".to_owned())?;
            Some((
                other_target,
                moved.to_string().trim_end_matches('/').to_owned(),
            ))
        }
        None => None,
    };
    Ok(Ctx {
        target,
        resume_to,
        url: url.to_string().trim_end_matches('/').to_owned(),
        provider: args.provider.clone(),
        sources,
        http,
        sim,
        hold: Duration::from_millis(args.hold_ms),
        scan_after: Duration::from_millis(args.scan_after_ms.unwrap_or(0)),
        hangup_after: Duration::from_millis(args.hangup_after_ms),
        step_timeout: args.step_timeout,
        timeout_wait: args.timeout_wait,
        resume: resume::Plan {
            cycles: args.resume_cycles,
            hangup: args.resume_hangup,
            finish: args.resume_finish,
            after: Duration::from_millis(args.resume_after_ms),
            pause: Duration::from_millis(args.resume_pause_ms),
        },
        on_drop,
        live: Live::default(),
    })
}

/// The role of session `i`: soak roles by their mix; churn exits by the mix; every session resumes without a resume
/// sample; otherwise samples spread evenly, scans first, then hang-ups, then resumes.
fn role_of(args: &Args, i: u64) -> Role {
    if args.soak {
        return args.soak_mix.role_of(i);
    }
    if args.churn {
        return Role::Churn(args.churn_mix.exit_of(i));
    }
    if args.resume_cycles > 0 && args.resume_sample.is_none() {
        return Role::Resume;
    }
    let every = |k: u64| (k > 0).then(|| (args.sessions / k).max(1));
    if args.scan_after_ms.is_some()
        && let Some(stride) = every(args.scan_sample)
        && i % stride == 0
        && i / stride < args.scan_sample
    {
        return Role::Scan;
    }
    if let Some(stride) = every(args.hangup_sample) {
        let offset = stride / 2;
        if i % stride == offset && i / stride < args.hangup_sample {
            return Role::HangUp;
        }
    }
    if args.resume_cycles > 0
        && let Some(stride) = every(args.resume_sample.unwrap_or(0))
        && i % stride == stride / 4
        && i / stride < args.resume_sample.unwrap_or(0)
    {
        return Role::Resume;
    }
    Role::Hold
}

async fn run(args: Args) -> Result<(), String> {
    let ctx = Arc::new(build_ctx(&args)?);
    let leak_check = args.leak_check();
    // ws mode reads the gateway's /metrics before and after even without a leak check: the
    // detached sessions and resume counters go in the report.
    let gauges = if args.mode == Mode::Ws {
        let url = match &args.metrics_url {
            Some(u) => u.clone(),
            None => format!("http://{}/metrics", ctx.target),
        };
        let parsed = url::Url::parse(&url).map_err(|e| format!("--metrics-url {url}: {e}"))?;
        target::loopback_addr(&parsed)?;
        if leak_check && args.gateway_pid.is_none() {
            eprintln!(
                "qrlink-load: warning: without --gateway-pid the leak check has no RSS or fd figures"
            );
        }
        Some(churn::Gauges::new(url, args.gateway_pid)?)
    } else {
        None
    };
    if let Some(limit) = procfs::open_files_limit() {
        let need = args.sessions.min(args.concurrency as u64) + 64;
        if need > limit {
            eprintln!(
                "qrlink-load: warning: up to {need} sockets may be open but this process may \
                 open {limit} files; raise it first (ulimit -n 20000)"
            );
        }
    }
    if args.warmup > 0 {
        // Same rate, no holds, nothing kept: one-time allocations (pools, thread stacks, a
        // JIT) happen here, so the readings below see the cost of sessions only.
        let warm = Arc::new(Ctx {
            hold: Duration::ZERO,
            ..build_ctx(&args)?
        });
        let now = Instant::now();
        let run = pace(
            &args,
            &warm,
            args.warmup,
            (now, now + args.duration_limit),
            &|i| {
                if leak_check {
                    role_of(&args, i)
                } else if args.mode == Mode::Ws {
                    // Cancelled, not hung up: with resume on (the gateway's default) a hang-up
                    // leaves the session detached for the grace, into the measured run.
                    Role::Churn(session::Exit::Cancel)
                } else {
                    Role::Hold
                }
            },
            &AtomicU64::new(0),
        )
        .await;
        let failed = run
            .results
            .iter()
            .filter(|r| matches!(r.end, End::Failed(_)))
            .count();
        eprintln!(
            "qrlink-load: warm-up: {} sessions, {failed} failed",
            run.started
        );
        if let Some(g) = &gauges
            && leak_check
            && !g.wait_idle(args.drain_timeout).await.1
        {
            eprintln!("qrlink-load: warning: the gateway still has sessions after the warm-up");
        }
        tokio::time::sleep(args.settle).await;
    }
    // The churn's baseline: the gateway idle (no session), after the warm-up.
    let churn_before = match &gauges {
        Some(g) if leak_check => {
            let (state, idle) = g.wait_idle(args.drain_timeout).await;
            if state.metrics.is_none() {
                return Err(format!(
                    "cannot read {}: --churn and --resume-cycles need the gateway's metrics",
                    g.url()
                ));
            }
            if !idle {
                eprintln!("qrlink-load: warning: the gateway is not idle before the churn");
            }
            Some(state)
        }
        _ => None,
    };
    // The soak's baseline: after the warm-up, whose sessions cancel, so the gateway is idle
    // within moments.
    let soak_before = match &gauges {
        Some(g) if args.soak => Some(g.wait_idle(args.drain_timeout).await.0),
        _ => None,
    };
    let metrics_before = match (&churn_before, &gauges) {
        (Some(state), _) => state.metrics,
        (None, Some(g)) => g.scrape().await.ok(),
        _ => None,
    };
    let sample = |pid: Option<u32>, fds: bool| pid.and_then(|p| procfs::sample(p, fds).ok());
    let me = Some(std::process::id());
    let before = (
        sample(args.gateway_pid, true),
        sample(args.sim_pid, true),
        sample(me, false),
    );
    if args.gateway_pid.is_some() && before.0.is_none() {
        return Err(format!(
            "cannot read /proc/{}",
            args.gateway_pid.unwrap_or(0)
        ));
    }

    let start = Instant::now();
    let deadline = start + args.duration_limit;
    let readings = Arc::new(Mutex::new(Readings::default()));
    // u64::MAX until the pacer knows how many sessions it started.
    let started_total = Arc::new(AtomicU64::new(u64::MAX));
    let ramping = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sampler(
        args.clone(),
        ctx.clone(),
        readings.clone(),
        started_total.clone(),
        ramping.clone(),
        start,
    ));

    let soak_points = Arc::new(Mutex::new(Vec::new()));
    let injected = Arc::new(Mutex::new(soak::Injected::default()));
    let (mut soak_reader, mut injector) = (None, None);
    if let (true, Some(g)) = (args.soak, &gauges) {
        let reader = churn::Gauges::new(g.url().to_owned(), args.gateway_pid)?;
        soak_reader = Some(tokio::spawn(soak::sample(
            reader,
            args.soak_sample_every,
            start,
            ctx.clone(),
            args.sim_pid,
            soak_points.clone(),
        )));
        if let (true, Some(sim)) = (args.soak_faults > 0.0, ctx.sim.clone()) {
            injector = Some(tokio::spawn(soak::inject(
                sim,
                args.soak_faults,
                injected.clone(),
            )));
        }
    }

    let run = pace(
        &args,
        &ctx,
        args.sessions,
        (start, deadline),
        &|i| role_of(&args, i),
        &started_total,
    )
    .await;
    if let Some(injector) = injector {
        injector.abort();
    }
    let (results, started, last_start, aborted) =
        (run.results, run.started, run.last_start, run.aborted);
    let ended = Instant::now();
    ramping.store(false, Ordering::Relaxed);
    // Churn: an event (the gateway idle, its tasks and fds back), not a fixed sleep.
    let drain = match (&gauges, churn_before.as_ref().or(soak_before.as_ref())) {
        (Some(g), Some(before)) => Some(g.drain(before, args.drain_timeout).await),
        _ => {
            tokio::time::sleep(args.settle).await;
            None
        }
    };
    sampler.abort();
    if let Some(reader) = soak_reader {
        reader.abort();
    }
    let after = (
        sample(args.gateway_pid, true),
        sample(args.sim_pid, true),
        sample(me, false),
    );
    // After the /proc reading, so the scrape's socket is not counted in it.
    let metrics_after = match (&drain, &gauges) {
        (Some(d), _) => d.after.metrics,
        (None, Some(g)) => g.scrape().await.ok(),
        _ => None,
    };

    let mut report = summarize(
        &args, &ctx, &results, started, aborted, start, last_start, ended,
    );
    if !args.soak {
        // Not in a soak: hundreds of thousands of scans to look up.
        cross_check(&ctx, &results, &mut report).await;
    }
    let readings = std::mem::take(&mut *readings.lock().unwrap_or_else(|p| p.into_inner()));
    report.sessions.peak_open = readings.peak_open;
    let plateau = readings.plateau.as_ref();
    let plateau_open = plateau.map_or(0, |p| p.open);
    report.gateway = args.gateway_pid.map(|pid| {
        proc_report(
            pid,
            before.0,
            plateau.and_then(|p| p.gateway),
            plateau_open,
            readings.gateway_peak,
            after.0,
            started,
            slope_kib(&readings.ramp),
        )
    });
    report.simulator = args.sim_pid.map(|pid| {
        proc_report(
            pid,
            before.1,
            plateau.and_then(|p| p.sim),
            plateau_open,
            readings.sim_peak,
            after.1,
            started,
            None,
        )
    });
    report.load_generator = Some(proc_report(
        std::process::id(),
        before.2,
        plateau.and_then(|p| p.me),
        plateau_open,
        readings.self_peak,
        after.2,
        started,
        None,
    ));
    report.timeline = readings.points;
    report.detached =
        report::DetachedReport::new(metrics_before, metrics_after, report.gateway.as_ref());
    if args.resume_cycles > 0 {
        let leak = match (churn_before, drain) {
            (Some(before), Some(drain)) => Some(resume::LeakInput {
                before,
                drain,
                peak_rss_kib: readings.gateway_peak,
                aborted: report.sessions.aborted,
            }),
            _ => None,
        };
        report.resume = Some(resume::ResumeReport::new(
            &ctx.resume,
            &results,
            metrics_before,
            metrics_after,
            leak,
        ));
    }
    if let Some(plan) = &ctx.on_drop {
        report.resume_on_drop = Some(drop_resume::DropReport::new(plan, &results));
    }
    if let (Some(before), Some(drain)) = (soak_before, drain) {
        let settings = soak::Settings {
            mix: args.soak_mix,
            faults_per_s: args.soak_faults,
            sample_every: args.soak_sample_every,
            steady_after: args.soak_steady_after,
            window: args.soak_window,
            load: Duration::from_secs_f64(args.sessions as f64 / args.rate),
        };
        let points = std::mem::take(&mut *soak_points.lock().unwrap_or_else(|p| p.into_inner()));
        let faults = injected.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let run = soak::Run {
            started: report.sessions.started,
            failed: report.sessions.failed,
            aborted: report.sessions.aborted,
        };
        report.soak = Some(soak::SoakReport::new(
            &settings,
            faults,
            points,
            before,
            drain,
            readings.gateway_peak,
            &run,
        ));
    }
    if let (true, Some(g), Some(before), Some(drain)) = (args.churn, &gauges, churn_before, drain) {
        let figures = churn::RunFigures {
            started: report.sessions.started,
            ok: report.sessions.ok,
            failed: report.sessions.failed,
            aborted: report.sessions.aborted,
            offered: report.rate.offered_per_s,
            achieved: report.rate.achieved_per_s,
            worst_second: report.rate.sustained_min_per_s,
        };
        report.churn = Some(churn::ChurnReport::new(
            args.churn_mix,
            g.url().to_owned(),
            before,
            drain,
            readings.gateway_peak,
            &figures,
        ));
    }

    let table = report.table();
    let json = serde_json::to_string_pretty(&report).expect("the report serializes");
    match &args.json {
        Some(path) if path.as_os_str() == "-" => {
            eprint!("{table}");
            println!("{json}");
        }
        Some(path) => {
            print!("{table}");
            std::fs::write(path, json + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        None => print!("{table}"),
    }
    Ok(())
}

/// What the pacer saw.
struct PaceRun {
    results: Vec<SessionResult>,
    started: u64,
    last_start: Instant,
    aborted: u64,
}

/// Runs `n` sessions: session i starts at `start + i / rate`, when a concurrency slot is free;
/// whatever still runs at `deadline` is aborted. `started_total` learns how many started as
/// soon as the last one has.
async fn pace(
    args: &Args,
    ctx: &Arc<Ctx>,
    n: u64,
    (start, deadline): (Instant, Instant),
    role: &dyn Fn(u64) -> Role,
    started_total: &AtomicU64,
) -> PaceRun {
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks: JoinSet<SessionResult> = JoinSet::new();
    let mut results = Vec::with_capacity(n as usize);
    let mut started = 0u64;
    let mut last_start = start;
    let joined = |done: Result<SessionResult, tokio::task::JoinError>| {
        done.unwrap_or_else(|_| SessionResult::new(Role::Hold).fail("panic"))
    };
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate);
        if due >= deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = tokio::time::sleep_until(deadline.into()) => break,
        };
        // Reap finished sessions as we go, so a long run does not hold every task.
        while let Some(done) = tasks.try_join_next() {
            results.push(joined(done));
        }
        let role = role(i);
        let ctx = ctx.clone();
        let mode = args.mode;
        tasks.spawn(async move {
            let r = match mode {
                Mode::Ws => ws_mode::run(&ctx, i, role).await,
                Mode::Express => express_mode::run(&ctx, i, role).await,
            };
            drop(permit);
            r
        });
        started += 1;
        last_start = Instant::now();
    }
    started_total.store(started, Ordering::Relaxed);
    let mut aborted = 0u64;
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                None => break,
                Some(done) => results.push(joined(done)),
            },
            () = tokio::time::sleep_until(deadline.into()) => {
                aborted = tasks.len() as u64;
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    PaceRun {
        results,
        started,
        last_start,
        aborted,
    }
}

fn slope_kib(ramp: &[(f64, f64)]) -> Option<f64> {
    // Only the part of the ramp with a real spread of open sessions says anything.
    let top = ramp.iter().map(|p| p.0).fold(0.0, f64::max);
    let useful: Vec<(f64, f64)> = ramp.iter().copied().filter(|p| p.0 >= top * 0.1).collect();
    report::slope(&useful)
}

/// Samples the processes and the live counters every `sample_every`; takes the plateau reading.
async fn sampler(
    args: Args,
    ctx: Arc<Ctx>,
    readings: Arc<Mutex<Readings>>,
    started_total: Arc<AtomicU64>,
    ramping: Arc<AtomicBool>,
    start: Instant,
) {
    let mut tick = tokio::time::interval(args.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut settled_at: Option<Instant> = None;
    loop {
        tick.tick().await;
        let open = ctx.live.open.load(Ordering::Relaxed);
        let ready = ctx.live.ready.load(Ordering::Relaxed);
        let gateway = args.gateway_pid.and_then(|p| procfs::sample(p, false).ok());
        let sim = args.sim_pid.and_then(|p| procfs::sample(p, false).ok());
        let me = procfs::sample(std::process::id(), false).ok();
        let all_settled = ctx.live.settled() >= started_total.load(Ordering::Relaxed);
        let take_plateau = match settled_at {
            None if all_settled => {
                settled_at = Some(Instant::now());
                false
            }
            Some(at) => at.elapsed() >= args.plateau_delay,
            None => false,
        };
        let mut r = readings.lock().unwrap_or_else(|p| p.into_inner());
        r.peak_open = r.peak_open.max(open);
        r.gateway_peak = r.gateway_peak.max(gateway.map_or(0, |s| s.rss_kib));
        r.sim_peak = r.sim_peak.max(sim.map_or(0, |s| s.rss_kib));
        r.self_peak = r.self_peak.max(me.map_or(0, |s| s.rss_kib));
        if let Some(g) = gateway
            && settled_at.is_none()
            && ramping.load(Ordering::Relaxed)
        {
            r.ramp.push((open as f64, g.rss_kib as f64));
        }
        r.points.push(Point {
            t_ms: start.elapsed().as_millis() as u64,
            open,
            ready,
            gateway_rss_kib: gateway.map_or(0, |s| s.rss_kib),
            gateway_cpu_ms: gateway.map_or(0, |s| s.cpu_ms),
        });
        if take_plateau && r.plateau.is_none() {
            drop(r);
            // fds are counted here only: reading a directory of 20,000 entries is not free.
            let reading = PlateauReading {
                open: ctx.live.open.load(Ordering::Relaxed),
                gateway: args.gateway_pid.and_then(|p| procfs::sample(p, true).ok()),
                sim: args.sim_pid.and_then(|p| procfs::sample(p, true).ok()),
                me: procfs::sample(std::process::id(), false).ok(),
            };
            readings.lock().unwrap_or_else(|p| p.into_inner()).plateau = Some(reading);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn proc_report(
    pid: u32,
    before: Option<ProcSample>,
    plateau: Option<ProcSample>,
    plateau_open: i64,
    peak: u64,
    after: Option<ProcSample>,
    started: u64,
    slope: Option<f64>,
) -> ProcReport {
    let per_open = match (before, plateau) {
        (Some(b), Some(p)) if plateau_open > 0 => {
            Some((p.rss_kib as f64 - b.rss_kib as f64) / plateau_open as f64)
        }
        _ => None,
    };
    let per_started = |from: Option<ProcSample>, to: Option<ProcSample>| match (from, to) {
        (Some(a), Some(b)) if started > 0 => {
            Some(b.cpu_ms.saturating_sub(a.cpu_ms) as f64 / started as f64)
        }
        _ => None,
    };
    ProcReport {
        pid,
        before,
        plateau,
        plateau_open,
        peak_rss_kib: peak,
        after,
        rss_per_open_session_kib: per_open,
        rss_slope_kib_per_session: slope,
        rss_after_vs_before_pct: match (before, after) {
            (Some(b), Some(a)) if b.rss_kib > 0 => {
                Some((a.rss_kib as f64 - b.rss_kib as f64) * 100.0 / b.rss_kib as f64)
            }
            _ => None,
        },
        cpu_ms_per_session_to_plateau: per_started(before, plateau),
        cpu_ms_per_session_total: per_started(before, after),
    }
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &Args,
    ctx: &Ctx,
    results: &[SessionResult],
    started: u64,
    aborted: u64,
    start: Instant,
    last_start: Instant,
    ended: Instant,
) -> Report {
    let micros = |f: &dyn Fn(&SessionResult) -> Option<Duration>| -> Vec<i64> {
        results
            .iter()
            .filter_map(f)
            .map(|d| d.as_micros() as i64)
            .collect()
    };
    let mut outcomes = std::collections::BTreeMap::new();
    let mut errors = std::collections::BTreeMap::new();
    let mut ok = 0;
    let mut failed = 0;
    for r in results {
        *outcomes.entry(r.end.name().to_owned()).or_insert(0u64) += 1;
        match &r.end {
            End::Failed(kind) => {
                failed += 1;
                *errors.entry(kind.clone()).or_insert(0u64) += 1;
            }
            End::Aborted => {}
            _ => ok += 1,
        }
    }
    if aborted > 0 {
        *outcomes.entry("aborted".to_owned()).or_insert(0) += aborted;
    }
    let qr_times: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.first_qr_at)
        .map(|t| t - start)
        .collect();
    let last_qr = qr_times.iter().max().copied().unwrap_or_default();
    let mut per_second = vec![0u64; last_qr.as_secs() as usize + 1];
    for t in &qr_times {
        per_second[t.as_secs() as usize] += 1;
    }
    let ramp = last_start - start;
    // Full seconds inside the ramp; the last, partial one would understate the rate.
    let full = ramp.as_secs() as usize;
    let sustained = if full >= 1 {
        per_second[..full.min(per_second.len())]
            .iter()
            .copied()
            .min()
            .unwrap_or(0) as f64
    } else {
        0.0
    };
    let achieved = if last_qr > Duration::ZERO {
        qr_times.len() as f64 / last_qr.as_secs_f64()
    } else {
        0.0
    };
    let mut sizes: Vec<usize> = results
        .iter()
        .filter(|r| r.first_qr_bytes > 0)
        .map(|r| r.first_qr_bytes)
        .collect();
    sizes.sort_unstable();
    Report {
        label: args.label.clone(),
        mode: format!("{:?}", args.mode).to_lowercase(),
        url: ctx.url.clone(),
        provider: args.provider.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        sessions: Sessions {
            planned: args.sessions,
            started,
            reached_qr: qr_times.len() as u64,
            ok,
            failed,
            aborted,
            peak_open: 0,
        },
        outcomes,
        errors,
        rate: Rates {
            offered_per_s: args.rate,
            started_per_s: if ramp > Duration::ZERO {
                started.saturating_sub(1) as f64 / ramp.as_secs_f64()
            } else {
                0.0
            },
            achieved_per_s: achieved,
            sustained_min_per_s: if full >= 1 { sustained } else { achieved },
            first_qrs_per_second: per_second,
            ramp_s: ramp.as_secs_f64(),
            wall_s: (ended - start).as_secs_f64(),
        },
        latency_ms: Latencies {
            connect: Stats::of_micros(micros(&|r| r.connect)),
            first_qr: Stats::of_micros(micros(&|r| r.first_qr)),
            start_to_first_qr: Stats::of_micros(micros(&|r| r.start_to_qr)),
            ..Latencies::default()
        },
        first_qr_bytes_p50: sizes.get(sizes.len() / 2).copied().unwrap_or(0),
        ..Report::default()
    }
}

/// Matches the sampled scans and hang-ups with the simulator's poll records.
async fn cross_check(ctx: &Ctx, results: &[SessionResult], report: &mut Report) {
    let Some(sim) = &ctx.sim else {
        return;
    };
    let mut frames = Vec::new();
    let mut hangups = Vec::new();
    let mut counts = HangUps::default();
    for r in results {
        let Some(id) = &r.intent_id else {
            continue;
        };
        if let Some(received) = r.account_at_us {
            let polls = sim.polls(id).await.unwrap_or_default();
            let answered = polls.iter().rev().find(|p| {
                p.outcome.kind == "answered" && p.outcome.object.as_deref() == Some("Account")
            });
            match answered.and_then(|p| p.ended) {
                Some(at) => frames.push(received - at),
                None => report.frames_unmatched += 1,
            }
        }
        if let Some(hung_up) = r.hung_up_at_us {
            counts.sampled += 1;
            let polls = sim.polls(id).await.unwrap_or_default();
            let last = polls.iter().rev().find(|p| p.started <= hung_up + 1_000);
            match last {
                Some(p) if p.outcome.kind == "hung_up" => {
                    counts.upstream_closed += 1;
                    if let Some(at) = p.ended {
                        hangups.push(at - hung_up);
                    }
                }
                Some(p) if p.outcome.kind == "pending" => counts.upstream_still_open += 1,
                Some(p) if p.ended.is_some_and(|at| at > hung_up) => {
                    counts.upstream_answered_after_hangup += 1;
                }
                _ => counts.other += 1,
            }
        }
    }
    report.latency_ms.frame = Stats::of_micros(frames);
    report.latency_ms.hangup_to_upstream_closed = Stats::of_micros(hangups);
    report.hangups = counts;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let argv = ["qrlink-load"].iter().chain(extra.iter());
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn rates_parse_with_or_without_per_second() {
        assert_eq!(parse_rate("3000/s"), Ok(3000.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert!(parse_rate("0").is_err() && parse_rate("fast").is_err());
    }

    #[test]
    fn samples_are_spread_and_scans_win_over_hang_ups() {
        let a = args(&[
            "--sessions",
            "100",
            "--scan-after-ms",
            "10",
            "--scan-sample",
            "10",
            "--hangup-sample",
            "10",
        ]);
        let roles: Vec<Role> = (0..100).map(|i| role_of(&a, i)).collect();
        assert_eq!(roles.iter().filter(|r| **r == Role::Scan).count(), 10);
        assert_eq!(roles.iter().filter(|r| **r == Role::HangUp).count(), 10);
        assert_eq!(roles[0], Role::Scan);
        assert_eq!(roles[5], Role::HangUp);
        let none = args(&["--sessions", "100", "--hangup-sample", "0"]);
        assert!((0..100).all(|i| role_of(&none, i) == Role::Hold));
    }

    #[test]
    fn the_link_path_is_appended_to_a_bare_gateway_url() {
        let ctx = build_ctx(&args(&["--url", "ws://127.0.0.1:3000"])).unwrap();
        assert_eq!(ctx.url, "ws://127.0.0.1:3000/ws/link/whatsapp?qr=svg");
        assert!(build_ctx(&args(&["--url", "ws://192.0.2.7:3000"])).is_err());
    }

    #[test]
    fn resume_on_drop_takes_the_link_path_and_refuses_other_modes() {
        let ctx = build_ctx(&args(&[
            "--url",
            "ws://127.0.0.1:3191",
            "--resume-on-drop",
            "ws://127.0.0.1:3192,ws://127.0.0.1:3193",
            "--resume-on-drop-within",
            "30s",
        ]))
        .unwrap();
        let plan = ctx.on_drop.as_ref().unwrap();
        assert_eq!(
            plan.nodes[0].1,
            "ws://127.0.0.1:3192/ws/link/whatsapp?qr=svg"
        );
        assert_eq!(plan.within, Duration::from_secs(30));
        assert!(
            build_ctx(&args(&["--url", "ws://127.0.0.1:3191"]))
                .unwrap()
                .on_drop
                .is_none()
        );
        for extra in [
            ["--churn"].as_slice(),
            &["--mode", "express", "--url", "http://127.0.0.1:1"],
        ] {
            let mut argv = vec!["--resume-on-drop", "ws://127.0.0.1:3192"];
            argv.extend_from_slice(extra);
            let err = build_ctx(&args(&argv)).unwrap_err();
            assert!(err.contains("--resume-on-drop"), "{err}");
        }
        let err = build_ctx(&args(&["--resume-on-drop", "ws://192.0.2.7:1"])).unwrap_err();
        assert!(
            err.contains("loopback") || err.contains("192.0.2.7"),
            "{err}"
        );
    }
}
