#!/usr/bin/env bash
# Times `webknock replay` against `wc -l` on the same large log, side by side,
# and reports webknock's peak memory. Usage: bench/replay.sh [LINES] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
runs=${2:-5}
out=bench/out
mkdir -p "$out"
log=$out/access-$lines.log
go build -o "$out/webknock" ./cmd/webknock
[ -s "$log" ] || go run ./bench/genlog -lines "$lines" > "$log"
cat "$log" > /dev/null # warm the page cache for both
best() { # best wall time in seconds of $runs runs of "$@"
  local b=999 s e t
  for _ in $(seq "$runs"); do
    s=$(date +%s.%N); "$@" > /dev/null 2>&1; e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc -l); b=$(echo "if ($t < $b) $t else $b" | bc -l)
  done
  printf '%.4f' "$b"
}
wc_t=$(best wc -l "$log")
wk_t=$(best "$out/webknock" replay -c testdata/example.yaml "$log")
all_t=$(best "$out/webknock" replay --parse-all -c testdata/example.yaml "$log")
command -v /usr/bin/time > /dev/null || { echo "bench/replay.sh needs GNU time (apt-get install time)" >&2; exit 1; }
/usr/bin/time -o "$out/rss" -f '%M' "$out/webknock" replay -c testdata/example.yaml "$log" > /dev/null 2>&1
rss=$(cat "$out/rss")
summary=$("$out/webknock" replay -c testdata/example.yaml "$log" 2>&1 >/dev/null | tail -n1)
printf 'log:                 %s (%s lines, %s MB)\n' "$log" "$lines" "$(( $(stat -c %s "$log") / 1000000 ))"
printf 'wc -l:               %s s\n' "$wc_t"
printf 'webknock replay:     %s s  (%.2fx wc -l)\n' "$wk_t" "$(echo "$wk_t / $wc_t" | bc -l)"
printf 'replay --parse-all:  %s s  (%.2fx wc -l)\n' "$all_t" "$(echo "$all_t / $wc_t" | bc -l)"
printf 'replay peak RSS:     %s KiB\n' "$rss"
printf 'replay summary:      %s\n' "$summary"
