//! The client's protocol handling against a tiny in-test node: a real QUIC endpoint with
//! mutual TLS (certificates made here with rcgen), which reads request frames and streamed
//! bodies with the shared `io` helpers and answers from an in-memory map.
//!
//! The fake node knows a few magic keys: `boom` fails with `NoSpace`, `flaky` answers
//! `Unavailable` twice before succeeding, `hang` is never answered, `disconnect` closes the
//! connection the first time it is asked for, and a set of `reject-early` is refused before
//! its value is read. Real end-to-end tests against the node
//! binary live elsewhere; this file checks framing, streaming, paging, batching, error
//! mapping, retries, timeouts and reconnects.

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use strata_client::io::{self, ReadLimits};
use strata_client::{Client, ClientConfig, Error};
use strata_proto::wire::{
    self, Body, ErrorCode, Request, RequestFrame, Response, ResponseFrame, WireEntry, WireError,
};
use strata_proto::{Entry, Key, Namespace, NodeId, Tensor, Timestamp, Value, Version};

/// Values above this are streamed in the fake node's answers (smaller than the client's
/// limit, so that mid-size values are streamed one way and inline the other).
const NODE_INLINE_LIMIT: usize = 64 << 10;

// ---------------------------------------------------------------------------------------
// Certificates

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A leaf certificate signed by this CA, and its key.
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        (params.signed_by(&key, &self.ca).unwrap(), key)
    }

    /// Writes `ca.pem`, `client.pem` and `client.key` into `dir`, as `strata certs init`.
    fn write_client_files(&self, dir: &Path) {
        let (cert, key) = self.issue(&["strata-client"], ExtendedKeyUsagePurpose::ClientAuth);
        std::fs::write(dir.join("ca.pem"), self.ca.pem()).unwrap();
        std::fs::write(dir.join("client.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("client.key"), key.serialize_pem()).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The fake node

#[derive(Default)]
struct State {
    entries: Mutex<BTreeMap<(String, String), Entry>>,
    /// Requests received, by kind.
    requests: Mutex<HashMap<&'static str, usize>>,
    flaky_failures: AtomicU32,
    disconnects: AtomicU32,
    connections: AtomicU32,
}

struct FakeNode {
    addr: SocketAddr,
    state: Arc<State>,
    _endpoint: Endpoint,
}

impl FakeNode {
    fn start(pki: &Pki) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.der().clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let (cert, key) = pki.issue(
            &["localhost", "127.0.0.1", "::1", "strata-node"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let cert: CertificateDer<'static> = cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert], key)
            .unwrap();
        tls.alpn_protocols = vec![wire::ALPN.to_vec()];
        let config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        let endpoint = Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let state = Arc::new(State::default());
        tokio::spawn(accept(endpoint.clone(), state.clone()));
        Self {
            addr,
            state,
            _endpoint: endpoint,
        }
    }

    fn requests(&self, kind: &str) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .get(kind)
            .copied()
            .unwrap_or(0)
    }
}

async fn accept(endpoint: Endpoint, state: Arc<State>) {
    while let Some(incoming) = endpoint.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            state.connections.fetch_add(1, Ordering::SeqCst);
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(serve_stream(state.clone(), conn.clone(), send, recv));
            }
        });
    }
}

async fn serve_stream(
    state: Arc<State>,
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let limits = ReadLimits::default();
    let Ok(frame) = io::read_frame::<RequestFrame>(&mut recv, &limits).await else {
        return;
    };
    if let Request::Set { key, .. } = &frame.request
        && key == "reject-early"
    {
        // Refuse without reading the value, as a node does with an oversized one.
        let _ = recv.stop(0u32.into());
        let response = Response::Error(WireError::new(ErrorCode::TooLarge, "too large (fake)"));
        let frame = ResponseFrame {
            id: frame.id,
            response,
        };
        if io::write_message(&mut send, &frame, &[], 1024)
            .await
            .is_ok()
        {
            let _ = send.finish();
        }
        return;
    }
    let lengths = frame.request.streamed_lengths();
    let Ok(bodies) = io::read_bodies(&mut recv, &lengths, &limits).await else {
        return;
    };
    *state
        .requests
        .lock()
        .unwrap()
        .entry(frame.request.kind())
        .or_default() += 1;
    let Some((response, out)) = answer(&state, &conn, frame.request, bodies).await else {
        return;
    };
    let frame = ResponseFrame {
        id: frame.id,
        response,
    };
    if io::write_message(&mut send, &frame, &out, 16 << 10)
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
}

fn payload(body: Body, streamed: &mut impl Iterator<Item = Bytes>) -> Bytes {
    match body {
        Body::Inline(b) => b,
        Body::Streamed(_) => streamed.next().unwrap(),
    }
}

/// The wire form of a stored entry, pushing its payload to `out` if it is streamed.
fn wire_entry(entry: &Entry, out: &mut Vec<Bytes>) -> WireEntry {
    let (value, streamed) = wire::split_value(&entry.value, NODE_INLINE_LIMIT);
    out.extend(streamed.into_iter().flatten());
    WireEntry {
        meta: entry.meta.clone(),
        body: value.body,
    }
}

fn matches(pattern: &Option<String>, key: &str) -> bool {
    match pattern.as_deref() {
        None | Some("*") => true,
        Some(p) => match p.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == p,
        },
    }
}

fn no_space() -> WireError {
    WireError::new(ErrorCode::NoSpace, "disk full (fake)")
}

/// Answers one request; `None` means never answer.
async fn answer(
    state: &State,
    conn: &Connection,
    request: Request,
    bodies: Vec<Bytes>,
) -> Option<(Response, Vec<Bytes>)> {
    let mut streamed = bodies.into_iter();
    let mut out = Vec::new();
    let stamp = |value: Value, ttl_ms: Option<u64>| {
        Entry::new(
            value,
            Timestamp::now(),
            ttl_ms.map(Duration::from_millis),
            Version::ZERO,
        )
    };
    let response = match request {
        Request::Ping => Response::Pong {
            node: NodeId(7),
            protocol: wire::PROTOCOL_VERSION,
        },
        Request::Get { namespace, key } => match key.as_str() {
            "hang" => std::future::pending().await,
            "boom" => Response::Error(no_space()),
            "flaky" if state.flaky_failures.fetch_add(1, Ordering::SeqCst) < 2 => {
                Response::Error(WireError::new(ErrorCode::Unavailable, "busy (fake)"))
            }
            "disconnect" if state.disconnects.fetch_add(1, Ordering::SeqCst) == 0 => {
                conn.close(0u32.into(), b"going away");
                return None;
            }
            _ => {
                let entries = state.entries.lock().unwrap();
                Response::Entry(
                    entries
                        .get(&(namespace, key))
                        .map(|e| wire_entry(e, &mut out)),
                )
            }
        },
        Request::Set {
            namespace,
            key,
            ttl_ms,
            value,
        } => {
            if key == "boom" {
                Response::Error(no_space())
            } else {
                let value = wire::join_value(&value.format, payload(value.body, &mut streamed));
                match value {
                    Ok(value) => {
                        let entry = stamp(value, ttl_ms);
                        state
                            .entries
                            .lock()
                            .unwrap()
                            .insert((namespace, key), entry);
                        Response::Stored
                    }
                    Err(e) => Response::Error(e),
                }
            }
        }
        Request::Delete { namespace, key } => Response::Deleted(
            state
                .entries
                .lock()
                .unwrap()
                .remove(&(namespace, key))
                .is_some(),
        ),
        Request::Exists { namespace, key } => Response::Exists(
            state
                .entries
                .lock()
                .unwrap()
                .contains_key(&(namespace, key)),
        ),
        Request::Metadata { namespace, key } => Response::Metadata(
            state
                .entries
                .lock()
                .unwrap()
                .get(&(namespace, key))
                .map(|e| e.meta.clone()),
        ),
        Request::Clear { namespace, pattern } => {
            let mut entries = state.entries.lock().unwrap();
            let before = entries.len();
            entries.retain(|(ns, k), _| *ns != namespace || !matches(&pattern, k));
            Response::Cleared((before - entries.len()) as u64)
        }
        Request::ListKeys {
            namespace,
            pattern,
            with_meta,
            after,
            limit,
        } => {
            let entries = state.entries.lock().unwrap();
            let mut keys: Vec<(String, Option<_>)> = entries
                .iter()
                .filter(|((ns, k), _)| {
                    *ns == namespace && matches(&pattern, k) && after.as_ref().is_none_or(|a| k > a)
                })
                .take(limit as usize + 1)
                .map(|((_, k), e)| (k.clone(), with_meta.then(|| e.meta.clone())))
                .collect();
            let next = if keys.len() > limit as usize {
                keys.truncate(limit as usize);
                keys.last().map(|(k, _)| k.clone())
            } else {
                None
            };
            Response::Keys { keys, next }
        }
        Request::Stats => Response::Stats(
            serde_json::json!({
                "manager": {"hits": 1, "misses": 2, "sets": 3, "deletes": 0, "evictions": 0,
                            "hit_rate": 0.33, "size_bytes": 10, "total_files": 1},
                "tiers": {}
            })
            .to_string(),
        ),
        Request::GetMany { namespace, keys } => {
            let entries = state.entries.lock().unwrap();
            Response::Entries(
                keys.into_iter()
                    .map(|k| {
                        entries
                            .get(&(namespace.clone(), k))
                            .map(|e| wire_entry(e, &mut out))
                    })
                    .collect(),
            )
        }
        Request::SetMany {
            namespace,
            ttl_ms,
            items,
        } => {
            let mut entries = state.entries.lock().unwrap();
            Response::StoredMany(
                items
                    .into_iter()
                    .map(|(key, value)| {
                        let bytes = payload(value.body, &mut streamed);
                        if key == "boom" {
                            return Some(no_space());
                        }
                        match wire::join_value(&value.format, bytes) {
                            Ok(v) => {
                                entries.insert((namespace.clone(), key), stamp(v, ttl_ms));
                                None
                            }
                            Err(e) => Some(e),
                        }
                    })
                    .collect(),
            )
        }
        other => Response::Error(WireError::new(
            ErrorCode::Forbidden,
            format!("{} is not served by the fake node", other.kind()),
        )),
    };
    Some((response, out))
}

// ---------------------------------------------------------------------------------------
// Tests

struct Setup {
    node: FakeNode,
    certs: tempfile::TempDir,
    client: Client,
}

async fn setup_with(tune: impl FnOnce(&mut ClientConfig)) -> Setup {
    let pki = Pki::new("test cluster CA");
    let node = FakeNode::start(&pki);
    let certs = tempfile::tempdir().unwrap();
    pki.write_client_files(certs.path());
    let mut config = ClientConfig::new(node.addr.to_string(), certs.path());
    tune(&mut config);
    let client = Client::connect(config).await.unwrap();
    Setup {
        node,
        certs,
        client,
    }
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
}

fn ns() -> Namespace {
    Namespace::default_namespace()
}

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

/// Bytes that differ along their length, so that a misplaced chunk is noticed.
fn pattern_bytes(len: usize, seed: u8) -> Value {
    Value::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test]
async fn small_and_streamed_values_round_trip() {
    let Setup { client, node, .. } = setup().await;
    assert_eq!(client.ping().await.unwrap(), NodeId(7));

    let small = Value::from(b"hello world".to_vec());
    client
        .set(
            &ns(),
            &key("small"),
            small.clone(),
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let got = client.get(&ns(), &key("small")).await.unwrap().unwrap();
    assert_eq!(got.value, small);
    assert!(got.meta.expires_at.is_some(), "the TTL travelled");

    // 5 MiB: streamed in chunks both ways.
    let big = pattern_bytes(5 << 20, 3);
    client
        .set(&ns(), &key("big"), big.clone(), None)
        .await
        .unwrap();
    let got = client.get(&ns(), &key("big")).await.unwrap().unwrap();
    assert_eq!(got.meta.size_bytes, 5 << 20);
    assert_eq!(got.value, big);

    // A tensor keeps dtype and shape through the streamed path.
    let tensor =
        Value::Tensor(Tensor::from_slice(vec![512, 384], &vec![0.5f32; 512 * 384]).unwrap());
    client
        .set(&ns(), &key("embedding"), tensor.clone(), None)
        .await
        .unwrap();
    assert_eq!(
        client
            .get(&ns(), &key("embedding"))
            .await
            .unwrap()
            .unwrap()
            .value,
        tensor
    );

    assert!(client.exists(&ns(), &key("big")).await.unwrap());
    let meta = client
        .metadata(&ns(), &key("small"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(meta.size_bytes, 11);
    assert!(client.delete(&ns(), &key("big")).await.unwrap());
    assert!(!client.delete(&ns(), &key("big")).await.unwrap());
    assert!(client.get(&ns(), &key("big")).await.unwrap().is_none());
    assert!(client.metadata(&ns(), &key("big")).await.unwrap().is_none());
    assert!(!client.exists(&ns(), &key("big")).await.unwrap());

    let stats = client.stats().await.unwrap();
    assert_eq!(stats["manager"]["sets"], 3);
    assert_eq!(client.clear(&ns(), Some("*")).await.unwrap(), 2);
    assert_eq!(
        node.state.connections.load(Ordering::SeqCst),
        1,
        "one connection, reused"
    );
}

#[tokio::test]
async fn many_concurrent_requests_share_one_connection() {
    let Setup { client, node, .. } = setup().await;
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let k = key(&format!("task:{i}"));
                let v = pattern_bytes(1000 + i * 5000, i as u8);
                client.set(&ns(), &k, v.clone(), None).await.unwrap();
                assert_eq!(client.get(&ns(), &k).await.unwrap().unwrap().value, v);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(node.requests("set"), 64);
    assert_eq!(node.state.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn batches_are_split_and_keep_their_order() {
    let Setup { client, node, .. } = setup_with(|c| c.batch_max_items = 50).await;
    let mut items: Vec<(Key, Value)> = (0..200)
        .map(|i| {
            let size = match i % 50 {
                0 => 5 << 20,     // streamed
                1..=4 => 100_000, // streamed by the node, inline from the client
                _ => 100,
            };
            (key(&format!("item:{i:03}")), pattern_bytes(size, i as u8))
        })
        .collect();
    items.insert(17, (key("boom"), Value::from(b"x".to_vec())));
    let expected = items.clone();

    let outcomes = client.set_many(&ns(), items, None).await;
    assert_eq!(outcomes.len(), 201);
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 17 {
            let err = outcome.as_ref().unwrap_err();
            assert_eq!(err.server_code(), Some(ErrorCode::NoSpace), "{err}");
        } else {
            outcome.as_ref().unwrap();
        }
    }
    assert!(
        node.requests("set_many") >= 5,
        "split into batches of at most 50"
    );

    let mut keys: Vec<Key> = expected.iter().map(|(k, _)| k.clone()).collect();
    keys.push(key("missing"));
    let got = client.get_many(&ns(), &keys).await.unwrap();
    assert_eq!(got.len(), keys.len());
    for (i, (k, v)) in expected.iter().enumerate() {
        match k.as_str() {
            "boom" => assert!(got[i].is_none()),
            _ => assert_eq!(got[i].as_ref().unwrap().value, *v, "{k}"),
        }
    }
    assert!(got.last().unwrap().is_none());
    assert!(
        node.requests("get_many") >= 7,
        "at most 31 keys per request"
    );
    assert!(client.set_many(&ns(), Vec::new(), None).await.is_empty());
    assert!(client.get_many(&ns(), &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn listing_follows_pages() {
    let Setup { client, node, .. } = setup().await;
    let items: Vec<(Key, Value)> = (0..2500)
        .map(|i| (key(&format!("k:{i:05}")), Value::from(b"v".to_vec())))
        .collect();
    client
        .set(&ns(), &key("other"), Value::from(b"o".to_vec()), None)
        .await
        .unwrap();
    assert!(
        client
            .set_many(&ns(), items, None)
            .await
            .iter()
            .all(Result::is_ok)
    );

    let keys = client.list_keys(&ns(), Some("k:*"), false).await.unwrap();
    assert_eq!(keys.len(), 2500);
    assert_eq!(keys[0].0.as_str(), "k:00000");
    assert_eq!(keys[2499].0.as_str(), "k:02499");
    assert!(
        keys.windows(2).all(|w| w[0].0 < w[1].0),
        "in order, no repeats"
    );
    assert!(keys.iter().all(|(_, m)| m.is_none()));
    assert_eq!(node.requests("list_keys"), 3, "pages of 1000");

    let page = client
        .list_keys_page(&ns(), None, true, Some("k:00100"), 10)
        .await
        .unwrap();
    assert_eq!(page.keys.len(), 10);
    assert_eq!(page.keys[0].0.as_str(), "k:00101");
    assert_eq!(page.next.as_deref(), Some("k:00110"));
    assert!(page.keys.iter().all(|(_, m)| m.is_some()));
    assert_eq!(
        client.list_keys(&ns(), None, false).await.unwrap().len(),
        2501
    );
}

#[tokio::test]
async fn node_errors_keep_their_code_and_only_transient_ones_are_retried() {
    let Setup { client, node, .. } = setup().await;
    let err = client.get(&ns(), &key("boom")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Server { code: ErrorCode::NoSpace, message } if message.contains("disk full")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let err = client
        .set(&ns(), &key("boom"), Value::from(b"x".to_vec()), None)
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::NoSpace));
    assert_eq!(node.requests("get"), 1, "a NoSpace is not retried");
    assert_eq!(node.requests("set"), 1);

    // Unavailable twice, then an answer: the caller only sees the answer.
    assert!(client.get(&ns(), &key("flaky")).await.unwrap().is_none());
    assert_eq!(node.requests("get"), 4);
}

#[tokio::test]
async fn a_value_refused_before_it_is_read_reports_the_nodes_reason() {
    let Setup { client, .. } = setup().await;
    // The node stops reading while the client is still streaming 8 MiB; the client reads the
    // answer rather than reporting the failed write.
    let err = client
        .set(&ns(), &key("reject-early"), pattern_bytes(8 << 20, 1), None)
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::TooLarge), "{err:?}");
    assert_eq!(client.ping().await.unwrap(), NodeId(7));
}

#[tokio::test]
async fn a_node_that_never_answers_times_out() {
    let Setup { client, .. } = setup_with(|c| {
        c.request_timeout = Duration::from_millis(300);
        c.retries = 1;
        c.retry_backoff = Duration::from_millis(10);
    })
    .await;
    let started = Instant::now();
    let err = client.get(&ns(), &key("hang")).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(took >= Duration::from_millis(600), "two attempts: {took:?}");
    assert!(took < Duration::from_secs(3), "bounded: {took:?}");
    // The connection is still good for other requests.
    assert_eq!(client.ping().await.unwrap(), NodeId(7));
}

#[tokio::test]
async fn a_broken_connection_is_replaced() {
    let Setup {
        client,
        node,
        certs: _certs,
    } = setup().await;
    // The node closes the connection instead of answering; the retry reconnects.
    assert!(
        client
            .get(&ns(), &key("disconnect"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(node.state.connections.load(Ordering::SeqCst), 2);
    assert_eq!(client.ping().await.unwrap(), NodeId(7));

    // Without retries the caller sees the lost connection, and the next call reconnects.
    node.state.disconnects.store(0, Ordering::SeqCst);
    let mut config = client.config().clone();
    config.retries = 0;
    let client = Client::connect(config).await.unwrap();
    let err = client.get(&ns(), &key("disconnect")).await.unwrap_err();
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err:?}");
    assert_eq!(client.ping().await.unwrap(), NodeId(7));
}

#[tokio::test]
async fn a_client_the_cluster_does_not_trust_gets_a_tls_error() {
    let Setup { node, .. } = setup().await;
    let stranger = Pki::new("some other CA");
    let dir = tempfile::tempdir().unwrap();
    stranger.write_client_files(dir.path());
    // Trusts the other CA, so our side fails the handshake on the node's certificate.
    let err = Client::connect(ClientConfig::new(node.addr.to_string(), dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_by_the_node() {
    let Setup { node, certs, .. } = setup().await;
    // Trust the right CA but present a certificate the node does not trust.
    let stranger = Pki::new("some other CA");
    let (cert, key) = stranger.issue(&["intruder"], ExtendedKeyUsagePurpose::ClientAuth);
    std::fs::write(certs.path().join("client.pem"), cert.pem()).unwrap();
    std::fs::write(certs.path().join("client.key"), key.serialize_pem()).unwrap();
    let mut config = ClientConfig::new(node.addr.to_string(), certs.path());
    config.retries = 0;
    let outcome = match Client::connect(config).await {
        Ok(client) => client.ping().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let err = outcome.unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
}

#[tokio::test]
async fn missing_certificate_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = Client::connect(ClientConfig::new("127.0.0.1:9", dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
}
