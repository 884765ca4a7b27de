package knock_test

import (
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/webknock/webknock/knock"
)

// floodAddr is the i-th flooding client, 10.0.0.0 + i.
func floodAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// firstSteps are first ssh steps from the flooding clients from, from+1, …
// (n of them), one a millisecond apart from d.
func firstSteps(from, n int, d time.Duration) []knock.Hit {
	hits := make([]knock.Hit, n)
	for i := range hits {
		hits[i] = get(floodAddr(from+i), d+time.Duration(i)*time.Millisecond, "/k/a1", 404)
	}
	return hits
}

// applyChecked applies hits one by one and fails if the table's bookkeeping
// is ever wrong.
func applyChecked(t *testing.T, tr *knock.Tracker, hits []knock.Hit) []knock.Event {
	t.Helper()
	var got []knock.Event
	for _, h := range hits {
		got = tr.Apply(h, got)
		if err := tr.Check(); err != nil {
			t.Fatalf("after Apply(%v): %v", h, err)
		}
	}
	return got
}

func TestEvictionClasses(t *testing.T) {
	// MaxClients 3 keeps at most 2 protected entries ahead of first steps.
	tests := []struct {
		name  string
		hits  []knock.Hit // fill the table
		probe []knock.Hit // then show who is left
		want  []knock.Event
		// After the probe.
		evicted, evictedProtected uint64
	}{{
		name:  "a client past step 1 survives any number of first steps",
		hits:  cat([]knock.Hit{get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a2", 404)}, firstSteps(0, 1000, 2*s)),
		probe: []knock.Hit{get(c1, 4*s, "/k/a3", 404), get(c1, 5*s, "/k/open", 200)},
		want:  []knock.Event{step(c1, 4*s, "ssh", 3), grant(c1, 5*s, "ssh", 10*time.Minute, sshPorts)},
		// Two places for 1000 first steps.
		evicted: 998,
	}, {
		name: "first steps are evicted oldest first",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c2, 1*s, "/k/a1", 404), get(c3, 2*s, "/k/a1", 404),
			get(c4, 3*s, "/k/a1", 404),
		},
		probe: []knock.Hit{
			get(c1, 4*s, "/k/a2", 404), get(c2, 5*s, "/k/a2", 404), get(c3, 6*s, "/k/a2", 404),
			get(c4, 7*s, "/k/a2", 404),
		},
		want:    []knock.Event{step(c2, 5*s, "ssh", 2), step(c3, 6*s, "ssh", 2), step(c4, 7*s, "ssh", 2)},
		evicted: 1,
	}, {
		name: "a repeated first step is a touch",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c2, 1*s, "/k/a1", 404), get(c3, 2*s, "/k/a1", 404),
			get(c1, 3*s, "/k/a1", 404), get(c4, 4*s, "/k/a1", 404),
		},
		probe:   []knock.Hit{get(c1, 5*s, "/k/a2", 404), get(c2, 6*s, "/k/a2", 404)},
		want:    []knock.Event{step(c1, 5*s, "ssh", 2)},
		evicted: 1,
	}, {
		name: "when all are protected the oldest protected is evicted",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a2", 404), get(c2, 2*s, "/k/a1", 404),
			get(c2, 3*s, "/k/a2", 404), get(c3, 4*s, "/k/a1", 404), get(c3, 5*s, "/k/a2", 404),
			get(c4, 6*s, "/k/a1", 404),
		},
		probe: []knock.Hit{
			get(c1, 7*s, "/k/a3", 404), get(c2, 8*s, "/k/a3", 404), get(c3, 9*s, "/k/a3", 404),
			get(c4, 10*s, "/k/a2", 404),
		},
		want:             []knock.Event{step(c2, 8*s, "ssh", 3), step(c3, 9*s, "ssh", 3), step(c4, 10*s, "ssh", 2)},
		evicted:          1,
		evictedProtected: 1,
	}, {
		name: "then first steps go before the protected left",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a2", 404), get(c2, 2*s, "/k/a1", 404),
			get(c2, 3*s, "/k/a2", 404), get(c3, 4*s, "/k/a1", 404), get(c3, 5*s, "/k/a2", 404),
			get(c4, 6*s, "/k/a1", 404), get(c5, 7*s, "/k/a1", 404),
		},
		probe: []knock.Hit{
			get(c2, 8*s, "/k/a3", 404), get(c3, 9*s, "/k/a3", 404), get(c4, 10*s, "/k/a2", 404),
			get(c5, 11*s, "/k/a2", 404),
		},
		want:             []knock.Event{step(c2, 8*s, "ssh", 3), step(c3, 9*s, "ssh", 3), step(c5, 11*s, "ssh", 2)},
		evicted:          2,
		evictedProtected: 1,
	}, {
		name: "a failure on record protects",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a3", 404), get(c2, 2*s, "/k/a1", 404),
			get(c3, 3*s, "/k/a1", 404), get(c4, 4*s, "/k/a1", 404),
		},
		// Two more failures make three: the first was kept.
		probe: cat(sshFail(c1, 6*s), sshFail(c1, 8*s), []knock.Hit{get(c2, 9*s, "/k/a2", 404)}),
		want: cat(sshFailEvents(c1, 6*s), sshFailEvents(c1, 8*s),
			[]knock.Event{lockout(c1, 8*s, "ssh")}),
		evicted: 1,
	}, {
		name:  "a lockout protects",
		hits:  cat(sshFail(c1, 1*s), sshFail(c1, 2*s), sshFail(c1, 3*s), firstSteps(0, 10, 4*s)),
		probe: sshKnock(c1, 5*s),
		want:  nil,
		// Two places for 10 first steps.
		evicted: 8,
	}, {
		name: "back at step 1, an entry is probationary again",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a2", 404), get(c1, 2*s, "/k/a1", 404),
			get(c2, 3*s, "/k/a1", 404), get(c3, 4*s, "/k/a1", 404), get(c4, 5*s, "/k/a1", 404),
		},
		probe:   []knock.Hit{get(c1, 6*s, "/k/a2", 404), get(c2, 7*s, "/k/a2", 404)},
		want:    []knock.Event{step(c2, 7*s, "ssh", 2)},
		evicted: 1,
	}, {
		name: "with its failures forgotten, an entry is probationary again",
		hits: []knock.Hit{
			get(c1, 0, "/k/a1", 404), get(c1, 1*s, "/k/a3", 404), get(c1, 1*s+10*time.Minute, "/k/a1", 404),
			get(c2, 2*s+10*time.Minute, "/k/a1", 404), get(c3, 3*s+10*time.Minute, "/k/a1", 404),
			get(c4, 4*s+10*time.Minute, "/k/a1", 404),
		},
		probe:   []knock.Hit{get(c1, 5*s+10*time.Minute, "/k/a2", 404), get(c2, 6*s+10*time.Minute, "/k/a2", 404)},
		want:    []knock.Event{step(c2, 6*s+10*time.Minute, "ssh", 2)},
		evicted: 1,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.MaxClients = 3
			tr := mustNew(t, cfg)
			applyChecked(t, tr, tt.hits)
			got := applyChecked(t, tr, tt.probe)
			if !equal(got, tt.want) {
				t.Errorf("Apply(probe) = %s\nwant %s", formatAll(got), formatAll(tt.want))
			}
			if n := tr.Evicted(); n != tt.evicted {
				t.Errorf("Evicted() = %d, want %d", n, tt.evicted)
			}
			if n := tr.EvictedProtected(); n != tt.evictedProtected {
				t.Errorf("EvictedProtected() = %d, want %d", n, tt.evictedProtected)
			}
		})
	}
}

// An entry that Expire makes protected has not been touched: it goes before
// the protected entries of clients that were.
func TestExpireFilesTimedOutFirstStepLast(t *testing.T) {
	cfg := testConfig()
	cfg.MaxClients = 3
	tr := mustNew(t, cfg)
	applyChecked(t, tr, []knock.Hit{
		get(c5, 0, "/w/b1", 404), get(c5, 1*s, "/w/b2", 404), // protected, times out at 60s
		get(c1, 2*s, "/k/a1", 404), // probationary, times out at 32s
	})
	if got, want := tr.Expire(at(33*s), nil), []knock.Event{timeout(c1, 32*s, "ssh")}; !equal(got, want) {
		t.Fatalf("Expire(t+33s) = %s, want %s", formatAll(got), formatAll(want))
	}
	if err := tr.Check(); err != nil {
		t.Fatalf("after Expire: %v", err)
	}
	if prob, prot := tr.Classes(); prob != 0 || prot != 2 {
		t.Fatalf("after Expire: Classes() = %d, %d, want 0 probationary, 2 protected (c1's failure)", prob, prot)
	}
	// Three protected, one more than MaxProtected: c1 goes although c5
	// was touched before it.
	got := applyChecked(t, tr, cat([]knock.Hit{
		get(c4, 34*s, "/k/a1", 404), get(c4, 35*s, "/k/a2", 404), get(c2, 36*s, "/k/a1", 404),
		get(c5, 37*s, "/w/open", 200),
	}, sshFail(c1, 39*s), sshFail(c1, 41*s)))
	want := cat([]knock.Event{
		step(c4, 34*s, "ssh", 1), step(c4, 35*s, "ssh", 2), step(c2, 36*s, "ssh", 1),
		grant(c5, 37*s, "web", time.Hour, webPorts),
	}, sshFailEvents(c1, 39*s), sshFailEvents(c1, 41*s)) // no lockout: c1's first failure went with it
	if !equal(got, want) {
		t.Errorf("Apply(hits) = %s\nwant %s", formatAll(got), formatAll(want))
	}
	if n := tr.EvictedProtected(); n != 1 {
		t.Errorf("EvictedProtected() = %d, want 1", n)
	}
}

// A first step that times out is a failure on record: an attacker who knows
// steps[0] can fill the table with protected entries. The quarter kept for
// first steps still lets a genuine client take its second step.
func TestFloodOfTimedOutFirstSteps(t *testing.T) {
	cfg := testConfig()
	cfg.MaxClients = 1000
	tr := mustNew(t, cfg)
	applyChecked(t, tr, firstSteps(0, 1000, 0))
	if evs := tr.Expire(at(40*s), nil); len(evs) != 1000 {
		t.Fatalf("Expire(t+40s) = %d events, want 1000 timeouts", len(evs))
	}
	if prob, prot := tr.Classes(); prob != 0 || prot != 1000 {
		t.Fatalf("after Expire: Classes() = %d, %d, want all 1000 protected", prob, prot)
	}
	if n := tr.MaxProtected(); n != 750 {
		t.Fatalf("MaxProtected() = %d, want 750", n)
	}

	// Fewer than a quarter of MaxClients first steps between its steps.
	hits := cat([]knock.Hit{get(c1, 41*s, "/k/a1", 404)}, firstSteps(1000, 200, 42*s),
		[]knock.Hit{get(c1, 43*s, "/k/a2", 404)}, firstSteps(2000, 5000, 44*s),
		[]knock.Hit{get(c1, 50*s, "/k/a3", 404), get(c1, 51*s, "/k/open", 200)})
	var got []knock.Event
	for _, h := range hits {
		for _, ev := range tr.Apply(h, nil) {
			if ev.Client == c1 {
				got = append(got, ev)
			}
		}
	}
	want := []knock.Event{
		step(c1, 41*s, "ssh", 1), step(c1, 43*s, "ssh", 2), step(c1, 50*s, "ssh", 3),
		grant(c1, 51*s, "ssh", 10*time.Minute, sshPorts),
	}
	if !equal(got, want) {
		t.Errorf("events of %v = %s\nwant %s", c1, formatAll(got), formatAll(want))
	}
	// The timed-out entries went down to MaxProtected (1 + 200 + 50), then
	// first steps pushed out first steps.
	if n := tr.EvictedProtected(); n != 251 {
		t.Errorf("EvictedProtected() = %d, want 251", n)
	}
	if n := tr.Evicted(); n != 5201 {
		t.Errorf("Evicted() = %d, want 5201", n)
	}
	if err := tr.Check(); err != nil {
		t.Error(err)
	}
}

// TestFloodKeepsGenuineClient is the requirement: one million distinct
// addresses sending a first knock neither exhaust memory nor stop a genuine
// client knocking in the middle of the flood.
func TestFloodKeepsGenuineClient(t *testing.T) {
	if testing.Short() {
		t.Skip("a million hits and a heap measurement")
	}
	const (
		flood  = 1000000
		step1  = 200000         // the genuine client's first step comes after this many flood hits,
		step2  = step1 + 50000  // its second after this many (fewer than MaxClients since the first),
		finish = step2 + 500000 // and the rest and the knock page after this many
		// Heap in use after the flood; the whole process must stay under 128 MiB RSS.
		maxHeap = 96 << 20
	)
	tr := mustNew(t, testConfig())
	genuine := map[int][]knock.Hit{
		step1:  {get(c1, 0, "/k/a1", 404)},
		step2:  {get(c1, 0, "/k/a2", 404)},
		finish: {get(c1, 0, "/k/a3", 404), get(c1, 0, "/k/open", 200)},
	}
	var got, dst []knock.Event
	for i := range flood {
		// 10µs apart: the whole flood fits within the timeout of 30s.
		now := at(time.Duration(i) * 10 * time.Microsecond)
		for _, h := range genuine[i] {
			h.Time = now
			got = tr.Apply(h, got)
		}
		// 2001:db8:<i>::1
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i), 15: 1})
		dst = tr.Apply(knock.Hit{Client: a, Time: now, Method: "GET", Path: "/k/a1", Status: 404}, dst[:0])
		if len(dst) != 1 || dst[0].Kind != knock.KindStep {
			t.Fatalf("flood hit %d: Apply = %s, want a step", i, formatAll(dst))
		}
		if n := tr.Clients(); n > knock.DefaultMaxClients {
			t.Fatalf("flood hit %d: Clients() = %d, want <= %d", i, n, knock.DefaultMaxClients)
		}
	}
	if len(got) != 4 || got[3].Kind != knock.KindGrant || got[3].Client != c1 {
		t.Errorf("genuine client's events = %s, want three steps and a grant", formatAll(got))
	}
	if n := tr.Evicted(); n == 0 {
		t.Errorf("Evicted() = 0 after %d first steps, want > 0", flood)
	}
	if n := tr.EvictedProtected(); n != 0 {
		t.Errorf("EvictedProtected() = %d, want 0: only first steps flooded", n)
	}

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	runtime.KeepAlive(tr)
	t.Logf("after %d first steps: %d clients, %d evicted, heap in use %.1f MiB", flood, tr.Clients(), tr.Evicted(), float64(ms.HeapInuse)/(1<<20))
	if ms.HeapInuse > maxHeap {
		t.Errorf("heap in use after the flood = %.1f MiB, want <= %d MiB", float64(ms.HeapInuse)/(1<<20), maxHeap>>20)
	}
}
