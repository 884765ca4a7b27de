package knock_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/webknock/webknock/knock"
)

// policyConfig is testConfig with a close page on "ssh" and the policy
// that set adds.
func policyConfig(set func(s *knock.Sequence)) knock.Config {
	cfg := testConfig()
	cfg.Sequences[0].ClosePage = "/k/bye"
	if set != nil {
		set(&cfg.Sequences[0])
	}
	return cfg
}

func widened(ev knock.Event, src string) knock.Event {
	ev.Source = netip.MustParsePrefix(src)
	return ev
}

func denied(c netip.Addr, d time.Duration, why string) knock.Event {
	return knock.Event{Kind: knock.KindDenied, Time: at(d), Client: c, Sequence: "ssh", Reason: why}
}

func closed(c netip.Addr, d time.Duration, src string, until time.Duration) knock.Event {
	return knock.Event{Kind: knock.KindClose, Time: at(d), Client: c, Sequence: "ssh",
		Source: netip.MustParsePrefix(src), Until: at(until), Ports: sshPorts}
}

func TestPolicy(t *testing.T) {
	expires := at(time.Hour)
	tests := []struct {
		name string
		set  func(s *knock.Sequence)
		hits []knock.Hit
		want []knock.Event
	}{{
		name: "allow_from admits an address inside",
		set:  func(s *knock.Sequence) { s.AllowFrom = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")} },
		hits: sshKnock(c1, 0),
		want: sshKnockEvents(c1, 0),
	}, {
		name: "allow_from denies an address outside, at the knock page",
		set:  func(s *knock.Sequence) { s.AllowFrom = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} },
		hits: sshKnock(c1, 0),
		want: append(sshKnockEvents(c1, 0)[:3], denied(c1, 3*s, knock.DeniedSource)),
	}, {
		name: "a denied knock is no failure: it never locks out",
		set:  func(s *knock.Sequence) { s.AllowFrom = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} },
		hits: cat(sshKnock(c1, 0), sshKnock(c1, 10*s), sshKnock(c1, 20*s), sshKnock(c1, 30*s)),
		want: cat(
			append(sshKnockEvents(c1, 0)[:3], denied(c1, 3*s, knock.DeniedSource)),
			append(sshKnockEvents(c1, 10*s)[:3], denied(c1, 13*s, knock.DeniedSource)),
			append(sshKnockEvents(c1, 20*s)[:3], denied(c1, 23*s, knock.DeniedSource)),
			append(sshKnockEvents(c1, 30*s)[:3], denied(c1, 33*s, knock.DeniedSource)),
		),
	}, {
		name: "expires: a knock before it grants, cut to it",
		set:  func(s *knock.Sequence) { s.Expires = at(5 * time.Minute) },
		hits: sshKnock(c1, 0),
		want: append(sshKnockEvents(c1, 0)[:3], grant(c1, 3*s, "ssh", 5*time.Minute-3*s, sshPorts)),
	}, {
		name: "expires: a knock page at or after it is denied",
		set:  func(s *knock.Sequence) { s.Expires = expires },
		hits: sshKnock(c1, time.Hour-3*s),
		want: append(sshKnockEvents(c1, time.Hour-3*s)[:3], denied(c1, time.Hour, knock.DeniedExpired)),
	}, {
		name: "grant_prefix widens an IPv4 grant to its /24",
		set:  func(s *knock.Sequence) { s.GrantBits4 = 24 },
		hits: sshKnock(c1, 0),
		want: append(sshKnockEvents(c1, 0)[:3], widened(grant(c1, 3*s, "ssh", 10*time.Minute, sshPorts), "203.0.113.0/24")),
	}, {
		name: "grant_prefix widens an IPv6 grant to its /64",
		set:  func(s *knock.Sequence) { s.GrantBits4, s.GrantBits6 = 24, 64 },
		hits: sshKnock(v6, 0),
		want: append(sshKnockEvents(v6, 0)[:3], widened(grant(v6, 3*s, "ssh", 10*time.Minute, sshPorts), "2001:db8::/64")),
	}, {
		name: "close page ends the grant of the client",
		hits: append(sshKnock(c1, 0), get(c1, time.Minute, "/k/bye", 404)),
		want: append(sshKnockEvents(c1, 0), closed(c1, time.Minute, "203.0.113.7/32", 10*time.Minute+3*s)),
	}, {
		name: "close page with another method does nothing",
		hits: append(sshKnock(c1, 0), hit(c1, time.Minute, "POST", "/k/bye", 404)),
		want: sshKnockEvents(c1, 0),
	}, {
		name: "close page twice closes once",
		hits: append(sshKnock(c1, 0), get(c1, time.Minute, "/k/bye", 404), get(c1, time.Minute+s, "/k/bye", 404)),
		want: append(sshKnockEvents(c1, 0), closed(c1, time.Minute, "203.0.113.7/32", 10*time.Minute+3*s)),
	}, {
		name: "close page from another client closes nothing",
		hits: append(sshKnock(c1, 0), get(c2, time.Minute, "/k/bye", 404)),
		want: sshKnockEvents(c1, 0),
	}, {
		name: "close page after the grant ended closes nothing",
		hits: append(sshKnock(c1, 0), get(c1, 11*time.Minute, "/k/bye", 404)),
		want: sshKnockEvents(c1, 0),
	}, {
		name: "close page from a neighbour closes a widened grant",
		set:  func(s *knock.Sequence) { s.GrantBits4 = 24 },
		hits: append(sshKnock(c3, 0), get(c4, time.Minute, "/k/bye", 404)),
		want: append(append(sshKnockEvents(c3, 0)[:3], widened(grant(c3, 3*s, "ssh", 10*time.Minute, sshPorts), "192.0.2.0/24")),
			closed(c4, time.Minute, "192.0.2.0/24", 10*time.Minute+3*s)),
	}, {
		name: "close page leaves a knock in progress alone",
		hits: cat(sshKnock(c1, 0), []knock.Hit{get(c1, time.Minute, "/k/a1", 404), get(c1, time.Minute+s, "/k/bye", 404), get(c1, time.Minute+2*s, "/k/a2", 404)}),
		want: cat(sshKnockEvents(c1, 0), []knock.Event{step(c1, time.Minute, "ssh", 1),
			closed(c1, time.Minute+s, "203.0.113.7/32", 10*time.Minute+3*s), step(c1, time.Minute+2*s, "ssh", 2)}),
	}, {
		name: "a second knock extends the grant that close ends",
		hits: cat(sshKnock(c1, 0), sshKnock(c1, time.Minute), []knock.Hit{get(c1, 2*time.Minute, "/k/bye", 404)}),
		want: cat(sshKnockEvents(c1, 0), sshKnockEvents(c1, time.Minute),
			[]knock.Event{closed(c1, 2*time.Minute, "203.0.113.7/32", 11*time.Minute+3*s)}),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := mustNew(t, policyConfig(tt.set))
			got := applyAll(tr, tt.hits)
			if !equal(got, tt.want) {
				t.Errorf("events:%s\nwant:%s", formatAll(got), formatAll(tt.want))
			}
		})
	}
}

func TestCloseSurvivesReloadAndRestart(t *testing.T) {
	old := mustNew(t, policyConfig(nil))
	applyAll(old, sshKnock(c1, 0))
	tr := mustNew(t, policyConfig(nil))
	tr.Adopt(old)
	got := tr.Apply(get(c1, time.Minute, "/k/bye", 404), nil)
	if want := []knock.Event{closed(c1, time.Minute, "203.0.113.7/32", 10*time.Minute+3*s)}; !equal(got, want) {
		t.Errorf("close after Adopt:%s\nwant:%s", formatAll(got), formatAll(want))
	}

	// After a restart the firewall tells what is held.
	fresh := mustNew(t, policyConfig(func(s *knock.Sequence) { s.GrantBits4 = 24 }))
	if fresh.HoldGrant("ssh", netip.MustParsePrefix("203.0.113.7/32"), at(time.Hour), t0) {
		t.Error("HoldGrant took a source the sequence does not grant")
	}
	if fresh.HoldGrant("web", netip.MustParsePrefix("203.0.113.0/24"), at(time.Hour), t0) {
		t.Error("HoldGrant took a grant of a sequence without a close page")
	}
	if !fresh.HoldGrant("ssh", netip.MustParsePrefix("203.0.113.0/24"), at(time.Hour), t0) {
		t.Fatal("HoldGrant refused a grant the sequence makes")
	}
	got = fresh.Apply(get(c1, time.Minute, "/k/bye", 404), nil)
	if want := []knock.Event{closed(c1, time.Minute, "203.0.113.0/24", time.Hour)}; !equal(got, want) {
		t.Errorf("close after HoldGrant:%s\nwant:%s", formatAll(got), formatAll(want))
	}
}

func TestPolicyConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		set  func(s *knock.Sequence)
		want string
	}{
		{"close page used by a step", func(s *knock.Sequence) { s.ClosePage = "/k/a2" }, `close page: path "/k/a2" already used`},
		{"grant bits too long", func(s *knock.Sequence) { s.GrantBits4 = 33 }, "IPv4 /33"},
		{"grant bits negative", func(s *knock.Sequence) { s.GrantBits6 = -1 }, "IPv6 /-1"},
		{"invalid allow_from", func(s *knock.Sequence) { s.AllowFrom = []netip.Prefix{{}} }, "allow from: an invalid network"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := knock.New(policyConfig(tt.set))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
