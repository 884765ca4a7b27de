package knock

import (
	"bytes"
	"cmp"
	"net/netip"
	"slices"
	"time"
)

// Locked is a client that is locked out until Until.
type Locked struct {
	Client netip.Addr
	Until  time.Time
}

// Lockouts returns the clients locked out at now, soonest end first.
func (t *Tracker) Lockouts(now time.Time) []Locked {
	var out []Locked
	for _, e := range t.clients {
		if e.locked(now) {
			out = append(out, Locked{Client: e.addr, Until: e.rec.lockedUntil})
		}
	}
	slices.SortFunc(out, func(a, b Locked) int {
		return cmp.Or(a.Until.Compare(b.Until), a.Client.Compare(b.Client))
	})
	return out
}

// Unlock forgets the failures and the lockout of addr, and reports whether
// there were any. Its knocks in progress are kept.
func (t *Tracker) Unlock(addr netip.Addr) bool {
	e := t.clients[addr.Unmap()]
	if e == nil || e.rec == nil {
		return false
	}
	e.rec = nil
	if len(e.prog) == 0 {
		t.remove(e)
	} else if c := e.classify(); c != e.class {
		t.unlink(e)
		t.link(e, c, false)
	}
	return true
}

// Adopt takes over what old knows of each client, for a reload: lockouts
// and failures, and the knocks in progress of every sequence that old
// knows under the same name with the same paths, statuses, methods and
// timeout (a changed sequence starts afresh). t must be new and empty; old
// must not be used afterwards.
func (t *Tracker) Adopt(old *Tracker) {
	same := make([]int32, len(old.seqs)) // old index -> new index, or -1
	for i, o := range old.seqs {
		same[i] = -1
		for j, ns := range t.seqs {
			if o.Name == ns.Name && sameKnock(&o, &ns) {
				same[i] = int32(j)
			}
		}
	}
	for i, j := range same {
		if j >= 0 {
			t.used[j] = max(t.used[j], old.used[i])
		}
	}
	t.adoptGrants(old)
	// Oldest touched first, so that the table's order of recency is kept.
	for c := range old.lists {
		for e := old.lists[c].root.prev; e != &old.lists[c].root; e = e.prev {
			var prog []progress
			for _, pr := range e.prog {
				if j := same[pr.seq]; j >= 0 {
					pr.seq = j
					prog = append(prog, pr)
				}
			}
			if len(prog) == 0 && e.rec == nil {
				continue
			}
			slices.SortFunc(prog, func(a, b progress) int { return int(a.seq - b.seq) })
			n := t.insert(e.addr)
			n.prog = append(n.prog, prog...)
			if e.rec != nil {
				r := *e.rec
				r.fails = slices.Clone(r.fails)
				n.rec = &r
			}
			if c := n.classify(); c != n.class {
				t.unlink(n)
				t.link(n, c, true)
			}
		}
	}
}

// sameKnock reports whether a and b advance and grant on the same hits.
func sameKnock(a, b *Sequence) bool {
	return slices.Equal(a.Steps, b.Steps) && a.KnockPage == b.KnockPage &&
		slices.Equal(a.StepStatus, b.StepStatus) && slices.Equal(a.Methods, b.Methods) &&
		slices.Equal(a.KnockPageStatus, b.KnockPageStatus) && a.Timeout == b.Timeout &&
		sameOneTime(a.OneTime, b.OneTime)
}

// sameOneTime reports whether a and b derive the same paths.
func sameOneTime(a, b *OneTime) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Mode == b.Mode && bytes.Equal(a.Key, b.Key) && a.Prefix == b.Prefix &&
		a.Steps == b.Steps && a.Period == b.Period && a.Skew == b.Skew
}
