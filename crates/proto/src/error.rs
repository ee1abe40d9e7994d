//! The error enum shared by everything in `proto`.
//!
//! Variants are semantic: each says which rule a piece of input broke, so that a node can send
//! it back to a client verbatim and a person can act on it. A cache miss is never an error.

/// Result with the proto [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a key, a value or an encoded payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The namespace breaks the naming rules.
    #[error("invalid namespace {namespace:?}: {reason}")]
    InvalidNamespace {
        /// The offending namespace, cut to a printable length.
        namespace: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// The key breaks the key rules.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key, cut to a printable length.
        key: String,
        /// Which rule it broke.
        reason: String,
    },
    /// A value is malformed (for example a tensor whose data does not match its shape).
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A tensor was read as an element type other than the one it holds.
    #[error("tensor holds {found} elements, not {expected}")]
    DTypeMismatch {
        /// The element type asked for.
        expected: crate::DType,
        /// The element type the tensor holds.
        found: crate::DType,
    },
    /// Zero-copy access was asked of data that is not aligned for its element type; use the
    /// copying accessor instead.
    #[error("tensor data is not aligned for {0} elements; use Tensor::to_array")]
    Misaligned(crate::DType),
    /// Stored or received bytes do not decode into what their metadata says they are.
    #[error("corrupt payload: {0}")]
    Corrupt(String),
    /// A version string could not be parsed.
    #[error("invalid version {0:?}: expected PHYSICAL.LOGICAL@NODE")]
    InvalidVersion(String),
    /// A remote clock is further ahead of ours than the configured drift allows.
    #[error("clock drift too large: remote {remote_ms} ms is {ahead_ms} ms ahead of local time")]
    ClockDrift {
        /// The remote physical time in milliseconds.
        remote_ms: u64,
        /// How far ahead of local time it is.
        ahead_ms: u64,
    },
}

/// Cuts user input to a length that is safe to echo in an error message.
pub(crate) fn printable(input: &str) -> String {
    const MAX: usize = 80;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}
