//! Reference usage example 5, "Cache invalidation and cleanup": invalidate every artifact of
//! one video, clear by pattern, let an entry expire, list keys with their metadata, and read
//! the statistics of every node and of the whole cluster.
//!
//! ```text
//! strata up                       # in another shell, same directory
//! cargo run -p strata-client --example invalidation_stats
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use strata_client::{
    ArtifactCache, FrameImage, KeyframeInfo, KeyframeParams, KeyframesMetadata, TranscriptParams,
    VideoId,
};
use strata_proto::{Key, Namespace, Timestamp, Value};

use common::check;

const PROFILE: &str = "video_colpali_mv";

/// Two keyframes and a transcript of `video`: four entries.
async fn store_artifacts(cache: &ArtifactCache, video: &VideoId) -> Result<()> {
    let metadata = KeyframesMetadata {
        keyframes: [0u64, 42]
            .iter()
            .map(|&frame_id| KeyframeInfo {
                frame_id,
                timestamp: frame_id as f64 / 30.0,
                extra: serde_json::Map::new(),
            })
            .collect(),
        extra: serde_json::Map::new(),
    };
    let images: BTreeMap<u64, FrameImage> = [0u64, 42]
        .iter()
        .map(|&id| (id, FrameImage::Rgb(common::frame(360, 640, id as u32))))
        .collect();
    cache
        .set_keyframes(video, &KeyframeParams::default(), &metadata, images)
        .await?;
    cache
        .set_transcript(
            video,
            &TranscriptParams::default(),
            &serde_json::json!({"text": "..."}),
        )
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let profile = Namespace::new(PROFILE)?;
    let cache = ArtifactCache::new(client.clone(), profile.clone())
        .with_ttl(Some(Duration::from_secs(604_800)));
    let old = VideoId::from_path("/path/to/old_video.mp4")?;
    let kept = VideoId::from_path("/path/to/kept_video.mp4")?;
    for video in [&old, &kept] {
        cache.invalidate_video(video).await?;
        store_artifacts(&cache, video).await?;
    }
    println!("stored keyframes (2 frames + metadata) and a transcript of old_video and kept_video");

    // 1. Invalidate one video.
    println!("\ninvalidating all artifacts of /path/to/old_video.mp4...");
    let cleared = cache.invalidate_video(&old).await?;
    println!("cleared {cleared} cache entries");
    check(cleared == 4, "the 4 entries of old_video")?;

    // 2. Clear by pattern: every video's keyframes in this profile.
    let pattern = "video:*:keyframes*";
    let cleared = client.clear(&profile, Some(pattern)).await?;
    println!("\ncleared {cleared} keyframe entries of the {PROFILE} profile ({pattern})");
    // kept_video's 2 frames + metadata, and the keyframes of any other video of the profile
    // (such as those the pipeline_artifacts example stored).
    check(cleared >= 3, "at least kept_video's 2 frames + metadata")?;
    check(
        cache
            .get_keyframes(&kept, &KeyframeParams::default(), false)
            .await?
            .is_none(),
        "kept_video's keyframes gone",
    )?;
    check(
        cache
            .get_transcript::<serde_json::Value>(&kept, &TranscriptParams::default())
            .await?
            .is_some(),
        "kept_video's transcript still there",
    )?;

    // 3. Expired entries: never served, and removed by each node's janitor (and at startup).
    let temp = Key::new("scratch:temp")?;
    client
        .set(
            &profile,
            &temp,
            Value::from(b"short-lived".to_vec()),
            Some(Duration::from_secs(1)),
        )
        .await?;
    check(
        client.get(&profile, &temp).await?.is_some(),
        "scratch:temp served within its 1 s TTL",
    )?;
    // Expiry is checked on read: poll until it is gone, within a few seconds of the TTL.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut gone = false;
    while !gone && std::time::Instant::now() < deadline {
        gone = client.get(&profile, &temp).await?.is_none();
        if !gone {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    check(gone, "scratch:temp gone after its TTL")?;

    // 4. List keys with metadata.
    let keys = client.list_keys(&profile, Some("video:*"), true).await?;
    println!(
        "\nfound {} cache entries matching video:* (first 10):",
        keys.len()
    );
    let now = Timestamp::from(SystemTime::now());
    for (key, meta) in keys.iter().take(10) {
        println!("  {key}");
        if let Some(meta) = meta {
            println!("    size: {:.1} KB", meta.size_bytes as f64 / 1024.0);
            match meta.expires_at {
                Some(at) => println!(
                    "    TTL: {:.1} hours",
                    at.saturating_since(now).as_secs_f64() / 3600.0
                ),
                None => println!("    TTL: none"),
            }
        }
    }
    check(
        keys.iter()
            .any(|(k, m)| k.as_str().starts_with("video:kept_video:transcript") && m.is_some()),
        "kept_video's transcript listed with its metadata",
    )?;

    // 5. Statistics.
    let stats = client.cluster_stats().await?;
    let manager = &stats.aggregate["manager"];
    println!(
        "\ncache statistics (cluster of {} nodes, epoch {}):",
        stats.nodes.len(),
        stats.epoch
    );
    println!("  manager:");
    println!("    hits: {}", manager["hits"]);
    println!("    misses: {}", manager["misses"]);
    println!(
        "    hit rate: {:.2}%",
        manager["hit_rate"].as_f64().unwrap_or(0.0) * 100.0
    );
    println!(
        "    total size: {:.1} MB",
        manager["size_bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0)
    );
    println!("    total files: {}", manager["total_files"]);
    println!("  per tier:");
    if let Some(tiers) = stats.aggregate["tiers"].as_object() {
        for (name, tier) in tiers {
            println!(
                "    {name}: hits {}, misses {}, size {:.1} MB, entries {}",
                tier["hits"],
                tier["misses"],
                tier["size_bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0),
                tier["entries"]
            );
        }
    }
    println!("  per node:");
    for node in &stats.nodes {
        match &node.stats {
            Ok(s) => println!(
                "    node {} ({}): hits {}, misses {}, size {} bytes",
                node.id,
                node.addr,
                s["manager"]["hits"],
                s["manager"]["misses"],
                s["manager"]["size_bytes"]
            ),
            Err(e) => println!("    node {} ({}): no answer: {e}", node.id, node.addr),
        }
    }
    check(
        stats.nodes.iter().all(|n| n.stats.is_ok()),
        "every node answered",
    )?;

    // 6. Clearing a whole profile (not run here): `client.clear(&profile, None)`.
    Ok(())
}
