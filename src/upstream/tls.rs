//! TLS towards Unipile: the roots trusted (the webpki roots, plus `--upstream-ca-file` for a
//! TLS-intercepting proxy or a self-signed simulator) and what ALPN offers.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;

use super::connect::Offer;

/// The webpki roots and every certificate of the PEM file at `extra`, if given.
pub fn roots(extra: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let Some(path) = extra else {
        return Ok(roots);
    };
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A rustls connector (ring, the provider reqwest uses too) trusting `roots`, offering `offer`
/// by ALPN. Session resumption stays on (rustls's default, 256 sessions): a new HTTP/1.1
/// connection for a long poll resumes instead of doing a full handshake.
pub fn connector(roots: rustls::RootCertStore, offer: Offer) -> TlsConnector {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = match offer {
        Offer::Http1 => vec![b"http/1.1".to_vec()],
        Offer::Http2 => vec![b"h2".to_vec()],
        Offer::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    TlsConnector::from(Arc::new(config))
}
