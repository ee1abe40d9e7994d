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
//!    the `hashring` crate; the walks further clockwise are ours.
//! 3. **Owner, with bounded loads** ([`PartitionTable::place`]). A partition's *natural*
//!    owner is the member of the first virtual node clockwise from it (at or after its
//!    position, wrapping). No member owns more than [`owner_cap`]`(P, N) = max(⌈P/N⌉,
//!    ⌊1.1·P/N⌋)` partitions (`N` distinct members). A member with more natural partitions
//!    than that keeps the ones nearest (clockwise distance) to its virtual nodes; the others
//!    *spill*, nearest first, clockwise from their natural virtual node to the first member
//!    that still has room.
//! 4. **Replica set** = the owner, then the next `R − 1` *distinct* members clockwise from the
//!    virtual node where the owner was found, owner first (`R = min(max(replication, 1), N)`).
//! 5. The table depends only on the parameters and the *set* of member ids: input order and
//!    duplicates do not matter. No members gives `P` empty replica sets.
//!
//! # Caveats
//! - The cap trades movement for balance. With 64 virtual nodes and no cap, the most-loaded
//!   of 1,000 members owns ~1.7–1.8× the mean at `P = 65,536` (3.4× at `P = 4096`); the cap
//!   holds it to 1.1× (or `⌈P/N⌉` when `P/N` is small). But when membership changes,
//!   partitions that spilled shift too, besides the ones the joining member takes (or the
//!   leaving member gives up): about 1.4× the ideal `P/N` owner changes on average at 1,000
//!   members, against ~0.95× without a cap. See [`owner_cap`] and `docs/ring.md`.
//! - Replica (non-owner) loads are not bounded: at 1,000 members the member in the most
//!   replica sets is in ~1.35–1.5× the mean number of them at `P = 65,536`, ~2.1–2.3× at
//!   `P = 4096`. Bounding them the same way was measured to raise replica-set churn on a
//!   join from ~2.4× to ~3.6× `P/N`, so it is not done.
//! - Placement costs O(N·V·log(N·V) + P·log P) for `V` virtual nodes per member, and the
//!   replica walk O(R²) per partition. It runs once per epoch, never per request.

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

/// The most partitions one member may own when `partitions` are placed on `members` distinct
/// members: `max(⌈P/N⌉, ⌊1.1·P/N⌋)` (0 when there are no members).
///
/// Why this value: `⌊1.1·P/N⌋` keeps the most-loaded member within 10 % of the mean, which is
/// the balance target; `⌈P/N⌉` is the least cap that can hold every partition, and wins when
/// `P/N` is small (at `P/N = 4.096` the cap is 5). A looser cap would move fewer partitions
/// on membership changes (fewer members are full, so fewer spills shift): at `P/N ≈ 65`, a
/// cap of 1.2× the mean instead of 1.1× brings owner changes on a join from ~1.36× to
/// ~1.09× the ideal `P/N` on average, but lets the most-loaded member reach 1.19× the mean.
/// Balance is felt all the time by the busiest member, movement only during a change, so
/// the balance target wins. See `docs/ring.md` for the measurements.
pub fn owner_cap(partitions: u32, members: usize) -> u32 {
    if members == 0 {
        return 0;
    }
    let p = u64::from(partitions);
    let n = members as u64;
    let cap = p.div_ceil(n).max(p * 11 / (n * 10));
    u32::try_from(cap).unwrap_or(u32::MAX)
}

/// Partition → replica set (owner first, then the next distinct members clockwise).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    replicas: Vec<Vec<NodeId>>,
}

impl PartitionTable {
    /// Places `params.partitions` partitions on `members` by consistent hashing with virtual
    /// nodes and bounded loads, with the cap [`owner_cap`]; see the [module docs](self) for
    /// the rules. A pure function of `params` and the *set* of member ids (order and
    /// duplicates do not matter). No members gives `P` empty replica sets; `replication` 0
    /// counts as 1 and `vnodes` 0 as 1.
    pub fn place(params: &RingParams, members: &[NodeId]) -> Self {
        let mut distinct = members.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let cap = owner_cap(params.partitions, distinct.len());
        Self::place_sorted(params, &distinct, cap)
    }

    /// [`place`](Self::place) with an explicit owner cap instead of [`owner_cap`], for
    /// measuring the balance/movement trade-off. A cap below `⌈P/N⌉` (which could not hold
    /// every partition) is raised to it. Not for production tables: every process must use
    /// the same cap, and [`place`](Self::place) is the one they agree on.
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
        };
        let ring = Ring::standalone(me, RingParams::default());
        for p in 0..ring.params.partitions {
            assert_eq!(ring.table.owner(p), Some(NodeId(1)), "partition {p}");
        }
    }
}
