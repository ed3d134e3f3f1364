//! Standard Webhooks 1.0 signatures: `webhook-signature` is `v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`, once per secret, space-separated, so a receiver that knows either the
//! old or the new secret accepts a webhook while the operator rotates them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The signing keys of `QRLINK_WEBHOOK_SECRET`, in the order given. Its `Debug` shows how many
/// there are, never a key.
#[derive(Clone)]
pub struct Secrets {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} keys)", self.keys.len())
    }
}

impl Secrets {
    /// Parses space-separated `whsec_<base64>` secrets. The error is one line for the operator
    /// and never repeats a secret.
    pub fn parse(list: &str) -> Result<Secrets, String> {
        let mut keys = Vec::new();
        for (n, secret) in list.split_whitespace().enumerate() {
            let Some(b64) = secret.strip_prefix(SECRET_PREFIX) else {
                return Err(format!(
                    "--webhook-secret: secret {} does not start with whsec_ (Standard Webhooks secrets are whsec_ followed by base64)",
                    n + 1
                ));
            };
            let key = STANDARD.decode(b64).map_err(|_| {
                format!(
                    "--webhook-secret: secret {} is not whsec_ followed by base64",
                    n + 1
                )
            })?;
            if key.is_empty() {
                return Err(format!("--webhook-secret: secret {} is empty", n + 1));
            }
            keys.push(hmac::Key::new(hmac::HMAC_SHA256, &key));
        }
        if keys.is_empty() {
            return Err("--webhook-secret is empty".to_owned());
        }
        Ok(Secrets { keys })
    }

    /// How many secrets sign each webhook.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true: parsing refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `webhook-signature` header value for a message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut header = String::with_capacity(self.keys.len() * 48);
        for key in &self.keys {
            let mut ctx = hmac::Context::with_key(key);
            ctx.update(id.as_bytes());
            ctx.update(b".");
            ctx.update(timestamp.to_string().as_bytes());
            ctx.update(b".");
            ctx.update(body);
            if !header.is_empty() {
                header.push(' ');
            }
            header.push_str("v1,");
            STANDARD.encode_string(ctx.sign().as_ref(), &mut header);
        }
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_librarys_vector_signs_the_same() {
        // The official Rust library's own test (standardwebhooks 1.0.1, `test_sign`).
        let secrets = Secrets::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            secrets.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn each_secret_gives_one_signature_in_order() {
        let a = Secrets::parse("whsec_c2VjcmV0LWE=").unwrap();
        let b = Secrets::parse("whsec_c2VjcmV0LWI=").unwrap();
        let both = Secrets::parse("  whsec_c2VjcmV0LWE=   whsec_c2VjcmV0LWI= ").unwrap();
        let sig = |s: &Secrets| s.sign("msg_1", 7, b"{}");
        assert_eq!(sig(&both), format!("{} {}", sig(&a), sig(&b)));
        assert_ne!(sig(&a), sig(&b));
    }

    #[test]
    fn bad_secrets_are_refused_in_one_line_without_the_secret() {
        for (bad, says) in [
            ("", "empty"),
            ("s3cret", "does not start with whsec_"),
            ("whsec_c2VjcmV0LWE= hunter2", "secret 2 does not start"),
            ("whsec_not*base64!", "not whsec_ followed by base64"),
            ("whsec_", "empty"),
        ] {
            let err = Secrets::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
            assert!(bad.is_empty() || !err.contains(bad.trim()), "{err}");
        }
        assert_eq!(
            format!("{:?}", Secrets::parse("whsec_c2VjcmV0LWE=").unwrap()),
            "Secrets(1 keys)"
        );
    }
}
