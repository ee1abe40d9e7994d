//! The node's QUIC server: endpoint, connections, streams, and graceful shutdown.
//!
//! A [`RunningNode`] is one node serving its tiers:
//!
//! - the **listener** actor owns the accept loop: each handshake must present a certificate
//!   signed by the cluster CA (mutual TLS, see [`tls`]) or it is refused; beyond
//!   `max_connections`, new connections are refused outright;
//! - each connection accepts bidirectional streams, at most `max_streams_per_connection` at a
//!   time (QUIC's own stream limit: a client that opens thousands of streams waits, it does
//!   not make the node allocate);
//! - each stream carries one request: its frame header is checked, its declared bodies are
//!   checked against the limits before anything is allocated, and the request runs with a
//!   deadline. A malformed, truncated or oversized request gets an error response on its own
//!   stream; the connection and the node carry on.
//!
//! Beside QUIC, the node serves its admin HTTP endpoint (see [`admin`](crate::admin)) on
//! `config.admin`, and records every request in its [`Metrics`] and, when traces are on,
//! in a span joined to the caller's trace.
//!
//! Shutdown (SIGINT or SIGTERM from the CLI): stop accepting connections and streams, let the
//! requests in flight finish (bounded by `shutdown_grace_ms`), drain the writer actors so
//! every queued write reaches the tiers, close the endpoint, and let the filesystem tier
//! flush as it is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use quinn::{Endpoint, Incoming, RecvStream, SendStream};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use strata_client::io::{self, ReadLimits, StreamError};
use strata_proto::NodeId;
use strata_proto::ring::{Member, MemberState, RingParams};
use strata_proto::wire::{ErrorCode, RequestFrame, Response, ResponseFrame, WireError};
use strata_store::{Clock, TierContext, TierRegistry, Tiered, system_clock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::actors::{self, Supervisor, SupervisorMsg};
use crate::admin::{AdminServer, AdminState};
use crate::cluster::membership::{Membership, MembershipMsg};
use crate::cluster::network::NetworkFactory;
use crate::cluster::peers::Peers;
use crate::cluster::{Cluster, Start};
use crate::config::Config;
use crate::config::WriteMode;
use crate::metrics::{self, Metrics};
use crate::service::{self, Service, ServiceLimits};
use crate::tls;
use crate::tombstones::Tombstones;
use crate::writeback::Pending;

/// Everything a connection task needs.
struct Shared {
    service: Arc<Service>,
    limits: ReadLimits,
    chunk_bytes: usize,
    request_timeout: Duration,
    max_connections: usize,
    connections: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    /// Tracks request tasks, so shutdown can wait for those in flight.
    requests: TaskTracker,
    /// Cancelled when the node stops accepting work.
    stopping: CancellationToken,
    /// Bytes of requests being received, in KiB permits (`max_inflight_bytes`).
    inflight: Arc<Semaphore>,
    /// Tells connections from members from those of clients.
    members: tls::MemberCheck,
}

/// A node that is serving.
pub struct RunningNode {
    local_addr: SocketAddr,
    endpoint: Endpoint,
    listener: ActorRef<()>,
    supervisor: ActorRef<SupervisorMsg>,
    shared: Arc<Shared>,
    store: Arc<Tiered>,
    pending: Arc<Pending>,
    grace: Duration,
    cluster: Arc<Cluster>,
    membership: ActorRef<MembershipMsg>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    admin: AdminServer,
}

impl RunningNode {
    /// Opens the tiers, starts the actors and begins serving on `config.listen`.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_with_clock(config, system_clock()).await
    }

    /// [`RunningNode::start`] with a given clock.
    pub async fn start_with_clock(
        mut config: Config,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        tls::install_crypto_provider();
        // Bound first, so that the members learn the admin port picked for port 0.
        let admin_listener = AdminServer::bind(config.admin).await?;
        let admin_addr = admin_listener.local_addr()?;
        if config.cluster.advertise_admin.is_none() {
            config.cluster.advertise_admin = Some(admin_addr.to_string());
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let tiered = config.tiered_config();
        let ctx = TierContext {
            clock: Arc::clone(&clock),
            data_dir: config.data_dir.clone(),
        };
        let store = Arc::new(
            TierRegistry::new()
                .build_tiered(&tiered, &ctx)
                .context("opening the tiers")?,
        );
        let request_timeout = Duration::from_millis(config.limits.request_timeout_ms);
        let pending = Arc::new(Pending::new(config.store.max_pending_bytes));
        let (supervisor, writers) = Supervisor::start(
            Arc::clone(&store),
            Arc::clone(&pending),
            config.store.writers,
            Duration::from_secs(30),
            request_timeout,
        )
        .await?;

        let limits = &config.limits;
        // Write-back acknowledges from the first tier, which must then be in memory.
        let memory_first = store.tiers().first().is_some_and(|t| !t.stats().persistent);
        if config.store.write_mode == WriteMode::Back && !memory_first {
            tracing::warn!("write_mode = \"back\" needs a memory tier first; writing through");
        }
        let write_back = (config.store.write_mode == WriteMode::Back && memory_first)
            .then(|| Arc::clone(&pending));
        let write_back_pending = write_back.clone();

        let server_config = tls::server_config(&config.tls, Arc::new(config.transport()))
            .context("loading TLS certificates")?;
        let socket = io::udp_socket(config.listen)
            .with_context(|| format!("listening on {}", config.listen))?;
        let keys = quic_keys(&config.data_dir).context("loading the QUIC reset key")?;
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(keys.reset));
        let cid_key = keys.cid;
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let endpoint = Endpoint::new(
            endpoint_config,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .with_context(|| format!("listening on {}", config.listen))?;
        let local_addr = endpoint.local_addr()?;
        let (cluster, start) = start_cluster(&config, endpoint.clone(), local_addr).await?;
        let grace = Duration::from_secs(config.cluster.tombstone_grace_secs);
        let tombstones = Arc::new(
            Tombstones::open(&config.data_dir, grace, strata_proto::Timestamp::now())
                .context("opening the tombstone log")?,
        );
        let service = Service::new(
            Arc::clone(&cluster),
            Arc::clone(&store),
            tombstones,
            writers,
            write_back,
            clock,
            ServiceLimits {
                max_value_bytes: limits.max_value_bytes,
                inline_limit: limits.chunk_bytes.min(service::ANSWER_INLINE_MAX),
                max_batch_keys: limits.max_batch_keys,
                answer_inline_budget: limits.max_frame_bytes as usize / 2,
            },
        );
        let service = Arc::new(service);
        let membership = Membership::start(Arc::clone(&cluster), Arc::clone(&service)).await?;
        let connections = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(Metrics::new(config.node_id)?);
        metrics.observe(metrics::Sources {
            cluster: Arc::clone(&cluster),
            store: Arc::clone(&store),
            connections: Arc::clone(&connections),
            pending: write_back_pending,
        });
        let admin = AdminServer::start(
            admin_listener,
            AdminState {
                metrics: Arc::clone(&metrics),
                cluster: Arc::clone(&cluster),
                service: Arc::clone(&service),
            },
        );
        let members = tls::MemberCheck::new(&config.tls.ca).context("loading TLS certificates")?;
        let shared = Arc::new(Shared {
            members,
            service,
            limits: ReadLimits {
                max_frame_bytes: limits.max_frame_bytes,
                max_value_bytes: limits.max_value_bytes,
                // One request may use the whole in-flight budget, never more (it could not
                // be admitted at all).
                max_total_bytes: limits
                    .max_value_bytes
                    .saturating_mul(4)
                    .min(limits.max_inflight_bytes),
            },
            chunk_bytes: limits.chunk_bytes,
            request_timeout,
            max_connections: limits.max_connections,
            connections,
            metrics,
            requests: TaskTracker::new(),
            stopping: CancellationToken::new(),
            inflight: Arc::new(Semaphore::new(
                usize::try_from(limits.max_inflight_bytes / RESERVE_UNIT)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS),
            )),
        });

        let (listener, _) = Actor::spawn_linked(
            None,
            Listener,
            (endpoint.clone(), Arc::clone(&shared)),
            supervisor.get_cell(),
        )
        .await?;
        tracing::info!(node = config.node_id, addr = %local_addr, admin = %admin_addr, "serving");
        let mut tasks = enter_cluster(&cluster, start, &config);
        tasks.push(tokio::spawn(crate::cluster::lease::run(Arc::clone(
            &cluster,
        ))));
        tasks.push(tokio::spawn(purge_tombstones(Arc::clone(&shared.service))));
        Ok(Self {
            local_addr,
            endpoint,
            listener,
            supervisor,
            shared,
            store,
            pending,
            grace: Duration::from_millis(config.shutdown_grace_ms),
            cluster,
            membership,
            tasks,
            admin,
        })
    }

    /// The node's cluster membership.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Hands this node's partitions off and waits (up to `timeout`) until it has left the
    /// cluster. Nothing to do for a node that is in no cluster.
    pub async fn leave(&self, timeout: Duration) -> anyhow::Result<()> {
        if !self.cluster.is_clustered() {
            return Ok(());
        }
        let left = self.cluster.left();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.cluster.leave(self.cluster.id()).await {
                Ok(_) => break,
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "leave not accepted yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => anyhow::bail!("leaving the cluster: {e}"),
            }
        }
        tracing::info!("handing partitions off before leaving");
        tokio::time::timeout_at(deadline, left.cancelled())
            .await
            .context("the hand-off did not finish in time")?;
        Ok(())
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the admin HTTP endpoint.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The node's tiers.
    pub fn store(&self) -> &Arc<Tiered> {
        &self.store
    }

    /// Stops gracefully: no new connections or requests, in-flight requests finish, queued
    /// writes are applied, then the endpoint closes.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        for task in &self.tasks {
            task.abort();
        }
        self.shared.stopping.cancel();
        let _ = self.listener.stop_and_wait(None, Some(self.grace)).await;
        self.shared.requests.close();
        if tokio::time::timeout(self.grace, self.shared.requests.wait())
            .await
            .is_err()
        {
            tracing::warn!("requests still in flight after the grace period; closing anyway");
        }
        actors::drain(&self.supervisor, self.grace).await;
        // Writes still pending after the writers stopped (a flush re-queued during the
        // drain) go to disk now.
        let (pending, store) = (Arc::clone(&self.pending), Arc::clone(&self.store));
        if let Ok(flushed) = tokio::task::spawn_blocking(move || pending.flush_all(&store)).await
            && flushed > 0
        {
            tracing::info!(flushed, "flushed pending writes");
        }
        self.membership.stop(None);
        self.admin.shutdown().await;
        self.shared.metrics.shutdown();
        self.cluster.shutdown().await;
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        tracing::info!("stopped");
    }
}

/// Owns the accept loop.
struct Listener;

/// The listener's state: the endpoint (to stop accepting) and the accept loop task.
struct ListenerState {
    endpoint: Endpoint,
    accept: tokio::task::JoinHandle<()>,
}

impl Actor for Listener {
    type Msg = ();
    type State = ListenerState;
    type Arguments = (Endpoint, Arc<Shared>);

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        (endpoint, shared): (Endpoint, Arc<Shared>),
    ) -> Result<ListenerState, ActorProcessingErr> {
        let accept = tokio::spawn(accept_loop(endpoint.clone(), shared));
        Ok(ListenerState { endpoint, accept })
    }

    async fn handle(
        &self,
        _: ActorRef<()>,
        _: (),
        _: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<()>,
        state: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        // Refuse new connections; the ones open stop taking streams via the cancel token.
        state.endpoint.set_server_config(None);
        state.accept.abort();
        Ok(())
    }
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            _ = shared.stopping.cancelled() => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        if shared.connections.load(Ordering::Relaxed) >= shared.max_connections {
            tracing::warn!(peer = %incoming.remote_address(), "refusing connection: too many connections");
            incoming.refuse();
            continue;
        }
        tokio::spawn(serve_connection(incoming, Arc::clone(&shared)));
    }
}

/// Counts a connection for as long as it lives.
struct ConnectionSlot<'a>(&'a AtomicUsize);

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(incoming: Incoming, shared: Arc<Shared>) {
    let peer = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(e) => {
            tracing::info!(%peer, error = %e, "handshake refused");
            return;
        }
    };
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let _slot = ConnectionSlot(&shared.connections);
    // Members present node certificates; clients may not send members-only requests.
    let member = connection
        .peer_identity()
        .and_then(|identity| {
            identity
                .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .is_some_and(|chain| shared.members.is_member(&chain));
    tracing::debug!(%peer, member, "connection open");
    loop {
        let stream = tokio::select! {
            _ = shared.stopping.cancelled() => break,
            stream = connection.accept_bi() => stream,
        };
        match stream {
            Ok((send, recv)) => {
                let shared2 = Arc::clone(&shared);
                shared
                    .requests
                    .spawn(serve_stream(send, recv, shared2, member));
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection closed");
                break;
            }
        }
    }
}

async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    shared: Arc<Shared>,
    member: bool,
) {
    // A peer that opens a stream and then stalls must not hold its slot for ever.
    let deadline = tokio::time::Instant::now() + shared.request_timeout;
    let (frame, bodies, _reserved) =
        match tokio::time::timeout_at(deadline, read_request(&mut recv, &shared)).await {
            Ok(Ok(request)) => request,
            Ok(Err((id, e))) => return refuse(send, recv, id, e, &shared).await,
            Err(_) => {
                let late = WireError::new(ErrorCode::Timeout, "request not received in time");
                return refuse(send, recv, 0, StreamError::Protocol(late), &shared).await;
            }
        };
    let started = std::time::Instant::now();
    let (request, trace) = frame.request.untraced();
    let kind = request.kind();
    let replica_read = metrics::is_replica_read(&request);
    let span = crate::telemetry::request_span(kind, shared.service.node_id(), trace.as_ref());
    let answer = if request.members_only() && !member {
        Ok((
            Response::Error(WireError::new(
                ErrorCode::Forbidden,
                format!(
                    "{kind} is for members of the cluster only, and this connection did not \
                     present a node certificate"
                ),
            )),
            Vec::new(),
        ))
    } else {
        tokio::time::timeout(
            shared.request_timeout,
            shared
                .service
                .handle(frame.epoch, request, bodies)
                .instrument(span),
        )
        .await
    };
    let (response, bodies) = match answer {
        Ok(answer) => answer,
        Err(_) => (
            Response::Error(WireError::new(
                ErrorCode::Timeout,
                format!("{kind} did not complete in time"),
            )),
            Vec::new(),
        ),
    };
    shared
        .metrics
        .record(kind, replica_read, &response, started.elapsed());
    let response = ResponseFrame {
        id: frame.id,
        response,
    };
    if let Err(e) = io::write_message(&mut send, &response, &bodies, shared.chunk_bytes).await {
        tracing::debug!(request = kind, error = %e, "could not send the response");
        return;
    }
    let _ = send.finish();
}

/// Memory reserved for a request being received, in [`RESERVE_UNIT`]s.
type Reservation = Option<OwnedSemaphorePermit>;

/// Granularity of the in-flight byte budget: permits are KiB, so a `u32` counts up to 4 TiB.
const RESERVE_UNIT: u64 = 1024;

/// Reserves room for `bytes` in the node-wide budget, waiting for other requests to finish
/// if it is full. The reservation is released when dropped.
async fn reserve(shared: &Shared, bytes: u64, held: &mut Reservation) -> Result<(), StreamError> {
    let units = u32::try_from(bytes.div_ceil(RESERVE_UNIT)).unwrap_or(u32::MAX);
    if units == 0 {
        return Ok(());
    }
    let permit = Arc::clone(&shared.inflight)
        .acquire_many_owned(units)
        .await
        .map_err(|_| {
            StreamError::Protocol(WireError::new(
                ErrorCode::Unavailable,
                "the node is shutting down",
            ))
        })?;
    match held {
        Some(p) => p.merge(permit),
        None => *held = Some(permit),
    }
    Ok(())
}

/// Reads one request: header, frame body, streamed bodies. Each declared length is checked
/// against the limits and reserved in the in-flight budget before anything is allocated for
/// it. On failure, returns the request id (0 before the frame is decoded) with the error.
async fn read_request(
    recv: &mut RecvStream,
    shared: &Shared,
) -> Result<(RequestFrame, Vec<bytes::Bytes>, Reservation), (u64, StreamError)> {
    let mut reserved: Reservation = None;
    let header = io::read_header(recv, &shared.limits)
        .await
        .map_err(|e| (0, e))?;
    reserve(shared, u64::from(header.len), &mut reserved)
        .await
        .map_err(|e| (0, e))?;
    let frame: RequestFrame = io::read_body(recv, &header).await.map_err(|e| (0, e))?;
    let lengths = frame.request.streamed_lengths();
    io::check_lengths(&lengths, &shared.limits).map_err(|e| (frame.id, e.into()))?;
    reserve(shared, lengths.iter().sum(), &mut reserved)
        .await
        .map_err(|e| (frame.id, e))?;
    let bodies = io::read_bodies(recv, &lengths, &shared.limits)
        .await
        .map_err(|e| (frame.id, e))?;
    Ok((frame, bodies, reserved))
}

/// Answers a request that could not be read with the reason, and stops reading it.
async fn refuse(
    mut send: SendStream,
    mut recv: RecvStream,
    id: u64,
    error: StreamError,
    shared: &Shared,
) {
    let Some(wire_error) = error.wire_error() else {
        tracing::debug!(error = %error, "request stream failed");
        return;
    };
    tracing::info!(error = %wire_error, "refusing a bad request");
    // Whatever else the peer sends on this stream is discarded unread.
    let _ = recv.stop(1u32.into());
    let response = ResponseFrame {
        id,
        response: Response::Error(wire_error),
    };
    if io::write_message(&mut send, &response, &[], shared.chunk_bytes)
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
}

/// Opens Raft (or not, for a node in no cluster) and builds the node's [`Cluster`].
async fn start_cluster(
    config: &Config,
    endpoint: Endpoint,
    bound: SocketAddr,
) -> anyhow::Result<(Arc<Cluster>, Start)> {
    let c = &config.cluster;
    let raft_dir = config.data_dir.join("raft");
    let has_state = raft_dir.exists();
    let start = match (&c.join, c.bootstrap) {
        (Some(addr), _) => Start::Join(addr.clone()),
        (None, true) => Start::Bootstrap,
        (None, false) if has_state => Start::Restart,
        (None, false) => Start::Standalone,
    };
    let me = Member {
        id: NodeId(config.node_id),
        addr: match start {
            Start::Standalone => bound.to_string(),
            _ => config.advertised_addr(bound)?,
        },
        admin: config.advertised_admin(),
        state: MemberState::Joining,
        client_addr: config.cluster.advertise_client.clone(),
    };
    let quic = tls::client_config(&config.tls).context("loading the node's client certificate")?;
    let mut base = strata_client::ClientConfig::new(me.addr.clone(), &config.data_dir);
    base.limits = ReadLimits {
        max_frame_bytes: config.limits.max_frame_bytes,
        max_value_bytes: config.limits.max_value_bytes,
        max_total_bytes: config.limits.max_inflight_bytes,
    };
    base.chunk_bytes = config.limits.chunk_bytes;
    base.inline_limit = config.limits.chunk_bytes;
    let peers = Arc::new(Peers::new(endpoint, quic, base));
    let params = RingParams {
        partitions: c.partitions,
        vnodes: c.vnodes,
        replication: c.replication,
    };
    if start == Start::Standalone {
        return Ok((Arc::new(Cluster::standalone(me, params, peers)), start));
    }
    let (log, state_machine) = crate::raft::open(&raft_dir)
        .await
        .with_context(|| format!("opening the Raft state in {}", raft_dir.display()))?;
    let state = state_machine.subscribe();
    let raft_config = openraft::Config {
        cluster_name: "strata".into(),
        heartbeat_interval: c.heartbeat_ms,
        // openraft refuses votes for `election_timeout_max` after a heartbeat (its leader
        // lease, which must outlast our ownership leases) and a follower starts an election
        // after that plus a random `min..max`: 1.5–2 × `election_timeout_ms` in all, at the
        // first of its timer ticks (every 1.5 × `heartbeat_interval`) after that.
        election_timeout_min: c.election_timeout_ms / 2,
        election_timeout_max: c.election_timeout_ms,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    }
    .validate()
    .context("Raft settings")?;
    let raft = openraft::Raft::new(
        config.node_id,
        Arc::new(raft_config),
        NetworkFactory::new(Arc::clone(&peers)),
        log,
        state_machine,
    )
    .await
    .context("starting Raft")?;
    let cluster = Cluster::clustered(me, c.clone(), peers, raft, state, has_state);
    Ok((Arc::new(cluster), start))
}

/// File in the data directory holding the node's QUIC stateless-reset key.
const RESET_KEY_FILE: &str = "quic-reset.key";

/// The QUIC keys a node keeps across restarts.
struct QuicKeys {
    /// Signs stateless resets.
    reset: ring::hmac::Key,
    /// Keys the hash that connection IDs carry, so that the next process recognises the IDs
    /// the previous one issued.
    cid: u64,
}

/// The node's QUIC keys, derived from a secret made once and kept in the data directory. A
/// node that restarts with them can tell its peers and clients that their connections to its
/// previous process are gone (a stateless reset they can verify), so they reconnect at once
/// instead of timing out on a dead connection. Both halves are needed: quinn answers a packet
/// for an unknown connection with a reset only if its connection ID passes the generator's
/// check, and the default generator's key is new in every process.
fn quic_keys(data_dir: &std::path::Path) -> anyhow::Result<QuicKeys> {
    use ring::rand::SecureRandom as _;
    let path = data_dir.join(RESET_KEY_FILE);
    let secret = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 64 => bytes,
        Ok(_) => anyhow::bail!("{} is not a 64-byte key", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = vec![0u8; 64];
            ring::rand::SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| anyhow::anyhow!("no system randomness"))?;
            std::fs::create_dir_all(data_dir)?;
            let tmp = data_dir.join(format!("{RESET_KEY_FILE}.tmp"));
            {
                use std::io::Write as _;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(&tmp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            bytes
        }
        Err(e) => return Err(e.into()),
    };
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let tag = ring::hmac::sign(&reset, b"strata: QUIC connection ID key");
    let mut cid = [0u8; 8];
    cid.copy_from_slice(&tag.as_ref()[..8]);
    Ok(QuicKeys {
        reset,
        cid: u64::from_le_bytes(cid),
    })
}

/// Drops tombstones past their grace period, once a minute.
async fn purge_tombstones(service: Arc<Service>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Err(e) = service.purge_tombstones() {
            tracing::warn!(error = %e, "could not purge tombstones");
        }
    }
}

/// Background tasks that make a new node a member: initialise a new cluster, or ask to join
/// one (again after a restart: joining is idempotent).
fn enter_cluster(
    cluster: &Arc<Cluster>,
    start: Start,
    config: &Config,
) -> Vec<tokio::task::JoinHandle<()>> {
    let params = RingParams {
        partitions: config.cluster.partitions,
        vnodes: config.cluster.vnodes,
        replication: config.cluster.replication,
    };
    let write_quorum = config.cluster.write_quorum;
    let cluster = Arc::clone(cluster);
    match start {
        Start::Standalone | Start::Restart => Vec::new(),
        Start::Bootstrap => vec![tokio::spawn(async move {
            if let Err(e) = bootstrap(&cluster, params, write_quorum).await {
                tracing::error!(error = %e, "could not bootstrap the cluster");
            }
        })],
        Start::Join(seed) => vec![tokio::spawn(async move { join(&cluster, &seed).await })],
    }
}

async fn bootstrap(cluster: &Cluster, params: RingParams, write_quorum: u32) -> anyhow::Result<()> {
    let Some(raft) = cluster.raft() else {
        return Ok(());
    };
    let me = cluster.me().clone();
    if !raft.is_initialized().await? {
        let node = crate::raft::PeerNode {
            addr: me.addr.clone(),
            admin: me.admin.clone(),
        };
        raft.initialize(std::collections::BTreeMap::from([(me.id.0, node)]))
            .await
            .context("initialising Raft")?;
        tracing::info!("bootstrapped a new cluster");
    }
    // Init is the first command of the cluster; retried until this node leads and commits it.
    for _ in 0..600 {
        if cluster.state().is_initialized() {
            return Ok(());
        }
        let init = crate::raft::Command::Init {
            params,
            member: Member {
                state: MemberState::Active,
                ..me.clone()
            },
            write_quorum,
        };
        match cluster.propose(init).await {
            Ok(_) => return Ok(()),
            Err(e) => tracing::debug!(error = %e, "cluster not initialised yet"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the new cluster did not elect this node in time")
}

async fn join(cluster: &Cluster, seed: &str) {
    let me = cluster.me().clone();
    let mut pause = Duration::from_millis(100);
    loop {
        let known = cluster
            .state()
            .members
            .get(&me.id)
            .is_some_and(|m| m.addr == me.addr);
        if known {
            tracing::info!("already a member");
            return;
        }
        let request = strata_proto::wire::Request::Join { member: me.clone() };
        match cluster
            .peers()
            .call(seed, 0, request, &[], Duration::from_secs(30))
            .await
        {
            Ok(_) => {
                tracing::info!(seed, "joined the cluster");
                return;
            }
            Err(e) => tracing::info!(seed, error = %e, "join not accepted yet; retrying"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use quinn_proto::{ConnectionIdGenerator, HashedConnectionIdGenerator};

    use super::*;

    /// A restarted node must recognise the connection IDs its previous process issued (or
    /// quinn drops their packets instead of answering with a stateless reset) and sign the
    /// reset with the same key.
    #[test]
    fn quic_keys_survive_a_restart_and_differ_between_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let before = quic_keys(&a).unwrap();
        let after = quic_keys(&a).unwrap();
        let other = quic_keys(&b).unwrap();
        assert_eq!(before.cid, after.cid);
        assert_ne!(before.cid, other.cid);
        let msg = b"connection id";
        assert_eq!(
            ring::hmac::sign(&before.reset, msg).as_ref(),
            ring::hmac::sign(&after.reset, msg).as_ref()
        );

        let mut previous = HashedConnectionIdGenerator::from_key(before.cid);
        let issued = previous.generate_cid();
        let restarted = HashedConnectionIdGenerator::from_key(after.cid);
        assert!(restarted.validate(&issued).is_ok());
        let stranger = HashedConnectionIdGenerator::from_key(other.cid);
        assert!(stranger.validate(&issued).is_err());
    }
}
