package weblog

// The syslog input (DESIGN.md, "Inputs"): web servers send each access-log
// line as a syslog message, to a unix datagram socket, UDP or TCP.
//
// Trust comes only from the transport (kernel credentials, source
// addresses, TLS client certificates), never from fields of the message:
// whoever can send one can forge a knock for any address.
//
// Reading goroutines (one per socket, one per TCP connection) append the
// bodies to a pending buffer per listener; one loop hands a listener's
// pending buffer over as a Batch whenever the consumer is ready, so a line
// never waits for more lines and a busy input costs one channel operation
// per batch. Buffers come from a pool of at most syslogPending bytes that
// Ack refills: a slow consumer makes the readers stop reading (the kernel
// then queues, and drops or makes senders wait), never grows memory.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

const (
	syslogPending    = 4 << 20  // bytes of batch buffers per Syslog, pending or lent
	syslogBufMin     = 64 << 10 // bytes of one batch buffer, at least
	maxWarnedSenders = 1024     // senders whose problems are logged
	keyListen        = "listen"
	keySender        = "sender"
)

// SyslogOptions configures ListenSyslog.
type SyslogOptions struct {
	Listen []string // each "unixgram:/abs/path", "udp:HOST:PORT" or "tcp:HOST:PORT" (ParseSyslogAddr)
	// AllowUIDs are the sender uids accepted on unixgram sockets, as the
	// kernel reports them (SCM_CREDENTIALS).
	AllowUIDs []uint32
	// AllowFrom are the sender addresses accepted on udp and tcp; empty
	// means loopback only.
	AllowFrom []netip.Prefix
	// SocketGroup is the group of unixgram socket files (mode 0660), so a
	// web server running under that group can send; -1 leaves ours.
	SocketGroup int
	// TLS, when set, is required on every tcp listener (and must be set
	// for one off loopback): mutual TLS, the client certificate verified
	// against ClientCAFile.
	TLS SyslogTLS
	// MaxMessage is the most bytes of one message, header included; a
	// longer one is counted as oversized and dropped. 0 means
	// DefaultMaxMessage; at most MaxLineBytes.
	MaxMessage int
	// MaxConns is the most tcp connections at once, per listener; one more
	// is closed at once and counted as refused. 0 means 64.
	MaxConns int
	// IdleTimeout closes a tcp connection that completes no message for
	// this long. 0 means 5 minutes.
	IdleTimeout time.Duration
	Logger      *slog.Logger // nil discards

	notify chan struct{} // tests: signalled when counters change
}

// SyslogTLS names the PEM files of mutual TLS on tcp listeners.
type SyslogTLS struct{ CertFile, KeyFile, ClientCAFile string }

// SyslogStats counts what each listener received, by listen string.
type SyslogStats struct {
	Listeners map[string]SyslogCounts
}

// SyslogCounts are the counters of one listener.
type SyslogCounts struct {
	Received  uint64 // datagrams, and frames of tcp streams, that arrived (refused datagrams too)
	Accepted  uint64 // messages whose body became a line
	Refused   uint64 // datagrams from senders not allowed; tcp connections refused (sender, TLS, MaxConns)
	Oversized uint64 // messages over MaxMessage, not parsed
	Truncated uint64 // tcp streams that ended (closed, idle, broken) inside a message
	Malformed uint64 // messages whose header did not parse, or with a line break or no body
	Dropped   uint64 // udp: datagrams the kernel dropped on a full receive buffer (SO_RXQ_OVFL)
}

// Syslog receives access-log lines as syslog messages; see ListenSyslog.
type Syslog struct {
	opts      SyslogOptions // defaults applied
	log       *slog.Logger
	tls       *tls.Config // nil without TLS
	ctx       context.Context
	cancel    context.CancelFunc
	listeners []*syslogListener
	batches   chan Batch
	wake      chan struct{}   // capacity 1: a listener's pending lines went from none to some
	pool      chan *syslogBuf // buffers not in use; nil for one not yet allocated
	bufSize   int             // capacity of a buffer
	pending   atomic.Int64    // messages appended, not yet taken into a batch
	readers   sync.WaitGroup  // reading goroutines
	done      chan struct{}   // closed when the deliver loop has closed batches
	stopOnce  sync.Once       // stop
	stopErr   error           // of removing socket files

	// Owned by the deliver loop.
	next int    // listener the round robin resumes at
	seq  uint64 // the last batch id

	warnMu   sync.Mutex
	warned   map[warnKey]struct{}
	warnFull bool // the "further senders" line was logged
}

// syslogBuf is the memory of a batch, lent to one at a time.
type syslogBuf struct {
	s     *Syslog
	b     []byte // bodies, each with its newline
	n     int    // bodies in b
	owner atomic.Uint64
}

// syslogListener is one listen string: its socket and pending lines.
type syslogListener struct {
	s      *Syslog
	idx    int
	listen string // as configured
	source string // Batch.Source
	addr   SyslogAddr
	local  net.Addr
	sock   io.Closer    // *net.UnixConn, *net.UDPConn or net.Listener
	remove func() error // removes the socket file, if it is still ours; nil if none
	c      syslogCounters
	conns  atomic.Int64 // tcp: open connections

	mu    sync.Mutex
	cur   *syslogBuf   // appended to; nil when taken
	ready []*syslogBuf // full, waiting for the deliver loop, oldest first
	n     int          // bodies in cur and ready
}

type syslogCounters struct {
	received, accepted, refused, oversized, truncated, malformed, dropped atomic.Uint64
}

var _ Source = (*Syslog)(nil)

// ListenSyslog binds every listener of o, or none: on an error it closes
// what it bound, and the error names the listen string. It runs the checks
// of CheckSyslog first and refuses what they report. Stop with Close
// (cancelling ctx stops reading too).
func ListenSyslog(ctx context.Context, o SyslogOptions) (*Syslog, error) {
	if errs := CheckSyslog(o); len(errs) > 0 {
		return nil, fmt.Errorf("listen syslog: %w", errors.Join(errs...))
	}
	if len(o.Listen) == 0 {
		return nil, errors.New("listen syslog: nothing to listen on")
	}
	if o.MaxMessage == 0 {
		o.MaxMessage = DefaultMaxMessage
	}
	if o.MaxConns == 0 {
		o.MaxConns = defaultMaxConns
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = defaultIdleTimeout
	}
	o.AllowFrom = normalPrefixes(o.AllowFrom)
	s := &Syslog{
		opts:    o,
		log:     o.Logger,
		batches: make(chan Batch),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		bufSize: max(syslogBufMin, 2*o.MaxMessage),
		warned:  map[warnKey]struct{}{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	// Each listener needs a buffer to fill, one waiting to be taken and
	// one lent to the consumer to keep going.
	nbuf := max(syslogPending/s.bufSize, 3*len(o.Listen))
	s.pool = make(chan *syslogBuf, nbuf)
	for range nbuf {
		s.pool <- nil
	}
	if o.TLS != (SyslogTLS{}) && slices.ContainsFunc(o.Listen, func(l string) bool {
		a, _ := ParseSyslogAddr(l)
		return a.Network == SyslogTCP
	}) {
		cfg, err := loadSyslogTLS(o.TLS) // as CheckSyslog did
		if err != nil {
			return nil, fmt.Errorf("listen syslog: log.syslog.tls: %w", err)
		}
		s.tls = cfg
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	for i, ls := range o.Listen {
		a, _ := ParseSyslogAddr(ls) // checked
		l := &syslogListener{s: s, idx: i, listen: ls, source: "syslog:" + ls, addr: a}
		var err error
		switch a.Network {
		case SyslogUnixgram:
			err = l.bindUnixgram()
		case SyslogUDP:
			err = l.bindUDP()
		case SyslogTCP:
			err = l.bindTCP()
		}
		if err != nil {
			s.cancel()
			s.stop()
			return nil, fmt.Errorf("listen syslog %s: %w", ls, err)
		}
		s.listeners = append(s.listeners, l)
	}
	context.AfterFunc(s.ctx, s.stop)
	for _, l := range s.listeners {
		s.log.Info("listening for syslog", keyListen, l.listen, "address", l.local.String())
		s.readers.Add(1)
		switch l.addr.Network {
		case SyslogTCP:
			go l.accept()
		default:
			go l.readDatagrams()
		}
	}
	go s.deliver()
	return s, nil
}

// normalPrefixes masks ps and writes IPv4-mapped ones as IPv4, the form
// sender addresses are compared in.
func normalPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out
}

// allowedAddr reports whether a udp or tcp sender may send.
func (s *Syslog) allowedAddr(a netip.Addr) bool {
	a = a.Unmap()
	if len(s.opts.AllowFrom) == 0 {
		return a.IsLoopback()
	}
	for _, p := range s.opts.AllowFrom {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Batches delivers the lines, a batch at a time, each listener's in the
// order they were received (tcp: each connection's).
func (s *Syslog) Batches() <-chan Batch { return s.batches }

// Ack takes back the memory of b, which must not be used after.
func (s *Syslog) Ack(b Batch) {
	sb := b.sbuf
	// Once only, not after the memory went to a later batch, and only ours.
	if sb == nil || sb.s != s || !sb.owner.CompareAndSwap(b.sid, 0) {
		return
	}
	s.putBuf(sb)
}

// CaughtUp reports whether every message received so far was delivered
// (or is the batch being handed over).
func (s *Syslog) CaughtUp() bool { return s.pending.Load() == 0 }

// Close stops the listeners, removes the unixgram socket files it created
// (those still ours), and closes Batches. It returns the error of removing
// the files.
func (s *Syslog) Close() error {
	s.cancel()
	s.stop()
	s.readers.Wait()
	<-s.done
	return s.stopErr
}

// Addr returns the address a listen string is bound to (to learn the port
// of "udp:127.0.0.1:0"), or nil if it is not one of ours.
func (s *Syslog) Addr(listen string) net.Addr {
	for _, l := range s.listeners {
		if l.listen == listen {
			return l.local
		}
	}
	return nil
}

// Stats returns the counters so far, by listen string.
func (s *Syslog) Stats() SyslogStats {
	m := make(map[string]SyslogCounts, len(s.listeners))
	for _, l := range s.listeners {
		c := &l.c
		m[l.listen] = SyslogCounts{
			Received:  c.received.Load(),
			Accepted:  c.accepted.Load(),
			Refused:   c.refused.Load(),
			Oversized: c.oversized.Load(),
			Truncated: c.truncated.Load(),
			Malformed: c.malformed.Load(),
			Dropped:   c.dropped.Load(),
		}
	}
	return SyslogStats{Listeners: m}
}

// counted tells a waiting test that counters changed.
func (s *Syslog) counted() {
	if s.opts.notify != nil {
		select {
		case s.opts.notify <- struct{}{}:
		default:
		}
	}
}

// stop closes the sockets and removes the socket files, once.
func (s *Syslog) stop() {
	s.stopOnce.Do(func() {
		var errs []error
		for _, l := range s.listeners {
			l.sock.Close()
			if l.remove != nil {
				if err := l.remove(); err != nil {
					errs = append(errs, fmt.Errorf("syslog %s: %w", l.listen, err))
				}
			}
		}
		s.stopErr = errors.Join(errs...)
	})
}

// getBuf returns an empty buffer from the pool, waiting while every one
// is in use; it fails once s is stopped.
func (s *Syslog) getBuf() (*syslogBuf, error) {
	select {
	case b := <-s.pool:
		if b == nil {
			b = &syslogBuf{s: s, b: make([]byte, 0, s.bufSize)}
		}
		return b, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

func (s *Syslog) putBuf(b *syslogBuf) {
	b.b, b.n = b.b[:0], 0
	select {
	case s.pool <- b:
	default: // cannot happen: there are as many places as buffers
	}
}

// push appends bodies to what l has pending, each with a newline. It
// waits while every buffer is in use, and fails once s is stopped.
func (l *syslogListener) push(bodies ...[]byte) error {
	if len(bodies) == 0 {
		return nil
	}
	s := l.s
	signal := false
	l.mu.Lock()
	for i := 0; i < len(bodies); {
		b := bodies[i]
		if c := l.cur; c != nil && len(c.b)+len(b)+1 <= cap(c.b) {
			c.b = append(append(c.b, b...), '\n')
			c.n++
			signal = signal || l.n == 0
			l.n++
			s.pending.Add(1)
			i++
			continue
		}
		if c := l.cur; c != nil {
			l.ready = append(l.ready, c) // not empty: a body always fits an empty buffer
			l.cur = nil
		}
		l.mu.Unlock()
		nb, err := s.getBuf()
		l.mu.Lock()
		if err != nil {
			l.mu.Unlock()
			return err
		}
		if c := l.cur; c != nil { // another connection's goroutine put one
			if c.n > 0 {
				l.ready = append(l.ready, c)
			} else {
				s.putBuf(c)
			}
		}
		l.cur = nb
	}
	l.mu.Unlock()
	l.c.accepted.Add(uint64(len(bodies)))
	if signal {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// deliver hands pending lines over, a listener's buffer at a time, round
// robin, as soon as the consumer takes them.
func (s *Syslog) deliver() {
	defer close(s.done)
	defer close(s.batches)
	for {
		b, l := s.take()
		if l == nil {
			select {
			case <-s.wake:
				continue
			case <-s.ctx.Done():
				return
			}
		}
		select {
		case s.batches <- b:
		case <-s.ctx.Done():
			return
		}
	}
}

// take makes the next batch of pending lines, and returns its listener
// (nil if nothing is pending).
func (s *Syslog) take() (Batch, *syslogListener) {
	for k := range s.listeners {
		i := (s.next + k) % len(s.listeners)
		l := s.listeners[i]
		l.mu.Lock()
		var b *syslogBuf
		switch {
		case len(l.ready) > 0:
			b = l.ready[0]
			l.ready = append(l.ready[:0], l.ready[1:]...)
		case l.cur != nil && l.cur.n > 0:
			b, l.cur = l.cur, nil
		}
		if b != nil {
			l.n -= b.n
		}
		l.mu.Unlock()
		if b == nil {
			continue
		}
		s.pending.Add(-int64(b.n))
		s.next = i + 1
		return s.batch(l, b), l
	}
	return Batch{}, nil
}

// batch lends b to a new batch of l.
func (s *Syslog) batch(l *syslogListener, b *syslogBuf) Batch {
	s.seq++
	b.owner.Store(s.seq)
	return Batch{Source: l.source, Text: b.b[:len(b.b):len(b.b)], n: b.n, sbuf: b, sid: s.seq}
}

// Kinds of problems logged once per sender.
const (
	warnRefused   = "sender refused"
	warnConns     = "connection refused: too many connections"
	warnTLS       = "TLS handshake failed"
	warnOversized = "message over the size limit dropped"
	warnTruncated = "stream ended inside a message"
	warnMalformed = "message not parsed"
)

// sender is who sent a message, as the transport says.
type sender struct {
	addr netip.Addr // udp, tcp
	uid  uint32     // unixgram, if cred
	pid  int32
	cred bool // unixgram: the datagram came with credentials
}

func (x sender) String() string {
	switch {
	case x.addr.IsValid():
		return x.addr.String()
	case x.cred:
		return fmt.Sprintf("uid %d (pid %d)", x.uid, x.pid)
	}
	return "no credentials"
}

type warnKey struct {
	listener int
	kind     string
	addr     netip.Addr
	uid      uint32
	cred     bool
}

// warn logs a problem of a sender, once per listener, kind and sender
// (by address, or uid), for the first maxWarnedSenders of them: a flood
// from many addresses cannot flood the log.
func (l *syslogListener) warn(kind string, x sender, err error) {
	s := l.s
	k := warnKey{listener: l.idx, kind: kind, addr: x.addr, uid: x.uid, cred: x.cred}
	s.warnMu.Lock()
	_, seen := s.warned[k]
	full := len(s.warned) >= maxWarnedSenders
	first := !seen && full && !s.warnFull // the first sender not logged
	switch {
	case first:
		s.warnFull = true
	case !seen && !full:
		s.warned[k] = struct{}{}
	}
	s.warnMu.Unlock()
	switch {
	case first:
		s.log.Warn("syslog: further senders' problems are not logged", keyListen, l.listen)
	case !seen && !full:
		args := []any{keyListen, l.listen, keySender, x.String()}
		if err != nil {
			args = append(args, "err", err)
		}
		s.log.Warn("syslog: "+kind+"; not logged again for this sender", args...)
	}
}
