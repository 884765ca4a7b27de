package knock

import (
	"errors"
	"fmt"
	"unsafe"
)

// EntrySize is the size of one client entry, without its map slot.
const EntrySize = unsafe.Sizeof(entry{})

// Classes returns how many entries are probationary and protected.
func (t *Tracker) Classes() (probationary, protected int) {
	return t.lists[0].len, t.lists[1].len
}

// MaxProtected returns how many protected entries the table keeps before it
// evicts them ahead of first steps.
func (t *Tracker) MaxProtected() int { return t.maxProtected }

// Check verifies the table's bookkeeping: every entry of the map is in the
// list of its class exactly once, the lists' lengths are right, and no entry
// is kept with nothing to remember.
func (t *Tracker) Check() error {
	var errs []error
	seen := 0
	for c := range t.lists {
		l := &t.lists[c]
		n := 0
		for e := l.root.next; e != &l.root; e = e.next {
			n++
			if n > len(t.clients) {
				return fmt.Errorf("list %d: longer than the map (%d), a cycle?", c, len(t.clients))
			}
			if e.next.prev != e || e.prev.next != e {
				errs = append(errs, fmt.Errorf("list %d: %v: broken links", c, e.addr))
			}
			if e.class != class(c) || e.classify() != class(c) {
				errs = append(errs, fmt.Errorf("list %d: %v: class %d, state says %d", c, e.addr, e.class, e.classify()))
			}
			if t.clients[e.addr] != e {
				errs = append(errs, fmt.Errorf("list %d: %v: not in the map", c, e.addr))
			}
			if len(e.prog) == 0 && e.rec == nil {
				errs = append(errs, fmt.Errorf("list %d: %v: kept with nothing to remember", c, e.addr))
			}
		}
		if n != l.len {
			errs = append(errs, fmt.Errorf("list %d: %d entries, len says %d", c, n, l.len))
		}
		seen += n
	}
	if seen != len(t.clients) {
		errs = append(errs, fmt.Errorf("lists hold %d entries, map %d", seen, len(t.clients)))
	}
	if len(t.clients) > t.max {
		errs = append(errs, fmt.Errorf("%d entries, max %d", len(t.clients), t.max))
	}
	return errors.Join(errs...)
}

// DerivedPaths returns how many one-time paths are cached.
func DerivedPaths(t *Tracker) int {
	n := 0
	for _, refs := range t.derived {
		n += len(refs)
	}
	return n
}
