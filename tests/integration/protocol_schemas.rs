//! The protocol's documentation cannot drift from the code: every frame of real flows through
//! the real gateway, read as the raw text that went over the wire, validates against the JSON
//! Schemas in `web/schema/`; so do the client messages the tests send and every `/ws/watch`
//! event; and the AsyncAPI document and TypeScript definitions name what the schemas define.

use crate::common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::common::{RawNext, TWOFA, TestGateway, WsClient, texts_until_close};
use jsonschema::{Retrieve, Uri, ValidatorMap};
use qrlink::link::protocol::{ClientFrame, Envelope, ErrorFrame, QrFrame, ServerFrame, codes};
use qrlink::simulator::{Endpoint, Fault};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Where the schemas pretend to live while a test resolves their relative `$ref`s; the
/// gateway serves them at `/schema/`, so the relative references work the same there.
const SCHEMA_BASE: &str = "http://qrlink.test/schema/";

fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web")
}

fn read_schema(name: &str) -> Value {
    let path = web_dir().join("schema").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// Resolves `$ref: "other.json"` from the schema folder on disk, never the network.
struct SchemaFolder;

impl Retrieve for SchemaFolder {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri
            .as_str()
            .strip_prefix(SCHEMA_BASE)
            .ok_or_else(|| format!("{uri} is not in the schema folder"))?;
        let path = web_dir().join("schema").join(name);
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }
}

/// The schema files, each compiled with every subschema (`#`, `#/$defs/qr`, …) so a failure can
/// name the frame's own definition instead of an opaque `oneOf` mismatch.
struct Schemas {
    server: ValidatorMap,
    client: ValidatorMap,
    watch: ValidatorMap,
    api_sessions: ValidatorMap,
}

#[derive(Clone, Copy, Debug)]
enum Doc {
    Server,
    Client,
    Watch,
    ApiSessions,
}

impl Doc {
    fn file(self) -> &'static str {
        match self {
            Doc::Server => "server-frame.json",
            Doc::Client => "client-frame.json",
            Doc::Watch => "watch-event.json",
            Doc::ApiSessions => "api-sessions.json",
        }
    }
}

impl Schemas {
    fn load() -> Schemas {
        Schemas {
            server: compile(Doc::Server.file()),
            client: compile(Doc::Client.file()),
            watch: compile(Doc::Watch.file()),
            api_sessions: compile(Doc::ApiSessions.file()),
        }
    }

    fn map(&self, doc: Doc) -> &ValidatorMap {
        match doc {
            Doc::Server => &self.server,
            Doc::Client => &self.client,
            Doc::Watch => &self.watch,
            Doc::ApiSessions => &self.api_sessions,
        }
    }

    /// The schema's complaints about `value` (empty when it is valid), with the errors of the
    /// definition named by its `type` when there is one.
    fn errors(&self, doc: Doc, value: &Value) -> Vec<String> {
        let root = self.map(doc).get("#").expect("root validator");
        if root.is_valid(value) {
            return Vec::new();
        }
        let mut errors: Vec<String> = root
            .iter_errors(value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        let def = value["type"]
            .as_str()
            .map(|t| format!("#/$defs/{t}"))
            .unwrap_or_default();
        // Forwarded frames on /ws/watch are defined in server-frame.json.
        let own = [doc, Doc::Server]
            .into_iter()
            .find_map(|d| self.map(d).get(&def));
        if let Some(own) = own {
            errors.extend(
                own.iter_errors(value)
                    .map(|e| format!("{def} at {}: {e}", e.instance_path())),
            );
        }
        errors
    }

    /// Parses one raw text message and checks it against `doc`; returns the parsed value.
    fn check_text(&self, doc: Doc, text: &str) -> Value {
        let value: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("{text} is not JSON ({e}), yet {} says so", doc.file()));
        self.check(doc, &value, text);
        value
    }

    fn check(&self, doc: Doc, value: &Value, what: &str) {
        let errors = self.errors(doc, value);
        assert!(
            errors.is_empty(),
            "expected {what} to validate against {}, got:\n  {}",
            doc.file(),
            errors.join("\n  ")
        );
    }
}

fn compile(name: &str) -> ValidatorMap {
    jsonschema::options()
        .with_base_uri(format!("{SCHEMA_BASE}{name}"))
        .with_retriever(SchemaFolder)
        .should_validate_formats(true)
        .build_map(&read_schema(name))
        .unwrap_or_else(|e| panic!("{name} is not a valid draft 2020-12 schema: {e}"))
}

// ---------------------------------------------------------------------------------- flows

/// One link attempt as its client saw it: every frame validated against server-frame.json.
#[derive(Debug)]
struct Seen {
    frames: Vec<Value>,
    close: u16,
}

impl Seen {
    fn types(&self) -> Vec<&str> {
        self.frames
            .iter()
            .map(|f| f["type"].as_str().unwrap_or("?"))
            .collect()
    }

    fn session(&self) -> &str {
        self.frames[0]["session"].as_str().expect("a session id")
    }

    fn last(&self) -> &Value {
        self.frames.last().expect("at least one frame")
    }
}

/// The next server frame, validated; fails on a close.
async fn next_frame(s: &Schemas, client: &mut WsClient) -> Value {
    match client.next_raw().await {
        RawNext::Text(t) => s.check_text(Doc::Server, &t),
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// Reads to the close, validating every frame; `seen` holds the frames read so far.
async fn rest_of(s: &Schemas, client: &mut WsClient, mut seen: Vec<Value>) -> Seen {
    let (texts, close) = texts_until_close(client).await;
    seen.extend(texts.iter().map(|t| s.check_text(Doc::Server, t)));
    Seen {
        frames: seen,
        close,
    }
}

/// Sends a client message after checking it against client-frame.json.
async fn send_client(s: &Schemas, client: &mut WsClient, message: Value) {
    s.check(Doc::Client, &message, &message.to_string());
    client.send_json(message).await;
}

fn expect_type<'a>(frame: &'a Value, kind: &str) -> &'a Value {
    assert_eq!(frame["type"], kind, "expected a {kind} frame, got {frame}");
    frame
}

async fn scanned_flow(gw: &TestGateway, s: &Schemas) -> Seen {
    let mut client = gw.connect("/ws/link/whatsapp?qr=svg,text,raw").await;
    let qr = next_frame(s, &mut client).await;
    expect_type(&qr, "qr");
    for rendering in ["svg", "text", "raw"] {
        assert!(qr[rendering].is_string(), "{rendering} was asked for: {qr}");
    }
    gw.sim()
        .scan(qr["intent_id"].as_str().unwrap())
        .expect("scan");
    let seen = rest_of(s, &mut client, vec![qr]).await;
    expect_type(seen.last(), "account");
    assert_eq!(seen.close, 1000);
    seen
}

async fn timeout_flow(gw: &TestGateway, s: &Schemas) -> Seen {
    let mut client = gw.connect("/ws/link/google_messages").await;
    let seen = rest_of(s, &mut client, Vec::new()).await;
    assert_eq!(seen.types(), ["qr", "qr", "qr", "timeout"]);
    assert_eq!(seen.last()["rotations"], 3);
    assert_eq!(seen.close, 1000);
    seen
}

async fn upstream_error_flow(gw: &TestGateway, s: &Schemas) -> Seen {
    gw.sim().push_fault(
        Endpoint::Checkpoint,
        Fault::Error {
            error_type: "api/proxy_error".into(),
            status: 502,
            detail: Some("The proxy answered 502.".into()),
        },
    );
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let seen = rest_of(s, &mut client, Vec::new()).await;
    assert_eq!(seen.types(), ["qr", "error"]);
    let error = seen.last();
    assert_eq!(error["code"], "api/proxy_error");
    assert!(
        error["detail"].is_string() && error["req_id"].is_string(),
        "detail and req_id pass through: {error}"
    );
    assert_eq!(seen.close, 1000);
    seen
}

async fn intent_error_flow(gw: &TestGateway, s: &Schemas) -> Seen {
    gw.sim().push_fault(
        Endpoint::Intent,
        Fault::Error {
            error_type: "api/already_exists".into(),
            status: 403,
            detail: None,
        },
    );
    let mut client = gw.connect("/ws/link/telegram").await;
    let seen = rest_of(s, &mut client, Vec::new()).await;
    assert_eq!(seen.types(), ["error"]);
    assert_eq!(seen.last()["code"], "api/already_exists");
    seen
}

async fn unreadable_upstream_flow(gw: &TestGateway, s: &Schemas) -> Seen {
    gw.sim().push_fault(Endpoint::Intent, Fault::Malformed);
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let seen = rest_of(s, &mut client, Vec::new()).await;
    assert_eq!(seen.types(), ["error"]);
    assert_eq!(seen.last()["code"], codes::UPSTREAM_INVALID);
    seen
}

/// Answers the 2FA checkpoint with each password in turn; all but the last must be wrong, and
/// each wrong one brings the checkpoint back with its error.
async fn twofa_flow(gw: &TestGateway, s: &Schemas, passwords: &[&str]) -> Seen {
    let mut client = gw.connect("/ws/link/telegram?qr=text").await;
    let qr = next_frame(s, &mut client).await;
    expect_type(&qr, "qr");
    gw.sim()
        .scan(qr["intent_id"].as_str().unwrap())
        .expect("scan");
    let mut frames = vec![qr];
    // A rotation may land between the QR and the scan.
    let checkpoint = loop {
        let f = next_frame(s, &mut client).await;
        if f["type"] == "qr" {
            frames.push(f);
            continue;
        }
        break f;
    };
    assert_eq!(
        expect_type(&checkpoint, "checkpoint")["checkpoint"]["type"],
        "2FA"
    );
    frames.push(checkpoint);
    for (i, password) in passwords.iter().enumerate() {
        send_client(s, &mut client, json!({"type": "code", "code": password})).await;
        if i + 1 < passwords.len() {
            let again = next_frame(s, &mut client).await;
            assert_eq!(
                expect_type(&again, "checkpoint")["error"]["code"],
                "provider/invalid_checkpoint_code"
            );
            frames.push(again);
        }
    }
    rest_of(s, &mut client, frames).await
}

async fn client_cancel_flow(gw: &TestGateway, s: &Schemas) -> Seen {
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let qr = next_frame(s, &mut client).await;
    expect_type(&qr, "qr");
    send_client(s, &mut client, json!({"type": "cancel"})).await;
    let seen = rest_of(s, &mut client, vec![qr]).await;
    assert!(
        seen.types().iter().all(|t| *t == "qr"),
        "a cancel gets no terminal frame: {seen:?}"
    );
    assert_eq!(seen.close, 1000);
    seen
}

async fn operator_cancel_flow(gw: &TestGateway, s: &Schemas) -> Seen {
    let mut client = gw.connect("/ws/link/google_messages").await;
    let qr = next_frame(s, &mut client).await;
    expect_type(&qr, "qr");
    let session = qr["session"].as_str().unwrap();
    let resp = reqwest::Client::new()
        .delete(gw.url(&format!("/api/sessions/{session}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "DELETE /api/sessions/{session}");
    let seen = rest_of(s, &mut client, vec![qr]).await;
    assert_eq!(seen.last()["code"], codes::CANCELLED, "{seen:?}");
    assert_eq!(seen.close, 1000);
    seen
}

/// The client hangs up after the first QR; returns that QR.
async fn disconnect_flow(gw: &TestGateway, s: &Schemas) -> Seen {
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let qr = next_frame(s, &mut client).await;
    expect_type(&qr, "qr");
    drop(client);
    Seen {
        frames: vec![qr],
        close: 1006,
    }
}

// ------------------------------------------------------------------- frames on /ws/link

#[tokio::test]
async fn every_frame_of_a_scanned_flow_matches_the_server_frame_schema() {
    let gw = TestGateway::start().await;
    let s = Schemas::load();
    let seen = scanned_flow(&gw, &s).await;
    let account = &seen.last()["account"];
    assert!(
        account.as_object().unwrap().len() > 4,
        "the upstream Account passes through with its extra fields: {account}"
    );
}

#[tokio::test]
async fn every_frame_of_a_timeout_flow_matches_the_server_frame_schema() {
    let gw = TestGateway::start().await;
    timeout_flow(&gw, &Schemas::load()).await;
}

#[tokio::test]
async fn every_frame_of_error_flows_matches_the_server_frame_schema() {
    let gw = TestGateway::start().await;
    let s = Schemas::load();
    upstream_error_flow(&gw, &s).await;
    intent_error_flow(&gw, &s).await;
    unreadable_upstream_flow(&gw, &s).await;
    operator_cancel_flow(&gw, &s).await;
}

#[tokio::test]
async fn every_frame_of_a_telegram_2fa_flow_and_its_code_message_match_the_schemas() {
    let gw = TestGateway::start().await;
    let s = Schemas::load();
    let right = twofa_flow(&gw, &s, &[TWOFA]).await;
    assert_eq!(
        expect_type(right.last(), "account")["account"]["provider"],
        "telegram"
    );
    assert_eq!(right.close, 1000);

    let typo = twofa_flow(&gw, &s, &["wrong horse", TWOFA]).await;
    expect_type(typo.last(), "account");

    let wrong = twofa_flow(&gw, &s, &["wrong horse", "still wrong", "nope"]).await;
    assert_eq!(
        expect_type(wrong.last(), "error")["code"],
        "provider/invalid_checkpoint_code"
    );
}

#[tokio::test]
async fn a_cancel_message_matches_the_client_schema_and_ends_the_flow_without_a_terminal_frame() {
    let gw = TestGateway::start().await;
    client_cancel_flow(&gw, &Schemas::load()).await;
}

#[tokio::test]
async fn protocol_error_frames_match_the_server_frame_schema_and_carry_their_close_codes() {
    let gw = TestGateway::start().await;
    let s = Schemas::load();

    let mut unknown = gw.connect("/ws/link/myspace").await;
    let seen = rest_of(&s, &mut unknown, Vec::new()).await;
    assert_eq!(seen.types(), ["error"]);
    assert_eq!(seen.last()["code"], codes::UNKNOWN_PROVIDER);
    assert_eq!(seen.last()["session"], "", "no session exists yet");
    assert_eq!(seen.close, 1008);

    let mut not_json = gw.connect("/ws/link/whatsapp").await;
    let qr = next_frame(&s, &mut not_json).await;
    not_json.send(Message::Text("{not json".into())).await;
    let seen = rest_of(&s, &mut not_json, vec![qr]).await;
    assert_eq!(seen.last()["code"], codes::INVALID_MESSAGE);
    assert_eq!(seen.close, 1007);

    let mut binary = gw.connect("/ws/link/whatsapp").await;
    let qr = next_frame(&s, &mut binary).await;
    binary.send(Message::Binary(vec![1, 2, 3].into())).await;
    let seen = rest_of(&s, &mut binary, vec![qr]).await;
    assert_eq!(seen.last()["code"], codes::INVALID_MESSAGE);
    assert_eq!(seen.close, 1003);
}

/// Frames the gateway can build but the flows above may not produce (every optional field
/// set): serialized by the gateway's own types, they must validate too.
#[test]
fn every_frame_the_gateway_types_can_build_matches_the_schemas() {
    let s = Schemas::load();
    let mut account = Map::new();
    account.insert("id".into(), json!("acc_1"));
    account.insert("brand_new_field".into(), json!({"nested": [1, 2]}));
    let frames = [
        ServerFrame::Qr(QrFrame {
            rotation: 2,
            intent_id: "acc_1".into(),
            expires_at: "2026-11-28T10:01:00Z".into(),
            svg: Some("<svg/>".into()),
            text: Some("▀▄".into()),
            raw: Some("2@x".into()),
        }),
        ServerFrame::Checkpoint {
            checkpoint: json!({"type": "2FA", "platform": "APP", "hint": "h"}),
            error: Some(qrlink::link::protocol::CheckpointError {
                code: "provider/invalid_checkpoint_code".into(),
                message: "That code is not correct.".into(),
            }),
        },
        ServerFrame::Account {
            account,
            state: Some("user-42".into()),
            result: Some("eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJxcmxpbmsifQ.c2ln".into()),
        },
        ServerFrame::Timeout { rotations: 5 },
        ServerFrame::Error(ErrorFrame {
            detail: Some("d".into()),
            req_id: Some("r".into()),
            ..ErrorFrame::gateway(codes::UPSTREAM_UNAVAILABLE, true)
        }),
    ];
    for (seq, frame) in (1..).zip(frames) {
        let text = serde_json::to_string(&Envelope::new("ses_AbC123", seq, frame)).unwrap();
        s.check_text(Doc::Server, &text);
        s.check_text(Doc::Watch, &text);
    }
    for message in [
        ClientFrame::Cancel,
        ClientFrame::Code {
            code: "1234".into(),
        },
    ] {
        s.check_text(Doc::Client, &serde_json::to_string(&message).unwrap());
    }
}

#[test]
fn the_schemas_reject_what_the_protocol_forbids() {
    let s = Schemas::load();
    let qr = json!({"type":"qr","session":"ses_1","seq":1,"rotation":1,"intent_id":"acc_1",
                    "expires_at":"2026-11-28T10:01:00Z"});
    let with = |base: &Value, key: &str, v: Value| {
        let mut out = base.clone();
        out[key] = v;
        out
    };
    let without = |base: &Value, key: &str| {
        let mut out = base.clone();
        out.as_object_mut().unwrap().remove(key);
        out
    };
    s.check(Doc::Server, &qr, "a minimal qr frame");
    let bad_frames = [
        (without(&qr, "expires_at"), "a qr without expires_at"),
        (without(&qr, "seq"), "a frame without seq"),
        (with(&qr, "seq", json!(0)), "seq 0"),
        (with(&qr, "rotation", json!(0)), "rotation 0"),
        (
            with(&qr, "expires_at", json!("soon")),
            "a non RFC 3339 expiry",
        ),
        (
            with(&qr, "session", json!("abc")),
            "a session id without ses_",
        ),
        (
            with(&qr, "colour", json!("red")),
            "an unknown field on a frame",
        ),
        (with(&qr, "type", json!("hello")), "an unknown frame type"),
        (
            json!({"type":"account","session":"ses_1","seq":2,"account":{"name":"x"}}),
            "an account without its id",
        ),
        (
            json!({"type":"error","session":"ses_1","seq":2,"code":"api/proxy_error","message":"m"}),
            "an error without retryable",
        ),
        (
            json!({"type":"timeout","session":"ses_1","seq":2}),
            "a timeout without rotations",
        ),
    ];
    for (frame, what) in &bad_frames {
        assert!(
            !s.errors(Doc::Server, frame).is_empty(),
            "server-frame.json should reject {what}: {frame}"
        );
    }
    for (message, what) in [
        (json!({"type":"code"}), "a code without its code"),
        (json!({"type":"code","code":7}), "a numeric code"),
        (json!({"type":"cancel","now":true}), "an unknown field"),
        (json!({"code":"1"}), "a message without type"),
    ] {
        assert!(
            !s.errors(Doc::Client, &message).is_empty(),
            "client-frame.json should reject {what}: {message}"
        );
    }
    let closed = json!({"type":"closed","session":"ses_1","outcome":"error","duration_ms":5,
                        "code":"api/proxy_error"});
    s.check(Doc::Watch, &closed, "a closed error event");
    for (event, what) in [
        (
            without(&closed, "code"),
            "an error outcome without its code",
        ),
        (
            with(&closed, "outcome", json!("account")),
            "a code on a non-error outcome",
        ),
        (
            with(&closed, "outcome", json!("exploded")),
            "an unknown outcome",
        ),
        (
            json!({"type":"lagged","skipped":0}),
            "lagged with nothing skipped",
        ),
        (
            json!({"type":"snapshot","sessions":[{"id":"ses_1","provider":"whatsapp",
                   "phase":"scanning","rotation":1,"started_at":"2026-11-28T10:00:00Z",
                   "age_ms":1,"client":"127.0.0.1"}]}),
            "a snapshot with an unknown phase",
        ),
        (
            json!({"type":"opened","session":"ses_1","provider":"whatsapp"}),
            "opened without client and at",
        ),
    ] {
        assert!(
            !s.errors(Doc::Watch, &event).is_empty(),
            "watch-event.json should reject {what}: {event}"
        );
    }
    // Where the protocol passes the upstream's objects through, unknown fields are fine.
    s.check(
        Doc::Server,
        &json!({"type":"checkpoint","session":"ses_1","seq":2,
                "checkpoint":{"type":"OTP","platform":"SMS","new_thing":{"a":1}}}),
        "a checkpoint with upstream fields the gateway does not know",
    );
}

#[test]
fn every_example_in_the_schemas_matches_its_definition() {
    let s = Schemas::load();
    let mut count = 0;
    for doc in [Doc::Server, Doc::Client, Doc::Watch, Doc::ApiSessions] {
        let schema = read_schema(doc.file());
        let mut defs: Vec<(String, &Value)> = vec![("#".into(), &schema)];
        if let Some(map) = schema["$defs"].as_object() {
            defs.extend(map.iter().map(|(k, v)| (format!("#/$defs/{k}"), v)));
        }
        for (pointer, def) in defs {
            let validator = s
                .map(doc)
                .get(&pointer)
                .unwrap_or_else(|| panic!("{} has no validator for {pointer}", doc.file()));
            for example in def["examples"].as_array().into_iter().flatten() {
                let errors: Vec<String> = validator
                    .iter_errors(example)
                    .map(|e| e.to_string())
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{}{pointer} example {example} is invalid: {errors:?}",
                    doc.file()
                );
                count += 1;
            }
        }
    }
    assert!(count >= 15, "expected examples throughout, found {count}");
}

#[test]
fn every_gateway_error_code_is_listed_in_the_error_schema() {
    let schema = read_schema("server-frame.json");
    let listed: BTreeSet<&str> = schema["$defs"]["gateway_error_code"]["oneOf"]
        .as_array()
        .expect("gateway_error_code is a oneOf of consts")
        .iter()
        .map(|c| c["const"].as_str().unwrap())
        .collect();
    let ours: BTreeSet<&str> = codes::GATEWAY.into();
    assert_eq!(listed, ours);
}

// ------------------------------------------------------------------- events on /ws/watch

/// Reads a watcher's events until `closed` for `session`, validating each one.
async fn watch_until_closed(s: &Schemas, watcher: &mut WsClient, session: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let text = match watcher.next_raw().await {
            RawNext::Text(t) => t,
            other => panic!("expected a watch event, got {other:?} after {events:?}"),
        };
        let event = s.check_text(Doc::Watch, &text);
        let closed = event["type"] == "closed" && event["session"] == session;
        events.push(event);
        if closed {
            return events;
        }
    }
}

/// What a watcher without `?qr=svg` must see of a session frame: the same, minus QR content.
fn stripped(frame: &Value) -> Value {
    let mut f = frame.clone();
    for key in ["svg", "text", "raw"] {
        f.as_object_mut().unwrap().remove(key);
    }
    f
}

/// The watcher's view of one finished flow: `opened`, the frames, `closed` with `outcome`.
fn assert_watched(events: &[Value], seen: &Seen, provider: &str, outcome: &str) {
    let session = seen.session();
    for e in events {
        assert!(e["type"] != "snapshot", "one snapshot only: {e}");
        assert!(
            e["type"] == "lagged" || e["session"] == session,
            "expected only {session}'s events, got {e}"
        );
    }
    let opened = &events[0];
    assert_eq!(opened["type"], "opened", "first comes opened: {events:?}");
    assert_eq!(opened["provider"], provider);
    assert_eq!(opened["client"], "127.0.0.1");
    let closed = events.last().unwrap();
    assert_eq!(closed["outcome"], outcome, "{closed}");
    let forwarded: Vec<Value> = events[1..events.len() - 1].to_vec();
    let expected: Vec<Value> = seen.frames.iter().map(stripped).collect();
    assert_eq!(
        forwarded, expected,
        "the watcher gets each frame as the browser did, QR content removed"
    );
}

#[tokio::test]
async fn every_watch_event_of_real_flows_matches_the_watch_event_schema() {
    let gw = TestGateway::start().await;
    let s = Schemas::load();
    let mut watcher = gw.connect("/ws/watch").await;
    let snapshot = match watcher.next_raw().await {
        RawNext::Text(t) => s.check_text(Doc::Watch, &t),
        other => panic!("expected a snapshot, got {other:?}"),
    };
    assert_eq!(snapshot, json!({"type": "snapshot", "sessions": []}));

    let seen = scanned_flow(&gw, &s).await;
    let events = watch_until_closed(&s, &mut watcher, seen.session()).await;
    assert_watched(&events, &seen, "whatsapp", "account");

    let seen = timeout_flow(&gw, &s).await;
    let events = watch_until_closed(&s, &mut watcher, seen.session()).await;
    assert_watched(&events, &seen, "google_messages", "timeout");

    let seen = upstream_error_flow(&gw, &s).await;
    let events = watch_until_closed(&s, &mut watcher, seen.session()).await;
    assert_watched(&events, &seen, "whatsapp", "error");
    assert_eq!(events.last().unwrap()["code"], "api/proxy_error");

    let seen = twofa_flow(&gw, &s, &[TWOFA]).await;
    let events = watch_until_closed(&s, &mut watcher, seen.session()).await;
    assert_watched(&events, &seen, "telegram", "account");

    let seen = operator_cancel_flow(&gw, &s).await;
    let events = watch_until_closed(&s, &mut watcher, seen.session()).await;
    assert_watched(&events, &seen, "google_messages", "cancelled");

    let seen = client_cancel_flow(&gw, &s).await;
    let events = watch_until_closed(&s, &mut watcher, seen.session()).await;
    assert_watched(&events, &seen, "whatsapp", "cancelled");

    let seen = disconnect_flow(&gw, &s).await;
    let events = watch_until_closed(&s, &mut watcher, seen.session()).await;
    // Frames already queued before the hang-up may still reach the watcher.
    assert_eq!(events[0]["type"], "opened");
    assert_eq!(events.last().unwrap()["outcome"], "disconnected");
}

#[tokio::test]
async fn a_watcher_joining_mid_flow_gets_a_valid_snapshot_and_only_its_sessions_events() {
    let gw = TestGateway::with(
        common::sim_config(std::time::Duration::from_secs(5), 2),
        &[],
    )
    .await;
    let s = Schemas::load();
    let mut mine = gw.connect("/ws/link/whatsapp").await;
    let qr = next_frame(&s, &mut mine).await;
    let session = qr["session"].as_str().unwrap().to_owned();
    let mut other = gw.connect("/ws/link/telegram").await;
    next_frame(&s, &mut other).await;

    let mut watcher = gw
        .connect(&format!("/ws/watch?session={session}&qr=svg"))
        .await;
    let snapshot = match watcher.next_raw().await {
        RawNext::Text(t) => s.check_text(Doc::Watch, &t),
        other => panic!("expected a snapshot, got {other:?}"),
    };
    let sessions = snapshot["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "only the watched session: {snapshot}");
    assert_eq!(sessions[0]["id"], session.as_str());
    assert_eq!(sessions[0]["phase"], "qr");
    assert_eq!(sessions[0]["rotation"], 1);

    // The other session ends first; the watcher must not hear of it.
    send_client(&s, &mut other, json!({"type": "cancel"})).await;
    rest_of(&s, &mut other, Vec::new()).await;
    gw.sim().scan(qr["intent_id"].as_str().unwrap()).unwrap();
    let seen = rest_of(&s, &mut mine, vec![qr]).await;
    let events = watch_until_closed(&s, &mut watcher, &session).await;
    for e in &events {
        assert_eq!(e["session"], session.as_str(), "{e}");
    }
    assert_eq!(events.last().unwrap()["outcome"], "account");
    assert_eq!(
        events[events.len() - 2],
        *seen.last(),
        "the account frame, unchanged"
    );
}

#[tokio::test]
async fn a_loopback_watcher_asking_for_svg_gets_it_in_schema_valid_qr_frames() {
    let gw = TestGateway::start().await;
    let s = Schemas::load();
    let mut watcher = gw.connect("/ws/watch?qr=svg").await;
    let _snapshot = watcher.next_raw().await;
    let mut client = gw.connect("/ws/link/whatsapp?qr=svg,raw").await;
    let qr = next_frame(&s, &mut client).await;
    drop(client);
    let events = watch_until_closed(&s, &mut watcher, qr["session"].as_str().unwrap()).await;
    let watched_qr = events
        .iter()
        .find(|e| e["type"] == "qr")
        .expect("the qr frame reaches the watcher");
    assert_eq!(watched_qr["svg"], qr["svg"]);
    assert!(
        watched_qr.get("raw").is_none(),
        "never the raw string: {watched_qr}"
    );
}

#[tokio::test]
async fn api_sessions_answers_with_the_documented_shape() {
    let gw = TestGateway::with(
        common::sim_config(std::time::Duration::from_secs(5), 2),
        &[],
    )
    .await;
    let s = Schemas::load();
    let mut a = gw.connect("/ws/link/whatsapp").await;
    next_frame(&s, &mut a).await;
    let mut b = gw.connect("/ws/link/telegram").await;
    next_frame(&s, &mut b).await;
    let body: Value = reqwest::get(gw.url("/api/sessions"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    s.check(Doc::ApiSessions, &body, "GET /api/sessions");
    assert_eq!(body["sessions"].as_array().unwrap().len(), 2, "{body}");
}

#[tokio::test]
async fn every_frame_and_event_of_a_resumed_flow_matches_the_schemas() {
    let gw = TestGateway::with(
        common::sim_config(std::time::Duration::from_secs(30), 2),
        &["--resume-grace", "60s"],
    )
    .await;
    let s = Schemas::load();
    let mut watcher = gw.connect("/ws/watch").await;
    let _snapshot = watcher.next_raw().await;
    let mut client = gw.connect("/ws/link/telegram").await;
    let qr = expect_type(&next_frame(&s, &mut client).await, "qr").clone();
    let token = qr["resume"].as_str().expect("a resume token").to_owned();
    gw.sim().scan(qr["intent_id"].as_str().unwrap()).unwrap();
    let checkpoint = expect_type(&next_frame(&s, &mut client).await, "checkpoint").clone();
    assert_eq!(checkpoint["resume"], token.as_str());
    drop(client);

    // The watcher hears of the detach; /api/sessions shows it.
    let session = qr["session"].as_str().unwrap();
    let mut events = Vec::new();
    while !events.iter().any(|e: &Value| e["type"] == "detached") {
        match watcher.next_raw().await {
            RawNext::Text(t) => events.push(s.check_text(Doc::Watch, &t)),
            other => panic!("expected a watch event, got {other:?}"),
        }
    }
    let body: Value = reqwest::get(gw.url("/api/sessions"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    s.check(
        Doc::ApiSessions,
        &body,
        "GET /api/sessions with a detached session",
    );
    assert_eq!(body["sessions"][0]["phase"], "detached", "{body}");

    let mut resumed = gw
        .connect(&format!("/ws/link/telegram?resume={token}"))
        .await;
    let replay = next_frame(&s, &mut resumed).await;
    assert_eq!(replay["replay"], true, "{replay}");
    let mut unreplayed = replay.clone();
    unreplayed.as_object_mut().unwrap().remove("replay");
    assert_eq!(unreplayed, checkpoint, "the checkpoint exactly as it was");
    send_client(&s, &mut resumed, json!({"type": "code", "code": TWOFA})).await;
    let seen = rest_of(&s, &mut resumed, vec![replay]).await;
    assert_eq!(seen.types(), ["checkpoint", "account"]);

    events.extend(watch_until_closed(&s, &mut watcher, session).await);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        types.contains(&"detached") && types.contains(&"resumed"),
        "{types:?}"
    );
    for e in &events {
        assert!(
            e.get("resume").is_none(),
            "watchers never see the token: {e}"
        );
    }
    assert_eq!(events.last().unwrap()["outcome"], "account");
}

// ------------------------------------------------------------------- served documents

/// Every `$ref: './schema/NAME.json#/POINTER'` in the AsyncAPI document.
fn asyncapi_schema_refs(yaml: &str) -> Vec<(String, String)> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix("$ref: './schema/"))
        .map(|r| {
            let r = r.trim_end_matches('\'');
            let (file, pointer) = r.split_once('#').unwrap_or((r, ""));
            (file.to_owned(), pointer.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn the_asyncapi_document_is_served_and_every_schema_it_references_exists() {
    let gw = TestGateway::start().await;
    let resp = reqwest::get(gw.url("/asyncapi.yaml")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let yaml = resp.text().await.unwrap();
    assert!(
        yaml.lines().next() == Some("asyncapi: 3.0.0"),
        "expected an AsyncAPI 3.0.0 document, got {:?}",
        yaml.lines().next()
    );
    for section in ["\nchannels:", "\noperations:", "\ncomponents:"] {
        assert!(yaml.contains(section), "no {section:?} section");
    }
    for address in ["address: /ws/link/{provider}", "address: /ws/watch"] {
        assert!(yaml.contains(address), "no channel with {address}");
    }
    let refs = asyncapi_schema_refs(&yaml);
    assert!(
        refs.len() >= 11,
        "expected a schema for each message: {refs:?}"
    );
    let mut files = BTreeSet::new();
    for (file, pointer) in &refs {
        let schema = read_schema(file);
        assert!(
            schema.pointer(pointer).is_some(),
            "asyncapi.yaml references {file}#{pointer}, which does not exist"
        );
        files.insert(file.clone());
    }
    // Relative references must resolve next to the served document too.
    for file in files {
        let resp = reqwest::get(gw.url(&format!("/schema/{file}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "/schema/{file}");
        let served: Value = resp.json().await.unwrap();
        assert_eq!(
            served,
            read_schema(&file),
            "/schema/{file} is the file on disk"
        );
    }
}

#[tokio::test]
async fn the_typescript_definitions_are_served_and_name_every_message_type() {
    let gw = TestGateway::start().await;
    let resp = reqwest::get(gw.url("/qrlink.d.ts")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let dts = resp.text().await.unwrap();
    let on_disk = std::fs::read_to_string(web_dir().join("qrlink.d.ts")).unwrap();
    assert_eq!(dts, on_disk);
    for doc in [Doc::Server, Doc::Client, Doc::Watch] {
        let schema = read_schema(doc.file());
        for def in schema["$defs"].as_object().unwrap().values() {
            if let Some(kind) = def["properties"]["type"]["const"].as_str() {
                assert!(
                    dts.contains(&format!("type: \"{kind}\";")),
                    "qrlink.d.ts has no message with type \"{kind}\" ({})",
                    doc.file()
                );
            }
        }
    }
}
