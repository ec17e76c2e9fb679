#!/usr/bin/env bash
# make demo: start `shortleaf dev` with 1-minute SVIDs in a temporary
# directory, register a second identity for the demo's server workload with
# the CLI, run the go-spiffe demo workloads, then stop everything.
set -euo pipefail

cd "$(dirname "$0")/.."
work=$(mktemp -d -t shortleaf-demo.XXXXXX)
dev_pid=""
cleanup() {
  if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
    kill -INT "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building"
go build -o "$work/shortleaf" ./cmd/shortleaf
go build -o "$work/shortleaf-demo" ./cmd/shortleaf-demo

echo "== starting shortleaf dev (X.509-SVID TTL 1m) in $work"
"$work/shortleaf" dev --data-dir "$work/dev" --socket "$work/agent.sock" --x509-svid-ttl 1m >"$work/dev.out" 2>"$work/dev.log" &
dev_pid=$!

admin="$work/dev/admin.sock"
for _ in $(seq 1 100); do
  if grep -q '^export SPIFFE_ENDPOINT_SOCKET' "$work/dev.out" 2>/dev/null; then break; fi
  if ! kill -0 "$dev_pid" 2>/dev/null; then cat "$work/dev.log" >&2; exit 1; fi
  sleep 0.2
done
cat "$work/dev.out"

export SHORTLEAF_ADMIN_SOCKET="$admin"
parent=$("$work/shortleaf" entry list -o json | sed -n 's/.*"parent_id": *"\([^"]*\)".*/\1/p' | head -n 1)
echo "== registering the demo server workload under agent $parent"
"$work/shortleaf" entry create --spiffe-id spiffe://example.org/demo/server --parent-id "$parent" \
  --selector "unix:uid:$(id -u)" --hint server --dns localhost
"$work/shortleaf" entry list

echo
SPIFFE_ENDPOINT_SOCKET="unix://$work/agent.sock" "$work/shortleaf-demo" --timeout 80s

echo
echo "== agents"
"$work/shortleaf" agent list
