package knock_test

import (
	"testing"
	"time"

	"github.com/webknock/webknock/knock"
)

// FuzzOneTimeLookup requests alice's one-time paths (and arbitrary ones) at
// arbitrary times: the lookup never panics, and a path advances only when
// it is the expected step of a time step within the skew of the line's.
func FuzzOneTimeLookup(f *testing.F) {
	f.Add(t0.Unix(), int8(0), uint8(1), "", false)
	f.Add(t0.Unix(), int8(1), uint8(1), "", false)
	f.Add(t0.Unix(), int8(-2), uint8(1), "", false)
	f.Add(int64(-1), int8(0), uint8(1), "", false)
	f.Add(int64(1<<62), int8(0), uint8(1), "", false)
	f.Add(t0.Unix(), int8(0), uint8(0), "/o/AAAAAAAAAAAAAAAAAAAAAA", true)
	f.Add(t0.Unix(), int8(0), uint8(0), "/t/123456", true)
	f.Fuzz(func(t *testing.T, unix int64, dm int8, i uint8, raw string, useRaw bool) {
		tr := mustNew(t, otConfig())
		at := time.Unix(unix, 0)
		ts := knock.TimeStep(at, time.Minute)
		step := int(i % 5)
		path := "/o/" + knock.Token(kaKey(), "alice", step, ts+int64(dm))
		if useRaw {
			path = raw
		}
		evs := tr.Apply(knock.Hit{Client: c1, Time: at, Method: "GET", Path: path, Status: 404}, nil)
		for _, e := range evs {
			if e.Kind != knock.KindStep || e.Sequence != "alice" {
				t.Fatalf("%q at %d: unexpected event %s", path, unix, format(e))
			}
			if useRaw || step != 1 || dm < -1 || dm > 1 || ts <= -(1<<62) || ts >= 1<<62 {
				t.Fatalf("%q at %d (step %d, T%+d): advanced", path, unix, step, dm)
			}
		}
		if !useRaw && step == 1 && dm >= -1 && dm <= 1 && ts > -(1<<62) && ts < 1<<62 && len(evs) != 1 {
			t.Fatalf("first step of T%+d at %d: events %s, want a step", dm, unix, formatAll(evs))
		}
		if err := tr.Check(); err != nil {
			t.Fatal(err)
		}
	})
}
