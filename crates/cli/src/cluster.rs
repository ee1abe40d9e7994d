//! The commands that talk to a running cluster: `get`, `set`, `del`, `keys`, `clear`,
//! `stats`, `members`, `ring`, `leave` (and the connection options `bench` shares).
//!
//! Keyed commands go to the key's owner through the client's ring; `keys`, `clear` and
//! `stats` reach every member (`stats` shows each node and their sum); `members` and `ring`
//! show the ring freshly fetched; `leave` asks the cluster to remove a member and waits for
//! its partitions to be handed off.
//!
//! They follow the CLI contract of the design: the cluster is found through `--addr` (or
//! `STRATA_ADDR`; any member will do), certificates through `--certs` (or `STRATA_CERTS`),
//! the namespace through `--namespace` (or `STRATA_NAMESPACE`, default `default`). Output is
//! for people unless `--json` is given. `get` of a missing key prints nothing and exits 1, as
//! does `del` of a missing key; errors go to stderr and exit 2. Arguments are checked before
//! anything is sent, so a bad key fails the same way with or without a reachable cluster.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use strata_client::{Client, ClientConfig};
use strata_proto::{Key, Namespace, NodeId, Ring, Value};

use crate::input::read_value;
use crate::output::{print_cluster_stats, print_keys, print_members, print_ring, write_payload};

/// How to reach the cluster, shared by every cluster command.
#[derive(Args, Clone, Debug)]
pub(crate) struct Target {
    /// Any node of the cluster, as HOST:PORT.
    #[arg(long, env = "STRATA_ADDR", value_name = "HOST:PORT")]
    pub(crate) addr: String,
    /// Directory with ca.pem, client.pem and client.key (from `strata certs init`).
    #[arg(
        long,
        env = "STRATA_CERTS",
        value_name = "DIR",
        default_value = "./strata-data/certs"
    )]
    pub(crate) certs: PathBuf,
    /// Namespace of the keys.
    #[arg(long, env = "STRATA_NAMESPACE", default_value = Namespace::DEFAULT)]
    pub(crate) namespace: String,
    /// Machine-readable output.
    #[arg(long)]
    pub(crate) json: bool,
}

impl Target {
    /// The namespace, validated.
    pub(crate) fn namespace(&self) -> Result<Namespace> {
        Ok(Namespace::new(&self.namespace)?)
    }

    /// The client configuration for this target.
    pub(crate) fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.addr.clone(), &self.certs)
    }

    /// Connects to the cluster.
    pub(crate) async fn connect(&self) -> Result<Client> {
        // The client's errors name the address already.
        Ok(Client::connect(self.client_config()).await?)
    }
}

/// `strata get KEY [--out PATH]`.
#[derive(Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    target: Target,
    /// The key to read.
    key: String,
    /// Write the value to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `strata set KEY [VALUE] [--file PATH] [--ttl SECS]`.
#[derive(Args)]
pub(crate) struct SetArgs {
    #[command(flatten)]
    target: Target,
    /// The key to write.
    key: String,
    /// The value; read from --file or stdin if not given.
    value: Option<String>,
    /// Read the value from this file.
    #[arg(long, conflicts_with = "value")]
    file: Option<PathBuf>,
    /// Time to live in seconds (no expiry if not given).
    #[arg(long, value_name = "SECS")]
    ttl: Option<u64>,
}

/// `strata del KEY`.
#[derive(Args)]
pub(crate) struct DelArgs {
    #[command(flatten)]
    target: Target,
    /// The key to delete.
    key: String,
}

/// `strata keys [PATTERN] [--meta]`.
#[derive(Args)]
pub(crate) struct KeysArgs {
    #[command(flatten)]
    target: Target,
    /// Glob pattern over keys (all keys if not given).
    pattern: Option<String>,
    /// Show each key's metadata.
    #[arg(long)]
    meta: bool,
}

/// `strata clear PATTERN`.
#[derive(Args)]
pub(crate) struct ClearArgs {
    #[command(flatten)]
    target: Target,
    /// Glob pattern over keys; `*` clears the whole namespace.
    pattern: String,
}

/// `strata stats`.
#[derive(Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    target: Target,
}

/// `strata ping`.
#[derive(Args)]
pub(crate) struct PingArgs {
    #[command(flatten)]
    target: Target,
}

/// `strata members`.
#[derive(Args)]
pub(crate) struct MembersArgs {
    #[command(flatten)]
    target: Target,
}

/// `strata ring [--table]`.
#[derive(Args)]
pub(crate) struct RingArgs {
    #[command(flatten)]
    target: Target,
    /// Also show every partition's replica set (owner first).
    #[arg(long)]
    table: bool,
}

/// `strata leave [--node ID] [--timeout SECS]`.
#[derive(Args)]
pub(crate) struct LeaveArgs {
    #[command(flatten)]
    target: Target,
    /// The member to remove (default: the node at --addr).
    #[arg(long, value_name = "ID")]
    node: Option<u64>,
    /// How long to wait for the hand-off before giving up (exit 2); the hand-off goes on.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout: u64,
}

/// How often `leave` looks at the ring while it waits.
const LEAVE_POLL: Duration = Duration::from_millis(200);

/// Runs `future` on a fresh multi-threaded runtime.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(future))
}

/// Connects, runs `op` with the client, and closes the connection politely.
async fn with_client<T, F, Fut>(target: &Target, op: F) -> Result<T>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let client = target.connect().await?;
    let result = op(client.clone()).await;
    client.close().await;
    result
}

pub(crate) fn get(args: GetArgs) -> Result<ExitCode> {
    let ns = args.target.namespace()?;
    let key = Key::new(&args.key)?;
    let entry = block_on(with_client(&args.target, |client| async move {
        Ok(client.get(&ns, &key).await?)
    }))??;
    let Some(entry) = entry else {
        return Ok(ExitCode::from(1));
    };
    if args.target.json {
        let text = match &entry.value {
            Value::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_owned),
            Value::Record(r) => std::str::from_utf8(r.json()).ok().map(str::to_owned),
            _ => None,
        };
        if let Some(path) = &args.out {
            write_payload(&entry.value, Some(path))?;
        }
        let json = serde_json::json!({
            "namespace": args.target.namespace,
            "key": args.key,
            "meta": entry.meta,
            "value": if args.out.is_some() { None } else { text },
            "out": args.out,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        write_payload(&entry.value, args.out.as_deref())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn set(args: SetArgs) -> Result<ExitCode> {
    let ns = args.target.namespace()?;
    let key = Key::new(&args.key)?;
    let bytes = read_value(args.value, args.file.as_deref())?;
    let len = bytes.len();
    let ttl = args.ttl.map(Duration::from_secs);
    block_on(with_client(&args.target, |client| async move {
        Ok(client.set(&ns, &key, Value::from(bytes), ttl).await?)
    }))??;
    if args.target.json {
        println!(
            "{}",
            serde_json::json!({"key": args.key, "stored": true, "size_bytes": len, "ttl_secs": args.ttl})
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn del(args: DelArgs) -> Result<ExitCode> {
    let ns = args.target.namespace()?;
    let key = Key::new(&args.key)?;
    let deleted = block_on(with_client(&args.target, |client| async move {
        Ok(client.delete(&ns, &key).await?)
    }))??;
    if args.target.json {
        println!(
            "{}",
            serde_json::json!({"key": args.key, "deleted": deleted})
        );
    }
    Ok(if deleted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(crate) fn keys(args: KeysArgs) -> Result<ExitCode> {
    let ns = args.target.namespace()?;
    let with_meta = args.meta || args.target.json;
    let pattern = args.pattern.clone();
    let keys = block_on(with_client(&args.target, |client| async move {
        Ok(client.list_keys(&ns, pattern.as_deref(), with_meta).await?)
    }))??;
    print_keys(&keys, args.target.json)?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn clear(args: ClearArgs) -> Result<ExitCode> {
    let ns = args.target.namespace()?;
    let pattern = args.pattern.clone();
    let removed = block_on(with_client(&args.target, |client| async move {
        Ok(client.clear(&ns, Some(&pattern)).await?)
    }))??;
    if args.target.json {
        println!("{}", serde_json::json!({ "cleared": removed }));
    } else {
        println!("cleared {removed}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn stats(args: StatsArgs) -> Result<ExitCode> {
    let stats = block_on(with_client(&args.target, |client| async move {
        Ok(client.cluster_stats().await?)
    }))??;
    print_cluster_stats(&stats, args.target.json)?;
    Ok(ExitCode::SUCCESS)
}

/// Asks the node at `--addr` to answer over QUIC with mutual TLS; prints its id. A
/// container's health check: it needs nothing but the `strata` binary and the certificates.
pub(crate) fn ping(args: PingArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let node = block_on(with_client(&args.target, |client| async move {
        Ok(client.ping().await?)
    }))??;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if args.target.json {
        println!("{}", serde_json::json!({ "node": node.0, "ms": ms }));
    } else {
        println!("node {} answered in {ms:.1} ms", node.0);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn members(args: MembersArgs) -> Result<ExitCode> {
    let ring = block_on(with_client(&args.target, |client| async move {
        Ok(client.refresh_ring().await?)
    }))??;
    print_members(&ring, args.target.json)?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn ring(args: RingArgs) -> Result<ExitCode> {
    let ring = block_on(with_client(&args.target, |client| async move {
        Ok(client.refresh_ring().await?)
    }))??;
    print_ring(&ring, args.table, args.target.json)?;
    Ok(ExitCode::SUCCESS)
}

/// Partitions whose replica set includes `node`.
fn held_by(ring: &Ring, node: NodeId) -> u64 {
    (0..ring.params.partitions)
        .filter(|&p| ring.table.replicas(p).contains(&node))
        .count() as u64
}

pub(crate) fn leave(args: LeaveArgs) -> Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout);
    let json = args.target.json;
    let requested = args.node.map(NodeId);
    let outcome = block_on(with_client(&args.target, |client| async move {
        let node = match requested {
            Some(node) => node,
            None => client
                .ping()
                .await
                .context("asking the node at --addr for its id")?,
        };
        let ring = client.refresh_ring().await?;
        anyhow::ensure!(
            ring.epoch > 0,
            "the node at --addr is not part of a cluster (it runs standalone): there is nothing to leave"
        );
        anyhow::ensure!(
            ring.member(node).is_some(),
            "node {node} is not a member of the cluster (epoch {}; see `strata members`)",
            ring.epoch
        );
        let ring = client
            .leave(node)
            .await
            .with_context(|| format!("asking the cluster to remove node {node}"))?;
        Ok((
            node,
            wait_until_gone(&client, node, std::sync::Arc::new(ring), timeout).await?,
        ))
    }))??;
    let (node, gone) = outcome;
    match gone {
        Gone::Yes { epoch } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"node": node.0, "left": true, "epoch": epoch})
                );
            } else {
                println!("node {node} has left the cluster (epoch {epoch})");
            }
            Ok(ExitCode::SUCCESS)
        }
        Gone::NotYet { held, moving } => {
            eprintln!(
                "strata: node {node} is still a member after {}s ({held} partitions still on it, {moving} moving); the hand-off goes on in the background (see `strata members`, or run `strata leave` again with a longer --timeout)",
                args.timeout
            );
            Ok(ExitCode::from(2))
        }
    }
}

/// How waiting for a member to leave ended.
enum Gone {
    /// It is no longer in the ring at `epoch`.
    Yes { epoch: u64 },
    /// The wait timed out with `held` partitions still on it and `moving` in transfer.
    NotYet { held: u64, moving: u32 },
}

/// Polls the ring until `node` is no longer a member or `timeout` passes, showing the
/// partitions still on it (a progress bar on a terminal, a line a second otherwise).
async fn wait_until_gone(
    client: &Client,
    node: NodeId,
    mut ring: std::sync::Arc<Ring>,
    timeout: Duration,
) -> Result<Gone> {
    if ring.member(node).is_none() {
        return Ok(Gone::Yes { epoch: ring.epoch });
    }
    let started = Instant::now();
    let initial = held_by(&ring, node).max(1);
    let terminal = std::io::stderr().is_terminal();
    let bar = ProgressBar::with_draw_target(Some(initial), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("leaving {bar:40} {pos}/{len} partitions handed off  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    if !terminal {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let mut last_line = Instant::now();
    loop {
        let held = held_by(&ring, node);
        bar.set_position(initial.saturating_sub(held));
        bar.set_message(format!("{} moving, epoch {}", ring.moving, ring.epoch));
        if !terminal && last_line.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "leaving: node {node} still holds {held} partitions, {} moving (epoch {})",
                ring.moving, ring.epoch
            );
            last_line = Instant::now();
        }
        if started.elapsed() >= timeout {
            bar.abandon();
            return Ok(Gone::NotYet {
                held,
                moving: ring.moving,
            });
        }
        tokio::time::sleep(LEAVE_POLL).await;
        // A poll that fails (the leaving node may have shut down, a leader change) is
        // retried at the next tick; the timeout bounds the wait.
        match client.refresh_ring().await {
            Ok(fresh) => ring = fresh,
            Err(e) => tracing::debug!(error = %e, "polling the ring failed"),
        }
        if ring.member(node).is_none() {
            bar.finish_and_clear();
            return Ok(Gone::Yes { epoch: ring.epoch });
        }
    }
}
