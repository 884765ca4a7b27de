package firewall

import (
	"context"
	"errors"
	"slices"
	"time"
)

// What failed is retried: a grant whose entries could not be added waits
// (pending) and is retried with backoff until it is applied or its window
// ends; an entry whose delete failed (doomed) is retried until it is gone.

// A grant whose insert failed is retried after pendFirst, doubling up to
// pendMax, until it is applied or its window ends: someone waits for it.
const (
	pendFirst = time.Second
	pendMax   = 30 * time.Second
)

// doomedEntry is an entry whose delete failed; it is retried at at.
type doomedEntry struct {
	e     entry
	fails int
	at    time.Time
}

// pendingGrant is a grant whose insert failed; it is retried at at.
type pendingGrant struct {
	g     Grant
	fails int
	at    time.Time
	err   error // the last failure
	// held: it was held before (its rules were lost, or it extends a
	// held grant that has expired), so its end is told to OnEnd.
	held bool
}

// due tells whether a retry set for at is to run: its time has come, or is
// further away than any backoff, which means the clock was set back.
func due(at, now time.Time, backoff time.Duration) bool {
	return !at.After(now) || at.Sub(now) > backoff
}

// pend keeps g to be retried after its insert failed.
func (w *worker) pend(g Grant, err error) {
	k := keyOf(g)
	p := w.pending[k]
	if p == nil {
		p = &pendingGrant{}
		w.pending[k] = p
	}
	p.g, p.err = g, err
	p.fails++
	p.at = w.f.clock.Now().Add(backoff(pendFirst, pendMax, p.fails))
	w.changed = true
	w.log.Warn("grant not applied; retrying until its window ends", append(grantAttrs(g), keyAt, p.at, keyErr, err)...)
}

// demote makes the grant of k, whose rules are not all in the chain, a
// pending grant: its rules are deleted, and it is retried.
func (w *worker) demote(ctx context.Context, k grantKey, err error) {
	g, ok := w.grants[k]
	if !ok {
		return
	}
	// Its place in the table passes to the pending grant.
	w.unsetGrant(k)
	w.del(ctx, w.entries(g)...)
	if p, ok := w.pending[k]; ok && p.g.Until.After(g.Until) {
		p.held = true
		return
	}
	w.pend(g, err)
	w.pending[k].held = true
}

// backoff is the wait before retry number fails: first, doubling, at most
// most.
func backoff(first, most time.Duration, fails int) time.Duration {
	return min(first<<min(max(fails-1, 0), 10), most)
}

func (w *worker) doom(e entry) {
	w.doomed = append(w.doomed, doomedEntry{e: e, fails: 1, at: w.f.clock.Now().Add(doomFirst)})
	w.log.Warn("rule left in the chain; its delete will be retried", keyFamily, w.fam, keyRule, w.rs.describe(e))
}

// undoom gives up the retried deletes of entries that are wanted again.
func (w *worker) undoom(es []entry) {
	w.doomed = slices.DeleteFunc(w.doomed, func(d doomedEntry) bool { return slices.Contains(es, d.e) })
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

// tick removes the grants that have ended, retries failed deletes and the
// pending grants that are due.
func (w *worker) tick(ctx context.Context) {
	now := w.f.clock.Now()
	w.expire(ctx, now)
	kept := w.doomed[:0]
	for _, d := range w.doomed {
		if !due(d.at, now, doomMax) {
			kept = append(kept, d)
			continue
		}
		if _, err := w.rs.del(ctx, d.e); err != nil {
			d.fails++
			d.at = now.Add(backoff(doomFirst, doomMax, d.fails))
			kept = append(kept, d)
			continue
		}
		w.log.Info("left-over rule deleted", keyFamily, w.fam, keyRule, w.rs.describe(d.e))
	}
	w.doomed = kept
	for _, p := range w.pendingSorted() {
		if !due(p.at, now, pendMax) {
			continue
		}
		k := keyOf(p.g)
		if err := w.apply(ctx, p.g); err != nil {
			p.fails++
			p.err = err
			p.at = now.Add(backoff(pendFirst, pendMax, p.fails))
			w.log.Warn("pending grant still not applied; retrying", append(grantAttrs(p.g), keyAt, p.at, keyErr, err)...)
			continue
		}
		w.dropPending(k)
		w.log.Info("pending grant applied", grantAttrs(p.g)...)
	}
}

func (w *worker) pendingSorted() []*pendingGrant {
	ps := make([]*pendingGrant, 0, len(w.pending))
	for _, p := range w.pending {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, func(a, b *pendingGrant) int {
		return compareGrants(a.g, b.g)
	})
	return ps
}
