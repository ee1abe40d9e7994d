//! The library agents link to talk to Strata.
//!
//! A [`Client`] holds one QUIC connection (mutual TLS with the cluster CA) to a node and
//! multiplexes every call over it as independent streams, so one client serves many tasks at
//! once. It speaks the protocol of [`strata_proto::wire`]: one request frame per stream,
//! large values streamed in chunks after the frame straight from their own buffers. It
//! bounds every attempt with a timeout, retries what is safe to retry, splits batch calls
//! into requests that stay within the node's limits, and reports failures as a typed
//! [`Error`] that says whether trying again may help.
//!
//! ```no_run
//! # async fn demo() -> Result<(), strata_client::Error> {
//! use strata_client::{Client, ClientConfig};
//! use strata_proto::{Key, Namespace, Value};
//!
//! let client = Client::connect(ClientConfig::new("127.0.0.1:7400", "strata-data/certs")).await?;
//! let ns = Namespace::default_namespace();
//! let key = Key::new("video:abc123:transcript").expect("a valid key");
//! client.set(&ns, &key, Value::from(b"hello".to_vec()), None).await?;
//! let entry = client.get(&ns, &key).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: [`ClientConfig`] and [`TlsFiles`]: address, certificates, timeouts,
//!   retries, limits, with the reasons for their defaults.
//! - [`error`]: [`Error`], with [`Error::is_retryable`].
//! - [`connection`]: the link to one node — a kept connection, reconnected lazily, and one
//!   request attempt over one stream (the unit ring-aware routing will multiply).
//! - [`client`]: [`Client`], the typed calls, retries and batches on top.
//! - `batch`: how batch calls are cut into requests (pure functions).
//! - [`tls`]: rustls/quinn configuration from the certificate files.
//! - [`io`]: frames and streamed bodies on QUIC streams (shared with the node).

pub mod client;
pub mod config;
pub mod connection;
pub mod error;
pub mod io;
pub mod tls;

mod batch;

pub use client::{Client, KeysPage};
pub use config::{ClientConfig, TlsFiles};
pub use error::Error;
