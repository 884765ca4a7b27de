package main

// This file wires the hooks: the commands run for grants, their ends and
// lockouts (internal/hook), and their checks for check and run.

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/internal/hook"
	"github.com/webknock/webknock/knock"
)

// hookConfig is the runner's part of cfg.
func hookConfig(cfg *config.Config) hook.Config {
	h := cfg.Hooks
	return hook.Config{OnGrant: h.OnGrant, OnEnd: h.OnEnd, OnLockout: h.OnLockout, Timeout: h.Timeout, MaxRunning: h.MaxRunning}
}

// hookCommands names each hook's command by its configuration key.
func hookCommands(cfg *config.Config) []struct {
	key  string
	argv []string
} {
	return []struct {
		key  string
		argv []string
	}{{"on_grant", cfg.Hooks.OnGrant}, {"on_end", cfg.Hooks.OnEnd}, {"on_lockout", cfg.Hooks.OnLockout}}
}

// checkHooks is the hooks' part of checkWith: the runner's rules for the
// placeholders of each command and for its program, which run applies at
// the start, at a reload and before every run.
func checkHooks(cfg *config.Config) (errs []*config.FieldError) {
	for _, c := range hookCommands(cfg) {
		if len(c.argv) == 0 || !filepath.IsAbs(c.argv[0]) {
			continue // none, or a relative program that Load reported
		}
		programOK := true
		if _, err := hook.Parse(c.argv); err != nil {
			for _, err := range unjoin(err) {
				field := "hooks." + c.key
				if ae := (*hook.ArgError)(nil); errors.As(err, &ae) {
					field = fmt.Sprintf("hooks.%s[%d]", c.key, ae.Arg)
					programOK = programOK && ae.Arg != 0
					err = ae.Err
				}
				errs = append(errs, &config.FieldError{Field: field, Message: err.Error()})
			}
		}
		if !programOK {
			continue
		}
		if err := hook.CheckProgram(c.argv[0]); err != nil {
			errs = append(errs, &config.FieldError{Field: "hooks." + c.key + "[0]", Message: err.Error()})
		}
	}
	return errs
}

// startHooks starts the runner of cfg's hooks; serve closes it last.
func (d *daemon) startHooks(cfg *config.Config) error {
	r, err := hook.New(hookConfig(cfg), d.log)
	if err != nil {
		return fmt.Errorf("hooks: %w", err)
	}
	d.hooks = r
	return nil
}

// withHooks has the firewall tell every end of a grant to on_end.
func (d *daemon) withHooks(o firewall.Options) firewall.Options {
	o.OnEnd = func(g firewall.Grant, reason string) { d.hooks.Run(hook.OnEnd, grantVars(reason, g)) }
	return o
}

// hooksReloadable reports whether cfg's hooks can replace the running ones;
// when not, it logs why.
func (d *daemon) hooksReloadable(cfg *config.Config) bool {
	if err := hook.CheckConfig(hookConfig(cfg)); err != nil {
		d.log.Error("reload refused: hooks; keeping the running configuration", keyErr, err)
		return false
	}
	return true
}

// reloadHooks applies cfg's hooks to the events from now on.
func (d *daemon) reloadHooks(cfg *config.Config) {
	if err := d.hooks.Reconfigure(hookConfig(cfg)); err != nil {
		d.log.Error("reload: hooks; keeping the running ones", keyErr, err)
	}
}

// hookGrant runs on_grant for a grant as the firewall applied it.
func (d *daemon) hookGrant(g firewall.Grant) {
	d.hooks.Run(hook.OnGrant, grantVars(hook.EventGrant, g))
}

// hookLockout runs on_lockout for a lockout event.
func (d *daemon) hookLockout(e *knock.Event) {
	ip := e.Client.Unmap()
	d.hooks.Run(hook.OnLockout, hook.Vars{Event: hook.EventLockout, IP: netip.PrefixFrom(ip, ip.BitLen()),
		Sequence: e.Sequence, Until: e.Until})
}

func grantVars(event string, g firewall.Grant) hook.Vars {
	ports := make([]string, len(g.Ports))
	for i, p := range g.Ports {
		ports[i] = p.String()
	}
	return hook.Vars{Event: event, IP: g.Source(), Sequence: g.Sequence, Until: g.Until, Ports: ports}
}
