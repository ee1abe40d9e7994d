//! [`Client`]: typed calls (get, set, delete, list, batches, ...) routed over the cluster's
//! ring, with per-attempt timeouts and retries.
//!
//! # Routing
//! [`Client::connect`] asks a seed ([`ClientConfig::addr`], then [`ClientConfig::seeds`]) for
//! the ring and keeps it. A call about a key goes straight to the key's owner with the ring's
//! epoch; a node that does not own the key at its epoch answers with its ring, which the
//! client adopts before sending the call to the new owner (see [`crate::routing`]
//! for redirects, failed members and refreshing the ring).
//!
//! - `get_many` / `set_many` group their keys by owner, send the groups in parallel (each cut
//!   into requests within the batch budgets), and put the results back in input order. A
//!   request whose keys changed owner is grouped again by the new ring.
//! - `list_keys`, `clear`, `cluster_stats` ask every member that is not marked down (a node
//!   lists and clears only the partitions it owns) and merge: listings in key order without
//!   duplicates (a key being handed off may be on two nodes), counts summed.
//! - `ping` and `stats` ask the seed the client connected through (a node-level view).
//!
//! # Requests
//! Each call builds one request (batch calls several), gives it an id, and sends it through
//! the member's `NodeConnection`. Values larger than [`ClientConfig::inline_limit`] are
//! streamed after the frame straight from the value's own buffers (a tensor's data is never
//! copied on the way out), and values that come back streamed are read into the one buffer
//! the returned [`Entry`] keeps. Every returned entry is checked against the checksum in its
//! metadata.
//!
//! # Retries
//! An attempt that fails with a retryable [`Error`] (timeout, lost connection, a node that
//! says `Unavailable`, `Timeout` or `NotReady`) is sent again, up to
//! [`ClientConfig::retries`] times, after a doubling backoff; after a timeout or a lost
//! connection the ring is fetched again first, so the retry goes to whoever owns the key now.
//! Each attempt has the full request timeout. Every request is safe to send twice: reads
//! trivially; `set` and `set_many` write the same value again (the node gives the second
//! write a newer version, so the outcome is the same value); `delete` and `clear` end in the
//! same state, though a retried `delete` may report `false` if its first attempt deleted the
//! key before the answer was lost.
//!
//! # Caveats
//! - Reads go to the owner only. While a member is failing, its keys are unavailable until
//!   the cluster marks it down and the ring hands its partitions to their replicas (the
//!   client follows within one refresh); reads are not sent to replicas directly.
//! - A timeout on an established connection to a member that died is only noticed after
//!   [`ClientConfig::request_timeout`]; lower it where failover speed matters more than
//!   patience with large values.
//! - Cluster-wide listings and clears fail if any live member fails to answer, rather than
//!   return a partial result.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use quinn::Endpoint;
use strata_proto::wire::{
    self, Body, ErrorCode, Request, Response, WireEntry, WireError, WireValue,
};
use strata_proto::{Entry, EntryMeta, Key, MemberState, Namespace, NodeId, Ring, Value};

use crate::batch::{self, Budget, ItemCost};
use crate::cluster::{self, ClusterStats, Membership, NodeStats};
use crate::config::{ClientConfig, DEFAULT_LIST_PAGE};
use crate::connection;
use crate::error::Error;
use crate::io;
use crate::routing::{self, MAX_REDIRECTS, Routed, Routes};
use crate::tls;

/// How long [`Client::close`] waits for the close to reach the nodes.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A connection to a Strata cluster. Cheap to clone (all clones share the ring, the
/// connections and the endpoint, and can be used from many tasks at once).
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    pub(crate) endpoint: Endpoint,
    pub(crate) quic: quinn::ClientConfig,
    pub(crate) routes: Routes,
    pub(crate) next_id: AtomicU64,
}

/// One page of [`Client::list_keys_page`].
#[derive(Clone, Debug, PartialEq)]
pub struct KeysPage {
    /// Keys, in key order, with their metadata if it was asked for.
    pub keys: Vec<(Key, Option<EntryMeta>)>,
    /// Pass as `after` to get the next page; `None` after the last page.
    pub next: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.config.addr)
            .field("epoch", &self.current_ring().epoch)
            .finish_non_exhaustive()
    }
}

/// A batch call's items grouped by owner, each group cut into requests.
type Groups<I> = Vec<Vec<Vec<I>>>;

/// The outcome of one batch request: its results by input position, or its items handed
/// back because they no longer share an owner.
enum Chunk<T, I> {
    Done(Vec<(usize, T)>),
    Split(Vec<I>),
}

impl Client {
    /// Checks the configuration, loads the certificates, and asks the seeds
    /// ([`ClientConfig::addr`], then [`ClientConfig::seeds`], in order) for the ring until
    /// one answers. Connections to the other members are made when first needed and kept.
    /// Fails with the first seed's error if none answers.
    pub async fn connect(config: ClientConfig) -> Result<Self, Error> {
        config.validate()?;
        let quic = tls::quic_config(&config.tls)?;
        let mut first_error = None;
        let mut bind_family = None;
        for seed in config.seed_addrs() {
            match connection::resolve(seed).await {
                Ok(remote) => {
                    bind_family = Some(remote);
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some(remote) = bind_family else {
            return Err(first_error.unwrap_or_else(|| Error::Config("no seed address".into())));
        };
        let bind: SocketAddr = if remote.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = io::udp_socket(bind)
            .and_then(|socket| {
                Endpoint::new(
                    quinn::EndpointConfig::default(),
                    None,
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
            })
            .map_err(|e| Error::Connect {
                addr: config.addr.clone(),
                reason: format!("cannot open a UDP socket on {bind}: {e}"),
            })?;
        let seeds: Vec<String> = config.seed_addrs().map(str::to_owned).collect();
        let client = Self {
            inner: Arc::new(Inner {
                config,
                endpoint,
                quic,
                routes: Routes::new(),
                next_id: AtomicU64::new(1),
            }),
        };
        for seed in &seeds {
            let fetched = match client.connection_to(seed).await {
                Ok(conn) => client.fetch_ring(&conn).await.map(|ring| (ring, conn)),
                Err(e) => Err(e),
            };
            match fetched {
                Ok((ring, conn)) => {
                    client.choose_addresses(&ring, seed, conn.remote());
                    tracing::debug!(
                        seed,
                        epoch = ring.epoch,
                        members = ring.members.len(),
                        "connected"
                    );
                    client.adopt(ring, Some(&conn));
                    client.set_primary(conn);
                    return Ok(client);
                }
                Err(e) => {
                    tracing::debug!(seed, error = %e, "seed did not answer");
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| Error::Config("no seed address".into())))
    }

    /// The configuration the client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The ring requests are routed by now (the newest the client has seen).
    pub fn ring(&self) -> Arc<Ring> {
        self.current_ring()
    }

    /// Fetches the ring from the cluster (the seed first, then the other members and seeds)
    /// and routes by it from now on, unless the client already knows a newer one. Returns the
    /// ring routed by afterwards.
    pub async fn refresh_ring(&self) -> Result<Arc<Ring>, Error> {
        self.refresh(None).await
    }

    /// The members of the cluster and the Raft leader, from a freshly fetched ring.
    pub async fn members(&self) -> Result<Membership, Error> {
        let ring = self.refresh_ring().await?;
        Ok(Membership {
            epoch: ring.epoch,
            leader: ring.leader,
            members: ring.members.clone(),
        })
    }

    /// Asks the cluster to remove member `node`: the leader marks it leaving, its partitions
    /// are handed off, and then it disappears from the ring. Returns as soon as the cluster
    /// has accepted the request, with the ring it answered (poll [`Client::refresh_ring`] to
    /// see the hand-off finish). Sent to any member that answers.
    ///
    /// A cluster that is not ready (electing a leader, finishing another change) is asked
    /// again, with the retry backoff, for up to [`ClientConfig::request_timeout`] before its
    /// `NotReady` is returned. If an attempt's answer was lost (the member that left may
    /// close its connections at once) and a later attempt is refused, the ring decides: a
    /// member no longer in it has left, and its ring is returned.
    pub async fn leave(&self, node: NodeId) -> Result<Ring, Error> {
        let started = std::time::Instant::now();
        let mut retry = 0;
        let mut maybe_applied = false;
        loop {
            let (outcome, lost) = self.call_any(Request::Leave { node }).await;
            maybe_applied |= lost;
            match outcome {
                Ok((Response::Ring(ring), _)) => {
                    self.adopt((*ring).clone(), None);
                    return Ok(*ring);
                }
                Ok((other, _)) => return Err(unexpected("leave", &other)),
                Err(e)
                    if e.server_code() == Some(ErrorCode::NotReady)
                        && started.elapsed() < self.inner.config.request_timeout =>
                {
                    tracing::debug!(%node, error = %e, "the cluster is not ready to remove a member yet");
                    tokio::time::sleep(self.inner.config.backoff(retry)).await;
                    retry += 1;
                }
                Err(e) => {
                    if maybe_applied
                        && let Ok(ring) = self.refresh_ring().await
                        && ring.member(node).is_none()
                    {
                        return Ok((*ring).clone());
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Closes every connection (telling the nodes) and waits up to a second for the closes
    /// to be delivered. Requests made afterwards connect again.
    pub async fn close(&self) {
        for conn in self.routes().connections() {
            conn.close();
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, self.inner.endpoint.wait_idle()).await;
    }

    /// Checks that the seed the client connected through answers; returns its id.
    pub async fn ping(&self) -> Result<NodeId, Error> {
        let primary = self.primary()?;
        match self.call_on(&primary, Request::Ping, &[], false).await?.0 {
            Response::Pong { node, .. } => Ok(node),
            other => Err(unexpected("ping", &other)),
        }
    }

    /// The entry under `key`, or `None` if there is none (or it expired).
    pub async fn get(&self, namespace: &Namespace, key: &Key) -> Result<Option<Entry>, Error> {
        let request = Request::Get {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        match self
            .call_key(namespace.as_str(), key.as_str(), request, &[])
            .await?
        {
            (Response::Entry(None), _) => Ok(None),
            (Response::Entry(Some(entry)), bodies) => {
                let mut bodies = bodies.into_iter();
                entry_from_wire(entry, &mut bodies).map(Some)
            }
            (other, _) => Err(unexpected("get", &other)),
        }
    }

    /// Stores `value` under `key`, expiring after `ttl` (never if `None`). Large values are
    /// streamed from their own buffers. Retried on transient failures: writing the same value
    /// twice leaves the same value.
    pub async fn set(
        &self,
        namespace: &Namespace,
        key: &Key,
        value: Value,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let (value, streamed) = wire::split_value(&value, self.inner.config.inline_limit);
        let request = Request::Set {
            namespace: namespace.to_string(),
            key: key.to_string(),
            ttl_ms: ttl.map(ttl_ms),
            value,
        };
        let bodies: Vec<Bytes> = streamed.into_iter().flatten().collect();
        match self
            .call_key(namespace.as_str(), key.as_str(), request, &bodies)
            .await?
            .0
        {
            Response::Stored => Ok(()),
            other => Err(unexpected("set", &other)),
        }
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, namespace: &Namespace, key: &Key) -> Result<bool, Error> {
        let request = Request::Delete {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        match self
            .call_key(namespace.as_str(), key.as_str(), request, &[])
            .await?
            .0
        {
            Response::Deleted(existed) => Ok(existed),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// Whether a live entry is stored under `key`.
    pub async fn exists(&self, namespace: &Namespace, key: &Key) -> Result<bool, Error> {
        let request = Request::Exists {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        match self
            .call_key(namespace.as_str(), key.as_str(), request, &[])
            .await?
            .0
        {
            Response::Exists(exists) => Ok(exists),
            other => Err(unexpected("exists", &other)),
        }
    }

    /// The metadata of the entry under `key`, without its value.
    pub async fn metadata(
        &self,
        namespace: &Namespace,
        key: &Key,
    ) -> Result<Option<EntryMeta>, Error> {
        let request = Request::Metadata {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        match self
            .call_key(namespace.as_str(), key.as_str(), request, &[])
            .await?
            .0
        {
            Response::Metadata(meta) => Ok(meta),
            other => Err(unexpected("metadata", &other)),
        }
    }

    /// Deletes every entry of the namespace whose key matches the glob `pattern` (every
    /// entry if `None`), on every member not marked down; how many were removed in all.
    pub async fn clear(&self, namespace: &Namespace, pattern: Option<&str>) -> Result<u64, Error> {
        let request = Request::Clear {
            namespace: namespace.to_string(),
            pattern: pattern.map(str::to_owned),
        };
        let members = routing::live_members(&self.current_ring());
        let answers = futures::future::join_all(
            members
                .iter()
                .map(|member| self.call_member(member, request.clone())),
        )
        .await;
        let mut removed = 0u64;
        for answer in answers {
            match answer?.0 {
                Response::Cleared(n) => removed = removed.saturating_add(n),
                other => return Err(unexpected("clear", &other)),
            }
        }
        Ok(removed)
    }

    /// Every key of the namespace matching the glob `pattern` (all if `None`), in key order,
    /// with metadata if `with_meta`, from every member not marked down. Each member is read a
    /// page of 1000 at a time; a key held by two members (during a hand-off) is listed once,
    /// with the newer metadata.
    pub async fn list_keys(
        &self,
        namespace: &Namespace,
        pattern: Option<&str>,
        with_meta: bool,
    ) -> Result<Vec<(Key, Option<EntryMeta>)>, Error> {
        let members = routing::live_members(&self.current_ring());
        let listings = futures::future::join_all(
            members
                .iter()
                .map(|member| self.list_member(member, namespace, pattern, with_meta)),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        cluster::merge_listings(listings)
            .into_iter()
            .map(|(key, meta)| parse_listed(key).map(|key| (key, meta)))
            .collect()
    }

    /// Every matching key one member holds, following its pages.
    async fn list_member(
        &self,
        member: &strata_proto::Member,
        namespace: &Namespace,
        pattern: Option<&str>,
        with_meta: bool,
    ) -> Result<Vec<(String, Option<EntryMeta>)>, Error> {
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let request = Request::ListKeys {
                namespace: namespace.to_string(),
                pattern: pattern.map(str::to_owned),
                with_meta,
                after: after.clone(),
                limit: DEFAULT_LIST_PAGE,
            };
            let (page, next) = match self.call_member(member, request).await?.0 {
                Response::Keys { keys, next } => (keys, next),
                other => return Err(unexpected("list_keys", &other)),
            };
            keys.extend(page);
            match next {
                None => return Ok(keys),
                Some(next) if after.as_ref().is_some_and(|a| next <= *a) => {
                    return Err(Error::Protocol(format!(
                        "listing keys does not advance: node {} returned the page cursor {next:?} after {after:?}",
                        member.id
                    )));
                }
                Some(next) => after = Some(next),
            }
        }
    }

    /// One page of keys: at most `limit`, in key order, starting after the key `after` (from
    /// the previous page's [`KeysPage::next`]). Every member not marked down is asked for its
    /// keys after `after`; the answers are merged, so `next` is set whenever any member may
    /// hold more.
    pub async fn list_keys_page(
        &self,
        namespace: &Namespace,
        pattern: Option<&str>,
        with_meta: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<KeysPage, Error> {
        let request = Request::ListKeys {
            namespace: namespace.to_string(),
            pattern: pattern.map(str::to_owned),
            with_meta,
            after: after.map(str::to_owned),
            limit,
        };
        let members = routing::live_members(&self.current_ring());
        let answers = futures::future::join_all(
            members
                .iter()
                .map(|member| self.call_member(member, request.clone())),
        )
        .await;
        let mut pages = Vec::with_capacity(answers.len());
        for answer in answers {
            match answer?.0 {
                Response::Keys { keys, next } => pages.push((keys, next)),
                other => return Err(unexpected("list_keys", &other)),
            }
        }
        let (keys, next) = cluster::merge_pages(pages, limit as usize);
        let keys = keys
            .into_iter()
            .map(|(key, meta)| parse_listed(key).map(|key| (key, meta)))
            .collect::<Result<_, _>>()?;
        Ok(KeysPage { keys, next })
    }

    /// The counters and sizes (its tiers' statistics) of the node the client connected
    /// through, as JSON. See [`Client::cluster_stats`] for every member.
    pub async fn stats(&self) -> Result<serde_json::Value, Error> {
        let primary = self.primary()?;
        match self.call_on(&primary, Request::Stats, &[], false).await?.0 {
            Response::Stats(json) => parse_stats(&json),
            other => Err(unexpected("stats", &other)),
        }
    }

    /// Every member's statistics (members marked down are listed but not asked), and their
    /// sum. A member that fails to answer is reported with its error; the call fails only if
    /// no member answers.
    pub async fn cluster_stats(&self) -> Result<ClusterStats, Error> {
        let ring = self
            .refresh_ring()
            .await
            .unwrap_or_else(|_| self.current_ring());
        let nodes = futures::future::join_all(ring.members.iter().map(|member| async move {
            let stats = if member.state == MemberState::Down {
                Err(Error::Connect {
                    addr: member.addr.clone(),
                    reason: "the cluster has marked this member down".into(),
                })
            } else {
                match self.call_member(member, Request::Stats).await {
                    Ok((Response::Stats(json), _)) => parse_stats(&json),
                    Ok((other, _)) => Err(unexpected("stats", &other)),
                    Err(e) => Err(e),
                }
            };
            NodeStats {
                id: member.id,
                addr: member.addr.clone(),
                state: member.state,
                stats,
            }
        }))
        .await;
        if nodes.iter().all(|n| n.stats.is_err())
            && let Some(Err(e)) = nodes.first().map(|n| &n.stats)
        {
            return Err(e.clone());
        }
        let aggregate =
            cluster::aggregate_stats(nodes.iter().filter_map(|n| n.stats.as_ref().ok()));
        Ok(ClusterStats {
            epoch: ring.epoch,
            nodes,
            aggregate,
        })
    }

    /// The entries under `keys`, in the same order (`None` for a miss). The keys are grouped
    /// by owner and each group is sent as requests of at most
    /// [`ClientConfig::batch_max_items`] keys (fewer if the keys are long); the groups run in
    /// parallel, each with up to [`ClientConfig::batch_parallelism`] requests in flight.
    /// Fails if any request fails.
    pub async fn get_many(
        &self,
        namespace: &Namespace,
        keys: &[Key],
    ) -> Result<Vec<Option<Entry>>, Error> {
        let config = &self.inner.config;
        let budget = Budget {
            frame_bytes: config.batch_frame_bytes,
            streamed_bytes: u64::MAX,
            max_items: batch::get_batch_len(config.limits.max_frame_bytes, config.batch_max_items),
        };
        let mut results: Vec<Option<Entry>> = keys.iter().map(|_| None).collect();
        // Owned items: a stream of futures that borrow their argument would make this call's
        // future lose `Send` (rustc cannot prove it for every lifetime).
        let mut pending: Vec<(usize, Key)> = keys.iter().cloned().enumerate().collect();
        for _ in 0..=MAX_REDIRECTS {
            if pending.is_empty() {
                return Ok(results);
            }
            let groups = self.plan_groups(
                namespace,
                std::mem::take(&mut pending),
                budget,
                |(_, key)| ItemCost::of_get(key.as_str()),
            )?;
            for outcome in self
                .run_groups(groups, |chunk| self.get_chunk(namespace, chunk))
                .await
            {
                match outcome? {
                    Chunk::Done(found) => {
                        for (i, entry) in found {
                            results[i] = entry;
                        }
                    }
                    Chunk::Split(items) => pending.extend(items),
                }
            }
        }
        if pending.is_empty() {
            return Ok(results);
        }
        Err(not_converging("get_many", pending.len()))
    }

    async fn get_chunk(
        &self,
        namespace: &Namespace,
        chunk: Vec<(usize, Key)>,
    ) -> Result<Chunk<Option<Entry>, (usize, Key)>, Error> {
        let names: Vec<&str> = chunk.iter().map(|(_, k)| k.as_str()).collect();
        let mut frame = self.frame(Request::GetMany {
            namespace: namespace.to_string(),
            keys: names.iter().map(|&k| k.to_owned()).collect(),
        });
        let routed = self
            .call_routed(&mut frame, &[], namespace.as_str(), &names)
            .await?;
        let (response, bodies) = match routed {
            Routed::Split => return Ok(Chunk::Split(chunk)),
            Routed::Answer(response, bodies) => (response, bodies),
        };
        match response {
            Response::Entries(entries) if entries.len() == chunk.len() => {
                let mut bodies = bodies.into_iter();
                let mut found = Vec::with_capacity(chunk.len());
                for ((i, _), entry) in chunk.into_iter().zip(entries) {
                    found.push((
                        i,
                        entry.map(|e| entry_from_wire(e, &mut bodies)).transpose()?,
                    ));
                }
                Ok(Chunk::Done(found))
            }
            Response::Entries(entries) => Err(Error::Protocol(format!(
                "asked for {} keys, got {} answers",
                chunk.len(),
                entries.len()
            ))),
            other => Err(unexpected("get_many", &other)),
        }
    }

    /// Stores many values, all expiring after `ttl`; one outcome per item, in order. Items
    /// are grouped by owner; each group is sent as requests within the batch budgets of the
    /// configuration (inline bytes per frame, streamed bytes, item count), the groups in
    /// parallel, each with up to [`ClientConfig::batch_parallelism`] requests in flight;
    /// large values are streamed. A request that fails as a whole fails each of its items
    /// with the same error. Retried like [`Client::set`].
    pub async fn set_many(
        &self,
        namespace: &Namespace,
        items: Vec<(Key, Value)>,
        ttl: Option<Duration>,
    ) -> Vec<Result<(), Error>> {
        let config = &self.inner.config;
        let count = items.len();
        let mut pending: Vec<(usize, PreparedItem)> = items
            .into_iter()
            .enumerate()
            .map(|(i, (key, value))| {
                // The wire form holds the value's own buffers (streamed ones uncopied); the
                // original is dropped here.
                let (wire, streamed) = wire::split_value(&value, config.inline_limit);
                let key = key.to_string();
                (
                    i,
                    PreparedItem {
                        key,
                        wire,
                        streamed,
                    },
                )
            })
            .collect();
        let budget = Budget {
            frame_bytes: config.batch_frame_bytes,
            streamed_bytes: config.batch_streamed_bytes,
            max_items: config.batch_max_items,
        };
        let ttl_ms = ttl.map(ttl_ms);
        let mut results: Vec<Option<Result<(), Error>>> = (0..count).map(|_| None).collect();
        for _ in 0..=MAX_REDIRECTS {
            if pending.is_empty() {
                break;
            }
            let cost = |(_, item): &(usize, PreparedItem)| {
                ItemCost::of_set(
                    &item.key,
                    &item.wire.format,
                    item.wire.body.len(),
                    item.streamed.is_some(),
                )
            };
            let groups = match self.plan_groups_by(
                namespace,
                std::mem::take(&mut pending),
                budget,
                |(_, item)| item.key.as_str(),
                cost,
            ) {
                Ok(groups) => groups,
                Err((e, items)) => {
                    for (i, _) in items {
                        results[i] = Some(Err(e.clone()));
                    }
                    break;
                }
            };
            for outcome in self
                .run_groups(groups, |chunk| self.set_chunk(namespace, chunk, ttl_ms))
                .await
            {
                match outcome {
                    Chunk::Done(outcomes) => {
                        for (i, outcome) in outcomes {
                            results[i] = Some(outcome);
                        }
                    }
                    Chunk::Split(items) => pending.extend(items),
                }
            }
        }
        let stuck = pending.len();
        for (i, _) in pending {
            results[i] = Some(Err(not_converging("set_many", stuck)));
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(Error::Protocol("a batch item got no outcome".into())))
            })
            .collect()
    }

    async fn set_chunk(
        &self,
        namespace: &Namespace,
        chunk: Vec<(usize, PreparedItem)>,
        ttl_ms: Option<u64>,
    ) -> Chunk<Result<(), Error>, (usize, PreparedItem)> {
        let count = chunk.len();
        let bodies: Vec<Bytes> = chunk
            .iter()
            .flat_map(|(_, item)| item.streamed.iter().flatten().cloned())
            .collect();
        let names: Vec<&str> = chunk.iter().map(|(_, item)| item.key.as_str()).collect();
        let mut frame = self.frame(Request::SetMany {
            namespace: namespace.to_string(),
            ttl_ms,
            items: chunk
                .iter()
                .map(|(_, item)| (item.key.clone(), item.wire.clone()))
                .collect(),
        });
        let outcome = match self
            .call_routed(&mut frame, &bodies, namespace.as_str(), &names)
            .await
        {
            Ok(Routed::Split) => return Chunk::Split(chunk),
            Ok(Routed::Answer(Response::StoredMany(outcomes), _)) if outcomes.len() == count => {
                return Chunk::Done(
                    chunk
                        .iter()
                        .zip(outcomes)
                        .map(|((i, _), o)| (*i, o.map_or(Ok(()), |e: WireError| Err(e.into()))))
                        .collect(),
                );
            }
            Ok(Routed::Answer(Response::StoredMany(outcomes), _)) => Error::Protocol(format!(
                "sent {count} items, got {} outcomes",
                outcomes.len()
            )),
            Ok(Routed::Answer(other, _)) => unexpected("set_many", &other),
            Err(e) => e,
        };
        Chunk::Done(
            chunk
                .iter()
                .map(|(i, _)| (*i, Err(outcome.clone())))
                .collect(),
        )
    }

    /// Groups `items` by the owner of their key under the current ring and cuts each group
    /// into requests within `budget`.
    fn plan_groups(
        &self,
        namespace: &Namespace,
        items: Vec<(usize, Key)>,
        budget: Budget,
        cost: impl Fn(&(usize, Key)) -> ItemCost,
    ) -> Result<Groups<(usize, Key)>, Error> {
        self.plan_groups_by(namespace, items, budget, |(_, key)| key.as_str(), cost)
            .map_err(|(e, _)| e)
    }

    /// [`Client::plan_groups`] for any item with a key; on failure, the error and the items.
    fn plan_groups_by<I>(
        &self,
        namespace: &Namespace,
        items: Vec<I>,
        budget: Budget,
        key: impl Fn(&I) -> &str,
        cost: impl Fn(&I) -> ItemCost,
    ) -> Result<Groups<I>, (Error, Vec<I>)> {
        let ring = self.current_ring();
        let groups = match routing::group_by_owner(
            &ring,
            namespace.as_str(),
            items.iter().map(&key).enumerate(),
        ) {
            Ok(groups) => groups,
            Err(e) => return Err((e, items)),
        };
        let mut slots: Vec<Option<I>> = items.into_iter().map(Some).collect();
        Ok(groups
            .into_values()
            .map(|positions| {
                let group: Vec<I> = positions
                    .into_iter()
                    .filter_map(|p| slots.get_mut(p).and_then(Option::take))
                    .collect();
                let costs: Vec<ItemCost> = group.iter().map(&cost).collect();
                let mut rest = group.into_iter();
                batch::plan(&costs, budget)
                    .into_iter()
                    .map(|range| rest.by_ref().take(range.len()).collect())
                    .collect()
            })
            .collect())
    }

    /// Runs the requests of every group: the groups in parallel, each with up to
    /// `batch_parallelism` requests in flight. Outcomes in no particular order.
    async fn run_groups<I, O, F, Fut>(&self, groups: Groups<I>, send: F) -> Vec<O>
    where
        F: Fn(Vec<I>) -> Fut,
        Fut: std::future::Future<Output = O>,
    {
        let parallelism = self.inner.config.batch_parallelism;
        futures::future::join_all(groups.into_iter().map(|chunks| {
            futures::stream::iter(chunks)
                .map(&send)
                .buffer_unordered(parallelism)
                .collect::<Vec<O>>()
        }))
        .await
        .into_iter()
        .flatten()
        .collect()
    }
}

/// The error for batch items still without an owner after [`MAX_REDIRECTS`] rounds.
fn not_converging(kind: &str, items: usize) -> Error {
    Error::Routing(format!(
        "routing does not converge: {items} {kind} items still changed owner after {MAX_REDIRECTS} rounds"
    ))
}

/// A listed key, checked.
fn parse_listed(key: String) -> Result<Key, Error> {
    Key::new(&key).map_err(|e| Error::Protocol(format!("node listed a bad key: {e}")))
}

/// A node's statistics, parsed.
fn parse_stats(json: &str) -> Result<serde_json::Value, Error> {
    serde_json::from_str(json)
        .map_err(|e| Error::Protocol(format!("node statistics are not JSON: {e}")))
}

/// A `set_many` item in wire form, with the buffers to stream if it is large.
struct PreparedItem {
    key: String,
    wire: WireValue,
    streamed: Option<[Bytes; 2]>,
}

/// Milliseconds of a TTL for the wire; a non-zero TTL never rounds down to zero.
fn ttl_ms(ttl: Duration) -> u64 {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 && !ttl.is_zero() { 1 } else { ms }
}

/// Rebuilds an entry from its wire form, taking its payload from `streamed` if it followed
/// the frame, and checks the payload against the checksum in its metadata.
pub(crate) fn entry_from_wire(
    entry: WireEntry,
    streamed: &mut impl Iterator<Item = Bytes>,
) -> Result<Entry, Error> {
    let payload = match entry.body {
        Body::Inline(bytes) => bytes,
        Body::Streamed(_) => streamed
            .next()
            .ok_or_else(|| Error::Protocol("a streamed value's bytes are missing".into()))?,
    };
    let checksum = strata_proto::checksum(&payload);
    if checksum != entry.meta.checksum {
        return Err(Error::Protocol(format!(
            "value fails its checksum (computed {checksum:08x}, metadata says {:08x})",
            entry.meta.checksum
        )));
    }
    let value = wire::join_value(&entry.meta.format, payload)
        .map_err(|e| Error::Protocol(format!("node sent a value that does not decode: {e}")))?;
    Ok(Entry {
        meta: entry.meta,
        value,
    })
}

/// The error for an answer of the wrong kind.
pub(crate) fn unexpected(request: &str, response: &Response) -> Error {
    Error::Protocol(format!(
        "node answered a {request} request with {}",
        response.kind()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::{Timestamp, Version};

    /// Compiles only if a client can be shared across tasks and its calls spawned.
    #[allow(dead_code)]
    fn clients_and_their_calls_are_send(client: &Client, ns: &Namespace, keys: &[Key]) {
        fn shared<T: Clone + Send + Sync + 'static>(_: &T) {}
        fn send<T: Send>(_: T) {}
        shared(client);
        send(client.get(ns, &keys[0]));
        send(client.set(ns, &keys[0], Value::from(Vec::new()), None));
        send(client.get_many(ns, keys));
        send(client.set_many(ns, Vec::new(), None));
        send(client.list_keys(ns, None, true));
        send(client.list_keys_page(ns, None, true, None, 10));
        send(client.clear(ns, None));
        send(client.stats());
        send(client.cluster_stats());
        send(client.members());
        send(client.refresh_ring());
        send(client.leave(NodeId(1)));
    }

    #[test]
    fn ttls_keep_millisecond_precision_and_never_round_to_zero() {
        assert_eq!(ttl_ms(Duration::from_secs(2)), 2000);
        assert_eq!(ttl_ms(Duration::from_micros(10)), 1);
        assert_eq!(ttl_ms(Duration::ZERO), 0);
        assert_eq!(ttl_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn entries_are_rebuilt_from_inline_or_streamed_payloads() {
        let value = Value::from(b"hello".to_vec());
        let entry = Entry::new(value.clone(), Timestamp(1), None, Version::ZERO);
        let inline = WireEntry {
            meta: entry.meta.clone(),
            body: Body::Inline(Bytes::from_static(b"hello")),
        };
        assert_eq!(
            entry_from_wire(inline, &mut std::iter::empty()).unwrap(),
            entry
        );
        let streamed = WireEntry {
            meta: entry.meta.clone(),
            body: Body::Streamed(5),
        };
        let mut bodies = vec![Bytes::from_static(b"hello")].into_iter();
        assert_eq!(
            entry_from_wire(streamed.clone(), &mut bodies).unwrap(),
            entry
        );
        assert!(matches!(
            entry_from_wire(streamed, &mut std::iter::empty()),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn corrupt_payloads_are_refused() {
        let entry = Entry::new(
            Value::from(b"hello".to_vec()),
            Timestamp(1),
            None,
            Version::ZERO,
        );
        let corrupt = WireEntry {
            meta: entry.meta,
            body: Body::Inline(Bytes::from_static(b"jello")),
        };
        let err = entry_from_wire(corrupt, &mut std::iter::empty()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
