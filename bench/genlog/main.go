// Command genlog writes a large combined access log for the replay
// benchmark: real lines of the public corpus with fresh times and clients,
// and, rarely, the knocks of testdata/example.yaml. With -sequences it also
// writes a configuration of that many random sequences and mixes in their
// knocks; with -onetime, of that many one-time sequences (hmac mode, one
// key file) and their knocks, derived for each knock's time.
package main

import (
	"bufio"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/webknock/webknock/knock"
)

func main() {
	lines := flag.Int("lines", 1000000, "lines to write")
	knocks := flag.Int("knocks", 20, "complete knocks of testdata/example.yaml's ssh sequence to mix in")
	sequences := flag.Int("sequences", 0, "also make this many static sequences of random paths (3 steps and a knock page, like webknock init's), write them to -config and mix in their knocks")
	oneTime := flag.Int("onetime", 0, "instead of -sequences: make this many one-time sequences (hmac, 2 steps, 60 s) sharing one key, written to -config FILE and FILE's .key")
	sharedPrefix := flag.Bool("shared-prefix", false, "with -onetime: every sequence under the prefix /k/, rather than one prefix each (as webknock init makes them)")
	configFile := flag.String("config", "", "with -sequences or -onetime: the configuration `FILE` to write")
	seqKnocks := flag.Int("sequence-knocks", 500, "with -sequences: knocks of random sequences to mix in; every fifth stops after two steps")
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
		err = generateFlood(os.Stdout, *lines, start)
	} else {
		var seqs []benchSequence
		if (*sequences > 0 || *oneTime > 0) && *configFile == "" {
			fmt.Fprintln(os.Stderr, "genlog: -sequences and -onetime need -config FILE")
			os.Exit(2)
		}
		switch {
		case *oneTime > 0:
			seqs, err = oneTimeSequences(*oneTime, *configFile, *sharedPrefix)
		case *sequences > 0:
			seqs = randomSequences(*sequences)
			err = writeConfig(*configFile, seqs)
		}
		if err == nil {
			err = generate(os.Stdout, *lines, *knocks, *corpus, seqs, *seqKnocks)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "genlog:", err)
		os.Exit(1)
	}
}

// benchSequence is a sequence whose knocks genlog mixes in: static paths,
// or a one-time sequence's name and key.
type benchSequence struct {
	static []string
	name   string
	prefix string
	key    []byte
}

// paths returns the paths of a knock at time at, the last the knock page.
func (s benchSequence) paths(at time.Time) []string {
	if s.key == nil {
		return s.static
	}
	t := knock.TimeStep(at, time.Minute)
	return []string{s.prefix + knock.Token(s.key, s.name, 1, t), s.prefix + knock.Token(s.key, s.name, 2, t), s.prefix + knock.Token(s.key, s.name, 3, t)}
}

// oneTimeSequences makes n one-time sequences sharing one random key,
// written to config's ".key" file (mode 0600), each under a prefix of its
// own unless shared, and writes the configuration.
func oneTimeSequences(n int, config string, shared bool) ([]benchSequence, error) {
	key := make([]byte, knock.KeyBytes)
	rng := rand.New(rand.NewPCG(5, 6)) // a benchmark's key, the same on every run
	for i := range key {
		key[i] = byte(rng.Uint32())
	}
	keyFile := strings.TrimSuffix(config, filepath.Ext(config)) + ".key"
	if err := os.WriteFile(keyFile, knock.EncodeKey(key), 0o600); err != nil {
		return nil, err
	}
	if err := os.Chmod(keyFile, 0o600); err != nil { // an existing file keeps its mode
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by bench/genlog: %d one-time sequences sharing one key.\n", n)
	b.WriteString("log:\n  paths: [/var/log/nginx/access.log]\n  format: combined\nstate_dir: /var/lib/webknock\nfirewall:\n  backend: dry-run\nsequences:\n")
	seqs := make([]benchSequence, n)
	for i := range seqs {
		seqs[i] = benchSequence{name: fmt.Sprintf("o%04d", i+1), key: key, prefix: "/k/"}
		if !shared {
			seqs[i].prefix = fmt.Sprintf("/k/%c%c%c%c%c%c/", base64URL[rng.IntN(64)], base64URL[rng.IntN(64)], base64URL[rng.IntN(64)],
				base64URL[rng.IntN(64)], base64URL[rng.IntN(64)], base64URL[rng.IntN(64)])
		}
		fmt.Fprintf(&b, "  - name: %s\n    one_time:\n      key_file: %s\n      prefix: %s\n      steps: 2\n    timeout: 30s\n    window: 10m\n    ports: [22/tcp]\n",
			seqs[i].name, filepath.Base(keyFile), seqs[i].prefix)
	}
	b.WriteString("web:\n  listen: \"\"\n")
	return seqs, os.WriteFile(config, []byte(b.String()), 0o644)
}

const base64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// randomSequences makes n sequences of four paths each (the last is the
// knock page), the same on every run.
func randomSequences(n int) []benchSequence {
	rng := rand.New(rand.NewPCG(3, 4))
	seen := map[string]bool{}
	buf := make([]byte, 12) // webknock init's default: 16 characters
	seqs := make([]benchSequence, n)
	for i := range seqs {
		for len(seqs[i].static) < 4 {
			for j := range buf {
				buf[j] = byte(rng.Uint32())
			}
			if p := "/k/" + base64.RawURLEncoding.EncodeToString(buf); !seen[p] {
				seen[p] = true
				seqs[i].static = append(seqs[i].static, p)
			}
		}
	}
	return seqs
}

// writeConfig writes seqs as a configuration shaped like testdata/example.yaml.
func writeConfig(name string, seqs []benchSequence) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by bench/genlog: %d static sequences of random paths.\n", len(seqs))
	b.WriteString("log:\n  paths: [/var/log/nginx/access.log]\n  format: combined\nstate_dir: /var/lib/webknock\nfirewall:\n  backend: dry-run\nsequences:\n")
	for i, s := range seqs {
		fmt.Fprintf(&b, "  - name: s%04d\n    steps: [%s]\n    knock_page: %s\n    timeout: 30s\n    window: 10m\n    ports: [22/tcp]\n",
			i+1, strings.Join(s.static[:3], ", "), s.static[3])
	}
	b.WriteString("web:\n  listen: \"\"\n")
	return os.WriteFile(name, []byte(b.String()), 0o644)
}

func generate(out io.Writer, n, knocks int, corpus string, seqs []benchSequence, seqKnocks int) error {
	data, err := os.ReadFile(corpus)
	if err != nil {
		return err
	}
	var tails []string // everything after the timestamp
	for _, l := range strings.Split(string(data), "\n") {
		// Lines of at most 200 bytes make a log of about 180 bytes a line.
		if i := strings.Index(l, "] \""); i > 0 && strings.Count(l, "\"") == 6 && len(l) <= 200 {
			tails = append(tails, l[i:])
		}
	}
	if len(tails) == 0 {
		return fmt.Errorf("%s has no combined lines", corpus)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	w := bufio.NewWriterSize(out, 1<<20)
	start := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	steps := []string{"/k/7f3a9c", "/k/91c2e0", "/k/00aa5d", "/k/open"}
	every := n / max(knocks, 1)
	everySeq := n / max(seqKnocks, 1)
	if len(seqs) == 0 {
		seqKnocks = 0
	}
	type knockLine struct{ client, path string }
	var pending []knockLine // knock lines still to write, in order
	seqKnock := 0
	for i := 0; i < n; i++ {
		// One day in n lines (in milliseconds: in nanoseconds the product overflows).
		at := start.Add(time.Duration(int64(i)*86400000/int64(n)) * time.Millisecond)
		ts := at.Format("02/Jan/2006:15:04:05 -0700")
		if knocks > 0 && i%every == every/2 {
			knocker := fmt.Sprintf("203.0.113.%d", rng.IntN(250)+1)
			for _, p := range steps {
				pending = append(pending, knockLine{knocker, p})
			}
		}
		if seqKnocks > 0 && i%everySeq == everySeq/3 {
			seqKnock++
			knocker := fmt.Sprintf("198.51.100.%d", rng.IntN(250)+1)
			paths := seqs[rng.IntN(len(seqs))].paths(at)
			if seqKnock%5 == 0 {
				paths = paths[:2]
			}
			for _, p := range paths {
				pending = append(pending, knockLine{knocker, p})
			}
		}
		if len(pending) > 0 {
			fmt.Fprintf(w, "%s - - [%s] \"GET %s HTTP/1.1\" 404 153 \"-\" \"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\"\n", pending[0].client, ts, pending[0].path)
			pending = pending[1:]
			continue
		}
		fmt.Fprintf(w, "%s - - [%s%s\n", client(rng), ts, tails[rng.IntN(len(tails))])
	}
	return w.Flush()
}

// client returns a random unicast IPv4 address that webknock takes for a
// client: not loopback (127/8) nor link-local (169.254/16), which it skips.
func client(rng *rand.Rand) string {
	for {
		a, b := rng.IntN(223)+1, rng.IntN(256)
		if a != 127 && (a != 169 || b != 254) {
			return fmt.Sprintf("%d.%d.%d.%d", a, b, rng.IntN(256), rng.IntN(254)+1)
		}
	}
}

// generateFlood writes n first steps of the example's ssh sequence, each from
// a new IPv6 address, a hundred a millisecond from start; the genuine client 192.0.2.77
// makes its steps after 20%, 25%, 75% and 80% of the flood, well within the
// sequence's timeout.
func generateFlood(out io.Writer, n int, start time.Time) error {
	w := bufio.NewWriterSize(out, 1<<20)
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
