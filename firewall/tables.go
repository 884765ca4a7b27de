package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strconv"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// tables is the part of go-iptables that firewall uses, for one family,
// with a context that ends the call: a hung iptables must not hold the
// worker. execTables implements it with iptables itself; memTables in
// memory, for the dry-run backend and the tests.
type tables interface {
	List(ctx context.Context, table, chain string) ([]string, error)
	ChainExists(ctx context.Context, table, chain string) (bool, error)
	NewChain(ctx context.Context, table, chain string) error
	ClearAndDeleteChain(ctx context.Context, table, chain string) error
	Exists(ctx context.Context, table, chain string, rulespec ...string) (bool, error)
	Insert(ctx context.Context, table, chain string, pos int, rulespec ...string) error
	Append(ctx context.Context, table, chain string, rulespec ...string) error
	Delete(ctx context.Context, table, chain string, rulespec ...string) error
	DeleteIfExists(ctx context.Context, table, chain string, rulespec ...string) error
	DeleteById(ctx context.Context, table, chain string, id int) error
	// Sets are the family's ipsets, where the grants are.
	Sets() ipsets
}

// Kinds of failure the tables report, for errors.Is.
var (
	// errNoChain: the chain named (or jumped to) does not exist. An
	// answer, not a failure: it is never retried.
	errNoChain = errors.New("no such chain")
	// errLocked: another program held the xtables lock longer than
	// LockWait.
	errLocked = errors.New("xtables lock held by another program")
	// errEmptyChain: an insert after the ownership marker found the
	// chain empty (flushed). An answer like errNoChain.
	errEmptyChain = errors.New("chain is empty: no ownership marker to insert after")
)

// family is IPv4 (iptables) or IPv6 (ip6tables).
type family int

const (
	ipv4 family = iota
	ipv6
)

var families = [...]family{ipv4, ipv6}

func (fam family) String() string {
	if fam == ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

// LogValue makes the family "IPv4" or "IPv6" in every log format, JSON too.
func (fam family) LogValue() slog.Value { return slog.StringValue(fam.String()) }

// command is the name of the family's iptables program.
func (fam family) command() string {
	if fam == ipv6 {
		return "ip6tables"
	}
	return "iptables"
}

// familyOf tells the family of an address; an IPv4-mapped IPv6 address must
// be unmapped first.
func familyOf(a netip.Addr) family {
	if a.Is4() {
		return ipv4
	}
	return ipv6
}

// newExecTables finds the family's program on PATH and asks go-iptables
// which version it is, to pass the lock wait in the form that version
// understands.
func newExecTables(fam family, lockWait, timeout time.Duration) (*execTables, error) {
	path, err := exec.LookPath(fam.command())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", fam.command(), err)
	}
	proto := iptables.ProtocolIPv4
	if fam == ipv6 {
		proto = iptables.ProtocolIPv6
	}
	// go-iptables runs `iptables --version` without a deadline: wait for
	// it here. Should it hang, Open fails and one goroutine is left.
	type probe struct {
		ipt *iptables.IPTables
		err error
	}
	done := make(chan probe, 1)
	go func() {
		ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(path))
		done <- probe{ipt, err}
	}()
	var p probe
	select {
	case p = <-done:
	case <-time.After(timeout):
		p.err = fmt.Errorf("%s --version: no answer within %s", path, timeout)
	}
	if p.err != nil {
		return nil, fmt.Errorf("%s: %w", fam.command(), p.err)
	}
	v := version(p.ipt.GetIptablesVersion())
	if v < version(1, 4, 11) {
		return nil, fmt.Errorf("%s: version %d.%d.%d is older than 1.4.11, which has -C", path, v>>16, v>>8&0xff, v&0xff)
	}
	t := &execTables{fam: fam, path: path, sets: newNetlinkSets()}
	switch secs := max(1, int((lockWait+time.Second-1)/time.Second)); {
	case v >= version(1, 6, 0):
		t.wait = []string{"-w", strconv.Itoa(secs)}
	case v >= version(1, 4, 20):
		t.wait = []string{"-w"} // waits for ever; the call's deadline ends it
	}
	return t, nil
}

func version(a, b, c int) int { return a<<16 | b<<8 | c }

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
