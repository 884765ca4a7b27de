package main

// This file ends grants from the close page, and tells the knock core
// which grants the firewall holds, so that the close page can end them.

import (
	"context"
	"errors"
	"net/netip"

	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/knock"
)

// Attribute key of the sessions a close ended.
const keySessions = "sessions"

// grantBits is the firewall's Bits for a grant to src: 0 for an address.
func grantBits(src netip.Prefix) int {
	if src.Bits() == src.Addr().BitLen() {
		return 0
	}
	return src.Bits()
}

// close ends the grant whose client requested its sequence's close page,
// and with close_kills_sessions its established sessions too.
func (d *daemon) close(ctx context.Context, e *knock.Event, attrs []any) {
	attrs = append(attrs, keySource, firewall.FormatSource(e.Source))
	d.revokeFleet(e.Source, e.Sequence)
	ended, err := d.fw.RevokeSequence(ctx, e.Source, e.Sequence, firewall.ReasonClosed)
	switch {
	case errors.Is(err, firewall.ErrNoGrant):
		d.log.Info("close page requested, but the grant had ended already", attrs...)
		return
	case err != nil && len(ended) == 0:
		d.log.Error("close failed", append(attrs, keyErr, err)...)
		return
	case err != nil:
		d.log.Warn("grant closed; a rule will be deleted on retry", append(attrs, keyErr, err)...)
	default:
		d.log.Info("grant closed by its client", attrs...)
	}
	s := d.sequence(e.Sequence)
	if s == nil || !s.CloseKillsSessions {
		return
	}
	for _, g := range ended {
		n, err := d.fw.KillSessions(ctx, g.Source(), g.Ports)
		if err != nil {
			d.log.Error("cannot end the sessions of a closed grant", append(attrs, keyErr, err)...)
			continue
		}
		d.log.Info("sessions of a closed grant ended", append(attrs, keySessions, n)...)
	}
}

// holdGrants tells the tracker which grants the firewall holds (after a
// restart, or an admin's grant), so that a close page can end them.
func (d *daemon) holdGrants(gs ...firewall.Grant) {
	now := d.now()
	for _, g := range gs {
		d.tracker.HoldGrant(g.Sequence, g.Source(), g.Until, now)
	}
}
