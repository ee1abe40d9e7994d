//! The cluster commands run as a real process: their handling of bad input and unreachable
//! clusters (clear messages on stderr and exit 2, before anything is sent), and their output
//! against real nodes — one standalone node, and a two-member cluster that one member
//! leaves. (The end-to-end tests of the repository's `tests/` folder cover the rest.)

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env_remove("STRATA_ADDR")
        .env_remove("STRATA_CERTS")
        .env_remove("STRATA_NAMESPACE")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn with_target<'a>(certs: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(["--addr", "127.0.0.1:9", "--certs", certs.to_str().unwrap()]);
    all
}

#[test]
fn the_cluster_address_is_required() {
    let out = strata(&["get", "k"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--addr"), "{}", stderr(&out));
}

#[test]
fn the_address_comes_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["stats", "--certs", dir.path().to_str().unwrap()])
        .env("STRATA_ADDR", "127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Got past argument parsing to loading the certificates.
    assert!(stderr(&out).contains("ca.pem"), "{}", stderr(&out));
}

#[test]
fn missing_certificates_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = strata(&with_target(dir.path(), &["get", "k"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.starts_with("strata: "), "{err}");
    assert!(
        err.contains(&dir.path().join("ca.pem").display().to_string()),
        "{err}"
    );
}

#[test]
fn bad_keys_and_namespaces_fail_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let out = strata(&with_target(dir.path(), &["set", "a\u{1}b", "v"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("control character"),
        "{}",
        stderr(&out)
    );
    let out = strata(&with_target(
        dir.path(),
        &["del", "k", "--namespace", "../etc"],
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid namespace"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn set_takes_a_value_or_a_file_not_both() {
    let dir = tempfile::tempdir().unwrap();
    let out = strata(&with_target(dir.path(), &["set", "k", "v", "--file", "x"]));
    assert_eq!(out.status.code(), Some(2));
    let out = strata(&with_target(
        dir.path(),
        &["set", "k", "--file", "/nonexistent/strata-value"],
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/strata-value"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bench_checks_its_options() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["bench", "--ratio", "x"][..],
        &["bench", "--ratio", "0:0"],
        &["bench", "--duration", "1", "--count", "5"],
        &["bench", "--count", "0"],
        &["bench", "--concurrency", "0"],
    ] {
        let out = strata(&with_target(dir.path(), args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

// ---------------------------------------------------------------------------------------
// Against real nodes

/// A `strata node` process, killed on drop.
struct Node {
    child: Child,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Certificates in `dir/certs`.
fn certs_init(dir: &Path) -> String {
    let certs = dir.join("certs");
    let out = strata(&["certs", "init", "--out", certs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    certs.to_str().unwrap().to_owned()
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port(udp: bool) -> String {
    if udp {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().to_string()
    } else {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }
}

/// Starts `strata node ARGS` with data in `dir/NAME` and waits until it says where it
/// listens.
fn start_node(dir: &Path, certs: &str, name: &str, args: &[&str]) -> Node {
    let data = dir.join(name);
    let admin = free_port(false);
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([
            "node",
            "--data-dir",
            data.to_str().unwrap(),
            "--certs",
            certs,
        ])
        .args(["--admin", admin.as_str()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the node says where it listens");
    Node { child, addr }
}

/// Runs `strata COMMAND --addr ADDR --certs CERTS ARGS...`.
fn run(addr: &str, certs: &str, command: &str, args: &[&str]) -> Output {
    let mut all = vec![command, "--addr", addr, "--certs", certs];
    all.extend_from_slice(args);
    strata(&all)
}

fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn a_single_node_answers_the_cluster_commands() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs_init(dir.path());
    let node = start_node(dir.path(), &certs, "n1", &["--listen", "127.0.0.1:0"]);
    let run = |command: &str, args: &[&str]| run(&node.addr, &certs, command, args);

    assert!(
        run("set", &["video:1:transcript", "hello"])
            .status
            .success()
    );
    assert!(
        run("set", &["video:2:transcript", "world"])
            .status
            .success()
    );
    assert_eq!(run("get", &["video:1:transcript"]).stdout, b"hello");
    let missing = run("get", &["nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());
    let keys = stdout_json(&run("keys", &["video:*", "--json"]));
    assert_eq!(keys.as_array().unwrap().len(), 2, "{keys}");

    let stats = stdout_json(&run("stats", &["--json"]));
    let nodes = stats["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{stats}");
    assert_eq!(nodes[0]["addr"], node.addr.as_str());
    assert!(
        nodes[0]["stats"]["manager"]["sets"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    assert_eq!(stats["aggregate"]["nodes_reporting"], 1);
    assert_eq!(
        stats["aggregate"]["manager"]["sets"],
        nodes[0]["stats"]["manager"]["sets"]
    );
    let table = run("stats", &[]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NODE"), "{text}");
    assert!(text.contains("total"), "{text}");

    let members = stdout_json(&run("members", &["--json"]));
    let members = members.as_array().unwrap();
    assert_eq!(members.len(), 1);
    for field in ["id", "addr", "admin", "state", "leader", "partitions"] {
        assert!(members[0].get(field).is_some(), "{field} in {members:?}");
    }
    assert_eq!(members[0]["state"], "active");
    assert!(members[0]["leader"].is_boolean());

    let ring = stdout_json(&run("ring", &["--json"]));
    let partitions = ring["params"]["partitions"].as_u64().unwrap();
    assert!(partitions > 0);
    assert_eq!(ring["members"][0]["partitions"].as_u64(), Some(partitions));
    assert!(ring.get("table").is_none());
    let with_table = stdout_json(&run("ring", &["--json", "--table"]));
    assert_eq!(
        with_table["table"].as_array().unwrap().len() as u64,
        partitions
    );
    let text = run("ring", &[]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("epoch"),
        "{}",
        stderr(&text)
    );

    let cleared = run("clear", &["video:*"]);
    assert_eq!(String::from_utf8_lossy(&cleared.stdout).trim(), "cleared 2");

    let standalone = run("leave", &[]);
    assert_eq!(standalone.status.code(), Some(2));
    assert!(
        stderr(&standalone).contains("not part of a cluster"),
        "{}",
        stderr(&standalone)
    );
}

#[test]
fn leave_waits_until_the_member_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs_init(dir.path());
    let (a, b) = (free_port(true), free_port(true));
    let first = start_node(
        dir.path(),
        &certs,
        "node-1",
        &["--node-id", "1", "--listen", a.as_str(), "--bootstrap"],
    );
    let _second = start_node(
        dir.path(),
        &certs,
        "node-2",
        &[
            "--node-id",
            "2",
            "--listen",
            b.as_str(),
            "--join",
            a.as_str(),
        ],
    );
    // Wait for both members to be active and own partitions.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(&first.addr, &certs, "members", &["--json"]);
        if out.status.success() {
            let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let members = members.as_array().unwrap();
            if members.len() == 2
                && members
                    .iter()
                    .all(|m| m["state"] == "active" && m["partitions"].as_u64() > Some(0))
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the cluster did not form");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        run(&first.addr, &certs, "set", &["k", "v"])
            .status
            .success()
    );

    // Asked through node 1 to remove node 2 (without a terminal: no progress bar).
    let out = run(
        &first.addr,
        &certs,
        "leave",
        &["--node", "2", "--timeout", "120"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("node 2 has left"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let members = stdout_json(&run(&first.addr, &certs, "members", &["--json"]));
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");
    let stranger = run(&first.addr, &certs, "leave", &["--node", "999"]);
    assert_eq!(stranger.status.code(), Some(2));
    assert!(
        stderr(&stranger).contains("not a member"),
        "{}",
        stderr(&stranger)
    );
    assert_eq!(run(&first.addr, &certs, "get", &["k"]).stdout, b"v");
}
