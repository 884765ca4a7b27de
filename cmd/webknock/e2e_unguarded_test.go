package main

import (
	"strconv"
	"strings"
	"testing"
)

// TestE2EUnguardedNeverEntersChain: with iptables, traffic to a port no
// sequence guards never walks webknock's chain, so its cost does not
// depend on the grants: after HTTP requests to port 80, from a granted
// client and a stranger, the packet counters of the jump and of every
// rule of our chain are still 0; a connection to the guarded port counts.
func TestE2EUnguardedNeverEntersChain(t *testing.T) {
	e := newE2E(t, "nginx", "curl")
	e.startNginx()
	e.startListener()
	d := e.startDaemon(e.config("10m"))
	e.knockGranted(d, cliV4[0], cliV6[0])
	for _, fam := range []struct {
		cmd      string
		granted  string
		stranger string
		host     string
	}{{"iptables", cliV4[0], cliV4[1], srvV4}, {"ip6tables", cliV6[0], cliV6[1], "[" + srvV6 + "]"}} {
		e.must("ip", "netns", "exec", e.srv, fam.cmd, "-w", "5", "-Z", "INPUT")
		e.must("ip", "netns", "exec", e.srv, fam.cmd, "-w", "5", "-Z", "WEBKNOCK")
		for range 10 {
			for _, src := range []string{fam.granted, fam.stranger} {
				if out, err := e.in(e.cli, "curl", "-s", "-o", "/dev/null", "--max-time", "5", "--interface", src, "http://"+fam.host+"/").CombinedOutput(); err != nil {
					t.Fatalf("curl from %s: %v\n%s", src, err, out)
				}
			}
		}
		if jump, chain := e.chainPackets(fam.cmd); jump != 0 || chain != 0 {
			t.Errorf("%s: HTTP to port 80 counted %d packets on the jump and %d in our chain, want none", fam.cmd, jump, chain)
		}
		if !e.connects(fam.granted) {
			t.Fatalf("%s: the granted client cannot connect", fam.granted)
		}
		if jump, chain := e.chainPackets(fam.cmd); jump == 0 || chain == 0 {
			t.Errorf("%s: a connection to port 22 counted %d packets on the jump and %d in our chain, want some", fam.cmd, jump, chain)
		}
	}
}

// chainPackets returns the packets counted on the jump from INPUT to our
// chain, and on all the rules of our chain.
func (e *e2e) chainPackets(cmd string) (jump, chain int) {
	e.t.Helper()
	sum := func(chainName string, only func(fields []string) bool) int {
		out := e.must("ip", "netns", "exec", e.srv, cmd, "-w", "5", "-L", chainName, "-v", "-x", "-n")
		n := 0
		for _, l := range strings.Split(out, "\n")[2:] {
			f := strings.Fields(l)
			if len(f) < 3 || !only(f) {
				continue
			}
			p, err := strconv.Atoi(f[0])
			if err != nil {
				e.t.Fatalf("%s -L %s: %q", cmd, chainName, l)
			}
			n += p
		}
		return n
	}
	jump = sum("INPUT", func(f []string) bool { return f[2] == "WEBKNOCK" })
	chain = sum("WEBKNOCK", func([]string) bool { return true })
	return jump, chain
}
