//! [`CacheError`]: why a call of a typed cache ([`EmbeddingCache`](crate::EmbeddingCache),
//! [`ArtifactCache`](crate::ArtifactCache)) failed.
//!
//! Input is checked before anything is sent, so every variant but [`CacheError::Client`],
//! [`CacheError::WrongKind`] and [`CacheError::Corrupt`] means that nothing was stored. A miss
//! is not an error: it is `Ok(None)`.

use strata_proto::DType;

use crate::error::Error;

/// Why a typed-cache call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The text of an embedding is empty: every empty text would share one key.
    #[error("the text to embed is empty")]
    EmptyText,
    /// The model name of an embedding is empty.
    #[error("the model name is empty")]
    EmptyModel,
    /// A dtype name that is not one of the tensor element types.
    #[error(
        "unknown dtype {0:?}: expected f16, bf16, f32, f64, i8, u8, i16, i32 or i64 (or the numpy names float16, bfloat16, float32, ...)"
    )]
    UnknownDType(String),
    /// Array data whose length does not match its shape and element type.
    #[error("a {dtype} array of shape {shape:?} needs {expected} bytes, got {actual}")]
    ShapeMismatch {
        /// The element type.
        dtype: DType,
        /// The claimed shape.
        shape: Vec<usize>,
        /// Bytes the shape needs (`usize::MAX` if it overflows).
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// An embedding was read as another element type than the one stored.
    #[error("the stored embedding holds {stored} elements, not {requested}")]
    DTypeMismatch {
        /// The element type asked for.
        requested: DType,
        /// The element type stored.
        stored: DType,
    },
    /// A video id that cannot be part of a key or a path (empty, `.`/`..`, a `/`, `\`, `:`,
    /// NUL or another control character).
    #[error("invalid video id {video:?}: {reason}")]
    InvalidVideoId {
        /// The offending id, cut to a printable length.
        video: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// Bytes given as a JPEG image that do not decode as one.
    #[error("not a JPEG image: {0}")]
    NotJpeg(String),
    /// A raw frame that cannot be encoded (wrong shape, empty, larger than JPEG allows).
    #[error("invalid frame: {0}")]
    InvalidFrame(String),
    /// Other input that breaks a rule (a key that would be too long, frames without
    /// timestamps, an image for a frame the metadata does not list, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The entry under a key is not the kind of value this cache stores there (another
    /// program wrote it).
    #[error("{key}: expected {expected}, found {found}")]
    WrongKind {
        /// The key read.
        key: String,
        /// What the cache stores there.
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// The entry under a key has the right kind but does not decode.
    #[error("{key}: stored data does not decode: {reason}")]
    Corrupt {
        /// The key read.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// The cluster call failed.
    #[error(transparent)]
    Client(#[from] Error),
    /// A codec task could not finish (it panicked or the runtime is shutting down).
    #[error("codec task failed: {0}")]
    Task(String),
}

impl CacheError {
    /// Whether the same call may succeed if tried again: only cluster failures that say so
    /// (see [`Error::is_retryable`]). Bad input fails the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            CacheError::Client(e) => e.is_retryable(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cluster_failures_can_be_retried() {
        assert!(!CacheError::EmptyText.is_retryable());
        assert!(CacheError::Client(Error::Routing("moving".into())).is_retryable());
        assert!(!CacheError::Client(Error::Protocol("bad".into())).is_retryable());
    }
}
