package firewall

import (
	"context"
	"errors"
)

// reconcile makes our chains hold exactly the rules of the live grants,
// once each, followed by the protect tail, and nothing else. Grants that
// have ended are forgotten first.
//
// The drops are never absent once present: when the chain does not already
// end with the wanted tail, the whole tail is appended before anything is
// deleted. A rule is deleted by its specification, which removes the first
// rule that is the same; since the kept tail is last and the first copy of a
// grant rule is as good as any other, that is always a right one.
func (f *Firewall) reconcile(ctx context.Context) error {
	now := f.clock.Now()
	for k, g := range f.grants {
		if !g.Until.After(now) {
			delete(f.grants, k)
			f.dirty = true
		}
	}
	var errs []error
	for _, fam := range families {
		if f.tabs[fam] != nil {
			errs = append(errs, f.reconcileFamily(ctx, fam))
		}
	}
	err := errors.Join(errs...)
	f.unsynced = err != nil
	return err
}

func (f *Firewall) reconcileFamily(ctx context.Context, fam family) error {
	have, err := f.list(ctx, fam)
	if err != nil {
		return err
	}
	var want []rule
	wanted := map[rule]grantKey{}
	for _, g := range f.sorted() {
		if familyOf(g.IP) != fam {
			continue
		}
		for _, r := range grantRules(g) {
			want = append(want, r)
			wanted[r] = grantKey{g.IP, g.Sequence}
		}
	}

	tail := tailRules(f.cur, fam)
	keep := len(have) // rules before keep are judged one by one; the rest is the tail
	if n := len(tail); n > 0 {
		if tailAtEnd(have, tail) {
			keep = len(have) - n
		} else {
			for _, r := range tail {
				if err := f.append(ctx, fam, r); err != nil {
					return err
				}
			}
			f.log.Info("protect rules appended", keyFamily, fam, keyCount, n)
		}
	}

	now := f.clock.Now().Unix()
	kept := map[rule]bool{}
	var errs []error
	for _, l := range have[:keep] {
		var reason string
		_, isWanted := wanted[l.r]
		switch {
		case !l.ours:
			reason = "not webknock's"
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
		if err := f.deleteListed(ctx, fam, l); err != nil {
			errs = append(errs, err)
			continue
		}
		f.log.Info("rule deleted", keyFamily, fam, keyRule, l.line, keyReason, reason)
	}

	// Restore what is missing, in reverse so that the chain lists the
	// grants in order. A grant whose rule cannot be restored is given up:
	// the state never claims what the kernel does not hold.
	var lost []grantKey
	for i := len(want) - 1; i >= 0; i-- {
		r := want[i]
		if kept[r] {
			continue
		}
		if err := f.insert(ctx, fam, r); err != nil {
			errs = append(errs, err)
			lost = append(lost, wanted[r])
			continue
		}
		f.log.Info("grant rule restored", keyFamily, fam, keyRule, r.String())
	}
	for _, k := range lost {
		if _, ok := f.grants[k]; ok {
			_ = f.remove(ctx, k, "cannot be restored")
		}
	}
	return errors.Join(errs...)
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
