package hook

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// records is a slog handler that hands every record to the test.
type records struct{ ch chan map[string]any }

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }

func (r *records) Handle(_ context.Context, rec slog.Record) error {
	m := map[string]any{"msg": rec.Message, "level": rec.Level.String()}
	rec.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.Resolve().Any()
		return true
	})
	r.ch <- m
	return nil
}

// wait returns the next record, failing after a deadline.
func (r *records) wait(t *testing.T) map[string]any {
	t.Helper()
	select {
	case m := <-r.ch:
		return m
	case <-time.After(15 * time.Second):
		t.Fatal("nothing logged within 15s")
		return nil
	}
}

func newRunner(t *testing.T, c Config) (*Runner, *records) {
	t.Helper()
	recs := &records{ch: make(chan map[string]any, 1000)}
	r, err := New(c, slog.New(recs))
	if err != nil {
		t.Fatalf("New(%+v) = %v", c, err)
	}
	t.Cleanup(r.Close)
	return r, recs
}

// counts returns the runner's counters as "on_grant/ok" -> n, leaving out zeros.
func counts(r *Runner) map[string]uint64 {
	out := map[string]uint64{}
	r.EachRun(func(hook, result string, n uint64) {
		if n > 0 {
			out[hook+"/"+result] = n
		}
	})
	return out
}

func wantCounts(t *testing.T, r *Runner, want map[string]uint64) {
	t.Helper()
	if got := counts(r); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("counts = %v, want %v", got, want)
	}
}

var grant = Vars{Event: EventGrant, IP: netip.MustParsePrefix("192.0.2.7/32"), Sequence: "ssh",
	Until: time.Date(2026, 11, 22, 19, 11, 34, 0, time.UTC), Ports: []string{"22/tcp", "443/tcp"}}

// TestRunResults: each way a run can end is logged at its level, with its
// output, and counted.
func TestRunResults(t *testing.T) {
	tests := []struct {
		name   string
		argv   []string
		msg    string
		level  string
		attrs  map[string]any
		result string
	}{
		{name: "ok with output", argv: []string{"/bin/echo", "granted", "{ip}", "until={until}", "{ports}"},
			msg: "hook ran", level: "INFO", result: ResultOK,
			attrs: map[string]any{"output": "granted 192.0.2.7 until=2026-11-22T19:11:34Z 22/tcp,443/tcp", "program": "/bin/echo",
				"hook": "on_grant", "event": "grant", "ip": "192.0.2.7", "sequence": "ssh"}},
		{name: "stderr too", argv: []string{"/bin/sh", "-c", "echo out; echo err >&2; exit 3"},
			msg: "hook failed", level: "WARN", result: ResultFailed,
			attrs: map[string]any{"output": "out\nerr", "exit_status": "3"}},
		{name: "false", argv: []string{"/bin/false"},
			msg: "hook failed", level: "WARN", result: ResultFailed, attrs: map[string]any{"exit_status": "1", "output": ""}},
		{name: "killed by a signal", argv: []string{"/bin/sh", "-c", "kill -TERM $$"},
			msg: "hook failed", level: "WARN", result: ResultFailed, attrs: map[string]any{"exit_status": "signal terminated"}},
		{name: "missing program", argv: []string{"/nonexistent/hook"},
			msg: "hook not run", level: "WARN", result: ResultFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, recs := newRunner(t, Config{OnGrant: tt.argv})
			r.Run(OnGrant, grant)
			rec := recs.wait(t)
			if rec["msg"] != tt.msg || rec["level"] != tt.level {
				t.Fatalf("logged %v, want %q at %s", rec, tt.msg, tt.level)
			}
			for k, v := range tt.attrs {
				if rec[k] != v {
					t.Errorf("%s = %#v, want %#v (record %v)", k, rec[k], v, rec)
				}
			}
			wantCounts(t, r, map[string]uint64{"on_grant/" + tt.result: 1})
		})
	}
}

// TestPlaceholdersCannotInject: whatever a value holds, it reaches the
// program as one argument, read by no shell.
func TestPlaceholdersCannotInject(t *testing.T) {
	r, recs := newRunner(t, Config{OnEnd: []string{"/usr/bin/printf", `[%s]\n`, "{sequence}", "x{event}", "{ports}"}})
	r.Run(OnEnd, Vars{Sequence: "a b; touch /tmp/pwned $(id) `id`", Event: "' \" \n--", Ports: []string{"1 2", "3"}})
	rec := recs.wait(t)
	want := "[a b; touch /tmp/pwned $(id) `id`]\n[x' \" \n--]\n[1 2,3]"
	if rec["output"] != want {
		t.Errorf("output %q, want %q", rec["output"], want)
	}
}

// TestEnvironment: a hook sees a fixed PATH and its event, nothing of
// webknock's own environment.
func TestEnvironment(t *testing.T) {
	t.Setenv("SECRET_OF_THE_DAEMON", "x")
	r, recs := newRunner(t, Config{OnGrant: []string{"/usr/bin/env"}})
	r.Run(OnGrant, grant)
	want := strings.Join([]string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"WEBKNOCK_HOOK=on_grant", "WEBKNOCK_EVENT=grant", "WEBKNOCK_IP=192.0.2.7", "WEBKNOCK_SEQUENCE=ssh",
		"WEBKNOCK_UNTIL=2026-11-22T19:11:34Z", "WEBKNOCK_PORTS=22/tcp,443/tcp",
	}, "\n")
	if rec := recs.wait(t); rec["output"] != want {
		t.Errorf("environment:\n%s\nwant:\n%s", rec["output"], want)
	}
}

// TestOutputBounded: the first MaxOutput bytes are logged, the rest counted.
func TestOutputBounded(t *testing.T) {
	var full strings.Builder
	for i := 1; i <= 3000; i++ {
		full.WriteString(strconv.Itoa(i) + "\n")
	}
	r, recs := newRunner(t, Config{OnGrant: []string{"/usr/bin/seq", "1", "3000"}})
	r.Run(OnGrant, grant)
	rec := recs.wait(t)
	if want := strings.TrimRight(full.String()[:MaxOutput], "\n"); rec["output"] != want {
		t.Errorf("output: %d bytes, want the first %d of %d", len(fmt.Sprint(rec["output"])), MaxOutput, full.Len())
	}
	if got, want := rec["output_dropped_bytes"], int64(full.Len()-MaxOutput); got != want {
		t.Errorf("output_dropped_bytes = %v, want %d", got, want)
	}
}

// fifo makes a named pipe in dir.
func fifo(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// gate runs hooks that report "start NAME" on one pipe, then wait until
// the test releases them by name, then report "end NAME".
type gate struct {
	dir   string
	lines chan string
	argv  []string
}

func newGate(t *testing.T) *gate {
	t.Helper()
	dir := t.TempDir()
	events := fifo(t, dir, "events")
	// Read and write: the hooks' opens never block, and it never ends.
	f, err := os.OpenFile(events, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	g := &gate{dir: dir, lines: make(chan string, 100),
		argv: []string{"/bin/sh", "-c", `echo "start $WEBKNOCK_SEQUENCE" >"$0"; read x <"$1"; echo "end $WEBKNOCK_SEQUENCE" >"$0"`,
			events, filepath.Join(dir, "release-{sequence}")}}
	go func() {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			g.lines <- sc.Text()
		}
	}()
	return g
}

// hold makes the release pipe of name; the test keeps it open.
func (g *gate) hold(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		f, err := os.OpenFile(fifo(t, g.dir, "release-"+name), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
	}
}

func (g *gate) release(t *testing.T, name string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(g.dir, "release-"+name), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("go\n"); err != nil {
		t.Fatal(err)
	}
}

func (g *gate) next(t *testing.T) string {
	t.Helper()
	select {
	case l := <-g.lines:
		return l
	case <-time.After(15 * time.Second):
		t.Fatal("no hook started or ended within 15s")
		return ""
	}
}

func seqVars(name string) Vars { return Vars{Event: EventGrant, Sequence: name} }

// TestRunReturnsAtOnce: Run returns while the hook it started still
// runs, and while another waits for a slot.
func TestRunReturnsAtOnce(t *testing.T) {
	g := newGate(t)
	g.hold(t, "a", "b")
	r, recs := newRunner(t, Config{OnGrant: g.argv, MaxRunning: 1})
	r.Run(OnGrant, seqVars("a"))
	if l := g.next(t); l != "start a" {
		t.Fatalf("got %q, want start a", l)
	}
	r.Run(OnGrant, seqVars("b")) // returns, though a blocks and holds the only slot
	g.release(t, "a")
	for _, want := range []string{"end a", "start b"} {
		if l := g.next(t); l != want {
			t.Fatalf("got %q, want %q", l, want)
		}
	}
	g.release(t, "b")
	recs.wait(t)
	recs.wait(t)
	wantCounts(t, r, map[string]uint64{"on_grant/ok": 2})
}

// TestConcurrencyBounded: at most MaxRunning hooks run at once; the others
// wait in the queue, and start as slots free.
func TestConcurrencyBounded(t *testing.T) {
	g := newGate(t)
	names := []string{"a", "b", "c", "d", "e"}
	g.hold(t, names...)
	r, recs := newRunner(t, Config{OnGrant: g.argv, MaxRunning: 2})
	for _, n := range names {
		r.Run(OnGrant, seqVars(n))
	}
	running := map[string]bool{}
	for len(running) < 2 {
		l := g.next(t)
		name, ok := strings.CutPrefix(l, "start ")
		if !ok {
			t.Fatalf("got %q before two started", l)
		}
		running[name] = true
	}
	// Both slots are held: the dispatcher takes no more from the queue.
	if n := len(r.queue); n != 3 {
		t.Errorf("%d runs queued while 2 run, want 3", n)
	}
	ended := 0
	for ended < len(names) {
		if len(running) == 0 {
			name, ok := strings.CutPrefix(g.next(t), "start ")
			if !ok {
				t.Fatal("a hook ended while none ran")
			}
			running[name] = true
			continue
		}
		var name string
		for name = range running {
			break
		}
		g.release(t, name)
		for running[name] {
			l := g.next(t)
			if n, ok := strings.CutPrefix(l, "end "); ok {
				delete(running, n)
				ended++
				continue
			}
			n, _ := strings.CutPrefix(l, "start ")
			running[n] = true
			if len(running) > 2 {
				t.Fatalf("%d hooks running at once: %v", len(running), running)
			}
		}
	}
	for range names {
		recs.wait(t)
	}
	wantCounts(t, r, map[string]uint64{"on_grant/ok": 5})
}

// TestQueueFull: with the slot and the queue full, Run drops the run at
// once, and counts and logs it.
func TestQueueFull(t *testing.T) {
	g := newGate(t)
	g.hold(t, "a", "b", "c")
	r, recs := newRunner(t, Config{OnGrant: g.argv, MaxRunning: 1, Queue: 2})
	r.Run(OnGrant, seqVars("a"))
	if l := g.next(t); l != "start a" {
		t.Fatalf("got %q, want start a", l)
	}
	r.Run(OnGrant, seqVars("b"))
	r.Run(OnGrant, seqVars("c"))
	r.Run(OnGrant, seqVars("d"))
	if rec := recs.wait(t); rec["msg"] != "hook dropped: too many runs waiting" || rec["sequence"] != "d" || rec["level"] != "WARN" {
		t.Errorf("logged %v, want the drop of d", rec)
	}
	wantCounts(t, r, map[string]uint64{"on_grant/dropped": 1})
	for _, n := range []string{"a", "b", "c"} {
		g.release(t, n)
	}
	for range 3 {
		recs.wait(t)
	}
	wantCounts(t, r, map[string]uint64{"on_grant/dropped": 1, "on_grant/ok": 3})
}

// TestDeadlineKillsGroup: at its deadline the hook and everything it
// started are killed. The background sleep holds the pipe's write end: the
// pipe ends only when both are gone.
func TestDeadlineKillsGroup(t *testing.T) {
	dir := t.TempDir()
	p := fifo(t, dir, "held")
	r, recs := newRunner(t, Config{Timeout: time.Second,
		OnLockout: []string{"/bin/sh", "-c", `exec 3>"$0"; /bin/sleep 1000 & echo started >&3; wait`, p}})
	read := make(chan string, 1)
	go func() {
		f, err := os.Open(p) // until the hook opens it
		if err != nil {
			read <- err.Error()
			return
		}
		defer f.Close()
		b, _ := io.ReadAll(f) // until every writer is gone
		read <- string(b)
	}()
	r.Run(OnLockout, Vars{Event: EventLockout, IP: netip.MustParsePrefix("2001:db8::1/128")})
	select {
	case got := <-read:
		if got != "started\n" {
			t.Errorf("read %q from the hook's pipe", got)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the hook's background process outlived its deadline by 14s")
	}
	rec := recs.wait(t)
	if rec["msg"] != "hook killed at its deadline" || rec["level"] != "WARN" || rec["ip"] != "2001:db8::1" {
		t.Errorf("logged %v, want the kill at the deadline", rec)
	}
	wantCounts(t, r, map[string]uint64{"on_lockout/timeout": 1})
}

// TestClose: Close waits for the running hook (ended by its deadline),
// drops the waiting ones, and later runs are dropped.
func TestClose(t *testing.T) {
	g := newGate(t)
	g.hold(t, "a", "b", "c")
	recs := &records{ch: make(chan map[string]any, 1000)}
	r, err := New(Config{OnGrant: g.argv, MaxRunning: 1, Timeout: time.Second}, slog.New(recs))
	if err != nil {
		t.Fatal(err)
	}
	r.Run(OnGrant, seqVars("a"))
	if l := g.next(t); l != "start a" {
		t.Fatalf("got %q, want start a", l)
	}
	r.Run(OnGrant, seqVars("b"))
	r.Run(OnGrant, seqVars("c"))
	r.Close()
	wantCounts(t, r, map[string]uint64{"on_grant/dropped": 2, "on_grant/timeout": 1})
	r.Run(OnGrant, seqVars("d"))
	r.Close()
	wantCounts(t, r, map[string]uint64{"on_grant/dropped": 3, "on_grant/timeout": 1})
	// Logged before Close returned.
	msgs := map[string]int{}
	for len(recs.ch) > 0 {
		msgs[fmt.Sprint((<-recs.ch)["msg"])]++
	}
	if want := map[string]int{"hook dropped: webknock is stopping": 3, "hook killed at its deadline": 1}; fmt.Sprint(msgs) != fmt.Sprint(want) {
		t.Errorf("logged %v, want %v", msgs, want)
	}
}

// TestReconfigure: new commands and a higher bound apply at once; a bad
// configuration changes nothing.
func TestReconfigure(t *testing.T) {
	g := newGate(t)
	g.hold(t, "a", "b")
	r, recs := newRunner(t, Config{OnGrant: g.argv, MaxRunning: 1})
	r.Run(OnGrant, seqVars("a"))
	if l := g.next(t); l != "start a" {
		t.Fatalf("got %q, want start a", l)
	}
	r.Run(OnGrant, seqVars("b"))
	if err := r.Reconfigure(Config{OnGrant: g.argv, OnEnd: []string{"/bin/echo", "{nope}"}, MaxRunning: 2}); err == nil {
		t.Fatal("Reconfigure with a bad placeholder = nil")
	} else if !strings.HasPrefix(err.Error(), "on_end: argument 1: unknown placeholder {nope}") {
		t.Errorf("Reconfigure error %q, want it to name on_end and the argument", err)
	}
	if err := r.Reconfigure(Config{OnGrant: g.argv, OnEnd: []string{"/bin/echo", "ended", "{event}"}, MaxRunning: 2}); err != nil {
		t.Fatal(err)
	}
	// b starts while a still holds the first slot.
	if l := g.next(t); l != "start b" {
		t.Fatalf("got %q, want start b", l)
	}
	g.release(t, "a")
	g.release(t, "b")
	recs.wait(t)
	recs.wait(t)
	r.Run(OnEnd, Vars{Event: "revoked"})
	if rec := recs.wait(t); rec["output"] != "ended revoked" || rec["hook"] != "on_end" {
		t.Errorf("logged %v, want the new on_end", rec)
	}
	if err := r.Reconfigure(Config{}); err != nil {
		t.Fatal(err)
	}
	r.Run(OnGrant, grant) // none configured: nothing runs, nothing counts
	wantCounts(t, r, map[string]uint64{"on_grant/ok": 2, "on_end/ok": 1})
}

func TestNewRefusesBadCommands(t *testing.T) {
	_, err := New(Config{OnGrant: []string{"bin/true"}, OnLockout: []string{"/bin/echo", "{"}}, slog.New(slog.DiscardHandler))
	want := "on_grant: argument 0: program \"bin/true\" is not an absolute path\non_lockout: argument 1: unbalanced \"{\""
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("New = %v, want %q", err, want)
	}
}
