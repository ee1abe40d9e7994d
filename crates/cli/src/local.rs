//! `strata local`: work directly on a node's data directory, with no node running on it.
//!
//! The store is stacked as a node stacks it (a memory tier over the filesystem tier), and the
//! verbs, output and exit codes are those of the cluster commands: `get` of a missing key
//! prints nothing and exits 1; errors go to stderr and exit 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::input::read_value;
use crate::output::{print_keys, print_stats, write_payload};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use strata_proto::{EntryKey, Key, Namespace, Value};
use strata_store::{
    FsConfig, FsTier, MemoryConfig, MemoryTier, Pattern, SetPolicy, Tier, Tiered, system_clock,
};

/// `strata local`: the data directory and namespace to work on, and the operation.
#[derive(Args)]
pub(crate) struct Local {
    /// The filesystem tier's directory.
    #[arg(long, env = "STRATA_DATA_DIR", default_value = "./strata-data/cache")]
    dir: PathBuf,
    /// Namespace of the keys.
    #[arg(long, env = "STRATA_NAMESPACE", default_value = Namespace::DEFAULT)]
    namespace: String,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    op: LocalOp,
}

#[derive(Subcommand)]
enum LocalOp {
    /// Store a value (from the argument, --file, or stdin).
    Set {
        key: String,
        value: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
        /// Time to live in seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Print a value; exit 1 if the key is missing.
    Get {
        key: String,
        /// Write the value to a file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Delete a key; exit 1 if it was missing.
    Del { key: String },
    /// List keys matching a glob pattern.
    Keys {
        pattern: Option<String>,
        /// Show each key's metadata.
        #[arg(long)]
        meta: bool,
    },
    /// Delete every key matching a glob pattern.
    Clear { pattern: String },
    /// Counters and sizes.
    Stats,
}

/// Runs one `strata local` command.
pub(crate) fn run(local: Local) -> Result<ExitCode> {
    let clock = system_clock();
    let mut config = FsConfig::new(&local.dir);
    config.cleanup_interval_secs = 0;
    let fs = FsTier::open(config, clock.clone())
        .with_context(|| format!("opening {}", local.dir.display()))?;
    // Listing needs the startup scan; single-key commands do not wait for it.
    let memory = MemoryTier::new(MemoryConfig::default(), clock.clone());
    let store = Tiered::new(
        vec![Arc::new(memory), Arc::new(fs.clone())],
        SetPolicy::All,
        clock,
    )?;
    let namespace = Namespace::new(&local.namespace)?;
    let key = |k: &str| -> Result<EntryKey> { Ok(EntryKey::new(namespace.clone(), Key::new(k)?)) };
    match local.op {
        LocalOp::Set {
            key: k,
            value,
            file,
            ttl,
        } => {
            let bytes = read_value(value, file.as_deref())?;
            store.set(&key(&k)?, Value::from(bytes), ttl.map(Duration::from_secs))?;
        }
        LocalOp::Get { key: k, out } => {
            let Some(entry) = store.get(&key(&k)?)? else {
                return Ok(ExitCode::from(1));
            };
            write_payload(&entry.value, out.as_deref())?;
        }
        LocalOp::Del { key: k } => {
            if !store.delete(&key(&k)?)? {
                return Ok(ExitCode::from(1));
            }
        }
        LocalOp::Keys { pattern, meta } => {
            let pattern = pattern.as_deref().map(Pattern::new).transpose()?;
            let keys = store.list_keys(&namespace, pattern.as_ref(), meta || local.json)?;
            print_keys(&keys, local.json)?;
        }
        LocalOp::Clear { pattern } => {
            let removed = store.clear(&namespace, Some(&Pattern::new(&pattern)?))?;
            if local.json {
                println!("{}", serde_json::json!({ "cleared": removed }));
            } else {
                println!("cleared {removed}");
            }
        }
        LocalOp::Stats => {
            fs.wait_ready(Duration::from_secs(60));
            let stats = store.tiered_stats();
            print_stats(&serde_json::to_value(&stats)?, local.json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
