//! `strata-chaos`: runs a chaos scenario (or a profile of several) against a real Strata
//! cluster and exits non-zero if the checker found an invalid read.
//!
//! ```text
//! cargo build -p strata-cli -p strata-chaos
//! cargo run -p strata-chaos -- kill-random --duration 30
//! cargo run -p strata-chaos -- short            # the CI profile, ~2–3 minutes
//! cargo run -p strata-chaos -- kill-leader --seed 1234 --duration 60   # replay a seed
//! cargo run -p strata-chaos -- check --out target/chaos/kill-random-1234
//! cluster/build-image.sh && cargo run -p strata-chaos -- containers   # docker-compose.yml
//! ```
//!
//! Exit status: 0 every scenario passed, 1 a scenario found a violation, 2 the run itself
//! failed (no `strata` binary, a cluster that did not start), 130 interrupted.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use strata_chaos::containers::ContainerConfig;
use strata_chaos::history::{self, Fault, Op};
use strata_chaos::scenario::{self, Profile, RunConfig, Scenario};
use strata_chaos::summary::{self, RunFacts, ScenarioSummary, Setup, Verdict};

/// Run chaos scenarios against a real Strata cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A scenario, a profile (`short`: ~2–3 min for CI; `long`: ≥ 20 kill cycles), or
    /// `check` to re-check the history in `--out DIR`.
    target: Target,
    /// Seed of the fault schedule and the workload (random if not given; always printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of workload and faults per scenario (default 60; profiles have their own,
    /// which this overrides).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Nodes (default 3; 5 for kill-two).
    #[arg(long)]
    nodes: Option<usize>,
    /// Keys in the workload's key space.
    #[arg(long, default_value_t = 200)]
    keys: usize,
    /// Concurrent workload clients.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// The strata binary (default: the one next to this binary).
    #[arg(long, value_name = "PATH")]
    strata: Option<PathBuf>,
    /// Output directory (default target/chaos/<target>-<seed>/).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replication factor R (default: the node's, 2; 3 for kill-two).
    #[arg(long, value_name = "R")]
    replication: Option<u32>,
    /// Write quorum W, passed as STRATA_CLUSTER__WRITE_QUORUM (default: not passed; 3 for
    /// kill-two when the node knows the setting).
    #[arg(long, value_name = "W")]
    write_quorum: Option<u32>,
    /// Bytes per value (`rejoin` only).
    #[arg(long, default_value_t = 4096)]
    value_bytes: usize,
    /// Failure detection timeout, passed as STRATA_CLUSTER__FAILURE_TIMEOUT_MS (default: not
    /// passed).
    #[arg(long, value_name = "MS")]
    failure_timeout_ms: Option<u64>,
    /// The image of the container scenarios (built by cluster/build-image.sh).
    #[arg(long, env = "STRATA_IMAGE", default_value = "strata:dev")]
    image: String,
    /// The compose file of the container scenarios (default: docker-compose.yml here, else
    /// the repository's).
    #[arg(long, value_name = "PATH")]
    compose_file: Option<PathBuf>,
}

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// kill -9 a random node every few seconds, restart it.
    KillRandom,
    /// kill -9 the Raft leader, restart it.
    KillLeader,
    /// SIGSTOP a random node for a few seconds, then SIGCONT.
    Freeze,
    /// SIGTERM and restart every node in turn.
    RollingRestart,
    /// 5 nodes, R=3, W=3: kill -9 two nodes at once, restart both.
    KillTwo,
    /// Containers: docker kill a random node, docker start it.
    DockerKill,
    /// Containers: docker pause a random node, then unpause.
    DockerPause,
    /// Containers: cut a random node off from the others (iptables), reconnect it.
    Partition,
    /// Containers: cut the Raft leader off from the others, reconnect it.
    PartitionLeader,
    /// docker-kill, docker-pause, partition, partition-leader: ~5 minutes.
    Containers,
    /// kill-random, kill-leader, freeze: ~2–3 minutes in all.
    Short,
    /// Every scenario, long enough for well over 20 kill cycles (~12 minutes).
    Long,
    /// Re-check an existing run's history (`--out DIR`).
    Check,
    /// Measure a restart: load `--keys` values of `--value-bytes`, kill -9 a member, restart
    /// it, time until it is active again with its partitions synced.
    Rejoin,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::KillRandom => "kill-random",
            Target::KillLeader => "kill-leader",
            Target::Freeze => "freeze",
            Target::RollingRestart => "rolling-restart",
            Target::KillTwo => "kill-two",
            Target::DockerKill => "docker-kill",
            Target::DockerPause => "docker-pause",
            Target::Partition => "partition",
            Target::PartitionLeader => "partition-leader",
            Target::Containers => "containers",
            Target::Short => "short",
            Target::Long => "long",
            Target::Check => "check",
            Target::Rejoin => "rejoin",
        }
    }

    /// The scenarios to run and their default durations.
    fn scenarios(self) -> Vec<(Scenario, Duration)> {
        match self {
            Target::Short => Profile::Short.scenarios(),
            Target::Long => Profile::Long.scenarios(),
            Target::Containers => Profile::Containers.scenarios(),
            Target::Check | Target::Rejoin => Vec::new(),
            single => Scenario::from_name(single.name())
                .map(|s| vec![(s, DEFAULT_DURATION)])
                .unwrap_or_default(),
        }
    }
}

/// Duration of a single scenario when `--duration` is not given.
const DEFAULT_DURATION: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Dropping the run (Ctrl-C) drops its cluster, which kills every node.
    tokio::select! {
        result = run(args) => result.unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: every node is being killed");
            ExitCode::from(130)
        }
    }
}

/// What `summary.json` of a profile holds.
#[derive(Serialize)]
struct ProfileSummary<'a> {
    target: &'a str,
    seed: u64,
    scenarios: &'a [ScenarioSummary],
}

async fn run(args: Args) -> Result<ExitCode> {
    if args.target == Target::Check {
        let dir = args
            .out
            .as_deref()
            .context("check needs --out DIR, the directory of a run")?;
        return check(dir);
    }
    let strata = strata_binary(args.strata.as_deref())?;
    if args.target == Target::Rejoin {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| target_dir().join("chaos").join("rejoin"));
        let report = strata_chaos::rejoin::run(&strata_chaos::rejoin::RejoinConfig {
            strata,
            nodes: args.nodes.unwrap_or(3),
            keys: args.keys.max(1),
            value_bytes: args.value_bytes,
            log_dir: out.join("logs"),
        })
        .await?;
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("rejoin.json"), serde_json::to_vec_pretty(&report)?)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("seed {seed}  (replay with --seed {seed})");
    let scenarios = args.target.scenarios();
    let single = scenarios.len() == 1;
    let base = args.out.clone().unwrap_or_else(|| {
        target_dir()
            .join("chaos")
            .join(format!("{}-{seed}", args.target.name()))
    });

    let mut summaries = Vec::new();
    for (i, (scenario, default_duration)) in scenarios.into_iter().enumerate() {
        let scenario_seed = if single {
            seed
        } else {
            seed.wrapping_add(i as u64)
        };
        let out = if single {
            base.clone()
        } else {
            base.join(format!("{}-{scenario_seed}", scenario.name()))
        };
        let mut notes = Vec::new();
        let write_quorum = match (args.write_quorum, scenario.default_write_quorum()) {
            (Some(w), _) => Some(w),
            (None, Some(w)) => {
                let known = scenario::node_knows_write_quorum(&strata).await?;
                if !known {
                    let note = format!(
                        "this strata node does not know cluster.write_quorum: ran without W={w}"
                    );
                    println!("note: {note}");
                    notes.push(note);
                }
                known.then_some(w)
            }
            (None, None) => None,
        };
        let config = RunConfig {
            scenario,
            seed: scenario_seed,
            duration: args.duration.map_or(default_duration, Duration::from_secs),
            nodes: args.nodes.unwrap_or(scenario.default_nodes()),
            keys: args.keys.max(1),
            clients: args.clients.max(1),
            replication: args.replication.unwrap_or(scenario.default_replication()),
            write_quorum,
            failure_timeout_ms: args.failure_timeout_ms,
            strata: strata.clone(),
            out,
            notes,
            containers: scenario.in_containers().then(|| ContainerConfig {
                image: args.image.clone(),
                compose_file: compose_file(args.compose_file.as_deref()),
            }),
        };
        let summary = match scenario::run(&config).await {
            Ok(summary) => summary,
            Err(e) => {
                eprintln!("{}: {e:#}", scenario.name());
                let summary = ScenarioSummary::error(Setup::of(&config), &e);
                if std::fs::create_dir_all(&config.out).is_ok() {
                    let _ = summary.write(&config.out.join("summary.json"));
                }
                summary
            }
        };
        summaries.push(summary);
    }

    println!("\n{}", summary::table(&summaries));
    for s in &summaries {
        print!("{}", summary::details(s, 3));
    }
    if !single {
        std::fs::create_dir_all(&base)?;
        summary::write_json(
            &base.join("summary.json"),
            &ProfileSummary {
                target: args.target.name(),
                seed,
                scenarios: &summaries,
            },
        )?;
        println!("profile summary: {}", base.join("summary.json").display());
    }
    println!(
        "replay a scenario: cargo run -p strata-chaos -- SCENARIO --seed SEED --duration SECS (seeds above)"
    );
    Ok(exit_code(&summaries))
}

/// 0 if every scenario passed, 2 if one could not run, else 1.
fn exit_code(summaries: &[ScenarioSummary]) -> ExitCode {
    if summaries.iter().any(|s| s.verdict == Verdict::Error) {
        ExitCode::from(2)
    } else if summaries.iter().any(|s| s.verdict == Verdict::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `strata-chaos check --out DIR`: checks `DIR/history.jsonl` against `DIR/faults.jsonl`
/// again and prints the summary (without rewriting it).
fn check(dir: &Path) -> Result<ExitCode> {
    let ops: Vec<Op> = history::read_jsonl(&dir.join("history.jsonl"))?;
    let faults: Vec<Fault> = history::read_jsonl(&dir.join("faults.jsonl"))?;
    let previous: Option<serde_json::Value> = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let old = |field: &str| previous.as_ref().and_then(|p| p.get(field)).cloned();
    let setup = old("setup")
        .and_then(|s| serde_json::from_value::<Setup>(s).ok())
        .unwrap_or_else(|| Setup {
            scenario: "unknown".into(),
            seed: 0,
            duration_s: 0.0,
            nodes: 0,
            keys: 0,
            clients: 0,
            replication: 0,
            write_quorum: None,
            failure_timeout_ms: None,
            out: dir.to_owned(),
        });
    // When the workload stopped: recorded in the summary, else the last operation's end.
    let workload_end_us = old("workload_s")
        .and_then(|v| v.as_f64())
        .map(|secs| (secs * 1e6) as u64)
        .unwrap_or_else(|| {
            ops.iter()
                .filter(|op| !op.final_read)
                .map(|op| op.end_us)
                .max()
                .unwrap_or(0)
        });
    let facts = RunFacts {
        ops,
        faults,
        workload_end_us,
        cycles_run: old("cycles_run")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            .try_into()
            .unwrap_or(0),
        quiet: old("quiet").and_then(|v| v.as_bool()).unwrap_or(true),
        notes: Vec::new(),
    };
    let summary = ScenarioSummary::new(setup, &facts);
    println!("{}", summary::table(std::slice::from_ref(&summary)));
    print!("{}", summary::details(&summary, 10));
    Ok(exit_code(&[summary]))
}

/// The strata binary: `--strata`, else `strata` next to this binary (Cargo puts both in
/// `target/<profile>/`).
fn strata_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            bail!("--strata {}: no such file", path.display());
        }
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let beside = exe.with_file_name("strata");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "no strata binary at {}: build it with `cargo build -p strata-cli` (same profile), or pass --strata PATH",
        beside.display()
    )
}

/// Cargo's target directory when this binary runs from `target/<debug|release>/`, else
/// `./target`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let profile_dir = exe.parent()?;
            let name = profile_dir.file_name()?.to_str()?;
            matches!(name, "debug" | "release").then(|| profile_dir.parent().map(Path::to_owned))?
        })
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// The compose file of the container scenarios: `given`, else `docker-compose.yml` in the
/// current directory, else the one of the repository this binary was built from.
fn compose_file(given: Option<&Path>) -> PathBuf {
    if let Some(path) = given {
        return path.to_owned();
    }
    let here = PathBuf::from("docker-compose.yml");
    if here.is_file() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml")
}
