//! [`MemoryTier`]: hot entries in memory, on moka.
//!
//! A byte-bounded concurrent cache (moka's weigher counts each entry's payload, key and a fixed
//! overhead) with least-recently-used eviction and per-entry expiry. A hit is a hash lookup
//! and a few reference-count bumps: no lock is held across calls and no payload is copied.
//!
//! Expiry is judged twice: moka drops entries whose TTL has run out in real time (so memory is
//! given back without anyone asking), and every read checks the entry against the tier's
//! [`Clock`] (so a test that moves a manual clock sees entries expire at once).
//!
//! Caveat: moka applies evictions in small batches, so the cache can briefly hold a little
//! more than its capacity; `stats` settles pending work before it reports.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use serde::Deserialize;
use strata_proto::{Entry, EntryKey, EntryMeta, Key, Namespace};

use crate::clock::Clock;
use crate::error::Result;
use crate::tier::{Counters, Pattern, Tier, TierStats, matches};

/// Bytes charged per entry on top of its payload and key: the entry's metadata, moka's node,
/// and the hash table slot, measured roughly. Keeps a cache of many tiny values honest.
const ENTRY_OVERHEAD: u64 = 160;

/// Settings of a [`MemoryTier`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Capacity in bytes (payload + key + overhead per entry). Default 256 MiB: hot
    /// embeddings and frames, sized well below a node's RAM.
    #[serde(default = "MemoryConfig::default_max_bytes")]
    pub max_bytes: u64,
}

impl MemoryConfig {
    fn default_max_bytes() -> u64 {
        256 << 20
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_bytes: Self::default_max_bytes(),
        }
    }
}

/// The memory tier. Cloning it gives another handle on the same cache.
#[derive(Clone)]
pub struct MemoryTier {
    cache: Cache<EntryKey, Arc<Entry>>,
    clock: Arc<dyn Clock>,
    counters: Arc<Counters>,
    max_bytes: u64,
}

impl std::fmt::Debug for MemoryTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTier")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// Tells moka when an entry expires, from its metadata and the tier's clock.
struct ExpireAt(Arc<dyn Clock>);

impl ExpireAt {
    fn remaining(&self, entry: &Entry) -> Option<Duration> {
        entry.meta.remaining_ttl(self.0.now())
    }
}

impl moka::Expiry<EntryKey, Arc<Entry>> for ExpireAt {
    fn expire_after_create(
        &self,
        _: &EntryKey,
        entry: &Arc<Entry>,
        _: Instant,
    ) -> Option<Duration> {
        self.remaining(entry)
    }

    fn expire_after_update(
        &self,
        _: &EntryKey,
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.remaining(entry)
    }
}

fn weight(key: &EntryKey, entry: &Arc<Entry>) -> u32 {
    let bytes = entry.meta.size_bytes
        + key.key.as_str().len() as u64
        + key.namespace.as_str().len() as u64
        + ENTRY_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl MemoryTier {
    /// A memory tier of the given capacity.
    pub fn new(config: MemoryConfig, clock: Arc<dyn Clock>) -> Self {
        let counters = Arc::new(Counters::default());
        let listener_counters = Arc::clone(&counters);
        let cache = Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(weight)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(ExpireAt(Arc::clone(&clock)))
            .eviction_listener(move |_key, _value, cause| match cause {
                RemovalCause::Size => Counters::bump(&listener_counters.evictions),
                RemovalCause::Expired => Counters::bump(&listener_counters.expired),
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build();
        Self {
            cache,
            clock,
            counters,
            max_bytes: config.max_bytes,
        }
    }

    /// Drops `key` if it is still the given (expired) entry, counting the expiry.
    fn expire(&self, key: &EntryKey, entry: &Arc<Entry>) {
        if self.remove_if_same(key, entry) {
            Counters::bump(&self.counters.expired);
        }
    }

    /// Removes `key` only if it still holds `entry` (not a newer write); whether it did.
    fn remove_if_same(&self, key: &EntryKey, entry: &Arc<Entry>) -> bool {
        let result = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|current| match current {
                Some(current) if Arc::ptr_eq(current.value(), entry) => Op::Remove,
                _ => Op::Nop,
            });
        matches!(result, CompResult::Removed(_))
    }

    /// The live entry under `key`, without touching hit/miss counters.
    fn live(&self, key: &EntryKey) -> Option<Arc<Entry>> {
        let entry = self.cache.get(key)?;
        if entry.is_expired(self.clock.now()) {
            self.expire(key, &entry);
            return None;
        }
        Some(entry)
    }

    fn matching(
        &self,
        namespace: &Namespace,
        pattern: Option<&Pattern>,
    ) -> Vec<(Arc<EntryKey>, Arc<Entry>)> {
        self.cache
            .iter()
            .filter(|(k, _)| &k.namespace == namespace && matches(pattern, k.key.as_str()))
            .collect()
    }
}

impl Tier for MemoryTier {
    fn name(&self) -> &str {
        "memory"
    }

    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    fn get(&self, key: &EntryKey) -> Result<Option<Entry>> {
        match self.live(key) {
            Some(entry) => {
                Counters::bump(&self.counters.hits);
                Ok(Some(Entry::clone(&entry)))
            }
            None => {
                Counters::bump(&self.counters.misses);
                Ok(None)
            }
        }
    }

    fn put(&self, key: &EntryKey, entry: Entry) -> Result<()> {
        self.cache.insert(key.clone(), Arc::new(entry));
        Counters::bump(&self.counters.sets);
        Ok(())
    }

    fn put_if_newer(&self, key: &EntryKey, entry: Entry) -> Result<bool> {
        // One atomic step per key: compare and insert under moka's entry lock.
        let now = self.clock.now();
        let version = entry.meta.version;
        let mut entry = Some(entry);
        let result = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|current| match current {
                Some(current)
                    if current.value().meta.version >= version
                        && !current.value().is_expired(now) =>
                {
                    Op::Nop
                }
                _ => match entry.take() {
                    Some(e) => Op::Put(Arc::new(e)),
                    None => Op::Nop,
                },
            });
        let stored = matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        );
        if stored {
            Counters::bump(&self.counters.sets);
        }
        Ok(stored)
    }

    fn delete(&self, key: &EntryKey) -> Result<bool> {
        let removed = self.cache.remove(key).is_some();
        if removed {
            Counters::bump(&self.counters.deletes);
        }
        Ok(removed)
    }

    fn metadata(&self, key: &EntryKey) -> Result<Option<EntryMeta>> {
        Ok(self.live(key).map(|e| e.meta.clone()))
    }

    fn exists(&self, key: &EntryKey) -> Result<bool> {
        Ok(self.live(key).is_some())
    }

    fn clear(&self, namespace: &Namespace, pattern: Option<&Pattern>) -> Result<u64> {
        let mut removed = 0;
        for (key, entry) in self.matching(namespace, pattern) {
            if self.remove_if_same(&key, &entry) {
                removed += 1;
            }
        }
        Counters::add(&self.counters.deletes, removed);
        Ok(removed)
    }

    fn list_keys(
        &self,
        namespace: &Namespace,
        pattern: Option<&Pattern>,
        with_meta: bool,
    ) -> Result<Vec<(Key, Option<EntryMeta>)>> {
        let now = self.clock.now();
        let mut keys: Vec<_> = self
            .matching(namespace, pattern)
            .into_iter()
            .filter(|(_, e)| !e.is_expired(now))
            .map(|(k, e)| (k.key.clone(), with_meta.then(|| e.meta.clone())))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keys)
    }

    fn namespaces(&self) -> Result<Vec<Namespace>> {
        let set: std::collections::BTreeSet<Namespace> = self
            .cache
            .iter()
            .map(|(k, _)| k.namespace.clone())
            .collect();
        Ok(set.into_iter().collect())
    }

    fn cleanup_expired(&self) -> Result<u64> {
        let now = self.clock.now();
        let before = self.counters.expired.load(Ordering::Relaxed);
        for (key, entry) in self.cache.iter() {
            if entry.is_expired(now) {
                self.expire(&key, &entry);
            }
        }
        Ok(self.counters.expired.load(Ordering::Relaxed) - before)
    }

    fn stats(&self) -> TierStats {
        self.cache.run_pending_tasks();
        let mut stats = self.counters.snapshot(self.name());
        stats.size_bytes = self.cache.weighted_size();
        stats.entries = self.cache.entry_count();
        stats.capacity_bytes = Some(self.max_bytes);
        stats.persistent = false;
        stats
    }
}
