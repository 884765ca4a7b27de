package main

// End-to-end tests of what only the nftables backend does: close on
// connect, repair at once when another program deletes our table or
// flushes the whole ruleset, and the coexistence recipes of
// docs/nftables.md, with real nginx and nftables in network namespaces.

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// newNFTE2E is a world whose daemon uses the nftables backend.
func newNFTE2E(t *testing.T, programs ...string) *e2e {
	t.Helper()
	return newBackendE2E(t, "nftables", programs...)
}

// TestE2ECloseOnConnect: with close_on_connect, the knocker's first
// connection is let in and goes on; a second one is refused, and the
// daemon ends the grant as used.
func TestE2ECloseOnConnect(t *testing.T) {
	e := newNFTE2E(t, "nginx")
	e.startNginx()
	e.startEcho()
	d := e.startDaemon(e.writeConfig(e2eConf{seqs: `  - name: ssh
    steps: [/k/a1, /k/b2, /k/c3]
    knock_page: /k/open
    window: 10m
    close_on_connect: true
    ports: [22/tcp]
`}))
	for _, src := range []string{cliV4[0], cliV6[0]} {
		e.knock(src, fullKnock...)
		d.wait(t, "grant", src)
		if r := e.nftElements("door", strings.Contains(src, ":")); len(r) != 1 {
			t.Fatalf("door elements after the knock from %s = %q, want one", src, r)
		}
		s := e.session(src)
		if got := s.do("ping"); got != "ok" {
			t.Fatalf("first session from %s: ping = %q", src, got)
		}
		if e.connects(src) {
			t.Errorf("a second connection from %s got in: close_on_connect lets in one", src)
		}
		rec := d.wait(t, "grant removed", src)
		if rec["reason"] != "used" {
			t.Errorf("grant of %s removed for %v, want used", src, rec["reason"])
		}
		// The session let in goes on.
		if got := s.do("ping"); got != "ok" {
			t.Errorf("first session from %s after its grant was used: ping = %q", src, got)
		}
	}
	e.assertOpen()
}

// TestE2ENFTFlushRuleset: another program's `nft flush ruleset` (what
// Debian's nftables.conf starts with) takes our table with it; webknock
// puts it back with the live grants. The port is unprotected between the
// flush and the repair; the time is logged (BenchmarkE2ENFTRepair
// measures it).
func TestE2ENFTFlushRuleset(t *testing.T) {
	e := newNFTE2E(t, "nginx")
	e.startNginx()
	e.startListener()
	d := e.startDaemon(e.config("10m"))
	e.knockGranted(d, cliV4[0])
	e.must("ip", "netns", "exec", e.srv, "nft", "flush", "ruleset")
	start := time.Now()
	rec := d.wait(t, "firewall repaired", "")
	t.Logf("flush ruleset: repaired after %v (by %v)", time.Since(start).Round(time.Millisecond), rec["by"])
	if by, _ := rec["by"].(string); !strings.Contains(by, "nft") {
		t.Errorf("repair log says the change was made by %q, want nft", by)
	}
	e.assertOpen(cliV4[0])
}

// BenchmarkE2ENFTRepair measures how long the guarded port is unprotected
// when another program deletes our table, or flushes the whole ruleset:
// from the moment the program is started to the time of webknock's later
// "firewall repaired" record of the two families (an upper bound: it
// includes starting nft), and from nft's exit (a lower bound).
//
//	sudo WK_E2E=require go test ./cmd/webknock -run '^$' -bench E2ENFTRepair -benchtime 20x
func BenchmarkE2ENFTRepair(b *testing.B) {
	for _, damage := range [][]string{{"delete", "table", "inet", nftTable}, {"flush", "ruleset"}} {
		b.Run(strings.Join(damage[:2], "-"), func(b *testing.B) {
			e := newBackendE2E(b, "nftables")
			write(b, e.log, "")
			d := e.startDaemon(e.config("10m"))
			var took, after []float64
			for b.Loop() {
				start := time.Now()
				e.must("ip", append([]string{"netns", "exec", e.srv, "nft"}, damage...)...)
				done := time.Now()
				// Each family repairs its own chain and sets: the later
				// of the two ends the window.
				var last time.Time
				for range 2 {
					rec := d.wait(b, "firewall repaired", "")
					at, err := time.Parse(time.RFC3339Nano, rec["time"].(string))
					if err != nil {
						b.Fatalf("repair record %v: %v", rec, err)
					}
					if at.After(last) {
						last = at
					}
				}
				took = append(took, float64(last.Sub(start).Microseconds())/1000)
				after = append(after, float64(last.Sub(done).Microseconds())/1000)
			}
			slices.Sort(took)
			slices.Sort(after)
			b.ReportMetric(after[len(after)/2], "ms-after-nft-exited-median")
			b.ReportMetric(took[len(took)/2], "ms-unprotected-median")
			b.ReportMetric(took[len(took)-1], "ms-unprotected-worst")
		})
	}
}

// TestE2ENFTForward: with hook forward, webknock guards a host behind this
// one (a container, a VM) as Docker's published ports are reached: a
// stranger's new connection through the router is dropped, the knocker's
// is let through.
func TestE2ENFTForward(t *testing.T) {
	e := newNFTE2E(t, "nginx")
	// A third namespace behind the server, reached through it.
	back := "wkb" + e.id
	e.must("ip", "netns", "add", back)
	t.Cleanup(func() { e.must("ip", "netns", "del", back) })
	e.must("ip", "link", "add", "wkr"+e.id, "netns", e.srv, "type", "veth", "peer", "name", "wkq"+e.id, "netns", back)
	e.must("ip", "-n", back, "link", "set", "lo", "up")
	e.must("ip", "-n", e.srv, "addr", "add", "198.51.100.1/24", "dev", "wkr"+e.id)
	e.must("ip", "-n", e.srv, "link", "set", "wkr"+e.id, "up")
	e.must("ip", "-n", back, "addr", "add", "198.51.100.2/24", "dev", "wkq"+e.id)
	e.must("ip", "-n", back, "link", "set", "wkq"+e.id, "up")
	e.must("ip", "-n", back, "route", "add", "default", "via", "198.51.100.1")
	e.must("ip", "-n", e.cli, "route", "add", "198.51.100.0/24", "via", srvV4)
	e.must("ip", "netns", "exec", e.srv, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	cmd := e.in(back, os.Args[0], "198.51.100.2:22")
	cmd.Env = append(os.Environ(), helperEnv+"=listen")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	e.background(cmd)
	ready := make([]byte, 6)
	if _, err := out.Read(ready); err != nil {
		t.Fatalf("listener behind the server: %v", err)
	}
	e.startNginx()
	cfg := e.writeConfig(e2eConf{hook: "forward"})
	d := e.startDaemon(cfg)
	reaches := func(src string) bool {
		t.Helper()
		c := e.in(e.cli, os.Args[0], src+" 198.51.100.2:22")
		c.Env = append(os.Environ(), helperEnv+"=dial")
		return c.Run() == nil
	}
	if reaches(cliV4[0]) {
		t.Fatal("a stranger reached the host behind the server")
	}
	e.knockGranted(d, cliV4[0])
	if !reaches(cliV4[0]) {
		t.Error("the knocker does not reach the host behind the server")
	}
	if reaches(cliV4[1]) {
		t.Error("a stranger reached the host behind the server after another's knock")
	}
	// The server's own port 22 is not guarded by a forward hook.
	e.startListener()
	if !e.connects(cliV4[1]) {
		t.Error("with hook forward, the server's own port 22 is closed to strangers")
	}
}

// TestE2ENFTConfRecipe: the recipe for a host whose /etc/nftables.conf
// drops what it does not accept: the file leaves port 22 to webknock
// (accepts it), webknock drops strangers' new connections to it; a reload
// of the file (flush ruleset, then the file's table) is repaired.
func TestE2ENFTConfRecipe(t *testing.T) {
	e := newNFTE2E(t, "nginx")
	conf := filepath.Join(e.dir, "nftables.conf")
	recipe, err := os.ReadFile(filepath.Join("..", "..", "docs", "examples", "nftables.conf"))
	if err != nil {
		t.Fatal(err)
	}
	write(t, conf, string(recipe))
	e.must("ip", "netns", "exec", e.srv, "nft", "-f", conf)
	e.startNginx()
	e.startListener()
	d := e.startDaemon(e.config("10m"))
	e.assertOpen()
	e.knockGranted(d, cliV4[0])
	e.assertOpen(cliV4[0])
	// The admin reloads the file: flush ruleset takes our table too.
	e.must("ip", "netns", "exec", e.srv, "nft", "-f", conf)
	d.wait(t, "firewall repaired", "")
	e.assertOpen(cliV4[0])
}
