package webknock_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestEveryTestDefinesUpdate: `go test ./... -update` stops with "flag
// provided but not defined" in any test binary that lacks -update, so
// every one must link internal/golden, which defines it. A package with
// no golden file imports it in golden_flag_test.go.
func TestEveryTestDefinesUpdate(t *testing.T) {
	const golden = "github.com/webknock/webknock/internal/golden"
	// With -test, go list also lists each test binary, "PKG.test", with
	// everything it links.
	out, err := exec.Command("go", "list", "-test", "-f", `{{.ImportPath}}{{range .Deps}}|{{.}}{{end}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	binaries := 0
	for line := range strings.Lines(string(out)) {
		fields := strings.Split(strings.TrimSpace(line), "|")
		if !strings.HasSuffix(fields[0], ".test") {
			continue
		}
		binaries++
		if !slices.ContainsFunc(fields[1:], func(dep string) bool {
			return dep == golden || strings.HasPrefix(dep, golden+" [")
		}) {
			t.Errorf("%s does not link %s: `go test ./... -update` fails there; add a golden_flag_test.go that imports it",
				strings.TrimSuffix(fields[0], ".test"), golden)
		}
	}
	if binaries < 5 {
		t.Fatalf("found %d test binaries; go list output: %s", binaries, out)
	}
}
