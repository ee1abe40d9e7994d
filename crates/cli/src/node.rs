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
    /// This node's id in the cluster (overrides the file); unique per member.
    #[arg(long)]
    node_id: Option<u64>,
    /// Start a new cluster with this node as its first member.
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,
    /// Join the cluster through this member (HOST:PORT).
    #[arg(long, value_name = "ADDR")]
    join: Option<String>,
    /// HOST:PORT that peers and clients dial to reach this node (default: the listen address).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// HOST:PORT that clients outside the members' network dial instead (a port published on
    /// the host); see `cluster.advertise_client`.
    #[arg(long, value_name = "ADDR")]
    advertise_client: Option<String>,
    /// On SIGTERM/SIGINT, hand this node's partitions off and leave the cluster before exiting.
    #[arg(long)]
    leave_on_shutdown: bool,
}

/// Runs one node in the foreground until SIGINT or SIGTERM, then stops it gracefully.
pub(crate) fn run(args: NodeArgs) -> Result<ExitCode> {
    let mut config = Config::load(args.config.as_deref()).context("loading the configuration")?;
    config.apply_overrides(args.listen, args.data_dir, args.certs);
    if let Some(admin) = args.admin {
        config.admin = admin;
    }
    if let Some(id) = args.node_id {
        config.node_id = id;
    }
    if args.bootstrap {
        config.cluster.bootstrap = true;
        config.cluster.join = None;
    }
    if let Some(join) = args.join {
        config.cluster.join = Some(join);
        config.cluster.bootstrap = false;
    }
    if let Some(advertise) = args.advertise {
        config.cluster.advertise = Some(advertise);
    }
    if let Some(advertise) = args.advertise_client {
        config.cluster.advertise_client = Some(advertise);
    }
    if args.leave_on_shutdown {
        config.cluster.leave_on_shutdown = true;
    }
    config.validate().context("checking the configuration")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    // The batch span exporter runs on its own thread; it is set up inside the runtime only
    // because the OTLP client may look for one.
    let _telemetry = runtime
        .block_on(async {
            strata_node::telemetry::init(&strata_node::telemetry::TelemetryConfig {
                service_name: "strata-node".into(),
                instance: Some(config.node_id.to_string()),
                log_format: config.log_format,
                default_filter: "warn".into(),
                otlp_endpoint: config.otlp_endpoint.clone(),
            })
        })
        .context("setting up logs and traces")?;
    let leave_on_shutdown = config.cluster.leave_on_shutdown;
    runtime.block_on(async move {
        let node = RunningNode::start(config).await?;
        // Tests and scripts read these lines to learn the ports.
        println!("strata node listening on {}", node.local_addr());
        println!("strata node admin http on {}", node.admin_addr());
        let left = node.cluster().left();
        tokio::select! {
            signal = wait_for_signal() => {
                signal?;
                if leave_on_shutdown
                    && let Err(e) = node.leave(LEAVE_TIMEOUT).await
                {
                    tracing::error!(error = %e, "could not leave the cluster cleanly");
                }
            }
            _ = left.cancelled() => tracing::info!("left the cluster; stopping"),
        }
        node.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// How long a node stopped with `leave_on_shutdown` waits for its hand-off.
const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

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
        #[arg(long, conflicts_with = "if_missing")]
        force: bool,
        /// If the directory already holds a CA, keep every file as it is and exit 0: for an
        /// init step that runs at every start (docker-compose.yml).
        #[arg(long)]
        if_missing: bool,
    },
}

/// Runs `strata certs …`.
pub(crate) fn certs(command: CertsCommand) -> Result<ExitCode> {
    match command {
        CertsCommand::Init {
            out,
            names,
            force,
            if_missing,
        } => {
            let ca = out.join("ca.pem");
            if if_missing && ca.exists() {
                println!("kept the certificates in {}", out.display());
                return Ok(ExitCode::SUCCESS);
            }
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
