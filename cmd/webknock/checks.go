package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/internal/statedir"
	"github.com/webknock/webknock/knock"
	"github.com/webknock/webknock/web"
	"github.com/webknock/webknock/weblog"
)

// checkConfig is config.Options.Check of `check`, `run` and `flush`: the
// checks of each package that will use the configuration, so that what
// `check` accepts, `run` accepts. It touches nothing; the kernel is probed
// by firewall.Probe (check as root, and run before its first change).
//
// A log directory that does not exist is an error for check (most likely
// a typo) but not for run, which waits for it and reports it unhealthy:
// exiting would leave the protected ports shut with nobody to open them.
func checkConfig(cfg *config.Config) (errs, warns []*config.FieldError) {
	return checkWith(cfg, true)
}

// runChecks is checkConfig for run.
func runChecks(cfg *config.Config) (errs, warns []*config.FieldError) {
	return checkWith(cfg, false)
}

func checkWith(cfg *config.Config, strictLogs bool) (errs, warns []*config.FieldError) {
	bad := func(field string, err error) {
		errs = append(errs, &config.FieldError{Field: field, Message: err.Error()})
	}
	warn := func(field, format string, args ...any) {
		warns = append(warns, &config.FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}

	if err := statedir.Check(cfg.StateDir); err != nil {
		bad("state_dir", err)
	}
	for _, err := range unjoin(firewall.CheckOptions(firewallOptions(cfg, nil))) {
		field := "firewall"
		if oe := (*firewall.OptionError)(nil); errors.As(err, &oe) {
			field = "firewall." + oe.Option
			if oe.Option == "state_dir" || oe.Option == "sequences" {
				field = oe.Option
			}
			err = oe.Err
		}
		bad(field, err)
	}
	errs = append(errs, checkGrantPrefixes(cfg)...)
	errs = append(errs, checkFleet(cfg)...)
	for i, p := range cfg.Log.Paths {
		if !readsLogs(cfg) {
			break
		}
		perrs, pwarns := weblog.CheckPaths([]string{p})
		for _, err := range perrs {
			if strictLogs {
				bad(fmt.Sprintf("log.paths[%d]", i), err)
			} else {
				warn(fmt.Sprintf("log.paths[%d]", i), "%v; waiting for it", err)
			}
		}
		for _, w := range pwarns {
			warn(fmt.Sprintf("log.paths[%d]", i), "%s", w)
		}
	}
	if err := weblog.CheckState(cfg.StateDir); err != nil && statedir.Check(cfg.StateDir) == nil {
		bad("state_dir", err)
	}
	if _, err := loadUsed(cfg.StateDir); err != nil && statedir.Check(cfg.StateDir) == nil {
		bad("state_dir", err)
	}

	for i, s := range cfg.Sequences {
		ot := s.OneTime
		if ot == nil {
			continue
		}
		if ot.KeyFile != "" {
			if _, err := readKeyFile(ot.KeyFile); err != nil {
				bad(fmt.Sprintf("sequences[%d].one_time.key_file", i), err)
			}
		}
		// knock's rule: a static path must not look like a one-time path.
		mode := knockMode(ot.Mode)
		for j, other := range cfg.Sequences {
			paths := append(slices.Clone(other.Steps), other.KnockPage)
			for k, p := range paths {
				if p != "" && knock.LooksOneTime(p, ot.Prefix, mode) {
					field := fmt.Sprintf("sequences[%d].steps[%d]", j, k)
					if k == len(other.Steps) {
						field = fmt.Sprintf("sequences[%d].knock_page", j)
					}
					bad(field, fmt.Errorf("path %q has the shape of a one-time path of sequence %q (prefix %q); choose another", p, s.Name, ot.Prefix))
				}
			}
		}
	}

	errs = append(errs, checkHooks(cfg)...)
	errs = append(errs, checkSyslog(cfg)...)
	if len(cfg.Log.Syslog.Listen) > 0 && len(cfg.Log.Syslog.AllowFrom) == 0 {
		for i, l := range cfg.Log.Syslog.Listen {
			if a, err := weblog.ParseSyslogAddr(l); err == nil && !a.Loopback { // a unixgram socket counts as loopback
				warn(fmt.Sprintf("log.syslog.listen[%d]", i), "%s listens beyond loopback but log.syslog.allow_from is empty: only loopback senders are accepted", l)
			}
		}
	}

	// web
	if cfg.Web.Listen != "" && cfg.Web.TokenFile != "" {
		if _, err := web.ReadToken(cfg.Web.TokenFile); err != nil {
			bad("web.token_file", err)
		} else if fi, err := os.Stat(cfg.Web.TokenFile); err == nil && fi.Mode().Perm()&0o044 != 0 {
			warn("web.token_file", "%s is readable by other users (mode %04o): anyone who reads it can revoke grants; chmod 600 it",
				cfg.Web.TokenFile, fi.Mode().Perm())
		}
	}
	if s := cfg.Web.Socket; s != "" {
		if err := web.CheckSocket(s); err != nil {
			bad("web.socket", err)
		}
	}
	if ln := cfg.Web.Listen; ln != "" {
		if ap, err := netip.ParseAddrPort(ln); err != nil || !ap.Addr().IsLoopback() {
			warn("web.listen", "%s is reachable beyond loopback: the status page shows who holds access; keep it on 127.0.0.1 or put a TLS proxy in front", ln)
		}
	}

	// risky choices
	fw := cfg.Firewall
	if fw.Protect && len(fw.AlwaysAllow) == 0 && fw.Backend != "dry-run" {
		warn("firewall.always_allow", "protect is on and always_allow is empty: if webknock stops granting, only the console lets you in; list your admin networks here")
	}
	if fw.Protect && !fw.IPv6 {
		warn("firewall.ipv6", "IPv6 is left unmanaged: on a host with IPv6 the protected ports stay open to everyone over IPv6")
	}
	for i, p := range cfg.Log.TrustedProxies {
		if p.Bits() < 8 {
			warn(fmt.Sprintf("log.trusted_proxies[%d]", i), "%s covers a large part of the internet: any client in it can name another address in X-Forwarded-For and knock for it", p)
		}
	}
	return errs, warns
}

// unjoin splits an errors.Join into its errors.
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// checkGrantPrefixes holds grant_prefix to the firewall's rule: what it
// would refuse to open. replay applies it too, so that it grants no
// network run would refuse.
func checkGrantPrefixes(cfg *config.Config) (errs []*config.FieldError) {
	for i, s := range cfg.Sequences {
		for _, f := range []struct {
			key  string
			v6   bool
			bits int
		}{{"ipv4", false, s.GrantPrefix.IPv4}, {"ipv6", true, s.GrantPrefix.IPv6}} {
			if err := firewall.CheckGrantBits(f.v6, f.bits); err != nil {
				errs = append(errs, &config.FieldError{Field: fmt.Sprintf("sequences[%d].grant_prefix.%s", i, f.key), Message: err.Error()})
			}
		}
	}
	return errs
}
