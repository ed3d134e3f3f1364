//! Tracing setup: `RUST_LOG` filter (default `info`), text or JSON lines on stderr.
//!
//! Some dependencies dump whole WebSocket frames at `trace` (QR strings and codes travel in
//! those frames), so their level is capped at `debug` whatever `RUST_LOG` asks for: secrets and
//! QR contents must not reach the logs at any level. The cap is a second filter that both must
//! pass, never a directive added to `RUST_LOG`'s: a `tungstenite=debug` directive would *raise*
//! those crates to `debug` under `RUST_LOG=warn` (it did, and logged two lines per closed
//! WebSocket: 32 MB in a 100,000-session benchmark).

use std::io::IsTerminal;

use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::LogFormat;

/// Crates whose `trace` output contains message payloads.
const PAYLOAD_LOGGERS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// The filter: `RUST_LOG` (default `info`), and [`PAYLOAD_LOGGERS`] never below `debug`.
pub fn filter() -> impl Filter<Registry> + Send + Sync + 'static {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let cap = PAYLOAD_LOGGERS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, c| {
            t.with_target(*c, LevelFilter::DEBUG)
        });
    env.and(cap)
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Json => layer.json().with_filter(filter()).boxed(),
        LogFormat::Text => layer.with_filter(filter()).boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
}
