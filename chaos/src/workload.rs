//! The workload: concurrent clients doing a seeded mix of sets, gets and deletes over a small
//! key space, recording every operation in the [history](crate::history).
//!
//! # Mechanism
//! Each of C clients is a task with its own [`strata_client::Client`] (ring-aware, over QUIC;
//! seeded with every node's address, starting at a different one) and its own random stream
//! ([`crate::rng`]`(seed, 1 + client)`). In a loop it picks a key uniformly from `keys` keys
//! of one namespace and an operation — set 60 %, get 30 %, delete 10 % — runs it under a
//! per-operation timeout, and records it. Every set writes `c{client}-{seq}`, a value no
//! other operation writes, so each read identifies the write it saw.
//!
//! The client library retries internally (see `strata_client::client`); its per-attempt
//! timeout is set well below the per-operation one so that a retry can happen inside it. An
//! operation that errors or times out is recorded as failed: for a write, indeterminate.
//!
//! After the faults are healed, [`final_reads`] reads every key once with a fresh client:
//! the verification reads the checker holds to "lost write".
//!
//! # Caveats
//! - The random stream fixes which operations each client makes, not how they interleave in
//!   time across clients or with faults: a seed replays the fault schedule and each client's
//!   sequence, not the exact history.
//! - Clients pause [`THINK_TIME`] between operations; throughput is not the point, and the
//!   pause bounds the history's size.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::Rng;
use strata_client::{Client, ClientConfig, Error};
use strata_proto::{Key, Namespace, Value};

use crate::history::{Op, OpKind, Outcome, RunClock};

/// The namespace every operation uses.
pub const NAMESPACE: &str = "chaos";

/// Default bound on one operation, retries included: long enough for the client's own
/// retries (1 s attempts, see [`ATTEMPT_TIMEOUT`]) after a member fails, short enough that a
/// client stuck on a dead owner records failures at a useful rate.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// The client library's per-attempt (and connect) timeout: a third of [`OP_TIMEOUT`], so a
/// timed-out attempt can be followed by a ring refresh and a retry within one operation.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between one client's operations. With 4 clients and 200 keys this is at most ~800
/// operations/s, each key touched a few times a second: enough to see when a key becomes
/// available again, while an hour-long run keeps its history in the hundreds of MB.
pub const THINK_TIME: Duration = Duration::from_millis(5);

/// Hard bound on one client's operations, whatever the duration.
pub const MAX_OPS_PER_CLIENT: usize = 2_000_000;

/// Attempts of one final read before it is recorded as failed.
pub const FINAL_READ_ATTEMPTS: u32 = 3;

/// Time for all final reads together; keys not read by then are recorded as failed.
pub const FINAL_READS_BUDGET: Duration = Duration::from_secs(90);

/// What the workload does.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Concurrent clients.
    pub clients: u32,
    /// Keys in the key space.
    pub keys: usize,
    /// Seed of the clients' random streams.
    pub seed: u64,
    /// Bound on one operation.
    pub op_timeout: Duration,
}

/// The name of key `i`.
pub fn key_name(i: usize) -> String {
    format!("chaos:{i:04}")
}

/// The workload's key space, validated.
fn keys(count: usize) -> Result<Vec<Key>> {
    (0..count)
        .map(|i| Key::new(key_name(i)).context("a workload key"))
        .collect()
}

/// A client configuration that starts at node `first` and knows every other node.
fn client_config(addrs: &[SocketAddr], certs: &Path, first: usize) -> ClientConfig {
    let first = first % addrs.len().max(1);
    let mut config = ClientConfig::new(addrs[first].to_string(), certs);
    config.seeds = addrs
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != first)
        .map(|(_, a)| a.to_string())
        .collect();
    config.request_timeout = ATTEMPT_TIMEOUT;
    config.connect_timeout = ATTEMPT_TIMEOUT;
    config
}

/// A coarse class of a client error, for counting failures: `timeout`, `connect`,
/// `connection lost`, `routing`, `server <Code>`, `protocol`, `tls`, `config`.
pub fn error_class(error: &Error) -> String {
    match error {
        Error::Timeout { .. } => "timeout".into(),
        Error::Connect { .. } => "connect".into(),
        Error::ConnectionLost { .. } => "connection lost".into(),
        Error::Routing(_) => "routing".into(),
        Error::Server { code, .. } => format!("server {code:?}"),
        Error::Protocol(_) => "protocol".into(),
        Error::Tls(_) => "tls".into(),
        Error::Config(_) => "config".into(),
    }
}

/// The class of a recorded failure (the text before the first `: `).
pub fn failure_class(text: &str) -> &str {
    text.split_once(": ").map_or(text, |(class, _)| class)
}

/// Counts failed operations by [`failure_class`].
pub fn failures_by_class(ops: &[Op]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for op in ops {
        if let Outcome::Failed(text) = &op.outcome {
            *counts.entry(failure_class(text).to_owned()).or_default() += 1;
        }
    }
    counts
}

/// Running workload clients.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Op>>>,
}

impl Workload {
    /// Connects the clients and starts them.
    pub async fn start(
        config: &WorkloadConfig,
        addrs: &[SocketAddr],
        certs: &Path,
        clock: RunClock,
    ) -> Result<Self> {
        let namespace = Namespace::new(NAMESPACE).context("the workload namespace")?;
        let keys = Arc::new(keys(config.keys)?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for id in 0..config.clients {
            let client = Client::connect(client_config(addrs, certs, id as usize))
                .await
                .with_context(|| format!("connecting workload client {id}"))?;
            let driver = Driver {
                id,
                client,
                namespace: namespace.clone(),
                keys: Arc::clone(&keys),
                stop: Arc::clone(&stop),
                clock,
                op_timeout: config.op_timeout,
            };
            let rng = crate::rng(config.seed, 1 + u64::from(id));
            tasks.push(tokio::spawn(driver.run(rng)));
        }
        Ok(Self { stop, tasks })
    }

    /// Stops the clients after their current operation; every operation, by start time.
    pub async fn stop(self) -> Result<Vec<Op>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut ops = Vec::new();
        for task in self.tasks {
            ops.extend(task.await.context("a workload client panicked")?);
        }
        ops.sort_by_key(|op| (op.start_us, op.client));
        Ok(ops)
    }
}

/// One workload client.
struct Driver {
    id: u32,
    client: Client,
    namespace: Namespace,
    keys: Arc<Vec<Key>>,
    stop: Arc<AtomicBool>,
    clock: RunClock,
    op_timeout: Duration,
}

impl Driver {
    async fn run(self, mut rng: rand_chacha::ChaCha8Rng) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut seq = 0u64;
        while !self.stop.load(Ordering::Relaxed) && ops.len() < MAX_OPS_PER_CLIENT {
            let key = &self.keys[rng.random_range(0..self.keys.len())];
            let roll = rng.random_range(0..100u32);
            let kind = match roll {
                0..60 => OpKind::Set,
                60..90 => OpKind::Get,
                _ => OpKind::Delete,
            };
            let written = (kind == OpKind::Set).then(|| {
                seq += 1;
                format!("c{}-{seq}", self.id)
            });
            ops.push(self.op(kind, key, written).await);
            tokio::time::sleep(THINK_TIME).await;
        }
        self.client.close().await;
        ops
    }

    async fn op(&self, kind: OpKind, key: &Key, written: Option<String>) -> Op {
        let start_us = self.clock.now_us();
        let (outcome, value, version) = run_op(
            &self.client,
            &self.namespace,
            key,
            kind,
            written,
            self.op_timeout,
        )
        .await;
        Op {
            client: self.id,
            kind,
            key: key.to_string(),
            value,
            start_us,
            end_us: self.clock.now_us(),
            outcome,
            version,
            final_read: false,
        }
    }
}

/// Runs one operation under `timeout`: its outcome, the value written or read, and the
/// version a read returned.
async fn run_op(
    client: &Client,
    namespace: &Namespace,
    key: &Key,
    kind: OpKind,
    written: Option<String>,
    timeout: Duration,
) -> (Outcome, Option<String>, Option<String>) {
    let timed_out = || Outcome::Failed(format!("timeout: no answer within {timeout:?}"));
    let failed = |e: Error| Outcome::Failed(format!("{}: {e}", error_class(&e)));
    match kind {
        OpKind::Set => {
            let value = written.clone().unwrap_or_default();
            let call = client.set(namespace, key, Value::from(value.into_bytes()), None);
            let outcome = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(())) => Outcome::Ok,
                Ok(Err(e)) => failed(e),
                Err(_) => timed_out(),
            };
            (outcome, written, None)
        }
        OpKind::Delete => {
            let outcome = match tokio::time::timeout(timeout, client.delete(namespace, key)).await {
                Ok(Ok(_existed)) => Outcome::Ok,
                Ok(Err(e)) => failed(e),
                Err(_) => timed_out(),
            };
            (outcome, None, None)
        }
        OpKind::Get => match tokio::time::timeout(timeout, client.get(namespace, key)).await {
            Ok(Ok(None)) => (Outcome::Ok, None, None),
            Ok(Ok(Some(entry))) => {
                let value = match &entry.value {
                    Value::Bytes(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    // Never written by the workload: the checker reports it as a phantom.
                    _ => "<not a bytes value>".to_owned(),
                };
                (
                    Outcome::Ok,
                    Some(value),
                    Some(entry.meta.version.to_string()),
                )
            }
            Ok(Err(e)) => (failed(e), None, None),
            Err(_) => (timed_out(), None, None),
        },
    }
}

/// Reads every key once with a fresh client (up to [`FINAL_READ_ATTEMPTS`] attempts each,
/// every attempt recorded, all within [`FINAL_READS_BUDGET`]), as client `client`.
pub async fn final_reads(
    addrs: &[SocketAddr],
    certs: &Path,
    keys_count: usize,
    client_id: u32,
    op_timeout: Duration,
    clock: RunClock,
) -> Result<Vec<Op>> {
    let namespace = Namespace::new(NAMESPACE).context("the workload namespace")?;
    let client = Client::connect(client_config(addrs, certs, 0))
        .await
        .context("connecting the final reader")?;
    let deadline = Instant::now() + FINAL_READS_BUDGET;
    let mut ops = Vec::new();
    for key in keys(keys_count)? {
        for attempt in 1..=FINAL_READ_ATTEMPTS {
            let start_us = clock.now_us();
            let (outcome, value, version) = if Instant::now() < deadline {
                run_op(&client, &namespace, &key, OpKind::Get, None, op_timeout).await
            } else {
                let text = format!("skipped: final reads took over {FINAL_READS_BUDGET:?}");
                (Outcome::Failed(text), None, None)
            };
            let ok = outcome.is_ok();
            ops.push(Op {
                client: client_id,
                kind: OpKind::Get,
                key: key.to_string(),
                value,
                start_us,
                end_us: clock.now_us(),
                outcome,
                version,
                final_read: true,
            });
            if ok || Instant::now() >= deadline || attempt == FINAL_READ_ATTEMPTS {
                break;
            }
        }
    }
    client.close().await;
    Ok(ops)
}

/// The namespace of the probe's writes: apart from the workload's, so that they never
/// appear in the history the checker judges.
pub const PROBE_NAMESPACE: &str = "chaos-probe";

/// Most keys a probe reads, and most it writes, per fault: a sample of the failed node's keys.
pub const PROBE_SAMPLE: usize = 48;

/// Bound on one probe operation, the client's own retries included.
const PROBE_OP_TIMEOUT: Duration = OP_TIMEOUT;

/// Failures a probe remembers per key, for the run's notes.
const PROBE_ERRORS_PER_KEY: usize = 3;

/// Pause between a probe's attempts on one key after a failed one.
const PROBE_PAUSE: Duration = Duration::from_millis(20);

/// How soon a failed node's keys are served again, as an agent with a long-lived client sees
/// it.
///
/// Prepared before the fault: the client has learned the ring and holds a connection to
/// every owner (it reads each probed key once), as a fleet's clients do. After the fault
/// every key is probed at once, each by its own task that repeats its operation (with the
/// client's usual per-attempt timeout and retries) until one succeeds: reads of workload
/// keys the failed node owned, and writes of [`PROBE_NAMESPACE`] keys it owned.
pub struct Probe {
    client: Client,
    reads: Vec<Key>,
    writes: Vec<Key>,
}

/// What a [`Probe`] measured: per key, milliseconds from the fault to its first success.
#[derive(Debug, Default)]
pub struct Served {
    /// Reads that succeeded within the probe's time, in ms after the fault.
    pub reads: Vec<f64>,
    /// Writes that succeeded within the probe's time, in ms after the fault.
    pub writes: Vec<f64>,
    /// The first failures of each key: operation, key, seconds after the fault, error.
    pub errors: Vec<String>,
}

impl Probe {
    /// Connects a client like the workload's and warms it on `reads` (workload keys) and
    /// `writes` (probe-namespace keys); none if the cluster cannot be reached within `within`.
    pub async fn prepare(
        addrs: &[SocketAddr],
        certs: &Path,
        reads: Vec<String>,
        writes: Vec<String>,
        within: Duration,
    ) -> Option<Self> {
        let connect = Client::connect(client_config(addrs, certs, 0));
        let client = tokio::time::timeout(within, connect).await.ok()?.ok()?;
        let keys = |names: Vec<String>| -> Vec<Key> {
            names
                .into_iter()
                .take(PROBE_SAMPLE)
                .filter_map(|k| Key::new(k).ok())
                .collect()
        };
        let probe = Self {
            client,
            reads: keys(reads),
            writes: keys(writes),
        };
        let (ns, probe_ns) = (
            probe_namespace(NAMESPACE)?,
            probe_namespace(PROBE_NAMESPACE)?,
        );
        let warm = async {
            for key in &probe.reads {
                let _ = probe.client.get(&ns, key).await;
            }
            for key in &probe.writes {
                let _ = probe.client.get(&probe_ns, key).await;
            }
        };
        let _ = tokio::time::timeout(within, warm).await;
        Some(probe)
    }

    /// How many keys it reads.
    pub fn read_keys(&self) -> usize {
        self.reads.len()
    }

    /// How many keys it writes.
    pub fn write_keys(&self) -> usize {
        self.writes.len()
    }

    /// Probes every key at once until each has succeeded or `within` of `since` has passed
    /// (those are left out).
    pub async fn run(self, since: Instant, within: Duration) -> Served {
        let (Some(ns), Some(probe_ns)) =
            (probe_namespace(NAMESPACE), probe_namespace(PROBE_NAMESPACE))
        else {
            return Served::default();
        };
        let client = &self.client;
        let first_success = |write: bool, key: &Key| {
            let (ns, probe_ns) = (&ns, &probe_ns);
            let key = key.clone();
            async move {
                let mut errors = Vec::new();
                while since.elapsed() < within {
                    let bound = PROBE_OP_TIMEOUT.min(within.saturating_sub(since.elapsed()));
                    let started = since.elapsed();
                    let outcome = if write {
                        let value = Value::from(b"probe".to_vec());
                        let call = client.set(probe_ns, &key, value, None);
                        tokio::time::timeout(bound, call)
                            .await
                            .map(|r| r.map(|_| ()))
                    } else {
                        let call = client.get(ns, &key);
                        tokio::time::timeout(bound, call)
                            .await
                            .map(|r| r.map(|_| ()))
                    };
                    let error = match outcome {
                        Ok(Ok(())) => {
                            return (Some(since.elapsed().as_secs_f64() * 1000.0), errors);
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no answer within {bound:?}"),
                    };
                    if errors.len() < PROBE_ERRORS_PER_KEY {
                        errors.push(format!(
                            "{} {key} {:.1}–{:.1} s: {error}",
                            if write { "set" } else { "get" },
                            started.as_secs_f64(),
                            since.elapsed().as_secs_f64()
                        ));
                    }
                    tokio::time::sleep(PROBE_PAUSE).await;
                }
                (None, errors)
            }
        };
        let reads = futures::future::join_all(self.reads.iter().map(|k| first_success(false, k)));
        let writes = futures::future::join_all(self.writes.iter().map(|k| first_success(true, k)));
        let (reads, writes) = tokio::join!(reads, writes);
        let mut served = Served::default();
        for (time, errors) in reads {
            served.reads.extend(time);
            served.errors.extend(errors);
        }
        for (time, errors) in writes {
            served.writes.extend(time);
            served.errors.extend(errors);
        }
        self.client.close().await;
        served
    }
}

fn probe_namespace(name: &str) -> Option<Namespace> {
    Namespace::new(name).ok()
}

/// Client numbers from here on are minority probes ([`minority_writes`]), far above any
/// workload client and the final reader.
pub const MINORITY_CLIENT: u32 = 1_000_000;

/// Most writes one minority probe makes.
pub const MINORITY_WRITES: usize = 8;

/// Writes up to [`MINORITY_WRITES`] of `keys` once each through the node at `addr` alone,
/// as client `client` (at least [`MINORITY_CLIENT`]), with values `m{client}-{i}` that no
/// other operation writes; the operations, recorded like the workload's.
///
/// Made while that node is cut off from the others, with keys it owned before the cut: the
/// client knows only that node, routes by the ring that node gives it, and never retries, so
/// every write goes to the minority side and nowhere else. With W ≥ 2 such a node cannot
/// replicate, so it must acknowledge none of them (the summary counts those it did as
/// `minority_acks`, a violation); the checker holds any it did acknowledge to "lost write".
pub async fn minority_writes(
    addr: SocketAddr,
    certs: &Path,
    keys: &[String],
    client: u32,
    clock: RunClock,
) -> Vec<Op> {
    let mut config = ClientConfig::new(addr.to_string(), certs);
    config.request_timeout = ATTEMPT_TIMEOUT;
    config.connect_timeout = ATTEMPT_TIMEOUT;
    config.retries = 0;
    let connected = tokio::time::timeout(ATTEMPT_TIMEOUT * 2, Client::connect(config)).await;
    let (Ok(Ok(probe)), Ok(namespace)) = (connected, Namespace::new(NAMESPACE)) else {
        return Vec::new();
    };
    let mut ops = Vec::new();
    for (i, key) in keys.iter().take(MINORITY_WRITES).enumerate() {
        let Ok(key) = Key::new(key) else { continue };
        let start_us = clock.now_us();
        let value = format!("m{client}-{i}");
        let (outcome, value, version) = run_op(
            &probe,
            &namespace,
            &key,
            OpKind::Set,
            Some(value),
            ATTEMPT_TIMEOUT * 2,
        )
        .await;
        ops.push(Op {
            client,
            kind: OpKind::Set,
            key: key.to_string(),
            value,
            start_us,
            end_us: clock.now_us(),
            outcome,
            version,
            final_read: false,
        });
    }
    probe.close().await;
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_class() {
        let failed = |text: &str| Op {
            client: 0,
            kind: OpKind::Get,
            key: key_name(1),
            value: None,
            start_us: 0,
            end_us: 1,
            outcome: Outcome::Failed(text.into()),
            version: None,
            final_read: false,
        };
        let e = Error::Routing("redirected 8 times".into());
        let ops = [
            failed(&format!("{}: {e}", error_class(&e))),
            failed("timeout: no answer within 3s"),
            failed("timeout: get request timed out after 1s"),
        ];
        let counts = failures_by_class(&ops);
        assert_eq!(counts.get("timeout"), Some(&2));
        assert_eq!(counts.get("routing"), Some(&1));
    }

    #[test]
    fn keys_are_valid_and_distinct() {
        let keys = keys(200).unwrap_or_default();
        assert_eq!(keys.len(), 200);
        assert_eq!(keys[7].as_str(), "chaos:0007");
    }
}
