package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/knock"
	"github.com/webknock/webknock/weblog"
)

// replayMemoryLimit is the soft memory limit of a replay (GOMEMLIMIT
// overrides it).
const replayMemoryLimit = 40 << 20

// replayGCPercent is GOGC of a replay (GOGC overrides it); the memory limit
// still holds the heap down.
const replayGCPercent = 400

func replayFlags(fs *pflag.FlagSet) {
	fs.Bool("json", false, "print events as JSON lines")
	fs.Bool("parse-all", false, "parse every line, not only those holding a knock path (slower; reports every line the format does not match)")
}

func runReplay(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) == 0 {
		return usagef(env, fs, "name at least one LOG (- for standard input)")
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		// A replay is a batch job: collect garbage sooner rather than grow.
		debug.SetMemoryLimit(replayMemoryLimit)
		if os.Getenv("GOGC") == "" {
			// Below the limit, collect less often: loading a configuration
			// of a thousand sequences makes garbage the limit keeps in check.
			debug.SetGCPercent(replayGCPercent)
		}
	}
	cfg, err := loadConfig(env, fs, nil)
	if err != nil {
		return err
	}
	asJSON, _ := fs.GetBool("json")
	parseAll, _ := fs.GetBool("parse-all")
	out := bufio.NewWriterSize(env.stdout, 64<<10)
	rp, err := newReplayer(cfg, out, asJSON, parseAll)
	if err != nil {
		return err
	}
	for _, name := range args {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := rp.replayNamed(name, env.stdin); err != nil {
			return err
		}
	}
	rp.finish()
	if err := out.Flush(); err != nil {
		return err
	}
	if rp.loopbackKnocks > 0 {
		fmt.Fprintf(env.stderr, "warning: %d knock request(s) came from a loopback address: a reverse proxy in front of the web server hides the real clients; list it in log.trusted_proxies and log $http_x_forwarded_for\n", rp.loopbackKnocks)
	}
	fmt.Fprintln(env.stderr, rp.summary())
	return nil
}

// hitOf adapts a parsed request to the knock core.
func hitOf(r *weblog.Request) knock.Hit {
	return knock.Hit{Client: r.Client, Time: r.Time, Method: r.Method, Path: r.Path, Status: r.Status}
}

// replayer reads logs in order and prints the events of the knock core,
// with the log's own timestamps as the clock.
type replayer struct {
	parser   *weblog.Parser
	tracker  *knock.Tracker
	needles  [][]byte // nil: every line is parsed
	out      io.Writer
	asJSON   bool
	events   []knock.Event
	writeErr error

	lines, examined, parsed, grants int64
	skipped                         map[weblog.Reason]int64
	loopbackKnocks                  int64
}

func newReplayer(cfg *config.Config, out io.Writer, asJSON, parseAll bool) (*replayer, error) {
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
	rp := &replayer{parser: parser, tracker: tracker, out: out, asJSON: asJSON,
		skipped: map[weblog.Reason]int64{}}
	if !parseAll {
		for _, p := range tracker.Needles() {
			rp.needles = append(rp.needles, []byte(p))
		}
	}
	return rp, nil
}

// replayNamed replays a file, or standard input for "-".
func (rp *replayer) replayNamed(name string, stdin io.Reader) error {
	if name == "-" {
		return rp.replay("standard input", stdin)
	}
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return rp.replay(name, f)
}

func (rp *replayer) replay(name string, r io.Reader) error {
	st, err := weblog.ScanLines(r, rp.needles, func(_ int64, line []byte) error {
		rp.line(line)
		return rp.writeErr
	})
	rp.lines += st.Lines
	rp.examined += st.Examined + st.Overlong
	rp.skipped[weblog.ReasonOverlong] += st.Overlong
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return nil
}

// line handles one line that may knock.
func (rp *replayer) line(line []byte) {
	r, err := rp.parser.Parse(line)
	if err != nil {
		var pe *weblog.ParseError
		if !errors.As(err, &pe) {
			pe = &weblog.ParseError{Reason: weblog.ReasonFormat}
		}
		rp.skipped[pe.Reason]++
		if pe.Reason == weblog.ReasonLoopback && rp.tracker.MayKnock(r.Path) {
			rp.loopbackKnocks++
		}
		return
	}
	rp.parsed++
	rp.emit(rp.tracker.Apply(hitOf(&r), rp.events[:0]))
}

// endOfTime is later than any log line.
var endOfTime = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)

// finish reports every sequence left in progress at the end of the logs as
// the timeout it will become, at the time it expires. (Expiring at the time
// of the last line instead would depend on lines that cannot knock.)
func (rp *replayer) finish() {
	rp.emit(rp.tracker.Expire(endOfTime, rp.events[:0]))
}

func (rp *replayer) emit(evs []knock.Event) {
	rp.events = evs
	for i := range evs {
		if evs[i].Kind == knock.KindGrant {
			rp.grants++
		}
		if rp.writeErr == nil {
			rp.writeErr = writeEvent(rp.out, &evs[i], rp.asJSON)
		}
	}
}

// jsonEvent is the JSON line shape of DESIGN.md.
type jsonEvent struct {
	Time     string   `json:"time"`
	Event    string   `json:"event"`
	IP       string   `json:"ip"`
	Sequence string   `json:"sequence"`
	Step     int      `json:"step,omitempty"`
	Until    string   `json:"until,omitempty"`
	Ports    []string `json:"ports,omitempty"`
	TimeStep *int64   `json:"time_step,omitempty"` // one-time grant and reused
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func writeEvent(w io.Writer, e *knock.Event, asJSON bool) error {
	if asJSON {
		je := jsonEvent{Time: rfc3339(e.Time), Event: e.Kind.String(), IP: e.Client.String(),
			Sequence: e.Sequence, Step: e.Step, Ports: e.Ports}
		if !e.Until.IsZero() {
			je.Until = rfc3339(e.Until)
		}
		if e.OneTime {
			je.TimeStep = &e.TimeStep
		}
		b, err := json.Marshal(je)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	var detail string
	switch e.Kind {
	case knock.KindStep:
		detail = fmt.Sprintf("step %d", e.Step)
	case knock.KindGrant:
		detail = fmt.Sprintf("until %s %s", rfc3339(e.Until), strings.Join(e.Ports, ","))
	case knock.KindLockout:
		detail = "until " + rfc3339(e.Until)
	case knock.KindReused:
		detail = fmt.Sprintf("time step %d", e.TimeStep)
	}
	_, err := fmt.Fprintf(w, "%-20s  %-7s  %-15s  %-10s  %s\n", rfc3339(e.Time), e.Kind, e.Client, e.Sequence, detail)
	return err
}

func (rp *replayer) summary() string {
	var b strings.Builder
	var skipped int64
	for _, n := range rp.skipped {
		skipped += n
	}
	fmt.Fprintf(&b, "replay: %d lines read, %d examined, %d parsed, %d skipped", rp.lines, rp.examined, rp.parsed, skipped)
	if skipped > 0 {
		reasons := make([]weblog.Reason, 0, len(rp.skipped))
		for r, n := range rp.skipped {
			if n > 0 {
				reasons = append(reasons, r)
			}
		}
		slices.SortFunc(reasons, func(a, b weblog.Reason) int {
			if d := rp.skipped[b] - rp.skipped[a]; d != 0 {
				return int(d)
			}
			return strings.Compare(string(a), string(b))
		})
		parts := make([]string, len(reasons))
		for i, r := range reasons {
			parts[i] = fmt.Sprintf("%d %s", rp.skipped[r], r)
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintf(&b, ", %d grants", rp.grants)
	return b.String()
}
