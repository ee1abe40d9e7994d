//! A full disk: writes are refused with [`Error::NoSpace`] and nothing already stored is lost.
//!
//! How: the test mounts a real 2 MiB tmpfs (so the kernel itself returns `ENOSPC`; this needs
//! root or `CAP_SYS_ADMIN`, and the test fails, rather than skips, without it), puts a
//! [`FsTier`] on it whose own capacity (1 GiB) is far beyond the disk's, and stacks a
//! [`MemoryTier`] over it in a [`Tiered`] store. It writes keys until the disk is full, then
//! proves that:
//! - the failing write returns `Error::NoSpace`, leaves no `.pending` file behind, and the key
//!   stays absent;
//! - every earlier write still reads back byte for byte through the store, the memory tier and
//!   the filesystem tier;
//! - overwriting an existing key with a bigger value (same kind, or another kind that moves it
//!   to another file) fails the same way, and the old value is still served by both tiers;
//! - deleting entries gives the space back, after which writes succeed again;
//! - a new process (a fresh `FsTier` on the same directory) finds exactly what was stored.
//!
//! The tmpfs is unmounted when the test ends, even if it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use strata_proto::{EntryKey, Format, Key, Namespace, Record, Value};
use strata_store::{
    Error, FsConfig, FsTier, FsyncPolicy, MemoryConfig, MemoryTier, SetPolicy, Tier, Tiered,
    system_clock,
};

/// Size of the tmpfs the filesystem tier lives on.
const TMPFS_SIZE: &str = "2m";
/// Upper bound on the writes that can fit (2 MiB of values of at least 12 KiB).
const MAX_WRITES: usize = 1000;
/// A value bigger than whatever space a full 2 MiB disk can have left.
const BIG: usize = 256 * 1024;

/// A tmpfs mounted on a temporary directory, unmounted on drop (even when the test panics).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match output {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "this test needs root (CAP_SYS_ADMIN) to mount a {size} tmpfs at {}, but `mount` \
                 failed ({}): {}",
                dir.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!(
                "this test needs root (CAP_SYS_ADMIN) and the `mount` command to mount a {size} \
                 tmpfs, but `mount` could not be run: {e}"
            ),
        }
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still has a file open: detach it now, the kernel frees it later.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
        // The `TempDir` then removes the (now empty) mount point.
    }
}

fn key(name: &str) -> EntryKey {
    EntryKey::new(
        Namespace::new("disk_full").expect("valid namespace"),
        Key::new(format!("fill:{name}")).expect("valid key"),
    )
}

/// A recognisable value of `size` bytes for `tag`.
fn payload(tag: &str, size: usize) -> Vec<u8> {
    let mut out = format!("{tag} len={size}\n").into_bytes();
    let mut x = size as u64
        ^ tag.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Asserts that `tier` serves exactly `expected` under `key`.
fn assert_holds(tier: &dyn Tier, key: &EntryKey, expected: &[u8], what: &str) {
    let entry = tier
        .get(key)
        .unwrap_or_else(|e| panic!("{what}: {} get {key} failed: {e}", tier.name()))
        .unwrap_or_else(|| panic!("{what}: {} lost {key}", tier.name()));
    let bytes = entry
        .value
        .as_bytes()
        .unwrap_or_else(|| panic!("{what}: {} serves {key} as {:?}", tier.name(), entry.value));
    assert!(
        bytes[..] == expected[..],
        "{what}: {} serves {key} changed: {} bytes, expected {}",
        tier.name(),
        bytes.len(),
        expected.len()
    );
}

fn assert_absent(tier: &dyn Tier, key: &EntryKey, what: &str) {
    let found = tier
        .get(key)
        .unwrap_or_else(|e| panic!("{what}: {} get {key} failed: {e}", tier.name()));
    assert!(
        found.is_none(),
        "{what}: {} still serves {key}",
        tier.name()
    );
}

/// Files named `*.pending` anywhere under `dir`.
fn pending_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let entry = entry.expect("directory entry");
            if entry.file_type().expect("file type").is_dir() {
                stack.push(entry.path());
            } else if entry.path().extension().is_some_and(|e| e == "pending") {
                found.push(entry.path());
            }
        }
    }
    found
}

fn assert_no_pending(dir: &Path, what: &str) {
    let pending = pending_files(dir);
    assert!(
        pending.is_empty(),
        "{what}: a failed write left pending files: {pending:#?}"
    );
}

fn assert_no_space(result: strata_store::Result<()>, what: &str) {
    match result {
        Err(Error::NoSpace { .. }) => {}
        Err(e) => panic!("{what}: expected Error::NoSpace, got {e:?}"),
        Ok(()) => panic!("{what}: the write succeeded on a full disk"),
    }
}

fn fs_config(path: &Path) -> FsConfig {
    let mut config = FsConfig::new(path);
    // Far more than the disk: the tier's own LRU eviction must not free space for it.
    config.max_bytes = 1 << 30;
    config.fsync = FsyncPolicy::Never;
    config.cleanup_interval_secs = 0;
    config
}

#[test]
fn full_disk_refuses_writes_and_keeps_what_was_stored() {
    let tmpfs = Tmpfs::mount(TMPFS_SIZE);
    let clock = system_clock();
    let fs =
        FsTier::open(fs_config(tmpfs.path()), clock.clone()).expect("open the filesystem tier");
    assert!(
        fs.wait_ready(Duration::from_secs(10)),
        "startup scan of an empty directory"
    );
    let memory = MemoryTier::new(
        MemoryConfig {
            max_bytes: 64 << 20,
        },
        clock.clone(),
    );
    let store = Tiered::new(
        vec![Arc::new(memory.clone()), Arc::new(fs.clone())],
        SetPolicy::All,
        clock.clone(),
    )
    .expect("a tiered store");

    // Fill the disk.
    let mut stored: Vec<(EntryKey, Vec<u8>)> = Vec::new();
    let mut refused = None;
    for i in 0..MAX_WRITES {
        let name = format!("k{i:04}");
        let value = payload(&name, (12 + i % 7) * 1024);
        match store.set(&key(&name), Value::from(value.clone()), None) {
            Ok(()) => stored.push((key(&name), value)),
            Err(e) => {
                refused = Some((key(&name), value, e));
                break;
            }
        }
    }
    let Some((failed_key, failed_value, error)) = refused else {
        panic!("{MAX_WRITES} writes all fit in a {TMPFS_SIZE} tmpfs: is it mounted?");
    };
    assert_no_space(Err(error), "the write that filled the disk");
    assert!(
        stored.len() >= 16,
        "only {} writes fit before the disk was full",
        stored.len()
    );
    eprintln!("{} writes fit before ENOSPC", stored.len());

    assert_no_pending(tmpfs.path(), "filling the disk");
    for tier in [&store as &dyn Tier, &memory, &fs] {
        assert_absent(tier, &failed_key, "the refused new key");
    }
    // Everything written before is intact, in the store and in each tier.
    for (k, v) in &stored {
        for tier in [&store as &dyn Tier, &memory, &fs] {
            assert_holds(tier, k, v, "after the disk filled");
        }
    }
    let stats = fs.stats();
    assert_eq!(
        stats.entries,
        stored.len() as u64,
        "filesystem tier index after ENOSPC"
    );
    assert_eq!(
        stats.size_bytes,
        stored.iter().map(|(_, v)| v.len() as u64).sum::<u64>(),
        "filesystem tier byte count after ENOSPC"
    );
    assert_eq!(
        stats.evictions, 0,
        "the tier's capacity must not have kicked in"
    );

    // Overwriting with a bigger value of the same kind (same `.bin` file) is refused; the old
    // value stays, in memory and on disk.
    let (victim, victim_old) = stored[stored.len() - 1].clone();
    let bigger = payload("bigger", BIG);
    assert_no_space(
        store.set(&victim, Value::from(bigger.clone()), None),
        "a bigger overwrite",
    );
    assert_no_pending(tmpfs.path(), "a bigger overwrite");
    for tier in [&store as &dyn Tier, &memory, &fs] {
        assert_holds(
            tier,
            &victim,
            &victim_old,
            "after a refused bigger overwrite",
        );
    }

    // Overwriting with another kind (a record, which lives in a `.json` file) is refused too,
    // and leaves no file of the new kind.
    let (moved, moved_old) = stored[stored.len() - 2].clone();
    let record =
        Record::from_serde(&serde_json::json!({ "pad": "x".repeat(BIG) })).expect("a record");
    assert_no_space(
        store.set(&moved, Value::from(record), None),
        "an overwrite with another kind",
    );
    assert_no_pending(tmpfs.path(), "an overwrite with another kind");
    let json = fs.data_file(&moved, &Format::Record);
    let json_meta = PathBuf::from(format!("{}.meta", json.display()));
    assert!(
        !json.exists() && !json_meta.exists(),
        "a refused write left {}",
        json.display()
    );
    for tier in [&store as &dyn Tier, &memory, &fs] {
        assert_holds(
            tier,
            &moved,
            &moved_old,
            "after a refused overwrite with another kind",
        );
    }

    // Deleting half the entries gives their space back: the refused writes now succeed.
    let (gone, kept) = stored.split_at(stored.len() / 2);
    for (k, _) in gone {
        assert!(store.delete(k).expect("delete"), "{k} was stored");
        for tier in [&store as &dyn Tier, &memory, &fs] {
            assert_absent(tier, k, "after delete");
        }
    }
    store
        .set(&failed_key, Value::from(failed_value.clone()), None)
        .expect("the refused new key fits once space is freed");
    store
        .set(&victim, Value::from(bigger.clone()), None)
        .expect("the bigger overwrite fits once space is freed");
    assert_no_pending(tmpfs.path(), "after space was freed");
    for tier in [&store as &dyn Tier, &memory, &fs] {
        assert_holds(tier, &failed_key, &failed_value, "after space was freed");
        assert_holds(tier, &victim, &bigger, "after space was freed");
    }
    let survivors: Vec<&(EntryKey, Vec<u8>)> = kept.iter().filter(|(k, _)| *k != victim).collect();
    for (k, v) in &survivors {
        for tier in [&store as &dyn Tier, &memory, &fs] {
            assert_holds(tier, k, v, "after space was freed");
        }
    }

    // A new process finds on disk exactly what was stored.
    drop(store);
    drop(memory);
    drop(fs);
    let reopened =
        FsTier::open(fs_config(tmpfs.path()), clock).expect("reopen the filesystem tier");
    assert!(
        reopened.wait_ready(Duration::from_secs(10)),
        "startup scan after reopening"
    );
    assert_no_pending(tmpfs.path(), "after reopening");
    assert_holds(&reopened, &failed_key, &failed_value, "after reopening");
    assert_holds(&reopened, &victim, &bigger, "after reopening");
    for (k, v) in &survivors {
        assert_holds(&reopened, k, v, "after reopening");
    }
    for (k, _) in gone {
        assert_absent(&reopened, k, "after reopening");
    }
    let stats = reopened.stats();
    assert_eq!(
        stats.entries,
        survivors.len() as u64 + 2,
        "entries found by the scan"
    );
    assert_eq!(
        stats.corrupt, 0,
        "the scan found damaged entries: {stats:?}"
    );
    drop(reopened);
    drop(tmpfs);
}
