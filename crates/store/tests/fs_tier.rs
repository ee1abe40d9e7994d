//! Filesystem-tier behaviour beyond the shared conformance suite: the human-readable layout on
//! disk, damaged entries dropped and counted, interrupted writes finished or undone, expiry at
//! startup, LRU capacity, restart, and the directory lock.
//!
//! `reference_layout_on_disk` leaves its directory in `target/tmp/fs-layout-example/` so a
//! person can `ls -R` it after `cargo test` and see the reference's layout.

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_proto::{
    EntryKey, Frame, FrameFormat, Key, Namespace, Record, Tensor, Timestamp, Value,
};
use strata_store::{Error, FsConfig, FsTier, FsyncPolicy, Janitor, ManualClock, Tier};

const START: Timestamp = Timestamp(1_732_492_800_000);

fn open(dir: &Path, clock: &Arc<ManualClock>, tweak: impl FnOnce(&mut FsConfig)) -> FsTier {
    let mut config = FsConfig::new(dir);
    config.cleanup_interval_secs = 0;
    tweak(&mut config);
    let tier = FsTier::open(config, clock.clone()).expect("open filesystem tier");
    assert!(
        tier.wait_ready(Duration::from_secs(10)),
        "startup scan did not finish"
    );
    tier
}

fn key(ns: &str, k: &str) -> EntryKey {
    EntryKey::new(Namespace::new(ns).unwrap(), Key::new(k).unwrap())
}

fn bytes(s: &str) -> Value {
    Value::Bytes(Bytes::copy_from_slice(s.as_bytes()))
}

fn jpeg(width: u32, height: u32) -> Value {
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode(&pixels, width, height, image::ExtendedColorType::Rgb8)
        .expect("encode jpeg");
    Value::Frame(Frame::new(FrameFormat::Jpeg, width, height, Bytes::from(out)).unwrap())
}

fn record(json: serde_json::Value) -> Value {
    Value::Record(Record::from_serde(&json).unwrap())
}

/// Every file below `dir`, relative, sorted.
fn files_below(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(
                    path.strip_prefix(base)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn example_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fs-layout-example");
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn reference_layout_on_disk() {
    let dir = example_dir();
    let clock = ManualClock::new(START);
    let tier = open(&dir, &clock, |_| {});
    let p = "video_colpali_mv";
    let week = Some(Duration::from_secs(7 * 24 * 3600));
    tier.set(&key(p, "video:abc123:keyframes"), record(serde_json::json!({"video_id": "abc123", "num_keyframes": 2, "keyframes": [{"frame_id": 0, "timestamp": 0.0}, {"frame_id": 42, "timestamp": 1.4}]})), week).unwrap();
    tier.set(
        &key(p, "video:abc123:keyframes:frame_0"),
        jpeg(64, 48),
        week,
    )
    .unwrap();
    tier.set(
        &key(p, "video:abc123:keyframes:frame_42"),
        jpeg(64, 48),
        week,
    )
    .unwrap();
    tier.set(&key(p, "video:abc123:transcript"), record(serde_json::json!({"text": "Hello world", "segments": [{"start": 0.0, "end": 5.0, "text": "Hello world"}]})), week).unwrap();
    tier.set(
        &key(p, "video:abc123:descriptions"),
        record(serde_json::json!({"frame_descriptions": {"0": "A robot on a soccer field"}})),
        week,
    )
    .unwrap();
    tier.set(
        &key(
            p,
            "video:abc123:segment_frames:segment_id=0:start_time=0.0:end_time=6.0",
        ),
        record(serde_json::json!({"fps": 2.0, "timestamps": [0.0, 0.5]})),
        week,
    )
    .unwrap();
    tier.set(
        &key(
            p,
            "video:abc123:segment_frames:segment_id=0:start_time=0.0:end_time=6.0:frame_1",
        ),
        jpeg(32, 32),
        week,
    )
    .unwrap();
    let embedding = Tensor::from_slice(vec![128], &[0.5f32; 128]).unwrap();
    tier.set(
        &key(p, "embedding:colpali:a3f2e9d8c7b6a5f4"),
        Value::Tensor(embedding),
        week,
    )
    .unwrap();
    tier.set(&key("default", "user:42:profile"), bytes("opaque"), None)
        .unwrap();

    let files = files_below(&dir);
    let expected = [
        "video_colpali_mv/keyframes/abc123/metadata.json",
        "video_colpali_mv/keyframes/abc123/metadata.json.meta",
        "video_colpali_mv/keyframes/abc123/frame_0.jpg",
        "video_colpali_mv/keyframes/abc123/frame_0.jpg.meta",
        "video_colpali_mv/keyframes/abc123/frame_42.jpg",
        "video_colpali_mv/keyframes/abc123/frame_42.jpg.meta",
        "video_colpali_mv/transcripts/abc123.json",
        "video_colpali_mv/transcripts/abc123.json.meta",
        "video_colpali_mv/descriptions/abc123.json",
        "video_colpali_mv/segments/abc123/segment_0_start_0.0_end_6.0/metadata.json",
        "video_colpali_mv/segments/abc123/segment_0_start_0.0_end_6.0/frame_1.jpg",
        "video_colpali_mv/embedding/colpali/a3f2e9d8c7b6a5f4.npy",
        "video_colpali_mv/embedding/colpali/a3f2e9d8c7b6a5f4.npy.meta",
        "default/user/42/profile.bin",
    ];
    for path in expected {
        assert!(
            files.contains(&path.to_owned()),
            "{path} missing; found {files:#?}"
        );
    }
    assert!(files.iter().all(|f| !f.contains(".pending")), "{files:#?}");

    // The frame is a real JPEG an image viewer opens.
    let frame = std::fs::read(dir.join("video_colpali_mv/keyframes/abc123/frame_42.jpg")).unwrap();
    let decoded =
        image::load_from_memory_with_format(&frame, image::ImageFormat::Jpeg).expect("a real JPEG");
    assert_eq!((decoded.width(), decoded.height()), (64, 48));
    // The sidecar is cat-able JSON in the reference's shape.
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("video_colpali_mv/keyframes/abc123/frame_42.jpg.meta")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["key"], "video:abc123:keyframes:frame_42");
    assert_eq!(meta["format"], "jpeg");
    assert_eq!(meta["ttl"], 604800.0);
    assert_eq!(meta["created_at"], START.as_secs_f64());
    assert_eq!(meta["size_bytes"], frame.len() as u64);
    assert!(meta["checksum"].as_str().unwrap().starts_with("crc32c:"));
    assert!(meta["version"].as_str().unwrap().contains('@'));
    // The record is plain JSON; the embedding is a NumPy file.
    let transcript: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("video_colpali_mv/transcripts/abc123.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(transcript["text"], "Hello world");
    let npy =
        std::fs::read(dir.join("video_colpali_mv/embedding/colpali/a3f2e9d8c7b6a5f4.npy")).unwrap();
    assert!(npy.starts_with(b"\x93NUMPY\x01\x00"));
    assert!(
        String::from_utf8_lossy(&npy[..128])
            .contains("'descr': '<f4', 'fortran_order': False, 'shape': (128,)")
    );
}

#[test]
fn restart_serves_what_the_disk_holds() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    {
        let tier = open(dir.path(), &clock, |c| c.fsync = FsyncPolicy::Always);
        for i in 0..50 {
            tier.set(
                &key("default", &format!("k:{i}")),
                bytes(&format!("v{i}")),
                None,
            )
            .unwrap();
        }
        tier.set(&key("default", "frame"), jpeg(16, 16), None)
            .unwrap();
    }
    let tier = open(dir.path(), &clock, |_| {});
    for i in 0..50 {
        assert_eq!(
            tier.get(&key("default", &format!("k:{i}")))
                .unwrap()
                .unwrap()
                .value,
            bytes(&format!("v{i}"))
        );
    }
    assert!(matches!(
        tier.get(&key("default", "frame")).unwrap().unwrap().value,
        Value::Frame(_)
    ));
    let stats = tier.stats();
    assert_eq!(stats.entries, 51);
    assert_eq!(stats.corrupt, 0);
}

#[test]
fn a_second_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let _first = open(dir.path(), &clock, |_| {});
    let second = FsTier::open(FsConfig::new(dir.path()), clock.clone());
    assert!(matches!(second, Err(Error::Locked { .. })), "{second:?}");
}

#[test]
fn corrupt_payloads_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let tier = open(dir.path(), &clock, |_| {});
    let flipped = key("default", "flipped");
    let truncated = key("default", "truncated");
    let vanished = key("default", "vanished");
    for k in [&flipped, &truncated, &vanished] {
        tier.set(k, bytes("a value that will be damaged"), None)
            .unwrap();
    }
    let file = |k: &EntryKey| tier.data_file(k, &strata_proto::Format::Bytes);
    let mut data = std::fs::read(file(&flipped)).unwrap();
    data[3] ^= 0x20;
    std::fs::write(file(&flipped), data).unwrap();
    std::fs::write(file(&truncated), b"a value").unwrap();
    std::fs::remove_file(file(&vanished)).unwrap();

    for k in [&flipped, &truncated, &vanished] {
        assert!(tier.get(k).unwrap().is_none(), "{k} must not be served");
        assert!(!file(k).exists(), "{k} payload should be removed");
        assert!(
            !Path::new(&format!("{}.meta", file(k).display())).exists(),
            "{k} sidecar should be removed"
        );
    }
    assert_eq!(tier.stats().corrupt, 3);
    assert_eq!(tier.stats().entries, 0);
    // The key works again afterwards.
    tier.set(&flipped, bytes("fresh"), None).unwrap();
    assert_eq!(tier.get(&flipped).unwrap().unwrap().value, bytes("fresh"));
}

#[test]
fn startup_scan_drops_torn_orphaned_and_misplaced_entries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let good = key("default", "good");
    let torn = key("default", "torn");
    let orphan = key("default", "orphan");
    let bodiless = key("default", "bodiless");
    let data_of = |tier: &FsTier, k: &EntryKey| tier.data_file(k, &strata_proto::Format::Bytes);
    let meta_of = |p: &Path| PathBuf::from(format!("{}.meta", p.display()));
    {
        let tier = open(dir.path(), &clock, |_| {});
        for k in [&good, &torn, &orphan, &bodiless] {
            tier.set(k, bytes("value"), None).unwrap();
        }
        std::fs::write(
            meta_of(&data_of(&tier, &torn)),
            b"{\"format_version\": 1, \"key\": ",
        )
        .unwrap();
        std::fs::remove_file(meta_of(&data_of(&tier, &orphan))).unwrap();
        // Left over from long ago: the scan removes only payloads older than itself.
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(data_of(&tier, &orphan))
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        std::fs::remove_file(data_of(&tier, &bodiless)).unwrap();
        // A copy of a good entry under a path its key does not map to.
        let misplaced = dir.path().join("default/elsewhere.bin");
        std::fs::copy(data_of(&tier, &good), &misplaced).unwrap();
        std::fs::copy(meta_of(&data_of(&tier, &good)), meta_of(&misplaced)).unwrap();
    }
    let tier = open(dir.path(), &clock, |_| {});
    assert_eq!(tier.get(&good).unwrap().unwrap().value, bytes("value"));
    for k in [&torn, &orphan, &bodiless] {
        assert!(tier.get(k).unwrap().is_none(), "{k}");
    }
    assert_eq!(
        files_below(&dir.path().join("default")),
        vec!["good.bin", "good.bin.meta"]
    );
    assert_eq!(tier.stats().corrupt, 4, "torn, orphan, bodiless, misplaced");
    assert_eq!(tier.stats().entries, 1);
}

/// Stages the files a write leaves behind when its process dies, under a dead boot id.
fn stage(tier: &FsTier, k: &EntryKey, value: &Value, with_meta_pending: bool) {
    let staging = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let scratch = open(staging.path(), &clock, |_| {});
    scratch.set(k, value.clone(), None).unwrap();
    let src = scratch.data_file(k, &value.format());
    let dst = tier.data_file(k, &value.format());
    let name = dst.file_name().unwrap().to_str().unwrap().to_owned();
    let dir = dst.parent().unwrap();
    std::fs::copy(&src, dir.join(format!(".{name}.dead0.pending"))).unwrap();
    let meta_src = PathBuf::from(format!("{}.meta", src.display()));
    if with_meta_pending {
        std::fs::copy(&meta_src, dir.join(format!(".{name}.meta.dead0.pending"))).unwrap();
    } else {
        // The sidecar was committed before the process died.
        std::fs::copy(&meta_src, format!("{}.meta", dst.display())).unwrap();
    }
}

#[test]
fn interrupted_writes_roll_back_before_commit_and_forward_after() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let before_commit = key("default", "video:v1:transcript");
    let after_commit = key("default", "video:v2:transcript");
    {
        let tier = open(dir.path(), &clock, |_| {});
        tier.set(&before_commit, bytes("old one"), None).unwrap();
        tier.set(&after_commit, bytes("old two"), None).unwrap();
        stage(
            &tier,
            &before_commit,
            &bytes("new one, never committed"),
            true,
        );
        stage(&tier, &after_commit, &bytes("new two, committed"), false);
    }
    let tier = open(dir.path(), &clock, |_| {});
    assert_eq!(
        tier.get(&before_commit).unwrap().unwrap().value,
        bytes("old one")
    );
    assert_eq!(
        tier.get(&after_commit).unwrap().unwrap().value,
        bytes("new two, committed")
    );
    let left = files_below(dir.path());
    assert!(left.iter().all(|f| !f.contains("pending")), "{left:#?}");
    assert_eq!(tier.stats().corrupt, 0);
}

#[test]
fn expired_entries_are_removed_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    {
        let tier = open(dir.path(), &clock, |_| {});
        tier.set(
            &key("default", "short"),
            bytes("x"),
            Some(Duration::from_secs(60)),
        )
        .unwrap();
        tier.set(
            &key("default", "long"),
            bytes("y"),
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
    }
    clock.advance(Duration::from_secs(61));
    let tier = open(dir.path(), &clock, |_| {});
    assert_eq!(tier.stats().expired, 1);
    assert_eq!(
        files_below(&dir.path().join("default")),
        vec!["long.bin", "long.bin.meta"]
    );
}

#[test]
fn janitor_removes_expired_entries_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let tier: Arc<dyn Tier> = Arc::new(open(dir.path(), &clock, |_| {}));
    tier.set(
        &key("default", "short"),
        bytes("x"),
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    let _janitor = Janitor::spawn(Arc::clone(&tier), Duration::from_millis(20)).unwrap();
    clock.advance(Duration::from_secs(6));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tier.stats().expired == 0 {
        assert!(std::time::Instant::now() < deadline, "janitor never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(files_below(&dir.path().join("default")).is_empty());
}

#[test]
fn capacity_evicts_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let tier = open(dir.path(), &clock, |c| c.max_bytes = 10 * 1000);
    let value = |i: usize| Value::Bytes(Bytes::from(vec![i as u8; 1000]));
    for i in 0..10 {
        tier.set(&key("default", &format!("k{i}")), value(i), None)
            .unwrap();
    }
    assert!(tier.get(&key("default", "k0")).unwrap().is_some()); // k0 is now the most recent
    tier.set(&key("default", "k10"), value(10), None).unwrap();
    assert!(
        tier.get(&key("default", "k1")).unwrap().is_none(),
        "k1 was least recently used"
    );
    assert!(tier.get(&key("default", "k0")).unwrap().is_some());
    let stats = tier.stats();
    assert_eq!(stats.evictions, 1);
    assert_eq!(stats.size_bytes, 10 * 1000);
    assert!(
        !tier
            .data_file(&key("default", "k1"), &strata_proto::Format::Bytes)
            .exists()
    );
    let too_big = tier.set(
        &key("default", "huge"),
        Value::Bytes(Bytes::from(vec![0; 10_001])),
        None,
    );
    assert!(
        matches!(too_big, Err(Error::TooLarge { .. })),
        "{too_big:?}"
    );
}

#[test]
fn capacity_is_enforced_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    {
        let tier = open(dir.path(), &clock, |_| {});
        for i in 0..10 {
            tier.set(
                &key("default", &format!("k{i}")),
                Value::Bytes(Bytes::from(vec![1; 1000])),
                None,
            )
            .unwrap();
        }
    }
    let tier = open(dir.path(), &clock, |c| c.max_bytes = 5 * 1000);
    let stats = tier.stats();
    assert_eq!(
        (stats.entries, stats.evictions, stats.size_bytes),
        (5, 5, 5000)
    );
    assert_eq!(files_below(&dir.path().join("default")).len(), 10);
}

#[test]
fn changing_a_keys_kind_leaves_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START);
    let tier = open(dir.path(), &clock, |_| {});
    let k = key("p", "video:abc123:keyframes:frame_7");
    tier.set(&k, bytes("not yet a picture"), None).unwrap();
    tier.set(&k, jpeg(8, 8), None).unwrap();
    assert_eq!(
        files_below(&dir.path().join("p")),
        vec![
            "keyframes/abc123/frame_7.jpg",
            "keyframes/abc123/frame_7.jpg.meta"
        ]
    );
    drop(tier);
    let tier = open(dir.path(), &clock, |_| {});
    assert!(matches!(
        tier.get(&k).unwrap().unwrap().value,
        Value::Frame(_)
    ));
}

#[test]
fn hostile_keys_stay_inside_the_base_directory() {
    let outer = tempfile::tempdir().unwrap();
    let base = outer.path().join("cache");
    let clock = ManualClock::new(START);
    let tier = open(&base, &clock, |_| {});
    for k in [
        "../escape",
        "../../escape",
        "/etc/passwd",
        "a/../../escape",
        "..",
        ".",
    ] {
        tier.set(&key("default", k), bytes(k), None).unwrap();
        assert_eq!(
            tier.get(&key("default", k)).unwrap().unwrap().value,
            bytes(k)
        );
    }
    let outside: Vec<_> = std::fs::read_dir(outer.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        outside,
        vec![std::ffi::OsString::from("cache")],
        "nothing may be written beside the base directory"
    );
    assert!(
        files_below(&base)
            .iter()
            .all(|f| f.starts_with("default/") || f.starts_with(".strata/"))
    );
}
