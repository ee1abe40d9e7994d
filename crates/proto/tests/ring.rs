#![allow(clippy::unwrap_used)]
//! Placement of keys on partitions and of partitions on members (`strata_proto::ring`).
//!
//! The figures printed here are the ones in `docs/ring.md`:
//! `cargo test -p strata-proto --test ring -- --nocapture` (add `--release` for the timings).
//! The sweep over many member sets and long runs of joins and leaves is the `ring_tradeoff`
//! example.

use std::collections::BTreeSet;
use std::time::Instant;

use proptest::prelude::*;
use strata_proto::NodeId;
use strata_proto::ring::{
    PartitionTable, RingParams, StableBuildHasher, owner_cap, partition_of, partition_position,
    vnode_position,
};
use xxhash_rust::xxh3::xxh3_64;

fn ids(range: std::ops::RangeInclusive<u64>) -> Vec<NodeId> {
    range.map(NodeId).collect()
}

fn params(partitions: u32, replication: u32) -> RingParams {
    RingParams {
        partitions,
        replication,
        ..RingParams::default()
    }
}

/// (max owned, mean owned) over `members` (members that own nothing count as 0).
fn max_and_mean(table: &PartitionTable, members: usize) -> (usize, f64) {
    let max = table.owned_counts().values().copied().max().unwrap_or(0);
    (max, table.len() as f64 / members as f64)
}

// ---------------------------------------------------------------------------------------------
// Key → partition.

/// Pins key → partition: these are protocol constants. If this test fails, every client and
/// node disagrees with the ones already deployed.
#[test]
fn partition_of_is_pinned() {
    let long = "日本語のキー/ビデオ/フレーム-ü-é-🎞️-".repeat(20);
    let golden: [(&str, &str, u32); 12] = [
        ("default", "video:abc123:keyframes:frame_42", 2728),
        ("default", "embedding:clip:0123456789abcdef", 669),
        ("default", "x", 3488),
        ("default", "user:42", 670),
        ("default", "video:abc123:keyframes:frame_43", 3335),
        ("default", &long, 4014),
        ("video_colpali_mv", "video:abc123:keyframes:frame_42", 4018),
        ("video_colpali_mv", "embedding:clip:0123456789abcdef", 4070),
        ("video_colpali_mv", "x", 958),
        ("video_colpali_mv", "doc:7f3a:page:0001:patch:0511", 3532),
        ("video_colpali_mv", "video:zzz999:keyframes:frame_0", 2786),
        ("video_colpali_mv", &long, 2904),
    ];
    assert!(long.len() > 900, "the long key is {} bytes", long.len());
    let mut actual = Vec::new();
    for &(namespace, key, _) in &golden {
        let p = partition_of(4096, namespace, key);
        println!(
            "golden: {namespace:>16} {:<40} -> {p}",
            key.chars().take(40).collect::<String>()
        );
        // The definition, computed independently: xxh3-64 of namespace ++ 0x00 ++ key.
        let bytes = [namespace.as_bytes(), &[0], key.as_bytes()].concat();
        assert_eq!(u64::from(p), xxh3_64(&bytes) % 4096);
        assert_eq!(partition_of(1, namespace, key), 0);
        assert_eq!(partition_of(0, namespace, key), 0);
        actual.push(p);
    }
    let expected: Vec<u32> = golden.iter().map(|g| g.2).collect();
    assert_eq!(actual, expected);
}

/// The hash is XXH3-64 with seed 0 and the default secret (reference test vector), and the
/// namespace/key boundary matters.
#[test]
fn partition_hash_is_xxh3_with_separator() {
    assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    let a = partition_of(u32::MAX, "ab", "c");
    let b = partition_of(u32::MAX, "a", "bc");
    assert_ne!(a, b);
}

// ---------------------------------------------------------------------------------------------
// The hasher and the ring positions.

#[test]
fn positions_are_xxh3_of_little_endian_bytes() {
    use std::hash::{BuildHasher, Hasher};

    for (member, index) in [
        (0u64, 0u32),
        (1, 0),
        (7, 3),
        (u64::MAX, 63),
        (1 << 40, 12345),
    ] {
        let bytes = [member.to_le_bytes().as_slice(), &index.to_le_bytes()].concat();
        assert_eq!(vnode_position(NodeId(member), index), xxh3_64(&bytes));
        assert_eq!(
            StableBuildHasher.hash_one((member, index)),
            xxh3_64(&bytes),
            "a tuple hashes as the concatenation of its fields"
        );
    }
    for p in [0u32, 1, 4095, 65535, u32::MAX] {
        assert_eq!(partition_position(p), xxh3_64(&p.to_le_bytes()));
    }
    // Every integer width is fed little-endian; usize and isize as 64 bits.
    let h = |f: &dyn Fn(&mut dyn std::hash::Hasher)| {
        let mut hasher = StableBuildHasher.build_hasher();
        f(&mut hasher);
        hasher.finish()
    };
    assert_eq!(h(&|s| s.write_u8(0xAB)), xxh3_64(&[0xAB]));
    assert_eq!(h(&|s| s.write_u16(0x0102)), xxh3_64(&[2, 1]));
    assert_eq!(h(&|s| s.write_i32(-2)), xxh3_64(&(-2i32).to_le_bytes()));
    assert_eq!(h(&|s| s.write_usize(5)), xxh3_64(&5u64.to_le_bytes()));
    assert_eq!(h(&|s| s.write_isize(-5)), xxh3_64(&(-5i64).to_le_bytes()));
    assert_eq!(h(&|s| s.write_u128(9)), xxh3_64(&9u128.to_le_bytes()));
}

/// `(⌊P/N⌋, ⌈P/N⌉)`: what every member owns at least and at most.
fn bounds(partitions: u32, members: usize) -> (usize, usize) {
    let p = partitions as usize;
    (p / members, p.div_ceil(members))
}

/// Every member of `members` owns between `⌊P/N⌋` and `⌈P/N⌉` partitions, and nobody else
/// owns any.
fn assert_owner_bounds(table: &PartitionTable, members: &[NodeId]) {
    let input: BTreeSet<NodeId> = members.iter().copied().collect();
    let (lo, hi) = bounds(table.len() as u32, input.len());
    let counts = table.owned_counts();
    assert!(
        counts.keys().all(|m| input.contains(m)),
        "an owner is not a member"
    );
    for m in &input {
        let c = counts.get(m).copied().unwrap_or(0);
        assert!((lo..=hi).contains(&c), "{m:?} owns {c}, not in {lo}..={hi}");
    }
}

/// Members of a replica set in `after` that were not in it in `before`, summed: the copies a
/// hand-off makes.
fn new_holders(before: &PartitionTable, after: &PartitionTable) -> usize {
    (0..after.len() as u32)
        .map(|p| {
            let old = before.replicas(p);
            after
                .replicas(p)
                .iter()
                .filter(|m| !old.contains(m))
                .count()
        })
        .sum()
}

/// Pins a small placement: the rules are protocol constants too.
#[test]
fn small_placement_is_pinned() {
    let p = params(16, 2);
    let table = PartitionTable::place(&p, &ids(1..=5));
    let grown = PartitionTable::rebalance(&p, &table, &ids(1..=6));
    let shrunk = PartitionTable::rebalance(&p, &grown, &[1, 2, 4, 5, 6].map(NodeId));
    let rows = |t: &PartitionTable| -> Vec<Vec<u64>> {
        (0..16)
            .map(|p| t.replicas(p).iter().map(|m| m.0).collect())
            .collect()
    };
    println!("pinned placement: {:?}", rows(&table));
    println!("pinned after adding 6: {:?}", rows(&grown));
    println!("pinned after removing 3: {:?}", rows(&shrunk));
    let expected = |pinned: [[u64; 2]; 16]| -> Vec<Vec<u64>> {
        pinned.iter().map(|set| set.to_vec()).collect()
    };
    assert_eq!(
        rows(&table),
        expected([
            [4, 3],
            [5, 2],
            [1, 3],
            [3, 5],
            [1, 4],
            [4, 5],
            [1, 4],
            [5, 3],
            [4, 5],
            [3, 2],
            [2, 4],
            [2, 1],
            [2, 1],
            [3, 2],
            [1, 4],
            [5, 1]
        ])
    );
    // Member 6 takes ⌊16/6⌋ = 2 owners and 2 second places, nothing else changes.
    assert_eq!(
        rows(&grown),
        expected([
            [4, 3],
            [5, 2],
            [1, 3],
            [3, 5],
            [1, 4],
            [4, 5],
            [6, 4],
            [6, 3],
            [4, 5],
            [3, 2],
            [2, 6],
            [2, 1],
            [2, 1],
            [3, 2],
            [1, 4],
            [5, 6]
        ])
    );
    // Only the six replica sets that held member 3 change.
    assert_eq!(
        rows(&shrunk),
        expected([
            [4, 6],
            [5, 2],
            [1, 6],
            [5, 1],
            [1, 4],
            [4, 5],
            [6, 4],
            [6, 5],
            [4, 5],
            [6, 2],
            [2, 6],
            [2, 1],
            [2, 1],
            [6, 2],
            [1, 4],
            [5, 6]
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// Placement: shape and determinism.

#[test]
fn placement_is_deterministic_and_order_independent() {
    let members = ids(1..=40);
    let p = params(4096, 3);
    let table = PartitionTable::place(&p, &members);
    assert_eq!(table, PartitionTable::place(&p, &members));
    assert_eq!(
        table,
        PartitionTable::rebalance(&p, &PartitionTable::default(), &members),
        "place is rebalance from an empty table"
    );

    let mut shuffled: Vec<NodeId> = members.iter().rev().copied().collect();
    shuffled.rotate_left(17);
    shuffled.extend_from_slice(&members[..10]); // duplicates
    assert_eq!(table, PartitionTable::place(&p, &shuffled));

    let input: BTreeSet<NodeId> = members.iter().copied().collect();
    assert_eq!(table.len(), 4096);
    for partition in 0..4096 {
        let set = table.replicas(partition);
        assert_eq!(set.len(), 3);
        assert_eq!(set.iter().collect::<BTreeSet<_>>().len(), 3, "distinct");
        assert!(set.iter().all(|m| input.contains(m)));
        assert_eq!(table.owner(partition), Some(set[0]), "owner first");
    }
    assert_owner_bounds(&table, &members);
    // Each replica position is balanced too: 4096 / 40 = 102.4.
    let in_sets = table.replica_counts();
    assert!(
        in_sets.values().all(|&c| (306..=309).contains(&c)),
        "{in_sets:?}"
    );
}

#[test]
fn rebalance_is_deterministic_and_order_independent() {
    let p = params(4096, 3);
    let previous = PartitionTable::place(&p, &ids(1..=40));
    // Members 1..=3 leave, 41..=45 join.
    let members = ids(4..=45);
    let table = PartitionTable::rebalance(&p, &previous, &members);
    assert_eq!(table, PartitionTable::rebalance(&p, &previous, &members));
    let mut shuffled: Vec<NodeId> = members.iter().rev().copied().collect();
    shuffled.rotate_left(11);
    shuffled.extend_from_slice(&members[5..20]);
    assert_eq!(table, PartitionTable::rebalance(&p, &previous, &shuffled));
    assert_owner_bounds(&table, &members);
    for partition in 0..4096 {
        let set = table.replicas(partition);
        assert_eq!(set.iter().collect::<BTreeSet<_>>().len(), 3, "distinct");
        assert!(set.iter().all(|m| members.contains(m)));
    }
    // The same member set gives the same table back.
    assert_eq!(PartitionTable::rebalance(&p, &table, &members), table);
}

#[test]
fn replication_is_capped_by_members() {
    for (members, replication, expected) in [(1, 2, 1), (2, 5, 2), (3, 0, 1), (3, 1, 1)] {
        let table = PartitionTable::place(&params(64, replication), &ids(1..=members));
        for p in 0..64 {
            assert_eq!(
                table.replicas(p).len(),
                expected,
                "N={members} R={replication}"
            );
        }
    }
}

#[test]
fn degenerate_inputs_do_not_panic() {
    let empty = PartitionTable::place(&params(4096, 2), &[]);
    assert_eq!(empty.len(), 4096);
    assert!((0..4096).all(|p| empty.replicas(p).is_empty() && empty.owner(p).is_none()));

    assert!(PartitionTable::place(&params(0, 2), &ids(1..=3)).is_empty());

    let no_vnodes = RingParams {
        partitions: 100,
        vnodes: 0,
        replication: 2,
    };
    let table = PartitionTable::place(&no_vnodes, &ids(1..=3));
    assert!((0..100).all(|p| table.replicas(p).len() == 2));

    // Fewer partitions than members: nobody owns more than one.
    let table = PartitionTable::place(&params(10, 2), &ids(1..=100));
    assert!(table.owned_counts().values().all(|&c| c == 1));

    // The legacy placement: a cap too small to hold every partition is raised to ⌈P/N⌉.
    let table = PartitionTable::place_with_cap(&params(100, 1), &ids(1..=3), 1);
    assert!(table.owned_counts().values().all(|&c| c <= 34));
    assert_eq!(table.owned_counts().values().sum::<usize>(), 100);

    // A previous table with another number of partitions is ignored.
    let p = params(256, 2);
    let other = PartitionTable::place(&params(128, 2), &ids(1..=4));
    assert_eq!(
        PartitionTable::rebalance(&p, &other, &ids(1..=4)),
        PartitionTable::place(&p, &ids(1..=4))
    );
    // Every member gone; then no members at all.
    let before = PartitionTable::place(&p, &ids(1..=4));
    assert_eq!(
        PartitionTable::rebalance(&p, &before, &ids(5..=7)),
        PartitionTable::place(&p, &ids(5..=7))
    );
    let none = PartitionTable::rebalance(&p, &before, &[]);
    assert_eq!(none.len(), 256);
    assert!((0..256).all(|q| none.replicas(q).is_empty()));
    // The replication factor changes: the owners stay.
    let three = PartitionTable::rebalance(&params(256, 3), &before, &ids(1..=4));
    assert!(three.owners_changed(&before).is_empty());
    assert!((0..256).all(|q| three.replicas(q).len() == 3));
    let one = PartitionTable::rebalance(&params(256, 1), &before, &ids(1..=4));
    assert!(one.owners_changed(&before).is_empty());
    assert!((0..256).all(|q| one.replicas(q).len() == 1));
    // A previous table with stray members and repeated replicas.
    let odd = PartitionTable::from_replicas(vec![vec![NodeId(9), NodeId(9), NodeId(1)]; 256]);
    let table = PartitionTable::rebalance(&p, &odd, &ids(1..=4));
    assert_owner_bounds(&table, &ids(1..=4));
    assert!((0..256).all(|q| table.replicas(q).len() == 2));
}

#[test]
fn single_member_owns_everything() {
    let table = PartitionTable::place(&RingParams::default(), &[NodeId(9)]);
    assert_eq!(table.owned_counts().get(&NodeId(9)), Some(&4096));
}

#[test]
fn without_takes_down_members_out_of_replica_sets() {
    let n = NodeId;
    let table = PartitionTable::from_replicas(vec![
        vec![n(1), n(2), n(3)],
        vec![n(2), n(1)],
        vec![n(3), n(4)],
        vec![n(2)],
        vec![],
        vec![n(1), n(2)],
    ]);
    let down = table.without(&[n(2), n(1), n(2)]);
    assert_eq!(
        down.replicas(0),
        &[n(3)],
        "the first remaining becomes the owner"
    );
    assert_eq!(down.replicas(1), &[n(2), n(1)], "all down: unchanged");
    assert_eq!(down.replicas(2), &[n(3), n(4)]);
    assert_eq!(down.replicas(3), &[n(2)], "all down: unchanged");
    assert!(down.replicas(4).is_empty());
    assert_eq!(down.replicas(5), &[n(1), n(2)], "all down: unchanged");
    assert_eq!(down.owner(0), Some(n(3)));
    assert_eq!(down.len(), table.len());
    assert_eq!(table.without(&[]), table);
    assert_eq!(table.without(&[n(7)]), table);
    let three = table.without(&[n(3)]);
    assert_eq!(three.replicas(0), &[n(1), n(2)], "order kept");
    assert_eq!(three.replicas(2), &[n(4)]);
}

// ---------------------------------------------------------------------------------------------
// At scale: balance and movement with 1,000 members.

#[test]
fn balance_with_1000_members() {
    let members = ids(1..=1000);
    for partitions in [4096u32, 65_536] {
        let table = PartitionTable::place(&params(partitions, 2), &members);
        let (max, mean) = max_and_mean(&table, 1000);
        let replica_max = table.replica_counts().values().copied().max().unwrap_or(0);
        println!(
            "balance P={partitions} N=1000: max owned {max}, mean {mean:.3}, max/mean {:.3}; \
             max in replica sets {replica_max} (mean {:.3}, {:.3}x)",
            max as f64 / mean,
            2.0 * mean,
            replica_max as f64 / (2.0 * mean),
        );
        assert_owner_bounds(&table, &members);
        assert_eq!(max as f64, mean.ceil());
        assert!(max <= owner_cap(partitions, 1000) as usize);
        assert!(replica_max as f64 <= 2.0 * mean.ceil());
        if partitions == 65_536 {
            // The target. At P = 4096 the mean is 4.096 and ⌈4.096⌉ = 5 = 1.22x is the best
            // any placement can do.
            assert!(max as f64 <= 1.10 * mean);
            assert!(replica_max as f64 <= 1.10 * 2.0 * mean);
        }
        // Unbounded consistent hashing on the same ring, for comparison.
        let plain = PartitionTable::place_with_cap(&params(partitions, 2), &members, partitions);
        let (plain_max, _) = max_and_mean(&plain, 1000);
        println!(
            "  plain consistent hashing (no cap): max owned {plain_max} ({:.3}x the mean)",
            plain_max as f64 / mean
        );
    }
}

/// Owner and replica-set changes between two tables, how many owner changes went to (or came
/// from) `member`, and the new holders (copies).
fn movement(
    before: &PartitionTable,
    after: &PartitionTable,
    member: NodeId,
) -> (usize, usize, usize, usize) {
    let owners = before.owners_changed(after);
    let involving = owners
        .iter()
        .filter(|&&p| before.owner(p) == Some(member) || after.owner(p) == Some(member))
        .count();
    (
        owners.len(),
        before.changed(after).len(),
        involving,
        new_holders(before, after),
    )
}

#[test]
fn adding_a_member_to_1000() {
    for partitions in [4096u32, 65_536] {
        let p = params(partitions, 2);
        let before = PartitionTable::place(&p, &ids(1..=1000));
        let after = PartitionTable::rebalance(&p, &before, &ids(1..=1001));
        let (owners, sets, to_new, copies) = movement(&before, &after, NodeId(1001));
        let ideal = f64::from(partitions) / 1000.0;
        let in_sets = after.replica_counts()[&NodeId(1001)];
        println!(
            "add 1000->1001 P={partitions}: owners moved {owners} ({:.3}x P/N; {to_new} to the \
             new member), replica sets changed {sets} ({:.3}x P/N; new holders {copies}, the \
             new member is in {in_sets}); target owners <= 1.1x P/N = {:.1}",
            owners as f64 / ideal,
            sets as f64 / ideal,
            1.1 * ideal,
        );
        // The target.
        assert!(
            owners as f64 <= 1.1 * ideal,
            "P={partitions}: {owners} owners moved"
        );
        // Every owner change is to the new member, and it owns ⌊P/(N+1)⌋ or ⌈P/(N+1)⌉.
        assert_eq!(to_new, owners);
        assert_owner_bounds(&after, &ids(1..=1001));
        // Replica sets change only to take the new member in: one copy each.
        assert_eq!(copies, sets);
        assert_eq!(in_sets, sets);
        assert!(
            sets as f64 <= 2.0 * 1.1 * ideal,
            "P={partitions}: {sets} replica sets changed"
        );

        // Placing the new member set from scratch instead moves far more.
        let scratch = PartitionTable::place(&p, &ids(1..=1001));
        println!(
            "  place(1001) from scratch instead: owners moved {} ({:.2}x P/N), replica sets \
             changed {}",
            before.owners_changed(&scratch).len(),
            before.owners_changed(&scratch).len() as f64 / ideal,
            before.changed(&scratch).len(),
        );
    }
}

#[test]
fn removing_a_member_from_1000() {
    for partitions in [4096u32, 65_536] {
        let p = params(partitions, 2);
        let before = PartitionTable::place(&p, &ids(1..=1000));
        let gone = NodeId(500);
        let remaining: Vec<NodeId> = ids(1..=1000).into_iter().filter(|&m| m != gone).collect();
        let after = PartitionTable::rebalance(&p, &before, &remaining);
        let (owners, sets, from_gone, copies) = movement(&before, &after, gone);
        let held = before.owned_counts()[&gone];
        let in_sets = before.replica_counts()[&gone];
        let ideal = f64::from(partitions) / 1000.0;
        println!(
            "remove 1 of 1000 P={partitions}: it owned {held}, was in {in_sets} replica sets; \
             owners moved {owners} ({:.3}x P/N; others {}), replica sets changed {sets} \
             ({:.3}x P/N; new holders {copies})",
            owners as f64 / ideal,
            owners - from_gone,
            sets as f64 / ideal,
        );
        assert_eq!(from_gone, held, "every partition it owned moved");
        // Only those: no cascade.
        assert_eq!(owners, held);
        assert!(!after.replica_counts().contains_key(&gone));
        assert_owner_bounds(&after, &remaining);
        // Replica sets change only to replace it.
        assert_eq!(sets, in_sets);
        assert_eq!(copies, in_sets);
    }
}

/// A run of joins then leaves at 1,000 members: every step meets both targets. (The
/// `⌊1.1·P/N⌋` cap of the old placement drops from 72 to 71 between 1001 and 1002 members at
/// P = 65,536; a placement that let members keep up to that cap would move every member
/// at 72 there.)
#[test]
fn joins_and_leaves_at_1000_members() {
    let p = params(65_536, 2);
    let all = ids(1..=1004);
    let mut table = PartitionTable::place(&p, &all[..1000]);
    let mut worst: (f64, f64, f64) = (0.0, 0.0, 0.0);
    let mut steps: Vec<Vec<NodeId>> = (1001..=1004).map(|n| all[..n].to_vec()).collect();
    steps.extend((1..=4).map(|i| all[i..].to_vec()));
    for members in steps {
        let next = PartitionTable::rebalance(&p, &table, &members);
        let n = members.len();
        let ideal = 65_536.0 / n as f64;
        let owners = table.owners_changed(&next).len() as f64 / ideal;
        let sets = table.changed(&next).len() as f64 / ideal;
        let (max, mean) = max_and_mean(&next, n);
        assert!(owners <= 1.1, "{n} members: {owners:.3}x P/N owners moved");
        assert!(max as f64 <= 1.1 * mean, "{n} members: max owned {max}");
        assert_owner_bounds(&next, &members);
        worst = (
            worst.0.max(owners),
            worst.1.max(sets),
            worst.2.max(max as f64 / mean),
        );
        table = next;
    }
    println!(
        "4 joins then 4 leaves from 1000, P=65536: worst step owners moved {:.3}x P/N, replica \
         sets changed {:.3}x P/N; worst max owned/mean {:.3}",
        worst.0, worst.1, worst.2
    );
}

#[test]
fn small_clusters() {
    let p = params(4096, 2);
    let mut tables = vec![PartitionTable::place(&p, &ids(1..=3))];
    for n in [4u64, 5] {
        let previous = tables.last().unwrap();
        tables.push(PartitionTable::rebalance(&p, previous, &ids(1..=n)));
    }
    for (i, table) in tables.iter().enumerate() {
        let n = i + 3;
        let owned: Vec<usize> = table.owned_counts().values().copied().collect();
        let in_sets: Vec<usize> = table.replica_counts().values().copied().collect();
        println!("N={n} P=4096 R=2: owned {owned:?}, in replica sets {in_sets:?}");
        assert_owner_bounds(table, &ids(1..=n as u64));
    }
    for (i, (from, to)) in [(3, 4), (4, 5)].into_iter().enumerate() {
        let (owners, sets, to_new, copies) = movement(&tables[i], &tables[i + 1], NodeId(to));
        println!(
            "{from}->{to} members: owners moved {owners} ({:.3} of P), replica sets changed \
             {sets} ({:.3} of P), new holders {copies}",
            owners as f64 / 4096.0,
            sets as f64 / 4096.0
        );
        assert_eq!(to_new, owners, "only to the new member");
        // Exactly the new member's share: 4096 / 4 = 1024, 4096 / 5 = 819.2.
        let share = 4096 / to as usize;
        assert!(
            (share..=share + 1).contains(&owners),
            "{from}->{to}: {owners}"
        );
        assert!(sets <= 2 * (share + 1), "{from}->{to}: {sets}");
    }
}

#[test]
fn placement_is_fast() {
    let members = ids(1..=1001);
    for partitions in [4096u32, 65_536] {
        let p = params(partitions, 2);
        let start = Instant::now();
        let table = PartitionTable::place(&p, &members[..1000]);
        let placed = start.elapsed();
        let start = Instant::now();
        let next = PartitionTable::rebalance(&p, &table, &members);
        let rebalanced = start.elapsed();
        println!(
            "P={partitions} on 1000 members x 64 vnodes, R=2 ({} build): place {:.1} ms, \
             rebalance to 1001 {:.1} ms",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            placed.as_secs_f64() * 1e3,
            rebalanced.as_secs_f64() * 1e3,
        );
        assert_eq!(next.len(), partitions as usize);
        // Generous: ~100-400 ms in debug, ~25-85 ms in release.
        assert!(placed.as_secs_f64() < 10.0, "{placed:?}");
        assert!(rebalanced.as_secs_f64() < 10.0, "{rebalanced:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Random member sets.

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn replica_sets_are_distinct_input_members(
        members in prop::collection::vec(any::<u64>(), 0..12),
        partitions in 0u32..300,
        vnodes in 0u32..24,
        replication in 0u32..6,
    ) {
        let members: Vec<NodeId> = members.into_iter().map(NodeId).collect();
        let input: BTreeSet<NodeId> = members.iter().copied().collect();
        let p = RingParams { partitions, vnodes, replication };
        let table = PartitionTable::place(&p, &members);
        prop_assert_eq!(table.len(), partitions as usize);
        let r = (replication.max(1) as usize).min(input.len());
        for partition in 0..partitions {
            let set = table.replicas(partition);
            prop_assert_eq!(set.len(), r);
            prop_assert_eq!(set.iter().collect::<BTreeSet<_>>().len(), r);
            prop_assert!(set.iter().all(|m| input.contains(m)));
        }
        if !input.is_empty() {
            assert_owner_bounds(&table, &members);
        }

        let mut reversed = members.clone();
        reversed.reverse();
        prop_assert_eq!(&table, &PartitionTable::place(&p, &reversed));
    }

    /// Rebalancing between random member sets: valid sets, owners within `⌊P/N⌋..=⌈P/N⌉`,
    /// independent of input order, and no more owner changes than the partitions of removed
    /// members plus what members over `⌈P/N⌉` must give up and members under `⌊P/N⌋` must
    /// take.
    #[test]
    fn rebalance_is_valid_and_sticky(
        before in prop::collection::vec(0u64..24, 0..14),
        after in prop::collection::vec(0u64..24, 0..14),
        partitions in 0u32..400,
        vnodes in 0u32..24,
        replication in 0u32..5,
    ) {
        let before: Vec<NodeId> = before.into_iter().map(NodeId).collect();
        let after: Vec<NodeId> = after.into_iter().map(NodeId).collect();
        let input: BTreeSet<NodeId> = after.iter().copied().collect();
        let p = RingParams { partitions, vnodes, replication };
        let previous = PartitionTable::place(&p, &before);
        let table = PartitionTable::rebalance(&p, &previous, &after);
        prop_assert_eq!(table.len(), partitions as usize);
        let r = (replication.max(1) as usize).min(input.len());
        for partition in 0..partitions {
            let set = table.replicas(partition);
            prop_assert_eq!(set.len(), r);
            prop_assert_eq!(set.iter().collect::<BTreeSet<_>>().len(), r);
            prop_assert!(set.iter().all(|m| input.contains(m)));
        }
        if input.is_empty() {
            return Ok(());
        }
        assert_owner_bounds(&table, &after);
        let mut reversed = after.clone();
        reversed.reverse();
        prop_assert_eq!(&table, &PartitionTable::rebalance(&p, &previous, &reversed));

        let (lo, hi) = bounds(partitions, input.len());
        let counts = previous.owned_counts();
        let orphaned = (0..partitions)
            .filter(|&q| previous.owner(q).is_none_or(|o| !input.contains(&o)))
            .count();
        let forced: usize = input
            .iter()
            .map(|m| {
                let c = counts.get(m).copied().unwrap_or(0);
                c.saturating_sub(hi) + lo.saturating_sub(c)
            })
            .sum();
        let moved = previous.owners_changed(&table).len();
        prop_assert!(moved <= orphaned + forced, "moved {} > {} + {}", moved, orphaned, forced);
    }
}
