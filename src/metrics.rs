//! Prometheus metrics at `/metrics`.
//!
//! The `metrics` facade is process-global, so one recorder serves every gateway in the process
//! (tests run several); counters there are cumulative across them.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `qrlink_sessions_active` | provider | open link attempts |
//! | `qrlink_sessions_ended_total` | provider, outcome | ended attempts |
//! | `qrlink_qr_issued_total` | provider | `qr` frames sent |
//! | `qrlink_time_to_first_qr_seconds` | provider | upgrade → first `qr` frame |
//! | `qrlink_time_to_scan_seconds` | provider | upgrade → `account` frame |
//! | `qrlink_upstream_request_seconds` | endpoint, status | each Unipile call |
//! | `qrlink_upstream_errors_total` | type | Unipile error answers surfaced |
//! | `qrlink_upstream_retries_total` | endpoint | transient failures retried |
//! | `qrlink_sessions_detached` | | sessions with no socket, waiting for a resume |
//! | `qrlink_resumes_total` | | sockets that re-attached a session (`?resume=`) |
//! | `qrlink_takeovers_total` | | resumes that took a session from a socket still attached |
//! | `qrlink_resume_expiries_total` | | detached sessions whose grace passed (outcome `disconnected`) |
//! | `qrlink_resume_refused_total` | reason | resumes refused: `expired`, `wrong_provider`, `busy` |
//! | `qrlink_watchers` | | connected `/ws/watch` sockets |
//! | `qrlink_webhook_deliveries_total` | event, result | webhooks done with: `delivered`, `failed` (no retry left), `gone` (the receiver said 410), `lost` (pending when the process stopped: in memory, or never written to Redis in cluster mode) |
//! | `qrlink_webhook_attempts_total` | result | POSTs: `delivered`, `gone`, `http_4xx`, `http_5xx`, `http_other`, `timeout`, `connect`, `transport` |
//! | `qrlink_webhook_attempt_seconds` | | one attempt, answer included |
//! | `qrlink_webhook_delivery_seconds` | | outcome → delivered (2xx), retries included |
//! | `qrlink_webhook_pending` | | webhooks not delivered yet (waiting or in flight; in cluster mode every node's, as Redis said at most a second ago), read at render time |
//! | `qrlink_webhook_oldest_pending_seconds` | | age of the oldest pending webhook, read at render time |
//! | `qrlink_webhook_outbox_errors_total` | op | cluster mode: Redis calls of the webhook outbox that failed, `write` (new webhooks then wait in the node) or `take` |
//! | `qrlink_limits_tracked_addresses` | | client addresses (IPv4, IPv6 /64) the admission limits track, at most `store::limits::MAX_TRACKED` |
//! | `qrlink_runtime_tasks_alive` | | tokio tasks alive in the gateway's runtimes (every serving thread's), read at render time |
//! | `qrlink_process_open_fds` | | open file descriptors of the process (`/proc/self/fd`, Linux only), read at render time |
//!
//! The last two make leaks visible: after every session has closed (`qrlink_sessions_active`
//! back to 0) they should come back to where they were before (`qrlink-load --churn` checks
//! this).
//!
//! Histogram samples wait in the recorder until they are folded into their buckets, which
//! `render` does and so does an upkeep thread every `UPKEEP_EVERY`: without it, a gateway that
//! nobody scrapes kept every sample (about 40 bytes per session, found by the churn bench).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Latency buckets in seconds: from 1 ms (first QR on loopback) to 10 minutes (time to scan).
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0, 180.0,
    600.0,
];

/// Installs the recorder once per process; None if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            // `build_recorder` leaves the upkeep to us; a plain thread, so it does not depend
            // on which tokio runtime (tests run several) happens to be alive.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("qrlink-metrics".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no metrics upkeep thread: samples wait for a scrape");
            }
            Some(handle)
        })
        .as_ref()
}

/// The runtimes of the gateway's serving threads, when it serves from several.
static RUNTIMES: OnceLock<Vec<tokio::runtime::Handle>> = OnceLock::new();

/// Makes `qrlink_runtime_tasks_alive` count the tasks of all of `runtimes` (the serving
/// threads', [`crate::Gateway::serve_threads`]) rather than those of the runtime serving
/// `/metrics`. Once per process.
pub fn count_tasks_in(runtimes: Vec<tokio::runtime::Handle>) {
    let _ = RUNTIMES.set(runtimes);
}

/// The current metrics in Prometheus text format, with the process gauges read just now.
pub fn render() -> String {
    let Some(handle) = install() else {
        return String::new();
    };
    let tasks = match RUNTIMES.get() {
        Some(runtimes) => Some(runtimes.iter().map(|r| r.metrics().num_alive_tasks()).sum()),
        None => tokio::runtime::Handle::try_current()
            .ok()
            .map(|r| r.metrics().num_alive_tasks()),
    };
    if let Some(tasks) = tasks {
        metrics::gauge!("qrlink_runtime_tasks_alive").set(tasks as f64);
    }
    if let Some(fds) = open_fds() {
        metrics::gauge!("qrlink_process_open_fds").set(fds as f64);
    }
    handle.render()
}

/// Open file descriptors of this process: the entries of `/proc/self/fd`, less the one the
/// listing itself holds open. `None` where there is no such directory (not Linux).
fn open_fds() -> Option<u64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(entries.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of an unlabelled metric in Prometheus text.
    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn render_reports_alive_tasks_and_open_fds() {
        let held = tokio::spawn(std::future::pending::<()>());
        let text = render();
        held.abort();
        let tasks = value(&text, "qrlink_runtime_tasks_alive").expect("a task gauge");
        assert!(tasks >= 1.0, "the pending task is alive: {text}");
        if cfg!(target_os = "linux") {
            let fds = value(&text, "qrlink_process_open_fds").expect("an fd gauge");
            assert!(fds >= 1.0, "{text}");
        }
    }

    #[test]
    fn render_without_a_runtime_does_not_panic() {
        let text = render();
        assert!(text.is_empty() || !text.contains("NaN"), "{text}");
    }
}
