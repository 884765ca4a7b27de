package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The grants of the iptables backend live in two ipsets per family, not in
// rules: <chain>-g4 (hash:ip,port, a grant to one address) and <chain>-n4
// (hash:net,port, to a network), -g6 and -n6 for IPv6. Our chain matches
// each with one rule, so a packet costs two hash lookups however many
// grants there are, and adding or deleting a grant is one netlink message.
// Each element has the kernel's timeout up to its grant's end, and a
// comment "webknock:SEQ:UNTIL" from which the grants are rebuilt when the
// state file is gone.

// iptKey is an element of a grant set: what the set tells apart.
type iptKey struct {
	src  netip.Prefix
	port Port
}

func iptKeyOf(e entry) iptKey { return iptKey{e.src, e.port} }

// setName is the name of the family's set for hosts or networks.
func (r *iptRules) setName(net bool) string {
	kind := "g"
	if net {
		kind = "n"
	}
	v := "4"
	if r.fam == ipv6 {
		v = "6"
	}
	return r.chain + "-" + kind + v
}

// setOf names the set of k.
func (r *iptRules) setOf(k iptKey) string { return r.setName(!k.src.IsSingleIP()) }

// setSpecs are the family's grant sets.
func (r *iptRules) setSpecs() []ipsetSpec {
	return []ipsetSpec{{r.setName(false), ipsetHosts, r.fam}, {r.setName(true), ipsetNets, r.fam}}
}

// setRules are the rules of our chain that match the grant sets, in order.
func (r *iptRules) setRules() []rule {
	return []rule{{kind: kindSet, set: r.setName(false)}, {kind: kindSet, set: r.setName(true)}}
}

// elemOf is the element of k for the entry e: the kernel's timeout up to
// e's until (at most what the kernel takes; the integrity check puts back
// an element that outlived its timeout). ok is false when until has passed.
func elemOf(k iptKey, e entry, now time.Time) (ipsetElem, bool) {
	left := time.Unix(e.until, 0).Sub(now)
	if left <= 0 {
		return ipsetElem{}, false
	}
	secs := min((left+time.Second-1)/time.Second, ipsetMaxTimeout)
	return ipsetElem{src: k.src, port: k.port, timeout: uint32(secs), comment: grantComment(e.seq, e.until)}, true
}

// entryOfElem is the entry an element's comment says it is.
func entryOfElem(el ipsetElem) (entry, bool) {
	seq, until, ok := parseGrantComment(el.comment)
	if !ok || !el.src.IsValid() {
		return entry{}, false
	}
	return entry{src: el.src, port: el.port, seq: seq, until: until}, true
}

// latest is the entry of es that ends last (the first of those).
func latest(es []entry) entry {
	l := es[0]
	for _, e := range es[1:] {
		if e.until > l.until {
			l = e
		}
	}
	return l
}

// setOps are element changes, per set, and the timeouts of the elements
// put, by key.
type setOps struct {
	put, remove map[string][]ipsetElem
	timeouts    map[iptKey]time.Duration
}

func newSetOps() *setOps {
	return &setOps{put: map[string][]ipsetElem{}, remove: map[string][]ipsetElem{}, timeouts: map[iptKey]time.Duration{}}
}

// apply sends the changes: the deletes first, then the adds.
func (r *iptRules) applySetOps(ctx context.Context, op string, o *setOps) error {
	sets := r.t.Sets()
	for _, spec := range r.setSpecs() {
		if els := o.remove[spec.name]; len(els) > 0 {
			if err := r.rt.do(ctx, op, func(ctx context.Context, _ int) error { return sets.remove(ctx, spec.name, els) }); err != nil {
				return err
			}
		}
	}
	for _, spec := range r.setSpecs() {
		if els := o.put[spec.name]; len(els) > 0 {
			if err := r.rt.do(ctx, op, func(ctx context.Context, _ int) error { return sets.put(ctx, spec.name, els) }); err != nil {
				return err
			}
		}
	}
	return nil
}

// plan groups es by element; after holds each element's entries once the
// change is made, starting from what the sets hold now.
func (r *iptRules) plan(es []entry, change func(after []entry, e entry) []entry) (order []iptKey, after map[iptKey][]entry) {
	after = map[iptKey][]entry{}
	for _, e := range es {
		k := iptKeyOf(e)
		if _, ok := after[k]; !ok {
			order = append(order, k)
			after[k] = slices.Clone(r.keys[k])
		}
		after[k] = change(after[k], e)
	}
	return order, after
}

// ops are the element changes that make the sets hold after.
func (r *iptRules) ops(order []iptKey, after map[iptKey][]entry) *setOps {
	now := r.rt.clock.Now()
	o := newSetOps()
	for _, k := range order {
		if es := after[k]; len(es) > 0 {
			if el, ok := elemOf(k, latest(es), now); ok {
				o.put[r.setOf(k)] = append(o.put[r.setOf(k)], el)
				o.timeouts[k] = time.Duration(el.timeout) * time.Second
				continue
			}
		}
		if r.ends.gone(k) {
			continue // the kernel's timeout took it
		}
		o.remove[r.setOf(k)] = append(o.remove[r.setOf(k)], ipsetElem{src: k.src, port: k.port})
	}
	return o
}

// keep records what the sets now hold for the keys of order, and when the
// timeouts of the elements put end.
func (r *iptRules) keep(order []iptKey, after map[iptKey][]entry, o *setOps) {
	for _, k := range order {
		r.ends.put(k, o.timeouts[k])
		if len(after[k]) > 0 {
			r.keys[k] = after[k]
		} else {
			delete(r.keys, k)
		}
	}
}

func (r *iptRules) add(ctx context.Context, es []entry) ([]entry, error) {
	if len(es) == 0 {
		return nil, nil
	}
	order, after := r.plan(es, func(after []entry, e entry) []entry {
		if !slices.Contains(after, e) {
			after = append(after, e)
		}
		return after
	})
	o := r.ops(order, after)
	if err := r.applySetOps(ctx, "add", o); err != nil {
		// Elements go one message each: those before the failure, and
		// one whose call was abandoned, may be there.
		what := fmt.Sprintf("%d elements", len(es))
		if len(es) == 1 {
			what = r.describe(es[0])
		}
		var left []entry
		if len(order) > 1 || maybeApplied(err) {
			left = es
		}
		return left, fmt.Errorf("%s: add %s to %s: %w", r.fam.command(), what, r.setOf(order[0]), err)
	}
	r.keep(order, after, o)
	return nil, nil
}

// del deletes the elements of es; an element that holds another entry of
// webknock's (a grant of another sequence to the same client and port) is
// kept, with that entry's timeout and comment. Rules of an earlier
// webknock's, one per grant in our chain, are deleted too.
func (r *iptRules) del(ctx context.Context, es ...entry) ([]entry, error) {
	if len(es) == 0 {
		return nil, nil
	}
	order, after := r.plan(es, func(after []entry, e entry) []entry {
		return slices.DeleteFunc(after, func(x entry) bool { return x == e })
	})
	o := r.ops(order, after)
	err := r.applySetOps(ctx, "delete", o)
	switch {
	case errors.Is(err, errNoChain): // the set is gone, and its elements with it
	case err != nil:
		what := fmt.Sprintf("%d elements", len(es))
		if len(es) == 1 {
			what = r.describe(es[0])
		}
		return es, fmt.Errorf("%s: delete %s from %s: %w", r.fam.command(), what, r.setOf(order[0]), err)
	}
	r.keep(order, after, o)
	return nil, nil
}

func (r *iptRules) describe(e entry) string {
	el, _ := elemOf(iptKeyOf(e), e, time.Unix(e.until-1, 0))
	return el.String() + " comment " + strconv.Quote(el.comment)
}

// listSets returns the elements of the grant sets, by set; a set that
// does not exist is errNoChain, one of another type an error.
func (r *iptRules) listSets(ctx context.Context) (map[string][]ipsetElem, error) {
	sets := r.t.Sets()
	out := map[string][]ipsetElem{}
	for _, spec := range r.setSpecs() {
		var (
			typ string
			els []ipsetElem
		)
		err := r.rt.do(ctx, "list", func(ctx context.Context, _ int) (err error) {
			typ, els, err = sets.list(ctx, spec.name)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.fam.command(), err)
		}
		if typ != spec.typ {
			return nil, &foreignSetError{set: spec.name, typ: typ, want: spec.typ}
		}
		out[spec.name] = els
	}
	return out, nil
}

// ensureSets creates the grant sets that are missing.
func (r *iptRules) ensureSets(ctx context.Context) error {
	sets := r.t.Sets()
	for _, spec := range r.setSpecs() {
		if err := r.rt.do(ctx, "create", func(ctx context.Context, _ int) error { return sets.create(ctx, spec) }); err != nil {
			return fmt.Errorf("%s: %w", r.fam.command(), err)
		}
	}
	return nil
}

// setsOwned refuses a set of our name with another type.
func (r *iptRules) setsOwned(ctx context.Context) error {
	_, err := r.listSets(ctx)
	if errors.Is(err, errNoChain) {
		return nil
	}
	return err
}

// destroySets destroys the grant sets; our chain must be gone first.
func (r *iptRules) destroySets(ctx context.Context) error {
	sets := r.t.Sets()
	for _, spec := range r.setSpecs() {
		if err := r.rt.do(ctx, "destroy", func(ctx context.Context, _ int) error { return sets.destroy(ctx, spec.name) }); err != nil {
			return fmt.Errorf("%s: %w", r.fam.command(), err)
		}
	}
	return nil
}

// setDrift compares the sets' elements with the wanted entries: elements
// missing (or holding another entry than the latest wanted), and elements
// that are not wanted, bar those of doomed entries.
func (r *iptRules) setDrift(have map[string][]ipsetElem, counted map[string]bool, want, doomed []entry) (missing, extra int) {
	wanted := groupKeys(want)
	gone := map[iptKey]bool{}
	for _, e := range doomed {
		gone[iptKeyOf(e)] = true
	}
	seen := map[iptKey]bool{}
	for k := range wanted {
		if counted[r.setOf(k)] {
			seen[k] = true
		}
	}
	for _, els := range have {
		for _, el := range els {
			k := iptKey{el.src, el.port}
			es, ok := wanted[k]
			switch {
			case ok && el.comment == grantComment(latest(es).seq, latest(es).until):
				seen[k] = true
			case ok:
			case gone[k]:
			default:
				extra++
			}
		}
	}
	return len(wanted) - len(seen), extra
}

// fullListEvery is how often (in checks) the sets are listed whole even
// when each holds as many elements as wanted: an element replaced by
// another leaves the count as it was.
const fullListEvery = 10

// inspectSets lists the grant sets for the integrity check, but a set
// whose header counts exactly the elements wanted in it is taken as in
// place (counted) and not listed, unless this is a fullListEvery-th
// check: an idle check reads one header per set, not every element. A
// count that differs (a flush, a foreign element, an element the kernel
// timed out and has not collected yet) lists the set.
func (r *iptRules) inspectSets(ctx context.Context, want []entry) (have map[string][]ipsetElem, counted map[string]bool, err error) {
	r.inspects++
	if r.inspects%fullListEvery == 0 {
		have, err = r.listSets(ctx)
		return have, nil, err
	}
	wanted := map[string]int{}
	for k := range groupKeys(want) {
		wanted[r.setOf(k)]++
	}
	sets := r.t.Sets()
	have, counted = map[string][]ipsetElem{}, map[string]bool{}
	for _, spec := range r.setSpecs() {
		var (
			typ string
			n   int
		)
		err := r.rt.do(ctx, "list", func(ctx context.Context, _ int) (err error) {
			typ, n, err = sets.count(ctx, spec.name)
			return err
		})
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", r.fam.command(), err)
		}
		if typ != spec.typ {
			return nil, nil, &foreignSetError{set: spec.name, typ: typ, want: spec.typ}
		}
		if n == wanted[spec.name] {
			counted[spec.name] = true
			continue
		}
		var els []ipsetElem
		err = r.rt.do(ctx, "list", func(ctx context.Context, _ int) (err error) {
			typ, els, err = sets.list(ctx, spec.name)
			return err
		})
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", r.fam.command(), err)
		}
		if typ != spec.typ {
			return nil, nil, &foreignSetError{set: spec.name, typ: typ, want: spec.typ}
		}
		have[spec.name] = els
	}
	return have, counted, nil
}

// groupKeys groups entries by element.
func groupKeys(es []entry) map[iptKey][]entry {
	out := map[iptKey][]entry{}
	for _, e := range es {
		k := iptKeyOf(e)
		out[k] = append(out[k], e)
	}
	return out
}

// reconcileSets makes the sets hold exactly the wanted entries' elements,
// with the latest entry's timeout and comment: it returns the wanted
// entries whose elements could not be put.
func (r *iptRules) reconcileSets(ctx context.Context, want []entry) (lost []entry, err error) {
	// Until the sets are listed nothing is known lost: the next check
	// tries again.
	if err := r.ensureSets(ctx); err != nil {
		return nil, err
	}
	have, err := r.listSets(ctx)
	if err != nil {
		return nil, err
	}
	wanted := groupKeys(want)
	now := r.rt.clock.Now()
	o := newSetOps()
	held := map[iptKey]bool{}
	for name, els := range have {
		for _, el := range els {
			k := iptKey{el.src, el.port}
			es, ok := wanted[k]
			if ok && el.comment == grantComment(latest(es).seq, latest(es).until) {
				held[k] = true
				continue
			}
			if !ok {
				o.remove[name] = append(o.remove[name], el.key())
				reason := "not a known grant"
				if e, ours := entryOfElem(el); ours && e.until <= now.Unix() {
					reason = "expired"
				} else if !ours {
					reason = "not webknock's"
				}
				r.log.Info("element deleted", keyFamily, r.fam, keyRule, el.String()+" in "+name, keyReason, reason)
			}
		}
	}
	var order []iptKey
	for k := range wanted {
		if !held[k] {
			order = append(order, k)
		}
	}
	slices.SortFunc(order, func(a, b iptKey) int {
		return strings.Compare(a.src.String()+a.port.String(), b.src.String()+b.port.String())
	})
	for _, k := range order {
		if el, ok := elemOf(k, latest(wanted[k]), now); ok {
			o.put[r.setOf(k)] = append(o.put[r.setOf(k)], el)
			r.log.Info("grant element restored", keyFamily, r.fam, keyRule, el.String()+" in "+r.setOf(k))
		}
	}
	if err := r.applySetOps(ctx, "reconcile", o); err != nil {
		// The elements that were to be put back may not be there.
		for _, k := range order {
			lost = append(lost, wanted[k]...)
		}
		return lost, fmt.Errorf("%s: %w", r.fam.command(), err)
	}
	r.keys = wanted
	clear(r.ends) // the elements' timeouts as put here are not known
	return nil, nil
}

// foreignSetError refuses an ipset of our name of another type.
type foreignSetError struct {
	set, typ, want string
}

func (e *foreignSetError) Error() string {
	return fmt.Sprintf("ipset %s exists with type %s, not %s, and is not webknock's; destroy it, or choose another firewall.chain", e.set, e.typ, e.want)
}
