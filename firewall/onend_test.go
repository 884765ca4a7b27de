package firewall

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// endRecorder keeps what OnEnd was told, as "SOURCE SEQUENCE REASON".
type endRecorder struct {
	mu   sync.Mutex
	ends []string
}

func (r *endRecorder) onEnd(g Grant, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ends = append(r.ends, sourceOf(g)+" "+g.Sequence+" "+reason)
}

func (r *endRecorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ends)
}

// TestOnEnd: OnEnd is told once of every held grant that ends, and why:
// its time ran out, it was revoked or closed, or a reload no longer allows
// it. A grant that is cut, extended or loses a port goes on: no end.
func TestOnEnd(t *testing.T) {
	u1, u2 := t0.Add(5*time.Minute), t0.Add(8*time.Minute)
	tests := []struct {
		name string
		// run acts on an open firewall with the policy seqs, then waits
		// until the grants it expects ended.
		run  func(t *testing.T, e *env, f *fw, o Options)
		want []string
	}{
		{"expired", func(t *testing.T, e *env, f *fw, _ Options) {
			mustGrant(t, f, Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: u1})
			mustGrant(t, f, Grant{IP: c6, Sequence: "web", Ports: []Port{alt}, Until: u2})
			f.advance(e.clk, u1.Sub(t0))
			f.waitFor(t, "the first grant to end", func() bool { return len(f.Grants()) == 1 })
			f.advance(e.clk, u2.Sub(u1))
			f.waitFor(t, "the second grant to end", func() bool { return len(f.Grants()) == 0 })
			f.checkOnce(t, e.clk) // a check finds nothing more to end
		}, []string{"192.0.2.1 ssh expired", "2001:db8::7 web expired"}},
		{"revoked and closed", func(t *testing.T, e *env, f *fw, _ Options) {
			mustGrant(t, f, Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: u1})
			mustGrant(t, f, Grant{IP: c1, Sequence: "web", Ports: []Port{alt}, Until: u1})
			mustGrant(t, f, Grant{IP: c2, Sequence: "ssh", Ports: []Port{ssh}, Until: u2})
			if _, err := f.Revoke(ctx0, host(c1), ReasonRevoked); err != nil {
				t.Fatal(err)
			}
			if _, err := f.RevokeSequence(ctx0, host(c2), "ssh", ReasonClosed); err != nil {
				t.Fatal(err)
			}
		}, []string{"192.0.2.1 ssh revoked", "192.0.2.1 web revoked", "198.51.100.2 ssh closed"}},
		{"policy", func(t *testing.T, e *env, f *fw, o Options) {
			mustGrant(t, f, Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: u2})
			mustGrant(t, f, Grant{IP: c2, Sequence: "web", Ports: []Port{alt, dns}, Until: u2})
			mustGrant(t, f, Grant{IP: c6, Sequence: "web", Ports: []Port{alt, dns}, Until: u1})
			// ssh is cut to a shorter window; web loses a port: both go on.
			o.Sequences = []Sequence{{Name: "ssh", Ports: []Port{ssh}, Window: time.Minute}, {Name: "web", Ports: []Port{alt}, Window: time.Hour}}
			if err := f.Reconfigure(ctx0, o); err != nil {
				t.Fatal(err)
			}
			// web is gone.
			o.Sequences = o.Sequences[:1]
			if err := f.Reconfigure(ctx0, o); err != nil {
				t.Fatal(err)
			}
		}, []string{"198.51.100.2 web policy", "2001:db8::7 web policy"}},
		{"extended, then expired", func(t *testing.T, e *env, f *fw, _ Options) {
			mustGrant(t, f, Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: u1})
			mustGrant(t, f, Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: u2})
			f.advance(e.clk, u1.Sub(t0))
			f.checkOnce(t, e.clk)
			f.advance(e.clk, u2.Sub(u1))
			f.waitFor(t, "the grant to end", func() bool { return len(f.Grants()) == 0 })
		}, []string{"192.0.2.1 ssh expired"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			var rec endRecorder
			o := e.policyOptions()
			o.OnEnd = rec.onEnd
			f := e.open(o)
			tc.run(t, e, f, o)
			// The families' workers tell of their own grants: in no order.
			got := rec.got()
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("OnEnd told %q, want %q", got, tc.want)
			}
		})
	}
}

func mustGrant(t *testing.T, f *fw, g Grant) {
	t.Helper()
	if err := f.grant(g); err != nil {
		t.Fatalf("Grant(%v) = %v", g, err)
	}
}

// TestOnEndAtOpen: the grants that ended while webknock was stopped, or
// that the configuration no longer allows, are told of during Open, after
// the reconcile deleted their rules; a pending grant, never held, is not.
func TestOnEndAtOpen(t *testing.T) {
	e := newEnv(t)
	e.writeDoc(stateDoc{
		Grants: []Grant{
			{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(-time.Minute)},
			{IP: c2, Sequence: "gone", Ports: []Port{ssh}, Until: t0.Add(time.Minute)},
			{IP: c6, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Minute)},
		},
		Pending: []Grant{{IP: mustAddr("192.0.2.9"), Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(-time.Minute)}},
	})
	e.plant(ipv4, "WEBKNOCK", oldGrantLine("192.0.2.1/32", ssh, "ssh", t0.Add(-time.Minute))[len("-A WEBKNOCK "):])
	var rec endRecorder
	var rules atomic.Int32
	o := e.policyOptions()
	o.OnEnd = func(g Grant, reason string) {
		lines, _ := e.v4.List(ctx0, table, "WEBKNOCK")
		rules.Store(int32(len(lines)))
		rec.onEnd(g, reason)
	}
	e.open(o)
	want := []string{"192.0.2.1 ssh expired", "198.51.100.2 gone policy"}
	if got := rec.got(); !slices.Equal(got, want) {
		t.Errorf("OnEnd told %q, want %q", got, want)
	}
	if n := rules.Load(); n != 4 {
		t.Errorf("OnEnd was told while the chain had %d lines, want the marker and the set rules only", n)
	}
}

// TestOnEndLostRules: a held grant whose rules were lost and cannot be
// restored waits to be applied again; when its window ends first, OnEnd is
// told that it expired, once.
func TestOnEndLostRules(t *testing.T) {
	e := newEnv(t)
	var rec endRecorder
	o := e.policyOptions()
	o.OnEnd = rec.onEnd
	f := e.open(o)
	until := t0.Add(2 * time.Minute)
	mustGrant(t, f, Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: until})
	e.failGrantInserts()
	e.flushSets(ipv4)
	f.checkUntil(t, e.clk, "the grant to wait", func() bool { return f.Health().PendingGrants == 1 })
	if got := rec.got(); len(got) != 0 {
		t.Fatalf("OnEnd told %q of a grant that waits", got)
	}
	for e.clk.Now().Before(until) {
		f.advance(e.clk, pendMax)
	}
	f.waitFor(t, "the grant to be given up", func() bool { return f.Health().PendingGrants == 0 })
	f.checkOnce(t, e.clk)
	if got, want := rec.got(), []string{"192.0.2.1 ssh expired"}; !slices.Equal(got, want) {
		t.Errorf("OnEnd told %q, want %q", got, want)
	}
}
