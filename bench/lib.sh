# Sourced by the bench scripts: the checks that make a benchmark fail
# (exit 1, saying what went wrong) rather than print figures of work that
# was not done, and the generated logs they share.

fail() { echo "bench check FAILED: $*" >&2; exit 1; }

# need CMD PACKAGE: fail unless CMD can be run.
need() { command -v "$1" > /dev/null || fail "$(basename "$0") needs $1 (apt-get install $2)"; }

# check_lines FILE N: FILE holds N lines, and each ends with a newline.
check_lines() {
  local n
  n=$(wc -l < "$1")
  [ "$n" = "$2" ] || fail "$1 holds $n lines, want $2"
  [ ! -s "$1" ] || [ "$(tail -c 1 "$1" | od -An -c | tr -d ' ')" = '\n' ] || fail "$1 does not end with a newline"
}

# check_replay SUMMARY WHAT LINES PARSED GRANTS: the JSON summary that
# `replay --summary json` wrote as the last line of SUMMARY counts LINES
# lines read, PARSED lines parsed ("examined": every line examined), no
# line skipped and GRANTS grants ("-": any number).
check_replay() {
  local summary=$1 what=$2 lines=$3 parsed=$4 grants=$5 got gl ge gp gs gg
  got=$(tail -n 1 "$summary" | jq -r '"\(.lines) \(.examined) \(.parsed) \([.skipped[]] | add // 0) \(.grants)"' 2> /dev/null) ||
    fail "$what: no JSON summary in $summary: $(tail -n 3 "$summary")"
  read -r gl ge gp gs gg <<< "$got"
  [ "$gl" = "$lines" ] || fail "$what: replay read $gl lines, want $lines (the lines written)"
  [ "$parsed" != examined ] || parsed=$ge
  [ "$gp" = "$parsed" ] || fail "$what: replay parsed $gp lines, want $parsed"
  [ "$gs" = 0 ] || fail "$what: replay skipped $gs lines, want none: $(tail -n 1 "$summary")"
  [ "$grants" = - ] || [ "$gg" = "$grants" ] || fail "$what: replay granted $gg times, want $grants"
}

# metric SOCKET NAME: the value of the Prometheus series NAME (with its
# labels) that the daemon's admin socket serves, 0 if absent.
metric() {
  curl -sf --unix-socket "$1" http://webknock/metrics | awk -v n="$2" '$1 == n { v = $2 } END { printf "%d\n", v }'
}

# check_run SOCKET LOG LINES PARSED GRANTS: `webknock run`, on its admin
# socket, read LINES lines of LOG (waiting up to 30 s for them), parsed
# PARSED ("-": any number) and skipped none of those it examined, and holds
# GRANTS grants.
check_run() {
  local sock=$1 log=$2 lines=$3 want=$4 grants=$5 read skipped parsed held
  series() { echo "webknock_lines_total{file=\"$log\",result=\"$1\"}"; }
  waitfor 30 test "$(metric "$sock" "$(series read)")" -ge "$lines" || true
  read=$(metric "$sock" "$(series read)")
  parsed=$(metric "$sock" "$(series parsed)")
  skipped=$(metric "$sock" "$(series skipped)")
  held=$(metric "$sock" webknock_grants_active)
  [ "$read" = "$lines" ] || fail "run read $read lines of $log, want $lines (the lines written)"
  [ "$want" = - ] || [ "$parsed" = "$want" ] || fail "run parsed $parsed lines, want $want"
  [ "$skipped" = 0 ] || fail "run skipped $skipped of the lines it examined, want none"
  [ "$held" = "$grants" ] || fail "run holds $held grants, want $grants"
  echo "run: $read lines read, $parsed examined and parsed, none skipped; $held grant(s)"
}

# waitfor SECONDS CMD...: runs CMD every 20 ms until it succeeds; fails
# (returns 1) after SECONDS.
waitfor() {
  local end=$((SECONDS + $1))
  shift
  until "$@"; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.02
  done
}

# logged FILE MSG [IP]: the JSON log FILE holds a record MSG (of IP).
logged() {
  jq -n -e --arg m "$2" --arg ip "${3:-}" 'any(inputs; .msg == $m and ($ip == "" or .ip == $ip))' "$1" > /dev/null 2>&1
}

# genlog OUT ARGS...: writes bench/genlog's log with ARGS to OUT unless OUT
# was written by this very generator with these arguments.
genlog() {
  local out=$1 stamp
  shift
  stamp="$(sha256sum bench/genlog/main.go | cut -c1-16) $*"
  if [ -s "$out" ] && [ "$(cat "$out.genlog" 2> /dev/null)" = "$stamp" ]; then
    return
  fi
  rm -f "$out.genlog"
  go run ./bench/genlog "$@" > "$out"
  echo "$stamp" > "$out.genlog"
}
