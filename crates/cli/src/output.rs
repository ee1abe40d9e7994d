//! How results are shown: one line per item (or a table) for people, JSON with `--json` for
//! scripts. `strata local` and the cluster commands print the same shapes for keys and
//! single-store statistics; cluster statistics, members and the ring have their own.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value as Json;
use strata_client::ClusterStats;
use strata_proto::{EntryMeta, Key, Ring, Value};

/// Writes a value's stored payload bytes (what `get` prints) to `out`, or stdout.
pub(crate) fn write_payload(value: &Value, out: Option<&Path>) -> Result<()> {
    let payload = strata_proto::encode_payload(value);
    match out {
        Some(path) => {
            let mut file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(&payload.header)
                .and_then(|()| file.write_all(&payload.body))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&payload.header)?;
            stdout.write_all(&payload.body)?;
            stdout.flush()?;
        }
    }
    Ok(())
}

/// Prints listed keys: `KEY` per line, or `KEY\tSIZE bytes\tFORMAT\tversion V` with metadata;
/// with `json`, an array of `{"key", "meta"}` objects.
pub(crate) fn print_keys(keys: &[(Key, Option<EntryMeta>)], json: bool) -> Result<()> {
    if json {
        let rows: Vec<_> = keys
            .iter()
            .map(|(k, m)| serde_json::json!({"key": k, "meta": m}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    for (k, m) in keys {
        match m {
            Some(m) => writeln!(
                stdout,
                "{k}\t{} bytes\t{}\tversion {}",
                m.size_bytes,
                m.format.name(),
                m.version
            )?,
            None => writeln!(stdout, "{k}")?,
        }
    }
    Ok(())
}

/// Prints statistics: with `json`, as they are; otherwise a summary line and one line per
/// tier for the store statistics (`{"manager": .., "tiers": ..}`, at the top or one level
/// down), after any other top-level fields as `name: value` (`name: k=v k=v` for a flat
/// object such as the node's identity).
pub(crate) fn print_stats(stats: &Json, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(stats)?);
        return Ok(());
    }
    let lines = stats_lines(stats);
    if lines.is_empty() {
        println!("{}", serde_json::to_string_pretty(stats)?);
    }
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

fn stats_lines(stats: &Json) -> Vec<String> {
    let Some(top) = stats.as_object() else {
        return Vec::new();
    };
    let is_store = |v: &Json| v.get("manager").is_some_and(Json::is_object);
    let store = if is_store(stats) {
        Some(stats)
    } else {
        top.values().find(|v| is_store(v))
    };
    let mut lines = Vec::new();
    for (name, value) in top {
        if (is_store(stats) && (name == "manager" || name == "tiers")) || is_store(value) {
            continue;
        }
        match value {
            Json::Object(fields) if fields.values().all(|v| !v.is_object() && !v.is_array()) => {
                let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                lines.push(format!("{name}: {}", fields.join(" ")));
            }
            Json::Object(_) | Json::Array(_) => {}
            scalar => lines.push(format!("{name}: {scalar}")),
        }
    }
    if let Some(store) = store {
        let m = &store["manager"];
        let n = |v: &Json, f: &str| v.get(f).and_then(Json::as_u64).unwrap_or(0);
        lines.push(format!(
            "entries {}  size {} bytes  hit rate {:.2}",
            n(m, "total_files"),
            n(m, "size_bytes"),
            m.get("hit_rate").and_then(Json::as_f64).unwrap_or(0.0)
        ));
        if let Some(tiers) = store.get("tiers").and_then(Json::as_object) {
            for (name, t) in tiers {
                lines.push(format!(
                    "{name:<12} entries {:<8} bytes {:<12} evictions {:<6} expired {:<6} corrupt {}",
                    n(t, "entries"),
                    n(t, "size_bytes"),
                    n(t, "evictions"),
                    n(t, "expired"),
                    n(t, "corrupt")
                ));
            }
        }
    }
    lines
}

/// A number field of a JSON object, 0 if absent.
fn count(v: &Json, field: &str) -> u64 {
    v.get(field).and_then(Json::as_u64).unwrap_or(0)
}

/// Lines of a table: columns padded to their widest cell, two spaces apart.
fn table(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect()
}

/// The JSON of `strata stats --json`: `{"epoch", "nodes": [{"id", "addr", "state",
/// "stats"} or {.., "error"}], "aggregate": {..}}`.
pub(crate) fn cluster_stats_json(stats: &ClusterStats) -> Json {
    let nodes: Vec<Json> = stats
        .nodes
        .iter()
        .map(|n| {
            let mut node = serde_json::json!({
                "id": n.id.0,
                "addr": n.addr,
                "state": n.state.as_str(),
            });
            match &n.stats {
                Ok(s) => node["stats"] = s.clone(),
                Err(e) => node["error"] = e.to_string().into(),
            }
            node
        })
        .collect();
    serde_json::json!({
        "epoch": stats.epoch,
        "nodes": nodes,
        "aggregate": stats.aggregate,
    })
}

/// Lines of `strata stats`: a row per node and a total row, then the summed store lines
/// (entries, size, hit rate, and each tier).
pub(crate) fn cluster_stats_lines(stats: &ClusterStats) -> Vec<String> {
    let mut rows = vec![
        [
            "NODE", "ADDR", "STATE", "ENTRIES", "BYTES", "HITS", "MISSES", "HIT RATE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let store_row = |m: &Json| {
        vec![
            count(m, "total_files").to_string(),
            count(m, "size_bytes").to_string(),
            count(m, "hits").to_string(),
            count(m, "misses").to_string(),
            format!(
                "{:.2}",
                m.get("hit_rate").and_then(Json::as_f64).unwrap_or(0.0)
            ),
        ]
    };
    let mut errors = Vec::new();
    for n in &stats.nodes {
        let mut row = vec![
            n.id.to_string(),
            n.addr.clone(),
            n.state.as_str().to_owned(),
        ];
        match &n.stats {
            Ok(s) => row.extend(store_row(&s["manager"])),
            Err(e) => {
                row.push("-".into());
                errors.push(format!("node {}: {e}", n.id));
            }
        }
        rows.push(row);
    }
    let mut total = vec![
        "total".to_owned(),
        match count(&stats.aggregate, "nodes_reporting") {
            1 => "1 node".to_owned(),
            n => format!("{n} nodes"),
        },
        String::new(),
    ];
    total.extend(store_row(&stats.aggregate["manager"]));
    rows.push(total);
    let mut lines = table(&rows);
    lines.extend(errors);
    // The total row already says how many nodes reported.
    let mut aggregate = stats.aggregate.clone();
    if let Some(fields) = aggregate.as_object_mut() {
        fields.remove("nodes_reporting");
    }
    let summed = stats_lines(&aggregate);
    if !summed.is_empty() {
        lines.push(String::new());
        lines.push("cluster total:".into());
        lines.extend(summed.into_iter().map(|l| format!("  {l}")));
    }
    lines
}

/// Prints cluster statistics: a table per node plus the total, or JSON.
pub(crate) fn print_cluster_stats(stats: &ClusterStats, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&cluster_stats_json(stats))?
        );
        return Ok(());
    }
    for line in cluster_stats_lines(stats) {
        println!("{line}");
    }
    Ok(())
}

/// The JSON of `strata members --json`: one object per member with `id`, `addr`, `admin`,
/// `state`, `leader` and `partitions` (how many it owns).
pub(crate) fn members_json(ring: &Ring) -> Json {
    let owned = ring.table.owned_counts();
    ring.members
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id.0,
                "addr": m.addr,
                "client_addr": m.client_addr,
                "admin": m.admin,
                "state": m.state.as_str(),
                "leader": ring.leader == Some(m.id),
                "partitions": owned.get(&m.id).copied().unwrap_or(0),
            })
        })
        .collect()
}

/// Lines of `strata members`: a table of the members, the leader marked with `*`.
pub(crate) fn members_lines(ring: &Ring) -> Vec<String> {
    let owned = ring.table.owned_counts();
    let mut rows = vec![
        ["ID", "ADDR", "ADMIN", "STATE", "LEADER", "PARTITIONS"]
            .map(String::from)
            .to_vec(),
    ];
    for m in &ring.members {
        rows.push(vec![
            m.id.to_string(),
            m.addr.clone(),
            if m.admin.is_empty() {
                "-".into()
            } else {
                m.admin.clone()
            },
            m.state.as_str().to_owned(),
            if ring.leader == Some(m.id) {
                "*".into()
            } else {
                String::new()
            },
            owned.get(&m.id).copied().unwrap_or(0).to_string(),
        ]);
    }
    table(&rows)
}

/// Prints the members: a table, or JSON.
pub(crate) fn print_members(ring: &Ring, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&members_json(ring))?);
        return Ok(());
    }
    for line in members_lines(ring) {
        println!("{line}");
    }
    Ok(())
}

/// The JSON of `strata ring --json`: epoch, params, leader, moving, each member's owned
/// partitions, and with `table` every partition's replica set.
pub(crate) fn ring_json(ring: &Ring, table: bool) -> Json {
    let owned = ring.table.owned_counts();
    let members: Vec<Json> = ring
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id.0,
                "addr": m.addr,
                "state": m.state.as_str(),
                "partitions": owned.get(&m.id).copied().unwrap_or(0),
            })
        })
        .collect();
    let mut json = serde_json::json!({
        "epoch": ring.epoch,
        "params": {
            "partitions": ring.params.partitions,
            "vnodes": ring.params.vnodes,
            "replication": ring.params.replication,
        },
        "leader": ring.leader.map(|l| l.0),
        "moving": ring.moving,
        "members": members,
    });
    if table {
        json["table"] = (0..ring.params.partitions)
            .map(|p| {
                ring.table
                    .replicas(p)
                    .iter()
                    .map(|n| n.0)
                    .collect::<Vec<u64>>()
            })
            .collect::<Vec<_>>()
            .into();
    }
    json
}

/// Lines of `strata ring`: epoch, parameters, hand-off state, partitions owned per member,
/// and with `table` one line per partition.
pub(crate) fn ring_lines(ring: &Ring, with_table: bool) -> Vec<String> {
    let owned = ring.table.owned_counts();
    let mut lines = vec![
        format!("epoch        {}", ring.epoch),
        format!(
            "partitions   {}  (vnodes {}, replication {})",
            ring.params.partitions, ring.params.vnodes, ring.params.replication
        ),
        format!(
            "leader       {}",
            ring.leader.map_or("-".to_owned(), |l| l.to_string())
        ),
        format!(
            "moving       {}{}",
            ring.moving,
            if ring.moving > 0 {
                "  (hand-off in progress)"
            } else {
                ""
            }
        ),
        String::new(),
    ];
    let mut rows = vec![
        ["MEMBER", "ADDR", "STATE", "OWNS"]
            .map(String::from)
            .to_vec(),
    ];
    for m in &ring.members {
        rows.push(vec![
            m.id.to_string(),
            m.addr.clone(),
            m.state.as_str().to_owned(),
            owned.get(&m.id).copied().unwrap_or(0).to_string(),
        ]);
    }
    lines.extend(table(&rows));
    if with_table {
        lines.push(String::new());
        for p in 0..ring.params.partitions {
            let replicas: Vec<String> = ring
                .table
                .replicas(p)
                .iter()
                .map(|n| n.to_string())
                .collect();
            lines.push(format!("{p:>5}  {}", replicas.join(",")));
        }
    }
    lines
}

/// Prints the ring: a summary (and the table with `table`), or JSON.
pub(crate) fn print_ring(ring: &Ring, table: bool, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&ring_json(ring, table))?);
        return Ok(());
    }
    for line in ring_lines(ring, table) {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_client::NodeStats;
    use strata_proto::{Member, MemberState, NodeId, PartitionTable, RingParams};

    fn two_member_ring() -> Ring {
        let member = |id: u64, state| Member {
            id: NodeId(id),
            addr: format!("10.0.0.{id}:7400"),
            admin: format!("10.0.0.{id}:7401"),
            state,
            client_addr: None,
        };
        Ring {
            epoch: 4,
            params: RingParams {
                partitions: 4,
                vnodes: 8,
                replication: 2,
            },
            members: vec![
                member(1, MemberState::Active),
                member(2, MemberState::Leaving),
            ],
            table: PartitionTable::from_replicas(vec![
                vec![NodeId(1), NodeId(2)],
                vec![NodeId(1), NodeId(2)],
                vec![NodeId(2), NodeId(1)],
                vec![NodeId(1), NodeId(2)],
            ]),
            moving: 1,
            leader: Some(NodeId(1)),
        }
    }

    #[test]
    fn members_show_state_leader_and_ownership() {
        let ring = two_member_ring();
        let json = members_json(&ring);
        assert_eq!(json[0]["id"], 1);
        assert_eq!(json[0]["leader"], true);
        assert_eq!(json[0]["partitions"], 3);
        assert_eq!(json[0]["admin"], "10.0.0.1:7401");
        assert_eq!(json[1]["state"], "leaving");
        assert_eq!(json[1]["leader"], false);
        assert_eq!(json[1]["partitions"], 1);
        let lines = members_lines(&ring);
        assert!(lines[0].starts_with("ID  ADDR"), "{}", lines[0]);
        assert!(
            lines[1].contains("active") && lines[1].contains('*'),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with("leaving          1"), "{:?}", lines[2]);
    }

    #[test]
    fn the_ring_shows_the_table_only_when_asked() {
        let ring = two_member_ring();
        let json = ring_json(&ring, false);
        assert_eq!(json["epoch"], 4);
        assert_eq!(json["params"]["partitions"], 4);
        assert_eq!(json["params"]["replication"], 2);
        assert_eq!(json["moving"], 1);
        assert_eq!(json["members"][1]["partitions"], 1);
        assert!(json.get("table").is_none());
        let json = ring_json(&ring, true);
        assert_eq!(json["table"][2], serde_json::json!([2, 1]));
        let lines = ring_lines(&ring, true);
        assert!(lines.iter().any(|l| l.contains("hand-off in progress")));
        assert_eq!(lines.last().map(String::as_str), Some("    3  1,2"));
    }

    #[test]
    fn cluster_stats_show_each_node_and_the_total() {
        let node = |sets: u64| {
            serde_json::json!({"manager": {"hits": 1, "misses": 1, "sets": sets, "hit_rate": 0.5,
                                           "size_bytes": 10, "total_files": 2}, "tiers": {}})
        };
        let (a, b) = (node(1), node(2));
        let stats = ClusterStats {
            epoch: 4,
            aggregate: strata_client::cluster::aggregate_stats([&a, &b]),
            nodes: vec![
                NodeStats {
                    id: NodeId(1),
                    addr: "10.0.0.1:7400".into(),
                    state: MemberState::Active,
                    stats: Ok(a.clone()),
                },
                NodeStats {
                    id: NodeId(2),
                    addr: "10.0.0.2:7400".into(),
                    state: MemberState::Active,
                    stats: Ok(b.clone()),
                },
                NodeStats {
                    id: NodeId(3),
                    addr: "10.0.0.3:7400".into(),
                    state: MemberState::Down,
                    stats: Err(strata_client::Error::Protocol("gone".into())),
                },
            ],
        };
        let json = cluster_stats_json(&stats);
        assert_eq!(json["nodes"][0]["stats"]["manager"]["sets"], 1);
        assert_eq!(json["nodes"][2]["error"], "protocol error: gone");
        assert_eq!(json["aggregate"]["manager"]["sets"], 3);
        let lines = cluster_stats_lines(&stats);
        assert!(lines[0].starts_with("NODE"), "{}", lines[0]);
        assert!(lines[4].starts_with("total  2 nodes"), "{}", lines[4]);
        assert!(
            lines[4].ends_with("4        20     2     2       0.50"),
            "{:?}",
            lines[4]
        );
        assert!(lines.iter().any(|l| l == "node 3: protocol error: gone"));
        assert!(lines.iter().any(|l| l.contains("entries 4  size 20 bytes")));
    }

    #[test]
    fn store_stats_read_the_same_at_the_top_or_nested() {
        let store = serde_json::json!({
            "manager": {"total_files": 3, "size_bytes": 42, "hit_rate": 0.5},
            "tiers": {"memory": {"entries": 3, "size_bytes": 42, "evictions": 1,
                                  "expired": 0, "corrupt": 0}}
        });
        let top = stats_lines(&store);
        assert_eq!(top[0], "entries 3  size 42 bytes  hit rate 0.50");
        assert!(top[1].starts_with("memory       entries 3 "), "{}", top[1]);
        let nested = stats_lines(&serde_json::json!({"node": 4, "store": store}));
        assert_eq!(nested[0], "node: 4");
        assert_eq!(&nested[1..], &top[..]);
        // The node's shape: store statistics at the top plus a flat `node` object.
        let mut node = store.clone();
        node["node"] = serde_json::json!({"id": 1, "uptime_secs": 5});
        let lines = stats_lines(&node);
        assert_eq!(lines[0], "node: id=1 uptime_secs=5");
        assert_eq!(&lines[1..], &top[..]);
        assert!(stats_lines(&serde_json::json!([1, 2])).is_empty());
    }
}
