package weblog

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"testing"
)

// FuzzParseLine feeds arbitrary lines to the scanner and to gonx. Neither may
// panic; a line the scanner accepts has a knockable client, and a path made
// of unreserved characters appears verbatim in the raw line (what lets
// ScanLines skip lines without parsing them); both parsers agree on every
// line where gonx can read the $remote_user.
func FuzzParseLine(f *testing.F) {
	for _, l := range differentialLines {
		f.Add(l)
	}
	f.Add(`203.0.113.7 - - [22/Nov/2026:19:01:34 +0000] "GET /k/7f3a9c HTTP/1.1" 404 153 "-" "-"`)
	f.Add(`198.51.100.9 - a [22/Nov/2026:19:01:34 +0000] x [22/Nov/2026:19:01:35 +0000] "GET / HTTP/1.1" 200 5 "-" "-"`)
	f.Add(`198.51.100.9 - - [04/Oct/2022:03:07:27 +0000] "GET /a\"b\\c HTTP/1.1" 400 150 "-" "x\" \t\xc3\xa9"`)
	scanner, _ := NewParser(Combined, nil)
	viaGonx, err := NewParser(nginxCombined, nil)
	if err != nil {
		f.Fatal(err)
	}
	main, err := NewParser(nginxMain, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, line string) {
		a, errA := scanner.Parse([]byte(line))
		b, errB := viaGonx.Parse([]byte(line))
		_, _ = main.Parse([]byte(line))
		if errA == nil {
			if knockable(a.Client) != nil {
				t.Fatalf("accepted client %v", a.Client)
			}
			if unreserved(a.Path) && !bytes.Contains([]byte(line), []byte(a.Path)) {
				t.Fatalf("path %q is not in the raw line %q", a.Path, line)
			}
		}
		if errA == nil && errB != nil && gonxCannot([]byte(line), a) {
			return
		}
		if (errA == nil) != (errB == nil) || (errA == nil && !equalRequest(a, b)) {
			t.Fatalf("line %q: scanner %+v %v, gonx %+v %v", line, a, errA, b, errB)
		}
	})
}

func unreserved(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~/", c) >= 0) {
			return false
		}
	}
	return true
}

func BenchmarkParseCombined(b *testing.B) {
	p, _ := NewParser(Combined, nil)
	line := []byte(`83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /presentations/logstash-monitorama-2013/images/kibana-search.png HTTP/1.1" 200 203023 "http://semicomplete.com/presentations/logstash-monitorama-2013/" "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/32.0.1700.77 Safari/537.36"`)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Parse(line); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseGonx(b *testing.B) {
	p, _ := NewParser(nginxCombined, nil)
	line := []byte(`83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /presentations/logstash-monitorama-2013/images/kibana-search.png HTTP/1.1" 200 203023 "http://semicomplete.com/presentations/logstash-monitorama-2013/" "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_1) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/32.0.1700.77 Safari/537.36"`)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Parse(line); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScanLines measures finding knock lines in a real log where none
// knock: with the paths of one sequence, with the 4,000 paths of a thousand
// sequences made as webknock init makes them, and with a one-time prefix.
func BenchmarkScanLines(b *testing.B) {
	real, err := os.ReadFile("../testdata/corpus/elastic-apache_logs/apache_logs")
	if err != nil {
		b.Fatal(err)
	}
	data := bytes.Repeat(real, 4)
	rng := rand.New(rand.NewPCG(1, 2))
	var many [][]byte
	raw := make([]byte, 12)
	for range 4000 {
		for j := range raw {
			raw[j] = byte(rng.Uint32())
		}
		many = append(many, []byte("/k/"+base64.RawURLEncoding.EncodeToString(raw)))
	}
	for _, bc := range []struct {
		name    string
		needles [][]byte
	}{
		{"needles=4", [][]byte{[]byte("/k/7f3a9c"), []byte("/k/91c2e0"), []byte("/k/00aa5d"), []byte("/k/open")}},
		{"needles=4000", many},
		{"prefix", [][]byte{[]byte("/k/")}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := ScanLines(bytes.NewReader(data), bc.needles, func(int64, []byte) error { return nil }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzClientIP checks the client rules on arbitrary peer addresses and
// X-Forwarded-For headers: a request is attributed to its peer unless the
// peer is a trusted proxy, and then to the right-most hop that is not; a
// trusted proxy, a header from an untrusted peer or an address that cannot
// connect is never the client.
func FuzzClientIP(f *testing.F) {
	for _, seed := range [][2]string{
		{"203.0.113.7", "198.51.100.1"}, {"10.0.0.2", "198.51.100.1, 10.0.0.9"},
		{"10.0.0.2", "unknown"}, {"10.0.0.2", "[2001:db8::5]:4711"}, {"::ffff:10.1.2.3", "::ffff:198.51.100.1"},
		{"2001:db8:ffff::1", "10.0.0.1, 127.0.0.1"}, {"10.0.0.2", "-"}, {"127.0.0.1", "198.51.100.1"},
	} {
		f.Add(seed[0], seed[1])
	}
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48")}
	p, err := NewParser(nginxMain, trusted)
	if err != nil {
		f.Fatal(err)
	}
	isTrusted := func(a netip.Addr) bool { return trusted[0].Contains(a) || trusted[1].Contains(a) }
	f.Fuzz(func(t *testing.T, remote, xff string) {
		line := remote + ` - - [22/Nov/2026:19:01:34 +0000] "GET /k/open HTTP/1.1" 404 0 "-" "-" "` + xff + `"`
		r, err := p.Parse([]byte(line))
		if err != nil {
			return
		}
		if knockable(r.Client) != nil || isTrusted(r.Client) && isTrusted(r.RemoteAddr) {
			t.Fatalf("line %q: client %v may not knock", line, r.Client)
		}
		if !isTrusted(r.RemoteAddr) {
			if r.Client != r.RemoteAddr {
				t.Fatalf("line %q: untrusted peer %v, but client %v", line, r.RemoteAddr, r.Client)
			}
			return
		}
		hops := strings.Split(r.ForwardedFor, ",")
		for i := len(hops) - 1; i >= 0; i-- {
			a, ok := parseHop(strings.TrimSpace(hops[i]))
			if !ok {
				t.Fatalf("line %q: client %v taken past an unusable hop %q", line, r.Client, hops[i])
			}
			if !isTrusted(a) {
				if a != r.Client {
					t.Fatalf("line %q: right-most untrusted hop %v, but client %v", line, a, r.Client)
				}
				return
			}
		}
		t.Fatalf("line %q: client %v with no untrusted hop", line, r.Client)
	})
}
