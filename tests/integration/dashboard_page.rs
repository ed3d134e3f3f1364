//! The dashboard (`/dashboard`: `web/dashboard.*`) in a real headless Chromium, against the
//! gateway and its simulator on port 0: sessions opened by the link page in another tab or by a
//! plain WebSocket client show up live, close with their outcome, and can be cancelled; with an
//! admin token the page asks for it.
//!
//! The harness is `tests/common/browser.rs` (one chromedriver and browser per test, at most two
//! at once; screenshots in `target/screenshots/<test>*.png`; without a browser the tests skip,
//! except on CI).

use std::time::Duration;

use crate::common::browser::{self, Page, PageKind};
use crate::common::receiver::{Answer, Receiver};
use crate::common::{TestGateway, WsClient, sim_config};
use qrlink::link::protocol::{ServerFrame, close};
use serde::Deserialize;
use serde_json::json;

// ------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn a_session_opened_in_another_tab_appears_with_its_provider_and_qr_number_then_closes_with_its_outcome()
 {
    const NAME: &str = "a_session_opened_in_another_tab_appears_with_its_provider_and_qr_number_then_closes_with_its_outcome";
    let gw = TestGateway::with(sim_config(Duration::from_secs(30), 2), &[]).await;
    run(NAME, async |page| {
        page.goto(&gw.url("/dashboard")).await;
        assert_eq!(page.text("#watch-status").await, "live");
        assert_eq!(page.count("#sessions tbody tr").await, 0);
        assert!(page.visible("#sessions-empty").await);
        page.screenshot_as("empty").await;

        // The link page in a second tab: pick WhatsApp, as a person would.
        let dashboard = page.new_tab().await;
        page.goto_until(&gw.url("/"), "the link page to be ready", LINK_PAGE_READY)
            .await;
        page.click("#picker button[data-provider='whatsapp']").await;
        page.wait_js("a code on the link page", &link_state("qr"))
            .await;
        let link_tab = page.client.window().await.unwrap();
        page.switch_to(dashboard).await;

        let id = only_session(&gw);
        wait_row(
            page,
            &id,
            "a WhatsApp row at QR 1",
            "cell('phase') === 'qr' && cell('rotation') === '1' \
                 && cell('provider') === 'WhatsApp'",
        )
        .await;
        let row = read_row(page, &id).await.expect("the row");
        assert_eq!(
            (row.provider.as_str(), row.rotation.as_str()),
            ("WhatsApp", "1")
        );
        assert_eq!(row.client, "127.0.0.1");
        assert!(row.age.ends_with(" s"), "an age in seconds: {row:?}");
        assert!(
            row.outcome.is_none() && !row.closed && row.cancel_enabled,
            "{row:?}"
        );
        assert_eq!(
            counters(page).await,
            [1, 0, 0, 0, 0, 0],
            "one open, no outcome yet"
        );
        assert!(!page.visible("#sessions-empty").await);
        page.screenshot_as("open").await;

        let intents = gw.sim().intent_ids();
        assert_eq!(intents.len(), 1, "{intents:?}");
        gw.sim()
            .scan(&intents[0])
            .expect("the simulator takes the scan");

        closed_row(page, &id, "account").await;
        assert_eq!(
            counters(page).await,
            [0, 1, 0, 0, 0, 0],
            "one linked, none open"
        );
        // Dimmed once its fade has run.
        wait_row(
            page,
            &id,
            "the row to dim",
            "getComputedStyle(r).opacity === '0.6'",
        )
        .await;

        let entries = log_of(page, &id).await;
        let kinds: Vec<&str> = entries.iter().map(|(kind, ..)| kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["closed", "account", "qr", "opened"],
            "newest first: {entries:?}"
        );
        let (_, outcome, text) = &entries[0];
        assert_eq!(outcome, "account");
        assert!(text.starts_with("closed: account after "), "{text:?}");
        assert!(entries[2].2.starts_with("QR 1 shown"), "{entries:?}");
        assert!(
            entries[3].2.starts_with("opened WhatsApp from 127.0.0.1"),
            "{entries:?}"
        );
        let errors = page.console_errors().await;
        assert!(errors.is_empty(), "console errors: {errors:?}");
        page.screenshot().await;

        // The person on the link page sees the same outcome.
        page.switch_to(link_tab).await;
        page.wait_js("the account on the link page", &link_state("account"))
            .await;
        page.screenshot_as("link-tab").await;
    })
    .await;
}

#[tokio::test]
async fn the_cancel_button_ends_a_session_its_client_gets_session_cancelled_and_the_row_goes() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(30), 2), &[]).await;
    run(
        "the_cancel_button_ends_a_session_its_client_gets_session_cancelled_and_the_row_goes",
        async |page| {
            page.goto(&gw.url("/dashboard")).await;
            let (mut client, id) = open_session(&gw, "telegram").await;
            wait_row(
                page,
                &id,
                "a Telegram row at QR 1",
                "cell('phase') === 'qr' && cell('rotation') === '1' \
                 && cell('provider') === 'Telegram'",
            )
            .await;
            page.screenshot_as("open").await;

            page.click(&format!("button.cancel[data-session='{id}']"))
                .await;
            let error = client.error().await;
            assert_eq!(error.code, "session/cancelled");
            assert_eq!(client.closed().await, close::NORMAL);

            let row = closed_row(page, &id, "cancelled").await;
            assert_eq!(
                row.cancel_label, "Cancel",
                "nothing is still being cancelled"
            );
            assert_eq!(counters(page).await, [0, 0, 0, 0, 1, 0]);
            let entries = log_of(page, &id).await;
            assert!(
                entries
                    .iter()
                    .any(|(kind, _, text)| kind == "info" && text == "cancel requested"),
                "{entries:?}"
            );
            // The client's `session/cancelled` is logged as a cancel, not as an error.
            assert!(
                entries.iter().any(|(kind, ..)| kind == "cancelled")
                    && !entries.iter().any(|(kind, ..)| kind == "error"),
                "{entries:?}"
            );
            assert!(
                entries[0].1 == "cancelled" && entries[0].2.starts_with("closed: cancelled"),
                "{entries:?}"
            );
            let errors = page.console_errors().await;
            assert!(errors.is_empty(), "console errors: {errors:?}");
            page.screenshot().await;

            // A closed row stays for a few seconds with its outcome, then the table is empty.
            page.wait_js(
                "the closed row to go",
                "return document.querySelector('#sessions tbody tr') === null \
                 && !document.getElementById('sessions-empty').hidden",
            )
            .await;
            assert_eq!(counters(page).await, [0, 0, 0, 0, 1, 0], "the counts stay");
            page.screenshot_as("row-gone").await;
        },
    )
    .await;
}

#[tokio::test]
async fn with_an_admin_token_the_dashboard_asks_for_it_and_works_once_given() {
    let gw = TestGateway::with(
        sim_config(Duration::from_secs(30), 2),
        &["--admin-token", "t0k"],
    )
    .await;
    run(
        "with_an_admin_token_the_dashboard_asks_for_it_and_works_once_given",
        async |page| {
            let (mut client, id) = open_session(&gw, "whatsapp").await;
            page.goto_until(&gw.url("/dashboard"), "the token form", ASKS_FOR_TOKEN)
                .await;
            assert_eq!(page.text("#watch-status").await, "admin token needed");
            assert_eq!(
                page.text("#token-note").await,
                "This gateway needs its admin token to show sessions."
            );
            assert!(
                page.js::<bool>("return document.activeElement.id === 'token-input'")
                    .await,
                "the token field takes the focus"
            );
            // The page cannot see the open session: it says so rather than "none open".
            assert_eq!(page.count("#sessions tbody tr").await, 0, "nothing shown");
            assert!(!page.visible("#sessions-empty").await);
            assert_eq!(
                page.text("#sessions-offline").await,
                "Open sessions show here once the gateway accepts the admin token."
            );
            assert_eq!(page.text("#counter-active").await, "–");
            page.screenshot_as("asks").await;

            // A wrong token is refused, and the page says so.
            page.type_into("#token-input", "nope").await;
            page.click("#token-form button[type='submit']").await;
            page.wait_js(
                "the wrong token to be refused",
                "return document.getElementById('token-note').textContent.startsWith(\
                 'The gateway refused this admin token') \
                 && !document.getElementById('token-form').hidden",
            )
            .await;
            page.screenshot_as("refused").await;

            page.type_into("#token-input", "t0k").await;
            page.click("#token-form button[type='submit']").await;
            page.wait_js("the dashboard to be live", LIVE).await;
            assert!(!page.visible("#token-form").await);
            wait_row(page, &id, "the open session", "cell('phase') === 'qr'").await;
            page.screenshot().await;

            // A new tab has its own (empty) token store: asked again, then given in the URL,
            // which the page takes and removes from the address bar.
            page.new_tab().await;
            page.goto_until(&gw.url("/dashboard"), "the token form", ASKS_FOR_TOKEN)
                .await;
            page.goto(&gw.url("/dashboard?admin_token=t0k")).await;
            let href: String = page.js("return location.href").await;
            assert_eq!(href, gw.url("/dashboard"), "the token left the address bar");
            wait_row(page, &id, "the open session", "cell('phase') === 'qr'").await;
            // The admin API takes the token too: Cancel works.
            page.click(&format!("button.cancel[data-session='{id}']"))
                .await;
            assert_eq!(client.error().await.code, "session/cancelled");
            wait_row(
                page,
                &id,
                "the row's outcome",
                "r.dataset.outcome === 'cancelled'",
            )
            .await;
            assert_eq!(counters(page).await, [0, 0, 0, 0, 1, 0]);
            page.screenshot_as("from-url").await;
        },
    )
    .await;
}

#[tokio::test]
async fn the_deliveries_panel_shows_a_webhook_retrying_then_delivered() {
    let receiver = Receiver::scripted([Answer::Status(500)]).await;
    let url = receiver.url();
    // The retry comes 5 s × 0.6 = 3 s (±20 %) after the refusal: long enough to see it wait
    // (the panel looks 250 ms after the session closes, then every 2 s).
    let gw = TestGateway::with(
        sim_config(Duration::from_secs(30), 2),
        &[
            "--webhook-url",
            &url,
            "--webhook-secret",
            "whsec_ZGFzaGJvYXJkLXRlc3Q=",
            "--webhook-retry-scale",
            "0.6",
        ],
    )
    .await;
    run(
        "the_deliveries_panel_shows_a_webhook_retrying_then_delivered",
        async |page| {
            page.goto(&gw.url("/dashboard")).await;
            page.wait_js(
                "an empty deliveries panel",
                "return document.getElementById('deliveries').dataset.enabled === 'true' \
                 && !document.getElementById('deliveries-empty').hidden",
            )
            .await;
            let (mut client, id) = open_session(&gw, "whatsapp").await;
            client.send_json(json!({"type": "cancel"})).await;
            let row = format!(
                "const r = document.querySelector(\"#deliveries tbody tr[data-session='{id}']\");\
                 const cell = (c) => r.querySelector('td.' + c).textContent;"
            );
            page.wait_js(
                "the webhook retrying after a 500",
                &format!(
                    "{row} return r !== null && r.dataset.status === 'retrying' \
                     && cell('event') === 'link.abandoned' && cell('attempts') === '1' \
                     && cell('status') === 'retrying (HTTP 500)' && cell('next-retry') !== '–'"
                ),
            )
            .await;
            let summary = page.text("#deliveries-summary").await;
            assert!(summary.starts_with("1 pending"), "{summary}");
            page.screenshot_as("retrying").await;
            page.wait_js(
                "the webhook delivered at its second attempt",
                &format!(
                    "{row} return r !== null && r.dataset.status === 'delivered' \
                     && cell('attempts') === '2' && cell('next-retry') === '–'"
                ),
            )
            .await;
            assert_eq!(receiver.received().len(), 2);
            page.screenshot_as("delivered").await;
        },
    )
    .await;
}

#[tokio::test]
async fn two_nodes_show_in_the_node_column_the_nodes_table_the_totals_and_both_charts() {
    let Some(redis) = crate::common::redis::TestRedis::start().await else {
        return;
    };
    let (a, b) = crate::cluster::two_nodes(&redis, "qrdash:").await;
    run(
        "two_nodes_show_in_the_node_column_the_nodes_table_the_totals_and_both_charts",
        async |page| {
            // The page is on B; sessions open on both nodes after it is live.
            page.goto(&b.url("/dashboard")).await;
            let (mut on_a, id_a) = open_session(&a, "whatsapp").await;
            let (_on_b, id_b) = open_session(&b, "telegram").await;
            wait_row(page, &id_a, "A's session on node a", "cell('node') === 'a'").await;
            wait_row(page, &id_b, "B's session on node b", "cell('node') === 'b'").await;
            wait_nodes(page, "both nodes with one open each", &[("a", 1, 0), ("b", 1, 0)]).await;
            page.wait_js(
                "the open-sessions chart at 2 now",
                "const s = document.getElementById('open-svg');\
                 return s.dataset.now === '2' && s.querySelectorAll('polyline.node-line').length === 2\
                 && document.getElementById('open-summary').textContent.startsWith('Now 2 open (a 1, b 1).')",
            )
            .await;
            page.screenshot_as("open").await;

            // A's session is scanned: linked on A, counted in A's row, the totals and the chart.
            // A's was the first opened.
            a.sim().scan(&first_intent(&a)).unwrap();
            crate::common::ends_with_the_account(&mut on_a).await;
            wait_nodes(page, "A's linked session", &[("a", 0, 1), ("b", 1, 0)]).await;
            page.wait_js(
                "the totals and the time-to-scan chart",
                "return document.getElementById('total-account').textContent === '1 since start'\
                 && document.getElementById('scan-svg').dataset.scans === '1'\
                 && document.getElementById('open-svg').dataset.now === '1'",
            )
            .await;
            let bars: Vec<(String, u32)> = page
                .js("return [...document.querySelectorAll('#scan-svg rect.bar')]\
                     .map((r) => [r.dataset.bucket, Number(r.dataset.count)])")
                .await;
            // The bars are the gateway's buckets, as either node answers them.
            let api: serde_json::Value = reqwest::get(b.url("/api/stats"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let want: Vec<u32> =
                serde_json::from_value(api["total"]["time_to_scan"]["counts"].clone()).unwrap();
            assert_eq!(bars.len(), 13, "{bars:?}");
            assert_eq!(bars.iter().map(|b| b.1).collect::<Vec<_>>(), want, "{bars:?}");
            assert_eq!(bars.iter().map(|b| b.1).sum::<u32>(), 1, "{bars:?}");
            assert_eq!(bars[12].0, "> 5 min");
            let summary = page.text("#scan-summary").await;
            assert!(summary.starts_with("1 account linked. Half within "), "{summary}");
            assert_eq!(counters(page).await, [1, 1, 0, 0, 0, 0], "since the page connected");
            let errors = page.console_errors().await;
            assert!(errors.is_empty(), "console errors: {errors:?}");
            page.screenshot().await;
        },
    )
    .await;
}

#[tokio::test]
async fn one_node_in_memory_mode_names_itself_and_counts_since_it_started() {
    let gw = TestGateway::with(
        sim_config(Duration::from_secs(30), 2),
        &["--node-id", "solo"],
    )
    .await;
    // Linked before the page opens: in the totals, not in the page's own counters.
    let (mut early, _) = open_session(&gw, "whatsapp").await;
    gw.sim().scan(&first_intent(&gw)).unwrap();
    crate::common::ends_with_the_account(&mut early).await;
    gw.wait_for_no_sessions().await;
    run(
        "one_node_in_memory_mode_names_itself_and_counts_since_it_started",
        async |page| {
            page.goto(&gw.url("/dashboard")).await;
            let (_client, id) = open_session(&gw, "telegram").await;
            wait_row(
                page,
                &id,
                "the node's name in the node column",
                "cell('node') === 'solo'",
            )
            .await;
            wait_nodes(page, "the one node", &[("solo", 1, 1)]).await;
            page.wait_js(
                "the totals and both charts",
                "return document.getElementById('total-account').textContent === '1 since start'\
                 && document.getElementById('total-active').textContent === 'on solo'\
                 && document.getElementById('scan-svg').dataset.scans === '1'\
                 && document.getElementById('open-svg').dataset.now === '1'\
                 && document.getElementById('open-summary').textContent.startsWith('Now 1 open.')",
            )
            .await;
            assert_eq!(
                counters(page).await,
                [1, 0, 0, 0, 0, 0],
                "nothing ended since the page connected"
            );
            assert_eq!(
                page.count("#open-svg polyline.node-line").await,
                0,
                "one node: no per-node lines"
            );
            page.screenshot().await;
        },
    )
    .await;
}

/// Waits until the nodes table has exactly `want`: (node, open, linked) per row, in order.
async fn wait_nodes(page: &Page, what: &str, want: &[(&str, u32, u32)]) {
    let want: Vec<Vec<String>> = want
        .iter()
        .map(|(n, open, linked)| vec![(*n).to_owned(), open.to_string(), linked.to_string()])
        .collect();
    page.wait_js_with(
        what,
        "const rows = [...document.querySelectorAll('#nodes tbody tr')].map((r) =>\
           [r.dataset.node, r.querySelector('td.open').textContent, r.querySelector('td.account').textContent]);\
         return JSON.stringify(rows) === JSON.stringify(arguments[0]);",
        vec![json!(want)],
    )
    .await;
}

/// The first intent `gw`'s simulator started (in creation order; nodes share one simulator).
fn first_intent(gw: &TestGateway) -> String {
    gw.sim().intent_ids().first().cloned().expect("an intent")
}

// ------------------------------------------------------------------------------------------
// The dashboard

/// Live: the watch socket is open and its snapshot shown.
const LIVE: &str = "return document.getElementById('watch-status').dataset.state === 'live'";

/// Refused for want of the admin token, with the form shown.
const ASKS_FOR_TOKEN: &str = "return document.getElementById('watch-status').dataset.state \
     === 'unauthorized' && !document.getElementById('token-form').hidden";

/// The link page (in another tab) is set up.
const LINK_PAGE_READY: &str = "const app = document.getElementById('app');\
     return app !== null && app.dataset.ready === 'true'";

/// The dashboard: ready once live; a failure message gives the watch state, the rows and the
/// newest log entries (or, in a link page tab, its state).
static DASHBOARD: PageKind = PageKind {
    ready: ("the dashboard to be live", LIVE),
    describe: "const t = (id) => (document.getElementById(id) || {}).textContent;\
        const rows = [...document.querySelectorAll('#sessions tbody tr')].map((r) =>\
          r.dataset.session + ' ' + r.querySelector('td.phase').textContent);\
        const log = [...document.querySelectorAll('#log li')].slice(0, 4)\
          .map((li) => [...li.children].map((c) => c.textContent).join(' '));\
        const app = document.getElementById('app');\
        return 'watch=' + JSON.stringify(t('watch-status')) + ' rows=' + JSON.stringify(rows) +\
          ' log=' + JSON.stringify(log) + (app ? ' link-page=' + app.dataset.state : '') +\
          ' url=' + location.href",
    window: (1280, 800),
};

async fn run(name: &'static str, test: impl AsyncFnOnce(&Page)) {
    browser::run(name, &DASHBOARD, test).await;
}

fn link_state(state: &str) -> String {
    format!("return document.getElementById('app').dataset.state === '{state}'")
}

/// A session's row as shown.
#[derive(Debug, Deserialize)]
struct Row {
    provider: String,
    phase: String,
    rotation: String,
    age: String,
    client: String,
    /// Set once the session closed.
    outcome: Option<String>,
    /// Dimmed as closed.
    closed: bool,
    cancel_enabled: bool,
    cancel_label: String,
}

/// Finds the row of the session `arguments[0]` as `r`, with `cell(name)` its `td.<name>` text.
const ROW_JS: &str = "const r = [...document.querySelectorAll('#sessions tbody tr')]\
     .find((tr) => tr.dataset.session === arguments[0]) || null;\
     const cell = (name) => r.querySelector('td.' + name).textContent;";

async fn read_row(page: &Page, id: &str) -> Option<Row> {
    let script = format!(
        "{ROW_JS} if (r === null) return null; const b = r.querySelector('button.cancel');\
         return {{ provider: cell('provider'), phase: cell('phase'), rotation: cell('rotation'),\
         age: cell('age'), client: cell('client'), outcome: r.dataset.outcome || null,\
         closed: r.classList.contains('closed'), cancel_enabled: b !== null && !b.disabled,\
         cancel_label: b === null ? '' : b.textContent }}"
    );
    page.js_with(&script, vec![json!(id)]).await
}

/// Waits for a session's row to show `outcome`, and checks it is closed with Cancel disabled.
async fn closed_row(page: &Page, id: &str, outcome: &str) -> Row {
    let condition = format!("r.dataset.outcome === '{outcome}'");
    wait_row(page, id, "the row's outcome", &condition).await;
    let row = read_row(page, id)
        .await
        .expect("the closed row stays a while");
    assert_eq!(row.phase, outcome);
    assert!(row.closed && !row.cancel_enabled, "{row:?}");
    row
}

/// Waits until the session's row is there and `condition` (a JS expression over `r` and
/// `cell`) holds.
async fn wait_row(page: &Page, id: &str, what: &str, condition: &str) {
    let script = format!("{ROW_JS} return r !== null && ({condition});");
    page.wait_js_with(what, &script, vec![json!(id)]).await;
}

/// Open now, then the outcome counters: account, timeout, error, cancelled, disconnected.
async fn counters(page: &Page) -> [u32; 6] {
    page.js(
        "return ['active', 'account', 'timeout', 'error', 'cancelled', 'disconnected']\
         .map((c) => Number(document.getElementById('counter-' + c).textContent))",
    )
    .await
}

/// The session's log entries, newest first: kind, outcome ("" when none), text.
async fn log_of(page: &Page, id: &str) -> Vec<(String, String, String)> {
    page.js_with(
        "return [...document.querySelectorAll('#log li')]\
         .filter((li) => li.dataset.session === arguments[0])\
         .map((li) => [li.dataset.kind, li.dataset.outcome || '',\
         li.querySelector('.log-text').textContent])",
        vec![json!(id)],
    )
    .await
}

/// The one session the gateway has open.
fn only_session(gw: &TestGateway) -> String {
    let sessions = gw.state.store.snapshot();
    assert_eq!(sessions.len(), 1, "expected one session: {sessions:?}");
    sessions[0].id.clone()
}

/// A link attempt by a plain WebSocket client, once its first code is out; and its session id.
async fn open_session(gw: &TestGateway, provider: &str) -> (WsClient, String) {
    let mut client = gw.connect(&format!("/ws/link/{provider}")).await;
    let first = client.frame().await;
    assert!(
        matches!(first.frame, ServerFrame::Qr(_)),
        "expected a code first, got {first:?}"
    );
    (client, first.session)
}
