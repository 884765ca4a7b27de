package main

// This file holds what the daemon does for one-time sequences: tell the
// tracker which time steps have granted, persist a step before its grant
// is applied, and report reused paths.

import (
	"maps"
	"net/netip"
	"time"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/knock"
)

const (
	// staleLine is how old a log line may be and still be live traffic;
	// a reused path in an older line is a log read again, not a leak.
	staleLine = 10 * time.Minute
	// maxReusedWarned bounds the memory of reuses already warned about.
	maxReusedWarned = 1024
)

// reusedKey is one warned reuse: a flood of the same request warns once.
type reusedKey struct {
	sequence string
	client   netip.Addr
	step     int64
}

// applyUsed tells the tracker of cfg which one-time steps have granted.
func (d *daemon) applyUsed(cfg *config.Config) {
	for _, s := range cfg.Sequences {
		if u, ok := d.used[s.Name]; ok && s.OneTime != nil {
			d.tracker.SetUsed(s.Name, u.stepFor(s.OneTime.Period))
		}
	}
}

// markUsed persists the time step of e, a one-time grant, before the
// grant is applied: if it cannot be saved, the grant must not happen, or a
// restart could let the same URLs open again.
func (d *daemon) markUsed(e *knock.Event) error {
	period := time.Minute
	if s := d.sequence(e.Sequence); s != nil && s.OneTime != nil {
		period = s.OneTime.Period
	}
	next := maps.Clone(d.used)
	next[e.Sequence] = usedStep{Step: e.TimeStep, Period: int64(period / time.Second), Client: e.Client}
	if err := saveUsed(d.cfg.StateDir, next); err != nil {
		return err
	}
	d.used = next
	return nil
}

// reused logs a one-time path of a used step: a warning when it is live
// traffic from another address than the one the step opened for.
func (d *daemon) reused(e *knock.Event, attrs []any) {
	attrs = append(attrs, keyTimeStep, e.TimeStep)
	s := d.sequence(e.Sequence)
	if u, ok := d.used[e.Sequence]; ok && s != nil && s.OneTime != nil &&
		u.Client == e.Client && u.stepFor(s.OneTime.Period) == e.TimeStep {
		d.log.Info("one-time path requested again by the address it opened for; it opened nothing", attrs...)
		return
	}
	if d.now().Sub(e.Time) > staleLine {
		d.log.Info("one-time path of a used time step in an old log line; it opened nothing", attrs...)
		return
	}
	k := reusedKey{e.Sequence, e.Client, e.TimeStep}
	if d.reusedWarned[k] {
		return
	}
	if len(d.reusedWarned) >= maxReusedWarned {
		clear(d.reusedWarned)
	}
	d.reusedWarned[k] = true
	d.log.Warn("one-time path reused: the URL leaked (a proxy's log, browser history, a link scanner); it opened nothing", attrs...)
}

// sequence returns the running configuration's sequence name, or nil.
func (d *daemon) sequence(name string) *config.Sequence {
	for i := range d.cfg.Sequences {
		if d.cfg.Sequences[i].Name == name {
			return &d.cfg.Sequences[i]
		}
	}
	return nil
}
