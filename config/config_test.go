package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/webknock/webknock/internal/golden"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// goodConfig is testdata/good.yaml.
func goodConfig() Config {
	return Config{
		File: "testdata/good.yaml",
		Log: Log{
			Paths:          []string{"/var/log/nginx/a.log", "/var/log/apache2/*.log"},
			Format:         "vhost_combined",
			Start:          "end",
			TrustedProxies: prefixes("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "172.16.0.0/12"),
			Reorder:        300 * time.Millisecond,
			Syslog: Syslog{
				Listen:      []string{"unixgram:/run/webknock/log.sock", "udp:127.0.0.1:5514", "tcp:0.0.0.0:6514"},
				AllowUIDs:   []uint32{0, 33, 65534},
				AllowFrom:   prefixes("198.51.100.0/24"),
				SocketGroup: 33,
				MaxMessage:  8192,
				MaxConns:    16,
				IdleTimeout: time.Minute,
				TLS:         SyslogTLS{CertFile: "/etc/webknock/syslog.crt", KeyFile: "/etc/webknock/syslog.key", ClientCAFile: "/etc/webknock/web-ca.crt"},
			},
		},
		StateDir: "/srv/webknock",
		Firewall: Firewall{
			Backend:     "dry-run",
			Chain:       "WK-CHAIN",
			Table:       "wk_table",
			Hook:        "DOCKER-USER",
			Protect:     false,
			IPv6:        false,
			AlwaysAllow: prefixes("198.51.100.0/24", "::1/128", "192.0.2.9/32"),

			MaxGrants:            4096,
			MaxGrantsPerSequence: 512,
			MaxGrantsPerIPv4Net:  16,
			MaxGrantsPerIPv6Net:  8,
		},
		Sequences: []Sequence{
			{
				Name:            "ssh",
				Steps:           []string{"/k/7f3a9c", "/k/91c2e0", "/k/00aa5d"},
				StepStatus:      []int{404, 410},
				Methods:         []string{"GET", "HEAD", "POST"},
				KnockPage:       "/k/open",
				KnockPageStatus: []int{200, 302},
				Timeout:         45 * time.Second,
				Window:          90 * time.Minute,
				Ports:           []Port{{22, "tcp"}, {2222, "tcp"}, {53, "udp"}, {8080, "tcp"}},

				ClosePage:          "/k/bye",
				CloseKillsSessions: true,
				AllowFrom:          prefixes("192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32"),
				Expires:            time.Date(2027, 1, 31, 17, 0, 0, 0, time.UTC),
				GrantPrefix:        GrantPrefix{IPv4: 24, IPv6: 64},
			},
			{
				Name:        "backup_2",
				Steps:       []string{"/b/one.txt", "/b/~two"},
				StepStatus:  []int{404},
				Methods:     []string{"GET", "HEAD"},
				KnockPage:   "/b/open",
				Timeout:     30 * time.Second,
				Window:      10 * time.Minute,
				Ports:       []Port{{22, "tcp"}},
				GrantPrefix: hostOnly,
			},
			{
				Name:       "alice",
				StepStatus: []int{404},
				Methods:    []string{"GET", "HEAD"},
				Timeout:    30 * time.Second,
				Window:     time.Hour,
				Ports:      []Port{{22, "tcp"}},
				OneTime: &OneTime{KeyFile: "/etc/webknock/keys/alice.key", Mode: ModeHMAC, Prefix: "/o/",
					Steps: 3, Period: 2 * time.Minute, Skew: 2},
				GrantPrefix: hostOnly,
			},
			{
				Name:        "bob",
				Steps:       []string{"/k/bob1"},
				StepStatus:  []int{404},
				Methods:     []string{"GET", "HEAD"},
				Timeout:     30 * time.Second,
				Window:      10 * time.Minute,
				Ports:       []Port{{22, "tcp"}},
				OneTime:     &OneTime{KeyFile: "testdata/keys/bob.key", Mode: ModeTOTP, Prefix: "/k/", Steps: 2, Period: 30 * time.Second, Skew: 1},
				GrantPrefix: hostOnly,
			},
		},
		Lockout: Lockout{Failures: 3, Period: 5 * time.Minute, Duration: time.Hour},
		Hooks: Hooks{
			OnGrant:    []string{"/usr/bin/curl", "-fsS", "-m", "5", "--data-urlencode", "ip={ip}", "https://hooks.example.com/webknock"},
			OnEnd:      []string{"/usr/bin/logger", "-t", "webknock", "{event}: {ip} {sequence}"},
			Timeout:    30 * time.Second,
			MaxRunning: 2,
		},
		Web: Web{Listen: "[::1]:9090", TokenFile: "/etc/webknock/other-token", Socket: "/run/wk/admin.sock"},
		Fleet: Fleet{Servers: []string{"nats://192.0.2.5:4222", "tls://192.0.2.6:4222"}, Role: "both", Group: "prod",
			CredentialsFile: "/etc/webknock/fleet.creds",
			TLS:             FleetTLS{CAFile: "/etc/webknock/nats-ca.crt", CertFile: "/etc/webknock/nats.crt", KeyFile: "/etc/webknock/nats.key"},
			SigningKeyFile:  "/etc/webknock/fleet.key", TrustedKeys: []string{"cmK7tO1N0t0rS4v4YQ8vC3R8w0l0uG2z7h9l0b9cXyM="}, Replicas: 3},
	}
}

// hostOnly is the default grant_prefix: the client's address alone.
var hostOnly = GrantPrefix{IPv4: 32, IPv6: 128}

// minimalConfig is testdata/minimal.yaml: the defaults of DESIGN.md, written
// out rather than taken from defaults() so the test checks them.
func minimalConfig() Config {
	return Config{
		File: "testdata/minimal.yaml",
		Log: Log{
			Paths:  []string{"/var/log/nginx/access.log"},
			Format: "combined",
			Start:  "saved",
			Syslog: Syslog{AllowUIDs: []uint32{0}, SocketGroup: -1, MaxMessage: 16384, MaxConns: 64, IdleTimeout: 5 * time.Minute},
		},
		StateDir: "/var/lib/webknock",
		Firewall: Firewall{Backend: "iptables", Chain: "WEBKNOCK", Table: "webknock", Hook: "INPUT", Protect: true, IPv6: true,
			MaxGrants: 65536, MaxGrantsPerSequence: 1024, MaxGrantsPerIPv4Net: 64, MaxGrantsPerIPv6Net: 64},
		Sequences: []Sequence{{
			Name:        "ssh",
			Steps:       []string{"/k/a"},
			StepStatus:  []int{404},
			Methods:     []string{"GET", "HEAD"},
			KnockPage:   "/k/open",
			Timeout:     30 * time.Second,
			Window:      10 * time.Minute,
			Ports:       []Port{{22, "tcp"}},
			GrantPrefix: hostOnly,
		}},
		Lockout: Lockout{Failures: 5, Period: 10 * time.Minute, Duration: 15 * time.Minute},
		Hooks:   Hooks{Timeout: 10 * time.Second, MaxRunning: 4},
		Web:     Web{Listen: "127.0.0.1:7080", TokenFile: "/etc/webknock/token", Socket: "/run/webknock/webknock.sock"},
		Fleet:   Fleet{Group: "default", Replicas: 1},
	}
}

// flagSet returns the flags of RegisterFlags, plus one of main's own,
// parsed from args.
func flagSet(t *testing.T, args []string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("webknock", pflag.ContinueOnError)
	fs.StringP("config", "c", "", "config file")
	RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("Parse(%q) = %v", args, err)
	}
	return fs
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name  string
		path  string
		env   []string
		args  []string // nil: no FlagSet at all
		check func(string) error
		want  func(c *Config)
	}{
		{name: "good file, every key set", path: "testdata/good.yaml", want: func(c *Config) { *c = goodConfig() }},
		{name: "defaults fill everything unset", path: "testdata/minimal.yaml", want: func(c *Config) { *c = minimalConfig() }},
		{
			name: "env overrides file",
			path: "testdata/good.yaml",
			env: []string{
				"HOME=/root",
				"WEBKNOCK_LOG__FORMAT=common",
				"WEBKNOCK_LOG__PATHS=/a.log /b.log,/c.log",
				"WEBKNOCK_LOG__START=beginning",
				"WEBKNOCK_LOG__TRUSTED_PROXIES=",
				"WEBKNOCK_STATE_DIR=/tmp/state",
				"WEBKNOCK_FIREWALL__BACKEND=iptables",
				"WEBKNOCK_FIREWALL__CHAIN=KNOCK",
				"WEBKNOCK_FIREWALL__HOOK=FORWARD",
				"WEBKNOCK_FIREWALL__PROTECT=true",
				"WEBKNOCK_FIREWALL__ALWAYS_ALLOW=10.9.0.0/16, 10.8.0.1",
				"WEBKNOCK_FIREWALL__MAX_GRANTS=1000",
				"WEBKNOCK_FIREWALL__MAX_GRANTS_PER_SEQUENCE=100",
				"WEBKNOCK_FIREWALL__MAX_GRANTS_PER_IPV4_24= 10",
				"WEBKNOCK_FIREWALL__MAX_GRANTS_PER_IPV6_64=20",
				"WEBKNOCK_LOCKOUT__FAILURES=7",
				"WEBKNOCK_LOCKOUT__PERIOD=1m",
				"WEBKNOCK_LOCKOUT__DURATION=2h",
				"WEBKNOCK_WEB__LISTEN=",
				"WEBKNOCK_WEB__TOKEN_FILE=/run/token",
			},
			want: func(c *Config) {
				*c = goodConfig()
				c.Log.Paths, c.Log.Format, c.Log.Start, c.Log.TrustedProxies = []string{"/a.log", "/b.log", "/c.log"}, "common", "beginning", nil
				c.StateDir = "/tmp/state"
				c.Firewall = Firewall{Backend: "iptables", Chain: "KNOCK", Table: "wk_table", Hook: "FORWARD", Protect: true,
					AlwaysAllow: prefixes("10.9.0.0/16", "10.8.0.1/32"),
					MaxGrants:   1000, MaxGrantsPerSequence: 100, MaxGrantsPerIPv4Net: 10, MaxGrantsPerIPv6Net: 20}
				c.Lockout = Lockout{Failures: 7, Period: time.Minute, Duration: 2 * time.Hour}
				c.Web = Web{TokenFile: "/run/token", Socket: "/run/wk/admin.sock"}
			},
		},
		{
			name: "env overrides defaults; other variables ignored",
			path: "testdata/minimal.yaml",
			env:  []string{"WEBKNOCK=1", "webknock_log__format=x", "XWEBKNOCK_LOG__FORMAT=x", "WEBKNOCK_FIREWALL__PROTECT=false"},
			want: func(c *Config) {
				*c = minimalConfig()
				c.Firewall.Protect = false
			},
		},
		{
			name: "env fixes a bad file value it overrides",
			path: "testdata/empty_format.yaml",
			env:  []string{"WEBKNOCK_LOG__FORMAT=common"},
			want: func(c *Config) {
				*c = minimalConfig()
				c.File = "testdata/empty_format.yaml"
				c.Log.Format = "common"
			},
		},
		{
			name: "changed flags override env and file",
			path: "testdata/good.yaml",
			env:  []string{"WEBKNOCK_LOG__FORMAT=common", "WEBKNOCK_STATE_DIR=/env", "WEBKNOCK_WEB__LISTEN=:1"},
			args: []string{"-c", "x.yaml", "--log-format", "$remote_addr [$time_local] \"$request\" $status",
				"--log-start=beginning", "--log-paths=/x.log,/y.log", "--state-dir=/flag",
				"--firewall-backend=iptables", "--web-listen="},
			want: func(c *Config) {
				*c = goodConfig()
				c.Log.Format = "$remote_addr [$time_local] \"$request\" $status"
				c.Log.Start = "beginning"
				c.Log.Paths = []string{"/x.log", "/y.log"}
				c.StateDir = "/flag"
				c.Firewall.Backend = "iptables"
				c.Web.Listen = ""
			},
		},
		{
			name: "unchanged flags do not override file or env",
			path: "testdata/good.yaml",
			env:  []string{"WEBKNOCK_STATE_DIR=/env"},
			args: []string{"-c", "x.yaml"},
			want: func(c *Config) {
				*c = goodConfig()
				c.StateDir = "/env"
			},
		},
		{
			name: "unchanged flags do not override defaults",
			path: "testdata/minimal.yaml",
			args: []string{},
			want: func(c *Config) { *c = minimalConfig() },
		},
		{
			name: "CheckFormat sees the format and accepts it",
			path: "testdata/minimal.yaml",
			check: func(f string) error {
				return map[bool]error{true: nil, false: errors.New("not combined")}[f == "combined"]
			},
			want: func(c *Config) { *c = minimalConfig() },
		},
		{
			name: "200-byte path is allowed",
			path: "testdata/long_path.yaml",
			want: func(c *Config) {
				*c = minimalConfig()
				c.File = "testdata/long_path.yaml"
				c.Sequences[0].Steps = []string{"/" + strings.Repeat("a", 199)}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Options{Path: tt.path, Environ: tt.env, CheckFormat: tt.check}
			if tt.args != nil {
				o.Flags = flagSet(t, tt.args)
			}
			var want Config
			tt.want(&want)
			got, err := Load(o)
			if err != nil {
				t.Fatalf("Load(%q) error:\n%v", tt.path, err)
			}
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("Load(%q) =\n%+v\nwant\n%+v", tt.path, *got, want)
			}
		})
	}
}

// seq is a valid sequence to append to a case that tests something else.
const seq = "sequences:\n  - name: ssh\n    steps: [/k/a]\n    knock_page: /k/open\n"

func TestValidation(t *testing.T) {
	long := "/" + strings.Repeat("a", 200)
	tests := []struct {
		name  string
		yaml  string
		env   []string
		args  []string
		check func(string) error
		want  string // every problem, the file named config.yaml
	}{
		// the file as a whole
		{name: "syntax error", yaml: "log:\n  format: [combined\n" + seq,
			want: `config.yaml:2: bad YAML: did not find expected ',' or ']'`},
		{name: "syntax error on line 1", yaml: "\tlog: x\n",
			want: `config.yaml:1: bad YAML: found character that cannot start any token`},
		{name: "duplicate key", yaml: "state_dir: /a\nstate_dir: /b\n" + seq,
			want: `config.yaml:2: bad YAML: mapping key "state_dir" already defined at line 1`},
		{name: "top level not a mapping", yaml: "- log\n",
			want: `config.yaml:1: want a mapping of sections (log, state_dir, firewall, sequences, lockout, web), got a list`},
		{name: "empty file", yaml: "",
			want: `config.yaml: sequences: at least one sequence required`},

		// fleet
		{name: "fleet role unknown", yaml: "fleet:\n  role: master\n  servers: [nats://127.0.0.1:4222]\n" + seq,
			want: `config.yaml:2: fleet.role: bad role "master": want detector, enforcer or both`},
		{name: "fleet settings without a role", yaml: "fleet:\n  servers: [nats://127.0.0.1:4222]\n" + seq,
			want: `config.yaml:1: fleet.role: required with the other fleet settings: detector, enforcer or both`},
		{name: "detector without a signing key", yaml: "fleet:\n  role: detector\n" + seq,
			want: `config.yaml:1: fleet.signing_key_file: required for role detector: the key that signs this detector's grants (webknock keygen -o FILE)`},
		{name: "enforcer without trusted keys", yaml: "fleet:\n  role: enforcer\n" + seq,
			want: `config.yaml:1: fleet.trusted_keys: required for role enforcer: the public keys of the detectors whose grants apply here`},
		{name: "enforcer with a signing key", yaml: "fleet:\n  role: enforcer\n  trusted_keys: [x]\n  signing_key_file: /k\n" + seq,
			want: `config.yaml:4: fleet.signing_key_file: only a detector signs grants; remove it or set role: both`},
		{name: "fleet replicas", yaml: "fleet:\n  role: enforcer\n  trusted_keys: [x]\n  replicas: 7\n" + seq,
			want: `config.yaml:4: fleet.replicas: bad replicas 7: want 1 to 5 (3 on a cluster of three servers)`},

		// unknown keys and types
		{name: "unknown top-level key", yaml: "stat_dir: /x\n" + seq,
			want: `config.yaml:1: stat_dir: unknown key`},
		{name: "unknown key in a section", yaml: "log:\n  fromat: common\n" + seq,
			want: `config.yaml:2: log.fromat: unknown key`},
		{name: "unknown key in a sequence", yaml: seq + "    tiemout: 5s\n",
			want: `config.yaml:5: sequences[0].tiemout: unknown key`},
		{name: "section of the wrong type", yaml: "log: [a]\n" + seq,
			want: `config.yaml:1: log: want a mapping of log settings, got a list`},
		{name: "sequences of the wrong type", yaml: "sequences: ssh\n",
			want: `config.yaml:1: sequences: want a list of sequences, got "ssh"`},
		{name: "sequence of the wrong type", yaml: "sequences:\n  - ssh\n  -\n",
			want: "config.yaml:2: sequences[0]: want a mapping of sequence settings, got \"ssh\"\n" +
				"config.yaml:3: sequences[1]: want a mapping of sequence settings, got null"},
		{name: "list item of the wrong type", yaml: seq + "    methods: [GET, [POST]]\n",
			want: `config.yaml:5: sequences[0].methods[1]: want a string, got a list`},
		{name: "string of the wrong type", yaml: "log:\n  format: 12\n" + seq,
			want: `config.yaml:2: log.format: want a string, got 12`},
		{name: "list of the wrong type", yaml: "log:\n  paths: /a.log\n" + seq,
			want: `config.yaml:2: log.paths: want a list of strings, got "/a.log"`},
		{name: "bool of the wrong type", yaml: "firewall:\n  protect: maybe\n" + seq,
			want: `config.yaml:2: firewall.protect: want true or false, got "maybe"`},
		{name: "integer of the wrong type", yaml: "lockout:\n  failures: 1.5\n" + seq,
			want: `config.yaml:2: lockout.failures: want an integer, got 1.5`},

		// sequences
		{name: "no sequences", yaml: "sequences: []\n",
			want: `config.yaml:1: sequences: at least one sequence required`},
		{name: "name missing", yaml: "sequences:\n  - steps: [/k/a]\n    knock_page: /k/open\n",
			want: `config.yaml:2: sequences[0].name: required: 1 to 32 characters of A-Z a-z 0-9 _ -`},
		{name: "name with a space", yaml: "sequences:\n  - name: ssh server\n    steps: [/k/a]\n    knock_page: /k/open\n",
			want: `config.yaml:2: sequences[0].name: bad name "ssh server": want 1 to 32 characters of A-Z a-z 0-9 _ -`},
		{name: "name too long", yaml: "sequences:\n  - name: " + strings.Repeat("n", 33) + "\n    steps: [/k/a]\n    knock_page: /k/open\n",
			want: `config.yaml:2: sequences[0].name: bad name "` + strings.Repeat("n", 33) + `": want 1 to 32 characters of A-Z a-z 0-9 _ -`},
		{name: "name used twice", yaml: seq + "  - name: ssh\n    steps: [/k/b]\n    knock_page: /k/open2\n",
			want: `config.yaml:5: sequences[1].name: name "ssh" already used by sequences[0]`},
		{name: "no steps", yaml: "sequences:\n  - name: ssh\n    steps: []\n    knock_page: /k/open\n",
			want: `config.yaml:3: sequences[0].steps: at least one step required`},
		{name: "steps missing", yaml: "sequences:\n  - name: ssh\n    knock_page: /k/open\n",
			want: `config.yaml:2: sequences[0].steps: at least one step required`},
		{name: "step not absolute", yaml: "sequences:\n  - name: ssh\n    steps:\n      - /k/a\n      - k/b\n    knock_page: /k/open\n",
			want: `config.yaml:5: sequences[0].steps[1]: bad path "k/b": must start with "/"`},
		{name: "step with a reserved character", yaml: "sequences:\n  - name: ssh\n    steps: [\"/k/a?b\"]\n    knock_page: /k/open\n",
			want: `config.yaml:3: sequences[0].steps[0]: bad path "/k/a?b": character "?" not allowed; want A-Z a-z 0-9 - . _ ~ /`},
		{name: "step with a percent escape", yaml: "sequences:\n  - name: ssh\n    steps: [/k/%41]\n    knock_page: /k/open\n",
			want: `config.yaml:3: sequences[0].steps[0]: bad path "/k/%41": character "%" not allowed; want A-Z a-z 0-9 - . _ ~ /`},
		{name: "step too long", yaml: "sequences:\n  - name: ssh\n    steps: [" + long + "]\n    knock_page: /k/open\n",
			want: `config.yaml:3: sequences[0].steps[0]: bad path "` + long + `": 201 bytes; at most 200 allowed`},
		{name: "knock page missing", yaml: "sequences:\n  - name: ssh\n    steps: [/k/a]\n",
			want: `config.yaml:2: sequences[0].knock_page: required: an absolute path like "/k/open"`},
		{name: "knock page not a path", yaml: "sequences:\n  - name: ssh\n    steps: [/k/a]\n    knock_page: open\n",
			want: `config.yaml:4: sequences[0].knock_page: bad path "open": must start with "/"`},
		{name: "step used twice", yaml: "sequences:\n  - name: ssh\n    steps: [/k/a, /k/b, /k/a]\n    knock_page: /k/open\n",
			want: `config.yaml:3: sequences[0].steps[2]: path "/k/a" already used by sequences[0].steps[0]`},
		{name: "knock page is a step", yaml: "sequences:\n  - name: ssh\n    steps: [/k/a]\n    knock_page: /k/a\n",
			want: `config.yaml:4: sequences[0].knock_page: path "/k/a" already used by sequences[0].steps[0]`},
		{name: "path used across sequences", yaml: seq + "  - name: web\n    steps: [/k/b]\n    knock_page: /k/a\n",
			want: `config.yaml:7: sequences[1].knock_page: path "/k/a" already used by sequences[0].steps[0]`},
		{name: "one-time with static steps", yaml: "sequences:\n  - name: ot\n    one_time:\n      key_file: /k.key\n" + "    steps: [/k/a]\n",
			want: `config.yaml:5: sequences[0].steps: a one-time sequence in hmac mode derives its steps from the key (one_time.steps says how many); remove steps`},
		{name: "one-time with a knock page", yaml: "sequences:\n  - name: ot\n    one_time:\n      key_file: /k.key\n" + "    knock_page: /k/open\n",
			want: `config.yaml:5: sequences[0].knock_page: a one-time sequence derives its knock page from the key and the time; remove knock_page`},
		{name: "totp without static steps", yaml: "sequences:\n  - name: ot\n    one_time:\n      key_file: /k.key\n" + "      mode: totp\n",
			want: `config.yaml:2: sequences[0].steps: at least one step required: in totp mode the static steps come before the code, which alone (6 digits) could be guessed`},
		{name: "one-time without a key file", yaml: "sequences:\n  - name: ot\n    one_time:\n      steps: 2\n",
			want: `config.yaml:3: sequences[0].one_time.key_file: required: the file holding the sequence's key (webknock init --one-time writes one)`},
		{name: "one-time bad values", yaml: "sequences:\n  - name: ot\n    one_time:\n      key_file: /k.key\n" + "      mode: hotp\n      steps: 0\n      skew: 11\n      prefix: k/\n",
			want: "config.yaml:5: sequences[0].one_time.mode: bad mode \"hotp\": want hmac or totp\n" +
				"config.yaml:7: sequences[0].one_time.skew: bad skew 11: want 0 to 10 time steps\n" +
				"config.yaml:8: sequences[0].one_time.prefix: bad prefix \"k/\": must start with \"/\""},
		{name: "one-time bad steps and period", yaml: "sequences:\n  - name: ot\n    one_time:\n      key_file: /k.key\n" + "      steps: 33\n      period: 1500ms\n",
			want: "config.yaml:5: sequences[0].one_time.steps: bad steps 33: want 1 to 32\n" +
				"config.yaml:6: sequences[0].one_time.period: bad period \"1.5s\": want whole seconds from 10s to 1h0m0s"},
		{name: "totp with another period", yaml: "sequences:\n  - name: ot\n    one_time:\n      key_file: /k.key\n" + "      mode: totp\n      period: 60s\n    steps: [/k/a]\n",
			want: `config.yaml:6: sequences[0].one_time.period: bad period "1m0s": totp mode uses 30s, what authenticator apps use; remove period`},
		{name: "one-time prefix too long", yaml: "sequences:\n  - name: ot\n    one_time:\n      key_file: /k.key\n" + "      prefix: /" + strings.Repeat("p", 178) + "\n",
			want: `config.yaml:5: sequences[0].one_time.prefix: prefix "/` + strings.Repeat("p", 178) + `": 179 bytes; at most 178 allowed`},
		{name: "too many steps", yaml: "sequences:\n  - name: ssh\n    knock_page: /k/open\n    steps: [" + manySteps(1001) + "]\n",
			want: `config.yaml:4: sequences[0].steps: 1001 steps; at most 1000 allowed`},
		{name: "no step status", yaml: seq + "    step_status: []\n",
			want: `config.yaml:5: sequences[0].step_status: at least one status required, like 404`},
		{name: "step status out of range", yaml: seq + "    step_status: [404, 99, 600]\n",
			want: "config.yaml:5: sequences[0].step_status[1]: bad status 99: want 100 to 599\n" +
				"config.yaml:5: sequences[0].step_status[2]: bad status 600: want 100 to 599"},
		{name: "step status not a number", yaml: seq + "    step_status: [not-found]\n",
			want: `config.yaml:5: sequences[0].step_status[0]: want an HTTP status code like 404, got "not-found"`},
		{name: "knock page status out of range", yaml: seq + "    knock_page_status: [1000]\n",
			want: `config.yaml:5: sequences[0].knock_page_status[0]: bad status 1000: want 100 to 599`},
		{name: "no methods", yaml: seq + "    methods: []\n",
			want: `config.yaml:5: sequences[0].methods: at least one method required, like GET`},
		{name: "bad method", yaml: seq + "    methods: [GET, \"GE T\", M-SEARCH]\n",
			want: "config.yaml:5: sequences[0].methods[1]: bad method \"GE T\": want letters A-Z, like \"GET\"\n" +
				"config.yaml:5: sequences[0].methods[2]: bad method \"M-SEARCH\": want letters A-Z, like \"GET\""},
		{name: "zero timeout", yaml: seq + "    timeout: 0s\n",
			want: `config.yaml:5: sequences[0].timeout: want a positive duration like "30s", got "0s"`},
		{name: "negative window", yaml: seq + "    window: -1m\n",
			want: `config.yaml:5: sequences[0].window: want a positive duration like "30s", got "-1m0s"`},
		{name: "duration without unit", yaml: seq + "    timeout: 30\n    window: \"0\"\n",
			want: "config.yaml:5: sequences[0].timeout: bad duration \"30\": missing unit; want e.g. \"30s\", \"10m\", \"1h30m\"\n" +
				"config.yaml:6: sequences[0].window: bad duration \"0\": missing unit; want e.g. \"30s\", \"10m\", \"1h30m\""},
		{name: "bad duration", yaml: seq + "    timeout: soon\n",
			want: `config.yaml:5: sequences[0].timeout: bad duration "soon": want e.g. "30s", "10m", "1h30m"`},
		{name: "duration of the wrong type", yaml: seq + "    timeout: [1]\n",
			want: `config.yaml:5: sequences[0].timeout: want a duration like "30s", got a list`},
		{name: "no ports", yaml: seq + "    ports: []\n",
			want: `config.yaml:5: sequences[0].ports: at least one port required, like "22/tcp"`},
		{name: "bad ports", yaml: seq + "    ports:\n      - 70000/tcp\n      - 22/sctp\n      - 0\n      - ssh\n      - true\n",
			want: "config.yaml:6: sequences[0].ports[0]: bad port \"70000/tcp\": want PORT, PORT/tcp or PORT/udp with PORT 1 to 65535\n" +
				"config.yaml:7: sequences[0].ports[1]: bad port \"22/sctp\": want PORT, PORT/tcp or PORT/udp with PORT 1 to 65535\n" +
				"config.yaml:8: sequences[0].ports[2]: bad port \"0\": want PORT, PORT/tcp or PORT/udp with PORT 1 to 65535\n" +
				"config.yaml:9: sequences[0].ports[3]: bad port \"ssh\": want PORT, PORT/tcp or PORT/udp with PORT 1 to 65535\n" +
				"config.yaml:10: sequences[0].ports[4]: want a port like \"22/tcp\", got true"},
		{name: "port listed twice", yaml: seq + "    ports: [22, 22/tcp]\n",
			want: `config.yaml:5: sequences[0].ports[1]: port "22/tcp" listed twice`},

		// log
		{name: "no log paths", yaml: "log:\n  paths: []\n" + seq,
			want: `config.yaml:2: log.paths: at least one path required, or log.syslog.listen`},
		{name: "syslog alone needs no log paths", yaml: "log:\n  paths: []\n  syslog: {listen: [\"udp:127.0.0.1:5514\"]}\n" + seq},
		{name: "bad syslog settings", yaml: "log:\n  reorder: 2m\n  syslog:\n    allow_uids: [-1, no-such-user-here, 1.5]\n    socket_group: no-such-group-here\n" +
			"    max_message: 0\n    max_connections: 0\n    idle_timeout: 10ms\n    tls: {cert: x}\n    listen: udp\n" + seq,
			want: "config.yaml:2: log.reorder: bad reorder 2m0s: want 0 (lines as they come) to 1m\n" +
				"config.yaml:4: log.syslog.allow_uids[0]: bad user id -1\n" +
				"config.yaml:4: log.syslog.allow_uids[1]: unknown user \"no-such-user-here\"\n" +
				"config.yaml:4: log.syslog.allow_uids[2]: want a user id or name, got 1.5\n" +
				"config.yaml:5: log.syslog.socket_group: unknown group \"no-such-group-here\"\n" +
				"config.yaml:9: log.syslog.tls.cert: unknown key\n" +
				"config.yaml:10: log.syslog.listen: want a list of strings, got \"udp\""},
		{name: "empty log path and bad glob", yaml: "log:\n  paths:\n    - \"\"\n    - /var/log/[\n" + seq,
			want: "config.yaml:3: log.paths[0]: empty path\n" +
				"config.yaml:4: log.paths[1]: bad glob \"/var/log/[\": syntax error in pattern"},
		{name: "empty log format", yaml: "log:\n  format: \"\"\n" + seq,
			want: `config.yaml:2: log.format: must not be empty; want combined, common, vhost_combined or an nginx log_format string`},
		{name: "log format refused by CheckFormat", yaml: "log:\n  format: $foo\n" + seq,
			check: func(f string) error { return fmt.Errorf("unknown variable %q", f) },
			want:  `config.yaml:2: log.format: unknown variable "$foo"`},
		{name: "bad log start", yaml: "log:\n  start: middle\n" + seq,
			want: `config.yaml:2: log.start: bad start "middle": want saved, end or beginning`},
		{name: "bad trusted proxy", yaml: "log:\n  trusted_proxies: [10.0.0.0/33, 10.0.0.1, fe80::1%eth0, proxy]\n" + seq,
			want: "config.yaml:2: log.trusted_proxies[0]: bad CIDR \"10.0.0.0/33\": want an IP address or CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\"\n" +
				"config.yaml:2: log.trusted_proxies[2]: bad CIDR \"fe80::1%eth0\": want an IP address or CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\"\n" +
				"config.yaml:2: log.trusted_proxies[3]: bad CIDR \"proxy\": want an IP address or CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\""},

		// firewall
		{name: "bad always_allow", yaml: "firewall:\n  always_allow: [\"2001:db8::/129\"]\n" + seq,
			want: `config.yaml:2: firewall.always_allow[0]: bad CIDR "2001:db8::/129": want an IP address or CIDR like "192.0.2.0/24" or "2001:db8::/32"`},
		{name: "bad ipv6", yaml: "firewall:\n  ipv6: off\n" + seq,
			want: `config.yaml:2: firewall.ipv6: want true or false, got "off"`},
		{name: "grant bounds not positive", yaml: "firewall:\n  max_grants: 0\n  max_grants_per_sequence: -1\n  max_grants_per_ipv4_24: 0\n  max_grants_per_ipv6_64: 0\n" + seq,
			want: "config.yaml:2: firewall.max_grants: bad max_grants 0: want 1 or more live grants\n" +
				"config.yaml:3: firewall.max_grants_per_sequence: bad max_grants_per_sequence -1: want 1 or more live grants; to lift the cap, set it to max_grants\n" +
				"config.yaml:4: firewall.max_grants_per_ipv4_24: bad max_grants_per_ipv4_24 0: want 1 or more live grants; to lift the cap, set it to max_grants\n" +
				"config.yaml:5: firewall.max_grants_per_ipv6_64: bad max_grants_per_ipv6_64 0: want 1 or more live grants; to lift the cap, set it to max_grants"},
		{name: "check interval too short", yaml: "firewall:\n  check_interval: 500ms\n" + seq,
			want: "config.yaml:2: firewall.check_interval: bad check_interval 500ms: want 1s or more, or leave it out for the backend's own"},
		{name: "grant bound of the wrong type", yaml: "firewall:\n  max_grants_per_ipv6_64: many\n  max_grants: 1.5\n" + seq,
			want: "config.yaml:2: firewall.max_grants_per_ipv6_64: want an integer, got \"many\"\n" +
				"config.yaml:3: firewall.max_grants: want an integer, got 1.5"},
		{name: "grant bound typo", yaml: "firewall:\n  max_grants_per_ipv6: 8\n" + seq,
			want: `config.yaml:2: firewall.max_grants_per_ipv6: unknown key`},
		{name: "grant bounds from the environment", yaml: seq,
			env: []string{"WEBKNOCK_FIREWALL__MAX_GRANTS_PER_IPV4_24=0", "WEBKNOCK_FIREWALL__MAX_GRANTS_PER_SEQUENCE=lots"},
			want: "WEBKNOCK_FIREWALL__MAX_GRANTS_PER_IPV4_24: firewall.max_grants_per_ipv4_24: bad max_grants_per_ipv4_24 0: want 1 or more live grants; to lift the cap, set it to max_grants\n" +
				"WEBKNOCK_FIREWALL__MAX_GRANTS_PER_SEQUENCE: firewall.max_grants_per_sequence: want an integer, got \"lots\""},

		// lockout, web
		{name: "negative failures", yaml: "lockout:\n  failures: -1\n" + seq,
			want: `config.yaml:2: lockout.failures: bad failures -1: want 0 (disabled) or more`},
		{name: "lockout without period", yaml: "lockout:\n  failures: 3\n  period: 0s\n  duration: -5m\n" + seq,
			want: "config.yaml:3: lockout.period: want a positive duration when failures > 0, got \"0s\"\n" +
				"config.yaml:4: lockout.duration: want a positive duration when failures > 0, got \"-5m0s\""},
		{name: "disabled lockout needs no period", yaml: "lockout:\n  failures: 0\n  period: 0s\n" + seq},
		{name: "listen without port", yaml: "web:\n  listen: localhost\n" + seq,
			want: `config.yaml:2: web.listen: bad listen "localhost": want host:port like "127.0.0.1:7080", or empty to disable`},
		{name: "listen on port 0", yaml: "web:\n  listen: \"127.0.0.1:0\"\n" + seq,
			want: `config.yaml:2: web.listen: bad listen "127.0.0.1:0": want host:port like "127.0.0.1:7080", or empty to disable`},
		{name: "listen on a named port", yaml: "web:\n  listen: \":http\"\n" + seq,
			want: `config.yaml:2: web.listen: bad listen ":http": want host:port like "127.0.0.1:7080", or empty to disable`},
		{name: "empty listen disables", yaml: "web:\n  listen: \"\"\n" + seq},

		// environment and flags
		{name: "unknown env key", yaml: seq, env: []string{"WEBKNOCK_LOG__FROMAT=common", "WEBKNOCK_LOG=x", "WEBKNOCK_=1"},
			want: "WEBKNOCK_: names no key; want WEBKNOCK_SECTION__KEY, e.g. WEBKNOCK_LOG__FORMAT\n" +
				"WEBKNOCK_LOG: log: unknown key\n" +
				"WEBKNOCK_LOG__FROMAT: log.fromat: unknown key"},
		{name: "sequences from env", yaml: seq, env: []string{"WEBKNOCK_SEQUENCES__0__NAME=x"},
			want: `WEBKNOCK_SEQUENCES__0__NAME: sequences: cannot be set from the environment; define sequences in the file`},
		{name: "bad env values", yaml: seq,
			env: []string{"WEBKNOCK_FIREWALL__PROTECT=maybe", "WEBKNOCK_LOCKOUT__FAILURES=many", "WEBKNOCK_LOCKOUT__PERIOD=10",
				"WEBKNOCK_LOG__TRUSTED_PROXIES=10.0.0.0/8 10.0.0.0/33", "WEBKNOCK_LOG__PATHS="},
			want: "WEBKNOCK_FIREWALL__PROTECT: firewall.protect: want true or false, got \"maybe\"\n" +
				"WEBKNOCK_LOCKOUT__FAILURES: lockout.failures: want an integer, got \"many\"\n" +
				"WEBKNOCK_LOCKOUT__PERIOD: lockout.period: bad duration \"10\": missing unit; want e.g. \"30s\", \"10m\", \"1h30m\"\n" +
				"WEBKNOCK_LOG__PATHS: log.paths: at least one path required, or log.syslog.listen\n" +
				"WEBKNOCK_LOG__TRUSTED_PROXIES: log.trusted_proxies[1]: bad CIDR \"10.0.0.0/33\": want an IP address or CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\""},
		{name: "problems of file, env and flags sorted together", yaml: "log:\n  start: middle\n" + seq + "    window: 0s\n",
			env:  []string{"WEBKNOCK_LOG__FROMAT=x"},
			args: []string{"--log-format="},
			want: "--log-format: log.format: must not be empty; want combined, common, vhost_combined or an nginx log_format string\n" +
				// The file's absolute path sorts before the variables.
				"config.yaml:2: log.start: bad start \"middle\": want saved, end or beginning\n" +
				"config.yaml:7: sequences[0].window: want a positive duration like \"30s\", got \"0s\"\n" +
				"WEBKNOCK_LOG__FROMAT: log.fromat: unknown key"},
		{name: "bad flag values", yaml: "log:\n  start: middle\n" + seq,
			env:  []string{"WEBKNOCK_WEB__LISTEN=nowhere"},
			args: []string{"--log-start=later", "--web-listen=:99999", "--log-paths="},
			want: "--log-paths: log.paths: at least one path required, or log.syslog.listen\n" +
				"--log-start: log.start: bad start \"later\": want saved, end or beginning\n" +
				"--web-listen: web.listen: bad listen \":99999\": want host:port like \"127.0.0.1:7080\", or empty to disable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := loadString(t, tt.yaml, Options{Environ: tt.env, CheckFormat: tt.check}, tt.args)
			if got != tt.want {
				t.Errorf("Load(%q) errors:\n%s\nwant:\n%s", tt.yaml, got, tt.want)
			}
		})
	}
}

// loadString loads yml from a file config.yaml and returns its problems
// with that file named "config.yaml".
func loadString(t *testing.T, yml string, o Options, args []string) (string, *Config) {
	t.Helper()
	dir := t.TempDir()
	o.Path = filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(o.Path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	if args != nil {
		o.Flags = flagSet(t, args)
	}
	c, err := Load(o)
	if err == nil {
		return "", c
	}
	if c != nil {
		t.Errorf("Load(%q) = %+v with errors; want nil", yml, c)
	}
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Load(%q) error %T, want Errors", yml, err)
	}
	return strings.ReplaceAll(err.Error(), dir+string(filepath.Separator), ""), nil
}

// TestGolden loads each testdata/bad/*.yaml and compares its problems with
// the .golden file beside it; go test ./config -update rewrites them.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/bad/*.yaml: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := Load(Options{Path: f})
			if err == nil {
				t.Fatalf("Load(%q) = %+v, want errors", f, c)
			}
			golden.Check(t, strings.TrimSuffix(f, ".yaml")+".golden", []byte(err.Error()+"\n"))
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{name: "no path", o: Options{}, want: "no configuration file given"},
		{name: "missing file", o: Options{Path: "testdata/nope.yaml", Environ: []string{"WEBKNOCK_LOG__FROMAT=x"}},
			want: "WEBKNOCK_LOG__FROMAT: log.fromat: unknown key\ntestdata/nope.yaml: cannot read: no such file or directory"},
		{name: "directory", o: Options{Path: "testdata"}, want: "testdata: cannot read: is a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(tt.o)
			if c != nil || err == nil || err.Error() != tt.want {
				t.Errorf("Load(%+v) = %v, %v; want nil, %s", tt.o, c, err, tt.want)
			}
		})
	}
}

func TestFieldError(t *testing.T) {
	tests := []struct {
		e    FieldError
		want string
	}{
		{FieldError{"c.yaml", 3, "log.format", "bad"}, "c.yaml:3: log.format: bad"},
		{FieldError{"c.yaml", 0, "log.format", "bad"}, "c.yaml: log.format: bad"},
		{FieldError{"c.yaml", 2, "", "bad YAML"}, "c.yaml:2: bad YAML"},
		{FieldError{"--log-start", 0, "log.start", "bad"}, "--log-start: log.start: bad"},
		{FieldError{"", 0, "", "no file"}, "no file"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("%+v.Error() = %q, want %q", tt.e, got, tt.want)
		}
	}
}

func TestErrorsAs(t *testing.T) {
	_, lerr := Load(Options{Path: "testdata/bad/many.yaml"})
	var fe *FieldError
	if !errors.As(lerr, &fe) {
		t.Fatalf("errors.As(%v, *FieldError) = false", lerr)
	}
	if fe.Source != "testdata/bad/many.yaml" || fe.Line == 0 || fe.Field == "" {
		t.Errorf("first problem = %+v, want source, line and field", fe)
	}
}

func TestPortString(t *testing.T) {
	for _, tt := range []struct {
		p    Port
		want string
	}{{Port{22, "tcp"}, "22/tcp"}, {Port{53, "udp"}, "53/udp"}, {Port{65535, "tcp"}, "65535/tcp"}} {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.p, got, tt.want)
		}
	}
}

func TestRegisterFlagsKeys(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	RegisterFlags(fs)
	n := 0
	fs.VisitAll(func(f *pflag.Flag) {
		n++
		if _, ok := flagKeys[f.Name]; !ok {
			t.Errorf("flag --%s overrides no key", f.Name)
		}
	})
	if n != len(flagKeys) {
		t.Errorf("RegisterFlags defined %d flags, want %d", n, len(flagKeys))
	}
}

// TestCheckPlacement: problems found by Options.Check (the other packages'
// rules) are reported where their value came from, like Load's own.
func TestCheckPlacement(t *testing.T) {
	const seq = "sequences:\n  - name: ssh\n    steps: [/k/a]\n    knock_page: /k/open\n    ports: [22/tcp, 2222]\n"
	check := func(c *Config) (errs, warnings []*FieldError) {
		errs = append(errs, &FieldError{Field: "firewall.chain", Message: fmt.Sprintf("bad chain %q", c.Firewall.Chain)})
		errs = append(errs, &FieldError{Field: "sequences[0].ports[1]", Message: "port checked"})
		warnings = append(warnings, &FieldError{Field: "state_dir", Message: "risky"})
		return errs, warnings
	}
	tests := []struct {
		name     string
		yaml     string
		env      []string
		args     []string
		want     string
		warnings string
	}{
		{name: "file lines", yaml: "firewall:\n  chain: -WK\n" + seq,
			want:     "config.yaml:2: firewall.chain: bad chain \"-WK\"\nconfig.yaml:7: sequences[0].ports[1]: port checked",
			warnings: "config.yaml: state_dir: risky"},
		{name: "environment and flag", yaml: seq, env: []string{"WEBKNOCK_FIREWALL__CHAIN=X"}, args: []string{"--state-dir=rel"},
			want:     "config.yaml:5: sequences[0].ports[1]: port checked\nWEBKNOCK_FIREWALL__CHAIN: firewall.chain: bad chain \"X\"",
			warnings: "--state-dir: state_dir: risky"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := loadString(t, tt.yaml, Options{Environ: tt.env, Check: check}, tt.args)
			if got != tt.want {
				t.Errorf("Load(%q) errors:\n%s\nwant:\n%s", tt.yaml, got, tt.want)
			}
			_, c := loadString(t, tt.yaml, Options{Environ: tt.env, Check: func(c *Config) (e, w []*FieldError) {
				_, w = check(c)
				return nil, w
			}}, tt.args)
			if c == nil {
				t.Fatal("Load with warnings only failed")
			}
			var ws []string
			for _, w := range c.Warnings {
				ws = append(ws, strings.ReplaceAll(w.Error(), filepath.Dir(c.File)+string(filepath.Separator), ""))
			}
			if g := strings.Join(ws, "\n"); g != tt.warnings {
				t.Errorf("warnings:\n%s\nwant:\n%s", g, tt.warnings)
			}
		})
	}
}

// manySteps returns n distinct step paths, comma separated.
func manySteps(n int) string {
	var steps []string
	for i := range n {
		steps = append(steps, fmt.Sprintf("/k/s%d", i))
	}
	return strings.Join(steps, ", ")
}

// TestRegisterFlagsSome: a command offers only the overrides of the keys
// it uses; naming a key no flag overrides is a programming error.
func TestRegisterFlagsSome(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	RegisterFlags(fs, "state_dir", "log.format")
	var got []string
	fs.VisitAll(func(f *pflag.Flag) { got = append(got, f.Name) })
	if want := []string{"log-format", "state-dir"}; !slices.Equal(got, want) {
		t.Errorf("RegisterFlags(state_dir, log.format) defined %q, want %q", got, want)
	}
	if keys := FlagKeys(); len(keys) != len(flagKeys) {
		t.Errorf("FlagKeys() = %q, want the %d keys of flagKeys", keys, len(flagKeys))
	}
	defer func() {
		if recover() == nil {
			t.Errorf("RegisterFlags(web.socket) did not panic")
		}
	}()
	RegisterFlags(pflag.NewFlagSet("y", pflag.ContinueOnError), "web.socket")
}
