//! What a node reports about its place in the cluster, for `/ready`, `/stats` and the
//! metrics: Raft term and leader, partitions by role, lease lapses, readiness.
//!
//! # Readiness
//! A node is ready when it can serve what the ring routes to it: outside a cluster, as soon
//! as it serves; in a cluster, once it is an **active** member (a joining member turns active
//! only when every partition it was given has been copied to it) and holds its ownership
//! lease (a restarted member has none until the cluster has taken it back). A member that is
//! given more partitions later (another one left) stays ready meanwhile: the old holders keep
//! serving those partitions until the hand-off completes.

use serde::Serialize;
use strata_proto::ring::MemberState;

use super::Cluster;

/// The node's Raft status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RaftStatus {
    /// Current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// Index of the last applied log entry.
    pub applied: u64,
    /// The voting members of the Raft group in the configuration in effect (both halves of a
    /// joint configuration while a change is under way).
    pub voters: Vec<u64>,
    /// Whether that configuration is joint (a voter change under way, or left half done).
    pub joint: bool,
}

/// How many partitions the node has in each role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PartitionCounts {
    /// Partitions it owns (first replica) at its epoch.
    pub owned: u64,
    /// Partitions it holds a replica of, owned ones included.
    pub replicated: u64,
    /// Partitions placement gave it that it has not received yet.
    pub incoming: u64,
    /// Partitions changing hands in the whole cluster.
    pub moving: u64,
}

impl Cluster {
    /// Raft term, leader and applied index; none outside a cluster.
    pub fn raft_status(&self) -> Option<RaftStatus> {
        let raft = self.raft()?;
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        Some(RaftStatus {
            term: metrics.current_term,
            leader: metrics.current_leader,
            applied: metrics.last_applied.map_or(0, |l| l.index),
            voters: membership.voter_ids().collect(),
            joint: membership.get_joint_config().len() > 1,
        })
    }

    /// The node's partitions by role.
    pub fn partition_counts(&self) -> PartitionCounts {
        let me = self.id();
        let ring = self.ring();
        if !self.is_clustered() {
            // Outside a cluster the node answers for every key.
            let all = u64::from(ring.params.partitions);
            return PartitionCounts {
                owned: all,
                replicated: all,
                ..PartitionCounts::default()
            };
        }
        let state = self.state();
        let mut counts = PartitionCounts {
            moving: u64::from(ring.moving),
            ..PartitionCounts::default()
        };
        for p in 0..ring.table.len() {
            let p = p as strata_proto::ring::PartitionId;
            let replicas = ring.table.replicas(p);
            if replicas.first() == Some(&me) {
                counts.owned += 1;
            }
            if replicas.contains(&me) {
                counts.replicated += 1;
            }
        }
        for p in 0..state.target.len() {
            let p = p as strata_proto::ring::PartitionId;
            let incoming = state.target.replicas(p).contains(&me)
                && !state.table.replicas(p).contains(&me)
                && !state.synced.get(&p).is_some_and(|s| s.contains(&me));
            counts.incoming += u64::from(incoming);
        }
        counts
    }

    /// Times this node's ownership lease ran out before it was renewed.
    pub fn lease_lapses(&self) -> u64 {
        self.leases.lapses()
    }

    /// This node's state as a member; none when the cluster does not list it (yet).
    pub fn member_state(&self) -> Option<MemberState> {
        if !self.is_clustered() {
            return Some(MemberState::Active);
        }
        self.state().members.get(&self.id()).map(|m| m.state)
    }

    /// Whether the node is ready to serve (see the module docs); else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.is_clustered() {
            return Ok(());
        }
        match self.member_state() {
            Some(MemberState::Active) => {}
            Some(state) => return Err(format!("member state is {}", state.as_str())),
            None => return Err("not a member of the cluster yet".into()),
        }
        self.serving().map_err(|e| e.message)
    }
}
