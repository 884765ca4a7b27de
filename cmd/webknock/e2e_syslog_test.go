package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/webknock/webknock/internal/testpki"
)

// syslogSocketDir makes a directory for a unixgram socket that a sender
// of another user can reach: root's, mode 0755 (the test's scratch
// directory is private).
func syslogSocketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "webknock-syslog-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// syslogConf is a configuration with no log file: the lines come from the
// syslog listeners listen, with more keys of log.syslog.
func (e *e2e) syslogConf(listen []string, more string) string {
	e.t.Helper()
	return e.writeConfig(e2eConf{paths: []string{}, window: "1m",
		logMore: "  syslog:\n    listen: [" + strings.Join(listen, ", ") + "]\n" + more})
}

// knockLine is the combined log line of a request for path from src.
func knockLine(src, path string) string {
	return fmt.Sprintf(`%s - - [%s] "GET %s HTTP/1.1" 404 153 "-" "forged"`, src, time.Now().Format("02/Jan/2006:15:04:05 -0700"), path)
}

// TestE2ESyslogNginx: nginx sends its access log over syslog, to a unix
// datagram socket and over udp to loopback; a knock opens the port with
// no access log file at all.
func TestE2ESyslogNginx(t *testing.T) {
	for _, tc := range []struct{ name, listen, server string }{
		{"unixgram", "unixgram:%s/log.sock", "unix:%s/log.sock,nohostname"},
		{"udp", "udp:127.0.0.1:5514", "127.0.0.1:5514"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newE2E(t, "nginx", "curl")
			dir := syslogSocketDir(t)
			listen, server := tc.listen, tc.server
			if strings.Contains(listen, "%s") {
				listen, server = fmt.Sprintf(listen, dir), fmt.Sprintf(server, dir)
			}
			e.startListener()
			d := e.startDaemon(e.syslogConf([]string{listen}, ""))
			e.startNginxLogging("syslog:server="+server, "")
			e.knock(cliV4[0], fullKnock...)
			if rec := d.wait(t, "grant", cliV4[0]); rec["input"] != "syslog:"+listen {
				t.Errorf("grant record %v: want input syslog:%s", rec, listen)
			}
			e.knockGranted(d, cliV6[0])
			e.assertOpen(cliV4[0], cliV6[0])
			if _, err := os.Stat(e.log); err == nil {
				t.Errorf("%s exists: the knock came through a file", e.log)
			}
		})
	}
}

// TestE2ESyslogApache: Apache pipes its access log to logger, which sends
// it to webknock's unix datagram socket.
func TestE2ESyslogApache(t *testing.T) {
	e := newE2E(t, "apache2", "logger", "curl")
	dir := syslogSocketDir(t)
	e.startListener()
	d := e.startDaemon(e.syslogConf([]string{"unixgram:" + dir + "/log.sock"}, ""))
	e.startApacheLogging("|/usr/bin/logger -u " + dir + "/log.sock --size 16000")
	e.knockGranted(d, cliV4[0])
	e.assertOpen(cliV4[0])
}

// TestE2ESyslogForged: a knock forged by a user not in allow_uids, on a
// socket that user may write to, and one sent from an address not in
// allow_from, open nothing; a genuine knock still does.
func TestE2ESyslogForged(t *testing.T) {
	e := newE2E(t, "logger", "curl", "nginx")
	dir := syslogSocketDir(t)
	sock := dir + "/log.sock"
	e.startListener()
	d := e.startDaemon(e.syslogConf([]string{"unixgram:" + sock, "udp:0.0.0.0:5514"},
		"    socket_group: nogroup\n"))

	// nobody is in the socket's group: it can send, but its uid is not
	// allowed.
	for _, p := range fullKnock {
		cmd := exec.Command("logger", "-u", sock, "--size", "16384", knockLine(cliV4[1], p))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("logger as nobody: %v\n%s", err, out)
		}
	}
	rec := d.wait(t, "syslog: sender refused; not logged again for this sender", "")
	if s, _ := rec["sender"].(string); !strings.Contains(s, "uid 65534") {
		t.Errorf("refused sender %q, want uid 65534", s)
	}

	// From the client's namespace: not loopback, and allow_from is empty.
	for _, p := range fullKnock {
		if out, err := e.in(e.cli, "logger", "--udp", "-n", srvV4, "-P", "5514", knockLine(cliV4[2], p)).CombinedOutput(); err != nil {
			t.Fatalf("logger over udp: %v\n%s", err, out)
		}
	}
	rec = d.wait(t, "syslog: sender refused; not logged again for this sender", "")
	if s, _ := rec["sender"].(string); !strings.HasPrefix(s, "192.0.2.") {
		t.Errorf("refused sender %q, want an address of the client's namespace", s)
	}

	// A genuine knock through nginx, as root, after both: granted.
	e.startNginxLogging("syslog:server=unix:"+sock+",nohostname", "")
	e.knockGranted(d, cliV4[0])
	e.assertOpen(cliV4[0])
}

// syslogHelper runs the syslog tools of the end-to-end tests: "tlssyslog"
// ("DST CERT KEY CA", CERT and KEY "-" for none) sends each line of its
// standard input as an octet-counted RFC 5424 message over TLS to DST,
// trusting the server certificates CA signed.
func syslogHelper(mode, arg string) (int, bool) {
	if mode != "tlssyslog" {
		return 0, false
	}
	f := strings.Fields(arg)
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(f[3])
	if err != nil || !pool.AppendCertsFromPEM(pem) {
		fmt.Fprintln(os.Stderr, "CA:", err)
		return 3, true
	}
	conf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if f[1] != "-" {
		cert, err := tls.LoadX509KeyPair(f[1], f[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3, true
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", f[0], conf)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 4, true
	}
	defer c.Close()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		msg := "<190>1 " + time.Now().UTC().Format("2006-01-02T15:04:05.000000Z07:00") + " web1 nginx - - - " + sc.Text()
		if _, err := fmt.Fprintf(c, "%d %s", len(msg), msg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 5, true
		}
	}
	// The server reads what was sent before it sees the close.
	if err := c.CloseWrite(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 5, true
	}
	io.Copy(io.Discard, c)
	return 0, true
}

// TestE2ESyslogTLS: a relay in another network namespace sends the lines
// over TCP with TLS: with a client certificate of the configured CA the
// knock opens the port; without one the connection is refused and its
// knock opens nothing.
func TestE2ESyslogTLS(t *testing.T) {
	e := newE2E(t, "curl")
	pki := filepath.Join(e.dir, "pki")
	if err := os.Mkdir(pki, 0o700); err != nil {
		t.Fatal(err)
	}
	ca := testpki.NewCA(t, pki, "ca")
	serverCert, serverKey, _ := ca.Issue(t, "server", true, net.ParseIP(srvV4))
	clientCert, clientKey, _ := ca.Issue(t, "client", false)
	e.startListener()
	dst := net.JoinHostPort(srvV4, "6514")
	d := e.startDaemon(e.syslogConf([]string{"tcp:" + dst},
		"    allow_from: [192.0.2.0/24]\n"+
			"    tls: {cert_file: "+serverCert+", key_file: "+serverKey+", client_ca_file: "+ca.File+"}\n"))
	send := func(src, cert, key string) error {
		var lines strings.Builder
		for _, p := range fullKnock {
			lines.WriteString(knockLine(src, p) + "\n")
		}
		cmd := e.in(e.cli, os.Args[0], dst+" "+cert+" "+key+" "+ca.File)
		cmd.Env = append(os.Environ(), helperEnv+"=tlssyslog")
		cmd.Stdin = strings.NewReader(lines.String())
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}

	// No client certificate: the handshake fails or the server drops
	// the connection before reading a message.
	_ = send(cliV4[1], "-", "-")
	d.wait(t, "syslog: TLS handshake failed; not logged again for this sender", "")

	if err := send(cliV4[0], clientCert, clientKey); err != nil {
		t.Fatal(err)
	}
	d.wait(t, "grant", cliV4[0])
	e.assertOpen(cliV4[0])
}

// TestE2ESyslogReorder: two web servers' lines reach the daemon
// interleaved, a client's steps out of order; with log.reorder the knock
// opens, the steps put back in order; a knock whose steps really are in
// the wrong order, each logged a second after the one before, does not.
func TestE2ESyslogReorder(t *testing.T) {
	e := newE2E(t, "logger", "curl")
	dir := syslogSocketDir(t)
	sock := dir + "/log.sock"
	e.startListener()
	cfg := e.writeConfig(e2eConf{paths: []string{}, window: "1m",
		logMore: "  reorder: 1s\n  syslog:\n    listen: [\"unixgram:" + sock + "\"]\n"})
	d := e.startDaemon(cfg)
	send := func(src string, at time.Time, paths ...string) {
		t.Helper()
		for _, p := range paths {
			line := fmt.Sprintf(`%s - - [%s] "GET %s HTTP/1.1" 404 153 "-" "curl/8"`, src, at.Format("02/Jan/2006:15:04:05 -0700"), p)
			if out, err := exec.Command("logger", "-u", sock, "--size", "16000", line).CombinedOutput(); err != nil {
				t.Fatalf("logger: %v\n%s", err, out)
			}
		}
	}
	// Server B's lines arrive before server A's, all of one second.
	now := time.Now()
	send(cliV4[0], now, "/k/b2", "/k/a1", "/k/open", "/k/c3")
	d.wait(t, "grant", cliV4[0])
	// In the wrong order for real: each step a second after the one before.
	send(cliV4[1], now.Add(-3*time.Second), "/k/a1")
	send(cliV4[1], now.Add(-2*time.Second), "/k/c3")
	send(cliV4[1], now.Add(-time.Second), "/k/b2")
	send(cliV4[1], now, "/k/open")
	d.wait(t, "reset", cliV4[1])
	e.assertOpen(cliV4[0])
}
