package firewall

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// recRules records the calls that change a ruleset, and holds its first
// delete until released.
type recRules struct {
	ruleset
	mu      sync.Mutex
	ops     []string // "add N" and "del N", in order
	dels    int
	held    chan struct{} // told when the first delete waits
	release chan struct{} // closed: the first delete goes on
}

func (r *recRules) record(op string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, fmt.Sprintf("%s %d", op, n))
}

func (r *recRules) add(ctx context.Context, es []entry) ([]entry, error) {
	r.record("add", len(es))
	return r.ruleset.add(ctx, es)
}

func (r *recRules) del(ctx context.Context, es ...entry) ([]entry, error) {
	r.mu.Lock()
	r.dels++
	first := r.dels == 1
	r.mu.Unlock()
	if first && r.held != nil {
		r.held <- struct{}{}
		<-r.release
	}
	r.record("del", len(es))
	return r.ruleset.del(ctx, es...)
}

func (r *recRules) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ops)
}

// net64 is the address ::1 of the n-th /64 of 2001:db8::/32.
func net64(n int) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, byte(n >> 8), byte(n), 15: 1})
}

// TestSweepYieldsToKnocks: 600 grants that end in the same second are
// ended and deleted in chunks of sweepChunk, oldest end first, and a grant
// asked for meanwhile is applied after the first chunk, before the others.
func TestSweepYieldsToKnocks(t *testing.T) {
	e := newEnv(t)
	o := e.options()
	o.Backend = backendNFTables
	o.Sequences = []Sequence{{Name: "ssh", Ports: []Port{ssh}, Window: time.Hour}}
	n, err := o.normalize()
	if err != nil {
		t.Fatal(err)
	}
	rec := &recRules{ruleset: newMemSets(ipv6, &n)}
	f := watch(newFirewall(n, [2]ruleset{nil, rec}))
	f.st.gap = 0
	if err := f.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })

	const many = 600
	for i := range many {
		f.grant(Grant{IP: net64(i), Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Minute)})
	}
	rec.held, rec.release = make(chan struct{}), make(chan struct{})
	f.advance(e.clk, time.Minute+time.Second)
	select {
	case <-rec.held:
	case <-time.After(10 * time.Second):
		t.Fatal("no delete after the grants ended")
	}
	// The worker is in the first chunk's delete: a knock arrives.
	knock := net64(many + 1)
	done := make(chan error, 1)
	w := f.fams[ipv6]
	w.reqs <- request{ctx: context.Background(), done: done, fn: func(ctx context.Context) error {
		_, err := w.grant(ctx, Grant{IP: knock, Sequence: "ssh", Ports: []Port{ssh}, Until: e.clk.Now().Add(time.Hour)})
		return err
	}}
	close(rec.release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the knock was not applied")
	}
	f.waitFor(t, "the sweep to end", func() bool { return len(f.Grants()) == 1 && f.Health().Pending == 0 })

	// The grants' adds, then the sweep with the knock's add after its
	// first chunk.
	calls := rec.calls()
	want := []string{"del 128", "add 1", "del 128", "del 128", "del 128", "del 88"}
	if got := calls[many:]; !slices.Equal(got, want) {
		t.Fatalf("calls after the grants: %q, want %q", got, want)
	}
	got := f.Grants()
	if len(got) != 1 || got[0].IP != knock {
		t.Errorf("grants after the sweep: %v, want only %s's", got, knock)
	}
}

// TestKernelEndsSkipDelete: an element whose kernel timeout has passed is
// not deleted when its grant ends (the kernel took it); one whose timeout
// has not is.
func TestKernelEndsSkipDelete(t *testing.T) {
	e := newEnv(t)
	f := e.openV4(e.options())
	var mu sync.Mutex
	var dels []string
	e.v4.setFail(func(op, _ string, spec []string) error {
		if op == "ipset-del" {
			mu.Lock()
			dels = append(dels, spec...)
			mu.Unlock()
		}
		return nil
	})
	for _, ip := range []netip.Addr{c1, mustAddr("192.0.2.2")} {
		f.grant(Grant{IP: ip, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)})
	}
	rs := f.fams[ipv4].rs.(*iptRules)
	rs.ends[iptKey{host(c1), ssh}] = time.Now().Add(-time.Second) // as if the kernel's timeout had passed
	for _, ip := range []netip.Addr{c1, mustAddr("192.0.2.2")} {
		if err := f.revoke(ip); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"192.0.2.2,tcp:22", "22"}; !slices.Equal(dels, want) {
		t.Errorf("deletes %q, want %q: only the element whose timeout has not passed", dels, want)
	}
}
