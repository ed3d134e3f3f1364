//! Autobahn|Testsuite cases 1–7 and 10 (fuzzingclient mode: the suite is the client) against an
//! echo endpoint built from the link socket's own stack: our upgrade
//! ([`qrlink::http::upgrade::Upgrade`], which wraps the connection in the gathering writer), the
//! link socket's tungstenite settings ([`link_socket::socket_config`], its 4 KiB message limit
//! included), text sent by [`link_socket::send_text`] (fragmented past 1 KiB), protocol errors
//! closed as the link socket closes them. The endpoint exists only in this test binary.
//!
//! The runner is kosoku from PyPI, pinned in tests/autobahn/requirements.txt
//! (`pip install -r tests/autobahn/requirements.txt`); it drives the suite's own case files.
//! tests/autobahn/kosoku_run.py calls it with `python3` (or `QRLINK_PYTHON`) and prints the
//! verdicts, which must equal tests/autobahn/expected.json case for case. Without kosoku the
//! tests say why and pass, unless `CI` is set (.ci/run installs it). `AUTOBAHN_BLESS=1`
//! rewrites the expectations from a run, still only within the rules [`check_rules`] enforces.
//!
//! What the echo endpoint does not share with the link socket, and why:
//! - It echoes instead of parsing JSON, and sends no JSON `error` frame before a close code:
//!   those are the link protocol, above the socket, and an extra message would fail every case.
//! - It echoes binary messages whole with tungstenite's `send` (the link socket refuses binary
//!   with 1003 and never sends any): most cases use binary payloads.
//!
//! The 4 KiB limit: a message over [`MAX_CLIENT_MESSAGE_BYTES`] is closed with 1009, as on the
//! link socket. Autobahn has no allowance for that in these cases (its base case grades by the
//! messages echoed and by who closed), so it grades them FAILED: they are listed in
//! [`OVERSIZED`] and must stay FAILED by a 1009 close and nothing else, and
//! `with_only_the_size_limits_raised_every_case_passes_with_none_failed` runs every case
//! against the same endpoint with only the size limits raised: 0 FAILED, the oversized cases OK. NON-STRICT is
//! allowed only where tungstenite itself has it (6.4.3, 6.4.4: it checks UTF-8 once a frame is
//! whole, not as bytes arrive).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use qrlink::http::link_socket::{
    self, close_socket, flush_after_hang_up, send_text, ws_error_kind,
};
use qrlink::http::upgrade::{Socket, Upgrade};
use qrlink::link::protocol::MAX_CLIENT_MESSAGE_BYTES;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tower_service::Service;

/// The pin of the runner (`kosoku==VERSION`), shared with .ci/run's install: the expectations
/// were made with that release, and another one may grade differently.
const REQUIREMENTS: &str = include_str!("../autobahn/requirements.txt");
/// The case groups run: framing, pings, reserved bits, opcodes, fragmentation, UTF-8, closing,
/// and auto-fragmented messages. 9 (performance, up to 16 MB) and 12–13 (compression, which
/// the gateway does not offer) are left out.
const CASES: &[&str] = &["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"];
/// Cases whose message exceeds [`MAX_CLIENT_MESSAGE_BYTES`] (64 KiB payloads, whole or in
/// frames): the endpoint closes them with 1009 before echoing anything.
const OVERSIZED: &[&str] = &[
    "1.1.6", "1.1.7", "1.1.8", "1.2.6", "1.2.7", "1.2.8", "10.1.1",
];
/// Where tungstenite's own Autobahn results are NON-STRICT too.
const NON_STRICT: &[&str] = &["6.4.3", "6.4.4"];
/// Cases kosoku may run at once: one at a time the suite takes about 9 s, mostly waiting on the
/// cases' own timers (6.4.3 and 6.4.4 take 2 s each); 8 at once, about 3 s. The verdicts were
/// the same either way.
const CONCURRENCY: usize = 8;
/// A bound on the whole run, far above what it takes (see the report it prints).
const RUN_LIMIT: Duration = Duration::from_secs(300);

const EXPECTED: &str = "tests/autobahn/expected.json";
const DRIVER: &str = "tests/autobahn/kosoku_run.py";

/// One case's verdicts, as Autobahn's report names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Verdict {
    behavior: String,
    #[serde(rename = "behaviorClose")]
    behavior_close: String,
    /// The close code the endpoint sent, if it sent one.
    #[serde(rename = "remoteCloseCode")]
    remote_close_code: Option<u16>,
}

/// A case's verdicts and how long it took (ms), as the driver prints them.
#[derive(Debug, Deserialize)]
struct Outcome {
    #[serde(flatten)]
    verdict: Verdict,
    duration: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_cases_1_to_7_and_10_give_the_committed_verdicts() {
    let Some(results) = run_suite(link_socket::socket_config(), CASES).await else {
        return;
    };
    let got: BTreeMap<String, Verdict> = results
        .into_iter()
        .map(|(case, outcome)| (case, outcome.verdict))
        .collect();
    if let Err(broken) = check_rules(&got) {
        panic!("the echo endpoint broke the rules:\n{}", broken.join("\n"));
    }
    if std::env::var_os("AUTOBAHN_BLESS").is_some() {
        std::fs::write(EXPECTED, render(&got)).expect("write the expectations");
        println!("wrote {EXPECTED} ({} cases)", got.len());
        return;
    }
    let expected: BTreeMap<String, Verdict> =
        serde_json::from_str(&std::fs::read_to_string(EXPECTED).expect("read expectations"))
            .expect("the expectations are JSON");
    check_rules(&expected).expect("the committed expectations keep the rules");
    let mut differences = Vec::new();
    for case in expected.keys().chain(got.keys()) {
        let (want, have) = (expected.get(case), got.get(case));
        if want != have && !differences.iter().any(|(c, _, _)| c == case) {
            differences.push((case.clone(), want, have));
        }
    }
    assert!(
        differences.is_empty(),
        "Autobahn verdicts differ from {EXPECTED} (a regression, or a change to bless with \
         AUTOBAHN_BLESS=1 and explain):\n{}",
        differences
            .iter()
            .map(|(case, want, have)| format!("{case}: expected {want:?}, got {have:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_the_size_limits_raised_every_case_passes_with_none_failed() {
    // The cases' largest message is 64 KiB. The write-buffer cap is raised too: the echo sends
    // binary messages whole (the gateway sends none), and a 64 KiB frame is over the 64 KiB cap;
    // text goes out in 1 KiB fragments as on the link socket and never nears it.
    let roomy = 32 * MAX_CLIENT_MESSAGE_BYTES;
    let config = link_socket::socket_config()
        .max_message_size(Some(roomy))
        .max_frame_size(Some(roomy))
        .max_write_buffer_size(2 * roomy);
    let Some(results) = run_suite(config, CASES).await else {
        return;
    };
    assert!(results.len() >= 240, "only {} cases ran", results.len());
    let mut wrong = Vec::new();
    for (case, outcome) in &results {
        let v = &outcome.verdict;
        let allowed = match v.behavior.as_str() {
            "OK" | "INFORMATIONAL" => true,
            "NON-STRICT" => NON_STRICT.contains(&case.as_str()),
            _ => false,
        };
        let oversized_ok =
            !OVERSIZED.contains(&case.as_str()) || (v.behavior == "OK" && v.behavior_close == "OK");
        if !allowed || v.behavior_close == "FAILED" || !oversized_ok {
            wrong.push(format!("{case}: {v:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "with the size limits raised, expected 0 FAILED and NON-STRICT only in {NON_STRICT:?}:\n{}",
        wrong.join("\n")
    );
}

/// What the runs must keep to, whatever is committed: nothing FAILED but the oversized cases,
/// each by a 1009 close; NON-STRICT only where tungstenite has it; nothing UNIMPLEMENTED, UNCLEAN,
/// WRONG CODE, or missing.
fn check_rules(verdicts: &BTreeMap<String, Verdict>) -> Result<(), Vec<String>> {
    let mut broken = Vec::new();
    for (case, v) in verdicts {
        let oversized = OVERSIZED.contains(&case.as_str());
        let fine = match (v.behavior.as_str(), v.behavior_close.as_str()) {
            _ if oversized => {
                v.behavior == "FAILED" && v.remote_close_code == Some(close_too_big())
            }
            ("OK" | "INFORMATIONAL", "OK" | "INFORMATIONAL") => true,
            ("NON-STRICT", "OK") => NON_STRICT.contains(&case.as_str()),
            _ => false,
        };
        if !fine {
            broken.push(format!("case {case}: {v:?}"));
        }
    }
    let groups = CASES.iter().map(|g| g.trim_end_matches('*'));
    for group in groups {
        if !verdicts.keys().any(|c| c.starts_with(group)) {
            broken.push(format!("no case of group {group}*"));
        }
    }
    for case in OVERSIZED {
        if !verdicts.contains_key(*case) {
            broken.push(format!("oversized case {case} did not run"));
        }
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(broken)
    }
}

fn close_too_big() -> u16 {
    qrlink::link::protocol::close::TOO_BIG
}

/// The expectations file: one case per line, in case order, so a change reads as a diff.
fn render(verdicts: &BTreeMap<String, Verdict>) -> String {
    let mut cases: Vec<_> = verdicts.iter().collect();
    cases.sort_by_key(|(case, _)| case_order(case));
    let lines: Vec<String> = cases
        .iter()
        .map(|(case, v)| {
            format!(
                "  {}: {}",
                serde_json::to_string(case).unwrap(),
                serde_json::to_string(v).unwrap()
            )
        })
        .collect();
    format!("{{\n{}\n}}\n", lines.join(",\n"))
}

/// "6.4.10" sorts after "6.4.9".
fn case_order(case: &str) -> Vec<u32> {
    case.split('.').map(|n| n.parse().unwrap_or(0)).collect()
}

/// The pinned kosoku version, from [`REQUIREMENTS`].
fn kosoku_version() -> &'static str {
    REQUIREMENTS
        .lines()
        .find_map(|l| l.trim().strip_prefix("kosoku=="))
        .expect("tests/autobahn/requirements.txt pins kosoku==VERSION")
}

/// Starts the echo endpoint with `config`, runs `cases` with kosoku against it, and returns
/// each case's outcome; `None` when kosoku is missing and the test should skip (not on CI).
async fn run_suite(config: WebSocketConfig, cases: &[&str]) -> Option<BTreeMap<String, Outcome>> {
    crate::common::init_logs();
    let addr = echo_server(config).await;
    let python = std::env::var("QRLINK_PYTHON").unwrap_or_else(|_| "python3".into());
    let started = Instant::now();
    let run = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(DRIVER))
        .arg(kosoku_version())
        .arg(format!("ws://{addr}"))
        .arg(CONCURRENCY.to_string())
        .args(cases)
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(RUN_LIMIT, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return skip_or_fail(&format!("{python} did not start: {e}")),
        Err(_) => panic!("kosoku did not finish within {RUN_LIMIT:?}"),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => {}
        Some(3) => return skip_or_fail(stderr.trim()),
        _ => panic!(
            "kosoku failed ({}):\n{stderr}\nstdout: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout)
        ),
    }
    let results: BTreeMap<String, Outcome> =
        serde_json::from_slice(&output.stdout).expect("the driver prints JSON");
    let mut slowest: Vec<_> = results.iter().collect();
    slowest.sort_by_key(|(_, o)| std::cmp::Reverse(o.duration));
    println!(
        "Autobahn: {} cases in {:.1?} with kosoku {}, {CONCURRENCY} at once; slowest: {}",
        results.len(),
        started.elapsed(),
        kosoku_version(),
        slowest
            .iter()
            .take(5)
            .map(|(case, o)| format!("{case} {} ms", o.duration))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Some(results)
}

/// Skips with the reason on a developer's machine; fails on CI, which must run the suite.
fn skip_or_fail<T>(reason: &str) -> Option<T> {
    let install = "pip install -r tests/autobahn/requirements.txt";
    assert!(
        std::env::var_os("CI").is_none(),
        "{reason}, and CI must run the Autobahn cases: {install} (.ci/run does)"
    );
    println!("skipping the Autobahn cases: {reason} ({install})");
    None
}

/// Serves the echo endpoint on a loopback port, on any path, for the rest of the test. The
/// HTTP/1.1 connection is served as the gateway serves it (hyper with upgrades).
async fn echo_server(config: WebSocketConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(get(move |ws: Upgrade| async move {
        ws.on_upgrade(config, echo)
    }));
    let mut make_service = app.into_make_service();
    tokio::spawn(async move {
        loop {
            let (stream, _) = qrlink::net::accept(&listener, "autobahn echo").await;
            let service = match make_service.call(()).await {
                Ok(s) => s,
                Err(never) => match never {},
            };
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                    .with_upgrades(),
            );
        }
    });
    addr
}

/// Echoes every message until the client leaves; ends as the link socket's loop ends.
async fn echo(mut socket: Socket) {
    loop {
        let sent = match socket.next().await {
            Some(Ok(Message::Text(text))) => send_text(&mut socket, text.to_string()).await,
            Some(Ok(Message::Binary(data))) => socket.send(Message::Binary(data)).await,
            // tungstenite answers pings itself; reading never yields a raw frame.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
            None | Some(Ok(Message::Close(_))) => break,
            Some(Err(e)) => match ws_error_kind(&e) {
                Some(code) => return close_socket(Box::new(socket), code, "").await,
                None => break,
            },
        };
        if sent.is_err() {
            break;
        }
    }
    flush_after_hang_up(&mut socket).await;
}
