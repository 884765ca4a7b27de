package hook

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckProgram(t *testing.T) {
	type setup func(t *testing.T, dir string) string // returns the path to check
	file := func(mode os.FileMode) setup {
		return func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "hook")
			if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, mode); err != nil {
				t.Fatal(err)
			}
			return p
		}
	}
	inDir := func(mode os.FileMode) setup {
		return func(t *testing.T, dir string) string {
			sub := filepath.Join(dir, "bin")
			if err := os.Mkdir(sub, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(sub, mode); err != nil {
				t.Fatal(err)
			}
			return file(0o755)(t, sub)
		}
	}
	chown := func(s setup, dirToo bool) setup {
		return func(t *testing.T, dir string) string {
			p := s(t, dir)
			target := p
			if dirToo {
				target = filepath.Dir(p)
			}
			if err := os.Chown(target, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return p
		}
	}
	link := func(to setup) setup {
		return func(t *testing.T, dir string) string {
			target := to(t, dir)
			p := filepath.Join(dir, "link")
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			return p
		}
	}
	tests := []struct {
		name  string
		setup setup
		path  string // instead of setup
		want  string // in the error; "" for none
		root  bool   // needs root (chown)
	}{
		{name: "system program", path: "/bin/true"},
		{name: "own script", setup: file(0o755)},
		{name: "owner-only script", setup: file(0o700)},
		{name: "in a sticky directory", setup: inDir(os.ModeSticky | 0o777)},
		{name: "link to a good script", setup: link(file(0o755))},
		{name: "relative", path: "bin/true", want: `hook program "bin/true" is not an absolute path`},
		{name: "missing", path: "/nonexistent/hook", want: "hook program: stat /nonexistent/hook: no such file or directory"},
		{name: "directory", path: "/usr/bin", want: "is not a regular file (d"},
		{name: "device", path: "/dev/null", want: "is not a regular file (D"},
		{name: "not executable", setup: file(0o644), want: "is not executable (mode 0644); chmod 755 it"},
		{name: "group-writable", setup: file(0o775), want: "has mode 0775: other users may change what webknock runs; chmod go-w it"},
		{name: "world-writable", setup: file(0o757), want: "has mode 0757"},
		{name: "link to a writable script", setup: link(file(0o777)), want: "has mode 0777"},
		{name: "in a group-writable directory", setup: inDir(0o770), want: "/bin has mode 0770: other users may replace the program"},
		{name: "in a world-writable directory", setup: inDir(0o777), want: "/bin has mode 0777"},
		{name: "owned by another user", setup: chown(file(0o755), false), want: "is owned by uid 65534, neither webknock's uid 0 nor root: that user could run code as webknock; chown root it", root: true},
		{name: "in a directory of another user", setup: chown(inDir(0o755), true), want: "/bin is owned by uid 65534", root: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root to chown")
			}
			p := tt.path
			if tt.setup != nil {
				p = tt.setup(t, t.TempDir())
			}
			err := CheckProgram(p)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("CheckProgram(%q) = %v, want nil", p, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("CheckProgram(%q) = %v, want an error with %q", p, err, tt.want)
			}
		})
	}
}

// TestRunChecksProgram: a program that became writable by others after
// the start is not run.
func TestRunChecksProgram(t *testing.T) {
	p := filepath.Join(t.TempDir(), "hook")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho ran\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r, recs := newRunner(t, Config{OnGrant: []string{p}})
	if err := os.Chmod(p, 0o777); err != nil {
		t.Fatal(err)
	}
	r.Run(OnGrant, grant)
	rec := recs.wait(t)
	if rec["msg"] != "hook not run" || !strings.Contains(rec["err"].(error).Error(), "has mode 0777") {
		t.Errorf("logged %v, want the program refused", rec)
	}
	wantCounts(t, r, map[string]uint64{"on_grant/failed": 1})
}
