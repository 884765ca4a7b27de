package firewall

import (
	"context"
	"errors"
	"slices"
)

// reconcile makes the family's chain hold the ownership marker, then
// exactly the rules of the live grants, once each, followed by the protect
// tail, and nothing else. Grants that have ended are forgotten first.
//
// The drops are never absent once present: when the chain does not already
// end with the wanted tail, the whole tail is appended before anything is
// deleted. A rule is deleted by its specification, which removes the first
// rule that is the same; since the kept tail is last and the first copy of a
// grant rule is as good as any other, that is always a right one. Only a
// second marker is deleted by its number, the first one staying on top.
func (w *worker) reconcile(ctx context.Context) error {
	now := w.f.clock.Now()
	var gone []Grant
	for _, g := range sortedGrants(w.grants) {
		if !g.Until.After(now) {
			w.dropGrant(keyOf(g))
			gone = append(gone, g)
		}
	}
	err := w.reconcileChain(ctx)
	w.unsynced = err != nil
	// Their rules are deleted, or left to the next check: the kernel
	// no longer matches them anyway.
	for _, g := range gone {
		w.endHeld(keyOf(g), g, ReasonExpired)
	}
	return err
}

func (w *worker) reconcileChain(ctx context.Context) error {
	have, err := w.list(ctx)
	if err != nil {
		return err
	}
	var want []rule
	wanted := map[rule]grantKey{}
	for _, g := range sortedGrants(w.grants) {
		for _, r := range grantRules(g) {
			want = append(want, r)
			wanted[r] = keyOf(g)
		}
	}
	have, missing := splitMarker(have, w.f.marker, func(r rule) bool { _, ok := wanted[r]; return ok })
	if missing {
		if err := w.insertPos(ctx, 1, w.f.marker); err != nil {
			return err
		}
		w.log.Info("ownership marker restored", keyFamily, w.fam, keyChain, w.f.o.Chain)
	}

	tail := tailRules(w.cur, w.fam)
	keep := len(have) // rules before keep are judged one by one; the rest is the tail
	if n := len(tail); n > 0 {
		if tailAtEnd(have, tail) {
			keep = len(have) - n
		} else {
			for _, r := range tail {
				if err := w.append(ctx, r); err != nil {
					return err
				}
			}
			w.log.Info("protect rules appended", keyFamily, w.fam, keyCount, n)
		}
	}

	now := w.f.clock.Now().Unix()
	kept := map[rule]bool{}
	var errs []error
	for _, l := range have[:keep] {
		var reason string
		_, isWanted := wanted[l.r]
		switch {
		case !l.ours:
			reason = "not webknock's"
		case l.r == w.f.marker:
			reason = "second ownership marker"
		case l.r.kind == kindMarker:
			reason = "another webknock's ownership marker"
		case l.r.kind != kindGrant:
			reason = "old protect rule"
		case isWanted && !kept[l.r]:
			kept[l.r] = true
			continue
		case isWanted:
			reason = "duplicate"
		case l.r.until <= now:
			reason = "expired"
		default:
			reason = "not a known grant"
		}
		if err := w.deleteListed(ctx, l, l.ours && l.r.kind == kindMarker); err != nil {
			errs = append(errs, err)
			continue
		}
		w.log.Info("rule deleted", keyFamily, w.fam, keyRule, l.line, keyReason, reason)
	}

	// Restore what is missing, in reverse so that the chain lists the
	// grants in order. A grant whose rule cannot be restored waits, as a
	// grant that could not be applied does: the state never claims what
	// the kernel does not hold.
	lost := map[grantKey]error{}
	for i := len(want) - 1; i >= 0; i-- {
		r := want[i]
		if kept[r] {
			continue
		}
		if err := w.insert(ctx, r); err != nil {
			errs = append(errs, err)
			lost[wanted[r]] = err
			continue
		}
		w.log.Info("grant rule restored", keyFamily, w.fam, keyRule, r.String())
	}
	for k, err := range lost {
		w.demote(ctx, k, err)
	}
	return errors.Join(errs...)
}

// splitMarker finds the ownership marker that is to stay on top: the first
// one, when every rule above it is to go (others' rules, or ours that are
// not wanted: no rule inserted at the top displaces it for good). It
// returns the rules without it; missing says that a marker is to be
// inserted on top, since none can stay there.
func splitMarker(have []listed, marker rule, wanted func(rule) bool) (rest []listed, missing bool) {
	for i, l := range have {
		switch {
		case l.ours && l.r == marker:
			return slices.Delete(slices.Clone(have), i, i+1), false
		case l.ours && l.r.kind == kindGrant && wanted(l.r):
			return have, true
		}
	}
	return have, true
}

// tailAtEnd tells whether the chain ends with exactly the rules of tail.
func tailAtEnd(have []listed, tail []rule) bool {
	if len(have) < len(tail) {
		return false
	}
	for i, l := range have[len(have)-len(tail):] {
		if !l.ours || l.r != tail[i] {
			return false
		}
	}
	return true
}
