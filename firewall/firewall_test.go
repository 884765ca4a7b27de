package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestGrantRuleText(t *testing.T) {
	until := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		ip   string
		fam  family
		want string
	}{
		{"ipv4", "192.0.2.1", ipv4,
			`-E WEBKNOCK-g4 192.0.2.1,tcp:22 "webknock:ssh:1893456000"`},
		{"ipv6", "2001:db8::1", ipv6,
			`-E WEBKNOCK-g6 2001:db8::1,tcp:22 "webknock:ssh:1893456000"`},
		{"ipv4-mapped is ipv4", "::ffff:192.0.2.1", ipv4,
			`-E WEBKNOCK-g4 192.0.2.1,tcp:22 "webknock:ssh:1893456000"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			f := e.open(e.options())
			g := Grant{IP: netip.MustParseAddr(tc.ip), Sequence: "ssh", Ports: []Port{ssh}, Until: until.Add(999 * time.Millisecond)}
			if err := f.grant(g); err != nil {
				t.Fatalf("Grant(%v) = %v", g, err)
			}
			if d := diffLines(e.chain(tc.fam), e.chainOnly(tc.want)); d != "" {
				t.Errorf("family %v: %s", tc.fam, d)
			}
			if other := e.chain(1 - tc.fam); len(other) != 2 {
				t.Errorf("family %v: %q, want an empty chain", 1-tc.fam, other)
			}
			gs := f.Grants()
			want := Grant{IP: netip.MustParseAddr(tc.ip).Unmap(), Sequence: "ssh", Ports: []Port{ssh}, Until: until}
			if len(gs) != 1 || !grantEqual(gs[0], want) {
				t.Errorf("Grants() = %v, want [%v]", gs, want)
			}
		})
	}
}

func grantEqual(a, b Grant) bool {
	return a.IP == b.IP && a.Bits == b.Bits && a.Sequence == b.Sequence && slices.Equal(a.Ports, b.Ports) && a.Until.Equal(b.Until)
}

func TestGrantOneRulePerPort(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	until := t0.Add(10 * time.Minute)
	if err := f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh, dns, alt, ssh}, Until: until}); err != nil {
		t.Fatal(err)
	}
	want := e.chainOnly(grantLine("192.0.2.1/32", ssh, "ssh", until), grantLine("192.0.2.1/32", dns, "ssh", until),
		grantLine("192.0.2.1/32", alt, "ssh", until))
	if d := diffLines(e.chain(ipv4), want); d != "" {
		t.Error(d)
	}
}

func TestGrantRefused(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	tests := []struct {
		name    string
		g       Grant
		expired bool
	}{
		{"until now", Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0}, true},
		{"until past", Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(-time.Hour)}, true},
		{"under a second left", Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(999 * time.Millisecond)}, true},
		{"no address", Grant{Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}, false},
		{"unspecified", Grant{IP: netip.IPv6Unspecified(), Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}, false},
		{"zone", Grant{IP: netip.MustParseAddr("fe80::1%eth0"), Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}, false},
		{"bad sequence", Grant{IP: c1, Sequence: "a:b", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}, false},
		{"no ports", Grant{IP: c1, Sequence: "ssh", Until: t0.Add(time.Hour)}, false},
		{"bad port", Grant{IP: c1, Sequence: "ssh", Ports: []Port{{"sctp", 22}}, Until: t0.Add(time.Hour)}, false},
		{"after 2038", Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: time.Date(2038, 2, 1, 0, 0, 0, 0, time.UTC)}, false},
	}
	for _, tc := range tests {
		err := f.grant(tc.g)
		if err == nil || errors.Is(err, ErrExpired) != tc.expired {
			t.Errorf("%s: Grant = %v, want an error (ErrExpired: %v)", tc.name, err, tc.expired)
		}
	}
	if c := e.chain(ipv4); len(c) != 2 {
		t.Errorf("chain after refused grants: %q", c)
	}
	if gs := f.Grants(); len(gs) != 0 {
		t.Errorf("Grants() = %v, want none", gs)
	}
}

// TestGrantExtension: a later until replaces the rule, with the new one in
// place before the old one goes; an earlier or equal until changes nothing.
func TestGrantExtension(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	u1, u2 := t0.Add(10*time.Minute), t0.Add(20*time.Minute)
	for _, u := range []time.Time{u1, u2} {
		if err := f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: u}); err != nil {
			t.Fatal(err)
		}
	}
	want := e.chainOnly(grantLine("192.0.2.1/32", ssh, "ssh", u2))
	if d := diffLines(e.chain(ipv4), want); d != "" {
		t.Error(d)
	}
	// At no moment after the first grant was the client without a rule.
	granted := false
	for _, h := range e.v4.snapshots("WEBKNOCK") {
		n := 0
		for _, r := range h.rules {
			if strings.Contains(r, "-s 192.0.2.1/32") {
				n++
			}
		}
		if n > 0 {
			granted = true
		} else if granted {
			t.Errorf("after %s the client had no rule: %q", h.op, h.rules)
		}
	}

	before := len(e.v4.snapshots("WEBKNOCK"))
	for _, u := range []time.Time{u1, u2, u2.Add(500 * time.Millisecond)} {
		if err := f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: u}); err != nil {
			t.Fatal(err)
		}
	}
	if after := len(e.v4.snapshots("WEBKNOCK")); after != before {
		t.Errorf("earlier or equal grants changed the chain %d times", after-before)
	}
	if d := diffLines(e.chain(ipv4), want); d != "" {
		t.Error(d)
	}
	gs := f.Grants()
	if len(gs) != 1 || !gs[0].Until.Equal(u2) {
		t.Errorf("Grants() = %v, want one until %v", gs, u2)
	}
	// Another sequence is another grant.
	if err := f.grant(Grant{IP: c1, Sequence: "web", Ports: []Port{ssh}, Until: u1}); err != nil {
		t.Fatal(err)
	}
	if n := len(f.Grants()); n != 2 {
		t.Errorf("grants of two sequences: %d, want 2", n)
	}
}

func TestExpiry(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	u1, u2 := t0.Add(10*time.Minute), t0.Add(20*time.Minute)
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh, dns}, Until: u1})
	f.grant(Grant{IP: c6, Sequence: "ssh", Ports: []Port{ssh}, Until: u2})

	f.advance(e.clk, 10*time.Minute-time.Second)
	if n := len(e.chain(ipv4)); n != 4 {
		t.Fatalf("a second before until: %d lines, want 4", n)
	}
	f.advance(e.clk, time.Second)
	f.waitFor(t, "the IPv4 grant to end", func() bool { return len(e.chain(ipv4)) == 2 && len(f.Grants()) == 1 })
	if len(e.chain(ipv6)) != 3 {
		t.Errorf("IPv6 grant gone too early: %q", e.chain(ipv6))
	}
	if gs := e.readState(); len(gs) != 1 || gs[0].IP != c6 {
		t.Errorf("state file = %v, want the IPv6 grant only", gs)
	}
	f.advance(e.clk, 10*time.Minute)
	f.waitFor(t, "the IPv6 grant to end", func() bool { return len(e.chain(ipv6)) == 2 && len(f.Grants()) == 0 })
	if gs := e.readState(); len(gs) != 0 {
		t.Errorf("state file = %v, want no grants", gs)
	}
}

func TestRevoke(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	u := t0.Add(10 * time.Minute)
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: u})
	f.grant(Grant{IP: c1, Sequence: "web", Ports: []Port{alt}, Until: u})
	f.grant(Grant{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: u})

	if err := f.revoke(netip.MustParseAddr("::ffff:192.0.2.1")); err != nil {
		t.Fatalf("Revoke = %v", err)
	}
	if d := diffLines(e.chain(ipv4), e.chainOnly(grantLine("198.51.100.2/32", ssh, "ssh", u))); d != "" {
		t.Error(d)
	}
	if gs := f.Grants(); len(gs) != 1 || gs[0].IP != c2 {
		t.Errorf("Grants() = %v, want c2's only", gs)
	}
	if gs := e.readState(); len(gs) != 1 || gs[0].IP != c2 {
		t.Errorf("state file = %v, want c2's only", gs)
	}
	if err := f.revoke(c1); !errors.Is(err, ErrNoGrant) {
		t.Errorf("Revoke of a revoked address = %v, want ErrNoGrant", err)
	}
}

// TestRevokeFailure: a delete that fails is reported, and retried until the
// rule is gone.
func TestRevokeFailure(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
	e.v4.setFail(func(op, chain string, _ []string) error {
		if strings.HasPrefix(op, "delete") || op == "ipset-del" {
			return errors.New("resource busy")
		}
		return nil
	})
	if err := f.revoke(c1); err == nil {
		t.Fatal("Revoke with failing deletes = nil, want an error")
	}
	if h := f.Health(); h.InSync || h.Pending != 1 || h.Failures == 0 {
		t.Errorf("Health() = %+v, want one pending rule", h)
	}
	if n := len(e.chain(ipv4)); n != 3 {
		t.Errorf("chain has %d lines, want the rule still there", n)
	}
	e.v4.setFail(nil)
	f.advance(e.clk, doomFirst)
	f.waitFor(t, "the rule to be deleted", func() bool { return len(e.chain(ipv4)) == 2 && f.Health().InSync })
}

func TestGrantsView(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	u1, u2 := t0.Add(5*time.Minute), t0.Add(10*time.Minute)
	f.grant(Grant{IP: c6, Sequence: "ssh", Ports: []Port{ssh}, Until: u1})
	f.grant(Grant{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: u2})
	f.grant(Grant{IP: c1, Sequence: "web", Ports: []Port{alt}, Until: u2})
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh, dns}, Until: u2})
	got := f.Grants()
	want := []Grant{
		{IP: c6, Sequence: "ssh", Ports: []Port{ssh}, Until: u1},
		{IP: c1, Sequence: "ssh", Ports: []Port{ssh, dns}, Until: u2},
		{IP: c1, Sequence: "web", Ports: []Port{alt}, Until: u2},
		{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: u2},
	}
	if !slices.EqualFunc(got, want, grantEqual) {
		t.Fatalf("Grants() = %v, want %v", got, want)
	}
	got[1].Ports[0] = alt
	if f.Grants()[1].Ports[0] != ssh {
		t.Error("Grants() shares its Ports with the caller")
	}
}

func TestStateFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, stateFile)
	doc := stateDoc{
		Grants: []Grant{
			{IP: c1, Sequence: "ssh", Ports: []Port{ssh, dns}, Knocked: t0.Add(-time.Minute), Until: t0},
			{IP: c6, Sequence: "web", Ports: []Port{alt}, Until: t0.Add(time.Hour)},
			{IP: mustAddr("198.51.100.0"), Bits: 24, Sequence: "web", Ports: []Port{alt}, Until: t0.Add(time.Hour)},
		},
		Pending: []Grant{{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}},
		Revoked: []revoked{
			{Source: source{host(mustAddr("192.0.2.9"))}, At: t0.Add(-time.Hour)},
			{Source: source{netip.MustParsePrefix("2001:db8:1::/48")}, At: t0.Add(-time.Minute)},
		},
	}
	for range 2 { // the second replaces the first
		if err := writeState(path, doc); err != nil {
			t.Fatal(err)
		}
	}
	got, err := readState(path)
	if err != nil || !slices.EqualFunc(got.Grants, doc.Grants, grantEqual) || !slices.EqualFunc(got.Pending, doc.Pending, grantEqual) ||
		!slices.Equal(got.Revoked, doc.Revoked) || !got.Grants[0].Knocked.Equal(doc.Grants[0].Knocked) {
		t.Fatalf("readState = %+v, %v; want %+v", got, err, doc)
	}
	b, _ := os.ReadFile(path)
	for _, s := range []string{`"ip": "192.0.2.1"`, `"ports": [`, `"22/tcp"`, `"until": "2026-11-22T19:01:34Z"`, `"version": 2`,
		`"knocked": "2026-11-22T19:00:34Z"`, `"pending": [`, `"revoked": [`, `"ip": "198.51.100.0",`, `"bits": 24,`,
		`"ip": "192.0.2.9",`, `"ip": "2001:db8:1::/48",`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("state file lacks %s:\n%s", s, b)
		}
	}
	if strings.Count(string(b), `"knocked"`) != 1 || strings.Count(string(b), `"bits"`) != 1 {
		t.Errorf("state file has a knocked time or bits for a grant without one:\n%s", b)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %v, want the state file only", entries)
	}

	// Version 1, as webknock wrote it before pending grants and revokes.
	os.WriteFile(path, []byte(`{"version": 1, "grants": [{"ip": "192.0.2.1", "sequence": "ssh", "ports": ["22/tcp"], "until": "2026-11-22T19:01:34Z"}]}`), 0o600)
	if got, err := readState(path); err != nil || len(got.Grants) != 1 || got.Grants[0].IP != c1 {
		t.Errorf("readState of version 1 = %+v, %v", got, err)
	}

	for name, text := range map[string]string{
		"not json":            "{",
		"bad version":         `{"version": 3, "grants": []}`,
		"bad address":         `{"version": 1, "grants": [{"ip": "x", "sequence": "ssh", "ports": ["22/tcp"], "until": "2026-11-22T19:01:34Z"}]}`,
		"bad port":            `{"version": 1, "grants": [{"ip": "192.0.2.1", "sequence": "ssh", "ports": ["22/sctp"], "until": "2026-11-22T19:01:34Z"}]}`,
		"bad sequence":        `{"version": 1, "grants": [{"ip": "192.0.2.1", "sequence": "", "ports": ["22/tcp"], "until": "2026-11-22T19:01:34Z"}]}`,
		"bad pending":         `{"version": 2, "grants": [], "pending": [{"ip": "192.0.2.1", "sequence": "ssh", "ports": [], "until": "2026-11-22T19:01:34Z"}]}`,
		"bad revoke":          `{"version": 2, "grants": [], "revoked": [{"ip": "192.0.2.1"}]}`,
		"bad revoked network": `{"version": 2, "grants": [], "revoked": [{"ip": "192.0.2.0/33", "at": "2026-11-22T19:01:34Z"}]}`,
		"network too wide":    `{"version": 2, "grants": [{"ip": "192.0.0.0", "bits": 8, "sequence": "ssh", "ports": ["22/tcp"], "until": "2026-11-22T19:01:34Z"}]}`,
		"bits too many":       `{"version": 2, "grants": [{"ip": "192.0.2.1", "bits": 33, "sequence": "ssh", "ports": ["22/tcp"], "until": "2026-11-22T19:01:34Z"}]}`,
		"negative bits":       `{"version": 2, "grants": [{"ip": "2001:db8::", "bits": -1, "sequence": "ssh", "ports": ["22/tcp"], "until": "2026-11-22T19:01:34Z"}]}`,
		"unknown key":         `{"version": 2, "grants": [], "open": ["22/tcp"]}`,
	} {
		os.WriteFile(path, []byte(text), 0o600)
		if gs, err := readState(path); err == nil {
			t.Errorf("%s: readState = %v, want an error", name, gs)
		}
	}
}

// TestReconcile plants what a crash, an administrator and time leave behind,
// and checks that Open leaves the chain with exactly the live grants, and
// that opening again changes nothing.
func TestReconcile(t *testing.T) {
	e := newEnv(t)
	live, expired := t0.Add(10*time.Minute), t0.Add(-time.Minute)
	e.writeState(
		Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh, dns}, Until: live},         // dns rule missing
		Grant{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: live},              // rule missing
		Grant{IP: c6, Sequence: "ssh", Ports: []Port{ssh}, Until: live},              // present twice
		Grant{IP: c1, Sequence: "old", Ports: []Port{ssh}, Until: expired},           // expired, rule present
		Grant{IP: c1, Sequence: "web", Ports: []Port{alt}, Until: t0.Add(time.Hour)}, // present
	)
	spec := func(line string) string { return strings.TrimPrefix(line, "-A WEBKNOCK ") }
	e.plant(ipv4, "WEBKNOCK",
		`-s 203.0.113.7/32 -j ACCEPT`, // above the marker
		spec(e.markerLine()),
		spec(oldGrantLine("192.0.2.1/32", ssh, "ssh", live)),
		spec(e.markerLine()),
		spec(oldGrantLine("192.0.2.1/32", ssh, "old", expired)),
		`-s 192.0.2.9/32 -j ACCEPT`,
		spec(oldGrantLine("192.0.2.1/32", ssh, "ssh", live)),
		spec(oldGrantLine("203.0.113.5/32", ssh, "ssh", live)), // ours, but in no grant
		// The brief's example: its datestop is a day before its comment.
		`-s 192.0.2.1/32 -p tcp -m tcp --dport 22 -m time --datestop 2026-11-22T19:11:34 -m comment --comment "webknock:ssh:1795461094" -j ACCEPT`,
		`-p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m comment --comment "webknock:protect" -j DROP`,
		spec(oldGrantLine("192.0.2.1/32", alt, "web", t0.Add(time.Hour))),
	)
	e.plant(ipv6, "WEBKNOCK",
		spec(oldGrantLine("2001:db8::7/128", ssh, "ssh", live)), // above the marker, and kept
		spec(e.markerLine()),
		spec(oldGrantLine("2001:db8::7/128", ssh, "ssh", live)),
		`-p tcp -m tcp --dport 22 -j ACCEPT`,
	)
	e.plant(ipv4, "INPUT", `-j WEBKNOCK`, `-s 192.0.2.99/32 -j DROP`)

	wantV4 := e.chainOnly(
		grantLine("192.0.2.1/32", dns, "ssh", live),    // restored
		grantLine("198.51.100.2/32", ssh, "ssh", live), // restored
		grantLine("192.0.2.1/32", ssh, "ssh", live),
		grantLine("192.0.2.1/32", alt, "web", t0.Add(time.Hour)),
	)
	wantV6 := e.chainOnly(grantLine("2001:db8::7/128", ssh, "ssh", live))
	wantInput := []string{"-P INPUT ACCEPT", "-A INPUT -j WEBKNOCK", "-A INPUT -s 192.0.2.99/32 -j DROP"}
	var changes int
	for run := range 3 {
		f := e.open(e.options())
		if d := diffLines(e.chain(ipv4), wantV4); d != "" {
			t.Errorf("run %d: IPv4: %s", run, d)
		}
		if d := diffLines(e.chain(ipv6), wantV6); d != "" {
			t.Errorf("run %d: IPv6: %s", run, d)
		}
		input, _ := e.v4.List(ctx0, table, "INPUT")
		if d := diffLines(input, wantInput); d != "" {
			t.Errorf("run %d: INPUT: %s", run, d)
		}
		input6, _ := e.v6.List(ctx0, table, "INPUT")
		if d := diffLines(input6, []string{"-P INPUT ACCEPT", "-A INPUT -j WEBKNOCK"}); d != "" {
			t.Errorf("run %d: IPv6 INPUT: %s", run, d)
		}
		if gs := f.Grants(); len(gs) != 4 {
			t.Errorf("run %d: Grants() = %v, want 4", run, gs)
		}
		if gs := e.readState(); len(gs) != 4 {
			t.Errorf("run %d: state file = %v, want 4 grants", run, gs)
		}
		f.Close()
		n := len(e.v4.snapshots("")) + len(e.v6.snapshots(""))
		if run > 0 && n != changes {
			t.Errorf("run %d changed the tables %d times, want none", run, n-changes)
		}
		changes = n
	}
}

// TestRebuildFromComments: without a readable state file the grants come
// from the rules' comments, and the log says so.
func TestRebuildFromComments(t *testing.T) {
	for _, state := range []string{"missing", "corrupt"} {
		t.Run(state, func(t *testing.T) {
			e := newEnv(t)
			if state == "corrupt" {
				os.WriteFile(filepath.Join(e.dir, stateFile), []byte(`{"version": 1, "grants": [`), 0o600)
			}
			live := t0.Add(10 * time.Minute)
			e.plant(ipv4, "WEBKNOCK",
				oldGrantLine("192.0.2.1/32", ssh, "ssh", live)[len("-A WEBKNOCK "):],
				oldGrantLine("192.0.2.1/32", dns, "ssh", live)[len("-A WEBKNOCK "):],
				oldGrantLine("192.0.2.1/32", ssh, "ssh", t0.Add(-time.Second))[len("-A WEBKNOCK "):],
				oldGrantLine("198.51.100.2/32", ssh, "ssh", t0.Add(time.Minute))[len("-A WEBKNOCK "):],
				oldGrantLine("198.51.100.2/32", ssh, "ssh", live)[len("-A WEBKNOCK "):], // extended; the old one left over
			)
			e.plant(ipv6, "WEBKNOCK", oldGrantLine("2001:db8::7/128", alt, "web", live)[len("-A WEBKNOCK "):])
			f := e.open(e.options())
			want := []Grant{
				{IP: c1, Sequence: "ssh", Ports: []Port{ssh, dns}, Until: live},
				{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: live},
				{IP: c6, Sequence: "web", Ports: []Port{alt}, Until: live},
			}
			if got := f.Grants(); !slices.EqualFunc(got, want, grantEqual) {
				t.Errorf("Grants() = %v, want %v", got, want)
			}
			if gs := e.readState(); !slices.EqualFunc(gs, want, grantEqual) {
				t.Errorf("state file = %v, want %v", gs, want)
			}
			wantV4 := e.chainOnly(grantLine("192.0.2.1/32", ssh, "ssh", live), grantLine("192.0.2.1/32", dns, "ssh", live),
				grantLine("198.51.100.2/32", ssh, "ssh", live))
			if d := diffLines(e.chain(ipv4), wantV4); d != "" {
				t.Error(d)
			}
			wantLog := map[string]string{"missing": "no state file", "corrupt": "state file unreadable"}[state]
			for _, s := range []string{wantLog, "grants rebuilt from the rules' comments"} {
				if !strings.Contains(e.log.String(), s) {
					t.Errorf("log lacks %q:\n%s", s, e.log)
				}
			}
		})
	}
}

func protectOptions(e *env) Options {
	o := e.options()
	o.Protect = true
	o.Ports = []Port{ssh, dns}
	o.AlwaysAllow = []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8"), netip.MustParsePrefix("2001:db8:ffff::/48"), netip.MustParsePrefix("192.168.0.0/16")}
	return o
}

func TestProtectTail(t *testing.T) {
	e := newEnv(t)
	f := e.open(protectOptions(e))
	u := t0.Add(10 * time.Minute)
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: u})
	f.grant(Grant{IP: c6, Sequence: "ssh", Ports: []Port{ssh}, Until: u})
	protect := slices.Concat(protectLines(ssh), protectLines(dns))
	wantV4 := e.chainOnly(slices.Concat([]string{
		grantLine("192.0.2.1/32", ssh, "ssh", u),
		`-A WEBKNOCK -s 10.0.0.0/8 -p tcp -m tcp --dport 22 -m comment --comment "webknock:allow" -j ACCEPT`,
		`-A WEBKNOCK -s 10.0.0.0/8 -p udp -m udp --dport 53 -m comment --comment "webknock:allow" -j ACCEPT`,
		`-A WEBKNOCK -s 192.168.0.0/16 -p tcp -m tcp --dport 22 -m comment --comment "webknock:allow" -j ACCEPT`,
		`-A WEBKNOCK -s 192.168.0.0/16 -p udp -m udp --dport 53 -m comment --comment "webknock:allow" -j ACCEPT`,
	}, protect)...)
	wantV6 := e.chainOnly(slices.Concat([]string{
		grantLine("2001:db8::7/128", ssh, "ssh", u),
		`-A WEBKNOCK -s 2001:db8:ffff::/48 -p tcp -m tcp --dport 22 -m comment --comment "webknock:allow" -j ACCEPT`,
		`-A WEBKNOCK -s 2001:db8:ffff::/48 -p udp -m udp --dport 53 -m comment --comment "webknock:allow" -j ACCEPT`,
	}, protect)...)
	if d := diffLines(e.chain(ipv4), wantV4); d != "" {
		t.Errorf("IPv4: %s", d)
	}
	if d := diffLines(e.chain(ipv6), wantV6); d != "" {
		t.Errorf("IPv6: %s", d)
	}
	// The jump came after the chain was complete.
	for _, fam := range families {
		hist := e.tabs(fam).snapshots("")
		if i := slices.IndexFunc(hist, func(h memChange) bool { return h.chain == "INPUT" }); i != len(hist)-2 {
			t.Errorf("%v: the jump was not the last change at Open: %+v", fam, hist)
		}
	}
}

// dropGaps returns the moments at which a drop that existed was missing.
func dropGaps(m *memTables, port Port) []memChange {
	drop := fmt.Sprintf(`-p %s -m %s --dport %d -m conntrack --ctstate NEW -m comment --comment "webknock:protect" -j DROP`, port.Proto, port.Proto, port.Number)
	var gaps []memChange
	seen := false
	for _, h := range m.snapshots("WEBKNOCK") {
		has := slices.Contains(h.rules, drop)
		if has {
			seen = true
		} else if seen {
			gaps = append(gaps, h)
		}
	}
	return gaps
}

func TestReconfigure(t *testing.T) {
	e := newEnv(t)
	o := protectOptions(e)
	f := e.open(o)
	u := t0.Add(10 * time.Minute)
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: u})

	o.Ports = []Port{alt, ssh}
	o.AlwaysAllow = []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")}
	if err := f.Reconfigure(ctx0, o); err != nil {
		t.Fatalf("Reconfigure = %v", err)
	}
	protect := slices.Concat(protectLines(alt), protectLines(ssh))
	want := e.chainOnly(slices.Concat([]string{
		grantLine("192.0.2.1/32", ssh, "ssh", u),
		`-A WEBKNOCK -s 172.16.0.0/12 -p tcp -m tcp --dport 2222 -m comment --comment "webknock:allow" -j ACCEPT`,
		`-A WEBKNOCK -s 172.16.0.0/12 -p tcp -m tcp --dport 22 -m comment --comment "webknock:allow" -j ACCEPT`,
	}, protect)...)
	if d := diffLines(e.chain(ipv4), want); d != "" {
		t.Error(d)
	}
	if gaps := dropGaps(e.v4, ssh); len(gaps) > 0 {
		t.Errorf("the 22/tcp drop was missing after: %+v", gaps)
	}
	if d := diffLines(e.chain(ipv6), e.chainOnly(protect...)); d != "" {
		t.Errorf("IPv6: %s", d)
	}
	if gaps := dropGaps(e.v6, ssh); len(gaps) > 0 {
		t.Errorf("IPv6: the 22/tcp drop was missing after: %+v", gaps)
	}

	// The same configuration again changes nothing.
	n := len(e.v4.snapshots(""))
	if err := f.Reconfigure(ctx0, o); err != nil {
		t.Fatal(err)
	}
	if m := len(e.v4.snapshots("")); m != n {
		t.Errorf("an unchanged configuration changed the chain %d times", m-n)
	}

	for _, bad := range []func(*Options){
		func(o *Options) { o.Chain = "OTHER" },
		func(o *Options) { o.Hook = "FORWARD" },
		func(o *Options) { o.Backend = backendDryRun },
		func(o *Options) { o.StateDir = t.TempDir() },
		func(o *Options) { o.Ports = []Port{{"tcp", 0}} },
	} {
		b := o
		bad(&b)
		if err := f.Reconfigure(ctx0, b); err == nil {
			t.Errorf("Reconfigure(%+v) = nil, want an error", b)
		}
	}

	o.Protect = false
	if err := f.Reconfigure(ctx0, o); err != nil {
		t.Fatal(err)
	}
	if d := diffLines(e.chain(ipv4), want[:3]); d != "" {
		t.Errorf("protect off: %s", d)
	}
}

// TestReconfigureFailure: when the new rules cannot be appended, the old
// drops stay and the error is returned.
func TestReconfigureFailure(t *testing.T) {
	e := newEnv(t)
	o := protectOptions(e)
	f := e.open(o)
	before := e.chain(ipv4)
	e.v4.setFail(func(op, _ string, spec []string) error {
		if op == "append" && slices.Contains(spec, "2222") {
			return errors.New("no memory")
		}
		return nil
	})
	o.Ports = []Port{ssh, alt}
	if err := f.Reconfigure(ctx0, o); err == nil {
		t.Fatal("Reconfigure with failing appends = nil, want an error")
	}
	if gaps := dropGaps(e.v4, ssh); len(gaps) > 0 {
		t.Errorf("the 22/tcp drop was missing after: %+v", gaps)
	}
	e.v4.setFail(nil)
	if err := f.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if d := diffLines(e.chain(ipv4), before); d != "" {
		t.Errorf("after a failed reconfigure: %s", d)
	}
}

// Reconcile runs a reconcile on each worker, for the tests.
func (f *fw) Reconcile() error {
	return errors.Join(f.onEach(ctx0, f.workers(), func(_ int, w *worker, ctx context.Context) error { return w.reconcile(ctx) })...)
}

// TestRetry: a failing call is retried with backoff on the clock; a grant
// that fails after the retries leaves no rule and waits (TestGrantPending).
func TestRetry(t *testing.T) {
	tests := []struct {
		name  string
		fails int // inserts of port 2222 that fail
		ok    bool
	}{
		{"recovers", 2, true},
		{"fails for now", 3, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.delays = defaultDelays
			f := e.open(e.options())
			var mu sync.Mutex
			left := tc.fails
			e.v4.setFail(func(op, _ string, spec []string) error {
				mu.Lock()
				defer mu.Unlock()
				if op == "ipset-add" && slices.Contains(spec, "2222") && left > 0 {
					left--
					return errors.New("xtables lock busy")
				}
				return nil
			})
			done := make(chan error, 1)
			go func() {
				done <- f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh, alt}, Until: t0.Add(time.Hour)})
			}()
			var waits []time.Duration
			deadline := time.After(10 * time.Second)
			var err error
		wait:
			for {
				select {
				case d := <-e.clk.added:
					if d < time.Second { // a backoff, not a timer of the worker
						waits = append(waits, d)
						e.clk.Advance(d)
					}
				case err = <-done:
					break wait
				case <-deadline:
					t.Fatal("Grant did not return")
				}
			}
			wantWaits := defaultDelays[:min(tc.fails, len(defaultDelays))]
			if !slices.Equal(waits, wantWaits) {
				t.Errorf("backoff waits %v, want %v", waits, wantWaits)
			}
			if h := f.Health(); h.Failures != uint64(tc.fails) {
				t.Errorf("Health().Failures = %d, want %d", h.Failures, tc.fails)
			}
			if tc.ok {
				if err != nil || len(f.Grants()) != 1 || len(e.chain(ipv4)) != 4 {
					t.Errorf("Grant = %v; grants %v; chain %q", err, f.Grants(), e.chain(ipv4))
				}
				return
			}
			if !errors.Is(err, ErrPending) || !strings.Contains(err.Error(), "add 2 elements") || !strings.Contains(err.Error(), "WEBKNOCK-g4") {
				t.Errorf("Grant = %v, want ErrPending and the add's error", err)
			}
			if h := f.Health(); h.InSync || h.PendingGrants != 1 || !strings.Contains(h.LastError, "xtables lock busy") {
				t.Errorf("Health() = %+v, want the failure reported, a grant pending", h)
			}
			if n := strings.Count(e.log.String(), `msg="iptables call failed" family=IPv4 op=add`); n != 3 {
				t.Errorf("log has %d failed adds, want 3:\n%s", n, e.log)
			}
			if gs := f.Grants(); len(gs) != 0 {
				t.Errorf("Grants() = %v after a failed grant", gs)
			}
			if c := e.chain(ipv4); len(c) != 2 {
				t.Errorf("chain %q after a failed grant, want it empty", c)
			}
		})
	}
}

// TestGrantPending: a grant whose insert fails waits, is kept in the state
// file, and is retried with a growing backoff until it is applied, its
// window ends, or its address is revoked.
func TestGrantPending(t *testing.T) {
	until := t0.Add(time.Hour)
	g := Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: until}
	tests := []struct {
		name string
		// then runs after the grant failed, with the inserts still failing;
		// it returns whether the grant ends applied.
		then func(t *testing.T, e *env, f *fw, fail func(bool)) bool
	}{
		{"applied on a later retry", func(t *testing.T, e *env, f *fw, fail func(bool)) bool {
			f.advance(e.clk, pendFirst) // the first retry fails too
			f.waitFor(t, "the first retry", func() bool { return strings.Contains(e.log.String(), "pending grant still not applied") })
			fail(false)
			f.advance(e.clk, 2*pendFirst-time.Millisecond)
			if len(f.Grants()) != 0 {
				t.Errorf("applied before the doubled backoff")
			}
			f.advance(e.clk, time.Millisecond)
			f.waitFor(t, "the grant to be applied", func() bool { return len(f.Grants()) == 1 })
			return true
		}},
		{"window ends", func(t *testing.T, e *env, f *fw, fail func(bool)) bool {
			for e.clk.Now().Before(until) {
				f.advance(e.clk, pendMax)
			}
			f.waitFor(t, "the grant to be given up", func() bool { return f.Health().PendingGrants == 0 })
			if !strings.Contains(e.log.String(), "pending grant given up: its window ended") {
				t.Errorf("log lacks the end of the pending grant:\n%s", e.log)
			}
			return false
		}},
		{"revoked", func(t *testing.T, e *env, f *fw, fail func(bool)) bool {
			if err := f.revoke(c1); err != nil {
				t.Errorf("Revoke of a pending grant = %v", err)
			}
			fail(false)
			f.advance(e.clk, pendMax)
			return false
		}},
		{"restart", func(t *testing.T, e *env, f *fw, fail func(bool)) bool {
			f.Close()
			if doc := e.readDoc(); len(doc.Pending) != 1 || len(doc.Grants) != 0 {
				t.Errorf("state file = %+v, want the grant pending", doc)
			}
			fail(false)
			f2 := e.open(e.options())
			if gs := f2.Grants(); len(gs) != 1 {
				t.Errorf("after a restart: Grants() = %v, want the pending grant applied", gs)
			}
			return true
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			f := e.open(e.options())
			failing := e.failGrantInserts()
			got, err := f.Firewall.Grant(ctx0, g)
			if !errors.Is(err, ErrPending) || !grantEqual(got, g) {
				t.Fatalf("Grant = %v, %v; want the grant pending", got, err)
			}
			h := f.Health()
			if h.InSync || h.PendingGrants != 1 || !slices.Contains(h.Problems, "IPv4: 1 grant waiting to be applied") || len(f.Grants()) != 0 {
				t.Errorf("Health() = %+v, Grants() = %v; want one grant pending", h, f.Grants())
			}
			if doc := e.readDoc(); len(doc.Pending) != 1 {
				t.Errorf("state file = %+v, want the grant pending", doc)
			}
			// The same grant again is told it waits, and waits once.
			if _, err := f.Firewall.Grant(ctx0, g); !errors.Is(err, ErrPending) || f.Health().PendingGrants != 1 {
				t.Errorf("Grant again = %v, %+v", err, f.Health())
			}
			applied := tc.then(t, e, f, failing.Store)
			if !applied {
				f.waitFor(t, "no grant", func() bool { return f.Health().PendingGrants == 0 })
				if gs := f.Grants(); len(gs) != 0 || len(e.chain(ipv4)) != 2 {
					t.Errorf("Grants() = %v, chain %q; want no grant", gs, e.chain(ipv4))
				}
				if h := f.Health(); !h.InSync {
					t.Errorf("Health() = %+v, want in sync", h)
				}
				return
			}
			if c := e.chain(ipv4); !slices.Contains(c, grantLine("192.0.2.1/32", ssh, "ssh", until)) {
				t.Errorf("chain %q, want the grant", e.chain(ipv4))
			}
		})
	}
}

// TestConcurrentGrants: grants from many goroutines never duplicate a rule.
func TestConcurrentGrants(t *testing.T) {
	e := newEnv(t)
	f := e.open(protectOptions(e))
	ips := []netip.Addr{c1, c2, c6}
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Go(func() {
			g := Grant{IP: ips[i%3], Sequence: "ssh", Ports: []Port{ssh, dns}, Until: t0.Add(time.Duration(10+i%7) * time.Minute)}
			if err := f.grant(g); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	last := t0.Add(16 * time.Minute)
	for _, fam := range families {
		lines := e.chain(fam)
		seen := map[string]bool{}
		grants := 0
		for _, l := range lines {
			if seen[l] {
				t.Errorf("%v: duplicate %s", fam, l)
			}
			seen[l] = true
			if strings.Contains(l, "webknock:ssh:") {
				grants++
				if !strings.Contains(l, fmt.Sprint(last.Unix())) {
					t.Errorf("%v: %s does not end at the latest until", fam, l)
				}
			}
		}
		if want := map[family]int{ipv4: 4, ipv6: 2}[fam]; grants != want {
			t.Errorf("%v: %d grant rules, want %d", fam, grants, want)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Options)
	}{
		{"unknown backend", func(o *Options) { o.Backend = "nft" }},
		{"bad chain", func(o *Options) { o.Chain = "-j" }},
		{"long chain", func(o *Options) { o.Chain = strings.Repeat("W", 29) }},
		{"builtin chain", func(o *Options) { o.Chain = "INPUT"; o.Hook = "FORWARD" }},
		{"chain is hook", func(o *Options) { o.Chain = "X"; o.Hook = "X" }},
		{"bad port", func(o *Options) { o.Ports = []Port{{"tcp", 0}} }},
		{"bad network", func(o *Options) { o.AlwaysAllow = []netip.Prefix{{}} }},
		{"hook missing", func(o *Options) { o.Hook = "DOCKER-USER" }},
	}
	for _, tc := range tests {
		e := newEnv(t)
		o := e.options()
		tc.edit(&o)
		if _, err := e.tryOpen(o); err == nil {
			t.Errorf("%s: open = nil error", tc.name)
		}
	}
}

func TestClosed(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	if err := f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := f.grant(Grant{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}); !errors.Is(err, errClosed) {
		t.Errorf("Grant after Close = %v, want errClosed", err)
	}
	if n := len(e.chain(ipv4)); n != 3 {
		t.Errorf("Close removed rules: %q", e.chain(ipv4))
	}
	ctx, cancel := context.WithCancel(ctx0)
	cancel()
	f2 := e.open(e.options())
	if _, err := f2.Firewall.Revoke(ctx, host(c1), ""); !errors.Is(err, context.Canceled) {
		t.Errorf("Revoke with a canceled context = %v", err)
	}
}

func TestFlushFamily(t *testing.T) {
	e := newEnv(t)
	f := e.open(protectOptions(e))
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
	f.Close()
	e.plant(ipv4, "INPUT", "-j WEBKNOCK", "-s 192.0.2.99/32 -j DROP")
	o, _ := protectOptions(e).normalize()
	for _, fam := range families {
		rs := newIPTRules(fam, e.tabs(fam), &o)
		for range 2 { // the second finds nothing to do
			if err := rs.flush(ctx0); err != nil {
				t.Fatalf("%v: flush: %v", fam, err)
			}
		}
		if ok, _ := e.tabs(fam).ChainExists(ctx0, table, "WEBKNOCK"); ok {
			t.Errorf("%v: chain still there", fam)
		}
		input, _ := e.tabs(fam).List(ctx0, table, "INPUT")
		for _, l := range input {
			if strings.Contains(l, "WEBKNOCK") {
				t.Errorf("%v: jump still there: %q", fam, input)
			}
		}
	}
	if input, _ := e.v4.List(ctx0, table, "INPUT"); !slices.Contains(input, "-A INPUT -s 192.0.2.99/32 -j DROP") {
		t.Errorf("flush touched a rule not ours: %q", input)
	}
}

// TestDryRun: the dry-run backend logs each change, keeps its own state file
// and Flush removes it.
func TestDryRun(t *testing.T) {
	dir := t.TempDir()
	log := &syncBuffer{}
	o := Options{Backend: backendDryRun, Hook: "DOCKER-USER", StateDir: dir, Protect: true, Ports: []Port{ssh},
		Logger: newTextLogger(log)}
	f, err := Open(ctx0, o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Grant(ctx0, Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, s := range []string{
		`command="iptables -t filter -N WEBKNOCK"`,
		`command="iptables -t filter -I WEBKNOCK 1 -m comment --comment webknock:owner:` + dir + `"`,
		`command="ip6tables -t filter -A WEBKNOCK -p tcp --dport 22 -m conntrack --ctstate NEW -m comment --comment webknock:protect -j DROP"`,
		`command="iptables -t filter -I DOCKER-USER 1 -p tcp -m multiport --dports 22 -j WEBKNOCK"`,
		`command="ipset add -exist WEBKNOCK-g4 192.0.2.1,tcp:22 timeout`,
	} {
		if !strings.Contains(log.String(), s) {
			t.Errorf("log lacks %s:\n%s", s, log)
		}
	}
	if fileExists(filepath.Join(dir, stateFile)) || !fileExists(filepath.Join(dir, dryRunStateFile)) {
		t.Errorf("dry run wrote the real state file, or not its own")
	}
	if err := Flush(ctx0, o); err != nil {
		t.Fatal(err)
	}
	if fileExists(filepath.Join(dir, dryRunStateFile)) {
		t.Errorf("Flush left the state file")
	}
}

// TestStateWriteFailure: a grant in the kernel stands when the state file
// cannot be written; Health says so until a later write succeeds.
func TestStateWriteFailure(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	path := filepath.Join(e.dir, stateFile)
	os.Remove(path)
	if err := os.Mkdir(path, 0o700); err != nil { // a directory where the file goes
		t.Fatal(err)
	}
	if err := f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}); err != nil {
		t.Fatalf("Grant = %v", err)
	}
	if h := f.Health(); h.InSync {
		t.Errorf("Health() = %+v with an unwritten state file", h)
	}
	if !strings.Contains(e.log.String(), "cannot write the state file") {
		t.Errorf("log lacks the failed write:\n%s", e.log)
	}
	os.Remove(path)
	if err := f.grant(Grant{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if h := f.Health(); !h.InSync {
		t.Errorf("Health() = %+v after a successful write", h)
	}
	if gs := e.readState(); len(gs) != 2 {
		t.Errorf("state file = %v, want both grants", gs)
	}
}
