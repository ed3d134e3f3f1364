//! `--upstream-http 2`: every call to Unipile multiplexed over one HTTP/2 connection (prior
//! knowledge on plain HTTP, as the simulator serves it), with the same behaviour as HTTP/1.1:
//! QRs, scans, retries, and a hang-up that ends its own upstream call at once — only its stream
//! is reset, the connection and the other sessions on it go on.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::{TestGateway, WAIT, WsClient, ends_with_the_account, sim_config};
use qrlink::simulator::{Endpoint, Fault, PollOutcome};

const HTTP2: &[&str] = &["--upstream-http", "2"];

/// Opens `n` attempts at once and returns each client with its first QR's intent id.
async fn open(gw: &TestGateway, n: usize) -> Vec<(WsClient, String)> {
    let url = format!("ws://{}/ws/link/whatsapp", gw.addr);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut client = WsClient::connect(&url).await;
                let intent = client.qr().await.intent_id;
                (client, intent)
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    clients
}

/// Waits until every intent has a long poll in flight upstream.
async fn wait_for_pending_polls(gw: &TestGateway, intents: &[String]) {
    for intent in intents {
        gw.wait_for_poll(intent, PollOutcome::Pending).await;
    }
}

#[tokio::test]
async fn fifty_concurrent_attempts_share_one_upstream_connection_and_each_links_its_account() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(30), 2), HTTP2).await;
    let clients = open(&gw, 50).await;
    let intents: Vec<String> = clients.iter().map(|(_, i)| i.clone()).collect();
    assert_eq!(intents.iter().collect::<HashSet<_>>().len(), 50);
    wait_for_pending_polls(&gw, &intents).await;
    assert_eq!(
        gw.sim().connections_accepted(),
        1,
        "50 intents and 50 pending long polls over one HTTP/2 connection"
    );

    let mut finished = Vec::new();
    for (mut client, intent) in clients {
        gw.sim().scan(&intent).unwrap();
        finished.push(tokio::spawn(async move {
            ends_with_the_account(&mut client).await;
        }));
    }
    for f in finished {
        f.await.unwrap();
    }
    gw.wait_for_no_sessions().await;
    assert_eq!(gw.sim().connections_accepted(), 1);
}

#[tokio::test]
async fn past_the_streams_per_connection_the_pool_opens_another_connection() {
    let gw = TestGateway::with(
        sim_config(Duration::from_secs(30), 2),
        &["--upstream-http", "2", "--upstream-http2-streams", "4"],
    )
    .await;
    let clients = open(&gw, 10).await;
    let intents: Vec<String> = clients.iter().map(|(_, i)| i.clone()).collect();
    wait_for_pending_polls(&gw, &intents).await;
    // Ten long polls in flight, four per connection: three connections.
    assert_eq!(gw.state.upstream.http2_connections(), Some(3));
    assert!(gw.sim().connections_accepted() >= 3);

    // When the sessions end, the pool keeps one idle connection, and it is reused.
    drop(clients);
    gw.wait_for_no_sessions().await;
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let qr = client.qr().await;
    gw.wait_for_poll(&qr.intent_id, PollOutcome::Pending).await;
    assert_eq!(gw.state.upstream.http2_connections(), Some(1));
}

#[tokio::test]
async fn over_http_1_1_each_pending_long_poll_holds_its_own_connection() {
    // The contrast that makes the test above mean something: the default opens a connection
    // per call in flight.
    let gw = TestGateway::with(sim_config(Duration::from_secs(30), 2), &[]).await;
    let clients = open(&gw, 20).await;
    let intents: Vec<String> = clients.iter().map(|(_, i)| i.clone()).collect();
    wait_for_pending_polls(&gw, &intents).await;
    assert!(
        gw.sim().connections_accepted() >= 20,
        "{} connections for 20 pending polls",
        gw.sim().connections_accepted()
    );
}

#[tokio::test]
async fn a_hang_up_resets_only_its_own_stream_within_100ms() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(30), 2), HTTP2).await;
    let mut clients = open(&gw, 2).await;
    let (mut stays, stays_intent) = clients.pop().unwrap();
    let (leaves, leaves_intent) = clients.pop().unwrap();
    wait_for_pending_polls(&gw, &[stays_intent.clone(), leaves_intent.clone()]).await;

    let hung_up_at = Instant::now();
    drop(leaves);
    gw.wait_for_poll(&leaves_intent, PollOutcome::HungUp).await;
    let poll = gw
        .sim()
        .polls()
        .into_iter()
        .find(|p| p.intent_id == leaves_intent && p.outcome == PollOutcome::HungUp)
        .unwrap();
    let lag = poll.ended.unwrap().saturating_duration_since(hung_up_at);
    assert!(
        lag <= Duration::from_millis(100),
        "upstream stream closed {lag:?} after the client hung up"
    );

    // The other session's poll is still in flight on the same connection, and still answers.
    assert!(
        gw.sim()
            .polls()
            .iter()
            .any(|p| p.intent_id == stays_intent && p.outcome == PollOutcome::Pending)
    );
    gw.sim().scan(&stays_intent).unwrap();
    ends_with_the_account(&mut stays).await;
    assert_eq!(gw.sim().connections_accepted(), 1);
    gw.wait_for_no_sessions().await;
}

#[tokio::test]
async fn transient_failures_are_retried_over_the_same_connection() {
    let gw = TestGateway::with(sim_config(Duration::from_secs(30), 2), HTTP2).await;
    gw.sim()
        .push_fault(Endpoint::Intent, Fault::Status { status: 503 });
    gw.sim()
        .push_fault(Endpoint::Checkpoint, Fault::Status { status: 502 });
    let mut client = gw.connect("/ws/link/whatsapp").await;
    let qr = client.qr().await;
    assert_eq!(qr.rotation, 1);
    // The 502 poll was retried: a second poll is in flight; a scan then links the account.
    let retried = gw.sim().wait_for_polls(|polls| {
        polls.iter().filter(|p| p.intent_id == qr.intent_id).count() >= 2
            && polls
                .iter()
                .any(|p| p.intent_id == qr.intent_id && p.outcome == PollOutcome::Pending)
    });
    tokio::time::timeout(WAIT, retried)
        .await
        .expect("a second poll in flight after the 502");
    gw.sim().scan(&qr.intent_id).unwrap();
    ends_with_the_account(&mut client).await;
    assert_eq!(gw.sim().connections_accepted(), 1);
}
