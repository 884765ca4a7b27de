#!/usr/bin/env bash
# Times `webknock replay` against `wc -l` on the same large log, side by side,
# with testdata/example.yaml (2 sequences), with a generated configuration of
# SEQUENCES static sequences (default 1000; the log holds their knocks too),
# with a generated configuration of ONETIME one-time sequences (default
# 1000, on a log of the same size holding their knocks) and with every
# further CONFIG named; prints the best CPU time (user+sys)
# and the best wall time of RUNS runs as ratios to wc -l's, and webknock's
# peak memory (GNU time's %M). WEBKNOCK=BINARY times that build instead of
# the tree's. Fails unless the logs hold the lines written and each replay
# reads them all, parses every line it examines (--parse-all: every line)
# and grants the knocks the log holds (those of a further CONFIG are not
# known: any number).
# Usage: [SEQUENCES=N] [ONETIME=N] [WEBKNOCK=BINARY] bench/replay.sh [LINES] [RUNS] [CONFIG...]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
lines=${1:-1000000}
runs=${2:-5}
shift $(($# < 2 ? $# : 2))
seqs=${SEQUENCES:-1000}
out=bench/out
mkdir -p "$out"
log=$out/access-$lines-s$seqs.log
many=$out/sequences-$seqs.yaml
ot=${ONETIME:-1000}
otlog=$out/access-$lines-o$ot.log
otcfg=$out/onetime-$ot.yaml
[ -x /usr/bin/time ] || fail "bench/replay.sh needs GNU time (apt-get install time)"
need jq jq
wk=${WEBKNOCK:-$out/webknock}
[ -n "${WEBKNOCK:-}" ] || go build -o "$wk" ./cmd/webknock
[ -s "$many" ] || rm -f "$log.genlog"
genlog "$log" -lines "$lines" -sequences "$seqs" -config "$many"
[ -s "$otcfg" ] || rm -f "$otlog.genlog"
genlog "$otlog" -lines "$lines" -onetime "$ot" -config "$otcfg"
check_lines "$log" "$lines"
check_lines "$otlog" "$lines"
cat "$log" "$otlog" > /dev/null # warm the page cache for all

# The commands: wc -l, replay with each configuration, replay parsing every
# line, and replay of an empty log with each configuration (what starting
# costs, mostly loading the configuration). They run in turn, RUNS times, so
# that other load on the machine falls on all of them alike.
configs=(testdata/example.yaml "$many" "$otcfg" "$@")
logOf() { if [ "$1" = "$otcfg" ]; then echo "$otlog"; else echo "$log"; fi; }
# The grants a replay of its log with configuration $1 must show: genlog's
# 20 knocks of example.yaml; its 500 knocks of random sequences, every
# fifth left after two steps.
grantsOf() {
  case $1 in
  testdata/example.yaml) echo 20 ;;
  "$many" | "$otcfg") echo 400 ;;
  *) echo - ;;
  esac
}
names=("wc -l") flags=("") cfgs=("") logs=("$log")
names+=("wc -l (one-time log)") flags+=("") cfgs+=("") logs+=("$otlog")
for cfg in "${configs[@]}"; do
  names+=("replay $(basename "$cfg")") flags+=("") cfgs+=("$cfg") logs+=("$(logOf "$cfg")")
done
names+=("replay --parse-all example.yaml") flags+=(--parse-all) cfgs+=(testdata/example.yaml) logs+=("$log")
for cfg in "${configs[@]}"; do
  names+=("  start only: $(basename "$cfg")") flags+=("") cfgs+=("$cfg") logs+=(/dev/null)
done
ncmd=${#names[@]}
run() {
  if [ -z "${cfgs[$1]}" ]; then
    wc -l "${logs[$1]}"
  else
    # shellcheck disable=SC2086 # an empty flag is no argument
    "$wk" replay ${flags[$1]} -c "${cfgs[$1]}" "${logs[$1]}"
  fi
}
declare -a cpu wall
for _ in $(seq "$runs"); do
  for ((i = 0; i < ncmd; i++)); do
    # user, system and real seconds of one run (bash's time: milliseconds)
    t=$( { TIMEFORMAT='%3U %3S %3R'; time run "$i" > /dev/null 2>&1; } 2>&1 )
    read -r u s r <<< "$t"
    cpu[i]=$(awk -v u="$u" -v s="$s" -v b="${cpu[i]:-999}" 'BEGIN { c = u + s; print (c < b ? c : b) }')
    wall[i]=$(awk -v a="$r" -v b="${wall[i]:-999}" 'BEGIN { print (a < b ? a : b) }')
  done
done

printf 'log:  %s (%s lines, %s MB), best of %s runs\n\n' "$log" "$lines" "$(( $(stat -c %s "$log") / 1000000 ))" "$runs"
printf '%-40s %8s %8s %8s %8s\n' "" "CPU s" "x wc -l" "wall s" "x wc -l"
for ((i = 0; i < ncmd; i++)); do
  awk -v n="${names[$i]}" -v c="${cpu[i]}" -v w="${wall[i]}" -v c0="${cpu[0]}" -v w0="${wall[0]}" \
    'BEGIN { printf "%-40s %8.3f %8.2f %8.3f %8.2f\n", n, c, c / (c0 > 0 ? c0 : 0.001), w, w / (w0 > 0 ? w0 : 0.001) }'
done
echo
# Peak memory, and the checks: every line read, every line examined parsed
# (with --parse-all every line), the knocks granted.
measure() { # NAME EXPECTED-PARSED FLAGS... CONFIG LOG
  local name=$1 parsed=$2 cfg=${*: -2:1}
  shift 2
  /usr/bin/time -o "$out/rss" -f '%M' "$wk" replay --summary json "$@" > /dev/null 2> "$out/summary"
  check_replay "$out/summary" "$name" "$lines" "$parsed" "$(grantsOf "$cfg")"
  printf '%-32s peak RSS %6s KiB; %s\n' "$name" "$(cat "$out/rss")" \
    "$(tail -n 1 "$out/summary" | jq -r '"\(.lines) lines read, \(.examined) examined, \(.parsed) parsed, \(.grants) grants"')"
}
for cfg in "${configs[@]}"; do
  measure "replay $(basename "$cfg")" examined -c "$cfg" "$(logOf "$cfg")"
done
measure "replay --parse-all example.yaml" "$lines" --parse-all -c testdata/example.yaml "$log"
