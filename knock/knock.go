// Package knock is webknock's pure core: it turns access-log hits into knock
// events (step, reset, timeout, grant, lockout), per client and sequence.
//
// It does no I/O, reads no clock and starts no goroutines: every time comes
// from the log lines themselves, so a replay gives the same events as the live
// run did.
package knock

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultMaxClients bounds the client table when Config.MaxClients is 0.
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
	Sequences  []Sequence
	Lockout    Lockout
	MaxClients int // bound of the client table; 0 means DefaultMaxClients
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
	seqs    []Sequence
	paths   map[string]pathRef
	lockout Lockout
	max     int
	clients map[netip.Addr]*entry
	lru     entry // sentinel of the recency list: lru.next is the most recently touched
	evicted uint64
}

// knockPage marks the knock page in pathRef.step.
const knockPage = -1

// pathRef locates a path: which sequence, which step (or knockPage).
type pathRef struct {
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
// there is something to remember, and is kept small because a flood of first
// knocks fills the table with them.
type entry struct {
	addr        netip.Addr
	prev, next  *entry
	prog        []progress // only sequences with p > 0, ordered by seq
	fails       []time.Time
	lockedUntil time.Time
	// inline backs prog for the usual single sequence in progress, so a new
	// client costs one allocation.
	inline [1]progress
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
		paths:   make(map[string]pathRef),
		lockout: lo,
		max:     maxClients,
		clients: make(map[netip.Addr]*entry),
	}
	t.lru.next, t.lru.prev = &t.lru, &t.lru
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
				t.paths[path] = pathRef{seq: int32(i), step: step}
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

// Apply appends the events caused by h to dst and returns it.
func (t *Tracker) Apply(h Hit, dst []Event) []Event {
	// The common case (a path of no sequence) must cost one lookup and
	// change nothing: browsers fetch /favicon.ico, and many users share a proxy.
	ref, ok := t.paths[h.Path]
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
		if e.lockedUntil.After(h.Time) {
			return dst
		}
		dst = t.catchUp(e, h.Time, dst)
		// A lockout caused by a timeout just now also swallows this hit.
		if e.lockedUntil.After(h.Time) {
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
		t.tidy(e, h.Time)
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
	e.fails = slices.DeleteFunc(e.fails, func(f time.Time) bool { return at.Sub(f) >= t.lockout.Period })
	e.fails = append(e.fails, at)
	if len(e.fails) < t.lockout.Failures {
		return dst
	}
	e.prog = e.prog[:0]
	e.fails = nil
	e.lockedUntil = at.Add(t.lockout.Duration)
	return append(dst, Event{Kind: KindLockout, Time: at, Client: e.addr, Sequence: t.seqs[seq].Name, Until: e.lockedUntil})
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

// tidy forgets what no longer matters at now, and the entry itself if
// nothing is left.
func (t *Tracker) tidy(e *entry, now time.Time) {
	if !e.lockedUntil.IsZero() && !e.lockedUntil.After(now) {
		e.lockedUntil = time.Time{}
	}
	if len(e.fails) > 0 {
		e.fails = slices.DeleteFunc(e.fails, func(f time.Time) bool { return now.Sub(f) >= t.lockout.Period })
		if len(e.fails) == 0 {
			e.fails = nil
		}
	}
	if len(e.prog) == 0 && len(e.fails) == 0 && e.lockedUntil.IsZero() {
		t.remove(e)
	}
}

// Expire discards all progress that has expired at now (emitting a timeout
// for each, which counts as a failure and may lock a client out), forgets
// ended lockouts and stale failures, and appends the events to dst ordered
// by time, then client, then sequence name. It scans the whole table.
func (t *Tracker) Expire(now time.Time, dst []Event) []Event {
	start := len(dst)
	for e := t.lru.next; e != &t.lru; {
		next := e.next // tidy may unlink e
		dst = t.catchUp(e, now, dst)
		t.tidy(e, now)
		e = next
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

// insert creates the entry of a new client, evicting the least recently
// touched one if the table is full.
func (t *Tracker) insert(addr netip.Addr) *entry {
	if len(t.clients) >= t.max {
		t.remove(t.lru.prev)
		t.evicted++
	}
	e := &entry{addr: addr}
	e.prog = e.inline[:0]
	t.clients[addr] = e
	e.prev, e.next = &t.lru, t.lru.next
	e.prev.next, e.next.prev = e, e
	return e
}

// touch marks e as the most recently used entry.
func (t *Tracker) touch(e *entry) {
	if t.lru.next == e {
		return
	}
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = &t.lru, t.lru.next
	e.prev.next, e.next.prev = e, e
}

// remove deletes e from the table; removing it twice is harmless.
func (t *Tracker) remove(e *entry) {
	if e.next == nil {
		return
	}
	delete(t.clients, e.addr)
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}
