//! [`Error`]: why a client call failed, and whether trying again may help.
//!
//! A miss is not an error: `get` of a missing key is `Ok(None)`. Errors are values (`Clone`)
//! so that one failed batch request can be reported against each of its items.

use std::time::Duration;

use strata_proto::wire::{ErrorCode, WireError};

/// Why a client call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work (bad address, unreadable certificate file, ...).
    #[error("client configuration: {0}")]
    Config(String),
    /// TLS failed: bad certificate material, or a peer that refused the handshake (a node
    /// that does not trust our client certificate, or whose certificate we do not trust).
    #[error("TLS: {0}")]
    Tls(String),
    /// The node could not be reached.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address as configured.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// A handshake or a request attempt took longer than its configured bound.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out (`"connect to 10.0.0.1:7400"`, `"get request"`).
        what: String,
        /// The bound that was exceeded.
        after: Duration,
    },
    /// An established connection or stream broke before the answer arrived.
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost {
        /// The node's address as configured.
        addr: String,
        /// What the transport reported.
        reason: String,
    },
    /// The node refused or failed the request and said why.
    #[error("node error ({code:?}): {message}")]
    Server {
        /// What kind of failure.
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
    /// The client could not find the node that serves a request: the ring names no member
    /// for a key, or redirects did not converge on an owner (the cluster is changing faster
    /// than the client can follow, or nodes disagree about the ring). Retryable: a later
    /// attempt, once the ring has settled, may succeed.
    #[error("routing: {0}")]
    Routing(String),
    /// The node answered something that breaks the protocol (wrong answer kind, missing or
    /// corrupt value bytes, a frame over our limits).
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// Whether sending the same request again may succeed: timeouts, lost connections,
    /// routing that did not settle, and node errors that say so (`Unavailable`, `Timeout`,
    /// `NotReady`). Everything else would fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::ConnectionLost { .. } | Error::Routing(_) => true,
            Error::Server { code, .. } => code.is_retryable(),
            Error::Config(_) | Error::Tls(_) | Error::Connect { .. } | Error::Protocol(_) => false,
        }
    }

    /// The node's error code, if the node reported this error.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Error::Server {
            code: e.code,
            message: e.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retryable() {
        let lost = Error::ConnectionLost {
            addr: "a:1".into(),
            reason: "reset".into(),
        };
        let timeout = Error::Timeout {
            what: "get request".into(),
            after: Duration::from_secs(1),
        };
        assert!(lost.is_retryable());
        assert!(timeout.is_retryable());
        assert!(Error::Routing("redirected 8 times".into()).is_retryable());
        for code in [
            ErrorCode::Unavailable,
            ErrorCode::Timeout,
            ErrorCode::NotReady,
        ] {
            assert!(Error::from(WireError::new(code, "busy")).is_retryable());
        }
        for code in [
            ErrorCode::Malformed,
            ErrorCode::UnsupportedVersion,
            ErrorCode::TooLarge,
            ErrorCode::InvalidNamespace,
            ErrorCode::InvalidKey,
            ErrorCode::InvalidValue,
            ErrorCode::InvalidPattern,
            ErrorCode::NoSpace,
            ErrorCode::Internal,
            ErrorCode::Forbidden,
        ] {
            let e = Error::from(WireError::new(code, "no"));
            assert!(!e.is_retryable(), "{code:?}");
            assert_eq!(e.server_code(), Some(code));
        }
        for e in [
            Error::Config("x".into()),
            Error::Tls("x".into()),
            Error::Connect {
                addr: "a:1".into(),
                reason: "x".into(),
            },
            Error::Protocol("x".into()),
        ] {
            assert!(!e.is_retryable(), "{e}");
            assert_eq!(e.server_code(), None);
        }
    }

    #[test]
    fn server_errors_keep_the_nodes_words() {
        let e = Error::from(WireError::new(ErrorCode::NoSpace, "disk full on node 3"));
        assert_eq!(e.to_string(), "node error (NoSpace): disk full on node 3");
    }
}
