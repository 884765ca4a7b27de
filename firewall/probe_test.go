package firewall

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCheckOptions: what the configuration may say, as `webknock check`
// and Open judge it: each problem an *OptionError naming its key.
func TestCheckOptions(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Options)
		want map[string]string // option: a part of its message; nil: valid
	}{
		{"defaults", func(*Options) {}, nil},
		{"docker", func(o *Options) { o.Hook, o.Chain = "DOCKER-USER", "WK-1.x" }, nil},
		{"dry run", func(o *Options) { o.Backend = backendDryRun }, nil},
		{"unknown backend", func(o *Options) { o.Backend = "nft" }, map[string]string{"backend": `unknown backend "nft"`}},
		{"chain like an option", func(o *Options) { o.Chain = "-WK" }, map[string]string{"chain": `"-WK" is not a chain name iptables accepts`}},
		{"chain too long", func(o *Options) { o.Chain = strings.Repeat("W", 29) }, map[string]string{"chain": "not a chain name"}},
		{"chain built in", func(o *Options) { o.Chain = "INPUT"; o.Hook = "FORWARD" }, map[string]string{"chain": `"INPUT" is a built-in chain`}},
		{"chain built in, lower case", func(o *Options) { o.Chain = "forward" }, map[string]string{"chain": "built-in"}},
		{"chain a target", func(o *Options) { o.Chain = "DROP" }, map[string]string{"chain": "the name of a target"}},
		{"chain is hook", func(o *Options) { o.Chain, o.Hook = "KNOCK", "KNOCK" }, map[string]string{"chain": "chain and hook are both"}},
		{"hook in lower case", func(o *Options) { o.Hook = "input" }, map[string]string{"hook": `"input" names no chain of table filter; did you mean INPUT?`}},
		{"hook not in filter", func(o *Options) { o.Hook = "PREROUTING" }, map[string]string{"hook": "not a chain of table filter"}},
		{"hook output", func(o *Options) { o.Hook = "OUTPUT" }, map[string]string{"hook": "OUTPUT sees only"}},
		{"hook bad", func(o *Options) { o.Hook = "!x" }, map[string]string{"hook": "not a chain name"}},
		{"bad network", func(o *Options) { o.AlwaysAllow = []netip.Prefix{{}} }, map[string]string{"always_allow": "bad network"}},
		{"relative state dir", func(o *Options) { o.StateDir = "state" }, map[string]string{"state_dir": "relative"}},
		{"bad port", func(o *Options) { o.Ports = []Port{{"tcp", 0}} }, map[string]string{"sequences": "bad port"}},
		{"bad window", func(o *Options) { o.Sequences = []Sequence{{Name: "ssh", Ports: []Port{ssh}}} }, map[string]string{"sequences": "window"}},
		{"sequence twice", func(o *Options) {
			o.Sequences = []Sequence{{Name: "ssh", Ports: []Port{ssh}, Window: time.Minute}, {Name: "ssh", Ports: []Port{ssh}, Window: time.Minute}}
		}, map[string]string{"sequences": "named twice"}},
		{"everything at once", func(o *Options) { o.Backend, o.Chain, o.Hook = "nft", "-WK", "input" },
			map[string]string{"backend": "unknown", "chain": "-WK", "hook": "did you mean INPUT?"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{StateDir: "/var/lib/webknock"}
			tc.edit(&o)
			err := CheckOptions(o)
			if tc.want == nil {
				if err != nil {
					t.Errorf("CheckOptions = %v, want nil", err)
				}
				return
			}
			var errs []error
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				errs = j.Unwrap()
			}
			got := map[string]string{}
			for _, e := range errs {
				var oe *OptionError
				if !errors.As(e, &oe) {
					t.Fatalf("CheckOptions: %v is not an *OptionError", e)
				}
				got[oe.Option] = oe.Err.Error()
			}
			if len(got) != len(tc.want) {
				t.Errorf("CheckOptions = %v, want problems with %v", err, tc.want)
			}
			for opt, part := range tc.want {
				if !strings.Contains(got[opt], part) {
					t.Errorf("CheckOptions: %s: %q, want it to say %q", opt, got[opt], part)
				}
			}
		})
	}
	oe := &OptionError{Option: "chain", Err: errors.New("bad")}
	if s := oe.Error(); s != "firewall.chain: bad" {
		t.Errorf("Error() = %q", s)
	}
}

// TestProbeTables: the kernel's side of what Open refuses, asked before any
// change and changing nothing: a missing hook, a chain that is not ours.
func TestProbeTables(t *testing.T) {
	tests := []struct {
		name  string
		hook  string
		plant func(e *env)
		want  []string // the problems' messages, each an *OptionError
	}{
		{"fine", "INPUT", func(*env) {}, nil},
		{"no DOCKER-USER", "DOCKER-USER", func(*env) {}, []string{
			"firewall.hook: chain DOCKER-USER does not exist in table filter (IPv4): webknock jumps from it to its own chain; Docker makes it when it starts",
			"firewall.hook: chain DOCKER-USER does not exist in table filter (IPv6): webknock jumps from it to its own chain; Docker makes it when it starts; or set firewall.ipv6: false to leave IPv6 alone",
		}},
		{"no IPv6 DOCKER-USER", "DOCKER-USER", func(e *env) { e.plant(ipv4, "DOCKER-USER") }, []string{
			"firewall.hook: chain DOCKER-USER does not exist in table filter (IPv6)",
		}},
		{"another's chain", "INPUT", func(e *env) { e.plant(ipv6, "WEBKNOCK", "-j RETURN") }, []string{
			"firewall.chain: chain WEBKNOCK in table filter (IPv6) exists and is not webknock's: 1 rule",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			tc.plant(e)
			o := e.options()
			o.Hook = tc.hook
			n, err := o.normalize()
			if err != nil {
				t.Fatal(err)
			}
			before := len(e.v4.snapshots("")) + len(e.v6.snapshots(""))
			f := newFirewall(n, iptRulesets(&n, [2]tables{e.v4, e.v6}))
			defer f.quit()
			err = f.probeTables(ctx0)
			if n := len(e.v4.snapshots("")) + len(e.v6.snapshots("")); n != before {
				t.Errorf("probe changed the tables %d times", n-before)
			}
			if tc.want == nil {
				if err != nil {
					t.Errorf("probe = %v", err)
				}
				return
			}
			var errs []error
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				errs = j.Unwrap()
			}
			if len(errs) != len(tc.want) {
				t.Fatalf("probe = %v, want %d problems", err, len(tc.want))
			}
			for i, want := range tc.want {
				var oe *OptionError
				if !errors.As(errs[i], &oe) || !strings.HasPrefix(errs[i].Error(), want) {
					t.Errorf("problem %d = %v, want %s", i, errs[i], want)
				}
			}
			// Open refuses alike, before any change.
			if _, err := e.tryOpen(o); err == nil {
				t.Error("open = nil error")
			}
			if n := len(e.v4.snapshots("")) + len(e.v6.snapshots("")); n != before {
				t.Errorf("a refused open changed the tables %d times", n-before)
			}
		})
	}
}

// fakePrograms writes stand-ins for iptables and ip6tables into a
// directory of their own, the only one on PATH: each answers --version,
// and a list with the status given (0: works). A negative status leaves
// the program out.
func fakePrograms(t *testing.T, v4, v6 int) {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skipf("skipping: the stand-ins need /bin/sh: %v", err)
	}
	dir := t.TempDir()
	for name, status := range map[string]int{"iptables": v4, "ip6tables": v6} {
		if status < 0 {
			continue
		}
		script := `#!/bin/sh
if [ "$1" = --version ]; then echo '` + name + ` v1.8.9 (nf_tables)'; exit 0; fi
if [ ` + strconv.Itoa(status) + ` -ne 0 ]; then echo "` + name + ` v1.8.9 (nf_tables): can't initialize ` + name + ` table 'filter': Table does not exist" >&2; fi
exit ` + strconv.Itoa(status) + `
`
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
}

// TestIPv6FailsClosed: on a host with IPv6, with protect on, an ip6tables
// that is missing or does not work refuses the start (strangers would reach
// the protected ports over IPv6), unless IPv6 is left alone knowingly; with
// protect off it is a warning.
func TestIPv6FailsClosed(t *testing.T) {
	tests := []struct {
		name          string
		v4, v6        int // list status of each program; -1: not installed
		protect, off  bool
		hasIPv6       bool
		strict        bool
		wantOpt, want string // the error's option and a part of it; "": none
		wantV6        bool
		log           string
	}{
		{"ip6tables missing", 0, -1, true, false, true, true, "ipv6",
			"firewall.ipv6: ip6tables is not installed, but this host has IPv6 and protect is on: strangers could reach the protected ports over IPv6; install ip6tables, or set firewall.ipv6: false to leave IPv6 alone knowingly",
			false, ""},
		{"ip6tables broken", 0, 3, true, false, true, true, "ipv6", "firewall.ipv6: ip6tables does not work (", false, ""},
		{"ip6tables missing, protect off", 0, -1, false, false, true, true, "", "", false,
			`level=WARN msg="IPv6 firewall disabled: IPv6 clients cannot be granted" reason="ip6tables is not installed"`},
		{"ip6tables missing, IPv6 left alone", 0, -1, true, true, true, true, "", "", false, `level=WARN msg="IPv6 is not managed (firewall.ipv6: false)`},
		{"no IPv6 on this host", 0, -1, true, false, false, true, "", "", false, "the kernel has IPv6 disabled"},
		{"ip6tables missing, flush", 0, -1, true, false, true, false, "", "", false, "IPv6 firewall disabled"},
		{"both work", 0, 0, true, false, true, true, "", "", true, ""},
		{"iptables missing", -1, 0, true, false, true, true, "backend", "firewall.backend: iptables is not installed", false, ""},
		{"iptables broken", 3, 0, true, false, true, true, "backend", "firewall.backend: iptables does not work", false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fakePrograms(t, tc.v4, tc.v6)
			log := &syncBuffer{}
			o, err := Options{Protect: tc.protect, IPv6Off: tc.off, Logger: newTextLogger(log)}.normalize()
			if err != nil {
				t.Fatal(err)
			}
			tabs, err := newIPTables(context.Background(), &o, tc.hasIPv6, tc.strict)
			if tc.want != "" {
				var oe *OptionError
				if err == nil || !strings.HasPrefix(err.Error(), tc.want) || !errors.As(err, &oe) || oe.Option != tc.wantOpt {
					t.Fatalf("newIPTables = %v, want %s", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("newIPTables = %v", err)
			}
			if tabs[ipv4] == nil || (tabs[ipv6] != nil) != tc.wantV6 {
				t.Errorf("tables %v, want IPv4 and IPv6 %v", tabs, tc.wantV6)
			}
			if !strings.Contains(log.String(), tc.log) {
				t.Errorf("log lacks %s:\n%s", tc.log, log)
			}
		})
	}
}

// TestDryRunIPv6Off: the dry run leaves IPv6 alone when asked to, and
// grants to IPv6 clients are refused, not silently pretended.
func TestDryRunIPv6Off(t *testing.T) {
	log := &syncBuffer{}
	f, err := Open(ctx0, Options{Backend: backendDryRun, IPv6Off: true, Protect: true, Ports: []Port{ssh}, Logger: newTextLogger(log)})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Grant(ctx0, Grant{IP: c6, Sequence: "ssh", Ports: []Port{ssh}, Until: time.Now().Add(time.Hour)}); err == nil {
		t.Error("an IPv6 grant with IPv6 left alone = nil error")
	}
	if strings.Contains(log.String(), "ip6tables") || !strings.Contains(log.String(), msgIPv6Off) {
		t.Errorf("log:\n%s", log)
	}
	if h := f.Health(); !h.InSync || slices.ContainsFunc(h.Problems, func(p string) bool { return strings.HasPrefix(p, "IPv6") }) {
		t.Errorf("Health() = %+v", h)
	}
}
