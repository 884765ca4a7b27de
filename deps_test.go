// Package webknock_test keeps the dependency direction of DESIGN.md true.
package webknock_test

import (
	"os/exec"
	"strings"
	"testing"

	// Registers -update, so that `go test ./... -update` runs here too.
	_ "github.com/webknock/webknock/internal/golden"
)

// TestDependencyDirection lists each package's dependencies inside the
// module: leaf packages import none but internal/statedir (the one owner of
// state files), web only knock and firewall.
func TestDependencyDirection(t *testing.T) {
	const mod = "github.com/webknock/webknock/"
	allowed := map[string][]string{
		"weblog":            {"internal/statedir"},
		"knock":             nil,
		"firewall":          {"internal/statedir"},
		"config":            nil,
		"fleet":             nil,
		"web":               {"knock", "firewall", "internal/statedir"},
		"internal/statedir": nil,
		"internal/hook":     nil,
	}
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(fields[0], mod)
		ok, constrained := allowed[pkg]
		if !constrained {
			continue
		}
		seen++
		for _, dep := range fields[1:] {
			if !strings.HasPrefix(dep, mod) {
				continue
			}
			d := strings.TrimPrefix(dep, mod)
			permitted := false
			for _, a := range ok {
				permitted = permitted || a == d
			}
			if !permitted {
				t.Errorf("%s imports %s; DESIGN.md allows %v", pkg, d, ok)
			}
		}
	}
	if seen < 3 {
		t.Fatalf("checked %d packages; go list output: %s", seen, out)
	}
}
