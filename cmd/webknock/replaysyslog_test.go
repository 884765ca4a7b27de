package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReplaySyslog: the lines of a replay case sent as syslog messages
// (nginx's RFC 3164 datagrams written one per line, RFC 5424 with octet
// counting, as a relay writes them) replay to the same events; a
// malformed and a cut message are counted, not replayed.
func TestReplaySyslog(t *testing.T) {
	for _, name := range []string{"grant", "lockout", "reorder-two-servers"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := withKeys(t, "../../testdata/replay/"+name+".yaml")
			data, err := os.ReadFile("../../testdata/replay/" + name + ".log")
			if err != nil {
				t.Fatal(err)
			}
			var sb strings.Builder
			for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
				if i%2 == 0 {
					fmt.Fprintf(&sb, "<190>Nov 22 19:00:00 nginx: %s\n", line)
				} else {
					msg := "<190>1 2026-11-22T19:00:00.123Z web2 apache2 - - - " + line
					fmt.Fprintf(&sb, "%d %s", len(msg), msg)
				}
			}
			plain := filepath.Join(dir, name+".log")
			capture := filepath.Join(dir, name+".syslog")
			if err := os.WriteFile(plain, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(capture, []byte(sb.String()+"not syslog at all\n12 <190>1 cut"), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Chdir(dir)
			want, _, code := runCmd(t, "", "replay", "--json", "-c", cfg, name+".log")
			if code != 0 {
				t.Fatalf("replay exit %d", code)
			}
			got, errOut, code := runCmd(t, "", "replay", "--json", "--syslog", "-c", cfg, name+".syslog")
			if code != 0 {
				t.Fatalf("replay --syslog exit %d: %s", code, errOut)
			}
			if strings.ReplaceAll(got, name+".syslog", name+".log") != want {
				t.Errorf("replay --syslog:\n%s\nwant:\n%s", got, want)
			}
			if !strings.Contains(errOut, "2 skipped") {
				t.Errorf("summary %q: want the malformed and the cut message skipped", errOut)
			}
		})
	}
}
