//! `strata top`: a live view of the cluster, one row per node, refreshed every second.
//!
//! # Mechanism
//! Each refresh fetches the ring (members and their admin addresses) through the client, then
//! scrapes every member's `/metrics` over plain HTTP, and compares each scrape with the
//! previous one of the same node:
//!
//! - **ops/s**: requests from clients (`strata_operations_total`, cluster chatter such as
//!   Raft, leases, replication and hand-off left out) per second;
//! - **hit rate**: GET hits over GET hits and misses, in the interval;
//! - **p99**: the 99th percentile of those requests' latency in the interval, as the upper
//!   bound of the histogram bucket it falls in (`≤ 2.5ms`), as Prometheus'
//!   `histogram_quantile` would place it;
//! - **bytes**, **entries**: what the tiers hold now (bytes summed over tiers; entries of the
//!   largest tier, since a write-through entry is in every tier).
//!
//! On a terminal the screen is redrawn in place; `q` or Ctrl-C quits and restores the
//! terminal. Otherwise (or with `--json`, one JSON object per refresh) each refresh is
//! printed after the previous one. `--iterations N` stops after N refreshes.
//!
//! # Caveats
//! The first refresh has no previous scrape, so it waits one interval before showing rates.
//! A member whose admin endpoint cannot be reached shows its error instead of numbers.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use strata_client::Client;
use strata_proto::ring::Member;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::cluster::{Target, block_on};

/// Request kinds that are cluster chatter, not client load.
const INTERNAL_OPS: [&str; 12] = [
    "raft",
    "lease",
    "propose",
    "replicate",
    "replicate_delete",
    "scan_partitions",
    "fetch_partition_entries",
    "join",
    "leave",
    "ring",
    "ping",
    "stats",
];
/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// `strata top`.
#[derive(Args)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    target: Target,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    interval: f64,
    /// Stop after this many refreshes (default: until q or Ctrl-C).
    #[arg(long, value_name = "N")]
    iterations: Option<u64>,
}

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A node's scrape.
#[derive(Clone, Debug, Default)]
struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the Prometheus text format (the subset the node's exporter writes: one sample
    /// per line, no timestamps, label values without escaped quotes).
    fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.strip_suffix('}')?),
                    None => (series, ""),
                };
                let labels = labels
                    .split("\",")
                    .filter(|l| !l.is_empty())
                    .filter_map(|l| {
                        let (k, v) = l.split_once('=')?;
                        Some((k.to_owned(), v.trim_matches('"').to_owned()))
                    })
                    .collect();
                Some(Sample {
                    name: name.to_owned(),
                    labels,
                    value: value.parse().ok()?,
                })
            })
            .collect();
        Self { samples }
    }

    fn label<'a>(s: &'a Sample, key: &str) -> &'a str {
        s.labels.get(key).map_or("", String::as_str)
    }

    /// Sum of `name` over the samples `keep` accepts.
    fn sum(&self, name: &str, keep: impl Fn(&Sample) -> bool) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && keep(s))
            .map(|s| s.value)
            .sum()
    }

    fn client_ops(&self) -> f64 {
        self.sum("strata_operations_total", |s| {
            !INTERNAL_OPS.contains(&Self::label(s, "op"))
        })
    }

    fn get_outcomes(&self, outcome: &str) -> f64 {
        self.sum("strata_operations_total", |s| {
            matches!(Self::label(s, "op"), "get" | "get_many")
                && Self::label(s, "outcome") == outcome
        })
    }

    /// Cumulative latency buckets of client requests: upper bound → count.
    fn latency_buckets(&self) -> BTreeMap<Bound, f64> {
        let mut buckets = BTreeMap::new();
        for s in &self.samples {
            if s.name != "rpc_server_call_duration_seconds_bucket"
                || INTERNAL_OPS.contains(&Self::label(s, "rpc_method"))
            {
                continue;
            }
            let le = match Self::label(s, "le") {
                "+Inf" => f64::INFINITY,
                le => match le.parse() {
                    Ok(le) => le,
                    Err(_) => continue,
                },
            };
            *buckets.entry(Bound(le)).or_insert(0.0) += s.value;
        }
        buckets
    }
}

/// A histogram bucket's upper bound, ordered.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Bound(f64);

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One node's row.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
struct Row {
    id: u64,
    admin: String,
    ops_per_sec: Option<f64>,
    hit_rate: Option<f64>,
    /// Upper bound of the p99 latency, seconds.
    p99_seconds: Option<f64>,
    bytes: u64,
    entries: u64,
    connections: u64,
    ready: bool,
    error: Option<String>,
    /// Interval deltas of the latency buckets, kept to merge the cluster's p99.
    #[serde(skip)]
    buckets: BTreeMap<Bound, f64>,
    #[serde(skip)]
    hits: f64,
    #[serde(skip)]
    misses: f64,
}

/// The `q`-quantile's bucket upper bound from cumulative bucket counts.
fn quantile(buckets: &BTreeMap<Bound, f64>, q: f64) -> Option<f64> {
    let total = buckets.get(&Bound(f64::INFINITY)).copied()?;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, count)| **count >= q * total)
        .map(|(le, _)| le.0)
}

/// A row from the current scrape and the previous one `secs` earlier.
fn row(member: &Member, now: &Scrape, before: Option<&Scrape>, secs: f64) -> Row {
    let by_tier = |name: &str| {
        now.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value as u64)
            .collect::<Vec<_>>()
    };
    let mut row = Row {
        id: member.id.0,
        admin: member.admin.clone(),
        bytes: by_tier("strata_tier_size_bytes").iter().sum(),
        entries: by_tier("strata_tier_entries")
            .into_iter()
            .max()
            .unwrap_or(0),
        connections: now.sum("strata_connections", |_| true) as u64,
        ready: now.sum("strata_node_ready", |_| true) >= 1.0,
        ..Row::default()
    };
    if let Some(before) = before
        && secs > 0.0
    {
        let ops = (now.client_ops() - before.client_ops()).max(0.0);
        row.ops_per_sec = Some(ops / secs);
        row.hits = (now.get_outcomes("hit") - before.get_outcomes("hit")).max(0.0);
        row.misses = (now.get_outcomes("miss") - before.get_outcomes("miss")).max(0.0);
        let lookups = row.hits + row.misses;
        row.hit_rate = (lookups > 0.0).then(|| row.hits / lookups);
        let earlier = before.latency_buckets();
        row.buckets = now
            .latency_buckets()
            .into_iter()
            .map(|(le, n)| (le, (n - earlier.get(&le).copied().unwrap_or(0.0)).max(0.0)))
            .collect();
        row.p99_seconds = quantile(&row.buckets, 0.99);
    }
    row
}

/// The cluster's row: rates and sizes summed, hit rate and p99 over every node's requests.
fn total(rows: &[Row]) -> Row {
    let mut sum = Row::default();
    for r in rows.iter().filter(|r| r.error.is_none()) {
        sum.bytes += r.bytes;
        sum.entries += r.entries;
        sum.connections += r.connections;
        if let Some(ops) = r.ops_per_sec {
            *sum.ops_per_sec.get_or_insert(0.0) += ops;
        }
        sum.hits += r.hits;
        sum.misses += r.misses;
        for (le, n) in &r.buckets {
            *sum.buckets.entry(*le).or_insert(0.0) += n;
        }
    }
    let lookups = sum.hits + sum.misses;
    sum.hit_rate = (lookups > 0.0).then(|| sum.hits / lookups);
    sum.p99_seconds = quantile(&sum.buckets, 0.99);
    sum.ready = rows.iter().all(|r| r.ready);
    sum
}

fn latency(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s.is_infinite() => "> 10s".into(),
        Some(s) if s < 0.001 => format!("≤ {:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("≤ {}ms", trim(s * 1e3)),
        Some(s) => format!("≤ {}s", trim(s)),
    }
}

fn trim(x: f64) -> String {
    let text = format!("{x:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The table of one refresh.
fn render(epoch: u64, leader: Option<u64>, rows: &[Row]) -> String {
    let mut out = format!(
        "strata top — epoch {epoch}, {} nodes, leader {}\n\n",
        rows.len(),
        leader.map_or_else(|| "-".into(), |l| l.to_string())
    );
    out.push_str(&format!(
        "{:<6} {:<22} {:>10} {:>9} {:>10} {:>14} {:>10} {:>6} {:>6}\n",
        "NODE", "ADMIN", "OPS/S", "HIT RATE", "P99", "BYTES", "ENTRIES", "CONNS", "READY"
    ));
    let line = |name: String, admin: &str, r: &Row| {
        format!(
            "{:<6} {:<22} {:>10} {:>9} {:>10} {:>14} {:>10} {:>6} {:>6}\n",
            name,
            admin,
            r.ops_per_sec
                .map_or_else(|| "-".into(), |o| format!("{o:.1}")),
            r.hit_rate
                .map_or_else(|| "-".into(), |h| format!("{:.1}%", h * 100.0)),
            latency(r.p99_seconds),
            r.bytes,
            r.entries,
            r.connections,
            if r.ready { "yes" } else { "no" },
        )
    };
    for r in rows {
        match &r.error {
            Some(e) => out.push_str(&format!("{:<6} {:<22} {e}\n", r.id, r.admin)),
            None => out.push_str(&line(r.id.to_string(), &r.admin, r)),
        }
    }
    out.push_str(&line("total".into(), "", &total(rows)));
    out
}

/// `GET /metrics` of one admin endpoint.
async fn scrape(admin: &str) -> Result<Scrape> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .context("no answer in time")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("{}", head.lines().next().unwrap_or("bad answer"));
    }
    Ok(Scrape::parse(body))
}

/// `members` with their admin addresses. A node outside a cluster is known to the client
/// by its QUIC address only; its statistics (`node.admin`) say where its admin endpoint is.
async fn with_admin_addrs(client: &Client, members: &[Member]) -> Vec<Member> {
    let mut members = members.to_vec();
    if members.iter().all(|m| !m.admin.is_empty()) {
        return members;
    }
    if let Ok(stats) = client.cluster_stats().await {
        for node in stats.nodes {
            let admin = node.stats.ok().and_then(|s| {
                s.pointer("/node/admin")
                    .and_then(|a| a.as_str())
                    .map(str::to_owned)
            });
            if let (Some(admin), Some(m)) = (admin, members.iter_mut().find(|m| m.id == node.id))
                && m.admin.is_empty()
            {
                m.admin = admin;
            }
        }
    }
    members
}

/// Restores the terminal's line mode when dropped.
struct KeyReader {
    saved: Option<rustix::termios::Termios>,
}

impl KeyReader {
    /// Reads keys without waiting for Enter and sends `()` when `q` is pressed; nothing when
    /// stdin is not a terminal.
    fn start(quit: tokio::sync::mpsc::UnboundedSender<()>) -> Self {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Self { saved: None };
        }
        let Ok(saved) = tcgetattr(&stdin) else {
            return Self { saved: None };
        };
        let mut raw = saved.clone();
        raw.local_modes &= !(LocalModes::ICANON | LocalModes::ECHO);
        if tcsetattr(&stdin, OptionalActions::Now, &raw).is_err() {
            return Self { saved: None };
        }
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut byte = [0u8; 1];
            while let Ok(1) = std::io::stdin().read(&mut byte) {
                if byte[0] == b'q' || byte[0] == b'Q' {
                    let _ = quit.send(());
                    return;
                }
            }
        });
        Self { saved: Some(saved) }
    }
}

impl Drop for KeyReader {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

/// Runs `strata top`.
pub(crate) fn run(args: TopArgs) -> Result<ExitCode> {
    if !(args.interval.is_finite() && args.interval > 0.0) {
        anyhow::bail!("--interval must be a positive number of seconds");
    }
    let interval = Duration::from_secs_f64(args.interval);
    block_on(async move {
        let client = args.target.connect().await?;
        let result = watch(&client, &args, interval).await;
        client.close().await;
        result
    })??;
    Ok(ExitCode::SUCCESS)
}

async fn watch(client: &Client, args: &TopArgs, interval: Duration) -> Result<()> {
    let redraw = std::io::stdout().is_terminal() && !args.target.json;
    let (quit_tx, mut quit) = tokio::sync::mpsc::unbounded_channel();
    // The sender stays alive here, so without a key reader `quit` just never fires.
    let _keys = redraw.then(|| KeyReader::start(quit_tx.clone()));
    let mut previous: BTreeMap<u64, (Scrape, Instant)> = BTreeMap::new();
    let mut shown = 0u64;
    let mut first = true;
    loop {
        let ring = client.refresh_ring().await?;
        let members = with_admin_addrs(client, &ring.members).await;
        let scrapes = futures::future::join_all(
            members
                .iter()
                .map(|m| async move { (m.clone(), scrape(&m.admin).await, Instant::now()) }),
        )
        .await;
        let mut rows = Vec::new();
        for (member, scraped, at) in scrapes {
            match scraped {
                Ok(now) => {
                    let before = previous.get(&member.id.0);
                    let secs = before.map_or(0.0, |(_, t)| at.duration_since(*t).as_secs_f64());
                    rows.push(row(&member, &now, before.map(|(s, _)| s), secs));
                    previous.insert(member.id.0, (now, at));
                }
                Err(e) => rows.push(Row {
                    id: member.id.0,
                    admin: member.admin.clone(),
                    error: Some(format!("{e:#}")),
                    ..Row::default()
                }),
            }
        }
        // The first scrape only sets the baseline for the rates.
        if !first {
            shown += 1;
            let mut out = std::io::stdout().lock();
            if args.target.json {
                let json = serde_json::json!({
                    "epoch": ring.epoch,
                    "leader": ring.leader.map(|l| l.0),
                    "nodes": rows,
                    "total": total(&rows),
                });
                writeln!(out, "{json}")?;
            } else {
                let table = render(ring.epoch, ring.leader.map(|l| l.0), &rows);
                if redraw {
                    // Home, clear the screen, draw.
                    write!(out, "\x1b[H\x1b[2J{table}\n(q or Ctrl-C to quit)\n")?;
                } else {
                    writeln!(out, "{table}")?;
                }
            }
            out.flush()?;
            if args.iterations.is_some_and(|n| shown >= n) {
                return Ok(());
            }
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = quit.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP strata_operations_total Requests
# TYPE strata_operations_total counter
strata_operations_total{op="get",outcome="hit"} 30
strata_operations_total{op="get",outcome="miss"} 10
strata_operations_total{op="lease",outcome="ok"} 500
rpc_server_call_duration_seconds_bucket{rpc_method="get",le="0.001"} 35
rpc_server_call_duration_seconds_bucket{rpc_method="get",le="0.01"} 39
rpc_server_call_duration_seconds_bucket{rpc_method="get",le="+Inf"} 40
rpc_server_call_duration_seconds_bucket{rpc_method="lease",le="+Inf"} 500
strata_tier_size_bytes{tier="memory"} 100
strata_tier_size_bytes{tier="filesystem"} 50
strata_tier_entries{tier="memory"} 4
strata_tier_entries{tier="filesystem"} 5
strata_node_ready 1
"#;

    #[test]
    fn rows_count_client_requests_only_and_place_the_p99_in_its_bucket() {
        let now = Scrape::parse(TEXT);
        let before = Scrape::parse("");
        let member = Member {
            id: strata_proto::NodeId(3),
            addr: "127.0.0.1:1".into(),
            admin: "127.0.0.1:2".into(),
            client_addr: None,
            state: strata_proto::ring::MemberState::Active,
        };
        let r = row(&member, &now, Some(&before), 2.0);
        assert_eq!(r.ops_per_sec, Some(20.0), "lease requests are not load");
        assert_eq!(r.hit_rate, Some(0.75));
        // 39 of 40 (97.5 %) are within 10 ms, so the 99th percentile is above it.
        assert_eq!(r.p99_seconds, Some(f64::INFINITY));
        assert_eq!(quantile(&r.buckets, 0.9), Some(0.01));
        assert_eq!((r.bytes, r.entries, r.ready), (150, 5, true));
        let first = row(&member, &now, None, 0.0);
        assert_eq!(first.ops_per_sec, None);
        let sum = total(&[r.clone(), r]);
        assert_eq!(sum.ops_per_sec, Some(40.0));
        assert_eq!(sum.hit_rate, Some(0.75));
        assert!(render(1, Some(3), &[first]).contains("127.0.0.1:2"));
        assert_eq!(latency(Some(0.0025)), "≤ 2.5ms");
        assert_eq!(latency(Some(0.00025)), "≤ 250µs");
    }
}
