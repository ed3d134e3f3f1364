//! Property tests of what the link socket reads from the network: a client's message, from the
//! WebSocket message to [`Incoming`], and the provider named in the path. Whatever arrives, the
//! answer is one of the protocol's outcomes, never a panic.

use proptest::prelude::*;
use serde_json::{Value, json};
use tungstenite::Message;

use super::{Incoming, check_provider, client_message};
use crate::arb;
use crate::config::DEFAULT_PROVIDERS;
use crate::link::protocol::{close, codes};

fn text(s: &str) -> Incoming {
    client_message(Some(Ok(Message::Text(s.into()))))
}

/// What protocol v1 says a text message means: an object whose `type` is the string `cancel`
/// cancels, `code` with a string `code` answers, any other string `type` is ignored (newer
/// clients); everything else is an invalid payload.
fn expected(v: &Value) -> Incoming {
    let invalid = Incoming::Invalid(close::INVALID_PAYLOAD);
    let Some(Value::String(kind)) = v.as_object().and_then(|o| o.get("type")) else {
        return invalid;
    };
    match kind.as_str() {
        "cancel" => Incoming::Cancel,
        "code" => match &v["code"] {
            Value::String(c) => Incoming::Code(c.clone()),
            _ => invalid,
        },
        _ => Incoming::Ignore,
    }
}

fn defaults() -> Vec<String> {
    DEFAULT_PROVIDERS.split(',').map(str::to_owned).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_is_a_protocol_outcome_and_unreadable_json_is_an_invalid_payload(s in any::<String>()) {
        let got = text(&s);
        match serde_json::from_str::<Value>(&s) {
            Err(_) => prop_assert_eq!(got, Incoming::Invalid(close::INVALID_PAYLOAD)),
            Ok(v) => prop_assert_eq!(got, expected(&v)),
        }
    }

    #[test]
    fn any_json_means_what_the_protocol_says(v in arb::json()) {
        prop_assert_eq!(text(&v.to_string()), expected(&v));
    }

    #[test]
    fn frames_with_a_wrong_field_type_are_invalid_payloads(kind in arb::scalar(), code in arb::scalar()) {
        if !kind.is_string() {
            prop_assert_eq!(text(&json!({"type": kind}).to_string()), Incoming::Invalid(close::INVALID_PAYLOAD));
            prop_assert_eq!(text(&json!({"type": kind, "code": "1234"}).to_string()), Incoming::Invalid(close::INVALID_PAYLOAD));
        }
        if !code.is_string() {
            prop_assert_eq!(text(&json!({"type": "code", "code": code}).to_string()), Incoming::Invalid(close::INVALID_PAYLOAD));
        }
    }

    #[test]
    fn known_frames_with_any_other_fields_keep_their_meaning(extra in arb::object_of(arb::json()), code in any::<String>()) {
        let mut cancel = extra.clone();
        cancel.insert("type".into(), json!("cancel"));
        prop_assert_eq!(text(&Value::Object(cancel).to_string()), Incoming::Cancel);
        let mut answer = extra;
        answer.insert("type".into(), json!("code"));
        answer.insert("code".into(), json!(code.clone()));
        prop_assert_eq!(text(&Value::Object(answer).to_string()), Incoming::Code(code));
    }

    #[test]
    fn any_binary_message_is_unsupported_data(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assert_eq!(
            client_message(Some(Ok(Message::Binary(bytes.into())))),
            Incoming::Invalid(close::UNSUPPORTED_DATA)
        );
    }

    #[test]
    fn a_known_provider_is_accepted_and_any_other_segment_is_an_unknown_provider(segment in any::<String>()) {
        let providers = defaults();
        let got = check_provider(&providers, &segment);
        if providers.contains(&segment) {
            prop_assert_eq!(got, Ok(()));
        } else {
            prop_assert_eq!(got, Err(codes::UNKNOWN_PROVIDER));
        }
    }

    #[test]
    fn near_misses_of_a_known_provider_are_unknown_providers(
        pick in 0..3usize,
        edit in 0..6usize,
        junk in "[ -~]{1,4}",
    ) {
        let providers = defaults();
        let name = providers[pick].clone();
        let near = match edit {
            0 => name.to_uppercase(),
            1 => format!(" {name}"),
            2 => format!("{name}{junk}"),
            3 => format!("{junk}{name}"),
            4 => name[..name.len() - 1].to_owned(),
            _ => name.replacen('a', "%61", 1),
        };
        prop_assume!(!providers.contains(&near));
        prop_assert_eq!(check_provider(&providers, &near), Err(codes::UNKNOWN_PROVIDER));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn json_nested_past_the_recursion_limit_is_an_invalid_payload(depth in 0..4_000usize, shape in any::<u64>()) {
        let body = arb::nested(depth, shape, "1");
        let message = format!(r#"{{"type":"cancel","x":{body}}}"#);
        let got = text(&message);
        // The frame's own object is one more level.
        if depth + 1 >= arb::SERDE_JSON_DEPTH_LIMIT {
            prop_assert_eq!(got, Incoming::Invalid(close::INVALID_PAYLOAD));
        } else {
            prop_assert!(serde_json::from_str::<Value>(&message).is_ok());
            prop_assert_eq!(got, Incoming::Cancel);
        }
    }

    #[test]
    fn huge_messages_are_read_without_trouble(len in 0..1_000_000usize, c in any::<char>()) {
        let long: String = std::iter::repeat_n(c, len / c.len_utf8()).collect();
        prop_assert_eq!(text(&json!({"type": "code", "code": long.clone()}).to_string()), Incoming::Code(long.clone()));
        prop_assert_eq!(text(&json!({"type": long}).to_string()), expected(&json!({"type": long})));
    }
}

#[test]
fn close_and_the_end_of_the_stream_mean_the_client_is_gone() {
    assert_eq!(client_message(None), Incoming::Gone);
    assert_eq!(
        client_message(Some(Ok(Message::Close(None)))),
        Incoming::Gone
    );
}
