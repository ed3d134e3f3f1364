//! `/qrlink.js` on a third-party site: a host page on another origin (another loopback port,
//! under a strict CSP of its own) opens the gateway's link page in the modal, against a real
//! gateway in demo mode, in headless Chromium.
//!
//! The host page loads `setup.js` first, which wraps `window.addEventListener`,
//! `removeEventListener`, `setTimeout`/`setInterval` and `console.error`/`warn`, so a test can
//! see what qrlink.js leaves behind; `host.js` makes one `QrLink.create` from the page's query
//! (`token`, `provider`, `gateway`) and logs every callback to `window.__log`.

use std::time::Duration;

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, Locator};
use qrlink::simulator::{Endpoint, Fault};
use serde_json::Value;

use crate::common::DemoGateway;
use crate::common::WAIT;
use crate::common::browser::{self, Page, PageKind};
use crate::common::host_site::HostSite;
use crate::common::tcp_proxy::TcpProxy;

const SECRET: &str = "embed-test-token-secret";

// ------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn a_host_on_another_origin_links_an_account_and_gets_a_result_token_that_verifies() {
    let site = Site::start(true).await;
    let token = connect_token("user-42");
    run(
        "a_host_on_another_origin_links_an_account_and_gets_a_result_token_that_verifies",
        async |page| {
            // No `gateway`: the default is where qrlink.js came from.
            open_until_the_first_qr(page, &site, &format!("/?provider=whatsapp&token={token}"))
                .await;
            assert_eq!(page.count("[data-qrlink=frame]").await, 1);
            let url = page.attr("[data-qrlink=frame]", "src").await;
            assert!(
                !url.contains(&token) && !url.contains("token="),
                "the connect token must not be in the frame's URL: {url}"
            );
            // The scan, as a person in demo mode does it: the frame's own button.
            in_frame(page, async |frame| {
                wait_in(
                    frame,
                    "the code",
                    "return document.getElementById('app').dataset.state === 'qr'",
                )
                .await;
                frame
                    .find(Locator::Css("#simulate-scan"))
                    .await
                    .expect("the demo's Simulate scan button")
                    .click()
                    .await
                    .expect("Simulate scan takes a click");
            })
            .await;
            page.wait_log("onExit", "e.cb === 'exit'").await;
            let log = page.log().await;
            let names: Vec<String> = log.iter().map(entry_name).collect();
            let order: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|n| ["event:success", "success", "event:exit", "exit"].contains(n))
                .collect();
            assert_eq!(
                order,
                ["event:success", "success", "event:exit", "exit"],
                "onSuccess first, then the modal closes, then onExit once: {names:?}"
            );
            assert_eq!(
                names.first().map(String::as_str),
                Some("event:open"),
                "{names:?}"
            );
            let qr = log
                .iter()
                .find(|e| entry_name(e) == "event:qr")
                .expect("a qr event");
            let mut keys: Vec<&str> = qr["data"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort();
            assert_eq!(
                keys,
                ["expires_at", "rotation", "session"],
                "a qr event says nothing of the code itself: {qr}"
            );

            let success = log.iter().find(|e| e["cb"] == "success").unwrap();
            let account = &success["account"];
            let result = success["meta"]["result"]
                .as_str()
                .unwrap_or_else(|| panic!("expected a result token, got {success}"));
            let claims = qrlink::notify::result::verify(SECRET, result)
                .unwrap_or_else(|e| panic!("the result token does not verify: {e}"));
            assert_eq!(claims.sub.as_deref(), Some("user-42"));
            assert_eq!(Some(claims.account_id.as_str()), account["id"].as_str());
            assert_eq!(claims.provider, "whatsapp");
            assert_eq!(
                Some(claims.session.as_str()),
                success["meta"]["session"].as_str()
            );
            assert_eq!(success["meta"]["state"], "user-42");
            let exit = log.iter().find(|e| e["cb"] == "exit").unwrap();
            assert_eq!(exit["error"], Value::Null, "{exit}");
            assert_eq!(exit["meta"]["session"], success["meta"]["session"]);
            page.assert_nothing_left().await;
        },
    )
    .await;
}

#[tokio::test]
async fn telegrams_password_step_is_a_checkpoint_event_and_is_answered_inside_the_modal() {
    let site = Site::start(true).await;
    let token = connect_token("user-11");
    run(
        "telegrams_password_step_is_a_checkpoint_event_and_is_answered_inside_the_modal",
        async |page| {
            open_until_the_first_qr(page, &site, &format!("/?provider=telegram&token={token}"))
                .await;
            let intent = site.gw.sim().intent_ids().pop().expect("an intent");
            site.gw
                .sim()
                .scan(&intent)
                .expect("the simulator takes the scan");
            page.wait_log(
                "the checkpoint event",
                "e.cb === 'event' && e.name === 'checkpoint' && e.data.kind === '2FA'",
            )
            .await;
            in_frame(page, async |frame| {
                wait_in(
                    frame,
                    "the password form",
                    "return document.getElementById('app').dataset.state === 'checkpoint'",
                )
                .await;
                let password = site
                    .gw
                    .state
                    .demo_twofa_password
                    .clone()
                    .expect("a demo password");
                let input = frame.find(Locator::Css("#twofa-code")).await.unwrap();
                input.send_keys(&password).await.unwrap();
                frame
                    .find(Locator::Css("#twofa-submit"))
                    .await
                    .unwrap()
                    .click()
                    .await
                    .unwrap();
            })
            .await;
            page.wait_log("onExit", "e.cb === 'exit'").await;
            let mut names: Vec<String> = page.log().await.iter().map(entry_name).collect();
            // A slow machine may see the code rotate before the scan: one entry per kind.
            names.dedup();
            assert_eq!(
                names,
                [
                    "event:open",
                    "event:qr",
                    "event:checkpoint",
                    "event:success",
                    "success",
                    "event:exit",
                    "exit"
                ],
                "every step in order, onExit last"
            );
            page.assert_nothing_left().await;
        },
    )
    .await;
}

#[tokio::test]
async fn a_dropped_connection_is_resumed_inside_the_modal_and_reported_as_resumed() {
    let site = Site::start_with(true, true, &[]).await;
    let token = connect_token("user-12");
    run(
        "a_dropped_connection_is_resumed_inside_the_modal_and_reported_as_resumed",
        async |page| {
            open_until_the_first_qr(page, &site, &format!("/?provider=whatsapp&token={token}")).await;
            let cut = site.proxy.as_ref().unwrap().cut();
            assert!(cut >= 1, "expected the frame's socket to be cut, {cut} were open");
            page.wait_log(
                "the resumed event",
                "e.cb === 'event' && e.name === 'resumed' && e.data.phase === 'qr'",
            )
            .await;
            assert_eq!(page.exits().await, 0, "a resumed attempt keeps the modal open");
            let intents = site.gw.sim().intent_ids();
            assert_eq!(intents.len(), 1, "one intent across the cut: {intents:?}");
            site.gw.sim().scan(&intents[0]).expect("the simulator takes the scan");
            page.wait_log("onExit", "e.cb === 'exit'").await;
            let names: Vec<String> = page.log().await.iter().map(entry_name).collect();
            assert!(
                names.ends_with(&["event:success".into(), "success".into(), "event:exit".into(), "exit".into()]),
                "{names:?}"
            );
            let sessions: Vec<String> = page
                .js("return [...new Set(__log.filter((e) => e.cb === 'event' && e.data.session).map((e) => e.data.session))]")
                .await;
            assert_eq!(sessions.len(), 1, "one session throughout: {sessions:?}");
        },
    )
    .await;
}

#[tokio::test]
async fn esc_closes_the_modal_with_on_exit_null_once_and_the_session_ends_even_when_callbacks_throw()
 {
    let site = Site::start(true).await;
    let token = connect_token("user-7");
    run(
        "esc_closes_the_modal_with_on_exit_null_once_and_the_session_ends_even_when_callbacks_throw",
        async |page| {
            // `throw`: every callback of the host throws; the widget must not mind.
            open_until_the_first_qr(page, &site, &format!("/?provider=whatsapp&token={token}&throw=1")).await;
            site.wait_for_a_session().await;
            // open() while open does nothing.
            page.js::<Value>("__link.open(); return null").await;
            assert_eq!(page.count("[data-qrlink=overlay]").await, 1);
            assert_eq!(
                page.js::<usize>("return __log.filter((e) => e.name === 'open').length").await,
                1
            );
            page.press(Key::Escape).await;
            page.wait_log("onExit", "e.cb === 'exit'").await;
            let exit = page.exit().await;
            assert_eq!(exit["error"], Value::Null, "{exit}");
            assert!(
                exit["meta"]["session"].as_str().is_some_and(|s| s.starts_with("ses_")),
                "onExit names the session: {exit}"
            );
            // Cancelled, not detached: with resume on, a detached session would stay listed.
            site.wait_for_no_session().await;
            page.assert_nothing_left().await;
            // Once per open(): closing what is closed calls nothing.
            page.js::<Value>("__link.exit(); return null").await;
            page.press(Key::Escape).await;
            assert_eq!(page.exits().await, 1, "onExit fires exactly once");
        },
    )
    .await;
}

#[tokio::test]
async fn an_upstream_proxy_error_stays_on_screen_and_on_exit_gets_it_when_closed() {
    let site = Site::start(true).await;
    site.gw.sim().push_fault(
        Endpoint::Intent,
        Fault::Error {
            error_type: "api/proxy_error".to_owned(),
            status: 502,
            detail: Some("the proxy refused".to_owned()),
        },
    );
    let token = connect_token("user-9");
    run(
        "an_upstream_proxy_error_stays_on_screen_and_on_exit_gets_it_when_closed",
        async |page| {
            page.goto(&site.host(&format!("/?provider=whatsapp&token={token}")))
                .await;
            page.click("#open").await;
            page.wait_log("the error event", "e.cb === 'event' && e.name === 'error'")
                .await;
            assert_eq!(page.exits().await, 0, "an error keeps the modal open");
            in_frame(page, async |frame| {
                wait_in(
                    frame,
                    "the page's error view",
                    "return document.getElementById('app').dataset.state === 'error'",
                )
                .await;
            })
            .await;
            page.screenshot_as("error-view").await;
            page.click("[data-qrlink=close]").await;
            page.wait_log("onExit", "e.cb === 'exit'").await;
            let exit = page.exit().await;
            assert_eq!(exit["error"]["code"], "api/proxy_error", "{exit}");
            assert_eq!(exit["error"]["retryable"], true, "{exit}");
            assert_eq!(exit["error"]["detail"], "the proxy refused", "{exit}");
            assert_eq!(page.exits().await, 1);
            page.assert_nothing_left().await;
            site.wait_for_no_session().await;
        },
    )
    .await;
}

#[tokio::test]
async fn destroy_twice_leaves_no_element_listener_timer_or_session() {
    let site = Site::start(true).await;
    let token = connect_token("user-3");
    run(
        "destroy_twice_leaves_no_element_listener_timer_or_session",
        async |page| {
            open_until_the_first_qr(page, &site, &format!("/?provider=whatsapp&token={token}"))
                .await;
            site.wait_for_a_session().await;
            let during: Vec<String> = page.js("return __probe.listeners()").await;
            assert!(!during.is_empty(), "the open modal listens on window");
            page.js::<Value>("__link.destroy(); __link.destroy(); return null")
                .await;
            page.assert_nothing_left().await;
            assert_eq!(
                page.exits().await,
                1,
                "destroying the open modal closes it once"
            );
            // The frame's socket went with it, and the attempt was cancelled, not detached.
            site.wait_for_no_session().await;
            page.js::<Value>("__link.open(); return null").await;
            let warnings: Vec<String> = page.js("return __probe.warnings").await;
            assert!(
                warnings
                    .iter()
                    .any(|w| w.contains("open() after destroy()")),
                "expected a warning, got {warnings:?}"
            );
            page.assert_nothing_left().await;
            assert_eq!(page.exits().await, 1);
        },
    )
    .await;
}

#[tokio::test]
async fn a_host_origin_the_gateway_does_not_allow_gets_embed_forbidden_and_one_console_line() {
    let site = Site::start(false).await;
    // The gateway's own answer: its pages may be framed by itself only.
    let csp = reqwest::get(site.gw.url("/"))
        .await
        .unwrap()
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.ends_with("frame-ancestors 'self'"), "{csp}");
    run(
        "a_host_origin_the_gateway_does_not_allow_gets_embed_forbidden_and_one_console_line",
        async |page| {
            page.goto(&site.host("/?provider=whatsapp")).await;
            let (_, line) = exits_before_any_frame(page, "embed/forbidden").await;
            assert!(
                line.contains(&site.host.origin()) && line.contains("QRLINK_ALLOWED_ORIGINS"),
                "the line names this origin and the setting: {line}"
            );
        },
    )
    .await;
    assert!(site.sessions().await.is_empty(), "no attempt was started");
}

#[tokio::test]
async fn qrlink_frame_ancestors_alone_lets_a_site_embed_the_page_verbatim() {
    // Not an allowed origin (its pages could not open link sockets themselves), but the
    // operator's source list lets any loopback port frame the page, whose socket is the
    // gateway's own.
    let site = Site::start_with(
        false,
        false,
        &["--frame-ancestors", "'self' http://127.0.0.1:*"],
    )
    .await;
    let token = connect_token("user-13");
    run(
        "qrlink_frame_ancestors_alone_lets_a_site_embed_the_page_verbatim",
        async |page| {
            open_until_the_first_qr(page, &site, &format!("/?provider=whatsapp&token={token}"))
                .await;
            page.js::<Value>("__link.exit(); return null").await;
            page.wait_log("onExit(null)", "e.cb === 'exit' && e.error === null")
                .await;
            site.wait_for_no_session().await;
        },
    )
    .await;
}

/// Clicks Open on a host page whose modal ends before any frame: `onExit` once with `code`,
/// nothing left behind, focus back on the button, and one console line, returned with the
/// `onExit` entry.
async fn exits_before_any_frame(page: &Page, code: &str) -> (Value, String) {
    page.click("#open").await;
    page.wait_log("onExit", "e.cb === 'exit'").await;
    let exit = page.exit().await;
    assert_eq!(exit["error"]["code"], code, "{exit}");
    page.assert_nothing_left().await;
    let mut errors: Vec<String> = page.js("return __probe.errors").await;
    assert_eq!(errors.len(), 1, "one console line: {errors:?}");
    assert_eq!(page.exits().await, 1);
    assert_eq!(
        page.js::<String>("return document.activeElement.id").await,
        "open"
    );
    (exit, errors.remove(0))
}

#[tokio::test]
async fn a_gateway_nobody_answers_at_gets_embed_unreachable_and_one_console_line() {
    let site = Site::start(true).await;
    // A loopback port nothing listens on any more: connections to it are refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    run(
        "a_gateway_nobody_answers_at_gets_embed_unreachable_and_one_console_line",
        async |page| {
            page.goto(&site.host(&format!("/?provider=whatsapp&gateway=http://{closed}")))
                .await;
            let (exit, line) = exits_before_any_frame(page, "embed/unreachable").await;
            assert_eq!(exit["error"]["retryable"], true, "{exit}");
            assert!(
                line.contains("cannot reach") && line.contains(&closed.to_string()),
                "the line names the address it could not reach: {line}"
            );
        },
    )
    .await;
    assert!(site.sessions().await.is_empty(), "no attempt was started");
}

#[tokio::test]
async fn a_frame_that_never_says_ready_ends_in_embed_unavailable() {
    let site = Site::start(true).await;
    run(
        "a_frame_that_never_says_ready_ends_in_embed_unavailable",
        async |page| {
            // A "gateway" that answers embed.json but whose page is not the link page.
            let gateway = site.host.origin();
            page.goto(&site.host(&format!("/?provider=whatsapp&gateway={gateway}")))
                .await;
            page.click("#open").await;
            // qrlink.js gives the frame 15 s; a bounded wait a little longer than that.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while page.exits().await == 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "expected onExit after the ready timeout; the page is {}",
                    page.describe().await
                );
                tokio::time::sleep(browser::POLL * 5).await;
            }
            let exit = page.exit().await;
            assert_eq!(exit["error"]["code"], "embed/unavailable", "{exit}");
            page.assert_nothing_left().await;
            let errors: Vec<String> = page.js("return __probe.errors").await;
            assert_eq!(errors.len(), 1, "one console line: {errors:?}");
            assert!(errors[0].contains("did not answer"), "{errors:?}");
        },
    )
    .await;
}

#[tokio::test]
async fn keyboard_only_focus_starts_and_stays_inside_and_esc_returns_it_to_the_button() {
    let site = Site::start(true).await;
    let token = connect_token("user-5");
    run(
        "keyboard_only_focus_starts_and_stays_inside_and_esc_returns_it_to_the_button",
        async |page| {
            page.goto(&site.host(&format!("/?provider=whatsapp&token={token}")))
                .await;
            // From the top of the page to the button, by keyboard alone.
            let mut hops = 0;
            while page.js::<String>("return document.activeElement.id").await != "open" {
                page.press(Key::Tab).await;
                hops += 1;
                assert!(hops < 10, "Tab never reached the button");
            }
            page.press(Key::Enter).await;
            page.wait_js(
                "focus on the modal's Close button",
                "return !!document.activeElement && document.activeElement.dataset.qrlink === 'close'",
            )
            .await;
            let dialog: Value = page
                .js("const d = document.querySelector('[role=dialog]');\
                     return [d.getAttribute('aria-modal'), d.getAttribute('aria-label')]")
                .await;
            assert_eq!(dialog, serde_json::json!(["true", "Link an account"]));
            assert!(
                page.js::<bool>("return document.querySelector('header').inert && document.querySelector('main').inert")
                    .await,
                "the page behind is inert while the modal is open"
            );
            page.wait_log("the first qr event", "e.cb === 'event' && e.name === 'qr'")
                .await;
            let mut seen = std::collections::BTreeSet::new();
            for step in 0..16 {
                if step < 10 {
                    page.press(Key::Tab).await;
                } else {
                    page.shift_tab().await;
                }
                let at: String = page
                    .js(
                        "const a = document.activeElement;\
                         const o = document.querySelector('[data-qrlink=overlay]');\
                         return o && o.contains(a) ? (a.dataset.qrlink || a.tagName) : 'OUTSIDE ' + a.outerHTML.slice(0, 80)",
                    )
                    .await;
                assert!(!at.starts_with("OUTSIDE"), "Tab {step} left the modal: {at}");
                seen.insert(at);
            }
            assert!(
                seen.contains("close") && seen.contains("frame"),
                "Tab went round the Close button and the frame: {seen:?}"
            );
            page.press(Key::Escape).await;
            page.wait_log("onExit", "e.cb === 'exit'").await;
            page.wait_js(
                "focus back on the button",
                "return document.activeElement.id === 'open'",
            )
            .await;
            assert_eq!(page.exits().await, 1);
            page.assert_nothing_left().await;
            site.wait_for_no_session().await;
        },
    )
    .await;
}

#[tokio::test]
async fn the_es_module_form_works_from_another_origin() {
    let site = Site::start(true).await;
    let token = connect_token("user-8");
    for file in ["qrlink.mjs", "qrlink.js"] {
        let js = reqwest::get(format!("{}/{file}", site.gateway()))
            .await
            .unwrap();
        assert_eq!(js.status(), 200, "{file}");
        assert_eq!(
            js.headers()["content-type"],
            "text/javascript; charset=utf-8",
            "{file}"
        );
        assert_eq!(js.headers()["access-control-allow-origin"], "*", "{file}");
    }
    run(
        "the_es_module_form_works_from_another_origin",
        async |page| {
            // No `gateway`: the module's own URL gives it.
            page.goto(&site.host(&format!("/module.html?provider=whatsapp&token={token}")))
                .await;
            let module: Value = page.js("return window.__module").await;
            assert_eq!(
                module,
                serde_json::json!({ "same": true, "global": "undefined" }),
                "one object for both exports, and the module leaves window alone"
            );
            page.click("#open").await;
            page.wait_log("the first qr event", "e.cb === 'event' && e.name === 'qr'")
                .await;
            page.js::<Value>("__link.exit(); return null").await;
            page.wait_log("onExit(null)", "e.cb === 'exit' && e.error === null")
                .await;
            page.assert_nothing_left().await;
            site.wait_for_no_session().await;
        },
    )
    .await;
}

#[tokio::test]
async fn the_modal_on_a_desktop_and_a_phone_and_the_page_fits_360_to_480_px() {
    let site = Site::start(true).await;
    let token = connect_token("user-1");
    run(
        "the_modal_on_a_desktop_and_a_phone_and_the_page_fits_360_to_480_px",
        async |page| {
            open_until_the_first_qr(page, &site, &format!("/?provider=whatsapp&token={token}")).await;
            for (file, width, height, mobile) in [
                ("embed-desktop", 1280, 800, false),
                ("embed-phone", 390, 844, true),
            ] {
                page.viewport(width, height, mobile).await;
                in_frame(page, async |frame| {
                    wait_in(frame, "the code, drawn and still", SETTLED).await;
                })
                .await;
                page.screenshot_as(file).await;
                docs_screenshot(page, file).await;
            }
            // The frame at both ends of the range it is made for: the modal is 480 px at
            // most, and 32 px narrower than a phone's screen.
            for frame_width in [360u32, 480] {
                page.viewport(frame_width + 32, 800, true).await;
                in_frame(page, async |frame| {
                    let script = format!("return document.documentElement.clientWidth === {frame_width}");
                    wait_in(frame, &format!("a frame {frame_width} px wide"), &script).await;
                    wait_in(frame, "the code, drawn and still", SETTLED).await;
                    let fits: Value = frame
                        .execute(
                            "const d = document.documentElement;\
                             const r = document.querySelector('#qr svg').getBoundingClientRect();\
                             const hidden = ['#picker', '#choose-another', '#link-another']\
                               .filter((s) => { const e = document.querySelector(s); return e && e.getClientRects().length > 0; });\
                             return { scroll: d.scrollWidth <= d.clientWidth, qr: r.left >= 0 && r.right <= d.clientWidth && r.width >= 200,\
                               banner: !document.getElementById('demo-banner').hidden, shown: hidden }",
                            vec![],
                        )
                        .await
                        .unwrap();
                    assert_eq!(
                        fits,
                        serde_json::json!({ "scroll": true, "qr": true, "banner": true, "shown": [] }),
                        "at {frame_width} px: no sideways scroll, the whole code, the demo banner, no picker"
                    );
                })
                .await;
            }
        },
    )
    .await;
}

/// In the frame: a code is on screen and nothing but the countdown and spinners moves.
const SETTLED: &str = "return document.getElementById('app').dataset.state === 'qr' \
    && document.querySelector('#qr svg') !== null \
    && document.getAnimations().every((a) => a.playState !== 'running' \
       || a.effect.getTiming().iterations === Infinity \
       || (a.effect.target && a.effect.target.closest('.meter')))";

/// With QRLINK_DOCS_SCREENSHOTS set, saves the screenshot as docs/<name>.png (the README's).
async fn docs_screenshot(page: &Page, name: &str) {
    if std::env::var_os("QRLINK_DOCS_SCREENSHOTS").is_none() {
        return;
    }
    let png = page.client.screenshot().await.expect("a screenshot");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    eprintln!("saved {}", path.display());
}

// ------------------------------------------------------------------------------------------
// The host site

/// A demo gateway (connect tokens on, resume on: a closed socket that did not cancel stays
/// listed as detached) and the host site, on two loopback ports.
struct Site {
    gw: DemoGateway,
    host: HostSite,
    /// When the browser reaches the gateway through a proxy that can cut its connections.
    proxy: Option<TcpProxy>,
}

impl Site {
    /// `allowed`: whether the gateway lets the host's origin embed its page.
    async fn start(allowed: bool) -> Site {
        Self::start_with(allowed, false, &[]).await
    }

    /// `proxied`: the browser (the host page, qrlink.js and the frame) reaches the gateway
    /// only through a [`TcpProxy`]. `extra`: more gateway flags.
    async fn start_with(allowed: bool, proxied: bool, extra: &[&str]) -> Site {
        let mut host = HostSite::bind().await;
        let origin = host.origin();
        let mut args = vec!["--token-secret", SECRET, "--resume-grace", "120s"];
        if allowed {
            args.extend(["--allowed-origins", &origin]);
        }
        args.extend_from_slice(extra);
        let gw = DemoGateway::start_with("30s", 5, &args).await;
        let proxy = match proxied {
            true => Some(TcpProxy::start(gw.addr).await),
            false => None,
        };
        let gateway = format!("http://{}", proxy.as_ref().map_or(gw.addr, |p| p.addr));
        let page = |module: bool| {
            let scripts = if module {
                "<script src=\"/host.js\" defer></script>\n  <script type=\"module\" src=\"/module.js\"></script>".to_owned()
            } else {
                format!(
                    "<script src=\"/host.js\" defer></script>\n  <script src=\"{gateway}/qrlink.js\" defer></script>\n  <script src=\"/classic.js\" defer></script>"
                )
            };
            HOST_HTML.replace("{scripts}", &scripts)
        };
        host.serve(
            vec![
                ("/", "text/html; charset=utf-8", page(false)),
                ("/module.html", "text/html; charset=utf-8", page(true)),
                ("/setup.js", "text/javascript", SETUP_JS.to_owned()),
                ("/host.js", "text/javascript", HOST_JS.to_owned()),
                ("/classic.js", "text/javascript", "host(window.QrLink);\n".to_owned()),
                (
                    "/module.js",
                    "text/javascript",
                    format!(
                        "import QrLink from '{gateway}/qrlink.mjs';\n\
                         import {{ QrLink as Named }} from '{gateway}/qrlink.mjs';\n\
                         window.__module = {{ same: QrLink === Named, global: typeof window.QrLink }};\n\
                         host(QrLink);\n"
                    ),
                ),
                ("/host.css", "text/css", HOST_CSS.to_owned()),
                // For the test whose `gateway` is this site: it allows embedding but its page
                // never says `ready`.
                ("/embed.json", "application/json", r#"{"allowed":true}"#.to_owned()),
            ],
            // As strict as an app's: the widget may use only what this allows.
            &format!(
                "default-src 'self'; script-src 'self' {gateway}; connect-src 'self' {gateway}; \
                 frame-src {gateway}; style-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'"
            ),
        );
        Site { gw, host, proxy }
    }

    fn host(&self, path_and_query: &str) -> String {
        self.host.url(path_and_query)
    }

    /// The gateway's origin as the browser sees it.
    fn gateway(&self) -> String {
        format!(
            "http://{}",
            self.proxy.as_ref().map_or(self.gw.addr, |p| p.addr)
        )
    }

    /// The open sessions, as `/api/sessions` lists them (attached or detached).
    async fn sessions(&self) -> Vec<Value> {
        let body: Value = reqwest::get(self.gw.url("/api/sessions"))
            .await
            .expect("/api/sessions answers")
            .json()
            .await
            .expect("/api/sessions is JSON");
        body["sessions"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `/api/sessions` lists at least one session (the modal's attempt started).
    async fn wait_for_a_session(&self) {
        self.wait_sessions("a session in /api/sessions", |n| n > 0)
            .await;
    }

    /// Waits until `/api/sessions` lists none: the attempt ended, it is not left detached.
    async fn wait_for_no_session(&self) {
        self.wait_sessions("no session left in /api/sessions", |n| n == 0)
            .await;
    }

    async fn wait_sessions(&self, what: &str, ok: impl Fn(usize) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let sessions = self.sessions().await;
            if ok(sessions.len()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {what}, got {sessions:?}"
            );
            tokio::time::sleep(browser::POLL).await;
        }
    }
}

fn connect_token(sub: &str) -> String {
    let now = qrlink::http::auth::now_secs();
    qrlink::http::auth::mint(
        SECRET,
        &qrlink::http::auth::Claims {
            sub: sub.into(),
            exp: now + 300,
            iat: Some(now),
            provider: None,
            account_id: None,
            proxy: None,
        },
    )
}

const HOST_HTML: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Acme CRM: connected accounts</title>
  <link rel="stylesheet" href="/host.css">
  <script src="/setup.js"></script>
  {scripts}
</head>
<body>
  <header class="top"><strong>Acme CRM</strong><nav><a href="#inbox">Inbox</a> <a href="#contacts">Contacts</a> <a href="#settings">Settings</a></nav></header>
  <main>
    <h1>Connected accounts</h1>
    <p>Link a messaging account to send and receive messages from Acme CRM.</p>
    <button id="open" type="button">Link WhatsApp</button>
    <p><a id="after" href="#help">How linking works</a></p>
  </main>
  <!-- Inert before the modal opens: it must stay so after it closes. -->
  <div id="already-inert" inert hidden>Nothing to see</div>
</body>
</html>
"##;

/// Runs before qrlink.js: counts what it adds to `window` and what it logs.
const SETUP_JS: &str = r#"(function () {
  'use strict';
  const listeners = [];
  const capture = (o) => (typeof o === 'boolean' ? o : !!(o && o.capture));
  const find = (type, fn, c) => listeners.findIndex((l) => l.type === type && l.fn === fn && l.capture === c);
  const add = window.addEventListener;
  const remove = window.removeEventListener;
  window.addEventListener = function (type, fn, opts) {
    if (find(type, fn, capture(opts)) < 0) listeners.push({ type: type, fn: fn, capture: capture(opts) });
    return add.call(this, type, fn, opts);
  };
  window.removeEventListener = function (type, fn, opts) {
    const i = find(type, fn, capture(opts));
    if (i >= 0) listeners.splice(i, 1);
    return remove.call(this, type, fn, opts);
  };
  const timers = new Set();
  const setT = window.setTimeout, clearT = window.clearTimeout;
  const setI = window.setInterval, clearI = window.clearInterval;
  window.setTimeout = function (fn, ms) {
    const rest = Array.prototype.slice.call(arguments, 2);
    const id = setT.call(window, function () { timers.delete(id); return fn.apply(this, rest); }, ms);
    timers.add(id);
    return id;
  };
  window.clearTimeout = function (id) { timers.delete(id); return clearT.call(window, id); };
  window.setInterval = function () { const id = setI.apply(window, arguments); timers.add(id); return id; };
  window.clearInterval = function (id) { timers.delete(id); return clearI.call(window, id); };
  const errors = [], warnings = [];
  const err = console.error, warn = console.warn;
  console.error = function () { errors.push(Array.from(arguments).map(String).join(' ')); return err.apply(console, arguments); };
  console.warn = function () { warnings.push(Array.from(arguments).map(String).join(' ')); return warn.apply(console, arguments); };
  window.__probe = {
    listeners: () => listeners.map((l) => l.type + (l.capture ? ' (capture)' : '')),
    timers: () => timers.size,
    errors: errors,
    warnings: warnings,
  };
})();
"#;

/// The app's code: one QrLink from the query, every callback logged in `window.__log`.
const HOST_JS: &str = r#"function host(QrLink) {
  'use strict';
  const q = new URLSearchParams(location.search);
  const log = (window.__log = []);
  const plain = (v) => JSON.parse(JSON.stringify(v === undefined ? null : v));
  const options = {
    onSuccess(account, meta) {
      log.push({ cb: 'success', account: plain(account), meta: plain(meta) });
      if (q.has('throw')) throw new Error('the host callback throws');
    },
    onExit(error, meta) {
      log.push({ cb: 'exit', error: plain(error), meta: plain(meta) });
      if (q.has('throw')) throw new Error('the host callback throws');
    },
    onEvent(name, data) {
      log.push({ cb: 'event', name: name, data: plain(data) });
      if (q.has('throw')) throw new Error('the host callback throws');
    },
  };
  for (const k of ['gateway', 'token', 'provider']) if (q.get(k)) options[k] = q.get(k);
  const link = (window.__link = QrLink.create(options));
  document.getElementById('open').addEventListener('click', () => link.open());
  document.body.dataset.ready = 'true';
}
"#;

const HOST_CSS: &str = "
body { margin: 0; font: 16px/1.5 system-ui, sans-serif; color: #222; background: #f6f7f9; }
.top { display: flex; justify-content: space-between; align-items: center; padding: 14px 24px;
  background: #23395d; color: #fff; flex-wrap: wrap; gap: 8px; }
.top a { color: #dfe7f5; margin-left: 16px; }
main { max-width: 720px; margin: 40px auto; padding: 0 24px; }
h1 { font-size: 1.6rem; }
button { font: inherit; padding: 10px 18px; border-radius: 8px; border: 0; background: #23395d;
  color: #fff; cursor: pointer; }
";

// ------------------------------------------------------------------------------------------
// The browser

static HOST_PAGE: PageKind = PageKind {
    ready: (
        "the host page to be ready",
        "return !!document.body && document.body.dataset.ready === 'true'",
    ),
    describe: "return 'log=' + JSON.stringify((window.__log || []).map((e) => e.cb === 'event' ? \
               'event:' + e.name : e.cb + (e.error ? ':' + e.error.code : ''))) + \
               ' qrlink=' + document.querySelectorAll('[data-qrlink]').length + \
               ' active=' + (document.activeElement && document.activeElement.outerHTML.slice(0, 60)) + \
               ' url=' + location.href",
    window: (1280, 800),
};

async fn run(name: &'static str, test: impl AsyncFnOnce(&Page)) {
    browser::run(name, &HOST_PAGE, test).await;
}

/// `event:qr`, `success`, `exit`… for a log entry.
fn entry_name(e: &Value) -> String {
    match e["cb"].as_str() {
        Some("event") => format!("event:{}", e["name"].as_str().unwrap_or("?")),
        Some(cb) => cb.to_owned(),
        None => "?".to_owned(),
    }
}

/// Runs `f` with the commands going to the modal's frame, then comes back to the host page.
async fn in_frame(page: &Page, f: impl AsyncFnOnce(&Client)) {
    page.find("[data-qrlink=frame]")
        .await
        .enter_frame()
        .await
        .expect("the frame can be entered");
    f(&page.client).await;
    // To the top-level page, not "the parent frame": the frame may already be gone (a click
    // in it can end the attempt, and the modal with it).
    page.client
        .enter_frame(None)
        .await
        .expect("back to the host page");
}

/// Waits, inside the frame, for `script` (a function body) to return true.
async fn wait_in(client: &Client, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if client.execute(script, vec![]).await.ok() == Some(Value::Bool(true)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {what} in the frame"
        );
        tokio::time::sleep(browser::POLL).await;
    }
}

/// The host page at `query` (`/?provider=…&token=…`), its button clicked, until the modal's
/// first `qr` event.
async fn open_until_the_first_qr(page: &Page, site: &Site, query: &str) {
    page.goto(&site.host(query)).await;
    page.click("#open").await;
    page.wait_log("the first qr event", "e.cb === 'event' && e.name === 'qr'")
        .await;
}

trait HostPage {
    async fn log(&self) -> Vec<Value>;
    async fn wait_log(&self, what: &str, predicate: &str);
    async fn exits(&self) -> usize;
    async fn exit(&self) -> Value;
    async fn assert_nothing_left(&self);
    async fn shift_tab(&self);
}

impl HostPage for Page {
    async fn log(&self) -> Vec<Value> {
        self.js("return window.__log").await
    }

    /// Waits for a log entry `e` for which `predicate` (an expression) holds.
    async fn wait_log(&self, what: &str, predicate: &str) {
        self.wait_js(
            what,
            &format!("return (window.__log || []).some((e) => {predicate})"),
        )
        .await;
    }

    async fn exits(&self) -> usize {
        self.js("return window.__log.filter((e) => e.cb === 'exit').length")
            .await
    }

    /// The first `onExit` entry of the log (there must be one).
    async fn exit(&self) -> Value {
        self.log()
            .await
            .into_iter()
            .find(|e| e["cb"] == "exit")
            .expect("an onExit entry")
    }

    /// No element, window listener or timer of qrlink.js is left, and the page behind is
    /// back as it was (nothing inert, scrolling not locked).
    async fn assert_nothing_left(&self) {
        let left: Value = self
            .js(
                "return { elements: document.querySelectorAll('[data-qrlink], iframe').length,\
                 listeners: __probe.listeners(), timers: __probe.timers(),\
                 inert: Array.from(document.querySelectorAll('[inert]'), (e) => e.id),\
                 overflow: document.documentElement.style.overflow }",
            )
            .await;
        assert_eq!(
            left,
            serde_json::json!({ "elements": 0, "listeners": [], "timers": 0, "inert": ["already-inert"], "overflow": "" }),
            "expected nothing of the modal left"
        );
    }

    async fn shift_tab(&self) {
        let shift: char = Key::Shift.into();
        let tab: char = Key::Tab.into();
        let keys = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: shift })
            .then(KeyAction::Down { value: tab })
            .then(KeyAction::Up { value: tab })
            .then(KeyAction::Up { value: shift });
        self.client
            .perform_actions(keys)
            .await
            .unwrap_or_else(|e| panic!("cannot press Shift+Tab: {e}"));
    }
}
