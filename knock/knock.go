// Package knock is webknock's pure core: it turns access-log hits into knock
// events (step, reset, timeout, grant, denied, close, lockout, reused), per
// client and sequence, applying each sequence's policy (allow_from, expires,
// grant networks, close page).
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
	"hash"
	"hash/maphash"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Hit is one request from the access log.
type Hit struct {
	Client netip.Addr
	Time   time.Time
	Method string
	Path   string // request target without query/fragment; compared byte for byte
	Status int
	// Input is where the line came from (a log file, syslog:LISTEN); the
	// events of the hit carry it.
	Input string
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
	KindReused                  // a one-time path of a time step that has granted already: it leaked
	KindClose                   // the client requested the close page: its grant ends
	KindDenied                  // the knock page completed the sequence, but its policy refused the grant
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
	case KindReused:
		return "reused"
	case KindClose:
		return "close"
	case KindDenied:
		return "denied"
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
	Until    time.Time // KindGrant: access ends; KindClose: it would have ended; KindLockout: lockout ends
	Ports    []string  // KindGrant, KindClose: the sequence's Ports, shared; do not modify
	// Source is what a grant opens, and what a close ends: Client's
	// address, or its network when the sequence widens grants.
	Source netip.Prefix
	// Reason says why a knock was denied (DeniedSource, DeniedExpired).
	Reason string
	// OneTime is set on the grant and reused events of a one-time sequence;
	// TimeStep is then the time step T of the paths. A grant's T is used
	// from then on: the caller persists it (see SetUsed) before it applies
	// the grant.
	OneTime  bool
	TimeStep int64
	// Input is the Hit's, for the events of a hit; empty for a timeout
	// and a lockout.
	Input string
}

// Tracker holds the knock state of every client. Create it with New.
//
// A Tracker is not safe for concurrent use: callers serialise Apply, Expire
// and the accessors.
type Tracker struct {
	seqs  []Sequence
	paths map[uint64][]pathRef // static paths, by the keyed hash of the path; see lookup
	// One-time paths: the sequences by prefix, the derived paths of the
	// cached time steps (by keyed hash) and, by sequence, which steps are
	// cached and the last used one (noStep if none).
	prefixes     prefixIndex
	derived      map[uint64][]pathRef
	cache        [][]derivedStep
	macs         []hash.Hash // hmac mode: HMAC-SHA256 keyed once, reused
	used         []int64
	grants       map[grantKey]time.Time // of sequences with a close page: until
	refs         []pathRef              // lookup's result, reused
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

// Clients returns the number of entries in the client table.
func (t *Tracker) Clients() int { return len(t.clients) }

// Evicted returns how many entries were evicted because the table was full.
func (t *Tracker) Evicted() uint64 { return t.evicted }

// EvictedProtected returns how many of the evicted entries were protected:
// clients past their first step, or with failures or a lockout on record.
// Anything above zero means real progress (or a lockout) was lost.
func (t *Tracker) EvictedProtected() uint64 { return t.evictedProtected }

// Apply appends the events caused by h to dst and returns it.
func (t *Tracker) Apply(h Hit, dst []Event) []Event {
	// The common case (a path of no sequence) must cost one lookup and
	// change nothing: browsers fetch /favicon.ico, and many users share a proxy.
	for _, ref := range t.lookup(h.Path, h.Time) {
		dst = t.apply(h, ref, dst)
	}
	return dst
}

// apply appends the events of hit h on the sequence path ref.
func (t *Tracker) apply(h Hit, ref pathRef, dst []Event) []Event {
	s := &t.seqs[ref.seq]
	if !slices.Contains(s.Methods, h.Method) {
		return dst
	}
	if ref.step == closePage {
		// Closing only takes access away: no lockout or progress stops it.
		return t.close(h, ref.seq, dst)
	}
	ev := Event{Time: h.Time, Client: h.Client, Sequence: s.Name, Input: h.Input}
	if ref.t != noStep && ref.t <= t.used[ref.seq] {
		// Whatever the client's state: a used step never advances, and
		// whoever requests it holds a URL that leaked.
		ev.Kind, ev.OneTime, ev.TimeStep = KindReused, true, ref.t
		return append(dst, ev)
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
	// In hmac mode all paths of one knock carry the same time step: a
	// path of another step is out of order.
	same := p == 0 || !s.derivesSteps() || t.stepOf(e.prog[i], s) == ref.t
	n := s.steps()
	switch {
	case ref.step == knockPage:
		switch {
		case len(s.KnockPageStatus) > 0 && !slices.Contains(s.KnockPageStatus, h.Status):
			// Not a knock: the page did not answer as configured.
		case p == n && same:
			e.prog = slices.Delete(e.prog, i, i+1)
			if ok, why := s.allows(h.Client, h.Time); !ok {
				// Whoever knocked knows the sequence; this is no
				// failure to lock out, and a one-time step stays unused.
				ev.Kind, ev.Reason = KindDenied, why
				dst = append(dst, ev)
				break
			}
			ev.Kind, ev.Until, ev.Ports, ev.Source = KindGrant, s.until(h.Time), s.Ports, s.source(h.Client)
			if ref.t != noStep {
				t.used[ref.seq] = ref.t
				ev.OneTime, ev.TimeStep = true, ref.t
			}
			t.hold(ev.Source, ref.seq, ev.Until, h.Time)
			dst = append(dst, ev)
		case p > 0:
			dst = t.reset(e, i, ev, dst)
		}
	case !slices.Contains(s.StepStatus, h.Status):
		// Not a knock (a 499 client abort, a path the server actually has):
		// it neither advances nor resets.
	case int(ref.step) == p && same:
		if p == 0 {
			if e == nil {
				e = t.insert(h.Client)
			}
			e.add(t.start(ref, h.Time))
		} else {
			e.prog[i].p++
		}
		ev.Kind, ev.Step = KindStep, p+1
		dst = append(dst, ev)
	case p > 0 && int(ref.step) == p-1 && same:
		// A reload or a proxy retry of the step just taken.
	case ref.step == 0:
		e.prog[i] = t.start(ref, h.Time)
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

// Expire discards all progress that has expired at now (emitting a timeout
// for each, which counts as a failure and may lock a client out), forgets
// ended lockouts, stale failures and ended grants, and appends the events to dst ordered
// by time, then client, then sequence name. It scans the whole table.
func (t *Tracker) Expire(now time.Time, dst []Event) []Event {
	t.sweepGrants(now)
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
