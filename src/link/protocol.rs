//! Protocol v1: the JSON frames on `/ws/link/{provider}` and `/ws/watch`, error codes, close
//! codes and the limits that guard them.
//!
//! Every message is one JSON object in one WebSocket text message. Server frames are an
//! [`Envelope`]: the session id and a per-session sequence number around a [`ServerFrame`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Version of the wire protocol described here; sent as the `qrlink.v1` subprotocol.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest client message accepted. Clients only ever send `cancel` and short 2FA codes, so a
/// few KiB is generous; anything bigger is abuse and closes the socket with 1009.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 4 * 1024;

/// A frame sent by the gateway, wrapped with the session id and sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The gateway's session id (`ses_…`), the same in every frame of one link attempt.
    pub session: String,
    /// 1, 2, 3 … per session, so a client or a dashboard can tell a frame was missed.
    pub seq: u64,
    /// The frame itself; its `type` tag sits beside `session` and `seq` on the wire.
    #[serde(flatten)]
    pub frame: ServerFrame,
    /// `true` on the frame re-sent, exactly as it was, when a socket resumes the session.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
    /// The session's resume token (v1.1), on `qr` and `checkpoint` frames while resume is on:
    /// `?resume=TOKEN` re-attaches a socket to the session. Only the session's own browser sees
    /// it: watchers, logs and `/api/sessions` never do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
}

impl Envelope {
    /// A frame of `session` numbered `seq`, with no resume token.
    pub fn new(session: impl Into<String>, seq: u64, frame: ServerFrame) -> Envelope {
        Envelope {
            session: session.into(),
            seq,
            frame,
            replay: false,
            resume: None,
        }
    }
}

/// What the gateway tells the browser during one link attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A QR code to show: one per QR the upstream issues.
    Qr(QrFrame),
    /// The upstream needs an answer (e.g. Telegram's 2FA password after the scan); the client
    /// replies with [`ClientFrame::Code`].
    Checkpoint {
        /// Unipile's checkpoint object passed through (`{"type":"2FA","platform":"APP"}`).
        checkpoint: Value,
        /// Set when the previous answer was wrong: the same checkpoint asks again (up to
        /// [`MAX_CHECKPOINT_ATTEMPTS`] answers), so a typo does not cost a new scan.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<CheckpointError>,
    },
    /// Terminal: the account is linked. The upstream Account object, unknown fields kept.
    Account {
        /// Unipile's Account object as it came.
        account: Map<String, Value>,
        /// The connect token's `sub`, when the attempt had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
        /// The result token (v1.1, with connect tokens on): a JWT the app's backend verifies
        /// instead of trusting the browser ([`crate::notify::result`]). Added by the socket as
        /// the frame leaves, never shown to watchers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
    },
    /// Terminal: nobody scanned before the provider gave up.
    Timeout {
        /// How many QR codes were shown.
        rotations: u32,
    },
    /// Terminal: the attempt failed.
    Error(ErrorFrame),
}

impl ServerFrame {
    /// Whether this frame ends the session (exactly one terminal frame is sent, then close 1000).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ServerFrame::Account { .. } | ServerFrame::Timeout { .. } | ServerFrame::Error(_)
        )
    }
}

/// Why a checkpoint is asked again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointError {
    /// The upstream code, `provider/invalid_checkpoint_code`.
    pub code: String,
    /// The gateway's sentence for a person.
    pub message: String,
}

/// Answers a client may give one checkpoint; after that many wrong ones the attempt ends with
/// the upstream's error.
pub const MAX_CHECKPOINT_ATTEMPTS: u32 = 3;

/// The `qr` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QrFrame {
    /// Counts the QR codes of this attempt from 1.
    pub rotation: u32,
    /// Unipile's intent id (`acc_…`).
    pub intent_id: String,
    /// The gateway's estimate of when this QR stops working (UTC, RFC 3339).
    pub expires_at: String,
    /// The QR rendered as a standalone SVG document (when `qr` includes `svg`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
    /// The QR rendered with Unicode half blocks, for terminals (when `qr` includes `text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The string the QR encodes (only when `qr` includes `raw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

/// The `error` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The upstream error `type` unchanged, or one of the gateway's own codes ([`codes`]).
    pub code: String,
    /// The gateway's own sentence for a person.
    pub message: String,
    /// Whether starting the same attempt again may work.
    pub retryable: bool,
    /// The upstream's `detail`, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The upstream's `req_id`, passed through for support requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

impl ErrorFrame {
    /// An error of the gateway's own (no upstream detail).
    pub fn gateway(code: &str, retryable: bool) -> Self {
        ErrorFrame {
            code: code.to_owned(),
            message: message_for(code).to_owned(),
            retryable,
            detail: None,
            req_id: None,
        }
    }
}

/// Messages a client may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Stop the attempt: upstream work is cancelled and the socket closes with 1000.
    Cancel,
    /// Answer a `checkpoint` frame.
    Code {
        /// The code or password the person typed.
        code: String,
    },
    /// Any other `type`: ignored, so newer clients work with this gateway.
    #[serde(other)]
    Unknown,
}

impl ClientFrame {
    /// Reads one client message. Only a JSON object is a frame: serde's internally tagged enums
    /// also read a sequence with the tag first (`["cancel"]` would cancel), which the protocol
    /// does not allow and no client sends.
    pub fn from_json(text: &str) -> Result<ClientFrame, serde_json::Error> {
        // An object is the only JSON text whose first character past whitespace is `{`.
        if !text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return Err(serde::de::Error::invalid_type(
                serde::de::Unexpected::Other("a JSON value that is not an object"),
                &"a JSON object",
            ));
        }
        serde_json::from_str(text)
    }
}

/// The gateway's own error codes (upstream codes pass through unchanged).
pub mod codes {
    /// The path names a provider this gateway does not link.
    pub const UNKNOWN_PROVIDER: &str = "request/unknown_provider";
    /// Missing, invalid or expired connect token.
    pub const UNAUTHORIZED: &str = "request/unauthorized";
    /// Binary data, malformed JSON or an oversized message.
    pub const INVALID_MESSAGE: &str = "request/invalid_message";
    /// Too many sessions.
    pub const OVERLOADED: &str = "gateway/overloaded";
    /// Too many sessions from this client address, open at once or opened in the last minute.
    pub const RATE_LIMITED: &str = "request/rate_limited";
    /// The attempt reached the gateway's maximum attempt duration, or a resume token names a
    /// session that is unknown, ended or past its grace. Retryable: start a new attempt.
    pub const SESSION_EXPIRED: &str = "session/expired";
    /// The gateway is stopping.
    pub const SHUTTING_DOWN: &str = "gateway/shutting_down";
    /// Unipile could not be reached within the retry budget.
    pub const UPSTREAM_UNAVAILABLE: &str = "gateway/upstream_unavailable";
    /// Unipile answered something the gateway cannot read.
    pub const UPSTREAM_INVALID: &str = "gateway/upstream_invalid";
    /// Unipile asked for a step a QR flow cannot take (e.g. an OAuth URL).
    pub const UNSUPPORTED_STEP: &str = "gateway/unsupported_step";
    /// An operator cancelled the session.
    pub const CANCELLED: &str = "session/cancelled";
    /// Every code of the gateway's own that a client may receive in an `error` frame (the
    /// error schema lists exactly these; each has its own sentence).
    pub const GATEWAY: [&str; 11] = [
        UNKNOWN_PROVIDER,
        UNAUTHORIZED,
        INVALID_MESSAGE,
        OVERLOADED,
        RATE_LIMITED,
        SESSION_EXPIRED,
        SHUTTING_DOWN,
        UPSTREAM_UNAVAILABLE,
        UPSTREAM_INVALID,
        UNSUPPORTED_STEP,
        CANCELLED,
    ];
    /// Unipile's code for a wrong checkpoint answer; the checkpoint is asked again.
    pub const INVALID_CHECKPOINT_CODE: &str = "provider/invalid_checkpoint_code";
    /// Unipile's own code for "nobody scanned in time"; becomes a `timeout` frame.
    pub const PROVIDER_TIMEOUT: &str = "provider/timeout";
}

/// WebSocket close codes used by the gateway (RFC 6455 section 7.4.1).
pub mod close {
    /// After a terminal frame or a client `cancel`.
    pub const NORMAL: u16 = 1000;
    /// The service restarts (a cluster node stopping): resume elsewhere.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Another socket resumed this session (reason `resumed elsewhere`); no terminal frame.
    pub const RESUMED_ELSEWHERE: u16 = 4000;
    /// The gateway is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client sent binary data.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// The client sent text that is not a JSON message.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Bad token, unknown provider, a resume token that is unknown, ended, expired or for
    /// another provider.
    pub const POLICY: u16 = 1008;
    /// The client sent a message over [`super::MAX_CLIENT_MESSAGE_BYTES`].
    pub const TOO_BIG: u16 = 1009;
    /// Over capacity or rate limited; try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The sentence a person reads for an error code. Unknown codes get a generic sentence.
pub fn message_for(code: &str) -> &'static str {
    match code {
        "api/proxy_auth_error" => "The proxy refused its credentials.",
        "api/proxy_error" => "The proxy is not working properly.",
        "api/proxy_timeout" => "The proxy did not answer in time.",
        "api/already_exists" => "This account is already linked.",
        "api/account_restricted" => "This account cannot be linked.",
        "api/missing_authorization" | "api/expired_authorization" => {
            "The gateway's Unipile API key is missing or invalid."
        }
        "api/inactive_subscription" => "The Unipile subscription is not active.",
        "api/insufficient_permissions" => "The Unipile API key may not link accounts.",
        "api/invalid_parameters" | "provider/invalid_parameters" => {
            "The link request was rejected as invalid."
        }
        "provider/invalid_checkpoint_code" => "That code is not correct.",
        "api/resource_not_found" => "This link attempt no longer exists upstream.",
        "api/too_many_requests" | "provider/too_many_requests" => {
            "Too many link attempts right now. Try again in a moment."
        }
        "api/internal_error" | "provider/server_error" => "Unipile had an internal error.",
        codes::PROVIDER_TIMEOUT => "Nobody scanned the QR code in time.",
        codes::UNKNOWN_PROVIDER => "This gateway does not link that provider.",
        codes::UNAUTHORIZED => "This link attempt is not authorized.",
        codes::INVALID_MESSAGE => "The client sent a message the gateway cannot read.",
        codes::OVERLOADED => "The gateway is busy. Try again in a moment.",
        codes::RATE_LIMITED => "Too many link attempts from this address. Try again in a minute.",
        codes::SESSION_EXPIRED => "This link attempt has ended or expired. Start again.",
        codes::SHUTTING_DOWN => "The gateway is restarting. Try again in a moment.",
        codes::UPSTREAM_UNAVAILABLE => "Unipile cannot be reached right now.",
        codes::UPSTREAM_INVALID => "Unipile answered something the gateway cannot read.",
        codes::UNSUPPORTED_STEP => "Unipile asked for a step this QR flow cannot take.",
        codes::CANCELLED => "The link attempt was cancelled.",
        _ => "The link attempt failed.",
    }
}

/// Whether an upstream error `type` may go away if the same attempt is started again.
pub fn upstream_retryable(code: &str) -> bool {
    matches!(
        code,
        "api/proxy_error"
            | "api/proxy_timeout"
            | "api/too_many_requests"
            | "provider/too_many_requests"
            | "api/internal_error"
            | "provider/server_error"
            | "api/resource_not_found"
            | "provider/invalid_checkpoint_code"
            | codes::PROVIDER_TIMEOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn qr_frame_serializes_flat_with_type_session_and_seq() {
        let env = Envelope::new(
            "ses_1",
            1,
            ServerFrame::Qr(QrFrame {
                rotation: 1,
                intent_id: "acc_1".into(),
                expires_at: "2026-11-28T10:01:00Z".into(),
                svg: Some("<svg/>".into()),
                text: None,
                raw: None,
            }),
        );
        let v = serde_json::to_value(&env).unwrap();
        assert_eq!(
            v,
            json!({"type":"qr","session":"ses_1","seq":1,"rotation":1,"intent_id":"acc_1",
                   "expires_at":"2026-11-28T10:01:00Z","svg":"<svg/>"})
        );
        let back: Envelope = serde_json::from_value(v).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn error_frame_round_trips() {
        let env = Envelope::new(
            "ses_2",
            2,
            ServerFrame::Error(ErrorFrame {
                code: "api/proxy_error".into(),
                message: message_for("api/proxy_error").into(),
                retryable: true,
                detail: Some("d".into()),
                req_id: Some("r".into()),
            }),
        );
        let text = serde_json::to_string(&env).unwrap();
        assert!(
            text.starts_with(r#"{"session":"ses_2","seq":2,"type":"error""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), env);
    }

    #[test]
    fn replay_and_resume_appear_only_when_set_and_round_trip() {
        let mut env = Envelope::new(
            "ses_3",
            3,
            ServerFrame::Checkpoint {
                checkpoint: json!({"type": "2FA"}),
                error: None,
            },
        );
        let plain = serde_json::to_value(&env).unwrap();
        assert!(
            plain.get("replay").is_none() && plain.get("resume").is_none(),
            "{plain}"
        );
        env.replay = true;
        env.resume = Some("ses_3.secret".into());
        let v = serde_json::to_value(&env).unwrap();
        assert_eq!(
            (&v["replay"], &v["resume"]),
            (&json!(true), &json!("ses_3.secret"))
        );
        assert_eq!(serde_json::from_value::<Envelope>(v).unwrap(), env);
    }

    #[test]
    fn account_frame_keeps_unknown_fields() {
        let raw = json!({"type":"account","session":"s","seq":4,
            "account":{"id":"acc_9","provider":"whatsapp","brand_new_field":[1,2]}});
        let env: Envelope = serde_json::from_value(raw.clone()).unwrap();
        assert!(env.frame.is_terminal());
        assert_eq!(serde_json::to_value(&env).unwrap(), raw);
    }

    #[test]
    fn client_frames_parse_and_unknown_types_are_tolerated() {
        let cancel: ClientFrame = serde_json::from_str(r#"{"type":"cancel"}"#).unwrap();
        assert_eq!(cancel, ClientFrame::Cancel);
        let code: ClientFrame = serde_json::from_str(r#"{"type":"code","code":"1234"}"#).unwrap();
        assert_eq!(
            code,
            ClientFrame::Code {
                code: "1234".into()
            }
        );
        let later: ClientFrame = serde_json::from_str(r#"{"type":"hello_from_v2","x":1}"#).unwrap();
        assert_eq!(later, ClientFrame::Unknown);
        assert!(serde_json::from_str::<ClientFrame>(r#"{"code":"1"}"#).is_err());
        assert!(matches!(
            ClientFrame::from_json(" {\"type\":\"cancel\"}"),
            Ok(ClientFrame::Cancel)
        ));
        for not_an_object in [r#"["cancel"]"#, r#"["code","1"]"#, r#""cancel""#, "1"] {
            assert!(
                ClientFrame::from_json(not_an_object).is_err(),
                "{not_an_object}"
            );
        }
    }

    #[test]
    fn every_gateway_code_has_its_own_sentence() {
        let generic = message_for("no/such_code");
        for code in codes::GATEWAY {
            assert_ne!(message_for(code), generic, "{code} has no sentence");
        }
    }
}
