//! The link page (`web/`) in a real headless Chromium, driven over WebDriver (fantoccini and
//! Debian's `chromedriver`), against the gateway and its simulator on port 0.
//!
//! The harness is `tests/common/browser.rs`: each test starts its own chromedriver (its own port
//! and process group, killed when the test ends) and one browser with a fresh profile; at most
//! two browsers run at once, since a CI machine may have two cores. Each test saves
//! `target/screenshots/<test>.png`, also when it fails (then it shows where the page stopped);
//! some save more, named `<test>-<what>.png`.
//!
//! Without `chromium` or `chromedriver` the tests say why and pass, unless `CI` is set: CI
//! installs both (`.ci/run`), so there a missing browser is a failure.

use std::time::Duration;

use crate::common::browser::{self, Page, PageKind};
use crate::common::tcp_proxy::TcpProxy;
use crate::common::{DemoGateway, TWOFA, TestGateway, sim_config};
use fantoccini::key::Key;
use qrlink::simulator::{Endpoint, Fault};
use serde_json::{Value, json};

// ------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn picking_whatsapp_shows_a_qr_that_a_rotation_replaces_and_a_scan_shows_the_account() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(2), 5), &["--qr-ttl", "2s"]).await;
    run(
        "picking_whatsapp_shows_a_qr_that_a_rotation_replaces_and_a_scan_shows_the_account",
        async |page| {
            page.goto(&gw.url("/")).await;
            page.wait_state("idle").await;
            page.click("#picker button[data-provider='whatsapp']").await;
            page.wait_state("qr").await;
            let first = page.qr_path().await;
            assert_eq!(page.text("#rotation").await, "Code 1");
            assert_eq!(page.attr("#app", "data-provider").await, "whatsapp");
            page.screenshot_as("first-code").await;
            // Counts every moment the box holds no code: a rotation must never empty it.
            page.js::<Value>(
                "const qr = document.getElementById('qr'); window.__emptied = 0;\
                 new MutationObserver(() => { if (!qr.querySelector('svg')) window.__emptied++; })\
                 .observe(qr, { childList: true, subtree: true }); return null",
            )
            .await;

            page.wait_js(
                "the second code",
                "return document.getElementById('rotation').textContent === 'Code 2'",
            )
            .await;
            let second = page.qr_path().await;
            assert_ne!(first, second, "expected the rotation to draw a new code");
            let emptied: u32 = page.js("return window.__emptied").await;
            assert_eq!(emptied, 0, "the code box went empty during the rotation");
            let intents = gw.sim().intent_ids();
            assert_eq!(
                intents.len(),
                1,
                "a rotation stays in one intent: {intents:?}"
            );

            gw.sim()
                .scan(&intents[0])
                .expect("the simulator takes the scan");
            page.wait_state("account").await;
            let name = page.text("#account-name").await;
            assert!(
                name.starts_with("+33 6 "),
                "expected the simulated WhatsApp number, got {name:?}"
            );
            assert_eq!(page.text("#account-provider").await, "WhatsApp");
            assert_eq!(
                page.count("#qr svg").await,
                0,
                "no code stays after linking"
            );
            page.screenshot().await;
        },
    )
    .await;
}

#[tokio::test]
async fn with_no_scan_the_codes_run_out_and_retry_brings_a_new_code() {
    let gw = TestGateway::with(
        sim_config(Duration::from_millis(800), 2),
        &["--qr-ttl", "1s"],
    )
    .await;
    run(
        "with_no_scan_the_codes_run_out_and_retry_brings_a_new_code",
        async |page| {
            page.goto(&gw.url("/")).await;
            page.click("#picker button[data-provider='whatsapp']").await;
            page.wait_state("qr").await;
            let first = page.qr_path().await;

            page.wait_state("timeout").await;
            assert_eq!(page.count("#qr svg").await, 0, "a dead code must not stay");
            assert!(!page.visible("#link").await, "the QR view is hidden");
            assert!(page.visible("#retry").await, "Retry is offered");
            let message = page.text("#error-message").await;
            assert!(
                message.starts_with("Nobody scanned the code in time"),
                "got {message:?}"
            );
            page.screenshot().await;

            page.click("#retry").await;
            page.wait_state("qr").await;
            let again = page.qr_path().await;
            assert_ne!(first, again, "expected a new code after Retry");
            assert_eq!(page.text("#rotation").await, "Code 1");
            let intents = gw.sim().intent_ids();
            assert_eq!(intents.len(), 2, "Retry starts a new intent: {intents:?}");
            page.screenshot_as("after-retry").await;
        },
    )
    .await;
}

#[tokio::test]
async fn a_proxy_error_shows_its_sentence_and_retry() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(30), 2), &[]).await;
    gw.sim().push_fault(
        Endpoint::Intent,
        Fault::Error {
            error_type: "api/proxy_error".to_owned(),
            status: 502,
            detail: Some("The proxy at 203.0.113.7:3128 refused the connection.".to_owned()),
        },
    );
    run("a_proxy_error_shows_its_sentence_and_retry", async |page| {
        page.goto(&gw.url("/")).await;
        page.click("#picker button[data-provider='whatsapp']").await;
        page.wait_state("error").await;
        assert_eq!(
            page.text("#error-message").await,
            "The connection proxy is not working right now."
        );
        assert!(page.visible("#retry").await, "a proxy error is retryable");
        page.click("#error-details summary").await;
        let facts = page.text("#error-facts").await;
        assert!(
            facts.contains("api/proxy_error") && facts.contains("203.0.113.7:3128"),
            "the details name the code and the upstream detail: {facts:?}"
        );
        page.screenshot().await;

        // The fault was used up: the same button now gets a code.
        page.click("#retry").await;
        page.wait_state("qr").await;
        page.qr_path().await;
    })
    .await;
}

#[tokio::test]
async fn telegrams_password_form_answers_the_checkpoint_and_a_wrong_password_says_so() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(30), 2), &[]).await;
    run(
        "telegrams_password_form_answers_the_checkpoint_and_a_wrong_password_says_so",
        async |page| {
            page.goto(&gw.url("/")).await;
            page.click("#picker button[data-provider='telegram']").await;
            page.wait_state("qr").await;
            gw.sim().scan(&latest_intent(gw.sim())).expect("scan");

            page.wait_state("checkpoint").await;
            assert!(page.visible("#twofa-form").await);
            assert!(
                page.js::<bool>("return document.activeElement.id === 'twofa-code'")
                    .await,
                "the password field takes the focus"
            );
            // Empty: the page asks for the password instead of sending nothing.
            page.click("#twofa-submit").await;
            assert!(page.visible("#twofa-invalid").await);
            page.find("#twofa-code")
                .await
                .send_keys(TWOFA)
                .await
                .unwrap();
            page.screenshot_as("password").await;
            page.click("#twofa-submit").await;
            page.wait_state("account").await;
            assert_eq!(page.text("#account-name").await, "@demo_user");
            assert_eq!(page.text("#account-provider").await, "Telegram");
            page.screenshot_as("linked").await;

            page.click("#link-another").await;
            page.wait_state("idle").await;
            page.click("#picker button[data-provider='telegram']").await;
            page.wait_state("qr").await;
            gw.sim().scan(&latest_intent(gw.sim())).expect("scan");
            page.wait_state("checkpoint").await;
            page.find("#twofa-code")
                .await
                .send_keys("wrong horse")
                .await
                .unwrap();
            page.click("#twofa-submit").await;
            // A wrong password asks again in place: no new scan needed.
            page.wait_js(
                "the wrong-password message",
                "return !document.querySelector('#twofa-invalid').hidden \
                 && document.querySelector('#twofa-form').getAttribute('aria-busy') !== 'true'",
            )
            .await;
            assert_eq!(
                page.text("#twofa-invalid").await,
                "That password is not correct. Check it and try again."
            );
            assert_eq!(page.attr("#twofa-code", "aria-invalid").await, "true");
            page.screenshot_as("wrong-password").await;
            page.find("#twofa-code").await.clear().await.unwrap();
            page.find("#twofa-code")
                .await
                .send_keys(TWOFA)
                .await
                .unwrap();
            page.click("#twofa-submit").await;
            page.wait_state("account").await;
        },
    )
    .await;
}

#[tokio::test]
async fn demo_mode_shows_its_banner_and_simulate_scan_links_the_account() {
    let gw = DemoGateway::start("30s", 2).await;
    run(
        "demo_mode_shows_its_banner_and_simulate_scan_links_the_account",
        async |page| {
            page.goto(&gw.url("/")).await;
            page.wait_js(
                "the demo banner",
                "return !document.getElementById('demo-banner').hidden",
            )
            .await;
            page.click("#picker button[data-provider='whatsapp']").await;
            page.wait_state("qr").await;
            page.qr_path().await;
            assert!(page.visible("#simulate-scan").await);
            page.screenshot_as("qr").await;
            page.click("#simulate-scan").await;
            page.wait_state("account").await;
            let name = page.text("#account-name").await;
            assert!(name.starts_with("+33 6 "), "got {name:?}");
            let intents = gw.sim().intent_ids();
            assert_eq!(intents.len(), 1, "{intents:?}");
            page.screenshot().await;

            // Telegram in demo mode: the page tells the simulator's 2FA password.
            page.click("#link-another").await;
            page.click("#picker button[data-provider='telegram']").await;
            page.wait_state("qr").await;
            assert!(page.visible("#demo-twofa-hint").await);
            let hint = page.text("#demo-twofa-hint").await;
            assert!(hint.contains("“demo”"), "got {hint:?}");
            page.click("#simulate-scan").await;
            page.wait_state("checkpoint").await;
            assert!(page.visible("#twofa-demo").await);
            page.screenshot_as("telegram-password").await;
            page.find("#twofa-code")
                .await
                .send_keys("demo")
                .await
                .unwrap();
            page.click("#twofa-submit").await;
            page.wait_state("account").await;
            assert_eq!(page.text("#account-name").await, "@demo_user");
        },
    )
    .await;
}

#[tokio::test]
async fn arriving_with_a_provider_starts_at_once_and_a_dropped_connection_offers_retry() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(30), 2), &[]).await;
    let proxy = TcpProxy::start(gw.addr).await;
    run(
        "arriving_with_a_provider_starts_at_once_and_a_dropped_connection_offers_retry",
        async |page| {
            page.goto(&format!("http://{}/?provider=whatsapp", proxy.addr))
                .await;
            page.wait_state("qr").await;
            page.qr_path().await;
            assert!(!page.visible("#picker").await, "no picker on the way");

            proxy.cut();
            page.wait_state("disconnected").await;
            assert_eq!(page.count("#qr svg").await, 0, "never a frozen QR");
            assert!(!page.visible("#link").await);
            assert!(page.visible("#retry").await);
            assert_eq!(
                page.text("#error-message").await,
                "The connection was lost before linking finished."
            );
            page.screenshot().await;
            // The gateway saw the socket go and let the upstream poll go with it.
            gw.wait_for_no_sessions().await;

            page.click("#retry").await;
            page.wait_state("qr").await;
            page.qr_path().await;
            assert_eq!(gw.sim().intent_ids().len(), 2);
        },
    )
    .await;
}

#[tokio::test]
async fn a_gateway_shutting_down_says_so_and_offers_retry() {
    let mut gw = TestGateway::with(sim_config(Duration::from_secs(30), 2), &[]).await;
    let url = gw.url("/?provider=google_messages");
    run(
        "a_gateway_shutting_down_says_so_and_offers_retry",
        async |page| {
            page.goto(&url).await;
            page.wait_state("qr").await;
            page.qr_path().await;
            gw.shut_down();
            page.wait_state("error").await;
            assert_eq!(
                page.text("#error-message").await,
                "The link service is restarting."
            );
            assert_eq!(page.count("#qr svg").await, 0);
            assert!(page.visible("#retry").await);
            page.screenshot().await;
        },
    )
    .await;
}

#[tokio::test]
async fn the_page_loads_nothing_from_elsewhere_and_breaks_no_content_security_policy_rule() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(30), 2), &[]).await;
    run(
        "the_page_loads_nothing_from_elsewhere_and_breaks_no_content_security_policy_rule",
        async |page| {
            // Runs before the page's own script, outside its CSP (the browser injects it).
            page.cdp(
                "Page.addScriptToEvaluateOnNewDocument",
                json!({ "source": "window.__csp = []; document.addEventListener(\
                    'securitypolicyviolation', (e) => window.__csp.push(\
                    e.effectiveDirective + ' ' + e.blockedURI + ' ' + e.sourceFile + ':' + e.lineNumber));" }),
            )
            .await;
            page.goto(&gw.url("/")).await;
            page.click("#picker button[data-provider='whatsapp']").await;
            page.wait_state("qr").await;
            page.qr_path().await;
            // A countdown tick or two, and the cross-fade, have run by now.
            page.wait_js(
                "the code to be faded in",
                "const l = document.querySelector('#qr .qr-layer');\
                 return l !== null && getComputedStyle(l).opacity === '1'",
            )
            .await;

            let violations: Vec<String> = page.js("return window.__csp").await;
            assert!(violations.is_empty(), "CSP violations: {violations:?}");
            let (origin, resources): (String, Vec<String>) = page
                .js("return [location.origin, performance.getEntriesByType('resource')\
                     .map((e) => e.name)]")
                .await;
            assert!(
                resources.iter().any(|r| r.ends_with("/app.js")),
                "expected the page's own resources, got {resources:?}"
            );
            let foreign: Vec<_> = resources
                .iter()
                .filter(|r| !r.starts_with(&format!("{origin}/")))
                .collect();
            assert!(foreign.is_empty(), "requests to other origins: {foreign:?}");
            let errors = page.console_errors().await;
            assert!(errors.is_empty(), "console errors: {errors:?}");

            // The listener works and the policy is enforced: an inline style and an inline
            // script are refused.
            let ran: bool = page
                .js("document.body.setAttribute('style', 'outline: 4px solid red');\
                     const s = document.createElement('script');\
                     s.textContent = 'window.__inline = true';\
                     document.body.append(s);\
                     return window.__inline === true")
                .await;
            assert!(!ran, "an inline script ran despite the CSP");
            page.wait_js("two violations", "return window.__csp.length >= 2")
                .await;
            let violations: Vec<String> = page.js("return window.__csp").await;
            assert!(
                violations.iter().any(|v| v.starts_with("style-src-attr"))
                    && violations.iter().any(|v| v.starts_with("script-src-elem")),
                "{violations:?}"
            );
            page.js::<Value>("document.body.removeAttribute('style'); return null")
                .await;
            page.screenshot().await;
        },
    )
    .await;
}

#[tokio::test]
async fn the_qr_view_fits_a_phone_and_a_desktop_in_light_and_dark() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(60), 2), &[]).await;
    run(
        "the_qr_view_fits_a_phone_and_a_desktop_in_light_and_dark",
        async |page| {
            page.goto(&gw.url("/")).await;
            page.wait_state("idle").await;
            page.viewport(360, 760, true).await;
            page.screenshot_as("phone-picker").await;
            page.click("#picker button[data-provider='whatsapp']").await;
            page.wait_state("qr").await;
            page.qr_path().await;
            page.assert_fits(264.0).await;
            page.screenshot_as("phone").await;

            page.viewport(1200, 820, false).await;
            page.assert_fits(264.0).await;
            page.screenshot().await;
            page.screenshot_as("desktop").await;
            // The README's picture (docs/screenshot-qr.png is copied from it).
            page.viewport(960, 700, false).await;
            page.settle().await;
            page.screenshot_as("readme").await;

            page.cdp(
                "Emulation.setEmulatedMedia",
                json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
            )
            .await;
            page.wait_js(
                "the dark theme",
                "return matchMedia('(prefers-color-scheme: dark)').matches",
            )
            .await;
            let qr_background: String = page
                .js("return getComputedStyle(document.getElementById('qr')).backgroundColor")
                .await;
            assert_eq!(
                qr_background, "rgb(255, 255, 255)",
                "the code keeps its white card in the dark theme"
            );
            page.settle().await;
            page.screenshot_as("desktop-dark").await;
            page.viewport(360, 760, true).await;
            page.assert_fits(264.0).await;
            page.screenshot_as("phone-dark").await;
        },
    )
    .await;
}

#[tokio::test]
async fn the_page_works_from_the_keyboard_and_names_the_code_for_screen_readers() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(30), 2), &[]).await;
    run(
        "the_page_works_from_the_keyboard_and_names_the_code_for_screen_readers",
        async |page| {
            page.goto(&gw.url("/")).await;
            for expected in ["whatsapp", "google_messages", "telegram"] {
                page.press(Key::Tab).await;
                let focused: Option<String> = page
                    .js("return document.activeElement.dataset.provider || null")
                    .await;
                assert_eq!(
                    focused.as_deref(),
                    Some(expected),
                    "Tab order of the picker"
                );
            }
            page.press(Key::Enter).await;
            page.wait_state("qr").await;
            page.qr_path().await;
            assert_eq!(page.attr("#qr", "role").await, "img");
            let label = page.attr("#qr", "aria-label").await;
            assert!(
                label.starts_with("QR code 1 for Telegram, expires in"),
                "the code's text alternative: {label:?}"
            );
            assert_eq!(page.attr("#status", "aria-live").await, "polite");
            assert_eq!(
                page.text("#status").await,
                "Code ready. Scan it with Telegram on your phone."
            );

            gw.sim().scan(&latest_intent(gw.sim())).expect("scan");
            page.wait_state("checkpoint").await;
            // The field has the focus: type and press Enter, no mouse.
            for c in TWOFA.chars() {
                page.press_char(c).await;
            }
            page.press(Key::Enter).await;
            page.wait_state("account").await;
            assert!(
                page.js::<bool>("return document.activeElement.id === 'title'")
                    .await,
                "the focus moves to the new view's title"
            );
            assert_eq!(page.text("#title").await, "Telegram is linked");
            page.screenshot().await;
        },
    )
    .await;
}

#[tokio::test]
async fn the_page_hands_the_result_token_to_the_host_it_names_and_to_no_other() {
    const SECRET: &str = "link-page-result-token-secret";
    let gw = TestGateway::with(
        sim_config(Duration::from_secs(30), 2),
        &["--token-secret", SECRET],
    )
    .await;
    run(
        "the_page_hands_the_result_token_to_the_host_it_names_and_to_no_other",
        async |page| {
            // The host: a page that opens the link page in a popup and keeps what it is told.
            page.goto(&gw.url("/")).await;
            let host = page.client.window().await.unwrap();
            page.js::<()>(
                "window.__messages = [];\
                 addEventListener('message', (e) => window.__messages.push(e.data)); return null",
            )
            .await;
            let mut results = Vec::new();
            for named in [true, false] {
                let now = qrlink::http::auth::now_secs();
                let token = qrlink::http::auth::mint(
                    SECRET,
                    &qrlink::http::auth::Claims {
                        sub: "user-42".into(),
                        exp: now + 300,
                        iat: Some(now),
                        provider: None,
                        account_id: None,
                        proxy: None,
                    },
                );
                let origin = if named {
                    "&origin=' + location.origin + '"
                } else {
                    ""
                };
                page.js::<()>(&format!(
                    "window.open('/?provider=whatsapp&token={token}{origin}', 'link'); return null"
                ))
                .await;
                let popup = page
                    .client
                    .windows()
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|w| *w != host)
                    .expect("the popup");
                page.switch_to(popup).await;
                page.wait_state("qr").await;
                gw.sim().scan(&latest_intent(gw.sim())).unwrap();
                page.wait_state("account").await;
                page.client.close_window().await.unwrap();
                page.switch_to(host.clone()).await;
                let expected = results.len() + 1;
                page.wait_js(
                    "the host to be told",
                    &format!("return window.__messages.length === {expected}"),
                )
                .await;
                let message: Value = page
                    .js(&format!("return window.__messages[{}]", expected - 1))
                    .await;
                assert_eq!(message["type"], "account", "{message}");
                results.push(message);
            }
            let named = &results[0];
            let token = named["result"]
                .as_str()
                .expect("the named host gets the result");
            let claims = qrlink::notify::result::verify(SECRET, token).expect("it verifies");
            assert_eq!(claims.account_id, named["account"]["id"].as_str().unwrap());
            assert_eq!(claims.sub.as_deref(), Some("user-42"));
            assert_eq!(claims.session, named["session"].as_str().unwrap());
            let anyone = &results[1];
            assert!(
                anyone.get("result").is_none() && anyone.get("state").is_none(),
                "a message any opener may read carries no result token: {anyone}"
            );
        },
    )
    .await;
}

fn latest_intent(sim: &qrlink::simulator::Simulator) -> String {
    sim.intent_ids()
        .pop()
        .expect("expected the gateway to have started an intent")
}

// ------------------------------------------------------------------------------------------
// The browser

/// The link page: ready once `app.js` has set it up; a failure message gives its state.
static LINK_PAGE: PageKind = PageKind {
    ready: (
        "the page to be ready",
        "return document.getElementById('app').dataset.ready === 'true'",
    ),
    describe: "const t = (id) => (document.getElementById(id) || {}).textContent;\
               return 'state=' + document.getElementById('app').dataset.state +\
               ' status=' + JSON.stringify(t('status')) +\
               ' error=' + JSON.stringify(t('error-message')) + ' url=' + location.href",
    window: (420, 900),
};

/// Runs `test` with the link page's browser (see [`browser::run`]).
async fn run(name: &'static str, test: impl AsyncFnOnce(&Page)) {
    browser::run(name, &LINK_PAGE, test).await;
}

/// What the link page's tests ask of it beyond the harness's generic steps.
trait LinkPage {
    async fn wait_state(&self, state: &str);
    async fn qr_path(&self) -> String;
    async fn settle(&self);
    async fn assert_fits(&self, min: f64);
}

impl LinkPage for Page {
    async fn wait_state(&self, state: &str) {
        let script = format!("return document.getElementById('app').dataset.state === '{state}'");
        self.wait_js(&format!("state {state}"), &script).await;
    }

    /// The outline of the code on screen (not of one fading out), once there is one.
    async fn qr_path(&self) -> String {
        let d = self
            .attr("#qr .qr-layer:not(.is-leaving) svg path", "d")
            .await;
        assert!(d.len() > 100, "expected a QR outline, got d={d:?}");
        d
    }

    /// Waits for the QR cross-fade and the theme transitions to end, so a screenshot shows a
    /// still page. The countdown bar moves all the time and spinners never stop: not waited for.
    async fn settle(&self) {
        self.wait_js(
            "animations to end",
            "return document.getAnimations().every((a) => a.playState !== 'running' \
             || a.effect.getTiming().iterations === Infinity \
             || (a.effect.target && a.effect.target.closest('.meter')))",
        )
        .await;
    }

    /// No sideways scrolling, and the code at least `min` CSS pixels wide, whole and in view.
    async fn assert_fits(&self, min: f64) {
        self.settle().await;
        let (scroll, inner, qr): (f64, f64, Vec<f64>) = self
            .js(
                "const r = document.querySelector('#qr svg').getBoundingClientRect();\
                 return [document.documentElement.scrollWidth, innerWidth,\
                 [r.left, r.top, r.width, r.height]]",
            )
            .await;
        assert!(
            scroll <= inner,
            "the page scrolls sideways: {scroll} > {inner}"
        );
        let [left, _top, width, height] = qr[..] else {
            unreachable!()
        };
        assert!(
            width >= min && (width - height).abs() < 0.5,
            "expected a square code of at least {min} px, got {width}x{height}"
        );
        assert!(
            left >= 0.0 && left + width <= inner,
            "the code is cut off: {qr:?}"
        );
    }
}
