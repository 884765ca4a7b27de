package firewall

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ipsets is the part of the kernel's ipset that the iptables backend uses
// for its grants: sets of (address or network, protocol, port) with a
// timeout and a comment per element.
// netlinkSets speaks to the kernel; memSets of memTables keeps them in
// memory, for the dry-run backend and the tests. Errors wrap errNoChain
// when the set does not exist.
type ipsets interface {
	// create makes the set of spec; one that exists with the same type is
	// left as it is, one with another type is an error.
	create(ctx context.Context, spec ipsetSpec) error
	// list returns the type of the set and its elements.
	list(ctx context.Context, name string) (typ string, els []ipsetElem, err error)
	// count returns the type of the set and how many elements it holds
	// (those timed out and not yet collected included), from its header
	// alone.
	count(ctx context.Context, name string) (typ string, n int, err error)
	// put adds els or, for those there, sets their timeout and comment.
	put(ctx context.Context, name string, els []ipsetElem) error
	// remove deletes els; one that is not there is no error.
	remove(ctx context.Context, name string, els []ipsetElem) error
	// destroy destroys the set; one that does not exist is no error.
	destroy(ctx context.Context, name string) error
	close()
}

// The set types webknock makes.
const (
	ipsetHosts = "hash:ip,port"  // a grant to one address
	ipsetNets  = "hash:net,port" // a grant to a network (grant_prefix)
)

// ipsetMaxElem is the size a grant set may grow to: the grant table's
// entries, with room for several ports each.
const ipsetMaxElem = 1 << 20

// ipsetMaxTimeout is the longest timeout the kernel takes, in seconds.
const ipsetMaxTimeout = 2147483

// ipsetSpec is a set to create.
type ipsetSpec struct {
	name string
	typ  string
	fam  family
}

// ipsetElem is one element: a source and a port, with what is left of its
// timeout and its comment.
type ipsetElem struct {
	src     netip.Prefix // invalid in the ports set
	port    Port
	timeout uint32 // seconds
	comment string
}

// key is the element as the set tells elements apart.
func (el ipsetElem) key() ipsetElem { return ipsetElem{src: el.src, port: el.port} }

// String writes the element as the ipset program does.
func (el ipsetElem) String() string {
	src := el.src.Addr().String()
	if !el.src.IsSingleIP() {
		src = el.src.String()
	}
	return fmt.Sprintf("%s,%s:%d", src, el.port.Proto, el.port.Number)
}

// netlinkSets reaches the kernel's ipset over netlink, one message per
// element, on a socket opened at the first call and kept open.
type netlinkSets struct {
	h *netlink.Handle
}

func newNetlinkSets() *netlinkSets { return &netlinkSets{} }

// open opens the socket if need be; a kernel without ipset is an error
// that says so.
func (s *netlinkSets) open() error {
	if s.h != nil {
		return nil
	}
	h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("ipset: open netlink: %w", err)
	}
	if _, _, err := h.IpsetProtocol(); err != nil {
		h.Close()
		return fmt.Errorf("ipset: the kernel does not answer (module ip_set missing?): %w", err)
	}
	s.h = h
	return nil
}

func (s *netlinkSets) close() {
	if s.h != nil {
		s.h.Close()
		s.h = nil
	}
}

// ipsetErr names the set and the call, and makes a missing set errNoChain.
func ipsetErr(op, name string, err error) error {
	if err == nil {
		return nil
	}
	var ie nl.IPSetError
	if errors.As(err, &ie) && uintptr(ie) == uintptr(syscall.ENOENT) || errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("ipset %s %s: %w: %w", op, name, errNoChain, err)
	}
	return fmt.Errorf("ipset %s %s: %w", op, name, err)
}

func (s *netlinkSets) create(_ context.Context, spec ipsetSpec) error {
	if err := s.open(); err != nil {
		return err
	}
	typ, _, err := s.list(context.Background(), spec.name)
	switch {
	case err == nil && typ == spec.typ:
		return nil
	case err == nil:
		return fmt.Errorf("ipset %s exists with type %s, not %s: not webknock's", spec.name, typ, spec.typ)
	case !errors.Is(err, errNoChain):
		return err
	}
	zero := uint32(0)
	o := netlink.IpsetCreateOptions{Timeout: &zero, Comments: true, MaxElements: ipsetMaxElem, Family: unix.AF_INET}
	if spec.fam == ipv6 {
		o.Family = unix.AF_INET6
	}
	return ipsetErr("create", spec.name, s.h.IpsetCreate(spec.name, spec.typ, o))
}

func (s *netlinkSets) list(_ context.Context, name string) (string, []ipsetElem, error) {
	if err := s.open(); err != nil {
		return "", nil, err
	}
	res, err := s.h.IpsetList(name)
	if err != nil {
		return "", nil, ipsetErr("list", name, err)
	}
	els := make([]ipsetElem, 0, len(res.Entries))
	for _, en := range res.Entries {
		el, ok := elemOfEntry(res.TypeName, en)
		if !ok {
			// Not an element webknock writes: kept with no source, so
			// that the check sees something foreign.
			els = append(els, ipsetElem{comment: "?"})
			continue
		}
		els = append(els, el)
	}
	return res.TypeName, els, nil
}

// ipsetListHeader is the list command's flag for the header alone
// (IPSET_FLAG_LIST_HEADER).
const ipsetListHeader = 1 << 2

func (s *netlinkSets) count(_ context.Context, name string) (string, int, error) {
	if err := s.open(); err != nil {
		return "", 0, err
	}
	req := nl.NewNetlinkRequest(nl.IPSET_CMD_LIST|(unix.NFNL_SUBSYS_IPSET<<8), nl.GetIpsetFlags(nl.IPSET_CMD_LIST))
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(unix.AF_NETLINK), Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(name)))
	flags := make([]byte, 4)
	binary.BigEndian.PutUint32(flags, ipsetListHeader)
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_FLAGS|int(nl.NLA_F_NET_BYTEORDER), flags))
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		if errno, ok := err.(syscall.Errno); ok && int(errno) >= nl.IPSET_ERR_PRIVATE {
			err = nl.IPSetError(uintptr(errno))
		}
		return "", 0, ipsetErr("list", name, err)
	}
	typ, n, ok := "", 0, false
	for _, m := range msgs {
		t, c, found := parseIpsetHeader(m)
		if t != "" {
			typ = t
		}
		if found {
			n, ok = c, true
		}
	}
	if !ok {
		return "", 0, fmt.Errorf("ipset list %s: the header tells no number of elements", name)
	}
	return typ, n, nil
}

// parseIpsetHeader reads the type and the number of elements from a
// list answer (nfgenmsg, then attributes; the count is in IPSET_ATTR_DATA).
func parseIpsetHeader(m []byte) (typ string, n int, found bool) {
	if len(m) < 4 {
		return "", 0, false
	}
	attrs, err := nl.ParseRouteAttr(m[4:])
	if err != nil {
		return "", 0, false
	}
	for _, a := range attrs {
		switch a.Attr.Type & nl.NLA_TYPE_MASK {
		case nl.IPSET_ATTR_TYPENAME:
			typ = strings.TrimRight(string(a.Value), "\x00")
		case nl.IPSET_ATTR_DATA:
			data, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				continue
			}
			for _, d := range data {
				if d.Attr.Type&nl.NLA_TYPE_MASK == nl.IPSET_ATTR_ELEMENTS && len(d.Value) == 4 {
					n, found = int(binary.BigEndian.Uint32(d.Value)), true
				}
			}
		}
	}
	return typ, n, found
}

// elemOfEntry reads an element of a set of type typ.
func elemOfEntry(typ string, en netlink.IPSetEntry) (ipsetElem, bool) {
	var el ipsetElem
	if en.Port == nil {
		return el, false
	}
	el.port.Number = *en.Port
	el.comment = en.Comment
	if en.Timeout != nil {
		el.timeout = *en.Timeout
	}
	if en.Protocol == nil {
		return el, false
	}
	switch *en.Protocol {
	case unix.IPPROTO_TCP:
		el.port.Proto = "tcp"
	case unix.IPPROTO_UDP:
		el.port.Proto = "udp"
	default:
		return el, false
	}
	a, ok := netip.AddrFromSlice(en.IP)
	if !ok {
		return el, false
	}
	a = a.Unmap()
	bits := a.BitLen()
	if typ == ipsetNets && en.CIDR != 0 {
		bits = int(en.CIDR)
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return el, false
	}
	el.src = p
	return el, true
}

// entryOf is the netlink entry of el.
func entryOf(el ipsetElem, withData bool) *netlink.IPSetEntry {
	port := el.port.Number
	en := &netlink.IPSetEntry{Port: &port, Replace: true}
	proto := uint8(unix.IPPROTO_TCP)
	if el.port.Proto == "udp" {
		proto = unix.IPPROTO_UDP
	}
	en.Protocol = &proto
	en.IP = net.IP(el.src.Addr().AsSlice())
	if !el.src.IsSingleIP() {
		en.CIDR = uint8(el.src.Bits())
	}
	if withData {
		t := el.timeout
		en.Timeout, en.Comment = &t, el.comment
	}
	return en
}

func (s *netlinkSets) put(ctx context.Context, name string, els []ipsetElem) error {
	if err := s.open(); err != nil {
		return err
	}
	for _, el := range els {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.h.IpsetAdd(name, entryOf(el, true)); err != nil {
			return ipsetErr("add "+el.String()+" to", name, err)
		}
	}
	return nil
}

func (s *netlinkSets) remove(ctx context.Context, name string, els []ipsetElem) error {
	if err := s.open(); err != nil {
		return err
	}
	for _, el := range els {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := s.h.IpsetDel(name, entryOf(el, false))
		var ie nl.IPSetError
		if errors.As(err, &ie) && int(ie) == nl.IPSET_ERR_EXIST {
			continue // not there
		}
		if err != nil {
			return ipsetErr("delete "+el.String()+" from", name, err)
		}
	}
	return nil
}

func (s *netlinkSets) destroy(_ context.Context, name string) error {
	if err := s.open(); err != nil {
		return err
	}
	err := ipsetErr("destroy", name, s.h.IpsetDestroy(name))
	if errors.Is(err, errNoChain) {
		return nil
	}
	return err
}
