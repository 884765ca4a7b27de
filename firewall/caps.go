package firewall

// This file bounds the live grants by where they come from: per sequence,
// per IPv4 /24 and per IPv6 /64. A leaked static sequence and a large
// IPv6 network could otherwise fill the grant table, and make every
// change of the firewall slow for everyone.

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
)

// ErrCapped is wrapped by the error of Grant for a new grant while its
// sequence, or the /24 or /64 of its source, holds as many live grants as
// its cap allows (a *CapError says which).
var ErrCapped = errors.New("grant cap reached")

// Cap is one bound on the live grants, held or pending, of one source.
type Cap int

const (
	CapSequence Cap = iota // grants of one sequence, both families
	CapIPv4Net             // grants whose source is in one IPv4 /24
	CapIPv6Net             // grants whose source is in one IPv6 /64

	NumCaps = 3 // how many caps there are: Health.Capped has one count each
)

// String returns the cap's configuration key below `firewall.`; the
// metrics and the log name it so too.
func (c Cap) String() string {
	switch c {
	case CapSequence:
		return "max_grants_per_sequence"
	case CapIPv4Net:
		return "max_grants_per_ipv4_24"
	case CapIPv6Net:
		return "max_grants_per_ipv6_64"
	}
	return fmt.Sprintf("cap(%d)", int(c))
}

// The networks the caps count by: a /24 is what one site or NAT pool of
// IPv4 usually holds, a /64 what one IPv6 LAN holds.
const (
	capBits4 = 24
	capBits6 = 64
)

// CapNet is the network a source is counted under: the /24 or /64 of its
// address. A grant to a network (grant_prefix) counts under the /24 or /64
// its address is in.
func CapNet(src netip.Prefix) netip.Prefix {
	a := src.Addr().Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, capBits4).Masked()
	}
	return netip.PrefixFrom(a, capBits6).Masked()
}

// CapError tells which cap refused a grant.
type CapError struct {
	Cap   Cap
	Key   string // the sequence, or the network (CapNet)
	Count int    // the live grants it holds
	Limit int    // its cap
	// First: the first refusal since the key reached its cap, or since
	// its count was last below it.
	First bool
}

func (e *CapError) Error() string {
	what := "network"
	if e.Cap == CapSequence {
		what = "sequence"
	}
	return fmt.Sprintf("%v: %s %s holds %d live %s; firewall.%s is %d",
		ErrCapped, what, e.Key, e.Count, plural(e.Count, "grant", "grants"), e.Cap, e.Limit)
}

func (e *CapError) Unwrap() error { return ErrCapped }

// CapCounter counts the live grants of each sequence and each network that
// has some, and refuses a new grant beyond a cap. A key with no grant left
// is forgotten, so that it takes no memory. The firewall applies it to
// every grant, and replay to the grants of the logs, with the same rule.
// It is not safe for concurrent use.
type CapCounter struct {
	limits [NumCaps]int
	seqs   map[string]*capCount
	nets   map[netip.Prefix]*capCount
}

// capCount is the live grants of one key, and whether its reaching the
// cap was told (CapError.First).
type capCount struct {
	n    int
	told bool
}

// NewCapCounter returns a counter with the given caps, each at least 1.
func NewCapCounter(perSequence, perIPv4Net, perIPv6Net int) *CapCounter {
	c := &CapCounter{seqs: map[string]*capCount{}, nets: map[netip.Prefix]*capCount{}}
	c.SetLimits(perSequence, perIPv4Net, perIPv6Net)
	return c
}

// SetLimits changes the caps; the grants counted stay counted. A key
// already beyond a lowered cap takes no new grant until it is below it.
func (c *CapCounter) SetLimits(perSequence, perIPv4Net, perIPv6Net int) {
	c.limits = [NumCaps]int{max(perSequence, 1), max(perIPv4Net, 1), max(perIPv6Net, 1)}
	for _, x := range c.seqs {
		x.told = x.told && x.n >= c.limits[CapSequence]
	}
	for net, x := range c.nets {
		x.told = x.told && x.n >= c.limits[netCap(net)]
	}
}

// Limit is the value of a cap.
func (c *CapCounter) Limit(which Cap) int { return c.limits[which] }

// netCap is the cap that counts net.
func netCap(net netip.Prefix) Cap {
	if net.Addr().Is4() {
		return CapIPv4Net
	}
	return CapIPv6Net
}

// Take counts a new grant of seq to src, or refuses it with a *CapError
// when the network of src (checked first: a flood comes from one) or seq
// holds as many live grants as its cap. An extension of a grant that is
// counted already must not be taken again: it is never refused.
func (c *CapCounter) Take(src netip.Prefix, seq string) error {
	net := CapNet(src)
	if err := c.full(netCap(net), net.String(), c.nets[net]); err != nil {
		return err
	}
	if err := c.full(CapSequence, seq, c.seqs[seq]); err != nil {
		return err
	}
	c.Add(src, seq)
	return nil
}

// full returns the refusal of a key whose count n has reached its cap.
func (c *CapCounter) full(which Cap, key string, n *capCount) error {
	if n == nil || n.n < c.limits[which] {
		return nil
	}
	first := !n.told
	n.told = true
	return &CapError{Cap: which, Key: key, Count: n.n, Limit: c.limits[which], First: first}
}

// Add counts a grant of seq to src whatever the caps: one restored at
// start, which the kernel holds already.
func (c *CapCounter) Add(src netip.Prefix, seq string) {
	inc(c.nets, CapNet(src))
	inc(c.seqs, seq)
}

// Release uncounts a grant of seq to src that ended.
func (c *CapCounter) Release(src netip.Prefix, seq string) {
	net := CapNet(src)
	dec(c.nets, net, c.limits[netCap(net)])
	dec(c.seqs, seq, c.limits[CapSequence])
}

// Len is the number of keys counted: sequences and networks with live
// grants.
func (c *CapCounter) Len() int { return len(c.seqs) + len(c.nets) }

// Over is the number of keys that hold more live grants than their cap.
func (c *CapCounter) Over() int {
	n := 0
	for _, x := range c.seqs {
		if x.n > c.limits[CapSequence] {
			n++
		}
	}
	for net, x := range c.nets {
		if x.n > c.limits[netCap(net)] {
			n++
		}
	}
	return n
}

func inc[K comparable](m map[K]*capCount, k K) {
	if x := m[k]; x != nil {
		x.n++
		return
	}
	m[k] = &capCount{n: 1}
}

// dec uncounts one grant of k; below limit, its next refusal is told
// again; at 0, k is forgotten.
func dec[K comparable](m map[K]*capCount, k K, limit int) {
	x := m[k]
	if x == nil {
		return
	}
	x.n--
	switch {
	case x.n <= 0:
		delete(m, k)
	case x.n < limit:
		x.told = false
	}
}

// caps is the firewall's CapCounter, which the workers of both families
// share, and the refusals of each cap.
type caps struct {
	mu      sync.Mutex
	c       *CapCounter
	refused [NumCaps]atomic.Uint64
	log     *slog.Logger
}

func newCaps(o Options) *caps {
	return &caps{c: NewCapCounter(o.MaxGrantsPerSequence, o.MaxGrantsPerIPv4Net, o.MaxGrantsPerIPv6Net), log: o.Logger}
}

// take counts a new grant of k, or refuses it: counted, and logged once
// per key reaching its cap, so that a flood of knocks is not a flood of
// the log.
func (c *caps) take(k grantKey) error {
	c.mu.Lock()
	err := c.c.Take(k.src, k.seq)
	c.mu.Unlock()
	var ce *CapError
	if !errors.As(err, &ce) {
		return err
	}
	c.refused[ce.Cap].Add(1)
	if ce.First {
		c.log.Warn("grant refused: cap on live grants reached; further refusals under it are counted, not logged, until it holds fewer",
			keyCap, ce.Cap.String(), keyCapKey, ce.Key, keyCount, ce.Count, keyIP, FormatSource(k.src), keySequence, k.seq)
	}
	return err
}

// add counts a grant of k whatever the caps.
func (c *caps) add(k grantKey) {
	c.mu.Lock()
	c.c.Add(k.src, k.seq)
	c.mu.Unlock()
}

// release uncounts a grant of k.
func (c *caps) release(k grantKey) {
	c.mu.Lock()
	c.c.Release(k.src, k.seq)
	c.mu.Unlock()
}

// setLimits applies the caps of normalized options o.
func (c *caps) setLimits(o Options) {
	c.mu.Lock()
	c.c.SetLimits(o.MaxGrantsPerSequence, o.MaxGrantsPerIPv4Net, o.MaxGrantsPerIPv6Net)
	c.mu.Unlock()
}

// over is CapCounter.Over.
func (c *caps) over() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.c.Over()
}

// counts returns the refusals of each cap.
func (c *caps) counts() [NumCaps]uint64 {
	var out [NumCaps]uint64
	for i := range out {
		out[i] = c.refused[i].Load()
	}
	return out
}
