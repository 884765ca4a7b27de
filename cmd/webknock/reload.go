package main

import (
	"context"
	"reflect"
	"slices"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/web"
	"github.com/webknock/webknock/weblog"
)

// reload swaps in a new configuration only when all of it applies: what
// can change (sequences, lockout, log paths and format, protect, web
// listener, socket and token) changes; the knocks in progress and the
// lockouts of unchanged sequences are kept; grants of removed sequences end.
// The firewall backend, chain, table, hook and state_dir, and the fleet
// settings, change only with a restart.
func (d *daemon) reload(ctx context.Context, load func() (*config.Config, error)) {
	ok := false
	defer func() { d.web.Reload(ok) }()
	cfg, err := load()
	if err != nil {
		d.log.Error("reload refused; keeping the running configuration", keyErr, err)
		return
	}
	old := d.cfg
	if cfg.Firewall.Backend != old.Firewall.Backend || cfg.Firewall.Chain != old.Firewall.Chain || cfg.Firewall.Table != old.Firewall.Table ||
		cfg.Firewall.Hook != old.Firewall.Hook || cfg.StateDir != old.StateDir || cfg.Firewall.IPv6 != old.Firewall.IPv6 {
		d.log.Error("reload refused: firewall.backend, chain, table, hook, ipv6 and state_dir change only with a restart; keeping the running configuration")
		return
	}
	if !reflect.DeepEqual(cfg.Fleet, old.Fleet) {
		d.log.Error("reload refused: the fleet settings change only with a restart; keeping the running configuration")
		return
	}
	// Everything that can fail comes first, so that a refusal changes nothing.
	if !d.hooksReloadable(cfg) {
		return
	}
	var lns *web.Listeners
	if cfg.Web.Listen != old.Web.Listen || cfg.Web.Socket != old.Web.Socket {
		if lns, err = d.web.Bind(cfg.Web.Listen, cfg.Web.Socket); err != nil {
			d.log.Error("reload refused: web; keeping the running configuration", keyErr, err)
			return
		}
	}
	prev := d.feed
	if err := d.setCore(cfg); err != nil {
		d.log.Error("reload refused; keeping the running configuration", keyErr, err)
		lns.Close()
		return
	}
	if err := d.fw.Reconfigure(ctx, firewallOptions(cfg, d.log)); err != nil {
		d.feed = prev
		d.log.Error("reload refused: firewall; keeping the running configuration", keyErr, err)
		lns.Close()
		return
	}
	d.tracker.Adopt(prev.tracker)
	d.reorder.adopt(prev.reorder)
	if lns != nil {
		d.web.Rebind(lns)
	}
	d.web.SetTokenFile(cfg.Web.TokenFile) // logs why when it cannot be used
	if !slices.Equal(cfg.Log.Paths, old.Log.Paths) && readsLogs(cfg) {
		// Close first: it saves the positions the new follower resumes from.
		if f := d.follower.Load(); f != nil {
			f.Close()
		}
		next, err := d.follow(ctx, cfg)
		if err != nil {
			d.log.Error("reload: cannot follow the new log paths; following the old ones", keyErr, err)
			cfg.Log.Paths = old.Log.Paths
			if next, err = d.follow(ctx, old); err != nil {
				d.log.Error("cannot follow the old log paths either", keyErr, err)
			}
		}
		d.follower.Store(next)
		d.inputs.forget()
	}
	if !reflect.DeepEqual(cfg.Log.Syslog, old.Log.Syslog) {
		d.log.Warn("log.syslog changes only with a restart; the syslog listeners keep their settings")
	}
	d.reloadHooks(cfg)
	d.cfg = cfg
	d.shared.Store(cfg)
	ok = true
	for _, w := range cfg.Warnings {
		d.log.Warn("configuration: " + w.Error())
	}
	d.log.Info("configuration reloaded", "sequences", len(cfg.Sequences))
}

// follow follows cfg's log files; none (nil) when it has none.
func (d *daemon) follow(ctx context.Context, cfg *config.Config) (*weblog.Follower, error) {
	if len(cfg.Log.Paths) == 0 {
		return nil, nil
	}
	return weblog.Follow(ctx, d.followOptions(cfg))
}
