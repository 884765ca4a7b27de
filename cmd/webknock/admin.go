package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/knock"
	"github.com/webknock/webknock/web"
)

// The daemon answers the admin socket's writes (web.Admin).
var _ web.Admin = (*daemon)(nil)

// Grant opens the ports of sequence (the first one when empty) to ip for
// d, at most the sequence's window: the admin's way to let someone in by
// hand while the daemon runs.
func (d *daemon) Grant(ctx context.Context, ip netip.Addr, sequence string, dur time.Duration) (firewall.Grant, error) {
	cfg := d.shared.Load()
	i := 0
	if sequence != "" {
		i = -1
		for j, s := range cfg.Sequences {
			if s.Name == sequence {
				i = j
			}
		}
		if i < 0 {
			return firewall.Grant{}, fmt.Errorf("no sequence %q in %s: %w", sequence, cfg.File, web.ErrUnknownSequence)
		}
	}
	s := cfg.Sequences[i]
	if dur <= 0 {
		dur = s.Window
	}
	if dur > s.Window {
		return firewall.Grant{}, fmt.Errorf("%s is longer than the window of sequence %q (%s); for lasting access list the address in firewall.always_allow and reload: %w",
			dur, s.Name, s.Window, web.ErrBadRequest)
	}
	now := d.now()
	g, err := d.fw.Grant(ctx, firewall.Grant{IP: ip.Unmap(), Sequence: s.Name, Ports: firewallPorts(s.Ports), Knocked: now, Until: now.Add(dur)})
	if err == nil {
		d.log.Info("grant by the admin", keyIP, g.IP, keySequence, g.Sequence, keyUntil, g.Until)
		d.hookGrant(g)
		// The close page ends it as it would a knock's (a cancelled
		// context only skips that).
		_ = d.inLoop(ctx, func() { d.holdGrants(g) })
	}
	return g, err
}

// Lockouts lists the addresses locked out now.
func (d *daemon) Lockouts() []knock.Locked {
	var out []knock.Locked
	d.inLoop(context.Background(), func() { out = d.tracker.Lockouts(d.now()) })
	return out
}

// Unlock ends ip's lockout.
func (d *daemon) Unlock(ctx context.Context, ip netip.Addr) (bool, error) {
	var ok bool
	if err := d.inLoop(ctx, func() { ok = d.tracker.Unlock(ip) }); err != nil {
		return false, err
	}
	if ok {
		d.log.Info("lockout cleared by the admin", keyIP, ip.Unmap())
	}
	return ok, nil
}

// inLoop runs fn on the daemon's loop goroutine, which alone touches the
// tracker, and waits for it.
func (d *daemon) inLoop(ctx context.Context, fn func()) error {
	done := make(chan struct{})
	select {
	case d.admin <- func() { fn(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	}
	<-done
	return nil
}

// problems says why the daemon's inputs are not healthy, for /healthz.
func (d *daemon) problems() []string {
	var out []string
	if f := d.follower.Load(); f != nil {
		for _, m := range f.Missing() {
			out = append(out, fmt.Sprintf("log %s does not exist; waiting for it", m))
		}
	}
	return append(out, d.inputs.problems()...)
}
