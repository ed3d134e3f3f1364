//! Property tests of the upstream decoders: whatever Unipile (or a proxy in front of it) answers,
//! with any status, the client gets a response it knows or a typed failure, never a panic. An
//! unreadable body is [`Error::Invalid`]; an error body is [`Error::Api`]; a bare 429 or 5xx is
//! transient.

use std::time::Duration;

use proptest::prelude::*;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::{Value, json};

use super::{AuthResponse, Error, Failure, api_error, decode, decode_object, retry_after};
use crate::arb;

const KNOWN_OBJECTS: [&str; 5] = [
    "AuthenticationQrCode",
    "AuthenticationCheckpoint",
    "OauthUrl",
    "Account",
    "Error",
];

fn status() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        (100..1000u16).prop_map(|s| StatusCode::from_u16(s).expect("100–999 are status codes")),
        prop::sample::select(vec![
            200u16, 201, 204, 400, 401, 403, 404, 429, 500, 502, 503, 504
        ])
        .prop_map(|s| StatusCode::from_u16(s).expect("a status code")),
    ]
}

fn retried_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// What `decode` must answer for `body` (`value` is the body parsed, if it parses): the
/// contract, stated without the decoder's own code.
fn check(
    status: StatusCode,
    value: Option<&Value>,
    got: &Result<AuthResponse, Failure>,
) -> Result<(), TestCaseError> {
    let object = value
        .and_then(|v| v.get("object"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if status.is_success() {
        match got {
            Ok(_) => prop_assert!(
                KNOWN_OBJECTS[..4].contains(&object) && value.is_some_and(Value::is_object),
                "{status}: a response from {value:?}"
            ),
            Err(Failure::Final(Error::Api(_))) => prop_assert_eq!(object, "Error"),
            Err(Failure::Final(Error::Invalid(_))) => {}
            Err(other) => prop_assert!(false, "{status}: {other:?} from {value:?}"),
        }
        if !value.is_some_and(Value::is_object) {
            prop_assert!(
                matches!(got, Err(Failure::Final(Error::Invalid(_)))),
                "{got:?}"
            );
        }
        return Ok(());
    }
    let kind = value.and_then(|v| v.get("type")).and_then(Value::as_str);
    match (kind, got) {
        (_, Ok(r)) => prop_assert!(false, "{status} decoded as {r:?}"),
        (Some(kind), Err(Failure::Final(Error::Api(api)))) => {
            prop_assert_eq!(&api.kind, kind);
            prop_assert!(status != StatusCode::TOO_MANY_REQUESTS);
        }
        (Some(kind), Err(Failure::Transient { api: Some(api), .. })) => {
            prop_assert_eq!(&api.kind, kind)
        }
        (None, Err(Failure::Transient { api: None, .. })) => {
            prop_assert!(retried_status(status), "{status}")
        }
        (None, Err(Failure::Final(Error::Invalid(_)))) => {
            prop_assert!(!retried_status(status), "{status}")
        }
        (_, Err(other)) => prop_assert!(false, "{status}: {other:?} from {value:?}"),
    }
    Ok(())
}

/// A response Unipile could send, with any strings in it.
fn response() -> impl Strategy<Value = Value> {
    let s = || any::<String>();
    prop_oneof![
        (s(), s())
            .prop_map(|(q, i)| json!({"object":"AuthenticationQrCode","qrcode":q,"intent_id":i})),
        (s(), arb::object_of(arb::scalar())).prop_map(
            |(i, c)| json!({"object":"AuthenticationCheckpoint","intent_id":i,"checkpoint":c})
        ),
        s().prop_map(|u| json!({"object":"OauthUrl","url":u})),
        (s(), arb::object_of(arb::json()))
            .prop_map(|(id, m)| json!({"object":"Account","id":id,"metadata":m})),
        (s(), 100..600u16, s()).prop_map(
            |(t, st, d)| json!({"object":"Error","type":t,"status":st,"detail":d,"req_id":"r"})
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_with_any_status_are_a_response_or_a_typed_failure(
        status in status(),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let value = serde_json::from_slice::<Value>(&body).ok();
        check(status, value.as_ref(), &decode(status, None, &body))?;
    }

    #[test]
    fn any_json_with_any_status_is_a_response_or_a_typed_failure(status in status(), v in arb::json()) {
        check(status, Some(&v), &decode(status, None, v.to_string().as_bytes()))?;
    }

    #[test]
    fn real_responses_with_any_status_are_a_response_or_a_typed_failure(status in status(), v in response()) {
        check(status, Some(&v), &decode(status, None, v.to_string().as_bytes()))?;
    }

    #[test]
    fn a_truncated_body_is_invalid_or_a_bare_transient_failure(
        status in status(),
        v in response(),
        cut in any::<prop::sample::Index>(),
    ) {
        let body = v.to_string();
        // Any proper prefix of an object's compact text misses at least its closing brace.
        let truncated = &body.as_bytes()[..cut.index(body.len())];
        let got = decode(status, None, truncated);
        if status.is_success() || !retried_status(status) {
            prop_assert!(matches!(got, Err(Failure::Final(Error::Invalid(_)))), "{status}: {got:?}");
        } else {
            prop_assert!(matches!(got, Err(Failure::Transient { api: None, .. })), "{status}: {got:?}");
        }
    }

    #[test]
    fn an_unknown_object_is_invalid(object in any::<String>(), rest in arb::object_of(arb::json())) {
        prop_assume!(!KNOWN_OBJECTS.contains(&object.as_str()));
        let mut map = rest;
        map.insert("object".into(), Value::String(object));
        prop_assert!(matches!(decode_object(map), Err(Error::Invalid(_))));
    }

    #[test]
    fn any_object_decodes_only_to_its_own_kind(map in arb::object_of(arb::json())) {
        let object = map.get("object").and_then(Value::as_str).unwrap_or_default().to_owned();
        match decode_object(map) {
            Ok(AuthResponse::QrCode { .. }) => prop_assert_eq!(object, "AuthenticationQrCode"),
            Ok(AuthResponse::Checkpoint { checkpoint, .. }) => {
                prop_assert_eq!(object, "AuthenticationCheckpoint");
                prop_assert!(checkpoint.is_object());
            }
            Ok(AuthResponse::OauthUrl { .. }) => prop_assert_eq!(object, "OauthUrl"),
            Ok(AuthResponse::Account(m)) => {
                prop_assert_eq!(object, "Account");
                prop_assert!(m["id"].is_string());
            }
            Err(Error::Api(_)) => prop_assert_eq!(object, "Error"),
            Err(Error::Invalid(_)) => {}
            Err(other) => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn an_error_body_keeps_its_status_only_when_it_is_a_u16(v in arb::json(), status in status()) {
        let got = api_error(&v, status);
        let kind = v.get("type").and_then(Value::as_str);
        prop_assert_eq!(got.as_ref().map(|a| a.kind.as_str()), kind);
        if let Some(api) = got {
            let own = v.get("status").and_then(Value::as_u64).filter(|s| *s <= u64::from(u16::MAX));
            prop_assert_eq!(u64::from(api.status), own.unwrap_or(u64::from(status.as_u16())));
        }
    }

    #[test]
    fn huge_numbers_are_read_as_no_number_or_refused_as_invalid(
        n in arb::huge_number(),
        status in prop::sample::select(vec![400u16, 403, 404, 418]),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let body = format!(r#"{{"object":"Error","type":"api/x","status":{n}}}"#);
        match decode(status, None, body.as_bytes()) {
            // serde_json reads an integer past u64 as an f64: not a status, so the HTTP one.
            Err(Failure::Final(Error::Api(api))) => prop_assert_eq!(api.status, status.as_u16()),
            // Past f64 (1e400, or 310 digits) it is a parse error.
            Err(Failure::Final(Error::Invalid(_))) => {
                prop_assert!(serde_json::from_str::<Value>(&n).is_err(), "{n}")
            }
            other => prop_assert!(false, "{other:?}"),
        }
        for field in ["qrcode", "intent_id"] {
            let body = json!({"object":"AuthenticationQrCode","qrcode":"2@x","intent_id":"acc_1"})
                .to_string()
                .replace(r#""2@x""#, if field == "qrcode" { &n } else { r#""2@x""# })
                .replace(r#""acc_1""#, if field == "intent_id" { &n } else { r#""acc_1""# });
            let got = decode(StatusCode::OK, None, body.as_bytes());
            prop_assert!(matches!(got, Err(Failure::Final(Error::Invalid(_)))), "{body}: {got:?}");
        }
    }

    #[test]
    fn any_retry_after_is_seconds_a_date_or_nothing(v in prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9]{20,30}",
        "[ -~]{0,40}",
        Just("Wed, 21 Oct 2015 07:28:00 GMT".to_owned()),
        Just("Fri, 31 Dec 9999 23:59:59 GMT".to_owned()),
    ]) {
        let Ok(value) = HeaderValue::from_str(&v) else { return Ok(()) };
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, value);
        let got = retry_after(&headers);
        if let Ok(secs) = v.trim().parse::<u64>() {
            prop_assert_eq!(got, Some(Duration::from_secs(secs)));
        } else if httpdate::parse_http_date(v.trim()).is_err() {
            prop_assert_eq!(got, None);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn a_body_nested_past_serde_jsons_limit_is_invalid_or_a_bare_transient_failure(
        depth in 0..4_000usize,
        shape in any::<u64>(),
        status in prop::sample::select(vec![200u16, 404, 502]),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let body = format!(r#"{{"object":"Account","id":"acc_1","type":"api/x","metadata":{}}}"#, arb::nested(depth, shape, "1"));
        let got = decode(status, None, body.as_bytes());
        // The body's own object is one more level.
        let readable = depth + 1 < arb::SERDE_JSON_DEPTH_LIMIT;
        match status.as_u16() {
            200 if readable => prop_assert!(matches!(got, Ok(AuthResponse::Account(_))), "{got:?}"),
            200 => prop_assert!(matches!(got, Err(Failure::Final(Error::Invalid(_)))), "{got:?}"),
            404 if readable => prop_assert!(matches!(got, Err(Failure::Final(Error::Api(_)))), "{got:?}"),
            404 => prop_assert!(matches!(got, Err(Failure::Final(Error::Invalid(_)))), "{got:?}"),
            _ if readable => prop_assert!(matches!(got, Err(Failure::Final(Error::Api(_)))), "{got:?}"),
            _ => prop_assert!(matches!(got, Err(Failure::Transient { api: None, .. })), "{got:?}"),
        }
    }
}
