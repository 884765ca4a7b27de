package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
)

// iptRules is the iptables ruleset of one family: our chain in table
// filter, which starts with the ownership marker, then matches the grant
// sets (iptsets.go) and ends with the protect tail; jumps near the top of
// the hook send it the traffic to the guarded ports, and only that. Its
// tables are iptables and the kernel's ipsets (execTables) or, for the
// dry-run backend and the tests, memTables.
type iptRules struct {
	fam    family
	t      tables
	rt     *retrier
	log    *slog.Logger
	chain  string
	hook   string
	marker rule
	keys   map[iptKey][]entry // the entries of each element of the grant sets, as put there
	ends   kernelEnds         // when their kernel timeouts end
	ports  []Port             // the guarded ports, as the last inspect or reconcile was told
	// inspects counts the inspections: every fullListEvery-th lists the
	// sets whatever their counts say.
	inspects int
}

// newIPTRules is the ruleset of family fam on t, for normalized options.
func newIPTRules(fam family, t tables, o *Options) *iptRules {
	return &iptRules{
		fam: fam, t: t, log: o.Logger, chain: o.Chain, hook: o.Hook, marker: markerFor(o.StateDir),
		keys: map[iptKey][]entry{}, ends: kernelEnds{}, ports: o.Ports,
		rt: &retrier{clock: o.Clock, log: o.Logger.With(keyFamily, fam), delays: defaultDelays,
			timeout: o.CallTimeout, cmd: fam.command()},
	}
}

// iptRulesets are the rulesets of tabs; a family without tables is nil.
func iptRulesets(o *Options, tabs [2]tables) [2]ruleset {
	var rss [2]ruleset
	for _, fam := range families {
		if tabs[fam] != nil {
			rss[fam] = newIPTRules(fam, tabs[fam], o)
		}
	}
	return rss
}

func (r *iptRules) name() string      { return r.fam.command() }
func (r *iptRules) retrier() *retrier { return r.rt }

// close lets go of the ipsets' netlink socket.
func (r *iptRules) close() {
	if s := r.t.Sets(); s != nil {
		s.close()
	}
}

// ruleEntry is the entry of a grant rule.
func ruleEntry(r rule) entry { return entry{src: r.src, port: r.port, seq: r.seq, until: r.until} }

func (r *iptRules) probe(ctx context.Context) error {
	_, err := r.listHook(ctx)
	switch {
	case errors.Is(err, errNoChain):
		hint := ""
		if r.hook == "DOCKER-USER" {
			hint = "; Docker makes it when it starts"
		}
		if r.fam == ipv6 {
			hint += "; or set firewall.ipv6: false to leave IPv6 alone"
		}
		return optErr("hook", "chain %s does not exist in table %s (%s): webknock jumps from it to its own chain%s",
			r.hook, table, r.fam, hint)
	case err != nil:
		return err
	}
	lines, err := r.listLines(ctx, r.chain)
	switch {
	case errors.Is(err, errNoChain):
		return nil
	case err != nil:
		return err
	}
	if err := judgeChain(r.chain, lines, r.marker).err(r.fam, r.chain); err != nil {
		return &OptionError{Option: "chain", Err: err}
	}
	if err := r.setsOwned(ctx); err != nil {
		return &OptionError{Option: "chain", Err: err}
	}
	return nil
}

func (r *iptRules) owned(ctx context.Context) error {
	lines, err := r.listLines(ctx, r.chain)
	switch {
	case errors.Is(err, errNoChain):
	case err != nil:
		return err
	default:
		if err := judgeChain(r.chain, lines, r.marker).err(r.fam, r.chain); err != nil {
			return err
		}
	}
	return r.setsOwned(ctx)
}

func (r *iptRules) flush(ctx context.Context) error {
	lines, err := r.listLines(ctx, r.hook)
	switch {
	case errors.Is(err, errNoChain): // no hook, no jump
	case err != nil:
		return err
	}
	for _, spec := range r.hookJumps(lines).all {
		err := r.rt.do(ctx, "delete", func(ctx context.Context, _ int) error { return r.t.DeleteIfExists(ctx, table, r.hook, spec...) })
		if err != nil {
			return fmt.Errorf("%s: delete jump from %s/%s: %w", r.fam.command(), table, r.hook, err)
		}
	}
	if err := r.rt.do(ctx, "delete chain", func(ctx context.Context, _ int) error { return r.t.ClearAndDeleteChain(ctx, table, r.chain) }); err != nil {
		return fmt.Errorf("%s: delete chain %s/%s: %w", r.fam.command(), table, r.chain, err)
	}
	return r.destroySets(ctx)
}

// list returns the entries of the grant sets, and of the grant rules an
// earlier webknock kept in our chain.
func (r *iptRules) list(ctx context.Context) ([]entry, error) {
	have, err := r.listRules(ctx)
	if err != nil {
		return nil, err
	}
	var es []entry
	for _, l := range have {
		if l.ours && l.r.kind == kindGrant {
			es = append(es, ruleEntry(l.r))
		}
	}
	sets, err := r.listSets(ctx)
	if err != nil {
		return nil, err
	}
	for _, spec := range r.setSpecs() {
		for _, el := range sets[spec.name] {
			if e, ok := entryOfElem(el); ok {
				es = append(es, e)
			}
		}
	}
	return es, nil
}

// The calls on the tables, retried, with errors that name the object.

// listLines lists a chain of table filter: `iptables -S chain`.
func (r *iptRules) listLines(ctx context.Context, chain string) ([]string, error) {
	var lines []string
	err := r.rt.do(ctx, "list", func(ctx context.Context, _ int) (err error) {
		lines, err = r.t.List(ctx, table, chain)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: list %s/%s: %w", r.fam.command(), table, chain, err)
	}
	return lines, nil
}

// listRules lists our chain's rules.
func (r *iptRules) listRules(ctx context.Context) ([]listed, error) {
	lines, err := r.listLines(ctx, r.chain)
	if err != nil {
		return nil, err
	}
	return parseChain(r.chain, lines), nil
}

// listHook lists the hook; a missing hook is an error like any other.
func (r *iptRules) listHook(ctx context.Context) ([]string, error) {
	return r.listLines(ctx, r.hook)
}

// parseChain returns the rules in the lines of `iptables -S chain`.
func parseChain(chain string, lines []string) []listed {
	var have []listed
	for _, line := range lines {
		if l, ok := parseListed(chain, line); ok {
			have = append(have, l)
		}
	}
	return have
}

// insertAt is where grant rules go: after the ownership marker.
const insertAt = 2

func (r *iptRules) insert(ctx context.Context, ru rule) error {
	return r.insertPos(ctx, insertAt, ru)
}

func (r *iptRules) insertPos(ctx context.Context, pos int, ru rule) error {
	spec := ru.args()
	return r.change(ctx, "insert", "insert "+ru.String()+" into", func(ctx context.Context, attempt int) error {
		// A call that failed may have been applied (a lock timeout after
		// the commit, a kill after it): never insert a rule twice.
		if attempt > 1 {
			if ok, err := r.t.Exists(ctx, table, r.chain, spec...); err == nil && ok {
				return nil
			}
		}
		return r.t.Insert(ctx, table, r.chain, pos, spec...)
	})
}

func (r *iptRules) append(ctx context.Context, ru rule) error {
	// A retried append may add the rule twice; the next reconcile or
	// integrity check deletes the first copy, which is never the drop
	// at the end.
	return r.change(ctx, "append", "append "+ru.String()+" to", func(ctx context.Context, _ int) error {
		return r.t.Append(ctx, table, r.chain, ru.args()...)
	})
}

// change runs a change of our chain through the retrier; its error says
// what (like "insert RULE into") and names the chain.
func (r *iptRules) change(ctx context.Context, op, what string, fn func(ctx context.Context, attempt int) error) error {
	if err := r.rt.do(ctx, op, fn); err != nil {
		return fmt.Errorf("%s: %s %s/%s: %w", r.fam.command(), what, table, r.chain, err)
	}
	return nil
}

// deleteListed deletes a listed rule, which need not be ours: by its
// specification, or, should iptables not take back what it printed, by its
// number. Both delete the first rule that is the same; with last, the last
// one is deleted, by its number (a second ownership marker, whose first
// copy is to stay at the top).
func (r *iptRules) deleteListed(ctx context.Context, l listed, last bool) error {
	t, chain := r.t, r.chain
	err := r.rt.do(ctx, "delete", func(ctx context.Context, _ int) error {
		if !last {
			err := t.Delete(ctx, table, chain, l.spec...)
			if err == nil {
				return nil
			}
		}
		lines, err := t.List(ctx, table, chain)
		if err != nil {
			return err
		}
		i := slices.Index(lines, l.line)
		if last {
			i = lastIndex(lines, l.line)
		}
		if i < 1 { // gone, or the -N line
			return nil
		}
		return t.DeleteById(ctx, table, chain, i)
	})
	if err != nil {
		return fmt.Errorf("%s: delete %q from %s/%s: %w", r.fam.command(), l.line, table, chain, err)
	}
	return nil
}

func lastIndex(lines []string, s string) int {
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i] == s {
			return i
		}
	}
	return -1
}

// ensure makes sure our grant sets and our chain exist and are ours: the
// chain created with the ownership marker when missing; a chain of that name without the marker
// is adopted only if webknock wrote every rule in it (an earlier version's
// chain, or an empty one), else refused untouched.
func (r *iptRules) ensure(ctx context.Context) error {
	// The sets first: the chain's rules name them.
	if err := r.ensureSets(ctx); err != nil {
		return err
	}
	t, chain := r.t, r.chain
	var lines []string
	created := false
	err := r.rt.do(ctx, "new chain", func(ctx context.Context, _ int) error {
		var err error
		lines, err = t.List(ctx, table, chain)
		if !errors.Is(err, errNoChain) {
			return err
		}
		if err := t.NewChain(ctx, table, chain); err != nil {
			// Created meanwhile by another webknock, or by an attempt
			// that timed out after the commit?
			if ok, cerr := t.ChainExists(ctx, table, chain); cerr == nil && ok {
				lines, err = t.List(ctx, table, chain)
				return err
			}
			return err
		}
		lines, created = nil, true
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: create chain %s/%s: %w", r.fam.command(), table, chain, err)
	}
	own := judgeChain(chain, lines, r.marker)
	if err := own.err(r.fam, chain); err != nil {
		return err
	}
	if own.marker {
		return nil
	}
	if err := r.insertPos(ctx, 1, r.marker); err != nil {
		return err
	}
	switch {
	case created:
		r.log.Info("chain created", keyFamily, r.fam, keyChain, chain)
	case own.rules == 0:
		r.log.Info("empty chain adopted; ownership marker added", keyFamily, r.fam, keyChain, chain)
	default:
		r.log.Warn("chain of an earlier webknock adopted; ownership marker added", keyFamily, r.fam, keyChain, chain, keyCount, own.rules)
	}
	return nil
}

// ensureHook inserts the jump to our chain at the top of the hook if it
// has none. Extra jumps are left alone with a warning: they do no harm,
// and the only safe way to delete one, by its specification, would delete
// the first.
func (r *iptRules) ensureHook(ctx context.Context) error {
	lines, err := r.listHook(ctx)
	if err != nil {
		return err
	}
	return r.fixHook(ctx, lines)
}

// fixHook inserts the jumps the hook lacks, then deletes the jumps to our
// chain that are not wanted (for ports no longer guarded, or the plain
// jump of an earlier webknock): the traffic to the guarded ports reaches
// the chain all the while.
func (r *iptRules) fixHook(ctx context.Context, lines []string) error {
	t := r.t
	j := r.hookJumps(lines)
	for i := len(j.want) - 1; i >= 0; i-- {
		spec := j.want[i]
		if j.count[i] > 0 {
			continue
		}
		err := r.rt.do(ctx, "insert", func(ctx context.Context, attempt int) error {
			if attempt > 1 {
				if ok, err := t.Exists(ctx, table, r.hook, spec...); err == nil && ok {
					return nil
				}
			}
			return t.Insert(ctx, table, r.hook, 1, spec...)
		})
		if err != nil {
			return fmt.Errorf("%s: insert jump to %s into %s/%s: %w", r.fam.command(), r.chain, table, r.hook, err)
		}
		r.log.Info("jump inserted", keyFamily, r.fam, keyHook, r.hook, keyChain, r.chain, keyRule, strings.Join(spec, " "))
	}
	for _, spec := range j.stale {
		err := r.rt.do(ctx, "delete", func(ctx context.Context, _ int) error { return t.DeleteIfExists(ctx, table, r.hook, spec...) })
		if err != nil {
			return fmt.Errorf("%s: delete jump from %s/%s: %w", r.fam.command(), table, r.hook, err)
		}
		r.log.Info("jump deleted", keyFamily, r.fam, keyHook, r.hook, keyRule, strings.Join(spec, " "), keyReason, "not for the guarded ports")
	}
	if slices.ContainsFunc(j.count, func(n int) bool { return n > 1 }) {
		r.log.Warn("the hook jumps to our chain more than once", keyFamily, r.fam, keyHook, r.hook, keyChain, r.chain)
	}
	return nil
}

// hookJumps finds the jumps to our chain in the lines of the hook.
func (r *iptRules) hookJumps(hook []string) jumps {
	j := jumps{want: r.jumpSpecs()}
	j.count = make([]int, len(j.want))
	wanted := map[string]int{}
	for i, spec := range j.want {
		wanted[strings.Join(spec, " ")] = i
	}
	for _, line := range hook {
		toks, err := splitRule(line)
		if err != nil || len(toks) < 4 || toks[0] != "-A" || toks[1] != r.hook || toks[len(toks)-2] != "-j" || toks[len(toks)-1] != r.chain {
			continue
		}
		spec := toks[2:]
		j.all = append(j.all, spec)
		if i, ok := wanted[strings.Join(spec, " ")]; ok {
			j.count[i]++
			continue
		}
		j.stale = append(j.stale, spec)
	}
	return j
}

// jumps are the hook's jumps to our chain: all of them, how many times
// each wanted one is there, and those not wanted.
type jumps struct {
	want  [][]string
	count []int
	all   [][]string
	stale [][]string
}

// missing tells whether the hook lacks a wanted jump or has one that is not.
func (j jumps) drift() bool { return slices.Contains(j.count, 0) || len(j.stale) > 0 }

// maxMultiport is the most ports one multiport match takes.
const maxMultiport = 15

// jumpSpecs are the hook's rules that send traffic to our chain: one per
// protocol and fifteen guarded ports (multiport's limit), so that traffic
// to other ports never walks our chain. With no guarded port known (no
// sequence configured), all traffic does.
func (r *iptRules) jumpSpecs() [][]string {
	if len(r.ports) == 0 {
		return [][]string{{"-j", r.chain}}
	}
	byProto := map[string][]int{}
	var protos []string
	for _, p := range r.ports {
		if _, ok := byProto[p.Proto]; !ok {
			protos = append(protos, p.Proto)
		}
		if !slices.Contains(byProto[p.Proto], int(p.Number)) {
			byProto[p.Proto] = append(byProto[p.Proto], int(p.Number))
		}
	}
	slices.Sort(protos)
	var specs [][]string
	for _, proto := range protos {
		ns := byProto[proto]
		slices.Sort(ns)
		for chunk := range slices.Chunk(ns, maxMultiport) {
			list := make([]string, len(chunk))
			for i, n := range chunk {
				list[i] = strconv.Itoa(n)
			}
			specs = append(specs, []string{"-p", proto, "-m", "multiport", "--dports", strings.Join(list, ","), "-j", r.chain})
		}
	}
	return specs
}

// inspect lists the hook and our chain (two iptables runs) and the grant
// sets (netlink).
func (r *iptRules) inspect(ctx context.Context, wantEntries, doomedEntries []entry, t tail) (drift, error) {
	var d drift
	r.ports = t.ports
	hook, err := r.listHook(ctx)
	if err != nil {
		return d, err
	}
	d.noJump = r.hookJumps(hook).drift()
	want := map[rule]bool{}
	for _, ru := range r.setRules() {
		want[ru] = true
	}
	tail := tailRules(t, r.fam)
	have, err := r.listRules(ctx)
	switch {
	case errors.Is(err, errNoChain):
		d.noChain, d.setRule, d.tail = true, len(want), len(tail) > 0
	case err != nil:
		return d, err
	default:
		d = chainDrift(d, have, r.marker, want, tail)
	}
	sets, counted, err := r.inspectSets(ctx, wantEntries)
	switch {
	case errors.Is(err, errNoChain):
		d.noChain, d.missing = true, d.missing+len(wantEntries)
		return d, nil
	case err != nil:
		return d, err
	}
	missing, extra := r.setDrift(sets, counted, wantEntries, doomedEntries)
	d.missing += missing
	d.extra += extra
	return d, nil
}

// chainDrift compares the rules listed in our chain with the marker, the
// set rules wanted and the tail.
func chainDrift(d drift, have []listed, marker rule, want map[rule]bool, tail []rule) drift {
	have, d.marker = splitMarker(have, marker, func(ru rule) bool { return want[ru] })
	n := len(have)
	switch {
	case tailAtEnd(have, tail):
		n -= len(tail)
	case len(tail) > 0:
		d.tail = true
	}
	// The set rules once each, anywhere before the tail.
	seen := map[rule]bool{}
	for _, l := range have[:n] {
		switch {
		case l.ours && want[l.r] && !seen[l.r]:
			seen[l.r] = true
		case l.ours && l.r.kind != kindGrant && l.r.kind != kindMarker && l.r.kind != kindSet && d.tail:
			// Part of a tail out of place: the repair replaces it.
		default:
			d.extra++
		}
	}
	d.setRule = len(want) - len(seen)
	return d
}

// reconcile makes our chain hold the ownership marker, then exactly the
// rules of the wanted entries, once each, followed by the protect tail,
// and nothing else.
//
// The drops are never absent once present: when the chain does not already
// end with the wanted tail, the whole tail is appended before anything is
// deleted. A rule is deleted by its specification, which removes the first
// rule that is the same; since the kept tail is last and the first copy of a
// grant rule is as good as any other, that is always a right one. Only a
// second marker is deleted by its number, the first one staying on top.
func (r *iptRules) reconcile(ctx context.Context, wantEntries []entry, t tail) (lost, used []entry, err error) {
	r.ports = t.ports
	// The sets first: the chain's rules name them.
	lost, err = r.reconcileSets(ctx, wantEntries)
	if err != nil {
		return lost, nil, err
	}
	have, err := r.listRules(ctx)
	if err != nil {
		return nil, nil, err
	}
	want := r.setRules()
	wanted := map[rule]bool{}
	for _, ru := range want {
		wanted[ru] = true
	}
	have, missing := splitMarker(have, r.marker, func(ru rule) bool { return wanted[ru] })
	if missing {
		if err := r.insertPos(ctx, 1, r.marker); err != nil {
			return nil, nil, err
		}
		r.log.Info("ownership marker restored", keyFamily, r.fam, keyChain, r.chain)
	}

	tail := tailRules(t, r.fam)
	keep := len(have) // rules before keep are judged one by one; the rest is the tail
	if n := len(tail); n > 0 {
		if tailAtEnd(have, tail) {
			keep = len(have) - n
		} else {
			for _, ru := range tail {
				if err := r.append(ctx, ru); err != nil {
					return nil, nil, err
				}
			}
			r.log.Info("protect rules appended", keyFamily, r.fam, keyCount, n)
		}
	}

	// The set rules, each put right after the marker when it is not in
	// the chain at all: granted traffic passes all the while.
	present := map[rule]bool{}
	for _, l := range have[:keep] {
		if l.ours && wanted[l.r] {
			present[l.r] = true
		}
	}
	if len(present) < len(want) {
		for i := len(want) - 1; i >= 0; i-- {
			if present[want[i]] {
				continue
			}
			if err := r.insert(ctx, want[i]); err != nil {
				// No grant passes the chain without it.
				return wantEntries, nil, err
			}
			r.log.Info("set rule inserted", keyFamily, r.fam, keyRule, want[i].String())
		}
		if have, err = r.listRules(ctx); err != nil {
			return nil, nil, err
		}
		have, _ = splitMarker(have, r.marker, func(ru rule) bool { return wanted[ru] })
		keep = len(have) - len(tail)
	}
	// Anything else before the tail goes, and second copies of the set
	// rules (the last copy, by its number: the first one stays).
	now := r.rt.clock.Now().Unix()
	kept := map[rule]bool{}
	var errs []error
	for _, l := range have[:keep] {
		var reason string
		switch {
		case l.ours && wanted[l.r] && !kept[l.r]:
			kept[l.r] = true
			continue
		case !l.ours:
			reason = "not webknock's"
		case l.r == r.marker:
			reason = "second ownership marker"
		case l.r.kind == kindMarker:
			reason = "another webknock's ownership marker"
		case l.r.kind == kindSet && wanted[l.r]:
			reason = "duplicate"
		case l.r.kind == kindSet:
			reason = "not one of our sets"
		case l.r.kind != kindGrant:
			reason = "old protect rule"
		case l.r.until <= now:
			reason = "expired"
		default:
			reason = "grant rule of an earlier webknock: its grant is in the set"
		}
		if err := r.deleteListed(ctx, l, l.ours && (l.r.kind == kindMarker || wanted[l.r])); err != nil {
			errs = append(errs, err)
			continue
		}
		r.log.Info("rule deleted", keyFamily, r.fam, keyRule, l.line, keyReason, reason)
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	// The jumps follow the guarded ports, once there are jumps at all.
	hook, err := r.listHook(ctx)
	if err != nil {
		return nil, nil, err
	}
	if len(r.hookJumps(hook).all) > 0 {
		return nil, nil, r.fixHook(ctx, hook)
	}
	return nil, nil, nil
}

// splitMarker finds the ownership marker that is to stay on top: the first
// one, when every rule above it is to go (others' rules, or ours that are
// not wanted: no rule inserted at the top displaces it for good). It
// returns the rules without it; missing says that a marker is to be
// inserted on top, since none can stay there.
func splitMarker(have []listed, marker rule, wanted func(rule) bool) (rest []listed, missing bool) {
	for i, l := range have {
		switch {
		case l.ours && l.r == marker:
			return slices.Delete(slices.Clone(have), i, i+1), false
		case l.ours && l.r.kind == kindGrant && wanted(l.r):
			return have, true
		}
	}
	return have, true
}

// tailAtEnd tells whether the chain ends with exactly the rules of tail.
func tailAtEnd(have []listed, tail []rule) bool {
	if len(have) < len(tail) {
		return false
	}
	for i, l := range have[len(have)-len(tail):] {
		if !l.ours || l.r != tail[i] {
			return false
		}
	}
	return true
}

// ownership is what the rules of an existing chain say about who owns it.
type ownership struct {
	marker  bool  // it holds our ownership marker
	other   *rule // the marker of another webknock's, if any
	rules   int
	foreign int // rules webknock did not write
}

// judgeChain reads the lines of `iptables -S chain`; marker is ours.
func judgeChain(chain string, lines []string, marker rule) ownership {
	var o ownership
	for _, l := range parseChain(chain, lines) {
		o.rules++
		switch {
		case !l.ours:
			o.foreign++
		case l.r == marker:
			o.marker = true
		case l.r.kind == kindMarker && o.other == nil:
			o.other = &l.r
		}
	}
	return o
}

// err refuses a chain that is not ours: it has another webknock's marker,
// or no marker and rules that webknock did not write. A chain without a
// marker whose every rule is recognisably webknock's (an earlier version's,
// or an empty one) is ours.
func (o ownership) err(fam family, chain string) error {
	switch {
	case o.marker:
		return nil
	case o.other != nil:
		return &otherOwnerError{chain: chain, fam: fam, owner: o.other.owner}
	case o.foreign > 0:
		return &foreignChainError{chain: chain, fam: fam, foreign: o.foreign}
	}
	return nil
}

// otherOwnerError refuses the chain of a webknock with another state
// directory: two daemons on one chain would delete each other's grants.
type otherOwnerError struct {
	chain string
	fam   family
	owner string // its state directory; "" for none
}

func (e *otherOwnerError) Error() string {
	return fmt.Sprintf("chain %s in table %s (%s) belongs to %s; stop that one and run webknock flush with its configuration, or choose another firewall.chain",
		e.chain, table, e.fam, ownerOf(e.owner))
}

// ownerOf names the webknock whose ownership marker names the state
// directory dir ("" for none).
func ownerOf(dir string) string {
	if dir == "" {
		return "a webknock without a state_dir"
	}
	return "the webknock with state_dir " + dir
}

// foreignChainError refuses a chain of another program's (fail2ban's
// f2b-sshd, say): flushing it would undo that program's work.
type foreignChainError struct {
	chain   string
	fam     family
	foreign int
}

func (e *foreignChainError) Error() string {
	return fmt.Sprintf("chain %s in table %s (%s) exists and is not webknock's: %d %s that webknock did not write; choose another firewall.chain",
		e.chain, table, e.fam, e.foreign, plural(e.foreign, "rule", "rules"))
}
