//! The Raft state machine: applies committed entries to a [`ClusterState`], persists it, builds
//! and installs snapshots, and publishes every new state.
//!
//! The state is small (a few tens of KiB), so after every applied batch the whole of it — last
//! applied log id, last membership and the cluster state — is written to `sm-state.bin`
//! (temp + fsync + rename + fsync directory): a restarted node resumes where it stopped
//! instead of re-applying the log. A snapshot is the postcard of the same triple; the current
//! one is kept in `sm-snapshot.bin` so that it survives restarts too.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StoredMembership, ToStorageResult,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::file;
use super::state::{ClusterState, CommandResponse};
use super::{PeerNode, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;
type Meta = SnapshotMeta<u64, PeerNode>;

const STATE_FILE: &str = "sm-state.bin";
const SNAPSHOT_FILE: &str = "sm-snapshot.bin";
const STATE_MAGIC: &[u8; file::MAGIC_LEN] = b"STRSMS03";
const SNAPSHOT_MAGIC: &[u8; file::MAGIC_LEN] = b"STRSNP03";

/// Everything the state machine holds; also the content of a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, PeerNode>,
    cluster: ClusterState,
}

/// A snapshot as kept in `sm-snapshot.bin`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    data: Vec<u8>,
}

impl StoredSnapshot {
    fn to_snapshot(&self) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.data.clone())),
        }
    }
}

/// The current snapshot, shared with the snapshot builders.
#[derive(Default)]
struct SnapshotSlot {
    current: Mutex<Option<StoredSnapshot>>,
    /// Serialises writes of `sm-snapshot.bin`.
    write: Mutex<()>,
    /// Makes snapshot ids unique within a process.
    seq: AtomicU64,
}

impl SnapshotSlot {
    /// Persists `snap` and makes it current, unless the current one is newer. Blocking.
    fn store(&self, dir: &Path, snap: StoredSnapshot) -> io::Result<()> {
        let _write = self.write.lock();
        if self
            .current
            .lock()
            .as_ref()
            .is_some_and(|cur| cur.meta.last_log_id > snap.meta.last_log_id)
        {
            return Ok(());
        }
        file::write_single(dir, SNAPSHOT_FILE, SNAPSHOT_MAGIC, &file::encode(&snap)?)?;
        *self.current.lock() = Some(snap);
        Ok(())
    }
}

/// The Raft state machine ([`RaftStateMachine`]) of one node.
pub struct StateMachineStore {
    dir: PathBuf,
    sm: Applied,
    snapshot: Arc<SnapshotSlot>,
    tx: watch::Sender<Arc<ClusterState>>,
}

/// Builds a snapshot of the state machine as it was when the builder was made.
pub struct SnapshotBuilder {
    dir: PathBuf,
    sm: Applied,
    snapshot: Arc<SnapshotSlot>,
}

impl StateMachineStore {
    /// Opens the state machine kept in `dir` (creating the directory if needed): the state
    /// of the last applied batch, or of the current snapshot if that is newer.
    ///
    /// A damaged file fails with [`io::ErrorKind::InvalidData`].
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        file::remove_tmp(dir, STATE_FILE)?;
        file::remove_tmp(dir, SNAPSHOT_FILE)?;
        let state_path = dir.join(STATE_FILE);
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let mut sm: Applied = match file::read_single(dir, STATE_FILE, STATE_MAGIC)? {
            Some(bytes) => file::decode(&state_path, &bytes)?,
            None => Applied::default(),
        };
        let snapshot: Option<StoredSnapshot> =
            match file::read_single(dir, SNAPSHOT_FILE, SNAPSHOT_MAGIC)? {
                Some(bytes) => Some(file::decode(&snapshot_path, &bytes)?),
                None => None,
            };
        if let Some(snap) = &snapshot {
            let content = snapshot_content(&snapshot_path, &snap.meta, &snap.data)?;
            // Installed, but the node stopped before the state file was replaced.
            if snap.meta.last_log_id > sm.last_applied {
                sm = content;
            }
        }
        let (tx, _) = watch::channel(Arc::new(sm.cluster.clone()));
        Ok(Self {
            dir: dir.to_path_buf(),
            sm,
            snapshot: Arc::new(SnapshotSlot {
                current: Mutex::new(snapshot),
                ..SnapshotSlot::default()
            }),
            tx,
        })
    }

    /// A receiver of every new cluster state: the current one is readable at once with
    /// `borrow()`, and `changed()` wakes on each state published after applying a batch,
    /// installing a snapshot or opening.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.tx.subscribe()
    }

    /// The current cluster state.
    pub fn current(&self) -> Arc<ClusterState> {
        self.tx.borrow().clone()
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.sm.last_applied
    }

    /// Writes the state to `sm-state.bin`.
    async fn persist(&self) -> io::Result<()> {
        let bytes = file::encode(&self.sm)?;
        let dir = self.dir.clone();
        file::blocking(move || file::write_single(&dir, STATE_FILE, STATE_MAGIC, &bytes)).await
    }

    /// Publishes the cluster state if it differs from the last one published.
    fn publish(&self) {
        let cluster = &self.sm.cluster;
        self.tx.send_if_modified(|cur| {
            if **cur == *cluster {
                false
            } else {
                *cur = Arc::new(cluster.clone());
                true
            }
        });
    }
}

/// Decodes snapshot data and checks that it matches its metadata.
fn snapshot_content(path: &Path, meta: &Meta, data: &[u8]) -> io::Result<Applied> {
    let content: Applied = file::decode(path, data)?;
    if content.last_applied != meta.last_log_id || content.last_membership != meta.last_membership {
        return Err(file::corrupt(
            path,
            format!(
                "snapshot data (last applied {:?}) does not match its metadata ({meta})",
                content.last_applied
            ),
        ));
    }
    Ok(content)
}

fn sm_err(verb: ErrorVerb) -> impl FnOnce() -> (ErrorSubject<u64>, ErrorVerb) {
    move || (ErrorSubject::StateMachine, verb)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let data =
            file::encode(&self.sm).sto_res(|| (ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        let seq = self.snapshot.seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match self.sm.last_applied {
            Some(l) => format!("{l}-{seq}"),
            None => format!("none-{seq}"),
        };
        let stored = StoredSnapshot {
            meta: Meta {
                last_log_id: self.sm.last_applied,
                last_membership: self.sm.last_membership.clone(),
                snapshot_id,
            },
            data,
        };
        let snapshot = stored.to_snapshot();
        let signature = stored.meta.signature();
        let slot = self.snapshot.clone();
        let dir = self.dir.clone();
        file::blocking(move || slot.store(&dir, stored))
            .await
            .sto_res(|| (ErrorSubject::Snapshot(Some(signature)), ErrorVerb::Write))?;
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, PeerNode>), StorageError<u64>> {
        Ok((self.sm.last_applied, self.sm.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            self.sm.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Normal(cmd) => self.sm.cluster.apply(&cmd),
                EntryPayload::Membership(m) => {
                    self.sm.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    unchanged(&self.sm.cluster)
                }
                EntryPayload::Blank => unchanged(&self.sm.cluster),
            };
            responses.push(response);
        }
        if responses.is_empty() {
            return Ok(responses);
        }
        self.persist().await.sto_res(sm_err(ErrorVerb::Write))?;
        self.publish();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            dir: self.dir.clone(),
            sm: self.sm.clone(),
            snapshot: self.snapshot.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let signature = meta.signature();
        let data = snapshot.into_inner();
        let content =
            snapshot_content(Path::new("received snapshot"), meta, &data).sto_res(|| {
                (
                    ErrorSubject::Snapshot(Some(signature.clone())),
                    ErrorVerb::Read,
                )
            })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let slot = self.snapshot.clone();
        let dir = self.dir.clone();
        file::blocking(move || slot.store(&dir, stored))
            .await
            .sto_res(|| (ErrorSubject::Snapshot(Some(signature)), ErrorVerb::Write))?;
        self.sm = content;
        self.persist().await.sto_res(sm_err(ErrorVerb::Write))?;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(self
            .snapshot
            .current
            .lock()
            .as_ref()
            .map(StoredSnapshot::to_snapshot))
    }
}

/// The response to an entry that carries no command.
fn unchanged(cluster: &ClusterState) -> CommandResponse {
    CommandResponse::Applied {
        epoch: cluster.epoch,
        changed: false,
    }
}
