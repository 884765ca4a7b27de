package main

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/webknock/webknock/config"
)

// TestHelp: help, for the program and for each command, is printed once,
// to standard output, with exit 0; a usage error goes to standard error
// with exit 2.
func TestHelp(t *testing.T) {
	type call struct {
		args []string
		want string // in stdout
	}
	calls := []call{
		{[]string{"--help"}, "Commands:"},
		{[]string{"-h"}, "Commands:"},
		{[]string{"help"}, "Commands:"},
		{[]string{"help", "replay"}, "webknock replay -c FILE"},
	}
	for _, c := range commands {
		calls = append(calls, call{[]string{c.name, "--help"}, "webknock " + c.name},
			call{[]string{c.name, "-h"}, "webknock " + c.name})
	}
	for _, c := range calls {
		out, errOut, code := runCmd(t, "", c.args...)
		if code != exitOK || errOut != "" || !strings.Contains(out, c.want) || strings.Count(out, "Usage:") != 1 {
			t.Errorf("webknock %q = exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit 0, help once on stdout with %q, nothing on stderr",
				c.args, code, out, errOut, c.want)
		}
	}
	for _, args := range [][]string{nil, {"frobnicate"}, {"replay", "--bogus"}, {"revoke", "--state-dir", "/tmp"}} {
		out, errOut, code := runCmd(t, "", args...)
		if code != exitUsage || out != "" || errOut == "" {
			t.Errorf("webknock %q = exit %d, stdout %q, stderr %q; want exit %d and only stderr", args, code, out, errOut, exitUsage)
		}
	}
}

// TestCommandFlags: a command's help lists only the flags it uses; the
// configuration overrides appear only where the key they override is used.
func TestCommandFlags(t *testing.T) {
	all := []string{"--log-format", "--log-start", "--log-paths", "--state-dir", "--firewall-backend", "--web-listen"}
	tests := []struct {
		cmd  string
		want []string
	}{
		{"run", append([]string{"--config", "--json-logs", "--debug"}, all...)},
		{"check", append([]string{"--config"}, all...)},
		{"replay", []string{"--config", "--json", "--parse-all", "--log-format"}},
		{"flush", []string{"--config", "--state-dir", "--firewall-backend"}},
		{"status", []string{"--config"}},
		{"revoke", []string{"--config"}},
		{"unlock", []string{"--config"}},
		{"grant", []string{"--config", "--for", "--sequence"}},
		{"url", []string{"--config", "--sequence", "--at", "--base"}},
		{"version", nil},
	}
	daemonOnly := append([]string{"--json-logs", "--debug"}, all...)
	lists := func(help, flag string) bool {
		return regexp.MustCompile(`(?m)^ +(-., )?` + flag + `[ \[]`).MatchString(help)
	}
	for _, tc := range tests {
		out, _, code := runCmd(t, "", tc.cmd, "--help")
		if code != exitOK {
			t.Fatalf("webknock %s --help = exit %d", tc.cmd, code)
		}
		for _, f := range daemonOnly {
			if listed := lists(out, f); listed != slices.Contains(tc.want, f) {
				t.Errorf("webknock %s --help lists %s: %v, want %v:\n%s", tc.cmd, f, listed, !listed, out)
			}
		}
		for _, f := range tc.want {
			if !lists(out, f) {
				t.Errorf("webknock %s --help lacks %s:\n%s", tc.cmd, f, out)
			}
		}
	}
	for _, c := range commands {
		for _, k := range c.overrides {
			if !slices.Contains(config.FlagKeys(), k) {
				t.Errorf("command %s overrides %q, which no flag overrides", c.name, k)
			}
		}
		if len(c.overrides) > 0 && !c.config {
			t.Errorf("command %s has overrides but loads no configuration", c.name)
		}
	}
}

// TestStatusNoDaemon: when nothing answers on web.socket, status names the
// socket it tried and says why that may be: the daemon is down, or it runs
// with another configuration file.
func TestStatusNoDaemon(t *testing.T) {
	example, err := os.ReadFile("../../testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	withSocket := func(name, socket string) string {
		cfg := filepath.Join(dir, name)
		if err := os.WriteFile(cfg, append(example, "  socket: "+socket+"\n"...), 0o644); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	missing := filepath.Join(dir, "missing.sock")
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	tests := []struct {
		name, socket, why string
	}{
		{"no socket file", missing, "no daemon has made that socket"},
		{"refused", stale, "the socket is there but no daemon answers on it"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := withSocket(tc.name+".yaml", tc.socket)
			out, errOut, code := runCmd(t, "", "status", "-c", cfg)
			for _, want := range []string{"cannot reach the daemon on " + tc.socket, "hint: " + tc.why,
				"the daemon is probably not running", "web.socket is not the one in " + cfg, "-c FILE"} {
				if !strings.Contains(errOut, want) {
					t.Errorf("status stderr lacks %q:\n%s", want, errOut)
				}
			}
			if code != exitFail || out != "" {
				t.Errorf("status = exit %d, stdout %q; want exit %d and no output", code, out, exitFail)
			}
		})
	}
}

// TestFormatMain: format: main, the name of nginx's default log_format,
// is refused once, on log.format, with the format to paste instead.
func TestFormatMain(t *testing.T) {
	example, err := os.ReadFile("../../testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "main.yaml")
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(example), "format: combined", "format: main", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	const paste = `format: '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" "$http_x_forwarded_for"'`
	for _, args := range [][]string{
		{"check", "-c", cfg},
		{"replay", "-c", "../../testdata/example.yaml", "--log-format", "main", "../../testdata/example.log"},
	} {
		_, errOut, code := runCmd(t, "", args...)
		if code != exitFail || !strings.Contains(errOut, `log.format: "main" is the name nginx.conf gives its default log_format, not a format`) ||
			!strings.Contains(errOut, paste) || !strings.Contains(errOut, "combined is the built-in equivalent without the last field") {
			t.Errorf("webknock %q = exit %d, stderr:\n%s\nwant exit %d explaining main with %s", args, code, errOut, exitFail, paste)
		}
		if strings.Contains(errOut, "trusted_proxies") {
			t.Errorf("webknock %q blames log.trusted_proxies for the format:\n%s", args, errOut)
		}
	}
	// The pasted format reads the lines nginx writes with it.
	line := `203.0.113.9 - - [22/Nov/2026:19:01:02 +0000] "GET /k/7f3a9c HTTP/1.1" 404 1 "-" "curl/8" "-"` + "\n"
	format := strings.Trim(strings.TrimPrefix(paste, "format: "), "'")
	if out, errOut, code := runCmd(t, line, "replay", "--json", "-c", "../../testdata/example.yaml", "--log-format", format, "-"); code != exitOK || !strings.Contains(out, `"event":"step"`) {
		t.Errorf("replay with nginx's main format = exit %d\n%s%s", code, out, errOut)
	}
}
