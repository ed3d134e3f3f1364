//! The Unipile simulator over real TCP: served on 127.0.0.1:0, called with reqwest, as the
//! gateway and the integration tests use it.

use std::future::Future;
use std::time::{Duration, Instant};

use qrlink::simulator::{
    ANSWERED_AT_HEADER, Endpoint, Fault, PollOutcome, PollRecord, ProviderSim, ScanError,
    Simulator, SimulatorConfig,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const KEY: &str = "sim-test-key";

/// Upper bound for every wait: a hang fails the test instead of stalling the run.
const WAIT: Duration = Duration::from_secs(10);

/// A simulator served on 127.0.0.1:0 until dropped.
struct TestSim {
    sim: Simulator,
    base: String,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl TestSim {
    async fn start(ttl: Duration, count: u32) -> TestSim {
        let mut telegram = ProviderSim::new("telegram", ttl, count);
        telegram.twofa_password = Some("hunter2".to_owned());
        let config = SimulatorConfig {
            api_key: KEY.to_owned(),
            providers: vec![ProviderSim::new("whatsapp", ttl, count), telegram],
            scan_base_url: None,
        };
        Self::with(config).await
    }

    async fn with(config: SimulatorConfig) -> TestSim {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let sim = Simulator::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(sim.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        TestSim {
            sim,
            base,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    async fn post(
        &self,
        path: &str,
        body: Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let response = within(
            self.http
                .post(format!("{}{path}", self.base))
                .header("X-API-KEY", KEY)
                .json(&body)
                .send(),
        )
        .await
        .expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        (
            status,
            headers,
            within(response.text()).await.expect("body"),
        )
    }

    async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, _, text) = self.post(path, body).await;
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("expected JSON from {path}, got {text:?}: {e}"));
        (status, json)
    }

    async fn intent(&self, provider: &str) -> String {
        let body = json!({"provider": provider, "credentials": {"qrcode": true}});
        let (status, qr) = self.post_json("/v2/auth/intent", body).await;
        assert_eq!(status, StatusCode::OK, "expected a QR object, got {qr}");
        qr["intent_id"].as_str().expect("intent_id").to_owned()
    }

    async fn poll(&self, intent_id: &str, code: &str) -> (StatusCode, Value) {
        let body = json!({"code": code, "intent_id": intent_id});
        self.post_json("/v2/auth/checkpoint", body).await
    }

    async fn wait_for(&self, pred: impl Fn(&[PollRecord]) -> bool) {
        within(self.sim.wait_for_polls(pred)).await;
    }

    /// A poll the caller abandons: sent, held by the simulator (recorded as pending), then hung
    /// up, as the gateway does when a browser drops. Returns once the hang-up is recorded.
    async fn abandoned_poll(&self, intent_id: &str, code: &str) {
        let index = self.sim.polls().len();
        let body = json!({"code": code, "intent_id": intent_id});
        let mut poll = Box::pin(self.post("/v2/auth/checkpoint", body));
        tokio::select! {
            _ = &mut poll => panic!("the poll to abandon should still be waiting"),
            () = self.wait_for(|polls| polls.get(index).is_some_and(|p| p.outcome == PollOutcome::Pending)) => {}
        }
        drop(poll);
        self.wait_for(|polls| polls[index].outcome == PollOutcome::HungUp)
            .await;
    }
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("timed out waiting")
}

fn pending_poll_on(intent_id: &str) -> impl Fn(&[PollRecord]) -> bool + '_ {
    move |polls| {
        polls
            .iter()
            .any(|p| p.intent_id == intent_id && p.outcome == PollOutcome::Pending)
    }
}

#[tokio::test]
async fn an_intent_answers_a_qr_code_object_with_an_acc_id() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let body = json!({"provider": "whatsapp", "credentials": {"qrcode": true}});
    let (status, qr) = t.post_json("/v2/auth/intent", body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(qr["object"], "AuthenticationQrCode");
    let id = qr["intent_id"].as_str().expect("intent_id");
    assert!(id.starts_with("acc_") && id.len() == 26, "got {id}");
    assert!(
        qr["qrcode"].as_str().is_some_and(|q| q.starts_with("2@")),
        "got {qr}"
    );
    assert_eq!(
        qr.as_object().map(|o| o.len()),
        Some(3),
        "only three fields: {qr}"
    );
    assert_eq!(t.sim.intent_ids(), vec![id.to_owned()]);
}

#[tokio::test]
async fn a_poll_answers_a_fresh_qr_when_the_current_one_expires() {
    let t = TestSim::start(Duration::from_millis(50), 5).await;
    let id = t.intent("whatsapp").await;
    let (status, first) = t.poll(&id, "").await;
    let (_, second) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["object"], "AuthenticationQrCode");
    assert_eq!(first["intent_id"], id.as_str());
    let issued = t.sim.issued_qrs(&id);
    assert_eq!(issued.len(), 3);
    assert_eq!(first["qrcode"], issued[1].as_str());
    assert_eq!(second["qrcode"], issued[2].as_str());
    assert!(
        issued[0] != issued[1] && issued[1] != issued[2],
        "QRs must differ: {issued:?}"
    );
}

#[tokio::test]
async fn a_poll_after_the_last_qr_expires_answers_504_provider_timeout_then_404() {
    let t = TestSim::start(Duration::from_millis(30), 2).await;
    let id = t.intent("whatsapp").await;
    let (_, rotated) = t.poll(&id, "").await;
    assert_eq!(rotated["object"], "AuthenticationQrCode");
    let (status, error) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error["object"], "Error");
    assert_eq!(error["type"], "provider/timeout");
    assert_eq!(error["status"], 504);
    assert!(
        error["req_id"].is_string() && error["title"].is_string(),
        "got {error}"
    );
    let (status, gone) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(gone["type"], "api/resource_not_found");
}

#[tokio::test]
async fn a_scan_during_a_poll_answers_the_account() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let id = t.intent("whatsapp").await;
    let poll = tokio::spawn({
        let (http, base, id) = (t.http.clone(), t.base.clone(), id.clone());
        async move {
            let response = http
                .post(format!("{base}/v2/auth/checkpoint"))
                .header("X-API-KEY", KEY)
                .json(&json!({"code": "", "intent_id": id}))
                .send()
                .await
                .expect("poll sent");
            let answered_at = response.headers().get(ANSWERED_AT_HEADER).cloned();
            (answered_at, response.json::<Value>().await.expect("json"))
        }
    });
    t.wait_for(pending_poll_on(&id)).await;
    t.sim.scan(&id).expect("scan");
    let (answered_at, account) = within(poll).await.expect("poll task");
    assert_eq!(account["object"], "Account");
    assert_eq!(account["id"], id.as_str());
    assert_eq!(account["provider"], "whatsapp");
    assert_eq!(account["status"], "running");
    assert!(
        answered_at.is_some(),
        "checkpoint answers carry {ANSWERED_AT_HEADER}"
    );
    let answered = PollOutcome::Answered {
        status: 200,
        object: "Account".to_owned(),
    };
    assert_eq!(t.sim.polls()[0].outcome, answered);
    assert_eq!(t.sim.scan(&id), Err(ScanError::NotWaitingForScan));
}

#[tokio::test]
async fn telegram_asks_for_the_2fa_password_and_accepts_only_the_right_one() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let id = t.intent("telegram").await;
    assert!(t.sim.issued_qrs(&id)[0].starts_with("tg://login?token="));
    t.sim.scan(&id).expect("scan");
    let (status, checkpoint) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(checkpoint["object"], "AuthenticationCheckpoint");
    assert_eq!(
        checkpoint["checkpoint"],
        json!({"type": "2FA", "platform": "APP"})
    );
    let (status, wrong) = t.poll(&id, "guess").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong["type"], "provider/invalid_checkpoint_code");
    let (status, account) = t.poll(&id, "hunter2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(account["object"], "Account");
}

#[tokio::test]
async fn a_relink_gives_the_account_the_old_id_and_requests_are_recorded() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let proxy = json!({"host": "proxy.example", "port": 8080, "protocol": "socks5"});
    let body = json!({"provider": "whatsapp", "credentials": {"qrcode": true},
        "account_id": "acc_old", "state": "user-42", "config": {"custom_proxy": proxy}});
    let (status, qr) = t.post_json("/v2/auth/intent", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "got {qr}");
    let id = qr["intent_id"].as_str().expect("intent_id").to_owned();
    t.sim.scan(&id).expect("scan");
    let (_, account) = t.poll(&id, "").await;
    assert_eq!(account["id"], "acc_old");
    let requests = t.sim.requests();
    assert_eq!(requests[0].path, "/v2/auth/intent");
    assert_eq!(requests[0].body, body);
    assert!(requests[0].has_api_key);
    assert_eq!(requests[1].path, "/v2/auth/checkpoint");
}

#[tokio::test]
async fn requests_without_the_right_api_key_get_401() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let url = format!("{}/v2/auth/intent", t.base);
    let body = json!({"provider": "whatsapp", "credentials": {"qrcode": true}});
    let missing = within(t.http.post(&url).json(&body).send())
        .await
        .expect("sent");
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let missing: Value = missing.json().await.expect("json");
    assert_eq!(missing["type"], "api/missing_authorization");
    let wrong = t
        .http
        .post(&url)
        .header("X-API-KEY", "nope")
        .json(&body)
        .send();
    let wrong: Value = within(wrong)
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(wrong["type"], "api/expired_authorization");
    assert_eq!(wrong["status"], 401);
    assert!(!t.sim.requests()[0].has_api_key);
    assert!(t.sim.intent_ids().is_empty());
}

#[tokio::test]
async fn bad_intent_bodies_get_400_invalid_parameters() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let bodies = [
        json!({"provider": "myspace", "credentials": {"qrcode": true}}),
        json!({"provider": "whatsapp", "credentials": {"qrcode": false}}),
        json!({"provider": "whatsapp"}),
        json!({"provider": "whatsapp", "credentials": {"qrcode": true},
               "config": {"custom_proxy": {"host": "h", "port": 99999}}}),
        json!([1, 2]),
    ];
    for body in bodies {
        let (status, error) = t.post_json("/v2/auth/intent", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "for {body}: {error}");
        assert_eq!(error["type"], "api/invalid_parameters");
    }
    let not_json = t
        .http
        .post(format!("{}/v2/auth/checkpoint", t.base))
        .header("X-API-KEY", KEY);
    let response = within(not_json.body("{oops").send()).await.expect("sent");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, _) = t.poll("acc_unknown", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn error_faults_answer_unipile_errors_and_leave_the_intent_alive() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let proxy_error = Fault::Error {
        error_type: "api/proxy_error".into(),
        status: 502,
        detail: None,
    };
    t.sim.push_fault(Endpoint::Intent, proxy_error);
    let body = json!({"provider": "whatsapp", "credentials": {"qrcode": true}});
    let (status, error) = t.post_json("/v2/auth/intent", body).await;
    assert_eq!(
        (status, &error["type"]),
        (StatusCode::BAD_GATEWAY, &json!("api/proxy_error"))
    );
    let id = t.intent("whatsapp").await;
    let restricted = Fault::Error {
        error_type: "api/account_restricted".into(),
        status: 403,
        detail: Some("Reason: free_trial_used.".into()),
    };
    t.sim.push_fault(Endpoint::Checkpoint, restricted);
    let (status, error) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error["detail"], "Reason: free_trial_used.");
    t.sim.scan(&id).expect("the intent survived the fault");
    assert_eq!(t.poll(&id, "").await.1["object"], "Account");
}

#[tokio::test]
async fn a_provider_timeout_fault_finishes_the_intent() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let id = t.intent("whatsapp").await;
    let timeout = Fault::Error {
        error_type: "provider/timeout".into(),
        status: 504,
        detail: None,
    };
    t.sim.push_fault(Endpoint::Checkpoint, timeout);
    assert_eq!(t.poll(&id, "").await.0, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(t.sim.scan(&id), Err(ScanError::Expired));
    assert_eq!(t.poll(&id, "").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn status_rate_limit_malformed_and_oauth_faults_answer_as_scripted() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let id = t.intent("whatsapp").await;
    let faults = [
        Fault::Status { status: 503 },
        Fault::RateLimited {
            retry_after_secs: 7,
        },
        Fault::Malformed,
        Fault::OauthUrl,
    ];
    for fault in faults {
        t.sim.push_fault(Endpoint::Checkpoint, fault);
    }
    let (status, headers, body) = t
        .post("/v2/auth/checkpoint", json!({"code": "", "intent_id": id}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "Service Unavailable");
    assert!(
        headers["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/plain"))
    );
    let (status, headers, body) = t
        .post("/v2/auth/checkpoint", json!({"code": "", "intent_id": id}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "7");
    assert!(body.contains("api/too_many_requests"), "got {body}");
    let (status, _, body) = t
        .post("/v2/auth/checkpoint", json!({"code": "", "intent_id": id}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        serde_json::from_str::<Value>(&body).is_err(),
        "expected a malformed body, got {body}"
    );
    let (status, oauth) = t.poll(&id, "").await;
    assert_eq!(
        (status, &oauth["object"]),
        (StatusCode::OK, &json!("OauthUrl"))
    );
    assert!(
        oauth["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://"))
    );
    let labels: Vec<String> = t
        .sim
        .polls()
        .iter()
        .map(|p| match &p.outcome {
            PollOutcome::Answered { object, .. } => object.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        labels,
        [
            "Status",
            "Error:api/too_many_requests",
            "Malformed",
            "OauthUrl"
        ]
    );
}

#[tokio::test]
async fn a_delay_fault_answers_normally_after_the_delay() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    t.sim.push_fault(Endpoint::Intent, Fault::Delay { ms: 60 });
    let started = Instant::now();
    let id = t.intent("whatsapp").await;
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert!(id.starts_with("acc_"));
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_poll_is_recorded_as_hung_up_within_100ms() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let id = t.intent("whatsapp").await;
    let poll = t.post("/v2/auth/checkpoint", json!({"code": "", "intent_id": id}));
    let mut poll = Box::pin(poll);
    // Drive the request until the simulator holds it, then drop it: reqwest closes the socket.
    tokio::select! {
        _ = &mut poll => panic!("the poll should still be waiting for a scan"),
        () = t.wait_for(pending_poll_on(&id)) => {}
    }
    let hung_up_at = Instant::now();
    drop(poll);
    t.wait_for(|polls| polls.iter().any(|p| p.outcome == PollOutcome::HungUp))
        .await;
    let ended = t.sim.polls()[0].ended.expect("an end instant");
    let lag = ended.saturating_duration_since(hung_up_at);
    assert!(
        lag < Duration::from_millis(100),
        "hang-up recorded {lag:?} after the drop"
    );
}

#[tokio::test]
async fn a_stalled_poll_never_answers_and_its_hang_up_is_recorded() {
    let t = TestSim::start(Duration::from_millis(20), 5).await;
    let id = t.intent("whatsapp").await;
    t.sim.push_fault(Endpoint::Checkpoint, Fault::Stall);
    let stalled = tokio::time::timeout(Duration::from_millis(200), t.poll(&id, "")).await;
    assert!(
        stalled.is_err(),
        "a stall must not answer, even after the QR expired"
    );
    t.wait_for(|polls| {
        polls
            .first()
            .is_some_and(|p| p.outcome == PollOutcome::HungUp)
    })
    .await;
}

#[tokio::test]
async fn concurrent_polls_on_one_intent_all_get_the_new_qr() {
    let t = TestSim::start(Duration::from_millis(80), 5).await;
    let id = t.intent("whatsapp").await;
    let (a, b) = tokio::join!(t.poll(&id, ""), t.poll(&id, ""));
    assert_eq!(
        a.1["qrcode"], b.1["qrcode"],
        "both polls see the same rotation"
    );
    assert_eq!(t.sim.issued_qrs(&id).len(), 2);
}

#[tokio::test]
async fn the_scan_page_offers_a_scan_button_and_says_when_a_code_expired() {
    let mut config = SimulatorConfig::demo_defaults(KEY);
    let t = {
        let listener_base = "http://phone.example/simulator".to_owned();
        config.scan_base_url = Some(listener_base);
        TestSim::with(config).await
    };
    let id = t.intent("whatsapp").await;
    let qr = t.sim.issued_qrs(&id)[0].clone();
    let path = qr
        .strip_prefix("http://phone.example/simulator")
        .expect("a demo scan URL");
    let page = within(t.http.get(format!("{}{path}", t.base)).send())
        .await
        .expect("sent");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("Simulated phone: link WhatsApp account?"),
        "got {html}"
    );
    assert!(html.contains("<form method=\"post\"") && html.contains(">Scan</button>"));
    let stale = format!("{}/scan/{id}?c=not-the-code", t.base);
    let html = within(t.http.get(stale).send())
        .await
        .expect("sent")
        .text()
        .await
        .expect("html");
    assert!(html.contains("expired"), "got {html}");
    let code = path.split("?c=").nth(1).expect("code");
    let form = t
        .http
        .post(format!("{}{path}", t.base))
        .form(&[("c", code)]);
    let done = within(form.send()).await.expect("sent");
    assert_eq!(done.status(), StatusCode::OK);
    assert!(done.text().await.expect("html").contains("Scanned"));
    assert_eq!(t.poll(&id, "").await.1["object"], "Account");
}

#[tokio::test]
async fn scanning_over_http_answers_json_with_404_409_or_410() {
    let t = TestSim::start(Duration::from_millis(30), 1).await;
    let id = t.intent("whatsapp").await;
    let scan = |id: &str| t.http.post(format!("{}/scan/{id}", t.base)).send();
    let ok = within(scan(&id)).await.expect("sent");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.json::<Value>().await.expect("json"), json!({"ok": true}));
    assert_eq!(
        within(scan(&id)).await.expect("sent").status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        within(scan("acc_nope")).await.expect("sent").status(),
        StatusCode::NOT_FOUND
    );
    let late = t.intent("whatsapp").await;
    tokio::time::sleep(Duration::from_millis(40)).await; // let the only QR expire
    assert_eq!(
        within(scan(&late)).await.expect("sent").status(),
        StatusCode::GONE
    );
}

#[tokio::test]
async fn the_control_api_queues_faults_scans_and_reports_intents() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let fault = json!({"endpoint": "checkpoint",
        "fault": {"kind": "error", "error_type": "api/proxy_error", "status": 502}});
    let pushed = within(
        t.http
            .post(format!("{}/_control/faults", t.base))
            .json(&fault)
            .send(),
    );
    assert_eq!(pushed.await.expect("sent").status(), StatusCode::OK);
    let bad = json!({"endpoint": "nowhere", "fault": {"kind": "stall"}});
    let refused = within(
        t.http
            .post(format!("{}/_control/faults", t.base))
            .json(&bad)
            .send(),
    );
    assert_eq!(
        refused.await.expect("sent").status(),
        StatusCode::BAD_REQUEST
    );
    let id = t.intent("whatsapp").await;
    assert_eq!(t.poll(&id, "").await.0, StatusCode::BAD_GATEWAY);
    let scanned = within(t.http.post(format!("{}/_control/scan/{id}", t.base)).send());
    assert_eq!(scanned.await.expect("sent").status(), StatusCode::OK);
    t.poll(&id, "").await;
    let report = within(
        t.http
            .get(format!("{}/_control/intents/{id}", t.base))
            .send(),
    );
    let report: Value = report.await.expect("sent").json().await.expect("json");
    assert_eq!(report["phase"], "done");
    assert_eq!(report["qrs"].as_array().map(Vec::len), Some(1));
    let polls = report["polls"].as_array().expect("polls");
    assert_eq!(polls.len(), 2);
    assert_eq!(
        polls[1]["outcome"],
        json!({"kind": "answered", "status": 200, "object": "Account"})
    );
}

#[tokio::test]
async fn shutting_down_answers_pending_polls_so_serve_returns() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let sim = Simulator::new(SimulatorConfig::demo_defaults(KEY));
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(sim.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let body = json!({"provider": "whatsapp", "credentials": {"qrcode": true}});
    let intent = http
        .post(format!("{base}/v2/auth/intent"))
        .header("X-API-KEY", KEY)
        .json(&body);
    let qr: Value = within(intent.send())
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let poll = http
        .post(format!("{base}/v2/auth/checkpoint"))
        .header("X-API-KEY", KEY)
        .json(&json!({"code": "", "intent_id": qr["intent_id"]}))
        .send();
    let poll = tokio::spawn(poll);
    within(sim.wait_for_polls(|p| p.len() == 1)).await;
    let _ = stop.send(());
    let answer = within(poll).await.expect("task").expect("answered");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    within(served)
        .await
        .expect("task")
        .expect("serve returns Ok");
}

// Polling again after a poll was abandoned (UNIPILE.md, the simulator's guess), over HTTP: each
// test hangs up a poll first, as a gateway does when the browser drops, then polls again.

/// How long the last poll took, by the simulator's own record.
fn last_poll_took(t: &TestSim) -> Duration {
    let last = t.sim.polls().pop().expect("a poll");
    last.ended.expect("ended") - last.started
}

fn outcome(status: u16, object: &str) -> PollOutcome {
    PollOutcome::Answered {
        status,
        object: object.to_owned(),
    }
}

#[tokio::test]
async fn repoll_rule_1_an_abandoned_intent_times_out_when_its_last_qr_would_have_expired() {
    let ttl = Duration::from_millis(50);
    let t = TestSim::start(ttl, 3).await;
    let id = t.intent("whatsapp").await;
    let issued_by = Instant::now();
    t.abandoned_poll(&id, "").await;
    // What the test waits for is time itself: all three QR lifetimes going by unwatched.
    tokio::time::sleep_until((issued_by + ttl * 3 + Duration::from_millis(20)).into()).await;
    let (status, error) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "got {error}");
    assert_eq!(error["type"], "provider/timeout");
    assert_eq!(t.sim.issued_qrs(&id).len(), 3, "rotated without a poll");
    let (status, gone) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(gone["type"], "api/resource_not_found");
}

#[tokio::test]
async fn repoll_rule_2_a_repoll_after_the_shown_qr_expired_answers_a_new_qr_at_once() {
    let ttl = Duration::from_millis(400);
    let t = TestSim::start(ttl, 5).await;
    let id = t.intent("whatsapp").await;
    let issued_by = Instant::now();
    t.abandoned_poll(&id, "").await;
    // Time itself again: the shown QR expiring while nobody polls.
    tokio::time::sleep_until((issued_by + ttl + Duration::from_millis(20)).into()).await;
    let (status, qr) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(qr["object"], "AuthenticationQrCode");
    let issued = t.sim.issued_qrs(&id);
    assert_eq!(issued.len(), 2, "one rotation: {issued:?}");
    assert_eq!(qr["qrcode"], issued[1].as_str());
    assert_ne!(issued[0], issued[1]);
    // A poll that waited would have lasted until the new QR's expiry, most of a lifetime.
    let took = last_poll_took(&t);
    assert!(took < ttl / 2, "answered after {took:?}, not at once");
}

#[tokio::test]
async fn repoll_rule_3_a_scan_while_the_poll_was_abandoned_answers_the_account_at_once() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let id = t.intent("whatsapp").await;
    t.abandoned_poll(&id, "").await;
    t.sim.scan(&id).expect("scan while nobody polls");
    let (status, account) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(account["object"], "Account");
    assert_eq!(account["id"], id.as_str());
    let (status, gone) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "delivered once: {gone}");
}

#[tokio::test]
async fn repoll_rules_3_and_4_telegram_asks_for_2fa_at_once_and_a_hung_up_solve_keeps_its_account()
{
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let id = t.intent("telegram").await;
    t.abandoned_poll(&id, "").await;
    t.sim.scan(&id).expect("scan while nobody polls");
    let (status, checkpoint) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(checkpoint["object"], "AuthenticationCheckpoint");
    assert_eq!(checkpoint["checkpoint"]["type"], "2FA");
    // The password is taken at once, but the caller hangs up before the answer comes.
    t.sim
        .push_fault(Endpoint::Checkpoint, Fault::LateAnswer { ms: 60_000 });
    t.abandoned_poll(&id, "hunter2").await;
    let (status, account) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(account["object"], "Account");
    assert_eq!(t.poll(&id, "").await.0, StatusCode::NOT_FOUND);
    let outcomes: Vec<PollOutcome> = t.sim.polls().into_iter().map(|p| p.outcome).collect();
    assert_eq!(
        outcomes,
        [
            PollOutcome::HungUp,
            outcome(200, "AuthenticationCheckpoint"),
            PollOutcome::HungUp,
            outcome(200, "Account"),
            outcome(404, "Error:api/resource_not_found"),
        ]
    );
}

#[tokio::test]
async fn repoll_rule_4_an_account_whose_poll_hung_up_goes_to_the_next_poll() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let id = t.intent("whatsapp").await;
    t.sim.scan(&id).expect("scan");
    // The simulator answers the Account, slowly; the caller hangs up before it arrives.
    t.sim
        .push_fault(Endpoint::Checkpoint, Fault::LateAnswer { ms: 60_000 });
    t.abandoned_poll(&id, "").await;
    let (status, account) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(account["object"], "Account");
    assert_eq!(account["id"], id.as_str());
    let (status, gone) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(gone["type"], "api/resource_not_found");
}

#[tokio::test]
async fn repoll_rule_4_a_late_answer_reaches_a_caller_that_waits_for_it() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let id = t.intent("whatsapp").await;
    t.sim.scan(&id).expect("scan");
    t.sim
        .push_fault(Endpoint::Checkpoint, Fault::LateAnswer { ms: 30 });
    let started = Instant::now();
    let (status, account) = t.poll(&id, "").await;
    assert!(started.elapsed() >= Duration::from_millis(30));
    assert_eq!(
        (status, &account["object"]),
        (StatusCode::OK, &json!("Account"))
    );
    assert_eq!(t.poll(&id, "").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn repoll_rule_5_a_repoll_before_the_qr_expired_waits_as_usual() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let id = t.intent("whatsapp").await;
    t.abandoned_poll(&id, "").await;
    let repoll = tokio::spawn({
        let (http, base, id) = (t.http.clone(), t.base.clone(), id.clone());
        async move {
            let response = http
                .post(format!("{base}/v2/auth/checkpoint"))
                .header("X-API-KEY", KEY)
                .json(&json!({"code": "", "intent_id": id}))
                .send()
                .await
                .expect("poll sent");
            response.json::<Value>().await.expect("json")
        }
    });
    t.wait_for(|polls| polls.len() == 2 && polls[1].outcome == PollOutcome::Pending)
        .await;
    // It is waiting, not answered: only the scan ends it.
    t.sim.scan(&id).expect("scan");
    let account = within(repoll).await.expect("poll task");
    assert_eq!(account["object"], "Account");
    assert_eq!(t.sim.issued_qrs(&id).len(), 1);
}

#[tokio::test]
async fn repoll_rule_6_a_scripted_resource_not_found_answers_a_repoll() {
    let t = TestSim::start(Duration::from_secs(60), 5).await;
    let id = t.intent("whatsapp").await;
    t.abandoned_poll(&id, "").await;
    let not_found = Fault::Error {
        error_type: "api/resource_not_found".into(),
        status: 404,
        detail: None,
    };
    t.sim.push_fault(Endpoint::Checkpoint, not_found);
    let (status, error) = t.poll(&id, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["object"], "Error");
    assert_eq!(error["type"], "api/resource_not_found");
    assert_eq!(error["status"], 404);
    assert_eq!(
        t.sim.polls()[1].outcome,
        outcome(404, "Error:api/resource_not_found")
    );
}
