//! HTTPS for `qrlink simulate --tls`: a self-signed certificate made at start, offered by ALPN
//! as `h2` and `http/1.1` (or just one, `--alpn`), so the gateway's tests and benchmarks meet
//! TLS and ALPN as they do in front of the real Unipile.
//!
//! A connection whose first byte is not a TLS handshake record is served as plain HTTP on the
//! same port: the control API (`/_control/…`) stays reachable with `curl http://…` and
//! `qrlink-load --sim-url http://…`, which trust no self-signed certificate.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// First byte of a TLS record carrying a handshake message (a ClientHello, for a new
/// connection): RFC 8446 section 5.1, `ContentType.handshake`.
const TLS_HANDSHAKE: u8 = 0x16;

/// Which protocols the server offers by ALPN (`--alpn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Alpn {
    /// `h2` and `http/1.1`, the server preferring `h2` (as Unipile's edge does).
    #[default]
    #[value(name = "both")]
    Both,
    /// Only `h2`: a client that does not offer it gets a `no_application_protocol` alert.
    #[value(name = "h2")]
    H2,
    /// Only `http/1.1`: the server refuses HTTP/2.
    #[value(name = "http/1.1")]
    Http1,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
        }
    }
}

/// A self-signed certificate and the TLS acceptor that serves it.
#[derive(Clone)]
pub struct SelfSigned {
    /// The certificate, PEM: what a client must trust (`--upstream-ca-file`,
    /// `NODE_EXTRA_CA_CERTS`).
    pub cert_pem: String,
    /// The certificate, DER, for a client built in the same process.
    pub cert_der: CertificateDer<'static>,
    /// Accepts TLS with this certificate and the chosen ALPN protocols.
    pub acceptor: TlsAcceptor,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfSigned").finish_non_exhaustive()
    }
}

impl SelfSigned {
    /// A new certificate valid for `names` (host names or IP addresses; `localhost`,
    /// `127.0.0.1` and `::1` are always added), serving `alpn`.
    pub fn generate(names: &[String], alpn: Alpn) -> Result<SelfSigned, String> {
        let mut all = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        all.extend(
            names
                .iter()
                .filter(|n| !all.contains(n))
                .cloned()
                .collect::<Vec<_>>(),
        );
        // rcgen makes an IP address subject alternative name of a name that parses as one.
        let cert = rcgen::generate_simple_self_signed(all)
            .map_err(|e| format!("cannot make a certificate: {e}"))?;
        let cert_der = cert.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .map_err(|e| format!("cannot use the certificate: {e}"))?;
        config.alpn_protocols = alpn.protocols();
        Ok(SelfSigned {
            cert_pem: cert.cert.pem(),
            cert_der,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// Whether `stream` opens with a TLS handshake record; waits for its first byte without
/// consuming it. A connection that closes first is not TLS.
pub(crate) async fn starts_with_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0] == TLS_HANDSHAKE)
}
