#![allow(clippy::unwrap_used)]
//! Placement of keys on partitions and of partitions on members (`strata_proto::ring`).
//!
//! The figures printed here are the ones in `docs/ring.md`:
//! `cargo test -p strata-proto --test ring -- --nocapture` (add `--release` for the timings,
//! and `--ignored` for the trade-off sweep over several caps and member sets).

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

/// Pins a small placement: the rules are protocol constants too.
#[test]
fn small_placement_is_pinned() {
    let table = PartitionTable::place(&params(16, 2), &ids(1..=5));
    let actual: Vec<Vec<u64>> = (0..16)
        .map(|p| table.replicas(p).iter().map(|m| m.0).collect())
        .collect();
    println!("pinned placement: {actual:?}");
    let expected: Vec<Vec<u64>> = vec![
        vec![3, 4],
        vec![2, 3],
        vec![1, 3],
        vec![3, 5],
        vec![1, 4],
        vec![4, 5],
        vec![1, 4],
        vec![5, 3],
        vec![4, 5],
        vec![3, 2],
        vec![2, 4],
        vec![4, 2],
        vec![2, 3],
        vec![3, 2],
        vec![1, 4],
        vec![5, 1],
    ];
    assert_eq!(actual, expected);
}

// ---------------------------------------------------------------------------------------------
// Placement: shape and determinism.

#[test]
fn placement_is_deterministic_and_order_independent() {
    let members = ids(1..=40);
    let p = params(4096, 3);
    let table = PartitionTable::place(&p, &members);
    assert_eq!(table, PartitionTable::place(&p, &members));

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
    let cap = owner_cap(4096, 40) as usize;
    assert!(table.owned_counts().values().all(|&c| c <= cap));
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

    // A cap too small to hold every partition is raised to ⌈P/N⌉.
    let table = PartitionTable::place_with_cap(&params(100, 1), &ids(1..=3), 1);
    assert!(table.owned_counts().values().all(|&c| c <= 34));
    assert_eq!(table.owned_counts().values().sum::<usize>(), 100);
}

#[test]
fn single_member_owns_everything() {
    let table = PartitionTable::place(&RingParams::default(), &[NodeId(9)]);
    assert_eq!(table.owned_counts().get(&NodeId(9)), Some(&4096));
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
             cap {}; max in replica sets {replica_max} (mean {:.3}, {:.3}x)",
            max as f64 / mean,
            owner_cap(partitions, 1000),
            2.0 * mean,
            replica_max as f64 / (2.0 * mean),
        );
        assert!(
            max as f64 <= (mean.ceil()).max(1.10 * mean),
            "P={partitions}"
        );
        if partitions == 65_536 {
            assert!(max as f64 <= 1.10 * mean);
        }
        // Unbounded consistent hashing on the same ring, for comparison.
        let plain = PartitionTable::place_with_cap(&params(partitions, 2), &members, partitions);
        let (plain_max, _) = max_and_mean(&plain, 1000);
        println!(
            "  without a cap: max owned {plain_max} ({:.3}x the mean)",
            plain_max as f64 / mean
        );
    }
}

/// Owner and replica-set changes between two tables, and how many owner changes went to
/// (or came from) `member`.
fn movement(
    before: &PartitionTable,
    after: &PartitionTable,
    member: NodeId,
) -> (usize, usize, usize) {
    let owners = before.owners_changed(after);
    let involving = owners
        .iter()
        .filter(|&&p| before.owner(p) == Some(member) || after.owner(p) == Some(member))
        .count();
    (owners.len(), before.changed(after).len(), involving)
}

#[test]
fn adding_a_member_to_1000() {
    for partitions in [4096u32, 65_536] {
        let p = params(partitions, 2);
        let before = PartitionTable::place(&p, &ids(1..=1000));
        let after = PartitionTable::place(&p, &ids(1..=1001));
        let (owners, sets, to_new) = movement(&before, &after, NodeId(1001));
        let ideal = f64::from(partitions) / 1000.0;
        println!(
            "add 1000->1001 P={partitions}: owners moved {owners} ({:.3}x P/N; {to_new} to the \
             new member, {} elsewhere), replica sets changed {sets} ({:.3}x P/N); target \
             owners <= 1.1x P/N = {:.1}",
            owners as f64 / ideal,
            owners - to_new,
            sets as f64 / ideal,
            1.1 * ideal,
        );
        // Every partition the new member owns moved to it; anything else is spill cascade.
        assert_eq!(
            after
                .owned_counts()
                .get(&NodeId(1001))
                .copied()
                .unwrap_or(0),
            to_new
        );
        // Regression bound, not the 1.1x target (see docs/ring.md): measured 1.144x at
        // P=65,536 and 1.465x at P=4096 here, 1.36-1.40x on average over member sets.
        assert!(
            (owners as f64) <= 2.0 * ideal,
            "P={partitions}: {owners} owners moved"
        );
        assert!(
            (sets as f64) <= 4.0 * ideal,
            "P={partitions}: {sets} replica sets changed"
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
        let after = PartitionTable::place(&p, &remaining);
        let (owners, sets, from_gone) = movement(&before, &after, gone);
        let held = before.owned_counts().get(&gone).copied().unwrap_or(0);
        let ideal = f64::from(partitions) / 1000.0;
        println!(
            "remove 1 of 1000 P={partitions}: it owned {held}; owners moved {owners} ({:.3}x \
             P/N; cascade {}), replica sets changed {sets} ({:.3}x P/N)",
            owners as f64 / ideal,
            owners - from_gone,
            sets as f64 / ideal,
        );
        assert_eq!(from_gone, held, "every partition it owned moved");
        assert!(!after.owned_counts().contains_key(&gone));
        // The cascade is bounded: measured well under the partitions the member held.
        assert!(
            ((owners - held) as f64) <= 1.0 * ideal,
            "P={partitions}: cascade {}",
            owners - held
        );
    }
}

#[test]
fn small_clusters() {
    let p = params(4096, 2);
    let mut tables = Vec::new();
    for n in [3u64, 4, 5] {
        let table = PartitionTable::place(&p, &ids(1..=n));
        let owned: Vec<usize> = table.owned_counts().values().copied().collect();
        let in_sets: Vec<usize> = table.replica_counts().values().copied().collect();
        println!(
            "N={n} P=4096 R=2: owned {owned:?} (cap {}), in replica sets {in_sets:?}",
            owner_cap(4096, n as usize)
        );
        assert_eq!(owned.len(), n as usize);
        assert!(
            owned
                .iter()
                .all(|&c| c <= owner_cap(4096, n as usize) as usize)
        );
        tables.push(table);
    }
    for (i, (from, to)) in [(3, 4), (4, 5)].into_iter().enumerate() {
        let (owners, sets, _) = movement(&tables[i], &tables[i + 1], NodeId(to));
        println!(
            "{from}->{to} members: owners moved {owners} ({:.3} of P), replica sets changed \
             {sets} ({:.3} of P)",
            owners as f64 / 4096.0,
            sets as f64 / 4096.0
        );
        if from == 3 {
            let fraction = owners as f64 / 4096.0;
            assert!(
                (0.15..=0.40).contains(&fraction),
                "3->4 moved {fraction:.3} of owners"
            );
        }
    }
}

#[test]
fn placement_is_fast() {
    let members = ids(1..=1000);
    for partitions in [4096u32, 65_536] {
        let start = Instant::now();
        let table = PartitionTable::place(&params(partitions, 2), &members);
        let elapsed = start.elapsed();
        println!(
            "place P={partitions} on 1000 members x 64 vnodes, R=2: {:.1} ms ({} build)",
            elapsed.as_secs_f64() * 1e3,
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        assert_eq!(table.len(), partitions as usize);
        if partitions == 4096 {
            // Generous: ~50 ms in debug, ~5 ms in release.
            assert!(elapsed.as_secs_f64() < 5.0, "{elapsed:?}");
        }
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
        let cap = owner_cap(partitions, input.len()) as usize;
        prop_assert!(table.owned_counts().values().all(|&c| c <= cap));

        let mut reversed = members.clone();
        reversed.reverse();
        prop_assert_eq!(&table, &PartitionTable::place(&p, &reversed));
    }
}
