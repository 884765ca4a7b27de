package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/fleet"
	"github.com/webknock/webknock/internal/hook"
	"github.com/webknock/webknock/internal/statedir"
	"github.com/webknock/webknock/knock"
	"github.com/webknock/webknock/web"
	"github.com/webknock/webknock/weblog"
)

// Attribute keys of the daemon's log.
const (
	keyIP       = "ip"
	keySequence = "sequence"
	keyUntil    = "until"
	keyPorts    = "ports"
	keyFile     = "file"
	keyErr      = "err"
	keyStep     = "step"
	keyTimeStep = "time_step"
	keyReason   = "reason"
	keySource   = "source"
	keyInput    = "input" // where the line came from: a log file, or syslog:LISTEN
)

func runFlags(fs *pflag.FlagSet) {
	fs.Bool("json-logs", false, "write the daemon's log as JSON lines instead of text")
	fs.Bool("debug", false, "also log every step, reset and timeout")
}

// runRun is `webknock run`: follow the logs, apply grants, until stopped.
func runRun(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) > 0 {
		return usagef(env, fs, "unexpected argument %q", args[0])
	}
	cfg, err := loadConfig(env, fs, runChecks)
	if err != nil {
		return err
	}
	jsonLogs, _ := fs.GetBool("json-logs")
	debug, _ := fs.GetBool("debug")
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	hopts := &slog.HandlerOptions{Level: level}
	var logger *slog.Logger
	if jsonLogs {
		logger = slog.New(slog.NewJSONHandler(env.stderr, hopts))
	} else {
		logger = slog.New(slog.NewTextHandler(env.stderr, hopts))
	}
	raiseFileLimit(logger)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := func() (*config.Config, error) { return loadConfig(env, fs, runChecks) }
	return serve(ctx, cfg, logger, hup, reload)
}

// raiseFileLimit lifts the soft limit of open files to the hard limit: every
// followed log, web connection and iptables call holds descriptors.
func raiseFileLimit(logger *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur >= lim.Max {
		return
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		logger.Warn("cannot raise the open files limit", keyErr, err)
	}
}

// Sweeping expired knock progress: how often, and how far behind the
// host's clock (a line is logged a little after its time: Apache's %t is when
// the request came, and the log is read a little later).
const (
	sweepEvery = time.Minute
	sweepLag   = time.Minute
)

// daemon is the running state of `webknock run`: the one place where log
// lines become hits and grants become firewall rules. Only its loop
// goroutine touches the feed (tracker, parser) and the inputs' state; other
// goroutines (web requests) reach them through admin.
type daemon struct {
	cfg    *config.Config
	shared atomic.Pointer[config.Config] // cfg, for other goroutines
	log    *slog.Logger
	*feed
	fw       *firewall.Firewall
	hooks    *hook.Runner
	follower atomic.Pointer[weblog.Follower]
	syslog   *weblog.Syslog // nil: no log.syslog.listen
	fleet    *fleetSide     // nil: no fleet.role
	warned   bool           // about knocks from loopback
	newest   time.Time      // the latest time of a line parsed
	sweeps   <-chan time.Time
	web      *web.Server
	webp     atomic.Pointer[web.Server] // web, for the follower's goroutine
	inputs   inputs
	stats    trackerStats
	admin    chan func()
	now      func() time.Time
	// release fires when the earliest knock step held by the feed's
	// reorder is due; releaseC is nil when none is held.
	release  *time.Timer
	releaseC <-chan time.Time
	// used is the last used time step of each one-time sequence, as
	// persisted; reusedWarned the reuses already warned about.
	used         map[string]usedStep
	reusedWarned map[reusedKey]bool
}

// trackerStats lets the web server read what the daemon's goroutine alone
// may touch without a lock on every line.
type trackerStats struct {
	clients atomic.Int64
	evicted atomic.Uint64
	follow  atomic.Bool
}

func (s *trackerStats) Clients() int    { return int(s.clients.Load()) }
func (s *trackerStats) Evicted() uint64 { return s.evicted.Load() }

// serve runs the daemon until ctx ends. A value on hup reloads the
// configuration with reload; a configuration that does not load or apply is
// refused and the running one kept.
func serve(ctx context.Context, cfg *config.Config, logger *slog.Logger, hup <-chan os.Signal, reload func() (*config.Config, error)) error {
	sweeps := time.NewTicker(sweepEvery)
	defer sweeps.Stop()
	return newDaemon(cfg, logger, sweeps.C).run(ctx, hup, reload)
}

// newDaemon returns the daemon of cfg, not started; a value on sweeps
// (the time now) sweeps expired knock progress.
func newDaemon(cfg *config.Config, logger *slog.Logger, sweeps <-chan time.Time) *daemon {
	return &daemon{cfg: cfg, log: logger, sweeps: sweeps, admin: make(chan func()), now: time.Now, reusedWarned: map[reusedKey]bool{}}
}

// run is serve, for a daemon made by newDaemon.
//
// Every error that stops the start happens before the firewall is touched:
// the state directory is locked, the web listeners bound and the logs
// opened first, and firewall.Open probes everything before its first change.
func (d *daemon) run(ctx context.Context, hup <-chan os.Signal, reload func() (*config.Config, error)) error {
	cfg, logger := d.cfg, d.log
	d.shared.Store(cfg)
	d.inputs.init(logger)
	for _, w := range cfg.Warnings {
		logger.Warn("configuration: " + w.Error())
	}
	if err := d.setCore(cfg); err != nil {
		return err
	}
	lock, err := statedir.Acquire(cfg.StateDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	if d.used, err = loadUsed(cfg.StateDir); err != nil {
		return err
	}
	d.applyUsed(cfg)
	lns, err := web.Bind(cfg.Web.Listen, cfg.Web.Socket)
	if err != nil {
		return err
	}
	defer lns.Close()
	var follower *weblog.Follower
	if readsLogs(cfg) {
		if follower, err = d.follow(ctx, cfg); err != nil {
			return fmt.Errorf("follow logs: %w", err)
		}
	}
	d.follower.Store(follower)
	defer func() {
		d.stats.follow.Store(false)
		if f := d.follower.Load(); f != nil {
			f.Close()
		}
	}()
	if len(cfg.Log.Syslog.Listen) > 0 && readsLogs(cfg) {
		if d.syslog, err = weblog.ListenSyslog(ctx, syslogOptions(cfg, logger)); err != nil {
			return fmt.Errorf("syslog: %w", err)
		}
		defer d.syslog.Close()
	}
	if err := d.startHooks(cfg); err != nil {
		return err
	}
	defer d.hooks.Close() // after the firewall's: it may tell of ends
	fw, err := firewall.Open(ctx, d.withHooks(firewallOptions(cfg, logger)))
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	d.fw = fw
	defer d.fw.Close()
	d.holdGrants(fw.Grants()...)
	if err := d.startFleet(ctx); err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	defer d.fleet.close()
	srv, err := web.New(web.Options{Listeners: lns, TokenFile: cfg.Web.TokenFile, Logger: logger,
		Following: d.stats.follow.Load, Tracker: &d.stats, Admin: d, Problems: d.problems, HookRuns: d.hooks,
		SyslogCounts: d.syslogCounts, FleetCounts: d.fleetCounts}, fleetFirewall{fw, d})
	if err != nil {
		return err
	}
	d.web = srv
	d.webp.Store(srv)
	d.stats.follow.Store(true)

	webCtx, stopWeb := context.WithCancel(ctx)
	webDone := make(chan error, 1)
	go func() { webDone <- d.web.Serve(webCtx) }()
	defer func() {
		stopWeb() // also when the loop ends on an error of its own
		if err := <-webDone; err != nil {
			logger.Error("web server", keyErr, err)
		}
	}()
	logger.Info("webknock running", "logs", cfg.Log.Paths, "syslog", cfg.Log.Syslog.Listen, "sequences", len(cfg.Sequences),
		"backend", cfg.Firewall.Backend, "chain", cfg.Firewall.Chain, "table", cfg.Firewall.Table)
	for {
		select {
		case <-ctx.Done():
			return d.stopped(ctx, "")
		case <-hup:
			d.reload(ctx, reload)
		case fn := <-d.admin:
			fn()
		case now := <-d.sweeps:
			d.sweep(ctx, now)
		case <-d.releaseC:
			d.handle(ctx, d.feed.release(d.now()))
			d.armRelease()
		case b, ok := <-d.fileBatches():
			if !ok {
				return d.stopped(ctx, "log follower")
			}
			d.take(ctx, d.follower.Load(), b)
		case b, ok := <-d.syslogBatches():
			if !ok {
				return d.stopped(ctx, "syslog listener")
			}
			d.take(ctx, d.syslog, b)
		}
	}
}

// setCore builds the feed of cfg: its parser, its knock tracker and the
// paths the lines that may knock hold (refreshed with every reload). The
// caller has the new tracker take over the state of the running one.
func (d *daemon) setCore(cfg *config.Config) error {
	f, err := newFeed(cfg)
	if err != nil {
		return err
	}
	d.feed = f
	d.applyUsed(cfg)
	return nil
}

// stopped ends the loop: a stop when ctx has ended (a source closes when
// it does, maybe before the loop sees ctx end), else the failure of the
// source named.
func (d *daemon) stopped(ctx context.Context, source string) error {
	if ctx.Err() == nil && source != "" {
		return errors.New(source + " stopped")
	}
	d.log.Info("webknock stopping; firewall rules stay in place")
	return nil
}

// take handles a batch of src and acknowledges it.
func (d *daemon) take(ctx context.Context, src weblog.Source, b weblog.Batch) {
	d.batch(ctx, b)
	src.Ack(b)
	d.armRelease()
}

// armRelease sets the release timer to the earliest held knock step.
func (d *daemon) armRelease() {
	at, ok := d.feed.reorder.next()
	if !ok {
		if d.release != nil {
			d.release.Stop()
		}
		d.releaseC = nil
		return
	}
	wait := at.Sub(d.now())
	if d.release == nil {
		d.release = time.NewTimer(wait)
	} else {
		d.release.Reset(wait)
	}
	d.releaseC = d.release.C
}

// batch handles the lines of one read of a log. Every line counts as read;
// only the lines examined (see feed.batch) are parsed, and count as parsed
// or skipped.
func (d *daemon) batch(ctx context.Context, b weblog.Batch) {
	rec := d.web
	rec.LinesRead(b.Source, b.Len())
	d.feed.batch(b.Source, b.Text, d.now(), func(x *examined) {
		if x.err != nil {
			reason := weblog.ReasonOf(x.err)
			rec.LineSkipped(b.Source, string(reason))
			d.inputs.skipped(b.Source, reason, x.line, d.cfg.Log.Format)
			if reason == weblog.ReasonLoopback && d.tracker.MayKnock(x.req.Path) && !d.warned {
				d.warned = true
				d.log.Warn("a knock path was requested from a loopback address: a reverse proxy hides the real clients; list it in log.trusted_proxies and log $http_x_forwarded_for",
					keyFile, b.Source, keyIP, x.req.Client)
			}
			return
		}
		rec.LineParsed(b.Source)
		d.inputs.parsed(b.Source)
		if x.req.Time.After(d.newest) {
			d.newest = x.req.Time
		}
		d.handle(ctx, x.events)
	})
}

// handle records and carries out the events of the tracker.
func (d *daemon) handle(ctx context.Context, evs []knock.Event) {
	if len(evs) == 0 {
		return
	}
	d.stats.clients.Store(int64(d.tracker.Clients()))
	d.stats.evicted.Store(d.tracker.Evicted())
	for i := range evs {
		d.web.Event(evs[i])
		d.event(ctx, &evs[i])
	}
}

// sweep forgets the knock progress, failures, lockouts and grants that have
// expired, reporting the timeouts (and any lockout they cause) that would
// otherwise wait for the client's next request, or for eviction.
func (d *daemon) sweep(ctx context.Context, now time.Time) {
	at := sweepTime(now, d.newest, d.caughtUp())
	d.events = d.tracker.Expire(at, d.events[:0])
	d.handle(ctx, d.events)
	d.stats.clients.Store(int64(d.tracker.Clients()))
	d.log.Debug("expired knock progress swept", "at", at, "events", len(d.events), "clients", d.tracker.Clients())
}

// sweepTime is the time up to which a sweep at now expires progress: the
// host's clock, less sweepLag; while the logs have not been read to their
// end (after a restart, say), no later than the newest line read either,
// less sweepLag too. Lines still to come are no older than that, so the
// events are those a later request would have caused anyway.
func sweepTime(now, newest time.Time, caughtUp bool) time.Time {
	if !caughtUp && newest.Before(now) {
		now = newest
	}
	return now.Add(-sweepLag)
}

func (d *daemon) event(ctx context.Context, e *knock.Event) {
	attrs := []any{keyIP, e.Client, keySequence, e.Sequence}
	if e.Input != "" {
		attrs = append(attrs, keyInput, e.Input)
	}
	switch e.Kind {
	case knock.KindStep:
		d.log.Debug("step", append(attrs, keyStep, e.Step)...)
	case knock.KindReset, knock.KindTimeout:
		d.log.Debug(e.Kind.String(), attrs...)
	case knock.KindLockout:
		d.log.Warn("lockout", append(attrs, keyUntil, e.Until)...)
		d.hookLockout(e)
	case knock.KindReused:
		d.reused(e, attrs)
	case knock.KindDenied:
		d.log.Warn("knock denied by the sequence's policy", append(attrs, keyReason, e.Reason)...)
	case knock.KindClose:
		d.close(ctx, e, attrs)
	case knock.KindGrant:
		if e.OneTime {
			if err := d.markUsed(e); err != nil {
				d.log.Error("grant refused: the one-time step it used could not be saved, and could open again after a restart",
					append(attrs, keyUntil, e.Until, keyErr, err)...)
				return
			}
		}
		if d.publishes() {
			d.publish(e, attrs)
			return
		}
		g := firewall.Grant{IP: e.Source.Addr(), Bits: grantBits(e.Source), Sequence: e.Sequence, Knocked: e.Time, Until: e.Until, Ports: d.ports(e.Sequence)}
		if g.Bits != 0 {
			attrs = append(attrs, keySource, e.Source)
		}
		applied, err := d.fw.Grant(ctx, g)
		if err == nil {
			attrs = append(attrs, keyUntil, applied.Until, keyPorts, e.Ports)
		} else {
			attrs = append(attrs, keyUntil, e.Until, keyPorts, e.Ports)
		}
		switch {
		case errors.Is(err, firewall.ErrExpired):
			d.log.Info("grant already over, not applied", attrs...)
		case errors.Is(err, firewall.ErrRevoked):
			d.log.Info("grant not applied: the address was revoked after this knock", attrs...)
		case errors.Is(err, firewall.ErrPending):
			d.log.Warn("grant not applied yet; retrying until its window ends", append(attrs, keyErr, err)...)
		case errors.Is(err, firewall.ErrCapped):
			// The firewall warns once per cap reached: a flood of knocks
			// must not flood the log.
			d.log.Debug("grant refused by a cap", append(attrs, keyErr, err)...)
		case err != nil:
			d.log.Error("grant failed", append(attrs, keyErr, err)...)
		default:
			d.log.Info("grant", attrs...)
			d.hookGrant(applied)
		}
	}
}

// ports returns the firewall ports of the named sequence.
func (d *daemon) ports(sequence string) []firewall.Port {
	i := slices.IndexFunc(d.cfg.Sequences, func(s config.Sequence) bool { return s.Name == sequence })
	if i < 0 {
		return nil
	}
	return firewallPorts(d.cfg.Sequences[i].Ports)
}

func firewallPorts(ps []config.Port) []firewall.Port {
	out := make([]firewall.Port, len(ps))
	for i, p := range ps {
		out[i] = firewall.Port{Proto: p.Proto, Number: p.Number}
	}
	return out
}

func firewallOptions(cfg *config.Config, logger *slog.Logger) firewall.Options {
	var ports []firewall.Port
	seqs := make([]firewall.Sequence, 0, len(cfg.Sequences))
	for _, s := range cfg.Sequences {
		sp := firewallPorts(s.Ports)
		for _, p := range sp {
			if !slices.Contains(ports, p) {
				ports = append(ports, p)
			}
		}
		seqs = append(seqs, firewall.Sequence{Name: s.Name, Ports: sp, Window: s.Window, CloseOnConnect: s.CloseOnConnect})
	}
	backend := cfg.Firewall.Backend
	if cfg.Fleet.Role == fleet.RoleDetector {
		backend = "dry-run" // a detector's grants open on the enforcers
	}
	return firewall.Options{
		Backend: backend, Chain: cfg.Firewall.Chain, Table: cfg.Firewall.Table, Hook: cfg.Firewall.Hook,
		Protect: cfg.Firewall.Protect, AlwaysAllow: cfg.Firewall.AlwaysAllow, Ports: ports,
		IPv6Off: !cfg.Firewall.IPv6, Sequences: seqs,
		MaxGrants: cfg.Firewall.MaxGrants, MaxGrantsPerSequence: cfg.Firewall.MaxGrantsPerSequence,
		MaxGrantsPerIPv4Net: cfg.Firewall.MaxGrantsPerIPv4Net, MaxGrantsPerIPv6Net: cfg.Firewall.MaxGrantsPerIPv6Net,
		CheckInterval: cfg.Firewall.CheckInterval, StateDir: cfg.StateDir, Logger: logger,
	}
}

func (d *daemon) followOptions(cfg *config.Config) weblog.FollowOptions {
	return weblog.FollowOptions{Paths: cfg.Log.Paths, Start: cfg.Log.Start, StateDir: cfg.StateDir, Logger: d.log,
		OnRotate: func(path string) {
			if srv := d.webp.Load(); srv != nil {
				srv.Rotation(path)
			}
		}}
}
