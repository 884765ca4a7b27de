package main

import (
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"

	"github.com/webknock/webknock/weblog"
)

// unparsedLimit is how many lines examined in a row of one file may fail to
// parse as log.format before the input is reported broken: an odd line is
// noise, twenty in a row mean the format is wrong and every knock is being
// missed. The first line of every read is examined, so a busy log that
// holds no knock is checked too.
const unparsedLimit = 20

// sampleBytes bounds the sample line quoted in the report.
const sampleBytes = 200

// inputs watches whether each followed file delivers lines that parse.
// Its counters belong to the daemon's loop; problems may be read from any
// goroutine.
type inputs struct {
	log   *slog.Logger
	files map[string]*input

	mu     sync.Mutex
	broken map[string]string // file -> problem
}

type input struct {
	unparsed int
	reported bool
}

func (in *inputs) init(logger *slog.Logger) {
	in.log = logger
	in.files = map[string]*input{}
	in.broken = map[string]string{}
}

func (in *inputs) file(name string) *input {
	f := in.files[name]
	if f == nil {
		f = &input{}
		in.files[name] = f
	}
	return f
}

// parsed notes a line of file that matched the format.
func (in *inputs) parsed(file string) {
	f := in.file(file)
	f.unparsed = 0
	if f.reported {
		f.reported = false
		in.mu.Lock()
		delete(in.broken, file)
		in.mu.Unlock()
		in.log.Info("log lines parse again", keyFile, file)
	}
}

// skipped notes a line of file that was skipped; only lines that do not
// match the format count against the input.
func (in *inputs) skipped(file string, reason weblog.Reason, line []byte, format string) {
	if !reason.Mismatch() {
		in.parsed(file) // the format matched; the client was not one that knocks
		return
	}
	f := in.file(file)
	f.unparsed++
	if f.unparsed < unparsedLimit || f.reported {
		return
	}
	f.reported = true
	sample := line
	if len(sample) > sampleBytes {
		sample = sample[:sampleBytes]
	}
	problem := fmt.Sprintf("%s: the last %d lines do not parse as log.format %q; knocks are missed; e.g. %s",
		file, unparsedLimit, format, strconv.Quote(string(sample)))
	in.mu.Lock()
	in.broken[file] = problem
	in.mu.Unlock()
	in.log.Warn("log lines do not parse: check log.format", keyFile, file, "format", format, "lines", unparsedLimit,
		"sample", string(sample))
}

// forget drops what is known of every file: the paths changed.
func (in *inputs) forget() {
	in.files = map[string]*input{}
	in.mu.Lock()
	in.broken = map[string]string{}
	in.mu.Unlock()
}

// problems lists the inputs whose lines do not parse.
func (in *inputs) problems() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make([]string, 0, len(in.broken))
	for _, p := range in.broken {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}
