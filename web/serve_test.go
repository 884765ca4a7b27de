package web

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bind is Bind that fails the test.
func bind(t *testing.T, listen, socket string) *Listeners {
	t.Helper()
	l, err := Bind(listen, socket)
	if err != nil {
		t.Fatalf("Bind(%q, %q): %v", listen, socket, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// startServe runs s.Serve until the test ends; Serve must then return nil.
func startServe(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve = %v, want nil after ctx ends", err)
			}
		case <-time.After(shutdownTimeout + 5*time.Second):
			t.Error("Serve did not return after ctx ended")
		}
	})
}

// socketPath is a path for the admin socket in a fresh directory of ours.
func socketPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "webknock.sock")
}

// tcpAddr is the server's TCP address now.
func tcpAddr(t *testing.T, s *Server) string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.lns.Addr()
	if a == nil {
		t.Fatal("no TCP listener")
	}
	return a.String()
}

// get does GET url with a client of its own (no connection outlives the
// test) and returns the status and body.
func get(t *testing.T, url string) (int, string, error) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestBindTCPInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	_, err = Bind(addr, "")
	if err == nil || !strings.Contains(err.Error(), "web.listen "+addr+": the address is in use") || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("Bind(%s taken) = %v, want an error that names it and says it is in use", addr, err)
	}

	// A socket that cannot be had gives the port back.
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = free.Addr().String()
	free.Close()
	if _, err := Bind(addr, "relative.sock"); err == nil || !strings.Contains(err.Error(), "absolute path") {
		t.Fatalf("Bind with a relative socket = %v, want an error", err)
	}
	again, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("after a failed Bind, %s is still held: %v", addr, err)
	}
	again.Close()
}

func TestBindSocket(t *testing.T) {
	old := syscall.Umask(0) // the socket is 0600 whatever the umask
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "run", "webknock.sock")
	l, err := Bind("", path)
	syscall.Umask(old)
	if err != nil {
		t.Fatalf("Bind: %v", err)
	}
	if l.Addr() != nil || l.Socket() != path {
		t.Errorf("Addr, Socket = %v, %q; want none, %q", l.Addr(), l.Socket(), path)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s: %v, %v; want a socket, mode 0600", path, fi.Mode(), err)
	}
	if di, err := os.Stat(filepath.Dir(path)); err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory: %v, %v; want it made 0700", di.Mode(), err)
	}
	// Someone accepts on it: refused, and theirs stays.
	if _, err := Bind("", path); err == nil || !strings.Contains(err.Error(), "web.socket "+path+": another process serves on this socket") {
		t.Errorf("Bind on a live socket = %v, want an error naming it", err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("a refused Bind removed the live socket: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Close the socket file is still there: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

// staleSocket leaves a socket file at path that nothing accepts on, as a
// killed daemon does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

func TestBindStaleSocket(t *testing.T) {
	path := socketPath(t)
	staleSocket(t, path)
	l := bind(t, "", path)
	if l.Socket() != path {
		t.Errorf("Bind over a stale socket: Socket() = %q", l.Socket())
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the new socket does not accept: %v", err)
	}
	c.Close()
}

func TestBindSocketRefuses(t *testing.T) {
	tests := []struct {
		name    string
		root    bool // needs root (chown)
		prepare func(t *testing.T, dir, path string)
		path    func(dir string) string
		want    string
	}{
		{name: "relative", path: func(string) string { return "run/webknock.sock" }, want: "want an absolute path"},
		{name: "too long", path: func(dir string) string { return filepath.Join(dir, strings.Repeat("x", 120)) }, want: "at most 107"},
		{name: "directory others may write", prepare: func(t *testing.T, dir, _ string) {
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
		}, want: "socket directory " + "DIR has mode 0777: others may write it"},
		{name: "regular file in the way", prepare: func(t *testing.T, _, path string) {
			if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, want: "a regular file is in the way"},
		{name: "directory in the way", prepare: func(t *testing.T, _, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, want: "a directory is in the way"},
		{name: "socket of another user", root: true, prepare: func(t *testing.T, _, path string) {
			staleSocket(t, path)
			if err := os.Lchown(path, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}, want: "belongs to uid 65534"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root to chown a file to another user")
			}
			dir := t.TempDir()
			path := filepath.Join(dir, "webknock.sock")
			if tt.path != nil {
				path = tt.path(dir)
			}
			if tt.prepare != nil {
				tt.prepare(t, dir, path)
			}
			want := strings.ReplaceAll(tt.want, "DIR", dir)
			l, err := Bind("", path)
			if err == nil {
				l.Close()
				t.Fatalf("Bind(%q) = nil error, want %q", path, want)
			}
			if !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "web.socket ") {
				t.Errorf("Bind(%q) = %v, want web.socket ... %q", path, err, want)
			}
		})
	}
}

func TestServeTCPAndSocket(t *testing.T) {
	path := socketPath(t)
	f := newFixture(t, "", func(o *Options) { o.Listeners = bind(t, "127.0.0.1:0", path) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.s.Serve(ctx) }()

	addr := tcpAddr(t, f.s)
	if code, body, err := get(t, "http://"+addr+"/healthz"); err != nil || code != 200 || body != "ok\n" {
		t.Fatalf("GET /healthz over TCP = %d %q %v", code, body, err)
	}
	if gs, err := NewClient(path).Grants(context.Background()); err != nil || len(gs) != len(testGrants()) {
		t.Fatalf("Grants over the socket = %v, %v", gs, err)
	}
	if err := f.s.Serve(ctx); err == nil {
		t.Error("a second Serve at once = nil error, want one")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v, want nil after ctx ends", err)
		}
	case <-time.After(shutdownTimeout + 5*time.Second):
		t.Fatal("Serve did not return after ctx ended")
	}
	if _, _, err := get(t, "http://"+addr+"/healthz"); err == nil {
		t.Error("TCP still answers after Serve returned")
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the socket file outlives Serve: %v", err)
	}
}

func TestServeNothing(t *testing.T) {
	f := newFixture(t, "", nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.s.Serve(ctx); err != nil {
		t.Errorf("Serve without listeners = %v, want nil", err)
	}
}

// rebindTo is Server.Bind then Rebind, failing the test.
func rebindTo(t *testing.T, s *Server, listen, socket string) *Listeners {
	t.Helper()
	l, err := s.Bind(listen, socket)
	if err != nil {
		t.Fatalf("Server.Bind(%q, %q): %v", listen, socket, err)
	}
	s.Rebind(l)
	return l
}

func TestRebind(t *testing.T) {
	sock1, sock2, sock3 := socketPath(t), socketPath(t), socketPath(t)
	f := newFixture(t, "", func(o *Options) { o.Listeners = bind(t, "127.0.0.1:0", sock1) })
	startServe(t, f.s)
	addr1 := tcpAddr(t, f.s)
	before := f.s.lns
	answers := func(what, addr, sock string) {
		t.Helper()
		if addr != "" {
			if code, _, err := get(t, "http://"+addr+"/healthz"); err != nil || code != 200 {
				t.Errorf("%s: GET on %s = %d %v", what, addr, code, err)
			}
		}
		if sock != "" {
			if _, err := NewClient(sock).Grants(context.Background()); err != nil {
				t.Errorf("%s: the socket %s: %v", what, sock, err)
			}
		}
	}
	gone := func(what, addr, sock string) {
		t.Helper()
		if addr != "" {
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				t.Errorf("%s: %s still accepts", what, addr)
			}
		}
		if sock != "" {
			if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s: %s is still there: %v", what, sock, err)
			}
		}
	}

	// Unchanged: shared, not bound again; a refused reload closes nothing
	// of it, an applied one keeps the very same listeners.
	same, err := f.s.Bind("127.0.0.1:0", sock1)
	if err != nil {
		t.Fatalf("Server.Bind(unchanged) = %v", err)
	}
	if same.tcp != before.tcp || same.unix != before.unix {
		t.Error("Server.Bind(unchanged) bound new listeners")
	}
	same.Close()
	answers("after closing a refused unchanged set", addr1, sock1)
	f.s.Rebind(same)
	answers("after Rebind(unchanged)", addr1, sock1)

	// Addresses that cannot be had: an error, nothing bound, nothing changed.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	if _, err := f.s.Bind(taken.Addr().String(), sock2); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Server.Bind(taken) = %v, want the bind error", err)
	}
	gone("after Server.Bind(taken)", "", sock2)
	if _, err := f.s.Bind("127.0.0.1:0", filepath.Join(t.TempDir(), "bad\x00")); err == nil {
		t.Error("Server.Bind(bad socket) = nil error")
	}
	answers("after failed binds", addr1, sock1)

	// Bound, then the reload is refused: what was bound is closed again.
	refused, err := f.s.Bind("localhost:0", sock2)
	if err != nil {
		t.Fatalf("Server.Bind(new) = %v", err)
	}
	addrRefused := refused.Addr().String()
	refused.Close()
	gone("after closing a refused set", addrRefused, sock2)
	answers("after closing a refused set", addr1, sock1)

	// Moved: the new ones serve, the old ones are gone when Rebind returns.
	moved := rebindTo(t, f.s, "localhost:0", sock2)
	addr2 := tcpAddr(t, f.s)
	answers("after Rebind(new)", addr2, sock2)
	gone("after Rebind(new)", addr1, sock1)
	if _, err := NewClient(sock1).Grants(context.Background()); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("the old socket after Rebind: %v, want ErrNoDaemon", err)
	}
	moved.Close() // the Server's now: nothing happens
	answers("after closing a set the server serves", addr2, sock2)

	// Only the socket moves: the TCP listener and its connections stay.
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	// reused tells whether a GET went over a connection opened before.
	reused := func() bool {
		var re bool
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { re = i.Reused },
		})
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr2+"/healthz", nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return re
	}
	reused()
	before = f.s.lns
	rebindTo(t, f.s, "localhost:0", sock3)
	if f.s.lns.tcp != before.tcp {
		t.Error("Rebind with an unchanged listen bound a new TCP listener")
	}
	answers("after moving the socket", addr2, sock3)
	gone("after moving the socket", "", sock2)
	if !reused() {
		t.Error("moving the socket closed the idle connection to the TCP listener")
	}

	// Off.
	rebindTo(t, f.s, "", "")
	gone("after Rebind(off)", addr2, sock3)
}

func TestRebindBeforeServe(t *testing.T) {
	f := newFixture(t, "", func(o *Options) { o.Listeners = bind(t, "127.0.0.1:0", "") })
	addr1 := tcpAddr(t, f.s)
	rebindTo(t, f.s, "localhost:0", "")
	if c, err := net.Dial("tcp", addr1); err == nil {
		c.Close()
		t.Errorf("the old address %s still accepts after Rebind", addr1)
	}
	startServe(t, f.s)
	if code, _, err := get(t, "http://"+tcpAddr(t, f.s)+"/healthz"); err != nil || code != 200 {
		t.Errorf("GET after Rebind then Serve = %d %v", code, err)
	}
}

func TestSetTokenFile(t *testing.T) {
	const newToken = "n3w-t0ken-0123456789abcdef"
	path := writeToken(t, testToken)
	f := newFixture(t, path, nil)
	h := tcpHandler(f.s)
	revoke := func(ip, token string) int {
		return do(t, h, "DELETE", "/api/grants/"+ip, bearer(token)).Code
	}
	if code := revoke("203.0.113.7", testToken); code != 200 {
		t.Fatalf("revoke with the token = %d", code)
	}

	// New content at the same path: the old token is dead.
	if err := os.WriteFile(path, []byte(newToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.s.SetTokenFile(path); err != nil {
		t.Fatalf("SetTokenFile = %v", err)
	}
	if code := revoke("2001:db8::7", testToken); code != 401 {
		t.Errorf("revoke with the replaced token = %d, want 401", code)
	}
	if code := revoke("2001:db8::7", newToken); code != 200 {
		t.Errorf("revoke with the new token = %d, want 200", code)
	}

	// Another path.
	other := writeToken(t, testToken)
	if err := f.s.SetTokenFile(other); err != nil {
		t.Fatalf("SetTokenFile(other) = %v", err)
	}
	if code := revoke("198.51.100.1", newToken); code != 401 {
		t.Errorf("revoke with the token of the old path = %d, want 401", code)
	}

	// A file that cannot be used: no token works.
	if err := f.s.SetTokenFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("SetTokenFile(missing) = nil error")
	}
	if code := revoke("198.51.100.1", testToken); code != 403 {
		t.Errorf("revoke after a token file went missing = %d, want 403", code)
	}
}
