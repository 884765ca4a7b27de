package main

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/webknock/webknock/config"
)

func TestSweepTime(t *testing.T) {
	now := time.Date(2026, 11, 22, 19, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		newest   time.Time
		caughtUp bool
		want     time.Time
	}{
		{"caught up", now.Add(-time.Hour), true, now.Add(-sweepLag)},
		{"behind: the newest line bounds it", now.Add(-time.Hour), false, now.Add(-time.Hour - sweepLag)},
		{"behind, log ahead of the host", now.Add(time.Hour), false, now.Add(-sweepLag)},
		{"behind, nothing read yet", time.Time{}, false, time.Time{}.Add(-sweepLag)},
	}
	for _, tc := range tests {
		if got := sweepTime(now, tc.newest, tc.caughtUp); !got.Equal(tc.want) {
			t.Errorf("%s: sweepTime(%v, %v, %v) = %v, want %v", tc.name, now, tc.newest, tc.caughtUp, got, tc.want)
		}
	}
}

// TestServeSweepsExpiredProgress: the daemon's periodic sweep, driven by a
// channel the test sends the time on, forgets the progress of a flood of
// first steps once it has timed out, reporting each timeout; the failure
// each timeout puts on record goes at the sweep after lockout.period. A
// sweep before the timeout forgets nothing.
func TestServeSweepsExpiredProgress(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "access.log")
	appendLines(t, log, "")
	cfg, err := config.Load(config.Options{Path: writeRunConfig(t, dir, log, "/k/open")})
	if err != nil {
		t.Fatal(err)
	}
	logger, recs := newLogRecords(t)
	sweeps := make(chan time.Time)
	d := newDaemon(cfg, logger, sweeps)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.run(ctx, nil, nil) }()
	t.Cleanup(func() { cancel(); <-done })
	recs.wait(t, "webknock running")

	const flood = 300
	at := time.Now().Add(-time.Hour).Truncate(time.Second)
	// The newest line holds a knock path but knocks nothing.
	lines := knockLines("203.0.113.250", at.Add(30*time.Minute), "/x/k/a1")
	for i := range flood {
		lines = append(lines, knockLines(fmt.Sprintf("2001:db8::%x", i+1), at, "/k/a1")...)
	}
	appendLines(t, log, lines...)
	for range flood {
		recs.wait(t, "step")
	}

	// sweep sends a sweep at now and returns the timeouts it reported and
	// the clients left.
	sweep := func(now time.Time) (timeouts int, clients float64) {
		t.Helper()
		select {
		case sweeps <- now:
		case <-time.After(waitFor):
			t.Fatal("the daemon does not take the sweep")
		}
		for {
			select {
			case rec := <-recs.out:
				switch rec["msg"] {
				case "timeout":
					timeouts++
				case "expired knock progress swept":
					return timeouts, rec["clients"].(float64)
				}
			case <-time.After(waitFor):
				t.Fatalf("no sweep logged within %v", waitFor)
			}
		}
	}
	// Whether or not the follower has reported reading to the end, the
	// sweep stays before the newest line: the same times either way.
	if n, c := sweep(at.Add(20 * time.Second)); n != 0 || c != flood {
		t.Errorf("sweep before the timeout: %d timeouts, %v clients left; want 0, %d", n, c, flood)
	}
	if n, c := sweep(at.Add(5 * time.Minute)); n != flood || c != flood {
		t.Errorf("sweep after the timeout: %d timeouts, %v clients left; want %d, %d (each with a failure on record)", n, c, flood, flood)
	}
	if n, c := sweep(at.Add(20 * time.Minute)); n != 0 || c != 0 {
		t.Errorf("sweep after lockout.period: %d timeouts, %v clients left; want 0, 0", n, c)
	}
	if n := d.stats.Clients(); n != 0 {
		t.Errorf("clients in progress on the status page = %d, want 0", n)
	}
}
