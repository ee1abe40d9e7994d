//! [`Tiered`]: tiers stacked fastest first, behaving as one.
//!
//! - **get** asks the tiers in order. The first tier is read without any lock (a memory hit
//!   costs a hash lookup); on a miss the slower tiers are read under the key's shared lock,
//!   and a hit is **promoted** into every faster tier with its metadata unchanged (same
//!   version, same expiry).
//! - **set** writes every tier, slowest first, under the key's exclusive lock. With the
//!   default [`SetPolicy::All`], a failure stops the write: the faster tiers are not touched,
//!   so they keep serving the previous value, and the error is returned. With
//!   [`SetPolicy::Any`] (the reference's behaviour) the write succeeds if any tier took it;
//!   tiers that failed drop the key rather than serve a stale value.
//! - **delete** and **clear** reach every tier; **list_keys** merges them.
//! - **stats** are the reference's `manager` counters plus each tier's own.
//!
//! The per-key lock is what keeps promotion honest: a reader that found an old value in a
//! slow tier cannot copy it into a fast tier after a concurrent write or delete has passed
//! (the writer holds the lock exclusively across all tiers).

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use strata_proto::{Entry, EntryKey, EntryMeta, Key, Namespace, Value};

use crate::clock::{Clock, LocalVersions};
use crate::error::{Error, Result};
use crate::tier::{Counters, Pattern, Tier, TierStats, hit_rate};

const STRIPES: usize = 256;

/// How many tiers a write must reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetPolicy {
    /// Every tier, or the write fails (and the faster tiers keep their previous value).
    #[default]
    All,
    /// At least one tier; tiers that failed drop the key.
    Any,
}

/// Tiers ordered fastest first.
#[derive(Debug)]
pub struct Tiered {
    tiers: Vec<Arc<dyn Tier>>,
    policy: SetPolicy,
    clock: Arc<dyn Clock>,
    versions: LocalVersions,
    stripes: Box<[RwLock<()>]>,
    counters: Counters,
}

/// The reference's `manager` statistics.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ManagerStats {
    /// Lookups answered by any tier.
    pub hits: u64,
    /// Lookups no tier could answer.
    pub misses: u64,
    /// Successful writes.
    pub sets: u64,
    /// Deletes that removed an entry.
    pub deletes: u64,
    /// Evictions summed over the tiers.
    pub evictions: u64,
    /// `hits / (hits + misses)`.
    pub hit_rate: f64,
    /// Bytes held, summed over the tiers.
    pub size_bytes: u64,
    /// Entries held by the persistent (filesystem) tiers.
    pub total_files: u64,
}

/// Statistics of a [`Tiered`] store: the manager's and each tier's.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TieredStats {
    /// Counters of the manager.
    pub manager: ManagerStats,
    /// Each tier's statistics, by tier name.
    pub tiers: BTreeMap<String, TierStats>,
}

impl Tiered {
    /// Stacks `tiers` (fastest first) under a write policy.
    pub fn new(
        tiers: Vec<Arc<dyn Tier>>,
        policy: SetPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        if tiers.is_empty() {
            return Err(Error::Config(
                "a tiered store needs at least one tier".into(),
            ));
        }
        Ok(Self {
            tiers,
            policy,
            clock,
            versions: LocalVersions::default(),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            counters: Counters::default(),
        })
    }

    /// The tiers, fastest first.
    pub fn tiers(&self) -> &[Arc<dyn Tier>] {
        &self.tiers
    }

    fn stripe(&self, key: &EntryKey) -> &RwLock<()> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    /// Stores `value` with an optional TTL, stamped with this store's clock and version
    /// source.
    pub fn set_value(&self, key: &EntryKey, value: Value, ttl: Option<Duration>) -> Result<()> {
        let now = self.clock.now();
        let version = self.versions.next(now);
        self.put(key, Entry::new(value, now, ttl, version))
    }

    /// Manager and per-tier statistics.
    pub fn tiered_stats(&self) -> TieredStats {
        let tiers: Vec<TierStats> = self.tiers.iter().map(|t| t.stats()).collect();
        let snapshot = self.counters.snapshot("tiered");
        let manager = ManagerStats {
            hits: snapshot.hits,
            misses: snapshot.misses,
            sets: snapshot.sets,
            deletes: snapshot.deletes,
            evictions: tiers.iter().map(|t| t.evictions).sum(),
            hit_rate: hit_rate(snapshot.hits, snapshot.misses),
            size_bytes: tiers.iter().map(|t| t.size_bytes).sum(),
            total_files: tiers
                .iter()
                .filter(|t| t.persistent)
                .map(|t| t.entries)
                .sum(),
        };
        let tiers = tiers.into_iter().map(|t| (t.name.clone(), t)).collect();
        TieredStats { manager, tiers }
    }

    /// Looks in the first (fastest) tier only. Never blocks on I/O when the first tier is in
    /// memory, so an async caller can answer hits directly and hand only misses to
    /// [`Tiered::get_slow`] on a blocking thread. Counts a hit when it finds the entry and
    /// nothing when it does not (the slow half counts the outcome).
    pub fn get_fast(&self, key: &EntryKey) -> Result<Option<Entry>> {
        let found = self.first().get(key)?;
        if found.is_some() {
            Counters::bump(&self.counters.hits);
        }
        Ok(found)
    }

    /// Looks in every tier below the first, promoting a hit; counts the hit or miss. Use after
    /// [`Tiered::get_fast`] missed.
    pub fn get_slow(&self, key: &EntryKey) -> Result<Option<Entry>> {
        let found = self.lookup_slower(key, None)?;
        Counters::bump(if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        });
        Ok(found)
    }

    /// Stores `entry` in the first (fastest) tier only, unless it holds a newer version;
    /// whether it did. Ordered against promotions and other writes of the key by the per-key
    /// lock. With [`Tiered::put_slow`], a write-back path writes memory now and the slower
    /// tiers later.
    /// Counts the write (the manager's `sets` are acknowledged writes).
    pub fn put_fast(&self, key: &EntryKey, entry: Entry) -> Result<bool> {
        let _write = self.stripe(key).write();
        let stored = self.first().put_if_newer(key, entry)?;
        Counters::bump(&self.counters.sets);
        Ok(stored)
    }

    /// Stores `entry` in every tier below the first (the second half of a write-back, which
    /// [`Tiered::put_fast`] counted).
    pub fn put_slow(&self, key: &EntryKey, entry: Entry) -> Result<()> {
        let _write = self.stripe(key).write();
        for tier in self.tiers[1..].iter().rev() {
            tier.put(key, entry.clone())?;
        }
        Ok(())
    }

    fn first(&self) -> &Arc<dyn Tier> {
        // Construction refuses an empty list.
        &self.tiers[0]
    }

    fn lookup(&self, key: &EntryKey) -> Result<Option<Entry>> {
        match self.first().get(key) {
            Ok(Some(entry)) => Ok(Some(entry)),
            Ok(None) => self.lookup_slower(key, None),
            Err(e) => self.lookup_slower(key, Some(e)),
        }
    }

    fn lookup_slower(&self, key: &EntryKey, mut error: Option<Error>) -> Result<Option<Entry>> {
        let slower = &self.tiers[1..];
        if slower.is_empty() {
            return error.map_or(Ok(None), Err);
        }
        let _read = self.stripe(key).read();
        for (i, tier) in slower.iter().enumerate() {
            match tier.get(key) {
                Ok(Some(entry)) => {
                    for faster in &self.tiers[..=i] {
                        // Never over a newer version a write-back path put there first.
                        if let Err(e) = faster.put_if_newer(key, entry.clone()) {
                            tracing::debug!(tier = faster.name(), error = %e, "promotion failed");
                        }
                    }
                    return Ok(Some(entry));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(tier = tier.name(), key = %key, error = %e, "tier read failed");
                    error.get_or_insert(e);
                }
            }
        }
        // A clean miss only if every tier answered; otherwise say why we could not look.
        error.map_or(Ok(None), Err)
    }
}

impl Tier for Tiered {
    fn name(&self) -> &str {
        "tiered"
    }

    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    fn get(&self, key: &EntryKey) -> Result<Option<Entry>> {
        let found = self.lookup(key)?;
        Counters::bump(if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        });
        Ok(found)
    }

    fn put(&self, key: &EntryKey, entry: Entry) -> Result<()> {
        let _write = self.stripe(key).write();
        let mut stored = 0;
        let mut failed = Vec::new();
        let mut first_error = None;
        // Slowest first: if the durable tier refuses, nothing has changed anywhere.
        for (i, tier) in self.tiers.iter().enumerate().rev() {
            match tier.put(key, entry.clone()) {
                Ok(()) => stored += 1,
                Err(e) => {
                    tracing::warn!(tier = tier.name(), key = %key, error = %e, "tier write failed");
                    if self.policy == SetPolicy::All {
                        if stored > 0 {
                            // Slower tiers hold the new value: the failed tier and the faster
                            // ones must not go on serving the one it replaces.
                            for t in &self.tiers[..=i] {
                                let _ = t.delete(key);
                            }
                        }
                        return Err(e);
                    }
                    failed.push(i);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if stored == 0 => Err(e),
            _ => {
                for i in failed {
                    let _ = self.tiers[i].delete(key);
                }
                Counters::bump(&self.counters.sets);
                Ok(())
            }
        }
    }

    fn delete(&self, key: &EntryKey) -> Result<bool> {
        let _write = self.stripe(key).write();
        let mut removed = false;
        for tier in &self.tiers {
            removed |= tier.delete(key)?;
        }
        if removed {
            Counters::bump(&self.counters.deletes);
        }
        Ok(removed)
    }

    fn metadata(&self, key: &EntryKey) -> Result<Option<EntryMeta>> {
        for tier in &self.tiers {
            if let Some(meta) = tier.metadata(key)? {
                return Ok(Some(meta));
            }
        }
        Ok(None)
    }

    fn exists(&self, key: &EntryKey) -> Result<bool> {
        for tier in &self.tiers {
            if tier.exists(key)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn clear(&self, namespace: &Namespace, pattern: Option<&Pattern>) -> Result<u64> {
        let mut removed = 0;
        for (key, _) in self.list_keys(namespace, pattern, false)? {
            if self.delete(&EntryKey::new(namespace.clone(), key))? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn list_keys(
        &self,
        namespace: &Namespace,
        pattern: Option<&Pattern>,
        with_meta: bool,
    ) -> Result<Vec<(Key, Option<EntryMeta>)>> {
        let mut merged: BTreeMap<Key, Option<EntryMeta>> = BTreeMap::new();
        // Slowest first, so the fastest tier's metadata (the same, or newer) wins.
        for tier in self.tiers.iter().rev() {
            for (key, meta) in tier.list_keys(namespace, pattern, with_meta)? {
                merged.insert(key, meta);
            }
        }
        Ok(merged.into_iter().collect())
    }

    fn namespaces(&self) -> Result<Vec<Namespace>> {
        let mut set = std::collections::BTreeSet::new();
        for tier in &self.tiers {
            set.extend(tier.namespaces()?);
        }
        Ok(set.into_iter().collect())
    }

    /// Cleans every tier. The count is of entries, not copies: every entry lives in the
    /// slowest tier (writes reach all tiers, promotion copies upward), so the largest count
    /// of any one tier is the number of entries that expired.
    fn cleanup_expired(&self) -> Result<u64> {
        let mut removed = 0;
        for tier in &self.tiers {
            removed = removed.max(tier.cleanup_expired()?);
        }
        Ok(removed)
    }

    fn stats(&self) -> TierStats {
        let s = self.tiered_stats();
        TierStats {
            name: "tiered".into(),
            hits: s.manager.hits,
            misses: s.manager.misses,
            sets: s.manager.sets,
            deletes: s.manager.deletes,
            evictions: s.manager.evictions,
            expired: s.tiers.values().map(|t| t.expired).sum(),
            corrupt: s.tiers.values().map(|t| t.corrupt).sum(),
            size_bytes: s.manager.size_bytes,
            entries: s.tiers.values().map(|t| t.entries).max().unwrap_or(0),
            capacity_bytes: None,
            persistent: s.tiers.values().any(|t| t.persistent),
        }
    }

    fn set(&self, key: &EntryKey, value: Value, ttl: Option<Duration>) -> Result<()> {
        self.set_value(key, value, ttl)
    }
}
