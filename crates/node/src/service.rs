//! Executes requests against the node's tiers.
//!
//! The service is where a decoded request meets the store. Keys and namespaces arrive as
//! plain strings and are validated here, so a bad one is answered with an error that says
//! what is wrong. Reads take the fast path first — the memory tier, answered on the
//! connection's own task — and only a miss goes to a blocking thread to read the filesystem
//! tier. Writes are stamped with the node's hybrid logical clock and go through the writer
//! shard of their key (see [`actors`](crate::actors)), which keeps writes to one key in order.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use parking_lot::Mutex;
use strata_proto::ring::{PartitionId, partition_of};
use strata_proto::wire::{
    self, Body, ErrorCode, Request, Response, WireEntry, WireError, WireValue,
};
use strata_proto::{Entry, EntryKey, EntryMeta, Hlc, Key, Namespace, NodeId, Value, Version};
use strata_store::{Clock, Pattern, Tier, Tiered};

use crate::actors::{Writers, store_error};
use crate::cluster::Cluster;
use crate::cluster::handoff::Session;
use crate::flight::{Claim, Flights};
use crate::tombstones::Tombstones;
use crate::writeback::Pending;

/// How long a write waits for each replica's acknowledgement.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(10);
/// Locks that order the writes, deletes and replica applies of one key (by key hash).
const KEY_LOCKS: u32 = 1024;
/// Most entries in one page of a partition transfer (versions listed, or entries fetched).
const MAX_TRANSFER_PAGE: u32 = 10_000;

/// Largest payload an answer carries inside its frame (the default of
/// [`ServiceLimits::inline_limit`]). Larger ones follow the frame as streamed bodies, written
/// from the store's own buffers: a batch of 4 KiB embeddings is then not copied into a
/// megabyte-sized frame (and out of it again on the client).
pub const ANSWER_INLINE_MAX: usize = 1024;

/// Versioned deletes a clear runs at once (each waits for its replicas).
const CLEAR_CONCURRENCY: usize = 32;

/// Limits the service enforces on requests.
#[derive(Clone, Debug)]
pub struct ServiceLimits {
    /// Largest value payload.
    pub max_value_bytes: u64,
    /// Payloads above this are streamed in responses.
    pub inline_limit: usize,
    /// Most keys in one batch request.
    pub max_batch_keys: usize,
    /// Inline payload bytes one answer frame may carry; further entries are streamed, so a
    /// batch answer never outgrows the frame limit.
    pub answer_inline_budget: usize,
}

/// The request service of one node.
pub struct Service {
    node: NodeId,
    cluster: Arc<Cluster>,
    store: Arc<Tiered>,
    writers: Writers,
    /// Writes acknowledged from memory and not yet on disk (`write_mode = "back"`).
    pending: Option<Arc<Pending>>,
    clock: Arc<dyn Clock>,
    hlc: Mutex<Hlc>,
    limits: ServiceLimits,
    started: Instant,
    tombstones: Arc<Tombstones>,
    /// Held while a key's version is checked and its new value or tombstone is stored, so
    /// that "apply only if newer" is atomic.
    key_locks: Vec<tokio::sync::Mutex<()>>,
    /// Compute leases of `get_or_compute` (single flight) on the keys this node owns.
    flights: Flights,
}

/// A response and the bodies that follow its frame.
pub type Answer = (Response, Vec<Bytes>);

type Outcome<T> = Result<T, WireError>;

impl Service {
    /// A service over `store`, writing through `writers`.
    pub fn new(
        cluster: Arc<Cluster>,
        store: Arc<Tiered>,
        tombstones: Arc<Tombstones>,
        writers: Writers,
        pending: Option<Arc<Pending>>,
        clock: Arc<dyn Clock>,
        limits: ServiceLimits,
    ) -> Self {
        let node = cluster.id();
        Self {
            node,
            cluster,
            store,
            writers,
            pending,
            clock,
            hlc: Mutex::new(Hlc::new(node)),
            limits,
            started: Instant::now(),
            tombstones,
            key_locks: (0..KEY_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            flights: Flights::new(),
        }
    }

    /// The lock of `key`'s stripe.
    async fn lock_key(&self, key: &EntryKey) -> tokio::sync::MutexGuard<'_, ()> {
        let i = partition_of(KEY_LOCKS, key.namespace.as_str(), key.key.as_str()) as usize;
        self.key_locks[i % self.key_locks.len()].lock().await
    }

    /// Drops tombstones past their grace period; how many.
    pub fn purge_tombstones(&self) -> std::io::Result<usize> {
        self.tombstones.purge(self.clock.now())
    }

    /// The node's tombstones.
    pub fn tombstones(&self) -> &Tombstones {
        &self.tombstones
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node.0
    }

    /// Answers one request, routed by the client at ring `epoch`. `bodies` are the streamed
    /// payloads that followed its frame.
    pub async fn handle(&self, epoch: u64, request: Request, bodies: Vec<Bytes>) -> Answer {
        let request = match request {
            Request::ReplicaRead(inner) => match self.check_replica_read(epoch, &inner).await {
                Ok(()) => *inner,
                Err(answer) => return (answer, Vec::new()),
            },
            scan @ (Request::ScanPartitions { .. } | Request::FetchPartitionEntries { .. }) => {
                if let Err(e) = self.check_source_epoch(epoch).await {
                    return (Response::Error(e), Vec::new());
                }
                scan
            }
            other => {
                if let Some(redirect) = self.check_route(epoch, &other).await {
                    return (redirect, Vec::new());
                }
                other
            }
        };
        match self.dispatch(request, bodies).await {
            Ok(answer) => answer,
            Err(e) => (Response::Error(e), Vec::new()),
        }
    }

    /// For a request about keys: `Some(redirect)` unless this node owns every key at its
    /// epoch (after catching up with the client's epoch if the client is ahead).
    async fn check_route(&self, epoch: u64, request: &Request) -> Option<Response> {
        let keys: Vec<(&str, &str)> = match request {
            Request::GetMany { namespace, keys } => keys
                .iter()
                .map(|k| (namespace.as_str(), k.as_str()))
                .collect(),
            Request::SetMany {
                namespace, items, ..
            } => items
                .iter()
                .map(|(k, _)| (namespace.as_str(), k.as_str()))
                .collect(),
            other => other.single_key().into_iter().collect(),
        };
        if keys.is_empty() || !self.cluster.is_clustered() {
            return None;
        }
        self.cluster.catch_up(epoch).await;
        for (namespace, key) in keys {
            if let Err(ring) = self.cluster.route(namespace, key) {
                let mut ring = ring.as_ref().clone();
                ring.leader = self.cluster.ring_with_leader().leader;
                return Some(Response::Redirect(Box::new(ring)));
            }
        }
        // The owner answers only under a valid lease (see `cluster::lease`).
        self.cluster.serving().err().map(Response::Error)
    }

    /// A transfer source must have applied the receiver's epoch before it serves a page: it
    /// registers the receiver for forwarded writes, and prunes that registration, by its own
    /// state, which must already name the receiver a new holder (an older one would drop the
    /// registration, and writes acknowledged meanwhile would miss the receiver).
    async fn check_source_epoch(&self, epoch: u64) -> Outcome<()> {
        if !self.cluster.is_clustered() {
            return Ok(());
        }
        self.cluster.catch_up(epoch).await;
        let applied = self.cluster.state().epoch;
        if applied < epoch {
            return Err(WireError::new(
                ErrorCode::NotReady,
                format!("this source has applied epoch {applied}, behind the receiver's {epoch}"),
            ));
        }
        Ok(())
    }

    /// A read sent to a replica because the owner could not be reached: allowed only when
    /// the replica cannot be stale.
    async fn check_replica_read(&self, epoch: u64, inner: &Request) -> Result<(), Response> {
        let keys: Vec<(&str, &str)> = match inner {
            Request::Get { namespace, key }
            | Request::Exists { namespace, key }
            | Request::Metadata { namespace, key } => vec![(namespace.as_str(), key.as_str())],
            Request::GetMany { namespace, keys } => keys
                .iter()
                .map(|k| (namespace.as_str(), k.as_str()))
                .collect(),
            _ => {
                return Err(Response::Error(WireError::new(
                    ErrorCode::Malformed,
                    "only reads may be sent to a replica",
                )));
            }
        };
        if !self.cluster.is_clustered() {
            return Ok(());
        }
        self.cluster.catch_up(epoch).await;
        if !self.cluster.state().replicas_are_current() {
            return Err(Response::Error(WireError::new(
                ErrorCode::NotReady,
                "replicas may miss acknowledged writes (write_quorum < replication): wait for the owner or the next epoch",
            )));
        }
        let ring = self.cluster.ring();
        for (namespace, key) in keys {
            let partition = ring.partition_of(namespace, key);
            if !ring.table.replicas(partition).contains(&self.node) {
                let mut ring = ring.as_ref().clone();
                ring.leader = self.cluster.ring_with_leader().leader;
                return Err(Response::Redirect(Box::new(ring)));
            }
        }
        self.cluster.serving().map_err(Response::Error)
    }

    async fn dispatch(&self, request: Request, bodies: Vec<Bytes>) -> Outcome<Answer> {
        let mut bodies = bodies.into_iter();
        Ok(match request {
            Request::Ping => (
                Response::Pong {
                    node: self.node,
                    protocol: wire::PROTOCOL_VERSION,
                },
                Vec::new(),
            ),
            Request::Get { namespace, key } => {
                let key = entry_key(&namespace, &key)?;
                let mut out = Vec::new();
                let mut budget = self.limits.answer_inline_budget;
                let entry = self
                    .get(key)
                    .await?
                    .map(|e| self.wire_entry(e, &mut out, &mut budget));
                (Response::Entry(entry), out)
            }
            Request::Set {
                namespace,
                key,
                ttl_ms,
                value,
            } => {
                let key = entry_key(&namespace, &key)?;
                let value = self.take_value(value, &mut bodies)?;
                let entry = self.write(key.clone(), value, ttl_ms).await?;
                self.replicate(&key, &entry).await?;
                // A computed value arrived (or any value): its waiters read it now.
                self.flights.finish(&key);
                (Response::Stored, Vec::new())
            }
            Request::Delete { namespace, key } => {
                let key = entry_key(&namespace, &key)?;
                (
                    Response::Deleted(self.delete_versioned(key).await?),
                    Vec::new(),
                )
            }
            Request::Exists { namespace, key } => {
                let key = entry_key(&namespace, &key)?;
                (
                    Response::Exists(self.metadata(key).await?.is_some()),
                    Vec::new(),
                )
            }
            Request::Metadata { namespace, key } => {
                let key = entry_key(&namespace, &key)?;
                (Response::Metadata(self.metadata(key).await?), Vec::new())
            }
            Request::Clear { namespace, pattern } => {
                let namespace = parse_namespace(&namespace)?;
                let pattern = parse_pattern(pattern.as_deref())?;
                // In a cluster every member is asked. Each key this node owns is deleted as a
                // versioned delete: a tombstone here and on its replicas, so that a member
                // that was down during the clear and comes back with old copies drops them
                // when it merges (a clear without tombstones would bring them back). Only
                // those are counted, so the sum over members counts each key once; copies
                // held as a replica go too, and their owner's delete brings the tombstone.
                let owned = if self.cluster.is_clustered() {
                    let listed = self
                        .list_keys(namespace.clone(), pattern.clone(), false)
                        .await?;
                    let owned: Vec<EntryKey> = listed
                        .into_iter()
                        .filter(|(k, _)| self.owns(&namespace, k))
                        .map(|(k, _)| EntryKey::new(namespace.clone(), k))
                        .collect();
                    let count = owned.len() as u64;
                    futures::stream::iter(owned)
                        .map(|key| self.delete_versioned(key))
                        .buffer_unordered(CLEAR_CONCURRENCY)
                        .try_collect::<Vec<bool>>()
                        .await?;
                    Some(count)
                } else {
                    None
                };
                let removed = self.clear(namespace, pattern).await?;
                (Response::Cleared(owned.unwrap_or(removed)), Vec::new())
            }
            Request::ListKeys {
                namespace,
                pattern,
                with_meta,
                after,
                limit,
            } => {
                let namespace = parse_namespace(&namespace)?;
                let pattern = parse_pattern(pattern.as_deref())?;
                let mut all = self
                    .list_keys(namespace.clone(), pattern, with_meta)
                    .await?;
                if self.cluster.is_clustered() {
                    all.retain(|(k, _)| self.owns(&namespace, k));
                }
                let (keys, next) = page(all, after.as_deref(), limit);
                (Response::Keys { keys, next }, Vec::new())
            }
            Request::Stats => (Response::Stats(self.stats_json()), Vec::new()),
            Request::GetMany { namespace, keys } => {
                self.check_batch(keys.len())?;
                let namespace = parse_namespace(&namespace)?;
                let keys = keys
                    .iter()
                    .map(|k| parse_key(k).map(|k| EntryKey::new(namespace.clone(), k)))
                    .collect::<Outcome<Vec<_>>>()?;
                let found = self.get_many(keys).await?;
                let mut out = Vec::new();
                let mut budget = self.limits.answer_inline_budget;
                let entries = found
                    .into_iter()
                    .map(|e| e.map(|e| self.wire_entry(e, &mut out, &mut budget)))
                    .collect();
                (Response::Entries(entries), out)
            }
            Request::SetMany {
                namespace,
                ttl_ms,
                items,
            } => {
                self.check_batch(items.len())?;
                let namespace = parse_namespace(&namespace)?;
                // Decode everything first: a malformed item fails the request before anything is written.
                let mut writes = Vec::with_capacity(items.len());
                let mut outcomes: Vec<Option<WireError>> = Vec::with_capacity(items.len());
                for (key, value) in items {
                    let value = self.take_value(value, &mut bodies)?;
                    match parse_key(&key) {
                        Ok(key) => {
                            writes.push(Some((EntryKey::new(namespace.clone(), key), value)));
                            outcomes.push(None);
                        }
                        Err(e) => {
                            writes.push(None);
                            outcomes.push(Some(e));
                        }
                    }
                }
                let results = futures::future::join_all(writes.into_iter().map(|w| async move {
                    match w {
                        Some((key, value)) => match self.write(key.clone(), value, ttl_ms).await {
                            Ok(entry) => {
                                let failed = self.replicate(&key, &entry).await.err();
                                if failed.is_none() {
                                    self.flights.finish(&key);
                                }
                                failed
                            }
                            Err(e) => Some(e),
                        },
                        None => None,
                    }
                }))
                .await;
                for (slot, result) in outcomes.iter_mut().zip(results) {
                    if slot.is_none() {
                        *slot = result;
                    }
                }
                (Response::StoredMany(outcomes), Vec::new())
            }
            Request::Ring => (
                Response::Ring(Box::new(self.cluster.ring_with_leader())),
                Vec::new(),
            ),
            Request::Join { member } => (
                Response::Ring(Box::new(self.cluster.join(member).await?)),
                Vec::new(),
            ),
            Request::Leave { node } => (
                Response::Ring(Box::new(self.cluster.leave(node).await?)),
                Vec::new(),
            ),
            Request::Raft { rpc, payload } => {
                (self.cluster.handle_raft(rpc, payload).await?, Vec::new())
            }
            Request::Propose(payload) => (self.cluster.propose_here(payload).await?, Vec::new()),
            Request::Replicate {
                namespace,
                key,
                meta,
                body,
            } => {
                let key = entry_key(&namespace, &key)?;
                let entry = self.take_entry(meta, body, &mut bodies)?;
                let applied = self.apply_replica(key.clone(), entry.clone()).await?;
                self.forward_replica(&key, &entry).await?;
                (Response::Applied(applied), Vec::new())
            }
            Request::ReplicateDelete {
                namespace,
                key,
                version,
            } => {
                let key = entry_key(&namespace, &key)?;
                let applied = self.apply_delete(key.clone(), version).await?;
                self.forward_delete(&key, version).await?;
                (Response::Applied(applied), Vec::new())
            }
            Request::ScanPartitions {
                receiver,
                partitions,
                after,
                limit,
            } => {
                // A holder that restarted or lost its lease may miss writes: not a source.
                self.cluster.serving()?;
                self.scan_partitions(receiver, partitions, after, limit)
                    .await?
            }
            Request::FetchPartitionEntries {
                receiver,
                partitions,
                keys,
            } => {
                self.cluster.serving()?;
                self.fetch_partition_entries(receiver, partitions, keys)
                    .await?
            }
            Request::Lease { node } => (self.cluster.grant_lease(node).await?, Vec::new()),
            Request::Compute {
                namespace,
                key,
                lease_ms,
                wait_ms,
            } => {
                let key = entry_key(&namespace, &key)?;
                self.compute(key, lease_ms, wait_ms).await?
            }
            Request::ComputeRenew {
                namespace,
                key,
                token,
                lease_ms,
            } => {
                let key = entry_key(&namespace, &key)?;
                let lease = Flights::lease_length(lease_ms);
                let renewed = self
                    .flights
                    .renew(&key, token, lease, tokio::time::Instant::now());
                (Response::ComputeRenewed(renewed), Vec::new())
            }
            Request::ComputeRelease {
                namespace,
                key,
                token,
            } => {
                let key = entry_key(&namespace, &key)?;
                let released = self.flights.release(&key, token);
                (Response::ComputeReleased(released), Vec::new())
            }
            Request::ReplicaRead(_) => {
                return Err(WireError::new(
                    ErrorCode::Malformed,
                    "a replica read cannot be nested",
                ));
            }
            // The server takes the trace context off before the service sees a request.
            Request::Traced { .. } => {
                return Err(WireError::new(
                    ErrorCode::Malformed,
                    "a traced request cannot be nested",
                ));
            }
        })
    }

    /// Answers a `Compute` (see [`crate::flight`]): the live value, a lease for this caller,
    /// or — after waiting up to `wait_ms` for the holder of the lease — "still computing".
    async fn compute(&self, key: EntryKey, lease_ms: u64, wait_ms: u64) -> Outcome<Answer> {
        use tokio::time::Instant;
        let lease = Flights::lease_length(lease_ms);
        let deadline = Instant::now() + Duration::from_millis(wait_ms).min(crate::flight::MAX_WAIT);
        // Each round ends with a value, a grant, or a wait that ends at the lease's end or the
        // deadline; a round after the deadline answers at once.
        let mut waited = false;
        loop {
            if let Some(answer) = self.compute_value(&key, waited).await? {
                return Ok(answer);
            }
            // Ownership may have moved while this request waited: the new owner decides.
            if self.cluster.is_clustered()
                && let Err(ring) = self.cluster.route(key.namespace.as_str(), key.key.as_str())
            {
                let mut ring = ring.as_ref().clone();
                ring.leader = self.cluster.ring_with_leader().leader;
                return Ok((Response::Redirect(Box::new(ring)), Vec::new()));
            }
            let now = Instant::now();
            match self.flights.claim(&key, lease, now) {
                Claim::Granted(token) => {
                    // A value stored between the read above and the claim ended the lease
                    // before this one was granted: serve it instead of computing it again.
                    if let Some(answer) = self.compute_value(&key, waited).await? {
                        self.flights.release(&key, token);
                        return Ok(answer);
                    }
                    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
                    return Ok((Response::ComputeLease { token, lease_ms }, Vec::new()));
                }
                Claim::Held { expires, mut ended } => {
                    if now >= deadline {
                        let left = expires.saturating_duration_since(now).as_millis();
                        let lease_left_ms = u64::try_from(left).unwrap_or(u64::MAX);
                        return Ok((Response::ComputePending { lease_left_ms }, Vec::new()));
                    }
                    // Woken when the lease ends; at its expiry a round takes it over.
                    let _ = tokio::time::timeout_at(expires.min(deadline), ended.changed()).await;
                    waited = true;
                }
            }
        }
    }

    /// The `Compute` answer for a live value of `key`, if it has one (`waited`: it arrived
    /// while the request waited for a lease holder).
    async fn compute_value(&self, key: &EntryKey, waited: bool) -> Outcome<Option<Answer>> {
        let now = self.clock.now();
        let Some(entry) = self.get(key.clone()).await? else {
            return Ok(None);
        };
        if entry.is_expired(now) {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut budget = self.limits.answer_inline_budget;
        let entry = self.wire_entry(entry, &mut out, &mut budget);
        let response = if waited {
            Response::ComputeWaited(entry)
        } else {
            Response::Entry(Some(entry))
        };
        Ok(Some((response, out)))
    }

    fn check_batch(&self, n: usize) -> Outcome<()> {
        if n > self.limits.max_batch_keys {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!(
                    "{n} keys in one batch exceed the limit of {}",
                    self.limits.max_batch_keys
                ),
            ));
        }
        Ok(())
    }

    /// Rebuilds a value from its wire form, taking its payload from the frame or the stream.
    fn take_value(
        &self,
        value: WireValue,
        bodies: &mut impl Iterator<Item = Bytes>,
    ) -> Outcome<Value> {
        let payload = match value.body {
            Body::Inline(bytes) => bytes,
            Body::Streamed(_) => bodies.next().ok_or_else(|| {
                WireError::new(ErrorCode::Malformed, "a streamed value's body is missing")
            })?,
        };
        if payload.len() as u64 > self.limits.max_value_bytes {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!(
                    "value of {} bytes exceeds the {}-byte limit",
                    payload.len(),
                    self.limits.max_value_bytes
                ),
            ));
        }
        wire::join_value(&value.format, payload)
    }

    /// A fresh version from this node's clock (for deletes).
    fn tick(&self) -> Version {
        let now = self.clock.now();
        self.hlc.lock().tick(now.as_millis())
    }

    /// Whether this node owns `key` at its epoch.
    fn owns(&self, namespace: &Namespace, key: &Key) -> bool {
        self.cluster.route(namespace.as_str(), key.as_str()).is_ok()
    }

    fn partition(&self, key: &EntryKey) -> PartitionId {
        partition_of(
            self.cluster.ring().params.partitions,
            key.namespace.as_str(),
            key.key.as_str(),
        )
    }

    /// Rebuilds an entry sent by a peer, checking its payload against its checksum.
    fn take_entry(
        &self,
        meta: EntryMeta,
        body: Body,
        bodies: &mut impl Iterator<Item = Bytes>,
    ) -> Outcome<Entry> {
        let value = self.take_value(
            WireValue {
                format: meta.format.clone(),
                body,
            },
            bodies,
        )?;
        let entry = Entry { meta, value };
        let payload = strata_proto::encode_payload(&entry.value).to_bytes();
        if strata_proto::checksum(&payload) != entry.meta.checksum {
            return Err(WireError::new(
                ErrorCode::InvalidValue,
                "a replicated entry fails its checksum",
            ));
        }
        Ok(entry)
    }

    /// Sends a write to the key's other replicas and to any member receiving its partition,
    /// in parallel; see [`Service::await_copies`] for when it counts as done.
    async fn replicate(&self, key: &EntryKey, entry: &Entry) -> Outcome<()> {
        let (request, out) = self.replicate_request(key, entry);
        self.await_copies(self.partition(key), request, out).await
    }

    /// The `Replicate` request for a write, and the bodies that follow it.
    fn replicate_request(&self, key: &EntryKey, entry: &Entry) -> (Request, Vec<Bytes>) {
        let mut out = Vec::new();
        let mut budget = self.limits.answer_inline_budget;
        let wire = self.wire_entry(entry.clone(), &mut out, &mut budget);
        let request = Request::Replicate {
            namespace: key.namespace.to_string(),
            key: key.key.to_string(),
            meta: wire.meta,
            body: wire.body,
        };
        (request, out)
    }

    /// Sends a delete to the key's other replicas and incoming holders.
    async fn replicate_delete(&self, key: &EntryKey, version: Version) -> Outcome<()> {
        let request = Request::ReplicateDelete {
            namespace: key.namespace.to_string(),
            key: key.key.to_string(),
            version,
        };
        self.await_copies(self.partition(key), request, Vec::new())
            .await
    }

    /// Sends `request` to every write target of `partition` at once and waits until the
    /// write may be acknowledged: W − 1 of the other replicas (the owner holds the first
    /// copy) and every member receiving the partition in a hand-off (its copy must be
    /// complete when it takes over) have applied it. A target that leaves the partition's
    /// replica set meanwhile (marked down: a new epoch) is no longer waited for. The other
    /// sends finish in the background.
    async fn await_copies(
        &self,
        partition: PartitionId,
        request: Request,
        bodies: Vec<Bytes>,
    ) -> Outcome<()> {
        let targets = self.cluster.write_targets(partition);
        if targets.is_empty() {
            return Ok(());
        }
        let mut epochs = self.cluster.epoch_changes();
        let mut pending = futures::stream::FuturesUnordered::new();
        let sent: HashSet<NodeId> = targets.iter().map(|(id, _)| *id).collect();
        for (id, addr) in targets {
            let cluster = Arc::clone(&self.cluster);
            let request = request.clone();
            let bodies = bodies.clone();
            let call = tokio::spawn(tracing::Instrument::in_current_span(async move {
                cluster
                    .peers()
                    .call(&addr, cluster.epoch(), request, &bodies, REPLICA_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|e| replica_error(id, &e))
            }));
            pending.push(async move {
                let outcome = call.await.unwrap_or_else(|e| {
                    Err(WireError::new(
                        ErrorCode::Internal,
                        format!("replication task failed: {e}"),
                    ))
                });
                (id, outcome)
            });
        }
        let mut acked: HashSet<NodeId> = HashSet::new();
        let mut failed: BTreeMap<NodeId, WireError> = BTreeMap::new();
        loop {
            // Judged against the targets of the current epoch.
            let ring = self.cluster.ring();
            let holders = ring.table.replicas(partition);
            // This node's own copy counts only while it is one of the replicas.
            let own = usize::from(holders.contains(&self.node));
            let replicas: Vec<NodeId> = holders
                .iter()
                .copied()
                .filter(|r| sent.contains(r))
                .collect();
            let receivers: Vec<NodeId> = self
                .cluster
                .forwards
                .receivers(partition)
                .into_iter()
                .filter(|r| sent.contains(r) && !replicas.contains(r))
                .collect();
            let needed = self
                .cluster
                .state()
                .write_quorum()
                .min(holders.len())
                .saturating_sub(own)
                .min(replicas.len());
            if let Some(e) = receivers.iter().find_map(|r| failed.get(r)) {
                return Err(e.clone());
            }
            let replica_acks = replicas.iter().filter(|r| acked.contains(r)).count();
            let replica_failures = replicas.iter().filter(|r| failed.contains_key(r)).count();
            if replicas.len() - replica_failures < needed {
                let e = replicas.iter().find_map(|r| failed.get(r));
                return Err(e.cloned().unwrap_or_else(|| {
                    WireError::new(ErrorCode::Unavailable, "too few replicas acknowledged")
                }));
            }
            let receivers_done = receivers.iter().all(|r| acked.contains(r));
            if receivers_done && replica_acks >= needed {
                return Ok(());
            }
            if pending.is_empty() {
                return Err(WireError::new(
                    ErrorCode::Unavailable,
                    "the write could not reach enough replicas",
                ));
            }
            tokio::select! {
                next = pending.next() => {
                    if let Some((id, outcome)) = next {
                        match outcome {
                            Ok(()) => {
                                acked.insert(id);
                            }
                            Err(e) => {
                                failed.insert(id, e);
                            }
                        }
                    }
                }
                _ = epochs.changed() => {}
            }
        }
    }

    /// Passes a write this replica received on to the members pulling its partition from
    /// here (a hand-off whose source is not the owner): stored first, then the receivers
    /// read, so every write is in the source's listing or forwarded.
    async fn forward_replica(&self, key: &EntryKey, entry: &Entry) -> Outcome<()> {
        let partition = self.partition(key);
        if self.receivers_here(partition).is_empty() {
            return Ok(());
        }
        let (request, out) = self.replicate_request(key, entry);
        self.send_to_receivers(partition, request, &out).await
    }

    /// Like [`Service::forward_replica`], for a delete.
    async fn forward_delete(&self, key: &EntryKey, version: Version) -> Outcome<()> {
        let partition = self.partition(key);
        if self.receivers_here(partition).is_empty() {
            return Ok(());
        }
        let request = Request::ReplicateDelete {
            namespace: key.namespace.to_string(),
            key: key.key.to_string(),
            version,
        };
        self.send_to_receivers(partition, request, &[]).await
    }

    /// Members still pulling `partition` from this node (not yet holders in effect).
    fn receivers_here(&self, partition: PartitionId) -> Vec<NodeId> {
        let ring = self.cluster.ring();
        let holders = ring.table.replicas(partition);
        let mut receivers = self.cluster.forwards.receivers(partition);
        receivers.retain(|r| *r != self.node && !holders.contains(r));
        receivers
    }

    async fn send_to_receivers(
        &self,
        partition: PartitionId,
        request: Request,
        bodies: &[Bytes],
    ) -> Outcome<()> {
        let ring = self.cluster.ring();
        let calls = self.receivers_here(partition).into_iter().map(|id| {
            let addr = ring.member(id).map(|m| m.addr.clone());
            let request = request.clone();
            async move {
                let Some(addr) = addr else {
                    return Ok(());
                };
                self.cluster
                    .peers()
                    .call(
                        &addr,
                        self.cluster.epoch(),
                        request,
                        bodies,
                        REPLICA_TIMEOUT,
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| replica_error(id, &e))
            }
        });
        for result in futures::future::join_all(calls).await {
            result?;
        }
        Ok(())
    }

    /// Records a delete's tombstone.
    fn record_tombstone(&self, key: &EntryKey, version: Version) -> Outcome<()> {
        self.tombstones
            .record(key, version, self.clock.now())
            .map(|_| ())
            .map_err(|e| {
                WireError::new(
                    ErrorCode::Internal,
                    format!("could not record a tombstone: {e}"),
                )
            })
    }

    /// Stores an entry written elsewhere if it is newer than what this node holds and than
    /// any delete of the key it knows of.
    pub async fn apply_replica(&self, key: EntryKey, entry: Entry) -> Outcome<bool> {
        let _ = self
            .hlc
            .lock()
            .observe(entry.meta.version, self.clock.now().as_millis());
        let _guard = self.lock_key(&key).await;
        if self.tombstones.covers(&key, entry.meta.version) {
            return Ok(false);
        }
        if let Some(held) = self.metadata(key.clone()).await?
            && held.version >= entry.meta.version
        {
            return Ok(false);
        }
        let Some(pending) = &self.pending else {
            self.writers.put(key, entry).await?;
            return Ok(true);
        };
        pending.wait_for_room(entry.meta.size_bytes).await;
        let newly_pending = {
            let mut shard = pending.lock(&key);
            if !self
                .store
                .put_fast(&key, entry.clone())
                .map_err(store_error)?
            {
                return Ok(false);
            }
            pending.insert(&mut shard, key.clone(), entry)
        };
        if newly_pending {
            self.writers.flush(key);
        }
        Ok(true)
    }

    /// Deletes a key for a delete issued elsewhere, unless a newer write is held; the
    /// tombstone is kept either way (it stops older writes arriving later).
    pub async fn apply_delete(&self, key: EntryKey, version: Version) -> Outcome<bool> {
        let _ = self
            .hlc
            .lock()
            .observe(version, self.clock.now().as_millis());
        let _guard = self.lock_key(&key).await;
        self.record_tombstone(&key, version)?;
        if let Some(held) = self.metadata(key.clone()).await?
            && held.version > version
        {
            return Ok(false);
        }
        self.delete(key).await
    }

    /// Applies the tombstones a transfer source sent: each is recorded, and deletes what
    /// this node holds of the key if older.
    pub async fn apply_tombstones(
        &self,
        tombstones: Vec<(String, String, Version)>,
    ) -> Outcome<u64> {
        let mut removed = 0;
        for (namespace, key, version) in tombstones {
            let key = entry_key(&namespace, &key)?;
            if self.apply_delete(key, version).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Rebuilds one entry of a partition transfer from its wire form (taking a streamed
    /// body from `bodies`, in order); none if it has expired. Apply it with
    /// [`Service::apply_replica`], which skips keys deleted meanwhile and older versions.
    pub fn take_transferred(
        &self,
        namespace: &str,
        key: &str,
        entry: WireEntry,
        bodies: &mut impl Iterator<Item = Bytes>,
    ) -> Outcome<Option<(EntryKey, Entry)>> {
        let key = entry_key(namespace, key)?;
        let entry = self.take_entry(entry.meta, entry.body, bodies)?;
        // A key deleted meanwhile is refused by its tombstone in `apply_replica`.
        if entry.is_expired(self.clock.now()) {
            return Ok(None);
        }
        Ok(Some((key, entry)))
    }

    /// Every key held here (memory, disk and pending writes) in the given partitions, sorted.
    async fn keys_in(
        &self,
        partitions: u32,
        wanted: &HashSet<PartitionId>,
    ) -> Outcome<Vec<EntryKey>> {
        let in_store = wanted.clone();
        let pending: Vec<EntryKey> = self.pending.as_ref().map(|p| p.keys()).unwrap_or_default();
        let mut keys = self
            .blocking(move |store| {
                let mut keys = BTreeSet::new();
                for namespace in store.namespaces()? {
                    for (key, _) in store.list_keys(&namespace, None, false)? {
                        if in_store.contains(&partition_of(
                            partitions,
                            namespace.as_str(),
                            key.as_str(),
                        )) {
                            keys.insert(EntryKey::new(namespace.clone(), key));
                        }
                    }
                }
                Ok(keys)
            })
            .await?;
        keys.extend(pending.into_iter().filter(|k| {
            wanted.contains(&partition_of(
                partitions,
                k.namespace.as_str(),
                k.key.as_str(),
            ))
        }));
        Ok(keys.into_iter().collect())
    }

    /// Deletes every local entry of the given partitions; how many.
    pub async fn drop_partitions(
        &self,
        partitions: u32,
        dropped: &HashSet<PartitionId>,
    ) -> Outcome<u64> {
        let keys = self.keys_in(partitions, dropped).await?;
        self.tombstones.drop_partitions(partitions, dropped);
        let mut n = 0;
        for key in keys {
            if self.delete(key).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Refuses to be a transfer source for partitions this node does not hold in the table
    /// in effect: a receiver with an older ring may ask a former holder, whose copy may be
    /// incomplete or being dropped.
    fn check_holder(&self, partitions: &[PartitionId]) -> Outcome<()> {
        let state = self.cluster.state();
        let me = self.cluster.id();
        match partitions
            .iter()
            .find(|p| !state.table.replicas(**p).contains(&me))
        {
            Some(p) => Err(WireError::new(
                ErrorCode::NotReady,
                format!(
                    "member {me} does not hold partition {p} at epoch {}: ask a current holder",
                    state.epoch
                ),
            )),
            None => Ok(()),
        }
    }

    /// Refuses a page if this node dropped one of the session's partitions since its
    /// listing was made.
    fn check_not_dropped(&self, partitions: &[PartitionId], session: &Session) -> Outcome<()> {
        if self.cluster.dropped.counts(partitions) == session.drops {
            Ok(())
        } else {
            Err(WireError::new(
                ErrorCode::NotReady,
                "the source dropped a partition of this transfer meanwhile: start over",
            ))
        }
    }

    /// Refuses transfers outside a cluster and for partitions this node does not hold.
    fn check_transfer_source(&self, partitions: &[PartitionId]) -> Outcome<()> {
        if !self.cluster.is_clustered() {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "partition transfers are between members of a cluster",
            ));
        }
        self.check_holder(partitions)
    }

    /// One page of a partition transfer for `receiver`: the versions of the live entries.
    /// The first page opens the session (registers forwarding, lists the keys).
    async fn scan_partitions(
        &self,
        receiver: NodeId,
        partitions: Vec<PartitionId>,
        after: Option<(String, String)>,
        limit: u32,
    ) -> Outcome<Answer> {
        self.check_transfer_source(&partitions)?;
        // Forward first, list second: every write is in the listing or forwarded.
        self.cluster.forwards.register(receiver, &partitions);
        let count = self.cluster.ring().params.partitions;
        let wanted: HashSet<PartitionId> = partitions.iter().copied().collect();
        let forwards = &self.cluster.forwards;
        let session = match &after {
            None => {
                // Counted before listing: a drop that starts later shows in the counts.
                let drops = self.cluster.dropped.counts(&partitions);
                let keys = self.keys_in(count, &wanted).await?;
                forwards.open_session(receiver, &partitions, Session { keys, drops })
            }
            Some(_) => self.transfer_session(receiver, &partitions)?,
        };
        self.check_not_dropped(&partitions, &session)?;
        let keys = &session.keys;
        let start = match &after {
            Some((ns, k)) => keys.partition_point(|e| {
                (e.namespace.as_str(), e.key.as_str()) <= (ns.as_str(), k.as_str())
            }),
            None => 0,
        };
        let limit = limit.clamp(1, MAX_TRANSFER_PAGE) as usize;
        let page: Vec<EntryKey> = keys[start..].iter().take(limit).cloned().collect();
        let more = keys.len() > start + page.len();
        let now = self.clock.now();
        let metas = self.held_metadata(page.clone()).await?;
        let versions = page
            .iter()
            .zip(metas)
            .filter_map(|(key, meta)| {
                let meta = meta.filter(|m| !m.is_expired(now))?;
                Some((key.namespace.to_string(), key.key.to_string(), meta.version))
            })
            .collect();
        // Read after any drop began? Then this page may lack entries: refuse it.
        self.check_not_dropped(&partitions, &session)?;
        let next = if more {
            page.last()
                .map(|k| (k.namespace.to_string(), k.key.to_string()))
        } else {
            None
        };
        let tombstones = if after.is_none() {
            self.tombstones
                .in_partitions(count, &wanted)
                .into_iter()
                .map(|(k, v)| (k.namespace.to_string(), k.key.to_string(), v))
                .collect()
        } else {
            Vec::new()
        };
        let versions = Response::PartitionVersions {
            versions,
            next,
            tombstones,
        };
        Ok((versions, Vec::new()))
    }

    /// The running transfer session of `receiver` for `partitions`.
    fn transfer_session(
        &self,
        receiver: NodeId,
        partitions: &[PartitionId],
    ) -> Outcome<Arc<Session>> {
        self.cluster
            .forwards
            .session(receiver, partitions)
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::NotReady,
                    "this transfer's session is gone (the source restarted or moved on): start over",
                )
            })
    }

    /// The entries of `keys` for `receiver`'s open transfer session of `partitions`.
    async fn fetch_partition_entries(
        &self,
        receiver: NodeId,
        partitions: Vec<PartitionId>,
        keys: Vec<(String, String)>,
    ) -> Outcome<Answer> {
        self.check_transfer_source(&partitions)?;
        if keys.len() > MAX_TRANSFER_PAGE as usize {
            return Err(WireError::new(
                ErrorCode::Malformed,
                format!("at most {MAX_TRANSFER_PAGE} entries per fetch"),
            ));
        }
        let session = self.transfer_session(receiver, &partitions)?;
        let count = self.cluster.ring().params.partitions;
        let wanted: HashSet<PartitionId> = partitions.iter().copied().collect();
        let keys = keys
            .iter()
            .map(|(namespace, key)| {
                let key = entry_key(namespace, key)?;
                if wanted.contains(&partition_of(count, namespace, key.key.as_str())) {
                    Ok(key)
                } else {
                    Err(WireError::new(
                        ErrorCode::Malformed,
                        format!(
                            "{namespace}/{} is not in this transfer's partitions",
                            key.key
                        ),
                    ))
                }
            })
            .collect::<Outcome<Vec<EntryKey>>>()?;
        self.check_not_dropped(&partitions, &session)?;
        let now = self.clock.now();
        let pending: Vec<Option<Entry>> = keys.iter().map(|k| self.pending_entry(k)).collect();
        let read = keys.clone();
        let found = self
            .blocking(move |store| {
                let mut found = Vec::with_capacity(read.len());
                for (key, pending) in read.iter().zip(pending) {
                    let mut entry = pending;
                    for tier in store.tiers() {
                        if entry.is_some() {
                            break;
                        }
                        entry = tier.get(key)?;
                    }
                    found.push(entry);
                }
                Ok(found)
            })
            .await?;
        let mut out = Vec::new();
        let mut budget = self.limits.answer_inline_budget;
        let mut entries = Vec::new();
        for (key, entry) in keys.iter().zip(found) {
            let Some(entry) = entry.filter(|e| !e.is_expired(now)) else {
                continue;
            };
            let wire = self.wire_entry(entry, &mut out, &mut budget);
            entries.push((key.namespace.to_string(), key.key.to_string(), wire));
        }
        // Read after any drop began? Then these entries may be incomplete: refuse them.
        self.check_not_dropped(&partitions, &session)?;
        Ok((Response::PartitionEntries { entries }, out))
    }

    /// Of the `versions` a transfer source listed, the keys whose entry this node should
    /// fetch: those it does not hold, or holds in an older version, and has no newer
    /// tombstone for. Everything else would be refused by [`Service::apply_replica`] anyway,
    /// so skipping it changes nothing but the bytes moved.
    pub async fn missing(
        &self,
        versions: Vec<(String, String, Version)>,
    ) -> Outcome<Vec<(String, String)>> {
        let mut keys = Vec::with_capacity(versions.len());
        let mut listed = Vec::with_capacity(versions.len());
        for (namespace, key, version) in versions {
            let entry_key = entry_key(&namespace, &key)?;
            if !self.tombstones.covers(&entry_key, version) {
                keys.push(entry_key);
                listed.push((namespace, key, version));
            }
        }
        let held = self.held_metadata(keys).await?;
        Ok(listed
            .into_iter()
            .zip(held)
            .filter(|((_, _, version), held)| held.as_ref().is_none_or(|h| h.version < *version))
            .map(|((namespace, key, _), _)| (namespace, key))
            .collect())
    }

    /// The metadata this node holds for each of `keys`: of the write-back's pending version
    /// if there is one, else of the tiers (read in one blocking call).
    async fn held_metadata(&self, keys: Vec<EntryKey>) -> Outcome<Vec<Option<EntryMeta>>> {
        let pending: Vec<Option<EntryMeta>> = keys
            .iter()
            .map(|k| self.pending_entry(k).map(|e| e.meta))
            .collect();
        self.blocking(move |store| {
            keys.iter()
                .zip(pending)
                .map(|(key, pending)| match pending {
                    Some(meta) => Ok(Some(meta)),
                    None => store.metadata(key),
                })
                .collect::<strata_store::Result<Vec<_>>>()
        })
        .await
    }

    /// Stamps a value with this node's clock: creation time, expiry and version.
    fn stamp(&self, value: Value, ttl_ms: Option<u64>) -> Entry {
        let now = self.clock.now();
        let version = self.hlc.lock().tick(now.as_millis());
        Entry::new(value, now, ttl_ms.map(Duration::from_millis), version)
    }

    /// The wire form of an entry: inline while the answer's inline budget lasts, streamed
    /// (its buffers appended to `out`) otherwise.
    fn wire_entry(&self, entry: Entry, out: &mut Vec<Bytes>, budget: &mut usize) -> WireEntry {
        let size = usize::try_from(entry.meta.size_bytes).unwrap_or(usize::MAX);
        let inline_limit = if size <= *budget {
            self.limits.inline_limit
        } else {
            0
        };
        let (wire, streamed) = wire::split_value(&entry.value, inline_limit);
        if matches!(wire.body, Body::Inline(_)) {
            *budget -= size;
        }
        if let Some(parts) = streamed {
            out.extend(parts);
        }
        WireEntry {
            meta: entry.meta,
            body: wire.body,
        }
    }

    /// Stores a value: in write-back mode once it is in memory and pending (the writer of its
    /// key flushes it), otherwise once the writer has put it in every tier.
    async fn write(&self, key: EntryKey, value: Value, ttl_ms: Option<u64>) -> Outcome<Entry> {
        let _guard = self.lock_key(&key).await;
        let Some(pending) = &self.pending else {
            let entry = self.stamp(value, ttl_ms);
            self.writers.put(key, entry.clone()).await?;
            return Ok(entry);
        };
        pending.wait_for_room(value.payload_len() as u64).await;
        let (newly_pending, entry) = {
            // The version is assigned under the key's lock, so versions of one key reach
            // memory and the pending map in order.
            let mut shard = pending.lock(&key);
            let entry = self.stamp(value, ttl_ms);
            self.store
                .put_fast(&key, entry.clone())
                .map_err(store_error)?;
            (
                pending.insert(&mut shard, key.clone(), entry.clone()),
                entry,
            )
        };
        if newly_pending {
            self.writers.flush(key);
        }
        Ok(entry)
    }

    /// Deletes `key` as its owner: a new version, a tombstone for it, the local copies, then
    /// the same delete on the replicas. Whether the key existed here.
    async fn delete_versioned(&self, key: EntryKey) -> Outcome<bool> {
        let (version, existed) = {
            let _guard = self.lock_key(&key).await;
            let version = self.tick();
            self.record_tombstone(&key, version)?;
            (version, self.delete(key.clone()).await?)
        };
        self.replicate_delete(&key, version).await?;
        Ok(existed)
    }

    async fn delete(&self, key: EntryKey) -> Outcome<bool> {
        let was_pending = match &self.pending {
            Some(pending) => pending.remove(&mut pending.lock(&key), &key),
            None => false,
        };
        // Through the key's writer: after any flush of it already queued.
        Ok(self.writers.delete(key).await? || was_pending)
    }

    async fn clear(&self, namespace: Namespace, pattern: Option<Pattern>) -> Outcome<u64> {
        let mut only_pending = BTreeSet::new();
        if let Some(pending) = &self.pending {
            only_pending.extend(
                pending
                    .matching(&namespace, pattern.as_ref())
                    .into_iter()
                    .map(|(k, _)| k),
            );
            pending.remove_matching(&namespace, pattern.as_ref());
            // Let flushes already under way finish, so none lands after the clear.
            self.writers.barrier().await;
        }
        let (listed, removed) = self
            .blocking(move |store| {
                let listed = store.list_keys(&namespace, pattern.as_ref(), false)?;
                Ok((listed, store.clear(&namespace, pattern.as_ref())?))
            })
            .await?;
        for (key, _) in listed {
            only_pending.remove(&key);
        }
        Ok(removed + only_pending.len() as u64)
    }

    async fn list_keys(
        &self,
        namespace: Namespace,
        pattern: Option<Pattern>,
        with_meta: bool,
    ) -> Outcome<Vec<(Key, Option<EntryMeta>)>> {
        let pending = self
            .pending
            .as_ref()
            .map(|p| p.matching(&namespace, pattern.as_ref()))
            .unwrap_or_default();
        let stored = self
            .blocking(move |store| store.list_keys(&namespace, pattern.as_ref(), with_meta))
            .await?;
        let mut merged: BTreeMap<Key, Option<EntryMeta>> = stored.into_iter().collect();
        for (key, meta) in pending {
            merged.insert(key, with_meta.then_some(meta));
        }
        Ok(merged.into_iter().collect())
    }

    /// A write acknowledged but not yet on disk.
    fn pending_entry(&self, key: &EntryKey) -> Option<Entry> {
        let entry = self.pending.as_ref()?.get(key)?;
        (!entry.is_expired(self.clock.now())).then_some(entry)
    }

    async fn get(&self, key: EntryKey) -> Outcome<Option<Entry>> {
        // A memory hit is answered here, with no thread or mailbox hop.
        if let Some(entry) = self.store.get_fast(&key).map_err(store_error)? {
            return Ok(Some(entry));
        }
        if let Some(entry) = self.pending_entry(&key) {
            return Ok(Some(entry));
        }
        self.blocking(move |store| store.get_slow(&key)).await
    }

    async fn get_many(&self, keys: Vec<EntryKey>) -> Outcome<Vec<Option<Entry>>> {
        let mut found = Vec::with_capacity(keys.len());
        let mut misses = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            match self
                .store
                .get_fast(&key)
                .map_err(store_error)?
                .or_else(|| self.pending_entry(&key))
            {
                Some(entry) => found.push(Some(entry)),
                None => {
                    found.push(None);
                    misses.push((i, key));
                }
            }
        }
        if !misses.is_empty() {
            let slow = self
                .blocking(move |store| {
                    misses
                        .into_iter()
                        .map(|(i, key)| store.get_slow(&key).map(|e| (i, e)))
                        .collect::<strata_store::Result<Vec<_>>>()
                })
                .await?;
            for (i, entry) in slow {
                found[i] = entry;
            }
        }
        Ok(found)
    }

    async fn metadata(&self, key: EntryKey) -> Outcome<Option<EntryMeta>> {
        if let Some(first) = self.store.tiers().first()
            && let Some(meta) = first.metadata(&key).map_err(store_error)?
        {
            return Ok(Some(meta));
        }
        if let Some(entry) = self.pending_entry(&key) {
            return Ok(Some(entry.meta));
        }
        self.blocking(move |store| store.metadata(&key)).await
    }

    /// Runs store work that may touch the disk on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Tiered) -> strata_store::Result<T> + Send + 'static,
    ) -> Outcome<T> {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(result) => result.map_err(store_error),
            Err(e) => Err(WireError::new(
                ErrorCode::Internal,
                format!("storage task failed: {e}"),
            )),
        }
    }

    /// Node identity and the reference's statistics shape, as JSON.
    pub fn stats_json(&self) -> String {
        let stats = self.store.tiered_stats();
        let me = self.cluster.me();
        serde_json::json!({
            "node": {
                "id": self.node.0,
                "addr": me.addr,
                "admin": me.admin,
                "protocol": wire::PROTOCOL_VERSION,
                "uptime_secs": self.started.elapsed().as_secs(),
            },
            "cluster": {
                "clustered": self.cluster.is_clustered(),
                "epoch": self.cluster.epoch(),
                "state": self.cluster.member_state().map(|s| s.as_str()),
                "ready": self.cluster.readiness().is_ok(),
                "raft": self.cluster.raft_status(),
                "partitions": self.cluster.partition_counts(),
            },
            "manager": stats.manager,
            "tiers": stats.tiers,
            "write_back": {
                "enabled": self.pending.is_some(),
                "pending_keys": self.pending.as_ref().map_or(0, |p| p.len()),
                "pending_bytes": self.pending.as_ref().map_or(0, |p| p.bytes()),
            },
        })
        .to_string()
    }
}

fn replica_error(node: NodeId, e: &strata_client::Error) -> WireError {
    WireError::new(
        ErrorCode::Unavailable,
        format!("replica {node} did not acknowledge the write: {e}"),
    )
}

fn parse_namespace(namespace: &str) -> Outcome<Namespace> {
    Namespace::new(namespace).map_err(WireError::from)
}

fn parse_key(key: &str) -> Outcome<Key> {
    Key::new(key).map_err(WireError::from)
}

fn entry_key(namespace: &str, key: &str) -> Outcome<EntryKey> {
    Ok(EntryKey::new(parse_namespace(namespace)?, parse_key(key)?))
}

fn parse_pattern(pattern: Option<&str>) -> Outcome<Option<Pattern>> {
    pattern
        .map(|p| {
            Pattern::new(p).map_err(|e| WireError::new(ErrorCode::InvalidPattern, e.to_string()))
        })
        .transpose()
}

/// One page of a sorted key listing: the keys after `after`, at most `limit` of them.
fn page(
    all: Vec<(Key, Option<EntryMeta>)>,
    after: Option<&str>,
    limit: u32,
) -> (Vec<(String, Option<EntryMeta>)>, Option<String>) {
    let limit = limit.clamp(1, 10_000) as usize;
    let start = after.map_or(0, |a| all.partition_point(|(k, _)| k.as_str() <= a));
    let rest = &all[start..];
    let keys: Vec<_> = rest
        .iter()
        .take(limit)
        .map(|(k, m)| (k.as_str().to_owned(), m.clone()))
        .collect();
    let next = (rest.len() > limit)
        .then(|| keys.last().map(|(k, _)| k.clone()))
        .flatten();
    (keys, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<(Key, Option<EntryMeta>)> {
        (0..n)
            .map(|i| (Key::new(format!("k{i:03}")).unwrap(), None))
            .collect()
    }

    #[test]
    fn pages_cover_every_key_once() {
        let all = keys(25);
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = page(all.clone(), after.as_deref(), 10);
            seen.extend(page.into_iter().map(|(k, _)| k));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        assert_eq!(seen.first().map(String::as_str), Some("k000"));
        assert_eq!(seen.last().map(String::as_str), Some("k024"));
        let (empty, next) = page(all, Some("k024"), 10);
        assert!(empty.is_empty() && next.is_none());
    }
}
