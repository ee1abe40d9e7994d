//! `strata`: the command-line entry point.
//!
//! - `strata get|set|del|keys|clear|stats|ping|members|ring|leave` talk to a running cluster
//!   through the client library (`--addr`, `--certs`, `--namespace`, `--json`; see
//!   [`cluster`]).
//! - `strata top` is a live per-node view of the cluster, from every member's `/metrics`
//!   (see [`top`]).
//! - `strata bench` drives a cluster with load and reports throughput and latency
//!   percentiles (see [`bench`]).
//! - `strata node` runs one node; `strata certs init` makes development certificates (see
//!   [`node`]).
//! - `strata up` runs a local cluster of `strata node` processes in the foreground (see
//!   [`up`]).
//! - `strata local …` works directly on a node's data directory with the same verbs (see
//!   [`local`]).
//!
//! Every command follows the CLI contract: `get` of a missing key prints nothing and exits
//! 1 (so does `del` of a missing key); errors go to stderr and exit 2. Logs go to stderr,
//! filtered by `STRATA_LOG` (or `RUST_LOG`), warnings only by default; `STRATA_LOG_FORMAT=json`
//! writes them as JSON lines. With `STRATA_OTLP_ENDPOINT` set, the client's request spans are
//! exported there (OTLP/HTTP) and the nodes' spans join their traces. `strata node` takes
//! the same settings from its configuration (`log_format`, `otlp_endpoint`).
//!
//! # Layout
//! - `cluster`: the cluster commands and their shared connection options.
//! - `bench`: the load generator.
//! - `top`: the live view.
//! - `local`: the data-directory commands.
//! - `node`: running a node, and certificates.
//! - `up`: a local cluster of child processes.
//! - `input`, `output`: where values come from; how results are printed.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata_node::telemetry::{self, LogFormat, TelemetryConfig};

mod bench;
mod cluster;
mod input;
mod local;
mod node;
mod output;
mod top;
mod up;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: a distributed, tiered cache for fleets of AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the value stored under a key; exit 1 if the key is missing.
    Get(cluster::GetArgs),
    /// Store a value (from the argument, --file, or stdin).
    Set(cluster::SetArgs),
    /// Delete a key; exit 1 if it was missing.
    Del(cluster::DelArgs),
    /// List keys matching a glob pattern.
    Keys(cluster::KeysArgs),
    /// Delete every key matching a glob pattern.
    Clear(cluster::ClearArgs),
    /// Counters and sizes of every node, and their sum.
    Stats(cluster::StatsArgs),
    /// Check that the node at --addr answers (exit 0) and print its id; exit 2 if not.
    Ping(cluster::PingArgs),
    /// Live view of the cluster, refreshed every second: ops/s, hit rate, p99, bytes per node.
    Top(top::TopArgs),
    /// The cluster's members: addresses, state, leader, partitions owned.
    Members(cluster::MembersArgs),
    /// The ring: epoch, parameters, partitions per member, hand-offs in progress.
    Ring(cluster::RingArgs),
    /// Remove a member from the cluster and wait until its partitions are handed off.
    Leave(cluster::LeaveArgs),
    /// Load-test a cluster: throughput and latency percentiles.
    Bench(bench::BenchArgs),
    /// Work directly on a data directory (no node running on it).
    Local(local::Local),
    /// Run one node in the foreground (until SIGINT or SIGTERM).
    Node(node::NodeArgs),
    /// Development certificates.
    #[command(subcommand)]
    Certs(node::CertsCommand),
    /// Run a local cluster of N nodes on 127.0.0.1 in the foreground (until Ctrl-C).
    Up(up::UpArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node sets up its logs and traces from its configuration.
    let _telemetry = match &cli.command {
        Command::Node(_) => None,
        _ => init_telemetry(),
    };
    let result = match cli.command {
        Command::Get(args) => cluster::get(args),
        Command::Set(args) => cluster::set(args),
        Command::Del(args) => cluster::del(args),
        Command::Keys(args) => cluster::keys(args),
        Command::Clear(args) => cluster::clear(args),
        Command::Stats(args) => cluster::stats(args),
        Command::Ping(args) => cluster::ping(args),
        Command::Top(args) => top::run(args),
        Command::Members(args) => cluster::members(args),
        Command::Ring(args) => cluster::ring(args),
        Command::Leave(args) => cluster::leave(args),
        Command::Bench(args) => bench::run(args),
        Command::Local(local) => local::run(local),
        Command::Node(args) => node::run(args),
        Command::Certs(command) => node::certs(command),
        Command::Up(args) => up::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr, filtered by `STRATA_LOG`, else `RUST_LOG`, else warnings only, as text or
/// (`STRATA_LOG_FORMAT=json`) JSON; spans to `STRATA_OTLP_ENDPOINT` if set.
fn init_telemetry() -> Option<telemetry::TelemetryGuard> {
    let log_format = match std::env::var("STRATA_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    let config = TelemetryConfig {
        service_name: "strata".into(),
        instance: None,
        log_format,
        default_filter: "warn".into(),
        otlp_endpoint: std::env::var("STRATA_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty()),
    };
    match telemetry::init(&config) {
        Ok(guard) => Some(guard),
        Err(e) => {
            eprintln!("strata: traces are off: {e:#}");
            None
        }
    }
}
