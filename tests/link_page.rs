//! The link page (`web/`) in a real headless Chromium, driven over WebDriver (fantoccini and
//! Debian's `chromedriver`), against the gateway and its simulator on port 0.
//!
//! Each test starts its own chromedriver (its own port and process group, killed when the test
//! ends) and one browser with a fresh profile; at most two browsers run at once, since a CI
//! machine may have two cores. Each test saves `target/screenshots/<test>.png`, also when it
//! fails (then it shows where the page stopped); some save more, named `<test>-<what>.png`.
//!
//! Without `chromium` or `chromedriver` the tests say why and pass, unless `CI` is set: CI
//! installs both (`.ci/run`), so there a missing browser is a failure.

mod common;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DemoGateway, TWOFA, TestGateway, WAIT, sim_config};
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use qrlink::simulator::{Endpoint, Fault};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

/// Debian's Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";

/// Browsers running at once. Each is several processes; more than two on a two-core machine
/// makes timings, not the page, decide the outcome.
static BROWSERS: Semaphore = Semaphore::const_new(2);

/// How often a condition in the page is checked while waiting for it.
const POLL: Duration = Duration::from_millis(40);

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
            page.wait_state("error").await;
            assert_eq!(
                page.text("#error-message").await,
                "That password or code is not correct."
            );
            assert_eq!(page.text("#retry").await, "Start again");
            page.screenshot().await;
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
    let proxy = CuttableProxy::start(gw.addr).await;
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

fn latest_intent(sim: &qrlink::simulator::Simulator) -> String {
    sim.intent_ids()
        .pop()
        .expect("expected the gateway to have started an intent")
}

// ------------------------------------------------------------------------------------------
// The browser

/// Opens a browser, runs `test` with it, and always saves the test's screenshot (showing the
/// failure when there was one) and closes the browser, before passing a failure on.
async fn run(name: &'static str, test: impl AsyncFnOnce(&Page)) {
    let Some(page) = Page::open(name).await else {
        return;
    };
    let started = Instant::now();
    let outcome = AssertUnwindSafe(test(&page)).catch_unwind().await;
    eprintln!("{name}: {:.1?} in the browser", started.elapsed());
    if outcome.is_err() {
        eprintln!("{name}: the page was {}", page.describe().await);
        for line in page.console_errors().await {
            eprintln!("{name}: console: {line}");
        }
        page.save_screenshot(&format!("{name}.png")).await;
    } else if !page.saved.load(Ordering::Relaxed) {
        page.screenshot().await;
    }
    page.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One browser session on its own chromedriver.
struct Page {
    client: Client,
    driver: Driver,
    name: &'static str,
    /// Whether `<name>.png` was saved (otherwise `run` saves the last state).
    saved: AtomicBool,
    http: reqwest::Client,
    _slot: SemaphorePermit<'static>,
}

impl Page {
    /// `None` when the browser is missing and the tests should skip (not on CI).
    async fn open(name: &'static str) -> Option<Page> {
        common::init_logs();
        let chromedriver = find_in_path("chromedriver");
        let missing = match &chromedriver {
            None => "chromedriver",
            Some(_) if !Path::new(CHROMIUM).exists() => CHROMIUM,
            Some(_) => "",
        };
        if !missing.is_empty() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{missing} not found, and CI must run the browser tests: \
                 apt-get install chromium chromium-driver (.ci/run does)"
            );
            println!("skipping: {missing} not found (apt-get install chromium chromium-driver)");
            return None;
        }
        let slot = BROWSERS
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let driver = Driver::start(&chromedriver.unwrap()).await;
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--no-default-browser-check",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--disable-crash-reporter",
                    "--hide-scrollbars", "--lang=en-US",
                    format!("--user-data-dir={}", driver.profile.display()),
                    "--window-size=420,900",
                ],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url())
            .await
            .unwrap_or_else(|e| panic!("chromedriver did not start a Chromium session: {e}"));
        Some(Page {
            client,
            driver,
            name,
            saved: AtomicBool::new(false),
            http: reqwest::Client::new(),
            _slot: slot,
        })
    }

    async fn close(self) {
        // Ends Chromium cleanly; the driver's Drop kills whatever is left.
        let _ = tokio::time::timeout(WAIT, self.client.close()).await;
    }

    async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        self.wait_js(
            "the page to be ready",
            "return document.getElementById('app').dataset.ready === 'true'",
        )
        .await;
    }

    /// The element, once it is in the document.
    async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .every(POLL)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("expected an element {css}: {e}"))
    }

    async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// The element's text as rendered ("" when hidden).
    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    async fn attr(&self, css: &str, name: &str) -> String {
        self.find(css)
            .await
            .attr(name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("expected {css} to have {name}"))
    }

    async fn visible(&self, css: &str) -> bool {
        self.find(css).await.is_displayed().await.unwrap()
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    /// The outline of the code on screen (not of one fading out), once there is one.
    async fn qr_path(&self) -> String {
        let d = self
            .attr("#qr .qr-layer:not(.is-leaving) svg path", "d")
            .await;
        assert!(d.len() > 100, "expected a QR outline, got d={d:?}");
        d
    }

    /// Runs `script` (a function body) in the page and decodes what it returns.
    async fn js<T: serde::de::DeserializeOwned>(&self, script: &str) -> T {
        let value = self
            .client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"));
        serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("script returned {value}: {e}\n{script}"))
    }

    /// Waits until `script` returns true, checking every [`POLL`], at most [`WAIT`].
    async fn wait_js(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.js::<bool>(script).await {
            if Instant::now() > deadline {
                panic!(
                    "expected {what} within {WAIT:?}; the page is {}",
                    self.describe().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn wait_state(&self, state: &str) {
        let script = format!("return document.getElementById('app').dataset.state === '{state}'");
        self.wait_js(&format!("state {state}"), &script).await;
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

    /// State, status line and error message: what a failure message needs.
    async fn describe(&self) -> String {
        self.client
            .execute(
                "const t = (id) => (document.getElementById(id) || {}).textContent;\
                 return 'state=' + document.getElementById('app').dataset.state +\
                 ' status=' + JSON.stringify(t('status')) +\
                 ' error=' + JSON.stringify(t('error-message')) + ' url=' + location.href",
                vec![],
            )
            .await
            .map_or_else(
                |e| format!("unreadable ({e})"),
                |v| v.as_str().unwrap_or("?").to_owned(),
            )
    }

    /// Presses and releases `key` wherever the focus is.
    async fn press(&self, key: Key) {
        self.press_char(key.into()).await;
    }

    async fn press_char(&self, c: char) {
        let keys = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: c })
            .then(KeyAction::Up { value: c });
        self.client
            .perform_actions(keys)
            .await
            .unwrap_or_else(|e| panic!("cannot press {c:?}: {e}"));
    }

    /// The viewport, as a phone (touch, mobile layout) or a desktop browser.
    async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
        let script = format!("return window.innerWidth === {width}");
        self.wait_js(&format!("a viewport {width} px wide"), &script)
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

    /// Saves `<test>.png`.
    async fn screenshot(&self) {
        self.save_screenshot(&format!("{}.png", self.name)).await;
        self.saved.store(true, Ordering::Relaxed);
    }

    /// Saves `<test>-<what>.png`.
    async fn screenshot_as(&self, what: &str) {
        self.save_screenshot(&format!("{}-{what}.png", self.name))
            .await;
    }

    async fn save_screenshot(&self, file: &str) {
        let png = match self.client.screenshot().await {
            Ok(png) => png,
            Err(e) => return eprintln!("no screenshot {file}: {e}"),
        };
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), png).unwrap();
    }

    /// A Chrome DevTools command through chromedriver (WebDriver has no word for these).
    async fn cdp(&self, cmd: &str, params: Value) -> Value {
        let url = format!("{}/goog/cdp/execute", self.session_url().await);
        let body = json!({ "cmd": cmd, "params": params });
        self.driver_call(&url, body)
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    /// The browser console's errors so far (CSP violations and uncaught exceptions among them).
    async fn console_errors(&self) -> Vec<String> {
        let url = format!("{}/se/log", self.session_url().await);
        match self.driver_call(&url, json!({ "type": "browser" })).await {
            Ok(Value::Array(entries)) => entries
                .iter()
                .filter(|e| e["level"] == "SEVERE")
                .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                .collect(),
            Ok(other) => vec![format!("unexpected log answer {other}")],
            Err(e) => vec![format!("cannot read the console: {e}")],
        }
    }

    async fn session_url(&self) -> String {
        let id = self.client.session_id().await.unwrap().expect("a session");
        format!("{}/session/{id}", self.driver.url())
    }

    async fn driver_call(&self, url: &str, body: Value) -> Result<Value, String> {
        let answer = self
            .http
            .post(url)
            .json(&body)
            .timeout(WAIT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status();
        let mut value: Value = answer.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {value}"));
        }
        Ok(value["value"].take())
    }
}

/// `target/screenshots`, wherever the target directory is.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("screenshots")
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A chromedriver process in its own process group, with a fresh Chromium profile directory.
/// Dropping it kills the group (chromedriver and any Chromium it left) and removes the profile.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Driver {
    async fn start(program: &Path) -> Driver {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let profile = std::env::temp_dir().join(format!(
            "qrlink-chromium-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        // A free port, released just before chromedriver takes it; if another process takes it
        // first, chromedriver exits and the next port is tried.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut command = Command::new(program);
            command
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            #[cfg(unix)]
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
            let mut driver = Driver {
                child,
                port,
                profile: profile.clone(),
            };
            if driver.ready().await {
                return driver;
            }
        }
        panic!("chromedriver did not become ready on any of three ports");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Polls `/status` until chromedriver says it is ready (at most [`WAIT`]); false if it
    /// exited (its port was taken).
    async fn ready(&mut self) -> bool {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let status = http
                .get(format!("{}/status", self.url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(answer) = status {
                if let Ok(body) = answer.json::<Value>().await {
                    if body["value"]["ready"] == true {
                        return true;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver was not ready within {WAIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group holds chromedriver and the Chromium it started (Chromium survives a
        // chromedriver that is killed alone).
        #[cfg(unix)]
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

// ------------------------------------------------------------------------------------------
// A connection that can be cut

/// A TCP proxy in front of the gateway whose open connections can be cut at once, like a
/// network that goes away: the browser sees its WebSocket end without a Close frame.
struct CuttableProxy {
    addr: SocketAddr,
    /// Cancelled by `cut`: every connection open at that moment ends.
    current: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl CuttableProxy {
    async fn start(target: SocketAddr) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let current = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (tokens, stopped) = (current.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let mut inbound = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    () = stopped.cancelled() => return,
                };
                let cut = tokens.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        CuttableProxy {
            addr,
            current,
            stop,
        }
    }

    /// Drops every open connection; later ones go through.
    fn cut(&self) {
        let old = std::mem::take(&mut *self.current.lock().unwrap());
        old.cancel();
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}
