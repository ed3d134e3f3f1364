//! Minting of everything the simulator makes up: `acc_` ids, request ids, QR strings that look
//! like each provider's, and the Account object a successful link returns.
//!
//! All randomness comes from `rand::rng()`, so two QR strings are never equal in practice.

use std::time::{Instant, SystemTime};

use rand::Rng;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{Value, json};

/// Length of the random base62 part of an `acc_` id: Unipile's ids look like `acc_` + 22 chars.
const ID_CHARS: usize = 22;

/// Length of the per-QR code carried in demo scan URLs (`?c=…`): long enough not to be guessed,
/// short enough to keep the QR small.
const SCAN_CODE_CHARS: usize = 16;

/// One QR code issued for an intent.
#[derive(Debug, Clone)]
pub(crate) struct IssuedQr {
    /// The string the QR encodes, as sent in `AuthenticationQrCode.qrcode`.
    pub qr: String,
    /// The random code identifying this QR on the scan page, so a stale QR can be told apart.
    pub code: String,
    /// When it was issued; it expires at `issued_at + qr_ttl`.
    pub issued_at: Instant,
}

/// Makes ids, QR strings and Account objects for one simulator instance.
#[derive(Debug, Clone)]
pub(crate) struct Minter {
    /// Where the simulator's router is mounted, in demo mode; see `SimulatorConfig`.
    scan_base_url: Option<String>,
    /// `app_…`: the same for every account this simulator links, like one Unipile application.
    application_id: String,
}

impl Minter {
    /// A minter that encodes scan URLs under `scan_base_url` when set, realistic strings otherwise.
    pub fn new(scan_base_url: Option<String>) -> Self {
        let scan_base_url = scan_base_url.map(|url| url.trim_end_matches('/').to_owned());
        Minter {
            scan_base_url,
            application_id: format!("app_{}", base62(ID_CHARS)),
        }
    }

    /// A fresh intent id, which is also the id of the account it links: `acc_` + 22 base62 chars.
    pub fn intent_id(&self) -> String {
        format!("acc_{}", base62(ID_CHARS))
    }

    /// A fresh request id for error bodies.
    pub fn req_id() -> String {
        base62(32)
    }

    /// A fresh QR for `intent_id`, issued now.
    pub fn qr(&self, provider: &str, intent_id: &str) -> IssuedQr {
        let code = base62(SCAN_CODE_CHARS);
        let qr = match &self.scan_base_url {
            Some(base) => format!("{base}/scan/{intent_id}?c={code}"),
            None => realistic_qr(provider),
        };
        IssuedQr {
            qr,
            code,
            issued_at: Instant::now(),
        }
    }

    /// The Account object for a linked account `id` of `provider`.
    pub fn account(&self, provider: &str, id: &str) -> Value {
        let created_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        json!({
            "object": "Account",
            "id": id,
            "name": account_name(provider),
            "provider": provider,
            "status": "running",
            "created_at": created_at,
            "user_id": format!("usr_{}", base62(ID_CHARS)),
            "application_id": self.application_id,
            "is_locked": false,
            "metadata": {},
        })
    }
}

/// `n` random base62 characters.
pub(crate) fn base62(n: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), n)
}

/// A QR string shaped like the ones each provider really shows (see UNIPILE.md).
fn realistic_qr(provider: &str) -> String {
    match provider {
        // 2@<ref>,<noise key>,<identity key>,<adv secret>: about 230 characters.
        "whatsapp" => format!(
            "2@{},{},{},{}",
            base64(&random_bytes(69), STANDARD),
            base64(&random_bytes(32), STANDARD),
            base64(&random_bytes(32), STANDARD),
            base64(&random_bytes(32), STANDARD),
        ),
        "telegram" => format!("tg://login?token={}", base64(&random_bytes(32), URL_SAFE)),
        "google_messages" => format!(
            "https://support.google.com/messages/?p=web_computer#?c={}",
            base64(&random_bytes(96), STANDARD)
        ),
        _ => base64(&random_bytes(48), STANDARD),
    }
}

/// A display name like the provider would give the account.
fn account_name(provider: &str) -> String {
    let mut rng = rand::rng();
    match provider {
        "whatsapp" => format!(
            "+33 6 {:02} {:02} {:02} {:02}",
            rng.random_range(0..100),
            rng.random_range(0..100),
            rng.random_range(0..100),
            rng.random_range(0..100)
        ),
        "telegram" => "@demo_user".to_owned(),
        "google_messages" => "Pixel 9".to_owned(),
        other => format!("Simulated {other} account"),
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::rng().fill(&mut bytes[..]);
    bytes
}

/// A base64 alphabet and whether it pads.
struct Alphabet {
    chars: &'static [u8; 64],
    pad: bool,
}

const STANDARD: Alphabet = Alphabet {
    chars: b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    pad: true,
};

const URL_SAFE: Alphabet = Alphabet {
    chars: b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    pad: false,
};

/// Base64 of `bytes`; the crate has no base64 dependency and this is all the simulator needs.
fn base64(bytes: &[u8], alphabet: Alphabet) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols = chunk.len() + 1;
        for i in 0..4 {
            if i < symbols {
                let index = (n >> (18 - 6 * i)) & 0x3f;
                out.push(char::from(alphabet.chars[index as usize]));
            } else if alphabet.pad {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_test_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                base64(input.as_bytes(), STANDARD),
                expected,
                "input {input:?}"
            );
        }
        assert_eq!(base64(&[0xfb, 0xff], URL_SAFE), "-_8");
    }

    #[test]
    fn intent_ids_are_acc_and_22_base62_chars() {
        let id = Minter::new(None).intent_id();
        let rest = id.strip_prefix("acc_").expect("acc_ prefix");
        assert_eq!(rest.len(), 22, "got {id}");
        assert!(rest.chars().all(|c| c.is_ascii_alphanumeric()), "got {id}");
    }

    #[test]
    fn whatsapp_qr_strings_look_like_whatsapp_ones() {
        let qr = Minter::new(None).qr("whatsapp", "acc_x").qr;
        assert!(qr.starts_with("2@"), "got {qr}");
        assert_eq!(qr.split(',').count(), 4, "got {qr}");
        assert!(
            (200..260).contains(&qr.len()),
            "length {} of {qr}",
            qr.len()
        );
    }

    #[test]
    fn telegram_and_google_qr_strings_have_their_prefixes() {
        let minter = Minter::new(None);
        let tg = minter.qr("telegram", "acc_x").qr;
        let token = tg
            .strip_prefix("tg://login?token=")
            .expect("tg:// login URL");
        assert!(
            !token.contains(['+', '/', '=']),
            "token must be base64url: {tg}"
        );
        let google = minter.qr("google_messages", "acc_x").qr;
        assert!(
            google.starts_with("https://support.google.com/messages/?p=web_computer#?c="),
            "got {google}"
        );
    }

    #[test]
    fn demo_qr_strings_are_scan_urls_with_the_qr_code() {
        let minter = Minter::new(Some("http://127.0.0.1:3000/simulator/".to_owned()));
        let issued = minter.qr("whatsapp", "acc_abc");
        assert_eq!(
            issued.qr,
            format!(
                "http://127.0.0.1:3000/simulator/scan/acc_abc?c={}",
                issued.code
            )
        );
    }

    #[test]
    fn every_qr_is_fresh() {
        let minter = Minter::new(None);
        assert_ne!(minter.qr("telegram", "a").qr, minter.qr("telegram", "a").qr);
    }

    #[test]
    fn accounts_carry_the_fields_unipile_sends() {
        let account = Minter::new(None).account("whatsapp", "acc_1");
        for field in [
            "object",
            "id",
            "name",
            "provider",
            "status",
            "created_at",
            "user_id",
        ] {
            assert!(account.get(field).is_some(), "missing {field} in {account}");
        }
        assert_eq!(account["status"], "running");
        assert!(
            account["application_id"]
                .as_str()
                .is_some_and(|a| a.starts_with("app_"))
        );
        assert!(
            account["created_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
    }
}
