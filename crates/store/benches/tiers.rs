//! Benchmarks of Strata's local tiers and of the embedding codec.
//!
//! What is measured (criterion groups, figures in `target/criterion/<group>/<bench>/`):
//! - `memory/get_hit_4k`, `memory/set_4k`: [`MemoryTier`] with 10,000 keys of 4 KiB values
//!   pre-populated and cycled through (every `get` is a hit, every `set` replaces an entry).
//! - `fs/get_warm_4k`: [`FsTier`] hit on a 4 KiB value, 10,000 keys, page cache warm (the
//!   entries were just written and read once), index built (`wait_ready`).
//! - `fs/set_4k/never`, `fs/set_4k/always`: [`FsTier`] overwrite of a 4 KiB value with fsync
//!   policy `never` and `always` (the latter pays two file fsyncs and a directory fsync).
//! - `embedding/*`: a 1024-d `f32` tensor. `encode` is `encode_payload` + `to_bytes` (the
//!   `.npy` file image), `decode` is `decode_payload` of those bytes + the zero-copy
//!   `view::<f32>()`, `round_trip` is both; `postcard_round_trip` is the wire path instead
//!   (`postcard::to_allocvec` of the `Value`, `postcard::from_bytes`, `view::<f32>()`).
//! - `tiered/get_hit_4k`: a [`Tiered`] store (memory over filesystem) answering from memory.
//!
//! After criterion, the binary prints a **latency report**: a table of p50/p99/p99.9/max
//! latency and ops/s for memory get, filesystem get (1 and 2 threads), tiered get and the
//! embedding round trip. Latencies come from timing each operation with `Instant` (the
//! timer's own cost, printed above the table, is included in them); ops/s comes from a
//! separate run of the same loop without per-operation timing. With `--test` (as in
//! `cargo bench -- --test`) the report runs briefly just to check that it works; with
//! `--list` it is skipped.
//!
//! Temporary directories are created under `$TMPDIR` (default `/tmp`); point it at the disk
//! you want to measure.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group};
use strata_proto::{EntryKey, Key, Namespace, Tensor, Value, decode_payload, encode_payload};
use strata_store::{
    FsConfig, FsTier, FsyncPolicy, MemoryConfig, MemoryTier, SetPolicy, Tier, Tiered, system_clock,
};
use tempfile::TempDir;

/// Keys pre-populated in each tier and cycled through.
const KEYS: usize = 10_000;
/// Size of the values stored in the tiers.
const VALUE_BYTES: usize = 4096;
/// Dimension of the benchmark embedding.
const EMBEDDING_DIM: usize = 1024;

fn keys(n: usize) -> Vec<EntryKey> {
    let namespace = Namespace::new("bench").expect("valid namespace");
    (0..n)
        .map(|i| {
            EntryKey::new(
                namespace.clone(),
                Key::new(format!("blob:{i:08x}")).expect("valid key"),
            )
        })
        .collect()
}

/// A 4 KiB value whose bytes differ per seed (so checksums and files differ).
fn value(seed: usize) -> Value {
    let bytes: Vec<u8> = (0..VALUE_BYTES)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(7)) as u8)
        .collect();
    Value::Bytes(Bytes::from(bytes))
}

fn embedding() -> Value {
    let values: Vec<f32> = (0..EMBEDDING_DIM).map(|i| (i as f32).sin()).collect();
    Value::Tensor(Tensor::from_slice(vec![EMBEDDING_DIM], &values).expect("valid tensor"))
}

fn memory_tier(keys: &[EntryKey]) -> MemoryTier {
    let tier = MemoryTier::new(MemoryConfig::default(), system_clock());
    for (i, key) in keys.iter().enumerate() {
        tier.set(key, value(i), None).expect("memory set");
    }
    tier
}

/// An empty filesystem tier in a fresh temporary directory, ready (startup scan done).
fn fs_tier(fsync: FsyncPolicy) -> (TempDir, FsTier) {
    let dir = tempfile::Builder::new()
        .prefix("strata-bench-")
        .tempdir()
        .expect("create temporary directory");
    let mut config = FsConfig::new(dir.path());
    config.fsync = fsync;
    config.cleanup_interval_secs = 0;
    let tier = FsTier::open(config, system_clock()).expect("open filesystem tier");
    assert!(
        tier.wait_ready(Duration::from_secs(30)),
        "filesystem tier scan did not finish"
    );
    (dir, tier)
}

/// Writes every key, then reads every key once so that the page cache is warm.
fn populate(tier: &dyn Tier, keys: &[EntryKey]) {
    for (i, key) in keys.iter().enumerate() {
        tier.set(key, value(i), None).expect("populate set");
    }
    for key in keys {
        assert!(
            tier.get(key).expect("warm-up get").is_some(),
            "warm-up miss"
        );
    }
}

/// Decodes a stored `.npy` image and takes the zero-copy view, as a reader would.
fn decode_and_view(format: &strata_proto::Format, stored: Bytes) -> f32 {
    let Value::Tensor(tensor) = decode_payload(format, stored).expect("decode") else {
        panic!("decoded a non-tensor");
    };
    let view = tensor.view::<f32>().expect("aligned f32 view");
    view[[EMBEDDING_DIM - 1]]
}

fn embedding_round_trip(value: &Value, format: &strata_proto::Format) -> f32 {
    let stored = encode_payload(value).to_bytes();
    decode_and_view(format, stored)
}

fn postcard_round_trip(value: &Value) -> f32 {
    let wire = postcard::to_allocvec(value).expect("postcard encode");
    let Value::Tensor(tensor) = postcard::from_bytes::<Value>(&wire).expect("postcard decode")
    else {
        panic!("decoded a non-tensor");
    };
    let view = tensor.view::<f32>().expect("aligned f32 view");
    view[[EMBEDDING_DIM - 1]]
}

fn bench_memory(c: &mut Criterion) {
    let keys = keys(KEYS);
    let tier = memory_tier(&keys);
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("get_hit_4k", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(tier.get(black_box(&keys[i])).expect("get"))
        })
    });
    let values: Vec<Value> = (0..KEYS).map(value).collect();
    group.bench_function("set_4k", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            tier.set(black_box(&keys[i]), values[i].clone(), None)
                .expect("set")
        })
    });
    group.finish();
}

fn bench_fs(c: &mut Criterion) {
    let keys = keys(KEYS);
    let values: Vec<Value> = (0..KEYS).map(value).collect();
    let mut group = c.benchmark_group("fs");
    group.throughput(Throughput::Elements(1));

    let (_dir, tier) = fs_tier(FsyncPolicy::Never);
    populate(&tier, &keys);
    let mut i = 0;
    group.bench_function("get_warm_4k", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(tier.get(black_box(&keys[i])).expect("get"))
        })
    });
    group.bench_function("set_4k/never", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            tier.set(black_box(&keys[i]), values[i].clone(), None)
                .expect("set")
        })
    });
    drop(tier);

    // Each write waits for the disk: few, long iterations.
    let (_dir_always, always) = fs_tier(FsyncPolicy::Always);
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    let mut j = 0;
    group.bench_function("set_4k/always", |b| {
        b.iter(|| {
            j = (j + 1) % KEYS;
            always
                .set(black_box(&keys[j]), values[j].clone(), None)
                .expect("set")
        })
    });
    group.finish();
}

fn bench_embedding(c: &mut Criterion) {
    let value = embedding();
    let format = value.format();
    let stored = encode_payload(&value).to_bytes();
    let mut group = c.benchmark_group("embedding");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_1024xf32", |b| {
        b.iter(|| encode_payload(black_box(&value)).to_bytes())
    });
    group.bench_function("decode_1024xf32", |b| {
        b.iter(|| decode_and_view(&format, black_box(stored.clone())))
    });
    group.bench_function("round_trip_1024xf32", |b| {
        b.iter(|| embedding_round_trip(black_box(&value), &format))
    });
    group.bench_function("postcard_round_trip_1024xf32", |b| {
        b.iter(|| postcard_round_trip(black_box(&value)))
    });
    group.finish();
}

fn tiered_store(keys: &[EntryKey]) -> (TempDir, Tiered) {
    let (dir, disk) = fs_tier(FsyncPolicy::Never);
    let memory = MemoryTier::new(MemoryConfig::default(), system_clock());
    let store = Tiered::new(
        vec![Arc::new(memory), Arc::new(disk)],
        SetPolicy::All,
        system_clock(),
    )
    .expect("tiered store");
    for (i, key) in keys.iter().enumerate() {
        store.set_value(key, value(i), None).expect("tiered set");
    }
    (dir, store)
}

fn bench_tiered(c: &mut Criterion) {
    let keys = keys(KEYS);
    let (_dir, store) = tiered_store(&keys);
    let mut group = c.benchmark_group("tiered");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("get_hit_4k", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(store.get(black_box(&keys[i])).expect("get"))
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_memory, bench_fs, bench_embedding, bench_tiered
}

// ---------------------------------------------------------------------------------------
// Latency report: per-operation latency percentiles and throughput, outside criterion.
// ---------------------------------------------------------------------------------------

/// One row of the latency report.
struct Row {
    name: &'static str,
    threads: usize,
    /// Per-operation latencies in nanoseconds, sorted.
    latencies: Vec<u64>,
    /// Operations per second without per-operation timing.
    ops_per_sec: f64,
}

/// Runs `op(thread, i)` on `threads` threads for about `duration`. With `timed`, returns the
/// latency of every operation; always returns the operation count and the wall time.
fn drive<F>(threads: usize, duration: Duration, timed: bool, op: &F) -> (u64, Duration, Vec<u64>)
where
    F: Fn(usize, usize) + Sync,
{
    let barrier = Barrier::new(threads + 1);
    let (results, wall) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut latencies = Vec::new();
                    let mut ops = 0usize;
                    barrier.wait();
                    let start = Instant::now();
                    loop {
                        for _ in 0..64 {
                            if timed {
                                let before = Instant::now();
                                op(t, ops);
                                latencies.push(before.elapsed().as_nanos() as u64);
                            } else {
                                op(t, ops);
                            }
                            ops += 1;
                        }
                        if start.elapsed() >= duration {
                            break;
                        }
                    }
                    (ops as u64, latencies)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread panicked"))
            .collect();
        (results, start.elapsed())
    });
    let ops = results.iter().map(|(n, _)| n).sum();
    let latencies = results.into_iter().flat_map(|(_, l)| l).collect();
    (ops, wall, latencies)
}

fn measure<F>(name: &'static str, threads: usize, duration: Duration, op: F) -> Row
where
    F: Fn(usize, usize) + Sync,
{
    // Warm up (caches, branch predictors, CPU frequency), then an untimed run for
    // throughput and a timed run for latencies.
    drive(threads, duration / 4, false, &op);
    let (ops, wall, _) = drive(threads, duration, false, &op);
    let (_, _, mut latencies) = drive(threads, duration, true, &op);
    latencies.sort_unstable();
    Row {
        name,
        threads,
        latencies,
        ops_per_sec: ops as f64 / wall.as_secs_f64(),
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn format_ns(ns: u64) -> String {
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

/// The cost of one `Instant::now()` pair, which every latency below includes.
fn timer_overhead() -> u64 {
    let mut samples: Vec<u64> = (0..100_000)
        .map(|_| {
            let before = Instant::now();
            before.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    percentile(&samples, 50.0)
}

fn latency_report() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let quick = args.iter().any(|a| a == "--test");
    let duration = if quick {
        Duration::from_millis(20)
    } else {
        Duration::from_secs(2)
    };
    let keys = keys(KEYS);
    let mut rows = Vec::new();

    let memory = memory_tier(&keys);
    rows.push(measure("memory get hit, 4 KiB", 1, duration, |_, i| {
        black_box(memory.get(&keys[i % KEYS]).expect("get").expect("hit"));
    }));
    drop(memory);

    let (_dir, fs) = fs_tier(FsyncPolicy::Never);
    populate(&fs, &keys);
    for threads in [1, 2] {
        rows.push(measure("fs get warm, 4 KiB", threads, duration, |t, i| {
            // Threads walk the keys from opposite ends of the ring.
            let k = (i + t * KEYS / 2) % KEYS;
            black_box(fs.get(&keys[k]).expect("get").expect("hit"));
        }));
    }
    drop(fs);

    let (_tiered_dir, store) = tiered_store(&keys);
    rows.push(measure(
        "tiered get hit (memory), 4 KiB",
        1,
        duration,
        |_, i| {
            black_box(store.get(&keys[i % KEYS]).expect("get").expect("hit"));
        },
    ));
    drop(store);

    let value = embedding();
    let format = value.format();
    rows.push(measure(
        "embedding encode+decode, 1024 f32",
        1,
        duration,
        |_, _| {
            black_box(embedding_round_trip(black_box(&value), &format));
        },
    ));
    rows.push(measure(
        "embedding postcard round trip",
        1,
        duration,
        |_, _| {
            black_box(postcard_round_trip(black_box(&value)));
        },
    ));

    println!();
    println!("== Strata latency report (custom loop, not criterion) ==");
    println!(
        "per-op latency via Instant; timer overhead ~{} ns per op is included in every latency",
        timer_overhead()
    );
    println!(
        "ops/s from an untimed run of {} s per row{}",
        duration.as_secs_f64(),
        if quick {
            " (--test: quick mode, not meaningful)"
        } else {
            ""
        }
    );
    println!();
    println!(
        "| {:<36} | {:>7} | {:>10} | {:>12} | {:>10} | {:>10} | {:>10} | {:>10} |",
        "benchmark", "threads", "samples", "ops/s", "p50", "p99", "p99.9", "max"
    );
    println!(
        "|{:-<38}|{:->9}|{:->12}|{:->14}|{:->12}|{:->12}|{:->12}|{:->12}|",
        "", "", "", "", "", "", "", ""
    );
    for row in &rows {
        let l = &row.latencies;
        println!(
            "| {:<36} | {:>7} | {:>10} | {:>12.0} | {:>10} | {:>10} | {:>10} | {:>10} |",
            row.name,
            row.threads,
            l.len(),
            row.ops_per_sec,
            format_ns(percentile(l, 50.0)),
            format_ns(percentile(l, 99.0)),
            format_ns(percentile(l, 99.9)),
            format_ns(l.last().copied().unwrap_or(0)),
        );
    }
    println!();
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    latency_report();
}
