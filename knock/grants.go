package knock

// This file remembers the grants of sequences that have a close page, so
// that a request for it can end the grant of the client that makes it.

import (
	"net/netip"
	"time"
)

// grantKey is one grant: what it opens, for which sequence.
type grantKey struct {
	src netip.Prefix
	seq int32
}

// hold records that src holds a grant of sequence seq until until, unless
// the sequence has no close page. A later until extends a grant. The
// table is bounded like the client table: when full, ended grants are
// forgotten, then the one that ends first.
func (t *Tracker) hold(src netip.Prefix, seq int32, until, now time.Time) {
	if t.seqs[seq].ClosePage == "" {
		return
	}
	k := grantKey{src, seq}
	if old, ok := t.grants[k]; ok {
		if until.After(old) {
			t.grants[k] = until
		}
		return
	}
	if len(t.grants) >= t.max {
		t.sweepGrants(now)
	}
	if len(t.grants) >= t.max {
		var first grantKey
		var firstAt time.Time
		for k, u := range t.grants {
			if firstAt.IsZero() || u.Before(firstAt) {
				first, firstAt = k, u
			}
		}
		delete(t.grants, first)
	}
	t.grants[k] = until
}

// sweepGrants forgets the grants that have ended at now.
func (t *Tracker) sweepGrants(now time.Time) {
	for k, u := range t.grants {
		if !u.After(now) {
			delete(t.grants, k)
		}
	}
}

// close ends the grant of sequence ref.seq that h's client holds, if any.
func (t *Tracker) close(h Hit, seq int32, dst []Event) []Event {
	s := &t.seqs[seq]
	k := grantKey{s.source(h.Client), seq}
	until, ok := t.grants[k]
	if !ok {
		return dst
	}
	delete(t.grants, k)
	if !until.After(h.Time) {
		return dst
	}
	return append(dst, Event{Kind: KindClose, Time: h.Time, Client: h.Client, Sequence: s.Name, Input: h.Input,
		Source: k.src, Until: until, Ports: s.Ports})
}

// HoldGrant tells t that src holds a grant of the named sequence until
// until, as the firewall says after a restart or an admin's grant, so that
// the sequence's close page can end it. It reports whether t took it: the
// sequence exists, has a close page, and src is what it grants.
func (t *Tracker) HoldGrant(sequence string, src netip.Prefix, until, now time.Time) bool {
	for i := range t.seqs {
		s := &t.seqs[i]
		if s.Name != sequence || s.ClosePage == "" || !src.IsValid() {
			continue
		}
		if s.source(src.Addr().Unmap()) != src {
			return false
		}
		t.hold(src, int32(i), until, now)
		return true
	}
	return false
}

// adoptGrants takes over the grants old holds of the sequences that t has
// under the same name with a close page and the same grant networks.
func (t *Tracker) adoptGrants(old *Tracker) {
	for k, until := range old.grants {
		o := &old.seqs[k.seq]
		for j := range t.seqs {
			n := &t.seqs[j]
			if n.Name == o.Name && n.ClosePage != "" && n.GrantBits4 == o.GrantBits4 && n.GrantBits6 == o.GrantBits6 {
				t.grants[grantKey{k.src, int32(j)}] = until
			}
		}
	}
}
