package firewall

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// capWarn is the message of the one warning per cap reached.
const capWarn = "grant refused: cap on live grants reached"

// keys is the number of sequences and networks the caps count.
func (c *caps) keys() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.c.Len()
}

func TestCapNet(t *testing.T) {
	tests := []struct {
		src  string
		want string
	}{
		{"192.0.2.77/32", "192.0.2.0/24"},
		{"192.0.2.0/24", "192.0.2.0/24"},
		{"192.0.0.0/16", "192.0.0.0/24"},
		{"::ffff:192.0.2.9/128", "192.0.2.0/24"},
		{"2001:db8::7/128", "2001:db8::/64"},
		{"2001:db8:0:5:1:2:3:4/128", "2001:db8:0:5::/64"},
		{"2001:db8:42::/48", "2001:db8:42::/64"},
	}
	for _, tt := range tests {
		if got := CapNet(netip.MustParsePrefix(tt.src)); got.String() != tt.want {
			t.Errorf("CapNet(%s) = %s, want %s", tt.src, got, tt.want)
		}
	}
}

// TestCapCounter: the rule replay and the firewall share.
func TestCapCounter(t *testing.T) {
	p := netip.MustParsePrefix
	type op struct {
		take    bool // else release
		src     string
		seq     string
		want    Cap  // the cap that refuses; -1: none
		first   bool // the refusal is the first since the cap was reached
		wantLen int
	}
	const none = Cap(-1)
	tests := []struct {
		name string
		ops  []op
	}{
		{"sequence cap across families", []op{
			{true, "192.0.2.1/32", "ssh", none, false, 2},
			{true, "2001:db8::1/128", "ssh", none, false, 3},
			{true, "198.51.100.1/32", "web", none, false, 5},
			{true, "198.51.100.2/32", "ssh", CapSequence, true, 5},
			{true, "2001:db8:1::1/128", "ssh", CapSequence, false, 5},
			{false, "192.0.2.1/32", "ssh", none, false, 4},
			{true, "198.51.100.2/32", "ssh", none, false, 4},
			{true, "203.0.113.3/32", "ssh", CapSequence, true, 4},
		}},
		{"network caps", []op{
			{true, "192.0.2.1/32", "a", none, false, 2},
			{true, "192.0.2.0/24", "b", none, false, 3},
			{true, "192.0.2.200/32", "c", CapIPv4Net, true, 3},
			{true, "192.0.3.1/32", "c", none, false, 5},
			{true, "2001:db8::1/128", "a", none, false, 6},
			{true, "2001:db8::2/128", "b", none, false, 6},
			{true, "2001:db8::/48", "c", CapIPv6Net, true, 6},
			{true, "2001:db8:0:1::1/128", "c", none, false, 7},
			{false, "2001:db8::2/128", "b", none, false, 7},
			{false, "2001:db8::1/128", "a", none, false, 6},
			{false, "2001:db8:0:1::1/128", "c", none, false, 5},
			{false, "192.0.3.1/32", "c", none, false, 3},
			{false, "192.0.2.1/32", "a", none, false, 2},
			{false, "192.0.2.0/24", "b", none, false, 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCapCounter(2, 2, 2)
			for i, o := range tt.ops {
				if !o.take {
					c.Release(p(o.src), o.seq)
				} else {
					err := c.Take(p(o.src), o.seq)
					var ce *CapError
					switch {
					case o.want == none && err != nil:
						t.Errorf("%d: Take(%s, %s) = %v, want nil", i, o.src, o.seq, err)
					case o.want != none && (!errors.As(err, &ce) || !errors.Is(err, ErrCapped) || ce.Cap != o.want || ce.First != o.first):
						t.Errorf("%d: Take(%s, %s) = %#v, want a refusal by %s (first %v)", i, o.src, o.seq, err, o.want, o.first)
					}
				}
				if n := c.Len(); n != o.wantLen {
					t.Errorf("%d: Len() = %d, want %d", i, n, o.wantLen)
				}
			}
		})
	}
}

// TestCaps: a grant beyond a cap is refused with ErrCapped naming the cap,
// the key and the count; refusals are counted, and warned about once until
// the key drops below its cap; other keys are granted; an extension is
// never refused; the counts fall as grants are revoked or expire, and
// nothing is left when no grant is.
func TestCaps(t *testing.T) {
	ip := netip.MustParseAddr
	tests := []struct {
		name   string
		set    func(o *Options)
		fill   []Grant // granted, up to the cap
		over   Grant   // refused
		cap    Cap
		msg    string // in the refusal
		others []Grant
	}{
		{
			name: "per sequence, both families",
			set:  func(o *Options) { o.MaxGrantsPerSequence = 2 },
			fill: []Grant{{IP: ip("192.0.2.1"), Sequence: "ssh"}, {IP: ip("2001:db8::1"), Sequence: "ssh"}},
			over: Grant{IP: ip("198.51.100.9"), Sequence: "ssh"},
			cap:  CapSequence,
			msg:  "grant to 198.51.100.9 for ssh: grant cap reached: sequence ssh holds 2 live grants; firewall.max_grants_per_sequence is 2",
			others: []Grant{
				{IP: ip("198.51.100.9"), Sequence: "web"},
				{IP: ip("2001:db8::9"), Sequence: "web"},
			},
		},
		{
			name: "per IPv4 /24, a network grant counted under its /24",
			set:  func(o *Options) { o.MaxGrantsPerIPv4Net = 2 },
			fill: []Grant{{IP: ip("192.0.2.1"), Sequence: "ssh"}, {IP: ip("192.0.2.0"), Bits: 24, Sequence: "web"}},
			over: Grant{IP: ip("192.0.2.77"), Sequence: "web"},
			cap:  CapIPv4Net,
			msg:  "grant to 192.0.2.77 for web: grant cap reached: network 192.0.2.0/24 holds 2 live grants; firewall.max_grants_per_ipv4_24 is 2",
			others: []Grant{
				{IP: ip("192.0.3.77"), Sequence: "web"},
				{IP: ip("2001:db8::77"), Sequence: "web"},
			},
		},
		{
			name: "per IPv6 /64, a /48 counted under its first /64",
			set:  func(o *Options) { o.MaxGrantsPerIPv6Net = 2 },
			fill: []Grant{{IP: ip("2001:db8::1"), Sequence: "ssh"}, {IP: ip("2001:db8::2"), Sequence: "ssh"}},
			over: Grant{IP: ip("2001:db8::"), Bits: 48, Sequence: "web"},
			cap:  CapIPv6Net,
			msg:  "grant to 2001:db8::/48 for web: grant cap reached: network 2001:db8::/64 holds 2 live grants; firewall.max_grants_per_ipv6_64 is 2",
			others: []Grant{
				{IP: ip("2001:db8:0:1::1"), Sequence: "ssh"},
				{IP: ip("192.0.2.1"), Sequence: "ssh"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			o := e.options()
			tt.set(&o)
			f := e.open(o)
			until := t0.Add(10 * time.Minute)
			grant := func(g Grant, u time.Time) error {
				g.Ports, g.Until = []Port{ssh}, u
				return f.grant(g)
			}
			for _, g := range tt.fill {
				if err := grant(g, until); err != nil {
					t.Fatalf("Grant(%v) = %v", g, err)
				}
			}
			for range 3 {
				err := grant(tt.over, until)
				var ce *CapError
				if !errors.Is(err, ErrCapped) || !errors.As(err, &ce) || ce.Cap != tt.cap || err.Error() != tt.msg {
					t.Fatalf("Grant beyond the cap = %v, want %q", err, tt.msg)
				}
			}
			h := f.Health()
			for c := range Cap(NumCaps) {
				want := uint64(0)
				if c == tt.cap {
					want = 3
				}
				if h.Capped[c] != want {
					t.Errorf("Health().Capped[%s] = %d, want %d", c, h.Capped[c], want)
				}
			}
			if h.Refused != 0 {
				t.Errorf("Health().Refused = %d, want 0: a cap is not a full table", h.Refused)
			}
			if n := strings.Count(e.log.String(), capWarn); n != 1 {
				t.Errorf("%d warnings of the cap, want 1:\n%s", n, e.log)
			}
			if !strings.Contains(e.log.String(), "cap="+tt.cap.String()) {
				t.Errorf("the warning does not name %s:\n%s", tt.cap, e.log)
			}
			for _, g := range tt.others {
				if err := grant(g, until); err != nil {
					t.Errorf("Grant(%v) under another key = %v", g, err)
				}
			}
			// Extending a grant of a key at its cap.
			for _, g := range tt.fill {
				if err := grant(g, until.Add(time.Minute)); err != nil {
					t.Errorf("extending %v at the cap = %v", g, err)
				}
			}

			// A revoke makes room; reaching the cap again is warned again.
			first := tt.fill[0]
			if _, err := f.RevokeSequence(ctx0, first.Source(), first.Sequence, ""); err != nil {
				t.Fatal(err)
			}
			if err := grant(tt.over, until); err != nil {
				t.Fatalf("Grant after a revoke made room = %v", err)
			}
			if err := grant(Grant{IP: first.IP, Bits: first.Bits, Sequence: first.Sequence}, until); !errors.Is(err, ErrCapped) {
				t.Fatalf("Grant at the cap again = %v, want ErrCapped", err)
			}
			if n := strings.Count(e.log.String(), capWarn); n != 2 {
				t.Errorf("%d warnings of the cap, want 2: one each time it was reached", n)
			}

			// Expiry makes room, and leaves nothing counted.
			f.advance(e.clk, 10*time.Minute)
			f.waitFor(t, "the first grants to end", func() bool { return len(f.Grants()) == len(tt.fill)-1 })
			if err := grant(Grant{IP: first.IP, Bits: first.Bits, Sequence: first.Sequence}, t0.Add(20*time.Minute)); err != nil {
				t.Errorf("Grant after expiry made room = %v", err)
			}
			f.advance(e.clk, 10*time.Minute)
			f.waitFor(t, "every grant to end", func() bool { return len(f.Grants()) == 0 })
			if n := f.caps.keys(); n != 0 || f.count.Load() != 0 {
				t.Errorf("after every grant ended: %d keys counted, %d grants; want none", n, f.count.Load())
			}
		})
	}
}

// TestCapsPending: a grant waiting for its insert holds its place under
// the caps, and gives it back when it is given up.
func TestCapsPending(t *testing.T) {
	e := newEnv(t)
	o := e.options()
	o.MaxGrantsPerIPv4Net = 1
	f := e.open(o)
	failing := e.failGrantInserts()
	until := t0.Add(10 * time.Minute)
	if err := f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: until}); !errors.Is(err, ErrPending) {
		t.Fatalf("Grant = %v, want ErrPending", err)
	}
	c3 := netip.MustParseAddr("192.0.2.3")
	if err := f.grant(Grant{IP: c3, Sequence: "ssh", Ports: []Port{ssh}, Until: until}); !errors.Is(err, ErrCapped) {
		t.Fatalf("Grant beside a pending one = %v, want ErrCapped", err)
	}
	if err := f.revoke(c1); err != nil {
		t.Fatal(err)
	}
	failing.Store(false)
	if err := f.grant(Grant{IP: c3, Sequence: "ssh", Ports: []Port{ssh}, Until: until}); err != nil {
		t.Fatalf("Grant after the pending one was revoked = %v", err)
	}
	if err := f.revoke(c3); err != nil {
		t.Fatal(err)
	}
	if n := f.caps.keys(); n != 0 {
		t.Errorf("%d keys counted after every grant ended, want none", n)
	}
}

// TestCapsRestored: grants restored at start count towards the caps, and
// are kept even beyond them; new grants are refused until fewer are held.
func TestCapsRestored(t *testing.T) {
	e := newEnv(t)
	until := t0.Add(10 * time.Minute)
	var held []Grant
	for _, s := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
		held = append(held, Grant{IP: netip.MustParseAddr(s), Sequence: "ssh", Ports: []Port{ssh}, Until: until})
	}
	e.writeState(held...)
	o := e.options()
	o.MaxGrantsPerIPv4Net = 2
	f := e.open(o)
	if n := len(f.Grants()); n != 3 {
		t.Fatalf("%d grants restored, want 3: restored grants are never refused", n)
	}
	if !strings.Contains(e.log.String(), "hold more live grants than their caps") {
		t.Errorf("no warning of the restored grants beyond their cap:\n%s", e.log)
	}
	c9 := netip.MustParseAddr("192.0.2.9")
	if err := f.grant(Grant{IP: c9, Sequence: "ssh", Ports: []Port{ssh}, Until: until}); !errors.Is(err, ErrCapped) {
		t.Fatalf("Grant beside restored grants beyond the cap = %v, want ErrCapped", err)
	}
	for _, g := range held[:2] {
		if err := f.revoke(g.IP); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.grant(Grant{IP: c9, Sequence: "ssh", Ports: []Port{ssh}, Until: until}); err != nil {
		t.Fatalf("Grant once below the cap = %v", err)
	}
}

// TestCapsReconfigure: new caps apply to new grants; the grants held stay.
func TestCapsReconfigure(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	until := t0.Add(10 * time.Minute)
	for _, s := range []string{"2001:db8::1", "2001:db8::2"} {
		if err := f.grant(Grant{IP: netip.MustParseAddr(s), Sequence: "ssh", Ports: []Port{ssh}, Until: until}); err != nil {
			t.Fatal(err)
		}
	}
	o := e.options()
	o.MaxGrantsPerIPv6Net = 1
	if err := f.Reconfigure(ctx0, o); err != nil {
		t.Fatal(err)
	}
	c3 := netip.MustParseAddr("2001:db8::3")
	if err := f.grant(Grant{IP: c3, Sequence: "ssh", Ports: []Port{ssh}, Until: until}); !errors.Is(err, ErrCapped) {
		t.Fatalf("Grant under a lowered cap = %v, want ErrCapped", err)
	}
	if n := len(f.Grants()); n != 2 {
		t.Errorf("%d grants after lowering the cap, want the 2 held", n)
	}
	o.MaxGrantsPerIPv6Net = 3
	if err := f.Reconfigure(ctx0, o); err != nil {
		t.Fatal(err)
	}
	if err := f.grant(Grant{IP: c3, Sequence: "ssh", Ports: []Port{ssh}, Until: until}); err != nil {
		t.Fatalf("Grant under a raised cap = %v", err)
	}
}

func TestCheckOptionsLimits(t *testing.T) {
	tests := []struct {
		name string
		set  func(o *Options)
		want string // "" for none
	}{
		{"defaults", func(o *Options) {}, ""},
		{"at the most", func(o *Options) { o.MaxGrants, o.MaxGrantsPerIPv6Net = maxMaxGrants, maxMaxGrants }, ""},
		{"max grants", func(o *Options) { o.MaxGrants = maxMaxGrants + 1 }, "firewall.max_grants: 131073 grants: at most 131072 allowed, what the state file holds"},
		{"sequence", func(o *Options) { o.MaxGrantsPerSequence = 1 << 20 }, "firewall.max_grants_per_sequence: 1048576 grants: at most 131072 allowed"},
		{"ipv4", func(o *Options) { o.MaxGrantsPerIPv4Net = 1 << 20 }, "firewall.max_grants_per_ipv4_24: "},
		{"ipv6", func(o *Options) { o.MaxGrantsPerIPv6Net = 1 << 20 }, "firewall.max_grants_per_ipv6_64: "},
	}
	for _, tt := range tests {
		var o Options
		tt.set(&o)
		err := CheckOptions(o)
		var oe *OptionError
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: CheckOptions = %v, want nil", tt.name, err)
		case tt.want != "" && (!errors.As(err, &oe) || !strings.HasPrefix(err.Error(), tt.want)):
			t.Errorf("%s: CheckOptions = %v, want %q", tt.name, err, tt.want)
		}
	}
}
