//! [`FsTier`]: entries as files, in a layout a person can read.
//!
//! Each entry is two files in the directory its key maps to (see [`layout`]): the payload,
//! with the extension of its kind (`frame_42.jpg`, `a3f2e9d8.npy`, `metadata.json`), and a
//! JSON `.meta` sidecar (see [`sidecar`]) with its key, times, size, format, version and
//! checksum. An image viewer opens the `.jpg`; `numpy.load` opens the `.npy`; `cat` reads the
//! sidecar.
//!
//! # Writes are crash-safe
//!
//! A write to `X` stages `.X.<boot>.pending` (the payload) and `.X.meta.<boot>.pending` (the
//! sidecar) beside it, then renames the sidecar into place — the commit point — and then the
//! payload. `<boot>` identifies the process that opened the tier. Whatever instant a process
//! dies at, the next one finds either the old entry intact (the new sidecar was never
//! committed; stale pending files are deleted) or a committed sidecar whose payload is still
//! pending, which it renames into place after checking its checksum (roll forward). A reader
//! in the same process never sees the steps: a striped per-key lock orders it against
//! writers. Durability against power loss follows the [`FsyncPolicy`]; crash safety against a
//! killed process holds under every policy.
//!
//! # Damaged entries are never served
//!
//! Every read checks the payload's length and CRC-32C against the sidecar, and decodes it by
//! the sidecar's format. Anything that fails — a torn or truncated file, a sidecar that does
//! not parse, a payload without a sidecar, an entry filed under the wrong path — is dropped,
//! counted in `corrupt`, and reported as a miss.
//!
//! # Startup, expiry and capacity
//!
//! Opening the tier takes the directory's lock file (a second process is refused) and returns
//! at once. A background scan then walks the directory: it finishes interrupted writes, drops
//! damaged and expired entries, and builds the in-memory index (key → format, metadata, LRU
//! position). Until it completes, reads find files by probing each extension, and listing
//! waits for it. A janitor thread removes expired entries periodically. Under the `periodic`
//! fsync policy a flusher thread syncs the filesystem once per interval if anything was
//! written. When the payload bytes
//! exceed the capacity, least-recently-used entries are evicted.
//!
//! Caveats: the capacity counts payload bytes, not sidecars or directory blocks; empty
//! directories are left in place after their entries go; one process per directory.

pub mod layout;
mod sidecar;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lru::LruCache;
use parking_lot::{Condvar, Mutex, RwLock};
use serde::Deserialize;
use strata_proto::{
    Entry, EntryKey, EntryMeta, Format, Key, Namespace, decode_payload, encode_payload,
};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::janitor::{Periodic, StopSignal};
use crate::tier::{Counters, Pattern, Tier, TierStats, matches};
use layout::{EntryPath, entry_path};
use sidecar::Sidecar;

/// Name of the tier's private directory inside its base directory.
const PRIVATE_DIR: &str = ".strata";
/// On-disk format of the directory as a whole; bumped on incompatible layout changes.
const DIR_FORMAT: u32 = 1;
/// Number of per-key lock stripes. Enough that unrelated keys rarely share one on a
/// many-core node, few enough to cost nothing.
const STRIPES: usize = 256;
/// How long `open` waits for the directory lock before reporting it held by another process.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// When written files are flushed to stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Before a write returns (payload, sidecar and directory). Survives power loss; slowest.
    Always,
    /// Every `fsync_interval_ms` in the background; a power cut loses at most that window.
    Periodic,
    /// Never; the OS writes back when it likes. Still safe against a killed process.
    Never,
}

/// Settings of an [`FsTier`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// Base directory; created if missing.
    pub path: PathBuf,
    /// Capacity in payload bytes; least-recently-used entries are evicted beyond it. Default
    /// 8 GiB.
    #[serde(default = "FsConfig::default_max_bytes")]
    pub max_bytes: u64,
    /// Flush policy. Default `periodic`: like Redis' `appendfsync everysec`, a cache gives up
    /// at most a second of writes on power loss for a large gain in write speed.
    #[serde(default = "FsConfig::default_fsync")]
    pub fsync: FsyncPolicy,
    /// Interval of the `periodic` policy, in milliseconds. Default 1000.
    #[serde(default = "FsConfig::default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Interval of the expiry janitor, in seconds; 0 turns it off. Default 60: expired
    /// entries are never served anyway, the janitor only gives their space back.
    #[serde(default = "FsConfig::default_cleanup_interval_secs")]
    pub cleanup_interval_secs: u64,
}

impl FsConfig {
    /// Defaults for a tier at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: Self::default_max_bytes(),
            fsync: Self::default_fsync(),
            fsync_interval_ms: Self::default_fsync_interval_ms(),
            cleanup_interval_secs: Self::default_cleanup_interval_secs(),
        }
    }
    fn default_max_bytes() -> u64 {
        8 << 30
    }
    fn default_fsync() -> FsyncPolicy {
        FsyncPolicy::Periodic
    }
    fn default_fsync_interval_ms() -> u64 {
        1000
    }
    fn default_cleanup_interval_secs() -> u64 {
        60
    }
}

/// The filesystem tier. Cloning gives another handle on the same tier.
#[derive(Clone)]
pub struct FsTier {
    inner: Arc<Inner>,
    _open: Arc<Opened>,
}

/// Held only by user handles (never by the tier's own threads): when the last handle goes,
/// it stops and joins the background threads, flushes, and only then releases the directory
/// lock — so the directory can be opened again at once, and never by two tiers at a time.
struct Opened {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
    /// The directory's advisory lock, released last.
    _lock: File,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.inner.stop.stop();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        if self.inner.config.fsync == FsyncPolicy::Periodic {
            self.inner.flush_dirty();
        }
    }
}

impl std::fmt::Debug for FsTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsTier")
            .field("path", &self.inner.base)
            .finish_non_exhaustive()
    }
}

struct Inner {
    base: PathBuf,
    config: FsConfig,
    clock: Arc<dyn Clock>,
    counters: Counters,
    index: Mutex<Index>,
    ready: Mutex<bool>,
    ready_cv: Condvar,
    stripes: Box<[RwLock<()>]>,
    /// Whether anything was written since the last periodic flush.
    dirty: AtomicBool,
    /// Identifies this opening of the directory in the names of pending files.
    boot: String,
    stop: Arc<StopSignal>,
}

struct Index {
    entries: LruCache<EntryKey, Indexed>,
    bytes: u64,
}

#[derive(Clone)]
struct Indexed {
    ext: &'static str,
    meta: EntryMeta,
}

impl Index {
    fn insert(&mut self, key: EntryKey, indexed: Indexed) {
        self.bytes += indexed.meta.size_bytes;
        if let Some(old) = self.entries.put(key, indexed) {
            self.bytes -= old.meta.size_bytes;
        }
    }

    fn remove(&mut self, key: &EntryKey) -> Option<Indexed> {
        let old = self.entries.pop(key)?;
        self.bytes -= old.meta.size_bytes;
        Some(old)
    }
}

/// What reading an entry's files found.
enum Loaded {
    Live(Entry),
    Expired,
    Missing,
    Damaged(String),
}

/// The files of one entry for one extension.
struct Files {
    dir: PathBuf,
    data: PathBuf,
    meta: PathBuf,
}

impl Files {
    fn new(base: &Path, path: &EntryPath, ext: &str) -> Self {
        let dir = base.join(path.dir());
        let name = path.file_name(ext);
        Self {
            data: dir.join(&name),
            meta: dir.join(format!("{name}.meta")),
            dir,
        }
    }

    fn name(&self) -> &str {
        self.data
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    fn pending_data(&self, boot: &str) -> PathBuf {
        self.dir.join(format!(".{}.{boot}.pending", self.name()))
    }

    fn pending_meta(&self, boot: &str) -> PathBuf {
        self.dir
            .join(format!(".{}.meta.{boot}.pending", self.name()))
    }

    fn remove(&self) -> Result<()> {
        // The sidecar goes first: a payload without one is an orphan the next scan removes.
        remove_if_exists(&self.meta)?;
        remove_if_exists(&self.data)
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

impl FsTier {
    /// Opens (creating if needed) the tier at `config.path`, and starts its background scan,
    /// janitor and flusher. Returns before the scan completes.
    pub fn open(config: FsConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let base = config.path.clone();
        let private = base.join(PRIVATE_DIR);
        fs::create_dir_all(&private).map_err(|e| Error::io("create directory", &private, e))?;
        check_dir_format(&private)?;
        let lock_path = private.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        // A lock just released can stay held for a moment: a child forked by another thread
        // of this process shares the lock's file description until it executes its program.
        // So wait a little before deciding that another process owns the directory.
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked { path: lock_path }),
                Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path, e)),
            }
        }
        let boot = format!(
            "{:x}{:x}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                & 0xffff_ffff
        );
        let inner = Arc::new(Inner {
            base,
            clock,
            counters: Counters::default(),
            index: Mutex::new(Index {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
            ready: Mutex::new(false),
            ready_cv: Condvar::new(),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            dirty: AtomicBool::new(false),
            boot,
            stop: Arc::new(StopSignal::default()),
            config,
        });
        let threads = inner.start_background()?;
        let opened = Opened {
            inner: Arc::clone(&inner),
            threads,
            _lock: lock,
        };
        Ok(Self {
            inner,
            _open: Arc::new(opened),
        })
    }

    /// The base directory.
    pub fn path(&self) -> &Path {
        &self.inner.base
    }

    /// Whether the startup scan has completed.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.lock()
    }

    /// Waits up to `timeout` for the startup scan; whether it completed.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        self.inner.wait_ready(Some(timeout))
    }

    /// The data file an entry of `key` with `format` is (or would be) stored in.
    pub fn data_file(&self, key: &EntryKey, format: &Format) -> PathBuf {
        self.inner
            .base
            .join(entry_path(&key.namespace, &key.key).data_file(format))
    }
}

fn check_dir_format(private: &Path) -> Result<()> {
    let path = private.join("FORMAT");
    let expected = format!("strata-fs {DIR_FORMAT}\n");
    match read_if_exists(&path)? {
        Some(found) if found == expected.as_bytes() => Ok(()),
        Some(found) => Err(Error::Format {
            path,
            found: String::from_utf8_lossy(&found).trim().to_owned(),
            expected: DIR_FORMAT,
        }),
        None => fs::write(&path, expected).map_err(|e| Error::io("write", &path, e)),
    }
}

impl Inner {
    fn start_background(self: &Arc<Self>) -> Result<Vec<JoinHandle<()>>> {
        let mut threads = Vec::new();
        let weak = Arc::downgrade(self);
        let scan = std::thread::Builder::new()
            .name("strata-fs-scan".into())
            .spawn(move || {
                if let Some(inner) = weak.upgrade() {
                    inner.startup_scan();
                }
            })
            .map_err(|e| Error::io("spawn scan thread", &self.base, e))?;
        threads.push(scan);
        if self.config.cleanup_interval_secs > 0 {
            let weak: Weak<Self> = Arc::downgrade(self);
            let janitor = Periodic::spawn(
                "strata-fs-janitor",
                Duration::from_secs(self.config.cleanup_interval_secs),
                Arc::clone(&self.stop),
                move || {
                    let Some(inner) = weak.upgrade() else {
                        return false;
                    };
                    if let Err(e) = inner.cleanup_expired() {
                        tracing::warn!(error = %e, "filesystem janitor failed");
                    }
                    true
                },
            )
            .map_err(|e| Error::io("spawn janitor thread", &self.base, e))?;
            threads.push(janitor);
        }
        if self.config.fsync == FsyncPolicy::Periodic {
            let weak: Weak<Self> = Arc::downgrade(self);
            let flusher = Periodic::spawn(
                "strata-fs-flush",
                Duration::from_millis(self.config.fsync_interval_ms.max(1)),
                Arc::clone(&self.stop),
                move || {
                    let Some(inner) = weak.upgrade() else {
                        return false;
                    };
                    inner.flush_dirty();
                    true
                },
            )
            .map_err(|e| Error::io("spawn flush thread", &self.base, e))?;
            threads.push(flusher);
        }
        Ok(threads)
    }

    fn wait_ready(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut ready = self.ready.lock();
        while !*ready {
            match deadline {
                Some(d) => {
                    if self.ready_cv.wait_until(&mut ready, d).timed_out() {
                        return *ready;
                    }
                }
                None => self.ready_cv.wait(&mut ready),
            }
        }
        true
    }

    fn stripe(&self, key: &EntryKey) -> &RwLock<()> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    fn files(&self, path: &EntryPath, ext: &str) -> Files {
        Files::new(&self.base, path, ext)
    }

    /// Finds which extension `key` is stored under, with its metadata when the index has it.
    /// Call with the key's stripe lock held.
    fn locate(
        &self,
        key: &EntryKey,
        path: &EntryPath,
        touch: bool,
    ) -> Option<(&'static str, Option<EntryMeta>)> {
        {
            let mut index = self.index.lock();
            let found = if touch {
                index.entries.get(key)
            } else {
                index.entries.peek(key)
            };
            if let Some(i) = found {
                return Some((i.ext, Some(i.meta.clone())));
            }
        }
        if *self.ready.lock() {
            return None;
        }
        // Before the startup scan completes the index is partial: look on disk.
        Format::EXTENSIONS
            .into_iter()
            .find(|ext| self.files(path, ext).meta.exists())
            .map(|ext| (ext, None))
    }

    fn read_sidecar(
        &self,
        key: &EntryKey,
        files: &Files,
    ) -> Result<std::result::Result<EntryMeta, Loaded>> {
        let Some(bytes) = read_if_exists(&files.meta)? else {
            return Ok(Err(Loaded::Missing));
        };
        match Sidecar::parse(&bytes) {
            // Another key's entry (only possible under the hashed fallback): not ours.
            Ok((found, _)) if &found != key => Ok(Err(Loaded::Missing)),
            Ok((_, meta)) => Ok(Ok(meta)),
            Err(why) => Ok(Err(Loaded::Damaged(format!(
                "sidecar does not parse: {why}"
            )))),
        }
    }

    /// Reads and verifies an entry's files. Call with the key's stripe lock held.
    fn load(&self, key: &EntryKey, files: &Files, known: Option<EntryMeta>) -> Result<Loaded> {
        let meta = match known {
            Some(meta) => meta,
            None => match self.read_sidecar(key, files)? {
                Ok(meta) => meta,
                Err(outcome) => return Ok(outcome),
            },
        };
        if meta.is_expired(self.clock.now()) {
            return Ok(Loaded::Expired);
        }
        let Some(data) = read_if_exists(&files.data)? else {
            return Ok(Loaded::Damaged("payload file is missing".into()));
        };
        if data.len() as u64 != meta.size_bytes {
            return Ok(Loaded::Damaged(format!(
                "payload is {} bytes, sidecar says {}",
                data.len(),
                meta.size_bytes
            )));
        }
        if crc32c::crc32c(&data) != meta.checksum {
            return Ok(Loaded::Damaged("payload checksum mismatch".into()));
        }
        match decode_payload(&meta.format, Bytes::from(data)) {
            Ok(value) => Ok(Loaded::Live(Entry { meta, value })),
            Err(e) => Ok(Loaded::Damaged(e.to_string())),
        }
    }

    /// Finishes or undoes a write that a dead process left half done. Call with the key's
    /// stripe lock held (or for files no live writer can own).
    fn recover(&self, files: &Files) -> Result<bool> {
        let Some(name) = files
            .data
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
        else {
            return Ok(false);
        };
        let entries = match fs::read_dir(&files.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("read directory", &files.dir, e)),
        };
        let mut pending_data = Vec::new();
        let mut pending_meta = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            match parse_pending(file) {
                Some((target, true, boot)) if target == name && boot != self.boot => {
                    pending_meta.push(entry.path())
                }
                Some((target, false, boot)) if target == name && boot != self.boot => {
                    pending_data.push(entry.path())
                }
                _ => {}
            }
        }
        let mut rolled_forward = false;
        if pending_meta.is_empty() {
            // The sidecar was committed (or never staged): a pending payload matching it is
            // the rest of that write.
            if let Ok(Some(committed)) =
                read_if_exists(&files.meta).map(|m| m.and_then(|b| Sidecar::parse(&b).ok()))
            {
                for pending in &pending_data {
                    let Some(data) = read_if_exists(pending)? else {
                        continue;
                    };
                    if data.len() as u64 == committed.1.size_bytes
                        && crc32c::crc32c(&data) == committed.1.checksum
                    {
                        fs::rename(pending, &files.data)
                            .map_err(|e| Error::io("rename", pending, e))?;
                        rolled_forward = true;
                        break;
                    }
                }
            }
        }
        // Everything else staged by a dead process was never committed.
        for path in pending_meta.iter().chain(&pending_data) {
            remove_if_exists(path)?;
        }
        Ok(rolled_forward)
    }

    /// Drops a damaged entry and counts it.
    fn drop_damaged(&self, key: &EntryKey, files: &Files, why: &str) -> Result<()> {
        tracing::warn!(key = %key, file = %files.data.display(), why, "dropping damaged cache entry");
        files.remove()?;
        self.index.lock().remove(key);
        Counters::bump(&self.counters.corrupt);
        Ok(())
    }

    fn get(&self, key: &EntryKey) -> Result<Option<Entry>> {
        let path = entry_path(&key.namespace, &key.key);
        let outcome = {
            let _read = self.stripe(key).read();
            match self.locate(key, &path, true) {
                None => Loaded::Missing,
                Some((ext, known)) => self.load(key, &self.files(&path, ext), known)?,
            }
        };
        let outcome = match outcome {
            Loaded::Live(entry) => {
                Counters::bump(&self.counters.hits);
                return Ok(Some(entry));
            }
            Loaded::Missing => Loaded::Missing,
            // Expired or damaged: settle it under the write lock (another thread may have
            // rewritten the key in between, so look again).
            _ => self.settle(key, &path)?,
        };
        match outcome {
            Loaded::Live(entry) => {
                Counters::bump(&self.counters.hits);
                Ok(Some(entry))
            }
            _ => {
                Counters::bump(&self.counters.misses);
                Ok(None)
            }
        }
    }

    /// Re-reads an entry under the write lock, finishing an interrupted write if there is
    /// one, and removes it if it is expired or still damaged.
    fn settle(&self, key: &EntryKey, path: &EntryPath) -> Result<Loaded> {
        let _write = self.stripe(key).write();
        let Some((ext, known)) = self.locate(key, path, false) else {
            return Ok(Loaded::Missing);
        };
        let files = self.files(path, ext);
        let mut outcome = self.load(key, &files, known.clone())?;
        if matches!(outcome, Loaded::Damaged(_)) && self.recover(&files)? {
            outcome = self.load(key, &files, known)?;
        }
        match &outcome {
            Loaded::Expired => {
                files.remove()?;
                self.index.lock().remove(key);
                Counters::bump(&self.counters.expired);
            }
            Loaded::Damaged(why) => self.drop_damaged(key, &files, why)?,
            Loaded::Missing => {
                self.index.lock().remove(key);
            }
            Loaded::Live(_) => {}
        }
        Ok(outcome)
    }

    fn put(&self, key: &EntryKey, entry: Entry) -> Result<()> {
        let max = self.config.max_bytes;
        if entry.meta.size_bytes > max {
            return Err(Error::TooLarge {
                size: entry.meta.size_bytes,
                capacity: max,
            });
        }
        let payload = encode_payload(&entry.value);
        if payload.len() as u64 != entry.meta.size_bytes
            || payload.checksum() != entry.meta.checksum
        {
            return Err(Error::Proto(strata_proto::Error::Corrupt(
                "entry metadata does not match its value (size or checksum)".into(),
            )));
        }
        let path = entry_path(&key.namespace, &key.key);
        let ext = entry.meta.format.extension();
        {
            let _write = self.stripe(key).write();
            let previous = self.locate(key, &path, false).map(|(ext, _)| ext);
            let files = self.files(&path, ext);
            self.write_files(key, &files, &entry.meta, &payload)?;
            if let Some(old) = previous.filter(|old| *old != ext) {
                self.files(&path, old).remove()?;
            }
            self.remove_unsettled(&path, ext)?;
            self.index.lock().insert(
                key.clone(),
                Indexed {
                    ext,
                    meta: entry.meta,
                },
            );
        }
        Counters::bump(&self.counters.sets);
        self.enforce_capacity()
    }

    fn write_files(
        &self,
        key: &EntryKey,
        files: &Files,
        meta: &EntryMeta,
        payload: &strata_proto::Payload,
    ) -> Result<()> {
        let always = self.config.fsync == FsyncPolicy::Always;
        fs::create_dir_all(&files.dir).map_err(|e| Error::io("create directory", &files.dir, e))?;
        let pending_data = files.pending_data(&self.boot);
        let pending_meta = files.pending_meta(&self.boot);
        let stage = || -> Result<()> {
            write_file(&pending_data, &[&payload.header, &payload.body], always)?;
            write_file(&pending_meta, &[&Sidecar::new(key, meta).to_json()], always)
        };
        if let Err(e) = stage() {
            // Nothing was committed: the previous entry is untouched.
            let _ = fs::remove_file(&pending_data);
            let _ = fs::remove_file(&pending_meta);
            return Err(e);
        }
        // Commit point: from here a crash rolls forward to this write.
        fs::rename(&pending_meta, &files.meta).map_err(|e| Error::io("rename", &files.meta, e))?;
        fs::rename(&pending_data, &files.data).map_err(|e| Error::io("rename", &files.data, e))?;
        match self.config.fsync {
            FsyncPolicy::Always => sync_dir(&files.dir)?,
            FsyncPolicy::Periodic => {
                self.dirty.store(true, Ordering::Release);
            }
            FsyncPolicy::Never => {}
        }
        Ok(())
    }

    /// Flushes everything written since the last flush. On Linux one `syncfs` covers the
    /// whole filesystem — one system call instead of one fsync per file, which on a busy
    /// tier cost more than the writes themselves.
    fn flush_dirty(&self) {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let result = File::open(&self.base).and_then(|dir| {
            #[cfg(target_os = "linux")]
            {
                rustix::fs::syncfs(&dir).map_err(io::Error::from)
            }
            #[cfg(not(target_os = "linux"))]
            {
                dir.sync_all()
            }
        });
        if let Err(e) = result {
            tracing::warn!(path = %self.base.display(), error = %e, "periodic flush failed");
            self.dirty.store(true, Ordering::Release);
        }
    }

    fn delete(&self, key: &EntryKey) -> Result<bool> {
        let path = entry_path(&key.namespace, &key.key);
        let _write = self.stripe(key).write();
        let Some((ext, _)) = self.locate(key, &path, false) else {
            return Ok(false);
        };
        let files = self.files(&path, ext);
        let existed = files.meta.exists();
        files.remove()?;
        self.remove_unsettled(&path, ext)?;
        let indexed = self.index.lock().remove(key).is_some();
        let removed = existed || indexed;
        if removed {
            Counters::bump(&self.counters.deletes);
        }
        Ok(removed)
    }

    /// Until the startup scan has settled the directory, a killed write may have left older
    /// entries of a key under other extensions than the one just written or deleted (the new
    /// file committed, the old one not yet removed): remove them all, or a probing read or the
    /// scan would bring one back. Call with the key's stripe lock held.
    fn remove_unsettled(&self, path: &EntryPath, keep: &str) -> Result<()> {
        if *self.ready.lock() {
            return Ok(());
        }
        for ext in Format::EXTENSIONS.into_iter().filter(|e| *e != keep) {
            self.files(path, ext).remove()?;
        }
        Ok(())
    }

    fn metadata(&self, key: &EntryKey) -> Result<Option<EntryMeta>> {
        let path = entry_path(&key.namespace, &key.key);
        let _read = self.stripe(key).read();
        let Some((ext, known)) = self.locate(key, &path, false) else {
            return Ok(None);
        };
        let meta = match known {
            Some(meta) => meta,
            None => match self.read_sidecar(key, &self.files(&path, ext))? {
                Ok(meta) => meta,
                Err(_) => return Ok(None),
            },
        };
        Ok((!meta.is_expired(self.clock.now())).then_some(meta))
    }

    /// Keys (and metadata) of live entries in `namespace` matching `pattern`, from the index.
    fn matching(
        &self,
        namespace: &Namespace,
        pattern: Option<&Pattern>,
    ) -> Vec<(EntryKey, EntryMeta)> {
        self.wait_ready(None);
        let now = self.clock.now();
        let index = self.index.lock();
        index
            .entries
            .iter()
            .filter(|(k, i)| {
                &k.namespace == namespace
                    && !i.meta.is_expired(now)
                    && matches(pattern, k.key.as_str())
            })
            .map(|(k, i)| (k.clone(), i.meta.clone()))
            .collect()
    }

    fn cleanup_expired(&self) -> Result<u64> {
        let now = self.clock.now();
        let expired: Vec<EntryKey> = {
            let index = self.index.lock();
            index
                .entries
                .iter()
                .filter(|(_, i)| i.meta.is_expired(now))
                .map(|(k, _)| k.clone())
                .collect()
        };
        let mut removed = 0;
        for key in expired {
            let path = entry_path(&key.namespace, &key.key);
            let _write = self.stripe(&key).write();
            let still = self
                .index
                .lock()
                .entries
                .peek(&key)
                .filter(|i| i.meta.is_expired(now))
                .map(|i| i.ext);
            if let Some(ext) = still {
                self.files(&path, ext).remove()?;
                self.index.lock().remove(&key);
                Counters::bump(&self.counters.expired);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Evicts least-recently-used entries until the payload bytes fit the capacity.
    fn enforce_capacity(&self) -> Result<()> {
        if !*self.ready.lock() {
            return Ok(()); // The scan enforces it once it knows the total.
        }
        self.evict_to_capacity()
    }

    fn evict_to_capacity(&self) -> Result<()> {
        loop {
            let victim = {
                let mut index = self.index.lock();
                if index.bytes <= self.config.max_bytes {
                    return Ok(());
                }
                let Some((key, indexed)) = index.entries.pop_lru() else {
                    return Ok(());
                };
                index.bytes -= indexed.meta.size_bytes;
                (key, indexed.ext)
            };
            let (key, ext) = victim;
            let _write = self.stripe(&key).write();
            if self.index.lock().entries.contains(&key) {
                continue; // Written again meanwhile: the new entry stays.
            }
            let path = entry_path(&key.namespace, &key.key);
            self.files(&path, ext).remove()?;
            Counters::bump(&self.counters.evictions);
        }
    }

    /// Walks the directory once at startup: finishes interrupted writes, removes damaged,
    /// orphaned and expired entries, and fills the index.
    fn startup_scan(self: &Arc<Self>) {
        let started = SystemTime::now();
        let mut dirs = vec![self.base.clone()];
        let private = self.base.join(PRIVATE_DIR);
        while let Some(dir) = dirs.pop() {
            if self.stop.is_stopped() {
                return;
            }
            if let Err(e) = self.scan_dir(&dir, &private, started, &mut dirs) {
                tracing::warn!(dir = %dir.display(), error = %e, "startup scan could not read a directory");
            }
        }
        if let Err(e) = self.evict_to_capacity() {
            tracing::warn!(error = %e, "evicting after the startup scan failed");
        }
        *self.ready.lock() = true;
        self.ready_cv.notify_all();
    }

    fn scan_dir(
        &self,
        dir: &Path,
        private: &Path,
        started: SystemTime,
        dirs: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let read = fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
        let mut sidecars = Vec::new();
        let mut payloads = HashSet::new();
        let mut pending_targets = HashSet::new();
        for entry in read.flatten() {
            let path = entry.path();
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                if path != private {
                    dirs.push(path);
                }
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if let Some((target, _, boot)) = parse_pending(&name) {
                if boot != self.boot {
                    pending_targets.insert(target.to_owned());
                }
            } else if let Some(data) = name.strip_suffix(".meta") {
                sidecars.push(data.to_owned());
            } else {
                payloads.insert(name);
            }
        }
        // Interrupted writes first, so the sidecars below describe settled entries.
        for target in &pending_targets {
            let data = dir.join(target);
            let files = Files {
                meta: dir.join(format!("{target}.meta")),
                data,
                dir: dir.to_owned(),
            };
            let owner = read_if_exists(&files.meta)?
                .and_then(|b| Sidecar::parse(&b).ok())
                .map(|(k, _)| k);
            let _write = owner.as_ref().map(|k| self.stripe(k).write());
            self.recover(&files)?;
        }
        for data_name in sidecars {
            payloads.remove(&data_name);
            self.scan_entry(dir, &data_name)?;
        }
        // Payloads with no sidecar: a delete or a write that died half way. The listing is
        // not atomic and a live write commits its sidecar before its payload, so look again
        // just before removing: a payload whose sidecar now exists, or that was written
        // since shortly before the scan began (file times are coarse), may be a live write's.
        let cutoff = started - Duration::from_secs(2);
        for name in payloads {
            let path = dir.join(&name);
            let sidecar = dir.join(format!("{name}.meta"));
            let old = fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m < cutoff);
            if old && !sidecar.exists() && dir != self.base {
                tracing::warn!(file = %path.display(), "removing payload without a sidecar");
                remove_if_exists(&path)?;
                Counters::bump(&self.counters.corrupt);
            }
        }
        Ok(())
    }

    fn scan_entry(&self, dir: &Path, data_name: &str) -> Result<()> {
        let files = Files {
            dir: dir.to_owned(),
            data: dir.join(data_name),
            meta: dir.join(format!("{data_name}.meta")),
        };
        let Some(bytes) = read_if_exists(&files.meta)? else {
            return Ok(()); // Deleted since the directory was listed.
        };
        let (key, meta) = match Sidecar::parse(&bytes) {
            Ok(parsed) => parsed,
            Err(why) => {
                tracing::warn!(file = %files.meta.display(), why, "removing a sidecar that does not parse");
                files.remove()?;
                Counters::bump(&self.counters.corrupt);
                return Ok(());
            }
        };
        let _write = self.stripe(&key).write();
        // The sidecar was read before the lock (it names the key, and so the lock): a live
        // write may have replaced the entry since. Judge the files by what is there now.
        let meta = match read_if_exists(&files.meta)? {
            None => return Ok(()), // Deleted meanwhile.
            Some(again) if again == bytes => meta,
            Some(again) => match Sidecar::parse(&again) {
                Ok((found, meta)) if found == key => meta,
                // Rewritten by a live write (of another key under the hashed fallback),
                // which indexed its entry itself.
                _ => return Ok(()),
            },
        };
        let expected = self.files(
            &entry_path(&key.namespace, &key.key),
            meta.format.extension(),
        );
        if expected.data != files.data {
            return self.drop_damaged(
                &key,
                &files,
                "entry is filed under a path its key does not map to",
            );
        }
        if meta.is_expired(self.clock.now()) {
            files.remove()?;
            Counters::bump(&self.counters.expired);
            return Ok(());
        }
        // Size is checked here (cheap); the checksum on every read.
        let size = match fs::metadata(&files.data) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !files.meta.exists() {
                    return Ok(()); // Deleted meanwhile.
                }
                return self.drop_damaged(&key, &files, "payload file is missing");
            }
            Err(e) => return Err(Error::io("stat", &files.data, e)),
        };
        if size != meta.size_bytes {
            return self.drop_damaged(&key, &files, "payload size does not match its sidecar");
        }
        let mut index = self.index.lock();
        match index.entries.peek(&key) {
            // Written by a live request, or found under another extension: newest wins.
            Some(existing) if existing.meta.version >= meta.version => {
                if existing.ext != meta.format.extension() {
                    drop(index);
                    files.remove()?;
                }
            }
            Some(existing) => {
                let stale = self.files(&entry_path(&key.namespace, &key.key), existing.ext);
                index.insert(
                    key.clone(),
                    Indexed {
                        ext: meta.format.extension(),
                        meta,
                    },
                );
                drop(index);
                stale.remove()?;
            }
            None => {
                index.entries.push(
                    key.clone(),
                    Indexed {
                        ext: meta.format.extension(),
                        meta: meta.clone(),
                    },
                );
                index.bytes += meta.size_bytes;
                // Found entries are the least recently used: they go before live writes.
                index.entries.demote(&key);
            }
        }
        Ok(())
    }
}

/// Splits a pending file name `.{target}[.meta].{boot}.pending` into (target, is_meta, boot).
fn parse_pending(name: &str) -> Option<(&str, bool, &str)> {
    let inner = name.strip_prefix('.')?.strip_suffix(".pending")?;
    let (rest, boot) = inner.rsplit_once('.')?;
    match rest.strip_suffix(".meta") {
        Some(target) => Some((target, true, boot)),
        None => Some((rest, false, boot)),
    }
}

fn write_file(path: &Path, parts: &[&[u8]], sync: bool) -> Result<()> {
    let mut file = File::create(path).map_err(|e| Error::io("create", path, e))?;
    for part in parts {
        file.write_all(part)
            .map_err(|e| Error::io("write", path, e))?;
    }
    if sync {
        file.sync_all().map_err(|e| Error::io("fsync", path, e))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", dir, e))
}

impl Tier for FsTier {
    fn name(&self) -> &str {
        "filesystem"
    }

    fn clock(&self) -> &dyn Clock {
        &*self.inner.clock
    }

    fn get(&self, key: &EntryKey) -> Result<Option<Entry>> {
        self.inner.get(key)
    }

    fn put(&self, key: &EntryKey, entry: Entry) -> Result<()> {
        self.inner.put(key, entry)
    }

    fn delete(&self, key: &EntryKey) -> Result<bool> {
        self.inner.delete(key)
    }

    fn metadata(&self, key: &EntryKey) -> Result<Option<EntryMeta>> {
        self.inner.metadata(key)
    }

    fn clear(&self, namespace: &Namespace, pattern: Option<&Pattern>) -> Result<u64> {
        let mut removed = 0;
        for (key, _) in self.inner.matching(namespace, pattern) {
            if self.inner.delete(&key)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn list_keys(
        &self,
        namespace: &Namespace,
        pattern: Option<&Pattern>,
        with_meta: bool,
    ) -> Result<Vec<(Key, Option<EntryMeta>)>> {
        let mut keys: Vec<_> = self
            .inner
            .matching(namespace, pattern)
            .into_iter()
            .map(|(k, meta)| (k.key, with_meta.then_some(meta)))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keys)
    }

    fn namespaces(&self) -> Result<Vec<Namespace>> {
        self.inner.wait_ready(None);
        let index = self.inner.index.lock();
        let set: std::collections::BTreeSet<Namespace> = index
            .entries
            .iter()
            .map(|(k, _)| k.namespace.clone())
            .collect();
        Ok(set.into_iter().collect())
    }

    fn cleanup_expired(&self) -> Result<u64> {
        self.inner.cleanup_expired()
    }

    fn stats(&self) -> TierStats {
        let mut stats = self.inner.counters.snapshot(self.name());
        let index = self.inner.index.lock();
        stats.size_bytes = index.bytes;
        stats.entries = index.entries.len() as u64;
        stats.capacity_bytes = Some(self.inner.config.max_bytes);
        stats.persistent = true;
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_names_parse() {
        assert_eq!(
            parse_pending(".frame_1.jpg.abc.pending"),
            Some(("frame_1.jpg", false, "abc"))
        );
        assert_eq!(
            parse_pending(".frame_1.jpg.meta.abc.pending"),
            Some(("frame_1.jpg", true, "abc"))
        );
        assert_eq!(parse_pending("frame_1.jpg"), None);
        assert_eq!(parse_pending("frame_1.jpg.meta"), None);
    }
}
