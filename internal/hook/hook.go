// Package hook runs the commands the configuration names for grants, the
// end of grants and lockouts: an argv, never a shell, started in the
// background under a deadline, a bounded number at once, its output
// captured to the log. Nothing it does can block or delay the caller.
package hook

import (
	"context"
	"errors"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Hook names one of the configured commands.
type Hook int

// The hooks, named as their configuration keys.
const (
	OnGrant Hook = iota
	OnEnd
	OnLockout
	numHooks
)

var hookNames = [numHooks]string{"on_grant", "on_end", "on_lockout"}

func (h Hook) String() string { return hookNames[h] }

// The results a run is counted under.
const (
	ResultOK      = "ok"
	ResultFailed  = "failed"  // exited with a failure, or could not start
	ResultTimeout = "timeout" // killed at its deadline
	ResultDropped = "dropped" // never started: the queue was full, or the runner closed
)

type result int

const (
	resOK result = iota
	resFailed
	resTimeout
	resDropped
	numResults
)

var resultNames = [numResults]string{ResultOK, ResultFailed, ResultTimeout, ResultDropped}

// The {event} values of the runner's own callers; an end's reason comes
// from the firewall (expired, revoked, closed, policy).
const (
	EventGrant   = "grant"
	EventLockout = "lockout"
)

// Defaults of Config.
const (
	DefaultTimeout    = 10 * time.Second
	DefaultMaxRunning = 4
	DefaultQueue      = 64
)

// MaxOutput is how much of a run's output (stdout and stderr together) is
// logged; the rest is counted.
const MaxOutput = 4 << 10

// killDelay bounds how long a run waits for its output to close once the
// program has exited or been killed, should a child it left hold it.
const killDelay = time.Second

// envPath is the PATH of a hook's environment, which holds nothing else
// but the WEBKNOCK_ variables of its event.
const envPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Attribute keys of the runner's log.
const (
	keyHook     = "hook"
	keyEvent    = "event"
	keyProgram  = "program"
	keyIP       = "ip"
	keySequence = "sequence"
	keyStatus   = "exit_status"
	keyDuration = "duration"
	keyOutput   = "output"
	keyDropped  = "output_dropped_bytes"
	keyTimeout  = "timeout"
	keyErr      = "err"
)

// Config says what to run for each hook; an empty argv runs nothing.
type Config struct {
	OnGrant, OnEnd, OnLockout []string
	Timeout                   time.Duration // a run's deadline; 0: DefaultTimeout
	MaxRunning                int           // runs at once; 0: DefaultMaxRunning
	// Queue bounds the runs waiting for a free slot; more are dropped.
	// 0: DefaultQueue. Fixed by New.
	Queue int
}

// settings is a parsed Config.
type settings struct {
	cmds       [numHooks]*Command
	timeout    time.Duration
	maxRunning int
}

func parseConfig(c Config) (*settings, error) {
	s := &settings{timeout: c.Timeout, maxRunning: c.MaxRunning}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	if s.maxRunning <= 0 {
		s.maxRunning = DefaultMaxRunning
	}
	var errs []error
	for h, argv := range [numHooks][]string{c.OnGrant, c.OnEnd, c.OnLockout} {
		if len(argv) == 0 {
			continue
		}
		cmd, err := Parse(argv)
		if err != nil {
			errs = append(errs, &HookError{Hook: Hook(h), Err: err})
		}
		s.cmds[h] = cmd
	}
	return s, errors.Join(errs...)
}

// CheckConfig returns the problems New and Reconfigure would refuse c for.
func CheckConfig(c Config) error {
	_, err := parseConfig(c)
	return err
}

// HookError is a problem with one hook's command.
type HookError struct {
	Hook Hook
	Err  error
}

func (e *HookError) Error() string { return e.Hook.String() + ": " + e.Err.Error() }

func (e *HookError) Unwrap() error { return e.Err }

// Runner runs the hooks. Run never blocks; Close waits for the runs
// started.
type Runner struct {
	log   *slog.Logger
	set   atomic.Pointer[settings]
	queue chan job
	wake  chan struct{} // the settings changed
	stop  chan struct{} // closed by Close
	done  chan struct{} // closed when the last run has ended
	// mu orders Run's sends before Close: no send after stop.
	mu     sync.RWMutex
	closed bool
	counts [numHooks][numResults]atomic.Uint64
}

type job struct {
	hook    Hook
	cmd     *Command
	vars    Vars
	timeout time.Duration
}

// New returns a running Runner for c, logging to logger.
func New(c Config, logger *slog.Logger) (*Runner, error) {
	s, err := parseConfig(c)
	if err != nil {
		return nil, err
	}
	q := c.Queue
	if q <= 0 {
		q = DefaultQueue
	}
	r := &Runner{
		log:   logger,
		queue: make(chan job, q),
		wake:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	r.set.Store(s)
	go r.dispatch()
	return r, nil
}

// Reconfigure applies c to the runs queued from now on; on an error
// nothing changes. The queue's length stays.
func (r *Runner) Reconfigure(c Config) error {
	s, err := parseConfig(c)
	if err != nil {
		return err
	}
	r.set.Store(s)
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// Run queues hook h for the event v and returns at once. When the queue
// is full, or the runner closed, the run is dropped, counted and logged.
func (r *Runner) Run(h Hook, v Vars) {
	s := r.set.Load()
	cmd := s.cmds[h]
	if cmd == nil {
		return
	}
	r.mu.RLock()
	closed, queued := r.closed, false
	if !closed {
		select {
		case r.queue <- job{hook: h, cmd: cmd, vars: v, timeout: s.timeout}:
			queued = true
		default:
		}
	}
	r.mu.RUnlock()
	if !queued {
		r.dropped(job{hook: h, cmd: cmd, vars: v}, closed)
	}
}

// dropped counts and logs a run never started: the queue was full, or the
// runner is closing.
func (r *Runner) dropped(j job, closing bool) {
	r.counts[j.hook][resDropped].Add(1)
	msg := "hook dropped: too many runs waiting"
	if closing {
		msg = "hook dropped: webknock is stopping"
	}
	r.log.Warn(msg, j.attrs()...)
}

// Close stops taking runs, drops those waiting and waits for those
// running, which their deadline bounds.
func (r *Runner) Close() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.stop)
	}
	r.mu.Unlock()
	<-r.done
}

// EachRun calls fn with the number of runs of every hook and result, zeros
// included: the metrics' view.
func (r *Runner) EachRun(fn func(hook, result string, n uint64)) {
	for h := range numHooks {
		for res := range numResults {
			fn(h.String(), resultNames[res], r.counts[h][res].Load())
		}
	}
}

// dispatch starts the queued runs, at most maxRunning at once.
func (r *Runner) dispatch() {
	defer close(r.done)
	finished := make(chan struct{})
	running := 0
	for {
		var queue <-chan job
		if running < r.set.Load().maxRunning {
			queue = r.queue
		}
		select {
		case j := <-queue:
			running++
			go func() {
				r.run(j)
				finished <- struct{}{}
			}()
		case <-finished:
			running--
		case <-r.wake:
		case <-r.stop:
		drain:
			for {
				select {
				case j := <-r.queue:
					r.dropped(j, true)
				default:
					break drain
				}
			}
			for ; running > 0; running-- {
				<-finished
			}
			return
		}
	}
}

func (j *job) attrs() []any {
	return []any{keyHook, j.hook.String(), keyEvent, j.vars.Event, keyProgram, j.cmd.Path(),
		keyIP, formatIP(j.vars.IP), keySequence, j.vars.Sequence}
}

// run runs one job to its end and logs and counts how it went. Only the
// program is logged, not its arguments, which may hold a webhook's secret.
func (r *Runner) run(j job) {
	attrs := j.attrs()
	if err := CheckProgram(j.cmd.Path()); err != nil {
		r.counts[j.hook][resFailed].Add(1)
		r.log.Warn("hook not run", append(attrs, keyErr, err)...)
		return
	}
	argv := j.cmd.Expand(j.vars)
	ctx, cancel := context.WithTimeout(context.Background(), j.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = environ(j.hook, &j.vars)
	cmd.Dir = "/"
	// Its own process group, so that the deadline kills what it started
	// too; and killed with webknock, so that no run outlives the daemon.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = killDelay
	out := &output{}
	cmd.Stdout, cmd.Stderr = out, out // one writer: never written concurrently
	start := time.Now()
	err := cmd.Run()
	attrs = append(attrs, keyDuration, time.Since(start).Round(time.Millisecond), keyOutput, out.String())
	if out.dropped > 0 {
		attrs = append(attrs, keyDropped, out.dropped)
	}
	switch {
	case errors.Is(err, exec.ErrWaitDelay) && ctx.Err() == nil:
		// It exited well but left a process holding its output: end it.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		fallthrough
	case err == nil:
		r.counts[j.hook][resOK].Add(1)
		r.log.Info("hook ran", attrs...)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		r.counts[j.hook][resTimeout].Add(1)
		r.log.Warn("hook killed at its deadline", append(attrs, keyTimeout, j.timeout)...)
	default:
		r.counts[j.hook][resFailed].Add(1)
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			attrs = append(attrs, keyStatus, exitStatus(ee))
		}
		r.log.Warn("hook failed", append(attrs, keyErr, err)...)
	}
}

// exitStatus is the exit code, or the signal that ended the program.
func exitStatus(ee *exec.ExitError) string {
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return strconv.Itoa(ee.ExitCode())
}

// environ is a run's whole environment: a fixed PATH and the event.
func environ(h Hook, v *Vars) []string {
	return []string{
		envPath,
		"WEBKNOCK_HOOK=" + h.String(),
		"WEBKNOCK_EVENT=" + v.Event,
		"WEBKNOCK_IP=" + v.value(PlaceholderIP),
		"WEBKNOCK_SEQUENCE=" + v.Sequence,
		"WEBKNOCK_UNTIL=" + v.value(PlaceholderUntil),
		"WEBKNOCK_PORTS=" + v.value(PlaceholderPorts),
	}
}

// output keeps the first MaxOutput bytes written and counts the rest.
type output struct {
	b       []byte
	dropped int64
}

func (o *output) Write(p []byte) (int, error) {
	n := min(len(p), MaxOutput-len(o.b))
	o.b = append(o.b, p[:n]...)
	o.dropped += int64(len(p) - n)
	return len(p), nil
}

func (o *output) String() string { return strings.TrimRight(string(o.b), "\n") }
