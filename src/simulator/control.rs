//! The control API under `/_control`, for the standalone simulator and load tests: queue faults,
//! scan, and inspect intents.
//!
//! It needs no API key on purpose: it is a test tool. Never expose it where the public can
//! reach it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::record::unix_micros;
use super::reply::Reply;
use super::scan_page::json_result;
use super::{Endpoint, Fault, Simulator};

/// Body of `POST /_control/faults`.
#[derive(Debug, Deserialize)]
struct FaultRequest {
    endpoint: Endpoint,
    fault: Fault,
}

/// `POST /_control/faults` with `{"endpoint":"intent"|"checkpoint","fault":{"kind":…}}`.
pub(super) async fn push_fault(State(sim): State<Simulator>, body: Bytes) -> Response {
    let request: FaultRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return Reply::invalid(&format!("Invalid fault: {error}.")).into_response(),
    };
    if let Err(detail) = request.fault.validate() {
        return Reply::invalid(&detail).into_response();
    }
    sim.push_fault(request.endpoint, request.fault);
    Json(json!({"ok": true})).into_response()
}

/// `POST /_control/scan/{intent_id}`: like the phone scanning the current QR.
pub(super) async fn scan(State(sim): State<Simulator>, Path(intent_id): Path<String>) -> Response {
    json_result(sim.scan(&intent_id))
}

/// `GET /_control/intents`: every intent id with its provider and phase, in creation order.
pub(super) async fn intents(State(sim): State<Simulator>) -> Response {
    let intents: Vec<Value> = sim
        .intent_ids()
        .iter()
        .filter_map(|id| {
            let cell = sim.cell(id)?;
            let intent = cell.lock();
            Some(json!({
                "intent_id": id,
                "provider": intent.provider.name,
                "phase": intent.phase_name(),
                "qr_count": intent.qrs.len(),
            }))
        })
        .collect();
    Json(json!({"intents": intents})).into_response()
}

/// `GET /_control/intents/{intent_id}`: the intent's phase, issued QRs and polls.
pub(super) async fn intent(
    State(sim): State<Simulator>,
    Path(intent_id): Path<String>,
) -> Response {
    let Some(cell) = sim.cell(&intent_id) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"ok": false, "error": "unknown_intent"})),
        )
            .into_response();
    };
    let (provider, phase, account_id, qrs) = {
        let intent = cell.lock();
        let qrs: Vec<Value> = intent
            .qrs
            .iter()
            .map(|q| {
                json!({
                    "qrcode": q.qr,
                    "issued_at_us": unix_micros(q.issued_at),
                    "expires_at_us": unix_micros(q.issued_at + intent.provider.qr_ttl),
                })
            })
            .collect();
        (
            intent.provider.name.clone(),
            intent.phase_name(),
            intent.account_id.clone(),
            qrs,
        )
    };
    let polls = sim.inner.recorder.polls_of(&intent_id);
    Json(json!({
        "intent_id": intent_id,
        "provider": provider,
        "phase": phase,
        "account_id": account_id,
        "qrs": qrs,
        "polls": polls,
    }))
    .into_response()
}
