//! Browser tests' harness: a real headless Chromium driven over WebDriver (fantoccini and
//! Debian's `chromedriver`), for the pages under `web/`.
//!
//! [`run`] starts its own chromedriver (its own port and process group, killed when the test
//! ends) and one browser with a fresh profile; at most two browsers run at once in a test
//! binary, since a CI machine may have two cores. Each test saves
//! `target/screenshots/<test>.png`, also when it fails (then it shows where the page stopped);
//! [`Page::screenshot_as`] saves more, named `<test>-<what>.png`.
//!
//! Without `chromium` or `chromedriver` a test says why and passes, unless `CI` is set: CI
//! installs both (`.ci/run`), so there a missing browser is a failure.
//!
//! What a page is (how to tell it is ready, how to describe it in a failure message, the window
//! size) comes from the test file as a [`PageKind`]; the waits here are all bounded by
//! [`WAIT`].

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::wd::WindowHandle;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::WAIT;

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Browsers running at once. Each is several processes; more than two on a two-core machine
/// makes timings, not the page, decide the outcome.
static BROWSERS: Semaphore = Semaphore::const_new(2);

/// How often a condition in the page is checked while waiting for it.
pub const POLL: Duration = Duration::from_millis(40);

/// What the harness needs to know about the page a test drives.
pub struct PageKind {
    /// What [`Page::goto`] waits for after loading a URL, and a function body that returns
    /// true once it holds.
    pub ready: (&'static str, &'static str),
    /// A function body that returns one line on the page's state (and its URL), for failure
    /// messages. It may run on another page of the site (a second tab): it must not throw there.
    pub describe: &'static str,
    /// The browser window, in CSS pixels.
    pub window: (u32, u32),
}

/// Opens a browser, runs `test` with it, and always saves the test's screenshot (showing the
/// failure when there was one) and closes the browser, before passing a failure on.
pub async fn run(name: &'static str, kind: &'static PageKind, test: impl AsyncFnOnce(&Page)) {
    let Some(page) = Page::open(name, kind).await else {
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
pub struct Page {
    pub client: Client,
    driver: Driver,
    kind: &'static PageKind,
    name: &'static str,
    /// Whether `<name>.png` was saved (otherwise `run` saves the last state).
    saved: AtomicBool,
    http: reqwest::Client,
    _slot: SemaphorePermit<'static>,
}

impl Page {
    /// `None` when the browser is missing and the tests should skip (not on CI).
    async fn open(name: &'static str, kind: &'static PageKind) -> Option<Page> {
        super::init_logs();
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
        let (width, height) = kind.window;
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
                    format!("--window-size={width},{height}"),
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
            kind,
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

    /// Loads `url` and waits until the page says it is ready ([`PageKind::ready`]).
    pub async fn goto(&self, url: &str) {
        let (what, ready) = self.kind.ready;
        self.goto_until(url, what, ready).await;
    }

    /// Loads `url` and waits until `ready` (a function body) returns true.
    pub async fn goto_until(&self, url: &str, what: &str, ready: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        self.wait_js(what, ready).await;
    }

    /// Opens a new tab and makes it the current one (the one commands go to); returns the
    /// handle of the tab that was current, to come back with [`Page::switch_to`].
    pub async fn new_tab(&self) -> WindowHandle {
        let before = self.client.window().await.expect("a current window");
        let tab = self
            .client
            .new_window(true)
            .await
            .unwrap_or_else(|e| panic!("cannot open a tab: {e}"));
        self.switch_to(tab.handle).await;
        before
    }

    /// Makes `tab` the current one.
    pub async fn switch_to(&self, tab: WindowHandle) {
        self.client
            .switch_to_window(tab)
            .await
            .unwrap_or_else(|e| panic!("cannot switch tabs: {e}"));
    }

    /// The element, once it is in the document.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .every(POLL)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("expected an element {css}: {e}"))
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Types `text` into the element (a form field).
    pub async fn type_into(&self, css: &str, text: &str) {
        self.find(css)
            .await
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("cannot type into {css}: {e}"));
    }

    /// The element's text as rendered ("" when hidden).
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    pub async fn attr(&self, css: &str, name: &str) -> String {
        self.find(css)
            .await
            .attr(name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("expected {css} to have {name}"))
    }

    pub async fn visible(&self, css: &str) -> bool {
        self.find(css).await.is_displayed().await.unwrap()
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    /// Runs `script` (a function body) in the page and decodes what it returns.
    pub async fn js<T: serde::de::DeserializeOwned>(&self, script: &str) -> T {
        self.js_with(script, vec![]).await
    }

    /// Runs `script` with `args` (`arguments[0]` …) and decodes what it returns.
    pub async fn js_with<T: serde::de::DeserializeOwned>(
        &self,
        script: &str,
        args: Vec<Value>,
    ) -> T {
        let value = self
            .client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"));
        serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("script returned {value}: {e}\n{script}"))
    }

    /// Waits until `script` returns true, checking every [`POLL`], at most [`WAIT`].
    pub async fn wait_js(&self, what: &str, script: &str) {
        self.wait_js_with(what, script, vec![]).await;
    }

    /// [`Page::wait_js`] with `args` for the script.
    pub async fn wait_js_with(&self, what: &str, script: &str, args: Vec<Value>) {
        let deadline = Instant::now() + WAIT;
        while !self.js_with::<bool>(script, args.clone()).await {
            if Instant::now() > deadline {
                panic!(
                    "expected {what} within {WAIT:?}; the page is {}",
                    self.describe().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What a failure message needs: [`PageKind::describe`] run in the current tab.
    pub async fn describe(&self) -> String {
        self.client
            .execute(self.kind.describe, vec![])
            .await
            .map_or_else(
                |e| format!("unreadable ({e})"),
                |v| v.as_str().unwrap_or("?").to_owned(),
            )
    }

    /// Presses and releases `key` wherever the focus is.
    pub async fn press(&self, key: Key) {
        self.press_char(key.into()).await;
    }

    pub async fn press_char(&self, c: char) {
        let keys = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: c })
            .then(KeyAction::Up { value: c });
        self.client
            .perform_actions(keys)
            .await
            .unwrap_or_else(|e| panic!("cannot press {c:?}: {e}"));
    }

    /// The viewport, as a phone (touch, mobile layout) or a desktop browser.
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
        let script = format!("return window.innerWidth === {width}");
        self.wait_js(&format!("a viewport {width} px wide"), &script)
            .await;
    }

    /// Saves `<test>.png`.
    pub async fn screenshot(&self) {
        self.save_screenshot(&format!("{}.png", self.name)).await;
        self.saved.store(true, Ordering::Relaxed);
    }

    /// Saves `<test>-<what>.png`.
    pub async fn screenshot_as(&self, what: &str) {
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
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        let url = format!("{}/goog/cdp/execute", self.session_url().await);
        let body = json!({ "cmd": cmd, "params": params });
        self.driver_call(&url, body)
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    /// The browser console's errors since the last call (CSP violations and uncaught
    /// exceptions among them).
    pub async fn console_errors(&self) -> Vec<String> {
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
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("screenshots")
}

pub fn find_in_path(program: &str) -> Option<PathBuf> {
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
