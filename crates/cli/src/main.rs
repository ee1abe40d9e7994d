//! `strata`: the command-line entry point.
//!
//! Today it offers `strata local …`, which works directly on a node's data directory (a
//! memory tier over the filesystem tier, as a node stacks them) with the same verbs and exit
//! codes as the cluster commands of the CLI contract: `get` of a missing key prints nothing
//! and exits 1; errors go to stderr and exit 2. The node and cluster commands build on the
//! same shape.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use strata_proto::{EntryKey, Key, Namespace, Value};
use strata_store::{
    FsConfig, FsTier, MemoryConfig, MemoryTier, Pattern, SetPolicy, Tier, Tiered, system_clock,
};

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
    /// Work directly on a data directory (no node running on it).
    Local(Local),
}

#[derive(Args)]
struct Local {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Local(local) => run_local(local),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_local(local: Local) -> Result<ExitCode> {
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
            let bytes = match (value, file) {
                (Some(v), None) => v.into_bytes(),
                (None, Some(path)) => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
                (None, None) => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf)?;
                    buf
                }
                (Some(_), Some(_)) => anyhow::bail!("give a VALUE or --file, not both"),
            };
            store.set(&key(&k)?, Value::from(bytes), ttl.map(Duration::from_secs))?;
        }
        LocalOp::Get { key: k, out } => {
            let Some(entry) = store.get(&key(&k)?)? else {
                return Ok(ExitCode::from(1));
            };
            let payload = strata_proto::encode_payload(&entry.value).to_bytes();
            match out {
                Some(path) => std::fs::write(&path, &payload)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().write_all(&payload)?,
            }
        }
        LocalOp::Del { key: k } => {
            if !store.delete(&key(&k)?)? {
                return Ok(ExitCode::from(1));
            }
        }
        LocalOp::Keys { pattern, meta } => {
            let pattern = pattern.as_deref().map(Pattern::new).transpose()?;
            let keys = store.list_keys(&namespace, pattern.as_ref(), meta || local.json)?;
            if local.json {
                let rows: Vec<_> = keys
                    .iter()
                    .map(|(k, m)| serde_json::json!({"key": k, "meta": m}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for (k, m) in keys {
                    match m {
                        Some(m) => println!(
                            "{k}\t{} bytes\t{}\tversion {}",
                            m.size_bytes,
                            m.format.name(),
                            m.version
                        ),
                        None => println!("{k}"),
                    }
                }
            }
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
            if local.json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                let m = &stats.manager;
                println!(
                    "entries {}  size {} bytes  hit rate {:.2}",
                    m.total_files, m.size_bytes, m.hit_rate
                );
                for (name, t) in &stats.tiers {
                    println!(
                        "{name:<12} entries {:<8} bytes {:<12} evictions {:<6} expired {:<6} corrupt {}",
                        t.entries, t.size_bytes, t.evictions, t.expired, t.corrupt
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
