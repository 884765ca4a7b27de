package statedir

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func syscallUmask(m int) int { return syscall.Umask(m) }

func mkfifo(path string) error { return syscall.Mkfifo(path, 0o600) }

func TestCheck(t *testing.T) {
	base := t.TempDir()
	mk := func(name string, mode os.FileMode) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(mk("target", 0o700), link); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, dir string
		want      string // in the error; "" for none
		untrusted bool
	}{
		{"missing", filepath.Join(base, "missing"), "", false},
		{"private", mk("private", 0o700), "", false},
		{"readable by others", mk("readable", 0o755), "", false},
		{"empty", "", "empty state directory", false},
		{"relative", "var/lib/webknock", `state directory "var/lib/webknock" is relative`, false},
		{"world-writable", mk("world", 0o777), "has mode 0777: others may write it", true},
		{"group-writable", mk("group", 0o770), "has mode 0770", true},
		{"sticky world-writable", mk("sticky", 0o1777), "others may write it", true},
		{"a file", file, "is not a directory", true},
		{"a link", link, "is not a directory", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(tc.dir)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Check(%q) = %v, want nil", tc.dir, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check(%q) = %v, want an error with %q", tc.dir, err, tc.want)
			}
			if errors.Is(err, ErrUntrusted) != tc.untrusted {
				t.Errorf("Check(%q) = %v: errors.Is ErrUntrusted = %v, want %v", tc.dir, err, !tc.untrusted, tc.untrusted)
			}
		})
	}
}

func TestPrepare(t *testing.T) {
	old := syscallUmask(0)
	defer syscallUmask(old)
	dir := filepath.Join(t.TempDir(), "a", "state")
	if err := Prepare(dir); err != nil {
		t.Fatalf("Prepare(%q) = %v", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state directory mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	if err := Prepare(dir); err != nil {
		t.Errorf("Prepare of an existing directory = %v", err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := Prepare(dir); !errors.Is(err, ErrUntrusted) {
		t.Errorf("Prepare of a world-writable directory = %v, want ErrUntrusted", err)
	}
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.json", 0o600, "{}")
	readable := write("readable.json", 0o644, "{}")
	link := filepath.Join(dir, "link.json")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := mkfifo(fifo); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
		max        int64
		want       string
		untrusted  bool
		missing    bool
	}{
		{"good", good, 10, "", false, false},
		{"readable by others is fine", readable, 10, "", false, false},
		{"world-writable", write("world.json", 0o666, "{}"), 10, "others may write it", true, false},
		{"group-writable", write("group.json", 0o620, "{}"), 10, "has mode 0620", true, false},
		{"symbolic link", link, 10, "is a symbolic link", true, false},
		{"not a regular file", fifo, 10, "is not a regular file", true, false},
		{"too big", write("big.json", 0o600, strings.Repeat("x", 11)), 10, "more than 10", false, false},
		{"missing", filepath.Join(dir, "missing.json"), 10, "no such file", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ReadFile(tc.path, tc.max)
			if tc.want == "" {
				if err != nil || string(b) != "{}" {
					t.Fatalf("ReadFile(%q) = %q, %v; want {}", tc.path, b, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ReadFile(%q) = %v, want an error with %q", tc.path, err, tc.want)
			}
			if errors.Is(err, ErrUntrusted) != tc.untrusted || errors.Is(err, fs.ErrNotExist) != tc.missing {
				t.Errorf("ReadFile(%q) = %v: untrusted %v, missing %v; want %v, %v", tc.path, err,
					errors.Is(err, ErrUntrusted), errors.Is(err, fs.ErrNotExist), tc.untrusted, tc.missing)
			}
		})
	}
}

func TestWriteFile(t *testing.T) {
	old := syscallUmask(0)
	defer syscallUmask(old)
	dir := t.TempDir()
	p := filepath.Join(dir, "grants.json")
	for _, data := range []string{"one", "two"} {
		if err := WriteFile(p, []byte(data)); err != nil {
			t.Fatal(err)
		}
		if b, err := ReadFile(p, 10); err != nil || string(b) != data {
			t.Fatalf("after WriteFile(%q): ReadFile = %q, %v", data, b, err)
		}
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	left := filepath.Join(dir, "grants.json"+tempSuffix+"123")
	if err := os.WriteFile(left, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := RemoveTemps(p); len(got) != 1 || got[0] != left {
		t.Errorf("RemoveTemps = %v, want [%s]", got, left)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after RemoveTemps, want only the file", len(entries))
	}
}

// TestAcquire: the lock is exclusive between open files (as between
// processes), names its holder's PID, and is free again after Close.
func TestAcquire(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	l, err := Acquire(dir)
	if err != nil {
		t.Fatalf("Acquire = %v", err)
	}
	_, err = Acquire(dir)
	var le *LockedError
	if !errors.As(err, &le) || le.PID != os.Getpid() || le.Dir != dir {
		t.Fatalf("second Acquire = %v, want a LockedError naming PID %d", err, os.Getpid())
	}
	if want := "webknock (PID " + strconv.Itoa(os.Getpid()) + ") already runs with state_dir " + dir; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, err := Acquire(dir)
	if err != nil {
		t.Fatalf("Acquire after Close = %v", err)
	}
	l2.Close()
	if err := os.Chmod(filepath.Join(dir, lockFile), 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := Acquire(dir); !errors.Is(err, ErrUntrusted) {
		t.Errorf("Acquire with a world-writable lock file = %v, want ErrUntrusted", err)
	}
}
