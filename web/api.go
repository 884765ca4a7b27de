package web

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/knock"
)

// MinTokenBytes is the shortest token accepted.
const MinTokenBytes = 16

// maxTokenFileBytes bounds what ReadToken reads: a token is one short line.
const maxTokenFileBytes = 4 << 10

// ReadToken reads the bearer token from path: the file's contents without
// surrounding white space, at least MinTokenBytes of printable ASCII without
// spaces (what an Authorization header can carry).
func ReadToken(path string) (string, error) {
	if path == "" {
		return "", errors.New("no token file configured (web.token_file)")
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFileBytes+1))
	if err != nil {
		return "", fmt.Errorf("token file %s: %w", path, err)
	}
	if len(b) > maxTokenFileBytes {
		return "", fmt.Errorf("token file %s: longer than %d bytes", path, maxTokenFileBytes)
	}
	token := strings.TrimSpace(string(b))
	if len(token) < MinTokenBytes {
		return "", fmt.Errorf("token file %s: token has %d bytes, want at least %d (e.g. head -c 32 /dev/urandom | base64)", path, len(token), MinTokenBytes)
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c >= 0x7f {
			return "", fmt.Errorf("token file %s: token has a space, control or non-ASCII byte at offset %d", path, i)
		}
	}
	return token, nil
}

const contentSecurityPolicy = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// routes is the API of the TCP listener, or with socket that of the admin
// socket: the same reads, and writes that need no token.
func (s *Server) routes(socket bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.page)
	mux.HandleFunc("GET /static/style.css", serveCSS)
	mux.HandleFunc("GET /api/grants", s.grants)
	mux.HandleFunc("GET /api/lockouts", s.lockouts)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{
		ErrorLog: errorLogger{s}, ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", s.healthz)
	// A revoke names an address, or a network NET/BITS: two segments, not
	// a {ip...} that would redirect DELETE /api/grants to a revoke of "".
	revoke := s.revokeWithToken
	if socket {
		revoke = s.revoke
		mux.HandleFunc("POST /api/grants", s.grant)
		mux.HandleFunc("DELETE /api/lockouts/{ip}", s.unlock)
	}
	mux.HandleFunc("DELETE /api/grants/{ip}", revoke)
	mux.HandleFunc("DELETE /api/grants/{ip}/{bits}", revoke)
	return mux
}

// securityHeaders are set on every answer, errors from the mux included.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// grantJSON is a grant on the wire: the contract of DESIGN.md, independent
// of how firewall.Grant marshals. IP is the grant's source: the address,
// or NET/BITS for a grant widened to a network.
type grantJSON struct {
	IP       string          `json:"ip"`
	Sequence string          `json:"sequence"`
	Ports    []firewall.Port `json:"ports"`
	Until    string          `json:"until"`
	// Origin: where the grant came from; absent for this host's own logs
	// and commands, fleet:DETECTOR/KEY for a grant of the fleet's bus.
	Origin string `json:"origin,omitempty"`
}

func toGrantJSON(g firewall.Grant) grantJSON {
	ports := g.Ports
	if ports == nil {
		ports = []firewall.Port{}
	}
	return grantJSON{IP: sourceString(g), Sequence: g.Sequence, Ports: ports, Until: g.Until.UTC().Format(time.RFC3339), Origin: g.Origin}
}

func (w grantJSON) grant() (firewall.Grant, error) {
	src, err := firewall.ParseSource(w.IP)
	if err != nil {
		return firewall.Grant{}, err
	}
	until, err := time.Parse(time.RFC3339, w.Until)
	if err != nil {
		return firewall.Grant{}, err
	}
	g := firewall.Grant{IP: src.Addr(), Sequence: w.Sequence, Ports: w.Ports, Until: until, Origin: w.Origin}
	if !src.IsSingleIP() {
		g.Bits = src.Bits()
	}
	return g, nil
}

// sourceString is whom g opens to: its address, or NET/BITS when widened.
func sourceString(g firewall.Grant) string { return firewall.FormatSource(g.Source()) }

// revokeJSON is the answer to DELETE /api/grants/{ip}: the grants that
// ended and, when asked to kill them, how many sessions ended, or why they
// could not be.
type revokeJSON struct {
	Revoked       []grantJSON `json:"revoked"`
	SessionsEnded *int        `json:"sessions_ended,omitempty"`
	SessionsError string      `json:"sessions_error,omitempty"`
}

// lockoutJSON is a locked-out client on the wire.
type lockoutJSON struct {
	IP    string `json:"ip"`
	Until string `json:"until"`
}

func (s *Server) grants(w http.ResponseWriter, _ *http.Request) {
	gs := s.fw.Grants()
	out := make([]grantJSON, 0, len(gs))
	for _, g := range gs {
		out = append(out, toGrantJSON(g))
	}
	s.writeJSON(w, http.StatusOK, out)
}

func (s *Server) lockouts(w http.ResponseWriter, _ *http.Request) {
	if s.opts.Admin == nil {
		noAdmin(w)
		return
	}
	ls := s.sortedLockouts()
	out := make([]lockoutJSON, 0, len(ls))
	for _, l := range ls {
		out = append(out, lockoutJSON{IP: l.Client.String(), Until: l.Until.UTC().Format(time.RFC3339)})
	}
	s.writeJSON(w, http.StatusOK, out)
}

// sortedLockouts are the Admin's lockouts, soonest end first.
func (s *Server) sortedLockouts() []knock.Locked {
	if s.opts.Admin == nil {
		return nil
	}
	ls := slices.Clone(s.opts.Admin.Lockouts())
	slices.SortStableFunc(ls, func(a, b knock.Locked) int {
		return cmp.Or(a.Until.Compare(b.Until), a.Client.Compare(b.Client))
	})
	return ls
}

func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		s.log.Debug("web: write JSON", keyErr, err)
	}
}

// pathIP is the {ip} of the request's path; it answers 400 itself when
// that is not a single address.
func pathIP(w http.ResponseWriter, r *http.Request) (netip.Addr, bool) {
	return parseIP(w, r.PathValue("ip"))
}

func parseIP(w http.ResponseWriter, raw string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(raw)
	if err != nil || ip.Zone() != "" {
		http.Error(w, fmt.Sprintf("bad IP address %q", raw), http.StatusBadRequest)
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}

// revokeWithToken is DELETE /api/grants/{ip} over TCP.
func (s *Server) revokeWithToken(w http.ResponseWriter, r *http.Request) {
	token := s.currentToken()
	if token == "" {
		http.Error(w, "revoking is disabled: the server has no usable token file (web.token_file, at least 16 bytes); see its log", http.StatusForbidden)
		return
	}
	if !authorized(r, token) {
		s.log.Warn("web: revoke refused: missing or wrong token", keyRemote, r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="webknock"`)
		http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
		return
	}
	s.revoke(w, r)
}

// revoke is DELETE /api/grants/{ip} or /api/grants/{ip}/{bits}, once the
// caller is known to be allowed: an address or a network; with
// ?kill_sessions=true the established sessions of each ended grant end
// too. It answers 200 with a revokeJSON.
func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	raw := r.PathValue("ip")
	if bits := r.PathValue("bits"); bits != "" {
		raw += "/" + bits
	}
	src, err := firewall.ParseSource(raw)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	kill := false
	if v := r.URL.Query().Get("kill_sessions"); v != "" {
		if kill, err = strconv.ParseBool(v); err != nil {
			http.Error(w, fmt.Sprintf("bad kill_sessions %q: want true or false", v), http.StatusBadRequest)
			return
		}
	}
	name := firewall.FormatSource(src)
	gs, err := s.fw.Revoke(r.Context(), src, firewall.ReasonRevoked)
	switch {
	case errors.Is(err, firewall.ErrNoGrant):
		http.Error(w, fmt.Sprintf("%s holds no grant", name), http.StatusNotFound)
		return
	case err != nil:
		s.log.Error("web: revoke failed", keyIP, name, keyErr, err)
		http.Error(w, "revoke failed; see the server's log", http.StatusInternalServerError)
		return
	}
	out := revokeJSON{Revoked: make([]grantJSON, 0, len(gs))}
	for _, g := range gs {
		out.Revoked = append(out.Revoked, toGrantJSON(g))
	}
	attrs := append([]any{keyIP, name, keyCount, len(gs)}, who(r)...)
	if kill {
		ended, err := s.killSessions(r.Context(), gs)
		out.SessionsEnded = &ended
		attrs = append(attrs, keySessions, ended)
		if err != nil {
			s.log.Error("web: sessions not ended", keyIP, name, keyErr, err)
			out.SessionsError = err.Error()
		}
	}
	s.log.Info("revoked", attrs...)
	s.writeJSON(w, http.StatusOK, out)
}

// killSessions ends the sessions of the ended grants gs: each grant's
// source to its ports. It returns how many ended, and every failure.
func (s *Server) killSessions(ctx context.Context, gs []firewall.Grant) (int, error) {
	n := 0
	var errs []error
	for _, g := range gs {
		k, err := s.fw.KillSessions(ctx, g.Source(), g.Ports)
		n += k
		if err != nil {
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// authorized compares the bearer token in constant time: both sides are
// hashed first, so not even the length leaks.
func authorized(r *http.Request, token string) bool {
	scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	a := sha256.Sum256([]byte(strings.TrimSpace(got)))
	b := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// problems says what is wrong with the daemon now; none when it is well.
func (s *Server) problems() []string {
	var why []string
	if s.opts.Following != nil && !s.opts.Following() {
		why = append(why, "not following the access logs")
	}
	if s.opts.Problems != nil {
		for _, p := range s.opts.Problems() {
			if p = strings.TrimSpace(p); p != "" {
				why = append(why, p)
			}
		}
	}
	switch h := s.fw.Health(); {
	case len(h.Problems) > 0:
		for _, p := range h.Problems {
			why = append(why, "firewall: "+p)
		}
	case h.InSync:
	case h.Pending > 0:
		why = append(why, fmt.Sprintf("firewall out of sync: %d rule deletes pending", h.Pending))
	default:
		why = append(why, "firewall out of sync")
	}
	return why
}

// healthz is 200 "ok", or 503 with every problem, one a line.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	why := s.problems()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(why) == 0 {
		io.WriteString(w, "ok\n")
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	io.WriteString(w, strings.Join(why, "\n")+"\n")
}

// errorLogger sends promhttp's errors to the server's log.
type errorLogger struct{ s *Server }

func (e errorLogger) Println(v ...any) { e.s.log.Warn("web: metrics: " + fmt.Sprint(v...)) }
