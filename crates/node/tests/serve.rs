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
    let mut config = Config::default();
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
