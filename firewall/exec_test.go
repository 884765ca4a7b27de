package firewall

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeIPTables writes a stand-in for iptables into dir: it logs its
// arguments to dir/calls and answers as setAnswer says. In mode hang it
// writes a byte to dir/fifo and leaves a grandchild, a sleep, holding the
// fifo open until it is killed.
func fakeIPTables(t *testing.T, dir, version string) string {
	t.Helper()
	script := `#!/bin/sh
d='` + dir + `'
if [ "$1" = --version ]; then echo '` + version + `'; exit 0; fi
echo "$*" >>"$d/calls"
if [ "$(cat "$d/mode")" = hang ]; then
	(printf x >&3; exec sleep 3600) 3>"$d/fifo" &
	wait
fi
cat "$d/out"
cat "$d/err" >&2
exit "$(cat "$d/status")"
`
	path := filepath.Join(dir, "iptables")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	setAnswer(t, dir, 0, "", "")
	return path
}

// setAnswer sets what the stand-in answers: exit status, standard output
// and error; status -1 makes it hang.
func setAnswer(t *testing.T, dir string, status int, out, stderr string) {
	t.Helper()
	mode := "answer"
	if status < 0 {
		mode = "hang"
	}
	for name, text := range map[string]string{"mode": mode, "status": strconv.Itoa(status), "out": out, "err": stderr} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.Remove(filepath.Join(dir, "calls"))
}

func calls(dir string) []string {
	b, _ := os.ReadFile(filepath.Join(dir, "calls"))
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// Answers of iptables v1.8.9 (nf_tables), as seen in a network namespace.
const (
	msgLock         = "Another app is currently holding the xtables lock. Stopped waiting after 5s."
	msgIncompatible = "iptables v1.8.9 (nf_tables): chain `WEBKNOCK' in table `filter' is incompatible, use 'nft' tool."
	msgBadRule      = "iptables: Bad rule (does a matching rule exist in that chain?)."
	msgNoTarget     = "iptables v1.8.9 (nf_tables): Chain 'WEBKNOCK' does not exist"
	msgBadMatch     = "iptables v1.8.9 (nf_tables): Couldn't load match `time':No such file or directory"
	msgInsertIndex  = "iptables: Index of insertion too big."
)

// TestExecTables runs the exec backend on a stand-in for iptables: the
// arguments it passes, how it reads answers and failures, and that a call
// whose context ends is killed with its children.
func TestExecTables(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skipf("skipping: the stand-in for iptables needs /bin/sh: %v", err)
	}
	dir := t.TempDir()
	fakeIPTables(t, dir, "iptables v1.8.9 (nf_tables)")
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	et, err := newExecTables(ipv4, 5*time.Second, 10*time.Second)
	if err != nil {
		t.Fatalf("newExecTables: %v", err)
	}

	setAnswer(t, dir, 0, "-N WEBKNOCK\n[3:180] -A WEBKNOCK -s 192.0.2.1/32 -j ACCEPT\n", "")
	lines, err := et.List(ctx0, table, "WEBKNOCK")
	if want := []string{"-N WEBKNOCK", "-A WEBKNOCK -s 192.0.2.1/32 -j ACCEPT"}; err != nil || !slices.Equal(lines, want) {
		t.Errorf("List = %q, %v; want %q", lines, err, want)
	}
	if got := calls(dir); !slices.Equal(got, []string{"-w 5 -t filter -S WEBKNOCK"}) {
		t.Errorf("List ran iptables %q", got)
	}
	setAnswer(t, dir, 0, "", "")
	et.Insert(ctx0, table, "WEBKNOCK", 1, "-s", "192.0.2.1/32", "-m", "comment", "--comment", "a b", "-j", "ACCEPT")
	et.DeleteIfExists(ctx0, table, "INPUT", "-j", "WEBKNOCK")
	et.ChainExists(ctx0, table, "WEBKNOCK")
	want := []string{
		"-w 5 -t filter -I WEBKNOCK 1 -s 192.0.2.1/32 -m comment --comment a b -j ACCEPT",
		"-w 5 -t filter -D INPUT -j WEBKNOCK",
		"-w 5 -t filter -S WEBKNOCK 1",
	}
	if got := calls(dir); !slices.Equal(got, want) {
		t.Errorf("iptables ran with\n  %q\nwant\n  %q", got, want)
	}

	tests := []struct {
		status int
		msg    string
		call   func() error
		wantIs error // nil: no error
	}{
		{1, msgIncompatible, func() error { _, err := et.List(ctx0, table, "WEBKNOCK"); return err }, errNoChain},
		{4, msgLock, func() error { _, err := et.List(ctx0, table, "WEBKNOCK"); return err }, errLocked},
		{4, msgLock, func() error { return et.DeleteIfExists(ctx0, table, "WEBKNOCK", "-j", "ACCEPT") }, errLocked},
		{4, msgLock, func() error { _, err := et.Exists(ctx0, table, "WEBKNOCK", "-j", "ACCEPT"); return err }, errLocked},
		{1, msgIncompatible, func() error {
			if ok, err := et.ChainExists(ctx0, table, "WEBKNOCK"); ok || err != nil {
				return errors.New("exists")
			}
			return nil
		}, nil},
		{1, msgBadRule, func() error {
			if ok, err := et.Exists(ctx0, table, "WEBKNOCK", "-j", "ACCEPT"); ok || err != nil {
				return errors.New("exists")
			}
			return nil
		}, nil},
		{1, msgBadRule, func() error { return et.DeleteIfExists(ctx0, table, "WEBKNOCK", "-j", "ACCEPT") }, nil},
		{2, msgNoTarget, func() error { return et.DeleteIfExists(ctx0, table, "INPUT", "-j", "WEBKNOCK") }, nil},
		{2, msgNoTarget, func() error { return et.Insert(ctx0, table, "INPUT", 1, "-j", "WEBKNOCK") }, errNoChain},
		{1, msgInsertIndex, func() error { return et.Insert(ctx0, table, "WEBKNOCK", 2, "-j", "ACCEPT") }, errEmptyChain},
		{2, msgBadMatch, func() error { return et.DeleteIfExists(ctx0, table, "WEBKNOCK", "-m", "time") }, errNotNil},
	}
	for i, tc := range tests {
		setAnswer(t, dir, tc.status, "", tc.msg)
		err := tc.call()
		switch {
		case tc.wantIs == nil && err != nil:
			t.Errorf("%d (%s): %v, want no error", i, tc.msg, err)
		case tc.wantIs == errNotNil && err == nil:
			t.Errorf("%d (%s): no error", i, tc.msg)
		case tc.wantIs != nil && tc.wantIs != errNotNil && !errors.Is(err, tc.wantIs):
			t.Errorf("%d (%s): %v, want %v", i, tc.msg, err, tc.wantIs)
		}
	}

	// A hung call is killed when its context ends, and so is the sleep it
	// left: the fifo it held reads to its end.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// Until the sleep holds it, the fifo has this writer: no early EOF.
	w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	setAnswer(t, dir, -1, "", "")
	ctx, cancel := context.WithCancel(ctx0)
	done := make(chan error, 1)
	go func() { _, err := et.List(ctx, table, "WEBKNOCK"); done <- err }()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(r, make([]byte, 1)); err != nil {
		t.Fatalf("the hung call never started: %v", err)
	}
	w.Close()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("List of a killed call = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the killed call did not return")
	}
	if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("fifo read = %d, %v; want EOF: the sleep survived the kill", n, err)
	}
}

// errNotNil in a test table wants some error.
var errNotNil = errors.New("any error")

// TestExecVersions: the lock wait is passed in the form the version of
// iptables understands; one without -C is refused.
func TestExecVersions(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skipf("skipping: the stand-in for iptables needs /bin/sh: %v", err)
	}
	tests := []struct {
		version string
		wait    []string // nil with ok false: refused
		ok      bool
	}{
		{"iptables v1.8.9 (nf_tables)", []string{"-w", "3"}, true},
		{"iptables v1.6.0", []string{"-w", "3"}, true},
		{"iptables v1.4.21", []string{"-w"}, true},
		{"iptables v1.4.19", nil, true},
		{"iptables v1.4.10", nil, false},
	}
	for _, tc := range tests {
		dir := t.TempDir()
		fakeIPTables(t, dir, tc.version)
		t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
		et, err := newExecTables(ipv4, 2500*time.Millisecond, 10*time.Second)
		if (err == nil) != tc.ok || (err == nil && !slices.Equal(et.wait, tc.wait)) {
			t.Errorf("%s: newExecTables = %+v, %v; want wait %q, ok %v", tc.version, et, err, tc.wait, tc.ok)
		}
	}
}
