//! The cluster commands' handling of bad input and unreachable clusters, run as a real
//! process: clear messages on stderr and exit 2, before anything is sent. (Their behaviour
//! against a running node is covered by the end-to-end tests that start real nodes.)

#![allow(clippy::unwrap_used)] // Test helpers panic on failure by design.

use std::path::Path;
use std::process::{Command, Output};

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
