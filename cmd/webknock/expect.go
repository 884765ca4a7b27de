package main

// This file holds replay --expect: the expected grants as JSON lines, and
// their comparison with the grants a replay made.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"
)

// maxExpectLine bounds one line of an expectation file.
const maxExpectLine = 64 << 10

// expectedGrant is one line of an expectation file. Time, Ports and
// TimeStep are compared only when given; File and Line are where it came
// from (they are not compared: logs move between machines).
type expectedGrant struct {
	jsonEvent
	where string // FILE:LINE of the expectation
}

// readExpect reads an expectation file: one grant per line in the shape
// of replay --json, blank lines and lines starting with # ignored.
func readExpect(path string) ([]expectedGrant, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("expect: %w", err)
	}
	defer f.Close()
	return parseExpect(path, f)
}

func parseExpect(path string, r io.Reader) ([]expectedGrant, error) {
	var out []expectedGrant
	var errs []error
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxExpectLine)
	no := 0
	for sc.Scan() {
		no++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		where := fmt.Sprintf("%s:%d", path, no)
		g, err := parseExpectedGrant(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		out = append(out, expectedGrant{jsonEvent: g, where: where})
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s:%d: %w", path, no+1, err))
	}
	return out, errors.Join(errs...)
}

// parseExpectedGrant reads and checks one expected grant.
func parseExpectedGrant(line []byte) (jsonEvent, error) {
	var g jsonEvent
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&g); err != nil {
		return g, fmt.Errorf("want a grant as one JSON object, like replay --json prints: %w", err)
	}
	if dec.More() {
		return g, errors.New("more than one JSON value on the line")
	}
	var problems []string
	if g.Event != "" && g.Event != "grant" {
		problems = append(problems, fmt.Sprintf("event %q: an expectation lists grants only", g.Event))
	}
	if _, err := netip.ParseAddr(g.IP); err != nil {
		problems = append(problems, fmt.Sprintf("ip %q: want an IP address", g.IP))
	}
	if g.Sequence == "" {
		problems = append(problems, "sequence: required")
	}
	for _, f := range []struct{ name, v string }{{"until", g.Until}, {"time", g.Time}} {
		if f.v == "" && f.name == "time" {
			continue
		}
		if _, err := time.Parse(time.RFC3339, f.v); err != nil {
			problems = append(problems, fmt.Sprintf("%s %q: want an RFC 3339 time", f.name, f.v))
		}
	}
	if g.Source != "" {
		if _, err := netip.ParsePrefix(g.Source); err != nil {
			problems = append(problems, fmt.Sprintf("source %q: want a network like 192.0.2.0/24", g.Source))
		}
	}
	if len(problems) > 0 {
		return g, errors.New(strings.Join(problems, "; "))
	}
	return g, nil
}

// writeExpect writes grants as an expectation file.
func writeExpect(path string, grants []jsonEvent) error {
	var b bytes.Buffer
	for _, g := range grants {
		g.File, g.Line = "", 0
		line, err := json.Marshal(g)
		if err != nil {
			return err
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("update %s: %w", path, err)
	}
	return nil
}

// grantDiff is how the replayed grants differ from the expected ones.
type grantDiff struct {
	expected, replayed, matched int
	missing                     []expectedGrant
	unexpected                  []jsonEvent
	different                   []difference
}

// difference is an expected grant and the replayed one it is paired with.
type difference struct {
	want expectedGrant
	got  jsonEvent
	what []string
}

func (d *grantDiff) pass() bool {
	return len(d.missing) == 0 && len(d.unexpected) == 0 && len(d.different) == 0
}

// diffGrants pairs the expected and the replayed grants of each address
// and sequence in order, and lists what is missing, unexpected or
// different.
func diffGrants(want []expectedGrant, got []jsonEvent) *grantDiff {
	type key struct{ ip, seq string }
	keyOf := func(g *jsonEvent) key {
		ip := g.IP
		if a, err := netip.ParseAddr(ip); err == nil {
			ip = a.Unmap().String()
		}
		return key{ip, g.Sequence}
	}
	d := &grantDiff{expected: len(want), replayed: len(got)}
	byKey := map[key][]int{} // indices into got, not yet paired
	for i := range got {
		k := keyOf(&got[i])
		byKey[k] = append(byKey[k], i)
	}
	paired := make([]bool, len(got))
	for _, w := range want {
		k := keyOf(&w.jsonEvent)
		idx := byKey[k]
		if len(idx) == 0 {
			d.missing = append(d.missing, w)
			continue
		}
		i := idx[0]
		byKey[k] = idx[1:]
		paired[i] = true
		if what := compareGrant(&w.jsonEvent, &got[i]); len(what) > 0 {
			d.different = append(d.different, difference{want: w, got: got[i], what: what})
		} else {
			d.matched++
		}
	}
	for i := range got {
		if !paired[i] {
			d.unexpected = append(d.unexpected, got[i])
		}
	}
	return d
}

// compareGrant lists how got differs from want.
func compareGrant(want, got *jsonEvent) []string {
	var out []string
	diff := func(field, w, g string) {
		if w != g {
			out = append(out, fmt.Sprintf("%s %s, expected %s", field, orNone(g), orNone(w)))
		}
	}
	diff("until", sameTime(want.Until, got.Until), got.Until)
	diff("source", want.Source, got.Source)
	if want.Time != "" {
		diff("time", sameTime(want.Time, got.Time), got.Time)
	}
	if want.Ports != nil {
		diff("ports", strings.Join(want.Ports, ","), strings.Join(got.Ports, ","))
	}
	if want.TimeStep != nil {
		g := "none"
		if got.TimeStep != nil {
			g = fmt.Sprint(*got.TimeStep)
		}
		diff("time_step", fmt.Sprint(*want.TimeStep), g)
	}
	return out
}

// sameTime returns want as got spells it when both are the same instant
// (an expectation may use another zone), else want.
func sameTime(want, got string) string {
	w, err1 := time.Parse(time.RFC3339, want)
	g, err2 := time.Parse(time.RFC3339, got)
	if err1 == nil && err2 == nil && w.Equal(g) {
		return got
	}
	return want
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// print writes the comparison the way a test runner reports.
func (d *grantDiff) print(w io.Writer, expect string) {
	line := func(g *jsonEvent) string {
		c := *g
		c.File, c.Line = "", 0
		b, _ := json.Marshal(c)
		return string(b)
	}
	at := func(g *jsonEvent) string {
		if g.File == "" {
			return "(end of logs)"
		}
		return fmt.Sprintf("%s:%d", g.File, g.Line)
	}
	for _, m := range d.missing {
		fmt.Fprintf(w, "missing     %s: %s\n", m.where, line(&m.jsonEvent))
	}
	for _, u := range d.unexpected {
		fmt.Fprintf(w, "unexpected  %s: %s\n", at(&u), line(&u))
	}
	for _, x := range d.different {
		fmt.Fprintf(w, "different   %s: %s %s: %s (expected at %s)\n", at(&x.got), x.got.IP, x.got.Sequence,
			strings.Join(x.what, "; "), x.want.where)
	}
	verdict := "PASS"
	if !d.pass() {
		verdict = "FAIL"
	}
	parts := []string{fmt.Sprintf("%d matched", d.matched)}
	for _, p := range []struct {
		n    int
		what string
	}{{len(d.missing), "missing"}, {len(d.unexpected), "unexpected"}, {len(d.different), "different"}} {
		if p.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", p.n, p.what))
		}
	}
	fmt.Fprintf(w, "%s  %s: %d grants expected, %d replayed: %s\n", verdict, expect, d.expected, d.replayed, strings.Join(parts, ", "))
}
