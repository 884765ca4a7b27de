package main

// genlog has no golden files; importing the package registers -update, so
// that `go test ./... -update` runs here too.
import _ "github.com/webknock/webknock/internal/golden"
