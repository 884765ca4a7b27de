package knock_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/webknock/webknock/knock"
)

// otConfig has one hmac sequence "alice" (2 derived steps, 60 s steps,
// skew 1) and one totp sequence "bob" (static steps /t/b1 /t/b2).
func otConfig() knock.Config {
	return knock.Config{
		Sequences: []knock.Sequence{{
			Name:       "alice",
			StepStatus: []int{404},
			Methods:    []string{"GET", "HEAD"},
			Timeout:    30 * time.Second,
			Window:     time.Hour,
			Ports:      []string{"22/tcp"},
			OneTime:    &knock.OneTime{Mode: knock.ModeHMAC, Key: kaKey(), Prefix: "/o/", Steps: 2, Period: time.Minute, Skew: 1},
		}, {
			Name:       "bob",
			Steps:      []string{"/t/b1", "/t/b2"},
			StepStatus: []int{404},
			Methods:    []string{"GET"},
			Timeout:    30 * time.Second,
			Window:     10 * time.Minute,
			Ports:      []string{"2222/tcp"},
			OneTime:    &knock.OneTime{Mode: knock.ModeTOTP, Key: kaKey(), Prefix: "/t/", Period: knock.TOTPPeriod, Skew: 1},
		}},
		Lockout: knock.Lockout{Failures: 3, Period: 10 * time.Minute, Duration: 15 * time.Minute},
	}
}

func kaKey() []byte {
	k := make([]byte, knock.KeyBytes)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

// minute0 is the hmac time step of t0 (t0 starts a minute).
var minute0 = t0.Unix() / 60

// tok is alice's path of step i (3 is the knock page) at minute0+dm.
func tok(i int, dm int64) string { return "/o/" + knock.Token(kaKey(), "alice", i, minute0+dm) }

// code is bob's knock page at 30 s step ts.
func code(ts int64) string { return "/t/" + knock.Code(kaKey(), ts) }

// aliceKnock is a complete knock of alice by c at d with paths of minute0+dm.
func aliceKnock(c netip.Addr, d time.Duration, dm int64) []knock.Hit {
	return []knock.Hit{get(c, d, tok(1, dm), 404), get(c, d+s, tok(2, dm), 404), get(c, d+2*s, tok(3, dm), 404)}
}

func aliceGrant(c netip.Addr, d time.Duration, dm int64) knock.Event {
	e := grant(c, d, "alice", time.Hour, sshPorts)
	e.OneTime, e.TimeStep = true, minute0+dm
	return e
}

func reused(c netip.Addr, d time.Duration, seq string, ts int64) knock.Event {
	return knock.Event{Kind: knock.KindReused, Time: at(d), Client: c, Sequence: seq, OneTime: true, TimeStep: ts}
}

func TestOneTime(t *testing.T) {
	ts0 := t0.Unix() / 30 // bob's time step at t0
	bobGrant := func(c netip.Addr, d time.Duration, ts int64) knock.Event {
		e := grant(c, d, "bob", 10*time.Minute, []string{"2222/tcp"})
		e.OneTime, e.TimeStep = true, ts
		return e
	}
	tests := []struct {
		name string
		used map[string]int64
		hits []knock.Hit
		want []knock.Event
	}{
		{name: "hmac knock",
			hits: aliceKnock(c1, 5*s, 0),
			want: []knock.Event{step(c1, 5*s, "alice", 1), step(c1, 6*s, "alice", 2), aliceGrant(c1, 7*s, 0)}},
		{name: "paths of the next step, at the edge of the skew",
			hits: aliceKnock(c1, 5*s, 1),
			want: []knock.Event{step(c1, 5*s, "alice", 1), step(c1, 6*s, "alice", 2), aliceGrant(c1, 7*s, 1)}},
		{name: "paths of the previous step, at the edge of the skew",
			hits: aliceKnock(c1, 5*s, -1),
			want: []knock.Event{step(c1, 5*s, "alice", 1), step(c1, 6*s, "alice", 2), aliceGrant(c1, 7*s, -1)}},
		{name: "a stale step beyond the skew is no path at all",
			hits: aliceKnock(c1, 5*s, -2)},
		{name: "a step from the future beyond the skew is no path at all",
			hits: aliceKnock(c1, 5*s, 2)},
		{name: "a knock across a step boundary keeps its paths' step",
			hits: aliceKnock(c1, 59*s, 0),
			want: []knock.Event{step(c1, 59*s, "alice", 1), step(c1, 60*s, "alice", 2), aliceGrant(c1, 61*s, 0)}},
		{name: "paths of two steps in one knock: out of order",
			hits: []knock.Hit{get(c1, 5*s, tok(1, 0), 404), get(c1, 6*s, tok(2, 1), 404), get(c1, 7*s, tok(3, 1), 404)},
			want: []knock.Event{step(c1, 5*s, "alice", 1), reset(c1, 6*s, "alice")}},
		{name: "a first step of another time step restarts",
			hits: []knock.Hit{get(c1, 5*s, tok(1, 0), 404), get(c1, 6*s, tok(1, 1), 404), get(c1, 7*s, tok(2, 1), 404), get(c1, 8*s, tok(3, 1), 404)},
			want: []knock.Event{step(c1, 5*s, "alice", 1), step(c1, 6*s, "alice", 1), step(c1, 7*s, "alice", 2), aliceGrant(c1, 8*s, 1)}},
		{name: "a reload of the step just taken changes nothing",
			hits: []knock.Hit{get(c1, 5*s, tok(1, 0), 404), get(c1, 6*s, tok(1, 0), 404), get(c1, 7*s, tok(2, 0), 404), get(c1, 8*s, tok(3, 0), 404)},
			want: []knock.Event{step(c1, 5*s, "alice", 1), step(c1, 7*s, "alice", 2), aliceGrant(c1, 8*s, 0)}},
		{name: "a replay from another address after the grant",
			hits: cat(aliceKnock(c1, 5*s, 0), aliceKnock(c2, 20*s, 0)),
			want: []knock.Event{step(c1, 5*s, "alice", 1), step(c1, 6*s, "alice", 2), aliceGrant(c1, 7*s, 0),
				reused(c2, 20*s, "alice", minute0), reused(c2, 21*s, "alice", minute0), reused(c2, 22*s, "alice", minute0)}},
		{name: "older steps are used too; the next one is not",
			hits: cat(aliceKnock(c1, 5*s, 0), aliceKnock(c2, 20*s, -1), aliceKnock(c2, 30*s, 1)),
			want: []knock.Event{step(c1, 5*s, "alice", 1), step(c1, 6*s, "alice", 2), aliceGrant(c1, 7*s, 0),
				reused(c2, 20*s, "alice", minute0-1), reused(c2, 21*s, "alice", minute0-1), reused(c2, 22*s, "alice", minute0-1),
				step(c2, 30*s, "alice", 1), step(c2, 31*s, "alice", 2), aliceGrant(c2, 32*s, 1)}},
		{name: "a link scanner fetching a step burns nothing",
			hits: cat([]knock.Hit{get(c2, 3*s, tok(1, 0), 404)}, aliceKnock(c1, 5*s, 0)),
			want: []knock.Event{step(c2, 3*s, "alice", 1), step(c1, 5*s, "alice", 1), step(c1, 6*s, "alice", 2), aliceGrant(c1, 7*s, 0)}},
		{name: "the same client knocking twice in one step: the second is a reuse",
			hits: cat(aliceKnock(c1, 5*s, 0), aliceKnock(c1, 10*s, 0)),
			want: []knock.Event{step(c1, 5*s, "alice", 1), step(c1, 6*s, "alice", 2), aliceGrant(c1, 7*s, 0),
				reused(c1, 10*s, "alice", minute0), reused(c1, 11*s, "alice", minute0), reused(c1, 12*s, "alice", minute0)}},
		{name: "a step used before start (persisted) is refused",
			used: map[string]int64{"alice": minute0},
			hits: cat(aliceKnock(c1, 5*s, 0), aliceKnock(c1, 65*s, 0)),
			want: []knock.Event{reused(c1, 5*s, "alice", minute0), reused(c1, 6*s, "alice", minute0), reused(c1, 7*s, "alice", minute0),
				reused(c1, 65*s, "alice", minute0), reused(c1, 66*s, "alice", minute0), reused(c1, 67*s, "alice", minute0)}},
		{name: "a used step from before start does not hold back the next",
			used: map[string]int64{"alice": minute0 - 1},
			hits: aliceKnock(c1, 5*s, 0),
			want: []knock.Event{step(c1, 5*s, "alice", 1), step(c1, 6*s, "alice", 2), aliceGrant(c1, 7*s, 0)}},
		{name: "totp knock",
			hits: []knock.Hit{get(c1, 5*s, "/t/b1", 404), get(c1, 6*s, "/t/b2", 404), get(c1, 7*s, code(ts0), 404)},
			want: []knock.Event{step(c1, 5*s, "bob", 1), step(c1, 6*s, "bob", 2), bobGrant(c1, 7*s, ts0)}},
		{name: "totp code of the previous step",
			hits: []knock.Hit{get(c1, 5*s, "/t/b1", 404), get(c1, 6*s, "/t/b2", 404), get(c1, 7*s, code(ts0-1), 404)},
			want: []knock.Event{step(c1, 5*s, "bob", 1), step(c1, 6*s, "bob", 2), bobGrant(c1, 7*s, ts0-1)}},
		{name: "totp code beyond the skew",
			hits: []knock.Hit{get(c1, 5*s, "/t/b1", 404), get(c1, 6*s, "/t/b2", 404), get(c1, 7*s, code(ts0-2), 404)},
			want: []knock.Event{step(c1, 5*s, "bob", 1), step(c1, 6*s, "bob", 2)}},
		{name: "totp code replayed",
			hits: []knock.Hit{get(c1, 5*s, "/t/b1", 404), get(c1, 6*s, "/t/b2", 404), get(c1, 7*s, code(ts0), 404),
				get(c2, 8*s, "/t/b1", 404), get(c2, 9*s, "/t/b2", 404), get(c2, 10*s, code(ts0), 404)},
			want: []knock.Event{step(c1, 5*s, "bob", 1), step(c1, 6*s, "bob", 2), bobGrant(c1, 7*s, ts0),
				step(c2, 8*s, "bob", 1), step(c2, 9*s, "bob", 2), reused(c2, 10*s, "bob", ts0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := mustNew(t, otConfig())
			for name, ts := range tt.used {
				if !tr.SetUsed(name, ts) {
					t.Fatalf("SetUsed(%q) = false", name)
				}
			}
			if got := applyAll(tr, tt.hits); !equal(got, tt.want) {
				t.Errorf("Apply = %s\nwant %s", formatAll(got), formatAll(tt.want))
			}
			if err := tr.Check(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestUsed(t *testing.T) {
	tr := mustNew(t, otConfig())
	if got := tr.Used(); len(got) != 0 {
		t.Errorf("Used() of a new tracker = %v", got)
	}
	applyAll(tr, aliceKnock(c1, 5*s, 1))
	if got := tr.Used(); len(got) != 1 || got["alice"] != minute0+1 {
		t.Errorf("Used() after a grant = %v, want alice: %d", got, minute0+1)
	}
	// SetUsed reports the sequence known; an older step never lowers it.
	if !tr.SetUsed("alice", minute0) {
		t.Error("SetUsed(alice) = false")
	}
	if got := tr.Used()["alice"]; got != minute0+1 {
		t.Errorf("SetUsed lowered the used step to %d", got)
	}
	if tr.SetUsed("nobody", 5) || !tr.SetUsed("bob", -1) {
		t.Error("SetUsed: unknown sequence accepted, or totp sequence refused")
	}
	// A reload keeps what was used, for sequences that derive the same paths.
	n := mustNew(t, otConfig())
	n.Adopt(tr)
	if got := n.Used()["alice"]; got != minute0+1 {
		t.Errorf("after Adopt: used %d, want %d", got, minute0+1)
	}
	changed := otConfig()
	changed.Sequences[0].OneTime.Key[0] ^= 1
	n = mustNew(t, changed)
	n.Adopt(tr)
	if _, ok := n.Used()["alice"]; ok {
		t.Error("Adopt kept the used step of a sequence whose key changed")
	}
}

func TestOneTimeMayKnockAndNeedles(t *testing.T) {
	cfg := otConfig()
	tr := mustNew(t, cfg)
	if got, want := strings.Join(tr.Needles(), " "), "/t/b1 /t/b2 /o/ /t/"; got != want {
		t.Errorf("Needles() = %q, want %q", got, want)
	}
	for path, want := range map[string]bool{
		tok(1, 0): true, tok(3, 500): true, "/o/" + strings.Repeat("A", 22): true, code(1): true, "/t/b1": true,
		"/o/short": false, "/o/" + strings.Repeat("A", 21) + "!": false, "/t/12345": false, "/x/123456": false,
	} {
		if got := tr.MayKnock(path); got != want {
			t.Errorf("MayKnock(%q) = %v, want %v", path, got, want)
		}
	}
}

func TestOneTimeNewRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*knock.Config)
		want   string
	}{
		{"short key", func(c *knock.Config) { c.Sequences[0].OneTime.Key = c.Sequences[0].OneTime.Key[:16] }, "key: 16 bytes"},
		{"hmac with static steps", func(c *knock.Config) { c.Sequences[0].Steps = []string{"/x"} }, "hmac mode derives its steps"},
		{"hmac without steps", func(c *knock.Config) { c.Sequences[0].OneTime.Steps = 0 }, "steps: 0"},
		{"a knock page", func(c *knock.Config) { c.Sequences[0].KnockPage = "/x" }, "knock page: a one-time sequence derives it"},
		{"totp without static steps", func(c *knock.Config) { c.Sequences[1].Steps = nil }, `"bob": steps: none`},
		{"totp period", func(c *knock.Config) { c.Sequences[1].OneTime.Period = time.Minute }, "totp mode uses 30s"},
		{"fractional period", func(c *knock.Config) { c.Sequences[0].OneTime.Period = 1500 * time.Millisecond }, "whole seconds"},
		{"skew", func(c *knock.Config) { c.Sequences[0].OneTime.Skew = 200 }, "skew: 200"},
		{"static path shaped like a code", func(c *knock.Config) { c.Sequences[1].Steps[0] = "/t/123456" }, `path "/t/123456" has the shape of a one-time path of sequence "bob"`},
		{"static path shaped like a token", func(c *knock.Config) { c.Sequences[1].Steps[0] = "/o/" + strings.Repeat("a", 22) }, `has the shape of a one-time path of sequence "alice"`},
	} {
		cfg := otConfig()
		tc.change(&cfg)
		if _, err := knock.New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New() = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// TestOneTimeCacheOutOfOrder feeds lines whose times jump back and forth
// (several web servers, a hostile clock) and checks every path of the
// window is still found and the cache stays bounded.
func TestOneTimeCacheOutOfOrder(t *testing.T) {
	tr := mustNew(t, otConfig())
	for i, dm := range []int64{0, 100, -100, 0, 5000, 1, -1} {
		d := time.Duration(dm) * time.Minute
		got := applyAll(tr, []knock.Hit{get(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), d+5*s, tok(1, dm), 404)})
		if len(got) != 1 || got[0].Kind != knock.KindStep {
			t.Errorf("first step at minute %d: %s", dm, formatAll(got))
		}
	}
	if n := knock.DerivedPaths(tr); n > (2*1+1+2)*3+2 {
		t.Errorf("%d derived paths cached, want at most %d", n, (2*1+1+2)*3+2)
	}
}

// TestOneTimePrefixes: sequences under prefixes of several lengths, one
// inside another, each find their own paths and only theirs.
func TestOneTimePrefixes(t *testing.T) {
	cfg := otConfig()
	for _, p := range []struct{ name, prefix string }{{"carol", "/o/c/"}, {"dave", "/x/abc/"}} {
		s := cfg.Sequences[0]
		s.Name = p.name
		ot := *s.OneTime
		ot.Prefix = p.prefix
		s.OneTime = &ot
		cfg.Sequences = append(cfg.Sequences, s)
	}
	tr := mustNew(t, cfg)
	path := func(name, prefix string, i int) string { return prefix + knock.Token(kaKey(), name, i, minute0) }
	for _, seq := range []struct{ name, prefix string }{{"carol", "/o/c/"}, {"alice", "/o/"}, {"dave", "/x/abc/"}} {
		var got []knock.Event
		for i := 1; i <= 3; i++ {
			got = tr.Apply(get(c1, time.Duration(i)*s, path(seq.name, seq.prefix, i), 404), got)
		}
		if len(got) != 3 || got[2].Kind != knock.KindGrant || got[2].Sequence != seq.name {
			t.Errorf("%s's knock: %s", seq.name, formatAll(got))
		}
	}
	// A path of carol's under alice's prefix, or of dave's under carol's, is none.
	for _, p := range []string{path("carol", "/o/", 1), path("dave", "/o/c/", 1), "/x/ab" + knock.Token(kaKey(), "dave", 1, minute0)} {
		if got := tr.Apply(get(c2, 10*s, p, 404), nil); len(got) != 0 {
			t.Errorf("%s: %s, want nothing", p, formatAll(got))
		}
	}
	if got, want := strings.Join(tr.Needles(), " "), "/t/b1 /t/b2 /o/ /t/ /o/c/ /x/abc/"; got != want {
		t.Errorf("Needles() = %q, want %q", got, want)
	}
}
