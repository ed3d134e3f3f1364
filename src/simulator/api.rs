//! The Unipile endpoints: `POST /v2/auth/intent` and the long poll `POST /v2/auth/checkpoint`.
//!
//! Order of checks on both: record the request, check `X-API-KEY`, consume a scripted fault,
//! then validate the body. Bodies are read as bytes and parsed here, so malformed JSON gets a
//! Unipile `400 api/invalid_parameters` rather than axum's own rejection.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use super::fault::{Endpoint, FaultAction};
use super::intent::Step;
use super::record::{PollGuard, RecordedRequest};
use super::reply::Reply;
use super::{IntentCell, Simulator};

const INTENT_PATH: &str = "/v2/auth/intent";
const CHECKPOINT_PATH: &str = "/v2/auth/checkpoint";

/// Largest accepted `code`; a 2FA password is short, anything longer is a client bug.
const MAX_CODE_CHARS: usize = 1024;

/// Proxy protocols Unipile accepts in `config.custom_proxy.protocol`.
const PROXY_PROTOCOLS: [&str; 4] = ["https", "http", "socks5", "socks4"];

/// `POST /v2/auth/intent`.
pub(super) async fn intent(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = sim.record(INTENT_PATH, &headers, &body);
    intent_reply(&sim, &headers, body)
        .await
        .into_timed_response()
}

async fn intent_reply(sim: &Simulator, headers: &HeaderMap, body: Value) -> Reply {
    if let Err(reply) = sim.check_key(headers) {
        return reply;
    }
    let hold = match sim.apply_fault(Endpoint::Intent).await {
        Ok(hold) => hold,
        Err(early) => return early,
    };
    let request = match parse_intent(sim, &body) {
        Ok(request) => request,
        Err(detail) => return Reply::invalid(&detail),
    };
    let reply =
        Reply::object(sim.start_intent(request.provider, request.account_id, request.twofa));
    match sim.hold_answer(hold).await {
        Ok(()) => reply,
        Err(shutting_down) => shutting_down,
    }
}

/// `POST /v2/auth/checkpoint`: every call is recorded as a [`super::PollRecord`], and a hang-up
/// is recorded when hyper drops this future.
pub(super) async fn checkpoint(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = sim.record(CHECKPOINT_PATH, &headers, &body);
    let intent_id = body["intent_id"].as_str().unwrap_or_default().to_owned();
    let guard = PollGuard::start(sim.inner.recorder.clone(), intent_id);
    let reply = checkpoint_reply(&sim, &headers, &body, guard.started()).await;
    guard.answered(reply.status.as_u16(), reply.label.clone());
    reply.into_timed_response()
}

async fn checkpoint_reply(
    sim: &Simulator,
    headers: &HeaderMap,
    body: &Value,
    started: Instant,
) -> Reply {
    if let Err(reply) = sim.check_key(headers) {
        return reply;
    }
    let mut hold = None;
    if let Some(fault) = sim.inner.faults.pop(Endpoint::Checkpoint) {
        if fault.finishes_intent() {
            if let Some(cell) = body["intent_id"].as_str().and_then(|id| sim.cell(id)) {
                cell.lock().time_out(Instant::now());
                cell.notify();
            }
        }
        match sim.act_on(fault.action()).await {
            Ok(late) => hold = late,
            Err(early) => return early,
        }
    }
    let (intent_id, code) = match parse_checkpoint(body) {
        Ok(fields) => fields,
        Err(detail) => return Reply::invalid(detail),
    };
    let Some(cell) = sim.cell(intent_id) else {
        return Reply::intent_not_found();
    };
    let (reply, is_final) = sim.long_poll(&cell, started, code).await;
    if let Err(shutting_down) = sim.hold_answer(hold).await {
        return shutting_down;
    }
    // A caller that hung up (during the long poll or a held answer) dropped this future before
    // here, which leaves a final answer to the intent's next poll. Nothing awaits from here on,
    // so reaching this line means the answer goes out.
    if is_final {
        cell.lock().delivered();
    }
    reply
}

/// The fallback: Unipile's 404 for any other path.
pub(super) async fn not_found() -> Response {
    Reply::error(
        404,
        "api/resource_not_found",
        Some("The simulator has no such route."),
    )
    .into_timed_response()
}

impl Simulator {
    /// Records a `/v2/auth/*` request and returns its body as JSON (`Null` when it is not).
    fn record(&self, path: &str, headers: &HeaderMap, body: &Bytes) -> Value {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        self.inner.recorder.request(RecordedRequest {
            path: path.to_owned(),
            body: body.clone(),
            has_api_key: headers.contains_key("x-api-key"),
        });
        body
    }

    /// 401 unless `X-API-KEY` holds the configured key.
    fn check_key(&self, headers: &HeaderMap) -> Result<(), Reply> {
        match headers.get("x-api-key") {
            None => Err(Reply::error(
                401,
                "api/missing_authorization",
                Some("The X-API-KEY header is missing."),
            )),
            Some(key) if key.as_bytes() == self.inner.api_key.as_bytes() => Ok(()),
            Some(_) => Err(Reply::error(
                401,
                "api/expired_authorization",
                Some("The API key is invalid or expired."),
            )),
        }
    }

    /// Consumes the next fault of `endpoint`, if any, and carries it out (see [`Self::act_on`]).
    async fn apply_fault(&self, endpoint: Endpoint) -> Result<Option<Duration>, Reply> {
        match self.inner.faults.pop(endpoint) {
            Some(fault) => self.act_on(fault.action()).await,
            None => Ok(None),
        }
    }

    /// Carries out a fault: an answer, a stall until hang-up or shutdown, or a delay. `Err` is
    /// the answer to send instead of the normal one; `Ok(Some(hold))` means go on normally,
    /// then hold the answer that long (see [`Self::hold_answer`]).
    async fn act_on(&self, action: FaultAction) -> Result<Option<Duration>, Reply> {
        match action {
            FaultAction::Reply(reply) => Err(reply),
            FaultAction::Stall => {
                self.inner.shutdown.cancelled().await;
                Err(Reply::shutting_down())
            }
            FaultAction::Delay(delay) => {
                tokio::select! {
                    () = tokio::time::sleep(delay) => Ok(None),
                    () = self.inner.shutdown.cancelled() => Err(Reply::shutting_down()),
                }
            }
            FaultAction::Hold(hold) => Ok(Some(hold)),
        }
    }

    /// Waits `hold` (if any) before an answer that is already decided goes out; `Err` on
    /// shutdown. The handler is dropped here if the caller hangs up meanwhile.
    async fn hold_answer(&self, hold: Option<Duration>) -> Result<(), Reply> {
        let Some(hold) = hold else {
            return Ok(());
        };
        tokio::select! {
            () = tokio::time::sleep(hold) => Ok(()),
            () = self.inner.shutdown.cancelled() => Err(Reply::shutting_down()),
        }
    }

    /// Waits until the intent has something to say to a poll that started at `started`; the
    /// flag says whether it is the intent's final answer ([`Step::Final`]).
    async fn long_poll(&self, cell: &IntentCell, started: Instant, code: &str) -> (Reply, bool) {
        // Subscribe before reading the state, so a change in between still wakes us.
        let mut changes = cell.changed.subscribe();
        let start_qr = cell.lock().qrs.len();
        loop {
            let (step, changed) =
                cell.lock()
                    .poll(Instant::now(), started, start_qr, code, &self.inner.minter);
            if changed {
                cell.notify();
            }
            let until = match step {
                Step::Answer(reply) => return (reply, false),
                Step::Final(reply) => return (reply, true),
                Step::WaitUntil(until) => until,
            };
            tokio::select! {
                // The sender lives in `cell`, so this never reports a closed channel.
                _ = changes.changed() => {}
                () = tokio::time::sleep_until(until.into()) => {}
                () = self.inner.shutdown.cancelled() => return (Reply::shutting_down(), false),
            }
        }
    }
}

/// A validated intent request.
struct IntentRequest {
    provider: super::ProviderSim,
    account_id: Option<String>,
    twofa: Option<String>,
}

fn parse_intent(sim: &Simulator, body: &Value) -> Result<IntentRequest, String> {
    let Some(object) = body.as_object() else {
        return Err("The body must be a JSON object.".to_owned());
    };
    let name = object
        .get("provider")
        .and_then(Value::as_str)
        .ok_or("`provider` is required and must be a string.")?;
    let provider = sim
        .provider(name)
        .ok_or_else(|| format!("Unknown provider {name:?}."))?
        .clone();
    let credentials = object
        .get("credentials")
        .and_then(Value::as_object)
        .ok_or("`credentials` is required and must be an object.")?;
    if credentials.get("qrcode") != Some(&Value::Bool(true)) {
        return Err(
            "`credentials.qrcode` must be true: only the QR code flow is supported.".into(),
        );
    }
    let twofa = optional_string(credentials.get("twofa"), "credentials.twofa")?;
    let account_id = optional_string(object.get("account_id"), "account_id")?;
    if account_id.as_deref().is_some_and(|id| id.is_empty()) {
        return Err("`account_id` must not be empty.".to_owned());
    }
    optional_string(object.get("state"), "state")?;
    if let Some(config) = object.get("config") {
        let config = config.as_object().ok_or("`config` must be an object.")?;
        if let Some(proxy) = config.get("custom_proxy") {
            check_proxy(proxy)?;
        }
    }
    Ok(IntentRequest {
        provider,
        account_id,
        twofa,
    })
}

fn optional_string(value: Option<&Value>, name: &str) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{name}` must be a string.")),
    }
}

fn check_proxy(proxy: &Value) -> Result<(), String> {
    let proxy = proxy
        .as_object()
        .ok_or("`config.custom_proxy` must be an object.")?;
    if proxy
        .get("host")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("`config.custom_proxy.host` is required.".to_owned());
    }
    if !proxy
        .get("port")
        .and_then(Value::as_u64)
        .is_some_and(|p| (1..=65535).contains(&p))
    {
        return Err("`config.custom_proxy.port` must be a port number.".to_owned());
    }
    if let Some(protocol) = proxy.get("protocol") {
        if !protocol
            .as_str()
            .is_some_and(|p| PROXY_PROTOCOLS.contains(&p))
        {
            return Err(
                "`config.custom_proxy.protocol` must be https, http, socks5 or socks4.".into(),
            );
        }
    }
    for field in ["username", "password"] {
        optional_string(proxy.get(field), &format!("config.custom_proxy.{field}"))?;
    }
    Ok(())
}

fn parse_checkpoint(body: &Value) -> Result<(&str, &str), &'static str> {
    let intent_id = body["intent_id"]
        .as_str()
        .ok_or("`intent_id` is required and must be a string.")?;
    let code = body["code"]
        .as_str()
        .ok_or("`code` is required and must be a string (empty while waiting for a scan).")?;
    if code.chars().count() > MAX_CODE_CHARS {
        return Err("`code` is too long.");
    }
    Ok((intent_id, code))
}
