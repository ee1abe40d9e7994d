//! What a scenario run found, as `summary.json` and as a row of the table printed at the end.
//!
//! A scenario **passes** when the checker finds no invalid read (no lost write, stale read,
//! resurrection or phantom). Unavailability is measured and reported, never judged: how long
//! a key may be unavailable is a property to compare between builds, not a correctness rule.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use comfy_table::{Cell, Table, presets};
use serde::{Deserialize, Serialize};

use crate::checker::{self, CheckReport, CycleAvailability, ViolationKind};
use crate::history::{Fault, Op, OpKind};
use crate::scenario::RunConfig;
use crate::workload;

/// Violations written out in full in `summary.json` (all are in the history).
pub const MAX_EXAMPLES: usize = 25;

/// How a scenario went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Every read was valid.
    Pass,
    /// At least one read was invalid.
    Fail,
    /// The run could not be carried out (see the notes).
    Error,
}

impl Verdict {
    /// `PASS`, `FAIL` or `ERROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Error => "ERROR",
        }
    }
}

/// How a scenario was run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// The scenario's name.
    pub scenario: String,
    /// Its seed (replay with `--seed`).
    pub seed: u64,
    /// Configured duration of workload and faults, in seconds.
    pub duration_s: f64,
    /// Nodes.
    pub nodes: usize,
    /// Keys.
    pub keys: usize,
    /// Workload clients.
    pub clients: u32,
    /// Replication factor.
    pub replication: u32,
    /// Write quorum, when one was passed to the nodes.
    pub write_quorum: Option<u32>,
    /// Failure timeout, when one was passed to the nodes.
    pub failure_timeout_ms: Option<u64>,
    /// Output directory.
    pub out: PathBuf,
}

impl Setup {
    /// The setup of `config`.
    pub fn of(config: &RunConfig) -> Self {
        Self {
            scenario: config.scenario.name().to_owned(),
            seed: config.seed,
            duration_s: config.duration.as_secs_f64(),
            nodes: config.nodes,
            keys: config.keys,
            clients: config.clients,
            replication: config.replication,
            write_quorum: config.write_quorum,
            failure_timeout_ms: config.failure_timeout_ms,
            out: config.out.clone(),
        }
    }
}

/// What a run produced, before checking.
#[derive(Clone, Debug, Default)]
pub struct RunFacts {
    /// Every operation, final reads included.
    pub ops: Vec<Op>,
    /// Every fault and recovery.
    pub faults: Vec<Fault>,
    /// When the workload stopped, in microseconds on the run clock.
    pub workload_end_us: u64,
    /// Fault cycles completed.
    pub cycles_run: usize,
    /// Whether the cluster settled and every node answered before the final reads.
    pub quiet: bool,
    /// Anything the run could not do as planned.
    pub notes: Vec<String>,
}

/// One invalid read, with the operations involved written out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Example {
    /// What went wrong.
    pub kind: ViolationKind,
    /// In words.
    pub explanation: String,
    /// The read.
    pub read: Op,
    /// The write its value came from, if any.
    pub source: Option<Op>,
    /// The acknowledged write that superseded it.
    pub superseded_by: Option<Op>,
}

/// What one scenario run found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioSummary {
    /// How it was run.
    pub setup: Setup,
    /// PASS, FAIL or ERROR.
    pub verdict: Verdict,
    /// Fault cycles completed.
    pub cycles_run: usize,
    /// How long the workload ran, in seconds.
    pub workload_s: f64,
    /// Workload operations (final reads not included).
    pub operations: usize,
    /// Workload operations that failed or timed out.
    pub failed_ops: usize,
    /// Failed workload operations by class of error.
    pub failures_by_class: BTreeMap<String, usize>,
    /// Successful reads checked (final reads included).
    pub reads_checked: usize,
    /// Keys whose final read succeeded.
    pub final_reads_ok: usize,
    /// Keys whose final read never succeeded.
    pub final_reads_failed: usize,
    /// Violations found in final reads.
    pub lost_writes: usize,
    /// Superseded reads during the run.
    pub stale_reads: usize,
    /// Deleted values read again.
    pub resurrections: usize,
    /// Values nobody wrote.
    pub phantoms: usize,
    /// Writes a node cut off from the others acknowledged ([`workload::minority_writes`]);
    /// any is a violation.
    #[serde(default)]
    pub minority_acks: usize,
    /// Writes made through a node while it was cut off from the others.
    #[serde(default)]
    pub minority_writes: usize,
    /// Longest unavailability of a key after any fault, in milliseconds.
    pub max_unavailable_ms: f64,
    /// Median unavailability over every (fault, affected key), in milliseconds.
    pub p50_unavailable_ms: f64,
    /// Whether the cluster was quiet before the final reads.
    pub quiet: bool,
    /// Anything the run could not do as planned.
    pub notes: Vec<String>,
    /// Unavailability per fault cycle.
    pub availability: Vec<CycleAvailability>,
    /// The first [`MAX_EXAMPLES`] violations, written out.
    pub examples: Vec<Example>,
}

impl ScenarioSummary {
    /// Checks `facts` and sums them up.
    pub fn new(setup: Setup, facts: &RunFacts) -> Self {
        let ops = &facts.ops;
        let report: CheckReport = checker::check(ops);
        let availability = checker::availability(ops, &facts.faults, facts.workload_end_us);
        let workload: Vec<Op> = ops
            .iter()
            .filter(|op| !op.final_read && op.client < workload::MINORITY_CLIENT)
            .cloned()
            .collect();
        let minority: Vec<&Op> = ops
            .iter()
            .filter(|op| op.client >= workload::MINORITY_CLIENT && op.kind.is_write())
            .collect();
        let minority_acks = minority.iter().filter(|op| op.outcome.is_ok()).count();
        let mut pooled: Vec<u64> = availability
            .iter()
            .flat_map(|c| c.stretches_us.iter().copied())
            .collect();
        pooled.sort_unstable();
        let mut final_ok = BTreeMap::new();
        for op in ops
            .iter()
            .filter(|op| op.final_read && op.kind == OpKind::Get)
        {
            *final_ok.entry(op.key.as_str()).or_insert(false) |= op.outcome.is_ok();
        }
        let examples = report
            .violations
            .iter()
            .take(MAX_EXAMPLES)
            .map(|v| Example {
                kind: v.kind,
                explanation: v.explanation.clone(),
                read: ops[v.read].clone(),
                source: v.source.map(|i| ops[i].clone()),
                superseded_by: v.superseded_by.map(|i| ops[i].clone()),
            })
            .collect();
        Self {
            verdict: if report.is_ok() && minority_acks == 0 {
                Verdict::Pass
            } else {
                Verdict::Fail
            },
            setup,
            cycles_run: facts.cycles_run,
            workload_s: facts.workload_end_us as f64 / 1e6,
            operations: workload.len(),
            failed_ops: workload.iter().filter(|op| !op.outcome.is_ok()).count(),
            failures_by_class: workload::failures_by_class(&workload),
            reads_checked: report.reads_checked,
            final_reads_ok: final_ok.values().filter(|ok| **ok).count(),
            final_reads_failed: final_ok.values().filter(|ok| !**ok).count(),
            lost_writes: report.count(ViolationKind::LostWrite),
            stale_reads: report.count(ViolationKind::StaleRead),
            resurrections: report.count(ViolationKind::Resurrection),
            phantoms: report.count(ViolationKind::Phantom),
            minority_acks,
            minority_writes: minority.len(),
            max_unavailable_ms: pooled.last().copied().unwrap_or(0) as f64 / 1e3,
            p50_unavailable_ms: checker::median(&pooled) as f64 / 1e3,
            quiet: facts.quiet,
            notes: facts.notes.clone(),
            availability,
            examples,
        }
    }

    /// The summary of a run that could not be carried out.
    pub fn error(setup: Setup, error: &anyhow::Error) -> Self {
        let mut summary = Self::new(setup, &RunFacts::default());
        summary.verdict = Verdict::Error;
        summary.notes.push(format!("{error:#}"));
        summary
    }

    /// Writes the summary as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }
}

/// Writes `value` to `path` as pretty JSON.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

fn seconds(ms: f64) -> String {
    format!("{:.2} s", ms / 1e3)
}

/// The table printed at the end of a run: one row per scenario.
pub fn table(summaries: &[ScenarioSummary]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED).set_header([
        "scenario",
        "seed",
        "cycles",
        "ops",
        "failed",
        "max unavail",
        "p50 unavail",
        "lost writes",
        "stale reads",
        "resurrections",
        "phantoms",
        "verdict",
    ]);
    for s in summaries {
        table.add_row(vec![
            Cell::new(&s.setup.scenario),
            Cell::new(s.setup.seed),
            Cell::new(s.cycles_run),
            Cell::new(s.operations),
            Cell::new(s.failed_ops),
            Cell::new(seconds(s.max_unavailable_ms)),
            Cell::new(seconds(s.p50_unavailable_ms)),
            Cell::new(s.lost_writes),
            Cell::new(s.stale_reads),
            Cell::new(s.resurrections),
            Cell::new(s.phantoms),
            Cell::new(s.verdict.as_str()),
        ]);
    }
    table
}

/// A few lines per scenario under the table: failures by class, final reads, the first
/// violations, notes.
pub fn details(summary: &ScenarioSummary, examples: usize) -> String {
    let mut out = format!(
        "{} (seed {}): {} reads checked; final reads ok for {} keys, failed for {}; quiet before final reads: {}\n",
        summary.setup.scenario,
        summary.setup.seed,
        summary.reads_checked,
        summary.final_reads_ok,
        summary.final_reads_failed,
        summary.quiet
    );
    if !summary.failures_by_class.is_empty() {
        let classes: Vec<String> = summary
            .failures_by_class
            .iter()
            .map(|(class, n)| format!("{class} {n}"))
            .collect();
        out += &format!("  failures: {}\n", classes.join(", "));
    }
    if summary.minority_writes > 0 {
        out += &format!(
            "  minority side: {} of {} writes made through an isolated node were acknowledged (must be 0)\n",
            summary.minority_acks, summary.minority_writes
        );
    }
    for example in summary.examples.iter().take(examples) {
        out += &format!("  {}: {}\n", example.kind.as_str(), example.explanation);
    }
    for note in &summary.notes {
        out += &format!("  note: {note}\n");
    }
    out += &format!("  files: {}\n", summary.setup.out.display());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;

    fn op(kind: OpKind, value: Option<&str>, ms: (u64, u64), final_read: bool) -> Op {
        Op {
            client: 0,
            kind,
            key: "k".into(),
            value: value.map(str::to_owned),
            start_us: ms.0 * 1000,
            end_us: ms.1 * 1000,
            outcome: Outcome::Ok,
            version: None,
            final_read,
        }
    }

    fn setup() -> Setup {
        Setup {
            scenario: "kill-random".into(),
            seed: 1,
            duration_s: 1.0,
            nodes: 3,
            keys: 1,
            clients: 1,
            replication: 2,
            write_quorum: None,
            failure_timeout_ms: None,
            out: PathBuf::from("out"),
        }
    }

    #[test]
    fn a_lost_write_fails_the_scenario_and_is_written_out() {
        let facts = RunFacts {
            ops: vec![
                op(OpKind::Set, Some("c0-1"), (0, 1), false),
                op(OpKind::Set, Some("c0-2"), (2, 3), false),
                op(OpKind::Get, Some("c0-1"), (10, 11), true),
            ],
            workload_end_us: 5000,
            quiet: true,
            ..RunFacts::default()
        };
        let summary = ScenarioSummary::new(setup(), &facts);
        assert_eq!(summary.verdict, Verdict::Fail);
        assert_eq!((summary.operations, summary.lost_writes), (2, 1));
        assert_eq!((summary.final_reads_ok, summary.final_reads_failed), (1, 0));
        let example = &summary.examples[0];
        assert_eq!(example.read.value.as_deref(), Some("c0-1"));
        assert_eq!(
            example
                .superseded_by
                .as_ref()
                .and_then(|w| w.value.as_deref()),
            Some("c0-2")
        );
        let text = table(&[summary]).to_string();
        assert!(
            text.contains("FAIL") && text.contains("kill-random"),
            "{text}"
        );
    }

    #[test]
    fn a_clean_run_passes() {
        let facts = RunFacts {
            ops: vec![
                op(OpKind::Set, Some("c0-1"), (0, 1), false),
                op(OpKind::Get, Some("c0-1"), (10, 11), true),
            ],
            ..RunFacts::default()
        };
        let summary = ScenarioSummary::new(setup(), &facts);
        assert_eq!(summary.verdict, Verdict::Pass);
        let error = ScenarioSummary::error(setup(), &anyhow::anyhow!("no strata"));
        assert_eq!(error.verdict, Verdict::Error);
        assert!(details(&error, 3).contains("no strata"));
    }
}
