//! The client's protocol handling against a tiny in-test node: a real QUIC endpoint with
//! mutual TLS (certificates made here with rcgen), which reads request frames and streamed
//! bodies with the shared `io` helpers and answers from an in-memory map.
//!
//! A fake node answers `Ring` with a standalone ring of itself (its id is 7 unless set), or,
//! once given a cluster ring, with that ring; then it serves only the keys that ring gives
//! it and redirects the rest, as a clustered node does. It can also be told to redirect the
//! next `get` whatever it owns.
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
use strata_proto::{
    Entry, Key, Member, MemberState, Namespace, NodeId, PartitionTable, Ring, RingParams, Tensor,
    Timestamp, Value, Version,
};

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
    /// The node's id (7 if not set).
    id: Mutex<Option<NodeId>>,
    /// The node's address, once bound.
    addr: Mutex<Option<SocketAddr>>,
    /// The cluster ring, if the node is in one; standalone otherwise.
    ring: Mutex<Option<Ring>>,
    /// Answer the next `get` with this redirect.
    redirect_next_get: Mutex<Option<Ring>>,
    /// Epoch of the last request frame received.
    last_epoch: std::sync::atomic::AtomicU64,
    /// Redirects answered.
    redirects: AtomicU32,
    /// Answer `Ring` with a ring without members (as a node outside a cluster might).
    empty_ring: std::sync::atomic::AtomicBool,
    /// `Leave` requests still to answer with `NotReady`.
    leave_not_ready: AtomicU32,
    /// Apply the next `Leave`, then close the connection instead of answering.
    leave_disconnects: std::sync::atomic::AtomicBool,
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

impl State {
    fn id(&self) -> NodeId {
        self.id.lock().unwrap().unwrap_or(NodeId(7))
    }

    /// The ring the node answers: its cluster ring, or a standalone ring of itself.
    fn ring(&self) -> Ring {
        if let Some(ring) = self.ring.lock().unwrap().clone() {
            return ring;
        }
        let addr = self.addr.lock().unwrap().unwrap();
        Ring::standalone(member(self.id(), addr), RingParams::default())
    }

    /// A redirect if the node is in a cluster and does not own every one of `keys`.
    fn redirect(&self, namespace: &str, keys: &[&str]) -> Option<Response> {
        let ring = self.ring.lock().unwrap().clone()?;
        let id = self.id();
        if keys.iter().all(|k| ring.owner_of(namespace, k) == Some(id)) {
            return None;
        }
        self.redirects.fetch_add(1, Ordering::SeqCst);
        Some(Response::Redirect(Box::new(ring)))
    }
}

fn member(id: NodeId, addr: SocketAddr) -> Member {
    Member {
        id,
        addr: addr.to_string(),
        admin: String::new(),
        state: MemberState::Active,
        client_addr: None,
    }
}

impl FakeNode {
    /// A fake node with id `id`.
    fn start_as(pki: &Pki, id: u64) -> Self {
        let node = Self::start(pki);
        *node.state.id.lock().unwrap() = Some(NodeId(id));
        node
    }

    fn member(&self) -> Member {
        member(self.state.id(), self.addr)
    }

    fn insert(&self, k: &str, v: &[u8]) {
        let entry = Entry::new(
            Value::from(v.to_vec()),
            Timestamp::now(),
            None,
            Version::ZERO,
        );
        self.state
            .entries
            .lock()
            .unwrap()
            .insert(("default".into(), k.into()), entry);
    }

    fn keys(&self) -> Vec<String> {
        let entries = self.state.entries.lock().unwrap();
        entries.keys().map(|(_, k)| k.clone()).collect()
    }

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
        *state.addr.lock().unwrap() = Some(addr);
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
    state.last_epoch.store(frame.epoch, Ordering::SeqCst);
    let redirect = match &frame.request {
        Request::Get { .. } if state.redirect_next_get.lock().unwrap().is_some() => state
            .redirect_next_get
            .lock()
            .unwrap()
            .take()
            .map(|ring| Response::Redirect(Box::new(ring))),
        Request::GetMany { namespace, keys } => {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            state.redirect(namespace, &keys)
        }
        Request::SetMany {
            namespace, items, ..
        } => {
            let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
            state.redirect(namespace, &keys)
        }
        request => request
            .single_key()
            .and_then(|(namespace, key)| state.redirect(namespace, &[key])),
    };
    let answered = match redirect {
        Some(redirect) => Some((redirect, Vec::new())),
        None => answer(&state, &conn, frame.request, bodies).await,
    };
    let Some((response, out)) = answered else {
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
            node: state.id(),
            protocol: wire::PROTOCOL_VERSION,
        },
        Request::Ring if state.empty_ring.load(Ordering::SeqCst) => {
            let mut ring = state.ring();
            ring.members.clear();
            ring.table = PartitionTable::default();
            Response::Ring(Box::new(ring))
        }
        Request::Ring => Response::Ring(Box::new(state.ring())),
        Request::Leave { node } => {
            let pending = state.leave_not_ready.load(Ordering::SeqCst);
            if pending > 0 {
                state.leave_not_ready.store(pending - 1, Ordering::SeqCst);
                Response::Error(WireError::new(ErrorCode::NotReady, "no leader (fake)"))
            } else {
                let mut ring = state.ring();
                if ring.member(node).is_none() {
                    Response::Error(WireError::new(
                        ErrorCode::InvalidValue,
                        format!("member {node} is not in the cluster (fake)"),
                    ))
                } else {
                    ring.members.retain(|m| m.id != node);
                    ring.epoch += 1;
                    *state.ring.lock().unwrap() = Some(ring.clone());
                    if state.leave_disconnects.swap(false, Ordering::SeqCst) {
                        // Applied, but the answer is lost.
                        conn.close(0u32.into(), b"left");
                        return None;
                    }
                    Response::Ring(Box::new(ring))
                }
            }
        }
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
        node.requests("get_many") >= 5,
        "at most 50 keys per request"
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

// ---------------------------------------------------------------------------------------
// Routing over several fake nodes

/// Two fake nodes (ids 1 and 2) with one CA, and a client configuration for the first.
struct Pair {
    a: FakeNode,
    b: FakeNode,
    _certs: tempfile::TempDir,
    config: ClientConfig,
}

fn pair() -> Pair {
    let pki = Pki::new("test cluster CA");
    let a = FakeNode::start_as(&pki, 1);
    let b = FakeNode::start_as(&pki, 2);
    let certs = tempfile::tempdir().unwrap();
    pki.write_client_files(certs.path());
    let config = ClientConfig::new(a.addr.to_string(), certs.path());
    Pair {
        a,
        b,
        _certs: certs,
        config,
    }
}

/// A ring at `epoch` over `members` whose partition `p` (of 8) is owned by `owners[p % len]`.
fn ring_of(epoch: u64, members: &[Member], owners: &[NodeId]) -> Ring {
    let partitions = 8;
    Ring {
        epoch,
        params: RingParams {
            partitions,
            vnodes: 1,
            replication: 1,
        },
        members: members.to_vec(),
        table: PartitionTable::from_replicas(
            (0..partitions as usize)
                .map(|p| vec![owners[p % owners.len()]])
                .collect(),
        ),
        moving: 0,
        leader: Some(members[0].id),
    }
}

/// Puts both nodes of `pair` in a cluster where even partitions are node 1's, odd ones node
/// 2's.
fn split_ring(pair: &Pair) -> Ring {
    let ring = ring_of(
        3,
        &[pair.a.member(), pair.b.member()],
        &[NodeId(1), NodeId(2)],
    );
    *pair.a.state.ring.lock().unwrap() = Some(ring.clone());
    *pair.b.state.ring.lock().unwrap() = Some(ring.clone());
    ring
}

#[tokio::test]
async fn a_standalone_node_gives_a_ring_of_itself() {
    let Setup { client, node, .. } = setup().await;
    let ring = client.ring();
    assert_eq!(ring.epoch, 0);
    assert_eq!(ring.members.len(), 1);
    assert_eq!(ring.members[0].addr, node.addr.to_string());
    assert_eq!(client.members().await.unwrap().members[0].id, NodeId(7));
    let stats = client.cluster_stats().await.unwrap();
    assert_eq!(stats.nodes.len(), 1);
    assert_eq!(stats.aggregate["manager"]["sets"], 3);
    assert_eq!(node.state.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_redirect_is_followed_to_the_new_owner() {
    let pair = pair();
    pair.b.insert("moved", b"from b");
    let client = Client::connect(pair.config.clone()).await.unwrap();
    assert_eq!(client.ring().epoch, 0, "node 1 is standalone at first");
    // Node 1 hands everything to node 2 and says so when asked for a key.
    let newer = ring_of(5, &[pair.a.member(), pair.b.member()], &[NodeId(2)]);
    *pair.a.state.redirect_next_get.lock().unwrap() = Some(newer);

    let got = client.get(&ns(), &key("moved")).await.unwrap().unwrap();
    assert_eq!(got.value, Value::from(b"from b".to_vec()));
    assert_eq!(pair.a.requests("get"), 1);
    assert_eq!(pair.b.requests("get"), 1);
    assert_eq!(client.ring().epoch, 5, "the newer ring is adopted");
    assert_eq!(
        pair.b.state.last_epoch.load(Ordering::SeqCst),
        5,
        "requests carry the ring's epoch"
    );
    // Later calls go straight to node 2.
    assert!(client.exists(&ns(), &key("moved")).await.unwrap());
    assert_eq!(pair.a.requests("exists"), 0);
    assert_eq!(pair.b.requests("exists"), 1);
    // `ping` and `stats` still ask the node the client connected through.
    assert_eq!(client.ping().await.unwrap(), NodeId(1));
}

#[tokio::test]
async fn routing_that_does_not_converge_fails_with_a_routing_error() {
    let mut pair = pair();
    pair.config.retry_backoff = Duration::from_millis(1);
    // Each node, at the same epoch, says the other one owns everything.
    let members = [pair.a.member(), pair.b.member()];
    *pair.a.state.ring.lock().unwrap() = Some(ring_of(4, &members, &[NodeId(2)]));
    *pair.b.state.ring.lock().unwrap() = Some(ring_of(4, &members, &[NodeId(1)]));
    let client = Client::connect(pair.config.clone()).await.unwrap();
    let err = client.get(&ns(), &key("k")).await.unwrap_err();
    assert!(matches!(err, Error::Routing(_)), "{err:?}");
    assert!(err.to_string().contains("does not converge"), "{err}");
    let redirects = pair.a.state.redirects.load(Ordering::SeqCst)
        + pair.b.state.redirects.load(Ordering::SeqCst);
    assert_eq!(
        redirects, 9,
        "bounded: 8 redirects followed, the 9th gives up"
    );
}

#[tokio::test]
async fn batches_are_split_by_owner_and_reassembled_in_order() {
    let pair = pair();
    let ring = split_ring(&pair);
    let client = Client::connect(pair.config.clone()).await.unwrap();
    assert_eq!(client.ring().epoch, 3);

    let items: Vec<(Key, Value)> = (0..60)
        .map(|i| {
            let size = if i % 20 == 0 { 400_000 } else { 10 + i }; // some streamed
            (key(&format!("item:{i:02}")), pattern_bytes(size, i as u8))
        })
        .collect();
    let owners: Vec<NodeId> = items
        .iter()
        .map(|(k, _)| ring.owner_of("default", k.as_str()).unwrap())
        .collect();
    assert!(owners.contains(&NodeId(1)) && owners.contains(&NodeId(2)));

    let outcomes = client.set_many(&ns(), items.clone(), None).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    // Each node got exactly its own keys, in as few requests as the budgets allow.
    for (node, id) in [(&pair.a, NodeId(1)), (&pair.b, NodeId(2))] {
        let expected: Vec<String> = items
            .iter()
            .zip(&owners)
            .filter(|(_, o)| **o == id)
            .map(|((k, _), _)| k.to_string())
            .collect();
        assert_eq!(node.keys(), expected);
        assert_eq!(node.requests("set_many"), 1);
        assert_eq!(node.state.redirects.load(Ordering::SeqCst), 0);
    }

    let mut keys: Vec<Key> = items.iter().rev().map(|(k, _)| k.clone()).collect();
    keys.insert(7, key("missing"));
    let got = client.get_many(&ns(), &keys).await.unwrap();
    assert_eq!(got.len(), keys.len());
    for (k, entry) in keys.iter().zip(&got) {
        match items.iter().find(|(ik, _)| ik == k) {
            Some((_, v)) => assert_eq!(&entry.as_ref().unwrap().value, v, "{k}"),
            None => assert!(entry.is_none(), "{k}"),
        }
    }
    assert_eq!(pair.a.requests("get_many"), 1);
    assert_eq!(pair.b.requests("get_many"), 1);
}

#[tokio::test]
async fn a_batch_whose_owner_changed_is_rerouted() {
    let pair = pair();
    let members = [pair.a.member(), pair.b.member()];
    // The client starts with a ring where node 1 owns everything; node 1 has since handed
    // the odd partitions to node 2.
    let old = ring_of(2, &members, &[NodeId(1)]);
    *pair.a.state.ring.lock().unwrap() = Some(old);
    let client = Client::connect(pair.config.clone()).await.unwrap();
    assert_eq!(client.ring().epoch, 2);
    split_ring(&pair);

    let items: Vec<(Key, Value)> = (0..20)
        .map(|i| (key(&format!("r:{i}")), Value::from(vec![i as u8])))
        .collect();
    let outcomes = client.set_many(&ns(), items.clone(), None).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(client.ring().epoch, 3);
    assert_eq!(pair.a.keys().len() + pair.b.keys().len(), 20);
    assert!(!pair.b.keys().is_empty());
    let keys: Vec<Key> = items.iter().map(|(k, _)| k.clone()).collect();
    let got = client.get_many(&ns(), &keys).await.unwrap();
    for ((_, v), entry) in items.iter().zip(got) {
        assert_eq!(&entry.unwrap().value, v);
    }
}

#[tokio::test]
async fn listings_merge_every_member_without_duplicates() {
    let pair = pair();
    split_ring(&pair);
    for k in ["k1", "k3", "dup", "other"] {
        pair.a.insert(k, b"a");
    }
    for k in ["k2", "k4", "dup"] {
        pair.b.insert(k, b"b");
    }
    let client = Client::connect(pair.config.clone()).await.unwrap();

    let listed: Vec<String> = client
        .list_keys(&ns(), Some("k*"), false)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(listed, ["k1", "k2", "k3", "k4"]);
    let all = client.list_keys(&ns(), None, true).await.unwrap();
    let names: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["dup", "k1", "k2", "k3", "k4", "other"]);
    assert!(all.iter().all(|(_, m)| m.is_some()));

    // Page by page, two at a time: the same keys, each once.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .list_keys_page(&ns(), None, false, after.as_deref(), 2)
            .await
            .unwrap();
        assert!(page.keys.len() <= 2);
        paged.extend(page.keys.into_iter().map(|(k, _)| k.to_string()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, names);

    let stats = client.cluster_stats().await.unwrap();
    assert_eq!(stats.nodes.len(), 2);
    assert_eq!(stats.aggregate["manager"]["sets"], 6);
    assert_eq!(stats.aggregate["manager"]["hits"], 2);
    assert_eq!(stats.aggregate["nodes_reporting"], 2);
    let membership = client.members().await.unwrap();
    assert_eq!(membership.leader, Some(NodeId(1)));
    assert_eq!(membership.members.len(), 2);

    assert_eq!(
        client.clear(&ns(), None).await.unwrap(),
        7,
        "a clear reaches every member"
    );
    assert!(
        client
            .list_keys(&ns(), None, false)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_member_that_cannot_be_reached_sends_the_client_back_to_the_ring() {
    let mut pair = pair();
    pair.config.connect_timeout = Duration::from_millis(300);
    pair.config.retry_backoff = Duration::from_millis(10);
    // A member nobody listens for.
    let dead = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let members = [pair.a.member(), member(NodeId(9), dead)];
    *pair.a.state.ring.lock().unwrap() = Some(ring_of(6, &members, &[NodeId(9)]));
    let client = Client::connect(pair.config.clone()).await.unwrap();
    // Meanwhile the cluster gave the dead member's partitions to node 1.
    let mut healed = ring_of(7, &members, &[NodeId(1)]);
    healed.members[1].state = MemberState::Down;
    *pair.a.state.ring.lock().unwrap() = Some(healed);
    pair.a.insert("k", b"v");

    let started = Instant::now();
    let got = client.get(&ns(), &key("k")).await.unwrap().unwrap();
    assert_eq!(got.value, Value::from(b"v".to_vec()));
    assert_eq!(client.ring().epoch, 7);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A member marked down is left out of cluster-wide calls.
    assert_eq!(client.list_keys(&ns(), None, false).await.unwrap().len(), 1);
}

#[tokio::test]
async fn any_seed_will_do() {
    let mut pair = pair();
    let dead = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    pair.config.connect_timeout = Duration::from_millis(300);
    pair.config.seeds = vec![pair.config.addr.clone()];
    pair.config.addr = dead.to_string();
    let client = Client::connect(pair.config.clone()).await.unwrap();
    assert_eq!(client.ping().await.unwrap(), NodeId(1));
}

#[tokio::test]
async fn a_node_that_answers_a_ring_without_members_is_taken_as_standalone() {
    let pki = Pki::new("test cluster CA");
    let node = FakeNode::start(&pki);
    node.state.empty_ring.store(true, Ordering::SeqCst);
    let certs = tempfile::tempdir().unwrap();
    pki.write_client_files(certs.path());
    let client = Client::connect(ClientConfig::new(node.addr.to_string(), certs.path()))
        .await
        .unwrap();
    let ring = client.ring();
    assert_eq!(ring.members.len(), 1);
    assert_eq!(ring.members[0].id, NodeId(7));
    client
        .set(&ns(), &key("k"), Value::from(b"v".to_vec()), None)
        .await
        .unwrap();
    assert!(client.exists(&ns(), &key("k")).await.unwrap());
    assert_eq!(node.state.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn leave_is_asked_again_while_the_cluster_is_not_ready() {
    let mut pair = pair();
    pair.config.retry_backoff = Duration::from_millis(1);
    split_ring(&pair);
    // More NotReady answers than the usual three retries.
    pair.a.state.leave_not_ready.store(5, Ordering::SeqCst);
    let client = Client::connect(pair.config.clone()).await.unwrap();
    let ring = client.leave(NodeId(2)).await.unwrap();
    assert!(ring.member(NodeId(2)).is_none());
    assert_eq!(ring.epoch, 4);
    assert_eq!(client.ring().epoch, 4, "the answered ring is adopted");
    assert_eq!(pair.a.requests("leave"), 6);
}

#[tokio::test]
async fn a_leave_whose_answer_was_lost_is_recognised_as_done() {
    let mut pair = pair();
    pair.config.retry_backoff = Duration::from_millis(1);
    let ring = split_ring(&pair);
    // Node 2 already has the ring without itself: asked again, it refuses.
    let mut without_2 = ring.clone();
    without_2.members.retain(|m| m.id != NodeId(2));
    *pair.b.state.ring.lock().unwrap() = Some(without_2);
    pair.a.state.leave_disconnects.store(true, Ordering::SeqCst);
    let client = Client::connect(pair.config.clone()).await.unwrap();

    let ring = client.leave(NodeId(2)).await.unwrap();
    assert!(ring.member(NodeId(2)).is_none());
    assert_eq!(ring.epoch, 4);
    assert_eq!(pair.a.requests("leave"), 1);
    assert_eq!(
        pair.b.requests("leave"),
        1,
        "the other member was asked and refused"
    );

    // Without a lost answer, a refusal is the caller's.
    let err = client.leave(NodeId(99)).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::InvalidValue), "{err}");
}
