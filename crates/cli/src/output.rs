//! How results are shown: one line per item for people, JSON with `--json` for scripts.
//! `strata local` and the cluster commands print the same shapes.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value as Json;
use strata_proto::{EntryMeta, Key, Value};

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

#[cfg(test)]
mod tests {
    use super::*;

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
