//! Reference usage example 3, "Pipeline artifact caching": keyframes (metadata and JPEG
//! images), a transcript and frame descriptions of one video in the `video_colpali_mv`
//! profile, then everything a pipeline asks for in one call. When the cluster's data
//! directory is on this machine, it also shows the files the nodes wrote, in the reference's
//! layout (`video_colpali_mv/keyframes/robot_soccer/…/frame_42.jpg`).
//!
//! ```text
//! strata up                       # in another shell, same directory
//! cargo run -p strata-client --example pipeline_artifacts
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use strata_client::{
    ArtifactCache, DescriptionParams, FrameImage, KeyframeInfo, KeyframeParams, KeyframesMetadata,
    PipelineConfig, TranscriptParams, VideoId,
};
use strata_proto::Namespace;

use common::check;

const PROFILE: &str = "video_colpali_mv";

fn info(frame_id: u64, timestamp: f64) -> KeyframeInfo {
    let mut extra = serde_json::Map::new();
    extra.insert("filename".into(), format!("frame_{frame_id}.jpg").into());
    KeyframeInfo {
        frame_id,
        timestamp,
        extra,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let cache = ArtifactCache::new(client, Namespace::new(PROFILE)?)
        .with_ttl(Some(Duration::from_secs(604_800)));
    let video = VideoId::from_path("/path/to/robot_soccer.mp4")?;
    // Start from an empty cache for this video, whatever an earlier run left.
    let removed = cache.invalidate_video(&video).await?;
    println!(
        "video {} (profile {PROFILE}); removed {removed} entries of an earlier run",
        video.as_str()
    );

    // 1. Keyframes.
    println!("\nchecking keyframe cache...");
    let params = KeyframeParams::default(); // similarity, threshold 0.999, max 3000 frames
    check(
        cache.get_keyframes(&video, &params, false).await?.is_none(),
        "keyframes not cached yet",
    )?;
    println!("✗ keyframes not cached - extracting...");
    let mut extra = serde_json::Map::new();
    extra.insert("video_id".into(), "robot_soccer".into());
    extra.insert("num_keyframes".into(), 2.into());
    extra.insert("extraction_strategy".into(), "similarity".into());
    extra.insert("threshold".into(), 0.999.into());
    let metadata = KeyframesMetadata {
        keyframes: vec![info(0, 0.0), info(42, 1.4)],
        extra,
    };
    let originals = [
        (0u64, common::frame(720, 1280, 0)),
        (42, common::frame(720, 1280, 42)),
    ];
    let images: BTreeMap<u64, FrameImage> = originals
        .iter()
        .map(|(id, f)| (*id, FrameImage::Rgb(f.clone())))
        .collect();
    cache
        .set_keyframes(&video, &params, &metadata, images)
        .await?;
    println!("✓ stored keyframes in cache ({})", params.key(&video)?);
    let only_meta = cache
        .get_keyframes(&video, &params, false)
        .await?
        .ok_or_else(|| anyhow::anyhow!("keyframes missing after set"))?;
    println!(
        "✓ found {} cached keyframes",
        only_meta.metadata.keyframes.len()
    );
    check(
        only_meta.metadata == metadata && only_meta.images.is_empty(),
        "metadata only, as stored",
    )?;
    let loaded = cache
        .get_keyframes(&video, &params, true)
        .await?
        .ok_or_else(|| anyhow::anyhow!("keyframes missing after set"))?;
    for (id, original) in &originals {
        let image = loaded
            .images
            .get(id)
            .ok_or_else(|| anyhow::anyhow!("frame {id} missing"))?;
        let error = common::mean_error(original, image);
        check(
            image.dim() == (720, 1280, 3) && error < 4.0,
            format!("frame {id}: 720x1280x3, mean JPEG error {error:.2} per sample"),
        )?;
    }

    // 2. Transcript (language `auto`, the one `get_all_artifacts` asks for).
    println!("\nchecking transcript cache...");
    let whisper = TranscriptParams::default();
    check(
        cache
            .get_transcript::<serde_json::Value>(&video, &whisper)
            .await?
            .is_none(),
        "transcript not cached yet",
    )?;
    let transcript = serde_json::json!({
        "text": "Full transcript of the video...",
        "segments": [
            {"start": 0.0, "end": 5.0, "text": "The robot approaches the ball"},
            {"start": 5.0, "end": 10.0, "text": "It kicks with precision"}
        ],
        "language": "en",
        "duration": 120.5
    });
    cache.set_transcript(&video, &whisper, &transcript).await?;
    println!("✓ stored transcript in cache ({})", whisper.key(&video));
    let got: Option<serde_json::Value> = cache.get_transcript(&video, &whisper).await?;
    check(
        got.as_ref() == Some(&transcript),
        "transcript read back as stored",
    )?;

    // 3. Frame descriptions.
    println!("\nchecking descriptions cache...");
    let vlm = DescriptionParams::new("Qwen/Qwen2-VL-2B-Instruct");
    check(
        cache
            .get_descriptions::<serde_json::Value>(&video, &vlm)
            .await?
            .is_none(),
        "descriptions not cached yet",
    )?;
    let descriptions = serde_json::json!({
        "frame_descriptions": {
            "0": "A robot standing on a soccer field under bright lights",
            "42": "The robot in mid-kick, ball in motion",
            "100": "Crowd celebrating in the background"
        },
        "model": "Qwen/Qwen2-VL-2B-Instruct",
        "batch_size": 500
    });
    cache.set_descriptions(&video, &vlm, &descriptions).await?;
    println!("✓ stored descriptions in cache ({})", vlm.key(&video));

    // Everything at once.
    println!("\nfetching all artifacts...");
    let config: PipelineConfig = serde_json::from_value(serde_json::json!({
        "extract_keyframes": true,
        "keyframe_strategy": "similarity",
        "keyframe_threshold": 0.999,
        "max_frames_per_video": 3000,
        "transcribe_audio": true,
        "whisper_model": "base",
        "generate_descriptions": true,
        "vlm_model": "Qwen/Qwen2-VL-2B-Instruct"
    }))?;
    let all = cache.get_all_artifacts(&video, &config).await?;
    let mark = |b: bool| if b { "✓" } else { "✗" };
    println!("artifacts status:");
    println!("  keyframes: {}", mark(all.keyframes.is_some()));
    println!("  transcript: {}", mark(all.audio_transcript.is_some()));
    println!("  descriptions: {}", mark(all.frame_descriptions.is_some()));
    check(all.is_complete(&config), "all three artifacts cached")?;
    check(
        all.frame_descriptions.as_ref() == Some(&descriptions),
        "descriptions as stored",
    )?;

    // The files on the nodes, when the cluster runs on this machine.
    if common::node_dirs().is_empty() {
        println!("\n(the cluster's data directory is not here: not looking at the nodes' files)");
    } else {
        println!("\nfiles the nodes wrote (one replica each shown):");
        for file in [
            "keyframes/robot_soccer/max_frames=3000,strategy=similarity,threshold=0.999/metadata.json",
            "keyframes/robot_soccer/max_frames=3000,strategy=similarity,threshold=0.999/frame_42.jpg",
            "transcripts/robot_soccer/lang=auto,model=base.json",
            "descriptions/robot_soccer/batch_size=500,model=Qwen%2FQwen2-VL-2B-Instruct.json",
        ] {
            let found = common::find_on_nodes(PROFILE, file);
            check(
                !found.is_empty(),
                found
                    .first()
                    .map_or(file.to_owned(), |p| p.display().to_string()),
            )?;
        }
    }
    Ok(())
}
