//! The container side of [`Cluster`](crate::cluster::Cluster): a cluster started from the
//! repository's `docker-compose.yml`, and the faults done to its containers.
//!
//! # Mechanism
//! [`Compose::up`] starts `docker-compose.yml` under a compose project of its own
//! (`strata-chaos-<pid>-<random>`), with an override file that gives every node the run's
//! settings (`STRATA_CLUSTER__…`, `STRATA_LOG=info`) and turns Docker's restart policy off (the
//! harness restarts nodes itself). The published ports get a `STRATA_PORT_PREFIX` whose eight
//! ports are free on 127.0.0.1, so the harness — on the host, like any client outside the
//! compose network — reaches node N at `127.0.0.1:<prefix>N0`, the address the node advertises
//! for such clients. The harness copies the client certificates out of the `certs` volume.
//!
//! Faults, on containers instead of processes:
//! - kill: `docker kill` (SIGKILL to the node), restart: `docker start`;
//! - terminate: `docker stop` (SIGTERM, then SIGKILL after the grace);
//! - freeze/thaw: `docker pause`/`docker unpause` (the cgroup freezer);
//! - isolate/reconnect: `iptables` rules in the container's network namespace (entered from
//!   the host with `nsenter`) that drop every packet from and to the other nodes' addresses on
//!   the compose network. The published port keeps working, because the host's packets come
//!   from the network's gateway, not from a node: a client can still reach an isolated node,
//!   which is exactly what the minority-side checks need.
//!
//! # No leftovers
//! Everything is removed by `down -v --remove-orphans` of the run's own project when the
//! [`Compose`] is dropped (normal end, error, panic, Ctrl-C through the harness's drop), after
//! the node logs are saved. Nothing outside that project is touched; the image is not removed.
//!
//! # Caveats
//! - Needs Docker, `docker compose` or `docker-compose`, and root for `nsenter`/`iptables`.
//! - The image must exist (`cluster/build-image.sh`); the harness does not build it.
//! - If the harness itself is killed with SIGKILL, the project stays; remove it with
//!   `docker-compose -p strata-chaos-… down -v`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::seq::SliceRandom;
use tokio::process::Command;

/// Bound on one `docker …` or `docker-compose …` command (an `up` pulls nothing, but starts
/// four containers on a busy machine).
const DOCKER_TIMEOUT: Duration = Duration::from_secs(180);

/// How many nodes `docker-compose.yml` defines (strata-4 under the `scale` profile).
pub const MAX_NODES: usize = 4;

/// What to start.
#[derive(Clone, Debug)]
pub struct ContainerConfig {
    /// The image (`cluster/build-image.sh` builds `strata:dev`).
    pub image: String,
    /// The repository's `docker-compose.yml`.
    pub compose_file: PathBuf,
}

/// A compose project started for one run; brought down with its volumes when dropped.
pub(crate) struct Compose {
    project: String,
    files: Vec<PathBuf>,
    image: String,
    prefix: u16,
    services: Vec<String>,
    log_dir: PathBuf,
}

/// `docker compose` where the plugin is installed, else `docker-compose`.
fn compose_program() -> Vec<&'static str> {
    let plugin = std::process::Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if plugin {
        vec!["docker", "compose"]
    } else {
        vec!["docker-compose"]
    }
}

/// Runs `program args…` within [`DOCKER_TIMEOUT`]; its stdout if it succeeds.
pub(crate) async fn run(
    program: &[&str],
    args: &[&str],
    env: &[(String, String)],
) -> Result<String> {
    let (first, rest) = program.split_first().context("no program")?;
    let mut command = Command::new(first);
    command
        .args(rest)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let shown = || format!("{} {}", program.join(" "), args.join(" "));
    let out = tokio::time::timeout(DOCKER_TIMEOUT, command.output())
        .await
        .with_context(|| format!("`{}` timed out", shown()))?
        .with_context(|| format!("running `{}`", shown()))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `docker args…`.
pub(crate) async fn docker(args: &[&str]) -> Result<String> {
    run(&["docker"], args, &[]).await
}

/// Whether every port of `prefix` (P10, P11, … P41) can be bound on 127.0.0.1, UDP and TCP.
fn prefix_free(prefix: u16) -> bool {
    let mut held = Vec::new();
    for n in [10, 11, 20, 21, 30, 31, 40, 41] {
        let port = prefix * 100 + n;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match (UdpSocket::bind(addr), TcpListener::bind(addr)) {
            (Ok(u), Ok(t)) => held.push((u, t)),
            _ => return false,
        }
    }
    true
}

impl Compose {
    /// Starts nodes 1..=`nodes` of `docker-compose.yml` in a project of their own, with
    /// `env` for every node, and waits until `up` returns (the containers are started).
    pub(crate) async fn up(
        config: &ContainerConfig,
        nodes: usize,
        env: &[(String, String)],
        log_dir: &Path,
    ) -> Result<Self> {
        if !(1..=MAX_NODES).contains(&nodes) {
            bail!("docker-compose.yml defines 1 to {MAX_NODES} nodes, not {nodes}");
        }
        docker(&["image", "inspect", "--format", "{{.Id}}", &config.image])
            .await
            .with_context(|| {
                format!(
                    "no image {}: build it with cluster/build-image.sh",
                    config.image
                )
            })?;
        let mut prefixes: Vec<u16> = (20..=64).collect();
        prefixes.shuffle(&mut rand::rng());
        let prefix = prefixes
            .into_iter()
            .find(|&p| prefix_free(p))
            .context("no free STRATA_PORT_PREFIX on 127.0.0.1")?;
        let project = format!(
            "strata-chaos-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        );
        std::fs::create_dir_all(log_dir)?;
        let services: Vec<String> = (1..=nodes).map(|n| format!("strata-{n}")).collect();
        let mut override_yaml = String::from(
            "# Written by strata-chaos for one run: the run's node settings, no restart policy.\nservices:\n",
        );
        for service in &services {
            override_yaml.push_str(&format!(
                "  {service}:\n    restart: \"no\"\n    environment:\n      STRATA_LOG: \"info\"\n"
            ));
            for (k, v) in env {
                override_yaml.push_str(&format!("      {k}: \"{v}\"\n"));
            }
        }
        let override_file = log_dir.join("compose.override.yml");
        std::fs::write(&override_file, override_yaml)
            .with_context(|| format!("writing {}", override_file.display()))?;
        let compose = Self {
            project,
            files: vec![config.compose_file.clone(), override_file],
            image: config.image.clone(),
            prefix,
            services,
            log_dir: log_dir.to_owned(),
        };
        println!(
            "  compose project {} (image {}, ports 127.0.0.1:{prefix}10…{prefix}{}1)",
            compose.project, compose.image, nodes
        );
        let mut args = vec!["up", "-d"];
        args.extend(compose.services.iter().map(String::as_str));
        compose.compose(&args).await?;
        Ok(compose)
    }

    /// The environment every compose command runs with.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("COMPOSE_PROJECT_NAME".into(), self.project.clone()),
            ("STRATA_IMAGE".into(), self.image.clone()),
            ("STRATA_PORT_PREFIX".into(), self.prefix.to_string()),
        ]
    }

    fn file_args(&self) -> Vec<String> {
        let mut args = vec!["--profile".to_owned(), "scale".to_owned()];
        for file in &self.files {
            args.push("-f".into());
            args.push(file.display().to_string());
        }
        args
    }

    /// `docker compose -f … args…` in this project.
    pub(crate) async fn compose(&self, args: &[&str]) -> Result<String> {
        let program = compose_program();
        let files = self.file_args();
        let mut all: Vec<&str> = files.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        run(&program, &all, &self.env()).await
    }

    /// The container id of node `id`.
    pub(crate) async fn container(&self, id: u64) -> Result<String> {
        let service = format!("strata-{id}");
        let out = self.compose(&["ps", "-q", &service]).await?;
        let container = out.trim().to_owned();
        if container.is_empty() {
            bail!("no container for {service}");
        }
        Ok(container)
    }

    /// The address the host reaches node `id` at (QUIC), and its admin address.
    pub(crate) fn published(&self, id: u64) -> (SocketAddr, SocketAddr) {
        let port = |n: u64| self.prefix * 100 + u16::try_from(n).unwrap_or(0);
        (
            SocketAddr::from(([127, 0, 0, 1], port(id * 10))),
            SocketAddr::from(([127, 0, 0, 1], port(id * 10 + 1))),
        )
    }

    /// Copies the certificates out of the `certs` volume (through node 1's container) to
    /// `dir`.
    pub(crate) async fn copy_certs(&self, dir: &Path) -> Result<()> {
        let container = self.container(1).await?;
        std::fs::create_dir_all(dir)?;
        let source = format!("{container}:/var/lib/strata/certs/.");
        let dest = dir.display().to_string();
        docker(&["cp", &source, &dest]).await?;
        Ok(())
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        // Blocking on purpose: this runs once, at the end of a run (or while unwinding), and
        // must finish before the process exits.
        let program = compose_program();
        let Some((first, rest)) = program.split_first() else {
            return;
        };
        for service in &self.services {
            let log = self.log_dir.join(format!("{service}.log"));
            if let Ok(file) = std::fs::File::create(&log) {
                let errors = file.try_clone().map(Stdio::from).unwrap_or(Stdio::null());
                let _ = std::process::Command::new(first)
                    .args(rest)
                    .args(self.file_args())
                    .args(["logs", "--no-color", service])
                    .envs(self.env())
                    .stdin(Stdio::null())
                    .stdout(file)
                    .stderr(errors)
                    .status();
            }
        }
        let _ = std::process::Command::new(first)
            .args(rest)
            .args(self.file_args())
            .args(["down", "-v", "--remove-orphans", "--timeout", "5"])
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The main process id of a running container (its network namespace is `/proc/PID/ns/net`).
async fn pid_of(container: &str) -> Result<String> {
    let pid = docker(&["inspect", "--format", "{{.State.Pid}}", container]).await?;
    let pid = pid.trim().to_owned();
    if pid.is_empty() || pid == "0" {
        bail!("container {container} is not running");
    }
    Ok(pid)
}

/// The container's addresses on its networks.
pub(crate) async fn ips_of(container: &str) -> Result<Vec<String>> {
    let out = docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        container,
    ])
    .await?;
    Ok(out.split_whitespace().map(str::to_owned).collect())
}

/// `iptables args…` inside the network namespace of `container`.
async fn iptables_in(container: &str, args: &[&str]) -> Result<()> {
    let pid = pid_of(container).await?;
    let mut all = vec!["-t", &pid, "-n", "iptables", "-w"];
    all.extend_from_slice(args);
    run(&["nsenter"], &all, &[]).await.map(drop)
}

/// Drops every packet between `container` and the addresses `peers`, both ways.
pub(crate) async fn isolate(container: &str, peers: &[String]) -> Result<()> {
    for ip in peers {
        iptables_in(container, &["-I", "INPUT", "-s", ip, "-j", "DROP"]).await?;
        iptables_in(container, &["-I", "OUTPUT", "-d", ip, "-j", "DROP"]).await?;
    }
    Ok(())
}

/// Removes what [`isolate`] added (the container's own filter table, which Docker leaves
/// empty).
pub(crate) async fn reconnect(container: &str) -> Result<()> {
    iptables_in(container, &["-F", "INPUT"]).await?;
    iptables_in(container, &["-F", "OUTPUT"]).await
}
