package firewall

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// memSets is the nftables backend's ruleset in memory, for the tests of
// what the worker does with its semantics: an element per address, port
// and kind whose end the "kernel" enforces (an element past its until is
// gone), door elements that a connection uses up (Connect), a table that
// another program can delete (DeleteTable, which hints at once, as the
// monitor does). Its calls never fail.
type memSets struct {
	fam   family
	clock Clock
	rt    *retrier
	log   *slog.Logger
	hints chan string

	mu    sync.Mutex
	table bool
	tail  tail
	keys  map[nftKey][]entry // what webknock holds in each element
	elems map[nftKey]int64   // the elements the kernel holds: their until
}

var (
	_ ruleset    = (*memSets)(nil)
	_ watcher    = (*memSets)(nil)
	_ doorPoller = (*memSets)(nil)
)

func newMemSets(fam family, o *Options) *memSets {
	return &memSets{
		fam: fam, clock: o.Clock, log: o.Logger, hints: make(chan string, 1),
		rt: &retrier{clock: o.Clock, log: o.Logger.With(keyFamily, fam), delays: defaultDelays,
			timeout: o.CallTimeout, cmd: backendNFTables},
		keys: map[nftKey][]entry{}, elems: map[nftKey]int64{},
	}
}

func (m *memSets) name() string                     { return backendNFTables }
func (m *memSets) retrier() *retrier                { return m.rt }
func (m *memSets) describe(e entry) string          { return fmt.Sprintf("%+v", e) }
func (m *memSets) probe(context.Context) error      { return nil }
func (m *memSets) ensureHook(context.Context) error { return nil }
func (m *memSets) owned(context.Context) error      { return nil }
func (m *memSets) close()                           {}

func (m *memSets) ensure(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.table = true
	return nil
}

func (m *memSets) flush(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.table = false
	clear(m.elems)
	return nil
}

// liveLocked drops the elements the kernel has expired.
func (m *memSets) liveLocked() {
	now := m.clock.Now().Unix()
	for k, until := range m.elems {
		if until <= now {
			delete(m.elems, k)
		}
	}
}

func (m *memSets) list(context.Context) ([]entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.table {
		return nil, errNoChain
	}
	m.liveLocked()
	var es []entry
	for k := range m.elems {
		if e, ok := m.latestLocked(k); ok {
			es = append(es, e)
		}
	}
	return es, nil
}

func (m *memSets) latestLocked(k nftKey) (entry, bool) {
	if len(m.keys[k]) == 0 {
		return entry{}, false
	}
	return nftLatest(m.keys[k]), true
}

// putLocked makes the element of k carry the latest until of its entries.
func (m *memSets) putLocked(k nftKey) {
	if e, ok := m.latestLocked(k); ok && e.until > m.clock.Now().Unix() {
		m.elems[k] = e.until
		return
	}
	delete(m.elems, k)
}

func (m *memSets) add(_ context.Context, es []entry) ([]entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.table {
		return nil, errNoChain
	}
	for _, e := range es {
		k := nftKeyOf(e)
		if !slices.Contains(m.keys[k], e) {
			m.keys[k] = append(m.keys[k], e)
		}
		m.putLocked(k)
	}
	return nil, nil
}

func (m *memSets) del(_ context.Context, es ...entry) ([]entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range es {
		k := nftKeyOf(e)
		m.keys[k] = slices.DeleteFunc(m.keys[k], func(x entry) bool { return x == e })
		if len(m.keys[k]) == 0 {
			delete(m.keys, k)
			delete(m.elems, k)
			continue
		}
		if _, held := m.elems[k]; held {
			m.putLocked(k)
		}
	}
	return nil, nil
}

// wantedLocked groups the wanted entries by element, dropping those past.
func (m *memSets) wantedLocked(want []entry) map[nftKey][]entry {
	now := m.clock.Now().Unix()
	out := map[nftKey][]entry{}
	for _, e := range want {
		if e.until > now {
			out[nftKeyOf(e)] = append(out[nftKeyOf(e)], e)
		}
	}
	return out
}

func (m *memSets) inspect(_ context.Context, want, doomed []entry, t tail) (drift, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var d drift
	wanted := m.wantedLocked(want)
	if !m.table {
		d.noChain, d.tail = true, t.protect
		for _, es := range wanted {
			d.missing += len(es)
		}
		return d, nil
	}
	m.liveLocked()
	d.tail = !sameTail(m.tail, t)
	for k, es := range wanted {
		until, ok := m.elems[k]
		switch {
		case !ok && k.kind == nftDoor:
			d.used += len(es)
		case !ok || until != nftLatest(es).until:
			d.missing += len(es)
		}
	}
	skip := map[nftKey]bool{}
	for _, e := range doomed {
		skip[nftKeyOf(e)] = true
	}
	for k := range m.elems {
		if _, ok := wanted[k]; !ok && !skip[k] {
			d.extra++
		}
	}
	return d, nil
}

func (m *memSets) reconcile(_ context.Context, want []entry, t tail) (lost, used []entry, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fresh := !m.table
	m.table, m.tail = true, t
	m.liveLocked()
	wanted := m.wantedLocked(want)
	clear(m.keys)
	for k := range m.elems {
		if _, ok := wanted[k]; !ok {
			delete(m.elems, k)
		}
	}
	for k, es := range wanted {
		if _, ok := m.elems[k]; !ok && k.kind == nftDoor && !fresh {
			used = append(used, es...)
			continue
		}
		m.keys[k] = es
		m.putLocked(k)
	}
	return nil, used, nil
}

func (m *memSets) usedDoors(_ context.Context, want []entry) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.liveLocked()
	n := 0
	for _, e := range want {
		if _, ok := m.elems[nftKeyOf(e)]; e.door && !ok {
			n++
		}
	}
	return n, nil
}

func (m *memSets) watch(stop <-chan struct{}) <-chan string {
	out := make(chan string)
	go func() {
		defer close(out)
		for {
			select {
			case <-stop:
				return
			case h := <-m.hints:
				select {
				case out <- h:
				case <-stop:
					return
				}
			}
		}
	}()
	return out
}

// Connect is a new connection from e's address to its port, as the
// chain judges it: let in by a grant or network element, or by a door
// element, which it uses up.
func (m *memSets) Connect(e entry) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.liveLocked()
	for _, kind := range []string{nftGrant, nftNet} {
		for k := range m.elems {
			if k.kind == kind && k.port == e.port && k.src.Contains(e.src.Addr()) {
				return true
			}
		}
	}
	k := nftKey{kind: nftDoor, src: e.src, port: e.port}
	if _, ok := m.elems[k]; ok {
		delete(m.elems, k)
		return true
	}
	return false
}

// DeleteTable is another program deleting our table; the monitor tells.
func (m *memSets) DeleteTable(by string) {
	m.mu.Lock()
	m.table = false
	clear(m.elems)
	m.mu.Unlock()
	m.hints <- "table deleted by " + by
}

// Elements is the number of elements the kernel holds.
func (m *memSets) Elements() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.liveLocked()
	return len(m.elems)
}

func sameTail(a, b tail) bool {
	return a.protect == b.protect && slices.Equal(a.allow, b.allow) && slices.Equal(a.ports, b.ports)
}

// openSets opens a firewall with the nftables semantics of memSets, IPv4
// and IPv6.
func (e *env) openSets(o Options) (*fw, [2]*memSets) {
	e.t.Helper()
	n, err := o.normalize()
	if err != nil {
		e.t.Fatal(err)
	}
	sets := [2]*memSets{newMemSets(ipv4, &n), newMemSets(ipv6, &n)}
	f := watch(newFirewall(n, [2]ruleset{sets[ipv4], sets[ipv6]}))
	f.st.gap = 0
	if err := f.start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { f.Close() })
	return f, sets
}

// doorOptions configure one close-on-connect sequence, "once", and "ssh".
func (e *env) doorOptions(ended chan<- string) Options {
	o := e.options()
	o.Backend = backendNFTables
	o.Sequences = []Sequence{
		{Name: "once", Ports: []Port{ssh}, Window: time.Hour, CloseOnConnect: true},
		{Name: "ssh", Ports: []Port{ssh}, Window: time.Hour},
	}
	o.OnEnd = func(g Grant, reason string) { ended <- g.Sequence + " " + sourceOf(g) + " " + reason }
	return o
}

// TestDoorUsedEnds: a close-on-connect grant lets one connection in; the
// worker, listing the doors every doorPoll, ends it as used, and a second
// connection is refused. A grant of another sequence is not a door.
func TestDoorUsedEnds(t *testing.T) {
	e := newEnv(t)
	ended := make(chan string, 4)
	f, sets := e.openSets(e.doorOptions(ended))
	f.grant(Grant{IP: c1, Sequence: "once", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
	f.grant(Grant{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
	in := func(ip netip.Addr) entry { return entry{src: netip.PrefixFrom(ip, 32), port: ssh} }
	if !sets[ipv4].Connect(in(c1)) {
		t.Fatal("the door let nobody in")
	}
	if sets[ipv4].Connect(in(c1)) {
		t.Fatal("the door let a second connection in")
	}
	f.advance(e.clk, doorPoll, ipv4)
	select {
	case got := <-ended:
		if want := "once " + c1.String() + " used"; got != want {
			t.Errorf("ended %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the used door grant did not end")
	}
	f.waitFor(t, "the used grant gone", func() bool { return len(f.Grants()) == 1 })
	for i := range 2 {
		if !sets[ipv4].Connect(in(c2)) {
			t.Errorf("connection %d of a grant that is no door refused", i+1)
		}
	}
	if h := f.Health(); h.Repairs != 0 {
		t.Errorf("a used door counted as %d repairs", h.Repairs)
	}
}

// TestHintRepairsAtOnce: when the monitor tells of our table deleted, the
// worker repairs it at once, not at its next check, and logs who did it.
func TestHintRepairsAtOnce(t *testing.T) {
	e := newEnv(t)
	f, sets := e.openSets(e.doorOptions(make(chan string, 4)))
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
	sets[ipv4].DeleteTable("nft (pid 7)")
	f.waitFor(t, "the repair", func() bool { return sets[ipv4].Elements() == 1 })
	if h := f.Health(); h.Repairs != 1 {
		t.Errorf("Repairs = %d, want 1", h.Repairs)
	}
	if !strings.Contains(e.log.String(), `msg="firewall repaired" family=IPv4`) || !strings.Contains(e.log.String(), `by="table deleted by nft (pid 7)"`) {
		t.Errorf("the repair's log does not say who did it:\n%s", e.log.String())
	}
}

// TestKernelExpiry: elements the kernel expires are not restored: the
// worker ends their grants on time, and an extension keeps one element
// with the later end.
func TestKernelExpiry(t *testing.T) {
	e := newEnv(t)
	ended := make(chan string, 4)
	f, sets := e.openSets(e.doorOptions(ended))
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Minute)})
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(2 * time.Minute)})
	if n := sets[ipv4].Elements(); n != 1 {
		t.Fatalf("%d elements after an extension, want 1", n)
	}
	f.advance(e.clk, 2*time.Minute)
	select {
	case got := <-ended:
		if want := "ssh " + c1.String() + " expired"; got != want {
			t.Errorf("ended %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the grant did not end")
	}
	f.checkOnce(t, e.clk)
	if n := sets[ipv4].Elements(); n != 0 || len(f.Grants()) != 0 || f.Health().Repairs != 0 {
		t.Errorf("after the end: %d elements, grants %v, %d repairs", n, f.Grants(), f.Health().Repairs)
	}
}

// TestDoorReload: a reload that makes a sequence close on connect moves
// its live grants into the doors, and back out when it no longer does.
func TestDoorReload(t *testing.T) {
	e := newEnv(t)
	o := e.doorOptions(make(chan string, 4))
	f, sets := e.openSets(o)
	f.grant(Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
	in := entry{src: netip.PrefixFrom(c1, 32), port: ssh}
	doors := func() int {
		sets[ipv4].mu.Lock()
		defer sets[ipv4].mu.Unlock()
		n := 0
		for k := range sets[ipv4].elems {
			if k.kind == nftDoor {
				n++
			}
		}
		return n
	}
	o.Sequences[1].CloseOnConnect = true
	if err := f.Reconfigure(ctx0, o); err != nil {
		t.Fatal(err)
	}
	if n, all := doors(), sets[ipv4].Elements(); n != 1 || all != 1 {
		t.Fatalf("after close_on_connect on: %d door elements of %d, want 1 of 1", n, all)
	}
	o.Sequences[1].CloseOnConnect = false
	if err := f.Reconfigure(ctx0, o); err != nil {
		t.Fatal(err)
	}
	if n, all := doors(), sets[ipv4].Elements(); n != 0 || all != 1 {
		t.Fatalf("after close_on_connect off: %d door elements of %d, want 0 of 1", n, all)
	}
	for i := range 2 {
		if !sets[ipv4].Connect(in) {
			t.Errorf("connection %d refused: the grant is no door any more", i+1)
		}
	}
}
