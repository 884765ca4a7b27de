package firewall

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// Lines as iptables v1.8.9 (nf_tables) prints them with -S.
var parseCases = []struct {
	name string
	line string
	want rule
	ours bool
}{
	{
		name: "grant v4",
		line: `-A WEBKNOCK -s 192.0.2.1/32 -p tcp -m tcp --dport 22 -m time --datestop 2030-01-01T00:00:00 -m comment --comment "webknock:ssh:1893456000" -j ACCEPT`,
		want: rule{kind: kindGrant, src: netip.MustParsePrefix("192.0.2.1/32"), port: ssh, seq: "ssh", until: 1893456000},
		ours: true,
	},
	{
		name: "grant v6 udp",
		line: `-A WEBKNOCK -s 2001:db8::1/128 -p udp -m udp --dport 53 -m time --datestop 2030-01-01T00:00:00 -m comment --comment "webknock:dns_1-x:1893456000" -j ACCEPT`,
		want: rule{kind: kindGrant, src: netip.MustParsePrefix("2001:db8::1/128"), port: dns, seq: "dns_1-x", until: 1893456000},
		ours: true,
	},
	{
		name: "grant as passed to iptables",
		line: `-A WEBKNOCK -s 192.0.2.1/32 -p tcp --dport 22 -m time --datestop 2030-01-01T00:00:00 -m comment --comment webknock:ssh:1893456000 -j ACCEPT`,
		want: rule{kind: kindGrant, src: netip.MustParsePrefix("192.0.2.1/32"), port: ssh, seq: "ssh", until: 1893456000},
		ours: true,
	},
	{
		name: "allow",
		line: `-A WEBKNOCK -s 10.0.0.0/8 -p udp -m udp --dport 53 -m comment --comment "webknock:allow" -j ACCEPT`,
		want: rule{kind: kindAllow, src: netip.MustParsePrefix("10.0.0.0/8"), port: dns},
		ours: true,
	},
	{
		name: "protect",
		line: `-A WEBKNOCK -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m comment --comment "webknock:protect" -j DROP`,
		want: rule{kind: kindProtect, port: ssh},
		ours: true,
	},
	{
		name: "grant to a network",
		line: `-A WEBKNOCK -s 192.0.2.0/24 -p tcp -m tcp --dport 22 -m time --datestop 2030-01-01T00:00:00 -m comment --comment "webknock:ssh:1893456000" -j ACCEPT`,
		want: rule{kind: kindGrant, src: netip.MustParsePrefix("192.0.2.0/24"), port: ssh, seq: "ssh", until: 1893456000},
		ours: true,
	},
	{
		name: "grant to an IPv6 network",
		line: `-A WEBKNOCK -s 2001:db8:1:2::/64 -p tcp -m tcp --dport 22 -m time --datestop 2030-01-01T00:00:00 -m comment --comment "webknock:ssh:1893456000" -j ACCEPT`,
		want: rule{kind: kindGrant, src: netip.MustParsePrefix("2001:db8:1:2::/64"), port: ssh, seq: "ssh", until: 1893456000},
		ours: true,
	},
	{
		name: "reset of NEW packets that are no SYN",
		line: `-A WEBKNOCK -p tcp -m tcp --dport 22 ! --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m comment --comment "webknock:reset" -j REJECT --reject-with tcp-reset`,
		want: rule{kind: kindResetNew, port: ssh},
		ours: true,
	},
	{
		name: "reset of packets conntrack took up from our side",
		line: `-A WEBKNOCK -p tcp -m tcp --dport 2222 ! --tcp-flags RST RST -m conntrack --ctdir REPLY -m comment --comment "webknock:reset" -j REJECT --reject-with tcp-reset`,
		want: rule{kind: kindResetReply, port: alt},
		ours: true,
	},
	{
		name: "reset as passed to iptables",
		line: `-A WEBKNOCK -p tcp --dport 22 ! --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m comment --comment webknock:reset -j REJECT --reject-with tcp-reset`,
		want: rule{kind: kindResetNew, port: ssh},
		ours: true,
	},
	{
		name: "ownership marker",
		line: `-A WEBKNOCK -m comment --comment "webknock:owner"`,
		want: rule{kind: kindMarker},
		ours: true,
	},
	{name: "marker with a target", line: `-A WEBKNOCK -m comment --comment "webknock:owner" -j ACCEPT`},
	{
		name: "ownership marker naming its state directory",
		line: `-A WEBKNOCK -m comment --comment "webknock:owner:/var/lib/web knock"`,
		want: rule{kind: kindMarker, owner: "/var/lib/web knock"},
		ours: true,
	},
	{name: "not quite a marker", line: `-A WEBKNOCK -m comment --comment "webknock:ownerx"`},
	{name: "marker naming nothing", line: `-A WEBKNOCK -m comment --comment "webknock:owner:"`},
	{name: "datestop disagrees with comment", line: `-A WEBKNOCK -s 192.0.2.1/32 -p tcp -m tcp --dport 22 -m time --datestop 2030-01-01T00:00:01 -m comment --comment "webknock:ssh:1893456000" -j ACCEPT`},
	{name: "grant without time match", line: `-A WEBKNOCK -s 192.0.2.1/32 -p tcp -m tcp --dport 22 -m comment --comment "webknock:ssh:1893456000" -j ACCEPT`},
	{name: "grant to a network too wide", line: `-A WEBKNOCK -s 192.0.0.0/8 -p tcp -m tcp --dport 22 -m time --datestop 2030-01-01T00:00:00 -m comment --comment "webknock:ssh:1893456000" -j ACCEPT`},
	{name: "grant to an IPv6 network too wide", line: `-A WEBKNOCK -s 2001:db8::/31 -p tcp -m tcp --dport 22 -m time --datestop 2030-01-01T00:00:00 -m comment --comment "webknock:ssh:1893456000" -j ACCEPT`},
	{name: "grant to a network with host bits", line: `-A WEBKNOCK -s 192.0.2.1/24 -p tcp -m tcp --dport 22 -m time --datestop 2030-01-01T00:00:00 -m comment --comment "webknock:ssh:1893456000" -j ACCEPT`},
	{name: "reset that drops", line: `-A WEBKNOCK -p tcp -m tcp --dport 22 ! --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m comment --comment "webknock:reset" -j DROP`},
	{name: "reset with ICMP", line: `-A WEBKNOCK -p tcp -m tcp --dport 22 ! --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m comment --comment "webknock:reset" -j REJECT --reject-with icmp-port-unreachable`},
	{name: "reset of SYNs", line: `-A WEBKNOCK -p tcp -m tcp --dport 22 --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m comment --comment "webknock:reset" -j REJECT --reject-with tcp-reset`},
	{name: "reset of other flags", line: `-A WEBKNOCK -p tcp -m tcp --dport 22 ! --tcp-flags SYN SYN -m conntrack --ctstate NEW -m comment --comment "webknock:reset" -j REJECT --reject-with tcp-reset`},
	{name: "reply reset of NEW packets", line: `-A WEBKNOCK -p tcp -m tcp --dport 22 ! --tcp-flags RST RST -m conntrack --ctstate NEW -m comment --comment "webknock:reset" -j REJECT --reject-with tcp-reset`},
	{name: "reset of one client", line: `-A WEBKNOCK -s 192.0.2.1/32 -p tcp -m tcp --dport 22 ! --tcp-flags RST RST -m conntrack --ctdir REPLY -m comment --comment "webknock:reset" -j REJECT --reject-with tcp-reset`},
	{name: "reset of UDP", line: `-A WEBKNOCK -p udp -m udp --dport 53 ! --tcp-flags RST RST -m conntrack --ctdir REPLY -m comment --comment "webknock:reset" -j REJECT --reject-with tcp-reset`},
	{name: "grant with flags", line: `-A WEBKNOCK -s 192.0.2.1/32 -p tcp -m tcp --dport 22 ! --tcp-flags RST RST -m time --datestop 2030-01-01T00:00:00 -m comment --comment "webknock:ssh:1893456000" -j ACCEPT`},
	{name: "protect with a reject", line: `-A WEBKNOCK -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m comment --comment "webknock:protect" -j REJECT --reject-with tcp-reset`},
	{name: "grant that drops", line: `-A WEBKNOCK -s 192.0.2.1/32 -p tcp -m tcp --dport 22 -m time --datestop 2030-01-01T00:00:00 -m comment --comment "webknock:ssh:1893456000" -j DROP`},
	{name: "extra option", line: `-A WEBKNOCK -s 192.0.2.1/32 -i eth0 -p tcp -m tcp --dport 22 -m time --datestop 2030-01-01T00:00:00 -m comment --comment "webknock:ssh:1893456000" -j ACCEPT`},
	{name: "bad sequence name", line: `-A WEBKNOCK -s 192.0.2.1/32 -p tcp -m tcp --dport 22 -m time --datestop 2030-01-01T00:00:00 -m comment --comment "webknock:s h:1893456000" -j ACCEPT`},
	{name: "protect without conntrack", line: `-A WEBKNOCK -p tcp -m tcp --dport 22 -m comment --comment "webknock:protect" -j DROP`},
	{name: "allow without source", line: `-A WEBKNOCK -p tcp -m tcp --dport 22 -m comment --comment "webknock:allow" -j ACCEPT`},
	{name: "someone else's", line: `-A WEBKNOCK -s 192.0.2.9/32 -j ACCEPT`},
	{name: "port 0", line: `-A WEBKNOCK -p tcp -m tcp --dport 0 -m conntrack --ctstate NEW -m comment --comment "webknock:protect" -j DROP`},
	{name: "port range", line: `-A WEBKNOCK -p tcp -m tcp --dport 22:23 -m conntrack --ctstate NEW -m comment --comment "webknock:protect" -j DROP`},
}

func TestParseListed(t *testing.T) {
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			l, ok := parseListed("WEBKNOCK", tc.line)
			if !ok {
				t.Fatalf("parseListed(%q) = not a rule of WEBKNOCK", tc.line)
			}
			if l.ours != tc.ours || (tc.ours && l.r != tc.want) {
				t.Errorf("parseListed(%q) = %+v, %v; want %+v, %v", tc.line, l.r, l.ours, tc.want, tc.ours)
			}
		})
	}
	for _, line := range []string{"-N WEBKNOCK", "-P INPUT ACCEPT", "-A INPUT -j WEBKNOCK", `-A WEBKNOCK -m comment --comment "open`} {
		if _, ok := parseListed("WEBKNOCK", line); ok {
			t.Errorf("parseListed(%q) = a rule of WEBKNOCK, want none", line)
		}
	}
}

// TestRuleRoundTrip: what we pass to iptables, printed the way iptables
// prints it, parses back to the same rule.
func TestRuleRoundTrip(t *testing.T) {
	for _, tc := range parseCases {
		if !tc.ours {
			continue
		}
		fam := familyOf(tc.want.src.Addr())
		m := newMemTables(fam, nil)
		m.NewChain(ctx0, table, "WEBKNOCK")
		if err := m.Append(ctx0, table, "WEBKNOCK", tc.want.args()...); err != nil {
			t.Fatalf("%s: append: %v", tc.name, err)
		}
		lines, _ := m.List(ctx0, table, "WEBKNOCK")
		if !strings.Contains(tc.line, "--comment webknock") && lines[1] != tc.line {
			t.Errorf("%s: printed %q, want %q", tc.name, lines[1], tc.line)
		}
		l, ok := parseListed("WEBKNOCK", lines[1])
		if !ok || !l.ours || l.r != tc.want {
			t.Errorf("%s: parse(%q) = %+v, %v; want %+v", tc.name, lines[1], l.r, l.ours, tc.want)
		}
	}
}

func TestSplitRule(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{`-A X -j ACCEPT`, []string{"-A", "X", "-j", "ACCEPT"}},
		{`-A X  -m comment --comment "a b"  -j ACCEPT`, []string{"-A", "X", "-m", "comment", "--comment", "a b", "-j", "ACCEPT"}},
		{`--comment "has \"q\" and \\"`, []string{"--comment", `has "q" and \`}},
		{`--comment ""`, []string{"--comment", ""}},
		{`--comment x"y z"`, []string{"--comment", "xy z"}},
	}
	for _, tc := range tests {
		got, err := splitRule(tc.line)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("splitRule(%q) = %q, %v; want %q", tc.line, got, err, tc.want)
		}
	}
	if _, err := splitRule(`--comment "open`); err == nil {
		t.Errorf("splitRule of an open quote: no error")
	}
}

func FuzzParseRule(f *testing.F) {
	for _, tc := range parseCases {
		f.Add(tc.line)
	}
	f.Fuzz(func(t *testing.T, line string) {
		l, ok := parseListed("WEBKNOCK", line)
		if !ok || !l.ours {
			return
		}
		// A rule of ours prints and parses back to itself.
		fam := familyOf(l.r.src.Addr())
		if !l.r.src.IsValid() {
			fam = ipv4
		}
		m := newMemTables(fam, nil)
		m.NewChain(ctx0, table, "WEBKNOCK")
		if err := m.Append(ctx0, table, "WEBKNOCK", l.r.args()...); err != nil {
			if l.r.src.Addr().Is4In6() {
				return // ip6tables takes no mapped address: neither do we
			}
			t.Fatalf("append %v: %v", l.r.args(), err)
		}
		lines, _ := m.List(ctx0, table, "WEBKNOCK")
		back, ok := parseListed("WEBKNOCK", lines[1])
		if !ok || !back.ours || back.r != l.r {
			t.Fatalf("%q parsed to %+v, printed as %q, parsed back to %+v", line, l.r, lines[1], back.r)
		}
	})
}

func TestPortText(t *testing.T) {
	for _, s := range []string{"22/tcp", "53/udp", "65535/tcp"} {
		var p Port
		if err := p.UnmarshalText([]byte(s)); err != nil {
			t.Errorf("UnmarshalText(%q): %v", s, err)
			continue
		}
		if b, err := p.MarshalText(); err != nil || string(b) != s {
			t.Errorf("MarshalText(%v) = %q, %v; want %q", p, b, err, s)
		}
	}
	for _, s := range []string{"22", "0/tcp", "22/icmp", "65536/tcp", "x/tcp", "/tcp", "-1/udp"} {
		var p Port
		if err := p.UnmarshalText([]byte(s)); err == nil {
			t.Errorf("UnmarshalText(%q) = %v, want an error", s, p)
		}
	}
}
