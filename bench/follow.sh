#!/usr/bin/env bash
# What following a busy log costs. `webknock run` (dry-run firewall) follows
# a log to which LINES lines of bench/genlog (default a million) are appended
# at once, a genuine knock as their last lines. Prints run's CPU per million
# lines followed next to that of `replay` (its fast path, best of 3) on the
# same lines and of `tail -F` following the same log, as ratios, and the lag
# from the end of the burst's last write to the grant in the daemon's log.
# Fails unless run read every line, skipped none it examined and granted the
# knock, and replay read every line and granted it too.
#   bench/follow.sh [LINES]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
lines=${1:-1000000}
need jq jq
need curl curl
out=bench/out
mkdir -p "$out"
wk=$out/webknock
go build -o "$wk" ./cmd/webknock
genlog "$out/follow-$lines.log" -lines "$lines" -knocks 0
check_lines "$out/follow-$lines.log" "$lines"

dir=$(mktemp -d)
pid='' tpid=''
trap 'kill $pid $tpid 2> /dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/webknock.yaml" << YAML
log: {paths: [$dir/access.log], start: end}
state_dir: $dir/state
firewall: {backend: dry-run}
sequences: [{name: ssh, steps: [/k/7f3a9c, /k/91c2e0, /k/00aa5d], knock_page: /k/open, window: 10m, ports: [22/tcp]}]
web: {listen: "", socket: $dir/run/webknock.sock}
YAML
# The burst: the generated lines, then a knock dated now.
cp "$out/follow-$lines.log" "$dir/burst.log"
now=$(LC_ALL=C date -u +%d/%b/%Y:%H:%M:%S)
for p in /k/7f3a9c /k/91c2e0 /k/00aa5d /k/open; do
  printf '203.0.113.77 - - [%s +0000] "GET %s HTTP/1.1" 404 153 "-" "curl/8"\n' "$now" "$p" >> "$dir/burst.log"
done
total=$((lines + 4))
size=$(stat -c %s "$dir/burst.log")
cat "$dir/burst.log" > /dev/null # in the page cache for all

# CPU seconds of a process so far (user + system, in clock ticks).
tick=$(getconf CLK_TCK)
cpu() { awk -v t="$tick" '{ printf "%.3f\n", ($14 + $15) / t }' "/proc/$1/stat"; }

: > "$dir/access.log"
"$wk" run -c "$dir/webknock.yaml" --json-logs 2> "$dir/daemon.log" &
pid=$!
waitfor 10 logged "$dir/daemon.log" "webknock running" || fail "run did not start: $(cat "$dir/daemon.log")"
tail -F -n 0 "$dir/access.log" > /dev/null 2>&1 &
tpid=$!
tailing() { ls -l "/proc/$tpid/fd" 2> /dev/null | grep -q "$dir/access.log"; }
waitfor 10 tailing || fail "tail -F did not start"
rchar() { awk '$1 == "rchar:" { print $2 }' "/proc/$tpid/io"; }
tail0=$(rchar)
run0=$(cpu "$pid") tailcpu0=$(cpu "$tpid")

cat "$dir/burst.log" >> "$dir/access.log"
wrote=$EPOCHREALTIME
waitfor 120 logged "$dir/daemon.log" grant 203.0.113.77 || fail "run did not grant the knock within 120 s"
waitfor 30 test "$(($(rchar) - tail0))" -ge "$size" || fail "tail -F did not read the burst"
run1=$(cpu "$pid") tailcpu1=$(cpu "$tpid")
granted=$(jq -r 'select(.msg == "grant") | .time' "$dir/daemon.log" | head -n 1)
check_run "$dir/run/webknock.sock" "$dir/access.log" "$total" - 1
rss=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")

best=''
for _ in 1 2 3; do
  t=$( { TIMEFORMAT='%3U %3S'; time "$wk" replay --summary json -c "$dir/webknock.yaml" "$dir/burst.log" > /dev/null 2> "$dir/summary"; } 2>&1 )
  best=$(awk -v t="$t" -v b="$best" 'BEGIN { split(t, a, " "); c = a[1] + a[2]; print (b == "" || c < b ? c : b) }')
done
check_replay "$dir/summary" "replay of the burst" "$total" examined 1

awk -v n="$total" -v mb="$((size / 1000000))" -v r0="$run0" -v r1="$run1" -v rp="$best" -v t0="$tailcpu0" -v t1="$tailcpu1" \
  -v wrote="$wrote" -v granted="$(date -d "$granted" +%s.%N)" -v rss="$rss" 'BEGIN {
  m = n / 1e6; run = r1 - r0; tl = t1 - t0; lag = granted - wrote
  printf "burst: %d lines (%d MB) appended at once, a knock last\n", n, mb
  printf "%-30s %10s %16s %10s\n", "", "CPU s", "CPU s / M lines", "x replay"
  printf "%-30s %10.3f %16.3f %10.1f\n", "webknock run (following)", run, run / m, run / rp
  printf "%-30s %10.3f %16.3f %10.1f\n", "webknock replay (fast path)", rp, rp / m, 1
  printf "%-30s %10.3f %16.3f %10.1f\n", "tail -F", tl, tl / m, tl / rp
  printf "(goal: run at most 4x replay: %s)\n", run <= 4 * rp ? "met" : "NOT met"
  printf "lag from the end of the last write to the grant: %.3f s (goal 0.5 s: %s; below 0: granted before cat returned)\n", lag, lag <= 0.5 ? "met" : "NOT met"
  printf "peak RSS of run: %d KiB\n", rss
}'
