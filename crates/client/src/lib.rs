//! The library agents link to talk to Strata.
//!
//! A [`Client`] connects to any member of a cluster (a seed), fetches the ring (members,
//! epoch, partition table) and from then on sends each request straight to the member that
//! owns its key, over one QUIC connection per member (mutual TLS with the cluster CA), all
//! on one endpoint. Every call is multiplexed as an independent stream, so one client serves
//! many tasks at once. When the cluster changes, nodes answer with their ring and the client
//! follows; when a member cannot be reached, the client fetches the ring again and retries.
//! It speaks the protocol of [`strata_proto::wire`]: one request frame per stream, large
//! values streamed in chunks after the frame straight from their own buffers. It bounds
//! every attempt with a timeout, retries what is safe to retry, splits batch calls per owner
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
//! println!("ring epoch {}, {} members", client.ring().epoch, client.ring().members.len());
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: [`ClientConfig`] and [`TlsFiles`]: seed addresses, certificates, timeouts,
//!   retries, limits, with the reasons for their defaults.
//! - [`error`]: [`Error`], with [`Error::is_retryable`].
//! - [`connection`]: the link to one node — a kept connection, reconnected lazily, and one
//!   request attempt over one stream.
//! - [`routing`]: the ring the client routes by, one link per member, redirects, refreshing
//!   the ring after failures.
//! - [`client`]: [`Client`], the typed calls, retries, per-owner batches and cluster-wide
//!   calls on top.
//! - [`flight`]: [`Client::get_or_compute`], with cluster-wide single flight: one caller in
//!   the fleet computes a missing value, the others wait for it.
//! - [`embedding`]: [`EmbeddingCache`], embeddings keyed by model and text, ndarray in and
//!   out with dtype and shape preserved, batches, hit/miss statistics.
//! - [`artifact`]: [`ArtifactCache`], one pipeline profile's keyframes, transcripts, frame
//!   descriptions and segment frames, under the reference's keys; `invalidate_video`.
//! - [`jpeg`]: the JPEG codec of the artifact cache (RGB arrays in and out).
//! - [`cache_error`]: [`CacheError`], why a typed-cache call failed.
//! - [`cluster`]: cluster-wide views — [`Membership`], [`ClusterStats`] — and how
//!   statistics and key listings from several members are merged.
//! - `batch`: how one owner's share of a batch call is cut into requests (pure functions).
//! - [`tls`]: rustls/quinn configuration from the certificate files.
//! - [`trace`]: the caller's trace context, carried with each request when traces are on.
//! - [`io`]: frames and streamed bodies on QUIC streams (shared with the node).

pub mod artifact;
pub mod cache_error;
pub mod client;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod embedding;
pub mod error;
pub mod flight;
pub mod io;
pub mod jpeg;
pub mod routing;
pub mod tls;
pub mod trace;

mod batch;

pub use artifact::{
    ArtifactCache, CachedKeyframes, CachedSegment, DescriptionParams, FrameImage, KeyframeInfo,
    KeyframeParams, KeyframeStrategy, KeyframesMetadata, PipelineConfig, SegmentMetadata,
    SegmentParams, TranscriptParams, VideoArtifacts, VideoId,
};
pub use cache_error::CacheError;
pub use client::{Client, KeysPage};
pub use cluster::{ClusterStats, Membership, NodeStats};
pub use config::{ClientConfig, TlsFiles};
pub use embedding::{EmbeddingCache, EmbeddingCacheBuilder, EmbeddingStats};
pub use error::Error;
pub use flight::{ComputeError, ComputeOptions, Computed, Origin};
pub use routing::AddressSelection;
