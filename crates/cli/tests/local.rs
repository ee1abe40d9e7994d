//! The `strata` binary's `local` commands, run as a real process on a temporary data
//! directory: the exit codes and output of the CLI contract.

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::path::Path;
use std::process::{Command, Output};

fn strata(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("local")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn set_get_keys_del_with_contract_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(
        strata(d, &["set", "video:abc123:transcript", "hello world"])
            .status
            .success()
    );
    assert!(
        strata(d, &["--namespace", "other", "set", "x", "y"])
            .status
            .success()
    );

    let got = strata(d, &["get", "video:abc123:transcript"]);
    assert!(got.status.success());
    assert_eq!(got.stdout, b"hello world");

    let missing = strata(d, &["get", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());

    let keys = strata(d, &["keys", "video:*", "--meta"]);
    let text = String::from_utf8(keys.stdout).unwrap();
    assert!(
        text.starts_with("video:abc123:transcript\t11 bytes\tbytes"),
        "{text}"
    );

    let json = strata(d, &["--json", "keys"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        rows.as_array().unwrap().len(),
        1,
        "namespaces are separate: {rows}"
    );

    assert!(
        strata(d, &["del", "video:abc123:transcript"])
            .status
            .success()
    );
    assert_eq!(
        strata(d, &["del", "video:abc123:transcript"]).status.code(),
        Some(1)
    );
    assert!(
        d.join("other/x.bin").exists(),
        "the data directory is the filesystem tier"
    );
}

#[test]
fn bad_input_is_a_clear_error_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad_key = strata(dir.path(), &["set", "a\u{1}b", "v"]);
    assert_eq!(bad_key.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_key.stderr).contains("control character"));
    let bad_ns = strata(dir.path(), &["--namespace", "../etc", "get", "k"]);
    assert_eq!(bad_ns.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_ns.stderr).contains("invalid namespace"));
}
