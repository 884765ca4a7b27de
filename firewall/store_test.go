package firewall

import (
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"
	"time"
)

// TestStateWritesBatched: a burst of changes within the gap is written
// once at its start and once when the gap has passed, holding the last
// change; Close's flush writes what is left and nothing after.
func TestStateWritesBatched(t *testing.T) {
	path := filepath.Join(t.TempDir(), stateFile)
	writes := make(chan int, 100)
	n := 0
	s := &store{path: path, log: slog.New(slog.DiscardHandler), gap: 200 * time.Millisecond}
	s.wrote = func() { n++; writes <- len(s.fams[ipv4].grants) }
	grants := map[grantKey]Grant{}
	touched := map[grantKey]struct{}{}
	add := func(i int) {
		g := Grant{IP: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}
		grants[keyOf(g)] = g
		touched[keyOf(g)] = struct{}{}
		s.publish(ipv4, grants, touched, nil, nil, famHealth{}, true)
		clear(touched)
	}
	for i := 1; i <= 100; i++ {
		add(i)
	}
	wait := func(want int) {
		t.Helper()
		select {
		case got := <-writes:
			if got != want {
				t.Fatalf("write of %d grants, want %d", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no write of %d grants within 5s", want)
		}
	}
	wait(1)   // the first change at once
	wait(100) // the rest once the gap has passed
	s.mu.Lock()
	if s.timer != nil || s.dirty {
		t.Errorf("after the deferred write: timer %v, dirty %v", s.timer, s.dirty)
	}
	s.mu.Unlock()
	add(101)
	// Within the gap of the last write: put off; Close writes it.
	if err := s.flush(); err != nil {
		t.Fatal(err)
	}
	wait(101)
	s.mu.Lock()
	defer s.mu.Unlock()
	if n != 3 {
		t.Errorf("%d writes for 101 changes, want 3", n)
	}
	doc, err := readState(path)
	if err != nil || len(doc.Grants) != 101 {
		t.Fatalf("state file: %d grants, %v; want 101", len(doc.Grants), err)
	}
	s.mu.Unlock()
	add(102)
	s.mu.Lock()
	if n != 3 {
		t.Errorf("a change after Close was written")
	}
}
