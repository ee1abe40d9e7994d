//! One real `strata node` process on a free port, driven by the client library, the CLI, and
//! raw QUIC streams for the bad-input cases.

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ndarray::Array2;
use strata_client::{Client, ClientConfig, Error};
#[path = "support/mod.rs"]
mod support;

use strata_proto::wire::{
    self, ErrorCode, HEADER_LEN, Request, RequestFrame, Response, ResponseFrame,
};
use strata_proto::{Frame, FrameFormat, Key, Namespace, NodeId, Record, Tensor, Value, Version};
use support::{Cluster, TestNode, strata};

fn ns() -> Namespace {
    Namespace::default_namespace()
}

fn key(k: &str) -> Key {
    Key::new(k).unwrap()
}

async fn client(cluster: &Cluster, node: &TestNode) -> Client {
    Client::connect(ClientConfig::new(node.addr().to_string(), cluster.certs()))
        .await
        .unwrap()
}

/// A raw QUIC connection with the cluster's client certificate, for sending bytes the client
/// library never would.
async fn raw_connection(cluster: &Cluster, node: &TestNode) -> quinn::Connection {
    raw_connection_as(cluster, node, "client").await
}

/// A raw QUIC connection presenting the certificate `identity` (`client` or `node`) of the
/// cluster's certificates directory.
async fn raw_connection_as(
    cluster: &Cluster,
    node: &TestNode,
    identity: &str,
) -> quinn::Connection {
    strata_node::tls::install_crypto_provider();
    let files = strata_node::tls::TlsFiles {
        ca: cluster.certs().join("ca.pem"),
        cert: cluster.certs().join(format!("{identity}.pem")),
        key: cluster.certs().join(format!("{identity}.key")),
    };
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(strata_node::tls::client_config(&files).unwrap());
    endpoint
        .connect(node.addr(), strata_node::tls::SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

/// Sends raw bytes on a new stream and reads the node's answer.
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> ResponseFrame {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let _ = send.finish();
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.len() >= HEADER_LEN, "no response frame");
    wire::decode_body(&answer[HEADER_LEN..]).unwrap()
}

fn error_code(frame: &ResponseFrame) -> ErrorCode {
    match &frame.response {
        Response::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_kind_round_trips_including_64_mib() {
    let cluster = Cluster::new().unwrap();
    let node = cluster.start("n1", &[], &[]).unwrap();
    let c = client(&cluster, &node).await;
    let embedding = Array2::from_shape_fn((4, 1024), |(i, j)| (i * 1024 + j) as f32 / 7.0);
    let values = vec![
        ("bytes", Value::Bytes(Bytes::from_static(b"hello agents"))),
        (
            "embedding:colpali:a3f2e9d8c7b6a5f4",
            Value::Tensor(Tensor::from_owned_array(embedding.clone())),
        ),
        (
            "video:abc123:keyframes:frame_42",
            Value::Frame(
                Frame::new(
                    FrameFormat::Jpeg,
                    1280,
                    720,
                    Bytes::from_static(b"\xFF\xD8\xFF\xE0 jpeg bytes"),
                )
                .unwrap(),
            ),
        ),
        (
            "video:abc123:transcript",
            Value::Record(
                Record::from_serde(&serde_json::json!({"text": "hi", "segments": []})).unwrap(),
            ),
        ),
        (
            "big",
            Value::Bytes(Bytes::from(
                (0..64u32 << 20)
                    .map(|i| (i % 251) as u8)
                    .collect::<Vec<u8>>(),
            )),
        ),
    ];
    for (k, v) in &values {
        c.set(&ns(), &key(k), v.clone(), None).await.unwrap();
    }
    for (k, v) in &values {
        let got = c
            .get(&ns(), &key(k))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(&got.value, v, "{k}");
        assert_eq!(got.meta.format, v.format());
    }
    let Value::Tensor(t) = c
        .get(&ns(), &key("embedding:colpali:a3f2e9d8c7b6a5f4"))
        .await
        .unwrap()
        .unwrap()
        .value
    else {
        panic!()
    };
    assert_eq!(
        t.view::<f32>().unwrap(),
        embedding.view().into_dyn(),
        "zero-copy view of the received tensor"
    );
    assert_eq!(
        c.metadata(&ns(), &key("big"))
            .await
            .unwrap()
            .unwrap()
            .size_bytes,
        64 << 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_clear_exists_and_batches() {
    let cluster = Cluster::new().unwrap();
    let node = cluster.start("n1", &[], &[]).unwrap();
    let c = client(&cluster, &node).await;
    c.set(
        &ns(),
        &key("short"),
        Value::from(b"x".to_vec()),
        Some(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    assert!(c.exists(&ns(), &key("short")).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get(&ns(), &key("short")).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!c.exists(&ns(), &key("short")).await.unwrap());

    let items: Vec<(Key, Value)> = (0..200)
        .map(|i| {
            (
                key(&format!("video:v{}:keyframes:frame_{i}", i % 2)),
                Value::from(vec![i as u8; 100]),
            )
        })
        .collect();
    assert!(
        c.set_many(&ns(), items, None)
            .await
            .into_iter()
            .all(|r| r.is_ok())
    );
    let keys: Vec<Key> = (0..200)
        .map(|i| key(&format!("video:v{}:keyframes:frame_{i}", i % 2)))
        .collect();
    let got = c.get_many(&ns(), &keys).await.unwrap();
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, e)| e.as_ref().unwrap().value == Value::from(vec![i as u8; 100]))
    );
    assert_eq!(c.clear(&ns(), Some("video:v0:*")).await.unwrap(), 100);
    let left = c.list_keys(&ns(), None, true).await.unwrap();
    assert_eq!(left.len(), 100);
    assert!(
        left.iter()
            .all(|(k, m)| k.as_str().starts_with("video:v1:") && m.is_some())
    );
    let stats = c.stats().await.unwrap();
    assert!(stats["manager"]["sets"].as_u64().unwrap() >= 201, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_data_directory_keeps_the_filesystem_tier() {
    let cluster = Cluster::new().unwrap();
    let node = cluster.start("n1", &[], &[]).unwrap();
    {
        let c = client(&cluster, &node).await;
        for i in 0..100 {
            c.set(
                &ns(),
                &key(&format!("k{i}")),
                Value::from(format!("v{i}").into_bytes()),
                None,
            )
            .await
            .unwrap();
        }
    }
    let status = node.terminate().unwrap();
    assert!(
        status.success(),
        "SIGTERM must end the node cleanly: {status:?}"
    );
    let node = cluster.start("n1", &[], &[]).unwrap();
    let c = client(&cluster, &node).await;
    for i in 0..100 {
        let got = c
            .get(&ns(), &key(&format!("k{i}")))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("k{i} lost across restart"));
        assert_eq!(got.value, Value::from(format!("v{i}").into_bytes()));
    }
    assert!(cluster.data_dir("n1").join("cache/default/k7.bin").exists());
}

#[test]
fn cli_commands_follow_the_contract() {
    let cluster = Cluster::new().unwrap();
    let node = cluster.start("n1", &[], &[]).unwrap();
    let addr = node.addr().to_string();
    let certs = cluster.certs();
    let certs = certs.to_str().unwrap();
    // `strata COMMAND --addr A --certs C ARGS...`
    let run = |args: &[&str]| {
        let (command, rest) = args.split_first().unwrap();
        let mut full = vec![*command, "--addr", addr.as_str(), "--certs", certs];
        full.extend_from_slice(rest);
        strata(&full).unwrap()
    };
    assert!(
        run(&["set", "video:abc123:transcript", "hello", "--ttl", "3600"])
            .status
            .success()
    );
    let got = run(&["get", "video:abc123:transcript"]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(got.stdout, b"hello");
    let missing = run(&["get", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());
    let keys = run(&["keys", "video:*", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&keys.stdout).unwrap();
    assert!(
        listed.to_string().contains("video:abc123:transcript"),
        "{listed}"
    );
    assert!(run(&["del", "video:abc123:transcript"]).status.success());
    assert_eq!(
        run(&["del", "video:abc123:transcript"]).status.code(),
        Some(1)
    );
    let stats = run(&["stats", "--json"]);
    assert!(stats.status.success());
    let bad = run(&["get", "bad\u{1}key"]);
    assert_eq!(bad.status.code(), Some(2));
    let unreachable = strata(&["get", "--addr", "127.0.0.1:9", "--certs", certs, "k"]).unwrap();
    assert_eq!(unreachable.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let cluster = Cluster::new().unwrap();
    let node = cluster
        .start("n1", &[], &[("STRATA_LIMITS__MAX_VALUE_BYTES", "1048576")])
        .unwrap();
    let c = client(&cluster, &node).await;
    c.set(
        &ns(),
        &key("precious"),
        Value::from(b"intact".to_vec()),
        None,
    )
    .await
    .unwrap();
    let conn = raw_connection(&cluster, &node).await;

    // Garbage instead of a frame.
    assert_eq!(
        error_code(&raw_exchange(&conn, b"GET precious HTTP/1.1\r\n\r\n").await),
        ErrorCode::Malformed
    );
    // A truncated frame: the header promises more than arrives.
    let frame = wire::encode_frame(&RequestFrame {
        id: 1,
        epoch: 0,
        request: Request::Get {
            namespace: "default".into(),
            key: "precious".into(),
        },
    });
    assert_eq!(
        error_code(&raw_exchange(&conn, &frame[..frame.len() - 3]).await),
        ErrorCode::Malformed
    );
    // A body that does not decode.
    let mut garbled = frame.to_vec();
    garbled[HEADER_LEN..].fill(0xff);
    assert_eq!(
        error_code(&raw_exchange(&conn, &garbled).await),
        ErrorCode::Malformed
    );
    // An unknown protocol version.
    let mut future = frame.to_vec();
    future[4] = 99;
    let answer = raw_exchange(&conn, &future).await;
    assert_eq!(error_code(&answer), ErrorCode::UnsupportedVersion);
    // A declared frame length far above the limit: refused from the header alone.
    let mut huge = frame[..HEADER_LEN].to_vec();
    huge[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        error_code(&raw_exchange(&conn, &huge).await),
        ErrorCode::TooLarge
    );
    // A value declaring 8 GiB (over the 1 MiB limit): refused before anything is allocated.
    let rss_before = node.rss_kib();
    let set = RequestFrame {
        id: 2,
        epoch: 0,
        request: Request::Set {
            namespace: "default".into(),
            key: "precious".into(),
            ttl_ms: None,
            value: wire::WireValue {
                format: strata_proto::Format::Bytes,
                body: wire::Body::Streamed(8 << 30),
            },
        },
    };
    assert_eq!(
        error_code(&raw_exchange(&conn, &wire::encode_frame(&set)).await),
        ErrorCode::TooLarge
    );
    // A 2 MiB value through the client: over the node's 1 MiB limit.
    let err = c
        .set(
            &ns(),
            &key("precious"),
            Value::from(vec![0u8; 2 << 20]),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::TooLarge), "{err}");
    // Hostile namespace and key strings.
    for (namespace, k, code) in [
        ("../etc", "k", ErrorCode::InvalidNamespace),
        ("default", "a\u{0}b", ErrorCode::InvalidKey),
        ("default", "", ErrorCode::InvalidKey),
    ] {
        let get = RequestFrame {
            id: 3,
            epoch: 0,
            request: Request::Get {
                namespace: namespace.into(),
                key: k.into(),
            },
        };
        let answer = raw_exchange(&conn, &wire::encode_frame(&get)).await;
        assert_eq!(error_code(&answer), code);
        let Response::Error(e) = answer.response else {
            unreachable!()
        };
        assert!(!e.message.is_empty());
    }
    // The node is up, memory stayed bounded, and nothing stored changed.
    assert_eq!(
        c.get(&ns(), &key("precious")).await.unwrap().unwrap().value,
        Value::from(b"intact".to_vec())
    );
    if let (Some(before), Some(after)) = (rss_before, node.rss_kib()) {
        assert!(
            after < before + 256 * 1024,
            "memory grew from {before} KiB to {after} KiB"
        );
    }
    assert_eq!(c.list_keys(&ns(), None, false).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_another_ca_are_refused() {
    let cluster = Cluster::new().unwrap();
    let stranger = Cluster::new().unwrap();
    let node = cluster.start("n1", &[], &[]).unwrap();
    let mut config = ClientConfig::new(node.addr().to_string(), stranger.certs());
    // Trust the right CA, but present a certificate from another one.
    config.tls.ca = cluster.certs().join("ca.pem");
    config.retries = 0;
    let outcome = match Client::connect(config).await {
        Err(e) => Err(e),
        Ok(c) => c.ping().await.map(|_| ()),
    };
    let err = outcome.expect_err("a certificate from another CA must be refused");
    assert!(
        matches!(
            err,
            Error::Connect { .. } | Error::ConnectionLost { .. } | Error::Tls(_)
        ),
        "{err}"
    );
    // The node carries on serving its own clients.
    client(&cluster, &node).await.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_streams_cannot_exhaust_the_node() {
    let cluster = Cluster::new().unwrap();
    let node = cluster
        .start("n1", &[], &[("STRATA_LIMITS__REQUEST_TIMEOUT_MS", "3000")])
        .unwrap();
    let conn = Arc::new(raw_connection(&cluster, &node).await);
    let rss_before = node.rss_kib();
    // 3,000 streams that each send half a header and stall.
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..3000 {
        let conn = Arc::clone(&conn);
        let opened = Arc::clone(&opened);
        tasks.push(tokio::spawn(async move {
            let Ok(Ok((mut send, _recv))) =
                tokio::time::timeout(Duration::from_secs(2), conn.open_bi()).await
            else {
                return;
            };
            opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = send.write_all(b"STRA").await;
            tokio::time::sleep(Duration::from_secs(4)).await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let at_once = opened.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        at_once <= 256 + 16,
        "{at_once} streams were open at once; the limit is 256 per connection"
    );
    // Meanwhile another client is served.
    let c = client(&cluster, &node).await;
    c.set(&ns(), &key("still"), Value::from(b"serving".to_vec()), None)
        .await
        .unwrap();
    assert!(c.get(&ns(), &key("still")).await.unwrap().is_some());
    for t in tasks {
        let _ = t.await;
    }
    if let (Some(before), Some(after)) = (rss_before, node.rss_kib()) {
        assert!(
            after < before + 256 * 1024,
            "memory grew from {before} KiB to {after} KiB"
        );
    }
    c.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_answer_streams_what_does_not_fit_its_frame() {
    let cluster = Cluster::new().unwrap();
    let node = cluster.start("n1", &[], &[]).unwrap();
    let c = client(&cluster, &node).await;
    // 100 values of 200 KiB: each small enough to travel inline, 20 MiB together.
    let items: Vec<(Key, Value)> = (0..100)
        .map(|i| {
            (
                key(&format!("frame:{i}")),
                Value::from(vec![i as u8; 200 << 10]),
            )
        })
        .collect();
    assert!(
        c.set_many(&ns(), items, None)
            .await
            .into_iter()
            .all(|r| r.is_ok())
    );
    let conn = raw_connection(&cluster, &node).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let request = RequestFrame {
        id: 5,
        epoch: 0,
        request: Request::GetMany {
            namespace: "default".into(),
            keys: (0..100).map(|i| format!("frame:{i}")).collect(),
        },
    };
    send.write_all(&wire::encode_frame(&request)).await.unwrap();
    send.finish().unwrap();
    let limits = strata_client::io::ReadLimits::default();
    let answer: ResponseFrame = strata_client::io::read_frame(&mut recv, &limits)
        .await
        .unwrap();
    let lengths = answer.response.streamed_lengths();
    assert!(
        !lengths.is_empty(),
        "entries beyond the frame budget must be streamed"
    );
    let bodies = strata_client::io::read_bodies(&mut recv, &lengths, &limits)
        .await
        .unwrap();
    let Response::Entries(entries) = answer.response else {
        panic!("expected entries")
    };
    let mut streamed = bodies.into_iter();
    for (i, entry) in entries.into_iter().enumerate() {
        let entry = entry.unwrap_or_else(|| panic!("frame:{i} missing"));
        let payload = match entry.body {
            wire::Body::Inline(b) => b,
            wire::Body::Streamed(_) => streamed.next().unwrap(),
        };
        assert_eq!(payload.len(), 200 << 10);
        assert!(payload.iter().all(|&b| b == i as u8), "frame:{i} corrupted");
    }
}

/// Raft, leases, replication, partition transfers and joining are for members of the
/// cluster: a client certificate (clientAuth only) is refused with `Forbidden` and changes
/// nothing; a node certificate (serverAuth too) gets past the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_only_requests_need_a_node_certificate() {
    let cluster = Cluster::new().unwrap();
    let node = cluster.start("n1", &[], &[]).unwrap();
    let c = client(&cluster, &node).await;
    c.set(
        &ns(),
        &key("precious"),
        Value::from(b"intact".to_vec()),
        None,
    )
    .await
    .unwrap();
    let future = Version {
        physical_ms: u64::MAX / 2,
        logical: 0,
        node: NodeId(9),
    };
    let members_only = [
        Request::Lease { node: NodeId(9) },
        Request::ReplicateDelete {
            namespace: "default".into(),
            key: "precious".into(),
            version: future,
        },
        Request::ScanPartitions {
            receiver: NodeId(9),
            partitions: vec![0],
            after: None,
            limit: 10,
        },
        Request::Raft {
            rpc: strata_proto::wire::RaftRpc::Vote,
            payload: Bytes::new(),
        },
    ];
    let as_client = raw_connection_as(&cluster, &node, "client").await;
    for request in members_only.iter().cloned() {
        assert!(request.members_only(), "{}", request.kind());
        let frame = RequestFrame {
            id: 1,
            epoch: 0,
            request,
        };
        let answer = raw_exchange(&as_client, &wire::encode_frame(&frame)).await;
        assert_eq!(error_code(&answer), ErrorCode::Forbidden);
    }
    let entry = c.get(&ns(), &key("precious")).await.unwrap().unwrap();
    assert_eq!(entry.value, Value::from(b"intact".to_vec()));

    // The same request with the node certificate reaches the service (which has its own
    // answer for a node outside a cluster).
    let as_member = raw_connection_as(&cluster, &node, "node").await;
    let frame = RequestFrame {
        id: 2,
        epoch: 0,
        request: Request::Lease { node: NodeId(9) },
    };
    let answer = raw_exchange(&as_member, &wire::encode_frame(&frame)).await;
    assert!(
        !matches!(&answer.response, Response::Error(e) if e.code == ErrorCode::Forbidden),
        "a member was refused: {:?}",
        answer.response
    );
}
