//! `strata bench`: a load generator for a running cluster.
//!
//! One shared [`Client`] (one QUIC connection, many streams) is driven by `--concurrency`
//! tasks, each with one request in flight at a time. First the key space (`--keys` keys,
//! `bench:00000000`, ...) is filled with `--size`-byte values through `set_many`, so that GETs
//! hit. Then every task loops: pick GET or SET by `--ratio`, pick a key uniformly, time the
//! call, record the latency in microseconds in an HDR histogram (one per task and kind,
//! merged at the end, so recording never contends). The run stops after `--duration` seconds
//! or `--count` operations in total (10 s if neither is given). A progress bar shows
//! operations and throughput while it runs (on stderr, when it is a terminal).
//!
//! The summary gives throughput in total and per kind, latency percentiles (p50, p90, p99,
//! p99.9, max) and error counts; `--json` prints it as one JSON object.
//!
//! Caveats: latencies are measured from the client's side of one process (client CPU
//! included), with a closed loop (a slow answer delays that task's next request, so the
//! numbers understate what an open-loop load at the same rate would see). Values are random
//! bytes, so nothing compresses.

use std::fmt;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use strata_client::Client;
use strata_proto::{Key, Namespace, Value};

use crate::cluster::{Target, block_on};

/// How long a run lasts when neither `--duration` nor `--count` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Values are slices of one random buffer at this many different offsets, so that stored
/// values differ without generating random bytes per request.
const VALUE_OFFSETS: usize = 251;

/// Keys written per `set_many` call while pre-populating (each call is itself split into
/// batch requests by the client).
const POPULATE_CHUNK: usize = 5_000;

/// Highest latency the histograms track: one hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// How often the progress bar is refreshed.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// `strata bench`.
#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    target: Target,
    /// Requests in flight at once (one task each).
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Size of each value in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Mix of operations, as GET:SET.
    #[arg(long, default_value = "1:1", value_name = "GET:SET")]
    ratio: Ratio,
    /// Number of distinct keys (written before the run).
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Run for this many seconds [default: 10 unless --count is given].
    #[arg(long, value_name = "SECS", conflicts_with = "count")]
    duration: Option<f64>,
    /// Stop after this many operations in total.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// The mix of GETs and SETs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ratio {
    get: u32,
    set: u32,
}

impl FromStr for Ratio {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected GET:SET with whole numbers, like 1:1 or 9:1, not {s:?}");
        let (get, set) = s.split_once(':').ok_or_else(bad)?;
        let get = get.trim().parse().map_err(|_| bad())?;
        let set = set.trim().parse().map_err(|_| bad())?;
        if get == 0 && set == 0 {
            return Err("at least one of GET and SET must be above zero".into());
        }
        Ok(Self { get, set })
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.get, self.set)
    }
}

impl Ratio {
    /// The operation for a uniform draw `r` in `0..get + set`.
    fn pick(self, r: u64) -> Op {
        if r < u64::from(self.get) {
            Op::Get
        } else {
            Op::Set
        }
    }

    fn total(self) -> u64 {
        u64::from(self.get) + u64::from(self.set)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Get,
    Set,
}

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Limit {
    Duration(Duration),
    Count(u64),
}

impl Limit {
    fn from_args(duration: Option<f64>, count: Option<u64>) -> Result<Self> {
        match (duration, count) {
            (Some(secs), None) => {
                let d = Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .with_context(|| {
                        format!("--duration must be a positive number of seconds, not {secs}")
                    })?;
                Ok(Limit::Duration(d))
            }
            (None, Some(0)) => anyhow::bail!("--count must be at least 1"),
            (None, Some(n)) => Ok(Limit::Count(n)),
            (None, None) => Ok(Limit::Duration(DEFAULT_DURATION)),
            (Some(_), Some(_)) => anyhow::bail!("give --duration or --count, not both"),
        }
    }
}

/// Hands out permission for each operation until the limit is reached.
struct Budget {
    limit: Limit,
    started: Instant,
    issued: AtomicU64,
}

impl Budget {
    fn take(&self) -> bool {
        match self.limit {
            Limit::Count(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            Limit::Duration(d) => self.started.elapsed() < d,
        }
    }
}

/// What one task (or, merged, the whole run) measured.
struct Recorded {
    get: Histogram<u64>,
    set: Histogram<u64>,
    get_misses: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Recorded {
    fn new() -> Result<Self> {
        let histogram = || {
            Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
                .context("creating a latency histogram")
        };
        Ok(Self {
            get: histogram()?,
            set: histogram()?,
            get_misses: 0,
            errors: 0,
            first_error: None,
        })
    }

    fn merge(&mut self, other: Recorded) -> Result<()> {
        self.get.add(&other.get).context("merging histograms")?;
        self.set.add(&other.set).context("merging histograms")?;
        self.get_misses += other.get_misses;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize, PartialEq)]
struct Latency {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
    mean: f64,
}

/// Throughput and latency of one kind of operation (or all).
#[derive(Debug, Serialize, PartialEq)]
struct OpSummary {
    ops: u64,
    ops_per_sec: f64,
    latency_us: Latency,
}

impl OpSummary {
    fn of(h: &Histogram<u64>, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        Self {
            ops: h.len(),
            ops_per_sec: if secs > 0.0 {
                h.len() as f64 / secs
            } else {
                0.0
            },
            latency_us: Latency {
                p50: h.value_at_quantile(0.50),
                p90: h.value_at_quantile(0.90),
                p99: h.value_at_quantile(0.99),
                p999: h.value_at_quantile(0.999),
                max: h.max(),
                mean: h.mean(),
            },
        }
    }
}

/// The result of a run, as printed by `--json`.
#[derive(Debug, Serialize)]
struct Summary {
    addr: String,
    namespace: String,
    concurrency: usize,
    size_bytes: usize,
    ratio: String,
    keys: usize,
    elapsed_secs: f64,
    /// Successful operations.
    ops: u64,
    ops_per_sec: f64,
    errors: u64,
    first_error: Option<String>,
    get_misses: u64,
    get: OpSummary,
    set: OpSummary,
    all: OpSummary,
}

fn summarize(args: &BenchArgs, recorded: &Recorded, elapsed: Duration) -> Result<Summary> {
    let mut all = recorded.get.clone();
    all.add(&recorded.set).context("merging histograms")?;
    let all = OpSummary::of(&all, elapsed);
    Ok(Summary {
        addr: args.target.addr.clone(),
        namespace: args.target.namespace.clone(),
        concurrency: args.concurrency,
        size_bytes: args.size,
        ratio: args.ratio.to_string(),
        keys: args.keys,
        elapsed_secs: elapsed.as_secs_f64(),
        ops: all.ops,
        ops_per_sec: all.ops_per_sec,
        errors: recorded.errors,
        first_error: recorded.first_error.clone(),
        get_misses: recorded.get_misses,
        get: OpSummary::of(&recorded.get, elapsed),
        set: OpSummary::of(&recorded.set, elapsed),
        all,
    })
}

fn print_human(s: &Summary) {
    println!(
        "strata bench: {:.1} s, {} tasks, {}-byte values, GET:SET {}, {} keys, {}",
        s.elapsed_secs, s.concurrency, s.size_bytes, s.ratio, s.keys, s.addr
    );
    println!(
        "{:<4} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "ops", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let ms = |us: u64| us as f64 / 1000.0;
    for (name, op) in [("get", &s.get), ("set", &s.set), ("all", &s.all)] {
        let l = &op.latency_us;
        println!(
            "{name:<4} {:>10} {:>11.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            op.ops,
            op.ops_per_sec,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        );
    }
    println!("errors {}  get misses {}", s.errors, s.get_misses);
    if let Some(e) = &s.first_error {
        eprintln!("first error: {e}");
    }
}

/// The values to write: `size`-byte slices of one random buffer.
#[derive(Clone)]
struct Values {
    pool: Bytes,
    size: usize,
}

impl Values {
    fn new(size: usize) -> Self {
        let mut pool = vec![0u8; size + VALUE_OFFSETS];
        rand::rng().fill(&mut pool[..]);
        Self {
            pool: Bytes::from(pool),
            size,
        }
    }

    fn nth(&self, n: usize) -> Value {
        let offset = n % VALUE_OFFSETS;
        Value::from(self.pool.slice(offset..offset + self.size))
    }
}

fn bench_key(i: usize) -> Result<Key> {
    Ok(Key::new(format!("bench:{i:08}"))?)
}

fn progress_bar(len: u64, template: &str, hidden: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    if hidden {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// Runs `strata bench`.
pub(crate) fn run(args: BenchArgs) -> Result<ExitCode> {
    let ns = args.target.namespace()?;
    let limit = Limit::from_args(args.duration, args.count)?;
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(args.keys >= 1, "--keys must be at least 1");
    let keys: Arc<Vec<Key>> = Arc::new((0..args.keys).map(bench_key).collect::<Result<_>>()?);
    let summary = block_on(async {
        let client = args.target.connect().await?;
        let values = Values::new(args.size);
        populate(&client, &ns, &keys, &values, args.target.json).await?;
        settle(&client, args.target.json).await?;
        let (recorded, elapsed) = measure(&args, &client, &ns, &keys, &values, limit).await?;
        client.close().await;
        summarize(&args, &recorded, elapsed)
    })??;
    if summary.ops == 0 && summary.errors > 0 {
        anyhow::bail!(
            "every operation failed ({} errors); first: {}",
            summary.errors,
            summary.first_error.as_deref().unwrap_or("?")
        );
    }
    if args.target.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_human(&summary);
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes every key once, so that GETs during the run hit.
async fn populate(
    client: &Client,
    ns: &Namespace,
    keys: &[Key],
    values: &Values,
    quiet: bool,
) -> Result<()> {
    let bar = progress_bar(
        keys.len() as u64,
        "populating {bar:40} {pos}/{len} keys",
        quiet,
    );
    for (chunk_no, chunk) in keys.chunks(POPULATE_CHUNK).enumerate() {
        let items = chunk
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), values.nth(chunk_no * POPULATE_CHUNK + i)))
            .collect();
        let outcomes = client.set_many(ns, items, None).await;
        let failed = outcomes.iter().filter(|o| o.is_err()).count();
        if let Some(Err(e)) = outcomes.into_iter().find(Result::is_err) {
            bar.finish_and_clear();
            anyhow::bail!("pre-populating the key space: {failed} writes failed; first: {e}");
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Waits (up to five minutes) until the node has flushed the writes it acknowledged from
/// memory (write-back), so the timed run does not pay for the pre-population's disk writes.
async fn settle(client: &Client, quiet: bool) -> Result<()> {
    let pending =
        |stats: &serde_json::Value| stats["write_back"]["pending_keys"].as_u64().unwrap_or(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let first = pending(&client.stats().await?);
    if first == 0 {
        return Ok(());
    }
    let bar = progress_bar(
        first,
        "flushing {bar:40} {pos}/{len} writes reach the disk",
        quiet,
    );
    loop {
        let left = pending(&client.stats().await?);
        bar.set_position(first.saturating_sub(left));
        if left == 0 {
            bar.finish_and_clear();
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the node still has {left} writes to flush after 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the load and returns what was recorded and how long it took.
async fn measure(
    args: &BenchArgs,
    client: &Client,
    ns: &Namespace,
    keys: &Arc<Vec<Key>>,
    values: &Values,
    limit: Limit,
) -> Result<(Recorded, Duration)> {
    let done = Arc::new(AtomicU64::new(0));
    let (bar_len, template) = match limit {
        Limit::Count(n) => (n, "{bar:40} {pos}/{len} ops  {msg}"),
        Limit::Duration(d) => (
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            "{bar:40} {elapsed}  {msg}",
        ),
    };
    let bar = progress_bar(bar_len, template, args.target.json);
    let started = Instant::now();
    let budget = Arc::new(Budget {
        limit,
        started,
        issued: AtomicU64::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        tasks.spawn(worker(
            client.clone(),
            ns.clone(),
            keys.clone(),
            values.clone(),
            args.ratio,
            budget.clone(),
            done.clone(),
        ));
    }
    let mut recorded = Recorded::new()?;
    let mut ticker = tokio::time::interval(PROGRESS_TICK);
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(result) => recorded.merge(result.context("a benchmark task panicked")??)?,
                None => break,
            },
            _ = ticker.tick() => {
                let ops = done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                bar.set_position(match limit {
                    Limit::Count(_) => ops,
                    Limit::Duration(_) => u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
                if secs > 0.0 {
                    bar.set_message(format!("{ops} ops  {:.0} ops/s", ops as f64 / secs));
                }
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok((recorded, elapsed))
}

/// One task of the load: one request at a time until the budget runs out.
async fn worker(
    client: Client,
    ns: Namespace,
    keys: Arc<Vec<Key>>,
    values: Values,
    ratio: Ratio,
    budget: Arc<Budget>,
    done: Arc<AtomicU64>,
) -> Result<Recorded> {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut recorded = Recorded::new()?;
    while budget.take() {
        let op = ratio.pick(rng.random_range(0..ratio.total()));
        let key = &keys[rng.random_range(0..keys.len())];
        let start = Instant::now();
        let outcome = match op {
            Op::Get => client.get(&ns, key).await.map(|e| e.is_some()),
            Op::Set => client
                .set(
                    &ns,
                    key,
                    values.nth(rng.random_range(0..VALUE_OFFSETS)),
                    None,
                )
                .await
                .map(|()| true),
        };
        let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        match outcome {
            Ok(hit) => {
                let histogram = match op {
                    Op::Get => &mut recorded.get,
                    Op::Set => &mut recorded.set,
                };
                histogram.saturating_record(micros.max(1));
                if op == Op::Get && !hit {
                    recorded.get_misses += 1;
                }
            }
            Err(e) => {
                recorded.errors += 1;
                recorded.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(recorded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_parse_and_pick() {
        let r: Ratio = "3:1".parse().unwrap();
        assert_eq!(r, Ratio { get: 3, set: 1 });
        assert_eq!(r.to_string(), "3:1");
        assert_eq!(r.total(), 4);
        assert_eq!(
            (0..4).map(|i| r.pick(i)).filter(|o| *o == Op::Get).count(),
            3
        );
        let sets_only: Ratio = "0:1".parse().unwrap();
        assert_eq!(sets_only.pick(0), Op::Set);
        for bad in ["", "1", "1:", "a:b", "-1:1", "0:0", "1:1:1"] {
            assert!(bad.parse::<Ratio>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_come_from_duration_or_count() {
        assert_eq!(
            Limit::from_args(None, None).unwrap(),
            Limit::Duration(DEFAULT_DURATION)
        );
        assert_eq!(
            Limit::from_args(Some(0.5), None).unwrap(),
            Limit::Duration(Duration::from_millis(500))
        );
        assert_eq!(Limit::from_args(None, Some(7)).unwrap(), Limit::Count(7));
        assert!(Limit::from_args(Some(0.0), None).is_err());
        assert!(Limit::from_args(Some(-1.0), None).is_err());
        assert!(Limit::from_args(None, Some(0)).is_err());
    }

    #[test]
    fn a_count_budget_hands_out_exactly_count_operations() {
        let budget = Budget {
            limit: Limit::Count(3),
            started: Instant::now(),
            issued: AtomicU64::new(0),
        };
        assert_eq!((0..10).filter(|_| budget.take()).count(), 3);
    }

    #[test]
    fn summaries_merge_tasks_and_compute_rates_and_percentiles() {
        let mut a = Recorded::new().unwrap();
        for us in 1..=100 {
            a.get.record(us).unwrap();
        }
        let mut b = Recorded::new().unwrap();
        b.set.record(1000).unwrap();
        b.errors = 2;
        b.first_error = Some("boom".into());
        a.merge(b).unwrap();
        let s = OpSummary::of(&a.get, Duration::from_secs(2));
        assert_eq!(s.ops, 100);
        assert_eq!(s.ops_per_sec, 50.0);
        assert_eq!(s.latency_us.p50, 50);
        assert_eq!(s.latency_us.p99, 99);
        assert_eq!(s.latency_us.max, 100);
        assert_eq!(a.errors, 2);
        assert_eq!(a.first_error.as_deref(), Some("boom"));
        let mut all = a.get.clone();
        all.add(&a.set).unwrap();
        assert_eq!(
            OpSummary::of(&all, Duration::from_secs(1)).latency_us.max,
            1000
        );
    }

    #[test]
    fn values_have_the_requested_size_and_vary() {
        let v = Values::new(100);
        let (a, b) = (v.nth(0), v.nth(1));
        assert_eq!(a.payload_len(), 100);
        assert_ne!(a, b);
        assert_eq!(Values::new(0).nth(5).payload_len(), 0);
    }
}
