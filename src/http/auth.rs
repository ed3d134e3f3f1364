//! Who may do what: the Origin allowlist, connect tokens, the admin token, and the client's
//! address behind trusted proxies.
//!
//! The gateway spends the operator's Unipile subscription, so by default a browser page from
//! another site cannot open a link attempt through a visitor's browser (Origin check), and the
//! operator's views (`/ws/watch`, `/api/*`, `/metrics`) answer loopback clients only.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::secret::constant_time_eq;

/// The subprotocol a client offers to speak protocol v1.
pub const SUBPROTOCOL: &str = "qrlink.v1";
/// Prefix of the subprotocol entry carrying a connect token (keeps it out of URLs and logs).
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "qrlink.token.";

/// An HTTP refusal before any upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A browser page from an origin that is not allowed.
    ForeignOrigin,
    /// No or wrong admin token.
    Unauthorized,
    /// Admin views without an admin token answer loopback clients only.
    NotLoopback,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, error) = match self {
            Refusal::ForeignOrigin => (StatusCode::FORBIDDEN, "origin not allowed"),
            Refusal::Unauthorized => (StatusCode::UNAUTHORIZED, "admin token required"),
            Refusal::NotLoopback => (
                StatusCode::FORBIDDEN,
                "set QRLINK_ADMIN_TOKEN to use this from another machine",
            ),
        };
        let mut resp = (status, Json(serde_json::json!({ "error": error }))).into_response();
        if self == Refusal::Unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy. Untrusted peers cannot spoof it.
pub fn client_addr(config: &Config, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
    let trusted = |ip: IpAddr| config.trusted_proxies.iter().any(|c| c.contains(ip));
    if !trusted(peer.ip()) {
        return peer;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted(ip) => continue,
            Ok(ip) => return SocketAddr::new(ip, 0),
            // A hop we cannot read: stop believing the chain there.
            Err(_) => break,
        }
    }
    peer
}

/// Checks a WebSocket's `Origin`: none (not a browser), the gateway's own, or an allowed one.
/// Scheme, host and port must match exactly; case is ignored because host names are
/// case-insensitive. `null` (sandboxed frames, `file:` pages) is never allowed.
pub fn check_origin(config: &Config, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| Refusal::ForeignOrigin)?
        .to_ascii_lowercase();
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        let host = host.to_ascii_lowercase();
        if origin == format!("http://{host}") || origin == format!("https://{host}") {
            return Ok(());
        }
    }
    if config.allowed_origins.iter().any(|allowed| {
        allowed
            .trim()
            .trim_end_matches('/')
            .eq_ignore_ascii_case(&origin)
    }) {
        return Ok(());
    }
    Err(Refusal::ForeignOrigin)
}

/// Admin views: the admin token as a Bearer header (or `admin_token` query parameter, for
/// WebSockets from browsers, which cannot set headers); without a configured token, loopback
/// clients only.
pub fn admin(
    config: &Config,
    peer: SocketAddr,
    headers: &HeaderMap,
    query_token: Option<&String>,
) -> Result<(), Refusal> {
    match &config.admin_token {
        Some(expected) => {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let given = bearer.or(query_token.map(String::as_str));
            match given {
                Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
                _ => Err(Refusal::Unauthorized),
            }
        }
        None if client_addr(config, peer, headers).ip().is_loopback() => Ok(()),
        None => Err(Refusal::NotLoopback),
    }
}

/// A connect token's claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The operator's reference for the user; sent to Unipile as `state`, echoed on `account`.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The only provider this token may link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Relink this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Unipile `custom_proxy` for this attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Value>,
}

/// Why a connect token was refused (logged; the client only learns `request/unauthorized`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// None was sent.
    #[error("no connect token")]
    Missing,
    /// Bad signature, bad shape, expired.
    #[error("invalid connect token: {0}")]
    Invalid(String),
    /// Valid for longer than the configured maximum.
    #[error("connect token lives longer than allowed")]
    TooLong,
    /// Minted for another provider.
    #[error("connect token is for another provider")]
    WrongProvider,
}

/// The token a client sent: `?token=`, else the `qrlink.token.<jwt>` subprotocol entry.
pub fn token_from_request<'a>(
    query: Option<&'a String>,
    headers: &'a HeaderMap,
) -> Option<&'a str> {
    if let Some(t) = query.filter(|t| !t.is_empty()) {
        return Some(t);
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
}

/// Verifies a connect token for `provider`.
pub fn verify(
    secret: &str,
    max_ttl: Duration,
    token: Option<&str>,
    provider: &str,
) -> Result<Claims, TokenError> {
    let token = token.ok_or(TokenError::Missing)?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let claims = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| TokenError::Invalid(e.kind_str()))?
    .claims;
    // The longest reading of the lifetime: a token cannot shorten it with an `iat` in the future.
    let now = now_secs();
    let start = claims.iat.unwrap_or(now).min(now);
    if claims.exp.saturating_sub(start) > max_ttl.as_secs() {
        return Err(TokenError::TooLong);
    }
    if claims.provider.as_deref().is_some_and(|p| p != provider) {
        return Err(TokenError::WrongProvider);
    }
    Ok(claims)
}

/// Mints a connect token (for `qrlink token` and tests).
pub fn mint(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding cannot fail")
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for jsonwebtoken::errors::Error {
    /// The error kind without token contents.
    fn kind_str(&self) -> String {
        use jsonwebtoken::errors::ErrorKind;
        match self.kind() {
            ErrorKind::ExpiredSignature => "expired".into(),
            ErrorKind::InvalidSignature => "bad signature".into(),
            ErrorKind::InvalidAlgorithm => "wrong algorithm".into(),
            ErrorKind::MissingRequiredClaim(c) => format!("missing {c}"),
            ErrorKind::ImmatureSignature => "not valid yet".into(),
            _ => "malformed".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret-for-tests";

    fn claims(ttl: u64) -> Claims {
        Claims {
            sub: "user-42".into(),
            exp: now_secs() + ttl,
            iat: Some(now_secs()),
            provider: Some("whatsapp".into()),
            account_id: None,
            proxy: None,
        }
    }

    #[test]
    fn a_minted_token_verifies_for_its_provider_only() {
        let t = mint(SECRET, &claims(60));
        let max = Duration::from_secs(600);
        assert_eq!(
            verify(SECRET, max, Some(&t), "whatsapp").unwrap().sub,
            "user-42"
        );
        assert_eq!(
            verify(SECRET, max, Some(&t), "telegram"),
            Err(TokenError::WrongProvider)
        );
    }

    #[test]
    fn forged_expired_long_and_missing_tokens_are_refused() {
        let max = Duration::from_secs(600);
        let forged = mint("another-secret", &claims(60));
        assert!(matches!(
            verify(SECRET, max, Some(&forged), "whatsapp"),
            Err(TokenError::Invalid(_))
        ));
        let mut old = claims(0);
        old.exp = now_secs() - 60;
        old.iat = Some(now_secs() - 120);
        let expired = mint(SECRET, &old);
        assert_eq!(
            verify(SECRET, max, Some(&expired), "whatsapp"),
            Err(TokenError::Invalid("expired".into()))
        );
        let long = mint(SECRET, &claims(3600));
        assert_eq!(
            verify(SECRET, max, Some(&long), "whatsapp"),
            Err(TokenError::TooLong)
        );
        assert_eq!(
            verify(SECRET, max, None, "whatsapp"),
            Err(TokenError::Missing)
        );
        assert!(verify(SECRET, max, Some("not.a.jwt"), "whatsapp").is_err());
    }

    #[test]
    fn tokens_come_from_the_query_or_the_subprotocol_list() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "qrlink.v1, qrlink.token.abc.def.ghi".parse().unwrap(),
        );
        assert_eq!(token_from_request(None, &headers), Some("abc.def.ghi"));
        let q = "xyz".to_owned();
        assert_eq!(token_from_request(Some(&q), &headers), Some("xyz"));
        assert_eq!(token_from_request(None, &HeaderMap::new()), None);
    }
}
