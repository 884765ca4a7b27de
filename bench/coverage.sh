#!/usr/bin/env bash
# Line coverage of the unit and end-to-end tests together. The end-to-end
# tests need root and nginx-light, apache2, iptables and curl; the webknock
# daemons they start are built with -cover and write their data too.
# Usage: sudo bench/coverage.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/out/coverage
rm -rf "$out" && mkdir -p "$out/unit" "$out/e2e"
export GOCOVERDIR="$PWD/$out/e2e"
WK_E2E=require go test -count=1 -cover -coverpkg=github.com/webknock/webknock/... ./... \
  -args -test.gocoverdir="$PWD/$out/unit" > "$out/test.log"
go tool covdata textfmt -i="$out/unit,$out/e2e" -o "$out/cover.txt"
# bench/ holds the benchmark's log generator, not webknock.
grep -v '/bench/' "$out/cover.txt" > "$out/cover-webknock.txt"
go tool cover -func="$out/cover-webknock.txt" > "$out/func.txt"
go tool covdata percent -i="$out/unit,$out/e2e" | grep -v '/bench/'
tail -n 1 "$out/func.txt"
