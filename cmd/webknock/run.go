package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/firewall"
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
	keyReason   = "reason"
	keyErr      = "err"
	keyStep     = "step"
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
	cfg, err := loadConfig(env, fs)
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
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := func() (*config.Config, error) { return loadConfig(env, fs) }
	return serve(ctx, cfg, logger, hup, reload)
}

// daemon is the running state of `webknock run`: the one place where log
// lines become hits and grants become firewall rules.
type daemon struct {
	cfg      *config.Config
	log      *slog.Logger
	parser   *weblog.Parser
	tracker  *knock.Tracker
	paths    map[string]bool
	fw       *firewall.Firewall
	follower *weblog.Follower
	events   []knock.Event
	warned   bool        // about knocks from loopback
	web      *web.Server // nil when web.listen is empty
	stats    trackerStats
}

// trackerStats lets the web server read what the daemon's goroutine alone
// may touch (the tracker's counters, whether logs are followed) without a
// lock on every line.
type trackerStats struct {
	clients atomic.Int64
	evicted atomic.Uint64
	follow  atomic.Bool
}

func (s *trackerStats) Clients() int    { return int(s.clients.Load()) }
func (s *trackerStats) Evicted() uint64 { return s.evicted.Load() }

// recorder returns where the daemon reports lines and events: the web
// server, or nothing.
func (d *daemon) recorder() recorder {
	if d.web == nil {
		return noRecorder{}
	}
	return d.web
}

type recorder interface {
	LineRead(file string)
	LineParsed(file string)
	LineSkipped(file, reason string)
	Event(e knock.Event)
	Reload(ok bool)
}

type noRecorder struct{}

func (noRecorder) LineRead(string)            {}
func (noRecorder) LineParsed(string)          {}
func (noRecorder) LineSkipped(string, string) {}
func (noRecorder) Event(knock.Event)          {}
func (noRecorder) Reload(bool)                {}

// serve runs the daemon until ctx ends. A value on hup reloads the
// configuration with reload; a configuration that does not load or apply is
// refused and the running one kept.
func serve(ctx context.Context, cfg *config.Config, logger *slog.Logger, hup <-chan os.Signal, reload func() (*config.Config, error)) error {
	d := &daemon{cfg: cfg, log: logger}
	if err := d.setCore(cfg); err != nil {
		return err
	}
	fw, err := firewall.Open(ctx, firewallOptions(cfg, logger))
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	d.fw = fw
	defer d.fw.Close()
	if cfg.Web.Listen != "" {
		// Made before the follower, which reports rotations to it.
		srv, err := web.New(web.Options{Listen: cfg.Web.Listen, TokenFile: cfg.Web.TokenFile, Logger: logger,
			Following: d.stats.follow.Load, Tracker: &d.stats}, fw)
		if err != nil {
			return fmt.Errorf("web: %w", err)
		}
		d.web = srv
	}
	if d.follower, err = weblog.Follow(ctx, d.followOptions(cfg)); err != nil {
		return fmt.Errorf("follow logs: %w", err)
	}
	d.stats.follow.Store(true)
	defer func() { d.stats.follow.Store(false); d.follower.Close() }()
	if d.web != nil {
		webDone := make(chan error, 1)
		go func() { webDone <- d.web.Serve(ctx) }()
		defer func() {
			if err := <-webDone; err != nil {
				logger.Error("web server", keyErr, err)
			}
		}()
	}
	logger.Info("webknock running", "logs", cfg.Log.Paths, "sequences", len(cfg.Sequences),
		"backend", cfg.Firewall.Backend, "chain", cfg.Firewall.Chain)
	for {
		select {
		case <-ctx.Done():
			logger.Info("webknock stopping; firewall rules stay in place")
			return nil
		case <-hup:
			d.reload(ctx, reload)
		case line, ok := <-d.follower.Lines():
			if !ok {
				return errors.New("log follower stopped")
			}
			d.line(ctx, line)
			d.follower.Ack(line)
		}
	}
}

// setCore builds the parser and the knock tracker of cfg.
func (d *daemon) setCore(cfg *config.Config) error {
	parser, err := weblog.NewParser(cfg.Log.Format, cfg.Log.TrustedProxies)
	if err != nil {
		return err
	}
	tracker, err := knock.New(knockConfig(cfg))
	if err != nil {
		return err
	}
	d.parser, d.tracker = parser, tracker
	d.paths = map[string]bool{}
	for _, p := range tracker.Paths() {
		d.paths[p] = true
	}
	return nil
}

func (d *daemon) line(ctx context.Context, l weblog.Line) {
	rec := d.recorder()
	rec.LineRead(l.File)
	r, err := d.parser.Parse(l.Text)
	if err != nil {
		reason := weblog.ReasonFormat
		var pe *weblog.ParseError
		if errors.As(err, &pe) {
			reason = pe.Reason
		}
		rec.LineSkipped(l.File, string(reason))
		if reason == weblog.ReasonLoopback && d.paths[r.Path] && !d.warned {
			d.warned = true
			d.log.Warn("a knock path was requested from a loopback address: a reverse proxy hides the real clients; list it in log.trusted_proxies and log $http_x_forwarded_for",
				keyFile, l.File, keyIP, r.Client)
		}
		return
	}
	rec.LineParsed(l.File)
	d.events = d.tracker.Apply(hitOf(&r), d.events[:0])
	if len(d.events) > 0 {
		d.stats.clients.Store(int64(d.tracker.Clients()))
		d.stats.evicted.Store(d.tracker.Evicted())
	}
	for i := range d.events {
		rec.Event(d.events[i])
		d.event(ctx, &d.events[i])
	}
}

func (d *daemon) event(ctx context.Context, e *knock.Event) {
	attrs := []any{keyIP, e.Client, keySequence, e.Sequence}
	switch e.Kind {
	case knock.KindStep:
		d.log.Debug("step", append(attrs, keyStep, e.Step)...)
	case knock.KindReset, knock.KindTimeout:
		d.log.Debug(e.Kind.String(), attrs...)
	case knock.KindLockout:
		d.log.Warn("lockout", append(attrs, keyUntil, e.Until)...)
	case knock.KindGrant:
		g := firewall.Grant{IP: e.Client, Sequence: e.Sequence, Until: e.Until, Ports: d.ports(e.Sequence)}
		attrs = append(attrs, keyUntil, e.Until, keyPorts, e.Ports)
		switch err := d.fw.Grant(ctx, g); {
		case errors.Is(err, firewall.ErrExpired):
			d.log.Info("grant already over, not applied", attrs...)
		case err != nil:
			d.log.Error("grant failed", append(attrs, keyErr, err)...)
		default:
			d.log.Info("grant", attrs...)
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

// reload swaps in a new configuration only when it loads and applies.
func (d *daemon) reload(ctx context.Context, load func() (*config.Config, error)) {
	ok := false
	defer func() { d.recorder().Reload(ok) }()
	cfg, err := load()
	if err != nil {
		d.log.Error("reload refused; keeping the running configuration", keyErr, err)
		return
	}
	old := d.cfg
	if cfg.Firewall.Backend != old.Firewall.Backend || cfg.Firewall.Chain != old.Firewall.Chain ||
		cfg.Firewall.Hook != old.Firewall.Hook || cfg.StateDir != old.StateDir {
		d.log.Error("reload refused: firewall.backend, chain, hook and state_dir change only with a restart; keeping the running configuration")
		return
	}
	parser, tracker, paths := d.parser, d.tracker, d.paths
	if err := d.setCore(cfg); err != nil {
		d.log.Error("reload refused; keeping the running configuration", keyErr, err)
		return
	}
	if err := d.fw.Reconfigure(ctx, firewallOptions(cfg, d.log)); err != nil {
		d.parser, d.tracker, d.paths = parser, tracker, paths
		d.log.Error("reload refused: firewall; keeping the running configuration", keyErr, err)
		return
	}
	if !slices.Equal(cfg.Log.Paths, old.Log.Paths) {
		// Close first: it saves the positions the new follower resumes from.
		d.follower.Close()
		next, err := weblog.Follow(ctx, d.followOptions(cfg))
		if err != nil {
			d.log.Error("reload: cannot follow the new log paths; following the old ones", keyErr, err)
			cfg.Log.Paths = old.Log.Paths
			if next, err = weblog.Follow(ctx, d.followOptions(old)); err != nil {
				d.log.Error("cannot follow the old log paths either", keyErr, err)
			}
		}
		if next != nil {
			d.follower = next
		}
	}
	d.cfg = cfg
	ok = true
	d.log.Info("configuration reloaded", "sequences", len(cfg.Sequences))
}

func firewallOptions(cfg *config.Config, logger *slog.Logger) firewall.Options {
	var ports []firewall.Port
	for _, s := range cfg.Sequences {
		for _, p := range firewallPorts(s.Ports) {
			if !slices.Contains(ports, p) {
				ports = append(ports, p)
			}
		}
	}
	return firewall.Options{
		Backend: cfg.Firewall.Backend, Chain: cfg.Firewall.Chain, Hook: cfg.Firewall.Hook,
		Protect: cfg.Firewall.Protect, AlwaysAllow: cfg.Firewall.AlwaysAllow, Ports: ports,
		StateDir: cfg.StateDir, Logger: logger,
	}
}

func (d *daemon) followOptions(cfg *config.Config) weblog.FollowOptions {
	return weblog.FollowOptions{Paths: cfg.Log.Paths, Start: cfg.Log.Start, StateDir: cfg.StateDir, Logger: d.log,
		OnRotate: func(path string) {
			// d.web is set before any follower starts and never changes.
			if d.web != nil {
				d.web.Rotation(path)
			}
		}}
}

// runFlush is `webknock flush`: remove our chains and jumps.
func runFlush(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) > 0 {
		return usagef(env, fs, "unexpected argument %q", args[0])
	}
	cfg, err := loadConfig(env, fs)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(env.stderr, nil))
	if err := firewall.Flush(ctx, firewallOptions(cfg, logger)); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	_, err = fmt.Fprintf(env.stdout, "removed chain %s and its jump from %s (IPv4 and IPv6)\n", cfg.Firewall.Chain, cfg.Firewall.Hook)
	return err
}

// runStatus is `webknock status`: the live grants of a running daemon.
func runStatus(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) > 0 {
		return usagef(env, fs, "unexpected argument %q", args[0])
	}
	_, base, err := webBase(env, fs)
	if err != nil {
		return err
	}
	grants, err := web.FetchGrants(ctx, base)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if len(grants) == 0 {
		_, err = fmt.Fprintln(env.stdout, "no active grants")
		return err
	}
	fmt.Fprintf(env.stdout, "%-39s  %-10s  %-20s  %-9s  %s\n", "IP", "SEQUENCE", "UNTIL", "LEFT", "PORTS")
	for _, g := range grants {
		ports := make([]string, len(g.Ports))
		for i, p := range g.Ports {
			ports[i] = p.String()
		}
		left := time.Until(g.Until).Round(time.Second)
		fmt.Fprintf(env.stdout, "%-39s  %-10s  %-20s  %-9s  %s\n", g.IP, g.Sequence, rfc3339(g.Until), left, strings.Join(ports, ","))
	}
	return nil
}

// runRevoke is `webknock revoke IP`: end an address's grants now.
func runRevoke(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) != 1 {
		return usagef(env, fs, "name exactly one IP address")
	}
	ip, err := netip.ParseAddr(args[0])
	if err != nil {
		return usagef(env, fs, "%q is not an IP address", args[0])
	}
	cfg, base, err := webBase(env, fs)
	if err != nil {
		return err
	}
	token, err := web.ReadToken(cfg.Web.TokenFile)
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	if err := web.RevokeGrant(ctx, base, token, ip.Unmap()); err != nil {
		return fmt.Errorf("revoke %s: %w", ip, err)
	}
	_, err = fmt.Fprintf(env.stdout, "revoked %s\n", ip.Unmap())
	return err
}

// webBase loads the configuration and returns the daemon's web address.
func webBase(env *environment, fs *pflag.FlagSet) (*config.Config, string, error) {
	cfg, err := loadConfig(env, fs)
	if err != nil {
		return nil, "", err
	}
	if cfg.Web.Listen == "" {
		return nil, "", fmt.Errorf("web.listen is empty in %s: the daemon serves no API", cfg.File)
	}
	base, err := web.BaseURL(cfg.Web.Listen)
	if err != nil {
		return nil, "", fmt.Errorf("web.listen: %w", err)
	}
	return cfg, base, nil
}
