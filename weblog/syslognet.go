package weblog

// The sockets of the syslog input: who may send, and reading them.

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// udpRcvBuf is the receive buffer asked for a udp socket: nginx sends
	// without waiting, and the kernel silently drops what does not fit
	// while we are busy, so a burst must fit (about 8,000 nginx lines).
	udpRcvBuf = 8 << 20
	// mmsgBatch is the most datagrams one recvmmsg call reads.
	mmsgBatch = 32
	// minDgramQlen is the net.unix.max_dgram_qlen below which we warn.
	minDgramQlen = 512
	// A read of spinAfter datagrams from a unix socket makes the reader
	// poll until none came for spinIdle (see recv). Measured on 2 vCPUs
	// with a sender like nginx at a steady 200,000 lines/s: from a fifth
	// to twice as many lines received before the sender's queue overflows.
	spinAfter = 8
	spinIdle  = 30 * time.Microsecond
)

// bindUnixgram creates l's unix datagram socket, replacing one left by an
// earlier run, mode 0660 in group SocketGroup.
func (l *syslogListener) bindUnixgram() error {
	path := l.addr.Address
	if err := checkSocketDir(filepath.Dir(path), true); err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case fi.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("%s exists and is not a socket (%v)", path, fi.Mode().Type())
	default:
		// A socket nobody reads (connecting to it is refused) is left from
		// an earlier run; one that is read belongs to someone else (/dev/log).
		if c, err := net.Dial("unixgram", path); err == nil {
			c.Close()
			return fmt.Errorf("%s is in use by another process", path)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%s exists: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			// Before bind: a datagram queued before SO_PASSCRED would come
			// without credentials. The mode of a socket's inode is the one
			// the file gets at bind (less the umask): no moment with a wider one.
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
			if serr == nil {
				serr = unix.Fchmod(int(fd), 0o660)
			}
			// No SO_RCVBUF: what a unix datagram socket queues is bounded by
			// the senders' send buffers and net.unix.max_dgram_qlen, not by
			// the receive buffer (measured on Linux 6.x).
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(l.s.ctx, "unixgram", path)
	if err != nil {
		return err
	}
	conn := pc.(*net.UnixConn)
	var st unix.Stat_t
	err = unix.Chmod(path, 0o660) // exactly, whatever the umask
	if err == nil && l.s.opts.SocketGroup >= 0 {
		err = unix.Chown(path, -1, l.s.opts.SocketGroup)
	}
	if err == nil {
		err = unix.Stat(path, &st)
	}
	l.sock = conn
	l.remove = func() error {
		// Only our socket: another process may have put its own there since.
		var now unix.Stat_t
		if err := unix.Stat(path, &now); err != nil || now.Dev != st.Dev || now.Ino != st.Ino {
			return nil
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	if err != nil {
		conn.Close()
		os.Remove(path)
		return err
	}
	l.local = conn.LocalAddr()
	if q := dgramQlen(); q >= 0 && q < minDgramQlen {
		l.s.log.Warn("syslog: net.unix.max_dgram_qlen is low: nginx drops a line whenever more than that many wait in the socket; set it to 512 or more",
			keyListen, l.listen, "max_dgram_qlen", q)
	}
	return nil
}

// dgramQlen returns net.unix.max_dgram_qlen, or -1 if unknown.
func dgramQlen() int {
	b, err := os.ReadFile("/proc/sys/net/unix/max_dgram_qlen")
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

// ipNetwork is network restricted to the address's family: "udp" on
// 0.0.0.0 would listen on IPv6 too.
func ipNetwork(network string, a netip.AddrPort) string {
	if a.Addr().Is4() {
		return network + "4"
	}
	return network + "6"
}

// bindUDP creates l's udp socket with a large receive buffer and kernel
// drop counting.
func (l *syslogListener) bindUDP() error {
	ap := netip.MustParseAddrPort(l.addr.Address) // checked
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			// SO_RCVBUFFORCE passes net.core.rmem_max, with CAP_NET_ADMIN;
			// without it, SO_RCVBUF gets up to rmem_max.
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpRcvBuf) != nil {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, udpRcvBuf)
			}
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(l.s.ctx, ipNetwork("udp", ap), ap.String())
	if err != nil {
		return err
	}
	l.sock = pc
	l.local = pc.LocalAddr()
	return nil
}

// bindTCP creates l's tcp listener.
func (l *syslogListener) bindTCP() error {
	ap := netip.MustParseAddrPort(l.addr.Address) // checked
	var lc net.ListenConfig
	ln, err := lc.Listen(l.s.ctx, ipNetwork("tcp", ap), ap.String())
	if err != nil {
		return err
	}
	l.sock = ln
	l.local = ln.Addr()
	return nil
}

// mmsghdr is the kernel's struct mmsghdr (Go pads it as C does).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// dgramReader reads a datagram socket with recvmmsg into memory of its
// own: a burst costs one system call per mmsgBatch datagrams, and nothing
// is allocated per datagram.
type dgramReader struct {
	l      *syslogListener
	unix   bool
	max    int
	bufs   []byte // mmsgBatch slots of max bytes
	names  []unix.RawSockaddrAny
	oob    []byte // mmsgBatch slots of oobLen bytes
	oobLen int
	iovs   []unix.Iovec
	hdrs   []mmsghdr
	bodies [][]byte
	p      *syslogParser
	drops  uint32 // the kernel's count of drops, last seen (SO_RXQ_OVFL)

	spin       bool                  // recv polls before it waits
	lastGot    time.Time             // when recv last read datagrams, while spin
	recvFn     func(fd uintptr) bool // recv, made once
	got        int                   // datagrams the last recv read
	recvErrno  syscall.Errno
	warnedDrop bool
}

func (l *syslogListener) readDatagrams() {
	s := l.s
	defer s.readers.Done()
	conn, ok := l.conn()
	if !ok {
		return
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		s.log.Error("syslog: cannot read socket", keyListen, l.listen, "err", err)
		return
	}
	d := &dgramReader{l: l, unix: l.addr.Network == SyslogUnixgram, max: s.opts.MaxMessage, p: newSyslogParser()}
	d.setup()
	var lastErr syscall.Errno
	for {
		err := rc.Read(d.recvFn)
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Error("syslog: reading stopped", keyListen, l.listen, "err", err)
			}
			return
		}
		switch d.recvErrno {
		case 0:
			lastErr = 0
		case unix.EINTR:
			continue
		default:
			// ENOMEM and the like: say so (once in a row) and go on.
			if d.recvErrno != lastErr {
				s.log.Error("syslog: receive failed", keyListen, l.listen, "err", d.recvErrno)
				lastErr = d.recvErrno
			}
			continue
		}
		d.bodies = d.bodies[:0]
		for k := range d.got {
			d.handle(k)
		}
		err = l.push(d.bodies...)
		s.counted()
		if err != nil {
			return // stopped
		}
	}
}

// conn returns l's socket as a syscall.Conn.
func (l *syslogListener) conn() (syscall.Conn, bool) {
	switch c := l.sock.(type) {
	case *net.UDPConn:
		return c, true
	case *net.UnixConn:
		return c, true
	}
	return nil, false
}

func (d *dgramReader) setup() {
	d.oobLen = unix.CmsgSpace(unix.SizeofUcred) + unix.CmsgSpace(4)
	d.bufs = make([]byte, mmsgBatch*d.max)
	d.oob = make([]byte, mmsgBatch*d.oobLen)
	d.iovs = make([]unix.Iovec, mmsgBatch)
	d.hdrs = make([]mmsghdr, mmsgBatch)
	if !d.unix {
		d.names = make([]unix.RawSockaddrAny, mmsgBatch)
	}
	for k := range mmsgBatch {
		d.iovs[k].Base = &d.bufs[k*d.max]
		d.iovs[k].SetLen(d.max)
		h := &d.hdrs[k].hdr
		h.Iov = &d.iovs[k]
		h.SetIovlen(1)
		h.Control = &d.oob[k*d.oobLen]
		if !d.unix {
			h.Name = (*byte)(unsafe.Pointer(&d.names[k]))
		}
	}
	d.recvFn = d.recv
}

// recv reads what is queued, up to mmsgBatch datagrams, without waiting;
// false asks the runtime to wait until the socket is readable.
//
// After a read that found spinAfter datagrams or more waiting in a unix
// socket, it keeps looking until none came for spinIdle instead of
// waiting: waking up takes longer than a burst needs to fill the socket's
// queue, only net.unix.max_dgram_qlen (10 by default) datagrams long, and
// nginx drops what does not fit. It only spins while lines come that fast.
func (d *dgramReader) recv(fd uintptr) bool {
	n, errno := d.recvmmsg(fd)
	for errno == unix.EAGAIN && d.spin && time.Since(d.lastGot) < spinIdle {
		n, errno = d.recvmmsg(fd)
	}
	switch {
	case errno == unix.EAGAIN:
		d.spin = false
		return false
	case errno == 0 && n >= spinAfter && d.unix: // udp has a large buffer instead
		d.spin = true
	}
	if d.spin {
		d.lastGot = time.Now()
	}
	d.got, d.recvErrno = n, errno
	if errno != 0 {
		d.got = 0
	}
	return true
}

func (d *dgramReader) recvmmsg(fd uintptr) (int, syscall.Errno) {
	for k := range d.hdrs {
		h := &d.hdrs[k].hdr
		h.SetControllen(d.oobLen)
		h.Flags = 0
		if !d.unix {
			h.Namelen = unix.SizeofSockaddrAny
		}
	}
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&d.hdrs[0])), uintptr(len(d.hdrs)),
		unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC, 0, 0)
	return int(n), errno
}

// handle takes datagram k: counts it, checks its sender and size, and
// adds its body to d.bodies.
func (d *dgramReader) handle(k int) {
	l := d.l
	h := &d.hdrs[k]
	l.c.received.Add(1)
	var x sender
	d.control(k, &x)
	if d.unix {
		if !x.cred || !slices.Contains(l.s.opts.AllowUIDs, x.uid) {
			l.c.refused.Add(1)
			l.warn(warnRefused, x, nil)
			return
		}
	} else {
		x.addr = sockaddrAddr(&d.names[k])
		if !l.s.allowedAddr(x.addr) {
			l.c.refused.Add(1)
			l.warn(warnRefused, x, nil)
			return
		}
	}
	if h.hdr.Flags&unix.MSG_TRUNC != 0 {
		l.c.oversized.Add(1)
		l.warn(warnOversized, x, nil)
		return
	}
	msg := d.bufs[k*d.max : k*d.max+int(h.len)]
	body, err := d.p.body(msg)
	if err != nil {
		l.c.malformed.Add(1)
		l.warn(warnMalformed, x, err)
		return
	}
	d.bodies = append(d.bodies, body)
}

// control reads the control messages of datagram k: the sender's
// credentials, the kernel's drop count.
func (d *dgramReader) control(k int, x *sender) {
	h := &d.hdrs[k].hdr
	oob := d.oob[k*d.oobLen : k*d.oobLen+int(h.Controllen)]
	hdrLen := unix.CmsgLen(0)
	for len(oob) >= hdrLen {
		c := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		n := int(c.Len)
		if n < hdrLen || n > len(oob) {
			return
		}
		data := oob[hdrLen:n]
		switch {
		case c.Level == unix.SOL_SOCKET && c.Type == unix.SCM_CREDENTIALS && len(data) >= unix.SizeofUcred:
			x.pid = int32(binary.NativeEndian.Uint32(data[0:]))
			x.uid = binary.NativeEndian.Uint32(data[4:])
			x.cred = true
		case c.Level == unix.SOL_SOCKET && c.Type == unix.SCM_RIGHTS:
			// A sender may pass descriptors, which the kernel has made ours:
			// never used, closed at once, or they would pile up.
			for ; len(data) >= 4; data = data[4:] {
				unix.Close(int(int32(binary.NativeEndian.Uint32(data))))
			}
		case c.Level == unix.SOL_SOCKET && c.Type == unix.SO_RXQ_OVFL && len(data) >= 4:
			if v := binary.NativeEndian.Uint32(data); v != d.drops {
				d.l.c.dropped.Add(uint64(v - d.drops)) // modulo 2^32
				d.drops = v
				if !d.warnedDrop {
					d.warnedDrop = true
					d.l.s.log.Warn("syslog: the kernel dropped datagrams: the receive buffer was full (counted from now on, not logged again)",
						keyListen, d.l.listen, "dropped", v)
				}
			}
		}
		oob = oob[min(unix.CmsgSpace(n-hdrLen), len(oob)):]
	}
}

// sockaddrAddr returns the IP address of a sender, unmapped.
func sockaddrAddr(sa *unix.RawSockaddrAny) netip.Addr {
	switch sa.Addr.Family {
	case unix.AF_INET:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrFrom4(p.Addr)
	case unix.AF_INET6:
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		return netip.AddrFrom16(p.Addr).Unmap()
	}
	return netip.Addr{}
}

// accept takes tcp connections: the sender is checked before a byte is
// read, and at most MaxConns are served at once.
func (l *syslogListener) accept() {
	s := l.s
	defer s.readers.Done()
	ln := l.sock.(net.Listener)
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors and the like: wait, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Error("syslog: accept failed", keyListen, l.listen, "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		var x sender
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			x.addr = ta.AddrPort().Addr().Unmap()
		}
		switch {
		case !s.allowedAddr(x.addr):
			c.Close()
			l.c.refused.Add(1)
			l.warn(warnRefused, x, nil)
			s.counted()
		case l.conns.Load() >= int64(s.opts.MaxConns):
			c.Close()
			l.c.refused.Add(1)
			l.warn(warnConns, x, nil)
			s.counted()
		default:
			l.conns.Add(1)
			s.readers.Add(1)
			go l.serve(c, x)
		}
	}
}

// serve reads the messages of one tcp connection.
func (l *syslogListener) serve(c net.Conn, x sender) {
	s := l.s
	defer s.readers.Done()
	defer s.counted()
	defer l.conns.Add(-1)
	defer c.Close()
	stop := context.AfterFunc(s.ctx, func() { c.Close() })
	defer stop()
	idle := s.opts.IdleTimeout
	last := time.Now()
	c.SetReadDeadline(last.Add(idle))
	conn := c
	if s.tls != nil {
		tc := tls.Server(c, s.tls)
		c.SetDeadline(last.Add(idle))
		if err := tc.HandshakeContext(s.ctx); err != nil {
			l.c.refused.Add(1)
			l.warn(warnTLS, x, err)
			return
		}
		// Reading may write too (a TLS 1.3 key update): no deadline on that.
		c.SetWriteDeadline(time.Time{})
		conn = tc
	}
	p := newSyslogParser()
	err := ScanSyslog(conn, s.opts.MaxMessage, func(msg []byte, skipped error) error {
		l.c.received.Add(1)
		defer func() {
			// After push, which waits while the consumer is behind: that
			// is not the sender's idleness. The deadline is moved only now
			// and then: it costs a timer update.
			if now := time.Now(); now.Sub(last) > idle/16 {
				c.SetReadDeadline(now.Add(idle))
				last = now
			}
			s.counted()
		}()
		if skipped != nil {
			l.c.oversized.Add(1)
			l.warn(warnOversized, x, skipped)
			return nil
		}
		body, err := p.body(msg)
		if err != nil {
			l.c.malformed.Add(1)
			l.warn(warnMalformed, x, err)
			return nil
		}
		return l.push(body)
	})
	if errors.Is(err, ErrTruncated) && s.ctx.Err() == nil {
		l.c.truncated.Add(1)
		l.warn(warnTruncated, x, err)
	}
}
