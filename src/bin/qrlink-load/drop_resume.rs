//! `--resume-on-drop URL[,URL…]` (ws mode, protocol v1.1): held sessions whose socket is lost
//! without a terminal frame (EOF, a reset, close 1006 or 1012: what a kill -9 or a SIGTERM of
//! the node in cluster mode does) resume with their last resume token on the listed nodes,
//! round robin, the way the link page does (web/app.js, "Resume").
//!
//! Schedule: the page's. The n-th attempt starts after 0.25, 0.5, 1, 2 s, then every 5 s, each
//! delay counted from the previous attempt's failure (from the drop for the first) and jittered
//! by ±15 % (deterministic per session and attempt, so that thousands of sessions dropped at
//! once do not all come back in the same millisecond), until `--resume-on-drop-within` since
//! the drop has passed.
//!
//! An attempt that is refused is retried with the next node: no connection (refused, reset, a
//! timeout), an HTTP refusal of the upgrade (503 from a draining node), a retryable `error`
//! frame (`gateway/overloaded`: the old node did not answer a handoff in time), a close that is
//! not final, no frame within the step timeout. The session is lost on `session/expired` (the
//! token is unknown: the session ended, or its record is gone), on a final close (1003, 1007,
//! 1008, 1009, 4000: what the page does not reconnect on), on a first frame that is not the
//! replay of what it had seen (`crate::resume`'s checks), or once the time is up.
//!
//! A resumed session goes on holding on the new socket until its hold ends, and may be dropped
//! and resumed again. The latency is from the drop seen by the client (the read that returned
//! EOF, an error or the Close frame) to the replayed frame read, so it includes the schedule's
//! first delay.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::time::timeout;

use crate::report::Stats;
use crate::resume::{self, Shown};
use crate::session::{Ctx, Role, SessionResult};
use crate::target;
use crate::ws_mode::{self, Next, Ws};

/// Delays before the first attempts, ms (web/app.js `RECONNECT_DELAYS_MS`).
pub const DELAYS_MS: [u64; 4] = [250, 500, 1000, 2000];
/// Then one attempt this often, ms (`RECONNECT_EVERY_MS`).
pub const EVERY_MS: u64 = 5000;
/// ± this share of each delay (`RECONNECT_JITTER`), in percent.
pub const JITTER_PCT: u64 = 15;
/// Closes the page does not reconnect on (`FINAL_CLOSE_CODES` and 4000, resumed elsewhere).
pub const FINAL_CLOSES: [u16; 5] = [1003, 1007, 1008, 1009, 4000];
/// The error code that means the token is no good any more: the session is lost.
pub const EXPIRED: &str = "session/expired";

/// Where dropped sessions resume, and for how long they try.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The nodes (address, full link URL without `resume=`), tried in turn.
    pub nodes: Vec<(SocketAddr, String)>,
    /// Drop → give up.
    pub within: Duration,
}

/// Parses `--resume-on-drop`: comma-separated gateway URLs (`ws://127.0.0.1:3192`); each keeps
/// its host and port, and takes the path and query of `link` (the run's link URL).
pub fn parse_nodes(list: &str, link: &url::Url) -> Result<Vec<(SocketAddr, String)>, String> {
    let mut nodes = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let node = url::Url::parse(part).map_err(|e| format!("--resume-on-drop {part}: {e}"))?;
        if node.scheme() != "ws" {
            return Err(format!(
                "--resume-on-drop {part}: a ws:// URL (TLS is not supported)"
            ));
        }
        let at = target::loopback_addr(&node)?;
        let mut moved = link.clone();
        moved
            .set_host(node.host_str())
            .map_err(|e| format!("--resume-on-drop {part}: {e}"))?;
        moved
            .set_port(Some(at.port()))
            .map_err(|()| format!("--resume-on-drop {part}: no port"))?;
        nodes.push((at, moved.to_string().trim_end_matches('/').to_owned()));
    }
    if nodes.is_empty() {
        return Err("--resume-on-drop needs at least one ws:// URL".to_owned());
    }
    Ok(nodes)
}

/// The wait before attempt `tries` (0 for the first) of a session: the page's schedule,
/// jittered by ±15 % from `seed` (the same seed and attempt always give the same delay).
pub fn delay(tries: u32, seed: u64) -> Duration {
    let base = DELAYS_MS.get(tries as usize).copied().unwrap_or(EVERY_MS);
    let spread = base * JITTER_PCT / 100;
    // splitmix64: an even spread from consecutive seeds.
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(tries).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Duration::from_millis(base - spread + z % (2 * spread + 1))
}

/// Whether a Close frame with `code` and no terminal frame before it is a drop to resume from.
pub fn is_drop_close(code: u16) -> bool {
    !FINAL_CLOSES.contains(&code)
}

/// What one session's drops came to.
#[derive(Debug, Clone, Default)]
pub struct DropLog {
    /// Sockets lost without a terminal frame.
    pub drops: u32,
    /// Drops that ended with the replayed frame.
    pub resumed: u32,
    /// Drop seen → replayed frame read, µs.
    pub to_replay_us: Vec<i64>,
    /// Resume attempts made.
    pub attempts: u32,
    /// Attempts retried, by why.
    pub retried: BTreeMap<String, u32>,
    /// Why the session was lost, if it was.
    pub lost: Option<String>,
}

/// What a first frame on a resume socket means.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The replay: the session is back.
    Replayed,
    /// Try again (the reason, for the report).
    Retry(String),
    /// The session cannot come back (the reason).
    Lost(String),
}

/// Judges the first message read on a resume socket.
fn judge(shown: &Shown, next: Option<&Next>) -> Verdict {
    let next = match next {
        None => return Verdict::Retry("replay_timeout".to_owned()),
        Some(next) => next,
    };
    match next {
        Next::Frame(frame, _) if frame.kind == "error" => {
            let code = frame.code.as_deref().unwrap_or_default();
            if code == EXPIRED {
                Verdict::Lost(EXPIRED.to_owned())
            } else {
                Verdict::Retry(format!("error_{code}"))
            }
        }
        Next::Frame(frame, _) => match resume::check_replay(shown, frame) {
            Ok(_) => Verdict::Replayed,
            Err(kind) => Verdict::Lost(kind),
        },
        Next::Close(code) if is_drop_close(*code) => Verdict::Retry(format!("closed_{code}")),
        Next::Close(code) => Verdict::Lost(format!("closed_{code}")),
        Next::Gone(kind) => Verdict::Retry(kind.clone()),
    }
}

/// Resumes session `i` after its socket was lost at `dropped`: attempts on the plan's nodes in
/// turn until the replayed frame, which `shown` then takes; the reason it is lost otherwise.
pub async fn recover(
    ctx: &Ctx,
    plan: &Plan,
    i: u64,
    shown: &mut Shown,
    dropped: Instant,
    log: &mut DropLog,
) -> Result<Ws, String> {
    log.drops += 1;
    let give_up = dropped + plan.within;
    let seed = i.wrapping_mul(1_000_003).wrapping_add(u64::from(log.drops));
    let mut tries = 0u32;
    loop {
        let at = Instant::now() + delay(tries, seed);
        if at >= give_up {
            tokio::time::sleep_until(give_up.into()).await;
            return Err("gave_up".to_owned());
        }
        tokio::time::sleep_until(at.into()).await;
        let (addr, url) = &plan.nodes[((i + u64::from(tries)) % plan.nodes.len() as u64) as usize];
        tries += 1;
        log.attempts += 1;
        let mut retry = |why: String| *log.retried.entry(why).or_insert(0) += 1;
        let mut ws =
            match ws_mode::open_at(ctx, *addr, i, &resume::resume_url(url, &shown.token)).await {
                Ok(ws) => ws,
                Err(kind) => {
                    retry(kind);
                    continue;
                }
            };
        let next = timeout(ctx.step_timeout, ws_mode::next(&mut ws)).await.ok();
        match judge(shown, next.as_ref()) {
            Verdict::Replayed => {
                log.resumed += 1;
                log.to_replay_us.push(dropped.elapsed().as_micros() as i64);
                if let Some(Next::Frame(frame, _)) = &next {
                    shown.saw(frame);
                }
                return Ok(ws);
            }
            Verdict::Retry(why) => retry(why),
            Verdict::Lost(why) => return Err(why),
        }
    }
}

/// The `--resume-on-drop` part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct DropReport {
    /// The nodes tried, in turn.
    pub nodes: Vec<String>,
    /// The reconnect schedule, in words.
    pub schedule: String,
    /// `--resume-on-drop-within`, ms.
    pub within_ms: u64,
    /// Held sessions that reached their first QR.
    pub held: u64,
    /// Of those, sessions that lost their socket at least once.
    pub sessions_dropped: u64,
    /// Sockets lost without a terminal frame, in all.
    pub drops: u64,
    /// Drops that ended with the replayed frame (`replay: true`, checked).
    pub resumed: u64,
    /// Sessions that did not come back, and why (`session/expired`, `gave_up`, …).
    pub lost: u64,
    /// See `lost`.
    pub lost_by_kind: BTreeMap<String, u64>,
    /// Resume attempts made.
    pub attempts: u64,
    /// Attempts retried, by why (`connect_ConnectionRefused`, `handshake_http_503`, …).
    pub retried: BTreeMap<String, u64>,
    /// Drop seen by the client → replayed frame read, ms.
    pub drop_to_replay_ms: Stats,
}

impl DropReport {
    /// Puts the figures together from the held sessions' logs.
    pub fn new(plan: &Plan, results: &[SessionResult]) -> DropReport {
        let mut report = DropReport {
            nodes: plan.nodes.iter().map(|(at, _)| at.to_string()).collect(),
            schedule: format!(
                "after {} ms, then every {EVERY_MS} ms (±{JITTER_PCT} %), round robin",
                DELAYS_MS.map(|d| d.to_string()).join(", ")
            ),
            within_ms: plan.within.as_millis() as u64,
            held: 0,
            sessions_dropped: 0,
            drops: 0,
            resumed: 0,
            lost: 0,
            lost_by_kind: BTreeMap::new(),
            attempts: 0,
            retried: BTreeMap::new(),
            drop_to_replay_ms: Stats::default(),
        };
        let mut latencies = Vec::new();
        for r in results.iter().filter(|r| r.role == Role::Hold) {
            if r.first_qr_at.is_some() {
                report.held += 1;
            }
            let Some(log) = &r.dropped else { continue };
            if log.drops > 0 {
                report.sessions_dropped += 1;
            }
            report.drops += u64::from(log.drops);
            report.resumed += u64::from(log.resumed);
            report.attempts += u64::from(log.attempts);
            for (why, n) in &log.retried {
                *report.retried.entry(why.clone()).or_insert(0) += u64::from(*n);
            }
            if let Some(why) = &log.lost {
                report.lost += 1;
                *report.lost_by_kind.entry(why.clone()).or_insert(0) += 1;
            }
            latencies.extend_from_slice(&log.to_replay_us);
        }
        report.drop_to_replay_ms = Stats::of_micros(latencies);
        report
    }

    /// Lines for the table.
    pub fn table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "resume on drop ({}): {} held, {} dropped ({} drops), {} resumed, {} lost; {} attempts",
            self.nodes.join(", "),
            self.held,
            self.sessions_dropped,
            self.drops,
            self.resumed,
            self.lost,
            self.attempts,
        );
        let st = &self.drop_to_replay_ms;
        let _ = writeln!(
            out,
            "  drop -> replay     n {} p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms",
            st.n, st.p50, st.p90, st.p99, st.max
        );
        for (name, map) in [("lost", &self.lost_by_kind), ("retried", &self.retried)] {
            if !map.is_empty() {
                let f: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(out, "  {name}: {}", f.join(", "));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws_mode::Frame;

    fn frame(json: &str) -> Frame {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn nodes_keep_their_host_and_port_and_take_the_link_path() {
        let link = url::Url::parse("ws://127.0.0.1:3191/ws/link/whatsapp?qr=svg").unwrap();
        let nodes = parse_nodes("ws://127.0.0.1:3192, ws://127.0.0.1:3193/", &link).unwrap();
        let urls: Vec<&str> = nodes.iter().map(|(_, u)| u.as_str()).collect();
        assert_eq!(
            urls,
            [
                "ws://127.0.0.1:3192/ws/link/whatsapp?qr=svg",
                "ws://127.0.0.1:3193/ws/link/whatsapp?qr=svg"
            ]
        );
        assert_eq!(nodes[1].0.port(), 3193);
        for bad in [
            "",
            " , ",
            "http://127.0.0.1:3192",
            "ws://192.0.2.7:3192",
            "nope",
        ] {
            assert!(parse_nodes(bad, &link).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_schedule_is_the_pages_with_bounded_jitter() {
        for seed in 0..500u64 {
            for (tries, base) in [
                (0, 250),
                (1, 500),
                (2, 1000),
                (3, 2000),
                (4, 5000),
                (9, 5000),
            ] {
                let d = delay(tries, seed).as_millis() as u64;
                let spread = base * JITTER_PCT / 100;
                assert!(
                    (base - spread..=base + spread).contains(&d),
                    "attempt {tries}, seed {seed}: {d} ms"
                );
                assert_eq!(delay(tries, seed), delay(tries, seed), "deterministic");
            }
        }
        // Sessions dropped together spread out: many distinct first delays.
        let firsts: std::collections::BTreeSet<u128> =
            (0..1000).map(|s| delay(0, s).as_millis()).collect();
        assert!(firsts.len() > 50, "{} distinct delays", firsts.len());
    }

    #[test]
    fn refusals_are_retried_and_expiry_or_final_closes_lose_the_session() {
        let first = frame(
            r#"{"type":"qr","session":"ses_a","seq":3,"rotation":2,"intent_id":"i","resume":"ses_a.t"}"#,
        );
        let shown = Shown::from_first(&first).unwrap();
        let f = |json: &str| Next::Frame(frame(json), json.len());
        let replay = f(
            r#"{"type":"qr","session":"ses_a","seq":3,"rotation":2,"replay":true,"resume":"ses_a.t"}"#,
        );
        assert_eq!(judge(&shown, Some(&replay)), Verdict::Replayed);
        let cases = [
            (
                Some(f(r#"{"type":"error","code":"session/expired"}"#)),
                Verdict::Lost("session/expired".to_owned()),
            ),
            (
                Some(f(r#"{"type":"error","code":"gateway/overloaded"}"#)),
                Verdict::Retry("error_gateway/overloaded".to_owned()),
            ),
            (
                Some(f(
                    r#"{"type":"qr","session":"ses_a","seq":3,"rotation":2,"resume":"ses_a.t"}"#,
                )),
                Verdict::Lost("resume_not_a_replay".to_owned()),
            ),
            (
                Some(Next::Close(1012)),
                Verdict::Retry("closed_1012".to_owned()),
            ),
            (
                Some(Next::Close(1008)),
                Verdict::Lost("closed_1008".to_owned()),
            ),
            (
                Some(Next::Close(4000)),
                Verdict::Lost("closed_4000".to_owned()),
            ),
            (
                Some(Next::Gone("io_ConnectionReset".to_owned())),
                Verdict::Retry("io_ConnectionReset".to_owned()),
            ),
            (None, Verdict::Retry("replay_timeout".to_owned())),
        ];
        for (next, want) in cases {
            assert_eq!(judge(&shown, next.as_ref()), want);
        }
        assert!(is_drop_close(1006) && is_drop_close(1012) && is_drop_close(1001));
        assert!(!is_drop_close(1008) && !is_drop_close(4000));
    }

    #[test]
    fn the_report_counts_drops_resumes_losses_and_the_latencies() {
        let plan = Plan {
            nodes: vec![
                ("127.0.0.1:3192".parse().unwrap(), "ws://a".to_owned()),
                ("127.0.0.1:3193".parse().unwrap(), "ws://b".to_owned()),
            ],
            within: Duration::from_secs(120),
        };
        let held = |log: Option<DropLog>| {
            let mut r = SessionResult::new(Role::Hold);
            r.first_qr_at = Some(Instant::now());
            r.dropped = log.map(Box::new);
            r
        };
        let resumed = |us: &[i64]| DropLog {
            drops: us.len() as u32,
            resumed: us.len() as u32,
            to_replay_us: us.to_vec(),
            attempts: us.len() as u32 + 1,
            retried: BTreeMap::from([("handshake_http_503".to_owned(), 1)]),
            lost: None,
        };
        let results = vec![
            held(None),
            held(Some(resumed(&[2_100_000]))),
            held(Some(resumed(&[2_500_000, 900_000]))),
            held(Some(DropLog {
                drops: 1,
                attempts: 1,
                lost: Some(EXPIRED.to_owned()),
                ..DropLog::default()
            })),
            SessionResult::new(Role::Scan),
        ];
        let r = DropReport::new(&plan, &results);
        assert_eq!(
            (r.held, r.sessions_dropped, r.drops, r.resumed, r.lost),
            (4, 3, 4, 3, 1)
        );
        assert_eq!(r.attempts, 6);
        assert_eq!(r.retried["handshake_http_503"], 2);
        assert_eq!(r.lost_by_kind[EXPIRED], 1);
        assert_eq!(r.drop_to_replay_ms.n, 3);
        assert_eq!(r.drop_to_replay_ms.p50, 2100.0);
        assert_eq!(r.drop_to_replay_ms.max, 2500.0);
        let mut table = String::new();
        r.table(&mut table);
        assert!(
            table.contains("4 held, 3 dropped (4 drops), 3 resumed, 1 lost"),
            "{table}"
        );
        assert!(table.contains("p99 2500.0 max 2500.0 ms"), "{table}");
        assert!(table.contains("lost: session/expired 1"), "{table}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["drop_to_replay_ms"]["p99"], 2500.0);
        assert_eq!(json["nodes"][1], "127.0.0.1:3193");
    }
}
