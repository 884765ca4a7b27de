package web

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/webknock/webknock/firewall"
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

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.page)
	mux.HandleFunc("GET /static/style.css", serveCSS)
	mux.HandleFunc("GET /api/grants", s.grants)
	mux.HandleFunc("DELETE /api/grants/{ip}", s.revoke)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{
		ErrorLog: errorLogger{s}, ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", s.healthz)
	return securityHeaders(mux)
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
// of how firewall.Grant marshals.
type grantJSON struct {
	IP       string          `json:"ip"`
	Sequence string          `json:"sequence"`
	Ports    []firewall.Port `json:"ports"`
	Until    string          `json:"until"`
}

func (s *Server) grants(w http.ResponseWriter, _ *http.Request) {
	gs := s.fw.Grants()
	out := make([]grantJSON, 0, len(gs))
	for _, g := range gs {
		ports := g.Ports
		if ports == nil {
			ports = []firewall.Port{}
		}
		out = append(out, grantJSON{IP: g.IP.String(), Sequence: g.Sequence, Ports: ports, Until: g.Until.UTC().Format(time.RFC3339)})
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(out); err != nil {
		s.log.Debug("web: write grants", keyErr, err)
	}
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	if s.token == "" {
		http.Error(w, "revoking is disabled: the server has no usable token file (web.token_file, at least 16 bytes); see its log", http.StatusForbidden)
		return
	}
	if !s.authorized(r) {
		s.log.Warn("web: revoke refused: missing or wrong token", keyRemote, r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="webknock"`)
		http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
		return
	}
	raw := r.PathValue("ip")
	ip, err := netip.ParseAddr(raw)
	if err != nil || ip.Zone() != "" {
		http.Error(w, fmt.Sprintf("bad IP address %q", raw), http.StatusBadRequest)
		return
	}
	ip = ip.Unmap()
	switch err := s.fw.Revoke(r.Context(), ip); {
	case errors.Is(err, firewall.ErrNoGrant):
		http.Error(w, fmt.Sprintf("%s holds no grant", ip), http.StatusNotFound)
	case err != nil:
		s.log.Error("web: revoke failed", keyIP, ip, keyErr, err)
		http.Error(w, "revoke failed; see the server's log", http.StatusInternalServerError)
	default:
		s.log.Info("revoked over HTTP", keyIP, ip, keyRemote, r.RemoteAddr)
		w.WriteHeader(http.StatusNoContent)
	}
}

// authorized compares the bearer token in constant time: both sides are
// hashed first, so not even the length leaks.
func (s *Server) authorized(r *http.Request) bool {
	scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	a := sha256.Sum256([]byte(strings.TrimSpace(got)))
	b := sha256.Sum256([]byte(s.token))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// health says whether the daemon is well, and if not, why.
func (s *Server) health() (ok bool, reason string) {
	var why []string
	if s.opts.Following != nil && !s.opts.Following() {
		why = append(why, "not following the access logs")
	}
	switch h := s.fw.Health(); {
	case h.InSync:
	case h.Pending > 0:
		why = append(why, fmt.Sprintf("firewall out of sync: %d rule deletes pending", h.Pending))
	default:
		why = append(why, "firewall out of sync")
	}
	if len(why) > 0 {
		return false, strings.Join(why, "; ")
	}
	return true, "ok"
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	ok, reason := s.health()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	io.WriteString(w, reason+"\n")
}

// errorLogger sends promhttp's errors to the server's log.
type errorLogger struct{ s *Server }

func (e errorLogger) Println(v ...any) { e.s.log.Warn("web: metrics: " + fmt.Sprint(v...)) }
