//! The JSON endpoints: `/api/sessions`, `/api/providers`, `/api/deliveries`, `/config.json`,
//! `/readyz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::SIMULATOR_MOUNT;
use crate::state::AppState;

/// Display names of the providers the page knows; others show their id.
fn provider_name(id: &str) -> &str {
    match id {
        "whatsapp" => "WhatsApp",
        "google_messages" => "Google Messages",
        "telegram" => "Telegram",
        other => other,
    }
}

fn providers_json(state: &AppState) -> Vec<serde_json::Value> {
    state
        .config
        .providers
        .iter()
        .map(|p| {
            json!({
                "id": p,
                "name": provider_name(p),
                "qr_ttl_secs": state.config.qr_ttl.for_provider(p).as_secs(),
            })
        })
        .collect()
}

/// `GET /config.json`: what the link page needs to know about this gateway.
pub async fn page_config(State(state): State<Arc<AppState>>) -> Response {
    let demo = state.simulator.is_some();
    let body = json!({
        "protocol": crate::link::protocol::PROTOCOL_VERSION,
        "demo": demo,
        "token_required": state.config.token_secret.is_some(),
        // How long the page may try to resume a dropped attempt; 0 = resume off.
        "resume_grace_secs": state.config.resume_grace.as_secs_f64(),
        "simulator": demo.then_some(SIMULATOR_MOUNT),
        "demo_twofa_password": state.demo_twofa_password,
        "providers": providers_json(&state),
    });
    Json(body).into_response()
}

/// `GET /api/providers`.
pub async fn list_providers(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "providers": providers_json(&state) }))
}

/// `GET /healthz`: the process is alive (always 200 while it serves), with the store's state;
/// in cluster mode a Redis that does not answer shows here, not in `/readyz`: link attempts go
/// on without it.
pub async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let mut health = state.store.health();
    health["status"] = json!("ok");
    Json(health)
}

/// `GET /api/sessions`: a snapshot of the open sessions.
pub async fn list_sessions(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "sessions": state.store.snapshot_all().await }))
}

/// `DELETE /api/sessions/{id}`: 204, or 404 when no such session is open.
pub async fn cancel_session(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    if state.store.cancel(&id).await {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no such session" })),
        )
            .into_response()
    }
}

/// `GET /api/stats`: the dashboard's totals and charts: every node's sessions ended by
/// outcome since it started, open now, open sessions over the last 15 minutes and time to scan,
/// and their sums (`store::stats`).
pub async fn stats(State(state): State<Arc<AppState>>) -> Json<crate::store::stats::ClusterStats> {
    Json(state.store.stats(&state.config.node_id()).await)
}

/// `GET /readyz`: 503 once shutdown has begun.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    }
}

/// `GET /api/deliveries`: the webhook outbox for the dashboard's deliveries panel: whether
/// webhooks are on, how many are pending and the oldest's age, whether the receiver said 410,
/// and the last deliveries (event, session, status, attempts, next retry), newest first.
pub async fn list_deliveries(
    State(state): State<Arc<AppState>>,
) -> Json<crate::notify::Deliveries> {
    Json(state.notifier.deliveries())
}
