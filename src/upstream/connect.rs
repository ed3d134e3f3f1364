//! Opening a connection to Unipile: DNS, both address families raced (happy eyeballs), a proxy
//! when the environment names one, TLS with ALPN.
//!
//! Proxies are read as reqwest reads them (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, minus
//! `NO_PROXY`), and the same proxy URLs work:
//! - `http://[user:password@]host[:80]`: `CONNECT` tunnels to an `https://` upstream (or for
//!   HTTP/2 by prior knowledge), requests in absolute form to an `http://` one;
//! - `https://[user:password@]host[:443]`: the same inside TLS to the proxy, which must present
//!   a certificate the upstream's roots (with `--upstream-ca-file`) vouch for;
//! - `socks5://[user:password@]host[:1080]` (the name resolved here, the address sent) and
//!   `socks5h://…` (the name sent, the proxy resolves it), with RFC 1929 user and password;
//! - `socks4://[user@]host[:1080]` and `socks4a://…` (a user id, no password).
//!
//! Happy eyeballs races the addresses of whatever is connected to: the upstream, or the
//! proxy. Through a SOCKS proxy that the dialer resolves for, the target is the resolver's
//! first address: the proxy, not the dialer, makes that connection.
//!
//! Any other scheme the proxy rules pass on is refused when the client is built.
//!
//! Every failure is logged here at debug with its real cause (the resolver's, the socket's,
//! rustls's, or the proxy's answer: its status, its SOCKS reply in words, its TLS error); the
//! caller only sees a [`PoolError`] that carries no URL, header or body. No log line carries a
//! proxy's user name or password.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hyper::header::HeaderValue;
use hyper_util::client::proxy::matcher::Matcher;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pool::PoolError;
use super::tls;
use socks::Socks;

#[path = "socks.rs"]
mod socks;

/// RFC 8305's "Connection Attempt Delay": how long one address gets before the next (of the
/// other family first) is tried alongside it.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);
/// Largest proxy answer to `CONNECT` read before giving up on it.
const MAX_PROXY_HEAD: usize = 8 * 1024;

/// What the connection speaks, as ALPN (or the plain-HTTP setting) decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1: one call at a time.
    Http1,
    /// HTTP/2: calls are streams.
    Http2,
}

/// What to offer (`--upstream-http`): on TLS by ALPN, on plain HTTP the one spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// `http/1.1` only.
    Http1,
    /// `h2` only (prior knowledge on plain HTTP).
    Http2,
    /// `h2` and `http/1.1`; plain HTTP speaks HTTP/1.1.
    Both,
}

/// A TCP connection, or TLS over one.
pub(crate) enum Stream {
    /// Plain TCP (an `http://` upstream), direct or through a tunnel.
    Plain(TcpStream),
    /// TLS; boxed, for rustls's connection state is about a kilobyte. Also TLS to an
    /// `https://` proxy carrying plain HTTP to an `http://` upstream.
    Tls(Box<TlsStream<TcpStream>>),
    /// TLS to the upstream inside a tunnel through TLS to an `https://` proxy: rare, so it
    /// costs the other variants nothing.
    TlsInTls(Box<TlsStream<TlsStream<TcpStream>>>),
}

/// A proxy on the way, from `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` (minus `NO_PROXY`).
struct ProxyHop {
    host: String,
    port: u16,
    /// TLS to the proxy itself (`https://` proxies): the upstream's roots, ALPN `http/1.1`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    via: Via,
}

/// What is spoken to a proxy, once connected to it.
enum Via {
    /// HTTP (`http://` and `https://` proxies).
    Http {
        /// `Proxy-Authorization`, from the proxy URL's user and password.
        auth: Option<HeaderValue>,
        /// `CONNECT` a tunnel (TLS, or HTTP/2 by prior knowledge); else requests are
        /// forwarded in absolute form (plain HTTP/1.1, as reqwest does for `http://`).
        tunnel: bool,
    },
    /// SOCKS (`socks5://`, `socks5h://`, `socks4://`, `socks4a://`): always a tunnel.
    Socks(Socks),
}

/// The proxy URL schemes understood, for the error naming them.
const PROXY_SCHEMES: &str = "http://, https://, socks5://, socks5h://, socks4:// or socks4a://";

impl ProxyHop {
    /// The proxy at `uri` (a proxy URL as the matcher gives it), with the user info the
    /// matcher took out of it: `basic` for HTTP, `raw` for SOCKS. `tunnel`: whether an HTTP
    /// proxy must tunnel. The error never carries the password.
    fn new(
        uri: &hyper::Uri,
        basic: Option<&HeaderValue>,
        raw: Option<(&str, &str)>,
        tunnel: bool,
        roots: &rustls::RootCertStore,
    ) -> Result<ProxyHop, String> {
        let scheme = uri.scheme_str().unwrap_or("");
        let host = uri
            .host()
            .ok_or("proxy without a host")?
            .trim_matches(['[', ']'])
            .to_owned();
        let (via, default_port, tls) = match scheme {
            "http" | "https" => {
                let via = Via::Http {
                    auth: basic.cloned(),
                    tunnel,
                };
                let tls = if scheme == "https" {
                    let name = ServerName::try_from(host.clone())
                        .map_err(|_| format!("proxy {host:?} is not a TLS server name"))?;
                    Some((tls::connector(roots.clone(), Offer::Http1), name))
                } else {
                    None
                };
                (via, if tls.is_some() { 443 } else { 80 }, tls)
            }
            _ => match Socks::from_url(scheme, raw)? {
                // 1080: the port IANA assigned to SOCKS, reqwest's and curl's default too.
                Some(socks) => (Via::Socks(socks), 1080, None),
                None => {
                    return Err(format!(
                        "proxy scheme {scheme:?}: the proxy URL must be {PROXY_SCHEMES}"
                    ));
                }
            },
        };
        Ok(ProxyHop {
            host,
            port: uri.port_u16().unwrap_or(default_port),
            tls,
            via,
        })
    }

    /// Over a connection to the proxy, asks for the way to `host:port`: a tunnel (`CONNECT`
    /// or SOCKS), or nothing for a forwarding HTTP proxy.
    async fn open<S>(&self, stream: &mut S, host: &str, port: u16) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match &self.via {
            Via::Http { tunnel: false, .. } => Ok(()),
            Via::Http { auth, tunnel: true } => tunnel(stream, host, port, auth.as_ref()).await,
            Via::Socks(socks) => {
                let target = socks.target(host, port).await?;
                socks.connect(stream, &target).await
            }
        }
    }
}

/// Opens connections to one upstream.
pub(crate) struct Dialer {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    offer: Offer,
    proxy: Option<ProxyHop>,
    timeout: Duration,
}

/// A new connection and what it speaks.
pub(crate) struct Dialed {
    pub stream: Stream,
    pub protocol: Protocol,
}

impl Dialer {
    /// A dialer for `url` (`http` or `https`); `roots` are the TLS roots (of the upstream, and
    /// of an `https://` proxy), `proxies` the environment's proxy rules.
    pub fn new(
        url: &url::Url,
        offer: Offer,
        roots: rustls::RootCertStore,
        proxies: &Matcher,
        timeout: Duration,
    ) -> Result<Dialer, String> {
        let host = url
            .host_str()
            .ok_or("no host")?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = url.port_or_known_default().ok_or("no port")?;
        let proxy = match url
            .as_str()
            .parse::<hyper::Uri>()
            .ok()
            .and_then(|u| proxies.intercept(&u))
        {
            None => None,
            Some(intercept) => {
                let tunnel = url.scheme() == "https" || offer == Offer::Http2;
                let hop = ProxyHop::new(
                    intercept.uri(),
                    intercept.basic_auth(),
                    intercept.raw_auth(),
                    tunnel,
                    &roots,
                )?;
                if let Via::Socks(socks) = &hop.via {
                    socks.check_target(&host)?;
                }
                Some(hop)
            }
        };
        let tls = match url.scheme() {
            "http" => None,
            "https" => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| format!("{host:?} is not a TLS server name"))?;
                Some((tls::connector(roots, offer), name))
            }
            other => return Err(format!("scheme {other:?}")),
        };
        Ok(Dialer {
            host,
            port,
            tls,
            offer,
            proxy,
            timeout,
        })
    }

    /// Whether requests go to a forwarding proxy, in absolute form; with its
    /// `Proxy-Authorization`, if any.
    pub fn forward_proxy(&self) -> Option<Option<&HeaderValue>> {
        match self.proxy.as_ref().map(|p| &p.via) {
            Some(Via::Http {
                auth,
                tunnel: false,
            }) => Some(auth.as_ref()),
            _ => None,
        }
    }

    /// The connect timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether every connection speaks HTTP/1.1 whatever the server would pick.
    pub fn http1_only(&self) -> bool {
        self.offer == Offer::Http1 || (self.tls.is_none() && self.offer == Offer::Both)
    }

    /// A new connection, within the connect timeout; the cause of a failure is logged.
    pub async fn dial(&self) -> Result<Dialed, PoolError> {
        match tokio::time::timeout(self.timeout, self.dial_inner()).await {
            Ok(Ok(dialed)) => Ok(dialed),
            Ok(Err((error, cause))) => {
                tracing::debug!(host = %self.host, port = self.port, %cause, "upstream connect failed");
                Err(error)
            }
            Err(_) => {
                tracing::debug!(host = %self.host, port = self.port, timeout = ?self.timeout, "upstream connect timed out");
                Err(PoolError::Connect)
            }
        }
    }

    async fn dial_inner(&self) -> Result<Dialed, (PoolError, String)> {
        let connect_failed = |e: String| (PoolError::Connect, e);
        let Some(proxy) = &self.proxy else {
            let tcp = connect_tcp(&self.host, self.port)
                .await
                .map_err(|e| connect_failed(format!("{}:{}: {e}", self.host, self.port)))?;
            let _ = tcp.set_nodelay(true);
            return self
                .finish(tcp, Stream::Plain, |s| Stream::Tls(Box::new(s)))
                .await;
        };
        let proxy_failed =
            |e: String| connect_failed(format!("proxy {}:{}: {e}", proxy.host, proxy.port));
        let mut tcp = connect_tcp(&proxy.host, proxy.port)
            .await
            .map_err(|e| proxy_failed(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &proxy.tls {
            None => {
                proxy
                    .open(&mut tcp, &self.host, self.port)
                    .await
                    .map_err(proxy_failed)?;
                self.finish(tcp, Stream::Plain, |s| Stream::Tls(Box::new(s)))
                    .await
            }
            Some((connector, name)) => {
                let mut tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| proxy_failed(format!("TLS: {e}")))?;
                proxy
                    .open(&mut tls, &self.host, self.port)
                    .await
                    .map_err(proxy_failed)?;
                self.finish(
                    tls,
                    |s| Stream::Tls(Box::new(s)),
                    |s| Stream::TlsInTls(Box::new(s)),
                )
                .await
            }
        }
    }

    /// Over `io` (to the upstream, or a tunnel to it): TLS with ALPN when the upstream is
    /// `https://`, and what the connection speaks. `plain` and `tls` make a [`Stream`] of
    /// either.
    async fn finish<IO>(
        &self,
        io: IO,
        plain: impl FnOnce(IO) -> Stream,
        tls: impl FnOnce(TlsStream<IO>) -> Stream,
    ) -> Result<Dialed, (PoolError, String)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let Some((connector, name)) = &self.tls else {
            let protocol = match self.offer {
                Offer::Http2 => Protocol::Http2,
                Offer::Http1 | Offer::Both => Protocol::Http1,
            };
            return Ok(Dialed {
                stream: plain(io),
                protocol,
            });
        };
        let stream = connector.connect(name.clone(), io).await.map_err(|e| {
            // A server that knows ALPN but none of what was offered refuses the handshake.
            let no_protocol =
                rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol);
            let refused =
                e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) == Some(&no_protocol);
            let error = if refused && self.offer == Offer::Http2 {
                PoolError::NoH2
            } else {
                PoolError::Connect
            };
            (error, format!("TLS: {e}"))
        })?;
        // No ALPN answer means HTTP/1.1 (RFC 7301 section 3.2: the server's default).
        let protocol = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        if protocol == Protocol::Http1 && self.offer == Offer::Http2 {
            return Err((PoolError::NoH2, "the server did not agree to h2".into()));
        }
        Ok(Dialed {
            stream: tls(stream),
            protocol,
        })
    }
}

/// Resolves `host` and connects to its addresses, both families raced.
async fn connect_tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    connect_addrs(addrs).await
}

/// Connects to the first of `addrs` to answer, both families raced.
async fn connect_addrs(addrs: Vec<SocketAddr>) -> io::Result<TcpStream> {
    race(interleave(addrs), ATTEMPT_DELAY, TcpStream::connect).await
}

/// RFC 8305 section 4: the resolver's first address first, then the families alternating.
pub(crate) fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let first_v6 = first.is_ipv6();
    let (mut same, mut other): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    same.reverse();
    other.reverse();
    let mut out = Vec::with_capacity(same.len() + other.len());
    while let Some(a) = same.pop() {
        out.push(a);
        if let Some(b) = other.pop() {
            out.push(b);
        }
    }
    out.extend(other.into_iter().rev());
    out
}

/// Connects to `addrs` in order, starting the next one when the last started has not
/// connected within `delay` or has failed; the first to connect wins, the others are dropped.
pub(crate) async fn race<T, F, Fut>(
    addrs: Vec<SocketAddr>,
    delay: Duration,
    connect: F,
) -> io::Result<T>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let mut next = addrs.into_iter();
    let mut attempts = FuturesUnordered::new();
    let mut last_error = None;
    loop {
        if attempts.is_empty() {
            match next.next() {
                Some(addr) => attempts.push(connect(addr)),
                None => {
                    return Err(last_error
                        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")));
                }
            }
        }
        let more = next.len() > 0;
        tokio::select! {
            Some(result) = attempts.next() => match result {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    last_error = Some(e);
                    if let Some(addr) = next.next() {
                        attempts.push(connect(addr));
                    }
                }
            },
            () = tokio::time::sleep(delay), if more => {
                if let Some(addr) = next.next() {
                    attempts.push(connect(addr));
                }
            }
        }
    }
}

/// `CONNECT host:port` through an HTTP proxy; on success `stream` carries the tunnel.
async fn tunnel<S>(
    stream: &mut S,
    host: &str,
    port: u16,
    auth: Option<&HeaderValue>,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    if let Some(auth) = auth {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(auth.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::with_capacity(256);
    loop {
        if answer.len() >= MAX_PROXY_HEAD {
            return Err("answer to CONNECT too long".into());
        }
        let mut chunk = [0u8; 256];
        // Byte by byte would be slow; the proxy sends nothing after its head until the
        // tunnel is used, so reading past the head cannot take bytes of the tunnel.
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during CONNECT".into());
        }
        answer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&answer) {
            Ok(httparse::Status::Complete(len)) => {
                let code = response.code.unwrap_or(0);
                if !(200..300).contains(&code) {
                    return Err(format!("CONNECT answered {code}"));
                }
                if len != answer.len() {
                    return Err("bytes after the answer to CONNECT".into());
                }
                return Ok(());
            }
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(format!("bad answer to CONNECT: {e}")),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsInTls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsInTls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsInTls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsInTls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The variables the proxy rules are read from, as reqwest reads them.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The proxy rules of the environment, as reqwest reads them. A value the rules cannot use (an
/// unknown scheme such as `ftp://`, or no host) is ignored, by reqwest as here; here with a
/// warning naming the variable, not its value, which may hold a password.
pub fn proxies_from_env() -> Matcher {
    for name in PROXY_VARIABLES {
        let value = std::env::var(name).unwrap_or_default();
        if ignored_proxy_url(&value) {
            tracing::warn!(
                variable = name,
                "proxy variable ignored: its value is not a proxy URL \
                 ({PROXY_SCHEMES}, with a host)"
            );
        }
    }
    Matcher::from_env()
}

/// Whether the proxy rules ignore `value` though it is set: an unknown scheme, no host.
fn ignored_proxy_url(value: &str) -> bool {
    let probe = hyper::Uri::from_static("https://unipile.invalid/");
    !value.is_empty()
        && Matcher::builder()
            .all(value.to_owned())
            .build()
            .intercept(&probe)
            .is_none()
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod proxy_tests;

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use tokio::net::{TcpListener, TcpSocket};

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_alternate_families_starting_with_the_first() {
        let got = interleave(vec![
            addr("[::1]:1"),
            addr("[::2]:1"),
            addr("[::3]:1"),
            addr("10.0.0.1:1"),
        ]);
        assert_eq!(
            got,
            [
                addr("[::1]:1"),
                addr("10.0.0.1:1"),
                addr("[::2]:1"),
                addr("[::3]:1")
            ]
        );
        let v4_first = interleave(vec![
            addr("10.0.0.1:1"),
            addr("[::1]:1"),
            addr("10.0.0.2:1"),
        ]);
        assert_eq!(
            v4_first,
            [addr("10.0.0.1:1"), addr("[::1]:1"), addr("10.0.0.2:1")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_that_never_answers_gives_way_to_the_next_after_the_attempt_delay() {
        let black_hole = addr("[2001:db8::1]:443");
        let started = tokio::time::Instant::now();
        let won = race(
            vec![black_hole, addr("192.0.2.1:443")],
            ATTEMPT_DELAY,
            |a| async move {
                if a == black_hole {
                    std::future::pending::<io::Result<SocketAddr>>().await
                } else {
                    Ok(a)
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(won, addr("192.0.2.1:443"));
        assert_eq!(
            started.elapsed(),
            ATTEMPT_DELAY,
            "the second started after the delay, not after a timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_address_moves_on_at_once_and_the_last_error_is_kept() {
        let started = tokio::time::Instant::now();
        let err = race(
            vec![addr("127.0.0.1:1"), addr("[::1]:1")],
            ATTEMPT_DELAY,
            |_| async { Err::<(), _>(io::Error::new(io::ErrorKind::ConnectionRefused, "refused")) },
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// A listener on `ip` whose accept queue is full: nobody accepts, so the kernel drops
    /// further SYNs and a connect to it hangs. `Err` says why not, when this kernel answers
    /// them anyway. The streams that fill the queue are returned to be kept open.
    async fn black_hole(ip: IpAddr) -> Result<(TcpListener, Vec<TcpStream>), String> {
        let socket = match ip {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
        let listener = socket.listen(1).map_err(|e| format!("listen: {e}"))?;
        let addr = listener.local_addr().unwrap();
        let mut filling = Vec::new();
        // Linux queues backlog + 1 connections; a few more tries for other kernels.
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => filling.push(stream),
                Ok(Err(e)) => return Err(format!("connect to the full listener failed: {e}")),
                // The connect hangs: the hole swallows SYNs.
                Err(_) => return Ok((listener, filling)),
            }
        }
        Err(format!(
            "{} connects to a listener with a backlog of 1 all completed",
            filling.len()
        ))
    }

    #[tokio::test]
    async fn a_first_address_that_swallows_syns_gives_way_to_a_real_server_after_the_attempt_delay()
    {
        // Addresses are given directly: the resolver here maps `localhost` to 127.0.0.1 only,
        // and `connect_addrs` is what a dial runs on the resolver's answer.
        let connect_timeout = Duration::from_secs(10);
        for (hole_ip, server_ip) in [("::1", "127.0.0.1"), ("127.0.0.1", "::1")] {
            let hole_ip: IpAddr = hole_ip.parse().unwrap();
            let (hole, _filling) = match black_hole(hole_ip).await {
                Ok(hole) => hole,
                Err(why) if std::env::var_os("CI").is_none() => {
                    eprintln!("skipped: no black hole on {hole_ip} here: {why}");
                    return;
                }
                Err(why) => panic!("no black hole on {hole_ip}: {why}"),
            };
            let hole = hole.local_addr().unwrap();
            let server = TcpListener::bind((server_ip, 0))
                .await
                .unwrap_or_else(|e| panic!("bind {server_ip}: {e} (loopback of each family)"));
            let server_addr = server.local_addr().unwrap();
            let started = std::time::Instant::now();
            let stream =
                tokio::time::timeout(connect_timeout, connect_addrs(vec![hole, server_addr]))
                    .await
                    .unwrap_or_else(|_| panic!("{hole} then {server_addr}: no connection"))
                    .unwrap_or_else(|e| panic!("{hole} then {server_addr}: {e}"));
            let took = started.elapsed();
            assert_eq!(stream.peer_addr().unwrap(), server_addr);
            let (accepted, _) = tokio::time::timeout(connect_timeout, server.accept())
                .await
                .expect("the server accepts the connection")
                .unwrap();
            assert_eq!(accepted.peer_addr().unwrap(), stream.local_addr().unwrap());
            assert!(
                took >= ATTEMPT_DELAY,
                "{hole} then {server_addr}: connected after {took:?}, before the attempt delay"
            );
            assert!(
                took < ATTEMPT_DELAY + Duration::from_secs(1),
                "{hole} then {server_addr}: connected after {took:?}, expected about {ATTEMPT_DELAY:?}"
            );
        }
    }

    #[test]
    fn a_stream_is_no_larger_than_a_tcp_stream_and_a_tag() {
        // Every pending HTTP/1.1 long poll holds one; the TLS variants are boxed.
        let size = std::mem::size_of::<Stream>();
        assert!(
            size <= std::mem::size_of::<TcpStream>() + std::mem::size_of::<usize>(),
            "a Stream of {size} bytes"
        );
    }

    fn hop(uri: &str, raw: Option<(&str, &str)>) -> Result<ProxyHop, String> {
        ProxyHop::new(
            &uri.parse().unwrap(),
            None,
            raw,
            true,
            &rustls::RootCertStore::empty(),
        )
    }

    #[test]
    fn proxy_urls_get_their_schemes_default_port() {
        for (uri, port) in [
            ("http://p", 80),
            ("https://p", 443),
            ("socks5://p", 1080),
            ("socks5h://p", 1080),
            ("socks4://p", 1080),
            ("socks4a://p", 1080),
            ("socks5h://p:9050", 9050),
        ] {
            assert_eq!(hop(uri, None).unwrap().port, port, "{uri}");
        }
        assert!(hop("https://p", None).unwrap().tls.is_some());
        assert!(hop("socks5://p", None).unwrap().tls.is_none());
    }

    #[test]
    fn an_unsupported_proxy_scheme_is_refused_with_the_schemes_that_work() {
        let err = hop("ftp://p:21", None).err().unwrap();
        assert!(err.contains("\"ftp\""), "{err}");
        assert!(err.contains("socks5h://"), "{err}");
    }

    #[test]
    fn a_bad_socks_user_or_password_is_refused_without_showing_the_password() {
        let long = "u".repeat(256);
        for (uri, raw) in [
            ("socks4://p", ("user", "hunter2")),
            ("socks5://p", (long.as_str(), "hunter2")),
            ("socks5://p", ("", "hunter2")),
        ] {
            let err = hop(uri, Some(raw)).err().unwrap();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.starts_with(uri.split(':').next().unwrap()), "{err}");
        }
    }

    #[test]
    fn a_socks4_proxy_is_refused_for_an_ipv6_upstream() {
        let url = url::Url::parse("https://[::1]:443").unwrap();
        let via = Matcher::builder().all("socks4://127.0.0.1").build();
        let err = Dialer::new(
            &url,
            Offer::Both,
            rustls::RootCertStore::empty(),
            &via,
            ATTEMPT_DELAY,
        )
        .err()
        .unwrap();
        assert!(err.contains("IPv6"), "{err}");
    }

    #[test]
    fn proxy_values_the_rules_ignore_are_told_apart_from_those_they_use() {
        for used in [
            "",
            "http://p:3128",
            "p:3128",
            "https://u:p@p",
            "socks5h://p",
            "socks4a://p",
        ] {
            assert!(!ignored_proxy_url(used), "{used}");
        }
        for ignored in ["ftp://p", "quic://p:443", "http://"] {
            assert!(ignored_proxy_url(ignored), "{ignored}");
        }
    }
}
