package main

// The fleet end to end: a real nats-server cluster, nginx and a detector,
// two SSH hosts whose enforcers change real firewalls (one iptables, one
// nftables), each in a network namespace of its own on one bridge.

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
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

	"github.com/webknock/webknock/fleet"
)

// Addresses of the fleet's namespaces (the web server is srvV4, the
// clients cliV4).
const (
	busV4 = "192.0.2.30"
)

var enfV4 = []string{"192.0.2.21", "192.0.2.22"}

// natsServer is the nats-server the fleet tests run: WK_NATS_SERVER, or
// nats-server on PATH (.ci/run builds it from its module).
func natsServer() string {
	if p := os.Getenv("WK_NATS_SERVER"); p != "" {
		return p
	}
	return "nats-server"
}

// fleetWorld is a fleet's namespaces: the web server's (e.srv), the
// clients' (e.cli), the bus's and the enforcers', joined by a bridge.
type fleetWorld struct {
	*e2e
	bus  string
	enfs []string
	nats []*exec.Cmd // the cluster's nodes, nil when stopped
	key  ed25519.PrivateKey
}

func newFleetWorld(t testing.TB, nodes int) *fleetWorld {
	t.Helper()
	requireE2E(t, "nginx", "nft", natsServer())
	e := newWorld(t, "webknock-fleet-")
	id, dir := e.id, e.dir
	w := &fleetWorld{e2e: e, bus: "wkb" + id, enfs: []string{"wke1" + id, "wke2" + id}, nats: make([]*exec.Cmd, nodes)}
	lan := "wkl" + id
	all := append([]string{lan, e.srv, e.cli, w.bus}, w.enfs...)
	for _, ns := range all {
		e.must("ip", "netns", "add", ns)
		ns := ns
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		e.must("ip", "-n", ns, "link", "set", "lo", "up")
	}
	e.must("ip", "-n", lan, "link", "add", "br0", "type", "bridge")
	e.must("ip", "-n", lan, "link", "set", "br0", "up")
	addrs := map[string][]string{
		e.srv: {srvV4 + "/24", srvV6 + "/64"}, e.cli: append(prefixed(cliV4, "/24"), prefixed(cliV6, "/64")...),
		w.bus: {busV4 + "/24"}, w.enfs[0]: {enfV4[0] + "/24"}, w.enfs[1]: {enfV4[1] + "/24"},
	}
	for i, ns := range all[1:] {
		port := fmt.Sprintf("wkf%d%s", i, id)
		e.must("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", lan)
		e.must("ip", "-n", lan, "link", "set", port, "master", "br0", "up")
		for _, a := range addrs[ns] {
			args := []string{"-n", ns, "addr", "add", a, "dev", "eth0"}
			if strings.Contains(a, ":") {
				args = append(args, "nodad")
			}
			e.must("ip", args...)
		}
		e.must("ip", "-n", ns, "link", "set", "eth0", "up")
	}
	e.must("mkdir", "-p", filepath.Join(dir, "www"), filepath.Join(dir, "state"))
	_, w.key, _ = ed25519.GenerateKey(rand.Reader)
	return w
}

func prefixed(as []string, suffix string) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a + suffix
	}
	return out
}

// natsURLs are the client URLs of the cluster's nodes.
func (w *fleetWorld) natsURLs() []string {
	var out []string
	for i := range w.nats {
		out = append(out, fmt.Sprintf("nats://%s:%d", busV4, 4222+i))
	}
	return out
}

// startNode starts node i of the cluster (its store kept across restarts).
func (w *fleetWorld) startNode(i int) {
	w.t.Helper()
	var routes []string
	for j := range w.nats {
		routes = append(routes, fmt.Sprintf("nats-route://%s:%d", busV4, 6222+j))
	}
	cluster := ""
	if len(w.nats) > 1 {
		cluster = fmt.Sprintf("cluster { name: wk, listen: \"%s:%d\", routes: [%s] }", busV4, 6222+i, strings.Join(routes, ", "))
	}
	conf := filepath.Join(w.dir, fmt.Sprintf("nats%d.conf", i))
	write(w.t, conf, fmt.Sprintf(`server_name: n%[1]d
listen: "%[2]s:%[3]d"
http: "%[2]s:%[4]d"
jetstream { store_dir: "%[5]s/nats%[1]d" }
%[6]s
`, i, busV4, 4222+i, 8222+i, w.dir, cluster))
	cmd := w.in(w.bus, natsServer(), "-c", conf)
	logf, err := os.Create(filepath.Join(w.dir, fmt.Sprintf("nats%d.log", i)))
	if err != nil {
		w.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	w.nats[i] = cmd
	w.t.Cleanup(func() {
		if w.nats[i] == cmd {
			stop(cmd)
		}
		logf.Close()
	})
}

// startBus starts every node and waits until JetStream is ready on all.
func (w *fleetWorld) startBus() {
	w.t.Helper()
	for i := range w.nats {
		w.startNode(i)
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := range w.nats {
		url := fmt.Sprintf("http://%s:%d/healthz", busV4, 8222+i)
		for w.in(w.bus, "curl", "-sf", "-o", "/dev/null", url).Run() != nil {
			if time.Now().After(deadline) {
				w.t.Fatalf("nats node %d not healthy within 30s", i)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// stopNode stops node i: SIGKILL when kill, else SIGTERM.
func (w *fleetWorld) stopNode(i int, kill bool) {
	cmd := w.nats[i]
	w.nats[i] = nil
	if kill {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		return
	}
	stop(cmd)
}

// grantsLeader is the node that leads the grants bucket's stream, where
// the enforcers' watches have their consumers: the node whose loss hurts
// most.
func (w *fleetWorld) grantsLeader() int {
	w.t.Helper()
	for i, cmd := range w.nats {
		if cmd == nil {
			continue
		}
		out, err := w.in(w.bus, "curl", "-sf", fmt.Sprintf("http://%s:%d/jsz?accounts=true&streams=true", busV4, 8222+i)).Output()
		if err != nil {
			continue
		}
		var jsz struct {
			Accounts []struct {
				Streams []struct {
					Name    string `json:"name"`
					Cluster struct {
						Leader string `json:"leader"`
					} `json:"cluster"`
				} `json:"stream_detail"`
			} `json:"account_details"`
		}
		if err := json.Unmarshal(out, &jsz); err != nil {
			w.t.Fatalf("jsz: %v", err)
		}
		for _, a := range jsz.Accounts {
			for _, st := range a.Streams {
				if st.Name == "KV_"+fleet.GrantsBucket("e2e") && strings.HasPrefix(st.Cluster.Leader, "n") {
					n, err := strconv.Atoi(st.Cluster.Leader[1:])
					if err == nil && n < len(w.nats) {
						return n
					}
				}
			}
		}
	}
	w.t.Fatal("no node leads the grants stream")
	return -1
}

// fleetBlock is the fleet section of a daemon of role.
func (w *fleetWorld) fleetBlock(role string) string {
	b := "fleet:\n  role: " + role + "\n  servers: [" + strings.Join(w.natsURLs(), ", ") + "]\n  group: e2e\n"
	if fleet.IsDetector(role) {
		keyFile := filepath.Join(w.dir, "fleet.key")
		if _, err := os.Stat(keyFile); err != nil {
			pem, err := fleet.MarshalSigningKey(w.key)
			if err != nil {
				w.t.Fatal(err)
			}
			if err := os.WriteFile(keyFile, pem, 0o600); err != nil {
				w.t.Fatal(err)
			}
		}
		b += "  signing_key_file: " + keyFile + "\n"
		b += fmt.Sprintf("  replicas: %d\n", len(w.nats))
	}
	if fleet.IsEnforcer(role) {
		b += "  trusted_keys: [" + fleet.FormatPublicKey(w.key.Public().(ed25519.PublicKey)) + "]\n"
	}
	return b
}

// startDetector starts the web server's daemon, a detector.
func (w *fleetWorld) startDetector(window string) *daemonProc {
	w.t.Helper()
	cfg := w.writeConfig(e2eConf{name: "detector.yaml", window: window, more: w.fleetBlock(fleet.RoleDetector)})
	return w.startDaemon(cfg)
}

// startEnforcer starts enforcer i's daemon with backend, and its SSH
// stand-in.
func (w *fleetWorld) startEnforcer(i int, backend, window string) *daemonProc {
	w.t.Helper()
	ns := w.enfs[i]
	state := filepath.Join(w.dir, fmt.Sprintf("state-enf%d", i))
	if err := os.MkdirAll(state, 0o700); err != nil {
		w.t.Fatal(err)
	}
	old := w.backend
	w.backend = backend
	cfg := w.writeConfig(e2eConf{name: fmt.Sprintf("enforcer%d.yaml", i), window: window, state: state,
		socket: w.enforcerSocket(i), ipv6Off: true, more: w.fleetBlock(fleet.RoleEnforcer)})
	w.backend = old
	listen := w.in(ns, os.Args[0], "[::]:22")
	listen.Env = append(os.Environ(), helperEnv+"=listen")
	out, err := listen.StdoutPipe()
	if err != nil {
		w.t.Fatal(err)
	}
	w.background(listen)
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		w.t.Fatalf("SSH stand-in on %s: %q %v", ns, line, err)
	}
	return w.startDaemonCmd(w.in(ns, webknockBinary(w.t), "run", "-c", cfg, "--json-logs", "--debug"))
}

func (w *fleetWorld) enforcerSocket(i int) string {
	return filepath.Join(w.dir, fmt.Sprintf("run-enf%d", i), "webknock.sock")
}

// reaches reports whether src can connect to port 22 of enforcer i.
func (w *fleetWorld) reaches(src string, i int) bool {
	w.t.Helper()
	return w.dials(src, net.JoinHostPort(enfV4[i], "22"))
}

// assertReach checks that src reaches both enforcers, or neither.
func (w *fleetWorld) assertReach(src string, want bool, when string) {
	w.t.Helper()
	for i := range w.enfs {
		if got := w.reaches(src, i); got != want {
			w.t.Errorf("%s: %s reaches enforcer %d = %v, want %v", when, src, i, got, want)
		}
	}
}

// knockAll knocks from src, waits until the detector has published and
// both enforcers have applied the grant, and returns its end.
func (w *fleetWorld) knockAll(det *daemonProc, enfs []*daemonProc, src string) time.Time {
	w.t.Helper()
	return w.knockAllWithin(det, enfs, src, 15*time.Second)
}

// knockAllWithin is knockAll, the enforcers given limit to apply.
func (w *fleetWorld) knockAllWithin(det *daemonProc, enfs []*daemonProc, src string, limit time.Duration) time.Time {
	w.t.Helper()
	w.knock(src, fullKnock...)
	det.wait(w.t, "grant published", src)
	var until time.Time
	for _, d := range enfs {
		until = untilOf(w.t, d.waitFor(w.t, "fleet: grant applied", src, limit))
	}
	return until
}

// One knock on the web server opens both SSH hosts; the loss of one of
// three bus nodes changes nothing; with the whole bus down nothing new
// opens and what is open ends on time in each kernel; with the bus back,
// knocks open again and a revoke on the detector closes both hosts.
func TestE2EFleet(t *testing.T) {
	w := newFleetWorld(t, 3)
	w.startBus()
	w.startNginx()
	const window = "25s"
	enfs := []*daemonProc{w.startEnforcer(0, "iptables", window), w.startEnforcer(1, "nftables", window)}
	det := w.startDetector(window)
	a, b, c, d := cliV4[0], cliV4[1], cliV4[2], cliV4[3]
	w.assertReach(a, false, "before any knock")

	untilA := w.knockAll(det, enfs, a)
	w.assertReach(a, true, "after the knock")
	w.assertReach(b, false, "another client, after the knock")
	out, err := exec.Command(webknockBinary(t), "status", "-c", filepath.Join(w.dir, "enforcer0.yaml")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), a) || !strings.Contains(string(out), "fleet:") {
		t.Errorf("status on an enforcer does not say the grant came from the fleet: %v\n%s", err, out)
	}

	// The stream's leader killed: a watch whose consumer lived there
	// falls behind the stream, the enforcer watches again, and the grant
	// arrives.
	w.stopNode(w.grantsLeader(), true)
	w.knockAll(det, enfs, b)
	w.assertReach(b, true, "knocked with one of three bus nodes killed")

	for i := range w.nats {
		if w.nats[i] != nil {
			w.stopNode(i, false)
		}
	}
	w.knock(c, fullKnock...)
	det.wait(t, "grant not published: nothing opens", c)
	w.assertReach(c, false, "knocked with the bus down")
	w.assertReach(a, true, "a grant made before the bus went down")
	waitUntil(t, untilA)
	w.assertReach(a, false, "a grant whose end came while the bus was down")

	w.startBus()
	for _, e := range enfs {
		e.wait(t, "fleet: grants of the bus applied", "")
	}
	w.knockAll(det, enfs, d)
	w.assertReach(d, true, "knocked after the bus came back")
	w.assertReach(c, false, "the knock refused while the bus was down, after it came back")
	if out, err := exec.Command(webknockBinary(t), "revoke", d, "-c", filepath.Join(w.dir, "detector.yaml")).CombinedOutput(); err != nil {
		t.Fatalf("revoke on the detector: %v\n%s", err, out)
	}
	for _, e := range enfs {
		e.wait(t, "fleet: grant revoked: the key was deleted from the bus", d)
	}
	w.assertReach(d, false, "revoked on the detector")
}

// BenchmarkE2EFleet measures the fleet on a three-node cluster: the time
// from the knock page's response to the grant applied by each enforcer
// (and to the first connect that passes), and the time 10,000 grants
// written to the log at once take to be applied by both enforcers.
//
//	sudo go test ./cmd/webknock -run '^$' -bench E2EFleet/knock -benchtime 50x
//	sudo go test ./cmd/webknock -run '^$' -bench E2EFleet/burst -benchtime 1x
func BenchmarkE2EFleet(b *testing.B) {
	b.Run("knock-to-open", benchFleetKnockToOpen)
	b.Run("burst-10000", func(b *testing.B) {
		for b.Loop() {
			benchFleetBurst(b, 10000)
		}
	})
}

func benchFleetKnockToOpen(b *testing.B) {
	w := newFleetWorldB(b, 3)
	w.startBus()
	w.startNginx()
	enfs := []*daemonProc{w.startEnforcer(0, "iptables", "10m"), w.startEnforcer(1, "nftables", "10m")}
	w.startDetector("10m")
	lat := make([][]float64, len(enfs))
	var conn []float64
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		if i >= 150 {
			b.Fatal("at most 150 iterations: each needs a new client address")
		}
		src := fmt.Sprintf("192.0.2.%d", 100+i)
		w.must("ip", "-n", w.cli, "addr", "add", src+"/24", "dev", "eth0")
		b.StartTimer()
		connMs, resp := w.knockLatency(b, src, net.JoinHostPort(enfV4[i%2], "22"))
		conn = append(conn, connMs)
		for k, d := range enfs {
			lat[k] = append(lat[k], msSince(b, d.wait(b, "fleet: grant applied", src), resp))
		}
	}
	b.StopTimer()
	for k, name := range []string{"iptables", "nftables"} {
		slices.Sort(lat[k])
		b.ReportMetric(lat[k][len(lat[k])/2], "ms-median-"+name)
		b.ReportMetric(lat[k][len(lat[k])-1], "ms-worst-"+name)
	}
	slices.Sort(conn)
	b.ReportMetric(conn[len(conn)/2], "ms-connect-median")
}

func benchFleetBurst(b *testing.B, n int) {
	w := newFleetWorldB(b, 3)
	w.startBus()
	caps := fmt.Sprintf("  max_grants_per_sequence: %d\n  max_grants_per_ipv6_64: %d\n", n+100, n+100)
	var enfs []*loggedDaemon
	for i, backend := range []string{"iptables", "nftables"} {
		state := filepath.Join(w.dir, fmt.Sprintf("state-enf%d", i))
		if err := os.MkdirAll(state, 0o700); err != nil {
			b.Fatal(err)
		}
		w.backend = backend
		cfg := w.writeConfig(e2eConf{name: fmt.Sprintf("enforcer%d.yaml", i), window: scaleWindow.String(), state: state,
			socket: w.enforcerSocket(i), fwMore: caps, more: w.fleetBlock(fleet.RoleEnforcer)})
		enfs = append(enfs, startLoggedIn(b, w.e2e, w.enfs[i], cfg, fmt.Sprintf("enforcer%d.log", i)))
	}
	w.backend = ""
	write(b, w.log, "")
	startLoggedIn(b, w.e2e, w.srv, w.writeConfig(e2eConf{name: "detector.yaml", window: scaleWindow.String(), start: "end",
		fwMore: caps, more: w.fleetBlock(fleet.RoleDetector)}), "detector.log")
	var sb strings.Builder
	now := time.Now()
	for i := range n {
		sb.WriteString(burstKnock(burstSource(i), now))
	}
	f, err := os.OpenFile(w.log, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if _, err := f.WriteString(sb.String()); err != nil {
		b.Fatal(err)
	}
	f.Close()
	var last time.Time
	for _, e := range enfs {
		if at := e.waitRecords(b, "fleet: grant applied", n); at.After(last) {
			last = at
		}
	}
	b.ReportMetric(last.Sub(start).Seconds(), "s-to-both-enforcers")
}

// newFleetWorldB is newFleetWorld for a benchmark.
func newFleetWorldB(b *testing.B, nodes int) *fleetWorld { return newFleetWorld(b, nodes) }
