#!/usr/bin/env bash
# Builds the release `strata` binary and the container image `strata:dev` (or $1, or
# $STRATA_IMAGE) FROM scratch: the binary, the shared libraries `ldd` says it needs and the
# dynamic loader, a non-root user, CA certificates and the container configuration
# (cluster/node.toml). Nothing is pulled: the machines this runs on have no registry.
#
#   cluster/build-image.sh                      # cargo build --release, then docker build
#   cluster/build-image.sh my/strata:tag        # another tag
#   STRATA_BINARY=target/debug/strata cluster/build-image.sh   # an already built binary
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-${STRATA_IMAGE:-strata:dev}}"
if [ -n "${STRATA_BINARY:-}" ]; then
  binary="$STRATA_BINARY"
else
  binary="${CARGO_TARGET_DIR:-target}/release/strata"
  cargo build --release --locked -p strata-cli
fi
[ -x "$binary" ] || { echo "build-image: $binary is missing" >&2; exit 2; }

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/strata" "$root/etc/ssl/certs" "$root/tmp" \
  "$context/owned/data" "$context/owned/certs"
chmod 1777 "$root/tmp"
chmod 0755 "$context/owned/data" "$context/owned/certs"

cp "$binary" "$root/usr/local/bin/strata"
strip "$root/usr/local/bin/strata" 2>/dev/null || true

# The libraries the binary links, and the loader, at the paths the binary asks for: `ldd`
# prints "name => /path (addr)" for libraries and "/path (addr)" for the loader.
libs="$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')"
[ -n "$libs" ] || { echo "build-image: ldd found no libraries (a static binary needs none)" >&2; }
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
strata:x:10001:10001:strata:/var/lib/strata:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
strata:x:10001:
GROUP
# getaddrinfo resolves service names through Docker's DNS (/etc/resolv.conf and /etc/hosts are
# provided by Docker at run time); glibc ≥ 2.34 has the files and dns sources built in.
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
else
  echo "build-image: no /etc/ssl/certs/ca-certificates.crt on this machine; the image has no public CAs" >&2
fi
cp cluster/node.toml "$root/etc/strata/node.toml"

docker build --quiet --tag "$image" \
  --label org.opencontainers.image.title=strata \
  -f cluster/Dockerfile "$context" >/dev/null
echo "built image $image ($(docker image inspect --format '{{.Size}}' "$image") bytes)"
