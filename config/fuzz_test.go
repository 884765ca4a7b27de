package config

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func FuzzConfig(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.yaml")
	bad, _ := filepath.Glob("testdata/bad/*.yaml")
	for _, name := range append(seeds, bad...) {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(seq + "  - {name: b, steps: [/k/b], knock_page: /k/c, ports: [53/udp], timeout: 1s}\n"))
	f.Add([]byte("base: &b {steps: [/k/a], knock_page: /k/o}\nsequences: [{<<: *b, name: x}]\n"))
	// A worker runs one input at a time, so they can share the file.
	path := filepath.Join(f.TempDir(), "config.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(Options{Path: path})
		_, err2 := Load(Options{Path: path})
		if (err == nil) != (err2 == nil) || err != nil && err.Error() != err2.Error() {
			t.Fatalf("Load is not deterministic:\n%v\nthen\n%v", err, err2)
		}
		if err != nil {
			if c != nil {
				t.Fatalf("Load(%q) returned a config with errors", data)
			}
			for _, e := range err.(Errors) {
				if e.Source != path || e.Message == "" {
					t.Fatalf("Load(%q): problem %+v lacks source or message", data, e)
				}
			}
			return
		}
		checkInvariants(t, c)
	})
}

var pathChars = regexp.MustCompile(`^/[A-Za-z0-9._~/-]*$`)

// checkInvariants fails t unless c is something the daemon can run with.
func checkInvariants(t *testing.T, c *Config) {
	t.Helper()
	if len(c.Sequences) == 0 {
		t.Fatalf("config without sequences: %+v", c)
	}
	if len(c.Log.Paths) == 0 || c.Log.Format == "" || c.StateDir == "" {
		t.Fatalf("config without log paths, format or state dir: %+v", c)
	}
	h := c.Hooks
	for _, argv := range [][]string{h.OnGrant, h.OnEnd, h.OnLockout} {
		if len(argv) > 0 && !strings.HasPrefix(argv[0], "/") {
			t.Fatalf("hook with a relative program: %q", argv)
		}
	}
	if h.Timeout <= 0 || h.MaxRunning < 1 {
		t.Fatalf("hooks timeout %v, max_running %d", h.Timeout, h.MaxRunning)
	}
	seen := map[string]bool{}
	names := map[string]bool{}
	for _, s := range c.Sequences {
		if s.Name == "" || len(s.Name) > 32 || names[s.Name] {
			t.Fatalf("bad or repeated sequence name %q", s.Name)
		}
		names[s.Name] = true
		paths := append([]string{}, s.Steps...)
		switch ot := s.OneTime; {
		case ot == nil:
			if len(s.Steps) == 0 {
				t.Fatalf("sequence %q without steps", s.Name)
			}
			paths = append(paths, s.KnockPage)
		case ot.Mode == ModeHMAC:
			if len(s.Steps) > 0 || s.KnockPage != "" || ot.Steps < 1 || ot.Period < 10*time.Second {
				t.Fatalf("hmac sequence %q: static paths or bad one_time: %+v %+v", s.Name, s, ot)
			}
		case ot.Mode == ModeTOTP:
			if len(s.Steps) == 0 || s.KnockPage != "" || ot.Period != 30*time.Second {
				t.Fatalf("totp sequence %q: bad paths or one_time: %+v %+v", s.Name, s, ot)
			}
		default:
			t.Fatalf("sequence %q: one_time mode %q", s.Name, ot.Mode)
		}
		if ot := s.OneTime; ot != nil && (ot.KeyFile == "" || !pathChars.MatchString(ot.Prefix) || ot.Skew < 0) {
			t.Fatalf("sequence %q: bad one_time %+v", s.Name, ot)
		}
		for _, p := range paths {
			if !pathChars.MatchString(p) || len(p) > 200 || seen[p] {
				t.Fatalf("sequence %q: bad or repeated path %q", s.Name, p)
			}
			seen[p] = true
		}
		if s.Timeout <= 0 || s.Window <= 0 {
			t.Fatalf("sequence %q: timeout %v, window %v", s.Name, s.Timeout, s.Window)
		}
		if len(s.Methods) == 0 || len(s.StepStatus) == 0 || len(s.Ports) == 0 {
			t.Fatalf("sequence %q without methods, step status or ports: %+v", s.Name, s)
		}
		for _, m := range s.Methods {
			if m == "" || strings.ToUpper(m) != m {
				t.Fatalf("sequence %q: method %q", s.Name, m)
			}
		}
		for _, p := range s.Ports {
			if p.Number == 0 || p.Proto != "tcp" && p.Proto != "udp" {
				t.Fatalf("sequence %q: port %+v", s.Name, p)
			}
		}
	}
}
