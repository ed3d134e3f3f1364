//! qrlink: a WebSocket gateway that links WhatsApp, Google Messages and Telegram accounts to
//! Unipile by QR code.
//!
//! A browser opens one WebSocket per link attempt; the gateway calls Unipile's Start Auth Intent,
//! long-polls Solve a Checkpoint, and pushes JSON frames (`qr` already rendered as SVG,
//! `checkpoint`, `account`, `timeout`, `error`). When the browser goes, the upstream work stops.
//!
//! # Layout
//! The tree follows the layers; imports point down this list, never up.
//! - [`gateway`]: builds the shared state from the configuration; `serve` with an owned
//!   graceful shutdown.
//! - [`http`]: the HTTP surface: the router, the link and watch sockets, the WebSocket upgrade,
//!   auth, the JSON endpoints, the embedded pages.
//! - [`state`]: [`state::AppState`], what every handler shares.
//! - [`link`]: one link attempt, the checkpoint loop, as a plain async function over a channel;
//!   [`link::protocol`], the wire frames, error and close codes, limits.
//! - [`store`]: the session store: every attempt's record (attached or detached), the directory,
//!   watch events, resume and takeover, admission limits; `memory` behind one interface.
//! - [`notify`]: telling the app's backend the outcome: result tokens and Standard Webhooks
//!   (an outbox, a deliverer).
//! - [`upstream`]: the Unipile client: typed lenient decoding, timeouts, retries, over its own
//!   pool (`upstream/pool.rs`): HTTP/2 streams, or lean HTTP/1.1 connections, as ALPN agrees.
//! - [`qr`]: QR encoding and SVG / terminal rendering, pure functions.
//! - [`simulator`]: the embedded Unipile simulator (demo mode, tests, `qrlink simulate`).
//! - [`config`]: flags and environment variables (`--help` text lives there).
//! - [`secret`]: random ids and secrets, constant-time comparison.
//! - [`net`]: TCP accept with back-off, for the gateway's and the simulator's accept loops.
//! - [`metrics`]: Prometheus metrics.
//! - [`telemetry`]: tracing setup.
//! - `arb` (tests only): proptest strategies for hostile input, shared by the property tests
//!   that sit next to private parsers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
mod arb;
pub mod config;
pub mod gateway;
pub mod http;
pub mod link;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod qr;
pub mod secret;
pub mod simulator;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod upstream;

pub use config::Config;
pub use gateway::Gateway;
