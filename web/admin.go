package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/webknock/webknock/firewall"
)

// maxRequestBytes bounds a request body: a grant request is one small object.
const maxRequestBytes = 4 << 10

// peer is who is at the other end of an admin socket connection, per the kernel.
type peer struct{ uid, pid int }

type peerKey struct{}

type peerResult struct {
	p   peer
	err error
}

// connWithPeer is the admin server's ConnContext: the credentials are read
// once per connection, as they were when the peer connected.
func connWithPeer(ctx context.Context, c net.Conn) context.Context {
	p, err := peerCred(c)
	return context.WithValue(ctx, peerKey{}, peerResult{p, err})
}

// withPeer lets through root and the daemon's own user, whatever the
// socket's mode (which also keeps others out): 403 for everyone else.
func (s *Server) withPeer(next http.Handler) http.Handler {
	euid := os.Geteuid()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pr, ok := r.Context().Value(peerKey{}).(peerResult)
		switch {
		case !ok || pr.err != nil:
			err := pr.err
			if !ok {
				err = errors.New("no peer credentials")
			}
			s.log.Warn("admin socket: request refused: peer credentials unknown", keyErr, err)
			http.Error(w, "forbidden: the daemon cannot tell who you are", http.StatusForbidden)
		case pr.p.uid != 0 && pr.p.uid != euid:
			s.log.Warn("admin socket: request refused", keyUID, pr.p.uid, keyPID, pr.p.pid)
			http.Error(w, fmt.Sprintf("forbidden: uid %d may not use the admin socket; only root and the daemon's user (uid %d) may", pr.p.uid, euid), http.StatusForbidden)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// who names the requester in the log: the peer of the admin socket, or the
// remote address over TCP.
func who(r *http.Request) []any {
	if pr, ok := r.Context().Value(peerKey{}).(peerResult); ok && pr.err == nil {
		return []any{keyUID, pr.p.uid, keyPID, pr.p.pid}
	}
	return []any{keyRemote, r.RemoteAddr}
}

func noAdmin(w http.ResponseWriter) {
	http.Error(w, "not available: this daemon offers no lockouts, manual grants or unlocking", http.StatusServiceUnavailable)
}

// grantRequest is the body of POST /api/grants.
type grantRequest struct {
	IP       string `json:"ip"`
	Sequence string `json:"sequence,omitempty"` // "": the daemon's default
	For      string `json:"for,omitempty"`      // a Go duration: "10m", "1h30m"; "": the sequence's window
}

// grant is POST /api/grants on the admin socket: 201 with the grant.
func (s *Server) grant(w http.ResponseWriter, r *http.Request) {
	if s.opts.Admin == nil {
		noAdmin(w)
		return
	}
	var req grantRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		http.Error(w, fmt.Sprintf(`bad grant request: %v; want {"ip":"198.51.100.7","sequence":"ssh","for":"10m"}`, err), http.StatusBadRequest)
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		http.Error(w, "bad grant request: more than one JSON object", http.StatusBadRequest)
		return
	}
	ip, ok := parseIP(w, req.IP)
	if !ok {
		return
	}
	if ip.IsUnspecified() || ip.IsMulticast() {
		http.Error(w, fmt.Sprintf("%s is not an address a client connects from", ip), http.StatusBadRequest)
		return
	}
	var d time.Duration // 0: the sequence's window
	if req.For != "" {
		var err error
		if d, err = time.ParseDuration(req.For); err != nil || d <= 0 {
			http.Error(w, fmt.Sprintf(`bad duration %q: want a positive duration like "10m" or "1h30m"`, req.For), http.StatusBadRequest)
			return
		}
	}
	g, err := s.opts.Admin.Grant(r.Context(), ip, req.Sequence, d)
	switch {
	case errors.Is(err, ErrUnknownSequence), errors.Is(err, ErrBadRequest), errors.Is(err, firewall.ErrExpired),
		errors.Is(err, firewall.ErrNotAllowed), errors.Is(err, firewall.ErrRevoked):
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	case errors.Is(err, firewall.ErrTableFull), errors.Is(err, firewall.ErrCapped):
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	case err != nil:
		s.log.Error("web: grant failed", keyIP, ip, keySequence, req.Sequence, keyErr, err)
		// The admin socket's users may read the daemon's log anyway.
		http.Error(w, "grant failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	s.log.Info("granted over the admin socket", append([]any{keyIP, sourceString(g), keySequence, g.Sequence, keyUntil, g.Until}, who(r)...)...)
	w.Header().Set("Location", "/api/grants/"+sourceString(g))
	s.writeJSON(w, http.StatusCreated, toGrantJSON(g))
}

// unlock is DELETE /api/lockouts/{ip} on the admin socket.
func (s *Server) unlock(w http.ResponseWriter, r *http.Request) {
	if s.opts.Admin == nil {
		noAdmin(w)
		return
	}
	ip, ok := pathIP(w, r)
	if !ok {
		return
	}
	switch was, err := s.opts.Admin.Unlock(r.Context(), ip); {
	case err != nil:
		s.log.Error("web: unlock failed", keyIP, ip, keyErr, err)
		http.Error(w, "unlock failed: "+err.Error(), http.StatusInternalServerError)
	case !was:
		http.Error(w, fmt.Sprintf("%s is not locked out", ip), http.StatusNotFound)
	default:
		s.log.Info("unlocked over the admin socket", append([]any{keyIP, ip}, who(r)...)...)
		w.WriteHeader(http.StatusNoContent)
	}
}
