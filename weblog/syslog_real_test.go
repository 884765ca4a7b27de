package weblog

// The syslog input against what real nginx and util-linux logger send.

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/webknock/webknock/internal/realtest"
)

var syslogCapture = flag.Bool("syslog-capture", false, "rewrite testdata/syslog/captured.txt with what nginx and logger send now")

// nginxBin is nginx on PATH, or where Debian puts it (not on a user's PATH).
func nginxBin() string {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	return "/usr/sbin/nginx"
}

// runNginx runs nginx in the foreground with the access_log directives
// logs, answering 404 to everything on a free loopback port; it returns
// the base URL.
func runNginx(t *testing.T, logs string) string {
	t.Helper()
	bin := nginxBin()
	realtest.RequirePrograms(t, "this nginx test", bin)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	conf := filepath.Join(dir, "nginx.conf")
	text := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 16; }
http {
  %[2]s
  client_body_temp_path %[1]s; proxy_temp_path %[1]s; fastcgi_temp_path %[1]s;
  uwsgi_temp_path %[1]s; scgi_temp_path %[1]s;
  server { listen %[3]s; location / { return 404; } }
}
`, dir, logs, addr)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	// nginx says nothing when it listens: try to connect until it does.
	deadline := time.After(waitLimit)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close() // a connection without a request is not logged
			return "http://" + addr
		}
		select {
		case err := <-exited:
			errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited: %v\n%s%s", err, stderr.Bytes(), errLog)
		case <-deadline:
			t.Fatal("nginx did not listen")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// nginxRequests are requests whose log lines test escaping and length.
var nginxRequests = []struct{ path, agent string }{
	{"/k/7f3a9c", "curl/7.88.1"},
	{"/k/91c2e0?a=b%0a&c=%22", `Mozilla/5.0 "quoted" \back\slash ünï`},
	{"/x", "ctl\x01\x7fchars"},
	{"/long/" + strings.Repeat("a", 3000), "long"},
}

// getAll sends nginxRequests, raw: net/http refuses control characters.
func getAll(t *testing.T, base string) {
	t.Helper()
	for _, r := range nginxRequests {
		c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(waitLimit))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n", r.path, r.agent)
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

// TestSyslogRealNginx: what nginx sends over a unix socket (nohostname) and
// UDP becomes exactly the lines it writes to its access log file.
func TestSyslogRealNginx(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "log.sock")
	unixListen, udpListen := "unixgram:"+sock, "udp:127.0.0.1:0"
	s := listenSyslog(t, SyslogOptions{Listen: []string{unixListen, udpListen}, AllowUIDs: []uint32{uint32(os.Getuid())}, SocketGroup: -1})
	file := filepath.Join(dir, "access.log")
	base := runNginx(t, fmt.Sprintf("access_log %s combined;\n  access_log syslog:server=unix:%s,nohostname combined;\n  access_log syslog:server=%s,tag=web_1 combined;",
		file, sock, s.Addr(udpListen)))
	getAll(t, base)
	n := len(nginxRequests)
	byListen := map[string][]string{}
	deadline := time.After(waitLimit)
	for len(byListen[unixListen])+len(byListen[udpListen]) < 2*n {
		select {
		case b := <-s.Batches():
			for l := range b.Lines() {
				byListen[strings.TrimPrefix(b.Source, "syslog:")] = append(byListen[strings.TrimPrefix(b.Source, "syslog:")], string(l))
			}
			s.Ack(b)
		case <-deadline:
			t.Fatalf("lines %q, want %d from each listener", byListen, n)
		}
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	for _, l := range []string{unixListen, udpListen} {
		if !equalStrings(byListen[l], want) {
			t.Errorf("%s: lines\n%q\nwant those of the access log\n%q", l, byListen[l], want)
		}
	}
	p, err := NewParser(Combined, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range byListen[unixListen] {
		// The client is loopback, refused as such: the line is in the format.
		if _, err := p.Parse([]byte(l)); ReasonOf(err).Mismatch() {
			t.Errorf("Parse(%q): %v", l, err)
		}
	}
}

// loggerRuns are logger invocations (after -u SOCKET) and their stdin.
var loggerRuns = []struct {
	name  string
	args  []string
	stdin string
}{
	{"default", []string{"--size", "16384", nginxLine}, ""},
	{"rfc3164", []string{"--rfc3164", nginxLine}, ""},
	{"rfc5424", []string{"--rfc5424", nginxLine}, ""},
	{"rfc5424 sd", []string{"--rfc5424", "--sd-id", "zoo@123", "--sd-param", `tiger="hungry"`, nginxLine}, ""},
	{"tag pid", []string{"-t", "apache", "-i", nginxLine}, ""},
	{"stdin lines", []string{"--size", "16384"}, nginxLine + "\n" + nginxLine + "\n"},
	{"long", []string{"--size", "16384", strings.Repeat("L", 10000)}, ""},
}

// TestSyslogRealLogger: Apache's way, CustomLog "|logger -u SOCKET".
func TestSyslogRealLogger(t *testing.T) {
	realtest.RequirePrograms(t, "this logger test", "logger")
	sock := filepath.Join(t.TempDir(), "log.sock")
	s := listenSyslog(t, SyslogOptions{Listen: []string{"unixgram:" + sock}, AllowUIDs: []uint32{uint32(os.Getuid())}, SocketGroup: -1})
	var want []string
	for _, r := range loggerRuns {
		cmd := exec.Command("logger", append([]string{"-u", sock}, r.args...)...)
		cmd.Stdin = strings.NewReader(r.stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("logger %q: %v: %s", r.args, err, out)
		}
		if r.stdin != "" {
			want = append(want, strings.Split(strings.TrimSuffix(r.stdin, "\n"), "\n")...)
		} else {
			want = append(want, r.args[len(r.args)-1])
		}
	}
	if got := syslogLines(t, s, len(want)); !equalStrings(got, want) {
		t.Errorf("lines\n%q\nwant\n%q", got, want)
	}
}

// TestSyslogCapture rewrites testdata/syslog/captured.txt, with
// -syslog-capture, from what nginx and logger send to a unix socket.
func TestSyslogCapture(t *testing.T) {
	if !*syslogCapture {
		t.Skip("skipping: -syslog-capture rewrites testdata/syslog/captured.txt")
	}
	sock := filepath.Join(t.TempDir(), "capture.sock")
	pc, err := net.ListenPacket("unixgram", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	// Read at once: nginx drops what does not fit in the socket's queue
	// (net.unix.max_dgram_qlen datagrams).
	datagrams := make(chan []byte, 100)
	go func() {
		buf := make([]byte, 1<<16)
		for {
			k, _, err := pc.ReadFrom(buf)
			if err != nil {
				close(datagrams)
				return
			}
			datagrams <- bytes.Clone(buf[:k])
		}
	}()
	read := func(n int) [][]byte {
		var out [][]byte
		deadline := time.After(waitLimit)
		for len(out) < n {
			select {
			case m := <-datagrams:
				out = append(out, m)
			case <-deadline:
				t.Fatalf("got %d of %d datagrams", len(out), n)
			}
		}
		return out
	}
	var b strings.Builder
	version := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	fmt.Fprintf(&b, "# %s; %s\n", version(nginxBin(), "-v"), version("logger", "--version"))
	b.WriteString("# go test ./weblog -run TestSyslogCapture -syslog-capture (see README)\n")
	nginxLogs := []struct{ name, directive string }{
		{"nginx nohostname", "syslog:server=unix:" + sock + ",nohostname"},
		{"nginx hostname", "syslog:server=unix:" + sock},
		{"nginx tag facility", "syslog:server=unix:" + sock + ",tag=web_1,facility=local7,severity=info"},
	}
	var directives []string
	for _, l := range nginxLogs {
		directives = append(directives, "access_log "+l.directive+" combined;")
	}
	base := runNginx(t, strings.Join(directives, "\n  "))
	getAll(t, base)
	got := read(len(nginxRequests) * len(nginxLogs))
	for i, m := range got {
		fmt.Fprintf(&b, "%s %d\t%s\n", nginxLogs[i%len(nginxLogs)].name, i/len(nginxLogs), strconv.Quote(string(m)))
	}
	runs := append(loggerRuns, struct {
		name  string
		args  []string
		stdin string
	}{"octet-count", []string{"--octet-count", nginxLine}, ""})
	for _, r := range runs {
		cmd := exec.Command("logger", append([]string{"-u", sock}, r.args...)...)
		cmd.Stdin = strings.NewReader(r.stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("logger %q: %v: %s", r.args, err, out)
		}
		n := max(1, strings.Count(r.stdin, "\n"))
		for i, m := range read(n) {
			fmt.Fprintf(&b, "logger %s %d\t%s\n", r.name, i, strconv.Quote(string(m)))
		}
	}
	if err := os.WriteFile("testdata/syslog/captured.txt", []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
