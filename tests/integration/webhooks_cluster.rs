//! Webhooks in cluster mode: the outbox is a Redis Stream read by a consumer group (a real
//! redis-server on a free port), so an outcome is delivered once whichever node takes it, a
//! node killed with deliveries pending leaves them to another node (same `webhook-id`, same
//! body), a retry one node scheduled is made by another when due, and Redis keeps nothing of
//! what was delivered. Every webhook is checked with the official `standardwebhooks` library.

use std::collections::HashSet;
use std::time::Duration;

use qrlink::notify::journal::Status;
use serde_json::json;

use crate::common::receiver::{Answer, Received, Receiver};
use crate::common::redis::TestRedis;
use crate::common::{self, TestGateway, WAIT, WsClient, sim_config};
use crate::webhooks::{SECRET, verified};

/// The outbox's keys under `prefix` (src/notify/redis_outbox.rs).
fn stream(prefix: &str) -> String {
    format!("{prefix}{{webhooks}}")
}

/// Flags of a node `name` that POSTs outcomes to `receiver` through the Redis outbox.
fn node_args(redis: &TestRedis, prefix: &str, name: &str, receiver: &Receiver) -> Vec<String> {
    [
        "--redis-url",
        &redis.url(),
        "--redis-prefix",
        prefix,
        "--node-id",
        name,
        "--resume-grace",
        "60s",
        "--webhook-url",
        &receiver.url(),
        "--webhook-secret",
        SECRET,
    ]
    .map(str::to_owned)
    .to_vec()
}

async fn node(first: Option<&TestGateway>, args: &[String], extra: &[&str]) -> TestGateway {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    match first {
        None => TestGateway::with(sim_config(Duration::from_secs(30), 3), &all).await,
        Some(first) => TestGateway::beside(first, &all).await,
    }
}

/// A WhatsApp attempt on the node at `addr`, cancelled once its QR is shown; its session id.
async fn cancelled_on(addr: &str) -> String {
    let mut c = WsClient::connect(&format!("ws://{addr}/ws/link/whatsapp")).await;
    let session = c.frame().await.session;
    c.send_json(json!({"type": "cancel"})).await;
    common::frames_until_close(&mut c).await;
    session
}

/// What the outbox holds in Redis: stream entries, webhooks pending, retries waiting.
async fn held(redis: &TestRedis, prefix: &str) -> (usize, usize, usize) {
    let stream = stream(prefix);
    redis::pipe()
        .cmd("XLEN")
        .arg(&stream)
        .cmd("ZCARD")
        .arg(format!("{stream}:pending"))
        .cmd("ZCARD")
        .arg(format!("{stream}:due"))
        .query_async(&mut redis.conn().await)
        .await
        .unwrap()
}

/// Waits until Redis holds no webhook: none in the stream (so none in flight anywhere), none
/// pending, none waiting for a retry.
async fn wait_until_nothing_held(redis: &TestRedis, prefix: &str) {
    let done = tokio::time::timeout(WAIT, async {
        while held(redis, prefix).await != (0, 0, 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "Redis still holds (stream, pending, due) = {:?}",
        held(redis, prefix).await
    );
}

/// Per consumer, the entries it took and has not settled.
async fn pending_per_node(redis: &TestRedis, prefix: &str) -> Vec<(String, String)> {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream(prefix))
        .arg("deliverers")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let redis::Value::Array(parts) = summary else {
        panic!("{summary:?}")
    };
    match parts.into_iter().nth(3) {
        Some(redis::Value::Array(per)) => per
            .into_iter()
            .map(|p| redis::from_redis_value::<(String, String)>(p).unwrap())
            .collect(),
        _ => Vec::new(),
    }
}

fn ids(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect()
}

/// The ids a node's journal shows delivered.
fn delivered_by(gw: &TestGateway) -> HashSet<String> {
    gw.state
        .notifier
        .deliveries()
        .recent
        .into_iter()
        .filter(|e| e.status == Status::Delivered)
        .map(|e| e.id.to_string())
        .collect()
}

#[tokio::test]
async fn in_cluster_mode_each_outcome_is_delivered_once_by_one_node_and_redis_keeps_none_of_them() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let prefix = "qrw1:";
    let receiver = Receiver::start().await;
    let a = node(None, &node_args(&redis, prefix, "a", &receiver), &[]).await;
    let b = node(Some(&a), &node_args(&redis, prefix, "b", &receiver), &[]).await;

    let mut sessions = Vec::new();
    let mut keys_after_first_round = None;
    for round in [10, 20] {
        // Half the outcomes on each node; both nodes read the group.
        let ended = (0..round).map(|i| {
            let addr = if i % 2 == 0 { a.addr } else { b.addr };
            async move { cancelled_on(&addr.to_string()).await }
        });
        sessions.extend(futures_util::future::join_all(ended).await);
        receiver.wait_for(sessions.len()).await;
        wait_until_nothing_held(&redis, prefix).await;
        let keys: HashSet<String> = redis.keys(&stream(prefix)).await.into_iter().collect();
        match &keys_after_first_round {
            None => keys_after_first_round = Some(keys),
            Some(first) => assert_eq!(&keys, first, "the outbox's keys grew"),
        }
    }
    // Delivered: the stream is trimmed to nothing; only the stream (it holds the group) is
    // left, no set of pending webhooks or retries.
    assert_eq!(
        keys_after_first_round.unwrap(),
        HashSet::from([stream(prefix)])
    );

    // Nothing is pending anywhere any more: every webhook that will ever arrive has.
    let received = receiver.received();
    assert_eq!(received.len(), 30, "one webhook per outcome, no more");
    let mut told = HashSet::new();
    for r in &received {
        let body = verified(SECRET, r);
        assert_eq!(body["type"], "link.abandoned");
        assert!(
            told.insert(body["data"]["session"].as_str().unwrap().to_owned()),
            "a session told twice: {body}"
        );
    }
    assert_eq!(told, sessions.into_iter().collect::<HashSet<_>>());
    let unique: HashSet<String> = ids(&received).into_iter().collect();
    assert_eq!(unique.len(), 30);
    // Each was delivered by one node: the two journals split them.
    let (by_a, by_b) = (delivered_by(&a), delivered_by(&b));
    assert!(
        by_a.is_disjoint(&by_b),
        "delivered by both: {by_a:?} {by_b:?}"
    );
    assert_eq!(by_a.union(&by_b).cloned().collect::<HashSet<_>>(), unique);
    assert_eq!(a.state.notifier.deliveries().outbox, "redis");
}

#[tokio::test]
async fn a_node_killed_with_deliveries_pending_leaves_them_to_another_node_under_the_same_id() {
    const N: usize = 5;
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let prefix = "qrw2:";
    // A's attempts hang (it is killed during them); B's are answered.
    let receiver = Receiver::scripted(std::iter::repeat_n(Answer::Hang, N)).await;
    let upstream = common::TestSimulator::start(sim_config(Duration::from_secs(30), 3)).await;
    let a_args = node_args(&redis, prefix, "a", &receiver);
    let mut a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    a_args.extend(["--webhook-timeout", "60s"]);
    // Node A is a process of its own, so it can be killed outright.
    let mut a = common::binary::start_binary_with(&upstream.url(), "info", &a_args, &[]).await;
    for _ in 0..N {
        cancelled_on(&a.addr).await;
    }
    let from_a = receiver.wait_for(N).await;
    assert_eq!(
        pending_per_node(&redis, prefix).await,
        vec![("a".to_owned(), N.to_string())],
        "A holds every delivery, unsettled"
    );
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();

    // B claims what A left once it has been idle 2 s.
    let b = node(
        None,
        &node_args(&redis, prefix, "b", &receiver),
        &["--webhook-claim-idle", "2s"],
    )
    .await;
    let all = receiver.wait_for(2 * N).await;
    let from_b = &all[N..];
    let mut a_ids = ids(&from_a);
    let mut b_ids = ids(from_b);
    a_ids.sort();
    b_ids.sort();
    assert_eq!(b_ids, a_ids, "B delivers A's webhooks under their ids");
    for r in from_b {
        let body = verified(SECRET, r);
        assert_eq!(body["type"], "link.abandoned");
        assert_eq!(body["data"]["node"], "a", "the body as A queued it");
        let id = r.header("webhook-id");
        let sent_by_a = from_a
            .iter()
            .find(|x| x.header("webhook-id") == id)
            .unwrap();
        assert_eq!(r.body, sent_by_a.body, "the same body, byte for byte");
    }
    wait_until_nothing_held(&redis, prefix).await;
    assert_eq!(delivered_by(&b), b_ids.into_iter().collect::<HashSet<_>>());
    assert_eq!(receiver.received().len(), 2 * N);
}

#[tokio::test]
async fn a_retry_scheduled_on_one_node_is_made_by_another_when_due() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let prefix = "qrw3:";
    let receiver = Receiver::scripted([Answer::Status(500)]).await;
    // The first retry comes 5 s × 0.4 = 2 s (±20 %) after the failed attempt.
    let scale = ["--webhook-retry-scale", "0.4"];
    let mut a = node(None, &node_args(&redis, prefix, "a", &receiver), &scale).await;
    cancelled_on(&a.addr.to_string()).await;
    receiver.wait_for(1).await;
    tokio::time::timeout(WAIT, async {
        while held(&redis, prefix).await != (0, 1, 1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the retry waits in Redis");
    // A stops before it is due; the retry is not lost with A.
    a.shut_down();
    tokio::time::timeout(WAIT, a.served.take().unwrap())
        .await
        .expect("A stops")
        .unwrap()
        .unwrap();
    let a_view = a.state.notifier.deliveries();
    assert_eq!(a_view.recent[0].status, Status::Retrying, "{a_view:?}");

    let b = node(None, &node_args(&redis, prefix, "b", &receiver), &scale).await;
    let both = receiver.wait_for(2).await;
    assert_eq!(
        both[1].header("webhook-id"),
        both[0].header("webhook-id"),
        "the retry under the same id"
    );
    assert_eq!(both[1].body, both[0].body);
    verified(SECRET, &both[1]);
    let gap = both[1].at - both[0].at;
    assert!(
        gap >= Duration::from_millis(1600),
        "made when due (≥ 1.6 s after the first), not at once: {gap:?}"
    );
    wait_until_nothing_held(&redis, prefix).await;
    let b_view = b.state.notifier.deliveries();
    let entry = &b_view.recent[0];
    assert_eq!(
        (entry.id.as_ref(), entry.status, entry.attempts),
        (both[0].header("webhook-id"), Status::Delivered, 2),
        "B made the second attempt, counting A's"
    );
}

/// The outbox's failed Redis calls so far (`/metrics`; the recorder is the test binary's).
async fn outbox_errors(gw: &TestGateway) -> u64 {
    let text = reqwest::get(gw.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("qrlink_webhook_outbox_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Polls `check` every 20 ms until it holds, at most [`WAIT`].
async fn until<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    tokio::time::timeout(WAIT, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

#[tokio::test]
async fn while_redis_is_down_an_outcome_waits_in_the_node_and_is_delivered_once_it_is_back() {
    let Some(mut redis) = TestRedis::start().await else {
        return;
    };
    let prefix = "qrw4:";
    let receiver = Receiver::start().await;
    let a = node(None, &node_args(&redis, prefix, "a", &receiver), &[]).await;
    let mut c = a.connect("/ws/link/whatsapp").await;
    let session = c.frame().await.session;
    let errors_before = outbox_errors(&a).await;

    redis.kill();
    c.send_json(json!({"type": "cancel"})).await;
    // The session ends at once: nothing waits on Redis.
    tokio::time::timeout(Duration::from_secs(5), common::frames_until_close(&mut c))
        .await
        .expect("the cancelled session closes while Redis is down");
    until("the webhook waits in the node", || async {
        a.state.notifier.deliveries().pending == 1
    })
    .await;
    until("the failed Redis calls are counted", || async {
        outbox_errors(&a).await > errors_before
    })
    .await;
    assert!(receiver.received().is_empty());

    // An empty Redis comes back (the stream and its group are gone): the webhook reaches it
    // and is delivered.
    redis.restart().await;
    let got = receiver.wait_for(1).await;
    let body = verified(SECRET, &got[0]);
    assert_eq!(body["data"]["session"], session.as_str());
    wait_until_nothing_held(&redis, prefix).await;
    assert_eq!(receiver.received().len(), 1);
}
