//! Each kind of proxy on the real path: the pool calling a TLS server on loopback (the one of
//! `pool_tests`) through an `https://` proxy (`CONNECT` inside TLS), a `socks5://` and a
//! `socks5h://` proxy, each a server of its own here over real TCP that records what it was
//! asked; with and without user and password; `NO_PROXY` going around each.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::subscriber::DefaultGuard;

use super::{Dialer, Offer};
use crate::simulator::{Alpn, SelfSigned};
use crate::upstream::ProxyMatcher;
use crate::upstream::pool::{Pool, PoolError};
use crate::upstream::pool_tests::{Server, call, forward_once, forwarded_in_absolute_form, server};

const WAIT: Duration = Duration::from_secs(10);
const USER: &str = "ann";
const PASSWORD: &str = "hunter2-secret";

/// A test proxy: where it listens, the certificate it serves (`https://` proxies), and what it
/// was asked, one entry per connection.
struct Proxy {
    port: u16,
    cert: Option<SelfSigned>,
    asked: watch::Sender<Vec<String>>,
}

impl Proxy {
    fn url(&self, scheme: &str, credentials: Option<(&str, &str)>) -> String {
        let host = if self.cert.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        };
        match credentials {
            Some((user, password)) => format!("{scheme}://{user}:{password}@{host}:{}", self.port),
            None => format!("{scheme}://{host}:{}", self.port),
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.borrow().clone()
    }
}

/// Where a test proxy's tunnels lead, whatever name or address it was asked for: the test
/// server, which listens on 127.0.0.1 (the client may have resolved `localhost` to `::1`).
async fn to_the_server(port: u16) -> Option<TcpStream> {
    TcpStream::connect(("127.0.0.1", port)).await.ok()
}

/// An HTTP proxy behind TLS (a certificate for `localhost`, ALPN `http/1.1`) that tunnels
/// `CONNECT`s; with `required`, only for that `Proxy-Authorization` (else 407). Records each
/// request head.
async fn https_proxy(required: Option<String>) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cert = SelfSigned::generate(&[], Alpn::Http1).unwrap();
    let proxy = Proxy {
        port: listener.local_addr().unwrap().port(),
        cert: Some(cert.clone()),
        asked: watch::Sender::new(Vec::new()),
    };
    let asked = proxy.asked.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, asked, required) =
                (cert.acceptor.clone(), asked.clone(), required.clone());
            tokio::spawn(async move {
                let Ok(mut client) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                asked.send_modify(|v| v.push(head.clone()));
                if let Some(auth) = &required {
                    let line = format!("Proxy-Authorization: {auth}\r\n");
                    if !head.contains(&line) {
                        let _ = client
                            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                            .await;
                        return;
                    }
                }
                let port = head.split_whitespace().nth(1).unwrap().rsplit(':').next();
                let Some(mut upstream) = to_the_server(port.unwrap().parse().unwrap()).await else {
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
    proxy
}

/// A SOCKS proxy over TCP: SOCKS5 (RFC 1928), with `required` only for that user and password
/// (RFC 1929); and SOCKS4/4a, whatever the user id. Records each `CONNECT` target as
/// `address:port` or `name:port` (SOCKS4: after the user id and `@`, if any), and a refused
/// login as `refused login`.
async fn socks_proxy(required: Option<(&'static str, &'static str)>) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy {
        port: listener.local_addr().unwrap().port(),
        cert: None,
        asked: watch::Sender::new(Vec::new()),
    };
    let asked = proxy.asked.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let asked = asked.clone();
            tokio::spawn(async move {
                if let Ok(Some((port, version))) = socks_serve(&mut client, required, &asked).await
                {
                    if let Some(mut upstream) = to_the_server(port).await {
                        let reply: &[u8] = match version {
                            4 => &[0, 90, 0, 0, 0, 0, 0, 0],
                            _ => &[5, 0, 0, 1, 127, 0, 0, 1, 0, 0],
                        };
                        if client.write_all(reply).await.is_ok() {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                    }
                }
            });
        }
    });
    proxy
}

/// The server side of a SOCKS handshake up to the `CONNECT` request: the port asked for and
/// the version spoken, or `None` once the client was refused.
async fn socks_serve<S>(
    client: &mut S,
    required: Option<(&str, &str)>,
    asked: &watch::Sender<Vec<String>>,
) -> std::io::Result<Option<(u16, u8)>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let [version] = read::<1, _>(client).await?;
    if version == 4 {
        let [command, port_high, port_low, a, b, c, d] = read::<7, _>(client).await?;
        assert_eq!(command, 1, "CONNECT");
        let user = read_until_nul(client).await?;
        let host = match (a, b, c) {
            // SOCKS4a: 0.0.0.x, a name follows.
            (0, 0, 0) => read_until_nul(client).await?,
            _ => std::net::Ipv4Addr::new(a, b, c, d).to_string(),
        };
        let port = u16::from_be_bytes([port_high, port_low]);
        let at = if user.is_empty() {
            String::new()
        } else {
            format!("{user}@")
        };
        asked.send_modify(|v| v.push(format!("{at}{host}:{port}")));
        return Ok(Some((port, 4)));
    }
    assert_eq!(version, 5, "a SOCKS greeting");
    let [count] = read::<1, _>(client).await?;
    let mut methods = vec![0u8; usize::from(count)];
    client.read_exact(&mut methods).await?;
    let wanted = if required.is_some() { 2 } else { 0 };
    if !methods.contains(&wanted) {
        client.write_all(&[5, 0xff]).await?;
        return Ok(None);
    }
    client.write_all(&[5, wanted]).await?;
    if let Some((user, password)) = required {
        let [_, len] = read::<2, _>(client).await?;
        let mut got_user = vec![0u8; usize::from(len)];
        client.read_exact(&mut got_user).await?;
        let [len] = read::<1, _>(client).await?;
        let mut got_password = vec![0u8; usize::from(len)];
        client.read_exact(&mut got_password).await?;
        if got_user != user.as_bytes() || got_password != password.as_bytes() {
            asked.send_modify(|v| v.push("refused login".into()));
            client.write_all(&[1, 1]).await?;
            return Ok(None);
        }
        client.write_all(&[1, 0]).await?;
    }
    let [_, command, _, address_type] = read::<4, _>(client).await?;
    assert_eq!(command, 1, "CONNECT");
    let host = match address_type {
        1 => std::net::Ipv4Addr::from(read::<4, _>(client).await?).to_string(),
        4 => format!(
            "[{}]",
            std::net::Ipv6Addr::from(read::<16, _>(client).await?)
        ),
        3 => {
            let [len] = read::<1, _>(client).await?;
            let mut name = vec![0u8; usize::from(len)];
            client.read_exact(&mut name).await?;
            String::from_utf8(name).unwrap()
        }
        other => panic!("address type {other}"),
    };
    let port = u16::from_be_bytes(read::<2, _>(client).await?);
    asked.send_modify(|v| v.push(format!("{host}:{port}")));
    Ok(Some((port, 5)))
}

async fn read_until_nul<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<String> {
    let mut text = Vec::new();
    loop {
        match read::<1, _>(s).await? {
            [0] => return Ok(String::from_utf8(text).unwrap()),
            [byte] => text.push(byte),
        }
    }
}

async fn read<const N: usize, S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

/// A pool for `server` through `proxies`, trusting the server's certificate and `also`'s.
fn pool_via(server: &Server, proxies: &ProxyMatcher, also: Option<&SelfSigned>) -> Pool {
    pool_timed(server, proxies, also, WAIT)
}

/// [`pool_via`] with a connect timeout of its own.
fn pool_timed(
    server: &Server,
    proxies: &ProxyMatcher,
    also: Option<&SelfSigned>,
    connect_timeout: Duration,
) -> Pool {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.cert.cert_der.clone()).unwrap();
    if let Some(cert) = also {
        roots.add(cert.cert_der.clone()).unwrap();
    }
    let url = url::Url::parse(&format!("https://localhost:{}", server.port)).unwrap();
    let dialer = Dialer::new(&url, Offer::Both, roots, proxies, connect_timeout).unwrap();
    Pool::new(dialer, 100, WAIT)
}

/// Everything logged, down to debug, on this thread while the guard lives (tests run on
/// tokio's current-thread runtime, so spawned tasks log here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(logs.clone())
            .finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// `user:password`, as `Proxy-Authorization` carries it.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Asserts that `logs` name the failure's cause and carry no trace of the password.
fn assert_logged_without_secret(logs: &Logs, cause: &str) {
    let text = logs.text();
    assert!(
        text.contains("upstream connect failed") && text.contains(cause),
        "expected the cause {cause:?} at debug, got:\n{text}"
    );
    assert!(!text.contains(PASSWORD), "the password was logged:\n{text}");
    let encoded = basic(USER, PASSWORD);
    let encoded = encoded.trim_start_matches("Basic ");
    assert!(
        !text.contains(encoded),
        "the encoded password was logged:\n{text}"
    );
}

#[tokio::test]
async fn an_https_proxy_tunnels_inside_tls_with_and_without_a_password() {
    for (alpn, version) in [(Alpn::Both, "HTTP/2.0"), (Alpn::Http1, "HTTP/1.1")] {
        let server = server(alpn, None).await;
        let open = https_proxy(None).await;
        let via = ProxyMatcher::builder()
            .https(open.url("https", None))
            .build();
        let pool = pool_via(&server, &via, open.cert.as_ref());
        assert_eq!(call(&pool, &server.uri("/")).await.unwrap(), version);
        let heads = open.asked();
        assert_eq!(heads.len(), 1, "{heads:?}");
        assert!(
            heads[0].starts_with(&format!("CONNECT localhost:{} HTTP/1.1\r\n", server.port)),
            "{heads:?}"
        );
        assert!(!heads[0].contains("Proxy-Authorization"), "{heads:?}");

        let guarded = https_proxy(Some(basic(USER, PASSWORD))).await;
        let via = ProxyMatcher::builder()
            .https(guarded.url("https", Some((USER, PASSWORD))))
            .build();
        let pool = pool_via(&server, &via, guarded.cert.as_ref());
        assert_eq!(call(&pool, &server.uri("/")).await.unwrap(), version);
        assert_eq!(guarded.asked().len(), 1);
        assert_eq!(server.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}

/// Calls the server through `pool`, which must fail as a connect error within [`WAIT`], the
/// debug log naming `cause` and neither the error nor the log carrying the password.
async fn fails_to_connect_saying(pool: &Pool, server: &Server, cause: &str) {
    let (logs, _guard) = Logs::capture();
    let err = tokio::time::timeout(WAIT, call(pool, &server.uri("/")))
        .await
        .expect("the call ends")
        .unwrap_err();
    assert_eq!(err, PoolError::Connect.to_string(), "{cause}");
    assert!(!err.contains(PASSWORD), "{err}");
    assert_logged_without_secret(&logs, cause);
}

#[tokio::test]
async fn a_wrong_https_proxy_password_fails_the_call_cleanly_and_is_not_logged() {
    let server = server(Alpn::Both, None).await;
    let proxy = https_proxy(Some(basic(USER, "right"))).await;
    let via = ProxyMatcher::builder()
        .https(proxy.url("https", Some((USER, PASSWORD))))
        .build();
    let pool = pool_via(&server, &via, proxy.cert.as_ref());
    fails_to_connect_saying(&pool, &server, "CONNECT answered 407").await;
    assert_eq!(server.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_https_proxy_with_a_certificate_nobody_vouches_for_is_a_connect_error_saying_so() {
    let server = server(Alpn::Both, None).await;
    let proxy = https_proxy(None).await;
    let via = ProxyMatcher::builder()
        .https(proxy.url("https", Some((USER, PASSWORD))))
        .build();
    // The upstream's roots, without the proxy's certificate.
    let pool = pool_via(&server, &via, None);
    let cause = format!(
        "proxy localhost:{}: TLS: invalid peer certificate",
        proxy.port
    );
    fails_to_connect_saying(&pool, &server, &cause).await;
    assert!(
        proxy.asked().is_empty(),
        "nothing sent to an untrusted proxy"
    );
}

#[tokio::test]
async fn socks5_sends_the_address_it_resolved_and_socks5h_the_name_with_and_without_a_password() {
    let server = server(Alpn::Both, None).await;
    for scheme in ["socks5", "socks5h"] {
        for credentials in [None, Some((USER, PASSWORD))] {
            let proxy = socks_proxy(credentials).await;
            let via = ProxyMatcher::builder()
                .https(proxy.url(scheme, credentials))
                .build();
            let pool = pool_via(&server, &via, None);
            assert_eq!(
                call(&pool, &server.uri("/")).await.unwrap(),
                "HTTP/2.0",
                "{scheme}, {credentials:?}"
            );
            let asked = proxy.asked();
            let expected = match scheme {
                "socks5h" => vec![format!("localhost:{}", server.port)],
                // What `localhost` resolves to here first: 127.0.0.1, or ::1 where it maps
                // there too.
                _ if asked.first().is_some_and(|a| a.starts_with('[')) => {
                    vec![format!("[::1]:{}", server.port)]
                }
                _ => vec![format!("127.0.0.1:{}", server.port)],
            };
            assert_eq!(asked, expected, "{scheme}, {credentials:?}");
        }
    }
}

#[tokio::test]
async fn a_wrong_socks5_password_fails_the_call_cleanly_and_is_not_logged() {
    let server = server(Alpn::Both, None).await;
    for scheme in ["socks5", "socks5h"] {
        let proxy = socks_proxy(Some((USER, "right"))).await;
        let via = ProxyMatcher::builder()
            .https(proxy.url(scheme, Some((USER, PASSWORD))))
            .build();
        let pool = pool_via(&server, &via, None);
        fails_to_connect_saying(
            &pool,
            &server,
            "SOCKS5: the proxy refused the user name and password (status 1)",
        )
        .await;
        assert_eq!(proxy.asked(), ["refused login"], "{scheme}");

        // No password at all for a proxy that wants one.
        let via = ProxyMatcher::builder()
            .https(proxy.url(scheme, None))
            .build();
        let pool = pool_via(&server, &via, None);
        fails_to_connect_saying(&pool, &server, "SOCKS5: the proxy wants credentials").await;
    }
    assert_eq!(server.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn no_proxy_goes_around_https_and_socks_proxies() {
    let server = server(Alpn::Both, None).await;
    let https = https_proxy(None).await;
    let socks5 = socks_proxy(None).await;
    for (proxy, url) in [
        (&https, https.url("https", None)),
        (&socks5, socks5.url("socks5", None)),
        (&socks5, socks5.url("socks5h", None)),
    ] {
        let through = ProxyMatcher::builder().https(url.clone()).build();
        let pool = pool_via(&server, &through, https.cert.as_ref());
        call(&pool, &server.uri("/")).await.unwrap();
        let before = proxy.asked().len();
        assert!(before > 0, "{url}: the proxy was used without NO_PROXY");

        let around = ProxyMatcher::builder()
            .https(url.clone())
            .no("localhost")
            .build();
        let pool = pool_via(&server, &around, https.cert.as_ref());
        assert_eq!(call(&pool, &server.uri("/")).await.unwrap(), "HTTP/2.0");
        assert_eq!(
            proxy.asked().len(),
            before,
            "{url}: NO_PROXY, straight to the server"
        );
    }
}

#[tokio::test]
async fn a_plain_http_upstream_goes_through_an_https_proxy_as_absolute_form_requests() {
    // The proxy answers itself, as a forwarding proxy relays an answer.
    let cert = SelfSigned::generate(&[], Alpn::Http1).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = watch::Sender::new(String::new());
    let (record, acceptor) = (seen.clone(), cert.acceptor.clone());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        forward_once(acceptor.accept(tcp).await.unwrap(), record).await;
    });
    let url = url::Url::parse("http://unipile.invalid:8080").unwrap();
    let via = ProxyMatcher::builder()
        .http(format!("https://u:p@localhost:{port}"))
        .build();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert_der.clone()).unwrap();
    let dialer = Dialer::new(&url, Offer::Both, roots, &via, WAIT).unwrap();
    let pool = Pool::new(dialer, 100, WAIT);
    forwarded_in_absolute_form(&pool, &seen).await;
}

#[tokio::test]
async fn socks4_sends_an_ipv4_address_and_socks4a_the_name_with_the_user_id() {
    let server = server(Alpn::Both, None).await;
    let proxy = socks_proxy(None).await;
    for (scheme, user, expected) in [
        ("socks4", None, format!("127.0.0.1:{}", server.port)),
        ("socks4a", None, format!("localhost:{}", server.port)),
        (
            "socks4a",
            Some((USER, "")),
            format!("{USER}@localhost:{}", server.port),
        ),
    ] {
        let via = ProxyMatcher::builder()
            .https(proxy.url(scheme, user))
            .build();
        let pool = pool_via(&server, &via, None);
        assert_eq!(call(&pool, &server.uri("/")).await.unwrap(), "HTTP/2.0");
        assert_eq!(proxy.asked().last(), Some(&expected), "{scheme}");
    }
}

#[tokio::test]
async fn a_proxy_that_never_answers_fails_the_call_at_the_connect_timeout() {
    // Accepts connections, holds them, says nothing: no TLS handshake, no SOCKS answer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let server = server(Alpn::Both, None).await;
    for url in [
        format!("https://{USER}:{PASSWORD}@localhost:{port}"),
        format!("socks5h://{USER}:{PASSWORD}@127.0.0.1:{port}"),
        format!("socks4a://127.0.0.1:{port}"),
    ] {
        let via = ProxyMatcher::builder().https(url.clone()).build();
        let pool = pool_timed(&server, &via, None, Duration::from_millis(300));
        let (logs, _guard) = Logs::capture();
        let err = tokio::time::timeout(WAIT, call(&pool, &server.uri("/")))
            .await
            .unwrap_or_else(|_| panic!("{url}: the call hangs past the connect timeout"))
            .unwrap_err();
        assert_eq!(err, PoolError::Connect.to_string(), "{url}");
        let text = logs.text();
        assert!(text.contains("upstream connect timed out"), "{url}: {text}");
        assert!(!text.contains(PASSWORD), "{url}: {text}");
    }
    assert_eq!(server.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
}
