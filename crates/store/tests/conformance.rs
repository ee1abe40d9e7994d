//! One conformance suite, run against every [`Tier`] implementation: the memory tier, the
//! filesystem tier, and a `Tiered` stack of both. Each case takes a fresh tier on a
//! [`ManualClock`], so TTL cases move time instead of sleeping.

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ndarray::Array2;
use strata_proto::{
    DType, Entry, EntryKey, Frame, FrameFormat, Key, Namespace, NodeId, Record, Tensor, Timestamp,
    Value, Version,
};
use strata_store::{
    FsConfig, FsTier, ManualClock, MemoryConfig, MemoryTier, Pattern, SetPolicy, Tier, Tiered,
};
use tempfile::TempDir;

struct Harness {
    tier: Arc<dyn Tier>,
    clock: Arc<ManualClock>,
    _dir: Option<TempDir>,
}

const START: Timestamp = Timestamp(1_732_492_800_000);

fn memory() -> Harness {
    let clock = ManualClock::new(START);
    let tier = MemoryTier::new(
        MemoryConfig {
            max_bytes: 64 << 20,
        },
        clock.clone(),
    );
    Harness {
        tier: Arc::new(tier),
        clock,
        _dir: None,
    }
}

fn open_fs(dir: &TempDir, clock: &Arc<ManualClock>) -> FsTier {
    let mut config = FsConfig::new(dir.path().join("cache"));
    config.cleanup_interval_secs = 0;
    let tier = FsTier::open(config, clock.clone()).expect("open filesystem tier");
    assert!(
        tier.wait_ready(Duration::from_secs(10)),
        "startup scan did not finish"
    );
    tier
}

fn filesystem() -> Harness {
    let clock = ManualClock::new(START);
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = open_fs(&dir, &clock);
    Harness {
        tier: Arc::new(tier),
        clock,
        _dir: Some(dir),
    }
}

fn tiered() -> Harness {
    let clock = ManualClock::new(START);
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = MemoryTier::new(
        MemoryConfig {
            max_bytes: 64 << 20,
        },
        clock.clone(),
    );
    let fs = open_fs(&dir, &clock);
    let tier = Tiered::new(
        vec![Arc::new(memory), Arc::new(fs)],
        SetPolicy::All,
        clock.clone(),
    )
    .expect("tiered");
    Harness {
        tier: Arc::new(tier),
        clock,
        _dir: Some(dir),
    }
}

fn ns(name: &str) -> Namespace {
    Namespace::new(name).unwrap()
}

fn key(namespace: &str, key: &str) -> EntryKey {
    EntryKey::new(ns(namespace), Key::new(key).unwrap())
}

fn bytes(s: &str) -> Value {
    Value::Bytes(Bytes::copy_from_slice(s.as_bytes()))
}

/// One value of every kind.
fn every_kind() -> Vec<Value> {
    let embedding = Array2::from_shape_fn((2, 512), |(i, j)| (i * 512 + j) as f32 * 0.5);
    let jpeg = Bytes::from_static(b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00fake-but-signed");
    vec![
        bytes("raw bytes"),
        Value::Bytes(Bytes::new()),
        Value::Tensor(Tensor::from_owned_array(embedding)),
        Value::Tensor(
            Tensor::from_slice(
                vec![3],
                &[
                    half::bf16::from_f32(1.0),
                    half::bf16::from_f32(-2.5),
                    half::bf16::ZERO,
                ],
            )
            .unwrap(),
        ),
        Value::Tensor(Tensor::from_slice(vec![4], &[-1i8, 0, 1, 127]).unwrap()),
        Value::Tensor(Tensor::from_slice(vec![2], &[1.0f64, 2.0]).unwrap()),
        Value::Frame(Frame::new(FrameFormat::Jpeg, 1280, 720, jpeg).unwrap()),
        Value::Frame(
            Frame::new(
                FrameFormat::Rgb8,
                2,
                1,
                Bytes::from_static(&[1, 2, 3, 4, 5, 6]),
            )
            .unwrap(),
        ),
        Value::Record(
            Record::from_serde(&serde_json::json!({"video_id": "abc123", "num_keyframes": 2}))
                .unwrap(),
        ),
    ]
}

mod cases {
    use super::*;

    pub(crate) fn get_missing_is_none(h: Harness) {
        assert!(h.tier.get(&key("default", "nope")).unwrap().is_none());
        assert!(!h.tier.exists(&key("default", "nope")).unwrap());
        assert!(h.tier.metadata(&key("default", "nope")).unwrap().is_none());
        assert!(!h.tier.delete(&key("default", "nope")).unwrap());
    }

    pub(crate) fn every_kind_round_trips(h: Harness) {
        for (i, value) in every_kind().into_iter().enumerate() {
            let k = key("default", &format!("kind:{i}"));
            h.tier.set(&k, value.clone(), None).unwrap();
            let got = h.tier.get(&k).unwrap().expect("stored value");
            assert_eq!(got.value, value, "kind {i}");
            assert_eq!(got.meta.format, value.format());
            assert_eq!(got.meta.created_at, START);
            assert_eq!(got.meta.expires_at, None);
        }
        let k = key("default", "kind:2");
        let Value::Tensor(t) = h.tier.get(&k).unwrap().unwrap().value else {
            panic!("not a tensor")
        };
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.shape(), &[2, 512]);
        assert_eq!(t.to_array::<f32>().unwrap()[[1, 3]], 515.0 * 0.5);
    }

    pub(crate) fn overwrite_replaces_even_across_kinds(h: Harness) {
        let k = key("default", "video:abc123:keyframes");
        h.tier.set(&k, bytes("first"), None).unwrap();
        h.tier.set(&k, bytes("second"), None).unwrap();
        assert_eq!(h.tier.get(&k).unwrap().unwrap().value, bytes("second"));
        let record = Value::Record(Record::from_serde(&serde_json::json!({"n": 3})).unwrap());
        h.tier.set(&k, record.clone(), None).unwrap();
        assert_eq!(h.tier.get(&k).unwrap().unwrap().value, record);
        assert_eq!(
            h.tier.list_keys(&ns("default"), None, false).unwrap().len(),
            1
        );
        h.tier.set(&k, bytes("third"), None).unwrap();
        assert_eq!(h.tier.get(&k).unwrap().unwrap().value, bytes("third"));
    }

    pub(crate) fn delete_removes(h: Harness) {
        let k = key("default", "doomed");
        h.tier.set(&k, bytes("x"), None).unwrap();
        assert!(h.tier.exists(&k).unwrap());
        assert!(h.tier.delete(&k).unwrap());
        assert!(!h.tier.delete(&k).unwrap());
        assert!(h.tier.get(&k).unwrap().is_none());
        assert!(!h.tier.exists(&k).unwrap());
    }

    pub(crate) fn metadata_describes_the_entry(h: Harness) {
        let k = key("default", "meta");
        let version = Version {
            physical_ms: 42,
            logical: 7,
            node: NodeId(3),
        };
        let entry = Entry::new(
            bytes("hello"),
            START,
            Some(Duration::from_secs(60)),
            version,
        );
        h.tier.put(&k, entry.clone()).unwrap();
        let meta = h.tier.metadata(&k).unwrap().unwrap();
        assert_eq!(meta, entry.meta);
        assert_eq!(meta.size_bytes, 5);
        assert_eq!(meta.version, version);
        assert_eq!(meta.expires_at, Some(Timestamp(START.0 + 60_000)));
        assert_eq!(h.tier.get(&k).unwrap().unwrap().meta, entry.meta);
    }

    pub(crate) fn ttl_expires_on_the_clock(h: Harness) {
        let k = key("default", "short");
        let forever = key("default", "forever");
        h.tier
            .set(&k, bytes("x"), Some(Duration::from_secs(10)))
            .unwrap();
        h.tier.set(&forever, bytes("y"), None).unwrap();
        h.clock.advance(Duration::from_millis(9_999));
        assert!(
            h.tier.get(&k).unwrap().is_some(),
            "alive just before expiry"
        );
        assert!(h.tier.exists(&k).unwrap());
        h.clock.advance(Duration::from_millis(1));
        assert!(h.tier.get(&k).unwrap().is_none(), "gone at expiry");
        assert!(!h.tier.exists(&k).unwrap());
        assert!(h.tier.metadata(&k).unwrap().is_none());
        let keys = h.tier.list_keys(&ns("default"), None, false).unwrap();
        assert_eq!(
            keys.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            vec!["forever"]
        );
        h.clock.advance(Duration::from_secs(365 * 24 * 3600));
        assert!(h.tier.get(&forever).unwrap().is_some(), "no TTL, no expiry");
    }

    pub(crate) fn cleanup_expired_counts(h: Harness) {
        for i in 0..5 {
            h.tier
                .set(
                    &key("default", &format!("short:{i}")),
                    bytes("x"),
                    Some(Duration::from_secs(5)),
                )
                .unwrap();
        }
        for i in 0..3 {
            h.tier
                .set(
                    &key("default", &format!("long:{i}")),
                    bytes("x"),
                    Some(Duration::from_secs(500)),
                )
                .unwrap();
        }
        assert_eq!(h.tier.cleanup_expired().unwrap(), 0);
        h.clock.advance(Duration::from_secs(6));
        assert_eq!(h.tier.cleanup_expired().unwrap(), 5);
        assert_eq!(h.tier.cleanup_expired().unwrap(), 0);
        assert_eq!(
            h.tier.list_keys(&ns("default"), None, false).unwrap().len(),
            3
        );
        assert!(h.tier.stats().expired >= 5);
    }

    pub(crate) fn clear_by_pattern(h: Harness) {
        for video in ["abc123", "def456"] {
            for i in 0..4 {
                h.tier
                    .set(
                        &key("p", &format!("video:{video}:keyframes:frame_{i}")),
                        bytes("f"),
                        None,
                    )
                    .unwrap();
            }
        }
        h.tier
            .set(
                &key("other", "video:abc123:keyframes:frame_0"),
                bytes("f"),
                None,
            )
            .unwrap();
        let pattern = Pattern::new("video:abc123:*").unwrap();
        assert_eq!(h.tier.clear(&ns("p"), Some(&pattern)).unwrap(), 4);
        let left = h.tier.list_keys(&ns("p"), None, false).unwrap();
        assert_eq!(left.len(), 4);
        assert!(
            left.iter()
                .all(|(k, _)| k.as_str().starts_with("video:def456:"))
        );
        assert!(
            h.tier
                .get(&key("other", "video:abc123:keyframes:frame_0"))
                .unwrap()
                .is_some(),
            "other namespace untouched"
        );
        assert_eq!(h.tier.clear(&ns("p"), None).unwrap(), 4);
        assert!(h.tier.list_keys(&ns("p"), None, false).unwrap().is_empty());
        assert_eq!(
            h.tier.list_keys(&ns("other"), None, false).unwrap().len(),
            1
        );
    }

    pub(crate) fn list_keys_filters_sorts_and_describes(h: Harness) {
        for k in ["b:2", "a:1", "c:keyframes", "a:keyframes"] {
            h.tier.set(&key("default", k), bytes(k), None).unwrap();
        }
        let all = h.tier.list_keys(&ns("default"), None, false).unwrap();
        assert_eq!(
            all.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            vec!["a:1", "a:keyframes", "b:2", "c:keyframes"]
        );
        assert!(all.iter().all(|(_, m)| m.is_none()));
        let kf = h
            .tier
            .list_keys(
                &ns("default"),
                Some(&Pattern::new("*:keyframes").unwrap()),
                true,
            )
            .unwrap();
        assert_eq!(
            kf.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            vec!["a:keyframes", "c:keyframes"]
        );
        assert_eq!(
            kf[0].1.as_ref().unwrap().size_bytes,
            "a:keyframes".len() as u64
        );
        assert!(
            h.tier
                .list_keys(&ns("empty"), None, true)
                .unwrap()
                .is_empty()
        );
        assert!(Pattern::new("[unclosed").is_err());
    }

    pub(crate) fn namespaces_are_listed(h: Harness) {
        assert!(h.tier.namespaces().unwrap().is_empty());
        h.tier
            .set(&key("tenant_b", "k1"), bytes("b"), None)
            .unwrap();
        h.tier
            .set(&key("tenant_a", "k1"), bytes("a"), None)
            .unwrap();
        h.tier
            .set(&key("tenant_a", "k2"), bytes("a"), None)
            .unwrap();
        assert_eq!(
            h.tier.namespaces().unwrap(),
            vec![ns("tenant_a"), ns("tenant_b")]
        );
        h.tier.delete(&key("tenant_b", "k1")).unwrap();
        assert_eq!(h.tier.namespaces().unwrap(), vec![ns("tenant_a")]);
    }

    pub(crate) fn namespaces_are_isolated(h: Harness) {
        h.tier
            .set(&key("tenant_a", "same:key"), bytes("a"), None)
            .unwrap();
        h.tier
            .set(&key("tenant_b", "same:key"), bytes("b"), None)
            .unwrap();
        assert_eq!(
            h.tier
                .get(&key("tenant_a", "same:key"))
                .unwrap()
                .unwrap()
                .value,
            bytes("a")
        );
        assert_eq!(
            h.tier
                .get(&key("tenant_b", "same:key"))
                .unwrap()
                .unwrap()
                .value,
            bytes("b")
        );
        assert!(h.tier.delete(&key("tenant_a", "same:key")).unwrap());
        assert!(h.tier.get(&key("tenant_b", "same:key")).unwrap().is_some());
    }

    pub(crate) fn hostile_keys_round_trip(h: Harness) {
        let long = "k".repeat(1024);
        let hostile = [
            "../../etc/passwd",
            "/absolute/path",
            "a/b/../../c",
            ".hidden",
            "..",
            "trailing:",
            ":leading",
            "a::b",
            "with space and * ? [ ] glob",
            "percent%2Fencoded",
            "日本語:キー",
            "keyframes:x",
            "_hashed:ab:cd",
            "video:abc123:keyframes:frame_1.jpg",
            long.as_str(),
        ];
        for (i, k) in hostile.iter().enumerate() {
            h.tier
                .set(&key("default", k), bytes(&format!("value {i}")), None)
                .unwrap();
        }
        for (i, k) in hostile.iter().enumerate() {
            let got = h
                .tier
                .get(&key("default", k))
                .unwrap()
                .unwrap_or_else(|| panic!("{k:?} lost"));
            assert_eq!(got.value, bytes(&format!("value {i}")), "{k:?}");
        }
        assert_eq!(
            h.tier.list_keys(&ns("default"), None, false).unwrap().len(),
            hostile.len()
        );
    }

    pub(crate) fn stats_count_operations(h: Harness) {
        h.tier
            .set(&key("default", "key1"), bytes("value1"), None)
            .unwrap();
        h.tier
            .set(&key("default", "key2"), bytes("value2"), None)
            .unwrap();
        h.tier.get(&key("default", "key1")).unwrap();
        h.tier.get(&key("default", "key1")).unwrap();
        h.tier.get(&key("default", "key3")).unwrap();
        h.tier.delete(&key("default", "key2")).unwrap();
        let s = h.tier.stats();
        assert_eq!((s.hits, s.misses, s.sets, s.deletes), (2, 1, 2, 1), "{s:?}");
        assert!((s.hit_rate() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.entries, 1);
        assert!(s.size_bytes >= 6, "{s:?}");
    }

    pub(crate) fn concurrent_writers_and_readers(h: Harness) {
        std::thread::scope(|scope| {
            for t in 0..4 {
                let tier = &h.tier;
                scope.spawn(move || {
                    for i in 0..100 {
                        let k = key("default", &format!("t{t}:k{i}"));
                        tier.set(&k, bytes(&format!("{t}-{i}")), None).unwrap();
                        assert_eq!(
                            tier.get(&k).unwrap().unwrap().value,
                            bytes(&format!("{t}-{i}"))
                        );
                    }
                });
            }
            // Everyone fights over one key too; whatever wins must be a whole value.
            for t in 0..2 {
                let tier = &h.tier;
                scope.spawn(move || {
                    for i in 0..100 {
                        let k = key("default", "contended");
                        tier.set(&k, bytes(&format!("writer {t} round {i:03}")), None)
                            .unwrap();
                        let got = tier.get(&k).unwrap().unwrap().value;
                        let text = got
                            .as_bytes()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .unwrap();
                        assert!(
                            text.starts_with("writer ") && text.len() == "writer 0 round 000".len(),
                            "{text}"
                        );
                    }
                });
            }
        });
        assert_eq!(
            h.tier.list_keys(&ns("default"), None, false).unwrap().len(),
            401
        );
    }
}

macro_rules! conformance {
    ($($tier:ident),* $(,)?) => {
        $(
            mod $tier {
                use super::*;
                #[test] fn get_missing_is_none() { cases::get_missing_is_none(super::$tier()) }
                #[test] fn every_kind_round_trips() { cases::every_kind_round_trips(super::$tier()) }
                #[test] fn overwrite_replaces_even_across_kinds() { cases::overwrite_replaces_even_across_kinds(super::$tier()) }
                #[test] fn delete_removes() { cases::delete_removes(super::$tier()) }
                #[test] fn metadata_describes_the_entry() { cases::metadata_describes_the_entry(super::$tier()) }
                #[test] fn ttl_expires_on_the_clock() { cases::ttl_expires_on_the_clock(super::$tier()) }
                #[test] fn cleanup_expired_counts() { cases::cleanup_expired_counts(super::$tier()) }
                #[test] fn clear_by_pattern() { cases::clear_by_pattern(super::$tier()) }
                #[test] fn list_keys_filters_sorts_and_describes() { cases::list_keys_filters_sorts_and_describes(super::$tier()) }
                #[test] fn namespaces_are_listed() { cases::namespaces_are_listed(super::$tier()) }
                #[test] fn namespaces_are_isolated() { cases::namespaces_are_isolated(super::$tier()) }
                #[test] fn hostile_keys_round_trip() { cases::hostile_keys_round_trip(super::$tier()) }
                #[test] fn stats_count_operations() { cases::stats_count_operations(super::$tier()) }
                #[test] fn concurrent_writers_and_readers() { cases::concurrent_writers_and_readers(super::$tier()) }
            }
        )*
    };
}

conformance!(memory, filesystem, tiered);
