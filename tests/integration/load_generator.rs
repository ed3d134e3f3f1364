//! The load generator of issue #6 (`qrlink-load`) runs against a real gateway and simulator and
//! writes a report whose figures make sense.
//!
//! The gateways here run with resume on (protocol v1.1, as users run them; `TestGateway` turns
//! it off by default), with a grace of a few seconds instead of the default 120 s so that the
//! sessions that hung up and were kept detached expire within the tests' bounds.
//!
//! Each gateway is the `qrlink` binary in a process of its own: the reports read its metrics
//! (`qrlink_sessions_active`, resumes, tasks alive) and its fds, which in this process would
//! also count every other test's sessions running beside it.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use crate::common::binary::{Running, start_binary_with};
use crate::common::{TestSimulator, WAIT, WsClient};
use qrlink::simulator::SimulatorConfig;
use serde_json::Value;

/// Load runs want the machine's cores to themselves: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A simulator in this process and a gateway process in front of it.
struct Separate {
    sim: TestSimulator,
    bin: Running,
}

impl Separate {
    /// The gateway with the test harness's upstream settings (short retries), admission limits
    /// raised (every session comes from one loopback address), then `args`.
    async fn start(sim: SimulatorConfig, args: &[&str]) -> Separate {
        let sim = TestSimulator::start(sim).await;
        let mut all = vec![
            "--upstream-retry-budget",
            "3s",
            "--upstream-backoff",
            "20ms",
            "--max-sessions-per-ip",
            "100000",
            "--sessions-per-ip-per-minute",
            "100000",
        ];
        all.extend_from_slice(args);
        // Its address comes from the one `qrlink` info line; no line per session.
        let bin =
            start_binary_with(&sim.url(), "warn,qrlink=info,qrlink::http=warn", &all, &[]).await;
        Separate { sim, bin }
    }

    fn pid(&self) -> String {
        self.bin.child.id().expect("the gateway runs").to_string()
    }

    /// Waits until the gateway has no session left, attached or detached, from its watch
    /// socket: the snapshot, then `opened` and `closed` events.
    async fn wait_for_no_sessions(&self) {
        let mut watcher = WsClient::connect(&format!("ws://{}/ws/watch", self.bin.addr)).await;
        let mut open: HashSet<String> = HashSet::new();
        tokio::time::timeout(WAIT, async {
            loop {
                let event: Value = serde_json::from_str(&watcher.ws_text().await).unwrap();
                let id = event["session"].as_str().map(str::to_owned);
                match (event["type"].as_str(), id) {
                    (Some("snapshot"), _) => {
                        for s in event["sessions"].as_array().unwrap() {
                            open.insert(s["id"].as_str().unwrap().to_owned());
                        }
                    }
                    (Some("opened"), Some(id)) => {
                        open.insert(id);
                    }
                    (Some("closed"), Some(id)) => {
                        open.remove(&id);
                    }
                    _ => {}
                }
                if open.is_empty() && event["type"] != "lagged" {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("expected no sessions, still {open:?}"));
    }
}

/// Runs `qrlink-load` with `args` and returns its JSON report (written to stdout).
async fn load(args: &[String]) -> Value {
    load_within(args, WAIT * 4).await
}

/// [`load`] with its own bound.
async fn load_within(args: &[String], bound: Duration) -> Value {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_qrlink-load"))
        .args(args)
        .args(["--json", "-"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(bound, run)
        .await
        .expect("qrlink-load should stop by itself")
        .expect("qrlink-load runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "qrlink-load failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("expected a JSON report, got {e}; stderr: {stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sessions_are_opened_scanned_and_hung_up_with_a_sane_report() {
    let _one = ONE_AT_A_TIME.lock().await;
    // QRs live long enough that nothing rotates or times out during the run; the admission
    // limits are raised because every session comes from one loopback address. Resume on: the
    // sessions that hang up stay detached for the 3 s grace.
    let gw = Separate::start(
        common::sim_config(Duration::from_secs(30), 2),
        &[
            "--max-sessions-per-ip",
            "1000",
            "--sessions-per-ip-per-minute",
            "100000",
            "--resume-grace",
            "3s",
        ],
    )
    .await;
    let args: Vec<String> = [
        "--url",
        &format!("ws://{}", gw.bin.addr),
        "--sim-url",
        &gw.sim.url(),
        "--sessions",
        "50",
        "--rate",
        "500/s",
        "--concurrency",
        "50",
        "--hold-ms",
        "300",
        "--scan-after-ms",
        "100",
        "--scan-sample",
        "5",
        "--hangup-sample",
        "5",
        "--hangup-after-ms",
        "200",
        "--gateway-pid",
        &gw.pid(),
        "--plateau-delay",
        "100ms",
        "--settle",
        "300ms",
        "--duration-limit",
        "30s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let report = load(&args).await;

    let sessions = &report["sessions"];
    assert_eq!(sessions["started"], 50, "report: {report:#}");
    assert_eq!(sessions["reached_qr"], 50, "report: {report:#}");
    assert_eq!(sessions["ok"], 50, "report: {report:#}");
    assert_eq!(sessions["failed"], 0, "report: {report:#}");
    assert_eq!(
        report["errors"],
        serde_json::json!({}),
        "expected no errors"
    );
    assert_eq!(
        report["outcomes"]["account"], 5,
        "the 5 scanned sessions link"
    );
    assert_eq!(report["outcomes"]["hung_up"], 45, "the others hang up");

    let latency = &report["latency_ms"];
    let first_qr = &latency["first_qr"];
    assert_eq!(first_qr["n"], 50);
    let p50 = first_qr["p50"].as_f64().expect("a first-QR median");
    let p99 = first_qr["p99"].as_f64().expect("a first-QR p99");
    assert!(
        p50 > 0.0 && p50 <= p99,
        "first QR p50 {p50} ms, p99 {p99} ms"
    );
    let frame = &latency["frame"];
    assert_eq!(
        frame["n"], 5,
        "every scan is matched to the simulator's answer"
    );
    let hangup = &latency["hangup_to_upstream_closed"];
    assert_eq!(
        hangup["n"], 5,
        "every sampled hang-up reaches the simulator"
    );
    assert_eq!(report["hangups"]["upstream_still_open"], 0);
    // Cross-process readings of one clock: non-negative up to clock-conversion noise, and far
    // below the test's own bound.
    for (name, s) in [("frame", frame), ("hang-up", hangup)] {
        let max = s["max"].as_f64().unwrap_or(f64::MAX);
        let min = s["min"].as_f64().unwrap_or(f64::MIN);
        assert!(
            min > -5.0 && max < 5_000.0,
            "{name} latency from {min} to {max} ms"
        );
    }

    let rate = report["rate"]["achieved_per_s"].as_f64().unwrap_or(0.0);
    assert!(rate > 0.0, "achieved rate {rate}");
    let gateway = &report["gateway"];
    assert!(
        gateway["before"]["rss_kib"].as_u64().unwrap_or(0) > 0,
        "the gateway's RSS is sampled: {gateway:#}"
    );
    assert!(
        gateway["plateau"].is_object(),
        "a plateau reading: {gateway:#}"
    );
    // The 45 sessions that hung up (40 held, 5 mid-poll) are detached when the report is made
    // (300 ms after the last one, well within the grace); the scanned ones have ended.
    let detached = &report["detached"];
    let kept = detached["after"].as_i64().unwrap_or(0) - detached["before"].as_i64().unwrap_or(0);
    assert_eq!(kept, 45, "detached: {detached:#}");
    // Then the grace ends them.
    gw.wait_for_no_sessions().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_session_task_or_fd_behind() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Resume on, with a 1 s grace: the sessions that close or drop stay detached for it, and
    // the drain (bounded by --drain-timeout, longer than the grace) waits until it ends them.
    let gw = Separate::start(
        common::sim_config(Duration::from_secs(30), 2),
        &["--resume-grace", "1s"],
    )
    .await;
    let args: Vec<String> = [
        "--url",
        &format!("ws://{}", gw.bin.addr),
        "--churn",
        "--churn-mix",
        "8,1,1",
        "--sessions",
        "300",
        "--warmup",
        "30",
        "--rate",
        "200/s",
        "--concurrency",
        "50",
        "--gateway-pid",
        &gw.pid(),
        "--settle",
        "100ms",
        "--drain-timeout",
        "8s",
        "--duration-limit",
        "30s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let report = load(&args).await;

    let sessions = &report["sessions"];
    assert_eq!(sessions["started"], 300, "report: {report:#}");
    assert_eq!(sessions["ok"], 300, "report: {report:#}");
    assert_eq!(
        report["errors"],
        serde_json::json!({}),
        "expected no errors"
    );
    let outcomes = &report["outcomes"];
    assert_eq!(
        (
            &outcomes["hung_up"],
            &outcomes["dropped"],
            &outcomes["cancelled"]
        ),
        (&240.into(), &30.into(), &30.into()),
        "the mix 8,1,1: {outcomes}"
    );

    let churn = &report["churn"];
    assert_eq!(churn["leaked_sessions"], 0, "churn: {churn:#}");
    let verdict = |name: &str| {
        churn["verdicts"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["criterion"] == name))
            .unwrap_or_else(|| panic!("a {name} verdict: {churn:#}"))
            .clone()
    };
    assert_eq!(verdict("leaked sessions")["pass"], true);
    assert_eq!(verdict("sessions")["pass"], true);
    let detached_at_end = churn["drain"]["at_end"]["metrics"]["sessions_detached"]
        .as_i64()
        .unwrap_or(0);
    assert!(
        detached_at_end > 0,
        "sessions that closed or dropped are detached at the end: {churn:#}"
    );
    for state in [&churn["before"], &churn["drain"]["after"]] {
        let tasks = state["metrics"]["tasks_alive"].as_u64().expect("tasks");
        let fds = state["fds"].as_u64().expect("fds from /proc");
        let own = state["metrics"]["open_fds"]
            .as_u64()
            .expect("the gateway's fd count");
        assert!(tasks >= 1 && fds >= 3 && own >= 3, "{state:#}");
        assert!(state["rss_kib"].as_u64().unwrap_or(0) > 0, "{state:#}");
    }
    // A leak per session would show as 300 or more. What may stay is the gateway's idle
    // upstream keep-alive connections (reqwest's pool lets them go after 90 s idle, later than
    // this test waits): at most one per session that was open at once, each a task and an fd.
    let peak = report["sessions"]["peak_open"].as_i64().unwrap_or(0);
    for key in ["leaked_tasks", "leaked_fds"] {
        let leaked = churn[key]
            .as_i64()
            .unwrap_or_else(|| panic!("{key}: {churn:#}"));
        assert!(
            leaked <= 2 * peak + 10 && leaked < 150,
            "{key} {leaked} with {peak} sessions open at most: {churn:#}"
        );
    }
    assert!(churn["rss_ratio"].as_f64().is_some_and(|r| r > 0.0));
    gw.wait_for_no_sessions().await;
}

/// Sessions and cycles of the resume test: 7,000 detach/resume cycles, 20 sessions at a time.
/// Not 10,000: the debug build (gateway and simulator in this process, `qrlink-load` beside it)
/// does about 150 cycles/s on the 2 shared cores, so 7,000 plus the warm-up's 700 take about
/// 50 s (benches/README.md, "Resume").
const RESUME_SESSIONS: u64 = 20;
/// See [`RESUME_SESSIONS`].
const RESUME_CYCLES: u64 = 350;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_thousand_detach_resume_cycles_leave_no_session_task_or_fd_behind() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The default grace (120 s): the sessions must end by `cancel`, not by waiting it out.
    // QRs outlive the run, so every replay is the first QR again.
    let gw = Separate::start(
        common::sim_config(Duration::from_secs(120), 2),
        &["--resume-grace", "120s"],
    )
    .await;
    let args: Vec<String> = [
        "--url",
        &format!("ws://{}", gw.bin.addr),
        "--resume-cycles",
        &RESUME_CYCLES.to_string(),
        "--resume-hangup",
        "mix",
        "--resume-finish",
        "cancel",
        "--sessions",
        &RESUME_SESSIONS.to_string(),
        "--warmup",
        "2",
        "--rate",
        "500/s",
        "--concurrency",
        &RESUME_SESSIONS.to_string(),
        "--gateway-pid",
        &gw.pid(),
        "--settle",
        "100ms",
        "--drain-timeout",
        "5s",
        "--duration-limit",
        "100s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let report = load_within(&args, Duration::from_secs(150)).await;

    let resume = &report["resume"];
    let cycles = RESUME_SESSIONS * RESUME_CYCLES;
    assert_eq!(resume["cycles_done"], cycles, "resume: {resume:#}");
    assert_eq!(resume["failures"], serde_json::json!({}), "{resume:#}");
    assert_eq!(report["outcomes"]["cancelled"], RESUME_SESSIONS);
    assert_eq!(
        (&resume["hangups_close"], &resume["hangups_drop"]),
        (&(cycles / 2).into(), &(cycles / 2).into()),
        "mix alternates: {resume:#}"
    );
    let latency = &resume["resume_to_replay_ms"];
    assert_eq!(latency["n"], cycles, "{latency:#}");
    // The gateway counted every resume; some of the dropped connections were taken over.
    let counted = resume["gateway_after"]["resumes"].as_u64().unwrap_or(0)
        - resume["gateway_before"]["resumes"].as_u64().unwrap_or(0);
    assert_eq!(counted, cycles, "{resume:#}");

    let leak = &resume["leak"];
    let verdict = |name: &str| {
        leak["verdicts"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["criterion"] == name))
            .unwrap_or_else(|| panic!("a {name} verdict: {leak:#}"))
            .clone()
    };
    for name in ["cycles", "leaked sessions", "RSS back within 10%"] {
        assert_eq!(verdict(name)["pass"], true, "{name}: {leak:#}");
    }
    assert_eq!(leak["leaked_sessions"], 0, "{leak:#}");
    // As in the churn test: what may stay is idle upstream keep-alive connections, at most one
    // per session open at once, a task and an fd at both ends (gateway and simulator share this
    // process). A leak per cycle would show as thousands.
    let peak = report["sessions"]["peak_open"].as_i64().unwrap_or(0);
    for key in ["leaked_tasks", "leaked_fds"] {
        let leaked = leak[key]
            .as_i64()
            .unwrap_or_else(|| panic!("{key}: {leak:#}"));
        assert!(
            leaked <= 2 * peak + 10 && leaked < 150,
            "{key} {leaked} with {peak} sessions open at most: {leak:#}"
        );
    }
    gw.wait_for_no_sessions().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_mixes_every_role_scripts_faults_and_reads_the_gateway_over_time() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Two QRs of 1 s: the timeout sessions get theirs ~2 s in; a 1 s grace ends the hang-ups
    // within the drain. The flatness verdicts are not asserted: 3 s of load has no steady state.
    let gw = Separate::start(
        common::sim_config(Duration::from_secs(1), 2),
        &[
            "--max-sessions-per-ip",
            "1000",
            "--sessions-per-ip-per-minute",
            "100000",
            "--resume-grace",
            "1s",
        ],
    )
    .await;
    let args: Vec<String> = [
        "--url",
        &format!("ws://{}", gw.bin.addr),
        "--sim-url",
        &gw.sim.url(),
        "--soak",
        "--soak-mix",
        "2,1,1,1",
        "--soak-faults",
        "5",
        "--soak-sample-every",
        "500ms",
        "--soak-steady-after",
        "0s",
        "--soak-window",
        "1s",
        "--resume-cycles",
        "1",
        "--scan-after-ms",
        "100",
        "--timeout-wait",
        "5s",
        "--sessions",
        "250",
        "--rate",
        "100/s",
        "--concurrency",
        "250",
        "--gateway-pid",
        &gw.pid(),
        "--drain-timeout",
        "10s",
        "--duration-limit",
        "30s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let report = load_within(&args, Duration::from_secs(60)).await;

    let soak = &report["soak"];
    let outcomes = &report["outcomes"];
    for outcome in ["hung_up", "dropped", "cancelled", "account", "timeout"] {
        assert!(
            outcomes[outcome].as_u64().is_some_and(|n| n > 0),
            "expected {outcome} sessions: {outcomes}"
        );
    }
    assert!(
        soak["faults"]["total"].as_u64().is_some_and(|n| n >= 5),
        "faults scripted: {soak:#}"
    );
    assert_eq!(soak["faults"]["push_errors"], 0, "{soak:#}");
    let points = soak["points"].as_array().expect("readings");
    assert!(points.len() >= 5, "a reading every 500 ms: {soak:#}");
    assert!(
        points
            .iter()
            .any(|p| p["sessions_detached"].as_i64() > Some(0)),
        "hang-ups detach: {soak:#}"
    );
    let verdicts = soak["verdicts"].as_array().expect("verdicts");
    let criteria: Vec<&str> = verdicts
        .iter()
        .filter_map(|v| v["criterion"].as_str())
        .collect();
    assert_eq!(
        criteria,
        ["RSS flat", "fds flat", "tasks flat", "sessions"],
        "{soak:#}"
    );
    assert_eq!(verdicts[3]["pass"], true, "{soak:#}");
    assert_eq!(
        soak["leaked_sessions"], 0,
        "the drain ends them all: {soak:#}"
    );
    gw.wait_for_no_sessions().await;
}

#[tokio::test]
async fn a_non_loopback_target_is_refused() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_qrlink-load"))
        .args(["--url", "ws://192.0.2.1:3000", "--sessions", "1"])
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("refused at once")
        .expect("runs");
    assert!(!out.status.success(), "expected a refusal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loopback"),
        "expected a loopback refusal, got {stderr}"
    );
}

/// `--resume-on-drop`: node A of a cluster (a process of its own, on a real redis-server) is
/// killed with `N` held sessions open; every one resumes on node B. The generator's list starts
/// with an address where nothing listens, so the sessions that try it first (every other one,
/// round robin) are refused and retried on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_sessions_of_a_killed_node_resume_on_another_with_resume_on_drop() {
    const N: u64 = 20;
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(redis) = common::redis::TestRedis::start().await else {
        return;
    };
    let sim = TestSimulator::start(common::sim_config(Duration::from_secs(30), 2)).await;
    let url = redis.url();
    let node_args = |id| {
        [
            "--resume-grace",
            "60s",
            "--redis-url",
            url.as_str(),
            "--redis-prefix",
            "qrlg:",
            "--node-id",
            id,
            "--sessions-per-ip-per-minute",
            "100000",
        ]
    };
    // Their addresses come from the one `qrlink` info line.
    let log = "warn,qrlink=info,qrlink::http=warn";
    let mut a = start_binary_with(&sim.url(), log, &node_args("a"), &[]).await;
    let b = start_binary_with(&sim.url(), log, &node_args("b"), &[]).await;
    let nothing = common::free_port();
    let args: Vec<String> = [
        "--url",
        &format!("ws://{}", a.addr),
        "--sessions",
        &N.to_string(),
        "--rate",
        "200/s",
        "--hold-ms",
        "8000",
        "--resume-on-drop",
        &format!("ws://127.0.0.1:{nothing},ws://{}", b.addr),
        "--resume-on-drop-within",
        "20s",
        "--settle",
        "100ms",
        "--duration-limit",
        "40s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = tokio::spawn(async move { load(&args).await });

    // Every first QR sent by A, and everything A has written to Redis.
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let req = http.get(format!("http://{}{path}", a.addr));
        async move { req.send().await.ok()?.text().await.ok() }
    };
    tokio::time::timeout(WAIT, async {
        loop {
            let issued: f64 = get("/metrics")
                .await
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("qrlink_qr_issued_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            let health: Value = serde_json::from_str(&get("/healthz").await.unwrap_or_default())
                .unwrap_or_default();
            if issued >= N as f64 && health["pending_writes"] == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("node A sends every first QR and writes it to Redis");
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();

    let report = run.await.unwrap();
    let d = &report["resume_on_drop"];
    assert_eq!(d["held"], N, "report: {d:#}");
    assert_eq!(d["sessions_dropped"], N, "report: {d:#}");
    assert_eq!(d["drops"], N, "report: {d:#}");
    assert_eq!(d["resumed"], N, "report: {d:#}");
    assert_eq!(d["lost"], 0, "report: {d:#}");
    assert_eq!(
        d["retried"]["connect_ConnectionRefused"],
        N / 2,
        "every other session tried the dead address first: {d:#}"
    );
    let latency = &d["drop_to_replay_ms"];
    assert_eq!(latency["n"], N);
    let (min, max) = (
        latency["min"].as_f64().unwrap_or(0.0),
        latency["max"].as_f64().unwrap_or(f64::MAX),
    );
    // The first attempt waits 0.25 s (−15 %); B then waits for A's heartbeat (3 s) to go.
    assert!(
        (212.0..=5_000.0).contains(&min) && max <= 5_000.0,
        "drop -> replay from {min} to {max} ms (heartbeat 3 s + 2 s)"
    );
    // Resumed, they held on B until their hold ended, and hung up.
    assert_eq!(report["sessions"]["ok"], N, "report: {report:#}");
    assert_eq!(report["errors"], serde_json::json!({}));
    assert_eq!(report["outcomes"]["hung_up"], N);
}
