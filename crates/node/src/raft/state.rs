//! The cluster state machine's data and its pure logic: members, ring parameters, the
//! partition table in effect, where placement wants the partitions, and hand-off progress.
//!
//! Everything here is deterministic and free of I/O: every node applies the same committed
//! [`Command`]s in the same order and arrives at the same [`ClusterState`].
//!
//! # Hand-off
//! Two tables are kept. `table` is what requests are routed by; `target` is what placement
//! ([`PartitionTable::place`] over the members that take partitions) wants. When they differ
//! for a partition, the partition is *moving*: the members of `target[p]` that are not in
//! `table[p]` (its *new holders*) must first copy the data, then report it with
//! [`Command::PartitionsSynced`]. Once every new holder of a partition has reported, the
//! partition switches over (`table[p] = target[p]`). A change that adds no new holder (only
//! removals, or a reordering among members that already hold the data) switches at once.
//!
//! Members follow: a `Joining` member becomes `Active` once it holds every partition placement
//! gives it, and a `Leaving` member is removed once it holds no partition any more.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use strata_proto::NodeId;
use strata_proto::ring::{Member, MemberState, PartitionId, PartitionTable, Ring, RingParams};

/// The replicated cluster metadata.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct ClusterState {
    /// Bumped by every command that changes the members or the partition table; 0 before
    /// [`Command::Init`].
    pub epoch: u64,
    /// Ring parameters, fixed by [`Command::Init`].
    pub params: RingParams,
    /// Every member, by id.
    pub members: BTreeMap<NodeId, Member>,
    /// Replica sets in effect: what requests are routed by.
    pub table: PartitionTable,
    /// Where placement wants the replicas (equal to `table` when settled).
    pub target: PartitionTable,
    /// Moving partitions: the new holders that already hold the data.
    pub synced: BTreeMap<PartitionId, BTreeSet<NodeId>>,
    /// Copies of a write the owner waits for before acknowledging it (W of R, counting its
    /// own); 0 means all R. Fixed by [`Command::Init`].
    #[serde(default)]
    pub write_quorum: u32,
    /// When each member currently `Down` was marked down (ms since the Unix epoch, the
    /// leader's clock): a member down longer than the tombstone grace period must discard its
    /// data instead of merging it.
    #[serde(default)]
    pub down_since: BTreeMap<NodeId, u64>,
    /// The epoch at which each partition's replica set in effect last changed (absent: at
    /// [`Command::Init`]). A transfer that began before its partition's replica set changed
    /// copied from a holder that may have stopped receiving writes, so its report is void.
    #[serde(default)]
    pub table_changed: BTreeMap<PartitionId, u64>,
    /// For each member currently `Down` or rejoining after a mark-down: the planned replica
    /// sets of the partitions it was placed in when it was marked down. While it is away
    /// others fill in; once it is back, placement starts from these sets again (see
    /// `replan`), so it takes back the partitions whose data it kept and syncs only what
    /// changed, instead of being given other partitions and copying them whole.
    #[serde(default)]
    pub placed_before_down: BTreeMap<NodeId, Vec<(PartitionId, Vec<NodeId>)>>,
}

/// A change to the cluster state, proposed through Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// First command of a new cluster: sets the parameters and makes the bootstrapping member
    /// `Active` and the holder of every partition.
    Init {
        /// Ring parameters of the cluster.
        params: RingParams,
        /// The bootstrapping member (its state is forced to `Active`).
        member: Member,
        /// W: copies a write needs before it is acknowledged (0 = all R).
        write_quorum: u32,
    },
    /// Idempotent. A new id becomes `Joining`. For an id already present the addresses are
    /// updated; a `Leaving` or `Down` member becomes `Joining` again, an `Active` or `Joining`
    /// one keeps its state.
    AddMember {
        /// The member (its state is ignored).
        member: Member,
    },
    /// The member becomes `Leaving` (no-op if absent or already `Leaving`).
    Leave {
        /// The member that leaves.
        node: NodeId,
    },
    /// Marks a member `Down` (no-op if absent or already `Down`): it leaves every replica
    /// set in effect at once (the next replica of each of its partitions becomes the
    /// owner), and placement looks for new replicas among the others. Proposed by the leader
    /// only after the member's ownership lease has run out.
    MarkDown {
        /// The member that is down.
        node: NodeId,
        /// When (ms since the Unix epoch, the leader's clock).
        at_ms: u64,
    },
    /// A member restarted and may have lost writes it acknowledged from memory: like
    /// [`Command::MarkDown`] it leaves every replica set in effect, and it becomes `Joining`
    /// (a `Leaving` member stays `Leaving`), so it owns nothing again until it has synced
    /// each partition placement gives it from the current holders.
    Restarted {
        /// The member that restarted.
        node: NodeId,
    },
    /// `node` now holds the data of these partitions for the target table (hand-off progress).
    /// Reports for partitions that no longer move to `node`, or whose replica set in effect
    /// changed after epoch `since`, are ignored.
    PartitionsSynced {
        /// The member that copied the data.
        node: NodeId,
        /// The partitions it now holds.
        partitions: Vec<PartitionId>,
        /// The epoch of the state the copy was planned on: its source was a holder then.
        since: u64,
    },
}

/// The outcome of applying a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// The command was applied.
    Applied {
        /// The epoch after the command.
        epoch: u64,
        /// Whether the members or the partition table changed (the epoch was bumped).
        changed: bool,
    },
    /// The command is not valid in the current state; nothing changed.
    Rejected {
        /// Why.
        reason: String,
    },
}

impl ClusterState {
    /// Whether [`Command::Init`] has been applied.
    pub fn is_initialized(&self) -> bool {
        self.epoch > 0
    }

    /// Applies one command. Deterministic: the same commands in the same order give the same
    /// state on every node.
    pub fn apply(&mut self, cmd: &Command) -> CommandResponse {
        if let Command::Init {
            params,
            member,
            write_quorum,
        } = cmd
        {
            return self.init(params, member, *write_quorum);
        }
        if !self.is_initialized() {
            return rejected("the cluster is not initialized");
        }
        let members_before = self.members.clone();
        let table_before = self.table.clone();
        match cmd {
            Command::Init { .. } => {}
            Command::AddMember { member } => {
                if self.add_member(member) {
                    self.replan();
                }
            }
            Command::Leave { node } => {
                if self.set_state(*node, MemberState::Leaving) {
                    self.replan();
                }
            }
            Command::MarkDown { node, at_ms } => {
                if self.set_state(*node, MemberState::Down) {
                    self.down_since.insert(*node, *at_ms);
                    // Kept from an earlier mark-down if it never got back in between.
                    if !self.placed_before_down.contains_key(node) {
                        let placed = (0..self.target.len() as PartitionId)
                            .filter(|&p| self.target.replicas(p).contains(node))
                            .map(|p| (p, self.target.replicas(p).to_vec()))
                            .collect();
                        self.placed_before_down.insert(*node, placed);
                    }
                    self.step_down(*node);
                    self.replan();
                }
            }
            Command::Restarted { node } => {
                if let Some(m) = self.members.get_mut(node) {
                    if m.state != MemberState::Leaving {
                        m.state = MemberState::Joining;
                    }
                    self.step_down(*node);
                    self.replan();
                }
            }
            Command::PartitionsSynced {
                node,
                partitions,
                since,
            } => {
                self.synced_report(*node, partitions, *since);
            }
        }
        self.settle_partitions();
        self.settle_members();
        let members = &self.members;
        let away = |id: &NodeId| {
            members
                .get(id)
                .is_some_and(|m| matches!(m.state, MemberState::Down | MemberState::Joining))
        };
        self.down_since.retain(|id, _| away(id));
        self.placed_before_down.retain(|id, _| away(id));
        let changed = self.members != members_before || self.table != table_before;
        if changed {
            self.epoch += 1;
            for p in self.table.changed(&table_before) {
                self.table_changed.insert(p, self.epoch);
            }
        }
        CommandResponse::Applied {
            epoch: self.epoch,
            changed,
        }
    }

    /// The ring clients route by, at the current epoch.
    pub fn ring(&self, leader: Option<NodeId>) -> Ring {
        Ring {
            epoch: self.epoch,
            params: self.params,
            members: self.members.values().cloned().collect(),
            table: self.table.clone(),
            moving: u32::try_from(self.moving().len()).unwrap_or(u32::MAX),
            leader,
        }
    }

    /// Partitions whose replica set is changing (`target` differs from `table`).
    pub fn moving(&self) -> Vec<PartitionId> {
        self.table.changed(&self.target)
    }

    /// Partitions `node` must still copy: it is in their target replica set but not in the
    /// one in effect, and has not reported them synced yet.
    pub fn gaining(&self, node: NodeId) -> Vec<PartitionId> {
        self.moving()
            .into_iter()
            .filter(|&p| {
                self.target.replicas(p).contains(&node)
                    && !self.table.replicas(p).contains(&node)
                    && !self.synced.get(&p).is_some_and(|s| s.contains(&node))
            })
            .collect()
    }

    /// The current holders of a partition (its replica set in effect), to copy it from.
    pub fn sources(&self, partition: PartitionId) -> &[NodeId] {
        self.table.replicas(partition)
    }

    /// Whether no partition is moving.
    pub fn is_settled(&self) -> bool {
        self.table == self.target && self.synced.is_empty()
    }

    /// The number of copies (the owner's included) a write needs before it is acknowledged.
    pub fn write_quorum(&self) -> usize {
        let r = self.params.replication.max(1);
        let w = if self.write_quorum == 0 {
            r
        } else {
            self.write_quorum.min(r)
        };
        w as usize
    }

    /// Whether every acknowledged write is on every replica (W = R), so that any replica in
    /// effect may answer a read.
    pub fn replicas_are_current(&self) -> bool {
        self.write_quorum() >= self.params.replication.max(1) as usize
    }

    /// Removes `node` from every replica set in effect (a set it is alone in keeps it: no
    /// one else has the data), and forgets its hand-off progress.
    fn step_down(&mut self, node: NodeId) {
        self.table = self.table.without(&[node]);
        for synced in self.synced.values_mut() {
            synced.remove(&node);
        }
        self.synced.retain(|_, s| !s.is_empty());
    }

    fn init(&mut self, params: &RingParams, member: &Member, write_quorum: u32) -> CommandResponse {
        if self.is_initialized() {
            let same = self.params == *params
                && self.write_quorum == write_quorum
                && self
                    .members
                    .get(&member.id)
                    .is_some_and(|m| m.addr == member.addr && m.admin == member.admin);
            return if same {
                CommandResponse::Applied {
                    epoch: self.epoch,
                    changed: false,
                }
            } else {
                rejected("the cluster is already initialized")
            };
        }
        if params.partitions == 0 || params.replication == 0 || params.vnodes == 0 {
            return rejected("ring parameters must be positive");
        }
        let member = Member {
            state: MemberState::Active,
            ..member.clone()
        };
        let table = PartitionTable::place(params, &[member.id]);
        *self = ClusterState {
            epoch: 1,
            params: *params,
            members: BTreeMap::from([(member.id, member)]),
            target: table.clone(),
            table,
            synced: BTreeMap::new(),
            write_quorum,
            down_since: BTreeMap::new(),
            table_changed: BTreeMap::new(),
            placed_before_down: BTreeMap::new(),
        };
        CommandResponse::Applied {
            epoch: self.epoch,
            changed: true,
        }
    }

    /// Adds or updates a member; true if anything changed.
    fn add_member(&mut self, member: &Member) -> bool {
        match self.members.get_mut(&member.id) {
            None => {
                let member = Member {
                    state: MemberState::Joining,
                    ..member.clone()
                };
                self.members.insert(member.id, member);
                true
            }
            Some(existing) => {
                let state = match existing.state {
                    MemberState::Leaving | MemberState::Down => MemberState::Joining,
                    s => s,
                };
                let changed = existing.addr != member.addr
                    || existing.admin != member.admin
                    || existing.client_addr != member.client_addr
                    || existing.state != state;
                existing.addr.clone_from(&member.addr);
                existing.admin.clone_from(&member.admin);
                existing.client_addr.clone_from(&member.client_addr);
                existing.state = state;
                changed
            }
        }
    }

    /// Moves a present member to `Leaving` or `Down`; true if its state changed.
    fn set_state(&mut self, node: NodeId, state: MemberState) -> bool {
        match self.members.get_mut(&node) {
            Some(m) if m.state != state => {
                m.state = state;
                true
            }
            _ => false,
        }
    }

    /// Recomputes `target` from the members that take partitions.
    fn replan(&mut self) {
        let takers: Vec<NodeId> = self
            .members
            .values()
            .filter(|m| m.state.takes_partitions())
            .map(|m| m.id)
            .collect();
        self.target = if takers.is_empty() {
            self.table.clone()
        } else {
            // From the current plan: only what the change requires moves. A member back
            // from a mark-down starts from the replica sets it was placed in then.
            let mut previous: Vec<Vec<NodeId>> = (0..self.target.len() as PartitionId)
                .map(|p| self.target.replicas(p).to_vec())
                .collect();
            for (node, placed) in &self.placed_before_down {
                if !takers.contains(node) {
                    continue;
                }
                for (p, set) in placed {
                    if let Some(slot) = previous.get_mut(*p as usize) {
                        slot.clone_from(set);
                    }
                }
            }
            let previous = PartitionTable::from_replicas(previous);
            PartitionTable::rebalance(&self.params, &previous, &takers)
        };
    }

    fn synced_report(&mut self, node: NodeId, partitions: &[PartitionId], since: u64) {
        for &p in partitions {
            let stale = self.table_changed.get(&p).is_some_and(|&at| at > since);
            if !stale
                && self.target.replicas(p).contains(&node)
                && !self.table.replicas(p).contains(&node)
            {
                self.synced.entry(p).or_default().insert(node);
            }
        }
    }

    /// The members of `target[p]` that are not in `table[p]`.
    fn new_holders(&self, p: PartitionId) -> BTreeSet<NodeId> {
        let current = self.table.replicas(p);
        self.target
            .replicas(p)
            .iter()
            .filter(|n| !current.contains(n))
            .copied()
            .collect()
    }

    /// Switches every partition whose new holders all hold the data; drops stale progress.
    fn settle_partitions(&mut self) {
        let n = self.table.len().max(self.target.len());
        for p in 0..n as PartitionId {
            if self.table.replicas(p) == self.target.replicas(p) {
                self.synced.remove(&p);
                continue;
            }
            let new = self.new_holders(p);
            let done = match self.synced.get_mut(&p) {
                Some(synced) => {
                    synced.retain(|n| new.contains(n));
                    new.is_subset(synced)
                }
                None => new.is_empty(),
            };
            if done {
                self.table.set_replicas(p, self.target.replicas(p).to_vec());
                self.synced.remove(&p);
            } else if self.synced.get(&p).is_some_and(BTreeSet::is_empty) {
                self.synced.remove(&p);
            }
        }
    }

    /// Joining members that hold all their partitions become Active; Leaving members that
    /// hold none are removed.
    fn settle_members(&mut self) {
        let mut in_table = BTreeSet::new();
        let mut in_target = BTreeSet::new();
        let mut waiting = BTreeSet::new();
        let n = self.table.len().max(self.target.len());
        for p in 0..n as PartitionId {
            let current = self.table.replicas(p);
            in_table.extend(current.iter().copied());
            for node in self.target.replicas(p) {
                in_target.insert(*node);
                if !current.contains(node) {
                    waiting.insert(*node);
                }
            }
        }
        self.members.retain(|id, m| {
            m.state != MemberState::Leaving || in_table.contains(id) || in_target.contains(id)
        });
        for (id, m) in &mut self.members {
            if m.state == MemberState::Joining && !waiting.contains(id) {
                m.state = MemberState::Active;
            }
        }
    }
}

fn rejected(reason: &str) -> CommandResponse {
    CommandResponse::Rejected {
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn member(id: u64) -> Member {
        Member {
            id: NodeId(id),
            addr: format!("127.0.0.1:{}", 7000 + id),
            admin: format!("127.0.0.1:{}", 8000 + id),
            state: MemberState::Active,
            client_addr: None,
        }
    }

    fn params() -> RingParams {
        RingParams {
            partitions: 64,
            vnodes: 16,
            replication: 2,
        }
    }

    fn bootstrapped() -> ClusterState {
        let mut s = ClusterState::default();
        let r = s.apply(&Command::Init {
            params: params(),
            member: member(1),
            write_quorum: 0,
        });
        assert_eq!(
            r,
            CommandResponse::Applied {
                epoch: 1,
                changed: true
            }
        );
        s
    }

    fn state_of(s: &ClusterState, id: u64) -> Option<MemberState> {
        s.members.get(&NodeId(id)).map(|m| m.state)
    }

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().map(|&i| NodeId(i)).collect()
    }

    /// Reports every gained partition of `node` synced.
    fn sync_all(s: &mut ClusterState, node: u64) -> CommandResponse {
        let partitions = s.gaining(NodeId(node));
        s.apply(&Command::PartitionsSynced {
            node: NodeId(node),
            partitions,
            since: s.epoch,
        })
    }

    fn is_applied(r: &CommandResponse) -> bool {
        matches!(r, CommandResponse::Applied { .. })
    }

    #[test]
    fn commands_before_init_are_rejected() {
        let mut s = ClusterState::default();
        for cmd in [
            Command::AddMember { member: member(2) },
            Command::Leave { node: NodeId(2) },
            Command::MarkDown {
                node: NodeId(2),
                at_ms: 0,
            },
            Command::PartitionsSynced {
                node: NodeId(2),
                partitions: vec![0],
                since: 0,
            },
        ] {
            assert!(matches!(s.apply(&cmd), CommandResponse::Rejected { .. }));
        }
        assert_eq!(s, ClusterState::default());
    }

    #[test]
    fn init_rejects_zero_params() {
        let mut s = ClusterState::default();
        let r = s.apply(&Command::Init {
            params: RingParams {
                partitions: 0,
                ..params()
            },
            member: member(1),
            write_quorum: 0,
        });
        assert!(matches!(r, CommandResponse::Rejected { .. }));
        assert!(!s.is_initialized());
    }

    #[test]
    fn bootstrap_member_owns_everything() {
        let s = bootstrapped();
        assert_eq!(s.epoch, 1);
        assert_eq!(state_of(&s, 1), Some(MemberState::Active));
        assert_eq!(s.table.len(), 64);
        assert_eq!(s.table, PartitionTable::place(&params(), &ids(&[1])));
        for p in 0..64 {
            assert_eq!(s.table.replicas(p), &[NodeId(1)]);
        }
        assert!(s.is_settled());
        let ring = s.ring(Some(NodeId(1)));
        assert_eq!(ring.epoch, 1);
        assert_eq!(ring.moving, 0);
        assert_eq!(ring.members, vec![s.members[&NodeId(1)].clone()]);
        assert_eq!(ring.leader, Some(NodeId(1)));
    }

    #[test]
    fn second_init() {
        let mut s = bootstrapped();
        let before = s.clone();
        let same = s.apply(&Command::Init {
            params: params(),
            member: member(1),
            write_quorum: 0,
        });
        assert_eq!(
            same,
            CommandResponse::Applied {
                epoch: 1,
                changed: false
            }
        );
        let other = s.apply(&Command::Init {
            params: params(),
            member: member(2),
            write_quorum: 0,
        });
        assert!(matches!(other, CommandResponse::Rejected { .. }));
        let other_params = s.apply(&Command::Init {
            params: RingParams {
                replication: 3,
                ..params()
            },
            member: member(1),
            write_quorum: 0,
        });
        assert!(matches!(other_params, CommandResponse::Rejected { .. }));
        assert_eq!(s, before);
    }

    #[test]
    fn join_waits_for_sync_then_activates() {
        let mut s = bootstrapped();
        let table0 = s.table.clone();
        for id in [2, 3] {
            assert!(is_applied(
                &s.apply(&Command::AddMember { member: member(id) })
            ));
            assert_eq!(state_of(&s, id), Some(MemberState::Joining));
        }
        // Each change is planned from the one before.
        let two = PartitionTable::rebalance(&params(), &table0, &ids(&[1, 2]));
        let want = PartitionTable::rebalance(&params(), &two, &ids(&[1, 2, 3]));
        assert_eq!(s.target, want);
        // New holders wait: every partition that gains node 2 or 3 keeps its old replicas.
        for p in 0..64 {
            let gains = want
                .replicas(p)
                .iter()
                .any(|n| !table0.replicas(p).contains(n));
            if gains {
                assert_eq!(s.table.replicas(p), table0.replicas(p), "partition {p}");
            } else {
                assert_eq!(s.table.replicas(p), want.replicas(p), "partition {p}");
            }
        }
        let moving = s.moving();
        assert_eq!(moving, s.table.changed(&want));
        assert_eq!(s.ring(None).moving as usize, moving.len());
        for p in &moving {
            assert_eq!(s.sources(*p), table0.replicas(*p));
        }
        let epoch = s.epoch;

        let r2 = sync_all(&mut s, 2);
        assert!(is_applied(&r2));
        assert!(s.gaining(NodeId(2)).is_empty());
        // Partitions that also gain node 3 wait for it: node 2 is Active only if none does.
        let waits_for_3 = (0..64).any(|p| {
            s.target.replicas(p).contains(&NodeId(2)) && !s.table.replicas(p).contains(&NodeId(2))
        });
        let expected = if waits_for_3 {
            MemberState::Joining
        } else {
            MemberState::Active
        };
        assert_eq!(state_of(&s, 2), Some(expected));
        assert_eq!(state_of(&s, 3), Some(MemberState::Joining));
        let r3 = sync_all(&mut s, 3);
        assert!(is_applied(&r3));

        assert_eq!(s.table, want);
        assert!(s.is_settled());
        assert!(s.synced.is_empty());
        assert_eq!(state_of(&s, 2), Some(MemberState::Active));
        assert_eq!(state_of(&s, 3), Some(MemberState::Active));
        assert!(s.epoch > epoch);
        assert_eq!(s.ring(None).moving, 0);
    }

    #[test]
    fn partial_sync_is_recorded_without_switching() {
        let mut s = bootstrapped();
        for id in [2, 3] {
            s.apply(&Command::AddMember { member: member(id) });
        }
        // A partition that gains both new members needs both reports before it switches.
        let Some(p) = s
            .moving()
            .into_iter()
            .find(|&p| s.new_holders(p).len() == 2)
        else {
            return; // placement gave no partition two new holders: nothing partial to test
        };
        let table = s.table.clone();
        let epoch = s.epoch;
        let r = s.apply(&Command::PartitionsSynced {
            node: NodeId(2),
            partitions: vec![p],
            since: s.epoch,
        });
        assert_eq!(
            r,
            CommandResponse::Applied {
                epoch,
                changed: false
            }
        );
        assert_eq!(s.table, table);
        assert_eq!(s.synced[&p], BTreeSet::from([NodeId(2)]));
        assert!(!s.gaining(NodeId(2)).contains(&p));
        assert!(s.gaining(NodeId(3)).contains(&p));

        let r = s.apply(&Command::PartitionsSynced {
            node: NodeId(3),
            partitions: vec![p],
            since: s.epoch,
        });
        assert_eq!(
            r,
            CommandResponse::Applied {
                epoch: epoch + 1,
                changed: true
            }
        );
        assert_eq!(s.table.replicas(p), s.target.replicas(p));
        assert!(!s.synced.contains_key(&p));
    }

    #[test]
    fn add_member_is_idempotent() {
        let mut s = bootstrapped();
        s.apply(&Command::AddMember { member: member(2) });
        let after_first = s.clone();
        let r = s.apply(&Command::AddMember { member: member(2) });
        assert_eq!(
            r,
            CommandResponse::Applied {
                epoch: after_first.epoch,
                changed: false
            }
        );
        assert_eq!(s, after_first);

        // An address change is applied, the state kept.
        let mut moved = member(2);
        moved.addr = "10.0.0.2:7000".into();
        let r = s.apply(&Command::AddMember {
            member: moved.clone(),
        });
        assert_eq!(
            r,
            CommandResponse::Applied {
                epoch: after_first.epoch + 1,
                changed: true
            }
        );
        assert_eq!(s.members[&NodeId(2)].addr, moved.addr);
        assert_eq!(state_of(&s, 2), Some(MemberState::Joining));

        // Active members stay Active when re-added.
        let r = s.apply(&Command::AddMember { member: member(1) });
        assert!(is_applied(&r));
        assert_eq!(state_of(&s, 1), Some(MemberState::Active));
    }

    #[test]
    fn leave_moves_partitions_after_sync_then_removes() {
        let mut s = bootstrapped();
        for id in [2, 3] {
            s.apply(&Command::AddMember { member: member(id) });
        }
        sync_all(&mut s, 2);
        sync_all(&mut s, 3);
        assert!(s.is_settled());
        let table0 = s.table.clone();

        let epoch = s.epoch;
        let r = s.apply(&Command::Leave { node: NodeId(3) });
        assert!(is_applied(&r));
        assert_eq!(state_of(&s, 3), Some(MemberState::Leaving));
        let want = PartitionTable::rebalance(&params(), &table0, &ids(&[1, 2]));
        assert_eq!(s.target, want);
        assert!(s.epoch > epoch);
        // Partitions that only lose node 3 (or reorder) switch at once; the others wait.
        for p in 0..64 {
            let gains = want
                .replicas(p)
                .iter()
                .any(|n| !table0.replicas(p).contains(n));
            if gains {
                assert_eq!(s.table.replicas(p), table0.replicas(p));
            } else {
                assert_eq!(s.table.replicas(p), want.replicas(p));
            }
        }
        // Leaving again is a no-op.
        let snapshot = s.clone();
        let r = s.apply(&Command::Leave { node: NodeId(3) });
        assert_eq!(
            r,
            CommandResponse::Applied {
                epoch: snapshot.epoch,
                changed: false
            }
        );
        assert_eq!(s, snapshot);

        sync_all(&mut s, 1);
        sync_all(&mut s, 2);
        assert_eq!(s.table, want);
        assert!(s.is_settled());
        assert_eq!(state_of(&s, 3), None, "left member is removed");
        assert_eq!(s.members.len(), 2);
    }

    #[test]
    fn leave_of_absent_member_is_a_no_op() {
        let mut s = bootstrapped();
        let before = s.clone();
        let r = s.apply(&Command::Leave { node: NodeId(9) });
        assert_eq!(
            r,
            CommandResponse::Applied {
                epoch: 1,
                changed: false
            }
        );
        assert_eq!(s, before);
    }

    #[test]
    fn leave_of_only_member_keeps_table() {
        let mut s = bootstrapped();
        let table = s.table.clone();
        let r = s.apply(&Command::Leave { node: NodeId(1) });
        assert_eq!(
            r,
            CommandResponse::Applied {
                epoch: 2,
                changed: true
            }
        );
        assert_eq!(state_of(&s, 1), Some(MemberState::Leaving));
        assert_eq!(s.table, table);
        assert_eq!(s.target, table);
        assert!(s.is_settled());

        // Re-adding it makes it Joining, then Active since it already holds everything.
        let r = s.apply(&Command::AddMember { member: member(1) });
        assert!(is_applied(&r));
        assert_eq!(state_of(&s, 1), Some(MemberState::Active));
    }

    #[test]
    fn stale_sync_reports_are_ignored() {
        let mut s = bootstrapped();
        s.apply(&Command::AddMember { member: member(2) });
        sync_all(&mut s, 2);
        assert!(s.is_settled());
        let before = s.clone();
        for (node, partitions) in [
            (2, (0..64).collect::<Vec<_>>()),
            (1, vec![0, 1, 2]),
            (7, vec![3]),
            (2, vec![1000]),
        ] {
            let r = s.apply(&Command::PartitionsSynced {
                node: NodeId(node),
                partitions,
                since: s.epoch,
            });
            assert_eq!(
                r,
                CommandResponse::Applied {
                    epoch: before.epoch,
                    changed: false
                }
            );
        }
        assert_eq!(s, before);
    }

    #[test]
    fn a_report_planned_before_the_replica_set_changed_is_void() {
        let mut s = bootstrapped();
        for id in [2, 3] {
            s.apply(&Command::AddMember { member: member(id) });
            sync_all(&mut s, id);
        }
        s.apply(&Command::AddMember { member: member(4) });
        let planned = s.epoch;
        let before = s.table.clone();
        // Node 3 fails while node 4 copies: partitions it held change hands at once.
        s.apply(&Command::MarkDown {
            node: NodeId(3),
            at_ms: 0,
        });
        let gaining = s.gaining(NodeId(4));
        let changed = gaining
            .iter()
            .copied()
            .find(|&p| before.replicas(p).contains(&NodeId(3)))
            .expect("node 4 still gains a partition node 3 held");
        let unchanged = gaining
            .iter()
            .copied()
            .find(|&p| !before.replicas(p).contains(&NodeId(3)))
            .expect("node 4 still gains a partition node 3 did not hold");
        assert_eq!(s.table_changed.get(&changed), Some(&s.epoch));
        s.apply(&Command::PartitionsSynced {
            node: NodeId(4),
            partitions: vec![changed, unchanged],
            since: planned,
        });
        // The copy of `changed` may come from node 3, which no longer receives its writes.
        let still = s.gaining(NodeId(4));
        assert!(still.contains(&changed));
        assert!(!still.contains(&unchanged));
        // Copied again from a current holder, it counts.
        s.apply(&Command::PartitionsSynced {
            node: NodeId(4),
            partitions: vec![changed],
            since: s.epoch,
        });
        assert!(!s.gaining(NodeId(4)).contains(&changed));
    }

    #[test]
    fn mark_down_excludes_from_placement() {
        let mut s = bootstrapped();
        for id in [2, 3] {
            s.apply(&Command::AddMember { member: member(id) });
            sync_all(&mut s, id);
        }
        assert!(s.is_settled());
        let before = s.clone();
        let r = s.apply(&Command::MarkDown {
            node: NodeId(3),
            at_ms: 0,
        });
        assert!(is_applied(&r));
        assert_eq!(state_of(&s, 3), Some(MemberState::Down));
        assert_eq!(s.down_since.get(&NodeId(3)), Some(&0));
        // At once: its partitions are owned by their next replica.
        assert!((0..64).all(|p| !s.table.replicas(p).contains(&NodeId(3))));
        for p in 0..64 {
            let had = before.table.replicas(p);
            if had.contains(&NodeId(3)) {
                let rest: Vec<NodeId> = had.iter().copied().filter(|&n| n != NodeId(3)).collect();
                assert_eq!(s.table.replicas(p), rest.as_slice(), "partition {p}");
            }
        }
        assert_eq!(
            s.target,
            PartitionTable::rebalance(&params(), &before.target, &ids(&[1, 2]))
        );
        sync_all(&mut s, 1);
        sync_all(&mut s, 2);
        assert!(s.is_settled());
        // A down member is kept (it may come back) and holds nothing any more.
        assert_eq!(state_of(&s, 3), Some(MemberState::Down));
        assert!((0..64).all(|p| !s.table.replicas(p).contains(&NodeId(3))));
        // Coming back: Joining again, placed where it was before it went down (where its
        // data is), then Active after syncing.
        s.apply(&Command::AddMember { member: member(3) });
        assert_eq!(state_of(&s, 3), Some(MemberState::Joining));
        assert_eq!(s.target, before.target);
        sync_all(&mut s, 3);
        assert_eq!(state_of(&s, 3), Some(MemberState::Active));
        assert!(s.is_settled());
    }

    #[test]
    fn a_restarted_member_resyncs_before_it_owns_again() {
        let mut s = bootstrapped();
        for id in [2, 3] {
            s.apply(&Command::AddMember { member: member(id) });
            sync_all(&mut s, id);
        }
        let settled = s.table.clone();
        let epoch = s.epoch;
        let r = s.apply(&Command::Restarted { node: NodeId(2) });
        assert!(matches!(r, CommandResponse::Applied { changed: true, .. }));
        assert!(s.epoch > epoch);
        assert_eq!(state_of(&s, 2), Some(MemberState::Joining));
        assert!((0..64).all(|p| !s.table.replicas(p).contains(&NodeId(2))));
        // It was never marked down: nothing says it must discard its data.
        assert!(!s.down_since.contains_key(&NodeId(2)));
        assert_eq!(s.target, settled);
        sync_all(&mut s, 2);
        assert!(s.is_settled());
        assert_eq!(s.table, settled);
        assert_eq!(state_of(&s, 2), Some(MemberState::Active));
        // Marked down, then restarted: the time it went down is kept while it rejoins.
        s.apply(&Command::MarkDown {
            node: NodeId(3),
            at_ms: 42,
        });
        s.apply(&Command::Restarted { node: NodeId(3) });
        assert_eq!(state_of(&s, 3), Some(MemberState::Joining));
        assert_eq!(s.down_since.get(&NodeId(3)), Some(&42));
        sync_all(&mut s, 3);
        assert_eq!(state_of(&s, 3), Some(MemberState::Active));
        assert!(s.down_since.is_empty());
        // A member alone in a replica set keeps it when marked down (R = 1 here).
        let mut single = bootstrapped();
        single.apply(&Command::MarkDown {
            node: NodeId(1),
            at_ms: 1,
        });
        assert!((0..64).all(|p| single.table.replicas(p) == [NodeId(1)]));
        // Unknown members are ignored.
        let before = s.clone();
        s.apply(&Command::Restarted { node: NodeId(9) });
        assert_eq!(s, before);
    }

    #[test]
    fn write_quorum_defaults_to_all_replicas() {
        let mut s = bootstrapped();
        assert_eq!(s.write_quorum(), 2);
        assert!(s.replicas_are_current());
        s.write_quorum = 1;
        assert_eq!(s.write_quorum(), 1);
        assert!(!s.replicas_are_current());
        s.write_quorum = 7;
        assert_eq!(s.write_quorum(), 2);
    }

    #[test]
    fn target_change_mid_move_drops_stale_progress() {
        let mut s = bootstrapped();
        s.apply(&Command::AddMember { member: member(2) });
        let gaining = s.gaining(NodeId(2));
        assert!(!gaining.is_empty());
        // Node 2 leaves before it finished: its pending moves are cancelled.
        s.apply(&Command::Leave { node: NodeId(2) });
        assert!(s.is_settled());
        assert_eq!(state_of(&s, 2), None);
        assert_eq!(s.table, PartitionTable::place(&params(), &ids(&[1])));
        // Its late report changes nothing.
        let before = s.clone();
        s.apply(&Command::PartitionsSynced {
            node: NodeId(2),
            partitions: gaining,
            since: s.epoch,
        });
        assert_eq!(s, before);
    }

    #[test]
    fn state_round_trips_through_postcard() {
        let mut s = bootstrapped();
        s.apply(&Command::AddMember { member: member(2) });
        let bytes = postcard::to_stdvec(&s).unwrap();
        let back: ClusterState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        let cmd = Command::PartitionsSynced {
            node: NodeId(2),
            partitions: vec![1, 2],
            since: 7,
        };
        let bytes = postcard::to_stdvec(&cmd).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), cmd);
    }
}
