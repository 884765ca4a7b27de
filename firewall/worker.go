package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"
)

// maxRevokes bounds the remembered revokes of a family; beyond it the
// oldest is forgotten.
const maxRevokes = 1 << 16

// clockSlack is how far ahead the log's clock may be before a cut grant is
// worth a warning.
const clockSlack = time.Minute

// worker does all the work of one family: every change of its chain goes
// through its goroutine, so no two changes of a family ever race, and a
// family whose iptables hangs holds up no other.
type worker struct {
	f    *Firewall
	fam  family
	rs   ruleset
	rt   *retrier // rs's
	log  *slog.Logger
	reqs chan request
	done chan struct{}
	// hints tell of changes others made to our rules (the nftables
	// monitor), and by whom; nil: none come, the periodic check finds them.
	hints <-chan string

	// Owned by the worker goroutine (and by start before it runs).
	cur      tail
	pol      policy
	grants   map[grantKey]Grant
	ends     ends                  // grants by their end
	touched  map[grantKey]struct{} // grants changed since the last commit
	doors    map[grantKey]struct{} // held grants whose entries are doors
	pending  map[grantKey]*pendingGrant
	revoked  map[netip.Prefix]time.Time // wall-clock time of the last revoke of a source
	revList  []revoked                  // revoked as published; nil when it changed
	doomed   []doomedEntry
	sw       sweep     // entries of ended grants still to be deleted
	changed  bool      // the state file is behind this family
	unsynced bool      // the last reconcile failed
	checkErr error     // the last integrity check failed
	checked  time.Time // the last integrity check passed
	// urgent: a grant ended before its time (revoked, closed, used, no
	// longer allowed) or a revoke was recorded: the state file is written
	// at once, not after the gap, so that no restart brings it back.
	urgent bool
	// changedBy says who changed our rules, when a hint said so.
	changedBy string
	// cleanGen is the ruleset's generation when the last check found
	// everything in place (generationer); ok false: none known.
	cleanGen struct {
		n  uint32
		ok bool
	}
}

type request struct {
	ctx  context.Context
	fn   func(context.Context) error
	done chan error
}

// do runs fn on the worker and returns its result.
func (w *worker) do(ctx context.Context, fn func(context.Context) error) error {
	r := request{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case w.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-w.f.stop:
		return errClosed
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-w.done:
		// Stopped: with the request still queued, or just done with it.
		select {
		case err := <-r.done:
			return err
		default:
			return errClosed
		}
	}
}

// reqQueue is how many requests wait for a family's worker without
// holding up their callers' send: the worker takes them before the next
// chunk of a sweep.
const reqQueue = 64

// run is the worker's goroutine.
//
// Timers run on the monotonic clock, grants end on the wall clock: a timer
// set for a grant's until can fire early (the wall clock was set back) or
// late (set forward). So each wake compares Clock.Now with until and
// re-arms, and the integrity check, every CheckInterval, also removes the
// grants whose until has passed.
//
// check is the first integrity check's timer, set before the worker starts.
func (w *worker) run(check <-chan time.Time) {
	defer close(w.done)
	f := w.f
	poller, _ := w.rs.(doorPoller)
	var doorTick <-chan time.Time
	breather := time.NewTimer(time.Hour)
	breather.Stop()
	defer breather.Stop()
	for {
		if w.behind() {
			// Requests first; between them, the ended grants and the
			// sweep a chunk at a time, each after a breather.
			breather.Reset(breatherPause)
			select {
			case r := <-w.reqs:
				breather.Stop()
				w.serve(r)
			case <-f.stop:
				return
			case <-breather.C:
				w.begin()
				w.startMass()
				if w.sw.pending() > 0 {
					_ = w.sweepChunk(f.ctx)
				} else {
					w.expire(f.ctx, f.clock.Now())
				}
				w.endMass()
				w.commit()
				w.end()
			}
			continue
		}
		var wake <-chan time.Time
		if at, ok := w.nextWake(); ok {
			wake = f.clock.After(at.Sub(f.clock.Now()))
		}
		if poller != nil && len(w.doors) > 0 && doorTick == nil {
			doorTick = f.clock.After(doorPoll)
		}
		select {
		case <-doorTick:
			doorTick = nil
			w.begin()
			w.pollDoors(f.ctx, poller)
			w.commit()
			w.end()
		case <-f.stop:
			return
		case r := <-w.reqs:
			w.serve(r)
		case <-wake:
			w.begin()
			w.tick(f.ctx)
			w.commit()
			w.end()
		case by, ok := <-w.hints:
			if !ok {
				w.hints = nil
				continue
			}
			w.begin()
			w.log.Debug("our rules changed; checking", keyFamily, w.fam, keyBy, by)
			w.changedBy = by
			w.check(f.ctx)
			w.changedBy = ""
			w.commit()
			w.end()
		case <-check:
			w.begin()
			// What a check costs is real time spent in iptables, whatever
			// the clock that paces the checks says.
			start := time.Now()
			w.check(f.ctx)
			// Armed before the outcome is published: a test that sees it
			// can advance the clock to the next check.
			check = f.clock.After(f.checkWait(time.Since(start)))
			w.commit()
			w.end()
		}
	}
}

// serve runs a request.
func (w *worker) serve(r request) {
	w.begin()
	err := r.ctx.Err()
	if err == nil {
		err = r.fn(r.ctx)
	}
	w.commit()
	// Told before the caller goes on: a test that waits for it after its
	// own request is never woken by that request.
	w.end()
	r.done <- err
}

// pollDoors ends the grants whose door entries connections used: found
// by listing the doors, ended by the check (which lists everything).
func (w *worker) pollDoors(ctx context.Context, p doorPoller) {
	var want []entry
	for k := range w.doors {
		want = append(want, w.entries(w.grants[k])...)
	}
	n, err := p.usedDoors(ctx, want)
	if err != nil || n > 0 {
		w.check(ctx)
	}
}

// begin and end tell the tests that the worker handles an event.
func (w *worker) begin() {
	if w.f.begin != nil {
		w.f.begin(w.fam)
	}
}

func (w *worker) end() {
	if w.f.idle != nil {
		w.f.idle(w.fam)
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

// nextWake is when the next grant ends, or the next failed delete or
// pending grant is due.
func (w *worker) nextWake() (time.Time, bool) {
	var at time.Time
	earlier := func(t time.Time) {
		if at.IsZero() || t.Before(at) {
			at = t
		}
	}
	if g, ok := w.firstEnd(); ok {
		earlier(g.Until)
	}
	now := w.f.clock.Now()
	for _, d := range w.doomed {
		if due(d.at, now, doomMax) {
			return now, true
		}
		earlier(d.at)
	}
	for _, p := range w.pending {
		if due(p.at, now, pendMax) {
			return now, true
		}
		earlier(p.at)
		earlier(p.g.Until)
	}
	return at, !at.IsZero()
}

// commit publishes the family's grants and health, and has the state file
// written if they changed.
func (w *worker) commit() {
	if w.revList == nil {
		w.revList = make([]revoked, 0, len(w.revoked))
		for src, at := range w.revoked {
			w.revList = append(w.revList, revoked{Source: source{src}, At: at})
		}
	}
	pending := make([]Grant, 0, len(w.pending))
	for _, p := range w.pending {
		pending = append(pending, p.g)
	}
	sortGrants(pending)
	w.f.st.publish(w.fam, w.grants, w.touched, pending, w.revList,
		famHealth{doomed: len(w.doomed) + w.sw.pending(), pending: len(w.pending),
			unsynced: w.unsynced, checkErr: w.checkErr, checked: w.checked}, w.changed, w.urgent)
	w.urgent = false
	clear(w.touched)
	w.changed = false
}

// reserve takes a place in the grant table, and under the caps, for a new
// grant of k: a *CapError when a cap refuses, ErrTableFull when the table
// does.
func (f *Firewall) reserve(k grantKey) error {
	if err := f.caps.take(k); err != nil {
		return err
	}
	if f.count.Add(1) > f.maxGrants.Load() {
		f.count.Add(-1)
		f.caps.release(k)
		return ErrTableFull
	}
	return nil
}

// release gives back the place of k.
func (f *Firewall) release(k grantKey) {
	f.count.Add(-1)
	f.caps.release(k)
}

// dropGrant forgets the grant of k; dropPending its pending grant. The
// table's place is given back when k holds neither.
func (w *worker) dropGrant(k grantKey) {
	if _, ok := w.grants[k]; !ok {
		return
	}
	w.unsetGrant(k)
	if _, ok := w.pending[k]; !ok {
		w.f.release(k)
	}
}

func (w *worker) dropPending(k grantKey) {
	if _, ok := w.pending[k]; !ok {
		return
	}
	delete(w.pending, k)
	w.changed = true
	if _, ok := w.grants[k]; !ok {
		w.f.release(k)
	}
}

func grantAttrs(g Grant) []any {
	return []any{keyIP, sourceOf(g), keySequence, g.Sequence, keyPorts, g.Ports, keyUntil, g.Until}
}

func (w *worker) grant(ctx context.Context, g Grant) (Grant, error) {
	now := w.f.clock.Now()
	src := sourceOf(g)
	v := w.pol.judge(g, now)
	switch {
	case v.unknown:
		return Grant{}, fmt.Errorf("grant to %s: sequence %q is not configured: %w", src, g.Sequence, ErrNotAllowed)
	case len(v.dropped) > 0:
		return Grant{}, fmt.Errorf("grant to %s for %s: %v not among the sequence's ports: %w", src, g.Sequence, v.dropped, ErrNotAllowed)
	case v.cut > 0:
		// Warned about once: a log clock that is ahead stays ahead.
		level := slog.LevelDebug
		if v.cut > clockSlack && w.f.warnedAhead.CompareAndSwap(false, true) {
			level = slog.LevelWarn
		}
		w.log.Log(ctx, level, "grant cut to its window from now: the log's clock is ahead of this host's",
			append(grantAttrs(v.g), keyCut, v.cut)...)
		g = v.g
	}
	if !g.Until.After(now) {
		return Grant{}, fmt.Errorf("grant to %s for %s until %s: %w", src, g.Sequence, g.Until.Format(time.RFC3339), ErrExpired)
	}
	if err := checkUntil(g); err != nil {
		return Grant{}, err
	}
	if at, ok := w.revokedAt(g.Source()); ok && !g.Knocked.IsZero() && !g.Knocked.After(at) {
		return Grant{}, fmt.Errorf("grant to %s for %s knocked at %s: revoked at %s: %w",
			src, g.Sequence, g.Knocked.Format(time.RFC3339), at.UTC().Format(time.RFC3339), ErrRevoked)
	}
	k := keyOf(g)
	old, had := w.grants[k]
	p, pend := w.pending[k]
	if had && !g.Until.After(old.Until) {
		return old, nil
	}
	if pend && !g.Until.After(p.g.Until) {
		return p.g, fmt.Errorf("grant to %s for %s: %w: %w", src, g.Sequence, ErrPending, p.err)
	}
	if !had && !pend {
		switch err := w.f.reserve(k); {
		case errors.Is(err, ErrTableFull):
			w.f.refused.Add(1)
			n := w.f.count.Load()
			w.log.Warn("grant refused: the grant table is full", keyIP, src, keySequence, g.Sequence, keyCount, n)
			return Grant{}, fmt.Errorf("grant to %s for %s: %w (%d grants)", src, g.Sequence, ErrTableFull, n)
		case err != nil:
			// Counted, and logged once per cap reached, by the caps.
			return Grant{}, fmt.Errorf("grant to %s for %s: %w", src, g.Sequence, err)
		}
	}
	if old.Knocked.After(g.Knocked) {
		g.Knocked = old.Knocked
	}
	if err := w.apply(ctx, g); err != nil {
		w.pend(g, err)
		return g, fmt.Errorf("grant to %s for %s: %w: %w", src, g.Sequence, ErrPending, err)
	}
	w.dropPending(k)
	return g, nil
}

// apply adds the entries of g and makes it the grant of its key; the
// entries of the grant it replaces are deleted after, so that there is no
// gap. A chain found missing or emptied is repaired first.
func (w *worker) apply(ctx context.Context, g Grant) error {
	es := w.entries(g)
	err := w.add(ctx, es)
	if errors.Is(err, errNoChain) || errors.Is(err, errEmptyChain) {
		// Our chain went away or was flushed behind our back: repair,
		// then try again.
		w.log.Warn("our chain is missing or was emptied; repairing before the grant", keyFamily, w.fam, keyIP, sourceOf(g))
		w.checkFamily(ctx)
		err = w.add(ctx, es)
	}
	if err != nil {
		return err
	}
	w.undoom(es)
	w.sw.drop(es)
	k := keyOf(g)
	old, had := w.grants[k]
	w.setGrant(k, g)
	if !had {
		w.log.Debug("grant applied", grantAttrs(g)...)
		return nil
	}
	w.del(ctx, slices.DeleteFunc(w.entries(old), func(e entry) bool { return slices.Contains(es, e) })...)
	w.log.Debug("grant replaced", grantAttrs(g)...)
	return nil
}

// add adds es, all or none; what a failure left behind is deleted later.
func (w *worker) add(ctx context.Context, es []entry) error {
	left, err := w.rs.add(ctx, es)
	for _, e := range left {
		w.doom(e)
	}
	return err
}

// del deletes es; the deletes that fail are retried later.
func (w *worker) del(ctx context.Context, es ...entry) error {
	if len(es) == 0 {
		return nil
	}
	left, err := w.rs.del(ctx, es...)
	for _, e := range left {
		w.doom(e)
	}
	return err
}

// revoke ends the grants, held and pending, of sequence (all when "")
// whose source overlaps p, and returns them.
func (w *worker) revoke(ctx context.Context, p netip.Prefix, sequence, reason string) ([]Grant, error) {
	match := func(g Grant) bool {
		return (sequence == "" || g.Sequence == sequence) && g.Source().Overlaps(p)
	}
	now := w.f.clock.Now()
	var (
		out  []Grant
		errs []error
	)
	for _, g := range sortedGrants(w.grants) {
		if match(g) {
			w.recordRevoke(g.Source(), now)
			errs = append(errs, w.remove(ctx, keyOf(g), reason))
			out = append(out, g)
		}
	}
	for _, pg := range w.pendingSorted() {
		if !match(pg.g) {
			continue
		}
		k := keyOf(pg.g)
		w.recordRevoke(k.src, now)
		w.dropPending(k)
		w.log.Info("pending grant removed", append(grantAttrs(pg.g), keyReason, reason)...)
		if pg.held {
			w.ended(pg.g, reason)
		}
		if !slices.ContainsFunc(out, func(g Grant) bool { return keyOf(g) == k }) {
			out = append(out, pg.g)
		}
	}
	w.recordRevoke(p, now)
	if len(out) == 0 {
		if sequence != "" {
			return nil, fmt.Errorf("revoke %s for %s: %w", FormatSource(p), sequence, ErrNoGrant)
		}
		return nil, fmt.Errorf("revoke %s: %w", FormatSource(p), ErrNoGrant)
	}
	sortGrants(out)
	return out, errors.Join(errs...)
}

// recordRevoke remembers the time of a revoke of src.
func (w *worker) recordRevoke(src netip.Prefix, at time.Time) {
	w.revoked[src] = at
	w.urgent = true
	for len(w.revoked) > maxRevokes {
		var oldest netip.Prefix
		for p, t := range w.revoked {
			if !oldest.IsValid() || t.Before(w.revoked[oldest]) {
				oldest = p
			}
		}
		delete(w.revoked, oldest)
	}
	w.revList, w.changed = nil, true
}

// revokedAt is the time of the last revoke of a source that overlaps src:
// a network that holds it, or, for a network, an address or network in it.
func (w *worker) revokedAt(src netip.Prefix) (time.Time, bool) {
	var last time.Time
	found := false
	seen := func(at time.Time) {
		if !found || at.After(last) {
			last, found = at, true
		}
	}
	if len(w.revoked) == 0 {
		return last, false
	}
	for bits := src.Bits(); bits >= 0; bits-- {
		if at, ok := w.revoked[netip.PrefixFrom(src.Addr(), bits).Masked()]; ok {
			seen(at)
		}
	}
	if !src.IsSingleIP() {
		for p, at := range w.revoked {
			if p.Bits() > src.Bits() && src.Contains(p.Addr()) {
				seen(at)
			}
		}
	}
	return last, found
}

// pruneRevoked forgets the revokes that no knock logged before them could
// still undo: any grant of such a knock has ended by now, since no grant
// lasts longer than the longest window. Without a policy they are kept, up
// to maxRevokes.
func (w *worker) pruneRevoked(now time.Time) {
	if w.pol.longest <= 0 {
		return
	}
	for src, at := range w.revoked {
		if at.Add(w.pol.longest).Before(now) {
			delete(w.revoked, src)
			w.revList, w.changed = nil, true
		}
	}
}

// remove forgets a held grant, deletes its rules (before any that wait in
// the sweep) and tells OnEnd why it ended; a rule whose delete fails is
// retried later.
func (w *worker) remove(ctx context.Context, k grantKey, reason string) error {
	return w.retire(ctx, w.forget(k, reason), true)
}

// forget forgets a held grant and tells OnEnd why it ended; it returns
// its entries, which are the caller's to delete.
func (w *worker) forget(k grantKey, reason string) []entry {
	g := w.grants[k]
	es := w.entries(g)
	w.dropGrant(k)
	w.urgent = w.urgent || reason != ReasonExpired
	w.log.Info("grant removed", keyIP, sourceOf(g), keySequence, g.Sequence, keyUntil, g.Until, keyReason, reason)
	w.endHeld(k, g, reason)
	return es
}

// endHeld tells OnEnd that the held grant g of k ended; but when it
// expired while a longer grant of k waits to be applied, that one tells
// when it ends.
func (w *worker) endHeld(k grantKey, g Grant, reason string) {
	if p, ok := w.pending[k]; ok && reason == ReasonExpired {
		p.held = true
		return
	}
	w.ended(g, reason)
}

// ended tells OnEnd that g ended.
func (w *worker) ended(g Grant, reason string) {
	if fn := w.f.o.OnEnd; fn != nil {
		g.Ports = slices.Clone(g.Ports)
		fn(g, reason)
	}
}

// expire removes the grants, held or pending, whose until is not after now.
func (w *worker) expire(ctx context.Context, now time.Time) {
	// A chunk of them at a time, the rest between requests (behind); their
	// entries go in the sweep, oldest end first: the first chunk now, the
	// rest between requests. A failure is logged and retried.
	var es []entry
	ended := w.endedBy(now, sweepChunk)
	if len(ended) == sweepChunk {
		w.startMass() // more may follow
	}
	for _, g := range ended {
		es = append(es, w.forget(keyOf(g), ReasonExpired)...)
	}
	if len(es) > 0 {
		_ = w.retire(ctx, es, false)
	}
	for _, p := range w.pendingSorted() {
		if !p.g.Until.After(now) {
			w.dropPending(keyOf(p.g))
			w.log.Warn("pending grant given up: its window ended before it could be applied", append(grantAttrs(p.g), keyErr, p.err)...)
			if p.held {
				w.ended(p.g, ReasonExpired)
			}
		}
	}
}

// setTail makes next the protect tail, or, when the chain cannot take it,
// restores the previous one and returns why.
func (w *worker) setTail(ctx context.Context, next tail) error {
	prev := w.cur
	w.cur = next
	err := w.reconcile(ctx)
	if err == nil {
		return nil
	}
	w.cur = prev
	if rerr := w.reconcile(ctx); rerr != nil {
		w.log.Error("cannot restore the previous protect rules", keyFamily, w.fam, keyErr, rerr)
	}
	return err
}

// applyPolicy makes pol the family's policy and holds the grants to it:
// the grants of a sequence that is gone are revoked, ports that are no
// longer the sequence's are closed, and a grant that ends later than now
// plus its sequence's window is cut to it.
func (w *worker) applyPolicy(ctx context.Context, pol policy) {
	old := w.pol
	w.pol = pol
	clear(w.doors)
	for k, g := range w.grants {
		if pol.door(g) {
			w.doors[k] = struct{}{}
		}
	}
	// The grants of a sequence that now closes on connect, or no longer
	// does, move into the doors or out of them: the new entries first.
	for _, g := range sortedGrants(w.grants) {
		was, is := old.door(g), pol.door(g)
		if _, kept := pol.seqs[g.Sequence]; !kept || was == is {
			continue
		}
		if err := w.add(ctx, entriesOf(g, is)); err != nil {
			w.log.Warn("grant not moved for close_on_connect; the next check does it", append(grantAttrs(g), keyErr, err)...)
			continue
		}
		w.del(ctx, entriesOf(g, was)...)
	}
	now := w.f.clock.Now()
	for _, g := range sortedGrants(w.grants) {
		k := keyOf(g)
		v := pol.judge(g, now)
		switch {
		case v.unknown:
			_ = w.remove(ctx, k, ReasonPolicy)
			w.log.Info("sequence removed; grant revoked", grantAttrs(g)...)
		case len(v.g.Ports) == 0:
			_ = w.remove(ctx, k, ReasonPolicy)
			w.log.Info("grant revoked: none of its ports is the sequence's any more", grantAttrs(g)...)
		case v.cut > 0:
			// New rules with the earlier until, then the old ones go.
			if err := w.apply(ctx, v.g); err != nil {
				_ = w.remove(ctx, k, ReasonPolicy)
				w.log.Warn("grant revoked: it cannot be cut to the shortened window", append(grantAttrs(g), keyErr, err)...)
				continue
			}
			w.log.Info("grant cut to the sequence's shortened window", grantAttrs(v.g)...)
		case len(v.dropped) > 0:
			w.del(ctx, w.entries(Grant{IP: g.IP, Bits: g.Bits, Sequence: g.Sequence, Ports: v.dropped, Until: g.Until})...)
			w.setGrant(k, v.g)
			w.log.Info("ports closed: no longer the sequence's", append(grantAttrs(v.g), keyFixed, v.dropped)...)
		}
	}
	for _, p := range w.pendingSorted() {
		k := keyOf(p.g)
		v := pol.judge(p.g, now)
		if v.unknown || len(v.g.Ports) == 0 {
			w.dropPending(k)
			w.log.Info("pending grant removed", append(grantAttrs(p.g), keyReason, "its sequence or ports are no longer configured")...)
			if p.held {
				w.ended(p.g, ReasonPolicy)
			}
			continue
		}
		if len(v.dropped) > 0 || v.cut > 0 {
			p.g = v.g
			w.changed = true
		}
	}
	w.pruneRevoked(now)
}
