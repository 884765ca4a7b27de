package weblog

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const nginxCombined = `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"`

// nginxMain is the "main" format of the nginx packages and Docker image.
const nginxMain = nginxCombined + ` "$http_x_forwarded_for"`

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	tm, err := time.Parse("02/Jan/2006:15:04:05 -0700", s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func TestParsePresets(t *testing.T) {
	ip := netip.MustParseAddr
	tests := []struct {
		name   string
		format string
		line   string
		want   Request
		reason Reason // "" when the line must parse cleanly
	}{
		{
			name: "nginx combined", format: Combined,
			line: `203.0.113.7 - - [22/Nov/2026:19:01:34 +0000] "GET /k/7f3a9c?r=1 HTTP/1.1" 404 153 "-" "Mozilla/5.0 (X11)"`,
			want: Request{Client: ip("203.0.113.7"), Time: mustTime(t, "22/Nov/2026:19:01:34 +0000"), Method: "GET",
				Target: "/k/7f3a9c?r=1", Path: "/k/7f3a9c", Protocol: "HTTP/1.1", Status: 404, Bytes: 153,
				Referer: "-", UserAgent: "Mozilla/5.0 (X11)", User: "-"},
		},
		{
			name: "fragment and HTTP/2.0", format: Combined,
			line: `203.0.113.7 - - [22/Nov/2026:19:01:34 +0100] "HEAD /k/open#x HTTP/2.0" 200 0 "https://example.org/" "curl/8.0"`,
			want: Request{Client: ip("203.0.113.7"), Time: mustTime(t, "22/Nov/2026:19:01:34 +0100"), Method: "HEAD",
				Target: "/k/open#x", Path: "/k/open", Protocol: "HTTP/2.0", Status: 200, Bytes: 0,
				Referer: "https://example.org/", UserAgent: "curl/8.0", User: "-"},
		},
		{
			name: "common", format: Common,
			line: `2001:db8::7 - alice [26/Dec/2016:16:16:29 -0230] "GET /favicon.ico HTTP/1.1" 404 -`,
			want: Request{Client: ip("2001:db8::7"), Time: mustTime(t, "26/Dec/2016:16:16:29 -0230"), Method: "GET",
				Target: "/favicon.ico", Path: "/favicon.ico", Protocol: "HTTP/1.1", Status: 404, Bytes: -1, User: "alice"},
		},
		{
			name: "ipv4-mapped client becomes ipv4", format: Common,
			line: `::ffff:198.51.100.4 - - [26/Dec/2016:16:16:29 +0000] "GET / HTTP/1.1" 200 45`,
			want: Request{Client: ip("198.51.100.4"), Time: mustTime(t, "26/Dec/2016:16:16:29 +0000"), Method: "GET",
				Target: "/", Path: "/", Protocol: "HTTP/1.1", Status: 200, Bytes: 45, User: "-"},
		},
		{
			name: "vhost_combined", format: VHostCombined,
			line: `www.example.org:443 192.0.2.10 - - [01/Jul/2013:06:20:38 -0500] "GET / HTTP/1.1" 200 3829 "-" "Wget/1.14"`,
			want: Request{Client: ip("192.0.2.10"), Time: mustTime(t, "01/Jul/2013:06:20:38 -0500"), Method: "GET",
				Target: "/", Path: "/", Protocol: "HTTP/1.1", Status: 200, Bytes: 3829, Referer: "-",
				UserAgent: "Wget/1.14", User: "-", VHost: "www.example.org:443"},
		},
		{
			name: "nginx escapes in request and agent", format: Combined,
			line: `198.51.100.9 - - [04/Oct/2022:03:07:27 +0000] "GET /a\x22b\x5Cc HTTP/1.1" 400 150 "-" "x\x22 y\xC3\xA9"`,
			want: Request{Client: ip("198.51.100.9"), Time: mustTime(t, "04/Oct/2022:03:07:27 +0000"), Method: "GET",
				Target: `/a"b\c`, Path: `/a"b\c`, Protocol: "HTTP/1.1", Status: 400, Bytes: 150, Referer: "-",
				UserAgent: "x\" y\u00e9", User: "-"},
		},
		{
			name: "apache escapes in request and agent", format: Combined,
			line: `198.51.100.9 - - [04/Oct/2022:03:07:27 +0000] "GET /a\"b\\c HTTP/1.1" 400 150 "-" "x\" \t\xc3\xa9"`,
			want: Request{Client: ip("198.51.100.9"), Time: mustTime(t, "04/Oct/2022:03:07:27 +0000"), Method: "GET",
				Target: `/a"b\c`, Path: `/a"b\c`, Protocol: "HTTP/1.1", Status: 400, Bytes: 150, Referer: "-",
				UserAgent: "x\" \t\u00e9", User: "-"},
		},
		{
			name: "garbage request is a line but no request", format: Combined,
			line: `198.51.100.9 - - [04/Oct/2022:03:07:27 +0000] "\x16\x03\x01\x00t\x01" 400 150 "-" "-"`,
			want: Request{Client: ip("198.51.100.9"), Time: mustTime(t, "04/Oct/2022:03:07:27 +0000"),
				RequestLine: "\x16\x03\x01\x00t\x01", Status: 400, Bytes: 150, Referer: "-", UserAgent: "-", User: "-"},
		},
		{
			name: "empty request", format: Combined,
			line: `198.51.100.9 - - [04/Oct/2022:03:07:27 +0000] "" 400 0 "" ""`,
			want: Request{Client: ip("198.51.100.9"), Time: mustTime(t, "04/Oct/2022:03:07:27 +0000"), Status: 400, User: "-"},
		},
		{
			name: "dash request and status", format: Common,
			line: `198.51.100.9 - - [26/Dec/2016:16:16:48 +0200] "-" - -`,
			want: Request{Client: ip("198.51.100.9"), Time: mustTime(t, "26/Dec/2016:16:16:48 +0200"),
				RequestLine: "-", Bytes: -1, User: "-"},
		},
		{
			name: "HTTP/0.9 request", format: Common,
			line: `198.51.100.9 - - [26/Dec/2016:16:16:48 +0200] "GET /k/open" 200 10`,
			want: Request{Client: ip("198.51.100.9"), Time: mustTime(t, "26/Dec/2016:16:16:48 +0200"), Method: "GET",
				Target: "/k/open", Path: "/k/open", Status: 200, Bytes: 10, User: "-"},
		},
		{
			name: "remote_user with spaces, brackets and a fake record", format: Combined,
			line: `198.51.100.9 - a [22/Nov/2026:19:01:34 +0000] GET /k/open 404 [x] [22/Nov/2026:19:01:35 +0000] "GET / HTTP/1.1" 200 5 "-" "-"`,
			want: Request{Client: ip("198.51.100.9"), Time: mustTime(t, "22/Nov/2026:19:01:35 +0000"), Method: "GET",
				Target: "/", Path: "/", Protocol: "HTTP/1.1", Status: 200, Bytes: 5, Referer: "-", UserAgent: "-",
				User: "a [22/Nov/2026:19:01:34 +0000] GET /k/open 404 [x]"},
		},
		{
			name: "apache empty user", format: Common,
			line: `198.51.100.9 - "" [26/Dec/2016:16:16:48 +0200] "GET / HTTP/1.1" 200 1`,
			want: Request{Client: ip("198.51.100.9"), Time: mustTime(t, "26/Dec/2016:16:16:48 +0200"), Method: "GET",
				Target: "/", Path: "/", Protocol: "HTTP/1.1", Status: 200, Bytes: 1, User: `""`},
		},
		{name: "fake record in the user agent", format: Combined, reason: ReasonFormat,
			line: `198.51.100.9 - - [22/Nov/2026:19:01:34 +0000] "GET / HTTP/1.1" 200 5 "-" "x" "-"` + "\x00" + `6.6.6.6 - - [22/Nov/2026:19:01:34 +0000] "GET /k/open HTTP/1.1" 404 0 "-" "-"`},
		{name: "raw quote inside the request", format: Combined, reason: ReasonFormat,
			line: `198.51.100.9 - - [22/Nov/2026:19:01:34 +0000] "GET /x" 404 0 "-" "-" HTTP/1.1" 200 5 "-" "-"`},
		{name: "escape of a printable byte is forged", format: Combined, reason: ReasonFormat,
			line: `198.51.100.9 - - [22/Nov/2026:19:01:34 +0000] "GET /k/\x6fpen HTTP/1.1" 404 0 "-" "-"`},
		{name: "unknown escape", format: Combined, reason: ReasonFormat,
			line: `198.51.100.9 - - [22/Nov/2026:19:01:34 +0000] "GET /\q HTTP/1.1" 404 0 "-" "-"`},
		{name: "trailing garbage", format: Combined, reason: ReasonFormat,
			line: `198.51.100.9 - - [22/Nov/2026:19:01:34 +0000] "GET / HTTP/1.1" 404 0 "-" "-" x`},
		{name: "combined line as common", format: Common, reason: ReasonFormat,
			line: `198.51.100.9 - - [22/Nov/2026:19:01:34 +0000] "GET / HTTP/1.1" 404 0 "-" "-"`},
		{name: "no ident dash", format: Common, reason: ReasonFormat,
			line: `198.51.100.9 [22/Nov/2026:19:01:34 +0000] "GET / HTTP/1.1" 404 0`},
		{name: "ident not a dash", format: Common, reason: ReasonFormat,
			line: `198.51.100.9 x - [22/Nov/2026:19:01:34 +0000] "GET / HTTP/1.1" 404 0`},
		{name: "status not three digits", format: Common, reason: ReasonFormat,
			line: `198.51.100.9 - - [22/Nov/2026:19:01:34 +0000] "GET / HTTP/1.1" 40 0`},
		{name: "bytes not a number", format: Common, reason: ReasonFormat,
			line: `198.51.100.9 - - [22/Nov/2026:19:01:34 +0000] "GET / HTTP/1.1" 404 x`},
		{name: "bad month", format: Common, reason: ReasonTime,
			line: `198.51.100.9 - - [22/Nox/2026:19:01:34 +0000] "GET / HTTP/1.1" 404 0`},
		{name: "bad day", format: Common, reason: ReasonTime,
			line: `198.51.100.9 - - [31/Feb/2026:19:01:34 +0000] "GET / HTTP/1.1" 404 0`},
		{name: "bad zone", format: Common, reason: ReasonTime,
			line: `198.51.100.9 - - [22/Nov/2026:19:01:34 *0000] "GET / HTTP/1.1" 404 0`},
		{name: "empty line", format: Combined, reason: ReasonFormat, line: ``},
		{name: "host name client", format: Common, reason: ReasonClient,
			line: `monitoring-server - - [29/May/2017:19:02:48 +0000] "GET /status HTTP/1.1" 200 612`},
		{name: "unix socket client", format: Common, reason: ReasonClient,
			line: `unix: - - [29/May/2017:19:02:48 +0000] "GET /status HTTP/1.1" 200 612`},
		{name: "client list", format: Common, reason: ReasonFormat,
			line: `10.0.0.2, 10.0.0.1 - - [29/May/2017:19:02:48 +0000] "GET /status HTTP/1.1" 200 612`},
		{name: "unspecified", format: Common, reason: ReasonUnroutable,
			line: `0.0.0.0 - - [29/May/2017:19:02:48 +0000] "GET / HTTP/1.1" 200 612`},
		{name: "multicast", format: Common, reason: ReasonUnroutable,
			line: `ff02::1 - - [29/May/2017:19:02:48 +0000] "GET / HTTP/1.1" 200 612`},
		{name: "link-local", format: Common, reason: ReasonUnroutable,
			line: `169.254.1.1 - - [29/May/2017:19:02:48 +0000] "GET / HTTP/1.1" 200 612`},
		{name: "zoned", format: Common, reason: ReasonUnroutable,
			line: `fe80::1%eth0 - - [29/May/2017:19:02:48 +0000] "GET / HTTP/1.1" 200 612`},
		{name: "broadcast", format: Common, reason: ReasonUnroutable,
			line: `255.255.255.255 - - [29/May/2017:19:02:48 +0000] "GET / HTTP/1.1" 200 612`},
		{name: "loopback", format: Common, reason: ReasonLoopback,
			line: `::1 - - [29/May/2017:19:02:48 +0000] "GET / HTTP/1.1" 200 612`},
		{name: "mapped loopback", format: Common, reason: ReasonLoopback,
			line: `::ffff:127.0.0.1 - - [29/May/2017:19:02:48 +0000] "GET / HTTP/1.1" 200 612`},
		{name: "vhost with a space", format: VHostCombined, reason: ReasonFormat,
			line: `evil 192.0.2.10 - - [01/Jul/2013:06:20:38 -0500] "GET / HTTP/1.1" 200 3829 "-" "-"`},
		{name: "overlong", format: Combined, reason: ReasonOverlong,
			line: `192.0.2.1 - - [01/Jul/2013:06:20:38 -0500] "GET / HTTP/1.1" 200 1 "-" "` + strings.Repeat("a", MaxLineBytes) + `"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewParser(tc.format, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := p.Parse([]byte(tc.line))
			if tc.reason != "" {
				var pe *ParseError
				if !errors.As(err, &pe) || pe.Reason != tc.reason {
					t.Fatalf("Parse(%q) error = %v, want reason %q", tc.line, err, tc.reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q) error = %v", tc.line, err)
			}
			tc.want.RemoteAddr = tc.want.Client
			if tc.want.RequestLine == "" && tc.want.Method != "" {
				tc.want.RequestLine = tc.want.Method + " " + tc.want.Target
				if tc.want.Protocol != "" {
					tc.want.RequestLine += " " + tc.want.Protocol
				}
			}
			if !equalRequest(got, tc.want) {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v", tc.line, got, tc.want)
			}
			if got.Time.Format("-0700") != tc.want.Time.Format("-0700") {
				t.Errorf("zone %s, want %s", got.Time.Format("-0700"), tc.want.Time.Format("-0700"))
			}
		})
	}
}

// equalRequest compares times as instants and the rest field by field.
func equalRequest(a, b Request) bool {
	if !a.Time.Equal(b.Time) {
		return false
	}
	a.Time, b.Time = time.Time{}, time.Time{}
	return a == b
}

func TestParseCustom(t *testing.T) {
	ip := netip.MustParseAddr
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48")}
	line := func(remote, xff string) string {
		return remote + ` - - [22/Nov/2026:19:01:34 +0000] "GET /k/open HTTP/1.1" 404 0 "-" "curl/8" "` + xff + `"`
	}
	tests := []struct {
		name    string
		trusted []netip.Prefix
		line    string
		client  netip.Addr
		reason  Reason
	}{
		{name: "no trusted proxies: header ignored", line: line("203.0.113.7", "198.51.100.1"), client: ip("203.0.113.7")},
		{name: "untrusted peer: header ignored", trusted: trusted, line: line("203.0.113.7", "198.51.100.1"), client: ip("203.0.113.7")},
		{name: "trusted peer: right-most untrusted hop", trusted: trusted, line: line("10.0.0.2", "1.1.1.1, 198.51.100.1, 10.0.0.9"), client: ip("198.51.100.1")},
		{name: "hop with port", trusted: trusted, line: line("10.0.0.2", "198.51.100.1:4711"), client: ip("198.51.100.1")},
		{name: "ipv6 hop with port", trusted: trusted, line: line("10.0.0.2", "[2001:db8::5]:4711"), client: ip("2001:db8::5")},
		{name: "mapped hop", trusted: trusted, line: line("10.0.0.2", "::ffff:198.51.100.1"), client: ip("198.51.100.1")},
		{name: "trusted ipv6 proxy", trusted: trusted, line: line("2001:db8:ffff::1", "203.0.113.9"), client: ip("203.0.113.9")},
		{name: "missing header", trusted: trusted, line: line("10.0.0.2", "-"), reason: ReasonForwarded},
		{name: "unknown hop", trusted: trusted, line: line("10.0.0.2", "198.51.100.1, unknown"), reason: ReasonForwarded},
		{name: "garbage hop", trusted: trusted, line: line("10.0.0.2", "198.51.100.1, x y"), reason: ReasonForwarded},
		{name: "only trusted hops", trusted: trusted, line: line("10.0.0.2", "10.1.1.1, 10.2.2.2"), reason: ReasonForwarded},
		{name: "loopback hop", trusted: trusted, line: line("10.0.0.2", "127.0.0.1"), reason: ReasonLoopback},
		{name: "hundred hops", trusted: trusted, line: line("10.0.0.2", strings.Repeat("10.9.9.9, ", 100)+"198.51.100.3"), client: ip("198.51.100.3")},
		{name: "trailing text", line: line("203.0.113.7", "-") + " extra", reason: ReasonFormat},
		{name: "loopback peer", line: line("127.0.0.1", "198.51.100.1"), reason: ReasonLoopback},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewParser(nginxMain, tc.trusted)
			if err != nil {
				t.Fatal(err)
			}
			got, err := p.Parse([]byte(tc.line))
			if tc.reason != "" {
				var pe *ParseError
				if !errors.As(err, &pe) || pe.Reason != tc.reason {
					t.Fatalf("Parse(%q) error = %v, want reason %q", tc.line, err, tc.reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q) error = %v", tc.line, err)
			}
			if got.Client != tc.client || got.Path != "/k/open" || got.Status != 404 {
				t.Errorf("Parse(%q) = client %v path %q status %d, want %v /k/open 404", tc.line, got.Client, got.Path, got.Status, tc.client)
			}
		})
	}
}

func TestCustomTimeAndRequestVariants(t *testing.T) {
	tests := []struct {
		name, format, line string
		want               time.Time
		path               string
	}{
		{"iso8601", `$remote_addr $time_iso8601 "$request" $status`,
			`192.0.2.1 2026-11-22T20:01:34+01:00 "GET /a?b HTTP/1.1" 404`, time.Date(2026, 11, 22, 19, 1, 34, 0, time.UTC), "/a"},
		{"msec", `$remote_addr $msec "$request" $status`,
			`192.0.2.1 1795460494.250 "GET /a HTTP/1.1" 404`, time.Unix(1795460494, 250e6), "/a"},
		{"method and uri", `$remote_addr [$time_local] $request_method $request_uri $server_protocol $status`,
			`192.0.2.1 [22/Nov/2026:19:01:34 +0000] GET /k/x?y HTTP/1.1 404`, time.Date(2026, 11, 22, 19, 1, 34, 0, time.UTC), "/k/x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewParser(tc.format, nil)
			if err != nil {
				t.Fatal(err)
			}
			r, err := p.Parse([]byte(tc.line))
			if err != nil {
				t.Fatalf("Parse(%q) error = %v", tc.line, err)
			}
			if !r.Time.Equal(tc.want) || r.Path != tc.path || r.Status != 404 {
				t.Errorf("Parse(%q) = %v %q %d, want %v %q 404", tc.line, r.Time, r.Path, r.Status, tc.want, tc.path)
			}
		})
	}
}

func TestNewParserErrors(t *testing.T) {
	tests := []struct {
		name, format string
		trusted      []netip.Prefix
		want         string
	}{
		{name: "empty", format: " ", want: "empty log format"},
		{name: "unknown variable", format: `$remote_addr [$time_local] "$request" $status $bogus`, want: "unknown variable $bogus"},
		{name: "no remote_addr", format: `$http_x_forwarded_for [$time_local] "$request" $status`, want: "no $remote_addr"},
		{name: "no time", format: `$remote_addr "$request" $status`, want: "no $time_local"},
		{name: "no request", format: `$remote_addr [$time_local] $status`, want: "no $request"},
		{name: "no status", format: `$remote_addr [$time_local] "$request"`, want: "no $status"},
		{name: "client field first", format: `$http_host $remote_addr [$time_local] "$request" $status`, want: "could forge"},
		{name: "braces", format: `${remote_addr} [$time_local] "$request" $status`, want: "not supported"},
		{name: "adjacent", format: `$remote_addr$remote_user [$time_local] "$request" $status`, want: "followed directly"},
		{name: "twice", format: `$remote_addr [$time_local] "$request" $status $status`, want: "twice"},
		{name: "trusted without header", format: Combined, trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, want: "no $http_x_forwarded_for"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewParser(tc.format, tc.trusted)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewParser(%q) error = %v, want it to contain %q", tc.format, err, tc.want)
			}
		})
	}
	for _, f := range []string{Common, Combined, VHostCombined, nginxMain, `$server_name $remote_addr [$time_local] "$request" $status $upstream_response_time $http_x_real_ip`} {
		if err := CheckFormat(f); err != nil {
			t.Errorf("CheckFormat(%q) = %v, want nil", f, err)
		}
	}
}

// TestFormatNames: a name where a format belongs, nginx's main first of
// all, is explained with what to write instead.
func TestFormatNames(t *testing.T) {
	tests := []struct {
		format string
		want   []string
	}{
		{"main", []string{`"main" is the name nginx.conf gives its default log_format, not a format`,
			"format: '" + nginxMain + "'", "combined is the built-in equivalent without the last field"}},
		{" Main ", []string{`"Main" is the name`}},
		{"nginx", []string{"nginx writes combined when access_log names no format", "for main: '" + nginxMain + "'"}},
		{"apache", []string{`"apache" is not a format`, "CustomLog"}},
		{"Combined", []string{"in lower case: combined"}},
		{`%h %l %u %t "%r" %>s %b`, []string{"Apache LogFormat", "common"}},
		{"default", []string{`unknown format "default"`, "the name of a log_format will not do"}},
	}
	for _, tc := range tests {
		_, err := NewParser(tc.format, nil)
		for _, want := range tc.want {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("NewParser(%q) error = %v, want it to contain %q", tc.format, err, want)
			}
		}
	}
}
