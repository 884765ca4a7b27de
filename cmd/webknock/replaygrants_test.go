package main

import (
	"net/netip"
	"testing"
	"time"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/knock"
)

// TestReplayGrants: a replay refuses the grants the firewall would refuse,
// by the same rule: caps first, then the table; an extension never; a
// grant that ended or was closed makes room.
func TestReplayGrants(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 19, 0, 0, 0, time.UTC)
	ev := func(kind knock.Kind, sec int, src, seq string) knock.Event {
		at := t0.Add(time.Duration(sec) * time.Second)
		p := netip.MustParsePrefix(src)
		return knock.Event{Kind: kind, Time: at, Client: p.Addr(), Source: p, Sequence: seq, Until: at.Add(10 * time.Minute), Ports: []string{"22/tcp"}}
	}
	grant := func(sec int, src, seq string) knock.Event { return ev(knock.KindGrant, sec, src, seq) }
	closed := func(sec int, src, seq string) knock.Event { return ev(knock.KindClose, sec, src, seq) }
	tests := []struct {
		name   string
		fw     config.Firewall
		events []knock.Event
		want   []string // each event's reason of denial; "" for none
	}{
		{
			name: "per /64, extension, expiry",
			fw:   config.Firewall{MaxGrants: 100, MaxGrantsPerSequence: 100, MaxGrantsPerIPv4Net: 100, MaxGrantsPerIPv6Net: 2},
			events: []knock.Event{
				grant(0, "2001:db8::1/128", "ssh"),
				grant(1, "2001:db8::2/128", "ssh"),
				grant(2, "2001:db8::3/128", "ssh"),
				grant(3, "2001:db8::1/128", "ssh"),
				grant(4, "2001:db8:0:1::1/128", "ssh"),
				grant(601, "2001:db8::3/128", "ssh"), // ::2 ended at 601
				grant(602, "2001:db8::4/128", "ssh"), // ::1 ends at 603
				grant(603, "2001:db8::4/128", "ssh"),
			},
			want: []string{"", "", "max_grants_per_ipv6_64", "", "", "", "max_grants_per_ipv6_64", ""},
		},
		{
			name: "per /24 with a network grant, close",
			fw:   config.Firewall{MaxGrants: 100, MaxGrantsPerSequence: 100, MaxGrantsPerIPv4Net: 2, MaxGrantsPerIPv6Net: 100},
			events: []knock.Event{
				grant(0, "192.0.2.0/24", "ssh"),
				grant(1, "192.0.2.7/32", "web"),
				grant(2, "192.0.2.8/32", "web"),
				closed(3, "192.0.2.7/32", "web"),
				grant(4, "192.0.2.8/32", "web"),
			},
			want: []string{"", "", "max_grants_per_ipv4_24", "", ""},
		},
		{
			name: "per sequence, then the table",
			fw:   config.Firewall{MaxGrants: 3, MaxGrantsPerSequence: 2, MaxGrantsPerIPv4Net: 100, MaxGrantsPerIPv6Net: 100},
			events: []knock.Event{
				grant(0, "192.0.2.1/32", "ssh"),
				grant(1, "2001:db8::1/128", "ssh"),
				grant(2, "198.51.100.1/32", "ssh"),
				grant(3, "198.51.100.1/32", "web"),
				grant(4, "198.51.100.2/32", "web"),
			},
			want: []string{"", "", "max_grants_per_sequence", "", "max_grants"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newReplayGrants(tt.fw)
			for i, e := range tt.events {
				kind := e.Kind
				r.apply(&e)
				got := ""
				if e.Kind == knock.KindDenied {
					got = e.Reason
				}
				if got != tt.want[i] {
					t.Errorf("%d: %s of %s for %s at %s: denied by %q, want %q", i, kind, e.Source, e.Sequence, e.Time.Format(time.TimeOnly), got, tt.want[i])
				}
				if got != "" && (!e.Until.IsZero() || e.Ports != nil) {
					t.Errorf("%d: denied event keeps until %v, ports %v", i, e.Until, e.Ports)
				}
			}
			r.expire(t0.Add(time.Hour))
			if len(r.live) != 0 || r.caps.Len() != 0 {
				t.Errorf("after every grant ended: %d live, %d keys counted; want none", len(r.live), r.caps.Len())
			}
		})
	}
}
