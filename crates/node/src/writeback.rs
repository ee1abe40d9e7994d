//! Write-back: acknowledge a write once it is in memory, put it on disk soon after.
//!
//! Creating files is the slowest thing a node does (hundreds of microseconds each on a
//! virtual disk), so in `write_mode = "back"` a write is acknowledged as soon as it is in the
//! memory tier and in the [`Pending`] map, and the key's writer actor flushes it to the
//! filesystem tier in the background. Writes coalesce: while a key waits to be flushed, newer
//! writes replace its pending entry, and only the latest version reaches the disk.
//!
//! Reads look in memory, then in the pending map, then on disk, so a pending write is never
//! hidden by an older file — even if memory evicts it before the flush. Versions only go
//! forward: a write's version is assigned under its key's pending lock, the memory tier and
//! the pending map keep the newer of two versions, and each key is flushed by one writer in
//! order. The pending map is bounded by `max_pending_bytes`: beyond it, writers wait for
//! flushes (backpressure) instead of growing memory without bound.
//!
//! Caveats: an acknowledged write that was still pending is lost if the process is killed
//! (SIGKILL, crash, power cut) — durability comes from replication, and `write_mode =
//! "through"` gives the stricter behaviour. A graceful shutdown flushes everything. If a
//! flush fails (disk full), the key is dropped from every tier rather than left to serve an
//! older value from disk once memory evicts it.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use strata_proto::{Entry, EntryKey, Namespace, Version};
use strata_store::{Pattern, Tiered};
use tokio::sync::Notify;

const SHARDS: usize = 64;

/// Writes acknowledged but not yet on disk.
pub struct Pending {
    shards: Box<[Mutex<HashMap<EntryKey, Entry>>]>,
    bytes: AtomicU64,
    max_bytes: u64,
    freed: Notify,
}

impl Pending {
    /// An empty map bounded by `max_bytes` of payload.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            bytes: AtomicU64::new(0),
            max_bytes,
            freed: Notify::new(),
        }
    }

    /// The lock of `key`'s shard. Holding it orders everything done to the key.
    pub fn lock(&self, key: &EntryKey) -> MutexGuard<'_, HashMap<EntryKey, Entry>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        self.shards[(h.finish() as usize) % SHARDS].lock()
    }

    /// Number of keys pending.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of payload pending.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Waits until `size` more bytes fit (or nothing is pending, so one oversized write can
    /// always proceed).
    pub async fn wait_for_room(&self, size: u64) {
        loop {
            // Register before looking, so a release in between is not missed.
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let held = self.bytes();
            if held == 0 || held + size <= self.max_bytes {
                return;
            }
            notified.await;
        }
    }

    /// Records `entry` as the pending write of `key` unless a newer one is pending; whether
    /// the key was not pending before (so a flush must be scheduled). Call with the key's
    /// lock held (pass its guard).
    pub fn insert(
        &self,
        shard: &mut HashMap<EntryKey, Entry>,
        key: EntryKey,
        entry: Entry,
    ) -> bool {
        let size = entry.meta.size_bytes;
        match shard.get(&key) {
            Some(held) if held.meta.version >= entry.meta.version => false,
            Some(held) => {
                let old = held.meta.size_bytes;
                shard.insert(key, entry);
                self.adjust(old, size);
                false
            }
            None => {
                shard.insert(key, entry);
                self.bytes.fetch_add(size, Ordering::Relaxed);
                true
            }
        }
    }

    fn adjust(&self, old: u64, new: u64) {
        if new >= old {
            self.bytes.fetch_add(new - old, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(old - new, Ordering::Relaxed);
            self.freed.notify_waiters();
        }
    }

    /// The pending write of `key`, if any.
    pub fn get(&self, key: &EntryKey) -> Option<Entry> {
        self.lock(key).get(key).cloned()
    }

    /// Forgets `key`'s pending write if it is still `version`; whether a newer one is
    /// pending instead (and needs a flush of its own).
    pub fn settle(&self, key: &EntryKey, version: Version) -> bool {
        let mut shard = self.lock(key);
        match shard.get(key) {
            Some(held) if held.meta.version == version => {
                let size = held.meta.size_bytes;
                shard.remove(key);
                drop(shard);
                self.release(size);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Forgets `key`'s pending write, whatever its version; whether there was one.
    pub fn remove(&self, shard: &mut HashMap<EntryKey, Entry>, key: &EntryKey) -> bool {
        match shard.remove(key) {
            Some(held) => {
                self.release(held.meta.size_bytes);
                true
            }
            None => false,
        }
    }

    /// Forgets the pending writes of `namespace` matching `pattern`.
    pub fn remove_matching(&self, namespace: &Namespace, pattern: Option<&Pattern>) {
        for shard in &*self.shards {
            let mut shard = shard.lock();
            let doomed: Vec<EntryKey> = shard
                .keys()
                .filter(|k| {
                    &k.namespace == namespace && pattern.is_none_or(|p| p.matches(k.key.as_str()))
                })
                .cloned()
                .collect();
            for key in doomed {
                self.remove(&mut shard, &key);
            }
        }
    }

    /// The pending writes of `namespace` matching `pattern`, with their metadata.
    pub fn matching(
        &self,
        namespace: &Namespace,
        pattern: Option<&Pattern>,
    ) -> Vec<(strata_proto::Key, strata_proto::EntryMeta)> {
        let mut out = Vec::new();
        for shard in &*self.shards {
            let shard = shard.lock();
            out.extend(
                shard
                    .iter()
                    .filter(|(k, _)| {
                        &k.namespace == namespace
                            && pattern.is_none_or(|p| p.matches(k.key.as_str()))
                    })
                    .map(|(k, e)| (k.key.clone(), e.meta.clone())),
            );
        }
        out
    }

    /// Every pending key.
    pub fn keys(&self) -> Vec<EntryKey> {
        let mut out = Vec::new();
        for shard in &*self.shards {
            out.extend(shard.lock().keys().cloned());
        }
        out
    }

    fn release(&self, size: u64) {
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    /// Writes every pending entry to the slower tiers now (at shutdown, after the writers
    /// stopped). Blocks on I/O.
    pub fn flush_all(&self, store: &Tiered) -> usize {
        let mut flushed = 0;
        for shard in &*self.shards {
            let entries: Vec<(EntryKey, Entry)> = shard.lock().drain().collect();
            for (key, entry) in entries {
                self.release(entry.meta.size_bytes);
                match store.put_slow(&key, entry) {
                    Ok(()) => flushed += 1,
                    Err(e) => {
                        tracing::error!(key = %key, error = %e, "could not flush a pending write at shutdown")
                    }
                }
            }
        }
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::{Key, NodeId, Timestamp, Value};

    fn entry(v: u64, size: usize) -> Entry {
        let version = Version {
            physical_ms: v,
            logical: 0,
            node: NodeId(1),
        };
        Entry::new(Value::from(vec![0u8; size]), Timestamp(0), None, version)
    }

    fn key(k: &str) -> EntryKey {
        EntryKey::new(Namespace::default_namespace(), Key::new(k).unwrap())
    }

    #[test]
    fn newer_versions_replace_older_and_bytes_are_counted() {
        let pending = Pending::new(1 << 20);
        let k = key("a");
        assert!(pending.insert(&mut pending.lock(&k), k.clone(), entry(2, 100)));
        assert!(
            !pending.insert(&mut pending.lock(&k), k.clone(), entry(1, 50)),
            "older is ignored"
        );
        assert_eq!(pending.get(&k).unwrap().meta.version.physical_ms, 2);
        assert!(!pending.insert(&mut pending.lock(&k), k.clone(), entry(3, 40)));
        assert_eq!(pending.bytes(), 40);
        assert!(
            pending.settle(&k, version(2)),
            "a newer version is still pending"
        );
        assert!(!pending.settle(&k, version(3)));
        assert_eq!(pending.bytes(), 0);
        assert!(pending.get(&k).is_none());
    }

    fn version(v: u64) -> Version {
        Version {
            physical_ms: v,
            logical: 0,
            node: NodeId(1),
        }
    }

    #[tokio::test]
    async fn writers_wait_for_room() {
        let pending = std::sync::Arc::new(Pending::new(100));
        let k = key("a");
        pending.insert(&mut pending.lock(&k), k.clone(), entry(1, 80));
        let waiter = {
            let pending = pending.clone();
            tokio::spawn(async move { pending.wait_for_room(50).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "must wait while full");
        pending.settle(&k, version(1));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
