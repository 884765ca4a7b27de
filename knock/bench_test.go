package knock_test

import (
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
