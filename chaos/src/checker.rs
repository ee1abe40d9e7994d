//! The checker: pure functions over a history that find reads no correct cache could have
//! answered, and measure how long keys were unavailable after each fault.
//!
//! # The read rule
//! Writes are sets and deletes; a delete writes "absent", and every key starts "absent",
//! written at time −∞. A read `r` that returned `x` is valid iff some write `c` of `x` (for
//! "absent": the initial state or any delete of the key) has
//!
//! 1. `start(c) < end(r)` — it had begun before the read finished, and
//! 2. no **acknowledged** write `w'` of the same key with `end(c) < start(w')` and
//!    `end(w') < start(r)` — nothing acknowledged strictly after `c` finished and strictly
//!    before `r` began replaced it.
//!
//! A failed write has an unknown end (+∞): it never strictly precedes anything, so it never
//! supersedes a value, and a value it wrote may be read at any later time (the write may
//! have taken effect late). A read of a value nobody wrote — or of a write that only began
//! after the read had ended — is a **phantom**.
//!
//! Because every set writes a unique value, a value read names its write `c` exactly. For
//! "absent" there may be many candidates (the initial state, every delete); condition 2 only
//! gets easier as `end(c)` grows, so the candidate that ended last (a failed delete counts
//! as ending at +∞) decides.
//!
//! # Classification
//! - **lost write**: a violation in a final verification read (made after the faults were
//!   healed and the cluster was quiet): what was acknowledged is not what the cluster holds.
//! - **resurrection**: the read returned a value although the latest acknowledged write that
//!   superseded it was a delete.
//! - **stale read**: any other superseded read (an older value, or "absent" after an
//!   acknowledged set).
//! - **phantom**: see above.
//!
//! # Availability
//! For each fault cycle (see [`Fault::cycle`]) that took a node away, from the first
//! disruption until the next cycle's (or the end of the workload): for every key, the stretch
//! from the start of the first failed operation on it in that window to the end of the next
//! successful operation on it that started no earlier (or the end of the workload, if none
//! did — the key is then counted as unrecovered). Reported per cycle as the maximum and median
//! over the keys that had a failure, with how many there were.
//!
//! # Caveats
//! - The rule is per key and real-time (linearizability of single-key reads and writes,
//!   with indeterminate failed writes); it does not check reads against each other (two
//!   reads going back and forth between two values concurrent with both is accepted).
//! - Availability is seen through the workload: a key nobody touched during a fault counts
//!   as available, and the stretch includes the per-operation timeout of the failed call.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::history::{Fault, FaultAction, Op, OpKind};

/// −∞ on the checker's time line (the initial state's write).
const NEG_INF: i64 = i64::MIN;
/// +∞ on the checker's time line (the end of a failed write).
const POS_INF: i64 = i64::MAX;

/// What kind of wrong answer a read gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A final verification read did not see an acknowledged write.
    LostWrite,
    /// A read returned a superseded state.
    StaleRead,
    /// A read returned a value whose latest superseding acknowledged write was a delete.
    Resurrection,
    /// A read returned a value nobody wrote to that key, or whose write had not begun.
    Phantom,
}

impl ViolationKind {
    /// Every kind, in report order.
    pub const ALL: [ViolationKind; 4] = [
        ViolationKind::LostWrite,
        ViolationKind::StaleRead,
        ViolationKind::Resurrection,
        ViolationKind::Phantom,
    ];

    /// Name for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::LostWrite => "lost write",
            ViolationKind::StaleRead => "stale read",
            ViolationKind::Resurrection => "resurrection",
            ViolationKind::Phantom => "phantom",
        }
    }
}

/// One invalid read, with the operations that show why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// What went wrong.
    pub kind: ViolationKind,
    /// The read, by index in the history.
    pub read: usize,
    /// The write the value came from (`None` for the initial state and phantoms).
    pub source: Option<usize>,
    /// The acknowledged write that superseded the value before the read began.
    pub superseded_by: Option<usize>,
    /// The same in words.
    pub explanation: String,
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Successful reads checked (final reads included).
    pub reads_checked: usize,
    /// Every invalid read, in history order.
    pub violations: Vec<Violation>,
}

impl CheckReport {
    /// How many violations of `kind` were found.
    pub fn count(&self, kind: ViolationKind) -> usize {
        self.violations.iter().filter(|v| v.kind == kind).count()
    }

    /// Whether every read was valid.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// A time in microseconds on the checker's time line.
fn t(us: u64) -> i64 {
    i64::try_from(us).unwrap_or(POS_INF - 1)
}

/// When a write counts as finished: its end if acknowledged, else never.
fn write_end(op: &Op) -> i64 {
    if op.outcome.is_ok() {
        t(op.end_us)
    } else {
        POS_INF
    }
}

/// Microseconds as seconds, for explanations.
fn secs(us: i64) -> String {
    match us {
        NEG_INF => "-inf".into(),
        POS_INF => "+inf (failed)".into(),
        us => format!("{:.3}s", us as f64 / 1e6),
    }
}

/// The acknowledged writes of one key, ordered by start, with the smallest end among each
/// suffix: "is there an acknowledged write that started after T and ended before U?" is a
/// binary search and a lookup.
#[derive(Default)]
struct AckedWrites {
    /// (start, end, index in the history), by start.
    writes: Vec<(i64, i64, usize)>,
    /// `suffix_min_end[i]` = the smallest end among `writes[i..]`.
    suffix_min_end: Vec<i64>,
}

impl AckedWrites {
    fn new(mut writes: Vec<(i64, i64, usize)>) -> Self {
        writes.sort_unstable();
        let mut suffix_min_end = vec![POS_INF; writes.len()];
        let mut min = POS_INF;
        for (i, w) in writes.iter().enumerate().rev() {
            min = min.min(w.1);
            suffix_min_end[i] = min;
        }
        Self {
            writes,
            suffix_min_end,
        }
    }

    /// The first write that started strictly after `after`.
    fn first_after(&self, after: i64) -> usize {
        self.writes.partition_point(|w| w.0 <= after)
    }

    /// Whether an acknowledged write started strictly after `source_end` and ended strictly
    /// before `read_start`.
    fn supersedes(&self, source_end: i64, read_start: i64) -> bool {
        let from = self.first_after(source_end);
        from < self.writes.len() && self.suffix_min_end[from] < read_start
    }

    /// Of the writes [`supersedes`](Self::supersedes) looks for, the one that ended last:
    /// the state the read should at least have seen.
    fn latest_superseding(&self, source_end: i64, read_start: i64) -> Option<usize> {
        self.writes[self.first_after(source_end)..]
            .iter()
            .filter(|w| w.1 < read_start)
            .max_by_key(|w| w.1)
            .map(|w| w.2)
    }
}

/// Checks every successful read of `history` against the read rule (see the module docs).
pub fn check(history: &[Op]) -> CheckReport {
    let mut set_of_value: HashMap<&str, usize> = HashMap::new();
    let mut acked: HashMap<&str, Vec<(i64, i64, usize)>> = HashMap::new();
    let mut deletes: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        match op.kind {
            OpKind::Set => {
                if let Some(value) = &op.value {
                    set_of_value.entry(value.as_str()).or_insert(i);
                }
            }
            OpKind::Delete => deletes.entry(op.key.as_str()).or_default().push(i),
            OpKind::Get => {}
        }
        if op.kind.is_write() && op.outcome.is_ok() {
            acked
                .entry(op.key.as_str())
                .or_default()
                .push((t(op.start_us), t(op.end_us), i));
        }
    }
    let acked: HashMap<&str, AckedWrites> = acked
        .into_iter()
        .map(|(key, writes)| (key, AckedWrites::new(writes)))
        .collect();
    let none = AckedWrites::default();

    let mut report = CheckReport::default();
    for (i, read) in history.iter().enumerate() {
        if read.kind != OpKind::Get || !read.outcome.is_ok() {
            continue;
        }
        report.reads_checked += 1;
        let writes = acked.get(read.key.as_str()).unwrap_or(&none);
        let (read_start, read_end) = (t(read.start_us), t(read.end_us));

        // The write the value came from, and when it counts as finished.
        let (source, source_end) = match &read.value {
            Some(value) => {
                let Some(&c) = set_of_value.get(value.as_str()) else {
                    report
                        .violations
                        .push(phantom(i, None, read, "nobody wrote it"));
                    continue;
                };
                let write = &history[c];
                if write.key != read.key {
                    let why = format!("it was written to key {}", write.key);
                    report.violations.push(phantom(i, Some(c), read, &why));
                    continue;
                }
                if t(write.start_us) >= read_end {
                    let why = format!("its write began at {}", secs(t(write.start_us)));
                    report.violations.push(phantom(i, Some(c), read, &why));
                    continue;
                }
                (Some(c), write_end(write))
            }
            None => deletes
                .get(read.key.as_str())
                .into_iter()
                .flatten()
                .filter(|&&d| t(history[d].start_us) < read_end)
                .map(|&d| (Some(d), write_end(&history[d])))
                .max_by_key(|&(_, end)| end)
                .unwrap_or((None, NEG_INF)),
        };
        if !writes.supersedes(source_end, read_start) {
            continue;
        }
        let Some(w) = writes.latest_superseding(source_end, read_start) else {
            continue;
        };
        let newer = &history[w];
        let kind = if read.final_read {
            ViolationKind::LostWrite
        } else if read.value.is_some() && newer.kind == OpKind::Delete {
            ViolationKind::Resurrection
        } else {
            ViolationKind::StaleRead
        };
        let seen = match (&read.value, source) {
            (Some(v), _) => format!("{v:?}"),
            (None, Some(_)) => "absent (a delete)".to_owned(),
            (None, None) => "absent (the initial state)".to_owned(),
        };
        let explanation = format!(
            "client {} read {} of key {} in [{}, {}] (its write ended at {}), \
             but {} by client {} was acknowledged in [{}, {}]",
            read.client,
            seen,
            read.key,
            secs(read_start),
            secs(read_end),
            secs(source_end),
            match newer.kind {
                OpKind::Delete => "a delete".to_owned(),
                _ => format!("set {:?}", newer.value.as_deref().unwrap_or("")),
            },
            newer.client,
            secs(t(newer.start_us)),
            secs(t(newer.end_us)),
        );
        report.violations.push(Violation {
            kind,
            read: i,
            source,
            superseded_by: Some(w),
            explanation,
        });
    }
    report
}

fn phantom(read: usize, source: Option<usize>, op: &Op, why: &str) -> Violation {
    Violation {
        kind: ViolationKind::Phantom,
        read,
        source,
        superseded_by: None,
        explanation: format!(
            "client {} read {:?} of key {} in [{}, {}], but {why}",
            op.client,
            op.value.as_deref().unwrap_or(""),
            op.key,
            secs(t(op.start_us)),
            secs(t(op.end_us)),
        ),
    }
}

/// How long keys were unavailable after one fault cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleAvailability {
    /// The cycle (see [`Fault::cycle`]).
    pub cycle: u32,
    /// When its first disruption happened, in microseconds on the run clock.
    pub at_us: u64,
    /// The nodes it disrupted.
    pub nodes: Vec<u64>,
    /// What was done to them.
    pub action: FaultAction,
    /// Operations that failed in the cycle's window.
    pub failed_ops: usize,
    /// Keys with at least one failed operation in the window.
    pub keys_affected: usize,
    /// Longest unavailability stretch over those keys, in microseconds.
    pub max_us: u64,
    /// Median stretch over those keys, in microseconds.
    pub p50_us: u64,
    /// Keys with no successful operation after their failure before the workload ended.
    pub unrecovered_keys: usize,
    /// Every affected key's stretch (for pooled statistics), in microseconds.
    #[serde(default, skip_serializing)]
    pub stretches_us: Vec<u64>,
}

/// Measures, per fault cycle that took a node away, how long keys stayed unavailable (see
/// the module docs). Final verification reads are not counted; `run_end_us` is the end of
/// the workload (unrecovered stretches end there).
pub fn availability(history: &[Op], faults: &[Fault], run_end_us: u64) -> Vec<CycleAvailability> {
    // Disruptive cycles: (start, cycle, nodes, action), by start.
    let mut cycles: Vec<(u64, u32, Vec<u64>, FaultAction)> = Vec::new();
    for fault in faults.iter().filter(|f| f.action.is_disruption()) {
        match cycles.iter_mut().find(|c| c.1 == fault.cycle) {
            Some(c) => {
                c.0 = c.0.min(fault.at_us);
                if !c.2.contains(&fault.node) {
                    c.2.push(fault.node);
                }
            }
            None => cycles.push((fault.at_us, fault.cycle, vec![fault.node], fault.action)),
        }
    }
    cycles.sort_by_key(|c| c.0);

    let mut by_key: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in history.iter().filter(|op| !op.final_read) {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for ops in by_key.values_mut() {
        ops.sort_by_key(|op| op.start_us);
    }

    let mut out = Vec::with_capacity(cycles.len());
    for (n, (from, cycle, nodes, action)) in cycles.iter().enumerate() {
        let until = cycles.get(n + 1).map_or(run_end_us, |next| next.0);
        let in_window = |op: &&&Op| op.start_us >= *from && op.start_us < until;
        let mut stretches = Vec::new();
        let mut unrecovered = 0;
        let mut failed_ops = 0;
        for ops in by_key.values() {
            failed_ops += ops
                .iter()
                .filter(in_window)
                .filter(|op| !op.outcome.is_ok())
                .count();
            let Some(first) = ops.iter().filter(in_window).find(|op| !op.outcome.is_ok()) else {
                continue;
            };
            let recovered = ops
                .iter()
                .filter(|op| op.start_us >= first.start_us && op.outcome.is_ok())
                .map(|op| op.end_us)
                .min();
            let end = recovered.unwrap_or_else(|| {
                unrecovered += 1;
                run_end_us.max(first.start_us)
            });
            stretches.push(end.saturating_sub(first.start_us));
        }
        stretches.sort_unstable();
        out.push(CycleAvailability {
            cycle: *cycle,
            at_us: *from,
            nodes: nodes.clone(),
            action: *action,
            failed_ops,
            keys_affected: stretches.len(),
            max_us: stretches.last().copied().unwrap_or(0),
            p50_us: median(&stretches),
            unrecovered_keys: unrecovered,
            stretches_us: stretches,
        });
    }
    out
}

/// The median of sorted `values` (the lower middle for an even count), 0 if empty.
pub fn median(sorted: &[u64]) -> u64 {
    if sorted.is_empty() {
        0
    } else {
        sorted[(sorted.len() - 1) / 2]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::history::Outcome;

    // Hand-written histories. Times are in milliseconds here for readability.

    fn op(client: u32, kind: OpKind, key: &str, value: Option<&str>, ms: (u64, u64)) -> Op {
        Op {
            client,
            kind,
            key: key.into(),
            value: value.map(str::to_owned),
            start_us: ms.0 * 1000,
            end_us: ms.1 * 1000,
            outcome: Outcome::Ok,
            version: None,
            final_read: false,
        }
    }

    fn set(client: u32, key: &str, value: &str, ms: (u64, u64)) -> Op {
        op(client, OpKind::Set, key, Some(value), ms)
    }

    fn del(client: u32, key: &str, ms: (u64, u64)) -> Op {
        op(client, OpKind::Delete, key, None, ms)
    }

    fn get(client: u32, key: &str, value: Option<&str>, ms: (u64, u64)) -> Op {
        op(client, OpKind::Get, key, value, ms)
    }

    fn failed(mut op: Op) -> Op {
        op.outcome = Outcome::Failed("timed out".into());
        if op.kind == OpKind::Get {
            op.value = None;
        }
        op
    }

    fn last_read(mut op: Op) -> Op {
        op.final_read = true;
        op
    }

    fn kinds(history: &[Op]) -> Vec<ViolationKind> {
        check(history).violations.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn reads_of_the_latest_acknowledged_write_are_accepted() {
        let h = [
            get(1, "k", None, (0, 1)),
            set(0, "k", "a", (2, 3)),
            get(1, "k", Some("a"), (4, 5)),
            set(0, "k", "b", (6, 7)),
            get(1, "k", Some("b"), (8, 9)),
            del(0, "k", (10, 11)),
            get(1, "k", None, (12, 13)),
        ];
        let report = check(&h);
        assert_eq!(report.reads_checked, 4);
        assert!(report.is_ok(), "{:?}", report.violations);
    }

    #[test]
    fn reads_overlapping_a_write_may_see_either_state() {
        let h = [
            set(0, "k", "a", (0, 1)),
            set(0, "k", "b", (10, 20)),
            get(1, "k", Some("a"), (12, 14)),
            get(2, "k", Some("b"), (11, 13)),
            get(1, "k", Some("a"), (15, 25)),
            // A read that ends just after the write began may already see it.
            get(3, "k", Some("b"), (5, 11)),
        ];
        assert!(check(&h).is_ok(), "{:?}", check(&h).violations);
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let h = [
            set(0, "k", "a", (0, 10)),
            set(1, "k", "b", (2, 8)),
            get(2, "k", Some("a"), (11, 12)),
            get(3, "k", Some("b"), (11, 12)),
        ];
        // Two readers after both writes disagree: both orders are possible for each alone.
        // (Reads are not checked against each other; see the caveats.)
        assert!(check(&h).is_ok(), "{:?}", check(&h).violations);
        let h = [
            set(0, "k", "a", (0, 10)),
            del(1, "k", (2, 8)),
            get(2, "k", None, (11, 12)),
            get(3, "k", Some("a"), (13, 14)),
        ];
        assert!(check(&h).is_ok(), "{:?}", check(&h).violations);
    }

    #[test]
    fn a_failed_write_may_or_may_not_have_taken_effect() {
        // Not taken effect: later reads see the previous value.
        let h = [
            set(0, "k", "a", (0, 1)),
            failed(set(0, "k", "b", (2, 3000))),
            get(1, "k", Some("a"), (3001, 3002)),
            last_read(get(9, "k", Some("a"), (9000, 9001))),
        ];
        assert!(check(&h).is_ok(), "{:?}", check(&h).violations);
        // Taken effect, even long after it failed and after newer acknowledged writes.
        let h = [
            set(0, "k", "a", (0, 1)),
            failed(set(0, "k", "b", (2, 3000))),
            set(1, "k", "c", (3500, 3501)),
            get(1, "k", Some("b"), (4000, 4001)),
            last_read(get(9, "k", Some("b"), (9000, 9001))),
        ];
        assert!(check(&h).is_ok(), "{:?}", check(&h).violations);
        // A failed delete may have removed the key.
        let h = [
            set(0, "k", "a", (0, 1)),
            failed(del(0, "k", (2, 3000))),
            last_read(get(9, "k", None, (9000, 9001))),
        ];
        assert!(check(&h).is_ok(), "{:?}", check(&h).violations);
        // A failed read says nothing.
        let h = [set(0, "k", "a", (0, 1)), failed(get(1, "k", None, (2, 3)))];
        let report = check(&h);
        assert_eq!(report.reads_checked, 0);
        assert!(report.is_ok());
    }

    #[test]
    fn a_lost_write_is_reported_by_the_final_read() {
        let h = [
            set(0, "k", "a", (0, 1)),
            set(0, "k", "b", (2, 3)),
            last_read(get(9, "k", Some("a"), (100, 101))),
        ];
        let report = check(&h);
        assert_eq!(kinds(&h), [ViolationKind::LostWrite]);
        let v = &report.violations[0];
        assert_eq!((v.read, v.source, v.superseded_by), (2, Some(0), Some(1)));
        assert!(v.explanation.contains("\"a\""), "{}", v.explanation);
        // The whole key gone is a lost write too.
        let h = [
            set(0, "k", "a", (0, 1)),
            last_read(get(9, "k", None, (100, 101))),
        ];
        assert_eq!(kinds(&h), [ViolationKind::LostWrite]);
        // And so is a delete that did not hold.
        let h = [
            set(0, "k", "a", (0, 1)),
            del(0, "k", (2, 3)),
            last_read(get(9, "k", Some("a"), (100, 101))),
        ];
        assert_eq!(kinds(&h), [ViolationKind::LostWrite]);
    }

    #[test]
    fn a_stale_read_is_rejected() {
        let h = [
            set(0, "k", "a", (0, 1)),
            set(0, "k", "b", (2, 3)),
            get(1, "k", Some("a"), (4, 5)),
        ];
        assert_eq!(kinds(&h), [ViolationKind::StaleRead]);
        // Absent after an acknowledged set.
        let h = [set(0, "k", "a", (0, 1)), get(1, "k", None, (4, 5))];
        assert_eq!(kinds(&h), [ViolationKind::StaleRead]);
        // Absent, although the last delete was superseded by an acknowledged set.
        let h = [
            set(0, "k", "a", (0, 1)),
            del(0, "k", (2, 3)),
            set(0, "k", "b", (4, 5)),
            get(1, "k", None, (6, 7)),
        ];
        assert_eq!(kinds(&h), [ViolationKind::StaleRead]);
        // An older value after a delete and a newer set: stale, the latest was a set.
        let h = [
            set(0, "k", "a", (0, 1)),
            del(0, "k", (2, 3)),
            set(0, "k", "b", (4, 5)),
            get(1, "k", Some("a"), (6, 7)),
        ];
        assert_eq!(kinds(&h), [ViolationKind::StaleRead]);
    }

    #[test]
    fn a_resurrection_is_rejected() {
        let h = [
            set(0, "k", "a", (0, 1)),
            del(1, "k", (2, 3)),
            get(2, "k", Some("a"), (4, 5)),
        ];
        assert_eq!(kinds(&h), [ViolationKind::Resurrection]);
        // Even if the delete was concurrent with another set that ended before it.
        let h = [
            set(0, "k", "a", (0, 1)),
            set(0, "k", "b", (2, 3)),
            del(1, "k", (2, 6)),
            get(2, "k", Some("a"), (7, 8)),
        ];
        assert_eq!(kinds(&h), [ViolationKind::Resurrection]);
    }

    #[test]
    fn phantoms_are_rejected() {
        // Nobody wrote it.
        let h = [get(1, "k", Some("zzz"), (0, 1))];
        assert_eq!(kinds(&h), [ViolationKind::Phantom]);
        // Written to another key.
        let h = [set(0, "j", "a", (0, 1)), get(1, "k", Some("a"), (2, 3))];
        assert_eq!(kinds(&h), [ViolationKind::Phantom]);
        // Written only after the read had ended.
        let h = [get(1, "k", Some("a"), (0, 1)), set(0, "k", "a", (2, 3))];
        assert_eq!(kinds(&h), [ViolationKind::Phantom]);
    }

    #[test]
    fn only_acknowledged_writes_that_finished_before_the_read_supersede() {
        // The newer write was still running when the read began: not superseded.
        let h = [
            set(0, "k", "a", (0, 1)),
            set(0, "k", "b", (2, 10)),
            get(1, "k", Some("a"), (5, 6)),
        ];
        assert!(check(&h).is_ok());
        // The newer write began before the source write finished: concurrent, not after.
        let h = [
            set(0, "k", "a", (0, 5)),
            set(1, "k", "b", (4, 6)),
            get(1, "k", Some("a"), (7, 8)),
        ];
        assert!(check(&h).is_ok());
        // A write to another key never supersedes.
        let h = [
            set(0, "k", "a", (0, 1)),
            set(0, "j", "b", (2, 3)),
            get(1, "k", Some("a"), (4, 5)),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn the_latest_ending_delete_decides_an_absent_read() {
        let h = [
            del(0, "k", (0, 1)),
            set(0, "k", "a", (2, 3)),
            del(1, "k", (4, 5)),
            get(2, "k", None, (6, 7)),
        ];
        assert!(check(&h).is_ok(), "{:?}", check(&h).violations);
    }

    #[test]
    fn each_bad_read_is_reported_once_with_its_superseding_write() {
        let h = [
            set(0, "k", "a", (0, 1)),
            set(0, "k", "b", (2, 3)),
            set(0, "k", "c", (4, 5)),
            get(1, "k", Some("a"), (6, 7)),
            get(1, "k", Some("b"), (8, 9)),
            get(1, "k", Some("c"), (10, 11)),
        ];
        let report = check(&h);
        assert_eq!(report.violations.len(), 2);
        assert_eq!(report.violations[0].superseded_by, Some(2));
        assert_eq!(report.violations[1].superseded_by, Some(2));
        assert_eq!(report.count(ViolationKind::StaleRead), 2);
    }

    fn fault(cycle: u32, ms: u64, node: u64, action: FaultAction) -> Fault {
        Fault {
            cycle,
            at_us: ms * 1000,
            node,
            action,
            note: None,
        }
    }

    #[test]
    fn availability_measures_each_key_from_its_first_failure_to_its_next_success() {
        let h = [
            set(0, "k1", "a", (0, 1)),
            // Cycle 0 kills node 2 at 100 ms.
            failed(set(0, "k1", "b", (150, 3150))),
            failed(get(1, "k1", None, (200, 3200))),
            set(0, "k1", "c", (3200, 3300)),
            failed(get(1, "k2", None, (400, 3400))),
            get(1, "k2", None, (3400, 3500)),
            get(2, "k3", None, (500, 501)),
            // Cycle 1 kills node 3 at 5000 ms; k4 never recovers.
            failed(set(0, "k4", "d", (5100, 8100))),
        ];
        let faults = [
            fault(0, 100, 2, FaultAction::Kill),
            fault(0, 1100, 2, FaultAction::Restart),
            fault(1, 5000, 3, FaultAction::Kill),
            fault(1, 6000, 3, FaultAction::Restart),
        ];
        let cycles = availability(&h, &faults, 10_000_000);
        assert_eq!(cycles.len(), 2);
        let c0 = &cycles[0];
        assert_eq!(
            (c0.cycle, c0.at_us, c0.nodes.clone()),
            (0, 100_000, vec![2])
        );
        assert_eq!(c0.failed_ops, 3);
        assert_eq!(c0.keys_affected, 2);
        assert_eq!(c0.max_us, 3_150_000, "k1: 150 ms to 3300 ms");
        assert_eq!(c0.p50_us, 3_100_000, "k2: 400 ms to 3500 ms");
        assert_eq!(c0.unrecovered_keys, 0);
        let c1 = &cycles[1];
        assert_eq!((c1.keys_affected, c1.unrecovered_keys), (1, 1));
        assert_eq!(c1.max_us, 10_000_000 - 5_100_000);
    }

    #[test]
    fn nodes_disrupted_together_make_one_cycle_and_recoveries_none() {
        let faults = [
            fault(4, 1000, 1, FaultAction::Kill),
            fault(4, 1001, 5, FaultAction::Kill),
            fault(4, 3000, 1, FaultAction::Restart),
            fault(4, 3000, 5, FaultAction::Restart),
            fault(5, 9000, 2, FaultAction::Restart),
        ];
        let cycles = availability(&[], &faults, 10_000_000);
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].nodes, [1, 5]);
        assert_eq!((cycles[0].keys_affected, cycles[0].max_us), (0, 0));
    }

    #[test]
    fn median_takes_the_lower_middle() {
        assert_eq!(median(&[]), 0);
        assert_eq!(median(&[5]), 5);
        assert_eq!(median(&[1, 2, 3, 4]), 2);
        assert_eq!(median(&[1, 2, 3]), 2);
    }
}
