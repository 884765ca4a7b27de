package config

import (
	"reflect"
	"testing"
	"time"
)

// TestHooks: the hooks section from the file and the environment, its
// defaults, and every problem with its line.
func TestHooks(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  []string
		want Hooks  // when err is ""
		err  string // every problem, the file named config.yaml
	}{
		{name: "defaults", yaml: seq, want: Hooks{Timeout: 10 * time.Second, MaxRunning: 4}},
		{name: "every key",
			yaml: "hooks:\n  on_grant: [/usr/bin/logger, -t, webknock, \"{event} {ip} {sequence} until {until} {ports}\"]\n" +
				"  on_end:\n    - /usr/local/bin/ended\n    - \"ip={ip}\"\n  on_lockout: [/bin/true]\n  timeout: 2s\n  max_running: 1\n" + seq,
			want: Hooks{
				OnGrant:   []string{"/usr/bin/logger", "-t", "webknock", "{event} {ip} {sequence} until {until} {ports}"},
				OnEnd:     []string{"/usr/local/bin/ended", "ip={ip}"},
				OnLockout: []string{"/bin/true"},
				Timeout:   2 * time.Second, MaxRunning: 1}},
		{name: "null and empty lists run nothing", yaml: "hooks:\n  on_grant:\n  on_end: []\n" + seq,
			want: Hooks{Timeout: 10 * time.Second, MaxRunning: 4}},
		{name: "environment: words, or a YAML list for arguments with spaces",
			yaml: "hooks:\n  on_grant: [/bin/false]\n  on_end: [/bin/false]\n" + seq,
			env: []string{
				"WEBKNOCK_HOOKS__ON_GRANT=/usr/bin/curl -fsS --data-urlencode ip={ip},{ports} https://h.example/x",
				`WEBKNOCK_HOOKS__ON_LOCKOUT=["/usr/bin/logger", "-t", "webknock", "locked out: {ip}", 'a,b']`,
				"WEBKNOCK_HOOKS__ON_END=",
				"WEBKNOCK_HOOKS__TIMEOUT=1m",
				"WEBKNOCK_HOOKS__MAX_RUNNING=8",
			},
			want: Hooks{
				OnGrant:   []string{"/usr/bin/curl", "-fsS", "--data-urlencode", "ip={ip},{ports}", "https://h.example/x"},
				OnLockout: []string{"/usr/bin/logger", "-t", "webknock", "locked out: {ip}", "a,b"},
				Timeout:   time.Minute, MaxRunning: 8}},

		{name: "relative program", yaml: "hooks:\n  on_grant: [logger, \"{ip}\"]\n" + seq,
			err: `config.yaml:2: hooks.on_grant[0]: program "logger" is not an absolute path; want a command like [/usr/bin/logger, -t, webknock, "{ip} {event}"], run without a shell`},
		{name: "empty program", yaml: "hooks:\n  on_end: [\"\"]\n" + seq,
			err: `config.yaml:2: hooks.on_end[0]: program "" is not an absolute path; want a command like [/usr/bin/logger, -t, webknock, "{ip} {event}"], run without a shell`},
		{name: "a string, not a list", yaml: "hooks:\n  on_grant: /usr/bin/logger {ip}\n" + seq,
			err: `config.yaml:2: hooks.on_grant: want a list of arguments, got "/usr/bin/logger {ip}"`},
		{name: "unquoted number", yaml: "hooks:\n  on_grant:\n    - /usr/bin/curl\n    - -m\n    - 5\n" + seq,
			err: `config.yaml:5: hooks.on_grant[2]: want a string, got 5; quote it`},
		{name: "bad timeout and bound", yaml: "hooks:\n  timeout: 0s\n  max_running: 0\n" + seq,
			err: "config.yaml:2: hooks.timeout: bad timeout \"0s\": want a positive duration up to 10m0s, like \"10s\"\n" +
				"config.yaml:3: hooks.max_running: bad max_running 0: want 1 to 64"},
		{name: "too long and too many", yaml: "hooks:\n  timeout: 11m\n  max_running: 65\n" + seq,
			err: "config.yaml:2: hooks.timeout: bad timeout \"11m0s\": want a positive duration up to 10m0s, like \"10s\"\n" +
				"config.yaml:3: hooks.max_running: bad max_running 65: want 1 to 64"},
		{name: "unknown key", yaml: "hooks:\n  on_knock: [/bin/true]\n" + seq,
			err: `config.yaml:2: hooks.on_knock: unknown key`},
		{name: "not a mapping", yaml: "hooks: [/bin/true]\n" + seq,
			err: `config.yaml:1: hooks: want a mapping of hooks settings, got a list`},
		{name: "bad environment", yaml: seq,
			env: []string{`WEBKNOCK_HOOKS__ON_GRANT=["/bin/echo", `, "WEBKNOCK_HOOKS__ON_END=echo {ip}", "WEBKNOCK_HOOKS__MAX_RUNNING=x",
				"WEBKNOCK_HOOKS__ON_LOCKOUT=[/bin/echo, [x]]"},
			err: "WEBKNOCK_HOOKS__MAX_RUNNING: hooks.max_running: want an integer, got \"x\"\n" +
				"WEBKNOCK_HOOKS__ON_END: hooks.on_end[0]: program \"echo\" is not an absolute path; want a command like [/usr/bin/logger, -t, webknock, \"{ip} {event}\"], run without a shell\n" +
				"WEBKNOCK_HOOKS__ON_GRANT: hooks.on_grant: bad list: want a command like [\"/usr/bin/logger\", \"-t\", \"webknock\"]: line 1: did not find expected node content\n" +
				"WEBKNOCK_HOOKS__ON_LOCKOUT: hooks.on_lockout[1]: want a string, got a list; quote it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, c := loadString(t, tt.yaml, Options{Environ: tt.env}, nil)
			if got != tt.err {
				t.Fatalf("Load(%q) errors:\n%s\nwant:\n%s", tt.yaml, got, tt.err)
			}
			if tt.err == "" && !reflect.DeepEqual(c.Hooks, tt.want) {
				t.Errorf("Load(%q).Hooks = %+v, want %+v", tt.yaml, c.Hooks, tt.want)
			}
		})
	}
}
