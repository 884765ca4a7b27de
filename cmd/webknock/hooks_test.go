package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/internal/realtest"
	"github.com/webknock/webknock/weblog"
)

// hooks is a writeCase edit that adds a hooks section with lines.
func hooks(lines ...string) map[string]string {
	return map[string]string{"hooks:": "hooks:\n  " + strings.Join(lines, "\n  ")}
}

// hookProgram writes a script at dir/name with mode; dirMode, unless 0,
// is its directory's; foreign gives it to nobody (needs root).
func hookProgram(name string, mode, dirMode os.FileMode, foreign bool) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if dirMode != 0 {
			if err := os.Chmod(filepath.Dir(p), dirMode); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if foreign {
			if err := os.Chown(p, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestCheckAcceptsGoodHooks: hooks with placeholders inside arguments and
// a script of webknock's own pass check, with no warning about them.
func TestCheckAcceptsGoodHooks(t *testing.T) {
	dir := caseDir(t)
	hookProgram("bin/on-end", 0o700, 0o755, false)(t, dir)
	cfg := writeCase(t, dir, hooks(
		`on_grant: [/bin/echo, "ip={ip}", "{{\"until\":\"{until}\"}}"]`,
		"on_end: [{dir}/bin/on-end, \"{event}\"]",
		"on_lockout: []",
		"timeout: 3s",
		"max_running: 2"))
	out, errOut, code := runCmd(t, "", "check", "-c", cfg)
	if code != exitOK || strings.Contains(errOut, "hooks") {
		t.Errorf("check = exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

// writeHookConfig writes a configuration for the daemon with the dry-run
// firewall on log and the given hooks section.
func writeHookConfig(tb testing.TB, dir, log, hooks string) string {
	tb.Helper()
	return writeRunConfigWith(tb, dir, log, "/k/open", hooks)
}

// hookDaemon is a daemon run in-process by a test or benchmark.
type hookDaemon struct {
	cfg, log string
	recs     *logRecords
	hup      chan os.Signal
}

// startHookDaemon runs the daemon of writeHookConfig(hooks) until the test ends;
// a reload reads the file with config.Load alone, so the daemon's own
// refusals show.
func startHookDaemon(tb testing.TB, hooks string) *hookDaemon {
	tb.Helper()
	dir := tb.TempDir()
	d := &hookDaemon{log: filepath.Join(dir, "access.log"), hup: make(chan os.Signal, 1)}
	if err := os.WriteFile(d.log, nil, 0o644); err != nil {
		tb.Fatal(err)
	}
	d.cfg = writeHookConfig(tb, dir, d.log, hooks)
	load := func() (*config.Config, error) { return config.Load(config.Options{Path: d.cfg}) }
	cfg, err := load()
	if err != nil {
		tb.Fatal(err)
	}
	r, w := io.Pipe()
	tb.Cleanup(func() { w.Close() })
	d.recs = readRecords(r)
	logger := slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, logger, d.hup, load) }()
	tb.Cleanup(func() {
		go func() {
			for range d.recs.out { // whatever is logged until it stops
			}
		}()
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("serve = %v", err)
		}
	})
	d.waitFor(tb, "webknock running", nil)
	return d
}

// waitFor returns the first record with message msg for which match (if
// any) holds, failing after a deadline.
func (d *hookDaemon) waitFor(tb testing.TB, msg string, match func(map[string]any) bool) map[string]any {
	tb.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case rec, ok := <-d.recs.out:
			if !ok {
				tb.Fatalf("the log ended before %q", msg)
			}
			if rec["msg"] == msg && (match == nil || match(rec)) {
				return rec
			}
		case <-deadline:
			tb.Fatalf("no %q logged within 15s", msg)
		}
	}
}

func attr(key, value string) func(map[string]any) bool {
	return func(rec map[string]any) bool { return rec[key] == value }
}

// knock appends ip's knock to the log.
func (d *hookDaemon) knock(tb testing.TB, ip string) {
	tb.Helper()
	f, err := os.OpenFile(d.log, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(strings.Join(knockLines(ip, time.Now().Add(-5*time.Second), "/k/a1", "/k/b2", "/k/open"), "\n") + "\n"); err != nil {
		tb.Fatal(err)
	}
}

// TestGrantWhileHookRuns: a grant is applied and logged while the on_grant
// hook of the one before still runs (it waits on a pipe the test holds),
// and with its only slot taken the next hook waits its turn.
func TestGrantWhileHookRuns(t *testing.T) {
	dir := t.TempDir()
	started, release := filepath.Join(dir, "started"), filepath.Join(dir, "release")
	var pipes []*os.File
	for _, p := range []string{started, release} {
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0) // never blocks, never ends
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		pipes = append(pipes, f)
	}
	lines := make(chan string, 10)
	go func() {
		b := make([]byte, 256)
		for {
			n, err := pipes[0].Read(b)
			if err != nil {
				return
			}
			for l := range strings.SplitSeq(strings.TrimSpace(string(b[:n])), "\n") {
				lines <- l
			}
		}
	}()
	next := func() string {
		t.Helper()
		select {
		case l := <-lines:
			return l
		case <-time.After(15 * time.Second):
			t.Fatal("no hook started within 15s")
			return ""
		}
	}
	d := startHookDaemon(t, fmt.Sprintf("hooks:\n  on_grant: [/bin/sh, -c, 'echo \"$0\" >\"$1\"; read x <\"$2\"', \"{ip}\", %s, %s]\n  max_running: 1\n",
		started, release))

	d.knock(t, "203.0.113.7")
	d.waitFor(t, "grant", attr("ip", "203.0.113.7"))
	if l := next(); l != "203.0.113.7" {
		t.Fatalf("hook started for %q, want 203.0.113.7", l)
	}
	// The hook of .7 holds the only slot and waits for the test.
	d.knock(t, "203.0.113.8")
	d.waitFor(t, "grant", attr("ip", "203.0.113.8"))
	if out, errOut, code := runCmd(t, "", "status", "-c", d.cfg); code != exitOK || !strings.Contains(out, "203.0.113.8") {
		t.Errorf("status while the hook runs = exit %d:\n%s%s\nwant the grant of 203.0.113.8", code, out, errOut)
	}
	for _, ip := range []string{"203.0.113.7", "203.0.113.8"} {
		if _, err := pipes[1].WriteString("go\n"); err != nil {
			t.Fatal(err)
		}
		d.waitFor(t, "hook ran", attr("ip", ip))
		if ip == "203.0.113.7" {
			if l := next(); l != "203.0.113.8" {
				t.Fatalf("hook started for %q, want 203.0.113.8", l)
			}
		}
	}
}

// TestHookEvents: on_grant gets the grant as applied, on_end why it ended,
// on_lockout the address and the end of its lockout.
func TestHookEvents(t *testing.T) {
	const echo = `[/bin/echo, "{event}", "ip={ip}", "{sequence}", "{ports}", "until={until}"]`
	d := startHookDaemon(t, "hooks:\n  on_grant: "+echo+"\n  on_end: "+echo+"\n  on_lockout: "+echo+"\n")

	d.knock(t, "203.0.113.7")
	g := d.waitFor(t, "grant", attr("ip", "203.0.113.7"))
	until, err := time.Parse(time.RFC3339Nano, fmt.Sprint(g["until"]))
	if err != nil {
		t.Fatalf("grant until %v: %v", g["until"], err)
	}
	u := until.UTC().Format(time.RFC3339)
	if rec := d.waitFor(t, "hook ran", attr("hook", "on_grant")); rec["output"] != "grant ip=203.0.113.7 ssh 22/tcp until="+u {
		t.Errorf("on_grant output %q", rec["output"])
	}
	if _, errOut, code := runCmd(t, "", "revoke", "-c", d.cfg, "203.0.113.7"); code != exitOK {
		t.Fatalf("revoke = exit %d: %s", code, errOut)
	}
	if rec := d.waitFor(t, "hook ran", attr("hook", "on_end")); rec["output"] != "revoked ip=203.0.113.7 ssh 22/tcp until="+u {
		t.Errorf("on_end output %q", rec["output"])
	}

	var lines []string
	at := time.Now().Add(-time.Minute)
	for i := range 5 { // five resets lock the address out
		lines = append(lines, knockLines("2001:db8::9", at.Add(time.Duration(2*i)*time.Second), "/k/a1", "/k/open")...)
	}
	appendLines(t, d.log, lines...)
	l := d.waitFor(t, "lockout", nil)
	lu, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(l["until"]))
	want := "lockout ip=2001:db8::9 ssh  until=" + lu.UTC().Format(time.RFC3339)
	if rec := d.waitFor(t, "hook ran", attr("hook", "on_lockout")); rec["output"] != want {
		t.Errorf("on_lockout output %q, want %q", rec["output"], want)
	}
}

// TestHookReload: SIGHUP applies changed hooks; hooks the runner refuses
// keep the running configuration, hooks included.
func TestHookReload(t *testing.T) {
	d := startHookDaemon(t, "hooks:\n  on_grant: [/bin/echo, one, \"{ip}\"]\n")
	d.knock(t, "203.0.113.7")
	if rec := d.waitFor(t, "hook ran", nil); rec["output"] != "one 203.0.113.7" {
		t.Errorf("output %q, want one 203.0.113.7", rec["output"])
	}
	rewrite := func(hooks string) {
		t.Helper()
		writeHookConfig(t, filepath.Dir(d.cfg), d.log, hooks)
		d.hup <- syscall.SIGHUP
	}
	rewrite("hooks:\n  on_grant: [/bin/echo, two, \"{ip}\"]\n")
	d.waitFor(t, "configuration reloaded", nil)
	d.knock(t, "203.0.113.8")
	if rec := d.waitFor(t, "hook ran", nil); rec["output"] != "two 203.0.113.8" {
		t.Errorf("output after reload %q, want two 203.0.113.8", rec["output"])
	}
	rewrite("hooks:\n  on_grant: [/bin/echo, three, \"{addr}\"]\n")
	rec := d.waitFor(t, "reload refused: hooks; keeping the running configuration", nil)
	if !strings.Contains(fmt.Sprint(rec["err"]), "on_grant: argument 2: unknown placeholder {addr}") {
		t.Errorf("refusal says %v", rec["err"])
	}
	d.knock(t, "203.0.113.9")
	if rec := d.waitFor(t, "hook ran", nil); rec["output"] != "two 203.0.113.9" {
		t.Errorf("output after a refused reload %q, want two 203.0.113.9", rec["output"])
	}
}

// exampleHooks reads config/examples/hooks/NAME.
func exampleHooks(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../../config/examples/hooks", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestHookExamples: each example loads into a configuration, and passes
// check's rules where its program is installed.
func TestHookExamples(t *testing.T) {
	files, err := filepath.Glob("../../config/examples/hooks/*.yaml")
	if err != nil || len(files) < 2 {
		t.Fatalf("examples: %v, %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			dir := t.TempDir()
			path := writeHookConfig(t, dir, filepath.Join(dir, "access.log"), exampleHooks(t, filepath.Base(f)))
			cfg, err := config.Load(config.Options{Path: path, CheckFormat: weblog.CheckFormat})
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			var programs []string
			for _, c := range hookCommands(cfg) {
				if len(c.argv) > 0 && !slices.Contains(programs, c.argv[0]) {
					programs = append(programs, c.argv[0])
				}
			}
			if len(programs) == 0 {
				t.Fatalf("%s configures no hook", f)
			}
			realtest.RequirePrograms(t, "the hook examples", programs...)
			if errs := checkHooks(cfg); len(errs) > 0 {
				t.Errorf("%s: check refuses %v", f, errs)
			}
		})
	}
}

// TestHookWebhookExample runs the webhook example's curl against a local
// server: every grant and every end is posted with its fields.
func TestHookWebhookExample(t *testing.T) {
	realtest.RequirePrograms(t, "the webhook example", "/usr/bin/curl")
	posts := make(chan url.Values, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/webknock" || r.ParseForm() != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		posts <- r.PostForm
	}))
	t.Cleanup(srv.Close)
	example := exampleHooks(t, "webhook.yaml")
	if !strings.Contains(example, "https://hooks.example.com/webknock") {
		t.Fatal("the example posts elsewhere than the URL this test replaces")
	}
	d := startHookDaemon(t, strings.ReplaceAll(example, "https://hooks.example.com/webknock", srv.URL+"/webknock"))
	post := func() url.Values {
		t.Helper()
		select {
		case v := <-posts:
			return v
		case <-time.After(15 * time.Second):
			t.Fatal("nothing posted within 15s")
			return nil
		}
	}

	d.knock(t, "203.0.113.7")
	g := d.waitFor(t, "grant", attr("ip", "203.0.113.7"))
	until, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(g["until"]))
	want := url.Values{"event": {"grant"}, "ip": {"203.0.113.7"}, "sequence": {"ssh"}, "ports": {"22/tcp"},
		"until": {until.UTC().Format(time.RFC3339)}}
	if got := post(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("on_grant posted %v, want %v", got, want)
	}
	d.waitFor(t, "hook ran", attr("hook", "on_grant"))
	if _, errOut, code := runCmd(t, "", "revoke", "-c", d.cfg, "203.0.113.7"); code != exitOK {
		t.Fatalf("revoke = exit %d: %s", code, errOut)
	}
	want["event"] = []string{"revoked"}
	if got := post(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("on_end posted %v, want %v", got, want)
	}
}

// TestHookJournalExample runs the journal example's logger against a
// syslog socket of the test's: the message arrives with the auth facility
// and the tag.
func TestHookJournalExample(t *testing.T) {
	realtest.RequirePrograms(t, "the journal example", "/usr/bin/logger")
	sock := filepath.Join(t.TempDir(), "log.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	msgs := make(chan string, 10)
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := conn.Read(b)
			if err != nil {
				return
			}
			msgs <- string(b[:n])
		}
	}()
	example := exampleHooks(t, "journal.yaml")
	example = strings.ReplaceAll(example, "[/usr/bin/logger, ", "[/usr/bin/logger, --socket, "+sock+", ")
	d := startHookDaemon(t, example)
	d.knock(t, "203.0.113.7")
	d.waitFor(t, "hook ran", attr("hook", "on_grant"))
	select {
	case m := <-msgs:
		// auth.notice: facility 4, severity 5.
		if !strings.HasPrefix(m, "<37>") || !strings.Contains(m, "webknock-hook") ||
			!strings.Contains(m, "grant: 203.0.113.7 may connect to 22/tcp until ") {
			t.Errorf("logger sent %q", m)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("logger sent nothing within 15s")
	}
}

// BenchmarkKnockToOpen measures a knock's way from the log to the applied
// grant (the "grant" record) in daemons side by side, knocked in turn so
// that the host's noise falls on all alike: one without hooks, one whose
// on_grant sleeps 5s (its slots stay taken, the queue fills, then runs are
// dropped) and one whose on_grant is /bin/true (every grant starts a
// process). The hooks must cost the grant nothing. An op is one knock on
// each; the metrics are the p50 and p99 of each daemon's time from the
// write of the knock to its record.
//
//	go test ./cmd/webknock -run '^$' -bench '^BenchmarkKnockToOpen$' -benchtime 500x
func BenchmarkKnockToOpen(b *testing.B) {
	daemons := []struct {
		name string
		d    *hookDaemon
		took []time.Duration
	}{
		{name: "no-hook", d: startHookDaemon(b, "")},
		{name: "sleep-hook", d: startHookDaemon(b, "hooks:\n  on_grant: [/bin/sleep, \"5\"]\n")},
		{name: "true-hook", d: startHookDaemon(b, "hooks:\n  on_grant: [/bin/true]\n")},
	}
	i := 0
	for b.Loop() {
		ip := fmt.Sprintf("198.18.%d.%d", i/250, i%250+1)
		for k := range daemons {
			x := &daemons[(i+k)%len(daemons)] // rotate which goes first
			start := time.Now()
			x.d.knock(b, ip)
			x.d.waitFor(b, "grant", attr("ip", ip))
			x.took = append(x.took, time.Since(start))
		}
		i++
	}
	for _, x := range daemons {
		slices.Sort(x.took)
		b.ReportMetric(float64(x.took[len(x.took)/2].Microseconds()), x.name+"-p50-µs")
		b.ReportMetric(float64(x.took[len(x.took)*99/100].Microseconds()), x.name+"-p99-µs")
	}
}
