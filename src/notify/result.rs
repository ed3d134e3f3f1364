//! Result tokens: the `result` of an `account` frame, a JWT the app's backend can trust where it
//! cannot trust the browser's word (DESIGN.md section 10).
//!
//! Signed with the connect tokens' secret (`QRLINK_TOKEN_SECRET`, HS256): the backend that
//! minted the connect token already holds it. Short-lived (five minutes: the page hands it to
//! its host at once) and with a `jti` the backend uses once, so a token that leaks from a
//! browser cannot be replayed later.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::now_secs;
use crate::link::protocol::{Envelope, ServerFrame};
use crate::secret;

/// The `iss` of every result token.
pub const ISSUER: &str = "qrlink";

/// How long a result token is valid after it is issued.
pub const LIFETIME: Duration = Duration::from_secs(5 * 60);

/// A result token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultClaims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// The connect token's `sub`: whose attempt this was. Absent only for an attempt that had
    /// no connect token, which cannot happen while tokens are required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The linked Unipile account (`acc_…`).
    pub account_id: String,
    /// The provider linked.
    pub provider: String,
    /// The gateway's session id (`ses_…`), as in the frames and the webhooks.
    pub session: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expiry: `iat` + [`LIFETIME`].
    pub exp: u64,
    /// A unique id: the backend accepts each token once.
    pub jti: String,
}

impl ResultClaims {
    /// The claims for an `account` frame of `session`, issued now.
    pub fn new(
        session: &str,
        provider: &str,
        sub: Option<&str>,
        account: &Map<String, Value>,
    ) -> Self {
        let iat = now_secs();
        ResultClaims {
            iss: ISSUER.to_owned(),
            sub: sub.map(str::to_owned),
            account_id: account
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            provider: provider.to_owned(),
            session: session.to_owned(),
            iat,
            exp: iat + LIFETIME.as_secs(),
            jti: secret::random_base62("res_", 22),
        }
    }
}

/// Signs result claims with `secret` (HS256).
pub fn mint(secret: &str, claims: &ResultClaims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding cannot fail")
}

/// Adds the result token to an `account` frame about to leave, when connect tokens are on
/// (`secret`). True if it did: the caller takes it off again ([`unstamp`]) before watchers see
/// the frame, as they never see the session's other credentials.
pub fn stamp(env: &mut Envelope, secret: Option<&str>, provider: &str) -> bool {
    let (
        Some(secret),
        ServerFrame::Account {
            account,
            state,
            result,
        },
    ) = (secret, &mut env.frame)
    else {
        return false;
    };
    let claims = ResultClaims::new(&env.session, provider, state.as_deref(), account);
    *result = Some(mint(secret, &claims));
    true
}

/// Takes the result token off a frame.
pub fn unstamp(env: &mut Envelope) {
    if let ServerFrame::Account { result, .. } = &mut env.frame {
        *result = None;
    }
}

/// Why a result token does not verify; says what is wrong without echoing the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// Bad signature, bad shape, expired, wrong issuer.
    #[error("invalid result token: {0}")]
    Invalid(String),
}

/// Verifies a result token: signature (HS256 with `secret`), `iss`, `exp` (five seconds of
/// leeway for clock skew). Whether its `jti` was seen before is the caller's to check.
pub fn verify(secret: &str, token: &str) -> Result<ResultClaims, ResultError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss"]);
    jsonwebtoken::decode::<ResultClaims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map(|data| data.claims)
    .map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        ResultError::Invalid(
            match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::InvalidIssuer => "not issued by qrlink",
                ErrorKind::InvalidAlgorithm => "wrong algorithm",
                ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
                _ => "malformed",
            }
            .to_owned(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "result-secret-for-tests";

    fn account() -> Map<String, Value> {
        serde_json::json!({"object": "Account", "id": "acc_42", "name": "+33 6"})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let claims = ResultClaims::new("ses_1", "whatsapp", Some("user-7"), &account());
        assert_eq!(claims.exp - claims.iat, 300);
        let token = mint(SECRET, &claims);
        assert_eq!(verify(SECRET, &token).unwrap(), claims);
        let other = ResultClaims::new("ses_1", "whatsapp", Some("user-7"), &account());
        assert_ne!(claims.jti, other.jti, "a jti per token");
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let claims = ResultClaims::new("ses_1", "whatsapp", Some("u"), &account());
        assert_eq!(
            verify("another-secret", &mint(SECRET, &claims)),
            Err(ResultError::Invalid("bad signature".into()))
        );
        let mut old = claims.clone();
        old.iat -= 3600;
        old.exp = old.iat + 300;
        assert_eq!(
            verify(SECRET, &mint(SECRET, &old)),
            Err(ResultError::Invalid("expired".into()))
        );
        let mut foreign = claims;
        foreign.iss = "someone-else".into();
        assert_eq!(
            verify(SECRET, &mint(SECRET, &foreign)),
            Err(ResultError::Invalid("not issued by qrlink".into()))
        );
        assert!(verify(SECRET, "not.a.jwt").is_err());
    }

    #[test]
    fn a_connect_token_is_not_a_result_token() {
        use crate::http::auth::now_secs;
        let connect = crate::http::auth::mint(
            SECRET,
            &crate::http::auth::Claims {
                sub: "u".into(),
                exp: now_secs() + 60,
                iat: None,
                provider: None,
                account_id: None,
                proxy: None,
            },
        );
        assert!(verify(SECRET, &connect).is_err());
    }
}
