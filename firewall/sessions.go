package firewall

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/ti-mo/conntrack"
)

// conntrackConn is the part of github.com/ti-mo/conntrack that
// KillSessions uses; the tests' fake holds the flows in memory.
type conntrackConn interface {
	Dump(opts *conntrack.DumpOptions) ([]conntrack.Flow, error)
	Delete(f conntrack.Flow) error
	Close() error
}

var _ conntrackConn = (*conntrack.Conn)(nil)

// dialConntrack opens a netlink socket to the kernel's connection tracking.
func dialConntrack() (conntrackConn, error) { return conntrack.Dial(nil) }

// hostAddrs are the addresses of this host's interfaces: a client network
// that holds one of them does not make this host's own flows a client's.
func hostAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// looseFile says whether conntrack takes up a TCP session from a packet in
// its middle (1, the default), which the protect tail's resets rely on.
const looseFile = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"

// KillSessions ends the established sessions of src (an address, as its
// single-address prefix, or a network) to ports: it deletes the kernel's
// conntrack entries of the flows between a client in src and one of ports
// on our side, IPv4 or IPv6 as src is, and returns how many it deleted.
// "Our side" is the original destination port, or the translated one after
// a DNAT (a FORWARD or DOCKER-USER hook), whichever side opened the flow;
// a flow from this host's own address is never a client's.
//
// Deleting the entry is what makes the next packet of the session NEW to
// the firewall: with Protect, the protect tail answers a TCP session's next
// packet, either way, with a reset, and drops a UDP flow's. Without
// Protect nothing stops the sessions from going on. Call it after Revoke:
// while a grant lets the client in, its sessions simply start again. The
// dry-run backend deletes nothing: it logs what it would do and returns 0.
func (f *Firewall) KillSessions(ctx context.Context, src netip.Prefix, ports []Port) (int, error) {
	if !src.IsValid() || src.Addr().Zone() != "" {
		return 0, errors.New("end sessions: no address or network")
	}
	src = unmapPrefix(src)
	name := FormatSource(src)
	if len(ports) == 0 {
		return 0, fmt.Errorf("end sessions of %s: no ports", name)
	}
	for _, p := range ports {
		if err := p.check(); err != nil {
			return 0, fmt.Errorf("end sessions of %s: %w", name, err)
		}
	}
	if f.o.Backend == backendDryRun {
		f.log.Info("dry-run: would end the sessions", keyIP, name, keyPorts, ports)
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, f.o.CallTimeout)
	defer cancel()
	c, err := f.conntrack()
	if err != nil {
		return 0, fmt.Errorf("end sessions of %s: conntrack: %w", name, err)
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	local := f.hostAddrs()
	go func() {
		n, err := killFlows(c, src, ports, local)
		done <- result{n, err}
	}()
	var r result
	select {
	case r = <-done:
		c.Close()
	case <-ctx.Done():
		// Closing the socket ends the netlink call under way.
		c.Close()
		return 0, fmt.Errorf("end sessions of %s: %w", name, ctx.Err())
	}
	if r.n > 0 {
		f.log.Info("sessions ended", keyIP, name, keyPorts, ports, keyCount, r.n)
		f.warnSessions()
	}
	if r.err != nil {
		return r.n, fmt.Errorf("end sessions of %s: %w", name, r.err)
	}
	return r.n, nil
}

// warnSessions says when the sessions just ended may not end for the
// client: nothing resets them.
func (f *Firewall) warnSessions() {
	if !f.o.Protect {
		f.log.Warn("sessions' conntrack entries deleted, but protect is off: nothing keeps them from going on")
		return
	}
	if b, err := os.ReadFile(looseFile); err == nil && strings.TrimSpace(string(b)) == "0" {
		f.log.Warn("nf_conntrack_tcp_loose is 0: the next packets of an ended TCP session are INVALID, which protect does not reset; the host's own rules decide whether it ends")
	}
}

// killFlows deletes the flows that flowOf matches; a flow that ended
// meanwhile is not counted.
func killFlows(c conntrackConn, src netip.Prefix, ports []Port, local []netip.Addr) (int, error) {
	flows, err := c.Dump(nil)
	if err != nil {
		return 0, fmt.Errorf("list conntrack entries: %w", err)
	}
	n := 0
	var errs []error
	for _, fl := range flows {
		if !flowOf(fl, src, ports, local) {
			continue
		}
		err := c.Delete(fl)
		switch {
		case errors.Is(err, syscall.ENOENT):
		case err != nil:
			errs = append(errs, fmt.Errorf("delete conntrack entry %s: %w", fl.TupleOrig, err))
		default:
			n++
		}
	}
	return n, errors.Join(errs...)
}

// IP protocol numbers of the ports' protocols.
var protoNumbers = map[string]uint8{"tcp": syscall.IPPROTO_TCP, "udp": syscall.IPPROTO_UDP}

// flowOf tells whether fl is a flow between a client in src, not one of
// local, and one of ports on our side: in either direction, the client
// sends to the port, before or after a destination NAT.
func flowOf(fl conntrack.Flow, src netip.Prefix, ports []Port, local []netip.Addr) bool {
	o, r := fl.TupleOrig, fl.TupleReply
	client := func(a netip.Addr) bool {
		a = a.Unmap()
		return src.Contains(a) && !slices.Contains(local, a)
	}
	for _, p := range ports {
		if o.Proto.Protocol != protoNumbers[p.Proto] {
			continue
		}
		if client(o.IP.SourceAddress) && (o.Proto.DestinationPort == p.Number || r.Proto.SourcePort == p.Number) {
			return true
		}
		if client(r.IP.SourceAddress) && (r.Proto.DestinationPort == p.Number || o.Proto.SourcePort == p.Number) {
			return true
		}
	}
	return false
}
