//! `get_or_compute` with cluster-wide single flight, across real processes: a 3-node cluster
//! of `strata node` processes, and three client processes with about 33 concurrent callers
//! each, all asking for the same missing key.
//!
//! The client processes are this test binary itself, started again with
//! [`WORKER_ENV`] set (see [`worker`]). Every run of the compute closure appends a line with
//! its process id to a file (`O_APPEND`, so the lines of several processes never mix and a
//! run is recorded even if its process is killed afterwards), so the test counts the
//! computations, whichever process made them.
//!
//! This target has its own `main` (`harness = false` in `crates/cli/Cargo.toml`), because it
//! is both the tests and the worker: `cargo test --test flight [NAME]` runs the tests (all,
//! or those whose name contains NAME), one at a time.

#![allow(clippy::unwrap_used)] // Test code panics on failure by design.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use strata_client::{
    CacheError, Client, ClientConfig, ComputeError, ComputeOptions, EmbeddingCache, Origin,
};
use strata_proto::ring::MemberState;
use strata_proto::wire::{
    self, ErrorCode, HEADER_LEN, Request, RequestFrame, Response, ResponseFrame,
};
use strata_proto::{Key, Namespace, Tensor, Value};
use support::{Cluster, TestNode, free_udp_port};

/// Set in a worker process's environment; its value is the worker's settings (see
/// [`WorkerSpec`]).
const WORKER_ENV: &str = "STRATA_FLIGHT_WORKER";
/// Callers in all, over three processes.
const CALLERS: usize = 100;
/// The TTL the computed value is stored with.
const TTL: Duration = Duration::from_secs(3600);

type TestFn = fn(&tokio::runtime::Runtime) -> Result<()>;

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        return match worker(&spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker failed: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let tests: [(&str, TestFn); 4] = [
        (
            "failures_hand_the_lease_over_and_bad_input_is_refused",
            failures_hand_the_lease_over_and_bad_input_is_refused,
        ),
        (
            "hundred_callers_in_three_processes_compute_once",
            hundred_callers_in_three_processes_compute_once,
        ),
        (
            "a_killed_computer_is_replaced_by_exactly_one_waiter",
            a_killed_computer_is_replaced_by_exactly_one_waiter,
        ),
        (
            "a_killed_owner_costs_at_most_one_extra_computation",
            a_killed_owner_costs_at_most_one_extra_computation,
        ),
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in &tests {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("no tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        println!("test {name} ...");
        let started = Instant::now();
        match test(&runtime) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.1?})", started.elapsed());
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n{e:#}");
            }
        }
    }
    println!("\ntest result: {passed} passed; {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------------------
// The worker: one client process with many concurrent callers.

/// What a worker does, passed as `;`-separated `name=value` pairs in [`WORKER_ENV`].
#[derive(Debug)]
struct WorkerSpec {
    /// The seed it connects through.
    addr: String,
    certs: PathBuf,
    /// Where the run log, the readiness and start markers and the go signal live.
    dir: PathBuf,
    key: String,
    callers: usize,
    /// How long one computation takes.
    compute_ms: u64,
    lease_ms: u64,
}

impl WorkerSpec {
    fn encode(&self) -> String {
        format!(
            "addr={};certs={};dir={};key={};callers={};compute_ms={};lease_ms={}",
            self.addr,
            self.certs.display(),
            self.dir.display(),
            self.key,
            self.callers,
            self.compute_ms,
            self.lease_ms
        )
    }

    fn decode(spec: &str) -> Result<Self> {
        let fields: BTreeMap<&str, &str> =
            spec.split(';').filter_map(|f| f.split_once('=')).collect();
        let get = |name: &str| {
            fields
                .get(name)
                .copied()
                .with_context(|| format!("worker spec without {name}: {spec:?}"))
        };
        Ok(Self {
            addr: get("addr")?.to_owned(),
            certs: get("certs")?.into(),
            dir: get("dir")?.into(),
            key: get("key")?.to_owned(),
            callers: get("callers")?.parse()?,
            compute_ms: get("compute_ms")?.parse()?,
            lease_ms: get("lease_ms")?.parse()?,
        })
    }
}

/// The run log: one line per computation, `PID CALLER`.
fn runs_file(dir: &Path) -> PathBuf {
    dir.join("runs.log")
}

/// Connects, says it is ready, waits for the go signal, then runs its callers at once; prints
/// one line per caller: `ok CALLER ORIGIN VALUE` or `err CALLER ERROR`.
fn worker(spec: &str) -> Result<()> {
    let spec = WorkerSpec::decode(spec)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client = Client::connect(ClientConfig::new(spec.addr.clone(), &spec.certs)).await?;
        let pid = std::process::id();
        std::fs::write(spec.dir.join(format!("ready-{pid}")), b"")?;
        let go = spec.dir.join("go");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !go.exists() {
            ensure!(Instant::now() < deadline, "no go signal within 120 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ns = Namespace::default_namespace();
        let key = Key::new(spec.key.clone())?;
        let options = ComputeOptions {
            lease: Duration::from_millis(spec.lease_ms),
            max_wait: Duration::from_secs(90),
            ..ComputeOptions::default()
        };
        let callers = (0..spec.callers).map(|caller| {
            let (client, ns, key, options) =
                (client.clone(), ns.clone(), key.clone(), options.clone());
            let dir = spec.dir.clone();
            let compute_ms = spec.compute_ms;
            tokio::spawn(async move {
                let outcome = client
                    .get_or_compute_with(&ns, &key, Some(TTL), &options, || async move {
                        // Recorded before the work, so a run counts even if killed mid-way.
                        let mut runs = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(runs_file(&dir))?;
                        runs.write_all(format!("{pid} {caller}\n").as_bytes())?;
                        runs.sync_all()?;
                        std::fs::write(dir.join(format!("started-{pid}")), b"")?;
                        tokio::time::sleep(Duration::from_millis(compute_ms)).await;
                        Ok::<_, std::io::Error>(Value::from(
                            format!("computed-by-{pid}").into_bytes(),
                        ))
                    })
                    .await;
                (caller, outcome)
            })
        });
        let results = futures::future::join_all(callers.collect::<Vec<_>>()).await;
        let mut out = std::io::stdout().lock();
        for result in results {
            let (caller, outcome) = result?;
            match outcome {
                Ok(computed) => {
                    let Value::Bytes(bytes) = &computed.value else {
                        bail!("caller {caller} got a non-bytes value");
                    };
                    writeln!(
                        out,
                        "ok {caller} {:?} {}",
                        computed.origin,
                        String::from_utf8_lossy(bytes)
                    )?;
                    if let Some(e) = computed.store_error {
                        writeln!(out, "store-error {caller} {e}")?;
                    }
                }
                Err(e) => writeln!(out, "err {caller} {e}")?,
            }
        }
        out.flush()?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// The test side.

/// A worker process, killed on drop.
struct Worker {
    child: Option<Child>,
    callers: usize,
}

impl Worker {
    fn start(spec: &WorkerSpec) -> Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .env(WORKER_ENV, spec.encode())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting a worker process")?;
        Ok(Self {
            child: Some(child),
            callers: spec.callers,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (at most `within`) for the worker to exit, then parses its report.
    fn report(&mut self, within: Duration) -> Result<Vec<CallerReport>> {
        let mut child = self.child.take().context("the worker was killed")?;
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("worker {} did not finish within {within:?}", child.id());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines() {
                stdout.push_str(&line?);
                stdout.push('\n');
            }
        }
        if let Some(err) = child.stderr.take() {
            for line in BufReader::new(err).lines() {
                stderr.push_str(&line?);
                stderr.push('\n');
            }
        }
        ensure!(
            status.success(),
            "worker {} failed ({status}): {stderr}\n{stdout}",
            child.id()
        );
        let reports: Vec<CallerReport> = stdout.lines().map(CallerReport::parse).collect();
        ensure!(
            reports.len() == self.callers,
            "worker {} reported {} of its {} callers:\n{stdout}",
            child.id(),
            reports.len(),
            self.callers
        );
        Ok(reports)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One caller's outcome, as a worker printed it.
#[derive(Debug)]
enum CallerReport {
    Ok { origin: String, value: String },
    Failed(String),
}

impl CallerReport {
    fn parse(line: &str) -> Self {
        let mut parts = line.splitn(4, ' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ok"), Some(_), Some(origin), Some(value)) => CallerReport::Ok {
                origin: origin.to_owned(),
                value: value.to_owned(),
            },
            _ => CallerReport::Failed(line.to_owned()),
        }
    }
}

/// Three members on free ports, settled (all active, nothing moving).
async fn three_nodes(cluster: &Cluster) -> Result<(Vec<SocketAddr>, Vec<TestNode>)> {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_udp_port()).collect::<Result<_>>()?;
    let mut nodes = vec![cluster.start_member(1, addrs[0], None)?];
    for (i, addr) in addrs.iter().enumerate().skip(1) {
        nodes.push(cluster.start_member(i as u64 + 1, *addr, Some(addrs[0]))?);
    }
    let client = Client::connect(ClientConfig::new(addrs[0].to_string(), cluster.certs())).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(ring) = client.refresh_ring().await
            && ring.members.len() == 3
            && ring.members.iter().all(|m| m.state == MemberState::Active)
            && ring.moving == 0
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the cluster did not settle within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.close().await;
    Ok((addrs, nodes))
}

/// Starts three workers (34, 33 and 33 callers), each through another seed, waits until all
/// are connected, and gives the go signal.
fn start_workers(
    cluster: &Cluster,
    addrs: &[SocketAddr],
    dir: &Path,
    key: &str,
    compute_ms: u64,
    lease_ms: u64,
) -> Result<Vec<Worker>> {
    let mut workers = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let callers = CALLERS / 3 + usize::from(i < CALLERS % 3);
        workers.push(Worker::start(&WorkerSpec {
            addr: addr.to_string(),
            certs: cluster.certs(),
            dir: dir.to_owned(),
            key: key.to_owned(),
            callers,
            compute_ms,
            lease_ms,
        })?);
    }
    ensure!(
        workers.iter().map(|w| w.callers).sum::<usize>() == CALLERS,
        "callers"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = workers
            .iter()
            .filter(|w| {
                w.pid()
                    .is_some_and(|p| dir.join(format!("ready-{p}")).exists())
            })
            .count();
        if ready == workers.len() {
            break;
        }
        for w in &mut workers {
            if let Some(child) = w.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("worker {} exited early ({status})", child.id());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "{ready} of 3 workers connected within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(dir.join("go"), b"")?;
    Ok(workers)
}

/// The computations recorded so far: (pid, caller) in order.
fn runs(dir: &Path) -> Result<Vec<(u32, usize)>> {
    let text = match std::fs::read_to_string(runs_file(dir)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    text.lines()
        .map(|line| {
            let (pid, caller) = line.split_once(' ').context("a run line")?;
            Ok((pid.parse()?, caller.parse()?))
        })
        .collect()
}

/// Reads the key back through a fresh client: the computed value, stored with the TTL.
async fn check_stored(
    cluster: &Cluster,
    seed: SocketAddr,
    key: &str,
    expected: &str,
) -> Result<()> {
    let client = Client::connect(ClientConfig::new(seed.to_string(), cluster.certs())).await?;
    let entry = client
        .get(&Namespace::default_namespace(), &Key::new(key)?)
        .await?
        .context("the computed value is not stored")?;
    let Value::Bytes(bytes) = &entry.value else {
        bail!("a non-bytes value is stored");
    };
    ensure!(
        bytes.as_ref() == expected.as_bytes(),
        "stored {bytes:?}, expected {expected}"
    );
    let expires = entry
        .meta
        .expires_at
        .context("stored without the caller's TTL")?;
    let ttl_ms = expires.0.saturating_sub(entry.meta.created_at.0);
    ensure!(
        ttl_ms.abs_diff(TTL.as_millis() as u64) < 1000,
        "stored with a TTL of {ttl_ms} ms, not {TTL:?}"
    );
    client.close().await;
    Ok(())
}

fn hundred_callers_in_three_processes_compute_once(rt: &tokio::runtime::Runtime) -> Result<()> {
    let cluster = Cluster::new()?;
    let (addrs, _nodes) = rt.block_on(three_nodes(&cluster))?;
    let dir = tempfile::tempdir()?;
    let key = "video:abc123:transcript:once";
    let mut workers = start_workers(&cluster, &addrs, dir.path(), key, 1000, 5000)?;
    let mut reports = Vec::new();
    for worker in &mut workers {
        reports.extend(worker.report(Duration::from_secs(120))?);
    }
    let runs = runs(dir.path())?;
    ensure!(
        runs.len() == 1,
        "the computation ran {} times, not once: {:?}...",
        runs.len(),
        &runs[..runs.len().min(10)]
    );
    let expected = format!("computed-by-{}", runs[0].0);
    let mut computed = 0;
    for report in &reports {
        match report {
            CallerReport::Ok { origin, value } => {
                ensure!(
                    value == &expected,
                    "a caller got {value:?}, not {expected:?}"
                );
                computed += usize::from(origin == &format!("{:?}", Origin::Computed));
            }
            CallerReport::Failed(line) => bail!("a caller failed: {line}"),
        }
    }
    ensure!(reports.len() == CALLERS, "{} reports", reports.len());
    ensure!(
        computed == 1,
        "{computed} callers say they computed the value"
    );
    let waited = reports
        .iter()
        .filter(|r| matches!(r, CallerReport::Ok { origin, .. } if origin == "Waited"))
        .count();
    println!(
        "  1 computation; {computed} caller computed, {waited} waited, {} found it cached",
        CALLERS - computed - waited
    );
    // The callers really were concurrent: most asked while the value was being computed.
    ensure!(
        waited >= CALLERS / 2,
        "only {waited} callers waited for the computation"
    );
    rt.block_on(check_stored(&cluster, addrs[1], key, &expected))
}

fn a_killed_computer_is_replaced_by_exactly_one_waiter(rt: &tokio::runtime::Runtime) -> Result<()> {
    let cluster = Cluster::new()?;
    let (addrs, _nodes) = rt.block_on(three_nodes(&cluster))?;
    let dir = tempfile::tempdir()?;
    let key = "video:abc123:transcript:killed";
    // Long computations, a 2 s lease: the takeover comes about 2 s after the kill.
    let mut workers = start_workers(&cluster, &addrs, dir.path(), key, 3000, 2000)?;
    // Kill -9 the process whose computation started, mid-way through it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        if let Some(i) = workers.iter().position(|w| {
            w.pid()
                .is_some_and(|p| dir.path().join(format!("started-{p}")).exists())
        }) {
            break i;
        }
        ensure!(
            Instant::now() < deadline,
            "no computation started within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(500));
    let victim_pid = workers[victim].pid().context("victim pid")?;
    workers[victim].kill();
    let mut reports = Vec::new();
    for (i, worker) in workers.iter_mut().enumerate() {
        if i != victim {
            reports.extend(worker.report(Duration::from_secs(120))?);
        }
    }
    let runs = runs(dir.path())?;
    ensure!(
        runs.len() == 2,
        "the computation ran {} times, not twice: {runs:?}",
        runs.len()
    );
    ensure!(
        runs[0].0 == victim_pid,
        "the first run was not the killed process's: {runs:?}"
    );
    ensure!(
        runs[1].0 != victim_pid,
        "the second run was in the killed process: {runs:?}"
    );
    let expected = format!("computed-by-{}", runs[1].0);
    let survivors = CALLERS - workers[victim].callers;
    ensure!(
        reports.len() == survivors,
        "{} reports of {survivors} surviving callers",
        reports.len()
    );
    let mut computed = 0;
    for report in &reports {
        match report {
            CallerReport::Ok { value, origin } => {
                ensure!(
                    value == &expected,
                    "a caller got {value:?}, not {expected:?}"
                );
                computed += usize::from(origin == &format!("{:?}", Origin::Computed));
            }
            CallerReport::Failed(line) => bail!("a caller failed: {line}"),
        }
    }
    ensure!(
        computed == 1,
        "{computed} surviving callers say they computed the value"
    );
    println!(
        "  killed pid {victim_pid} mid-computation; 2 computations; {} surviving callers got the value",
        reports.len()
    );
    rt.block_on(check_stored(&cluster, addrs[2], key, &expected))
}

/// A raw QUIC connection with the cluster's client certificate, for requests the client
/// library never sends.
async fn raw_connection(cluster: &Cluster, node: &TestNode) -> Result<quinn::Connection> {
    strata_node::tls::install_crypto_provider();
    let files = strata_node::tls::TlsFiles {
        ca: cluster.certs().join("ca.pem"),
        cert: cluster.certs().join("client.pem"),
        key: cluster.certs().join("client.key"),
    };
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(strata_node::tls::client_config(&files)?);
    Ok(endpoint
        .connect(node.addr(), strata_node::tls::SERVER_NAME)?
        .await?)
}

/// Sends one request on a new stream; the node's answer.
async fn raw_call(conn: &quinn::Connection, request: Request) -> Result<Response> {
    let bytes = wire::encode_frame(&RequestFrame {
        id: 1,
        epoch: 0,
        request,
    });
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&bytes).await?;
    let _ = send.finish();
    let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20)).await??;
    ensure!(answer.len() >= HEADER_LEN, "no response frame");
    let frame: ResponseFrame = wire::decode_body(&answer[HEADER_LEN..])?;
    Ok(frame.response)
}

fn failures_hand_the_lease_over_and_bad_input_is_refused(
    rt: &tokio::runtime::Runtime,
) -> Result<()> {
    let cluster = Cluster::new()?;
    let node = cluster.start("solo", &[], &[])?;
    rt.block_on(async {
        let client =
            Client::connect(ClientConfig::new(node.addr().to_string(), cluster.certs())).await?;
        let ns = Namespace::default_namespace();
        let precious = Key::new("precious")?;
        client
            .set(&ns, &precious, Value::from(b"intact".to_vec()), None)
            .await?;

        // Arguments that cannot work are refused before anything is sent or computed.
        let key = Key::new("transcript:bad-input")?;
        let ran = std::sync::atomic::AtomicUsize::new(0);
        let compute = || async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Value::from(b"x".to_vec()))
        };
        let zero_ttl = client
            .get_or_compute(&ns, &key, Some(Duration::ZERO), compute)
            .await;
        ensure!(
            matches!(&zero_ttl, Err(ComputeError::InvalidArgument(m)) if m.contains("TTL of zero")),
            "{zero_ttl:?}"
        );
        let short = ComputeOptions {
            lease: Duration::from_millis(10),
            ..ComputeOptions::default()
        };
        let short_lease = client
            .get_or_compute_with(&ns, &key, None, &short, compute)
            .await;
        ensure!(
            matches!(short_lease, Err(ComputeError::InvalidArgument(_))),
            "{short_lease:?}"
        );
        ensure!(ran.load(Ordering::SeqCst) == 0, "a refused call computed");
        ensure!(
            !client.exists(&ns, &key).await?,
            "a refused call stored something"
        );

        // A cached value is returned without computing.
        let cached = client
            .get_or_compute_with(&ns, &precious, None, &ComputeOptions::default(), compute)
            .await?;
        ensure!(
            cached.origin == Origin::Cached && ran.load(Ordering::SeqCst) == 0,
            "{cached:?}"
        );
        ensure!(
            cached.value == Value::from(b"intact".to_vec()),
            "{cached:?}"
        );

        // A failed computation releases its lease at once: one waiter takes over long before
        // the 10 s lease would have expired, and only the failed caller sees the error.
        let key = Key::new("transcript:fails-first")?;
        let options = ComputeOptions {
            lease: Duration::from_secs(10),
            ..ComputeOptions::default()
        };
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let began = Instant::now();
        let failing = {
            let (client, ns, key, options) =
                (client.clone(), ns.clone(), key.clone(), options.clone());
            tokio::spawn(async move {
                client
                    .get_or_compute_with(&ns, &key, None, &options, || async move {
                        let _ = started_tx.send(());
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Err::<Value, _>("the model server is down")
                    })
                    .await
            })
        };
        tokio::time::timeout(Duration::from_secs(10), started_rx).await??;
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let waiters: Vec<_> = (0..5)
            .map(|i| {
                let (client, ns, key, options, runs) = (
                    client.clone(),
                    ns.clone(),
                    key.clone(),
                    options.clone(),
                    runs.clone(),
                );
                tokio::spawn(async move {
                    client
                        .get_or_compute_with(&ns, &key, None, &options, || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Ok::<_, &str>(Value::from(format!("by-waiter-{i}").into_bytes()))
                        })
                        .await
                })
            })
            .collect();
        let failed = failing.await?;
        ensure!(
            matches!(
                failed,
                Err(ComputeError::Compute("the model server is down"))
            ),
            "{failed:?}"
        );
        let mut values = Vec::new();
        let mut computed = 0;
        for waiter in waiters {
            let got = waiter
                .await?
                .map_err(|e| anyhow::anyhow!("a waiter failed: {e}"))?;
            computed += usize::from(got.origin == Origin::Computed);
            values.push(got.value);
        }
        let elapsed = began.elapsed();
        let ran = runs.load(Ordering::SeqCst);
        ensure!(ran == 1 && computed == 1, "{ran} waiters computed");
        ensure!(
            values.windows(2).all(|w| w[0] == w[1]),
            "waiters got different values: {values:?}"
        );
        ensure!(
            elapsed < Duration::from_secs(5),
            "the takeover took {elapsed:?}: the lease was not released"
        );

        // Bad input on the wire gets a clear error and changes nothing; stale tokens are
        // refused.
        let conn = raw_connection(&cluster, &node).await?;
        let compute = |namespace: &str, key: &str| Request::Compute {
            namespace: namespace.into(),
            key: key.into(),
            lease_ms: 1000,
            wait_ms: 0,
        };
        for (request, code) in [
            (compute("default", ""), ErrorCode::InvalidKey),
            (compute("default", "a\0b"), ErrorCode::InvalidKey),
            (compute("../etc", "k"), ErrorCode::InvalidNamespace),
            (
                Request::ComputeRenew {
                    namespace: "default".into(),
                    key: "k\0".into(),
                    token: 1,
                    lease_ms: 1000,
                },
                ErrorCode::InvalidKey,
            ),
        ] {
            let kind = request.kind();
            match raw_call(&conn, request).await? {
                Response::Error(e) if e.code == code => {}
                other => bail!("{kind}: expected {code:?}, got {other:?}"),
            }
        }
        let renew = Request::ComputeRenew {
            namespace: "default".into(),
            key: "precious".into(),
            token: 42,
            lease_ms: 1000,
        };
        ensure!(
            raw_call(&conn, renew).await? == Response::ComputeRenewed(false),
            "a stale token renewed"
        );
        let release = Request::ComputeRelease {
            namespace: "default".into(),
            key: "precious".into(),
            token: 42,
        };
        ensure!(
            raw_call(&conn, release).await? == Response::ComputeReleased(false),
            "a stale token released"
        );
        let entry = client
            .get(&ns, &precious)
            .await?
            .context("precious is gone")?;
        ensure!(
            entry.value == Value::from(b"intact".to_vec()),
            "precious changed: {entry:?}"
        );
        // A lease granted over the wire is held: a second caller is told to wait.
        let first = raw_call(&conn, compute("default", "wire:lease")).await?;
        let Response::ComputeLease { token, lease_ms } = first else {
            bail!("expected a lease, got {first:?}");
        };
        ensure!(lease_ms == 1000, "lease of {lease_ms} ms");
        let second = raw_call(&conn, compute("default", "wire:lease")).await?;
        ensure!(
            matches!(second, Response::ComputePending { .. }),
            "{second:?}"
        );
        let release = Request::ComputeRelease {
            namespace: "default".into(),
            key: "wire:lease".into(),
            token,
        };
        ensure!(
            raw_call(&conn, release).await? == Response::ComputeReleased(true),
            "release"
        );
        conn.close(0u32.into(), b"done");

        // The embedding cache's wrapper: computed on a miss, then cached; bad input refused.
        let embeddings = EmbeddingCache::new(client.clone());
        let tensor = Tensor::from_slice(vec![2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?;
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let embed = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(tensor.clone())
        };
        let first = embeddings
            .get_or_compute_tensor("a cat", "clip", embed)
            .await?;
        let second = embeddings
            .get_or_compute_tensor("a cat", "clip", embed)
            .await?;
        ensure!(first == tensor && second == tensor, "the embedding changed");
        ensure!(
            calls.load(Ordering::SeqCst) == 1,
            "embedded {} times",
            calls.load(Ordering::SeqCst)
        );
        let stats = embeddings.stats();
        ensure!(stats.hits == 1 && stats.misses == 1, "{stats:?}");
        let empty = embeddings.get_or_compute_tensor("", "clip", embed).await;
        ensure!(
            matches!(empty, Err(ComputeError::Typed(CacheError::EmptyText))),
            "{empty:?}"
        );
        client.close().await;
        Ok(())
    })
}

fn a_killed_owner_costs_at_most_one_extra_computation(rt: &tokio::runtime::Runtime) -> Result<()> {
    let cluster = Cluster::new()?;
    let (addrs, mut nodes) = rt.block_on(three_nodes(&cluster))?;
    rt.block_on(async {
        let key = Key::new("video:abc123:transcript:owner-killed")?;
        let ns = Namespace::default_namespace();
        let ring = {
            let probe =
                Client::connect(ClientConfig::new(addrs[0].to_string(), cluster.certs())).await?;
            let ring = probe.refresh_ring().await?;
            probe.close().await;
            ring
        };
        let owner = ring
            .owner_of(ns.as_str(), key.as_str())
            .context("the key has no owner")?;
        let owner_index = usize::try_from(owner.0)? - 1;
        // Through a member that survives; short attempts, so the dead owner is left quickly.
        let seed = addrs[(owner_index + 1) % 3];
        let mut config = ClientConfig::new(seed.to_string(), cluster.certs());
        config.request_timeout = Duration::from_secs(3);
        let client = Client::connect(config).await?;
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (started_tx, started_rx) = tokio::sync::watch::channel(false);
        let options = ComputeOptions {
            lease: Duration::from_secs(2),
            max_wait: Duration::from_secs(60),
            ..ComputeOptions::default()
        };
        let callers: Vec<_> = (0..30)
            .map(|i| {
                let (client, ns, key, options, runs, started_tx) = (
                    client.clone(),
                    ns.clone(),
                    key.clone(),
                    options.clone(),
                    runs.clone(),
                    started_tx.clone(),
                );
                tokio::spawn(async move {
                    client
                        .get_or_compute_with(&ns, &key, None, &options, || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            let _ = started_tx.send(true);
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            Ok::<_, std::io::Error>(Value::from(format!("by-{i}").into_bytes()))
                        })
                        .await
                })
            })
            .collect();
        let mut started = started_rx;
        tokio::time::timeout(Duration::from_secs(30), started.wait_for(|s| *s)).await??;
        // Kill the owner mid-computation: its leases are gone with it.
        nodes.remove(owner_index).kill();
        let mut failed = Vec::new();
        for caller in callers {
            match tokio::time::timeout(Duration::from_secs(90), caller).await?? {
                Ok(_) => {}
                Err(e) => failed.push(e.to_string()),
            }
        }
        ensure!(failed.is_empty(), "callers failed: {failed:?}");
        let ran = runs.load(Ordering::SeqCst);
        ensure!(
            (1..=2).contains(&ran),
            "computed {ran} times after the owner was killed (at most twice expected)"
        );
        println!(
            "  owner {owner} killed mid-computation; {ran} computations; 30 callers got a value"
        );
        let stored = client.get(&ns, &key).await?;
        ensure!(stored.is_some(), "no value stored after the failover");
        client.close().await;
        Ok(())
    })
}
