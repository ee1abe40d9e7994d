//! [`Cluster`]: real `strata node` processes on this machine, and the faults done to them.
//!
//! # Mechanism
//! [`Cluster::start`] makes development certificates with `strata certs init` in a temporary
//! directory, picks a free UDP port (QUIC) and a free TCP port (admin HTTP) on 127.0.0.1 for
//! every node, and starts node 1 with `--bootstrap` and the others with `--join` through node
//! 1, each with its own data directory. The addresses are fixed for the cluster's life, so a
//! node restarts where it was, with the same id and data directory — the only way the
//! cluster recognises it (see "Known limits" in `docs/cluster.md`). A restarted node is given
//! `--join` through a live member, which a member that already holds Raft state treats as a
//! no-op. A node is ready when it prints `listening on ADDR`; the cluster is settled when a
//! fresh ring names every node as active, nothing is moving and there is a Raft leader.
//!
//! Faults are signals: `kill -9` ([`Cluster::kill`]), SIGTERM ([`Cluster::terminate`]),
//! SIGSTOP/SIGCONT ([`Cluster::freeze`], [`Cluster::thaw`]).
//!
//! [`Cluster::start_containers`] starts the same cluster from `docker-compose.yml` instead;
//! the same methods then act on containers (`docker kill`/`start`/`stop`/`pause`/`unpause`),
//! and [`Cluster::isolate`]/[`Cluster::reconnect`] cut a node off from its peers and back
//! (see [`crate::containers`]). Everything else — rings, leader, settling — is the same.
//!
//! Every node's stdout and stderr go to `LOG_DIR/node-ID.log`, appended across restarts.
//!
//! # No orphans
//! A node must never outlive the chaos run, however it ends:
//! - normal end, error, panic: each process is `kill_on_drop`, so dropping the [`Cluster`]
//!   (unwinding included) sends SIGKILL to every node it started;
//! - Ctrl-C: the nodes run in their own process group, so the terminal's SIGINT reaches only
//!   the chaos process, which then drops the cluster;
//! - the chaos process itself killed: every node is started with `PR_SET_PDEATHSIG =
//!   SIGKILL`, so the kernel kills it when its parent goes.
//!
//! # Caveats
//! - Linux only (`prctl`).
//! - `PR_SET_PDEATHSIG` fires when the *thread* that started the child exits. Nodes are
//!   started from the tokio runtime's worker threads (or the main thread), which live as long
//!   as the runtime; never start one from `spawn_blocking`, whose threads come and go.
//! - A port found free may be taken by another program before the node binds it; the node
//!   then fails to start and the run reports its log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal};
use strata_client::{Client, ClientConfig};

use crate::containers::{self, Compose, ContainerConfig, docker};
use strata_proto::{MemberState, NodeId, Ring};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How long a node may take to print `listening on`: a debug build opening its Raft log on a
/// busy two-core machine takes a second or two; far beyond that it is not coming up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a killed process may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-attempt timeout of the harness's own client: short, so that asking a frozen or dead
/// member for the ring costs little (the client then asks the others).
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between polls of the ring while waiting for the cluster to settle.
const POLL: Duration = Duration::from_millis(200);

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The `strata` binary.
    pub strata: PathBuf,
    /// How many nodes (ids 1..=nodes).
    pub nodes: usize,
    /// Environment for every node, e.g. `STRATA_CLUSTER__REPLICATION=3`.
    pub env: Vec<(String, String)>,
    /// Where the node logs go (created if missing).
    pub log_dir: PathBuf,
}

/// A running cluster. Dropping it kills every node (or brings its containers down).
pub struct Cluster {
    config: ClusterConfig,
    /// The compose project, for a cluster of containers; declared first so that its
    /// containers go down before anything else is dropped.
    compose: Option<Compose>,
    /// The members, in id order. Declared before `_dir`: fields drop in declaration order,
    /// so the processes are killed before their data directories are removed.
    nodes: Vec<Node>,
    certs: PathBuf,
    admin: Option<Client>,
    /// Certificates and data directories, removed on drop.
    _dir: tempfile::TempDir,
}

/// One member: its fixed identity and its current process.
struct Node {
    id: u64,
    listen: SocketAddr,
    admin: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<Child>,
    frozen: bool,
    /// The node's container, for a cluster of containers.
    container: Option<Container>,
}

/// A node's container and what has been done to it.
struct Container {
    id: String,
    /// Stopped (killed or terminated) and not started again.
    stopped: bool,
    /// Cut off from the other nodes.
    isolated: bool,
}

impl Node {
    fn pid(&self) -> Result<Pid> {
        self.process
            .as_ref()
            .and_then(Child::id)
            .and_then(|id| Pid::from_raw(i32::try_from(id).ok()?))
            .with_context(|| format!("node {} is not running", self.id))
    }
}

impl Cluster {
    /// Makes certificates, starts every node (1 bootstraps, the others join through it) and
    /// waits until the cluster is settled.
    pub async fn start(config: ClusterConfig, settle_within: Duration) -> Result<Self> {
        if config.nodes == 0 {
            bail!("a cluster needs at least one node");
        }
        std::fs::create_dir_all(&config.log_dir)
            .with_context(|| format!("creating {}", config.log_dir.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("strata-chaos-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        let certs = dir.path().join("certs");
        let out = tokio::time::timeout(
            START_TIMEOUT,
            Command::new(&config.strata)
                .args(["certs", "init", "--out"])
                .arg(&certs)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("strata certs init timed out")?
        .with_context(|| format!("running {} certs init", config.strata.display()))?;
        if !out.status.success() {
            bail!(
                "strata certs init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // Hold every socket until all ports are picked, so no two nodes get the same one.
        let mut held = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..config.nodes {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
            let id = i as u64 + 1;
            nodes.push(Node {
                id,
                listen: udp.local_addr()?,
                admin: tcp.local_addr()?,
                data_dir: dir.path().join(format!("node-{id}")),
                log: config.log_dir.join(format!("node-{id}.log")),
                process: None,
                frozen: false,
                container: None,
            });
            held.push((udp, tcp));
        }
        drop(held);

        let mut cluster = Self {
            config,
            compose: None,
            nodes,
            certs,
            admin: None,
            _dir: dir,
        };
        let first = cluster.nodes[0].listen;
        for i in 0..cluster.nodes.len() {
            let join = (i > 0).then_some(first);
            let child = cluster.spawn(i, join).await?;
            cluster.nodes[i].process = Some(child);
        }
        cluster.connect_admin().await?;
        cluster.wait_settled(settle_within).await?;
        Ok(cluster)
    }

    /// Starts the nodes as containers of the repository's `docker-compose.yml` (see
    /// [`crate::containers`]), copies the client certificates out, and waits until the
    /// cluster is settled. `config.strata` is not used.
    pub async fn start_containers(
        config: ClusterConfig,
        containers: &ContainerConfig,
        settle_within: Duration,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("strata-chaos-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        let certs = dir.path().join("certs");
        let compose = Compose::up(containers, config.nodes, &config.env, &config.log_dir).await?;
        let mut nodes = Vec::new();
        for i in 0..config.nodes {
            let id = i as u64 + 1;
            let (listen, admin) = compose.published(id);
            nodes.push(Node {
                id,
                listen,
                admin,
                data_dir: PathBuf::from("/var/lib/strata/data"),
                log: config.log_dir.join(format!("strata-{id}.log")),
                process: None,
                frozen: false,
                container: Some(Container {
                    id: compose.container(id).await?,
                    stopped: false,
                    isolated: false,
                }),
            });
        }
        compose.copy_certs(&certs).await?;
        let mut cluster = Self {
            config,
            compose: Some(compose),
            nodes,
            certs,
            admin: None,
            _dir: dir,
        };
        for node in &cluster.nodes {
            cluster.wait_answers(node, START_TIMEOUT).await?;
        }
        cluster.connect_admin().await?;
        cluster.wait_settled(settle_within).await?;
        Ok(cluster)
    }

    /// Connects the harness's own client (to node 1, the others as seeds).
    async fn connect_admin(&mut self) -> Result<()> {
        let addrs = self.addrs();
        let first = addrs.first().context("no nodes")?;
        let mut admin = ClientConfig::new(first.to_string(), &self.certs);
        admin.seeds = addrs[1..].iter().map(|a| a.to_string()).collect();
        admin.request_timeout = ADMIN_REQUEST_TIMEOUT;
        admin.connect_timeout = ADMIN_REQUEST_TIMEOUT;
        let client = Client::connect(admin)
            .await
            .context("connecting the harness client")?;
        self.admin = Some(client);
        Ok(())
    }

    /// Whether the nodes are containers.
    pub fn in_containers(&self) -> bool {
        self.compose.is_some()
    }

    /// Waits until `node` answers a ping on its own address.
    async fn wait_answers(&self, node: &Node, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let config = self.probe_config(node);
            let answer = tokio::time::timeout(ADMIN_REQUEST_TIMEOUT * 2, async {
                let client = Client::connect(config).await?;
                let pong = client.ping().await;
                client.close().await;
                pong
            })
            .await;
            match answer {
                Ok(Ok(_)) => return Ok(()),
                _ if Instant::now() >= deadline => {
                    bail!("node {} does not answer pings after {within:?}", node.id)
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    fn container(&self, id: u64) -> Result<&Container> {
        self.node(id)?
            .container
            .as_ref()
            .with_context(|| format!("node {id} is not a container"))
    }

    fn container_mut(&mut self, id: u64) -> Result<&mut Container> {
        self.node_mut(id)?
            .container
            .as_mut()
            .with_context(|| format!("node {id} is not a container"))
    }

    /// Cuts node `id` off from every other node (containers only): packets between it and
    /// them are dropped both ways; clients still reach it.
    pub async fn isolate(&mut self, id: u64) -> Result<()> {
        let mut peers = Vec::new();
        for node in self.nodes.iter().filter(|n| n.id != id) {
            if let Some(c) = node.container.as_ref().filter(|c| !c.stopped) {
                peers.extend(containers::ips_of(&c.id).await?);
            }
        }
        let container = self.container(id)?.id.clone();
        containers::isolate(&container, &peers).await?;
        self.container_mut(id)?.isolated = true;
        Ok(())
    }

    /// Connects node `id` to the others again after [`Cluster::isolate`].
    pub async fn reconnect(&mut self, id: u64) -> Result<()> {
        let container = self.container(id)?.id.clone();
        containers::reconnect(&container).await?;
        self.container_mut(id)?.isolated = false;
        Ok(())
    }

    /// Whether node `id` is cut off from the others.
    pub fn is_isolated(&self, id: u64) -> bool {
        self.container(id).is_ok_and(|c| c.isolated)
    }

    /// Every node's id, in order.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Every node's QUIC address, in id order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.listen).collect()
    }

    /// The QUIC address of node `id` (for containers, its port published on the host).
    pub fn addr_of(&self, id: u64) -> Option<SocketAddr> {
        self.node(id).ok().map(|n| n.listen)
    }

    /// The certificates directory (`ca.pem`, `client.pem`, `client.key`, ...).
    pub fn certs(&self) -> &Path {
        &self.certs
    }

    /// Whether node `id` has a process (frozen or not), or a started container.
    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).is_ok_and(|n| match &n.container {
            Some(c) => !c.stopped,
            None => n.process.is_some(),
        })
    }

    /// Whether node `id` is stopped with SIGSTOP.
    pub fn is_frozen(&self, id: u64) -> bool {
        self.node(id).is_ok_and(|n| n.frozen)
    }

    fn node(&self, id: u64) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    fn index(&self, id: u64) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .with_context(|| format!("no node {id}"))
    }

    /// Starts the process of `self.nodes[index]`, bootstrapping (`join` none) or joining
    /// through `join`, and waits until it listens.
    async fn spawn(&self, index: usize, join: Option<SocketAddr>) -> Result<Child> {
        let node = &self.nodes[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        // Through util-linux `setpriv --pdeathsig KILL` when it is there (it `exec`s, so the
        // node keeps the pid): the kernel kills the node if the harness dies outright.
        let mut command = match setpriv() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"])
                    .arg(&self.config.strata);
                c
            }
            None => Command::new(&self.config.strata),
        };
        command
            .arg("node")
            .args(["--node-id", &node.id.to_string()])
            .args(["--listen", &node.listen.to_string()])
            .args(["--admin", &node.admin.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--certs")
            .arg(&self.certs);
        match join {
            Some(seed) => command.args(["--join", &seed.to_string()]),
            None => command.arg("--bootstrap"),
        };
        if std::env::var_os("STRATA_LOG").is_none() {
            command.env("STRATA_LOG", "info");
        }
        for (key, value) in &self.config.env {
            command.env(key, value);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?))
            .kill_on_drop(true)
            .process_group(0);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.config.strata.display()))?;
        let stdout = child.stdout.take().context("the node's stdout")?;

        // Copy stdout to the log, and say when the node listens.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut log = tokio::fs::File::from_std(log);
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening on")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
                let _ = log.write_all(line.as_bytes()).await;
                let _ = log.write_all(b"\n").await;
            }
        });
        match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => Ok(child),
            Ok(Err(_)) => bail!(
                "node {} exited before it listened; the end of {}:\n{}",
                node.id,
                node.log.display(),
                log_tail(&node.log, 20)
            ),
            Err(_) => bail!(
                "node {} did not listen within {START_TIMEOUT:?}; the end of {}:\n{}",
                node.id,
                node.log.display(),
                log_tail(&node.log, 20)
            ),
        }
    }

    /// `kill -9` node `id` and reaps it (`docker kill` for a container).
    pub async fn kill(&mut self, id: u64) -> Result<()> {
        if let Ok(container) = self.container(id) {
            let cid = container.id.clone();
            docker(&["kill", &cid]).await?;
            docker(&["wait", &cid]).await?;
            let node = self.node_mut(id)?;
            node.frozen = false;
            if let Some(c) = node.container.as_mut() {
                c.stopped = true;
                c.isolated = false;
            }
            return Ok(());
        }
        let node = self.node_mut(id)?;
        let mut child = node
            .process
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        node.frozen = false;
        child.start_kill()?;
        tokio::time::timeout(REAP_TIMEOUT, child.wait())
            .await
            .with_context(|| format!("node {id} was not reaped after SIGKILL"))??;
        Ok(())
    }

    /// Sends SIGTERM to node `id` and waits up to `within` for it to exit (then kills it).
    /// Whether it exited by itself.
    pub async fn terminate(&mut self, id: u64, within: Duration) -> Result<bool> {
        if let Ok(container) = self.container(id) {
            let cid = container.id.clone();
            if self.is_frozen(id) {
                docker(&["unpause", &cid]).await?;
            }
            let secs = within.as_secs().max(1).to_string();
            docker(&["stop", "--time", &secs, &cid]).await?;
            let code = docker(&["inspect", "--format", "{{.State.ExitCode}}", &cid]).await?;
            let node = self.node_mut(id)?;
            node.frozen = false;
            if let Some(c) = node.container.as_mut() {
                c.stopped = true;
                c.isolated = false;
            }
            return Ok(code.trim() == "0");
        }
        let node = self.node_mut(id)?;
        let pid = node.pid()?;
        if node.frozen {
            rustix::process::kill_process(pid, Signal::CONT)?;
            node.frozen = false;
        }
        rustix::process::kill_process(pid, Signal::TERM)?;
        let mut child = node.process.take().context("not running")?;
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => {
                status?;
                Ok(true)
            }
            Err(_) => {
                child.start_kill()?;
                tokio::time::timeout(REAP_TIMEOUT, child.wait()).await??;
                Ok(false)
            }
        }
    }

    /// Freezes node `id` with SIGSTOP (`docker pause` for a container): its sockets stay
    /// open but it answers nothing.
    pub async fn freeze(&mut self, id: u64) -> Result<()> {
        if let Ok(container) = self.container(id) {
            docker(&["pause", &container.id.clone()]).await?;
            self.node_mut(id)?.frozen = true;
            return Ok(());
        }
        let node = self.node_mut(id)?;
        rustix::process::kill_process(node.pid()?, Signal::STOP)?;
        node.frozen = true;
        Ok(())
    }

    /// Resumes node `id` with SIGCONT (`docker unpause`).
    pub async fn thaw(&mut self, id: u64) -> Result<()> {
        if let Ok(container) = self.container(id) {
            docker(&["unpause", &container.id.clone()]).await?;
            self.node_mut(id)?.frozen = false;
            return Ok(());
        }
        let node = self.node_mut(id)?;
        rustix::process::kill_process(node.pid()?, Signal::CONT)?;
        node.frozen = false;
        Ok(())
    }

    /// Starts node `id` again — same id, address and data directory — joining through a live
    /// member, and waits until it listens.
    pub async fn restart(&mut self, id: u64) -> Result<()> {
        if let Ok(container) = self.container(id) {
            if !container.stopped {
                bail!("node {id} is still running");
            }
            // Same container, so the same data volume, name and command (its Raft state makes
            // --bootstrap/--join no-ops).
            docker(&["start", &container.id.clone()]).await?;
            if let Some(c) = self.node_mut(id)?.container.as_mut() {
                c.stopped = false;
            }
            return self.wait_answers(self.node(id)?, START_TIMEOUT).await;
        }
        let index = self.index(id)?;
        if self.nodes[index].process.is_some() {
            bail!("node {id} is still running");
        }
        let live = |n: &&Node| n.id != id && n.process.is_some() && !n.frozen;
        let seed = self
            .nodes
            .iter()
            .find(live)
            .or_else(|| self.nodes.iter().find(|n| n.id != id))
            .map(|n| n.listen);
        let child = self.spawn(index, seed).await?;
        self.nodes[index].process = Some(child);
        Ok(())
    }

    /// Brings every node back: thaws the frozen ones, restarts the stopped ones. Returns what
    /// it did, as (node, was-frozen) pairs: `true` for a thaw, `false` for a restart.
    pub async fn heal(&mut self) -> Result<Vec<(u64, bool)>> {
        let mut done = Vec::new();
        for id in self.ids() {
            if self.is_isolated(id) {
                self.reconnect(id).await?;
            }
            if self.is_frozen(id) {
                self.thaw(id).await?;
                done.push((id, true));
            } else if !self.is_running(id) {
                self.restart(id).await?;
                done.push((id, false));
            }
        }
        Ok(done)
    }

    fn admin(&self) -> Result<&Client> {
        self.admin
            .as_ref()
            .context("the harness client is not connected")
    }

    /// The Raft leader, from a freshly fetched ring (`None` if the ring names none, or no
    /// member answered within `within`).
    pub async fn leader(&self, within: Duration) -> Option<u64> {
        let admin = self.admin().ok()?;
        let members = tokio::time::timeout(within, admin.members())
            .await
            .ok()?
            .ok()?;
        members.leader.map(|NodeId(id)| id)
    }

    /// Waits until a fresh ring names exactly this cluster's nodes, all active, with nothing
    /// moving and a Raft leader.
    pub async fn wait_settled(&self, within: Duration) -> Result<Arc<Ring>> {
        let admin = self.admin()?;
        let want = self.ids();
        let deadline = Instant::now() + within;
        loop {
            let last =
                match tokio::time::timeout(ADMIN_REQUEST_TIMEOUT * 2, admin.refresh_ring()).await {
                    Ok(Ok(ring)) => {
                        let mut have: Vec<u64> = ring.members.iter().map(|m| m.id.0).collect();
                        have.sort_unstable();
                        let active = ring.members.iter().all(|m| m.state == MemberState::Active);
                        if have == want && active && ring.moving == 0 && ring.leader.is_some() {
                            return Ok(ring);
                        }
                        format!(
                            "epoch {}, members {:?}, moving {}, leader {:?}",
                            ring.epoch,
                            ring.members
                                .iter()
                                .map(|m| (m.id.0, m.state.as_str()))
                                .collect::<Vec<_>>(),
                            ring.moving,
                            ring.leader.map(|l| l.0)
                        )
                    }
                    Ok(Err(e)) => format!("fetching the ring: {e}"),
                    Err(_) => "fetching the ring timed out".into(),
                };
            if Instant::now() >= deadline {
                bail!("the cluster did not settle within {within:?}: {last}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A client configuration that asks `node` itself, once, within the admin timeout.
    fn probe_config(&self, node: &Node) -> ClientConfig {
        let mut config = ClientConfig::new(node.listen.to_string(), &self.certs);
        config.request_timeout = ADMIN_REQUEST_TIMEOUT;
        config.connect_timeout = ADMIN_REQUEST_TIMEOUT;
        config.retries = 0;
        config
    }

    /// The ring each running node reports itself (by id); a node that does not answer
    /// within the admin timeout is left out.
    pub async fn rings(&self) -> Vec<(u64, Arc<Ring>)> {
        let mut rings = Vec::new();
        for node in self.nodes.iter().filter(|n| self.is_running(n.id)) {
            let config = self.probe_config(node);
            let answer = tokio::time::timeout(ADMIN_REQUEST_TIMEOUT * 2, async {
                let client = Client::connect(config).await?;
                let ring = client.ring();
                client.close().await;
                Ok::<_, strata_client::Error>(ring)
            })
            .await;
            if let Ok(Ok(ring)) = answer {
                rings.push((node.id, ring));
            }
        }
        rings
    }

    /// Waits until the cluster has recovered from a fault made at ring epoch `before`: every
    /// node answers with the same ring, newer than `before` (a restart or a mark-down always
    /// makes one), in which every member is active and nothing moves. A fault that changed
    /// nothing (a pause shorter than the failure timeout) is accepted after `quiet`.
    pub async fn wait_recovered(
        &self,
        before: u64,
        within: Duration,
        quiet: Duration,
    ) -> Result<()> {
        let started = Instant::now();
        let deadline = started + within;
        let want = self.ids();
        loop {
            let rings = self.rings().await;
            let agreed =
                rings.len() == want.len() && rings.windows(2).all(|w| w[0].1.epoch == w[1].1.epoch);
            let last = rings.first().map(|(_, r)| Arc::clone(r));
            if let Some(ring) = last.filter(|_| agreed) {
                let settled = ring.members.len() == want.len()
                    && ring.members.iter().all(|m| m.state == MemberState::Active)
                    && ring.moving == 0;
                if settled && (ring.epoch > before || started.elapsed() >= quiet) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the cluster did not recover within {within:?}: {:?}",
                    rings
                        .iter()
                        .map(|(id, r)| (id, r.epoch, r.moving))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every node answers a ping on its own address.
    pub async fn wait_serving(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        for node in &self.nodes {
            self.wait_answers(node, deadline.saturating_duration_since(Instant::now()))
                .await?;
        }
        Ok(())
    }
}

/// `setpriv` if util-linux provides it with `--pdeathsig`.
fn setpriv() -> Option<&'static Path> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
}

/// The last `lines` lines of a log file (for error messages).
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `strata node` accepts the setting in environment variable `key` (e.g.
/// `STRATA_CLUSTER__WRITE_QUORUM`): nodes refuse unknown settings, so a setting a node does
/// not know yet must not be passed.
///
/// It asks the binary itself: `strata node` with the setting and an invalid
/// `cluster.heartbeat_ms` of 0 fails while loading its configuration, before it opens
/// anything, and its error names the setting only if the setting is unknown.
pub async fn node_accepts(strata: &Path, key: &str, value: &str) -> Result<bool> {
    let dir = tempfile::tempdir()?;
    let field = key.rsplit("__").next().unwrap_or(key).to_ascii_lowercase();
    let run = Command::new(strata)
        .arg("node")
        .arg("--data-dir")
        .arg(dir.path().join("probe"))
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env(key, value)
        .env("STRATA_CLUSTER__HEARTBEAT_MS", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(START_TIMEOUT, run)
        .await
        .context("strata node did not exit while probing its settings")?
        .with_context(|| format!("running {}", strata.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok(!(stderr.contains("unknown field") && stderr.contains(&field)))
}
