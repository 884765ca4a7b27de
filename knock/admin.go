package knock

import (
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
