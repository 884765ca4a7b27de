package firewall

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/webknock/webknock/internal/statedir"
)

// State file names in StateDir. The dry run keeps its own, so that its
// pretend grants never become real ones when the iptables backend starts.
const (
	stateFile       = "grants.json"
	dryRunStateFile = "grants-dry-run.json"
	// Version 2 added pending grants and revokes; version 1 files are
	// still read.
	stateVersion = 2
	// maxStateBytes is far above MaxGrants grants and as many revokes.
	maxStateBytes = 64 << 20
)

type stateDoc struct {
	Version int       `json:"version"`
	Grants  []Grant   `json:"grants"`
	Pending []Grant   `json:"pending,omitempty"` // not in the kernel yet: retried
	Revoked []revoked `json:"revoked,omitempty"`
}

// revoked is the wall-clock time the grants of an address or network were
// revoked: a knock logged before it never grants it again.
type revoked struct {
	Source source    `json:"ip"`
	At     time.Time `json:"at"`
}

// source is a revoked address, written alone as before networks could be
// granted, or a network written NET/BITS.
type source struct{ netip.Prefix }

func (s source) MarshalText() ([]byte, error) {
	if !s.IsValid() {
		return nil, errors.New("no address or network")
	}
	return []byte(FormatSource(s.Prefix)), nil
}

func (s *source) UnmarshalText(b []byte) error {
	p, err := ParseSource(string(b))
	if err != nil {
		return err
	}
	s.Prefix = p
	return nil
}

// readState reads a state file through statedir, which refuses one that
// another user could have written (statedir.ErrUntrusted). A missing file
// is an error that errors.Is(err, fs.ErrNotExist); any entry that is not
// valid makes the whole file unreadable, since it cannot be trusted.
func readState(path string) (stateDoc, error) {
	b, err := statedir.ReadFile(path, maxStateBytes)
	if err != nil {
		return stateDoc{}, err
	}
	return parseState(path, b)
}

func parseState(path string, b []byte) (stateDoc, error) {
	var doc stateDoc
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&doc); err != nil {
		return stateDoc{}, fmt.Errorf("read %s: %w", path, err)
	}
	if doc.Version != 1 && doc.Version != stateVersion {
		return stateDoc{}, fmt.Errorf("read %s: version %d, want 1 or %d", path, doc.Version, stateVersion)
	}
	for _, list := range []struct {
		name string
		gs   []Grant
	}{{"grants", doc.Grants}, {"pending", doc.Pending}} {
		for i, g := range list.gs {
			n, err := normalizeGrant(g)
			if err == nil {
				err = checkUntil(n)
			}
			if err != nil {
				return stateDoc{}, fmt.Errorf("read %s: %s[%d]: %w", path, list.name, i, err)
			}
			list.gs[i] = n
		}
	}
	for i, r := range doc.Revoked {
		if !r.Source.IsValid() || r.At.IsZero() {
			return stateDoc{}, fmt.Errorf("read %s: revoked[%d]: want an address or network and a time", path, i)
		}
	}
	return doc, nil
}

// writeState replaces the state file atomically, mode 0600.
func writeState(path string, doc stateDoc) error {
	doc.Version = stateVersion
	if doc.Grants == nil {
		doc.Grants = []Grant{}
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return statedir.WriteFile(path, append(b, '\n'))
}

// removeState removes the state file and the temporary files of
// interrupted writes.
func removeState(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove state file: %w", err)
	}
	statedir.RemoveTemps(path)
	return nil
}

// store is the state both families share: what each holds, merged into one
// state file that one place writes, and the views that Grants and Health
// read. Each family's worker publishes to it after every change: the
// grants it changed, not all of them, so that a change costs the same
// with ten grants or a hundred thousand.
//
// The state file is written at most once per gap: a burst of grants is one
// write, not one per grant. A change not yet written is written when the
// gap has passed, and at Close; should webknock die before, the rules'
// comments (iptables) or the elements' (nftables) still hold the grants.
// Such a write happens on a goroutine of its own, off the workers' path:
// a knock never waits for a file of thousands of grants to be written.
// An urgent change (an early end, a revoke) is written at once, by the
// worker, before the caller learns of it.
type store struct {
	path string // "": no state file
	log  *slog.Logger
	gap  time.Duration // the least time between two writes; 0: none

	mu     sync.Mutex
	fams   [2]famView
	dirty  bool  // the state file is behind
	err    error // the last write's failure
	last   time.Time
	timer  *time.Timer // a write put off until the gap has passed
	busy   bool        // a write off the workers' path is under way
	closed bool
	wrote  func() // for the tests: called after each write, with mu held
	seq    uint64 // snapshots taken for writing

	// file serializes the writes, and written is the seq of the last one:
	// an older snapshot is never written over a newer one.
	file     sync.Mutex
	written  uint64
	inflight sync.WaitGroup // writes off the workers' path under way
}

// stateGap is the least time between two writes of the state file.
const stateGap = 200 * time.Millisecond

// famView is what one family's worker publishes.
type famView struct {
	grants  map[grantKey]Grant
	pending []Grant
	revoked []revoked
	health  famHealth
}

// famHealth is one family's part of Health.
type famHealth struct {
	doomed   int       // entries whose delete is retried
	pending  int       // grants whose insert is retried
	unsynced bool      // the last reconcile failed
	checkErr error     // the last integrity check failed
	checked  time.Time // the last integrity check passed
}

// publish takes fam's grants of the keys touched from grants, and the
// rest of its view; when changed, the state file is written with both
// families' grants, now or once the gap has passed; when urgent (a grant
// ended before its time, a revoke), now. A failed write is
// logged and retried at the next change of either family.
func (s *store) publish(fam family, grants map[grantKey]Grant, touched map[grantKey]struct{}, pending []Grant, rev []revoked, h famHealth, changed, urgent bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := &s.fams[fam]
	if v.grants == nil {
		v.grants = make(map[grantKey]Grant, len(grants))
	}
	for k := range touched {
		if g, ok := grants[k]; ok {
			v.grants[k] = g
		} else {
			delete(v.grants, k)
		}
	}
	v.pending, v.revoked, v.health = pending, rev, h
	if changed && s.path != "" {
		s.dirty = true
	}
	if !s.dirty || s.closed {
		return
	}
	if urgent || s.gap == 0 {
		// At once (gap 0: every change, as the tests want it).
		if s.timer != nil {
			s.timer.Stop()
			s.timer = nil
		}
		s.writeLocked()
		return
	}
	s.armLocked()
}

// armLocked puts off a write of the changes until the gap since the last
// write has passed, unless one is put off already or under way (which
// arms it again when it ends).
func (s *store) armLocked() {
	if s.timer != nil || s.busy || s.closed || !s.dirty {
		return
	}
	s.timer = time.AfterFunc(max(0, s.gap-time.Since(s.last)), s.writeLater)
}

// writeLater writes the state file off the workers' path: the snapshot
// under mu, the file without it.
func (s *store) writeLater() {
	s.mu.Lock()
	s.timer = nil
	if !s.dirty || s.closed {
		s.mu.Unlock()
		return
	}
	seq, doc := s.snapshotLocked()
	s.dirty = false // a change from now on sets it again
	s.busy = true
	s.inflight.Add(1)
	defer s.inflight.Done()
	s.mu.Unlock()
	done, err := s.writeFile(seq, doc)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy = false
	if done {
		s.wroteLocked(err)
	} else {
		s.armLocked()
	}
}

// writeLocked writes the state file now, with mu held.
func (s *store) writeLocked() {
	seq, doc := s.snapshotLocked()
	s.dirty = false
	done, err := s.writeFile(seq, doc)
	if done {
		s.wroteLocked(err)
	}
}

// snapshotLocked is the document to write, numbered; its lists are in no
// order yet: writeFile sorts them, off the lock the workers publish under.
func (s *store) snapshotLocked() (uint64, stateDoc) {
	s.seq++
	return s.seq, s.docLocked()
}

// writeFile writes doc unless a later snapshot was written already; done
// says whether it was.
func (s *store) writeFile(seq uint64, doc stateDoc) (done bool, err error) {
	s.file.Lock()
	defer s.file.Unlock()
	if seq < s.written {
		return false, nil
	}
	s.written = seq
	doc.sort()
	return true, writeState(s.path, doc)
}

// wroteLocked records the outcome of a write.
func (s *store) wroteLocked(err error) {
	s.last = time.Now()
	if s.wrote != nil {
		s.wrote()
	}
	if err == nil {
		s.armLocked() // changed while being written
	}
	switch {
	case err == nil:
		s.err = nil
	case s.err == nil || s.err.Error() != err.Error():
		s.log.Error("cannot write the state file; retrying at the next change", keyErr, err)
		fallthrough
	default:
		s.err, s.dirty = err, true
	}
}

// flush writes the state file if it is behind, and writes no more: the
// firewall is closed.
func (s *store) flush() error {
	s.mu.Lock()
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if s.dirty {
		s.writeLocked()
	}
	s.closed = true
	s.mu.Unlock()
	// A write under way finishes (or finds that this one was later).
	s.inflight.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// docLocked is the document of both families, unsorted.
func (s *store) docLocked() stateDoc {
	var doc stateDoc
	doc.Grants = make([]Grant, 0, len(s.fams[ipv4].grants)+len(s.fams[ipv6].grants))
	for _, v := range s.fams {
		for _, g := range v.grants {
			doc.Grants = append(doc.Grants, g)
		}
		doc.Pending = append(doc.Pending, v.pending...)
		doc.Revoked = append(doc.Revoked, v.revoked...)
	}
	return doc
}

// sort puts doc's lists in the order the file holds them.
func (doc *stateDoc) sort() {
	sortGrants(doc.Grants)
	sortGrants(doc.Pending)
	slices.SortFunc(doc.Revoked, func(a, b revoked) int {
		return cmp.Or(a.At.Compare(b.At), a.Source.Addr().Compare(b.Source.Addr()), cmp.Compare(a.Source.Bits(), b.Source.Bits()))
	})
}

// grants returns the live grants of both families, sorted; the slice and
// the ports are the caller's.
func (s *store) grants() []Grant {
	s.mu.Lock()
	out := make([]Grant, 0, len(s.fams[ipv4].grants)+len(s.fams[ipv6].grants))
	for _, v := range s.fams {
		for _, g := range v.grants {
			g.Ports = slices.Clone(g.Ports)
			out = append(out, g)
		}
	}
	s.mu.Unlock()
	sortGrants(out)
	return out
}

// sortGrants sorts by Until, then source (address, then the wider
// network first) and Sequence.
func sortGrants(gs []Grant) { slices.SortFunc(gs, compareGrants) }

func compareGrants(a, b Grant) int {
	return cmp.Or(a.Until.Compare(b.Until), a.IP.Compare(b.IP), cmp.Compare(a.Source().Bits(), b.Source().Bits()),
		cmp.Compare(a.Sequence, b.Sequence))
}

// isUntrusted tells whether err refuses a state file or directory that
// another user could have written.
func isUntrusted(err error) bool { return errors.Is(err, statedir.ErrUntrusted) }
