//! Reference usage example 1, "Basic tiered caching": get a value, compute and store it on a
//! miss (with a TTL), get it again, then read the cluster's hit rate and size.
//!
//! ```text
//! strata up                       # in another shell, same directory
//! cargo run -p strata-client --example basic_tiered
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use strata_client::Client;
use strata_proto::{Key, Namespace, Record, Value};

use common::check;

/// Stands in for the work a cache saves: 100 ms, then a value derived from the key.
async fn expensive_computation(key: &str) -> serde_json::Value {
    tokio::time::sleep(Duration::from_millis(100)).await;
    serde_json::json!({"key": key, "answer": key.len() * 7})
}

/// The value of `key`: from the cluster, or computed and stored for an hour.
async fn get_data(client: &Client, ns: &Namespace, key: &str) -> Result<(serde_json::Value, bool)> {
    let k = Key::new(key)?;
    if let Some(entry) = client.get(ns, &k).await? {
        println!("cache hit for {key}");
        let Value::Record(record) = entry.value else {
            anyhow::bail!("{key} holds {:?}, not a record", entry.value.format());
        };
        return Ok((record.to_serde()?, true));
    }
    println!("cache miss for {key} - computing...");
    let data = expensive_computation(key).await;
    let value = Value::Record(Record::from_serde(&data)?);
    client
        .set(ns, &k, value, Some(Duration::from_secs(3600)))
        .await?;
    Ok((data, false))
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let ns = Namespace::new("examples")?;
    // Start from a miss, whatever an earlier run left.
    client.delete(&ns, &Key::new("test_key")?).await?;

    let start = Instant::now();
    let (first, hit1) = get_data(&client, &ns, "test_key").await?;
    let miss_time = start.elapsed();
    let start = Instant::now();
    let (second, hit2) = get_data(&client, &ns, "test_key").await?;
    let hit_time = start.elapsed();
    println!(
        "first call {miss_time:.1?} (compute + store), second call {hit_time:.1?} (cluster hit)"
    );
    check(!hit1 && hit2, "miss, then hit")?;
    check(first == second, format!("same value both times: {second}"))?;
    let meta = client
        .metadata(&ns, &Key::new("test_key")?)
        .await?
        .ok_or_else(|| anyhow::anyhow!("test_key has no metadata"))?;
    check(meta.expires_at.is_some(), "stored with its 1 h TTL")?;

    let stats = client.cluster_stats().await?;
    let manager = &stats.aggregate["manager"];
    println!(
        "cluster ({} nodes): hit rate {:.2}%, total size {} bytes, {} hits / {} misses",
        stats.nodes.len(),
        manager["hit_rate"].as_f64().unwrap_or(0.0) * 100.0,
        manager["size_bytes"],
        manager["hits"],
        manager["misses"]
    );
    check(
        manager["hits"].as_u64().unwrap_or(0) >= 1,
        "the cluster counted the hit",
    )?;
    Ok(())
}
