package main

// End-to-end test of webknock's nftables backend beside firewalld, set up
// by docs/examples/firewalld.sh. firewalld runs in the server namespace
// without systemd: on a private D-Bus system bus (its own dbus-daemon and
// socket, named to firewalld and firewall-cmd by DBUS_SYSTEM_BUS_ADDRESS),
// with a private configuration directory (--system-config), so neither the
// host's firewall, nor its system bus, nor /etc/firewalld is touched.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// firewalldE2E is firewalld in a world's server namespace.
type firewalldE2E struct {
	e    *e2e
	env  []string // DBUS_SYSTEM_BUS_ADDRESS of the private bus
	conf string   // firewalld's --system-config directory
	log  string   // what firewalld printed
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// firewalldConf is the private firewalld.conf: the settings of Debian's
// /etc/firewalld/firewalld.conf that matter here, written out so that
// the host's own configuration cannot change the test.
const firewalldConf = `DefaultZone=public
FirewallBackend=nftables
CleanupOnExit=yes
FlushAllOnReload=yes
IPv6_rpfilter=yes
LogDenied=off
`

// busConf is the private bus's configuration: a system bus on its own
// socket (%s), without service activation, so that nothing is started
// behind the test's back (no polkitd: firewalld then authorizes by uid,
// and everything here runs as root).
const busConf = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="*"/>
  </policy>
</busconfig>
`

// startFirewalld starts the private bus, then firewalld, in the server
// namespace; both are stopped when the test ends.
func (e *e2e) startFirewalld() *firewalldE2E {
	e.t.Helper()
	f := &firewalldE2E{e: e, conf: filepath.Join(e.dir, "firewalld"), log: filepath.Join(e.dir, "firewalld.log")}
	e.must("mkdir", "-p", f.conf)
	write(e.t, filepath.Join(f.conf, "firewalld.conf"), firewalldConf)

	sock := filepath.Join(e.dir, "dbus.sock")
	busCfg := filepath.Join(e.dir, "dbus.conf")
	write(e.t, busCfg, fmt.Sprintf(busConf, sock))
	bus := e.in(e.srv, "dbus-daemon", "--config-file="+busCfg, "--nofork", "--nopidfile", "--print-address")
	out, err := bus.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	e.background(bus)
	// dbus-daemon prints its address once it listens.
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		addr <- strings.TrimSpace(line)
	}()
	select {
	case a := <-addr:
		if !strings.HasPrefix(a, "unix:path="+sock) {
			e.t.Fatalf("dbus-daemon did not start: printed %q", a)
		}
	case <-time.After(10 * time.Second):
		e.t.Fatal("dbus-daemon did not print its address within 10s")
	}
	f.env = []string{"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + sock}

	e.t.Cleanup(func() {
		f.stop()
		if e.t.Failed() {
			raw, _ := os.ReadFile(f.log)
			e.t.Logf("firewalld printed:\n%s", raw)
		}
	})
	f.start()
	return f
}

// start starts firewalld and waits until `firewall-cmd --state` says it
// runs.
func (f *firewalldE2E) start() {
	t := f.e.t
	t.Helper()
	logf, err := os.OpenFile(f.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := f.e.in(f.e.srv, "firewalld", "--nofork", "--nopid", "--system-config", f.conf, "--log-target", "console")
	cmd.Env = append(os.Environ(), f.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start firewalld: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	f.cmd, f.done = cmd, done
	deadline := time.After(60 * time.Second)
	for {
		if _, err := f.run("--state"); err == nil {
			return
		}
		select {
		case <-done:
			raw, _ := os.ReadFile(f.log)
			t.Fatalf("firewalld exited while starting:\n%s", raw)
		case <-deadline:
			t.Fatal("firewall-cmd --state did not say running within 60s")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop stops firewalld as its service does (SIGTERM; it removes its own
// table then), if it runs.
func (f *firewalldE2E) stop() {
	if f.cmd == nil {
		return
	}
	f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.done:
	case <-time.After(30 * time.Second):
		f.cmd.Process.Kill()
		<-f.done
	}
	f.cmd = nil
}

// run runs firewall-cmd on the private bus.
func (f *firewalldE2E) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", f.e.srv, "firewall-cmd"}, args...)...)
	cmd.Env = append(os.Environ(), f.env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must runs firewall-cmd on the private bus and fails the test if it fails.
func (f *firewalldE2E) must(args ...string) string {
	f.e.t.Helper()
	out, err := f.run(args...)
	if err != nil {
		f.e.t.Fatalf("firewall-cmd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// nftTables lists the tables of the server namespace, "FAMILY NAME" to
// handle.
func (e *e2e) nftTables() map[string]int {
	e.t.Helper()
	out := e.must("ip", "netns", "exec", e.srv, "nft", "-j", "list", "tables")
	var doc struct {
		Nftables []struct {
			Table *struct {
				Family string `json:"family"`
				Name   string `json:"name"`
				Handle int    `json:"handle"`
			} `json:"table"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		e.t.Fatalf("nft -j list tables: %v\n%s", err, out)
	}
	tables := map[string]int{}
	for _, o := range doc.Nftables {
		if o.Table != nil {
			tables[o.Table.Family+" "+o.Table.Name] = o.Table.Handle
		}
	}
	return tables
}

// TestE2EFirewalld: webknock's nftables backend beside firewalld, set up
// by running docs/examples/firewalld.sh itself. firewalld accepts SSH and
// webknock decides who gets there: strangers cannot connect to port 22,
// knockers can, over IPv4 and IPv6; without firewalld's accept nobody
// can. firewall-cmd --reload and a restart of firewalld leave webknock's
// table alone (the same table, not one put back): the recipe's comments
// say so.
func TestE2EFirewalld(t *testing.T) {
	e := newNFTE2E(t, "nginx", "firewalld", "firewall-cmd", "dbus-daemon", "sh")

	// The host's firewall is never touched: its ruleset is the same when
	// firewalld and its bus are gone. firewalld makes /run/firewalld (the
	// namespace shares /run); it is removed again if the host had none.
	hostBefore := e.must("nft", "list", "ruleset")
	_, errRun := os.Stat("/run/firewalld")
	t.Cleanup(func() {
		if errors.Is(errRun, os.ErrNotExist) {
			os.Remove("/run/firewalld") // only if empty
		}
		if after := e.must("nft", "list", "ruleset"); after != hostBefore {
			t.Errorf("the host's ruleset changed:\nbefore:\n%s\nafter:\n%s", hostBefore, after)
		}
	})

	e.startNginx()
	e.startListener()
	d := e.startDaemon(e.config("10m"))
	ours := e.nftTables()["inet "+nftTable]
	if ours == 0 {
		t.Fatalf("no table inet %s after webknock started", nftTable)
	}

	f := e.startFirewalld()
	if _, ok := e.nftTables()["inet firewalld"]; !ok {
		t.Fatal("no table inet firewalld in the server namespace after firewalld started")
	}
	if now := e.must("nft", "list", "ruleset"); now != hostBefore {
		t.Fatalf("firewalld changed the host's ruleset:\n%s", now)
	}
	// firewalld filters in the namespace: its default zone rejects the web
	// server until the recipe accepts http.
	if e.in(e.cli, "curl", "-s", "-o", "/dev/null", "--max-time", "2", "http://"+srvV4+"/").Run() == nil {
		t.Fatal("nginx answers through firewalld's default zone: is firewalld filtering?")
	}

	// The recipe, as the admin runs it.
	recipe, err := filepath.Abs(filepath.Join("..", "..", "docs", "examples", "firewalld.sh"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", e.srv, "sh", recipe)
	cmd.Env = append(os.Environ(), f.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sh %s: %v\n%s", recipe, err, out)
	}
	if !strings.Contains(string(out), "table inet firewalld") || !strings.Contains(string(out), "table inet "+nftTable) {
		t.Errorf("the recipe's check does not list both tables:\n%s", out)
	}
	t.Logf("firewalld.sh:\n%s", out)

	// unchanged fails the test if our table was deleted (and put back)
	// since webknock made it.
	unchanged := func(when string) {
		t.Helper()
		if h := e.nftTables()["inet "+nftTable]; h != ours {
			t.Fatalf("%s: table inet %s has handle %d, was %d: it was deleted (firewalld.sh says it is not)", when, nftTable, h, ours)
		}
	}
	unchanged("after firewalld started and the recipe's reload")

	e.assertOpen()
	e.knockGranted(d, cliV4[0], cliV6[0])
	e.assertOpen(cliV4[0], cliV6[0])

	// An accept in our table does not override firewalld's reject: without
	// ssh in the zone, nobody gets in, granted or not.
	f.must("--remove-service=ssh")
	e.assertOpen()

	// A reload restores the permanent configuration (ssh) and leaves our
	// table and its grants as they are.
	f.must("--reload")
	unchanged("after firewall-cmd --reload")
	e.assertOpen(cliV4[0], cliV6[0])

	// Stopping firewalld removes its table only; webknock alone still
	// keeps strangers out.
	f.stop()
	if _, ok := e.nftTables()["inet firewalld"]; ok {
		t.Error("table inet firewalld is still there after firewalld stopped")
	}
	unchanged("after firewalld stopped")
	e.assertOpen(cliV4[0], cliV6[0])

	// Started again, it loads the recipe's permanent configuration (the
	// private directory): the web server is reached, a new knock works.
	f.start()
	unchanged("after firewalld started again")
	e.assertOpen(cliV4[0], cliV6[0])
	e.knockGranted(d, cliV4[1])
	e.assertOpen(cliV4[0], cliV4[1], cliV6[0])
}
