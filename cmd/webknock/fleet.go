package main

// This file joins the daemon to a fleet (fleet.role): a detector sends its
// grants to the bus instead of its own firewall; an enforcer applies the
// bus's grants to its firewall.

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/fleet"
	"github.com/webknock/webknock/knock"
)

// fleetSide is the daemon's part in a fleet.
type fleetSide struct {
	client *fleet.Client
	pub    *fleet.Publisher // detectors
	enf    *fleet.Enforcer  // enforcers
	stop   context.CancelFunc
	done   chan struct{}
}

// readsLogs reports whether cfg's daemon reads logs: an enforcer alone
// takes its grants from the bus.
func readsLogs(cfg *config.Config) bool { return cfg.Fleet.Role != fleet.RoleEnforcer }

// fleetKeys reads the keys of cfg's role: the signing key of a detector,
// the trusted keys of an enforcer.
func fleetKeys(fl config.Fleet) (signing ed25519.PrivateKey, trusted []ed25519.PublicKey, errs map[string]error) {
	errs = map[string]error{}
	if fleet.IsDetector(fl.Role) && fl.SigningKeyFile != "" {
		k, err := fleet.ReadSigningKey(fl.SigningKeyFile)
		if err != nil {
			errs["fleet.signing_key_file"] = err
		}
		signing = k
	}
	for i, s := range fl.TrustedKeys {
		k, err := fleet.ParseTrustedKey(s)
		if err != nil {
			errs[fmt.Sprintf("fleet.trusted_keys[%d]", i)] = err
			continue
		}
		trusted = append(trusted, k)
	}
	return signing, trusted, errs
}

// checkFleet is the fleet's part of checkConfig.
func checkFleet(cfg *config.Config) (errs []*config.FieldError) {
	fl := cfg.Fleet
	if fl.Role == "" {
		return nil
	}
	bad := func(field string, err error) {
		errs = append(errs, &config.FieldError{Field: field, Message: err.Error()})
	}
	if err := fleet.CheckServers(fl.Servers); err != nil {
		bad("fleet.servers", err)
	}
	if err := fleet.CheckGroup(fl.Group); err != nil {
		bad("fleet.group", err)
	}
	for _, f := range []struct{ field, path, what string }{
		{"fleet.credentials_file", fl.CredentialsFile, "credentials file"},
		{"fleet.tls.key_file", fl.TLS.KeyFile, "TLS key file"},
	} {
		if f.path == "" {
			continue
		}
		if err := fleet.CheckPrivateFile(f.path, f.what); err != nil {
			bad(f.field, err)
		}
	}
	for field, path := range map[string]string{"fleet.tls.ca_file": fl.TLS.CAFile, "fleet.tls.cert_file": fl.TLS.CertFile} {
		if _, err := os.Stat(path); path != "" && err != nil {
			bad(field, err)
		}
	}
	_, _, kerrs := fleetKeys(fl)
	for field, err := range kerrs {
		bad(field, err)
	}
	slices.SortFunc(errs, func(a, b *config.FieldError) int { return strings.Compare(a.Field, b.Field) })
	return errs
}

// startFleet connects to the bus and starts the role's parts. The bus
// need not answer yet: the client keeps trying (no new grants meanwhile).
func (d *daemon) startFleet(ctx context.Context) error {
	fl := d.cfg.Fleet
	if fl.Role == "" {
		return nil
	}
	signing, trusted, errs := fleetKeys(fl)
	for _, err := range errs {
		return err
	}
	host, _ := os.Hostname()
	client, err := fleet.Connect(fleet.ConnOptions{Servers: fl.Servers, Group: fl.Group, CredentialsFile: fl.CredentialsFile,
		CAFile: fl.TLS.CAFile, CertFile: fl.TLS.CertFile, KeyFile: fl.TLS.KeyFile,
		Name: "webknock " + fl.Role + " on " + host, Logger: d.log})
	if err != nil {
		return err
	}
	fs := &fleetSide{client: client, done: make(chan struct{})}
	if fleet.IsDetector(fl.Role) {
		fs.pub = fleet.NewPublisher(fleet.PublisherOptions{Client: client, Key: signing, Detector: host, Replicas: fl.Replicas,
			Logger: d.log, OnResult: d.published})
	}
	ctx, fs.stop = context.WithCancel(ctx)
	if fleet.IsEnforcer(fl.Role) {
		fs.enf = fleet.NewEnforcer(fleet.EnforcerOptions{Client: client, Trusted: trusted, Window: d.fleetWindow,
			Apply: fleetApplier{d}, Logger: d.log})
		go func() { defer close(fs.done); fs.enf.Run(ctx) }()
	} else {
		close(fs.done)
	}
	d.fleet = fs
	d.log.Info("fleet joined", "role", fl.Role, "group", fl.Group, "servers", fl.Servers)
	return nil
}

// close leaves the fleet: grants applied stay, and end on time.
func (fs *fleetSide) close() {
	if fs == nil {
		return
	}
	fs.stop()
	<-fs.done
	if fs.pub != nil {
		fs.pub.Close()
	}
	fs.client.Close()
}

// publishes reports whether the daemon's grants go to the bus.
func (d *daemon) publishes() bool { return d.fleet != nil && d.fleet.pub != nil }

// publish sends the grant of e to the bus; its result is logged by
// published. A one-time step is marked used there too.
func (d *daemon) publish(e *knock.Event, attrs []any) {
	now := d.now()
	until := e.Until
	s := d.sequence(e.Sequence)
	if s != nil && until.After(now.Add(s.Window)) {
		until = now.Add(s.Window) // never beyond the window from now
	}
	g := fleet.Grant{Source: e.Source, Sequence: e.Sequence, Knocked: e.Time, Until: until}
	for _, p := range d.ports(e.Sequence) {
		g.Ports = append(g.Ports, fleet.Port{Proto: p.Proto, Number: p.Number})
	}
	var used *fleet.Used
	if e.OneTime && s != nil && s.OneTime != nil {
		used = &fleet.Used{Sequence: e.Sequence, Step: e.TimeStep, TTL: s.OneTime.Period * time.Duration(2*s.OneTime.Skew+2)}
	}
	d.log.Debug("grant sent to the fleet", append(attrs, keyUntil, until)...)
	d.fleet.pub.Publish(g, used)
}

// published logs what became of a grant sent to the bus (on the
// publisher's goroutine).
func (d *daemon) published(g fleet.Grant, err error) {
	attrs := []any{keyIP, firewall.FormatSource(g.Source), keySequence, g.Sequence, keyUntil, g.Until}
	if err != nil {
		d.log.Error("grant not published: nothing opens", append(attrs, keyReason, fleet.Reason(err), keyErr, err)...)
		return
	}
	d.log.Info("grant published", attrs...)
}

// revokeFleet has the bus delete the grants a revoke or close ended
// here, so that every enforcer ends them too.
func (d *daemon) revokeFleet(p netip.Prefix, sequence string) {
	if d.publishes() {
		d.fleet.pub.Withdraw(p, sequence)
	}
}

// fleetFirewall is the firewall as the web server sees it: a revoke also
// goes to the bus.
type fleetFirewall struct {
	*firewall.Firewall
	d *daemon
}

func (f fleetFirewall) Revoke(ctx context.Context, p netip.Prefix, reason string) ([]firewall.Grant, error) {
	f.d.revokeFleet(p, "")
	gs, err := f.Firewall.Revoke(ctx, p, reason)
	if errors.Is(err, firewall.ErrNoGrant) && f.d.publishes() && f.d.shared.Load().Fleet.Role == fleet.RoleDetector {
		// A detector holds no grants of its own: the bus's are what ends.
		return nil, nil
	}
	return gs, err
}

// fleetWindow is the window of this host's sequence (fleet.Enforcer's
// Window); it may be called from any goroutine.
func (d *daemon) fleetWindow(sequence string) (time.Duration, bool) {
	for _, s := range d.shared.Load().Sequences {
		if s.Name == sequence {
			return s.Window, true
		}
	}
	return 0, false
}

// fleetApplier applies the bus's grants through the daemon's firewall.
type fleetApplier struct{ d *daemon }

func (a fleetApplier) Apply(ctx context.Context, v fleet.Verified) error {
	cfg := a.d.shared.Load()
	i := slices.IndexFunc(cfg.Sequences, func(s config.Sequence) bool { return s.Name == v.Sequence })
	if i < 0 {
		return fmt.Errorf("no sequence %q here", v.Sequence)
	}
	// The ports of the grant that this host guards for the sequence: a
	// host may guard only some of them.
	var ports []firewall.Port
	for _, p := range firewallPorts(cfg.Sequences[i].Ports) {
		if slices.Contains(v.Ports, fleet.Port{Proto: p.Proto, Number: p.Number}) {
			ports = append(ports, p)
		}
	}
	if len(ports) == 0 {
		return fmt.Errorf("none of its ports is among sequence %q's here", v.Sequence)
	}
	g := firewall.Grant{IP: v.Source.Addr(), Bits: grantBits(v.Source), Sequence: v.Sequence, Ports: ports,
		Knocked: v.Knocked, Until: v.Until, Origin: v.Origin()}
	applied, err := a.d.fw.Grant(ctx, g)
	switch {
	case errors.Is(err, firewall.ErrPending):
		a.d.log.Warn("fleet grant not applied yet; retrying until its window ends", keyIP, firewall.FormatSource(v.Source), keyErr, err)
		return nil
	case err != nil:
		return err
	}
	a.d.hookGrant(applied)
	return nil
}

func (a fleetApplier) Remove(ctx context.Context, g fleet.Grant) error {
	_, err := a.d.fw.RevokeSequence(ctx, g.Source, g.Sequence, firewall.ReasonRevoked)
	if errors.Is(err, firewall.ErrNoGrant) {
		return nil
	}
	return err
}

func (a fleetApplier) Held() []fleet.Grant {
	var out []fleet.Grant
	for _, g := range a.d.fw.Grants() {
		if fleet.FromFleet(g.Origin) {
			out = append(out, fleet.Grant{Source: g.Source(), Sequence: g.Sequence, Knocked: g.Knocked, Until: g.Until})
		}
	}
	return out
}

// fleetCounts are the fleet's counters for the metrics: role, then result.
func (d *daemon) fleetCounts() map[string]map[string]uint64 {
	if d.fleet == nil {
		return nil
	}
	out := map[string]map[string]uint64{}
	if d.fleet.pub != nil {
		published, failed := d.fleet.pub.Counts()
		failed["published"] = published
		out[fleet.RoleDetector] = failed
	}
	if d.fleet.enf != nil {
		out[fleet.RoleEnforcer] = d.fleet.enf.Counts()
	}
	return out
}
