//! Partition hand-off: the new holder pulls, the old one serves pages and forwards writes.
//!
//! ```text
//!   new holder (gaining p)                    current holder (owner of p)
//!   ──────────────────────                    ───────────────────────────
//!   (drop its local copy of p only if it was
//!    down longer than the tombstone grace)
//!   ScanPartitions{p, after: none} ────────▶  register "forward writes of p to new holder"
//!                                             list the keys of p (one listing per session)
//!              ◀──────────────────────────── page of (key, version);
//!                                             the first page carries p's tombstones
//!   apply tombstones; keep the keys it lacks
//!   or holds older (and has no newer
//!   tombstone for)
//!   FetchPartitionEntries{those keys} ─────▶
//!              ◀──────────────────────────── their entries (+ streamed bodies)
//!   apply each entry if newer than held and
//!   than any tombstone (skip keys deleted
//!   meanwhile), throttled
//!   ... more pages ...                        every write to p meanwhile is also sent to
//!                                             the new holder before it is acknowledged
//!   propose PartitionsSynced{p} ──▶ Raft ──▶  epoch e+1: table[p] = target[p]; requests
//!                                             for p now go to the new owner
//! ```
//!
//! Comparing versions first is what makes a rejoin cheap: a member restarted with its data
//! directory already holds almost everything, and only what changed while it was away
//! travels. A new member (or one that discarded its data) fetches every entry, at the cost
//! of one extra round trip per page of versions, overlapped with the fetches.
//!
//! Forwarding starts before the listing, so every write is either in the listing or
//! forwarded (or both: applying by version makes that harmless). A delete that reaches a new
//! holder while it is still receiving leaves a tombstone there (as every delete does), so an
//! older copy of the key arriving later in a page is not brought back.
//!
//! A transfer can outlive the plan it was started for: placement may take a partition away
//! from the receiver (which then drops its local copy) and give it back while the pages still
//! flow. The receiver counts its drops per partition ([`DropLedger`](super::DropLedger)); a
//! partition dropped during its transfer is not reported synced but copied again, and the
//! report is made and applied locally under the drop lock, so no drop decided on an older
//! state slips in between.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use strata_proto::ring::PartitionId;
use strata_proto::wire::{Request, Response};
use strata_proto::{EntryKey, NodeId};

use super::Cluster;
use crate::raft::{ClusterState, Command, CommandResponse};
use crate::service::Service;

/// Timeout of one page of a transfer.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Entries of one page applied at once.
const APPLY_CONCURRENCY: usize = 16;
/// A page of versions lists this many times `transfer_page_entries` keys: versions are
/// small, and a node that kept its data fetches few of the entries they list.
const VERSIONS_PER_ENTRY_PAGE: u32 = 4;
/// How long a transfer waits for its own report to be applied locally.
const REPORT_APPLY_WAIT: Duration = Duration::from_secs(30);

/// Source side: which members receive forwarded writes of which partitions, and the key
/// listings of transfer sessions.
#[derive(Default)]
pub struct Forwards {
    receivers: Mutex<HashMap<PartitionId, BTreeSet<NodeId>>>,
    sessions: Mutex<HashMap<(NodeId, u64), Arc<Session>>>,
}

/// One transfer session on the source: the sorted keys listed on its first page, and the
/// source's drop counts of its partitions then (a page served after one of them changed
/// could miss entries, so it is refused and the transfer starts over).
#[derive(Debug)]
pub struct Session {
    /// The keys to send, sorted.
    pub keys: Vec<EntryKey>,
    /// The drop count of each partition when the listing was made.
    pub drops: Vec<u64>,
}

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

    /// Starts (or restarts) the session of `receiver` for `partitions`.
    pub fn open_session(
        &self,
        receiver: NodeId,
        partitions: &[PartitionId],
        session: Session,
    ) -> Arc<Session> {
        let session = Arc::new(session);
        self.sessions
            .lock()
            .insert((receiver, session_id(partitions)), Arc::clone(&session));
        session
    }

    /// The running session of `receiver` for `partitions`, if any.
    pub fn session(&self, receiver: NodeId, partitions: &[PartitionId]) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .get(&(receiver, session_id(partitions)))
            .cloned()
    }

    /// Drops forwards to members that no longer hold or receive the partition, and the
    /// sessions of receivers whose hand-off is over.
    ///
    /// A receiver that now holds the partition in the table in effect keeps getting
    /// forwarded writes: a write this node accepted just before it learned of the switch
    /// (routed by the old ring) must still reach the new holder, and an extra copy to a
    /// replica is harmless.
    pub fn prune(&self, state: &ClusterState) {
        let mut map = self.receivers.lock();
        map.retain(|p, receivers| {
            receivers.retain(|r| {
                state.target.replicas(*p).contains(r) || state.table.replicas(*p).contains(r)
            });
            !receivers.is_empty()
        });
        let receiving: HashSet<NodeId> = map
            .iter()
            .flat_map(|(p, receivers)| {
                receivers
                    .iter()
                    .filter(|r| !state.table.replicas(*p).contains(r))
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        self.sessions
            .lock()
            .retain(|(r, _), _| receiving.contains(r));
    }
}

/// What one transfer moved.
#[derive(Clone, Debug, Default)]
pub struct Moved {
    /// Entries whose versions were compared with what this node holds.
    pub compared: u64,
    /// Entries applied.
    pub entries: u64,
    /// Payload bytes received (only entries this node lacked or held in an older version
    /// travel).
    pub bytes: u64,
    /// Partitions reported synced (the others were dropped here while they were copied, and
    /// are copied again).
    pub synced: Vec<PartitionId>,
}

/// Whether this node was marked down longer ago than tombstones are kept.
fn must_discard(cluster: &Cluster, grace: Duration) -> bool {
    let now = strata_proto::Timestamp::now().as_millis();
    cluster
        .state()
        .down_since
        .get(&cluster.id())
        .is_some_and(|&at| Duration::from_millis(now.saturating_sub(at)) > grace)
}

/// Pulls `partitions` from the member `source` into this node — a merge by version with
/// what it already holds, in which the source's tombstones win over older copies — then
/// reports them synced through Raft. `since` is the epoch of the state that named `source`
/// a holder: the report is void for partitions whose replica set changed after it.
pub async fn pull(
    cluster: Arc<Cluster>,
    service: Arc<Service>,
    source: (NodeId, String),
    partitions: Vec<PartitionId>,
    since: u64,
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
    // After any drop of local copies decided earlier (it re-checks what is still held);
    // drops from here on are seen in the ledger before reporting.
    let drops_before = {
        let _dropping = cluster.drops.lock().await;
        if must_discard(&cluster, service.tombstones().grace()) {
            // Down longer than tombstones are kept: deletes it missed may be forgotten by
            // now, so its old copies cannot be merged safely.
            let wanted: HashSet<PartitionId> = partitions.iter().copied().collect();
            let dropped = service.drop_partitions(params.partitions, &wanted).await?;
            cluster.dropped.record(&wanted);
            if dropped > 0 {
                tracing::info!(
                    dropped,
                    "dropped local copies older than the tombstone grace period"
                );
            }
        }
        cluster.dropped.counts(&partitions)
    };
    let started = Instant::now();
    let mut moved = Moved::default();
    let peers = |request: Request| {
        let (cluster, addr) = (Arc::clone(&cluster), source.1.clone());
        tokio::spawn(async move {
            cluster
                .peers()
                // The epoch of this node's state: the source must have applied it too.
                .call(&addr, cluster.state().epoch, request, &[], PAGE_TIMEOUT)
                .await
        })
    };
    let entries_per_fetch = config.transfer_page_entries;
    let list = |after: Option<(String, String)>| {
        peers(Request::ScanPartitions {
            receiver: me,
            partitions: partitions.clone(),
            after,
            limit: entries_per_fetch.saturating_mul(VERSIONS_PER_ENTRY_PAGE),
        })
    };
    let fetch = |keys: Vec<(String, String)>| {
        peers(Request::FetchPartitionEntries {
            receiver: me,
            partitions: partitions.clone(),
            keys,
        })
    };
    // The next page of versions is listed while this one is compared and fetched, and the
    // next batch of entries is fetched while this one is applied.
    let mut page = Some(list(None));
    while let Some(listing) = page.take() {
        let (response, _) = listing.await??;
        let Response::PartitionVersions {
            versions,
            next,
            tombstones,
        } = response
        else {
            anyhow::bail!(
                "member {} answered a partition scan with {}",
                source.0,
                response.kind()
            );
        };
        page = next.map(|next| list(Some(next)));
        // Deletes first: older copies held here, or arriving later, lose to them.
        service.apply_tombstones(tombstones).await?;
        moved.compared += versions.len() as u64;
        let wanted = service.missing(versions).await?;
        let mut batches = wanted
            .chunks(entries_per_fetch.max(1) as usize)
            .map(<[_]>::to_vec);
        let mut fetching = batches.next().map(fetch);
        while let Some(current) = fetching.take() {
            let (response, bodies) = current.await??;
            fetching = batches.next().map(fetch);
            let Response::PartitionEntries { entries } = response else {
                anyhow::bail!(
                    "member {} answered a partition fetch with {}",
                    source.0,
                    response.kind()
                );
            };
            let mut bodies = bodies.into_iter();
            let mut items = Vec::with_capacity(entries.len());
            for (namespace, key, entry) in entries {
                moved.bytes += entry.body.len();
                items.extend(service.take_transferred(&namespace, &key, entry, &mut bodies)?);
            }
            // Keys are independent (each is checked and stored under its own lock): applied
            // several at a time, so that the disk lookups of one overlap the others.
            let applied: Vec<bool> = futures::stream::iter(items)
                .map(|(key, entry)| service.apply_replica(key, entry))
                .buffer_unordered(APPLY_CONCURRENCY)
                .try_collect()
                .await?;
            moved.entries += applied.iter().filter(|&&a| a).count() as u64;
            // Throttle: never faster than the configured bandwidth on average.
            let due =
                Duration::from_secs_f64(moved.bytes as f64 / config.transfer_bytes_per_sec as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    // Held until the report is applied: no drop slips in between the check and the report.
    let dropping = cluster.drops.lock().await;
    let drops_after = cluster.dropped.counts(&partitions);
    moved.synced = partitions
        .iter()
        .zip(drops_before.iter().zip(&drops_after))
        .filter(|(_, (before, after))| before == after)
        .map(|(p, _)| *p)
        .collect();
    let interrupted = partitions.len() - moved.synced.len();
    if interrupted > 0 {
        tracing::info!(
            partitions = interrupted,
            "local copies dropped during the transfer: copying them again"
        );
    }
    if !moved.synced.is_empty() {
        let answer = cluster
            .propose(Command::PartitionsSynced {
                node: me,
                partitions: moved.synced.clone(),
                since,
            })
            .await?;
        // The leader applied the report; until this node has too, a drop decided on its
        // older state could still delete what the report vouches for.
        if let CommandResponse::Applied { epoch, .. } = answer {
            cluster.applied(epoch, REPORT_APPLY_WAIT).await;
        }
    }
    drop(dropping);
    Ok(moved)
}
