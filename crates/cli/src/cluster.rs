//! The commands that talk to a running cluster: `get`, `set`, `del`, `keys`, `clear`,
//! `stats` (and the connection options `bench` shares).
//!
//! They follow the CLI contract of the design: the cluster is found through `--addr` (or
//! `STRATA_ADDR`; any member will do), certificates through `--certs` (or `STRATA_CERTS`),
//! the namespace through `--namespace` (or `STRATA_NAMESPACE`, default `default`). Output is
//! for people unless `--json` is given. `get` of a missing key prints nothing and exits 1, as
//! does `del` of a missing key; errors go to stderr and exit 2. Arguments are checked before
//! anything is sent, so a bad key fails the same way with or without a reachable cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use strata_client::{Client, ClientConfig};
use strata_proto::{Key, Namespace, Value};

use crate::input::read_value;
use crate::output::{print_keys, print_stats, write_payload};

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
        Ok(client.stats().await?)
    }))??;
    print_stats(&stats, args.target.json)?;
    Ok(ExitCode::SUCCESS)
}
