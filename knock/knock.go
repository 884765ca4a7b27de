// Package knock is webknock's pure core: it turns access-log hits into knock
// events (step, reset, timeout, grant, lockout), per client and sequence.
//
// It does no I/O, reads no clock and starts no goroutines: every time comes
// from the log lines themselves, so a replay gives the same events as the live
// run did.
//
// # The client table
//
// The table of clients is bounded (Config.MaxClients). An entry whose only
// progress is a first step, in every sequence, and that has no failure or
// lockout on record is probationary; any other entry (progress past step 1,
// failures, a lockout) is protected, until it is back to first steps with a
// clean record. When a first step from a new client finds the table full, the
// least recently touched probationary entry is evicted: a flood of first
// steps, from however many addresses, only pushes out other first steps, and
// a client that got past step 1 keeps its place.
//
// Protected entries may fill at most three quarters of the table; beyond
// that, or when there is no probationary entry, the least recently touched
// protected entry goes first (counted apart: EvictedProtected). The quarter
// kept for first steps matters because an attacker who knows steps[0] can
// make protected entries from many addresses (with lockout on, a first step
// that times out is a failure on record): without it, a table full of them
// would let every first step be evicted by the next one, and no one could
// start a knock.
//
// This is also the bound for a genuine client: its own first step outlives
// MaxClients-1 later first steps of others while the table holds nothing
// else, and about a quarter of MaxClients in any case; more than that before
// its second step, and it is pushed out.
package knock

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultMaxClients bounds the client table when Config.MaxClients is 0.
// A full table of first steps takes about 16 MiB.
const DefaultMaxClients = 100000

// Sequence is one secret series of paths and what it opens.
type Sequence struct {
	Name            string
	Steps           []string      // >= 1 paths, in order
	StepStatus      []int         // a step advances only with one of these statuses
	Methods         []string      // upper case; hits with other methods never change anything
	KnockPage       string        // the final hit that grants
	KnockPageStatus []int         // nil/empty: any status
	Timeout         time.Duration // from the first step to the knock page
	Window          time.Duration // how long access lasts after the knock page
	Ports           []string      // opaque to knock, copied into grant events ("22/tcp")
}

// Lockout ignores an address that fails too often.
type Lockout struct {
	Failures int           // 0 disables lockout
	Period   time.Duration // failures counted within this period
	Duration time.Duration // how long the address is then ignored
}

// Config is everything a Tracker needs.
type Config struct {
	Sequences []Sequence
	Lockout   Lockout
	// MaxClients bounds the client table; 0 means DefaultMaxClients. When
	// it is full, first steps are evicted before clients that got further
	// (see the package documentation).
	MaxClients int
}

// Hit is one request from the access log.
type Hit struct {
	Client netip.Addr
	Time   time.Time
	Method string
	Path   string // request target without query/fragment; compared byte for byte
	Status int
}

// Kind is what an Event reports.
type Kind uint8

// The kinds of events. The constants carry a Kind prefix because Lockout is
// already the name of the lockout configuration.
const (
	KindStep    Kind = iota + 1 // progress advanced (or restarted at 1)
	KindReset                   // progress discarded by a path out of order
	KindTimeout                 // progress discarded because the knock page came too late
	KindGrant                   // the knock page completed the sequence
	KindLockout                 // too many failures: the client is ignored until Until
)

// String returns the name used in logs and in replay output.
func (k Kind) String() string {
	switch k {
	case KindStep:
		return "step"
	case KindReset:
		return "reset"
	case KindTimeout:
		return "timeout"
	case KindGrant:
		return "grant"
	case KindLockout:
		return "lockout"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Event is one change of state.
type Event struct {
	Kind Kind
	// Time is the hit's time, except for a timeout (first step + Timeout, the
	// moment progress expired) and a lockout caused by one (the same moment).
	Time   time.Time
	Client netip.Addr
	// Sequence names the sequence concerned; for a lockout, the sequence
	// whose failure triggered it (a lockout covers all sequences).
	Sequence string
	Step     int       // KindStep: the new progress, 1-based
	Until    time.Time // KindGrant: access ends; KindLockout: lockout ends
	Ports    []string  // KindGrant only: the sequence's Ports, shared; do not modify
}

// Tracker holds the knock state of every client. Create it with New.
//
// A Tracker is not safe for concurrent use: callers serialise Apply, Expire
// and the accessors.
type Tracker struct {
	seqs         []Sequence
	paths        map[uint64][]pathRef // by the keyed hash of the path; see lookup
	seed         maphash.Seed
	lockout      Lockout
	max          int
	maxProtected int // protected entries beyond this are evicted before first steps
	clients      map[netip.Addr]*entry
	// lists holds the entries of each class, most recently touched first.
	lists            [2]list
	evicted          uint64
	evictedProtected uint64
}

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

// knockPage marks the knock page in pathRef.step.
const knockPage = -1

// pathRef locates a path: which sequence, which step (or knockPage).
type pathRef struct {
	path string
	seq  int32
	step int32
}

// progress is one sequence in progress for one client (p > 0).
type progress struct {
	first time.Time
	seq   int32
	p     int32
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

// New checks cfg and returns an empty Tracker. The error lists every problem.
func New(cfg Config) (*Tracker, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	maxClients := cfg.MaxClients
	switch {
	case maxClients == 0:
		maxClients = DefaultMaxClients
	case maxClients < 0:
		bad("max clients: %d is negative", maxClients)
	}
	lo := cfg.Lockout
	switch {
	case lo.Failures < 0:
		bad("lockout: failures: %d is negative", lo.Failures)
	case lo.Failures > 0:
		if lo.Period <= 0 {
			bad("lockout: period: %v is not positive", lo.Period)
		}
		if lo.Duration <= 0 {
			bad("lockout: duration: %v is not positive", lo.Duration)
		}
	}
	if len(cfg.Sequences) == 0 {
		bad("sequences: none")
	}

	t := &Tracker{
		paths:   make(map[uint64][]pathRef),
		seed:    maphash.MakeSeed(),
		lockout: lo,
		max:     maxClients,
		// A quarter of the table, rounded, is kept for first steps.
		maxProtected: maxClients - (maxClients+2)/4,
		clients:      make(map[netip.Addr]*entry),
	}
	for c := range t.lists {
		r := &t.lists[c].root
		r.next, r.prev = r, r
	}
	owner := make(map[string]string) // path → where it is used, for the error
	names := make(map[string]bool)
	for i, s := range cfg.Sequences {
		where := fmt.Sprintf("sequence %q", s.Name)
		if s.Name == "" {
			where = fmt.Sprintf("sequence %d", i)
		}
		if names[s.Name] {
			// Events name their sequence; two alike would be ambiguous.
			bad("%s: name used twice", where)
		}
		names[s.Name] = true
		if len(s.Steps) == 0 {
			bad("%s: steps: none", where)
		}
		addPath := func(field, path string, step int32) {
			switch {
			case path == "":
				bad("%s: %s: empty path", where, field)
			case owner[path] != "":
				bad("%s: %s: path %q already used by %s", where, field, path, owner[path])
			default:
				owner[path] = where + " " + field
				h := maphash.String(t.seed, path)
				t.paths[h] = append(t.paths[h], pathRef{path: path, seq: int32(i), step: step})
			}
		}
		for j, p := range s.Steps {
			addPath(fmt.Sprintf("steps[%d]", j), p, int32(j))
		}
		addPath("knock page", s.KnockPage, knockPage)
		if len(s.StepStatus) == 0 {
			bad("%s: step status: none, no step could ever advance", where)
		}
		if len(s.Methods) == 0 {
			bad("%s: methods: none, no hit could ever knock", where)
		}
		for _, m := range s.Methods {
			// Hits are compared byte for byte; "get" would silently never match.
			if m == "" || m != strings.ToUpper(m) {
				bad("%s: methods: %q is not an upper-case method", where, m)
			}
		}
		if s.Timeout <= 0 {
			bad("%s: timeout: %v is not positive", where, s.Timeout)
		}
		if s.Window <= 0 {
			bad("%s: window: %v is not positive", where, s.Window)
		}
		// Own copies: a caller reusing its slices must not change a running tracker.
		s.Steps = slices.Clone(s.Steps)
		s.StepStatus = slices.Clone(s.StepStatus)
		s.Methods = slices.Clone(s.Methods)
		s.KnockPageStatus = slices.Clone(s.KnockPageStatus)
		s.Ports = slices.Clone(s.Ports)
		t.seqs = append(t.seqs, s)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("knock config: %w", errors.Join(errs...))
	}
	return t, nil
}

// Paths returns every step and knock page of every sequence, in config order,
// so a reader can drop lines that cannot matter before parsing them.
func (t *Tracker) Paths() []string {
	var out []string
	for _, s := range t.seqs {
		out = append(out, s.Steps...)
		out = append(out, s.KnockPage)
	}
	return out
}

// Clients returns the number of entries in the client table.
func (t *Tracker) Clients() int { return len(t.clients) }

// Evicted returns how many entries were evicted because the table was full.
func (t *Tracker) Evicted() uint64 { return t.evicted }

// EvictedProtected returns how many of the evicted entries were protected:
// clients past their first step, or with failures or a lockout on record.
// Anything above zero means real progress (or a lockout) was lost.
func (t *Tracker) EvictedProtected() uint64 { return t.evictedProtected }

// lookup finds the sequence path equal to path. The secret paths are never
// compared byte by byte with a request's: the path is hashed with a key
// chosen at start, and only a path with the same keyed hash is compared, in
// constant time, so the time taken says nothing about how much of a secret
// a request got right.
func (t *Tracker) lookup(path string) (pathRef, bool) {
	for _, ref := range t.paths[maphash.String(t.seed, path)] {
		if subtle.ConstantTimeCompare([]byte(ref.path), []byte(path)) == 1 {
			return ref, true
		}
	}
	return pathRef{}, false
}

// Apply appends the events caused by h to dst and returns it.
func (t *Tracker) Apply(h Hit, dst []Event) []Event {
	// The common case (a path of no sequence) must cost one lookup and
	// change nothing: browsers fetch /favicon.ico, and many users share a proxy.
	ref, ok := t.lookup(h.Path)
	if !ok {
		return dst
	}
	s := &t.seqs[ref.seq]
	if !slices.Contains(s.Methods, h.Method) {
		return dst
	}
	e := t.clients[h.Client]
	if e != nil {
		t.touch(e)
		if e.locked(h.Time) {
			return dst
		}
		dst = t.catchUp(e, h.Time, dst)
		// A lockout caused by a timeout just now also swallows this hit.
		if e.locked(h.Time) {
			t.settle(e, h.Time, true)
			return dst
		}
	}

	i, p := -1, 0 // index in e.prog, progress
	if e != nil {
		if i = e.find(ref.seq); i >= 0 {
			p = int(e.prog[i].p)
		}
	}
	n := len(s.Steps)
	ev := Event{Time: h.Time, Client: h.Client, Sequence: s.Name}
	switch {
	case ref.step == knockPage:
		switch {
		case len(s.KnockPageStatus) > 0 && !slices.Contains(s.KnockPageStatus, h.Status):
			// Not a knock: the page did not answer as configured.
		case p == n:
			e.prog = slices.Delete(e.prog, i, i+1)
			ev.Kind, ev.Until, ev.Ports = KindGrant, h.Time.Add(s.Window), s.Ports
			dst = append(dst, ev)
		case p > 0:
			dst = t.reset(e, i, ev, dst)
		}
	case !slices.Contains(s.StepStatus, h.Status):
		// Not a knock (a 499 client abort, a path the server actually has):
		// it neither advances nor resets.
	case int(ref.step) == p:
		if p == 0 {
			if e == nil {
				e = t.insert(h.Client)
			}
			e.add(progress{first: h.Time, seq: ref.seq, p: 1})
		} else {
			e.prog[i].p++
		}
		ev.Kind, ev.Step = KindStep, p+1
		dst = append(dst, ev)
	case p > 0 && int(ref.step) == p-1:
		// A reload or a proxy retry of the step just taken.
	case ref.step == 0:
		e.prog[i].p, e.prog[i].first = 1, h.Time
		ev.Kind, ev.Step = KindStep, 1
		dst = append(dst, ev)
	case p > 0:
		dst = t.reset(e, i, ev, dst)
	}
	if e != nil {
		t.settle(e, h.Time, true)
	}
	return dst
}

// reset discards progress e.prog[i] for the hit described by ev.
func (t *Tracker) reset(e *entry, i int, ev Event, dst []Event) []Event {
	seq := e.prog[i].seq
	e.prog = slices.Delete(e.prog, i, i+1)
	ev.Kind = KindReset
	dst = append(dst, ev)
	return t.fail(e, seq, ev.Time, dst)
}

// fail records a failure of e in sequence seq at time at, and locks e out if
// that makes too many.
func (t *Tracker) fail(e *entry, seq int32, at time.Time, dst []Event) []Event {
	if t.lockout.Failures == 0 {
		return dst
	}
	if e.rec == nil {
		e.rec = new(record)
	}
	r := e.rec
	r.fails = slices.DeleteFunc(r.fails, func(f time.Time) bool { return at.Sub(f) >= t.lockout.Period })
	r.fails = append(r.fails, at)
	if len(r.fails) < t.lockout.Failures {
		return dst
	}
	e.prog = e.prog[:0]
	r.fails = nil
	r.lockedUntil = at.Add(t.lockout.Duration)
	return append(dst, Event{Kind: KindLockout, Time: at, Client: e.addr, Sequence: t.seqs[seq].Name, Until: r.lockedUntil})
}

// catchUp discards the progress of e that has expired at now, in the order it
// expired, so that Apply sees the same state whether or not Expire ran first.
func (t *Tracker) catchUp(e *entry, now time.Time, dst []Event) []Event {
	for {
		best := -1
		var bestAt time.Time
		for i, pr := range e.prog {
			s := &t.seqs[pr.seq]
			if now.Sub(pr.first) <= s.Timeout {
				continue
			}
			at := pr.first.Add(s.Timeout)
			if best < 0 || at.Before(bestAt) || at.Equal(bestAt) && s.Name < t.seqs[e.prog[best].seq].Name {
				best, bestAt = i, at
			}
		}
		if best < 0 {
			return dst
		}
		seq := e.prog[best].seq
		e.prog = slices.Delete(e.prog, best, best+1)
		dst = append(dst, Event{Kind: KindTimeout, Time: bestAt, Client: e.addr, Sequence: t.seqs[seq].Name})
		// After a lockout prog is empty, so the loop ends.
		dst = t.fail(e, seq, bestAt, dst)
	}
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

// Expire discards all progress that has expired at now (emitting a timeout
// for each, which counts as a failure and may lock a client out), forgets
// ended lockouts and stale failures, and appends the events to dst ordered
// by time, then client, then sequence name. It scans the whole table.
func (t *Tracker) Expire(now time.Time, dst []Event) []Event {
	start := len(dst)
	for c := range t.lists {
		// An entry that moves from the first list to the second is seen
		// twice; the second time changes nothing.
		root := &t.lists[c].root
		for e := root.next; e != root; {
			next := e.next // settle may unlink e
			dst = t.catchUp(e, now, dst)
			t.settle(e, now, false)
			e = next
		}
	}
	// Stable: a lockout follows the timeout that caused it (same time, client
	// and sequence).
	slices.SortStableFunc(dst[start:], func(a, b Event) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		if c := a.Client.Compare(b.Client); c != 0 {
			return c
		}
		return strings.Compare(a.Sequence, b.Sequence)
	})
	return dst
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
