//! The WebSocket upgrade of `/ws/link/{provider}`, done by hand so the socket loop drives
//! tokio-tungstenite itself: axum's `Message` cannot carry the raw frames [`crate::http::link_socket`] sends
//! to fragment large messages.
//!
//! [`Upgrade`] does what axum's `WebSocketUpgrade` does for HTTP/1.1 (the gateway serves
//! nothing else): the same checks, the same subprotocol choice, and a `101 Switching Protocols`
//! answer; the socket is built by the task the answer spawns. Two rejections follow RFC 6455
//! §4.2.1–4.2.2 more closely than axum does: a version other than 13 gets `426 Upgrade Required`
//! naming the version we speak, and a `Sec-WebSocket-Key` that is not 16 bytes in base64 is
//! refused.

use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::http::coalesce::Coalesce;

/// The socket an upgraded connection becomes: writes between flushes leave together
/// ([`Coalesce`]), so a fragmented `qr` message is one system call and one TCP segment.
pub type Socket = WebSocketStream<Coalesce<TokioIo<Upgraded>>>;

/// Extractor for a WebSocket upgrade request (RFC 6455 §4.2.1).
#[must_use = "the upgrade happens only when `on_upgrade`'s response is returned"]
pub struct Upgrade {
    key: HeaderValue,
    /// The subprotocols the client offered, in its order.
    offered: Vec<HeaderValue>,
    /// The subprotocol to answer with.
    chosen: Option<HeaderValue>,
    on_upgrade: OnUpgrade,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("offered", &self.offered)
            .field("chosen", &self.chosen)
            .finish_non_exhaustive()
    }
}

/// Why a request is not a WebSocket upgrade; the status and text axum's extractor answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not `GET`.
    MethodNotGet,
    /// No `upgrade` token in `Connection`.
    InvalidConnectionHeader,
    /// `Upgrade` is not `websocket`.
    InvalidUpgradeHeader,
    /// `Sec-WebSocket-Version` is not 13: answered `426 Upgrade Required` with
    /// `Sec-WebSocket-Version: 13`, so the client can retry with a version we speak.
    InvalidWebSocketVersionHeader,
    /// No `Sec-WebSocket-Key`.
    WebSocketKeyHeaderMissing,
    /// `Sec-WebSocket-Key` is not a base64-encoded 16-byte value.
    InvalidWebSocketKeyHeader,
    /// hyper offers no upgrade for this connection (e.g. HTTP/1.0).
    ConnectionNotUpgradable,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Rejection::MethodNotGet => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            ),
            Rejection::InvalidConnectionHeader => (
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ),
            Rejection::InvalidUpgradeHeader => (
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            ),
            Rejection::InvalidWebSocketVersionHeader => {
                return (
                    StatusCode::UPGRADE_REQUIRED,
                    [(header::SEC_WEBSOCKET_VERSION, "13")],
                    "`Sec-WebSocket-Version` header did not include '13'",
                )
                    .into_response();
            }
            Rejection::WebSocketKeyHeaderMissing => (
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            ),
            Rejection::InvalidWebSocketKeyHeader => (
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header is not 16 bytes in base64",
            ),
            Rejection::ConnectionNotUpgradable => (
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ),
        };
        (status, body).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Rejection> {
        if parts.method != Method::GET {
            return Err(Rejection::MethodNotGet);
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(Rejection::InvalidConnectionHeader);
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err(Rejection::InvalidUpgradeHeader);
        }
        let version_13 = headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
        if !version_13 {
            return Err(Rejection::InvalidWebSocketVersionHeader);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(Rejection::WebSocketKeyHeaderMissing)?
            .clone();
        if !is_websocket_key(key.as_bytes()) {
            return Err(Rejection::InvalidWebSocketKeyHeader);
        }
        let offered = entries(headers, header::SEC_WEBSOCKET_PROTOCOL)
            .filter_map(|p| HeaderValue::from_bytes(p).ok())
            .collect();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(Rejection::ConnectionNotUpgradable)?;
        Ok(Upgrade {
            key,
            offered,
            chosen: None,
            on_upgrade,
        })
    }
}

/// Whether `key` is 16 bytes in base64 (RFC 6455 §4.2.1): 22 characters of the base64 alphabet
/// and `==`, the 22nd carrying only the last byte's final 2 bits, so one of `A`, `Q`, `g`, `w`
/// (RFC 4648 §3.5: the unused bits are zero).
fn is_websocket_key(key: &[u8]) -> bool {
    let [body @ .., last, b'=', b'='] = key else {
        return false;
    };
    body.len() == 21
        && body
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        && matches!(last, b'A' | b'Q' | b'g' | b'w')
}

/// The entries of a comma-separated header, every occurrence, trimmed.
fn entries(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Whether a comma-separated header (every occurrence) lists `token`, ignoring case.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    entries(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

impl Upgrade {
    /// Chooses the first of `ours` (in our order of preference) that the client offered; the
    /// answer names it in `Sec-WebSocket-Protocol`. Offered entries we do not speak (such as
    /// `qrlink.token.<jwt>`) are never echoed.
    pub fn protocols(mut self, ours: impl IntoIterator<Item = &'static str>) -> Self {
        self.chosen = ours
            .into_iter()
            .find(|p| self.offered.iter().any(|o| o.as_bytes() == p.as_bytes()))
            .map(HeaderValue::from_static);
        self
    }

    /// The `101 Switching Protocols` answer. Once hyper has sent it, a new task builds the
    /// socket with `config` and runs `callback` on it; a connection that fails to upgrade is
    /// dropped silently, as axum does.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, callback: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket upgrade failed");
                    return;
                }
            };
            let socket = WebSocketStream::from_raw_socket(
                Coalesce::new(TokioIo::new(upgraded)),
                Role::Server,
                Some(config),
            )
            .await;
            callback(socket).await;
        });
        let accept = derive_accept_key(self.key.as_bytes());
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
        );
        if let Some(protocol) = self.chosen {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::is_websocket_key;

    #[test]
    fn a_key_of_16_bytes_in_base64_is_accepted() {
        for key in [
            "dGhlIHNhbXBsZSBub25jZQ==",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "/////////////////////w==",
            "x3JJHMbDL1EzLkh9GBhXDw==",
        ] {
            assert!(is_websocket_key(key.as_bytes()), "{key}");
        }
    }

    #[test]
    fn a_key_of_another_length_or_alphabet_is_refused() {
        for key in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZQ===",
            "dGhlIHNhbXBsZSBub25jZXg=",
            "dGhlIHNhbXBsZSBub25jZXh4eA==",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25j-Q==",
            "dGhlIHNhbXBsZSBub25j Q==",
            "dGhlIHNhbXBsZSBub25jZQ==\0",
        ] {
            assert!(!is_websocket_key(key.as_bytes()), "{key:?}");
        }
    }
}
