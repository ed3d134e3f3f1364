//! Scripted faults: a FIFO queue per endpoint; the next call to that endpoint (any intent)
//! consumes one fault instead of behaving normally.
//!
//! Faults are consumed after the API key check and before the body is looked at, so a fault
//! fires even for a request that would otherwise be rejected as invalid.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::reply::Reply;

/// A simulated Unipile endpoint that faults can be scripted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /v2/auth/intent`.
    Intent,
    /// `POST /v2/auth/checkpoint`.
    Checkpoint,
}

/// What one faulty call does instead of its normal behaviour.
///
/// On the control API it is JSON tagged by `kind`, e.g.
/// `{"kind":"error","error_type":"api/proxy_error","status":502}` or `{"kind":"stall"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// A Unipile error body, e.g. `api/proxy_error` with 502. On the checkpoint endpoint the
    /// intent stays alive, except for `provider/timeout`, which finishes it like a real timeout.
    Error {
        /// The error `type`, e.g. `api/proxy_error`.
        error_type: String,
        /// HTTP status and the body's `status` (500 if not a valid status code).
        status: u16,
        /// The body's `detail`; the title when absent.
        #[serde(default)]
        detail: Option<String>,
    },
    /// A bare status with a `text/plain` body (its reason phrase), like a load balancer's 503.
    Status {
        /// The HTTP status (500 if not a valid status code).
        status: u16,
    },
    /// 429 `api/too_many_requests` with a `Retry-After` header.
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// Never answers: the handler waits until the caller hangs up (or the simulator shuts down).
    Stall,
    /// 200 with a truncated JSON body that no client can decode.
    Malformed,
    /// 200 `{"object":"OauthUrl","url":"https://…"}`, a step a QR gateway cannot show.
    OauthUrl,
    /// Answers normally, after this delay.
    Delay {
        /// The delay in milliseconds.
        ms: u64,
    },
    /// Does the call's work as usual (an intent is created; a checkpoint call waits as usual,
    /// then takes the scan, the 2FA code or the timeout), then holds the answer this long before
    /// sending it: Unipile acted, but its answer is slow. A caller that hangs up meanwhile never sees the
    /// answer; a final one (`Account`, `provider/timeout`) then goes to the intent's next poll.
    /// That is the race a gateway aborting a poll at the wrong moment must survive.
    LateAnswer {
        /// How long the answer is held, in milliseconds.
        ms: u64,
    },
}

/// What a handler does with a consumed fault.
#[derive(Debug)]
pub(crate) enum FaultAction {
    /// Answer this instead of the normal answer.
    Reply(Reply),
    /// Never answer.
    Stall,
    /// Wait this long, then answer normally.
    Delay(std::time::Duration),
    /// Work out the normal answer, then wait this long before sending it.
    Hold(std::time::Duration),
}

/// The body a [`Fault::Malformed`] sends: an `AuthenticationQrCode` cut short.
pub(crate) const MALFORMED_BODY: &str = r#"{"object":"AuthenticationQrCode","qrcode":"2@"#;

impl Fault {
    /// What the handler should do.
    pub(crate) fn action(&self) -> FaultAction {
        match self {
            Fault::Error {
                error_type,
                status,
                detail,
            } => FaultAction::Reply(Reply::error(*status, error_type, detail.as_deref())),
            Fault::Status { status } => {
                let code = axum::http::StatusCode::from_u16(*status)
                    .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                let text = code.canonical_reason().unwrap_or("Error").to_owned();
                FaultAction::Reply(Reply::raw(code.as_u16(), "text/plain", text, "Status"))
            }
            Fault::RateLimited { retry_after_secs } => {
                let mut reply = Reply::error(
                    429,
                    "api/too_many_requests",
                    Some("Too many requests, retry later."),
                );
                reply.retry_after = Some(*retry_after_secs);
                FaultAction::Reply(reply)
            }
            Fault::Stall => FaultAction::Stall,
            Fault::Malformed => FaultAction::Reply(Reply::raw(
                200,
                "application/json",
                MALFORMED_BODY.to_owned(),
                "Malformed",
            )),
            Fault::OauthUrl => FaultAction::Reply(Reply::object(json!({
                "object": "OauthUrl",
                "url": "https://accounts.example.com/oauth/authorize?client_id=simulator",
            }))),
            Fault::Delay { ms } => FaultAction::Delay(std::time::Duration::from_millis(*ms)),
            Fault::LateAnswer { ms } => FaultAction::Hold(std::time::Duration::from_millis(*ms)),
        }
    }

    /// Whether this fault, answered on the checkpoint endpoint, ends the intent.
    pub(crate) fn finishes_intent(&self) -> bool {
        matches!(self, Fault::Error { error_type, .. } if error_type == "provider/timeout")
    }

    /// Why a fault from the control API cannot be used, if it cannot.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let status = match self {
            Fault::Error { status, .. } | Fault::Status { status } => *status,
            _ => return Ok(()),
        };
        // 1xx are not final answers and hyper refuses to send them as such.
        if (200..=599).contains(&status) {
            Ok(())
        } else {
            Err(format!(
                "{status} is not a final HTTP status code (200 to 599)."
            ))
        }
    }
}

/// One FIFO of faults per endpoint.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    intent: Mutex<VecDeque<Fault>>,
    checkpoint: Mutex<VecDeque<Fault>>,
}

impl FaultQueue {
    fn queue(&self, endpoint: Endpoint) -> std::sync::MutexGuard<'_, VecDeque<Fault>> {
        let queue = match endpoint {
            Endpoint::Intent => &self.intent,
            Endpoint::Checkpoint => &self.checkpoint,
        };
        queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a fault at the back of `endpoint`'s queue.
    pub fn push(&self, endpoint: Endpoint, fault: Fault) {
        self.queue(endpoint).push_back(fault);
    }

    /// Takes the next fault for `endpoint`, if any.
    pub fn pop(&self, endpoint: Endpoint) -> Option<Fault> {
        self.queue(endpoint).pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_use_the_documented_json_shape() {
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"error","error_type":"api/proxy_error","status":502}"#)
                .expect("error fault");
        assert_eq!(
            fault,
            Fault::Error {
                error_type: "api/proxy_error".to_owned(),
                status: 502,
                detail: None
            }
        );
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"rate_limited","retry_after_secs":3}"#).expect("429");
        assert_eq!(
            fault,
            Fault::RateLimited {
                retry_after_secs: 3
            }
        );
        let fault: Fault = serde_json::from_str(r#"{"kind":"oauth_url"}"#).expect("oauth");
        assert_eq!(fault, Fault::OauthUrl);
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"late_answer","ms":250}"#).expect("late answer");
        assert_eq!(fault, Fault::LateAnswer { ms: 250 });
        let endpoint: Endpoint = serde_json::from_str(r#""checkpoint""#).expect("endpoint");
        assert_eq!(endpoint, Endpoint::Checkpoint);
    }

    #[test]
    fn each_endpoint_has_its_own_fifo() {
        let queue = FaultQueue::default();
        queue.push(Endpoint::Checkpoint, Fault::Stall);
        queue.push(Endpoint::Checkpoint, Fault::Malformed);
        queue.push(Endpoint::Intent, Fault::OauthUrl);
        assert_eq!(queue.pop(Endpoint::Checkpoint), Some(Fault::Stall));
        assert_eq!(queue.pop(Endpoint::Intent), Some(Fault::OauthUrl));
        assert_eq!(queue.pop(Endpoint::Checkpoint), Some(Fault::Malformed));
        assert_eq!(queue.pop(Endpoint::Checkpoint), None);
    }

    #[test]
    fn malformed_bodies_do_not_parse() {
        assert!(serde_json::from_str::<serde_json::Value>(MALFORMED_BODY).is_err());
    }

    #[test]
    fn only_a_provider_timeout_error_finishes_an_intent() {
        let timeout = Fault::Error {
            error_type: "provider/timeout".to_owned(),
            status: 504,
            detail: None,
        };
        assert!(timeout.finishes_intent());
        assert!(!Fault::Status { status: 504 }.finishes_intent());
    }

    #[test]
    fn faults_with_impossible_statuses_are_refused() {
        assert!(Fault::Status { status: 42 }.validate().is_err());
        assert!(Fault::Status { status: 101 }.validate().is_err());
        assert!(Fault::Status { status: 503 }.validate().is_ok());
    }
}
