package main

// This file counts what a replay read and writes the summary.

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/webknock/webknock/knock"
	"github.com/webknock/webknock/weblog"
)

// fileStats is what a replay read from one log.
type fileStats struct {
	Name     string                  `json:"file"`
	Lines    int64                   `json:"lines"`
	Examined int64                   `json:"examined"`
	Parsed   int64                   `json:"parsed"`
	Skipped  map[weblog.Reason]int64 `json:"skipped"`

	// Lines whose shape matched log.format (whatever their client), and
	// lines that did not, with the first of these.
	matched, mismatched int64
	badLine             int64
	badSample           []byte
}

// noteFormat records whether line no matched the format, from the error
// of its Parse.
func (fs *fileStats) noteFormat(err error, no int64, line []byte) {
	if err == nil || !weblog.ReasonOf(err).Mismatch() {
		fs.matched++
		return
	}
	if fs.mismatched++; fs.badSample == nil {
		fs.badLine, fs.badSample = no, append([]byte(nil), line[:min(len(line), sampleBytes+1)]...)
	}
}

// totals adds up the files.
func (rp *replayer) totals() fileStats {
	t := fileStats{Skipped: map[weblog.Reason]int64{}}
	for _, f := range rp.files {
		t.Lines += f.Lines
		t.Examined += f.Examined
		t.Parsed += f.Parsed
		for r, n := range f.Skipped {
			t.Skipped[r] += n
		}
	}
	return t
}

// reasonsByCount lists the reasons of m, the most frequent first.
func reasonsByCount(m map[weblog.Reason]int64) []weblog.Reason {
	rs := slices.Collect(maps.Keys(m))
	slices.SortFunc(rs, func(a, b weblog.Reason) int {
		return cmp.Or(cmp.Compare(m[b], m[a]), strings.Compare(string(a), string(b)))
	})
	return rs
}

func (rp *replayer) summary() string {
	t := rp.totals()
	var b strings.Builder
	var skipped int64
	for _, n := range t.Skipped {
		skipped += n
	}
	fmt.Fprintf(&b, "replay: %d lines read, %d examined, %d parsed, %d skipped", t.Lines, t.Examined, t.Parsed, skipped)
	if skipped > 0 {
		var parts []string
		for _, r := range reasonsByCount(t.Skipped) {
			parts = append(parts, fmt.Sprintf("%d %s", t.Skipped[r], r))
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintf(&b, ", %d grants", rp.counts[knock.KindGrant])
	for _, k := range []knock.Kind{knock.KindClose, knock.KindDenied, knock.KindReused} {
		if n := rp.counts[k]; n > 0 {
			fmt.Fprintf(&b, ", %d %s", n, k)
		}
	}
	return b.String()
}

// jsonSummary is the shape of --summary json.
type jsonSummary struct {
	Files          []*fileStats            `json:"files"`
	Lines          int64                   `json:"lines"`
	Examined       int64                   `json:"examined"`
	Parsed         int64                   `json:"parsed"`
	Skipped        map[weblog.Reason]int64 `json:"skipped"`
	Events         map[string]int64        `json:"events"`
	Grants         int64                   `json:"grants"`
	LoopbackKnocks int64                   `json:"loopback_knocks"`
	Expect         *jsonExpect             `json:"expect,omitempty"`
}

type jsonExpect struct {
	File       string `json:"file"`
	Pass       bool   `json:"pass"`
	Expected   int    `json:"expected"`
	Replayed   int    `json:"replayed"`
	Matched    int    `json:"matched"`
	Missing    int    `json:"missing"`
	Unexpected int    `json:"unexpected"`
	Different  int    `json:"different"`
}

// writeSummaryJSON writes the summary as one JSON object; d is the
// comparison with the file expect, if there was one.
func (rp *replayer) writeSummaryJSON(w io.Writer, expect string, d *grantDiff) error {
	t := rp.totals()
	s := jsonSummary{Files: rp.files, Lines: t.Lines, Examined: t.Examined, Parsed: t.Parsed, Skipped: t.Skipped,
		Events: map[string]int64{}, Grants: rp.counts[knock.KindGrant], LoopbackKnocks: rp.loopbackKnocks}
	if s.Files == nil {
		s.Files = []*fileStats{}
	}
	for k, n := range rp.counts {
		s.Events[k.String()] = n
	}
	if d != nil {
		s.Expect = &jsonExpect{File: expect, Pass: d.pass(), Expected: d.expected, Replayed: d.replayed,
			Matched: d.matched, Missing: len(d.missing), Unexpected: len(d.unexpected), Different: len(d.different)}
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
