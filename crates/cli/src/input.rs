//! Where a value to store comes from: the command line, a file, or standard input.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

/// The bytes of a value given as `VALUE`, `--file PATH`, or (neither) on stdin.
pub(crate) fn read_value(value: Option<String>, file: Option<&Path>) -> Result<Vec<u8>> {
    match (value, file) {
        (Some(v), None) => Ok(v.into_bytes()),
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        }
        (None, None) => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the value from stdin")?;
            Ok(buf)
        }
        (Some(_), Some(_)) => anyhow::bail!("give a VALUE or --file, not both"),
    }
}
