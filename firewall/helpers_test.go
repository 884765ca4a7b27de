package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// t0 is the fake clock's start; grants in the tests end after it.
var t0 = time.Date(2026, 11, 22, 19, 1, 34, 0, time.UTC)

// fakeClock moves only when Advance or Jump is called. Like the real
// clock it has two readings: the wall clock (Now) and a monotonic one that
// After runs on; Advance moves both, Jump only the wall clock.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time     // wall clock
	mono    time.Duration // monotonic clock
	waiters []fakeWaiter
	added   chan time.Duration // the duration of each After, while there is room
}

type fakeWaiter struct {
	at time.Duration // on the monotonic clock
	ch chan time.Time
}

var _ Clock = (*fakeClock)(nil)

func newFakeClock(now time.Time) *fakeClock {
	return &fakeClock{now: now, added: make(chan time.Duration, 256)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{at: c.mono + d, ch: ch})
	select {
	case c.added <- d:
	default:
	}
	return ch
}

// Advance moves the clock and fires the waiters that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.mono += d
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at > c.mono {
			kept = append(kept, w)
			continue
		}
		w.ch <- c.now
	}
	c.waiters = kept
}

// Jump sets the wall clock forward or back, as an administrator or NTP
// would; no waiter fires.
func (c *fakeClock) Jump(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// syncBuffer is a log sink the worker and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is a firewall's world in a test: fake tables, a fake clock, a state
// directory and a log.
type env struct {
	t   *testing.T
	v4  *memTables
	v6  *memTables
	clk *fakeClock
	dir string
	log *syncBuffer
	// delays between attempts of a failing call; none unless a test
	// advances the clock through them.
	delays []time.Duration
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{
		t: t, v4: newMemTables(ipv4, nil), v6: newMemTables(ipv6, nil),
		clk: newFakeClock(t0), dir: t.TempDir(), log: &syncBuffer{},
	}
	e.v4.record, e.v6.record = true, true
	return e
}

// options are the tests' defaults: protect off, so that the chain holds only
// grants unless a test asks for more.
func (e *env) options() Options {
	return Options{
		Backend: backendIPTables, StateDir: e.dir, Clock: e.clk,
		Logger: slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// fw is an open firewall and the channels its workers signal after each
// event they handled: any, and each family's.
type fw struct {
	*Firewall
	idle    chan struct{}
	famIdle [2]chan struct{}
	// A worker holds its family's gate for reading while it handles an
	// event; advance holds it for writing, so that the clock never jumps
	// under a call whose deadline was armed before the jump.
	gates [2]sync.RWMutex
}

func (e *env) open(o Options) *fw {
	e.t.Helper()
	f, err := e.tryOpen(o)
	if err != nil {
		e.t.Fatalf("open: %v", err)
	}
	return f
}

func (e *env) tryOpen(o Options) (*fw, error) {
	return e.tryOpenOn(o, [2]tables{e.v4, e.v6})
}

// openV4 opens with IPv4 alone: for the tests whose clock jumps while a
// call runs (hung calls), which would time out an IPv6 worker's calls too.
func (e *env) openV4(o Options) *fw {
	e.t.Helper()
	f, err := e.tryOpenOn(o, [2]tables{e.v4, nil})
	if err != nil {
		e.t.Fatalf("open: %v", err)
	}
	return f
}

// checkOnce advances the clock by a check interval and waits until each
// worker has handled an event: its check, when nothing else is due.
func (f *fw) checkOnce(t *testing.T, clk *fakeClock) {
	t.Helper()
	ws := f.workers()
	for _, w := range ws {
		select {
		case <-f.famIdle[w.fam]: // stale
		default:
		}
	}
	f.advance(clk, f.o.CheckInterval)
	deadline := time.After(10 * time.Second)
	for _, w := range ws {
		select {
		case <-f.famIdle[w.fam]:
		case <-deadline:
			t.Fatalf("%v: no check", w.fam)
		}
	}
}

// tryOpenOn opens on the given tables; a nil one is a family not managed.
func (e *env) tryOpenOn(o Options, tabs [2]tables) (*fw, error) {
	n, err := o.normalize()
	if err != nil {
		return nil, err
	}
	if tabs[ipv6] == (*memTables)(nil) {
		tabs[ipv6] = nil
	}
	f := watch(newFirewall(n, iptRulesets(&n, tabs)))
	for _, w := range f.workers() {
		w.rt.delays = e.delays
	}
	// Every change written at once: the tests read the state file after
	// each (TestStateWritesBatched tests the gap).
	f.st.gap = 0
	if err := f.start(context.Background()); err != nil {
		return nil, err
	}
	e.t.Cleanup(func() { f.Close() })
	return f, nil
}

// watch makes ff signal after each event a worker handled.
func watch(ff *Firewall) *fw {
	f := &fw{Firewall: ff, idle: make(chan struct{}, 1)}
	for _, fam := range families {
		f.famIdle[fam] = make(chan struct{}, 1)
	}
	ff.begin = func(fam family) { f.gates[fam].RLock() }
	ff.idle = func(fam family) {
		f.gates[fam].RUnlock()
		for _, ch := range []chan struct{}{f.idle, f.famIdle[fam]} {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	return f
}

// advance moves the clock once the workers of fams (all when none) are
// between events. Not for a test whose events wait on the clock (hung
// calls, backoffs): use Advance then.
func (f *fw) advance(clk *fakeClock, d time.Duration, fams ...family) {
	if len(fams) == 0 {
		fams = families[:]
	}
	for _, fam := range fams {
		f.gates[fam].Lock()
	}
	clk.Advance(d)
	for _, fam := range fams {
		f.gates[fam].Unlock()
	}
}

// rt returns the retrier of a family.
func (f *fw) rt(fam family) *retrier { return f.fams[fam].rt }

// waitFor waits until cond holds, rechecking each time a worker has
// handled an event.
func (f *fw) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-f.idle:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// checkUntil advances the clock by a check interval at a time until cond
// holds. Each advance fires each worker's check timer, or finds the worker
// busy: both end with the worker idle, which is waited for.
func (f *fw) checkUntil(t *testing.T, clk *fakeClock, what string, cond func() bool) {
	t.Helper()
	ws := f.workers()
	for _, w := range ws {
		select {
		case <-f.famIdle[w.fam]: // stale
		default:
		}
	}
	deadline := time.After(10 * time.Second)
	for !cond() {
		// Between events: a call whose deadline was armed before a jump
		// is never killed by it.
		f.advance(clk, f.o.CheckInterval)
		for _, w := range ws {
			select {
			case <-f.famIdle[w.fam]:
			case <-deadline:
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
}

func (e *env) tabs(fam family) *memTables {
	if fam == ipv6 {
		return e.v6
	}
	return e.v4
}

// chain returns `iptables -S WEBKNOCK` of a family, with the set rules
// (always there: TestSetLayout checks them) left out and the elements of
// the grant sets in their place, sorted, as grantLine writes them.
func (e *env) chain(fam family) []string {
	e.t.Helper()
	m := e.tabs(fam)
	lines, err := m.List(ctx0, table, "WEBKNOCK")
	if err != nil {
		e.t.Fatalf("list: %v", err)
	}
	var els []string
	for _, kind := range []string{"g", "n"} {
		name := "WEBKNOCK-" + kind + map[family]string{ipv4: "4", ipv6: "6"}[fam]
		_, set, err := m.list(ctx0, name)
		if err != nil {
			continue
		}
		for _, el := range set {
			els = append(els, elemLine(name, el.String(), el.comment))
		}
	}
	var out []string
	for _, l := range lines {
		if strings.Contains(l, " --match-set WEBKNOCK-") {
			continue
		}
		out = append(out, l)
	}
	return placeElems(out, els)
}

// placeElems puts the element lines, sorted, after the -N line and the
// marker of lines.
func placeElems(lines, els []string) []string {
	slices.Sort(els)
	at := min(2, len(lines))
	return slices.Concat(lines[:at], els, lines[at:])
}

// elemLine writes an element of a grant set for the tests.
func elemLine(set, elem, comment string) string {
	return fmt.Sprintf("-E %s %s %q", set, elem, comment)
}

// deleteJumps deletes the hook's jumps to our chain, as an administrator
// would.
func (e *env) deleteJumps(fam family) {
	e.t.Helper()
	m := e.tabs(fam)
	lines, err := m.List(ctx0, table, "INPUT")
	if err != nil {
		e.t.Fatal(err)
	}
	for _, l := range lines {
		if spec, ok := strings.CutPrefix(l, "-A INPUT "); ok && strings.HasSuffix(l, " -j WEBKNOCK") {
			words, err := splitRule(spec)
			if err != nil {
				e.t.Fatal(err)
			}
			if err := m.Delete(ctx0, table, "INPUT", words...); err != nil {
				e.t.Fatal(err)
			}
		}
	}
}

// flushSets empties the family's grant sets, as `ipset flush` does.
func (e *env) flushSets(fam family) {
	m := e.tabs(fam)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.sets {
		clear(s.elems)
	}
}

// plant adds rules to a chain as an administrator would.
func (e *env) plant(fam family, chain string, specs ...string) {
	e.t.Helper()
	m := e.tabs(fam)
	if ok, _ := m.ChainExists(ctx0, table, chain); !ok {
		if err := m.NewChain(ctx0, table, chain); err != nil {
			e.t.Fatal(err)
		}
	}
	for _, s := range specs {
		words, err := splitRule(s)
		if err != nil {
			e.t.Fatal(err)
		}
		if err := m.Append(ctx0, table, chain, words...); err != nil {
			e.t.Fatalf("plant %q: %v", s, err)
		}
	}
}

func (e *env) writeState(gs ...Grant) {
	e.t.Helper()
	e.writeDoc(stateDoc{Grants: gs})
}

func (e *env) writeDoc(doc stateDoc) {
	e.t.Helper()
	if err := writeState(filepath.Join(e.dir, stateFile), doc); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) readState() []Grant {
	e.t.Helper()
	return e.readDoc().Grants
}

func (e *env) readDoc() stateDoc {
	e.t.Helper()
	doc, err := readState(filepath.Join(e.dir, stateFile))
	if err != nil {
		e.t.Fatal(err)
	}
	return doc
}

// grantLine is the element of a grant, as chain shows it; src is an
// address with its length ("192.0.2.1/32") or a network.
func grantLine(src string, p Port, seq string, until time.Time) string {
	pf := netip.MustParsePrefix(src)
	kind := "g"
	if !pf.IsSingleIP() {
		kind = "n"
	}
	v := "4"
	if pf.Addr().Is6() {
		v = "6"
	}
	el := ipsetElem{src: pf, port: p}
	return elemLine("WEBKNOCK-"+kind+v, el.String(), grantComment(seq, until.Unix()))
}

// entryRule is the grant rule an earlier webknock kept in its chain for e.
func entryRule(e entry) rule {
	return rule{kind: kindGrant, src: e.src, port: e.port, seq: e.seq, until: e.until}
}

// oldGrantLine is that rule as `iptables -S` prints it.
func oldGrantLine(src string, p Port, seq string, until time.Time) string {
	return fmt.Sprintf(`-A WEBKNOCK -s %s -p %s -m %s --dport %d -m time --datestop %s -m comment --comment "webknock:%s:%d" -j ACCEPT`,
		src, p.Proto, p.Proto, p.Number, until.UTC().Format(datestopLayout), seq, until.Unix())
}

// protectLines are the protect rules of port, as `iptables -S WEBKNOCK`
// prints them: for TCP the resets, then the drop.
func protectLines(p Port) []string {
	var out []string
	if p.Proto == "tcp" {
		out = append(out,
			fmt.Sprintf(`-A WEBKNOCK -p tcp -m tcp --dport %d ! --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m comment --comment "webknock:reset" -j REJECT --reject-with tcp-reset`, p.Number),
			fmt.Sprintf(`-A WEBKNOCK -p tcp -m tcp --dport %d ! --tcp-flags RST RST -m conntrack --ctdir REPLY -m comment --comment "webknock:reset" -j REJECT --reject-with tcp-reset`, p.Number))
	}
	return append(out, fmt.Sprintf(`-A WEBKNOCK -p %s -m %s --dport %d -m conntrack --ctstate NEW -m comment --comment "webknock:protect" -j DROP`, p.Proto, p.Proto, p.Number))
}

var (
	ssh  = Port{Proto: "tcp", Number: 22}
	alt  = Port{Proto: "tcp", Number: 2222}
	dns  = Port{Proto: "udp", Number: 53}
	c1   = netip.MustParseAddr("192.0.2.1")
	c2   = netip.MustParseAddr("198.51.100.2")
	c6   = netip.MustParseAddr("2001:db8::7")
	ctx0 = context.Background()
)

// markerLine is the ownership marker of the env's firewall, as
// `iptables -S WEBKNOCK` prints it.
func (e *env) markerLine() string { return markerLineOf(e.dir) }

// markerLineOf is the ownership marker of a firewall with state
// directory dir, as `iptables -S WEBKNOCK` prints it.
func markerLineOf(dir string) string {
	return "-A WEBKNOCK " + prefixed("WEBKNOCK", []string{`-m comment --comment "` + markerFor(dir).args()[3] + `"`})[0][len("-A WEBKNOCK "):]
}

// chainOnly is the env's chain as `iptables -S WEBKNOCK` prints it: its
// marker, then lines.
func (e *env) chainOnly(lines ...string) []string { return chainOf(e.dir, lines...) }

// chainOf is the chain of a firewall with state directory dir, as chain
// shows it: the element lines among lines come first, sorted.
func chainOf(dir string, lines ...string) []string {
	var els, rest []string
	for _, l := range lines {
		if strings.HasPrefix(l, "-E ") {
			els = append(els, l)
		} else {
			rest = append(rest, l)
		}
	}
	return placeElems(append([]string{"-N WEBKNOCK", markerLineOf(dir)}, rest...), els)
}

func diffLines(got, want []string) string {
	if strings.Join(got, "\n") == strings.Join(want, "\n") {
		return ""
	}
	return fmt.Sprintf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func newTextLogger(w *syncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// setFail sets the fail hook.
func (m *memTables) setFail(fn func(op, chain string, spec []string) error) {
	if fn == nil {
		m.setFailCtx(nil)
		return
	}
	m.setFailCtx(func(_ context.Context, op, chain string, spec []string) error { return fn(op, chain, spec) })
}

// setFailCtx sets a fail hook that sees the call's context: one that
// blocks until the context ends is an iptables that hangs until killed.
func (m *memTables) setFailCtx(fn func(ctx context.Context, op, chain string, spec []string) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fail = fn
}

// snapshots returns the recorded changes of chain, or of all chains if
// chain is "".
func (m *memTables) snapshots(chain string) []memChange {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []memChange
	for _, h := range m.history {
		if chain == "" || h.chain == chain {
			out = append(out, h)
		}
	}
	return out
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// execSelf returns a command that runs the test binary again, for the tests
// matching run, with env added.
func execSelf(t *testing.T, run string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", run, "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	return cmd
}

// revoke is Revoke of an address, without the ended grants.
func (f *fw) revoke(ip netip.Addr) error {
	_, err := f.Firewall.Revoke(ctx0, host(ip), "")
	return err
}

// host is the single-address prefix of ip.
func host(ip netip.Addr) netip.Prefix { return netip.PrefixFrom(ip, ip.BitLen()) }

// grant is Grant without the applied grant.
func (f *fw) grant(g Grant) error {
	_, err := f.Firewall.Grant(ctx0, g)
	return err
}

// failGrantInserts makes the IPv4 table refuse to insert grant rules while
// the returned flag is set (it starts set).
func (e *env) failGrantInserts() *atomic.Bool {
	failing := new(atomic.Bool)
	failing.Store(true)
	e.v4.setFail(func(op, _ string, spec []string) error {
		if op == "ipset-add" && failing.Load() {
			return errors.New("too many open files")
		}
		return nil
	})
	return failing
}
