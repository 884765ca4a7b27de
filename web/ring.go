package web

import (
	"sync"

	"github.com/webknock/webknock/knock"
)

// ring keeps the last n events: a flood of knocks overwrites old ones
// instead of growing the list.
type ring struct {
	mu   sync.Mutex
	buf  []knock.Event
	next int // where the next event goes
	full bool
}

func newRing(n int) *ring { return &ring{buf: make([]knock.Event, n)} }

func (r *ring) add(e knock.Event) {
	r.mu.Lock()
	r.buf[r.next] = e
	r.next++
	if r.next == len(r.buf) {
		r.next, r.full = 0, true
	}
	r.mu.Unlock()
}

// newestFirst returns a copy of the events, the latest added first.
func (r *ring) newestFirst() []knock.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.full {
		n = len(r.buf)
	}
	out := make([]knock.Event, 0, n)
	for i := range n {
		out = append(out, r.buf[(r.next-1-i+len(r.buf))%len(r.buf)])
	}
	return out
}
