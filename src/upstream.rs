//! The Unipile client: Start Auth Intent and Solve a Checkpoint over one `reqwest::Client`,
//! with lenient typed decoding and a retry policy for transient failures.
//!
//! Decoding is deliberately lenient (UNIPILE.md: fields vary across SDK versions): responses are
//! told apart by their `object` field, unknown fields are kept, and only what the link attempt
//! needs is required.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::config::UpstreamHttp;

/// Retry delays never exceed this, whatever the attempt count.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Start Auth Intent answers at once upstream; this only guards against a hung connection.
const INTENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Larger bodies are not Unipile answers; refusing them bounds memory per session.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// How transient failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Total time spent retrying, counted from the first failure of a call.
    pub budget: Duration,
    /// First delay; doubles per attempt with full jitter, capped at 5 s.
    pub base: Duration,
}

/// Timeouts of the client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Opening a TCP/TLS connection.
    pub connect: Duration,
    /// One Solve a Checkpoint long poll (at least 90 s: Unipile holds it until the QR rotates).
    pub poll: Duration,
}

/// Every 30 s an HTTP/2 connection idle at the frame level (long polls pending, nothing said)
/// is pinged, so a connection that died silently fails its pending polls (they are retried)
/// instead of leaving every session on it waiting for the poll timeout.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(30);
/// Time an HTTP/2 keepalive ping has to come back.
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The Unipile API client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct UnipileClient {
    http: reqwest::Client,
    intent_url: String,
    checkpoint_url: String,
    /// Marked sensitive so it is never printed by `Debug` of a request.
    api_key: HeaderValue,
    retry: RetryPolicy,
    poll_timeout: Duration,
}

impl std::fmt::Debug for UnipileClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnipileClient")
            .field("intent_url", &self.intent_url)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

/// The body of Start Auth Intent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IntentRequest {
    /// `whatsapp`, `telegram`, `google_messages`, …
    pub provider: String,
    /// Always `{"qrcode":true}` here.
    pub credentials: Credentials,
    /// Relink this existing account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Opaque operator reference, echoed in Unipile's account webhooks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `{"custom_proxy":{…}}` when the attempt goes through the user's proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

/// `credentials` of Start Auth Intent.
#[derive(Debug, Clone, Serialize)]
pub struct Credentials {
    /// Ask for the QR flow.
    pub qrcode: bool,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials { qrcode: true }
    }
}

/// What either auth endpoint answered with `200`.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthResponse {
    /// A QR code to show (first, or a new one after the previous expired).
    QrCode {
        /// The string to encode.
        qrcode: String,
        /// The intent (`acc_…`) to poll.
        intent_id: String,
    },
    /// The provider needs an answer (2FA password, OTP…).
    Checkpoint {
        /// The intent to answer.
        intent_id: String,
        /// Unipile's checkpoint object (`{"type":"2FA","platform":"APP"}`).
        checkpoint: Value,
    },
    /// An OAuth URL: not a step a QR flow can take.
    OauthUrl {
        /// Where Unipile wanted the user to go.
        url: String,
    },
    /// The linked account, every field kept.
    Account(Map<String, Value>),
}

/// An error answer from Unipile (`{"object":"Error","type":…}`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// `type`, e.g. `api/proxy_error` or `provider/timeout`.
    pub kind: String,
    /// The HTTP status.
    pub status: u16,
    /// `detail`, if any (may hold user data: never logged verbatim).
    pub detail: Option<String>,
    /// `req_id`, for support requests.
    pub req_id: Option<String>,
}

/// Why an upstream call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Unipile answered with an error object.
    #[error("unipile answered {} {}", .0.status, .0.kind)]
    Api(ApiError),
    /// Transient failures outlasted the retry budget.
    #[error("unipile unavailable after {attempts} attempts: {last}")]
    Unavailable {
        /// Calls made.
        attempts: u32,
        /// The last failure, without secrets.
        last: String,
    },
    /// Unipile answered something that is not a response this client knows.
    #[error("unipile answered an unreadable response: {0}")]
    Invalid(String),
}

/// Failure to build the client.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The API key cannot be sent in a header.
    #[error("the Unipile API key contains characters not allowed in an HTTP header")]
    BadApiKey,
    /// The base URL is not an http(s) URL.
    #[error("the Unipile API URL {0:?} is not an http(s) URL")]
    BadUrl(String),
    /// reqwest could not build its client (TLS setup).
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// One attempt's failure, before the retry policy decides.
enum Failure {
    Final(Error),
    /// Worth another try; `api` is what to surface if the budget runs out.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
        api: Option<ApiError>,
    },
}

impl UnipileClient {
    /// Builds the client: one connection pool for every session.
    pub fn new(
        base_url: &str,
        api_key: &str,
        retry: RetryPolicy,
        timeouts: Timeouts,
        version: UpstreamHttp,
    ) -> Result<Self, BuildError> {
        let base = base_url.trim_end_matches('/');
        let parsed = url::Url::parse(base).map_err(|_| BuildError::BadUrl(base.to_owned()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(BuildError::BadUrl(base.to_owned()));
        }
        let mut api_key = HeaderValue::from_str(api_key).map_err(|_| BuildError::BadApiKey)?;
        api_key.set_sensitive(true);
        let builder = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .tcp_nodelay(true)
            .user_agent(concat!("qrlink/", env!("CARGO_PKG_VERSION")));
        let builder = match version {
            UpstreamHttp::Http1 => builder.http1_only(),
            UpstreamHttp::Http2 => {
                let builder = builder
                    .http2_keep_alive_interval(HTTP2_KEEPALIVE)
                    .http2_keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
                    .http2_keep_alive_while_idle(true);
                // TLS offers h2 by ALPN; plain HTTP has no negotiation (h2c upgrade is not
                // supported by hyper's client), so the client speaks HTTP/2 from the start.
                if parsed.scheme() == "http" {
                    builder.http2_prior_knowledge()
                } else {
                    builder
                }
            }
        };
        let http = builder.build()?;
        Ok(UnipileClient {
            http,
            intent_url: format!("{base}/v2/auth/intent"),
            checkpoint_url: format!("{base}/v2/auth/checkpoint"),
            api_key,
            retry,
            poll_timeout: timeouts.poll,
        })
    }

    /// Start Auth Intent (`POST /v2/auth/intent`).
    pub async fn start_intent(&self, req: &IntentRequest) -> Result<AuthResponse, Error> {
        let body = serde_json::to_value(req).expect("IntentRequest serializes");
        self.call("intent", &self.intent_url, &body, INTENT_TIMEOUT)
            .await
    }

    /// Solve a Checkpoint (`POST /v2/auth/checkpoint`): `code` is `""` while waiting for a scan.
    /// A long poll; dropping the future aborts the request and closes its connection.
    pub async fn solve_checkpoint(
        &self,
        intent_id: &str,
        code: &str,
    ) -> Result<AuthResponse, Error> {
        let body = serde_json::json!({ "code": code, "intent_id": intent_id });
        self.call("checkpoint", &self.checkpoint_url, &body, self.poll_timeout)
            .await
    }

    async fn call(
        &self,
        endpoint: &'static str,
        url: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<AuthResponse, Error> {
        let mut attempts = 0u32;
        let mut deadline: Option<Instant> = None;
        loop {
            attempts += 1;
            let started = Instant::now();
            let result = self.once(url, body, timeout).await;
            let (status_label, out) = match result {
                Ok((status, resp)) => (status.to_string(), Ok(resp)),
                Err(failure) => ("failed".to_owned(), Err(failure)),
            };
            metrics::histogram!("qrlink_upstream_request_seconds",
                "endpoint" => endpoint, "status" => status_label)
            .record(started.elapsed().as_secs_f64());
            let (reason, retry_after, api) = match out {
                Ok(resp) => return Ok(resp),
                Err(Failure::Final(e)) => {
                    if let Error::Api(api) = &e {
                        metrics::counter!("qrlink_upstream_errors_total", "type" => api.kind.clone())
                            .increment(1);
                    }
                    return Err(e);
                }
                Err(Failure::Transient {
                    reason,
                    retry_after,
                    api,
                }) => (reason, retry_after, api),
            };
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + self.retry.budget);
            let delay = retry_after.unwrap_or_else(|| backoff(self.retry.base, attempts));
            if now + delay > deadline {
                tracing::warn!(endpoint, attempts, %reason, "upstream retry budget exhausted");
                return Err(match api {
                    Some(api) => Error::Api(api),
                    None => Error::Unavailable {
                        attempts,
                        last: reason,
                    },
                });
            }
            metrics::counter!("qrlink_upstream_retries_total", "endpoint" => endpoint).increment(1);
            tracing::debug!(endpoint, attempts, %reason, delay_ms = delay.as_millis() as u64, "retrying upstream call");
            tokio::time::sleep(delay).await;
        }
    }

    async fn once(
        &self,
        url: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<(u16, AuthResponse), Failure> {
        let sent = self
            .http
            .post(url)
            .header("x-api-key", self.api_key.clone())
            .header("accept", "application/json")
            .json(body)
            .timeout(timeout)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return Err(Failure::Transient {
                    reason: describe(&e),
                    retry_after: None,
                    api: None,
                });
            }
        };
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let bytes = match read_limited(resp).await {
            Ok(b) => b,
            Err(reason) => {
                return Err(Failure::Transient {
                    reason,
                    retry_after: None,
                    api: None,
                });
            }
        };
        decode(status, retry_after, &bytes).map(|r| (status.as_u16(), r))
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if buf.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("response body over {MAX_BODY_BYTES} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// A failure description that never includes the URL's secrets or bodies.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "body read failed"
    } else {
        "request failed"
    };
    match e.status() {
        Some(s) => format!("{what} ({s})"),
        None => what.to_owned(),
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_parse(v)?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn httpdate_parse(v: &str) -> Option<std::time::SystemTime> {
    httpdate::parse_http_date(v).ok()
}

/// Full-jitter exponential backoff: uniform in `[0, min(cap, base * 2^(attempt-1))]`.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    exp.mul_f64(rand::random::<f64>())
}

/// Types Unipile uses for failures that go away by themselves.
fn transient_type(kind: &str) -> bool {
    matches!(
        kind,
        "api/internal_error"
            | "provider/server_error"
            | "api/too_many_requests"
            | "provider/too_many_requests"
    )
}

fn decode(
    status: StatusCode,
    retry_after: Option<Duration>,
    bytes: &[u8],
) -> Result<AuthResponse, Failure> {
    let value: Option<Value> = serde_json::from_slice(bytes).ok();
    if status.is_success() {
        let Some(Value::Object(map)) = value else {
            return Err(Failure::Final(Error::Invalid(format!(
                "{status} with a body that is not a JSON object"
            ))));
        };
        return decode_object(map).map_err(Failure::Final);
    }
    let api = value.as_ref().and_then(|v| api_error(v, status));
    let transient_status = matches!(status.as_u16(), 500 | 502 | 503 | 504);
    match api {
        Some(api) if status == StatusCode::TOO_MANY_REQUESTS || transient_type(&api.kind) => {
            Err(Failure::Transient {
                reason: format!("{} {}", api.status, api.kind),
                retry_after,
                api: Some(api),
            })
        }
        Some(api) => Err(Failure::Final(Error::Api(api))),
        None if transient_status || status == StatusCode::TOO_MANY_REQUESTS => {
            Err(Failure::Transient {
                reason: format!("HTTP {status} without an error body"),
                retry_after,
                api: None,
            })
        }
        None => Err(Failure::Final(Error::Invalid(format!(
            "HTTP {status} without a Unipile error body"
        )))),
    }
}

fn api_error(v: &Value, status: StatusCode) -> Option<ApiError> {
    let kind = v.get("type")?.as_str()?.to_owned();
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    Some(ApiError {
        kind,
        status: v
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(status.as_u16()),
        detail: text("detail"),
        req_id: text("req_id"),
    })
}

fn decode_object(mut map: Map<String, Value>) -> Result<AuthResponse, Error> {
    let object = map
        .get("object")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut take_str = |k: &str| match map.remove(k) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(Error::Invalid(format!("{object} without a {k} string"))),
    };
    match object.as_str() {
        "AuthenticationQrCode" => Ok(AuthResponse::QrCode {
            qrcode: take_str("qrcode")?,
            intent_id: take_str("intent_id")?,
        }),
        "AuthenticationCheckpoint" => {
            let intent_id = take_str("intent_id")?;
            let checkpoint = map.remove("checkpoint").unwrap_or(Value::Null);
            if !checkpoint.is_object() {
                return Err(Error::Invalid(
                    "checkpoint without a checkpoint object".into(),
                ));
            }
            Ok(AuthResponse::Checkpoint {
                intent_id,
                checkpoint,
            })
        }
        "OauthUrl" => Ok(AuthResponse::OauthUrl {
            url: take_str("url")?,
        }),
        "Account" => {
            if !matches!(map.get("id"), Some(Value::String(_))) {
                return Err(Error::Invalid("Account without an id".into()));
            }
            Ok(AuthResponse::Account(map))
        }
        "Error" => {
            let v = Value::Object(map);
            api_error(&v, StatusCode::OK)
                .map(Error::Api)
                .map_or_else(|| Err(Error::Invalid("Error without a type".into())), Err)
        }
        "" => Err(Error::Invalid("response without an object field".into())),
        other => Err(Error::Invalid(format!("unknown object {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> Result<AuthResponse, Failure> {
        decode(StatusCode::OK, None, v.to_string().as_bytes())
    }

    #[test]
    fn decodes_the_four_response_objects_leniently() {
        let qr =
            ok(json!({"object":"AuthenticationQrCode","qrcode":"2@x","intent_id":"acc_1","new":1}));
        assert!(matches!(qr, Ok(AuthResponse::QrCode { ref qrcode, .. }) if qrcode == "2@x"));
        let cp = ok(
            json!({"object":"AuthenticationCheckpoint","intent_id":"acc_1","checkpoint":{"type":"2FA"}}),
        );
        assert!(matches!(cp, Ok(AuthResponse::Checkpoint { .. })));
        let oauth = ok(json!({"object":"OauthUrl","url":"https://x"}));
        assert!(matches!(oauth, Ok(AuthResponse::OauthUrl { .. })));
        let acc =
            ok(json!({"object":"Account","id":"acc_1","status":"SOMETHING_NEW","extra":{"a":1}}));
        match acc {
            Ok(AuthResponse::Account(m)) => assert_eq!(m["extra"], json!({"a":1})),
            _ => panic!("expected an account"),
        }
    }

    #[test]
    fn bad_success_bodies_are_invalid_not_panics() {
        for body in [
            json!({"object":"AuthenticationQrCode","intent_id":"acc_1"}),
            json!({"object":"Mystery"}),
            json!([1, 2]),
            json!({"qrcode":"x"}),
        ] {
            assert!(matches!(ok(body), Err(Failure::Final(Error::Invalid(_)))));
        }
        assert!(matches!(
            decode(StatusCode::OK, None, b"{\"object\":\"Auth"),
            Err(Failure::Final(Error::Invalid(_)))
        ));
    }

    #[test]
    fn error_bodies_are_final_or_transient_by_type() {
        let body = |t: &str, s: u16| {
            json!({"object":"Error","type":t,"status":s,"detail":"d","req_id":"r"}).to_string()
        };
        let proxy = decode(
            StatusCode::BAD_GATEWAY,
            None,
            body("api/proxy_error", 502).as_bytes(),
        );
        assert!(
            matches!(proxy, Err(Failure::Final(Error::Api(ref a))) if a.kind == "api/proxy_error" && a.req_id.as_deref() == Some("r"))
        );
        let internal = decode(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            body("api/internal_error", 500).as_bytes(),
        );
        assert!(matches!(internal, Err(Failure::Transient { .. })));
        let bare = decode(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            b"Service Unavailable",
        );
        assert!(matches!(bare, Err(Failure::Transient { api: None, .. })));
        let teapot = decode(StatusCode::IM_A_TEAPOT, None, b"<html>");
        assert!(matches!(teapot, Err(Failure::Final(Error::Invalid(_)))));
    }

    #[test]
    fn backoff_stays_under_its_cap() {
        for attempt in 1..40 {
            assert!(backoff(Duration::from_millis(250), attempt) <= BACKOFF_CAP);
        }
    }
}
