package firewall

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// genRules is a ruleset whose kernel numbers its changes: gen, bumped by
// the test; inspects counts the listings.
type genRules struct {
	ruleset
	gen      atomic.Uint32
	inspects atomic.Int32
}

func (g *genRules) generation(context.Context) (uint32, error) { return g.gen.Load(), nil }

func (g *genRules) inspect(ctx context.Context, want, doomed []entry, t tail) (drift, error) {
	g.inspects.Add(1)
	return g.ruleset.inspect(ctx, want, doomed, t)
}

// TestCheckSkipsUnchangedGeneration: with a kernel that numbers its
// changes, a check lists the rules only when the number moved since the
// last clean check; a change found that way is still repaired.
func TestCheckSkipsUnchangedGeneration(t *testing.T) {
	e := newEnv(t)
	o := e.options()
	o.CheckInterval = time.Minute
	n, err := o.normalize()
	if err != nil {
		t.Fatal(err)
	}
	rss := iptRulesets(&n, [2]tables{e.v4, nil})
	g := &genRules{ruleset: rss[ipv4]}
	rss[ipv4] = g
	f := watch(newFirewall(n, rss))
	f.st.gap = 0
	if err := f.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })

	f.checkOnce(t, e.clk)
	base := g.inspects.Load()
	if base == 0 {
		t.Fatal("the first check listed nothing")
	}
	f.checkOnce(t, e.clk)
	f.checkOnce(t, e.clk)
	if got := g.inspects.Load(); got != base {
		t.Errorf("checks with the generation unchanged listed %d times, want none", got-base)
	}

	// Someone deletes our marker; the kernel numbers that change.
	marker := markerFor(e.dir).args()
	if err := e.v4.Delete(ctx0, table, "WEBKNOCK", marker...); err != nil {
		t.Fatal(err)
	}
	g.gen.Add(1)
	f.checkOnce(t, e.clk)
	if got := g.inspects.Load(); got != base+1 {
		t.Errorf("after a change: %d listings, want 1", got-base)
	}
	if ok, err := e.v4.Exists(ctx0, table, "WEBKNOCK", marker...); !ok || err != nil {
		t.Errorf("the deleted marker was not restored: %v", err)
	}
}
