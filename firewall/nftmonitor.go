package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The nftables monitor: the kernel tells every change to any table on the
// netlink group NFNLGRP_NFTABLES, as one message per object, then a
// generation message (NEWGEN) that names the process that made them. A
// generation that changed our table (for this family: the table, or this
// family's chain and sets) and was not made by one of our sockets becomes a
// hint, so that the worker checks at once instead of at its next interval.
//
// It reads the messages itself rather than through nftables' Monitor, which
// does not say the table of a set or of an element: another program's
// changes to its own sets (a ban list, say) would wake us at every change.
// An element that the kernel expires, or that the packet path deletes (a
// door used), makes no message. The goroutine sleeps in recvmsg: no polling.

// watch starts the monitor; the channel closes when stop does.
func (r *nftRules) watch(stop <-chan struct{}) <-chan string {
	return nftWatch{log: r.log, fam: r.fam, netns: r.netns, event: r.event, ours: nftOurs}.start(stop)
}

// nftWatch is a monitor of the nftables group: event picks out the changes
// that concern us from the messages, and says who made a generation.
type nftWatch struct {
	log   *slog.Logger
	fam   family
	netns int
	event func(nftMessage) (nftEvent, bool) // a message of an object, read

	ours func(nftEvent) bool // a generation this process made
}

// start starts the monitor; the channel closes when stop does.
func (w nftWatch) start(stop <-chan struct{}) <-chan string {
	out := make(chan string, 1)
	// Subscribed before start returns: a change made after it is told.
	c, err := w.listen()
	go func() {
		defer close(out)
		wait := time.Second
		for {
			if err == nil {
				err = w.monitor(c, stop, out)
				if err == nil {
					return
				}
				wait = time.Second
			}
			w.log.Warn("nftables monitor failed; the periodic check still finds changes", keyFamily, w.fam, keyErr, err)
			nftHint(out, "the nftables monitor failed: "+err.Error())
			select {
			case <-stop:
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, time.Minute)
			c, err = w.listen()
		}
	}()
	return out
}

// nftMonitorBuffer is the receive buffer the monitor asks for: our own
// batches of a thousand elements make a message each.
const nftMonitorBuffer = 8 << 20

// listen opens a netlink socket on the nftables group.
func (w nftWatch) listen() (*netlink.Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: w.netns})
	if err != nil {
		return nil, fmt.Errorf("nftables monitor: %w", err)
	}
	if err := c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("nftables monitor: join group: %w", err)
	}
	// As root the buffer may exceed rmem_max; else what the limit allows.
	forced := false
	if rc, err := c.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			forced = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, nftMonitorBuffer) == nil
		})
	}
	if !forced {
		_ = c.SetReadBuffer(nftMonitorBuffer)
	}
	return c, nil
}

// nftHint tells the worker without waiting: a hint already waiting says as much.
func nftHint(out chan<- string, s string) {
	select {
	case out <- s:
	default:
	}
}

// monitor reads c until stop closes (nil) or it fails.
func (w nftWatch) monitor(c *netlink.Conn, stop <-chan struct{}, out chan<- string) error {
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-stop:
			_ = c.Close() // ends the Receive
		case <-done:
		}
	}()
	defer func() { _ = c.Close() }()
	// The changes of the generation under way: how many, and the one that
	// says most (a table deleted, rather than the rules that went with it).
	var n int
	var top nftEvent
	for {
		msgs, err := c.Receive()
		select {
		case <-stop:
			return nil
		default:
		}
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				// Messages were lost: who knows whose.
				n = 0
				nftHint(out, "nftables changes were missed (the monitor's buffer overflowed)")
				continue
			}
			return fmt.Errorf("nftables monitor: %w", err)
		}
		for _, m := range msgs {
			ev, ok := w.read(m)
			switch {
			case !ok:
			case ev.gen:
				if n > 0 && !w.ours(ev) {
					s := top.change
					if n > 1 {
						s += fmt.Sprintf(" (and %d more %s)", n-1, plural(n-1, "change", "changes"))
					}
					nftHint(out, s+" by "+ev.who())
				}
				n = 0
			case ev.change != "":
				if n == 0 || ev.rank > top.rank {
					top = ev
				}
				n++
			}
		}
	}
}

// nftEvent is what one message of the group says: a change to our table
// that concerns this family, or the end of a generation.
type nftEvent struct {
	change string
	rank   int // how much the change says: a table's most
	gen    bool
	pid    uint32 // gen: the process (thread) that made it; 0: not told
	comm   string
	port   uint32 // gen: the netlink port id of the socket that made it
}

func (e nftEvent) who() string {
	if e.pid == 0 {
		return "an unknown process"
	}
	if e.comm == "" {
		return "pid " + strconv.FormatUint(uint64(e.pid), 10)
	}
	return fmt.Sprintf("%s (pid %d)", e.comm, e.pid)
}

// nftOurs tells whether a generation was made by this process: one of our
// sockets (the port id), or one of our threads (the kernel gives a
// thread's id, in the initial pid namespace).
func nftOurs(e nftEvent) bool {
	if nftOwnPort(e.port) {
		return true
	}
	if e.pid == 0 {
		return false
	}
	if int(e.pid) == os.Getpid() {
		return true
	}
	_, err := os.Stat("/proc/self/task/" + strconv.FormatUint(uint64(e.pid), 10))
	return err == nil
}

// Attributes of the messages: the table is attribute 1 of every object;
// the name or the object that holds it follows.
const (
	nftAttrTable     = 1
	nftAttrName      = 2 // of a set, an object, a flowtable; the set of elements; the chain of a rule
	nftAttrChainName = 3 // NFTA_CHAIN_NAME
	nftAttrGenPID    = 2 // NFTA_GEN_PROC_PID
	nftAttrGenComm   = 3 // NFTA_GEN_PROC_NAME
)

// nftMessage is a message of the nftables group, read: its type, the
// protocol family of its object and its string attributes.
type nftMessage struct {
	typ   int
	proto byte
	strs  map[uint16]string
}

// parseNFTMessage reads a message of the group; a generation's is returned
// as an event at once.
func parseNFTMessage(m netlink.Message) (msg nftMessage, gen nftEvent, ok bool) {
	if m.Header.Type>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
		return msg, gen, false
	}
	typ := int(m.Header.Type & 0xff)
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return msg, gen, false
	}
	ad.ByteOrder = binary.BigEndian
	strs := map[uint16]string{}
	var pid uint32
	for ad.Next() {
		switch {
		case typ == unix.NFT_MSG_NEWGEN && ad.Type() == nftAttrGenPID:
			pid = ad.Uint32()
		default:
			if b := ad.Bytes(); len(b) > 0 && b[len(b)-1] == 0 {
				strs[ad.Type()] = string(b[:len(b)-1])
			}
		}
	}
	if typ == unix.NFT_MSG_NEWGEN {
		return msg, nftEvent{gen: true, pid: pid, comm: strs[nftAttrGenComm], port: m.Header.PID}, true
	}
	return nftMessage{typ: typ, proto: m.Data[0], strs: strs}, gen, true
}

// read reads a message of the group: a generation's end, or a change that
// event picks out.
func (w nftWatch) read(m netlink.Message) (nftEvent, bool) {
	msg, gen, ok := parseNFTMessage(m)
	switch {
	case !ok:
		return nftEvent{}, false
	case gen.gen:
		return gen, true
	}
	return w.event(msg)
}

// nftVerb says what a message did to its object.
func nftVerb(typ int) string {
	switch typ {
	case unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_NEWRULE, unix.NFT_MSG_NEWSET, unix.NFT_MSG_NEWSETELEM,
		unix.NFT_MSG_NEWOBJ, unix.NFT_MSG_NEWFLOWTABLE:
		return "added"
	case unix.NFT_MSG_DELTABLE, unix.NFT_MSG_DELCHAIN, unix.NFT_MSG_DELRULE, unix.NFT_MSG_DELSET, unix.NFT_MSG_DELSETELEM,
		unix.NFT_MSG_DELOBJ, unix.NFT_MSG_DELFLOWTABLE:
		return "deleted"
	}
	return "changed"
}

// event picks the changes to our table that concern this family out of
// the messages of nftables objects.
func (r *nftRules) event(msg nftMessage) (nftEvent, bool) {
	typ, strs := msg.typ, msg.strs
	if msg.proto != unix.NFPROTO_INET || strs[nftAttrTable] != r.table {
		return nftEvent{}, false
	}
	verb := nftVerb(typ)
	table := "table inet " + r.table
	var what, name string
	rank := 0
	switch typ {
	case unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_DELTABLE:
		return nftEvent{change: table + " " + verb, rank: 4}, true
	case unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN:
		what, name, rank = "chain", strs[nftAttrChainName], 3
		if !r.mine(name, false) {
			return nftEvent{}, false
		}
	case unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE:
		what, name, rank = "rule in chain", strs[nftAttrName], 1
		if !r.mine(name, false) {
			return nftEvent{}, false
		}
	case unix.NFT_MSG_NEWSET, unix.NFT_MSG_DELSET:
		what, name, rank = "set", strs[nftAttrName], 2
		if !r.mine(name, true) {
			return nftEvent{}, false
		}
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
		what, name = "element of set", strs[nftAttrName]
		if !r.mine(name, true) {
			return nftEvent{}, false
		}
	default:
		what, name = "object", strs[nftAttrName]
	}
	return nftEvent{change: fmt.Sprintf("%s %s %s of %s", verb, what, name, table), rank: rank}, true
}

// mine tells whether the chain or set named concerns this family: ours,
// or anything not of the other family's.
func (r *nftRules) mine(name string, set bool) bool {
	other := ipv4
	if r.fam == ipv4 {
		other = ipv6
	}
	if !set {
		return name != nftChains[other]
	}
	for _, kind := range nftSetKinds {
		if name == kind+nftSuffix(other) {
			return false
		}
	}
	return true
}
