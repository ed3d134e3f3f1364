//! Test harness: a gateway and a Unipile simulator, each on its own 127.0.0.1:0 port, talking
//! real HTTP to each other; a typed WebSocket client that speaks the protocol's frames.
#![allow(dead_code)] // each test file uses its own part of the harness

pub mod binary;
pub mod browser;
pub mod host_site;
pub mod nginx;
pub mod receiver;
pub mod redis;
pub mod scan;
pub mod tcp_proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use qrlink::link::protocol::{Envelope, ErrorFrame, QrFrame, ServerFrame};
use qrlink::simulator::{Alpn, PollOutcome, ProviderSim, SelfSigned, Simulator, SimulatorConfig};
use qrlink::state::AppState;
use qrlink::{Config, Gateway};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for any single wait in a test: generous, so a slow CI machine does not flake,
/// yet a hang fails the test instead of stalling the run.
pub const WAIT: Duration = Duration::from_secs(15);

/// The key the test simulator requires.
pub const API_KEY: &str = "test-key-5f1d2c";

/// The Telegram 2FA password of the test simulator.
pub const TWOFA: &str = "correct horse";

/// Logs go to a sink unless `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Fast simulator timings: QRs that live `ttl`, `count` of them.
pub fn sim_config(ttl: Duration, count: u32) -> SimulatorConfig {
    let mut config = SimulatorConfig::demo_defaults(API_KEY);
    config.providers = vec![
        ProviderSim::new("whatsapp", ttl, count),
        ProviderSim::new("google_messages", ttl, count),
        ProviderSim {
            twofa_password: Some(TWOFA.to_owned()),
            ..ProviderSim::new("telegram", ttl, count)
        },
    ];
    config.scan_base_url = None;
    config
}

/// Serves a simulator on 127.0.0.1:0 until dropped.
pub struct TestSimulator {
    pub sim: Simulator,
    pub addr: SocketAddr,
    /// Set when it serves HTTPS: its self-signed certificate, written to a PEM file (removed
    /// on drop).
    pub cert_file: Option<std::path::PathBuf>,
    _stop: oneshot::Sender<()>,
}

impl Drop for TestSimulator {
    fn drop(&mut self) {
        if let Some(file) = &self.cert_file {
            let _ = std::fs::remove_file(file);
        }
    }
}

impl TestSimulator {
    pub async fn start(config: SimulatorConfig) -> TestSimulator {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sim = Simulator::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(sim.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        TestSimulator {
            sim,
            addr,
            cert_file: None,
            _stop: stop,
        }
    }

    /// The simulator over HTTPS (as `qrlink simulate --tls --alpn …`), reached as `localhost`.
    pub async fn start_tls(config: SimulatorConfig, alpn: Alpn) -> TestSimulator {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = SelfSigned::generate(&[], alpn).unwrap();
        let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cert_file =
            std::env::temp_dir().join(format!("qrlink-test-{}-{n}.pem", std::process::id()));
        std::fs::write(&cert_file, &tls.cert_pem).unwrap();
        let sim = Simulator::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(sim.clone().serve_tls(listener, tls.acceptor, async move {
            let _ = stopped.await;
        }));
        TestSimulator {
            sim,
            addr,
            cert_file: Some(cert_file),
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        match self.cert_file {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }
}

/// A gateway on 127.0.0.1:0 in front of its own simulator; shuts down when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub upstream: Arc<TestSimulator>,
    stop: Option<oneshot::Sender<()>>,
    pub served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    /// QRs of 300 ms, three of them: long enough for a test to act on a QR, short enough that
    /// the whole rotation-to-timeout flow takes about a second.
    pub async fn start() -> TestGateway {
        Self::with(sim_config(Duration::from_millis(300), 3), &[]).await
    }

    pub async fn with(sim: SimulatorConfig, extra_args: &[&str]) -> TestGateway {
        Self::in_front_of(TestSimulator::start(sim).await, extra_args).await
    }

    /// A gateway in front of `upstream` (an HTTPS one is trusted with `--upstream-ca-file`).
    pub async fn in_front_of(upstream: TestSimulator, extra_args: &[&str]) -> TestGateway {
        init_logs();
        Self::serve(Arc::new(upstream), extra_args).await
    }

    /// Another gateway (another node, in cluster tests) in front of `other`'s simulator.
    pub async fn beside(other: &TestGateway, extra_args: &[&str]) -> TestGateway {
        Self::serve(other.upstream.clone(), extra_args).await
    }

    async fn serve(upstream: Arc<TestSimulator>, extra_args: &[&str]) -> TestGateway {
        let mut args = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--unipile-api-url".to_owned(),
            upstream.url(),
            "--unipile-api-key".to_owned(),
            API_KEY.to_owned(),
            "--upstream-retry-budget".to_owned(),
            "3s".to_owned(),
            "--upstream-backoff".to_owned(),
            "20ms".to_owned(),
            "--shutdown-grace".to_owned(),
            "3s".to_owned(),
            // Every test client comes from 127.0.0.1; the per-address limits have their own tests.
            "--max-sessions-per-ip".to_owned(),
            "100000".to_owned(),
            "--sessions-per-ip-per-minute".to_owned(),
            "100000".to_owned(),
            // Protocol v1 (a hang-up ends the attempt) unless a test turns resume on: the v1
            // tests keep passing unchanged, and the resume tests say what they use.
            "--resume-grace".to_owned(),
            "0".to_owned(),
        ];
        if let Some(file) = &upstream.cert_file {
            args.extend(["--upstream-ca-file".to_owned(), file.display().to_string()]);
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let config = Config::from_args(args).expect("test config parses");
        let listener = TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = Gateway::new(config, addr).expect("gateway builds");
        let state = gateway.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(gateway.serve(listener, async move {
            let _ = stopped.await;
        }));
        TestGateway {
            addr,
            state,
            upstream,
            stop: Some(stop),
            served: Some(served),
        }
    }

    pub fn sim(&self) -> &Simulator {
        &self.upstream.sim
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn connect(&self, path: &str) -> WsClient {
        WsClient::connect(&format!("ws://{}{path}", self.addr)).await
    }

    /// Starts shutdown, as SIGTERM would.
    pub fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the simulator has a poll of `intent` in the given outcome.
    pub async fn wait_for_poll(&self, intent: &str, outcome: PollOutcome) {
        tokio::time::timeout(
            WAIT,
            self.sim().wait_for_polls(|polls| {
                polls
                    .iter()
                    .any(|p| p.intent_id == intent && p.outcome == outcome)
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("expected a poll of {intent} in state {outcome:?}"));
    }

    /// Waits until no session is registered (each socket task's guard removes its own).
    pub async fn wait_for_no_sessions(&self) {
        tokio::time::timeout(WAIT, self.state.store.wait_for_count(|n| n == 0))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "expected no sessions, still {:?}",
                    self.state.store.snapshot()
                )
            });
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// A program a test needs (found on PATH, or in /usr/sbin where Debian puts daemons); `None`,
/// with the reason printed, when it is missing and the test should skip. Never on CI: there a
/// missing tool fails the test, since `.ci/run` installs `package`.
pub fn required_tool(program: &str, package: &str) -> Option<std::path::PathBuf> {
    let sbin = std::path::Path::new("/usr/sbin").join(program);
    let found = browser::find_in_path(program).or_else(|| sbin.exists().then_some(sbin));
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} not found, and CI must run the tests that need it: \
             apt-get install {package} (.ci/run does)"
        );
        println!("skipping: {program} not found (apt-get install {package})");
    }
    found
}

/// A loopback port nothing listens on now (bound and released: a server started next takes it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The next frame, which must be a `qr`, with its envelope.
pub async fn qr_envelope(client: &mut WsClient) -> Envelope {
    let env = client.frame().await;
    assert!(
        matches!(env.frame, ServerFrame::Qr(_)),
        "expected a qr frame, got {env:?}"
    );
    env
}

/// The intent id of a `qr` frame.
pub fn intent_of(env: &Envelope) -> String {
    match &env.frame {
        ServerFrame::Qr(q) => q.intent_id.clone(),
        other => panic!("expected a qr frame, got {other:?}"),
    }
}

/// The resume token a frame carries.
pub fn token_of(env: &Envelope) -> String {
    env.resume
        .clone()
        .unwrap_or_else(|| panic!("expected a resume token on {env:?}"))
}

/// Start Auth Intent calls the gateway's simulator has had.
pub fn intents_started(gw: &TestGateway) -> usize {
    gw.sim()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/v2/auth/intent"))
        .count()
}

/// A WebSocket client that speaks the protocol's frames.
pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the server sent next.
#[derive(Debug)]
pub enum Next {
    Frame(Envelope),
    Close(u16),
    /// The connection ended without a Close frame.
    Eof,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        WsClient { ws }
    }

    pub async fn next(&mut self) -> Next {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("expected a message from the gateway, got nothing in time");
            match msg {
                None => return Next::Eof,
                Some(Err(e)) => panic!("websocket error: {e}"),
                Some(Ok(Message::Text(t))) => {
                    let env: Envelope = serde_json::from_str(&t)
                        .unwrap_or_else(|e| panic!("frame {t} does not parse: {e}"));
                    return Next::Frame(env);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Next::Close(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text message as it went over the wire (pings skipped).
    pub async fn ws_text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("expected a message, got nothing in time");
            match msg {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    pub async fn frame(&mut self) -> Envelope {
        match self.next().await {
            Next::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    pub async fn qr(&mut self) -> QrFrame {
        match self.frame().await.frame {
            ServerFrame::Qr(q) => q,
            other => panic!("expected a qr frame, got {other:?}"),
        }
    }

    pub async fn error(&mut self) -> ErrorFrame {
        match self.frame().await.frame {
            ServerFrame::Error(e) => e,
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    /// Expects the server's Close and returns its code.
    pub async fn closed(&mut self) -> u16 {
        match self.next().await {
            Next::Close(code) => code,
            other => panic!("expected a close, got {other:?}"),
        }
    }

    pub async fn send_json(&mut self, v: serde_json::Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }
}

/// Every frame of a session until the close, and the close code.
pub async fn frames_until_close(client: &mut WsClient) -> (Vec<Envelope>, u16) {
    let mut frames = Vec::new();
    loop {
        match client.next().await {
            Next::Frame(f) => frames.push(f),
            Next::Close(code) => return (frames, code),
            Next::Eof => panic!("connection ended without a close after {frames:?}"),
        }
    }
}

/// Reads to the close: the account is the last frame, then close 1000.
pub async fn ends_with_the_account(client: &mut WsClient) {
    let (frames, code) = frames_until_close(client).await;
    assert!(
        matches!(
            frames.last().map(|f| &f.frame),
            Some(ServerFrame::Account { .. })
        ),
        "expected the account last, got {frames:?}"
    );
    assert_eq!(code, qrlink::link::protocol::close::NORMAL);
}

/// A gateway in demo mode (no API key) on 127.0.0.1:0: it mounts the embedded simulator under
/// `/simulator` and calls it over HTTP itself, as `cargo run` does; shuts down when dropped.
pub struct DemoGateway {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
}

impl DemoGateway {
    /// `qr_ttl` as the flag takes it (`"30s"`, Telegram gets half), `qr_count` codes per attempt;
    /// resume off (protocol v1), as the page tests written for v1 expect.
    pub async fn start(qr_ttl: &str, qr_count: u32) -> DemoGateway {
        Self::start_with(qr_ttl, qr_count, &["--resume-grace", "0"]).await
    }

    /// [`DemoGateway::start`] with more flags (later ones win).
    pub async fn start_with(qr_ttl: &str, qr_count: u32, extra: &[&str]) -> DemoGateway {
        init_logs();
        let count = qr_count.to_string();
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--demo-qr-ttl",
            qr_ttl,
            "--demo-qr-count",
            &count,
        ];
        args.extend_from_slice(extra);
        let config = Config::from_args(args).expect("demo config parses");
        assert!(
            config.unipile_api_key.is_none(),
            "demo mode needs no API key"
        );
        let listener = TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = Gateway::new(config, addr).expect("gateway builds");
        let state = gateway.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(gateway.serve(listener, async move {
            let _ = stopped.await;
        }));
        DemoGateway {
            addr,
            state,
            stop: Some(stop),
        }
    }

    /// The embedded simulator the gateway calls.
    pub fn sim(&self) -> &Simulator {
        self.state
            .simulator
            .as_ref()
            .expect("a demo gateway embeds a simulator")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for DemoGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What the server sent next, exactly as it went over the wire.
#[derive(Debug)]
pub enum RawNext {
    Text(String),
    Close(u16),
    /// The connection ended without a Close frame.
    Eof,
}

impl WsClient {
    /// The next text message exactly as the gateway sent it (pings and pongs skipped), or the
    /// close: for checks that must see the bytes, not what a typed parser made of them.
    pub async fn next_raw(&mut self) -> RawNext {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("expected a message from the gateway, got nothing in time");
            match msg {
                None => return RawNext::Eof,
                Some(Err(e)) => panic!("websocket error: {e}"),
                Some(Ok(Message::Text(t))) => return RawNext::Text(t.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => {
                    return RawNext::Close(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("expected a text message, got {other:?}"),
            }
        }
    }
}

/// Every text message of a session until the close, exactly as sent, and the close code.
pub async fn texts_until_close(client: &mut WsClient) -> (Vec<String>, u16) {
    let mut texts = Vec::new();
    loop {
        match client.next_raw().await {
            RawNext::Text(t) => texts.push(t),
            RawNext::Close(code) => return (texts, code),
            RawNext::Eof => panic!("connection ended without a close after {texts:?}"),
        }
    }
}
