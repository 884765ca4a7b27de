package firewall

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNormalizeBits(t *testing.T) {
	tests := []struct {
		name    string
		ip      string
		bits    int
		want    string // the source; "" when refused
		wantErr string
	}{
		{"address", "192.0.2.77", 0, "192.0.2.77/32", ""},
		{"address, its full length", "192.0.2.77", 32, "192.0.2.77/32", ""},
		{"IPv4 /24", "192.0.2.77", 24, "192.0.2.0/24", ""},
		{"IPv4 /16", "192.0.2.77", 16, "192.0.0.0/16", ""},
		{"IPv4 /15", "192.0.2.77", 15, "", "/16 to /32"},
		{"IPv4 /33", "192.0.2.77", 33, "", "/16 to /32"},
		{"negative", "192.0.2.77", -1, "", "/16 to /32"},
		{"IPv4-mapped", "::ffff:192.0.2.77", 24, "192.0.2.0/24", ""},
		{"IPv6 /64", "2001:db8:1:2:3::9", 64, "2001:db8:1:2::/64", ""},
		{"IPv6 /32", "2001:db8:1:2:3::9", 32, "2001:db8::/32", ""},
		{"IPv6 /128", "2001:db8::9", 128, "2001:db8::9/128", ""},
		{"IPv6 /31", "2001:db8::9", 31, "", "/32 to /128"},
		{"IPv6 /129", "2001:db8::9", 129, "", "/32 to /128"},
		{"network of the unspecified address", "0.0.1.5", 16, "", "not an address a client connects from"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := Grant{IP: netip.MustParseAddr(tc.ip), Bits: tc.bits, Sequence: "ssh", Ports: []Port{ssh}, Until: t0}
			n, err := normalizeGrant(g)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("normalizeGrant(%s bits %d) = %v, %v; want an error with %q", tc.ip, tc.bits, n, err, tc.wantErr)
				}
				return
			}
			if err != nil || n.Source().String() != tc.want {
				t.Fatalf("normalizeGrant(%s bits %d) = %v (source %v), %v; want source %s", tc.ip, tc.bits, n, n.Source(), err, tc.want)
			}
			if n.IP != n.Source().Addr() || (n.Bits == 0) != n.Source().IsSingleIP() {
				t.Errorf("normalizeGrant(%s bits %d) = IP %s bits %d: want the network's address, and bits 0 for an address", tc.ip, tc.bits, n.IP, n.Bits)
			}
			if again, err := normalizeGrant(n); err != nil || !grantEqual(again, n) {
				t.Errorf("normalizeGrant of its own result = %v, %v; want it unchanged", again, err)
			}
		})
	}
}

func TestParseSource(t *testing.T) {
	tests := []struct {
		in, want string // want "" for an error
		text     string // FormatSource of the result
	}{
		{"192.0.2.7", "192.0.2.7/32", "192.0.2.7"},
		{"192.0.2.7/24", "192.0.2.0/24", "192.0.2.0/24"},
		{"192.0.2.7/32", "192.0.2.7/32", "192.0.2.7"},
		{"::ffff:192.0.2.7", "192.0.2.7/32", "192.0.2.7"},
		{"::ffff:192.0.2.0/120", "192.0.2.0/24", "192.0.2.0/24"},
		{"2001:db8::7", "2001:db8::7/128", "2001:db8::7"},
		{"2001:db8::7/64", "2001:db8::/64", "2001:db8::/64"},
		{"0.0.0.0/0", "0.0.0.0/0", "0.0.0.0/0"},
		{"fe80::1%eth0", "", ""},
		{"192.0.2.7/33", "", ""},
		{"192.0.2", "", ""},
		{"", "", ""},
	}
	for _, tc := range tests {
		p, err := ParseSource(tc.in)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("ParseSource(%q) = %v, want an error", tc.in, p)
		case tc.want != "" && (err != nil || p.String() != tc.want):
			t.Errorf("ParseSource(%q) = %v, %v; want %s", tc.in, p, err, tc.want)
		case tc.want != "" && FormatSource(p) != tc.text:
			t.Errorf("FormatSource(%v) = %q, want %q", p, FormatSource(p), tc.text)
		}
	}
}

// TestGrantToNetwork: a grant widened to a network opens to it with one
// rule per port, is held apart from a grant of one address in it, is kept
// in the state file with its bits, and is rebuilt from its rules.
func TestGrantToNetwork(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	u := t0.Add(10 * time.Minute)
	net6 := Grant{IP: mustAddr("2001:db8:1:2:aaaa::9"), Bits: 64, Sequence: "ssh", Ports: []Port{ssh}, Until: u}
	for _, g := range []Grant{
		{IP: mustAddr("192.0.2.77"), Bits: 24, Sequence: "ssh", Ports: []Port{ssh, dns}, Until: u},
		{IP: mustAddr("192.0.2.5"), Sequence: "ssh", Ports: []Port{ssh}, Until: u},
		net6,
	} {
		got, err := f.Firewall.Grant(ctx0, g)
		if err != nil {
			t.Fatalf("Grant(%v) = %v", g, err)
		}
		if got.IP != got.Source().Addr() {
			t.Errorf("Grant(%v) applied %v: want the network's address", g, got)
		}
	}
	wantV4 := e.chainOnly(grantLine("192.0.2.5/32", ssh, "ssh", u), grantLine("192.0.2.0/24", ssh, "ssh", u), grantLine("192.0.2.0/24", dns, "ssh", u))
	if d := diffLines(e.chain(ipv4), wantV4); d != "" {
		t.Error(d)
	}
	if d := diffLines(e.chain(ipv6), e.chainOnly(grantLine("2001:db8:1:2::/64", ssh, "ssh", u))); d != "" {
		t.Errorf("IPv6: %s", d)
	}
	want := []Grant{
		{IP: mustAddr("192.0.2.0"), Bits: 24, Sequence: "ssh", Ports: []Port{ssh, dns}, Until: u},
		{IP: mustAddr("192.0.2.5"), Sequence: "ssh", Ports: []Port{ssh}, Until: u},
		{IP: mustAddr("2001:db8:1:2::"), Bits: 64, Sequence: "ssh", Ports: []Port{ssh}, Until: u},
	}
	if gs := f.Grants(); !slices.EqualFunc(gs, want, grantEqual) {
		t.Errorf("Grants() = %v, want %v", gs, want)
	}
	if gs := e.readState(); !slices.EqualFunc(gs, want, grantEqual) {
		t.Errorf("state file = %v, want %v", gs, want)
	}
	// An extension of the network's grant by another address in it.
	later := net6
	later.IP, later.Until = mustAddr("2001:db8:1:2:bbbb::1"), u.Add(time.Minute)
	if _, err := f.Firewall.Grant(ctx0, later); err != nil {
		t.Fatal(err)
	}
	if d := diffLines(e.chain(ipv6), e.chainOnly(grantLine("2001:db8:1:2::/64", ssh, "ssh", u.Add(time.Minute)))); d != "" {
		t.Errorf("IPv6 after the extension: %s", d)
	}
	want[2].Until = u.Add(time.Minute)

	// Without a state file the grants come back from the rules.
	f.Close()
	if err := os.Remove(filepath.Join(e.dir, stateFile)); err != nil {
		t.Fatal(err)
	}
	f2 := e.open(e.options())
	if gs := f2.Grants(); !slices.EqualFunc(gs, want, grantEqual) {
		t.Errorf("Grants() rebuilt from the rules = %v, want %v", gs, want)
	}
}

// TestRevokeOverlap: Revoke ends every grant whose source overlaps what it
// is given, held or pending, and returns them; RevokeSequence those of one
// sequence.
func TestRevokeOverlap(t *testing.T) {
	u := t0.Add(10 * time.Minute)
	grants := []Grant{
		{IP: mustAddr("192.0.2.0"), Bits: 24, Sequence: "ssh", Ports: []Port{ssh}, Until: u},
		{IP: mustAddr("192.0.2.5"), Sequence: "ssh", Ports: []Port{ssh}, Until: u},
		{IP: mustAddr("192.0.2.5"), Sequence: "web", Ports: []Port{alt}, Until: u},
		{IP: mustAddr("198.51.100.2"), Sequence: "ssh", Ports: []Port{ssh}, Until: u},
		{IP: mustAddr("2001:db8:1::"), Bits: 64, Sequence: "ssh", Ports: []Port{ssh}, Until: u},
		{IP: mustAddr("2001:db8:1::9"), Sequence: "ssh", Ports: []Port{ssh}, Until: u},
	}
	tests := []struct {
		name     string
		p        string
		sequence string
		want     []int // indexes into grants, in the order Grants sorts
	}{
		{"address ends its own and its network's", "192.0.2.5", "", []int{0, 1, 2}},
		{"address ends its network's", "192.0.2.9", "", []int{0}},
		{"network ends all in it", "192.0.2.0/24", "", []int{0, 1, 2}},
		{"wider network", "192.0.0.0/16", "", []int{0, 1, 2}},
		{"narrower network", "192.0.2.0/28", "", []int{0, 1, 2}},
		{"IPv6 address", "2001:db8:1::9", "", []int{4, 5}},
		{"IPv4-mapped", "::ffff:198.51.100.2", "", []int{3}},
		{"one sequence", "192.0.2.5", "web", []int{2}},
		{"nothing", "198.51.100.77", "", nil},
		{"nothing of that sequence", "198.51.100.2", "web", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			f := e.open(e.options())
			for _, g := range grants {
				mustGrant(t, f, g)
			}
			p, err := ParseSource(tc.p)
			if err != nil {
				t.Fatal(err)
			}
			var got []Grant
			if tc.sequence != "" {
				got, err = f.RevokeSequence(ctx0, p, tc.sequence, ReasonClosed)
			} else {
				got, err = f.Revoke(ctx0, p, "")
			}
			if tc.want == nil {
				if !errors.Is(err, ErrNoGrant) || len(got) != 0 {
					t.Fatalf("Revoke(%s) = %v, %v; want ErrNoGrant", tc.p, got, err)
				}
				if len(f.Grants()) != len(grants) {
					t.Errorf("Revoke(%s) that ended nothing left %d grants", tc.p, len(f.Grants()))
				}
				return
			}
			var want []Grant
			for _, i := range tc.want {
				want = append(want, grants[i])
			}
			if err != nil || !slices.EqualFunc(got, want, grantEqual) {
				t.Fatalf("Revoke(%s) = %v, %v; want %v", tc.p, got, err, want)
			}
			left := f.Grants()
			for _, g := range left {
				if slices.ContainsFunc(want, func(w Grant) bool { return grantEqual(g, w) }) {
					t.Errorf("Revoke(%s) left %v", tc.p, g)
				}
			}
			if len(left)+len(want) != len(grants) {
				t.Errorf("Revoke(%s) left %v", tc.p, left)
			}
			reason := ReasonRevoked
			if tc.sequence != "" {
				reason = ReasonClosed
			}
			if !strings.Contains(e.log.String(), "reason="+reason) {
				t.Errorf("log lacks the reason %s:\n%s", reason, e.log)
			}
		})
	}
}

// TestRevokeRememberedNetworks: a revoke is remembered for the sources it
// ended and for what it was given, so that no knock logged before it grants
// any address they overlap, also across a restart; knocks after it do.
func TestRevokeRememberedNetworks(t *testing.T) {
	e := newEnv(t)
	o := e.policyOptions()
	f := e.open(o)
	knocked := t0.Add(-time.Minute)
	grant := func(ip string, bits int, at time.Time) Grant {
		return Grant{IP: mustAddr(ip), Bits: bits, Sequence: "ssh", Ports: []Port{ssh}, Knocked: at, Until: at.Add(5 * time.Minute)}
	}
	mustGrant(t, f, grant("192.0.2.7", 24, knocked))
	if _, err := f.Revoke(ctx0, host(mustAddr("192.0.2.5")), ""); err != nil {
		t.Fatal(err)
	}
	// No grant there, but remembered all the same.
	if _, err := f.Revoke(ctx0, netip.MustParsePrefix("2001:db8:5::/48"), ""); !errors.Is(err, ErrNoGrant) {
		t.Fatalf("Revoke of a network without grants = %v, want ErrNoGrant", err)
	}
	tests := []struct {
		name    string
		g       Grant
		revoked bool
	}{
		{"the network again", grant("192.0.2.9", 24, knocked), true},
		{"another address of the network", grant("192.0.2.200", 0, knocked), true},
		{"a wider network", grant("192.0.2.1", 16, knocked), true},
		{"an address of the revoked network", grant("2001:db8:5::1", 0, knocked), true},
		{"a network that holds it", grant("2001:db8:5::1", 32, knocked), true},
		{"elsewhere", grant("198.51.100.7", 24, knocked), false},
		{"knocked after the revoke", grant("192.0.2.9", 24, t0.Add(time.Second)), false},
	}
	try := func(f *fw, when string) {
		for _, tc := range tests {
			err := f.grant(tc.g)
			if errors.Is(err, ErrRevoked) != tc.revoked || (!tc.revoked && err != nil) {
				t.Errorf("%s: %s: Grant = %v, want revoked %v", when, tc.name, err, tc.revoked)
			}
		}
	}
	try(f, "running")
	f.Close()
	f = e.open(o)
	try(f, "after a restart")
}
