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
	t := &execTables{fam: fam, path: path}
	switch secs := max(1, int((lockWait+time.Second-1)/time.Second)); {
	case v >= version(1, 6, 0):
		t.wait = []string{"-w", strconv.Itoa(secs)}
	case v >= version(1, 4, 20):
		t.wait = []string{"-w"} // waits for ever; the call's deadline ends it
	}
	return t, nil
}

func version(a, b, c int) int { return a<<16 | b<<8 | c }
