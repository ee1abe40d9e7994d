//! Versioned tombstones: the record that a key was deleted, at which version.
//!
//! A delete cannot simply remove a key on a cluster: a replica may receive the delete before
//! an older write of the same key (they travel in parallel), and a member coming back from a
//! failure may still hold the deleted value. Both must lose against the delete. So every
//! delete leaves a tombstone `(key, version)`, and a write is applied only if its version is
//! newer than both the value held and the tombstone. Tombstones travel with partition
//! transfers, so a rejoining member learns the deletes it missed.
//!
//! Tombstones are kept for a grace period (default 24 h), then purged; a member that was
//! down longer than that discards its data instead of merging it (its tombstones may be
//! gone). They live in memory and in an append-only file of checksummed frames
//! (`DATA_DIR/tombstones.log`), so a restarted node keeps them; the file is rewritten without
//! purged and superseded records when they outweigh the live ones.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use strata_proto::ring::{PartitionId, partition_of};
use strata_proto::{EntryKey, Key, Namespace, Timestamp, Version};

use crate::raft::file::{self, Frame};

const MAGIC: &[u8; file::MAGIC_LEN] = b"STRTOMB1";
const FILE: &str = "tombstones.log";

/// One tombstone as stored in the file.
#[derive(Serialize, Deserialize)]
struct Record {
    namespace: String,
    key: String,
    version: Version,
    /// When the delete was applied here (ms since the Unix epoch); the grace period runs
    /// from it.
    at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stone {
    version: Version,
    at: Timestamp,
}

struct Inner {
    live: HashMap<EntryKey, Stone>,
    log: Option<File>,
    /// Records in the file (live or not).
    records: usize,
}

/// The tombstones of one node.
pub struct Tombstones {
    path: Option<PathBuf>,
    grace: Duration,
    inner: Mutex<Inner>,
}

impl Tombstones {
    /// Tombstones kept in memory only (tests, nodes without a data directory).
    pub fn in_memory(grace: Duration) -> Self {
        Self {
            path: None,
            grace,
            inner: Mutex::new(Inner {
                live: HashMap::new(),
                log: None,
                records: 0,
            }),
        }
    }

    /// Opens (or creates) the tombstone file in `dir`, dropping tombstones older than `grace`
    /// at `now`. A damaged tail (a crash mid-append) is cut off; the records before it stay.
    pub fn open(dir: &Path, grace: Duration, now: Timestamp) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let mut live = HashMap::new();
        let mut records = 0;
        match std::fs::read(&path) {
            Ok(data) => {
                file::check_magic(&path, &data, MAGIC)?;
                let mut pos = file::MAGIC_LEN;
                loop {
                    match file::read_frame(&data, pos) {
                        Frame::Ok(payload, next) => {
                            let record: Record = file::decode(&path, payload)?;
                            records += 1;
                            pos = next;
                            let Ok(key) = entry_key(&record.namespace, &record.key) else {
                                continue;
                            };
                            let stone = Stone {
                                version: record.version,
                                at: Timestamp(record.at_ms),
                            };
                            keep_newer(&mut live, key, stone);
                        }
                        Frame::End => break,
                        Frame::Bad(why) => {
                            tracing::warn!(file = %path.display(), %why, "tombstone log has a damaged tail; cutting it off");
                            break;
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let tombstones = Self {
            path: Some(path),
            grace,
            inner: Mutex::new(Inner {
                live,
                log: None,
                records,
            }),
        };
        tombstones.purge(now)?;
        {
            let mut inner = tombstones.inner.lock();
            tombstones.rewrite(&mut inner)?;
        }
        Ok(tombstones)
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The tombstone of `key`, if it was deleted within the grace period.
    pub fn get(&self, key: &EntryKey) -> Option<Version> {
        self.inner.lock().live.get(key).map(|s| s.version)
    }

    /// Whether a write at `version` of `key` is superseded by a delete.
    pub fn covers(&self, key: &EntryKey, version: Version) -> bool {
        self.get(key).is_some_and(|v| v >= version)
    }

    /// Records that `key` was deleted at `version` (kept only if newer than its tombstone);
    /// true if recorded.
    pub fn record(&self, key: &EntryKey, version: Version, now: Timestamp) -> io::Result<bool> {
        let mut inner = self.inner.lock();
        if inner.live.get(key).is_some_and(|s| s.version >= version) {
            return Ok(false);
        }
        let stone = Stone { version, at: now };
        self.append(&mut inner, key, stone)?;
        inner.live.insert(key.clone(), stone);
        Ok(true)
    }

    /// Drops tombstones older than the grace period; how many. Rewrites the file when most of
    /// its records are dead.
    pub fn purge(&self, now: Timestamp) -> io::Result<usize> {
        let mut inner = self.inner.lock();
        let before = inner.live.len();
        let grace = self.grace;
        inner.live.retain(|_, s| now.saturating_since(s.at) < grace);
        let purged = before - inner.live.len();
        if inner.records > 1024 && inner.records > 2 * inner.live.len() {
            self.rewrite(&mut inner)?;
        }
        Ok(purged)
    }

    /// The tombstones of keys in `wanted` partitions (of `partitions`), sorted by key.
    pub fn in_partitions(
        &self,
        partitions: u32,
        wanted: &HashSet<PartitionId>,
    ) -> Vec<(EntryKey, Version)> {
        let inner = self.inner.lock();
        let mut out: Vec<(EntryKey, Version)> = inner
            .live
            .iter()
            .filter(|(k, _)| {
                wanted.contains(&partition_of(
                    partitions,
                    k.namespace.as_str(),
                    k.key.as_str(),
                ))
            })
            .map(|(k, s)| (k.clone(), s.version))
            .collect();
        out.sort_by(|a, b| {
            (a.0.namespace.as_str(), a.0.key.as_str())
                .cmp(&(b.0.namespace.as_str(), b.0.key.as_str()))
        });
        out
    }

    /// Forgets every tombstone in `dropped` partitions (their data was dropped here).
    pub fn drop_partitions(&self, partitions: u32, dropped: &HashSet<PartitionId>) {
        self.inner.lock().live.retain(|k, _| {
            !dropped.contains(&partition_of(
                partitions,
                k.namespace.as_str(),
                k.key.as_str(),
            ))
        });
    }

    /// Number of live tombstones.
    pub fn len(&self) -> usize {
        self.inner.lock().live.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&self, inner: &mut Inner, key: &EntryKey, stone: Stone) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if inner.log.is_none() {
            inner.log = Some(OpenOptions::new().append(true).open(path)?);
        }
        let record = Record {
            namespace: key.namespace.to_string(),
            key: key.key.to_string(),
            version: stone.version,
            at_ms: stone.at.as_millis(),
        };
        let mut frame = Vec::new();
        file::push_frame(&mut frame, &file::encode(&record)?)?;
        if let Some(log) = inner.log.as_mut() {
            // Written to the OS at once; durability across machine crashes comes from
            // replication, like the rest of the data.
            log.write_all(&frame)?;
        }
        inner.records += 1;
        Ok(())
    }

    /// Replaces the file with the live tombstones only.
    fn rewrite(&self, inner: &mut Inner) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut frames = Vec::new();
        for (key, stone) in &inner.live {
            let record = Record {
                namespace: key.namespace.to_string(),
                key: key.key.to_string(),
                version: stone.version,
                at_ms: stone.at.as_millis(),
            };
            file::push_frame(&mut frames, &file::encode(&record)?)?;
        }
        inner.log = None;
        file::replace(dir, FILE, MAGIC, &frames)?;
        inner.records = inner.live.len();
        Ok(())
    }
}

fn keep_newer(live: &mut HashMap<EntryKey, Stone>, key: EntryKey, stone: Stone) {
    match live.get(&key) {
        Some(held) if held.version >= stone.version => {}
        _ => {
            live.insert(key, stone);
        }
    }
}

fn entry_key(namespace: &str, key: &str) -> strata_proto::Result<EntryKey> {
    Ok(EntryKey::new(Namespace::new(namespace)?, Key::new(key)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use strata_proto::NodeId;

    use super::*;

    fn key(k: &str) -> EntryKey {
        entry_key("default", k).unwrap()
    }

    fn v(ms: u64) -> Version {
        Version {
            physical_ms: ms,
            logical: 0,
            node: NodeId(1),
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn newest_tombstone_wins_and_covers_older_writes() {
        let t = Tombstones::in_memory(DAY);
        assert!(t.record(&key("a"), v(10), Timestamp(1)).unwrap());
        assert!(!t.record(&key("a"), v(5), Timestamp(2)).unwrap());
        assert_eq!(t.get(&key("a")), Some(v(10)));
        assert!(t.covers(&key("a"), v(10)));
        assert!(t.covers(&key("a"), v(9)));
        assert!(!t.covers(&key("a"), v(11)));
        assert!(!t.covers(&key("b"), v(1)));
    }

    #[test]
    fn survive_a_restart_and_purge_after_grace() {
        let dir = tempfile::tempdir().unwrap();
        let grace = Duration::from_secs(60);
        {
            let t = Tombstones::open(dir.path(), grace, Timestamp(0)).unwrap();
            t.record(&key("old"), v(1), Timestamp(1_000)).unwrap();
            t.record(&key("new"), v(2), Timestamp(50_000)).unwrap();
            t.record(&key("new"), v(3), Timestamp(55_000)).unwrap();
        }
        let t = Tombstones::open(dir.path(), grace, Timestamp(30_000)).unwrap();
        assert_eq!(t.get(&key("old")), Some(v(1)));
        assert_eq!(t.get(&key("new")), Some(v(3)));
        assert_eq!(t.purge(Timestamp(61_001)).unwrap(), 1);
        assert_eq!(t.get(&key("old")), None);
        assert_eq!(t.len(), 1);
        drop(t);
        // Reopened after the grace period of everything: nothing is left.
        let t = Tombstones::open(dir.path(), grace, Timestamp(200_000)).unwrap();
        assert!(t.is_empty());
    }

    #[test]
    fn a_damaged_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        {
            let t = Tombstones::open(dir.path(), DAY, Timestamp(0)).unwrap();
            t.record(&key("a"), v(1), Timestamp(1)).unwrap();
            t.record(&key("b"), v(2), Timestamp(1)).unwrap();
        }
        let path = dir.path().join(FILE);
        let mut data = std::fs::read(&path).unwrap();
        let n = data.len();
        data[n - 2] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        let t = Tombstones::open(dir.path(), DAY, Timestamp(2)).unwrap();
        assert_eq!(t.get(&key("a")), Some(v(1)));
        assert_eq!(t.get(&key("b")), None);
        // The file was rewritten clean: later records are readable after a restart.
        t.record(&key("c"), v(3), Timestamp(3)).unwrap();
        drop(t);
        let t = Tombstones::open(dir.path(), DAY, Timestamp(4)).unwrap();
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"not a tombstone file").unwrap();
        assert!(Tombstones::open(dir.path(), DAY, Timestamp(0)).is_err());
    }

    #[test]
    fn by_partition() {
        let t = Tombstones::in_memory(DAY);
        for i in 0..50 {
            t.record(&key(&format!("k{i}")), v(i), Timestamp(0))
                .unwrap();
        }
        let p = partition_of(8, "default", "k7");
        let wanted = HashSet::from([p]);
        let listed = t.in_partitions(8, &wanted);
        assert!(listed.iter().any(|(k, _)| k.key.as_str() == "k7"));
        assert!(
            listed
                .iter()
                .all(|(k, _)| partition_of(8, "default", k.key.as_str()) == p)
        );
        t.drop_partitions(8, &wanted);
        assert!(t.in_partitions(8, &wanted).is_empty());
        assert_eq!(t.len(), 50 - listed.len());
    }
}
