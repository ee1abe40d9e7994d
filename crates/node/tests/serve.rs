//! A node started in-process, driven by the real client over QUIC with mutual TLS: the
//! request service end to end, without the CLI.

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::time::Duration;

use bytes::Bytes;
use strata_client::{Client, ClientConfig};
use strata_node::config::Config;
use strata_node::server::RunningNode;
use strata_proto::{Key, Namespace, Value};

async fn node(dir: &std::path::Path) -> RunningNode {
    let certs = strata_node::certs::init(&dir.join("certs"), &[], false).unwrap();
    let mut config = Config {
        admin: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.apply_overrides(
        Some("127.0.0.1:0".parse().unwrap()),
        Some(dir.join("data")),
        Some(certs.dir.clone()),
    );
    RunningNode::start(config).await.unwrap()
}

#[tokio::test]
async fn serves_a_client_and_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let client = Client::connect(ClientConfig::new(
        node.local_addr().to_string(),
        dir.path().join("certs"),
    ))
    .await
    .unwrap();
    let ns = Namespace::default_namespace();
    let key = Key::new("video:abc123:transcript").unwrap();
    client.ping().await.unwrap();
    assert!(client.get(&ns, &key).await.unwrap().is_none());
    client
        .set(
            &ns,
            &key,
            Value::Bytes(Bytes::from_static(b"hello")),
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let entry = client.get(&ns, &key).await.unwrap().unwrap();
    assert_eq!(entry.value, Value::Bytes(Bytes::from_static(b"hello")));
    assert!(entry.meta.expires_at.is_some());
    let big = Value::Bytes(Bytes::from(vec![7u8; 5 << 20]));
    client
        .set(&ns, &Key::new("big").unwrap(), big.clone(), None)
        .await
        .unwrap();
    assert_eq!(
        client
            .get(&ns, &Key::new("big").unwrap())
            .await
            .unwrap()
            .unwrap()
            .value,
        big
    );
    assert_eq!(client.list_keys(&ns, None, false).await.unwrap().len(), 2);
    assert!(client.delete(&ns, &key).await.unwrap());
    node.shutdown().await;
    assert!(dir.path().join("data/cache/default/big.bin").exists());
}

/// A node whose memory tier is tiny, so acknowledged writes are evicted from memory while
/// still waiting to be flushed: reads must still see the newest value, deletes and clears
/// must not be undone by a late flush, and a graceful shutdown leaves everything on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_never_serves_older_values_and_flushes_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let certs = strata_node::certs::init(&dir.path().join("certs"), &[], false).unwrap();
    let mut config = Config {
        admin: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.apply_overrides(
        Some("127.0.0.1:0".parse().unwrap()),
        Some(dir.path().join("data")),
        Some(certs.dir.clone()),
    );
    config.store.tiers = serde_json::from_value(serde_json::json!([
        {"kind": "memory", "max_bytes": 64 * 1024},
        {"kind": "filesystem", "path": "cache", "fsync": "never"}
    ]))
    .unwrap();
    let node = RunningNode::start(config).await.unwrap();
    let client = Client::connect(ClientConfig::new(
        node.local_addr().to_string(),
        dir.path().join("certs"),
    ))
    .await
    .unwrap();
    let ns = Namespace::default_namespace();
    let value = |k: usize, round: usize| {
        Value::Bytes(Bytes::from(
            format!("key {k} round {round} {}", "x".repeat(2000)).into_bytes(),
        ))
    };

    // Overwrite 50 keys 20 times, concurrently per key; each read sees the newest write.
    for round in 0..20 {
        let writes = (0..50).map(|k| {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                client
                    .set(
                        &ns,
                        &Key::new(format!("k{k}")).unwrap(),
                        value(k, round),
                        None,
                    )
                    .await
            }
        });
        for result in futures::future::join_all(writes).await {
            result.unwrap();
        }
        for k in (0..50).step_by(7) {
            let got = client
                .get(&ns, &Key::new(format!("k{k}")).unwrap())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.value, value(k, round), "k{k} after round {round}");
        }
    }
    // Deletes and clears win over flushes still queued.
    for k in 0..10 {
        client
            .set(
                &ns,
                &Key::new(format!("gone{k}")).unwrap(),
                value(k, 99),
                None,
            )
            .await
            .unwrap();
        assert!(
            client
                .delete(&ns, &Key::new(format!("gone{k}")).unwrap())
                .await
                .unwrap()
        );
    }
    for k in 0..10 {
        client
            .set(
                &ns,
                &Key::new(format!("cleared:{k}")).unwrap(),
                value(k, 98),
                None,
            )
            .await
            .unwrap();
    }
    assert_eq!(client.clear(&ns, Some("cleared:*")).await.unwrap(), 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for k in 0..10 {
        assert!(
            client
                .get(&ns, &Key::new(format!("gone{k}")).unwrap())
                .await
                .unwrap()
                .is_none(),
            "gone{k} came back"
        );
        assert!(
            client
                .get(&ns, &Key::new(format!("cleared:{k}")).unwrap())
                .await
                .unwrap()
                .is_none(),
            "cleared:{k} came back"
        );
    }
    for k in 0..50 {
        let got = client
            .get(&ns, &Key::new(format!("k{k}")).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.value, value(k, 19), "k{k} at the end");
    }
    assert_eq!(client.list_keys(&ns, None, false).await.unwrap().len(), 50);
    node.shutdown().await;

    // Everything acknowledged is on disk, with the newest value, and nothing deleted is.
    let clock = strata_store::system_clock();
    let fs = strata_store::FsTier::open(
        strata_store::FsConfig::new(dir.path().join("data/cache")),
        clock,
    )
    .unwrap();
    assert!(fs.wait_ready(Duration::from_secs(10)));
    use strata_store::Tier;
    assert_eq!(fs.list_keys(&ns, None, false).unwrap().len(), 50);
    for k in 0..50 {
        let key = strata_proto::EntryKey::new(ns.clone(), Key::new(format!("k{k}")).unwrap());
        assert_eq!(
            fs.get(&key).unwrap().unwrap().value,
            value(k, 19),
            "k{k} on disk"
        );
    }
}
