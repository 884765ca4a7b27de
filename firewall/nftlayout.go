package firewall

import (
	"encoding/hex"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

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
