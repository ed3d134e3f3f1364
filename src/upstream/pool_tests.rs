//! The pool against real TLS servers on loopback: ALPN choices, the server's stream limit,
//! GOAWAY with calls in flight, proxies, the idle timer.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use super::connect::{Dialer, Offer};
use super::h2pool::Keepalive;
use super::pool::{Outgoing, Pool, PoolError};
use super::{ProxyMatcher, tls};
use crate::simulator::{Alpn, SelfSigned};

const WAIT: Duration = Duration::from_secs(10);

/// A TLS server for `localhost` on 127.0.0.1:0. `/hold` waits until `release` is notified;
/// anything else answers at once with the request's HTTP version.
#[derive(Clone)]
pub(super) struct Server {
    pub(super) port: u16,
    pub(super) cert: SelfSigned,
    /// Connections accepted, and connections closed.
    pub(super) accepted: Arc<AtomicUsize>,
    closed: watch::Sender<usize>,
    /// Requests being handled now, as they change.
    in_flight: watch::Sender<usize>,
    /// Most requests in flight on one connection at once.
    most_on_one: Arc<AtomicUsize>,
    release: Arc<Notify>,
    /// Each HTTP/2 connection sends GOAWAY when notified, then finishes its streams.
    goaway: Arc<Notify>,
}

pub(super) async fn server(alpn: Alpn, max_streams: Option<u32>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server {
        port: listener.local_addr().unwrap().port(),
        cert: SelfSigned::generate(&[], alpn).unwrap(),
        accepted: Arc::default(),
        closed: watch::Sender::new(0),
        in_flight: watch::Sender::new(0),
        most_on_one: Arc::default(),
        release: Arc::default(),
        goaway: Arc::default(),
    };
    let state = server.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            state.accepted.fetch_add(1, Ordering::SeqCst);
            let state = state.clone();
            tokio::spawn(async move {
                if let Ok(tls) = state.cert.acceptor.accept(tcp).await {
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        state.serve_h2(tls, max_streams).await;
                    } else {
                        state.serve_h1(tls).await;
                    }
                }
                state.closed.send_modify(|n| *n += 1);
            });
        }
    });
    server
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

impl Server {
    /// Handles one request on a connection with `on_this` in flight; answers the version.
    async fn handle(&self, path: &str, version: hyper::Version, on_this: &AtomicUsize) -> Bytes {
        let now = on_this.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_on_one.fetch_max(now, Ordering::SeqCst);
        self.in_flight.send_modify(|n| *n += 1);
        if path == "/hold" {
            self.release.notified().await;
        }
        self.in_flight.send_modify(|n| *n -= 1);
        on_this.fetch_sub(1, Ordering::SeqCst);
        Bytes::from(format!("{version:?}"))
    }

    async fn serve_h1(&self, tls: Tls) {
        let on_this = Arc::new(AtomicUsize::new(0));
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let (server, on_this) = (self.clone(), on_this.clone());
            async move {
                let body = server
                    .handle(req.uri().path(), req.version(), &on_this)
                    .await;
                Ok::<_, Infallible>(Response::new(Full::new(body)))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), service)
            .await;
    }

    /// HTTP/2 with the h2 crate rather than hyper's server: on `goaway` it sends GOAWAY and
    /// keeps answering the streams it took. (hyper's graceful shutdown stops accepting
    /// streams after its first GOAWAY and leaves those that arrived meanwhile unanswered.)
    async fn serve_h2(&self, tls: Tls, max_streams: Option<u32>) {
        let mut builder = h2::server::Builder::new();
        if let Some(max) = max_streams {
            builder.max_concurrent_streams(max);
        }
        let Ok(mut conn) = builder.handshake::<_, Bytes>(tls).await else {
            return;
        };
        let on_this = Arc::new(AtomicUsize::new(0));
        let goaway = self.goaway.notified();
        tokio::pin!(goaway);
        let mut going = false;
        loop {
            tokio::select! {
                next = conn.accept() => {
                    let Some(Ok((req, mut respond))) = next else { return };
                    let (server, on_this) = (self.clone(), on_this.clone());
                    tokio::spawn(async move {
                        let body = server.handle(req.uri().path(), req.version(), &on_this).await;
                        if let Ok(mut send) = respond.send_response(Response::new(()), false) {
                            let _ = send.send_data(body, true);
                        }
                    });
                }
                () = &mut goaway, if !going => {
                    going = true;
                    conn.graceful_shutdown();
                }
            }
        }
    }

    fn pool(&self, offer: Offer, cap: usize) -> Pool {
        self.pool_with(
            offer,
            cap,
            &ProxyMatcher::builder().build(),
            Duration::from_secs(60),
        )
    }

    fn pool_with(&self, offer: Offer, cap: usize, proxies: &ProxyMatcher, idle: Duration) -> Pool {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.cert_der.clone()).unwrap();
        let url = url::Url::parse(&format!("https://localhost:{}", self.port)).unwrap();
        Pool::new(
            Dialer::new(&url, offer, roots, proxies, Duration::from_secs(5)).unwrap(),
            cap,
            idle,
        )
    }

    pub(super) fn uri(&self, path: &str) -> hyper::Uri {
        format!("https://localhost:{}{path}", self.port)
            .parse()
            .unwrap()
    }

    async fn wait_in_flight(&self, n: usize) {
        let mut rx = self.in_flight.subscribe();
        tokio::time::timeout(WAIT, rx.wait_for(|v| *v == n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "expected {n} requests in flight, got {}",
                    *self.in_flight.borrow()
                )
            })
            .unwrap();
    }
}

/// Sends a POST to `uri` and returns the answer's body as text.
pub(super) async fn call(pool: &Pool, uri: &hyper::Uri) -> Result<String, String> {
    let key = HeaderValue::from_static("k");
    let body = Bytes::from_static(b"{}");
    let out = Outgoing {
        uri,
        headers: &[("x-api-key", &key)],
        body: &body,
    };
    let answer = pool.send(&out).await.map_err(|e| e.to_string())?;
    assert_eq!(answer.status, 200);
    Ok(String::from_utf8(answer.body).unwrap())
}

#[tokio::test]
async fn auto_speaks_whatever_the_server_picks_by_alpn() {
    for (alpn, expected) in [
        (Alpn::Both, "HTTP/2.0"),
        (Alpn::H2, "HTTP/2.0"),
        (Alpn::Http1, "HTTP/1.1"),
    ] {
        let server = server(alpn, None).await;
        let pool = server.pool(Offer::Both, 100);
        for _ in 0..3 {
            assert_eq!(
                call(&pool, &server.uri("/")).await.unwrap(),
                expected,
                "{alpn:?}"
            );
        }
        // One connection either way: streams of one HTTP/2 connection, or one HTTP/1.1
        // connection kept alive between the short calls.
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1, "{alpn:?}");
        match expected {
            "HTTP/2.0" => assert_eq!(pool.h2_connections(), Some(1)),
            _ => assert_eq!((pool.h2_connections(), pool.idle_http1()), (Some(0), 1)),
        }
    }
}

#[tokio::test]
async fn over_http_1_1_each_pending_call_has_its_own_connection() {
    let server = server(Alpn::Http1, None).await;
    let pool = server.pool(Offer::Both, 100);
    let held: Vec<_> = (0..4)
        .map(|_| {
            let (pool, uri) = (pool.clone(), server.uri("/hold"));
            tokio::spawn(async move { call(&pool, &uri).await })
        })
        .collect();
    server.wait_in_flight(4).await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), 4);
    server.release.notify_waiters();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap(), "HTTP/1.1");
    }
    assert_eq!(
        pool.idle_http1(),
        4,
        "each connection kept for the next call"
    );
}

#[tokio::test]
async fn http2_only_refuses_a_server_without_h2_with_a_clear_error() {
    let server = server(Alpn::Http1, None).await;
    let err = call(&server.pool(Offer::Http2, 100), &server.uri("/"))
        .await
        .unwrap_err();
    assert_eq!(err, PoolError::NoH2.to_string());
    assert!(err.contains("--upstream-http auto or 1.1"), "{err}");
}

#[tokio::test]
async fn a_certificate_nobody_vouches_for_is_a_connect_error() {
    let server = server(Alpn::Both, None).await;
    let url = url::Url::parse(&format!("https://localhost:{}", server.port)).unwrap();
    let webpki_only = tls::roots(None).unwrap();
    let dialer = Dialer::new(
        &url,
        Offer::Both,
        webpki_only,
        &ProxyMatcher::builder().build(),
        WAIT,
    )
    .unwrap();
    let pool = Pool::new(dialer, 100, WAIT);
    assert_eq!(
        call(&pool, &server.uri("/")).await.unwrap_err(),
        PoolError::Connect.to_string()
    );
}

#[tokio::test]
async fn calls_past_the_servers_stream_limit_go_to_another_connection_never_queue() {
    // The server allows 2 streams per connection; the configured cap (100) is higher.
    let server = server(Alpn::Both, Some(2)).await;
    let pool = server.pool(Offer::Both, 100);
    let held: Vec<_> = (0..5)
        .map(|_| {
            let (pool, uri) = (pool.clone(), server.uri("/hold"));
            tokio::spawn(async move { call(&pool, &uri).await })
        })
        .collect();
    // All five reach the server while pending: none waits inside hyper for a free stream.
    server.wait_in_flight(5).await;
    assert_eq!(pool.h2_connections(), Some(3));
    assert_eq!(server.most_on_one.load(Ordering::SeqCst), 2);
    server.release.notify_waiters();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap(), "HTTP/2.0");
    }
}

#[tokio::test]
async fn after_a_goaway_new_calls_go_to_a_new_connection_and_calls_in_flight_finish() {
    let server = server(Alpn::H2, None).await;
    let pool = server.pool(Offer::Both, 100);
    let held: Vec<_> = (0..3)
        .map(|_| {
            let (pool, uri) = (pool.clone(), server.uri("/hold"));
            tokio::spawn(async move { call(&pool, &uri).await })
        })
        .collect();
    server.wait_in_flight(3).await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    // GOAWAY on the one connection, with three calls in flight on it.
    server.goaway.notify_waiters();
    // Calls keep being answered: on the old connection until the client has the GOAWAY, then
    // (the first refused one sent again, not failed) on a new connection.
    for _ in 0..100 {
        let answer = tokio::time::timeout(WAIT, call(&pool, &server.uri("/")))
            .await
            .expect("a call after the GOAWAY is answered");
        assert_eq!(answer.unwrap(), "HTTP/2.0");
        if server.accepted.load(Ordering::SeqCst) == 2 {
            break;
        }
    }
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        2,
        "a new connection after the GOAWAY"
    );
    // The calls in flight when the GOAWAY came are answered on the old connection.
    server.release.notify_waiters();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap(), "HTTP/2.0");
    }
    let mut closed = server.closed.subscribe();
    tokio::time::timeout(WAIT, closed.wait_for(|n| *n >= 1))
        .await
        .expect("the old connection closes once its streams are done")
        .unwrap();
    assert_eq!(pool.h2_connections(), Some(1));
}

#[tokio::test]
async fn calls_waiting_on_a_connect_that_fails_fail_with_it_instead_of_trying_in_turn() {
    // A server that accepts TCP and never speaks: each TLS handshake runs into the connect
    // timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    let url = url::Url::parse(&format!("https://localhost:{port}")).unwrap();
    let dialer = Dialer::new(
        &url,
        Offer::Both,
        rustls::RootCertStore::empty(),
        &ProxyMatcher::builder().build(),
        Duration::from_millis(300),
    )
    .unwrap();
    let pool = Pool::new(dialer, 100, WAIT);
    let uri: hyper::Uri = format!("https://localhost:{port}/").parse().unwrap();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let (pool, uri) = (pool.clone(), uri.clone());
            tokio::spawn(async move { call(&pool, &uri).await.err() })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), Some(PoolError::Connect.to_string()));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connect for five waiting calls"
    );
}

/// An HTTP proxy that tunnels `CONNECT`s and records each request line.
async fn connect_proxy() -> (u16, watch::Sender<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = watch::Sender::new(Vec::new());
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                record.send_modify(|v| v.push(text.clone()));
                let target = text.split_whitespace().nth(1).unwrap().to_owned();
                let Ok(mut upstream) =
                    TcpStream::connect(target.replace("localhost", "127.0.0.1")).await
                else {
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn https_proxy_is_used_through_connect_unless_no_proxy_names_the_host() {
    let server = server(Alpn::Both, None).await;
    let (proxy_port, seen) = connect_proxy().await;
    let proxy = format!("http://user:secret@127.0.0.1:{proxy_port}");
    let via = ProxyMatcher::builder().https(proxy.clone()).build();
    let pool = server.pool_with(Offer::Both, 100, &via, WAIT);
    assert_eq!(call(&pool, &server.uri("/")).await.unwrap(), "HTTP/2.0");
    let heads = seen.borrow().clone();
    assert_eq!(heads.len(), 1);
    assert!(
        heads[0].starts_with(&format!("CONNECT localhost:{} HTTP/1.1\r\n", server.port)),
        "{heads:?}"
    );
    // "user:secret", base64.
    assert!(
        heads[0].contains("Proxy-Authorization: Basic dXNlcjpzZWNyZXQ="),
        "{heads:?}"
    );

    let bypass = ProxyMatcher::builder().https(proxy).no("localhost").build();
    let pool = server.pool_with(Offer::Both, 100, &bypass, WAIT);
    assert_eq!(call(&pool, &server.uri("/")).await.unwrap(), "HTTP/2.0");
    assert_eq!(seen.borrow().len(), 1, "NO_PROXY: straight to the server");
}

#[tokio::test]
async fn idle_connections_are_closed_by_the_timer() {
    for alpn in [Alpn::Http1, Alpn::H2] {
        let server = server(alpn, None).await;
        let pool = server.pool_with(
            Offer::Both,
            100,
            &ProxyMatcher::builder().build(),
            Duration::from_millis(200),
        );
        call(&pool, &server.uri("/")).await.unwrap();
        let mut closed = server.closed.subscribe();
        tokio::time::timeout(WAIT, closed.wait_for(|n| *n == 1))
            .await
            .unwrap_or_else(|_| panic!("{alpn:?}: the idle connection was not closed"))
            .unwrap();
        assert_eq!(
            (pool.h2_connections(), pool.idle_http1()),
            (Some(0), 0),
            "{alpn:?}"
        );
    }
}

/// Answers one request on `stream` as a forwarding proxy relays an answer (`200`, `ok`), after
/// recording its head and body (`{}`) in `seen`; the stream is held until the client is done.
pub(super) async fn forward_once<S>(mut stream: S, seen: watch::Sender<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n{}") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    seen.send_replace(String::from_utf8_lossy(&head).into_owned());
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let _ = stream.read(&mut [0u8; 1]).await;
}

#[tokio::test]
async fn a_plain_http_upstream_goes_through_http_proxy_as_absolute_form_requests() {
    // The proxy answers itself, as a forwarding proxy relays an answer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let seen = watch::Sender::new(String::new());
    let record = seen.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        forward_once(tcp, record).await;
    });
    let url = url::Url::parse("http://unipile.invalid:8080").unwrap();
    let via = ProxyMatcher::builder()
        .http(format!("http://u:p@{proxy}"))
        .build();
    let dialer = Dialer::new(&url, Offer::Both, tls::roots(None).unwrap(), &via, WAIT).unwrap();
    let pool = Pool::new(dialer, 100, WAIT);
    forwarded_in_absolute_form(&pool, &seen).await;
}

/// Calls `http://unipile.invalid:8080/…` through `pool`, whose forwarding proxy ([`forward_once`])
/// records the request in `seen`: it went in absolute form, with its `Host` and the proxy
/// URL's `u:p` as `Proxy-Authorization`.
pub(super) async fn forwarded_in_absolute_form(pool: &Pool, seen: &watch::Sender<String>) {
    let uri: hyper::Uri = "http://unipile.invalid:8080/v2/auth/checkpoint"
        .parse()
        .unwrap();
    assert_eq!(call(pool, &uri).await.unwrap(), "ok");
    let head = seen.borrow().clone();
    assert!(
        head.starts_with("POST http://unipile.invalid:8080/v2/auth/checkpoint HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("host: unipile.invalid:8080\r\n"), "{head}");
    assert!(
        head.contains("proxy-authorization: Basic dTpw\r\n"),
        "{head}"
    );
}

#[tokio::test]
async fn a_connection_that_stops_answering_pings_fails_its_calls_and_is_dropped() {
    // An HTTP/2 server that takes one request and then never reads its connection again: no
    // answer, no pong, nothing closed (a peer gone silent behind a NAT, say).
    let cert = SelfSigned::generate(&[], Alpn::H2).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = cert.acceptor.clone();
    let (took, mut taken) = watch::channel(false);
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut conn = h2::server::handshake(tls).await.unwrap();
        let held = conn.accept().await;
        took.send_replace(true);
        std::future::pending::<()>().await;
        drop((conn, held));
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert_der.clone()).unwrap();
    let url = url::Url::parse(&format!("https://localhost:{port}")).unwrap();
    let dialer = Dialer::new(
        &url,
        Offer::Both,
        roots,
        &ProxyMatcher::builder().build(),
        WAIT,
    )
    .unwrap();
    let keepalive = Keepalive {
        every: Duration::from_millis(200),
        timeout: Duration::from_millis(200),
    };
    let pool = Pool::with_keepalive(dialer, 100, WAIT, keepalive);
    let uri: hyper::Uri = format!("https://localhost:{port}/hold").parse().unwrap();
    let held = tokio::spawn({
        let pool = pool.clone();
        async move { call(&pool, &uri).await }
    });
    tokio::time::timeout(WAIT, taken.wait_for(|t| *t))
        .await
        .expect("the server took the request")
        .unwrap();
    let failed = tokio::time::timeout(WAIT, held)
        .await
        .expect("the call fails once a ping goes unanswered, long before any poll timeout")
        .unwrap();
    assert_eq!(failed.unwrap_err(), "request failed");
    assert_eq!(pool.h2_connections(), Some(0));
}

/// A thread marked as serving thread `shard`, with a current-thread runtime of its own, as
/// `Gateway::serve_threads` runs each; it makes calls on `pool` when asked.
struct ServingThread {
    calls: tokio::sync::mpsc::UnboundedSender<(
        hyper::Uri,
        tokio::sync::oneshot::Sender<Result<String, String>>,
    )>,
}

impl ServingThread {
    fn start(shard: usize, pool: Pool) -> ServingThread {
        let (calls, mut asked) = tokio::sync::mpsc::unbounded_channel::<(
            hyper::Uri,
            tokio::sync::oneshot::Sender<Result<String, String>>,
        )>();
        std::thread::spawn(move || {
            super::set_thread_shard(shard);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                while let Some((uri, answer)) = asked.recv().await {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        let _ = answer.send(call(&pool, &uri).await);
                    });
                }
            });
        });
        ServingThread { calls }
    }

    async fn call(&self, uri: hyper::Uri) -> Result<String, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.calls.send((uri, tx)).unwrap();
        tokio::time::timeout(WAIT, rx).await.unwrap().unwrap()
    }
}

#[tokio::test]
async fn each_serving_thread_calls_on_http2_connections_it_opened() {
    let server = server(Alpn::Both, None).await;
    let pool = server.pool(Offer::Both, 100);
    let one = ServingThread::start(1, pool.clone());
    let two = ServingThread::start(2, pool.clone());
    // Thread 1 opens a connection; thread 2 opens its own rather than taking a stream on
    // thread 1's (whose task runs in thread 1's runtime); then each goes on with its own.
    for (thread, connections) in [(&one, 1), (&two, 2), (&one, 2), (&two, 2), (&one, 2)] {
        assert_eq!(thread.call(server.uri("/")).await.unwrap(), "HTTP/2.0");
        assert_eq!(server.accepted.load(Ordering::SeqCst), connections);
        assert_eq!(pool.h2_connections(), Some(connections));
    }
    // The calling thread (not a serving thread: 0) has a connection of its own too.
    assert_eq!(call(&pool, &server.uri("/")).await.unwrap(), "HTTP/2.0");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
}
