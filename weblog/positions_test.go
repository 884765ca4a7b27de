package weblog

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/webknock/webknock/internal/statedir"
)

func TestPositionsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if ps, err := loadPositions(dir); err != nil || ps != nil {
		t.Fatalf("loadPositions(empty dir) = %v, %v, want nil, nil", ps, err)
	}
	want := []position{
		{Path: "/var/log/nginx/access.log", Dev: 2049, Ino: 17, Offset: 4096, FirstLine: "ab"},
		{Path: "/var/log/nginx/access.log", Dev: 2049, Ino: 12, Offset: 10, FirstLine: "cd", Rotated: "/var/log/nginx/access.log.1"},
	}
	for range 2 { // the second save replaces the first
		if err := savePositions(dir, want); err != nil {
			t.Fatal(err)
		}
	}
	got, err := loadPositions(dir)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("loadPositions = %+v, %v, want %+v", got, err, want)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != positionsFile {
		t.Errorf("state dir holds %v, want only %s (no temporary files left)", ents, positionsFile)
	}
}

func TestPositionsCorrupt(t *testing.T) {
	for _, tc := range []struct{ name, text string }{
		{"truncated", `{"version":1,"files":[{"path":"/x"`},
		{"not json", "\x00\x01garbage"},
		{"future version", `{"version":2,"files":[]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, positionsFile), []byte(tc.text), 0o600); err != nil {
				t.Fatal(err)
			}
			if ps, err := loadPositions(dir); err == nil {
				t.Errorf("loadPositions(%q) = %v, nil, want an error", tc.text, ps)
			}
		})
	}
}

func TestFirstLineHash(t *testing.T) {
	long := strings.Repeat("x", firstLineMax+10)
	for _, tc := range []struct {
		name, a, b string
		same       bool
	}{
		{"same first line, other rest", "GET /a\nmore\n", "GET /a\nother\n", true},
		{"other first line", "GET /a\n", "GET /b\n", false},
		{"unfinished first lines are all alike", "GET /a", "GET /b", true},
		{"unfinished and finished differ", "GET /a", "GET /a\n", false},
		{"a long first line is hashed by its start", long + "1\n", long + "2\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ha, err := firstLineHash(strings.NewReader(tc.a))
			if err != nil {
				t.Fatal(err)
			}
			hb, err := firstLineHash(strings.NewReader(tc.b))
			if err != nil {
				t.Fatal(err)
			}
			if (ha == hb) != tc.same {
				t.Errorf("firstLineHash(%.20q) = %s, firstLineHash(%.20q) = %s, want same = %v", tc.a, ha, tc.b, hb, tc.same)
			}
		})
	}
}

func TestResumable(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "access.log")
	if err := os.WriteFile(name, []byte("one\ntwo\nthree\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fh, fi, err := openLog(name)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	h, err := firstLineHash(fh)
	if err != nil {
		t.Fatal(err)
	}
	id := idOf(fi)
	good := position{Path: name, Dev: id.Dev, Ino: id.Ino, Offset: 8, FirstLine: h}
	for _, tc := range []struct {
		name string
		edit func(*position)
		want bool
	}{
		{"same file", func(*position) {}, true},
		{"at the start", func(p *position) { p.Offset = 0 }, true},
		{"at the end", func(p *position) { p.Offset = fi.Size() }, true},
		{"other inode", func(p *position) { p.Ino++ }, false},
		{"other device", func(p *position) { p.Dev++ }, false},
		{"other first line", func(p *position) { p.FirstLine = "00" }, false},
		{"beyond the end", func(p *position) { p.Offset = fi.Size() + 1 }, false},
		{"inside a line", func(p *position) { p.Offset = 6 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := good
			tc.edit(&p)
			if got, why := resumable(p, fh, fi); got != tc.want {
				t.Errorf("resumable(%+v) = %v (%s), want %v", p, got, why, tc.want)
			}
		})
	}
}

// TestPositionsUntrusted: a positions file another user could have written
// makes Follow fail, whatever the start mode, before anything is followed,
// and CheckState reports the same; a corrupt or oversized one only makes
// every file start at its end.
func TestPositionsUntrusted(t *testing.T) {
	skipUnlessLinux(t)
	good := `{"version":1,"files":[]}`
	for _, tc := range []struct {
		name      string
		make      func(t *testing.T, file string)
		untrusted bool
	}{
		{"missing", func(*testing.T, string) {}, false},
		{"ours", func(t *testing.T, file string) { writeMode(t, file, good, 0o600) }, false},
		{"group-writable", func(t *testing.T, file string) { writeMode(t, file, good, 0o620) }, true},
		{"world-writable", func(t *testing.T, file string) { writeMode(t, file, good, 0o606) }, true},
		{"symbolic link", func(t *testing.T, file string) {
			other := filepath.Join(t.TempDir(), "other.json")
			writeMode(t, other, good, 0o600)
			if err := os.Symlink(other, file); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"directory", func(t *testing.T, file string) {
			if err := os.Mkdir(file, 0o700); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"corrupt", func(t *testing.T, file string) { writeMode(t, file, `{"version":1,"fi`, 0o600) }, false},
		{"oversized", func(t *testing.T, file string) {
			writeMode(t, file, good+strings.Repeat(" ", maxPositionsBytes), 0o600)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			tc.make(t, filepath.Join(state, positionsFile))
			err := CheckState(state)
			if got := errors.Is(err, statedir.ErrUntrusted); got != tc.untrusted || (err != nil) != tc.untrusted {
				t.Errorf("CheckState = %v, want untrusted = %v", err, tc.untrusted)
			}
			name := filepath.Join(t.TempDir(), "access.log")
			for _, start := range []string{StartSaved, StartEnd} {
				f, err := Follow(t.Context(), FollowOptions{Paths: []string{name}, Start: start, StateDir: state, Clock: &fakeClock{}})
				if err == nil {
					f.Close()
				}
				if got := errors.Is(err, statedir.ErrUntrusted); got != tc.untrusted || (err != nil) != tc.untrusted {
					t.Errorf("Follow(start %s) = %v, want untrusted = %v", start, err, tc.untrusted)
				}
			}
		})
	}
	if err := CheckState(""); err != nil {
		t.Errorf(`CheckState("") = %v, want nil`, err)
	}
}

// TestPositionsSavedThroughStatedir: positions are written 0600 by
// statedir.WriteFile, whose leftovers from an interrupted save Follow removes.
func TestPositionsSavedThroughStatedir(t *testing.T) {
	skipUnlessLinux(t)
	state := t.TempDir()
	leftover := filepath.Join(state, positionsFile+".tmp123456")
	writeMode(t, leftover, "{", 0o600)
	name := filepath.Join(t.TempDir(), "access.log")
	writeFile(t, name, "a\n")
	f, _ := follow(t, FollowOptions{Paths: []string{name}, Start: StartBeginning, StateDir: state})
	f.Ack(expect(t, f, "a")[0])
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file %s left: %v", leftover, err)
	}
	fi, err := os.Lstat(filepath.Join(state, positionsFile))
	if err != nil || fi.Mode() != 0o600 {
		t.Fatalf("positions file: %v, %v, want mode 0600", fi.Mode(), err)
	}
	ps, err := loadPositions(state)
	if err != nil || len(ps) != 1 || ps[0].Offset != 2 {
		t.Errorf("positions = %+v, %v, want one at offset 2", ps, err)
	}
}

func writeMode(t *testing.T, name, text string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(name, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(name, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// FuzzPositions: a positions file of any content is read or refused with
// an error, never a panic, and what is read has a path and an offset that
// cannot be negative.
func FuzzPositions(f *testing.F) {
	f.Add([]byte(`{"version":1,"files":[{"path":"/var/log/a.log","dev":2049,"ino":7,"offset":12,"first_line":"ab"}]}`))
	f.Add([]byte(`{"version":1,"files":[{"path":"/a","offset":-1}]}`))
	f.Add([]byte(`{"version":2,"files":[]}`))
	f.Add([]byte(`{"version":1,"files":[{"path":"/a","rotated":"/a.1","closed":true,"offset":9223372036854775807}]}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ps, err := parsePositions("positions.json", b)
		if err != nil {
			return
		}
		for _, p := range ps {
			if p.Offset < 0 || p.Path == "" {
				t.Fatalf("parsePositions(%q) accepted %+v", b, p)
			}
		}
	})
}
