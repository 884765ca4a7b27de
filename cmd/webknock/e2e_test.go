package main

// End-to-end tests: real nginx and Apache httpd write real access logs in a
// network namespace the test creates, `webknock run` follows them and changes
// real iptables/ip6tables rules there, and clients in a second namespace
// knock with curl and connect over a veth pair. They need root and the
// programs; without them they skip, unless WK_E2E=require (as in
// .ci/run), which makes a missing prerequisite a failure.
//
// All traffic stays between the two namespaces, on documentation addresses
// (192.0.2.0/24, 2001:db8::/64) that exist only there.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/webknock/webknock/internal/realtest"
)

const (
	srvV4 = "192.0.2.1"
	srvV6 = "2001:db8::1"
)

// Client addresses in the client namespace.
var cliV4 = []string{"192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14", "192.0.2.15", "192.0.2.16"}
var cliV6 = []string{"2001:db8::11", "2001:db8::12"}

// helperEnv makes the test binary act as a small network tool inside a
// namespace (see TestMain).
const helperEnv = "WK_E2E_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode, os.Args[len(os.Args)-1]))
	}
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// serveTCP listens on addr, prints "ready" and hands every connection to
// handle; it returns only when accepting fails.
func serveTCP(addr string, handle func(net.Conn)) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		handle(c)
	}
}

// helper runs one tool: "listen" accepts TCP connections on the address
// (the SSH stand-in) and "dial" connects from SRC to DST ("SRC DST"),
// exiting 0 when the connection is accepted.
func helper(mode, arg string) int {
	switch mode {
	case "listen":
		return serveTCP(arg, func(c net.Conn) { c.Close() })
	case "knocklat":
		// "SRC HOST DSTADDR": knock from SRC on http://HOST, then time from
		// the knock page's response until DSTADDR accepts a connection;
		// prints that in microseconds and the response's wall-clock time
		// in unix nanoseconds.
		f := strings.Fields(arg)
		src, host, dst := f[0], f[1], f[2]
		tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}).DialContext, DisableKeepAlives: true}
		client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		for _, p := range fullKnock {
			resp, err := client.Get("http://" + host + p)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		start := time.Now()
		// A dropped SYN is seen only as a timeout, which the runtime
		// notices a millisecond or so late: the connect time is as coarse.
		d := net.Dialer{Timeout: 250 * time.Microsecond, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		for time.Since(start) < 5*time.Second {
			if c, err := d.Dial("tcp", dst); err == nil {
				c.Close()
				fmt.Println(time.Since(start).Microseconds(), start.UnixNano())
				return 0
			}
		}
		return 3
	case "connlat":
		// "SRC DST N": N connections from SRC to DST one after the other;
		// prints the median time to connect, in microseconds.
		f := strings.Fields(arg)
		n, _ := strconv.Atoi(f[2])
		d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(f[0])}}
		var us []int64
		for range n {
			start := time.Now()
			c, err := d.Dial("tcp", f[1])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 3
			}
			us = append(us, time.Since(start).Nanoseconds())
			c.Close()
		}
		slices.Sort(us)
		fmt.Println(float64(us[len(us)/2]) / 1000)
		return 0
	case "httpserve":
		// "ADDR": an HTTP server that answers 204 to everything.
		ln, err := net.Listen("tcp", arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
		fmt.Println("ready")
		http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
		return 0
	case "httplat":
		// "SRC URL N": N requests from SRC, each on a new connection, one
		// after the other; prints the median time of one, in microseconds.
		f := strings.Fields(arg)
		n, _ := strconv.Atoi(f[2])
		tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(f[0])}}).DialContext, DisableKeepAlives: true}
		client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		var us []int64
		for range n {
			start := time.Now()
			resp, err := client.Get(f[1])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 3
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			us = append(us, time.Since(start).Nanoseconds())
		}
		slices.Sort(us)
		fmt.Println(float64(us[len(us)/2]) / 1000)
		return 0
	case "dial":
		src, dst, _ := strings.Cut(arg, " ")
		d := net.Dialer{Timeout: 300 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", dst)
		if err != nil {
			return 3
		}
		c.Close()
		return 0
	}
	if code, ok := sessionHelper(mode, arg); ok {
		return code
	}
	if code, ok := syslogHelper(mode, arg); ok {
		return code
	}
	return 2
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// webknockBinary builds the command once per test run.
func webknockBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "webknock-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "webknock")
		args := []string{"build", "-buildvcs=false", "-o", builtBin}
		if os.Getenv("GOCOVERDIR") != "" {
			// bench/coverage.sh: the daemons write coverage data there.
			args = append(args, "-cover", "-coverpkg=github.com/webknock/webknock/...")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// requireE2E skips (or, with WK_E2E=require, fails) when the test cannot
// run here.
func requireE2E(t testing.TB, programs ...string) {
	t.Helper()
	realtest.Require(t, "end-to-end test", append([]string{"ip", "iptables", "ip6tables", "curl"}, programs...)...)
}

// e2e is one test's world: a server and a client namespace joined by veth.
type e2e struct {
	t        testing.TB
	id       string // suffix of namespace and link names
	dir      string // world-readable scratch directory
	srv, cli string // namespace names
	log      string // the access log the web server writes
	backend  string // firewall.backend; default iptables
}

func newE2E(t testing.TB, programs ...string) *e2e {
	t.Helper()
	requireE2E(t, programs...)
	e := newWorld(t, "webknock-e2e-")
	id := e.id
	for _, ns := range []string{e.srv, e.cli} {
		e.must("ip", "netns", "add", ns)
		ns := ns
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		e.must("ip", "-n", ns, "link", "set", "lo", "up")
	}
	e.must("ip", "link", "add", "wkv"+id, "netns", e.srv, "type", "veth", "peer", "name", "wkp"+id, "netns", e.cli)
	e.must("ip", "-n", e.srv, "addr", "add", srvV4+"/24", "dev", "wkv"+id)
	e.must("ip", "-n", e.srv, "addr", "add", srvV6+"/64", "dev", "wkv"+id, "nodad")
	e.must("ip", "-n", e.srv, "link", "set", "wkv"+id, "up")
	for _, a := range cliV4 {
		e.must("ip", "-n", e.cli, "addr", "add", a+"/24", "dev", "wkp"+id)
	}
	for _, a := range cliV6 {
		e.must("ip", "-n", e.cli, "addr", "add", a+"/64", "dev", "wkp"+id, "nodad")
	}
	e.must("ip", "-n", e.cli, "link", "set", "wkp"+id, "up")
	e.must("mkdir", "-p", filepath.Join(e.dir, "www"), filepath.Join(e.dir, "state"))
	return e
}

// newWorld returns a test's world, its namespaces still to make: a
// world-readable scratch directory named with prefix (kept when the test
// fails) and the names of the server and client namespaces.
func newWorld(t testing.TB, prefix string) *e2e {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("scratch directory kept: %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	id := fmt.Sprintf("%d%d", os.Getpid()%10000, time.Now().UnixNano()%1000)
	return &e2e{t: t, id: id, dir: dir, srv: "wks" + id, cli: "wkc" + id, log: filepath.Join(dir, "access.log")}
}

// must runs a command on the host and fails the test if it fails.
func (e *e2e) must(name string, args ...string) string {
	e.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// in returns a command that runs in namespace ns.
func (e *e2e) in(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// background starts cmd and stops it when the test ends.
func (e *e2e) background(cmd *exec.Cmd) {
	e.t.Helper()
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start %v: %v", cmd.Args, err)
	}
	e.t.Cleanup(func() { stop(cmd) })
}

// stop ends a process the way its service manager would: SIGTERM, so that
// nginx, Apache and squid take their workers down with them (and a daemon
// built with -cover writes its data), then SIGKILL after a grace period.
func stop(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// startListener starts the SSH stand-in on port 22 of the server.
func (e *e2e) startListener() { e.startServer("listen") }

// startServer starts the helper mode (a TCP server) on port 22 of the
// server and waits until it is ready.
func (e *e2e) startServer(mode string) { e.startServerOn(mode, "[::]:22") }

// startServerOn starts the helper mode on addr of the server and waits
// until it is ready.
func (e *e2e) startServerOn(mode, addr string) {
	e.t.Helper()
	cmd := e.in(e.srv, os.Args[0], addr)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	e.background(cmd)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		e.t.Fatalf("%s server did not start: %q %v", mode, line, err)
	}
}

// waitHTTP waits until the web server answers, with a deadline.
func (e *e2e) waitHTTP() {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if e.in(e.cli, "curl", "-s", "-o", "/dev/null", "--max-time", "1", "http://"+srvV4+"/ready-check").Run() == nil {
			return
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-e.t.Context().Done():
		}
	}
	e.t.Fatal("the web server did not answer within 10s")
}

func (e *e2e) startNginx() {
	e.t.Helper()
	e.startNginxWith("")
}

// startNginxWith starts nginx with extra directives in its server block.
func (e *e2e) startNginxWith(server string) {
	e.t.Helper()
	e.startNginxLogging(e.log, server)
}

// startNginxLogging starts nginx writing its access log to accessLog (a
// file, or syslog:...), with extra directives in its server block.
func (e *e2e) startNginxLogging(accessLog, server string) {
	e.t.Helper()
	conf := filepath.Join(e.dir, "nginx.conf")
	write(e.t, conf, fmt.Sprintf(`worker_processes 1;
daemon off;
user root;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log;
events { worker_connections 64; }
http {
  access_log %[2]s combined;
  client_body_temp_path %[1]s;
  server {
    listen %[3]s:80;
    listen [%[4]s]:80;
    root %[1]s/www;
    %[5]s
  }
}
`, e.dir, accessLog, srvV4, srvV6, server))
	e.background(e.in(e.srv, "nginx", "-c", conf))
	e.waitHTTP()
}

// startNginxSnippet starts nginx with the shipped snippet for the knock
// prefix /k/ in its server block.
func (e *e2e) startNginxSnippet() {
	e.t.Helper()
	snippet, err := filepath.Abs("../../config/examples/nginx-webknock.conf")
	if err != nil {
		e.t.Fatal(err)
	}
	e.startNginxWith("include " + snippet + ";")
}

// reopenNginx makes nginx reopen its log, as logrotate's postrotate does.
func (e *e2e) reopenNginx() {
	e.t.Helper()
	conf := filepath.Join(e.dir, "nginx.conf")
	if out, err := e.in(e.srv, "nginx", "-c", conf, "-s", "reopen").CombinedOutput(); err != nil {
		e.t.Fatalf("nginx -s reopen: %v\n%s", err, out)
	}
}

func (e *e2e) startApache() {
	e.t.Helper()
	e.startApacheLogging(e.log)
}

// startApacheLogging starts Apache with CustomLog customLog (a file, or
// a piped logger: "|...").
func (e *e2e) startApacheLogging(customLog string) {
	e.t.Helper()
	conf := filepath.Join(e.dir, "apache2.conf")
	write(e.t, conf, fmt.Sprintf(`ServerRoot /etc/apache2
ServerName webknock-e2e
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
User www-data
Group www-data
PidFile %[1]s/apache2.pid
DefaultRuntimeDir %[1]s
Mutex file:%[1]s default
ErrorLog %[1]s/apache2-error.log
Listen %[3]s:80
Listen [%[4]s]:80
DocumentRoot %[1]s/www
<Directory %[1]s/www>
  Require all granted
</Directory>
LogFormat "%%h %%l %%u %%t \"%%r\" %%>s %%O \"%%{Referer}i\" \"%%{User-Agent}i\"" combined
CustomLog "%[2]s" combined
`, e.dir, customLog, srvV4, srvV6))
	cmd := e.in(e.srv, "apache2", "-f", conf, "-DFOREGROUND")
	cmd.Env = append(os.Environ(), "APACHE_RUN_DIR="+e.dir, "APACHE_LOG_DIR="+e.dir)
	e.background(cmd)
	e.waitHTTP()
}

func write(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// config writes the daemon's configuration with the given window and no
// web server.
func (e *e2e) config(window string) string {
	e.t.Helper()
	return e.writeConfig(e2eConf{window: window})
}

// configWeb writes the configuration with the given window and web.listen.
func (e *e2e) configWeb(window, listen string) string {
	e.t.Helper()
	return e.writeConfig(e2eConf{window: window, listen: listen})
}

// e2eConf is a configuration of the daemon; a field left zero takes its
// default.
type e2eConf struct {
	name    string   // the file in the scratch directory; default webknock.yaml
	paths   []string // log.paths; default the access log nginx writes
	format  string   // log.format; default combined
	start   string   // log.start; default saved
	state   string   // state_dir; default e.dir/state
	chain   string   // firewall.chain; default WEBKNOCK
	hook    string   // firewall.hook; default the backend's
	ipv6Off bool     // firewall.ipv6: false
	window  string   // the window of the ssh sequence; default 10m
	seqs    string   // the sequences block; default the ssh sequence
	listen  string   // web.listen; default none
	socket  string   // web.socket; default e.socket()
	fwMore  string   // more lines of the firewall block, indented
	logMore string   // more lines of the log block, indented
	more    string   // more sections, at the end
}

// writeConfig writes c and returns its path. The bearer token file is
// made (private) if there is none.
func (e *e2e) writeConfig(c e2eConf) string {
	e.t.Helper()
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&c.name, "webknock.yaml")
	if c.paths == nil {
		c.paths = []string{e.log}
	}
	def(&c.format, "combined")
	def(&c.start, "saved")
	def(&c.state, filepath.Join(e.dir, "state"))
	def(&c.window, "10m")
	def(&c.seqs, `  - name: ssh
    steps: [/k/a1, /k/b2, /k/c3]
    knock_page: /k/open
    timeout: 30s
    window: `+c.window+`
    ports: [22/tcp]
`)
	def(&c.listen, `""`)
	def(&c.socket, e.socket())
	token := filepath.Join(e.dir, "token")
	if _, err := os.Stat(token); err != nil {
		if err := os.WriteFile(token, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
			e.t.Fatal(err)
		}
	}
	backend := e.backend
	if backend == "" {
		backend = "iptables"
	}
	fw := "  backend: " + backend + "\n  protect: true\n"
	if c.chain != "" {
		fw += "  chain: " + c.chain + "\n"
	}
	if c.hook != "" {
		fw += "  hook: " + c.hook + "\n"
	}
	if c.ipv6Off {
		fw += "  ipv6: false\n"
	}
	fw += c.fwMore
	path := filepath.Join(e.dir, c.name)
	write(e.t, path, fmt.Sprintf(`log:
  paths: [%s]
  format: %s
  start: %s
%sstate_dir: %s
firewall:
%ssequences:
%sweb:
  listen: %s
  token_file: %s
  socket: %s
%s`, strings.Join(c.paths, ", "), c.format, c.start, c.logMore, c.state, fw, c.seqs, c.listen, token, c.socket, c.more))
	return path
}

// socket is the daemon's admin socket.
func (e *e2e) socket() string { return filepath.Join(e.dir, "run", "webknock.sock") }

// daemon is a running `webknock run` whose JSON log the test reads.
type daemonProc struct {
	cmd     *exec.Cmd
	records chan map[string]any
	mu      sync.Mutex
	all     bytes.Buffer
}

func (e *e2e) startDaemon(cfg string) *daemonProc {
	e.t.Helper()
	return e.startDaemonCmd(e.daemonCmd(cfg))
}

// daemonCmd is the command of `webknock run -c cfg` in the server
// namespace, with env added to the environment.
func (e *e2e) daemonCmd(cfg string, env ...string) *exec.Cmd {
	cmd := e.in(e.srv, webknockBinary(e.t), "run", "-c", cfg, "--json-logs", "--debug")
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	return cmd
}

// startDaemonCmd starts cmd, a `webknock run`, and waits until it runs.
func (e *e2e) startDaemonCmd(cmd *exec.Cmd) *daemonProc {
	e.t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	d := &daemonProc{cmd: cmd, records: make(chan map[string]any, 1024)}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start webknock: %v", err)
	}
	e.t.Cleanup(func() { stop(cmd) })
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			d.mu.Lock()
			d.all.Write(sc.Bytes())
			d.all.WriteByte('\n')
			d.mu.Unlock()
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil {
				d.records <- rec
			}
		}
		close(d.records)
	}()
	e.t.Cleanup(func() {
		if e.t.Failed() {
			d.mu.Lock()
			e.t.Logf("webknock log:\n%s", d.all.String())
			d.mu.Unlock()
		}
	})
	d.wait(e.t, "webknock running", "")
	return d
}

// wait returns the first log record with message msg (and ip, if given),
// failing the test after a deadline.
func (d *daemonProc) wait(t testing.TB, msg, ip string) map[string]any {
	t.Helper()
	return d.waitFor(t, msg, ip, 15*time.Second)
}

// waitFor is wait with a deadline of its own.
func (d *daemonProc) waitFor(t testing.TB, msg, ip string, limit time.Duration) map[string]any {
	t.Helper()
	deadline := time.After(limit)
	for {
		select {
		case rec, ok := <-d.records:
			if !ok {
				t.Fatalf("webknock exited while the test waited for %q", msg)
			}
			if rec["msg"] == msg && (ip == "" || rec["ip"] == ip) {
				return rec
			}
		case <-deadline:
			t.Fatalf("no %q (ip %q) in webknock's log within %v", msg, ip, limit)
		}
	}
}

// kill9 kills the daemon without letting it clean up (if it is not dead
// already).
func (d *daemonProc) kill9(t testing.TB) {
	t.Helper()
	d.cmd.Process.Kill()
	d.cmd.Wait()
	for range d.records {
	}
}

// knock requests the sequence's URLs from src with curl.
func (e *e2e) knock(src string, paths ...string) {
	e.t.Helper()
	host := srvV4
	if strings.Contains(src, ":") {
		host = "[" + srvV6 + "]"
	}
	for _, p := range paths {
		if out, err := e.in(e.cli, "curl", "-s", "-o", "/dev/null", "--max-time", "5", "--interface", src,
			"-A", "Mozilla/5.0 (webknock end-to-end test)", "http://"+host+p+"?r=1").CombinedOutput(); err != nil {
			e.t.Fatalf("curl %s from %s: %v\n%s", p, src, err, out)
		}
	}
}

var fullKnock = []string{"/k/a1", "/k/b2", "/k/c3", "/k/open"}

// knockGranted knocks the whole sequence from each src and waits for its
// grant.
func (e *e2e) knockGranted(d *daemonProc, srcs ...string) {
	e.t.Helper()
	for _, src := range srcs {
		e.knock(src, fullKnock...)
		d.wait(e.t, "grant", src)
	}
}

// connects reports whether src can open a TCP connection to port 22.
func (e *e2e) connects(src string) bool {
	e.t.Helper()
	dst := net.JoinHostPort(srvV4, "22")
	if strings.Contains(src, ":") {
		dst = net.JoinHostPort(srvV6, "22")
	}
	return e.dials(src, dst)
}

// dials reports whether src, in the client namespace, can open a TCP
// connection to dst.
func (e *e2e) dials(src, dst string) bool {
	e.t.Helper()
	cmd := e.in(e.cli, os.Args[0], src+" "+dst)
	cmd.Env = append(os.Environ(), helperEnv+"=dial")
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 3 {
		return false
	}
	if err != nil {
		e.t.Fatalf("dial helper: %v", err)
	}
	return true
}

// assertOpen checks who may connect: exactly the addresses in open.
func (e *e2e) assertOpen(open ...string) {
	e.t.Helper()
	for _, a := range append(cliV4[:4:4], cliV6...) {
		want := false
		for _, o := range open {
			want = want || o == a
		}
		if got := e.connects(a); got != want {
			e.t.Errorf("connect from %s = %v, want %v", a, got, want)
		}
	}
}

// assertNoChain fails the test if the ruleset of a family (cmds:
// iptables, ip6tables) mentions our chain; when says at what point.
func (e *e2e) assertNoChain(when string, cmds ...string) {
	e.t.Helper()
	for _, cmd := range cmds {
		if out := e.must("ip", "netns", "exec", e.srv, cmd, "-w", "5", "-S"); strings.Contains(out, "WEBKNOCK") {
			e.t.Errorf("%s %s:\n%s", cmd, when, out)
		}
	}
}

// grantRules returns the elements of our grant sets of a family (cmd is
// iptables or ip6tables) that hold grants of the ssh sequence, as
// ipsetElements writes them.
func (e *e2e) grantRules(cmd string) []string {
	e.t.Helper()
	var out []string
	for _, el := range e.ipsetElements(cmd == "ip6tables") {
		if strings.Contains(el, " webknock:ssh:") {
			out = append(out, el)
		}
	}
	return out
}

// ipsetElements lists the elements of our grant sets of a family as
// "SRC/BITS PROTO/PORT COMMENT timeout SECONDS"; none of a set that is gone.
func (e *e2e) ipsetElements(v6 bool) []string {
	e.t.Helper()
	v := "4"
	if v6 {
		v = "6"
	}
	var els []string
	for _, kind := range []string{"g", "n"} {
		out, err := e.in(e.srv, "ipset", "save", "WEBKNOCK-"+kind+v).Output()
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			if len(f) < 3 || f[0] != "add" {
				continue
			}
			src, port, ok := strings.Cut(f[2], ",")
			if !ok {
				e.t.Fatalf("ipset save: element %q", l)
			}
			if !strings.Contains(src, "/") {
				a := netip.MustParseAddr(src)
				src = netip.PrefixFrom(a, a.BitLen()).String()
			}
			proto, num, _ := strings.Cut(port, ":")
			timeout, comment := "", ""
			for i := 3; i+1 < len(f); i++ {
				switch f[i] {
				case "timeout":
					timeout = f[i+1]
				case "comment":
					comment = strings.Trim(f[i+1], `"`)
				}
			}
			els = append(els, fmt.Sprintf("%s %s/%s %s timeout %s", src, proto, num, comment, timeout))
		}
	}
	return els
}

// untilOf reads the end of a grant from a log record.
func untilOf(t testing.TB, rec map[string]any) time.Time {
	t.Helper()
	s, _ := rec["until"].(string)
	u, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("grant record %v: until: %v", rec, err)
	}
	return u
}

// waitUntil waits for the wall clock to pass tm (the kernel's time match
// works on the wall clock; there is nothing else to wait on).
func waitUntil(t testing.TB, tm time.Time) {
	t.Helper()
	select {
	case <-time.After(time.Until(tm)):
	case <-t.Context().Done():
		t.Fatal("test ended")
	}
}

// TestE2ENginxKnock: strangers cannot connect; a knock through nginx opens
// port 22 for the knocking address only (IPv4 and IPv6); the window ends,
// the rule is removed and the port is closed again.
func TestE2ENginxKnock(t *testing.T) {
	forBackends(t, []string{"nginx"}, testNginxKnock)
}

func testNginxKnock(t *testing.T, e *e2e) {
	e.startNginx()
	e.startListener()
	d := e.startDaemon(e.config("12s"))
	e.assertOpen()

	e.knock(cliV4[0], fullKnock...)
	g := d.wait(t, "grant", cliV4[0])
	e.assertOpen(cliV4[0])
	if r := e.grantEntries(false); len(r) != 1 {
		t.Errorf("IPv4 grant entries = %q, want one", r)
	}

	e.knockGranted(d, cliV6[0])
	e.assertOpen(cliV4[0], cliV6[0])
	if r := e.grantEntries(true); len(r) != 1 {
		t.Errorf("IPv6 grant entries = %q, want one", r)
	}

	// A wrong sequence opens nothing.
	e.knock(cliV4[1], "/k/a1", "/k/c3", "/k/b2", "/k/open")
	e.knock(cliV4[2], "/k/open")

	waitUntil(t, untilOf(t, g).Add(time.Second))
	d.wait(t, "grant removed", cliV4[0])
	d.wait(t, "grant removed", cliV6[0])
	e.assertOpen()
	if r := append(e.grantEntries(false), e.grantEntries(true)...); len(r) != 0 {
		t.Errorf("grant entries after the window = %q, want none", r)
	}
}

// TestE2EApacheKnock: the same through Apache httpd's combined log.
func TestE2EApacheKnock(t *testing.T) {
	e := newE2E(t, "apache2")
	e.startApache()
	e.startListener()
	d := e.startDaemon(e.config("1m"))
	e.assertOpen()
	e.knockGranted(d, cliV4[0], cliV6[1])
	e.assertOpen(cliV4[0], cliV6[1])
}

// TestE2EKillAndRestart: after kill -9 the kernel still ends the window on
// time; a restart keeps a live grant with exactly one entry and removes dead
// and unknown entries.
func TestE2EKillAndRestart(t *testing.T) {
	forBackends(t, []string{"nginx"}, testKillAndRestart)
}

func testKillAndRestart(t *testing.T, e *e2e) {
	e.startNginx()
	e.startListener()
	cfgShort := e.config("8s")
	d := e.startDaemon(cfgShort)
	e.knock(cliV4[0], fullKnock...)
	short := untilOf(t, d.wait(t, "grant", cliV4[0]))
	d.kill9(t)

	// Dead webknock: the rule stays, but the kernel stops accepting at until.
	e.assertOpen(cliV4[0])
	waitUntil(t, short.Add(1500*time.Millisecond))
	// The kernel's timeout removes the element (ipset, nftables set).
	if r := e.grantEntries(false); len(r) != 0 {
		t.Fatalf("grant entries while webknock is dead = %q, want none", r)
	}
	e.assertOpen()

	// A long grant, then kill -9 again, plant a dead and an unknown rule.
	d = e.startDaemon(e.config("10m"))
	e.knockGranted(d, cliV4[1])
	d.wait(t, "log positions saved", "")
	d.kill9(t)
	e.plantStale()
	// A knock while webknock is down is read on restart and still granted.
	e.knock(cliV4[2], fullKnock...)

	d = e.startDaemon(e.config("10m"))
	d.wait(t, "grant", cliV4[2])
	rules := e.grantEntries(false)
	if len(rules) != 2 || !strings.Contains(strings.Join(rules, "\n"), cliV4[1]+"/32") || !strings.Contains(strings.Join(rules, "\n"), cliV4[2]+"/32") {
		t.Errorf("grant entries after restart = %q, want exactly the live grants of %s and %s", rules, cliV4[1], cliV4[2])
	}
	all := e.ours(false)
	if strings.Contains(all, staleSources[0]) || strings.Contains(all, staleSources[1]) || strings.Contains(all, cliV4[0]) {
		t.Errorf("dead or unknown entries survived the restart:\n%s", all)
	}
	e.assertSingle()
	e.assertOpen(cliV4[1], cliV4[2])

	// flush removes everything of ours.
	d.kill9(t)
	e.must("ip", "netns", "exec", e.srv, webknockBinary(t), "flush", "-c", e.config("10m"))
	e.assertNothingOurs("after flush")
}

// TestE2ERotation: knocks written across each kind of rotation all open the
// port: rename + create with nginx writing to the renamed file until it
// reopens, copytruncate, and delete + recreate.
func TestE2ERotation(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.startListener()
	d := e.startDaemon(e.configWeb("10m", "127.0.0.1:7080"))

	// rename + create: steps before, the rest after the rename but before
	// nginx reopens (so into the renamed file), another client after.
	e.knock(cliV4[0], "/k/a1", "/k/b2")
	if err := os.Rename(e.log, e.log+".1"); err != nil {
		t.Fatal(err)
	}
	write(t, e.log, "")
	e.knock(cliV4[0], "/k/c3", "/k/open")
	d.wait(t, "grant", cliV4[0])
	e.reopenNginx()
	e.knockGranted(d, cliV4[1])

	// copytruncate
	e.knock(cliV4[2], "/k/a1", "/k/b2")
	e.must("cp", e.log, e.log+".2")
	e.must("truncate", "-s", "0", e.log)
	e.knock(cliV4[2], "/k/c3", "/k/open")
	d.wait(t, "grant", cliV4[2])

	// delete + recreate
	e.knock(cliV4[3], "/k/a1")
	if err := os.Remove(e.log); err != nil {
		t.Fatal(err)
	}
	e.reopenNginx()
	e.knock(cliV4[3], "/k/b2", "/k/c3", "/k/open")
	d.wait(t, "grant", cliV4[3])

	e.assertOpen(cliV4[0], cliV4[1], cliV4[2], cliV4[3])

	// The daemon's metrics count what happened.
	metrics, err := e.in(e.srv, "curl", "-s", "--max-time", "5", "http://127.0.0.1:7080/metrics").Output()
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	for _, want := range []string{
		`webknock_events_total{event="grant"} 4`,
		`webknock_log_rotations_total{file="` + e.log + `"} 3`,
		`webknock_grants_active 4`,
		`webknock_following 1`,
		`webknock_lines_total{file="` + e.log + `",result="parsed"}`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if out, err := e.in(e.srv, "curl", "-s", "-f", "--max-time", "5", "http://127.0.0.1:7080/healthz").CombinedOutput(); err != nil {
		t.Errorf("GET /healthz: %v %s", err, out)
	}
}

// BenchmarkE2EKnockToOpen measures, through real nginx and each firewall
// backend, the time from the knock page's response to the grant in force
// (ms-median: the time of webknock's "grant" record, logged once the
// kernel holds the rule or element) and to port 22 accepting a connection
// from the knocking address (ms-connect-median: a client that retries,
// and sees a dropped SYN only at a timeout), each iteration from a new
// address; then the CPU the daemon uses while the log is idle.
//
//	sudo go test ./cmd/webknock -run '^$' -bench E2EKnockToOpen -benchtime 50x
func BenchmarkE2EKnockToOpen(b *testing.B) {
	for _, backend := range e2eBackends {
		b.Run(backend, func(b *testing.B) { benchKnockToOpen(b, backend, false) })
	}
}

// BenchmarkE2ESyslogKnockToOpen is BenchmarkE2EKnockToOpen with nginx
// sending its access log to webknock's unix datagram socket: no file.
//
//	sudo go test ./cmd/webknock -run '^$' -bench E2ESyslogKnockToOpen -benchtime 50x
func BenchmarkE2ESyslogKnockToOpen(b *testing.B) {
	for _, backend := range e2eBackends {
		b.Run(backend, func(b *testing.B) { benchKnockToOpen(b, backend, true) })
	}
}

func benchKnockToOpen(b *testing.B, backend string, viaSyslog bool) {
	e := newBackendE2E(b, backend, "nginx")
	e.startListener()
	cfg, accessLog := e.config("10m"), e.log
	if viaSyslog {
		sock := syslogSocketDir(b) + "/log.sock"
		cfg, accessLog = e.syslogConf([]string{"unixgram:" + sock}, ""), "syslog:server=unix:"+sock+",nohostname"
	}
	// Logging at the default level, as a daemon runs; first, for its
	// socket to be there when nginx sends.
	d := e.startDaemonCmd(e.in(e.srv, webknockBinary(b), "run", "-c", cfg, "--json-logs"))
	e.startNginxLogging(accessLog, "")
	var lat, conn []float64
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		src := fmt.Sprintf("192.0.2.%d", 100+i%150)
		if i >= 150 {
			b.Fatal("at most 150 iterations: each needs a new client address")
		}
		e.must("ip", "-n", e.cli, "addr", "add", src+"/24", "dev", "wkp"+e.id)
		b.StartTimer()
		connMs, resp := e.knockLatency(b, src, net.JoinHostPort(srvV4, "22"))
		conn = append(conn, connMs)
		lat = append(lat, msSince(b, d.wait(b, "grant", src), resp))
	}
	b.StopTimer()
	slices.Sort(lat)
	slices.Sort(conn)
	b.ReportMetric(lat[len(lat)/2], "ms-median")
	b.ReportMetric(lat[len(lat)-1], "ms-worst")
	b.ReportMetric(conn[len(conn)/2], "ms-connect-median")
	self0, child0 := cpuTicks(b, d.cmd.Process.Pid)
	select {
	case <-time.After(30 * time.Second):
	case <-b.Context().Done():
	}
	self1, child1 := cpuTicks(b, d.cmd.Process.Pid)
	// Clock ticks are 10 ms: ticks in 30 s are thirtieths of a percent of a CPU.
	b.ReportMetric(float64(self1-self0)/30, "idle-cpu-%-webknock")
	b.ReportMetric(float64(child1-child0)/30, "idle-cpu-%-children")
}

// knockLatency knocks from src (in the client namespace) on the web server
// and times from the knock page's response until dst accepts a connection.
// It returns that time in milliseconds, and the response's wall-clock
// time in unix nanoseconds.
func (e *e2e) knockLatency(b *testing.B, src, dst string) (connectMs float64, resp int64) {
	b.Helper()
	cmd := e.in(e.cli, os.Args[0], src+" "+srvV4+" "+dst)
	cmd.Env = append(os.Environ(), helperEnv+"=knocklat")
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("knock from %s: %v", src, err)
	}
	f := strings.Fields(string(out))
	us, _ := strconv.ParseFloat(f[0], 64)
	resp, _ = strconv.ParseInt(f[1], 10, 64)
	return us / 1000, resp
}

// msSince is the time from resp (unix nanoseconds) to the log record rec,
// in milliseconds.
func msSince(b *testing.B, rec map[string]any, resp int64) float64 {
	b.Helper()
	at, err := time.Parse(time.RFC3339Nano, rec["time"].(string))
	if err != nil {
		b.Fatalf("log record %v: %v", rec, err)
	}
	return float64(at.UnixNano()-resp) / 1e6
}

// cpuTicks returns the user and system CPU time of a process, and that of
// the children it waited for (the iptables it ran), in clock ticks.
func cpuTicks(tb testing.TB, pid int) (self, children int) {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: utime, stime,
	// cutime, cstime are fields 14 to 17 of the line.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	n := make([]int, 4)
	for i, v := range f[11:15] {
		n[i], _ = strconv.Atoi(v)
	}
	return n[0] + n[1], n[2] + n[3]
}

// hostileRequests are requests a client can make to forge a knock: knock
// paths and fake log records in every field it controls, spoofed
// X-Forwarded-For, near-miss paths, other methods.
var hostileRequests = [][]string{
	{"-A", `x" 404 0 "-" "-" 192.0.2.16 - - [22/Nov/2026:19:00:00 +0000] "GET /k/a1 HTTP/1.1" 404 0 "-" "-`, "/"},
	{"-e", `http://x/k/a1 /k/b2 /k/c3 /k/open`, "/k/other"},
	{"-H", "X-Forwarded-For: 192.0.2.16", "/k/a1"},
	{"-u", `u [22/Nov/2026:19:00:00 +0000] "GET /k/b2 HTTP/1.1" 404 0 "-" "-" 192.0.2.16 - -:pw`, "/k/x"},
	{"-X", "POST", "/k/c3"},
	{"-X", "OPTIONS", "/k/open"},
	{"--path-as-is", "", "/k/./a1"},
	{"--path-as-is", "", "/k/../k/b2"},
	{"-H", "X-Real-IP: 192.0.2.16", "/k/%63%33"},
	{"-H", "Host: 192.0.2.16 - - [22/Nov/2026:19:00:00 +0000]", "/K/OPEN"},
	{"-A", `\" \x22 \\ "GET /k/open HTTP/1.1" 404`, "/k/open/"},
	{"-e", "/k/open", "/x/k/open"},
}

// hostileKnock sends every hostile request from src, in knock order.
func (e *e2e) hostileKnock(src string) {
	e.t.Helper()
	for _, h := range hostileRequests {
		args := []string{"-s", "-o", "/dev/null", "--max-time", "5", "--interface", src}
		if h[1] != "" {
			args = append(args, h[0], h[1])
		} else {
			args = append(args, h[0])
		}
		args = append(args, "http://"+srvV4+h[2])
		if out, err := e.in(e.cli, "curl", args...).CombinedOutput(); err != nil {
			e.t.Fatalf("curl %q: %v\n%s", args, err, out)
		}
	}
}

// TestE2EHostileRequests sends forged knocks through real nginx and Apache
// httpd, so their own escaping writes the log: nobody is granted, not the
// sender and not the address the forgeries name. A genuine knock afterwards
// is granted, which also shows every earlier line was read.
func TestE2EHostileRequests(t *testing.T) {
	for _, server := range []string{"nginx", "apache2"} {
		t.Run(server, func(t *testing.T) {
			e := newE2E(t, server)
			if server == "nginx" {
				e.startNginx()
			} else {
				e.startApache()
			}
			e.startListener()
			d := e.startDaemon(e.config("10m"))
			for i := 0; i < 3; i++ {
				e.hostileKnock(cliV4[4])
			}
			e.knock(cliV4[0], fullKnock...)
			for {
				rec, ok := <-d.records
				if !ok {
					t.Fatal("webknock exited")
				}
				if rec["msg"] == "grant" {
					if rec["ip"] != cliV4[0] {
						t.Fatalf("forged knock granted: %v", rec)
					}
					break
				}
			}
			e.assertOpen(cliV4[0])
			if e.connects(cliV4[5]) {
				t.Errorf("the address named by the forgeries can connect")
			}
			// The recorded log replays the same: one grant, the genuine one.
			out, errOut, code := runCmd(t, "", "replay", "--json", "-c", e.config("10m"), e.log)
			if code != 0 || strings.Count(out, `"grant"`) != 1 || !strings.Contains(out, `"grant","ip":"`+cliV4[0]+`"`) {
				t.Errorf("replay of the %s log: exit %d\n%s\n%s", server, code, out, errOut)
			}
			if t.Failed() {
				raw, _ := os.ReadFile(e.log)
				t.Logf("%s wrote:\n%s", server, raw)
			}
		})
	}
}

// TestE2ETenKills kills webknock with SIGKILL ten times within ten seconds,
// at moments spread over knocks being read, granted and written to state,
// restarting it each time: no rule is ever duplicated, the jump and the
// protect rules stay single, and every knock that was granted still works.
func TestE2ETenKills(t *testing.T) {
	forBackends(t, []string{"nginx"}, testTenKills)
}

func testTenKills(t *testing.T, e *e2e) {
	e.startNginx()
	e.startListener()
	cfg := e.config("10m")
	d := e.startDaemon(cfg)
	start := time.Now()
	for i := 0; i < 10; i++ {
		victim := d
		killer := time.AfterFunc(time.Duration(i*13%60)*time.Millisecond, func() { victim.cmd.Process.Kill() })
		e.knock(cliV4[i%4], fullKnock...)
		killer.Stop()
		victim.kill9(t)
		d = e.startDaemon(cfg)
	}
	t.Logf("10 kills and restarts in %v", time.Since(start).Round(time.Millisecond))
	// Whatever was granted is granted once; knock again so all four are.
	for _, a := range cliV4[:4] {
		e.knock(a, fullKnock...)
	}
	granted := map[any]bool{}
	for len(granted) < 4 {
		granted[d.wait(t, "grant", "")["ip"]] = true
	}
	e.assertSingle()
	e.assertOpen(cliV4[:4]...)
}

// TestE2ERepair: another tool flushing our chain, deleting our jump or
// deleting the chain (a firewall reload) is repaired by the daemon at
// once, told by the nftables monitor (of iptables-nft's table filter too),
// live grants included; a flushed ipset, which tells no one, by the check.
func TestE2ERepair(t *testing.T) {
	forBackends(t, []string{"nginx"}, testRepair)
}

func testRepair(t *testing.T, e *e2e) {
	e.startNginx()
	e.startListener()
	d := e.startDaemon(e.writeConfig(e2eConf{window: "10m", fwMore: "  check_interval: 5s\n"}))
	e.knockGranted(d, cliV4[0])
	nftIPT := strings.Contains(e.must("ip", "netns", "exec", e.srv, "iptables", "-V"), "nf_tables")
	for _, damage := range e.damages() {
		damage.do()
		start := time.Now()
		rec := d.wait(t, "firewall repaired", "")
		t.Logf("%s: repaired after %v (%v)", damage.name, time.Since(start).Round(time.Millisecond), rec["by"])
		if hinted := !damage.unhinted && (e.backend == "nftables" || nftIPT); hinted && rec["by"] == nil {
			t.Errorf("%s: repaired by the check, not at once by the monitor's hint: %v", damage.name, rec)
		}
		e.assertOpen(cliV4[0])
		if r := e.grantEntries(false); len(r) != 1 {
			t.Errorf("after %s: grant entries %q, want one", damage.name, r)
		}
	}
}

// TestE2EStatusAndRevoke: `webknock status` lists a live grant through the
// daemon's admin socket, `webknock revoke` ends it at once, and the port is
// closed again; over TCP a revoke needs the bearer token.
func TestE2EStatusAndRevoke(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.startListener()
	write(t, filepath.Join(e.dir, "token"), "0123456789abcdef0123456789abcdef\n")
	cfg := e.configWeb("10m", "127.0.0.1:7080")
	d := e.startDaemon(cfg)
	e.knockGranted(d, cliV4[0])
	e.assertOpen(cliV4[0])

	wk := func(args ...string) (string, error) {
		out, err := e.in(e.srv, webknockBinary(t), args...).CombinedOutput()
		return string(out), err
	}
	out, err := wk("status", "-c", cfg)
	if err != nil || !strings.Contains(out, cliV4[0]) || !strings.Contains(out, "22/tcp") {
		t.Fatalf("webknock status: %v\n%s", err, out)
	}
	curl := func(token, ip string) string {
		out, _ := e.in(e.srv, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE",
			"-H", "Authorization: Bearer "+token, "http://127.0.0.1:7080/api/grants/"+ip).Output()
		return string(out)
	}
	if code := curl("not-the-token-not-the-token", cliV4[0]); code != "401" {
		t.Fatalf("revoke over TCP with a wrong token: HTTP %s, want 401", code)
	}
	e.assertOpen(cliV4[0])
	if out, err := wk("revoke", "-c", cfg, cliV4[0]); err != nil {
		t.Fatalf("webknock revoke: %v\n%s", err, out)
	}
	d.wait(t, "grant removed", cliV4[0])
	e.assertOpen()
	if out, _ := wk("status", "-c", cfg); !strings.Contains(out, "no active grants") {
		t.Errorf("status after revoke:\n%s", out)
	}
	e.knockGranted(d, cliV4[1])
	if code := curl("0123456789abcdef0123456789abcdef", cliV4[1]); code != "204" && code != "200" {
		t.Fatalf("revoke over TCP with the token: HTTP %s", code)
	}
	d.wait(t, "grant removed", cliV4[1])
	e.assertOpen()
}

// chromium runs headless Chromium in namespace ns and returns what it
// printed (--dump-dom) or wrote.
func (e *e2e) chromium(ns string, args ...string) string {
	e.t.Helper()
	profile, err := os.MkdirTemp(e.dir, "chromium-")
	if err != nil {
		e.t.Fatal(err)
	}
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--user-data-dir=" + profile}
	cmd := e.in(ns, "chromium", append(base, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("chromium: %v", err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			e.t.Fatalf("chromium %q: %v\n%s", args, err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		e.t.Fatalf("chromium %q did not finish within 60s\n%s", args, stderr.String())
	}
	return stdout.String()
}

// startSquid runs squid in the client namespace as the corporate proxy on
// 127.0.0.1:3128, going out from proxyAddr, and returns its access log.
func (e *e2e) startSquid(proxyAddr string) string {
	e.t.Helper()
	dir := filepath.Join(e.dir, "squid")
	e.must("mkdir", "-p", dir)
	e.must("chown", "proxy:proxy", dir)
	conf := filepath.Join(e.dir, "squid.conf")
	write(e.t, conf, fmt.Sprintf(`http_port 127.0.0.1:3128
acl localnet src 127.0.0.0/8
http_access allow localnet
http_access deny all
tcp_outgoing_address %[2]s
cache_effective_user proxy
pid_filename %[1]s/squid.pid
access_log stdio:%[1]s/access.log
cache_log %[1]s/cache.log
cache_store_log none
coredump_dir %[1]s
cache_mem 8 MB
# Like many corporate proxies, cache error answers too: only the knock
# paths' no-store keeps a second knock from being answered here.
negative_ttl 5 minutes
shutdown_lifetime 1 second
`, dir, proxyAddr))
	e.background(e.in(e.cli, "squid", "-N", "-f", conf))
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if e.in(e.cli, "curl", "-s", "-o", "/dev/null", "--max-time", "2", "--proxy", "http://127.0.0.1:3128", "http://"+srvV4+"/squid-ready").Run() == nil {
			return filepath.Join(dir, "access.log")
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-e.t.Context().Done():
		}
	}
	e.t.Fatal("squid did not answer within 20s")
	return ""
}

// TestE2EBrowserThroughProxy is the user's story: a browser that may only
// use the corporate proxy opens the knock URLs; the port opens for the
// proxy's address. A second knock through the caching proxy reaches the log
// too, because the shipped nginx snippet marks knock answers no-store. Then
// the admin's status page, rendered by Chromium, shows the grant.
func TestE2EBrowserThroughProxy(t *testing.T) {
	e := newE2E(t, "nginx", "squid", "chromium")
	e.startNginxSnippet()
	e.startListener()
	write(t, filepath.Join(e.dir, "token"), "0123456789abcdef0123456789abcdef\n")
	d := e.startDaemon(e.configWeb("10m", "127.0.0.1:7080"))
	proxy := cliV4[2]
	e.startSquid(proxy)
	e.assertOpen()

	browse := func() {
		for _, p := range fullKnock {
			e.chromium(e.cli, "--proxy-server=http://127.0.0.1:3128", "--dump-dom", "http://"+srvV4+p)
		}
	}
	browse()
	first := untilOf(t, d.wait(t, "grant", proxy))
	e.assertOpen(proxy)

	// The same URLs again, through the same caching proxy: they reach nginx.
	browse()
	second := untilOf(t, d.wait(t, "grant", proxy))
	if !second.After(first) && !second.Equal(first) {
		t.Errorf("second grant until %v, before the first %v", second, first)
	}
	raw, _ := os.ReadFile(e.log)
	for _, p := range fullKnock {
		if n := strings.Count(string(raw), proxy+` - - `); n < 8 || strings.Count(string(raw), "GET "+p+" ") != 2 {
			t.Errorf("nginx logged %q %d times (want 2; %d lines from the proxy):\n%s", p, strings.Count(string(raw), "GET "+p+" "), n, raw)
		}
	}

	dom := e.chromium(e.srv, "--dump-dom", "http://127.0.0.1:7080/")
	if !strings.Contains(dom, proxy) || !strings.Contains(dom, "ssh") {
		t.Errorf("the status page does not show the grant of %s:\n%s", proxy, dom)
	}
	shot := filepath.Join(os.TempDir(), "webknock-artifacts", "status-page.png")
	e.must("mkdir", "-p", filepath.Dir(shot))
	e.chromium(e.srv, "--screenshot="+shot, "--window-size=420,900", "http://127.0.0.1:7080/")
	if fi, err := os.Stat(shot); err != nil || fi.Size() == 0 {
		t.Errorf("no screenshot of the status page: %v", err)
	}
	t.Logf("status page screenshot: %s", shot)
}
