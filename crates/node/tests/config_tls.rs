#![allow(clippy::unwrap_used)]
// `figment::Jail` closures must return `figment::Result`, whose error is large; not ours to box.
#![allow(clippy::result_large_err)]
//! Configuration layering, the development PKI, and mutual TLS over real QUIC handshakes on
//! loopback (ephemeral ports, every wait bounded).
//!
//! Tests that touch the environment or the current directory run inside `figment::Jail`,
//! which serialises them on a global lock and restores both afterwards.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::{Figment, Jail};
use quinn::crypto::rustls::QuicClientConfig;
use strata_node::certs::{self, CertPaths};
use strata_node::config::{Config, ConfigError};
use strata_node::tls::{self, TlsError, TlsFiles};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Upper bound for any network wait; loopback handshakes take milliseconds.
const WAIT: Duration = Duration::from_secs(10);

fn documented_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/node.toml")
}

fn from_file(path: &Path, base: &Path) -> Result<Config, ConfigError> {
    Config::extract(&Figment::from(Toml::file_exact(path)), base)
}

fn resolved_defaults(base: &Path) -> Config {
    let mut defaults = Config::default();
    defaults.resolve_paths(base);
    defaults
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

#[test]
fn documented_file_equals_defaults() {
    let base = Path::new("/srv/strata");
    let loaded = from_file(&documented_config(), base).unwrap();
    assert_eq!(loaded, resolved_defaults(base));
    assert_eq!(loaded.data_dir, Path::new("/srv/strata/strata-data/node"));
    assert_eq!(loaded.tls.ca, Path::new("/srv/strata/certs/ca.pem"));
    assert_eq!(loaded.limits.max_value_bytes, 256 << 20);
    assert_eq!(loaded.store.tiers.len(), 2);
}

/// The configuration of the container image (`cluster/node.toml`, its
/// `/etc/strata/node.toml`): only the addresses, data directory and certificate paths differ
/// from the defaults, and it passes validation.
#[test]
fn container_config_changes_only_addresses_and_paths() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster/node.toml");
    let base = Path::new("/var/lib/strata");
    let loaded = from_file(&file, base).unwrap();
    loaded.validate().unwrap();
    assert_eq!(loaded.listen, "0.0.0.0:7400".parse::<SocketAddr>().unwrap());
    assert_eq!(loaded.admin, "0.0.0.0:7401".parse::<SocketAddr>().unwrap());
    assert_eq!(loaded.data_dir, Path::new("/var/lib/strata/data"));
    assert_eq!(loaded.tls.key, Path::new("/var/lib/strata/certs/node.key"));
    let mut expected = resolved_defaults(base);
    expected.listen = loaded.listen;
    expected.admin = loaded.admin;
    expected.data_dir = loaded.data_dir.clone();
    expected.tls = loaded.tls.clone();
    assert_eq!(loaded, expected);
    // Without an advertised address a node on 0.0.0.0 refuses to start: compose passes one.
    assert!(loaded.advertised_addr(loaded.listen).is_err());
    let mut advertised = loaded;
    advertised.cluster.advertise = Some("strata-1:7400".into());
    advertised.cluster.advertise_client = Some("127.0.0.1:7410".into());
    advertised.validate().unwrap();
    assert_eq!(
        advertised.advertised_addr(advertised.listen).unwrap(),
        "strata-1:7400"
    );
}

#[test]
fn no_file_means_defaults() {
    let base = Path::new("/srv/strata");
    let loaded = Config::extract(&Figment::new(), base).unwrap();
    assert_eq!(loaded, resolved_defaults(base));
}

#[test]
fn documented_file_through_load_in_a_clean_directory() {
    Jail::expect_with(|jail| {
        let loaded = Config::load(Some(&documented_config())).unwrap();
        assert_eq!(loaded, resolved_defaults(jail.directory()));
        Ok(())
    });
}

#[test]
fn environment_overrides_file_and_flags_override_environment() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "node.toml",
            r#"
            node_id = 7
            listen = "127.0.0.1:8000"
            [limits]
            max_value_bytes = 5000
            chunk_bytes = 1000
            "#,
        )?;
        jail.set_env("STRATA_LISTEN", "127.0.0.1:9000");
        jail.set_env("STRATA_LIMITS__MAX_VALUE_BYTES", 1024);
        jail.set_env("STRATA_DATA_DIR", "env-data");
        jail.set_env("STRATA_TLS__CA", "/etc/strata/ca.pem");
        // The CLI's client-side variables share the shell; a node must ignore them.
        jail.set_env("STRATA_ADDR", "10.0.0.1:7400");
        jail.set_env("STRATA_CERTS", "/somewhere/certs");
        jail.set_env("STRATA_NAMESPACE", "video_colpali_mv");
        jail.set_env("STRATA_LOG", "debug");

        let mut config = Config::load(Some(Path::new("node.toml"))).unwrap();
        let dir = jail.directory();
        assert_eq!(
            config.listen,
            "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            config.node_id, 7,
            "file value where the environment is silent"
        );
        assert_eq!(config.limits.max_value_bytes, 1024);
        assert_eq!(config.limits.chunk_bytes, 1000, "file value");
        assert_eq!(
            config.limits.max_frame_bytes,
            Config::default().limits.max_frame_bytes,
            "default where both are silent"
        );
        assert_eq!(config.data_dir, dir.join("env-data"));
        assert_eq!(config.tls.ca, Path::new("/etc/strata/ca.pem"));
        assert_eq!(config.tls.cert, dir.join("certs/node.pem"));

        config.apply_overrides(
            Some("127.0.0.1:9100".parse().unwrap()),
            Some(PathBuf::from("flag-data")),
            Some(PathBuf::from("/opt/strata/certs")),
        );
        assert_eq!(
            config.listen,
            "127.0.0.1:9100".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.data_dir, dir.join("flag-data"));
        assert_eq!(
            config.tls,
            TlsFiles::node_in(Path::new("/opt/strata/certs"))
        );
        Ok(())
    });
}

#[test]
fn a_misspelt_nested_environment_variable_is_an_error_naming_it() {
    Jail::expect_with(|jail| {
        jail.set_env("STRATA_LIMITS__MAX_VALU_BYTES", 1);
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("max_valu_bytes"), "{err}");
        Ok(())
    });
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = Config::load(Some(Path::new("/nonexistent/strata/node.toml"))).unwrap_err();
    assert!(matches!(err, ConfigError::NotFound(_)), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/strata/node.toml"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("bogus_setting = 1\n", "bogus_setting"),
        ("[limits]\nmax_value_byte = 1\n", "max_value_byte"),
        ("[tls]\ncertificate = \"x.pem\"\n", "certificate"),
        ("[store]\nwriter = 2\n", "writer"),
        // Tier options are checked at load time for the built-in kinds.
        (
            "[[store.tiers]]\nkind = \"memory\"\nmax_byte = 10\n",
            "max_byte",
        ),
        (
            "[[store.tiers]]\nkind = \"filesystem\"\nfsynk = \"never\"\n",
            "fsynk",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.toml"));
        fs::write(&path, text).unwrap();
        let err = from_file(&path, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(key),
            "case {i}: error does not name `{key}`: {err}"
        );
    }
}

#[test]
fn unusable_values_are_errors_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[limits]\nchunk_bytes = 16777216\n", "limits.chunk_bytes"),
        ("[limits]\nidle_timeout_ms = 0\n", "limits.idle_timeout_ms"),
        ("[store]\nwriters = 0\n", "store.writers"),
        ("admin = \"127.0.0.1:7400\"\n", "admin"),
        ("[store]\ntiers = []\n", "store.tiers"),
        ("listen = \"not an address\"\n", "listen"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.toml"));
        fs::write(&path, text).unwrap();
        let err = from_file(&path, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(key),
            "case {i}: error does not name `{key}`: {err}"
        );
    }
}

#[test]
fn relative_tier_paths_live_under_the_data_dir() {
    let config = resolved_defaults(Path::new("/srv/strata"));
    let tiered = config.tiered_config();
    let fs_tier = tiered
        .tiers
        .iter()
        .find(|t| t.kind == "filesystem")
        .unwrap();
    assert_eq!(
        fs_tier.options["path"],
        serde_json::json!("/srv/strata/strata-data/node/cache")
    );
}

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

#[test]
fn init_writes_six_files_and_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let names = vec!["10.1.2.3".to_owned(), "node-a.example".to_owned()];
    let paths = certs::init(&out, &names, false).unwrap();
    assert_eq!(paths, CertPaths::in_dir(&out));
    for file in [
        &paths.ca,
        &paths.ca_key,
        &paths.node_cert,
        &paths.node_key,
        &paths.client_cert,
        &paths.client_key,
    ] {
        let text = fs::read_to_string(file).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{}", file.display());
    }
    assert_eq!(fs::read_dir(&out).unwrap().count(), 6, "no stray files");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in [&paths.ca_key, &paths.node_key, &paths.client_key] {
            let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
    }

    let ca_before = fs::read(&paths.ca).unwrap();
    let err = certs::init(&out, &names, false).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(fs::read(&paths.ca).unwrap(), ca_before, "CA untouched");

    certs::init(&out, &names, true).unwrap();
    assert_ne!(
        fs::read(&paths.ca).unwrap(),
        ca_before,
        "--force replaces the CA"
    );
}

#[test]
fn init_rejects_a_name_that_is_neither_ip_nor_dns() {
    let dir = tempfile::tempdir().unwrap();
    let err = certs::init(dir.path(), &["bad name!".to_owned()], false).unwrap_err();
    assert!(err.to_string().contains("bad name!"), "{err}");
    assert!(!dir.path().join("ca.pem").exists());
}

#[test]
fn issue_node_cert_refuses_a_ca_key_that_does_not_match_ca_pem() {
    let dir = tempfile::tempdir().unwrap();
    let a = certs::init(&dir.path().join("a"), &[], false).unwrap();
    let b = certs::init(&dir.path().join("b"), &[], false).unwrap();
    let mixed = CertPaths::in_dir(dir.path().join("mixed"));
    fs::create_dir_all(&mixed.dir).unwrap();
    fs::copy(&a.ca, &mixed.ca).unwrap();
    fs::copy(&b.ca_key, &mixed.ca_key).unwrap();
    let cert = dir.path().join("out/node.pem");
    let key = dir.path().join("out/node.key");
    let err = certs::issue_node_cert(&mixed.dir, &cert, &key, &[]).unwrap_err();
    assert!(format!("{err:#}").contains("does not verify"), "{err:#}");
    assert!(!cert.exists());
}

// ---------------------------------------------------------------------------------------
// TLS configuration errors
// ---------------------------------------------------------------------------------------

#[test]
fn tls_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::init(dir.path(), &[], false).unwrap();
    let transport = || Arc::new(Config::default().transport());

    let missing = TlsFiles {
        ca: dir.path().join("nope.pem"),
        ..paths.node_tls()
    };
    let err = tls::server_config(&missing, transport()).unwrap_err();
    assert!(matches!(err, TlsError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.pem"), "{err}");

    // A key file where a certificate belongs, and the reverse.
    let swapped = TlsFiles {
        cert: paths.node_key.clone(),
        ..paths.node_tls()
    };
    let err = tls::server_config(&swapped, transport()).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("node.key"), "{err}");
    let swapped = TlsFiles {
        key: paths.node_cert.clone(),
        ..paths.node_tls()
    };
    let err = tls::client_config(&swapped).unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    assert!(err.to_string().contains("node.pem"), "{err}");

    let empty = dir.path().join("empty.pem");
    fs::write(&empty, "").unwrap();
    let err = tls::client_config(&TlsFiles {
        ca: empty,
        ..paths.client_tls()
    })
    .unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.pem"), "{err}");

    // A key that does not belong to the certificate.
    let mismatched = TlsFiles {
        key: paths.client_key.clone(),
        ..paths.node_tls()
    };
    let err = tls::server_config(&mismatched, transport()).unwrap_err();
    assert!(matches!(err, TlsError::Identity { .. }), "{err:?}");

    tls::install_crypto_provider();
    tls::install_crypto_provider();
}

// ---------------------------------------------------------------------------------------
// QUIC handshakes
// ---------------------------------------------------------------------------------------

/// A QUIC echo server on 127.0.0.1, reporting each handshake's outcome.
struct EchoServer {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    handshakes: mpsc::UnboundedReceiver<Result<(), String>>,
}

impl EchoServer {
    fn start(files: &TlsFiles) -> Self {
        let transport = Arc::new(Config::default().transport());
        let server_config = tls::server_config(files, transport).unwrap();
        let endpoint =
            quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (tx, handshakes) = mpsc::unbounded_channel();
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let conn = match incoming.await {
                        Ok(conn) => conn,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(()));
                    // Echo every stream until the client closes the connection.
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            if let Ok(data) = recv.read_to_end(1 << 20).await {
                                let _ = send.write_all(&data).await;
                                let _ = send.finish();
                            }
                        });
                    }
                });
            }
        });
        Self {
            addr,
            endpoint,
            handshakes,
        }
    }

    async fn next_handshake(&mut self) -> Result<(), String> {
        timeout(WAIT, self.handshakes.recv())
            .await
            .expect("the server saw no handshake in time")
            .expect("the server task stopped")
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"test over");
    }
}

/// Connects with `client`, sends `payload` on one stream and returns what came back. Panics
/// if anything hangs: a refusal must be an explicit error, not silence.
async fn echo(
    client: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let attempt = async {
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("open stream: {e}"))?;
        send.write_all(payload)
            .await
            .map_err(|e| format!("write: {e}"))?;
        send.finish().map_err(|e| format!("finish: {e}"))?;
        let back = recv
            .read_to_end(1 << 20)
            .await
            .map_err(|e| format!("read: {e}"))?;
        conn.close(0u32.into(), b"done");
        Ok(back)
    };
    let result = timeout(WAIT, attempt)
        .await
        .expect("the attempt neither succeeded nor failed in time");
    endpoint.close(0u32.into(), b"done");
    result
}

fn payload() -> Vec<u8> {
    (0..100_000u32).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn cluster_certificates_complete_a_handshake_and_echo() {
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::init(dir.path(), &["10.1.2.3".to_owned()], false).unwrap();
    let mut server = EchoServer::start(&paths.node_tls());
    let data = payload();

    // The name clients use when they know a node by address, then the loopback names.
    for name in [tls::SERVER_NAME, "localhost", "127.0.0.1"] {
        let client = tls::client_config(&paths.client_tls()).unwrap();
        let back = echo(client, server.addr, name, &data).await.unwrap();
        assert_eq!(back, data, "echo via {name}");
        server.next_handshake().await.unwrap();
    }

    // Nodes are clients of each other: the node certificate carries clientAuth.
    let as_node = tls::client_config(&paths.node_tls()).unwrap();
    let back = echo(as_node, server.addr, tls::SERVER_NAME, b"peer")
        .await
        .unwrap();
    assert_eq!(back, b"peer");
    server.next_handshake().await.unwrap();

    // A name the node certificate does not carry is refused by the client.
    let client = tls::client_config(&paths.client_tls()).unwrap();
    let err = echo(client, server.addr, "elsewhere.example", b"x")
        .await
        .unwrap_err();
    assert!(err.contains("handshake"), "{err}");
}

#[tokio::test]
async fn an_issued_node_certificate_serves_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::init(&dir.path().join("ca"), &[], false).unwrap();
    let cert = dir.path().join("node-b/node.pem");
    let key = dir.path().join("node-b/node.key");
    certs::issue_node_cert(&paths.dir, &cert, &key, &["node-b.example".to_owned()]).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    let mut server = EchoServer::start(&TlsFiles {
        ca: paths.ca.clone(),
        cert,
        key,
    });
    for name in ["node-b.example", tls::SERVER_NAME] {
        let client = tls::client_config(&paths.client_tls()).unwrap();
        let back = echo(client, server.addr, name, b"hello").await.unwrap();
        assert_eq!(back, b"hello");
        server.next_handshake().await.unwrap();
    }
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ours = certs::init(&dir.path().join("ours"), &[], false).unwrap();
    let theirs = certs::init(&dir.path().join("theirs"), &[], false).unwrap();
    let mut server = EchoServer::start(&ours.node_tls());

    // Trusts our CA (so the client accepts the server) but presents a foreign certificate:
    // only the server's check can stop it.
    let client = tls::client_config(&TlsFiles {
        ca: ours.ca.clone(),
        cert: theirs.client_cert.clone(),
        key: theirs.client_key.clone(),
    })
    .unwrap();
    let err = echo(client, server.addr, tls::SERVER_NAME, b"let me in")
        .await
        .unwrap_err();
    eprintln!("client saw: {err}");
    let refused = server.next_handshake().await.unwrap_err();
    eprintln!("server saw: {refused}");
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // A client of the other cluster does not trust our node either.
    let client = tls::client_config(&theirs.client_tls()).unwrap();
    let err = echo(client, server.addr, tls::SERVER_NAME, b"x")
        .await
        .unwrap_err();
    assert!(err.contains("handshake"), "{err}");
    server.next_handshake().await.unwrap_err();
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::init(dir.path(), &[], false).unwrap();
    let mut server = EchoServer::start(&paths.node_tls());

    let mut anonymous = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(tls::load_roots(&paths.ca).unwrap())
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![tls::ALPN.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(Arc::new(anonymous)).unwrap(),
    ));
    let err = echo(client, server.addr, tls::SERVER_NAME, b"anyone home?")
        .await
        .unwrap_err();
    eprintln!("client saw: {err}");
    let refused = server.next_handshake().await.unwrap_err();
    eprintln!("server saw: {refused}");
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
}
