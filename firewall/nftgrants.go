package firewall

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
)

// Grants.

// nftGrantElem is one element of grant, net or door as listed: its key and
// what its comment says.
type nftGrantElem struct {
	k       nftKey
	e       entry // from the comment; ok false: no comment of ours
	ok      bool
	expires time.Duration
	timeout time.Duration
	raw     nftables.SetElement
}

// grantElems reads the elements of grant, net and door in s.
func (r *nftRules) grantElems(s *nftSnap) (els []nftGrantElem, bad []nftables.SetElement, badSet []string) {
	for _, kind := range []string{nftGrant, nftNet, nftDoor} {
		for _, el := range s.elems[r.setName(kind)] {
			k, ok := r.parseElem(kind, el)
			if !ok {
				bad = append(bad, el)
				badSet = append(badSet, kind)
				continue
			}
			g := nftGrantElem{k: k, expires: el.Expires, timeout: el.Timeout, raw: el}
			if seq, until, ok := parseGrantComment(el.Comment); ok {
				g.e = entry{src: k.src, port: k.port, seq: seq, until: until, door: kind == nftDoor}
				g.ok = true
			}
			els = append(els, g)
		}
	}
	return els, bad, badSet
}

func (r *nftRules) list(ctx context.Context) ([]entry, error) {
	s, err := r.snapshot(ctx, true)
	if err != nil {
		return nil, err
	}
	if err := r.complete(s); err != nil {
		return nil, fmt.Errorf("%s: list %s: %w", r.name(), r.where(), err)
	}
	els, _, _ := r.grantElems(s)
	var es []entry
	for _, g := range els {
		if g.ok {
			es = append(es, g.e)
		}
	}
	return es, nil
}

// complete says errNoChain when the table, the family's chain or one of
// its sets is missing.
func (r *nftRules) complete(s *nftSnap) error {
	switch {
	case s.table == nil:
		return fmt.Errorf("%w: no table inet %s", errNoChain, r.table)
	case s.chains[r.chain] == nil:
		return fmt.Errorf("%w: no chain %s", errNoChain, r.where())
	}
	for _, kind := range nftSetKinds {
		if s.sets[r.setName(kind)] == nil {
			return fmt.Errorf("%w: no set %s in table inet %s", errNoChain, r.setName(kind), r.table)
		}
	}
	return nil
}

// nftElemOps are the element changes of one batch on one set: drop are
// deleted (added first, so that the delete of one that has just expired
// cannot fail the batch); put are then refreshed (added, deleted and added
// again with their timeout, which refreshes it on kernels before 6.12 too).
// The drops go first: a network's range may overlap one that goes. fresh
// are elements of keys that hold no entry: no element of webknock's is
// there to refresh, so a plain add does (one message, not three); an
// element someone else put there meanwhile keeps its own timeout until the
// monitor's hint has it reconciled.
type nftElemOps struct {
	put, drop, fresh []nftables.SetElement
}

// putElem is the element of k with the timeout up to until and the
// comment of e; ok is false when until has passed.
func (r *nftRules) putElem(k nftKey, e entry, now time.Time) (nftables.SetElement, bool) {
	left := time.Unix(e.until, 0).Sub(now)
	if left < time.Millisecond {
		return nftables.SetElement{}, false
	}
	key, end := r.elemKey(k)
	return nftables.SetElement{Key: key, KeyEnd: end, Timeout: left, Comment: grantComment(e.seq, e.until)}, true
}

func (r *nftRules) dropElem(k nftKey) nftables.SetElement {
	key, end := r.elemKey(k)
	return nftables.SetElement{Key: key, KeyEnd: end, Timeout: nftDropTimeout}
}

// nftKeyOnly is el as a delete names it.
func nftKeyOnly(el nftables.SetElement) nftables.SetElement {
	return nftables.SetElement{Key: el.Key, KeyEnd: el.KeyEnd}
}

// applyElems sends one batch of element changes.
func (r *nftRules) applyElems(ctx context.Context, op string, ops map[string]*nftElemOps) error {
	return r.call(ctx, op, func(ctx context.Context, c *nftables.Conn) error {
		for _, kind := range []string{nftGrant, nftNet, nftDoor} {
			o := ops[kind]
			if o == nil || len(o.put)+len(o.drop)+len(o.fresh) == 0 {
				continue
			}
			set := r.setObj(kind)
			for _, els := range [][]nftables.SetElement{o.drop, o.put} {
				if len(els) == 0 {
					continue
				}
				keys := make([]nftables.SetElement, len(els))
				for i, el := range els {
					keys[i] = nftKeyOnly(el)
				}
				if err := c.SetAddElements(set, els); err != nil {
					return err
				}
				if err := c.SetDeleteElements(set, keys); err != nil {
					return err
				}
			}
			if put := slices.Concat(o.put, o.fresh); len(put) > 0 {
				if err := c.SetAddElements(set, put); err != nil {
					return err
				}
			}
		}
		return nftFlush(ctx, c)
	})
}

// nftOverlap finds among keys a network element that k's would overlap: a
// set of concatenated ranges refuses a range that overlaps another but is
// not it.
func nftOverlap(k nftKey, keys iter.Seq[nftKey]) (netip.Prefix, bool) {
	if k.kind != nftNet {
		return netip.Prefix{}, false
	}
	for o := range keys {
		if o.kind == nftNet && o.port == k.port && o.src != k.src && o.src.Overlaps(k.src) {
			return o.src, true
		}
	}
	return netip.Prefix{}, false
}

func (r *nftRules) add(ctx context.Context, es []entry) ([]entry, error) {
	if len(es) == 0 {
		return nil, nil
	}
	now := r.rt.clock.Now()
	// The keys touched, in order, with their entries after the add.
	var order []nftKey
	after := map[nftKey][]entry{}
	byKey := map[nftKey][]entry{}
	for _, e := range es {
		k := nftKeyOf(e)
		if _, ok := after[k]; !ok {
			order = append(order, k)
			after[k] = slices.Clone(r.keys[k])
		}
		if !slices.Contains(after[k], e) {
			after[k] = append(after[k], e)
		}
		byKey[k] = append(byKey[k], e)
	}
	for i, k := range order {
		if len(r.keys[k]) > 0 {
			continue
		}
		if o, ok := nftOverlap(k, iter.Seq[nftKey](func(yield func(nftKey) bool) {
			for o := range r.keys {
				if !yield(o) {
					return
				}
			}
			for _, o := range order[:i] {
				if !yield(o) {
					return
				}
			}
		})); ok {
			return nil, fmt.Errorf("%s: add %s to %s: the network overlaps %s on the same port, which a set of concatenated ranges cannot hold",
				r.name(), nftSrcString(k.src), r.setName(nftNet), o)
		}
	}
	var done []entry // applied by the batches so far
	timeouts := map[nftKey]time.Duration{}
	for start := 0; start < len(order); {
		ops := map[string]*nftElemOps{}
		n, end := 0, start
		for ; end < len(order) && (n == 0 || n+3 <= nftMaxOps); end++ {
			k := order[end]
			o := ops[k.kind]
			if o == nil {
				o = &nftElemOps{}
				ops[k.kind] = o
			}
			el, ok := r.putElem(k, nftLatest(after[k]), now)
			switch {
			case ok && len(r.keys[k]) == 0:
				o.fresh = append(o.fresh, el)
			case ok:
				o.put = append(o.put, el)
			default:
				o.drop = append(o.drop, r.dropElem(k))
			}
			timeouts[k] = el.Timeout
			n += 3
		}
		chunk := order[start:end]
		if err := r.applyElems(ctx, "add", ops); err != nil {
			what := fmt.Sprintf("%d elements", len(chunk))
			if len(es) == 1 {
				what = r.describe(es[0])
			}
			if nftExists(err) {
				err = fmt.Errorf("%w (a network overlaps another on the same port?)", err)
			}
			return done, fmt.Errorf("%s: add %s to %s: %w", r.name(), what, r.where(), err)
		}
		for _, k := range chunk {
			r.keys[k] = after[k]
			r.ends.put(k, timeouts[k])
			done = append(done, byKey[k]...)
		}
		start = end
	}
	return nil, nil
}

// del deletes es in batches of at most nftMaxOps operations. A key that
// still holds another entry of webknock's keeps its element, refreshed to
// that entry's until; the others are deleted.
func (r *nftRules) del(ctx context.Context, es ...entry) ([]entry, error) {
	// The keys touched, in order, with their entries after the delete.
	var order []nftKey
	after := map[nftKey][]entry{}
	byKey := map[nftKey][]entry{}
	for _, e := range es {
		k := nftKeyOf(e)
		if _, ok := after[k]; !ok {
			order = append(order, k)
			after[k] = slices.Clone(r.keys[k])
		}
		after[k] = slices.DeleteFunc(after[k], func(x entry) bool { return x == e })
		byKey[k] = append(byKey[k], e)
	}
	now := r.rt.clock.Now()
	timeouts := map[nftKey]time.Duration{}
	for start := 0; start < len(order); {
		ops := map[string]*nftElemOps{}
		n, end := 0, start
		for ; end < len(order) && (n == 0 || n+3 <= nftMaxOps); end++ {
			k := order[end]
			o := ops[k.kind]
			if o == nil {
				o = &nftElemOps{}
				ops[k.kind] = o
			}
			if rest := after[k]; len(rest) > 0 {
				if el, ok := r.putElem(k, nftLatest(rest), now); ok {
					o.put = append(o.put, el)
					timeouts[k] = el.Timeout
					n += 3
					continue
				}
			}
			if r.ends.gone(k) {
				continue // the kernel's timeout took it
			}
			o.drop = append(o.drop, r.dropElem(k))
			n += 2
		}
		chunk := order[start:end]
		var err error
		if n > 0 {
			err = r.applyElems(ctx, "delete", ops)
		}
		switch {
		case errors.Is(err, errNoChain): // the set is gone, and the elements with it
		case err != nil:
			var left []entry
			for _, k := range order[start:] {
				left = append(left, byKey[k]...)
			}
			what := fmt.Sprintf("%d elements", len(left))
			if len(left) == 1 {
				what = r.describe(left[0])
			}
			return left, fmt.Errorf("%s: delete %s from %s: %w", r.name(), what, r.where(), err)
		}
		for _, k := range chunk {
			r.ends.put(k, timeouts[k])
			if len(after[k]) > 0 {
				r.keys[k] = after[k]
			} else {
				delete(r.keys, k)
			}
		}
		start = end
	}
	return nil, nil
}
