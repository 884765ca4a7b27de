package web

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/knock"
)

func TestAdminEndpoints(t *testing.T) {
	tests := []struct {
		name         string
		method, path string
		body         string
		want         int
		wantBody     string // contained, or equal when wantExact
		wantExact    bool
		wantGranted  string // the Admin's Grant call, if any: `ip "sequence" d`
		wantLocked   int    // lockouts left
		wantRevoked  string
		wantKilled   string // the KillSessions call, if any
	}{
		{name: "page", method: "GET", path: "/", want: 200, wantBody: "<title>webknock</title>", wantLocked: 2},
		{name: "grants", method: "GET", path: "/api/grants", want: 200, wantBody: `"ip":"203.0.113.7"`, wantLocked: 2},
		{name: "lockouts", method: "GET", path: "/api/lockouts", want: 200, wantExact: true, wantLocked: 2,
			wantBody: `[{"ip":"2001:db8::66","until":"2026-11-22T19:06:52Z"},{"ip":"198.51.100.66","until":"2026-11-22T19:17:22Z"}]` + "\n"},
		{name: "healthz", method: "GET", path: "/healthz", want: 200, wantBody: "ok\n", wantExact: true, wantLocked: 2},
		{name: "metrics", method: "GET", path: "/metrics", want: 200, wantBody: "webknock_grants_active 3", wantLocked: 2},
		{name: "revoke without token", method: "DELETE", path: "/api/grants/203.0.113.7", want: 200, wantRevoked: "203.0.113.7 revoked", wantLocked: 2,
			wantExact: true, wantBody: `{"revoked":[{"ip":"203.0.113.7","sequence":"ssh","ports":["22/tcp"],"until":"2026-11-22T19:11:34Z"}]}` + "\n"},
		{name: "revoke killing sessions", method: "DELETE", path: "/api/grants/192.0.2.0/24?kill_sessions=true", want: 200, wantRevoked: "192.0.2.0/24 revoked", wantLocked: 2,
			wantExact: true, wantBody: `{"revoked":[{"ip":"192.0.2.0/24","sequence":"ssh","ports":["22/tcp"],"until":"2026-11-22T19:47:22Z"}],"sessions_ended":2}` + "\n",
			wantKilled: "192.0.2.0/24 [22/tcp]"},
		{name: "revoke not killing sessions", method: "DELETE", path: "/api/grants/192.0.2.0/24?kill_sessions=false", want: 200, wantRevoked: "192.0.2.0/24 revoked", wantLocked: 2,
			wantBody: `"ports":["22/tcp"],"until":"2026-11-22T19:47:22Z"}]}`},
		{name: "revoke no grant", method: "DELETE", path: "/api/grants/198.51.100.1", want: 404, wantBody: "198.51.100.1 holds no grant", wantLocked: 2},
		{name: "revoke bad IP", method: "DELETE", path: "/api/grants/bogus", want: 400, wantLocked: 2},
		{name: "grant", method: "POST", path: "/api/grants", body: `{"ip":"198.51.100.7","sequence":"admin","for":"10m"}`, want: 201, wantExact: true,
			wantBody:    `{"ip":"198.51.100.7","sequence":"admin","ports":["22/tcp"],"until":"2026-11-22T19:12:22Z"}` + "\n",
			wantGranted: `198.51.100.7 "admin" 10m0s`, wantLocked: 2},
		{name: "grant default sequence", method: "POST", path: "/api/grants", body: `{"ip":"2001:db8::9","for":"1h30m"}`, want: 201,
			wantBody: `"sequence":"ssh"`, wantGranted: `2001:db8::9 "" 1h30m0s`, wantLocked: 2},
		{name: "grant IPv4-mapped", method: "POST", path: "/api/grants", body: `{"ip":"::ffff:198.51.100.7","for":"1m"}`, want: 201,
			wantGranted: `198.51.100.7 "" 1m0s`, wantLocked: 2},
		{name: "grant unknown sequence", method: "POST", path: "/api/grants", body: `{"ip":"198.51.100.7","sequence":"nope","for":"10m"}`, want: 400,
			wantBody: `unknown sequence "nope": known are admin, ssh`, wantGranted: `198.51.100.7 "nope" 10m0s`, wantLocked: 2},
		{name: "grant bad IP", method: "POST", path: "/api/grants", body: `{"ip":"198.51.100.0/24","for":"10m"}`, want: 400, wantBody: `bad IP address "198.51.100.0/24"`, wantLocked: 2},
		{name: "grant zoned IP", method: "POST", path: "/api/grants", body: `{"ip":"fe80::1%eth0","for":"10m"}`, want: 400, wantLocked: 2},
		{name: "grant unspecified IP", method: "POST", path: "/api/grants", body: `{"ip":"0.0.0.0","for":"10m"}`, want: 400, wantBody: "not an address a client connects from", wantLocked: 2},
		{name: "grant without for: the window", method: "POST", path: "/api/grants", body: `{"ip":"198.51.100.7"}`, want: 201,
			wantGranted: `198.51.100.7 "" 0s`, wantLocked: 2},
		{name: "grant negative", method: "POST", path: "/api/grants", body: `{"ip":"198.51.100.7","for":"-5m"}`, want: 400, wantBody: `bad duration "-5m"`, wantLocked: 2},
		{name: "grant zero", method: "POST", path: "/api/grants", body: `{"ip":"198.51.100.7","for":"0s"}`, want: 400, wantLocked: 2},
		{name: "grant words", method: "POST", path: "/api/grants", body: `{"ip":"198.51.100.7","for":"ten minutes"}`, want: 400, wantLocked: 2},
		{name: "grant unknown field", method: "POST", path: "/api/grants", body: `{"ip":"198.51.100.7","for":"10m","ports":["23/tcp"]}`, want: 400, wantBody: "unknown field", wantLocked: 2},
		{name: "grant not JSON", method: "POST", path: "/api/grants", body: `ip=198.51.100.7`, want: 400, wantBody: "bad grant request", wantLocked: 2},
		{name: "grant two objects", method: "POST", path: "/api/grants", body: `{"ip":"198.51.100.7","for":"10m"}{"ip":"198.51.100.8","for":"10m"}`, want: 400, wantLocked: 2},
		{name: "grant huge", method: "POST", path: "/api/grants", body: `{"ip":"198.51.100.7","sequence":"` + strings.Repeat("a", maxRequestBytes) + `","for":"10m"}`, want: 400, wantLocked: 2},
		{name: "unlock", method: "DELETE", path: "/api/lockouts/198.51.100.66", want: 204, wantLocked: 1},
		{name: "unlock IPv4-mapped", method: "DELETE", path: "/api/lockouts/::ffff:198.51.100.66", want: 204, wantLocked: 1},
		{name: "unlock not locked", method: "DELETE", path: "/api/lockouts/192.0.2.1", want: 404, wantBody: "192.0.2.1 is not locked out", wantLocked: 2},
		{name: "unlock bad IP", method: "DELETE", path: "/api/lockouts/bogus", want: 400, wantLocked: 2},
		{name: "unlock all", method: "DELETE", path: "/api/lockouts", want: 405, wantLocked: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, "", nil)
			f.fw.sessions = 2
			w := doAdmin(t, f.s, tt.method, tt.path, tt.body)
			if w.Code != tt.want {
				t.Fatalf("%s %s = %d, want %d; body %q", tt.method, tt.path, w.Code, tt.want, w.Body)
			}
			if got := w.Body.String(); tt.wantExact && got != tt.wantBody || !strings.Contains(got, tt.wantBody) {
				t.Errorf("%s %s: body %q, want %q", tt.method, tt.path, got, tt.wantBody)
			}
			if got := w.Header().Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("%s %s: no security headers", tt.method, tt.path)
			}
			granted := f.admin.calls
			if want := []string{tt.wantGranted}; tt.wantGranted == "" && len(granted) > 0 || tt.wantGranted != "" && !slices.Equal(granted, want) {
				t.Errorf("%s %s: granted %q, want %q", tt.method, tt.path, granted, tt.wantGranted)
			}
			if n := len(f.admin.Lockouts()); n != tt.wantLocked {
				t.Errorf("%s %s: %d lockouts left, want %d", tt.method, tt.path, n, tt.wantLocked)
			}
			revoked := f.fw.revoked
			if want := []string{tt.wantRevoked}; tt.wantRevoked == "" && len(revoked) > 0 || tt.wantRevoked != "" && !slices.Equal(revoked, want) {
				t.Errorf("%s %s: revoked %v, want %q", tt.method, tt.path, revoked, tt.wantRevoked)
			}
			if want := []string{tt.wantKilled}; tt.wantKilled == "" && len(f.fw.killed) > 0 || tt.wantKilled != "" && !slices.Equal(f.fw.killed, want) {
				t.Errorf("%s %s: sessions killed %q, want %q", tt.method, tt.path, f.fw.killed, tt.wantKilled)
			}
		})
	}
}

func newRequest(method, target string) *http.Request { return httptest.NewRequest(method, target, nil) }

func httptestDo(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestAdminGrantErrors(t *testing.T) {
	tests := []struct {
		err      error
		want     int
		wantBody string
	}{
		{fmt.Errorf("%w: 2h is longer than the window of ssh (1h)", ErrBadRequest), 400, "bad request: 2h is longer than the window of ssh (1h)"},
		{fmt.Errorf("grant 198.51.100.7: %w", firewall.ErrTableFull), 503, "grant table full"},
		{fmt.Errorf("grant to 198.51.100.7 for ssh: %w", &firewall.CapError{Cap: firewall.CapIPv4Net, Key: "198.51.100.0/24", Count: 64, Limit: 64}), 503,
			"grant cap reached: network 198.51.100.0/24 holds 64 live grants; firewall.max_grants_per_ipv4_24 is 64"},
		{fmt.Errorf("grant 198.51.100.7: %w", firewall.ErrExpired), 400, "grant already expired"},
		{errors.New("iptables: exit status 4"), 500, "grant failed: iptables: exit status 4"},
	}
	for _, tt := range tests {
		f := newFixture(t, "", nil)
		f.admin.grantErr = tt.err
		w := doAdmin(t, f.s, "POST", "/api/grants", `{"ip":"198.51.100.7","for":"10m"}`)
		if w.Code != tt.want || !strings.Contains(w.Body.String(), tt.wantBody) {
			t.Errorf("grant failing with %v = %d %q, want %d %q", tt.err, w.Code, w.Body, tt.want, tt.wantBody)
		}
	}
}

func TestWithoutAdmin(t *testing.T) {
	f := newFixture(t, "", func(o *Options) { o.Admin = nil })
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/api/grants", `{"ip":"198.51.100.7","for":"10m"}`},
		{"DELETE", "/api/lockouts/198.51.100.66", ""},
		{"GET", "/api/lockouts", ""},
	} {
		if w := doAdmin(t, f.s, r.method, r.path, r.body); w.Code != 503 || !strings.Contains(w.Body.String(), "not available") {
			t.Errorf("without Admin, %s %s = %d %q, want 503", r.method, r.path, w.Code, w.Body)
		}
	}
	if w := do(t, tcpHandler(f.s), "GET", "/api/lockouts", nil); w.Code != 503 {
		t.Errorf("without Admin, GET /api/lockouts over TCP = %d, want 503", w.Code)
	}
}

func TestAdminPeer(t *testing.T) {
	f := newFixture(t, "", nil)
	stranger := 4321
	if os.Geteuid() == stranger {
		stranger++
	}
	tests := []struct {
		name     string
		req      func(*http.Request) *http.Request
		want     int
		wantBody string
	}{
		{"root", func(r *http.Request) *http.Request { return asPeer(r, 0) }, 200, ""},
		{"our user", func(r *http.Request) *http.Request { return asPeer(r, os.Geteuid()) }, 200, ""},
		{"another user", func(r *http.Request) *http.Request { return asPeer(r, stranger) }, 403,
			fmt.Sprintf("uid %d may not use the admin socket; only root and the daemon's user (uid %d) may", stranger, os.Geteuid())},
		{"no credentials", func(r *http.Request) *http.Request { return r }, 403, "cannot tell who you are"},
		{"credentials unreadable", func(r *http.Request) *http.Request {
			return r.WithContext(context.WithValue(r.Context(), peerKey{}, peerResult{err: errors.New("SO_PEERCRED: boom")}))
		}, 403, "cannot tell who you are"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptestDo(f.s.admin, tt.req(newRequest("DELETE", "/api/lockouts/198.51.100.66")))
			if tt.want == 200 && w.Code != 204 || tt.want == 403 && w.Code != 403 {
				t.Fatalf("unlock as %s = %d %q, want %d", tt.name, w.Code, w.Body, tt.want)
			}
			if !strings.Contains(w.Body.String(), tt.wantBody) {
				t.Errorf("unlock as %s: body %q, want %q", tt.name, w.Body, tt.wantBody)
			}
			f.admin.mu.Lock()
			f.admin.locked = testLockouts()
			f.admin.mu.Unlock()
		})
	}
	if !strings.Contains(f.log.String(), fmt.Sprintf(`admin socket: request refused" uid=%d pid=4242`, stranger)) {
		t.Errorf("log %q does not name the refused uid", f.log)
	}
}

func TestClient(t *testing.T) {
	path := socketPath(t)
	f := newFixture(t, writeToken(t, testToken), func(o *Options) { o.Listeners = bind(t, "", path) })
	startServe(t, f.s)
	ctx := context.Background()
	c := NewClient(path)

	got, err := c.Grants(ctx)
	if err != nil {
		t.Fatalf("Grants: %v", err)
	}
	want := testGrants()
	if len(got) != len(want) {
		t.Fatalf("Grants = %v, want %v", got, want)
	}
	for i := range want {
		if got[i].IP != want[i].IP || got[i].Bits != want[i].Bits || got[i].Sequence != want[i].Sequence || !slices.Equal(got[i].Ports, want[i].Ports) ||
			!got[i].Until.Equal(want[i].Until) || got[i].Until.Location() != time.UTC {
			t.Errorf("Grants[%d] = %+v, want %+v in UTC", i, got[i], want[i])
		}
	}

	ls, err := c.Lockouts(ctx)
	if err != nil {
		t.Fatalf("Lockouts: %v", err)
	}
	if wantL := []knock.Locked{testLockouts()[1], testLockouts()[0]}; len(ls) != 2 || ls[0].Client != wantL[0].Client || !ls[0].Until.Equal(wantL[0].Until) || ls[1].Client != wantL[1].Client {
		t.Errorf("Lockouts = %v, want %v", ls, wantL)
	}

	if why, err := c.Health(ctx); err != nil || why != nil {
		t.Errorf("Health = %q, %v; want well", why, err)
	}
	f.fw.mu.Lock()
	f.fw.health = firewall.Health{Problems: []string{"IPv6 family stuck"}}
	f.fw.mu.Unlock()
	if why, err := c.Health(ctx); err != nil || !slices.Equal(why, []string{"firewall: IPv6 family stuck"}) {
		t.Errorf("Health = %q, %v; want the firewall's problem", why, err)
	}

	ip := netip.MustParseAddr("198.51.100.7")
	g, err := c.Grant(ctx, ip, "admin", 10*time.Minute)
	if err != nil || g.IP != ip || g.Sequence != "admin" || !g.Until.Equal(t0.Add(10*time.Minute)) || !slices.Equal(g.Ports, []firewall.Port{{Proto: "tcp", Number: 22}}) {
		t.Errorf("Grant = %+v, %v", g, err)
	}
	if g, err := c.Grant(ctx, ip, "", time.Minute); err != nil || g.Sequence != "ssh" {
		t.Errorf("Grant(default sequence) = %+v, %v", g, err)
	}
	if _, err := c.Grant(ctx, ip, "nope", time.Minute); err == nil || err.Error() != `grant 198.51.100.7: 400 Bad Request: unknown sequence "nope": known are admin, ssh` {
		t.Errorf("Grant(unknown sequence) = %v", err)
	}
	if _, err := c.Grant(ctx, ip, "ssh", -time.Minute); err == nil || !strings.Contains(err.Error(), "400 Bad Request: bad duration") {
		t.Errorf("Grant(negative) = %v", err)
	}

	v6 := netip.MustParsePrefix("2001:db8::7/128")
	if r, err := c.Revoke(ctx, v6, false); err != nil || len(r.Grants) != 1 || r.Grants[0].Sequence != "admin" || r.Sessions != 0 {
		t.Errorf("Revoke = %+v, %v; want the admin grant", r, err)
	}
	if _, err := c.Revoke(ctx, v6, false); !errors.Is(err, firewall.ErrNoGrant) || err.Error() != "revoke 2001:db8::7: no grant" {
		t.Errorf("Revoke(again) = %v, want firewall.ErrNoGrant naming the address once", err)
	}
	f.fw.mu.Lock()
	f.fw.sessions = 1
	f.fw.mu.Unlock()
	if r, err := c.Revoke(ctx, netip.MustParsePrefix("192.0.2.7/32"), true); err != nil || len(r.Grants) != 1 || r.Grants[0].Bits != 24 || r.Sessions != 1 {
		t.Errorf("Revoke(kill sessions) = %+v, %v; want the network's grant and one session", r, err)
	}
	f.fw.mu.Lock()
	f.fw.killErr = errors.New("end sessions of 203.0.113.7: conntrack: operation not permitted")
	f.fw.mu.Unlock()
	if r, err := c.Revoke(ctx, netip.MustParsePrefix("203.0.113.7/32"), true); err == nil || err.Error() != "end sessions of 203.0.113.7: conntrack: operation not permitted" || len(r.Grants) != 1 {
		t.Errorf("Revoke(sessions not ended) = %+v, %v; want the grant and why", r, err)
	}
	f.fw.mu.Lock()
	f.fw.revokeErr = errors.New("boom")
	f.fw.mu.Unlock()
	if _, err := c.Revoke(ctx, netip.MustParsePrefix("203.0.113.7/32"), false); err == nil || !strings.Contains(err.Error(), "500 Internal Server Error: revoke failed") {
		t.Errorf("Revoke(failing firewall) = %v, want the status and message", err)
	}

	locked := netip.MustParseAddr("198.51.100.66")
	if err := c.Unlock(ctx, locked); err != nil {
		t.Errorf("Unlock = %v", err)
	}
	if err := c.Unlock(ctx, locked); !errors.Is(err, ErrNotLocked) {
		t.Errorf("Unlock(again) = %v, want ErrNotLocked", err)
	}
}

func TestClientNoDaemon(t *testing.T) {
	missing := socketPath(t)
	stale := socketPath(t)
	staleSocket(t, stale)
	for _, path := range []string{missing, stale} {
		_, err := NewClient(path).Grants(context.Background())
		if want := "grants: cannot reach the daemon on " + path + ": is `webknock run` running?"; err == nil || err.Error() != want || !errors.Is(err, ErrNoDaemon) {
			t.Errorf("Grants without a daemon on %s = %v, want %q and ErrNoDaemon", path, err, want)
		}
	}
	if err := NewClient(missing).Unlock(context.Background(), netip.MustParseAddr("192.0.2.1")); !errors.Is(err, ErrNoDaemon) || errors.Is(err, ErrNotLocked) {
		t.Errorf("Unlock without a daemon = %v, want ErrNoDaemon", err)
	}
}

func TestClientForbidden(t *testing.T) {
	// The daemon's 403 (another user got through the socket's mode) reads
	// like a permission error.
	path := socketPath(t)
	f := newFixture(t, "", func(o *Options) { o.Listeners = bind(t, "", path) })
	f.s.admin = securityHeaders(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "forbidden: uid 1000 may not use the admin socket", http.StatusForbidden)
	}))
	startServe(t, f.s)
	_, err := NewClient(path).Grants(context.Background())
	if err == nil || !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "the admin socket is for root and the daemon's user") {
		t.Errorf("Grants refused by the daemon = %v, want a permission error that says who may", err)
	}
}
