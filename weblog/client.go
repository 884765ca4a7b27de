package weblog

import (
	"net/netip"
	"strings"
)

// parseRemote parses the peer address a web server logged ($remote_addr, %h).
// IPv4-mapped IPv6 addresses become IPv4.
func parseRemote(s string) (netip.Addr, *ParseError) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, errorf(ReasonClient, "client %q is not an IP address", s)
	}
	return a.Unmap(), nil
}

// knockable rejects addresses that no remote client can connect from. A
// loopback client gets its own reason: it is the mark of a reverse proxy in
// front of the web server that trusted_proxies does not name.
func knockable(a netip.Addr) *ParseError {
	switch {
	case a.Zone() != "":
		return errorf(ReasonUnroutable, "client %s has a zone", a)
	case a.IsLoopback():
		return errorf(ReasonLoopback, "client %s is loopback", a)
	case a.IsUnspecified(), a.IsMulticast(), a.IsLinkLocalUnicast(),
		a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast(),
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return errorf(ReasonUnroutable, "client %s is not a unicast address", a)
	}
	return nil
}

// clientOf returns who a request is attributed to. Only a request whose peer
// is one of our trusted proxies is attributed to the right-most address of
// its X-Forwarded-For that is not itself a trusted proxy; every other
// request is attributed to its peer, whatever header it sent.
func (p *Parser) clientOf(remote netip.Addr, xff string) (netip.Addr, *ParseError) {
	if !p.hasXFF || !p.trusted(remote) {
		return remote, knockable(remote)
	}
	rest := xff
	for {
		var hop string
		if i := strings.LastIndexByte(rest, ','); i >= 0 {
			hop, rest = rest[i+1:], rest[:i]
		} else {
			hop, rest = rest, ""
		}
		a, ok := parseHop(strings.TrimSpace(hop))
		if !ok {
			return netip.Addr{}, errorf(ReasonForwarded, "X-Forwarded-For %q from trusted proxy %s has no usable client", xff, remote)
		}
		if !p.trusted(a) {
			return a, knockable(a)
		}
		if rest == "" {
			return netip.Addr{}, errorf(ReasonForwarded, "X-Forwarded-For %q from trusted proxy %s names only trusted proxies", xff, remote)
		}
	}
}

// parseHop parses one X-Forwarded-For element: an address, optionally with a
// port ("192.0.2.1:4711", "[2001:db8::1]:4711").
func parseHop(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

func (p *Parser) trusted(a netip.Addr) bool {
	for _, pfx := range p.trustedProxies {
		if pfx.Contains(a) {
			return true
		}
	}
	return false
}
