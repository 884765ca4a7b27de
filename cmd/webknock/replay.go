package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
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

// The head of each log that is always parsed, to tell a wrong log.format
// even when no line holds a knock path.
const (
	formatSampleBytes = 64 << 10
	formatSampleLines = 100
)

// errReported is a failure whose explanation has been printed already.
var errReported = errors.New("failure reported")

func replayFlags(fs *pflag.FlagSet) {
	fs.Bool("json", false, "print events as JSON lines")
	fs.Bool("parse-all", false, "parse every line, not only those holding a knock path (slower; reports every line the format does not match)")
	fs.String("expect", "", "compare the grants with the JSON lines of `FILE`: exit 1 and print the differences unless they are exactly those")
	fs.Bool("update", false, "with --expect: write the grants to its FILE instead of comparing")
	fs.Bool("print-skipped", false, "print each line that was skipped, with its reason, to standard error (implies --parse-all)")
	fs.String("summary", "text", "how to write the summary to standard error: `text` or json")
	fs.Bool("syslog", false, "each LOG is syslog messages, as log.syslog receives them (octet counting or one per line, RFC 3164 or 5424): their bodies are replayed")
}

// replayOptions are the command line's choices.
type replayOptions struct {
	asJSON       bool
	parseAll     bool
	printSkipped bool
	quiet        bool // print no events (--expect prints the comparison instead)
	keepGrants   bool
	syslog       bool // the input is syslog messages
}

func runReplay(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) == 0 {
		return usagef(env, fs, "name at least one LOG (- for standard input)")
	}
	var o replayOptions
	o.asJSON, _ = fs.GetBool("json")
	o.parseAll, _ = fs.GetBool("parse-all")
	o.printSkipped, _ = fs.GetBool("print-skipped")
	o.syslog, _ = fs.GetBool("syslog")
	expect, _ := fs.GetString("expect")
	update, _ := fs.GetBool("update")
	summary, _ := fs.GetString("summary")
	switch {
	case update && expect == "":
		return usagef(env, fs, "--update rewrites the file of --expect; name it")
	case summary != "text" && summary != "json":
		return usagef(env, fs, "--summary %q: want text or json", summary)
	}
	o.quiet = expect != "" && !update
	o.keepGrants = expect != ""
	if os.Getenv("GOMEMLIMIT") == "" {
		// A replay is a batch job: collect garbage sooner rather than grow.
		debug.SetMemoryLimit(replayMemoryLimit)
		if os.Getenv("GOGC") == "" {
			// Below the limit, collect less often: loading a configuration
			// of a thousand sequences makes garbage the limit keeps in check.
			debug.SetGCPercent(replayGCPercent)
		}
	}
	cfg, err := loadConfigWith(env, fs, func(cfg *config.Config) (errs, warns []*config.FieldError) {
		return checkGrantPrefixes(cfg), nil
	}, true)
	if err != nil {
		return err
	}
	var want []expectedGrant
	if o.quiet {
		// Read before the logs: a bad expectation fails at once.
		if want, err = readExpect(expect); err != nil {
			return err
		}
	}
	out := bufio.NewWriterSize(env.stdout, 64<<10)
	skippedOut := bufio.NewWriter(env.stderr)
	rp, err := newReplayer(cfg, out, skippedOut, o)
	if err != nil {
		return err
	}
	for _, name := range args {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := rp.replayNamed(name, env.stdin)
		if ferr := skippedOut.Flush(); err == nil {
			err = ferr
		}
		if err != nil {
			return err
		}
	}
	rp.finish()
	if err := rp.writeErr; err != nil {
		return err
	}
	var d *grantDiff
	switch {
	case update:
		if err := writeExpect(expect, rp.grants); err != nil {
			return err
		}
		fmt.Fprintf(out, "replay: wrote %d grants to %s\n", len(rp.grants), expect)
	case o.quiet:
		d = diffGrants(want, rp.grants)
		d.print(out, expect)
	}
	if err := out.Flush(); err != nil {
		return err
	}
	if rp.loopbackKnocks > 0 {
		fmt.Fprintf(env.stderr, "warning: %d knock request(s) came from a loopback address: a reverse proxy in front of the web server hides the real clients; list it in log.trusted_proxies and log $http_x_forwarded_for\n", rp.loopbackKnocks)
	}
	if summary == "json" {
		if err := rp.writeSummaryJSON(env.stderr, expect, d); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(env.stderr, rp.summary())
	}
	if d != nil && !d.pass() {
		return errReported
	}
	return nil
}

// hitOf adapts a parsed request to the knock core.
func hitOf(r *weblog.Request, input string) knock.Hit {
	return knock.Hit{Client: r.Client, Time: r.Time, Method: r.Method, Path: r.Path, Status: r.Status, Input: input}
}

// replayer reads logs in order and prints the events of the knock core,
// with the log's own timestamps as the clock.
type replayer struct {
	parser     *weblog.Parser
	tracker    *knock.Tracker
	reorder    *reorder // on the lines' own times
	format     string
	needles    [][]byte // nil: every line is parsed
	out        io.Writer
	skippedOut io.Writer
	o          replayOptions
	events     []knock.Event
	writeErr   error
	bounds     *replayGrants // the firewall's bounds on live grants

	files  []*fileStats
	cur    *fileStats // the file being read
	counts map[knock.Kind]int64
	grants []jsonEvent // when o.keepGrants

	loopbackKnocks int64
}

func newReplayer(cfg *config.Config, out, skippedOut io.Writer, o replayOptions) (*replayer, error) {
	f, err := newFeed(cfg)
	if err != nil {
		return nil, err
	}
	rp := &replayer{parser: f.parser, tracker: f.tracker, reorder: f.reorder, format: cfg.Log.Format, out: out, skippedOut: skippedOut,
		o: o, counts: map[knock.Kind]int64{}, bounds: newReplayGrants(cfg.Firewall)}
	if !o.parseAll && !o.printSkipped {
		rp.needles = needlesOf(f.tracker)
	}
	return rp, nil
}

// replayNamed replays a file, or standard input for "-".
func (rp *replayer) replayNamed(name string, stdin io.Reader) error {
	if name == "-" {
		return rp.replay(name, stdin)
	}
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return rp.replay(name, f)
}

func (rp *replayer) replay(name string, r io.Reader) error {
	fs := &fileStats{Name: name, Skipped: map[weblog.Reason]int64{}}
	rp.files = append(rp.files, fs)
	rp.cur = fs
	if rp.o.syslog {
		return rp.replaySyslog(fs, r)
	}
	br := bufio.NewReaderSize(r, formatSampleBytes)
	rp.sampleFormat(br)
	st, err := weblog.ScanLines(br, rp.needles, func(no int64, line []byte) error {
		rp.line(no, line)
		return rp.writeErr
	})
	fs.Lines += st.Lines
	fs.Examined += st.Examined + st.Overlong
	if st.Overlong > 0 {
		fs.Skipped[weblog.ReasonOverlong] += st.Overlong
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return rp.checkFormat(fs)
}

// sampleFormat parses the first lines of a log, without applying them, to
// learn whether the format matches at all.
func (rp *replayer) sampleFormat(br *bufio.Reader) {
	head, _ := br.Peek(formatSampleBytes) // what there is; errors come again to ScanLines
	if i := bytes.LastIndexByte(head, '\n'); i >= 0 {
		head = head[:i]
	} else {
		head = nil
	}
	no := int64(0)
	for line := range bytes.SplitSeq(head, []byte{'\n'}) {
		if no++; no > formatSampleLines {
			break
		}
		if len(line) > 0 && len(line) <= weblog.MaxLineBytes {
			_, err := rp.parser.Parse(line)
			rp.cur.noteFormat(err, no, line)
		}
	}
}

// checkFormat refuses a log of which no line matched the format: a CI job
// must not pass on a replay that read nothing.
func (rp *replayer) checkFormat(fs *fileStats) error {
	if fs.matched > 0 || fs.mismatched == 0 {
		return nil
	}
	return fmt.Errorf("replay %s: no line matches log.format %q (%s); line %d: %s",
		fs.Name, rp.format, formatHint(rp.format), fs.badLine, quoteSample(fs.badSample))
}

// formatHint says where to look when no line matches format.
func formatHint(format string) string {
	switch format {
	case "combined", "common", "vhost_combined":
		return "set log.format to the web server's log_format or LogFormat, or one of combined, common, vhost_combined"
	}
	return "compare it with the log_format the web server writes"
}

// quoteSample quotes the start of a line for a message.
func quoteSample(line []byte) string {
	if len(line) > sampleBytes {
		return strconv.Quote(string(line[:sampleBytes])) + "..."
	}
	return strconv.Quote(string(line))
}

// line handles one line that may knock.
func (rp *replayer) line(no int64, line []byte) {
	r, err := rp.parser.Parse(line)
	rp.cur.noteFormat(err, no, line)
	if err != nil {
		reason := weblog.ReasonOf(err)
		rp.cur.Skipped[reason]++
		if reason == weblog.ReasonLoopback && rp.tracker.MayKnock(r.Path) {
			rp.loopbackKnocks++
		}
		if rp.o.printSkipped {
			fmt.Fprintf(rp.skippedOut, "%s:%d: skipped: %v: %s\n", rp.cur.Name, no, err, quoteSample(line))
		}
		return
	}
	rp.cur.Parsed++
	// A held step whose wait, in the logs' time, is over goes first.
	rp.reorder.release(r.Time, rp.emit)
	rp.reorder.apply(hitOf(&r, rp.cur.Name), no, r.Time, rp.emit)
}

// endOfTime is later than any log line.
var endOfTime = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)

// finish reports every sequence left in progress at the end of the logs as
// the timeout it will become, at the time it expires. (Expiring at the time
// of the last line instead would depend on lines that cannot knock.) Such
// a timeout comes from no line: it has none.
func (rp *replayer) finish() {
	rp.cur = nil
	rp.reorder.release(endOfTime, rp.emit)
	rp.emit(0, rp.tracker.Expire(endOfTime, rp.events[:0]))
}

// emit prints the events of line no of the current file.
func (rp *replayer) emit(no int64, evs []knock.Event) {
	file := ""
	if rp.cur != nil {
		file = rp.cur.Name
	}
	for i := range evs {
		rp.bounds.apply(&evs[i])
		rp.counts[evs[i].Kind]++
		je := newJSONEvent(&evs[i], file, no)
		if evs[i].Kind == knock.KindGrant && rp.o.keepGrants {
			rp.grants = append(rp.grants, je)
		}
		if rp.writeErr == nil && !rp.o.quiet {
			rp.writeErr = writeEvent(rp.out, &evs[i], &je, rp.o.asJSON)
		}
	}
}

// jsonEvent is the JSON line shape of DESIGN.md.
type jsonEvent struct {
	Time     string   `json:"time,omitempty"`
	Event    string   `json:"event,omitempty"`
	IP       string   `json:"ip"`
	Sequence string   `json:"sequence"`
	Step     int      `json:"step,omitempty"`
	Until    string   `json:"until,omitempty"`
	Ports    []string `json:"ports,omitempty"`
	Source   string   `json:"source,omitempty"`    // a grant or close widened to a network
	Reason   string   `json:"reason,omitempty"`    // denied
	TimeStep *int64   `json:"time_step,omitempty"` // one-time grant and reused
	File     string   `json:"file,omitempty"`
	Line     int64    `json:"line,omitempty"`
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func newJSONEvent(e *knock.Event, file string, line int64) jsonEvent {
	je := jsonEvent{Time: rfc3339(e.Time), Event: e.Kind.String(), IP: e.Client.String(),
		Sequence: e.Sequence, Step: e.Step, Ports: e.Ports, Reason: e.Reason, File: file, Line: line}
	if !e.Until.IsZero() {
		je.Until = rfc3339(e.Until)
	}
	if e.Source.IsValid() && e.Source.Bits() != e.Client.BitLen() {
		je.Source = e.Source.String()
	}
	if e.OneTime {
		je.TimeStep = &e.TimeStep
	}
	return je
}

func writeEvent(w io.Writer, e *knock.Event, je *jsonEvent, asJSON bool) error {
	if asJSON {
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
	case knock.KindGrant, knock.KindClose:
		detail = fmt.Sprintf("until %s %s", rfc3339(e.Until), strings.Join(e.Ports, ","))
		if je.Source != "" {
			detail += " to " + je.Source
		}
	case knock.KindLockout:
		detail = "until " + rfc3339(e.Until)
	case knock.KindReused:
		detail = fmt.Sprintf("time step %d", e.TimeStep)
	case knock.KindDenied:
		detail = "by " + e.Reason
	}
	where := ""
	if je.File != "" {
		where = fmt.Sprintf("  %s:%d", je.File, je.Line)
	}
	_, err := fmt.Fprintf(w, "%-20s  %-7s  %-15s  %-10s  %s%s\n", rfc3339(e.Time), e.Kind, e.Client, e.Sequence, detail, where)
	return err
}
