package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/knock"
	"github.com/webknock/webknock/weblog"
)

// eventLines formats events as replay --json does, without file and line.
func eventLines(t *testing.T, evs []knock.Event) []string {
	t.Helper()
	out := make([]string, len(evs))
	for i := range evs {
		b, err := json.Marshal(newJSONEvent(&evs[i], "", 0))
		if err != nil {
			t.Fatal(err)
		}
		out[i] = string(b)
	}
	return out
}

// collect returns a feed callback that appends the events of each line.
func collect(evs *[]knock.Event) func(*examined) {
	return func(x *examined) { *evs = append(*evs, x.events...) }
}

// liveEvents follows log from its beginning as `webknock run` reads it, a
// Follower's batches through the daemon's feed, until it has read all of
// data; then the progress left is expired, as replay does at the end.
func liveEvents(t *testing.T, cfg *config.Config, log string, data []byte) []string {
	t.Helper()
	f, err := newFeed(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fl, err := weblog.Follow(t.Context(), weblog.FollowOptions{Paths: []string{log}, Start: weblog.StartBeginning})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	want := bytes.Count(data, []byte{'\n'})
	var evs []knock.Event
	var read, batches, examinedLines int
	for read < want {
		select {
		case b := <-fl.Batches():
			read += b.Len()
			batches++
			examinedLines += f.batch(log, b.Text, time.Time{}, collect(&evs))
			fl.Ack(b)
		case <-time.After(waitFor):
			t.Fatalf("followed %d of %d lines within %v", read, want, waitFor)
		}
	}
	evs = append(evs, f.release(endOfTime)...)
	evs = f.tracker.Expire(endOfTime, evs)
	t.Logf("live: %d lines in %d batches, %d examined", read, batches, examinedLines)
	return eventLines(t, evs)
}

// waitFor bounds every wait of these tests.
const waitFor = 10 * time.Second

// parseAllEvents parses every line of data, in order, through a feed that
// picks every line.
func parseAllEvents(t *testing.T, cfg *config.Config, data []byte) []string {
	t.Helper()
	f, err := newFeed(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.filter = weblog.NewFilter(nil)
	var evs []knock.Event
	if n := f.batch("", data, time.Time{}, collect(&evs)); n != bytes.Count(data, []byte{'\n'}) {
		t.Fatalf("a feed of every line examined %d lines, want all %d", n, bytes.Count(data, []byte{'\n'}))
	}
	evs = append(evs, f.release(endOfTime)...)
	return eventLines(t, f.tracker.Expire(endOfTime, evs))
}

// checkLiveEqualsParseAll requires the events of the live path (follower,
// batches, the daemon's filter) to be those of parsing every line.
func checkLiveEqualsParseAll(t *testing.T, cfgFile, log string, data []byte) {
	t.Helper()
	cfg, err := config.Load(config.Options{Path: cfgFile})
	if err != nil {
		t.Fatal(err)
	}
	live, all := liveEvents(t, cfg, log, data), parseAllEvents(t, cfg, data)
	if !slices.Equal(live, all) {
		i := 0
		for i < min(len(live), len(all)) && live[i] == all[i] {
			i++
		}
		t.Fatalf("the live path gave %d events, parsing every line %d; first difference at %d:\nlive: %.300s\nall:  %.300s",
			len(live), len(all), i, slices.Concat(live, []string{""})[i], slices.Concat(all, []string{""})[i])
	}
	if n := strings.Count(strings.Join(live, "\n"), `"grant"`); n == 0 {
		t.Fatal("no grant: the log does not exercise the knock paths")
	}
}

// TestFeedBatch: a batch's first line is examined whatever it holds, then
// only lines holding a knock path; each examined line is parsed, refused
// lines carry their reason, and requests reach the tracker.
func TestFeedBatch(t *testing.T) {
	cfg, err := config.Load(config.Options{Path: "../../testdata/example.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := newFeed(cfg)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 22, 19, 0, 0, 0, time.UTC)
	line := func(ip, path string) string {
		return fmt.Sprintf(`%s - - [%s] "GET %s HTTP/1.1" 404 1 "-" "-"`+"\n", ip, at.Format("02/Jan/2006:15:04:05 -0700"), path)
	}
	tests := []struct {
		name string
		text string
		want []string // what became of each line examined: its path, or its reason
	}{
		{name: "first line examined", text: line("203.0.113.7", "/") + line("203.0.113.7", "/about") + line("203.0.113.7", "/k/7f3a9c"),
			want: []string{"/", "/k/7f3a9c step"}},
		{name: "first line that does not parse", text: "not a log line\n" + line("203.0.113.7", "/x") + line("127.0.0.1", "/k/91c2e0"),
			want: []string{"format", "loopback"}},
		{name: "one line", text: line("203.0.113.8", "/k/7f3a9c"), want: []string{"/k/7f3a9c step"}},
		{name: "empty line first", text: "\n" + line("203.0.113.9", "/k/x/k/7f3a9c"), want: []string{"format", "/k/x/k/7f3a9c"}},
		{name: "nothing", text: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			n := f.batch("test.log", []byte(tc.text), time.Time{}, func(x *examined) {
				switch {
				case x.err != nil:
					got = append(got, string(weblog.ReasonOf(x.err)))
				case len(x.events) > 0:
					got = append(got, x.req.Path+" "+x.events[0].Kind.String())
				default:
					got = append(got, x.req.Path)
				}
			})
			if !slices.Equal(got, tc.want) || n != len(tc.want) {
				t.Errorf("batch(%q) examined %d: %q, want %q", tc.text, n, got, tc.want)
			}
		})
	}
}

// TestLiveEqualsParseAllExample: the live path gives the events of parsing
// every line on testdata/example.log; the random logs of
// TestFastPathEqualsParseAll* go through it too (replayBothWays).
func TestLiveEqualsParseAllExample(t *testing.T) {
	data, err := os.ReadFile("../../testdata/example.log")
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(t.TempDir(), "access.log")
	if err := os.WriteFile(log, data, 0o644); err != nil {
		t.Fatal(err)
	}
	checkLiveEqualsParseAll(t, "../../testdata/example.yaml", log, data)
}
