//! The HTTP surface: the router, its middleware, and the handlers behind each path.
//!
//! - [`link_socket`]: the `/ws/link/{provider}` socket loop; carries frames, decides nothing upstream.
//! - [`upgrade`]: the WebSocket upgrade of `/ws/link/{provider}` (tokio-tungstenite directly).
//! - [`coalesce`]: gathers a socket's writes between flushes into one system call.
//! - [`watch`]: the `/ws/watch` socket for dashboards.
//! - [`api`]: `/api/*`, `/config.json`, `/readyz`.
//! - [`auth`]: Origin allowlist, connect tokens, admin token, client address behind proxies.
//! - [`assets`]: the embedded pages of `web/`.
//! - [`embed`]: `/embed.json`, whether a site may frame the link page (`/qrlink.js` asks).

pub mod api;
pub mod assets;
pub mod auth;
pub mod coalesce;
pub mod embed;
pub mod link_socket;
pub mod upgrade;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};

use crate::state::AppState;

/// Where the embedded simulator is mounted in demo mode.
pub const SIMULATOR_MOUNT: &str = "/simulator";

/// The gateway's routes; `serve` adds connection info (the WebSocket handler needs it).
pub fn router(state: Arc<AppState>) -> Router {
    // The operator's views: admin token, or loopback clients when none is configured.
    let admin = Router::new()
        .route("/api/sessions", get(api::list_sessions))
        .route("/api/sessions/{id}", delete(api::cancel_session))
        .route("/api/providers", get(api::list_providers))
        .route("/api/deliveries", get(api::list_deliveries))
        .route("/api/stats", get(api::stats))
        .route(
            "/metrics",
            get(|State(state): State<Arc<AppState>>| async move {
                state.notifier.update_gauges();
                crate::metrics::render()
            }),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let mut app = Router::new()
        .route("/ws/link/{provider}", get(link_socket::link))
        .route("/ws/watch", get(watch::watch))
        .route("/config.json", get(api::page_config))
        .route("/embed.json", get(embed::embed_json))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .merge(admin)
        .fallback(assets::serve);
    if let Some(sim) = &state.simulator {
        app = app.nest_service(SIMULATOR_MOUNT, sim.router());
    }
    app.layer(middleware::from_fn_with_state(
        state.clone(),
        security_headers,
    ))
    .with_state(state)
}

async fn require_admin(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<std::collections::HashMap<String, String>>,
    req: Request,
    next: Next,
) -> Response {
    match auth::admin(
        &state.config,
        peer,
        req.headers(),
        params.get("admin_token"),
    ) {
        Ok(()) => next.run(req).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// Headers on every answer: no sniffing, no referrer (tokens may sit in page URLs), and for
/// pages a CSP whose `frame-ancestors` the operator configures; API answers are never cached.
async fn security_headers(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let api = req.uri().path().starts_with("/api/") || req.uri().path() == "/config.json";
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if api {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        let csp = format!(
            "{}; frame-ancestors {}",
            assets::CONTENT_SECURITY_POLICY,
            state.frame_ancestors
        );
        if let Ok(v) = HeaderValue::from_str(&csp) {
            headers.insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    resp
}
