package web

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	revoked   []string // "SOURCE REASON" of each revoke that ended grants
	// sessions is how many sessions KillSessions ends per call, or
	// killErr why it fails; killed lists its calls as "SOURCE PORTS".
	sessions int
	killErr  error
	killed   []string
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

func (f *fakeFirewall) Revoke(_ context.Context, p netip.Prefix, reason string) ([]firewall.Grant, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.revokeErr != nil {
		return nil, f.revokeErr
	}
	var ended []firewall.Grant
	f.grants = slices.DeleteFunc(f.grants, func(g firewall.Grant) bool {
		if g.Source().Overlaps(p) {
			ended = append(ended, g)
			return true
		}
		return false
	})
	if len(ended) == 0 {
		return nil, firewall.ErrNoGrant
	}
	f.revoked = append(f.revoked, firewall.FormatSource(p)+" "+reason)
	return ended, nil
}

func (f *fakeFirewall) KillSessions(_ context.Context, src netip.Prefix, ports []firewall.Port) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.killed = append(f.killed, fmt.Sprintf("%s %v", firewall.FormatSource(src), ports))
	if f.killErr != nil {
		return 0, f.killErr
	}
	return f.sessions, nil
}

// fakeAdmin knows the sequences ssh (the default) and admin.
type fakeAdmin struct {
	mu       sync.Mutex
	locked   []knock.Locked
	grantErr error
	calls    []string // `ip "sequence" d` of each Grant, as asked
}

var _ Admin = (*fakeAdmin)(nil)

func (a *fakeAdmin) Grant(_ context.Context, ip netip.Addr, sequence string, d time.Duration) (firewall.Grant, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, fmt.Sprintf("%s %q %s", ip, sequence, d))
	if a.grantErr != nil {
		return firewall.Grant{}, a.grantErr
	}
	if sequence == "" {
		sequence = "ssh"
	}
	if sequence != "ssh" && sequence != "admin" {
		return firewall.Grant{}, fmt.Errorf("%w %q: known are admin, ssh", ErrUnknownSequence, sequence)
	}
	return firewall.Grant{IP: ip, Sequence: sequence, Ports: []firewall.Port{{Proto: "tcp", Number: 22}}, Until: t0.Add(d)}, nil
}

func (a *fakeAdmin) Lockouts() []knock.Locked {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.locked)
}

func (a *fakeAdmin) Unlock(_ context.Context, ip netip.Addr) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(a.locked)
	a.locked = slices.DeleteFunc(a.locked, func(l knock.Locked) bool { return l.Client == ip })
	return len(a.locked) < n, nil
}

// testLockouts are out of order: the server sorts them, soonest end first.
func testLockouts() []knock.Locked {
	return []knock.Locked{
		{Client: netip.MustParseAddr("198.51.100.66"), Until: t0.Add(15 * time.Minute)},
		{Client: netip.MustParseAddr("2001:db8::66"), Until: t0.Add(4*time.Minute + 30*time.Second)},
	}
}

type fakeTracker struct{}

func (fakeTracker) Clients() int    { return 42 }
func (fakeTracker) Evicted() uint64 { return 7 }

func testGrants() []firewall.Grant {
	return []firewall.Grant{
		{IP: netip.MustParseAddr("203.0.113.7"), Sequence: "ssh", Ports: []firewall.Port{{Proto: "tcp", Number: 22}},
			Until: t0.Add(9*time.Minute + 12*time.Second)},
		{IP: netip.MustParseAddr("192.0.2.0"), Bits: 24, Sequence: "ssh", Ports: []firewall.Port{{Proto: "tcp", Number: 22}},
			Until: t0.Add(45 * time.Minute)},
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
	s     *Server
	fw    *fakeFirewall
	admin *fakeAdmin
	log   *syncWriter
}

func newFixture(t *testing.T, tokenFile string, mod func(*Options)) *fixture {
	t.Helper()
	fw := &fakeFirewall{grants: testGrants(), health: firewall.Health{InSync: true, Failures: 3, Refused: 2,
		Capped: [firewall.NumCaps]uint64{firewall.CapIPv4Net: 5, firewall.CapIPv6Net: 6}}}
	admin := &fakeAdmin{locked: testLockouts()}
	log := &syncWriter{w: &bytes.Buffer{}}
	o := Options{
		TokenFile: tokenFile,
		Logger:    slog.New(slog.NewTextHandler(log, nil)),
		Clock:     func() time.Time { return t0 },
		Following: func() bool { return true },
		Tracker:   fakeTracker{},
		Admin:     admin,
	}
	if mod != nil {
		mod(&o)
	}
	s, err := New(o, fw)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &fixture{s: s, fw: fw, admin: admin, log: log}
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

func (s *syncWriter) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Len()
}

// tcpHandler is the TCP API without the Host check, which needs a listener.
func tcpHandler(s *Server) http.Handler { return securityHeaders(s.tcpMux) }

// asPeer makes r look like it came over the admin socket from uid.
func asPeer(r *http.Request, uid int) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), peerKey{}, peerResult{p: peer{uid: uid, pid: 4242}}))
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

// doAdmin sends a request to the admin socket's handler as root.
func doAdmin(t *testing.T, s *Server, method, target, body string) *httptest.ResponseRecorder {
	t.Helper()
	r := asPeer(httptest.NewRequest(method, target, strings.NewReader(body)), 0)
	w := httptest.NewRecorder()
	s.admin.ServeHTTP(w, r)
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
		{name: "lockouts", method: "GET", path: "/api/lockouts", want: 200, wantBody: `"ip":"2001:db8::66"`,
			wantHeader: map[string]string{"Content-Type": "application/json"}},
		{name: "unlock over TCP", method: "DELETE", path: "/api/lockouts/198.51.100.66", header: bearer(testToken), want: 404},
		{name: "lockouts DELETE", method: "DELETE", path: "/api/lockouts", header: bearer(testToken), want: 405},
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
		{name: "revoke", method: "DELETE", path: "/api/grants/203.0.113.7", header: bearer(testToken), want: 200, wantRevoked: "203.0.113.7 revoked"},
		{name: "revoke lower-case scheme", method: "DELETE", path: "/api/grants/203.0.113.7", header: http.Header{"Authorization": {"bearer " + testToken}}, want: 200, wantRevoked: "203.0.113.7 revoked"},
		{name: "revoke IPv6", method: "DELETE", path: "/api/grants/2001:db8::7", header: bearer(testToken), want: 200, wantRevoked: "2001:db8::7 revoked"},
		{name: "revoke IPv4-mapped", method: "DELETE", path: "/api/grants/::ffff:203.0.113.7", header: bearer(testToken), want: 200, wantRevoked: "203.0.113.7 revoked"},
		{name: "revoke no grant", method: "DELETE", path: "/api/grants/198.51.100.1", header: bearer(testToken), want: 404, wantBody: "198.51.100.1 holds no grant"},
		{name: "revoke bad IP", method: "DELETE", path: "/api/grants/bogus", header: bearer(testToken), want: 400, wantBody: `bad address "bogus"`},
		{name: "revoke network", method: "DELETE", path: "/api/grants/192.0.2.0/24", header: bearer(testToken), want: 200,
			wantBody: `{"revoked":[{"ip":"192.0.2.0/24","sequence":"ssh","ports":["22/tcp"],"until":"2026-11-22T19:47:22Z"}]}`, wantRevoked: "192.0.2.0/24 revoked"},
		{name: "revoke network escaped", method: "DELETE", path: "/api/grants/203.0.113.0%2F24", header: bearer(testToken), want: 200, wantRevoked: "203.0.113.0/24 revoked"},
		{name: "revoke address of a widened grant", method: "DELETE", path: "/api/grants/192.0.2.9", header: bearer(testToken), want: 200,
			wantBody: `"ip":"192.0.2.0/24"`, wantRevoked: "192.0.2.9 revoked"},
		{name: "revoke bad network", method: "DELETE", path: "/api/grants/192.0.2.0/33", header: bearer(testToken), want: 400, wantBody: `bad network "192.0.2.0/33"`},
		{name: "revoke bad kill_sessions", method: "DELETE", path: "/api/grants/203.0.113.7?kill_sessions=maybe", header: bearer(testToken), want: 400, wantBody: `bad kill_sessions "maybe"`},
		{name: "revoke zone", method: "DELETE", path: "/api/grants/fe80::1%25eth0", header: bearer(testToken), want: 400},
		{name: "revoke without token file", noToken: true, method: "DELETE", path: "/api/grants/203.0.113.7", header: bearer(testToken), want: 403, wantBody: "revoking is disabled"},
		{name: "revoke without token file nor header", noToken: true, method: "DELETE", path: "/api/grants/203.0.113.7", want: 403},
		{name: "metrics", method: "GET", path: "/metrics", want: 200, wantBody: "webknock_grants_active 3"},
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
			w := do(t, tcpHandler(f.s), tt.method, tt.path, tt.header)
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
			if n := len(f.admin.Lockouts()); n != 2 {
				t.Errorf("%s %s: %d lockouts left, want 2: TCP never unlocks", tt.method, tt.path, n)
			}
			revoked := f.fw.revoked
			if want := []string{tt.wantRevoked}; tt.wantRevoked == "" && len(revoked) > 0 || tt.wantRevoked != "" && !slices.Equal(revoked, want) {
				t.Errorf("%s %s: revoked %v, want %q", tt.method, tt.path, revoked, tt.wantRevoked)
			}
		})
	}
}

func TestRevokeFailure(t *testing.T) {
	f := newFixture(t, writeToken(t, testToken), nil)
	f.fw.revokeErr = errors.New("iptables: boom")
	w := do(t, tcpHandler(f.s), "DELETE", "/api/grants/203.0.113.7", bearer(testToken))
	if w.Code != 500 || strings.Contains(w.Body.String(), "boom") {
		t.Errorf("revoke with a failing firewall = %d %q, want 500 without the error's text", w.Code, w.Body)
	}
	if !strings.Contains(f.log.String(), "boom") {
		t.Errorf("log %q does not tell the error", f.log)
	}
}

// TestNoTokenWarns: with a TCP listener, a token file that cannot be used
// is warned about; without one (or with token_file "") nothing is said,
// since revoking over TCP cannot be asked for. The token is refused either way.
func TestNoTokenWarns(t *testing.T) {
	dir := t.TempDir()
	for _, path := range []string{filepath.Join(dir, "missing"), writeToken(t, ""), writeToken(t, "short-token\n"), ""} {
		for _, tcp := range []bool{true, false} {
			f := newFixture(t, path, func(o *Options) {
				if tcp {
					l, err := Bind("127.0.0.1:0", "")
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { l.Close() })
					o.Listeners = l
				}
			})
			want := tcp && path != ""
			if got := strings.Contains(f.log.String(), "level=WARN") && strings.Contains(f.log.String(), "revoking over TCP is disabled"); got != want {
				t.Errorf("token file %q, TCP listener %v: log %q, want a warning: %v", path, tcp, f.log, want)
			}
			if tok := f.s.currentToken(); tok != "" {
				t.Errorf("token file %q: token %q, want none", path, tok)
			}
		}
	}
}

func TestWorldReadableTokenWarns(t *testing.T) {
	path := writeToken(t, testToken)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, path, nil)
	if f.s.currentToken() != testToken || !strings.Contains(f.log.String(), "readable by every user") {
		t.Errorf("world-readable token file: token %q, log %q; want the token and a warning", f.s.currentToken(), f.log)
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
	if w := do(t, tcpHandler(f.s), "GET", "/metrics", nil); w.Code != 200 {
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
	w := do(t, tcpHandler(f.s), "GET", "/api/grants", nil)
	golden.Check(t, "testdata/grants.golden", w.Body.Bytes())

	f.fw.grants = nil
	w = do(t, tcpHandler(f.s), "GET", "/api/grants", nil)
	if got := w.Body.String(); got != "[]\n" {
		t.Errorf("GET /api/grants without grants = %q, want %q", got, "[]\n")
	}
	f.fw.grants = []firewall.Grant{{IP: netip.MustParseAddr("203.0.113.7"), Sequence: "ssh", Until: t0}}
	w = do(t, tcpHandler(f.s), "GET", "/api/grants", nil)
	if got, want := w.Body.String(), `[{"ip":"203.0.113.7","sequence":"ssh","ports":[],"until":"2026-11-22T19:02:22Z"}]`+"\n"; got != want {
		t.Errorf("GET /api/grants, grant without ports = %q, want %q", got, want)
	}
}

func TestMetrics(t *testing.T) {
	f := newFixture(t, "", nil)
	s := f.s
	s.LinesRead("/var/log/a.log", 2)
	s.LinesRead("/var/log/b.log", 1)
	s.LineParsed("/var/log/a.log")
	s.LineSkipped("/var/log/a.log", "format")
	s.LineSkipped("/var/log/b.log", "loopback")
	s.LineSkipped("/var/log/b.log", "loopback")
	s.Event(knock.Event{Kind: knock.KindStep, Step: 1})
	s.Event(knock.Event{Kind: knock.KindGrant})
	s.Event(knock.Event{Kind: knock.KindGrant})
	s.Event(knock.Event{Kind: knock.KindReused, OneTime: true, TimeStep: 7})
	s.Rotation("/var/log/a.log")
	s.Reload(true)
	s.Reload(false)
	s.Reload(false)
	f.fw.health = firewall.Health{InSync: false, Pending: 2, Failures: 5, Refused: 4,
		Capped: [firewall.NumCaps]uint64{firewall.CapSequence: 1, firewall.CapIPv6Net: 9}}

	w := do(t, tcpHandler(s), "GET", "/metrics", nil)
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
		`webknock_events_total{event="reused"} 1`,
		`webknock_grants_active 3`,
		`webknock_firewall_failures_total 5`,
		`webknock_firewall_pending_deletes 2`,
		`webknock_firewall_grants_refused_total{limit="max_grants"} 4`,
		`webknock_firewall_grants_refused_total{limit="max_grants_per_sequence"} 1`,
		`webknock_firewall_grants_refused_total{limit="max_grants_per_ipv4_24"} 0`,
		`webknock_firewall_grants_refused_total{limit="max_grants_per_ipv6_64"} 9`,
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
	body := do(t, tcpHandler(f.s), "GET", "/metrics", nil).Body.String()
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
	s.Event(knock.Event{Kind: knock.KindStep, Time: t0.Add(-3 * time.Second), Client: netip.MustParseAddr("203.0.113.7"), Sequence: "ssh", Step: 1,
		Input: "syslog:udp:127.0.0.1:5514"})
	s.Event(knock.Event{Kind: knock.KindLockout, Time: t0.Add(-2 * time.Second), Client: netip.MustParseAddr("198.51.100.66"), Sequence: "<script>alert('x')</script>", Until: t0.Add(15 * time.Minute)})
	s.Event(knock.Event{Kind: knock.KindGrant, Time: t0.Add(-time.Second), Client: netip.MustParseAddr("203.0.113.7"), Sequence: "ssh",
		Until: t0.Add(9*time.Minute + 12*time.Second), Ports: []string{"22/tcp"}})
	s.Event(knock.Event{Kind: knock.KindReused, Time: t0.Add(-time.Second), Client: netip.MustParseAddr("198.51.100.99"), Sequence: "alice",
		OneTime: true, TimeStep: 29000000})
	s.LinesRead("a", 1)
	s.LineSkipped("a", "format")

	w := do(t, tcpHandler(s), "GET", "/", nil)
	page := w.Body.String()
	if w.Code != 200 {
		t.Fatalf("GET / = %d", w.Code)
	}
	for _, want := range []string{
		`<meta name="viewport" content="width=device-width, initial-scale=1">`,
		"<title>webknock</title>",
		`<td data-label="IP">203.0.113.7</td>`,
		`<td data-label="IP">2001:db8::7</td>`,
		`<td data-label="IP">192.0.2.0/24</td>`, // a grant widened to a network
		`<td data-label="Ports">22/tcp 51820/udp</td>`,
		`<td data-label="Left">9m 12s</td>`,
		`<td data-label="Left">2h 0m 0s</td>`,
		`<td data-label="Left">0s</td>`,
		`2026-11-22 21:02:22`, // the CET until, shown in UTC
		`&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;`,
		`x&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;`,
		`<td data-label="Detail">until 2026-11-22 19:11:34, 22/tcp</td>`,
		`<td data-label="Detail">step 1; from syslog:udp:127.0.0.1:5514</td>`,
		"<dt>lines read</dt><dd>1</dd>",
		"<dt>lines skipped</dt><dd>1</dd>",
		"<dt>grants</dt><dd>1</dd>",
		"<dt>lockouts</dt><dd>1</dd>",
		"<dt>one-time URLs reused</dt><dd>1</dd>",
		`<td data-label="Detail">time step 29000000 had granted already</td>`,
		"<dt>firewall failures</dt><dd>3</dd>",
		"<dt>grants refused: table full</dt><dd>2</dd>",
		"<dt>grants refused by caps</dt><dd>11</dd>",
		"<dt>clients in progress</dt><dd>42</dd>",
		`<p class="health ok">ok</p>`,
		`<tr class="locked"><td data-label="IP">2001:db8::66</td><td data-label="Until"><time datetime="2026-11-22T19:06:52Z">2026-11-22 19:06:52</time></td><td data-label="Left">4m 30s</td></tr>`,
		`<td data-label="IP">198.51.100.66</td><td data-label="Until"><time datetime="2026-11-22T19:17:22Z">2026-11-22 19:17:22</time></td><td data-label="Left">15m 0s</td>`,
		`<dt>admin socket</dt><dd>off</dd>`,
		`<meta http-equiv="refresh" content="30">`,
		`UTC; reloads in 30 s</p>`,
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
	// Lockouts soonest end first.
	if a, b := strings.Index(page, `<td data-label="IP">2001:db8::66</td>`), strings.Index(page, `<td data-label="IP">198.51.100.66</td>`); a < 0 || a > b {
		t.Errorf("lockouts not soonest end first: %d, %d", a, b)
	}
	// Newest first: grant, lockout, step.
	g, l, st := strings.Index(page, `<tr class="grant">`), strings.Index(page, `<tr class="lockout">`), strings.Index(page, `<tr class="step">`)
	if g < 0 || !(g < l && l < st) {
		t.Errorf("events not newest first: grant at %d, lockout at %d, step at %d", g, l, st)
	}
	css := do(t, tcpHandler(s), "GET", "/static/style.css", nil).Body.String()
	if strings.Contains(css, "url(") || strings.Contains(css, "@import") {
		t.Errorf("style.css loads other resources")
	}
}

// TestPageRefresh: the page reloads itself every 30 s, or a second after
// a grant or lockout ends if that is sooner, so its time left stays true
// without a script.
func TestPageRefresh(t *testing.T) {
	grant := func(left time.Duration) firewall.Grant {
		return firewall.Grant{IP: netip.MustParseAddr("192.0.2.1"), Sequence: "ssh", Until: t0.Add(left)}
	}
	tests := []struct {
		name     string
		grants   []firewall.Grant
		lockouts []knock.Locked
		want     int
	}{
		{name: "nothing live", want: 30},
		{name: "all far off", grants: testGrants(), lockouts: testLockouts(), want: 30},
		{name: "grant ending soon", grants: []firewall.Grant{grant(time.Hour), grant(12500 * time.Millisecond)}, want: 14},
		{name: "lockout ending soon", grants: testGrants(),
			lockouts: []knock.Locked{{Client: netip.MustParseAddr("198.51.100.1"), Until: t0.Add(4 * time.Second)}}, want: 5},
		{name: "ended, not yet removed", grants: []firewall.Grant{grant(-time.Second), grant(0)}, want: 30},
		{name: "ending just under the interval", grants: []firewall.Grant{grant(29 * time.Second)}, want: 30},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "", nil)
			f.fw.grants, f.admin.locked = tc.grants, tc.lockouts
			page := do(t, tcpHandler(f.s), "GET", "/", nil).Body.String()
			want := fmt.Sprintf(`<meta http-equiv="refresh" content="%d">`, tc.want)
			if !strings.Contains(page, want) || !strings.Contains(page, fmt.Sprintf("reloads in %d s", tc.want)) {
				t.Errorf("GET / lacks %q and its note; head:\n%s", want, page[:min(len(page), 600)])
			}
		})
	}
}

func TestPageEmpty(t *testing.T) {
	f := newFixture(t, "", nil)
	f.fw.grants = nil
	f.admin.locked = nil
	page := do(t, tcpHandler(f.s), "GET", "/", nil).Body.String()
	for _, want := range []string{"No port is open to anyone.", "No event since start.", "No client is locked out.", "<dt>revoke over HTTP</dt><dd>disabled (no token)</dd>"} {
		if !strings.Contains(page, want) {
			t.Errorf("GET / without grants, lockouts or events lacks %q", want)
		}
	}
	noAdmin := newFixture(t, "", func(o *Options) { o.Admin = nil })
	if page := do(t, tcpHandler(noAdmin.s), "GET", "/", nil).Body.String(); !strings.Contains(page, "Lockouts are not reported.") {
		t.Errorf("GET / without Admin does not say lockouts are not reported")
	}
}

func TestHealthz(t *testing.T) {
	yes, no := func() bool { return true }, func() bool { return false }
	inputs := func(ps ...string) func() []string { return func() []string { return ps } }
	tests := []struct {
		name      string
		following func() bool
		problems  func() []string
		health    firewall.Health
		want      int
		wantBody  string
	}{
		{"well", yes, nil, firewall.Health{InSync: true}, 200, "ok\n"},
		{"following not reported", nil, nil, firewall.Health{InSync: true}, 200, "ok\n"},
		{"no input problems", yes, inputs(), firewall.Health{InSync: true}, 200, "ok\n"},
		{"not following", no, nil, firewall.Health{InSync: true}, 503, "not following the access logs\n"},
		{"pending deletes", yes, nil, firewall.Health{Pending: 2}, 503, "firewall out of sync: 2 rule deletes pending\n"},
		{"out of sync", yes, nil, firewall.Health{}, 503, "firewall out of sync\n"},
		{"both", no, nil, firewall.Health{}, 503, "not following the access logs\nfirewall out of sync\n"},
		{"input problems", yes, inputs("/var/log/nginx/access.log: missing", "/var/log/x.log: no line parses (format combined?)"), firewall.Health{InSync: true}, 503,
			"/var/log/nginx/access.log: missing\n/var/log/x.log: no line parses (format combined?)\n"},
		{"firewall problems", yes, nil, firewall.Health{Pending: 2, Problems: []string{"IPv6 family stuck", "2 rule deletes pending"}}, 503,
			"firewall: IPv6 family stuck\nfirewall: 2 rule deletes pending\n"},
		{"every reason", no, inputs("/var/log/a.log: missing"), firewall.Health{Problems: []string{"iptables suspended"}}, 503,
			"not following the access logs\n/var/log/a.log: missing\nfirewall: iptables suspended\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, "", func(o *Options) { o.Following, o.Problems = tt.following, tt.problems })
			f.fw.health = tt.health
			w := do(t, tcpHandler(f.s), "GET", "/healthz", nil)
			if w.Code != tt.want || w.Body.String() != tt.wantBody {
				t.Errorf("GET /healthz = %d %q, want %d %q", w.Code, w.Body, tt.want, tt.wantBody)
			}
			page := do(t, tcpHandler(f.s), "GET", "/", nil).Body.String()
			if tt.want == 200 {
				if !strings.Contains(page, `<p class="health ok">ok</p>`) || strings.Contains(page, `class="problems`) {
					t.Errorf("GET / of a well daemon does not say ok, or lists problems")
				}
				return
			}
			if !strings.Contains(page, `<p class="health bad">unhealthy</p>`) {
				t.Errorf("GET / does not say unhealthy")
			}
			for p := range strings.Lines(tt.wantBody) {
				if li := "<li>" + strings.TrimSpace(p) + "</li>"; !strings.Contains(page, li) {
					t.Errorf("GET / lacks the problem %q", li)
				}
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
	page := do(t, tcpHandler(f.s), "GET", "/", nil).Body.String()
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

// TestConcurrentUse runs the recorders and every page at once, for -race.
func TestConcurrentUse(t *testing.T) {
	f := newFixture(t, "", func(o *Options) { o.RecentEvents = 8 })
	h := tcpHandler(f.s)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			file := []string{"a", "b"}[g%2]
			for i := range 200 {
				f.s.LinesRead(file, 1)
				f.s.LineSkipped(file, []string{"format", "client"}[i%2])
				f.s.Event(knock.Event{Kind: knock.Kind(i%5 + 1), Time: t0})
			}
		}()
	}
	for _, path := range []string{"/", "/metrics", "/api/grants", "/api/lockouts", "/healthz"} {
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
	if _, err := New(Options{MaxConns: -1}, &fakeFirewall{}); err == nil {
		t.Error("New with MaxConns -1 = nil error")
	}
}
