//! The Raft log store: entries, vote, committed and purged log ids, persisted in a directory.
//!
//! Entries live in `log.bin`, an append-only file of checksummed frames (one per entry, in
//! strictly increasing index order); the vote, the committed log id and the last purged log
//! id live in `log-meta.bin`, replaced atomically. All entries that are not purged are also
//! kept in memory (the metadata log is small), so reads never touch the disk.
//!
//! Every write runs on tokio's blocking pool under one lock, in the order openraft issues
//! them, and completes (fsync included) before the method returns: an append is made durable
//! before its [`LogFlushed`] callback fires, and only then becomes visible to readers.
//!
//! If a write fails midway, the file is in an unknown state: the store refuses every later
//! write (openraft stops the node on the first storage error); reopening the directory
//! repairs a torn tail.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, ToStorageResult,
    Vote,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use super::file::{self, Frame};

type Entry = openraft::Entry<TypeConfig>;

const LOG_FILE: &str = "log.bin";
const META_FILE: &str = "log-meta.bin";
const LOG_MAGIC: &[u8; file::MAGIC_LEN] = b"STRLOG02";
const META_MAGIC: &[u8; file::MAGIC_LEN] = b"STRLMT01";

/// What `log-meta.bin` holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LogMeta {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
}

/// The readable part of the log: every entry that is not purged.
#[derive(Default)]
struct Cache {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId<u64>>,
}

impl Cache {
    fn range<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry> {
        self.entries.range(range).map(|(_, e)| e.clone()).collect()
    }
}

/// The files and what is known about them. Only touched on the blocking pool.
struct Disk {
    dir: PathBuf,
    /// `log.bin`, opened for appending.
    file: File,
    /// Its length.
    len: u64,
    /// Offset of the frame of every entry in `log.bin` (purged ones included).
    offsets: BTreeMap<u64, u64>,
    meta: LogMeta,
    /// Set when a write failed midway: the reason.
    failed: Option<String>,
}

/// The Raft log store ([`RaftLogStorage`]) of one node.
pub struct LogStore {
    cache: Arc<RwLock<Cache>>,
    disk: Arc<Mutex<Disk>>,
}

/// A reader of the log, handed to openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    cache: Arc<RwLock<Cache>>,
}

impl LogStore {
    /// Opens the log kept in `dir`, creating the directory and an empty log if needed.
    ///
    /// A damaged frame at the end of `log.bin` (a torn append) is cut off; a damaged frame
    /// followed by an intact one, an undecodable entry, out-of-order indexes or a damaged
    /// `log-meta.bin` fail with [`io::ErrorKind::InvalidData`].
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        file::remove_tmp(dir, LOG_FILE)?;
        file::remove_tmp(dir, META_FILE)?;
        let log_path = dir.join(LOG_FILE);
        let meta_path = dir.join(META_FILE);
        let log_exists = log_path.try_exists()?;

        let meta: LogMeta = match file::read_single(dir, META_FILE, META_MAGIC)? {
            Some(bytes) => file::decode(&meta_path, &bytes)?,
            None if log_exists => {
                return Err(file::corrupt(
                    &meta_path,
                    "missing while the log exists (the vote would be lost)",
                ));
            }
            None => {
                let meta = LogMeta::default();
                file::write_single(dir, META_FILE, META_MAGIC, &file::encode(&meta)?)?;
                meta
            }
        };
        if !log_exists {
            file::replace(dir, LOG_FILE, LOG_MAGIC, &[])?;
        }

        let data = fs::read(&log_path)?;
        file::check_magic(&log_path, &data, LOG_MAGIC)?;
        let purged_upto = meta.last_purged.map(|l| l.index);
        let mut entries = BTreeMap::new();
        let mut offsets = BTreeMap::new();
        let mut pos = file::MAGIC_LEN;
        let mut last: Option<u64> = None;
        loop {
            match file::read_frame(&data, pos) {
                Frame::End => break,
                Frame::Ok(payload, next) => {
                    let entry: Entry = postcard::from_bytes(payload).map_err(|e| {
                        file::corrupt(&log_path, format!("undecodable entry at offset {pos}: {e}"))
                    })?;
                    let index = entry.log_id.index;
                    if last.is_some_and(|l| index <= l) {
                        return Err(file::corrupt(
                            &log_path,
                            format!("entry {index} at offset {pos} does not follow entry {last:?}"),
                        ));
                    }
                    last = Some(index);
                    offsets.insert(index, pos as u64);
                    if purged_upto.is_none_or(|p| index > p) {
                        entries.insert(index, entry);
                    }
                    pos = next;
                }
                Frame::Bad(why) => {
                    if let Some(at) = intact_frame_after(&data, pos) {
                        return Err(file::corrupt(
                            &log_path,
                            format!("{why}, followed by an intact record at offset {at}"),
                        ));
                    }
                    tracing::warn!(
                        path = %log_path.display(),
                        offset = pos,
                        dropped_bytes = data.len() - pos,
                        "raft log: cutting off a torn tail ({why})"
                    );
                    let f = OpenOptions::new().write(true).open(&log_path)?;
                    f.set_len(pos as u64)?;
                    f.sync_all()?;
                    break;
                }
            }
        }

        let file = OpenOptions::new().append(true).open(&log_path)?;
        let mut disk = Disk {
            dir: dir.to_path_buf(),
            file,
            len: pos as u64,
            offsets,
            meta: meta.clone(),
            failed: None,
        };
        let cache = Cache {
            entries,
            last_purged: meta.last_purged,
        };
        disk.maybe_compact(&cache)?;
        Ok(Self {
            cache: Arc::new(RwLock::new(cache)),
            disk: Arc::new(Mutex::new(disk)),
        })
    }

    /// Runs `op` on the disk state and the cache on the blocking pool.
    async fn with_disk<T, F>(&self, op: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Disk, &RwLock<Cache>) -> io::Result<T> + Send + 'static,
    {
        let disk = self.disk.clone();
        let cache = self.cache.clone();
        file::blocking(move || {
            let mut disk = disk.lock();
            if let Some(why) = &disk.failed {
                return Err(io::Error::other(format!(
                    "raft log store is unusable after a failed write: {why}"
                )));
            }
            op(&mut disk, &cache)
        })
        .await
    }

    async fn save_meta(
        &mut self,
        update: impl FnOnce(&mut LogMeta) + Send + 'static,
    ) -> io::Result<()> {
        self.with_disk(move |disk, _| {
            let mut meta = disk.meta.clone();
            update(&mut meta);
            disk.save_meta(meta)
        })
        .await
    }
}

/// The offset of the first intact frame that starts after `pos`, if any.
fn intact_frame_after(data: &[u8], pos: usize) -> Option<usize> {
    (pos + 1..data.len()).find(|&at| matches!(file::read_frame(data, at), Frame::Ok(..)))
}

impl Disk {
    /// Runs a write that leaves the file in an unknown state if it fails midway.
    fn guarded<T>(&mut self, op: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        let res = op(self);
        if let Err(e) = &res {
            self.failed = Some(e.to_string());
        }
        res
    }

    fn save_meta(&mut self, meta: LogMeta) -> io::Result<()> {
        // Atomic replacement: a failure leaves the previous file intact.
        file::write_single(&self.dir, META_FILE, META_MAGIC, &file::encode(&meta)?)?;
        self.meta = meta;
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        // The file format needs strictly increasing indexes. (openraft never appends at or
        // below the last purged index; its conformance suite does, and gets them stored.)
        let mut prev = self.offsets.keys().next_back().copied();
        let mut buf = Vec::new();
        let mut at = Vec::with_capacity(entries.len());
        for entry in entries {
            let index = entry.log_id.index;
            if prev.is_some_and(|p| index <= p) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("append of log entry {index} after entry {prev:?} (truncate first)"),
                ));
            }
            prev = Some(index);
            at.push((index, buf.len() as u64));
            file::push_frame(&mut buf, &file::encode(entry)?)?;
        }
        self.guarded(|d| {
            d.file.write_all(&buf)?;
            d.file.sync_data()
        })?;
        for (index, offset) in at {
            self.offsets.insert(index, self.len + offset);
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Cuts the file at the first entry with index `since` or more.
    fn truncate(&mut self, since: u64) -> io::Result<()> {
        let Some((_, &offset)) = self.offsets.range(since..).next() else {
            return Ok(());
        };
        self.guarded(|d| {
            d.file.set_len(offset)?;
            d.file.sync_all()
        })?;
        self.offsets.split_off(&since);
        self.len = offset;
        Ok(())
    }

    /// Rewrites the file without its purged entries once they are at least as many as the
    /// live ones (so the cost of rewriting is amortised over the appends).
    fn maybe_compact(&mut self, cache: &Cache) -> io::Result<()> {
        let Some(purged) = self.meta.last_purged else {
            return Ok(());
        };
        let dead = self.offsets.range(..=purged.index).count();
        let live = self.offsets.len() - dead;
        if dead == 0 || dead < live {
            return Ok(());
        }
        self.guarded(|d| {
            let mut buf = Vec::new();
            let mut offsets = BTreeMap::new();
            for (index, entry) in &cache.entries {
                offsets.insert(*index, (file::MAGIC_LEN + buf.len()) as u64);
                file::push_frame(&mut buf, &file::encode(entry)?)?;
            }
            file::replace(&d.dir, LOG_FILE, LOG_MAGIC, &buf)?;
            d.file = OpenOptions::new().append(true).open(d.dir.join(LOG_FILE))?;
            d.len = (file::MAGIC_LEN + buf.len()) as u64;
            d.offsets = offsets;
            Ok(())
        })
    }
}

fn log_err(verb: ErrorVerb) -> impl FnOnce() -> (ErrorSubject<u64>, ErrorVerb) {
    move || (ErrorSubject::Logs, verb)
}

fn vote_err(verb: ErrorVerb) -> impl FnOnce() -> (ErrorSubject<u64>, ErrorVerb) {
    move || (ErrorSubject::Vote, verb)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        Ok(self.cache.read().range(range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        Ok(self.cache.read().range(range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let cache = self.cache.read();
        let last_log_id = cache
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(cache.last_purged);
        Ok(LogState {
            last_purged_log_id: cache.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            cache: self.cache.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let vote = *vote;
        self.save_meta(move |m| m.vote = Some(vote))
            .await
            .sto_res(vote_err(ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.disk.lock().meta.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.save_meta(move |m| m.committed = committed)
            .await
            .sto_res(log_err(ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.disk.lock().meta.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        self.with_disk(move |disk, cache| {
            let res = disk.append(&entries);
            match &res {
                Ok(()) => {
                    // Durable now: make the entries readable, then acknowledge.
                    let mut cache = cache.write();
                    for entry in entries {
                        cache.entries.insert(entry.log_id.index, entry);
                    }
                    drop(cache);
                    callback.log_io_completed(Ok(()));
                }
                Err(e) => callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string()))),
            }
            res
        })
        .await
        .sto_res(log_err(ErrorVerb::Write))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let since = log_id.index;
        self.with_disk(move |disk, cache| {
            disk.truncate(since)?;
            cache.write().entries.split_off(&since);
            Ok(())
        })
        .await
        .sto_res(|| (ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.with_disk(move |disk, cache| {
            if disk
                .meta
                .last_purged
                .is_some_and(|p| p.index >= log_id.index)
            {
                return Ok(());
            }
            // Record the purge first: on reopen, entries up to it are skipped.
            let mut meta = disk.meta.clone();
            meta.last_purged = Some(log_id);
            disk.save_meta(meta)?;
            let mut c = cache.write();
            c.entries = c.entries.split_off(&log_id.index.saturating_add(1));
            c.last_purged = Some(log_id);
            drop(c);
            disk.maybe_compact(&cache.read())
        })
        .await
        .sto_res(|| (ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }
}
