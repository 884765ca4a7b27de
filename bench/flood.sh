#!/usr/bin/env bash
# A million first knocks from distinct IPv6 addresses, with one genuine knock
# in the middle: prints the peak RSS (GNU time's %M, the kernel's VmHWM) of
# webknock replay reading the flood and of webknock run (dry-run firewall)
# following it. Fails unless each read every line, parsed every one (each
# holds a knock path) and granted the genuine client, and nobody else.
#   bench/flood.sh [LINES]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
lines=${1:-1000000}
need jq jq
need curl curl
[ -x /usr/bin/time ] || fail "bench/flood.sh needs GNU time (apt-get install time)"
out=bench/out
mkdir -p "$out"
wk=$out/webknock
go build -o "$wk" ./cmd/webknock
total=$((lines + 4)) # and the genuine client's four lines
genlog "$out/flood-$lines.log" -flood -lines "$lines"
check_lines "$out/flood-$lines.log" "$total"
/usr/bin/time -o "$out/rss" -f '%M' "$wk" replay --json --summary json -c testdata/example.yaml "$out/flood-$lines.log" \
  > "$out/flood.events" 2> "$out/flood.summary"
check_replay "$out/flood.summary" "replay of the flood" "$total" "$total" 1
grep -q '"event":"grant","ip":"192.0.2.77"' "$out/flood.events" || fail "replay did not grant the genuine client"
printf 'flood:        %s first steps from distinct addresses\n' "$lines"
printf 'replay:       peak RSS %s KiB; the genuine client granted, nobody else; %s\n' "$(cat "$out/rss")" \
  "$(tail -n 1 "$out/flood.summary" | jq -r '"\(.lines) lines read, \(.parsed) parsed"')"

# The same flood, dated now, written to a log that `webknock run` follows.
dir=$(mktemp -d)
pid=''
trap 'kill $pid 2> /dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/webknock.yaml" << YAML
log: {paths: [$dir/access.log], start: end}
state_dir: $dir/state
firewall: {backend: dry-run}
sequences: [{name: ssh, steps: [/k/7f3a9c, /k/91c2e0, /k/00aa5d], knock_page: /k/open, timeout: 30s, window: 10m}]
web: {listen: "", socket: $dir/run/webknock.sock}
YAML
: > "$dir/access.log"
"$wk" run -c "$dir/webknock.yaml" --json-logs 2> "$dir/daemon.log" &
pid=$!
waitfor 10 logged "$dir/daemon.log" "webknock running" || fail "run did not start: $(cat "$dir/daemon.log")"
go run ./bench/genlog -flood -now -lines "$lines" >> "$dir/access.log"
check_lines "$dir/access.log" "$total"
waitfor 120 logged "$dir/daemon.log" grant 192.0.2.77 || fail "run did not grant the genuine client within 120 s"
check_run "$dir/run/webknock.sock" "$dir/access.log" "$total" "$total" 1
printf 'run:          peak RSS %s KiB; the genuine client granted, nobody else\n' "$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")"
