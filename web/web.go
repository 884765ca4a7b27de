// Package web serves webknock's status page, its JSON API (list and revoke
// grants), Prometheus metrics and a health check, and holds the small client
// the command line uses to talk to a running daemon.
//
// It only reads the firewall's and the knock tracker's state, through the
// small interfaces below; the one write is Revoke, behind a bearer token.
package web

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/knock"
)

// Attribute keys of the log.
const (
	keyIP     = "ip"
	keyAddr   = "addr"
	keyRemote = "remote"
	keyFile   = "file"
	keyErr    = "err"
)

// DefaultRecentEvents is how many events the status page keeps when
// Options.RecentEvents is 0.
const DefaultRecentEvents = 200

// Server timeouts: the API answers from memory, so a slow client is cut off early.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
	shutdownTimeout   = 5 * time.Second
)

// Firewall is what the server reads from the firewall, plus Revoke.
// *firewall.Firewall satisfies it.
type Firewall interface {
	Grants() []firewall.Grant
	Revoke(ctx context.Context, ip netip.Addr) error
	Health() firewall.Health
}

var _ Firewall = (*firewall.Firewall)(nil)

// Tracker reports the size of the knock client table. *knock.Tracker has
// these methods but is not safe for concurrent use: the daemon passes
// something that reads them safely (for instance values it stores after each
// line). Both are called on every scrape of /metrics.
type Tracker interface {
	Clients() int
	Evicted() uint64
}

// Options configure a Server.
type Options struct {
	Listen    string // host:port for Serve
	TokenFile string // bearer token for DELETE; missing, empty or short: writes are refused
	Logger    *slog.Logger
	Clock     func() time.Time // nil: time.Now
	// Following reports whether the log follower is running; it is called
	// from request goroutines. nil: not reported, health depends on the
	// firewall alone.
	Following func() bool
	Tracker   Tracker // nil: the knock metrics read 0
	// RecentEvents bounds the list of events on the status page; 0 means
	// DefaultRecentEvents.
	RecentEvents int
}

// Server is the HTTP side of webknock. The recording methods (LineRead,
// Event, ...) are safe for concurrent use and cheap enough to call for every
// log line.
type Server struct {
	opts    Options
	log     *slog.Logger
	now     func() time.Time
	fw      Firewall
	token   string // empty: writes refused
	handler http.Handler
	m       *metrics
	recent  *ring

	// Totals for the status page; the labelled series live in m.
	read, parsed, skipped atomic.Uint64
	kinds                 [kindCount]atomic.Uint64
}

// New reads the token and builds the metrics registry and the handler. A
// token file that cannot be used is not an error: writes are refused and a
// warning is logged.
func New(o Options, fw Firewall) (*Server, error) {
	if fw == nil {
		return nil, errors.New("web: no firewall")
	}
	if o.RecentEvents < 0 {
		return nil, fmt.Errorf("web: recent events %d: want 0 or more", o.RecentEvents)
	}
	if o.RecentEvents == 0 {
		o.RecentEvents = DefaultRecentEvents
	}
	s := &Server{opts: o, log: o.Logger, now: o.Clock, fw: fw, recent: newRing(o.RecentEvents)}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.now == nil {
		s.now = time.Now
	}
	token, err := ReadToken(o.TokenFile)
	if err != nil {
		s.log.Warn("revoking over HTTP is disabled: no usable token", keyErr, err)
	} else {
		s.token = token
		if fi, err := os.Stat(o.TokenFile); err == nil && fi.Mode().Perm()&0o004 != 0 {
			s.log.Warn("the token file is readable by every user; chmod o-r it", keyFile, o.TokenFile)
		}
	}
	if s.m, err = newMetrics(s); err != nil {
		return nil, err
	}
	s.handler = s.routes()
	return s, nil
}

// Handler returns the server's handler: every endpoint, with the security headers.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve listens on Options.Listen and serves until ctx ends, then shuts down
// gracefully (in-flight requests get a few seconds) and returns nil.
func (s *Server) Serve(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return fmt.Errorf("web: %w", err)
	}
	return s.serve(ctx, ln)
}

func (s *Server) serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	addr := ln.Addr().String()
	s.log.Info("web listening", keyAddr, addr)
	if ap, err := netip.ParseAddrPort(addr); err == nil && !ap.Addr().IsLoopback() {
		s.log.Warn("web listens beyond loopback without TLS: the status page is public and the token travels in clear; put a TLS proxy in front", keyAddr, addr)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("web: serve on %s: %w", addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("web: requests still running at shutdown; closed", keyErr, err)
		srv.Close()
	}
	<-errc // http.ErrServerClosed
	return nil
}

// LineRead counts a line read from file.
func (s *Server) LineRead(file string) {
	s.read.Add(1)
	s.m.file(file).read.Inc()
}

// LineParsed counts a line of file that parsed into a request.
func (s *Server) LineParsed(file string) {
	s.parsed.Add(1)
	s.m.file(file).parsed.Inc()
}

// LineSkipped counts a line of file that was skipped, and why (weblog's reason).
func (s *Server) LineSkipped(file, reason string) {
	s.skipped.Add(1)
	f := s.m.file(file)
	f.skipped.Inc()
	f.reason(reason).Inc()
}

// Rotation counts a rotation of file noticed by the follower.
func (s *Server) Rotation(file string) { s.m.rotations.WithLabelValues(file).Inc() }

// Reload counts a configuration reload, applied (ok) or refused.
func (s *Server) Reload(ok bool) {
	if ok {
		s.m.reloadOK.Inc()
	} else {
		s.m.reloadFailed.Inc()
	}
}

// Event counts e and keeps it for the status page. e.Ports is kept, not copied:
// knock shares it read-only.
func (s *Server) Event(e knock.Event) {
	k := kindIndex(e.Kind)
	s.kinds[k].Add(1)
	if k != 0 {
		s.m.events[k].Inc()
	}
	s.recent.add(e)
}

// kindCount is the number of knock.Kind values plus slot 0 for a kind this
// package does not know (counted on no series).
const kindCount = int(knock.KindLockout) + 1

var kinds = [...]knock.Kind{knock.KindStep, knock.KindReset, knock.KindTimeout, knock.KindGrant, knock.KindLockout}

// kindIndex maps a Kind to its counters; 0 for a kind knock adds later.
func kindIndex(k knock.Kind) int {
	if k >= knock.KindStep && k <= knock.KindLockout {
		return int(k)
	}
	return 0
}

// fileCounters are one file's line counters, looked up once per line without allocating.
type fileCounters struct {
	read, parsed, skipped prometheus.Counter
	name                  string
	vec                   *prometheus.CounterVec

	mu      sync.RWMutex
	reasons map[string]prometheus.Counter
}

func (f *fileCounters) reason(r string) prometheus.Counter {
	f.mu.RLock()
	c, ok := f.reasons[r]
	f.mu.RUnlock()
	if ok {
		return c
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok = f.reasons[r]; !ok {
		c = f.vec.WithLabelValues(f.name, r)
		f.reasons[r] = c
	}
	return c
}
