package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/webknock/webknock/internal/golden"
)

// runCmd runs the command line in-process.
func runCmd(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(stdin), &o, &e)
	return o.String(), e.String(), code
}

// TestReplayGolden replays every testdata/replay/<case>.log with its
// <case>.yaml and compares the JSON events and the summary with
// <case>.golden. Each case is also replayed parsing every line, which must
// give exactly the same events: the chunk search may skip only lines that
// cannot matter.
func TestReplayGolden(t *testing.T) {
	logs, err := filepath.Glob("../../testdata/replay/*.log")
	if err != nil || len(logs) == 0 {
		t.Fatalf("no replay cases: %v", err)
	}
	for _, log := range logs {
		name := strings.TrimSuffix(filepath.Base(log), ".log")
		t.Run(name, func(t *testing.T) {
			cfg := withKeys(t, strings.TrimSuffix(log, ".log")+".yaml")
			// Events name the log as given: by its name alone.
			t.Chdir(filepath.Dir(log))
			log := filepath.Base(log)
			out, errOut, code := runCmd(t, "", "replay", "--json", "-c", cfg, log)
			if code != 0 {
				t.Fatalf("replay exit %d: %s", code, errOut)
			}
			golden.Check(t, name+".golden", []byte(out+"# "+errOut))
			all, errAll, code := runCmd(t, "", "replay", "--json", "--parse-all", "-c", cfg, log)
			if code != 0 || all != out {
				t.Errorf("--parse-all gave other events (exit %d, %s):\n%s\nwant:\n%s", code, errAll, all, out)
			}
		})
	}
}

// withKeys copies the configuration cfg and the key files beside it
// (*.key) into a directory of the test's and returns the copy's path: git
// keeps no file modes but the executable bit, and a key file must be 0600.
func withKeys(t *testing.T, cfg string) string {
	t.Helper()
	dir := t.TempDir()
	keys, _ := filepath.Glob(filepath.Join(filepath.Dir(cfg), "*.key"))
	for _, f := range append(keys, cfg) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, filepath.Base(cfg))
}
