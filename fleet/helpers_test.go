package fleet

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// bus is a real NATS server with JetStream, in this process, that a test
// can stop and start again on the same port and store.
type bus struct {
	t     *testing.T
	port  int
	store string
	srv   *server.Server
}

func newBus(t *testing.T) *bus {
	t.Helper()
	b := &bus{t: t, port: -1, store: t.TempDir()}
	b.start()
	b.port = b.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(b.stop)
	return b
}

func (b *bus) start() {
	b.t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: b.port, JetStream: true, StoreDir: b.store, NoSigs: true, NoLog: true})
	if err != nil {
		b.t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		b.t.Fatal("nats-server not ready")
	}
	b.srv = s
}

func (b *bus) stop() {
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
		b.srv = nil
	}
}

func (b *bus) url() string { return "nats://127.0.0.1:" + itoa(b.port) }

func itoa(n int) string { return strconv.Itoa(n) }

// proxy forwards TCP connections to a bus; cut drops them and refuses new
// ones until mend: one client's partition while the bus stays up.
type proxy struct {
	t      *testing.T
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.partition() })
	go p.serve()
	return p
}

func (p *proxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { io.Copy(up, c); up.Close() }()
		go func() { io.Copy(c, up); c.Close() }()
	}
}

func (p *proxy) partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) mend() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// applier is the local firewall of an enforcer under test.
type applier struct {
	mu      sync.Mutex
	held    map[string]Verified
	changes chan string // "apply KEY", "remove KEY"
	fail    error
}

func newApplier() *applier {
	return &applier{held: map[string]Verified{}, changes: make(chan string, 100000)}
}

func (a *applier) Apply(_ context.Context, v Verified) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail != nil {
		return a.fail
	}
	k := Key(v.Source, v.Sequence)
	if old, ok := a.held[k]; ok && !v.Until.After(old.Until) {
		return nil
	}
	a.held[k] = v
	a.changes <- "apply " + k
	return nil
}

func (a *applier) Remove(_ context.Context, g Grant) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := Key(g.Source, g.Sequence)
	delete(a.held, k)
	a.changes <- "remove " + k
	return nil
}

func (a *applier) Held() []Grant {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Grant
	for _, v := range a.held {
		out = append(out, v.Grant)
	}
	return out
}

func (a *applier) keys() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for k := range a.held {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// next waits for the applier's next change, failing the test after a
// deadline.
func (a *applier) next(t *testing.T) string {
	t.Helper()
	select {
	case c := <-a.changes:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no change of the firewall within 10s")
		return ""
	}
}

// quiet checks that the applier does not change for a while: what a test
// of "nothing happens" can do without a clock to advance (the bus runs on
// real time).
func (a *applier) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case c := <-a.changes:
		t.Fatalf("unexpected change of the firewall: %s", c)
	case <-time.After(d):
	}
}

func newKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func connect(t *testing.T, servers ...string) *Client {
	t.Helper()
	c, err := Connect(ConnOptions{Servers: servers, Group: "test", Name: t.Name(), Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	deadline := time.Now().Add(10 * time.Second)
	for !c.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("not connected within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return c
}

// results collects a publisher's results.
type results chan error

func (r results) next(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("no publish result within 10s")
		return nil
	}
}

func newPublisher(t *testing.T, c *Client, key ed25519.PrivateKey) (*Publisher, results) {
	t.Helper()
	r := make(results, 100000)
	p := NewPublisher(PublisherOptions{Client: c, Key: key, Detector: "web1", OnResult: func(_ Grant, err error) { r <- err }})
	t.Cleanup(p.Close)
	return p, r
}

// publishOK publishes g and fails the test unless the bus takes it.
func publishOK(t *testing.T, p *Publisher, r results, g Grant) {
	t.Helper()
	publishUsedOK(t, p, r, g, nil)
}

// publishUsedOK is publishOK of a grant that spends a one-time step.
func publishUsedOK(t *testing.T, p *Publisher, r results, g Grant, used *Used) {
	t.Helper()
	p.Publish(g, used)
	if err := r.next(t); err != nil {
		t.Fatal(err)
	}
}

type enforcerRun struct {
	e         *Enforcer
	a         *applier
	snapshots chan [2]int
}

func startEnforcer(t *testing.T, c *Client, trusted ...ed25519.PublicKey) *enforcerRun {
	t.Helper()
	r := &enforcerRun{a: newApplier(), snapshots: make(chan [2]int, 100)}
	r.e = NewEnforcer(EnforcerOptions{Client: c, Trusted: trusted, Apply: r.a, Logger: c.log,
		Window:     func(seq string) (time.Duration, bool) { return time.Hour, seq == "ssh" },
		OnSnapshot: func(applied, removed int) { r.snapshots <- [2]int{applied, removed} }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.e.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func (r *enforcerRun) snapshot(t *testing.T) [2]int {
	t.Helper()
	select {
	case s := <-r.snapshots:
		return s
	case <-time.After(15 * time.Second):
		t.Fatal("no snapshot within 15s")
		return [2]int{}
	}
}

func grantOf(ip string, until time.Time) Grant {
	a := netip.MustParseAddr(ip)
	return Grant{Source: netip.PrefixFrom(a, a.BitLen()), Sequence: "ssh", Ports: []Port{{"tcp", 22}},
		Knocked: until.Add(-time.Hour), Until: until}
}
