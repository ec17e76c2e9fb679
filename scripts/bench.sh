#!/usr/bin/env bash
# make bench: the server's issuance path against the crypto bound, and the
# same path end to end over real gRPC+TLS. Prints the ratio; quote ratios,
# never raw times (machines are shared and noisy).
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-5}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench 'BenchmarkIssuance$|BenchmarkCryptoBound$' -benchmem -count "$count" ./ca/ | tee "$out"
go test -run '^$' -bench 'BenchmarkBatchNewX509SVID|BenchmarkWorkloadAPIFetch|BenchmarkWorkloadAPIFetchExecutableSelectors|BenchmarkBareUDSStream' -benchmem -count "$count" ./pkg/harness/ | tee -a "$out"
# Registration: one CreateEntry per entry against BatchCreateEntry of 1000.
go test -run '^$' -bench 'BenchmarkEntryRegistration' -benchtime 3s -count 1 ./pkg/harness/ | tee -a "$out"
# Entry sync: a pushed change against a poll's resend, at 1k-100k entries.
go test -run '^$' -bench 'BenchmarkEntrySync' -benchtime 200x -count 1 ./pkg/harness/ | tee -a "$out"
go test -run '^$' -bench 'BenchmarkSyncPages' -benchtime 3x -count 1 ./pkg/harness/ | tee -a "$out"
# The agent's cache at 1k-100k SVIDs (CPU and live heap per SVID), and
# selector matching by index against a scan.
go test -run '^$' -bench 'BenchmarkAgentCache' -benchtime 2x -count 1 ./pkg/agent/ | tee -a "$out"
go test -run '^$' -bench 'BenchmarkMatch' -count 1 ./pkg/workloadapi/ | tee -a "$out"
go test -run '^$' -bench 'BenchmarkFeedFanOut' -benchtime 100000x -count 1 ./pkg/entryfeed/ | tee -a "$out"
awk '
  /^BenchmarkIssuance-/      { for (i=1;i<=NF;i++) if ($(i+1)=="ns/op") { iss+=$i; ni++ } }
  /^BenchmarkCryptoBound-/   { for (i=1;i<=NF;i++) if ($(i+1)=="ns/op") { bound+=$i; nb++ } }
  /^BenchmarkBatchNewX509SVID\/audit=true-/ { for (i=1;i<=NF;i++) if ($(i+1)=="ns/svid") { rpc+=$i; nr++ } }
  /^BenchmarkBatchNewX509SVID\/audit=false-/ { for (i=1;i<=NF;i++) if ($(i+1)=="ns/svid") { rpcoff+=$i; nro++ } }
  /^BenchmarkWorkloadAPIFetch-/ { for (i=1;i<=NF;i++) if ($(i+1)=="ns/op") { wl+=$i; nw++ } }
  /^BenchmarkWorkloadAPIFetchExecutableSelectors-/ { for (i=1;i<=NF;i++) if ($(i+1)=="ns/op") { wlx+=$i; nx++ } }
  /^BenchmarkBareUDSStream-/    { for (i=1;i<=NF;i++) if ($(i+1)=="ns/op") { bare+=$i; nu++ } }
  /^BenchmarkEntryRegistration\/single-/ { for (i=1;i<=NF;i++) if ($(i+1)=="entries/s") regone=$i }
  /^BenchmarkEntryRegistration\/batch-/  { for (i=1;i<=NF;i++) if ($(i+1)=="entries/s") regbatch=$i }
  /^BenchmarkSyncPages\/entries=/ { for (i=1;i<=NF;i++) if ($(i+1)=="page/4MiB") { split($1, nm, /[=-]/); pages = pages sprintf("sync pages of %s entries: the largest is %.3f of the 4 MiB gRPC limit\n", nm[2], $i) } }
  /^BenchmarkAgentCache\/entries=/ {
    for (i=1;i<=NF;i++) { if ($(i+1)=="ns/svid") ns=$i; if ($(i+1)=="live-B/svid") live=$i }
    split($1, nm, /[=-]/); agent[nm[2]] = ns; agentlive[nm[2]] = live
  }
  /^BenchmarkMatch\/index\/identities=100000/ { for (i=1;i<=NF;i++) if ($(i+1)=="ns/op") mi=$i }
  /^BenchmarkMatch\/index\/identities=1000-/  { for (i=1;i<=NF;i++) if ($(i+1)=="ns/op") mi1=$i }
  /^BenchmarkMatch\/scan\/identities=100000/  { for (i=1;i<=NF;i++) if ($(i+1)=="ns/op") ms=$i }
  /^BenchmarkEntrySync\/entries=/ {
    for (i=1;i<=NF;i++) { if ($(i+1)=="push-bytes/change") push=$i; if ($(i+1)=="poll-bytes/change") poll=$i }
    split($1, name, /[=-]/); sync[name[2]] = sprintf("%s entries: a pushed change is %.0f bytes, a poll resends %.0f (%.0fx)", name[2], push, poll, poll/push)
  }
  END {
    for (n in sync) print sync[n]
    if (ni && nb) printf "\nissuance / crypto bound = %.2fx (mean of %d runs)\n", (iss/ni)/(bound/nb), ni
    if (nw && nu) printf "Workload API FetchX509SVID / bare gRPC stream on a Unix socket = %.2fx\n", (wl/nw)/(bare/nu)
    if (nx && nu) printf "  the same with unix:path and unix:sha256 entries = %.2fx\n", (wlx/nx)/(bare/nu)
    printf "%s", pages
    if (agent[1000] && agent[100000]) printf "agent CPU per SVID at 100k / at 1k entries = %.2fx; live heap per SVID %.0f B at 1k, %.0f B at 100k\n", agent[100000]/agent[1000], agentlive[1000], agentlive[100000]
    if (mi && mi1 && ms) printf "matching a workload at 100k identities: %.2fx the cost at 1k (a scan: %.0fx the index)\n", mi/mi1, ms/mi
    if (regone && regbatch) printf "registration: %.0f entries/s in batches of 1000, %.1fx one CreateEntry per entry (%.0f/s)\n", regbatch, regbatch/regone, regone
    if (nr && nro) printf "gRPC batch issuance with the audit log / without = %.3fx (the log costs %.1f%% of throughput)\n", (rpc/nr)/(rpcoff/nro), 100*(1-(rpcoff/nro)/(rpc/nr))
    if (nr && nb) printf "gRPC batch issuance, wall time per SVID / single-core crypto bound = %.2fx (the batch uses every core)\n", (rpc/nr)/(bound/nb)
  }' "$out"
