package weblog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/webknock/webknock/internal/golden"
)

// corpusFormats are tried in order on every line of the public corpus.
var corpusFormats = []struct{ name, format string }{
	{"combined", Combined},
	{"common", Common},
	{"vhost_combined", VHostCombined},
	{"nginx_main", nginxMain},
	{"nginx_host", `$host $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"`},
	{"ingress_nginx", nginxCombined + ` $request_length $request_time [$proxy_upstream_name] [$proxy_alternative_upstream_name] $upstream_addr $upstream_response_length $upstream_response_time $upstream_status $req_id`},
	{"nginx_host_main", `$host $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" "$http_x_forwarded_for"`},
	// nginx-proxy-manager's formats, its $server renamed to $upstream_addr.
	{"npm_proxy", `[$time_local] $upstream_cache_status $upstream_status $status - $request_method $scheme $host "$request_uri" [Client $remote_addr] [Length $body_bytes_sent] [Gzip $gzip_ratio] [Sent-to $upstream_addr] "$http_user_agent" "$http_referer"`},
	{"npm_standard", `[$time_local] $status - $request_method $scheme $host "$request_uri" [Client $remote_addr] [Length $body_bytes_sent] [Gzip $gzip_ratio] "$http_user_agent" "$http_referer"`},
	// gonx's example format, its own variables renamed to nginx ones of the same shape.
	{"gonx_example", `$remote_addr [$time_local] "$request" $status $request_length $body_bytes_sent $request_time "$upstream_http_x_size" $upstream_connect_time $upstream_header_time`},
}

func corpusFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir("../testdata/corpus", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		switch filepath.Ext(path) {
		case ".md", ".tsv", ".golden":
			return nil
		}
		files = append(files, path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 90 {
		t.Fatalf("found %d corpus files, want the whole corpus", len(files))
	}
	return files
}

// TestCorpus parses every line of the public corpus with every known format
// and compares, per file, what parsed with what and which lines no format
// could read, with testdata/corpus/parse.golden.
func TestCorpus(t *testing.T) {
	var out bytes.Buffer
	for _, path := range corpusFiles(t) {
		parsers := make([]*Parser, len(corpusFormats))
		for i, f := range corpusFormats {
			p, err := NewParser(f.format, nil)
			if err != nil {
				t.Fatalf("%s: %v", f.name, err)
			}
			parsers[i] = p
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		counts := make([]int, len(parsers))
		var lines int
		var unparsed []string
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			lines++
			var reasons []string
			parsed := false
			for i, p := range parsers {
				_, err := p.Parse(sc.Bytes())
				var pe *ParseError
				if err == nil || errors.As(err, &pe) && pe.Reason != ReasonFormat && pe.Reason != ReasonTime && pe.Reason != ReasonClient {
					counts[i]++
					parsed = true
					break
				}
				if !errors.As(err, &pe) {
					t.Fatalf("%s:%d: error %v is not a *ParseError", path, lines, err)
				}
				reasons = append(reasons, string(pe.Reason))
			}
			if !parsed {
				snippet := sc.Text()
				if len(snippet) > 72 {
					snippet = snippet[:72]
				}
				unparsed = append(unparsed, fmt.Sprintf("  line %d: %s: %q", lines, summarise(reasons), snippet))
			}
		}
		rel, _ := filepath.Rel("../testdata/corpus", path)
		fmt.Fprintf(&out, "%s: %d lines", filepath.ToSlash(rel), lines)
		for i, c := range counts {
			if c > 0 {
				fmt.Fprintf(&out, ", %s %d", corpusFormats[i].name, c)
			}
		}
		fmt.Fprintf(&out, ", unparsed %d\n", len(unparsed))
		for _, u := range unparsed {
			fmt.Fprintln(&out, u)
		}
	}
	golden.Check(t, "../testdata/corpus/parse.golden", out.Bytes())
}

// summarise folds the per-format reasons of an unparsed line.
func summarise(reasons []string) string {
	seen := map[string]bool{}
	var uniq []string
	for _, r := range reasons {
		if !seen[r] {
			seen[r] = true
			uniq = append(uniq, r)
		}
	}
	return strings.Join(uniq, ",")
}

// TestScannerAgreesWithGonx parses every corpus line and every table line with
// the combined scanner and with gonx compiling nginx's combined log_format,
// and requires the same verdict and the same Request.
func TestScannerAgreesWithGonx(t *testing.T) {
	scanner, _ := NewParser(Combined, nil)
	viaGonx, err := NewParser(nginxCombined, nil)
	if err != nil {
		t.Fatal(err)
	}
	var lines [][]byte
	for _, path := range corpusFiles(t) {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, bytes.Split(data, []byte("\n"))...)
	}
	for _, l := range differentialLines {
		lines = append(lines, []byte(l))
	}
	agreed := 0
	for _, line := range lines {
		a, errA := scanner.Parse(line)
		b, errB := viaGonx.Parse(line)
		if errA == nil && errB != nil && gonxCannot(line, a) {
			continue
		}
		if (errA == nil) != (errB == nil) {
			t.Errorf("line %q: scanner says %v, gonx says %v", line, errA, errB)
			continue
		}
		if a.Time.Format("-0700") != b.Time.Format("-0700") || !equalRequest(a, b) {
			t.Errorf("line %q:\nscanner %+v\n   gonx %+v", line, a, b)
			continue
		}
		if errA == nil {
			agreed++
		}
	}
	if agreed < 10000 {
		t.Errorf("only %d lines parsed by both; the corpus has more than 10000 nginx combined lines", agreed)
	}
}

// differentialLines are crafted nginx lines: escapes, odd requests, hostile text.
var differentialLines = []string{
	`203.0.113.7 - - [22/Nov/2026:19:01:34 +0000] "GET /k/7f3a9c?r=1 HTTP/1.1" 404 153 "-" "Mozilla/5.0 (X11)"`,
	`198.51.100.9 - - [04/Oct/2022:03:07:27 +0000] "GET /a\x22b\x5Cc HTTP/1.1" 400 150 "-" "x\x22 y\xC3\xA9"`,
	`198.51.100.9 - - [04/Oct/2022:03:07:27 +0000] "\x16\x03\x01\x00t\x01" 400 150 "-" "-"`,
	`198.51.100.9 - - [04/Oct/2022:03:07:27 +0000] "" 400 0 "" ""`,
	`198.51.100.9 - - [04/Oct/2022:03:07:27 +0000] "GET / HTTP/1.1" 200 0 "-" "-" trailing`,
	`198.51.100.9 - - [04/Oct/2022:03:07:27 +0000] "GET / HTTP/1.1" 200 0 "-" "a\x22 \x22b"`,
	`198.51.100.9 - bob [04/Oct/2022:03:07:27 -0930] "PROPFIND /dav HTTP/2.0" 207 0 "-" "-"`,
	`2001:db8::1 - - [04/Oct/2022:03:07:27 +0000] "GET /k/open HTTP/1.1" 200 0 "-" "-"`,
	`::ffff:192.0.2.1 - - [04/Oct/2022:03:07:27 +0000] "GET /k/open HTTP/1.1" 200 0 "-" "-"`,
	`::1 - - [04/Oct/2022:03:07:27 +0000] "GET /k/open HTTP/1.1" 200 0 "-" "-"`,
	`unix: - - [04/Oct/2022:03:07:27 +0000] "GET /k/open HTTP/1.1" 200 0 "-" "-"`,
	`198.51.100.9 - - [31/Feb/2022:03:07:27 +0000] "GET / HTTP/1.1" 200 0 "-" "-"`,
}

// gonxCannot reports lines the scanner reads and gonx cannot: a $remote_user
// with spaces, and Apache's \" escapes (nginx writes \x22).
func gonxCannot(line []byte, r Request) bool {
	return strings.Contains(r.User, " ") || bytes.Contains(line, []byte(`\"`))
}
