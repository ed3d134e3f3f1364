//! qrlink: a WebSocket gateway that links WhatsApp, Google Messages and Telegram accounts to
//! Unipile by QR code.
//!
//! A browser opens one WebSocket per link attempt; the gateway calls Unipile's Start Auth Intent,
//! long-polls Solve a Checkpoint, and pushes JSON frames (`qr` already rendered as SVG,
//! `checkpoint`, `account`, `timeout`, `error`). When the browser goes, the upstream work stops.
//!
//! # Layout
//! - [`config`]: flags and environment variables (`--help` text lives there).
//! - [`gateway`]: shared state, the router, `serve` with an owned graceful shutdown.
//! - [`ws`]: the `/ws/link/{provider}` socket loop; carries frames, decides nothing upstream.
//! - [`ws_upgrade`]: the WebSocket upgrade of `/ws/link/{provider}` (tokio-tungstenite directly).
//! - [`coalesce`]: gathers a socket's writes between flushes into one system call.
//! - [`link`]: one link attempt, the checkpoint loop, as a plain async function over a channel.
//! - [`upstream`]: the Unipile client: typed lenient decoding, timeouts, retries; HTTP/1.1 over
//!   reqwest, or HTTP/2 streams on its own small pool of connections (`upstream/h2pool.rs`).
//! - [`sessions`]: the registry of open attempts (DashMap behind a drop guard).
//! - [`protocol`]: wire frames, error and close codes, limits.
//! - [`qr`]: QR encoding and SVG / terminal rendering, pure functions.
//! - [`simulator`]: the embedded Unipile simulator (demo mode, tests, `qrlink simulate`).
//! - [`assets`]: the embedded pages of `web/`.
//! - [`net`]: TCP accept with back-off, for the gateway's and the simulator's accept loops.
//! - [`auth`]: Origin allowlist, connect tokens, admin token, client address behind proxies.
//! - [`limits`]: admission limits (overall, per address, per minute).
//! - [`watch`]: the `/ws/watch` socket for dashboards.
//! - [`metrics`]: Prometheus metrics.
//! - [`telemetry`]: tracing setup.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod assets;
pub mod auth;
pub mod coalesce;
pub mod config;
pub mod gateway;
pub mod limits;
pub mod link;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod qr;
pub mod sessions;
pub mod simulator;
pub mod telemetry;
pub mod upstream;
pub mod watch;
pub mod ws;
pub mod ws_upgrade;

pub use config::Config;
pub use gateway::Gateway;
