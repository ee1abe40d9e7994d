//! rustls configurations for QUIC: mutual TLS 1.3 against the cluster CA, ring provider only.
//!
//! # Mechanism
//!
//! Every party in a cluster holds a certificate signed by the cluster CA (see
//! [`certs`](crate::certs)). A node's QUIC endpoint is built from [`server_config`]: it presents
//! the node certificate and *requires* a client certificate that chains to the CA
//! ([`WebPkiClientVerifier`], which rejects anonymous clients by default). Clients, and nodes
//! talking to other nodes, use [`client_config`]: they trust the CA alone — never the system
//! roots, so a certificate from a public CA for the right name is still a stranger — and present
//! their own certificate. Both sides speak TLS 1.3 only (QUIC requires it) and offer the single
//! ALPN protocol [`ALPN`], so a peer speaking something else is refused with
//! `no_application_protocol` before any Strata frame is read.
//!
//! Every configuration is built with [`crypto_provider`] (ring) passed explicitly, so it works
//! whether or not a process-wide default provider was installed; [`install_crypto_provider`]
//! installs ring as the default anyway for code that calls `rustls::*Config::builder()`.
//!
//! # How a peer without a cluster certificate is refused
//!
//! In the TLS 1.3 handshake the server sends a `CertificateRequest` listing the CA's name. The
//! client answers with its certificate chain (possibly empty) and a signature over the
//! handshake proving it holds the key. The server's verifier then checks the chain against the
//! CA and the certificate's validity period and extended key usage (clientAuth):
//!
//! - no certificate at all → alert `certificate_required` (QUIC error `0x174`);
//! - a certificate from another CA, or self-signed → alert `unknown_ca` (QUIC `0x130`; the
//!   log says `UnknownIssuer`). Should another CA carry exactly our CA's name, webpki finds it
//!   by name and the signature check fails instead (`decrypt_error`, `BadSignature`); the
//!   development CAs of [`certs`](crate::certs) carry a per-key unit in their name to avoid
//!   that confusion;
//! - an expired certificate → alert `certificate_expired`.
//!
//! The server closes the connection with that crypto error. The connection never reaches the
//! application: quinn's `Incoming`/`Connecting` future resolves to an error, so no request from
//! such a peer is ever decoded. On the client side the refusal can arrive *after* the client's
//! own `connect().await` succeeded — in TLS 1.3 the client finishes its half of the handshake
//! before the server has judged its certificate — so a refused client typically sees the
//! failure on its first stream (`ConnectionLost` carrying the alert), not at `connect`.
//!
//! # Caveats
//!
//! - No revocation (no CRL, no OCSP): a leaked key is trusted until the CA is replaced.
//! - TLS does not tell a client certificate from a node certificate: anything the CA signed
//!   with clientAuth may connect. Authorisation between roles, if needed, belongs above TLS
//!   (the certificates' common names are `strata-client` and `strata-node`).
//! - 0-RTT is off (`max_early_data_size` stays 0, `enable_early_data` false): early data can
//!   be replayed, and cache writes are not idempotent with respect to versions.
//! - Clients verify the node's name. A node certificate from [`certs`](crate::certs) always
//!   carries the DNS name [`SERVER_NAME`], so clients that reach a node by IP address pass
//!   that name to `Endpoint::connect`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// The ALPN protocol both sides offer; anything else is refused during the handshake.
pub use strata_proto::wire::ALPN;

/// The DNS name every node certificate carries, whatever its other names. Clients that know a
/// node only by its IP address (the ring stores addresses) verify the node under this name.
pub const SERVER_NAME: &str = "strata-node";

/// The three files one party needs for mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM) that peers' certificates must chain to. Default
    /// `certs/ca.pem`: where `strata certs init --out certs` puts it.
    pub ca: PathBuf,
    /// This party's certificate (PEM; a chain, leaf first, is accepted). Default
    /// `certs/node.pem`.
    pub cert: PathBuf,
    /// The private key of `cert` (PEM, PKCS#8, SEC1 or PKCS#1). Default `certs/node.key`.
    pub key: PathBuf,
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self::node_in(Path::new("certs"))
    }
}

impl TlsFiles {
    /// A node's files in a directory written by [`certs::init`](crate::certs::init):
    /// `ca.pem`, `node.pem`, `node.key`.
    pub fn node_in(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node.key"),
        }
    }

    /// A client's files in a directory written by [`certs::init`](crate::certs::init):
    /// `ca.pem`, `client.pem`, `client.key`.
    pub fn client_in(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("client.pem"),
            key: dir.join("client.key"),
        }
    }
}

/// Why a TLS configuration could not be built. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file does not exist.
    #[error("{what} file {} does not exist (run `strata certs init` or fix the path)", path.display())]
    Missing {
        /// Which file: "CA certificate", "certificate" or "private key".
        what: &'static str,
        /// The path that was tried.
        path: PathBuf,
    },
    /// A file exists but could not be read or is not well-formed PEM.
    #[error("cannot read {what} from {}: {source}", path.display())]
    Read {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O or PEM error.
        #[source]
        source: pem::Error,
    },
    /// A certificate file holds no `CERTIFICATE` section.
    #[error("no certificate (a `BEGIN CERTIFICATE` section) in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key section.
    #[error("no private key (a `BEGIN PRIVATE KEY` section) in {}", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The CA file holds a certificate that cannot be a trust anchor.
    #[error("the CA certificate in {} is not usable: {source}", path.display())]
    InvalidCa {
        /// The CA file.
        path: PathBuf,
        /// What webpki objected to.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the CA.
    #[error("cannot verify clients against the CA in {}: {source}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// The builder's error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The certificate and key do not make a usable identity (for example, the key does not
    /// belong to the certificate).
    #[error("certificate {} with key {}: {source}", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// Any other rustls error (a protocol version the provider lacks, ...).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The provider lacks the cipher suite QUIC's initial packets need.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] NoInitialCipherSuite),
}

/// The crypto provider every Strata TLS configuration uses: ring.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default rustls provider. Idempotent: a provider that is
/// already installed (ring, by an earlier call) is left alone.
pub fn install_crypto_provider() {
    // `Err` only means a default is already installed; ring is the only provider compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_certs("certificate", path)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_file(path) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoPrivateKey { path: path.into() }),
        Err(e) => Err(read_error("private key", path, e)),
    }
}

/// The trust store: every certificate in the CA file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA certificate", path)? {
        roots.add(cert).map_err(|source| TlsError::InvalidCa {
            path: path.into(),
            source,
        })?;
    }
    Ok(roots)
}

/// The verifier a node uses for incoming connections: a certificate chaining to the CA in
/// `ca` is required.
pub fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = Arc::new(load_roots(ca)?);
    WebPkiClientVerifier::builder_with_provider(roots, crypto_provider())
        .build()
        .map_err(|source| TlsError::Verifier {
            path: ca.into(),
            source,
        })
}

/// Tells member certificates from client certificates. Both chain to the cluster CA; only a
/// member's allows the serverAuth usage (`strata certs init` issues node certificates for
/// server and client authentication, client certificates for client authentication only;
/// a PKI of one's own must do the same).
pub struct MemberCheck {
    roots: RootCertStore,
}

impl MemberCheck {
    /// A check against the CA certificates in `ca`.
    pub fn new(ca: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            roots: load_roots(ca)?,
        })
    }

    /// Whether `chain` (end entity first, as the peer presented it) is a member's: it chains
    /// to the CA and is valid now for serverAuth.
    pub fn is_member(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((end, intermediates)) = chain.split_first() else {
            return false;
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(end) else {
            return false;
        };
        cert.verify_for_usage(
            crypto_provider().signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .is_ok()
    }
}

/// A node's QUIC server configuration: TLS 1.3, ALPN [`ALPN`], the node certificate, and a
/// client certificate signed by the CA required from every peer; `transport` applied.
pub fn server_config(
    files: &TlsFiles,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, TlsError> {
    let verifier = client_verifier(&files.ca)?;
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|source| identity_error(files, source))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(Arc::new(tls))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// A QUIC client configuration for talking to nodes: TLS 1.3, ALPN [`ALPN`], servers verified
/// against the CA only, and this party's certificate presented.
pub fn client_config(files: &TlsFiles) -> Result<quinn::ClientConfig, TlsError> {
    let roots = load_roots(&files.ca)?;
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|source| identity_error(files, source))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(Arc::new(tls))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

fn read_error(what: &'static str, path: &Path, source: pem::Error) -> TlsError {
    match source {
        pem::Error::Io(e) if e.kind() == io::ErrorKind::NotFound => TlsError::Missing {
            what,
            path: path.into(),
        },
        source => TlsError::Read {
            what,
            path: path.into(),
            source,
        },
    }
}

fn identity_error(files: &TlsFiles, source: rustls::Error) -> TlsError {
    TlsError::Identity {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    }
}
