package firewall

import (
	"cmp"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestChainOwnership: our chain starts with the ownership marker. A chain
// of our name is taken when it carries the marker, or when webknock wrote
// every rule in it (an earlier version's chain, or an empty one); any other
// is refused, and nothing is touched.
func TestChainOwnership(t *testing.T) {
	live := t0.Add(10 * time.Minute)
	grant := strings.TrimPrefix(oldGrantLine("192.0.2.1/32", ssh, "ssh", live), "-A WEBKNOCK ")
	protect := `-p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m comment --comment "webknock:protect" -j DROP`
	ours := func(e *env) string { return strings.TrimPrefix(e.markerLine(), "-A WEBKNOCK ") }
	tests := []struct {
		name  string
		chain string
		plant func(e *env) []string // nil: no chain; empty: an empty chain
		want  []string              // the chain after Open, less its -N line and marker
		err   string                // Open's error
		log   string
	}{
		{name: "missing", want: []string{}, log: `msg="chain created" family=IPv4`},
		{name: "ours", plant: func(e *env) []string { return []string{ours(e), `-s 203.0.113.9/32 -j ACCEPT`} }, want: []string{}},
		{name: "empty", plant: func(*env) []string { return []string{} }, want: []string{},
			log: `msg="empty chain adopted; ownership marker added" family=IPv4`},
		{name: "an earlier webknock's", plant: func(*env) []string { return []string{grant, protect} },
			want: []string{grantLine("192.0.2.1/32", ssh, "ssh", live)},
			log:  `msg="chain of an earlier webknock adopted; ownership marker added" family=IPv4 chain=WEBKNOCK count=2`},
		{name: "fail2ban's", chain: "f2b-sshd", plant: func(*env) []string { return []string{`-s 192.0.2.5/32 -j REJECT`, `-j RETURN`} },
			err: "firewall.chain: chain f2b-sshd in table filter (IPv4) exists and is not webknock's: 2 rules that webknock did not write; choose another firewall.chain"},
		{name: "ours and another's", plant: func(*env) []string { return []string{grant, `-j RETURN`} },
			err: "firewall.chain: chain WEBKNOCK in table filter (IPv4) exists and is not webknock's: 1 rule that webknock did not write; choose another firewall.chain"},
		{name: "another webknock's", plant: func(*env) []string {
			return []string{`-m comment --comment "webknock:owner:/var/lib/other webknock"`, grant}
		}, err: "firewall.chain: chain WEBKNOCK in table filter (IPv4) belongs to the webknock with state_dir /var/lib/other webknock; stop that one and run webknock flush with its configuration, or choose another firewall.chain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			o := e.options()
			o.Chain = cmp.Or(tc.chain, "WEBKNOCK")
			var plant []string
			if tc.plant != nil {
				plant = tc.plant(e)
				e.plant(ipv4, o.Chain, plant...)
			}
			before := len(e.v4.snapshots("")) + len(e.v6.snapshots(""))
			_, err := e.tryOpen(o)
			if tc.err != "" {
				var oe *OptionError
				if err == nil || err.Error() != tc.err || !errors.As(err, &oe) || oe.Option != "chain" {
					t.Fatalf("open = %v, want %s", err, tc.err)
				}
				if n := len(e.v4.snapshots("")) + len(e.v6.snapshots("")); n != before {
					t.Errorf("a refused open changed the tables %d times", n-before)
				}
				got, _ := e.v4.List(ctx0, table, o.Chain)
				if want := append([]string{"-N " + o.Chain}, prefixed(o.Chain, plant)...); !slices.Equal(got, want) {
					t.Errorf("the refused chain is %q, want %q", got, want)
				}
				// Flush refuses it too.
				n, _ := o.normalize()
				if err := flushRulesets(ctx0, &n, iptRulesets(&n, [2]tables{e.v4, e.v6})); err == nil || !strings.Contains(err.Error(), o.Chain+" in table filter (IPv4)") {
					t.Errorf("flush = %v, want it refused", err)
				}
				if got2, _ := e.v4.List(ctx0, table, o.Chain); !slices.Equal(got2, got) {
					t.Errorf("after a refused flush the chain is %q, want %q", got2, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("open = %v", err)
			}
			if d := diffLines(e.chain(ipv4), e.chainOnly(tc.want...)); d != "" {
				t.Error(d)
			}
			if !strings.Contains(e.log.String(), tc.log) {
				t.Errorf("log lacks %s:\n%s", tc.log, e.log)
			}
		})
	}
}

// prefixed returns specs as `iptables -S chain` prints them.
func prefixed(chain string, specs []string) []string {
	m := newMemTables(ipv4, nil)
	m.NewChain(ctx0, table, chain)
	for _, s := range specs {
		words, _ := splitRule(s)
		m.Append(ctx0, table, chain, words...)
	}
	lines, _ := m.List(ctx0, table, chain)
	return lines[1:]
}

// TestMarkerKept: rules others put above the marker go, and the marker
// stays on top; a second marker goes; a flushed chain gets its marker back
// from the integrity check.
func TestMarkerKept(t *testing.T) {
	e := newEnv(t)
	f := e.open(protectOptions(e))
	until := t0.Add(time.Hour)
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: until})
	want := e.chain(ipv4)
	for _, tc := range []struct {
		name   string
		tamper func()
		fixed  string
	}{
		{"rule inserted on top", func() { e.v4.Insert(ctx0, table, "WEBKNOCK", 1, "-s", "203.0.113.9", "-j", "ACCEPT") }, "[1 unexpected rules deleted]"},
		{"second marker", func() { e.v4.Insert(ctx0, table, "WEBKNOCK", 3, markerFor(e.dir).args()...) }, "[1 unexpected rules deleted]"},
		{"flushed", func() { e.v4.flushChain("WEBKNOCK") }, "[ownership marker restored 2 set rules restored protect rules restored]"},
		{"marker deleted", func() { e.v4.Delete(ctx0, table, "WEBKNOCK", markerFor(e.dir).args()...) }, "[ownership marker restored]"},
	} {
		repairs := f.Health().Repairs
		tc.tamper()
		f.checkOnce(t, e.clk)
		if h := f.Health(); h.Repairs != repairs+1 {
			t.Errorf("%s: Health() = %+v, want a repair", tc.name, h)
		}
		if d := diffLines(e.chain(ipv4), want); d != "" {
			t.Errorf("%s: %s", tc.name, d)
		}
		if !strings.Contains(e.log.String(), `msg="firewall repaired" family=IPv4 fixed="`+tc.fixed+`"`) {
			t.Errorf("%s: log lacks the repair %s:\n%s", tc.name, tc.fixed, e.log)
		}
	}
}

// TestMarkerFor: the marker names the state directory, as it is when it
// fits a comment, else by hash.
func TestMarkerFor(t *testing.T) {
	long := "/" + strings.Repeat("d", 300)
	tests := []struct {
		dir, want string
	}{
		{"", "webknock:owner"},
		{"/var/lib/webknock/", "webknock:owner:/var/lib/webknock"},
		{long, "webknock:owner:sha256:"},
	}
	for _, tc := range tests {
		r := markerFor(tc.dir)
		c := r.args()[3]
		if !strings.HasPrefix(c, tc.want) || len(c) > 255 {
			t.Errorf("markerFor(%.20q) comment %q, want %q", tc.dir, c, tc.want)
		}
		if p, ok := parseRule(r.args()); !ok || p != r {
			t.Errorf("parseRule(%q) = %+v, %v; want %+v", r.args(), p, ok, r)
		}
	}
	if markerFor(long) == markerFor(long+"x") {
		t.Error("two long directories share a marker")
	}
}
