//! The node's metrics: OpenTelemetry instruments, read in Prometheus text format.
//!
//! # Mechanism
//! Each node owns one OpenTelemetry [`SdkMeterProvider`] whose only reader is the
//! Prometheus exporter (`opentelemetry-prometheus`) over a private [`prometheus::Registry`];
//! the admin endpoint's `/metrics` gathers that registry ([`Metrics::render`]). Nothing is
//! pushed anywhere, and no global provider is installed, so several nodes in one process (as
//! in tests) keep separate counts.
//!
//! Two kinds of instruments:
//!
//! - **Recorded on the request path** (synchronous counters and a histogram): operations by
//!   kind and outcome, request latency, redirects, replica reads (client fail-overs). One
//!   request costs one counter add and one histogram record with small, fixed attribute
//!   sets; `docs/benchmarks.md` measures it against GET throughput.
//! - **Observed at scrape time** (asynchronous instruments with callbacks): per-tier hits,
//!   misses, sets, deletes, evictions, expiries, bytes and entries; connections; write-back
//!   backlog; Raft term and leader, ring epoch, members by state, partitions owned, moving and
//!   still to receive; whether the node holds its lease and is ready. These read state the
//!   node keeps anyway, so they cost nothing between scrapes.
//!
//! # Names
//! OpenTelemetry names with dots and UCUM units; the exporter turns them into Prometheus
//! names (`strata.operations` → `strata_operations_total`, `rpc.server.call.duration` in `s` →
//! `rpc_server_call_duration_seconds`). Where an OpenTelemetry semantic convention exists it
//! is used (`rpc.server.call.duration` with `rpc.method`); the cache- and cluster-specific
//! ones live under `strata.`. The full list is in the README.
//!
//! # Caveats
//! The counters start at zero with the process: a restarted node's counters restart too
//! (Prometheus `rate()` handles such resets).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use strata_proto::ring::MemberState;
use strata_proto::wire::{ErrorCode, Request, Response};
use strata_store::Tiered;

use crate::cluster::Cluster;

/// Bucket bounds of the latency histogram, in seconds: 50 µs (a memory hit on loopback) to
/// 10 s (the default request timeout is 30 s; anything slower is an outage, not a latency).
const LATENCY_BOUNDS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// What the scrape-time instruments read.
pub struct Sources {
    /// The node's cluster view (ring, Raft, lease).
    pub cluster: Arc<Cluster>,
    /// The node's tiers.
    pub store: Arc<Tiered>,
    /// Open client and peer connections.
    pub connections: Arc<AtomicUsize>,
    /// Keys and bytes acknowledged but not yet written to disk (write-back), if enabled.
    pub pending: Option<Arc<crate::writeback::Pending>>,
}

/// The node's instruments and the registry `/metrics` reads.
pub struct Metrics {
    registry: prometheus::Registry,
    provider: SdkMeterProvider,
    meter: Meter,
    operations: Counter<u64>,
    duration: Histogram<f64>,
    redirects: Counter<u64>,
    replica_reads: Counter<u64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A meter provider for node `node_id` with the request-path instruments registered;
    /// [`Metrics::observe`] adds the scrape-time ones.
    pub fn new(node_id: u64) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()?;
        let resource = Resource::builder()
            .with_service_name("strata-node")
            .with_attribute(KeyValue::new("service.instance.id", node_id.to_string()))
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(exporter)
            .with_resource(resource)
            .build();
        let meter = provider.meter("strata");
        let operations = meter
            .u64_counter("strata.operations")
            .with_description("Requests handled, by kind (op) and outcome")
            .with_unit("{operation}")
            .build();
        let duration = meter
            .f64_histogram("rpc.server.call.duration")
            .with_description("Time to handle a request, from its frame read to its answer")
            .with_unit("s")
            .with_boundaries(LATENCY_BOUNDS.to_vec())
            .build();
        let redirects = meter
            .u64_counter("strata.redirects")
            .with_description("Requests answered with a redirect: the client routed by an old ring")
            .with_unit("{request}")
            .build();
        let replica_reads = meter
            .u64_counter("strata.failover.reads")
            .with_description(
                "Reads received as a replica because a client could not reach the key's owner",
            )
            .with_unit("{request}")
            .build();
        Ok(Self {
            registry,
            provider,
            meter,
            operations,
            duration,
            redirects,
            replica_reads,
        })
    }

    /// Registers the scrape-time instruments, which read `sources` at every scrape.
    pub fn observe(&self, sources: Sources) {
        register_observers(&self.meter, sources);
    }

    /// Records one handled request: its kind, how it ended and how long it took.
    /// `replica_read`: it came as a [`Request::ReplicaRead`] (a client failing over).
    pub fn record(
        &self,
        op: &'static str,
        replica_read: bool,
        response: &Response,
        took: Duration,
    ) {
        let outcome = outcome(response);
        self.operations.add(
            1,
            &[KeyValue::new("op", op), KeyValue::new("outcome", outcome)],
        );
        self.duration
            .record(took.as_secs_f64(), &[KeyValue::new("rpc.method", op)]);
        if outcome == "redirect" {
            self.redirects.add(1, &[KeyValue::new("op", op)]);
        }
        if replica_read {
            self.replica_reads.add(1, &[KeyValue::new("op", op)]);
        }
    }

    /// Every metric in Prometheus text format (what `/metrics` answers).
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode the metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Stops the meter provider (its callbacks hold the node's cluster and store).
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}

/// The `outcome` attribute of a response.
fn outcome(response: &Response) -> &'static str {
    match response {
        Response::Entry(None) | Response::Metadata(None) | Response::Exists(false) => "miss",
        Response::Entry(Some(_)) | Response::Metadata(Some(_)) | Response::Exists(true) => "hit",
        Response::Deleted(false) => "absent",
        Response::Applied(false) => "stale",
        Response::Redirect(_) => "redirect",
        Response::Error(e) => match e.code {
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal | ErrorCode::NoSpace => "server_error",
            _ => "client_error",
        },
        _ => "ok",
    }
}

/// Whether a request arrived as a replica read.
pub fn is_replica_read(request: &Request) -> bool {
    matches!(request, Request::ReplicaRead(_))
}

/// The scrape-time instruments. The SDK keeps their callbacks for the provider's lifetime.
fn register_observers(meter: &Meter, sources: Sources) {
    let Sources {
        cluster,
        store,
        connections,
        pending,
    } = sources;
    type TierField = fn(&strata_store::TierStats) -> u64;
    let tier_counters: [(&'static str, &'static str, &'static str, TierField); 6] = [
        (
            "strata.tier.hits",
            "Lookups a tier answered",
            "{lookup}",
            |s| s.hits,
        ),
        (
            "strata.tier.misses",
            "Lookups a tier could not answer",
            "{lookup}",
            |s| s.misses,
        ),
        ("strata.tier.sets", "Writes to a tier", "{write}", |s| {
            s.sets
        }),
        (
            "strata.tier.deletes",
            "Entries a tier deleted (also by clear)",
            "{entry}",
            |s| s.deletes,
        ),
        (
            "strata.tier.evictions",
            "Entries a tier removed to stay within its capacity",
            "{entry}",
            |s| s.evictions,
        ),
        (
            "strata.tier.expirations",
            "Entries a tier removed because their TTL ran out",
            "{entry}",
            |s| s.expired,
        ),
    ];
    for (name, description, unit, field) in tier_counters {
        let store = Arc::clone(&store);
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |o| {
                for tier in store.tiers() {
                    let stats = tier.stats();
                    o.observe(field(&stats), &[KeyValue::new("tier", stats.name.clone())]);
                }
            })
            .build();
    }
    let tier_gauges: [(&'static str, &'static str, &'static str, TierField); 2] = [
        (
            "strata.tier.size",
            "Payload bytes a tier holds",
            "By",
            |s| s.size_bytes,
        ),
        (
            "strata.tier.entries",
            "Entries a tier holds",
            "{entry}",
            |s| s.entries,
        ),
    ];
    for (name, description, unit, field) in tier_gauges {
        let store = Arc::clone(&store);
        meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |o| {
                for tier in store.tiers() {
                    let stats = tier.stats();
                    o.observe(field(&stats), &[KeyValue::new("tier", stats.name.clone())]);
                }
            })
            .build();
    }
    meter
        .u64_observable_gauge("strata.connections")
        .with_description("Open QUIC connections (clients and peers)")
        .with_unit("{connection}")
        .with_callback(move |o| o.observe(connections.load(Ordering::Relaxed) as u64, &[]))
        .build();
    if let Some(pending) = pending {
        let keys = Arc::clone(&pending);
        meter
            .u64_observable_gauge("strata.writeback.pending")
            .with_description("Writes acknowledged from memory, not yet on disk")
            .with_unit("{entry}")
            .with_callback(move |o| o.observe(keys.len() as u64, &[]))
            .build();
        meter
            .u64_observable_gauge("strata.writeback.pending.size")
            .with_description("Bytes acknowledged from memory, not yet on disk")
            .with_unit("By")
            .with_callback(move |o| o.observe(pending.bytes(), &[]))
            .build();
    }
    register_cluster_observers(meter, cluster);
}

/// Raft, ring, hand-off and readiness gauges.
fn register_cluster_observers(meter: &Meter, cluster: Arc<Cluster>) {
    let c = Arc::clone(&cluster);
    meter
        .u64_observable_gauge("strata.ring.epoch")
        .with_description("The ring epoch this node routes by")
        .with_unit("{epoch}")
        .with_callback(move |o| o.observe(c.epoch(), &[]))
        .build();
    let c = Arc::clone(&cluster);
    meter
        .u64_observable_gauge("strata.raft.term")
        .with_description("This node's current Raft term (0 outside a cluster)")
        .with_unit("{term}")
        .with_callback(move |o| {
            o.observe(c.raft_status().map_or(0, |s| s.term), &[]);
        })
        .build();
    let c = Arc::clone(&cluster);
    meter
        .u64_observable_gauge("strata.raft.leader")
        .with_description("Id of the Raft leader this node knows (0: none)")
        .with_unit("{node}")
        .with_callback(move |o| {
            o.observe(c.raft_status().and_then(|s| s.leader).unwrap_or(0), &[]);
        })
        .build();
    let c = Arc::clone(&cluster);
    meter
        .u64_observable_gauge("strata.raft.log.applied")
        .with_description("Index of the last Raft log entry this node applied")
        .with_unit("{entry}")
        .with_callback(move |o| {
            o.observe(c.raft_status().map_or(0, |s| s.applied), &[]);
        })
        .build();
    let c = Arc::clone(&cluster);
    meter
        .u64_observable_gauge("strata.cluster.members")
        .with_description("Members of the cluster by state")
        .with_unit("{member}")
        .with_callback(move |o| {
            let state = c.state();
            for s in [
                MemberState::Joining,
                MemberState::Active,
                MemberState::Leaving,
                MemberState::Down,
            ] {
                let n = state.members.values().filter(|m| m.state == s).count();
                o.observe(n as u64, &[KeyValue::new("state", s.as_str())]);
            }
        })
        .build();
    let c = Arc::clone(&cluster);
    meter
        .u64_observable_gauge("strata.partitions")
        .with_description(
            "Partitions by this node's role: owned, replicated (incl. owned), \
             incoming (still to receive), and moving cluster-wide",
        )
        .with_unit("{partition}")
        .with_callback(move |o| {
            let p = c.partition_counts();
            o.observe(p.owned, &[KeyValue::new("role", "owned")]);
            o.observe(p.replicated, &[KeyValue::new("role", "replicated")]);
            o.observe(p.incoming, &[KeyValue::new("role", "incoming")]);
            o.observe(p.moving, &[KeyValue::new("role", "moving")]);
        })
        .build();
    let c = Arc::clone(&cluster);
    meter
        .u64_observable_gauge("strata.lease.valid")
        .with_description(
            "1 while this node holds its ownership lease (always 1 outside a cluster)",
        )
        .with_callback(move |o| o.observe(u64::from(c.serving().is_ok()), &[]))
        .build();
    let c = Arc::clone(&cluster);
    meter
        .u64_observable_counter("strata.lease.lapses")
        .with_description("Times this node's ownership lease ran out before it was renewed")
        .with_unit("{lapse}")
        .with_callback(move |o| o.observe(c.lease_lapses(), &[]))
        .build();
    meter
        .u64_observable_gauge("strata.node.ready")
        .with_description("1 when the node is an active member with its partitions synced")
        .with_callback(move |o| o.observe(u64::from(cluster.readiness().is_ok()), &[]))
        .build();
}
