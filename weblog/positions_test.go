package weblog

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
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
