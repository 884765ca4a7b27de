package knock_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/webknock/webknock/knock"
)

// fuzzConfig has short timeouts and lockouts so that random times reach them.
func fuzzConfig(maxClients int) knock.Config {
	cfg := testConfig()
	cfg.Lockout = knock.Lockout{Failures: 3, Period: 5 * time.Minute, Duration: 10 * time.Minute}
	cfg.MaxClients = maxClients
	// Policy: ssh grants open /24 and /64 networks; web admits two of
	// the clients and closes on a path browsers request anyway.
	cfg.Sequences[0].GrantBits4, cfg.Sequences[0].GrantBits6 = 24, 64
	cfg.Sequences[1].AllowFrom = []netip.Prefix{netip.PrefixFrom(c1, 32), netip.PrefixFrom(v6, 128)}
	cfg.Sequences[1].ClosePage = "/favicon.ico"
	return cfg
}

var (
	fuzzPaths    = []string{"/k/a1", "/k/a2", "/k/a3", "/k/open", "/w/b1", "/w/b2", "/w/open", "/favicon.ico"} // the last: web's close page
	fuzzClients  = []netip.Addr{c1, c2, v6, w6, c3, c4, c5, netip.MustParseAddr("2001:db8::3")}
	fuzzMethods  = []string{"GET", "HEAD", "POST", "GET"}
	fuzzStatuses = []int{404, 200, 499, 410}
)

// fuzzOp is one decoded hit; expire asks for Expire(hit time) before it.
type fuzzOp struct {
	hit    knock.Hit
	expire bool
}

// Each hit is 3 bytes: path, client, method and expire flag; status and
// more client; time step.
func encodeOp(path, client, method int, expire bool, status int, step byte) []byte {
	b0 := byte(path) | byte(client&3)<<3 | byte(method)<<5
	if expire {
		b0 |= 1 << 7
	}
	return []byte{b0, byte(status) | byte(client>>2)<<2, step}
}

// decodeOps also reports whether the times never went backwards.
func decodeOps(data []byte) (ops []fuzzOp, monotonic bool) {
	now, monotonic := t0, true
	for ; len(data) >= 3; data = data[3:] {
		b0, b1, b2 := data[0], data[1], data[2]
		switch {
		case b2 < 128: // the pace of a person knocking
			now = now.Add(time.Duration(b2%32) * time.Second)
		case b2 < 248: // up to 20 minutes: past timeouts, periods and lockouts
			now = now.Add(time.Duration(b2-128) * 10 * time.Second)
		default: // lines from several logs arrive a little out of order
			now = now.Add(-time.Duration(b2-247) * time.Second)
			monotonic = false
		}
		ops = append(ops, fuzzOp{
			hit: knock.Hit{
				Client: fuzzClients[b0>>3&3|b1>>2&1<<2],
				Time:   now,
				Method: fuzzMethods[b0>>5&3],
				Path:   fuzzPaths[b0&7],
				Status: fuzzStatuses[b1&3],
			},
			expire: b0&(1<<7) != 0,
		})
	}
	return ops, monotonic
}

func FuzzTracker(f *testing.F) {
	var seed []byte
	add := func(path, client, status int, step byte) {
		seed = append(seed, encodeOp(path, client, 0, false, status, step)...)
	}
	// A full ssh knock.
	for i, st := range []int{0, 0, 0, 1} {
		add(i, 0, st, 1)
	}
	f.Add(slices.Clone(seed))
	// Then a web knock by another client, interleaved with junk and a retry.
	add(4, 2, 0, 2)
	add(7, 2, 1, 0)
	add(4, 2, 0, 1)
	add(5, 2, 3, 3)
	add(6, 2, 1, 4)
	f.Add(slices.Clone(seed))
	// Three resets lock out; after the lockout a knock works again.
	seed = nil
	for range 3 {
		add(0, 1, 0, 1)
		add(2, 1, 0, 1)
	}
	for i, st := range []int{0, 0, 0, 1} {
		add(i, 1, st, 1)
	}
	add(0, 1, 0, 200) // 12 minutes later
	for i, st := range []int{0, 0, 1} {
		add(i+1, 1, st, 5)
	}
	f.Add(slices.Clone(seed))
	// A knock too slow, expired by Expire.
	seed = nil
	for i, st := range []int{0, 0, 0, 1} {
		seed = append(seed, encodeOp(i, 3, 1, i == 3, st, 15)...)
	}
	f.Add(slices.Clone(seed))

	// Every client takes a first step, half of them a second; the others
	// time out (failures on record) before all start again: the small
	// tables evict from both classes.
	seed = nil
	for c := range fuzzClients {
		add(0, c, 0, 1)
	}
	for c := range 4 {
		add(1, c, 0, 1)
	}
	seed = append(seed, encodeOp(7, 0, 0, true, 0, 132)...) // Expire 40s later
	for c := range fuzzClients {
		add(0, c, 0, 1)
	}
	f.Add(slices.Clone(seed))

	f.Fuzz(func(t *testing.T, data []byte) {
		ops, monotonic := decodeOps(data)
		cfg := fuzzConfig(16)
		plain := mustNew(t, cfg)    // Apply only
		expiring := mustNew(t, cfg) // Expire(hit time) where asked
		// Tables too small for the clients: 2 evicts at every turn; 6
		// keeps a quarter for first steps (MaxProtected 4).
		small := mustNew(t, fuzzConfig(2))
		capped := mustNew(t, fuzzConfig(6))
		var plainEvs, expiringEvs, smallEvs, cappedEvs []knock.Event
		last := t0
		for _, op := range ops {
			if op.hit.Time.After(last) {
				last = op.hit.Time
			}
			if op.expire {
				expiringEvs = expireSorted(t, expiring, op.hit.Time, expiringEvs)
				smallEvs = expireSorted(t, small, op.hit.Time, smallEvs)
				cappedEvs = expireSorted(t, capped, op.hit.Time, cappedEvs)
			}
			plainEvs = plain.Apply(op.hit, plainEvs)
			expiringEvs = expiring.Apply(op.hit, expiringEvs)
			smallEvs = applyBounded(t, small, 2, op.hit, smallEvs)
			cappedEvs = applyBounded(t, capped, 6, op.hit, cappedEvs)
		}
		end := last.Add(24 * time.Hour)
		plainEvs = expireSorted(t, plain, end, plainEvs)
		expiringEvs = expireSorted(t, expiring, end, expiringEvs)
		smallEvs = expireSorted(t, small, end, smallEvs)
		cappedEvs = expireSorted(t, capped, end, cappedEvs)
		for _, tr := range []*knock.Tracker{plain, expiring, small, capped} {
			if n := tr.Clients(); n != 0 {
				t.Errorf("Clients() after Expire(far future) = %d, want 0", n)
			}
		}
		checkEvents(t, cfg, plainEvs)
		checkEvents(t, cfg, expiringEvs)
		checkEvents(t, cfg, smallEvs)
		checkEvents(t, cfg, cappedEvs)
		if monotonic {
			// Expire must not change what happens to any client, only when
			// its timeouts are reported: a replay matches the live run.
			for _, c := range fuzzClients {
				got, want := ofClient(expiringEvs, c), ofClient(plainEvs, c)
				if !equal(got, want) {
					t.Errorf("events of %v with Expire = %s\nwithout %s", c, formatAll(got), formatAll(want))
				}
			}
		}
	})
}

// applyBounded applies h to a tracker whose table holds maxClients and
// checks the eviction policy: at most one eviction per hit, only from a full
// table, and a protected entry goes before a probationary one only when
// there are more protected entries than MaxProtected, or nothing else.
func applyBounded(t *testing.T, tr *knock.Tracker, maxClients int, h knock.Hit, dst []knock.Event) []knock.Event {
	t.Helper()
	prob, prot := tr.Classes()
	evicted, evictedProt := tr.Evicted(), tr.EvictedProtected()
	dst = tr.Apply(h, dst)
	if err := tr.Check(); err != nil {
		t.Fatalf("after Apply(%v): %v", h, err)
	}
	if n := tr.Clients(); n > maxClients {
		t.Fatalf("after Apply(%v): Clients() = %d, want <= MaxClients %d", h, n, maxClients)
	}
	dEv, dProt := tr.Evicted()-evicted, tr.EvictedProtected()-evictedProt
	if dEv == 0 && dProt == 0 {
		return dst
	}
	before := fmt.Sprintf("%d probationary and %d protected (MaxProtected %d, MaxClients %d)", prob, prot, tr.MaxProtected(), maxClients)
	switch {
	case dEv > 1 || dProt > dEv:
		t.Fatalf("Apply(%v) evicted %d entries, %d protected, want at most one", h, dEv, dProt)
	case prob+prot < maxClients:
		t.Fatalf("Apply(%v) evicted with %s: the table was not full", h, before)
	case dProt == 1 && prob > 0 && prot <= tr.MaxProtected():
		t.Fatalf("Apply(%v) evicted a protected entry with %s", h, before)
	case dProt == 0 && (prob == 0 || prot > tr.MaxProtected()):
		t.Fatalf("Apply(%v) evicted a probationary entry with %s", h, before)
	}
	return dst
}

func expireSorted(t *testing.T, tr *knock.Tracker, now time.Time, dst []knock.Event) []knock.Event {
	start := len(dst)
	evicted := tr.Evicted()
	dst = tr.Expire(now, dst)
	if err := tr.Check(); err != nil {
		t.Fatalf("after Expire(%v): %v", now, err)
	}
	if n := tr.Evicted(); n != evicted {
		t.Errorf("Expire(%v) evicted %d entries", now, n-evicted)
	}
	if !slices.IsSortedFunc(dst[start:], func(a, b knock.Event) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return a.Client.Compare(b.Client)
	}) {
		t.Errorf("Expire(%v) = %s, not ordered by time and client", now, formatAll(dst[start:]))
	}
	for _, ev := range dst[start:] {
		if ev.Kind != knock.KindTimeout && ev.Kind != knock.KindLockout {
			t.Errorf("Expire(%v) emitted %s", now, format(ev))
		}
		if ev.Time.After(now) {
			t.Errorf("Expire(%v) emitted %s, after now", now, format(ev))
		}
	}
	return dst
}

func ofClient(evs []knock.Event, c netip.Addr) []knock.Event {
	var out []knock.Event
	for _, ev := range evs {
		if ev.Client == c {
			out = append(out, ev)
		}
	}
	return out
}

// checkEvents holds every grant to a complete, timely, uninterrupted series
// of steps, and every reset and timeout to progress that existed.
func checkEvents(t *testing.T, cfg knock.Config, evs []knock.Event) {
	t.Helper()
	type key struct {
		client netip.Addr
		seq    string
	}
	type run struct {
		next  int // the step expected next
		start time.Time
	}
	seqs := make(map[string]knock.Sequence)
	for _, s := range cfg.Sequences {
		seqs[s.Name] = s
	}
	runs := make(map[key]run)
	type grantOf struct {
		src netip.Prefix
		seq string
	}
	grants := make(map[grantOf]time.Time) // held grants of sequences with a close page
	for i, ev := range evs {
		k := key{ev.Client, ev.Sequence}
		s, ok := seqs[ev.Sequence]
		if !ok {
			t.Fatalf("event %d %s: unknown sequence", i, format(ev))
		}
		r, inProgress := runs[k]
		switch ev.Kind {
		case knock.KindStep:
			switch {
			case ev.Step == 1:
				runs[k] = run{next: 2, start: ev.Time}
			case inProgress && ev.Step == r.next && ev.Step <= len(s.Steps):
				r.next++
				runs[k] = r
			default:
				t.Fatalf("event %d %s: progress was %d%s", i, format(ev), r.next-1, formatAll(evs[:i+1]))
			}
		case knock.KindReset:
			if !inProgress {
				t.Fatalf("event %d %s: nothing in progress%s", i, format(ev), formatAll(evs[:i+1]))
			}
			delete(runs, k)
		case knock.KindTimeout:
			if !inProgress || !ev.Time.Equal(r.start.Add(s.Timeout)) {
				t.Fatalf("event %d %s: progress %d since %v%s", i, format(ev), r.next-1, r.start, formatAll(evs[:i+1]))
			}
			delete(runs, k)
		case knock.KindGrant:
			if !inProgress || r.next != len(s.Steps)+1 || ev.Time.Sub(r.start) > s.Timeout {
				t.Fatalf("event %d %s: progress %d since %v%s", i, format(ev), r.next-1, r.start, formatAll(evs[:i+1]))
			}
			if !ev.Until.Equal(ev.Time.Add(s.Window)) || !slices.Equal(ev.Ports, s.Ports) {
				t.Fatalf("event %d %s: want until %v, ports %v", i, format(ev), ev.Time.Add(s.Window), s.Ports)
			}
			delete(runs, k)
			if ok, _ := allowed(s, ev.Client); !ok {
				t.Fatalf("event %d %s: client outside allow_from", i, format(ev))
			}
			if want := grantSource(s, ev.Client); ev.Source != want {
				t.Fatalf("event %d %s: want source %v", i, format(ev), want)
			}
			grants[grantOf{ev.Source, ev.Sequence}] = ev.Until
		case knock.KindDenied:
			if !inProgress || r.next != len(s.Steps)+1 || ev.Reason != knock.DeniedSource {
				t.Fatalf("event %d %s: progress %d since %v%s", i, format(ev), r.next-1, r.start, formatAll(evs[:i+1]))
			}
			if ok, _ := allowed(s, ev.Client); ok {
				t.Fatalf("event %d %s: client inside allow_from", i, format(ev))
			}
			delete(runs, k)
		case knock.KindClose:
			g := grantOf{grantSource(s, ev.Client), ev.Sequence}
			if until, ok := grants[g]; !ok || !until.After(ev.Time) || ev.Source != g.src || s.ClosePage == "" {
				t.Fatalf("event %d %s: no grant of %v held%s", i, format(ev), g.src, formatAll(evs[:i+1]))
			}
			delete(grants, g)
		case knock.KindLockout:
			if !ev.Until.Equal(ev.Time.Add(cfg.Lockout.Duration)) {
				t.Fatalf("event %d %s: want until %v", i, format(ev), ev.Time.Add(cfg.Lockout.Duration))
			}
			for rk := range runs {
				if rk.client == ev.Client {
					delete(runs, rk)
				}
			}
		default:
			t.Fatalf("event %d %s: unknown kind", i, format(ev))
		}
	}
}

// allowed reports whether s admits client.
func allowed(s knock.Sequence, client netip.Addr) (bool, string) {
	if len(s.AllowFrom) == 0 {
		return true, ""
	}
	for _, p := range s.AllowFrom {
		if p.Contains(client) {
			return true, ""
		}
	}
	return false, knock.DeniedSource
}

// grantSource is what a grant of s to client opens.
func grantSource(s knock.Sequence, client netip.Addr) netip.Prefix {
	bits := s.GrantBits6
	if client.Is4() {
		bits = s.GrantBits4
	}
	if bits == 0 {
		bits = client.BitLen()
	}
	p, _ := client.Prefix(bits)
	return p
}
