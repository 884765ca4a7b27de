package web

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/internal/golden"
	"github.com/webknock/webknock/knock"
)

const testToken = "s3cret-t0ken-0123456789abcdef"

var t0 = time.Date(2026, 11, 22, 19, 2, 22, 0, time.UTC)

// fakeFirewall holds grants in memory.
type fakeFirewall struct {
	mu        sync.Mutex
	grants    []firewall.Grant
	health    firewall.Health
	revokeErr error
	revoked   []netip.Addr
}

var _ Firewall = (*fakeFirewall)(nil)

func (f *fakeFirewall) Grants() []firewall.Grant {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.grants)
}

func (f *fakeFirewall) Health() firewall.Health {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.health
}

func (f *fakeFirewall) Revoke(_ context.Context, ip netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.revokeErr != nil {
		return f.revokeErr
	}
	n := len(f.grants)
	f.grants = slices.DeleteFunc(f.grants, func(g firewall.Grant) bool { return g.IP == ip })
	if len(f.grants) == n {
		return firewall.ErrNoGrant
	}
	f.revoked = append(f.revoked, ip)
	return nil
}

type fakeTracker struct{}

func (fakeTracker) Clients() int    { return 42 }
func (fakeTracker) Evicted() uint64 { return 7 }

func testGrants() []firewall.Grant {
	return []firewall.Grant{
		{IP: netip.MustParseAddr("203.0.113.7"), Sequence: "ssh", Ports: []firewall.Port{{Proto: "tcp", Number: 22}},
			Until: t0.Add(9*time.Minute + 12*time.Second)},
		{IP: netip.MustParseAddr("2001:db8::7"), Sequence: "admin", Ports: []firewall.Port{{Proto: "tcp", Number: 22}, {Proto: "udp", Number: 51820}},
			Until: t0.Add(2 * time.Hour).In(time.FixedZone("CET", 3600))},
	}
}

func writeToken(t *testing.T, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

type fixture struct {
	s   *Server
	fw  *fakeFirewall
	log *bytes.Buffer
}

func newFixture(t *testing.T, tokenFile string, mod func(*Options)) *fixture {
	t.Helper()
	fw := &fakeFirewall{grants: testGrants(), health: firewall.Health{InSync: true, Failures: 3}}
	var log bytes.Buffer
	o := Options{
		Listen:    "127.0.0.1:0",
		TokenFile: tokenFile,
		Logger:    slog.New(slog.NewTextHandler(&syncWriter{w: &log}, nil)),
		Clock:     func() time.Time { return t0 },
		Following: func() bool { return true },
		Tracker:   fakeTracker{},
	}
	if mod != nil {
		mod(&o)
	}
	s, err := New(o, fw)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &fixture{s: s, fw: fw, log: &log}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func do(t *testing.T, h http.Handler, method, target string, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	for k, v := range header {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func bearer(token string) http.Header { return http.Header{"Authorization": {"Bearer " + token}} }

func TestEndpoints(t *testing.T) {
	withToken := writeToken(t, "\n  "+testToken+"\n")
	tests := []struct {
		name         string
		noToken      bool
		method, path string
		header       http.Header
		want         int
		wantBody     string
		wantHeader   map[string]string
		wantRevoked  string
	}{
		{name: "page", method: "GET", path: "/", want: 200, wantBody: "<title>webknock</title>",
			wantHeader: map[string]string{"Content-Type": "text/html; charset=utf-8"}},
		{name: "page HEAD", method: "HEAD", path: "/", want: 200},
		{name: "unknown path", method: "GET", path: "/nope", want: 404},
		{name: "page POST", method: "POST", path: "/", want: 405},
		{name: "style", method: "GET", path: "/static/style.css", want: 200, wantBody: "@media",
			wantHeader: map[string]string{"Content-Type": "text/css; charset=utf-8"}},
		{name: "grants", method: "GET", path: "/api/grants", want: 200, wantBody: `"ip":"203.0.113.7"`,
			wantHeader: map[string]string{"Content-Type": "application/json"}},
		{name: "grants POST", method: "POST", path: "/api/grants", want: 405},
		{name: "grants PUT", method: "PUT", path: "/api/grants", want: 405},
		{name: "grants DELETE all", method: "DELETE", path: "/api/grants", header: bearer(testToken), want: 405},
		{name: "grant GET", method: "GET", path: "/api/grants/203.0.113.7", want: 405,
			wantHeader: map[string]string{"Allow": "DELETE"}},
		{name: "revoke without token", method: "DELETE", path: "/api/grants/203.0.113.7", want: 401,
			wantHeader: map[string]string{"WWW-Authenticate": `Bearer realm="webknock"`}},
		{name: "revoke wrong token", method: "DELETE", path: "/api/grants/203.0.113.7", header: bearer("wrong-token-0123456789abcdef"), want: 401,
			wantHeader: map[string]string{"WWW-Authenticate": `Bearer realm="webknock"`}},
		{name: "revoke token prefix", method: "DELETE", path: "/api/grants/203.0.113.7", header: bearer(testToken[:len(testToken)-1]), want: 401},
		{name: "revoke token longer", method: "DELETE", path: "/api/grants/203.0.113.7", header: bearer(testToken + "x"), want: 401},
		{name: "revoke basic auth", method: "DELETE", path: "/api/grants/203.0.113.7", header: http.Header{"Authorization": {"Basic " + testToken}}, want: 401},
		{name: "revoke token as cookie", method: "DELETE", path: "/api/grants/203.0.113.7", header: http.Header{"Cookie": {"token=" + testToken}}, want: 401},
		{name: "revoke bad token in bad IP", method: "DELETE", path: "/api/grants/bogus", want: 401},
		{name: "revoke", method: "DELETE", path: "/api/grants/203.0.113.7", header: bearer(testToken), want: 204, wantRevoked: "203.0.113.7"},
		{name: "revoke lower-case scheme", method: "DELETE", path: "/api/grants/203.0.113.7", header: http.Header{"Authorization": {"bearer " + testToken}}, want: 204, wantRevoked: "203.0.113.7"},
		{name: "revoke IPv6", method: "DELETE", path: "/api/grants/2001:db8::7", header: bearer(testToken), want: 204, wantRevoked: "2001:db8::7"},
		{name: "revoke IPv4-mapped", method: "DELETE", path: "/api/grants/::ffff:203.0.113.7", header: bearer(testToken), want: 204, wantRevoked: "203.0.113.7"},
		{name: "revoke no grant", method: "DELETE", path: "/api/grants/198.51.100.1", header: bearer(testToken), want: 404, wantBody: "198.51.100.1 holds no grant"},
		{name: "revoke bad IP", method: "DELETE", path: "/api/grants/bogus", header: bearer(testToken), want: 400, wantBody: `bad IP address "bogus"`},
		{name: "revoke CIDR", method: "DELETE", path: "/api/grants/203.0.113.0%2F24", header: bearer(testToken), want: 400},
		{name: "revoke zone", method: "DELETE", path: "/api/grants/fe80::1%25eth0", header: bearer(testToken), want: 400},
		{name: "revoke without token file", noToken: true, method: "DELETE", path: "/api/grants/203.0.113.7", header: bearer(testToken), want: 403, wantBody: "revoking is disabled"},
		{name: "revoke without token file nor header", noToken: true, method: "DELETE", path: "/api/grants/203.0.113.7", want: 403},
		{name: "metrics", method: "GET", path: "/metrics", want: 200, wantBody: "webknock_grants_active 2"},
		{name: "metrics POST", method: "POST", path: "/metrics", want: 405},
		{name: "healthz", method: "GET", path: "/healthz", want: 200, wantBody: "ok\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tokenFile := withToken
			if tt.noToken {
				tokenFile = ""
			}
			f := newFixture(t, tokenFile, nil)
			w := do(t, f.s.Handler(), tt.method, tt.path, tt.header)
			if w.Code != tt.want {
				t.Fatalf("%s %s = %d, want %d; body %q", tt.method, tt.path, w.Code, tt.want, w.Body)
			}
			if !strings.Contains(w.Body.String(), tt.wantBody) {
				t.Errorf("%s %s: body %q, want it to contain %q", tt.method, tt.path, w.Body, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if got := w.Header().Get(k); got != v {
					t.Errorf("%s %s: header %s = %q, want %q", tt.method, tt.path, k, got, v)
				}
			}
			for k, v := range map[string]string{
				"X-Content-Type-Options": "nosniff",
				"Referrer-Policy":        "no-referrer",
				"X-Frame-Options":        "DENY",
				"Cache-Control":          "no-store",
			} {
				if got := w.Header().Get(k); got != v {
					t.Errorf("%s %s: header %s = %q, want %q", tt.method, tt.path, k, got, v)
				}
			}
			if csp := w.Header().Get("Content-Security-Policy"); !strings.HasPrefix(csp, "default-src 'none'") {
				t.Errorf("%s %s: Content-Security-Policy %q", tt.method, tt.path, csp)
			}
			var revoked []string
			for _, ip := range f.fw.revoked {
				revoked = append(revoked, ip.String())
			}
			if want := []string{tt.wantRevoked}; tt.wantRevoked == "" && len(revoked) > 0 || tt.wantRevoked != "" && !slices.Equal(revoked, want) {
				t.Errorf("%s %s: revoked %v, want %q", tt.method, tt.path, revoked, tt.wantRevoked)
			}
		})
	}
}

func TestRevokeFailure(t *testing.T) {
	f := newFixture(t, writeToken(t, testToken), nil)
	f.fw.revokeErr = errors.New("iptables: boom")
	w := do(t, f.s.Handler(), "DELETE", "/api/grants/203.0.113.7", bearer(testToken))
	if w.Code != 500 || strings.Contains(w.Body.String(), "boom") {
		t.Errorf("revoke with a failing firewall = %d %q, want 500 without the error's text", w.Code, w.Body)
	}
	if !strings.Contains(f.log.String(), "boom") {
		t.Errorf("log %q does not tell the error", f.log)
	}
}

func TestNoTokenWarns(t *testing.T) {
	dir := t.TempDir()
	for _, path := range []string{"", filepath.Join(dir, "missing"), writeToken(t, ""), writeToken(t, "short-token\n")} {
		f := newFixture(t, path, nil)
		if !strings.Contains(f.log.String(), "level=WARN") || !strings.Contains(f.log.String(), "revoking over HTTP is disabled") {
			t.Errorf("token file %q: log %q, want a warning", path, f.log)
		}
		if f.s.token != "" {
			t.Errorf("token file %q: token %q, want none", path, f.s.token)
		}
	}
}

func TestWorldReadableTokenWarns(t *testing.T) {
	path := writeToken(t, testToken)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, path, nil)
	if f.s.token != testToken || !strings.Contains(f.log.String(), "readable by every user") {
		t.Errorf("world-readable token file: token %q, log %q; want the token and a warning", f.s.token, f.log)
	}
	if f := newFixture(t, writeToken(t, testToken), nil); f.log.Len() != 0 {
		t.Errorf("token file 0600: log %q, want nothing", f.log)
	}
}

func TestUnknownKind(t *testing.T) {
	f := newFixture(t, "", nil)
	f.s.Event(knock.Event{Kind: 99})
	if n := len(f.s.recent.newestFirst()); n != 1 {
		t.Errorf("recent events = %d, want 1", n)
	}
	if w := do(t, f.s.Handler(), "GET", "/metrics", nil); w.Code != 200 {
		t.Errorf("GET /metrics after an unknown kind = %d", w.Code)
	}
}

func TestReadToken(t *testing.T) {
	tests := []struct {
		name, content string
		want          string
		wantErr       string
	}{
		{"trimmed", "  " + testToken + "\r\n", testToken, ""},
		{"sixteen bytes", "0123456789abcdef", "0123456789abcdef", ""},
		{"fifteen bytes", "0123456789abcde\n", "", "want at least 16"},
		{"empty", "", "", "has 0 bytes"},
		{"blank", " \n\t\n", "", "has 0 bytes"},
		{"inner space", "0123456789 abcdef", "", "offset 10"},
		{"two lines", "0123456789abcdef\n0123456789abcdef\n", "", "offset 16"},
		{"non-ASCII", "0123456789abcdefé", "", "non-ASCII"},
		{"huge", strings.Repeat("a", maxTokenFileBytes+1), "", "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadToken(writeToken(t, tt.content))
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("ReadToken(%q) error = %v, want %q", tt.content, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("ReadToken(%q) = %q, want %q", tt.content, got, tt.want)
			}
		})
	}
	if _, err := ReadToken(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadToken(missing) = %v, want os.ErrNotExist", err)
	}
}

func TestGrantsJSON(t *testing.T) {
	f := newFixture(t, "", nil)
	w := do(t, f.s.Handler(), "GET", "/api/grants", nil)
	golden.Check(t, "testdata/grants.golden", w.Body.Bytes())

	f.fw.grants = nil
	w = do(t, f.s.Handler(), "GET", "/api/grants", nil)
	if got := w.Body.String(); got != "[]\n" {
		t.Errorf("GET /api/grants without grants = %q, want %q", got, "[]\n")
	}
	f.fw.grants = []firewall.Grant{{IP: netip.MustParseAddr("203.0.113.7"), Sequence: "ssh", Until: t0}}
	w = do(t, f.s.Handler(), "GET", "/api/grants", nil)
	if got, want := w.Body.String(), `[{"ip":"203.0.113.7","sequence":"ssh","ports":[],"until":"2026-11-22T19:02:22Z"}]`+"\n"; got != want {
		t.Errorf("GET /api/grants, grant without ports = %q, want %q", got, want)
	}
}

func TestMetrics(t *testing.T) {
	f := newFixture(t, "", nil)
	s := f.s
	s.LineRead("/var/log/a.log")
	s.LineRead("/var/log/a.log")
	s.LineRead("/var/log/b.log")
	s.LineParsed("/var/log/a.log")
	s.LineSkipped("/var/log/a.log", "format")
	s.LineSkipped("/var/log/b.log", "loopback")
	s.LineSkipped("/var/log/b.log", "loopback")
	s.Event(knock.Event{Kind: knock.KindStep, Step: 1})
	s.Event(knock.Event{Kind: knock.KindGrant})
	s.Event(knock.Event{Kind: knock.KindGrant})
	s.Rotation("/var/log/a.log")
	s.Reload(true)
	s.Reload(false)
	s.Reload(false)
	f.fw.health = firewall.Health{InSync: false, Pending: 2, Failures: 5}

	w := do(t, s.Handler(), "GET", "/metrics", nil)
	if w.Code != 200 {
		t.Fatalf("GET /metrics = %d", w.Code)
	}
	body := w.Body.String()
	for _, want := range []string{
		`webknock_lines_total{file="/var/log/a.log",result="read"} 2`,
		`webknock_lines_total{file="/var/log/a.log",result="parsed"} 1`,
		`webknock_lines_total{file="/var/log/a.log",result="skipped"} 1`,
		`webknock_lines_total{file="/var/log/b.log",result="read"} 1`,
		`webknock_lines_total{file="/var/log/b.log",result="skipped"} 2`,
		`webknock_lines_skipped_total{file="/var/log/a.log",reason="format"} 1`,
		`webknock_lines_skipped_total{file="/var/log/b.log",reason="loopback"} 2`,
		`webknock_events_total{event="step"} 1`,
		`webknock_events_total{event="grant"} 2`,
		`webknock_events_total{event="reset"} 0`,
		`webknock_events_total{event="timeout"} 0`,
		`webknock_events_total{event="lockout"} 0`,
		`webknock_grants_active 2`,
		`webknock_firewall_failures_total 5`,
		`webknock_firewall_pending_deletes 2`,
		`webknock_firewall_in_sync 0`,
		`webknock_following 1`,
		`webknock_log_rotations_total{file="/var/log/a.log"} 1`,
		`webknock_knock_clients 42`,
		`webknock_knock_evictions_total 7`,
		`webknock_reloads_total{result="ok"} 1`,
		`webknock_reloads_total{result="failed"} 2`,
		"# TYPE webknock_knock_evictions_total counter",
		"# TYPE webknock_grants_active gauge",
		"go_goroutines ",
	} {
		if !strings.Contains(body, want+"\n") && !strings.Contains(body, want) {
			t.Errorf("GET /metrics lacks %q", want)
		}
	}
	if strings.Contains(body, "promhttp_") {
		t.Errorf("GET /metrics serves the global registry's promhttp series")
	}
	if runtimeProcess() && !strings.Contains(body, "process_open_fds ") {
		t.Errorf("GET /metrics lacks the process collector")
	}
}

// runtimeProcess tells whether the process collector has /proc to read.
func runtimeProcess() bool {
	_, err := os.Stat("/proc/self/stat")
	return err == nil
}

func TestMetricsWithoutTracker(t *testing.T) {
	f := newFixture(t, "", func(o *Options) { o.Tracker, o.Following = nil, nil })
	body := do(t, f.s.Handler(), "GET", "/metrics", nil).Body.String()
	for _, want := range []string{"webknock_knock_clients 0\n", "webknock_knock_evictions_total 0\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /metrics without tracker lacks %q", want)
		}
	}
	if strings.Contains(body, "webknock_following ") {
		t.Errorf("GET /metrics without Following reports webknock_following")
	}
}

func TestPage(t *testing.T) {
	f := newFixture(t, "", nil)
	s := f.s
	f.fw.grants = append(f.fw.grants, firewall.Grant{IP: netip.MustParseAddr("192.0.2.9"), Sequence: `x"><script>alert(1)</script>`,
		Ports: []firewall.Port{{Proto: "tcp", Number: 2222}}, Until: t0.Add(-time.Second)})
	s.Event(knock.Event{Kind: knock.KindStep, Time: t0.Add(-3 * time.Second), Client: netip.MustParseAddr("203.0.113.7"), Sequence: "ssh", Step: 1})
	s.Event(knock.Event{Kind: knock.KindLockout, Time: t0.Add(-2 * time.Second), Client: netip.MustParseAddr("198.51.100.66"), Sequence: "<script>alert('x')</script>", Until: t0.Add(15 * time.Minute)})
	s.Event(knock.Event{Kind: knock.KindGrant, Time: t0.Add(-time.Second), Client: netip.MustParseAddr("203.0.113.7"), Sequence: "ssh",
		Until: t0.Add(9*time.Minute + 12*time.Second), Ports: []string{"22/tcp"}})
	s.LineRead("a")
	s.LineSkipped("a", "format")

	w := do(t, s.Handler(), "GET", "/", nil)
	page := w.Body.String()
	if w.Code != 200 {
		t.Fatalf("GET / = %d", w.Code)
	}
	for _, want := range []string{
		`<meta name="viewport" content="width=device-width, initial-scale=1">`,
		"<title>webknock</title>",
		`<td data-label="IP">203.0.113.7</td>`,
		`<td data-label="IP">2001:db8::7</td>`,
		`<td data-label="Ports">22/tcp 51820/udp</td>`,
		`<td data-label="Left">9m 12s</td>`,
		`<td data-label="Left">2h 0m 0s</td>`,
		`<td data-label="Left">0s</td>`,
		`2026-11-22 21:02:22`, // the CET until, shown in UTC
		`&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;`,
		`x&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;`,
		`<td data-label="Detail">until 2026-11-22 19:11:34, 22/tcp</td>`,
		`<td data-label="Detail">step 1</td>`,
		"<dt>lines read</dt><dd>1</dd>",
		"<dt>lines skipped</dt><dd>1</dd>",
		"<dt>grants</dt><dd>1</dd>",
		"<dt>lockouts</dt><dd>1</dd>",
		"<dt>firewall failures</dt><dd>3</dd>",
		"<dt>clients in progress</dt><dd>42</dd>",
		`<p class="health ok">ok</p>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("GET / lacks %q", want)
		}
	}
	if strings.Contains(strings.ToLower(page), "<script") {
		t.Errorf("GET / contains an unescaped <script")
	}
	for _, bad := range []string{"http://", "https://", "//"} {
		if bad == "//" {
			// no protocol-relative URL in an attribute either
			bad = `="//`
		}
		if strings.Contains(page, bad) {
			t.Errorf("GET / contains an external reference %q", bad)
		}
	}
	// Newest first: grant, lockout, step.
	g, l, st := strings.Index(page, `<tr class="grant">`), strings.Index(page, `<tr class="lockout">`), strings.Index(page, `<tr class="step">`)
	if g < 0 || !(g < l && l < st) {
		t.Errorf("events not newest first: grant at %d, lockout at %d, step at %d", g, l, st)
	}
	css := do(t, s.Handler(), "GET", "/static/style.css", nil).Body.String()
	if strings.Contains(css, "url(") || strings.Contains(css, "@import") {
		t.Errorf("style.css loads other resources")
	}
}

func TestPageEmpty(t *testing.T) {
	f := newFixture(t, "", nil)
	f.fw.grants = nil
	page := do(t, f.s.Handler(), "GET", "/", nil).Body.String()
	for _, want := range []string{"No port is open to anyone.", "No event since start.", "<dt>revoke over HTTP</dt><dd>disabled (no token)</dd>"} {
		if !strings.Contains(page, want) {
			t.Errorf("GET / without grants or events lacks %q", want)
		}
	}
}

func TestHealthz(t *testing.T) {
	yes, no := func() bool { return true }, func() bool { return false }
	tests := []struct {
		name      string
		following func() bool
		health    firewall.Health
		want      int
		wantBody  string
	}{
		{"well", yes, firewall.Health{InSync: true}, 200, "ok\n"},
		{"following not reported", nil, firewall.Health{InSync: true}, 200, "ok\n"},
		{"not following", no, firewall.Health{InSync: true}, 503, "not following the access logs\n"},
		{"pending deletes", yes, firewall.Health{Pending: 2}, 503, "firewall out of sync: 2 rule deletes pending\n"},
		{"out of sync", yes, firewall.Health{}, 503, "firewall out of sync\n"},
		{"both", no, firewall.Health{}, 503, "not following the access logs; firewall out of sync\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, "", func(o *Options) { o.Following = tt.following })
			f.fw.health = tt.health
			w := do(t, f.s.Handler(), "GET", "/healthz", nil)
			if w.Code != tt.want || w.Body.String() != tt.wantBody {
				t.Errorf("GET /healthz = %d %q, want %d %q", w.Code, w.Body, tt.want, tt.wantBody)
			}
			page := do(t, f.s.Handler(), "GET", "/", nil).Body.String()
			if !strings.Contains(page, strings.TrimSpace(tt.wantBody)) {
				t.Errorf("GET / does not show the health %q", tt.wantBody)
			}
		})
	}
}

func TestRingBounded(t *testing.T) {
	f := newFixture(t, "", func(o *Options) { o.RecentEvents = 3 })
	for i := 1; i <= 10; i++ {
		f.s.Event(knock.Event{Kind: knock.KindStep, Step: i})
		got := f.s.recent.newestFirst()
		var steps []int
		for _, e := range got {
			steps = append(steps, e.Step)
		}
		var want []int
		for j := i; j > 0 && j > i-3; j-- {
			want = append(want, j)
		}
		if !slices.Equal(steps, want) {
			t.Fatalf("after %d events: steps %v, want %v", i, steps, want)
		}
	}
	if n := len(f.s.recent.buf); n != 3 {
		t.Errorf("ring holds %d slots, want 3", n)
	}
	page := do(t, f.s.Handler(), "GET", "/", nil).Body.String()
	if n := strings.Count(page, `<tr class="step">`); n != 3 {
		t.Errorf("GET / shows %d events, want 3", n)
	}
	d := newFixture(t, "", nil)
	if n := len(d.s.recent.buf); n != DefaultRecentEvents {
		t.Errorf("default ring holds %d slots, want %d", n, DefaultRecentEvents)
	}
}

func TestTimeLeft(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{0, "0s"},
		{999 * time.Millisecond, "0s"},
		{42 * time.Second, "42s"},
		{9*time.Minute + 12*time.Second + 900*time.Millisecond, "9m 12s"},
		{time.Hour + 5*time.Second, "1h 0m 5s"},
		{26 * time.Hour, "26h 0m 0s"},
	}
	for _, tt := range tests {
		if got := timeLeft(tt.d); got != tt.want {
			t.Errorf("timeLeft(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestServeShutsDown(t *testing.T) {
	f := newFixture(t, "", nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.s.serve(ctx, ln) }()

	resp, err := http.Get("http://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /healthz = %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve = %v, want nil after ctx ends", err)
		}
	case <-time.After(shutdownTimeout + 5*time.Second):
		t.Fatal("serve did not return after ctx ended")
	}
	if _, err := http.Get("http://" + ln.Addr().String() + "/healthz"); err == nil {
		t.Error("server still answers after shutdown")
	}
}

func TestServe(t *testing.T) {
	f := newFixture(t, "", nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() { done <- f.s.Serve(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve on %s = %v, want nil", f.s.opts.Listen, err)
		}
	case <-time.After(shutdownTimeout + 5*time.Second):
		t.Fatal("Serve did not return after ctx ended")
	}

	bad := newFixture(t, "", func(o *Options) { o.Listen = "256.0.0.1:http-nope" })
	if err := bad.s.Serve(context.Background()); err == nil {
		t.Error("Serve on a bad address = nil, want an error")
	}
}

func TestClient(t *testing.T) {
	f := newFixture(t, writeToken(t, testToken), nil)
	srv := httptest.NewServer(f.s.Handler())
	defer srv.Close()
	ctx := context.Background()

	got, err := FetchGrants(ctx, srv.URL+"/")
	if err != nil {
		t.Fatalf("FetchGrants: %v", err)
	}
	want := testGrants()
	if len(got) != len(want) {
		t.Fatalf("FetchGrants = %v, want %v", got, want)
	}
	for i := range want {
		if got[i].IP != want[i].IP || got[i].Sequence != want[i].Sequence || !slices.Equal(got[i].Ports, want[i].Ports) ||
			!got[i].Until.Equal(want[i].Until) || got[i].Until.Location() != time.UTC {
			t.Errorf("FetchGrants[%d] = %+v, want %+v in UTC", i, got[i], want[i])
		}
	}

	ip := netip.MustParseAddr("2001:db8::7")
	if err := RevokeGrant(ctx, srv.URL, "wrong-token-0123456789", ip); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("RevokeGrant(wrong token) = %v, want ErrUnauthorized", err)
	}
	if err := RevokeGrant(ctx, srv.URL, "", ip); err == nil {
		t.Error("RevokeGrant(no token) = nil, want an error")
	}
	if err := RevokeGrant(ctx, srv.URL, testToken, ip); err != nil {
		t.Errorf("RevokeGrant = %v", err)
	}
	if err := RevokeGrant(ctx, srv.URL, testToken, ip); !errors.Is(err, firewall.ErrNoGrant) {
		t.Errorf("RevokeGrant(again) = %v, want firewall.ErrNoGrant", err)
	}
	if got, _ := FetchGrants(ctx, srv.URL); len(got) != 1 {
		t.Errorf("after revoke, FetchGrants = %v, want one grant", got)
	}

	f.fw.revokeErr = errors.New("boom")
	if err := RevokeGrant(ctx, srv.URL, testToken, netip.MustParseAddr("203.0.113.7")); err == nil || !strings.Contains(err.Error(), "500 Internal Server Error: revoke failed") {
		t.Errorf("RevokeGrant(failing firewall) = %v, want the status and message", err)
	}

	disabled := newFixture(t, "", nil)
	srv2 := httptest.NewServer(disabled.s.Handler())
	defer srv2.Close()
	if err := RevokeGrant(ctx, srv2.URL, testToken, ip); !errors.Is(err, ErrRevokeDisabled) {
		t.Errorf("RevokeGrant(server without token) = %v, want ErrRevokeDisabled", err)
	}
	if _, err := FetchGrants(ctx, srv2.URL+"/nope"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("FetchGrants(wrong URL) = %v, want a 404 error", err)
	}
}

func TestBaseURL(t *testing.T) {
	tests := []struct{ listen, want string }{
		{"127.0.0.1:7080", "http://127.0.0.1:7080"},
		{":7080", "http://127.0.0.1:7080"},
		{"0.0.0.0:7080", "http://127.0.0.1:7080"},
		{"[::]:7080", "http://[::1]:7080"},
		{"[::1]:9090", "http://[::1]:9090"},
		{"localhost:7080", "http://localhost:7080"},
	}
	for _, tt := range tests {
		if got, err := BaseURL(tt.listen); err != nil || got != tt.want {
			t.Errorf("BaseURL(%q) = %q, %v, want %q", tt.listen, got, err, tt.want)
		}
	}
	if _, err := BaseURL("7080"); err == nil {
		t.Error(`BaseURL("7080") = nil error, want one`)
	}
}

// TestConcurrentUse runs the recorders and every page at once, for -race.
func TestConcurrentUse(t *testing.T) {
	f := newFixture(t, "", func(o *Options) { o.RecentEvents = 8 })
	h := f.s.Handler()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			file := []string{"a", "b"}[g%2]
			for i := range 200 {
				f.s.LineRead(file)
				f.s.LineSkipped(file, []string{"format", "client"}[i%2])
				f.s.Event(knock.Event{Kind: knock.Kind(i%5 + 1), Time: t0})
			}
		}()
	}
	for _, path := range []string{"/", "/metrics", "/api/grants", "/healthz"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				if w := do(t, h, "GET", path, nil); w.Code != 200 {
					t.Errorf("GET %s = %d", path, w.Code)
				}
			}
		}()
	}
	wg.Wait()
	if got := f.s.read.Load(); got != 800 {
		t.Errorf("lines read = %d, want 800", got)
	}
}

func TestNewRefuses(t *testing.T) {
	if _, err := New(Options{}, nil); err == nil {
		t.Error("New without firewall = nil error")
	}
	if _, err := New(Options{RecentEvents: -1}, &fakeFirewall{}); err == nil {
		t.Error("New with RecentEvents -1 = nil error")
	}
}
