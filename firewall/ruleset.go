package firewall

import (
	"context"
	"net/netip"
	"slices"
	"time"
)

// ruleset is one family's rules of ours in the kernel, at the level of
// grants: our chain (iptables) or our chain and sets (nftables), its
// ownership marker, the protect tail, the hook that sends traffic to it,
// and one entry per port of each grant. The family's worker is its only
// user, from its own goroutine; every call is retried and counted by the
// ruleset's retrier.
//
// Errors wrap errNoChain when our chain, table or set is gone (an answer:
// the worker repairs and tries again) and name the object.
type ruleset interface {
	// name is the program the errors and Health speak of: iptables,
	// ip6tables or nftables.
	name() string
	// describe writes e as the kernel holds it, for the log.
	describe(e entry) string
	// retrier runs and counts the ruleset's calls, for Health.
	retrier() *retrier
	// probe checks, changing nothing, that the hook exists and that our
	// chain or table, if there is one, is ours. Problems with an option
	// are *OptionError.
	probe(ctx context.Context) error
	// ensure creates our chain or table with its ownership marker when it
	// is missing, and refuses one that is not ours.
	ensure(ctx context.Context) error
	// ensureHook makes the hook send the traffic to our rules.
	ensureHook(ctx context.Context) error
	// list returns the grant entries the kernel holds.
	list(ctx context.Context) ([]entry, error)
	// add puts es into the kernel, all or none. When it fails, the entries
	// it may have left behind are returned, to be deleted later.
	add(ctx context.Context, es []entry) (left []entry, err error)
	// del deletes es from the kernel, in as few calls as it can; an entry
	// already gone is no error. When it fails, the entries it may have
	// left behind are returned, to be deleted later.
	del(ctx context.Context, es ...entry) (left []entry, err error)
	// inspect compares the kernel with the entries wanted and the protect
	// tail; doomed are entries whose delete is retried on their own
	// schedule, not counted as extra.
	inspect(ctx context.Context, want, doomed []entry, t tail) (drift, error)
	// reconcile makes the kernel hold the marker, exactly the entries
	// wanted, once each, and the tail, and nothing else. It returns the
	// wanted entries it could not restore, and the door entries that are
	// gone because a connection used them (not restored: their grants
	// have ended).
	reconcile(ctx context.Context, want []entry, t tail) (lost, used []entry, err error)
	// owned refuses a chain or table of our name that is not ours; an
	// absent one is fine.
	owned(ctx context.Context) error
	// flush removes the hook to our rules and our chain or table.
	flush(ctx context.Context) error
	// close lets go of what the ruleset holds open (a netlink socket).
	close()
}

// watcher is a ruleset that tells at once of changes others make to our
// rules (the nftables monitor): each hint says by whom, as far as the
// kernel tells. The channel closes when stop does.
type watcher interface {
	watch(stop <-chan struct{}) <-chan string
}

// doorPoller is a ruleset whose door entries connections use up in the
// packet path, which tells no one: usedDoors lists them cheaply, so that
// the worker ends the used grants within doorPoll.
type doorPoller interface {
	usedDoors(ctx context.Context, want []entry) (int, error)
}

// doorPoll is how often the door entries are listed while there are any.
const doorPoll = time.Second

// entry is one port of one grant as the kernel holds it: a rule in our
// chain (iptables) or an element of our set (nftables). It is comparable.
type entry struct {
	src   netip.Prefix // the client, or its network
	port  Port
	seq   string
	until int64 // unix seconds
	// door: the first new connection it lets in ends it, in the packet
	// path (close_on_connect; nftables only).
	door bool
}

// entriesOf are the entries of g: one per port, in the order of its ports;
// door entries when its sequence closes on connect.
func entriesOf(g Grant, door bool) []entry {
	es := make([]entry, len(g.Ports))
	for i, p := range g.Ports {
		es[i] = entry{src: g.Source(), port: p, seq: g.Sequence, until: g.Until.Unix(), door: door}
	}
	return es
}

// grantsOf groups entries into grants: one per source, sequence and until.
func grantsOf(es []entry) []Grant {
	type k struct {
		src   netip.Prefix
		seq   string
		until int64
	}
	idx := map[k]int{}
	var gs []Grant
	for _, e := range es {
		key := k{e.src, e.seq, e.until}
		i, ok := idx[key]
		if !ok {
			i = len(gs)
			idx[key] = i
			gs = append(gs, Grant{IP: e.src.Addr(), Bits: grantBits(e.src), Sequence: e.seq, Until: time.Unix(e.until, 0).UTC()})
		}
		if !slices.Contains(gs[i].Ports, e.port) {
			gs[i].Ports = append(gs[i].Ports, e.port)
		}
	}
	return gs
}

// grantBits is the Bits of a grant to src: 0 for a single address.
func grantBits(src netip.Prefix) int {
	if src.IsSingleIP() {
		return 0
	}
	return src.Bits()
}
