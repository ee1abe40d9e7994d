//! Harness for end-to-end tests: real `strata` processes on free ports.
//!
//! The files in `tests/` are integration tests of the `strata-cli` package (see its
//! `Cargo.toml`), so Cargo builds the `strata` binary they run, fresh, before them.
//!
//! [`Cluster`] makes development certificates with `strata certs init`, and [`TestNode`]
//! starts `strata node` on `127.0.0.1:0` (the OS picks free QUIC and admin HTTP ports; the
//! node prints the addresses it got) with its own data directory, and kills the process when dropped — also
//! when a test fails. Nothing here uses fixed ports or addresses outside this machine.

// Each test file uses the part of the harness it needs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The `strata` binary Cargo built for these tests.
pub(crate) fn strata_bin() -> Result<PathBuf> {
    Ok(PathBuf::from(env!("CARGO_BIN_EXE_strata")))
}

/// Runs `strata ARGS` to completion.
pub(crate) fn strata(args: &[&str]) -> Result<Output> {
    Ok(Command::new(strata_bin()?).args(args).output()?)
}

/// A directory of development certificates and the data directories of its nodes.
pub(crate) struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Makes certificates in a fresh temporary directory.
    pub(crate) fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs");
        let out = strata(&["certs", "init", "--out", certs.to_str().context("path")?])?;
        if !out.status.success() {
            bail!(
                "strata certs init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self { dir })
    }

    /// The certificates directory.
    pub(crate) fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// A data directory for node `name`.
    pub(crate) fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a node with data directory `name` and extra `strata node` arguments and
    /// environment.
    pub(crate) fn start(
        &self,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<TestNode> {
        TestNode::start(&self.certs(), &self.data_dir(name), args, env)
    }

    /// Starts cluster member `id` at a fixed address (so it can be restarted there), with
    /// data directory `node-ID`, bootstrapping a new cluster (`seed` none) or joining
    /// through `seed`.
    pub(crate) fn start_member(
        &self,
        id: u64,
        listen: SocketAddr,
        seed: Option<SocketAddr>,
    ) -> Result<TestNode> {
        self.start_member_with(id, listen, seed, &[])
    }

    /// [`Cluster::start_member`] with extra environment.
    pub(crate) fn start_member_with(
        &self,
        id: u64,
        listen: SocketAddr,
        seed: Option<SocketAddr>,
        env: &[(&str, &str)],
    ) -> Result<TestNode> {
        let admin = free_tcp_port()?;
        let (id, listen, admin) = (id.to_string(), listen.to_string(), admin.to_string());
        let mut args = vec![
            "--node-id",
            id.as_str(),
            "--listen",
            listen.as_str(),
            "--admin",
            admin.as_str(),
        ];
        let seed = seed.map(|s| s.to_string());
        match &seed {
            Some(seed) => args.extend(["--join", seed.as_str()]),
            None => args.push("--bootstrap"),
        }
        TestNode::start_with(
            &self.certs(),
            &self.data_dir(&format!("node-{id}")),
            &args,
            env,
        )
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_udp_port() -> Result<SocketAddr> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(socket.local_addr()?)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_tcp_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A running `strata node` process, killed on drop.
pub(crate) struct TestNode {
    child: Option<Child>,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    stderr: mpsc::Receiver<String>,
}

impl TestNode {
    /// Starts `strata node` and waits (at most 30 s) until it says where it listens.
    pub(crate) fn start(
        certs: &Path,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        if !args.contains(&"--admin") {
            all.extend(["--admin", "127.0.0.1:0"]);
        }
        all.extend_from_slice(args);
        Self::start_with(certs, data_dir, &all, env)
    }

    /// Starts `strata node` with exactly these arguments (besides data and certificates).
    pub(crate) fn start_with(
        certs: &Path,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut command = Command::new(strata_bin()?);
        command
            .args(["node", "--data-dir"])
            .arg(data_dir)
            .arg("--certs")
            .arg(certs)
            .args(args)
            .env(
                "STRATA_LOG",
                std::env::var("STRATA_TEST_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().context("starting strata node")?;
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (addr_tx, addr_rx) = mpsc::channel();
        let (admin_tx, admin_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = addr_tx.send(addr.trim().to_owned());
                }
                if let Some(addr) = line.split("admin http on ").nth(1) {
                    let _ = admin_tx.send(addr.trim().to_owned());
                }
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        // STRATA_TEST_LOG_DIR keeps every node's log in a file for post-mortems.
        let mut keep = std::env::var_os("STRATA_TEST_LOG_DIR").and_then(|dir| {
            let path = Path::new(&dir).join(format!("node-{}.log", child.id()));
            std::fs::File::create(path).ok()
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = keep.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
                let _ = err_tx.send(line);
            }
        });
        let mut node = Self {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            stderr: err_rx,
        };
        match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => {
                node.addr = addr
                    .parse()
                    .with_context(|| format!("bad address {addr:?}"))?
            }
            Err(_) => bail!("node did not start; its log:\n{}", node.log()),
        }
        // Printed right after the QUIC address.
        if let Ok(admin) = admin_rx.recv_timeout(Duration::from_secs(5)) {
            node.admin = admin.parse().ok();
        }
        Ok(node)
    }

    /// Where the node listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the node's admin HTTP endpoint listens.
    pub(crate) fn admin(&self) -> Result<SocketAddr> {
        self.admin
            .context("the node did not print its admin address")
    }

    /// `GET path` on the node's admin endpoint: the status code and the body.
    pub(crate) fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.admin()?, path)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the process in KiB (Linux), if it can be read.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Everything the node has logged so far.
    pub(crate) fn log(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Sends SIGTERM and waits (at most 30 s) for the process to exit; its exit status.
    pub(crate) fn terminate(mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("node did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL).
    pub(crate) fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain HTTP/1.1 `GET` (the admin endpoint closes nothing early, so the whole answer is
/// read until the server closes the connection): the status code and the body.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("the answer is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of the HTTP header")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()
        .context("a bad status code")?;
    Ok((status, body.to_owned()))
}
