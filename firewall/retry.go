package firewall

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// defaultDelays are the waits between the attempts of an iptables call.
var defaultDelays = []time.Duration{50 * time.Millisecond, 200 * time.Millisecond}

// A rule whose delete failed is retried after doomFirst, doubling up to
// doomMax: the kernel's time match has already made it harmless, or soon will.
const (
	doomFirst = time.Second
	doomMax   = time.Minute
)

// Bounds on calls that hang.
const (
	// maxStuck abandoned calls whose iptables has not exited yet (a
	// process that ignores SIGKILL, in the kernel) make every further call
	// fail at once: each holds a goroutine.
	maxStuck = 4
	// After hangsToSuspend calls in a row ran out of time, no call is made
	// for one call timeout: the worker goes on instead of waiting out each
	// rule's attempts.
	hangsToSuspend = 2
	// slowCall is how long a call may wait before Health says so: a call
	// takes milliseconds, unless iptables hangs or another program holds
	// the xtables lock.
	slowCall = 3 * time.Second
)

var (
	errTimeout   = errors.New("the firewall call did not answer in time; killed")
	errStuck     = errors.New("too many killed firewall calls have not exited")
	errSuspended = errors.New("firewall calls suspended: the last ones hung")
)

// retrier runs a ruleset's calls (iptables runs, netlink requests): each under a deadline, retried with
// backoff, counted.
type retrier struct {
	clock    Clock
	log      *slog.Logger
	delays   []time.Duration
	timeout  time.Duration   // an attempt that takes longer is abandoned
	maxStuck int             // 0: maxStuck
	stop     <-chan struct{} // nil: never
	cmd      string          // iptables, ip6tables or nftables, for the log
	exited   func()          // for the tests: called when an abandoned call returns

	failures atomic.Uint64 // attempts that failed, timeouts and refusals included
	timedOut atomic.Uint64
	lockBusy atomic.Uint64
	stuck    atomic.Int64 // abandoned attempts still running
	since    atomic.Int64 // when the running attempt started (unix ns); 0: none

	mu        sync.Mutex
	hangs     int       // attempts in a row that timed out
	suspended time.Time // no call before this
	lastErr   string
}

// do calls fn with attempt 1, 2, ... until it succeeds or the attempts are
// used up; it waits between attempts on the clock. An attempt that runs
// past the timeout is abandoned: its context ends, which kills its
// iptables. errNoChain and errEmptyChain are answers, returned at once.
func (rt *retrier) do(ctx context.Context, op string, fn func(ctx context.Context, attempt int) error) error {
	timedOut := false        // an attempt was killed: it may have been applied
	var left <-chan struct{} // closed when an abandoned attempt's fn returned
	for attempt := 1; ; attempt++ {
		if left != nil {
			// The next attempt waits for the killed one to return (it
			// does at once, unless its iptables cannot die): fn's writes
			// must not overlap.
			select {
			case <-left:
			case <-time.After(abandonedWait):
			}
		}
		var err error
		left, err = rt.attempt(ctx, attempt, fn)
		if timedOut && err != nil && !errors.Is(err, errTimeout) {
			err = fmt.Errorf("%w (an earlier attempt: %w)", err, errTimeout)
		}
		timedOut = timedOut || errors.Is(err, errTimeout)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errNoChain), errors.Is(err, errEmptyChain):
			return err
		case ctx.Err() != nil:
			return fmt.Errorf("%w (during: %w)", ctx.Err(), err)
		case errors.Is(err, errClosed):
			return err
		}
		rt.failures.Add(1)
		if errors.Is(err, errLocked) {
			rt.lockBusy.Add(1)
		}
		rt.mu.Lock()
		rt.lastErr = op + ": " + err.Error()
		rt.mu.Unlock()
		if errors.Is(err, errStuck) || errors.Is(err, errSuspended) {
			// Not run: said once, when it began, and by the caller.
			rt.log.Debug(cmp.Or(rt.cmd, "iptables")+" call refused", keyOp, op, keyErr, err)
			return err
		}
		rt.log.Warn(cmp.Or(rt.cmd, "iptables")+" call failed", keyOp, op, keyAttempt, attempt, keyErr, err)
		if attempt > len(rt.delays) {
			return err
		}
		select {
		case <-rt.clock.After(rt.delays[attempt-1]):
		case <-ctx.Done():
			return fmt.Errorf("%w (retry of: %w)", ctx.Err(), err)
		case <-rt.stop:
			return fmt.Errorf("%w (retry of: %w)", errClosed, err)
		}
	}
}

// Whether an attempt's goroutine is running, done or abandoned.
const (
	running int32 = iota
	finished
	abandoned
)

// abandonedWait bounds the wait for a killed attempt to return before
// the next: an iptables that cannot die (stuck in the kernel) is counted
// as stuck instead.
const abandonedWait = time.Second

// attempt runs fn once, on a goroutine of its own, and waits for it at
// most rt.timeout. When it gave fn up, left is closed once fn returns.
func (rt *retrier) attempt(ctx context.Context, attempt int, fn func(context.Context, int) error) (left <-chan struct{}, err error) {
	limit := rt.maxStuck
	if limit == 0 {
		limit = maxStuck
	}
	if n := rt.stuck.Load(); n >= int64(limit) {
		return nil, fmt.Errorf("%w (%d)", errStuck, n)
	}
	rt.mu.Lock()
	until := rt.suspended
	rt.mu.Unlock()
	if rt.clock.Now().Before(until) {
		return nil, fmt.Errorf("%w; until %s", errSuspended, until.Format(time.RFC3339))
	}
	// The deadline is set before the call starts: a test that sees the
	// call start can advance the clock past it.
	deadline := rt.clock.After(rt.timeout)
	rt.since.Store(rt.clock.Now().UnixNano())
	defer rt.since.Store(0)
	cctx, cancel := context.WithCancel(ctx)
	var state atomic.Int32
	res := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		err := fn(cctx, attempt)
		close(exited)
		done := state.CompareAndSwap(running, finished)
		res <- err
		if !done {
			rt.stuck.Add(-1)
			if rt.exited != nil {
				rt.exited()
			}
		}
	}()
	// abandon gives the call up unless it has just finished; the caller
	// cancels it (giveUp) once the abandon is counted, so that whoever
	// sees the call exit sees it counted, and no longer running, too.
	abandon := func() bool {
		rt.stuck.Add(1)
		if !state.CompareAndSwap(running, abandoned) {
			rt.stuck.Add(-1)
			return false
		}
		return true
	}
	giveUp := func() {
		rt.since.Store(0)
		cancel()
	}
	select {
	case err = <-res:
	case <-deadline:
		if abandon() {
			rt.timedOut.Add(1)
			rt.hung()
			giveUp()
			return exited, fmt.Errorf("%w after %s", errTimeout, rt.timeout)
		}
		err = <-res
	case <-ctx.Done():
		if abandon() {
			giveUp()
			return exited, ctx.Err()
		}
		err = <-res
	case <-rt.stop:
		if abandon() {
			giveUp()
			return exited, errClosed
		}
		err = <-res
	}
	cancel()
	rt.mu.Lock()
	rt.hangs = 0 // iptables answered, even if with an error
	rt.mu.Unlock()
	return nil, err
}

// hung counts a timed-out attempt and suspends calls after too many.
func (rt *retrier) hung() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.hangs++
	if rt.hangs >= hangsToSuspend {
		rt.suspended = rt.clock.Now().Add(rt.timeout)
		rt.log.Error(cmp.Or(rt.cmd, "iptables")+" hangs; no call until a timeout has passed", keyCount, rt.hangs, keyUntil, rt.suspended)
	}
}

// waiting says how long the running attempt has waited for iptables; 0
// when none runs.
func (rt *retrier) waiting() time.Duration {
	s := rt.since.Load()
	if s == 0 {
		return 0
	}
	return max(0, rt.clock.Now().Sub(time.Unix(0, s)))
}

// suspendedNow tells whether calls are suspended.
func (rt *retrier) suspendedNow() bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.clock.Now().Before(rt.suspended)
}
