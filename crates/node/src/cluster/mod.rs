//! The node's place in the cluster: Raft for the metadata, the ring it routes by, and the
//! hand-off of partitions when members come and go.
//!
//! - [`Cluster`] owns the Raft instance (or, for a node that is in no cluster, a fixed
//!   ring in which it owns everything), publishes the [`Ring`] at every epoch, checks
//!   ownership for the request service, and carries out joins, leaves and proposals, sending
//!   them to the Raft leader when this node is not it.
//! - [`peers`]: QUIC links to the other members.
//! - [`network`]: openraft's RPCs on those links.
//! - [`membership`]: the membership actor, which watches the state machine: it refreshes
//!   the ring, starts partition transfers, and — on the leader — keeps Raft's voters and
//!   learners in line with the members.
//! - [`status`]: what the node reports about its place in the cluster: Raft term and
//!   leader, partitions by role, readiness (for `/ready`, `/stats` and the metrics).
//! - [`handoff`]: partition transfers, both sides, and the writes forwarded to a partition's
//!   incoming holders while it moves.
//!
//! # The hand-off rule
//! A partition changes hands only when its transfer is complete: the state machine keeps
//! the table in effect (`table`) apart from where placement wants partitions (`target`);
//! new holders pull the data from a current holder, then report it through Raft, and only
//! that report moves the partition in `table` and bumps the epoch. Until then every request
//! still goes to the old owner, which forwards each write to the incoming holders as well.

pub mod handoff;
pub mod lease;
pub mod membership;
pub mod network;
pub mod peers;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft};
use parking_lot::RwLock;
use strata_proto::NodeId;
use strata_proto::ring::{Member, MemberState, PartitionId, Ring, RingParams};
use strata_proto::wire::{ErrorCode, RaftRpc, Request, Response, WireError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::handoff::Forwards;
use self::lease::Leases;
use self::network::{decode, encode};
use self::peers::Peers;
use crate::config::ClusterConfig;
use crate::raft::{ClusterState, Command, CommandResponse, PeerNode, TypeConfig};

/// How long a join waits for the new learner to catch up with the Raft log.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Timeout of a request forwarded to the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

type Outcome<T> = Result<T, WireError>;

/// How this node starts with respect to a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Not in a cluster: own every key.
    Standalone,
    /// Create a new cluster (or restart a member of one, if Raft state exists).
    Bootstrap,
    /// Join through this member (or restart a member of one).
    Join(String),
    /// Restart a member from the Raft state in the data directory.
    Restart,
}

/// The node's membership in a cluster.
pub struct Cluster {
    me: Member,
    config: ClusterConfig,
    peers: Arc<Peers>,
    raft: Option<Raft<TypeConfig>>,
    state: watch::Receiver<Arc<ClusterState>>,
    ring: RwLock<Arc<Ring>>,
    epoch: watch::Sender<u64>,
    pub(crate) forwards: Forwards,
    /// Cancelled once this node has left the cluster (it is no longer a member).
    left: CancellationToken,
    /// Members being added: already Raft learners, not yet in the state machine.
    joining: parking_lot::Mutex<std::collections::HashSet<u64>>,
    /// This node's ownership lease and, on the leader, failure detection.
    pub(crate) leases: Leases,
    /// Held while local copies of partitions are dropped, and by a transfer while it notes
    /// the drop counts and while it reports (see [`handoff`]).
    pub(crate) drops: tokio::sync::Mutex<()>,
    /// How many times each partition's local copy was dropped.
    pub(crate) dropped: DropLedger,
    /// Held while this node changes Raft's membership (a learner added for a join, voters
    /// balanced): openraft refuses a change while another is uncommitted, and one refused
    /// between the two steps of a voter change leaves a joint configuration behind.
    membership_changes: tokio::sync::Mutex<()>,
}

/// How many times this node has dropped its local copy of each partition.
///
/// A transfer notes the counts of its partitions before it copies and compares them before
/// it reports: a partition dropped in between (its target left this node and came back
/// while the copy ran) lost part of what was copied, and is copied again instead. A source
/// compares them on every page it serves, so a transfer never reads a partition the source
/// is deleting.
#[derive(Debug, Default)]
pub(crate) struct DropLedger {
    counts: parking_lot::Mutex<std::collections::HashMap<PartitionId, u64>>,
}

impl DropLedger {
    /// Records a drop of each of `partitions` (before their data goes).
    pub(crate) fn record<'a>(&self, partitions: impl IntoIterator<Item = &'a PartitionId>) {
        let mut counts = self.counts.lock();
        for p in partitions {
            *counts.entry(*p).or_default() += 1;
        }
    }

    /// The drop count of each of `partitions`, in order.
    pub(crate) fn counts(&self, partitions: &[PartitionId]) -> Vec<u64> {
        let counts = self.counts.lock();
        partitions
            .iter()
            .map(|p| counts.get(p).copied().unwrap_or(0))
            .collect()
    }
}

impl Cluster {
    /// A node that is in no cluster: it owns every partition, at epoch 0.
    pub fn standalone(me: Member, params: RingParams, peers: Arc<Peers>) -> Self {
        let ring = Arc::new(Ring::standalone(me.clone(), params));
        let (_, state) = watch::channel(Arc::new(ClusterState::default()));
        Self {
            me,
            config: ClusterConfig::default(),
            peers,
            raft: None,
            state,
            ring: RwLock::new(ring),
            epoch: watch::Sender::new(0),
            forwards: Forwards::default(),
            left: CancellationToken::new(),
            joining: parking_lot::Mutex::new(std::collections::HashSet::new()),
            leases: Leases::new(1, 2, false),
            drops: tokio::sync::Mutex::new(()),
            dropped: DropLedger::default(),
            membership_changes: tokio::sync::Mutex::new(()),
        }
    }

    /// A member of a Raft-managed cluster; `restarted` if it came back with its Raft state
    /// (it answers for nothing until the cluster has taken it back).
    pub fn clustered(
        me: Member,
        config: ClusterConfig,
        peers: Arc<Peers>,
        raft: Raft<TypeConfig>,
        state: watch::Receiver<Arc<ClusterState>>,
        restarted: bool,
    ) -> Self {
        let leases = Leases::new(config.lease_ms, config.failure_timeout_ms, restarted);
        let current = Arc::clone(&state.borrow());
        let ring = Arc::new(current.ring(None));
        Self {
            me,
            config,
            peers,
            raft: Some(raft),
            epoch: watch::Sender::new(ring.epoch),
            state,
            ring: RwLock::new(ring),
            forwards: Forwards::default(),
            left: CancellationToken::new(),
            joining: parking_lot::Mutex::new(std::collections::HashSet::new()),
            leases,
            drops: tokio::sync::Mutex::new(()),
            dropped: DropLedger::default(),
            membership_changes: tokio::sync::Mutex::new(()),
        }
    }

    /// This node as a member.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me.id
    }

    /// Whether the node is part of a Raft cluster.
    pub fn is_clustered(&self) -> bool {
        self.raft.is_some()
    }

    /// The cluster settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The peer links.
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// The Raft instance (none when standalone).
    pub fn raft(&self) -> Option<&Raft<TypeConfig>> {
        self.raft.as_ref()
    }

    /// The latest applied cluster state.
    pub fn state(&self) -> Arc<ClusterState> {
        Arc::clone(&self.state.borrow())
    }

    /// A receiver of every applied cluster state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    /// The ring requests are routed by.
    pub fn ring(&self) -> Arc<Ring> {
        Arc::clone(&self.ring.read())
    }

    /// The current ring epoch.
    pub fn epoch(&self) -> u64 {
        *self.epoch.borrow()
    }

    /// A receiver that sees every new epoch this node applies.
    pub fn epoch_changes(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Publishes a new ring (from the membership actor).
    pub(crate) fn publish(&self, ring: Ring) {
        let epoch = ring.epoch;
        *self.ring.write() = Arc::new(ring);
        self.epoch.send_if_modified(|e| {
            let newer = epoch > *e;
            if newer {
                *e = epoch;
            }
            newer
        });
    }

    /// Cancelled when this node is no longer a member (after a leave).
    pub fn left(&self) -> CancellationToken {
        self.left.clone()
    }

    /// Waits (up to `epoch_wait_ms`) until this node has applied `epoch`; a request routed by
    /// a newer ring than the node's must not be answered by an older one.
    pub async fn catch_up(&self, epoch: u64) {
        if epoch <= self.epoch() || self.raft.is_none() {
            return;
        }
        let mut rx = self.epoch.subscribe();
        let wait = Duration::from_millis(self.config.epoch_wait_ms);
        let _ = tokio::time::timeout(wait, rx.wait_for(|e| *e >= epoch)).await;
    }

    /// Waits (up to `limit`) until this node has applied `epoch`.
    pub async fn wait_for_epoch(&self, epoch: u64, limit: Duration) {
        let mut rx = self.epoch.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|e| *e >= epoch)).await;
    }

    /// Waits (up to `limit`) until this node's state machine has applied `epoch`.
    pub(crate) async fn applied(&self, epoch: u64, limit: Duration) {
        let mut rx = self.state.clone();
        let _ = tokio::time::timeout(limit, rx.wait_for(|s| s.epoch >= epoch)).await;
    }

    /// The QUIC address of a member (from the state machine, else Raft's membership).
    pub fn member_addr(&self, node: NodeId) -> Option<String> {
        if let Some(m) = self.state().members.get(&node) {
            return Some(m.addr.clone());
        }
        let raft = self.raft.as_ref()?;
        let metrics = raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&node.0)
            .map(|n| n.addr.clone())
    }

    /// The partition of a key, if this node owns it; otherwise the ring to redirect by.
    pub fn route(&self, namespace: &str, key: &str) -> Result<PartitionId, Arc<Ring>> {
        let ring = self.ring();
        let partition = ring.partition_of(namespace, key);
        if ring.table.owner(partition) == Some(self.me.id) {
            Ok(partition)
        } else {
            Err(ring)
        }
    }

    /// Whether this node owns a partition at its epoch.
    pub fn owns(&self, partition: PartitionId) -> bool {
        self.ring.read().table.owner(partition) == Some(self.me.id)
    }

    /// Where a write to `partition` must also go: the other replicas, and any incoming holder
    /// that is receiving the partition (hand-off under way). Addresses by member.
    pub fn write_targets(&self, partition: PartitionId) -> Vec<(NodeId, String)> {
        let ring = self.ring();
        let mut targets: BTreeMap<NodeId, String> = BTreeMap::new();
        let replicas = ring.table.replicas(partition).iter().copied();
        for id in replicas.chain(self.forwards.receivers(partition)) {
            if id == self.me.id {
                continue;
            }
            if let Some(member) = ring.member(id) {
                targets.insert(id, member.addr.clone());
            }
        }
        targets.into_iter().collect()
    }

    /// The ring with the current Raft leader filled in.
    pub fn ring_with_leader(&self) -> Ring {
        let mut ring = Ring::clone(&self.ring());
        ring.leader = self.leader().map(NodeId);
        ring
    }

    fn leader(&self) -> Option<u64> {
        self.raft
            .as_ref()
            .and_then(|raft| raft.metrics().borrow().current_leader)
    }

    fn leader_addr(&self) -> Option<String> {
        let raft = self.raft.as_ref()?;
        let metrics = raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    fn raft_or_refuse(&self) -> Outcome<&Raft<TypeConfig>> {
        self.raft.as_ref().ok_or_else(|| {
            WireError::new(
                ErrorCode::NotReady,
                "this node is not part of a cluster (start it with --bootstrap or --join)",
            )
        })
    }

    /// Answers a Raft RPC from a peer.
    pub async fn handle_raft(&self, rpc: RaftRpc, payload: Bytes) -> Outcome<Response> {
        let raft = self.raft_or_refuse()?;
        let malformed =
            |e: postcard::Error| WireError::new(ErrorCode::Malformed, format!("Raft RPC: {e}"));
        let encoded = match rpc {
            RaftRpc::AppendEntries => encode(
                &raft
                    .append_entries(decode(&payload).map_err(malformed)?)
                    .await,
            ),
            RaftRpc::Vote => encode(&raft.vote(decode(&payload).map_err(malformed)?).await),
            RaftRpc::InstallSnapshot => encode(
                &raft
                    .install_snapshot(decode(&payload).map_err(malformed)?)
                    .await,
            ),
        };
        encoded.map(Response::Raft).map_err(|e| {
            WireError::new(ErrorCode::Internal, format!("encoding a Raft answer: {e}"))
        })
    }

    /// Commits `command` through Raft: here if this node leads, else at the leader.
    pub async fn propose(&self, command: Command) -> Outcome<CommandResponse> {
        let raft = self.raft_or_refuse()?;
        match raft.client_write(command.clone()).await {
            Ok(written) => Ok(written.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                let addr = forward.leader_node.map(|n| n.addr).ok_or_else(no_leader)?;
                let payload = encode(&command).map_err(|e| {
                    WireError::new(ErrorCode::Internal, format!("encoding a command: {e}"))
                })?;
                match self.forward(&addr, Request::Propose(payload)).await? {
                    Response::Raft(bytes) => decode(&bytes).map_err(|e| {
                        WireError::new(ErrorCode::Malformed, format!("leader's answer: {e}"))
                    }),
                    other => Err(unexpected(&other)),
                }
            }
            Err(e) => Err(WireError::new(ErrorCode::NotReady, format!("Raft: {e}"))),
        }
    }

    /// Commits a command forwarded by a peer; only the leader accepts one.
    pub async fn propose_here(&self, payload: Bytes) -> Outcome<Response> {
        let raft = self.raft_or_refuse()?;
        let command: Command = decode(&payload)
            .map_err(|e| WireError::new(ErrorCode::Malformed, format!("command: {e}")))?;
        let answer = raft
            .client_write(command)
            .await
            .map_err(|e| WireError::new(ErrorCode::NotReady, format!("Raft: {e}")))?;
        encode(&answer.data)
            .map(Response::Raft)
            .map_err(|e| WireError::new(ErrorCode::Internal, format!("encoding: {e}")))
    }

    async fn forward(&self, addr: &str, request: Request) -> Outcome<Response> {
        self.peers
            .call(addr, self.epoch(), request, &[], FORWARD_TIMEOUT)
            .await
            .map(|(response, _)| response)
            .map_err(|e| match e {
                strata_client::Error::Server { code, message } => WireError::new(code, message),
                other => WireError::new(
                    ErrorCode::Unavailable,
                    format!("the Raft leader at {addr} did not answer: {other}"),
                ),
            })
    }

    /// Adds `member` to the cluster (idempotent): at the leader, as a Raft learner first (so
    /// it has the log), then as a member of the state machine, then as a voter while there
    /// are fewer than `max_voters`.
    pub async fn join(&self, member: Member) -> Outcome<Ring> {
        let raft = self.raft_or_refuse()?;
        if self.leader() != Some(self.me.id.0) {
            let addr = self.leader_addr().ok_or_else(no_leader)?;
            return match self.forward(&addr, Request::Join { member }).await? {
                Response::Ring(ring) => Ok(*ring),
                other => Err(unexpected(&other)),
            };
        }
        let state = self.state();
        if let Some(existing) = state
            .members
            .values()
            .find(|m| m.addr == member.addr && m.id != member.id)
        {
            return Err(WireError::new(
                ErrorCode::InvalidValue,
                format!(
                    "address {} already belongs to member {}",
                    member.addr, existing.id
                ),
            ));
        }
        tracing::info!(member = %member.id, addr = %member.addr, "adding a member");
        self.joining.lock().insert(member.id.0);
        let result = self.add_member(raft, member).await;
        let id = result.as_ref().map_or(None, |id| Some(*id));
        if let Some(id) = id {
            self.joining.lock().remove(&id.0);
            self.balance_voters().await;
            tracing::info!(member = %id, "member added");
        }
        result.map(|_| self.ring_with_leader())
    }

    async fn add_member(&self, raft: &Raft<TypeConfig>, member: Member) -> Outcome<NodeId> {
        let node = PeerNode {
            addr: member.addr.clone(),
            admin: member.admin.clone(),
        };
        let learner = tokio::time::timeout(JOIN_TIMEOUT, async {
            let _changing = self.membership_changes.lock().await;
            raft.add_learner(member.id.0, node, true).await
        });
        match learner.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(WireError::new(
                    ErrorCode::NotReady,
                    format!("adding a Raft learner: {e}"),
                ));
            }
            Err(_) => {
                return Err(WireError::new(
                    ErrorCode::NotReady,
                    format!(
                        "member {} did not catch up with the Raft log in time",
                        member.id
                    ),
                ));
            }
        }
        let id = member.id;
        match self.propose(Command::AddMember { member }).await? {
            CommandResponse::Rejected { reason } => {
                Err(WireError::new(ErrorCode::InvalidValue, reason))
            }
            CommandResponse::Applied { .. } => Ok(id),
        }
    }

    /// Starts the hand-off of `node`'s partitions; it is removed once they have moved.
    pub async fn leave(&self, node: NodeId) -> Outcome<Ring> {
        self.raft_or_refuse()?;
        if !self.state().members.contains_key(&node) {
            return Err(WireError::new(
                ErrorCode::InvalidValue,
                format!("member {node} is not in the cluster"),
            ));
        }
        if self.leader() != Some(self.me.id.0) {
            let addr = self.leader_addr().ok_or_else(no_leader)?;
            return match self.forward(&addr, Request::Leave { node }).await? {
                Response::Ring(ring) => Ok(*ring),
                other => Err(unexpected(&other)),
            };
        }
        tracing::info!(member = %node, "member leaving");
        if let CommandResponse::Rejected { reason } = self.propose(Command::Leave { node }).await? {
            return Err(WireError::new(ErrorCode::InvalidValue, reason));
        }
        Ok(self.ring_with_leader())
    }

    /// On the leader: make Raft's voters and learners follow the members. Members gone from
    /// the state machine leave Raft; while there are fewer than `max_voters` voters, learners
    /// that are active members are promoted. A joint configuration that a change left behind
    /// (its leader died between the two steps, or another change came in between) is
    /// completed. Runs on every ring change and every second on the leader; if another
    /// membership change of this node is under way it returns, and a later run does the work.
    pub async fn balance_voters(&self) {
        let Some(raft) = &self.raft else { return };
        if self.leader() != Some(self.me.id.0) {
            return;
        }
        let Ok(_changing) = self.membership_changes.try_lock() else {
            return;
        };
        let state = self.state();
        if !state.is_initialized() {
            return;
        }
        let joining = self.joining.lock().clone();
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        // With this node's changes serialised, a joint configuration here is one left behind.
        let joint = membership.get_joint_config().len() > 1;
        let voters: Vec<u64> = membership.voter_ids().collect();
        let nodes: Vec<u64> = membership.nodes().map(|(id, _)| *id).collect();
        let gone: Vec<u64> = nodes
            .iter()
            .copied()
            .filter(|id| !state.members.contains_key(&NodeId(*id)) && !joining.contains(id))
            .collect();
        let mut keep: std::collections::BTreeSet<u64> = voters
            .iter()
            .copied()
            .filter(|id| !gone.contains(id))
            .collect();
        let candidates = nodes.iter().copied().filter(|id| {
            !keep.contains(id)
                && state
                    .members
                    .get(&NodeId(*id))
                    .is_some_and(|m| matches!(m.state, MemberState::Active | MemberState::Joining))
        });
        for id in candidates.collect::<Vec<_>>() {
            if keep.len() >= self.config.max_voters {
                break;
            }
            keep.insert(id);
        }
        let current: std::collections::BTreeSet<u64> = voters.iter().copied().collect();
        if (keep != current || joint) && !keep.is_empty() {
            tracing::info!(voters = ?keep, joint, "changing Raft voters");
            match tokio::time::timeout(JOIN_TIMEOUT, raft.change_membership(keep.clone(), true))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not change Raft voters");
                    return;
                }
                Err(_) => {
                    tracing::warn!("changing Raft voters did not finish in time");
                    return;
                }
            }
        }
        if !gone.is_empty() {
            let gone: std::collections::BTreeSet<u64> = gone.into_iter().collect();
            tracing::info!(nodes = ?gone, "removing departed members from Raft");
            if let Err(e) = raft
                .change_membership(ChangeMembers::RemoveNodes(gone), false)
                .await
            {
                tracing::warn!(error = %e, "could not remove departed members from Raft");
            }
        }
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Some(raft) = &self.raft {
            let _ = raft.shutdown().await;
        }
    }
}

fn no_leader() -> WireError {
    WireError::new(
        ErrorCode::NotReady,
        "the cluster has no Raft leader at the moment",
    )
}

fn unexpected(response: &Response) -> WireError {
    WireError::new(
        ErrorCode::Internal,
        format!("the leader answered with {}", response.kind()),
    )
}
