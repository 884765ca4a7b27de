package web

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/webknock/webknock/internal/statedir"
)

// maxSocketPath is the longest path a unix socket can be bound at (sun_path
// holds 108 bytes with the terminating NUL).
const maxSocketPath = 107

// staleProbeTimeout bounds the connect that tells a stale socket file from a
// live one.
const staleProbeTimeout = 2 * time.Second

// Listeners are the bound TCP listener (web.listen) and admin unix socket
// (web.socket) a Server serves on. Binding is done before the daemon starts
// anything else, so an address in use stops the start with a clear error
// instead of a daemon without its API (or with a squatter on its port).
// Once a Server serves them (Serve, Rebind) it owns them and closes them.
type Listeners struct {
	listen string // as configured; "" when no TCP listener
	socket string // path; "" when no admin socket
	tcp    net.Listener
	unix   *net.UnixListener
	// sharedTCP, sharedUnix: taken over from the set the server serves
	// (Server.Bind), so not this value's to close.
	sharedTCP, sharedUnix bool
	taken                 atomic.Bool // a Server serves them: Close leaves them alone
}

// Bind opens the TCP listener on listen and the admin socket at socket;
// either may be "" to go without it. It fails at once, naming the address,
// when one cannot be had: the port is taken, the socket's directory is not
// webknock's own, or another process serves on the socket.
//
// The socket's directory is created (mode 0700) when missing and refused
// when another user owns it or may write it. A socket file left behind by a
// webknock that died is removed; one another process accepts on is not. The
// socket is made mode 0600 whatever the umask: the admin API trusts whoever
// can connect as far as the peer's kernel credentials allow.
func Bind(listen, socket string) (*Listeners, error) {
	l := &Listeners{listen: listen, socket: socket}
	if listen != "" {
		ln, err := bindTCP(listen)
		if err != nil {
			return nil, err
		}
		l.tcp = ln
	}
	if socket != "" {
		ln, err := bindUnix(socket)
		if err != nil {
			l.Close()
			return nil, err
		}
		l.unix = ln
	}
	return l, nil
}

// Close closes the listeners (and removes the socket file) unless a Server
// serves them: then it does nothing, the Server closes them when it is done.
// So a reload that binds and is then refused closes what it bound, and a
// deferred Close is always safe. Closing twice is harmless.
func (l *Listeners) Close() error {
	if l == nil || l.taken.Load() {
		return nil
	}
	var errs []error
	if l.tcp != nil && !l.sharedTCP {
		if err := l.tcp.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("close web.listen %s: %w", l.listen, err))
		}
	}
	if l.unix != nil && !l.sharedUnix {
		if err := l.unix.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("close web.socket %s: %w", l.socket, err))
		}
	}
	return errors.Join(errs...)
}

// Addr is the bound TCP address (with the port the kernel chose for ":0"),
// or nil without a TCP listener.
func (l *Listeners) Addr() net.Addr {
	if l == nil || l.tcp == nil {
		return nil
	}
	return l.tcp.Addr()
}

// Socket is the admin socket's path, or "" without one.
func (l *Listeners) Socket() string {
	if l == nil || l.unix == nil {
		return ""
	}
	return l.socket
}

func bindTCP(listen string) (net.Listener, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("web.listen %s: the address is in use by another process (another webknock?): %w", listen, err)
		}
		return nil, fmt.Errorf("web.listen %s: %w", listen, err)
	}
	return ln, nil
}

// CheckSocket says whether the admin socket can be bound at path, changing
// nothing: an absolute path short enough for a unix socket, in a directory
// that, if it exists, is ours and writable by no one else (Bind makes a
// missing one, mode 0700).
func CheckSocket(path string) error {
	return checkSocket(path, false)
}

func checkSocket(path string, create bool) error {
	switch {
	case !filepath.IsAbs(path):
		return fmt.Errorf("web.socket %q: want an absolute path like /run/webknock/webknock.sock", path)
	case len(path) > maxSocketPath:
		return fmt.Errorf("web.socket %s: the path has %d bytes; a unix socket's has at most %d", path, len(path), maxSocketPath)
	}
	if err := statedir.Owned("socket directory", filepath.Dir(filepath.Clean(path)), create); err != nil {
		return fmt.Errorf("web.socket %s: %w", path, err)
	}
	return nil
}

func bindUnix(path string) (*net.UnixListener, error) {
	if err := checkSocket(path, true); err != nil {
		return nil, err
	}
	path = filepath.Clean(path)
	if err := removeStale(path); err != nil {
		return nil, fmt.Errorf("web.socket %s: %w", path, err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("web.socket %s: %w", path, err)
	}
	// Before the first Accept: a connection queued in the moment between
	// bind and chmod is still refused by the peer credential check.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("web.socket %s: %w", path, err)
	}
	return ln, nil
}

// removeStale removes a socket file at path that is ours and that nothing
// accepts on: what a webknock that was killed leaves behind. Anything else
// at path is an error.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("a %s is in the way, not a socket; remove it or choose another path", fileType(fi))
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
		owner := "an unknown user"
		if ok {
			owner = fmt.Sprintf("uid %d", st.Uid)
		}
		return fmt.Errorf("the socket file belongs to %s, not to webknock's uid %d; remove it or choose another path", owner, os.Geteuid())
	}
	c, err := net.DialTimeout("unix", path, staleProbeTimeout)
	if err == nil {
		c.Close()
		return errors.New("another process serves on this socket (is webknock already running?)")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("cannot tell whether another process serves on it: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove the stale socket: %w", err)
	}
	return nil
}

func fileType(fi fs.FileInfo) string {
	switch t := fi.Mode().Type(); {
	case t == 0:
		return "regular file"
	case t&fs.ModeDir != 0:
		return "directory"
	case t&fs.ModeSymlink != 0:
		return "symbolic link"
	default:
		return "file of type " + t.String()
	}
}
