//! The node's supervised actors: everything with a lifecycle.
//!
//! ```text
//!                 Supervisor
//!        ┌────────────┼──────────────┐
//!   Writer 0 … Writer N-1         Janitor
//! ```
//!
//! - **Writers** apply writes and deletes to the tiers. Keys are sharded over them by hash,
//!   so writes to one key are applied in the order they arrived while writes to different
//!   keys proceed in parallel. Each write runs on a blocking thread (the filesystem tier does
//!   real I/O) and the writer waits for it before taking the next message.
//! - The **Janitor** removes expired entries from every tier on an interval.
//! - The **Supervisor** starts them, restarts any that fails (a panic in a write is logged
//!   and the shard comes back), and drains them on shutdown: every write already queued is
//!   applied before the node exits.
//!
//! Reads never pass through an actor: a memory hit is answered on the connection's task,
//! and a miss reads the slower tiers on a blocking thread.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use strata_proto::wire::{ErrorCode, WireError};
use strata_proto::{Entry, EntryKey};
use strata_store::{Tier, Tiered};

use crate::writeback::Pending;

/// A fresh prefix for the names of one node's actors. Actor names are global to the process,
/// and tests (or a program embedding nodes) may run several nodes in one.
fn node_prefix() -> String {
    static NODES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    format!("strata-{n}")
}

/// Maps a store error to what the client is told.
pub fn store_error(e: strata_store::Error) -> WireError {
    use strata_store::Error as E;
    let code = match &e {
        E::NoSpace { .. } => ErrorCode::NoSpace,
        E::TooLarge { .. } => ErrorCode::TooLarge,
        E::Pattern { .. } => ErrorCode::InvalidPattern,
        E::Proto(p) => return WireError::from(p.clone()),
        _ => ErrorCode::Internal,
    };
    WireError::new(code, e.to_string())
}

/// A message to a writer.
pub enum WriterMsg {
    /// Store an entry.
    Put {
        /// Where.
        key: EntryKey,
        /// What.
        entry: Entry,
        /// The outcome.
        reply: RpcReplyPort<Result<(), WireError>>,
    },
    /// Flush the pending write of a key (write-back) to the slower tiers.
    Flush(EntryKey),
    /// Answer once everything queued before it is done.
    Barrier(RpcReplyPort<()>),
    /// Delete a key.
    Delete {
        /// Which.
        key: EntryKey,
        /// Whether it existed.
        reply: RpcReplyPort<Result<bool, WireError>>,
    },
}

/// Applies writes for one shard of the key space.
struct Writer;

/// What a writer works on: the tiers, and the pending writes it flushes.
#[derive(Clone)]
struct WriterState {
    store: Arc<Tiered>,
    pending: Arc<Pending>,
}

impl Actor for Writer {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = WriterState;

    async fn pre_start(
        &self,
        _: ActorRef<WriterMsg>,
        state: WriterState,
    ) -> Result<WriterState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<WriterMsg>,
        msg: WriterMsg,
        state: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        let store = Arc::clone(&state.store);
        match msg {
            WriterMsg::Flush(key) => flush(&myself, key, state).await,
            WriterMsg::Barrier(reply) => {
                let _ = reply.send(());
            }
            WriterMsg::Put { key, entry, reply } => {
                let outcome = tokio::task::spawn_blocking(move || store.put(&key, entry)).await;
                let outcome = match outcome {
                    Ok(result) => result.map_err(store_error),
                    Err(e) => Err(WireError::new(
                        ErrorCode::Internal,
                        format!("write task failed: {e}"),
                    )),
                };
                let _ = reply.send(outcome);
            }
            WriterMsg::Delete { key, reply } => {
                let outcome = tokio::task::spawn_blocking(move || store.delete(&key)).await;
                let outcome = match outcome {
                    Ok(result) => result.map_err(store_error),
                    Err(e) => Err(WireError::new(
                        ErrorCode::Internal,
                        format!("delete task failed: {e}"),
                    )),
                };
                let _ = reply.send(outcome);
            }
        }
        Ok(())
    }
}

/// Writes the latest pending version of `key` to the slower tiers, then forgets it (or
/// schedules another flush if a newer version arrived meanwhile).
async fn flush(myself: &ActorRef<WriterMsg>, key: EntryKey, state: &WriterState) {
    let Some(entry) = state.pending.get(&key) else {
        return; // Flushed already, or deleted.
    };
    let version = entry.meta.version;
    let store = Arc::clone(&state.store);
    let k = key.clone();
    let outcome = tokio::task::spawn_blocking(move || store.put_slow(&k, entry)).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(key = %key, error = %e, "write-back failed; dropping the key rather than serve an older value");
            drop_key(state, &key).await;
        }
        Err(e) => {
            tracing::error!(key = %key, error = %e, "write-back task failed; dropping the key");
            drop_key(state, &key).await;
        }
    }
    if state.pending.settle(&key, version) {
        let _ = myself.cast(WriterMsg::Flush(key));
    }
}

async fn drop_key(state: &WriterState, key: &EntryKey) {
    let store = Arc::clone(&state.store);
    let k = key.clone();
    let _ = tokio::task::spawn_blocking(move || store.delete(&k)).await;
}

/// A message to the janitor.
pub enum JanitorMsg {
    /// Remove expired entries now.
    Sweep,
}

struct Janitor;

impl Actor for Janitor {
    type Msg = JanitorMsg;
    type State = Arc<Tiered>;
    type Arguments = (Arc<Tiered>, Duration);

    async fn pre_start(
        &self,
        myself: ActorRef<JanitorMsg>,
        (store, every): (Arc<Tiered>, Duration),
    ) -> Result<Arc<Tiered>, ActorProcessingErr> {
        myself.send_interval(every, || JanitorMsg::Sweep);
        Ok(store)
    }

    async fn handle(
        &self,
        _: ActorRef<JanitorMsg>,
        _: JanitorMsg,
        store: &mut Arc<Tiered>,
    ) -> Result<(), ActorProcessingErr> {
        let store = Arc::clone(store);
        match tokio::task::spawn_blocking(move || store.cleanup_expired()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(removed = n, "janitor removed expired entries"),
            Ok(Err(e)) => tracing::warn!(error = %e, "janitor failed"),
            Err(e) => tracing::warn!(error = %e, "janitor task failed"),
        }
        Ok(())
    }
}

/// Handles on the writer shards, shared by the supervisor (which replaces a restarted
/// shard) and the request service (which sends to them).
#[derive(Clone)]
pub struct Writers {
    shards: Arc<RwLock<Vec<ActorRef<WriterMsg>>>>,
    timeout: Duration,
}

impl Writers {
    fn shard_of(&self, key: &EntryKey) -> Option<ActorRef<WriterMsg>> {
        let shards = self.shards.read();
        if shards.is_empty() {
            return None;
        }
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        Some(shards[(h.finish() as usize) % shards.len()].clone())
    }

    async fn call<T: Send + 'static>(
        &self,
        key: &EntryKey,
        build: impl FnOnce(RpcReplyPort<Result<T, WireError>>) -> WriterMsg,
    ) -> Result<T, WireError> {
        let unavailable = || WireError::new(ErrorCode::Unavailable, "the node is shutting down");
        let shard = self.shard_of(key).ok_or_else(unavailable)?;
        match shard.call(build, Some(self.timeout)).await {
            Ok(CallResult::Success(result)) => result,
            Ok(CallResult::Timeout) => Err(WireError::new(
                ErrorCode::Timeout,
                "the write did not complete in time",
            )),
            Ok(CallResult::SenderError) | Err(_) => Err(unavailable()),
        }
    }

    /// Stores `entry` under `key` through the key's shard.
    pub async fn put(&self, key: EntryKey, entry: Entry) -> Result<(), WireError> {
        let k = key.clone();
        self.call(&k, move |reply| WriterMsg::Put { key, entry, reply })
            .await
    }

    /// Schedules a flush of `key`'s pending write on the key's shard.
    pub fn flush(&self, key: EntryKey) {
        if let Some(shard) = self.shard_of(&key) {
            // Refused only while shutting down; the final flush writes what is left.
            let _ = shard.cast(WriterMsg::Flush(key));
        }
    }

    /// Waits until every shard has done what was queued before this call.
    pub async fn barrier(&self) {
        let shards = self.shards.read().clone();
        for shard in shards {
            let _ = shard.call(WriterMsg::Barrier, Some(self.timeout)).await;
        }
    }

    /// Deletes `key` through the key's shard.
    pub async fn delete(&self, key: EntryKey) -> Result<bool, WireError> {
        let k = key.clone();
        self.call(&k, move |reply| WriterMsg::Delete { key, reply })
            .await
    }
}

/// A message to the supervisor.
pub enum SupervisorMsg {
    /// Apply every queued write, stop the children, and answer.
    Drain(RpcReplyPort<()>),
}

/// Starts, restarts and drains the node's actors.
pub struct Supervisor;

/// What the supervisor needs to start its children.
pub struct SupervisorArgs {
    /// The node's tiers.
    pub store: Arc<Tiered>,
    /// The shared writer handles to fill.
    pub writers: Writers,
    /// Writes waiting to be flushed.
    pub pending: Arc<Pending>,
    /// Number of writer shards.
    pub shards: usize,
    /// Interval of the janitor.
    pub janitor_every: Duration,
    /// Prefix of this node's actor names.
    pub prefix: String,
}

/// The supervisor's state.
pub struct SupervisorState {
    prefix: String,
    store: Arc<Tiered>,
    pending: Arc<Pending>,
    writers: Writers,
    janitor: Option<ActorRef<JanitorMsg>>,
    janitor_every: Duration,
}

impl Supervisor {
    /// Starts the supervisor and its children; returns the shared writer handles.
    pub async fn start(
        store: Arc<Tiered>,
        pending: Arc<Pending>,
        shards: usize,
        janitor_every: Duration,
        write_timeout: Duration,
    ) -> anyhow::Result<(ActorRef<SupervisorMsg>, Writers)> {
        let writers = Writers {
            shards: Arc::new(RwLock::new(Vec::new())),
            timeout: write_timeout,
        };
        let prefix = node_prefix();
        let args = SupervisorArgs {
            prefix: prefix.clone(),
            store,
            pending,
            writers: writers.clone(),
            shards: shards.max(1),
            janitor_every,
        };
        let (supervisor, _) =
            Actor::spawn(Some(format!("{prefix}-supervisor")), Supervisor, args).await?;
        Ok((supervisor, writers))
    }

    async fn spawn_writer(
        myself: &ActorRef<SupervisorMsg>,
        prefix: &str,
        index: usize,
        store: &Arc<Tiered>,
        pending: &Arc<Pending>,
    ) -> Result<ActorRef<WriterMsg>, ActorProcessingErr> {
        let state = WriterState {
            store: Arc::clone(store),
            pending: Arc::clone(pending),
        };
        let (writer, _) = Actor::spawn_linked(
            Some(format!("{prefix}-writer-{index}")),
            Writer,
            state,
            myself.get_cell(),
        )
        .await?;
        Ok(writer)
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut shards = Vec::with_capacity(args.shards);
        for i in 0..args.shards {
            shards.push(
                Self::spawn_writer(&myself, &args.prefix, i, &args.store, &args.pending).await?,
            );
        }
        *args.writers.shards.write() = shards;
        let (janitor, _) = Actor::spawn_linked(
            Some(format!("{}-janitor", args.prefix)),
            Janitor,
            (Arc::clone(&args.store), args.janitor_every),
            myself.get_cell(),
        )
        .await?;
        Ok(SupervisorState {
            prefix: args.prefix,
            store: args.store,
            pending: args.pending,
            writers: args.writers,
            janitor: Some(janitor),
            janitor_every: args.janitor_every,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Drain(reply) => {
                // Take the handles first so nothing new reaches the writers, then let each
                // finish what is queued.
                let shards = std::mem::take(&mut *state.writers.shards.write());
                for shard in shards {
                    if let Err(e) = shard.drain_and_wait(None).await {
                        tracing::warn!(error = %e, "writer did not drain cleanly");
                    }
                }
                if let Some(janitor) = state.janitor.take() {
                    let _ = janitor.stop_and_wait(None, None).await;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, error) = event else {
            return Ok(());
        };
        let name = cell.get_name().unwrap_or_default();
        tracing::error!(actor = %name, %error, "actor failed; restarting it");
        if let Some(index) = name
            .rsplit_once("-writer-")
            .map(|(_, index)| index)
            .and_then(|i| i.parse::<usize>().ok())
        {
            let writer =
                Self::spawn_writer(&myself, &state.prefix, index, &state.store, &state.pending)
                    .await?;
            let mut shards = state.writers.shards.write();
            if let Some(slot) = shards.get_mut(index) {
                *slot = writer;
            }
        } else if name.ends_with("-janitor") && state.janitor.is_some() {
            let (janitor, _) = Actor::spawn_linked(
                Some(format!("{}-janitor", state.prefix)),
                Janitor,
                (Arc::clone(&state.store), state.janitor_every),
                myself.get_cell(),
            )
            .await?;
            state.janitor = Some(janitor);
        }
        Ok(())
    }
}

/// Asks the supervisor to drain, waiting at most `grace`.
pub async fn drain(supervisor: &ActorRef<SupervisorMsg>, grace: Duration) {
    match supervisor.call(SupervisorMsg::Drain, Some(grace)).await {
        Ok(CallResult::Success(())) => {}
        other => {
            tracing::warn!(outcome = ?other.map(|_| ()), "draining the writers did not finish in time")
        }
    }
    supervisor.stop(None);
}
