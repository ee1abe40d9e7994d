//! The typed caches of the client library — [`EmbeddingCache`] and [`ArtifactCache`] —
//! against one real `strata node` process: round trips, batches, statistics, bad input that
//! stores nothing, invalidation, and the human-readable files the node writes.

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ndarray::{Array2, Array3, ArrayD, IxDyn};
use strata_client::{
    ArtifactCache, CacheError, Client, ClientConfig, DescriptionParams, EmbeddingCache, FrameImage,
    KeyframeInfo, KeyframeParams, KeyframesMetadata, PipelineConfig, SegmentParams,
    TranscriptParams, VideoId, jpeg,
};
use strata_proto::{DType, Key, Namespace, Value};

#[path = "support/mod.rs"]
mod support;

use support::{Cluster, TestNode};

const PROFILE: &str = "video_colpali_mv";

async fn client(cluster: &Cluster, node: &TestNode) -> Client {
    Client::connect(ClientConfig::new(node.addr().to_string(), cluster.certs()))
        .await
        .unwrap()
}

/// A frame with some structure, so that JPEG has something to keep.
fn frame(width: usize, height: usize, seed: u8) -> Array3<u8> {
    Array3::from_shape_fn((height, width, 3), |(y, x, c)| {
        ((x + 2 * y + 50 * c) as u8).wrapping_add(seed)
    })
}

fn keyframes_metadata(ids: &[u64]) -> KeyframesMetadata {
    let mut extra = serde_json::Map::new();
    extra.insert("video_id".into(), "robot_soccer".into());
    extra.insert("num_keyframes".into(), ids.len().into());
    KeyframesMetadata {
        keyframes: ids
            .iter()
            .map(|&id| {
                let mut extra = serde_json::Map::new();
                extra.insert("filename".into(), format!("frame_{id}.jpg").into());
                KeyframeInfo {
                    frame_id: id,
                    timestamp: id as f64 / 30.0,
                    extra,
                }
            })
            .collect(),
        extra,
    }
}

/// Waits (at most 10 s) for a file the node writes through its filesystem tier.
fn wait_for_file(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Every file below `dir`, relative to it, sorted.
fn files_below(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if let Ok(rel) = path.strip_prefix(base) {
                out.push(rel.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_round_trip_with_dtype_shape_batches_and_stats() {
    let cluster = Cluster::new().unwrap();
    let node = cluster.start("n1", &[], &[]).unwrap();
    let cache = EmbeddingCache::builder(client(&cluster, &node).await)
        .ttl(Duration::from_secs(3600))
        .build();

    assert_eq!(
        cache
            .get_embedding::<f32>("Marie Curie radioactivity", "colpali")
            .await
            .unwrap(),
        None
    );
    let multi_vector = Array2::from_shape_fn((32, 128), |(i, j)| (i * 128 + j) as f32 * 0.001);
    cache
        .set_embedding("Marie Curie radioactivity", "colpali", &multi_vector)
        .await
        .unwrap();
    let back = cache
        .get_embedding::<f32>("Marie Curie radioactivity", "colpali")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, multi_vector.clone().into_dyn());
    // The same text by another model is another entry.
    assert!(
        cache
            .get_tensor("Marie Curie radioactivity", "videoprism")
            .await
            .unwrap()
            .is_none()
    );

    // Every dtype keeps its type and shape.
    let f16 = ArrayD::from_shape_vec(
        IxDyn(&[2, 2]),
        [1.5f32, -2.0, 0.25, 8.0].map(half::f16::from_f32).to_vec(),
    )
    .unwrap();
    cache
        .set_embedding_owned("half", "m", f16.clone())
        .await
        .unwrap();
    assert_eq!(
        cache.get_embedding::<half::f16>("half", "m").await.unwrap(),
        Some(f16)
    );
    let bf16 = ArrayD::from_shape_vec(
        IxDyn(&[3]),
        [1.5f32, -2.0, 3.0].map(half::bf16::from_f32).to_vec(),
    )
    .unwrap();
    cache
        .set_embedding_owned("brain", "m", bf16.clone())
        .await
        .unwrap();
    assert_eq!(
        cache
            .get_embedding::<half::bf16>("brain", "m")
            .await
            .unwrap(),
        Some(bf16)
    );
    let i8s = ArrayD::from_shape_vec(IxDyn(&[2, 1, 2]), vec![-128i8, -1, 0, 127]).unwrap();
    cache.set_embedding("quantised", "m", &i8s).await.unwrap();
    let tensor = cache.get_tensor("quantised", "m").await.unwrap().unwrap();
    assert_eq!(
        (tensor.dtype(), tensor.shape()),
        (DType::I8, &[2, 1, 2][..])
    );
    assert_eq!(tensor.to_array::<i8>().unwrap(), i8s);
    assert_eq!(
        cache.get_embedding::<f32>("quantised", "m").await,
        Err(CacheError::DTypeMismatch {
            requested: DType::F32,
            stored: DType::I8
        })
    );
    let u8s = ArrayD::from_shape_vec(IxDyn(&[4]), vec![0u8, 1, 128, 255]).unwrap();
    cache.set_embedding("bytes", "m", &u8s).await.unwrap();
    assert_eq!(
        cache.get_embedding::<u8>("bytes", "m").await.unwrap(),
        Some(u8s)
    );
    let f64s = ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![1e-300f64, 0.5, -7.25]).unwrap();
    cache.set_embedding("double", "m", &f64s).await.unwrap();
    assert_eq!(
        cache.get_embedding::<f64>("double", "m").await.unwrap(),
        Some(f64s)
    );

    // Batches, in input order, with a miss in the middle.
    let texts = [
        "Albert Einstein relativity",
        "Isaac Newton gravity",
        "Ada Lovelace",
    ];
    let arrays: Vec<(&str, ArrayD<f32>)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (*t, ArrayD::from_elem(IxDyn(&[128]), i as f32)))
        .collect();
    let outcomes = cache
        .set_embeddings("colpali", vec![arrays[0].clone(), arrays[2].clone()])
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let got = cache
        .get_embeddings::<f32>(&texts, "colpali")
        .await
        .unwrap();
    assert_eq!(got[0].as_ref(), Some(&arrays[0].1));
    assert_eq!(got[1], None);
    assert_eq!(got[2].as_ref(), Some(&arrays[2].1));

    // Hits: 1 + f16 + bf16 + i8 (tensor) + u8 + f64 + 2 in the batch (the i8 read as f32
    // also hit); misses: the first get, the other model, 1 in the batch.
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (9, 3), "{stats:?}");
    assert_eq!(stats.total_requests, 12);
    assert!((stats.hit_rate - 0.75).abs() < 1e-9);

    // The TTL of the cache is on the entries.
    let key = Key::new(strata_client::embedding::embedding_key(
        "colpali",
        "Marie Curie radioactivity",
    ))
    .unwrap();
    let entry_meta = client(&cluster, &node)
        .await
        .metadata(cache.namespace(), &key)
        .await
        .unwrap()
        .unwrap();
    assert!(entry_meta.expires_at.is_some());

    // The file the node wrote is an .npy under a readable path.
    let npy = cluster
        .data_dir("n1")
        .join("cache/embeddings/embedding/colpali")
        .join(format!(
            "{}.npy",
            &key.as_str()["embedding:colpali:".len()..]
        ));
    assert!(wait_for_file(&npy), "{}", npy.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_embedding_input_is_refused_and_stores_nothing() {
    let cluster = Cluster::new().unwrap();
    let node = cluster.start("n1", &[], &[]).unwrap();
    let c = client(&cluster, &node).await;
    let cache = EmbeddingCache::new(c.clone());
    let array = Array2::<f32>::zeros((2, 2));

    assert_eq!(
        cache.set_embedding("", "colpali", &array).await,
        Err(CacheError::EmptyText)
    );
    assert_eq!(
        cache.get_embedding::<f32>("", "colpali").await,
        Err(CacheError::EmptyText)
    );
    // One empty text fails the whole batch before anything is sent.
    let batch = cache
        .set_embeddings(
            "colpali",
            vec![("fine", array.clone().into_dyn()), ("", array.into_dyn())],
        )
        .await;
    assert_eq!(batch, Err(CacheError::EmptyText));
    assert!(matches!(
        strata_client::embedding::tensor_from_raw("float8", vec![2], Bytes::from(vec![0u8; 2])),
        Err(CacheError::UnknownDType(_))
    ));
    assert!(matches!(
        strata_client::embedding::tensor_from_raw(
            "float32",
            vec![3, 4],
            Bytes::from(vec![0u8; 40])
        ),
        Err(CacheError::ShapeMismatch {
            expected: 48,
            actual: 40,
            ..
        })
    ));
    let keys = c.list_keys(cache.namespace(), None, false).await.unwrap();
    assert!(keys.is_empty(), "nothing may be stored: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_round_trip_land_in_readable_files_and_are_invalidated() {
    let cluster = Cluster::new().unwrap();
    let node = cluster.start("n1", &[], &[]).unwrap();
    let c = client(&cluster, &node).await;
    let profile = Namespace::new(PROFILE).unwrap();
    let cache = ArtifactCache::new(c.clone(), profile.clone());
    let video = VideoId::from_path("/videos/robot_soccer.mp4").unwrap();

    // Keyframes: two raw frames encoded here, one JPEG stored as given.
    let params = KeyframeParams::default();
    assert_eq!(
        cache.get_keyframes(&video, &params, true).await.unwrap(),
        None
    );
    let given_jpeg = jpeg::encode(frame(64, 48, 7).view(), 80).unwrap();
    let mut images = BTreeMap::new();
    images.insert(0, FrameImage::Rgb(frame(320, 240, 0)));
    images.insert(42, FrameImage::Rgb(frame(320, 240, 100)));
    images.insert(99, FrameImage::Jpeg(given_jpeg.data().clone()));
    let metadata = keyframes_metadata(&[0, 42, 99]);
    cache
        .set_keyframes(&video, &params, &metadata, images)
        .await
        .unwrap();
    let only_meta = cache
        .get_keyframes(&video, &params, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(only_meta.metadata, metadata);
    assert!(only_meta.images.is_empty());
    let loaded = cache
        .get_keyframes(&video, &params, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        loaded.images.keys().copied().collect::<Vec<_>>(),
        vec![0, 42, 99]
    );
    assert_eq!(loaded.images[&42].dim(), (240, 320, 3));
    assert_eq!(loaded.images[&99].dim(), (48, 64, 3));
    let original = frame(320, 240, 100);
    let mean_error = original
        .iter()
        .zip(loaded.images[&42].iter())
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / original.len() as f64;
    assert!(mean_error < 4.0, "mean pixel error {mean_error}");
    // The given JPEG is stored byte for byte.
    let stored = c
        .get(
            &profile,
            &Key::new(format!("{}:frame_99", params.key(&video).unwrap())).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    match stored.value {
        Value::Frame(f) => assert_eq!(f.data(), given_jpeg.data()),
        other => panic!("{other:?}"),
    }

    // Transcript, descriptions, segment frames.
    let transcript = serde_json::json!({
        "text": "The robot approaches the ball. It kicks with precision.",
        "segments": [{"start": 0.0, "end": 5.0, "text": "The robot approaches the ball"}],
        "language": "en"
    });
    cache
        .set_transcript(&video, &TranscriptParams::default(), &transcript)
        .await
        .unwrap();
    assert_eq!(
        cache
            .get_transcript::<serde_json::Value>(&video, &TranscriptParams::default())
            .await
            .unwrap(),
        Some(transcript.clone())
    );
    let descriptions = serde_json::json!({"frame_descriptions": {"0": "A robot", "42": "A kick"}});
    let vlm = DescriptionParams::new("Qwen/Qwen2-VL-2B-Instruct");
    cache
        .set_descriptions(&video, &vlm, &descriptions)
        .await
        .unwrap();
    let segment = SegmentParams::new(0, 0.0, 6.0);
    let frames: Vec<FrameImage> = (0..3)
        .map(|i| FrameImage::Rgb(frame(160, 120, i * 30)))
        .collect();
    cache
        .set_segment_frames(&video, &segment, frames, vec![0.0, 0.5, 1.0])
        .await
        .unwrap();
    let seg = cache
        .get_segment_frames(&video, &segment, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seg.metadata.timestamps, vec![0.0, 0.5, 1.0]);
    assert_eq!(seg.metadata.num_frames, 3);
    assert_eq!(seg.frames.len(), 3);
    assert!(seg.frames.iter().all(|f| f.dim() == (120, 160, 3)));

    // Everything a pipeline asks for, in one call.
    let config = PipelineConfig {
        extract_keyframes: true,
        transcribe_audio: true,
        generate_descriptions: true,
        ..PipelineConfig::default()
    };
    let all = cache.get_all_artifacts(&video, &config).await.unwrap();
    assert!(all.is_complete(&config), "{all:?}");
    assert_eq!(all.keyframes.as_ref(), Some(&metadata));
    assert_eq!(all.audio_transcript.as_ref(), Some(&transcript));
    assert_eq!(all.frame_descriptions.as_ref(), Some(&descriptions));

    // The files the node wrote, under its data directory.
    let base: PathBuf = cluster.data_dir("n1").join("cache").join(PROFILE);
    for file in [
        "keyframes/robot_soccer/max_frames=3000,strategy=similarity,threshold=0.999/metadata.json",
        "keyframes/robot_soccer/max_frames=3000,strategy=similarity,threshold=0.999/frame_42.jpg",
        "transcripts/robot_soccer/lang=auto,model=base.json",
        "descriptions/robot_soccer/batch_size=500,model=Qwen%2FQwen2-VL-2B-Instruct.json",
        // The segment's parameters are sorted by name in its key
        // (`end_time=6.0:max_frames=12:sampling_fps=2.0:segment_id=0:start_time=0.0`); the
        // directory is still named after segment_id, start_time and end_time.
        "segments/robot_soccer/segment_0_start_0.0_end_6.0/max_frames=12,sampling_fps=2.0/metadata.json",
        "segments/robot_soccer/segment_0_start_0.0_end_6.0/max_frames=12,sampling_fps=2.0/frame_1.jpg",
    ] {
        assert!(
            wait_for_file(&base.join(file)),
            "{file} missing; files: {:#?}",
            files_below(&base)
        );
    }
    // A frame file is a JPEG any viewer opens.
    let on_disk = std::fs::read(base.join(
        "keyframes/robot_soccer/max_frames=3000,strategy=similarity,threshold=0.999/frame_99.jpg",
    ))
    .unwrap();
    assert_eq!(&on_disk[..], &given_jpeg.data()[..]);
    let segment_frame = std::fs::read(base.join(
        "segments/robot_soccer/segment_0_start_0.0_end_6.0/max_frames=12,sampling_fps=2.0/frame_1.jpg",
    ))
    .unwrap();
    assert_eq!(jpeg::decode(&segment_frame).unwrap().dim(), (120, 160, 3));
    // A key written as a path stays one escaped file name: the layout maps `:`-separated
    // keys, not `/`-separated ones.
    let path_key = Key::new("keyframes/robot_soccer/frame_42.jpg").unwrap();
    c.set(&profile, &path_key, Value::Frame(given_jpeg.clone()), None)
        .await
        .unwrap();
    let escaped = base.join("keyframes%2Frobot_soccer%2Fframe_42.jpg.jpg");
    assert!(wait_for_file(&escaped), "files: {:#?}", files_below(&base));
    println!("files under {}:\n{:#?}", base.display(), files_below(&base));

    // Another video is untouched by invalidation; the glob characters of an id are literal.
    let other = VideoId::new("robot_soccer[2]").unwrap();
    cache
        .set_transcript(&other, &TranscriptParams::default(), &transcript)
        .await
        .unwrap();
    let removed = cache.invalidate_video(&video).await.unwrap();
    // 3 keyframes + metadata, transcript, descriptions, 3 segment frames + metadata.
    assert_eq!(removed, 10);
    assert_eq!(
        cache.get_keyframes(&video, &params, false).await.unwrap(),
        None
    );
    let after = cache.get_all_artifacts(&video, &config).await.unwrap();
    assert_eq!(
        (
            after.keyframes,
            after.audio_transcript,
            after.frame_descriptions
        ),
        (None, None, None)
    );
    assert!(
        cache
            .get_transcript::<serde_json::Value>(&other, &TranscriptParams::default())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(cache.invalidate_video(&other).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_artifact_input_is_refused_and_stores_nothing() {
    let cluster = Cluster::new().unwrap();
    let node = cluster.start("n1", &[], &[]).unwrap();
    let c = client(&cluster, &node).await;
    let profile = Namespace::new(PROFILE).unwrap();
    let cache = ArtifactCache::new(c.clone(), profile.clone());
    let video = VideoId::new("robot_soccer").unwrap();
    let params = KeyframeParams::default();

    // A PNG signature labelled JPEG, next to a good frame: nothing is stored.
    let mut images = BTreeMap::new();
    images.insert(0, FrameImage::Rgb(frame(32, 32, 0)));
    images.insert(
        1,
        FrameImage::Jpeg(Bytes::from_static(b"\x89PNG\r\n\x1a\n0000000000")),
    );
    let outcome = cache
        .set_keyframes(&video, &params, &keyframes_metadata(&[0, 1]), images)
        .await;
    assert!(
        matches!(outcome, Err(CacheError::NotJpeg(_))),
        "{outcome:?}"
    );
    // JPEG bytes cut in half do not decode either.
    let good = jpeg::encode(frame(64, 64, 3).view(), 90).unwrap();
    let mut images = BTreeMap::new();
    images.insert(
        0,
        FrameImage::Jpeg(good.data().slice(..good.data().len() / 2)),
    );
    let outcome = cache
        .set_keyframes(&video, &params, &keyframes_metadata(&[0]), images)
        .await;
    assert!(
        matches!(outcome, Err(CacheError::NotJpeg(_))),
        "{outcome:?}"
    );
    // A raw frame of the wrong shape.
    let outcome = cache
        .set_segment_frames(
            &video,
            &SegmentParams::new(0, 0.0, 6.0),
            vec![FrameImage::Rgb(Array3::zeros((8, 8, 4)))],
            vec![0.0],
        )
        .await;
    assert!(
        matches!(outcome, Err(CacheError::InvalidFrame(_))),
        "{outcome:?}"
    );
    // Frames and timestamps that do not pair up.
    let outcome = cache
        .set_segment_frames(
            &video,
            &SegmentParams::new(0, 0.0, 6.0),
            vec![FrameImage::Rgb(frame(8, 8, 0))],
            vec![0.0, 0.5],
        )
        .await;
    assert!(
        matches!(outcome, Err(CacheError::InvalidInput(_))),
        "{outcome:?}"
    );
    // An image for a frame the metadata does not list.
    let mut images = BTreeMap::new();
    images.insert(5, FrameImage::Rgb(frame(8, 8, 0)));
    let outcome = cache
        .set_keyframes(&video, &params, &keyframes_metadata(&[0]), images)
        .await;
    assert!(
        matches!(outcome, Err(CacheError::InvalidInput(_))),
        "{outcome:?}"
    );
    // Hostile video ids never become a key or a path.
    for bad in ["../etc", "a/b", "nul\0byte", "..", "", "a:b"] {
        assert!(
            matches!(VideoId::new(bad), Err(CacheError::InvalidVideoId { .. })),
            "{bad:?}"
        );
    }
    assert!(VideoId::from_path("/videos/../").is_err());

    let keys = c.list_keys(&profile, None, false).await.unwrap();
    assert!(keys.is_empty(), "nothing may be stored: {keys:?}");
    let base = cluster.data_dir("n1").join("cache").join(PROFILE);
    assert!(files_below(&base).is_empty(), "{:#?}", files_below(&base));
}
