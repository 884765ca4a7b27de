// Package web serves webknock's status page, its JSON API, Prometheus
// metrics and a health check over TCP (web.listen) and the admin unix socket
// (web.socket), and holds the client the command line talks to the daemon
// with over that socket.
//
// Over TCP it only reads, apart from revoking with the bearer token; it
// answers only to its own address in the Host header (no DNS rebinding) and
// bounds the connections it holds. The admin socket adds granting and
// unlocking without a token: the socket's mode and the peer's kernel
// credentials (root or the daemon's own user) are the authentication.
package web

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
	keyIP       = "ip"
	keyAddr     = "addr"
	keyRemote   = "remote"
	keyFile     = "file"
	keyErr      = "err"
	keyPath     = "path"
	keyUID      = "uid"
	keyPID      = "pid"
	keySequence = "sequence"
	keyUntil    = "until"
	keyCount    = "count"
	keySessions = "sessions"
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

// Firewall is what the server reads from the firewall, plus Revoke and
// KillSessions. *firewall.Firewall satisfies it.
type Firewall interface {
	Grants() []firewall.Grant
	Revoke(ctx context.Context, p netip.Prefix, reason string) ([]firewall.Grant, error)
	KillSessions(ctx context.Context, src netip.Prefix, ports []firewall.Port) (int, error)
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

// Admin is what the daemon does for the admin socket beyond the firewall's
// Revoke. Its methods are called from request goroutines, concurrently:
// the daemon hands them to the goroutine that owns the knock tracker.
type Admin interface {
	// Grant opens the ports of sequence ("" for the daemon's default
	// sequence) to ip for d (positive) and returns the grant as applied.
	// An unknown sequence is an error wrapping ErrUnknownSequence; a
	// request the daemon refuses for another reason of its own (a duration
	// beyond what it allows) wraps ErrBadRequest; both are answered 400.
	Grant(ctx context.Context, ip netip.Addr, sequence string, d time.Duration) (firewall.Grant, error)
	// Lockouts lists the clients locked out now (also read by the status
	// page and GET /api/lockouts over TCP).
	Lockouts() []knock.Locked
	// Unlock ends ip's lockout and forgets its failures; false when ip
	// was not locked out.
	Unlock(ctx context.Context, ip netip.Addr) (bool, error)
}

// Errors an Admin wraps to have a request answered 400 with its message.
var (
	ErrUnknownSequence = errors.New("unknown sequence")
	ErrBadRequest      = errors.New("bad request")
)

// Options configure a Server.
type Options struct {
	// Listeners are what Serve serves on, from Bind; Serve owns them
	// (closing them before Serve is the caller's). nil: nothing until Rebind.
	Listeners *Listeners
	TokenFile string // bearer token for DELETE over TCP; missing, empty or short: refused
	Logger    *slog.Logger
	Clock     func() time.Time // nil: time.Now
	// Following reports whether the log follower is running; it is called
	// from request goroutines. nil: not reported.
	Following func() bool
	// Problems lists what is wrong with the daemon's inputs now (a log
	// file missing, a file whose lines none parse, ...), one short
	// sentence each; any makes /healthz 503. Called from request
	// goroutines. nil: none.
	Problems func() []string
	Tracker  Tracker  // nil: the knock metrics read 0
	HookRuns HookRuns // nil: no hook metrics
	// SyslogCounts returns the syslog listeners' counters, by listener
	// and result, for the metrics; called from request goroutines. nil:
	// none.
	SyslogCounts func() map[string]map[string]uint64
	// FleetCounts returns the fleet's counters, by role (detector,
	// enforcer), then result (descFleet); nil without a fleet.
	FleetCounts func() map[string]map[string]uint64
	// Admin grants, lists lockouts and unlocks for the admin socket.
	// nil: those endpoints answer 503 and the page shows no lockouts.
	Admin Admin
	// RecentEvents bounds the list of events on the status page; 0 means
	// DefaultRecentEvents.
	RecentEvents int
	// MaxConns and MaxConnsPerAddr bound the TCP connections open at once,
	// in total and per remote address; 0 means DefaultMaxConns and
	// DefaultMaxConnsPerAddr. Connections over them are closed at once.
	MaxConns, MaxConnsPerAddr int
}

// Server is the HTTP side of webknock. The recording methods (LinesRead,
// Event, ...) are safe for concurrent use and cheap enough to call for every
// log line.
type Server struct {
	opts   Options
	log    *slog.Logger
	now    func() time.Time
	fw     Firewall
	token  atomic.Pointer[string] // nil: revoking over TCP refused
	tcpMux http.Handler           // routes of the TCP listener, before the Host check
	admin  http.Handler           // the admin socket's handler
	m      *metrics
	recent *ring
	conns  *connLimit

	// Totals for the status page; the labelled series live in m.
	read, parsed, skipped atomic.Uint64
	kinds                 [kindCount]atomic.Uint64

	mu      sync.Mutex
	lns     *Listeners  // bound now; nil: none
	serving bool        // Serve runs: listeners are served as they come
	eps     []*endpoint // one per listener served
	fatal   chan error  // an endpoint that failed ends Serve
	wg      sync.WaitGroup
}

// New reads the token and builds the metrics registry and the handlers. A
// token file that cannot be used is not an error: revoking over TCP is
// refused and a warning is logged.
func New(o Options, fw Firewall) (*Server, error) {
	if fw == nil {
		return nil, errors.New("web: no firewall")
	}
	switch {
	case o.RecentEvents < 0:
		return nil, fmt.Errorf("web: recent events %d: want 0 or more", o.RecentEvents)
	case o.MaxConns < 0 || o.MaxConnsPerAddr < 0:
		return nil, fmt.Errorf("web: connection limits %d, %d: want 0 (the default) or more", o.MaxConns, o.MaxConnsPerAddr)
	}
	if o.RecentEvents == 0 {
		o.RecentEvents = DefaultRecentEvents
	}
	if o.MaxConns == 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.MaxConnsPerAddr == 0 {
		o.MaxConnsPerAddr = DefaultMaxConnsPerAddr
	}
	s := &Server{opts: o, log: o.Logger, now: o.Clock, fw: fw, recent: newRing(o.RecentEvents), lns: o.Listeners}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.SetTokenFile(o.TokenFile) // logs why when there is no usable token
	s.conns = newConnLimit(o.MaxConns, o.MaxConnsPerAddr, func(limit string) { s.m.refused(limit).Inc() })
	var err error
	if s.m, err = newMetrics(s); err != nil {
		return nil, err
	}
	s.tcpMux = s.routes(false)
	s.admin = securityHeaders(s.withPeer(s.routes(true)))
	return s, nil
}

// SetTokenFile reads the bearer token for revoking over TCP from path
// again, for a reload: the previous token stops working at once, also when
// the new file cannot be used (then revoking over TCP is refused until a
// usable one is set). The reason is logged and returned.
func (s *Server) SetTokenFile(path string) error {
	token, err := ReadToken(path)
	if err != nil {
		s.token.Store(nil)
		s.mu.Lock()
		tcp := s.lns != nil && s.lns.tcp != nil
		s.mu.Unlock()
		if tcp && path != "" {
			s.log.Warn("revoking over TCP is disabled: no usable token", keyErr, err)
		}
		return err
	}
	s.token.Store(&token)
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o004 != 0 {
		s.log.Warn("the token file is readable by every user; chmod o-r it", keyFile, path)
	}
	return nil
}

// currentToken is the bearer token; "" when revoking over TCP is refused.
func (s *Server) currentToken() string {
	if p := s.token.Load(); p != nil {
		return *p
	}
	return ""
}

// LinesRead counts n lines read from file.
func (s *Server) LinesRead(file string, n int) {
	s.read.Add(uint64(n))
	s.m.file(file).read.Add(float64(n))
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
const kindCount = int(knock.KindDenied) + 1

var kinds = [...]knock.Kind{knock.KindStep, knock.KindReset, knock.KindTimeout, knock.KindGrant, knock.KindLockout, knock.KindReused,
	knock.KindClose, knock.KindDenied}

// kindIndex maps a Kind to its counters; 0 for a kind knock adds later.
func kindIndex(k knock.Kind) int {
	if k >= knock.KindStep && k <= knock.KindDenied {
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
