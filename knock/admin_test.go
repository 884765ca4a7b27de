package knock_test

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/webknock/webknock/knock"
)

// lockOut makes c fail three times (wrong order), which locks it out at d+2s.
func lockOut(tr *knock.Tracker, c netip.Addr, d time.Duration) {
	for i := range 3 {
		tr.Apply(get(c, d+time.Duration(i)*s, "/k/a1", 404), nil)
		tr.Apply(get(c, d+time.Duration(i)*s, "/k/a3", 404), nil)
	}
}

func TestLockoutsAndUnlock(t *testing.T) {
	tr := mustNew(t, testConfig())
	lockOut(tr, c1, 0)
	lockOut(tr, c2, 10*s)
	want := []knock.Locked{{Client: c1, Until: at(2*s + 15*time.Minute)}, {Client: c2, Until: at(12*s + 15*time.Minute)}}
	if got := tr.Lockouts(at(time.Minute)); !slices.Equal(got, want) {
		t.Fatalf("Lockouts = %v, want %v", got, want)
	}
	if got := tr.Lockouts(at(2*s + 15*time.Minute)); !slices.Equal(got, want[1:]) {
		t.Errorf("Lockouts after c1's end = %v, want %v", got, want[1:])
	}
	if !tr.Unlock(c1) {
		t.Fatal("Unlock(c1) = false, want true")
	}
	if tr.Unlock(c1) || tr.Unlock(c3) {
		t.Error("Unlock of an address without a lockout = true")
	}
	if got := tr.Lockouts(at(time.Minute)); !slices.Equal(got, want[1:]) {
		t.Errorf("Lockouts after Unlock(c1) = %v, want %v", got, want[1:])
	}
	// Unlocked, c1 knocks again at once.
	var evs []knock.Event
	for i, p := range []string{"/k/a1", "/k/a2", "/k/a3", "/k/open"} {
		evs = tr.Apply(get(c1, time.Minute+time.Duration(i)*s, p, 404), evs)
	}
	if len(evs) == 0 || evs[len(evs)-1].Kind != knock.KindGrant {
		t.Errorf("knock after Unlock: events %v, want a grant last", evs)
	}
}

// TestAdopt: a reload keeps lockouts and the knocks in progress of
// unchanged sequences; a changed sequence starts afresh.
func TestAdopt(t *testing.T) {
	old := mustNew(t, testConfig())
	lockOut(old, c1, 0)
	old.Apply(get(c2, 10*s, "/k/a1", 404), nil)
	old.Apply(get(c2, 11*s, "/k/a2", 404), nil)
	old.Apply(get(c3, 10*s, "/w/b1", 404), nil)

	cfg := testConfig()
	cfg.Sequences[1].Steps = []string{"/w/c1", "/w/c2"} // "web" changed
	tr := mustNew(t, cfg)
	tr.Adopt(old)
	// c1 (locked out) and c2 (in "ssh"); c3's progress in the changed "web" is dropped.
	if got := tr.Clients(); got != 2 {
		t.Errorf("Clients after Adopt = %d, want 2", got)
	}

	if got := tr.Lockouts(at(time.Minute)); len(got) != 1 || got[0].Client != c1 {
		t.Errorf("Lockouts after Adopt = %v, want c1's", got)
	}
	evs := tr.Apply(get(c2, 12*s, "/k/a3", 404), nil)
	evs = tr.Apply(get(c2, 13*s, "/k/open", 200), evs)
	if len(evs) != 2 || evs[1].Kind != knock.KindGrant {
		t.Errorf("c2 finishing its knock after Adopt: %v, want a step and a grant", evs)
	}
	if got := tr.Apply(get(c1, 20*s, "/k/a1", 404), nil); len(got) != 0 {
		t.Errorf("locked-out c1 after Adopt: %v, want no events", got)
	}
}
