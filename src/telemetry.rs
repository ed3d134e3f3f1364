//! Tracing setup: `RUST_LOG` filter (default `info`), text or JSON lines on stderr.
//!
//! Some dependencies dump whole WebSocket frames at `trace` (QR strings and codes travel in
//! those frames), so their level is capped below that whatever `RUST_LOG` asks for: secrets
//! and QR contents must not reach the logs at any level.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Directive;

use crate::config::LogFormat;

/// Crates whose `trace` output contains message payloads.
const PAYLOAD_LOGGERS: [&str; 2] = ["tungstenite=debug", "tokio_tungstenite=debug"];

/// The filter: `RUST_LOG` (default `info`) with [`PAYLOAD_LOGGERS`] capped.
pub fn filter() -> EnvFilter {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    for d in PAYLOAD_LOGGERS {
        filter = filter.add_directive(d.parse::<Directive>().expect("static directive"));
    }
    filter
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
