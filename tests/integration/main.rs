//! The integration tests, as one test binary: the gateway and the simulator on port 0 talking real
//! HTTP and WebSockets over loopback, the binaries run as processes, the pages in a real Chromium.
//!
//! One binary rather than one per file: each test binary links the whole dependency tree
//! (≈180 MB apiece with debug info), and seventeen of them filled a CI machine's disk. Run one
//! file's tests with `cargo test --test integration link_flow::`.

mod common;

mod autobahn;
mod cancellation;
mod cluster;
mod dashboard_page;
mod embed;
mod examples;
mod hostile;
mod http_api;
mod link_flow;
mod link_page;
mod link_page_resume;
mod load_generator;
mod process;
mod properties;
mod protocol_errors;
mod protocol_schemas;
mod qr_render;
mod resume;
mod security;
mod simulator;
mod upstream_errors;
mod upstream_http2;
mod upstream_tls;
mod watch;
mod webhooks;
mod webhooks_cluster;
mod ws_fragments;
