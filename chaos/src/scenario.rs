//! Scenarios: which faults, when, to which nodes — and one run of a scenario from the first
//! node started to the verdict.
//!
//! # The schedule
//! [`plan`] turns (scenario, seed, duration, nodes) into a list of [`Cycle`]s: wait, disrupt
//! some nodes, keep them down for a while, bring them back. It is a pure function of its
//! arguments drawn from [`crate::rng`]`(seed, 0)`, so the same `--seed` replays the same
//! schedule: which node, how long before, how long down. Only the Raft leader (in
//! `kill-leader`) is found at run time.
//!
//! | scenario | nodes | disruption | target | wait | down |
//! |---|---|---|---|---|---|
//! | `kill-random` | 3 | `kill -9`, restart | one random node | 1.5–4 s | 1–3 s |
//! | `kill-leader` | 3 | `kill -9`, restart | the Raft leader | 1.5–4 s | 2.5–5 s |
//! | `freeze` | 3 | SIGSTOP, SIGCONT | one random node | 1.5–4 s | 2–5 s |
//! | `rolling-restart` | 3 | SIGTERM, restart | 1, 2, …, N, 1, … | 2–4 s | 0.5–1.5 s |
//! | `kill-two` | 5 (R=3, W=3) | `kill -9`, restart | two random nodes | 2–5 s | 1.5–4 s |
//! | `docker-kill` | 3 containers | `docker kill`, `docker start` | one random node | 1.5–4 s | 1–3 s |
//! | `docker-pause` | 3 containers | `docker pause`, `unpause` | one random node | 1.5–4 s | 2–5 s |
//! | `partition` | 3 containers | cut off from the others, reconnect | one random node | 1.5–4 s | 3–6 s |
//! | `partition-leader` | 3 containers | cut off from the others, reconnect | the Raft leader | 1.5–4 s | 3–6 s |
//!
//! The container scenarios run `docker-compose.yml` (see [`crate::containers`]); a partition
//! leaves the isolated node reachable by clients, so it is the minority side of a real split:
//! it must neither acknowledge a write it cannot replicate nor answer a read it may have
//! missed a write for.
//!
//! # A run ([`run`])
//! Start the cluster and wait until it settles; start the workload; play the schedule until
//! the duration is up (a cycle that would start after it is not begun); stop the workload;
//! heal (thaw, restart); wait until the cluster is quiet (settled ring, every node answers,
//! then [`QUIET_PAUSE`]); read every key once; write `history.jsonl` and `faults.jsonl`;
//! check; write `summary.json`.
//!
//! # Caveats
//! - A cycle's timing is relative to the end of the previous one, and restarts take as long
//!   as they take, so a slow machine runs fewer cycles in the same duration (the summary
//!   says how many ran).
//! - A fault the harness cannot inject or undo (a node that will not restart) ends the fault
//!   schedule early; the run goes on to heal, verify and report, with a note.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::Rng;
use rand::seq::index;

use crate::cluster::{Cluster, ClusterConfig};
use crate::containers::ContainerConfig;
use crate::history::{self, Fault, FaultAction, RunClock};
use crate::summary::{RunFacts, ScenarioSummary, Setup};
use crate::workload::{self, Workload, WorkloadConfig};

/// How long a new cluster, or a healed one, may take to settle.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Pause after the cluster is quiet and before the final reads, for writes still being
/// replicated or written back.
pub const QUIET_PAUSE: Duration = Duration::from_secs(2);

/// How long SIGTERM may take before the node is killed (the node's shutdown grace is 10 s).
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long to look for the Raft leader before a `kill-leader` cycle is skipped.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A rough cost of bringing a node back, added to each cycle when planning how many fit.
const RECOVERY_ESTIMATE: Duration = Duration::from_secs(1);

/// Most cycles one plan holds, whatever the duration.
pub const MAX_CYCLES: usize = 10_000;

/// A fault scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// `kill -9` a random node, restart it.
    KillRandom,
    /// `kill -9` the Raft leader, restart it.
    KillLeader,
    /// SIGSTOP a random node, SIGCONT it.
    Freeze,
    /// SIGTERM every node in turn, restart it.
    RollingRestart,
    /// `kill -9` two random nodes at once (5 nodes, R=3, W=3), restart both.
    KillTwo,
    /// Containers: `docker kill` a random node, `docker start` it.
    DockerKill,
    /// Containers: `docker pause` a random node, `docker unpause` it.
    DockerPause,
    /// Containers: cut a random node off from the others, reconnect it.
    Partition,
    /// Containers: cut the Raft leader off from the others, reconnect it.
    PartitionLeader,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 9] = [
        Scenario::KillRandom,
        Scenario::KillLeader,
        Scenario::Freeze,
        Scenario::RollingRestart,
        Scenario::KillTwo,
        Scenario::DockerKill,
        Scenario::DockerPause,
        Scenario::Partition,
        Scenario::PartitionLeader,
    ];

    /// The scenario's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillRandom => "kill-random",
            Scenario::KillLeader => "kill-leader",
            Scenario::Freeze => "freeze",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::KillTwo => "kill-two",
            Scenario::DockerKill => "docker-kill",
            Scenario::DockerPause => "docker-pause",
            Scenario::Partition => "partition",
            Scenario::PartitionLeader => "partition-leader",
        }
    }

    /// Whether the scenario runs on containers of `docker-compose.yml`.
    pub fn in_containers(self) -> bool {
        matches!(
            self,
            Scenario::DockerKill
                | Scenario::DockerPause
                | Scenario::Partition
                | Scenario::PartitionLeader
        )
    }

    /// The scenario called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Nodes, unless `--nodes` says otherwise: 3 (the smallest cluster that keeps a Raft
    /// majority with one node down), 5 for `kill-two` (a majority with two down).
    pub fn default_nodes(self) -> usize {
        match self {
            Scenario::KillTwo => 5,
            _ => 3,
        }
    }

    /// Replication factor, unless `--replication` says otherwise: the node's default (2),
    /// 3 for `kill-two`.
    pub fn default_replication(self) -> u32 {
        match self {
            Scenario::KillTwo => 3,
            _ => strata_proto::ring::DEFAULT_REPLICATION,
        }
    }

    /// Write quorum, unless `--write-quorum` says otherwise: 3 for `kill-two` (a write needs
    /// every replica, so two dead nodes must make writes fail, never half-succeed), none
    /// (the node's default) for the others.
    pub fn default_write_quorum(self) -> Option<u32> {
        match self {
            Scenario::KillTwo => Some(3),
            _ => None,
        }
    }
}

/// A named set of scenarios with their durations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// For CI: three scenarios, about 100 s of faults, 2–3 minutes with startup and
    /// verification.
    Short,
    /// Every scenario, long enough for well over 20 kill cycles (about 12 minutes).
    Long,
    /// The container scenarios (`docker-compose.yml`): kill, pause, partition, partition of
    /// the leader; about 5 minutes.
    Containers,
}

impl Profile {
    /// The scenarios and how long each runs.
    pub fn scenarios(self) -> Vec<(Scenario, Duration)> {
        let secs = Duration::from_secs;
        match self {
            Profile::Short => vec![
                (Scenario::KillRandom, secs(40)),
                (Scenario::KillLeader, secs(35)),
                (Scenario::Freeze, secs(25)),
            ],
            Profile::Long => vec![
                (Scenario::KillRandom, secs(150)),
                (Scenario::KillLeader, secs(120)),
                (Scenario::Freeze, secs(60)),
                (Scenario::RollingRestart, secs(90)),
                (Scenario::KillTwo, secs(120)),
            ],
            Profile::Containers => vec![
                (Scenario::DockerKill, secs(45)),
                (Scenario::DockerPause, secs(40)),
                (Scenario::Partition, secs(50)),
                (Scenario::PartitionLeader, secs(50)),
            ],
        }
    }
}

/// How a cycle takes nodes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disruption {
    /// `kill -9`, then restart.
    Kill,
    /// SIGTERM (wait for exit), then restart.
    Terminate,
    /// SIGSTOP, then SIGCONT.
    Freeze,
    /// Cut off from the other nodes, then reconnected.
    Isolate,
}

/// Which nodes a cycle disrupts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// These node ids.
    Nodes(Vec<u64>),
    /// Whichever node leads Raft when the cycle starts.
    Leader,
}

/// One fault cycle of a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cycle {
    /// Pause before the disruption.
    pub wait: Duration,
    /// What is done.
    pub disruption: Disruption,
    /// To whom.
    pub target: Target,
    /// How long the nodes stay down before they are brought back.
    pub down_for: Duration,
}

/// The fault schedule of `scenario` for `duration` on nodes `1..=nodes`, drawn from `seed`
/// (see the module docs). At least one cycle, at most [`MAX_CYCLES`].
pub fn plan(scenario: Scenario, seed: u64, duration: Duration, nodes: usize) -> Vec<Cycle> {
    let mut rng = crate::rng(seed, 0);
    let nodes = nodes.max(1);
    let ms = |rng: &mut rand_chacha::ChaCha8Rng, lo: u64, hi: u64| {
        Duration::from_millis(rng.random_range(lo..=hi))
    };
    let mut cycles = Vec::new();
    let mut planned = Duration::ZERO;
    while cycles.len() < MAX_CYCLES {
        let n = cycles.len();
        let random_node = |rng: &mut rand_chacha::ChaCha8Rng| rng.random_range(1..=nodes as u64);
        let cycle = match scenario {
            Scenario::KillRandom => Cycle {
                wait: ms(&mut rng, 1500, 4000),
                disruption: Disruption::Kill,
                target: Target::Nodes(vec![random_node(&mut rng)]),
                down_for: ms(&mut rng, 1000, 3000),
            },
            // Down for longer than the default election timeout can last (2 s), so the
            // others elect a new leader before the old one returns (a restarted leader
            // whose vote is still current resumes leading at once).
            Scenario::KillLeader => Cycle {
                wait: ms(&mut rng, 1500, 4000),
                disruption: Disruption::Kill,
                target: Target::Leader,
                down_for: ms(&mut rng, 2500, 5000),
            },
            Scenario::Freeze => Cycle {
                wait: ms(&mut rng, 1500, 4000),
                disruption: Disruption::Freeze,
                target: Target::Nodes(vec![random_node(&mut rng)]),
                down_for: ms(&mut rng, 2000, 5000),
            },
            Scenario::RollingRestart => Cycle {
                wait: ms(&mut rng, 2000, 4000),
                disruption: Disruption::Terminate,
                target: Target::Nodes(vec![(n % nodes) as u64 + 1]),
                down_for: ms(&mut rng, 500, 1500),
            },
            Scenario::KillTwo => {
                let wait = ms(&mut rng, 2000, 5000);
                let mut pair: Vec<u64> = index::sample(&mut rng, nodes, 2.min(nodes))
                    .into_iter()
                    .map(|i| i as u64 + 1)
                    .collect();
                pair.sort_unstable();
                Cycle {
                    wait,
                    disruption: Disruption::Kill,
                    target: Target::Nodes(pair),
                    down_for: ms(&mut rng, 1500, 4000),
                }
            }
            Scenario::DockerKill => Cycle {
                wait: ms(&mut rng, 1500, 4000),
                disruption: Disruption::Kill,
                target: Target::Nodes(vec![random_node(&mut rng)]),
                down_for: ms(&mut rng, 1000, 3000),
            },
            Scenario::DockerPause => Cycle {
                wait: ms(&mut rng, 1500, 4000),
                disruption: Disruption::Freeze,
                target: Target::Nodes(vec![random_node(&mut rng)]),
                down_for: ms(&mut rng, 2000, 5000),
            },
            // Cut off for longer than the failure timeout (1 s) plus an election, so that the
            // majority marks the node down and moves its partitions while it still serves
            // clients on its side.
            Scenario::Partition => Cycle {
                wait: ms(&mut rng, 1500, 4000),
                disruption: Disruption::Isolate,
                target: Target::Nodes(vec![random_node(&mut rng)]),
                down_for: ms(&mut rng, 3000, 6000),
            },
            Scenario::PartitionLeader => Cycle {
                wait: ms(&mut rng, 1500, 4000),
                disruption: Disruption::Isolate,
                target: Target::Leader,
                down_for: ms(&mut rng, 3000, 6000),
            },
        };
        planned += cycle.wait + cycle.down_for + RECOVERY_ESTIMATE;
        if planned > duration && !cycles.is_empty() {
            break;
        }
        cycles.push(cycle);
    }
    cycles
}

/// Everything one scenario run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The scenario.
    pub scenario: Scenario,
    /// Seed of the fault schedule and the workload.
    pub seed: u64,
    /// How long the workload and faults run.
    pub duration: Duration,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Keys in the workload's key space.
    pub keys: usize,
    /// Concurrent workload clients.
    pub clients: u32,
    /// `cluster.replication` of the nodes.
    pub replication: u32,
    /// `cluster.write_quorum` of the nodes, passed only when set (nodes that do not know the
    /// setting refuse to start with it).
    pub write_quorum: Option<u32>,
    /// `cluster.failure_timeout_ms` of the nodes, passed only when set.
    pub failure_timeout_ms: Option<u64>,
    /// The `strata` binary.
    pub strata: PathBuf,
    /// Where the history, faults, summary and node logs go.
    pub out: PathBuf,
    /// Remarks about the setup, carried into the summary (e.g. a default setting the node
    /// did not know and that was left out).
    pub notes: Vec<String>,
    /// For a container scenario: the image and the compose file.
    pub containers: Option<ContainerConfig>,
}

impl RunConfig {
    /// The environment every node gets.
    pub fn node_env(&self) -> Vec<(String, String)> {
        let mut env = vec![(
            "STRATA_CLUSTER__REPLICATION".to_owned(),
            self.replication.to_string(),
        )];
        if let Some(w) = self.write_quorum {
            env.push(("STRATA_CLUSTER__WRITE_QUORUM".to_owned(), w.to_string()));
        }
        if let Some(ms) = self.failure_timeout_ms {
            env.push((
                "STRATA_CLUSTER__FAILURE_TIMEOUT_MS".to_owned(),
                ms.to_string(),
            ));
        }
        env
    }
}

/// Whether the `strata` binary's nodes know `cluster.write_quorum` (see
/// [`crate::cluster::node_accepts`]).
pub async fn node_knows_write_quorum(strata: &std::path::Path) -> Result<bool> {
    crate::cluster::node_accepts(strata, "STRATA_CLUSTER__WRITE_QUORUM", "1").await
}

/// Records faults against the run clock.
struct FaultLog {
    clock: RunClock,
    faults: Vec<Fault>,
    /// The writes made through isolated nodes ([`workload::minority_writes`]).
    minority_ops: Vec<crate::history::Op>,
}

impl FaultLog {
    fn record(&mut self, cycle: u32, node: u64, action: FaultAction, note: Option<&str>) {
        let fault = Fault {
            cycle,
            at_us: self.clock.now_us(),
            node,
            action,
            note: note.map(str::to_owned),
        };
        println!(
            "  [{:>7.2}s] cycle {cycle}: {:?} node {node}{}",
            fault.at_us as f64 / 1e6,
            action,
            note.map(|n| format!(" ({n})")).unwrap_or_default()
        );
        self.faults.push(fault);
    }
}

/// Runs one scenario end to end (see the module docs) and returns its summary, also written
/// to `OUT/summary.json`. An error means the run could not be carried out (the cluster did
/// not start, files could not be written); violations are in the summary.
pub async fn run(config: &RunConfig) -> Result<ScenarioSummary> {
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("creating {}", config.out.display()))?;
    println!(
        "== {} seed {} for {:?}: {} nodes, R={}, W={}, {} clients, {} keys; output in {}",
        config.scenario.name(),
        config.seed,
        config.duration,
        config.nodes,
        config.replication,
        config
            .write_quorum
            .map_or_else(|| "node default".to_owned(), |w| w.to_string()),
        config.clients,
        config.keys,
        config.out.display()
    );
    let cluster_config = ClusterConfig {
        strata: config.strata.clone(),
        nodes: config.nodes,
        env: config.node_env(),
        log_dir: config.out.join("logs"),
    };
    let mut cluster = match (&config.containers, config.scenario.in_containers()) {
        (Some(containers), true) => {
            Cluster::start_containers(cluster_config, containers, SETTLE_TIMEOUT).await
        }
        (None, true) => Err(anyhow::anyhow!(
            "{} runs on containers and needs an image and a compose file",
            config.scenario.name()
        )),
        _ => Cluster::start(cluster_config, SETTLE_TIMEOUT).await,
    }
    .context("starting the cluster")?;
    let addrs = cluster.addrs();
    let clock = RunClock::start();
    let workload_config = WorkloadConfig {
        clients: config.clients,
        keys: config.keys,
        seed: config.seed,
        op_timeout: workload::OP_TIMEOUT,
    };
    let workload = Workload::start(&workload_config, &addrs, cluster.certs(), clock).await?;

    let schedule = plan(config.scenario, config.seed, config.duration, config.nodes);
    let mut log = FaultLog {
        clock,
        faults: Vec::new(),
        minority_ops: Vec::new(),
    };
    let mut notes = config.notes.clone();
    let deadline = Instant::now() + config.duration;
    let mut cycles_run = 0;
    if let Err(e) = play(
        &schedule,
        &mut cluster,
        &mut log,
        &mut notes,
        deadline,
        &mut cycles_run,
        config.keys,
    )
    .await
    {
        notes.push(format!("the fault schedule stopped early: {e:#}"));
    }
    if Instant::now() < deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
    let mut ops = workload.stop().await?;
    if !log.minority_ops.is_empty() {
        ops.append(&mut log.minority_ops);
        ops.sort_by_key(|op| (op.start_us, op.client));
    }
    let workload_end_us = clock.now_us();

    // Heal and let the cluster become quiet.
    let heal_cycle = u32::try_from(schedule.len()).unwrap_or(u32::MAX);
    match cluster.heal().await {
        Ok(done) => {
            for (node, thawed) in done {
                let action = if thawed {
                    FaultAction::Cont
                } else {
                    FaultAction::Restart
                };
                log.record(heal_cycle, node, action, Some("heal"));
            }
        }
        Err(e) => notes.push(format!("healing failed: {e:#}")),
    }
    let mut quiet = true;
    if let Err(e) = cluster.wait_settled(SETTLE_TIMEOUT).await {
        notes.push(format!("not quiet: {e:#}"));
        quiet = false;
    }
    if let Err(e) = cluster.wait_serving(SETTLE_TIMEOUT).await {
        notes.push(format!("not quiet: {e:#}"));
        quiet = false;
    }
    tokio::time::sleep(QUIET_PAUSE).await;
    let final_reads = workload::final_reads(
        &addrs,
        cluster.certs(),
        config.keys,
        config.clients,
        workload::OP_TIMEOUT,
        clock,
    )
    .await;
    match final_reads {
        Ok(reads) => ops.extend(reads),
        Err(e) => notes.push(format!("final reads failed: {e:#}")),
    }
    drop(cluster);

    history::write_jsonl(&config.out.join("history.jsonl"), &ops)?;
    history::write_jsonl(&config.out.join("faults.jsonl"), &log.faults)?;
    let facts = RunFacts {
        ops,
        faults: log.faults,
        workload_end_us,
        cycles_run,
        quiet,
        notes,
    };
    let summary = ScenarioSummary::new(Setup::of(config), &facts);
    summary.write(&config.out.join("summary.json"))?;
    Ok(summary)
}

/// Plays `schedule` until `deadline`, counting the cycles completed in `ran`.
/// Longest wait for the cluster to recover from one fault before the next.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the keys of a failed node are probed for.
const PROBE_WITHIN: Duration = Duration::from_secs(30);
/// Bound on preparing a probe (connecting, warming its client) before a fault.
const PROBE_PREPARE: Duration = Duration::from_secs(10);
/// A fault after which the ring has not changed counts as recovered after this long.
const QUIET_RECOVERY: Duration = Duration::from_secs(5);

async fn play(
    schedule: &[Cycle],
    cluster: &mut Cluster,
    log: &mut FaultLog,
    notes: &mut Vec<String>,
    deadline: Instant,
    ran: &mut usize,
    keys: usize,
) -> Result<()> {
    let mut epoch_before = 0;
    let mut probes = Vec::new();
    let mut minority = Vec::new();
    for (n, cycle) in schedule.iter().enumerate() {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if Instant::now() + cycle.wait >= deadline {
            break;
        }
        // One failure at a time: the next fault comes only once the cluster has recovered
        // from the last one (every member active, nothing moving).
        if n > 0 {
            let since = Instant::now();
            match cluster
                .wait_recovered(epoch_before, RECOVERY_TIMEOUT, QUIET_RECOVERY)
                .await
            {
                Ok(_) => notes.push(format!(
                    "cycle {}: recovered {:.1} s after the restart",
                    n - 1,
                    since.elapsed().as_secs_f64()
                )),
                Err(e) => notes.push(format!("cycle {}: did not recover: {e}", n - 1)),
            }
            if Instant::now() + cycle.wait >= deadline {
                break;
            }
        }
        tokio::time::sleep(cycle.wait).await;
        let ring_before = cluster
            .rings()
            .await
            .into_iter()
            .max_by_key(|(_, r)| r.epoch)
            .map(|(_, r)| r);
        epoch_before = ring_before.as_ref().map_or(0, |r| r.epoch);
        let (targets, note) = match &cycle.target {
            Target::Nodes(ids) => (ids.clone(), None),
            Target::Leader => match cluster.leader(LEADER_TIMEOUT).await {
                Some(leader) => (vec![leader], Some("raft leader")),
                None => {
                    notes.push(format!("cycle {n}: no Raft leader known; skipped"));
                    continue;
                }
            },
        };
        let owned: Vec<String> = match (&ring_before, cycle.disruption) {
            (Some(ring), Disruption::Kill | Disruption::Freeze | Disruption::Isolate) => (0..keys)
                .map(workload::key_name)
                .filter(|k| {
                    ring.owner_of(workload::NAMESPACE, k)
                        .is_some_and(|o| targets.contains(&o.0))
                })
                .collect(),
            _ => Vec::new(),
        };
        // Writes are probed on keys of their own namespace that the failed nodes own.
        let probe_writes: Vec<String> = match &ring_before {
            Some(ring) if !owned.is_empty() => (0..100 * workload::PROBE_SAMPLE)
                .map(|i| format!("probe-{i}"))
                .filter(|k| {
                    ring.owner_of(workload::PROBE_NAMESPACE, k)
                        .is_some_and(|o| targets.contains(&o.0))
                })
                .take(workload::PROBE_SAMPLE)
                .collect(),
            _ => Vec::new(),
        };
        let probe = if owned.is_empty() {
            None
        } else {
            let (addrs, certs) = (cluster.addrs(), cluster.certs().to_path_buf());
            workload::Probe::prepare(&addrs, &certs, owned.clone(), probe_writes, PROBE_PREPARE)
                .await
        };
        let faulted = Instant::now();
        for &id in &targets {
            match cycle.disruption {
                Disruption::Kill => {
                    cluster.kill(id).await?;
                    log.record(n, id, FaultAction::Kill, note);
                }
                Disruption::Freeze => {
                    cluster.freeze(id).await?;
                    log.record(n, id, FaultAction::Stop, note);
                }
                Disruption::Isolate => {
                    cluster.isolate(id).await?;
                    log.record(n, id, FaultAction::Isolate, note);
                }
                Disruption::Terminate => {
                    log.record(n, id, FaultAction::Terminate, note);
                    if !cluster.terminate(id, TERMINATE_TIMEOUT).await? {
                        notes.push(format!(
                            "cycle {n}: node {id} ignored SIGTERM for {TERMINATE_TIMEOUT:?} and was killed"
                        ));
                    }
                }
            }
        }
        // The minority side: writes through the isolated node alone, to keys it owned.
        if cycle.disruption == Disruption::Isolate
            && let (Some(&id), Some(addr)) = (targets.first(), cluster.addr_of(targets[0]))
        {
            let certs = cluster.certs().to_path_buf();
            let keys = owned.clone();
            let client = workload::MINORITY_CLIENT + n;
            let clock = log.clock;
            minority.push((
                id,
                tokio::spawn(async move {
                    workload::minority_writes(addr, &certs, &keys, client, clock).await
                }),
            ));
        }
        if let Some(probe) = probe {
            let count = (probe.read_keys(), probe.write_keys());
            let run = tokio::spawn(probe.run(faulted, PROBE_WITHIN));
            probes.push((n, count, run));
        }
        tokio::time::sleep(cycle.down_for).await;
        // Reconnect only once the minority writes are done (they are bounded).
        for (id, probe) in minority.drain(..) {
            let ops = probe.await.unwrap_or_default();
            let acked = ops.iter().filter(|op| op.outcome.is_ok()).count();
            notes.push(format!(
                "cycle {n}: node {id} cut off: acknowledged {acked} of {} writes made through it alone",
                ops.len()
            ));
            log.minority_ops.extend(ops);
        }
        for &id in &targets {
            match cycle.disruption {
                Disruption::Freeze => {
                    cluster.thaw(id).await?;
                    log.record(n, id, FaultAction::Cont, None);
                }
                Disruption::Isolate => {
                    cluster.reconnect(id).await?;
                    log.record(n, id, FaultAction::Reconnect, None);
                }
                Disruption::Kill | Disruption::Terminate => {
                    cluster.restart(id).await?;
                    log.record(n, id, FaultAction::Restart, None);
                }
            }
        }
        *ran += 1;
    }
    // How soon the failed nodes' keys were served again (by their replicas).
    let (mut all_reads, mut all_writes) = (Vec::new(), Vec::new());
    for (n, (reads, writes), probe) in probes {
        let served = probe.await.unwrap_or_default();
        notes.push(format!(
            "cycle {n}: failed node's keys served again within {PROBE_WITHIN:?}: reads {}, writes {}",
            served_text(served.reads.clone(), reads),
            served_text(served.writes.clone(), writes),
        ));
        // What held the slowest keys up (a handful of distinct errors).
        let mut shown = std::collections::BTreeSet::new();
        for error in &served.errors {
            let text = error.split_once(": ").map_or(error.as_str(), |(_, e)| e);
            if shown.len() < 4 && shown.insert(text.to_owned()) {
                notes.push(format!("cycle {n}: probe failure: {error}"));
            }
        }
        all_reads.extend(served.reads);
        all_writes.extend(served.writes);
    }
    if !all_reads.is_empty() || !all_writes.is_empty() {
        let (r, w) = (all_reads.len(), all_writes.len());
        notes.push(format!(
            "time to serve a failed node's keys again, all cycles: reads {}, writes {}",
            served_text(all_reads, r),
            served_text(all_writes, w),
        ));
    }
    Ok(())
}

/// "p50 P ms, max M ms (K of N keys)" for the probe's times (ms).
fn served_text(mut times: Vec<f64>, probed: usize) -> String {
    times.sort_by(f64::total_cmp);
    match (times.get(times.len() / 2), times.last()) {
        (Some(p50), Some(max)) => format!(
            "p50 {p50:.0} ms, max {max:.0} ms ({} of {probed} keys)",
            times.len()
        ),
        _ => format!("none of {probed} keys"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_same_seed_replays_the_same_schedule() {
        for scenario in Scenario::ALL {
            let a = plan(scenario, 42, MINUTE, scenario.default_nodes());
            let b = plan(scenario, 42, MINUTE, scenario.default_nodes());
            assert_eq!(a, b, "{}", scenario.name());
            let c = plan(scenario, 43, MINUTE, scenario.default_nodes());
            assert_ne!(a, c, "{}: another seed, another schedule", scenario.name());
        }
    }

    #[test]
    fn schedules_fit_the_duration_and_name_real_nodes() {
        for scenario in Scenario::ALL {
            let nodes = scenario.default_nodes();
            let cycles = plan(scenario, 7, MINUTE, nodes);
            assert!(cycles.len() >= 5, "{}: {}", scenario.name(), cycles.len());
            let total: Duration = cycles.iter().map(|c| c.wait + c.down_for).sum();
            assert!(total <= MINUTE, "{}: {total:?}", scenario.name());
            for cycle in &cycles {
                if let Target::Nodes(ids) = &cycle.target {
                    assert!(!ids.is_empty());
                    assert!(ids.iter().all(|&id| (1..=nodes as u64).contains(&id)));
                    let mut distinct = ids.clone();
                    distinct.dedup();
                    assert_eq!(&distinct, ids, "distinct, in order");
                }
            }
        }
    }

    #[test]
    fn each_scenario_does_what_it_says() {
        let kill_two = plan(Scenario::KillTwo, 1, MINUTE, 5);
        assert!(
            kill_two
                .iter()
                .all(|c| matches!(&c.target, Target::Nodes(ids) if ids.len() == 2))
        );
        let rolling = plan(Scenario::RollingRestart, 1, MINUTE, 3);
        let order: Vec<Target> = rolling.iter().take(4).map(|c| c.target.clone()).collect();
        assert_eq!(
            order,
            [1, 2, 3, 1].map(|id| Target::Nodes(vec![id])),
            "every node in turn"
        );
        assert!(
            rolling
                .iter()
                .all(|c| c.disruption == Disruption::Terminate)
        );
        let leader = plan(Scenario::KillLeader, 1, MINUTE, 3);
        assert!(leader.iter().all(|c| c.target == Target::Leader));
        let freeze = plan(Scenario::Freeze, 1, MINUTE, 3);
        assert!(freeze.iter().all(|c| c.disruption == Disruption::Freeze));
    }

    #[test]
    fn a_short_duration_still_gets_one_cycle_and_a_long_one_is_bounded() {
        assert_eq!(plan(Scenario::KillRandom, 1, Duration::ZERO, 3).len(), 1);
        let long = plan(Scenario::KillRandom, 1, Duration::from_secs(10_000_000), 3);
        assert_eq!(long.len(), MAX_CYCLES);
    }

    #[test]
    fn the_long_profile_plans_at_least_twenty_kill_cycles() {
        for seed in 0..20 {
            let kills: usize = Profile::Long
                .scenarios()
                .into_iter()
                .map(|(scenario, duration)| {
                    plan(scenario, seed, duration, scenario.default_nodes())
                        .iter()
                        .filter(|c| c.disruption == Disruption::Kill)
                        .count()
                })
                .sum();
            assert!(kills >= 40, "seed {seed}: {kills} kill cycles planned");
        }
        let short: Duration = Profile::Short.scenarios().iter().map(|s| s.1).sum();
        assert!(short <= Duration::from_secs(120), "{short:?}");
    }

    #[test]
    fn scenario_names_round_trip() {
        for scenario in Scenario::ALL {
            assert_eq!(Scenario::from_name(scenario.name()), Some(scenario));
        }
        assert_eq!(Scenario::from_name("kill-everything"), None);
    }
}
