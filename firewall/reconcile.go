package firewall

import (
	"context"
)

// reconcile makes the family's rules hold exactly the entries of the live
// grants, and the protect tail (ruleset.reconcile). Grants that have ended
// are forgotten first. A grant whose entries cannot all be restored waits,
// as a grant that could not be applied does: the state never claims what
// the kernel does not hold.
func (w *worker) reconcile(ctx context.Context) error {
	now := w.f.clock.Now()
	var gone []Grant
	for _, g := range w.endedBy(now, 0) {
		w.dropGrant(keyOf(g))
		gone = append(gone, g)
	}
	err := w.reconcileRules(ctx)
	w.unsynced = err != nil
	// Their rules are deleted, or left to the next check: the kernel
	// no longer matches them anyway.
	for _, g := range gone {
		w.endHeld(keyOf(g), g, ReasonExpired)
	}
	return err
}

func (w *worker) reconcileRules(ctx context.Context) error {
	var want []entry
	wanted := map[entry]grantKey{}
	for _, g := range sortedGrants(w.grants) {
		for _, e := range w.entries(g) {
			want = append(want, e)
			wanted[e] = keyOf(g)
		}
	}
	lost, used, err := w.rs.reconcile(ctx, want, w.cur)
	done := map[grantKey]bool{}
	for _, e := range used {
		if k := wanted[e]; !done[k] {
			done[k] = true
			_ = w.remove(ctx, k, ReasonUsed)
		}
	}
	for _, e := range lost {
		if k := wanted[e]; !done[k] {
			done[k] = true
			w.demote(ctx, k, err)
		}
	}
	return err
}

// entries are the entries of g under the family's policy.
func (w *worker) entries(g Grant) []entry {
	return entriesOf(g, w.pol.door(g))
}

// wantedEntries are the entries of the held grants.
func (w *worker) wantedEntries() []entry {
	var es []entry
	for _, g := range w.grants {
		es = append(es, w.entries(g)...)
	}
	return es
}
