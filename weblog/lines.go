package weblog

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"io"
	"math/bits"
	"slices"
)

// MaxLineBytes is the longest line that is parsed. A request line, referer
// and user agent are each held to 8 KiB by default web server limits; a
// longer line cannot be a knock and is skipped (and counted).
const MaxLineBytes = 64 << 10

// chunkBytes is the read size of ScanLines; it must exceed MaxLineBytes.
const chunkBytes = 1 << 20

// ScanStats counts what ScanLines read.
type ScanStats struct {
	Lines    int64 // every line, the last one even without a newline
	Examined int64 // lines handed to the callback
	Overlong int64 // lines over MaxLineBytes that could not be examined
}

// ScanLines reads r to its end and calls fn, in order, for every line that
// contains at least one of needles (every line when needles is nil), with
// its 1-based number and without its newline. The line is only valid during
// the call. Lines longer than MaxLineBytes are skipped and counted; the line
// after one is read normally.
//
// Checking needles on whole chunks rather than line by line is what lets a
// replay of a large log run at close to the speed of reading it: a knock path
// is made of bytes that no log format escapes, so a line whose request could
// knock always holds the path's bytes verbatim.
func ScanLines(r io.Reader, needles [][]byte, fn func(lineNo int64, line []byte) error) (ScanStats, error) {
	var (
		st      ScanStats
		buf     = make([]byte, chunkBytes+MaxLineBytes)
		carry   int  // bytes of an unfinished line at buf[:carry]
		discard bool // inside an overlong line, dropping bytes to its newline
		filter  = NewFilter(needles)
	)
	// pick hands the lines of chunk that the filter picks to fn, numbered
	// from base, the number of the line before chunk.
	pick := func(chunk []byte, base int64) error {
		no, pos := base, 0
		return filter.Lines(chunk, func(at int, line []byte) error {
			no += int64(bytes.Count(chunk[pos:at], []byte{'\n'})) + 1
			pos = at + len(line) + 1
			if len(line) > MaxLineBytes {
				st.Overlong++
				return nil
			}
			st.Examined++
			return fn(no, line)
		})
	}
	for {
		n, rerr := r.Read(buf[carry:])
		data := buf[:carry+n]
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return st, rerr
		}
		eof := errors.Is(rerr, io.EOF)
		if discard {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				carry = 0
				if eof {
					return st, nil
				}
				continue
			}
			discard = false
			data = data[i+1:]
		}
		last := bytes.LastIndexByte(data, '\n')
		if whole := data[:last+1]; len(whole) > 0 {
			base := st.Lines
			st.Lines += int64(bytes.Count(whole, []byte{'\n'}))
			if err := pick(whole, base); err != nil {
				return st, err
			}
		}
		rest := data[last+1:]
		if eof {
			if len(rest) > 0 {
				st.Lines++
				if err := pick(rest, st.Lines-1); err != nil {
					return st, err
				}
			}
			return st, nil
		}
		if len(rest) > MaxLineBytes {
			st.Lines++
			st.Overlong++
			discard = true
			carry = 0
			continue
		}
		carry = copy(buf, rest)
	}
}

// Filter picks the lines of chunks of whole lines that hold at least one
// of its needles. It learns the log's byte frequencies from the first
// chunks it sees, so one Filter serves one stream of lines (or several of
// one kind); it is not safe for concurrent use.
type Filter struct {
	m      *matcher // nil: every line is picked
	starts []int
}

// NewFilter returns a Filter that picks the lines holding one of needles;
// with nil needles, or an empty one, it picks every line.
func NewFilter(needles [][]byte) *Filter {
	if needles == nil {
		return &Filter{}
	}
	m := newMatcher(needles)
	if m.every {
		return &Filter{}
	}
	return &Filter{m: m}
}

// Lines calls fn, in order, for every line of chunk that the filter picks,
// with its offset in chunk and without its newline; an error of fn stops
// it and is returned. chunk holds whole lines: only the last may lack its
// newline. line is only valid during the call.
func (f *Filter) Lines(chunk []byte, fn func(at int, line []byte) error) error {
	if f.m == nil {
		for at := 0; at < len(chunk); {
			end := bytes.IndexByte(chunk[at:], '\n')
			if end < 0 {
				end = len(chunk) - at
			}
			if err := fn(at, chunk[at:at+end]); err != nil {
				return err
			}
			at += end + 1
		}
		return nil
	}
	f.m.learn(chunk)
	f.starts = f.m.lineStarts(chunk, f.starts[:0])
	for _, s := range f.starts {
		end := bytes.IndexByte(chunk[s:], '\n')
		if end < 0 {
			end = len(chunk) - s
		}
		if err := fn(s, chunk[s:s+end]); err != nil {
			return err
		}
	}
	return nil
}

// Finding the needles. A knock path starts with '/', among the most common
// bytes of a log line, so searching for a needle's first byte would stop
// every few bytes. Each needle is found instead by a probe byte: one that is
// rare in the log and common to many needles, so a single bytes.IndexByte
// pass over a chunk stops only where some of them may be. At a stop the
// bytes around the probe byte, read as one integer key, are looked up among
// the keys of the probe's needles (a bit set, then a binary search), and
// only needles with that key are compared: a stop costs about the same for
// one needle as for thousands.

// planSample is how much of the log's start the probe bytes are chosen on.
const planSample = 256 << 10

// stopCost is what a stop of a probe's pass costs, in bytes the pass reads in
// the same time: bytes.IndexByte reads some 40 GB/s, a stop takes 15-20 ns.
const stopCost = 600

// directKeys is the most needles of a key group compared without a lookup.
const directKeys = 4

// matcher finds the lines of a chunk that hold one of its needles.
type matcher struct {
	needles [][]byte
	every   bool       // an empty needle, which every line holds
	freq    [256]int64 // byte counts of the log's first planSample bytes
	sampled int
	probes  []probe // nil: not planned since the last sample
}

type probe struct {
	c byte
	// The bytes next to c in its needles, when all of them have one there:
	// a cheap first test at a stop ('k' is common in logs, "/k/" is not).
	hasPrev, hasNext bool
	prev, next       [256]bool
	groups           []keyGroup
	needles          [][]byte
}

// keyGroup holds needles of a probe whose key is the keyLen bytes that start
// before bytes ahead of the probe byte.
type keyGroup struct {
	before, keyLen int
	mask           uint64   // keeps keyLen bytes of a little-endian load
	anchors        []anchor // sorted by key
	// With more than directKeys anchors, a bit for the hash of every key.
	shift  uint
	filter []uint64
}

// anchor is needles[needle] of a probe, whose probe byte is at off.
type anchor struct {
	key         uint64
	off, needle int32
}

func newMatcher(needles [][]byte) *matcher {
	m := &matcher{}
	for _, nd := range needles {
		switch {
		case len(nd) == 0:
			m.every = true
		case bytes.IndexByte(nd, '\n') < 0: // no line holds a newline
			m.needles = append(m.needles, nd)
		}
	}
	m.needles = minimalNeedles(m.needles)
	return m
}

// minimalNeedles drops repeated needles and needles that hold another (a
// line holding the longer one holds the shorter), unless finding the latter
// would take long: they cost only time.
func minimalNeedles(needles [][]byte) [][]byte {
	// Shortest first, so that each needle is checked against all shorter
	// ones. (Sorting indices: sorting slices would move pointers.)
	order := make([]int32, len(needles))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortStableFunc(order, func(a, b int32) int { return len(needles[a]) - len(needles[b]) })
	var lens []int // the needles' lengths, ascending
	work := 0
	for _, i := range order {
		l := len(needles[i])
		if len(lens) == 0 || lens[len(lens)-1] < l {
			lens = append(lens, l)
		}
		for _, shorter := range lens[:len(lens)-1] {
			work += l - shorter + 1
		}
	}
	contained := work <= 1<<20
	kept := make(map[string]bool, len(needles))
	out := make([][]byte, 0, len(needles))
next:
	for _, i := range order {
		nd := needles[i]
		if kept[string(nd)] {
			continue
		}
		for _, l := range lens {
			if !contained || l >= len(nd) {
				break
			}
			for s := 0; s+l <= len(nd); s++ {
				if kept[string(nd[s:s+l])] {
					continue next
				}
			}
		}
		kept[string(nd)] = true
		out = append(out, nd)
	}
	return out
}

// learn counts the bytes of the log's start, which the probes are chosen on.
func (m *matcher) learn(chunk []byte) {
	if m.sampled >= planSample {
		return
	}
	chunk = chunk[:min(len(chunk), planSample-m.sampled)]
	for _, c := range chunk {
		m.freq[c]++
	}
	m.sampled += len(chunk)
	m.probes = nil
}

// lineStarts returns in dst, sorted and unique, the start offsets of the
// lines of chunk that hold a needle. Only the last line may lack a newline.
func (m *matcher) lineStarts(chunk []byte, dst []int) []int {
	if m.probes == nil {
		m.plan()
	}
	dst = dst[:0]
	for p := range m.probes {
		pr := &m.probes[p]
		for from := 0; from < len(chunk); {
			i := bytes.IndexByte(chunk[from:], pr.c)
			if i < 0 {
				break
			}
			i += from
			if !pr.match(chunk, i) {
				from = i + 1
				continue
			}
			dst = append(dst, bytes.LastIndexByte(chunk[:i], '\n')+1)
			end := bytes.IndexByte(chunk[i:], '\n')
			if end < 0 {
				break
			}
			from = i + end + 1
		}
	}
	if len(m.probes) > 1 {
		slices.Sort(dst)
		dst = slices.Compact(dst)
	}
	return dst
}

// plan chooses probe bytes that cover every needle at the least cost, a
// pass and a stop at every occurrence (greedy weighted set cover on the
// sample's byte counts), and groups each probe's needles by key.
func (m *matcher) plan() {
	cost := func(c int) float64 { return float64(m.sampled+1) + stopCost*float64(m.freq[c]) }
	sets := make([]byteSet, len(m.needles))
	open := make([]int, len(m.needles))
	for i, nd := range m.needles {
		for _, c := range nd {
			sets[i].add(c)
		}
		open[i] = i
	}
	var chosen byteSet
	var order []int
	for len(open) > 0 {
		var n [256]int
		for _, i := range open {
			for c := range sets[i].all() {
				n[c]++
			}
		}
		best := -1
		for c := range 256 {
			if n[c] > 0 && (best < 0 || cost(c)*float64(n[best]) < cost(best)*float64(n[c])) {
				best = c
			}
		}
		chosen.add(byte(best))
		order = append(order, best)
		open = slices.DeleteFunc(open, func(i int) bool { return sets[i].has(byte(best)) })
	}
	// A rare byte chosen early is wasted once a common byte that covers its
	// needles too is chosen: drop such bytes, the costliest first.
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(m.freq[b], m.freq[a]) })
	for _, c := range order {
		rest := chosen
		rest.del(byte(c))
		if !slices.ContainsFunc(sets, func(s byteSet) bool { return !s.meets(rest) }) {
			chosen = rest
		}
	}
	var byProbe [256][][]byte
	for i, nd := range m.needles {
		best := -1
		for c := range sets[i].all() {
			if chosen.has(byte(c)) && (best < 0 || m.freq[c] < m.freq[best]) {
				best = c
			}
		}
		byProbe[best] = append(byProbe[best], nd)
	}
	m.probes = []probe{}
	for c, nds := range byProbe {
		if len(nds) > 0 {
			m.probes = append(m.probes, newProbe(byte(c), nds))
		}
	}
}

// newProbe groups needles, which all hold c, by where their key is. A key
// is min(8, len) bytes of the needle around an occurrence of c; needles of
// one group have keys of the same length at the same place relative to c.
func newProbe(c byte, needles [][]byte) probe {
	pr := probe{c: c, needles: needles}
	fits := make([]uint8, len(needles)) // bit b: a key may start b bytes before a c
	for i, nd := range needles {
		kl := min(8, len(nd))
		for off, x := range nd {
			if x == c {
				for b := max(0, off+kl-len(nd)); b <= min(off, kl-1); b++ {
					fits[i] |= 1 << b
				}
			}
		}
	}
	for left := len(needles); left > 0; {
		var n [9][8]int
		for i, nd := range needles {
			for f := fits[i]; f != 0; f &= f - 1 {
				n[min(8, len(nd))][bits.TrailingZeros8(f)]++
			}
		}
		kl, before := 0, 0
		for l := range n {
			for b := range n[l] {
				if n[l][b] > n[kl][before] {
					kl, before = l, b
				}
			}
		}
		g := keyGroup{before: before, keyLen: kl, mask: ^uint64(0) >> (64 - 8*kl)}
		for i, nd := range needles {
			if fits[i]&(1<<before) == 0 || min(8, len(nd)) != kl {
				continue
			}
			fits[i] = 0
			left--
			off := before
			for nd[off] != c || off+kl-before > len(nd) {
				off++
			}
			g.anchors = append(g.anchors, anchor{key: keyOf(nd[off-before : off-before+kl]), off: int32(off), needle: int32(i)})
		}
		g.index()
		pr.groups = append(pr.groups, g)
	}
	pr.hasPrev, pr.hasNext = true, true
	for _, g := range pr.groups {
		for _, a := range g.anchors {
			pr.hasPrev = pr.hasPrev && a.off > 0
			pr.hasNext = pr.hasNext && int(a.off)+1 < len(needles[a.needle])
		}
	}
	for _, g := range pr.groups {
		for _, a := range g.anchors {
			if pr.hasPrev {
				pr.prev[needles[a.needle][a.off-1]] = true
			}
			if pr.hasNext {
				pr.next[needles[a.needle][a.off+1]] = true
			}
		}
	}
	return pr
}

func (g *keyGroup) index() {
	slices.SortFunc(g.anchors, func(a, b anchor) int { return cmp.Compare(a.key, b.key) })
	if len(g.anchors) <= directKeys {
		return
	}
	nbits := max(6, bits.Len(uint(16*len(g.anchors)-1))) // ≥ 16 bits a key: few false hits
	g.shift = uint(64 - nbits)
	g.filter = make([]uint64, 1<<(nbits-6))
	for _, a := range g.anchors {
		h := hashKey(a.key) >> g.shift
		g.filter[h>>6] |= 1 << (h & 63)
	}
}

// match reports whether a needle of pr holds the probe byte at chunk[i].
func (pr *probe) match(chunk []byte, i int) bool {
	if pr.hasPrev && (i == 0 || !pr.prev[chunk[i-1]]) || pr.hasNext && (i+1 == len(chunk) || !pr.next[chunk[i+1]]) {
		return false
	}
	for gi := range pr.groups {
		g := &pr.groups[gi]
		k := i - g.before
		if k < 0 || k+g.keyLen > len(chunk) {
			continue
		}
		var key uint64
		if k+8 <= len(chunk) {
			key = binary.LittleEndian.Uint64(chunk[k:]) & g.mask
		} else {
			key = keyOf(chunk[k : k+g.keyLen])
		}
		j := 0
		if g.filter != nil {
			if h := hashKey(key) >> g.shift; g.filter[h>>6]&(1<<(h&63)) == 0 {
				continue
			}
			j, _ = slices.BinarySearchFunc(g.anchors, key, func(a anchor, k uint64) int { return cmp.Compare(a.key, k) })
		}
		for ; j < len(g.anchors) && g.anchors[j].key <= key; j++ {
			a := &g.anchors[j]
			nd := pr.needles[a.needle]
			st := i - int(a.off)
			if a.key == key && st >= 0 && st+len(nd) <= len(chunk) && bytes.Equal(chunk[st:st+len(nd)], nd) {
				return true
			}
		}
	}
	return false
}

// keyOf reads up to 8 bytes as a little-endian integer.
func keyOf(b []byte) uint64 {
	var k uint64
	for j := len(b) - 1; j >= 0; j-- {
		k = k<<8 | uint64(b[j])
	}
	return k
}

// hashKey spreads a key over the high bits (Fibonacci hashing).
func hashKey(k uint64) uint64 { return k * 0x9e3779b97f4a7c15 }

type byteSet [4]uint64

func (s *byteSet) add(c byte)           { s[c>>6] |= 1 << (c & 63) }
func (s *byteSet) del(c byte)           { s[c>>6] &^= 1 << (c & 63) }
func (s *byteSet) has(c byte) bool      { return s[c>>6]&(1<<(c&63)) != 0 }
func (s *byteSet) meets(t byteSet) bool { return s[0]&t[0]|s[1]&t[1]|s[2]&t[2]|s[3]&t[3] != 0 }

// all yields the bytes of s in order.
func (s *byteSet) all() func(yield func(int) bool) {
	return func(yield func(int) bool) {
		for w, x := range s {
			for ; x != 0; x &= x - 1 {
				if !yield(w<<6 | bits.TrailingZeros64(x)) {
					return
				}
			}
		}
	}
}
