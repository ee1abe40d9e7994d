//! Measures the typed caches against a running cluster:
//!
//! 1. **Embedding batch get**: 1,000 distinct 1024-d `f32` embeddings are stored with
//!    [`EmbeddingCache::set_embeddings`], then read back with
//!    [`EmbeddingCache::get_embeddings`] in one batch call, `BATCHES` times (default 50, after
//!    3 warm-up batches); p50/p99/max of the batch latency.
//! 2. **Keyframes**: 50 RGB frames of 1280×720 stored with [`ArtifactCache::set_keyframes`]
//!    (JPEG-encoded in the client) and read back with [`ArtifactCache::get_keyframes`]
//!    (decoded in the client), `ROUNDS` times (default 3); frames/s of each direction.
//!
//! The batch gets start once every node has flushed the set to its disk tier (write-back
//! backlog 0), so they measure reads of a settled cluster.
//!
//! Every value read back is checked (shape, and the first embedding bit for bit), so a fast
//! wrong answer fails. Run it in release against `strata up`:
//!
//! ```text
//! strata up                       # in another shell, same directory
//! cargo run --release -p strata-client --example bench_agent_caches
//! ```
//!
//! `BATCHES` and `ROUNDS` override the repetitions.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use ndarray::{Array1, ArrayD};
use strata_client::{
    ArtifactCache, EmbeddingCache, FrameImage, KeyframeInfo, KeyframeParams, KeyframesMetadata,
    VideoId,
};
use strata_proto::Namespace;

use common::check;

const EMBEDDINGS: usize = 1_000;
const DIM: usize = 1024;
const FRAMES: u64 = 50;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Waits (at most 60 s) until no node has writes pending for its disk tier; how long it took.
async fn wait_for_write_back(client: &strata_client::Client) -> Result<Duration> {
    let began = Instant::now();
    loop {
        let stats = client.cluster_stats().await?;
        let pending: u64 = stats
            .nodes
            .iter()
            .map(|n| match &n.stats {
                Ok(json) => json["write_back"]["pending_keys"].as_u64().unwrap_or(0),
                Err(_) => 0,
            })
            .sum();
        if pending == 0 {
            return Ok(began.elapsed());
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(60),
            "{pending} writes still pending after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let batches = env_or("BATCHES", 50);
    let rounds = env_or("ROUNDS", 3);

    // 1. Embedding batch get.
    let cache = EmbeddingCache::builder(client.clone())
        .namespace(Namespace::new("bench_embeddings")?)
        .build();
    let texts: Vec<String> = (0..EMBEDDINGS)
        .map(|i| format!("query number {i}"))
        .collect();
    let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vector = |i: usize| Array1::from_shape_fn(DIM, |j| (i * DIM + j) as f32 * 1e-3);
    let began = Instant::now();
    let stored = cache
        .set_embeddings(
            "bench",
            text_refs
                .iter()
                .enumerate()
                .map(|(i, t)| (*t, vector(i)))
                .collect(),
        )
        .await?;
    check(
        stored.iter().all(Result::is_ok),
        format!(
            "{EMBEDDINGS} embeddings of {DIM} f32 stored in {:.0?}",
            began.elapsed()
        ),
    )?;
    // Measure reads of a settled cluster: the nodes acknowledge writes from memory and write
    // them to disk in the background, and that flush would otherwise share the two cores
    // with the first few hundred batches.
    let flushed = wait_for_write_back(&client).await?;
    println!("  write-back flushed {flushed:.1?} after the set");
    let mut latencies = Vec::with_capacity(batches);
    for round in 0..batches + 3 {
        let began = Instant::now();
        let got: Vec<Option<ArrayD<f32>>> = cache.get_embeddings(&text_refs, "bench").await?;
        let elapsed = began.elapsed();
        if round >= 3 {
            latencies.push(elapsed);
        }
        if round == 0 {
            check(
                got.iter()
                    .all(|e| e.as_ref().is_some_and(|e| e.shape() == [DIM])),
                "every embedding found, 1024-d",
            )?;
            check(
                got[0]
                    .as_ref()
                    .is_some_and(|e| e.iter().eq(vector(0).iter())),
                "embedding 0 bit for bit",
            )?;
        }
    }
    latencies.sort();
    println!(
        "embedding batch get: {EMBEDDINGS} x {DIM}-d f32 ({:.1} MiB) per batch, {batches} batches: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        (EMBEDDINGS * DIM * 4) as f64 / (1024.0 * 1024.0),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
    );

    // 2. Keyframes: 50 frames of 1280x720, set then get.
    let artifacts = ArtifactCache::new(client.clone(), Namespace::new("bench_artifacts")?);
    let video = VideoId::new("bench_video")?;
    let params = KeyframeParams::default();
    let frames: Vec<_> = (0..FRAMES)
        .map(|i| common::frame(720, 1280, i as u32))
        .collect();
    let metadata = KeyframesMetadata {
        keyframes: (0..FRAMES)
            .map(|i| KeyframeInfo {
                frame_id: i,
                timestamp: i as f64 / 30.0,
                extra: serde_json::Map::new(),
            })
            .collect(),
        extra: serde_json::Map::new(),
    };
    let (mut set_total, mut get_total) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        artifacts.invalidate_video(&video).await?;
        let images: BTreeMap<u64, FrameImage> = frames
            .iter()
            .enumerate()
            .map(|(i, f)| (i as u64, FrameImage::Rgb(f.clone())))
            .collect();
        let began = Instant::now();
        artifacts
            .set_keyframes(&video, &params, &metadata, images)
            .await?;
        let set = began.elapsed();
        let began = Instant::now();
        let loaded = artifacts
            .get_keyframes(&video, &params, true)
            .await?
            .ok_or_else(|| anyhow::anyhow!("keyframes missing after set"))?;
        let get = began.elapsed();
        check(
            loaded.images.len() == FRAMES as usize
                && loaded.images.values().all(|f| f.dim() == (720, 1280, 3)),
            format!("{FRAMES} frames of 720x1280x3 back; set {set:.0?}, get {get:.0?}"),
        )?;
        set_total += set;
        get_total += get;
    }
    let per_s = |total: Duration| (FRAMES as f64 * rounds as f64) / total.as_secs_f64();
    println!(
        "keyframes 1280x720, {FRAMES} frames x {rounds} rounds: set {:.1} frames/s, get {:.1} frames/s, set+get {:.1} frames/s",
        per_s(set_total),
        per_s(get_total),
        per_s(set_total + get_total),
    );
    artifacts.invalidate_video(&video).await?;
    Ok(())
}
