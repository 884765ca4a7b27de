package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/knock"
)

// writeOneTimeConfig writes a dry-run configuration with the one-time
// sequence alice (hmac, 2 steps, 60 s, skew 1) reading log from its start,
// and its key; it returns the configuration's path and alice.
func writeOneTimeConfig(t *testing.T, dir, log string) (string, knock.Sequence) {
	t.Helper()
	key := make([]byte, knock.KeyBytes)
	for i := range key {
		key[i] = byte(i)
	}
	if err := os.WriteFile(filepath.Join(dir, "alice.key"), []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "webknock.yaml")
	text := `log:
  paths: [` + log + `]
  start: beginning
state_dir: ` + filepath.Join(dir, "state") + `
firewall:
  backend: dry-run
sequences:
  - name: alice
    one_time:
      key_file: alice.key
      prefix: /o/
      steps: 2
    window: 10m
web:
  listen: ""
  socket: ` + filepath.Join(dir, "wk.sock") + `
`
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	seq, err := knockSequence(&cfg.Sequences[0])
	if err != nil {
		t.Fatal(err)
	}
	return path, seq
}

// TestServeOneTime: a one-time knock opens and its time step is saved
// before the grant; the same URLs from another address open nothing and
// are warned about; after a restart that reads the whole log again, the
// saved step keeps the old knock from opening again.
func TestServeOneTime(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "access.log")
	appendLines(t, log, "")
	cfgPath, alice := writeOneTimeConfig(t, dir, log)
	recs, stop := serveConfig(t, cfgPath)

	now := time.Now()
	paths, step := alice.PathsAt(now)
	appendLines(t, log, knockLines("203.0.113.7", now, paths...)...)
	g := recs.wait(t, "grant")
	if g["ip"] != "203.0.113.7" {
		t.Errorf("grant %v", g)
	}
	used, err := loadUsed(filepath.Join(dir, "state"))
	if err != nil || used["alice"].Step != step || used["alice"].Period != 60 || used["alice"].Client.String() != "203.0.113.7" {
		t.Fatalf("onetime.json = %+v, %v; want step %d of 60 s for 203.0.113.7", used, err, step)
	}

	appendLines(t, log, knockLines("198.51.100.9", now.Add(5*time.Second), paths...)...)
	w := recs.waitBefore(t, "one-time path reused: the URL leaked (a proxy's log, browser history, a link scanner); it opened nothing", "grant")
	if w["level"] != "WARN" || w["ip"] != "198.51.100.9" || w["time_step"] != float64(step) {
		t.Errorf("reuse record %v", w)
	}
	appendLines(t, log, knockLines("203.0.113.7", now.Add(8*time.Second), paths[len(paths)-1])...)
	if r := recs.waitBefore(t, "one-time path requested again by the address it opened for; it opened nothing", "grant"); r["level"] != "INFO" {
		t.Errorf("own reload record %v", r)
	}

	stop()
	recs, _ = serveConfig(t, cfgPath)
	// The whole log again: the first knock's knock page comes back as its own reuse.
	recs.waitBefore(t, "one-time path requested again by the address it opened for; it opened nothing", "grant")
	// A knock of the next time step opens.
	next := now.Add(time.Minute)
	paths2, _ := alice.PathsAt(next)
	appendLines(t, log, knockLines("198.51.100.9", next, paths2...)...)
	if g := recs.wait(t, "grant"); g["ip"] != "198.51.100.9" {
		t.Errorf("grant %v, want one for 198.51.100.9", g)
	}
}

// TestServeOneTimeUnsaved: when the used step cannot be saved, the grant
// is refused: a restart could otherwise open the same URLs again.
func TestServeOneTimeUnsaved(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "access.log")
	appendLines(t, log, "")
	cfgPath, alice := writeOneTimeConfig(t, dir, log)
	recs, _ := serveConfig(t, cfgPath)
	// A directory where the file goes: the atomic rename fails, even for root.
	if err := os.MkdirAll(filepath.Join(dir, "state", usedFileName, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	paths, _ := alice.PathsAt(now)
	appendLines(t, log, knockLines("203.0.113.7", now, paths...)...)
	r := recs.waitBefore(t, "grant refused: the one-time step it used could not be saved, and could open again after a restart", "grant")
	if r["level"] != "ERROR" {
		t.Errorf("record %v", r)
	}
}

func TestParseUsed(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{"version":1,"sequences":{"alice":{"step":29000000,"period":60,"client":"192.0.2.1"}}}`, true},
		{`{"version":1,"sequences":{}}`, true},
		{`{"version":1}`, true},
		{`{"version":2,"sequences":{}}`, false},
		{`{"version":1,"sequences":{"alice":{"step":1,"period":0,"client":"192.0.2.1"}}}`, false},
		{`{"version":1,"sequences":{"alice":{"step":1,"period":60,"client":"x"}}}`, false},
		{`{"version":1,"sequences":{"":{"step":1,"period":60,"client":"192.0.2.1"}}}`, false},
		{`{"version":1,"sequences":{"alice":{"step":1,"period":60,"client":"192.0.2.1","extra":1}}}`, false},
		{`{"version":1} {}`, false},
		{``, false},
	} {
		if _, err := parseUsed([]byte(tc.in)); (err == nil) != tc.ok {
			t.Errorf("parseUsed(%s) = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func TestUsedStepFor(t *testing.T) {
	u := usedStep{Step: 100, Period: 60} // seconds 6000 to 6059
	for _, tc := range []struct {
		period time.Duration
		want   int64
	}{
		{time.Minute, 100},
		{30 * time.Second, 201}, // 6030-6059 is the last step overlapping
		{2 * time.Minute, 50},   // 6000-6119 overlaps
		{7 * time.Second, 865},  // 6055-6061
	} {
		if got := u.stepFor(tc.period); got != tc.want {
			t.Errorf("stepFor(%v) = %d, want %d", tc.period, got, tc.want)
		}
	}
}

// FuzzParseUsed: onetime.json is read at start; whatever it holds, parsing
// never panics, and what parses survives a round trip.
func FuzzParseUsed(f *testing.F) {
	f.Add([]byte(`{"version":1,"sequences":{"alice":{"step":29000000,"period":60,"client":"192.0.2.1"}}}`))
	f.Add([]byte(`{"version":1,"sequences":{"b":{"step":-5,"period":30,"client":"2001:db8::1"}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseUsed(data)
		if err != nil {
			return
		}
		dir := t.TempDir()
		if err := saveUsed(dir, m); err != nil {
			t.Fatal(err)
		}
		again, err := loadUsed(dir)
		if err != nil || len(again) != len(m) {
			t.Fatalf("round trip: %v, %v", again, err)
		}
		for k, v := range m {
			if again[k] != v {
				t.Fatalf("round trip of %q: %+v, want %+v", k, again[k], v)
			}
		}
	})
}
