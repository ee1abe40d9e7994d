//! A development PKI: one cluster CA and the certificates it signs (`strata certs init`).
//!
//! # Mechanism
//!
//! [`init`] writes into one directory:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | a self-signed CA, "Strata development CA"; it may sign end-entity certificates only (path length 0) |
//! | `node.pem`, `node.key` | a node certificate: serverAuth **and** clientAuth, because nodes also connect to each other |
//! | `client.pem`, `client.key` | a client certificate, CN `strata-client`, clientAuth only |
//!
//! The node certificate names every `--name` given (an IP literal becomes an IP-address SAN,
//! anything else a DNS SAN) plus `localhost`, `127.0.0.1`, `::1` and [`SERVER_NAME`]
//! (`strata-node`), the name clients verify when they reach a node by IP address. The CA key is
//! kept so that [`issue_node_cert`] can sign certificates for more nodes later; the same
//! directory then serves the whole cluster.
//!
//! Keys are ECDSA P-256 (rcgen's default, computed with ring). Private keys are written with
//! mode 0600; every file is written to a temporary name and renamed, and `ca.pem` is written
//! last, so an interrupted `init` leaves no `ca.pem` and can simply be run again.
//!
//! # Caveats
//!
//! - This is for development and tests. The CA key sits unencrypted next to the certificates;
//!   anyone who can read it can mint cluster members. Production clusters should bring their
//!   own PKI and point [`TlsFiles`] at it.
//! - No revocation: replacing the CA (`init --force`) is the only way to withdraw trust, and
//!   it invalidates every certificate issued before.
//! - Validity: from a day before issue (tolerating clock skew) to 10 years (CA) or 5 years
//!   (node, client) after.
//! - The CA certificate is not parsed back from `ca.pem` (that would need an X.509 parser);
//!   [`issue_node_cert`] rebuilds the CA's name from the CA key, signs, and then checks
//!   the result against `ca.pem` with webpki, so a mismatched `ca.pem`/`ca.key` pair is an
//!   error rather than a certificate nobody trusts.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};

use crate::tls::{self, SERVER_NAME, TlsFiles};

/// Common name of the development CA.
pub const CA_COMMON_NAME: &str = "Strata development CA";
/// Common name of node certificates.
pub const NODE_COMMON_NAME: &str = "strata-node";
/// Common name of the client certificate.
pub const CLIENT_COMMON_NAME: &str = "strata-client";
/// Organisation in every subject, so the certificates are recognisable in any tool.
const ORGANIZATION: &str = "Strata";
/// Names every node certificate carries besides those asked for: loopback in every spelling,
/// so a local cluster works out of the box, and [`SERVER_NAME`].
const ALWAYS_NODE_NAMES: [&str; 4] = ["localhost", "127.0.0.1", "::1", SERVER_NAME];
/// CA lifetime: long enough that a development cluster never meets it.
const CA_VALIDITY: Duration = Duration::days(3650);
/// Leaf lifetime: shorter than the CA's, as a leaf must not outlive its issuer.
const LEAF_VALIDITY: Duration = Duration::days(1825);
/// Backdating of `notBefore`, so a peer whose clock runs behind accepts a fresh certificate.
const BACKDATE: Duration = Duration::days(1);

/// The files of a certificate directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    /// The directory.
    pub dir: PathBuf,
    /// `ca.pem`: the CA certificate every party trusts.
    pub ca: PathBuf,
    /// `ca.key`: the CA's private key, for issuing more node certificates.
    pub ca_key: PathBuf,
    /// `node.pem`.
    pub node_cert: PathBuf,
    /// `node.key`.
    pub node_key: PathBuf,
    /// `client.pem`.
    pub client_cert: PathBuf,
    /// `client.key`.
    pub client_key: PathBuf,
}

impl CertPaths {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            node_cert: dir.join("node.pem"),
            node_key: dir.join("node.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            dir,
        }
    }

    /// The files a node serves and connects to peers with.
    pub fn node_tls(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.node_cert.clone(),
            key: self.node_key.clone(),
        }
    }

    /// The files a client connects with.
    pub fn client_tls(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.client_cert.clone(),
            key: self.client_key.clone(),
        }
    }
}

/// Creates a CA, a node certificate for `names` and a client certificate in `out` (created if
/// missing). Refuses to replace an existing `ca.pem` unless `force`: a new CA silently
/// distrusts every certificate the old one issued.
pub fn init(out: &Path, names: &[String], force: bool) -> anyhow::Result<CertPaths> {
    let paths = CertPaths::in_dir(out);
    if paths.ca.exists() && !force {
        bail!(
            "{} already exists; pass --force to replace the CA (certificates it issued will \
             no longer be trusted)",
            paths.ca.display()
        );
    }
    let node_sans = node_subject_alt_names(names)?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = ca_params(&ca_key);
    ca_params.not_before = now - BACKDATE;
    ca_params.not_after = now + CA_VALIDITY;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("signing the CA certificate")?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let (node_pem, node_key) = issue(&issuer, node_params(node_sans, now))?;
    let (client_pem, client_key) = issue(&issuer, client_params(now))?;

    write_file(&paths.ca_key, &ca_key.serialize_pem(), true)?;
    write_file(&paths.node_cert, &node_pem, false)?;
    write_file(&paths.node_key, &node_key, true)?;
    write_file(&paths.client_cert, &client_pem, false)?;
    write_file(&paths.client_key, &client_key, true)?;
    // Last: its presence means the directory is complete.
    write_file(&paths.ca, &ca_cert.pem(), false)?;
    Ok(paths)
}

/// Issues another node certificate from the CA saved in `ca_dir` (`ca.pem`, `ca.key`), with
/// the same always-present names as [`init`] plus `names`, and writes it to `out_cert` and
/// `out_key` (mode 0600). Checks that the new certificate verifies against `ca.pem`.
pub fn issue_node_cert(
    ca_dir: &Path,
    out_cert: &Path,
    out_key: &Path,
    names: &[String],
) -> anyhow::Result<()> {
    let paths = CertPaths::in_dir(ca_dir);
    let ca_key_pem = fs::read_to_string(&paths.ca_key)
        .with_context(|| format!("reading the CA key {}", paths.ca_key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("parsing the CA key {}", paths.ca_key.display()))?;
    let roots = tls::load_roots(&paths.ca)?;
    let node_sans = node_subject_alt_names(names)?;

    let issuer = Issuer::new(ca_params(&ca_key), &ca_key);
    let (cert_pem, key_pem) = issue(&issuer, node_params(node_sans, OffsetDateTime::now_utc()))?;
    verify_node_cert(&cert_pem, roots).with_context(|| {
        format!(
            "the certificate signed with {} does not verify against {}: do they belong together?",
            paths.ca_key.display(),
            paths.ca.display()
        )
    })?;

    if let Some(dir) = out_cert.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Some(dir) = out_key.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_file(out_key, &key_pem, true)?;
    write_file(out_cert, &cert_pem, false)?;
    Ok(())
}

/// The CA's parameters without validity: all that signing needs (name, key usages, key
/// identifier method), reproducible from the CA key alone.
///
/// Besides the common name, the subject carries an organisational unit derived from the CA's
/// public key (`ca-` and its key identifier in hex). Every development CA is called "Strata
/// development CA"; without the unit, a certificate from another cluster's CA would match our
/// CA by name and fail only on its signature (`BadSignature`), where the truth is "unknown
/// issuer".
fn ca_params(ca_key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    let id: String = params
        .key_identifier(ca_key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::OrganizationalUnitName, format!("ca-{id}"));
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn node_params(sans: Vec<SanType>, now: OffsetDateTime) -> CertificateParams {
    let mut params = leaf_params(NODE_COMMON_NAME, now);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
}

fn client_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = leaf_params(CLIENT_COMMON_NAME, now);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn leaf_params(common_name: &str, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    params
}

fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Signs a fresh key's certificate; returns (certificate PEM, key PEM).
fn issue(
    issuer: &Issuer<'_, &KeyPair>,
    params: CertificateParams,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate().context("generating a key")?;
    let cert = params
        .signed_by(&key, issuer)
        .context("signing a certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The node certificate's names: `names` (IP literals as IP SANs, the rest as DNS SANs) and
/// the always-present ones, without duplicates, in a stable order.
fn node_subject_alt_names(names: &[String]) -> anyhow::Result<Vec<SanType>> {
    let mut seen = HashSet::new();
    let mut sans = Vec::new();
    for name in names
        .iter()
        .map(|n| n.trim())
        .chain(ALWAYS_NODE_NAMES.iter().copied())
    {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                ensure!(
                    is_dns_name(name),
                    "`{name}` is neither an IP address nor a DNS name"
                );
                SanType::DnsName(
                    name.to_ascii_lowercase()
                        .try_into()
                        .with_context(|| format!("`{name}` is not a valid DNS name"))?,
                )
            }
        };
        if seen.insert(san.clone()) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// A DNS name webpki will match: dot-separated labels of letters, digits and inner hyphens,
/// 253 characters at most. A leading `*.` wildcard label is allowed.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Checks a freshly issued node certificate against the CA the way a client will.
fn verify_node_cert(cert_pem: &str, roots: rustls::RootCertStore) -> anyhow::Result<()> {
    use rustls_pki_types::pem::PemObject;
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .context("re-reading the issued certificate")?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        tls::crypto_provider(),
    )
    .build()?;
    let name = ServerName::try_from(SERVER_NAME)?;
    verifier.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())?;
    Ok(())
}

/// Writes `contents` to `path` through a temporary file and a rename, so a reader never sees
/// half a file. Private files are created with mode 0600 (owner read/write only).
fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    // A stale temporary file may have looser permissions than we want; start afresh.
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
