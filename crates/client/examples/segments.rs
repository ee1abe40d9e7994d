//! Reference usage example 4, "Segment-based caching": the frames of three 30-second
//! segments of a long video, sampled at 2 fps (60 frames of 1280×720 each), cached with their
//! timestamps in the `video_videoprism_base_mv_chunk_30s` profile. The first pass finds
//! nothing and stores; the second loads every frame back. When the cluster's data directory
//! is on this machine, it also shows where the frames landed
//! (`…/segments/long_video/segment_0_start_0.0_end_30.0/max_frames=60,sampling_fps=2.0/frame_0.jpg`).
//!
//! ```text
//! strata up                       # in another shell, same directory
//! cargo run --release -p strata-client --example segments
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use strata_client::{ArtifactCache, FrameImage, SegmentParams, VideoId};
use strata_proto::Namespace;

use common::check;

const PROFILE: &str = "video_videoprism_base_mv_chunk_30s";

#[tokio::main]
async fn main() -> Result<()> {
    let client = common::connect().await?;
    let cache = ArtifactCache::new(client.clone(), Namespace::new(PROFILE)?)
        .with_ttl(Some(Duration::from_secs(604_800)));
    let video = VideoId::from_path("/path/to/long_video.mp4")?;
    let removed = cache.invalidate_video(&video).await?;
    println!(
        "video {} (profile {PROFILE}); removed {removed} entries of an earlier run",
        video.as_str()
    );

    let segments = [(0u64, 0.0f64, 30.0f64), (1, 30.0, 60.0), (2, 60.0, 90.0)];
    let sampling_fps = 2.0;
    let max_frames = 60;
    for pass in ["first", "second"] {
        println!("\n--- {pass} pass ---");
        for (id, start, end) in segments {
            println!("processing segment {id} ({start:.1}s - {end:.1}s)");
            let params = SegmentParams {
                sampling_fps,
                max_frames,
                ..SegmentParams::new(id, start, end)
            };
            let began = Instant::now();
            match cache.get_segment_frames(&video, &params, true).await? {
                Some(segment) => {
                    println!(
                        "✓ loaded {} cached frames in {:.0?}",
                        segment.frames.len(),
                        began.elapsed()
                    );
                    for (i, frame) in segment.frames.iter().enumerate().take(2) {
                        println!(
                            "  frame {i}: {:?} at {:.2}s",
                            frame.dim(),
                            segment.metadata.timestamps[i]
                        );
                    }
                    check(pass == "second", "a hit only on the second pass")?;
                    check(
                        segment.frames.len() == 60
                            && segment.frames.iter().all(|f| f.dim() == (720, 1280, 3)),
                        "60 frames of 720x1280x3",
                    )?;
                    let expected: Vec<f64> = (0..60)
                        .map(|i| start + f64::from(i) / sampling_fps)
                        .collect();
                    check(
                        segment.metadata.timestamps == expected,
                        "timestamps as stored",
                    )?;
                    let original = common::frame(720, 1280, (id * 100 + 7) as u32);
                    let error = common::mean_error(&original, &segment.frames[7]);
                    check(
                        error < 4.0,
                        format!("frame 7 decodes to what was stored (mean error {error:.2})"),
                    )?;
                }
                None => {
                    check(pass == "first", "a miss only on the first pass")?;
                    println!("✗ segment not cached - extracting...");
                    let num_frames = ((end - start) * sampling_fps) as u64;
                    let frames: Vec<FrameImage> = (0..num_frames)
                        .map(|i| FrameImage::Rgb(common::frame(720, 1280, (id * 100 + i) as u32)))
                        .collect();
                    let timestamps: Vec<f64> = (0..num_frames)
                        .map(|i| start + i as f64 / sampling_fps)
                        .collect();
                    cache
                        .set_segment_frames(&video, &params, frames, timestamps)
                        .await?;
                    println!(
                        "✓ stored {num_frames} frames in cache in {:.0?} ({})",
                        began.elapsed(),
                        params.key(&video)?
                    );
                }
            }
        }
    }

    let stats = client.cluster_stats().await?;
    let manager = &stats.aggregate["manager"];
    println!("\ncache stats (cluster):");
    println!("  overall size: {} bytes", manager["size_bytes"]);
    println!(
        "  hit rate: {:.2}%",
        manager["hit_rate"].as_f64().unwrap_or(0.0) * 100.0
    );

    if !common::node_dirs().is_empty() {
        let file = "segments/long_video/segment_0_start_0.0_end_30.0/max_frames=60,sampling_fps=2.0/frame_0.jpg";
        let found = common::find_on_nodes(PROFILE, file);
        check(
            !found.is_empty(),
            found
                .first()
                .map_or(file.to_owned(), |p| p.display().to_string()),
        )?;
    }
    Ok(())
}
