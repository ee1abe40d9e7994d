//! The membership actor: follows the Raft state machine and acts on each new state.
//!
//! On every applied state (and once a second, to retry what failed) it:
//! 1. publishes the ring (with the current leader) for routing and wakes requests waiting
//!    for a newer epoch;
//! 2. drops forwarding of partitions whose hand-off is over;
//! 3. starts a transfer for each partition this node is gaining (grouped by source, two at a
//!    time), and reports it synced when done;
//! 4. drops local copies of partitions this node no longer holds;
//! 5. on the leader, keeps Raft's voters and learners in line with the members;
//! 6. notices when this node has left the cluster.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use strata_proto::NodeId;
use strata_proto::ring::{MemberState, PartitionId};
use tokio::sync::Semaphore;

use super::{Cluster, handoff};
use crate::raft::{ClusterState, Command};
use crate::service::Service;

/// Transfers running at once.
const PARALLEL_TRANSFERS: usize = 2;
/// How long a node that left waits to be removed from Raft's voters before it stops anyway.
const LEAVE_VOTER_GRACE: Duration = Duration::from_secs(15);
/// Failed attempts on a partition's owner before a transfer asks another holder.
const OWNER_ATTEMPTS: usize = 5;
/// How long a reported partition is not copied again while its report is being applied.
const REPORT_SETTLE: Duration = Duration::from_secs(5);
/// How often the copying still to do is logged.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(10);
/// Pause before a failed transfer is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Messages of the membership actor.
pub enum MembershipMsg {
    /// The state machine or the leader changed, or a second passed.
    Changed,
    /// A failed transfer may be tried again.
    Retry {
        /// Its partitions.
        partitions: Vec<PartitionId>,
    },
    /// A transfer ended.
    TransferDone {
        /// Its partitions.
        partitions: Vec<PartitionId>,
        /// Whether it succeeded.
        ok: bool,
    },
}

/// The membership actor.
pub struct Membership;

/// Its state.
pub struct MembershipState {
    cluster: Arc<Cluster>,
    service: Arc<Service>,
    in_progress: HashSet<PartitionId>,
    /// Partitions copied and reported synced, and when: copying them again before this node
    /// has applied the report would first drop the data it now serves. A report Raft
    /// applied but found void (the replica set changed meanwhile) leaves the partition
    /// gained, and it is copied again once [`REPORT_SETTLE`] has passed.
    reported: std::collections::HashMap<PartitionId, std::time::Instant>,
    /// Failed transfer attempts per partition: the next attempt asks another holder.
    failures: std::collections::HashMap<PartitionId, usize>,
    /// Partitions this node held (in table or target) at the last state, once known.
    held: Option<HashSet<PartitionId>>,
    was_member: bool,
    /// When this node was first seen gone from the members.
    gone_since: Option<std::time::Instant>,
    last_epoch: u64,
    last_leader: Option<u64>,
    /// When the copying still to do was last logged.
    last_progress_log: std::time::Instant,
    slots: Arc<Semaphore>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Membership {
    /// Starts the actor for `cluster`, feeding it every state change.
    pub async fn start(
        cluster: Arc<Cluster>,
        service: Arc<Service>,
    ) -> anyhow::Result<ActorRef<MembershipMsg>> {
        // Unnamed: several nodes may run in one process (tests), and names are global.
        let (actor, _) = Actor::spawn(None, Membership, (cluster, service)).await?;
        Ok(actor)
    }
}

/// Sends `Changed` on every state or leader change and once a second.
async fn watch(cluster: Arc<Cluster>, actor: ActorRef<MembershipMsg>) {
    let mut state = cluster.subscribe();
    let mut metrics = cluster.raft().map(|r| r.metrics());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let leader_changed = async {
            match &mut metrics {
                Some(m) => m.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let alive = tokio::select! {
            r = state.changed() => r.is_ok(),
            ok = leader_changed => ok,
            _ = tick.tick() => true,
        };
        if !alive || actor.cast(MembershipMsg::Changed).is_err() {
            return;
        }
    }
}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = (Arc<Cluster>, Arc<Service>);

    async fn pre_start(
        &self,
        myself: ActorRef<MembershipMsg>,
        (cluster, service): (Arc<Cluster>, Arc<Service>),
    ) -> Result<MembershipState, ActorProcessingErr> {
        let watcher = tokio::spawn(watch(Arc::clone(&cluster), myself.clone()));
        let _ = myself.cast(MembershipMsg::Changed);
        Ok(MembershipState {
            cluster,
            service,
            in_progress: HashSet::new(),
            reported: std::collections::HashMap::new(),
            failures: std::collections::HashMap::new(),
            held: None,
            was_member: false,
            gone_since: None,
            last_epoch: u64::MAX,
            last_leader: None,
            last_progress_log: std::time::Instant::now(),
            slots: Arc::new(Semaphore::new(PARALLEL_TRANSFERS)),
            watcher: Some(watcher),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MembershipMsg>,
        msg: MembershipMsg,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MembershipMsg::Changed => on_change(&myself, state),
            MembershipMsg::Retry { partitions } => {
                for p in &partitions {
                    state.in_progress.remove(p);
                }
            }
            MembershipMsg::TransferDone { partitions, ok } => {
                if ok {
                    for p in &partitions {
                        state.in_progress.remove(p);
                        state.reported.insert(*p, std::time::Instant::now());
                    }
                } else {
                    for p in &partitions {
                        *state.failures.entry(*p).or_default() += 1;
                    }
                    // Keep them marked a while so the next attempt is not immediate.
                    let me = myself.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(RETRY_AFTER).await;
                        let _ = me.cast(MembershipMsg::Retry { partitions });
                    });
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<MembershipMsg>,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(w) = state.watcher.take() {
            w.abort();
        }
        Ok(())
    }
}

fn on_change(myself: &ActorRef<MembershipMsg>, st: &mut MembershipState) {
    let cluster = Arc::clone(&st.cluster);
    let me = cluster.id();
    let state = cluster.state();
    let leader = cluster
        .raft()
        .and_then(|r| r.metrics().borrow().current_leader);
    if state.epoch != st.last_epoch || leader != st.last_leader {
        let ring = state.ring(leader.map(NodeId));
        if state.epoch != st.last_epoch {
            tracing::info!(
                epoch = state.epoch,
                members = state.members.len(),
                moving = ring.moving,
                "ring updated"
            );
        }
        cluster.publish(ring);
        st.last_epoch = state.epoch;
        st.last_leader = leader;
    }
    cluster.forwards.prune(&state);

    let gaining: Vec<PartitionId> = state.gaining(me);
    if !gaining.is_empty() && st.last_progress_log.elapsed() >= PROGRESS_LOG_EVERY {
        st.last_progress_log = std::time::Instant::now();
        let first = gaining[0];
        tracing::info!(
            epoch = state.epoch,
            gaining = gaining.len(),
            copying = gaining.iter().filter(|p| st.in_progress.contains(p)).count(),
            reported = gaining.iter().filter(|p| st.reported.contains_key(p)).count(),
            example = first,
            table = ?state.table.replicas(first),
            target = ?state.target.replicas(first),
            "partitions still to copy"
        );
    }
    let receiving: HashSet<PartitionId> = gaining.iter().copied().collect();
    st.reported
        .retain(|p, at| receiving.contains(p) && at.elapsed() < REPORT_SETTLE);
    start_transfers(myself, st, &state, gaining);
    drop_released(st, &state);

    if leader == Some(me.0) {
        // One balance at a time: a run that finds another under way returns at once.
        let cluster = Arc::clone(&st.cluster);
        tokio::spawn(async move { cluster.balance_voters().await });
    }

    let member = state.members.contains_key(&me);
    if st.was_member && !member {
        // Gone from the members; wait until the leader has also taken this node out of
        // Raft's voters, or a departed voter would count against every later quorum.
        let still_voter = cluster.raft().is_some_and(|r| {
            r.metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == me.0)
        });
        let since = *st.gone_since.get_or_insert_with(std::time::Instant::now);
        if !still_voter || since.elapsed() > LEAVE_VOTER_GRACE {
            tracing::info!("this node has left the cluster");
            cluster.left.cancel();
            st.was_member = false;
        }
        return;
    }
    st.was_member = member;
}

fn start_transfers(
    myself: &ActorRef<MembershipMsg>,
    st: &mut MembershipState,
    state: &ClusterState,
    gaining: Vec<PartitionId>,
) {
    let me = st.cluster.id();
    let mut by_source: BTreeMap<(NodeId, String), Vec<PartitionId>> = BTreeMap::new();
    let mut empty = Vec::new();
    for p in gaining {
        if st.in_progress.contains(&p) || st.reported.contains_key(&p) {
            continue;
        }
        let holders: Vec<NodeId> = state
            .table
            .replicas(p)
            .iter()
            .copied()
            .filter(|id| {
                *id != me
                    && state
                        .members
                        .get(id)
                        .is_some_and(|m| m.state != MemberState::Down)
            })
            .collect();
        if holders.is_empty() && !state.table.replicas(p).iter().all(|id| *id == me) {
            // Every holder is down: the data exists only on them. Wait for one to return
            // rather than take the partition over empty.
            continue;
        }
        let attempt = st.failures.get(&p).copied().unwrap_or(0);
        // The owner first: it sees every write, whatever W is. Other holders only after
        // repeated failures (they forward the writes they receive, which with W < R may not
        // be all of them).
        let pick = if attempt < OWNER_ATTEMPTS { 0 } else { attempt };
        let source = (!holders.is_empty()).then(|| holders[pick % holders.len()]);
        match source.and_then(|id| state.members.get(&id)) {
            Some(m) => by_source.entry((m.id, m.addr.clone())).or_default().push(p),
            None => empty.push(p),
        }
    }
    let since = state.epoch;
    if !empty.is_empty() {
        // Nobody holds these partitions: there is nothing to copy.
        st.in_progress.extend(empty.iter().copied());
        let (cluster, actor) = (Arc::clone(&st.cluster), myself.clone());
        tokio::spawn(async move {
            let ok = cluster
                .propose(Command::PartitionsSynced {
                    node: me,
                    partitions: empty.clone(),
                    since,
                })
                .await
                .is_ok();
            let _ = actor.cast(MembershipMsg::TransferDone {
                partitions: empty,
                ok,
            });
        });
    }
    for (source, partitions) in by_source {
        st.in_progress.extend(partitions.iter().copied());
        let (cluster, service) = (Arc::clone(&st.cluster), Arc::clone(&st.service));
        let (actor, slots) = (myself.clone(), Arc::clone(&st.slots));
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let count = partitions.len();
            tracing::info!(from = %source.0, partitions = count, "receiving partitions");
            let result =
                handoff::pull(cluster, service, source.clone(), partitions.clone(), since).await;
            match result {
                Ok(moved) => {
                    tracing::info!(
                        from = %source.0,
                        partitions = count,
                        compared = moved.compared,
                        entries = moved.entries,
                        bytes = moved.bytes,
                        "partitions received"
                    );
                    let _ = actor.cast(MembershipMsg::TransferDone {
                        partitions: moved.synced,
                        ok: true,
                    });
                    // The rest (interrupted by a drop, or already in effect here) are
                    // copied again at the next change if this node still gains them.
                    let _ = actor.cast(MembershipMsg::Retry { partitions });
                }
                Err(e) => {
                    tracing::warn!(from = %source.0, error = %e, "partition transfer failed; will retry");
                    let _ = actor.cast(MembershipMsg::TransferDone {
                        partitions,
                        ok: false,
                    });
                }
            }
        });
    }
}

/// Drops the local data of partitions this node held and no longer does.
fn drop_released(st: &mut MembershipState, state: &ClusterState) {
    let me = st.cluster.id();
    if !state.members.contains_key(&me) && !st.was_member {
        return; // not a member yet: the state says nothing about this node's data
    }
    let partitions = state.params.partitions;
    let now: HashSet<PartitionId> = (0..partitions)
        .filter(|p| {
            state.table.replicas(*p).contains(&me) || state.target.replicas(*p).contains(&me)
        })
        .collect();
    if let Some(before) = &st.held {
        let released: HashSet<PartitionId> = before.difference(&now).copied().collect();
        if !released.is_empty() {
            let service = Arc::clone(&st.service);
            let cluster = Arc::clone(&st.cluster);
            tokio::spawn(async move {
                // Decided on an earlier state: keep whatever this node holds again by now.
                let _dropping = cluster.drops.lock().await;
                let current = cluster.state();
                let mut released = released;
                released.retain(|p| {
                    !current.table.replicas(*p).contains(&me)
                        && !current.target.replicas(*p).contains(&me)
                });
                if released.is_empty() {
                    return;
                }
                // Counted before the data goes: a transfer of these partitions running now
                // will not report them.
                cluster.dropped.record(&released);
                match service.drop_partitions(partitions, &released).await {
                    Ok(n) => tracing::info!(
                        partitions = released.len(),
                        entries = n,
                        "dropped the data of partitions handed off"
                    ),
                    Err(e) => tracing::warn!(error = %e, "could not drop handed-off partitions"),
                }
            });
        }
    }
    st.held = Some(now);
}
