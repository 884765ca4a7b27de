package firewall

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

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
