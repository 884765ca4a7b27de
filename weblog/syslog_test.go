package weblog

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/webknock/webknock/internal/realtest"
	"github.com/webknock/webknock/internal/testpki"
)

// waitLimit bounds every wait of these tests.
const waitLimit = 10 * time.Second

// listenSyslog starts a Syslog that is closed when t ends.
func listenSyslog(t *testing.T, o SyslogOptions) *Syslog {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(testLog{t}, nil))
	}
	o.notify = make(chan struct{}, 1)
	s, err := ListenSyslog(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// syslogLines takes batches until it has n lines, acking each.
func syslogLines(t *testing.T, s *Syslog, n int) []string {
	t.Helper()
	var got []string
	deadline := time.After(waitLimit)
	for len(got) < n {
		select {
		case b, ok := <-s.Batches():
			if !ok {
				t.Fatalf("batches closed after %d lines, want %d: %q", len(got), n, got)
			}
			if b.Len() == 0 || len(b.Text) == 0 || b.Text[len(b.Text)-1] != '\n' {
				t.Fatalf("batch %q of %d lines", b.Text, b.Len())
			}
			for l := range b.Lines() {
				got = append(got, string(l))
			}
			s.Ack(b)
		case <-deadline:
			t.Fatalf("got %d lines in %v, want %d: %q", len(got), waitLimit, n, got)
		}
	}
	if len(got) > n {
		t.Fatalf("got %d lines, want %d: %q", len(got), n, got)
	}
	return got
}

// waitStats waits until listen's counters satisfy done, and returns them.
func waitStats(t *testing.T, s *Syslog, listen string, done func(SyslogCounts) bool) SyslogCounts {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		c := s.Stats().Listeners[listen]
		if done(c) {
			return c
		}
		select {
		case <-s.opts.notify:
		case <-deadline:
			t.Fatalf("%s: counters %+v", listen, c)
		}
	}
}

func sendUnixgram(t *testing.T, path string, msgs ...string) {
	t.Helper()
	c, err := net.Dial("unixgram", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range msgs {
		if _, err := c.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
}

func sendUDP(t *testing.T, from string, to net.Addr, msgs ...string) {
	t.Helper()
	laddr, err := net.ResolveUDPAddr("udp", from)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", laddr, to.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range msgs {
		if _, err := c.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
}

func msg3164(body string) string { return "<190>Dec  2 12:31:49 nginx: " + body }

func TestSyslogUnixgram(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "log.sock")
	listen := "unixgram:" + sock
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, AllowUIDs: []uint32{uint32(os.Getuid())}, SocketGroup: -1})

	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket file mode %v, want a socket with 0660", fi.Mode())
	}

	sendUnixgram(t, sock, msg3164("one"), msg3164("two")+"\n", "garbage", msg3164("three\nfour"), msg3164(strings.Repeat("x", DefaultMaxMessage)), msg3164("five"))
	got := syslogLines(t, s, 3)
	if want := []string{"one", "two", "five"}; !equalStrings(got, want) {
		t.Errorf("lines %q, want %q", got, want)
	}
	c := waitStats(t, s, listen, func(c SyslogCounts) bool { return c.Received == 6 })
	if want := (SyslogCounts{Received: 6, Accepted: 3, Malformed: 2, Oversized: 1}); c != want {
		t.Errorf("counts %+v, want %+v", c, want)
	}
	if !s.CaughtUp() {
		t.Error("not caught up after every line was delivered")
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after Close: %v, want it removed", err)
	}
	if _, ok := <-s.Batches(); ok {
		t.Error("Batches still open after Close")
	}
}

// TestSyslogUnixgramPassedFDs: descriptors a sender passes are closed,
// not kept.
func TestSyslogUnixgramPassedFDs(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "log.sock")
	listen := "unixgram:" + sock
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, AllowUIDs: []uint32{uint32(os.Getuid())}, SocketGroup: -1})
	fds := func() int {
		es, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skipf("skipping: %v", err)
		}
		return len(es)
	}
	before := fds()
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	const n = 20
	for i := range n {
		rights := syscall.UnixRights(int(os.Stdin.Fd()), int(os.Stderr.Fd()))
		if err := syscall.Sendmsg(fd, []byte(msg3164(fmt.Sprint("with fds ", i))), rights, &syscall.SockaddrUnix{Name: sock}, 0); err != nil {
			t.Fatal(err)
		}
	}
	syslogLines(t, s, n)
	if after := fds(); after > before+1 { // +1: the sender's socket
		t.Errorf("%d descriptors open, %d before: passed descriptors were kept", after, before)
	}
}

func equalStrings(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") }

func TestSyslogBatchSource(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "log.sock")
	listen := "unixgram:" + sock
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, AllowUIDs: []uint32{uint32(os.Getuid())}, SocketGroup: -1})
	sendUnixgram(t, sock, msg3164("a"))
	select {
	case b := <-s.Batches():
		if b.Source != "syslog:"+listen || string(b.Text) != "a\n" || b.Len() != 1 {
			t.Errorf("batch %q from %q of %d lines", b.Text, b.Source, b.Len())
		}
		s.Ack(b)
		s.Ack(b) // twice is harmless
	case <-time.After(waitLimit):
		t.Fatal("no batch")
	}
}

// TestSyslogBatching: lines that arrive while the consumer is busy come
// in one batch, as soon as it is free.
func TestSyslogBatching(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "log.sock")
	listen := "unixgram:" + sock
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, AllowUIDs: []uint32{uint32(os.Getuid())}, SocketGroup: -1})
	sendUnixgram(t, sock, msg3164("first"))
	var first Batch
	select {
	case first = <-s.Batches():
	case <-time.After(waitLimit):
		t.Fatal("no batch")
	}
	var msgs []string
	for i := range 100 {
		msgs = append(msgs, msg3164(fmt.Sprint("line ", i)))
	}
	sendUnixgram(t, sock, msgs...)
	waitStats(t, s, listen, func(c SyslogCounts) bool { return c.Accepted == 101 })
	s.Ack(first)
	got := syslogLines(t, s, 100)
	if got[0] != "line 0" || got[99] != "line 99" {
		t.Errorf("lines %q…%q", got[0], got[99])
	}
	if !s.CaughtUp() {
		t.Error("not caught up")
	}
}

// TestSyslogBackpressure: with a consumer that does not take batches, the
// listener stops reading once its buffers are full; nothing is lost and
// memory stays bounded.
func TestSyslogBackpressure(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "log.sock")
	listen := "unixgram:" + sock
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, AllowUIDs: []uint32{uint32(os.Getuid())}, SocketGroup: -1})
	body := strings.Repeat("b", 8000)
	// More than the 4 MiB of buffers: the sender blocks once they and the
	// socket are full, until the consumer takes batches.
	const n = 1000
	sent := make(chan error, 1)
	go func() {
		c, err := net.Dial("unixgram", sock)
		if err != nil {
			sent <- err
			return
		}
		defer c.Close()
		for range n {
			if _, err := c.Write([]byte(msg3164(body))); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	waitStats(t, s, listen, func(c SyslogCounts) bool { return c.Accepted > 0 && s.CaughtUp() == false })
	select {
	case err := <-sent:
		t.Fatalf("the sender sent all %d messages (%v) while nobody read: memory is not bounded", n, err)
	default:
	}
	got := syslogLines(t, s, n)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	for _, l := range got {
		if l != body {
			t.Fatalf("line of %d bytes, want %d", len(l), len(body))
		}
	}
	if c := s.Stats().Listeners[listen]; c.Accepted != n {
		t.Errorf("accepted %d, want %d", c.Accepted, n)
	}
}

// TestSyslogUnixgramOtherUID sends as nobody (uid 65534) with logger, which
// must be refused, and as us.
func TestSyslogUnixgramOtherUID(t *testing.T) {
	realtest.Require(t, "this test of a sender of another uid", "logger")
	logger, err := exec.LookPath("logger")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// nobody must reach the socket.
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "log.sock")
	listen := "unixgram:" + sock
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, AllowUIDs: []uint32{0}, SocketGroup: 65534})
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if gid := fi.Sys().(*syscall.Stat_t).Gid; gid != 65534 {
		t.Errorf("socket group %d, want 65534", gid)
	}
	cmd := exec.Command(logger, "-u", sock, "from nobody")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("logger as nobody: %v: %s", err, out)
	}
	waitStats(t, s, listen, func(c SyslogCounts) bool { return c.Refused == 1 })
	if out, err := exec.Command(logger, "-u", sock, "from root").CombinedOutput(); err != nil {
		t.Fatalf("logger: %v: %s", err, out)
	}
	if got := syslogLines(t, s, 1); got[0] != "from root" {
		t.Errorf("line %q, want the one from root only", got)
	}
	if c := s.Stats().Listeners[listen]; c.Refused != 1 || c.Accepted != 1 {
		t.Errorf("counts %+v", c)
	}
}

func TestSyslogUnixgramSocketFile(t *testing.T) {
	uid := []uint32{uint32(os.Getuid())}
	t.Run("stale socket replaced", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "log.sock")
		old, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		old.Close() // Go leaves a datagram socket's file
		s := listenSyslog(t, SyslogOptions{Listen: []string{"unixgram:" + sock}, AllowUIDs: uid, SocketGroup: -1})
		sendUnixgram(t, sock, msg3164("new"))
		syslogLines(t, s, 1)
	})
	t.Run("socket in use refused", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "log.sock")
		other, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		if _, err := ListenSyslog(t.Context(), SyslogOptions{Listen: []string{"unixgram:" + sock}, AllowUIDs: uid, SocketGroup: -1}); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Errorf("ListenSyslog on a socket in use: %v, want refused", err)
		}
	})
	t.Run("not a socket", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "log.sock")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := ListenSyslog(t.Context(), SyslogOptions{Listen: []string{"unixgram:" + path}, AllowUIDs: uid, SocketGroup: -1})
		if err == nil || !strings.Contains(err.Error(), "not a socket") || !strings.Contains(err.Error(), "listen syslog unixgram:"+path) {
			t.Errorf("ListenSyslog on a regular file: %v", err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Errorf("the file was touched: %v", err)
		}
	})
	t.Run("unsafe directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "open")
		if err := os.Mkdir(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, 0o777)
		o := SyslogOptions{Listen: []string{"unixgram:" + dir + "/log.sock"}, AllowUIDs: uid, SocketGroup: -1}
		if _, err := ListenSyslog(t.Context(), o); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
			t.Errorf("ListenSyslog in a 0777 directory: %v, want refused", err)
		}
		if errs := CheckSyslog(o); len(errs) != 1 {
			t.Errorf("CheckSyslog in a 0777 directory: %v, want one error", errs)
		}
		os.Chmod(dir, os.ModeSticky|0o777) // sticky, as /tmp: others cannot remove our socket
		s := listenSyslog(t, o)
		s.Close()
	})
	t.Run("missing directory", func(t *testing.T) {
		o := SyslogOptions{Listen: []string{"unixgram:" + t.TempDir() + "/no/log.sock"}, AllowUIDs: uid, SocketGroup: -1}
		if errs := CheckSyslog(o); len(errs) != 0 {
			t.Errorf("CheckSyslog: %v, want none (the directory may be made at start)", errs)
		}
		if _, err := ListenSyslog(t.Context(), o); err == nil {
			t.Error("ListenSyslog in a missing directory succeeded")
		}
	})
	t.Run("all or nothing", func(t *testing.T) {
		dir := t.TempDir()
		sock := filepath.Join(dir, "log.sock")
		taken, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer taken.Close()
		o := SyslogOptions{Listen: []string{"unixgram:" + sock, "udp:" + taken.LocalAddr().String()}, AllowUIDs: uid, SocketGroup: -1}
		_, err = ListenSyslog(t.Context(), o)
		if err == nil || !strings.Contains(err.Error(), "listen syslog udp:"+taken.LocalAddr().String()) {
			t.Errorf("ListenSyslog on a taken port: %v, want an error naming it", err)
		}
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the socket bound before the failure is left: %v", err)
		}
	})
}

func TestSyslogUDP(t *testing.T) {
	const listen = "udp:127.0.0.1:0"
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, AllowFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	to := s.Addr(listen)
	sendUDP(t, "127.0.0.2:0", to, msg3164("from 127.0.0.2"))
	waitStats(t, s, listen, func(c SyslogCounts) bool { return c.Refused == 1 })
	sendUDP(t, "127.0.0.1:0", to, msg3164("from 127.0.0.1"), "<13>1 - - - - - - rfc5424", msg3164(strings.Repeat("y", DefaultMaxMessage)))
	if got := syslogLines(t, s, 2); !equalStrings(got, []string{"from 127.0.0.1", "rfc5424"}) {
		t.Errorf("lines %q", got)
	}
	c := waitStats(t, s, listen, func(c SyslogCounts) bool { return c.Received == 4 })
	if want := (SyslogCounts{Received: 4, Accepted: 2, Refused: 1, Oversized: 1}); c != want {
		t.Errorf("counts %+v, want %+v", c, want)
	}
}

// TestSyslogUDPKernelDrops: while the consumer takes nothing, the listener
// stops reading and the kernel drops what its buffer cannot hold; the
// drops are counted, and every datagram sent is either delivered or counted.
func TestSyslogUDPKernelDrops(t *testing.T) {
	const listen = "udp:127.0.0.1:0"
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}})
	c, err := net.DialUDP("udp", nil, s.Addr(listen).(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte(msg3164(strings.Repeat("d", 900)))
	const n = 60000 // 54 MB: more than the 4 MiB of batches and the socket's buffer
	for range n {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	// The kernel reports its count with a datagram read: the marker, sent
	// after the drops, is read after everything the kernel kept.
	if _, err := c.Write([]byte(msg3164("marker"))); err != nil {
		t.Fatal(err)
	}
	got := 0
	deadline := time.After(waitLimit)
	for marker := false; !marker; {
		select {
		case b := <-s.Batches():
			for l := range b.Lines() {
				marker = marker || string(l) == "marker"
				got++
			}
			s.Ack(b)
		case <-deadline:
			t.Fatalf("no marker after %d lines; counts %+v", got, s.Stats().Listeners[listen])
		}
	}
	cs := s.Stats().Listeners[listen]
	if cs.Dropped == 0 || cs.Accepted != uint64(got) || cs.Accepted-1+cs.Dropped != n {
		t.Errorf("sent %d, delivered %d; counts %+v: want drops, and every datagram delivered or dropped", n, got-1, cs)
	}
}

func TestSyslogUDPLoopbackDefault(t *testing.T) {
	const listen = "udp:[::1]:0"
	s, err := ListenSyslog(t.Context(), SyslogOptions{Listen: []string{listen}})
	if err != nil {
		t.Skipf("skipping: no IPv6 loopback: %v", err)
	}
	defer s.Close()
	sendUDP(t, "[::1]:0", s.Addr(listen), msg3164("v6"))
	if got := syslogLines(t, s, 1); got[0] != "v6" {
		t.Errorf("lines %q", got)
	}
}

// sendTCP writes text to a new connection to addr and closes it.
func dialTCP(t *testing.T, addr net.Addr) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func octet(m string) string { return fmt.Sprintf("%d %s", len(m), m) }

func TestSyslogTCP(t *testing.T) {
	const listen = "tcp:127.0.0.1:0"
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, MaxMessage: 200})
	c := dialTCP(t, s.Addr(listen))
	io.WriteString(c, octet(msg3164("one"))+msg3164("two")+"\n"+octet(msg3164(strings.Repeat("z", 300)))+octet("garbage")+octet(msg3164("three"))+"99 "+msg3164("cut"))
	if got := syslogLines(t, s, 3); !equalStrings(got, []string{"one", "two", "three"}) {
		t.Errorf("lines %q", got)
	}
	c.Close()
	got := waitStats(t, s, listen, func(c SyslogCounts) bool { return c.Truncated == 1 })
	if want := (SyslogCounts{Received: 5, Accepted: 3, Oversized: 1, Malformed: 1, Truncated: 1}); got != want {
		t.Errorf("counts %+v, want %+v", got, want)
	}
}

func TestSyslogTCPRefused(t *testing.T) {
	const listen = "tcp:127.0.0.1:0"
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, AllowFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	c := dialTCP(t, s.Addr(listen))
	io.WriteString(c, octet(msg3164("forged")))
	c.SetReadDeadline(time.Now().Add(waitLimit))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("refused connection: read %v, want it closed", err)
	}
	got := waitStats(t, s, listen, func(c SyslogCounts) bool { return c.Refused == 1 })
	if got.Received != 0 || got.Accepted != 0 {
		t.Errorf("counts %+v: the refused connection was read", got)
	}
}

func TestSyslogTCPMaxConns(t *testing.T) {
	const listen = "tcp:127.0.0.1:0"
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, MaxConns: 2})
	addr := s.Addr(listen)
	c1, c2 := dialTCP(t, addr), dialTCP(t, addr)
	io.WriteString(c1, octet(msg3164("c1")))
	io.WriteString(c2, octet(msg3164("c2")))
	syslogLines(t, s, 2) // both are served
	c3 := dialTCP(t, addr)
	c3.SetReadDeadline(time.Now().Add(waitLimit))
	if _, err := c3.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("third connection: read %v, want it closed", err)
	}
	waitStats(t, s, listen, func(c SyslogCounts) bool { return c.Refused == 1 })
	c1.Close()
	waitConns(t, s, listen, 1)
	c4 := dialTCP(t, addr)
	io.WriteString(c4, octet(msg3164("c4")))
	if got := syslogLines(t, s, 1); got[0] != "c4" {
		t.Errorf("lines %q", got)
	}
}

// waitConns waits until listen serves n connections.
func waitConns(t *testing.T, s *Syslog, listen string, n int64) {
	t.Helper()
	for _, l := range s.listeners {
		if l.listen != listen {
			continue
		}
		deadline := time.After(waitLimit)
		for l.conns.Load() != n {
			select {
			case <-s.opts.notify:
			case <-deadline:
				t.Fatalf("%d connections, want %d", l.conns.Load(), n)
			}
		}
	}
}

func TestSyslogTCPIdleTimeout(t *testing.T) {
	const listen = "tcp:127.0.0.1:0"
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, IdleTimeout: 50 * time.Millisecond})
	c := dialTCP(t, s.Addr(listen))
	io.WriteString(c, octet(msg3164("hello")))
	syslogLines(t, s, 1)
	closed := make(chan error, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(waitLimit))
		_, err := c.Read(make([]byte, 1))
		closed <- err
	}()
	select {
	case err := <-closed:
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("idle connection: read %v, want it closed by the listener", err)
		}
	case <-time.After(waitLimit + time.Second):
		t.Fatal("idle connection not closed")
	}
	if c := s.Stats().Listeners[listen]; c.Truncated != 0 {
		t.Errorf("an idle close between messages counted as truncated: %+v", c)
	}
}

// testPKI is a CA and certificates it issued, as PEM files.
type testPKI struct {
	caFile                string
	serverCert, serverKey string
	clientCert            tls.Certificate
	strangerCert          tls.Certificate // from another CA
	roots                 *x509.CertPool
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	p := &testPKI{caFile: ca.File, roots: ca.Pool()}
	p.serverCert, p.serverKey, _ = ca.Issue(t, "server", true, net.IPv4(127, 0, 0, 1))
	_, _, p.clientCert = ca.Issue(t, "web1", false)
	_, _, p.strangerCert = testpki.NewCA(t, dir, "other-ca").Issue(t, "stranger", false)
	return p
}

func TestSyslogTCPTLS(t *testing.T) {
	p := newTestPKI(t)
	const listen = "tcp:127.0.0.1:0"
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, TLS: SyslogTLS{CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: p.caFile}})
	addr := s.Addr(listen).String()
	dialTLS := func(certs []tls.Certificate) (*tls.Conn, error) {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: p.roots, Certificates: certs, ServerName: "127.0.0.1"})
		if err != nil {
			return nil, err
		}
		// TLS 1.3: the server checks the client's certificate after the
		// client's handshake is done; a read reports the refusal.
		c.SetReadDeadline(time.Now().Add(waitLimit))
		return c, nil
	}

	c, err := dialTLS([]tls.Certificate{p.clientCert})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, octet(msg3164("over tls")))
	if got := syslogLines(t, s, 1); got[0] != "over tls" {
		t.Errorf("lines %q", got)
	}

	for name, certs := range map[string][]tls.Certificate{"no certificate": nil, "another CA's": {p.strangerCert}} {
		before := s.Stats().Listeners[listen].Refused
		c, err := dialTLS(certs)
		if err == nil {
			io.WriteString(c, octet(msg3164("forged")))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s: %v, want the handshake refused", name, err)
		}
		waitStats(t, s, listen, func(c SyslogCounts) bool { return c.Refused == before+1 })
	}

	plain := dialTCP(t, s.Addr(listen))
	io.WriteString(plain, octet(msg3164("plain")))
	waitStats(t, s, listen, func(c SyslogCounts) bool { return c.Refused == 3 })
	if c := s.Stats().Listeners[listen]; c.Accepted != 1 {
		t.Errorf("counts %+v: only the line over TLS may be accepted", c)
	}
}

// TestSyslogWarnOnce: a refused sender is logged once, however often it sends.
func TestSyslogWarnOnce(t *testing.T) {
	var buf syncBuffer
	const listen = "udp:127.0.0.1:0"
	s := listenSyslog(t, SyslogOptions{Listen: []string{listen}, AllowFrom: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	for range 20 {
		sendUDP(t, "127.0.0.1:0", s.Addr(listen), msg3164("x"))
	}
	waitStats(t, s, listen, func(c SyslogCounts) bool { return c.Refused == 20 })
	if n := strings.Count(buf.String(), "sender refused"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, buf.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestSyslogContextCancel: cancelling the context stops the listener too.
func TestSyslogContextCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	s, err := ListenSyslog(ctx, SyslogOptions{Listen: []string{"udp:127.0.0.1:0", "tcp:127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case _, ok := <-s.Batches():
		if ok {
			t.Error("a batch after cancel")
		}
	case <-time.After(waitLimit):
		t.Fatal("Batches not closed after cancel")
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
}
