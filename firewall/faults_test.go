package firewall

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webknock/webknock/internal/statedir"
)

// drive runs op on a goroutine of its own and moves the fake clock for it:
// past the call timeout each time a call hangs (a receive on hung), then,
// if exited is not nil, waits for the abandoned call to return; and over
// each backoff the retrier waits. It returns the backoffs and op's error.
func (e *env) drive(f *fw, hung, exited <-chan struct{}, op func() error) ([]time.Duration, error) {
	e.t.Helper()
	for len(e.clk.added) > 0 {
		<-e.clk.added
	}
	done := make(chan error, 1)
	go func() { done <- op() }()
	var waits []time.Duration
	deadline := time.After(10 * time.Second)
	for {
		select {
		case <-hung:
			e.clk.Advance(f.o.CallTimeout)
			if exited != nil {
				select {
				case <-exited:
				case <-deadline:
					e.t.Fatal("the abandoned call did not return")
				}
			}
		case d := <-e.clk.added:
			if slices.Contains(defaultDelays, d) {
				waits = append(waits, d)
				e.clk.Advance(d)
			}
		case err := <-done:
			return waits, err
		case <-deadline:
			e.t.Fatal("the operation did not return")
		}
	}
}

// signal returns a channel and a function that sends on it without blocking.
func signal() (chan struct{}, func()) {
	ch := make(chan struct{}, 16)
	return ch, func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// hangInserts makes the first n inserts hang until killed. With applied,
// a killed insert still changes the chain, as an iptables killed after its
// commit would. It returns the channel told when an insert hangs.
func hangInserts(m *memTables, n int, applied bool) <-chan struct{} {
	hung, tell := signal()
	var mu sync.Mutex
	m.setFailCtx(func(ctx context.Context, op, _ string, _ []string) error {
		mu.Lock()
		hang := op == "ipset-add" && n > 0
		if hang {
			n--
		}
		mu.Unlock()
		if !hang {
			return nil
		}
		tell()
		<-ctx.Done()
		if applied {
			return nil
		}
		return ctx.Err()
	})
	return hung
}

// TestHungCall: a call that hangs is killed after CallTimeout, counted, and
// retried; the grant is applied once, even when the killed call had been.
func TestHungCall(t *testing.T) {
	for _, applied := range []bool{false, true} {
		t.Run(fmt.Sprintf("applied=%v", applied), func(t *testing.T) {
			e := newEnv(t)
			e.delays = defaultDelays
			f := e.openV4(e.options())
			exited, tell := signal()
			f.rt(ipv4).exited = tell
			hung := hangInserts(e.v4, 1, applied)
			until := t0.Add(time.Hour)
			waits, err := e.drive(f, hung, exited, func() error {
				return f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: until})
			})
			if err != nil {
				t.Fatalf("Grant = %v", err)
			}
			if !slices.Equal(waits, defaultDelays[:1]) {
				t.Errorf("backoff waits %v, want %v", waits, defaultDelays[:1])
			}
			if d := diffLines(e.chain(ipv4), e.chainOnly(grantLine("192.0.2.1/32", ssh, "ssh", until))); d != "" {
				t.Error(d)
			}
			h := f.Health()
			if h.TimedOut != 1 || h.Failures != 1 || h.Stuck != 0 || h.Suspended || !h.InSync {
				t.Errorf("Health() = %+v, want one timeout, nothing stuck, in sync", h)
			}
			if !strings.Contains(e.log.String(), `msg="iptables call failed" family=IPv4 op=add attempt=1`) {
				t.Errorf("log lacks the failed call:\n%s", e.log)
			}
		})
	}
}

// TestHungCallsSuspend: after two calls in a row hang, calls are suspended
// for a call timeout: the worker goes on, failing fast, and nothing claims
// a grant the kernel does not hold.
func TestHungCallsSuspend(t *testing.T) {
	e := newEnv(t)
	e.delays = defaultDelays
	o := e.options()
	// Checks well within the suspension and the pending grants' retries,
	// so that each step of the clock wakes one of them at a time.
	o.CheckInterval = 3 * time.Second
	f := e.openV4(o)
	exited, tell := signal()
	f.rt(ipv4).exited = tell
	hung := hangInserts(e.v4, 1000, false)
	waits, err := e.drive(f, hung, exited, func() error {
		return f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
	})
	if !errors.Is(err, errSuspended) || !errors.Is(err, ErrPending) || !strings.Contains(err.Error(), "add 192.0.2.1,tcp:22") {
		t.Fatalf("Grant = %v, want the add suspended, the grant pending", err)
	}
	if !slices.Equal(waits, defaultDelays) {
		t.Errorf("backoff waits %v, want %v", waits, defaultDelays)
	}
	h := f.Health()
	if !h.Suspended || h.InSync || h.TimedOut != 2 || h.PendingGrants != 1 || len(f.Grants()) != 0 || len(e.chain(ipv4)) != 2 {
		t.Errorf("Health() = %+v, Grants() = %v, chain %q; want suspended, no grant", h, f.Grants(), e.chain(ipv4))
	}

	// While suspended, a grant fails at once, without running iptables.
	e.v4.setFail(func(op, _ string, _ []string) error {
		t.Errorf("%s called while suspended", op)
		return nil
	})
	if err := f.grant(Grant{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}); !errors.Is(err, errSuspended) || !errors.Is(err, ErrPending) {
		t.Errorf("Grant while suspended = %v, want errSuspended, ErrPending", err)
	}

	// A call timeout later iptables is called again; it answers, and the
	// pending grants are applied.
	e.v4.setFail(nil)
	e.clk.Advance(f.o.CallTimeout)
	f.checkUntil(t, e.clk, "the firewall to be in sync again", func() bool { return f.Health().InSync })
	if gs := f.Grants(); len(gs) != 2 || len(e.chain(ipv4)) != 4 {
		t.Errorf("after the suspension: Grants() = %v, chain %q; want both pending grants applied", gs, e.chain(ipv4))
	}
	if err := f.grant(Grant{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(2 * time.Hour)}); err != nil {
		t.Errorf("Grant after the suspension = %v", err)
	}
	if !strings.Contains(e.log.String(), "iptables hangs; no call until a timeout has passed") {
		t.Errorf("log lacks the suspension:\n%s", e.log)
	}
}

// TestStuckCalls: a killed call whose process does not exit holds a
// goroutine; at maxStuck of them no call is made, and Health says so. The
// rule it may still write is deleted once it exits.
func TestStuckCalls(t *testing.T) {
	e := newEnv(t)
	e.delays = defaultDelays
	f := e.openV4(e.options())
	f.rt(ipv4).maxStuck = 1
	exited, tell := signal()
	f.rt(ipv4).exited = tell
	hung, hangs := signal()
	release := make(chan struct{})
	var once sync.Once
	e.v4.setFailCtx(func(ctx context.Context, op, _ string, _ []string) error {
		if op != "ipset-add" {
			return nil
		}
		first := false
		once.Do(func() { first = true })
		if first {
			hangs()
			<-release // deaf to the kill; then applied
		}
		return nil
	})
	_, err := e.drive(f, hung, nil, func() error {
		return f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
	})
	if !errors.Is(err, errStuck) || !errors.Is(err, ErrPending) {
		t.Fatalf("Grant = %v, want errStuck, ErrPending", err)
	}
	if h := f.Health(); h.Stuck != 1 || h.InSync || h.Pending != 1 || h.PendingGrants != 1 {
		t.Errorf("Health() = %+v, want one stuck call, a pending delete, a pending grant", h)
	}
	if gs := f.Grants(); len(gs) != 0 {
		t.Errorf("Grants() = %v after a stuck grant", gs)
	}
	close(release)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the stuck call did not return")
	}
	if h := f.Health(); h.Stuck != 0 {
		t.Errorf("Health().Stuck = %d after the call returned", h.Stuck)
	}
	// What the stuck call wrote late is deleted by the retried delete, and
	// the grant retried: in the end the rule is there once.
	e.clk.Advance(doomFirst)
	f.waitFor(t, "the grant to be applied", func() bool { h := f.Health(); return h.Pending == 0 && h.PendingGrants == 0 })
	f.checkUntil(t, e.clk, "in sync", func() bool { return f.Health().InSync })
	if c := e.chain(ipv4); len(c) != 3 || len(f.Grants()) != 1 {
		t.Errorf("chain %q, Grants() %v; want the grant once", c, f.Grants())
	}
}

// TestLockHeld: a call that finds the xtables lock held is retried with
// backoff and counted apart. Turning protect on appends the tail's rules
// with iptables.
func TestLockHeld(t *testing.T) {
	e := newEnv(t)
	e.delays = defaultDelays
	o := e.options()
	o.Ports = []Port{ssh}
	f := e.openV4(o)
	var mu sync.Mutex
	left := 2
	e.v4.setFail(func(op, _ string, _ []string) error {
		mu.Lock()
		defer mu.Unlock()
		if op == "append" && left > 0 {
			left--
			return &execError{cmd: "iptables -w 5 -t filter -A WEBKNOCK ...", status: 4,
				stderr: "Another app is currently holding the xtables lock. Stopped waiting after 5s.", kind: errLocked}
		}
		return nil
	})
	o.Protect = true
	waits, err := e.drive(f, nil, nil, func() error { return f.Reconfigure(ctx0, o) })
	if err != nil {
		t.Fatalf("Reconfigure = %v", err)
	}
	if !slices.Equal(waits, defaultDelays) {
		t.Errorf("backoff waits %v, want %v", waits, defaultDelays)
	}
	if h := f.Health(); h.LockBusy != 2 || h.Failures != 2 || !h.InSync {
		t.Errorf("Health() = %+v, want 2 lock failures", h)
	}
	if c := e.chain(ipv4); len(c) != 2+len(protectLines(ssh)) {
		t.Errorf("chain %q, want the protect rules", c)
	}
}

// TestRevokeRetriedUntilDone: a revoke whose delete keeps failing is
// retried with a growing backoff until the rule is gone; the integrity
// check leaves the pending rule to it.
func TestRevokeRetriedUntilDone(t *testing.T) {
	e := newEnv(t)
	f := e.open(protectOptions(e))
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
	deletes, tell := signal()
	var mu sync.Mutex
	fails := 4
	e.v4.setFail(func(op, _ string, spec []string) error {
		if op != "ipset-del" {
			return nil
		}
		tell()
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			return errors.New("resource busy")
		}
		return nil
	})
	if err := f.revoke(c1); err == nil {
		t.Fatal("Revoke with failing deletes = nil, want an error")
	}
	<-deletes
	if h := f.Health(); h.Pending != 1 || h.InSync || len(f.Grants()) != 0 || len(e.readState()) != 0 {
		t.Fatalf("after Revoke: Health() = %+v, Grants() = %v, want one pending delete and no grant", h, f.Grants())
	}
	for i, wait := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
		f.advance(e.clk, wait)
		select {
		case <-deletes:
		case <-time.After(10 * time.Second):
			t.Fatalf("retry %d did not come after %v", i+1, wait)
		}
	}
	f.waitFor(t, "the rule to be deleted", func() bool { return f.Health().Pending == 0 })
	if c := e.chain(ipv4); strings.Contains(strings.Join(c, "\n"), "192.0.2.1") {
		t.Errorf("chain %q, want the protect tail only", c)
	}
	f.advance(e.clk, f.o.CheckInterval)
	f.waitFor(t, "in sync", func() bool { return f.Health().InSync })
	for _, s := range []string{"left-over rule deleted"} {
		if !strings.Contains(e.log.String(), s) {
			t.Errorf("log lacks %q:\n%s", s, e.log)
		}
	}
	if strings.Contains(e.log.String(), "firewall repaired") {
		t.Errorf("the check repaired a rule whose delete was pending:\n%s", e.log)
	}
}

// flushChain empties a chain, as `iptables -F` does.
func (m *memTables) flushChain(chain string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.chains[chain].rules = nil
}

// TestIntegrityCheck: what others do to our chains is repaired within one
// check interval, live grants included.
func TestIntegrityCheck(t *testing.T) {
	deleteJump := func(e *env, fam family) { e.deleteJumps(fam) }
	tests := []struct {
		name   string
		tamper func(e *env)
		fixed  []string // in the log, for IPv4
		fams   int      // families repaired
	}{
		{"flush chain", func(e *env) { e.v4.flushChain("WEBKNOCK") },
			[]string{"ownership marker restored", "2 set rules restored", "protect rules restored"}, 1},
		{"delete jump", func(e *env) { deleteJump(e, ipv4) }, []string{"jump restored"}, 1},
		{"delete chain", func(e *env) {
			deleteJump(e, ipv4)
			if err := e.v4.ClearAndDeleteChain(ctx0, table, "WEBKNOCK"); err != nil {
				e.t.Fatal(err)
			}
		}, []string{"chain recreated", "2 set rules restored", "protect rules restored", "jump restored"}, 1},
		{"reload of both families", func(e *env) {
			for _, fam := range families {
				deleteJump(e, fam)
				if err := e.tabs(fam).ClearAndDeleteChain(ctx0, table, "WEBKNOCK"); err != nil {
					e.t.Fatal(err)
				}
			}
		}, []string{"chain recreated", "jump restored"}, 2},
		{"one grant element deleted", func(e *env) {
			if err := e.v4.remove(ctx0, "WEBKNOCK-g4", []ipsetElem{{src: host(c1), port: ssh}}); err != nil {
				e.t.Fatal(err)
			}
		}, []string{"1 grant rules restored"}, 1},
		{"grant set flushed", func(e *env) { e.flushSets(ipv4) }, []string{"2 grant rules restored"}, 1},
		{"foreign element added", func(e *env) {
			if err := e.v4.put(ctx0, "WEBKNOCK-g4", []ipsetElem{{src: host(mustAddr("203.0.113.9")), port: ssh, timeout: 60}}); err != nil {
				e.t.Fatal(err)
			}
		}, []string{"1 unexpected rules deleted"}, 1},
		{"rule appended after the tail", func(e *env) { e.plant(ipv4, "WEBKNOCK", "-s 203.0.113.9/32 -j ACCEPT") },
			[]string{"protect rules restored"}, 1},
		{"rule inserted", func(e *env) {
			if err := e.v4.Insert(ctx0, table, "WEBKNOCK", 1, "-s", "203.0.113.9/32", "-j", "ACCEPT"); err != nil {
				e.t.Fatal(err)
			}
		}, []string{"1 unexpected rules deleted"}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			f := e.open(protectOptions(e))
			until := t0.Add(time.Hour)
			f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh, dns}, Until: until})
			f.grant(Grant{IP: c6, Sequence: "ssh", Ports: []Port{ssh}, Until: until})
			var want [2][]string
			var input [2][]string
			for _, fam := range families {
				want[fam] = e.chain(fam)
				input[fam], _ = e.tabs(fam).List(ctx0, table, "INPUT")
			}
			tc.tamper(e)
			f.advance(e.clk, f.o.CheckInterval)
			f.waitFor(t, "the repair", func() bool { h := f.Health(); return h.Repairs == uint64(tc.fams) && h.Checked.Equal(e.clk.Now()) })
			for _, fam := range families {
				if d := diffLines(e.chain(fam), want[fam]); d != "" {
					t.Errorf("%v: %s", fam, d)
				}
				if in, _ := e.tabs(fam).List(ctx0, table, "INPUT"); !slices.Equal(in, input[fam]) {
					t.Errorf("%v: INPUT %q, want %q", fam, in, input[fam])
				}
			}
			if gaps := dropGaps(e.v4, ssh); tc.name == "rule appended after the tail" && len(gaps) > 0 {
				t.Errorf("the drop was missing after: %+v", gaps)
			}
			log := e.log.String()
			i := strings.Index(log, `msg="firewall repaired" family=IPv4`)
			if i < 0 {
				t.Fatalf("log lacks the IPv4 repair:\n%s", log)
			}
			line, _, _ := strings.Cut(log[i:], "\n")
			for _, s := range tc.fixed {
				if !strings.Contains(line, s) {
					t.Errorf("repair line lacks %q: %s", s, line)
				}
			}
			// Repaired: the next checks find nothing to do.
			n := len(e.v4.snapshots("")) + len(e.v6.snapshots(""))
			now := e.clk.Now()
			f.checkUntil(t, e.clk, "the next checks", func() bool { return f.Health().Checked.After(now.Add(f.o.CheckInterval)) })
			if m := len(e.v4.snapshots("")) + len(e.v6.snapshots("")); m != n {
				t.Errorf("the check after the repair changed the tables %d times", m-n)
			}
			if h := f.Health(); !h.InSync || h.Repairs != uint64(tc.fams) {
				t.Errorf("Health() = %+v", h)
			}
		})
	}
}

// TestCheckCost: a check of intact chains lists the hook and our chain of
// each family and reads the headers of our grant sets, and runs nothing
// else; one check in fullListEvery lists the sets whole.
func TestCheckCost(t *testing.T) {
	e := newEnv(t)
	f := e.open(protectOptions(e))
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
	var mu sync.Mutex
	var calls [2][]string
	for _, fam := range families {
		e.tabs(fam).setFail(func(op, chain string, _ []string) error {
			mu.Lock()
			defer mu.Unlock()
			calls[fam] = append(calls[fam], op+" "+chain)
			return nil
		})
	}
	whole := [2]int{}
	for i := 1; i <= fullListEvery; i++ {
		f.advance(e.clk, f.o.CheckInterval)
		f.waitFor(t, "the check", func() bool { return f.Health().Checked.Equal(e.clk.Now()) })
		for _, fam := range families {
			mu.Lock()
			got := calls[fam]
			calls[fam] = nil
			mu.Unlock()
			v := map[family]string{ipv4: "4", ipv6: "6"}[fam]
			counted := []string{"list INPUT", "list WEBKNOCK", "ipset-count WEBKNOCK-g" + v, "ipset-count WEBKNOCK-n" + v}
			listed := []string{"list INPUT", "list WEBKNOCK", "ipset-list WEBKNOCK-g" + v, "ipset-list WEBKNOCK-n" + v}
			switch {
			case slices.Equal(got, listed):
				whole[fam]++
			case !slices.Equal(got, counted):
				t.Errorf("check %d ran %q on %v, want %q (or, once, %q)", i, got, fam, counted, listed)
			}
		}
	}
	if whole != [2]int{1, 1} {
		t.Errorf("checks that listed the sets whole: %v in %d, want one per family", whole, fullListEvery)
	}
}

// TestCheckFailure: a check that cannot list is reported once, in the log
// and in Health, and recovers.
func TestCheckFailure(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	e.v6.setFail(func(op, _ string, _ []string) error {
		if op == "list" {
			return errors.New("netlink: permission denied")
		}
		return nil
	})
	for range 2 {
		f.checkOnce(t, e.clk)
		if h := f.Health(); !strings.Contains(h.LastError, "permission denied") || !slices.Contains(h.Problems, "IPv6: integrity check failed") {
			t.Fatalf("Health() = %+v, want the check failed", h)
		}
	}
	if h := f.Health(); h.InSync || h.Checked != t0 {
		t.Errorf("Health() = %+v, want out of sync, last checked at Open", h)
	}
	if n := strings.Count(e.log.String(), "firewall check failed"); n != 1 {
		t.Errorf("check failure logged %d times, want once:\n%s", n, e.log)
	}
	e.v6.setFail(nil)
	f.advance(e.clk, f.o.CheckInterval)
	f.waitFor(t, "the check to pass", func() bool { return f.Health().InSync })
	if h := f.Health(); h.LastError != "" {
		t.Errorf("Health().LastError = %q after a passing check", h.LastError)
	}
	if !strings.Contains(e.log.String(), "firewall check passes again") {
		t.Errorf("log lacks the recovery:\n%s", e.log)
	}
}

// TestGrantRepairsMissingChain: a grant whose set is gone repairs it
// first, instead of failing until the next check; a chain deleted behind
// its back (the grant itself goes into the set) is restored by the check.
func TestGrantRepairsMissingChain(t *testing.T) {
	e := newEnv(t)
	f := e.open(protectOptions(e))
	e.deleteJumps(ipv4)
	e.v4.ClearAndDeleteChain(ctx0, table, "WEBKNOCK")
	for _, name := range []string{"WEBKNOCK-g4", "WEBKNOCK-n4"} {
		if err := e.v4.destroy(ctx0, name); err != nil {
			t.Fatal(err)
		}
	}
	until := t0.Add(time.Hour)
	if err := f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: until}); err != nil {
		t.Fatalf("Grant = %v", err)
	}
	f.checkOnce(t, e.clk)
	if c := e.chain(ipv4); len(c) != 2+1+len(tail4(protectOptions(e))) || c[2] != grantLine("192.0.2.1/32", ssh, "ssh", until) {
		t.Errorf("chain %q, want the grant and the tail", c)
	}
	if in, _ := e.v4.List(ctx0, table, "INPUT"); !slices.Contains(in, "-A INPUT -p tcp -m multiport --dports 22 -j WEBKNOCK") {
		t.Errorf("INPUT %q lacks the jump", in)
	}
}

// TestWallClockJump: the wall clock set back does not cut a window, set
// forward it does not stretch one past the next check.
func TestWallClockJump(t *testing.T) {
	t.Run("back", func(t *testing.T) {
		e := newEnv(t)
		f := e.open(e.options())
		until := t0.Add(10 * time.Minute)
		f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: until})
		for len(e.clk.added) > 0 {
			<-e.clk.added
		}
		e.clk.Jump(-5 * time.Minute)
		f.advance(e.clk, 10*time.Minute) // the timer set for until fires at until - 5m
		deadline := time.After(10 * time.Second)
		for rearmed := false; !rearmed; {
			select {
			case d := <-e.clk.added:
				rearmed = d == 5*time.Minute
			case <-deadline:
				t.Fatal("the worker did not wait again for the 5 minutes left")
			}
		}
		if gs := f.Grants(); len(gs) != 1 || len(e.chain(ipv4)) != 3 {
			t.Fatalf("5 minutes before until: Grants() = %v, chain %q", gs, e.chain(ipv4))
		}
		f.advance(e.clk, 5*time.Minute)
		f.waitFor(t, "the grant to end", func() bool { return len(f.Grants()) == 0 && len(e.chain(ipv4)) == 2 })
	})
	t.Run("forward", func(t *testing.T) {
		e := newEnv(t)
		f := e.open(e.options())
		f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(10 * time.Minute)})
		e.clk.Jump(20 * time.Minute) // no timer fires
		f.advance(e.clk, f.o.CheckInterval)
		f.waitFor(t, "the check to end the grant", func() bool { return len(f.Grants()) == 0 && len(e.chain(ipv4)) == 2 })
		if !strings.Contains(e.log.String(), `msg="grant removed" ip=192.0.2.1 sequence=ssh until=2026-11-22T19:11:34.000Z reason=expired`) {
			t.Errorf("log lacks the removal:\n%s", e.log)
		}
	})
	t.Run("back, pending delete", func(t *testing.T) {
		e := newEnv(t)
		f := e.open(e.options())
		f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
		e.v4.setFail(func(op, _ string, _ []string) error {
			if op == "ipset-del" {
				return errors.New("busy")
			}
			return nil
		})
		f.revoke(c1)
		e.v4.setFail(nil)
		e.clk.Jump(-time.Hour) // the retry is not put off by an hour
		f.advance(e.clk, doomFirst)
		f.waitFor(t, "the retried delete", func() bool { return f.Health().Pending == 0 && len(e.chain(ipv4)) == 2 })
	})
}

// TestTableBound: beyond MaxGrants a new grant is refused, counted and
// logged; live grants are never evicted, and extending one still works.
func TestTableBound(t *testing.T) {
	e := newEnv(t)
	o := e.options()
	o.MaxGrants = 2
	f := e.open(o)
	until := t0.Add(10 * time.Minute)
	for _, ip := range []string{"192.0.2.1", "192.0.2.2"} {
		if err := f.grant(Grant{IP: mustAddr(ip), Sequence: "ssh", Ports: []Port{ssh}, Until: until}); err != nil {
			t.Fatal(err)
		}
	}
	err := f.grant(Grant{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: until})
	if !errors.Is(err, ErrTableFull) {
		t.Fatalf("third Grant = %v, want ErrTableFull", err)
	}
	if err := f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: until.Add(time.Minute)}); err != nil {
		t.Errorf("extending a grant of a full table = %v", err)
	}
	if gs := f.Grants(); len(gs) != 2 || len(e.chain(ipv4)) != 4 {
		t.Errorf("Grants() = %v, chain %q; want the two first grants", gs, e.chain(ipv4))
	}
	if h := f.Health(); h.Refused != 1 {
		t.Errorf("Health().Refused = %d, want 1", h.Refused)
	}
	if !strings.Contains(e.log.String(), `msg="grant refused: the grant table is full" ip=198.51.100.2`) {
		t.Errorf("log lacks the refusal:\n%s", e.log)
	}
	if err := f.revoke(c1); err != nil {
		t.Fatal(err)
	}
	if err := f.grant(Grant{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: until}); err != nil {
		t.Errorf("Grant after a revoke made room = %v", err)
	}
}

// TestLeftoverTempState: the temporary file of a write that was killed is
// removed at start and never read.
func TestLeftoverTempState(t *testing.T) {
	e := newEnv(t)
	until := t0.Add(10 * time.Minute)
	e.writeState(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: until})
	tmp := filepath.Join(e.dir, stateFile+".tmp123456")
	if err := os.WriteFile(tmp, []byte(`{"version": 1, "grants": [{"ip": "203.0.113.`), 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(e.dir, "positions.json")
	os.WriteFile(other, []byte("{}"), 0o600)
	f := e.open(e.options())
	if fileExists(tmp) || !fileExists(other) {
		t.Errorf("after Open: temp file there %v, other file there %v; want only the other", fileExists(tmp), fileExists(other))
	}
	if gs := f.Grants(); len(gs) != 1 || gs[0].IP != c1 {
		t.Errorf("Grants() = %v, want the state file's", gs)
	}
	if !strings.Contains(e.log.String(), "temporary state file of an interrupted write removed") {
		t.Errorf("log lacks the removal:\n%s", e.log)
	}
}

// stateWriterEnv makes the test binary a process that writes the state file
// in a loop, printing a line after each write, until it is killed.
const stateWriterEnv = "WK_FW_STATE_WRITER"

// TestStateKill9: kill -9 at any moment of a write leaves a state file that
// reads whole, the old one or the new one, and temporary files that the
// next start removes.
func TestStateKill9(t *testing.T) {
	if dir := os.Getenv(stateWriterEnv); dir != "" {
		writeStateForever(dir)
		return
	}
	dir := t.TempDir()
	path := filepath.Join(dir, stateFile)
	last := -1
	for round := range 20 {
		cmd := execSelf(t, "^TestStateKill9$", stateWriterEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1)
		lines := 0
		for lines < 1+round%7 { // a different moment each round
			if _, err := out.Read(buf); err != nil {
				t.Fatalf("round %d: the writer stopped: %v", round, err)
			}
			if buf[0] == '\n' {
				lines++
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
		doc, err := readState(path)
		gs := doc.Grants
		if err != nil {
			t.Fatalf("round %d: after kill -9: %v", round, err)
		}
		if n := len(gs); n < 1 || n > 50 {
			t.Fatalf("round %d: %d grants", round, n)
		}
		last = len(gs)
	}
	t.Logf("temporary files of killed writes: %d", len(statedir.RemoveTemps(path)))
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %v after RemoveTemps, want the state file only", entries)
	}
	t.Logf("the last file read whole held %d grants", last)
}

func writeStateForever(dir string) {
	path := filepath.Join(dir, stateFile)
	for i := 0; ; i++ {
		var gs []Grant
		for j := range 1 + i%50 {
			gs = append(gs, Grant{IP: mustAddr(fmt.Sprintf("192.0.2.%d", j+1)), Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
		}
		if err := writeState(path, stateDoc{Grants: gs}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(i)
	}
}

func TestCheckWait(t *testing.T) {
	f := &Firewall{o: Options{CheckInterval: 3 * time.Second}}
	tests := []struct{ took, want time.Duration }{
		{0, 3 * time.Second},
		{4 * time.Millisecond, 3 * time.Second},
		{300 * time.Millisecond, 3 * time.Second},
		{time.Second, 10 * time.Second},
		{time.Hour, maxCheckWait},
	}
	for _, tc := range tests {
		if got := f.checkWait(tc.took); got != tc.want {
			t.Errorf("checkWait(%v) = %v, want %v", tc.took, got, tc.want)
		}
	}
}
