package weblog

// Listen strings and the configuration checks of the syslog input, shared
// by `webknock check` and ListenSyslog so that one accepts what the other does.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Syslog listen networks (SyslogAddr.Network).
const (
	SyslogUnixgram = "unixgram"
	SyslogUDP      = "udp"
	SyslogTCP      = "tcp"
)

// maxSunPath is the longest socket path the kernel takes (sun_path less its NUL).
const maxSunPath = 107

// SyslogAddr is a parsed listen string.
type SyslogAddr struct {
	Network string // SyslogUnixgram, SyslogUDP or SyslogTCP
	// Address is the socket path (unixgram) or HOST:PORT in canonical
	// form (udp, tcp; "[::1]:514"). Port 0 picks a free port (tests).
	Address string
	// Loopback: only this host can send (a unixgram socket, or a loopback
	// IP address), so TLS is not required.
	Loopback bool
}

// ParseSyslogAddr parses a listen string: "unixgram:/abs/path",
// "udp:HOST:PORT" or "tcp:HOST:PORT", HOST an IP address (IPv6 in
// brackets), never a name: what a name resolves to could change which
// senders are trusted.
func ParseSyslogAddr(s string) (SyslogAddr, error) {
	network, rest, ok := strings.Cut(s, ":")
	if !ok {
		return SyslogAddr{}, errors.New("want unixgram:/PATH, udp:HOST:PORT or tcp:HOST:PORT")
	}
	switch network {
	case SyslogUnixgram:
		switch {
		case !filepath.IsAbs(rest):
			return SyslogAddr{}, fmt.Errorf("socket path %q is not absolute", rest)
		case filepath.Clean(rest) != rest:
			return SyslogAddr{}, fmt.Errorf("socket path %q is not clean (want %q)", rest, filepath.Clean(rest))
		case len(rest) > maxSunPath:
			return SyslogAddr{}, fmt.Errorf("socket path is %d bytes, the kernel takes at most %d", len(rest), maxSunPath)
		case strings.IndexByte(rest, 0) >= 0:
			return SyslogAddr{}, errors.New("socket path has a NUL byte")
		}
		return SyslogAddr{Network: network, Address: rest, Loopback: true}, nil
	case SyslogUDP, SyslogTCP:
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return SyslogAddr{}, fmt.Errorf("want %s:HOST:PORT: %w", network, err)
		}
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return SyslogAddr{}, fmt.Errorf("host %q is not an IP address", host)
		}
		if ip.Zone() != "" {
			return SyslogAddr{}, fmt.Errorf("host %q: zoned addresses are not supported", host)
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return SyslogAddr{}, fmt.Errorf("port %q is not a number from 0 to 65535", port)
		}
		ip = ip.Unmap()
		return SyslogAddr{Network: network, Address: netip.AddrPortFrom(ip, uint16(p)).String(), Loopback: ip.IsLoopback()}, nil
	}
	return SyslogAddr{}, fmt.Errorf("network %q: want unixgram, udp or tcp", network)
}

// Limits of SyslogOptions.
const (
	DefaultMaxMessage  = 16384
	defaultMaxConns    = 64
	defaultIdleTimeout = 5 * time.Minute
)

// CheckSyslog returns every problem of o that can be found without
// binding a socket, each naming its field as configured (log.syslog.…):
// listen strings that do not parse or repeat, a tcp listener off
// loopback without TLS (anyone on the network could forge a knock), TLS
// files that do not load, a unixgram socket directory others could swap
// the socket in (checked only if it exists: a service manager may create
// it at start; ListenSyslog refuses a missing one), bad limits.
// ListenSyslog runs the same checks.
func CheckSyslog(o SyslogOptions) []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	seen := map[SyslogAddr]int{}
	unixgram, tcp := false, false
	tlsSet := o.TLS != SyslogTLS{}
	tlsFull := o.TLS.CertFile != "" && o.TLS.KeyFile != "" && o.TLS.ClientCAFile != ""
	for i, l := range o.Listen {
		a, err := ParseSyslogAddr(l)
		if err != nil {
			add("log.syslog.listen[%d] %q: %w", i, l, err)
			continue
		}
		if j, dup := seen[a]; dup {
			add("log.syslog.listen[%d] %q: same socket as log.syslog.listen[%d] %q", i, l, j, o.Listen[j])
			continue
		}
		seen[a] = i
		switch a.Network {
		case SyslogUnixgram:
			unixgram = true
			if err := checkSocketDir(filepath.Dir(a.Address), false); err != nil {
				add("log.syslog.listen[%d] %q: %w", i, l, err)
			}
		case SyslogTCP:
			tcp = true
			if !a.Loopback && !tlsFull {
				add("log.syslog.listen[%d] %q: not loopback: needs log.syslog.tls cert_file, key_file and client_ca_file", i, l)
			}
		}
	}
	if unixgram && len(o.AllowUIDs) == 0 {
		add("log.syslog.allow_uids: empty: every sender to a unixgram socket would be refused")
	}
	for i, p := range o.AllowFrom {
		if !p.IsValid() {
			add("log.syslog.allow_from[%d]: not a valid prefix", i)
		}
	}
	if o.SocketGroup < -1 {
		add("log.syslog.socket_group %d: want a group id, or -1", o.SocketGroup)
	}
	if o.MaxMessage < 0 || o.MaxMessage > MaxLineBytes {
		add("log.syslog.max_message %d: want 0 (%d) up to %d bytes", o.MaxMessage, DefaultMaxMessage, MaxLineBytes)
	}
	if o.MaxConns < 0 {
		add("log.syslog.max_connections %d: want 0 (%d) or more", o.MaxConns, defaultMaxConns)
	}
	if o.IdleTimeout < 0 {
		add("log.syslog.idle_timeout %v: want 0 (5m) or more", o.IdleTimeout)
	}
	switch {
	case tlsSet && !tlsFull:
		add("log.syslog.tls: cert_file, key_file and client_ca_file go together (a client certificate is always required)")
	case tlsFull && tcp:
		if _, err := loadSyslogTLS(o.TLS); err != nil {
			add("log.syslog.tls: %w", err)
		}
	}
	return errs
}

// loadSyslogTLS makes the server side of mutual TLS: our certificate, and
// client certificates required and verified against the client CA file.
func loadSyslogTLS(t SyslogTLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("cert_file %s, key_file %s: %w", t.CertFile, t.KeyFile, err)
	}
	pem, err := os.ReadFile(t.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("client_ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("client_ca_file %s: no PEM certificate in it", t.ClientCAFile)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// checkSocketDir refuses a directory in which someone other than root or
// us could remove our socket and put theirs in its place (to read what the
// web server sends, or to stop it from arriving): one not owned by root or
// by our effective uid, or writable by group or others without the sticky
// bit. A missing directory is an error only if mustExist.
func checkSocketDir(dir string, mustExist bool) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !mustExist:
		return nil
	case err != nil:
		return fmt.Errorf("socket directory: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("socket directory %s is not a directory", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("socket directory %s: no owner information", dir)
	}
	if uid := uint32(os.Geteuid()); st.Uid != 0 && st.Uid != uid {
		return fmt.Errorf("socket directory %s is owned by uid %d, not root or us (uid %d): its owner could replace the socket", dir, st.Uid, uid)
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("socket directory %s is writable by group or others (%v) without the sticky bit: they could replace the socket", dir, fi.Mode().Perm())
	}
	return nil
}
