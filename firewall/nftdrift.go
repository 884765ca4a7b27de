package firewall

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/google/nftables"
)

// Drift and repair.

// nftWantedKeys groups the wanted entries by element.
func nftWantedKeys(want []entry) (map[nftKey][]entry, []nftKey) {
	m := map[nftKey][]entry{}
	var order []nftKey
	for _, e := range want {
		k := nftKeyOf(e)
		if _, ok := m[k]; !ok {
			order = append(order, k)
		}
		if !slices.Contains(m[k], e) {
			m[k] = append(m[k], e)
		}
	}
	return m, order
}

// nftElemOK tells whether a listed element is the one e makes: its comment,
// and an expiry that matches until.
func nftElemOK(g nftGrantElem, e entry, now time.Time) bool {
	if !g.ok || g.e.seq != e.seq || g.e.until != e.until || g.timeout <= 0 {
		return false
	}
	left := time.Unix(e.until, 0).Sub(now)
	return (g.expires - left).Abs() <= nftSlack
}

// program state of s compared with what t wants.
type nftProgram struct {
	noTable, noChain bool
	dormant          bool
	chainWrong       bool     // hooked or typed otherwise: to be recreated
	policy           bool     // its policy is not accept
	marker           bool     // the marker is not the first rule
	rules            bool     // the rules differ from the program
	foreignRules     int      // rules in our chain that are not ours
	setsMissing      []string // kinds
	setsWrong        []string // kinds: to be recreated
	ports, allow     bool     // the elements differ
}

func (p nftProgram) clean() bool {
	return !p.noTable && !p.noChain && !p.dormant && !p.chainWrong && !p.marker && !p.rules &&
		!p.policy && len(p.setsMissing) == 0 && len(p.setsWrong) == 0 && !p.ports && !p.allow
}

func (r *nftRules) state(s *nftSnap, t *tail) nftProgram {
	var p nftProgram
	if s.table == nil {
		p.noTable, p.noChain = true, true
		p.setsMissing = slices.Clone(nftSetKinds[:])
		return p
	}
	p.dormant = nftDormant(s.table)
	for _, kind := range nftSetKinds {
		have := s.sets[r.setName(kind)]
		switch {
		case have == nil:
			p.setsMissing = append(p.setsMissing, kind)
		case !nftSetOK(have, r.setObj(kind)):
			p.setsWrong = append(p.setsWrong, kind)
		}
	}
	ch := s.chains[r.chain]
	if ch == nil {
		p.noChain = true
	} else {
		p.chainWrong = !r.chainOK(ch)
		p.policy = ch.Policy == nil || *ch.Policy != nftables.ChainPolicyAccept
		have := s.rules[r.chain]
		want := r.program(t)
		if len(have) == 0 {
			p.marker = true
		} else if m, ok := nftIsMarker(have[0]); !ok || m != r.marker {
			p.marker = true
		}
		if len(have) != len(want) {
			p.rules = true
		}
		for i, ru := range have {
			if i < len(want) && nftRuleSig(ru) != nftRuleSig(want[i]) {
				p.rules = true
			}
			if _, ok := nftIsMarker(ru); !ok && !nftOurComment(nftRuleComment(ru)) {
				p.foreignRules++
			}
		}
	}
	if s.sets[r.setName(nftPorts)] != nil && !slices.Contains(p.setsWrong, nftPorts) {
		have, ok := r.parsePorts(s.elems[r.setName(nftPorts)])
		var want []Port
		if t != nil {
			want = t.ports
		}
		p.ports = !ok || !nftSamePorts(have, want)
	}
	if s.sets[r.setName(nftAllow)] != nil && !slices.Contains(p.setsWrong, nftAllow) {
		have, ok := r.parseAllow(s.elems[r.setName(nftAllow)])
		p.allow = !ok || !slices.Equal(have, r.allowRanges(t))
	}
	return p
}

func (r *nftRules) inspect(ctx context.Context, want, doomed []entry, t tail) (drift, error) {
	var d drift
	s, err := r.snapshot(ctx, true)
	if err != nil {
		return d, err
	}
	p := r.state(s, &t)
	if p.noChain || len(p.setsMissing) > 0 {
		d.noChain, d.missing, d.tail = true, len(want), t.protect
		return d, nil
	}
	d.marker = p.marker
	d.tail = p.dormant || p.chainWrong || p.policy || p.rules || len(p.setsWrong) > 0 || p.ports || p.allow
	d.extra = p.foreignRules
	now := r.rt.clock.Now()
	wanted, order := nftWantedKeys(want)
	doomedKeys := map[nftKey]bool{}
	for _, e := range doomed {
		doomedKeys[nftKeyOf(e)] = true
	}
	els, bad, _ := r.grantElems(s)
	d.extra += len(bad)
	have := map[nftKey]nftGrantElem{}
	for _, g := range els {
		if _, dup := have[g.k]; dup {
			d.extra++
			continue
		}
		have[g.k] = g
	}
	for _, k := range order {
		es := wanted[k]
		e := nftLatest(es)
		if time.Unix(e.until, 0).Compare(now) <= 0 {
			continue
		}
		g, ok := have[k]
		switch {
		case ok && nftElemOK(g, e, now):
		case !ok && k.kind == nftDoor && !r.freshDoor:
			d.used += len(es)
		default:
			d.missing += len(es)
		}
	}
	for k := range have {
		if _, ok := wanted[k]; !ok && !doomedKeys[k] {
			d.extra++
		}
	}
	return d, nil
}

// reconcile makes the family's chain and sets hold exactly the program,
// the tail and the wanted entries. The program is rebuilt in one batch
// (the chain flushed and its rules added again), so that protect is never
// absent; the elements follow, in batches of at most nftMaxOps operations.
func (r *nftRules) reconcile(ctx context.Context, want []entry, t tail) (lost, used []entry, err error) {
	s, err := r.snapshot(ctx, true)
	if err != nil {
		return nil, nil, err
	}
	if err := r.judge(s); err != nil {
		return nil, nil, err
	}
	tl := t
	p := r.state(s, &tl)
	freshDoor := r.freshDoor || s.sets[r.setName(nftDoor)] == nil || slices.Contains(p.setsWrong, nftDoor)
	recreated := map[string]bool{}
	for _, kind := range slices.Concat(p.setsMissing, p.setsWrong) {
		recreated[kind] = true
	}
	if !p.clean() {
		if err := r.rebuild(ctx, s, p, &tl); err != nil {
			return nil, nil, err
		}
	}
	r.freshDoor = false
	r.tail = &tl

	now := r.rt.clock.Now()
	wanted, order := nftWantedKeys(want)
	els, bad, badKinds := r.grantElems(s)
	have := map[nftKey]nftGrantElem{}
	var ops []nftElemOp
	for i, el := range bad {
		if recreated[badKinds[i]] {
			continue
		}
		drop := nftKeyOnly(el)
		drop.Timeout = nftDropTimeout
		ops = append(ops, nftElemOp{kind: badKinds[i], drop: &drop, why: "not webknock's", raw: el})
	}
	for _, g := range els {
		if recreated[g.k.kind] {
			continue
		}
		if _, dup := have[g.k]; dup {
			continue
		}
		have[g.k] = g
	}
	for k, g := range have {
		if _, ok := wanted[k]; ok {
			continue
		}
		why := "not a known grant"
		if !g.ok {
			why = "not webknock's"
		} else if g.e.until <= now.Unix() {
			why = "expired"
		}
		el := r.dropElem(k)
		ops = append(ops, nftElemOp{kind: k.kind, drop: &el, why: why, g: g})
	}
	var errs []error
	keys := map[nftKey][]entry{}
	for _, k := range order {
		es := wanted[k]
		if g, ok := have[k]; ok && nftElemOK(g, nftLatest(es), now) {
			keys[k] = es
		}
	}
	for _, k := range order {
		es := wanted[k]
		e := nftLatest(es)
		_, ok := have[k]
		switch {
		case keys[k] != nil:
		case !ok && k.kind == nftDoor && !freshDoor:
			used = append(used, es...)
		default:
			if o, overlaps := nftOverlap(k, maps.Keys(keys)); overlaps {
				errs = append(errs, fmt.Errorf("%s: restore %s: the network overlaps %s on the same port, which a set of concatenated ranges cannot hold",
					r.name(), r.describe(e), o))
				lost = append(lost, es...)
				continue
			}
			el, live := r.putElem(k, e, now)
			keys[k] = es // if live, taken back should its batch fail; else ended: the worker forgets it
			if !live {
				continue
			}
			ops = append(ops, nftElemOp{kind: k.kind, put: &el, key: k, es: es, why: map[bool]string{true: "refreshed", false: "restored"}[ok]})
		}
	}
	logged := 0
	for start := 0; start < len(ops); {
		batch := map[string]*nftElemOps{}
		n, end := 0, start
		for ; end < len(ops) && (n == 0 || n+3 <= nftMaxOps); end++ {
			op := ops[end]
			b := batch[op.kind]
			if b == nil {
				b = &nftElemOps{}
				batch[op.kind] = b
			}
			if op.put != nil {
				b.put = append(b.put, *op.put)
				n += 3
			} else {
				b.drop = append(b.drop, *op.drop)
				n += 2
			}
		}
		chunk := ops[start:end]
		start = end
		if err := r.applyElems(ctx, "reconcile", batch); err != nil {
			errs = append(errs, fmt.Errorf("%s: reconcile %d elements of %s: %w", r.name(), len(chunk), r.where(), err))
			for _, op := range chunk {
				if op.put != nil {
					delete(keys, op.key)
					lost = append(lost, op.es...)
				}
			}
			continue
		}
		for _, op := range chunk {
			if logged < nftMaxLogged {
				logged++
				if op.put != nil {
					r.log.Info("grant element "+op.why, keyFamily, r.fam, keyRule, r.describe(nftLatest(op.es)))
				} else {
					r.log.Info("element deleted", keyFamily, r.fam, keyRule, r.describeElem(op), keyReason, op.why)
				}
			}
		}
	}
	if len(ops) > logged {
		r.log.Info("more elements reconciled", keyFamily, r.fam, keyCount, len(ops)-logged)
	}
	r.keys = keys
	clear(r.ends) // the elements' timeouts as put here are not known
	return lost, used, errors.Join(errs...)
}

// nftMaxLogged bounds the elements a reconcile logs one by one.
const nftMaxLogged = 20

// nftElemOp is one element change of a reconcile.
type nftElemOp struct {
	kind string
	put  *nftables.SetElement // refresh or restore
	drop *nftables.SetElement // delete
	key  nftKey
	es   []entry // put: the entries of the element
	g    nftGrantElem
	raw  nftables.SetElement // drop of an element not of our form
	why  string
}

func (r *nftRules) describeElem(op nftElemOp) string {
	if op.g.ok {
		return r.describe(op.g.e)
	}
	if op.g.k.kind != "" {
		k := op.g.k
		return fmt.Sprintf("%s saddr %s . %s . %d @%s (comment %q)", r.ipWord(), nftSrcString(k.src), k.port.Proto, k.port.Number,
			r.setName(k.kind), op.g.raw.Comment)
	}
	return fmt.Sprintf("@%s element %x (comment %q)", r.setName(op.kind), op.raw.Key, op.raw.Comment)
}

// rebuild puts the table, the chain, the sets of p back in one batch: the
// chain flushed and its whole program added again, the guarded ports and
// always_allow networks replaced. Sets of the wrong type are recreated
// (their elements follow in reconcile).
func (r *nftRules) rebuild(ctx context.Context, s *nftSnap, p nftProgram, t *tail) error {
	ch := s.chains[r.chain]
	if p.dormant {
		if err := r.wake(ctx); err != nil {
			return err
		}
	}
	err := r.call(ctx, "rebuild", func(ctx context.Context, c *nftables.Conn) error {
		c.AddTable(r.tableObj())
		if ch != nil {
			// Rules refer to the sets: gone first.
			c.FlushChain(r.chainObj())
			if p.chainWrong {
				c.DelChain(r.chainObj())
			}
		}
		for _, kind := range p.setsWrong {
			c.DelSet(r.setObj(kind))
		}
		for _, kind := range slices.Concat(p.setsMissing, p.setsWrong) {
			var els []nftables.SetElement
			switch kind {
			case nftPorts:
				els = nftPortElems(t)
			case nftAllow:
				els = nftAllowElems(r.allowRanges(t))
			}
			if err := c.AddSet(r.setObj(kind), els); err != nil {
				return err
			}
		}
		if p.ports {
			set := r.setObj(nftPorts)
			c.FlushSet(set)
			if els := nftPortElems(t); len(els) > 0 {
				if err := c.SetAddElements(set, els); err != nil {
					return err
				}
			}
		}
		if p.allow {
			set := r.setObj(nftAllow)
			c.FlushSet(set)
			if els := nftAllowElems(r.allowRanges(t)); len(els) > 0 {
				if err := c.SetAddElements(set, els); err != nil {
					return err
				}
			}
		}
		if ch == nil || p.chainWrong || p.policy {
			c.AddChain(r.chainObj()) // sets the policy of one that exists
		}
		for _, ru := range r.program(t) {
			c.AddRule(ru)
		}
		return nftFlush(ctx, c)
	})
	if err != nil {
		return fmt.Errorf("%s: rebuild %s: %w", r.name(), r.where(), err)
	}
	var fixed []string
	switch {
	case p.noTable:
		fixed = append(fixed, "table created")
	case p.dormant:
		fixed = append(fixed, "table woken")
	}
	switch {
	case p.noChain:
		fixed = append(fixed, "chain created")
	case p.chainWrong:
		fixed = append(fixed, "chain recreated with its hook")
	case p.policy:
		fixed = append(fixed, "policy accept restored")
	case p.marker:
		fixed = append(fixed, "ownership marker restored")
	}
	if p.rules && !p.noChain {
		fixed = append(fixed, "rules rebuilt")
	}
	for _, kind := range p.setsMissing {
		fixed = append(fixed, "set "+r.setName(kind)+" created")
	}
	for _, kind := range p.setsWrong {
		fixed = append(fixed, "set "+r.setName(kind)+" recreated")
	}
	if p.ports {
		fixed = append(fixed, "guarded ports replaced")
	}
	if p.allow {
		fixed = append(fixed, "always_allow networks replaced")
	}
	r.log.Info("chain rebuilt", keyFamily, r.fam, keyChain, r.where(), keyFixed, fixed, keyProtect, t.protect)
	return nil
}

// usedDoors counts the wanted door entries whose element is gone: a
// connection used them. It lists the door set alone, so that it costs
// little however many other grants there are.
func (r *nftRules) usedDoors(ctx context.Context, want []entry) (int, error) {
	var els []nftables.SetElement
	err := r.call(ctx, "list", func(ctx context.Context, c *nftables.Conn) error {
		set, err := c.GetSetByName(r.tableObj(), r.setName(nftDoor))
		if err != nil {
			return err
		}
		els, err = c.GetSetElements(set)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("%s: list set %s: %w", r.name(), r.setName(nftDoor), err)
	}
	have := make(map[nftKey]bool, len(els))
	for _, el := range els {
		if k, ok := r.parseElem(nftDoor, el); ok {
			have[k] = true
		}
	}
	n := 0
	for _, e := range want {
		if e.door && !have[nftKeyOf(e)] {
			n++
		}
	}
	return n, nil
}
