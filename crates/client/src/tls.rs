//! TLS for the client: the cluster CA as the only trust root, the client certificate for
//! mutual TLS, TLS 1.3 (QUIC requires it) with the `ring` provider, and Strata's ALPN.
//!
//! Nodes present certificates signed by the cluster CA; public web roots are deliberately not
//! trusted, so a Strata client only ever talks to nodes of its own cluster.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use strata_proto::wire;

use crate::config::TlsFiles;
use crate::error::Error;

/// How often an idle connection sends a keep-alive, so that a client that pauses between
/// bursts (an agent between tasks) finds its connection still open. Well under quinn's 30 s
/// idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Flow-control window of one stream: a node can send this much of a large value before the
/// client has read it. Larger than quinn's default so that one large value streams at
/// loopback speed.
const STREAM_WINDOW: u32 = 8 << 20;

/// Flow-control window of the whole connection, shared by all concurrent streams.
const CONNECTION_WINDOW: u32 = 32 << 20;

/// Reads every certificate in a PEM file; an empty file is an error.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let unreadable = |e: rustls_pki_types::pem::Error| {
        Error::Config(format!("reading certificates from {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        Error::Config(format!(
            "reading a private key from {}: {e}",
            path.display()
        ))
    })
}

/// The rustls configuration of a client: cluster CA roots, client certificate, ALPN.
pub(crate) fn rustls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, Error> {
    // Idempotent: keeps whichever provider was installed first (always ring in this build).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&files.ca)? {
        roots.add(ca).map_err(|e| {
            Error::Tls(format!(
                "CA certificate in {} is not usable: {e}",
                files.ca.display()
            ))
        })?;
    }
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            Error::Tls(format!(
                "client certificate {} with key {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![wire::ALPN.to_vec()];
    Ok(config)
}

/// The QUIC client configuration: TLS plus transport parameters.
pub fn quic_config(files: &TlsFiles) -> Result<quinn::ClientConfig, Error> {
    let crypto = QuicClientConfig::try_from(rustls_config(files)?)
        .map_err(|e| Error::Tls(format!("TLS configuration unusable for QUIC: {e}")))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW))
        .receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW))
        // Nodes never open streams towards a client.
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(0))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .ack_frequency_config(Some(crate::io::ack_frequency()));
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
