package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// tables is the part of go-iptables that firewall uses, for one family.
// memTables implements it in memory for the dry-run backend and the tests.
type tables interface {
	List(table, chain string) ([]string, error)
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	ClearAndDeleteChain(table, chain string) error
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	DeleteIfExists(table, chain string, rulespec ...string) error
	DeleteById(table, chain string, id int) error
}

var _ tables = (*iptables.IPTables)(nil)

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

// command is the name of the family's iptables program, for messages.
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

// newIPTables returns go-iptables for both families. IPv6 is left out, with a
// warning from the caller, when ip6tables is not installed or the kernel has
// IPv6 disabled: a host without IPv6 still wants its IPv4 knocks.
func newIPTables(lockWait time.Duration) (tabs [2]tables, v6off error, err error) {
	secs := int((lockWait + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	v4, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(secs))
	if err != nil {
		return tabs, nil, fmt.Errorf("iptables: %w", err)
	}
	tabs[ipv4] = v4
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		return tabs, errors.New("the kernel has IPv6 disabled"), nil
	}
	v6, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv6), iptables.Timeout(secs))
	switch {
	case errors.Is(err, exec.ErrNotFound):
		return tabs, errors.New("ip6tables is not installed"), nil
	case err != nil:
		return tabs, nil, fmt.Errorf("ip6tables: %w", err)
	}
	tabs[ipv6] = v6
	return tabs, nil, nil
}
