//! The Unipile client: Start Auth Intent and Solve a Checkpoint over one connection pool
//! ([`pool`]: HTTP/2 streams or lean HTTP/1.1 connections, as the server agrees), with lenient
//! typed decoding and a retry policy for transient failures.
//!
//! Decoding is deliberately lenient (UNIPILE.md: fields vary across SDK versions): responses are
//! told apart by their `object` field, unknown fields are kept, and only what the link attempt
//! needs is required.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

mod connect;
mod h1;
mod h2pool;
mod pool;
mod tls;

pub use connect::proxies_from_env;
pub use hyper_util::client::proxy::matcher::Matcher as ProxyMatcher;
pub use pool::{IDLE_TIMEOUT, PoolError, set_thread_shard};

use connect::{Dialer, Offer};
use pool::{CallError, Outgoing, Pool};

const USER_AGENT: &str = concat!("qrlink/", env!("CARGO_PKG_VERSION"));

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

/// The Unipile API client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct UnipileClient {
    pool: Pool,
    intent: Call,
    checkpoint: Call,
    /// Marked sensitive so it is never printed by `Debug` of a request.
    api_key: HeaderValue,
    retry: RetryPolicy,
    poll_timeout: Duration,
}

/// The HTTP version of the client (`--upstream-http`, `--upstream-http2-streams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// What the server picks: on `https://` ALPN offers `h2` and `http/1.1`; plain `http://`
    /// speaks HTTP/1.1.
    Auto {
        /// HTTP/2 streams one connection carries before the pool opens another.
        streams_per_connection: usize,
    },
    /// HTTP/1.1 only: a connection per call in flight.
    Http1,
    /// HTTP/2 only (prior knowledge on plain `http://`).
    Http2 {
        /// Streams one connection carries before the pool opens another.
        streams_per_connection: usize,
    },
}

/// How the client reaches Unipile besides the HTTP version.
#[derive(Debug)]
pub struct Reach {
    /// A PEM file of roots trusted besides the webpki roots (`--upstream-ca-file`).
    pub ca_file: Option<PathBuf>,
    /// Proxy rules (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`).
    pub proxies: ProxyMatcher,
    /// How long a connection may stay idle before it is closed.
    pub idle_timeout: Duration,
}

impl Default for Reach {
    /// No extra roots, the environment's proxies, [`IDLE_TIMEOUT`].
    fn default() -> Self {
        Reach {
            ca_file: None,
            proxies: proxies_from_env(),
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// One of the two endpoints.
#[derive(Clone)]
struct Call {
    /// Metrics label.
    label: &'static str,
    uri: hyper::Uri,
}

impl Call {
    fn new(label: &'static str, base: &str, path: &str) -> Result<Call, BuildError> {
        let uri = format!("{base}{path}")
            .parse()
            .map_err(|_| BuildError::BadUrl(base.to_owned()))?;
        Ok(Call { label, uri })
    }
}

impl std::fmt::Debug for UnipileClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnipileClient")
            .field("intent_url", &self.intent.uri)
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
    /// The extra roots file cannot be read or holds no certificate.
    #[error("--upstream-ca-file: {0}")]
    CaFile(String),
    /// The upstream or its proxy cannot be reached as configured.
    #[error("cannot reach the Unipile API URL: {0}")]
    Reach(String),
    /// The webhook deliverer's HTTP client cannot be built (TLS setup).
    #[error("cannot build the webhook client: {0}")]
    Webhook(#[from] reqwest::Error),
    /// Cluster mode's Redis URL is unusable (the gateway's other startup failure; the URL
    /// itself is not repeated, it may carry a password).
    #[error("{0}")]
    Cluster(String),
}

/// One attempt's failure, before the retry policy decides.
#[derive(Debug)]
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
    /// Builds the client: one connection pool for every session, the environment's proxies.
    pub fn new(
        base_url: &str,
        api_key: &str,
        retry: RetryPolicy,
        timeouts: Timeouts,
        version: HttpVersion,
    ) -> Result<Self, BuildError> {
        Self::with_reach(
            base_url,
            api_key,
            retry,
            timeouts,
            version,
            Reach::default(),
        )
    }

    /// [`UnipileClient::new`] with extra roots, proxy rules and idle timeout of its own.
    pub fn with_reach(
        base_url: &str,
        api_key: &str,
        retry: RetryPolicy,
        timeouts: Timeouts,
        version: HttpVersion,
        reach: Reach,
    ) -> Result<Self, BuildError> {
        let base = base_url.trim_end_matches('/');
        let parsed = url::Url::parse(base).map_err(|_| BuildError::BadUrl(base.to_owned()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(BuildError::BadUrl(base.to_owned()));
        }
        let mut api_key = HeaderValue::from_str(api_key).map_err(|_| BuildError::BadApiKey)?;
        api_key.set_sensitive(true);
        let (offer, streams) = match version {
            HttpVersion::Auto {
                streams_per_connection,
            } => (Offer::Both, streams_per_connection),
            HttpVersion::Http1 => (Offer::Http1, 1),
            HttpVersion::Http2 {
                streams_per_connection,
            } => (Offer::Http2, streams_per_connection),
        };
        let roots = tls::roots(reach.ca_file.as_deref()).map_err(BuildError::CaFile)?;
        let dialer = Dialer::new(&parsed, offer, roots, &reach.proxies, timeouts.connect)
            .map_err(BuildError::Reach)?;
        Ok(UnipileClient {
            pool: Pool::new(dialer, streams, reach.idle_timeout),
            intent: Call::new("intent", base, "/v2/auth/intent")?,
            checkpoint: Call::new("checkpoint", base, "/v2/auth/checkpoint")?,
            api_key,
            retry,
            poll_timeout: timeouts.poll,
        })
    }

    /// Open HTTP/2 connections; `None` when the client speaks HTTP/1.1 only.
    pub fn http2_connections(&self) -> Option<usize> {
        self.pool.h2_connections()
    }

    /// Idle HTTP/1.1 connections kept for the next call.
    pub fn idle_http1_connections(&self) -> usize {
        self.pool.idle_http1()
    }

    /// Start Auth Intent (`POST /v2/auth/intent`).
    pub async fn start_intent(&self, req: &IntentRequest) -> Result<AuthResponse, Error> {
        let body = serde_json::to_vec(req).expect("IntentRequest serializes");
        self.call(&self.intent, body.into(), INTENT_TIMEOUT).await
    }

    /// Solve a Checkpoint (`POST /v2/auth/checkpoint`): `code` is `""` while waiting for a scan.
    /// A long poll; dropping the future aborts the request and closes its connection.
    pub async fn solve_checkpoint(
        &self,
        intent_id: &str,
        code: &str,
    ) -> Result<AuthResponse, Error> {
        // Serialized once: only these bytes stay alive during the long poll and its retries.
        let body = serde_json::to_vec(&serde_json::json!({ "code": code, "intent_id": intent_id }))
            .expect("a JSON object serializes");
        self.call(&self.checkpoint, body.into(), self.poll_timeout)
            .await
    }

    async fn call(
        &self,
        call: &Call,
        body: Bytes,
        timeout: Duration,
    ) -> Result<AuthResponse, Error> {
        let endpoint = call.label;
        let mut attempts = 0u32;
        let mut deadline: Option<Instant> = None;
        loop {
            attempts += 1;
            let started = Instant::now();
            let result = self.once(call, &body, timeout).await;
            let (status_label, out) = match result {
                Ok((status, resp)) => (status.to_string(), Ok(resp)),
                Err(failure) => ("failed".to_owned(), Err(failure)),
            };
            metrics::histogram!("qrlink_upstream_request_seconds",
                "endpoint" => endpoint, "status" => status_label)
            .record(started.elapsed().as_secs_f64());
            let (reason, retry_after, api) = match out {
                Ok(resp) => return Ok(resp),
                Err(Failure::Final(mut e)) => {
                    if let Error::Unavailable { attempts: a, .. } = &mut e {
                        *a = attempts;
                    }
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
            // `Retry-After` is a floor, never less than our own backoff: a `Retry-After: 0` or a
            // date in the past once meant retrying at once, forever (the budget check below
            // never saw a delay larger than what was left), hammering the upstream.
            let backoff = backoff(self.retry.base, attempts);
            let delay = retry_after.map_or(backoff, |after| after.max(backoff));
            // Not `now + delay`: a `Retry-After` of u64::MAX seconds overflows an Instant.
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() || delay > left {
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
        call: &Call,
        body: &Bytes,
        timeout: Duration,
    ) -> Result<(u16, AuthResponse), Failure> {
        let headers = [
            ("x-api-key", &self.api_key),
            ("accept", &JSON),
            ("content-type", &JSON),
            ("user-agent", &USER_AGENT_VALUE),
        ];
        let out = Outgoing {
            uri: &call.uri,
            headers: &headers,
            body,
        };
        let answer = match tokio::time::timeout(timeout, self.pool.send(&out)).await {
            Ok(Ok(answer)) => answer,
            // Configuration, not weather: no retry makes the server speak HTTP/2.
            Ok(Err(CallError::Pool(PoolError::NoH2))) => {
                tracing::warn!("{}", PoolError::NoH2);
                return Err(Failure::Final(Error::Unavailable {
                    attempts: 1,
                    last: PoolError::NoH2.to_string(),
                }));
            }
            Ok(Err(e)) => return Err(transient(e.to_string())),
            Err(_) => return Err(transient("timed out".to_owned())),
        };
        decode(answer.status, answer.retry_after, &answer.body).map(|r| (answer.status.as_u16(), r))
    }
}

/// A transport failure, worth another try.
fn transient(reason: String) -> Failure {
    Failure::Transient {
        reason,
        retry_after: None,
        api: None,
    }
}

/// `application/json`, for `accept` and `content-type`.
static JSON: HeaderValue = HeaderValue::from_static("application/json");
/// `user-agent`.
static USER_AGENT_VALUE: HeaderValue = HeaderValue::from_static(USER_AGENT);

fn append_limited(buf: &mut Vec<u8>, chunk: &[u8]) -> Result<(), String> {
    if buf.len() + chunk.len() > MAX_BODY_BYTES {
        return Err(format!("response body over {MAX_BODY_BYTES} bytes"));
    }
    buf.extend_from_slice(chunk);
    Ok(())
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_value(headers.get(RETRY_AFTER)?.to_str().ok()?)
}

/// A `Retry-After` value: seconds, or an HTTP date (past dates are 0).
fn retry_after_value(v: &str) -> Option<Duration> {
    let v = v.trim();
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

    /// Every session keeps a long poll's future alive for its whole life, so its size is
    /// memory per session. Connecting (TLS state, the HTTP/2 handshake) is boxed away.
    #[test]
    fn a_pending_long_poll_future_stays_small_with_either_transport() {
        for (url, version) in [
            ("http://127.0.0.1:9", HttpVersion::Http1),
            (
                "https://127.0.0.1:9",
                HttpVersion::Http2 {
                    streams_per_connection: 100,
                },
            ),
            (
                "https://127.0.0.1:9",
                HttpVersion::Auto {
                    streams_per_connection: 100,
                },
            ),
        ] {
            let client = UnipileClient::new(
                url,
                "k",
                RetryPolicy {
                    budget: Duration::from_secs(1),
                    base: Duration::from_millis(10),
                },
                Timeouts {
                    connect: Duration::from_secs(1),
                    poll: Duration::from_secs(1),
                },
                version,
            )
            .unwrap();
            let size = std::mem::size_of_val(&client.solve_checkpoint("acc_1", ""));
            eprintln!("{version:?}: {size} bytes");
            assert!(
                size <= 2048,
                "{version:?}: a long poll future of {size} bytes"
            );
        }
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

#[cfg(test)]
#[path = "decode_props.rs"]
mod props;

#[cfg(test)]
#[path = "pool_tests.rs"]
mod pool_tests;
