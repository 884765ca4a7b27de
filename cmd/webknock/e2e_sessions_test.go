package main

// End-to-end tests of ending established sessions: a client holds a real
// TCP connection to the server's guarded port across `webknock revoke`,
// with and without --kill-sessions, through a running daemon's admin
// socket, real iptables/ip6tables and the kernel's conntrack.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sessionHelper runs the session tests' tools for helper: "echo" serves
// TCP on the address, echoing each line, or, after a line "push", writing
// "tick" lines unasked; "session" connects from SRC to DST ("SRC DST") and
// holds the connection, doing what its standard input says (ping, push,
// watch, dial) and printing the outcome of each. ok is false for a mode
// of another test.
func sessionHelper(mode, arg string) (code int, ok bool) {
	switch mode {
	case "echo":
		return echoServer(arg), true
	case "session":
		return holdSession(arg), true
	}
	return 0, false
}

func echoServer(addr string) int {
	return serveTCP(addr, func(c net.Conn) {
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				if sc.Text() != "push" {
					if _, err := io.WriteString(c, sc.Text()+"\n"); err != nil {
						return
					}
					continue
				}
				tick := time.NewTicker(50 * time.Millisecond)
				defer tick.Stop()
				for range tick.C {
					if _, err := io.WriteString(c, "tick\n"); err != nil {
						return
					}
				}
			}
		}()
	})
}

// holdSession prints "connected", then for each command a line "ok MS" or
// "err MS WHY", WHY being "reset", "timeout" or the error: ping writes a
// line and reads its echo; push has the server write unasked and reads
// the first tick; watch reads until the connection fails or 5 s pass;
// dial tries a new connection.
func holdSession(arg string) int {
	src, dst, _ := strings.Cut(arg, " ")
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", dst)
	if err != nil {
		fmt.Println("err 0 dial:", err)
		return 3
	}
	defer c.Close()
	fmt.Println("connected")
	rd := bufio.NewReader(c)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		start := time.Now()
		var err error
		switch in.Text() {
		case "ping":
			c.SetDeadline(start.Add(3 * time.Second))
			if _, err = io.WriteString(c, "ping\n"); err == nil {
				var line string
				if line, err = rd.ReadString('\n'); err == nil && line != "ping\n" {
					err = fmt.Errorf("echoed %q", line)
				}
			}
		case "push":
			c.SetDeadline(start.Add(3 * time.Second))
			if _, err = io.WriteString(c, "push\n"); err == nil {
				_, err = rd.ReadString('\n')
			}
		case "watch":
			c.SetDeadline(start.Add(5 * time.Second))
			for err == nil {
				_, err = rd.ReadString('\n')
			}
		case "dial":
			d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			var c2 net.Conn
			if c2, err = d.Dial("tcp", dst); err == nil {
				c2.Close()
			}
		default:
			err = fmt.Errorf("unknown command %q", in.Text())
		}
		ms := time.Since(start).Milliseconds()
		var ne net.Error
		switch {
		case err == nil:
			fmt.Println("ok", ms)
		case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
			fmt.Println("err", ms, "reset")
		case errors.As(err, &ne) && ne.Timeout():
			fmt.Println("err", ms, "timeout")
		default:
			fmt.Println("err", ms, err)
		}
	}
	return 0
}

// startEcho starts the echo server on port 22 of the server.
func (e *e2e) startEcho() { e.startServer("echo") }

// tcpSession is a connection a client holds, through the session helper.
type tcpSession struct {
	t    testing.TB
	src  string
	in   io.Writer
	outs chan string
}

// session connects from src to port 22 of the server, failing the test
// unless the connection is made.
func (e *e2e) session(src string) *tcpSession {
	e.t.Helper()
	dst := net.JoinHostPort(srvV4, "22")
	if strings.Contains(src, ":") {
		dst = net.JoinHostPort(srvV6, "22")
	}
	cmd := e.in(e.cli, os.Args[0], src+" "+dst)
	cmd.Env = append(os.Environ(), helperEnv+"=session")
	in, err := cmd.StdinPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	e.background(cmd)
	s := &tcpSession{t: e.t, src: src, in: in, outs: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.outs <- sc.Text()
		}
		close(s.outs)
	}()
	if got := s.next(); got != "connected" {
		e.t.Fatalf("session from %s: %q", src, got)
	}
	return s
}

// next is the helper's next line, waited for with a deadline.
func (s *tcpSession) next() string {
	s.t.Helper()
	select {
	case line, ok := <-s.outs:
		if !ok {
			s.t.Fatalf("session from %s: the helper exited", s.src)
		}
		return line
	case <-time.After(15 * time.Second):
		s.t.Fatalf("session from %s: no answer within 15s", s.src)
	}
	return ""
}

// do runs a command of the helper and returns its outcome: "ok", or "err
// WHY"; the time it took is logged.
func (s *tcpSession) do(cmd string) string {
	s.t.Helper()
	if _, err := io.WriteString(s.in, cmd+"\n"); err != nil {
		s.t.Fatalf("session from %s: %v", s.src, err)
	}
	f := strings.SplitN(s.next(), " ", 3)
	if len(f) < 2 {
		s.t.Fatalf("session from %s: %s: %q", s.src, cmd, f)
	}
	s.t.Logf("session from %s: %s: %s after %s ms", s.src, cmd, strings.Join(append(f[:1:1], f[2:]...), " "), f[1])
	return strings.Join(append(f[:1:1], f[2:]...), " ")
}

// TestE2EKillSessions: an established session outlives the revoke of its
// grant (the documented default), and `webknock revoke --kill-sessions`
// ends it at once: the client's next read or write fails with a reset,
// whether the client or the server speaks first, over IPv4 and IPv6; a new
// connection is not let in.
func TestE2EKillSessions(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.startEcho()
	cfg := e.config("10m")
	d := e.startDaemon(cfg)
	revoke := func(args ...string) string {
		t.Helper()
		out, err := e.in(e.srv, webknockBinary(t), append([]string{"revoke", "-c", cfg}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("webknock revoke %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	open := func(src string) *tcpSession {
		t.Helper()
		e.knock(src, fullKnock...)
		d.wait(t, "grant", src)
		s := e.session(src)
		if got := s.do("ping"); got != "ok" {
			t.Fatalf("%s: ping over a granted session: %s", src, got)
		}
		return s
	}

	t.Run("kept without --kill-sessions", func(t *testing.T) {
		src := cliV4[0]
		s := open(src)
		s.t = t
		if out := revoke(src); out != "revoked "+src+" (ssh)\n" {
			t.Errorf("webknock revoke said %q", out)
		}
		d.wait(t, "grant removed", src)
		if got := s.do("ping"); got != "ok" {
			t.Errorf("ping after the revoke: %s, want the session to go on", got)
		}
		if got := s.do("dial"); got == "ok" {
			t.Errorf("a new connection after the revoke was let in")
		}
	})

	for _, tc := range []struct {
		name, src string
		first     string // who speaks first after the kill: ping (the client) or watch (the server)
	}{
		{"client speaks first", cliV4[1], "ping"},
		{"server speaks first", cliV4[2], "watch"},
		{"IPv6", cliV6[0], "ping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(tc.src)
			s.t = t
			if tc.first == "watch" {
				if got := s.do("push"); got != "ok" {
					t.Fatalf("push: %s", got)
				}
			}
			if out := revoke("--kill-sessions", tc.src); out != "revoked "+tc.src+" (ssh); 1 session ended\n" {
				t.Errorf("webknock revoke --kill-sessions said %q", out)
			}
			d.wait(t, "sessions ended", tc.src)
			if got := s.do(tc.first); got != "err reset" {
				t.Errorf("%s after --kill-sessions: %s, want the session reset", tc.first, got)
			}
			if got := s.do("dial"); got == "ok" {
				t.Errorf("a new connection after the revoke was let in")
			}
		})
	}
}
