package knock

// This file finds the sequence paths a request names: static paths in a
// table built once, one-time paths derived per time step and cached.

import (
	"crypto/subtle"
	"hash/maphash"
	"math"
	"slices"
	"strings"
	"time"
)

// knockPage and closePage mark those pages in pathRef.step.
const (
	knockPage = -1
	closePage = -2
)

// noStep is the time step of a static path.
const noStep = math.MinInt64

// pathRef locates a path: which sequence, which step (or knockPage), and
// for a one-time path the time step it carries (else noStep).
type pathRef struct {
	path string
	seq  int32
	step int32
	t    int64
}

// prefixGroup is the one-time sequences sharing a prefix.
type prefixGroup struct {
	prefix string
	seqs   []int32
}

// prefixIndex finds the one-time prefixes a path starts with in a lookup
// per distinct prefix length, so a site with a sequence (and a prefix) per
// user pays for its users only when a path is one of theirs.
type prefixIndex struct {
	groups []prefixGroup  // in the order of the configuration
	byText map[string]int // prefix -> index in groups
	lens   []int          // the distinct lengths of the prefixes, ascending
}

// add files sequence si under prefix.
func (x *prefixIndex) add(prefix string, si int32) {
	if x.byText == nil {
		x.byText = map[string]int{}
	}
	g, ok := x.byText[prefix]
	if !ok {
		g = len(x.groups)
		x.byText[prefix] = g
		x.groups = append(x.groups, prefixGroup{prefix: prefix})
		if i, found := slices.BinarySearch(x.lens, len(prefix)); !found {
			x.lens = slices.Insert(x.lens, i, len(prefix))
		}
	}
	x.groups[g].seqs = append(x.groups[g].seqs, si)
}

// matching calls fn for each group whose prefix path starts with.
func (x *prefixIndex) matching(path string, fn func(g *prefixGroup)) {
	for _, l := range x.lens {
		if l >= len(path) {
			return
		}
		if g, ok := x.byText[path[:l]]; ok {
			fn(&x.groups[g])
		}
	}
}

// derivedStep is the paths of one time step of a one-time sequence.
type derivedStep struct {
	t     int64
	paths []string
}

// extraCached is how many time steps beyond the 2*skew+1 of one line a
// sequence keeps derived: lines of several web servers arrive a little
// out of order, and a step just evicted costs an HMAC per path to derive.
const extraCached = 2

// Needles returns the literal strings of which a request that may knock
// holds at least one: every static path and every one-time prefix. A
// reader can drop lines holding none of them before parsing.
func (t *Tracker) Needles() []string {
	var out []string
	for _, s := range t.seqs {
		out = append(out, s.Steps...)
		if s.OneTime == nil {
			out = append(out, s.KnockPage)
		}
		if s.ClosePage != "" {
			out = append(out, s.ClosePage)
		}
	}
	for _, g := range t.prefixes.groups {
		out = append(out, g.prefix)
	}
	return out
}

// MayKnock reports whether path is a static path of a sequence or has the
// shape of a one-time path (a prefix and a token or code of the right
// length), whatever its time step.
func (t *Tracker) MayKnock(path string) bool {
	for _, ref := range t.paths[maphash.String(t.seed, path)] {
		if ref.path == path {
			return true
		}
	}
	found := false
	t.prefixes.matching(path, func(g *prefixGroup) { found = found || t.shaped(g, path) })
	return found
}

// LooksOneTime reports whether path has the shape of a one-time path of a
// sequence with prefix and mode: the prefix, then a token (hmac) or a code
// (totp). A static path of that shape is refused, as it could collide.
func LooksOneTime(path, prefix string, mode Mode) bool {
	rest, ok := strings.CutPrefix(path, prefix)
	if !ok {
		return false
	}
	switch mode {
	case ModeHMAC:
		return len(rest) == TokenLen && strings.Trim(rest, base64URLChars) == ""
	case ModeTOTP:
		return len(rest) == CodeLen && strings.Trim(rest, "0123456789") == ""
	}
	return false
}

const base64URLChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// shaped reports whether path may be a one-time path of a sequence of g.
func (t *Tracker) shaped(g *prefixGroup, path string) bool {
	for _, si := range g.seqs {
		if LooksOneTime(path, g.prefix, t.seqs[si].OneTime.Mode) {
			return true
		}
	}
	return false
}

// lookup returns the sequence paths equal to path at time at, ordered by
// sequence: at most one static path, and one-time paths whose time step is
// within the skew of at's (two totp sequences may show the same code). The
// slice is reused by the next call.
//
// The secret paths are never compared byte by byte with a request's: the
// path is hashed with a key chosen at start, and only a path with the same
// keyed hash is compared, in constant time, so the time taken says nothing
// about how much of a secret a request got right.
func (t *Tracker) lookup(path string, at time.Time) []pathRef {
	refs := t.refs[:0]
	h := maphash.String(t.seed, path)
	for _, ref := range t.paths[h] {
		if subtle.ConstantTimeCompare([]byte(ref.path), []byte(path)) == 1 {
			refs = append(refs, ref)
		}
	}
	derived := false
	t.prefixes.matching(path, func(g *prefixGroup) {
		if !t.shaped(g, path) {
			return
		}
		for _, si := range g.seqs {
			if lo, hi, ok := t.window(si, at); ok {
				for ts := lo; ts <= hi; ts++ {
					t.deriveStep(si, ts, (lo+hi)/2)
				}
			}
		}
		derived = true
	})
	if derived {
		for _, ref := range t.derived[h] {
			lo, hi, ok := t.window(ref.seq, at)
			if ok && ref.t >= lo && ref.t <= hi &&
				subtle.ConstantTimeCompare([]byte(ref.path), []byte(path)) == 1 {
				refs = append(refs, ref)
			}
		}
		slices.SortFunc(refs, func(a, b pathRef) int { return int(a.seq - b.seq) })
	}
	t.refs = refs
	return refs
}

// window returns the time steps of sequence si that a line at time at
// accepts: its own, and skew either side. A time so far from now that the
// steps would overflow accepts none.
func (t *Tracker) window(si int32, at time.Time) (lo, hi int64, ok bool) {
	ot := t.seqs[si].OneTime
	now := TimeStep(at, ot.Period)
	if now <= math.MinInt64/2 || now >= math.MaxInt64/2 {
		return 0, 0, false
	}
	return now - int64(ot.Skew), now + int64(ot.Skew), true
}

// deriveStep caches the paths of time step ts of sequence si; when the
// cache is full, the step farthest from now goes.
func (t *Tracker) deriveStep(si int32, ts, now int64) {
	cache := t.cache[si]
	for _, ds := range cache {
		if ds.t == ts {
			return
		}
	}
	s := &t.seqs[si]
	ot := s.OneTime
	if len(cache) >= 2*ot.Skew+1+extraCached {
		far := 0
		for i, ds := range cache {
			if distance(ds.t, now) > distance(cache[far].t, now) {
				far = i
			}
		}
		t.forget(si, cache[far])
		cache = slices.Delete(cache, far, far+1)
	}
	ds := derivedStep{t: ts}
	if ot.Mode == ModeTOTP {
		ds.paths = []string{ot.Prefix + Code(ot.Key, ts)}
	} else {
		if t.macs[si] == nil {
			t.macs[si] = newTokenMAC(ot.Key)
		}
		ds.paths = make([]string, ot.Steps+1)
		for i := range ds.paths {
			ds.paths[i] = ot.Prefix + tokenWith(t.macs[si], s.Name, i+1, ts)
		}
	}
	for i, p := range ds.paths {
		step := int32(i)
		if i == len(ds.paths)-1 {
			step = knockPage
		}
		h := maphash.String(t.seed, p)
		t.derived[h] = append(t.derived[h], pathRef{path: p, seq: si, step: step, t: ts})
	}
	t.cache[si] = append(cache, ds)
}

// forget removes the paths of ds, a cached step of sequence si.
func (t *Tracker) forget(si int32, ds derivedStep) {
	for _, p := range ds.paths {
		h := maphash.String(t.seed, p)
		refs := slices.DeleteFunc(t.derived[h], func(r pathRef) bool { return r.seq == si && r.t == ds.t })
		if len(refs) == 0 {
			delete(t.derived, h)
		} else {
			t.derived[h] = refs
		}
	}
}

// distance returns |a-b|, saturated.
func distance(a, b int64) uint64 {
	if a > b {
		return uint64(a) - uint64(b)
	}
	return uint64(b) - uint64(a)
}

// derivesSteps reports whether s's steps are one-time paths (hmac mode).
func (s *Sequence) derivesSteps() bool {
	return s.OneTime != nil && s.OneTime.Mode == ModeHMAC
}

// start returns the progress of a knock whose first step is ref, at at.
func (t *Tracker) start(ref pathRef, at time.Time) progress {
	pr := progress{first: at, seq: ref.seq, p: 1}
	if s := &t.seqs[ref.seq]; s.derivesSteps() {
		pr.dt = int8(ref.t - TimeStep(at, s.OneTime.Period))
	}
	return pr
}

// stepOf returns the time step of the paths of pr, a knock of s in hmac mode.
func (t *Tracker) stepOf(pr progress, s *Sequence) int64 {
	return TimeStep(pr.first, s.OneTime.Period) + int64(pr.dt)
}
