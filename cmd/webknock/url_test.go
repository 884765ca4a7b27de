package main

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/webknock/webknock/knock"
)

// kaAt is the time of the known-answer vectors of knock/derive_test.go:
// T = 29000000 of 60 s steps, 58000000 of 30 s steps.
const kaAt = "2025-02-19T21:20:00Z"

// kaPassphrase made carol's key (with the salt 0..15).
const kaPassphrase = "correct horse battery staple"

// kaPaths are the paths of each sequence of oneTimeFixture at kaAt, as
// knock/derive_test.go's independent vectors give them.
var kaPaths = map[string][]string{
	"alice": {"/o/EhLoPRYwFyvlcYIWUaq2FP", "/o/R1CIBn5hN_1ofVo7mkMR6d", "/o/D1vqnsRa2s9ydmb894Vg0c"},
	"bob":   {"/k/bob1", "/k/bob2", "/t/691415"},
	"carol": {"/p/9XPezBOcHUaz_u3UFRaty0", "/p/pOB_SrcpGDGaCiZxdC0MKW", "/p/dCuL8zP9d7CkQKF_oAuJbM"},
	"ssh":   {"/k/7f3a9c", "/k/91c2e0", "/k/open"},
}

// oneTimeFixture writes a configuration with a sequence of each kind: alice
// (hmac) and bob (totp) with the key 0..31, carol (hmac) with the key made
// from kaPassphrase, ssh (static).
func oneTimeFixture(t *testing.T) (dir, cfgPath string) {
	t.Helper()
	dir = t.TempDir()
	ka := make([]byte, knock.KeyBytes)
	for i := range ka {
		ka[i] = byte(i)
	}
	carol, err := hex.DecodeString("ef177144eec9420cbc1093d2a8b344a92bc506d0d4ec9c028dd19f8324d8c1e6")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]knock.KeyFile{
		"alice.key": {Key: ka},
		"bob.key":   {Key: ka},
		"carol.key": {Key: carol, Salt: ka[:knock.SaltBytes]},
	}
	for name, kf := range keys {
		if err := os.WriteFile(filepath.Join(dir, name), knock.EncodeKeyFile(kf), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	text := `log:
  paths: [/var/log/nginx/access.log]
firewall:
  backend: dry-run
web:
  listen: ""
sequences:
  - name: alice
    one_time: {key_file: DIR/alice.key, prefix: /o/, steps: 2, period: 1m, skew: 1}
  - name: bob
    steps: [/k/bob1, /k/bob2]
    one_time: {key_file: DIR/bob.key, mode: totp, prefix: /t/, skew: 2}
  - name: carol
    one_time: {key_file: DIR/carol.key, prefix: /p/, steps: 2, skew: 0}
  - name: ssh
    steps: [/k/7f3a9c, /k/91c2e0]
    knock_page: /k/open
`
	cfgPath = filepath.Join(dir, "webknock.yaml")
	if err := os.WriteFile(cfgPath, []byte(strings.ReplaceAll(text, "DIR", dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, cfgPath
}

func TestURL(t *testing.T) {
	_, cfg := oneTimeFixture(t)
	join := func(base string, paths ...string) string {
		var b strings.Builder
		for _, p := range paths {
			b.WriteString(base + p + "\n")
		}
		return b.String()
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string   // exactly, when the exit code is 0
		prefix bool     // stdout only starts with stdout
		stderr []string // substrings
	}{
		{name: "hmac", args: []string{"--sequence", "alice", "--at", kaAt}, stdout: join("", kaPaths["alice"]...),
			stderr: []string{"T=29000000", "current until 2025-02-19T21:21:00Z", "accepts them until 2025-02-19T21:22:00Z (skew 1", "at most once"}},
		{name: "end of the step", args: []string{"--sequence", "alice", "--at", "2025-02-19T21:20:59.999Z"}, stdout: join("", kaPaths["alice"]...)},
		{name: "next step", args: []string{"--sequence", "alice", "--at", "2025-02-19T22:21:00+01:00"}, stdout: "/o/4N5ZWJa3PZ9xJQS6aXcEwe\n", prefix: true,
			stderr: []string{"T=29000001"}},
		{name: "base", args: []string{"--sequence", "alice", "--at", kaAt, "--base", "https://knock.example:8443/"},
			stdout: join("https://knock.example:8443", kaPaths["alice"]...)},
		{name: "totp", args: []string{"--sequence", "bob", "--at", kaAt, "--base", "http://knock.example"}, stdout: join("http://knock.example", kaPaths["bob"]...),
			stderr: []string{"T=58000000 of 30s", "current until 2025-02-19T21:20:30Z", "accepts them until 2025-02-19T21:21:30Z (skew 2"}},
		{name: "passphrase key", args: []string{"--sequence", "carol", "--at", kaAt}, stdout: join("", kaPaths["carol"]...),
			stderr: []string{"T=29000000", "current until 2025-02-19T21:21:00Z; each"}},
		{name: "static", args: []string{"--sequence", "ssh"}, stdout: join("", kaPaths["ssh"]...), stderr: []string{"static paths; they never change"}},
		{name: "unknown sequence", args: []string{"--sequence", "dave"}, code: exitUsage,
			stderr: []string{`unknown sequence "dave"`, "has alice, bob, carol, ssh"}},
		{name: "no sequence", args: nil, code: exitUsage, stderr: []string{"--sequence NAME is required", "has alice, bob, carol, ssh"}},
		{name: "bad time", args: []string{"--sequence", "alice", "--at", "2025-02-19 21:20"}, code: exitUsage, stderr: []string{"bad --at"}},
		{name: "base with a path", args: []string{"--sequence", "alice", "--base", "https://knock.example/site"}, code: exitUsage, stderr: []string{"bad --base"}},
		{name: "base without scheme", args: []string{"--sequence", "alice", "--base", "knock.example"}, code: exitUsage, stderr: []string{"bad --base"}},
		{name: "base with a query", args: []string{"--sequence", "alice", "--base", "https://knock.example/?a=b"}, code: exitUsage, stderr: []string{"bad --base"}},
		{name: "base with a bad host", args: []string{"--sequence", "alice", "--base", "https://knock.example;script-src"}, code: exitUsage, stderr: []string{"bad --base"}},
		{name: "base IPv6", args: []string{"--sequence", "ssh", "--base", "http://[::1]:8080"}, stdout: join("http://[::1]:8080", kaPaths["ssh"]...)},
		{name: "argument", args: []string{"--sequence", "alice", "x"}, code: exitUsage, stderr: []string{`unexpected argument "x"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"url", "-c", cfg}, tc.args...)
			out, errOut, code := runCmd(t, "", args...)
			match := out == tc.stdout || tc.prefix && strings.HasPrefix(out, tc.stdout) && strings.Count(out, "\n") == 3
			bad := code != tc.code || (code == 0 && !match) || (code != 0 && out != "")
			for _, s := range tc.stderr {
				bad = bad || !strings.Contains(errOut, s)
			}
			if bad {
				t.Errorf("webknock %q = exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit %d, stdout:\n%s\nstderr with %q", args, code, out, errOut, tc.code, tc.stdout, tc.stderr)
			}
		})
	}
}

// TestURLKeyFileRule: url reads keys under the rule of run.
func TestURLKeyFileRule(t *testing.T) {
	dir, cfg := oneTimeFixture(t)
	if err := os.Chmod(filepath.Join(dir, "alice.key"), 0o640); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCmd(t, "", "url", "-c", cfg, "--sequence", "alice")
	if code != exitFail || out != "" || !strings.Contains(errOut, "chmod 600") {
		t.Errorf("url with a group-readable key = exit %d, stdout %q, stderr %q; want exit %d naming chmod 600", code, out, errOut, exitFail)
	}
}
