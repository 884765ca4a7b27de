package main

// This file turns the lines `webknock run` reads, a batch at a time, into
// knock events, parsing only the lines that can knock, as replay does.

import (
	"bytes"
	"time"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/knock"
	"github.com/webknock/webknock/weblog"
)

// feed parses log lines and applies the requests to the knock tracker. It
// belongs to one goroutine.
type feed struct {
	parser  *weblog.Parser
	tracker *knock.Tracker
	reorder *reorder       // applies the hits to tracker
	filter  *weblog.Filter // picks the lines that hold a knock path
	events  []knock.Event  // reused
}

// newFeed builds the parser, tracker and filter of cfg.
func newFeed(cfg *config.Config) (*feed, error) {
	parser, err := weblog.NewParser(cfg.Log.Format, cfg.Log.TrustedProxies)
	if err != nil {
		return nil, err
	}
	kc, err := knockConfig(cfg)
	if err != nil {
		return nil, err
	}
	tracker, err := knock.New(kc)
	if err != nil {
		return nil, err
	}
	return &feed{parser: parser, tracker: tracker, reorder: newReorder(tracker, cfg.Log.Reorder), filter: weblog.NewFilter(needlesOf(tracker))}, nil
}

// needlesOf returns the strings one of which a line must hold to knock.
func needlesOf(t *knock.Tracker) [][]byte {
	needles := [][]byte{} // not nil: with no path, no line can knock
	for _, p := range t.Needles() {
		needles = append(needles, []byte(p))
	}
	return needles
}

// examined is what became of one line the feed parsed.
type examined struct {
	line   []byte          // valid during the call only
	req    *weblog.Request // what was parsed of it, also when err is set
	err    error           // why it was skipped (weblog.ReasonOf)
	events []knock.Event   // of the request, when err is nil; valid during the call only
}

// batch examines text, whole lines each ending in a newline, that came
// from input at now, and calls fn for each line examined, in order. It examines the
// first line whatever it holds, so that a log.format that matches nothing
// shows however rarely knocks come, and every other line that holds a
// knock path; the rest cannot knock and is passed over unparsed. A knock
// step ahead of its client's steps is held (reorder): its events come
// with a later line, or from release. It returns the number of lines
// examined.
func (f *feed) batch(input string, text []byte, now time.Time, fn func(*examined)) int {
	if len(text) == 0 {
		return 0
	}
	n := 0
	var x examined
	var r weblog.Request
	parse := func(line []byte) {
		n++
		r, x.err = f.parser.Parse(line)
		x.line, x.req, x.events = line, &r, nil
		if x.err == nil {
			f.events = f.events[:0]
			f.reorder.apply(hitOf(&r, input), 0, now, f.collect)
			x.events = f.events
		}
		fn(&x)
	}
	first, rest, _ := bytes.Cut(text, []byte{'\n'})
	parse(first)
	_ = f.filter.Lines(rest, func(_ int, line []byte) error { // never fails
		parse(line)
		return nil
	})
	return n
}

// release returns the events of the held hits whose wait is over at now.
func (f *feed) release(now time.Time) []knock.Event {
	f.events = f.events[:0]
	f.reorder.release(now, f.collect)
	return f.events
}

// collect appends evs to f.events.
func (f *feed) collect(_ int64, evs []knock.Event) { f.events = append(f.events, evs...) }
