//! The gateway: builds the shared state from the configuration and serves it, with a
//! shutdown the gateway owns.
//!
//! axum's graceful shutdown does not wait for upgraded sockets (axum issue #3003), so every
//! WebSocket task joins a [`TaskTracker`] and watches one [`CancellationToken`]: on shutdown the
//! token tells each session to send `gateway/shutting_down` and close 1001, and `serve` waits
//! for the tracker, bounded by the configured grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::config::{Config, QrTtl, UpstreamHttp};
use crate::http::{SIMULATOR_MOUNT, router};
use crate::notify::{Notifier, StartError};
use crate::simulator::{Simulator, SimulatorConfig};
use crate::state::AppState;
use crate::store::cluster::{Cluster, ClusterConfig};
use crate::store::{Store, StoreConfig};
use crate::upstream::{self, HttpVersion, RetryPolicy, Timeouts, UnipileClient};

/// Largest request head (request line and headers) a client may send; a longer one is answered
/// 431 and the connection closed. hyper's default (about 400 KB) let a 100 KB header through to
/// the upgrade, and a client could make each connection buffer that much while it trickles.
/// 32 KiB is nginx's default (4 × 8 KiB) and room for large cookies and a token.
const MAX_REQUEST_HEAD: usize = 32 * 1024;
/// How long a connection accepted during shutdown may take to send its request.
const DRAIN_SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

/// A configured gateway, ready to serve on a bound listener.
#[derive(Debug, Clone)]
pub struct Gateway {
    state: Arc<AppState>,
}

impl Gateway {
    /// Builds the gateway for a listener bound at `local_addr` (demo mode calls its own
    /// simulator through that address).
    pub fn new(
        mut config: Config,
        local_addr: SocketAddr,
    ) -> Result<Gateway, upstream::BuildError> {
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"));
        let (base, key, simulator) = match &config.unipile_api_key {
            Some(key) => (config.unipile_api_url.clone(), key.clone(), None),
            None => {
                let key = demo_api_key();
                let mut sim = SimulatorConfig::demo_defaults(key.clone())
                    .with_timings(config.demo_qr_ttl, config.demo_qr_count);
                sim.scan_base_url = Some(format!(
                    "{}{SIMULATOR_MOUNT}",
                    public_url.trim_end_matches('/')
                ));
                let base = format!("http://{}{SIMULATOR_MOUNT}", loopback_of(local_addr));
                let twofa = sim.providers.iter().find_map(|p| p.twofa_password.clone());
                // The gateway knows how long its own simulator's codes live: the page's
                // countdown follows `--demo-qr-ttl`, not the estimate meant for Unipile.
                config.qr_ttl = QrTtl {
                    default: config.demo_qr_ttl,
                    per_provider: sim
                        .providers
                        .iter()
                        .map(|p| (p.name.clone(), p.qr_ttl))
                        .collect(),
                };
                (base, key, Some((Simulator::new(sim), twofa)))
            }
        };
        let upstream = UnipileClient::with_reach(
            &base,
            &key,
            RetryPolicy {
                budget: config.upstream_retry_budget,
                base: config.upstream_backoff,
            },
            Timeouts {
                connect: config.upstream_connect_timeout,
                poll: config.upstream_poll_timeout,
            },
            // The embedded simulator is served by this gateway's own HTTP/1.1 listener.
            match config.upstream_http {
                _ if simulator.is_some() => HttpVersion::Http1,
                UpstreamHttp::Auto => HttpVersion::Auto {
                    streams_per_connection: config.upstream_http2_streams as usize,
                },
                UpstreamHttp::Http1 => HttpVersion::Http1,
                UpstreamHttp::Http2 => HttpVersion::Http2 {
                    streams_per_connection: config.upstream_http2_streams as usize,
                },
            },
            upstream::Reach {
                ca_file: config.upstream_ca_file.clone(),
                ..upstream::Reach::default()
            },
        )?;
        crate::metrics::install();
        // `Config::check` has refused bad webhook settings already.
        let notifier = match config.webhook() {
            Ok(Some(webhook)) => Notifier::start(webhook).map_err(|e| match e {
                StartError::Client(e) => upstream::BuildError::Webhook(e),
                StartError::Redis(e) => upstream::BuildError::Cluster(e),
            })?,
            _ => Notifier::disabled(),
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let cluster = match &config.redis_url {
            Some(url) => Some(
                Cluster::new(
                    &ClusterConfig {
                        url: url.clone(),
                        node: config.node_id(),
                        prefix: config.redis_prefix.clone(),
                        max_sessions_per_ip: config.max_sessions_per_ip,
                        sessions_per_ip_per_minute: config.sessions_per_ip_per_minute,
                    },
                    config.resume_grace,
                    config.max_attempt_duration,
                )
                .map_err(upstream::BuildError::Cluster)?,
            ),
            None => None,
        };
        let store = Store::new(
            StoreConfig {
                resume_grace: config.resume_grace,
                max_sessions: config.max_sessions,
                max_sessions_per_ip: config.max_sessions_per_ip,
                sessions_per_ip_per_minute: config.sessions_per_ip_per_minute,
                notifier: notifier.clone(),
            },
            tracker.clone(),
            shutdown.clone(),
            cluster,
        );
        Ok(Gateway {
            state: Arc::new(AppState {
                frame_ancestors: config.frame_ancestors(),
                config,
                upstream,
                store,
                notifier,
                shutdown,
                tracker,
                ready: AtomicBool::new(true),
                demo_twofa_password: simulator.as_ref().and_then(|s| s.1.clone()),
                simulator: simulator.map(|s| s.0),
            }),
        })
    }

    /// The shared state (registry, simulator) for tests and embedding.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves on `listener`, in the caller's runtime, until `shutdown` resolves, then stops
    /// accepting, tells every session, and waits for the socket tasks at most `shutdown_grace`.
    /// (The binary serves with [`Gateway::serve_threads`].)
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state;
        watch_shutdown(&state, shutdown);
        let connections = TaskTracker::new();
        let drained_by = accept_loop(&state, listener, &connections).await;
        finish(&state, connections, drained_by).await;
        Ok(())
    }

    /// Serves on every listener of `listeners` (bound to one address with `SO_REUSEPORT`, so
    /// the kernel spreads new connections over them) from a thread of its own, each with a
    /// current-thread runtime: a connection, its session and the session's upstream calls
    /// (the upstream pool keeps HTTP/2 connections per thread) stay on the thread that
    /// accepted it. tokio's work-stealing runtime costs CPU on every wake-up at the rates a
    /// gateway sees (an idle worker is woken to look for work, finds little, and sleeps again):
    /// on 2 cores, 0.56 ms of CPU per pending link attempt against 0.42 this way (medians of
    /// alternating runs, benches/README.md "Issue #13", session 7). Returns when every thread
    /// has stopped; `shutdown`
    /// is polled on the calling thread, which serves `listeners[0]` in `runtime`: a
    /// current-thread runtime the gateway was built in (its background tasks run there).
    pub fn serve_threads(
        self,
        rt: tokio::runtime::Runtime,
        listeners: Vec<std::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state;
        let connections = TaskTracker::new();
        // Set once the last step (flushing the store, the webhooks, the HTTP connections) is
        // done: until then every thread keeps polling its tasks.
        let stopped = CancellationToken::new();
        // Each thread holds a sender until its accept loop has ended: all dropped, all ended.
        let (loop_ended, mut loops_ended) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut listeners = listeners.into_iter();
        let first = listeners
            .next()
            .ok_or_else(|| std::io::Error::other("no listener"))?;
        let mut handles = vec![rt.handle().clone()];
        let mut threads = Vec::new();
        for (i, listener) in listeners.enumerate() {
            let spawned = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|thread_rt| {
                    handles.push(thread_rt.handle().clone());
                    let state = state.clone();
                    let connections = connections.clone();
                    let thread_stopped = stopped.clone();
                    let ended = loop_ended.clone();
                    std::thread::Builder::new()
                        .name(format!("qrlink-{}", i + 1))
                        .spawn(move || {
                            upstream::set_thread_shard(i + 1);
                            thread_rt.block_on(async move {
                                match TcpListener::from_std(listener) {
                                    Ok(listener) => {
                                        accept_loop(&state, listener, &connections).await;
                                    }
                                    Err(e) => {
                                        tracing::error!(error = %e, "cannot serve a listener");
                                        state.shutdown.cancel();
                                    }
                                }
                                drop(ended);
                                thread_stopped.cancelled().await;
                            });
                        })
                });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    // Nothing served yet: the threads started stop at once.
                    state.shutdown.cancel();
                    stopped.cancel();
                    for thread in threads {
                        let _ = thread.join();
                    }
                    return Err(e);
                }
            }
        }
        drop(loop_ended);
        crate::metrics::count_tasks_in(handles);
        upstream::set_thread_shard(0);
        let served = rt.block_on(async {
            watch_shutdown(&state, shutdown);
            let drained_by = match TcpListener::from_std(first) {
                Ok(listener) => accept_loop(&state, listener, &connections).await,
                Err(e) => {
                    state.shutdown.cancel();
                    stopped.cancel();
                    return Err(e);
                }
            };
            // Every thread's accept loop has ended (its sessions are gone or the grace is
            // over) when every sender is dropped.
            while loops_ended.recv().await.is_some() {}
            finish(&state, connections, drained_by).await;
            stopped.cancel();
            Ok(())
        });
        stopped.cancel();
        for thread in threads {
            let _ = thread.join();
        }
        served
    }
}

/// Cancels the gateway's token when `shutdown` resolves (or something else cancelled it), and
/// lets the embedded simulator answer its held long polls so HTTP shutdown is prompt.
fn watch_shutdown(state: &Arc<AppState>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let state = state.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown => tracing::info!("shutdown requested"),
            () = state.shutdown.cancelled() => {}
        }
        state.ready.store(false, Ordering::SeqCst);
        state.shutdown.cancel();
        if let Some(sim) = &state.simulator {
            sim.shutdown();
        }
    });
}

/// Accepts connections on `listener` (each a task of `connections`) until shutdown has been
/// asked and every session has ended or the grace is over; returns when the grace ends.
async fn accept_loop(
    state: &Arc<AppState>,
    listener: TcpListener,
    connections: &TaskTracker,
) -> tokio::time::Instant {
    let token = state.shutdown.clone();
    let grace = state.config.shutdown_grace;
    // Our own accept loop rather than `axum::serve`: it sets hyper's header read timeout
    // (slow-header clients), and lets shutdown wait for plain HTTP connections separately
    // from the WebSocket tasks.
    let mut make_service =
        router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    // After the signal the listener stays open while sessions say goodbye, so load balancers
    // polling `/readyz` see 503 (and new link attempts get `gateway/shutting_down`) instead
    // of a refused connection; it closes once every session is gone or the grace is over.
    let mut draining = false;
    let drain_deadline = tokio::time::sleep(grace);
    tokio::pin!(drain_deadline);
    loop {
        let (stream, peer) = tokio::select! {
            () = token.cancelled(), if !draining => {
                draining = true;
                state.tracker.close();
                drain_deadline.as_mut().reset(tokio::time::Instant::now() + grace);
                continue;
            }
            () = state.tracker.wait(), if draining => break,
            () = &mut drain_deadline, if draining => {
                tracing::warn!(open = state.tracker.len(), "sessions still open after the grace period");
                break;
            }
            accepted = crate::net::accept(&listener, "gateway") => accepted,
        };
        let service = match make_service.call(peer).await {
            Ok(s) => s,
            Err(never) => match never {},
        };
        let token = token.clone();
        let handshake_timeout = state.config.handshake_timeout;
        let accepted_while_draining = draining;
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .max_buf_size(MAX_REQUEST_HEAD);
            let conn = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(conn);
            // A connection accepted while draining gets a moment to send its one request
            // (a readiness probe, a last link attempt that will be told to come back).
            let settle = if accepted_while_draining {
                DRAIN_SETTLE
            } else {
                std::time::Duration::ZERO
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                () = async { token.cancelled().await; tokio::time::sleep(settle).await } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(grace, conn).await;
                }
            }
        });
    }
    drain_deadline.deadline()
}

/// After the accept loops: what the sessions left for other nodes reaches Redis, the webhooks
/// of their endings get what is left of the grace, and plain HTTP connections a grace of
/// their own.
async fn finish(state: &Arc<AppState>, connections: TaskTracker, drained_by: tokio::time::Instant) {
    let grace = state.config.shutdown_grace;
    state.store.flush(grace).await;
    state.notifier.drain(drained_by).await;
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after the grace period");
    }
    tracing::info!("stopped");
}

/// A random key for the embedded simulator, so nothing else on the machine can use it as an
/// open Unipile stand-in by guessing.
fn demo_api_key() -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("demo_{n:032x}")
}

/// The address to call ourselves on: loopback when bound to every interface.
fn loopback_of(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], addr.port())),
        _ => addr,
    }
}
