package firewall

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"time"

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
	tabs, err := o.tables(ctx, true)
	if err != nil {
		return err
	}
	f := newFirewall(o, tabs)
	defer f.quit()
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

// tables returns the backend's tables; a family left out is nil. With
// strict, a host with IPv6 whose ip6tables does not work is refused when
// Protect is on (see newIPTables).
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

const msgIPv6Off = "IPv6 is not managed (firewall.ipv6: false): IPv6 clients cannot be granted, and protect does not guard IPv6"

// hostHasIPv6 tells whether the kernel has IPv6.
func hostHasIPv6() bool {
	_, err := os.Stat("/proc/sys/net/ipv6")
	return err == nil
}

// newIPTables returns the iptables backend: iptables, which must work, and
// ip6tables. IPv6 fails closed: on a host with IPv6 (hasIPv6), with
// Protect, an ip6tables that is missing or does not work is an error when
// strict, since the protected ports would stay open to everyone over
// IPv6. Without Protect it is a warning: IPv6 clients just cannot be
// granted. With IPv6Off, IPv6 is left alone.
func newIPTables(ctx context.Context, o *Options, hasIPv6, strict bool) ([2]tables, error) {
	var tabs [2]tables
	v4, err := newExecTables(ipv4, o.LockWait, o.CallTimeout)
	if err == nil {
		err = usable(ctx, v4, o.CallTimeout)
	}
	switch {
	case errors.Is(err, exec.ErrNotFound):
		return tabs, optErr("backend", "iptables is not installed; install it, or choose backend %s", backendDryRun)
	case err != nil:
		return tabs, optErr("backend", "iptables does not work: %w", err)
	}
	tabs[ipv4] = v4
	switch {
	case o.IPv6Off:
		o.Logger.Warn(msgIPv6Off)
		return tabs, nil
	case !hasIPv6:
		o.Logger.Info("the kernel has IPv6 disabled; only IPv4 is managed")
		return tabs, nil
	}
	v6, err := newExecTables(ipv6, o.LockWait, o.CallTimeout)
	if err == nil {
		err = usable(ctx, v6, o.CallTimeout)
	}
	if err == nil {
		tabs[ipv6] = v6
		return tabs, nil
	}
	why := fmt.Sprintf("ip6tables does not work (%v)", err)
	if errors.Is(err, exec.ErrNotFound) {
		why = "ip6tables is not installed"
	}
	if o.Protect && strict {
		return tabs, optErr("ipv6", "%s, but this host has IPv6 and protect is on: strangers could reach the protected ports over IPv6; "+
			"install ip6tables, or set firewall.ipv6: false to leave IPv6 alone knowingly", why)
	}
	o.Logger.Warn("IPv6 firewall disabled: IPv6 clients cannot be granted", keyReason, why)
	return tabs, nil
}

// usable tells whether t can read table filter: a program that is there
// but cannot (no kernel module, no permission) is as good as missing.
func usable(ctx context.Context, t tables, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := t.List(ctx, table, "INPUT")
	return err
}

// probeTables checks, changing nothing, that each family's hook exists and
// that a chain of our name is ours or absent.
func (f *Firewall) probeTables(ctx context.Context) error {
	var errs []error
	hook, chain := f.o.Hook, f.o.Chain
	for _, w := range f.workers() {
		_, err := w.listHook(ctx)
		switch {
		case errors.Is(err, errNoChain):
			hint := ""
			if hook == "DOCKER-USER" {
				hint = "; Docker makes it when it starts"
			}
			if w.fam == ipv6 {
				hint += "; or set firewall.ipv6: false to leave IPv6 alone"
			}
			errs = append(errs, optErr("hook", "chain %s does not exist in table %s (%s): webknock jumps from it to its own chain%s",
				hook, table, w.fam, hint))
			continue
		case err != nil:
			errs = append(errs, err)
			continue
		}
		var lines []string
		err = w.rt.do(ctx, "list", func(ctx context.Context, _ int) (err error) {
			lines, err = w.t.List(ctx, table, chain)
			return err
		})
		switch {
		case errors.Is(err, errNoChain):
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: list %s/%s: %w", w.fam.command(), table, chain, err))
		default:
			if err := judgeChain(chain, lines, f.marker).err(w.fam, chain); err != nil {
				errs = append(errs, &OptionError{Option: "chain", Err: err})
			}
		}
	}
	return errors.Join(errs...)
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
	who := "a webknock without a state_dir"
	if e.owner != "" {
		who = "the webknock with state_dir " + e.owner
	}
	return fmt.Sprintf("chain %s in table %s (%s) belongs to %s; stop that one and run webknock flush with its configuration, or choose another firewall.chain",
		e.chain, table, e.fam, who)
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
		if err := w.ensureChain(ctx); err != nil {
			return err
		}
	}
	if !loaded {
		for _, w := range ws {
			have, err := w.list(ctx)
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
		if err := w.ensureJump(ctx); err != nil {
			return err
		}
	}
	now := f.clock.Now()
	for _, w := range ws {
		w.checked = now
		w.commit()
	}
	f.log.Info("firewall ready", keyChain, f.o.Chain, keyHook, f.o.Hook, keyCount, f.count.Load(),
		keyBackend, f.o.Backend, keyProtect, f.o.Protect)
	for _, w := range ws {
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
			f.count.Add(1)
		}
		if !had || g.Until.After(old.Until) {
			w.grants[k] = g
		}
	}
	if n := f.count.Load(); n > int64(f.o.MaxGrants) {
		// Live in the kernel already: kept, and new ones refused until
		// enough have ended.
		f.log.Warn("more live grants than max grants; new grants are refused until fewer", keyCount, n)
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

// grantsOf groups the grant rules of a chain into grants.
func grantsOf(have []listed) []Grant {
	type k struct {
		src   netip.Prefix
		seq   string
		until int64
	}
	idx := map[k]int{}
	var gs []Grant
	for _, l := range have {
		if !l.ours || l.r.kind != kindGrant {
			continue
		}
		key := k{l.r.src, l.r.seq, l.r.until}
		i, ok := idx[key]
		if !ok {
			i = len(gs)
			idx[key] = i
			g := Grant{IP: key.src.Addr(), Sequence: key.seq, Until: time.Unix(key.until, 0).UTC()}
			if !key.src.IsSingleIP() {
				g.Bits = key.src.Bits()
			}
			gs = append(gs, g)
		}
		if !slices.Contains(gs[i].Ports, l.r.port) {
			gs[i].Ports = append(gs[i].Ports, l.r.port)
		}
	}
	return gs
}
