package firewall

import (
	"context"
	"time"
)

// sweepChunk is the most entries deleted in one call of the worker: a mass
// expiry (or the revoke of a whole network) is deleted in chunks, and a
// knock that arrives meanwhile waits for one chunk at most, not for all.
// One chunk is one netlink batch (nftables) or one ipset restore: a few
// milliseconds.
const sweepChunk = 128

// breatherPause is how long the worker waits before each chunk of work
// of its own. Busy without a pause, it would keep a CPU from the Go
// runtime's poll for I/O, and a knock read from the log meanwhile would
// reach the worker only when the runtime preempts it, 10 ms later. With
// the pause, the knock is queued, and served, before the next chunk.
const breatherPause = 100 * time.Microsecond

// The sweep: entries of grants that have ended, to be deleted from the
// kernel, oldest end first. The grants themselves are already gone from
// the worker's table (their hooks told, the state file written); only the
// kernel is behind, and the kernel's own timeouts end the entries at the
// same time anyway. The worker drains the sweep a chunk at a time,
// between requests.
type sweep struct {
	queue []entry
	in    map[entry]struct{} // the entries queue holds that are still to go
	// Work of more than a chunk (a mass expiry, a large revoke): when it
	// began and how many entries it deleted, for the log when it ends.
	began time.Time
	taken int
}

// push appends es to the sweep; front puts them before the others.
func (s *sweep) push(es []entry, front bool) {
	if s.in == nil {
		s.in = map[entry]struct{}{}
	}
	var add []entry
	for _, e := range es {
		if _, ok := s.in[e]; !ok {
			s.in[e] = struct{}{}
			add = append(add, e)
		}
	}
	if front {
		s.queue = append(add, s.queue...)
		return
	}
	s.queue = append(s.queue, add...)
}

// drop takes es out of the sweep: they are wanted again.
func (s *sweep) drop(es []entry) {
	for _, e := range es {
		delete(s.in, e)
	}
}

// take removes up to n entries from the front of the sweep, skipping those
// dropped.
func (s *sweep) take(n int) []entry {
	var out []entry
	i := 0
	for ; i < len(s.queue) && len(out) < n; i++ {
		e := s.queue[i]
		if _, ok := s.in[e]; ok {
			delete(s.in, e)
			out = append(out, e)
		}
	}
	clear(s.queue[:i])
	s.queue = s.queue[i:]
	if len(s.in) == 0 {
		s.queue = nil
	}
	return out
}

// pending is the number of entries the sweep holds.
func (s *sweep) pending() int { return len(s.in) }

// entries are the entries still to go, for the integrity check: they are
// not extra.
func (s *sweep) entries() []entry {
	out := make([]entry, 0, len(s.in))
	for e := range s.in {
		out = append(out, e)
	}
	return out
}

// retire deletes es: the first chunk of the sweep now, the rest between
// requests. front: before the entries already waiting (a revoke goes before
// an expiry).
func (w *worker) retire(ctx context.Context, es []entry, front bool) error {
	w.sw.push(es, front)
	return w.sweepChunk(ctx)
}

// sweepChunk deletes one chunk of the sweep.
func (w *worker) sweepChunk(ctx context.Context) error {
	es := w.sw.take(sweepChunk)
	w.sw.taken += len(es)
	return w.del(ctx, es...)
}

// startMass notes that the worker has more than a chunk of work of its
// own (behind): its end is logged by endMass, with the entries deleted and
// how long it took.
func (w *worker) startMass() {
	if w.sw.began.IsZero() {
		w.sw.began, w.sw.taken = time.Now(), 0
	}
}

func (w *worker) endMass() {
	if w.sw.began.IsZero() || w.behind() {
		return
	}
	w.log.Info("ended grants' entries deleted", keyFamily, w.fam, keyCount, w.sw.taken, keyTook, time.Since(w.sw.began))
	w.sw.began = time.Time{}
}
