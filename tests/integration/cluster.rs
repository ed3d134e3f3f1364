//! Cluster mode (DESIGN.md section 9): two gateway nodes in front of one simulator, sharing a
//! real redis-server that the test starts on a free port. A session started on node A resumes
//! on node B, an operator's DELETE on B reaches A's socket, a resume on B takes A's socket over,
//! and a node that shuts down leaves its sessions for the other one (close 1012).

use std::time::Duration;

use qrlink::link::protocol::{Envelope, ServerFrame, close, codes};
use qrlink::simulator::PollOutcome;
use qrlink::store::WatchEvent;

use crate::common::redis::TestRedis;
use crate::common::{
    self, Next, TestGateway, WAIT, WsClient, intent_of, intents_started, qr_envelope, token_of,
};

/// Gateway nodes named `names`, sharing `redis` under a prefix of their own and one simulator;
/// QRs that outlive the test, a grace long enough for every resume.
pub(crate) async fn nodes(redis: &TestRedis, prefix: &str, names: &[&str]) -> Vec<TestGateway> {
    let url = redis.url();
    let mut nodes: Vec<TestGateway> = Vec::new();
    for name in names {
        let args = node_args(&url, prefix, name);
        nodes.push(match nodes.first() {
            None => TestGateway::with(common::sim_config(Duration::from_secs(30), 3), &args).await,
            Some(first) => TestGateway::beside(first, &args).await,
        });
    }
    // Every heartbeat is in (each node sees the others alive from here on), and the events
    // stream exists.
    tokio::time::timeout(WAIT, async {
        while redis.keys(&format!("{prefix}node:")).await.len() < names.len()
            || redis.keys(&format!("{prefix}events")).await.is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every node's heartbeat in Redis");
    nodes
}

/// The flags of a cluster node named `node` on Redis `url` under `prefix`, with a grace long
/// enough for every resume in these tests.
fn node_args<'a>(url: &'a str, prefix: &'a str, node: &'a str) -> [&'a str; 8] {
    [
        "--resume-grace",
        "60s",
        "--redis-url",
        url,
        "--redis-prefix",
        prefix,
        "--node-id",
        node,
    ]
}

pub(crate) async fn two_nodes(redis: &TestRedis, prefix: &str) -> (TestGateway, TestGateway) {
    let mut both = nodes(redis, prefix, &["a", "b"]).await.into_iter();
    (both.next().unwrap(), both.next().unwrap())
}

/// Once `gw` polls each session's intent again, scans it: each of `clients` (resumed from
/// `firsts`, in order) then ends with the account.
async fn scan_each_once_polled(gw: &TestGateway, firsts: &[Envelope], clients: &mut [WsClient]) {
    for (first, client) in firsts.iter().zip(clients) {
        let intent = intent_of(first);
        tokio::time::timeout(
            WAIT,
            gw.sim().wait_for_polls(|polls| {
                polls
                    .iter()
                    .any(|p| p.intent_id == intent && p.outcome == PollOutcome::Pending)
            }),
        )
        .await
        .expect("the intent is polled again");
        gw.sim().scan(&intent).unwrap();
        common::ends_with_the_account(client).await;
    }
}

async fn wait_detached(
    gw: &TestGateway,
    events: &mut tokio::sync::broadcast::Receiver<WatchEvent>,
    id: &str,
) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(WatchEvent::Detached { session, .. }) if session == id => return,
                Ok(_) => continue,
                Err(e) => panic!("events ended: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected {id} detached on {}", gw.addr));
}

#[tokio::test]
async fn a_session_started_on_one_node_resumes_on_another_and_links_on_the_same_intent() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let prefix = "qrt1:";
    let (a, b) = two_nodes(&redis, prefix).await;
    let keys_before = redis.keys(prefix).await.len();

    let mut events = a.state.store.subscribe();
    let mut client = a.connect("/ws/link/whatsapp").await;
    let first = qr_envelope(&mut client).await;
    let intent = intent_of(&first);
    a.wait_for_poll(&intent, PollOutcome::Pending).await;
    drop(client);
    wait_detached(&a, &mut events, &first.session).await;

    let mut resumed = b
        .connect(&format!("/ws/link/whatsapp?resume={}", token_of(&first)))
        .await;
    let replay = qr_envelope(&mut resumed).await;
    assert!(replay.replay, "{replay:?}");
    assert_eq!(
        (&replay.session, replay.seq, &replay.resume, &replay.frame),
        (&first.session, first.seq, &first.resume, &first.frame),
        "the qr exactly as A sent it"
    );
    // A let go of it; B polls the same intent.
    a.wait_for_no_sessions().await;
    assert_eq!(b.state.store.len(), 1);
    tokio::time::timeout(
        WAIT,
        b.sim().wait_for_polls(|polls| {
            polls
                .iter()
                .filter(|p| p.intent_id == intent && p.outcome == PollOutcome::Pending)
                .count()
                == 1
                && polls.iter().filter(|p| p.intent_id == intent).count() == 2
        }),
    )
    .await
    .expect("B polls the same intent");
    b.sim().scan(&intent).unwrap();
    let (frames, code) = common::frames_until_close(&mut resumed).await;
    match frames.as_slice() {
        [account] => {
            assert!(
                matches!(account.frame, ServerFrame::Account { .. }),
                "{account:?}"
            );
            assert_eq!(account.seq, first.seq + 1, "seq goes on across nodes");
        }
        other => panic!("expected the account alone, got {other:?}"),
    }
    assert_eq!(code, close::NORMAL);
    assert_eq!(intents_started(&a), 1, "never a second Start Auth Intent");
    b.wait_for_no_sessions().await;

    // Nothing of the session is left under the prefix: the nodes' heartbeats only.
    b.state.store.flush(WAIT).await;
    let settled = tokio::time::timeout(WAIT, async {
        while redis.keys(prefix).await.len() != keys_before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "keys left: {:?}", redis.keys(prefix).await);
}

#[tokio::test]
async fn any_node_lists_every_nodes_sessions_and_a_delete_on_b_cancels_the_socket_on_a() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let (a, b) = two_nodes(&redis, "qrt2:").await;
    let mut client = a.connect("/ws/link/whatsapp").await;
    let first = qr_envelope(&mut client).await;

    let listed: serde_json::Value = reqwest::get(b.url("/api/sessions"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{listed}");
    assert_eq!(sessions[0]["id"], first.session);
    assert_eq!(sessions[0]["node"], "a");
    assert_eq!(sessions[0]["provider"], "whatsapp");
    assert_eq!(sessions[0]["rotation"], 1);
    assert!(sessions[0].get("resume").is_none() && !listed.to_string().contains(&token_of(&first)));

    let deleted = reqwest::Client::new()
        .delete(b.url(&format!("/api/sessions/{}", first.session)))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let error = client.error().await;
    assert_eq!(error.code, codes::CANCELLED);
    assert_eq!(client.closed().await, close::NORMAL);
    a.wait_for_no_sessions().await;

    let unknown = reqwest::Client::new()
        .delete(b.url("/api/sessions/ses_nobodyhasthisone"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn a_resume_on_b_takes_over_the_socket_still_open_on_a() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let (a, b) = two_nodes(&redis, "qrt3:").await;
    let mut first_tab = a.connect("/ws/link/whatsapp").await;
    let first = qr_envelope(&mut first_tab).await;
    let intent = intent_of(&first);
    a.wait_for_poll(&intent, PollOutcome::Pending).await;

    let mut second_tab = b
        .connect(&format!("/ws/link/whatsapp?resume={}", token_of(&first)))
        .await;
    match first_tab.next().await {
        Next::Close(code) => assert_eq!(code, close::RESUMED_ELSEWHERE),
        other => panic!("expected close 4000 and no frame, got {other:?}"),
    }
    let replay = qr_envelope(&mut second_tab).await;
    assert!(replay.replay);
    a.wait_for_poll(&intent, PollOutcome::HungUp).await;
    b.sim().scan(&intent).unwrap();
    common::ends_with_the_account(&mut second_tab).await;
    assert_eq!(intents_started(&a), 1);
}

#[tokio::test]
async fn a_node_that_shuts_down_closes_its_sockets_1012_and_another_node_resumes_them_all() {
    const N: usize = 50;
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let (mut a, b) = two_nodes(&redis, "qrt4:").await;
    let mut firsts = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..N {
        let mut client = a.connect("/ws/link/whatsapp").await;
        firsts.push(qr_envelope(&mut client).await);
        clients.push(client);
    }
    a.shut_down();
    for client in &mut clients {
        match client.next().await {
            Next::Close(code) => assert_eq!(code, close::SERVICE_RESTART),
            other => panic!("expected close 1012 and no frame, got {other:?}"),
        }
    }
    if let Some(served) = a.served.take() {
        tokio::time::timeout(WAIT, served)
            .await
            .expect("A stops")
            .unwrap()
            .unwrap();
    }

    let mut resumed = Vec::new();
    for first in &firsts {
        let mut client = b
            .connect(&format!("/ws/link/whatsapp?resume={}", token_of(first)))
            .await;
        let replay = qr_envelope(&mut client).await;
        assert!(replay.replay);
        assert_eq!((replay.seq, &replay.frame), (first.seq, &first.frame));
        resumed.push(client);
    }
    scan_each_once_polled(&b, &firsts, &mut resumed).await;
    assert_eq!(intents_started(&b), N, "{N} intents, not {}", 2 * N);
    b.wait_for_no_sessions().await;
}

/// Waits until Redis has the record of each of `firsts` (a session's first QR). A frame does
/// not wait for its record (a node killed within that moment leaves the frame before it), so a
/// test kills a node only once this holds.
async fn wait_written(redis: &TestRedis, prefix: &str, firsts: &[Envelope]) {
    let mut conn = redis.conn().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for first in firsts {
        let key = format!("{prefix}{{{}}}", first.session);
        loop {
            let seq: Option<u64> = redis::AsyncCommands::hget(&mut conn, &key, "seq")
                .await
                .unwrap();
            if seq == Some(first.seq) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no record of {}'s first QR within 5 s",
                first.session
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn when_a_node_is_killed_every_session_resumes_on_another_within_the_heartbeat_and_2_s() {
    const N: usize = 50;
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let prefix = "qrt5:";
    let url = redis.url();
    let cluster_args = |node| node_args(&url, prefix, node);
    let b = TestGateway::with(
        common::sim_config(Duration::from_secs(30), 3),
        &cluster_args("b"),
    )
    .await;
    // Node A is a process of its own, so it can be killed outright.
    let mut a =
        common::binary::start_binary_with(&b.upstream.url(), "info", &cluster_args("a"), &[]).await;
    let mut firsts = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..N {
        let mut client = WsClient::connect(&format!("ws://{}/ws/link/whatsapp", a.addr)).await;
        firsts.push(qr_envelope(&mut client).await);
        clients.push(client);
    }
    wait_written(&redis, prefix, &firsts).await;
    a.child.start_kill().unwrap();
    let killed = std::time::Instant::now();
    a.child.wait().await.unwrap();
    // Their connections are reset (no close handshake): the pages see a drop and resume.
    drop(clients);
    let resumes = firsts.iter().map(|first| {
        let b = &b;
        async move {
            let mut client = b
                .connect(&format!("/ws/link/whatsapp?resume={}", token_of(first)))
                .await;
            let replay = qr_envelope(&mut client).await;
            assert!(replay.replay);
            assert_eq!((replay.seq, &replay.frame), (first.seq, &first.frame));
            client
        }
    });
    let mut resumed = futures_util::future::join_all(resumes).await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(4),
        "{N} sessions resumed {took:?} after the kill (heartbeat 2 s + 2 s)"
    );
    scan_each_once_polled(&b, &firsts, &mut resumed).await;
    assert_eq!(intents_started(&b), N);
    b.wait_for_no_sessions().await;
}

#[tokio::test]
async fn a_watcher_on_a_third_node_sees_a_session_that_moved_between_two_others_once_in_order() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let all = nodes(&redis, "qrt6:", &["a", "b", "c"]).await;
    let (a, b, c) = (&all[0], &all[1], &all[2]);
    let mut watcher = c.connect("/ws/watch").await;
    let snapshot: serde_json::Value = serde_json::from_str(&watcher.ws_text().await).unwrap();
    assert_eq!(snapshot["type"], "snapshot");

    let mut events = a.state.store.subscribe();
    let mut client = a.connect("/ws/link/whatsapp").await;
    let first = qr_envelope(&mut client).await;
    let intent = intent_of(&first);
    a.wait_for_poll(&intent, PollOutcome::Pending).await;
    drop(client);
    wait_detached(a, &mut events, &first.session).await;
    let mut resumed = b
        .connect(&format!("/ws/link/whatsapp?resume={}", token_of(&first)))
        .await;
    qr_envelope(&mut resumed).await;
    b.sim().scan(&intent).unwrap();
    common::ends_with_the_account(&mut resumed).await;

    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("closed") {
        let event: serde_json::Value = serde_json::from_str(&watcher.ws_text().await).unwrap();
        if event["session"] == first.session {
            assert!(event.get("resume").is_none(), "{event}");
            seen.push(event["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        seen,
        ["opened", "qr", "detached", "resumed", "account", "closed"],
        "each event once, in order"
    );
}

#[tokio::test]
async fn a_per_address_limit_holds_across_nodes_and_frees_up_when_a_session_ends() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let prefix = "qrt7:";
    let url = redis.url();
    let args = |node| {
        let mut args = node_args(&url, prefix, node).to_vec();
        args.extend(["--max-sessions-per-ip", "2"]);
        args
    };
    let a = TestGateway::with(common::sim_config(Duration::from_secs(30), 3), &args("a")).await;
    let b = TestGateway::beside(&a, &args("b")).await;

    let mut on_a = a.connect("/ws/link/whatsapp").await;
    qr_envelope(&mut on_a).await;
    let mut on_b = b.connect("/ws/link/whatsapp").await;
    qr_envelope(&mut on_b).await;
    for node in [&a, &b] {
        let mut third = node.connect("/ws/link/whatsapp").await;
        assert_eq!(
            third.error().await.code,
            codes::RATE_LIMITED,
            "on {}",
            node.addr
        );
        assert_eq!(third.closed().await, close::TRY_AGAIN_LATER);
    }

    // A session that ends gives its place back, on any node.
    on_b.send_json(serde_json::json!({"type": "cancel"})).await;
    assert_eq!(on_b.closed().await, close::NORMAL);
    b.wait_for_no_sessions().await;
    b.state.store.flush(WAIT).await;
    let mut again = a.connect("/ws/link/whatsapp").await;
    qr_envelope(&mut again).await;
    drop((on_a, again));
}

#[tokio::test]
async fn with_redis_frozen_for_5_s_attempts_go_on_and_other_nodes_catch_up_with_every_event() {
    const N: usize = 3;
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let (a, b) = two_nodes(&redis, "qrt8:").await;
    let mut watcher = b.connect("/ws/watch").await;
    let snapshot: serde_json::Value = serde_json::from_str(&watcher.ws_text().await).unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    let mut clients = Vec::new();
    let mut firsts = Vec::new();
    for _ in 0..N {
        let mut client = a.connect("/ws/link/whatsapp").await;
        let first = qr_envelope(&mut client).await;
        a.wait_for_poll(&intent_of(&first), PollOutcome::Pending)
            .await;
        firsts.push(first);
        clients.push(client);
    }

    redis.freeze();
    let outage = tokio::time::sleep(Duration::from_secs(5));
    // The attempts on A go on and finish without Redis; A stays ready.
    for (first, client) in firsts.iter().zip(&mut clients) {
        a.sim().scan(&intent_of(first)).unwrap();
        common::ends_with_the_account(client).await;
    }
    assert_eq!(reqwest::get(a.url("/readyz")).await.unwrap().status(), 200);
    // A new attempt is admitted too, on A's own limits.
    let mut during = a.connect("/ws/link/whatsapp").await;
    let during_first = qr_envelope(&mut during).await;
    outage.await;
    let health: serde_json::Value = reqwest::get(a.url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (health["status"].as_str(), health["redis"].as_str()),
        (Some("ok"), Some("down")),
        "{health}"
    );
    redis.thaw();

    // B's watcher then has every event of those sessions, in order, with no gap in seq.
    let mut seen: std::collections::HashMap<String, Vec<(String, Option<u64>)>> =
        Default::default();
    let done = |seen: &std::collections::HashMap<String, Vec<(String, Option<u64>)>>| {
        firsts.iter().all(|f| {
            seen.get(&f.session)
                .is_some_and(|events| events.last().is_some_and(|(t, _)| t == "closed"))
        })
    };
    while !done(&seen) {
        let event: serde_json::Value = serde_json::from_str(&watcher.ws_text().await).unwrap();
        if let Some(session) = event["session"].as_str() {
            seen.entry(session.to_owned()).or_default().push((
                event["type"].as_str().unwrap_or_default().to_owned(),
                event["seq"].as_u64(),
            ));
        }
    }
    for first in &firsts {
        let events = &seen[&first.session];
        let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            ["opened", "qr", "account", "closed"],
            "{}",
            first.session
        );
        let seqs: Vec<u64> = events.iter().filter_map(|(_, s)| *s).collect();
        assert_eq!(seqs, [1, 2], "no gap in seq for {}", first.session);
    }

    // Resume works again: the attempt opened during the outage moves to B.
    drop(during);
    let mut resumed = b
        .connect(&format!(
            "/ws/link/whatsapp?resume={}",
            token_of(&during_first)
        ))
        .await;
    let replay = qr_envelope(&mut resumed).await;
    assert!(replay.replay);
    b.sim().scan(&intent_of(&during_first)).unwrap();
    common::ends_with_the_account(&mut resumed).await;
    let health: serde_json::Value = reqwest::get(a.url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["redis"], "up", "{health}");
}

#[tokio::test]
async fn behind_nginx_a_link_attempt_survives_a_sigterm_of_the_node_it_was_on() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let (mut a, mut b) = two_nodes(&redis, "qrt9:").await;
    let Some(nginx) = common::nginx::TestNginx::start(&[a.addr.port(), b.addr.port()]).await else {
        return;
    };
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(common::nginx::SNIPPET.trim()),
        "the README shows deploy/nginx-qrlink.conf as it is"
    );
    let through = |path: &str| format!("ws://127.0.0.1:{}{path}", nginx.port);

    let mut client = WsClient::connect(&through("/ws/link/whatsapp")).await;
    let first = qr_envelope(&mut client).await;
    let intent = intent_of(&first);
    let (on, other) = if a.state.store.len() == 1 {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    on.wait_for_poll(&intent, PollOutcome::Pending).await;
    on.shut_down();
    match client.next().await {
        Next::Close(code) => assert_eq!(code, close::SERVICE_RESTART),
        other => panic!("expected close 1012 and no frame, got {other:?}"),
    }
    // The page resumes through the load balancer, which finds the node that is left.
    let mut resumed = WsClient::connect(&through(&format!(
        "/ws/link/whatsapp?resume={}",
        token_of(&first)
    )))
    .await;
    let replay = qr_envelope(&mut resumed).await;
    assert!(replay.replay);
    assert_eq!((replay.seq, &replay.frame), (first.seq, &first.frame));
    assert_eq!(other.state.store.len(), 1, "the other node has it");
    other.sim().scan(&intent).unwrap();
    common::ends_with_the_account(&mut resumed).await;
    assert_eq!(intents_started(other), 1);
}

/// `GET /api/stats` on `gw` once `done` holds for it (another node's numbers arrive with its
/// next heartbeat, within half a second).
async fn stats_when(
    gw: &TestGateway,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            last = reqwest::get(gw.url("/api/stats"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if done(&last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "expected {what}; last: {last}");
    last
}

fn node_stats<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {stats}"))
}

#[tokio::test]
async fn stats_on_any_node_show_every_nodes_counts_and_their_sums_and_a_resumed_session_counts_once()
 {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let prefix = "qrt9:";
    let (a, b) = two_nodes(&redis, prefix).await;
    let mut watcher =
        crate::common::WsClient::connect(&b.url("/ws/watch").replace("http", "ws")).await;
    assert!(watcher.ws_text().await.contains("\"snapshot\""));

    // Opened on A, linked on A.
    let mut on_a = a.connect("/ws/link/whatsapp").await;
    let first = qr_envelope(&mut on_a).await;
    // B's watcher learns where it opened.
    let opened: serde_json::Value = serde_json::from_str(&watcher.ws_text().await).unwrap();
    assert_eq!(
        (&opened["type"], &opened["session"], &opened["node"]),
        (&"opened".into(), &first.session.clone().into(), &"a".into()),
        "{opened}"
    );
    a.sim().scan(&intent_of(&first)).unwrap();
    crate::common::ends_with_the_account(&mut on_a).await;

    // Opened on A, resumed and linked on B: ended once, on B.
    let mut events = a.state.store.subscribe();
    let mut moving = a.connect("/ws/link/whatsapp").await;
    let second = qr_envelope(&mut moving).await;
    drop(moving);
    wait_detached(&a, &mut events, &second.session).await;
    let mut resumed = b
        .connect(&format!("/ws/link/whatsapp?resume={}", token_of(&second)))
        .await;
    qr_envelope(&mut resumed).await;
    b.sim().scan(&intent_of(&second)).unwrap();
    crate::common::ends_with_the_account(&mut resumed).await;

    // One left open on B.
    let mut open_on_b = b.connect("/ws/link/whatsapp").await;
    qr_envelope(&mut open_on_b).await;

    let stats = stats_when(&a, "A to see B's linked session and open one", |s| {
        s["nodes"].as_array().is_some_and(|n| n.len() == 2)
            && s["total"]["ended"]["account"] == 2
            && s["total"]["open"] == 1
    })
    .await;
    assert_eq!(
        (&stats["node"], &stats["cluster"], &stats["complete"]),
        (&"a".into(), &true.into(), &true.into())
    );
    let (sa, sb) = (node_stats(&stats, "a"), node_stats(&stats, "b"));
    assert_eq!(
        (&sa["ended"]["account"], &sa["open"]),
        (&1.into(), &0.into()),
        "{stats}"
    );
    assert_eq!(
        (&sb["ended"]["account"], &sb["open"]),
        (&1.into(), &1.into()),
        "{stats}"
    );
    assert_eq!(
        sa["ended"]["disconnected"], 0,
        "A handed the session over; it did not end there"
    );
    let counts: Vec<u64> =
        serde_json::from_value(stats["total"]["time_to_scan"]["counts"].clone()).unwrap();
    assert_eq!(counts.iter().sum::<u64>(), 2, "{stats}");
    // B answers the same numbers.
    stats_when(&b, "B to agree", |s| {
        s["total"]["ended"] == stats["total"]["ended"] && s["total"]["open"] == 1
    })
    .await;
    assert_eq!(
        redis.keys(&format!("{prefix}stats")).await.len(),
        1,
        "one hash for every node's stats"
    );

    // A leaves: its numbers go from the cluster's.
    drop(on_a);
    drop(a);
    let alone = stats_when(&b, "B alone", |s| {
        s["nodes"].as_array().is_some_and(|n| n.len() == 1)
    })
    .await;
    assert_eq!(alone["nodes"][0]["node"], "b");
    assert_eq!(alone["total"]["ended"]["account"], 1);
}

/// A node killed with four sessions: the one resumed on B links there; one an operator
/// cancels on B at once (`link.abandoned`, cancelled); the one nobody resumes is ended by B
/// once the grace has passed (its node gone, nothing else would end it): `closed` to B's
/// watchers, `link.abandoned` (disconnected) to the webhook with its state and intent, its
/// hash and directory entry gone, and the gone node out of the set of nodes. The fourth was
/// detached on A before the kill, so its hash expires before the grace since the kill has
/// passed: B ends it before its hash goes.
#[tokio::test]
async fn a_killed_nodes_session_that_nobody_resumes_ends_after_the_grace_with_its_webhook() {
    use crate::common::receiver::Receiver;
    use qrlink::http::auth::{Claims, mint, now_secs};
    const TOKENS: &str = "cluster-sweep-token-secret";
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let prefix = "qrt12:";
    let url = redis.url();
    let receiver = Receiver::start().await;
    let hooks = receiver.url();
    let args = |node| {
        [
            "--resume-grace",
            "4s",
            "--redis-url",
            &url,
            "--redis-prefix",
            prefix,
            "--node-id",
            node,
            "--webhook-url",
            &hooks,
            "--webhook-secret",
            "whsec_Y2x1c3Rlci1zd2VlcC10ZXN0",
            "--token-secret",
            TOKENS,
        ]
        .map(str::to_owned)
    };
    let b_args = args("b");
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let b = TestGateway::with(common::sim_config(Duration::from_secs(30), 3), &b_args).await;
    let mut watcher = b.connect("/ws/watch").await;
    let snapshot: serde_json::Value = serde_json::from_str(&watcher.ws_text().await).unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    let a_args = args("a");
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let mut a = common::binary::start_binary_with(&b.upstream.url(), "info", &a_args, &[]).await;
    let token = mint(
        TOKENS,
        &Claims {
            sub: "user-9".into(),
            exp: now_secs() + 300,
            iat: Some(now_secs()),
            provider: None,
            account_id: None,
            proxy: None,
        },
    );
    let mut firsts = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client =
            WsClient::connect(&format!("ws://{}/ws/link/whatsapp?token={token}", a.addr)).await;
        firsts.push(qr_envelope(&mut client).await);
        clients.push(client);
    }
    wait_written(&redis, prefix, &firsts).await;
    // The fourth's page goes away while A is up: A detaches it (its hash now lives the grace).
    let detached = &firsts[3];
    drop(clients.pop());
    let mut conn = redis.conn().await;
    let key = format!("{prefix}{{{}}}", detached.session);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let holder: Option<String> = redis::AsyncCommands::hget(&mut conn, &key, "holder")
            .await
            .unwrap();
        if holder.as_deref() == Some("") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "holder {holder:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    drop(clients);

    // The third is cancelled by an operator on B: its node is gone, so B ends it.
    let deleted = reqwest::Client::new()
        .delete(b.url(&format!("/api/sessions/{}", firsts[2].session)))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());

    // The first resumes on B and links there.
    let mut resumed = b
        .connect(&format!(
            "/ws/link/whatsapp?resume={}",
            token_of(&firsts[0])
        ))
        .await;
    assert!(qr_envelope(&mut resumed).await.replay);
    b.wait_for_poll(&intent_of(&firsts[0]), PollOutcome::Pending)
        .await;
    b.sim().scan(&intent_of(&firsts[0])).unwrap();
    common::ends_with_the_account(&mut resumed).await;

    // The second: nobody comes back for it.
    let abandoned = &firsts[1];
    let hooks = receiver.wait_for(4).await;
    let bodies: Vec<serde_json::Value> = hooks.iter().map(|h| h.json()).collect();
    let of = |session: &str| {
        bodies
            .iter()
            .find(|b| b["data"]["session"] == session)
            .unwrap_or_else(|| panic!("no webhook for {session}: {bodies:?}"))
    };
    let linked = of(&firsts[0].session);
    assert_eq!(linked["type"], "link.succeeded", "{linked}");
    // Adopted on B from Redis: the intent of its first QR, shown on A, is in its webhook.
    assert_eq!(
        linked["data"]["intent_id"],
        intent_of(&firsts[0]),
        "{linked}"
    );
    let cancelled = of(&firsts[2].session);
    assert_eq!(cancelled["type"], "link.abandoned", "{cancelled}");
    assert_eq!(cancelled["data"]["reason"], "cancelled", "{cancelled}");
    assert_eq!(
        cancelled["data"]["intent_id"],
        intent_of(&firsts[2]),
        "{cancelled}"
    );
    let hook = of(&abandoned.session);
    assert_eq!(hook["type"], "link.abandoned", "{hook}");
    assert_eq!(hook["data"]["reason"], "disconnected", "{hook}");
    assert_eq!(hook["data"]["state"], "user-9", "{hook}");
    assert_eq!(hook["data"]["intent_id"], intent_of(abandoned), "{hook}");
    assert_eq!(hook["data"]["provider"], "whatsapp", "{hook}");
    let early = of(&detached.session);
    assert_eq!(early["type"], "link.abandoned", "{early}");
    assert_eq!(early["data"]["reason"], "disconnected", "{early}");

    let mut closed = std::collections::BTreeMap::new();
    while closed.len() < 4 {
        let event: serde_json::Value = serde_json::from_str(&watcher.ws_text().await).unwrap();
        if event["type"] == "closed" {
            closed.insert(
                event["session"].as_str().unwrap().to_owned(),
                event["outcome"].as_str().unwrap().to_owned(),
            );
        }
    }
    assert_eq!(closed[&firsts[0].session], "account");
    assert_eq!(closed[&abandoned.session], "disconnected");
    assert_eq!(closed[&firsts[2].session], "cancelled");
    assert_eq!(closed[&detached.session], "disconnected");
    let key = format!("{prefix}{{{}}}", abandoned.session);
    let exists: bool = redis::AsyncCommands::exists(&mut conn, &key).await.unwrap();
    assert!(!exists, "its hash is gone");
    let directory: Vec<String> =
        redis::AsyncCommands::smembers(&mut conn, format!("{prefix}sessions"))
            .await
            .unwrap();
    assert!(!directory.contains(&abandoned.session), "{directory:?}");
    // Once nothing of A is left, A leaves the set of nodes (within a sweep or two).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let nodes: Vec<String> =
            redis::AsyncCommands::smembers(&mut conn, format!("{prefix}nodes"))
                .await
                .unwrap();
        if nodes == ["b"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nodes: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One webhook each, no more.
    assert_eq!(receiver.received().len(), 4);
}
