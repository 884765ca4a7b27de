#!/usr/bin/env bash
# The live path at scale, both firewall backends, in network namespaces with
# the real kernel: for each size N (default 1000 and 5000), BenchmarkE2EScale
# knocks N grants in one burst of log lines and reports what applying them
# costs, a granted client's connect time at 10 and at N grants, an HTTP
# request to an unguarded port with no grant and with N, one knock while N
# exist, the idle CPU with N live, and the N grants ending in the same
# second (their removal, and a knock meanwhile). The benchmark fails rather
# than report a figure when a grant is missing. Needs root, nginx, iptables,
# nftables. Usage: sudo bench/scale.sh [N...]   (RUNS=3 repeats each)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 5000)
runs=${RUNS:-1}
[ "$(id -u)" = 0 ] || { echo "bench/scale.sh needs root (network namespaces, the kernel's firewall)" >&2; exit 1; }
out=bench/out
mkdir -p "$out"
for n in "${sizes[@]}"; do
  echo "== $n grants"
  WK_E2E=require WK_BENCH_GRANTS=$n go test ./cmd/webknock -run '^$' -bench '^BenchmarkE2EScale$' -benchtime 1x -count "$runs" -timeout 60m |
    tee "$out/scale-$n.txt" |
    awk '/^BenchmarkE2EScale\// { b = $1; sub(/^[^\/]*\//, "", b); sub(/-[0-9]+$/, "", b); print "-- " b
      for (i = 5; i < NF; i += 2) printf "  %-28s %s\n", $(i + 1), $i }'
done
