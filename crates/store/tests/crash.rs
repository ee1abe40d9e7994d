//! Crash safety of the filesystem tier: a writer process is SIGKILLed in the middle of its
//! writes, and every key must then read as either its complete old value or its complete new
//! one — never a torn mix, never an older value than one whose write was acknowledged.
//!
//! How: the test binary runs itself (`std::env::current_exe()`) with only
//! [`crash_child_writer`] selected and `STRATA_CRASH_CHILD_DIR` set. That child opens an
//! [`FsTier`] on the directory and rewrites [`KEYS`] keys round after round with
//! self-verifying values (each encodes its key index and round, with a length and a pattern
//! derived from both), printing `ack <key> <round>` after every write that returned. The
//! parent waits for a random number of acks, sleeps a random 0–50 ms and kills the child with
//! SIGKILL. It then opens the directory itself and checks every key, before and after the
//! startup scan: the value decodes and matches its pattern exactly, and its round is the
//! last acknowledged one or that of the single write that was in flight. The cycle runs
//! [`ITERATIONS`] times on the same directory (alternating `fsync = never` and `always`), so
//! later children start on top of a directory a killed process left behind.
//!
//! Some keys change kind every round (bytes `.bin` → tensor `.npy` → record `.json`), so
//! writes that move an entry to another file, and crashes half way through them, are
//! exercised too.
//!
//! A second test, [`writes_racing_the_startup_scan_are_kept`], pins down what the first found
//! only now and then: a write that races the startup scan of the directory a previous process
//! left must not be taken for damage and dropped by the scan. A third,
//! [`writes_and_deletes_before_the_scan_leave_no_older_entry`], builds the directory a writer
//! killed half way through moving a key to another file leaves, and checks that a delete or a
//! write made before the startup scan settles it does not let the older entry come back.
//!
//! The random choices are printed; set `STRATA_CRASH_SEED` to replay them, and
//! `STRATA_CRASH_ITERATIONS` to run more kill cycles in a soak. The same trick
//! works under `cargo nextest run`, which also runs the binary directly.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strata_proto::{DType, EntryKey, Format, Key, Namespace, Record, Tensor, Value};
use strata_store::{FsConfig, FsTier, FsyncPolicy, Tier, system_clock};

/// Keys the child rewrites each round.
const KEYS: usize = 64;
/// Kill cycles on the same directory (`STRATA_CRASH_ITERATIONS` overrides it for soak runs).
const ITERATIONS: usize = 8;
/// Keys whose value changes kind every round (`.bin` → `.npy` → `.json` → `.bin` ...).
const SWITCHING: [usize; 3] = [0, 21, 42];

/// Name of the child test, as `--exact` needs it.
const CHILD_TEST: &str = "crash_child_writer";
/// Directory the child writes to; the child does nothing unless this is set.
const ENV_DIR: &str = "STRATA_CRASH_CHILD_DIR";
/// `never` or `always`.
const ENV_FSYNC: &str = "STRATA_CRASH_CHILD_FSYNC";
/// First round the child writes.
const ENV_START: &str = "STRATA_CRASH_CHILD_START_ROUND";
/// Seed of the parent's random choices, to replay a failure.
const ENV_SEED: &str = "STRATA_CRASH_SEED";
/// Number of kill cycles, for soak runs.
const ENV_ITERATIONS: &str = "STRATA_CRASH_ITERATIONS";

/// How long the parent waits for the acks it wants before giving up.
const ACK_WAIT: Duration = Duration::from_secs(20);
/// A child that is never killed stops by itself after this long (and the parent fails).
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// How long the parent waits for a startup scan.
const SCAN_WAIT: Duration = Duration::from_secs(30);
/// `SIGKILL` on Linux and the BSDs.
const SIGKILL: i32 = 9;

// ---------------------------------------------------------------------------------------------
// Keys and self-verifying values.

fn namespace() -> Namespace {
    Namespace::new("crash_test").expect("valid namespace")
}

fn entry_key(k: usize) -> EntryKey {
    // Spread over a few directories: `crash_test/crash/d<n>/item_<k>.<ext>`.
    let key = Key::new(format!("crash:d{}:item_{k}", k % 4)).expect("valid key");
    EntryKey::new(namespace(), key)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bytes,
    Tensor,
    Record,
}

/// The kind of key `k`'s value in `round`: fixed for most keys, rotating for [`SWITCHING`].
fn kind_of(k: usize, round: u64) -> Kind {
    if SWITCHING.contains(&k) {
        match round % 3 {
            0 => Kind::Bytes,
            1 => Kind::Tensor,
            _ => Kind::Record,
        }
    } else if k % 8 == 3 {
        Kind::Tensor
    } else if k % 8 == 6 {
        Kind::Record
    } else {
        Kind::Bytes
    }
}

/// A deterministic stream of numbers derived from (key, round, purpose): splitmix64.
struct Stream(u64);

impl Stream {
    fn new(k: usize, round: u64, purpose: u64) -> Self {
        Self((k as u64) << 48 ^ round << 8 ^ purpose ^ 0x5bd1_e995_d1b5_4a32)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Payload size for (key, round): 1–13 KiB, different almost every round, so a value cut
/// short or spliced from two writes cannot pass for a complete one.
fn size_of(k: usize, round: u64) -> usize {
    1024 + (Stream::new(k, round, 1).next_u64() % (12 * 1024)) as usize
}

#[derive(Serialize, Deserialize)]
struct Doc {
    k: usize,
    r: u64,
    pad: String,
}

/// The value key `k` holds after `round`.
fn make_value(k: usize, round: u64) -> Value {
    let size = size_of(k, round);
    let mut stream = Stream::new(k, round, 2);
    match kind_of(k, round) {
        Kind::Bytes => {
            let mut out = format!("strata-crash k={k} r={round} len={size}\n").into_bytes();
            while out.len() < size {
                out.extend_from_slice(&stream.next_u64().to_le_bytes());
            }
            out.truncate(size);
            Value::from(out)
        }
        Kind::Record => {
            let pad = (0..size)
                .map(|_| char::from(b'a' + (stream.next_u64() % 26) as u8))
                .collect();
            let doc = Doc { k, r: round, pad };
            Value::from(Record::from_serde(&doc).expect("a record serialises"))
        }
        Kind::Tensor => {
            const COLS: usize = 32;
            let rows = 2 + size / (COLS * 4);
            let mut values = Vec::with_capacity(rows * COLS);
            // Exact in f32: both are far below 2^24.
            values.push(k as f32);
            values.push(round as f32);
            while values.len() < rows * COLS {
                values.push((stream.next_u64() >> 40) as f32);
            }
            Value::from(
                Tensor::from_slice(vec![rows, COLS], &values).expect("a tensor of the right size"),
            )
        }
    }
}

/// Which (key, round) a value claims to be, checked byte for byte against the value that
/// (key, round) writes.
fn decode(value: &Value) -> Result<(usize, u64), String> {
    let (k, round) = match value {
        Value::Bytes(b) => {
            let end = b.iter().position(|&c| c == b'\n').ok_or("no header line")?;
            let header = std::str::from_utf8(&b[..end]).map_err(|e| format!("header: {e}"))?;
            let mut fields = header.split(' ');
            if fields.next() != Some("strata-crash") {
                return Err(format!("bad header {header:?}"));
            }
            let mut field = |name: &str| -> Result<u64, String> {
                fields
                    .next()
                    .and_then(|f| f.strip_prefix(name))
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("header {header:?} lacks {name}"))
            };
            let (k, round, len) = (field("k=")?, field("r=")?, field("len=")?);
            if len != b.len() as u64 {
                return Err(format!("header says {len} bytes, value has {}", b.len()));
            }
            (k as usize, round)
        }
        Value::Record(r) => {
            let doc: Doc = r.to_serde().map_err(|e| e.to_string())?;
            (doc.k, doc.r)
        }
        Value::Tensor(t) => {
            let array = t.to_array::<f32>().map_err(|e| e.to_string())?;
            let mut it = array.iter();
            match (it.next(), it.next()) {
                (Some(&k), Some(&r)) => (k as usize, r as u64),
                _ => return Err(format!("tensor of shape {:?} is too small", t.shape())),
            }
        }
        Value::Frame(_) => return Err("a frame was never written".into()),
    };
    if k >= KEYS {
        return Err(format!("value claims key {k}"));
    }
    if make_value(k, round) != *value {
        return Err(format!(
            "value claims key {k} round {round} but differs from what that write stored (torn or mixed): {value:?}"
        ));
    }
    Ok((k, round))
}

// ---------------------------------------------------------------------------------------------
// The child: the writer that gets killed.

/// The writer half of [`killed_writer_leaves_old_or_new_values`].
///
/// That test runs this binary again with only this test selected and `STRATA_CRASH_CHILD_DIR`
/// set, and kills it mid-write. Run by the harness like any other test (no variable set), it
/// returns at once: on its own it checks nothing and cannot fail — the assertions are all in
/// the parent.
#[test]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(ENV_DIR) else {
        return; // Not started by the crash test: nothing to do.
    };
    let fsync = match std::env::var(ENV_FSYNC).as_deref() {
        Ok("always") => FsyncPolicy::Always,
        Ok("never") => FsyncPolicy::Never,
        other => panic!("{ENV_FSYNC} must be `always` or `never`, not {other:?}"),
    };
    let start: u64 = std::env::var(ENV_START)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{ENV_START} must be a round number"));

    let mut config = FsConfig::new(PathBuf::from(dir));
    config.fsync = fsync;
    config.cleanup_interval_secs = 0;
    let tier = FsTier::open(config, system_clock()).expect("open the tier in the child");

    let mut out = std::io::stdout().lock();
    // libtest may have printed `test crash_child_writer ... ` without a newline: start afresh.
    writeln!(out, "\nchild writing from round {start}").expect("write to the parent");
    out.flush().expect("flush to the parent");
    let deadline = Instant::now() + CHILD_LIFETIME;
    // Writes start at once, racing the startup scan of the directory the last child left.
    for round in start..start + 100_000 {
        for k in 0..KEYS {
            if Instant::now() > deadline {
                writeln!(out, "child gave up: never killed").expect("write to the parent");
                return;
            }
            if let Err(e) = tier.set(&entry_key(k), make_value(k, round), None) {
                panic!("child: set key {k} round {round}: {e}");
            }
            // One write(2) per line, after the set returned: a printed ack is a returned write.
            writeln!(out, "ack {k} {round}").expect("write to the parent");
            out.flush().expect("flush to the parent");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// Kills and reaps the child when dropped, so a failing test leaves no writer behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one child did before it was killed.
struct Run {
    acks: Vec<(usize, u64)>,
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: String,
}

/// Runs a writer child on `dir` from round `start`, kills it `delay` after its
/// `min_acks`-th ack, and returns every ack it printed.
fn run_child(dir: &Path, fsync: &str, start: u64, min_acks: usize, delay: Duration) -> Run {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(ENV_DIR, dir)
        .env(ENV_FSYNC, fsync)
        .env(ENV_START, start.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the writer child");
    let stdout = child.stdout.take().expect("child stdout is piped");
    let stderr = child.stderr.take().expect("child stderr is piped");
    let mut guard = ChildGuard(child);

    let stderr_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let (tx, rx) = mpsc::channel();
    let stdout_reader = thread::spawn(move || {
        let mut other = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match parse_ack(&line) {
                Some(ack) => {
                    let _ = tx.send(ack);
                }
                None => other.push(line),
            }
        }
        other
    });

    let deadline = Instant::now() + ACK_WAIT;
    let mut acks = Vec::new();
    while acks.len() < min_acks {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ack) => acks.push(ack),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    let got_enough = acks.len() >= min_acks;
    if got_enough {
        thread::sleep(delay);
    }
    // Child::kill sends SIGKILL on unix: no destructor, no flush, no cleanup runs.
    guard.0.kill().expect("SIGKILL the child");
    let status = guard.0.wait().expect("reap the child");
    let stdout = stdout_reader.join().expect("stdout reader");
    let stderr = stderr_reader.join().expect("stderr reader");
    acks.extend(rx.try_iter());
    assert!(
        got_enough,
        "the child printed {} acks within {ACK_WAIT:?}, wanted {min_acks}; it exited with {status}\n\
         stdout:\n{}\nstderr:\n{stderr}",
        acks.len(),
        stdout.join("\n"),
    );
    Run {
        acks,
        status,
        stdout,
        stderr,
    }
}

fn parse_ack(line: &str) -> Option<(usize, u64)> {
    let mut parts = line.trim().strip_prefix("ack ")?.split(' ');
    let k = parts.next()?.parse().ok()?;
    let round = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((k, round))
}

/// The write after (k, round) in the child's schedule.
fn successor((k, round): (usize, u64)) -> (usize, u64) {
    if k + 1 < KEYS {
        (k + 1, round)
    } else {
        (0, round + 1)
    }
}

/// Files named `*.pending` anywhere under `dir`.
fn pending_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display()));
        for entry in entries {
            let entry = entry.expect("directory entry");
            let path = entry.path();
            if entry.file_type().expect("file type").is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "pending") {
                found.push(path);
            }
        }
    }
    found
}

/// Reads key `k` and checks it is complete and one of `allowed` (`None`: absent); returns the
/// round it holds.
fn read_checked(tier: &FsTier, k: usize, allowed: &[Option<u64>], phase: &str) -> Option<u64> {
    let key = entry_key(k);
    let entry = tier
        .get(&key)
        .unwrap_or_else(|e| panic!("{phase}: get key {k} failed: {e}"));
    let round = entry.map(|entry| {
        let (found_k, round) = decode(&entry.value)
            .unwrap_or_else(|e| panic!("{phase}: key {k} holds a damaged value: {e}"));
        assert_eq!(
            found_k, k,
            "{phase}: key {k} holds the value of key {found_k}"
        );
        assert_eq!(
            entry.meta.format,
            entry.value.format(),
            "{phase}: key {k}: metadata and value disagree"
        );
        round
    });
    assert!(
        allowed.contains(&round),
        "{phase}: key {k} holds round {round:?}, but only {allowed:?} are possible \
         (the last acknowledged write, or the one in flight when the writer was killed)"
    );
    round
}

/// Opens the directory a killed child left, checks every key against `allowed` before and
/// after the startup scan, and returns the round each key settled on.
fn check_directory(dir: &Path, allowed: &[Vec<Option<u64>>], label: &str) -> Vec<Option<u64>> {
    let mut config = FsConfig::new(dir);
    config.fsync = FsyncPolicy::Never;
    config.cleanup_interval_secs = 0;
    // The child is dead, and its lock with it.
    let tier =
        FsTier::open(config, system_clock()).unwrap_or_else(|e| panic!("{label}: reopen: {e}"));
    let ready_before = tier.is_ready();

    // Reads racing the startup scan: they probe the disk and finish interrupted writes.
    let early: Vec<Option<u64>> = (0..KEYS)
        .map(|k| read_checked(&tier, k, &allowed[k], &format!("{label}, before the scan")))
        .collect();

    assert!(
        tier.wait_ready(SCAN_WAIT),
        "{label}: startup scan did not finish within {SCAN_WAIT:?}"
    );
    let pending = pending_files(dir);
    assert!(
        pending.is_empty(),
        "{label}: pending files survive the startup scan: {pending:#?}"
    );

    // Reads from the index the scan built.
    let settled: Vec<Option<u64>> = (0..KEYS)
        .map(|k| read_checked(&tier, k, &allowed[k], &format!("{label}, after the scan")))
        .collect();
    for k in 0..KEYS {
        // A value once served (a finished write) never gives way to an older one.
        assert!(
            settled[k] >= early[k],
            "{label}: key {k} read round {:?} during the scan but {:?} after it",
            early[k],
            settled[k]
        );
        // The scan leaves exactly one entry per key: a stale file under another extension
        // would be found by the next process's probing reads.
        let formats = [
            Format::Bytes,
            Format::Record,
            Format::Tensor {
                dtype: DType::F32,
                shape: vec![],
            },
        ];
        let on_disk: Vec<PathBuf> = formats
            .iter()
            .map(|f| tier.data_file(&entry_key(k), f))
            .filter(|data| data.exists() || sidecar_of(data).exists())
            .collect();
        assert_eq!(
            on_disk.len(),
            usize::from(settled[k].is_some()),
            "{label}: key {k} (round {:?}) has these files on disk after the scan: {on_disk:#?}",
            settled[k]
        );
    }

    let listed: Vec<String> = tier
        .list_keys(&namespace(), None, false)
        .unwrap_or_else(|e| panic!("{label}: list_keys: {e}"))
        .into_iter()
        .map(|(key, _)| key.as_str().to_owned())
        .collect();
    let present: BTreeSet<String> = (0..KEYS)
        .filter(|&k| settled[k].is_some())
        .map(|k| entry_key(k).key.as_str().to_owned())
        .collect();
    assert_eq!(
        listed,
        present.into_iter().collect::<Vec<_>>(),
        "{label}: list_keys disagrees with get"
    );
    let stats = tier.stats();
    assert_eq!(
        stats.entries,
        settled.iter().filter(|r| r.is_some()).count() as u64,
        "{label}: index size"
    );
    eprintln!(
        "{label}: scan ready before the first read: {ready_before}; corrupt entries dropped: {}; \
         keys ahead of their last ack (in-flight write kept): {}",
        stats.corrupt,
        (0..KEYS).filter(|&k| settled[k] != allowed[k][0]).count(),
    );
    settled
}

/// `x.bin` → `x.bin.meta`.
fn sidecar_of(data: &Path) -> PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(".meta");
    PathBuf::from(name)
}

fn seed() -> u64 {
    match std::env::var(ENV_SEED) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{ENV_SEED} must be a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

#[test]
fn killed_writer_leaves_old_or_new_values() {
    let seed = seed();
    eprintln!("{ENV_SEED}={seed}");
    let mut rng = Stream(seed);
    let dir = tempfile::tempdir().expect("temporary directory");
    let started = Instant::now();

    // What each key durably holds: the round the last check settled on (None: never written).
    let mut held: Vec<Option<u64>> = vec![None; KEYS];
    let mut next_round = 1;
    let iterations = std::env::var(ENV_ITERATIONS).map_or(ITERATIONS, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("{ENV_ITERATIONS} must be a number"))
    });
    for iteration in 0..iterations {
        let fsync = if iteration % 2 == 0 {
            "never"
        } else {
            "always"
        };
        // Kill anywhere in the child's first three rounds, at any key.
        let min_acks = 1 + (rng.next_u64() % (3 * KEYS as u64)) as usize;
        let delay = Duration::from_millis(rng.next_u64() % 51);
        let label = format!(
            "iteration {iteration} (fsync {fsync}, from round {next_round}, killed {delay:?} after ack #{min_acks})"
        );
        let run = run_child(dir.path(), fsync, next_round, min_acks, delay);
        assert_eq!(
            run.status.signal(),
            Some(SIGKILL),
            "{label}: the child was not killed by SIGKILL but ended with {}\nstdout:\n{}\nstderr:\n{}",
            run.status,
            run.stdout.join("\n"),
            run.stderr
        );

        // The child writes (0, start), (1, start), ... (KEYS-1, start), (0, start+1), ... and
        // acks each in order; the write after the last ack is the one it was killed in (or
        // killed right after, before it could print the ack).
        let mut expected = (0, next_round);
        for &ack in &run.acks {
            assert_eq!(ack, expected, "{label}: acks out of the child's order");
            expected = successor(ack);
        }
        let in_flight = expected;
        let mut allowed: Vec<Vec<Option<u64>>> = held.iter().map(|&r| vec![r]).collect();
        for &(k, round) in &run.acks {
            allowed[k] = vec![Some(round)]; // Acknowledged: the old value is gone for good.
        }
        allowed[in_flight.0].push(Some(in_flight.1));

        held = check_directory(dir.path(), &allowed, &label);
        next_round = in_flight.1 + 1;
        eprintln!("{label}: {} acks, in flight {in_flight:?}", run.acks.len());
    }
    assert!(
        held.iter().all(Option::is_some),
        "every key was written at least once"
    );
    eprintln!("{iterations} kill cycles in {:?}", started.elapsed());
}

/// Keys rewritten back to back while the scan runs: few, so that whenever the scan reaches
/// one of them a write of it is likely to be under way.
const RACING: [usize; 2] = [1, 2];
/// Small entries stored beside each racing key, so that the scan spends a while in its
/// directory and reaches the key at an unpredictable moment.
const FILLER: usize = 200;
/// Reopenings in [`writes_racing_the_startup_scan_are_kept`]; each one gives the race
/// another chance to show.
const REOPENINGS: usize = 24;

/// Rewrites a few keys back to back while a freshly opened tier is still scanning the
/// directory, then checks that the scan dropped nothing: each key holds its last acknowledged
/// value and nothing was counted as corrupt (the directory was left clean, so there is nothing
/// damaged to find).
///
/// Regression test: the scan used to read a sidecar, then take its key's lock (waiting out a
/// write of that key in progress), and check the payload against the sidecar it had read
/// before — so the new payload was judged by the old sidecar ("payload size does not match")
/// and an acknowledged write was deleted.
#[test]
fn writes_racing_the_startup_scan_are_kept() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let open = || {
        let mut config = FsConfig::new(dir.path());
        config.fsync = FsyncPolicy::Never;
        config.cleanup_interval_secs = 0;
        FsTier::open(config, system_clock()).expect("open the tier")
    };
    let mut held: Vec<u64> = vec![1; KEYS];
    {
        let tier = open();
        assert!(tier.wait_ready(SCAN_WAIT), "scan of an empty directory");
        for k in 0..KEYS {
            tier.set(&entry_key(k), make_value(k, 1), None)
                .expect("set");
        }
        for k in RACING {
            for f in 0..FILLER {
                // The directory of `entry_key(k)`: `crash_test/crash/d<k % 4>/`.
                let key = Key::new(format!("crash:d{}:fill_{f}", k % 4)).expect("valid key");
                let filler = EntryKey::new(namespace(), key);
                tier.set(&filler, Value::from(vec![7u8; 16]), None)
                    .expect("set filler");
            }
        }
    }
    let mut round = 2;
    let mut raced = 0;
    for reopening in 0..REOPENINGS {
        let tier = open();
        let deadline = Instant::now() + SCAN_WAIT;
        while !tier.is_ready() && Instant::now() < deadline {
            for k in RACING {
                tier.set(&entry_key(k), make_value(k, round), None)
                    .unwrap_or_else(|e| panic!("set key {k} round {round}: {e}"));
                held[k] = round;
                raced += 1;
            }
            round += 1;
        }
        assert!(
            tier.wait_ready(SCAN_WAIT),
            "startup scan did not finish within {SCAN_WAIT:?}"
        );
        let corrupt = tier.stats().corrupt;
        for (k, &r) in held.iter().enumerate() {
            let entry = tier
                .get(&entry_key(k))
                .unwrap_or_else(|e| panic!("get key {k}: {e}"))
                .unwrap_or_else(|| {
                    panic!("reopening {reopening}: key {k} (acknowledged round {r}) is gone")
                });
            assert_eq!(
                decode(&entry.value),
                Ok((k, r)),
                "reopening {reopening}: key {k}"
            );
        }
        assert_eq!(
            corrupt, 0,
            "reopening {reopening}: the scan dropped {corrupt} live writes as damaged"
        );
    }
    eprintln!("{raced} writes raced {REOPENINGS} startup scans");
}

/// Leaves key `k` as a writer killed half way through moving it from `.bin` (round `from`) to
/// `.npy` (round `from + 1`) leaves it: the new `.npy` entry committed, the old `.bin` entry
/// not yet removed. Returns the path of the `.bin` data file.
fn leave_interrupted_move(tier: &FsTier, k: usize, from: u64) -> PathBuf {
    assert_eq!(kind_of(k, from), Kind::Bytes, "key {k} round {from}");
    assert_eq!(
        kind_of(k, from + 1),
        Kind::Tensor,
        "key {k} round {}",
        from + 1
    );
    let key = entry_key(k);
    tier.set(&key, make_value(k, from), None)
        .expect("set the old entry");
    let bin = tier.data_file(&key, &Format::Bytes);
    let saved = [bin.clone(), sidecar_of(&bin)]
        .map(|p| (std::fs::read(&p).expect("read the .bin entry"), p));
    tier.set(&key, make_value(k, from + 1), None)
        .expect("set the new entry");
    assert!(!bin.exists(), "a completed move removes the old file");
    for (bytes, path) in saved {
        std::fs::write(&path, bytes).expect("put the old entry back");
    }
    bin
}

/// A writer killed after committing a write that moved a key to another extension (here
/// `.bin` → `.npy`) but before removing the old file leaves two entries of the key; the
/// startup scan keeps the newest. A delete or a write made before the scan gets there must
/// take both with it: otherwise the delete is undone (the `.npy` entry comes back), or the
/// write leaves the `.npy` entry beside its own `.json` one, where a later process's reads
/// before its scan (which probe `.npy` before `.json`) would find it — an older value than an
/// acknowledged write.
#[test]
fn writes_and_deletes_before_the_scan_leave_no_older_entry() {
    const DELETED: usize = 0; // `crash_test/crash/d0/`
    const WRITTEN: usize = 21; // `crash_test/crash/d1/`
    let dir = tempfile::tempdir().expect("temporary directory");
    let open = || {
        let mut config = FsConfig::new(dir.path());
        config.fsync = FsyncPolicy::Never;
        config.cleanup_interval_secs = 0;
        FsTier::open(config, system_clock()).expect("open the tier")
    };
    {
        let tier = open();
        assert!(tier.wait_ready(SCAN_WAIT), "scan of an empty directory");
        // Filler beside both keys keeps the next scan busy while the test acts.
        for k in [DELETED, WRITTEN] {
            for f in 0..FILLER {
                let key = Key::new(format!("crash:d{}:fill_{f}", k % 4)).expect("valid key");
                let filler = EntryKey::new(namespace(), key);
                tier.set(&filler, Value::from(vec![7u8; 16]), None)
                    .expect("set filler");
            }
        }
        leave_interrupted_move(&tier, DELETED, 3);
        leave_interrupted_move(&tier, WRITTEN, 3);
    }

    let tier = open();
    assert!(
        tier.delete(&entry_key(DELETED)).expect("delete"),
        "the key was there"
    );
    tier.set(&entry_key(WRITTEN), make_value(WRITTEN, 5), None)
        .expect("write");
    let before_scan = !tier.is_ready();
    let formats = [
        Format::Bytes,
        Format::Tensor {
            dtype: DType::F32,
            shape: vec![],
        },
        Format::Record,
    ];
    let files = |k: usize| -> Vec<PathBuf> {
        formats
            .iter()
            .map(|f| tier.data_file(&entry_key(k), f))
            .filter(|data| data.exists() || sidecar_of(data).exists())
            .collect()
    };
    // What a process killed right now would leave for the next one.
    assert_eq!(
        files(DELETED),
        Vec::<PathBuf>::new(),
        "files of the deleted key"
    );
    assert_eq!(
        files(WRITTEN),
        vec![tier.data_file(&entry_key(WRITTEN), &Format::Record)],
        "files of the rewritten key"
    );
    let read = |k: usize| {
        tier.get(&entry_key(k))
            .expect("get")
            .map(|e| decode(&e.value).expect("a complete value"))
    };
    assert_eq!(read(DELETED), None, "the deleted key came back");
    assert_eq!(read(WRITTEN), Some((WRITTEN, 5)));
    assert!(
        tier.wait_ready(SCAN_WAIT),
        "startup scan did not finish within {SCAN_WAIT:?}"
    );
    assert_eq!(read(DELETED), None, "the scan brought the deleted key back");
    assert_eq!(read(WRITTEN), Some((WRITTEN, 5)));
    eprintln!("delete and write ran before the scan completed: {before_scan}");
}
