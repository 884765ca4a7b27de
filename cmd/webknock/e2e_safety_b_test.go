package main

// End-to-end tests of webknock's safety by default, part B: a web listener
// that cannot be had or is flooded, inputs that deliver nothing usable,
// reloads, revokes that must stick, rotated files matched by a glob, and an
// iptables that hangs. Same world as e2e_test.go: real nginx, iptables and
// ip6tables in namespaces the test creates.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Sequences of the configurations below.
const (
	seqSSHB = `  - name: ssh
    steps: [/k/a1, /k/b2, /k/c3]
    knock_page: /k/open
    timeout: 30s
    window: 10m
    ports: [22/tcp]
`
	seqAdmB = `  - name: adm
    steps: [/k/x1, /k/y2]
    knock_page: /k/adm
    timeout: 30s
    window: 10m
    ports: [22/tcp]
`
)

var admKnockB = []string{"/k/x1", "/k/y2", "/k/adm"}

func (e *e2e) tokenFileB() string { return filepath.Join(e.dir, "token") }

// writeTokenB writes the bearer token file, private as an admin keeps it.
func (e *e2e) writeTokenB(token string) {
	e.t.Helper()
	if err := os.WriteFile(e.tokenFileB(), []byte(token+"\n"), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// stopB stops the daemon with SIGTERM and reads its log to the end.
func (d *daemonProc) stopB() {
	stop(d.cmd)
	for range d.records {
	}
}

// hupB makes the daemon reload and waits until it has.
func (d *daemonProc) hupB(t testing.TB) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP: %v", err)
	}
	d.wait(t, "configuration reloaded", "")
}

// recordsB returns every record the daemon has logged so far.
func (d *daemonProc) recordsB() []map[string]any {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(d.all.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil {
			out = append(out, rec)
		}
	}
	return out
}

// nextB returns the next record that match accepts, or nil if none comes
// within timeout. A record that forbid accepts first fails the test.
func (d *daemonProc) nextB(t testing.TB, timeout time.Duration, match, forbid func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case rec, ok := <-d.records:
			if !ok {
				t.Fatal("webknock exited while the test waited for a log record")
			}
			if forbid != nil && forbid(rec) {
				t.Fatalf("unexpected log record: %v", rec)
			}
			if match(rec) {
				return rec
			}
		case <-deadline:
			return nil
		case <-t.Context().Done():
			t.Fatal("test ended")
		}
	}
}

// seenB returns the first record logged so far, or within timeout, that
// match accepts; it fails the test if there is none.
func (d *daemonProc) seenB(t testing.TB, what string, timeout time.Duration, match func(map[string]any) bool) map[string]any {
	t.Helper()
	for _, rec := range d.recordsB() {
		if match(rec) {
			return rec
		}
	}
	if rec := d.nextB(t, timeout, match, nil); rec != nil {
		return rec
	}
	t.Fatalf("no log record %s within %v", what, timeout)
	return nil
}

func strB(rec map[string]any, key string) string { s, _ := rec[key].(string); return s }

// mentionsB tells whether any value of rec contains s.
func mentionsB(rec map[string]any, s string) bool {
	for _, v := range rec {
		if vs, ok := v.(string); ok && strings.Contains(vs, s) {
			return true
		}
	}
	return false
}

// httpB makes a request with curl in the server namespace and returns the
// status ("000" when nothing answered) and the body.
func (e *e2e) httpB(method, url, token string) (code, body string) {
	e.t.Helper()
	args := []string{"-s", "--max-time", "5", "-X", method, "-w", "\n%{http_code}"}
	if token != "" {
		args = append(args, "-H", "Authorization: Bearer "+token)
	}
	out, _ := e.in(e.srv, "curl", append(args, url)...).Output()
	s := string(out)
	i := strings.LastIndexByte(s, '\n')
	if i < 0 {
		return "000", s
	}
	return s[i+1:], s[:i]
}

// pollB calls cond until it holds, failing the test after timeout; for
// conditions that no log record announces.
func pollB(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-t.Context().Done():
			t.Fatal("test ended")
		}
	}
}

// addClientsB adds n more IPv4 addresses to the client namespace.
func (e *e2e) addClientsB(first, n int) []string {
	e.t.Helper()
	var out []string
	for i := range n {
		a := fmt.Sprintf("192.0.2.%d", first+i)
		e.must("ip", "-n", e.cli, "addr", "add", a+"/24", "dev", "wkp"+e.id)
		out = append(out, a)
	}
	return out
}

// holdEnvB makes the test binary hold idle connections (see holdB).
const holdEnvB = "WK_E2E_HOLD_B"

func init() {
	if spec := os.Getenv(holdEnvB); spec != "" {
		os.Exit(holdB(spec))
	}
}

// holdB opens the connections spec names ("DST SRC=N SRC=N ..."), sends
// nothing on them, prints how many it made, and holds them until its
// standard input ends.
func holdB(spec string) int {
	f := strings.Fields(spec)
	var conns []net.Conn
	for _, s := range f[1:] {
		src, n, _ := strings.Cut(s, "=")
		count, err := strconv.Atoi(n)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		for range count {
			c, err := d.Dial("tcp", f[0])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				continue
			}
			conns = append(conns, c)
		}
	}
	fmt.Println(len(conns))
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// holdConnsB opens, from inside the server namespace and in order, the
// connections to dst that plan names ("SRC=N": N from SRC), sends nothing
// on them, and keeps them open until the test ends. It returns how many it
// made.
func (e *e2e) holdConnsB(dst string, plan []string) int {
	e.t.Helper()
	spec := append([]string{dst}, plan...)
	cmd := e.in(e.srv, os.Args[0])
	cmd.Env = append(os.Environ(), holdEnvB+"="+strings.Join(spec, " "))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	e.background(cmd)
	e.t.Cleanup(func() { stdin.Close() })
	line, err := bufio.NewReader(out).ReadString('\n')
	n, cerr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || cerr != nil {
		e.t.Fatalf("connection holder: %q %v\n%s", line, err, stderr.String())
	}
	return n
}

// TestE2ESafetyB_WebListenTaken: with web.listen taken by another process,
// `webknock run` exits non-zero naming the address, and has not touched
// the firewall: no chain, no jump, IPv4 or IPv6.
func TestE2ESafetyB_WebListenTaken(t *testing.T) {
	e := newE2E(t)
	squatter := e.in(e.srv, os.Args[0], "127.0.0.1:7080")
	squatter.Env = append(os.Environ(), helperEnv+"=listen")
	out, err := squatter.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	e.background(squatter)
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("squatter did not start: %q %v", line, err)
	}
	e.writeTokenB("0123456789abcdef0123456789abcdef")
	cfg := e.writeConfig(e2eConf{listen: "127.0.0.1:7080"})

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", e.srv, webknockBinary(t), "run", "-c", cfg)
	cmd.WaitDelay = time.Second
	outb, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("webknock run with web.listen taken did not exit within 20s; it ran without its API:\n%s", outb)
	case !errors.As(err, &ee) || ee.ExitCode() == 0:
		t.Fatalf("webknock run with web.listen taken: %v, want a non-zero exit\n%s", err, outb)
	case !strings.Contains(string(outb), "127.0.0.1:7080"):
		t.Errorf("webknock run's error does not name the address 127.0.0.1:7080:\n%s", outb)
	}
	t.Logf("webknock run: exit %d: %s", ee.ExitCode(), strings.TrimSpace(string(outb)))
	e.assertNoChain("was changed before webknock gave up", "iptables", "ip6tables")
}

// TestE2ESafetyB_IdleConnections: 400 idle connections to the status port
// (many from one address, the rest from many) do not stop the daemon: a
// knock opens the port at once, and /healthz answers once the idle ones time
// out. The daemon runs with 320 file descriptors, so that 400 connections
// are to it what thousands are to a daemon with the usual limit: without the
// connection limits they would leave none for iptables.
func TestE2ESafetyB_IdleConnections(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.startListener()
	e.writeTokenB("0123456789abcdef0123456789abcdef")
	cfg := e.writeConfig(e2eConf{listen: "127.0.0.1:7080"})
	cmd := e.in(e.srv, "sh", "-c", `ulimit -n 320 && exec "$@"`, "sh", webknockBinary(t), "run", "-c", cfg, "--json-logs", "--debug")
	d := e.startDaemonCmd(cmd)
	if code, body := e.httpB("GET", "http://127.0.0.1:7080/healthz", ""); code != "200" {
		t.Fatalf("GET /healthz before the flood: %s %s", code, body)
	}

	// First 40 from one address (over the per-address limit), then 10
	// from each of 36 more (over the total).
	count := []string{"127.0.0.2=40"}
	for i := 1; i <= 36; i++ {
		count = append(count, fmt.Sprintf("127.0.1.%d=10", i))
	}
	held := e.holdConnsB("127.0.0.1:7080", count)
	t.Logf("%d idle connections to the status port", held)
	if held < 300 {
		t.Fatalf("only %d of 400 connections made", held)
	}

	e.knockGranted(d, cliV4[0])
	e.assertOpen(cliV4[0])

	pollB(t, "/healthz to answer 200 during the flood", 15*time.Second, func() bool {
		code, _ := e.httpB("GET", "http://127.0.0.1:7080/healthz", "")
		return code == "200"
	})
	_, metrics := e.httpB("GET", "http://127.0.0.1:7080/metrics", "")
	for _, limit := range []string{"total", "per_address"} {
		if !strings.Contains(metrics, `webknock_web_connections_refused_total{limit="`+limit+`"}`) ||
			strings.Contains(metrics, `webknock_web_connections_refused_total{limit="`+limit+`"} 0`+"\n") {
			t.Errorf("no connection refused over the %s limit:\n%s", limit, grepB(metrics, "webknock_web_connections"))
		}
	}
	e.knockGranted(d, cliV4[1])
	e.assertOpen(cliV4[0], cliV4[1])
}

// TestE2ESafetyB_WrongFormat: nginx writes combined while the
// configuration says vhost_combined. After 25 requests the daemon warns,
// naming the file, the format and a sample line, and /healthz answers 503
// with that reason.
func TestE2ESafetyB_WrongFormat(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.writeTokenB("0123456789abcdef0123456789abcdef")
	d := e.startDaemon(e.writeConfig(e2eConf{format: "vhost_combined", listen: "127.0.0.1:7080"}))
	paths := make([]string, 25)
	for i := range paths {
		paths[i] = fmt.Sprintf("/page-%d", i)
	}
	e.knock(cliV4[0], paths...)
	rec := d.seenB(t, "WARN naming the file, the format and a sample line", 10*time.Second, func(rec map[string]any) bool {
		return rec["level"] == "WARN" && mentionsB(rec, e.log) && mentionsB(rec, "vhost_combined") && mentionsB(rec, "GET /page-")
	})
	t.Logf("warning: %v", rec)
	code, body := e.httpB("GET", "http://127.0.0.1:7080/healthz", "")
	if code != "503" || !strings.Contains(body, e.log) || !strings.Contains(body, "vhost_combined") {
		t.Errorf("GET /healthz = %s %q; want 503 naming %s and vhost_combined", code, body, e.log)
	}
}

// TestE2ESafetyB_MistypedPath: log.paths names DIR/acess.log while nginx
// writes DIR/access.log: the daemon logs an ERROR naming the missing file
// and /healthz answers 503 naming it, also after nginx has written lines.
func TestE2ESafetyB_MistypedPath(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.writeTokenB("0123456789abcdef0123456789abcdef")
	typo := filepath.Join(e.dir, "acess.log")
	d := e.startDaemon(e.writeConfig(e2eConf{paths: []string{typo}, listen: "127.0.0.1:7080"}))
	rec := d.seenB(t, "ERROR naming "+typo, 10*time.Second, func(rec map[string]any) bool {
		return rec["level"] == "ERROR" && mentionsB(rec, typo)
	})
	t.Logf("error: %v", rec)
	e.knock(cliV4[0], fullKnock...)
	code, body := e.httpB("GET", "http://127.0.0.1:7080/healthz", "")
	if code != "503" || !strings.Contains(body, typo) {
		t.Errorf("GET /healthz = %s %q; want 503 naming %s", code, body, typo)
	}
}

// TestE2ESafetyB_ReloadWeb: SIGHUP with a new web.listen serves on the new
// port and no longer on the old one; a new token file content replaces the
// old token for DELETE /api/grants/{ip} over TCP.
func TestE2ESafetyB_ReloadWeb(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.startListener()
	const oldToken, newToken = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	e.writeTokenB(oldToken)
	d := e.startDaemon(e.writeConfig(e2eConf{listen: "127.0.0.1:7080"}))
	if code, body := e.httpB("GET", "http://127.0.0.1:7080/healthz", ""); code != "200" {
		t.Fatalf("GET /healthz on the first port: %s %s", code, body)
	}

	e.writeConfig(e2eConf{listen: "127.0.0.1:7081"})
	e.writeTokenB(newToken)
	d.hupB(t)
	if code, body := e.httpB("GET", "http://127.0.0.1:7081/healthz", ""); code != "200" {
		t.Errorf("GET /healthz on the new port after the reload: %s %s", code, body)
	}
	if code, _ := e.httpB("GET", "http://127.0.0.1:7080/healthz", ""); code != "000" {
		t.Errorf("the old port still answers after the reload: HTTP %s", code)
	}

	e.knockGranted(d, cliV4[0])
	url := "http://127.0.0.1:7081/api/grants/" + cliV4[0]
	if code, body := e.httpB("DELETE", url, oldToken); code != "401" {
		t.Errorf("DELETE with the old token after the reload: %s %s; want 401", code, body)
	}
	e.assertOpen(cliV4[0])
	if code, body := e.httpB("DELETE", url, newToken); code != "200" && code != "204" {
		t.Fatalf("DELETE with the new token: %s %s", code, body)
	}
	d.wait(t, "grant removed", cliV4[0])
	e.assertOpen()
}

// TestE2ESafetyB_ReloadKeepsKnocks: 20 clients each knock with a reload
// between every two of their steps (read before the SIGHUP; the next one
// is requested while the daemon reloads): every one of them is granted.
func TestE2ESafetyB_ReloadKeepsKnocks(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.startListener()
	clients := e.addClientsB(100, 20)
	d := e.startDaemon(e.writeConfig(e2eConf{}))
	var lost []string
	for _, c := range clients {
		e.knock(c, fullKnock[0])
		d.wait(t, "step", c)
		for i, p := range fullKnock[1:] {
			if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatalf("SIGHUP: %v", err)
			}
			e.knock(c, p)
			ev := d.knockEventB(t, c)
			if want := map[bool]string{false: "step", true: "grant"}[i == len(fullKnock)-2]; ev["msg"] != want {
				t.Logf("%s: %s after a reload: %v", c, p, ev)
				lost = append(lost, c)
				break
			}
		}
	}
	if len(lost) > 0 {
		t.Errorf("%d of %d knocks lost across reloads: %v", len(lost), len(clients), lost)
	}
	for _, c := range clients {
		if !slices.Contains(lost, c) && !e.connects(c) {
			t.Errorf("%s was granted but cannot connect", c)
		}
	}
}

// knockEventB waits for the end of a reload and for the next knock event
// (step, reset, timeout, lockout or grant) of ip, in either order, and
// returns the event.
func (d *daemonProc) knockEventB(t testing.TB, ip string) map[string]any {
	t.Helper()
	var ev map[string]any
	reloaded := false
	deadline := time.After(10 * time.Second)
	for ev == nil || !reloaded {
		select {
		case rec, ok := <-d.records:
			if !ok {
				t.Fatal("webknock exited")
			}
			switch msg := strB(rec, "msg"); {
			case msg == "configuration reloaded":
				reloaded = true
			case ev == nil && strB(rec, "ip") == ip && slices.Contains([]string{"step", "reset", "timeout", "lockout", "grant"}, msg):
				ev = rec
			}
		case <-deadline:
			t.Fatalf("within 10s: reloaded %v, knock event of %s %v", reloaded, ip, ev)
		}
	}
	return ev
}

// TestE2ESafetyB_ReloadRemovesSequence: a sequence removed from the
// configuration loses its live grants at the reload: the element is gone
// from the set when the reload is done, the daemon says so, and the other
// sequence's grant stays.
func TestE2ESafetyB_ReloadRemovesSequence(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.startListener()
	d := e.startDaemon(e.writeConfig(e2eConf{seqs: seqSSHB + seqAdmB}))
	adm, ssh := cliV4[0], cliV4[1]
	e.knock(adm, admKnockB...)
	if g := d.wait(t, "grant", adm); g["sequence"] != "adm" {
		t.Fatalf("grant %v, want sequence adm", g)
	}
	e.knock(ssh, fullKnock...)
	d.wait(t, "grant", ssh)
	chain := func() string { return strings.Join(e.ipsetElements(false), "\n") }
	if rules := chain(); !strings.Contains(rules, adm+"/32") || !strings.Contains(rules, "webknock:adm:") {
		t.Fatalf("no grant element of sequence adm for %s:\n%s", adm, rules)
	}
	e.assertOpen(adm, ssh)

	e.writeConfig(e2eConf{seqs: seqSSHB})
	d.hupB(t)
	rules := chain()
	if strings.Contains(rules, adm+"/32") || strings.Contains(rules, "webknock:adm:") {
		t.Errorf("the removed sequence's grant is still in the set after the reload:\n%s", rules)
	}
	if !strings.Contains(rules, ssh+"/32") {
		t.Errorf("the grant of sequence ssh is gone after the reload:\n%s", rules)
	}
	d.seenB(t, "of the revoked grant of "+adm, 5*time.Second, func(rec map[string]any) bool {
		return strB(rec, "ip") == adm && strB(rec, "sequence") == "adm" && rec["msg"] != "grant" && rec["msg"] != "step" &&
			(strings.Contains(strB(rec, "msg"), "revoked") || strings.Contains(strB(rec, "msg"), "removed"))
	})
	e.assertOpen(ssh)
}

// TestE2ESafetyB_RevokeRemembered: a revoked address is not granted again
// when its knock is read again (a restart with log.start: beginning); a
// knock after the revoke is granted.
func TestE2ESafetyB_RevokeRemembered(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.startListener()
	e.writeTokenB("0123456789abcdef0123456789abcdef")
	cfg := e.writeConfig(e2eConf{listen: "127.0.0.1:7080"})
	d := e.startDaemon(cfg)
	a := cliV4[0]
	e.knock(a, fullKnock...)
	d.wait(t, "grant", a)
	if out, err := e.in(e.srv, webknockBinary(t), "revoke", "-c", cfg, a).CombinedOutput(); err != nil {
		t.Fatalf("webknock revoke: %v\n%s", err, out)
	}
	revoked := time.Now()
	d.wait(t, "grant removed", a)
	d.stopB()

	e.writeConfig(e2eConf{start: "beginning", listen: "127.0.0.1:7080"})
	d = e.startDaemon(cfg)
	isGrant := func(rec map[string]any) bool { return rec["msg"] == "grant" && strB(rec, "ip") == a }
	rec := d.nextB(t, 10*time.Second, func(rec map[string]any) bool {
		return strB(rec, "ip") == a && strings.Contains(strB(rec, "msg"), "revoked")
	}, isGrant)
	if rec == nil {
		t.Fatalf("the old knock of %s was not read again (no record of it within 10s)", a)
	}
	t.Logf("old knock read again: %v", rec)
	e.assertOpen()

	// Log times have whole seconds: a knock in the second of the revoke
	// would count as before it.
	waitUntil(t, revoked.Truncate(time.Second).Add(time.Second+50*time.Millisecond))
	e.knock(a, fullKnock...)
	d.wait(t, "grant", a)
	e.assertOpen(a)
}

// TestE2ESafetyB_RotatedGlob: with log.paths DIR/access.log*, rotated
// logs are read once: not when the glob takes access.log.1 up under its own
// name after the grace period, not when a second rotation renames it to
// access.log.2, not after a restart. A revoked knock in them is not granted
// again, and no knock in them is read twice.
func TestE2ESafetyB_RotatedGlob(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.startListener()
	e.writeTokenB("0123456789abcdef0123456789abcdef")
	cfg := e.writeConfig(e2eConf{paths: []string{e.log + "*"}, listen: "127.0.0.1:7080"})
	d := e.startDaemon(cfg)
	a, b, c, x := cliV4[0], cliV4[1], cliV4[2], cliV4[3]
	e.knock(a, fullKnock...)
	d.wait(t, "grant", a)
	if out, err := e.in(e.srv, webknockBinary(t), "revoke", "-c", cfg, a).CombinedOutput(); err != nil {
		t.Fatalf("webknock revoke: %v\n%s", err, out)
	}
	d.wait(t, "grant removed", a)
	// read reports a record of a knock of one of ips read (again): a step,
	// a grant, or a grant refused because of the revoke.
	read := func(ips ...string) func(map[string]any) bool {
		return func(rec map[string]any) bool {
			msg := strB(rec, "msg")
			return slices.Contains(ips, strB(rec, "ip")) && (msg == "step" || msg == "grant" || strings.Contains(msg, "not applied"))
		}
	}
	granted := func(ip string) func(map[string]any) bool {
		return func(rec map[string]any) bool { return rec["msg"] == "grant" && strB(rec, "ip") == ip }
	}
	grantOnly := func(ip string, old ...string) {
		t.Helper()
		e.knock(ip, fullKnock...)
		if d.nextB(t, 10*time.Second, granted(ip), read(old...)) == nil {
			t.Fatalf("no grant of %s within 10s", ip)
		}
	}

	// First rotation, as logrotate does it.
	if err := os.Rename(e.log, e.log+".1"); err != nil {
		t.Fatal(err)
	}
	e.reopenNginx()
	grantOnly(b, a)
	start := time.Now()
	if d.nextB(t, 40*time.Second, func(rec map[string]any) bool { return rec["msg"] == "finished reading rotated log" }, read(a, b)) == nil {
		t.Fatal("the rotated log's grace period did not end within 40s")
	}
	t.Logf("grace period over after %v", time.Since(start).Round(time.Second))
	// Now the glob follows the rotated file under its own name.
	rotated := e.log + ".1"
	if rec := d.nextB(t, 5*time.Second, func(rec map[string]any) bool { return strB(rec, "path") == rotated }, read(a, b)); rec == nil {
		t.Errorf("no log record about %s within 5s of the grace period's end", rotated)
	} else {
		t.Logf("then: %v", rec)
	}
	grantOnly(c, a, b)

	// Second rotation: access.log.1 (a's knock) becomes access.log.2, a
	// name the glob has not seen; access.log (b's and c's) access.log.1.
	if err := os.Rename(e.log+".1", e.log+".2"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(e.log, e.log+".1"); err != nil {
		t.Fatal(err)
	}
	e.reopenNginx()
	grantOnly(x, a, b, c)

	d.stopB()
	d = e.startDaemon(cfg)
	e.knock(x, fullKnock...)
	d.wait(t, "grant", x)
	for _, rec := range d.recordsB() {
		if read(a, b, c)(rec) {
			t.Errorf("after the restart the daemon logged %v", rec)
		}
	}
	e.assertOpen(b, c, x)
}

// TestE2ESafetyB_IPv4HangIPv6Works: iptables (IPv4) hangs while ip6tables
// works: an IPv6 knock opens port 22 over IPv6 within seconds, and /healthz
// answers 503 naming IPv4.
func TestE2ESafetyB_IPv4HangIPv6Works(t *testing.T) {
	e := newE2E(t, "nginx")
	real, err := exec.LookPath("iptables")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(e.dir, "bin")
	flag := filepath.Join(e.dir, "hang-iptables")
	e.must("mkdir", "-p", bin)
	if err := os.WriteFile(filepath.Join(bin, "iptables"), []byte(`#!/bin/sh
if [ -e '`+flag+`' ]; then exec sleep 3600; fi
exec '`+real+`' "$@"
`), 0o755); err != nil {
		t.Fatal(err)
	}
	e.startNginx()
	e.startListener()
	e.writeTokenB("0123456789abcdef0123456789abcdef")
	// Grants go to the sets over netlink; the integrity check, every 2 s
	// here, runs iptables.
	d := e.startDaemonCmd(e.daemonCmd(e.writeConfig(e2eConf{listen: "127.0.0.1:7080", fwMore: "  check_interval: 2s\n"}),
		"PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH")))
	// Before the daemon stops (cleanups run last first): let it go.
	t.Cleanup(func() { os.Remove(flag) })
	if code, body := e.httpB("GET", "http://127.0.0.1:7080/healthz", ""); code != "200" {
		t.Fatalf("GET /healthz before the hang: %s %s", code, body)
	}

	write(t, flag, "")
	start := time.Now()
	e.knock(cliV6[0], fullKnock...)
	if d.nextB(t, 5*time.Second, func(rec map[string]any) bool { return rec["msg"] == "grant" && strB(rec, "ip") == cliV6[0] }, nil) == nil {
		t.Fatalf("no grant of %s within 5s while iptables hangs", cliV6[0])
	}
	t.Logf("IPv6 grant %v after iptables started hanging", time.Since(start).Round(time.Millisecond))
	if !e.connects(cliV6[0]) {
		t.Errorf("%s cannot connect over IPv6 while iptables hangs", cliV6[0])
	}
	if e.connects(cliV6[1]) {
		t.Errorf("%s can connect over IPv6 without a knock", cliV6[1])
	}

	var body string
	pollB(t, "/healthz to answer 503 naming IPv4", 15*time.Second, func() bool {
		var code string
		code, body = e.httpB("GET", "http://127.0.0.1:7080/healthz", "")
		return code == "503" && strings.Contains(body, "IPv4")
	})
	t.Logf("/healthz %v after the hang began: %q", time.Since(start).Round(time.Second), body)
	if !e.connects(cliV6[0]) {
		t.Errorf("%s cannot connect over IPv6 while iptables hangs", cliV6[0])
	}
}

// grepB returns the lines of text that contain s.
func grepB(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
