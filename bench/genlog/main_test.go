package main

import (
	"bufio"
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/webknock/webknock/weblog"
)

// TestEveryLineParses: every line genlog writes, of each kind of log, parses
// with webknock's combined parser, so that a benchmark parsing every line
// measures parsing, not skipping.
func TestEveryLineParses(t *testing.T) {
	const corpus = "../../testdata/corpus/elastic-apache_logs/apache_logs"
	dir := t.TempDir()
	oneTime, err := oneTimeSequences(20, filepath.Join(dir, "onetime.yaml"), false)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		write func(*bytes.Buffer) error
		lines int
	}{
		{"example knocks", func(b *bytes.Buffer) error { return generate(b, 50000, 20, corpus, nil, 0) }, 50000},
		{"static sequences", func(b *bytes.Buffer) error {
			return generate(b, 50000, 20, corpus, randomSequences(100), 500)
		}, 50000},
		{"one-time sequences", func(b *bytes.Buffer) error { return generate(b, 50000, 20, corpus, oneTime, 500) }, 50000},
		{"flood", func(b *bytes.Buffer) error {
			return generateFlood(b, 50000, time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC))
		}, 50004},
	}
	parser, err := weblog.NewParser("combined", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tc.write(&b); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(&b)
			n, bad := 0, 0
			for sc.Scan() {
				n++
				if _, err := parser.Parse(sc.Bytes()); err != nil {
					if bad++; bad <= 5 {
						t.Errorf("line %d: Parse(%q) = %v, want a request", n, sc.Text(), err)
					}
				}
			}
			if n != tc.lines || bad > 0 {
				t.Errorf("%d lines, %d do not parse; want %d lines, all parsing", n, bad, tc.lines)
			}
		})
	}
}
