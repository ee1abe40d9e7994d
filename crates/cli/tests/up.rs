//! `strata up` end to end: the real binary starts a 3-node cluster in a temporary directory,
//! the CLI works against it through `cluster.env`, Ctrl-C (SIGINT) stops every node, fewer
//! `--nodes` on the same directory is refused, and a second run reuses the same addresses.
//!
//! Every wait is bounded, and a guard kills `strata up` and its nodes if the test fails.

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// Up to the members table: certificates, three node starts and the cluster forming
/// (`strata up` itself gives up after 30 s per start and 120 s to form).
const UP_TIMEOUT: Duration = Duration::from_secs(180);
/// One CLI command against the cluster.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// From SIGINT to the exit of `strata up` (its nodes have 15 s to stop).
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// The line `strata up` ends its usage hints with, once the cluster is up.
const READY_LINE: &str = "Press Ctrl-C to stop the cluster.";

/// A running `strata up`; on drop (a failed test), it and its nodes are killed.
struct Up {
    child: Option<Child>,
    stdout: mpsc::Receiver<String>,
    stdout_seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// Node pids seen while the cluster was up.
    nodes: Vec<u32>,
}

impl Up {
    fn start(data_dir: &Path, nodes: u32) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["up", "--nodes", &nodes.to_string(), "--data-dir"])
            .arg(data_dir)
            .env("STRATA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut sink = sink.lock().unwrap();
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        Self {
            child: Some(child),
            stdout,
            stdout_seen: Vec::new(),
            stderr,
            nodes: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn diagnostics(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout_seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// Reads stdout until a line contains `needle` (bounded by `timeout`); panics with what
    /// `strata up` said if it exits or the time runs out first.
    fn wait_for_line(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .stdout
                .recv_timeout(left.min(Duration::from_millis(500)))
            {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stdout_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Give the stderr reader a moment to collect the error.
                    std::thread::sleep(Duration::from_millis(200));
                    panic!(
                        "strata up ended before printing {needle:?}\n{}",
                        self.diagnostics()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "strata up did not print {needle:?} within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
        }
    }

    /// Records the node processes (children of `strata up`).
    fn record_nodes(&mut self) {
        self.nodes = children_of(self.pid());
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.pid()).unwrap()).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits (bounded) for `strata up` to exit; its status.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "strata up did not exit within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The rest of stdout, once `strata up` has exited.
    fn rest_of_stdout(&mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(line) = self
            .stdout
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.stdout_seen.push(line);
        }
        self.stdout_seen.clone()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let mut pids = children_of(child.id());
        pids.extend(&self.nodes);
        for pid in pids {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Pids of the live processes whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|(state, ppid)| ppid == parent && state != 'Z'))
        .collect()
}

/// (state, parent pid) of a process, if it exists.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID …"; COMM may contain spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether process `pid` has gone (or is a zombie: dead, not yet reaped).
fn is_gone(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|(state, _)| state == 'Z')
}

/// Runs a command to completion, killing it if it takes longer than `timeout`.
fn run_bounded(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let stderr = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// `STRATA_ADDR` and `STRATA_CERTS` from `cluster.env`.
fn read_env_file(path: &Path) -> (String, PathBuf) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut addr = None;
    let mut certs = None;
    for line in text.lines() {
        let Some((name, value)) = line.strip_prefix("export ").and_then(|l| l.split_once('='))
        else {
            continue;
        };
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(value)
            .to_owned();
        match name {
            "STRATA_ADDR" => addr = Some(value),
            "STRATA_CERTS" => certs = Some(PathBuf::from(value)),
            _ => {}
        }
    }
    (
        addr.unwrap_or_else(|| panic!("no STRATA_ADDR in {text}")),
        certs.unwrap_or_else(|| panic!("no STRATA_CERTS in {text}")),
    )
}

/// Runs `strata ARGS` against the cluster that `cluster.env` names.
fn cli(env: &(String, PathBuf), args: &[&str]) -> Output {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(args)
            .env("STRATA_ADDR", &env.0)
            .env("STRATA_CERTS", &env.1)
            .env_remove("STRATA_NAMESPACE"),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "strata {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `strata members --json`: the members, checked to be `count` active ones with one leader.
fn active_members(env: &(String, PathBuf), count: usize) -> Vec<Json> {
    let out = cli(env, &["members", "--json"]);
    let json: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "members --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let members = match json {
        Json::Array(members) => members,
        Json::Object(mut object) => match object.remove("members") {
            Some(Json::Array(members)) => members,
            _ => panic!("members --json has no list of members: {object:?}"),
        },
        other => panic!("members --json is not a list: {other}"),
    };
    assert_eq!(members.len(), count, "{members:?}");
    for member in &members {
        assert_eq!(member["state"], "active", "{members:?}");
        for field in ["id", "addr", "admin", "leader"] {
            assert!(member.get(field).is_some(), "no {field} in {member}");
        }
    }
    let leaders = members.iter().filter(|m| m["leader"] == true).count();
    assert_eq!(leaders, 1, "{members:?}");
    members
}

fn admin_addrs(members: &[Json]) -> Vec<SocketAddr> {
    members
        .iter()
        .map(|m| m["admin"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Sends SIGINT to `strata up` and checks that it stops every node and exits 0.
fn interrupt_and_check_stopped(up: &mut Up, admins: &[SocketAddr]) {
    up.signal(rustix::process::Signal::INT);
    let status = up.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", up.diagnostics());
    let stdout = up.rest_of_stdout();
    assert_eq!(
        stdout.last().map(String::as_str),
        Some("stopped"),
        "{}",
        up.diagnostics()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !up.nodes.iter().all(|pid| is_gone(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let alive: Vec<u32> = up.nodes.iter().copied().filter(|p| !is_gone(*p)).collect();
    assert!(alive.is_empty(), "nodes still running: {alive:?}");
    for admin in admins {
        assert!(
            TcpStream::connect_timeout(admin, Duration::from_secs(1)).is_err(),
            "{admin} still answers after strata up stopped"
        );
    }
}

#[test]
fn up_runs_a_cluster_the_cli_can_use_and_stops_it_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("strata-data");

    // First run: three new nodes.
    let mut up = Up::start(&data_dir, 3);
    up.wait_for_line(READY_LINE, UP_TIMEOUT);
    up.record_nodes();
    assert_eq!(up.nodes.len(), 3, "node processes: {:?}", up.nodes);
    let table = up.stdout_seen.join("\n");
    for id in 1..=3 {
        assert!(table.contains(&format!("node-{id}")), "{table}");
    }

    let env = read_env_file(&data_dir.join("cluster.env"));
    assert!(
        env.1.is_absolute() && env.1.join("ca.pem").exists(),
        "{env:?}"
    );
    let members = active_members(&env, 3);
    assert!(
        members.iter().any(|m| m["addr"] == env.0.as_str()),
        "cluster.env names {}, not a member: {members:?}",
        env.0
    );
    cli(&env, &["set", "k", "v"]);
    let got = cli(&env, &["get", "k"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim_end(), "v");

    let admins = admin_addrs(&members);
    interrupt_and_check_stopped(&mut up, &admins);
    drop(up);

    // Fewer nodes than the directory holds: refused before anything starts.
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["up", "--nodes", "2", "--data-dir"])
            .arg(&data_dir),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("strata leave"), "{stderr}");

    // Second run on the same directory: the same members on the same addresses.
    let mut up = Up::start(&data_dir, 3);
    up.wait_for_line(READY_LINE, UP_TIMEOUT);
    up.record_nodes();
    assert_eq!(up.nodes.len(), 3, "node processes: {:?}", up.nodes);
    assert_eq!(read_env_file(&data_dir.join("cluster.env")), env);
    let again = active_members(&env, 3);
    let addrs = |members: &[Json]| {
        let mut addrs: Vec<(String, String)> = members
            .iter()
            .map(|m| (m["addr"].to_string(), m["admin"].to_string()))
            .collect();
        addrs.sort();
        addrs
    };
    assert_eq!(addrs(&again), addrs(&members));
    interrupt_and_check_stopped(&mut up, &admins);
}
