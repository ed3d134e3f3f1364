//! HTTP/2 to Unipile (`--upstream-http 2`): every call is a stream on a small pool of
//! connections, at most `streams_per_connection` on each.
//!
//! Why not reqwest's HTTP/2: it puts every call on one connection per host, so once the
//! server's `SETTINGS_MAX_CONCURRENT_STREAMS` is reached (often 100–256 behind a CDN or a load
//! balancer) further long polls wait in a queue, for up to a QR lifetime each. This pool opens
//! another connection instead, so the default (100, the minimum RFC 9113 recommends servers
//! allow) works against any server. It is also much lighter per pending long poll: a stream
//! here costs about 2 KiB in the gateway, where reqwest + hyper-util's pool cost about 9 KiB
//! on top of it (heaptrack, benches/README.md).
//!
//! - Plain `http://` speaks HTTP/2 from the first byte ("prior knowledge", as `qrlink
//!   simulate` accepts); `https://` offers only `h2` by ALPN over rustls with the webpki roots,
//!   and a server that does not agree is an error that says to use `--upstream-http 1.1`.
//! - A [`Lease`] holds a stream slot for as long as a call's future lives: dropping the call
//!   (a browser hung up) drops the response future, which resets the stream (`RST_STREAM`) at
//!   once and frees the slot. The connection and the other calls on it go on.
//! - Connections are opened one at a time (calls that find every connection full wait for
//!   that one), pinged every 30 s so a dead one fails its calls (which the client retries), and
//!   forgotten when closed. Of the connections with no call in flight, one is kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Every 30 s a connection idle at the frame level (long polls pending, nothing said) is
/// pinged, so a connection that died silently fails its calls instead of leaving them to the
/// poll timeout.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Time a keepalive ping has to come back.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call could not be made; none of these carries a URL, a header or a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// TCP connect, TLS handshake or HTTP/2 handshake failed or timed out.
    #[error("connection failed")]
    Connect,
    /// The TLS server did not agree to HTTP/2.
    #[error("the upstream does not speak HTTP/2 (ALPN); use --upstream-http 1.1")]
    NoH2,
    /// The stream or the connection failed during the call.
    #[error("request failed")]
    Request,
}

/// Where the pool connects.
#[derive(Clone)]
pub struct Target {
    /// Host name or address, as in the URL.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `Some` for `https://`: the connector, with ALPN `h2` only.
    pub tls: Option<TlsConnector>,
}

impl Target {
    /// The target of an `http://` or `https://` URL, TLS with the webpki roots.
    pub fn of(url: &url::Url) -> Option<Target> {
        let host = url.host_str()?.trim_matches(['[', ']']).to_owned();
        let port = url.port_or_known_default()?;
        let tls = match url.scheme() {
            "http" => None,
            "https" => {
                let roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                Some(tls_connector(roots))
            }
            _ => return None,
        };
        Some(Target { host, port, tls })
    }
}

/// A rustls connector (ring provider, the one reqwest uses too) that offers only `h2`.
pub fn tls_connector(roots: rustls::RootCertStore) -> TlsConnector {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// The pool. Cheap to clone.
#[derive(Clone)]
pub struct H2Pool {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    connect_timeout: Duration,
    streams_per_connection: usize,
    conns: std::sync::Mutex<Vec<Arc<Conn>>>,
    /// Held while a connection is being opened, so a burst opens one, not one per call; holds
    /// when the last attempt failed, and how.
    connecting: tokio::sync::Mutex<Option<(Instant, PoolError)>>,
}

struct Conn {
    sender: http2::SendRequest<Full<Bytes>>,
    in_flight: AtomicUsize,
}

/// A stream slot on a connection, released on drop.
pub struct Lease {
    conn: Arc<Conn>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl H2Pool {
    /// A pool with no connection yet; the first call opens one.
    pub fn new(target: Target, connect_timeout: Duration, streams_per_connection: usize) -> Self {
        H2Pool {
            inner: Arc::new(Inner {
                target,
                connect_timeout,
                streams_per_connection: streams_per_connection.max(1),
                conns: std::sync::Mutex::new(Vec::new()),
                connecting: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Open connections (for tests and metrics).
    pub fn connections(&self) -> usize {
        let mut conns = self.inner.conns.lock().expect("pool lock");
        conns.retain(|c| !c.sender.is_closed());
        conns.len()
    }

    /// Sends `req` on a stream; the response's body is read by the caller while it holds the
    /// returned [`Lease`].
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(Lease, Response<hyper::body::Incoming>), PoolError> {
        let lease = self.checkout().await?;
        let mut sender = lease.conn.sender.clone();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|_| PoolError::Request)?;
        Ok((lease, resp))
    }

    async fn checkout(&self) -> Result<Lease, PoolError> {
        if let Some(lease) = self.try_lease() {
            return Ok(lease);
        }
        let asked = Instant::now();
        let mut last_failure = self.inner.connecting.lock().await;
        if let Some(lease) = self.try_lease() {
            return Ok(lease);
        }
        // A connect that failed while this call waited answers for it too: against an upstream
        // that black-holes connections, each waiting call would otherwise sit out a whole
        // connect timeout in turn. The caller's retry policy decides when to try again.
        if let Some((at, error)) = *last_failure
            && at >= asked
        {
            return Err(error);
        }
        // Boxed: the TLS and HTTP/2 handshakes' state is kilobytes, and without the box every
        // pending call's future would be that large for its whole life.
        let sender = match Box::pin(self.open()).await {
            Ok(sender) => sender,
            Err(error) => {
                *last_failure = Some((Instant::now(), error));
                return Err(error);
            }
        };
        let conn = Arc::new(Conn {
            sender,
            in_flight: AtomicUsize::new(1),
        });
        self.inner
            .conns
            .lock()
            .expect("pool lock")
            .push(conn.clone());
        Ok(Lease { conn })
    }

    /// A slot on the oldest open connection that has one, forgetting closed connections and
    /// all idle ones but one. Slots are only taken under the lock, so a connection seen idle
    /// here has no lease anywhere.
    fn try_lease(&self) -> Option<Lease> {
        let max = self.inner.streams_per_connection;
        let mut conns = self.inner.conns.lock().expect("pool lock");
        let mut idle_kept = false;
        conns.retain(|c| {
            if c.sender.is_closed() {
                return false;
            }
            if c.in_flight.load(Ordering::Acquire) == 0 {
                let keep = !idle_kept;
                idle_kept = true;
                return keep;
            }
            true
        });
        let conn = conns
            .iter()
            .find(|c| c.in_flight.load(Ordering::Acquire) < max)?
            .clone();
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Lease { conn })
    }

    async fn open(&self) -> Result<http2::SendRequest<Full<Bytes>>, PoolError> {
        let t = &self.inner.target;
        let connect = async {
            let tcp = TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(|_| PoolError::Connect)?;
            let _ = tcp.set_nodelay(true);
            match &t.tls {
                None => handshake(tcp).await,
                Some(tls) => {
                    let name =
                        ServerName::try_from(t.host.clone()).map_err(|_| PoolError::Connect)?;
                    let stream = tls.connect(name, tcp).await.map_err(|e| {
                        // A server that knows ALPN but not h2 refuses the handshake.
                        let alert = rustls::Error::AlertReceived(
                            rustls::AlertDescription::NoApplicationProtocol,
                        );
                        match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                            Some(e) if *e == alert => PoolError::NoH2,
                            _ => PoolError::Connect,
                        }
                    })?;
                    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                        return Err(PoolError::NoH2);
                    }
                    handshake(stream).await
                }
            }
        };
        tokio::time::timeout(self.inner.connect_timeout, connect)
            .await
            .map_err(|_| PoolError::Connect)?
    }
}

/// The HTTP/2 handshake on `io`; the connection runs in its own task until it closes.
async fn handshake<T>(io: T) -> Result<http2::SendRequest<Full<Bytes>>, PoolError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|_| PoolError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    /// A TLS server on 127.0.0.1:0 for `localhost` offering `alpn`, answering every request
    /// with its HTTP version; and a connector that trusts its certificate.
    async fn tls_server(alpn: &[&[u8]]) -> (u16, TlsConnector) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let version = format!("{:?}", req.version());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            version,
                        ))))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        (port, tls_connector(roots))
    }

    fn request(port: u16) -> Request<Full<Bytes>> {
        Request::post(format!("https://localhost:{port}/v2/auth/checkpoint"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    #[tokio::test]
    async fn https_negotiates_h2_by_alpn_and_carries_calls_as_streams() {
        let (port, tls) = tls_server(&[b"h2"]).await;
        let target = Target {
            host: "localhost".into(),
            port,
            tls: Some(tls),
        };
        let pool = H2Pool::new(target, Duration::from_secs(5), 100);
        for _ in 0..3 {
            let (_lease, resp) = pool.send(request(port)).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"HTTP/2.0");
        }
        assert_eq!(pool.connections(), 1);
    }

    #[tokio::test]
    async fn a_tls_server_without_h2_is_refused_with_a_clear_error() {
        // One that answers ALPN with an alert, one that ignores ALPN.
        for alpn in [&[b"http/1.1".as_slice()][..], &[]] {
            let (port, tls) = tls_server(alpn).await;
            let target = Target {
                host: "localhost".into(),
                port,
                tls: Some(tls),
            };
            let pool = H2Pool::new(target, Duration::from_secs(5), 100);
            let err = pool.send(request(port)).await.err().unwrap();
            assert!(matches!(err, PoolError::NoH2), "{alpn:?}: {err:?}");
            assert!(err.to_string().contains("--upstream-http 1.1"));
        }
    }

    #[tokio::test]
    async fn calls_waiting_on_a_connect_that_fails_fail_with_it_instead_of_trying_in_turn() {
        // A server that accepts TCP and never speaks: each TLS handshake runs into the connect
        // timeout. (Over plain TCP hyper's HTTP/2 handshake does not wait for the server.)
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
        let target = Target {
            host: "localhost".into(),
            port,
            tls: Some(tls_connector(rustls::RootCertStore::empty())),
        };
        let pool = H2Pool::new(target, Duration::from_millis(300), 100);
        let calls: Vec<_> = (0..5)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let req = Request::post(format!("https://localhost:{port}/"))
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    pool.send(req).await.err()
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), Some(PoolError::Connect));
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connect for five waiting calls"
        );
    }

    #[tokio::test]
    async fn a_certificate_nobody_vouches_for_is_a_connect_error() {
        let (port, _trusting) = tls_server(&[b"h2"]).await;
        let url = url::Url::parse(&format!("https://localhost:{port}")).unwrap();
        // The webpki roots do not include the test's self-signed certificate.
        let pool = H2Pool::new(Target::of(&url).unwrap(), Duration::from_secs(5), 100);
        let err = pool.send(request(port)).await.err().unwrap();
        assert!(matches!(err, PoolError::Connect), "{err:?}");
    }
}
