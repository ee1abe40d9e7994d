#![allow(clippy::unwrap_used)]
//! The Raft storage of a node: openraft's conformance suite against [`LogStore`] and
//! [`StateMachineStore`], persistence across reopening, crash recovery of the log file, and a
//! single-node Raft that restarts from its directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite, log_id};
use openraft::{
    Entry, EntryPayload, Membership, RaftLogReader, RaftNetwork, RaftNetworkFactory,
    RaftSnapshotBuilder, StorageError, StoredMembership, Vote,
};
use strata_node::raft::{
    self, ClusterState, Command, CommandResponse, LogStore, PeerNode, StateMachineStore, TypeConfig,
};
use strata_proto::NodeId;
use strata_proto::ring::{Member, MemberState, RingParams};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// openraft's conformance suite

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = raft::open(dir.path()).await.unwrap();
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_conformance_suite() {
    Suite::test_all(Builder).unwrap();
}

// ---------------------------------------------------------------------------------------------
// helpers

fn member(id: u64) -> Member {
    Member {
        id: NodeId(id),
        addr: format!("127.0.0.1:{}", 7000 + id),
        admin: format!("127.0.0.1:{}", 8000 + id),
        state: MemberState::Active,
        client_addr: None,
    }
}

fn params() -> RingParams {
    RingParams {
        partitions: 32,
        vnodes: 8,
        replication: 2,
    }
}

fn peer(id: u64) -> PeerNode {
    PeerNode {
        addr: format!("127.0.0.1:{}", 7000 + id),
        admin: format!("127.0.0.1:{}", 8000 + id),
    }
}

fn membership(ids: &[u64]) -> Membership<u64, PeerNode> {
    let voters: BTreeSet<u64> = ids.iter().copied().collect();
    let nodes: BTreeMap<u64, PeerNode> = ids.iter().map(|&i| (i, peer(i))).collect();
    Membership::new(vec![voters], nodes)
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload,
    }
}

/// Entries 0..=9: a membership entry, a blank, then commands.
fn sample_entries() -> Vec<Entry<TypeConfig>> {
    let mut v = vec![
        entry(1, 0, EntryPayload::Membership(membership(&[1]))),
        entry(1, 1, EntryPayload::Blank),
        entry(
            1,
            2,
            EntryPayload::Normal(Command::Init {
                params: params(),
                member: member(1),
                write_quorum: 0,
            }),
        ),
    ];
    for i in 3..10 {
        v.push(entry(
            2,
            i,
            EntryPayload::Normal(Command::AddMember {
                member: member(i - 1),
            }),
        ));
    }
    v
}

async fn all_entries(log: &mut LogStore) -> Vec<Entry<TypeConfig>> {
    log.try_get_log_entries(..).await.unwrap()
}

fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

/// Appends the sample entries to a fresh store in `dir`, one append per entry (one frame
/// each), and returns the file offsets at which each frame ends.
async fn fill(dir: &Path) -> Vec<u64> {
    let (mut log, _sm) = raft::open(dir).await.unwrap();
    let mut ends = Vec::new();
    for e in sample_entries() {
        log.blocking_append([e]).await.unwrap();
        ends.push(fs::metadata(dir.join("log.bin")).unwrap().len());
    }
    ends
}

// ---------------------------------------------------------------------------------------------
// persistence

#[tokio::test]
async fn reopened_store_keeps_vote_log_committed_purged_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let entries = sample_entries();
    let mut expected = ClusterState::default();
    let expected_responses: Vec<CommandResponse> = entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(cmd) => expected.apply(cmd),
            _ => CommandResponse::Applied {
                epoch: expected.epoch,
                changed: false,
            },
        })
        .collect();
    assert!(expected.is_initialized());

    {
        let (mut log, mut sm) = raft::open(dir.path()).await.unwrap();
        let mut updates = sm.subscribe();
        assert_eq!(**updates.borrow_and_update(), ClusterState::default());

        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_committed(Some(log_id(2, 1, 8))).await.unwrap();
        let responses = sm.apply(entries[..9].to_vec()).await.unwrap();
        assert_eq!(responses, expected_responses[..9].to_vec());
        assert!(updates.has_changed().unwrap());
        log.purge(log_id(1, 1, 2)).await.unwrap();
        // A late append after the purge, then a conflicting tail replaced.
        log.truncate(log_id(2, 1, 9)).await.unwrap();
        log.blocking_append([entries[9].clone()]).await.unwrap();
        let responses = sm.apply([entries[9].clone()]).await.unwrap();
        assert_eq!(responses, vec![expected_responses[9].clone()]);
        assert_eq!(*sm.current(), expected);
        assert_eq!(**updates.borrow_and_update(), expected);
    }

    let (mut log, mut sm) = raft::open(dir.path()).await.unwrap();
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 1))
    );
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 1, 8)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(2, 1, 9)));
    let got = all_entries(&mut log).await;
    assert_eq!(got, entries[3..].to_vec());

    let (applied, mem) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2, 1, 9)));
    assert_eq!(
        mem,
        StoredMembership::new(Some(log_id(1, 1, 0)), membership(&[1]))
    );
    assert_eq!(*sm.current(), expected);
    assert_eq!(**sm.subscribe().borrow(), expected);

    // Truncation survives reopening too.
    log.truncate(log_id(2, 1, 7)).await.unwrap();
    drop(log);
    let (mut log, _) = raft::open(dir.path()).await.unwrap();
    assert_eq!(indexes(&all_entries(&mut log).await), vec![3, 4, 5, 6]);
    log.blocking_append([entry(3, 7, EntryPayload::Blank)])
        .await
        .unwrap();
    drop(log);
    let (mut log, _) = raft::open(dir.path()).await.unwrap();
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(3, 1, 7))
    );
}

#[tokio::test]
async fn purging_most_of_the_log_compacts_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ends = fill(dir.path()).await;
    let full = *ends.last().unwrap();
    let (mut log, _) = raft::open(dir.path()).await.unwrap();
    log.purge(log_id(2, 1, 7)).await.unwrap();
    let len = fs::metadata(dir.path().join("log.bin")).unwrap().len();
    assert!(len < full / 2, "file not compacted: {len} of {full} bytes");
    log.blocking_append([entry(3, 10, EntryPayload::Blank)])
        .await
        .unwrap();
    drop(log);
    let (mut log, _) = raft::open(dir.path()).await.unwrap();
    assert_eq!(indexes(&all_entries(&mut log).await), vec![8, 9, 10]);
    // Purging past the end leaves an empty log that continues after the purged id.
    log.purge(log_id(3, 1, 20)).await.unwrap();
    log.blocking_append([entry(3, 21, EntryPayload::Blank)])
        .await
        .unwrap();
    drop(log);
    let (mut log, _) = raft::open(dir.path()).await.unwrap();
    assert_eq!(indexes(&all_entries(&mut log).await), vec![21]);
    assert_eq!(
        log.get_log_state().await.unwrap().last_purged_log_id,
        Some(log_id(3, 1, 20))
    );
}

#[tokio::test]
async fn out_of_order_append_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path()).await;
    let (mut log, _) = raft::open(dir.path()).await.unwrap();
    let err = log
        .blocking_append([entry(3, 5, EntryPayload::Blank)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("truncate first"), "{err}");
    // The store is still usable: the refusal wrote nothing.
    log.blocking_append([entry(3, 10, EntryPayload::Blank)])
        .await
        .unwrap();
    drop(log);
    let (mut log, _) = raft::open(dir.path()).await.unwrap();
    assert_eq!(all_entries(&mut log).await.len(), 11);
}

#[tokio::test]
async fn snapshots_persist_and_install() {
    let dir = tempfile::tempdir().unwrap();
    let entries = sample_entries();
    let built = {
        let (_, mut sm) = raft::open(dir.path()).await.unwrap();
        sm.apply(entries[..6].to_vec()).await.unwrap();
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(2, 1, 5)));
        snap
    };
    let (_, mut sm) = raft::open(dir.path()).await.unwrap();
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());

    // Install it on another node: its state and subscribers follow.
    let other = tempfile::tempdir().unwrap();
    let (_, mut follower) = raft::open(other.path()).await.unwrap();
    let updates = follower.subscribe();
    let mut data = follower.begin_receiving_snapshot().await.unwrap();
    data.get_mut().extend_from_slice(built.snapshot.get_ref());
    follower.install_snapshot(&built.meta, data).await.unwrap();
    assert!(updates.has_changed().unwrap());
    assert_eq!(*follower.current(), *sm.current());
    assert_eq!(
        follower.applied_state().await.unwrap(),
        sm.applied_state().await.unwrap()
    );
    drop(follower);
    let (_, mut follower) = raft::open(other.path()).await.unwrap();
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        Some(log_id(2, 1, 5))
    );
    assert_eq!(*follower.current(), *sm.current());
    assert_eq!(
        follower.get_current_snapshot().await.unwrap().unwrap().meta,
        built.meta
    );

    // Garbage snapshot data is refused and changes nothing.
    let mut data = follower.begin_receiving_snapshot().await.unwrap();
    data.get_mut().extend_from_slice(b"not a snapshot");
    let mut meta = built.meta.clone();
    meta.last_log_id = Some(log_id(9, 1, 99));
    assert!(follower.install_snapshot(&meta, data).await.is_err());
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        Some(log_id(2, 1, 5))
    );

    // A node that stopped between storing an installed snapshot and replacing its state file
    // restarts from the snapshot.
    drop(follower);
    fs::remove_file(other.path().join("sm-state.bin")).unwrap();
    let (_, mut follower) = raft::open(other.path()).await.unwrap();
    assert_eq!(
        follower.applied_state().await.unwrap(),
        sm.applied_state().await.unwrap()
    );
    assert_eq!(*follower.current(), *sm.current());
}

// ---------------------------------------------------------------------------------------------
// crash recovery

/// A torn append — the file cut inside a record — reopens with the intact prefix.
#[tokio::test]
async fn torn_tail_reopens_with_intact_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let ends = fill(dir.path()).await;
    let path = dir.path().join("log.bin");
    // Cut in the middle of the last record, then in the middle of a header.
    let cut = (ends[8] + ends[9]) / 2;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let (mut log, _) = raft::open(dir.path()).await.unwrap();
    assert_eq!(
        indexes(&all_entries(&mut log).await),
        (0..9).collect::<Vec<_>>()
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), ends[8]);
    // The log continues where the intact prefix ends.
    log.blocking_append([entry(3, 9, EntryPayload::Blank)])
        .await
        .unwrap();
    drop(log);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(ends[7] + 3)
        .unwrap();
    let (mut log, _) = raft::open(dir.path()).await.unwrap();
    assert_eq!(
        indexes(&all_entries(&mut log).await),
        (0..8).collect::<Vec<_>>()
    );
}

/// A tail of zeros (space allocated, data never written) is a torn tail too.
#[tokio::test]
async fn zero_filled_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let ends = fill(dir.path()).await;
    let path = dir.path().join("log.bin");
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[0u8; 100])
        .unwrap();
    let (mut log, _) = raft::open(dir.path()).await.unwrap();
    assert_eq!(all_entries(&mut log).await.len(), 10);
    assert_eq!(fs::metadata(&path).unwrap().len(), *ends.last().unwrap());
}

fn flip(path: &Path, offset: u64) {
    let mut data = fs::read(path).unwrap();
    data[offset as usize] ^= 0x5a;
    fs::write(path, data).unwrap();
}

/// A damaged record followed by intact ones is corruption: opening fails rather than silently
/// dropping acknowledged entries. A damaged *last* record cannot be told from a torn append
/// and is cut off.
#[tokio::test]
async fn corrupted_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let ends = fill(dir.path()).await;
    let path = dir.path().join("log.bin");
    let pristine = fs::read(&path).unwrap();

    // Payload byte of record 4, length byte of record 2.
    for offset in [ends[3] + 10, ends[1]] {
        fs::write(&path, &pristine).unwrap();
        flip(&path, offset);
        let err = raft::open(dir.path()).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("log.bin"), "{err}");
    }

    // The last record damaged: cut off like a torn append.
    fs::write(&path, &pristine).unwrap();
    flip(&path, ends[9] - 1);
    let (mut log, _) = raft::open(dir.path()).await.unwrap();
    assert_eq!(all_entries(&mut log).await.len(), 9);
    drop(log);

    // Bad magic.
    fs::write(&path, b"garbage!").unwrap();
    let err = raft::open(dir.path()).await.err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn damaged_or_missing_metadata_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = raft::open(dir.path()).await.unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        sm.apply(sample_entries()).await.unwrap();
    }
    for name in ["log-meta.bin", "sm-state.bin"] {
        let path = dir.path().join(name);
        let pristine = fs::read(&path).unwrap();
        flip(&path, pristine.len() as u64 - 2);
        let err = raft::open(dir.path()).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{name}: {err}");
        fs::write(&path, &pristine).unwrap();
    }
    // Losing the vote file while the log exists must not go unnoticed.
    fs::remove_file(dir.path().join("log-meta.bin")).unwrap();
    let err = raft::open(dir.path()).await.err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

// ---------------------------------------------------------------------------------------------
// a single-node Raft over the stores, restarted from its directory

struct NoNetwork;

struct NoPeer;

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoPeer;

    async fn new_client(&mut self, _target: u64, _node: &PeerNode) -> NoPeer {
        NoPeer
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<u64, PeerNode, E> {
    RPCError::Unreachable(Unreachable::new(&io::Error::other(
        "no network in this test",
    )))
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, PeerNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        Err(unreachable())
    }
}

async fn start(dir: &Path) -> (raft::Raft, tokio::sync::watch::Receiver<Arc<ClusterState>>) {
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    let (log, sm) = raft::open(dir).await.unwrap();
    let updates = sm.subscribe();
    let r = openraft::Raft::new(1, Arc::new(config.validate().unwrap()), NoNetwork, log, sm)
        .await
        .unwrap();
    (r, updates)
}

async fn write(r: &raft::Raft, cmd: Command) -> CommandResponse {
    r.client_write(cmd).await.unwrap().data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_raft_restarts_from_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let wait = Some(Duration::from_secs(10));

    let (r, mut updates) = start(dir.path()).await;
    r.initialize(BTreeMap::from([(1, peer(1))])).await.unwrap();
    r.wait(wait).current_leader(1, "leader").await.unwrap();
    let init = Command::Init {
        params: params(),
        member: member(1),
        write_quorum: 0,
    };
    assert_eq!(
        write(&r, init).await,
        CommandResponse::Applied {
            epoch: 1,
            changed: true
        }
    );
    assert_eq!(updates.borrow_and_update().epoch, 1);
    assert!(matches!(
        write(&r, Command::AddMember { member: member(2) }).await,
        CommandResponse::Applied {
            epoch: 2,
            changed: true
        }
    ));
    // Snapshot and purge the log, then keep writing after it.
    r.trigger().snapshot().await.unwrap();
    r.wait(wait)
        .metrics(|m| m.snapshot.is_some(), "snapshot")
        .await
        .unwrap();
    let snap = r.metrics().borrow().snapshot.unwrap();
    r.trigger().purge_log(snap.index).await.unwrap();
    r.wait(wait)
        .metrics(|m| m.purged == Some(snap), "purged")
        .await
        .unwrap();
    assert!(matches!(
        write(&r, Command::Leave { node: NodeId(2) }).await,
        CommandResponse::Applied { changed: true, .. }
    ));
    let before: ClusterState = (**updates.borrow()).clone();
    let last = r.metrics().borrow().last_applied.unwrap();
    r.shutdown().await.unwrap();
    drop(r);

    let (r, updates) = start(dir.path()).await;
    assert_eq!(**updates.borrow(), before, "state restored on open");
    r.wait(wait)
        .current_leader(1, "leader again")
        .await
        .unwrap();
    r.wait(wait)
        .applied_index_at_least(Some(last.index), "applied")
        .await
        .unwrap();
    assert_eq!(r.metrics().borrow().purged, Some(snap));
    let resp = write(&r, Command::AddMember { member: member(3) }).await;
    assert_eq!(
        resp,
        CommandResponse::Applied {
            epoch: before.epoch + 1,
            changed: true
        }
    );
    assert_eq!(updates.borrow().epoch, before.epoch + 1);
    r.shutdown().await.unwrap();
}
