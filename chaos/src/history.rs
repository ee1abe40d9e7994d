//! The record of a run: every operation as its client saw it, every fault as it was injected.
//!
//! An [`Op`] holds what the checker needs and nothing it would have to guess: which client,
//! what kind, which key, the value written or read, when it started and ended on the run's
//! monotonic clock ([`RunClock`], microseconds since the run began), and whether it succeeded.
//! Every `set` writes a value no other operation writes (`c{client}-{seq}`), so a read names
//! the write it observed.
//!
//! Both files are JSON lines (`history.jsonl`, `faults.jsonl`), one record per line, so they
//! can be read with `jq` or streamed, and re-checked later (`strata-chaos check --out DIR`).
//!
//! # Caveats
//! - Times are taken in the chaos process, around the client call: an operation "ran"
//!   somewhere inside `[start_us, end_us]`, which is all the checker assumes.
//! - A failed write is indeterminate: it may have taken effect (even long after it failed,
//!   if a request was still in flight), or not.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The run's clock: microseconds since the run began, never going backwards.
#[derive(Clone, Copy, Debug)]
pub struct RunClock {
    start: Instant,
}

impl RunClock {
    /// A clock that reads 0 now.
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Microseconds since the clock started.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// What an operation did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Wrote a value.
    Set,
    /// Read the key.
    Get,
    /// Removed the key (a write of "absent").
    Delete,
}

impl OpKind {
    /// Whether the operation changes the key (sets and deletes).
    pub fn is_write(self) -> bool {
        matches!(self, OpKind::Set | OpKind::Delete)
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The cluster acknowledged it (for a read: answered it).
    Ok,
    /// It returned an error or timed out; the text says which. For a write, indeterminate.
    Failed(String),
}

impl Outcome {
    /// Whether the operation was acknowledged.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// One operation, as the client that made it saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The workload client that made it (the final reader has the next free number).
    pub client: u32,
    /// Set, get or delete.
    pub kind: OpKind,
    /// The key, in the run's one namespace.
    pub key: String,
    /// For a set, the value written. For a get that succeeded, the value read; `None` when
    /// the key was absent. `None` for deletes and failed gets.
    pub value: Option<String>,
    /// When the client called, in microseconds on the [`RunClock`].
    pub start_us: u64,
    /// When the call returned (or timed out).
    pub end_us: u64,
    /// Acknowledged, or failed with the error text.
    pub outcome: Outcome,
    /// The version of the entry a get returned (`EntryMeta.version`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether this is one of the verification reads made after the faults were healed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub final_read: bool,
}

/// What was done to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultAction {
    /// `kill -9`.
    Kill,
    /// SIGTERM: a graceful stop.
    Terminate,
    /// SIGSTOP: the process is frozen, its sockets stay open.
    Stop,
    /// SIGCONT after a [`FaultAction::Stop`].
    Cont,
    /// Started again with its id, address and data directory.
    Restart,
    /// Cut off from every other member (a network partition); clients still reach it.
    Isolate,
    /// Connected to the other members again after an [`FaultAction::Isolate`].
    Reconnect,
}

impl FaultAction {
    /// Whether the action takes a node away (as opposed to bringing it back).
    pub fn is_disruption(self) -> bool {
        matches!(
            self,
            FaultAction::Kill | FaultAction::Terminate | FaultAction::Stop | FaultAction::Isolate
        )
    }
}

/// One injected fault (or recovery).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// The fault cycle it belongs to: a disruption and its recovery share a cycle, and so do
    /// two nodes killed at once. The final healing has a cycle of its own.
    pub cycle: u32,
    /// When, in microseconds on the [`RunClock`].
    pub at_us: u64,
    /// The node's id.
    pub node: u64,
    /// What was done.
    pub action: FaultAction,
    /// Why this node (e.g. "raft leader"), when there is more to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Writes `items` to `path` as JSON lines, replacing the file.
pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads a file of JSON lines written by [`write_jsonl`]; blank lines are skipped and a
/// malformed line is an error naming its number.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut items = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}", path.display(), n + 1))?;
        items.push(item);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ops_and_faults_round_trip_through_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let ops = vec![
            Op {
                client: 0,
                kind: OpKind::Set,
                key: "k1".into(),
                value: Some("c0-1".into()),
                start_us: 10,
                end_us: 20,
                outcome: Outcome::Ok,
                version: None,
                final_read: false,
            },
            Op {
                client: 1,
                kind: OpKind::Get,
                key: "k1".into(),
                value: None,
                start_us: 15,
                end_us: 3_000_015,
                outcome: Outcome::Failed("timed out after 3s".into()),
                version: None,
                final_read: true,
            },
        ];
        let path = dir.path().join("history.jsonl");
        write_jsonl(&path, &ops).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""outcome":"ok""#), "{text}");
        assert!(
            text.contains(r#""outcome":{"failed":"timed out after 3s"}"#),
            "{text}"
        );
        assert_eq!(read_jsonl::<Op>(&path).unwrap(), ops);

        let faults = vec![Fault {
            cycle: 3,
            at_us: 99,
            node: 2,
            action: FaultAction::Kill,
            note: Some("raft leader".into()),
        }];
        let path = dir.path().join("faults.jsonl");
        write_jsonl(&path, &faults).unwrap();
        assert_eq!(read_jsonl::<Fault>(&path).unwrap(), faults);
    }

    #[test]
    fn a_malformed_line_is_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, "\n{\"nope\":1}\n").unwrap();
        let err = read_jsonl::<Op>(&path).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }
}
