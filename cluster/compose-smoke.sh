#!/usr/bin/env bash
# Compose smoke test: the README's "Deploy with Docker Compose" commands, end to end.
#
# Builds the image, starts docker-compose.yml (3 nodes), writes 1,000 keys from the host with
# the `strata` CLI, reads them back, adds a 4th node, kills one container, reads every key
# again, and tears everything down with `down -v`.
#
# Isolation: everything it creates carries a name of its own — the compose project
# strata-smoke-<pid>-<random> (containers, network, volumes) and the image tag
# strata-smoke:<same> — and the EXIT trap removes exactly those, also when a step fails. It
# never touches other containers, images or networks. Host ports: a STRATA_PORT_PREFIX whose
# eight ports are all free, so it does not collide with a cluster already running.
#
#   bash cluster/compose-smoke.sh                 # builds the release binary first
#   STRATA_BINARY=target/debug/strata bash cluster/compose-smoke.sh   # an already built one
#
# The `compose_smoke` test (tests/compose.rs, part of `cargo test --workspace`) runs it with
# the binary of the test build.
set -euo pipefail
cd "$(dirname "$0")/.."

keys="${STRATA_SMOKE_KEYS:-1000}"
project="strata-smoke-$$-$RANDOM"
work="$(mktemp -d)"
export COMPOSE_PROJECT_NAME="$project"
export STRATA_IMAGE="strata-smoke:$project"
export COMPOSE_FILE="$PWD/docker-compose.yml"
# The host's `strata` is the binary the image is built from.
if [ -n "${STRATA_BINARY:-}" ]; then
  bin_dir="$(cd "$(dirname "$STRATA_BINARY")" && pwd)"
else
  target_dir="${CARGO_TARGET_DIR:-target}"
  case "$target_dir" in /*) bin_dir="$target_dir/release" ;; *) bin_dir="$PWD/$target_dir/release" ;; esac
fi
export PATH="$bin_dir:$PATH"

step() { printf '\n--> %s\n' "$*"; }

# `docker compose` (v2) where installed, else `docker-compose` (v1); the same commands.
compose() {
  if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi
}

cleanup() {
  local status=$?
  set +e
  if [ "$status" -ne 0 ]; then
    echo "compose smoke FAILED (exit $status); last node logs:" >&2
    compose logs --no-color --tail 40 >&2 2>/dev/null
  fi
  compose --profile scale down -v --remove-orphans --timeout 5 >/dev/null 2>&1
  docker image rm "$STRATA_IMAGE" >/dev/null 2>&1
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Whether a TCP or UDP port is bound on this host (any address), from /proc/net.
port_in_use() {
  local hex
  hex="$(printf ':%04X' "$1")"
  cat /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 2>/dev/null |
    awk -v p="$hex" 'NR > 0 && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }'
}

# A prefix whose ports P10 P11 P20 … P41 are all free, tried in a random order.
pick_prefix() {
  local prefix n free
  for prefix in $(shuf -i 20-64); do
    free=1
    for n in 10 11 20 21 30 31 40 41; do
      if port_in_use "$prefix$n"; then free=0; break; fi
    done
    if [ "$free" = 1 ]; then echo "$prefix"; return 0; fi
  done
  return 1
}

# Waits (at most $2 seconds) until service $1's container reports healthy.
wait_healthy() {
  local id status deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    id="$(compose ps -q "$1")"
    if [ -n "$id" ]; then
      status="$(docker inspect --format '{{.State.Health.Status}}' "$id" 2>/dev/null || true)"
      [ "$status" = healthy ] && return 0
    fi
    sleep 1
  done
  echo "$1 is not healthy after $2 s" >&2
  return 1
}

# Waits (at most $2 seconds) until the cluster has $1 active members and nothing moving.
wait_members() {
  local deadline=$((SECONDS + $2)) ring members
  while [ "$SECONDS" -lt "$deadline" ]; do
    members="$(strata members --json 2>/dev/null | grep -c '"state": "active"' || true)"
    ring="$(strata ring --json 2>/dev/null | grep -c '"moving": 0' || true)"
    [ "$members" = "$1" ] && [ "$ring" = 1 ] && return 0
    sleep 1
  done
  echo "the cluster did not reach $1 active members in $2 s:" >&2
  strata members >&2 || true
  return 1
}

# `strata "$@"`, tried again (at most 3 attempts, 1 s apart) only when it fails with exit
# status 2 — an error such as a connect timeout on a starved machine. A missing key (exit 1)
# or a wrong value is never retried: that is what the test is looking for.
# shellcheck disable=SC2016
attempts='
  try() {
    local attempt=1 status
    while :; do
      "$@" && return 0
      status=$?
      if [ "$status" != 2 ] || [ "$attempt" -ge 3 ]; then return "$status"; fi
      echo "  ($*: attempt $attempt failed, retrying)" >&2
      attempt=$((attempt + 1))
      sleep 1
    done
  }'

# Writes keys smoke:1..$keys (value value-N), 8 CLI processes at a time.
write_keys() {
  seq 1 "$keys" | xargs -P 8 -n 25 bash -c "$attempts"'
    for i; do
      try strata set "smoke:$i" "value-$i" >/dev/null || { echo "set smoke:$i failed" >&2; exit 1; }
    done' _
}

# Reads every key back and checks its value.
read_keys() {
  seq 1 "$keys" | xargs -P 8 -n 25 bash -c "$attempts"'
    for i; do
      v="$(try strata get "smoke:$i")" || { echo "get smoke:$i failed (exit $?)" >&2; exit 1; }
      [ "$v" = "value-$i" ] || { echo "smoke:$i = ${v:-<missing>}, expected value-$i" >&2; exit 1; }
    done' _
}

step "ports"
STRATA_PORT_PREFIX="$(pick_prefix)" || { echo "no free port prefix" >&2; exit 1; }
export STRATA_PORT_PREFIX
echo "project $project, image $STRATA_IMAGE, ports ${STRATA_PORT_PREFIX}10..${STRATA_PORT_PREFIX}41"

step "build the image"
cluster/build-image.sh "$STRATA_IMAGE"

step "docker-compose up -d"
compose up -d
for n in 1 2 3; do wait_healthy "strata-$n" 120; done

step "client certificates from the certs volume"
docker cp "$(compose ps -q strata-1)":/var/lib/strata/certs/. "$work/certs"
export STRATA_ADDR="127.0.0.1:${STRATA_PORT_PREFIX}10" STRATA_CERTS="$work/certs"
wait_members 3 60
strata members

step "write $keys keys from the host, read them back"
started=$SECONDS
write_keys
read_keys
echo "wrote and read $keys keys in $((SECONDS - started)) s"
# The keys live on all three members, so the host dialled each at its published port
# (their service names do not resolve here). The CLI in a container uses the service names.
compose exec -T strata-1 strata members

step "scale: a 4th node joins"
compose --profile scale up -d strata-4
wait_healthy strata-4 120
wait_members 4 120
read_keys

step "kill one container (strata-2), read every key again"
docker kill "$(compose ps -q strata-2)" >/dev/null
started=$SECONDS
read_keys
echo "all $keys keys read back $((SECONDS - started)) s after the kill"

step "docker-compose down -v"
compose --profile scale down -v --remove-orphans --timeout 10
echo "compose smoke passed"
