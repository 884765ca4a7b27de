package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/webknock/webknock/config"
)

// logRecords is a slog destination the test reads records from.
type logRecords struct {
	out chan map[string]any
}

// readRecords decodes the JSON log lines of r until it ends.
func readRecords(r io.Reader) *logRecords {
	lr := &logRecords{out: make(chan map[string]any, 256)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil {
				lr.out <- rec
			}
		}
		close(lr.out)
	}()
	return lr
}

func newLogRecords(t *testing.T) (*slog.Logger, *logRecords) {
	r, w := io.Pipe()
	t.Cleanup(func() { w.Close() })
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})), readRecords(r)
}

// wait returns the first record with message msg, or fails after a deadline.
func (lr *logRecords) wait(t *testing.T, msg string) map[string]any {
	t.Helper()
	return lr.waitBefore(t, msg, "")
}

// waitBefore waits for msg and fails if forbidden is logged first.
func (lr *logRecords) waitBefore(t *testing.T, msg, forbidden string) map[string]any {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case rec, ok := <-lr.out:
			switch {
			case !ok:
				t.Fatalf("the log ended before %q", msg)
			case forbidden != "" && rec["msg"] == forbidden:
				t.Fatalf("%q logged before %q: %v", forbidden, msg, rec)
			case rec["msg"] == msg:
				return rec
			}
		case <-deadline:
			t.Fatalf("no %q logged within 10s", msg)
		}
	}
}

func writeRunConfig(t testing.TB, dir, log, knockPage string) string {
	t.Helper()
	return writeRunConfigWith(t, dir, log, knockPage, "")
}

// writeRunConfigWith writes a configuration for the daemon with the
// dry-run firewall on log, one sequence with knockPage, and extra (more
// top-level sections, such as hooks).
func writeRunConfigWith(t testing.TB, dir, log, knockPage, extra string) string {
	t.Helper()
	path := filepath.Join(dir, "webknock.yaml")
	cfg := `log:
  paths: [` + log + `]
  start: end
state_dir: ` + filepath.Join(dir, "state") + `
firewall:
  backend: dry-run
sequences:
  - name: ssh
    steps: [/k/a1, /k/b2]
    knock_page: ` + knockPage + `
    window: 10m
web:
  listen: ""
  socket: ` + filepath.Join(dir, "wk.sock") + `
` + extra
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func appendLines(t *testing.T, path string, lines ...string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// One write, as a web server's buffered log does: the follower reads
	// the lines together, and the daemon examines only the first of them
	// and those holding a knock path.
	if _, err := f.WriteString(strings.Join(lines, "\n") + "\n"); err != nil {
		t.Fatal(err)
	}
}

func knockLines(ip string, at time.Time, paths ...string) []string {
	var out []string
	for i, p := range paths {
		ts := at.Add(time.Duration(i) * time.Second).Format("02/Jan/2006:15:04:05 -0700")
		out = append(out, ip+` - - [`+ts+`] "GET `+p+` HTTP/1.1" 404 153 "-" "curl/8"`)
	}
	return out
}

// TestServe runs the daemon with the dry-run firewall on a real file: a
// knock is granted, an old one after a restart is not, a broken reload keeps
// the running configuration and a good one takes effect.
func TestServe(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "access.log")
	appendLines(t, log, "")
	cfgPath := writeRunConfig(t, dir, log, "/k/open")
	load := func() (*config.Config, error) {
		return config.Load(config.Options{Path: cfgPath})
	}
	cfg, err := load()
	if err != nil {
		t.Fatal(err)
	}
	logger, recs := newLogRecords(t)
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, logger, hup, load) }()
	recs.wait(t, "webknock running")

	// Lines a little in the past: a grant never ends later than a window
	// from the host's now, whatever the log's clock says.
	now := time.Now().Add(-time.Minute)
	appendLines(t, log, knockLines("203.0.113.7", now, "/k/a1", "/k/b2", "/k/open")...)
	if g := recs.wait(t, "grant"); g["ip"] != "203.0.113.7" {
		t.Errorf("grant for %v, want 203.0.113.7", g["ip"])
	}
	old := now.Add(-time.Hour)
	appendLines(t, log, knockLines("203.0.113.8", old, "/k/a1", "/k/b2", "/k/open")...)
	if g := recs.wait(t, "grant already over, not applied"); g["ip"] != "203.0.113.8" {
		t.Errorf("expired grant for %v, want 203.0.113.8", g["ip"])
	}

	if err := os.WriteFile(cfgPath, []byte("sequences: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hup <- os.Interrupt
	recs.wait(t, "reload refused; keeping the running configuration")
	appendLines(t, log, knockLines("203.0.113.9", now, "/k/a1", "/k/b2", "/k/open")...)
	if g := recs.wait(t, "grant"); g["ip"] != "203.0.113.9" {
		t.Errorf("grant after a broken reload for %v, want 203.0.113.9", g["ip"])
	}

	writeRunConfig(t, dir, log, "/k/new-open")
	hup <- os.Interrupt
	recs.wait(t, "configuration reloaded")
	// Read in one batch: the new page is examined only because the reload
	// changed the paths the daemon looks for.
	appendLines(t, log, knockLines("203.0.113.10", now, "/k/a1", "/k/b2", "/k/open", "/k/a1", "/k/b2", "/k/new-open")...)
	g := recs.wait(t, "grant")
	until, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(g["until"]))
	// The old knock page is no path any more; the grant is the new page's (5s later).
	if want := now.Truncate(time.Second).Add(5*time.Second + 10*time.Minute); g["ip"] != "203.0.113.10" || !until.Equal(want) {
		t.Errorf("grant after reload = %v, want ip 203.0.113.10 until %v", g, want)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop within 10s of cancel")
	}
}

// startServe runs the daemon with the dry-run firewall on a new log until
// the test ends, and returns its configuration file, its log and its
// records.
func startServe(t *testing.T) (cfgPath, log string, recs *logRecords) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "access.log")
	appendLines(t, log, "")
	cfgPath = writeRunConfig(t, dir, log, "/k/open")
	recs, _ = serveConfig(t, cfgPath)
	return cfgPath, log, recs
}

// serveConfig runs the daemon in-process on the configuration file cfgPath
// until the test ends or stop is called; it returns once it runs.
func serveConfig(t *testing.T, cfgPath string) (recs *logRecords, stop func()) {
	t.Helper()
	cfg, err := config.Load(config.Options{Path: cfgPath})
	if err != nil {
		t.Fatal(err)
	}
	logger, recs := newLogRecords(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, logger, nil, nil) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	recs.wait(t, "webknock running")
	return recs, stop
}

// TestServeClockAhead: a knock dated a day ahead of the host's clock gets a
// grant that ends one window from now, not from the log's time, and the
// log's clock is warned about.
func TestServeClockAhead(t *testing.T) {
	_, log, recs := startServe(t)
	start := time.Now()
	appendLines(t, log, knockLines("203.0.113.7", start.Add(24*time.Hour), "/k/a1", "/k/b2", "/k/open")...)
	if w := recs.wait(t, "grant cut to its window from now: the log's clock is ahead of this host's"); w["level"] != "WARN" {
		t.Errorf("clock warning at level %v, want WARN", w["level"])
	}
	g := recs.wait(t, "grant")
	until, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(g["until"]))
	if limit := time.Now().Add(10 * time.Minute); until.After(limit) || until.Before(start.Add(10*time.Minute-time.Second)) {
		t.Errorf("grant until %v, want about %v (one window from now)", until, limit)
	}
}

// TestRunSignals runs the real binary with the dry-run firewall: a knock is
// granted, SIGHUP with a broken configuration keeps the running one, SIGTERM
// stops it cleanly. It needs no privileges.
func TestRunSignals(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	log := filepath.Join(dir, "access.log")
	appendLines(t, log, "")
	cfg := writeRunConfig(t, dir, log, "/k/open")
	cmd := exec.Command(webknockBinary(t), "run", "-c", cfg, "--json-logs")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	recs := readRecords(stderr)
	recs.wait(t, "webknock running")
	appendLines(t, log, knockLines("203.0.113.7", time.Now(), "/k/a1", "/k/b2", "/k/open")...)
	recs.wait(t, "grant")

	good, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Another table (or chain, backend, hook) needs a restart.
	other := strings.Replace(string(good), "  backend: dry-run\n", "  backend: dry-run\n  table: other\n", 1)
	if err := os.WriteFile(cfg, []byte(other), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	recs.wait(t, "reload refused: firewall.backend, chain, table, hook, ipv6 and state_dir change only with a restart; keeping the running configuration")

	// So does joining a fleet (a valid one: the bus need not answer).
	keyFile := filepath.Join(dir, "fleet.key")
	if err := os.WriteFile(keyFile, []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fleetCfg := string(good) + "fleet:\n  role: detector\n  servers: [nats://127.0.0.1:1]\n  signing_key_file: " + keyFile + "\n"
	if err := os.WriteFile(cfg, []byte(fleetCfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	recs.wait(t, "reload refused: the fleet settings change only with a restart; keeping the running configuration")

	if err := os.WriteFile(cfg, []byte("sequences: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	recs.wait(t, "reload refused; keeping the running configuration")
	appendLines(t, log, knockLines("203.0.113.8", time.Now(), "/k/a1", "/k/b2", "/k/open")...)
	if g := recs.wait(t, "grant"); g["ip"] != "203.0.113.8" {
		t.Errorf("grant after a broken reload for %v, want 203.0.113.8", g["ip"])
	}

	cmd.Process.Signal(syscall.SIGTERM)
	recs.wait(t, "webknock stopping; firewall rules stay in place")
	if err := cmd.Wait(); err != nil {
		t.Errorf("webknock run after SIGTERM: %v, want exit 0", err)
	}
}

// TestAdminSocket: through the daemon's admin socket the command line
// lists a lockout, clears it with `unlock`, lets an address in with
// `grant` (at most the window), and revokes it.
func TestAdminSocket(t *testing.T) {
	cfgPath, log, recs := startServe(t)

	var lines []string
	at := time.Now().Add(-time.Minute)
	for i := range 5 { // five resets lock the address out
		lines = append(lines, knockLines("203.0.113.7", at.Add(time.Duration(2*i)*time.Second), "/k/a1", "/k/open")...)
	}
	appendLines(t, log, lines...)
	recs.wait(t, "lockout")
	wk := func(args ...string) string {
		t.Helper()
		out, errOut, code := runCmd(t, "", append(args[:1:1], append([]string{"-c", cfgPath}, args[1:]...)...)...)
		if code != exitOK {
			t.Fatalf("webknock %v = exit %d: %s", args, code, errOut)
		}
		return out
	}
	if out := wk("status"); !strings.Contains(out, "LOCKED OUT") || !strings.Contains(out, "203.0.113.7") {
		t.Fatalf("status:\n%s\nwant the lockout of 203.0.113.7", out)
	}
	if out := wk("unlock", "203.0.113.7"); out != "unlocked 203.0.113.7\n" {
		t.Errorf("unlock said %q", out)
	}
	if out := wk("status"); !strings.Contains(out, "no lockouts") {
		t.Errorf("status after unlock:\n%s", out)
	}
	if _, errOut, code := runCmd(t, "", "unlock", "-c", cfgPath, "203.0.113.7"); code != exitFail || !strings.Contains(errOut, "unlock 203.0.113.7") {
		t.Errorf("second unlock = exit %d, %q; want a failure naming the address", code, errOut)
	}
	if out := wk("grant", "198.51.100.9", "--for", "5m"); !strings.Contains(out, "granted 198.51.100.9 22/tcp until") {
		t.Errorf("grant said %q", out)
	}
	if _, errOut, code := runCmd(t, "", "grant", "-c", cfgPath, "198.51.100.9", "--for", "11m"); code != exitFail || !strings.Contains(errOut, "longer than the window") {
		t.Errorf("grant beyond the window = exit %d, %q", code, errOut)
	}
	if out := wk("status"); !strings.Contains(out, "198.51.100.9") {
		t.Errorf("status after grant:\n%s", out)
	}
	if out := wk("revoke", "198.51.100.9"); out != "revoked 198.51.100.9 (ssh)\n" {
		t.Errorf("revoke said %q", out)
	}
	if out := wk("status"); !strings.Contains(out, "no active grants") {
		t.Errorf("status after revoke:\n%s", out)
	}
	if _, errOut, code := runCmd(t, "", "revoke", "-c", cfgPath, "198.51.100.9"); code != exitFail || errOut != "revoke 198.51.100.9: no grant\n" {
		t.Errorf("second revoke = exit %d, %q; want one message naming the address once", code, errOut)
	}
	// The dry run ends no session: it says so in its log.
	wk("grant", "198.51.100.9", "--for", "5m")
	if out := wk("revoke", "--kill-sessions", "198.51.100.0/24"); out != "revoked 198.51.100.0/24 (ssh); 0 sessions ended\n" {
		t.Errorf("revoke --kill-sessions said %q", out)
	}
	recs.wait(t, "dry-run: would end the sessions")
}

// TestStoppedSource: a source that closes because the daemon is stopping
// is a stop, not a failure; one that closes while the daemon runs is.
func TestStoppedSource(t *testing.T) {
	d := newDaemon(nil, slog.New(slog.DiscardHandler), nil)
	ctx, cancel := context.WithCancel(t.Context())
	if err := d.stopped(ctx, "syslog listener"); err == nil || err.Error() != "syslog listener stopped" {
		t.Errorf("a source closed while running = %v, want it named as stopped", err)
	}
	cancel()
	if err := d.stopped(ctx, "syslog listener"); err != nil {
		t.Errorf("a source closed by the stop = %v, want none", err)
	}
}
