package weblog

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// These tests use real files and real inotify. They never sleep: they wait
// for lines with a deadline, and ask the follower (probe) to read all it can
// before asserting that nothing more is there.

const waitFor = 10 * time.Second

// fakeClock runs scheduled functions when the test advances it.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Duration
	timers  []*fakeTimer
	changed chan struct{} // closed (and replaced) when a timer is added
}

type fakeTimer struct {
	c  *fakeClock
	at time.Duration
	fn func()
}

func (c *fakeClock) AfterFunc(d time.Duration, fn func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now + d, fn: fn}
	c.timers = append(c.timers, t)
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
	return t
}

// waitPending waits until n functions are scheduled.
func (c *fakeClock) waitPending(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		c.mu.Lock()
		if len(c.timers) == n {
			c.mu.Unlock()
			return
		}
		if c.changed == nil {
			c.changed = make(chan struct{})
		}
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%d timers pending after %v, want %d", c.Pending(), waitFor, n)
		}
	}
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	n := len(t.c.timers)
	t.c.timers = slices.DeleteFunc(t.c.timers, func(x *fakeTimer) bool { return x == t })
	return len(t.c.timers) < n
}

// Advance moves the clock and runs what falls due, in the caller's goroutine.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now += d
	var due []*fakeTimer
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool {
		if t.at <= c.now {
			due = append(due, t)
			return true
		}
		return false
	})
	c.mu.Unlock()
	for _, t := range due {
		t.fn()
	}
}

// Pending is the number of scheduled functions: with none, nothing will
// wake the follower but a file event.
func (c *fakeClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func skipUnlessLinux(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("following needs inotify and /proc (Linux)")
	}
}

// testFollower is a Follower whose batches the test takes line by line.
type testFollower struct {
	*Follower
	queue []line // lines of batches received, not taken yet
}

// line is one line of a batch received.
type line struct {
	File string
	Text []byte
	b    Batch
}

// Ack acknowledges the batch of l: every line of it.
func (f *testFollower) Ack(l line) { f.Follower.Ack(l.b) }

// take adds the lines of b to the queue, checking that b is a well-formed
// batch: not empty, whole lines, no longer than one read and an unfinished
// line, Len its lines.
func (f *testFollower) take(t *testing.T, b Batch) {
	t.Helper()
	if len(b.Text) == 0 || b.Text[len(b.Text)-1] != '\n' || len(b.Text) > readChunk+MaxLineBytes || b.Source == "" {
		t.Fatalf("batch of %d bytes from %q: want whole lines, at most %d bytes", len(b.Text), b.Source, readChunk+MaxLineBytes)
	}
	n := 0
	text := Batch{Text: bytes.Clone(b.Text)} // b.Text is the follower's again once b is acknowledged
	for l := range text.Lines() {
		f.queue = append(f.queue, line{File: b.Source, Text: l, b: b})
		n++
	}
	if n != b.Len() {
		t.Fatalf("batch yields %d lines, Len() = %d", n, b.Len())
	}
}

// follow starts a Follower with a fake clock and closes it at the end of the test.
func follow(t *testing.T, o FollowOptions) (*testFollower, *fakeClock) {
	t.Helper()
	skipUnlessLinux(t)
	clk := &fakeClock{}
	if o.Clock == nil {
		o.Clock = clk
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	f, err := Follow(t.Context(), o)
	if err != nil {
		t.Fatalf("Follow(%+v): %v", o, err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &testFollower{Follower: f}, clk
}

// recv returns the next line, from a batch received before or a new one.
func recv(t *testing.T, f *testFollower) line {
	t.Helper()
	if len(f.queue) == 0 {
		select {
		case b, ok := <-f.Batches():
			if !ok {
				t.Fatal("Batches closed")
			}
			f.take(t, b)
		case <-time.After(waitFor):
			t.Fatalf("no line within %v", waitFor)
		}
	}
	l := f.queue[0]
	f.queue = f.queue[1:]
	return l
}

// expect receives len(want) lines and compares their text, in order.
func expect(t *testing.T, f *testFollower, want ...string) []line {
	t.Helper()
	var ls []line
	for i, w := range want {
		l := recv(t, f)
		if string(l.Text) != w {
			t.Fatalf("line %d = %.60q, want %.60q", i, l.Text, w)
		}
		ls = append(ls, l)
	}
	return ls
}

// quiet asserts that once the follower has read all it can, no line is
// waiting to be delivered or taken.
func quiet(t *testing.T, f *testFollower) probeResult {
	t.Helper()
	if len(f.queue) > 0 {
		t.Fatalf("unexpected line %q from %s", f.queue[0].Text, f.queue[0].File)
	}
	r := probeFollower(t, f.Follower)
	select {
	case b := <-f.Batches():
		t.Fatalf("unexpected lines %q from %s", b.Text, b.Source)
	default:
	}
	if r.pending != 0 {
		t.Fatalf("%d batches not delivered, want none", r.pending)
	}
	return r
}

// probeFollower makes the follower read all it can and report what it holds.
func probeFollower(t *testing.T, f *Follower) probeResult {
	t.Helper()
	reply := make(chan probeResult, 1)
	select {
	case f.probe <- reply:
	case <-time.After(waitFor):
		t.Fatal("follower loop does not answer")
	}
	select {
	case r := <-reply:
		return r
	case <-time.After(waitFor):
		t.Fatal("follower loop does not answer")
	}
	return probeResult{}
}

func write(t *testing.T, w *os.File, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if _, err := w.WriteString(l); err != nil {
			t.Fatal(err)
		}
	}
}

// appendLog opens name for appending like a web server, creating it.
func appendLog(t *testing.T, name string) *os.File {
	t.Helper()
	w, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func writeFile(t *testing.T, name, text string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func numbered(prefix string, from, to int) []string {
	var ls []string
	for i := from; i < to; i++ {
		ls = append(ls, fmt.Sprintf("%s-%03d", prefix, i))
	}
	return ls
}

func nl(ls []string) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l + "\n"
	}
	return out
}

func TestFollowLines(t *testing.T) {
	name := filepath.Join(t.TempDir(), "access.log")
	w := appendLog(t, name)
	write(t, w, "old\n")
	f, _ := follow(t, FollowOptions{Paths: []string{name}, Start: StartBeginning})

	if l := expect(t, f, "old")[0]; l.File != name {
		t.Errorf("File = %q, want %q", l.File, name)
	}
	write(t, w, "a\n", "b\n", "\n")
	expect(t, f, "a", "b", "")

	// A line written in two pieces waits for its newline.
	write(t, w, "par")
	quiet(t, f)
	write(t, w, "tial\n")
	expect(t, f, "partial")

	// Lines up to MaxLineBytes arrive whole; a longer one is skipped and
	// counted, and the next one arrives normally.
	max := strings.Repeat("0123456789", MaxLineBytes/10) + strings.Repeat("x", MaxLineBytes%10)
	long := strings.Repeat("0123456789", 20_000)
	write(t, w, max+"\n", long+"\n", "after\n")
	expect(t, f, max, "after")
	quiet(t, f)

	if s := f.Stats(); s.Lines != 7 || s.Files[name].Lines != 7 || s.Overlong != 1 || s.Files[name].Overlong != 1 {
		t.Errorf("Stats = %+v, want 7 lines, 1 overlong", s)
	}
}

// TestFollowBatches: a burst arrives in batches of whole lines, one read
// each, in order; acknowledging a batch saves the position after its last
// line and no further; CaughtUp holds only once everything is delivered.
func TestFollowBatches(t *testing.T) {
	state := t.TempDir()
	name := filepath.Join(t.TempDir(), "access.log")
	w := appendLog(t, name)
	f, _ := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd, StateDir: state})
	quiet(t, f)
	quiet(t, f) // the loop went round after the first probe's reads
	if !f.CaughtUp() {
		t.Error("CaughtUp() = false with nothing to read")
	}

	var burst strings.Builder
	const n = 10000
	for i := range n {
		fmt.Fprintf(&burst, "203.0.113.%d - - line %05d of a burst written at once\n", i%250, i)
	}
	write(t, w, burst.String())
	var got []byte
	var batches []Batch
	for len(got) < burst.Len() {
		select {
		case b := <-f.Batches():
			f.take(t, b) // checks the batch's shape
			f.queue = nil
			batches = append(batches, b)
			got = append(got, b.Text...)
			if len(batches) == 1 && f.CaughtUp() {
				t.Error("CaughtUp() = true with batches left to deliver")
			}
		case <-time.After(waitFor):
			t.Fatalf("%d of %d bytes within %v", len(got), burst.Len(), waitFor)
		}
	}
	if string(got) != burst.String() {
		t.Fatal("the batches do not add up to the lines written, in order")
	}
	if min := burst.Len() / readChunk; len(batches) < min {
		t.Errorf("%d batches, want at least %d (one a read)", len(batches), min)
	}
	quiet(t, f)
	quiet(t, f)
	if !f.CaughtUp() {
		t.Error("CaughtUp() = false once every batch is delivered")
	}
	if s := f.Stats(); s.Lines != n {
		t.Errorf("Stats().Lines = %d, want %d", s.Lines, n)
	}

	f.Follower.Ack(batches[1])
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	ps, err := loadPositions(state)
	if want := int64(len(batches[0].Text) + len(batches[1].Text)); err != nil || len(ps) != 1 || ps[0].Offset != want {
		t.Errorf("positions = %+v, %v, want one at %d (after the second batch)", ps, err, want)
	}
}

// recvBatch receives the next batch, not through the test's line queue.
func recvBatch(t *testing.T, f *testFollower) Batch {
	t.Helper()
	select {
	case b := <-f.Batches():
		return b
	case <-time.After(waitFor):
		t.Fatalf("no batch within %v", waitFor)
	}
	return Batch{}
}

// TestFollowAckReusesMemory: an acknowledged batch's memory holds the next
// batch; acknowledging a batch twice, or after its memory went to a later
// batch, never lends it to two batches at once.
func TestFollowAckReusesMemory(t *testing.T) {
	name := filepath.Join(t.TempDir(), "access.log")
	w := appendLog(t, name)
	f, _ := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd})
	quiet(t, f)
	write(t, w, "a\n")
	a := recvBatch(t, f)
	f.Follower.Ack(a)
	f.Follower.Ack(a)
	write(t, w, "b\n")
	b := recvBatch(t, f)
	if b.buf != a.buf {
		t.Error("the second batch is not read into the memory the first gave back")
	}
	f.Follower.Ack(a) // a's memory is b's now
	write(t, w, "c\n")
	c := recvBatch(t, f)
	if string(b.Text) != "b\n" || string(c.Text) != "c\n" || c.buf == b.buf {
		t.Errorf("batches %q and %q, sharing memory: %v; want \"b\\n\" and \"c\\n\" apart", b.Text, c.Text, c.buf == b.buf)
	}
}

func TestFollowStartEnd(t *testing.T) {
	name := filepath.Join(t.TempDir(), "access.log")
	w := appendLog(t, name)
	// The end is after the last whole line: an unfinished one is still delivered.
	write(t, w, "x\n", "y\n", "unfin")
	f, _ := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd})
	quiet(t, f)
	write(t, w, "ished\n", "z\n")
	expect(t, f, "unfinished", "z")
}

func TestFollowMissingAtStart(t *testing.T) {
	name := filepath.Join(t.TempDir(), "access.log")
	f, _ := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd})
	quiet(t, f)
	w := appendLog(t, name)
	write(t, w, "first\n", "second\n")
	expect(t, f, "first", "second")
	if s := f.Stats(); s.Rotations != 0 {
		t.Errorf("Rotations = %d, want 0 for a file that appeared", s.Rotations)
	}
}

// TestFollowRenameRotation is logrotate's default: rename, create. The web
// server goes on writing to the renamed file until it reopens its log; the
// follower is busy (nobody reads) while it happens.
func TestFollowRenameRotation(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "access.log")
	w1 := appendLog(t, name)
	f, clk := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd})
	quiet(t, f)

	write(t, w1, nl(numbered("pre", 0, 50))...)
	if err := os.Rename(name, name+".1"); err != nil {
		t.Fatal(err)
	}
	write(t, w1, nl(numbered("renamed", 0, 10))...) // before the new file exists
	w2 := appendLog(t, name)
	for i := range 20 {
		write(t, w1, fmt.Sprintf("old-%03d\n", i))
		write(t, w2, fmt.Sprintf("new-%03d\n", i))
	}

	got := map[string][]string{}
	for range 100 {
		l := recv(t, f)
		if l.File != name {
			t.Errorf("File = %q, want %q", l.File, name)
		}
		s := string(l.Text)
		got[s[:strings.IndexByte(s, '-')]] = append(got[s[:strings.IndexByte(s, '-')]], s)
	}
	quiet(t, f)
	// Per file in order; every line once.
	for prefix, want := range map[string][]string{
		"pre": numbered("pre", 0, 50), "renamed": numbered("renamed", 0, 10),
		"old": numbered("old", 0, 20), "new": numbered("new", 0, 20),
	} {
		if !slices.Equal(got[prefix], want) {
			t.Errorf("%s lines = %v, want %v", prefix, got[prefix], want)
		}
	}

	// Within the grace period the old file is still read.
	if n := clk.Pending(); n != 1 {
		t.Errorf("%d timers pending, want 1 (the grace period)", n)
	}
	write(t, w1, "late-old\n")
	expect(t, f, "late-old")

	clk.Advance(defaultGrace)
	quiet(t, f)
	if n := clk.Pending(); n != 0 {
		t.Errorf("%d timers pending after the grace period, want none", n)
	}
	write(t, w2, "new-last\n")
	expect(t, f, "new-last")
	quiet(t, f) // the count follows the delivery
	if s := f.Stats(); s.Rotations != 1 || s.Lines != 102 {
		t.Errorf("Stats = %+v, want 1 rotation, 102 lines", s)
	}
}

// TestFollowTwoRotationsInGrace: a second rotation before the first grace
// period is over; three files are read at once, the old ones closed in turn.
func TestFollowTwoRotationsInGrace(t *testing.T) {
	name := filepath.Join(t.TempDir(), "access.log")
	w1 := appendLog(t, name)
	f, clk := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd})
	collect := func(n int) []string {
		var got []string
		for range n {
			got = append(got, string(recv(t, f).Text))
		}
		slices.Sort(got)
		return got
	}

	if err := os.Rename(name, name+".1"); err != nil {
		t.Fatal(err)
	}
	w2 := appendLog(t, name)
	write(t, w1, "a1\n")
	write(t, w2, "b1\n")
	if got := collect(2); !slices.Equal(got, []string{"a1", "b1"}) {
		t.Fatalf("lines = %v, want a1 b1", got)
	}

	clk.Advance(defaultGrace / 2)
	for _, r := range [][2]string{{name + ".1", name + ".2"}, {name, name + ".1"}} {
		if err := os.Rename(r[0], r[1]); err != nil {
			t.Fatal(err)
		}
	}
	w3 := appendLog(t, name)
	write(t, w1, "a2\n")
	write(t, w2, "b2\n")
	write(t, w3, "c1\n")
	if got := collect(3); !slices.Equal(got, []string{"a2", "b2", "c1"}) {
		t.Fatalf("lines = %v, want a2 b2 c1", got)
	}

	clk.Advance(defaultGrace / 2) // the first file's grace period is over, not the second's
	quiet(t, f)
	write(t, w2, "b3\n")
	expect(t, f, "b3")
	clk.Advance(defaultGrace)
	quiet(t, f)
	if n := clk.Pending(); n != 0 {
		t.Errorf("%d timers pending, want none", n)
	}
	write(t, w3, "c2\n")
	expect(t, f, "c2")
	if s := f.Stats(); s.Rotations != 2 {
		t.Errorf("Rotations = %d, want 2", s.Rotations)
	}
}

// TestFollowDeleteRecreate: the server writes to its deleted log until it
// reopens; the new file, created later, is read from its beginning.
func TestFollowDeleteRecreate(t *testing.T) {
	name := filepath.Join(t.TempDir(), "access.log")
	w1 := appendLog(t, name)
	f, clk := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd, Grace: time.Minute})
	write(t, w1, "a1\n")
	expect(t, f, "a1")

	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	write(t, w1, "a2\n")
	expect(t, f, "a2")
	if n := quiet(t, f).graces; n != 0 {
		t.Errorf("%d grace periods running before a new file appeared, want none", n)
	}
	if m := f.Missing(); !slices.Equal(m, []string{name}) {
		t.Errorf("Missing() = %q, want %q", m, name)
	}

	writeFile(t, name, "b1\nb2\n")
	expect(t, f, "b1", "b2")
	write(t, w1, "a3\n")
	expect(t, f, "a3")
	clk.Advance(time.Minute)
	quiet(t, f)
	w2 := appendLog(t, name)
	write(t, w2, "b3\n")
	expect(t, f, "b3")
	if s := f.Stats(); s.Rotations != 1 {
		t.Errorf("Rotations = %d, want 1", s.Rotations)
	}
}

func TestFollowCopyTruncate(t *testing.T) {
	name := filepath.Join(t.TempDir(), "access.log")
	w := appendLog(t, name)
	write(t, w, nl(numbered("line", 0, 10))...)
	f, _ := follow(t, FollowOptions{Paths: []string{name}, Start: StartBeginning})
	expect(t, f, numbered("line", 0, 10)...)

	// logrotate copytruncate: the file shrinks; the writer (O_APPEND) goes on at its new end.
	if err := os.Truncate(name, 0); err != nil {
		t.Fatal(err)
	}
	write(t, w, "t1\n")
	expect(t, f, "t1")

	// Shrunk and filled again past our offset before we look: the byte
	// before the offset is no longer the newline we read there.
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	rewritten := strings.Join(nl(numbered("rewritten", 0, 5)), "")
	if int64(len(rewritten)) <= fi.Size() || rewritten[fi.Size()-1] == '\n' {
		t.Fatalf("bad test: rewrite %q of a %d byte file", rewritten, fi.Size())
	}
	writeFile(t, name, rewritten)
	expect(t, f, numbered("rewritten", 0, 5)...)
	quiet(t, f)
	if s := f.Stats(); s.Truncations != 2 {
		t.Errorf("Truncations = %d, want 2", s.Truncations)
	}
}

func TestFollowGlob(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.log"), "a1\n")
	writeFile(t, filepath.Join(dir, "b.log"), "b1\n")
	writeFile(t, filepath.Join(dir, "other.txt"), "o1\n")
	f, _ := follow(t, FollowOptions{Paths: []string{filepath.Join(dir, "*.log")}, Start: StartBeginning})

	got := map[string]string{}
	for range 2 {
		l := recv(t, f)
		got[filepath.Base(l.File)] = string(l.Text)
	}
	if want := map[string]string{"a.log": "a1", "b.log": "b1"}; !reflectEqual(got, want) {
		t.Errorf("lines = %v, want %v", got, want)
	}

	// A file that starts matching later is read from its beginning.
	c := appendLog(t, filepath.Join(dir, "c.log"))
	write(t, c, "c1\n")
	if l := expect(t, f, "c1")[0]; l.File != filepath.Join(dir, "c.log") {
		t.Errorf("File = %q, want c.log", l.File)
	}
	write(t, appendLog(t, filepath.Join(dir, "other.txt")), "o2\n")
	write(t, c, "c2\n")
	expect(t, f, "c2")
	quiet(t, f)
	if s := f.Stats(); len(s.Files) != 3 {
		t.Errorf("Stats.Files = %v, want 3 files", s.Files)
	}
}

func reflectEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestFollowSavedResume: a restart resumes just after the last acknowledged
// batch; lines delivered but not acknowledged come again.
func TestFollowSavedResume(t *testing.T) {
	state := t.TempDir()
	name := filepath.Join(t.TempDir(), "access.log")
	w := appendLog(t, name)
	write(t, w, "before\n")
	o := FollowOptions{Paths: []string{name}, Start: StartSaved, StateDir: state}

	f1, _ := follow(t, o) // nothing saved: starts at the end
	write(t, w, "l1\n", "l2\n")
	ls := expect(t, f1, "l1", "l2")
	f1.Ack(ls[1])
	f1.Ack(ls[0]) // an older batch: the position stays after l2
	write(t, w, "l3\n")
	expect(t, f1, "l3")
	if err := f1.Close(); err != nil {
		t.Fatal(err)
	}
	write(t, w, "l4\n")

	f2, _ := follow(t, o)
	ls = expect(t, f2, "l3", "l4")
	f2.Ack(ls[1])
	quiet(t, f2)
	if err := f2.Close(); err != nil {
		t.Fatal(err)
	}

	f3, _ := follow(t, o)
	quiet(t, f3)
	write(t, w, "l5\n")
	expect(t, f3, "l5")
}

// TestFollowSavedOtherFile: a saved position is only used for the same file.
func TestFollowSavedOtherFile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		replace func(t *testing.T, name string)
	}{
		{"new file under the name", func(t *testing.T, name string) {
			// The inode number may well be reused: the first line tells.
			if err := os.Remove(name); err != nil {
				t.Fatal(err)
			}
			writeFile(t, name, "other first line\nmore\nand more\n")
		}},
		{"same inode, rewritten", func(t *testing.T, name string) {
			writeFile(t, name, "other first line\nmore\nand more\n")
		}},
		{"same inode, shorter", func(t *testing.T, name string) {
			if err := os.Truncate(name, int64(len("first\n"))); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			name := filepath.Join(t.TempDir(), "access.log")
			writeFile(t, name, "first\nsecond\n")
			o := FollowOptions{Paths: []string{name}, Start: StartSaved, StateDir: state}
			f1, _ := follow(t, o)
			write(t, appendLog(t, name), "third\n")
			f1.Ack(expect(t, f1, "third")[0])
			if err := f1.Close(); err != nil {
				t.Fatal(err)
			}

			tc.replace(t, name)
			f2, _ := follow(t, o)
			quiet(t, f2)
			write(t, appendLog(t, name), "appended\n")
			expect(t, f2, "appended")
		})
	}
}

// TestFollowSavedDuringGrace: a restart during a grace period reads the
// rest of the rotated file from its saved position.
func TestFollowSavedDuringGrace(t *testing.T) {
	state := t.TempDir()
	name := filepath.Join(t.TempDir(), "access.log")
	w1 := appendLog(t, name)
	o := FollowOptions{Paths: []string{name}, Start: StartSaved, StateDir: state}
	f1, _ := follow(t, o)
	if err := os.Rename(name, name+".1"); err != nil {
		t.Fatal(err)
	}
	w2 := appendLog(t, name)
	write(t, w1, "o1\n")
	l := expect(t, f1, "o1")[0]
	f1.Ack(l)
	write(t, w1, "o2\n")
	expect(t, f1, "o2") // not acknowledged
	write(t, w2, "n1\n")
	f1.Ack(expect(t, f1, "n1")[0])
	if err := f1.Close(); err != nil {
		t.Fatal(err)
	}

	ps, err := loadPositions(state)
	if err != nil || len(ps) != 2 || ps[0].Rotated != name+".1" || ps[0].Offset != 3 || ps[1].Rotated != "" || ps[1].Offset != 3 {
		t.Fatalf("positions = %+v, %v, want the rotated file at 3 and the new one at 3", ps, err)
	}

	write(t, w1, "o3\n")
	f2, clk := follow(t, o)
	expect(t, f2, "o2", "o3")
	write(t, w2, "n2\n")
	expect(t, f2, "n2")
	clk.Advance(defaultGrace)
	quiet(t, f2)
}

func TestFollowCloseSaves(t *testing.T) {
	state := t.TempDir()
	name := filepath.Join(t.TempDir(), "access.log")
	writeFile(t, name, "a\n")
	f, clk := follow(t, FollowOptions{Paths: []string{name}, Start: StartBeginning, StateDir: state})
	f.Ack(expect(t, f, "a")[0])
	write(t, appendLog(t, name), "b\n")
	expect(t, f, "b") // not acknowledged
	quiet(t, f)
	if clk.Pending() != 1 {
		t.Errorf("%d timers pending, want 1 (a save)", clk.Pending())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if clk.Pending() != 0 {
		t.Errorf("%d timers pending after Close, want none", clk.Pending())
	}
	b, err := os.ReadFile(filepath.Join(state, positionsFile))
	if err != nil {
		t.Fatal(err)
	}
	var doc positionsDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("positions file %s: %v", b, err)
	}
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	id := idOf(fi)
	if len(doc.Files) != 1 || doc.Files[0].Path != name || doc.Files[0].Offset != 2 || doc.Files[0].Ino != id.Ino || doc.Files[0].Dev != id.Dev {
		t.Errorf("positions = %s, want %s at offset 2", b, name)
	}
	ents, err := os.ReadDir(state)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Errorf("state dir holds %v, want only %s", ents, positionsFile)
	}
}

// TestFollowNoTimersWhenIdle: the only things that can wake an idle
// follower are file events and its own timers, and no timer is left once
// positions are saved and grace periods are over.
func TestFollowNoTimersWhenIdle(t *testing.T) {
	state := t.TempDir()
	name := filepath.Join(t.TempDir(), "access.log")
	w := appendLog(t, name)
	f, clk := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd, StateDir: state})
	// The starting positions are saved once, a second later.
	clk.Advance(saveDelay)
	quiet(t, f)
	if n := clk.Pending(); n != 0 {
		t.Fatalf("%d timers pending when idle, want none", n)
	}
	write(t, w, "a\n")
	f.Ack(expect(t, f, "a")[0])
	quiet(t, f)
	if n := clk.Pending(); n != 1 {
		t.Fatalf("%d timers pending after an Ack, want 1 (the save)", n)
	}
	clk.Advance(saveDelay)
	quiet(t, f)
	if n := clk.Pending(); n != 0 {
		t.Fatalf("%d timers pending when idle again, want none", n)
	}
	ps, err := loadPositions(state)
	if err != nil || len(ps) != 1 || ps[0].Offset != 2 {
		t.Errorf("saved positions = %+v, %v, want offset 2", ps, err)
	}
}

func TestFollowCorruptPositions(t *testing.T) {
	state := t.TempDir()
	writeFile(t, filepath.Join(state, positionsFile), `{"version":1,"files":[{"pa`)
	name := filepath.Join(t.TempDir(), "access.log")
	w := appendLog(t, name)
	write(t, w, "old\n")
	var logs bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	f, _ := follow(t, FollowOptions{Paths: []string{name}, Start: StartSaved, StateDir: state, Logger: logger})
	quiet(t, f)
	write(t, w, "new\n")
	expect(t, f, "new")
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "positions") {
		t.Errorf("log = %q, want a warning about the positions", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestFollowCancelStuckConsumer: cancelling the context stops a follower
// whose consumer has stopped reading.
func TestFollowCancelStuckConsumer(t *testing.T) {
	skipUnlessLinux(t)
	name := filepath.Join(t.TempDir(), "access.log")
	writeFile(t, name, strings.Join(nl(numbered("l", 0, 100)), ""))
	ctx, cancel := context.WithCancel(t.Context())
	f, err := Follow(ctx, FollowOptions{Paths: []string{name}, Start: StartBeginning, Clock: &fakeClock{}})
	if err != nil {
		t.Fatal(err)
	}
	recv(t, &testFollower{Follower: f})
	cancel()
	deadline := time.After(waitFor)
	for n := 0; ; n++ {
		select {
		case _, ok := <-f.Batches():
			if !ok {
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
				return
			}
		case <-deadline:
			t.Fatalf("Batches not closed %v after cancel (%d batches read)", waitFor, n)
		}
	}
}

func TestFollowOptionsErrors(t *testing.T) {
	skipUnlessLinux(t)
	dir := t.TempDir()
	for _, o := range []FollowOptions{
		{Paths: []string{filepath.Join(dir, "a.log")}, Start: "middle"},
		{Paths: []string{filepath.Join(dir, "a.log")}, Start: StartSaved},
		{Start: StartEnd},
		{Paths: []string{filepath.Join(dir, "*", "a.log")}, Start: StartEnd},
		{Paths: []string{filepath.Join(dir, "[.log")}, Start: StartEnd},
		{Paths: []string{filepath.Join(dir, "a.log")}, Start: StartEnd, Grace: -time.Second},
		{Paths: []string{filepath.Join(dir, "a.log")}, Start: StartEnd, MissingInterval: -time.Second},
	} {
		if f, err := Follow(t.Context(), o); err == nil {
			f.Close()
			t.Errorf("Follow(%+v) = nil error, want one", o)
		}
	}
}

// TestFollowOverlongBounded: 20 MB without a newline is skipped, never
// buffered beyond MaxLineBytes, counted as one overlong line; the line
// after its newline arrives normally. A line of exactly MaxLineBytes, written
// in pieces, still arrives whole.
func TestFollowOverlongBounded(t *testing.T) {
	name := filepath.Join(t.TempDir(), "access.log")
	w := appendLog(t, name)
	f, _ := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd})

	piece := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	for range 20 {
		write(t, w, piece)
		quiet(t, f) // read while it is written
	}
	if r := quiet(t, f); r.partialPeak > MaxLineBytes {
		t.Errorf("unfinished-line buffer grew to %d bytes, want at most %d", r.partialPeak, MaxLineBytes)
	}
	if s := f.Stats(); s.Overlong != 1 || s.Files[name].Overlong != 1 || s.Lines != 0 {
		t.Errorf("Stats = %+v, want 1 overlong line, none delivered", s)
	}
	write(t, w, "still the same line\n", "next\n")
	expect(t, f, "next")

	exact := strings.Repeat("x", MaxLineBytes)
	for i := 0; i < len(exact); i += 20_000 {
		write(t, w, exact[i:min(i+20_000, len(exact))])
		quiet(t, f)
	}
	write(t, w, "\n", "after\n")
	expect(t, f, exact, "after")
	r := quiet(t, f)
	if r.partialPeak > MaxLineBytes {
		t.Errorf("unfinished-line buffer grew to %d bytes, want at most %d", r.partialPeak, MaxLineBytes)
	}
	if s := f.Stats(); s.Overlong != 1 || s.Lines != 3 {
		t.Errorf("Stats = %+v, want 1 overlong, 3 lines", s)
	}

	// A line that passes the limit in the read that finishes it is left
	// out of that read's batch; the lines around it are not.
	write(t, w, "before\n", strings.Repeat("y", MaxLineBytes-100))
	expect(t, f, "before")
	quiet(t, f)
	write(t, w, strings.Repeat("y", 200)+"\n", "last\n")
	expect(t, f, "last")
	quiet(t, f)
	if s := f.Stats(); s.Overlong != 2 || s.Lines != 5 {
		t.Errorf("Stats = %+v, want 2 overlong, 5 lines", s)
	}
}

// logBuffer collects a follower's log for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(lockedWriter{&l.mu, &l.b}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// count counts the lines of the log that contain every one of subs.
func (l *logBuffer) count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for line := range strings.Lines(l.b.String()) {
		if !slices.ContainsFunc(subs, func(s string) bool { return !strings.Contains(line, s) }) {
			n++
		}
	}
	return n
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestFollowMissingPaths: a file or directory that does not exist does not
// make Follow fail; it is reported (ERROR, again every MissingInterval,
// Missing), watched through its nearest existing ancestor, and read from
// its beginning once it appears, also after it went away again. No timer
// runs once nothing is missing.
func TestFollowMissingPaths(t *testing.T) {
	base := t.TempDir()
	deep := filepath.Join(base, "a", "b", "access.log") // directories missing
	glob := filepath.Join(base, "c", "*.log")           // its directory missing
	later := filepath.Join(base, "later.log")           // file missing
	empty := filepath.Join(base, "*.none")              // matches nothing: not missing
	var logs logBuffer
	f, clk := follow(t, FollowOptions{Paths: []string{deep, glob, later, empty}, Start: StartEnd, Logger: logs.logger()})

	wantMissing := func(want ...string) {
		t.Helper()
		if got := f.Missing(); !slices.Equal(got, want) {
			t.Errorf("Missing() = %q, want %q", got, want)
		}
	}
	wantErrors := func(n int, paths ...string) {
		t.Helper()
		for _, p := range paths {
			if got := logs.count("level=ERROR", "path="+p); got != n {
				t.Errorf("%d errors logged for %s, want %d; log:\n%s", got, p, n, logs.String())
			}
		}
	}
	wantMissing(deep, filepath.Dir(glob), later)
	wantErrors(1, deep, filepath.Dir(glob), later)
	quiet(t, f)
	if n := clk.Pending(); n != 1 {
		t.Errorf("%d timers pending, want 1 (the reminder)", n)
	}
	clk.Advance(defaultMissingInterval)
	quiet(t, f)
	wantErrors(2, deep, filepath.Dir(glob), later)

	// Directories created one by one, then the file: read from its beginning.
	if err := os.Mkdir(filepath.Join(base, "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(base, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, deep, "d1\nd2\n")
	if l := expect(t, f, "d1", "d2")[0]; l.File != deep {
		t.Errorf("File = %q, want %q", l.File, deep)
	}
	wantMissing(filepath.Dir(glob), later)
	if n := logs.count("level=INFO", "log path appeared", "path="+deep); n != 1 {
		t.Errorf("%d INFO lines for %s appearing, want 1; log:\n%s", n, deep, logs.String())
	}

	// A directory created with its file already in it (mkdir -p, then mv).
	tmp := filepath.Join(t.TempDir(), "c")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(tmp, "x.log"), "x1\n")
	if err := os.Rename(tmp, filepath.Dir(glob)); err != nil {
		t.Fatal(err)
	}
	expect(t, f, "x1")
	writeFile(t, later, "l1\n")
	expect(t, f, "l1")
	wantMissing()
	quiet(t, f)
	if n := clk.Pending(); n != 0 {
		t.Errorf("%d timers pending with nothing missing, want none", n)
	}
	clk.Advance(defaultMissingInterval)
	quiet(t, f)
	wantErrors(2, deep, filepath.Dir(glob), later)

	// Gone again, and back.
	if err := os.RemoveAll(filepath.Join(base, "a")); err != nil {
		t.Fatal(err)
	}
	wantMissing(deep)
	if err := os.MkdirAll(filepath.Dir(deep), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, deep, "d3\n")
	expect(t, f, "d3")
	quiet(t, f)
}

// TestFollowMissingInterval: the reminder follows MissingInterval.
func TestFollowMissingInterval(t *testing.T) {
	name := filepath.Join(t.TempDir(), "nginx", "access.log")
	var logs logBuffer
	f, clk := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd, MissingInterval: time.Hour, Logger: logs.logger()})
	clk.Advance(time.Hour - time.Second)
	quiet(t, f)
	if n := logs.count("level=ERROR", name); n != 1 {
		t.Errorf("%d errors before the interval, want 1", n)
	}
	clk.Advance(time.Second)
	quiet(t, f)
	if n := logs.count("level=ERROR", name); n != 2 {
		t.Errorf("%d errors after the interval, want 2", n)
	}
}

func TestCheckPaths(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "access.log"), "")
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path          string
		errs, warning bool
	}{
		{filepath.Join(dir, "access.log"), false, false},
		{filepath.Join(dir, "*.log"), false, false},
		{filepath.Join(dir, "other.log"), false, true}, // not written yet
		{filepath.Join(dir, "*.none"), false, true},    // matches nothing yet
		{filepath.Join(dir, "ngnix", "acess.log"), true, false},
		{filepath.Join(dir, "ngnix", "*.log"), true, false},
		{filepath.Join(dir, "access.log", "x.log"), true, false}, // not a directory
		{filepath.Join(dir, "sub"), true, false},                 // not a file
		{filepath.Join(dir, "*", "access.log"), true, false},
		{filepath.Join(dir, "[.log"), true, false},
	} {
		errs, warnings := CheckPaths([]string{tc.path})
		if (len(errs) > 0) != tc.errs || (len(warnings) > 0) != tc.warning {
			t.Errorf("CheckPaths(%q) = %v, %q; want errors %v, warnings %v", tc.path, errs, warnings, tc.errs, tc.warning)
		}
		for _, err := range errs {
			if !strings.Contains(err.Error(), tc.path) {
				t.Errorf("CheckPaths(%q): error %q does not name the path", tc.path, err)
			}
		}
	}
}

// TestFollowGlobRotation: with a glob that also matches rotated names, a
// rotated file is read once: after its grace period it goes on under its
// new name from where reading stopped, through two rotations.
func TestFollowGlobRotation(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "access.log")
	writeFile(t, name, "a1\na2\n")
	f, clk := follow(t, FollowOptions{Paths: []string{name + "*"}, Start: StartBeginning})
	expect(t, f, "a1", "a2")
	w1 := appendLog(t, name)

	collect := func(n int) map[string]string { // text → file
		t.Helper()
		got := map[string]string{}
		for range n {
			l := recv(t, f)
			if _, dup := got[string(l.Text)]; dup {
				t.Fatalf("line %q delivered twice", l.Text)
			}
			got[string(l.Text)] = filepath.Base(l.File)
		}
		quiet(t, f)
		return got
	}

	if err := os.Rename(name, name+".1"); err != nil {
		t.Fatal(err)
	}
	w2 := appendLog(t, name)
	write(t, w1, "o1\n")
	write(t, w2, "n1\n")
	if got := collect(2); !reflectEqual(got, map[string]string{"o1": "access.log", "n1": "access.log"}) {
		t.Errorf("lines = %v, want o1 and n1 as access.log", got)
	}
	clk.Advance(defaultGrace)
	quiet(t, f)
	write(t, w1, "o2\n")
	if l := expect(t, f, "o2")[0]; l.File != name+".1" {
		t.Errorf("File = %q, want %q", l.File, name+".1")
	}
	quiet(t, f)

	// A second rotation: access.log.1 → .2, access.log → .1.
	if err := os.Rename(name+".1", name+".2"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(name, name+".1"); err != nil {
		t.Fatal(err)
	}
	w3 := appendLog(t, name)
	write(t, w1, "o3\n")
	write(t, w2, "n2\n")
	write(t, w3, "m1\n")
	collect(3)
	clk.Advance(defaultGrace)
	quiet(t, f)
	clk.Advance(defaultGrace) // the older file's grace may have started with the other's end
	quiet(t, f)
	write(t, w1, "o4\n")
	write(t, w2, "n3\n")
	write(t, w3, "m2\n")
	if got := collect(3); !reflectEqual(got, map[string]string{"o4": "access.log.2", "n3": "access.log.1", "m2": "access.log"}) {
		t.Errorf("lines = %v, want o4 from access.log.2, n3 from access.log.1, m2 from access.log", got)
	}
	if s := f.Stats(); s.Lines != 11 {
		t.Errorf("Lines = %d, want 11 (each once)", s.Lines)
	}
}

// TestFollowDirectoryReplaced: the directory of a log is removed while its
// deleted log is still open, and made again. The kernel reports nothing (the
// open file keeps the directory's deletion from being reported, and its
// parent is not watched); the missing-path reminder finds the new directory.
// (If the follower is slow, the deletion of the old log is handled after the
// new one is written, and found then: TestFollowDirectoryReplacedSeenEarly.
// The grace period of the old log then starts before the clock moves, so it
// is longer than the clock is moved, for the old log to be read to the end.)
func TestFollowDirectoryReplaced(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nginx")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, "access.log")
	w := appendLog(t, name)
	f, clk := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd, Grace: 5 * defaultMissingInterval})
	write(t, w, "a1\n")
	expect(t, f, "a1")

	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	clk.waitPending(t, 1) // the follower saw the log go: the reminder runs
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, name, "b1\n")
	clk.Advance(defaultMissingInterval)
	expect(t, f, "b1")

	// The new directory is watched: a file replacing the log is seen.
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	writeFile(t, name, "c1\n")
	expect(t, f, "c1")
	write(t, w, "a2\n") // the first file, still in its grace period
	expect(t, f, "a2")
	quiet(t, f)
}

// TestFollowDirectoryReplacedSeenEarly: as TestFollowDirectoryReplaced, but
// the directory is replaced and the new log written while the follower is
// still handling the deletion of the old log (held in its log line), so it
// finds the new log without the reminder, before the clock moves: the grace
// period of the old file starts then. Every line is delivered once, the old
// file's up to the end of its grace period.
func TestFollowDirectoryReplacedSeenEarly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nginx")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, "access.log")
	w := appendLog(t, name)
	hold := &holdHandler{
		Handler: slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}),
		msg:     "log moved or deleted; still read until a new one appears and the grace period ends",
		reached: make(chan struct{}),
		release: make(chan struct{}),
	}
	const grace = 5 * time.Minute
	f, clk := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd, Grace: grace, Logger: slog.New(hold)})
	write(t, w, "a1\n")
	expect(t, f, "a1")

	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	select {
	case <-hold.reached:
	case <-time.After(waitFor):
		t.Fatal("the follower did not see the log go")
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, name, "b1\n")
	close(hold.release)
	expect(t, f, "b1") // no reminder needed: the follower looked at the name again
	write(t, w, "a2\n")
	expect(t, f, "a2")

	clk.Advance(defaultMissingInterval) // as TestFollowDirectoryReplaced does; still in the grace period
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	writeFile(t, name, "c1\n")
	expect(t, f, "c1")
	write(t, w, "a3\n")
	expect(t, f, "a3")
	quiet(t, f)

	// The grace period of the first file started when the second was
	// found, before the clock moved: it ends at grace, and what is written
	// to the first file afterwards is not read.
	clk.Advance(grace - defaultMissingInterval)
	if r := quiet(t, f); r.graces != 1 { // the second file's
		t.Fatalf("%d grace periods running, want 1", r.graces)
	}
	write(t, w, "a4\n")
	quiet(t, f)
	if s := f.Stats(); s.Lines != 5 || s.Rotations != 2 {
		t.Fatalf("stats %+v, want 5 lines and 2 rotations", s.FileStats)
	}
}

// holdHandler passes records to Handler, and holds the goroutine logging the
// first record whose message is msg until release is closed, after closing
// reached: a test can change files while the follower is between two steps.
type holdHandler struct {
	slog.Handler
	msg     string
	once    sync.Once
	reached chan struct{}
	release chan struct{}
}

func (h *holdHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Message == h.msg {
		h.once.Do(func() {
			close(h.reached)
			<-h.release
		})
	}
	return err
}

// TestFollowGlobRestart: with start saved and a glob that matches rotated
// names, a restart during a grace period, and one after it, go on in the
// rotated file from the last acknowledged line: what was written to it
// meanwhile is delivered once, nothing before it again.
func TestFollowGlobRestart(t *testing.T) {
	state := t.TempDir()
	dir := t.TempDir()
	name := filepath.Join(dir, "access.log")
	w1 := appendLog(t, name)
	write(t, w1, "before\n")
	o := FollowOptions{Paths: []string{name + "*"}, Start: StartSaved, StateDir: state}

	f1, _ := follow(t, o)
	write(t, w1, "l1\n")
	f1.Ack(expect(t, f1, "l1")[0])
	if err := os.Rename(name, name+".1"); err != nil {
		t.Fatal(err)
	}
	w2 := appendLog(t, name)
	write(t, w1, "o1\n")
	f1.Ack(expect(t, f1, "o1")[0])
	write(t, w2, "n1\n")
	f1.Ack(expect(t, f1, "n1")[0])
	if err := f1.Close(); err != nil { // within the grace period
		t.Fatal(err)
	}

	write(t, w1, "o2\n")
	write(t, w2, "n2\n")
	f2, clk := follow(t, o)
	got := map[string]string{}
	for range 2 {
		l := recv(t, f2)
		got[string(l.Text)] = filepath.Base(l.File)
		f2.Ack(l)
	}
	if want := map[string]string{"o2": "access.log.1", "n2": "access.log"}; !reflectEqual(got, want) {
		t.Errorf("after a restart in the grace period: lines = %v, want %v", got, want)
	}
	quiet(t, f2)
	clk.Advance(defaultGrace)
	quiet(t, f2)
	write(t, w1, "o3\n")
	f2.Ack(expect(t, f2, "o3")[0])
	if err := f2.Close(); err != nil {
		t.Fatal(err)
	}

	write(t, w1, "o4\n")
	f3, _ := follow(t, o)
	if l := expect(t, f3, "o4")[0]; l.File != name+".1" {
		t.Errorf("File = %q, want %q", l.File, name+".1")
	}
	quiet(t, f3)
}

// TestFollowClosedFileRemembered: a rotated file read to its end and
// closed (no followed name shows it) is remembered in the positions; when
// the configuration changes to a glob that matches it, it goes on from
// there, neither from its start nor from its end.
func TestFollowClosedFileRemembered(t *testing.T) {
	state := t.TempDir()
	name := filepath.Join(t.TempDir(), "access.log")
	w1 := appendLog(t, name)
	write(t, w1, "before\n")
	f1, clk := follow(t, FollowOptions{Paths: []string{name}, Start: StartSaved, StateDir: state})
	write(t, w1, "o1\n")
	f1.Ack(expect(t, f1, "o1")[0])
	if err := os.Rename(name, name+".1"); err != nil {
		t.Fatal(err)
	}
	w2 := appendLog(t, name)
	write(t, w2, "n1\n")
	f1.Ack(expect(t, f1, "n1")[0])
	clk.Advance(defaultGrace) // access.log.1 is closed
	quiet(t, f1)
	write(t, w1, "late\n") // not followed: nobody reads it now
	quiet(t, f1)
	if err := f1.Close(); err != nil {
		t.Fatal(err)
	}
	ps, err := loadPositions(state)
	if err != nil || len(ps) != 2 || !ps[1].Closed || ps[1].Path != name+".1" || ps[1].Offset != int64(len("before\no1\n")) {
		t.Fatalf("positions = %+v, %v, want access.log and the closed access.log.1 at %d", ps, err, len("before\no1\n"))
	}

	f2, _ := follow(t, FollowOptions{Paths: []string{name + "*"}, Start: StartSaved, StateDir: state})
	if l := expect(t, f2, "late")[0]; l.File != name+".1" {
		t.Errorf("File = %q, want %q", l.File, name+".1")
	}
	quiet(t, f2)
}

// TestFollowForgetsGoneFiles: a closed file is remembered only while it
// exists; the positions file does not grow with every rotation.
func TestFollowForgetsGoneFiles(t *testing.T) {
	state := t.TempDir()
	name := filepath.Join(t.TempDir(), "access.log")
	w := appendLog(t, name)
	f, clk := follow(t, FollowOptions{Paths: []string{name}, Start: StartEnd, StateDir: state})
	closed := func() (n int) { // in the positions saved now
		t.Helper()
		quiet(t, f) // the save is scheduled
		clk.Advance(saveDelay)
		quiet(t, f) // and done
		ps, err := loadPositions(state)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if p.Closed {
				n++
			}
		}
		return n
	}
	for i := range 3 {
		if err := os.Rename(name, name+".1"); err != nil {
			t.Fatal(err)
		}
		w.Close()
		w = appendLog(t, name)
		write(t, w, fmt.Sprintf("n%d\n", i))
		f.Ack(expect(t, f, fmt.Sprintf("n%d", i))[0])
		clk.Advance(defaultGrace)
		quiet(t, f)
		if n := closed(); n != 1 {
			t.Errorf("rotation %d: %d closed files remembered, want 1 (the one now at access.log.1)", i, n)
		}
	}
	if err := os.Remove(name + ".1"); err != nil {
		t.Fatal(err)
	}
	write(t, w, "x\n")
	f.Ack(expect(t, f, "x")[0])
	if n := closed(); n != 0 {
		t.Errorf("%d closed files remembered after the last was deleted, want none", n)
	}
}

func TestRememberBounded(t *testing.T) {
	f := &Follower{closed: map[fileID]*gen{}}
	for i := range maxClosed + 5 {
		f.remember(&gen{id: fileID{Dev: 1, Ino: uint64(i)}})
	}
	if len(f.closed) != maxClosed {
		t.Errorf("%d closed files remembered, want %d", len(f.closed), maxClosed)
	}
	for i := range 5 {
		if f.closed[fileID{Dev: 1, Ino: uint64(i)}] != nil {
			t.Errorf("file %d of the oldest still remembered", i)
		}
	}
}

// TestDropOverlong: the lines over MaxLineBytes, anywhere in a chunk and
// however many, are dropped and counted; the others are kept in order.
func TestDropOverlong(t *testing.T) {
	line := func(n int, c string) string { return strings.Repeat(c, n) + "\n" }
	max := MaxLineBytes
	for _, tc := range []struct {
		name  string
		lines []string
		drop  []bool
	}{
		{"none", []string{line(10, "a"), line(max, "b"), line(0, ""), line(max, "c")}, []bool{false, false, false, false}},
		{"first", []string{line(max+1, "a"), line(5, "b")}, []bool{true, false}},
		{"last", []string{line(5, "a"), line(max, "b"), line(max+1, "c")}, []bool{false, false, true}},
		{"several", []string{line(3, "a"), line(3*max, "b"), line(max, "c"), line(max+2, "d"), line(1, "e")}, []bool{false, true, false, true, false}},
		{"only", []string{line(max+1, "a")}, []bool{true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chunk := []byte(strings.Join(tc.lines, ""))
			var want string
			dropped := 0
			for i, l := range tc.lines {
				if tc.drop[i] {
					dropped++
				} else {
					want += l
				}
			}
			f := &Follower{log: slog.New(slog.DiscardHandler), stats: FollowStats{Files: map[string]FileStats{}}}
			got := f.dropOverlong(&gen{e: &entry{name: "x"}}, chunk)
			if string(got) != want || f.Stats().Overlong != int64(dropped) {
				t.Errorf("dropOverlong kept %d bytes, %d overlong; want %d bytes, %d overlong", len(got), f.Stats().Overlong, len(want), dropped)
			}
		})
	}
}
