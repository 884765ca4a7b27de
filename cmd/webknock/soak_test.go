package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSoakMalformed replays a log of millions of malformed and hostile lines
// with genuine knocks mixed in: the replay finishes, every genuine knock is
// granted, and nobody else is. It runs both ways (chunk search and parsing
// every line).
func TestSoakMalformed(t *testing.T) {
	lines := 2_000_000
	if testing.Short() {
		lines = 200_000
	}
	rng := rand.New(rand.NewPCG(3, 5))
	log := filepath.Join(t.TempDir(), "soak.log")
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	start := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	stamp := func(i int) string {
		return start.Add(time.Duration(i) * time.Millisecond).Format("02/Jan/2006:15:04:05 -0700")
	}
	paths := []string{"/k/7f3a9c", "/k/91c2e0", "/k/00aa5d", "/k/open", "/k/q4Zb1x", "/k/Lm82aa", "/k/admin-open"}
	hostile := []func(i int) string{
		// random bytes, no newline
		func(int) string {
			b := make([]byte, rng.IntN(300))
			for j := range b {
				if b[j] = byte(rng.IntN(256)); b[j] == '\n' {
					b[j] = ' '
				}
			}
			return string(b)
		},
		// a knock path in every field an attacker controls
		func(i int) string {
			p := paths[rng.IntN(len(paths))]
			return fmt.Sprintf(`198.51.100.%d - %s [%s] "GET /x?%s HTTP/1.1" 404 1 "%s" "%s"`, rng.IntN(250)+1, p, stamp(i), p, p, p)
		},
		// a forged record inside the user agent, with nginx escaping
		func(i int) string {
			p := paths[rng.IntN(len(paths))]
			return fmt.Sprintf(`198.51.100.%d - - [%s] "GET / HTTP/1.1" 200 1 "-" "x\x22 404 1 \x22-\x22 \x22-\x22 203.0.113.250 - - [%s] \x22GET %s HTTP/1.1"`, rng.IntN(250)+1, stamp(i), stamp(i), p)
		},
		// the same with Apache escaping, and raw quotes (no server writes those)
		func(i int) string {
			p := paths[rng.IntN(len(paths))]
			return fmt.Sprintf(`198.51.100.%d - - [%s] "GET / HTTP/1.1" 200 1 "-" "x\" 404 1 \"-\" \"-\" 203.0.113.250 - - [%s] "GET %s HTTP/1.1" 404 1 "-" "-"`, rng.IntN(250)+1, stamp(i), stamp(i), p)
		},
		// near misses of the paths
		func(i int) string {
			p := paths[rng.IntN(len(paths))]
			v := []string{p + "/", "/x" + p, strings.ToUpper(p), p[:len(p)-1], p + "%00", "/k/." + p[2:]}[rng.IntN(6)]
			return fmt.Sprintf(`198.51.100.%d - - [%s] "GET %s HTTP/1.1" 404 1 "-" "-"`, rng.IntN(250)+1, stamp(i), v)
		},
		// clients that never knock
		func(i int) string {
			c := []string{"127.0.0.1", "::1", "0.0.0.0", "unix:", "fe80::1%eth0", "ff02::1", "example.org", "203.0.113.250, 198.51.100.1"}[rng.IntN(8)]
			return fmt.Sprintf(`%s - - [%s] "GET %s HTTP/1.1" 404 1 "-" "-"`, c, stamp(i), paths[rng.IntN(len(paths))])
		},
		// truncated lines and broken timestamps
		func(i int) string {
			l := fmt.Sprintf(`198.51.100.%d - - [%s] "GET %s HTTP/1.1" 404 1 "-" "-"`, rng.IntN(250)+1, stamp(i), paths[rng.IntN(len(paths))])
			if rng.IntN(2) == 0 {
				return strings.Replace(l, "/Nov/", "/Nox/", 1)
			}
			return l[:rng.IntN(len(l))]
		},
		// an overlong line full of knock paths
		func(i int) string {
			if rng.IntN(500) != 0 {
				return "-"
			}
			return fmt.Sprintf(`198.51.100.%d - - [%s] "GET /k/open HTTP/1.1" 404 1 "-" "%s"`, rng.IntN(250)+1, stamp(i), strings.Repeat("/k/7f3a9c", 8000))
		},
	}
	genuine := map[string]int{} // address → knocks
	knockEvery := lines / 100
	var pending []string
	for i := 0; i < lines; i++ {
		if i%knockEvery == knockEvery/2 {
			ip := fmt.Sprintf("203.0.113.%d", 1+len(genuine)%50)
			genuine[ip]++
			for _, p := range []string{"/k/7f3a9c", "/k/91c2e0", "/k/00aa5d", "/k/open"} {
				pending = append(pending, ip+" "+p)
			}
		}
		if len(pending) > 0 && i%7 == 0 {
			ip, p, _ := strings.Cut(pending[0], " ")
			pending = pending[1:]
			fmt.Fprintf(w, "%s - - [%s] \"GET %s HTTP/1.1\" 404 153 \"-\" \"Mozilla/5.0\"\n", ip, stamp(i), p)
			continue
		}
		w.WriteString(hostile[rng.IntN(len(hostile))](i))
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	wantGrants := 0
	for _, n := range genuine {
		wantGrants += n
	}
	for _, mode := range []string{"--json", "--parse-all"} {
		out, errOut, code := runCmd(t, "", "replay", "--json", mode, "-c", "../../testdata/example.yaml", log)
		if code != 0 {
			t.Fatalf("replay %s: exit %d: %s", mode, code, errOut)
		}
		got := map[string]int{}
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, `"event":"grant"`) {
				ip := l[strings.Index(l, `"ip":"`)+6:]
				got[ip[:strings.IndexByte(ip, '"')]]++
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(genuine) {
			t.Errorf("replay %s: grants %v, want exactly the genuine knocks %v", mode, got, genuine)
		}
		t.Logf("replay %s of %d lines: %d grants; %s", mode, lines, wantGrants, strings.TrimSpace(errOut))
	}
}
