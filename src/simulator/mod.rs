//! The embedded Unipile simulator: the upstream of demo mode and of every integration test.
//!
//! It implements the contract of UNIPILE.md over real HTTP: `POST /v2/auth/intent` and the long
//! poll `POST /v2/auth/checkpoint`, the `X-API-KEY` check, Unipile's JSON bodies and error shape,
//! `acc_` ids, per-provider QR lifetime and rotation count, scan, the Telegram 2FA checkpoint,
//! and scripted [`Fault`]s. It records every checkpoint call ([`PollRecord`]), including callers
//! that hung up, so tests can prove that cancellation reaches the upstream.
//!
//! # Routes (relative to where [`Simulator::router`] is mounted)
//! | route | what |
//! |---|---|
//! | `POST /v2/auth/intent` | start an intent; answers `AuthenticationQrCode` |
//! | `POST /v2/auth/checkpoint` | long poll: new QR, `Account`, `AuthenticationCheckpoint` or an error |
//! | `GET /scan/{intent_id}?c=CODE` | the "phone" page a demo QR opens, with a Scan button |
//! | `POST /scan/{intent_id}` | scan (form: HTML answer; otherwise JSON `{"ok":true}` or an error) |
//! | `POST /_control/faults` | queue a fault: `{"endpoint":"checkpoint","fault":{"kind":"stall"}}` |
//! | `POST /_control/scan/{intent_id}` | scan, JSON answer |
//! | `GET /_control/intents` and `/_control/intents/{intent_id}` | intents, issued QRs and polls |
//!
//! The scan and control routes need no API key: this is a test tool, never expose it where the
//! public can reach it with something real behind it.
//!
//! # Design
//! Intents live in a `DashMap`; nothing runs per intent in the background. A poll computes the
//! current QR's expiry and waits in one `select!` on the intent's change channel, the expiry and
//! the shutdown token. Finished intents are kept (with their QRs and polls) for inspection; a
//! few hundred bytes each, which long load runs can afford.
//!
//! A caller may hang up a poll and poll the same intent again later (a gateway resuming a
//! session): the intent keeps rotating on the provider's clock meanwhile, and a final answer
//! (`Account`, `provider/timeout`) is kept for the next poll until one caller received it; see
//! the `intent` module. [`Fault::LateAnswer`] reproduces a hang-up racing a final answer.

mod api;
mod control;
mod fault;
mod intent;
mod mint;
mod record;
mod reply;
mod scan_page;
mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use dashmap::DashMap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use fault::{Endpoint, Fault};
pub use intent::ScanError;
pub use record::{PollOutcome, PollRecord, RecordedRequest};
pub use reply::ANSWERED_AT_HEADER;
pub use tls::{Alpn, SelfSigned};

use fault::FaultQueue;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use intent::Intent;
use mint::Minter;
use record::Recorder;

/// HTTP/2 streams one client connection may have open: every session's long poll is one.
const MAX_HTTP2_STREAMS: u32 = 1 << 20;
/// Time in-flight requests get to finish once shutdown has answered the pending polls.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How the simulator behaves.
#[derive(Clone)]
pub struct SimulatorConfig {
    /// The value `X-API-KEY` must have.
    pub api_key: String,
    /// The providers that exist, with their timings; any other provider is a 400.
    pub providers: Vec<ProviderSim>,
    /// Demo mode when set: the absolute URL where the router is mounted (e.g.
    /// `http://127.0.0.1:3000/simulator`), and each QR encodes
    /// `{scan_base_url}/scan/{intent_id}?c={code}` so a phone can open it. When `None`, QR
    /// strings look like each provider's real ones.
    pub scan_base_url: Option<String>,
}

impl std::fmt::Debug for SimulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatorConfig")
            .field("api_key", &"<redacted>")
            .field("providers", &self.providers)
            .field("scan_base_url", &self.scan_base_url)
            .finish()
    }
}

impl SimulatorConfig {
    /// WhatsApp and Google Messages 60 s × 5 QRs, Telegram 30 s × 5 with 2FA password `demo`;
    /// realistic QR strings (set `scan_base_url` for demo mode).
    pub fn demo_defaults(api_key: impl Into<String>) -> Self {
        let mut telegram = ProviderSim::new("telegram", Duration::from_secs(30), 5);
        telegram.twofa_password = Some("demo".to_owned());
        SimulatorConfig {
            api_key: api_key.into(),
            providers: vec![
                ProviderSim::new("whatsapp", Duration::from_secs(60), 5),
                ProviderSim::new("google_messages", Duration::from_secs(60), 5),
                telegram,
            ],
            scan_base_url: None,
        }
    }

    /// Sets every provider's QR lifetime and count; Telegram's login tokens live half as long,
    /// as they do for real (UNIPILE.md, "Timings").
    pub fn with_timings(mut self, qr_ttl: Duration, qr_count: u32) -> Self {
        for p in &mut self.providers {
            p.qr_ttl = if p.name == "telegram" {
                qr_ttl / 2
            } else {
                qr_ttl
            };
            p.qr_count = qr_count;
        }
        self
    }
}

/// One simulated provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSim {
    /// The `provider` string of intent requests, e.g. `whatsapp`.
    pub name: String,
    /// How long each QR can be scanned.
    pub qr_ttl: Duration,
    /// How many QRs are issued before the intent answers `504 provider/timeout`.
    pub qr_count: u32,
    /// When set, a scan leads to a 2FA checkpoint whose answer is this password, unless the
    /// intent's `credentials.twofa` already equals it.
    pub twofa_password: Option<String>,
}

impl ProviderSim {
    /// A provider without 2FA.
    pub fn new(name: impl Into<String>, qr_ttl: Duration, qr_count: u32) -> Self {
        ProviderSim {
            name: name.into(),
            qr_ttl,
            qr_count,
            twofa_password: None,
        }
    }
}

/// The simulator; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("providers", &self.inner.providers)
            .field("intents", &self.inner.intents.len())
            .finish()
    }
}

struct Inner {
    /// Required `X-API-KEY` value.
    api_key: String,
    /// Known providers; looked up by name on each intent.
    providers: Vec<ProviderSim>,
    /// Makes ids, QR strings and accounts (holds the demo scan URL and the application id).
    minter: Minter,
    /// Every intent ever started, by id.
    intents: DashMap<String, Arc<IntentCell>>,
    /// Intent ids in creation order, since the map has none.
    order: Mutex<Vec<String>>,
    /// Scripted faults, per endpoint.
    faults: FaultQueue,
    /// Poll and request records for tests.
    recorder: Arc<Recorder>,
    /// Cancelled on shutdown so long polls and stalls end and graceful shutdown can finish.
    shutdown: CancellationToken,
    /// TCP connections accepted by [`Simulator::serve`].
    connections: AtomicU64,
}

/// One intent and the channel that wakes its waiting polls.
pub(crate) struct IntentCell {
    intent: Mutex<Intent>,
    /// Bumped on every change (scan, rotation, end) so waiting polls re-evaluate.
    changed: watch::Sender<()>,
}

impl IntentCell {
    fn lock(&self) -> MutexGuard<'_, Intent> {
        // Intent methods do not panic; if one ever did, keep serving the data rather than
        // poisoning every later request.
        self.intent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_replace(());
    }
}

impl Simulator {
    /// A simulator with no intents yet.
    pub fn new(config: SimulatorConfig) -> Self {
        Simulator {
            inner: Arc::new(Inner {
                api_key: config.api_key,
                providers: config.providers,
                minter: Minter::new(config.scan_base_url),
                intents: DashMap::new(),
                order: Mutex::new(Vec::new()),
                faults: FaultQueue::default(),
                recorder: Arc::new(Recorder::default()),
                connections: AtomicU64::new(0),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// The simulator's routes, relative to wherever it is mounted (see the module docs).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v2/auth/intent", post(api::intent))
            .route("/v2/auth/checkpoint", post(api::checkpoint))
            .route(
                "/scan/{intent_id}",
                get(scan_page::page).post(scan_page::scan),
            )
            .route("/_control/faults", post(control::push_fault))
            .route("/_control/scan/{intent_id}", post(control::scan))
            .route("/_control/intents", get(control::intents))
            .route("/_control/intents/{intent_id}", get(control::intent))
            .fallback(api::not_found)
            .with_state(self.clone())
    }

    /// Serves the simulator alone on `listener` until `shutdown` resolves; then pending long
    /// polls are answered (see [`Simulator::shutdown`]) and in-flight requests finish.
    ///
    /// Each connection speaks HTTP/1.1 or HTTP/2 with prior knowledge (`h2c`), whichever the
    /// client opens with, so a gateway with `--upstream-http 2` multiplexes every long poll
    /// over one connection. The stream limit is far above the default (200): a load test
    /// holds thousands of polls at once, and a client at the limit queues its calls.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with(listener, None, shutdown).await
    }

    /// [`Simulator::serve`] over HTTPS (`qrlink simulate --tls`): connections that open with a
    /// TLS handshake get `tls`'s certificate and speak what ALPN agreed (HTTP/2 for `h2`, else
    /// HTTP/1.1); the others are served as plain HTTP, for the control API (see the `tls`
    /// module).
    pub async fn serve_tls(
        self,
        listener: tokio::net::TcpListener,
        tls: tokio_rustls::TlsAcceptor,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with(listener, Some(tls), shutdown).await
    }

    async fn serve_with(
        self,
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http2().max_concurrent_streams(MAX_HTTP2_STREAMS);
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                () = &mut shutdown => break,
                (stream, _) = crate::net::accept(&listener, "simulator") => stream,
            };
            self.inner.connections.fetch_add(1, Ordering::Relaxed);
            let service = TowerToHyperService::new(router.clone());
            let Some(tls) = tls.clone() else {
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                tokio::spawn(graceful.watch(conn));
                continue;
            };
            // The handshake runs in the connection's own task, never in the accept loop.
            let (builder, watcher) = (builder.clone(), graceful.watcher());
            tokio::spawn(async move {
                if !tls::starts_with_tls(&stream).await {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                    return;
                }
                let stream = match tls.accept(stream).await {
                    Ok(stream) => stream,
                    Err(e) => return tracing::debug!(error = %e, "simulator: TLS handshake failed"),
                };
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let _ = watcher.watch(conn.into_owned()).await;
            });
        }
        drop(listener);
        self.shutdown();
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("simulator: connections still open after the grace period");
        }
        Ok(())
    }

    /// Ends every pending long poll and stall with `503 api/service_unavailable`, now and for
    /// later polls, so a graceful shutdown does not wait for them. A gateway that mounts
    /// [`Simulator::router`] calls this when it shuts down.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// The providers this simulator knows.
    pub fn providers(&self) -> &[ProviderSim] {
        &self.inner.providers
    }

    /// Queues `fault` for `endpoint`: the next call to it (any intent) answers with the fault.
    pub fn push_fault(&self, endpoint: Endpoint, fault: Fault) {
        self.inner.faults.push(endpoint, fault);
    }

    /// The user scanned the intent's current QR.
    pub fn scan(&self, intent_id: &str) -> Result<(), ScanError> {
        self.scan_code(intent_id, None)
    }

    /// Every QR string issued for the intent, in order (empty for an unknown intent).
    pub fn issued_qrs(&self, intent_id: &str) -> Vec<String> {
        self.cell(intent_id).map_or_else(Vec::new, |cell| {
            cell.lock().qrs.iter().map(|q| q.qr.clone()).collect()
        })
    }

    /// Every intent id, in creation order.
    pub fn intent_ids(&self) -> Vec<String> {
        self.inner
            .order
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// TCP connections [`Simulator::serve`] has accepted: one per call in flight over HTTP/1.1,
    /// one in all when the client multiplexes over HTTP/2.
    pub fn connections_accepted(&self) -> u64 {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Every checkpoint call ever made, in start order.
    pub fn polls(&self) -> Vec<PollRecord> {
        self.inner.recorder.polls()
    }

    /// Resolves once `pred(polls)` holds; re-checked on every change of the records, never by
    /// sleeping. Wrap it in `tokio::time::timeout`.
    pub async fn wait_for_polls<F: Fn(&[PollRecord]) -> bool>(&self, pred: F) {
        self.inner.recorder.wait_for_polls(pred).await;
    }

    /// Every `/v2/auth/*` request received, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.recorder.requests()
    }

    /// A scan carrying the scan page's `?c=` code: fails with `Expired` when it is not the
    /// current QR's.
    pub(crate) fn scan_code(&self, intent_id: &str, code: Option<&str>) -> Result<(), ScanError> {
        let cell = self.cell(intent_id).ok_or(ScanError::UnknownIntent)?;
        let result = cell.lock().scan(Instant::now(), code, &self.inner.minter);
        if result.is_ok() {
            cell.notify();
        }
        result
    }

    fn cell(&self, intent_id: &str) -> Option<Arc<IntentCell>> {
        self.inner.intents.get(intent_id).map(|c| c.value().clone())
    }

    fn provider(&self, name: &str) -> Option<&ProviderSim> {
        self.inner.providers.iter().find(|p| p.name == name)
    }

    /// Starts an intent and returns its `AuthenticationQrCode` object.
    fn start_intent(
        &self,
        provider: ProviderSim,
        account_id: Option<String>,
        twofa: Option<String>,
    ) -> serde_json::Value {
        let minter = &self.inner.minter;
        let id = minter.intent_id();
        let intent = Intent::new(id.clone(), provider, account_id, twofa, minter);
        let qr = intent.qr_object();
        let cell = Arc::new(IntentCell {
            intent: Mutex::new(intent),
            changed: watch::Sender::new(()),
        });
        self.inner.intents.insert(id.clone(), cell);
        self.inner
            .order
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
        qr
    }
}
