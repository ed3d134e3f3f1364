//! Who may open a link attempt, and what no client can do to the gateway. Every check goes
//! through the real socket.

use std::time::Duration;

use crate::common::{API_KEY, TestGateway, WAIT, WsClient, frames_until_close, sim_config};
use qrlink::http::auth::{Claims, mint, now_secs};
use qrlink::link::protocol::{ServerFrame, close};
use qrlink::simulator::PollOutcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SECRET: &str = "connect-token-secret-for-tests";

async fn slow_gateway(args: &[&str]) -> TestGateway {
    TestGateway::with(sim_config(Duration::from_secs(30), 2), args).await
}

/// Opens a WebSocket with extra headers; Ok(client) or Err(HTTP status of the refusal).
async fn connect_with(
    gw: &TestGateway,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<WsClient, u16> {
    let mut req = format!("ws://{}{path}", gw.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .insert(*k, HeaderValue::from_str(v).unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")
    {
        Ok((ws, _)) => Ok(WsClient { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

#[tokio::test]
async fn browser_websockets_from_foreign_origins_are_refused_before_the_upgrade() {
    let gw = slow_gateway(&["--allowed-origins", "https://app.example"]).await;
    let own = format!("http://{}", gw.addr);
    for allowed in [own.as_str(), "https://app.example", "HTTPS://APP.EXAMPLE"] {
        let mut c = connect_with(&gw, "/ws/link/whatsapp", &[("origin", allowed)])
            .await
            .unwrap_or_else(|s| panic!("{allowed} should be allowed, got {s}"));
        c.qr().await;
    }
    for foreign in [
        "null",
        "http://app.example",
        "https://app.example:8443",
        "https://app.example.evil.com",
        "https://evil-app.example",
        "https://evilapp.example",
        "https://app.example.",
        "HTTPS://EVIL.EXAMPLE",
        "file://",
    ] {
        let refused = connect_with(&gw, "/ws/link/whatsapp", &[("origin", foreign)]).await;
        assert_eq!(refused.err(), Some(403), "{foreign} must be refused");
    }
    assert_eq!(
        gw.sim().intent_ids().len(),
        3,
        "refused origins start no upstream work"
    );
    // Clients that send no Origin are not browsers (websocat, servers) and are not checked.
    let mut cli = gw.connect("/ws/link/whatsapp").await;
    cli.qr().await;
}

fn claims(provider: Option<&str>, ttl: u64) -> Claims {
    Claims {
        sub: "user-42".into(),
        exp: now_secs() + ttl,
        iat: Some(now_secs()),
        provider: provider.map(str::to_owned),
        account_id: None,
        proxy: None,
    }
}

async fn expect_unauthorized(gw: &TestGateway, path: &str) {
    let mut c = gw.connect(path).await;
    let err = c.error().await;
    assert_eq!(err.code, "request/unauthorized", "{path}");
    assert!(!err.retryable);
    assert_eq!(c.closed().await, close::POLICY, "{path}");
}

#[tokio::test]
async fn missing_expired_forged_long_lived_and_wrong_provider_tokens_are_refused() {
    let gw = slow_gateway(&["--token-secret", SECRET, "--token-max-ttl", "10m"]).await;
    expect_unauthorized(&gw, "/ws/link/whatsapp").await;
    let mut expired = claims(None, 0);
    expired.exp = now_secs() - 120;
    expired.iat = Some(now_secs() - 180);
    expect_unauthorized(
        &gw,
        &format!("/ws/link/whatsapp?token={}", mint(SECRET, &expired)),
    )
    .await;
    let forged = mint("not-the-secret", &claims(None, 60));
    expect_unauthorized(&gw, &format!("/ws/link/whatsapp?token={forged}")).await;
    let long = mint(SECRET, &claims(None, 3600));
    expect_unauthorized(&gw, &format!("/ws/link/whatsapp?token={long}")).await;
    let telegram_only = mint(SECRET, &claims(Some("telegram"), 60));
    expect_unauthorized(&gw, &format!("/ws/link/whatsapp?token={telegram_only}")).await;
    expect_unauthorized(&gw, "/ws/link/whatsapp?token=garbage").await;
    assert!(
        gw.sim().intent_ids().is_empty(),
        "no upstream work for refused tokens"
    );
}

#[tokio::test]
async fn a_valid_token_links_with_its_subject_as_state_and_its_account_and_proxy() {
    let gw = slow_gateway(&["--token-secret", SECRET]).await;
    let mut c = claims(Some("whatsapp"), 300);
    c.account_id = Some("acc_relinkme".into());
    c.proxy = Some(serde_json::json!({"host":"proxy.example","port":8080,"protocol":"http"}));
    let token = mint(SECRET, &c);
    let mut client = gw
        .connect(&format!(
            "/ws/link/whatsapp?token={token}&account_id=acc_fromurl"
        ))
        .await;
    let qr = client.qr().await;
    gw.sim().scan(&qr.intent_id).unwrap();
    let frame = client.frame().await;
    match frame.frame {
        ServerFrame::Account {
            account,
            state,
            result,
        } => {
            assert_eq!(state.as_deref(), Some("user-42"));
            assert_eq!(
                account["id"], "acc_relinkme",
                "the token's account, not the URL's"
            );
            let token = result.expect("a result token with connect tokens on");
            let claims = qrlink::notify::result::verify(SECRET, &token)
                .unwrap_or_else(|e| panic!("the result token verifies: {e}"));
            assert_eq!(claims.iss, "qrlink");
            assert_eq!(claims.sub.as_deref(), Some("user-42"));
            assert_eq!(claims.account_id, "acc_relinkme");
            assert_eq!(claims.provider, "whatsapp");
            assert_eq!(claims.session, frame.session);
            assert_eq!(claims.exp - claims.iat, 300);
            assert!(claims.iat.abs_diff(now_secs()) <= 5, "{claims:?}");
            assert!(qrlink::notify::result::verify("another-secret", &token).is_err());
        }
        other => panic!("expected an account frame, got {other:?}"),
    }
    let intent = gw
        .sim()
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/intent"))
        .unwrap();
    assert_eq!(intent.body["state"], "user-42");
    assert_eq!(intent.body["account_id"], "acc_relinkme");
    assert_eq!(
        intent.body["config"]["custom_proxy"]["host"],
        "proxy.example"
    );
}

#[tokio::test]
async fn a_token_may_travel_in_the_subprotocol_list_instead_of_the_url() {
    let gw = slow_gateway(&["--token-secret", SECRET]).await;
    let token = mint(SECRET, &claims(None, 300));
    let protocols = format!("qrlink.v1, qrlink.token.{token}");
    let mut req = format!("ws://{}/ws/link/telegram", gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&protocols).unwrap(),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "qrlink.v1");
    let mut client = WsClient { ws };
    assert_eq!(client.qr().await.rotation, 1);
}

#[tokio::test]
async fn admin_views_need_the_admin_token_when_one_is_set() {
    let gw = slow_gateway(&["--admin-token", "adm1n-t0ken"]).await;
    let http = reqwest::Client::new();
    for path in ["/api/sessions", "/api/providers", "/metrics"] {
        let bare = http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(bare.status(), 401, "{path}");
        let wrong = http
            .get(gw.url(path))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let ok = http
            .get(gw.url(path))
            .bearer_auth("adm1n-t0ken")
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{path}");
    }
    let watch = connect_with(&gw, "/ws/watch", &[]).await;
    assert_eq!(watch.err(), Some(401));
    let mut watch = gw.connect("/ws/watch?admin_token=adm1n-t0ken").await;
    let snapshot = watch.ws_text().await;
    assert!(snapshot.contains("\"snapshot\""), "{snapshot}");
    // The link page itself stays public.
    assert_eq!(reqwest::get(gw.url("/")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn without_an_admin_token_admin_views_answer_loopback_clients_only() {
    let gw = slow_gateway(&["--trusted-proxies", "127.0.0.1"]).await;
    let http = reqwest::Client::new();
    let local = http.get(gw.url("/api/sessions")).send().await.unwrap();
    assert_eq!(local.status(), 200);
    // Through a trusted reverse proxy, the real client is the one X-Forwarded-For names.
    let remote = http
        .get(gw.url("/api/sessions"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(remote.status(), 403);
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let trusting = slow_gateway(&["--trusted-proxies", "127.0.0.0/8"]).await;
    let mut c = connect_with(
        &trusting,
        "/ws/link/whatsapp",
        &[("x-forwarded-for", "198.51.100.7, 127.0.0.5")],
    )
    .await
    .unwrap();
    c.qr().await;
    assert_eq!(trusting.state.store.snapshot()[0].client, "198.51.100.7");

    let wary = slow_gateway(&[]).await;
    let mut c = connect_with(
        &wary,
        "/ws/link/whatsapp",
        &[("x-forwarded-for", "198.51.100.7")],
    )
    .await
    .unwrap();
    c.qr().await;
    assert_eq!(wary.state.store.snapshot()[0].client, "127.0.0.1");
}

async fn expect_refused(gw: &TestGateway, code: &str) {
    let mut c = gw.connect("/ws/link/whatsapp").await;
    let err = c.error().await;
    assert_eq!(err.code, code);
    assert!(err.retryable);
    assert_eq!(c.closed().await, close::TRY_AGAIN_LATER);
}

#[tokio::test]
async fn past_the_global_cap_new_sessions_get_overloaded_and_1013() {
    let gw = slow_gateway(&["--max-sessions", "2"]).await;
    let mut a = gw.connect("/ws/link/whatsapp").await;
    let mut b = gw.connect("/ws/link/telegram").await;
    a.qr().await;
    b.qr().await;
    expect_refused(&gw, "gateway/overloaded").await;
    drop(a);
    gw.state.store.wait_for_count(|n| n < 2).await;
    let mut c = gw.connect("/ws/link/whatsapp").await;
    c.qr().await;
}

#[tokio::test]
async fn one_address_may_hold_only_so_many_sessions_and_open_so_many_a_minute() {
    let gw = slow_gateway(&[
        "--max-sessions-per-ip",
        "2",
        "--sessions-per-ip-per-minute",
        "3",
    ])
    .await;
    let mut a = gw.connect("/ws/link/whatsapp").await;
    let mut b = gw.connect("/ws/link/whatsapp").await;
    a.qr().await;
    b.qr().await;
    expect_refused(&gw, "request/rate_limited").await;
    drop(a);
    gw.state.store.wait_for_count(|n| n < 2).await;
    // A third session fits the concurrency cap, and is the last of the minute's bucket.
    let mut c = gw.connect("/ws/link/whatsapp").await;
    c.qr().await;
    drop(b);
    drop(c);
    gw.wait_for_no_sessions().await;
    expect_refused(&gw, "request/rate_limited").await;
}

#[tokio::test]
async fn an_attempt_longer_than_the_maximum_duration_ends_with_session_expired() {
    let gw = slow_gateway(&["--max-attempt-duration", "300ms"]).await;
    let mut c = gw.connect("/ws/link/whatsapp").await;
    c.qr().await;
    let err = c.error().await;
    assert_eq!(err.code, "session/expired");
    assert!(err.retryable);
    assert_eq!(c.closed().await, close::NORMAL);
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_dropped_and_its_upstream_work_cancelled() {
    let gw = slow_gateway(&["--ping-interval", "100ms", "--client-timeout", "400ms"]).await;
    // A WebSocket that is never polled again answers no ping, as a vanished client would.
    let mut c = gw.connect("/ws/link/whatsapp").await;
    let qr = c.qr().await;
    let intent = qr.intent_id.clone();
    gw.wait_for_poll(&intent, PollOutcome::HungUp).await;
    gw.wait_for_no_sessions().await;
    drop(c);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_its_upstream_work_cancelled() {
    // QRs every 5 ms with every rendering: the frames pile up fast behind a client that reads
    // nothing. Pings are off so only the send timeout can catch it.
    let gw = TestGateway::with(
        sim_config(Duration::from_millis(5), 1_000_000),
        &["--ping-interval", "1h", "--client-timeout", "500ms"],
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.addr).await.unwrap();
    let url = format!("ws://{}/ws/link/whatsapp?qr=svg,text,raw", gw.addr);
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    tokio::time::timeout(WAIT, gw.state.store.wait_for_count(|n| n == 1))
        .await
        .unwrap();
    gw.wait_for_no_sessions().await;
    let last = gw.sim().polls().into_iter().last().unwrap();
    tokio::time::timeout(
        WAIT,
        gw.sim().wait_for_polls(|polls| {
            polls
                .iter()
                .filter(|p| p.intent_id == last.intent_id)
                .all(|p| p.outcome != PollOutcome::Pending)
        }),
    )
    .await
    .expect("no upstream poll is left pending");
    drop(ws);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_headers_is_cut_off() {
    let gw = slow_gateway(&["--handshake-timeout", "300ms"]).await;
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    raw.write_all(b"GET /ws/link/whatsapp HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, raw.read_to_end(&mut buf))
        .await
        .expect("the gateway closes the slow connection");
    assert!(read.is_ok());
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn pages_and_api_answers_carry_security_headers() {
    let gw = slow_gateway(&["--frame-ancestors", "https://portal.example"]).await;
    let page = reqwest::get(gw.url("/")).await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors https://portal.example"),
        "{csp}"
    );
    assert!(
        csp.contains("default-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let api = reqwest::get(gw.url("/api/sessions")).await.unwrap();
    assert_eq!(api.headers()["cache-control"], "no-store");
    assert_eq!(api.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn api_answers_and_the_page_never_show_the_api_key_or_qr_strings() {
    let gw = slow_gateway(&[]).await;
    let mut c = gw.connect("/ws/link/whatsapp").await;
    let qr = c.qr().await;
    let issued = gw.sim().issued_qrs(&qr.intent_id);
    for path in [
        "/api/sessions",
        "/api/providers",
        "/config.json",
        "/",
        "/app.js",
        "/metrics",
    ] {
        let body = reqwest::get(gw.url(path))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!body.contains(API_KEY), "{path} shows the API key");
        for code in &issued {
            assert!(!body.contains(code.as_str()), "{path} shows a QR string");
        }
    }
    let (frames, _) = {
        c.send_json(serde_json::json!({"type":"cancel"})).await;
        frames_until_close(&mut c).await
    };
    assert!(frames.is_empty());
}
