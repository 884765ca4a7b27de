package firewall

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// With iptables-nft (Debian's and most distributions' iptables), the rules
// of table filter are nftables rules in table "ip filter" ("ip6 filter"):
// the nftables monitor tells of every change others make to our chain or
// to the hook, and the worker checks at once. The grant sets (ipset) tell
// no one, nor does iptables-legacy: the periodic check, once a minute,
// finds those changes.

// watch starts the monitor; nil for the dry-run backend and the tests'
// fake tables, which no one else changes.
func (r *iptRules) watch(stop <-chan struct{}) <-chan string {
	if _, real := r.t.(*execTables); !real {
		return nil
	}
	return nftWatch{log: r.log, fam: r.fam, event: r.event, ours: iptOurs}.start(stop)
}

// iptOurs tells whether a generation was made by this process or by an
// iptables it ran.
func iptOurs(e nftEvent) bool { return nftOurs(e) || (e.pid != 0 && ranByUs(int(e.pid))) }

// event picks the changes to our chain and to the hook out of the
// messages: a change to the table filter itself, a chain or a rule of one
// of the two.
func (r *iptRules) event(msg nftMessage) (nftEvent, bool) {
	proto, fam := byte(unix.NFPROTO_IPV4), "ip"
	if r.fam == ipv6 {
		proto, fam = unix.NFPROTO_IPV6, "ip6"
	}
	if msg.proto != proto || msg.strs[nftAttrTable] != table {
		return nftEvent{}, false
	}
	where := fmt.Sprintf("table %s %s", fam, table)
	verb := nftVerb(msg.typ)
	var what, name string
	rank := 0
	switch msg.typ {
	case unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_DELTABLE:
		return nftEvent{change: where + " " + verb, rank: 4}, true
	case unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN:
		what, name, rank = "chain", msg.strs[nftAttrChainName], 3
	case unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE:
		what, name, rank = "rule in chain", msg.strs[nftAttrName], 1
	default:
		return nftEvent{}, false
	}
	if name != r.chain && name != r.hook {
		return nftEvent{}, false
	}
	return nftEvent{change: fmt.Sprintf("%s %s %s of %s", verb, what, name, where), rank: rank}, true
}
