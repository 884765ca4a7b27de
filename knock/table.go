package knock

import (
	"net/netip"
	"slices"
	"time"
)

// class says which entries are evicted first.
type class uint8

const (
	probationary class = iota // first steps only, nothing on record
	protected                 // progress past step 1, failures or a lockout
)

// list is an intrusive doubly linked list of entries.
type list struct {
	root entry // sentinel: root.next is the most recently touched
	len  int
}

// progress is one sequence in progress for one client (p > 0).
type progress struct {
	first time.Time
	seq   int32
	p     int16
	// dt is, in hmac mode, the time step of the knock's paths less that of
	// first: within the skew, so it fits where a whole step would not.
	dt int8
}

// entry is everything remembered about one client. It exists only while
// there is something to remember, and is kept small (112 bytes) because a
// flood of first knocks fills the table with them.
type entry struct {
	addr       netip.Addr
	prev, next *entry
	prog       []progress // only sequences with p > 0, ordered by seq
	rec        *record    // nil unless a failure or lockout is on record
	// inline backs prog for the usual single sequence in progress, so a new
	// client costs one allocation.
	inline [1]progress
	class  class
}

// record is what only failing clients need; a first step has none.
type record struct {
	fails       []time.Time
	lockedUntil time.Time
}

// settle forgets what no longer matters at now, and the entry itself if
// nothing is left; otherwise it files e under its class. An entry that
// changes class joins its new list as the most recently touched if the hit
// touched it, else (Expire) as the least: its place among the others is not
// known, and a client that did nothing should not outlive one that did.
func (t *Tracker) settle(e *entry, now time.Time, touched bool) {
	if r := e.rec; r != nil {
		if !r.lockedUntil.IsZero() && !r.lockedUntil.After(now) {
			r.lockedUntil = time.Time{}
		}
		r.fails = slices.DeleteFunc(r.fails, func(f time.Time) bool { return now.Sub(f) >= t.lockout.Period })
		if len(r.fails) == 0 && r.lockedUntil.IsZero() {
			e.rec = nil
		}
	}
	if len(e.prog) == 0 && e.rec == nil {
		t.remove(e)
		return
	}
	if c := e.classify(); c != e.class {
		t.unlink(e)
		t.link(e, c, touched)
	}
}

// find returns the index of seq in e.prog, or -1.
func (e *entry) find(seq int32) int {
	for i := range e.prog {
		if e.prog[i].seq == seq {
			return i
		}
	}
	return -1
}

// add inserts pr keeping e.prog ordered by sequence.
func (e *entry) add(pr progress) {
	i := 0
	for i < len(e.prog) && e.prog[i].seq < pr.seq {
		i++
	}
	e.prog = slices.Insert(e.prog, i, pr)
}

// locked reports whether e is locked out at now.
func (e *entry) locked(now time.Time) bool {
	return e.rec != nil && e.rec.lockedUntil.After(now)
}

// classify returns the class e's state puts it in.
func (e *entry) classify() class {
	if e.rec != nil {
		return protected
	}
	for _, pr := range e.prog {
		if pr.p > 1 {
			return protected
		}
	}
	return probationary
}

// insert creates the entry of a new client (a first step: probationary),
// evicting one if the table is full.
func (t *Tracker) insert(addr netip.Addr) *entry {
	if len(t.clients) >= t.max {
		t.evict()
	}
	e := &entry{addr: addr}
	e.prog = e.inline[:0]
	t.clients[addr] = e
	t.link(e, probationary, true)
	return e
}

// evict removes the least recently touched probationary entry, or the least
// recently touched protected one if there are more of those than
// maxProtected or no probationary entry at all.
func (t *Tracker) evict() {
	c := probationary
	if t.lists[protected].len > t.maxProtected || t.lists[probationary].len == 0 {
		c = protected
		t.evictedProtected++
	}
	t.evicted++
	t.remove(t.lists[c].root.prev)
}

// link puts e into the list of class c, first (most recently touched) or last.
func (t *Tracker) link(e *entry, c class, first bool) {
	l := &t.lists[c]
	at := &l.root // insert after at
	if !first {
		at = l.root.prev
	}
	e.prev, e.next = at, at.next
	e.prev.next, e.next.prev = e, e
	e.class = c
	l.len++
}

// unlink takes e out of its list.
func (t *Tracker) unlink(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	t.lists[e.class].len--
}

// touch marks e as the most recently touched entry of its class.
func (t *Tracker) touch(e *entry) {
	if t.lists[e.class].root.next == e {
		return
	}
	t.unlink(e)
	t.link(e, e.class, true)
}

// remove deletes e from the table; removing it twice is harmless.
func (t *Tracker) remove(e *entry) {
	if e.next == nil {
		return
	}
	delete(t.clients, e.addr)
	t.unlink(e)
}
