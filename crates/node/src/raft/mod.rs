//! Cluster metadata through Raft (openraft 0.9, storage v2).
//!
//! Only metadata goes through Raft — members, ring parameters, the partition table and the
//! ring epoch — never cache data. This module holds the pieces that do not need a network:
//!
//! - [`TypeConfig`]: the openraft type configuration (application data [`Command`], response
//!   [`CommandResponse`], `u64` node ids, [`PeerNode`] addresses, in-memory snapshot data).
//! - [`ClusterState`] and its pure, deterministic logic: how every [`Command`] changes the
//!   members and the partition table, including the hand-off of moving partitions.
//! - [`LogStore`]: the Raft log, vote, committed and purged log ids, persisted crash-safely.
//! - [`StateMachineStore`]: applies committed entries to a [`ClusterState`], persists it after
//!   every batch, builds and installs snapshots, and publishes each new state to subscribers
//!   ([`StateMachineStore::subscribe`]).
//!
//! [`open`] opens both stores from one directory (the node's `DATA_DIR/raft`).
//!
//! # On-disk layout (`DIR/`)
//! Every file starts with an 8-byte magic naming its kind and format version; records are
//! framed as `len: u32 LE | crc32c(len bytes ‖ payload): u32 LE | payload`, payloads are
//! postcard.
//!
//! - `log.bin` (magic `STRLOG02`): one frame per log entry (`openraft::Entry<TypeConfig>`),
//!   strictly increasing indexes, appended and fsynced before the append is acknowledged.
//!   Truncation cuts the file at the first removed record (set_len + fsync). Purged entries
//!   are skipped on reading and dropped by rewriting the file (temp + fsync + rename + fsync
//!   directory) once they are at least as many as the live ones.
//! - `log-meta.bin` (`STRLMT01`): vote, committed log id, last purged log id; replaced
//!   atomically (temp + fsync + rename + fsync directory) by every change.
//! - `sm-state.bin` (`STRSMS03`): last applied log id, last membership and the
//!   [`ClusterState`]; replaced atomically after every applied batch.
//! - `sm-snapshot.bin` (`STRSNP03`): the current snapshot (its `SnapshotMeta` and data, the
//!   data being the postcard of the same triple as `sm-state.bin`); replaced atomically.
//!
//! Recovery: a damaged frame at the end of `log.bin` (a torn append that was never
//! acknowledged) is cut off when the log is opened; a damaged frame followed by an intact one
//! is corruption and opening fails with `InvalidData`, as does any damage to the atomically
//! replaced files — no acknowledged entry is silently dropped.

pub(crate) mod file;
mod log_store;
mod state;
mod state_machine;

use std::fmt;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use log_store::{LogReader, LogStore};
pub use state::{ClusterState, Command, CommandResponse};
pub use state_machine::{SnapshotBuilder, StateMachineStore};

openraft::declare_raft_types!(
    /// The openraft type configuration of the cluster metadata group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft instance of the cluster metadata group.
pub type Raft = openraft::Raft<TypeConfig>;

/// How to reach a Raft peer (the node data of openraft's membership).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// `HOST:PORT` of its QUIC endpoint (Raft RPCs ride on it).
    pub addr: String,
    /// `HOST:PORT` of its admin HTTP endpoint.
    pub admin: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (admin {})", self.addr, self.admin)
    }
}

/// Opens (creating if needed) the Raft log store and state machine store kept in `dir`.
///
/// Fails with `InvalidData` if a file is corrupt (see the module docs for what is repaired
/// and what is not).
pub async fn open(dir: &Path) -> io::Result<(LogStore, StateMachineStore)> {
    let dir = dir.to_path_buf();
    file::blocking(move || Ok((LogStore::open(&dir)?, StateMachineStore::open(&dir)?))).await
}
