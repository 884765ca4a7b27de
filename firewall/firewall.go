// Package firewall owns webknock's rules in the kernel: it opens a port to
// one client with a rule or set element the kernel itself stops matching at
// the grant's end, revokes, persists the grants and reconciles the kernel
// with them at start.
//
// A ruleset holds one family's rules (ruleset.go): with iptables, our own
// chain (WEBKNOCK) in table filter, reached by one jump from a hook (INPUT);
// with nftables, our own table (inet webknock) with a base chain per
// family and sets whose elements are the grants. Our chain starts with an
// ownership marker; a chain or table of that name that webknock did not
// write is refused, never adopted. Each family has its own worker
// goroutine, through which every change of that family goes, so that a
// hung iptables never holds up ip6tables or the other way round; the
// worker also checks that others have not changed its rules, and repairs
// them if they have: every few seconds with iptables, at once with
// nftables (its netlink monitor tells), and every 30 s anyway.
//
// Each call has a deadline: an iptables run that hangs is killed with its
// process group, a netlink request abandoned with its socket, and counted
// as a failure; failures are retried with backoff, and a grant that cannot
// be applied waits and is retried until its window ends. Health tells what
// went wrong and what is pending.
//
// Every grant is held to the configured sequences (Options.Sequences): its
// sequence must exist, its ports be the sequence's, and it ends at most one
// window after the wall clock's now, whatever the log's clock says. The
// live grants are bounded in all (MaxGrants) and by source: per sequence,
// per IPv4 /24 and per IPv6 /64 (caps.go).
//
// A grant opens to one address, or to its network (Grant.Bits: carrier NAT,
// IPv6 privacy addresses). Revoke ends the grants that overlap an address
// or network; the established sessions they let in go on unless
// KillSessions ends them, by deleting their conntrack entries: the protect
// tail then resets their next packets.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// Attribute keys of the log.
const (
	keyIP       = "ip"
	keySequence = "sequence"
	keyPorts    = "ports"
	keyUntil    = "until"
	keyKnocked  = "knocked"
	keyRule     = "rule"
	keyFamily   = "family"
	keyChain    = "chain"
	keyTable    = "table"
	keyHook     = "hook"
	keyOp       = "op"
	keyAttempt  = "attempt"
	keyErr      = "err"
	keyPath     = "path"
	keyCount    = "count"
	keyReason   = "reason"
	keyCommand  = "command"
	keyBackend  = "backend"
	keyProtect  = "protect"
	keyFixed    = "fixed"
	keyCut      = "cut"
	keyAt       = "at"
	keyBy       = "by"
	keyCap      = "cap"
	keyCapKey   = "key"
	keyTook     = "took"
)

// Backends.
const (
	backendIPTables = "iptables"
	backendNFTables = "nftables"
	backendDryRun   = "dry-run"
)

var (
	// ErrExpired is returned by Grant for a grant whose Until is not after
	// now: an old log line read again after a restart.
	ErrExpired = errors.New("grant already expired")
	// ErrNoGrant is returned by Revoke for an address or network that
	// holds no grant.
	ErrNoGrant = errors.New("no grant")
	// ErrTableFull is returned by Grant for a new grant while MaxGrants
	// grants are live: no live grant is ever evicted to make room.
	ErrTableFull = errors.New("grant table full")
	// ErrRevoked is returned by Grant for a knock logged before the last
	// revoke of an address or network its source overlaps: a log line read
	// again must not undo a revoke.
	ErrRevoked = errors.New("address revoked after this knock")
	// ErrPending is returned by Grant when its rules could not be
	// inserted: the grant waits and is retried, with backoff, until it is
	// applied or its window ends.
	ErrPending = errors.New("grant not applied yet; retrying")
	// ErrNotAllowed is returned by Grant for a sequence that is not
	// configured, or ports that are not its sequence's.
	ErrNotAllowed = errors.New("not allowed by the configured sequences")

	errClosed = errors.New("firewall closed")
)

// Clock tells the time and wakes the workers; tests pass a fake one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Options configure the firewall.
type Options struct {
	Backend string // "iptables" (default), "nftables", or "dry-run": in memory, each change logged
	Chain   string // iptables: our chain; default WEBKNOCK
	Table   string // nftables: our table, of family inet; default webknock
	// Hook is, for iptables, the chain that jumps to ours (default
	// INPUT); for nftables, the hook of our base chains: input (default)
	// or forward.
	Hook        string
	Protect     bool // end our chain with drops of NEW connections to Ports (and resets of lost TCP sessions)
	AlwaysAllow []netip.Prefix
	Ports       []Port // every port of every sequence: what Protect guards
	// Sequences are what grants may open, and for how long. nil: no
	// policy, any grant is taken as it comes (Flush, tests).
	Sequences []Sequence
	// IPv6Off leaves IPv6 alone (firewall.ipv6: false): no chain, no
	// grants to IPv6 clients. Without it, on a host with IPv6 and with
	// Protect, Open fails unless ip6tables works.
	IPv6Off  bool
	StateDir string // where grants.json is kept; empty: not kept, rebuilt from the rules at start
	Logger   *slog.Logger
	Clock    Clock         // nil: real time
	LockWait time.Duration // how long iptables waits for the xtables lock; default 5s

	// CallTimeout is how long a call (an iptables run, a netlink
	// request) may take before it is abandoned (an iptables run killed)
	// and counted as a failure; default LockWait + 5s.
	CallTimeout time.Duration
	// CheckInterval is the period of the integrity check, which repairs
	// our rules when others change them; default a minute with iptables,
	// 30s with nftables: the nftables monitor (of iptables-nft's table
	// filter too) has the check run at once on a change. A check that
	// takes more than a tenth of it puts the next one off.
	CheckInterval time.Duration
	// MaxGrants bounds the live and pending grants; a new grant beyond it
	// is refused with ErrTableFull. Default 65536.
	MaxGrants int
	// The caps on live and pending grants by source: of one sequence
	// (default 1024), of sources in one IPv4 /24 (default 64), in one
	// IPv6 /64 (default 64). A new grant beyond one is refused with an
	// error wrapping ErrCapped; one that extends a grant is never refused.
	MaxGrantsPerSequence int
	MaxGrantsPerIPv4Net  int
	MaxGrantsPerIPv6Net  int

	// OnEnd, when set, is told once of every held grant that ends, and
	// why: ReasonExpired, the reason given to Revoke, or ReasonPolicy when
	// a reload (or, at Open, the configuration) no longer allows it. A
	// grant that ended while webknock was stopped is told of during Open.
	// It is called from a worker's goroutine after the grant's rules are
	// deleted, or their delete is scheduled for retry: it must not block
	// (enqueue and return), nor call the Firewall. It is fixed at Open;
	// Reconfigure ignores it.
	OnEnd func(g Grant, reason string)
}

// Why a grant ended, as OnEnd is told and Revoke is asked to log.
const (
	ReasonExpired = "expired" // its Until has passed
	ReasonRevoked = "revoked" // an administrator revoked it
	ReasonClosed  = "closed"  // its client requested its sequence's close page
	ReasonPolicy  = "policy"  // the configured sequences no longer allow it
	ReasonUsed    = "used"    // a connection used it (close_on_connect)
)

// statePath is the state file of o, or "" when none is kept.
func (o *Options) statePath() string {
	switch {
	case o.StateDir == "":
		return ""
	case o.Backend == backendDryRun:
		return filepath.Join(o.StateDir, dryRunStateFile)
	}
	return filepath.Join(o.StateDir, stateFile)
}

// Health tells whether the kernel holds the rules the grants describe, and
// what went wrong since Open. Counts are of both families.
type Health struct {
	// InSync: no rule awaits a retried delete, no grant awaits its
	// insert, the last reconcile and integrity check of each family
	// succeeded, the state file is written, iptables and ip6tables answer
	// (no call is stuck or suspended).
	InSync        bool
	Pending       int    // rules whose delete failed, retried in the background
	PendingGrants int    // grants whose insert failed, retried until their window ends
	Failures      uint64 // iptables calls that failed, retries, timeouts and refusals included
	TimedOut      uint64 // calls killed after CallTimeout (also in Failures)
	LockBusy      uint64 // calls that found the xtables lock held (also in Failures)
	Stuck         int    // killed calls whose iptables has not exited yet
	Suspended     bool   // a family's iptables hung twice in a row: no call before a CallTimeout has passed
	Refused       uint64 // grants refused because the table was full
	Repairs       uint64 // times the integrity check repaired a family
	LastError     string // the last failed call or check; "" after a check that passed
	// Problems says in a few words each why the firewall is not in sync
	// (a family stuck, grants pending), for /healthz; empty when InSync.
	Problems []string
	Checked  time.Time // the end of the oldest of the families' last integrity checks that passed
	// Capped counts the grants refused by each cap (ErrCapped), indexed
	// by Cap.
	Capped [NumCaps]uint64
}

// Firewall applies grants. Its methods are safe for concurrent use.
type Firewall struct {
	o     Options // as opened; the protect tail and the policy are in the workers
	log   *slog.Logger
	clock Clock
	fams  [2]*worker // nil: family not managed
	st    *store
	// conntrack opens the kernel's connection tracking for KillSessions;
	// hostAddrs lists this host's addresses.
	conntrack func() (conntrackConn, error)
	hostAddrs func() []netip.Addr

	stop chan struct{}
	ctx  context.Context // ends at Close, for the workers' own work
	quit context.CancelFunc
	once sync.Once

	count       atomic.Int64 // grants held or pending, both families
	maxGrants   atomic.Int64 // Options.MaxGrants, as reconfigured
	caps        *caps        // the grants by source, under their caps
	refused     atomic.Uint64
	repairs     atomic.Uint64
	warnedAhead atomic.Bool // a grant was cut because the log's clock is ahead

	// For the tests: called when a worker begins to handle an event, and
	// after it handled it.
	begin, idle func(family)
}

// tail is what the protect rules at the end of our chain are made of.
type tail struct {
	protect bool
	allow   []netip.Prefix
	ports   []Port
}

// grantKey is what a grant is held by: its source and its sequence.
type grantKey struct {
	src netip.Prefix
	seq string
}

func keyOf(g Grant) grantKey { return grantKey{g.Source(), g.Sequence} }

// Open probes everything it needs (as Probe does) before it changes
// anything; then it ensures our chains, their protect tails and the jumps
// to them, loads the grants, reconciles the chains with them and starts a
// worker per family.
func Open(ctx context.Context, o Options) (*Firewall, error) {
	o, err := o.normalize()
	if err != nil {
		return nil, err
	}
	if err := probeState(&o, false); err != nil {
		return nil, err
	}
	rss, err := o.rulesets(ctx, true)
	if err != nil {
		return nil, err
	}
	f := newFirewall(o, rss)
	if err := f.start(ctx); err != nil {
		f.quit()
		for _, w := range f.workers() {
			w.rs.close()
		}
		return nil, err
	}
	return f, nil
}

// newFirewall builds a firewall on the rulesets rss for normalized
// options; start brings the kernel in line and starts the workers.
func newFirewall(o Options, rss [2]ruleset) *Firewall {
	ctx, quit := context.WithCancel(context.Background())
	f := &Firewall{
		o: o, log: o.Logger, clock: o.Clock,
		st:        &store{path: o.statePath(), log: o.Logger, gap: stateGap},
		conntrack: dialConntrack, hostAddrs: hostAddrs,
		stop: make(chan struct{}), ctx: ctx, quit: quit,
		caps: newCaps(o),
	}
	f.maxGrants.Store(int64(o.MaxGrants))
	cur := tail{protect: o.Protect, allow: o.AlwaysAllow, ports: o.Ports}
	pol := newPolicy(o.Sequences)
	for _, fam := range families {
		rs := rss[fam]
		if rs == nil {
			continue
		}
		rt := rs.retrier()
		rt.stop = f.stop
		f.fams[fam] = &worker{
			f: f, fam: fam, rs: rs, rt: rt, log: o.Logger,
			reqs: make(chan request, reqQueue), done: make(chan struct{}),
			cur: cur, pol: pol,
			grants: map[grantKey]Grant{}, touched: map[grantKey]struct{}{}, doors: map[grantKey]struct{}{}, pending: map[grantKey]*pendingGrant{}, revoked: map[netip.Prefix]time.Time{},
		}
	}
	return f
}

// workers returns the workers of the managed families.
func (f *Firewall) workers() []*worker {
	var ws []*worker
	for _, w := range f.fams {
		if w != nil {
			ws = append(ws, w)
		}
	}
	return ws
}

// worker returns the worker of ip's family, or an error naming ip.
func (f *Firewall) worker(ip netip.Addr) (*worker, error) {
	fam := familyOf(ip)
	if w := f.fams[fam]; w != nil {
		return w, nil
	}
	return nil, fmt.Errorf("%s: no %s firewall on this host", ip, fam)
}

// Grant opens g.Ports to g.Source() until g.Until, and returns the grant
// as applied: IP masked to Bits, Until at most the wall clock's now plus
// the sequence's window, or the later Until of a grant of (source,
// Sequence) that it extends. When the error is nil the rules are in the
// kernel. An earlier Until than the one held changes nothing.
//
// It refuses Bits outside /16–/32 (IPv4) or /32–/128 (IPv6), a grant whose
// Until is not after now (ErrExpired), a knock logged before the last
// revoke of a source it overlaps (ErrRevoked), a sequence or
// ports the configuration does not have (ErrNotAllowed), a new grant while
// MaxGrants are held (ErrTableFull), a new grant beyond a cap on the grants
// of its sequence or network (ErrCapped). When iptables fails, the grant waits
// and is retried until it is applied or its window ends; the error then
// wraps ErrPending, and the returned grant is the one that waits.
func (f *Firewall) Grant(ctx context.Context, g Grant) (Grant, error) {
	g, err := normalizeGrant(g)
	if err != nil {
		return Grant{}, err
	}
	if !g.Until.After(f.clock.Now()) {
		return Grant{}, fmt.Errorf("grant to %s for %s until %s: %w", sourceOf(g), g.Sequence, g.Until.Format(time.RFC3339), ErrExpired)
	}
	w, err := f.worker(g.IP)
	if err != nil {
		return Grant{}, fmt.Errorf("grant to %w", err)
	}
	var out Grant
	err = w.do(ctx, func(ctx context.Context) error {
		var err error
		out, err = w.grant(ctx, g)
		return err
	})
	return out, err
}

// Revoke ends now every grant, held or pending, whose source overlaps p:
// an address (passed as its single-address prefix) ends its own grants and
// those of networks that hold it; a network, the grants of every address
// and network in it. It logs reason (ReasonRevoked, ReasonClosed; ""
// means ReasonRevoked), which OnEnd is told too, and remembers the time
// for the sources it ended and for p: a knock logged before it never
// grants them again. It returns the grants it ended, sorted as Grants
// sorts, or ErrNoGrant when there were none. A rule that cannot be
// deleted is retried in the background: its grant is ended all the same,
// and returned with the error.
func (f *Firewall) Revoke(ctx context.Context, p netip.Prefix, reason string) ([]Grant, error) {
	return f.revoke(ctx, p, "", reason)
}

// RevokeSequence is Revoke for the grants of one sequence: what a client's
// request of its sequence's close page ends (ReasonClosed).
func (f *Firewall) RevokeSequence(ctx context.Context, p netip.Prefix, sequence, reason string) ([]Grant, error) {
	if sequence == "" {
		return nil, errors.New("revoke: no sequence")
	}
	return f.revoke(ctx, p, sequence, reason)
}

// revoke is Revoke of the grants of sequence, or of all when "".
func (f *Firewall) revoke(ctx context.Context, p netip.Prefix, sequence, reason string) ([]Grant, error) {
	if !p.IsValid() || p.Addr().Zone() != "" {
		return nil, errors.New("revoke: no address or network")
	}
	p = unmapPrefix(p)
	if reason == "" {
		reason = ReasonRevoked
	}
	w := f.fams[familyOf(p.Addr())]
	if w == nil {
		return nil, fmt.Errorf("revoke %s: %w", FormatSource(p), ErrNoGrant)
	}
	var out []Grant
	err := w.do(ctx, func(ctx context.Context) error {
		var err error
		out, err = w.revoke(ctx, p, sequence, reason)
		return err
	})
	return out, err
}

// Grants returns the live grants, sorted by Until, then source and
// Sequence. The slice is the caller's.
func (f *Firewall) Grants() []Grant { return f.st.grants() }

// Health tells whether the kernel is in line with the grants.
func (f *Firewall) Health() Health {
	f.st.mu.Lock()
	views, dirty, serr := f.st.fams, f.st.dirty, f.st.err
	f.st.mu.Unlock()
	h := Health{Refused: f.refused.Load(), Capped: f.caps.counts(), Repairs: f.repairs.Load()}
	for _, w := range f.workers() {
		v, rt := views[w.fam].health, w.rt
		h.Failures += rt.failures.Load()
		h.TimedOut += rt.timedOut.Load()
		h.LockBusy += rt.lockBusy.Load()
		stuck := int(rt.stuck.Load())
		suspended := rt.suspendedNow()
		h.Stuck += stuck
		h.Suspended = h.Suspended || suspended
		h.Pending += v.doomed
		h.PendingGrants += v.pending
		if h.Checked.IsZero() || v.checked.Before(h.Checked) {
			h.Checked = v.checked
		}
		rt.mu.Lock()
		last := rt.lastErr
		rt.mu.Unlock()
		if v.checkErr != nil {
			last = v.checkErr.Error()
		}
		if h.LastError == "" {
			h.LastError = last
		}
		say := func(format string, args ...any) {
			h.Problems = append(h.Problems, w.fam.String()+": "+fmt.Sprintf(format, args...))
		}
		rt.mu.Lock()
		hangs := rt.hangs
		rt.mu.Unlock()
		switch d := rt.waiting(); {
		case suspended:
			say("%s calls time out; suspended", w.rs.name())
		case d >= slowCall:
			say("%s has not answered for %s", w.rs.name(), d.Round(time.Second))
		case hangs > 0:
			say("%s did not answer in time; the call was killed", w.rs.name())
		}
		if stuck > 0 {
			say("%d killed %s calls have not exited", stuck, w.rs.name())
		}
		if v.pending > 0 {
			say("%d %s waiting to be applied", v.pending, plural(v.pending, "grant", "grants"))
		}
		if v.doomed > 0 {
			say("%d %s waiting to be deleted", v.doomed, plural(v.doomed, "rule", "rules"))
		}
		if v.checkErr != nil {
			say("integrity check failed")
		} else if v.unsynced {
			say("chain not reconciled with the grants")
		}
	}
	// A write put off by the gap is not a problem; one that failed is.
	if dirty && serr != nil {
		h.Problems = append(h.Problems, "state file not written: "+serr.Error())
	}
	h.InSync = len(h.Problems) == 0
	return h
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// Reconfigure applies new protect, always_allow, ports and sequences
// settings. The new protect rules are appended before the old ones are
// deleted, so that no moment passes without the drops; only when both
// families took them are the sequences applied to the grants: those of a
// sequence that is gone are revoked, ports no longer a sequence's are
// closed, and a grant that ends later than now plus a shortened window is
// cut to it; then the new MaxGrants and caps apply to new grants. Backend,
// Chain, Table, Hook, IPv6Off and StateDir change only with a restart; the
// other options are ignored.
func (f *Firewall) Reconfigure(ctx context.Context, o Options) error {
	n, err := o.normalize()
	if err != nil {
		return fmt.Errorf("reconfigure: %w", err)
	}
	if n.Backend != f.o.Backend || n.Chain != f.o.Chain || n.Table != f.o.Table || n.Hook != f.o.Hook || n.StateDir != f.o.StateDir || n.IPv6Off != f.o.IPv6Off {
		return errors.New("reconfigure: the firewall backend, chain, table, hook, ipv6 and state dir change only with a restart")
	}
	next := tail{protect: n.Protect, allow: n.AlwaysAllow, ports: n.Ports}
	ws := f.workers()
	prev := make([]tail, len(ws))
	errs := f.onEach(ctx, ws, func(i int, w *worker, ctx context.Context) error {
		prev[i] = w.cur
		return w.setTail(ctx, next)
	})
	if err := errors.Join(errs...); err != nil {
		// One family took the new rules and the other did not: put the
		// first one back, so that the running configuration stays whole.
		f.onEach(ctx, ws, func(i int, w *worker, ctx context.Context) error {
			if errs[i] == nil {
				return w.setTail(ctx, prev[i])
			}
			return nil
		})
		return fmt.Errorf("reconfigure: %w", err)
	}
	pol := newPolicy(n.Sequences)
	f.onEach(ctx, ws, func(_ int, w *worker, ctx context.Context) error {
		w.applyPolicy(ctx, pol)
		return nil
	})
	f.maxGrants.Store(int64(n.MaxGrants))
	f.caps.setLimits(n)
	if n.CheckInterval != f.o.CheckInterval {
		f.log.Warn("firewall.check_interval changes only with a restart", "running", f.o.CheckInterval, "configured", n.CheckInterval)
	}
	f.log.Info("firewall reconfigured", keyProtect, next.protect, keyPorts, next.ports)
	return nil
}

// onEach runs fn on the workers ws, each on its own, at the same time, and
// returns their errors in the order of ws.
func (f *Firewall) onEach(ctx context.Context, ws []*worker, fn func(i int, w *worker, ctx context.Context) error) []error {
	errs := make([]error, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Go(func() {
			errs[i] = w.do(ctx, func(ctx context.Context) error { return fn(i, w, ctx) })
		})
	}
	wg.Wait()
	return errs
}

// Close stops the workers. The chains and their rules stay: the ports stay
// protected, and each grant still ends in the kernel at its Until.
func (f *Firewall) Close() error {
	var err error
	f.once.Do(func() {
		close(f.stop)
		f.quit()
		for _, w := range f.workers() {
			<-w.done
			w.rs.close()
		}
		err = f.st.flush()
	})
	return err
}

// Flush removes the jumps to our chains and the chains, IPv4 and IPv6, and
// the state file's grants. A chain of that name that is not webknock's is
// refused, and then nothing is touched.
func Flush(ctx context.Context, o Options) error {
	o, err := o.normalize()
	if err != nil {
		return err
	}
	rss, err := o.rulesets(ctx, false)
	if err != nil {
		return err
	}
	defer func() {
		for _, rs := range rss {
			if rs != nil {
				rs.close()
			}
		}
	}()
	return flushRulesets(ctx, &o, rss)
}

// flushRulesets is Flush on rss.
func flushRulesets(ctx context.Context, o *Options, rss [2]ruleset) error {
	var errs []error
	for _, rs := range rss {
		if rs != nil {
			errs = append(errs, rs.owned(ctx))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, rs := range rss {
		if rs != nil {
			errs = append(errs, rs.flush(ctx))
		}
	}
	if p := o.statePath(); p != "" {
		if err := removeState(p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	k, v := o.where()
	o.Logger.Info("firewall flushed", k, v, keyHook, o.Hook)
	return nil
}

// sortedGrants returns the values of m sorted as Grants sorts.
func sortedGrants(m map[grantKey]Grant) []Grant {
	gs := make([]Grant, 0, len(m))
	for _, g := range m {
		gs = append(gs, g)
	}
	sortGrants(gs)
	return gs
}
