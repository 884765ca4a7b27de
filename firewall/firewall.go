// Package firewall owns webknock's chains in the kernel: it opens a port to
// one client with a rule the kernel itself stops matching at the grant's end,
// revokes, persists the grants and reconciles the chains with them at start.
//
// Rules live in our own chain (WEBKNOCK) in table filter, for IPv4 and IPv6,
// reached by one jump from a hook (INPUT). Nothing outside our chain is
// touched but that jump. Every change goes through one goroutine, the
// worker, which also checks every few seconds that others have not changed
// our chains, and repairs them if they have.
//
// Each iptables run has a deadline: one that hangs is killed with its
// process group and counted as a failure; failures are retried with
// backoff. Health tells what went wrong and what is pending.
package firewall

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
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
	keyRule     = "rule"
	keyFamily   = "family"
	keyChain    = "chain"
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
)

// Backends.
const (
	backendIPTables = "iptables"
	backendDryRun   = "dry-run"
)

var (
	// ErrExpired is returned by Grant for a grant whose Until is not after
	// now: an old log line read again after a restart.
	ErrExpired = errors.New("grant already expired")
	// ErrNoGrant is returned by Revoke for an address that holds no grant.
	ErrNoGrant = errors.New("no grant")
	// ErrTableFull is returned by Grant for a new grant while MaxGrants
	// grants are live: no live grant is ever evicted to make room.
	ErrTableFull = errors.New("grant table full")

	errClosed = errors.New("firewall closed")
)

// Port is a TCP or UDP port.
type Port struct {
	Proto  string // "tcp" or "udp"
	Number uint16
}

// String returns the port as "22/tcp".
func (p Port) String() string { return strconv.Itoa(int(p.Number)) + "/" + p.Proto }

// MarshalText writes the port as "22/tcp".
func (p Port) MarshalText() ([]byte, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	return []byte(p.String()), nil
}

// UnmarshalText reads a port written as "22/tcp".
func (p *Port) UnmarshalText(b []byte) error {
	num, proto, ok := strings.Cut(string(b), "/")
	n, err := strconv.ParseUint(num, 10, 16)
	if !ok || err != nil {
		return fmt.Errorf("bad port %q: want NUMBER/tcp or NUMBER/udp", b)
	}
	q := Port{Proto: proto, Number: uint16(n)}
	if err := q.check(); err != nil {
		return err
	}
	*p = q
	return nil
}

func (p Port) check() error {
	if (p.Proto != "tcp" && p.Proto != "udp") || p.Number == 0 {
		return fmt.Errorf("bad port %s: want 1-65535 and tcp or udp", p)
	}
	return nil
}

// Grant opens Ports to IP until Until, because IP knocked Sequence.
type Grant struct {
	IP       netip.Addr `json:"ip"`
	Sequence string     `json:"sequence"`
	Ports    []Port     `json:"ports"`
	Until    time.Time  `json:"until"`
}

// normalizeGrant unmaps the address, drops repeated ports and truncates
// Until to the second the rule can hold, in UTC.
func normalizeGrant(g Grant) (Grant, error) {
	ip := g.IP.Unmap()
	switch {
	case !ip.IsValid():
		return Grant{}, errors.New("grant without an address")
	case ip.Zone() != "" || ip.IsUnspecified() || ip.IsMulticast():
		return Grant{}, fmt.Errorf("grant to %s: not an address a client connects from", ip)
	case !seqRe.MatchString(g.Sequence):
		return Grant{}, fmt.Errorf("grant to %s: bad sequence name %q: want 1 to 32 characters of A-Z a-z 0-9 _ -", ip, g.Sequence)
	case len(g.Ports) == 0:
		return Grant{}, fmt.Errorf("grant to %s for %s: no ports", ip, g.Sequence)
	}
	var ports []Port
	for _, p := range g.Ports {
		if err := p.check(); err != nil {
			return Grant{}, fmt.Errorf("grant to %s for %s: %w", ip, g.Sequence, err)
		}
		if !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	until := g.Until.Truncate(time.Second).UTC()
	switch {
	case until.Unix() <= 0:
		return Grant{}, fmt.Errorf("grant to %s for %s: no end time", ip, g.Sequence)
	case until.After(maxUntil):
		return Grant{}, fmt.Errorf("grant to %s for %s: until %s is after %s, the last time the kernel's time match holds",
			ip, g.Sequence, until.Format(time.RFC3339), maxUntil.Format(time.RFC3339))
	}
	return Grant{IP: ip, Sequence: g.Sequence, Ports: ports, Until: until}, nil
}

// Clock tells the time and wakes the worker; tests pass a fake one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Options configure the firewall.
type Options struct {
	Backend     string // "iptables" (default) or "dry-run": in memory, each change logged
	Chain       string // our chain; default WEBKNOCK
	Hook        string // the chain that jumps to ours; default INPUT
	Protect     bool   // end our chain with drops of NEW connections to Ports
	AlwaysAllow []netip.Prefix
	Ports       []Port // every port of every sequence: what Protect guards
	StateDir    string // where grants.json is kept; empty: not kept, rebuilt from the rules at start
	Logger      *slog.Logger
	Clock       Clock         // nil: real time
	LockWait    time.Duration // how long iptables waits for the xtables lock; default 5s

	// CallTimeout is how long an iptables run may take before it is
	// killed and counted as a failure; default LockWait + 5s.
	CallTimeout time.Duration
	// CheckInterval is the period of the integrity check, which repairs
	// our chains when others change them; default 3s. A check that takes
	// more than a tenth of it puts the next one off.
	CheckInterval time.Duration
	// MaxGrants bounds the live grants; a new grant beyond it is refused
	// with ErrTableFull. Default 65536.
	MaxGrants int
}

// Defaults of Options.
const (
	defaultLockWait      = 5 * time.Second
	defaultCheckInterval = 3 * time.Second
	defaultMaxGrants     = 1 << 16
)

// nameRe is what iptables accepts as a chain name, less oddities.
var nameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,27}$`)

// normalize applies the defaults and checks o.
func (o Options) normalize() (Options, error) {
	if o.Backend == "" {
		o.Backend = backendIPTables
	}
	if o.Backend != backendIPTables && o.Backend != backendDryRun {
		return o, fmt.Errorf("unknown firewall backend %q: want %s or %s", o.Backend, backendIPTables, backendDryRun)
	}
	if o.Chain == "" {
		o.Chain = "WEBKNOCK"
	}
	if o.Hook == "" {
		o.Hook = "INPUT"
	}
	for _, c := range []string{o.Chain, o.Hook} {
		if !nameRe.MatchString(c) {
			return o, fmt.Errorf("bad chain name %q: want up to 28 characters of A-Z a-z 0-9 _ . -", c)
		}
	}
	switch o.Chain {
	case o.Hook, "INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING", "ACCEPT", "DROP", "REJECT", "RETURN", "LOG":
		return o, fmt.Errorf("chain %q cannot be webknock's own chain", o.Chain)
	}
	var ports []Port
	for _, p := range o.Ports {
		if err := p.check(); err != nil {
			return o, err
		}
		if !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	o.Ports = ports
	var allow []netip.Prefix
	for _, n := range o.AlwaysAllow {
		if !n.IsValid() {
			return o, fmt.Errorf("bad always_allow network %s", n)
		}
		if n.Addr().Is4In6() && n.Bits() >= 96 {
			n = netip.PrefixFrom(n.Addr().Unmap(), n.Bits()-96)
		}
		n = n.Masked()
		if !slices.Contains(allow, n) {
			allow = append(allow, n)
		}
	}
	o.AlwaysAllow = allow
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.LockWait <= 0 {
		o.LockWait = defaultLockWait
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = o.LockWait + 5*time.Second
	}
	if o.CheckInterval <= 0 {
		o.CheckInterval = defaultCheckInterval
	}
	if o.MaxGrants <= 0 {
		o.MaxGrants = defaultMaxGrants
	}
	return o, nil
}

// tables returns the backend's tables; a family left out is nil.
func (o *Options) tables() ([2]tables, error) {
	if o.Backend == backendDryRun {
		return [2]tables{newMemTables(ipv4, o.Logger, o.Hook), newMemTables(ipv6, o.Logger, o.Hook)}, nil
	}
	tabs, v6off, err := newIPTables(o.LockWait, o.CallTimeout)
	if v6off != nil {
		o.Logger.Warn("IPv6 firewall disabled: IPv6 clients cannot be granted", keyReason, v6off.Error())
	}
	return tabs, err
}

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
// what went wrong since Open.
type Health struct {
	// InSync: no rule awaits a retried delete, the last reconcile and
	// integrity check succeeded, the state file is written, iptables
	// answers (no call is stuck or suspended).
	InSync    bool
	Pending   int       // rules whose delete failed, retried in the background
	Failures  uint64    // iptables calls that failed, retries, timeouts and refusals included
	TimedOut  uint64    // calls killed after CallTimeout (also in Failures)
	LockBusy  uint64    // calls that found the xtables lock held (also in Failures)
	Stuck     int       // killed calls whose iptables has not exited yet
	Suspended bool      // iptables hung twice in a row: no call before a CallTimeout has passed
	Refused   uint64    // grants refused because the table was full
	Repairs   uint64    // times the integrity check repaired a family
	LastError string    // the last failed call or check; "" after a check that passed
	// Problems says in a few words each why the firewall is not in sync
	// (a family stuck, grants pending), for /healthz; empty when InSync.
	Problems []string
	Checked   time.Time // the end of the last integrity check that passed (or repaired)
}

// Firewall applies grants. Its methods are safe for concurrent use.
type Firewall struct {
	o     Options // as opened; the protect tail is in cur
	log   *slog.Logger
	clock Clock
	tabs  [2]tables // nil: family not available
	path  string    // state file; "" none
	rt    *retrier

	reqs chan request
	stop chan struct{}
	done chan struct{}
	ctx  context.Context // ends at Close, for the worker's own work
	quit context.CancelFunc
	once sync.Once

	mu     sync.Mutex // guards view and health
	view   []Grant
	health Health

	refused atomic.Uint64
	repairs atomic.Uint64

	// Owned by the worker goroutine (and by Open before it starts).
	cur      tail
	grants   map[grantKey]Grant
	doomed   []doomedRule
	dirty    bool      // the state file is behind
	unsynced bool      // the last reconcile failed
	checkErr error     // the last integrity check failed
	checked  time.Time // the last integrity check passed
	idle     func()    // for the tests: called after each event the worker handled
}

// tail is what the protect rules at the end of our chain are made of.
type tail struct {
	protect bool
	allow   []netip.Prefix
	ports   []Port
}

type grantKey struct {
	ip  netip.Addr
	seq string
}

// doomedRule is a rule whose delete failed; it is retried at at.
type doomedRule struct {
	fam   family
	r     rule
	fails int
	at    time.Time
}

// Open ensures our chains, their protect tails and the jumps to them, loads
// the grants, reconciles the chains with them and starts the worker.
func Open(ctx context.Context, o Options) (*Firewall, error) {
	o, err := o.normalize()
	if err != nil {
		return nil, err
	}
	tabs, err := o.tables()
	if err != nil {
		return nil, err
	}
	f := newFirewall(o, tabs)
	if err := f.start(ctx); err != nil {
		f.quit()
		return nil, err
	}
	return f, nil
}

// newFirewall builds a firewall on tabs for normalized options; start
// brings the kernel in line and starts the worker.
func newFirewall(o Options, tabs [2]tables) *Firewall {
	ctx, quit := context.WithCancel(context.Background())
	f := &Firewall{
		o: o, log: o.Logger, clock: o.Clock, tabs: tabs, path: o.statePath(),
		reqs: make(chan request), stop: make(chan struct{}), done: make(chan struct{}),
		ctx: ctx, quit: quit,
		cur:    tail{protect: o.Protect, allow: o.AlwaysAllow, ports: o.Ports},
		grants: map[grantKey]Grant{},
	}
	f.rt = &retrier{clock: o.Clock, log: o.Logger, delays: defaultDelays, timeout: o.CallTimeout, stop: f.stop}
	return f
}

func (f *Firewall) start(ctx context.Context) error {
	if f.path != "" {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o700); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
		for _, tmp := range removeTemps(f.path) {
			f.log.Warn("temporary state file of an interrupted write removed", keyPath, tmp)
		}
	}
	for _, fam := range families {
		if f.tabs[fam] != nil {
			if err := f.ensureChain(ctx, fam); err != nil {
				return err
			}
		}
	}
	gs, err := f.loadGrants(ctx)
	if err != nil {
		return err
	}
	now := f.clock.Now()
	for _, g := range gs {
		k := grantKey{g.IP, g.Sequence}
		switch old, had := f.grants[k]; {
		case !g.Until.After(now):
			f.log.Info("grant expired while webknock was stopped", keyIP, g.IP, keySequence, g.Sequence, keyUntil, g.Until)
		case f.tabs[familyOf(g.IP)] == nil:
			f.log.Warn("grant dropped: its family has no firewall", keyIP, g.IP, keySequence, g.Sequence)
		case !had || g.Until.After(old.Until):
			f.grants[k] = g
		}
	}
	if n := len(f.grants); n > f.o.MaxGrants {
		// Live in the kernel already: kept, and new ones refused until
		// enough have ended.
		f.log.Warn("more live grants than max grants; new grants are refused until fewer", keyCount, n)
	}
	f.dirty = true
	if err := f.reconcile(ctx); err != nil {
		return err
	}
	for _, fam := range families {
		if f.tabs[fam] != nil {
			if err := f.ensureJump(ctx, fam); err != nil {
				return err
			}
		}
	}
	f.checked = f.clock.Now()
	f.commit()
	f.log.Info("firewall ready", keyChain, f.o.Chain, keyHook, f.o.Hook, keyCount, len(f.grants),
		keyBackend, f.o.Backend, keyProtect, f.cur.protect)
	go f.run(f.clock.After(f.o.CheckInterval))
	return nil
}

// loadGrants reads the state file, or rebuilds the grants from the comments
// of our rules when there is none or it cannot be read.
func (f *Firewall) loadGrants(ctx context.Context) ([]Grant, error) {
	if f.path != "" {
		gs, err := loadState(f.path)
		switch {
		case err == nil:
			return gs, nil
		case errors.Is(err, fs.ErrNotExist):
			f.log.Info("no state file; rebuilding the grants from the rules' comments", keyPath, f.path)
		default:
			f.log.Warn("state file unreadable; rebuilding the grants from the rules' comments", keyPath, f.path, keyErr, err)
		}
	}
	var gs []Grant
	for _, fam := range families {
		if f.tabs[fam] == nil {
			continue
		}
		have, err := f.list(ctx, fam)
		if err != nil {
			return nil, err
		}
		gs = append(gs, grantsOf(have)...)
	}
	f.log.Info("grants rebuilt from the rules' comments", keyCount, len(gs))
	return gs, nil
}

// grantsOf groups the grant rules of a chain into grants.
func grantsOf(have []listed) []Grant {
	type k struct {
		ip    netip.Addr
		seq   string
		until int64
	}
	idx := map[k]int{}
	var gs []Grant
	for _, l := range have {
		if !l.ours || l.r.kind != kindGrant {
			continue
		}
		key := k{l.r.src.Addr(), l.r.seq, l.r.until}
		i, ok := idx[key]
		if !ok {
			i = len(gs)
			idx[key] = i
			gs = append(gs, Grant{IP: key.ip, Sequence: key.seq, Until: time.Unix(key.until, 0).UTC()})
		}
		if !slices.Contains(gs[i].Ports, l.r.port) {
			gs[i].Ports = append(gs[i].Ports, l.r.port)
		}
	}
	return gs
}

// Grant opens g.Ports to g.IP until g.Until. When it returns nil the rules
// are in the kernel. A grant for an (IP, Sequence) that holds one already
// extends it to the later Until; an earlier Until changes nothing. A grant
// whose Until is not after now is refused with ErrExpired.
func (f *Firewall) Grant(ctx context.Context, g Grant) error {
	g, err := normalizeGrant(g)
	if err != nil {
		return err
	}
	if !g.Until.After(f.clock.Now()) {
		return fmt.Errorf("grant to %s for %s until %s: %w", g.IP, g.Sequence, g.Until.Format(time.RFC3339), ErrExpired)
	}
	return f.do(ctx, func(ctx context.Context) error { return f.grant(ctx, g) })
}

// Revoke removes every grant of ip now. It returns ErrNoGrant when ip holds
// none. A rule that cannot be deleted is retried in the background.
func (f *Firewall) Revoke(ctx context.Context, ip netip.Addr) error {
	ip = ip.Unmap()
	if !ip.IsValid() {
		return errors.New("revoke: no address")
	}
	return f.do(ctx, func(ctx context.Context) error { return f.revoke(ctx, ip) })
}

// Grants returns the live grants, sorted by Until, then IP and Sequence.
// The slice is the caller's.
func (f *Firewall) Grants() []Grant {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Grant, len(f.view))
	for i, g := range f.view {
		out[i] = g
		out[i].Ports = slices.Clone(g.Ports)
	}
	return out
}

// Health tells whether the kernel is in line with the grants.
func (f *Firewall) Health() Health {
	f.mu.Lock()
	h := f.health
	f.mu.Unlock()
	rt := f.rt
	h.Failures, h.TimedOut, h.LockBusy = rt.failures.Load(), rt.timedOut.Load(), rt.lockBusy.Load()
	h.Stuck = int(rt.stuck.Load())
	h.Suspended = rt.suspendedNow()
	h.Refused, h.Repairs = f.refused.Load(), f.repairs.Load()
	rt.mu.Lock()
	h.LastError = cmp.Or(h.LastError, rt.lastErr)
	rt.mu.Unlock()
	h.InSync = h.InSync && h.Stuck == 0 && !h.Suspended
	return h
}

// Reconfigure applies new protect, always_allow and ports settings: the new
// protect rules are appended before the old ones are deleted, so that no
// moment passes without the drops. Backend, Chain, Hook and StateDir change
// only with a restart; other options than those four and the three above are
// ignored.
func (f *Firewall) Reconfigure(ctx context.Context, o Options) error {
	n, err := o.normalize()
	if err != nil {
		return fmt.Errorf("reconfigure: %w", err)
	}
	if n.Backend != f.o.Backend || n.Chain != f.o.Chain || n.Hook != f.o.Hook || n.StateDir != f.o.StateDir {
		return errors.New("reconfigure: the firewall backend, chain, hook and state dir change only with a restart")
	}
	next := tail{protect: n.Protect, allow: n.AlwaysAllow, ports: n.Ports}
	return f.do(ctx, func(ctx context.Context) error {
		prev := f.cur
		f.cur = next
		err := f.reconcile(ctx)
		if err == nil {
			f.log.Info("firewall reconfigured", keyProtect, next.protect, keyPorts, next.ports)
			return nil
		}
		f.cur = prev
		if rerr := f.reconcile(ctx); rerr != nil {
			f.log.Error("cannot restore the previous protect rules", keyErr, rerr)
		}
		return fmt.Errorf("reconfigure: %w", err)
	})
}

// Close stops the worker. The chains and their rules stay: the ports stay
// protected, and each grant still ends in the kernel at its Until.
func (f *Firewall) Close() error {
	var err error
	f.once.Do(func() {
		close(f.stop)
		f.quit()
		<-f.done
		if f.dirty && f.path != "" {
			err = saveState(f.path, f.sorted())
		}
	})
	return err
}

// Flush removes the jumps to our chains and the chains, IPv4 and IPv6, and
// the state file's grants.
func Flush(ctx context.Context, o Options) error {
	o, err := o.normalize()
	if err != nil {
		return err
	}
	tabs, err := o.tables()
	if err != nil {
		return err
	}
	rt := &retrier{clock: o.Clock, log: o.Logger, delays: defaultDelays, timeout: o.CallTimeout}
	var errs []error
	for _, fam := range families {
		if t := tabs[fam]; t != nil {
			errs = append(errs, flushFamily(ctx, rt, t, fam, &o))
		}
	}
	if p := o.statePath(); p != "" {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove state file: %w", err))
		}
		removeTemps(p)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	o.Logger.Info("firewall flushed", keyChain, o.Chain, keyHook, o.Hook)
	return nil
}

func flushFamily(ctx context.Context, rt *retrier, t tables, fam family, o *Options) error {
	var lines []string
	err := rt.do(ctx, "list", func(ctx context.Context, _ int) (err error) { lines, err = t.List(ctx, table, o.Hook); return err })
	switch {
	case errors.Is(err, errNoChain): // no hook, no jump
	case err != nil:
		return fmt.Errorf("%s: list %s/%s: %w", fam.command(), table, o.Hook, err)
	}
	jump := "-A " + o.Hook + " -j " + o.Chain
	for _, l := range lines {
		if l != jump {
			continue
		}
		err := rt.do(ctx, "delete", func(ctx context.Context, _ int) error { return t.DeleteIfExists(ctx, table, o.Hook, "-j", o.Chain) })
		if err != nil {
			return fmt.Errorf("%s: delete jump from %s/%s: %w", fam.command(), table, o.Hook, err)
		}
	}
	if err := rt.do(ctx, "delete chain", func(ctx context.Context, _ int) error { return t.ClearAndDeleteChain(ctx, table, o.Chain) }); err != nil {
		return fmt.Errorf("%s: delete chain %s/%s: %w", fam.command(), table, o.Chain, err)
	}
	return nil
}
