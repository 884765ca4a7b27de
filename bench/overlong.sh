#!/usr/bin/env bash
# Peak memory (the kernel's VmHWM) of `webknock run` while a followed log
# receives SIZE bytes without a newline (default 300 MB), then a knock: the
# line is buffered only up to the overlong-line limit, skipped, and the
# knock still opens. Fails unless run read the knock's three lines (and
# nothing of the overlong one), parsed them and granted it.
#   bench/overlong.sh [SIZE]
set -euo pipefail
size=${1:-300000000}
cd "$(dirname "$0")/.."
. bench/lib.sh
need jq jq
need curl curl
dir=$(mktemp -d)
pid=''
trap 'kill $pid 2> /dev/null || true; rm -rf "$dir"' EXIT
go build -o "$dir/webknock" ./cmd/webknock
: > "$dir/access.log"
cat > "$dir/webknock.yaml" << YAML
log:
  paths: [$dir/access.log]
  start: end
state_dir: $dir/state
firewall:
  backend: dry-run
sequences:
  - name: ssh
    steps: [/k/a1, /k/b2]
    knock_page: /k/open
web:
  listen: ""
  socket: $dir/run/webknock.sock
YAML
"$dir/webknock" run -c "$dir/webknock.yaml" --json-logs 2> "$dir/run.log" &
pid=$!
waitfor 10 logged "$dir/run.log" "webknock running" || fail "run did not start: $(cat "$dir/run.log")"
echo "RSS at start: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
head -c "$size" /dev/zero | tr '\0' 'x' >> "$dir/access.log"
now=$(LC_ALL=C date -u +%d/%b/%Y:%H:%M:%S)
for p in /k/a1 /k/b2 /k/open; do
  printf '\n203.0.113.7 - - [%s +0000] "GET %s HTTP/1.1" 404 1 "-" "-"' "$now" "$p" >> "$dir/access.log"
done
echo >> "$dir/access.log"
[ "$(stat -c %s "$dir/access.log")" -gt "$size" ] || fail "the log holds less than $size bytes"
check_lines "$dir/access.log" 4 # the overlong line and the knock's three
waitfor 120 logged "$dir/run.log" grant 203.0.113.7 || fail "run did not grant the knock within 120 s"
check_run "$dir/run/webknock.sock" "$dir/access.log" 3 3 1
echo "after $size bytes without a newline and a knock: peak RSS $(awk '/VmHWM/ {print $2, $3}' /proc/$pid/status)"
