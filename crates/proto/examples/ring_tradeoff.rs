//! The balance/movement trade-off of ring placement, over 20 sets of 1,000 members and several
//! owner caps: the figures behind docs/ring.md. A measurement, not a test (it asserts nothing
//! and takes about a minute in a debug build), so it is an example:
//!
//! ```sh
//! cargo run --release -p strata-proto --example ring_tradeoff
//! ```

#![allow(clippy::unwrap_used)]

use strata_proto::NodeId;
use strata_proto::ring::{PartitionTable, RingParams, StableBuildHasher, owner_cap};

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

fn main() {
    use std::hash::BuildHasher;

    const SETS: u64 = 20;
    for partitions in [4096u32, 65_536] {
        let mean = f64::from(partitions) / 1000.0;
        let caps: Vec<(String, u32)> = vec![
            ("owner_cap (default)".into(), owner_cap(partitions, 1000)),
            (
                "1.15x".into(),
                ((1.15 * mean) as u32).max(mean.ceil() as u32),
            ),
            ("1.2x".into(), ((1.2 * mean) as u32).max(mean.ceil() as u32)),
            ("1.3x".into(), ((1.3 * mean) as u32).max(mean.ceil() as u32)),
            ("1.5x".into(), ((1.5 * mean) as u32).max(mean.ceil() as u32)),
            ("none".into(), partitions),
        ];
        for (name, cap) in caps {
            let (mut worst, mut worst_sets, mut within) = (0usize, 0usize, 0);
            let (mut added, mut removed, mut sets_added) = (Vec::new(), Vec::new(), Vec::new());
            for set in 0..SETS {
                // Set 0 is 1..=1001; the others are random 64-bit ids.
                let members: Vec<NodeId> = (0..1001u64)
                    .map(|i| {
                        NodeId(if set == 0 {
                            i + 1
                        } else {
                            StableBuildHasher.hash_one((set, i))
                        })
                    })
                    .collect();
                let p = params(partitions, 2);
                let base = PartitionTable::place_with_cap(&p, &members[..1000], cap);
                let add = PartitionTable::place_with_cap(&p, &members, cap);
                let remove = PartitionTable::place_with_cap(&p, &members[1..1000], cap);
                worst = worst.max(max_and_mean(&base, 1000).0);
                let in_sets = base.replica_counts().values().copied().max().unwrap_or(0);
                worst_sets = worst_sets.max(in_sets);
                sets_added.push(base.changed(&add).len() as f64 / mean);
                let a = base.owners_changed(&add).len() as f64 / mean;
                if a <= 1.1 {
                    within += 1;
                }
                added.push(a);
                removed.push(base.owners_changed(&remove).len() as f64 / mean);
            }
            let stats = |v: &[f64]| {
                let avg = v.iter().sum::<f64>() / v.len() as f64;
                let lo = v.iter().copied().fold(f64::MAX, f64::min);
                let hi = v.iter().copied().fold(0.0, f64::max);
                format!("{avg:.2} [{lo:.2}..{hi:.2}]")
            };
            println!(
                "sweep P={partitions} cap {name} = {cap}: worst max/mean {:.3}, worst in replica \
                 sets / mean {:.3}; per P/N: owners moved on add {} (<= 1.1 in {within}/{SETS}), \
                 on remove {}; replica sets changed on add {}",
                worst as f64 / mean,
                worst_sets as f64 / (2.0 * mean),
                stats(&added),
                stats(&removed),
                stats(&sets_added),
            );
        }
    }
}
