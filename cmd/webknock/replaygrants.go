package main

// This file holds the grants of a replay to the firewall's bounds on live
// grants, max_grants and the caps by source, with the log's clock: a
// replay shows a refusal where run would refuse.

import (
	"container/heap"
	"errors"
	"net/netip"
	"time"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/knock"
)

// reasonMaxGrants is the reason of a grant refused because the table was
// full; a cap's refusal gives the cap's key.
const reasonMaxGrants = "max_grants"

// replayKey is what the firewall holds a grant by.
type replayKey struct {
	src netip.Prefix
	seq string
}

// replayGrants are the live grants of a replay.
type replayGrants struct {
	max  int
	caps *firewall.CapCounter
	live map[replayKey]time.Time // until
	ends replayEnds
}

func newReplayGrants(fw config.Firewall) *replayGrants {
	return &replayGrants{
		max:  fw.MaxGrants,
		caps: firewall.NewCapCounter(fw.MaxGrantsPerSequence, fw.MaxGrantsPerIPv4Net, fw.MaxGrantsPerIPv6Net),
		live: map[replayKey]time.Time{},
	}
}

// apply holds e to the bounds: a grant the firewall would refuse becomes a
// denied event, with the bound as its reason; a close ends its grant.
func (r *replayGrants) apply(e *knock.Event) {
	switch e.Kind {
	case knock.KindGrant:
		if err := r.grant(e); err != nil {
			reason := reasonMaxGrants
			if ce := (*firewall.CapError)(nil); errors.As(err, &ce) {
				reason = ce.Cap.String()
			}
			e.Kind, e.Reason, e.Until, e.Ports = knock.KindDenied, reason, time.Time{}, nil
		}
	case knock.KindClose:
		r.expire(e.Time)
		k := replayKey{e.Source.Masked(), e.Sequence}
		if _, ok := r.live[k]; ok {
			delete(r.live, k)
			r.caps.Release(k.src, k.seq)
		}
	}
}

// grant takes or extends the grant of e, or returns why the firewall
// would refuse it: the caps first, then the table, as the firewall does.
func (r *replayGrants) grant(e *knock.Event) error {
	r.expire(e.Time)
	k := replayKey{e.Source.Masked(), e.Sequence}
	if until, ok := r.live[k]; ok {
		if e.Until.After(until) {
			r.live[k] = e.Until
			heap.Push(&r.ends, replayEnd{e.Until, k})
		}
		return nil
	}
	if err := r.caps.Take(k.src, k.seq); err != nil {
		return err
	}
	if len(r.live) >= r.max {
		r.caps.Release(k.src, k.seq)
		return firewall.ErrTableFull
	}
	r.live[k] = e.Until
	heap.Push(&r.ends, replayEnd{e.Until, k})
	return nil
}

// expire ends the grants whose until is not after now.
func (r *replayGrants) expire(now time.Time) {
	for len(r.ends) > 0 && !r.ends[0].until.After(now) {
		top := heap.Pop(&r.ends).(replayEnd)
		if until, ok := r.live[top.k]; ok && until.Equal(top.until) {
			delete(r.live, top.k)
			r.caps.Release(top.k.src, top.k.seq)
		}
	}
}

// replayEnds orders the live grants by their end; an entry whose grant was
// extended or closed is skipped when it comes to the top.
type replayEnds []replayEnd

type replayEnd struct {
	until time.Time
	k     replayKey
}

func (h replayEnds) Len() int { return len(h) }
func (h replayEnds) Less(i, j int) bool {
	return h[i].until.Before(h[j].until)
}
func (h replayEnds) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *replayEnds) Push(x any)   { *h = append(*h, x.(replayEnd)) }
func (h *replayEnds) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
