package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// nftRules is the nftables ruleset of one family, over netlink. Both
// families share one table, inet <table>; each owns a base chain (ipv4 or
// ipv6) and five sets, named with the family's suffix (4 or 6):
//
//	ports4  inet_proto . inet_service              the guarded ports: every sequence's
//	allow4  ipv4_addr, interval                    the always_allow networks
//	grant4  ipv4_addr . inet_proto . inet_service  a grant to one address, per port; timeout
//	net4    the same, interval                     a grant to a network; timeout
//	door4   the same, dynamic                      a grant the first new connection ends; timeout
//
// The chain's rules are a fixed program, each named by its comment:
//
//	counter comment "webknock:owner:DIR"               the ownership marker
//	meta nfproto != ipv4 return                        the other family's packets
//	meta l4proto . th dport != @ports4 return          what we do not guard
//	ip saddr . meta l4proto . th dport @grant4 accept
//	ip saddr . meta l4proto . th dport @net4 accept
//	ct state new ip saddr . meta l4proto . th dport @door4 delete @door4 { ... } accept
//	ip saddr @allow4 accept                            protect only, from here on
//	meta l4proto tcp tcp flags & (fin|syn|rst|ack) != syn ct state new reject with tcp reset
//	meta l4proto tcp tcp flags & rst != rst ct direction reply reject with tcp reset
//	ct state new drop
//
// A grant is an element whose timeout the kernel enforces; its comment
// (webknock:SEQUENCE:UNTIL, as iptables' rules) rebuilds it. Two entries with
// the same address, port and set (two sequences, or a grant and its
// extension) share one element, which carries the latest until: keys holds
// the entries of each element.
//
// The calls share one netlink socket, closed when a call fails or is
// abandoned by the retrier.
type nftRules struct {
	fam    family
	table  string
	chain  string // ipv4 or ipv6
	hook   string // input or forward
	marker rule
	netns  int // the network namespace's fd; 0: ours
	rt     *retrier
	log    *slog.Logger

	// Owned by the family's worker, as every call.
	keys map[nftKey][]entry
	// ends says when the kernel's timeout of each element webknock put
	// ends, on this host's monotonic clock (kernelEnds).
	ends kernelEnds
	// tail is the last one reconciled, which ensure installs when it
	// creates the chain; nil: none yet.
	tail *tail
	// freshDoor: ensure created the door set, so the door elements that
	// are missing were not used by a connection; reconcile restores them.
	freshDoor bool

	connMu   sync.Mutex
	conn     *nftables.Conn // shared by the calls; nil: none open
	connPort uint32         // its netlink port id
}

var (
	_ ruleset = (*nftRules)(nil)
	_ watcher = (*nftRules)(nil)
)

// Our objects' fixed names and numbers.
const (
	nftPriority = -10  // before filter (0), where the host's own tables are
	nftMaxOps   = 1000 // element operations in one batch: 20,000 fail ("message too long")
	// nftDynsetDelete is NFT_DYNSET_OP_DELETE, which x/sys/unix lacks.
	nftDynsetDelete = 2
	// nftTableDormant is NFT_TABLE_F_DORMANT: a dormant table's chains see no packet.
	nftTableDormant = 1
	// nftSlack is how far an element's expiry may stray from its until
	// before it counts as another element (someone re-added it longer).
	nftSlack = 2 * time.Second
	// nftDropTimeout is the timeout of an element added only to be
	// deleted in the same batch, so that the delete cannot fail.
	nftDropTimeout = time.Second
	// nftDoorSize is the most elements the door set holds.
	nftDoorSize = 1 << 20
	// nftCtDirReply is IP_CT_DIR_REPLY: ct direction reply.
	nftCtDirReply = 1
)

// The kinds of our sets; the name adds the family's suffix.
const (
	nftPorts = "ports"
	nftAllow = "allow"
	nftGrant = "grant"
	nftNet   = "net"
	nftDoor  = "door"
)

var nftSetKinds = [...]string{nftPorts, nftAllow, nftGrant, nftNet, nftDoor}

// The comments of the program's rules, besides the marker and the protect
// tail's (commentAllow, commentReset, commentProtect).
const (
	commentNFProto = commentPrefix + "nfproto"
	commentPorts   = commentPrefix + "ports"
	commentGrants  = commentPrefix + "grants"
	commentNets    = commentPrefix + "nets"
	commentDoors   = commentPrefix + "doors"
)

// nftChains are the names of the families' chains.
var nftChains = [...]string{ipv4: "ipv4", ipv6: "ipv6"}

func nftSuffix(fam family) string {
	if fam == ipv6 {
		return "6"
	}
	return "4"
}

// newNFTRules is the ruleset of family fam, for normalized options.
func newNFTRules(fam family, o *Options) *nftRules {
	return newNFTRulesNetns(fam, o, 0)
}

// newNFTRulesNetns is newNFTRules in the network namespace netnsFd (for
// the tests; 0: ours). The options' table and hook are checked by
// CheckOptions.
func newNFTRulesNetns(fam family, o *Options, netnsFd int) *nftRules {
	return &nftRules{
		fam: fam, table: o.Table, chain: nftChains[fam], hook: o.Hook, marker: markerFor(o.StateDir),
		netns: netnsFd, log: o.Logger, keys: map[nftKey][]entry{}, ends: kernelEnds{},
		rt: &retrier{clock: o.Clock, log: o.Logger.With(keyFamily, fam), delays: defaultDelays,
			timeout: o.CallTimeout, cmd: backendNFTables},
	}
}

// nftUsable tells whether nftables works here: it lists the tables once.
// A kernel without nf_tables, or a process without CAP_NET_ADMIN, is told
// of plainly.
func nftUsable(ctx context.Context, o *Options) error {
	timeout := o.CallTimeout
	done := make(chan error, 1)
	go func() {
		c, err := nftables.New(nftables.AsLasting())
		if err != nil {
			done <- err
			return
		}
		defer func() { _ = c.CloseLasting() }()
		_, err = c.ListTablesOfFamily(nftables.TableFamilyINet)
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(timeout):
		err = fmt.Errorf("netlink did not answer within %s", timeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err == nil {
		return nil
	}
	hint := ""
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		hint = "; webknock needs root (CAP_NET_ADMIN) to change the firewall"
	case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT):
		hint = "; the kernel has no netfilter netlink (nfnetlink): choose backend " + backendIPTables
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL):
		hint = "; the kernel has no nf_tables (modprobe nf_tables), or choose backend " + backendIPTables
	}
	return optErr("backend", "nftables does not work: %w%s", err, hint)
}

func (r *nftRules) name() string      { return backendNFTables }
func (r *nftRules) retrier() *retrier { return r.rt }

// where names the family's chain for errors and the log.
func (r *nftRules) where() string { return "inet " + r.table + " " + r.chain }

func (r *nftRules) setName(kind string) string { return kind + nftSuffix(r.fam) }

func (r *nftRules) describe(e entry) string {
	k := nftKeyOf(e)
	return fmt.Sprintf("%s saddr %s . %s . %d @%s (%s until %s)", r.ipWord(), nftSrcString(k.src), e.port.Proto, e.port.Number,
		r.setName(k.kind), e.seq, time.Unix(e.until, 0).UTC().Format(time.RFC3339))
}

func (r *nftRules) ipWord() string {
	if r.fam == ipv6 {
		return "ip6"
	}
	return "ip"
}

func nftSrcString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// nftKey is what an element of grant, net or door is held by.
type nftKey struct {
	kind string // nftGrant, nftNet or nftDoor
	src  netip.Prefix
	port Port
}

func nftKeyOf(e entry) nftKey {
	kind := nftGrant
	switch {
	case !e.src.IsSingleIP():
		kind = nftNet
	case e.door:
		kind = nftDoor
	}
	return nftKey{kind: kind, src: e.src, port: e.port}
}

// nftLatest is the entry whose until and sequence an element shared by es
// carries: the latest until; of equal ones, the first sequence by name, so
// that the choice does not depend on the order of es.
func nftLatest(es []entry) entry {
	best := es[0]
	for _, e := range es[1:] {
		if e.until > best.until || e.until == best.until && e.seq < best.seq {
			best = e
		}
	}
	return best
}

// Registers: a concatenation starts in NFT_REG_1, whose 32-bit parts are
// NFT_REG32_00 (8) and on.
const (
	nftReg1    = 1
	nftReg3200 = 8
)

// nftProto is the protocol number of a port.
func nftProto(proto string) byte {
	if proto == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

func nftProtoName(n byte) (string, bool) {
	switch n {
	case unix.IPPROTO_TCP:
		return "tcp", true
	case unix.IPPROTO_UDP:
		return "udp", true
	}
	return "", false
}

// nftPortKey is proto . port, each padded to 4 bytes.
func nftPortKey(p Port) []byte {
	return []byte{nftProto(p.Proto), 0, 0, 0, byte(p.Number >> 8), byte(p.Number), 0, 0}
}

// nftParsePort reads proto . port.
func nftParsePort(b []byte) (Port, bool) {
	if len(b) != 8 || b[1]|b[2]|b[3]|b[6]|b[7] != 0 {
		return Port{}, false
	}
	proto, ok := nftProtoName(b[0])
	n := uint16(b[4])<<8 | uint16(b[5])
	if !ok || n == 0 {
		return Port{}, false
	}
	return Port{Proto: proto, Number: n}, true
}

// nftAddrLen is the length of the family's addresses.
func (r *nftRules) addrLen() int {
	if r.fam == ipv6 {
		return 16
	}
	return 4
}

func (r *nftRules) parseAddr(b []byte) (netip.Addr, bool) {
	if len(b) != r.addrLen() {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(b)
	return a, ok
}

// nftLast is the last address of p.
func nftLast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// nftRangePrefix is the network whose addresses are first to last, if
// there is one.
func nftRangePrefix(first, last netip.Addr) (netip.Prefix, bool) {
	if first.BitLen() != last.BitLen() {
		return netip.Prefix{}, false
	}
	a, b := first.AsSlice(), last.AsSlice()
	bits := 0
	for i := range a {
		x := a[i] ^ b[i]
		if x != 0 {
			for x&0x80 == 0 {
				bits++
				x <<= 1
			}
			break
		}
		bits += 8
	}
	p := netip.PrefixFrom(first, bits)
	if p.Masked().Addr() != first || nftLast(p) != last {
		return netip.Prefix{}, false
	}
	return p, true
}

// elemKey is the key of the element of k: address . proto . port; for a
// network, its first address, and end its last.
func (r *nftRules) elemKey(k nftKey) (key, end []byte) {
	pk := nftPortKey(k.port)
	key = append(k.src.Masked().Addr().AsSlice(), pk...)
	if k.kind == nftNet {
		end = append(nftLast(k.src).AsSlice(), pk...)
	}
	return key, end
}

// parseElem reads an element of grant, net or door; ok is false for one
// that is not of the form we write.
func (r *nftRules) parseElem(kind string, el nftables.SetElement) (nftKey, bool) {
	n := r.addrLen()
	if len(el.Key) != n+8 {
		return nftKey{}, false
	}
	a, ok := r.parseAddr(el.Key[:n])
	if !ok {
		return nftKey{}, false
	}
	p, ok := nftParsePort(el.Key[n:])
	if !ok {
		return nftKey{}, false
	}
	k := nftKey{kind: kind, src: netip.PrefixFrom(a, a.BitLen()), port: p}
	if kind != nftNet {
		return k, len(el.KeyEnd) == 0
	}
	if len(el.KeyEnd) != n+8 || !bytes.Equal(el.KeyEnd[n:], el.Key[n:]) {
		return nftKey{}, false
	}
	last, ok := r.parseAddr(el.KeyEnd[:n])
	if !ok {
		return nftKey{}, false
	}
	src, ok := nftRangePrefix(a, last)
	if !ok || src.IsSingleIP() {
		return nftKey{}, false
	}
	k.src = src
	return k, true
}
