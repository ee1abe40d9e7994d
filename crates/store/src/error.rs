//! The store's error enum.
//!
//! A miss is not an error (`Ok(None)`). Errors say what failed and where, and whether nothing
//! was changed: every failed write leaves what was stored before intact.

use std::io;
use std::path::PathBuf;

/// Result with the store [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a tier.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The disk (or the filesystem's quota) is full. Nothing already stored was changed.
    #[error("no space left for {path}: the write was refused and stored entries are intact")]
    NoSpace {
        /// The file that could not be written.
        path: PathBuf,
    },
    /// Any other I/O failure, with the operation and path.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`write`, `rename`, `read`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A value larger than the tier can ever hold.
    #[error("entry of {size} bytes exceeds the tier's capacity of {capacity} bytes")]
    TooLarge {
        /// The entry's size.
        size: u64,
        /// The tier's capacity.
        capacity: u64,
    },
    /// Another process holds the tier's directory.
    #[error("{path} is in use by another process (lock held)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The directory was written by an incompatible version of Strata.
    #[error("{path}: on-disk format {found} is not supported (expected {expected})")]
    Format {
        /// The format marker file.
        path: PathBuf,
        /// The format version found.
        found: String,
        /// The format version this build reads.
        expected: u32,
    },
    /// A glob pattern that does not parse.
    #[error("invalid pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Configuration that cannot be used.
    #[error("configuration: {0}")]
    Config(String),
    /// An invalid key, namespace or value.
    #[error(transparent)]
    Proto(#[from] strata_proto::Error),
}

impl Error {
    /// Wraps an I/O error, turning "disk full" and "quota exceeded" into [`Error::NoSpace`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        // ENOSPC = 28, EDQUOT = 122 on Linux. `StorageFull` covers ENOSPC portably.
        if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(122) {
            return Error::NoSpace { path };
        }
        Error::Io { op, path, source }
    }
}
