// Command genlog writes a large combined access log for the replay
// benchmark: real lines of the public corpus with fresh times and clients,
// and, rarely, the knocks of testdata/example.yaml.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"time"
)

func main() {
	lines := flag.Int("lines", 1000000, "lines to write")
	knocks := flag.Int("knocks", 20, "complete knocks to mix in")
	corpus := flag.String("corpus", "testdata/corpus/elastic-apache_logs/apache_logs", "combined log whose lines are reused")
	flood := flag.Bool("flood", false, "instead: every line a first step from a new IPv6 address, with one genuine knock in the middle")
	now := flag.Bool("now", false, "with -flood: times end now (for a live daemon) rather than on a fixed day")
	flag.Parse()
	var err error
	if *flood {
		start := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
		if *now {
			start = time.Now().Add(-time.Duration(*lines) * time.Millisecond / 100)
		}
		err = generateFlood(*lines, start)
	} else {
		err = generate(*lines, *knocks, *corpus)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "genlog:", err)
		os.Exit(1)
	}
}

func generate(n, knocks int, corpus string) error {
	data, err := os.ReadFile(corpus)
	if err != nil {
		return err
	}
	var tails []string // everything after the timestamp
	for _, l := range strings.Split(string(data), "\n") {
		// Lines of at most 200 bytes make a log of about 180 bytes a line.
		if i := strings.Index(l, "] \""); i > 0 && strings.Count(l, "\"") == 6 && len(l) <= 200 {
			tails = append(tails, l[i+1:])
		}
	}
	if len(tails) == 0 {
		return fmt.Errorf("%s has no combined lines", corpus)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	w := bufio.NewWriterSize(os.Stdout, 1<<20)
	start := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	steps := []string{"/k/7f3a9c", "/k/91c2e0", "/k/00aa5d", "/k/open"}
	every := n / max(knocks, 1)
	var pending []string // knock paths still to write, one per line
	var knocker string
	for i := 0; i < n; i++ {
		ts := start.Add(time.Duration(i) * 86400 * time.Second / time.Duration(n)).Format("02/Jan/2006:15:04:05 -0700")
		if knocks > 0 && i%every == every/2 && len(pending) == 0 {
			pending = append(pending[:0], steps...)
			knocker = fmt.Sprintf("203.0.113.%d", rng.IntN(250)+1)
		}
		if len(pending) > 0 {
			fmt.Fprintf(w, "%s - - [%s] \"GET %s HTTP/1.1\" 404 153 \"-\" \"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\"\n", knocker, ts, pending[0])
			pending = pending[1:]
			continue
		}
		fmt.Fprintf(w, "%d.%d.%d.%d - - [%s%s\n", rng.IntN(223)+1, rng.IntN(256), rng.IntN(256), rng.IntN(254)+1, ts, tails[rng.IntN(len(tails))])
	}
	return w.Flush()
}

// generateFlood writes n first steps of the example's ssh sequence, each from
// a new IPv6 address, a hundred a millisecond from start; the genuine client 192.0.2.77
// makes its steps after 20%, 25%, 75% and 80% of the flood, well within the
// sequence's timeout.
func generateFlood(n int, start time.Time) error {
	w := bufio.NewWriterSize(os.Stdout, 1<<20)
	genuine := map[int]string{n / 5: "/k/7f3a9c", n / 4: "/k/91c2e0", 3 * n / 4: "/k/00aa5d", 4 * n / 5: "/k/open"}
	for i := 0; i < n; i++ {
		ts := start.Add(time.Duration(i) * time.Millisecond / 100).Format("02/Jan/2006:15:04:05 -0700")
		if p, ok := genuine[i]; ok {
			fmt.Fprintf(w, "192.0.2.77 - - [%s] \"GET %s HTTP/1.1\" 404 153 \"-\" \"Mozilla/5.0\"\n", ts, p)
		}
		fmt.Fprintf(w, "2001:db8:%x:%x::1 - - [%s] \"GET /k/7f3a9c HTTP/1.1\" 404 153 \"-\" \"flood\"\n", i>>16, i&0xffff, ts)
	}
	return w.Flush()
}
