#!/usr/bin/env bash
# Peak memory of `webknock run` while a followed log receives SIZE bytes
# without a newline (default 300 MB), then one knock step: the line is
# buffered only up to the overlong-line limit, and the step still arrives.
#   bench/overlong.sh [SIZE]
set -euo pipefail
size=${1:-300000000}
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
go build -o "$dir/webknock" ./cmd/webknock
: > "$dir/access.log"
cat > "$dir/webknock.yaml" <<YAML
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
"$dir/webknock" run -c "$dir/webknock.yaml" --debug 2> "$dir/run.log" &
pid=$!
until grep -q "webknock running" "$dir/run.log"; do sleep 0.1; done
echo "RSS at start: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
head -c "$size" /dev/zero | tr '\0' 'x' >> "$dir/access.log"
printf '\n203.0.113.7 - - [02/Dec/2026:02:00:00 +0000] "GET /k/a1 HTTP/1.1" 404 1 "-" "-"\n' >> "$dir/access.log"
until grep -q "msg=step" "$dir/run.log"; do sleep 0.1; done
echo "after $size bytes without a newline and one step: peak RSS $(awk '/VmHWM/ {print $2, $3}' /proc/$pid/status)"
