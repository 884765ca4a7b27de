package firewall

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	unable := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("WK_E2E") == "require" {
			t.Fatalf(format+" (WK_E2E=require makes this test mandatory)", args...)
		}
		t.Skipf("skipping: "+format+"; set WK_E2E=require to make this a failure", args...)
	}
	if os.Geteuid() != 0 {
		unable("the real-iptables test needs root to create a network namespace")
	}
	for _, p := range []string{"ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(p); err != nil {
			unable("the real-iptables test needs %s: %v", p, err)
		}
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
		if err := f.Grant(ctx0, g); err != nil {
			t.Fatalf("Grant(%v): %v", g, err)
		}
	}
	tail4 := []string{
		`-A WEBKNOCK -s 10.0.0.0/8 -p tcp -m tcp --dport 22 -m comment --comment "webknock:allow" -j ACCEPT`,
		`-A WEBKNOCK -s 10.0.0.0/8 -p udp -m udp --dport 53 -m comment --comment "webknock:allow" -j ACCEPT`,
		`-A WEBKNOCK -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m comment --comment "webknock:protect" -j DROP`,
		`-A WEBKNOCK -p udp -m udp --dport 53 -m conntrack --ctstate NEW -m comment --comment "webknock:protect" -j DROP`,
	}
	tail6 := []string{
		`-A WEBKNOCK -s 2001:db8:ffff::/48 -p tcp -m tcp --dport 22 -m comment --comment "webknock:allow" -j ACCEPT`,
		`-A WEBKNOCK -s 2001:db8:ffff::/48 -p udp -m udp --dport 53 -m comment --comment "webknock:allow" -j ACCEPT`,
		tail4[2], tail4[3],
	}
	want4 := chainOnly(append([]string{grantLine("192.0.2.7/32", ssh, "ssh", until)}, tail4...)...)
	want6 := chainOnly(append([]string{grantLine("2001:db8::7/128", ssh, "ssh", until), grantLine("2001:db8::7/128", dns, "ssh", until)}, tail6...)...)
	input := []string{"-P INPUT ACCEPT", "-A INPUT -j WEBKNOCK"}
	check := func(when string) {
		t.Helper()
		t.Logf("checking %s", when)
		in.expect("iptables -S WEBKNOCK", want4)
		in.expect("ip6tables -S WEBKNOCK", want6)
		in.expect("iptables -S INPUT", input)
		in.expect("ip6tables -S INPUT", input)
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
	in.run("ip6tables", "-D", "WEBKNOCK", "-s", "2001:db8::7/128", "-p", "udp", "--dport", "53", "-m", "time",
		"--datestop", until.UTC().Format(datestopLayout), "-m", "comment", "--comment", grantComment("ssh", until.Unix()), "-j", "ACCEPT")
	in.run("ip6tables", "-I", "WEBKNOCK", "-p", "tcp", "--dport", "22", "-m", "comment", "--comment", "has \"quotes\"", "-j", "ACCEPT")
	// The missing rule comes back at the top.
	want6[1], want6[2] = want6[2], want6[1]
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
	tabs, err := n.tables()
	if err != nil {
		t.Fatal(err)
	}
	idle := make(chan struct{}, 1)
	ff := newFirewall(n, tabs)
	ff.idle = func() {
		select {
		case idle <- struct{}{}:
		default:
		}
	}
	if err := ff.start(ctx0); err != nil {
		t.Fatal(err)
	}
	fw := &fw{ff, idle}
	defer fw.Close()
	if err := fw.Revoke(ctx0, v6); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	want6 = chainOnly(tail6...)
	in.expect("ip6tables -S WEBKNOCK", want6)
	clk.Advance(time.Until(until) + time.Second)
	fw.waitFor(t, "the IPv4 grant to expire", func() bool { return len(fw.Grants()) == 0 })
	want4 = chainOnly(tail4...)
	check("after revoke and expiry")
	fw.Close()

	if err := Flush(ctx0, o); err != nil {
		t.Fatalf("Flush: %v", err)
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
}
