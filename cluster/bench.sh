#!/usr/bin/env bash
# Single Strata node vs Redis on this machine, and 1 MiB GET vs raw quinn, all on loopback.
#
#   bash cluster/bench.sh
#
# What it does (see docs/benchmarks.md, "Single node vs Redis"):
#   1. installs redis-server and redis-tools from Debian if redis-server/redis-benchmark are
#      missing, and builds the release `strata` binary and the `quinn_raw` example;
#   2. starts redis-server (no persistence) and one strata node (default tiers: memory over
#      filesystem), each on a free 127.0.0.1 port, with fresh certificates and data in a
#      temporary directory that is removed on exit (the servers are stopped on any exit);
#   3. for 100 B and 4 KiB values, 50 requests in flight: redis-benchmark SET then GET, and
#      strata bench GET-only and SET-only (both pre-populate the key space), each ~SECS s;
#   4. 1 MiB GET with strata bench, and the raw quinn baseline at the same concurrency;
#   5. references: raw quinn at 100 B / 4 KiB with 50 streams, and SET against a node with a
#      memory tier only (to separate the filesystem tier's cost from the request path);
#   6. prints a summary table and writes every raw output to the results directory.
#
# While each load runs, the server's and the client's CPU time are sampled from
# /proc/PID/stat every 0.5 s; the summary gives the median over the measured window, in
# cores (1.0 = one core busy).
#
# Settings (environment): BENCH_SECS (default 8), BENCH_KEYS (10000), BENCH_BIG_CONCURRENCY
# (8), BENCH_RESULTS (default target/bench-results/<UTC time>). Runtime: about 2 min of
# load plus the build (2-3 min from clean on a 2-core machine).
set -euo pipefail

SECS=${BENCH_SECS:-8}
KEYS=${BENCH_KEYS:-10000}
CONC=50
SIZES=(100 4096)
BIG=1048576
BIG_CONC=${BENCH_BIG_CONCURRENCY:-8}
BIG_KEYS=64
REF_SECS=5

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS=${BENCH_RESULTS:-$ROOT/target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
STRATA=$ROOT/target/release/strata
QUINN_RAW=$ROOT/target/release/examples/quinn_raw
CLK_TCK=$(getconf CLK_TCK)

log() { printf '== %s\n' "$*" >&2; }

machine_state() { # label
    printf '%s: %s  nproc=%s  loadavg=%s\n' "$1" "$(date -u +%FT%TZ)" "$(nproc)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS/machine.txt" >&2
}

# --- servers, temp dir, cleanup ----------------------------------------------------------
TMP=""
SERVER_PIDS=()
cleanup() {
    local rc=$?
    for pid in "${SERVER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${SERVER_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $TMP ]]; then
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Starts `strata node` in the background; sets NODE_PID and NODE_ADDR. Args: name [node args].
start_node() {
    local name=$1
    shift
    "$STRATA" node --listen 127.0.0.1:0 --admin 127.0.0.1:0 --data-dir "$TMP/$name" \
        --certs "$TMP/certs" "$@" >"$TMP/$name.out" 2>"$RESULTS/$name.log" &
    NODE_PID=$!
    SERVER_PIDS+=("$NODE_PID")
    NODE_ADDR=""
    for _ in $(seq 300); do
        NODE_ADDR=$(awk '/listening on/ { print $NF }' "$TMP/$name.out")
        [[ -n $NODE_ADDR ]] && break
        kill -0 "$NODE_PID" 2>/dev/null || { cat "$RESULTS/$name.log" >&2; return 1; }
        sleep 0.1
    done
    [[ -n $NODE_ADDR ]] || { log "$name did not start"; return 1; }
    log "$name (pid $NODE_PID) listening on $NODE_ADDR"
}

stop_server() { # pid
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Runs a client command in the background with stdout to $RESULTS/NAME.out, stderr to
# NAME.err, sampling the server's and the client's CPU ticks into NAME.cpu every 0.5 s.
# Args: name server_pid cmd...
run_sampled() {
    local name=$1 server=$2
    shift 2
    local -a s c
    "$@" >"$RESULTS/$name.out" 2>"$RESULTS/$name.err" &
    local client=$!
    : >"$RESULTS/$name.cpu"
    while kill -0 "$client" 2>/dev/null; do
        read -r -a s 2>/dev/null <"/proc/$server/stat" || break
        read -r -a c 2>/dev/null <"/proc/$client/stat" || break
        echo "$EPOCHREALTIME $((s[13] + s[14])) $((c[13] + c[14]))" >>"$RESULTS/$name.cpu"
        sleep 0.5
    done
    echo "$EPOCHREALTIME end" >>"$RESULTS/$name.cpu"
    wait "$client"
}

redis_rps() { # csv file -> requests per second of its one test
    python3 -c 'import csv, sys; rows = list(csv.reader(open(sys.argv[1]))); print(int(float(rows[1][1])))' "$1"
}

# --- start ------------------------------------------------------------------------------
: >"$RESULTS/machine.txt"
machine_state start
{
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "kernel: $(uname -r)"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (work tree modified)')"
} | tee -a "$RESULTS/machine.txt" >&2

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    log "installing redis-server and redis-tools"
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi
    # Keep the package from starting a system-wide Redis on port 6379 (Debian's
    # policy-rc.d convention): this script runs its own, on a free port.
    POLICY=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
        "${SUDO[@]}" chmod +x "$POLICY"
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-tools
    if [[ -n $POLICY ]]; then "${SUDO[@]}" rm -f "$POLICY"; fi
fi
redis-server --version | tee -a "$RESULTS/machine.txt" >&2

log "building (release)"
build_start=$SECONDS
(cd "$ROOT" && cargo build --release -p strata-cli --bin strata --example quinn_raw)
echo "build: $((SECONDS - build_start)) s" | tee -a "$RESULTS/machine.txt" >&2
machine_state after-build
load_start=$SECONDS

TMP=$(mktemp -d "${TMPDIR:-/tmp}/strata-bench.XXXXXX")
"$STRATA" certs init --out "$TMP/certs" >/dev/null

REDIS_PORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$TMP" --logfile "$RESULTS/redis.log" --daemonize no &
REDIS_PID=$!
SERVER_PIDS+=("$REDIS_PID")
for _ in $(seq 100); do
    [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && break
    sleep 0.1
done
log "redis-server (pid $REDIS_PID) on 127.0.0.1:$REDIS_PORT"

start_node node
MAIN_PID=$NODE_PID
MAIN_ADDR=$NODE_ADDR

# Waits until the node has flushed every write it acknowledged from memory (write-back), so
# that the next measurement, Strata's or Redis', does not share the CPU with that disk work.
settle() { # addr
    local addr=$1 left i
    for ((i = 0; i < 600; i++)); do
        left=$("$STRATA" stats --addr "$addr" --certs "$TMP/certs" --json |
            python3 -c 'import json,sys; print(json.load(sys.stdin).get("write_back", {}).get("pending_keys", 0))')
        [[ $left == 0 ]] && return 0
        sleep 0.5
    done
    log "node at $addr still has $left writes to flush after 5 minutes"
    return 1
}

bench() { # name addr bench-args...
    local name=$1 addr=$2
    shift 2
    log "strata bench $name"
    # strata bench itself waits for the pre-population to be flushed before it measures.
    run_sampled "$name" "$NODE_PID" "$STRATA" bench --addr "$addr" --certs "$TMP/certs" \
        --json "$@"
    settle "$addr"
}

for size in "${SIZES[@]}"; do
    # Redis: calibrate the request count so that each test lasts about SECS seconds.
    for op in set get; do
        log "redis-benchmark $op ${size} B"
        redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$CONC" -n 50000 -d "$size" \
            -r "$KEYS" -t "$op" --csv >"$RESULTS/redis-$op-$size.calibrate.csv"
        n=$(($(redis_rps "$RESULTS/redis-$op-$size.calibrate.csv") * SECS))
        ((n < 100000)) && n=100000
        run_sampled "redis-$op-$size" "$REDIS_PID" redis-benchmark -h 127.0.0.1 \
            -p "$REDIS_PORT" -c "$CONC" -n "$n" -d "$size" -r "$KEYS" -t "$op" --csv
    done
    NODE_PID=$MAIN_PID
    bench "strata-get-$size" "$MAIN_ADDR" --concurrency "$CONC" --size "$size" --ratio 1:0 \
        --keys "$KEYS" --duration "$SECS"
    bench "strata-set-$size" "$MAIN_ADDR" --concurrency "$CONC" --size "$size" --ratio 0:1 \
        --keys "$KEYS" --duration "$SECS"
done

NODE_PID=$MAIN_PID
bench "strata-get-$BIG" "$MAIN_ADDR" --concurrency "$BIG_CONC" --size "$BIG" --ratio 1:0 \
    --keys "$BIG_KEYS" --duration "$SECS"
stop_server "$REDIS_PID"
stop_server "$MAIN_PID"

log "quinn_raw ${BIG} B, concurrency $BIG_CONC"
# quinn_raw is server and client in one process: its CPU is the "client" column.
run_sampled "quinn-raw-$BIG" "$$" "$QUINN_RAW" --size "$BIG" --concurrency "$BIG_CONC" \
    --secs "$SECS"
for size in "${SIZES[@]}"; do
    log "quinn_raw ${size} B, concurrency $CONC (reference)"
    run_sampled "quinn-raw-$size" "$$" "$QUINN_RAW" --size "$size" --concurrency "$CONC" \
        --secs "$REF_SECS"
done

# Reference: the same SET load against a node whose only tier is memory.
printf '[store]\n[[store.tiers]]\nkind = "memory"\nmax_bytes = 1073741824\n' >"$TMP/memory-only.toml"
start_node node-memory-only --config "$TMP/memory-only.toml"
for size in "${SIZES[@]}"; do
    bench "strata-memonly-set-$size" "$NODE_ADDR" --concurrency "$CONC" --size "$size" \
        --ratio 0:1 --keys "$KEYS" --duration "$REF_SECS"
done
stop_server "$NODE_PID"

echo "load phase: $((SECONDS - load_start)) s" | tee -a "$RESULTS/machine.txt" >&2
machine_state end

# --- summary ----------------------------------------------------------------------------
python3 - "$RESULTS" "$CLK_TCK" "$BIG" <<'PY' | tee "$RESULTS/summary.txt"
import csv, json, statistics, sys
from pathlib import Path

res, tck, big = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def cpu(name, window=None):
    """Median server and client CPU (cores) over the 0.5 s sampling intervals. With
    `window` (strata bench: its measured seconds), only intervals inside the last `window`
    seconds before the client exited, leaving out the pre-population before it and the
    connection close after it; otherwise all intervals but the first and the last."""
    rows = [l.split() for l in (res / f"{name}.cpu").read_text().splitlines()]
    end = float(rows[-1][0])
    rows = [(float(t), int(s), int(c)) for t, s, c in (r for r in rows if len(r) == 3)]
    iv = [(t1, (s1 - s0) / tck / (t1 - t0), (c1 - c0) / tck / (t1 - t0))
          for (t0, s0, c0), (t1, s1, c1) in zip(rows, rows[1:]) if t1 > t0]
    if window:
        iv = [x for x in iv if end - window + 0.75 <= x[0] <= end - 0.5]
    else:
        iv = iv[1:-1]
    if not iv:
        return None, None
    return statistics.median(x[1] for x in iv), statistics.median(x[2] for x in iv)

def strata(name):
    d = json.loads((res / f"{name}.out").read_text())
    s, c = cpu(name, d["elapsed_secs"])
    return d, s, c

def redis(name):
    rows = list(csv.reader(open(res / f"{name}.out")))
    s, c = cpu(name)
    return float(rows[1][1]), s, c

def quinn(name):
    d = json.loads((res / f"{name}.out").read_text())
    _, c = cpu(name)
    return d, c

f = lambda x: "—" if x is None else f"{x:.2f}"
summary = {"rows": []}
print()
print("| workload | strata ops/s | redis ops/s | strata/redis | target | verdict "
      "| node CPU | bench CPU | redis-server CPU | redis-benchmark CPU | strata p50/p99 µs |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for size in (100, 4096):
    for op in ("set", "get"):
        d, ns, nc = strata(f"strata-{op}-{size}")
        rops, rs, rc = redis(f"redis-{op}-{size}")
        sops = d[op]["ops_per_sec"]
        ratio = sops / rops
        verdict = "PASS" if ratio >= 1.0 else "MISS"
        lat = d[op]["latency_us"]
        label = f"{op.upper()} {size} B"
        print(f"| {label} | {sops:,.0f} | {rops:,.0f} | {ratio:.3f}× | ≥ 1.0× | {verdict} "
              f"| {f(ns)} | {f(nc)} | {f(rs)} | {f(rc)} | {lat['p50']}/{lat['p99']} |")
        summary["rows"].append(dict(workload=label, strata_ops=sops, redis_ops=rops,
                                    ratio=ratio, verdict=verdict, node_cpu=ns, bench_cpu=nc,
                                    redis_cpu=rs, redis_bench_cpu=rc,
                                    errors=d["errors"], get_misses=d["get_misses"],
                                    latency_us=lat))

d, ns, nc = strata(f"strata-get-{big}")
q, qc = quinn(f"quinn-raw-{big}")
smb = d["get"]["ops_per_sec"] * big / 1e6
ratio = smb / q["mb_per_sec"]
verdict = "PASS" if ratio >= 0.8 else "MISS"
print()
print("| workload | strata MB/s | raw quinn MB/s | strata/quinn | target | verdict "
      "| node CPU | bench CPU | quinn_raw CPU (both ends) |")
print("|---|---|---|---|---|---|---|---|---|")
print(f"| GET 1 MiB, {d['concurrency']} in flight | {smb:,.0f} ({d['get']['ops_per_sec']:,.0f} req/s) "
      f"| {q['mb_per_sec']:,.0f} ({q['req_per_sec']:,.0f} req/s) | {ratio:.3f}× | ≥ 0.8× "
      f"| {verdict} | {f(ns)} | {f(nc)} | {f(qc)} |")
summary["big"] = dict(strata_mb_s=smb, quinn_mb_s=q["mb_per_sec"], ratio=ratio,
                      verdict=verdict, node_cpu=ns, bench_cpu=nc, quinn_cpu=qc,
                      errors=d["errors"], latency_us=d["get"]["latency_us"])

print()
print("References (no target):")
print("| reference | ops/s | p50/p99 µs | server CPU | client CPU |")
print("|---|---|---|---|---|")
for size in (100, 4096):
    q, qc = quinn(f"quinn-raw-{size}")
    print(f"| raw quinn, {size} B answers, 50 streams | {q['req_per_sec']:,.0f} | — "
          f"| {f(qc)} (both ends) | |")
    summary[f"quinn_raw_{size}"] = q["req_per_sec"]
for size in (100, 4096):
    d, ns, nc = strata(f"strata-memonly-set-{size}")
    lat = d["set"]["latency_us"]
    print(f"| strata SET {size} B, memory tier only | {d['set']['ops_per_sec']:,.0f} "
          f"| {lat['p50']}/{lat['p99']} | {f(ns)} | {f(nc)} |")
    summary[f"memonly_set_{size}"] = d["set"]["ops_per_sec"]
errors = sum(r["errors"] for r in summary["rows"]) + summary["big"]["errors"]
print(f"\nstrata errors: {errors}; results in {res}")
(res / "summary.json").write_text(json.dumps(summary, indent=2))
PY
