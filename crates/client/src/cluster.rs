//! Cluster-wide views: membership, statistics of every member and their sum, and the merging
//! of key listings from several members (pure functions).

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};
use strata_proto::{EntryMeta, Member, MemberState, NodeId};

use crate::error::Error;

/// The members of a cluster, from [`Client::members`](crate::Client::members).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// Epoch of the ring they were read from.
    pub epoch: u64,
    /// The Raft leader, when known (`None` for a standalone node).
    pub leader: Option<NodeId>,
    /// Every member, with its addresses and state.
    pub members: Vec<Member>,
}

/// One member's statistics in [`ClusterStats`].
#[derive(Clone, Debug)]
pub struct NodeStats {
    /// The member's id.
    pub id: NodeId,
    /// Its QUIC address.
    pub addr: String,
    /// Its state in the ring.
    pub state: MemberState,
    /// Its statistics (the JSON of [`Client::stats`](crate::Client::stats)), or why they
    /// could not be had (a member marked down is not asked).
    pub stats: Result<Json, Error>,
}

/// Statistics of every member and their sum, from
/// [`Client::cluster_stats`](crate::Client::cluster_stats).
#[derive(Clone, Debug)]
pub struct ClusterStats {
    /// Epoch of the ring the members were read from.
    pub epoch: u64,
    /// Each member, in ring order.
    pub nodes: Vec<NodeStats>,
    /// The sum over the members that answered (see [`aggregate_stats`]).
    pub aggregate: Json,
}

/// Sums node statistics: `{"nodes_reporting": N, "manager": {..}, "tiers": {..},
/// "write_back": {..}}`. Counters and sizes are added; every `hit_rate` next to `hits` and
/// `misses` is recomputed from the sums; a capacity is `null` (unbounded) if any node's is;
/// other fields (names, flags) are taken from the first node that has them. Node identity
/// (`node`) is not summed.
pub fn aggregate_stats<'a>(stats: impl IntoIterator<Item = &'a Json>) -> Json {
    let mut sum = Map::new();
    let mut reporting = 0u64;
    for node in stats {
        reporting += 1;
        for section in ["manager", "tiers", "write_back"] {
            if let Some(value) = node.get(section) {
                match sum.get_mut(section) {
                    Some(acc) => add_into(acc, value),
                    None => {
                        sum.insert(section.to_owned(), value.clone());
                    }
                }
            }
        }
    }
    let mut sum = Json::Object(sum);
    recompute_hit_rates(&mut sum);
    if let Json::Object(fields) = &mut sum {
        fields.insert("nodes_reporting".into(), reporting.into());
    }
    sum
}

fn add_into(acc: &mut Json, value: &Json) {
    match (&mut *acc, value) {
        (Json::Object(acc), Json::Object(value)) => {
            for (k, v) in value {
                match acc.get_mut(k) {
                    Some(a) => add_into(a, v),
                    None => {
                        acc.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Json::Null, _) => {}
        (_, Json::Null) => *acc = Json::Null,
        (a, v) => {
            if let (Some(x), Some(y)) = (a.as_u64(), v.as_u64()) {
                *a = x.saturating_add(y).into();
            }
        }
    }
}

fn recompute_hit_rates(value: &mut Json) {
    let Json::Object(fields) = value else {
        return;
    };
    let count = |name: &str| fields.get(name).and_then(Json::as_u64);
    if let (Some(hits), Some(misses), true) = (
        count("hits"),
        count("misses"),
        fields.contains_key("hit_rate"),
    ) {
        let total = hits.saturating_add(misses);
        let rate = if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        };
        fields.insert("hit_rate".into(), rate.into());
    }
    for child in fields.values_mut() {
        recompute_hit_rates(child);
    }
}

/// A listed key and its metadata.
pub(crate) type Listed = (String, Option<EntryMeta>);

/// Adds `(key, meta)` to `merged`, keeping the newer metadata when a key is listed twice
/// (by the old and the new holder of a partition being handed off).
fn insert_newer(
    merged: &mut BTreeMap<String, Option<EntryMeta>>,
    key: String,
    meta: Option<EntryMeta>,
) {
    match merged.get_mut(&key) {
        Some(held) => {
            let newer = match (&*held, &meta) {
                (Some(h), Some(m)) => m.version > h.version,
                (None, Some(_)) => true,
                _ => false,
            };
            if newer {
                *held = meta;
            }
        }
        None => {
            merged.insert(key, meta);
        }
    }
}

/// Merges whole listings from several members: key order, each key once.
pub(crate) fn merge_listings(listings: Vec<Vec<Listed>>) -> Vec<Listed> {
    let mut merged = BTreeMap::new();
    for (key, meta) in listings.into_iter().flatten() {
        insert_newer(&mut merged, key, meta);
    }
    merged.into_iter().collect()
}

/// Merges one page from each member (keys after the same cursor, each page in key order,
/// with the member's `next`) into one page of at most `limit` keys and its `next`.
///
/// A member that has more stops at its `next`: keys beyond it are unknown, so the merged
/// page stops there too (or else a key of that member between its `next` and the end of the
/// merged page would be skipped). `next` is set when any member has more or keys were left
/// out.
pub(crate) fn merge_pages(
    pages: Vec<(Vec<Listed>, Option<String>)>,
    limit: usize,
) -> (Vec<Listed>, Option<String>) {
    let limit = limit.max(1);
    let cutoff = pages.iter().filter_map(|(_, next)| next.clone()).min();
    let mut merged = BTreeMap::new();
    for (keys, _) in pages {
        for (key, meta) in keys {
            if cutoff.as_ref().is_none_or(|c| key <= *c) {
                insert_newer(&mut merged, key, meta);
            }
        }
    }
    let more = cutoff.is_some() || merged.len() > limit;
    let keys: Vec<Listed> = merged.into_iter().take(limit).collect();
    let next = more
        .then(|| keys.last().map(|(k, _)| k.clone()).or(cutoff))
        .flatten();
    (keys, next)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use strata_proto::{Entry, Timestamp, Value, Version};

    fn keys(names: &[&str]) -> Vec<Listed> {
        names.iter().map(|k| (k.to_string(), None)).collect()
    }

    fn names(listed: &[Listed]) -> Vec<&str> {
        listed.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn listings_merge_in_order_without_duplicates() {
        let merged = merge_listings(vec![keys(&["a", "c", "e"]), keys(&["b", "c", "d"])]);
        assert_eq!(names(&merged), ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn a_key_listed_twice_keeps_the_newer_metadata() {
        let meta = |ms| {
            let version = Version {
                physical_ms: ms,
                logical: 0,
                node: NodeId(1),
            };
            Some(Entry::new(Value::from(b"x".to_vec()), Timestamp(1), None, version).meta)
        };
        let merged = merge_listings(vec![
            vec![("k".into(), meta(5))],
            vec![("k".into(), meta(9))],
            vec![("k".into(), meta(7))],
        ]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].1.as_ref().unwrap().version.physical_ms, 9);
    }

    #[test]
    fn pages_stop_where_a_member_with_more_stopped() {
        // Member 1 has more after "c"; member 2 is done. Keys after "c" wait for the next
        // page, or member 1's keys between "c" and "e" would be skipped.
        let (page, next) = merge_pages(
            vec![
                (keys(&["a", "c"]), Some("c".into())),
                (keys(&["b", "d", "e"]), None),
            ],
            10,
        );
        assert_eq!(names(&page), ["a", "b", "c"]);
        assert_eq!(next.as_deref(), Some("c"));
    }

    #[test]
    fn pages_are_cut_at_the_limit_and_end_when_nobody_has_more() {
        let (page, next) = merge_pages(
            vec![
                (keys(&["a", "c", "e"]), None),
                (keys(&["b", "c", "d"]), None),
            ],
            3,
        );
        assert_eq!(names(&page), ["a", "b", "c"]);
        assert_eq!(next.as_deref(), Some("c"));
        let (page, next) = merge_pages(
            vec![(keys(&["a", "c"]), None), (keys(&["b", "c"]), None)],
            3,
        );
        assert_eq!(names(&page), ["a", "b", "c"]);
        assert_eq!(next, None);
        let (page, next) = merge_pages(Vec::new(), 3);
        assert!(page.is_empty() && next.is_none());
    }

    #[test]
    fn statistics_are_summed_and_hit_rates_recomputed() {
        let node = |hits: u64, misses: u64, capacity: Json| {
            serde_json::json!({
                "node": {"id": hits, "uptime_secs": 5},
                "manager": {"hits": hits, "misses": misses, "sets": 1, "hit_rate": 0.5,
                            "size_bytes": 100, "total_files": 2},
                "tiers": {"memory": {"name": "memory", "hits": hits, "misses": misses,
                                     "entries": 2, "capacity_bytes": capacity,
                                     "persistent": false}},
                "write_back": {"enabled": true, "pending_keys": 1}
            })
        };
        let a = node(3, 1, Json::from(1000));
        let b = node(1, 3, Json::from(1000));
        let sum = aggregate_stats([&a, &b]);
        assert_eq!(sum["nodes_reporting"], 2);
        assert_eq!(sum["manager"]["hits"], 4);
        assert_eq!(sum["manager"]["misses"], 4);
        assert_eq!(sum["manager"]["sets"], 2);
        assert_eq!(sum["manager"]["size_bytes"], 200);
        assert_eq!(sum["manager"]["total_files"], 4);
        assert_eq!(sum["manager"]["hit_rate"], 0.5);
        assert_eq!(sum["tiers"]["memory"]["entries"], 4);
        assert_eq!(sum["tiers"]["memory"]["capacity_bytes"], 2000);
        assert_eq!(sum["tiers"]["memory"]["name"], "memory");
        assert_eq!(sum["tiers"]["memory"]["persistent"], false);
        assert_eq!(sum["write_back"]["pending_keys"], 2);
        assert_eq!(sum["write_back"]["enabled"], true);
        assert!(sum.get("node").is_none());

        let unbounded = node(0, 0, Json::Null);
        let sum = aggregate_stats([&a, &unbounded]);
        assert_eq!(sum["tiers"]["memory"]["capacity_bytes"], Json::Null);
        let sum = aggregate_stats([&unbounded, &a]);
        assert_eq!(sum["tiers"]["memory"]["capacity_bytes"], Json::Null);
        assert_eq!(sum["manager"]["hit_rate"], 0.75);
        let none = aggregate_stats(std::iter::empty());
        assert_eq!(none["nodes_reporting"], 0);
    }
}
