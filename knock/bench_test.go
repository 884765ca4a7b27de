package knock_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/webknock/webknock/knock"
)

func BenchmarkApplyNoMatch(b *testing.B) {
	tr := mustNew(b, testConfig())
	h := get(c1, 0, "/static/app.js", 200)
	var dst []knock.Event
	b.ReportAllocs()
	for b.Loop() {
		dst = tr.Apply(h, dst[:0])
	}
}

func BenchmarkApplyKnock(b *testing.B) {
	tr := mustNew(b, testConfig())
	hits := sshKnock(c1, 0)
	dst := make([]knock.Event, 0, 8)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// Each knock a minute after the last, so none of them times out.
		d := time.Duration(i) * time.Minute
		for _, h := range hits {
			h.Time = h.Time.Add(d)
			dst = tr.Apply(h, dst[:0])
		}
		if len(dst) != 1 || dst[0].Kind != knock.KindGrant {
			b.Fatalf("Apply(knock page) = %s, want a grant", formatAll(dst))
		}
		i++
	}
}

func BenchmarkFloodFirstSteps(b *testing.B) {
	tr := mustNew(b, testConfig())
	dst := make([]knock.Event, 0, 8)
	b.ReportAllocs()
	i := uint32(0)
	for b.Loop() {
		addr := netip.AddrFrom4([4]byte{byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
		dst = tr.Apply(knock.Hit{Client: addr, Time: t0, Method: "GET", Path: "/k/a1", Status: 404}, dst[:0])
		i++
	}
	if n := tr.Clients(); n > knock.DefaultMaxClients {
		b.Fatalf("Clients() = %d, want <= %d", n, knock.DefaultMaxClients)
	}
	b.ReportMetric(float64(tr.Evicted())/float64(b.N), "evictions/op")
}

// BenchmarkExpireFullTable is one Expire over a full default table in which
// nothing has expired yet: the cost of the periodic sweep.
func BenchmarkExpireFullTable(b *testing.B) {
	tr := mustNew(b, testConfig())
	for i := range knock.DefaultMaxClients {
		addr := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		tr.Apply(knock.Hit{Client: addr, Time: t0, Method: "GET", Path: "/k/a1", Status: 404}, nil)
	}
	var dst []knock.Event
	b.ReportAllocs()
	for b.Loop() {
		if dst = tr.Expire(t0.Add(time.Second), dst[:0]); len(dst) != 0 {
			b.Fatalf("Expire(t+1s) = %s, want none", formatAll(dst))
		}
	}
}

// manyOneTime is n hmac sequences, each under a prefix of its own (as
// webknock init makes them) or all under /o/.
func manyOneTime(n int, shared bool) knock.Config {
	cfg := otConfig()
	base := cfg.Sequences[0]
	cfg.Sequences = nil
	for i := range n {
		s := base
		s.Name = fmt.Sprintf("u%04d", i)
		ot := *base.OneTime
		if !shared {
			ot.Prefix = fmt.Sprintf("/o/%04d/", i)
		}
		s.OneTime = &ot
		cfg.Sequences = append(cfg.Sequences, s)
	}
	return cfg
}

// BenchmarkApplyNoMatchOneTime is a request for a path of no sequence with
// 1,000 one-time sequences, each under its own prefix.
func BenchmarkApplyNoMatchOneTime(b *testing.B) {
	tr := mustNew(b, manyOneTime(1000, false))
	h := get(c1, 0, "/o/0007/app.js", 200)
	var dst []knock.Event
	b.ReportAllocs()
	for b.Loop() {
		dst = tr.Apply(h, dst[:0])
	}
}

// BenchmarkOneTimeKnock is a whole one-time knock, each a new time step
// (its paths derived first), among n sequences.
func BenchmarkOneTimeKnock(b *testing.B) {
	for _, bc := range []struct {
		name   string
		n      int
		shared bool
	}{{"1", 1, false}, {"1000-own-prefixes", 1000, false}, {"1000-one-prefix", 1000, true}} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := manyOneTime(bc.n, bc.shared)
			tr := mustNew(b, cfg)
			s := cfg.Sequences[bc.n/2]
			dst := make([]knock.Event, 0, 8)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				at := t0.Add(time.Duration(i) * 10 * time.Minute)
				paths, _ := s.PathsAt(at)
				for j, p := range paths {
					dst = tr.Apply(knock.Hit{Client: c1, Time: at.Add(time.Duration(j) * time.Second), Method: "GET", Path: p, Status: 404}, dst[:0])
				}
				if len(dst) != 1 || dst[0].Kind != knock.KindGrant {
					b.Fatalf("knock page: %s, want a grant", formatAll(dst))
				}
				i++
			}
		})
	}
}
