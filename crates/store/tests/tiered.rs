//! The `Tiered` manager beyond the conformance suite: promotion into faster tiers, the
//! reference's statistics, write policies when a tier refuses, and building stacks from
//! configuration through the registry.

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use strata_proto::{Entry, EntryKey, EntryMeta, Key, Namespace, Timestamp, Value};
use strata_store::{
    Clock, Error, FsConfig, FsTier, ManualClock, MemoryConfig, MemoryTier, Pattern, SetPolicy,
    Tier, TierContext, TierRegistry, TierStats, Tiered, TieredConfig,
};

const START: Timestamp = Timestamp(1_732_492_800_000);

fn key(k: &str) -> EntryKey {
    EntryKey::new(Namespace::default_namespace(), Key::new(k).unwrap())
}

fn bytes(s: &str) -> Value {
    Value::Bytes(Bytes::copy_from_slice(s.as_bytes()))
}

struct Stack {
    store: Tiered,
    memory: MemoryTier,
    fs: FsTier,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn stack(policy: SetPolicy) -> Stack {
    let clock = ManualClock::new(START);
    let dir = tempfile::tempdir().unwrap();
    let memory = MemoryTier::new(MemoryConfig::default(), clock.clone());
    let mut config = FsConfig::new(dir.path());
    config.cleanup_interval_secs = 0;
    let fs = FsTier::open(config, clock.clone()).unwrap();
    assert!(fs.wait_ready(Duration::from_secs(10)));
    let store = Tiered::new(
        vec![Arc::new(memory.clone()), Arc::new(fs.clone())],
        policy,
        clock.clone(),
    )
    .unwrap();
    Stack {
        store,
        memory,
        fs,
        clock,
        _dir: dir,
    }
}

#[test]
fn a_hit_in_a_slow_tier_is_promoted_with_its_metadata() {
    let s = stack(SetPolicy::All);
    let k = key("video:abc123:transcript");
    s.fs.set(&k, bytes("from disk"), Some(Duration::from_secs(100)))
        .unwrap();
    let disk_meta = s.fs.metadata(&k).unwrap().unwrap();
    assert!(s.memory.get(&k).unwrap().is_none());

    s.clock.advance(Duration::from_secs(10));
    assert_eq!(s.store.get(&k).unwrap().unwrap().value, bytes("from disk"));
    let promoted = s.memory.get(&k).unwrap().expect("promoted into memory");
    assert_eq!(promoted.meta, disk_meta, "same version, same expiry");

    // The promoted copy expires with the original, not a fresh TTL.
    s.clock.advance(Duration::from_secs(91));
    assert!(s.store.get(&k).unwrap().is_none());
    assert!(s.memory.get(&k).unwrap().is_none());
}

#[test]
fn stats_have_the_reference_shape() {
    let s = stack(SetPolicy::All);
    s.store.set(&key("key1"), bytes("value1"), None).unwrap();
    s.store.set(&key("key2"), bytes("value2"), None).unwrap();
    s.store.get(&key("key1")).unwrap();
    s.store.get(&key("key1")).unwrap();
    s.store.get(&key("key3")).unwrap();
    let stats = s.store.tiered_stats();
    assert_eq!(stats.manager.hits, 2);
    assert_eq!(stats.manager.misses, 1);
    assert_eq!(stats.manager.sets, 2);
    assert!((stats.manager.hit_rate - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(stats.manager.total_files, 2);
    assert_eq!(
        stats.tiers["memory"].hits, 2,
        "both hits were answered from memory"
    );
    assert_eq!(stats.tiers["filesystem"].sets, 2);
    let json = serde_json::to_value(&stats).unwrap();
    for field in [
        "hits",
        "misses",
        "sets",
        "deletes",
        "evictions",
        "hit_rate",
        "size_bytes",
        "total_files",
    ] {
        assert!(
            json["manager"].get(field).is_some(),
            "manager.{field} missing: {json}"
        );
    }
    assert!(json["tiers"]["filesystem"]["size_bytes"].as_u64().unwrap() >= 12);
}

#[test]
fn delete_and_clear_reach_every_tier() {
    let s = stack(SetPolicy::All);
    for i in 0..4 {
        s.store
            .set(
                &key(&format!("video:abc123:keyframes:frame_{i}")),
                bytes("f"),
                None,
            )
            .unwrap();
    }
    s.store
        .set(&key("video:other:keyframes:frame_0"), bytes("f"), None)
        .unwrap();
    assert!(
        s.store
            .delete(&key("video:abc123:keyframes:frame_0"))
            .unwrap()
    );
    assert!(
        s.memory
            .get(&key("video:abc123:keyframes:frame_0"))
            .unwrap()
            .is_none()
    );
    assert!(
        s.fs.get(&key("video:abc123:keyframes:frame_0"))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        s.store
            .clear(
                &Namespace::default_namespace(),
                Some(&Pattern::new("video:abc123:*").unwrap())
            )
            .unwrap(),
        3
    );
    for tier in [&s.memory as &dyn Tier, &s.fs] {
        let left = tier
            .list_keys(&Namespace::default_namespace(), None, false)
            .unwrap();
        assert_eq!(left.len(), 1, "{}", tier.name());
    }
}

/// A tier that refuses writes while told to, like a full disk.
#[derive(Debug)]
struct Refusing {
    inner: MemoryTier,
    refuse: AtomicBool,
}

impl Tier for Refusing {
    fn name(&self) -> &str {
        "refusing"
    }
    fn clock(&self) -> &dyn Clock {
        self.inner.clock()
    }
    fn get(&self, key: &EntryKey) -> strata_store::Result<Option<Entry>> {
        self.inner.get(key)
    }
    fn put(&self, key: &EntryKey, entry: Entry) -> strata_store::Result<()> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Error::NoSpace {
                path: "refusing".into(),
            });
        }
        self.inner.put(key, entry)
    }
    fn delete(&self, key: &EntryKey) -> strata_store::Result<bool> {
        self.inner.delete(key)
    }
    fn metadata(&self, key: &EntryKey) -> strata_store::Result<Option<EntryMeta>> {
        self.inner.metadata(key)
    }
    fn clear(&self, ns: &Namespace, p: Option<&Pattern>) -> strata_store::Result<u64> {
        self.inner.clear(ns, p)
    }
    fn list_keys(
        &self,
        ns: &Namespace,
        p: Option<&Pattern>,
        m: bool,
    ) -> strata_store::Result<Vec<(Key, Option<EntryMeta>)>> {
        self.inner.list_keys(ns, p, m)
    }
    fn namespaces(&self) -> strata_store::Result<Vec<Namespace>> {
        self.inner.namespaces()
    }
    fn cleanup_expired(&self) -> strata_store::Result<u64> {
        self.inner.cleanup_expired()
    }
    fn stats(&self) -> TierStats {
        self.inner.stats()
    }
}

fn refusing_stack(policy: SetPolicy) -> (Tiered, MemoryTier, Arc<Refusing>) {
    let clock = ManualClock::new(START);
    let fast = MemoryTier::new(MemoryConfig::default(), clock.clone());
    let slow = Arc::new(Refusing {
        inner: MemoryTier::new(MemoryConfig::default(), clock.clone()),
        refuse: AtomicBool::new(false),
    });
    let store = Tiered::new(vec![Arc::new(fast.clone()), slow.clone()], policy, clock).unwrap();
    (store, fast, slow)
}

#[test]
fn policy_all_refuses_and_keeps_the_previous_value() {
    let (store, fast, slow) = refusing_stack(SetPolicy::All);
    store.set(&key("k"), bytes("old"), None).unwrap();
    slow.refuse.store(true, Ordering::SeqCst);
    let err = store.set(&key("k"), bytes("new"), None).unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert_eq!(store.get(&key("k")).unwrap().unwrap().value, bytes("old"));
    assert_eq!(
        fast.get(&key("k")).unwrap().unwrap().value,
        bytes("old"),
        "fast tier untouched"
    );
    assert_eq!(store.tiered_stats().manager.sets, 1);
}

#[test]
fn policy_any_accepts_and_never_serves_stale() {
    let (store, fast, slow) = refusing_stack(SetPolicy::Any);
    store.set(&key("k"), bytes("old"), None).unwrap();
    slow.refuse.store(true, Ordering::SeqCst);
    store.set(&key("k"), bytes("new"), None).unwrap();
    assert_eq!(fast.get(&key("k")).unwrap().unwrap().value, bytes("new"));
    assert!(
        slow.get(&key("k")).unwrap().is_none(),
        "the refusing tier dropped its stale copy"
    );
    assert_eq!(store.get(&key("k")).unwrap().unwrap().value, bytes("new"));
}

#[test]
fn promotion_never_undoes_a_concurrent_write_or_delete() {
    let s = stack(SetPolicy::All);
    let k = key("hot");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..300 {
                if i % 10 == 9 {
                    s.store.delete(&k).unwrap();
                } else {
                    s.store.set(&k, bytes(&format!("{i:04}")), None).unwrap();
                }
                // Evict from memory so readers go to disk and promote.
                s.memory.delete(&k).unwrap();
            }
            s.store.set(&k, bytes("final"), None).unwrap();
        });
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..300 {
                    let _ = s.store.get(&k).unwrap();
                }
            });
        }
    });
    assert_eq!(s.fs.get(&k).unwrap().unwrap().value, bytes("final"));
    assert_eq!(s.store.get(&k).unwrap().unwrap().value, bytes("final"));
    assert_eq!(s.memory.get(&k).unwrap().unwrap().value, bytes("final"));
}

#[test]
fn the_registry_builds_stacks_from_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config: TieredConfig = serde_json::from_value(serde_json::json!({
        "tiers": [
            {"kind": "filesystem", "priority": 1, "path": "cache", "fsync": "never", "cleanup_interval_secs": 0},
            {"kind": "memory", "priority": 0, "max_bytes": 1048576},
            {"kind": "memory", "enabled": false}
        ],
        "set_policy": "all"
    }))
    .unwrap();
    let ctx = TierContext {
        clock: ManualClock::new(START),
        data_dir: dir.path().to_owned(),
    };
    let store = TierRegistry::new().build_tiered(&config, &ctx).unwrap();
    let names: Vec<_> = store.tiers().iter().map(|t| t.name().to_owned()).collect();
    assert_eq!(
        names,
        vec!["memory", "filesystem"],
        "ordered by priority, disabled left out"
    );
    store.set(&key("k"), bytes("v"), None).unwrap();
    assert!(
        dir.path().join("cache/default/k.bin").exists(),
        "relative paths resolve in the data directory"
    );

    let unknown: TieredConfig =
        serde_json::from_value(serde_json::json!({"tiers": [{"kind": "s3"}]})).unwrap();
    let err = TierRegistry::new()
        .build_tiered(&unknown, &ctx)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown tier kind `s3`") && err.contains("filesystem, memory"),
        "{err}"
    );
    let typo: TieredConfig =
        serde_json::from_value(serde_json::json!({"tiers": [{"kind": "memory", "max_byte": 5}]}))
            .unwrap();
    let err = TierRegistry::new()
        .build_tiered(&typo, &ctx)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tier `memory`") && err.contains("max_byte"),
        "{err}"
    );
}

#[test]
fn a_new_kind_plugs_in_without_touching_tiered() {
    let mut registry = TierRegistry::new();
    registry.register("small-memory", |spec, ctx| {
        let limit: u64 = spec
            .options
            .get("limit")
            .and_then(|v| v.as_u64())
            .unwrap_or(1024);
        Ok(Arc::new(MemoryTier::new(
            MemoryConfig { max_bytes: limit },
            ctx.clock.clone(),
        )))
    });
    let config: TieredConfig = serde_json::from_value(
        serde_json::json!({"tiers": [{"kind": "small-memory", "limit": 4096}]}),
    )
    .unwrap();
    let ctx = TierContext {
        clock: ManualClock::new(START),
        data_dir: ".".into(),
    };
    let store = registry.build_tiered(&config, &ctx).unwrap();
    store.set(&key("k"), bytes("v"), None).unwrap();
    assert_eq!(store.get(&key("k")).unwrap().unwrap().value, bytes("v"));
    assert_eq!(store.tiers()[0].stats().capacity_bytes, Some(4096));
}
