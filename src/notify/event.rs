//! The webhook events: what an attempt's frames leave for its webhook ([`Notes`]), how a
//! session ended ([`Ending`]), and the body of DESIGN.md section 10 built from them.
//!
//! ```json
//! {"type":"link.succeeded","timestamp":"2026-11-28T10:01:02.345Z",
//!  "data":{"session":"ses_…","provider":"whatsapp","state":"user-42","intent_id":"acc_…",
//!          "duration_ms":12345,"node":"gw-1-4242","account":{"id":"acc_…", …}}}
//! ```

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::link::protocol::ServerFrame;

/// What a session's frames tell its webhook, kept as the frames go out: the intent (from the
/// first `qr`) and the account (from `account`). Each is set once; the intent never changes
/// within an attempt, not even across a resume.
#[derive(Debug, Default)]
pub struct Notes {
    intent_id: OnceLock<Box<str>>,
    account: OnceLock<Box<Map<String, Value>>>,
}

impl Notes {
    /// Notes of an attempt known only by its intent (a session taken from a gone node).
    pub fn with_intent(intent_id: Option<&str>) -> Notes {
        let notes = Notes::default();
        if let Some(intent) = intent_id {
            let _ = notes.intent_id.set(intent.into());
        }
        notes
    }

    /// Notes what a frame about to be sent says.
    pub fn note(&self, frame: &ServerFrame) {
        match frame {
            ServerFrame::Qr(q) if self.intent_id.get().is_none() => {
                let _ = self.intent_id.set(q.intent_id.as_str().into());
            }
            ServerFrame::Account { account, .. } => {
                let _ = self.account.set(Box::new(account.clone()));
            }
            _ => {}
        }
    }
}

/// How a session ended, in the webhook's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `link.succeeded`: an `account` frame.
    Succeeded,
    /// `link.failed`: an `error` frame, with its code.
    Failed {
        /// The error frame's `code`.
        code: &'a str,
    },
    /// `link.expired`: a `timeout` frame (nobody scanned).
    Expired,
    /// `link.abandoned`: cancelled, or the page went away and did not come back in time.
    Abandoned {
        /// `cancelled` or `disconnected`.
        reason: &'static str,
    },
}

/// Every event `type` ([`Kind::event_type`]).
pub const TYPES: [&str; 4] = [
    "link.succeeded",
    "link.failed",
    "link.expired",
    "link.abandoned",
];

impl Kind<'_> {
    /// The event `type`.
    pub fn event_type(self) -> &'static str {
        match self {
            Kind::Succeeded => "link.succeeded",
            Kind::Failed { .. } => "link.failed",
            Kind::Expired => "link.expired",
            Kind::Abandoned { .. } => "link.abandoned",
        }
    }
}

/// A session's ending, as the store hands it over where it removes the session.
#[derive(Debug, Clone, Copy)]
pub struct Ending<'a> {
    /// The session id.
    pub session: &'a str,
    /// The provider.
    pub provider: &'a str,
    /// The connect token's `sub`.
    pub state: Option<&'a str>,
    /// How it ended.
    pub kind: Kind<'a>,
    /// From the start of the attempt.
    pub duration: Duration,
    /// What its frames said.
    pub notes: &'a Notes,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    session: &'a str,
    provider: &'a str,
    state: Option<&'a str>,
    intent_id: Option<&'a str>,
    duration_ms: u64,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl Ending<'_> {
    /// The webhook body, stamped `at` by `node`.
    pub fn body(&self, node: &str, at: SystemTime) -> Vec<u8> {
        let (code, reason) = match self.kind {
            Kind::Failed { code } => (Some(code), None),
            Kind::Abandoned { reason } => (None, Some(reason)),
            Kind::Succeeded | Kind::Expired => (None, None),
        };
        let account = match self.kind {
            Kind::Succeeded => self.notes.account.get().map(|a| &**a),
            _ => None,
        };
        let body = Body {
            kind: self.kind.event_type(),
            timestamp: humantime::format_rfc3339_millis(at).to_string(),
            data: Data {
                session: self.session,
                provider: self.provider,
                state: self.state,
                intent_id: self.notes.intent_id.get().map(|s| &**s),
                duration_ms: self.duration.as_millis() as u64,
                node,
                account,
                code,
                reason,
            },
        };
        serde_json::to_vec(&body).expect("webhook bodies serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::protocol::QrFrame;
    use serde_json::json;

    fn ending<'a>(kind: Kind<'a>, notes: &'a Notes) -> Value {
        let e = Ending {
            session: "ses_1",
            provider: "whatsapp",
            state: Some("user-42"),
            kind,
            duration: Duration::from_millis(1234),
            notes,
        };
        serde_json::from_slice(&e.body("node-a", SystemTime::UNIX_EPOCH)).unwrap()
    }

    #[test]
    fn each_kind_has_its_type_and_its_own_field() {
        let notes = Notes::default();
        notes.note(&ServerFrame::Qr(QrFrame {
            rotation: 1,
            intent_id: "acc_intent".into(),
            expires_at: String::new(),
            svg: None,
            text: None,
            raw: None,
        }));
        let account = json!({"id": "acc_9", "provider": "WHATSAPP"});
        notes.note(&ServerFrame::Account {
            account: account.as_object().unwrap().clone(),
            state: None,
            result: None,
        });
        let common = json!({"session": "ses_1", "provider": "whatsapp", "state": "user-42",
            "intent_id": "acc_intent", "duration_ms": 1234, "node": "node-a"});
        let with = |k: &str, v: Value| {
            let mut d = common.clone();
            d[k] = v;
            d
        };
        let cases = [
            (
                Kind::Succeeded,
                "link.succeeded",
                with("account", account.clone()),
            ),
            (
                Kind::Failed {
                    code: "api/proxy_error",
                },
                "link.failed",
                with("code", json!("api/proxy_error")),
            ),
            (Kind::Expired, "link.expired", common.clone()),
            (
                Kind::Abandoned {
                    reason: "cancelled",
                },
                "link.abandoned",
                with("reason", json!("cancelled")),
            ),
        ];
        for (kind, ty, data) in cases {
            let body = ending(kind, &notes);
            assert_eq!(body["type"], ty);
            assert_eq!(body["timestamp"], "1970-01-01T00:00:00.000Z");
            assert_eq!(body["data"], data, "{ty}");
        }
    }

    #[test]
    fn types_lists_every_kinds_event_type() {
        let kinds = [
            Kind::Succeeded,
            Kind::Failed { code: "x" },
            Kind::Expired,
            Kind::Abandoned {
                reason: "cancelled",
            },
        ];
        let types: Vec<&str> = kinds.into_iter().map(Kind::event_type).collect();
        assert_eq!(types, TYPES);
    }

    #[test]
    fn nothing_shown_yet_gives_null_intent_and_state() {
        let notes = Notes::default();
        let e = Ending {
            session: "ses_1",
            provider: "telegram",
            state: None,
            kind: Kind::Abandoned {
                reason: "disconnected",
            },
            duration: Duration::ZERO,
            notes: &notes,
        };
        let body: Value = serde_json::from_slice(&e.body("n", SystemTime::now())).unwrap();
        assert_eq!(body["data"]["intent_id"], Value::Null);
        assert_eq!(body["data"]["state"], Value::Null);
    }
}
