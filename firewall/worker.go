package firewall

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
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

// retrier runs an iptables call up to len(delays)+1 times.
type retrier struct {
	clock    Clock
	log      *slog.Logger
	delays   []time.Duration
	stop     <-chan struct{} // nil: never
	failures atomic.Uint64
}

// do calls fn with attempt 1, 2, ... until it succeeds or the attempts are
// used up; it waits between attempts on the clock.
func (rt *retrier) do(ctx context.Context, op string, fn func(attempt int) error) error {
	for attempt := 1; ; attempt++ {
		err := fn(attempt)
		if err == nil {
			return nil
		}
		rt.failures.Add(1)
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
func (f *Firewall) run() {
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
		}
		if f.idle != nil {
			f.idle()
		}
	}
}

// nextWake is when the next grant ends or the next failed delete is due.
func (f *Firewall) nextWake() (time.Time, bool) {
	var at time.Time
	for _, g := range f.grants {
		if at.IsZero() || g.Until.Before(at) {
			at = g.Until
		}
	}
	for _, d := range f.doomed {
		if at.IsZero() || d.at.Before(at) {
			at = d.at
		}
	}
	return at, !at.IsZero()
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
	f.health.InSync = len(f.doomed) == 0 && !f.dirty && !f.unsynced
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
	// Insert the new rules before deleting the old ones: no gap. In
	// reverse, so that the chain lists them in the order of the ports.
	rs := grantRules(g)
	for i := len(rs) - 1; i >= 0; i-- {
		if err := f.insert(ctx, fam, rs[i]); err != nil {
			for _, r := range rs[i+1:] {
				if derr := f.deleteRule(ctx, fam, r); derr != nil {
					f.doom(fam, r)
				}
			}
			return err
		}
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

// tick removes the grants that have ended and retries failed deletes.
func (f *Firewall) tick(ctx context.Context) {
	now := f.clock.Now()
	for _, g := range f.sorted() {
		if !g.Until.After(now) {
			// A failure is logged and retried by remove.
			_ = f.remove(ctx, grantKey{g.IP, g.Sequence}, "expired")
		}
	}
	kept := f.doomed[:0]
	for _, d := range f.doomed {
		if d.at.After(now) {
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

// The calls on the tables, retried, with errors that name the object.

func (f *Firewall) list(ctx context.Context, fam family) ([]listed, error) {
	var lines []string
	err := f.rt.do(ctx, "list", func(int) (err error) { lines, err = f.tabs[fam].List(table, f.o.Chain); return err })
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
	err := f.rt.do(ctx, "insert", func(attempt int) error {
		// A call that failed may have been applied (a lock timeout after
		// the commit): never insert a grant rule twice.
		if attempt > 1 {
			if ok, err := t.Exists(table, f.o.Chain, spec...); err == nil && ok {
				return nil
			}
		}
		return t.Insert(table, f.o.Chain, 1, spec...)
	})
	if err != nil {
		return fmt.Errorf("%s: insert %s into %s/%s: %w", fam.command(), r, table, f.o.Chain, err)
	}
	return nil
}

func (f *Firewall) append(ctx context.Context, fam family, r rule) error {
	err := f.rt.do(ctx, "append", func(int) error { return f.tabs[fam].Append(table, f.o.Chain, r.args()...) })
	if err != nil {
		return fmt.Errorf("%s: append %s to %s/%s: %w", fam.command(), r, table, f.o.Chain, err)
	}
	return nil
}

func (f *Firewall) deleteRule(ctx context.Context, fam family, r rule) error {
	err := f.rt.do(ctx, "delete", func(int) error { return f.tabs[fam].DeleteIfExists(table, f.o.Chain, r.args()...) })
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
	err := f.rt.do(ctx, "delete", func(int) error {
		err := t.Delete(table, f.o.Chain, l.spec...)
		if err == nil {
			return nil
		}
		lines, lerr := t.List(table, f.o.Chain)
		if lerr != nil {
			return err
		}
		i := slices.Index(lines, l.line)
		if i < 1 { // gone, or the -N line
			return nil
		}
		return t.DeleteById(table, f.o.Chain, i)
	})
	if err != nil {
		return fmt.Errorf("%s: delete %q from %s/%s: %w", fam.command(), l.line, table, f.o.Chain, err)
	}
	return nil
}

func (f *Firewall) ensureChain(ctx context.Context, fam family) error {
	t := f.tabs[fam]
	err := f.rt.do(ctx, "new chain", func(int) error {
		if ok, err := t.ChainExists(table, f.o.Chain); err != nil || ok {
			return err
		}
		err := t.NewChain(table, f.o.Chain)
		if err != nil {
			// Created meanwhile by another webknock?
			if ok, cerr := t.ChainExists(table, f.o.Chain); cerr == nil && ok {
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
	var lines []string
	if err := f.rt.do(ctx, "list", func(int) (err error) { lines, err = t.List(table, f.o.Hook); return err }); err != nil {
		return fmt.Errorf("%s: list %s/%s: %w", fam.command(), table, f.o.Hook, err)
	}
	jump := "-A " + f.o.Hook + " -j " + f.o.Chain
	n := 0
	for _, l := range lines {
		if l == jump {
			n++
		}
	}
	switch {
	case n == 0:
		if err := f.rt.do(ctx, "insert", func(int) error { return t.Insert(table, f.o.Hook, 1, "-j", f.o.Chain) }); err != nil {
			return fmt.Errorf("%s: insert jump to %s into %s/%s: %w", fam.command(), f.o.Chain, table, f.o.Hook, err)
		}
		f.log.Info("jump inserted", keyFamily, fam, keyHook, f.o.Hook, keyChain, f.o.Chain)
	case n > 1:
		f.log.Warn("the hook jumps to our chain more than once", keyFamily, fam, keyHook, f.o.Hook, keyChain, f.o.Chain, keyCount, n)
	}
	return nil
}
