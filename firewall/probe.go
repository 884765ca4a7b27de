package firewall

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"

	"github.com/webknock/webknock/internal/statedir"
)

// Probe checks everything Open would refuse, and changes nothing: the
// options (CheckOptions); the state directory and state file (owned by
// webknock's user, writable by no one else); the backend's programs;
// IPv6 (on a host with IPv6 and with Protect, ip6tables must work unless
// IPv6Off); that the hook exists in table filter; and that a chain of our
// name, if there is one, is webknock's. The dry-run backend probes the
// options and the state only. Problems with an option are *OptionError.
func Probe(ctx context.Context, o Options) error {
	o, err := o.normalize()
	if err != nil {
		return err
	}
	if err := probeState(&o, true); err != nil {
		return err
	}
	if o.Backend == backendDryRun {
		return nil
	}
	rss, err := o.rulesets(ctx, true)
	if err != nil {
		return err
	}
	f := newFirewall(o, rss)
	defer func() {
		f.quit()
		for _, w := range f.workers() {
			w.rs.close()
		}
	}()
	return f.probeTables(ctx)
}

// probeState refuses a state directory or state file that another user
// could have written. A state file that does not parse is not refused:
// Open rebuilds the grants from the rules' comments; with warn, Probe says
// so.
func probeState(o *Options, warn bool) error {
	if o.StateDir == "" {
		return nil
	}
	if err := statedir.Check(o.StateDir); err != nil {
		return &OptionError{Option: "state_dir", Err: err}
	}
	path := o.statePath()
	_, err := readState(path)
	switch {
	case err == nil, errors.Is(err, fs.ErrNotExist):
	case isUntrusted(err):
		return &OptionError{Option: "state_dir", Err: fmt.Errorf("grants not loaded: %w", err)}
	case warn:
		o.Logger.Warn("state file unreadable; webknock will rebuild the grants from the rules' comments", keyPath, path, keyErr, err)
	}
	return nil
}

// rulesets returns the backend's rulesets; a family left out is nil. With
// strict, a host with IPv6 whose ip6tables does not work is refused when
// Protect is on (see newIPTables).
func (o *Options) rulesets(ctx context.Context, strict bool) ([2]ruleset, error) {
	if o.Backend == backendNFTables {
		return newNFTRulesets(ctx, o, hostHasIPv6())
	}
	tabs, err := o.tables(ctx, strict)
	if err != nil {
		return [2]ruleset{}, err
	}
	return iptRulesets(o, tabs), nil
}

// tables returns the iptables backend's tables, or the dry-run backend's.
func (o *Options) tables(ctx context.Context, strict bool) ([2]tables, error) {
	if o.Backend != backendDryRun {
		return newIPTables(ctx, o, hostHasIPv6(), strict)
	}
	tabs := [2]tables{newMemTables(ipv4, o.Logger, o.Hook), nil}
	if o.IPv6Off {
		o.Logger.Warn(msgIPv6Off)
	} else {
		tabs[ipv6] = newMemTables(ipv6, o.Logger, o.Hook)
	}
	return tabs, nil
}

// newNFTRulesets returns the nftables backend's rulesets, once nftables
// answers. One table of family inet serves both: IPv6 works whenever IPv4
// does, so it is left out only knowingly (IPv6Off) or on a kernel without
// IPv6.
func newNFTRulesets(ctx context.Context, o *Options, hasIPv6 bool) ([2]ruleset, error) {
	var rss [2]ruleset
	if err := nftUsable(ctx, o); err != nil {
		return rss, err
	}
	for _, fam := range families {
		switch {
		case fam == ipv6 && o.IPv6Off:
			o.Logger.Warn(msgIPv6Off)
			continue
		case fam == ipv6 && !hasIPv6:
			o.Logger.Info("the kernel has IPv6 disabled; only IPv4 is managed")
			continue
		}
		rss[fam] = newNFTRules(fam, o)
	}
	return rss, nil
}

const msgIPv6Off = "IPv6 is not managed (firewall.ipv6: false): IPv6 clients cannot be granted, and protect does not guard IPv6"

// hostHasIPv6 tells whether the kernel has IPv6.
func hostHasIPv6() bool {
	_, err := os.Stat("/proc/sys/net/ipv6")
	return err == nil
}

// probeTables checks, changing nothing, each family's ruleset: its hook
// exists, and our chain or table is ours or absent.
func (f *Firewall) probeTables(ctx context.Context) error {
	var errs []error
	for _, w := range f.workers() {
		errs = append(errs, w.rs.probe(ctx))
	}
	return errors.Join(errs...)
}

// start brings the kernel in line with the grants and starts the workers.
// Everything that could refuse is asked before the first change: the hooks
// and our chains (probeTables), the state file.
func (f *Firewall) start(ctx context.Context) error {
	if err := f.probeTables(ctx); err != nil {
		return err
	}
	doc, loaded, err := f.loadState()
	if err != nil {
		return err
	}
	ws := f.workers()
	for _, w := range ws {
		if err := w.rs.ensure(ctx); err != nil {
			return err
		}
	}
	if !loaded {
		for _, w := range ws {
			have, err := w.rs.list(ctx)
			if err != nil {
				return err
			}
			doc.Grants = append(doc.Grants, grantsOf(have)...)
		}
		f.log.Info("grants rebuilt from the rules' comments", keyCount, len(doc.Grants))
	}
	gone := f.admit(doc)
	for _, w := range ws {
		w.changed = true
		if err := w.reconcile(ctx); err != nil {
			return err
		}
	}
	// The reconcile deleted their rules.
	for _, e := range gone {
		if fn := f.o.OnEnd; fn != nil {
			fn(e.g, e.reason)
		}
	}
	for _, w := range ws {
		if err := w.rs.ensureHook(ctx); err != nil {
			return err
		}
	}
	now := f.clock.Now()
	for _, w := range ws {
		w.checked = now
		w.commit()
	}
	k, v := f.o.where()
	f.log.Info("firewall ready", k, v, keyHook, f.o.Hook, keyCount, f.count.Load(),
		keyBackend, f.o.Backend, keyProtect, f.o.Protect)
	for _, w := range ws {
		if wa, ok := w.rs.(watcher); ok {
			w.hints = wa.watch(f.stop)
		}
		go w.run(f.clock.After(f.o.CheckInterval))
	}
	return nil
}

// loadState prepares the state directory and reads the state file; loaded
// is false when there is none to read, or it does not parse. A directory
// or file that another user could have written is refused.
func (f *Firewall) loadState() (doc stateDoc, loaded bool, err error) {
	path := f.st.path
	if path == "" {
		return doc, false, nil
	}
	if err := statedir.Prepare(f.o.StateDir); err != nil {
		return doc, false, &OptionError{Option: "state_dir", Err: err}
	}
	for _, tmp := range statedir.RemoveTemps(path) {
		f.log.Warn("temporary state file of an interrupted write removed", keyPath, tmp)
	}
	doc, err = readState(path)
	switch {
	case err == nil:
		return doc, true, nil
	case errors.Is(err, fs.ErrNotExist):
		f.log.Info("no state file; rebuilding the grants from the rules' comments", keyPath, path)
	case isUntrusted(err):
		return doc, false, &OptionError{Option: "state_dir", Err: fmt.Errorf("grants not loaded: %w", err)}
	default:
		f.log.Warn("state file unreadable; rebuilding the grants from the rules' comments", keyPath, path, keyErr, err)
	}
	return stateDoc{}, false, nil
}

// ending is a grant that ended, and why, to be told to OnEnd.
type ending struct {
	g      Grant
	reason string
}

// admit gives the workers the loaded grants that the configuration still
// allows, and the remembered revokes. A grant whose sequence is gone, whose
// ports are none of its sequence's, or that ends later than now plus its
// window is dropped, and the reconcile deletes its rules. It returns the
// held grants that ended: expired while webknock was stopped, or dropped.
func (f *Firewall) admit(doc stateDoc) []ending {
	now := f.clock.Now()
	var gone []ending
	for i, g := range slices.Concat(doc.Grants, doc.Pending) {
		held := i < len(doc.Grants)
		end := func(reason string) {
			if held {
				gone = append(gone, ending{g, reason})
			}
		}
		w := f.fams[familyOf(g.IP)]
		switch {
		case !g.Until.After(now):
			f.log.Info("grant expired while webknock was stopped", keyIP, sourceOf(g), keySequence, g.Sequence, keyUntil, g.Until)
			end(ReasonExpired)
			continue
		case w == nil:
			f.log.Warn("grant dropped: its family has no firewall", keyIP, sourceOf(g), keySequence, g.Sequence)
			end(ReasonPolicy)
			continue
		}
		v := w.pol.judge(g, now)
		if reason := v.reason(); reason != "" {
			f.log.Warn("loaded grant dropped", append(grantAttrs(g), keyReason, reason)...)
			end(ReasonPolicy)
			continue
		}
		if len(v.dropped) > 0 {
			f.log.Warn("loaded grant's ports dropped: not its sequence's", append(grantAttrs(v.g), keyFixed, v.dropped)...)
			g = v.g
		}
		k := keyOf(g)
		old, had := w.grants[k]
		if !had {
			// Restored whatever the caps: the kernel holds it already.
			f.count.Add(1)
			f.caps.add(k)
		}
		if !had || g.Until.After(old.Until) {
			w.setGrant(k, g)
		}
	}
	if n := f.count.Load(); n > f.maxGrants.Load() {
		// Live in the kernel already: kept, and new ones refused until
		// enough have ended.
		f.log.Warn("more live grants than max grants; new grants are refused until fewer", keyCount, n)
	}
	if n := f.caps.over(); n > 0 {
		f.log.Warn("sequences or networks hold more live grants than their caps; their new grants are refused until fewer", keyCount, n)
	}
	for _, r := range doc.Revoked {
		if w := f.fams[familyOf(r.Source.Addr())]; w != nil && r.At.After(w.revoked[r.Source.Prefix]) {
			w.recordRevoke(r.Source.Prefix, r.At)
		}
	}
	for _, w := range f.workers() {
		w.pruneRevoked(now)
	}
	return gone
}
