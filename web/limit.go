package web

import (
	"net"
	"net/netip"
	"sync"
)

// Connection limits on the TCP listener: idle connections cost the daemon a
// file descriptor each, and a few thousand would leave none for the logs and
// iptables. The admin socket has no limit: only root and our user reach it.
const (
	DefaultMaxConns        = 256
	DefaultMaxConnsPerAddr = 16
)

// Why a connection was refused, the label of webknock_web_connections_refused_total.
const (
	limitTotal   = "total"
	limitPerAddr = "per_address"
)

// connLimit counts the open TCP connections, in total and per remote
// address, across every TCP listener the server has (old and new ones
// overlap during a Rebind).
type connLimit struct {
	max, maxPer int
	refused     func(limit string) // counts a refusal; called before the connection is closed
	released    func()             // tests: a counted connection was closed

	mu    sync.Mutex
	open  int
	perIP map[netip.Addr]int
}

func newConnLimit(max, maxPer int, refused func(string)) *connLimit {
	return &connLimit{max: max, maxPer: maxPer, refused: refused, perIP: map[netip.Addr]int{}}
}

// take counts a new connection from ip, or says which limit it exceeds.
func (l *connLimit) take(ip netip.Addr) (ok bool, limit string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.open >= l.max:
		return false, limitTotal
	case l.perIP[ip] >= l.maxPer:
		return false, limitPerAddr
	}
	l.open++
	l.perIP[ip]++
	return true, ""
}

func (l *connLimit) release(ip netip.Addr) {
	l.mu.Lock()
	l.open--
	if n := l.perIP[ip] - 1; n > 0 {
		l.perIP[ip] = n
	} else {
		delete(l.perIP, ip)
	}
	released := l.released
	l.mu.Unlock()
	if released != nil {
		released()
	}
}

// Open is the number of TCP connections open now.
func (l *connLimit) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// limitListener closes a connection over the limits as soon as it is
// accepted, before http.Server spends a goroutine and a timer on it.
type limitListener struct {
	net.Listener
	l *connLimit
}

func (ln limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c)
		ok, limit := ln.l.take(ip)
		if ok {
			return &limitConn{Conn: c, l: ln.l, ip: ip}, nil
		}
		ln.l.refused(limit)
		c.Close()
	}
}

// remoteIP is the connection's peer address; the zero Addr (one bucket) if
// it is not TCP.
func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// limitConn gives its slot back when http.Server closes it.
type limitConn struct {
	net.Conn
	l    *connLimit
	ip   netip.Addr
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}
