//! Ring-aware routing: which node a request goes to, and what happens when that node says
//! it is the wrong one or cannot be reached.
//!
//! # State
//! The client keeps the newest [`Ring`] it has seen (replaced only by a ring of the same or a
//! higher epoch), one [`NodeConnection`] per member (made lazily, keyed by member id, made
//! again if the member's address changes, dropped when the member leaves the ring), and a
//! pool of connections by socket address, so that a seed and the member it turns out to be
//! share one connection. All connections use the client's one QUIC endpoint.
//!
//! # Keyed requests
//! A request about keys (`get`, `set`, ..., and each batch request) goes to the owner of its
//! keys under the current ring and carries that ring's epoch. Then:
//! - **Redirect**: the node does not own the keys at its epoch and sends its ring. The client
//!   adopts it if it is at least as new as its own and sends the request again, to the new
//!   owner. A redirect that teaches nothing new (the node's ring is not newer than ours)
//!   means the node and the client disagree at the same epoch, so the client pauses (the
//!   retry backoff) and fetches the ring from the other members. After [`MAX_REDIRECTS`]
//!   redirects the call fails with [`Error::Routing`] ("routing does not converge").
//! - **Transport failure** (timeout, lost connection): the member may be gone. The client
//!   fetches the ring again from any member, asking the failed one last, and retries under
//!   the usual policy ([`ClientConfig::retries`](crate::ClientConfig), doubling backoff): a
//!   member marked down has handed its partitions to their replicas in the new ring.
//! - **Retryable node errors** (`Unavailable`, `Timeout`, `NotReady`): retried under the
//!   same policy, routed afresh each time.
//! - **Failover**: a read the owner cannot answer (transport failure, or `NotReady`: its
//!   lease lapsed or it is rejoining) is sent to the key's other replicas as a
//!   `ReplicaRead`, which a replica answers only when it cannot be stale. An owner that has
//!   not answered within [`SLOW_OWNER`] gets the same treatment while its attempt runs, and
//!   the client fetches the ring meanwhile: once the keys have a new owner, the attempt is
//!   abandoned and the request goes there. An owner whose last attempt failed in the
//!   transport gets only [`WATCH_INTERVAL`] on the next one.
//!
//! A batch request whose keys no longer share one owner after a ring change is handed back
//! to the batch call, which groups its keys again by the new ring.
//!
//! # Which address of a member
//! A member has the address its peers dial (`addr`) and may advertise another for clients
//! outside the members' network (`client_addr`: a container port published on the host, a
//! NAT), like Kafka's internal and external listeners. The client decides once, when it
//! connects ([`ClientConfig::addresses`](crate::ClientConfig)): by default
//! ([`AddressSelection::Auto`]) it dials every member at its `client_addr` if the seed that
//! answered is some member's `client_addr` and no member's `addr` (compared as written, or as
//! socket addresses), and at `addr` otherwise. A member without a `client_addr` is always
//! dialled at `addr`.
//!
//! # Fetching the ring
//! Refreshes are single-flight: concurrent requests that fail together wait for one refresh
//! instead of each starting their own. A refresh asks candidate nodes one after another,
//! starting the next one every [`HEDGE_DELAY`] while earlier ones have not answered, and takes
//! the first ring that arrives and is not older than the one the client has; a dead member
//! therefore costs a fraction of a second, not a connect timeout, and a member that is behind
//! does not hide a newer ring from the others.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use parking_lot::{Mutex, RwLock};
use strata_proto::wire::{ErrorCode, Request, RequestFrame, Response};
use strata_proto::{Member, MemberState, NodeId, PartitionTable, Ring, RingParams};

use crate::client::{Client, unexpected};
use crate::connection::{self, NodeConnection};
use crate::error::Error;

/// Redirects one request follows before giving up with [`Error::Routing`]. A single
/// ownership change costs one redirect; eight leaves room for a few changes in a row while
/// bounding a loop between nodes that disagree.
pub const MAX_REDIRECTS: u32 = 8;

/// While fetching the ring, how long to wait for one node before also asking the next.
pub const HEDGE_DELAY: Duration = Duration::from_millis(200);

/// The routing state of a client.
pub(crate) struct Routes {
    /// The newest ring seen.
    ring: RwLock<Arc<Ring>>,
    /// One link per member, by id, with the address it was made for.
    links: Mutex<HashMap<NodeId, Link>>,
    /// Every connection, by the socket address it connects to.
    pool: Mutex<HashMap<SocketAddr, Arc<NodeConnection>>>,
    /// The seed that answered at connect time: `ping` and `stats` ask it.
    primary: OnceLock<Arc<NodeConnection>>,
    /// Held while the ring is being fetched, so that only one refresh runs at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// Refreshes completed, so a task that waited for another's refresh can skip its own.
    refreshes: std::sync::atomic::AtomicU64,
    /// Whether members are dialled at their `client_addr` (decided at connect time).
    client_addrs: std::sync::atomic::AtomicBool,
}

/// Which of a member's addresses a client dials (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AddressSelection {
    /// `client_addr` if the seed that answered is a member's `client_addr` and no member's
    /// `addr`; otherwise `addr`.
    #[default]
    Auto,
    /// Always `addr`, the address peers dial.
    Advertised,
    /// `client_addr` wherever a member has one.
    Client,
}

/// Whether a client that reached the cluster through `seed` (resolved to `remote`) should
/// dial the members' `client_addr` under [`AddressSelection::Auto`]: `seed` is some member's
/// `client_addr` and no member's `addr`, comparing addresses as written or as socket
/// addresses.
pub fn reached_through_client_addr(ring: &Ring, seed: &str, remote: SocketAddr) -> bool {
    let same = |addr: &str| addr == seed || addr.parse::<SocketAddr>().ok() == Some(remote);
    let external = ring
        .members
        .iter()
        .any(|m| m.client_addr.as_deref().is_some_and(same));
    external && !ring.members.iter().any(|m| same(&m.addr))
}

struct Link {
    addr: String,
    conn: Arc<NodeConnection>,
}

impl Routes {
    /// Routing state before the first ring is known.
    pub(crate) fn new() -> Self {
        Self {
            ring: RwLock::new(Arc::new(Ring {
                epoch: 0,
                params: RingParams::default(),
                members: Vec::new(),
                table: PartitionTable::default(),
                moving: 0,
                leader: None,
            })),
            links: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            primary: OnceLock::new(),
            refreshing: tokio::sync::Mutex::new(()),
            refreshes: std::sync::atomic::AtomicU64::new(0),
            client_addrs: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Every connection made so far.
    pub(crate) fn connections(&self) -> Vec<Arc<NodeConnection>> {
        self.pool.lock().values().cloned().collect()
    }
}

/// The outcome of a keyed request.
pub(crate) enum Routed {
    /// The owner's answer (never a redirect or an error answer).
    Answer(Response, Vec<Bytes>),
    /// The request's keys no longer have a single owner under the current ring; nothing was
    /// sent for them since the ring changed. Group them again.
    Split,
}

/// How long an owner may take to answer before the client also looks elsewhere: reads go to
/// the replicas too, and the ring is fetched in case the owner was replaced.
pub const SLOW_OWNER: Duration = Duration::from_millis(500);

/// Once the owner is slow, how often the client tries the replicas and fetches the ring
/// again while the attempt runs: a failover shows within this time of the new epoch.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// The outcome of an attempt on an owner.
enum Watched {
    /// The owner answered, or failed.
    Answer(Result<(Response, Vec<Bytes>), Error>),
    /// The keys have a new owner: route again.
    Moved,
}

/// Whether a request only reads (and so may be answered by a replica).
fn is_read(request: &Request) -> bool {
    matches!(
        request,
        Request::Get { .. }
            | Request::GetMany { .. }
            | Request::Exists { .. }
            | Request::Metadata { .. }
    )
}

/// Whether the owner failed in a way that another replica may make up for.
fn fails_over(e: &Error) -> bool {
    is_transport(e) || e.server_code() == Some(ErrorCode::NotReady)
}

/// Whether an error is the transport's (the node may be gone), not the node's.
fn is_transport(e: &Error) -> bool {
    matches!(e, Error::Timeout { .. } | Error::ConnectionLost { .. })
}

/// Whether to send a request again after `e`: retryable, and not a routing failure (which
/// already is the end of retrying).
fn worth_retrying(e: &Error) -> bool {
    e.is_retryable() && !matches!(e, Error::Routing(_))
}

/// The single owner of `keys` under `ring`; `None` if they have several owners.
pub(crate) fn owner_of_all(
    ring: &Ring,
    namespace: &str,
    keys: &[&str],
) -> Result<Option<NodeId>, Error> {
    let mut owner = None;
    for key in keys {
        let this = owner_of(ring, namespace, key)?;
        match owner {
            None => owner = Some(this),
            Some(o) if o != this => return Ok(None),
            Some(_) => {}
        }
    }
    Ok(owner)
}

/// The owner of one key under `ring`.
pub(crate) fn owner_of(ring: &Ring, namespace: &str, key: &str) -> Result<NodeId, Error> {
    let partition = ring.partition_of(namespace, key);
    ring.table.owner(partition).ok_or_else(|| {
        Error::Routing(format!(
            "the ring at epoch {} gives partition {partition} no owner",
            ring.epoch
        ))
    })
}

/// Positions of `keys` grouped by owner under `ring`, each group in input order.
pub(crate) fn group_by_owner<'a>(
    ring: &Ring,
    namespace: &str,
    keys: impl IntoIterator<Item = (usize, &'a str)>,
) -> Result<BTreeMap<NodeId, Vec<usize>>, Error> {
    let mut groups: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
    for (i, key) in keys {
        groups
            .entry(owner_of(ring, namespace, key)?)
            .or_default()
            .push(i);
    }
    Ok(groups)
}

/// Members that may hold data: every member not marked down.
pub(crate) fn live_members(ring: &Ring) -> Vec<Member> {
    ring.members
        .iter()
        .filter(|m| m.state != MemberState::Down)
        .cloned()
        .collect()
}

impl Client {
    pub(crate) fn routes(&self) -> &Routes {
        &self.inner.routes
    }

    /// A fresh request id.
    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The ring requests are routed by now.
    pub(crate) fn current_ring(&self) -> Arc<Ring> {
        self.routes().ring.read().clone()
    }

    /// A frame for `request`, stamped with the current ring's epoch.
    pub(crate) fn frame(&self, request: Request) -> RequestFrame {
        RequestFrame {
            id: self.next_id(),
            epoch: self.current_ring().epoch,
            request,
        }
    }

    /// Makes `ring` the one to route by if it is at least as new as the current one; whether
    /// it was taken. `source` is the connection it came from: a standalone node's ring
    /// (epoch 0, one member) is served through that connection whatever address the node
    /// gives for itself.
    pub(crate) fn adopt(&self, ring: Ring, source: Option<&Arc<NodeConnection>>) -> bool {
        let routes = self.routes();
        {
            let mut current = routes.ring.write();
            if ring.epoch < current.epoch {
                return false;
            }
            if ring.epoch > current.epoch {
                tracing::debug!(
                    from = current.epoch,
                    to = ring.epoch,
                    "adopting a newer ring"
                );
            }
            *current = Arc::new(ring);
        }
        let ring = self.current_ring();
        let mut links = routes.links.lock();
        links.retain(|id, _| ring.member(*id).is_some());
        if let (Some(source), [member]) = (source, ring.members.as_slice())
            && ring.epoch == 0
        {
            links.insert(
                member.id,
                Link {
                    addr: member.addr.clone(),
                    conn: source.clone(),
                },
            );
        }
        drop(links);
        // Close connections nothing refers to any more (members that left the ring): the
        // pool's own reference is then the only one.
        routes.pool.lock().retain(|_, conn| {
            let referenced = Arc::strong_count(conn) > 1;
            if !referenced {
                conn.close();
            }
            referenced
        });
        true
    }

    /// The connection to the node at `addr`, from the pool or made (lazily connecting).
    pub(crate) async fn connection_to(&self, addr: &str) -> Result<Arc<NodeConnection>, Error> {
        let remote = connection::resolve(addr).await?;
        if let Some(conn) = self.routes().pool.lock().get(&remote) {
            return Ok(conn.clone());
        }
        let inner = &*self.inner;
        let conn = Arc::new(NodeConnection::to(
            &inner.config,
            addr,
            remote,
            inner.endpoint.clone(),
            inner.quic.clone(),
        )?);
        Ok(self
            .routes()
            .pool
            .lock()
            .entry(remote)
            .or_insert(conn)
            .clone())
    }

    /// Decides which of the members' addresses to dial, once the seed at `seed` (resolved
    /// to `remote`) has answered with `ring` (see [`AddressSelection`]).
    pub(crate) fn choose_addresses(&self, ring: &Ring, seed: &str, remote: SocketAddr) {
        let client = match self.inner.config.addresses {
            AddressSelection::Auto => reached_through_client_addr(ring, seed, remote),
            AddressSelection::Advertised => false,
            AddressSelection::Client => true,
        };
        if client {
            tracing::debug!(seed, "dialling the members at their client addresses");
        }
        self.routes().client_addrs.store(client, Ordering::Release);
    }

    /// The address this client dials `member` at: its `client_addr` if the client uses
    /// client addresses and the member has one, else its `addr`.
    pub(crate) fn dial_addr<'m>(&self, member: &'m Member) -> &'m str {
        match &member.client_addr {
            Some(addr) if self.routes().client_addrs.load(Ordering::Acquire) => addr,
            _ => &member.addr,
        }
    }

    /// The link to a member, made if there is none or the member's address changed.
    pub(crate) async fn link(&self, member: &Member) -> Result<Arc<NodeConnection>, Error> {
        let addr = self.dial_addr(member);
        if let Some(link) = self.routes().links.lock().get(&member.id)
            && link.addr == addr
        {
            return Ok(link.conn.clone());
        }
        let conn = self.connection_to(addr).await?;
        self.routes().links.lock().insert(
            member.id,
            Link {
                addr: addr.to_owned(),
                conn: conn.clone(),
            },
        );
        Ok(conn)
    }

    /// The seed that answered at connect time.
    pub(crate) fn primary(&self) -> Result<Arc<NodeConnection>, Error> {
        self.routes()
            .primary
            .get()
            .cloned()
            .ok_or_else(|| Error::Config("the client is not connected".into()))
    }

    pub(crate) fn set_primary(&self, conn: Arc<NodeConnection>) {
        let _ = self.routes().primary.set(conn);
    }

    /// One attempt of `frame` on `conn`; a node's error answer becomes an error.
    pub(crate) async fn attempt(
        &self,
        conn: &NodeConnection,
        frame: &RequestFrame,
        bodies: &[Bytes],
    ) -> Result<(Response, Vec<Bytes>), Error> {
        match conn.exchange(frame, bodies).await {
            Ok((answer, _)) if answer.id != frame.id => Err(Error::Protocol(format!(
                "answer for request {} arrived on the stream of request {}",
                answer.id, frame.id
            ))),
            Ok((answer, bodies)) => match answer.response {
                Response::Error(e) => Err(Error::from(e)),
                response => Ok((response, bodies)),
            },
            Err(e) => Err(e),
        }
    }

    /// Sends `request` to the node behind `conn`, retrying retryable failures there. With
    /// `failover`, transport failures are returned at once (the caller tries another node).
    pub(crate) async fn call_on(
        &self,
        conn: &NodeConnection,
        request: Request,
        bodies: &[Bytes],
        failover: bool,
    ) -> Result<(Response, Vec<Bytes>), Error> {
        let retries = self.inner.config.retries;
        // One id for all attempts, so a node's logs tie the retries of a request together.
        let mut frame = self.frame(request);
        let mut retry = 0;
        loop {
            frame.epoch = self.current_ring().epoch;
            match self.attempt(conn, &frame, bodies).await {
                Err(e)
                    if worth_retrying(&e) && retry < retries && !(failover && is_transport(&e)) =>
                {
                    self.pause(&frame, conn.addr(), retry, &e).await;
                    retry += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// Sends `request` to `member`, retrying there.
    pub(crate) async fn call_member(
        &self,
        member: &Member,
        request: Request,
    ) -> Result<(Response, Vec<Bytes>), Error> {
        let conn = self.link(member).await?;
        self.call_on(&conn, request, &[], false).await
    }

    /// Sends `request` to any node: the primary first, then the members, then the seeds,
    /// moving on when one cannot be reached. Also says whether an attempt failed in a way
    /// that may have left the request applied with its answer lost (a timeout or a lost
    /// connection), so that a later "already done" error can be recognised.
    pub(crate) async fn call_any(
        &self,
        request: Request,
    ) -> (Result<(Response, Vec<Bytes>), Error>, bool) {
        let mut first_error = None;
        let mut maybe_applied = false;
        for conn in self.ring_sources(None).await {
            match self.call_on(&conn, request.clone(), &[], true).await {
                Err(e) if is_transport(&e) => {
                    tracing::debug!(node = conn.addr(), error = %e, "trying another node");
                    maybe_applied = true;
                    first_error.get_or_insert(e);
                }
                outcome => return (outcome, maybe_applied),
            }
        }
        let error =
            first_error.unwrap_or_else(|| Error::Routing("no node to send the request to".into()));
        (Err(error), maybe_applied)
    }

    /// Sends a keyed request to the owner of `keys` (all in `namespace`), following
    /// redirects and retrying as the module documentation says.
    pub(crate) async fn call_routed(
        &self,
        frame: &mut RequestFrame,
        bodies: &[Bytes],
        namespace: &str,
        keys: &[&str],
    ) -> Result<Routed, Error> {
        let retries = self.inner.config.retries;
        let (mut retry, mut redirects) = (0, 0);
        // The owner whose last attempt failed in the transport: the next attempt on it keeps
        // an eye on the cluster from the start instead of after `SLOW_OWNER`.
        let mut suspect: Option<NodeId> = None;
        loop {
            let ring = self.current_ring();
            let Some(owner) = owner_of_all(&ring, namespace, keys)? else {
                return Ok(Routed::Split);
            };
            let member = ring.member(owner).ok_or_else(|| {
                Error::Routing(format!(
                    "the ring at epoch {} names node {owner} as an owner but not as a member",
                    ring.epoch
                ))
            })?;
            let conn = self.link(member).await?;
            frame.epoch = ring.epoch;
            let patience = if suspect == Some(owner) {
                WATCH_INTERVAL
            } else {
                SLOW_OWNER
            };
            let outcome = match self
                .attempt_watching(&conn, frame, bodies, namespace, keys, owner, patience)
                .await
            {
                Watched::Answer(outcome) => outcome,
                Watched::Moved => continue,
            };
            // A read the owner could not answer (gone, frozen, lease lapsed): the replicas
            // may answer it when they cannot be stale.
            let outcome = match outcome {
                Err(e) if fails_over(&e) && is_read(&frame.request) => {
                    match self.read_from_replicas(frame, namespace, keys, owner).await {
                        Some(answer) => Ok(answer),
                        None => Err(e),
                    }
                }
                other => other,
            };
            match outcome {
                Ok((Response::Redirect(theirs), _)) => {
                    redirects += 1;
                    let their_epoch = theirs.epoch;
                    if redirects > MAX_REDIRECTS {
                        return Err(Error::Routing(format!(
                            "routing does not converge: the {} request was redirected {MAX_REDIRECTS} times (last by node {owner}, whose ring is at epoch {their_epoch}; ours is at {})",
                            frame.request.kind(),
                            self.current_ring().epoch
                        )));
                    }
                    tracing::debug!(
                        id = frame.id,
                        kind = frame.request.kind(),
                        node = %owner,
                        ours = ring.epoch,
                        theirs = their_epoch,
                        "redirected"
                    );
                    self.adopt(*theirs, None);
                    if self.current_ring().epoch <= ring.epoch {
                        // The node knows no newer ring than ours yet disowns the keys: one of
                        // us is behind. Give the cluster a moment, then ask the others.
                        tokio::time::sleep(self.inner.config.backoff(redirects - 1)).await;
                        if let Err(e) = self.refresh(Some(owner)).await {
                            tracing::debug!(error = %e, "refreshing the ring failed");
                        }
                    }
                }
                Ok((response, bodies)) => return Ok(Routed::Answer(response, bodies)),
                Err(e) if worth_retrying(&e) && retry < retries => {
                    suspect = is_transport(&e).then_some(owner);
                    if is_transport(&e)
                        && let Err(refresh) = self.refresh(Some(owner)).await
                    {
                        tracing::debug!(error = %refresh, "refreshing the ring failed");
                    }
                    self.pause(frame, conn.addr(), retry, &e).await;
                    retry += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt on the owner that keeps an eye on the cluster while the owner is slow to
    /// answer: after `patience` ([`SLOW_OWNER`], or [`WATCH_INTERVAL`] for an owner whose last
    /// attempt failed in the transport), and every [`WATCH_INTERVAL`] from then on, it sends a
    /// read to the replicas as well, and fetches the ring; if the keys have a new owner by
    /// then, the attempt is abandoned.
    #[allow(clippy::too_many_arguments)]
    async fn attempt_watching(
        &self,
        conn: &NodeConnection,
        frame: &RequestFrame,
        bodies: &[Bytes],
        namespace: &str,
        keys: &[&str],
        owner: NodeId,
        patience: Duration,
    ) -> Watched {
        let attempt = self.attempt(conn, frame, bodies);
        tokio::pin!(attempt);
        let mut wait = patience;
        loop {
            tokio::select! {
                outcome = &mut attempt => return Watched::Answer(outcome),
                _ = tokio::time::sleep(wait) => {}
            }
            wait = WATCH_INTERVAL;
            if is_read(&frame.request)
                && let Some(answer) = self.read_from_replicas(frame, namespace, keys, owner).await
            {
                return Watched::Answer(Ok(answer));
            }
            if let Err(e) = self.refresh(Some(owner)).await {
                tracing::debug!(error = %e, "refreshing the ring failed");
            }
            let ring = self.current_ring();
            if owner_of_all(&ring, namespace, keys).ok().flatten() != Some(owner) {
                tracing::debug!(node = %owner, "the owner did not answer and no longer owns the keys");
                return Watched::Moved;
            }
        }
    }

    /// Sends a read to the other replicas of `keys`, one at a time; the first answer.
    async fn read_from_replicas(
        &self,
        frame: &RequestFrame,
        namespace: &str,
        keys: &[&str],
        owner: NodeId,
    ) -> Option<(Response, Vec<Bytes>)> {
        let ring = self.current_ring();
        let mut candidates: Option<Vec<NodeId>> = None;
        for key in keys {
            let replicas = ring.table.replicas(ring.partition_of(namespace, key));
            candidates = Some(match candidates {
                None => replicas.to_vec(),
                Some(c) => c.into_iter().filter(|n| replicas.contains(n)).collect(),
            });
        }
        for node in candidates.unwrap_or_default() {
            if node == owner {
                continue;
            }
            let Some(member) = ring.member(node) else {
                continue;
            };
            let Ok(conn) = self.link(member).await else {
                continue;
            };
            let replica_frame = RequestFrame {
                id: frame.id,
                epoch: ring.epoch,
                request: Request::ReplicaRead(Box::new(frame.request.clone())),
            };
            match tokio::time::timeout(SLOW_OWNER * 2, self.attempt(&conn, &replica_frame, &[]))
                .await
            {
                Ok(Ok((Response::Redirect(theirs), _))) => {
                    self.adopt(*theirs, None);
                }
                Ok(Ok(answer)) => return Some(answer),
                Ok(Err(e)) => tracing::debug!(%node, error = %e, "replica read refused"),
                Err(_) => tracing::debug!(%node, "replica read timed out"),
            }
        }
        None
    }

    /// Sends a request about one key to its owner.
    pub(crate) async fn call_key(
        &self,
        namespace: &str,
        key: &str,
        request: Request,
        bodies: &[Bytes],
    ) -> Result<(Response, Vec<Bytes>), Error> {
        use tracing::Instrument as _;
        // One client span per call (retries and redirects included); recorded only when an
        // OpenTelemetry layer is installed, else disabled at its call site.
        let span = tracing::info_span!("strata.client", otel.kind = "client", op = request.kind());
        let mut frame = self.frame(request);
        let routed = self
            .call_routed(&mut frame, bodies, namespace, &[key])
            .instrument(span)
            .await?;
        match routed {
            Routed::Answer(response, bodies) => Ok((response, bodies)),
            // One key always has one owner.
            Routed::Split => Err(Error::Routing(format!("no single owner for key {key:?}"))),
        }
    }

    async fn pause(&self, frame: &RequestFrame, node: &str, retry: u32, error: &Error) {
        let pause = self.inner.config.backoff(retry);
        tracing::debug!(
            id = frame.id,
            kind = frame.request.kind(),
            node,
            retry = retry + 1,
            ?pause,
            %error,
            "retrying"
        );
        tokio::time::sleep(pause).await;
    }

    /// Asks the node behind `conn` for its ring. A node that is not in a cluster should
    /// answer a standalone ring of itself; one that answers a ring without members, or does
    /// not serve ring requests at all (a node from before clustering), is taken as
    /// standalone too: it owns every key.
    pub(crate) async fn fetch_ring(&self, conn: &Arc<NodeConnection>) -> Result<Ring, Error> {
        match self.call_on(conn, Request::Ring, &[], true).await {
            Ok((Response::Ring(ring), _)) if !ring.members.is_empty() => Ok(*ring),
            Ok((Response::Ring(ring), _)) => self.standalone(conn, ring.params).await,
            Ok((other, _)) => Err(unexpected("ring", &other)),
            Err(e) if e.server_code() == Some(ErrorCode::Forbidden) => {
                self.standalone(conn, RingParams::default()).await
            }
            Err(e) => Err(e),
        }
    }

    /// The ring of the standalone node behind `conn`: itself, owning every partition.
    async fn standalone(
        &self,
        conn: &Arc<NodeConnection>,
        params: RingParams,
    ) -> Result<Ring, Error> {
        let params = if params.partitions == 0 {
            RingParams::default()
        } else {
            params
        };
        match self.call_on(conn, Request::Ping, &[], true).await? {
            (Response::Pong { node, .. }, _) => {
                let member = Member {
                    id: node,
                    addr: conn.addr().to_owned(),
                    admin: String::new(),
                    state: MemberState::Active,
                    client_addr: None,
                };
                Ok(Ring::standalone(member, params))
            }
            (other, _) => Err(unexpected("ping", &other)),
        }
    }

    /// Where to ask for the ring, in order: the primary, the members not marked down, the
    /// seeds; `failed` last. Each connection once.
    async fn ring_sources(&self, failed: Option<NodeId>) -> Vec<Arc<NodeConnection>> {
        let ring = self.current_ring();
        let mut first = Vec::new();
        let mut last = Vec::new();
        if let Ok(primary) = self.primary() {
            first.push(primary);
        }
        for member in &ring.members {
            let Ok(conn) = self.link(member).await else {
                continue;
            };
            if Some(member.id) == failed || member.state == MemberState::Down {
                last.push(conn);
            } else {
                first.push(conn);
            }
        }
        for seed in self.inner.config.seed_addrs() {
            if let Ok(conn) = self.connection_to(seed).await {
                first.push(conn);
            }
        }
        // The failed member's connection goes last even if it came first as the primary or
        // a seed.
        first.retain(|c| !last.iter().any(|l| Arc::ptr_eq(l, c)));
        first.extend(last);
        let mut unique: Vec<Arc<NodeConnection>> = Vec::new();
        for conn in first {
            if !unique.iter().any(|u| Arc::ptr_eq(u, &conn)) {
                unique.push(conn);
            }
        }
        unique
    }

    /// Fetches the ring from the cluster (see the module documentation) and adopts it if it
    /// is not older than the current one; the ring routed by afterwards. If another refresh
    /// finished while this one waited to start, its result is used.
    pub(crate) async fn refresh(&self, failed: Option<NodeId>) -> Result<Arc<Ring>, Error> {
        let routes = self.routes();
        let seen = routes.refreshes.load(Ordering::Acquire);
        let _refreshing = routes.refreshing.lock().await;
        if routes.refreshes.load(Ordering::Acquire) != seen {
            return Ok(self.current_ring());
        }
        let sources = self.ring_sources(failed).await;
        let result = self.fetch_ring_hedged(&sources).await;
        routes.refreshes.fetch_add(1, Ordering::AcqRel);
        let (ring, source) = result?;
        self.adopt(ring, Some(&source));
        Ok(self.current_ring())
    }

    /// Asks `sources` for the ring, starting one more every [`HEDGE_DELAY`]; the first ring
    /// that arrives and is not older than the current one, with its source. A node that is
    /// behind (or was removed and kept its last ring) does not end the search; if no node
    /// knows anything newer, the newest stale ring is returned (and not adopted).
    async fn fetch_ring_hedged(
        &self,
        sources: &[Arc<NodeConnection>],
    ) -> Result<(Ring, Arc<NodeConnection>), Error> {
        let current = self.current_ring().epoch;
        let mut asking: FuturesUnordered<_> = sources
            .iter()
            .zip(0u32..)
            .map(|(conn, i)| async move {
                tokio::time::sleep(HEDGE_DELAY * i).await;
                (self.fetch_ring(conn).await, conn)
            })
            .collect();
        let mut stale: Option<(Ring, Arc<NodeConnection>)> = None;
        let mut first_error = None;
        while let Some((outcome, conn)) = asking.next().await {
            match outcome {
                Ok(ring) if ring.epoch >= current => return Ok((ring, conn.clone())),
                Ok(ring) => {
                    tracing::debug!(
                        node = conn.addr(),
                        epoch = ring.epoch,
                        current,
                        "stale ring"
                    );
                    if stale.as_ref().is_none_or(|(s, _)| s.epoch < ring.epoch) {
                        stale = Some((ring, conn.clone()));
                    }
                }
                Err(e) => {
                    tracing::debug!(node = conn.addr(), error = %e, "no ring from this node");
                    first_error.get_or_insert(e);
                }
            }
        }
        match (stale, first_error) {
            (Some(stale), _) => Ok(stale),
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::Routing("no node to ask for the ring".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(owners: &[u64]) -> Ring {
        let members = [1, 2]
            .into_iter()
            .map(|id| Member {
                id: NodeId(id),
                addr: format!("127.0.0.1:{id}"),
                admin: String::new(),
                state: MemberState::Active,
                client_addr: None,
            })
            .collect();
        Ring {
            epoch: 3,
            params: RingParams {
                partitions: owners.len() as u32,
                vnodes: 1,
                replication: 1,
            },
            members,
            table: PartitionTable::from_replicas(owners.iter().map(|&o| vec![NodeId(o)]).collect()),
            moving: 0,
            leader: None,
        }
    }

    /// A key of `ring` in partition `p`.
    fn key_in(ring: &Ring, p: u32) -> String {
        (0..)
            .map(|i| format!("k{i}"))
            .find(|k| ring.partition_of("default", k) == p)
            .unwrap_or_default()
    }

    #[test]
    fn keys_are_grouped_by_owner_in_input_order() {
        let ring = ring(&[1, 2, 1, 2]);
        let keys: Vec<String> = [0, 1, 2, 3, 1, 0]
            .iter()
            .map(|&p| key_in(&ring, p))
            .collect();
        let groups = group_by_owner(
            &ring,
            "default",
            keys.iter().map(String::as_str).enumerate(),
        )
        .unwrap_or_default();
        assert_eq!(groups[&NodeId(1)], vec![0, 2, 5]);
        assert_eq!(groups[&NodeId(2)], vec![1, 3, 4]);
        let a = key_in(&ring, 0);
        let b = key_in(&ring, 2);
        let c = key_in(&ring, 1);
        assert_eq!(
            owner_of_all(&ring, "default", &[&a, &b]).ok().flatten(),
            Some(NodeId(1))
        );
        assert_eq!(
            owner_of_all(&ring, "default", &[&a, &c]).ok().flatten(),
            None
        );
    }

    #[test]
    fn a_partition_without_owner_is_a_routing_error() {
        let mut ring = ring(&[1, 2]);
        ring.table.set_replicas(0, Vec::new());
        let k = key_in(&ring, 0);
        let err = owner_of(&ring, "default", &k).err();
        assert!(matches!(err, Some(Error::Routing(_))), "{err:?}");
    }

    #[test]
    fn client_addresses_are_used_only_when_the_seed_is_one_of_them() {
        let mut ring = ring(&[1, 2]);
        for m in &mut ring.members {
            m.addr = format!("strata-{}:7400", m.id.0);
            m.client_addr = Some(format!("127.0.0.1:{}", 17400 + m.id.0));
        }
        let remote = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        // Through a published port, as written or under another name of the same socket.
        assert!(reached_through_client_addr(
            &ring,
            "127.0.0.1:17402",
            remote(17402)
        ));
        assert!(reached_through_client_addr(
            &ring,
            "localhost:17401",
            remote(17401)
        ));
        // Through a member's own address (inside the members' network).
        assert!(!reached_through_client_addr(
            &ring,
            "strata-1:7400",
            remote(7400)
        ));
        // Through something that is neither (a load balancer): the members' addresses.
        assert!(!reached_through_client_addr(&ring, "lb:9000", remote(9000)));
        // Members without client addresses.
        for m in &mut ring.members {
            m.client_addr = None;
        }
        assert!(!reached_through_client_addr(
            &ring,
            "127.0.0.1:17401",
            remote(17401)
        ));
    }
}
