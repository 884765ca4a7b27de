package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Port is a TCP or UDP port.
type Port struct {
	Proto  string // "tcp" or "udp"
	Number uint16
}

// String returns the port as "22/tcp".
func (p Port) String() string { return strconv.Itoa(int(p.Number)) + "/" + p.Proto }

// MarshalText writes the port as "22/tcp".
func (p Port) MarshalText() ([]byte, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	return []byte(p.String()), nil
}

// UnmarshalText reads a port written as "22/tcp".
func (p *Port) UnmarshalText(b []byte) error {
	num, proto, ok := strings.Cut(string(b), "/")
	n, err := strconv.ParseUint(num, 10, 16)
	if !ok || err != nil {
		return fmt.Errorf("bad port %q: want NUMBER/tcp or NUMBER/udp", b)
	}
	q := Port{Proto: proto, Number: uint16(n)}
	if err := q.check(); err != nil {
		return err
	}
	*p = q
	return nil
}

func (p Port) check() error {
	if (p.Proto != "tcp" && p.Proto != "udp") || p.Number == 0 {
		return fmt.Errorf("bad port %s: want 1-65535 and tcp or udp", p)
	}
	return nil
}

// Grant opens Ports to IP (or to the network IP/Bits) until Until,
// because IP knocked Sequence.
type Grant struct {
	IP netip.Addr `json:"ip"`
	// Bits widens the grant to the network IP/Bits, for clients behind
	// carrier NAT or with IPv6 privacy addresses: 16 to 32 for IPv4, 32 to
	// 128 for IPv6. 0: the single address IP.
	Bits     int    `json:"bits,omitempty"`
	Sequence string `json:"sequence"`
	Ports    []Port `json:"ports"`
	// Knocked is the log's time of the knock. A knock logged before the
	// last revoke of an address the grant covers is refused (ErrRevoked).
	// Zero: not a knock read from a log, to which revokes do not apply.
	Knocked time.Time `json:"knocked,omitzero"`
	Until   time.Time `json:"until"`
	// Origin tells where the grant came from: empty for this host's own
	// logs and commands; "fleet:DETECTOR/KEY" for a grant of the fleet's
	// bus. A grant extended takes the origin of its extension.
	Origin string `json:"origin,omitempty"`
}

// From is where the grant came from, as status shows it: its Origin, or
// "local" for this host's own logs and commands.
func (g Grant) From() string {
	if g.Origin == "" {
		return "local"
	}
	return g.Origin
}

// Source is what the grant opens to: IP/Bits, or IP's single-address
// prefix when Bits is 0.
func (g Grant) Source() netip.Prefix {
	ip := g.IP.Unmap()
	if g.Bits == 0 {
		return netip.PrefixFrom(ip, ip.BitLen())
	}
	return netip.PrefixFrom(ip, g.Bits).Masked()
}

// The narrowest widening of a grant, per family: wider would open to a
// whole provider.
const (
	minBits4 = 16
	minBits6 = 32
)

// checkBits refuses a grant's Bits outside [16,32] for IPv4 and [32,128]
// for IPv6; 0 is the single address.
func checkBits(ip netip.Addr, bits int) error {
	if bits == 0 {
		return nil
	}
	if err := CheckGrantBits(ip.Is6(), bits); err != nil {
		return fmt.Errorf("grant to %s/%d: %w", ip, bits, err)
	}
	return nil
}

// CheckGrantBits refuses a network length a grant may not open: IPv4 /16
// to /32, IPv6 /32 to /128 (the full length is the address alone). The
// configuration's grant_prefix is held to it.
func CheckGrantBits(ipv6 bool, bits int) error {
	lo, hi := minBits4, 32
	if ipv6 {
		lo, hi = minBits6, 128
	}
	if bits < lo || bits > hi {
		return fmt.Errorf("bad prefix length %d: a grant opens a network of /%d to /%d (the address alone)", bits, lo, hi)
	}
	return nil
}

// FormatSource writes p as people read a grant's source: the address alone
// when p is a single address, else NET/BITS.
func FormatSource(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// ParseSource reads an address, or a network written NET/BITS, as a
// prefix: an address is its single-address prefix. An IPv4-mapped IPv6
// address or network is read as IPv4; host bits are masked off; zones are
// refused.
func ParseSource(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		q, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("bad network %q: want NET/BITS, like 192.0.2.0/24", s)
		}
		p = q
	} else {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("bad address %q: want an IP address, or NET/BITS", s)
		}
		p = netip.PrefixFrom(ip, ip.BitLen())
	}
	return unmapPrefix(p), nil
}

// unmapPrefix makes an IPv4-mapped prefix IPv4, and masks it.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// maxOrigin bounds Grant.Origin.
const maxOrigin = 200

// normalizeGrant unmaps the address, masks it to Bits (0 for the single
// address), drops repeated ports and truncates Until to the second the
// rule can hold, in UTC. An Until too late for the kernel is left to
// checkUntil: the policy may cut it first.
func normalizeGrant(g Grant) (Grant, error) {
	ip := g.IP.Unmap()
	switch {
	case !ip.IsValid():
		return Grant{}, errors.New("grant without an address")
	case ip.Zone() != "":
		return Grant{}, fmt.Errorf("grant to %s: not an address a client connects from", ip)
	}
	bits := g.Bits
	if bits == ip.BitLen() {
		bits = 0
	}
	if err := checkBits(ip, bits); err != nil {
		return Grant{}, err
	}
	n := Grant{IP: ip, Bits: bits}
	ip = n.Source().Addr()
	n.IP = ip
	src := FormatSource(n.Source())
	switch {
	case ip.IsUnspecified() || ip.IsMulticast():
		return Grant{}, fmt.Errorf("grant to %s: not an address a client connects from", src)
	case !seqRe.MatchString(g.Sequence):
		return Grant{}, fmt.Errorf("grant to %s: bad sequence name %q: want 1 to 32 characters of A-Z a-z 0-9 _ -", src, g.Sequence)
	case len(g.Ports) == 0:
		return Grant{}, fmt.Errorf("grant to %s for %s: no ports", src, g.Sequence)
	}
	for _, p := range g.Ports {
		if err := p.check(); err != nil {
			return Grant{}, fmt.Errorf("grant to %s for %s: %w", src, g.Sequence, err)
		}
	}
	until := g.Until.Truncate(time.Second).UTC()
	if until.Unix() <= 0 {
		return Grant{}, fmt.Errorf("grant to %s for %s: no end time", src, g.Sequence)
	}
	knocked := g.Knocked
	if !knocked.IsZero() {
		knocked = knocked.UTC()
	}
	if len(g.Origin) > maxOrigin || strings.ContainsFunc(g.Origin, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return Grant{}, fmt.Errorf("grant to %s for %s: bad origin: at most %d printable characters", src, g.Sequence, maxOrigin)
	}
	return Grant{IP: ip, Bits: bits, Sequence: g.Sequence, Ports: uniquePorts(g.Ports), Knocked: knocked, Until: until, Origin: g.Origin}, nil
}

// sourceOf is g's source as the log and errors write it.
func sourceOf(g Grant) string { return FormatSource(g.Source()) }

// checkUntil refuses an until the kernel's time match cannot hold.
func checkUntil(g Grant) error {
	if g.Until.After(maxUntil) {
		return fmt.Errorf("grant to %s for %s: until %s is after %s, the last time the kernel's time match holds",
			sourceOf(g), g.Sequence, g.Until.Format(time.RFC3339), maxUntil.Format(time.RFC3339))
	}
	return nil
}
