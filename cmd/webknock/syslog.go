package main

// This file connects the syslog listener (log.syslog) to the daemon.

import (
	"log/slog"
	"strings"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/weblog"
)

// syslogOptions are the listener's options of cfg.
func syslogOptions(cfg *config.Config, logger *slog.Logger) weblog.SyslogOptions {
	sl := cfg.Log.Syslog
	return weblog.SyslogOptions{
		Listen: sl.Listen, AllowUIDs: sl.AllowUIDs, AllowFrom: sl.AllowFrom, SocketGroup: sl.SocketGroup,
		TLS:        weblog.SyslogTLS{CertFile: sl.TLS.CertFile, KeyFile: sl.TLS.KeyFile, ClientCAFile: sl.TLS.ClientCAFile},
		MaxMessage: sl.MaxMessage, MaxConns: sl.MaxConns, IdleTimeout: sl.IdleTimeout, Logger: logger,
	}
}

// syslogBatches is the listener's channel; nil (never ready) without one.
func (d *daemon) syslogBatches() <-chan weblog.Batch {
	if d.syslog == nil {
		return nil
	}
	return d.syslog.Batches()
}

// fileBatches is the follower's channel; nil (never ready) without log
// files.
func (d *daemon) fileBatches() <-chan weblog.Batch {
	if f := d.follower.Load(); f != nil {
		return f.Batches()
	}
	return nil
}

// caughtUp reports whether every source has delivered what it received.
func (d *daemon) caughtUp() bool {
	f := d.follower.Load()
	return (f == nil || f.CaughtUp()) && (d.syslog == nil || d.syslog.CaughtUp())
}

// syslogCounts are the listener's counters for the metrics: listener,
// then result.
func (d *daemon) syslogCounts() map[string]map[string]uint64 {
	if d.syslog == nil {
		return nil
	}
	out := map[string]map[string]uint64{}
	for ln, c := range d.syslog.Stats().Listeners {
		out[ln] = map[string]uint64{
			"received": c.Received, "accepted": c.Accepted, "refused": c.Refused, "oversized": c.Oversized,
			"truncated": c.Truncated, "malformed": c.Malformed, "dropped": c.Dropped,
		}
	}
	return out
}

// checkSyslog holds log.syslog to the listener's own rules; each error
// of weblog.CheckSyslog starts with the key it is about.
func checkSyslog(cfg *config.Config) (errs []*config.FieldError) {
	for _, err := range weblog.CheckSyslog(syslogOptions(cfg, nil)) {
		field, msg := "log.syslog", err.Error()
		if k, rest, ok := strings.Cut(msg, " "); ok && strings.HasPrefix(k, "log.syslog") {
			field, msg = strings.TrimSuffix(k, ":"), rest
		}
		errs = append(errs, &config.FieldError{Field: field, Message: msg})
	}
	return errs
}
