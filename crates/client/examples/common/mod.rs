//! What the examples share: how to reach the cluster `strata up` runs, synthetic data, and
//! checks that make an example exit non-zero when a result is wrong.
//!
//! The cluster is found as the strata CLI finds it: `STRATA_ADDR` (any member, `HOST:PORT`)
//! and `STRATA_CERTS` (the certificates directory, default `./strata-data/certs`). Without
//! `STRATA_ADDR`, the address is read from `./strata-data/cluster.env`, which `strata up`
//! writes, so running an example from the directory `strata up` runs in needs no setup.
//! `STRATA_CLUSTER_DIR` overrides `./strata-data` for both defaults.

#![allow(dead_code)] // Each example uses part of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ndarray::Array3;
use strata_client::{Client, ClientConfig};

/// The data directory of `strata up`: `STRATA_CLUSTER_DIR`, else `./strata-data`.
pub(crate) fn data_dir() -> PathBuf {
    std::env::var_os("STRATA_CLUSTER_DIR")
        .map_or_else(|| PathBuf::from("strata-data"), PathBuf::from)
}

/// The seed address and certificates directory, from the environment or `cluster.env`.
pub(crate) fn target() -> Result<(String, PathBuf)> {
    let env_file = data_dir().join("cluster.env");
    let from_file = |name: &str| -> Option<String> {
        let text = std::fs::read_to_string(&env_file).ok()?;
        text.lines().find_map(|line| {
            let value = line
                .strip_prefix("export ")?
                .strip_prefix(name)?
                .strip_prefix('=')?;
            Some(value.trim_matches('\'').to_owned())
        })
    };
    let addr = match std::env::var("STRATA_ADDR") {
        Ok(addr) => addr,
        Err(_) => from_file("STRATA_ADDR").with_context(|| {
            format!(
                "set STRATA_ADDR (e.g. `source {}`), or start `strata up` in this directory",
                env_file.display()
            )
        })?,
    };
    let certs = std::env::var_os("STRATA_CERTS")
        .map(PathBuf::from)
        .or_else(|| from_file("STRATA_CERTS").map(PathBuf::from))
        .unwrap_or_else(|| data_dir().join("certs"));
    Ok((addr, certs))
}

/// Connects to the cluster and says where.
pub(crate) async fn connect() -> Result<Client> {
    let (addr, certs) = target()?;
    let client = Client::connect(ClientConfig::new(addr.clone(), &certs))
        .await
        .with_context(|| {
            format!(
                "connecting to {addr} with the certificates in {}",
                certs.display()
            )
        })?;
    println!(
        "connected to {addr} (certificates {}): ring epoch {}, {} members",
        certs.display(),
        client.ring().epoch,
        client.ring().members.len()
    );
    Ok(client)
}

/// Fails with `what` unless `ok`.
pub(crate) fn check(ok: bool, what: impl std::fmt::Display) -> Result<()> {
    if ok {
        println!("  ok: {what}");
        Ok(())
    } else {
        bail!("check failed: {what}")
    }
}

/// A 1280×720-like RGB frame: smooth gradients with a little deterministic noise, which
/// compresses like a video frame.
pub(crate) fn frame(height: usize, width: usize, seed: u32) -> Array3<u8> {
    Array3::from_shape_fn((height, width, 3), |(y, x, c)| {
        let noise = (x as u32)
            .wrapping_mul(2_654_435_761)
            .wrapping_add((y as u32).wrapping_mul(40_503))
            .wrapping_add(seed.wrapping_mul(97))
            >> 29;
        ((x / 5 + y / 3 + 60 * c + seed as usize * 7) % 256) as u8 ^ noise as u8
    })
}

/// Mean absolute difference per sample of two frames of the same shape.
pub(crate) fn mean_error(a: &Array3<u8>, b: &Array3<u8>) -> f64 {
    let sum: f64 = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum();
    sum / a.len() as f64
}

/// Every file below `dir`, relative to it, sorted.
pub(crate) fn files_below(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if let Ok(rel) = path.strip_prefix(base) {
                out.push(rel.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The node data directories of a `strata up` cluster on this machine (`node-N`), if the
/// data directory is here.
pub(crate) fn node_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(data_dir()) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("node-"))
        })
        .collect();
    dirs.sort();
    dirs
}

/// Where `relative` (below a profile's directory) was written on the local nodes: nodes
/// write through to disk in the background, so this waits up to 10 s. Empty if the
/// cluster's data directory is not on this machine.
pub(crate) fn find_on_nodes(profile: &str, relative: &str) -> Vec<PathBuf> {
    let nodes = node_dirs();
    if nodes.is_empty() {
        return Vec::new();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<PathBuf> = nodes
            .iter()
            .map(|n| n.join("cache").join(profile).join(relative))
            .filter(|p| p.exists())
            .collect();
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
