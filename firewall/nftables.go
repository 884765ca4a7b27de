package firewall

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
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
func newNFTRules(fam family, o *Options) (*nftRules, error) {
	return newNFTRulesNetns(fam, o, 0)
}

// newNFTRulesNetns is newNFTRules in the network namespace netnsFd (for
// the tests; 0: ours).
func newNFTRulesNetns(fam family, o *Options, netnsFd int) (*nftRules, error) {
	switch o.Hook {
	case nftHookInput, nftHookForward:
	default:
		return nil, optErr("hook", "%q is not an nftables hook webknock uses: want %s or %s", o.Hook, nftHookInput, nftHookForward)
	}
	if o.Table == "" {
		return nil, optErr("table", "no table name")
	}
	return &nftRules{
		fam: fam, table: o.Table, chain: nftChains[fam], hook: o.Hook, marker: markerFor(o.StateDir),
		netns: netnsFd, log: o.Logger, keys: map[nftKey][]entry{},
		rt: &retrier{clock: o.Clock, log: o.Logger.With(keyFamily, fam), delays: defaultDelays,
			timeout: o.CallTimeout, cmd: backendNFTables},
	}, nil
}

// nftUsable tells whether nftables works here: it lists the tables once.
// A kernel without nf_tables, or a process without CAP_NET_ADMIN, is told
// of plainly.
func nftUsable(ctx context.Context, o *Options) error {
	timeout := cmp.Or(o.CallTimeout, defaultLockWait+5*time.Second)
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

// The layout: the table, the chain, the sets and the rules we want.

func (r *nftRules) tableObj() *nftables.Table {
	return &nftables.Table{Name: r.table, Family: nftables.TableFamilyINet}
}

func (r *nftRules) hookNum() nftables.ChainHook {
	if r.hook == nftHookForward {
		return *nftables.ChainHookForward
	}
	return *nftables.ChainHookInput
}

func (r *nftRules) chainObj() *nftables.Chain {
	policy := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name: r.chain, Table: r.tableObj(), Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookRef(r.hookNum()), Priority: nftables.ChainPriorityRef(nftPriority), Policy: &policy,
	}
}

// nftSetID numbers the sets of a batch (nftables' own counter is not safe
// for two families' workers at once).
var nftSetID atomic.Uint32

func (r *nftRules) addrType() nftables.SetDatatype {
	if r.fam == ipv6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

// setObj is the set of kind as we create it.
func (r *nftRules) setObj(kind string) *nftables.Set {
	s := &nftables.Set{Table: r.tableObj(), Name: r.setName(kind), ID: nftSetID.Add(1)}
	switch kind {
	case nftPorts:
		s.KeyType = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	case nftAllow:
		s.KeyType, s.Interval, s.KeyByteOrder = r.addrType(), true, binaryutil.BigEndian
	default:
		s.KeyType = nftables.MustConcatSetType(r.addrType(), nftables.TypeInetProto, nftables.TypeInetService)
		s.HasTimeout = true
		switch kind {
		case nftNet:
			s.Interval, s.Concatenation = true, true
		case nftDoor:
			// The kernel would cap a dynamic set at 65,535 elements.
			s.Dynamic, s.Size = true, nftDoorSize
		}
	}
	return s
}

// nftSetOK tells whether a listed set is as we create it.
func nftSetOK(have, want *nftables.Set) bool {
	return have.KeyType.GetNFTMagic() == want.KeyType.GetNFTMagic() && have.KeyType.Bytes == want.KeyType.Bytes &&
		have.Interval == want.Interval && have.HasTimeout == want.HasTimeout && have.Dynamic == want.Dynamic &&
		!have.IsMap && !have.Constant && !have.Anonymous && have.Timeout == 0
}

// Expressions.

func nftComment(c string) []byte { return userdata.AppendString(nil, userdata.TypeComment, c) }

func nftRuleComment(ru *nftables.Rule) string {
	c, _ := userdata.GetString(ru.UserData, userdata.TypeComment)
	return c
}

func nftCmp(op expr.CmpOp, data ...byte) expr.Any {
	return &expr.Cmp{Op: op, Register: nftReg1, Data: data}
}

var nftAccept = &expr.Verdict{Kind: expr.VerdictAccept}

func (r *nftRules) nfproto() byte {
	if r.fam == ipv6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

// saddr loads the source address into NFT_REG_1, after the check of the
// family that nft needs to print it as ip saddr.
func (r *nftRules) saddr() []expr.Any {
	off := uint32(12)
	if r.fam == ipv6 {
		off = 8
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: nftReg1},
		nftCmp(expr.CmpOpEq, r.nfproto()),
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: nftReg1, Base: expr.PayloadBaseNetworkHeader,
			Offset: off, Len: uint32(r.addrLen())},
	}
}

// nftProtoPort loads meta l4proto . th dport into the 32-bit registers
// from reg on (NFT_REG_1 is NFT_REG32_00).
func nftProtoPort(reg uint32) []expr.Any {
	port := reg + 1
	if reg == nftReg1 {
		port = nftReg3200 + 1
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: nftCanonReg(reg)},
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: nftCanonReg(port), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// nftCanonReg is the name the kernel lists a 32-bit register by: the
// 128-bit register that starts there, if one does (NFT_REG32_04 is NFT_REG_2).
func nftCanonReg(reg uint32) uint32 {
	if reg < nftReg3200 {
		return reg
	}
	if i := reg - nftReg3200; i%4 == 0 {
		return i/4 + 1
	}
	return reg
}

// sourceKey loads ip saddr . meta l4proto . th dport.
func (r *nftRules) sourceKey() []expr.Any {
	return append(r.saddr(), nftProtoPort(nftReg3200+uint32(r.addrLen()/4))...)
}

func nftCtStateNew() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: nftReg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: nftReg1, DestRegister: nftReg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
		nftCmp(expr.CmpOpNeq, 0, 0, 0, 0),
	}
}

// nftTCPFlags is meta l4proto tcp tcp flags & mask != value.
func nftTCPFlags(mask, value byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: nftReg1},
		nftCmp(expr.CmpOpEq, unix.IPPROTO_TCP),
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: nftReg1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: nftReg1, DestRegister: nftReg1, Len: 1, Mask: []byte{mask}, Xor: []byte{0}},
		nftCmp(expr.CmpOpNeq, value),
	}
}

// TCP flags.
const (
	nftTCPFIN = 0x01
	nftTCPSYN = 0x02
	nftTCPRST = 0x04
	nftTCPACK = 0x10
)

func nftConcat(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

// program is the chain's rules for t (nil: no tail yet): the marker, the
// fixed program and, with protect, the tail.
func (r *nftRules) program(t *tail) []*nftables.Rule {
	tab, ch := r.tableObj(), &nftables.Chain{Name: r.chain}
	mk := func(comment string, exprs ...expr.Any) *nftables.Rule {
		return &nftables.Rule{Table: tab, Chain: ch, Exprs: exprs, UserData: nftComment(comment)}
	}
	lookup := func(kind string) *expr.Lookup { return &expr.Lookup{SourceRegister: nftReg1, SetName: r.setName(kind)} }
	rs := []*nftables.Rule{
		mk(r.marker.args()[3], &expr.Counter{}),
		mk(commentNFProto, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: nftReg1}, nftCmp(expr.CmpOpNeq, r.nfproto()),
			&expr.Verdict{Kind: expr.VerdictReturn}),
		mk(commentPorts, nftConcat(nftProtoPort(nftReg1), []expr.Any{&expr.Lookup{SourceRegister: nftReg1, SetName: r.setName(nftPorts), Invert: true},
			&expr.Verdict{Kind: expr.VerdictReturn}})...),
		mk(commentGrants, nftConcat(r.sourceKey(), []expr.Any{lookup(nftGrant), nftAccept})...),
		mk(commentNets, nftConcat(r.sourceKey(), []expr.Any{lookup(nftNet), nftAccept})...),
		mk(commentDoors, nftConcat(nftCtStateNew(), r.sourceKey(), []expr.Any{lookup(nftDoor),
			&expr.Dynset{SrcRegKey: nftReg1, SetName: r.setName(nftDoor), Operation: nftDynsetDelete}, nftAccept})...),
	}
	if t == nil || !t.protect {
		return rs
	}
	reset := &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}
	return append(rs,
		mk(commentAllow, nftConcat(r.saddr(), []expr.Any{lookup(nftAllow), nftAccept})...),
		mk(commentReset, nftConcat(nftTCPFlags(nftTCPFIN|nftTCPSYN|nftTCPRST|nftTCPACK, nftTCPSYN), nftCtStateNew(), []expr.Any{reset})...),
		mk(commentReset, nftConcat(nftTCPFlags(nftTCPRST, nftTCPRST), []expr.Any{
			&expr.Ct{Register: nftReg1, Key: expr.CtKeyDIRECTION}, nftCmp(expr.CmpOpEq, nftCtDirReply), reset})...),
		mk(commentProtect, nftConcat(nftCtStateNew(), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}})...),
	)
}

// nftRuleSig is what makes a rule the same as another: its comment and its
// expressions, counters and set ids aside.
func nftRuleSig(ru *nftables.Rule) string {
	var b strings.Builder
	b.WriteString(strconv.Quote(nftRuleComment(ru)))
	for _, e := range ru.Exprs {
		switch x := e.(type) {
		case *expr.Counter:
			e = &expr.Counter{}
		case *expr.Lookup:
			y := *x
			y.SetID = 0
			e = &y
		case *expr.Dynset:
			y := *x
			y.SetID = 0
			e = &y
		}
		data, err := expr.Marshal(byte(nftables.TableFamilyINet), e)
		if err != nil {
			b.WriteString(" ?")
			continue
		}
		b.WriteString(" " + hex.EncodeToString(data))
	}
	return b.String()
}

// nftIsMarker tells whether ru is an ownership marker (ours or another
// webknock's): a counter, and the marker's comment.
func nftIsMarker(ru *nftables.Rule) (rule, bool) {
	if len(ru.Exprs) != 1 {
		return rule{}, false
	}
	if _, ok := ru.Exprs[0].(*expr.Counter); !ok {
		return rule{}, false
	}
	m, ok := parseRule([]string{"-m", "comment", "--comment", nftRuleComment(ru)})
	if !ok || m.kind != kindMarker {
		return rule{}, false
	}
	return m, true
}

// nftOurComment tells whether c is the comment of a rule of our program.
func nftOurComment(c string) bool {
	switch c {
	case commentNFProto, commentPorts, commentGrants, commentNets, commentDoors, commentAllow, commentReset, commentProtect:
		return true
	}
	return false
}

// The allow set: an interval set of one field holds each range as a start
// element and, unless the range ends with the address space, an end
// element one past its last address.

type nftRange struct{ lo, hi netip.Addr }

// allowRanges are the always_allow networks of the family, merged into
// disjoint ranges in order.
func (r *nftRules) allowRanges(t *tail) []nftRange {
	var rs []nftRange
	if t == nil {
		return nil
	}
	for _, n := range t.allow {
		if familyOf(n.Addr()) == r.fam {
			rs = append(rs, nftRange{n.Masked().Addr(), nftLast(n)})
		}
	}
	slices.SortFunc(rs, func(a, b nftRange) int { return a.lo.Compare(b.lo) })
	var out []nftRange
	for _, x := range rs {
		if n := len(out); n > 0 {
			cur := &out[n-1]
			if next := cur.hi.Next(); !next.IsValid() || x.lo.Compare(next) <= 0 {
				if x.hi.Compare(cur.hi) > 0 {
					cur.hi = x.hi
				}
				continue
			}
		}
		out = append(out, x)
	}
	return out
}

func nftAllowElems(rs []nftRange) []nftables.SetElement {
	var els []nftables.SetElement
	for _, x := range rs {
		els = append(els, nftables.SetElement{Key: x.lo.AsSlice()})
		if next := x.hi.Next(); next.IsValid() {
			els = append(els, nftables.SetElement{Key: next.AsSlice(), IntervalEnd: true})
		}
	}
	return els
}

// parseAllow reads the ranges of the allow set's elements.
func (r *nftRules) parseAllow(els []nftables.SetElement) ([]nftRange, bool) {
	type point struct {
		a   netip.Addr
		end bool
	}
	ps := make([]point, 0, len(els))
	for _, el := range els {
		a, ok := r.parseAddr(el.Key)
		if !ok {
			return nil, false
		}
		ps = append(ps, point{a, el.IntervalEnd})
	}
	slices.SortFunc(ps, func(x, y point) int {
		if c := x.a.Compare(y.a); c != 0 {
			return c
		}
		switch {
		case x.end == y.end:
			return 0
		case x.end:
			return -1
		}
		return 1
	})
	var out []nftRange
	var open *netip.Addr
	for _, p := range ps {
		switch {
		case !p.end && open == nil:
			a := p.a
			open = &a
		case p.end && open != nil:
			out = append(out, nftRange{*open, p.a.Prev()})
			open = nil
		}
	}
	if open != nil {
		out = append(out, nftRange{*open, nftLast(netip.PrefixFrom(*open, 0))})
	}
	return out, true
}

func nftPortElems(t *tail) []nftables.SetElement {
	if t == nil {
		return nil
	}
	els := make([]nftables.SetElement, len(t.ports))
	for i, p := range t.ports {
		els[i] = nftables.SetElement{Key: nftPortKey(p)}
	}
	return els
}

func (r *nftRules) parsePorts(els []nftables.SetElement) ([]Port, bool) {
	ps := make([]Port, 0, len(els))
	for _, el := range els {
		p, ok := nftParsePort(el.Key)
		if !ok {
			return nil, false
		}
		ps = append(ps, p)
	}
	return ps, true
}

// nftSamePorts tells whether two lists hold the same ports, in any order.
func nftSamePorts(a, b []Port) bool {
	key := func(p Port) string { return p.String() }
	x, y := make([]string, len(a)), make([]string, len(b))
	for i, p := range a {
		x[i] = key(p)
	}
	for i, p := range b {
		y[i] = key(p)
	}
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(slices.Compact(x), slices.Compact(y))
}

// Calls. They share one lasting netlink socket: closing a socket after a
// commit that deleted anything makes the kernel wait for the deleted
// objects' release (an RCU grace period, some 12 ms). A call that fails or
// is abandoned closes it; the next opens another.

// nftOwnPorts are the netlink port ids of our sockets, by when they were
// last used: the monitor tells our own changes by them.
var nftOwnPorts = struct {
	sync.Mutex
	m map[uint32]time.Time
}{m: map[uint32]time.Time{}}

// nftOwnFor is how long a port id stays known as ours after its last use:
// the monitor reads the changes a call made a moment later.
const nftOwnFor = time.Minute

// nftTouch notes that our socket with port id pid is in use.
func nftTouch(pid uint32) {
	if pid == 0 {
		return
	}
	now := time.Now()
	nftOwnPorts.Lock()
	defer nftOwnPorts.Unlock()
	for p, t := range nftOwnPorts.m {
		if now.Sub(t) > nftOwnFor {
			delete(nftOwnPorts.m, p)
		}
	}
	nftOwnPorts.m[pid] = now
}

func nftOwnPort(pid uint32) bool {
	nftOwnPorts.Lock()
	defer nftOwnPorts.Unlock()
	_, ok := nftOwnPorts.m[pid]
	return ok
}

// nftPortID is the netlink port id of c.
func nftPortID(c *netlink.Conn) uint32 {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var pid uint32
	_ = rc.Control(func(fd uintptr) {
		if sa, err := unix.Getsockname(int(fd)); err == nil {
			if nl, ok := sa.(*unix.SockaddrNetlink); ok {
				pid = nl.Pid
			}
		}
	})
	return pid
}

// dial opens a lasting connection in our network namespace. Every socket
// it opens is noted as ours (nftables opens another for a call made after
// the lasting one is closed).
func (r *nftRules) dial() (*nftables.Conn, uint32, error) {
	var port uint32
	note := func(c *netlink.Conn) error {
		port = nftPortID(c)
		nftTouch(port)
		return nil
	}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(note)}
	if r.netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(r.netns))
	}
	c, err := nftables.New(opts...)
	return c, port, err
}

// getConn is the shared connection, opened if need be.
func (r *nftRules) getConn() (*nftables.Conn, error) {
	r.connMu.Lock()
	defer r.connMu.Unlock()
	if r.conn == nil {
		c, port, err := r.dial()
		if err != nil {
			return nil, err
		}
		r.conn, r.connPort = c, port
	}
	nftTouch(r.connPort)
	return r.conn, nil
}

// dropConn closes c; the next call opens another.
func (r *nftRules) dropConn(c *nftables.Conn) {
	r.connMu.Lock()
	if r.conn == c {
		r.conn = nil
	}
	r.connMu.Unlock()
	_ = c.CloseLasting()
}

// close closes the shared connection, if one is open.
func (r *nftRules) close() {
	r.connMu.Lock()
	c := r.conn
	r.connMu.Unlock()
	if c != nil {
		r.dropConn(c)
	}
}

// call runs fn through the retrier. A table, chain or set that does not
// exist is errNoChain. After a failure the connection is closed: its
// socket may hold answers nobody read, or fn may have left messages
// unsent; an abandoned call's is closed at once, which ends a wait in it.
func (r *nftRules) call(ctx context.Context, op string, fn func(ctx context.Context, c *nftables.Conn) error) error {
	return r.rt.do(ctx, op, func(ctx context.Context, _ int) error {
		c, err := r.getConn()
		if err != nil {
			return err
		}
		stop := context.AfterFunc(ctx, func() { r.dropConn(c) })
		err = fn(ctx, c)
		if !stop() && err == nil {
			err = ctx.Err()
		}
		if err != nil {
			r.dropConn(c)
		}
		if err != nil && nftNotExist(err) {
			return fmt.Errorf("%w (%v)", errNoChain, err)
		}
		return err
	})
}

// nftFlush sends the batch built on c, unless the call was abandoned:
// after its socket is closed, nftables would open another.
func nftFlush(ctx context.Context, c *nftables.Conn) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.Flush()
}

// nftNotExist tells whether err says that a table, chain, set or element
// does not exist. Some of nftables' listings keep only the text of the
// error.
func nftNotExist(err error) bool {
	return errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), unix.ENOENT.Error())
}

func nftExists(err error) bool {
	return errors.Is(err, unix.EEXIST) || strings.Contains(err.Error(), unix.EEXIST.Error())
}

// nftDormant tells whether a table is dormant. nftables reads the flags in
// the host's byte order, not the kernel's big endian.
func nftDormant(t *nftables.Table) bool {
	f := t.Flags
	if binaryutil.NativeEndian.Uint32(binaryutil.BigEndian.PutUint32(1)) != 1 {
		f = binaryutil.BigEndian.Uint32(binaryutil.NativeEndian.PutUint32(f))
	}
	return f&nftTableDormant != 0
}

// nftSnap is what the kernel holds of our table.
type nftSnap struct {
	table  *nftables.Table // nil: none
	chains map[string]*nftables.Chain
	rules  map[string][]*nftables.Rule // of the chains ipv4 and ipv6
	sets   map[string]*nftables.Set
	elems  map[string][]nftables.SetElement // of this family's sets, when asked for
}

// snapshot lists our table: its chains, the rules of ipv4 and ipv6, its
// sets and, with elems, the elements of this family's sets. A missing
// table is no error: table is nil.
func (r *nftRules) snapshot(ctx context.Context, elems bool) (*nftSnap, error) {
	var s *nftSnap
	err := r.call(ctx, "list", func(ctx context.Context, c *nftables.Conn) (err error) {
		s, err = r.read(ctx, c, elems)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: list table inet %s: %w", r.name(), r.table, err)
	}
	return s, nil
}

func (r *nftRules) read(ctx context.Context, c *nftables.Conn, elems bool) (*nftSnap, error) {
	s := &nftSnap{chains: map[string]*nftables.Chain{}, rules: map[string][]*nftables.Rule{},
		sets: map[string]*nftables.Set{}, elems: map[string][]nftables.SetElement{}}
	t, err := c.ListTableOfFamily(r.table, nftables.TableFamilyINet)
	switch {
	case err != nil && nftNotExist(err):
		return s, nil
	case err != nil:
		return nil, err
	}
	s.table = t
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, err
	}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == r.table {
			s.chains[ch.Name] = ch
		}
	}
	for _, name := range nftChains {
		ch := s.chains[name]
		if ch == nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rules, err := c.GetRules(t, ch)
		switch {
		case err != nil && nftNotExist(err): // deleted meanwhile
			delete(s.chains, name)
			continue
		case err != nil:
			return nil, err
		}
		s.rules[name] = rules
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, err
	}
	for _, set := range sets {
		s.sets[set.Name] = set
	}
	if !elems {
		return s, nil
	}
	for _, kind := range nftSetKinds {
		set := s.sets[r.setName(kind)]
		if set == nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		els, err := c.GetSetElements(set)
		switch {
		case err != nil && nftNotExist(err):
			delete(s.sets, set.Name)
			continue
		case err != nil:
			return nil, err
		}
		s.elems[set.Name] = els
	}
	return s, nil
}

// Ownership.

// judge refuses a table that is not ours: one with chains other than ipv4
// and ipv6 or sets other than ours, a family chain of another webknock's
// (its marker and not ours), or one without our marker holding rules that
// webknock did not write. A table without any marker whose every object is
// recognisably webknock's (an empty chain, say) is ours.
func (r *nftRules) judge(s *nftSnap) error {
	if s.table == nil {
		return nil
	}
	var foreign []string
	for name := range s.chains {
		if !slices.Contains(nftChains[:], name) {
			foreign = append(foreign, "chain "+name)
		}
	}
	ours := map[string]bool{}
	for _, fam := range families {
		for _, kind := range nftSetKinds {
			ours[kind+nftSuffix(fam)] = true
		}
	}
	for name := range s.sets {
		if !ours[name] {
			foreign = append(foreign, "set "+name)
		}
	}
	for _, name := range nftChains {
		rules := s.rules[name]
		marked, n := false, 0
		var other *rule
		for _, ru := range rules {
			m, isM := nftIsMarker(ru)
			switch {
			case isM && m == r.marker:
				marked = true
			case isM && other == nil:
				other = &m
			case !isM && !nftOurComment(nftRuleComment(ru)):
				n++
			}
		}
		switch {
		case marked:
		case other != nil:
			return &nftOtherOwnerError{table: r.table, chain: name, owner: other.owner}
		case n > 0:
			foreign = append(foreign, fmt.Sprintf("%d %s in chain %s", n, plural(n, "rule", "rules"), name))
		}
	}
	if len(foreign) > 0 {
		slices.Sort(foreign)
		return &nftForeignTableError{table: r.table, what: foreign}
	}
	return nil
}

// nftOtherOwnerError refuses the table of a webknock with another state
// directory: two daemons on one table would delete each other's grants.
type nftOtherOwnerError struct {
	table, chain string
	owner        string // its state directory; "" for none
}

func (e *nftOtherOwnerError) Error() string {
	who := "a webknock without a state_dir"
	if e.owner != "" {
		who = "the webknock with state_dir " + e.owner
	}
	return fmt.Sprintf("table inet %s (chain %s) belongs to %s; stop that one and run webknock flush with its configuration, or choose another firewall.table",
		e.table, e.chain, who)
}

// nftForeignTableError refuses a table of another program's: deleting it
// would undo that program's work.
type nftForeignTableError struct {
	table string
	what  []string
}

func (e *nftForeignTableError) Error() string {
	return fmt.Sprintf("table inet %s exists and is not webknock's: it holds %s that webknock did not write; choose another firewall.table, or delete that table if nothing needs it (nft delete table inet %s)",
		e.table, strings.Join(e.what, ", "), e.table)
}

func (r *nftRules) probe(ctx context.Context) error {
	s, err := r.snapshot(ctx, false)
	if err != nil {
		return err
	}
	if err := r.judge(s); err != nil {
		return &OptionError{Option: "table", Err: err}
	}
	return nil
}

func (r *nftRules) owned(ctx context.Context) error {
	s, err := r.snapshot(ctx, false)
	if err != nil {
		return err
	}
	return r.judge(s)
}

func (r *nftRules) flush(ctx context.Context) error {
	gone := false
	err := r.call(ctx, "delete table", func(ctx context.Context, c *nftables.Conn) error {
		c.DelTable(r.tableObj())
		err := nftFlush(ctx, c)
		if err != nil && nftNotExist(err) {
			gone = true
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: delete table inet %s: %w", r.name(), r.table, err)
	}
	if !gone {
		r.log.Info("table deleted", keyFamily, r.fam, keyChain, "inet "+r.table)
	}
	return nil
}

// ensure makes sure our table, the family's chain with its marker and
// program, and the family's sets exist, in one batch; a table that is not
// ours is refused untouched. The other family's ensure may run at once:
// each creates only its own chain and sets.
func (r *nftRules) ensure(ctx context.Context) error {
	s, err := r.snapshot(ctx, false)
	if err != nil {
		return err
	}
	if err := r.judge(s); err != nil {
		return err
	}
	ch := s.chains[r.chain]
	var made []string
	var missing []string
	for _, kind := range nftSetKinds {
		if s.sets[r.setName(kind)] == nil {
			missing = append(missing, kind)
		}
	}
	adopt := ch != nil && !slices.ContainsFunc(s.rules[r.chain], func(ru *nftables.Rule) bool { m, ok := nftIsMarker(ru); return ok && m == r.marker })
	dormant := s.table != nil && nftDormant(s.table)
	if dormant {
		if err := r.wake(ctx); err != nil {
			return err
		}
		r.log.Warn("table was dormant; woken", keyFamily, r.fam, keyChain, "inet "+r.table)
	}
	if s.table != nil && ch != nil && !adopt && len(missing) == 0 {
		return nil
	}
	err = r.call(ctx, "create", func(ctx context.Context, c *nftables.Conn) error {
		c.AddTable(r.tableObj())
		for _, kind := range missing {
			var els []nftables.SetElement
			switch kind {
			case nftPorts:
				els = nftPortElems(r.tail)
			case nftAllow:
				els = nftAllowElems(r.allowRanges(r.tail))
			}
			if err := c.AddSet(r.setObj(kind), els); err != nil {
				return err
			}
		}
		switch {
		case ch == nil:
			c.AddChain(r.chainObj())
		case adopt:
			c.FlushChain(r.chainObj())
		}
		if ch == nil || adopt {
			for _, ru := range r.program(r.tail) {
				c.AddRule(ru)
			}
		}
		return nftFlush(ctx, c)
	})
	if err != nil {
		return fmt.Errorf("%s: create %s: %w", r.name(), r.where(), err)
	}
	if s.table == nil {
		made = append(made, "table inet "+r.table)
	}
	switch {
	case ch == nil:
		made = append(made, "chain "+r.chain)
	case adopt && len(s.rules[r.chain]) == 0:
		r.log.Info("empty chain adopted; ownership marker added", keyFamily, r.fam, keyChain, r.where())
	case adopt:
		r.log.Warn("chain of an earlier webknock adopted; ownership marker added", keyFamily, r.fam, keyChain, r.where(),
			keyCount, len(s.rules[r.chain]))
	}
	for _, kind := range missing {
		made = append(made, "set "+r.setName(kind))
		if kind == nftDoor {
			r.freshDoor = true
		}
	}
	if len(made) > 0 {
		r.log.Info("nftables objects created", keyFamily, r.fam, keyChain, "inet "+r.table, keyFixed, made)
	}
	return nil
}

// wake makes a dormant table active again, in a batch of its own: the
// kernel refuses one that also adds or changes a base chain of the table
// (EINVAL).
func (r *nftRules) wake(ctx context.Context) error {
	err := r.call(ctx, "wake", func(ctx context.Context, c *nftables.Conn) error {
		c.AddTable(r.tableObj()) // flags 0: not dormant
		return nftFlush(ctx, c)
	})
	if err != nil {
		return fmt.Errorf("%s: wake table inet %s: %w", r.name(), r.table, err)
	}
	return nil
}

// ensureHook has nothing to do: the base chain carries its hook. A chain
// hooked elsewhere than wanted is said; reconcile rebuilds it.
func (r *nftRules) ensureHook(ctx context.Context) error {
	s, err := r.snapshot(ctx, false)
	if err != nil {
		return err
	}
	if ch := s.chains[r.chain]; ch != nil && !r.chainOK(ch) {
		r.log.Warn("our chain is not hooked as configured", keyFamily, r.fam, keyChain, r.where(), keyHook, r.hook,
			"have", nftChainSpec(ch), "want", nftChainSpec(r.chainObj()))
	}
	return nil
}

// chainOK tells whether a listed chain is hooked as the base chain we
// create (its policy aside, which can change in place).
func (r *nftRules) chainOK(ch *nftables.Chain) bool {
	want := r.chainObj()
	return ch.Type == want.Type && ch.Hooknum != nil && *ch.Hooknum == *want.Hooknum &&
		ch.Priority != nil && *ch.Priority == *want.Priority
}

func nftChainSpec(ch *nftables.Chain) string {
	if ch.Hooknum == nil || ch.Priority == nil {
		return "no hook"
	}
	hook := strconv.Itoa(int(*ch.Hooknum))
	switch *ch.Hooknum {
	case *nftables.ChainHookInput:
		hook = nftHookInput
	case *nftables.ChainHookForward:
		hook = nftHookForward
	}
	policy := "?"
	if ch.Policy != nil {
		policy = map[nftables.ChainPolicy]string{nftables.ChainPolicyAccept: "accept", nftables.ChainPolicyDrop: "drop"}[*ch.Policy]
	}
	return fmt.Sprintf("type %s hook %s priority %d; policy %s", ch.Type, hook, *ch.Priority, policy)
}

// Grants.

// nftGrantElem is one element of grant, net or door as listed: its key and
// what its comment says.
type nftGrantElem struct {
	k       nftKey
	e       entry // from the comment; ok false: no comment of ours
	ok      bool
	expires time.Duration
	timeout time.Duration
	raw     nftables.SetElement
}

// grantElems reads the elements of grant, net and door in s.
func (r *nftRules) grantElems(s *nftSnap) (els []nftGrantElem, bad []nftables.SetElement, badSet []string) {
	for _, kind := range []string{nftGrant, nftNet, nftDoor} {
		for _, el := range s.elems[r.setName(kind)] {
			k, ok := r.parseElem(kind, el)
			if !ok {
				bad = append(bad, el)
				badSet = append(badSet, kind)
				continue
			}
			g := nftGrantElem{k: k, expires: el.Expires, timeout: el.Timeout, raw: el}
			if seq, until, ok := parseGrantComment(el.Comment); ok {
				g.e = entry{src: k.src, port: k.port, seq: seq, until: until, door: kind == nftDoor}
				g.ok = true
			}
			els = append(els, g)
		}
	}
	return els, bad, badSet
}

func (r *nftRules) list(ctx context.Context) ([]entry, error) {
	s, err := r.snapshot(ctx, true)
	if err != nil {
		return nil, err
	}
	if err := r.complete(s); err != nil {
		return nil, fmt.Errorf("%s: list %s: %w", r.name(), r.where(), err)
	}
	els, _, _ := r.grantElems(s)
	var es []entry
	for _, g := range els {
		if g.ok {
			es = append(es, g.e)
		}
	}
	return es, nil
}

// complete says errNoChain when the table, the family's chain or one of
// its sets is missing.
func (r *nftRules) complete(s *nftSnap) error {
	switch {
	case s.table == nil:
		return fmt.Errorf("%w: no table inet %s", errNoChain, r.table)
	case s.chains[r.chain] == nil:
		return fmt.Errorf("%w: no chain %s", errNoChain, r.where())
	}
	for _, kind := range nftSetKinds {
		if s.sets[r.setName(kind)] == nil {
			return fmt.Errorf("%w: no set %s in table inet %s", errNoChain, r.setName(kind), r.table)
		}
	}
	return nil
}

// nftElemOps are the element changes of one batch on one set: drop are
// deleted (added first, so that the delete of one that has just expired
// cannot fail the batch); put are then refreshed (added, deleted and added
// again with their timeout, which refreshes it on kernels before 6.12 too).
// The drops go first: a network's range may overlap one that goes.
type nftElemOps struct {
	put, drop []nftables.SetElement
}

// putElem is the element of k with the timeout up to until and the
// comment of e; ok is false when until has passed.
func (r *nftRules) putElem(k nftKey, e entry, now time.Time) (nftables.SetElement, bool) {
	left := time.Unix(e.until, 0).Sub(now)
	if left < time.Millisecond {
		return nftables.SetElement{}, false
	}
	key, end := r.elemKey(k)
	return nftables.SetElement{Key: key, KeyEnd: end, Timeout: left, Comment: grantComment(e.seq, e.until)}, true
}

func (r *nftRules) dropElem(k nftKey) nftables.SetElement {
	key, end := r.elemKey(k)
	return nftables.SetElement{Key: key, KeyEnd: end, Timeout: nftDropTimeout}
}

// nftKeyOnly is el as a delete names it.
func nftKeyOnly(el nftables.SetElement) nftables.SetElement {
	return nftables.SetElement{Key: el.Key, KeyEnd: el.KeyEnd}
}

// applyElems sends one batch of element changes.
func (r *nftRules) applyElems(ctx context.Context, op string, ops map[string]*nftElemOps) error {
	return r.call(ctx, op, func(ctx context.Context, c *nftables.Conn) error {
		for _, kind := range []string{nftGrant, nftNet, nftDoor} {
			o := ops[kind]
			if o == nil || len(o.put)+len(o.drop) == 0 {
				continue
			}
			set := r.setObj(kind)
			for _, els := range [][]nftables.SetElement{o.drop, o.put} {
				if len(els) == 0 {
					continue
				}
				keys := make([]nftables.SetElement, len(els))
				for i, el := range els {
					keys[i] = nftKeyOnly(el)
				}
				if err := c.SetAddElements(set, els); err != nil {
					return err
				}
				if err := c.SetDeleteElements(set, keys); err != nil {
					return err
				}
			}
			if len(o.put) > 0 {
				if err := c.SetAddElements(set, o.put); err != nil {
					return err
				}
			}
		}
		return nftFlush(ctx, c)
	})
}

// nftOverlap finds among keys a network element that k's would overlap: a
// set of concatenated ranges refuses a range that overlaps another but is
// not it.
func nftOverlap(k nftKey, keys iter.Seq[nftKey]) (netip.Prefix, bool) {
	if k.kind != nftNet {
		return netip.Prefix{}, false
	}
	for o := range keys {
		if o.kind == nftNet && o.port == k.port && o.src != k.src && o.src.Overlaps(k.src) {
			return o.src, true
		}
	}
	return netip.Prefix{}, false
}

func (r *nftRules) add(ctx context.Context, es []entry) ([]entry, error) {
	if len(es) == 0 {
		return nil, nil
	}
	now := r.rt.clock.Now()
	// The keys touched, in order, with their entries after the add.
	var order []nftKey
	after := map[nftKey][]entry{}
	byKey := map[nftKey][]entry{}
	for _, e := range es {
		k := nftKeyOf(e)
		if _, ok := after[k]; !ok {
			order = append(order, k)
			after[k] = slices.Clone(r.keys[k])
		}
		if !slices.Contains(after[k], e) {
			after[k] = append(after[k], e)
		}
		byKey[k] = append(byKey[k], e)
	}
	for i, k := range order {
		if len(r.keys[k]) > 0 {
			continue
		}
		if o, ok := nftOverlap(k, iter.Seq[nftKey](func(yield func(nftKey) bool) {
			for o := range r.keys {
				if !yield(o) {
					return
				}
			}
			for _, o := range order[:i] {
				if !yield(o) {
					return
				}
			}
		})); ok {
			return nil, fmt.Errorf("%s: add %s to %s: the network overlaps %s on the same port, which a set of concatenated ranges cannot hold",
				r.name(), nftSrcString(k.src), r.setName(nftNet), o)
		}
	}
	var done []entry // applied by the batches so far
	for start := 0; start < len(order); {
		ops := map[string]*nftElemOps{}
		n, end := 0, start
		for ; end < len(order) && (n == 0 || n+3 <= nftMaxOps); end++ {
			k := order[end]
			o := ops[k.kind]
			if o == nil {
				o = &nftElemOps{}
				ops[k.kind] = o
			}
			if el, ok := r.putElem(k, nftLatest(after[k]), now); ok {
				o.put = append(o.put, el)
			} else {
				o.drop = append(o.drop, r.dropElem(k))
			}
			n += 3
		}
		chunk := order[start:end]
		if err := r.applyElems(ctx, "add", ops); err != nil {
			what := fmt.Sprintf("%d elements", len(chunk))
			if len(es) == 1 {
				what = r.describe(es[0])
			}
			if nftExists(err) {
				err = fmt.Errorf("%w (a network overlaps another on the same port?)", err)
			}
			return done, fmt.Errorf("%s: add %s to %s: %w", r.name(), what, r.where(), err)
		}
		for _, k := range chunk {
			r.keys[k] = after[k]
			done = append(done, byKey[k]...)
		}
		start = end
	}
	return nil, nil
}

func (r *nftRules) del(ctx context.Context, e entry) error {
	k := nftKeyOf(e)
	rest := slices.Clone(r.keys[k])
	if i := slices.Index(rest, e); i >= 0 {
		rest = slices.Delete(rest, i, i+1)
	}
	o := &nftElemOps{}
	if len(rest) > 0 {
		if el, ok := r.putElem(k, nftLatest(rest), r.rt.clock.Now()); ok {
			o.put = append(o.put, el)
		}
	}
	if len(o.put) == 0 {
		o.drop = append(o.drop, r.dropElem(k))
	}
	err := r.applyElems(ctx, "delete", map[string]*nftElemOps{k.kind: o})
	switch {
	case errors.Is(err, errNoChain): // the set is gone, and the element with it
	case err != nil:
		return fmt.Errorf("%s: delete %s from %s: %w", r.name(), r.describe(e), r.where(), err)
	}
	if len(rest) > 0 {
		r.keys[k] = rest
	} else {
		delete(r.keys, k)
	}
	return nil
}

// Drift and repair.

// nftWantedKeys groups the wanted entries by element.
func nftWantedKeys(want []entry) (map[nftKey][]entry, []nftKey) {
	m := map[nftKey][]entry{}
	var order []nftKey
	for _, e := range want {
		k := nftKeyOf(e)
		if _, ok := m[k]; !ok {
			order = append(order, k)
		}
		if !slices.Contains(m[k], e) {
			m[k] = append(m[k], e)
		}
	}
	return m, order
}

// nftElemOK tells whether a listed element is the one e makes: its comment,
// and an expiry that matches until.
func nftElemOK(g nftGrantElem, e entry, now time.Time) bool {
	if !g.ok || g.e.seq != e.seq || g.e.until != e.until || g.timeout <= 0 {
		return false
	}
	left := time.Unix(e.until, 0).Sub(now)
	return (g.expires - left).Abs() <= nftSlack
}

// program state of s compared with what t wants.
type nftProgram struct {
	noTable, noChain bool
	dormant          bool
	chainWrong       bool     // hooked or typed otherwise: to be recreated
	policy           bool     // its policy is not accept
	marker           bool     // the marker is not the first rule
	rules            bool     // the rules differ from the program
	foreignRules     int      // rules in our chain that are not ours
	setsMissing      []string // kinds
	setsWrong        []string // kinds: to be recreated
	ports, allow     bool     // the elements differ
}

func (p nftProgram) clean() bool {
	return !p.noTable && !p.noChain && !p.dormant && !p.chainWrong && !p.marker && !p.rules &&
		!p.policy && len(p.setsMissing) == 0 && len(p.setsWrong) == 0 && !p.ports && !p.allow
}

func (r *nftRules) state(s *nftSnap, t *tail) nftProgram {
	var p nftProgram
	if s.table == nil {
		p.noTable, p.noChain = true, true
		p.setsMissing = slices.Clone(nftSetKinds[:])
		return p
	}
	p.dormant = nftDormant(s.table)
	for _, kind := range nftSetKinds {
		have := s.sets[r.setName(kind)]
		switch {
		case have == nil:
			p.setsMissing = append(p.setsMissing, kind)
		case !nftSetOK(have, r.setObj(kind)):
			p.setsWrong = append(p.setsWrong, kind)
		}
	}
	ch := s.chains[r.chain]
	if ch == nil {
		p.noChain = true
	} else {
		p.chainWrong = !r.chainOK(ch)
		p.policy = ch.Policy == nil || *ch.Policy != nftables.ChainPolicyAccept
		have := s.rules[r.chain]
		want := r.program(t)
		if len(have) == 0 {
			p.marker = true
		} else if m, ok := nftIsMarker(have[0]); !ok || m != r.marker {
			p.marker = true
		}
		if len(have) != len(want) {
			p.rules = true
		}
		for i, ru := range have {
			if i < len(want) && nftRuleSig(ru) != nftRuleSig(want[i]) {
				p.rules = true
			}
			if _, ok := nftIsMarker(ru); !ok && !nftOurComment(nftRuleComment(ru)) {
				p.foreignRules++
			}
		}
	}
	if s.sets[r.setName(nftPorts)] != nil && !slices.Contains(p.setsWrong, nftPorts) {
		have, ok := r.parsePorts(s.elems[r.setName(nftPorts)])
		var want []Port
		if t != nil {
			want = t.ports
		}
		p.ports = !ok || !nftSamePorts(have, want)
	}
	if s.sets[r.setName(nftAllow)] != nil && !slices.Contains(p.setsWrong, nftAllow) {
		have, ok := r.parseAllow(s.elems[r.setName(nftAllow)])
		p.allow = !ok || !slices.Equal(have, r.allowRanges(t))
	}
	return p
}

func (r *nftRules) inspect(ctx context.Context, want, doomed []entry, t tail) (drift, error) {
	var d drift
	s, err := r.snapshot(ctx, true)
	if err != nil {
		return d, err
	}
	p := r.state(s, &t)
	if p.noChain || len(p.setsMissing) > 0 {
		d.noChain, d.missing, d.tail = true, len(want), t.protect
		return d, nil
	}
	d.marker = p.marker
	d.tail = p.dormant || p.chainWrong || p.policy || p.rules || len(p.setsWrong) > 0 || p.ports || p.allow
	d.extra = p.foreignRules
	now := r.rt.clock.Now()
	wanted, order := nftWantedKeys(want)
	doomedKeys := map[nftKey]bool{}
	for _, e := range doomed {
		doomedKeys[nftKeyOf(e)] = true
	}
	els, bad, _ := r.grantElems(s)
	d.extra += len(bad)
	have := map[nftKey]nftGrantElem{}
	for _, g := range els {
		if _, dup := have[g.k]; dup {
			d.extra++
			continue
		}
		have[g.k] = g
	}
	for _, k := range order {
		es := wanted[k]
		e := nftLatest(es)
		if time.Unix(e.until, 0).Compare(now) <= 0 {
			continue
		}
		g, ok := have[k]
		switch {
		case ok && nftElemOK(g, e, now):
		case !ok && k.kind == nftDoor && !r.freshDoor:
			d.used += len(es)
		default:
			d.missing += len(es)
		}
	}
	for k := range have {
		if _, ok := wanted[k]; !ok && !doomedKeys[k] {
			d.extra++
		}
	}
	return d, nil
}

// reconcile makes the family's chain and sets hold exactly the program,
// the tail and the wanted entries. The program is rebuilt in one batch
// (the chain flushed and its rules added again), so that protect is never
// absent; the elements follow, in batches of at most nftMaxOps operations.
func (r *nftRules) reconcile(ctx context.Context, want []entry, t tail) (lost, used []entry, err error) {
	s, err := r.snapshot(ctx, true)
	if err != nil {
		return nil, nil, err
	}
	if err := r.judge(s); err != nil {
		return nil, nil, err
	}
	tl := t
	p := r.state(s, &tl)
	freshDoor := r.freshDoor || s.sets[r.setName(nftDoor)] == nil || slices.Contains(p.setsWrong, nftDoor)
	recreated := map[string]bool{}
	for _, kind := range slices.Concat(p.setsMissing, p.setsWrong) {
		recreated[kind] = true
	}
	if !p.clean() {
		if err := r.rebuild(ctx, s, p, &tl); err != nil {
			return nil, nil, err
		}
	}
	r.freshDoor = false
	r.tail = &tl

	now := r.rt.clock.Now()
	wanted, order := nftWantedKeys(want)
	els, bad, badKinds := r.grantElems(s)
	have := map[nftKey]nftGrantElem{}
	var ops []nftElemOp
	for i, el := range bad {
		if recreated[badKinds[i]] {
			continue
		}
		drop := nftKeyOnly(el)
		drop.Timeout = nftDropTimeout
		ops = append(ops, nftElemOp{kind: badKinds[i], drop: &drop, why: "not webknock's", raw: el})
	}
	for _, g := range els {
		if recreated[g.k.kind] {
			continue
		}
		if _, dup := have[g.k]; dup {
			continue
		}
		have[g.k] = g
	}
	for k, g := range have {
		if _, ok := wanted[k]; ok {
			continue
		}
		why := "not a known grant"
		if !g.ok {
			why = "not webknock's"
		} else if g.e.until <= now.Unix() {
			why = "expired"
		}
		el := r.dropElem(k)
		ops = append(ops, nftElemOp{kind: k.kind, drop: &el, why: why, g: g})
	}
	var errs []error
	keys := map[nftKey][]entry{}
	for _, k := range order {
		es := wanted[k]
		if g, ok := have[k]; ok && nftElemOK(g, nftLatest(es), now) {
			keys[k] = es
		}
	}
	for _, k := range order {
		es := wanted[k]
		e := nftLatest(es)
		_, ok := have[k]
		switch {
		case keys[k] != nil:
		case !ok && k.kind == nftDoor && !freshDoor:
			used = append(used, es...)
		default:
			if o, overlaps := nftOverlap(k, maps.Keys(keys)); overlaps {
				errs = append(errs, fmt.Errorf("%s: restore %s: the network overlaps %s on the same port, which a set of concatenated ranges cannot hold",
					r.name(), r.describe(e), o))
				lost = append(lost, es...)
				continue
			}
			el, live := r.putElem(k, e, now)
			keys[k] = es // if live, taken back should its batch fail; else ended: the worker forgets it
			if !live {
				continue
			}
			ops = append(ops, nftElemOp{kind: k.kind, put: &el, key: k, es: es, why: map[bool]string{true: "refreshed", false: "restored"}[ok]})
		}
	}
	logged := 0
	for start := 0; start < len(ops); {
		batch := map[string]*nftElemOps{}
		n, end := 0, start
		for ; end < len(ops) && (n == 0 || n+3 <= nftMaxOps); end++ {
			op := ops[end]
			b := batch[op.kind]
			if b == nil {
				b = &nftElemOps{}
				batch[op.kind] = b
			}
			if op.put != nil {
				b.put = append(b.put, *op.put)
				n += 3
			} else {
				b.drop = append(b.drop, *op.drop)
				n += 2
			}
		}
		chunk := ops[start:end]
		start = end
		if err := r.applyElems(ctx, "reconcile", batch); err != nil {
			errs = append(errs, fmt.Errorf("%s: reconcile %d elements of %s: %w", r.name(), len(chunk), r.where(), err))
			for _, op := range chunk {
				if op.put != nil {
					delete(keys, op.key)
					lost = append(lost, op.es...)
				}
			}
			continue
		}
		for _, op := range chunk {
			if logged < nftMaxLogged {
				logged++
				if op.put != nil {
					r.log.Info("grant element "+op.why, keyFamily, r.fam, keyRule, r.describe(nftLatest(op.es)))
				} else {
					r.log.Info("element deleted", keyFamily, r.fam, keyRule, r.describeElem(op), keyReason, op.why)
				}
			}
		}
	}
	if len(ops) > logged {
		r.log.Info("more elements reconciled", keyFamily, r.fam, keyCount, len(ops)-logged)
	}
	r.keys = keys
	return lost, used, errors.Join(errs...)
}

// nftMaxLogged bounds the elements a reconcile logs one by one.
const nftMaxLogged = 20

// nftElemOp is one element change of a reconcile.
type nftElemOp struct {
	kind string
	put  *nftables.SetElement // refresh or restore
	drop *nftables.SetElement // delete
	key  nftKey
	es   []entry // put: the entries of the element
	g    nftGrantElem
	raw  nftables.SetElement // drop of an element not of our form
	why  string
}

func (r *nftRules) describeElem(op nftElemOp) string {
	if op.g.ok {
		return r.describe(op.g.e)
	}
	if op.g.k.kind != "" {
		k := op.g.k
		return fmt.Sprintf("%s saddr %s . %s . %d @%s (comment %q)", r.ipWord(), nftSrcString(k.src), k.port.Proto, k.port.Number,
			r.setName(k.kind), op.g.raw.Comment)
	}
	return fmt.Sprintf("@%s element %x (comment %q)", r.setName(op.kind), op.raw.Key, op.raw.Comment)
}

// rebuild puts the table, the chain, the sets of p back in one batch: the
// chain flushed and its whole program added again, the guarded ports and
// always_allow networks replaced. Sets of the wrong type are recreated
// (their elements follow in reconcile).
func (r *nftRules) rebuild(ctx context.Context, s *nftSnap, p nftProgram, t *tail) error {
	ch := s.chains[r.chain]
	if p.dormant {
		if err := r.wake(ctx); err != nil {
			return err
		}
	}
	err := r.call(ctx, "rebuild", func(ctx context.Context, c *nftables.Conn) error {
		c.AddTable(r.tableObj())
		if ch != nil {
			// Rules refer to the sets: gone first.
			c.FlushChain(r.chainObj())
			if p.chainWrong {
				c.DelChain(r.chainObj())
			}
		}
		for _, kind := range p.setsWrong {
			c.DelSet(r.setObj(kind))
		}
		for _, kind := range slices.Concat(p.setsMissing, p.setsWrong) {
			var els []nftables.SetElement
			switch kind {
			case nftPorts:
				els = nftPortElems(t)
			case nftAllow:
				els = nftAllowElems(r.allowRanges(t))
			}
			if err := c.AddSet(r.setObj(kind), els); err != nil {
				return err
			}
		}
		if p.ports {
			set := r.setObj(nftPorts)
			c.FlushSet(set)
			if els := nftPortElems(t); len(els) > 0 {
				if err := c.SetAddElements(set, els); err != nil {
					return err
				}
			}
		}
		if p.allow {
			set := r.setObj(nftAllow)
			c.FlushSet(set)
			if els := nftAllowElems(r.allowRanges(t)); len(els) > 0 {
				if err := c.SetAddElements(set, els); err != nil {
					return err
				}
			}
		}
		if ch == nil || p.chainWrong || p.policy {
			c.AddChain(r.chainObj()) // sets the policy of one that exists
		}
		for _, ru := range r.program(t) {
			c.AddRule(ru)
		}
		return nftFlush(ctx, c)
	})
	if err != nil {
		return fmt.Errorf("%s: rebuild %s: %w", r.name(), r.where(), err)
	}
	var fixed []string
	switch {
	case p.noTable:
		fixed = append(fixed, "table created")
	case p.dormant:
		fixed = append(fixed, "table woken")
	}
	switch {
	case p.noChain:
		fixed = append(fixed, "chain created")
	case p.chainWrong:
		fixed = append(fixed, "chain recreated with its hook")
	case p.policy:
		fixed = append(fixed, "policy accept restored")
	case p.marker:
		fixed = append(fixed, "ownership marker restored")
	}
	if p.rules && !p.noChain {
		fixed = append(fixed, "rules rebuilt")
	}
	for _, kind := range p.setsMissing {
		fixed = append(fixed, "set "+r.setName(kind)+" created")
	}
	for _, kind := range p.setsWrong {
		fixed = append(fixed, "set "+r.setName(kind)+" recreated")
	}
	if p.ports {
		fixed = append(fixed, "guarded ports replaced")
	}
	if p.allow {
		fixed = append(fixed, "always_allow networks replaced")
	}
	r.log.Info("chain rebuilt", keyFamily, r.fam, keyChain, r.where(), keyFixed, fixed, keyProtect, t.protect)
	return nil
}

// usedDoors counts the wanted door entries whose element is gone: a
// connection used them. It lists the door set alone, so that it costs
// little however many other grants there are.
func (r *nftRules) usedDoors(ctx context.Context, want []entry) (int, error) {
	var els []nftables.SetElement
	err := r.call(ctx, "list", func(ctx context.Context, c *nftables.Conn) error {
		set, err := c.GetSetByName(r.tableObj(), r.setName(nftDoor))
		if err != nil {
			return err
		}
		els, err = c.GetSetElements(set)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("%s: list set %s: %w", r.name(), r.setName(nftDoor), err)
	}
	have := make(map[nftKey]bool, len(els))
	for _, el := range els {
		if k, ok := r.parseElem(nftDoor, el); ok {
			have[k] = true
		}
	}
	n := 0
	for _, e := range want {
		if e.door && !have[nftKeyOf(e)] {
			n++
		}
	}
	return n, nil
}
