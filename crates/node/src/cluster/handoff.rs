//! Partition hand-off: the new holder pulls, the old one serves pages and forwards writes.
//!
//! ```text
//!   new holder (gaining p)                    current holder (owner of p)
//!   ──────────────────────                    ───────────────────────────
//!   drop any stale local copy of p
//!   ScanPartitions{p, after: none} ────────▶  register "forward writes of p to new holder"
//!                                             list the keys of p (one listing per session)
//!              ◀──────────────────────────── page of entries (+ streamed bodies)
//!   apply each entry if newer (skip keys
//!   deleted meanwhile), throttled
//!   ... more pages ...                        every write to p meanwhile is also sent to
//!                                             the new holder before it is acknowledged
//!   propose PartitionsSynced{p} ──▶ Raft ──▶  epoch e+1: table[p] = target[p]; requests
//!                                             for p now go to the new owner
//! ```
//!
//! Forwarding starts before the listing, so every write is either in the listing or
//! forwarded (or both: applying by version makes that harmless). Deletes that reach a new
//! holder while it is still receiving leave a transfer tombstone, so an older copy of the
//! key arriving later in a page is not brought back.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_proto::ring::PartitionId;
use strata_proto::wire::{Request, Response};
use strata_proto::{EntryKey, NodeId, Version};

use super::Cluster;
use crate::raft::{ClusterState, Command};
use crate::service::Service;

/// Timeout of one page of a transfer.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Source side: which members receive forwarded writes of which partitions, and the key
/// listings of transfer sessions.
#[derive(Default)]
pub struct Forwards {
    receivers: Mutex<HashMap<PartitionId, BTreeSet<NodeId>>>,
    sessions: Mutex<HashMap<(NodeId, u64), Listing>>,
}

/// The sorted keys of one transfer session.
type Listing = Arc<Vec<EntryKey>>;

fn session_id(partitions: &[PartitionId]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    partitions.hash(&mut h);
    h.finish()
}

impl Forwards {
    /// From now on, writes to `partitions` are also sent to `receiver`.
    pub fn register(&self, receiver: NodeId, partitions: &[PartitionId]) {
        let mut map = self.receivers.lock();
        for p in partitions {
            map.entry(*p).or_default().insert(receiver);
        }
    }

    /// Members receiving forwarded writes of `partition`.
    pub fn receivers(&self, partition: PartitionId) -> Vec<NodeId> {
        self.receivers
            .lock()
            .get(&partition)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The key listing of a session, built on its first page.
    pub fn session(
        &self,
        receiver: NodeId,
        partitions: &[PartitionId],
        first_page: bool,
        build: impl FnOnce() -> Vec<EntryKey>,
    ) -> Arc<Vec<EntryKey>> {
        let id = (receiver, session_id(partitions));
        if !first_page && let Some(keys) = self.sessions.lock().get(&id) {
            return Arc::clone(keys);
        }
        let keys = Arc::new(build());
        self.sessions.lock().insert(id, Arc::clone(&keys));
        keys
    }

    /// Drops forwards whose hand-off is over (the receiver holds the partition in the table
    /// in effect, or is no longer meant to), and the sessions of receivers with nothing left
    /// to receive.
    pub fn prune(&self, state: &ClusterState) {
        let mut map = self.receivers.lock();
        map.retain(|p, receivers| {
            receivers.retain(|r| {
                state.target.replicas(*p).contains(r) && !state.table.replicas(*p).contains(r)
            });
            !receivers.is_empty()
        });
        let active: HashSet<NodeId> = map.values().flatten().copied().collect();
        self.sessions.lock().retain(|(r, _), _| active.contains(r));
    }
}

/// Receiver side: partitions being received and the deletes seen meanwhile.
#[derive(Default)]
pub struct Incoming {
    receiving: Mutex<HashSet<PartitionId>>,
    tombstones: Mutex<HashMap<EntryKey, (PartitionId, Version)>>,
}

impl Incoming {
    fn begin(&self, partitions: &[PartitionId]) {
        self.receiving.lock().extend(partitions.iter().copied());
    }

    /// Forgets partitions that are no longer being received, with their tombstones.
    pub fn settle(&self, still_receiving: &HashSet<PartitionId>) {
        self.receiving
            .lock()
            .retain(|p| still_receiving.contains(p));
        self.tombstones
            .lock()
            .retain(|_, (p, _)| still_receiving.contains(p));
    }

    /// Records a delete of `key` at `version` if its partition is being received.
    pub fn note_delete(&self, partition: PartitionId, key: &EntryKey, version: Version) {
        if self.receiving.lock().contains(&partition) {
            let mut tombstones = self.tombstones.lock();
            let slot = tombstones
                .entry(key.clone())
                .or_insert((partition, version));
            slot.1 = slot.1.max(version);
        }
    }

    /// Whether `key` was deleted at a version at least `version` during the transfer.
    pub fn deleted_since(&self, key: &EntryKey, version: Version) -> bool {
        self.tombstones
            .lock()
            .get(key)
            .is_some_and(|(_, deleted)| *deleted >= version)
    }
}

/// What one transfer moved.
#[derive(Clone, Copy, Debug, Default)]
pub struct Moved {
    /// Entries applied.
    pub entries: u64,
    /// Payload bytes received.
    pub bytes: u64,
}

/// Pulls `partitions` from the member `source` into this node, then reports them synced
/// through Raft.
pub async fn pull(
    cluster: Arc<Cluster>,
    service: Arc<Service>,
    source: (NodeId, String),
    partitions: Vec<PartitionId>,
) -> anyhow::Result<Moved> {
    let me = cluster.id();
    let config = cluster.config().clone();
    let params = cluster.ring().params;
    // Only partitions this node does not hold in the table in effect: their local data is
    // dropped and copied again, which must never happen to data this node serves.
    let current = cluster.state();
    let partitions: Vec<PartitionId> = partitions
        .into_iter()
        .filter(|p| !current.table.replicas(*p).contains(&me))
        .collect();
    if partitions.is_empty() {
        return Ok(Moved::default());
    }
    cluster.incoming.begin(&partitions);
    let wanted: HashSet<PartitionId> = partitions.iter().copied().collect();
    // Copies this node kept from an earlier time it held these partitions may miss deletes.
    let dropped = service.drop_partitions(params.partitions, &wanted).await?;
    if dropped > 0 {
        tracing::info!(dropped, "dropped stale local copies before a transfer");
    }
    let started = Instant::now();
    let mut moved = Moved::default();
    let mut after = None;
    loop {
        let request = Request::ScanPartitions {
            receiver: me,
            partitions: partitions.clone(),
            after: after.take(),
            limit: config.transfer_page_entries,
        };
        let (response, bodies) = cluster
            .peers()
            .call(&source.1, cluster.epoch(), request, &[], PAGE_TIMEOUT)
            .await?;
        let Response::Scanned { entries, next } = response else {
            anyhow::bail!(
                "member {} answered a partition scan with {}",
                source.0,
                response.kind()
            );
        };
        let mut bodies = bodies.into_iter();
        for (namespace, key, entry) in entries {
            moved.bytes += entry.body.len();
            if service
                .apply_transferred(&cluster.incoming, &namespace, &key, entry, &mut bodies)
                .await?
            {
                moved.entries += 1;
            }
        }
        // Throttle: never faster than the configured bandwidth on average.
        let due =
            Duration::from_secs_f64(moved.bytes as f64 / config.transfer_bytes_per_sec as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    cluster
        .propose(Command::PartitionsSynced {
            node: me,
            partitions,
        })
        .await?;
    Ok(moved)
}
