package firewall

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// defaultDelays are the waits between the attempts of an iptables call.
var defaultDelays = []time.Duration{50 * time.Millisecond, 200 * time.Millisecond}

// A rule whose delete failed is retried after doomFirst, doubling up to
// doomMax: the kernel's time match has already made it harmless, or soon will.
const (
	doomFirst = time.Second
	doomMax   = time.Minute
)

// Bounds on calls that hang.
const (
	// maxStuck abandoned calls whose iptables has not exited yet (a
	// process that ignores SIGKILL, in the kernel) make every further call
	// fail at once: each holds a goroutine.
	maxStuck = 4
	// After hangsToSuspend calls in a row ran out of time, no call is made
	// for one call timeout: the worker goes on instead of waiting out each
	// rule's attempts.
	hangsToSuspend = 2
)

var (
	errTimeout   = errors.New("iptables did not answer in time; killed")
	errStuck     = errors.New("too many killed iptables calls have not exited")
	errSuspended = errors.New("iptables calls suspended: the last ones hung")
)

// retrier runs iptables calls: each under a deadline, retried with
// backoff, counted.
type retrier struct {
	clock    Clock
	log      *slog.Logger
	delays   []time.Duration
	timeout  time.Duration   // an attempt that takes longer is abandoned
	maxStuck int             // 0: maxStuck
	stop     <-chan struct{} // nil: never
	exited   func()          // for the tests: called when an abandoned call returns

	failures atomic.Uint64 // attempts that failed, timeouts and refusals included
	timedOut atomic.Uint64
	lockBusy atomic.Uint64
	stuck    atomic.Int64 // abandoned attempts still running

	mu        sync.Mutex
	hangs     int       // attempts in a row that timed out
	suspended time.Time // no call before this
	lastErr   string
}

// do calls fn with attempt 1, 2, ... until it succeeds or the attempts are
// used up; it waits between attempts on the clock. An attempt that runs
// past the timeout is abandoned: its context ends, which kills its
// iptables. errNoChain is an answer and is returned at once.
func (rt *retrier) do(ctx context.Context, op string, fn func(ctx context.Context, attempt int) error) error {
	timedOut := false // an attempt was killed: it may have been applied
	for attempt := 1; ; attempt++ {
		err := rt.attempt(ctx, attempt, fn)
		if timedOut && err != nil && !errors.Is(err, errTimeout) {
			err = fmt.Errorf("%w (an earlier attempt: %w)", err, errTimeout)
		}
		timedOut = timedOut || errors.Is(err, errTimeout)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errNoChain):
			return err
		case ctx.Err() != nil:
			return fmt.Errorf("%w (during: %w)", ctx.Err(), err)
		case errors.Is(err, errClosed):
			return err
		}
		rt.failures.Add(1)
		if errors.Is(err, errLocked) {
			rt.lockBusy.Add(1)
		}
		rt.mu.Lock()
		rt.lastErr = op + ": " + err.Error()
		rt.mu.Unlock()
		if errors.Is(err, errStuck) || errors.Is(err, errSuspended) {
			// Not run: said once, when it began, and by the caller.
			rt.log.Debug("iptables call refused", keyOp, op, keyErr, err)
			return err
		}
		rt.log.Warn("iptables call failed", keyOp, op, keyAttempt, attempt, keyErr, err)
		if attempt > len(rt.delays) {
			return err
		}
		select {
		case <-rt.clock.After(rt.delays[attempt-1]):
		case <-ctx.Done():
			return fmt.Errorf("%w (retry of: %w)", ctx.Err(), err)
		case <-rt.stop:
			return fmt.Errorf("%w (retry of: %w)", errClosed, err)
		}
	}
}

// Whether an attempt's goroutine is running, done or abandoned.
const (
	running int32 = iota
	finished
	abandoned
)

// attempt runs fn once, on a goroutine of its own, and waits for it at
// most rt.timeout.
func (rt *retrier) attempt(ctx context.Context, attempt int, fn func(context.Context, int) error) error {
	limit := rt.maxStuck
	if limit == 0 {
		limit = maxStuck
	}
	if n := rt.stuck.Load(); n >= int64(limit) {
		return fmt.Errorf("%w (%d)", errStuck, n)
	}
	rt.mu.Lock()
	until := rt.suspended
	rt.mu.Unlock()
	if rt.clock.Now().Before(until) {
		return fmt.Errorf("%w; until %s", errSuspended, until.Format(time.RFC3339))
	}
	// The deadline is set before the call starts: a test that sees the
	// call start can advance the clock past it.
	deadline := rt.clock.After(rt.timeout)
	cctx, cancel := context.WithCancel(ctx)
	var state atomic.Int32
	res := make(chan error, 1)
	go func() {
		err := fn(cctx, attempt)
		done := state.CompareAndSwap(running, finished)
		res <- err
		if !done {
			rt.stuck.Add(-1)
			if rt.exited != nil {
				rt.exited()
			}
		}
	}()
	// abandon gives the call up unless it has just finished.
	abandon := func() bool {
		rt.stuck.Add(1)
		if !state.CompareAndSwap(running, abandoned) {
			rt.stuck.Add(-1)
			return false
		}
		cancel()
		return true
	}
	var err error
	select {
	case err = <-res:
	case <-deadline:
		if abandon() {
			rt.timedOut.Add(1)
			rt.hung()
			return fmt.Errorf("%w after %s", errTimeout, rt.timeout)
		}
		err = <-res
	case <-ctx.Done():
		if abandon() {
			return ctx.Err()
		}
		err = <-res
	case <-rt.stop:
		if abandon() {
			return errClosed
		}
		err = <-res
	}
	cancel()
	rt.mu.Lock()
	rt.hangs = 0 // iptables answered, even if with an error
	rt.mu.Unlock()
	return err
}

// hung counts a timed-out attempt and suspends calls after too many.
func (rt *retrier) hung() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.hangs++
	if rt.hangs >= hangsToSuspend {
		rt.suspended = rt.clock.Now().Add(rt.timeout)
		rt.log.Error("iptables hangs; no call until a timeout has passed", keyCount, rt.hangs, keyUntil, rt.suspended)
	}
}

// suspendedNow tells whether calls are suspended.
func (rt *retrier) suspendedNow() bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.clock.Now().Before(rt.suspended)
}

type request struct {
	ctx  context.Context
	fn   func(context.Context) error
	done chan error
}

// do runs fn on the worker and returns its result.
func (f *Firewall) do(ctx context.Context, fn func(context.Context) error) error {
	r := request{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case f.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-f.stop:
		return errClosed
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run is the worker: the one goroutine that changes the chains.
//
// Timers run on the monotonic clock, grants end on the wall clock: a timer
// set for a grant's until can fire early (the wall clock was set back) or
// late (set forward). So each wake compares Clock.Now with until and
// re-arms, and the integrity check, every CheckInterval, also removes the
// grants whose until has passed.
//
// check is the first integrity check's timer, set before the worker starts.
func (f *Firewall) run(check <-chan time.Time) {
	defer close(f.done)
	for {
		var wake <-chan time.Time
		if at, ok := f.nextWake(); ok {
			wake = f.clock.After(at.Sub(f.clock.Now()))
		}
		select {
		case <-f.stop:
			return
		case r := <-f.reqs:
			err := r.ctx.Err()
			if err == nil {
				err = r.fn(r.ctx)
			}
			f.commit()
			r.done <- err
		case <-wake:
			f.tick(f.ctx)
			f.commit()
		case <-check:
			start := f.clock.Now()
			f.check(f.ctx)
			// Armed before the outcome is published: a test that sees it
			// can advance the clock to the next check.
			check = f.clock.After(f.checkWait(f.clock.Now().Sub(start)))
			f.commit()
		}
		if f.idle != nil {
			f.idle()
		}
	}
}

// A check that took long (a chain of many thousand rules) puts the next one
// off: checks take at most 1/checkDuty of the time, and wait no longer
// than maxCheckWait.
const (
	checkDuty    = 10
	maxCheckWait = time.Minute
)

// checkWait is the wait after a check that took took.
func (f *Firewall) checkWait(took time.Duration) time.Duration {
	return max(f.o.CheckInterval, min(checkDuty*took, maxCheckWait))
}

// nextWake is when the next grant ends or the next failed delete is due.
func (f *Firewall) nextWake() (time.Time, bool) {
	var at time.Time
	for _, g := range f.grants {
		if at.IsZero() || g.Until.Before(at) {
			at = g.Until
		}
	}
	now := f.clock.Now()
	for _, d := range f.doomed {
		if d.due(now) {
			return now, true
		}
		if at.IsZero() || d.at.Before(at) {
			at = d.at
		}
	}
	return at, !at.IsZero()
}

// due tells whether the delete is to be retried: its time has come, or is
// further away than any backoff, which means the clock was set back.
func (d doomedRule) due(now time.Time) bool {
	return !d.at.After(now) || d.at.Sub(now) > doomMax
}

// commit writes the state file if it is behind and publishes the view.
func (f *Firewall) commit() {
	gs := f.sorted()
	if f.dirty && f.path != "" {
		if err := saveState(f.path, gs); err != nil {
			f.log.Error("cannot write the state file; retrying at the next change", keyErr, err)
		} else {
			f.dirty = false
		}
	} else if f.path == "" {
		f.dirty = false
	}
	f.mu.Lock()
	f.view = gs
	f.health.Pending = len(f.doomed)
	f.health.InSync = len(f.doomed) == 0 && !f.dirty && !f.unsynced && f.checkErr == nil
	f.health.Checked = f.checked
	f.health.LastError = ""
	if f.checkErr != nil {
		f.health.LastError = f.checkErr.Error()
	}
	f.mu.Unlock()
}

// sorted returns the grants by Until, then IP and Sequence.
func (f *Firewall) sorted() []Grant {
	gs := make([]Grant, 0, len(f.grants))
	for _, g := range f.grants {
		gs = append(gs, g)
	}
	slices.SortFunc(gs, func(a, b Grant) int {
		return cmp.Or(a.Until.Compare(b.Until), a.IP.Compare(b.IP), cmp.Compare(a.Sequence, b.Sequence))
	})
	return gs
}

func (f *Firewall) grant(ctx context.Context, g Grant) error {
	if !g.Until.After(f.clock.Now()) {
		return fmt.Errorf("grant to %s for %s until %s: %w", g.IP, g.Sequence, g.Until.Format(time.RFC3339), ErrExpired)
	}
	fam := familyOf(g.IP)
	if f.tabs[fam] == nil {
		return fmt.Errorf("grant to %s: no %s firewall on this host", g.IP, fam)
	}
	k := grantKey{g.IP, g.Sequence}
	old, had := f.grants[k]
	if had && !g.Until.After(old.Until) {
		return nil
	}
	if !had && len(f.grants) >= f.o.MaxGrants {
		f.refused.Add(1)
		f.log.Warn("grant refused: the grant table is full", keyIP, g.IP, keySequence, g.Sequence, keyCount, len(f.grants))
		return fmt.Errorf("grant to %s for %s: %w (%d grants)", g.IP, g.Sequence, ErrTableFull, len(f.grants))
	}
	err := f.insertGrant(ctx, fam, g)
	if errors.Is(err, errNoChain) {
		// Our chain went away behind our back: repair, then try again.
		f.log.Warn("our chain is missing; repairing before the grant", keyFamily, fam, keyIP, g.IP)
		f.checkFamily(ctx, fam)
		err = f.insertGrant(ctx, fam, g)
	}
	if err != nil {
		return err
	}
	f.grants[k] = g
	f.dirty = true
	attrs := []any{keyIP, g.IP, keySequence, g.Sequence, keyPorts, g.Ports, keyUntil, g.Until}
	if had {
		for _, r := range grantRules(old) {
			if err := f.deleteRule(ctx, fam, r); err != nil {
				f.doom(fam, r)
			}
		}
		f.log.Debug("grant extended", attrs...)
	} else {
		f.log.Debug("grant applied", attrs...)
	}
	return nil
}

// insertGrant inserts the rules of g, or none: on failure the ones it
// inserted are deleted again, or retried in the background; so is the
// failed one when it may have been applied.
func (f *Firewall) insertGrant(ctx context.Context, fam family, g Grant) error {
	// Insert the new rules before deleting the old ones: no gap. In
	// reverse, so that the chain lists them in the order of the ports.
	rs := grantRules(g)
	for i := len(rs) - 1; i >= 0; i-- {
		err := f.insert(ctx, fam, rs[i])
		if err == nil {
			continue
		}
		undo := rs[i+1:]
		if maybeApplied(err) {
			undo = rs[i:]
		}
		for _, r := range undo {
			if derr := f.deleteRule(ctx, fam, r); derr != nil {
				f.doom(fam, r)
			}
		}
		return err
	}
	return nil
}

func (f *Firewall) revoke(ctx context.Context, ip netip.Addr) error {
	var errs []error
	found := false
	for _, g := range f.sorted() {
		if g.IP == ip {
			found = true
			errs = append(errs, f.remove(ctx, grantKey{g.IP, g.Sequence}, "revoked"))
		}
	}
	if !found {
		return fmt.Errorf("revoke %s: %w", ip, ErrNoGrant)
	}
	return errors.Join(errs...)
}

// remove forgets a grant and deletes its rules; a rule whose delete fails is
// retried later.
func (f *Firewall) remove(ctx context.Context, k grantKey, reason string) error {
	g := f.grants[k]
	delete(f.grants, k)
	f.dirty = true
	fam := familyOf(g.IP)
	var errs []error
	for _, r := range grantRules(g) {
		if err := f.deleteRule(ctx, fam, r); err != nil {
			f.doom(fam, r)
			errs = append(errs, err)
		}
	}
	f.log.Info("grant removed", keyIP, g.IP, keySequence, g.Sequence, keyUntil, g.Until, keyReason, reason)
	return errors.Join(errs...)
}

func (f *Firewall) doom(fam family, r rule) {
	f.doomed = append(f.doomed, doomedRule{fam: fam, r: r, fails: 1, at: f.clock.Now().Add(doomFirst)})
	f.log.Warn("rule left in the chain; its delete will be retried", keyFamily, fam, keyRule, r.String())
}

// maybeApplied tells whether a failed call may still have changed the
// kernel: an attempt of it was killed or abandoned.
func maybeApplied(err error) bool {
	for _, e := range []error{errTimeout, errClosed, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// tick removes the grants that have ended and retries failed deletes.
func (f *Firewall) tick(ctx context.Context) {
	now := f.clock.Now()
	f.expire(ctx, now)
	kept := f.doomed[:0]
	for _, d := range f.doomed {
		if !d.due(now) {
			kept = append(kept, d)
			continue
		}
		if err := f.deleteRule(ctx, d.fam, d.r); err != nil {
			d.fails++
			d.at = now.Add(min(doomFirst<<min(d.fails-1, 10), doomMax))
			kept = append(kept, d)
			continue
		}
		f.log.Info("left-over rule deleted", keyFamily, d.fam, keyRule, d.r.String())
	}
	f.doomed = kept
}

// expire removes the grants whose until is not after now.
func (f *Firewall) expire(ctx context.Context, now time.Time) {
	for _, g := range f.sorted() {
		if !g.Until.After(now) {
			// A failure is logged and retried by remove.
			_ = f.remove(ctx, grantKey{g.IP, g.Sequence}, "expired")
		}
	}
}

// The calls on the tables, retried, with errors that name the object.

func (f *Firewall) list(ctx context.Context, fam family) ([]listed, error) {
	var lines []string
	err := f.rt.do(ctx, "list", func(ctx context.Context, _ int) (err error) {
		lines, err = f.tabs[fam].List(ctx, table, f.o.Chain)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: list %s/%s: %w", fam.command(), table, f.o.Chain, err)
	}
	var have []listed
	for _, line := range lines {
		if l, ok := parseListed(f.o.Chain, line); ok {
			have = append(have, l)
		}
	}
	return have, nil
}

func (f *Firewall) insert(ctx context.Context, fam family, r rule) error {
	t, spec := f.tabs[fam], r.args()
	err := f.rt.do(ctx, "insert", func(ctx context.Context, attempt int) error {
		// A call that failed may have been applied (a lock timeout after
		// the commit, a kill after it): never insert a grant rule twice.
		if attempt > 1 {
			if ok, err := t.Exists(ctx, table, f.o.Chain, spec...); err == nil && ok {
				return nil
			}
		}
		return t.Insert(ctx, table, f.o.Chain, 1, spec...)
	})
	if err != nil {
		return fmt.Errorf("%s: insert %s into %s/%s: %w", fam.command(), r, table, f.o.Chain, err)
	}
	return nil
}

func (f *Firewall) append(ctx context.Context, fam family, r rule) error {
	// A retried append may add the rule twice; the next reconcile or
	// integrity check deletes the first copy, which is never the drop
	// at the end.
	err := f.rt.do(ctx, "append", func(ctx context.Context, _ int) error {
		return f.tabs[fam].Append(ctx, table, f.o.Chain, r.args()...)
	})
	if err != nil {
		return fmt.Errorf("%s: append %s to %s/%s: %w", fam.command(), r, table, f.o.Chain, err)
	}
	return nil
}

func (f *Firewall) deleteRule(ctx context.Context, fam family, r rule) error {
	err := f.rt.do(ctx, "delete", func(ctx context.Context, _ int) error {
		return f.tabs[fam].DeleteIfExists(ctx, table, f.o.Chain, r.args()...)
	})
	if err != nil {
		return fmt.Errorf("%s: delete %s from %s/%s: %w", fam.command(), r, table, f.o.Chain, err)
	}
	return nil
}

// deleteListed deletes a listed rule, which need not be ours: by its
// specification, or, should iptables not take back what it printed, by its
// number. Both delete the first rule that is the same.
func (f *Firewall) deleteListed(ctx context.Context, fam family, l listed) error {
	t := f.tabs[fam]
	err := f.rt.do(ctx, "delete", func(ctx context.Context, _ int) error {
		err := t.Delete(ctx, table, f.o.Chain, l.spec...)
		if err == nil {
			return nil
		}
		lines, lerr := t.List(ctx, table, f.o.Chain)
		if lerr != nil {
			return err
		}
		i := slices.Index(lines, l.line)
		if i < 1 { // gone, or the -N line
			return nil
		}
		return t.DeleteById(ctx, table, f.o.Chain, i)
	})
	if err != nil {
		return fmt.Errorf("%s: delete %q from %s/%s: %w", fam.command(), l.line, table, f.o.Chain, err)
	}
	return nil
}

func (f *Firewall) ensureChain(ctx context.Context, fam family) error {
	t := f.tabs[fam]
	err := f.rt.do(ctx, "new chain", func(ctx context.Context, _ int) error {
		if ok, err := t.ChainExists(ctx, table, f.o.Chain); err != nil || ok {
			return err
		}
		err := t.NewChain(ctx, table, f.o.Chain)
		if err != nil {
			// Created meanwhile by another webknock, or by an attempt
			// that timed out after the commit?
			if ok, cerr := t.ChainExists(ctx, table, f.o.Chain); cerr == nil && ok {
				return nil
			}
			return err
		}
		f.log.Info("chain created", keyFamily, fam, keyChain, f.o.Chain)
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: create chain %s/%s: %w", fam.command(), table, f.o.Chain, err)
	}
	return nil
}

// ensureJump inserts the jump to our chain at the top of the hook if it has
// none. Extra jumps are left alone with a warning: they do no harm, and the
// only safe way to delete one, by its specification, would delete the first.
func (f *Firewall) ensureJump(ctx context.Context, fam family) error {
	t := f.tabs[fam]
	lines, err := f.listHook(ctx, fam)
	if err != nil {
		return err
	}
	switch n := f.jumps(lines); {
	case n == 0:
		err := f.rt.do(ctx, "insert", func(ctx context.Context, attempt int) error {
			if attempt > 1 {
				if ok, err := t.Exists(ctx, table, f.o.Hook, "-j", f.o.Chain); err == nil && ok {
					return nil
				}
			}
			return t.Insert(ctx, table, f.o.Hook, 1, "-j", f.o.Chain)
		})
		if err != nil {
			return fmt.Errorf("%s: insert jump to %s into %s/%s: %w", fam.command(), f.o.Chain, table, f.o.Hook, err)
		}
		f.log.Info("jump inserted", keyFamily, fam, keyHook, f.o.Hook, keyChain, f.o.Chain)
	case n > 1:
		f.log.Warn("the hook jumps to our chain more than once", keyFamily, fam, keyHook, f.o.Hook, keyChain, f.o.Chain, keyCount, n)
	}
	return nil
}

// listHook lists the hook; a missing hook is an error like any other.
func (f *Firewall) listHook(ctx context.Context, fam family) ([]string, error) {
	var lines []string
	err := f.rt.do(ctx, "list", func(ctx context.Context, _ int) (err error) {
		lines, err = f.tabs[fam].List(ctx, table, f.o.Hook)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: list %s/%s: %w", fam.command(), table, f.o.Hook, err)
	}
	return lines, nil
}

// jumps counts the jumps to our chain in the lines of the hook.
func (f *Firewall) jumps(hook []string) int {
	jump := "-A " + f.o.Hook + " -j " + f.o.Chain
	n := 0
	for _, l := range hook {
		if l == jump {
			n++
		}
	}
	return n
}
