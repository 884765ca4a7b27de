package knock_test

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/webknock/webknock/knock"
)

var (
	t0 = time.Date(2026, 11, 22, 19, 0, 0, 0, time.UTC)
	c1 = netip.MustParseAddr("203.0.113.7")
	c2 = netip.MustParseAddr("198.51.100.2")
	c3 = netip.MustParseAddr("192.0.2.3")
	c4 = netip.MustParseAddr("192.0.2.4")
	c5 = netip.MustParseAddr("192.0.2.5")
	v6 = netip.MustParseAddr("2001:db8::1")
	w6 = netip.MustParseAddr("2001:db8::2")
)

// testConfig has two sequences: "ssh" takes any status on its knock page,
// "web" only 200; three failures within 10m lock a client out for 15m.
func testConfig() knock.Config {
	return knock.Config{
		Sequences: []knock.Sequence{{
			Name:       "ssh",
			Steps:      []string{"/k/a1", "/k/a2", "/k/a3"},
			StepStatus: []int{404},
			Methods:    []string{"GET", "HEAD"},
			KnockPage:  "/k/open",
			Timeout:    30 * time.Second,
			Window:     10 * time.Minute,
			Ports:      []string{"22/tcp"},
		}, {
			Name:            "web",
			Steps:           []string{"/w/b1", "/w/b2"},
			StepStatus:      []int{404, 410},
			Methods:         []string{"GET"},
			KnockPage:       "/w/open",
			KnockPageStatus: []int{200},
			Timeout:         time.Minute,
			Window:          time.Hour,
			Ports:           []string{"443/tcp", "8443/tcp"},
		}},
		Lockout: knock.Lockout{Failures: 3, Period: 10 * time.Minute, Duration: 15 * time.Minute},
	}
}

var (
	sshPorts = []string{"22/tcp"}
	webPorts = []string{"443/tcp", "8443/tcp"}
)

// at is t0 plus d.
func at(d time.Duration) time.Time { return t0.Add(d) }

const s = time.Second

func hit(c netip.Addr, d time.Duration, method, path string, status int) knock.Hit {
	return knock.Hit{Client: c, Time: at(d), Method: method, Path: path, Status: status}
}

func get(c netip.Addr, d time.Duration, path string, status int) knock.Hit {
	return hit(c, d, "GET", path, status)
}

func step(c netip.Addr, d time.Duration, seq string, k int) knock.Event {
	return knock.Event{Kind: knock.KindStep, Time: at(d), Client: c, Sequence: seq, Step: k}
}

func reset(c netip.Addr, d time.Duration, seq string) knock.Event {
	return knock.Event{Kind: knock.KindReset, Time: at(d), Client: c, Sequence: seq}
}

func timeout(c netip.Addr, d time.Duration, seq string) knock.Event {
	return knock.Event{Kind: knock.KindTimeout, Time: at(d), Client: c, Sequence: seq}
}

func grant(c netip.Addr, d time.Duration, seq string, window time.Duration, ports []string) knock.Event {
	return knock.Event{Kind: knock.KindGrant, Time: at(d), Client: c, Sequence: seq, Until: at(d + window), Ports: ports,
		Source: netip.PrefixFrom(c, c.BitLen())}
}

func lockout(c netip.Addr, d time.Duration, seq string) knock.Event {
	return knock.Event{Kind: knock.KindLockout, Time: at(d), Client: c, Sequence: seq, Until: at(d + 15*time.Minute)}
}

// sshKnock is a complete ssh knock by c starting at d, one second apart.
func sshKnock(c netip.Addr, d time.Duration) []knock.Hit {
	return []knock.Hit{
		get(c, d, "/k/a1", 404), get(c, d+1*s, "/k/a2", 404),
		get(c, d+2*s, "/k/a3", 404), get(c, d+3*s, "/k/open", 200),
	}
}

func sshKnockEvents(c netip.Addr, d time.Duration) []knock.Event {
	return []knock.Event{
		step(c, d, "ssh", 1), step(c, d+1*s, "ssh", 2), step(c, d+2*s, "ssh", 3),
		grant(c, d+3*s, "ssh", 10*time.Minute, sshPorts),
	}
}

// sshFail is one ssh reset by c at d (after a first step at d-1s).
func sshFail(c netip.Addr, d time.Duration) []knock.Hit {
	return []knock.Hit{get(c, d-s, "/k/a1", 404), get(c, d, "/k/a3", 404)}
}

func sshFailEvents(c netip.Addr, d time.Duration) []knock.Event {
	return []knock.Event{step(c, d-s, "ssh", 1), reset(c, d, "ssh")}
}

func cat[T any](parts ...[]T) []T { return slices.Concat(parts...) }

func format(ev knock.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s t+%v", ev.Kind, ev.Client, ev.Sequence, ev.Time.Sub(t0))
	if ev.Kind == knock.KindStep || ev.Step != 0 {
		fmt.Fprintf(&b, " step=%d", ev.Step)
	}
	if !ev.Until.IsZero() {
		fmt.Fprintf(&b, " until=t+%v", ev.Until.Sub(t0))
	}
	if ev.Ports != nil {
		fmt.Fprintf(&b, " ports=%v", ev.Ports)
	}
	if ev.OneTime {
		fmt.Fprintf(&b, " T=%d", ev.TimeStep)
	}
	if ev.Source.IsValid() {
		fmt.Fprintf(&b, " source=%s", ev.Source)
	}
	if ev.Reason != "" {
		fmt.Fprintf(&b, " reason=%s", ev.Reason)
	}
	return b.String()
}

func formatAll(evs []knock.Event) string {
	if len(evs) == 0 {
		return "(none)"
	}
	var lines []string
	for _, ev := range evs {
		lines = append(lines, "\t"+format(ev))
	}
	return "\n" + strings.Join(lines, "\n")
}

func equal(a, b []knock.Event) bool {
	return slices.EqualFunc(a, b, func(x, y knock.Event) bool {
		return x.Kind == y.Kind && x.Time.Equal(y.Time) && x.Client == y.Client &&
			x.Sequence == y.Sequence && x.Step == y.Step && x.Until.Equal(y.Until) &&
			slices.Equal(x.Ports, y.Ports) && (x.Ports == nil) == (y.Ports == nil) &&
			x.OneTime == y.OneTime && x.TimeStep == y.TimeStep &&
			x.Source == y.Source && x.Reason == y.Reason
	})
}

func mustNew(t testing.TB, cfg knock.Config) *knock.Tracker {
	t.Helper()
	tr, err := knock.New(cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	return tr
}

func applyAll(tr *knock.Tracker, hits []knock.Hit) []knock.Event {
	var got []knock.Event
	for _, h := range hits {
		got = tr.Apply(h, got)
	}
	return got
}

func TestApply(t *testing.T) {
	tests := []struct {
		name    string
		cfg     func(*knock.Config) // nil: testConfig as is
		hits    []knock.Hit
		want    []knock.Event
		clients int // entries left in the table
	}{{
		name: "full sequence grants",
		hits: sshKnock(c1, 0),
		want: sshKnockEvents(c1, 0),
	}, {
		name: "HEAD is a listed method too",
		hits: []knock.Hit{
			hit(c1, 0, "HEAD", "/k/a1", 404), hit(c1, 1*s, "HEAD", "/k/a2", 404),
			hit(c1, 2*s, "HEAD", "/k/a3", 404), hit(c1, 3*s, "HEAD", "/k/open", 404),
		},
		want: []knock.Event{
			step(c1, 0, "ssh", 1), step(c1, 1*s, "ssh", 2), step(c1, 2*s, "ssh", 3),
			grant(c1, 3*s, "ssh", 10*time.Minute, sshPorts),
		},
	}, {
		name: "any listed step status advances",
		hits: []knock.Hit{get(c1, 0, "/w/b1", 410), get(c1, 1*s, "/w/b2", 404), get(c1, 2*s, "/w/open", 200)},
		want: []knock.Event{step(c1, 0, "web", 1), step(c1, 1*s, "web", 2), grant(c1, 2*s, "web", time.Hour, webPorts)},
	}, {
		name: "first step with wrong status is not a knock",
		hits: []knock.Hit{get(c1, 0, "/k/a1", 499), get(c1, 1*s, "/k/a1", 200), get(c1, 2*s, "/k/a1", 404)},
		want: []knock.Event{step(c1, 2*s, "ssh", 1)},
		// The client is in progress.
		clients: 1,
	}, {
		name: "next step with wrong status changes nothing",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a2", 499), get(c1, 2*s, "/k/a2", 404),
			get(c1, 3*s, "/k/a3", 404), get(c1, 4*s, "/k/open", 200),
		},
		want: []knock.Event{
			step(c1, 0, "ssh", 1), step(c1, 2*s, "ssh", 2), step(c1, 3*s, "ssh", 3),
			grant(c1, 4*s, "ssh", 10*time.Minute, sshPorts),
		},
	}, {
		name: "out-of-order step with wrong status does not reset",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a3", 499), get(c1, 2*s, "/k/a1", 200),
			get(c1, 3*s, "/k/a2", 404), get(c1, 4*s, "/k/a3", 404), get(c1, 5*s, "/k/open", 200),
		},
		want: []knock.Event{
			step(c1, 0, "ssh", 1), step(c1, 3*s, "ssh", 2), step(c1, 4*s, "ssh", 3),
			grant(c1, 5*s, "ssh", 10*time.Minute, sshPorts),
		},
	}, {
		name: "repeat of the previous step changes nothing",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a1", 404), get(c1, 2*s, "/k/a2", 404),
			get(c1, 3*s, "/k/a2", 404), get(c1, 4*s, "/k/a2", 200), get(c1, 5*s, "/k/a3", 404),
			get(c1, 6*s, "/k/a3", 404), get(c1, 7*s, "/k/open", 200),
		},
		want: []knock.Event{
			step(c1, 0, "ssh", 1), step(c1, 2*s, "ssh", 2), step(c1, 5*s, "ssh", 3),
			grant(c1, 7*s, "ssh", 10*time.Minute, sshPorts),
		},
	}, {
		name: "steps[0] out of order restarts, and the timeout counts from the restart",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 10*s, "/k/a2", 404), get(c1, 20*s, "/k/a1", 404),
			get(c1, 30*s, "/k/a2", 404), get(c1, 40*s, "/k/a3", 404), get(c1, 50*s, "/k/open", 200),
		},
		want: []knock.Event{
			step(c1, 0, "ssh", 1), step(c1, 10*s, "ssh", 2), step(c1, 20*s, "ssh", 1),
			step(c1, 30*s, "ssh", 2), step(c1, 40*s, "ssh", 3), grant(c1, 50*s, "ssh", 10*time.Minute, sshPorts),
		},
	}, {
		name: "restart is not a failure",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a2", 404), get(c1, 2*s, "/k/a1", 404),
			get(c1, 3*s, "/k/a2", 404), get(c1, 4*s, "/k/a1", 404), get(c1, 5*s, "/k/a2", 404),
			get(c1, 6*s, "/k/a3", 404), get(c1, 7*s, "/k/a1", 404),
		},
		want: []knock.Event{
			step(c1, 0, "ssh", 1), step(c1, 1*s, "ssh", 2), step(c1, 2*s, "ssh", 1),
			step(c1, 3*s, "ssh", 2), step(c1, 4*s, "ssh", 1), step(c1, 5*s, "ssh", 2),
			step(c1, 6*s, "ssh", 3), step(c1, 7*s, "ssh", 1),
		},
		clients: 1,
	}, {
		name: "step out of order resets",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a3", 404), get(c1, 2*s, "/k/a2", 404),
			get(c1, 3*s, "/k/a3", 404),
		},
		want: []knock.Event{step(c1, 0, "ssh", 1), reset(c1, 1*s, "ssh")},
		// The failure is remembered.
		clients: 1,
	}, {
		name: "step two back resets",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a2", 404), get(c1, 2*s, "/k/a3", 404),
			get(c1, 3*s, "/k/a2", 404), get(c1, 4*s, "/k/open", 200),
		},
		want: []knock.Event{
			step(c1, 0, "ssh", 1), step(c1, 1*s, "ssh", 2), step(c1, 2*s, "ssh", 3), reset(c1, 3*s, "ssh"),
		},
		clients: 1,
	}, {
		name: "later steps without progress change nothing",
		hits: []knock.Hit{get(c1, 0, "/k/a2", 404), get(c1, 1*s, "/k/a3", 404), get(c1, 2*s, "/k/open", 200)},
		want: nil,
	}, {
		name: "early knock page resets",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a2", 404), get(c1, 2*s, "/k/open", 200),
			get(c1, 3*s, "/k/a3", 404),
		},
		want:    []knock.Event{step(c1, 0, "ssh", 1), step(c1, 1*s, "ssh", 2), reset(c1, 2*s, "ssh")},
		clients: 1,
	}, {
		name: "knock page status filter",
		hits: []knock.Hit{
			get(c1, 0, "/w/b1", 404), get(c1, 1*s, "/w/b2", 404), get(c1, 2*s, "/w/open", 404),
			get(c1, 3*s, "/w/open", 302), get(c1, 4*s, "/w/open", 200),
		},
		want: []knock.Event{step(c1, 0, "web", 1), step(c1, 1*s, "web", 2), grant(c1, 4*s, "web", time.Hour, webPorts)},
	}, {
		name: "early knock page with a filtered status does not reset",
		hits: []knock.Hit{
			get(c1, 0, "/w/b1", 404), get(c1, 1*s, "/w/open", 404), get(c1, 2*s, "/w/b2", 404),
			get(c1, 3*s, "/w/open", 200),
		},
		want: []knock.Event{step(c1, 0, "web", 1), step(c1, 2*s, "web", 2), grant(c1, 3*s, "web", time.Hour, webPorts)},
	}, {
		name: "knock page without a status filter takes any status",
		hits: cat(sshKnock(c1, 0)[:3], []knock.Hit{get(c1, 3*s, "/k/open", 502)}),
		want: sshKnockEvents(c1, 0),
	}, {
		name: "other methods change nothing",
		hits: []knock.Hit{
			hit(c1, 0, "POST", "/k/a1", 404), hit(c1, 1*s, "get", "/k/a1", 404), get(c1, 2*s, "/k/a1", 404),
			hit(c1, 3*s, "POST", "/k/a3", 404), get(c1, 4*s, "/k/a2", 404), get(c1, 5*s, "/k/a3", 404),
			hit(c1, 6*s, "OPTIONS", "/k/open", 200), hit(c1, 7*s, "HEAD", "/w/b1", 404),
			get(c1, 8*s, "/k/open", 200),
		},
		want: []knock.Event{
			step(c1, 2*s, "ssh", 1), step(c1, 4*s, "ssh", 2), step(c1, 5*s, "ssh", 3),
			grant(c1, 8*s, "ssh", 10*time.Minute, sshPorts),
		},
	}, {
		name: "other methods do not expire progress",
		hits: []knock.Hit{get(c1, 0, "/k/a1", 404), hit(c1, time.Hour, "POST", "/k/a2", 404)},
		want: []knock.Event{step(c1, 0, "ssh", 1)},
		// The timeout is still pending (for Expire or the next real hit).
		clients: 1,
	}, {
		name: "paths of no sequence change nothing, not even timeouts",
		hits: []knock.Hit{
			get(c1, 0, "/favicon.ico", 404), get(c1, 1*s, "/k/a1", 404), get(c1, 2*s, "/favicon.ico", 404),
			get(c1, 3*s, "/k/a1/", 404), get(c1, 4*s, "/K/A2", 404), get(c1, 5*s, "/k/a2?x=1", 404),
			get(c1, 6*s, "", 404), get(c1, time.Hour, "/index.html", 200),
		},
		want:    []knock.Event{step(c1, 1*s, "ssh", 1)},
		clients: 1,
	}, {
		name: "knock page exactly at the timeout still grants",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 10*s, "/k/a2", 404), get(c1, 20*s, "/k/a3", 404),
			get(c1, 30*s, "/k/open", 200),
		},
		want: []knock.Event{
			step(c1, 0, "ssh", 1), step(c1, 10*s, "ssh", 2), step(c1, 20*s, "ssh", 3),
			grant(c1, 30*s, "ssh", 10*time.Minute, sshPorts),
		},
	}, {
		name: "knock page a nanosecond after the timeout is too late",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 10*s, "/k/a2", 404), get(c1, 20*s, "/k/a3", 404),
			get(c1, 30*s+1, "/k/open", 200),
		},
		want: []knock.Event{
			step(c1, 0, "ssh", 1), step(c1, 10*s, "ssh", 2), step(c1, 20*s, "ssh", 3),
			timeout(c1, 30*s, "ssh"),
		},
		clients: 1, // the failure
	}, {
		name: "timeout is dated when it expired and the hit then applies",
		hits: []knock.Hit{get(c1, 0, "/k/a1", 404), get(c1, 95*s, "/k/a1", 404)},
		want: []knock.Event{step(c1, 0, "ssh", 1), timeout(c1, 30*s, "ssh"), step(c1, 95*s, "ssh", 1)},
		// In progress and one failure.
		clients: 1,
	}, {
		name:    "a hit of one sequence expires the other",
		hits:    []knock.Hit{get(c1, 0, "/k/a1", 404), get(c1, 95*s, "/w/b1", 404)},
		want:    []knock.Event{step(c1, 0, "ssh", 1), timeout(c1, 30*s, "ssh"), step(c1, 95*s, "web", 1)},
		clients: 1,
	}, {
		name: "timeouts come in the order they expired",
		hits: []knock.Hit{
			get(c1, 0, "/w/b1", 404), get(c1, 40*s, "/k/a1", 404), get(c1, 200*s, "/k/a1", 404),
		},
		want: []knock.Event{
			step(c1, 0, "web", 1), step(c1, 40*s, "ssh", 1),
			timeout(c1, 60*s, "web"), timeout(c1, 70*s, "ssh"), step(c1, 200*s, "ssh", 1),
		},
		clients: 1,
	}, {
		name: "two sequences are independent for one client",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/w/b1", 404), get(c1, 2*s, "/k/a2", 404),
			get(c1, 3*s, "/w/b2", 404), get(c1, 4*s, "/k/a1", 404), get(c1, 5*s, "/w/open", 200),
			get(c1, 6*s, "/k/a2", 404), get(c1, 7*s, "/k/a3", 404), get(c1, 8*s, "/w/b2", 404),
			get(c1, 9*s, "/k/open", 200),
		},
		want: []knock.Event{
			step(c1, 0, "ssh", 1), step(c1, 1*s, "web", 1), step(c1, 2*s, "ssh", 2),
			step(c1, 3*s, "web", 2), step(c1, 4*s, "ssh", 1), grant(c1, 5*s, "web", time.Hour, webPorts),
			step(c1, 6*s, "ssh", 2), step(c1, 7*s, "ssh", 3), grant(c1, 9*s, "ssh", 10*time.Minute, sshPorts),
		},
	}, {
		name: "a reset in one sequence leaves the other in progress",
		hits: []knock.Hit{
			get(c1, 0, "/w/b1", 404), get(c1, 1*s, "/k/a1", 404), get(c1, 2*s, "/k/open", 404),
			get(c1, 3*s, "/w/b2", 404), get(c1, 4*s, "/w/open", 200),
		},
		want: []knock.Event{
			step(c1, 0, "web", 1), step(c1, 1*s, "ssh", 1), reset(c1, 2*s, "ssh"),
			step(c1, 3*s, "web", 2), grant(c1, 4*s, "web", time.Hour, webPorts),
		},
		clients: 1,
	}, {
		name: "two clients are independent",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c2, 1*s, "/k/a1", 404), get(c1, 2*s, "/k/a2", 404),
			get(c2, 3*s, "/k/a3", 404), get(c2, 4*s, "/k/a2", 404), get(c1, 5*s, "/k/a3", 404),
			get(c1, 6*s, "/k/open", 200), get(c2, 7*s, "/k/open", 200),
		},
		want: []knock.Event{
			step(c1, 0, "ssh", 1), step(c2, 1*s, "ssh", 1), step(c1, 2*s, "ssh", 2),
			reset(c2, 3*s, "ssh"), step(c1, 5*s, "ssh", 3), grant(c1, 6*s, "ssh", 10*time.Minute, sshPorts),
		},
		clients: 1, // c2's failure
	}, {
		name: "after a grant the sequence starts over",
		hits: cat(sshKnock(c1, 0), []knock.Hit{
			get(c1, 4*s, "/k/open", 200), get(c1, 5*s, "/k/a3", 404),
		}),
		want: sshKnockEvents(c1, 0),
	}, {
		name: "two grants in a row are both emitted",
		hits: cat(sshKnock(c1, 0), sshKnock(c1, 10*s)),
		want: cat(sshKnockEvents(c1, 0), sshKnockEvents(c1, 10*s)),
	}, {
		name: "a single-step sequence",
		cfg: func(c *knock.Config) {
			c.Sequences[1].Steps = []string{"/w/only"}
		},
		hits: []knock.Hit{
			get(c1, 0, "/w/only", 404), get(c1, 1*s, "/w/only", 404), get(c1, 2*s, "/w/open", 200),
			get(c1, 3*s, "/w/open", 200),
		},
		want: []knock.Event{step(c1, 0, "web", 1), grant(c1, 2*s, "web", time.Hour, webPorts)},
	}, {
		name: "IPv6 clients",
		hits: []knock.Hit{
			get(v6, 0, "/k/a1", 404), get(w6, 1*s, "/k/a1", 404), get(v6, 2*s, "/k/a2", 404),
			get(w6, 3*s, "/k/open", 200), get(v6, 4*s, "/k/a3", 404), get(v6, 5*s, "/k/open", 200),
		},
		want: []knock.Event{
			step(v6, 0, "ssh", 1), step(w6, 1*s, "ssh", 1), step(v6, 2*s, "ssh", 2),
			reset(w6, 3*s, "ssh"), step(v6, 4*s, "ssh", 3), grant(v6, 5*s, "ssh", 10*time.Minute, sshPorts),
		},
		clients: 1,
	}, {
		name: "lockout after failures within the period",
		hits: cat(sshFail(c1, 1*s), sshFail(c1, 5*time.Minute), sshFail(c1, 10*time.Minute)),
		want: cat(sshFailEvents(c1, 1*s), sshFailEvents(c1, 5*time.Minute), sshFailEvents(c1, 10*time.Minute),
			[]knock.Event{lockout(c1, 10*time.Minute, "ssh")}),
		clients: 1,
	}, {
		name:    "no lockout when failures spread over the period",
		hits:    cat(sshFail(c1, 0), sshFail(c1, 5*time.Minute), sshFail(c1, 10*time.Minute)),
		want:    cat(sshFailEvents(c1, 0), sshFailEvents(c1, 5*time.Minute), sshFailEvents(c1, 10*time.Minute)),
		clients: 1,
	}, {
		name: "failures of different sequences and timeouts all count",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/open", 200), // reset
			get(c1, 2*s, "/w/b1", 404), get(c1, 3*s, "/w/open", 200), // reset
			get(c1, 4*s, "/k/a1", 404), get(c1, 35*s, "/k/a1", 404), // timeout at 34s: locked until 34s+15m
			get(c1, 15*time.Minute, "/k/a1", 404),
		},
		want: []knock.Event{
			step(c1, 0, "ssh", 1), reset(c1, 1*s, "ssh"), step(c1, 2*s, "web", 1), reset(c1, 3*s, "web"),
			step(c1, 4*s, "ssh", 1), timeout(c1, 34*s, "ssh"), lockout(c1, 34*s, "ssh"),
		},
		clients: 1,
	}, {
		name: "lockout ignores hits until it ends, then knocking works",
		hits: cat(sshFail(c1, 1*s), sshFail(c1, 2*s), sshFail(c1, 3*s),
			sshKnock(c1, 1*time.Minute), sshFail(c1, 5*time.Minute),
			sshKnock(c1, 3*s+15*time.Minute)),
		want: cat(sshFailEvents(c1, 1*s), sshFailEvents(c1, 2*s), sshFailEvents(c1, 3*s),
			[]knock.Event{lockout(c1, 3*s, "ssh")},
			sshKnockEvents(c1, 3*s+15*time.Minute)),
	}, {
		name: "lockout forgets progress in every sequence",
		hits: cat([]knock.Hit{get(c1, 0, "/w/b1", 404)},
			sshFail(c1, 2*s), sshFail(c1, 3*s), sshFail(c1, 4*s),
			[]knock.Hit{get(c1, 4*s+15*time.Minute, "/w/b2", 404)}),
		want: cat([]knock.Event{step(c1, 0, "web", 1)},
			sshFailEvents(c1, 2*s), sshFailEvents(c1, 3*s), sshFailEvents(c1, 4*s),
			[]knock.Event{lockout(c1, 4*s, "ssh")}),
	}, {
		name: "lockout forgets the failures that caused it",
		hits: cat(sshFail(c1, 1*s), sshFail(c1, 2*s), sshFail(c1, 3*s),
			sshFail(c1, 4*s+15*time.Minute), sshFail(c1, 5*s+15*time.Minute)),
		want: cat(sshFailEvents(c1, 1*s), sshFailEvents(c1, 2*s), sshFailEvents(c1, 3*s),
			[]knock.Event{lockout(c1, 3*s, "ssh")},
			sshFailEvents(c1, 4*s+15*time.Minute), sshFailEvents(c1, 5*s+15*time.Minute)),
		clients: 1,
	}, {
		name: "lockout does not affect other clients",
		hits: cat(sshFail(c1, 1*s), sshFail(c1, 2*s), sshFail(c1, 3*s), sshKnock(c2, 4*s)),
		want: cat(sshFailEvents(c1, 1*s), sshFailEvents(c1, 2*s), sshFailEvents(c1, 3*s),
			[]knock.Event{lockout(c1, 3*s, "ssh")}, sshKnockEvents(c2, 4*s)),
		clients: 1,
	}, {
		name: "no lockout when disabled, and failures are not remembered",
		cfg:  func(c *knock.Config) { c.Lockout = knock.Lockout{} },
		hits: cat(sshFail(c1, 1*s), sshFail(c1, 2*s), sshFail(c1, 3*s), sshFail(c1, 4*s)),
		want: cat(sshFailEvents(c1, 1*s), sshFailEvents(c1, 2*s), sshFailEvents(c1, 3*s), sshFailEvents(c1, 4*s)),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			tr := mustNew(t, cfg)
			got := applyAll(tr, tt.hits)
			if !equal(got, tt.want) {
				t.Errorf("Apply(%d hits) = %s\nwant %s", len(tt.hits), formatAll(got), formatAll(tt.want))
			}
			if n := tr.Clients(); n != tt.clients {
				t.Errorf("Clients() = %d, want %d", n, tt.clients)
			}
		})
	}
}

func TestApplyAppendsToDst(t *testing.T) {
	tr := mustNew(t, testConfig())
	dst := []knock.Event{{Kind: knock.KindGrant}}
	got := tr.Apply(get(c1, 0, "/k/a1", 404), dst)
	want := []knock.Event{{Kind: knock.KindGrant}, step(c1, 0, "ssh", 1)}
	if !equal(got, want) {
		t.Errorf("Apply(%v) = %s, want %s", get(c1, 0, "/k/a1", 404), formatAll(got), formatAll(want))
	}
}

func TestApplyNoMatchDoesNotAllocate(t *testing.T) {
	tr := mustNew(t, testConfig())
	tr.Apply(get(c1, 0, "/k/a1", 404), nil)
	h := get(c1, 1*s, "/favicon.ico", 404)
	if n := testing.AllocsPerRun(100, func() { tr.Apply(h, nil) }); n != 0 {
		t.Errorf("Apply(%v) allocates %v times, want 0", h, n)
	}
}

func TestExpire(t *testing.T) {
	// Progress that expires at 30s (c1, c2, v6 ssh), 61s (c1 web) and 70s (c2 ssh restarted).
	hits := []knock.Hit{
		get(v6, 0, "/k/a1", 404), get(c2, 0, "/k/a1", 404), get(c1, 0, "/k/a1", 404),
		get(c1, 1*s, "/w/b1", 404), get(c3, 20*s, "/k/a1", 404),
	}
	tests := []struct {
		name    string
		now     time.Duration
		want    []knock.Event
		clients int
	}{{
		name:    "nothing expires at the timeout itself",
		now:     30 * s,
		want:    nil,
		clients: 4,
	}, {
		name:    "ordered by time, client, sequence",
		now:     61*s + 1,
		want:    []knock.Event{timeout(c2, 30*s, "ssh"), timeout(c1, 30*s, "ssh"), timeout(v6, 30*s, "ssh"), timeout(c3, 50*s, "ssh"), timeout(c1, 61*s, "web")},
		clients: 4, // each with a failure
	}, {
		name:    "failure history forgotten after the period",
		now:     61*s + 10*time.Minute,
		want:    []knock.Event{timeout(c2, 30*s, "ssh"), timeout(c1, 30*s, "ssh"), timeout(v6, 30*s, "ssh"), timeout(c3, 50*s, "ssh"), timeout(c1, 61*s, "web")},
		clients: 0,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Any order of the hits gives the same events.
			for _, order := range [][]knock.Hit{hits, reversed(hits)} {
				tr := mustNew(t, testConfig())
				applyAll(tr, order)
				got := tr.Expire(at(tt.now), nil)
				if !equal(got, tt.want) {
					t.Errorf("Expire(t+%v) = %s\nwant %s", tt.now, formatAll(got), formatAll(tt.want))
				}
				if n := tr.Clients(); n != tt.clients {
					t.Errorf("after Expire(t+%v): Clients() = %d, want %d", tt.now, n, tt.clients)
				}
				if got := tr.Expire(at(tt.now), nil); len(got) != 0 {
					t.Errorf("second Expire(t+%v) = %s, want none", tt.now, formatAll(got))
				}
			}
		})
	}
}

func reversed[T any](xs []T) []T {
	r := slices.Clone(xs)
	slices.Reverse(r)
	return r
}

func TestExpireLockout(t *testing.T) {
	tr := mustNew(t, testConfig())
	applyAll(tr, cat(sshFail(c1, 1*s), sshFail(c1, 2*s), []knock.Hit{get(c1, 3*s, "/k/a1", 404), get(c2, 3*s, "/k/a1", 404)}))

	// The timeout is the third failure: Expire locks out just as Apply would.
	got := tr.Expire(at(time.Minute), nil)
	want := []knock.Event{timeout(c2, 33*s, "ssh"), timeout(c1, 33*s, "ssh"), lockout(c1, 33*s, "ssh")}
	if !equal(got, want) {
		t.Errorf("Expire(t+1m) = %s\nwant %s", formatAll(got), formatAll(want))
	}
	if got := applyAll(tr, sshKnock(c1, 2*time.Minute)); len(got) != 0 {
		t.Errorf("Apply(knock while locked out) = %s, want none", formatAll(got))
	}

	// c2's failure is forgotten after the period, c1's entry at the end of the lockout.
	period, end := 33*s+10*time.Minute, 33*s+15*time.Minute
	for _, tt := range []struct {
		now     time.Duration
		clients int
	}{{period - 1, 2}, {period, 1}, {end - 1, 1}, {end, 0}} {
		if got := tr.Expire(at(tt.now), nil); len(got) != 0 {
			t.Errorf("Expire(t+%v) = %s, want none", tt.now, formatAll(got))
		}
		if n := tr.Clients(); n != tt.clients {
			t.Errorf("after Expire(t+%v): Clients() = %d, want %d", tt.now, n, tt.clients)
		}
	}
	if got, want := applyAll(tr, sshKnock(c1, time.Hour)), sshKnockEvents(c1, time.Hour); !equal(got, want) {
		t.Errorf("Apply(knock after lockout) = %s\nwant %s", formatAll(got), formatAll(want))
	}
}

func TestEviction(t *testing.T) {
	cfg := testConfig()
	cfg.MaxClients = 3
	tr := mustNew(t, cfg)
	type op struct {
		hit     knock.Hit
		want    []knock.Event
		clients int
		evicted uint64
	}
	ops := []op{
		{get(c1, 0, "/k/a1", 404), []knock.Event{step(c1, 0, "ssh", 1)}, 1, 0},
		{get(c2, 1*s, "/k/a1", 404), []knock.Event{step(c2, 1*s, "ssh", 1)}, 2, 0},
		{get(c3, 2*s, "/k/a1", 404), []knock.Event{step(c3, 2*s, "ssh", 1)}, 3, 0},
		// Junk from a new client takes no room.
		{get(c4, 3*s, "/k/a3", 404), nil, 3, 0},
		// c1 is the least recently touched.
		{get(c4, 4*s, "/k/a1", 404), []knock.Event{step(c4, 4*s, "ssh", 1)}, 3, 1},
		// A touch, even one that changes nothing, makes c2 recent: c3 goes next.
		{get(c2, 5*s, "/k/a1", 404), nil, 3, 1},
		{get(c5, 6*s, "/w/b1", 404), []knock.Event{step(c5, 6*s, "web", 1)}, 3, 2},
		// c1 and c3 were forgotten.
		{get(c1, 7*s, "/k/a2", 404), nil, 3, 2},
		{get(c3, 8*s, "/k/a2", 404), nil, 3, 2},
		{get(c2, 9*s, "/k/a2", 404), []knock.Event{step(c2, 9*s, "ssh", 2)}, 3, 2},
		// A grant frees c4's entry: no eviction for c1.
		{get(c4, 10*s, "/k/a2", 404), []knock.Event{step(c4, 10*s, "ssh", 2)}, 3, 2},
		{get(c4, 11*s, "/k/a3", 404), []knock.Event{step(c4, 11*s, "ssh", 3)}, 3, 2},
		{get(c4, 12*s, "/k/open", 200), []knock.Event{grant(c4, 12*s, "ssh", 10*time.Minute, sshPorts)}, 2, 2},
		{get(c1, 13*s, "/k/a1", 404), []knock.Event{step(c1, 13*s, "ssh", 1)}, 3, 2},
	}
	for _, o := range ops {
		got := tr.Apply(o.hit, nil)
		if !equal(got, o.want) {
			t.Errorf("Apply(%v) = %s, want %s", o.hit, formatAll(got), formatAll(o.want))
		}
		if n := tr.Clients(); n != o.clients {
			t.Errorf("after Apply(%v): Clients() = %d, want %d", o.hit, n, o.clients)
		}
		if n := tr.Evicted(); n != o.evicted {
			t.Errorf("after Apply(%v): Evicted() = %d, want %d", o.hit, n, o.evicted)
		}
		if err := tr.Check(); err != nil {
			t.Errorf("after Apply(%v): %v", o.hit, err)
		}
	}
	if n := tr.EvictedProtected(); n != 0 {
		t.Errorf("EvictedProtected() = %d, want 0", n)
	}
}

func TestFloodStaysBounded(t *testing.T) {
	cfg := testConfig()
	cfg.MaxClients = 1000
	tr := mustNew(t, cfg)
	for i := range 100000 {
		tr.Apply(get(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), time.Duration(i), "/k/a1", 404), nil)
	}
	if n := tr.Clients(); n != 1000 {
		t.Errorf("Clients() = %d, want 1000", n)
	}
	if n := tr.Evicted(); n != 99000 {
		t.Errorf("Evicted() = %d, want 99000", n)
	}
}

func TestEntrySize(t *testing.T) {
	if testing.Short() {
		t.Skip("measures the heap")
	}
	const n = 100000
	tr := mustNew(t, testConfig())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		tr.Apply(get(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 0, "/k/a1", 404), nil)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(tr)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes per client entry (entry %d, the rest its map slot)", per, knock.EntrySize)
	// A size class of the allocator is 112 bytes; one byte more costs 16.
	if knock.EntrySize > 112 {
		t.Errorf("entry is %d bytes, want <= 112", knock.EntrySize)
	}
	if per > 300 {
		t.Errorf("%d clients in progress take %.0f bytes each, want <= 300", n, per)
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cfg     func(*knock.Config)
		wantErr bool
	}{
		{"valid", func(*knock.Config) {}, false},
		{"lockout disabled needs no period", func(c *knock.Config) { c.Lockout = knock.Lockout{} }, false},
		{"no sequences", func(c *knock.Config) { c.Sequences = nil }, true},
		{"no steps", func(c *knock.Config) { c.Sequences[0].Steps = nil }, true},
		{"empty step", func(c *knock.Config) { c.Sequences[0].Steps[1] = "" }, true},
		{"empty knock page", func(c *knock.Config) { c.Sequences[0].KnockPage = "" }, true},
		{"step twice in a sequence", func(c *knock.Config) { c.Sequences[0].Steps[2] = "/k/a1" }, true},
		{"step twice across sequences", func(c *knock.Config) { c.Sequences[1].Steps[0] = "/k/a2" }, true},
		{"knock page is a step", func(c *knock.Config) { c.Sequences[0].KnockPage = "/k/a3" }, true},
		{"knock page shared", func(c *knock.Config) { c.Sequences[1].KnockPage = "/k/open" }, true},
		{"zero timeout", func(c *knock.Config) { c.Sequences[0].Timeout = 0 }, true},
		{"negative timeout", func(c *knock.Config) { c.Sequences[1].Timeout = -time.Second }, true},
		{"zero window", func(c *knock.Config) { c.Sequences[0].Window = 0 }, true},
		{"no step status", func(c *knock.Config) { c.Sequences[0].StepStatus = nil }, true},
		{"no methods", func(c *knock.Config) { c.Sequences[0].Methods = nil }, true},
		{"lower-case method", func(c *knock.Config) { c.Sequences[0].Methods = []string{"get"} }, true},
		{"name twice", func(c *knock.Config) { c.Sequences[1].Name = "ssh" }, true},
		{"lockout without period", func(c *knock.Config) { c.Lockout.Period = 0 }, true},
		{"lockout without duration", func(c *knock.Config) { c.Lockout.Duration = -time.Second }, true},
		{"negative failures", func(c *knock.Config) { c.Lockout.Failures = -1 }, true},
		{"negative max clients", func(c *knock.Config) { c.MaxClients = -1 }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			tt.cfg(&cfg)
			tr, err := knock.New(cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("New() error = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && tr == nil {
				t.Fatalf("New() = nil, nil")
			}
		})
	}
}

func TestNewCopiesConfig(t *testing.T) {
	cfg := testConfig()
	tr := mustNew(t, cfg)
	cfg.Sequences[0].Steps[0] = "/changed"
	cfg.Sequences[0].Ports[0] = "changed"
	if got, want := applyAll(tr, sshKnock(c1, 0)), sshKnockEvents(c1, 0); !equal(got, want) {
		t.Errorf("Apply(knock) after the caller changed its config = %s\nwant %s", formatAll(got), formatAll(want))
	}
}

func TestNeedles(t *testing.T) {
	tr := mustNew(t, testConfig())
	want := []string{"/k/a1", "/k/a2", "/k/a3", "/k/open", "/w/b1", "/w/b2", "/w/open"}
	if got := tr.Needles(); !slices.Equal(got, want) {
		t.Errorf("Needles() = %q, want %q", got, want)
	}
}

func TestKindString(t *testing.T) {
	tests := []struct {
		kind knock.Kind
		want string
	}{
		{knock.KindStep, "step"}, {knock.KindReset, "reset"}, {knock.KindTimeout, "timeout"},
		{knock.KindGrant, "grant"}, {knock.KindLockout, "lockout"}, {knock.KindReused, "reused"}, {0, "kind(0)"}, {42, "kind(42)"},
	}
	for _, tt := range tests {
		if got := tt.kind.String(); got != tt.want {
			t.Errorf("Kind(%d).String() = %q, want %q", uint8(tt.kind), got, tt.want)
		}
	}
}
