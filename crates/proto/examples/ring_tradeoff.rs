//! Ring placement measured over many member sets and long sequences of membership changes:
//! the figures behind docs/ring.md. A measurement, not a test (it asserts nothing and takes
//! about a minute in a release build, far longer in a debug one), so it is an example:
//!
//! ```sh
//! cargo run --release -p strata-proto --example ring_tradeoff
//! ```
//!
//! 1. Over 20 sets of 1,000 members: balance of [`PartitionTable::place`], and owner and
//!    replica-set changes when [`PartitionTable::rebalance`] adds a 1,001st member or removes
//!    one; the stateless bounded-load placement it replaced
//!    ([`PartitionTable::place_with_cap`] at [`owner_cap`]) for comparison.
//! 2. 40 joins then 40 leaves, one at a time, from 1,000 members: the worst single step, for
//!    `rebalance` (every member within `⌊P/N⌋..=⌈P/N⌉`) and for the looser
//!    `rebalance_with_cap(owner_cap)` (members keep up to 1.1× the mean).
//! 3. A cluster grown one member at a time from 1 to 300 (how a cluster is built), then
//!    shrunk back to 150.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::hash::BuildHasher;

use strata_proto::NodeId;
use strata_proto::ring::{PartitionTable, RingParams, StableBuildHasher, owner_cap};

fn params(partitions: u32) -> RingParams {
    RingParams {
        partitions,
        replication: 2,
        ..RingParams::default()
    }
}

/// Most partitions owned by one member / the mean.
fn max_over_mean(table: &PartitionTable, members: usize) -> f64 {
    let max = table.owned_counts().values().copied().max().unwrap_or(0);
    max as f64 * members as f64 / table.len() as f64
}

/// Most replica sets one member is in / the mean.
fn replica_max_over_mean(table: &PartitionTable, members: usize, r: usize) -> f64 {
    let max = table.replica_counts().values().copied().max().unwrap_or(0);
    max as f64 * members as f64 / (r * table.len()) as f64
}

/// Members of a replica set in `after` that were not in it in `before`, summed: the copies a
/// hand-off makes.
fn new_holders(before: &PartitionTable, after: &PartitionTable) -> usize {
    (0..after.len() as u32)
        .map(|p| {
            let old: BTreeSet<_> = before.replicas(p).iter().collect();
            after
                .replicas(p)
                .iter()
                .filter(|m| !old.contains(m))
                .count()
        })
        .sum()
}

fn stats(v: &[f64]) -> String {
    let avg = v.iter().sum::<f64>() / v.len() as f64;
    let lo = v.iter().copied().fold(f64::MAX, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{avg:.2} [{lo:.2}..{hi:.2}]")
}

/// Member set `set` of `n` ids: set 0 is `1..=n`, the others random 64-bit ids.
fn member_set(set: u64, n: u64) -> Vec<NodeId> {
    (0..n)
        .map(|i| {
            NodeId(if set == 0 {
                i + 1
            } else {
                StableBuildHasher.hash_one((set, i))
            })
        })
        .collect()
}

fn sweep(partitions: u32) {
    const SETS: u64 = 20;
    let ideal = f64::from(partitions) / 1000.0;
    let p = params(partitions);
    let mut balance = Vec::new();
    let mut replica_balance = Vec::new();
    let (mut add, mut add_sets, mut add_copies) = (Vec::new(), Vec::new(), Vec::new());
    let (mut remove, mut remove_sets, mut remove_copies) = (Vec::new(), Vec::new(), Vec::new());
    let (mut old_balance, mut old_add, mut old_add_sets, mut old_remove) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut within = 0;
    for set in 0..SETS {
        let members = member_set(set, 1001);
        let base = PartitionTable::place(&p, &members[..1000]);
        balance.push(max_over_mean(&base, 1000));
        replica_balance.push(replica_max_over_mean(&base, 1000, 2));
        let added = PartitionTable::rebalance(&p, &base, &members);
        let a = base.owners_changed(&added).len() as f64 / ideal;
        if a <= 1.1 {
            within += 1;
        }
        add.push(a);
        add_sets.push(base.changed(&added).len() as f64 / ideal);
        add_copies.push(new_holders(&base, &added) as f64 / ideal);
        let removed = PartitionTable::rebalance(&p, &base, &members[1..1000]);
        remove.push(base.owners_changed(&removed).len() as f64 / ideal);
        remove_sets.push(base.changed(&removed).len() as f64 / ideal);
        remove_copies.push(new_holders(&base, &removed) as f64 / ideal);

        let cap = owner_cap(partitions, 1000);
        let old = PartitionTable::place_with_cap(&p, &members[..1000], cap);
        let old_added = PartitionTable::place_with_cap(&p, &members, cap);
        let old_removed = PartitionTable::place_with_cap(&p, &members[1..1000], cap);
        old_balance.push(max_over_mean(&old, 1000));
        old_add.push(old.owners_changed(&old_added).len() as f64 / ideal);
        old_add_sets.push(old.changed(&old_added).len() as f64 / ideal);
        old_remove.push(old.owners_changed(&old_removed).len() as f64 / ideal);
    }
    println!(
        "sweep P={partitions}, {SETS} sets of 1000 members, R=2 (movement per P/N = {ideal:.3}):\n  \
         rebalance: max owned/mean {}, max in replica sets/mean {}\n    \
         add 1: owners moved {} (<= 1.1 in {within}/{SETS}), replica sets changed {}, new \
         holders {}\n    \
         remove 1: owners moved {}, replica sets changed {}, new holders {}\n  \
         old stateless place_with_cap(owner_cap = {}): max owned/mean {}, add 1: owners moved \
         {}, replica sets changed {}; remove 1: owners moved {}",
        stats(&balance),
        stats(&replica_balance),
        stats(&add),
        stats(&add_sets),
        stats(&add_copies),
        stats(&remove),
        stats(&remove_sets),
        stats(&remove_copies),
        owner_cap(partitions, 1000),
        stats(&old_balance),
        stats(&old_add),
        stats(&old_add_sets),
        stats(&old_remove),
    );
}

/// Worst single-step figures over a sequence of member sets.
#[derive(Default)]
struct Worst {
    owners: f64,
    sets: f64,
    balance: f64,
    replica_balance: f64,
    total_owners: usize,
}

/// Rebalances along `sequence` (each a member set) from `start`, with `cap` (0: the default).
fn follow(p: &RingParams, start: &PartitionTable, sequence: &[Vec<NodeId>], cap: u32) -> Worst {
    let mut worst = Worst::default();
    let mut table = start.clone();
    for members in sequence {
        let cap = if cap == 0 {
            0
        } else {
            owner_cap(p.partitions, members.len())
        };
        let next = PartitionTable::rebalance_with_cap(p, &table, members, cap);
        let ideal = f64::from(p.partitions) / members.len() as f64;
        let owners = table.owners_changed(&next).len();
        worst.total_owners += owners;
        worst.owners = worst.owners.max(owners as f64 / ideal);
        worst.sets = worst.sets.max(table.changed(&next).len() as f64 / ideal);
        worst.balance = worst.balance.max(max_over_mean(&next, members.len()));
        worst.replica_balance =
            worst
                .replica_balance
                .max(replica_max_over_mean(&next, members.len(), 2));
        table = next;
    }
    worst
}

fn sequences(partitions: u32) {
    let p = params(partitions);
    let all = member_set(0, 1040);
    // 1000 -> 1040 one join at a time, then back to 1000 removing the lowest ids first.
    let mut sequence: Vec<Vec<NodeId>> = (1001..=1040).map(|n| all[..n].to_vec()).collect();
    sequence.extend((1..=40).map(|i| all[i..].to_vec()));
    for (name, cap) in [("rebalance", 0u32), ("rebalance_with_cap(owner_cap)", 1)] {
        let start = if cap == 0 {
            PartitionTable::place(&p, &all[..1000])
        } else {
            PartitionTable::rebalance_with_cap(
                &p,
                &PartitionTable::default(),
                &all[..1000],
                owner_cap(partitions, 1000),
            )
        };
        let w = follow(&p, &start, &sequence, cap);
        println!(
            "sequence P={partitions}, 40 joins then 40 leaves from 1000, {name}: worst step \
             owners moved {:.2}x P/N, replica sets changed {:.2}x P/N; worst max owned/mean \
             {:.3}, in replica sets/mean {:.3}; owners moved in all {}",
            w.owners, w.sets, w.balance, w.replica_balance, w.total_owners
        );
    }
}

fn growth(partitions: u32) {
    let p = params(partitions);
    let all = member_set(0, 300);
    let mut sequence: Vec<Vec<NodeId>> = (2..=300).map(|n| all[..n].to_vec()).collect();
    sequence.extend((1..=150).map(|i| all[i..].to_vec()));
    let start = PartitionTable::place(&p, &all[..1]);
    let w = follow(&p, &start, &sequence, 0);
    println!(
        "growth P={partitions}, 1 -> 300 members one join at a time, then 150 leaves: worst step \
         owners moved {:.2}x P/N, replica sets changed {:.2}x P/N; worst max owned/mean {:.3}, \
         in replica sets/mean {:.3}",
        w.owners, w.sets, w.balance, w.replica_balance
    );
}

fn main() {
    for partitions in [4096u32, 65_536] {
        sweep(partitions);
        sequences(partitions);
        growth(partitions);
    }
}
