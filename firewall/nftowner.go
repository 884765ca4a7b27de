package firewall

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
)

// Ownership.

// judge refuses a table that is not ours: one with chains other than ipv4
// and ipv6 or sets other than ours, a family chain of another webknock's
// (its marker and not ours), or one without our marker holding rules that
// webknock did not write. A table without any marker whose every object is
// recognisably webknock's (an empty chain, say) is ours.
func (r *nftRules) judge(s *nftSnap) error {
	if s.table == nil {
		return nil
	}
	var foreign []string
	for name := range s.chains {
		if !slices.Contains(nftChains[:], name) {
			foreign = append(foreign, "chain "+name)
		}
	}
	ours := map[string]bool{}
	for _, fam := range families {
		for _, kind := range nftSetKinds {
			ours[kind+nftSuffix(fam)] = true
		}
	}
	for name := range s.sets {
		if !ours[name] {
			foreign = append(foreign, "set "+name)
		}
	}
	for _, name := range nftChains {
		rules := s.rules[name]
		marked, n := false, 0
		var other *rule
		for _, ru := range rules {
			m, isM := nftIsMarker(ru)
			switch {
			case isM && m == r.marker:
				marked = true
			case isM && other == nil:
				other = &m
			case !isM && !nftOurComment(nftRuleComment(ru)):
				n++
			}
		}
		switch {
		case marked:
		case other != nil:
			return &nftOtherOwnerError{table: r.table, chain: name, owner: other.owner}
		case n > 0:
			foreign = append(foreign, fmt.Sprintf("%d %s in chain %s", n, plural(n, "rule", "rules"), name))
		}
	}
	if len(foreign) > 0 {
		slices.Sort(foreign)
		return &nftForeignTableError{table: r.table, what: foreign}
	}
	return nil
}

// nftOtherOwnerError refuses the table of a webknock with another state
// directory: two daemons on one table would delete each other's grants.
type nftOtherOwnerError struct {
	table, chain string
	owner        string // its state directory; "" for none
}

func (e *nftOtherOwnerError) Error() string {
	return fmt.Sprintf("table inet %s (chain %s) belongs to %s; stop that one and run webknock flush with its configuration, or choose another firewall.table",
		e.table, e.chain, ownerOf(e.owner))
}

// nftForeignTableError refuses a table of another program's: deleting it
// would undo that program's work.
type nftForeignTableError struct {
	table string
	what  []string
}

func (e *nftForeignTableError) Error() string {
	return fmt.Sprintf("table inet %s exists and is not webknock's: it holds %s that webknock did not write; choose another firewall.table, or delete that table if nothing needs it (nft delete table inet %s)",
		e.table, strings.Join(e.what, ", "), e.table)
}

func (r *nftRules) probe(ctx context.Context) error {
	s, err := r.snapshot(ctx, false)
	if err != nil {
		return err
	}
	if err := r.judge(s); err != nil {
		return &OptionError{Option: "table", Err: err}
	}
	return nil
}

func (r *nftRules) owned(ctx context.Context) error {
	s, err := r.snapshot(ctx, false)
	if err != nil {
		return err
	}
	return r.judge(s)
}

func (r *nftRules) flush(ctx context.Context) error {
	gone := false
	err := r.call(ctx, "delete table", func(ctx context.Context, c *nftables.Conn) error {
		c.DelTable(r.tableObj())
		err := nftFlush(ctx, c)
		if err != nil && nftNotExist(err) {
			gone = true
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: delete table inet %s: %w", r.name(), r.table, err)
	}
	if !gone {
		r.log.Info("table deleted", keyFamily, r.fam, keyChain, "inet "+r.table)
	}
	return nil
}

// ensure makes sure our table, the family's chain with its marker and
// program, and the family's sets exist, in one batch; a table that is not
// ours is refused untouched. The other family's ensure may run at once:
// each creates only its own chain and sets.
func (r *nftRules) ensure(ctx context.Context) error {
	s, err := r.snapshot(ctx, false)
	if err != nil {
		return err
	}
	if err := r.judge(s); err != nil {
		return err
	}
	ch := s.chains[r.chain]
	var made []string
	var missing []string
	for _, kind := range nftSetKinds {
		if s.sets[r.setName(kind)] == nil {
			missing = append(missing, kind)
		}
	}
	adopt := ch != nil && !slices.ContainsFunc(s.rules[r.chain], func(ru *nftables.Rule) bool { m, ok := nftIsMarker(ru); return ok && m == r.marker })
	dormant := s.table != nil && nftDormant(s.table)
	if dormant {
		if err := r.wake(ctx); err != nil {
			return err
		}
		r.log.Warn("table was dormant; woken", keyFamily, r.fam, keyChain, "inet "+r.table)
	}
	if s.table != nil && ch != nil && !adopt && len(missing) == 0 {
		return nil
	}
	err = r.call(ctx, "create", func(ctx context.Context, c *nftables.Conn) error {
		c.AddTable(r.tableObj())
		for _, kind := range missing {
			var els []nftables.SetElement
			switch kind {
			case nftPorts:
				els = nftPortElems(r.tail)
			case nftAllow:
				els = nftAllowElems(r.allowRanges(r.tail))
			}
			if err := c.AddSet(r.setObj(kind), els); err != nil {
				return err
			}
		}
		switch {
		case ch == nil:
			c.AddChain(r.chainObj())
		case adopt:
			c.FlushChain(r.chainObj())
		}
		if ch == nil || adopt {
			for _, ru := range r.program(r.tail) {
				c.AddRule(ru)
			}
		}
		return nftFlush(ctx, c)
	})
	if err != nil {
		return fmt.Errorf("%s: create %s: %w", r.name(), r.where(), err)
	}
	if s.table == nil {
		made = append(made, "table inet "+r.table)
	}
	switch {
	case ch == nil:
		made = append(made, "chain "+r.chain)
	case adopt && len(s.rules[r.chain]) == 0:
		r.log.Info("empty chain adopted; ownership marker added", keyFamily, r.fam, keyChain, r.where())
	case adopt:
		r.log.Warn("chain of an earlier webknock adopted; ownership marker added", keyFamily, r.fam, keyChain, r.where(),
			keyCount, len(s.rules[r.chain]))
	}
	for _, kind := range missing {
		made = append(made, "set "+r.setName(kind))
		if kind == nftDoor {
			r.freshDoor = true
		}
	}
	if len(made) > 0 {
		r.log.Info("nftables objects created", keyFamily, r.fam, keyChain, "inet "+r.table, keyFixed, made)
	}
	return nil
}

// wake makes a dormant table active again, in a batch of its own: the
// kernel refuses one that also adds or changes a base chain of the table
// (EINVAL).
func (r *nftRules) wake(ctx context.Context) error {
	err := r.call(ctx, "wake", func(ctx context.Context, c *nftables.Conn) error {
		c.AddTable(r.tableObj()) // flags 0: not dormant
		return nftFlush(ctx, c)
	})
	if err != nil {
		return fmt.Errorf("%s: wake table inet %s: %w", r.name(), r.table, err)
	}
	return nil
}

// ensureHook has nothing to do: the base chain carries its hook. A chain
// hooked elsewhere than wanted is said; reconcile rebuilds it.
func (r *nftRules) ensureHook(ctx context.Context) error {
	s, err := r.snapshot(ctx, false)
	if err != nil {
		return err
	}
	if ch := s.chains[r.chain]; ch != nil && !r.chainOK(ch) {
		r.log.Warn("our chain is not hooked as configured", keyFamily, r.fam, keyChain, r.where(), keyHook, r.hook,
			"have", nftChainSpec(ch), "want", nftChainSpec(r.chainObj()))
	}
	return nil
}

// chainOK tells whether a listed chain is hooked as the base chain we
// create (its policy aside, which can change in place).
func (r *nftRules) chainOK(ch *nftables.Chain) bool {
	want := r.chainObj()
	return ch.Type == want.Type && ch.Hooknum != nil && *ch.Hooknum == *want.Hooknum &&
		ch.Priority != nil && *ch.Priority == *want.Priority
}

func nftChainSpec(ch *nftables.Chain) string {
	if ch.Hooknum == nil || ch.Priority == nil {
		return "no hook"
	}
	hook := strconv.Itoa(int(*ch.Hooknum))
	switch *ch.Hooknum {
	case *nftables.ChainHookInput:
		hook = nftHookInput
	case *nftables.ChainHookForward:
		hook = nftHookForward
	}
	policy := "?"
	if ch.Policy != nil {
		policy = map[nftables.ChainPolicy]string{nftables.ChainPolicyAccept: "accept", nftables.ChainPolicyDrop: "drop"}[*ch.Policy]
	}
	return fmt.Sprintf("type %s hook %s priority %d; policy %s", ch.Type, hook, *ch.Priority, policy)
}
