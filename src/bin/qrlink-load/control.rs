//! The simulator's control API: scan an intent as a phone would, script faults, and read back
//! its poll records, whose `started`/`ended` are Unix microseconds on this machine's clock.

use std::time::Duration;

use serde::Deserialize;

/// A client of `{sim}/_control`.
#[derive(Debug, Clone)]
pub struct SimControl {
    http: reqwest::Client,
    base: String,
}

/// One `POST /v2/auth/checkpoint` call as the simulator recorded it.
#[derive(Debug, Clone, Deserialize)]
pub struct Poll {
    /// When the simulator started handling it (Unix µs).
    pub started: i64,
    /// When it answered or saw the caller hang up (Unix µs); `None` while pending.
    pub ended: Option<i64>,
    /// How it ended.
    pub outcome: PollOutcome,
}

/// `PollOutcome` of the simulator, as JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct PollOutcome {
    /// `pending`, `answered` or `hung_up`.
    pub kind: String,
    /// For `answered`: the body's `object` (`Account`, `AuthenticationQrCode`, `Error:…`).
    #[serde(default)]
    pub object: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IntentView {
    polls: Vec<Poll>,
}

impl SimControl {
    /// A control client for the simulator served at `base` (e.g. `http://127.0.0.1:3100`).
    pub fn new(base: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()?;
        Ok(SimControl {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// `POST /_control/scan/{intent_id}`: the phone scans the current QR.
    pub async fn scan(&self, intent_id: &str) -> Result<(), String> {
        let url = format!("{}/_control/scan/{intent_id}", self.base);
        let resp = self
            .http
            .post(url)
            .send()
            .await
            .map_err(|e| format!("scan request: {}", short_error(&e)))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("scan answered {}", resp.status().as_u16()))
        }
    }

    /// `POST /_control/faults`: the next call to `endpoint` (`intent` or `checkpoint`), whatever
    /// its intent, gets `fault` (the simulator's JSON, e.g. `{"kind":"stall"}`).
    pub async fn push_fault(&self, endpoint: &str, fault: &str) -> Result<(), String> {
        let body = format!(r#"{{"endpoint":"{endpoint}","fault":{fault}}}"#);
        let resp = self
            .http
            .post(format!("{}/_control/faults", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("fault request: {}", short_error(&e)))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("fault answered {}", resp.status().as_u16()))
        }
    }

    /// `GET /_control/intents/{intent_id}`: the intent's poll records, in start order.
    pub async fn polls(&self, intent_id: &str) -> Result<Vec<Poll>, String> {
        let url = format!("{}/_control/intents/{intent_id}", self.base);
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("intent request: {}", short_error(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("intent answered {}", resp.status().as_u16()));
        }
        let view: IntentView = resp.json().await.map_err(|e| format!("intent body: {e}"))?;
        Ok(view.polls)
    }
}

impl SimControl {
    /// Waits (bounded by `limit`) until the intent has a pending long poll, so a hang-up
    /// measured after it really happens mid-poll. False when none showed up in time.
    pub async fn wait_for_pending_poll(&self, intent_id: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(polls) = self.polls(intent_id).await
                && polls.iter().any(|p| p.outcome.kind == "pending")
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A reqwest error as one short kind, for the error table.
pub fn short_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else if e.is_request() {
        "request"
    } else {
        "other"
    }
}
