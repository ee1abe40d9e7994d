//! The rejoin measurement: how long a restarted member takes to be active again with its
//! partitions synced, with a given amount of data in the cluster.
//!
//! It loads `keys` values of `value_bytes` through the client (batches per owner, several in
//! flight), kills one member with `kill -9`, restarts it at once on the same address and data
//! directory, and times the restart until every node reports the same settled ring (every
//! member active, no partition moving). A sample of keys is read back at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use strata_client::{Client, ClientConfig};
use strata_proto::{Key, Namespace, Value};

use crate::cluster::{Cluster, ClusterConfig};
use crate::workload::{NAMESPACE, key_name};

/// What to measure.
#[derive(Clone, Debug)]
pub struct RejoinConfig {
    /// The `strata` binary.
    pub strata: std::path::PathBuf,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Keys loaded.
    pub keys: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Where the node logs go.
    pub log_dir: std::path::PathBuf,
}

/// What was measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RejoinReport {
    /// Keys loaded.
    pub keys: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Seconds the load took.
    pub load_s: f64,
    /// The member killed and restarted.
    pub node: u64,
    /// Seconds from the restart until the cluster was settled again with it active.
    pub rejoin_s: f64,
    /// Keys read back afterwards, and how many held the loaded value.
    pub sampled: usize,
    /// Sampled keys that held the loaded value.
    pub sampled_ok: usize,
}

/// Batch size of the load.
const BATCH: usize = 500;
/// Batches in flight during the load.
const IN_FLIGHT: usize = 8;
/// Longest wait for the restarted member.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the measurement.
pub async fn run(config: &RejoinConfig) -> Result<RejoinReport> {
    let mut cluster = Cluster::start(
        ClusterConfig {
            strata: config.strata.clone(),
            nodes: config.nodes,
            env: Vec::new(),
            log_dir: config.log_dir.clone(),
        },
        Duration::from_secs(120),
    )
    .await
    .context("starting the cluster")?;
    let addrs = cluster.addrs();
    let first = addrs.first().context("no node")?;
    let mut client_config = ClientConfig::new(first.to_string(), cluster.certs());
    client_config.seeds = addrs.iter().skip(1).map(ToString::to_string).collect();
    client_config.request_timeout = Duration::from_secs(60);
    let client = Arc::new(Client::connect(client_config).await?);
    let namespace = Namespace::new(NAMESPACE)?;

    let started = Instant::now();
    let batches: Vec<Vec<usize>> = (0..config.keys)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[usize]>::to_vec)
        .collect();
    let mut loads = futures::stream::iter(batches.into_iter().map(|batch| {
        let (client, namespace) = (Arc::clone(&client), namespace.clone());
        let size = config.value_bytes;
        async move {
            let items = batch
                .iter()
                .map(|&i| Ok((Key::new(key_name(i))?, value_of(i, size))))
                .collect::<Result<Vec<_>>>()?;
            for outcome in client.set_many(&namespace, items, None).await {
                outcome.context("loading a key")?;
            }
            Ok::<_, anyhow::Error>(())
        }
    }))
    .buffer_unordered(IN_FLIGHT);
    while let Some(result) = loads.next().await {
        result?;
    }
    let load_s = started.elapsed().as_secs_f64();
    println!(
        "loaded {} keys of {} bytes in {load_s:.1} s",
        config.keys, config.value_bytes
    );

    let before = cluster
        .rings()
        .await
        .into_iter()
        .map(|(_, r)| r.epoch)
        .max()
        .unwrap_or(0);
    let node = *cluster.ids().last().context("no node")?;
    cluster.kill(node).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.restart(node).await?;
    let restarted = Instant::now();
    cluster
        .wait_recovered(before, REJOIN_TIMEOUT, REJOIN_TIMEOUT)
        .await?;
    let rejoin_s = restarted.elapsed().as_secs_f64();
    println!("node {node} restarted and active again, partitions synced, in {rejoin_s:.1} s");

    let step = (config.keys / 1000).max(1);
    let sample: Vec<usize> = (0..config.keys).step_by(step).collect();
    let keys = sample
        .iter()
        .map(|&i| Key::new(key_name(i)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let found = client.get_many(&namespace, &keys).await?;
    let sampled_ok = sample
        .iter()
        .zip(found)
        .filter(|(i, e)| {
            e.as_ref()
                .is_some_and(|e| e.value == value_of(**i, config.value_bytes))
        })
        .count();
    client.close().await;
    if sampled_ok != sample.len() {
        bail!(
            "{} of {} sampled keys did not read back after the rejoin",
            sample.len() - sampled_ok,
            sample.len()
        );
    }
    Ok(RejoinReport {
        keys: config.keys,
        value_bytes: config.value_bytes,
        load_s,
        node,
        rejoin_s,
        sampled: sample.len(),
        sampled_ok,
    })
}

/// The value loaded under key `i`: its number, then filler up to `size` bytes.
fn value_of(i: usize, size: usize) -> Value {
    let mut bytes = format!("{i}:").into_bytes();
    bytes.resize(size.max(bytes.len()), b'x');
    Value::from(bytes)
}
