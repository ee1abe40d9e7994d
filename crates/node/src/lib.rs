//! A Strata node: serves one machine's tiers to clients over QUIC.
//!
//! # Layout
//! - [`cluster`]: membership through Raft, the ring requests are routed by, peer links,
//!   and the hand-off of partitions between members.
//! - [`config`]: [`Config`](config::Config), loaded once from `config/node.toml`-style files
//!   with `STRATA_…` environment overrides.
//! - [`certs`]: development certificate authority and certificates (`strata certs init`).
//! - [`tls`]: rustls configurations: mutual TLS with the cluster CA, ring provider only.
//! - [`server`]: the QUIC endpoint, connections, streams and framing; graceful shutdown.
//! - [`service`]: executes requests against the local tiers.
//! - [`admin`]: the admin HTTP endpoint: `/metrics`, `/health`, `/ready`, `/stats`.
//! - [`metrics`]: the node's OpenTelemetry instruments, read in Prometheus text format.
//! - [`telemetry`]: logs (text or JSON) and traces (OTLP/HTTP) of a process; the span each
//!   request is handled in.
//! - [`actors`]: the supervised actors with a lifecycle: filesystem writers, janitor,
//!   listener.
//! - [`flight`]: compute leases, the owner's side of `get_or_compute`'s cluster-wide single
//!   flight.
//! - [`raft`]: cluster metadata through Raft: the cluster state machine, the persisted log
//!   and state machine stores (openraft storage v2).
//! - [`tombstones`]: versioned delete markers, kept for a grace period, so that no delete is
//!   undone by an older write or a returning member.
//! - [`writeback`]: writes acknowledged from memory and flushed to disk by the writers.

pub mod actors;
pub mod admin;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod flight;
pub mod metrics;
pub mod raft;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod tombstones;
pub mod writeback;
