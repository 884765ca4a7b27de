package main

// End-to-end tests of webknock's safe defaults, part A: each test reproduces
// a way the daemon used to leave a host open, shut, or in someone else's
// hands, through the real binary in the namespaces of e2e_test.go.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// wkA runs a short webknock command in the server namespace with env (nil:
// the test's) and returns its output and exit status.
func (e *e2e) wkA(env []string, args ...string) (string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", e.srv, webknockBinary(e.t)}, args...)...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		e.t.Fatalf("webknock %s did not finish within 30s:\n%s", strings.Join(args, " "), out)
	case errors.As(err, &ee):
		e.t.Logf("webknock %s: exit %d: %s", args[0], ee.ExitCode(), strings.TrimSpace(string(out)))
		return string(out), ee.ExitCode()
	case err != nil:
		e.t.Fatalf("webknock %s: %v", strings.Join(args, " "), err)
	}
	return string(out), 0
}

// tryRunA starts `webknock run` with env (nil: the test's) and waits until it
// exits or says it is running; a daemon that started is stopped again. out
// is everything it wrote.
func (e *e2e) tryRunA(cfg string, env []string) (out string, code int, started bool) {
	e.t.Helper()
	cmd := e.in(e.srv, webknockBinary(e.t), "run", "-c", cfg, "--json-logs")
	cmd.Env = env
	r, w, err := os.Pipe()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start webknock run: %v", err)
	}
	w.Close()
	var all strings.Builder
	running := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			all.Write(sc.Bytes())
			all.WriteByte('\n')
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "webknock running" {
				select {
				case running <- struct{}{}:
				default:
				}
			}
		}
		r.Close()
		cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-running:
		started = true
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		e.t.Fatalf("webknock run neither refused nor started within 20s:\n%s", all.String())
	}
	out, code = all.String(), cmd.ProcessState.ExitCode()
	if !started {
		lines := strings.Split(strings.TrimSpace(out), "\n")
		e.t.Logf("webknock run refused, exit %d: %s", code, lines[len(lines)-1])
	}
	return out, code, started
}

// logA returns the records the daemon has written so far.
func (d *daemonProc) logA() []map[string]any {
	d.mu.Lock()
	defer d.mu.Unlock()
	var recs []map[string]any
	for _, l := range strings.Split(d.all.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil {
			recs = append(recs, rec)
		}
	}
	return recs
}

// rulesetA is the server's whole IPv4 and IPv6 filter table.
func (e *e2e) rulesetA() string {
	e.t.Helper()
	return e.must("ip", "netns", "exec", e.srv, "iptables", "-w", "5", "-S") +
		e.must("ip", "netns", "exec", e.srv, "ip6tables", "-w", "5", "-S")
}

// healthzA returns the status and body of /healthz on 127.0.0.1:7080 of
// the server.
func (e *e2e) healthzA() (int, string) {
	e.t.Helper()
	out, err := e.in(e.srv, "curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", "http://127.0.0.1:7080/healthz").Output()
	if err != nil {
		e.t.Fatalf("GET /healthz: %v\n%s", err, out)
	}
	i := strings.LastIndexByte(string(out), '\n')
	n, _ := strconv.Atoi(string(out[i+1:]))
	return n, string(out[:max(i, 0)])
}

// TestE2ESafetyA_MissingLogDir: a mistyped log directory is an error for
// check, but run starts anyway (an ERROR in its log, /healthz 503 naming
// the path), guards the port, and once the directory and the log appear a
// knock opens it. Before, run exited after installing the protect rules,
// leaving port 22 shut with nobody to open it.
func TestE2ESafetyA_MissingLogDir(t *testing.T) {
	e := newE2E(t, "nginx")
	logPath := filepath.Join(e.dir, "ngnix", "acess.log")
	cfg := e.writeConfig(e2eConf{paths: []string{logPath}, listen: "127.0.0.1:7080"})

	out, code := e.wkA(nil, "check", "-c", cfg)
	if code != 1 || !strings.Contains(out, "log.paths[0]") || !strings.Contains(out, filepath.Join(e.dir, "ngnix")) {
		t.Errorf("check with a missing log directory: exit %d, want 1 naming log.paths[0] and the directory:\n%s", code, out)
	}

	e.startListener()
	d := e.startDaemon(cfg)
	reported := false
	for _, rec := range d.logA() {
		if rec["level"] == "ERROR" && strings.Contains(fmt.Sprint(rec), logPath) {
			reported = true
		}
	}
	if !reported {
		t.Errorf("run logged no ERROR naming %s", logPath)
	}
	if code, body := e.healthzA(); code != 503 || !strings.Contains(body, logPath) {
		t.Errorf("/healthz while the log is missing: %d %q, want 503 naming %s", code, body, logPath)
	}
	e.assertOpen()

	// The directory and the log appear: nginx writes there from now on.
	if err := os.Mkdir(filepath.Dir(logPath), 0o755); err != nil {
		t.Fatal(err)
	}
	e.log = logPath
	e.startNginx()
	e.knockGranted(d, cliV4[0])
	e.assertOpen(cliV4[0])

	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := e.healthzA()
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz after the log appeared: %d %q, want 200 within 10s", code, body)
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-t.Context().Done():
		}
	}
}

// TestE2ESafetyA_TwoDaemons: a second daemon with the same state_dir refuses
// to start and names the first one's PID, changing nothing; so does one
// with another state_dir but the same chain. The first keeps granting.
func TestE2ESafetyA_TwoDaemons(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.startListener()
	cfg := e.writeConfig(e2eConf{})
	d := e.startDaemon(cfg)
	e.knockGranted(d, cliV4[0])
	before := e.rulesetA()

	out, code, started := e.tryRunA(cfg, nil)
	pid := fmt.Sprintf("PID %d", d.cmd.Process.Pid)
	switch {
	case started:
		t.Errorf("a second daemon with the same state_dir started:\n%s", out)
	case code == 0 || !strings.Contains(out, pid):
		t.Errorf("second daemon with the same state_dir: exit %d, want non-zero naming %s:\n%s", code, pid, out)
	}
	if after := e.rulesetA(); after != before {
		t.Errorf("the refused daemon changed the rules:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// Another state_dir, the same chain: the chain's ownership marker
	// says it belongs to the first daemon's state_dir.
	other := e.writeConfig(e2eConf{name: "webknock-other.yaml", state: filepath.Join(e.dir, "state2"), socket: filepath.Join(e.dir, "run2", "webknock.sock")})
	out, code, started = e.tryRunA(other, nil)
	switch {
	case started:
		t.Errorf("a second daemon with another state_dir took over chain WEBKNOCK of the running one:\n%s", out)
	case code == 0 || !strings.Contains(out, "WEBKNOCK"):
		t.Errorf("second daemon with another state_dir: exit %d, want non-zero naming chain WEBKNOCK:\n%s", code, out)
	}

	// The first one still works.
	e.knockGranted(d, cliV4[1])
	e.assertOpen(cliV4[0], cliV4[1])
}

// TestE2ESafetyA_ForeignChain: with firewall.chain naming fail2ban's chain,
// run, check and flush refuse with a clear message, and no rule of the host
// changes; before, run adopted the chain and flushed fail2ban's bans.
func TestE2ESafetyA_ForeignChain(t *testing.T) {
	e := newE2E(t)
	write(t, e.log, "")
	ipt := func(args ...string) {
		t.Helper()
		e.must("ip", append([]string{"netns", "exec", e.srv, "iptables", "-w", "5"}, args...)...)
	}
	ipt("-N", "f2b-sshd")
	ipt("-A", "f2b-sshd", "-s", "198.51.100.7/32", "-j", "REJECT")
	ipt("-A", "f2b-sshd", "-j", "RETURN")
	ipt("-I", "INPUT", "-p", "tcp", "-m", "multiport", "--dports", "22", "-j", "f2b-sshd")
	f2b := e.must("ip", "netns", "exec", e.srv, "iptables", "-w", "5", "-S", "f2b-sshd")
	before := e.rulesetA()
	cfg := e.writeConfig(e2eConf{chain: "f2b-sshd"})

	out, code, started := e.tryRunA(cfg, nil)
	if started || code == 0 || !strings.Contains(out, "f2b-sshd") || !strings.Contains(out, "not webknock's") {
		t.Errorf("run with chain f2b-sshd: started %v, exit %d; want a refusal saying f2b-sshd is not webknock's:\n%s", started, code, out)
	}
	for _, cmd := range []string{"check", "flush"} {
		out, code := e.wkA(nil, cmd, "-c", cfg)
		if code == 0 || !strings.Contains(out, "f2b-sshd") {
			t.Errorf("%s with chain f2b-sshd: exit %d, want non-zero naming f2b-sshd:\n%s", cmd, code, out)
		}
	}
	if got := e.must("ip", "netns", "exec", e.srv, "iptables", "-w", "5", "-S", "f2b-sshd"); got != f2b {
		t.Errorf("chain f2b-sshd changed:\nbefore:\n%s\nafter:\n%s", f2b, got)
	}
	if after := e.rulesetA(); after != before {
		t.Errorf("the rules changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// pathA makes a directory for PATH holding iptables and, when ip6tables is
// not "", an ip6tables script with that body.
func (e *e2e) pathA(name, ip6tables string) []string {
	e.t.Helper()
	dir := filepath.Join(e.dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	ipt, err := exec.LookPath("iptables")
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.Symlink(ipt, filepath.Join(dir, "iptables")); err != nil {
		e.t.Fatal(err)
	}
	if ip6tables != "" {
		if err := os.WriteFile(filepath.Join(dir, "ip6tables"), []byte("#!/bin/sh\n"+ip6tables), 0o755); err != nil {
			e.t.Fatal(err)
		}
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	return append(env, "PATH="+dir)
}

// TestE2ESafetyA_NoIP6Tables: on a host with IPv6, with protect on and
// ip6tables missing or broken, check and run refuse, naming ip6tables and
// IPv6, before touching IPv4; with firewall.ipv6: false run starts, warns
// and grants over IPv4. Before, IPv6 was left open without a word.
func TestE2ESafetyA_NoIP6Tables(t *testing.T) {
	e := newE2E(t, "nginx")
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		t.Skip("skipping: the kernel has no IPv6")
	}
	write(t, e.log, "")
	before := e.rulesetA()
	cfg := e.writeConfig(e2eConf{})
	for _, c := range []struct {
		name, script string
	}{
		{"missing", ""},
		{"broken", "echo 'ip6tables: command not found' >&2\nexit 127\n"},
	} {
		env := e.pathA("bin-"+c.name, c.script)
		out, code, started := e.tryRunA(cfg, env)
		if started || code == 0 || !strings.Contains(out, "ip6tables") || !strings.Contains(out, "IPv6") {
			t.Errorf("run with ip6tables %s: started %v, exit %d; want a refusal naming ip6tables and IPv6:\n%s", c.name, started, code, out)
		}
		out, code = e.wkA(env, "check", "-c", cfg)
		if code == 0 || !strings.Contains(out, "ip6tables") {
			t.Errorf("check with ip6tables %s: exit %d, want non-zero naming ip6tables:\n%s", c.name, code, out)
		}
		if after := e.rulesetA(); after != before {
			t.Errorf("ip6tables %s: the refused daemon changed the rules:\n%s", c.name, after)
		}
	}

	// Knowingly without IPv6: it starts, says so, and grants over IPv4.
	env := e.pathA("bin-off", "")
	off := e.writeConfig(e2eConf{name: "webknock-v4.yaml", ipv6Off: true})
	e.startNginx()
	e.startListener()
	cmd := e.daemonCmd(off)
	cmd.Env = env
	d := e.startDaemonCmd(cmd)
	warned := false
	for _, rec := range d.logA() {
		if rec["level"] == "WARN" && strings.Contains(fmt.Sprint(rec["msg"]), "IPv6") {
			warned = true
		}
	}
	if !warned {
		t.Error("run with firewall.ipv6: false logged no warning about IPv6")
	}
	if e.connects(cliV4[0]) {
		t.Errorf("%s connects before knocking", cliV4[0])
	}
	e.knockGranted(d, cliV4[0])
	if in, out := e.connects(cliV4[0]), e.connects(cliV4[1]); !in || out {
		t.Errorf("after %s knocked: it connects %v, %s connects %v; want true, false", cliV4[0], in, cliV4[1], out)
	}
	e.assertNoChain("changed with firewall.ipv6: false", "ip6tables")
}

// TestE2ESafetyA_PlantedState: grants.json planted by user nobody in a
// world-writable state_dir (ports 22, 1/tcp and 65535/udp open until 2037)
// is refused: run exits naming the state directory, then, with the
// directory fixed, naming the file; no rule for the planted grants is ever
// made. Before, run applied them.
func TestE2ESafetyA_PlantedState(t *testing.T) {
	e := newE2E(t)
	write(t, e.log, "")
	state := filepath.Join(e.dir, "state")
	if err := os.Chmod(state, 0o1777); err != nil {
		t.Fatal(err)
	}
	grants := filepath.Join(state, "grants.json")
	plant := exec.Command("sh", "-c", `cat > "$1"`, "sh", grants)
	plant.Stdin = strings.NewReader(`{"version": 2, "grants": [
  {"ip": "192.0.2.14", "sequence": "ssh", "ports": ["22/tcp", "1/tcp", "65535/udp"], "until": "2037-01-01T00:00:00Z"},
  {"ip": "198.51.100.66", "sequence": "ssh", "ports": ["22/tcp"], "until": "2037-01-01T00:00:00Z"}
]}
`)
	plant.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	if out, err := plant.CombinedOutput(); err != nil {
		t.Fatalf("plant grants.json as nobody: %v\n%s", err, out)
	}
	if fi, err := os.Stat(grants); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Fatalf("grants.json not planted by nobody: %v", err)
	}
	before := e.rulesetA()
	cfg := e.writeConfig(e2eConf{})
	planted := regexp.MustCompile(`192\.0\.2\.14|198\.51\.100\.66|--dport (1|65535) |2037-`)

	for _, c := range []struct{ name, want string }{
		{"world-writable state_dir", state},
		{"state_dir fixed, grants.json still nobody's", grants},
	} {
		if c.want == grants {
			if err := os.Chmod(state, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		out, code, started := e.tryRunA(cfg, nil)
		if started || code == 0 || !strings.Contains(out, c.want) {
			t.Errorf("%s: started %v, exit %d; want a refusal naming %s:\n%s", c.name, started, code, c.want, out)
		}
		after := e.rulesetA()
		if planted.MatchString(after) {
			t.Errorf("%s: rules of the planted grants:\n%s", c.name, after)
		}
		if after != before {
			t.Errorf("%s: the refused daemon changed the rules:\n%s", c.name, after)
		}
	}

	// Without the planted file it starts, and nothing planted is open.
	if err := os.Remove(grants); err != nil {
		t.Fatal(err)
	}
	e.startListener()
	e.startDaemon(cfg)
	if out := e.rulesetA(); planted.MatchString(out) {
		t.Errorf("rules of the planted grants:\n%s", out)
	}
	e.assertOpen()
}

// logLineA is a combined log line of a request by ip at tm.
func logLineA(ip string, tm time.Time, path string) string {
	return fmt.Sprintf("%s - - [%s] \"GET %s HTTP/1.1\" 404 153 \"-\" \"Mozilla/5.0 (webknock end-to-end test)\"\n",
		ip, tm.Format("02/Jan/2006:15:04:05 -0700"), path)
}

// TestE2ESafetyA_LogClockAhead: knocks logged a day ahead and in 2037 are
// granted until at most the wall clock's now plus the window, in the log
// record and in the set elements (timeout and comment), and the daemon warns
// once that the log's clock is ahead. Before, until was the log's time
// plus the window: open until 2037.
func TestE2ESafetyA_LogClockAhead(t *testing.T) {
	e := newE2E(t)
	write(t, e.log, "")
	e.startListener()
	const window = 10 * time.Minute
	d := e.startDaemon(e.writeConfig(e2eConf{window: "10m"}))

	ahead := map[string]time.Time{
		cliV4[0]: time.Now().Add(24 * time.Hour).UTC(),
		cliV4[1]: time.Date(2037, 6, 1, 12, 0, 0, 0, time.UTC),
	}
	f, err := os.OpenFile(e.log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range cliV4[:2] {
		var b strings.Builder
		for _, p := range fullKnock {
			b.WriteString(logLineA(ip, ahead[ip], p))
		}
		if _, err := f.WriteString(b.String()); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	for _, ip := range cliV4[:2] {
		until := untilOf(t, d.wait(t, "grant", ip))
		if bound := time.Now().Add(window + 2*time.Second); until.After(bound) || !until.After(time.Now()) {
			t.Errorf("grant of %s knocked at %v: until %v, want after now and at most now + %v (%v)", ip, ahead[ip], until, window, bound)
		}
	}
	bound := time.Now().Add(window + 2*time.Second)
	rules := e.grantRules("iptables")
	if len(rules) != 2 {
		t.Errorf("grant rules = %q, want two", rules)
	}
	timeout := regexp.MustCompile(`timeout (\d+)`)
	comment := regexp.MustCompile(`webknock:ssh:(\d+)`)
	for _, r := range rules {
		m, c := timeout.FindStringSubmatch(r), comment.FindStringSubmatch(r)
		if m == nil || c == nil {
			t.Errorf("element %q: no timeout or comment", r)
			continue
		}
		secs, err := strconv.Atoi(m[1])
		unix, _ := strconv.ParseInt(c[1], 10, 64)
		if err != nil || time.Now().Add(time.Duration(secs)*time.Second).After(bound) || time.Unix(unix, 0).After(bound) {
			t.Errorf("element %q ends after now + %v (%v)", r, window, bound)
		}
	}
	e.assertOpen(cliV4[0], cliV4[1])

	// Said once, however many grants are cut.
	warnings := 0
	for _, rec := range d.logA() {
		if msg := fmt.Sprint(rec["msg"]); rec["level"] == "WARN" && strings.Contains(msg, "clock") && strings.Contains(msg, "ahead") {
			warnings++
		}
	}
	if warnings != 1 {
		t.Errorf("%d warnings that the log's clock is ahead, want 1", warnings)
	}
}

// TestE2ESafetyA_Overrides: while the daemon runs, `webknock flush` refuses,
// naming the daemon's PID, and leaves every rule; `webknock grant` opens the
// port for an address through the admin socket, and it stays open across
// integrity checks, which delete a rule inserted by hand. Before, flush
// wiped the chain under the daemon, and a hand-made grant lasted seconds.
func TestE2ESafetyA_Overrides(t *testing.T) {
	e := newE2E(t)
	write(t, e.log, "")
	e.startListener()
	cfg := e.writeConfig(e2eConf{})
	d := e.startDaemon(cfg)

	before := e.rulesetA()
	out, code := e.wkA(nil, "flush", "-c", cfg)
	if pid := fmt.Sprintf("PID %d", d.cmd.Process.Pid); code == 0 || !strings.Contains(out, pid) {
		t.Errorf("flush while the daemon runs: exit %d, want non-zero naming %s:\n%s", code, pid, out)
	}
	if after := e.rulesetA(); after != before {
		t.Errorf("flush changed the rules while the daemon runs:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	admitted := cliV4[2]
	if out, code := e.wkA(nil, "grant", "-c", cfg, admitted, "--for", "5m"); code != 0 || !strings.Contains(out, admitted) {
		t.Fatalf("webknock grant %s: exit %d\n%s", admitted, code, out)
	}
	d.wait(t, "grant by the admin", admitted)
	e.assertOpen(admitted)
	if out, code := e.wkA(nil, "status", "-c", cfg); code != 0 || !strings.Contains(out, admitted) {
		t.Errorf("status does not list %s: exit %d\n%s", admitted, code, out)
	}

	// Two integrity checks, each seen by the repair of a rule made by hand.
	for i := 0; i < 2; i++ {
		e.must("ip", "netns", "exec", e.srv, "iptables", "-w", "5", "-I", "WEBKNOCK", "2",
			"-s", cliV4[3]+"/32", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
		d.wait(t, "firewall repaired", "")
		e.assertOpen(admitted)
	}
	if r := e.grantRules("iptables"); len(r) != 1 || !strings.Contains(r[0], admitted+"/32") {
		t.Errorf("grant rules after two integrity checks = %q, want the one of %s", r, admitted)
	}
}
