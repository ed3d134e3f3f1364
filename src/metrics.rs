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
//! | `qrlink_watchers` | | connected `/ws/watch` sockets |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

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
            Some(handle)
        })
        .as_ref()
}

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    install().map(|h| h.render()).unwrap_or_default()
}
