//! Resume (protocol v1.1) as a person sees it: the link page in a real headless Chromium keeps
//! its attempt across a reload, a cut connection and a takeover by another tab, never shows a
//! dead code as scannable, and the dashboard shows a session whose page went away.
//!
//! The gateway runs in demo mode (`DemoGateway`, the embedded simulator) with a resume grace of
//! 60 s. A cut connection is a [`TcpProxy`] between the browser and the gateway that resets
//! every connection on demand and can hold new ones back, so the page's reconnect is seen
//! waiting and let through when the test says, not when a timer happens to fire. The harness is
//! `tests/integration/common/browser.rs` (screenshots in `target/screenshots/<test>*.png`;
//! without a browser the tests skip, except on CI).

use qrlink::link::protocol::ServerFrame;
use qrlink::state::AppState;
use qrlink::store::{Outcome, Phase, SessionInfo, WatchEvent};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::common::browser::{self, Page, PageKind};
use crate::common::tcp_proxy::TcpProxy;
use crate::common::{DemoGateway, WAIT, WsClient};

/// Resume on, with a grace no test step comes near.
const RESUME: &[&str] = &["--resume-grace", "60s"];

// ------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn a_reload_mid_flow_resumes_the_same_qr_without_a_new_intent_and_a_scan_then_links() {
    let gw = DemoGateway::start_with("60s", 3, RESUME).await;
    run(
        "a_reload_mid_flow_resumes_the_same_qr_without_a_new_intent_and_a_scan_then_links",
        async |page| {
            page.goto(&gw.url("/?provider=whatsapp")).await;
            page.wait_state("qr").await;
            let before = page.code().await;
            assert_eq!(before.rotation, "Code 1");
            let session = only_session(&gw.state);
            assert_eq!((session.phase, session.rotation), (Phase::Qr, 1));
            let record = page.resume_record().await;
            assert!(
                record["token"].as_str().is_some_and(|t| t.len() >= 22)
                    && record["provider"] == "whatsapp"
                    && record["session"] == session.id.as_str()
                    && record["rotation"] == 1,
                "expected the attempt's resume record, got {record}"
            );

            let mut events = gw.state.store.subscribe();
            // Every data-state the next document takes, from its very first script on.
            page.cdp(
                "Page.addScriptToEvaluateOnNewDocument",
                json!({ "source": "window.__states = []; new MutationObserver((ms) => {\
                    for (const m of ms) window.__states.push(m.target.dataset.state); })\
                    .observe(document, { subtree: true, attributes: true,\
                    attributeFilter: ['data-state'] });" }),
            )
            .await;
            page.client
                .refresh()
                .await
                .unwrap_or_else(|e| panic!("cannot reload: {e}"));
            page.wait_until(
                "the page to resume by itself",
                "app.dataset.state === 'qr' && app.dataset.resumes === '1'",
            )
            .await;
            wait_for_event(
                &mut events,
                "the reload's detach",
                |ev| matches!(ev, WatchEvent::Detached { session: s, .. } if *s == session.id),
            )
            .await;
            wait_for_event(
                &mut events,
                "the resume",
                |ev| matches!(ev, WatchEvent::Resumed { session: s, .. } if *s == session.id),
            )
            .await;

            let after = page.code().await;
            assert_eq!(after, before, "the same code, drawn the same");
            let states: Vec<String> = page.js("return window.__states").await;
            assert_eq!(
                states,
                ["reconnecting", "qr"],
                "straight back to the code: no picker, no new attempt"
            );
            assert!(!page.visible("#picker").await);
            assert!(
                page.visible("#simulate-scan").await,
                "the code is live again"
            );
            let now = only_session(&gw.state);
            assert_eq!(
                (now.id.as_str(), now.phase, now.rotation),
                (session.id.as_str(), Phase::Qr, 1)
            );
            let intents = gw.sim().intent_ids();
            assert_eq!(
                intents.len(),
                1,
                "one intent across the reload: {intents:?}"
            );
            assert_eq!(intents_started(&gw), 1, "no second Start Auth Intent");
            page.screenshot_as("resumed").await;

            gw.sim()
                .scan(&intents[0])
                .expect("the simulator takes the scan");
            page.wait_state("account").await;
            let name = page.text("#account-name").await;
            assert!(
                name.starts_with("+33 6 "),
                "the simulated number, got {name:?}"
            );
            assert_eq!(
                page.resume_record().await,
                Value::Null,
                "the token is forgotten"
            );
            page.screenshot().await;
        },
    )
    .await;
}

#[tokio::test]
async fn a_cut_connection_shows_reconnecting_then_the_page_resumes_through_the_proxy_and_links() {
    let gw = DemoGateway::start_with("60s", 3, RESUME).await;
    let proxy = TcpProxy::start(gw.addr).await;
    run(
        "a_cut_connection_shows_reconnecting_then_the_page_resumes_through_the_proxy_and_links",
        async |page| {
            page.goto(&proxy.url("/?provider=whatsapp")).await;
            page.wait_state("qr").await;
            let before = page.code().await;
            let session = only_session(&gw.state);
            let mut events = gw.state.store.subscribe();

            // The network goes, and stays away until the page has tried to come back.
            proxy.hold();
            let cut = proxy.cut();
            assert!(
                cut >= 1,
                "expected the page's socket to be cut, {cut} were open"
            );
            page.wait_until(
                "reconnecting, the code kept but dimmed",
                "app.dataset.state === 'reconnecting' && app.dataset.reconnectFrom === 'qr' \
                 && qr.classList.contains('is-paused')",
            )
            .await;
            assert!(page.visible("#reconnecting").await);
            let note = page.text("#reconnecting-text").await;
            assert!(note.contains("interrupted"), "got {note:?}");
            assert!(!page.visible("#simulate-scan").await, "nothing to scan now");
            assert_eq!(
                page.code().await,
                before,
                "the last code stays behind the note"
            );
            wait_for_event(
                &mut events,
                "the gateway to detach the session",
                |ev| matches!(ev, WatchEvent::Detached { session: s, .. } if *s == session.id),
            )
            .await;
            assert_eq!(only_session(&gw.state).phase, Phase::Detached);
            proxy.wait_waiting(1).await;
            page.screenshot_as("reconnecting").await;

            proxy.release();
            page.wait_until(
                "the replayed code",
                "app.dataset.state === 'qr' && app.dataset.resumes === '1' \
                 && !qr.classList.contains('is-paused')",
            )
            .await;
            wait_for_event(
                &mut events,
                "the resume",
                |ev| matches!(ev, WatchEvent::Resumed { session: s, .. } if *s == session.id),
            )
            .await;
            assert_eq!(page.code().await, before, "the same code, drawn the same");
            assert_eq!(page.text("#expiry-label").await, "Expires in");
            let counts = proxy.counts();
            assert!(counts.cut >= 1 && counts.waiting == 0, "{counts:?}");

            let intents = gw.sim().intent_ids();
            assert_eq!(intents.len(), 1, "one intent across the cut: {intents:?}");
            assert_eq!(intents_started(&gw), 1);
            gw.sim()
                .scan(&intents[0])
                .expect("the simulator takes the scan");
            page.wait_state("account").await;
            assert_eq!(page.text("#account-provider").await, "WhatsApp");
            page.screenshot().await;
        },
    )
    .await;
}

#[tokio::test]
async fn a_replayed_code_that_expired_meanwhile_is_never_shown_scannable_and_the_next_code_follows()
{
    // Codes of 4 s, and the gateway's expires_at agrees with the simulator's lifetime.
    let gw = DemoGateway::start_with("4s", 5, &["--resume-grace", "60s", "--qr-ttl", "4s"]).await;
    let proxy = TcpProxy::start(gw.addr).await;
    run(
        "a_replayed_code_that_expired_meanwhile_is_never_shown_scannable_and_the_next_code_follows",
        async |page| {
            page.goto(&proxy.url("/?provider=whatsapp")).await;
            page.wait_state("qr").await;
            let first = page.code().await;
            assert_eq!(first.rotation, "Code 1");
            // The replay and the code after it come one right after the other; the recorder
            // sees every state the page passes through, however briefly.
            page.js::<Value>(RECORDER).await;

            proxy.hold();
            proxy.cut();
            page.wait_until(
                "reconnecting from code 1",
                "app.dataset.state === 'reconnecting' \
                 && document.getElementById('rotation').textContent === 'Code 1'",
            )
            .await;
            proxy.wait_waiting(1).await;
            // Away until the code on screen has expired, by the page's own deadline for it.
            page.wait_until(
                "code 1 to expire while the page is away",
                "const r = JSON.parse(sessionStorage.getItem('qrlink.resume'));\
                 return r !== null && Number.isFinite(r.qr_deadline) \
                 && Date.now() > r.qr_deadline + 100",
            )
            .await;
            proxy.release();

            page.wait_until(
                "a new code after the expired one",
                "app.dataset.resumes === '1' && app.dataset.state === 'qr' \
                 && document.getElementById('rotation').textContent !== 'Code 1' \
                 && qr.querySelector('.qr-layer:not(.is-leaving) svg') !== null",
            )
            .await;
            let seen: Vec<Seen> = page.js("return window.__seen").await;
            let resumed: Vec<&Seen> = seen.iter().filter(|s| s.resumes == "1").collect();
            let expired = resumed
                .iter()
                .find(|s| s.rotation == "Code 1" && s.state == "qr")
                .unwrap_or_else(|| panic!("expected the replayed code 1, saw {resumed:#?}"));
            assert!(
                expired.expired
                    && expired.svgs == 0
                    && expired.label == "Expired, a new code is on its way"
                    && !expired.simulate,
                "expected code 1 replayed as expired, with no code to scan: {expired:#?}"
            );
            for s in &resumed {
                assert!(
                    s.live.as_deref() != Some(first.path.as_str()),
                    "the expired code was put back on screen: {s:#?}"
                );
                assert!(
                    !(s.rotation == "Code 1" && s.svgs > 0 && !s.paused),
                    "code 1 shown scannable after the resume: {s:#?}"
                );
            }
            let next = resumed
                .iter()
                .find(|s| s.rotation == "Code 2")
                .unwrap_or_else(|| panic!("expected code 2 after the resume, saw {resumed:#?}"));
            assert!(
                next.state == "qr" && next.svgs == 1 && next.live.is_some() && !next.expired,
                "expected code 2 shown as a live code: {next:#?}"
            );
            assert_ne!(next.live.as_deref(), Some(first.path.as_str()));
            assert_eq!(gw.sim().intent_ids().len(), 1);
            assert_eq!(intents_started(&gw), 1);
            page.screenshot().await;
        },
    )
    .await;
}

#[tokio::test]
async fn a_page_back_after_the_grace_says_the_attempt_expired_and_start_again_brings_a_new_code() {
    let gw = DemoGateway::start_with("60s", 3, &["--resume-grace", "1s"]).await;
    let proxy = TcpProxy::start(gw.addr).await;
    run(
        "a_page_back_after_the_grace_says_the_attempt_expired_and_start_again_brings_a_new_code",
        async |page| {
            page.goto(&proxy.url("/?provider=whatsapp")).await;
            page.wait_state("qr").await;
            let first = page.code().await;
            let session = only_session(&gw.state);
            let mut events = gw.state.store.subscribe();

            proxy.hold();
            proxy.cut();
            page.wait_state("reconnecting").await;
            proxy.wait_waiting(1).await;
            // The page's resume waits at the proxy while the gateway's grace runs out.
            wait_for_event(
                &mut events,
                "the session to end when its grace passed",
                |ev| {
                    matches!(
                        ev,
                        WatchEvent::Closed { session: s, outcome: Outcome::Disconnected, .. }
                            if *s == session.id
                    )
                },
            )
            .await;
            proxy.release();

            page.wait_state("expired").await;
            assert_eq!(
                page.text("#error-message").await,
                "This link attempt has expired."
            );
            assert!(page.visible("#retry").await);
            assert_eq!(page.text("#retry").await, "Start again");
            assert_eq!(page.count("#qr svg").await, 0, "no code left on screen");
            assert_eq!(
                page.resume_record().await,
                Value::Null,
                "the token is forgotten"
            );
            page.screenshot_as("expired").await;

            page.click("#retry").await;
            page.wait_state("qr").await;
            let again = page.code().await;
            assert_ne!(again.path, first.path, "a new attempt, a new code");
            assert_eq!(again.rotation, "Code 1");
            assert_eq!(
                gw.sim().intent_ids().len(),
                2,
                "Start again starts a new intent"
            );
            page.screenshot().await;
        },
    )
    .await;
}

#[tokio::test]
async fn a_second_tab_resuming_the_attempt_leaves_the_first_elsewhere_until_it_continues_there() {
    let gw = DemoGateway::start_with("60s", 3, RESUME).await;
    run(
        "a_second_tab_resuming_the_attempt_leaves_the_first_elsewhere_until_it_continues_there",
        async |page| {
            page.goto(&gw.url("/?provider=whatsapp")).await;
            page.wait_state("qr").await;
            let code = page.code().await;
            let first_tab = open_a_second_tab_with_this_tabs_record(page, &gw).await;
            page.wait_until(
                "the second tab to take the attempt",
                "app.dataset.state === 'qr' && app.dataset.resumes === '1'",
            )
            .await;
            assert_eq!(page.code().await, code, "the same code in the second tab");
            let second_tab = page.client.window().await.unwrap();

            page.switch_to(first_tab.clone()).await;
            page.wait_state("elsewhere").await;
            assert!(page.visible("#elsewhere").await);
            assert!(page.visible("#continue-here").await);
            assert_eq!(
                page.text("#elsewhere-message").await,
                "This WhatsApp link attempt continued in another tab or window."
            );
            assert_eq!(page.count("#qr svg").await, 0, "no code left to scan here");
            assert!(!page.visible("#retry").await, "not an error");
            page.screenshot_as("elsewhere").await;

            // Taking it back: the second tab is the one elsewhere now.
            page.click("#continue-here").await;
            page.wait_until(
                "the first tab to take the attempt back",
                "app.dataset.state === 'qr' && app.dataset.resumes === '1'",
            )
            .await;
            assert_eq!(page.code().await, code);
            page.switch_to(second_tab).await;
            page.wait_state("elsewhere").await;
            page.screenshot_as("second-tab-elsewhere").await;

            page.switch_to(first_tab).await;
            let intents = gw.sim().intent_ids();
            assert_eq!(intents.len(), 1, "{intents:?}");
            assert_eq!(intents_started(&gw), 1);
            gw.sim()
                .scan(&intents[0])
                .expect("the simulator takes the scan");
            page.wait_state("account").await;
            page.screenshot().await;
        },
    )
    .await;
}

#[tokio::test]
async fn continuing_a_telegram_password_step_here_comes_back_to_the_form_never_to_a_qr_box() {
    let gw = DemoGateway::start_with("60s", 3, RESUME).await;
    run(
        "continuing_a_telegram_password_step_here_comes_back_to_the_form_never_to_a_qr_box",
        async |page| {
            page.goto(&gw.url("/?provider=telegram")).await;
            page.wait_state("qr").await;
            let intents = gw.sim().intent_ids();
            gw.sim()
                .scan(&intents[0])
                .expect("the simulator takes the scan");
            page.wait_state("checkpoint").await;
            let first_tab = open_a_second_tab_with_this_tabs_record(page, &gw).await;
            page.wait_until(
                "the second tab at the password step",
                "app.dataset.state === 'checkpoint' && app.dataset.resumes === '1'",
            )
            .await;

            page.switch_to(first_tab).await;
            page.wait_state("elsewhere").await;
            page.js::<Value>(RECORDER).await;
            page.click("#continue-here").await;
            page.wait_until(
                "the password form back in the first tab",
                "app.dataset.state === 'checkpoint' && app.dataset.resumes === '1'",
            )
            .await;
            let seen: Vec<Seen> = page.js("return window.__seen").await;
            let shown_qr: Vec<&Seen> = seen
                .iter()
                .filter(|s| s.state == "qr" || s.from.as_deref() == Some("qr"))
                .collect();
            assert!(
                shown_qr.is_empty(),
                "a password step came back through the QR view: {shown_qr:#?}"
            );
            page.type_into("#twofa-code", "demo").await;
            page.click("#twofa-submit").await;
            page.wait_state("account").await;
            assert_eq!(page.text("#account-name").await, "@demo_user");
            assert_eq!(intents_started(&gw), 1);
            page.screenshot().await;
        },
    )
    .await;
}

#[tokio::test]
async fn the_dashboard_shows_a_session_whose_client_went_away_as_detached_and_back_on_resume() {
    let gw = DemoGateway::start_with("60s", 3, RESUME).await;
    browser::run(
        "the_dashboard_shows_a_session_whose_client_went_away_as_detached_and_back_on_resume",
        &DASHBOARD,
        async |page| {
            page.goto(&gw.url("/dashboard")).await;
            let link = format!("ws://{}/ws/link/whatsapp", gw.addr);
            let mut client = WsClient::connect(&link).await;
            let first = client.frame().await;
            assert!(
                matches!(first.frame, ServerFrame::Qr(_)),
                "expected a code first, got {first:?}"
            );
            let (id, token) = (
                first.session.clone(),
                first.resume.clone().expect("a token"),
            );
            wait_row(page, &id, "the row at QR 1", "cell('phase') === 'qr'").await;

            drop(client);
            wait_row(
                page,
                &id,
                "the row to show detached",
                "cell('phase') === 'detached'",
            )
            .await;
            assert_eq!(only_session(&gw.state).phase, Phase::Detached);
            let logged: bool = page
                .js_with(
                    "return [...document.querySelectorAll('#log li')].some((li) =>\
                     li.dataset.session === arguments[0] && li.dataset.kind === 'detached')",
                    vec![json!(id)],
                )
                .await;
            assert!(logged, "the log says the session detached");
            page.screenshot_as("detached").await;

            // Back on resume, in the phase it had.
            let mut resumed = WsClient::connect(&format!("{link}?resume={token}")).await;
            assert!(
                resumed.frame().await.replay,
                "the first frame is the replay"
            );
            wait_row(page, &id, "the row back at qr", "cell('phase') === 'qr'").await;

            // A dashboard opened while the session is detached shows it so from its snapshot.
            drop(resumed);
            wait_row(
                page,
                &id,
                "the row detached again",
                "cell('phase') === 'detached'",
            )
            .await;
            page.client
                .refresh()
                .await
                .unwrap_or_else(|e| panic!("cannot reload: {e}"));
            page.wait_js("the dashboard to be live again", LIVE).await;
            wait_row(
                page,
                &id,
                "the snapshot's detached row",
                "cell('phase') === 'detached'",
            )
            .await;
            let errors = page.console_errors().await;
            assert!(errors.is_empty(), "console errors: {errors:?}");
            page.screenshot().await;
        },
    )
    .await;
}

// ------------------------------------------------------------------------------------------
// The gateway

/// Opens the page in a second tab of the same origin, given this tab's resume record (as a tab
/// the browser duplicates would have it; sessionStorage is per tab), and returns the first
/// tab's handle. The second tab is left current.
async fn open_a_second_tab_with_this_tabs_record(
    page: &Page,
    gw: &DemoGateway,
) -> fantoccini::wd::WindowHandle {
    let record: String = page
        .js("return sessionStorage.getItem('qrlink.resume')")
        .await;
    let first_tab = page.client.window().await.unwrap();
    page.new_tab().await;
    page.goto_until(&gw.url("/config.json"), "config.json", "return true")
        .await;
    page.js_with::<Value>(
        "sessionStorage.setItem('qrlink.resume', arguments[0]); return null",
        vec![json!(record)],
    )
    .await;
    page.goto(&gw.url("/")).await;
    first_tab
}

/// The one session the gateway holds.
fn only_session(state: &AppState) -> SessionInfo {
    let sessions = state.store.snapshot();
    assert_eq!(sessions.len(), 1, "expected one session: {sessions:?}");
    sessions.into_iter().next().unwrap()
}

/// Start Auth Intent calls the simulator received.
fn intents_started(gw: &DemoGateway) -> usize {
    gw.sim()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/v2/auth/intent"))
        .count()
}

/// Waits for a watch event that `pred` accepts (events already sent count).
async fn wait_for_event(
    events: &mut broadcast::Receiver<WatchEvent>,
    what: &str,
    pred: impl Fn(&WatchEvent) -> bool,
) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(ev) if pred(&ev) => return,
                Ok(_) => continue,
                Err(e) => panic!("watch events ended while waiting for {what}: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected {what} within {WAIT:?}"));
}

// ------------------------------------------------------------------------------------------
// The link page

/// Ready once `app.js` has set it up; a failure message gives its state and the resume hooks.
static LINK_PAGE: PageKind = PageKind {
    ready: (
        "the page to be ready",
        "return document.getElementById('app').dataset.ready === 'true'",
    ),
    describe: "const app = document.getElementById('app');\
        if (app === null) return 'not the link page: ' + location.href;\
        const t = (id) => (document.getElementById(id) || {}).textContent;\
        const qr = document.getElementById('qr');\
        return 'state=' + app.dataset.state + ' from=' + app.dataset.reconnectFrom +\
        ' resumes=' + app.dataset.resumes + ' qr=' + JSON.stringify(qr.className) +\
        ' expired=' + qr.dataset.expired + ' svgs=' + qr.querySelectorAll('svg').length +\
        ' rotation=' + JSON.stringify(t('rotation')) + ' status=' + JSON.stringify(t('status')) +\
        ' error=' + JSON.stringify(t('error-message')) + ' url=' + location.href",
    window: (420, 900),
};

async fn run(name: &'static str, test: impl AsyncFnOnce(&Page)) {
    browser::run(name, &LINK_PAGE, test).await;
}

/// The code on screen: its "Code N" line, its SVG as drawn (without the size the page sets
/// for the window) and its outline.
#[derive(Debug, PartialEq, Eq, Deserialize)]
struct Code {
    rotation: String,
    svg: String,
    path: String,
}

/// One moment of the page as [`RECORDER`] saw it.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // read through Debug in failure messages
struct Seen {
    state: String,
    /// `#app[data-reconnect-from]`.
    from: Option<String>,
    resumes: String,
    rotation: String,
    /// `#qr[data-expired="true"]`.
    expired: bool,
    /// SVGs in `#qr`, leaving ones included.
    svgs: u32,
    /// The outline of the code on screen (not of one fading out).
    live: Option<String>,
    paused: bool,
    label: String,
    /// "Simulate scan" shown.
    simulate: bool,
}

/// Records every state of the code's box and the page's hooks into `window.__seen`, at each
/// change (a MutationObserver runs after each task, so no frame's effect is missed).
const RECORDER: &str = "const app = document.getElementById('app');\
    const qr = document.getElementById('qr');\
    const t = (id) => document.getElementById(id).textContent;\
    const snap = () => { const p = qr.querySelector('.qr-layer:not(.is-leaving) svg path');\
      return { state: app.dataset.state, from: app.dataset.reconnectFrom || null,\
      resumes: app.dataset.resumes || '0',\
      rotation: t('rotation'), expired: qr.dataset.expired === 'true',\
      svgs: qr.querySelectorAll('svg').length, live: p ? p.getAttribute('d') : null,\
      paused: qr.classList.contains('is-paused'), label: t('expiry-label'),\
      simulate: !document.getElementById('simulate-scan').hidden }; };\
    window.__seen = [snap()];\
    const o = new MutationObserver(() => window.__seen.push(snap()));\
    o.observe(app, { attributes: true, attributeFilter: ['data-state', 'data-resumes', 'data-reconnect-from'] });\
    o.observe(qr, { attributes: true, childList: true, subtree: true });\
    for (const id of ['rotation', 'expiry-label', 'simulate-scan'])\
      o.observe(document.getElementById(id), { attributes: true, childList: true,\
      characterData: true, subtree: true });\
    return null";

/// What the resume tests ask of the link page.
trait ResumePage {
    async fn wait_state(&self, state: &str);
    async fn wait_until(&self, what: &str, condition: &str);
    async fn code(&self) -> Code;
    async fn resume_record(&self) -> Value;
}

impl ResumePage for Page {
    async fn wait_state(&self, state: &str) {
        self.wait_until(
            &format!("state {state}"),
            &format!("app.dataset.state === '{state}'"),
        )
        .await;
    }

    /// Waits until `condition` holds: a JS expression over `app` (`#app`) and `qr` (`#qr`), or a
    /// function body that returns.
    async fn wait_until(&self, what: &str, condition: &str) {
        let body = if condition.contains("return ") {
            condition.to_owned()
        } else {
            format!("return {condition};")
        };
        let script = format!(
            "const app = document.getElementById('app'); const qr = document.getElementById('qr');\
             if (app === null) return false; {body}"
        );
        self.wait_js(what, &script).await;
    }

    /// The code on screen, once there is one.
    async fn code(&self) -> Code {
        self.find("#qr .qr-layer:not(.is-leaving) svg path").await;
        let code: Code = self
            .js(
                "const svg = document.querySelector('#qr .qr-layer:not(.is-leaving) svg');\
                 const drawn = svg.cloneNode(true); drawn.removeAttribute('style');\
                 return { rotation: document.getElementById('rotation').textContent,\
                 svg: drawn.outerHTML, path: svg.querySelector('path').getAttribute('d') }",
            )
            .await;
        assert!(code.path.len() > 100, "expected a QR outline, got {code:?}");
        code
    }

    /// The page's resume record (sessionStorage), or null.
    async fn resume_record(&self) -> Value {
        self.js("return JSON.parse(sessionStorage.getItem('qrlink.resume'))")
            .await
    }
}

// ------------------------------------------------------------------------------------------
// The dashboard

/// Live: the watch socket is open and its snapshot shown.
const LIVE: &str = "return document.getElementById('watch-status').dataset.state === 'live'";

static DASHBOARD: PageKind = PageKind {
    ready: ("the dashboard to be live", LIVE),
    describe: "const rows = [...document.querySelectorAll('#sessions tbody tr')].map((r) =>\
          r.dataset.session + ' ' + r.querySelector('td.phase').textContent);\
        const w = document.getElementById('watch-status');\
        return 'watch=' + JSON.stringify(w && w.textContent) + ' rows=' + JSON.stringify(rows) +\
          ' url=' + location.href",
    window: (1280, 800),
};

/// Waits until the session's row is there and `condition` (a JS expression over the row `r`
/// and `cell(name)`, its `td.<name>` text) holds.
async fn wait_row(page: &Page, id: &str, what: &str, condition: &str) {
    let script = format!(
        "const r = [...document.querySelectorAll('#sessions tbody tr')]\
         .find((tr) => tr.dataset.session === arguments[0]) || null;\
         const cell = (name) => r.querySelector('td.' + name).textContent;\
         return r !== null && ({condition});"
    );
    page.wait_js_with(what, &script, vec![json!(id)]).await;
}
