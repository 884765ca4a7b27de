package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// brokenCase is a configuration that check must refuse, and run too,
// with the same words and before it touches anything.
type brokenCase struct {
	name string
	// yaml replaces the line starting with its first key's text in the
	// template, or is appended; "{dir}" is the test's directory.
	edit  map[string]string
	setup func(t *testing.T, dir string)
	want  string // in the problem report of both
	root  bool   // needs root (chown)
}

// checkTemplate is a valid configuration; each case breaks one thing.
const checkTemplate = `log:
  paths: [{dir}/logs/access.log]
  format: combined
  start: end
state_dir: {dir}/state
firewall:
  backend: dry-run
  chain: WEBKNOCK
  hook: INPUT
sequences:
  - name: ssh
    steps: [/k/a1, /k/b2]
    knock_page: /k/open
    ports: [22/tcp]
web:
  listen: ""
  token_file: {dir}/token
  socket: {dir}/run/webknock.sock
`

func writeCase(t *testing.T, dir string, edit map[string]string) string {
	t.Helper()
	lines := strings.Split(checkTemplate, "\n")
	for prefix, repl := range edit {
		done := false
		for i, l := range lines {
			if strings.HasPrefix(l, prefix) {
				lines[i] = repl
				done = true
				break
			}
		}
		if !done {
			lines = append(lines, repl)
		}
	}
	text := strings.ReplaceAll(strings.Join(lines, "\n"), "{dir}", dir)
	path := filepath.Join(dir, "webknock.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func caseDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"logs", "run"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func brokenCases() []brokenCase {
	mkdir := func(mode os.FileMode) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			if err := os.Mkdir(filepath.Join(dir, "state"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(dir, "state"), mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	plant := func(name string, mode os.FileMode) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			mkdir(0o700)(t, dir)
			p := filepath.Join(dir, "state", name)
			if err := os.WriteFile(p, []byte(`{"version":1}`), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	listen := map[string]string{"  listen:": `  listen: "127.0.0.1:7999"`}
	with := func(m map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for a, b := range m {
			out[a] = b
		}
		return out
	}
	// oneTime adds a second sequence, one-time with key file path.
	oneTime := func(path, mode string) map[string]string {
		steps := ""
		if mode == "totp" {
			steps = "    steps: [/t/x1]\n"
		}
		return map[string]string{"web:": "  - name: alice\n" + steps + "    one_time:\n      key_file: " + path + "\n      mode: " + mode + "\n      prefix: /k/\nweb:"}
	}
	file := func(name, text string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	key := func(name string, mode os.FileMode) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			file(name, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")(t, dir)
			if err := os.Chmod(filepath.Join(dir, name), mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	return []brokenCase{
		{name: "close on connect with iptables", edit: map[string]string{"    ports:": "    ports: [22/tcp]\n    close_on_connect: true"},
			want: "close_on_connect needs firewall.backend nftables"},
		{name: "close on connect with a network", edit: map[string]string{"  backend:": "  backend: nftables",
			"    ports:": "    ports: [22/tcp]\n    close_on_connect: true\n    grant_prefix: {ipv4: 24}"}, want: "sequences[0].close_on_connect:"},
		{name: "nftables hook DOCKER-USER", edit: map[string]string{"  backend:": "  backend: nftables", "  hook:": "  hook: DOCKER-USER"},
			want: "firewall.hook: \"DOCKER-USER\" is not an nftables hook webknock uses: want input or forward; for Docker's containers, forward"},
		{name: "nftables table name", edit: map[string]string{"  backend:": "  backend: nftables", "  chain:": "  table: 9wk"}, want: "firewall.table:"},
		{name: "chain starting with a dash", edit: map[string]string{"  chain:": `  chain: "-WK"`}, want: "firewall.chain:"},
		{name: "chain built in", edit: map[string]string{"  chain:": "  chain: INPUT"}, want: "firewall.chain:"},
		{name: "chain is the hook", edit: map[string]string{"  chain:": "  chain: DOCKER-USER", "  hook:": "  hook: DOCKER-USER"}, want: "firewall.chain:"},
		{name: "fleet trusted key not base64", edit: map[string]string{"fleet:": "fleet:\n  role: enforcer\n  servers: [nats://127.0.0.1:4222]\n  trusted_keys: [not-a-key]"},
			want: "fleet.trusted_keys[0]:"},
		{name: "fleet server not a nats URL", edit: map[string]string{"fleet:": "fleet:\n  role: enforcer\n  servers: [http://127.0.0.1:4222]\n  trusted_keys: [cmK7tO1N0t0rS4v4YQ8vC3R8w0l0uG2z7h9l0b9cXyM=]"},
			want: "fleet.servers: bad server \"http://127.0.0.1:4222\""},
		{name: "fleet signing key missing", edit: map[string]string{"fleet:": "fleet:\n  role: detector\n  servers: [nats://127.0.0.1:4222]\n  signing_key_file: {dir}/none.key"},
			want: "fleet.signing_key_file:"},
		{name: "fleet signing key readable by others", edit: map[string]string{"fleet:": "fleet:\n  role: detector\n  servers: [nats://127.0.0.1:4222]\n  signing_key_file: {dir}/open.key"},
			setup: func(t *testing.T, dir string) {
				if err := os.WriteFile(filepath.Join(dir, "open.key"), []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			want: "fleet.signing_key_file:"},
		{name: "fleet group", edit: map[string]string{"fleet:": "fleet:\n  role: enforcer\n  group: a.b\n  servers: [nats://127.0.0.1:4222]\n  trusted_keys: [cmK7tO1N0t0rS4v4YQ8vC3R8w0l0uG2z7h9l0b9cXyM=]"},
			want: "fleet.group: bad group \"a.b\""},
		{name: "chain too long", edit: map[string]string{"  chain:": "  chain: " + strings.Repeat("C", 29)}, want: "firewall.chain:"},
		{name: "empty chain", edit: map[string]string{"  chain:": `  chain: ""`}, want: "firewall.chain:"},
		{name: "lower-case hook with iptables", edit: map[string]string{"  backend:": "  backend: iptables", "  hook:": "  hook: input"}, want: "firewall.hook:"},
		{name: "empty hook", edit: map[string]string{"  hook:": `  hook: ""`}, want: "firewall.hook:"},
		{name: "unknown backend", edit: map[string]string{"  backend:": "  backend: pf"}, want: "firewall.backend:"},
		{name: "relative state_dir", edit: map[string]string{"state_dir:": "state_dir: var/lib/webknock"}, want: "state_dir:"},
		{name: "empty state_dir", edit: map[string]string{"state_dir:": `state_dir: ""`}, want: "state_dir:"},
		{name: "world-writable state_dir", setup: mkdir(0o777), want: "state_dir:"},
		{name: "group-writable state_dir", setup: mkdir(0o770), want: "state_dir:"},
		{name: "state_dir owned by another user", setup: func(t *testing.T, dir string) {
			mkdir(0o700)(t, dir)
			if err := os.Chown(filepath.Join(dir, "state"), 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}, want: "state_dir:", root: true},
		{name: "grants file others may write", setup: plant("grants-dry-run.json", 0o666), want: "grants-dry-run.json"},
		{name: "positions file others may write", setup: plant("positions.json", 0o622), want: "positions.json"},
		{name: "missing token file", edit: with(listen, "  token_file:", "  token_file: {dir}/no-token"), want: "web.token_file:"},
		{name: "5-byte token", edit: listen, setup: func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, "token"), []byte("abcde"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, want: "web.token_file:"},
		{name: "grant to a /8", edit: map[string]string{"    ports:": "    ports: [22/tcp]\n    grant_prefix: {ipv4: 8}"}, want: "sequences[0].grant_prefix.ipv4: bad prefix length 8: a grant opens a network of /16 to /32"},
		{name: "grant to a /129", edit: map[string]string{"    ports:": "    ports: [22/tcp]\n    grant_prefix: {ipv6: 129}"}, want: "sequences[0].grant_prefix.ipv6: bad prefix length 129"},
		{name: "relative socket", edit: map[string]string{"  socket:": "  socket: run/webknock.sock"}, want: "web.socket:"},
		{name: "socket directory others may write", setup: func(t *testing.T, dir string) {
			if err := os.Chmod(filepath.Join(dir, "run"), 0o777); err != nil {
				t.Fatal(err)
			}
		}, want: "web.socket:"},
		{name: "bad listen", edit: map[string]string{"  listen:": `  listen: "localhost"`}, want: "web.listen:"},
		{name: "no log paths", edit: map[string]string{"  paths:": "  paths: []"}, want: "log.paths:"},
		{name: "syslog over tcp off loopback without TLS", edit: map[string]string{"  start:": "  start: end\n  syslog:\n    listen: [\"tcp:0.0.0.0:6514\"]"},
			want: `webknock.yaml:6: log.syslog.listen[0]: "tcp:0.0.0.0:6514": not loopback: needs log.syslog.tls cert_file, key_file and client_ca_file`},
		{name: "syslog listen string", edit: map[string]string{"  start:": "  start: end\n  syslog:\n    listen: [\"udp:localhost:5514\"]"},
			want: `log.syslog.listen[0]: "udp:localhost:5514"`},
		{name: "syslog socket in a directory others may write", edit: map[string]string{"  start:": "  start: end\n  syslog:\n    listen: [\"unixgram:{dir}/open/log.sock\"]"},
			setup: func(t *testing.T, dir string) {
				if err := os.Mkdir(filepath.Join(dir, "open"), 0o777); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(filepath.Join(dir, "open"), 0o777); err != nil {
					t.Fatal(err)
				}
			}, want: "log.syslog.listen[0]:"},
		{name: "bad step path", edit: map[string]string{"    steps:": "    steps: [k/a1, /k/b2]"}, want: "sequences[0].steps[0]:"},
		{name: "bad port", edit: map[string]string{"    ports:": "    ports: [22/sctp]"}, want: "sequences[0].ports[0]:"},
		{name: "unknown key", edit: map[string]string{"  start:": "  strat: end"}, want: "log.strat: unknown key"},
		{name: "unknown format variable", edit: map[string]string{"  format:": `  format: '$remote_addr [$time_local] "$request" $status $bogus'`}, want: "log.format:"},
		{name: "one-time key others may read", edit: oneTime("{dir}/alice.key", "hmac"), setup: key("alice.key", 0o644), want: "sequences[1].one_time.key_file:"},
		{name: "one-time key missing", edit: oneTime("{dir}/none.key", "hmac"), want: "sequences[1].one_time.key_file:"},
		{name: "one-time key too short", edit: oneTime("{dir}/short.key", "hmac"), setup: file("short.key", "AAAA\n"), want: "sequences[1].one_time.key_file:"},
		{name: "static path shaped like a one-time path", edit: with(oneTime("{dir}/alice.key", "totp"), "    steps:", "    steps: [/k/123456, /k/b2]"),
			setup: key("alice.key", 0o600), want: "sequences[0].steps[0]:"},
		{name: "corrupt one-time state", setup: func(t *testing.T, dir string) {
			mkdir(0o700)(t, dir)
			file("state/onetime.json", "{not json")(t, dir)
		}, want: "onetime.json"},
		{name: "bad ipv6 switch", edit: map[string]string{"  hook:": "  hook: INPUT\n  ipv6: maybe"}, want: "firewall.ipv6:"},
		{name: "check interval too short", edit: map[string]string{"  hook:": "  hook: INPUT\n  check_interval: 10ms"},
			want: "webknock.yaml:10: firewall.check_interval: bad check_interval 10ms: want 1s or more, or leave it out for the backend's own"},
		{name: "grant cap of 0", edit: map[string]string{"  hook:": "  hook: INPUT\n  max_grants_per_ipv6_64: 0"},
			want: "webknock.yaml:10: firewall.max_grants_per_ipv6_64: bad max_grants_per_ipv6_64 0: want 1 or more live grants"},
		{name: "grant cap not a number", edit: map[string]string{"  hook:": "  hook: INPUT\n  max_grants_per_sequence: all"},
			want: "webknock.yaml:10: firewall.max_grants_per_sequence: want an integer"},
		{name: "max grants beyond the state file", edit: map[string]string{"  hook:": "  hook: INPUT\n  max_grants: 1000000"},
			want: "webknock.yaml:10: firewall.max_grants: 1000000 grants: at most 131072 allowed"},
		{name: "grant cap beyond the state file", edit: map[string]string{"  hook:": "  hook: INPUT\n  max_grants_per_ipv4_24: 1000000"},
			want: "webknock.yaml:10: firewall.max_grants_per_ipv4_24: 1000000 grants: at most 131072 allowed"},
		{name: "relative hook program", edit: hooks("on_grant: [logger, \"{ip}\"]"), want: `hooks.on_grant[0]: program "logger" is not an absolute path`},
		{name: "unknown hook placeholder", edit: hooks("on_grant: [/bin/echo, \"ip={addr}\"]"), want: "hooks.on_grant[1]: unknown placeholder {addr}"},
		{name: "unbalanced brace in a hook", edit: hooks("on_end: [/bin/echo, \"{ip\"]"), want: `hooks.on_end[1]: unbalanced "{" at byte 0`},
		{name: "placeholder in a hook program", edit: hooks("on_end: [\"/bin/{event}\"]"), want: "hooks.on_end[0]: program \"/bin/{event}\" holds a placeholder"},
		{name: "missing hook program", edit: hooks("on_lockout: [{dir}/no-hook]"), want: "hooks.on_lockout[0]: hook program: stat"},
		{name: "hook program others may write", edit: hooks("on_grant: [{dir}/hook]"), setup: hookProgram("hook", 0o777, 0, false),
			want: "has mode 0777: other users may change what webknock runs"},
		{name: "hook program not executable", edit: hooks("on_grant: [{dir}/hook]"), setup: hookProgram("hook", 0o644, 0, false),
			want: "is not executable (mode 0644)"},
		{name: "hook program in a directory others may write", edit: hooks("on_end: [{dir}/bin/hook]"), setup: hookProgram("bin/hook", 0o755, 0o777, false),
			want: "has mode 0777: other users may replace the program"},
		{name: "hook program owned by another user", edit: hooks("on_grant: [{dir}/hook]"), setup: hookProgram("hook", 0o755, 0, true),
			want: "is owned by uid 65534, neither webknock's uid", root: true},
		{name: "hook program a directory", edit: hooks("on_grant: [{dir}/logs]"), want: "is not a regular file (d"},
		{name: "bad hook timeout", edit: hooks("timeout: 0s"), want: "hooks.timeout: bad timeout"},
	}
}

// TestCheckAndRunAgree: every broken configuration is refused by check and
// by run, with the same problem, and run refuses before it touches
// anything (it never gets to the firewall, whose state file it would write).
func TestCheckAndRunAgree(t *testing.T) {
	cases := brokenCases()
	if len(cases) < 20 {
		t.Fatalf("%d cases; want at least 20", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("needs root to chown")
			}
			dir := caseDir(t)
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			cfg := writeCase(t, dir, tc.edit)
			_, checkErr, code := runCmd(t, "", "check", "-c", cfg)
			if code != exitFail || !strings.Contains(checkErr, tc.want) {
				t.Errorf("check = exit %d, stderr:\n%s\nwant exit %d naming %q", code, checkErr, exitFail, tc.want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var o, e bytes.Buffer
			code = run(ctx, []string{"run", "-c", cfg}, strings.NewReader(""), &o, &e)
			if ctx.Err() != nil {
				t.Fatalf("run started with a configuration check refuses; stderr:\n%s", e.String())
			}
			if code != exitFail || !strings.Contains(e.String(), tc.want) {
				t.Errorf("run = exit %d, stderr:\n%s\nwant exit %d naming %q", code, e.String(), exitFail, tc.want)
			}
			if _, err := os.Stat(filepath.Join(dir, "state", "grants-dry-run.json")); err == nil && tc.setup == nil {
				t.Error("run wrote the firewall's state file: it got as far as the firewall")
			}
		})
	}
}

// TestCheckAcceptsWhatRunAccepts: the valid template passes check, with
// the warnings of its risky choices, and run starts on it.
func TestCheckAcceptsWhatRunAccepts(t *testing.T) {
	dir := caseDir(t)
	cfg := writeCase(t, dir, map[string]string{"  listen:": `  listen: "0.0.0.0:17999"`, "firewall:": "firewall:\n  protect: true"})
	out, errOut, code := runCmd(t, "", "check", "-c", cfg)
	if code != exitOK || !strings.Contains(out, "ok: 1 sequence(s)") {
		t.Fatalf("check = exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "warning: "+cfg+":17: web.listen:") {
		t.Errorf("check stderr:\n%s\nwant a warning about web.listen off loopback", errOut)
	}
}
