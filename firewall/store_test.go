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
	s.wrote = func() { n++; writes <- grantsWritten(t, path) }
	grants := map[grantKey]Grant{}
	touched := map[grantKey]struct{}{}
	add := func(i int) {
		g := Grant{IP: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}
		grants[keyOf(g)] = g
		touched[keyOf(g)] = struct{}{}
		s.publish(ipv4, grants, touched, nil, nil, famHealth{}, true, false)
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
	// The first change is written as soon as the writer's goroutine runs,
	// off the caller's path (with what came meanwhile); the rest once the
	// gap has passed: two writes at most.
	select {
	case got := <-writes:
		if got < 1 || got > 100 {
			t.Fatalf("first write of %d grants", got)
		}
		if got < 100 {
			wait(100)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no write within 5s")
	}
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
	written := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return n
	}
	closed := written()
	if closed > 3 {
		t.Errorf("%d writes for 101 changes, want 3 at most", closed)
	}
	doc, err := readState(path)
	if err != nil || len(doc.Grants) != 101 {
		t.Fatalf("state file: %d grants, %v; want 101", len(doc.Grants), err)
	}
	add(102)
	if got := written(); got != closed {
		t.Errorf("a change after Close was written")
	}
}

// TestStateUrgentWrite: a grant ended before its time (a revoke) is written
// at once, whatever the gap, and so is what waited for the gap with it.
func TestStateUrgentWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), stateFile)
	writes := make(chan int, 10)
	s := &store{path: path, log: slog.New(slog.DiscardHandler), gap: time.Hour}
	s.wrote = func() { writes <- len(s.fams[ipv4].grants) }
	grants := map[grantKey]Grant{}
	touched := map[grantKey]struct{}{}
	var keys []grantKey
	for i := 1; i <= 3; i++ {
		g := Grant{IP: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}
		grants[keyOf(g)], touched[keyOf(g)] = g, struct{}{}
		keys = append(keys, keyOf(g))
	}
	s.publish(ipv4, grants, touched, nil, nil, famHealth{}, true, false)
	if got := <-writes; got != 3 {
		t.Fatalf("first write: %d grants, want 3", got)
	}
	change := func(k grantKey, urgent bool) {
		delete(grants, k)
		clear(touched)
		touched[k] = struct{}{}
		s.publish(ipv4, grants, touched, nil, nil, famHealth{}, true, urgent)
	}
	change(keys[0], false) // an expiry: put off by the gap
	select {
	case got := <-writes:
		t.Fatalf("an expiry within the gap was written at once (%d grants)", got)
	default:
	}
	change(keys[1], true) // a revoke: now, with the expiry
	select {
	case got := <-writes:
		if got != 1 {
			t.Errorf("urgent write: %d grants, want 1", got)
		}
	default:
		t.Fatal("a revoke within the gap was not written at once")
	}
	s.flush()
}

// TestStateWriteUnderWay: changes made while a write is under way start
// no other write: one follows when that one ends, the gap after it. Were
// each change to start its own, a mass expiry would write the file of
// thousands of grants back to back, and keep a CPU from the knocks.
func TestStateWriteUnderWay(t *testing.T) {
	path := filepath.Join(t.TempDir(), stateFile)
	writes := make(chan int, 100)
	s := &store{path: path, log: slog.New(slog.DiscardHandler), gap: 20 * time.Millisecond}
	s.wrote = func() { writes <- grantsWritten(t, path) }
	grants := map[grantKey]Grant{}
	touched := map[grantKey]struct{}{}
	add := func(i int) {
		g := Grant{IP: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(time.Hour)}
		grants[keyOf(g)] = g
		clear(touched)
		touched[keyOf(g)] = struct{}{}
		s.publish(ipv4, grants, touched, nil, nil, famHealth{}, true, false)
	}
	s.file.Lock() // the write under way cannot finish
	add(1)
	busy := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.busy
	}
	for deadline := time.Now().Add(5 * time.Second); !busy(); {
		if time.Now().After(deadline) {
			t.Fatal("the write did not start within 5s")
		}
		time.Sleep(time.Millisecond)
	}
	for i := 2; i <= 50; i++ {
		add(i)
	}
	s.mu.Lock()
	armed := s.timer != nil
	s.mu.Unlock()
	if armed {
		t.Error("a write was put off while another was under way")
	}
	s.file.Unlock()
	for _, want := range []int{1, 50} {
		select {
		case got := <-writes:
			if got != want {
				t.Fatalf("write of %d grants, want %d", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no write of %d grants within 5s", want)
		}
	}
	if err := s.flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-writes:
		t.Errorf("a third write (%d grants) for two batches of changes", got)
	default:
	}
}

// grantsWritten is the number of grants the state file at path holds.
func grantsWritten(t *testing.T, path string) int {
	doc, err := readState(path)
	if err != nil {
		t.Error(err)
	}
	return len(doc.Grants)
}
