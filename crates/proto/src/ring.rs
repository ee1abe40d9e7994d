//! The ring: which member holds which key. Pure functions shared by nodes and clients.
//!
//! The key space is cut into a fixed number `P` of **partitions** ([`RingParams::partitions`],
//! default 4096, fixed for a cluster's life). Partitions, not keys, are what members own and
//! what moves when membership changes: routing a key is a hash plus a table lookup, and a
//! membership change moves whole partitions. Every function here is pure and gives the same
//! answer in every process, version and platform, because nodes and clients must agree on
//! it; the hashes and rules below are **protocol constants**, and changing any of them is a
//! wire-format change.
//!
//! # Rules
//! 1. **Key → partition** ([`partition_of`]): `xxh3_64(namespace ++ [0x00] ++ key) mod P`.
//! 2. **The ring**: each distinct member puts `vnodes` virtual nodes on a 64-bit hash ring,
//!    virtual node `i` of member `m` at [`vnode_position`]`(m, i)`; partition `p` sits at
//!    [`partition_position`]`(p)`. Both are xxh3-64 of little-endian bytes, computed with
//!    [`StableHasher`]. The first virtual node clockwise from a partition is looked up with
//!    the `hashring` crate; the walks further clockwise are ours. A partition's *natural*
//!    member is the member of that first virtual node (at or after its position, wrapping).
//! 3. **Replica sets, by rebalancing** ([`PartitionTable::rebalance`]`(params, previous,
//!    members)`). With `N` distinct members, `R = min(max(replication, 1), N)`, `lo = ⌊P/N⌋`
//!    and `hi = ⌈P/N⌉`, the replica positions `k = 0` (the owner), `1`, …, `R − 1` are filled
//!    one after the other. Every member ends up in each position of `lo` to `hi` sets
//!    (always for position 0, the owner; for later positions unless a small cluster makes it
//!    impossible), and a set never repeats a member:
//!    1. *Keep*: the member in position `k` of the previous table stays if it is still a
//!       member and not already earlier in the set.
//!    2. *Place the rest* (partitions of removed members, or all of them for a new table),
//!       nearest their natural virtual node first: clockwise from it to the first member
//!       not in the set whose count is below `lo`; once no such member is left, below `hi`.
//!    3. *Fill*: members still below `lo` (new members) take partitions from members above
//!       `hi` first, then from members above `lo`: partitions nearest (clockwise distance)
//!       to the virtual nodes of members below `lo` first, each taken by the first such
//!       member clockwise that is not in its set.
//!    4. *Trim*: members still above `hi` give up the partitions farthest from their virtual
//!       nodes, each clockwise to the first member below `hi` not in its set.
//!
//!    All orders are over values derived from the member *set*, partition ids and ring
//!    positions, so the table does not depend on the order of the input or on duplicates.
//! 4. **Initial placement** ([`PartitionTable::place`]) is `rebalance` from an empty table.
//!    No members gives `P` empty replica sets.
//!
//! Because every table is balanced to within one partition per position, adding a member
//! moves `⌊P/(N+1)⌋` or `⌈P/(N+1)⌉` owners, all to it, and removing one moves only the
//! partitions it owned. Replica sets change only to take a new member in or a removed one out
//! (about `R·P/N` sets; measured, not guaranteed for positions after the owner). The table depends on the history of member sets, not on the current set
//! alone: it is computed once per membership change, by the Raft state machine, and
//! distributed to clients with the [`Ring`]; clients never recompute it.
//!
//! # Caveats
//! - At `P/N` small the balance is limited by rounding: at `P = 4096, N = 1000` a member owns
//!   4 or 5 partitions, 1.22× the mean at most, which no placement can beat.
//! - A previous table that was not balanced this way (made by [`PartitionTable::place_with_cap`],
//!   or by another version) is brought within `lo..=hi` in one step, which can move many
//!   partitions once.
//! - [`PartitionTable::place`] of a grown member set from scratch is a different table from
//!   `rebalance` of the previous one, and moves ~8× as many owners (measured at 1,000
//!   members). Membership changes must go through `rebalance`.
//! - Placement costs O(N·V·log(N·V) + R·P·log P) for `V` virtual nodes per member; at 1,000
//!   members and `P = 65,536`, ~80 ms in a release build. It runs once per membership change,
//!   never per request.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};

use hashring::HashRing;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3Default;

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
    /// `HOST:PORT` that clients *outside* the members' network dial instead of `addr`, when
    /// the two differ (a container's port published on the host, a NAT). `None` when clients
    /// reach the member at `addr`. Peers always dial `addr`; a client dials these addresses
    /// only when it reached the cluster through one of them (see `strata-client`'s routing).
    pub client_addr: Option<String>,
}

/// A [`Hasher`] whose output is the same in every process, version and platform: xxh3-64
/// (default secret, seed 0) of the bytes written to it. (It wraps `xxhash_rust`'s
/// `Xxh3Default`, the streaming `Xxh3` specialised to seed 0: same digests, cheaper to
/// create.)
///
/// Integers are fed as their **little-endian** bytes (`usize`/`isize` widened to 64 bits), so
/// `(7u64, 3u32).hash(&mut h)` hashes the 12 bytes `07 00 .. 00 03 00 00 00` on every
/// platform. (The `Hasher` of `xxhash-rust` feeds native-endian bytes and `std`'s hashers
/// are randomly seeded or unspecified; neither may be used where nodes and clients must
/// agree.) Only hash types whose `Hash` impl is itself stable: integers, byte slices,
/// strings, tuples and arrays of those, not `HashMap`s or pointers.
#[derive(Clone, Default)]
pub struct StableHasher(Xxh3Default);

impl StableHasher {
    /// A hasher with nothing written yet.
    pub fn new() -> Self {
        Self(Xxh3Default::new())
    }
}

impl fmt::Debug for StableHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StableHasher")
            .field(&self.0.digest())
            .finish()
    }
}

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        self.0.digest()
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn write_u8(&mut self, i: u8) {
        self.write(&[i]);
    }

    fn write_u16(&mut self, i: u16) {
        self.write(&i.to_le_bytes());
    }

    fn write_u32(&mut self, i: u32) {
        self.write(&i.to_le_bytes());
    }

    fn write_u64(&mut self, i: u64) {
        self.write(&i.to_le_bytes());
    }

    fn write_u128(&mut self, i: u128) {
        self.write(&i.to_le_bytes());
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn write_i8(&mut self, i: i8) {
        self.write(&i.to_le_bytes());
    }

    fn write_i16(&mut self, i: i16) {
        self.write(&i.to_le_bytes());
    }

    fn write_i32(&mut self, i: i32) {
        self.write(&i.to_le_bytes());
    }

    fn write_i64(&mut self, i: i64) {
        self.write(&i.to_le_bytes());
    }

    fn write_i128(&mut self, i: i128) {
        self.write(&i.to_le_bytes());
    }

    fn write_isize(&mut self, i: isize) {
        self.write_i64(i as i64);
    }
}

/// Builds [`StableHasher`]s; the `BuildHasher` given to the hash ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StableBuildHasher;

impl BuildHasher for StableBuildHasher {
    type Hasher = StableHasher;

    fn build_hasher(&self) -> StableHasher {
        StableHasher::new()
    }
}

/// One virtual node. Its `Hash` is exactly (member id as `u64`, index as `u32`), so with
/// [`StableHasher`] its position is [`vnode_position`]; `at` is bookkeeping, not hashed.
#[derive(Clone, Copy, Debug)]
struct VNode {
    member: NodeId,
    index: u32,
    /// Index of this virtual node in [`VirtualRing::points`].
    at: usize,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.member.0);
        state.write_u32(self.index);
    }
}

/// Where virtual node `index` of `member` sits on the ring (protocol constant):
/// `xxh3_64(member.to_le_bytes() ++ index.to_le_bytes())`, 12 bytes.
pub fn vnode_position(member: NodeId, index: u32) -> u64 {
    StableBuildHasher.hash_one(VNode {
        member,
        index,
        at: 0,
    })
}

/// Where a partition sits on the ring (protocol constant):
/// `xxh3_64(partition.to_le_bytes())`, 4 bytes.
pub fn partition_position(partition: PartitionId) -> u64 {
    StableBuildHasher.hash_one(partition)
}

/// `max(⌈P/N⌉, ⌊1.1·P/N⌋)` for `partitions` on `members` distinct members (0 when there are
/// none): the balance target, "the most-loaded member owns at most 1.1× the mean", rounded
/// down, or `⌈P/N⌉` where `P/N` is too small for that.
///
/// [`PartitionTable::rebalance`] does better (every member owns `⌊P/N⌋` or `⌈P/N⌉`, and
/// `⌈P/N⌉ ≤ owner_cap`). This was the cap of the stateless placement it replaced
/// ([`PartitionTable::place_with_cap`]), and [`PartitionTable::rebalance_with_cap`] can use it
/// to measure why a looser bound is worse: with members allowed up to this cap, every member
/// at it must give one up when `⌊1.1·P/N⌋` drops (between 1001 and 1002 members at
/// `P = 65,536`), up to ~9× `P/N` owner changes in one join. See `docs/ring.md`.
pub fn owner_cap(partitions: u32, members: usize) -> u32 {
    if members == 0 {
        return 0;
    }
    let p = u64::from(partitions);
    let n = members as u64;
    let cap = p.div_ceil(n).max(p * 11 / (n * 10));
    u32::try_from(cap).unwrap_or(u32::MAX)
}

/// Partition → replica set, owner first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    replicas: Vec<Vec<NodeId>>,
}

impl PartitionTable {
    /// The initial placement of `params.partitions` partitions on `members`:
    /// [`rebalance`](Self::rebalance) from an empty table. Every member owns `⌊P/N⌋` or
    /// `⌈P/N⌉` partitions and is in `⌊P/N⌋` or `⌈P/N⌉` of each replica position. A pure
    /// function of `params` and the *set* of member ids (order and duplicates do not
    /// matter). No members gives `P` empty replica sets; `replication` 0 counts as 1 and
    /// `vnodes` 0 as 1.
    ///
    /// Use it for a new cluster. When membership changes, use
    /// [`rebalance`](Self::rebalance) from the table in effect: placing the new member set
    /// from scratch moves far more partitions than needed.
    pub fn place(params: &RingParams, members: &[NodeId]) -> Self {
        Self::rebalance(params, &Self::default(), members)
    }

    /// The table for `members` that moves as little as possible from `previous`, with every
    /// member owning `⌊P/N⌋` or `⌈P/N⌉` partitions (`N` distinct members); see the
    /// [module docs](self) for the rules. Adding one member to a table made this way moves
    /// `⌊P/(N+1)⌋` or `⌈P/(N+1)⌉` owners, all to the new member; removing one moves only
    /// the partitions it owned. Replica sets change only where a member has to come in or
    /// go (about `R·P/N` of them for one member added or removed, as measured in
    /// `docs/ring.md`).
    ///
    /// A pure function of `params`, `previous` and the *set* of member ids (order and
    /// duplicates do not matter), so every node that applies the same sequence of
    /// membership changes gets the same table. A `previous` with a different number of
    /// partitions is ignored (as if empty); members of `previous` not in `members` are
    /// treated as removed.
    pub fn rebalance(params: &RingParams, previous: &PartitionTable, members: &[NodeId]) -> Self {
        Self::rebalance_with_cap(params, previous, members, 0)
    }

    /// [`rebalance`](Self::rebalance), but a member keeps up to `cap` partitions in each
    /// replica position (at least `⌈P/N⌉`, to which a smaller `cap` is raised), and
    /// partitions that must move go to members under `cap`. Members below `⌊P/N⌋` still take
    /// partitions up to it. For measuring the balance/movement trade-off only:
    /// [`rebalance`](Self::rebalance) (`cap = ⌈P/N⌉`) is what every process agrees on.
    pub fn rebalance_with_cap(
        params: &RingParams,
        previous: &PartitionTable,
        members: &[NodeId],
        cap: u32,
    ) -> Self {
        let partitions = params.partitions as usize;
        let mut distinct = members.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.is_empty() {
            return Self {
                replicas: vec![Vec::new(); partitions],
            };
        }
        let ring = VirtualRing::new(&distinct, params.vnodes.max(1));
        let n = distinct.len();
        let lo = partitions / n;
        let hi = partitions.div_ceil(n);
        let balancer = Balancer {
            positions: (0..params.partitions).map(partition_position).collect(),
            natural: (0..params.partitions).map(|p| ring.natural(p)).collect(),
            ring: &ring,
            lo,
            cap: (cap as usize).max(hi),
        };
        // The previous replica sets as member slots (None: no longer a member).
        let previous: Vec<Vec<Option<usize>>> = if previous.len() == partitions {
            previous
                .replicas
                .iter()
                .map(|set| {
                    set.iter()
                        .map(|id| distinct.binary_search(id).ok())
                        .collect()
                })
                .collect()
        } else {
            vec![Vec::new(); partitions]
        };
        let r = (params.replication.max(1) as usize).min(n);
        let mut sets: Vec<Vec<usize>> = vec![Vec::with_capacity(r); partitions];
        for k in 0..r {
            let column = balancer.column(k, &previous, &sets);
            for (set, slot) in sets.iter_mut().zip(column) {
                set.push(slot);
            }
        }
        Self {
            replicas: sets
                .into_iter()
                .map(|set| set.into_iter().map(|slot| distinct[slot]).collect())
                .collect(),
        }
    }

    /// The table with the members in `down` taken out of every replica set, order kept (the
    /// first remaining member becomes the owner). A replica set made only of members in
    /// `down` is kept unchanged, so that every partition still has an owner to try.
    pub fn without(&self, down: &[NodeId]) -> PartitionTable {
        let mut down = down.to_vec();
        down.sort_unstable();
        down.dedup();
        let replicas = self
            .replicas
            .iter()
            .map(|set| {
                let up: Vec<NodeId> = set
                    .iter()
                    .copied()
                    .filter(|m| down.binary_search(m).is_err())
                    .collect();
                if up.is_empty() { set.clone() } else { up }
            })
            .collect();
        Self { replicas }
    }

    /// The placement used before [`rebalance`](Self::rebalance), kept for comparison:
    /// consistent hashing with bounded loads, stateless. Each member keeps its natural
    /// partitions nearest its virtual nodes up to `cap` (at least `⌈P/N⌉`; [`owner_cap`] is
    /// the 1.1× cap it used), the others spill clockwise to the first member with room, and
    /// the replica set is the owner then the next `R − 1` distinct members clockwise from
    /// the owner's virtual node. Not for production tables.
    pub fn place_with_cap(params: &RingParams, members: &[NodeId], cap: u32) -> Self {
        let mut distinct = members.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        Self::place_sorted(params, &distinct, cap)
    }

    /// Placement over sorted, distinct members.
    fn place_sorted(params: &RingParams, members: &[NodeId], cap: u32) -> Self {
        let partitions = params.partitions as usize;
        if members.is_empty() {
            return Self {
                replicas: vec![Vec::new(); partitions],
            };
        }
        let ring = VirtualRing::new(members, params.vnodes.max(1));
        // No cap below ⌈P/N⌉, which could not hold every partition.
        let cap = (cap as usize).max((params.partitions as usize).div_ceil(members.len()));
        let owners = ring.owners(params.partitions, cap);
        let r = (params.replication.max(1) as usize).min(members.len());
        let replicas = owners
            .iter()
            .map(|&at| {
                ring.replicas_from(at, r)
                    .into_iter()
                    .map(|slot| members[slot])
                    .collect()
            })
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

    /// Partitions whose owner differs between `self` and `other` (a subset of
    /// [`changed`](Self::changed)).
    pub fn owners_changed(&self, other: &PartitionTable) -> Vec<PartitionId> {
        let n = self.len().max(other.len());
        (0..n as PartitionId)
            .filter(|&p| self.owner(p) != other.owner(p))
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

    /// How many replica sets each member is in (owner or not).
    pub fn replica_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for member in self.replicas.iter().flatten() {
            *counts.entry(*member).or_default() += 1;
        }
        counts
    }
}

/// A virtual node on the ring: its position and the slot (index in the sorted member list) of
/// its member.
#[derive(Clone, Copy, Debug)]
struct Point {
    position: u64,
    slot: usize,
}

/// The ring of virtual nodes of a set of members, in clockwise order.
struct VirtualRing {
    /// Every virtual node, sorted by (position, slot, vnode index): equal positions (never
    /// seen in practice) are ordered the same way everywhere.
    points: Vec<Point>,
    /// Index in `points` of each member's virtual nodes, by slot.
    member_points: Vec<Vec<usize>>,
    /// The same virtual nodes in a `hashring` ring, which finds the first one clockwise
    /// from a partition.
    lookup: HashRing<VNode, StableBuildHasher>,
}

impl VirtualRing {
    /// The ring of `members` (sorted, distinct, not empty) with `vnodes` virtual nodes each.
    fn new(members: &[NodeId], vnodes: u32) -> Self {
        let mut sorted: Vec<(u64, usize, u32)> = members
            .iter()
            .enumerate()
            .flat_map(|(slot, &member)| {
                (0..vnodes).map(move |index| (vnode_position(member, index), slot, index))
            })
            .collect();
        sorted.sort_unstable();
        let mut member_points = vec![Vec::with_capacity(vnodes as usize); members.len()];
        let mut entries = Vec::with_capacity(sorted.len());
        let mut points = Vec::with_capacity(sorted.len());
        for (at, &(position, slot, index)) in sorted.iter().enumerate() {
            member_points[slot].push(at);
            points.push(Point { position, slot });
            entries.push(VNode {
                member: members[slot],
                index,
                at,
            });
        }
        // Added in ring order, so hashring's (stable) sort keeps our order of equal positions.
        let mut lookup = HashRing::with_hasher(StableBuildHasher);
        lookup.batch_add(entries);
        Self {
            points,
            member_points,
            lookup,
        }
    }

    /// Index of the partition's natural virtual node: the first at or after its position,
    /// wrapping (`HashRing::get` with the same hasher).
    fn natural(&self, partition: PartitionId) -> usize {
        let Some(vnode) = self.lookup.get(&partition) else {
            return 0;
        };
        // hashring's binary search may land on any of several equal positions: take the
        // first, as `points` orders them.
        let mut at = vnode.at;
        while at > 0 && self.points[at - 1].position == self.points[at].position {
            at -= 1;
        }
        at
    }

    /// For each partition, the index of the virtual node where its owner was found, with at
    /// most `cap` partitions per member (`cap · N ≥ partitions`).
    fn owners(&self, partitions: u32, cap: usize) -> Vec<usize> {
        // Phase 1: every member keeps its natural partitions nearest its virtual nodes, up to
        // the cap. Sorting by (member, distance, partition) makes this independent of order.
        let mut natural: Vec<(usize, u64, PartitionId, usize)> = (0..partitions)
            .map(|p| {
                let position = partition_position(p);
                let at = self.natural(p);
                let point = self.points[at];
                (point.slot, point.position.wrapping_sub(position), p, at)
            })
            .collect();
        natural.sort_unstable();
        let mut owner_at = vec![0usize; partitions as usize];
        let mut load = vec![0usize; self.member_points.len()];
        let mut spilled = Vec::new();
        for (slot, distance, p, at) in natural {
            if load[slot] < cap {
                load[slot] += 1;
                owner_at[p as usize] = at;
            } else {
                spilled.push((distance, p, at));
            }
        }
        if spilled.is_empty() {
            return owner_at;
        }

        // Phase 2: spilled partitions, nearest first, go clockwise from their natural virtual
        // node to the first member with room. `next_open` finds that virtual node in near
        // constant time (union-find over "next point whose member has room", with a sentinel
        // at the end).
        spilled.sort_unstable();
        let end = self.points.len();
        let mut next_open: Vec<usize> = (0..=end).collect();
        for (slot, &l) in load.iter().enumerate() {
            if l >= cap {
                self.close(&mut next_open, slot);
            }
        }
        for (_, p, natural_at) in spilled {
            let mut at = find_open(&mut next_open, natural_at);
            if at == end {
                at = find_open(&mut next_open, 0);
            }
            if at == end {
                // Unreachable while cap · N ≥ partitions; keep the natural owner rather than
                // fail.
                at = natural_at;
            }
            owner_at[p as usize] = at;
            let slot = self.points[at].slot;
            load[slot] += 1;
            if load[slot] == cap {
                self.close(&mut next_open, slot);
            }
        }
        owner_at
    }

    /// Marks every virtual node of member `slot` as full.
    fn close(&self, next_open: &mut [usize], slot: usize) {
        for &at in &self.member_points[slot] {
            next_open[at] = at + 1;
        }
    }

    /// The slots of the owner at point `at` and the next `r − 1` distinct members clockwise.
    fn replicas_from(&self, at: usize, r: usize) -> Vec<usize> {
        let owner = self.points[at].slot;
        let mut set = Vec::with_capacity(r);
        set.push(owner);
        let len = self.points.len();
        let mut i = at;
        for _ in 1..len {
            if set.len() >= r {
                break;
            }
            i = (i + 1) % len;
            let slot = self.points[i].slot;
            if !set.contains(&slot) {
                set.push(slot);
            }
        }
        set
    }
}

/// No member yet (in a column under construction).
const UNASSIGNED: usize = usize::MAX;

/// The rebalancing of one table: see [`PartitionTable::rebalance_with_cap`].
struct Balancer<'a> {
    ring: &'a VirtualRing,
    /// Ring position of each partition.
    positions: Vec<u64>,
    /// Index in `ring.points` of each partition's natural virtual node.
    natural: Vec<usize>,
    /// Every member holds at least this many partitions in each replica position (`⌊P/N⌋`).
    lo: usize,
    /// And at most this many (`⌈P/N⌉` for [`PartitionTable::rebalance`]).
    cap: usize,
}

impl Balancer<'_> {
    /// The member slot of replica position `k` of every partition, given the positions before
    /// it (`sets`, `k` members each) and the previous table (`previous`, member slots).
    fn column(&self, k: usize, previous: &[Vec<Option<usize>>], sets: &[Vec<usize>]) -> Vec<usize> {
        let partitions = self.positions.len();
        let members = self.ring.member_points.len();
        let mut holder = vec![UNASSIGNED; partitions];
        let mut load = vec![0usize; members];

        // 1. Keep: the previous member of position k stays if it is still a member and not
        //    already earlier in the set (steps 3 and 4 take from members with too many).
        for (p, set) in sets.iter().enumerate() {
            if let Some(m) = previous[p].get(k).copied().flatten()
                && !set.contains(&m)
            {
                holder[p] = m;
                load[m] += 1;
            }
        }

        // 2. The partitions without a member (of removed members, or all of them for a new
        //    table), nearest their natural virtual node first, go clockwise from it to the
        //    first member that can take them: first only to members below the floor, then to
        //    members below the cap.
        let mut pool: Vec<(u64, usize)> = (0..partitions)
            .filter(|&p| holder[p] == UNASSIGNED)
            .map(|p| {
                let at = self.natural[p];
                (
                    self.ring.points[at]
                        .position
                        .wrapping_sub(self.positions[p]),
                    p,
                )
            })
            .collect();
        pool.sort_unstable();
        let mut rest = Vec::new();
        let mut open = self.open_where(|m| load[m] < self.lo);
        for (_, p) in pool {
            match self.walk(&mut open, self.natural[p], |m| !sets[p].contains(&m)) {
                Some(m) => {
                    holder[p] = m;
                    load[m] += 1;
                    if load[m] >= self.lo {
                        self.ring.close(&mut open, m);
                    }
                }
                None => rest.push(p),
            }
        }
        if !rest.is_empty() {
            let mut open = self.open_where(|m| load[m] < self.cap);
            for p in rest {
                let eligible = |m: usize| !sets[p].contains(&m);
                // With no eligible member under the cap (possible only in a later replica
                // position of a small cluster), the first eligible member clockwise.
                let m = self
                    .walk(&mut open, self.natural[p], eligible)
                    .unwrap_or_else(|| self.first_eligible(self.natural[p], eligible));
                holder[p] = m;
                load[m] += 1;
                if load[m] >= self.cap {
                    self.ring.close(&mut open, m);
                }
            }
        }

        // 3. Members still below the floor (new members) take partitions from members above
        //    it, from members above the cap first.
        if load.iter().any(|&l| l < self.lo) {
            self.steal(sets, &mut holder, &mut load);
        }

        // 4. Members still above the cap give the partitions farthest from their virtual
        //    nodes, clockwise to the first member below the cap.
        if load.iter().any(|&l| l > self.cap) {
            self.shed(sets, &mut holder, &mut load);
        }
        holder
    }

    /// Moves partitions to members below the floor, until none is (or no eligible partition
    /// is left). Candidates are taken nearest first (clockwise distance to the nearest virtual
    /// node of a member below the floor), each by the first member below the floor clockwise
    /// from it; first only from members above the cap, then from members above the floor.
    fn steal(&self, sets: &[Vec<usize>], holder: &mut [usize], load: &mut [usize]) {
        let points = &self.ring.points;
        let mut short: usize = load.iter().map(|&l| self.lo.saturating_sub(l)).sum();
        let needy: Vec<usize> = (0..points.len())
            .filter(|&at| load[points[at].slot] < self.lo)
            .collect();
        let mut candidates: Vec<(u64, usize)> = (0..holder.len())
            .filter(|&p| load[holder[p]] > self.lo)
            .map(|p| {
                let position = self.positions[p];
                let i = needy.partition_point(|&at| points[at].position < position);
                let at = needy[if i == needy.len() { 0 } else { i }];
                (points[at].position.wrapping_sub(position), p)
            })
            .collect();
        candidates.sort_unstable();
        let mut open = self.open_where(|m| load[m] < self.lo);
        for above in [self.cap, self.lo] {
            for &(_, p) in &candidates {
                if short == 0 {
                    return;
                }
                let donor = holder[p];
                if load[donor] <= above {
                    continue;
                }
                let Some(m) = self.walk(&mut open, self.natural[p], |m| !sets[p].contains(&m))
                else {
                    continue;
                };
                holder[p] = m;
                load[donor] -= 1;
                load[m] += 1;
                short -= 1;
                if load[m] >= self.lo {
                    self.ring.close(&mut open, m);
                }
            }
        }
    }

    /// Moves partitions from members above the cap, farthest from their virtual nodes first,
    /// each clockwise to the first eligible member below the cap (it stays if there is none).
    fn shed(&self, sets: &[Vec<usize>], holder: &mut [usize], load: &mut [usize]) {
        let mut over: Vec<(usize, Reverse<u64>, usize)> = (0..holder.len())
            .filter(|&p| load[holder[p]] > self.cap)
            .map(|p| (holder[p], Reverse(self.distance(p, holder[p])), p))
            .collect();
        over.sort_unstable();
        let mut open = self.open_where(|m| load[m] < self.cap);
        for (donor, _, p) in over {
            if load[donor] <= self.cap {
                continue;
            }
            let Some(m) = self.walk(&mut open, self.natural[p], |m| !sets[p].contains(&m)) else {
                continue;
            };
            holder[p] = m;
            load[donor] -= 1;
            load[m] += 1;
            if load[m] >= self.cap {
                self.ring.close(&mut open, m);
            }
        }
    }

    /// Clockwise distance from partition `p` to the nearest virtual node of member `m` at or
    /// after it (the smallest for its natural owner).
    fn distance(&self, p: usize, m: usize) -> u64 {
        let position = self.positions[p];
        let points = &self.ring.points;
        let own = &self.ring.member_points[m];
        let i = own.partition_point(|&at| points[at].position < position);
        let at = own[if i == own.len() { 0 } else { i }];
        points[at].position.wrapping_sub(position)
    }

    /// A union-find "next open point" array (see [`find_open`]) in which the points of the
    /// members for which `open` is true are open.
    fn open_where(&self, open: impl Fn(usize) -> bool) -> Vec<usize> {
        let points = &self.ring.points;
        (0..=points.len())
            .map(|at| {
                if at < points.len() && !open(points[at].slot) {
                    at + 1
                } else {
                    at
                }
            })
            .collect()
    }

    /// The first open point's member clockwise from point `start` (inclusive, wrapping) that
    /// is `eligible`, if any.
    fn walk(
        &self,
        next_open: &mut [usize],
        start: usize,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let end = self.ring.points.len();
        let mut at = find_open(next_open, start);
        let mut wrapped = false;
        loop {
            if at == end {
                if wrapped {
                    return None;
                }
                wrapped = true;
                at = find_open(next_open, 0);
                continue;
            }
            if wrapped && at >= start {
                return None;
            }
            let m = self.ring.points[at].slot;
            if eligible(m) {
                return Some(m);
            }
            at = find_open(next_open, at + 1);
        }
    }

    /// The member of the first point clockwise from `start` that is `eligible` (one always
    /// is: a set under construction has fewer members than the ring).
    fn first_eligible(&self, start: usize, eligible: impl Fn(usize) -> bool) -> usize {
        let points = &self.ring.points;
        (0..points.len())
            .map(|i| points[(start + i) % points.len()].slot)
            .find(|&m| eligible(m))
            .unwrap_or(points[start].slot)
    }
}

/// The first index `≥ from` whose member has room (`next_open.len() − 1` if none), with path
/// compression.
fn find_open(next_open: &mut [usize], from: usize) -> usize {
    let mut root = from;
    while next_open[root] != root {
        root = next_open[root];
    }
    let mut i = from;
    while next_open[i] != root {
        let next = next_open[i];
        next_open[i] = root;
        i = next;
    }
    root
}

/// The partition of a key (protocol constant):
///
/// ```text
/// partition_of(P, namespace, key) = xxh3_64(namespace ++ [0x00] ++ key) mod max(P, 1)
/// ```
///
/// where `xxh3_64` is XXH3 64-bit with seed 0 and the default secret, over the UTF-8 bytes of
/// the namespace, one zero byte, then the UTF-8 bytes of the key. A valid
/// [`Namespace`](crate::key::Namespace) cannot contain a zero byte, so the separator is
/// unambiguous. Stable across processes, versions and
/// platforms; `P = 0` is treated as 1.
pub fn partition_of(partitions: u32, namespace: &str, key: &str) -> PartitionId {
    let mut h = Xxh3Default::new();
    h.update(namespace.as_bytes());
    h.update(&[0]);
    h.update(key.as_bytes());
    let p = h.digest() % u64::from(partitions.max(1));
    // p < partitions ≤ u32::MAX, so the conversion is lossless.
    p as PartitionId
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The natural virtual node found by hashring is the first at or after the partition's
    /// position, wrapping, computed independently.
    #[test]
    fn hashring_lookup_is_first_point_clockwise() {
        let members: Vec<NodeId> = (1..=50).map(NodeId).collect();
        let ring = VirtualRing::new(&members, 16);
        assert_eq!(ring.points.len(), 50 * 16);
        assert!(
            ring.points
                .windows(2)
                .all(|w| w[0].position <= w[1].position)
        );
        for p in 0..4096 {
            let position = partition_position(p);
            let expected = ring
                .points
                .iter()
                .position(|pt| pt.position >= position)
                .unwrap_or(0);
            assert_eq!(ring.natural(p), expected, "partition {p}");
        }
    }

    #[test]
    fn every_member_has_its_virtual_nodes() {
        let members: Vec<NodeId> = [3, 9, 27].map(NodeId).to_vec();
        let ring = VirtualRing::new(&members, 64);
        for (slot, ats) in ring.member_points.iter().enumerate() {
            assert_eq!(ats.len(), 64);
            for &at in ats {
                assert_eq!(ring.points[at].slot, slot);
            }
        }
    }

    #[test]
    fn walk_skips_closed_and_ineligible_members_and_wraps() {
        let members: Vec<NodeId> = (1..=4).map(NodeId).collect();
        let ring = VirtualRing::new(&members, 8);
        let positions: Vec<u64> = (0..64).map(partition_position).collect();
        let natural: Vec<usize> = (0..64).map(|p| ring.natural(p)).collect();
        let balancer = Balancer {
            ring: &ring,
            positions,
            natural,
            lo: 0,
            cap: 0,
        };
        let len = ring.points.len();
        // Members 0 and 2 are open; 0 is not eligible.
        let open = balancer.open_where(|m| m == 0 || m == 2);
        for start in 0..len {
            let expected = (0..len)
                .map(|i| ring.points[(start + i) % len].slot)
                .find(|&m| m == 2);
            let mut next = open.clone();
            assert_eq!(balancer.walk(&mut next, start, |m| m != 0), expected);
        }
        let mut next = open.clone();
        assert_eq!(balancer.walk(&mut next, 3, |m| m == 1 || m == 3), None);
        assert_eq!(balancer.first_eligible(3, |m| m == 3), 3);
        // The natural member is the nearest clockwise.
        for p in 0..64 {
            let owner = ring.points[balancer.natural[p]].slot;
            let d = balancer.distance(p, owner);
            assert!(
                (0..4).all(|m| balancer.distance(p, m) >= d),
                "partition {p}"
            );
        }
    }

    #[test]
    fn find_open_skips_closed_points() {
        let mut next: Vec<usize> = (0..=5).collect();
        next[1] = 2;
        next[2] = 3;
        assert_eq!(find_open(&mut next, 1), 3);
        assert_eq!(next[1], 3);
        next[3] = 4;
        next[4] = 5;
        assert_eq!(find_open(&mut next, 1), 5);
        assert_eq!(find_open(&mut next, 0), 0);
    }
}

#[cfg(test)]
mod standalone_tests {
    use super::*;

    #[test]
    fn a_standalone_node_owns_every_partition() {
        let me = Member {
            id: NodeId(1),
            addr: "127.0.0.1:7400".into(),
            admin: "127.0.0.1:7401".into(),
            state: MemberState::Active,
            client_addr: None,
        };
        let ring = Ring::standalone(me, RingParams::default());
        for p in 0..ring.params.partitions {
            assert_eq!(ring.table.owner(p), Some(NodeId(1)), "partition {p}");
        }
    }
}
