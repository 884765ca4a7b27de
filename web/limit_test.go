package web

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// heldConn is a client connection the server has accepted and answered
// once, kept open (HTTP keep-alive) and idle.
type heldConn struct {
	c  net.Conn
	br *bufio.Reader
}

// dialFrom connects to addr from the loopback address 127.0.0.from.
func dialFrom(t *testing.T, from int, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(from))}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from 127.0.0.%d: %v", addr, from, err)
	}
	return c
}

// hold connects from 127.0.0.from and makes one request: once it has its
// answer, the server has counted the connection.
func hold(t *testing.T, from int, addr string) *heldConn {
	t.Helper()
	h := &heldConn{c: dialFrom(t, from, addr)}
	h.br = bufio.NewReader(h.c)
	if err := h.get(addr); err != nil {
		t.Fatalf("connection from 127.0.0.%d: %v", from, err)
	}
	return h
}

func (h *heldConn) get(addr string) error {
	h.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(h.c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr); err != nil {
		return err
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET /healthz = %s", resp.Status)
	}
	return nil
}

// refused says whether the server closed c at once: its first read ends
// (EOF or reset) well before the server would give up waiting for a
// request (readHeaderTimeout) on a connection it accepted.
func refused(t *testing.T, c net.Conn) bool {
	t.Helper()
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(readHeaderTimeout / 2))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return true
	case errors.As(err, &ne) && ne.Timeout():
		return false
	}
	t.Fatalf("read on a connection: %v", err)
	return false
}

// TestConnectionLimits fills the server with idle connections over real
// loopback sockets, from 127.0.0.2 to 127.0.0.17, 16 each: the default
// limits exactly. Every connection is counted before the next step (it got
// an answer), and the server's closing of one is waited for, so no step
// races the server.
func TestConnectionLimits(t *testing.T) {
	probe, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).Dial("tcp", "127.0.0.1:1")
	if probe != nil {
		probe.Close()
	}
	if err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
		t.Skipf("cannot connect from 127.0.0.2: %v", err)
	}
	released := make(chan struct{}, DefaultMaxConns)
	f := newFixture(t, "", func(o *Options) { o.Listeners = bind(t, "127.0.0.1:0", "") })
	f.s.conns.released = func() { released <- struct{}{} }
	startServe(t, f.s)
	addr := tcpAddr(t, f.s)

	var held []*heldConn
	defer func() {
		for _, h := range held {
			h.c.Close()
		}
	}()
	for range DefaultMaxConnsPerAddr {
		held = append(held, hold(t, 2, addr))
	}
	if !refused(t, dialFrom(t, 2, addr)) {
		t.Fatalf("connection %d from 127.0.0.2 was accepted, want it closed at once", DefaultMaxConnsPerAddr+1)
	}
	for from := 3; len(held) < DefaultMaxConns; from++ {
		for range DefaultMaxConnsPerAddr {
			held = append(held, hold(t, from, addr))
		}
	}
	if !refused(t, dialFrom(t, 100, addr)) {
		t.Fatalf("connection %d was accepted, want it closed at once", DefaultMaxConns+1)
	}
	if got := f.s.conns.Open(); got != DefaultMaxConns {
		t.Errorf("open connections = %d, want %d", got, DefaultMaxConns)
	}
	// The held connections still work.
	if err := held[0].get(addr); err != nil {
		t.Errorf("a held connection: %v", err)
	}

	// One closes: the server notices, and a newcomer is served.
	held[len(held)-1].c.Close()
	held = held[:len(held)-1]
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not close its side of a closed connection")
	}
	fresh := hold(t, 100, addr)
	held = append(held, fresh)

	body := do(t, tcpHandler(f.s), "GET", "/metrics", nil).Body.String()
	for _, want := range []string{
		`webknock_web_connections_refused_total{limit="per_address"} 1` + "\n",
		`webknock_web_connections_refused_total{limit="total"} 1` + "\n",
		fmt.Sprintf("webknock_web_connections_open %d\n", DefaultMaxConns),
	} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /metrics lacks %q", want)
		}
	}
}

func TestConnLimit(t *testing.T) {
	l := newConnLimit(3, 2, nil)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	steps := []struct {
		ip     string
		take   bool // else release
		wantOK bool
		want   string
	}{
		{"a", true, true, ""},
		{"a", true, true, ""},
		{"a", true, false, limitPerAddr},
		{"b", true, true, ""},
		{"b", true, false, limitTotal},
		{"a", false, true, ""},
		{"b", true, true, ""},
		{"b", true, false, limitTotal},
	}
	for i, s := range steps {
		ip := a
		if s.ip == "b" {
			ip = b
		}
		if !s.take {
			l.release(ip)
			continue
		}
		ok, limit := l.take(ip)
		if ok != s.wantOK || limit != s.want {
			t.Errorf("step %d: take(%s) = %v, %q; want %v, %q", i, s.ip, ok, limit, s.wantOK, s.want)
		}
	}
	if l.Open() != 3 || l.perIP[a] != 1 || l.perIP[b] != 2 {
		t.Errorf("open %d, per address %v; want 3, a 1, b 2", l.Open(), l.perIP)
	}
	l.release(a)
	if _, ok := l.perIP[a]; ok {
		t.Error("an address without connections stays in the table")
	}
}
