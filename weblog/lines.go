package weblog

import (
	"bytes"
	"errors"
	"io"
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
		starts  []int
		probes  []probe
	)
	emit := func(lineNo int64, line []byte) error {
		if len(line) > MaxLineBytes {
			st.Overlong++
			return nil
		}
		st.Examined++
		return fn(lineNo, line)
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
		whole := data[:last+1]
		if len(whole) > 0 {
			base := st.Lines
			st.Lines += int64(bytes.Count(whole, []byte{'\n'}))
			if needles == nil {
				no := base
				for len(whole) > 0 {
					i := bytes.IndexByte(whole, '\n')
					no++
					if err := emit(no, whole[:i]); err != nil {
						return st, err
					}
					whole = whole[i+1:]
				}
			} else {
				if probes == nil {
					probes = planProbes(needles, whole[:min(len(whole), 256<<10)])
				}
				starts = candidateStarts(whole, probes, starts[:0])
				no, pos := base, 0
				for _, s := range starts {
					no += int64(bytes.Count(whole[pos:s], []byte{'\n'})) + 1
					end := s + bytes.IndexByte(whole[s:], '\n')
					if err := emit(no, whole[s:end]); err != nil {
						return st, err
					}
					pos = end + 1
				}
			}
		}
		rest := data[last+1:]
		if eof {
			if len(rest) > 0 {
				st.Lines++
				if needles == nil || containsAny(rest, needles) {
					if err := emit(st.Lines, rest); err != nil {
						return st, err
					}
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

// probe finds needles by one byte: a knock path starts with '/', among the
// most common bytes of a log line, so searching for a needle's first byte
// would stop every few bytes. Instead each probe byte is one that is rare in
// the log and common to several needles, so a single fast IndexByte pass
// finds the places where any of them may start.
type probe struct {
	c      byte
	checks []probeCheck
}

type probeCheck struct {
	text []byte
	off  int // an offset of c in text
}

// planProbes covers every needle with as few and as rare probe bytes as it
// can (greedy weighted set cover, byte frequencies taken from sample).
func planProbes(needles [][]byte, sample []byte) []probe {
	var freq [256]int
	for _, c := range sample {
		freq[c]++
	}
	var open [][]byte
	for _, nd := range needles {
		if len(nd) > 0 {
			open = append(open, nd)
		}
	}
	var probes []probe
	for len(open) > 0 {
		best, bestCost := -1, 0.0
		for c := 0; c < 256; c++ {
			n := 0
			for _, nd := range open {
				if bytes.IndexByte(nd, byte(c)) >= 0 {
					n++
				}
			}
			if n == 0 {
				continue
			}
			if cost := float64(freq[c]+1) / float64(n); best < 0 || cost < bestCost {
				best, bestCost = c, cost
			}
		}
		pr := probe{c: byte(best)}
		rest := open[:0]
		for _, nd := range open {
			if bytes.IndexByte(nd, pr.c) < 0 {
				rest = append(rest, nd)
				continue
			}
			for off, c := range nd {
				if c == pr.c {
					pr.checks = append(pr.checks, probeCheck{text: nd, off: off})
				}
			}
		}
		open = rest
		probes = append(probes, pr)
	}
	return probes
}

// candidateStarts returns, sorted and unique, the start offsets of the lines
// of chunk (which ends with a newline) that contain a needle.
func candidateStarts(chunk []byte, probes []probe, dst []int) []int {
	for _, pr := range probes {
		from := 0
	search:
		for from < len(chunk) {
			i := bytes.IndexByte(chunk[from:], pr.c)
			if i < 0 {
				break
			}
			i += from
			for _, ck := range pr.checks {
				st := i - ck.off
				end := st + len(ck.text)
				if st >= 0 && end <= len(chunk) && chunk[st] == ck.text[0] && chunk[end-1] == ck.text[len(ck.text)-1] &&
					bytes.Equal(chunk[st:end], ck.text) {
					dst = append(dst, bytes.LastIndexByte(chunk[:st], '\n')+1)
					from = i + bytes.IndexByte(chunk[i:], '\n') + 1
					continue search
				}
			}
			from = i + 1
		}
	}
	slices.Sort(dst)
	return slices.Compact(dst)
}

func containsAny(line []byte, needles [][]byte) bool {
	for _, nd := range needles {
		if bytes.Contains(line, nd) {
			return true
		}
	}
	return false
}
