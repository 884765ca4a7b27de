package weblog

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

type seenLine struct {
	no   int64
	text string
}

func scanAll(t *testing.T, r io.Reader, needles [][]byte) ([]seenLine, ScanStats) {
	t.Helper()
	var got []seenLine
	st, err := ScanLines(r, needles, func(no int64, line []byte) error {
		got = append(got, seenLine{no, string(line)})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, st
}

func TestScanLines(t *testing.T) {
	long := strings.Repeat("x", MaxLineBytes+1)
	huge := strings.Repeat("y/k/a", 3*chunkBytes/5) // longer than a whole read
	tests := []struct {
		name    string
		input   string
		needles []string
		want    []seenLine
		stats   ScanStats
	}{
		{name: "all lines", input: "a\nb\n\nc", want: []seenLine{{1, "a"}, {2, "b"}, {3, ""}, {4, "c"}},
			stats: ScanStats{Lines: 4, Examined: 4}},
		{name: "needles", input: "GET /k/a\nGET /x\nGET /k/b?1\n/k/a /k/b\n", needles: []string{"/k/a", "/k/b"},
			want:  []seenLine{{1, "GET /k/a"}, {3, "GET /k/b?1"}, {4, "/k/a /k/b"}},
			stats: ScanStats{Lines: 4, Examined: 3}},
		{name: "needle in last line without newline", input: "x\n/k/a", needles: []string{"/k/a"},
			want: []seenLine{{2, "/k/a"}}, stats: ScanStats{Lines: 2, Examined: 1}},
		{name: "overlong line is skipped, next is read", input: "a\n" + long + "/k/a\n/k/a b\n", needles: []string{"/k/a"},
			want: []seenLine{{3, "/k/a b"}}, stats: ScanStats{Lines: 3, Examined: 1, Overlong: 1}},
		{name: "line longer than a read", input: "a/k/a\n" + huge + "\nb/k/a\n", needles: []string{"/k/a"},
			want: []seenLine{{1, "a/k/a"}, {3, "b/k/a"}}, stats: ScanStats{Lines: 3, Examined: 2, Overlong: 1}},
		{name: "line longer than a read, no needles", input: huge + "\nb\n",
			want: []seenLine{{2, "b"}}, stats: ScanStats{Lines: 2, Examined: 1, Overlong: 1}},
		{name: "overlong last line without newline", input: "a\n" + huge,
			want: []seenLine{{1, "a"}}, stats: ScanStats{Lines: 2, Examined: 1, Overlong: 1}},
		{name: "empty input", input: "", stats: ScanStats{}},
		{name: "empty needle", input: "a\nb", needles: []string{"x", ""}, want: []seenLine{{1, "a"}, {2, "b"}},
			stats: ScanStats{Lines: 2, Examined: 2}},
		{name: "needle with a newline", input: "a\nb\n/k/a", needles: []string{"a\nb", "/k/a"}, want: []seenLine{{3, "/k/a"}},
			stats: ScanStats{Lines: 3, Examined: 1}},
		{name: "only a needle with a newline", input: "a\nb\n", needles: []string{"a\nb"}, stats: ScanStats{Lines: 2}},
		{name: "short and long needles", input: "GET /k/\nGET /k/abc\nGET /k\n/x/k/\nk/", needles: []string{"/k/abc", "/k/", "/k/a"},
			want:  []seenLine{{1, "GET /k/"}, {2, "GET /k/abc"}, {4, "/x/k/"}},
			stats: ScanStats{Lines: 5, Examined: 3}},
	}
	for _, tc := range tests {
		for _, rd := range []struct {
			name string
			wrap func(io.Reader) io.Reader
		}{
			{"whole", func(r io.Reader) io.Reader { return r }},
			{"half", iotest.HalfReader},
			{"data-err", iotest.DataErrReader},
		} {
			t.Run(tc.name+"/"+rd.name, func(t *testing.T) {
				var needles [][]byte
				for _, n := range tc.needles {
					needles = append(needles, []byte(n))
				}
				got, st := scanAll(t, rd.wrap(strings.NewReader(tc.input)), needles)
				if fmt.Sprint(got) != fmt.Sprint(tc.want) || st != tc.stats {
					t.Errorf("ScanLines = %v %+v, want %v %+v", trim(got), st, trim(tc.want), tc.stats)
				}
			})
		}
	}
}

func trim(ls []seenLine) []seenLine {
	out := make([]seenLine, len(ls))
	for i, l := range ls {
		if len(l.text) > 40 {
			l.text = l.text[:40] + "..."
		}
		out[i] = l
	}
	return out
}

// TestScanLinesNeedlesEqualFilter checks on random input, read in random
// pieces, that the chunk search hands over exactly the lines a line-by-line
// filter would: with two needles, and with hundreds that share prefixes,
// hold one another or are as short as "/k/".
func TestScanLinesNeedlesEqualFilter(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 400; i++ {
		n := rng.IntN(3 * chunkBytes / 2)
		if i%50 != 0 && i%100 != 25 {
			n = rng.IntN(4000)
		}
		var data []byte
		needles := [][]byte{[]byte("/k/a"), []byte("ba/")}
		if i%2 == 0 {
			alphabet := []byte("ab/k\n")
			data = make([]byte, n)
			for j := range data {
				data[j] = alphabet[rng.IntN(len(alphabet))]
			}
		} else {
			needles = randomNeedles(rng, 1+rng.IntN(600), i%4 == 3)
			data = randomLog(rng, n, needles)
		}
		all, stAll := scanAll(t, bytes.NewReader(data), nil)
		var want []seenLine
		for _, l := range all {
			if naiveHolds([]byte(l.text), needles) {
				want = append(want, l)
			}
		}
		got, st := scanAll(t, iotest.HalfReader(bytes.NewReader(data)), needles)
		if fmt.Sprint(got) != fmt.Sprint(want) || st.Lines != stAll.Lines {
			t.Fatalf("input %d (%d needles): needles gave %d lines (%d total), filter gave %d (%d total)",
				i, len(needles), len(got), st.Lines, len(want), stAll.Lines)
		}
	}
}

// randomNeedles makes n knock-path-like needles over a small alphabet, so
// that they share prefixes; some are repeats, prefixes or extensions of
// others; with short, "/k/" (which holds most of the others) and needles of
// two bytes join them.
func randomNeedles(rng *rand.Rand, n int, short bool) [][]byte {
	const alphabet = "abkAB01-_"
	var nds [][]byte
	for len(nds) < n {
		var nd []byte
		switch r := rng.IntN(20); {
		case r < 3 && len(nds) > 0: // a prefix, an extension or a repeat of another
			nd = slices.Clone(nds[rng.IntN(len(nds))])
			switch rng.IntN(3) {
			case 0:
				nd = nd[:min(len(nd), 4+rng.IntN(len(nd)))]
			case 1:
				nd = append(nd, alphabet[rng.IntN(len(alphabet))])
			}
		case r == 3:
			nd = []byte("/k/a\nb") // no line holds it
		default:
			nd = []byte([]string{"/k/", "/k/", "/k/", "/x/", "/"}[rng.IntN(5)])
			for range 3 + rng.IntN(14) {
				nd = append(nd, alphabet[rng.IntN(len(alphabet))])
			}
		}
		nds = append(nds, nd)
	}
	if short {
		nds = append(nds, []byte("/k/"), []byte("kB"), []byte("-_"))
	}
	return nds
}

// randomLog makes about n bytes of lines of random bytes, needles and near
// misses of needles.
func randomLog(rng *rand.Rand, n int, needles [][]byte) []byte {
	const alphabet = "abkAB01-_/ x"
	var b []byte
	for len(b) < n {
		switch r := rng.IntN(20); {
		case r < 6:
			b = append(b, alphabet[rng.IntN(len(alphabet))])
		case r < 10:
			b = append(b, '\n')
		case r < 12:
			b = append(b, needles[rng.IntN(len(needles))]...)
		case r < 17: // a needle with one byte changed
			nd := slices.Clone(needles[rng.IntN(len(needles))])
			nd[rng.IntN(len(nd))] = alphabet[rng.IntN(len(alphabet))]
			b = append(b, nd...)
		default: // a needle cut short
			nd := needles[rng.IntN(len(needles))]
			b = append(b, nd[:rng.IntN(len(nd))]...)
		}
	}
	return b
}

func naiveHolds(line []byte, needles [][]byte) bool {
	for _, nd := range needles {
		if bytes.Contains(line, nd) {
			return true
		}
	}
	return false
}

func TestScanLinesStopsOnCallbackError(t *testing.T) {
	stop := fmt.Errorf("stop")
	_, err := ScanLines(strings.NewReader("a\nb\n"), nil, func(int64, []byte) error { return stop })
	if err != stop {
		t.Errorf("ScanLines error = %v, want %v", err, stop)
	}
}

// FuzzScanLines checks the chunk search against a line-by-line filter on
// arbitrary input. The needles are list split at '|' and pieces of data
// that picks points at (start, length byte pairs), so that some occur.
func FuzzScanLines(f *testing.F) {
	f.Add([]byte("GET /k/a\nGET /x\nGET /k/b?1\n/k/a /k/b\n"), "/k/a|/k/b", []byte{})
	f.Add([]byte("a/k/\nb\n/k/abc\n/k/ab"), "/k/|/k/abc|/k/ab", []byte{2, 3, 9, 1})
	f.Add([]byte("x\ny /k/Lm82aa z\n/k/7f3a9c"), "/k/7f3a9c|/k/Lm82aa|/k/open|a\nb", []byte{0, 2})
	f.Fuzz(func(t *testing.T, data []byte, list string, picks []byte) {
		var needles [][]byte
		for _, s := range strings.Split(list, "|") {
			if s != "" {
				needles = append(needles, []byte(s))
			}
		}
		for i := 0; i+1 < len(picks) && len(data) > 0; i += 2 {
			st := int(picks[i]) % len(data)
			needles = append(needles, data[st:min(len(data), st+1+int(picks[i+1])%24)])
		}
		if needles == nil {
			return
		}
		var want []seenLine
		var no int64
		for rest := data; len(rest) > 0; {
			line := rest
			rest = nil
			if i := bytes.IndexByte(line, '\n'); i >= 0 {
				line, rest = line[:i], line[i+1:]
			}
			no++
			if len(line) <= MaxLineBytes && naiveHolds(line, needles) {
				want = append(want, seenLine{no, string(line)})
			}
		}
		got, st := scanAll(t, iotest.HalfReader(bytes.NewReader(data)), needles)
		if fmt.Sprint(got) != fmt.Sprint(want) || st.Lines != no {
			t.Fatalf("ScanLines(%q, %q) = %v in %d lines, want %v in %d", data, needles, got, st.Lines, want, no)
		}
	})
}

// filterAll returns the lines of chunk that f picks, as "offset:line".
func filterAll(t *testing.T, f *Filter, chunk []byte) []string {
	t.Helper()
	var got []string
	if err := f.Lines(chunk, func(at int, line []byte) error {
		got = append(got, fmt.Sprintf("%d:%s", at, line))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// naiveFilter is Filter.Lines line by line.
func naiveFilter(chunk []byte, needles [][]byte) []string {
	var want []string
	for at := 0; at < len(chunk); {
		end := bytes.IndexByte(chunk[at:], '\n')
		if end < 0 {
			end = len(chunk) - at
		}
		line := chunk[at : at+end]
		if needles == nil || naiveHolds(line, needles) || slices.ContainsFunc(needles, func(n []byte) bool { return len(n) == 0 }) {
			want = append(want, fmt.Sprintf("%d:%s", at, line))
		}
		at += end + 1
	}
	return want
}

func TestFilterLines(t *testing.T) {
	tests := []struct {
		name    string
		chunks  []string // given to one Filter in turn
		needles []string // nil: every line
		want    []string
	}{
		{name: "every line", chunks: []string{"a\n\nb\n", "c"}, want: []string{"0:a", "2:", "3:b", "0:c"}},
		{name: "needles", chunks: []string{"GET /k/a\nGET /x\nGET /k/b?1\n", "/k/a /k/b\nx"}, needles: []string{"/k/a", "/k/b"},
			want: []string{"0:GET /k/a", "16:GET /k/b?1", "0:/k/a /k/b"}},
		{name: "last line without newline", chunks: []string{"x\nGET /k/a"}, needles: []string{"/k/a"}, want: []string{"2:GET /k/a"}},
		{name: "empty needle", chunks: []string{"a\nb\n"}, needles: []string{"z", ""}, want: []string{"0:a", "2:b"}},
		{name: "no needles", chunks: []string{"a\nb\n"}, needles: []string{}},
		{name: "empty chunk", chunks: []string{""}, needles: []string{"/k/"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var needles [][]byte
			if tc.needles != nil {
				needles = [][]byte{}
				for _, n := range tc.needles {
					needles = append(needles, []byte(n))
				}
			}
			f := NewFilter(needles)
			var got []string
			for _, c := range tc.chunks {
				got = append(got, filterAll(t, f, []byte(c))...)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Filter(%q).Lines(%q) = %q, want %q", tc.needles, tc.chunks, got, tc.want)
			}
		})
	}
	stop := fmt.Errorf("stop")
	if err := NewFilter(nil).Lines([]byte("a\nb\n"), func(int, []byte) error { return stop }); err != stop {
		t.Errorf("Lines error = %v, want %v", err, stop)
	}
}

// FuzzFilterLines checks a Filter, fed chunks of whole lines in turn as a
// follower's batches are, against a line-by-line filter. The needles are
// list split at '|'; cuts bytes split data into chunks at newlines.
func FuzzFilterLines(f *testing.F) {
	f.Add([]byte("GET /k/a\nGET /x\nGET /k/b?1\n/k/a /k/b\n"), "/k/a|/k/b", []byte{1})
	f.Add([]byte("a/k/\nb\n/k/abc\n/k/ab"), "/k/|/k/abc|/k/ab", []byte{0, 2})
	f.Add([]byte("x\ny /k/Lm82aa z\n/k/7f3a9c\n"), "/k/7f3a9c|/k/Lm82aa|/k/open|a\nb", []byte{3})
	f.Fuzz(func(t *testing.T, data []byte, list string, cuts []byte) {
		var needles [][]byte
		for _, s := range strings.Split(list, "|") {
			if s != "" {
				needles = append(needles, []byte(s))
			}
		}
		if needles == nil {
			return
		}
		filter := NewFilter(needles)
		rest := data
		for i := 0; len(rest) > 0; i++ {
			// A chunk of the next few lines; the last may lack its newline.
			n := 1
			if i < len(cuts) {
				n += int(cuts[i]) % 8
			}
			end := 0
			for ; n > 0 && end < len(rest); n-- {
				j := bytes.IndexByte(rest[end:], '\n')
				if j < 0 {
					end = len(rest)
					break
				}
				end += j + 1
			}
			chunk := rest[:end]
			rest = rest[end:]
			if got, want := filterAll(t, filter, chunk), naiveFilter(chunk, needles); !slices.Equal(got, want) {
				t.Fatalf("Filter(%q).Lines(%q) = %q, want %q", needles, chunk, got, want)
			}
		}
	})
}
