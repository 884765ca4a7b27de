package firewall

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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

// fw is an open firewall and the channel its worker signals after each
// event it handled.
type fw struct {
	*Firewall
	idle chan struct{}
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
	n, err := o.normalize()
	if err != nil {
		return nil, err
	}
	idle := make(chan struct{}, 1)
	f := newFirewall(n, [2]tables{e.v4, e.v6})
	f.rt.delays = e.delays
	f.idle = func() {
		select {
		case idle <- struct{}{}:
		default:
		}
	}
	if err := f.start(context.Background()); err != nil {
		return nil, err
	}
	e.t.Cleanup(func() { f.Close() })
	return &fw{f, idle}, nil
}

// waitFor waits until cond holds, rechecking each time the worker has
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
// holds. Each advance fires the check timer, or finds the worker busy: both
// end with the worker idle.
func (f *fw) checkUntil(t *testing.T, clk *fakeClock, what string, cond func() bool) {
	t.Helper()
	select {
	case <-f.idle: // stale
	default:
	}
	deadline := time.After(10 * time.Second)
	for !cond() {
		clk.Advance(f.o.CheckInterval)
		select {
		case <-f.idle:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (e *env) tabs(fam family) *memTables {
	if fam == ipv6 {
		return e.v6
	}
	return e.v4
}

// chain returns `iptables -S WEBKNOCK` of a family.
func (e *env) chain(fam family) []string {
	e.t.Helper()
	lines, err := e.tabs(fam).List(ctx0, table, "WEBKNOCK")
	if err != nil {
		e.t.Fatalf("list: %v", err)
	}
	return lines
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
	if err := saveState(filepath.Join(e.dir, stateFile), gs); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) readState() []Grant {
	e.t.Helper()
	gs, err := loadState(filepath.Join(e.dir, stateFile))
	if err != nil {
		e.t.Fatal(err)
	}
	return gs
}

// grantLine is a grant rule as `iptables -S` prints it.
func grantLine(src string, p Port, seq string, until time.Time) string {
	return fmt.Sprintf(`-A WEBKNOCK -s %s -p %s -m %s --dport %d -m time --datestop %s -m comment --comment "webknock:%s:%d" -j ACCEPT`,
		src, p.Proto, p.Proto, p.Number, until.UTC().Format(datestopLayout), seq, until.Unix())
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

func chainOnly(lines ...string) []string { return append([]string{"-N WEBKNOCK"}, lines...) }

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
