//! The worked integration of `examples/`: the example app against a demo gateway started with
//! the command the app prints, as the README's two terminals do.
//!
//! `examples/app.rs` is compiled into this test as a module, so what runs here is the very code
//! `cargo run --example app` runs (its `serve`, on a port of its own; only `main` is left out).
//! Its backend is checked over HTTP with a real result token and real webhooks from the gateway;
//! its page and the React example (`examples/react`, built with `npm ci && npm run build`) are
//! driven in headless Chromium through the gateway's modal to a linked account. Without
//! Chromium or npm those tests say why and pass, except on CI.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use fantoccini::key::Key;
use qrlink::link::protocol::ServerFrame;
use serde_json::{Value, json};
use standardwebhooks::Webhook;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::common::browser::{self, Page, PageKind};
use crate::common::{DemoGateway, WAIT, WsClient, free_port, qr_envelope, required_tool};

#[path = "../../examples/app.rs"]
#[allow(dead_code)] // its `main`: the tests start `serve` themselves
mod app;

// ------------------------------------------------------------------------------------------
// The tests

/// Clicks `button`, scans in the modal, and waits for the WhatsApp account to be listed as
/// confirmed by both the result token and the webhook; returns its id as shown.
async fn link_whatsapp(page: &Page, ex: &Example, button: &str) -> String {
    page.click(button).await;
    scan_in_the_modal(page, ex).await;
    page.wait_js(
        "the account, confirmed by the result token and the webhook",
        "return !!document.querySelector('#accounts li[data-by-result=\"true\"]\
         [data-by-webhook=\"true\"]')",
    )
    .await;
    let text = page.text("#accounts li").await;
    assert!(text.contains("(whatsapp)"), "got {text:?}");
    page.attr("#accounts li", "data-account-id").await
}

/// The example's own page, signed in as `name` (the session cookie serves both its pages).
async fn sign_in(page: &Page, ex: &Example, name: &str) {
    page.goto_until(
        &ex.url("/"),
        "the page",
        "return !!document.body && document.body.dataset.ready === 'true'",
    )
    .await;
    page.type_into("#name", name).await;
    page.click("#sign-in").await;
    page.wait_js(
        &format!("{name} signed in"),
        "return !document.getElementById('signed-in').hidden",
    )
    .await;
}

#[tokio::test]
async fn the_backend_verifies_a_real_result_token_and_webhook_from_the_gateway() {
    let ex = Example::start().await;
    let ada = ex.login("ada").await;

    // Step 1: the app mints the connect token; the gateway takes it.
    let token = ex
        .post(&ada, "/api/connect-token", json!({"provider": "whatsapp"}))
        .await;
    let token = token["token"].as_str().expect("a token").to_owned();
    let mut link = WsClient::connect(&format!(
        "ws://{}/ws/link/whatsapp?token={token}",
        ex.gw.addr
    ))
    .await;
    let qr = qr_envelope(&mut link).await;
    let ServerFrame::Qr(qr) = qr.frame else {
        unreachable!("qr_envelope returns a qr")
    };
    ex.gw
        .sim()
        .scan(&qr.intent_id)
        .expect("the demo intent takes a scan");
    let frame = link.frame().await;
    let ServerFrame::Account {
        account, result, ..
    } = frame.frame
    else {
        panic!("expected the account after the scan, got {frame:?}");
    };
    let account_id = account["id"].as_str().unwrap().to_owned();
    let result = result.expect("an account frame with connect tokens carries a result token");

    // Step 3: the backend verifies the result token for the user it minted the token for.
    let bob = ex.login("bob").await;
    let refused = ex
        .post_status(&bob, "/api/link-result", json!({"result": result}))
        .await;
    assert_eq!(
        refused.0, 400,
        "bob posted ada's result token: {}",
        refused.1
    );
    assert!(
        refused.1["error"]
            .as_str()
            .unwrap()
            .contains("does not verify")
    );
    let mut forged = result.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let refused = ex
        .post_status(&ada, "/api/link-result", json!({"result": forged}))
        .await;
    assert_eq!(
        refused.0, 400,
        "a result token with another signature: {}",
        refused.1
    );
    let linked = ex
        .post(&ada, "/api/link-result", json!({"result": result}))
        .await;
    assert_eq!(linked["account"]["account_id"], account_id.as_str());
    assert_eq!(linked["account"]["by_result"], true);
    let replayed = ex
        .post_status(&ada, "/api/link-result", json!({"result": result}))
        .await;
    assert_eq!(replayed.0, 400, "a result token used twice: {}", replayed.1);
    assert!(
        replayed.1["error"]
            .as_str()
            .unwrap()
            .contains("already used")
    );

    // Step 3, the other way: the gateway's webhook, verified, names the same account for ada.
    let status = ex
        .wait_status("ada's account confirmed by a webhook", |s| {
            s["accounts"]["ada"][0]["by_webhook"] == true
        })
        .await;
    assert_eq!(
        status["accounts"]["ada"][0]["account_id"],
        account_id.as_str()
    );
    assert_eq!(status["accounts"]["ada"][0]["by_result"], true);
    assert_eq!(status["counts"]["results_verified"], 1, "{status}");
    assert_eq!(status["counts"]["results_rejected"], 3, "{status}");
    assert_eq!(
        status["counts"]["webhooks_rejected"],
        Value::Null,
        "{status}"
    );
    assert!(status["accounts"]["bob"].is_null(), "{status}");

    // A webhook signed with another secret, or signed right but long ago, is refused.
    let body = br#"{"type":"link.succeeded","data":{"state":"ada","provider":"whatsapp"}}"#;
    let other = Webhook::new("whsec_c29tZSBvdGhlciBzZWNyZXQ=").unwrap();
    let ours = Webhook::new(app::DEMO_WEBHOOK_SECRET).unwrap();
    let now = app_now();
    for (why, signer, sent) in [
        ("another secret", &other, now),
        ("an hour ago", &ours, now - 3600),
    ] {
        let answer = reqwest::Client::new()
            .post(format!("http://{}/webhooks/qrlink", ex.addr))
            .header("webhook-id", "msg_forged")
            .header("webhook-timestamp", sent.to_string())
            .header(
                "webhook-signature",
                signer.sign("msg_forged", sent, body).unwrap(),
            )
            .body(body.as_slice())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "a webhook signed with {why}");
    }
    let status = ex.status().await;
    assert_eq!(status["counts"]["webhooks_rejected"], 2, "{status}");
    assert_eq!(
        status["accounts"]["ada"].as_array().unwrap().len(),
        1,
        "{status}"
    );
}

#[tokio::test]
async fn the_backend_refuses_requests_without_a_session_or_with_bad_input() {
    let ex = Example::start().await;
    let nobody = String::new();
    let answer = ex
        .post_status(
            &nobody,
            "/api/connect-token",
            json!({"provider": "whatsapp"}),
        )
        .await;
    assert_eq!(answer.0, 401, "{}", answer.1);
    let ada = ex.login("ada").await;
    let answer = ex
        .post_status(&ada, "/api/connect-token", json!({"provider": "icq"}))
        .await;
    assert_eq!(answer.0, 400, "{}", answer.1);
    for name in ["", "   ", "a\u{7}b", &"x".repeat(41)] {
        let answer = ex
            .post_status(&nobody, "/api/login", json!({ "name": name }))
            .await;
        assert_eq!(answer.0, 400, "name {name:?}: {}", answer.1);
    }
    let answer = ex
        .post_status(&ada, "/api/link-result", json!({"result": "not.a.jwt"}))
        .await;
    assert_eq!(answer.0, 400, "{}", answer.1);
}

#[test]
fn the_hand_written_webhook_check_agrees_with_the_official_library() {
    let secret = app::DEMO_WEBHOOK_SECRET;
    let key = app::webhook_key(secret).unwrap();
    let official = Webhook::new(secret).unwrap();
    let body = br#"{"type":"link.expired","data":{}}"#;
    let now = app_now();
    let headers = |id: &str, sent: i64, signature: &str| {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_str(id).unwrap());
        h.insert("webhook-timestamp", HeaderValue::from(sent));
        h.insert(
            "webhook-signature",
            HeaderValue::from_str(signature).unwrap(),
        );
        h
    };
    let signed = official.sign("msg_1", now, body).unwrap();
    let good = headers("msg_1", now, &signed);
    official
        .verify(body, &good)
        .expect("the official library accepts it");
    assert_eq!(app::verify_webhook(&key, &good, body, now as u64), Ok(()));

    // While secrets rotate the header holds several signatures; one valid is enough.
    let other = Webhook::new("whsec_c29tZSBvdGhlciBzZWNyZXQ=").unwrap();
    let rotating = format!("{} {signed}", other.sign("msg_1", now, body).unwrap());
    let rotating = headers("msg_1", now, &rotating);
    assert_eq!(
        app::verify_webhook(&key, &rotating, body, now as u64),
        Ok(())
    );

    let refused = [
        (
            "another body",
            headers("msg_1", now, &signed),
            &br#"{"type":"link.succeeded"}"#[..],
        ),
        ("another id", headers("msg_2", now, &signed), body),
        (
            "another timestamp",
            headers("msg_1", now + 1, &signed),
            body,
        ),
        (
            "another secret",
            headers("msg_1", now, &other.sign("msg_1", now, body).unwrap()),
            body,
        ),
        (
            "no v1 prefix",
            headers("msg_1", now, signed.trim_start_matches("v1,")),
            body,
        ),
    ];
    for (what, headers, body) in refused {
        assert!(
            official.verify(body, &headers).is_err(),
            "{what}: the library refuses it"
        );
        assert_eq!(
            app::verify_webhook(&key, &headers, body, now as u64),
            Err("no valid signature".to_owned()),
            "{what}"
        );
    }
    let stale = official.sign("msg_1", now - 301, body).unwrap();
    let stale = app::verify_webhook(&key, &headers("msg_1", now - 301, &stale), body, now as u64);
    assert!(stale.unwrap_err().contains("5 minutes"));
    let mut missing = good.clone();
    missing.remove("webhook-signature");
    assert_eq!(
        app::verify_webhook(&key, &missing, body, now as u64),
        Err("no webhook-signature header".to_owned())
    );
    assert!(
        app::webhook_key("c2VjcmV0").is_err(),
        "a secret without whsec_"
    );
}

#[tokio::test]
async fn the_app_says_clearly_when_the_gateway_is_missing_or_signs_no_result_tokens() {
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let error = app::check_gateway(&nowhere).await.unwrap_err();
    assert!(
        error.contains(&format!("cannot reach the qrlink gateway at {nowhere}"))
            && error.contains("nothing answers there"),
        "got {error:?}"
    );
    let gw = DemoGateway::start("60s", 3).await;
    let error = app::check_gateway(&gw.url("")).await.unwrap_err();
    assert!(
        error.contains("runs without QRLINK_TOKEN_SECRET"),
        "got {error:?}"
    );
}

#[test]
fn the_printed_command_shows_secrets_of_your_own_as_their_variables() {
    let settings = app::Settings {
        listen: "127.0.0.1:4100".parse().unwrap(),
        gateway: "http://127.0.0.1:3000".to_owned(),
        token_secret: "my-own-token-secret".to_owned(),
        webhook_secret: "whsec_bXktb3duLXdlYmhvb2stc2VjcmV0".to_owned(),
    };
    let command = settings.gateway_command();
    assert!(
        !command.contains("my-own") && !command.contains("bXktb3du"),
        "{command}"
    );
    assert_eq!(
        gateway_flags(&command),
        [
            "--token-secret",
            "\"$QRLINK_TOKEN_SECRET\"",
            "--webhook-url",
            "http://127.0.0.1:4100/webhooks/qrlink",
            "--webhook-secret",
            "\"$QRLINK_WEBHOOK_SECRET\"",
            "--allowed-origins",
            "http://127.0.0.1:4100",
        ]
    );
}

#[tokio::test]
async fn the_example_page_exits_on_esc_then_links_an_account_its_backend_verifies_twice() {
    let ex = Example::start().await;
    let mut shown_account = String::new();
    run(
        "the_example_page_exits_on_esc_then_links_an_account_its_backend_verifies_twice",
        async |page| {
            sign_in(page, &ex, "ada").await;
            assert_eq!(page.text("#user").await, "ada");
            // Closed without a scan: onExit(null), and the gateway's link.abandoned webhook.
            page.click("#link-telegram").await;
            enter_modal(page, &ex).await;
            leave_modal(page).await;
            page.press(Key::Escape).await;
            page.wait_js(
                "the link.abandoned webhook, and no modal",
                "return document.getElementById('webhooks').textContent\
                 .includes('link.abandoned (telegram)') && !document.querySelector('iframe')",
            )
            .await;
            assert_eq!(page.text("#message").await, "", "Esc is no error");
            assert_eq!(page.count("#accounts li").await, 0);

            shown_account = link_whatsapp(page, &ex, "#link-whatsapp").await;
            assert_eq!(page.count("#accounts li").await, 1);
            assert_eq!(page.text("#message").await, "");
            let webhooks = page.text("#webhooks").await;
            assert!(
                webhooks.contains("link.succeeded (whatsapp)"),
                "got {webhooks:?}"
            );
            page.screenshot().await;
            assert_no_csp_violations(page).await;
        },
    )
    .await;
    let status = ex.status().await;
    assert_eq!(status["counts"]["results_verified"], 1, "{status}");
    assert_eq!(
        status["counts"]["results_rejected"],
        Value::Null,
        "{status}"
    );
    assert_eq!(
        status["counts"]["webhooks_rejected"],
        Value::Null,
        "{status}"
    );
}

#[tokio::test]
async fn the_react_example_builds_renders_links_an_account_and_unmounts_its_modal() {
    if !build_react_example().await {
        return;
    }
    let ex = Example::start().await;
    let mut shown_account = String::new();
    run(
        "the_react_example_builds_renders_links_an_account_and_unmounts_its_modal",
        async |page| {
            // Signed in by the plain page (the session cookie is the app's, for both pages).
            sign_in(page, &ex, "grace").await;
            page.goto_until(
                &ex.url("/react"),
                "the React demo",
                "return !!document.querySelector('main[data-ready=\"true\"]')",
            )
            .await;
            assert!(page.text("main").await.contains("Signed in as grace"));
            shown_account = link_whatsapp(page, &ex, "button#link").await;
            page.screenshot().await;

            // Signed out by another tab while the modal is open: the button unmounts, and
            // takes the modal and its attempt with it.
            page.click("button#link").await;
            enter_modal(page, &ex).await;
            leave_modal(page).await;
            page.js::<()>("fetch('/api/logout', { method: 'POST' }); return null")
                .await;
            page.wait_js(
                "the demo signed out, with nothing of the modal left",
                "return !document.querySelector('main') && document.body.textContent\
                 .includes('sign in first') && !document.querySelector('iframe, [inert], \
                 [role=dialog]')",
            )
            .await;
            tokio::time::timeout(WAIT, ex.gw.state.store.wait_for_count(|n| n == 0))
                .await
                .expect("the attempt ends with the modal");
            assert_no_csp_violations(page).await;
        },
    )
    .await;
    let status = ex.status().await;
    assert_eq!(status["counts"]["results_verified"], 1, "{status}");
    assert_eq!(
        status["accounts"]["grace"][0]["account_id"],
        shown_account.as_str()
    );
}

#[test]
fn the_readme_embed_section_quotes_the_example_verbatim() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |path: &str| {
        std::fs::read_to_string(format!("{root}/{path}"))
            .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    };
    let readme = read("README.md");
    let section = readme
        .split("\n## Embed it in your app\n")
        .nth(1)
        .expect("README has a section 'Embed it in your app'");
    let section = section.split("\n## ").next().unwrap();
    let sources = [
        "examples/app.rs",
        "examples/app/app.js",
        "examples/app/index.html",
        "examples/react/src/QrLinkButton.jsx",
        "examples/react/src/demo.jsx",
    ]
    .map(|path| (path, trimmed_lines(&read(path))));
    let mut quoted = 0;
    for block in section.split("\n```").skip(1).step_by(2) {
        let (lang, code) = block.split_once('\n').unwrap_or((block, ""));
        if !["rust", "js", "jsx", "html"].contains(&lang) {
            continue;
        }
        // `// …` in a snippet stands for lines left out: each part is quoted on its own.
        for part in code.split("\n// …\n") {
            let part = trimmed_lines(part);
            let found = sources
                .iter()
                .any(|(_, lines)| lines.windows(part.len()).any(|w| w == part.as_slice()));
            assert!(
                found,
                "README 'Embed it in your app' quotes lines no example has:\n{}",
                part.join("\n")
            );
            quoted += 1;
        }
    }
    // The two terminals' commands: the first is what the app prints with its defaults.
    let defaults = app::Settings {
        listen: "127.0.0.1:4000".parse().unwrap(),
        gateway: "http://127.0.0.1:3000".to_owned(),
        token_secret: app::DEMO_TOKEN_SECRET.to_owned(),
        webhook_secret: app::DEMO_WEBHOOK_SECRET.to_owned(),
    };
    let command = format!("\n{}\n", defaults.gateway_command());
    assert!(
        section.contains(&command),
        "expected the section to show:{command}"
    );
    assert!(section.contains("\ncargo run --example app\n"));
    assert!(
        quoted >= 3,
        "expected the section to quote the example, found {quoted} snippets"
    );
}

// ------------------------------------------------------------------------------------------
// The harness

/// The example app and a demo gateway, set up for each other.
struct Example {
    gw: DemoGateway,
    /// Where the app listens.
    addr: SocketAddr,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl Example {
    /// Binds the app first (the gateway's webhook URL names its port), starts the gateway with
    /// the flags of the command the app prints, then serves the app against it.
    async fn start() -> Example {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut settings = app::Settings {
            listen: addr,
            gateway: String::new(),
            token_secret: app::DEMO_TOKEN_SECRET.to_owned(),
            webhook_secret: app::DEMO_WEBHOOK_SECRET.to_owned(),
        };
        let command = settings.gateway_command();
        let mut flags = gateway_flags(&command);
        flags.extend(["--resume-grace".to_owned(), "0".to_owned()]);
        let flags = flags.iter().map(String::as_str).collect::<Vec<_>>();
        let gw = DemoGateway::start_with("60s", 3, &flags).await;
        settings.gateway = gw.url("");
        app::check_gateway(&settings.gateway)
            .await
            .unwrap_or_else(|e| panic!("the gateway of `{command}` does not suit the app: {e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(app::serve(listener, settings, async {
            let _ = stopped.await;
        }));
        Example {
            gw,
            addr,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Signs in as `name`; returns the session cookie.
    async fn login(&self, name: &str) -> String {
        let answer = self
            .http
            .post(self.url("/api/login"))
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let cookie = answer.headers()["set-cookie"].to_str().unwrap();
        cookie.split(';').next().unwrap().to_owned()
    }

    /// POSTs JSON with a session cookie (none when empty); the status and the JSON answer.
    async fn post_status(&self, cookie: &str, path: &str, body: Value) -> (u16, Value) {
        let answer = self
            .http
            .post(self.url(path))
            .header("cookie", cookie)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, cookie: &str, path: &str, body: Value) -> Value {
        let (status, answer) = self.post_status(cookie, path, body).await;
        assert_eq!(status, 200, "POST {path}: {answer}");
        answer
    }

    async fn status(&self) -> Value {
        reqwest::get(self.url("/api/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Reads `/api/status` until `pred` holds (the webhook comes on its own time), at most
    /// [`WAIT`].
    async fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status().await;
            if pred(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "expected {what} within {WAIT:?}; status: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The gateway flags of the command the app prints: `QRLINK_TOKEN_SECRET=x` is
/// `--token-secret x`.
fn gateway_flags(command: &str) -> Vec<String> {
    let vars = command
        .strip_suffix(" cargo run")
        .unwrap_or_else(|| panic!("expected the command to start the gateway: {command}"));
    // One `NAME=value` a line, each line but the last ending in ` \`.
    vars.split(" \\\n")
        .flat_map(|pair| {
            let (name, value) = pair.split_once('=').expect("NAME=value");
            let name = name.strip_prefix("QRLINK_").expect("a QRLINK_ variable");
            [
                format!("--{}", name.to_lowercase().replace('_', "-")),
                value.to_owned(),
            ]
        })
        .collect()
}

fn app_now() -> i64 {
    qrlink::http::auth::now_secs() as i64
}

fn trimmed_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The example pages set a strict CSP (`csp` in the example): qrlink.js must work under it.
async fn assert_no_csp_violations(page: &Page) {
    let violations = page
        .console_errors()
        .await
        .into_iter()
        .filter(|line| line.contains("Content Security Policy"))
        .collect::<Vec<_>>();
    assert!(violations.is_empty(), "CSP violations: {violations:#?}");
}

/// Goes into the gateway's modal (an iframe of another origin) and waits for its QR.
async fn enter_modal(page: &Page, ex: &Example) {
    let frame = format!("iframe[src^='{}']", ex.gw.url("/"));
    page.find(&frame)
        .await
        .enter_frame()
        .await
        .unwrap_or_else(|e| panic!("cannot enter the modal's frame: {e}"));
    page.wait_js(
        "the modal's QR",
        "return document.getElementById('app').dataset.state === 'qr'",
    )
    .await;
}

/// Back to the host page from the modal's frame.
async fn leave_modal(page: &Page) {
    page.client
        .enter_parent_frame()
        .await
        .unwrap_or_else(|e| panic!("cannot leave the modal's frame: {e}"));
}

/// In the gateway's modal: presses the demo's "Simulate scan", and comes back to the host page.
async fn scan_in_the_modal(page: &Page, ex: &Example) {
    enter_modal(page, ex).await;
    page.wait_js(
        "the Simulate scan button",
        "const b = document.getElementById('simulate-scan');\
         return !!b && !b.hidden && b.getClientRects().length > 0",
    )
    .await;
    page.screenshot_as("modal").await;
    page.click("#simulate-scan").await;
    leave_modal(page).await;
}

/// `npm ci && npm run build` in `examples/react`; false (with the reason printed) when npm is
/// missing and the test may skip.
async fn build_react_example() -> bool {
    let Some(npm) = required_tool("npm", "nodejs npm") else {
        return false;
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/react");
    for args in [&["ci", "--no-audit", "--no-fund"][..], &["run", "build"]] {
        // npm ci downloads from the registry: far longer than a page wait may take.
        let output = tokio::time::timeout(
            Duration::from_secs(300),
            tokio::process::Command::new(&npm)
                .args(args)
                .current_dir(dir)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("npm {args:?} took over 5 minutes"))
        .unwrap_or_else(|e| panic!("cannot run npm: {e}"));
        assert!(
            output.status.success(),
            "npm {args:?} in examples/react failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    true
}

static EXAMPLE_PAGE: PageKind = PageKind {
    ready: (
        "the page to load",
        "return document.readyState === 'complete'",
    ),
    describe: "return JSON.stringify(document.body.innerText.replace(/\\s+/g, ' ').slice(0, 400))\
               + ' url=' + location.href",
    window: (1024, 800),
};

async fn run(name: &'static str, test: impl AsyncFnOnce(&Page)) {
    browser::run(name, &EXAMPLE_PAGE, test).await;
}
