#!/usr/bin/env bash
# make loadtest: a short run of cmd/shortleaf-load against a real `shortleaf
# server` child process. Sizes can be changed: AGENTS, ENTRIES (per agent),
# TTL, DURATION (steady phase), SIGNING_CAPACITY (the server's
# limits.signing_capacity, to see it overrun: shed CSRs, retried, none
# expired). Quote ratios (to the crypto bound it measures), not raw times.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
go build -o bin/shortleaf ./cmd/shortleaf
go build -o bin/shortleaf-load ./cmd/shortleaf-load
exec bin/shortleaf-load --shortleaf bin/shortleaf --agents "${AGENTS:-20}" --entries "${ENTRIES:-250}" \
  --ttl "${TTL:-1m}" --duration "${DURATION:-40s}" --signing-capacity "${SIGNING_CAPACITY:-0}"
