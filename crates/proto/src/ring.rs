//! The ring: which member holds which key. Pure functions shared by nodes and clients.
//!
//! SKELETON — the placement below is a placeholder to be replaced (see the module plan).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::version::NodeId;

/// A partition number, `0..partitions`.
pub type PartitionId = u32;

/// Default number of partitions.
pub const DEFAULT_PARTITIONS: u32 = 4096;
/// Default virtual nodes per member.
pub const DEFAULT_VNODES: u32 = 64;
/// Default replication factor.
pub const DEFAULT_REPLICATION: u32 = 2;

/// Parameters of the ring, agreed through Raft.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingParams {
    /// Number of partitions the key space is cut into (fixed for a cluster's life).
    pub partitions: u32,
    /// Virtual nodes per member on the hash ring.
    pub vnodes: u32,
    /// Replicas per partition (owner included).
    pub replication: u32,
}

impl Default for RingParams {
    fn default() -> Self {
        Self {
            partitions: DEFAULT_PARTITIONS,
            vnodes: DEFAULT_VNODES,
            replication: DEFAULT_REPLICATION,
        }
    }
}

/// Where a member is in its life in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberState {
    /// Added; receiving its partitions, owns none of them yet.
    Joining,
    /// Serving.
    Active,
    /// Handing its partitions off before it goes.
    Leaving,
    /// Marked down by the leader.
    Down,
}

impl MemberState {
    /// Lower-case name for tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Active => "active",
            MemberState::Leaving => "leaving",
            MemberState::Down => "down",
        }
    }

    /// Whether a member in this state is given partitions by placement.
    pub fn takes_partitions(self) -> bool {
        matches!(self, MemberState::Joining | MemberState::Active)
    }
}

/// A member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// `HOST:PORT` of its QUIC endpoint, as clients and peers should dial it.
    pub addr: String,
    /// `HOST:PORT` of its admin HTTP endpoint.
    pub admin: String,
    /// Its state.
    pub state: MemberState,
}

/// Partition → replica set (owner first, then the next distinct members clockwise).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    replicas: Vec<Vec<NodeId>>,
}

impl PartitionTable {
    /// Places `params.partitions` partitions on `members` (PLACEHOLDER: round robin).
    pub fn place(params: &RingParams, members: &[NodeId]) -> Self {
        let mut members = members.to_vec();
        members.sort();
        members.dedup();
        let r = (params.replication as usize).min(members.len());
        let replicas = (0..params.partitions as usize)
            .map(|p| (0..r).map(|i| members[(p + i) % members.len()]).collect())
            .collect();
        Self { replicas }
    }

    /// A table from explicit replica sets, one per partition.
    pub fn from_replicas(replicas: Vec<Vec<NodeId>>) -> Self {
        Self { replicas }
    }

    /// Number of partitions.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Whether the table has no partitions.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// The replica set of a partition, owner first (empty if out of range).
    pub fn replicas(&self, partition: PartitionId) -> &[NodeId] {
        self.replicas
            .get(partition as usize)
            .map_or(&[], Vec::as_slice)
    }

    /// Replaces the replica set of one partition.
    pub fn set_replicas(&mut self, partition: PartitionId, replicas: Vec<NodeId>) {
        if let Some(slot) = self.replicas.get_mut(partition as usize) {
            *slot = replicas;
        }
    }

    /// The owner of a partition.
    pub fn owner(&self, partition: PartitionId) -> Option<NodeId> {
        self.replicas(partition).first().copied()
    }

    /// Partitions whose replica set differs between `self` and `other`.
    pub fn changed(&self, other: &PartitionTable) -> Vec<PartitionId> {
        let n = self.len().max(other.len());
        (0..n as PartitionId)
            .filter(|&p| self.replicas(p) != other.replicas(p))
            .collect()
    }

    /// How many partitions each member owns.
    pub fn owned_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for set in &self.replicas {
            if let Some(owner) = set.first() {
                *counts.entry(*owner).or_default() += 1;
            }
        }
        counts
    }
}

/// The partition of a key: a stable hash of (namespace, key) modulo `partitions`
/// (PLACEHOLDER hash).
pub fn partition_of(partitions: u32, namespace: &str, key: &str) -> PartitionId {
    let mut h: u32 = 2166136261;
    for b in namespace.bytes().chain([0]).chain(key.bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(16777619);
    }
    h % partitions.max(1)
}

/// What a client needs to route: the members and the partition table in effect at an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    /// Bumped by every ownership change.
    pub epoch: u64,
    /// Ring parameters.
    pub params: RingParams,
    /// Every member, by id.
    pub members: Vec<Member>,
    /// Partition → replica set in effect at this epoch.
    pub table: PartitionTable,
    /// Partitions whose replica set is changing (transfer under way).
    pub moving: u32,
    /// The Raft leader, when known.
    pub leader: Option<NodeId>,
}

impl Ring {
    /// The ring of a node that is not part of a cluster: it owns every partition.
    pub fn standalone(member: Member, params: RingParams) -> Self {
        let table = PartitionTable::place(&params, &[member.id]);
        Self {
            epoch: 0,
            params,
            members: vec![member],
            table,
            moving: 0,
            leader: None,
        }
    }

    /// The partition of a key.
    pub fn partition_of(&self, namespace: &str, key: &str) -> PartitionId {
        partition_of(self.params.partitions, namespace, key)
    }

    /// The member with this id.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The owner of a key.
    pub fn owner_of(&self, namespace: &str, key: &str) -> Option<NodeId> {
        self.table.owner(self.partition_of(namespace, key))
    }
}
