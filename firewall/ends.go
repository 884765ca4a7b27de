package firewall

import (
	"cmp"
	"container/heap"
	"time"
)

// ends orders the held grants of a family by their end, so that the worker
// finds the next one to end, and those that have ended, without walking
// every grant. An entry whose grant has since been extended, cut or
// removed is stale: it is skipped when it comes to the top, and the heap
// is rebuilt when stale entries outnumber the live ones.
type ends []end

type end struct {
	until time.Time
	k     grantKey
}

func (h ends) Len() int { return len(h) }
func (h ends) Less(i, j int) bool {
	a, b := h[i], h[j]
	return cmp.Or(a.until.Compare(b.until), a.k.src.Addr().Compare(b.k.src.Addr()),
		cmp.Compare(a.k.src.Bits(), b.k.src.Bits()), cmp.Compare(a.k.seq, b.k.seq)) < 0
}
func (h ends) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *ends) Push(x any)   { *h = append(*h, x.(end)) }
func (h *ends) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// setGrant makes g the held grant of k.
func (w *worker) setGrant(k grantKey, g Grant) {
	w.grants[k] = g
	if w.pol.door(g) {
		w.doors[k] = struct{}{}
	} else {
		delete(w.doors, k)
	}
	w.touched[k] = struct{}{}
	w.changed = true
	heap.Push(&w.ends, end{g.Until, k})
	if len(w.ends) > 2*len(w.grants)+64 {
		w.rebuildEnds()
	}
}

// unsetGrant forgets the held grant of k.
func (w *worker) unsetGrant(k grantKey) {
	delete(w.grants, k)
	delete(w.doors, k)
	w.touched[k] = struct{}{}
	w.changed = true
}

func (w *worker) rebuildEnds() {
	w.ends = w.ends[:0]
	for k, g := range w.grants {
		w.ends = append(w.ends, end{g.Until, k})
	}
	heap.Init(&w.ends)
}

// firstEnd is the held grant that ends first.
func (w *worker) firstEnd() (Grant, bool) {
	for len(w.ends) > 0 {
		top := w.ends[0]
		if g, ok := w.grants[top.k]; ok && g.Until.Equal(top.until) {
			return g, true
		}
		heap.Pop(&w.ends)
	}
	return Grant{}, false
}

// endedBy returns the held grants whose until is not after now, in the
// order they end; at most most of them, all when most is 0.
func (w *worker) endedBy(now time.Time, most int) []Grant {
	var out []Grant
	for most == 0 || len(out) < most {
		g, ok := w.firstEnd()
		if !ok || g.Until.After(now) {
			return out
		}
		heap.Pop(&w.ends)
		out = append(out, g)
	}
	return out
}

// behind tells whether the worker has work of its own to do at once: held
// grants that have ended, or entries of ended grants still in the kernel.
// It does it a chunk at a time, between requests.
func (w *worker) behind() bool {
	if w.sw.pending() > 0 {
		return true
	}
	g, ok := w.firstEnd()
	return ok && !g.Until.After(w.f.clock.Now())
}
