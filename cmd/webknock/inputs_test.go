package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/webknock/webknock/weblog"
)

// TestInputsReport: a file whose lines stop parsing as the format is
// reported (log and problem, with a sample) after unparsedLimit lines in a
// row, once; lines from clients that never knock do not count; a line that
// parses clears it.
func TestInputsReport(t *testing.T) {
	var buf bytes.Buffer
	var in inputs
	in.init(slog.New(slog.NewTextHandler(&buf, nil)))
	line := []byte(`example.org:443 203.0.113.7 - - [22/Nov/2026:19:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "-"`)
	for range unparsedLimit - 1 {
		in.skipped("/var/log/a.log", weblog.ReasonFormat, line, "combined")
	}
	in.skipped("/var/log/a.log", weblog.ReasonLoopback, line, "combined") // parsed, only not a knocking client
	for range unparsedLimit - 1 {
		in.skipped("/var/log/a.log", weblog.ReasonFormat, line, "combined")
	}
	if p := in.problems(); len(p) != 0 {
		t.Fatalf("problems after %d unparsed lines with a parsed one between = %q, want none", 2*(unparsedLimit-1), p)
	}
	in.skipped("/var/log/a.log", weblog.ReasonFormat, line, "combined")
	in.skipped("/var/log/a.log", weblog.ReasonFormat, line, "combined")
	p := in.problems()
	if len(p) != 1 || !strings.Contains(p[0], "/var/log/a.log") || !strings.Contains(p[0], `"combined"`) || !strings.Contains(p[0], "example.org:443") {
		t.Fatalf("problems = %q, want one naming the file, the format and a sample", p)
	}
	if n := strings.Count(buf.String(), "log lines do not parse"); n != 1 {
		t.Errorf("warned %d times, want once:\n%s", n, buf.String())
	}
	in.parsed("/var/log/a.log")
	if p := in.problems(); len(p) != 0 {
		t.Errorf("problems after a parsed line = %q, want none", p)
	}
	if !strings.Contains(buf.String(), "log lines parse again") {
		t.Errorf("no recovery logged:\n%s", buf.String())
	}
}
