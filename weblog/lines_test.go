package weblog

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
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
// filter would.
func TestScanLinesNeedlesEqualFilter(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("ab/k\n")
	for i := 0; i < 300; i++ {
		n := rng.IntN(3 * chunkBytes / 2)
		if i%50 != 0 {
			n = rng.IntN(4000)
		}
		data := make([]byte, n)
		for j := range data {
			data[j] = alphabet[rng.IntN(len(alphabet))]
		}
		needles := [][]byte{[]byte("/k/a"), []byte("ba/")}
		all, stAll := scanAll(t, bytes.NewReader(data), nil)
		var want []seenLine
		for _, l := range all {
			if containsAny([]byte(l.text), needles) {
				want = append(want, l)
			}
		}
		got, st := scanAll(t, iotest.HalfReader(bytes.NewReader(data)), needles)
		if fmt.Sprint(got) != fmt.Sprint(want) || st.Lines != stAll.Lines {
			t.Fatalf("input %d: needles gave %d lines (%d total), filter gave %d (%d total)", i, len(got), st.Lines, len(want), stAll.Lines)
		}
	}
}

func TestScanLinesStopsOnCallbackError(t *testing.T) {
	stop := fmt.Errorf("stop")
	_, err := ScanLines(strings.NewReader("a\nb\n"), nil, func(int64, []byte) error { return stop })
	if err != stop {
		t.Errorf("ScanLines error = %v, want %v", err, stop)
	}
}
