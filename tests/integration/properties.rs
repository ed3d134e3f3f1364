//! Property tests of the parsers behind public seams (issue 14): connect tokens, the `qr=` list,
//! the configuration's parsers, and the Unipile client over real HTTP with any status, content
//! type and `Retry-After`. Whatever comes in, the answer is a value or a typed error, never a
//! panic. The private parsers have theirs next to them (`src/**/*_props.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use qrlink::config::{parse_cidr, parse_duration, parse_qr_ttl};
use qrlink::http::auth::{Claims, TokenError, mint, now_secs, token_from_request, verify};
use qrlink::link::QrFormats;
use qrlink::upstream::{self, HttpVersion, RetryPolicy, Timeouts, UnipileClient};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::WAIT;

const SECRET: &str = "property-secret";
const MAX_TTL: Duration = Duration::from_secs(600);

/// RFC 4648 base64url without padding, as JWTs use it.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn valid_claims() -> Claims {
    Claims {
        sub: "user-1".into(),
        exp: now_secs() + 60,
        iat: Some(now_secs()),
        provider: Some("whatsapp".into()),
        account_id: None,
        proxy: None,
    }
}

/// A JWT's three parts with any header and claims (often a real algorithm and real claim
/// names) and any signature.
fn jwt_shaped() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        prop::sample::select(vec![
            "HS256", "HS384", "HS512", "RS256", "ES256", "none", "None", ""
        ])
        .prop_map(|alg| json!({"alg": alg, "typ": "JWT"}).to_string()),
        any::<String>(),
    ];
    let claims = prop_oneof![
        (any::<String>(), any::<u64>(), any::<Option<String>>()).prop_map(
            |(sub, exp, provider)| {
                json!({"sub": sub, "exp": exp, "provider": provider}).to_string()
            }
        ),
        (any::<i64>(), any::<f64>())
            .prop_map(|(exp, iat)| json!({"sub": 1, "exp": exp, "iat": iat}).to_string()),
        any::<String>(),
    ];
    let signature = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| b64url(&b)),
        Just(String::new()),
        any::<String>(),
    ];
    (header, claims, signature)
        .prop_map(|(h, c, s)| format!("{}.{}.{s}", b64url(h.as_bytes()), b64url(c.as_bytes())))
}

/// A token minted with [`SECRET`], then changed in one of the ways an attacker would.
fn tampered() -> impl Strategy<Value = String> {
    let token = mint(SECRET, &valid_claims());
    let len = token.len();
    let parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let (header, claims) = (parts[0].clone(), parts[1].clone());
    let other_claims = {
        let mut c = valid_claims();
        c.sub = "someone-else".into();
        c.provider = None;
        b64url(&serde_json::to_vec(&c).unwrap())
    };
    prop_oneof![
        // One character changed (base64url or anything else).
        (0..len, any::<char>()).prop_map({
            let t = token.clone();
            move |(i, c)| {
                let mut chars: Vec<char> = t.chars().collect();
                chars[i] = c;
                chars.into_iter().collect()
            }
        }),
        (
            0..len,
            prop::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".to_vec()
            )
        )
            .prop_map({
                let t = token.clone();
                move |(i, c)| {
                    let mut bytes = t.clone().into_bytes();
                    bytes[i] = c;
                    String::from_utf8(bytes).unwrap()
                }
            }),
        // Cut short, or with anything after it.
        (0..len).prop_map({
            let t = token.clone();
            move |n| t[..n].to_owned()
        }),
        "[ -~]{1,8}".prop_map({
            let t = token.clone();
            move |tail| format!("{t}{tail}")
        }),
        // Other claims under the original signature; `alg: none` without one.
        Just(format!("{header}.{other_claims}.{}", parts[2])),
        Just(format!(
            "{}.{claims}.",
            b64url(br#"{"alg":"none","typ":"JWT"}"#)
        )),
        Just(format!(
            "{}.{other_claims}.",
            b64url(br#"{"alg":"none","typ":"JWT"}"#)
        )),
        // Signed with another secret, or with the secret's neighbours.
        any::<String>().prop_map(|secret| mint(&secret, &valid_claims())),
        Just(mint("", &valid_claims())),
        Just(mint("property-secreT", &valid_claims())),
    ]
    .prop_filter("changed", move |t| *t != token)
}

/// The `qr=` list a model of the protocol reads: the known names present, else SVG.
fn expected_formats(list: &str) -> QrFormats {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    let f = QrFormats {
        svg: names.contains(&"svg"),
        text: names.contains(&"text"),
        raw: names.contains(&"raw"),
    };
    if f.svg || f.text || f.raw {
        f
    } else {
        QrFormats::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_string_as_a_connect_token_is_an_invalid_token(token in any::<String>(), provider in "[a-z_]{0,16}") {
        prop_assert!(matches!(verify(SECRET, MAX_TTL, Some(&token), &provider), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn any_jwt_shaped_token_without_our_signature_is_an_invalid_token(token in jwt_shaped()) {
        let got = verify(SECRET, MAX_TTL, Some(&token), "whatsapp");
        prop_assert!(matches!(got, Err(TokenError::Invalid(_))), "{token}: {got:?}");
    }

    #[test]
    fn a_tampered_token_is_an_invalid_token(token in tampered()) {
        let got = verify(SECRET, MAX_TTL, Some(&token), "whatsapp");
        prop_assert!(matches!(got, Err(TokenError::Invalid(_))), "{token}: {got:?}");
    }

    #[test]
    fn a_signed_token_with_any_claims_is_accepted_only_within_its_rules(
        exp in prop_oneof![any::<u64>(), (0..2_000u64).prop_map(|d| now_secs() + d - 1_000)],
        iat in prop_oneof![Just(None), any::<u64>().prop_map(Some), (0..2_000u64).prop_map(|d| Some(now_secs() + d - 1_000))],
        provider in prop::option::of(prop::sample::select(vec!["whatsapp", "telegram", ""])),
        sub in any::<String>(),
    ) {
        let claims = Claims { sub, exp, iat, provider: provider.map(str::to_owned), account_id: None, proxy: None };
        let token = mint(SECRET, &claims);
        let now = now_secs();
        match verify(SECRET, MAX_TTL, Some(&token), "whatsapp") {
            Ok(got) => {
                prop_assert_eq!(&got, &claims);
                prop_assert!(exp + 5 >= now, "expired at {exp}, now {now}");
                prop_assert!(exp.saturating_sub(iat.unwrap_or(now).min(now)) <= MAX_TTL.as_secs() + 1);
                prop_assert!(claims.provider.as_deref().is_none_or(|p| p == "whatsapp"));
            }
            Err(TokenError::Invalid(_) | TokenError::TooLong | TokenError::WrongProvider) => {}
            Err(TokenError::Missing) => prop_assert!(false, "a token was sent"),
        }
    }

    #[test]
    fn the_token_comes_from_the_query_else_the_first_token_subprotocol(
        query in any::<Option<String>>(),
        protocols in prop::collection::vec(prop_oneof!["[ -~]{0,20}", "qrlink\\.token\\.[ -+\\--~]{0,20}"], 0..4),
    ) {
        let mut headers = HeaderMap::new();
        for p in &protocols {
            if let Ok(v) = HeaderValue::from_str(p) {
                headers.append(header::SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
        let got = token_from_request(query.as_ref(), &headers);
        match query.as_deref().filter(|q| !q.is_empty()) {
            Some(q) => prop_assert_eq!(got, Some(q)),
            None => if let Some(t) = got {
                prop_assert!(protocols.iter().any(|p| p.contains(&format!("qrlink.token.{t}"))), "{t:?} from {protocols:?}");
            },
        }
    }

    #[test]
    fn any_qr_list_gives_the_known_names_in_it_or_svg_and_never_nothing(
        list in prop_oneof![
            any::<String>(),
            prop::collection::vec(prop_oneof![
                prop::sample::select(vec!["svg", "text", "raw", " svg ", "SVG", "", "png", "raw,"]).prop_map(str::to_owned),
                "[ -~]{0,6}",
            ], 0..6).prop_map(|names| names.join(",")),
        ],
    ) {
        let got = QrFormats::parse(&list);
        prop_assert!(got.svg || got.text || got.raw, "{list:?} asked for nothing");
        prop_assert_eq!(got, expected_formats(&list));
    }

    #[test]
    fn the_configurations_parsers_answer_any_string_with_a_value_or_an_error(s in prop_oneof![
        any::<String>(),
        "[0-9a-f:./]{0,24}",
        "[0-9]{1,30}(ns|us|ms|s|m|h|d|w|y)?",
        "([a-z]{1,8}=)?[0-9]{1,25}[a-z]{0,3}(,([a-z]{1,8}=)?[0-9]{1,25}[a-z]{0,3}){0,3}",
    ]) {
        if let Ok(cidr) = parse_cidr(&s) {
            let max = if cidr.addr.is_ipv4() { 32 } else { 128 };
            prop_assert!(cidr.prefix <= max, "{s:?}");
            prop_assert!(cidr.contains(cidr.addr), "{s:?}");
        }
        let _ = parse_duration(&s);
        let _ = parse_qr_ttl(&s);
    }
}

/// What the fake Unipile answers every request with.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn bytes(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} Whatever\r\n", self.status);
        if let Some(ct) = &self.content_type {
            head.push_str(&format!("content-type: {ct}\r\n"));
        }
        if let Some(ra) = &self.retry_after {
            head.push_str(&format!("retry-after: {ra}\r\n"));
        }
        head.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            self.body.len()
        ));
        [head.into_bytes(), self.body.clone().into_bytes()].concat()
    }
}

/// A Unipile that answers every request with whatever `answer` holds at that moment.
async fn fake_unipile(answer: Arc<Mutex<Answer>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                // The request's head and its small JSON body: the answer does not depend on it.
                let mut buf = vec![0u8; 8192];
                let mut read = 0;
                while let Ok(n) = stream.read(&mut buf[read..]).await {
                    read += n;
                    let text = String::from_utf8_lossy(&buf[..read]);
                    if n == 0 || text.contains("\r\n\r\n") && text.ends_with('}') {
                        break;
                    }
                }
                let bytes = answer.lock().unwrap().bytes();
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

fn answer() -> impl Strategy<Value = Answer> {
    let status = prop_oneof![
        (200..600u16),
        prop::sample::select(vec![200u16, 400, 401, 404, 429, 500, 502, 503, 504]),
    ];
    let content_type = prop::option::of(prop_oneof![
        prop::sample::select(vec![
            "application/json",
            "application/problem+json",
            "text/html; charset=utf-8",
            "text/plain",
            "application/octet-stream",
            "application/json; charset=latin1",
            "",
        ])
        .prop_map(str::to_owned),
        "[!-~]{1,20}",
    ]);
    let retry_after = prop::option::of(prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        Just(u64::MAX.to_string()),
        "[0-9]{20,30}",
        Just("Fri, 31 Dec 9999 23:59:59 GMT".to_owned()),
        Just("Thu, 01 Jan 1970 00:00:00 GMT".to_owned()),
        "[ -~]{0,20}",
    ]);
    let body = prop_oneof![
        Just(
            json!({"object":"AuthenticationQrCode","qrcode":"2@x","intent_id":"acc_1"}).to_string()
        ),
        Just(json!({"object":"Account","id":"acc_1"}).to_string()),
        prop::sample::select(vec![
            "api/too_many_requests",
            "api/internal_error",
            "api/proxy_error",
            "provider/timeout"
        ])
        .prop_map(|t| json!({"object":"Error","type":t,"status":429}).to_string()),
        Just(String::new()),
        Just("<html>502 Bad Gateway</html>".to_owned()),
        any::<String>(),
    ];
    (status, content_type, retry_after, body).prop_map(
        |(status, content_type, retry_after, body)| Answer {
            status,
            content_type: content_type.filter(|c| !c.contains(['\r', '\n'])),
            retry_after: retry_after.filter(|r| !r.contains(['\r', '\n'])),
            body,
        },
    )
}

/// A result without what varies between two identical calls (timings, attempt counts).
fn outcome(r: &Result<upstream::AuthResponse, upstream::Error>) -> String {
    match r {
        Ok(resp) => format!("{resp:?}"),
        Err(upstream::Error::Api(api)) => format!("api {} {}", api.status, api.kind),
        Err(upstream::Error::Invalid(_)) => "invalid".into(),
        Err(upstream::Error::Unavailable { .. }) => "unavailable".into(),
    }
}

#[test]
fn any_answer_with_any_content_type_and_retry_after_ends_in_a_typed_result_that_ignores_the_content_type()
 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared = Arc::new(Mutex::new(Answer {
        status: 200,
        content_type: None,
        retry_after: None,
        body: String::new(),
    }));
    let url = rt.block_on(fake_unipile(shared.clone()));
    let client = UnipileClient::new(
        &url,
        "key",
        RetryPolicy {
            budget: Duration::from_millis(100),
            base: Duration::from_millis(1),
        },
        Timeouts {
            connect: Duration::from_secs(1),
            poll: Duration::from_secs(5),
        },
        HttpVersion::Http1,
    )
    .unwrap();
    // A fixed seed, so CI runs what was run here. With fresh seeds this property found a 429
    // with a `Retry-After` in the past being retried at once forever (fixed; the test below);
    // run it with `TestRunner::new(..)` and more cases to look for more.
    let mut runner = TestRunner::new_with_rng(
        Config::with_cases(24),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    runner
        .run(&answer(), |a| {
            let call = |a: Answer| {
                *shared.lock().unwrap() = a;
                rt.block_on(async {
                    tokio::time::timeout(WAIT, client.solve_checkpoint("acc_1", ""))
                        .await
                        .expect("the call ends")
                })
            };
            let got = call(a.clone());
            let as_json = call(Answer {
                content_type: Some("application/json".into()),
                ..a.clone()
            });
            prop_assert_eq!(outcome(&got), outcome(&as_json), "{:?}", a);
            if (200..300).contains(&a.status) && serde_json::from_str::<Value>(&a.body).is_err() {
                prop_assert!(matches!(got, Err(upstream::Error::Invalid(_))), "{got:?}");
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_retry_after_of_u64_max_seconds_gives_up_at_once_instead_of_overflowing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = Answer {
        status: 429,
        content_type: Some("application/json".into()),
        retry_after: Some(u64::MAX.to_string()),
        body: json!({"object":"Error","type":"api/too_many_requests","status":429}).to_string(),
    };
    let url = rt.block_on(fake_unipile(Arc::new(Mutex::new(answer))));
    let client = UnipileClient::new(
        &url,
        "key",
        RetryPolicy {
            budget: Duration::from_secs(30),
            base: Duration::from_millis(1),
        },
        Timeouts {
            connect: Duration::from_secs(1),
            poll: Duration::from_secs(5),
        },
        HttpVersion::Http1,
    )
    .unwrap();
    let got = rt
        .block_on(async { tokio::time::timeout(WAIT, client.solve_checkpoint("acc_1", "")).await });
    match got {
        Ok(Err(upstream::Error::Api(api))) => assert_eq!(
            (api.status, api.kind.as_str()),
            (429, "api/too_many_requests")
        ),
        other => panic!("expected the 429 at once, got {other:?}"),
    }
}

/// Found by the property above with fresh seeds: a 429 whose `Retry-After` is a date in the past
/// (or 0) was retried at once, over and over, past the retry budget, never giving up.
#[test]
fn a_retry_after_in_the_past_is_retried_within_the_budget_and_then_given_up() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for retry_after in ["Thu, 01 Jan 1970 00:00:00 GMT", "0"] {
        let answer = Answer {
            status: 429,
            content_type: None,
            retry_after: Some(retry_after.into()),
            body: "<html>502 Bad Gateway</html>".into(),
        };
        let url = rt.block_on(fake_unipile(Arc::new(Mutex::new(answer))));
        let client = UnipileClient::new(
            &url,
            "key",
            RetryPolicy {
                budget: Duration::from_millis(200),
                base: Duration::from_millis(10),
            },
            Timeouts {
                connect: Duration::from_secs(1),
                poll: Duration::from_secs(5),
            },
            HttpVersion::Http1,
        )
        .unwrap();
        let got = rt.block_on(async {
            tokio::time::timeout(WAIT, client.solve_checkpoint("acc_1", "")).await
        });
        match got {
            Ok(Err(upstream::Error::Unavailable { attempts, .. })) => assert!(
                (2..=20).contains(&attempts),
                "Retry-After {retry_after}: {attempts} attempts within a 200 ms budget"
            ),
            other => {
                panic!("Retry-After {retry_after}: expected the budget to run out, got {other:?}")
            }
        }
    }
}
