//! Memory-tier behaviour beyond the conformance suite: the byte bound and eviction counting,
//! and real-time expiry by moka itself (not only the read-time check on the tier's clock).

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::time::Duration;

use bytes::Bytes;
use strata_proto::{EntryKey, Key, Namespace, Value};
use strata_store::{MemoryConfig, MemoryTier, Tier, system_clock};

fn key(i: usize) -> EntryKey {
    EntryKey::new(
        Namespace::default_namespace(),
        Key::new(format!("k:{i}")).unwrap(),
    )
}

#[test]
fn stays_within_its_byte_bound_and_counts_evictions() {
    let tier = MemoryTier::new(MemoryConfig { max_bytes: 1 << 20 }, system_clock());
    let value = Value::Bytes(Bytes::from(vec![7u8; 4096]));
    for i in 0..1000 {
        tier.set(&key(i), value.clone(), None).unwrap();
    }
    let stats = tier.stats();
    assert!(stats.size_bytes <= 1 << 20, "{stats:?}");
    assert!(stats.entries < 1000 && stats.entries > 200, "{stats:?}");
    assert_eq!(
        stats.evictions,
        1000 - stats.entries,
        "every entry not held was evicted: {stats:?}"
    );
    // Least recently used go first: the newest entry is still there, the oldest is not.
    assert!(tier.get(&key(999)).unwrap().is_some());
    assert!(tier.get(&key(0)).unwrap().is_none());
}

#[test]
fn expired_entries_leave_memory_without_being_read() {
    let tier = MemoryTier::new(MemoryConfig::default(), system_clock());
    tier.set(
        &key(1),
        Value::Bytes(Bytes::from_static(b"x")),
        Some(Duration::from_millis(50)),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = tier.stats(); // settles moka's pending work, which runs its expiry
        if stats.entries == 0 {
            assert_eq!(stats.expired, 1, "{stats:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "entry never expired: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
