//! `strata up`: a local cluster on 127.0.0.1, in the foreground, as child processes.
//!
//! # Mechanism
//!
//! 1. **Certificates.** Development certificates are made in `DATA_DIR/certs` on the first
//!    run ([`strata_node::certs::init`], for `localhost` and `127.0.0.1`) and reused after.
//! 2. **Addresses.** Each node gets a QUIC (UDP) and an admin (TCP) port on 127.0.0.1: free
//!    ports picked by the OS, or `--base-port P` and up (node N on `P+2(N-1)` and the next
//!    port). They are saved in `DATA_DIR/cluster.json` ([`Layout`]) because members are
//!    known to each other by address and a node's Raft state (in `DATA_DIR/node-N`) outlives
//!    the run: a second `strata up` on the same directory starts the same members on the
//!    same addresses. More `--nodes` than last time adds members; fewer is refused.
//! 3. **Start.** Every node is this executable running `strata node --node-id N`, in its own
//!    process group (a Ctrl-C in the terminal reaches `strata up` only, which then stops the
//!    nodes in order), stdout read for its `listening on` line, stderr appended to
//!    `DATA_DIR/node-N/node.log`. The first node (node 1, unless it left) runs with
//!    `--bootstrap` (ignored once it holds Raft state) and must be listening within
//!    [`START_TIMEOUT`] before the others start (in parallel) with `--join` to it.
//! 4. **Formed.** The ring is polled through the client library until every node is an
//!    active member and no partition is moving (at most [`FORM_TIMEOUT`]; a spinner shows
//!    the progress when stderr is a terminal).
//! 5. **Up.** `DATA_DIR/cluster.env` gets `export STRATA_ADDR=…` and `export STRATA_CERTS=…`
//!    lines, and a table of the members and how to use them is printed on stdout.
//! 6. **Stop.** On SIGINT or SIGTERM every node gets SIGTERM and has [`STOP_TIMEOUT`] to
//!    finish (a second Ctrl-C, or the timeout, sends SIGKILL); then `stopped`, exit 0. A node
//!    that exits on its own is reported with the end of its log, the others are stopped, and
//!    the exit code is 2. Every error path after the first node started stops the nodes too.
//! 7. **Leave.** The exception: a node that exits with success and is no longer in the ring
//!    the others serve has left the cluster (`strata leave`). It is dropped from the layout
//!    (its id is not reused) and the rest keep running; the next `strata up` starts one node
//!    fewer. This is how a local cluster shrinks.
//!
//! Progress goes to stderr; the members table, the usage hints and `stopped` go to stdout.
//!
//! # Caveats
//!
//! - Children cannot be given `PR_SET_PDEATHSIG` directly: `CommandExt::pre_exec` is
//!   `unsafe`, which the workspace denies. When util-linux `setpriv` is installed (and knows
//!   `--pdeathsig`) nodes are started through it (`setpriv --pdeathsig TERM -- strata node
//!   …`; it `exec`s, so the node keeps the pid), and the kernel sends SIGTERM to the nodes if
//!   `strata up` is killed outright. Without `setpriv`, a `kill -9` of `strata up` leaves its
//!   nodes running (each in its own process group); every other exit path stops them.
//! - Any other exit of a node while the cluster is up counts as unexpected, including a
//!   `kill` from another shell.
//! - `strata up` never removes members itself: fewer `--nodes` than the data directory holds
//!   is refused; shrinking is `strata leave` on the running cluster. A member that left keeps
//!   its `node-N` directory (no longer used).
//! - One `strata up` per data directory at a time (a lock file, `DATA_DIR/up.lock`, makes sure).

use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use strata_client::{Client, ClientConfig};
use strata_proto::NodeId;
use strata_proto::ring::{MemberState, Ring};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep, timeout_at};

/// How long a node has to print its `listening on` line: far more than a node needs (well
/// under a second here), short enough that a broken start is reported while someone waits.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the cluster has to form (every node active, no partition moving): a few Raft
/// elections and the initial partition hand-offs, with room for a slow debug build.
const FORM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the nodes have to stop after SIGTERM before they are killed: above a node's
/// default shutdown grace (10 s) so in-flight requests and queued writes can finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `strata up` asks the remaining nodes whether a node that stopped with success
/// has left the cluster.
const LEAVE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the ring is polled while the cluster forms, and the children while it is up.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A Ctrl-C this long after the one that started a stop kills the nodes at once; sooner, it
/// is taken for the same one delivered twice (to the process and to its process group).
const REPEAT_GRACE: Duration = Duration::from_millis(500);
/// Lines of a node's log shown when it fails.
const LOG_TAIL_LINES: usize = 20;
/// Most bytes read from the end of a log to find those lines.
const LOG_TAIL_BYTES: u64 = 64 * 1024;
/// The line a node prints on stdout once it serves, before its address.
const LISTENING: &str = "listening on ";
/// The saved addresses of the nodes, inside the data directory.
const LAYOUT_FILE: &str = "cluster.json";
/// The `export` lines for the CLI, inside the data directory.
const ENV_FILE: &str = "cluster.env";
/// Held (flock) while a `strata up` runs on the data directory.
const LOCK_FILE: &str = "up.lock";
/// Version of [`Layout`]'s file format.
const LAYOUT_VERSION: u32 = 1;

/// Arguments of `strata up`.
#[derive(Args)]
pub(crate) struct UpArgs {
    /// Number of nodes (more than a previous run on the same data directory adds members).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    nodes: u64,
    /// Directory for the certificates, the cluster's addresses and every node's data.
    #[arg(long, default_value = "./strata-data")]
    data_dir: PathBuf,
    /// Node N listens on PORT+2(N-1) (QUIC, UDP) and the next port (admin, TCP); free
    /// ports by default. Ports are fixed on the first run of a data directory.
    #[arg(long, value_name = "PORT")]
    base_port: Option<u16>,
}

/// The addresses of a cluster's nodes, saved in `DATA_DIR/cluster.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Layout {
    /// File format version ([`LAYOUT_VERSION`]).
    version: u32,
    /// The id the next new node gets. Ids are never reused: a member that left keeps its id
    /// (and its old Raft state in `node-N`), so a new node must not take it.
    next_id: u64,
    /// `--base-port` of the first run, if it had one: node N is on `base + 2(N-1)` and the
    /// next port up, and so are the nodes added later. Otherwise every node got free ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_port: Option<u16>,
    /// The nodes, by increasing id; the first bootstrapped the cluster (or took over as the
    /// node the others join through, after the first left).
    nodes: Vec<NodeAddrs>,
}

/// Where one node listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct NodeAddrs {
    id: u64,
    /// QUIC (UDP).
    listen: SocketAddr,
    /// Admin HTTP (TCP).
    admin: SocketAddr,
}

impl Layout {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(LAYOUT_FILE)
    }

    /// The saved layout, if there is one.
    fn load(data_dir: &Path) -> Result<Option<Self>> {
        let path = Self::path(data_dir);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // The version first, so that a file from another version says so whatever else changed.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let not_a_layout = || format!("{} is not a strata up layout", path.display());
        let versioned: Versioned = serde_json::from_str(&text).with_context(not_a_layout)?;
        ensure!(
            versioned.version == LAYOUT_VERSION,
            "{} has format version {}; this strata reads version {LAYOUT_VERSION}",
            path.display(),
            versioned.version
        );
        let layout: Layout = serde_json::from_str(&text).with_context(not_a_layout)?;
        let ids_in_order = layout.nodes.windows(2).all(|w| w[0].id < w[1].id);
        let ids_valid = layout
            .nodes
            .iter()
            .all(|n| n.id >= 1 && n.id < layout.next_id);
        ensure!(
            !layout.nodes.is_empty() && ids_in_order && ids_valid,
            "{} should list nodes by increasing id, each below next_id",
            path.display()
        );
        Ok(Some(layout))
    }

    /// Saves the layout (through a temporary file and a rename).
    fn save(&self, data_dir: &Path) -> Result<()> {
        let path = Self::path(data_dir);
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        write_atomically(&path, &text)
    }
}

/// The layout for `nodes` nodes: the saved one (extended if `nodes` is larger), or a new one.
/// `free` picks `count` free (QUIC, admin) port pairs.
fn plan_layout(
    saved: Option<Layout>,
    nodes: u64,
    base_port: Option<u16>,
    free: impl FnOnce(usize) -> Result<Vec<(u16, u16)>>,
) -> Result<Layout> {
    let mut layout = saved.unwrap_or(Layout {
        version: LAYOUT_VERSION,
        next_id: 1,
        base_port,
        nodes: Vec::new(),
    });
    let have = layout.nodes.len() as u64;
    if nodes < have {
        bail!(
            "this data directory holds a cluster of {have} nodes and `strata up` does not \
             remove members: run it with --nodes {have}, and shrink the running cluster with \
             `strata leave` (a node that leaves is dropped from {LAYOUT_FILE})"
        );
    }
    if base_port.is_some() && base_port != layout.base_port {
        let how = match layout.base_port {
            Some(base) => format!("with --base-port {base}"),
            None => "on free ports".to_owned(),
        };
        bail!(
            "this data directory's cluster was set up {how}; members are known by address, \
             so their ports cannot change: drop --base-port"
        );
    }
    let missing = (nodes - have) as usize;
    let ids: Vec<u64> = (layout.next_id..).take(missing).collect();
    let ports = match layout.base_port {
        Some(base) => ids
            .iter()
            .map(|id| base_ports(base, *id))
            .collect::<Result<Vec<_>>>()?,
        None if missing > 0 => free(missing)?,
        None => Vec::new(),
    };
    ensure!(
        ports.len() == missing,
        "picked {} ports for {missing} nodes",
        ports.len()
    );
    for (id, (listen, admin)) in ids.into_iter().zip(ports) {
        layout.nodes.push(NodeAddrs {
            id,
            listen: SocketAddr::from(([127, 0, 0, 1], listen)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        });
        layout.next_id = id + 1;
    }
    Ok(layout)
}

/// Node `id`'s (QUIC, admin) ports from `--base-port`: `base + 2(id-1)` and the next one.
fn base_ports(base: u16, id: u64) -> Result<(u16, u16)> {
    let quic = u64::from(base) + 2 * id.saturating_sub(1);
    match (u16::try_from(quic), u16::try_from(quic + 1)) {
        (Ok(quic), Ok(admin)) => Ok((quic, admin)),
        _ => bail!("--base-port {base} leaves no room for node {id}: ports end at 65535"),
    }
}

/// `count` pairs of free ports on 127.0.0.1: (UDP for QUIC, TCP for admin). Every socket is
/// held until all are picked, so no port is handed out twice; a port may of course be taken
/// by someone else between now and the node's start (the node then fails with a clear
/// error).
fn free_ports(count: usize) -> Result<Vec<(u16, u16)>> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let udp = UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
        let tcp = TcpListener::bind("127.0.0.1:0").context("finding a free TCP port")?;
        held.push((udp, tcp));
    }
    held.iter()
        .map(|(udp, tcp)| Ok((udp.local_addr()?.port(), tcp.local_addr()?.port())))
        .collect()
}

/// Runs `strata up` until SIGINT or SIGTERM (exit 0) or until a node exits (exit 2).
pub(crate) fn run(args: UpArgs) -> Result<ExitCode> {
    fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let _lock = lock_data_dir(&data_dir)?;
    let certs = ensure_certs(&data_dir)?;

    let saved = Layout::load(&data_dir)?;
    if saved.is_none() && data_dir.join("node-1").exists() {
        bail!(
            "{} holds node data but no {LAYOUT_FILE} with the nodes' addresses; remove the \
             node-N directories to start a new cluster there",
            data_dir.display()
        );
    }
    let layout = plan_layout(saved, args.nodes, args.base_port, free_ports)?;
    layout.save(&data_dir)?;

    let launcher = Launcher::detect()?;
    let setup = Setup {
        shown_dir: args.data_dir,
        data_dir,
        certs,
        layout,
        launcher,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    // The nodes are spawned from this (the main) thread: a parent-death signal set by
    // `setpriv` fires when the thread that spawned the child ends.
    runtime.block_on(serve(setup))
}

/// Takes `DATA_DIR/up.lock` for as long as the returned file is open.
fn lock_data_dir(data_dir: &Path) -> Result<File> {
    use rustix::fs::{FlockOperation, flock};
    let path = data_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => bail!(
            "another `strata up` is running on {}; stop it first",
            data_dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// `DATA_DIR/certs`, with development certificates made on the first run.
fn ensure_certs(data_dir: &Path) -> Result<PathBuf> {
    let dir = data_dir.join("certs");
    if !dir.join("ca.pem").exists() {
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let paths = strata_node::certs::init(&dir, &names, false)
            .context("making development certificates")?;
        eprintln!("wrote development certificates to {}", paths.dir.display());
    }
    Ok(dir)
}

/// How nodes are started: this executable, through `setpriv --pdeathsig TERM` when it can.
struct Launcher {
    program: PathBuf,
    prefix: Vec<std::ffi::OsString>,
}

impl Launcher {
    fn detect() -> Result<Self> {
        let exe = std::env::current_exe().context("finding the strata executable")?;
        let setpriv_works = std::process::Command::new("setpriv")
            .args(["--pdeathsig", "TERM", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        Ok(if setpriv_works {
            Self {
                program: PathBuf::from("setpriv"),
                prefix: vec!["--pdeathsig".into(), "TERM".into(), "--".into(), exe.into()],
            }
        } else {
            tracing::debug!(
                "setpriv --pdeathsig is not available; nodes may outlive a killed strata up"
            );
            Self {
                program: exe,
                prefix: Vec::new(),
            }
        })
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.prefix);
        command
    }
}

/// Everything decided before the nodes start.
struct Setup {
    /// The data directory as the user gave it, for the hints.
    shown_dir: PathBuf,
    /// The data directory, absolute.
    data_dir: PathBuf,
    /// The certificates directory, absolute.
    certs: PathBuf,
    layout: Layout,
    launcher: Launcher,
}

impl Setup {
    fn node_dir(&self, id: u64) -> PathBuf {
        self.data_dir.join(format!("node-{id}"))
    }
}

/// How a node enters the cluster.
enum Role {
    Bootstrap,
    Join(SocketAddr),
}

/// A running node.
struct NodeProcess {
    id: u64,
    log: PathBuf,
    /// Where this run's output starts in the log.
    log_start: u64,
    child: Child,
    pid: Option<u32>,
    /// The address from the node's `listening on` line, once.
    listening: Option<oneshot::Receiver<String>>,
    exited: Option<ExitStatus>,
}

impl NodeProcess {
    fn spawn(setup: &Setup, node: &NodeAddrs, role: &Role) -> Result<Self> {
        let id = node.id;
        let dir = setup.node_dir(id);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join("node.log");
        let mut log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let log_start = log_file.metadata()?.len();
        writeln!(log_file, "==== strata up: starting node {id} ====")
            .with_context(|| format!("writing {}", log.display()))?;

        let mut command = setup.launcher.command();
        command
            .arg("node")
            .arg("--data-dir")
            .arg(&dir)
            .arg("--listen")
            .arg(node.listen.to_string())
            .arg("--admin")
            .arg(node.admin.to_string())
            .arg("--certs")
            .arg(&setup.certs)
            .arg("--node-id")
            .arg(id.to_string());
        match role {
            Role::Bootstrap => command.arg("--bootstrap"),
            Role::Join(addr) => command.arg("--join").arg(addr.to_string()),
        };
        if std::env::var_os("STRATA_LOG").is_none() && std::env::var_os("RUST_LOG").is_none() {
            // The log file is where to look when something goes wrong: make it say enough.
            command.env("STRATA_LOG", "info");
        }
        command
            // A file, not a terminal: no colour codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            // Its own process group: a Ctrl-C in the terminal reaches `strata up` alone, which
            // stops the nodes in order.
            .process_group(0)
            // The last resort, should `strata up` unwind without stopping the nodes.
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("the node's stdout")?;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stdout).lines();
            // Read to the end, so the node never blocks on a full pipe.
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.split(LISTENING).nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        Ok(Self {
            id,
            log,
            log_start,
            child,
            pid,
            listening: Some(rx),
            exited: None,
        })
    }

    /// Waits until the node says it listens; an error with its log if it exits or `deadline`
    /// passes first.
    async fn wait_listening(&mut self, deadline: Instant) -> Result<()> {
        let rx = self.listening.take().context("waited twice for a node")?;
        tokio::select! {
            line = rx => match line {
                Ok(_) => return Ok(()),
                // Stdout closed without the line: the node is exiting.
                Err(_) => {
                    let grace = Instant::now() + Duration::from_secs(5);
                    if let Ok(Ok(status)) = timeout_at(grace, self.child.wait()).await {
                        self.exited = Some(status);
                    }
                }
            },
            status = self.child.wait() => {
                self.exited = status.ok();
            }
            () = tokio::time::sleep_until(deadline) => {
                bail!(self.failure(&format!(
                    "did not start listening within {} s",
                    START_TIMEOUT.as_secs()
                )));
            }
        }
        bail!(self.failure("exited before it was listening"))
    }

    /// Whether the node still runs (and, if not, its status recorded).
    fn running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Err(_) => false,
        }
    }

    /// Sends SIGTERM, if the node still runs.
    fn terminate(&mut self) {
        if !self.running() {
            return;
        }
        // `Child::id` is `None` once the child is reaped, so this never signals a reused pid.
        let pid = self
            .child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid
            && let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        {
            eprintln!("strata: could not send SIGTERM to node {}: {e}", self.id);
        }
    }

    /// "node N (pid P) WHAT (STATUS); the last lines of LOG: …".
    fn failure(&self, what: &str) -> String {
        let pid = self.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        let status = self.exited.map(|s| format!(" ({s})")).unwrap_or_default();
        let tail = log_tail(&self.log, self.log_start);
        let tail = if tail.is_empty() {
            "  (nothing)".to_owned()
        } else {
            tail.lines()
                .map(|line| format!("  {line}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "node {}{pid} {what}{status}; the last lines of {}:\n{tail}",
            self.id,
            self.log.display()
        )
    }
}

/// The last [`LOG_TAIL_LINES`] lines of `path` after byte `from` (empty if unreadable).
fn log_tail(path: &Path, from: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(LOG_TAIL_BYTES));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// SIGINT and SIGTERM.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// The name of the next signal received.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// The running nodes.
#[derive(Default)]
struct LocalCluster {
    nodes: Vec<NodeProcess>,
}

impl LocalCluster {
    /// Waits until some node exits; its index.
    async fn first_exit(&mut self) -> usize {
        loop {
            if let Some(i) = self.nodes.iter_mut().position(|n| !n.running()) {
                return i;
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGTERM to every node, then waits for them all, at most [`STOP_TIMEOUT`] or until
    /// another Ctrl-C, and kills those left.
    async fn stop(&mut self, signals: &mut Signals) {
        for node in &mut self.nodes {
            node.terminate();
        }
        let started = Instant::now();
        let deadline = started + STOP_TIMEOUT;
        let mut hurry = false;
        for node in &mut self.nodes {
            while !hurry && node.running() {
                tokio::select! {
                    status = timeout_at(deadline, node.child.wait()) => {
                        match status {
                            Ok(Ok(status)) => node.exited = Some(status),
                            Ok(Err(e)) => eprintln!("strata: waiting for node {}: {e}", node.id),
                            Err(_) => eprintln!(
                                "strata: node {} did not stop within {} s; killing it",
                                node.id,
                                STOP_TIMEOUT.as_secs()
                            ),
                        }
                        break;
                    }
                    name = signals.recv() => {
                        // A signal that comes with the first (`timeout` and process managers
                        // signal the process and its group) or a SIGTERM is no hurry; a second
                        // Ctrl-C is.
                        if name == "SIGINT" && started.elapsed() >= REPEAT_GRACE {
                            eprintln!("strata: {name} again: killing the nodes");
                            hurry = true;
                        }
                    }
                }
            }
            if node.running() {
                if let Err(e) = node.child.kill().await {
                    eprintln!("strata: killing node {}: {e}", node.id);
                }
                node.exited = node.child.try_wait().ok().flatten();
            }
        }
    }
}

/// Starts the nodes, waits for the cluster, prints how to use it and runs until a signal.
async fn serve(mut setup: Setup) -> Result<ExitCode> {
    let mut signals = Signals::install()?;
    let mut cluster = LocalCluster::default();
    let started = tokio::select! {
        result = start(&setup, &mut cluster) => Some(result),
        name = signals.recv() => {
            eprintln!("strata: {name}: stopping the nodes");
            None
        }
    };
    let ring = match started {
        Some(Ok(ring)) => ring,
        Some(Err(e)) => {
            cluster.stop(&mut signals).await;
            return Err(e);
        }
        None => {
            cluster.stop(&mut signals).await;
            println!("stopped");
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Err(e) = write_env_file(&setup) {
        cluster.stop(&mut signals).await;
        return Err(e);
    }
    print_members(&setup, &ring);

    loop {
        let exited = tokio::select! {
            name = signals.recv() => {
                eprintln!("strata: {name}: stopping the nodes");
                cluster.stop(&mut signals).await;
                println!("stopped");
                return Ok(ExitCode::SUCCESS);
            }
            i = cluster.first_exit() => i,
        };
        match node_left(&mut setup, &mut cluster, exited).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => eprintln!("strata: {e:#}"),
        }
        eprintln!(
            "strata: {}",
            cluster.nodes[exited].failure("exited unexpectedly")
        );
        eprintln!("strata: stopping the other nodes");
        cluster.stop(&mut signals).await;
        println!("stopped");
        return Ok(ExitCode::from(2));
    }
}

/// After node `exited` stopped with success: whether it left the cluster (`strata leave`),
/// in which case it is dropped from the layout (and `cluster.env` points at a node that
/// remains). A node that failed, or that is still a member, did not leave.
async fn node_left(setup: &mut Setup, cluster: &mut LocalCluster, exited: usize) -> Result<bool> {
    let node = &cluster.nodes[exited];
    let id = node.id;
    if !node.exited.is_some_and(|status| status.success()) || cluster.nodes.len() < 2 {
        return Ok(false);
    }
    let Some(other) = setup.layout.nodes.iter().find(|n| n.id != id) else {
        return Ok(false);
    };
    if !is_removed(&other.listen.to_string(), &setup.certs, NodeId(id)).await {
        return Ok(false);
    }
    setup.layout.nodes.retain(|n| n.id != id);
    cluster.nodes.remove(exited);
    setup.layout.save(&setup.data_dir)?;
    write_env_file(setup)?;
    eprintln!(
        "strata: node {id} left the cluster and stopped; {} ({} no longer lists it; {} is \
         not used any more)",
        match cluster.nodes.len() {
            1 => "1 node remains".to_owned(),
            n => format!("{n} nodes remain"),
        },
        LAYOUT_FILE,
        setup.node_dir(id).display()
    );
    Ok(true)
}

/// Whether member `id` is gone from the ring that `addr` serves (asked for a few seconds, as
/// the node that answers may apply the removal a moment after the leaver did).
async fn is_removed(addr: &str, certs: &Path, id: NodeId) -> bool {
    let deadline = Instant::now() + LEAVE_CHECK_TIMEOUT;
    let Ok(Ok(client)) =
        timeout_at(deadline, Client::connect(ClientConfig::new(addr, certs))).await
    else {
        return false;
    };
    let mut removed = false;
    while Instant::now() < deadline {
        if let Ok(Ok(ring)) = timeout_at(deadline, client.refresh_ring()).await
            && ring.members.iter().all(|m| m.id != id)
        {
            removed = true;
            break;
        }
        sleep(POLL_INTERVAL).await;
    }
    client.close().await;
    removed
}

/// Starts the first node (node 1 of a new cluster), then the others, and waits until they
/// form the cluster; its ring.
async fn start(setup: &Setup, cluster: &mut LocalCluster) -> Result<Arc<Ring>> {
    let nodes = &setup.layout.nodes;
    let first = nodes.first().context("a cluster needs a node")?;
    eprintln!(
        "starting node {} on {} (admin {}), bootstrapping the cluster",
        first.id, first.listen, first.admin
    );
    let deadline = Instant::now() + START_TIMEOUT;
    cluster
        .nodes
        .push(NodeProcess::spawn(setup, first, &Role::Bootstrap)?);
    if let Some(node) = cluster.nodes.last_mut() {
        node.wait_listening(deadline).await?;
    }

    let join = Role::Join(first.listen);
    let deadline = Instant::now() + START_TIMEOUT;
    for node in &nodes[1..] {
        eprintln!(
            "starting node {} on {} (admin {}), joining through {}",
            node.id, node.listen, node.admin, first.listen
        );
        cluster.nodes.push(NodeProcess::spawn(setup, node, &join)?);
    }
    for node in &mut cluster.nodes[1..] {
        node.wait_listening(deadline).await?;
    }

    let expected: Vec<NodeId> = nodes.iter().map(|n| NodeId(n.id)).collect();
    let addr = first.listen.to_string();
    tokio::select! {
        ring = wait_formed(&addr, &setup.certs, &expected) => ring.with_context(|| format!(
            "the nodes' logs are in {}",
            setup.data_dir.join("node-N").join("node.log").display()
        )),
        i = cluster.first_exit() => {
            bail!(cluster.nodes[i].failure("exited while the cluster was forming"))
        }
    }
}

/// Polls the ring through `addr` until every node of `expected` is an active member and no
/// partition is moving, at most [`FORM_TIMEOUT`].
async fn wait_formed(addr: &str, certs: &Path, expected: &[NodeId]) -> Result<Arc<Ring>> {
    let deadline = Instant::now() + FORM_TIMEOUT;
    let spinner = Spinner::start();
    let mut client: Option<Client> = None;
    let mut status = format!("connecting to {addr}");
    loop {
        spinner
            .0
            .set_message(format!("waiting for the cluster to form: {status}"));
        if Instant::now() >= deadline {
            drop(spinner);
            if let Some(client) = client {
                client.close().await;
            }
            bail!(
                "the cluster did not form within {} s (last seen: {status})",
                FORM_TIMEOUT.as_secs()
            );
        }
        match &client {
            None => {
                match timeout_at(deadline, Client::connect(ClientConfig::new(addr, certs))).await {
                    Ok(Ok(connected)) => {
                        client = Some(connected);
                        continue;
                    }
                    Ok(Err(e)) => status = format!("connecting to {addr}: {e}"),
                    Err(_) => continue,
                }
            }
            Some(connected) => match timeout_at(deadline, connected.refresh_ring()).await {
                Ok(Ok(ring)) => {
                    if is_formed(&ring, expected) {
                        drop(spinner);
                        connected.close().await;
                        return Ok(ring);
                    }
                    status = describe_progress(&ring, expected);
                }
                Ok(Err(e)) => status = format!("asking {addr} for the ring: {e}"),
                Err(_) => continue,
            },
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Whether every node of `expected` is an active member and no partition is moving.
fn is_formed(ring: &Ring, expected: &[NodeId]) -> bool {
    ring.moving == 0 && active_count(ring, expected) == expected.len()
}

fn active_count(ring: &Ring, expected: &[NodeId]) -> usize {
    expected
        .iter()
        .filter(|id| {
            ring.members
                .iter()
                .any(|m| m.id == **id && m.state == MemberState::Active)
        })
        .count()
}

/// "2 of 3 nodes active, 12 partitions moving (epoch 4)".
fn describe_progress(ring: &Ring, expected: &[NodeId]) -> String {
    format!(
        "{} of {} nodes active, {} partitions moving (epoch {})",
        active_count(ring, expected),
        expected.len(),
        ring.moving,
        ring.epoch
    )
}

/// A spinner on stderr if it is a terminal (otherwise one line saying what is awaited),
/// cleared when dropped: also when the wait is cancelled by a signal or a node's exit.
struct Spinner(ProgressBar);

impl Spinner {
    fn start() -> Self {
        if !std::io::stderr().is_terminal() {
            eprintln!("waiting for the cluster to form");
            return Self(ProgressBar::hidden());
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        Self(bar)
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Writes `DATA_DIR/cluster.env`: the address of the first node (node 1 unless it left)
/// and the certificates directory.
fn write_env_file(setup: &Setup) -> Result<()> {
    let first = setup
        .layout
        .nodes
        .first()
        .context("a cluster needs a node")?;
    let certs = setup.certs.to_str().with_context(|| {
        format!(
            "the certificates directory {} is not valid UTF-8",
            setup.certs.display()
        )
    })?;
    let text = format!(
        "# Written by `strata up`: `source` this file to point the strata CLI at the cluster.\n\
         export STRATA_ADDR={}\n\
         export STRATA_CERTS={}\n",
        first.listen,
        shell_quote(certs)
    );
    write_atomically(&setup.data_dir.join(ENV_FILE), &text)
}

/// `s` as one shell word: as it is if that is safe, else in single quotes.
fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,@%=".contains(&b));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The members table and how to use the cluster, on stdout.
fn print_members(setup: &Setup, ring: &Ring) {
    let header = [
        "ID",
        "QUIC ADDR",
        "ADMIN ADDR",
        "STATE",
        "LEADER",
        "DATA DIR",
    ]
    .map(String::from);
    let mut rows = vec![header];
    for node in &setup.layout.nodes {
        let member = ring.members.iter().find(|m| m.id == NodeId(node.id));
        rows.push([
            node.id.to_string(),
            member.map_or_else(|| node.listen.to_string(), |m| m.addr.clone()),
            member.map_or_else(|| node.admin.to_string(), |m| m.admin.clone()),
            member.map_or("unknown", |m| m.state.as_str()).to_owned(),
            if ring.leader == Some(NodeId(node.id)) {
                "*".to_owned()
            } else {
                String::new()
            },
            setup.node_dir(node.id).display().to_string(),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    out.push_str(&format!(
        "a {}-node strata cluster is up on 127.0.0.1 (epoch {}):\n\n",
        setup.layout.nodes.len(),
        ring.epoch
    ));
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str("  ");
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let env = setup.shown_dir.join(ENV_FILE);
    let log = setup.shown_dir.join("node-N").join("node.log");
    out.push_str(&format!(
        "\nUse it from another shell:\n\n  \
         source {}\n  \
         strata set greeting hello\n  \
         strata get greeting\n  \
         strata members\n  \
         strata ring\n\n\
         Node logs are in {}. Press Ctrl-C to stop the cluster.",
        shell_quote(&env.to_string_lossy()),
        log.display()
    ));
    println!("{out}");
}

/// Writes `contents` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pairs(start: u16) -> impl FnOnce(usize) -> Result<Vec<(u16, u16)>> {
        move |n| {
            Ok((0..n as u16)
                .map(|i| (start + 2 * i, start + 2 * i + 1))
                .collect())
        }
    }

    #[test]
    fn a_new_layout_numbers_nodes_from_one() {
        let layout = plan_layout(None, 3, None, pairs(5000)).unwrap();
        let ids: Vec<u64> = layout.nodes.iter().map(|n| n.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(layout.nodes[2].listen.to_string(), "127.0.0.1:5004");
        assert_eq!(layout.nodes[2].admin.to_string(), "127.0.0.1:5005");
    }

    #[test]
    fn base_port_places_node_n_at_base_plus_2n_minus_2() {
        let layout = plan_layout(None, 2, Some(7400), |_| bail!("not asked")).unwrap();
        assert_eq!(layout.nodes[0].listen.port(), 7400);
        assert_eq!(layout.nodes[0].admin.port(), 7401);
        assert_eq!(layout.nodes[1].listen.port(), 7402);
        assert_eq!(layout.nodes[1].admin.port(), 7403);
        let err = plan_layout(None, 2, Some(65534), |_| bail!("not asked")).unwrap_err();
        assert!(err.to_string().contains("65535"), "{err}");
    }

    #[test]
    fn a_saved_layout_is_kept_and_extended() {
        let saved = plan_layout(None, 2, None, pairs(6000)).unwrap();
        let again = plan_layout(Some(saved.clone()), 2, None, |_| bail!("none")).unwrap();
        assert_eq!(again, saved);
        let grown = plan_layout(Some(saved.clone()), 4, None, pairs(9000)).unwrap();
        assert_eq!(grown.nodes[..2], saved.nodes[..]);
        assert_eq!(grown.nodes[2].id, 3);
        assert_eq!(grown.nodes[3].listen.port(), 9002);
        assert_eq!(grown.next_id, 5);
    }

    #[test]
    fn nodes_added_later_keep_to_the_base_port_and_never_reuse_an_id() {
        let mut saved = plan_layout(None, 3, Some(7400), |_| bail!("none")).unwrap();
        // Node 2 left.
        saved.nodes.retain(|n| n.id != 2);
        let grown = plan_layout(Some(saved), 3, None, |_| bail!("none")).unwrap();
        let ids: Vec<u64> = grown.nodes.iter().map(|n| n.id).collect();
        assert_eq!(ids, [1, 3, 4]);
        assert_eq!(grown.nodes[2].listen.port(), 7406);
        assert_eq!(grown.nodes[2].admin.port(), 7407);
    }

    #[test]
    fn fewer_nodes_or_other_ports_are_refused() {
        let saved = plan_layout(None, 3, Some(7400), |_| bail!("none")).unwrap();
        let err = plan_layout(Some(saved.clone()), 2, None, pairs(1)).unwrap_err();
        assert!(err.to_string().contains("strata leave"), "{err}");
        assert!(plan_layout(Some(saved.clone()), 3, Some(7400), pairs(1)).is_ok());
        let err = plan_layout(Some(saved), 3, Some(8000), pairs(1)).unwrap_err();
        assert!(err.to_string().contains("--base-port 7400"), "{err}");
        let free = plan_layout(None, 1, None, pairs(5000)).unwrap();
        let err = plan_layout(Some(free), 1, Some(7400), pairs(1)).unwrap_err();
        assert!(err.to_string().contains("free ports"), "{err}");
    }

    #[test]
    fn layouts_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Layout::load(dir.path()).unwrap(), None);
        let layout = plan_layout(None, 3, None, free_ports).unwrap();
        layout.save(dir.path()).unwrap();
        assert_eq!(Layout::load(dir.path()).unwrap(), Some(layout));
        fs::write(
            dir.path().join(LAYOUT_FILE),
            r#"{"version": 2, "nodes": []}"#,
        )
        .unwrap();
        let err = Layout::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(4).unwrap();
        let mut udp: Vec<u16> = ports.iter().map(|p| p.0).collect();
        udp.sort_unstable();
        udp.dedup();
        assert_eq!(udp.len(), 4);
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(
            shell_quote("/tmp/strata-data/certs"),
            "/tmp/strata-data/certs"
        );
        assert_eq!(shell_quote("/tmp/my data"), "'/tmp/my data'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
