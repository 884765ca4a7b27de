#!/usr/bin/env bash
# A million first knocks from distinct IPv6 addresses, with one genuine knock
# in the middle: prints webknock replay's peak RSS and whether the genuine
# client was granted. Usage: bench/flood.sh [LINES]
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
out=bench/out
mkdir -p "$out"
go build -o "$out/webknock" ./cmd/webknock
go run ./bench/genlog -flood -lines "$lines" > "$out/flood.log"
command -v /usr/bin/time > /dev/null || { echo "bench/flood.sh needs GNU time (apt-get install time)" >&2; exit 1; }
/usr/bin/time -o "$out/rss" -f '%M' "$out/webknock" replay --json -c testdata/example.yaml "$out/flood.log" > "$out/flood.events" 2> "$out/flood.summary"
printf 'flood:        %s first steps from distinct addresses\n' "$lines"
printf 'peak RSS:     %s KiB\n' "$(cat "$out/rss")"
printf 'grants:       %s\n' "$(grep -c '"event":"grant"' "$out/flood.events" || true)"
grep '"event":"grant"' "$out/flood.events" || echo "the genuine client was NOT granted"
tail -n 1 "$out/flood.summary"

# The same flood written to a log that `webknock run` (dry-run firewall) follows.
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/webknock.yaml" <<YAML
log: {paths: [$dir/access.log], start: end}
state_dir: $dir/state
firewall: {backend: dry-run}
sequences: [{name: ssh, steps: [/k/7f3a9c, /k/91c2e0, /k/00aa5d], knock_page: /k/open, timeout: 30s, window: 10m}]
web: {listen: ""}
YAML
: > "$dir/access.log"
"$out/webknock" run -c "$dir/webknock.yaml" 2> "$dir/daemon.log" &
pid=$!
timeout 10 grep -q "webknock running" <(tail -F "$dir/daemon.log" 2>/dev/null)
go run ./bench/genlog -flood -now -lines "$lines" >> "$dir/access.log"
if timeout 120 grep -q 'msg=grant.*ip=192.0.2.77' <(tail -F "$dir/daemon.log" 2>/dev/null); then
  printf 'run:          the genuine client was granted; peak RSS %s\n' "$(grep VmHWM /proc/$pid/status | awk '{print $2, $3}')"
else
  echo "run: the genuine client was NOT granted"; exit 1
fi
