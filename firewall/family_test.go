package firewall

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestFamiliesIndependent: each family has its own worker: while iptables
// hangs, and after it is suspended, grants to IPv6 clients go through, and
// Health says what is wrong with IPv4.
func TestFamiliesIndependent(t *testing.T) {
	e := newEnv(t)
	e.delays = defaultDelays
	f := e.open(e.options())
	exited, tell := signal()
	f.rt(ipv4).exited = tell
	answer := make(chan struct{}) // closed: iptables answers again
	hung := hangInsertsUntil(e.v4, answer)
	until := t0.Add(time.Hour)
	// grant6 grants to an IPv6 client, within a real-time bound: it must
	// not wait for IPv4.
	grant6 := func(ip string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx0, 10*time.Second)
		defer cancel()
		if _, err := f.Firewall.Grant(ctx, Grant{IP: mustAddr(ip), Sequence: "ssh", Ports: []Port{ssh}, Until: until}); err != nil {
			t.Fatalf("IPv6 grant to %s = %v", ip, err)
		}
	}
	deadline := time.After(10 * time.Second)
	wait := func(ch <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no %s", what)
		}
	}
	// kill ends the hung call: the clock jumps past its deadline while the
	// IPv6 worker is between events.
	kill := func() {
		t.Helper()
		for len(e.clk.added) > 0 {
			<-e.clk.added
		}
		f.advance(e.clk, f.o.CallTimeout, ipv6)
		wait(exited, "exit of the killed call")
	}

	v4 := make(chan error, 1)
	go func() { v4 <- f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: until}) }()
	wait(hung, "hung insert")
	if h := f.Health(); !h.InSync || len(h.Problems) != 0 {
		t.Errorf("Health while a call has just started = %+v, want in sync", h)
	}
	e.clk.Jump(slowCall) // the wall clock only: the call's deadline is not reached
	if h := f.Health(); h.InSync || !slices.Contains(h.Problems, "IPv4: iptables has not answered for 3s") {
		t.Errorf("Health while a call hangs = %v, %q; want IPv4 named", h.InSync, h.Problems)
	}
	grant6("2001:db8::1")
	kill()
	if h := f.Health(); h.InSync || !slices.Contains(h.Problems, "IPv4: iptables did not answer in time; the call was killed") {
		t.Errorf("Health after a killed call = %v, %q; want IPv4 named", h.InSync, h.Problems)
	}
	// backoff waits out the retrier's backoff before attempt n+1.
	backoff := func(n int) {
		t.Helper()
		for d := time.Duration(0); d != defaultDelays[n-1]; {
			select {
			case d = <-e.clk.added:
			case <-deadline:
				t.Fatal("no backoff")
			}
		}
		f.advance(e.clk, defaultDelays[n-1], ipv6)
	}
	backoff(1)
	wait(hung, "second hung insert")
	grant6("2001:db8::2")
	kill()
	backoff(2) // the third attempt is refused: suspended
	select {
	case err := <-v4:
		if !errors.Is(err, ErrPending) || !errors.Is(err, errSuspended) {
			t.Fatalf("IPv4 grant = %v, want it pending, iptables suspended", err)
		}
	case <-deadline:
		t.Fatal("the IPv4 grant did not return")
	}
	if err := f.grant(Grant{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: until}); !errors.Is(err, ErrPending) || !errors.Is(err, errSuspended) {
		t.Errorf("IPv4 grant while suspended = %v, want it pending", err)
	}
	grant6("2001:db8::3")

	h := f.Health()
	for _, p := range []string{"IPv4: iptables calls time out; suspended", "IPv4: 2 grants waiting to be applied"} {
		if !slices.Contains(h.Problems, p) {
			t.Errorf("Health().Problems = %q, want %q", h.Problems, p)
		}
	}
	if h.InSync || !h.Suspended || h.PendingGrants != 2 || slices.ContainsFunc(h.Problems, func(p string) bool { return p[:4] == "IPv6" }) {
		t.Errorf("Health() = %+v, want IPv4 suspended with 2 pending grants, IPv6 fine", h)
	}
	if gs := f.Grants(); len(gs) != 3 || slices.ContainsFunc(gs, func(g Grant) bool { return g.IP.Is4() }) {
		t.Errorf("Grants() = %v, want the three IPv6 grants", gs)
	}
	if c := e.chain(ipv6); len(c) != 5 {
		t.Errorf("IPv6 chain %q, want the three grants", c)
	}

	// iptables answers again: the pending grants are applied. A retry of
	// them may be hung already: it returns now, applied, rather than
	// when the clock passes its deadline, which nothing would advance.
	close(answer)
	e.v4.setFail(nil)
	f.checkUntil(t, e.clk, "the IPv4 grants", func() bool { return len(f.Grants()) == 5 && f.Health().InSync })
	if c := e.chain(ipv4); len(c) != 4 {
		t.Errorf("IPv4 chain %q, want both grants", c)
	}
}

// TestRestoreFailsPending: a grant element that the integrity check cannot
// restore makes the grant wait and be retried, as a grant that could not be
// applied does; it is not dropped.
func TestRestoreFailsPending(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	until := t0.Add(time.Hour)
	if err := f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: until}); err != nil {
		t.Fatal(err)
	}
	want := e.chain(ipv4)
	failing := e.failGrantInserts()
	e.flushSets(ipv4)
	f.checkOnce(t, e.clk)
	if h := f.Health(); h.PendingGrants != 1 || len(f.Grants()) != 0 || h.InSync {
		t.Fatalf("Health() = %+v, Grants() = %v; want the grant pending", h, f.Grants())
	}
	failing.Store(false)
	f.advance(e.clk, pendFirst)
	f.waitFor(t, "the grant applied again", func() bool { return len(f.Grants()) == 1 })
	if d := diffLines(e.chain(ipv4), want); d != "" {
		t.Error(d)
	}
}

// TestFamilyLogValue: the family reads the same in JSON logs as in text.
func TestFamilyLogValue(t *testing.T) {
	var b syncBuffer
	slog.New(slog.NewJSONHandler(&b, nil)).Info("x", keyFamily, ipv6)
	if !strings.Contains(b.String(), `"family":"IPv6"`) {
		t.Errorf("log %s, want the family by name", b.String())
	}
}

// hangInsertsUntil makes every set insert hang until its call is killed,
// or, once answer is closed, return at once, applied.
func hangInsertsUntil(m *memTables, answer <-chan struct{}) <-chan struct{} {
	hung, tell := signal()
	m.setFailCtx(func(ctx context.Context, op, _ string, _ []string) error {
		if op != "ipset-add" {
			return nil
		}
		select {
		case <-answer:
			return nil
		default:
		}
		tell()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-answer:
			return nil
		}
	})
	return hung
}
