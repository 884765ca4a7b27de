package main

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/webknock/webknock/knock"
)

// reorderTracker is a tracker of one sequence: /s1 /s2, then /open.
func reorderTracker(t *testing.T) *knock.Tracker {
	t.Helper()
	tr, err := knock.New(knock.Config{Sequences: []knock.Sequence{{
		Name: "ssh", Steps: []string{"/s1", "/s2"}, StepStatus: []int{404}, Methods: []string{"GET"},
		KnockPage: "/open", Timeout: 30 * time.Second, Window: 10 * time.Minute, Ports: []string{"22/tcp"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestReorderHoldsOnlyWhatIsAhead: steps in order go at once; a step
// ahead waits for the ones before it, or for its wait to end; the held
// hits are bounded.
func TestReorderHoldsOnlyWhatIsAhead(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	c := netip.MustParseAddr("192.0.2.7")
	hit := func(c netip.Addr, path string) knock.Hit {
		return knock.Hit{Client: c, Time: t0, Method: "GET", Path: path, Status: 404}
	}
	var got []knock.Kind
	emit := func(_ int64, evs []knock.Event) {
		for _, e := range evs {
			got = append(got, e.Kind)
		}
	}

	r := newReorder(reorderTracker(t), time.Second)
	r.apply(hit(c, "/s1"), 1, t0, emit)
	if len(r.held) != 0 || len(got) != 1 {
		t.Fatalf("a first step: %d held, events %v; want it applied at once", len(r.held), got)
	}
	r.apply(hit(c, "/open"), 2, t0, emit)
	if len(r.held) != 1 {
		t.Fatalf("the knock page before /s2 was not held")
	}
	if at, ok := r.next(); !ok || !at.Equal(t0.Add(time.Second)) {
		t.Errorf("next = %v, %v; want %v", at, ok, t0.Add(time.Second))
	}
	r.apply(hit(c, "/s2"), 3, t0, emit)
	if want := []knock.Kind{knock.KindStep, knock.KindStep, knock.KindGrant}; len(r.held) != 0 || !slices.Equal(got, want) {
		t.Fatalf("after /s2: %d held, events %v; want none held and %v", len(r.held), got, want)
	}

	// Not completed within the wait: applied as it came, it resets.
	got = nil
	d := netip.MustParseAddr("192.0.2.8")
	r.apply(hit(d, "/s1"), 4, t0, emit)
	r.apply(hit(d, "/open"), 5, t0, emit)
	r.release(t0.Add(999*time.Millisecond), emit)
	if len(r.held) != 1 {
		t.Fatal("released before its wait ended")
	}
	r.release(t0.Add(time.Second), emit)
	if want := []knock.Kind{knock.KindStep, knock.KindReset}; len(r.held) != 0 || !slices.Equal(got, want) {
		t.Fatalf("after the wait: %d held, events %v; want %v", len(r.held), got, want)
	}

	// Not waited for: a later-logged step of the client that does not
	// fill the gap applies the held hit first, as it came.
	got = nil
	c3 := netip.MustParseAddr("192.0.2.9")
	r.apply(hit(c3, "/s1"), 6, t0, emit)
	r.apply(hit(c3, "/open"), 7, t0, emit)
	later := hit(c3, "/s1")
	later.Time = t0.Add(time.Second)
	r.apply(later, 8, t0, emit)
	if want := []knock.Kind{knock.KindStep, knock.KindReset, knock.KindStep}; len(r.held) != 0 || !slices.Equal(got, want) {
		t.Fatalf("a later first step: %d held, events %v; want %v", len(r.held), got, want)
	}

	// Bounded: beyond maxHeld, a hit ahead is applied as it comes.
	for i := range maxHeld + 10 {
		r.apply(hit(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), "/s2"), 0, t0, emit)
	}
	if len(r.held) != maxHeld {
		t.Errorf("%d hits held, want at most %d", len(r.held), maxHeld)
	}
}
