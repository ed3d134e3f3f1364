//! Opening a connection to Unipile: DNS, both address families raced (happy eyeballs), an
//! HTTP proxy when the environment names one (read as reqwest reads it), TLS with ALPN.
//!
//! Every failure is logged here at debug with its real cause (the resolver's, the socket's,
//! rustls's or the proxy's answer); the caller only sees a [`PoolError`] that carries no URL,
//! header or body.

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
    /// Plain TCP (an `http://` upstream).
    Plain(TcpStream),
    /// TLS; boxed, for rustls's connection state is about a kilobyte.
    Tls(Box<TlsStream<TcpStream>>),
}

/// A proxy on the way, from `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` (minus `NO_PROXY`).
struct ProxyHop {
    host: String,
    port: u16,
    /// `Proxy-Authorization`, from the proxy URL's user and password.
    auth: Option<HeaderValue>,
    /// `CONNECT` a tunnel (TLS, or HTTP/2 by prior knowledge); else requests are forwarded in
    /// absolute form (plain HTTP/1.1, as reqwest does for `http://`).
    tunnel: bool,
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
    /// A dialer for `url` (`http` or `https`); `roots` are the TLS roots, `proxies` the
    /// environment's proxy rules.
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
        let tls = match url.scheme() {
            "http" => None,
            "https" => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| format!("{host:?} is not a TLS server name"))?;
                Some((tls::connector(roots, offer), name))
            }
            other => return Err(format!("scheme {other:?}")),
        };
        let proxy = match url
            .as_str()
            .parse::<hyper::Uri>()
            .ok()
            .and_then(|u| proxies.intercept(&u))
        {
            None => None,
            Some(intercept) => {
                let proxy = intercept.uri();
                if proxy.scheme_str() != Some("http") {
                    return Err(format!(
                        "proxy scheme {:?}: only http:// proxies are supported",
                        proxy.scheme_str().unwrap_or("")
                    ));
                }
                Some(ProxyHop {
                    host: proxy
                        .host()
                        .ok_or("proxy without a host")?
                        .trim_matches(['[', ']'])
                        .to_owned(),
                    port: proxy.port_u16().unwrap_or(80),
                    auth: intercept.basic_auth().cloned(),
                    tunnel: tls.is_some() || offer == Offer::Http2,
                })
            }
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
        self.proxy
            .as_ref()
            .filter(|p| !p.tunnel)
            .map(|p| p.auth.as_ref())
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
        let tcp = match &self.proxy {
            None => connect_tcp(&self.host, self.port)
                .await
                .map_err(|e| connect_failed(format!("{}:{}: {e}", self.host, self.port)))?,
            Some(proxy) => {
                let mut tcp = connect_tcp(&proxy.host, proxy.port).await.map_err(|e| {
                    connect_failed(format!("proxy {}:{}: {e}", proxy.host, proxy.port))
                })?;
                if proxy.tunnel {
                    tunnel(&mut tcp, &self.host, self.port, proxy.auth.as_ref())
                        .await
                        .map_err(|e| {
                            connect_failed(format!("proxy {}:{}: {e}", proxy.host, proxy.port))
                        })?;
                }
                tcp
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.tls else {
            let protocol = match self.offer {
                Offer::Http2 => Protocol::Http2,
                Offer::Http1 | Offer::Both => Protocol::Http1,
            };
            return Ok(Dialed {
                stream: Stream::Plain(tcp),
                protocol,
            });
        };
        let stream = connector.connect(name.clone(), tcp).await.map_err(|e| {
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
            stream: Stream::Tls(Box::new(stream)),
            protocol,
        })
    }
}

/// Resolves `host` and connects to its addresses, both families raced.
async fn connect_tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
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

/// `CONNECT host:port` through an HTTP proxy; on success `tcp` carries the tunnel.
async fn tunnel(
    tcp: &mut TcpStream,
    host: &str,
    port: u16,
    auth: Option<&HeaderValue>,
) -> Result<(), String> {
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
    tcp.write_all(&head).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::with_capacity(256);
    loop {
        if answer.len() >= MAX_PROXY_HEAD {
            return Err("answer to CONNECT too long".into());
        }
        let mut chunk = [0u8; 256];
        // Byte by byte would be slow; the proxy sends nothing after its head until the
        // tunnel is used, so reading past the head cannot take bytes of the tunnel.
        let n = tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
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
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The proxy rules of the environment, as reqwest reads them.
pub fn proxies_from_env() -> Matcher {
    Matcher::from_env()
}

#[cfg(test)]
mod tests {
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
}
