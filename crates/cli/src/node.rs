//! `strata node` (run one node until SIGINT/SIGTERM) and `strata certs init` (development
//! certificates).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use strata_node::config::Config;
use strata_node::server::RunningNode;

/// Arguments of `strata node`.
#[derive(Args)]
pub(crate) struct NodeArgs {
    /// Configuration file (see config/node.toml); defaults apply without one.
    #[arg(long, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides the file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// QUIC listen address (overrides the file); port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin HTTP address (overrides the file).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Certificates directory with ca.pem, node.pem, node.key (overrides the file).
    #[arg(long)]
    certs: Option<PathBuf>,
}

/// Runs one node in the foreground until SIGINT or SIGTERM, then stops it gracefully.
pub(crate) fn run(args: NodeArgs) -> Result<ExitCode> {
    let mut config = Config::load(args.config.as_deref()).context("loading the configuration")?;
    config.apply_overrides(args.listen, args.data_dir, args.certs);
    if let Some(admin) = args.admin {
        config.admin = admin;
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let node = RunningNode::start(config).await?;
        // Tests and scripts read this line to learn the port.
        println!("strata node listening on {}", node.local_addr());
        wait_for_signal().await?;
        node.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// `strata certs …`.
#[derive(Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a development CA, a node certificate and a client certificate.
    Init {
        /// Directory to write ca.pem, ca.key, node.pem, node.key, client.pem, client.key.
        #[arg(long, default_value = "./strata-data/certs")]
        out: PathBuf,
        /// Extra DNS names or IP addresses for the node certificate (localhost, 127.0.0.1,
        /// ::1 and strata-node are always included).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
}

/// Runs `strata certs …`.
pub(crate) fn certs(command: CertsCommand) -> Result<ExitCode> {
    match command {
        CertsCommand::Init { out, names, force } => {
            let paths = strata_node::certs::init(&out, &names, force)?;
            println!("wrote development certificates to {}", paths.dir.display());
            println!(
                "  CA: {}   node: {}   client: {}",
                paths.ca.display(),
                paths.node_cert.display(),
                paths.client_cert.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
