package main

// This file holds a knock step that arrives before the steps logged ahead
// of it, for the lines of several web servers to come together.

import (
	"net/netip"
	"slices"
	"time"

	"github.com/webknock/webknock/knock"
)

// maxHeld bounds the hits held at once: beyond it, a hit is applied as it
// comes, so nothing a sender does can grow the daemon's memory.
const maxHeld = 1024

// reorder applies hits to the knock tracker in the order they come, but
// holds a hit that is ahead of its client's steps (knock.Tracker.Ahead)
// for up to wait, for the steps logged before it on other web servers to
// arrive: the steps of one knock may reach webknock out of order by as
// much as the senders' delays differ. Once they have, it is applied after
// them; when wait passes first, or a hit of the client logged after it
// comes that it was not waiting for, it is applied as it is, and resets
// the client's progress as it would have at once. Hits in order are
// applied at once: holding costs only the knocks that need it.
//
// Time here is a clock of the caller's: the daemon's wall clock (a hit
// waits for lines that arrive within wait), replay's the lines' own times.
type reorder struct {
	tracker *knock.Tracker
	wait    time.Duration // 0: every hit at once
	held    []heldHit     // in the order they came
	clients map[netip.Addr]int
	events  []knock.Event // reused
}

type heldHit struct {
	h   knock.Hit
	ref int64 // the caller's: replay's line number
	due time.Time
}

// emitFunc receives the events of the hit the caller tagged ref.
type emitFunc func(ref int64, evs []knock.Event)

func newReorder(t *knock.Tracker, wait time.Duration) *reorder {
	return &reorder{tracker: t, wait: wait, clients: map[netip.Addr]int{}}
}

// apply applies h, which came at now and which the caller tags ref, or
// holds it; emit receives the events of h and of the held hits it frees.
func (r *reorder) apply(h knock.Hit, ref int64, now time.Time, emit emitFunc) {
	if r.wait > 0 && len(r.held) < maxHeld && r.tracker.Ahead(h) {
		r.held = append(r.held, heldHit{h: h, ref: ref, due: now.Add(r.wait)})
		r.clients[h.Client]++
		return
	}
	// h is applied now. The client's held hits logged before it go
	// first, as they came: h is not a step they were waiting for, which
	// is logged no later than they are. So a client's steps in the wrong
	// order count as failures, as they would without holding.
	if r.clients[h.Client] > 0 {
		r.releaseOlder(h.Client, h.Time, emit)
	}
	r.run(h, ref, emit)
	r.retry(h.Client, emit)
}

// run applies h to the tracker.
func (r *reorder) run(h knock.Hit, ref int64, emit emitFunc) {
	r.events = r.tracker.Apply(h, r.events[:0])
	if len(r.events) > 0 {
		emit(ref, r.events)
	}
}

// retry applies the hits held for client that are no longer ahead, the
// earliest logged first, until none is left that can go.
func (r *reorder) retry(client netip.Addr, emit emitFunc) {
	for r.clients[client] > 0 {
		best := -1
		for i := range r.held {
			x := &r.held[i]
			if x.h.Client == client && (best < 0 || x.h.Time.Before(r.held[best].h.Time)) && !r.tracker.Ahead(x.h) {
				best = i
			}
		}
		if best < 0 {
			return
		}
		x := r.take(best)
		r.run(x.h, x.ref, emit)
	}
}

// take removes the i-th held hit.
func (r *reorder) take(i int) heldHit {
	x := r.held[i]
	r.held = slices.Delete(r.held, i, i+1)
	if r.clients[x.h.Client]--; r.clients[x.h.Client] <= 0 {
		delete(r.clients, x.h.Client)
	}
	return x
}

// release applies the held hits whose wait is over at now, in the order
// they came, each with what it frees of its client.
func (r *reorder) release(now time.Time, emit emitFunc) {
	for len(r.held) > 0 {
		i := slices.IndexFunc(r.held, func(x heldHit) bool { return !x.due.After(now) })
		if i < 0 {
			return
		}
		x := r.take(i)
		r.run(x.h, x.ref, emit)
		r.retry(x.h.Client, emit)
	}
}

// releaseOlder applies the hits held for client that were logged before
// t, in the order they came, each with what it frees.
func (r *reorder) releaseOlder(client netip.Addr, t time.Time, emit emitFunc) {
	for {
		i := slices.IndexFunc(r.held, func(x heldHit) bool { return x.h.Client == client && x.h.Time.Before(t) })
		if i < 0 {
			return
		}
		x := r.take(i)
		r.run(x.h, x.ref, emit)
		r.retry(x.h.Client, emit)
	}
}

// next returns when the earliest held hit is due.
func (r *reorder) next() (time.Time, bool) {
	if len(r.held) == 0 {
		return time.Time{}, false
	}
	due := r.held[0].due
	for _, x := range r.held[1:] {
		if x.due.Before(due) {
			due = x.due
		}
	}
	return due, true
}

// adopt takes over the hits prev holds: a reload keeps them waiting.
func (r *reorder) adopt(prev *reorder) {
	r.held, r.clients = prev.held, prev.clients
	prev.held, prev.clients = nil, map[netip.Addr]int{}
}
