//! The [`Tier`] trait: one level of storage, and the vocabulary shared by all of them.
//!
//! Every tier — the memory tier, the filesystem tier, and the [`Tiered`](crate::Tiered)
//! manager that stacks them — implements the same trait and passes the same conformance suite
//! (`tests/conformance.rs`). Methods are synchronous: a memory hit must cost well under a
//! microsecond, which an async hop would not allow; callers on an async runtime run the
//! filesystem tier's calls on blocking threads or writer actors.
//!
//! Semantics every implementation keeps:
//! - a miss is `Ok(None)`, never an error; an expired entry is a miss;
//! - `put` replaces what was stored under the key, whatever its format;
//! - a failed `put` leaves the previous value intact;
//! - `clear` and `list_keys` are scoped to one namespace and take an optional glob pattern
//!   matched against the whole key (`*` crosses `:`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use serde::Serialize;
use strata_proto::{Entry, EntryKey, EntryMeta, Key, Namespace, Value};

use crate::clock::Clock;
use crate::error::{Error, Result};

/// One level of storage.
pub trait Tier: Send + Sync + fmt::Debug {
    /// The tier's name in stats and logs (`memory`, `filesystem`, ...).
    fn name(&self) -> &str;

    /// The clock the tier judges expiry by.
    fn clock(&self) -> &dyn Clock;

    /// The entry under `key`, if present and not expired.
    fn get(&self, key: &EntryKey) -> Result<Option<Entry>>;

    /// Stores `entry` under `key`, replacing any previous entry.
    fn put(&self, key: &EntryKey, entry: Entry) -> Result<()>;

    /// Removes `key`; whether it was present.
    fn delete(&self, key: &EntryKey) -> Result<bool>;

    /// The metadata of `key`, if present and not expired.
    fn metadata(&self, key: &EntryKey) -> Result<Option<EntryMeta>>;

    /// Removes every entry of `namespace` whose key matches `pattern` (all of them for
    /// `None`); how many were removed.
    fn clear(&self, namespace: &Namespace, pattern: Option<&Pattern>) -> Result<u64>;

    /// The keys of `namespace` matching `pattern`, sorted, with their metadata when
    /// `with_meta` is set.
    fn list_keys(
        &self,
        namespace: &Namespace,
        pattern: Option<&Pattern>,
        with_meta: bool,
    ) -> Result<Vec<(Key, Option<EntryMeta>)>>;

    /// Every namespace that holds at least one entry, sorted.
    fn namespaces(&self) -> Result<Vec<Namespace>>;

    /// Removes every expired entry; how many were removed.
    fn cleanup_expired(&self) -> Result<u64>;

    /// Counters and sizes.
    fn stats(&self) -> TierStats;

    /// Stores `entry` only if the tier holds no newer (or equal) version of `key`; whether it
    /// did. Replicas and promotions use it so an older write never replaces a newer one.
    /// The default looks and then writes; callers that race on one key must order themselves
    /// (as [`Tiered`](crate::Tiered) does with its per-key lock).
    fn put_if_newer(&self, key: &EntryKey, entry: Entry) -> Result<bool> {
        match self.metadata(key)? {
            Some(held) if held.version >= entry.meta.version => Ok(false),
            _ => self.put(key, entry).map(|()| true),
        }
    }

    /// Whether `key` is present and not expired.
    fn exists(&self, key: &EntryKey) -> Result<bool> {
        Ok(self.metadata(key)?.is_some())
    }

    /// Stores `value` under `key` with an optional time to live, stamped with the tier's
    /// clock and a local version.
    fn set(&self, key: &EntryKey, value: Value, ttl: Option<Duration>) -> Result<()> {
        let now = self.clock().now();
        let version = crate::clock::local_version(now);
        self.put(key, Entry::new(value, now, ttl, version))
    }
}

/// A glob pattern over keys (`video:abc123:*`, `embedding:colpali:?a*`, `*:keyframes`).
///
/// `*` and `?` match any character including `:`; `[...]` is a character class; `\` escapes.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    matcher: GlobMatcher,
}

impl Pattern {
    /// Compiles a glob pattern.
    pub fn new(pattern: &str) -> Result<Self> {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::Pattern {
                pattern: pattern.to_owned(),
                reason: e.kind().to_string(),
            })?;
        Ok(Self {
            source: pattern.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    /// Whether `key` matches.
    pub fn matches(&self, key: &str) -> bool {
        self.matcher.is_match(key)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

/// Whether `key` matches an optional pattern (`None` matches everything).
pub(crate) fn matches(pattern: Option<&Pattern>, key: &str) -> bool {
    pattern.is_none_or(|p| p.matches(key))
}

/// A tier's counters and sizes, in the shape of the reference's per-backend stats.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TierStats {
    /// The tier's name.
    pub name: String,
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that found nothing (or only an expired or corrupt entry).
    pub misses: u64,
    /// Successful writes.
    pub sets: u64,
    /// Deletes that removed an entry (including by `clear`).
    pub deletes: u64,
    /// Entries removed to stay within capacity.
    pub evictions: u64,
    /// Entries removed because their TTL ran out.
    pub expired: u64,
    /// Entries found damaged (torn, corrupt, orphaned) and dropped.
    pub corrupt: u64,
    /// Bytes of payload held.
    pub size_bytes: u64,
    /// Entries held (for a filesystem tier, entries on disk, each a data file and a `.meta`).
    pub entries: u64,
    /// Capacity in bytes, if bounded.
    pub capacity_bytes: Option<u64>,
    /// Whether the tier survives a restart.
    pub persistent: bool,
}

impl TierStats {
    /// Hits over lookups, 0 when there were none.
    pub fn hit_rate(&self) -> f64 {
        hit_rate(self.hits, self.misses)
    }
}

pub(crate) fn hit_rate(hits: u64, misses: u64) -> f64 {
    let total = hits + misses;
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}

/// Lock-free counters behind [`TierStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) sets: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) corrupt: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Fills the counter fields of a stats snapshot.
    pub(crate) fn snapshot(&self, name: &str) -> TierStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TierStats {
            name: name.to_owned(),
            hits: get(&self.hits),
            misses: get(&self.misses),
            sets: get(&self.sets),
            deletes: get(&self.deletes),
            evictions: get(&self.evictions),
            expired: get(&self.expired),
            corrupt: get(&self.corrupt),
            ..TierStats::default()
        }
    }
}
