package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/webknock/webknock/internal/realtest"
)

// netnsEnv tells the re-executed test binary the network namespace it runs
// in and the one its parent runs in: only when they differ does
// TestIPTablesNetns touch iptables.
const netnsEnv = "WK_FW_NETNS"

// TestIPTablesNetns runs the firewall on the real iptables and ip6tables, in
// a network namespace of its own: the test binary runs itself again inside
// it. It needs root, ip and iptables; without them it skips, unless
// WK_E2E=require, where it fails.
func TestIPTablesNetns(t *testing.T) {
	if v := os.Getenv(netnsEnv); v != "" {
		insideNetns(t, v)
		return
	}
	realtest.Require(t, "the real-iptables test", "ip", "iptables", "ip6tables")
	// As root with the programs, not being able to make a namespace is the
	// environment's fault: skip, unless the real tests are mandatory.
	unable := func(format string, args ...any) {
		t.Helper()
		if os.Getenv(realtest.Env) == "require" {
			t.Fatalf(format, args...)
		}
		t.Skipf("skipping: "+format, args...)
	}
	parent, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		unable("cannot tell this process's network namespace: %v", err)
	}
	ns := fmt.Sprintf("wk-fw-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		unable("cannot create network namespace %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("delete network namespace %s: %v: %s", ns, err, out)
		}
	})
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run", "^TestIPTablesNetns$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsEnv+"="+ns+" "+parent)
	out, err := cmd.CombinedOutput()
	t.Logf("inside network namespace %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("the test inside %s failed: %v", ns, err)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestIPTablesNetns")) {
		t.Fatalf("the test inside %s did not pass", ns)
	}
}

// inside runs commands in the namespace; it is the real thing the fake
// imitates.
type inside struct{ t *testing.T }

func (in inside) run(name string, args ...string) string {
	in.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		in.t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (in inside) expect(cmd string, want []string) {
	in.t.Helper()
	f := strings.Fields(cmd)
	got := strings.Split(strings.TrimSuffix(in.run(f[0], f[1:]...), "\n"), "\n")
	if d := diffLines(got, want); d != "" {
		in.t.Errorf("%s: %s", cmd, d)
	}
}

// expectSorted is expect, in any order.
func (in inside) expectSorted(cmd string, want []string) {
	in.t.Helper()
	f := strings.Fields(cmd)
	got := strings.Split(strings.TrimSuffix(in.run(f[0], f[1:]...), "\n"), "\n")
	slices.Sort(got)
	want = slices.Sorted(slices.Values(want))
	if d := diffLines(got, want); d != "" {
		in.t.Errorf("%s: %s", cmd, d)
	}
}

// expectChain compares our chain and grant sets of fam with want, as
// env.chain shows them; the set rules must stand right after the marker.
func (in inside) expectChain(fam family, want []string) {
	in.t.Helper()
	cmd := fam.command()
	lines := strings.Split(strings.TrimSuffix(in.run(cmd, "-S", "WEBKNOCK"), "\n"), "\n")
	v := map[family]string{ipv4: "4", ipv6: "6"}[fam]
	for i, kind := range []string{"g", "n"} {
		rule := `-A WEBKNOCK -m set --match-set WEBKNOCK-` + kind + v + ` src,dst -m comment --comment "webknock:grants" -j ACCEPT`
		if len(lines) < 4 || lines[2+i] != rule {
			in.t.Errorf("%s -S WEBKNOCK: %q, want %q after the marker", cmd, lines, rule)
		}
	}
	sets := newNetlinkSets()
	defer sets.close()
	var els, rest []string
	for _, kind := range []string{"g", "n"} {
		typ, set, err := sets.list(ctx0, "WEBKNOCK-"+kind+v)
		if err != nil {
			in.t.Fatal(err)
		}
		// The header alone tells as much: what the check reads.
		if ctyp, n, err := sets.count(ctx0, "WEBKNOCK-"+kind+v); err != nil || ctyp != typ || n != len(set) {
			in.t.Errorf("count WEBKNOCK-%s%s = %s, %d, %v; want %s, %d", kind, v, ctyp, n, err, typ, len(set))
		}
		for _, el := range set {
			els = append(els, elemLine("WEBKNOCK-"+kind+v, el.String(), el.comment))
		}
	}
	for _, l := range lines {
		if !strings.Contains(l, " --match-set WEBKNOCK-") {
			rest = append(rest, l)
		}
	}
	if d := diffLines(placeElems(rest, els), want); d != "" {
		in.t.Errorf("%s -S WEBKNOCK and its sets: %s", cmd, d)
	}
}

func insideNetns(t *testing.T, env string) {
	ns, parent, _ := strings.Cut(env, " ")
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil || parent == "" || self == parent || !strings.HasPrefix(ns, "wk-fw-") {
		t.Fatalf("%s=%q, and this process is in network namespace %s (%v): not one of the test's own; refusing to touch the firewall",
			netnsEnv, env, self, err)
	}
	if out, err := exec.Command("ip", "netns", "identify").Output(); err != nil || strings.TrimSpace(string(out)) != ns {
		t.Fatalf("ip netns identify = %q, %v; want %s: refusing to touch the firewall", out, err, ns)
	}
	in := inside{t}
	log := &syncBuffer{}
	t.Cleanup(func() { t.Logf("firewall log:\n%s", log) })
	dir := t.TempDir()
	o := Options{
		Backend: backendIPTables, StateDir: dir, Protect: true, Ports: []Port{ssh, dns},
		AlwaysAllow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48")},
		Logger:      newTextLogger(log),
	}
	f, err := Open(ctx0, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	until := time.Now().Add(time.Hour).Truncate(time.Second)
	v4, v6 := netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7")
	grants := []Grant{
		{IP: v4, Sequence: "ssh", Ports: []Port{ssh}, Until: until.Add(-10 * time.Minute)},
		{IP: v4, Sequence: "ssh", Ports: []Port{ssh}, Until: until}, // extends
		{IP: v6, Sequence: "ssh", Ports: []Port{ssh, dns}, Until: until},
	}
	for _, g := range grants {
		if _, err := f.Grant(ctx0, g); err != nil {
			t.Fatalf("Grant(%v): %v", g, err)
		}
	}
	tail4 := []string{
		`-A WEBKNOCK -s 10.0.0.0/8 -p tcp -m tcp --dport 22 -m comment --comment "webknock:allow" -j ACCEPT`,
		`-A WEBKNOCK -s 10.0.0.0/8 -p udp -m udp --dport 53 -m comment --comment "webknock:allow" -j ACCEPT`,
		`-A WEBKNOCK -p tcp -m tcp --dport 22 ! --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m comment --comment "webknock:reset" -j REJECT --reject-with tcp-reset`,
		`-A WEBKNOCK -p tcp -m tcp --dport 22 ! --tcp-flags RST RST -m conntrack --ctdir REPLY -m comment --comment "webknock:reset" -j REJECT --reject-with tcp-reset`,
		`-A WEBKNOCK -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m comment --comment "webknock:protect" -j DROP`,
		`-A WEBKNOCK -p udp -m udp --dport 53 -m conntrack --ctstate NEW -m comment --comment "webknock:protect" -j DROP`,
	}
	tail6 := append([]string{
		`-A WEBKNOCK -s 2001:db8:ffff::/48 -p tcp -m tcp --dport 22 -m comment --comment "webknock:allow" -j ACCEPT`,
		`-A WEBKNOCK -s 2001:db8:ffff::/48 -p udp -m udp --dport 53 -m comment --comment "webknock:allow" -j ACCEPT`,
	}, tail4[2:]...)
	want4 := chainOf(o.StateDir, append([]string{grantLine("192.0.2.7/32", ssh, "ssh", until)}, tail4...)...)
	want6 := chainOf(o.StateDir, append([]string{grantLine("2001:db8::7/128", ssh, "ssh", until), grantLine("2001:db8::7/128", dns, "ssh", until)}, tail6...)...)
	input := []string{"-P INPUT ACCEPT", "-A INPUT -p tcp -m multiport --dports 22 -j WEBKNOCK", "-A INPUT -p udp -m multiport --dports 53 -j WEBKNOCK"}
	check := func(when string) {
		t.Helper()
		t.Logf("checking %s", when)
		in.expectChain(ipv4, want4)
		in.expectChain(ipv6, want6)
		// A jump put back goes on top: the order of ours among
		// themselves does not matter.
		in.expectSorted("iptables -S INPUT", input)
		in.expectSorted("ip6tables -S INPUT", input)
	}
	check("after the grants")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	check("after Close")

	// What a crash, an administrator and time leave behind.
	past := time.Now().Add(-time.Minute).Truncate(time.Second)
	g4 := rule{kind: kindGrant, src: netip.MustParsePrefix("192.0.2.7/32"), port: ssh, seq: "ssh", until: until.Unix()}
	expired := rule{kind: kindGrant, src: netip.MustParsePrefix("192.0.2.9/32"), port: ssh, seq: "ssh", until: past.Unix()}
	in.run("iptables", append([]string{"-I", "WEBKNOCK", "1"}, expired.args()...)...)
	in.run("iptables", append([]string{"-I", "WEBKNOCK", "3"}, g4.args()...)...)
	in.run("iptables", "-A", "WEBKNOCK", "-s", "198.51.100.1", "-j", "ACCEPT")
	in.run("ipset", "del", "WEBKNOCK-g6", "2001:db8::7,udp:53")
	in.run("ipset", "add", "WEBKNOCK-g4", "198.51.100.9,tcp:22", "timeout", "600", "comment", "not ours")
	in.run("ip6tables", "-I", "WEBKNOCK", "-p", "tcp", "--dport", "22", "-m", "comment", "--comment", "has \"quotes\"", "-j", "ACCEPT")
	// An earlier webknock's chain: a plain jump.
	in.run("iptables", "-I", "INPUT", "-j", "WEBKNOCK")
	for run := range 2 {
		f, err = Open(ctx0, o)
		if err != nil {
			t.Fatalf("Open again: %v", err)
		}
		check(fmt.Sprintf("after reopen %d", run+1))
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}

	// Revoke and expiry, with a fake clock for webknock's own deletes.
	n, err := o.normalize()
	if err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock(time.Now())
	n.Clock = clk
	tabs, err := n.tables(ctx0, true)
	if err != nil {
		t.Fatal(err)
	}
	fw := watch(newFirewall(n, iptRulesets(&n, tabs)))
	if err := fw.start(ctx0); err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	if err := fw.revoke(v6); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	want6 = chainOf(o.StateDir, tail6...)
	in.expectChain(ipv6, want6)
	fw.advance(clk, time.Until(until)+time.Second)
	fw.waitFor(t, "the IPv4 grant to expire", func() bool { return len(fw.Grants()) == 0 })
	want4 = chainOf(o.StateDir, tail4...)
	check("after revoke and expiry")

	// Others' hands on our chains, repaired by the integrity check, which
	// the fake clock drives.
	later := clk.Now().Add(time.Hour).Truncate(time.Second)
	if err := fw.grant(Grant{IP: v4, Sequence: "ssh", Ports: []Port{ssh}, Until: later}); err != nil {
		t.Fatal(err)
	}
	want4 = chainOf(o.StateDir, append([]string{grantLine("192.0.2.7/32", ssh, "ssh", later)}, tail4...)...)
	reload := "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
	// iptables here is iptables-nft: the monitor tells of changes to the
	// chain and the hook, and the repair comes at once; a change to a set
	// waits for the check.
	for _, tc := range []struct {
		name   string
		cmds   []string
		fams   uint64
		hinted bool
	}{
		{"chain flushed", []string{"iptables -F WEBKNOCK"}, 1, true},
		{"jump deleted", []string{"ip6tables -D INPUT -p udp -m multiport --dports 53 -j WEBKNOCK"}, 1, true},
		// In one commit: the monitor would put the jumps back before -X.
		{"chain deleted", []string{"iptables-restore --noflush"}, 1, true},
		{"grant set flushed", []string{"ipset flush WEBKNOCK-g4"}, 1, false},
		{"firewall reloaded", []string{"iptables-restore", "ip6tables-restore"}, 2, true},
	} {
		if !strings.Contains(in.run("iptables", "-V"), "nf_tables") && tc.hinted {
			t.Logf("%s: iptables-legacy: no monitor", tc.name)
			tc.hinted = false
		}
		before := fw.Health().Repairs
		for _, c := range tc.cmds {
			// Through a shell: iptables is then not the child of this
			// process, which the monitor takes for the firewall's own.
			cmd := exec.Command("sh", "-c", c+"; true")
			cmd.Stdin = strings.NewReader(reload)
			if tc.name == "chain deleted" {
				cmd.Stdin = strings.NewReader("*filter\n-D INPUT -p tcp -m multiport --dports 22 -j WEBKNOCK\n-D INPUT -p udp -m multiport --dports 53 -j WEBKNOCK\n" +
					"-F WEBKNOCK\n-X WEBKNOCK\nCOMMIT\n")
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v: %s", c, err, out)
			}
		}
		now := clk.Now()
		repaired := func() bool { return fw.Health().Repairs == before+tc.fams && fw.Health().InSync }
		if tc.hinted {
			fw.waitFor(t, tc.name+" repaired at once", repaired)
		} else {
			fw.checkUntil(t, clk, tc.name+" repaired", func() bool { return repaired() && fw.Health().Checked.After(now) })
			if d := clk.Now().Sub(now); d != n.CheckInterval {
				t.Errorf("%s: repaired after %v, want one check interval", tc.name, d)
			}
		}
		check(tc.name + " and repaired")
	}
	if err := fw.revoke(v4); err != nil {
		t.Fatal(err)
	}
	want4 = chainOf(o.StateDir, tail4...)
	fw.Close()

	if err := Flush(ctx0, o); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if out := in.run("ipset", "list", "-n"); strings.Contains(out, "WEBKNOCK") {
		t.Errorf("ipset list after Flush: %s", out)
	}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		if out, err := exec.Command(cmd, "-S", "WEBKNOCK").CombinedOutput(); err == nil {
			t.Errorf("%s -S WEBKNOCK after Flush: %s", cmd, out)
		}
		in.expect(cmd+" -S INPUT", []string{"-P INPUT ACCEPT"})
	}
	if fileExists(filepath.Join(dir, stateFile)) {
		t.Error("Flush left the state file")
	}
	if err := Flush(ctx0, o); err != nil {
		t.Errorf("Flush of nothing: %v", err)
	}

	wrapped(t, in, o)
	foreignChain(t, in, o)
	probed(t, in, o)
	ipv6Missing(t, in, o)
	independent(t, in, o)
}

// saved is the whole ruleset of both families, to tell that nothing
// changed.
func (in inside) saved() string {
	in.t.Helper()
	var b strings.Builder
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, l := range strings.Split(in.run(cmd, "-S"), "\n") {
			b.WriteString(cmd + " " + l + "\n")
		}
	}
	return b.String()
}

// foreignChain: a chain of fail2ban's named as webknock's own is refused by
// Probe, Open and Flush, and its rules are intact afterwards.
func foreignChain(t *testing.T, in inside, o Options) {
	t.Log("a chain that is not webknock's")
	for _, cmd := range []string{"iptables", "ip6tables"} {
		in.run(cmd, "-N", "f2b-sshd")
		in.run(cmd, "-A", "f2b-sshd", "-j", "RETURN")
	}
	in.run("iptables", "-I", "f2b-sshd", "1", "-s", "192.0.2.5", "-j", "REJECT", "--reject-with", "icmp-port-unreachable")
	in.run("ip6tables", "-I", "f2b-sshd", "1", "-s", "2001:db8::5", "-j", "REJECT")
	defer func() {
		for _, cmd := range []string{"iptables", "ip6tables"} {
			in.run(cmd, "-F", "f2b-sshd")
			in.run(cmd, "-X", "f2b-sshd")
		}
	}()
	before := in.saved()
	o.Chain = "f2b-sshd"
	want := "firewall.chain: chain f2b-sshd in table filter (IPv4) exists and is not webknock's: 2 rules that webknock did not write; choose another firewall.chain"
	var oe *OptionError
	if err := Probe(ctx0, o); err == nil || !strings.HasPrefix(err.Error(), want) || !errors.As(err, &oe) {
		t.Errorf("Probe = %v, want %s", err, want)
	}
	if f, err := Open(ctx0, o); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Open = %v, want %s", err, want)
		if f != nil {
			f.Close()
		}
	}
	if err := Flush(ctx0, o); err == nil || !strings.Contains(err.Error(), "is not webknock's") {
		t.Errorf("Flush = %v, want it refused", err)
	}
	if after := in.saved(); after != before {
		t.Errorf("the refused chain changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	in.expect("iptables -S f2b-sshd", []string{"-N f2b-sshd", "-A f2b-sshd -s 192.0.2.5/32 -j REJECT --reject-with icmp-port-unreachable", "-A f2b-sshd -j RETURN"})
}

// probed: Probe refuses a hook that does not exist, and changes nothing
// either way.
func probed(t *testing.T, in inside, o Options) {
	t.Log("probe")
	before := in.saved()
	if err := Probe(ctx0, o); err != nil {
		t.Errorf("Probe = %v", err)
	}
	o.Hook = "DOCKER-USER"
	var oe *OptionError
	if err := Probe(ctx0, o); err == nil || !errors.As(err, &oe) || oe.Option != "hook" ||
		!strings.Contains(err.Error(), "chain DOCKER-USER does not exist in table filter (IPv4)") {
		t.Errorf("Probe without DOCKER-USER = %v", err)
	}
	if after := in.saved(); after != before {
		t.Errorf("Probe changed the firewall:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// ipv6Missing: on this host, which has IPv6, an ip6tables that is not
// installed refuses the start with protect on, and changes nothing; with
// protect off, or IPv6 left alone, IPv4 alone is managed.
func ipv6Missing(t *testing.T, in inside, o Options) {
	t.Log("ip6tables missing")
	if !hostHasIPv6() {
		t.Fatal("this test needs a kernel with IPv6")
	}
	real, err := exec.LookPath("iptables")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(real, filepath.Join(dir, "iptables")); err != nil {
		t.Fatal(err)
	}
	before := in.saved()
	path := os.Getenv("PATH")
	os.Setenv("PATH", dir)
	defer os.Setenv("PATH", path)
	want := "firewall.ipv6: ip6tables is not installed, but this host has IPv6 and protect is on"
	if err := Probe(ctx0, o); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Probe = %v, want %s", err, want)
	}
	if f, err := Open(ctx0, o); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Open = %v, want %s", err, want)
		if f != nil {
			f.Close()
		}
	}
	os.Setenv("PATH", path)
	if after := in.saved(); after != before {
		t.Errorf("a refused Open changed the firewall:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	os.Setenv("PATH", dir)
	for _, edit := range []func(*Options){
		func(o *Options) { o.Protect = false },
		func(o *Options) { o.IPv6Off = true },
	} {
		p := o
		edit(&p)
		f, err := Open(ctx0, p)
		if err != nil {
			t.Fatalf("Open(protect %v, IPv6 off %v) = %v", p.Protect, p.IPv6Off, err)
		}
		f.Close()
		os.Setenv("PATH", path)
		if out, err := exec.Command("ip6tables", "-S", "WEBKNOCK").CombinedOutput(); err == nil {
			t.Errorf("ip6tables -S WEBKNOCK: %s; want no IPv6 chain", out)
		}
		in.run("iptables", "-S", "WEBKNOCK")
		os.Setenv("PATH", dir)
		if err := Flush(ctx0, p); err != nil {
			t.Errorf("Flush: %v", err)
		}
	}
}

// independent: while iptables hangs (in a change of the protect tail), a
// grant to an IPv6 client completes; the IPv4 change is killed, and made
// once iptables answers again.
func independent(t *testing.T, in inside, o Options) {
	t.Log("iptables hangs, ip6tables does not")
	wr := newWrapper(t)
	n, err := o.normalize()
	if err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock(time.Now())
	n.Clock = clk
	f := watch(newFirewall(n, iptRulesets(&n, wr.tables(&n))))
	f.rt(ipv4).delays = nil
	exited := make(chan struct{}, 16)
	f.rt(ipv4).exited = func() { exited <- struct{}{} }
	if err := f.start(ctx0); err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	until := time.Now().Add(time.Hour).Truncate(time.Second)
	deadline := time.After(20 * time.Second)
	wait := func(ch <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no %s", what)
		}
	}
	off := n
	off.Protect = false
	wr.misbehave("hang", 100)
	v4 := make(chan error, 1)
	go func() { v4 <- f.Reconfigure(ctx0, off) }()
	wait(wr.hung, "hung iptables")
	ctx, cancel := context.WithTimeout(ctx0, 10*time.Second)
	defer cancel()
	if _, err := f.Firewall.Grant(ctx, Grant{IP: mustAddr("2001:db8::7"), Sequence: "ssh", Ports: []Port{ssh}, Until: until}); err != nil {
		t.Fatalf("IPv6 grant while iptables hangs = %v", err)
	}
	in.expectChain(ipv6, chainOf(o.StateDir, grantLine("2001:db8::7/128", ssh, "ssh", until)))

	// The hung calls are killed (the change's, then its undo's); the IPv4
	// change fails, its tail kept.
	f.advance(clk, n.CallTimeout, ipv6)
	for done := false; !done; {
		select {
		case err := <-v4:
			if err == nil {
				t.Fatal("Reconfigure while iptables hangs = nil, want an error")
			}
			done = true
		case <-exited:
		case <-wr.hung:
			f.advance(clk, n.CallTimeout, ipv6)
		case <-deadline:
			t.Fatal("Reconfigure did not return")
		}
	}
	wr.misbehave("none", 0)
	f.checkUntil(t, clk, "iptables to answer", func() bool { return f.Health().InSync })
	in.expectChain(ipv4, chainOf(o.StateDir, tailOf(o, ipv4)...))
	if err := f.Reconfigure(ctx0, off); err != nil {
		t.Fatalf("Reconfigure once iptables answers = %v", err)
	}
	in.expectChain(ipv4, chainOf(o.StateDir))
	f.Close()
	if err := Flush(ctx0, o); err != nil {
		t.Errorf("Flush: %v", err)
	}
}

// wrapper is an iptables, first on PATH, that misbehaves before it runs
// the real one: while dir/left holds a number above 0, each insert (-I)
// counts it down and fails as dir/mode says: "lock" as with the xtables
// lock held, "hang" for ever, after a byte to dir/fifo, which hung tells.
type wrapper struct {
	t    *testing.T
	dir  string
	hung chan struct{}
}

func newWrapper(t *testing.T) *wrapper {
	real, err := exec.LookPath("iptables")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := `#!/bin/sh
d='` + dir + `'
case " $* " in *" -I "*|*" -A "*|*" -D "*) insert=1 ;; esac
if [ -n "$insert" ] && [ "$(cat "$d/left")" -gt 0 ]; then
	echo $(($(cat "$d/left") - 1)) >"$d/left"
	case "$(cat "$d/mode")" in
	lock)
		echo 'Another app is currently holding the xtables lock. Stopped waiting after 1s.' >&2
		exit 4 ;;
	hang)
		echo $$ >>"$d/pids"
		printf x >"$d/fifo"
		exec sleep 3600 ;;
	esac
fi
exec '` + real + `' "$@"
`
	if err := os.WriteFile(filepath.Join(dir, "iptables"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	w := &wrapper{t: t, dir: dir, hung: make(chan struct{}, 16)}
	w.misbehave("none", 0)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	wr, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0) // no EOF between hangs
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wr.Close(); r.Close() })
	go func() {
		b := make([]byte, 1)
		for {
			if _, err := r.Read(b); err != nil {
				return
			}
			w.hung <- struct{}{}
		}
	}()
	return w
}

func (w *wrapper) misbehave(mode string, times int) {
	w.t.Helper()
	os.WriteFile(filepath.Join(w.dir, "mode"), []byte(mode), 0o600)
	if err := os.WriteFile(filepath.Join(w.dir, "left"), []byte(strconv.Itoa(times)), 0o600); err != nil {
		w.t.Fatal(err)
	}
}

// tables returns the tables of n with the wrapper as iptables.
func (w *wrapper) tables(n *Options) [2]tables {
	w.t.Helper()
	path := os.Getenv("PATH")
	os.Setenv("PATH", w.dir+string(os.PathListSeparator)+path)
	tabs, err := n.tables(ctx0, true)
	os.Setenv("PATH", path)
	if err != nil {
		w.t.Fatal(err)
	}
	if tabs[ipv4].(*execTables).path != filepath.Join(w.dir, "iptables") {
		w.t.Fatalf("the firewall runs %s, not the wrapper", tabs[ipv4].(*execTables).path)
	}
	return tabs
}

// wrapped runs the firewall on an iptables wrapper, first on PATH, that
// misbehaves before it runs the real iptables: retries, kills and the
// suspension against the real kernel. Grants go to the ipsets over
// netlink, not through iptables: what runs iptables is a change of the
// protect tail (Reconfigure) and the integrity check.
func wrapped(t *testing.T, in inside, o Options) {
	wr := newWrapper(t)
	dir, hung, misbehave := wr.dir, wr.hung, wr.misbehave
	o.LockWait = time.Second
	o.Protect = false
	n, err := o.normalize()
	if err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock(time.Now())
	n.Clock = clk
	tabs := wr.tables(&n)
	// IPv4 only: the clock that the hangs drive would time out the
	// calls of an IPv6 worker running meanwhile (the families' independence
	// has a test of its own).
	tabs[ipv6] = nil
	f := watch(newFirewall(n, iptRulesets(&n, tabs)))
	exited := make(chan struct{}, 16)
	f.rt(ipv4).exited = func() { exited <- struct{}{} }
	if err := f.start(ctx0); err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e := &env{t: t, clk: clk}
	until := time.Now().Add(time.Hour).Truncate(time.Second)
	if err := f.grant(Grant{IP: mustAddr("192.0.2.7"), Sequence: "ssh", Ports: []Port{ssh}, Until: until}); err != nil {
		t.Fatal(err)
	}
	protect := func(on bool) error {
		p := n
		p.Protect = on
		return f.Reconfigure(ctx0, p)
	}
	expect := func(on bool) {
		t.Helper()
		var tail []string
		if on {
			p := o
			p.Protect = true
			tail = tail4(p)
		}
		in.expectChain(ipv4, chainOf(o.StateDir, append([]string{grantLine("192.0.2.7/32", ssh, "ssh", until)}, tail...)...))
	}

	t.Log("the xtables lock held twice: retried, applied")
	misbehave("lock", 2)
	waits, err := e.drive(f, nil, nil, func() error { return protect(true) })
	if err != nil || !slices.Equal(waits, defaultDelays) {
		t.Fatalf("Reconfigure = %v after waits %v, want success after %v", err, waits, defaultDelays)
	}
	if h := f.Health(); h.LockBusy != 2 || h.Failures != 2 {
		t.Errorf("Health() = %+v, want two lock failures", h)
	}
	expect(true)

	t.Log("one call hangs: killed, retried, applied")
	misbehave("hang", 1)
	if _, err := e.drive(f, hung, exited, func() error { return protect(false) }); err != nil {
		t.Fatalf("Reconfigure = %v", err)
	}
	if h := f.Health(); h.TimedOut != 1 || h.Stuck != 0 {
		t.Errorf("Health() = %+v, want one timeout, nothing stuck", h)
	}
	expect(false)

	t.Log("every call hangs: two killed, then calls suspended; nothing changed")
	misbehave("hang", 100)
	_, err = e.drive(f, hung, exited, func() error { return protect(true) })
	if !errors.Is(err, errSuspended) {
		t.Fatalf("Reconfigure = %v, want errSuspended", err)
	}
	if h := f.Health(); h.TimedOut != 3 || h.Stuck != 0 || !h.Suspended || h.InSync {
		t.Errorf("Health() = %+v, want 3 timeouts, suspended", h)
	}
	misbehave("none", 0)
	expect(false)
	pids, _ := os.ReadFile(filepath.Join(dir, "pids"))
	for _, pid := range strings.Fields(string(pids)) {
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		if _, rest, ok := strings.Cut(string(stat), ") "); err == nil && ok && !strings.HasPrefix(rest, "Z") {
			t.Errorf("hung iptables %s survived its kill: %s", pid, stat)
		}
	}

	t.Log("a call timeout later, iptables answers again")
	f.checkUntil(t, clk, "the end of the suspension", func() bool { return f.Health().InSync })
	if err := protect(true); err != nil {
		t.Fatalf("Reconfigure after the suspension = %v", err)
	}
	expect(true)
	f.Close()
	if err := Flush(ctx0, o); err != nil {
		t.Errorf("Flush: %v", err)
	}
}

// tail4 is the IPv4 protect tail of o, as iptables -S prints it.
func tail4(o Options) []string { return tailOf(o, ipv4) }

// tailOf is the protect tail of o of a family, as iptables -S prints it.
func tailOf(o Options, fam family) []string {
	n, _ := o.normalize()
	var out []string
	for _, r := range tailRules(tail{protect: n.Protect, allow: n.AlwaysAllow, ports: n.Ports}, fam) {
		m := newMemTables(fam, nil)
		m.NewChain(ctx0, table, "WEBKNOCK")
		m.Append(ctx0, table, "WEBKNOCK", r.args()...)
		lines, _ := m.List(ctx0, table, "WEBKNOCK")
		out = append(out, lines[1])
	}
	return out
}
