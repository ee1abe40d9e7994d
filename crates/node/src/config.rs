//! A node's configuration: built-in defaults < one TOML file < `STRATA_…` environment
//! variables < command-line flags.
//!
//! # Mechanism
//!
//! [`Config::load`] reads the file given with `--config` (the documented template is
//! `config/node.toml`, which sets every field to its default) and then the environment through
//! [figment]. Every struct here carries `#[serde(default)]`, so whatever neither source sets
//! takes the value of the struct's [`Default`] — the defaults live in exactly one place, and a
//! test loads `config/node.toml` and compares it with [`Config::default`] so the documented file
//! cannot drift from the code.
//!
//! Environment variables start with `STRATA_`; `__` separates nested sections:
//! `STRATA_LISTEN=127.0.0.1:9000`, `STRATA_DATA_DIR=/var/lib/strata`,
//! `STRATA_LIMITS__MAX_VALUE_BYTES=1048576`, `STRATA_TLS__CA=/etc/strata/ca.pem`. Values are
//! parsed like TOML scalars (numbers, booleans, else strings).
//!
//! Command-line flags come last through [`Config::apply_overrides`].
//!
//! Paths: after loading, relative `data_dir` and TLS paths are made absolute against the
//! current directory, so a node that later changes directory still finds them. Relative
//! filesystem-tier paths are relative to `data_dir` (the default tier lives in
//! `<data_dir>/cache`); [`Config::tiered_config`] resolves them.
//!
//! Unknown keys in the file are errors naming the key (every struct denies unknown fields, and
//! the settings of the built-in tier kinds are checked at load time too): a misspelt
//! `max_value_byte` must not silently leave the default in force.
//!
//! # Caveats
//!
//! - Only variables whose first segment names a top-level field (`STRATA_LISTEN`,
//!   `STRATA_LIMITS__…`, ...) are read. The CLI's client-side variables — `STRATA_ADDR`,
//!   `STRATA_CERTS`, `STRATA_NAMESPACE`, `STRATA_LOG`, and whatever it adds later — live in the
//!   same shell (`source strata-data/cluster.env`) and must never break a node. The price: a
//!   misspelt *top-level* variable (`STRATA_LISTN`) is ignored rather than reported.
//! - Lists (`store.tiers`) cannot be set from the environment in a useful way; use the file.
//! - The configuration is read once at startup; there is no reload.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use strata_store::{FsConfig, MemoryConfig, SetPolicy, TierSpec, TieredConfig};

use crate::tls::TlsFiles;

/// Prefix of the environment variables a node reads.
pub const ENV_PREFIX: &str = "STRATA_";

/// Top-level fields of [`Config`]: the only first segments read from the environment.
const TOP_LEVEL_KEYS: [&str; 11] = [
    "node_id",
    "log_format",
    "otlp_endpoint",
    "cluster",
    "listen",
    "admin",
    "data_dir",
    "tls",
    "store",
    "limits",
    "shutdown_grace_ms",
];

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file named on the command line does not exist.
    #[error("configuration file {} does not exist or is not a file", .0.display())]
    NotFound(PathBuf),
    /// The file or an environment variable is malformed, has an unknown key, or a value of
    /// the wrong type. figment's message names the key and where it came from.
    #[error("invalid configuration: {0}")]
    Parse(Box<figment::Error>),
    /// A value is well-formed but unusable.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// The setting, as a dotted path (`limits.chunk_bytes`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The current directory, needed to resolve relative paths, is unavailable.
    #[error("cannot resolve relative paths: current directory unavailable: {0}")]
    CurrentDir(#[source] std::io::Error),
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        Self::Parse(Box::new(e))
    }
}

/// Everything a node needs to start.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id in the cluster; unique per member. Default 1: a single node, or the
    /// first node of a local cluster (`strata up` numbers the others 2, 3, ...).
    pub node_id: u64,
    /// QUIC address clients and peers connect to. Default `127.0.0.1:7400`: loopback, so a
    /// node started without thinking is not exposed to the network; set `0.0.0.0:7400` (or a
    /// specific interface) to serve others.
    pub listen: SocketAddr,
    /// Admin HTTP address (`/metrics`, `/health`, `/ready`, `/stats`). Default
    /// `127.0.0.1:7401`: next to `listen`, and loopback for the same reason.
    pub admin: SocketAddr,
    /// Where this node keeps its data (filesystem tier, and later Raft state). Default
    /// `./strata-data/node`: beside where it was started, like `strata up`'s layout.
    pub data_dir: PathBuf,
    /// The node's certificate, key, and the cluster CA. Defaults `certs/ca.pem`,
    /// `certs/node.pem`, `certs/node.key`: what `strata certs init --out certs` writes.
    pub tls: TlsFiles,
    /// The local tiers.
    pub store: StoreConfig,
    /// Protocol and resource limits.
    pub limits: Limits,
    /// Membership in a cluster: addresses peers dial, Raft timing, ring parameters, hand-off.
    pub cluster: ClusterConfig,
    /// How long a shutdown waits for in-flight requests before closing connections, in
    /// milliseconds. Default 10 000: longer than a typical request, well inside the 30 s a
    /// supervisor (systemd, Docker) allows before it kills the process.
    pub shutdown_grace_ms: u64,
    /// Format of the node's log lines on stderr: `text` (default, for people) or `json` (one
    /// object per line, for log shippers). Which lines is set by `STRATA_LOG` / `RUST_LOG`.
    pub log_format: LogFormat,
    /// Base URL of an OTLP/HTTP collector (`http://HOST:4318`); spans go to
    /// `<otlp_endpoint>/v1/traces`. Default none: no spans are recorded or exported, and
    /// requests carry no trace context — tracing costs nothing unless asked for.
    pub otlp_endpoint: Option<String>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            admin: SocketAddr::from(([127, 0, 0, 1], 7401)),
            data_dir: PathBuf::from("./strata-data/node"),
            tls: TlsFiles::default(),
            store: StoreConfig::default(),
            limits: Limits::default(),
            cluster: ClusterConfig::default(),
            shutdown_grace_ms: 10_000,
            log_format: LogFormat::Text,
            otlp_endpoint: None,
        }
    }
}

/// The local tiers and how they are written.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The tiers, fastest first (or ordered by `priority`). Default: a memory tier of 256 MiB
    /// over a filesystem tier at `<data_dir>/cache` of 8 GiB with periodic fsync — hot entries
    /// from RAM, the working set on disk, a second of writes at risk on power loss (it is a
    /// cache).
    pub tiers: Vec<TierSpec>,
    /// How many tiers a write must reach. Default `all`: a write that only reached memory
    /// would vanish on restart while the client believed it stored.
    pub set_policy: SetPolicy,
    /// Number of filesystem writer actors; keys are sharded over them by hash. Default 4:
    /// enough to overlap fsyncs on an SSD, few enough not to thrash a spinning disk.
    pub writers: usize,
    /// When a write is acknowledged. Default `back`: once it is in memory and queued for the
    /// disk (see [`writeback`](crate::writeback)) — creating files is far slower than any
    /// network round trip, and a cache's durability comes from replicas; `through` waits for
    /// every tier.
    pub write_mode: WriteMode,
    /// Payload bytes acknowledged but not yet on disk, in `back` mode. Default 256 MiB: a
    /// burst of writes is absorbed at memory speed; beyond it writes wait for the disk.
    pub max_pending_bytes: u64,
}

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Once it is in memory and queued for the slower tiers.
    #[default]
    Back,
    /// Once every tier holds it.
    Through,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            tiers: vec![
                tier("memory", [("max_bytes", serde_json::json!(256u64 << 20))]),
                tier(
                    "filesystem",
                    [
                        ("path", serde_json::json!("cache")),
                        ("max_bytes", serde_json::json!(8u64 << 30)),
                        ("fsync", serde_json::json!("periodic")),
                        ("fsync_interval_ms", serde_json::json!(1000)),
                        ("cleanup_interval_secs", serde_json::json!(60)),
                    ],
                ),
            ],
            set_policy: SetPolicy::All,
            writers: 4,
            write_mode: WriteMode::Back,
            max_pending_bytes: 256 << 20,
        }
    }
}

/// `TierSpec` has no `PartialEq`; compare its public parts.
impl PartialEq for StoreConfig {
    fn eq(&self, other: &Self) -> bool {
        self.set_policy == other.set_policy
            && self.writers == other.writers
            && self.write_mode == other.write_mode
            && self.max_pending_bytes == other.max_pending_bytes
            && self.tiers.len() == other.tiers.len()
            && self.tiers.iter().zip(&other.tiers).all(|(a, b)| {
                a.kind == b.kind
                    && a.priority == b.priority
                    && a.enabled == b.enabled
                    && a.options == b.options
            })
    }
}

fn tier<const N: usize>(kind: &str, options: [(&str, serde_json::Value); N]) -> TierSpec {
    TierSpec {
        kind: kind.to_owned(),
        priority: None,
        enabled: true,
        options: options
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    }
}

/// How a node takes part in a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Start a new cluster with this node as its first member (`strata node --bootstrap`).
    /// Ignored when the data directory already holds Raft state. Default false.
    pub bootstrap: bool,
    /// Join the cluster through this member, `HOST:PORT` (`strata node --join`). Ignored once
    /// the node is a member. Default none.
    pub join: Option<String>,
    /// `HOST:PORT` that peers and clients dial to reach this node. Default: the listen
    /// address, which must then not be unspecified (`0.0.0.0`).
    pub advertise: Option<String>,
    /// `HOST:PORT` advertised for the admin endpoint. Default: the admin address.
    pub advertise_admin: Option<String>,
    /// `HOST:PORT` advertised to clients outside the members' network, when they cannot
    /// dial `advertise` (a container port published on the host, a NAT): Kafka's external
    /// listener, Redis' `cluster-announce-*`. Peers never use it; a client uses these
    /// addresses for every member once it reached the cluster through one of them. Default
    /// none: clients dial `advertise`.
    pub advertise_client: Option<String>,
    /// Most voting members of the Raft group; later members are learners and are promoted
    /// when a voter leaves. Default 5: tolerates two failures, and keeps commits cheap.
    pub max_voters: usize,
    /// Partitions of the key space, for a new cluster (fixed for its life). Default 4096.
    pub partitions: u32,
    /// Virtual nodes per member on the hash ring, for a new cluster. Default 64.
    pub vnodes: u32,
    /// Copies of every partition, for a new cluster. Default 2.
    pub replication: u32,
    /// W: copies of a write (the owner's included) that must hold it before it is
    /// acknowledged, for a new cluster; capped at `replication`. Default 2 (with R = 2 every
    /// replica holds every acknowledged write, so any of them can take over or answer a
    /// read). Below R, writes are acknowledged sooner, but a failover may lose the last
    /// writes and replicas do not answer reads.
    pub write_quorum: u32,
    /// Silence after which the Raft leader declares a member down and hands its partitions
    /// to their replicas (ms). Default 1000: a killed member's keys take writes again about
    /// 1.2 s after its death.
    pub failure_timeout_ms: u64,
    /// Ownership lease (ms): a member answers for its partitions only within this time of
    /// its last confirmed contact with the leader (which itself needs a majority). Must be
    /// below `failure_timeout_ms`, so that a frozen or cut-off member stops answering before
    /// the leader gives its partitions away, and below `election_timeout_ms`, so that no
    /// new leader can be elected while a lease granted by the old one lasts. Default 500
    /// (five renewals).
    pub lease_ms: u64,
    /// How long a delete's tombstone is kept (s). A member down longer than this discards
    /// its data when it comes back instead of merging it. Default 86400 (24 h).
    pub tombstone_grace_secs: u64,
    /// Raft heartbeat interval (ms); members also renew their leases this often. openraft
    /// checks its timers every 1.5 heartbeats, so the leader's heartbeats go out that often
    /// and elections start on that grid. Default 100.
    pub heartbeat_ms: u64,
    /// Raft election timeout (ms): a voter that has heard from a leader within this time
    /// refuses to vote for another, and a follower that hears nothing for a random time
    /// between 1.5 and 2 times this (checked every 1.5 heartbeats) starts an election.
    /// Default 700: a dead leader is replaced 1.05–1.55 s after its last heartbeat, so its
    /// keys take writes again within 2 s of its death, while a leader whose heartbeats are
    /// late by several intervals (a busy machine) keeps its office.
    pub election_timeout_ms: u64,
    /// How long a request that carries a newer ring epoch than the node's waits for the
    /// node to catch up before it is answered by the node's own ring (ms). Default 1000.
    pub epoch_wait_ms: u64,
    /// Bandwidth for receiving partitions in a hand-off (bytes/s). Default 64 MiB/s: a few
    /// GB per minute, while foreground requests keep most of a gigabit link.
    pub transfer_bytes_per_sec: u64,
    /// Entries per page of a partition transfer. Default 256.
    pub transfer_page_entries: u32,
    /// Hand this node's partitions off (like `strata leave`) when it is stopped with SIGTERM
    /// or SIGINT. Default false: a restart keeps the node a member.
    pub leave_on_shutdown: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            bootstrap: false,
            join: None,
            advertise: None,
            advertise_admin: None,
            advertise_client: None,
            max_voters: 5,
            partitions: strata_proto::ring::DEFAULT_PARTITIONS,
            vnodes: strata_proto::ring::DEFAULT_VNODES,
            replication: strata_proto::ring::DEFAULT_REPLICATION,
            write_quorum: 2,
            failure_timeout_ms: 1000,
            lease_ms: 500,
            tombstone_grace_secs: 86_400,
            heartbeat_ms: 100,
            election_timeout_ms: 700,
            epoch_wait_ms: 1000,
            transfer_bytes_per_sec: 64 << 20,
            transfer_page_entries: 256,
            leave_on_shutdown: false,
        }
    }
}

/// Protocol and resource limits. A request beyond one is refused with a clear error; none of
/// them is a quota.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest value accepted, in bytes. Default 256 MiB (`wire::DEFAULT_MAX_VALUE_BYTES`):
    /// room for a video's keyframes or a large embedding batch, small enough that one client
    /// cannot fill a node's memory tier with a single value.
    pub max_value_bytes: u64,
    /// Size of the chunks a large value is streamed in, in bytes. Default 256 KiB
    /// (`wire::DEFAULT_CHUNK_BYTES`): big enough to amortise per-frame cost, small enough to
    /// interleave streams and bound per-stream buffering.
    pub chunk_bytes: usize,
    /// Largest frame accepted, in bytes. Default 16 MiB (`wire::DEFAULT_MAX_FRAME_BYTES`):
    /// a batch request of many keys fits; values above it travel as chunks.
    pub max_frame_bytes: u32,
    /// Concurrent bidirectional streams (requests in flight) per connection. Default 256:
    /// many agents multiplex over one connection per node; beyond this QUIC flow control
    /// makes the client wait instead of the node queueing without bound.
    pub max_streams_per_connection: u32,
    /// Concurrent connections a node accepts. Default 1024: one per agent process or peer;
    /// more are refused rather than exhausting file descriptors and memory.
    pub max_connections: usize,
    /// Keys in one batch request. Default 10 000: a batch of embeddings for a long video,
    /// while one request still cannot monopolise a node.
    pub max_batch_keys: usize,
    /// How long a node works on one request before answering with a timeout, in
    /// milliseconds. Default 30 000: a 256 MiB value over a slow link still fits.
    pub request_timeout_ms: u64,
    /// A connection with no traffic (keep-alives included) for this long is closed, in
    /// milliseconds. Default 30 000: keep-alives every 5 s keep a healthy idle connection
    /// open, while a vanished peer is noticed within half a minute. Must be above 0.
    pub idle_timeout_ms: u64,
    /// Bytes of request frames and values being received at once, over all connections.
    /// Default 1 GiB: four of the largest values in flight at a time, whatever clients
    /// declare; a request that would go beyond waits for others to finish instead of making
    /// the node allocate. Must be at least `max_value_bytes`.
    pub max_inflight_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_bytes: strata_proto::wire::DEFAULT_MAX_VALUE_BYTES,
            chunk_bytes: strata_proto::wire::DEFAULT_CHUNK_BYTES,
            max_frame_bytes: strata_proto::wire::DEFAULT_MAX_FRAME_BYTES,
            max_streams_per_connection: 256,
            max_connections: 1024,
            max_batch_keys: 10_000,
            request_timeout_ms: 30_000,
            idle_timeout_ms: 30_000,
            max_inflight_bytes: 1 << 30,
        }
    }
}

impl Limits {
    /// [`request_timeout_ms`](Self::request_timeout_ms) as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// [`idle_timeout_ms`](Self::idle_timeout_ms) as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// Keep-alive interval of QUIC connections: a few pings per idle timeout, so NAT bindings and
/// the peer's idle timer stay fresh at negligible cost.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Per-stream receive window. quinn's default (~1.25 MB) caps one stream at about
/// window/RTT; 8 MiB lets a single bulk transfer (a large value in chunks) run at full speed.
const STREAM_RECEIVE_WINDOW: u32 = 8 << 20;
/// Per-connection receive window: room for several bulk streams at once.
const RECEIVE_WINDOW: u32 = 32 << 20;
/// Per-connection send buffer, matched to the receive window so a sender can keep the
/// peer's window full.
const SEND_WINDOW: u64 = 32 << 20;

impl Config {
    /// Loads the configuration: defaults < the TOML file at `path` (if given; it must exist)
    /// < `STRATA_…` environment variables. Relative paths are resolved against the current
    /// directory; the result is validated.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(path) = path
            && !path.is_file()
        {
            return Err(ConfigError::NotFound(path.to_owned()));
        }
        let cwd = std::env::current_dir().map_err(ConfigError::CurrentDir)?;
        Self::extract(&Self::figment(path), &cwd)
    }

    /// The layered sources [`load`](Self::load) reads, without checks: the file at `path`
    /// (exactly that path; parent directories are not searched) and the environment.
    pub fn figment(path: Option<&Path>) -> Figment {
        let mut figment = Figment::new();
        if let Some(path) = path {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .filter(|key| is_node_key(key.as_str())),
        )
    }

    /// Deserialises a configuration from `figment`, resolves relative paths against `base`,
    /// and validates it.
    pub fn extract(figment: &Figment, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = figment.extract()?;
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    /// Makes `data_dir` and the TLS paths absolute by joining relative ones onto `base`.
    /// Filesystem-tier paths stay relative to `data_dir` (see
    /// [`tiered_config`](Self::tiered_config)).
    pub fn resolve_paths(&mut self, base: &Path) {
        self.data_dir = absolute(base, &self.data_dir);
        self.tls.ca = absolute(base, &self.tls.ca);
        self.tls.cert = absolute(base, &self.tls.cert);
        self.tls.key = absolute(base, &self.tls.key);
    }

    /// Applies command-line flags, which win over the file and the environment: `--listen`,
    /// `--data-dir`, and `--certs DIR` (the node's files in `DIR`: `ca.pem`, `node.pem`,
    /// `node.key`). Relative paths are resolved against the current directory (if it is
    /// unavailable they are kept as given).
    pub fn apply_overrides(
        &mut self,
        listen: Option<SocketAddr>,
        data_dir: Option<PathBuf>,
        certs_dir: Option<PathBuf>,
    ) {
        let cwd = std::env::current_dir().unwrap_or_default();
        if let Some(listen) = listen {
            self.listen = listen;
        }
        if let Some(dir) = data_dir {
            self.data_dir = absolute(&cwd, &dir);
        }
        if let Some(dir) = certs_dir {
            self.tls = TlsFiles::node_in(&absolute(&cwd, &dir));
        }
    }

    /// Checks what the types cannot: positive sizes, a chunk that fits in a frame, the
    /// settings of the built-in tier kinds, distinct listen and admin addresses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        positive("limits.max_value_bytes", l.max_value_bytes)?;
        positive("limits.chunk_bytes", l.chunk_bytes as u64)?;
        positive("limits.max_frame_bytes", u64::from(l.max_frame_bytes))?;
        positive(
            "limits.max_streams_per_connection",
            u64::from(l.max_streams_per_connection),
        )?;
        positive("limits.max_connections", l.max_connections as u64)?;
        positive("limits.max_batch_keys", l.max_batch_keys as u64)?;
        positive("limits.request_timeout_ms", l.request_timeout_ms)?;
        positive("limits.idle_timeout_ms", l.idle_timeout_ms)?;
        positive("store.writers", self.store.writers as u64)?;
        positive("store.max_pending_bytes", self.store.max_pending_bytes)?;
        if l.chunk_bytes as u64 >= u64::from(l.max_frame_bytes) {
            return Err(invalid(
                "limits.chunk_bytes",
                format!(
                    "{} must be below limits.max_frame_bytes ({}): a chunk travels in one frame",
                    l.chunk_bytes, l.max_frame_bytes
                ),
            ));
        }
        if l.max_inflight_bytes < l.max_value_bytes
            || l.max_inflight_bytes < u64::from(l.max_frame_bytes)
        {
            return Err(invalid(
                "limits.max_inflight_bytes",
                format!(
                    "{} must be at least limits.max_value_bytes ({}) and limits.max_frame_bytes ({}): one request must fit",
                    l.max_inflight_bytes, l.max_value_bytes, l.max_frame_bytes
                ),
            ));
        }
        if quinn::VarInt::from_u64(l.idle_timeout_ms).is_err() {
            return Err(invalid("limits.idle_timeout_ms", "too large for QUIC"));
        }
        if self.listen == self.admin && self.listen.port() != 0 {
            return Err(invalid(
                "admin",
                format!("{} is also the QUIC listen address", self.admin),
            ));
        }
        if !self.store.tiers.iter().any(|t| t.enabled) {
            return Err(invalid(
                "store.tiers",
                "at least one enabled tier is needed",
            ));
        }
        for (i, spec) in self.store.tiers.iter().enumerate() {
            check_tier(spec).map_err(|reason| invalid(&format!("store.tiers[{i}]"), reason))?;
        }
        self.validate_cluster()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        positive("node_id", self.node_id)?;
        positive("cluster.max_voters", c.max_voters as u64)?;
        positive("cluster.partitions", u64::from(c.partitions))?;
        positive("cluster.vnodes", u64::from(c.vnodes))?;
        positive("cluster.replication", u64::from(c.replication))?;
        positive("cluster.heartbeat_ms", c.heartbeat_ms)?;
        positive("cluster.write_quorum", u64::from(c.write_quorum))?;
        positive("cluster.lease_ms", c.lease_ms)?;
        positive("cluster.tombstone_grace_secs", c.tombstone_grace_secs)?;
        if c.lease_ms >= c.failure_timeout_ms {
            return Err(invalid(
                "cluster.lease_ms",
                format!(
                    "{} must be below cluster.failure_timeout_ms ({}): a member cut off from the leader must stop answering before its partitions are given away",
                    c.lease_ms, c.failure_timeout_ms
                ),
            ));
        }
        if c.lease_ms < 2 * c.heartbeat_ms {
            return Err(invalid(
                "cluster.lease_ms",
                format!(
                    "{} must be at least two heartbeats ({} ms): leases are renewed every heartbeat",
                    c.lease_ms,
                    2 * c.heartbeat_ms
                ),
            ));
        }
        positive("cluster.transfer_bytes_per_sec", c.transfer_bytes_per_sec)?;
        positive(
            "cluster.transfer_page_entries",
            u64::from(c.transfer_page_entries),
        )?;
        if c.election_timeout_ms < 3 * c.heartbeat_ms {
            return Err(invalid(
                "cluster.election_timeout_ms",
                format!(
                    "{} must be at least three heartbeats ({} ms): followers would start elections while the leader is healthy",
                    c.election_timeout_ms,
                    3 * c.heartbeat_ms
                ),
            ));
        }
        if c.lease_ms >= c.election_timeout_ms {
            return Err(invalid(
                "cluster.lease_ms",
                format!(
                    "{} must be below cluster.election_timeout_ms ({}): a new leader could be elected while the old one's lease lasts",
                    c.lease_ms, c.election_timeout_ms
                ),
            ));
        }
        if c.bootstrap && c.join.is_some() {
            return Err(invalid(
                "cluster.join",
                "a node either bootstraps a new cluster or joins one, not both",
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid(
                "otlp_endpoint",
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
        for (key, addr) in [
            ("cluster.join", &c.join),
            ("cluster.advertise", &c.advertise),
            ("cluster.advertise_admin", &c.advertise_admin),
            ("cluster.advertise_client", &c.advertise_client),
        ] {
            if let Some(addr) = addr {
                check_host_port(addr).map_err(|reason| invalid(key, reason))?;
            }
        }
        Ok(())
    }

    /// The `HOST:PORT` peers and clients dial: `cluster.advertise`, or the address the node
    /// listens on (`bound`, which knows the port picked for port 0).
    pub fn advertised_addr(&self, bound: SocketAddr) -> Result<String, ConfigError> {
        if let Some(addr) = &self.cluster.advertise {
            return Ok(addr.clone());
        }
        if bound.ip().is_unspecified() {
            return Err(invalid(
                "cluster.advertise",
                format!(
                    "the node listens on {bound}, which peers cannot dial; set cluster.advertise (or --advertise) to HOST:PORT"
                ),
            ));
        }
        Ok(bound.to_string())
    }

    /// The admin `HOST:PORT` to advertise.
    pub fn advertised_admin(&self) -> String {
        self.cluster
            .advertise_admin
            .clone()
            .unwrap_or_else(|| self.admin.to_string())
    }

    /// The QUIC transport settings from [`limits`](Self::limits): at most
    /// `max_streams_per_connection` concurrent requests per connection, the idle timeout with
    /// keep-alives well inside it, and flow-control windows large enough for bulk values.
    ///
    /// The windows are credit, not allocations: memory is only used by data a peer sent and
    /// the node has not read yet. In the worst case (every connection stalled with full
    /// windows) that is `max_connections` × 32 MiB, which is why `max_connections` exists.
    pub fn transport(&self) -> quinn::TransportConfig {
        let idle = self.limits.idle_timeout();
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(
                self.limits.max_streams_per_connection,
            ))
            .max_idle_timeout(Some(quinn::IdleTimeout::from(
                quinn::VarInt::from_u64(self.limits.idle_timeout_ms).unwrap_or(quinn::VarInt::MAX),
            )))
            // Keep-alives must come well inside the idle timeout, or they cannot prevent it.
            .keep_alive_interval(Some(KEEP_ALIVE.min(idle / 2)))
            .stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW))
            .receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW))
            .send_window(SEND_WINDOW)
            // Every request is a bidirectional stream; the node has no use for the others.
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
            .ack_frequency_config(Some(strata_client::io::ack_frequency()));
        transport
    }

    /// The tier stack for [`strata_store::TierRegistry::build_tiered`], with relative
    /// filesystem paths (and the filesystem tier's default `cache`) under `data_dir`.
    pub fn tiered_config(&self) -> TieredConfig {
        let tiers = self
            .store
            .tiers
            .iter()
            .map(|spec| {
                let mut spec = spec.clone();
                if spec.kind == "filesystem" {
                    let path = spec
                        .options
                        .get("path")
                        .and_then(|p| p.as_str())
                        .unwrap_or("cache");
                    let path = absolute(&self.data_dir, Path::new(path));
                    spec.options.insert(
                        "path".into(),
                        serde_json::Value::String(path.to_string_lossy().into_owned()),
                    );
                }
                spec
            })
            .collect();
        TieredConfig {
            tiers,
            set_policy: self.store.set_policy,
        }
    }

    /// [`shutdown_grace_ms`](Self::shutdown_grace_ms) as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// Whether an environment key (prefix stripped, `__` turned into `.`) names a node setting.
fn is_node_key(key: &str) -> bool {
    let first = key.split('.').next().unwrap_or_default();
    TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(first))
}

/// Checks the settings of the built-in tier kinds as their factories will parse them, so a
/// misspelt tier option fails at load time, not when the store is built. Other kinds belong
/// to whoever registers them.
fn check_tier(spec: &TierSpec) -> Result<(), String> {
    let result = match spec.kind.as_str() {
        "memory" => strata_store::registry::parse_options::<MemoryConfig>(spec).map(drop),
        "filesystem" => {
            let mut spec = spec.clone();
            spec.options
                .entry("path")
                .or_insert_with(|| serde_json::Value::String("cache".into()));
            strata_store::registry::parse_options::<FsConfig>(&spec).map(drop)
        }
        _ => Ok(()),
    };
    result.map_err(|e| e.to_string())
}

/// Checks `HOST:PORT` (host a name, IPv4, or `[IPv6]`; port a number).
fn check_host_port(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not HOST:PORT"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{addr:?} is not HOST:PORT"));
    }
    Ok(())
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(())
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// `path` if absolute, else `base/path` without `.` components (`./strata-data` becomes
/// `base/strata-data`, not `base/./strata-data`). `..` is kept: resolving it needs the
/// filesystem (symlinks).
fn absolute(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    let mut out = base.to_owned();
    out.extend(path.components().filter(|c| *c != Component::CurDir));
    out
}
