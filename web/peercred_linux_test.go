package web

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

const nobody = 65534

// dialAs connects to the unix socket at path with uid as the effective
// user id of one OS thread, so the kernel records uid as the peer's. The
// thread is never unlocked: it ends, with its changed credentials, with the
// goroutine. Threads the runtime starts meanwhile come from its template
// thread, not from this one.
func dialAs(uid int, path string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			ch <- result{err: fmt.Errorf("setresuid: %w", e)}
			return
		}
		c, err := net.Dial("unix", path)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// needRoot skips unless the test can act as another user.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: connects to the socket as another user")
	}
	c, err := dialAs(nobody, "/nonexistent/socket")
	if c != nil {
		c.Close()
	}
	if errors.Is(err, syscall.EPERM) {
		t.Skipf("cannot change the thread's uid: %v", err)
	}
}

// TestPeerCredentials proves the admin socket checks the kernel's word on
// who connected: another user who gets through the socket's mode is
// refused with 403, root is served.
func TestPeerCredentials(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	// Let nobody reach the socket: only the peer check is left to refuse it.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "webknock.sock")
	f := newFixture(t, "", func(o *Options) { o.Listeners = bind(t, "", path) })
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	startServe(t, f.s)

	c := NewClient(path)
	c.dial = func(context.Context) (net.Conn, error) { return dialAs(nobody, path) }
	_, err := c.Grants(context.Background())
	if err == nil || !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "uid 65534 may not use the admin socket") {
		t.Errorf("Grants as nobody = %v, want refused with the daemon's reason", err)
	}
	if !strings.Contains(f.log.String(), `msg="admin socket: request refused" uid=65534`) {
		t.Errorf("log %q does not name the refused uid", f.log)
	}
	if n := len(f.admin.Lockouts()); n != 2 {
		t.Fatalf("lockouts = %d", n)
	}
	if err := c.Unlock(context.Background(), testLockouts()[0].Client); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Unlock as nobody = %v, want a permission error", err)
	}
	if n := len(f.admin.Lockouts()); n != 2 {
		t.Errorf("nobody unlocked a client: %d lockouts left, want 2", n)
	}
	if _, err := NewClient(path).Grants(context.Background()); err != nil {
		t.Errorf("Grants as root = %v", err)
	}
}

// TestClientPermissionDenied: the socket's mode keeps other users out, and
// the client says who may use it.
func TestClientPermissionDenied(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "webknock.sock")
	f := newFixture(t, "", func(o *Options) { o.Listeners = bind(t, "", path) })
	startServe(t, f.s)
	c := NewClient(path)
	c.dial = func(context.Context) (net.Conn, error) { return dialAs(nobody, path) }
	_, err := c.Grants(context.Background())
	want := "grants: cannot reach the daemon on " + path + ": permission denied: the admin socket is for root and the daemon's user (try sudo)"
	if err == nil || err.Error() != want || !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Grants as nobody on a 0600 socket = %v, want %q", err, want)
	}
}
