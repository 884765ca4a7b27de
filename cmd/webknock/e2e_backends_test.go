package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// The end-to-end suite runs on both firewall backends: what the kernel
// holds is read with iptables -S or nft, the rest is the same test.

// e2eBackends are the firewall backends the suite runs on.
var e2eBackends = []string{"iptables", "nftables"}

// forBackends runs fn as a subtest per backend, on a world of its own.
func forBackends(t *testing.T, programs []string, fn func(t *testing.T, e *e2e)) {
	for _, b := range e2eBackends {
		t.Run(b, func(t *testing.T) { fn(t, newBackendE2E(t, b, programs...)) })
	}
}

// newBackendE2E is a world whose daemon uses the firewall backend named;
// nftables needs nft, to read what the kernel holds.
func newBackendE2E(tb testing.TB, backend string, programs ...string) *e2e {
	tb.Helper()
	if backend == "nftables" {
		programs = append(programs, "nft")
	}
	e := newE2E(tb, programs...)
	e.backend = backend
	return e
}

// nftTable is our table in the end-to-end configurations.
const nftTable = "webknock"

// grantEntries returns what the kernel holds for the ssh sequence's grants
// of a family, one string per rule (iptables) or set element (nftables),
// each with the source written NET/BITS and the entry's comment.
func (e *e2e) grantEntries(v6 bool) []string {
	e.t.Helper()
	if e.backend != "nftables" {
		cmd := "iptables"
		if v6 {
			cmd = "ip6tables"
		}
		return e.grantRules(cmd)
	}
	var out []string
	for _, set := range []string{"grant", "net", "door"} {
		for _, el := range e.nftElements(set, v6) {
			if strings.Contains(el, "webknock:ssh:") {
				out = append(out, el)
			}
		}
	}
	return out
}

// nftElements lists the elements of one of our sets, as "SRC/BITS
// PROTO/PORT COMMENT"; none when the set or table is gone.
func (e *e2e) nftElements(set string, v6 bool) []string {
	e.t.Helper()
	name := set + "4"
	if v6 {
		name = set + "6"
	}
	out, err := e.in(e.srv, "nft", "-j", "list", "set", "inet", nftTable, name).Output()
	if err != nil {
		return nil
	}
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		e.t.Fatalf("nft -j list set %s: %v\n%s", name, err, out)
	}
	var els []string
	for _, o := range doc.Nftables {
		if o.Set == nil {
			continue
		}
		for _, raw := range o.Set.Elem {
			els = append(els, nftElementString(e.t, raw))
		}
	}
	return els
}

// nftElementString reads one element of nft's JSON: a concatenation, bare
// or wrapped in {"elem": {"val": ..., "comment": ...}}.
func nftElementString(t testing.TB, raw json.RawMessage) string {
	t.Helper()
	var wrapped struct {
		Elem *struct {
			Val     json.RawMessage `json:"val"`
			Comment string          `json:"comment"`
		} `json:"elem"`
	}
	val, comment := raw, ""
	if json.Unmarshal(raw, &wrapped) == nil && wrapped.Elem != nil {
		val, comment = wrapped.Elem.Val, wrapped.Elem.Comment
	}
	var c struct {
		Concat []json.RawMessage `json:"concat"`
	}
	if err := json.Unmarshal(val, &c); err != nil || len(c.Concat) != 3 {
		t.Fatalf("nft element %s: want a concatenation of address, protocol and port", raw)
	}
	var proto string
	var port int
	json.Unmarshal(c.Concat[1], &proto)
	json.Unmarshal(c.Concat[2], &port)
	return fmt.Sprintf("%s %s/%d %s", nftSource(t, c.Concat[0]), proto, port, comment)
}

// nftSource reads an address, a prefix or a range of nft's JSON as NET/BITS.
func nftSource(t testing.TB, raw json.RawMessage) string {
	t.Helper()
	var s string
	if json.Unmarshal(raw, &s) == nil {
		a := netip.MustParseAddr(s)
		return netip.PrefixFrom(a, a.BitLen()).String()
	}
	var p struct {
		Prefix *struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
		Range []string `json:"range"`
	}
	if err := json.Unmarshal(raw, &p); err == nil && p.Prefix != nil {
		return fmt.Sprintf("%s/%d", p.Prefix.Addr, p.Prefix.Len)
	}
	if len(p.Range) == 2 {
		lo, hi := netip.MustParseAddr(p.Range[0]), netip.MustParseAddr(p.Range[1])
		for bits := lo.BitLen(); bits >= 0; bits-- {
			if n := netip.PrefixFrom(lo, bits).Masked(); n.Addr() == lo && lastAddr(n) == hi {
				return n.String()
			}
		}
	}
	t.Fatalf("nft source %s: not an address, prefix or network range", raw)
	return ""
}

// lastAddr is the last address of n.
func lastAddr(n netip.Prefix) netip.Addr {
	b := n.Addr().AsSlice()
	for i := n.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// ours lists everything of ours in the kernel for a family: our chain
// (iptables -S) and grant sets (ipset save), or our table (nft list table).
func (e *e2e) ours(v6 bool) string {
	e.t.Helper()
	if e.backend == "nftables" {
		return e.must("ip", "netns", "exec", e.srv, "nft", "list", "table", "inet", nftTable)
	}
	cmd, v := "iptables", "4"
	if v6 {
		cmd, v = "ip6tables", "6"
	}
	all := e.must("ip", "netns", "exec", e.srv, cmd, "-w", "5", "-S", "WEBKNOCK")
	for _, kind := range []string{"g", "n"} {
		all += e.must("ip", "netns", "exec", e.srv, "ipset", "save", "WEBKNOCK-"+kind+v)
	}
	return all
}

// plantStale puts a dead grant (its end long past) and an unknown one into
// our IPv4 rules behind webknock's back; staleSources are their sources.
func (e *e2e) plantStale() {
	e.t.Helper()
	if e.backend == "nftables" {
		e.must("ip", "netns", "exec", e.srv, "nft", "add", "element", "inet", nftTable, "grant4",
			`{ 192.0.2.99 . tcp . 22 timeout 1h comment "webknock:ssh:1577836800", 192.0.2.98 . tcp . 22 timeout 1h }`)
		return
	}
	e.must("ip", "netns", "exec", e.srv, "ipset", "add", "WEBKNOCK-g4", "192.0.2.99,tcp:22", "timeout", "3600", "comment", "webknock:ssh:1577836800")
	e.must("ip", "netns", "exec", e.srv, "ipset", "add", "WEBKNOCK-g4", "192.0.2.98,tcp:22", "timeout", "3600")
}

var staleSources = []string{"192.0.2.98", "192.0.2.99"}

// assertSingle checks that nothing of ours is there twice: no rule
// duplicated, one jump (iptables), one protect drop per family.
func (e *e2e) assertSingle() {
	e.t.Helper()
	for _, v6 := range []bool{false, true} {
		all := e.ours(v6)
		if e.backend == "nftables" {
			chain := "ipv4"
			if v6 {
				chain = "ipv6"
			}
			body := nftChainBody(all, chain)
			if n := strings.Count(body, "ct state new drop"); n != 1 {
				e.t.Errorf("chain %s: %d protect drops, want 1:\n%s", chain, n, all)
			}
			if n := strings.Count(body, "webknock:owner"); n != 1 {
				e.t.Errorf("chain %s: %d ownership markers, want 1:\n%s", chain, n, all)
			}
			continue
		}
		rules := strings.Split(strings.TrimSpace(all), "\n")
		seen := map[string]bool{}
		for _, r := range rules {
			if seen[r] {
				e.t.Errorf("duplicate rule %q", r)
			}
			seen[r] = true
		}
		cmd := "iptables"
		if v6 {
			cmd = "ip6tables"
		}
		jumps := map[string]int{}
		for _, l := range strings.Split(e.must("ip", "netns", "exec", e.srv, cmd, "-w", "5", "-S", "INPUT"), "\n") {
			if strings.HasSuffix(l, "-j WEBKNOCK") {
				jumps[l]++
			}
		}
		if len(jumps) == 0 {
			e.t.Errorf("%s: no jump to WEBKNOCK", cmd)
		}
		for j, n := range jumps {
			if n != 1 {
				e.t.Errorf("%s: %q %d times, want once", cmd, j, n)
			}
		}
		if n := strings.Count(all, "webknock:protect"); n != 1 {
			e.t.Errorf("%s: %d protect rules, want 1", cmd, n)
		}
	}
	// One entry per granted address and port.
	for _, v6 := range []bool{false, true} {
		per := map[string]int{}
		for _, g := range e.grantEntries(v6) {
			per[grantEntrySource(g)]++
		}
		for src, n := range per {
			if n != 1 {
				e.t.Errorf("%d grant entries for %s, want 1", n, src)
			}
		}
	}
}

// grantEntrySource is the NET/BITS of a grant entry as grantEntries writes
// it: the -s of a rule, or the first field of an element.
func grantEntrySource(g string) string {
	f := strings.Fields(g)
	if i := slices.Index(f, "-s"); i >= 0 && i+1 < len(f) {
		return f[i+1]
	}
	return f[0]
}

// nftChainBody is the part of `nft list table` output that is chain name.
func nftChainBody(listing, chain string) string {
	_, rest, ok := strings.Cut(listing, "chain "+chain+" {")
	if !ok {
		return ""
	}
	body, _, _ := strings.Cut(rest, "\n\t}")
	return body
}

// assertNothingOurs fails the test if anything of ours is left in the
// kernel; when says at what point.
func (e *e2e) assertNothingOurs(when string) {
	e.t.Helper()
	if e.backend == "nftables" {
		if out := e.must("ip", "netns", "exec", e.srv, "nft", "list", "tables"); strings.Contains(out, "inet "+nftTable) {
			e.t.Errorf("nft list tables %s:\n%s", when, out)
		}
		return
	}
	e.assertNoChain(when, "iptables", "ip6tables")
}

// damage is something another tool does to our rules.
type damage struct {
	name string
	do   func()
	// unhinted: the kernel tells no one (an ipset's change); the check
	// finds it.
	unhinted bool
}

// damages are what other tools do to our rules on each backend: a flush,
// a deleted jump or chain (iptables); a deleted set, chain or table, a
// flushed chain, another program's `flush ruleset` (nftables).
func (e *e2e) damages() []damage {
	run := func(name string, args ...string) {
		e.t.Helper()
		e.must("ip", append([]string{"netns", "exec", e.srv, name}, args...)...)
	}
	if e.backend == "nftables" {
		nft := func(args ...string) { run("nft", args...) }
		return []damage{
			{"flush our chain", func() { nft("flush", "chain", "inet", nftTable, "ipv4") }, false},
			{"delete a grant element", func() { nft("flush", "set", "inet", nftTable, "grant4") }, false},
			{"delete our table", func() { nft("delete", "table", "inet", nftTable) }, false},
			{"flush ruleset", func() { nft("flush", "ruleset") }, false},
		}
	}
	ipt := func(args ...string) { run("iptables", append([]string{"-w", "5"}, args...)...) }
	// In one iptables-restore: the monitor would put a jump back between
	// two commands, and -X would find the chain in use.
	restore := func(chain bool) func() {
		return func() {
			var in strings.Builder
			in.WriteString("*filter\n")
			for _, l := range strings.Split(e.must("ip", "netns", "exec", e.srv, "iptables", "-w", "5", "-S", "INPUT"), "\n") {
				if spec, ok := strings.CutPrefix(l, "-A INPUT "); ok && strings.HasSuffix(l, "-j WEBKNOCK") {
					in.WriteString("-D INPUT " + spec + "\n")
				}
			}
			if chain {
				in.WriteString("-F WEBKNOCK\n-X WEBKNOCK\n")
			}
			in.WriteString("COMMIT\n")
			cmd := e.in(e.srv, "iptables-restore", "-w", "5", "--noflush")
			cmd.Stdin = strings.NewReader(in.String())
			if out, err := cmd.CombinedOutput(); err != nil {
				e.t.Fatalf("iptables-restore: %v: %s", err, out)
			}
		}
	}
	return []damage{
		{"flush our chain", func() { ipt("-F", "WEBKNOCK") }, false},
		{"delete our jumps", restore(false), false},
		{"delete our chain", restore(true), false},
		{name: "flush our grant set", do: func() { run("ipset", "flush", "WEBKNOCK-g4") }, unhinted: true},
	}
}
