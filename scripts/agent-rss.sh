#!/usr/bin/env bash
# The real agent's memory per cached SVID: a `shortleaf server` and a
# `shortleaf agent`, N entries (default 100000) registered for the agent with
# `entry create --file`, and the agent's RSS before and once it holds every
# SVID. Prints (RSS with N - RSS with none) / N. Needs curl and python3 (for free ports).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${ENTRIES:-100000}
work=$(mktemp -d -t shortleaf-rss.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/shortleaf" ./cmd/shortleaf
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api=$(port); metrics=$(port)
cat >"$work/server.yaml" <<YAML
trust_domain: example.org
data_dir: $work/server
agent_api_address: 127.0.0.1:$api
x509_svid_ttl: 1h
max_x509_svid_ttl: 1h
log_level: warn
limits: {attestations_per_second: -1, svids_per_second: -1}
YAML
SHORTLEAF_KEY_PASSPHRASE=rss-check "$work/shortleaf" server --config "$work/server.yaml" 2>"$work/server.log" &
pids+=($!)
export SHORTLEAF_ADMIN_SOCKET="$work/server/admin.sock"
for _ in $(seq 1 100); do "$work/shortleaf" healthcheck >/dev/null 2>&1 && break; sleep 0.2; done
token=$("$work/shortleaf" token create -o json)
agent_id=$(sed -n 's/.*"agent_id": *"\([^"]*\)".*/\1/p' <<<"$token")
secret=$(sed -n 's/.*"token": *"\([^"]*\)".*/\1/p' <<<"$token")
"$work/shortleaf" bundle show >"$work/bundle.pem"
cat >"$work/agent.yaml" <<YAML
server_address: 127.0.0.1:$api
trust_domain: example.org
trust_bundle_path: $work/bundle.pem
data_dir: $work/agent
socket_path: $work/agent.sock
metrics_address: 127.0.0.1:$metrics
log_level: warn
YAML
"$work/shortleaf" agent --config "$work/agent.yaml" --join-token "$secret" 2>"$work/agent.log" &
agent=$!
pids+=($agent)
cached() { curl -s "http://127.0.0.1:$metrics/metrics" | awk '/^shortleaf_agent_cached_x509_svids /{print $2}'; }
for _ in $(seq 1 100); do [ -n "$(cached)" ] && break; sleep 0.2; done
sleep 2
rss() { awk '/^VmRSS:/{print $2}' "/proc/$agent/status"; }
before=$(rss)
awk -v n="$n" -v p="$agent_id" 'BEGIN { for (i = 0; i < n; i++) printf "- spiffe_id: spiffe://example.org/rss/%d\n  parent_id: %s\n  selectors: [unix:uid:%d]\n", i, p, 100000 + i }' >"$work/entries.yaml"
start=$(date +%s)
"$work/shortleaf" entry create --file "$work/entries.yaml"
while [ "$(cached)" != "$n" ]; do sleep 1; [ $(( $(date +%s) - start )) -lt 600 ] || { echo "the agent holds $(cached) of $n SVIDs after 10 minutes" >&2; exit 1; }; done
sleep "${SETTLE:-30}" # let the runtime return the issuance burst's garbage
after=$(rss)
echo "agent RSS: ${before} kB with no SVID, ${after} kB with $n: $(( (after - before) * 1024 / n )) bytes per cached SVID (all $n obtained in $(( $(date +%s) - start ))s)"
