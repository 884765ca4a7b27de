package config

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	maxPathLen = 200
	maxSteps   = 1000 // static steps of a sequence
	// One-time limits. maxOneTimeSuffix is the longest part that follows
	// a one-time prefix (an hmac token).
	maxOneTimeSteps  = 32
	maxOneTimeSuffix = 22
	maxSkew          = 10
	minPeriod        = 10 * time.Second
	maxPeriod        = time.Hour
	totpPeriod       = 30 * time.Second
	nameRule         = "1 to 32 characters of A-Z a-z 0-9 _ -"
)

var (
	// A sequence name goes into iptables rule comments.
	nameRe   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)
	methodRe = regexp.MustCompile(`^[A-Z]+$`)
)

// validate checks the decoded configuration, skipping values that could
// not be decoded (they have been reported already).
func (l *loader) validate(checkFormat func(string) error) {
	c := &l.cfg
	at := func(p ...any) loc {
		fp := fieldPath(p)
		return loc{l.sourceOf(fp), fp}
	}
	bad := func(a loc, format string, args ...any) {
		if !l.skipped(a.p) {
			l.addf(a, format, args...)
		}
	}

	// log
	// An enforcer alone reads no logs: its grants come from the fleet.
	if len(c.Log.Paths) == 0 && len(c.Log.Syslog.Listen) == 0 && !l.logsOnCommandLine && c.Fleet.Role != "enforcer" {
		bad(at("log", "paths"), "at least one path required, or log.syslog.listen")
	}
	if c.Log.Reorder < 0 || c.Log.Reorder > time.Minute {
		bad(at("log", "reorder"), "bad reorder %v: want 0 (lines as they come) to 1m", c.Log.Reorder)
	}
	// log.syslog is checked by the listener's own rules (weblog.CheckSyslog).
	for i, p := range c.Log.Paths {
		if p == "" {
			bad(at("log", "paths", i), "empty path")
		} else if _, err := filepath.Match(p, ""); err != nil {
			bad(at("log", "paths", i), "bad glob %q: %v", p, err)
		}
	}
	switch {
	case c.Log.Format == "":
		bad(at("log", "format"), "must not be empty; want combined, common, vhost_combined or an nginx log_format string")
	case checkFormat != nil && !l.skipped(fieldPath{"log", "format"}):
		if err := checkFormat(c.Log.Format); err != nil {
			bad(at("log", "format"), "%v", err)
		}
	}
	oneOf(bad, at("log", "start"), "start", c.Log.Start, "saved", "end", "beginning")

	// The firewall's names are checked by the firewall (Options.Check), so
	// check and run apply one rule; here only that they are there.
	if c.Firewall.Chain == "" {
		bad(at("firewall", "chain"), "must not be empty; want a chain of our own like \"WEBKNOCK\"")
	}
	if c.Firewall.Table == "" {
		bad(at("firewall", "table"), "must not be empty; want a table of our own like \"webknock\"")
	}
	if c.Firewall.Hook == "" {
		bad(at("firewall", "hook"), "must not be empty; want the chain that jumps to ours, like \"INPUT\" or \"DOCKER-USER\" (iptables), or input or forward (nftables)")
	}
	// Their upper bound is the firewall's (Options.Check).
	for _, m := range []struct {
		key, lift string
		n         int
	}{
		{"max_grants", "", c.Firewall.MaxGrants},
		{"max_grants_per_sequence", "; to lift the cap, set it to max_grants", c.Firewall.MaxGrantsPerSequence},
		{"max_grants_per_ipv4_24", "; to lift the cap, set it to max_grants", c.Firewall.MaxGrantsPerIPv4Net},
		{"max_grants_per_ipv6_64", "; to lift the cap, set it to max_grants", c.Firewall.MaxGrantsPerIPv6Net},
	} {
		if m.n < 1 {
			bad(at("firewall", m.key), "bad %s %d: want 1 or more live grants%s", m.key, m.n, m.lift)
		}
	}

	if ci := c.Firewall.CheckInterval; ci != 0 && ci < time.Second {
		bad(at("firewall", "check_interval"), "bad check_interval %v: want 1s or more, or leave it out for the backend's own", ci)
	}

	l.validateSequences(at, bad)

	// lockout
	lo := c.Lockout
	if lo.Failures < 0 {
		bad(at("lockout", "failures"), "bad failures %d: want 0 (disabled) or more", lo.Failures)
	}
	if lo.Failures > 0 {
		if lo.Period <= 0 {
			bad(at("lockout", "period"), "want a positive duration when failures > 0, got %q", lo.Period)
		}
		if lo.Duration <= 0 {
			bad(at("lockout", "duration"), "want a positive duration when failures > 0, got %q", lo.Duration)
		}
	}

	l.validateHooks(at, bad)
	l.validateFleet(at, bad)

	// web
	if ln := c.Web.Listen; ln != "" && !validListen(ln) {
		bad(at("web", "listen"), "bad listen %q: want host:port like \"127.0.0.1:7080\", or empty to disable", ln)
	}
}

// Bounds of the hooks' settings.
const (
	maxHookTimeout    = 10 * time.Minute
	maxHookMaxRunning = 64
)

// validateHooks checks the hooks' shape; their placeholders and programs
// are checked by the package that runs them (Options.Check).
func (l *loader) validateHooks(at func(p ...any) loc, bad func(a loc, format string, args ...any)) {
	h := l.cfg.Hooks
	for _, cmd := range []struct {
		key  string
		argv []string
	}{{"on_grant", h.OnGrant}, {"on_end", h.OnEnd}, {"on_lockout", h.OnLockout}} {
		if len(cmd.argv) > 0 && !filepath.IsAbs(cmd.argv[0]) {
			bad(at("hooks", cmd.key, 0), "program %q is not an absolute path; want a command like [/usr/bin/logger, -t, webknock, \"{ip} {event}\"], run without a shell", cmd.argv[0])
		}
	}
	if h.Timeout <= 0 || h.Timeout > maxHookTimeout {
		bad(at("hooks", "timeout"), "bad timeout %q: want a positive duration up to %v, like \"10s\"", h.Timeout, maxHookTimeout)
	}
	if h.MaxRunning < 1 || h.MaxRunning > maxHookMaxRunning {
		bad(at("hooks", "max_running"), "bad max_running %d: want 1 to %d", h.MaxRunning, maxHookMaxRunning)
	}
}

func (l *loader) validateSequences(at func(p ...any) loc, bad func(a loc, format string, args ...any)) {
	seqs := l.cfg.Sequences
	if len(seqs) == 0 {
		bad(at("sequences"), "at least one sequence required")
	}
	names := map[string]int{}       // name -> first sequence
	paths := map[string]fieldPath{} // path -> first use
	usePath := func(a loc, p string) {
		if why := checkPath(p); why != "" {
			bad(a, "bad path %q: %s", p, why)
			return
		}
		if first, ok := paths[p]; ok {
			bad(a, "path %q already used by %s", p, first)
			return
		}
		paths[p] = a.p
	}
	for i, s := range seqs {
		switch _, dup := names[s.Name]; {
		case s.Name == "":
			bad(at("sequences", i, "name"), "required: %s", nameRule)
		case !nameRe.MatchString(s.Name):
			bad(at("sequences", i, "name"), "bad name %q: want %s", s.Name, nameRule)
		case dup:
			bad(at("sequences", i, "name"), "name %q already used by sequences[%d]", s.Name, names[s.Name])
		default:
			names[s.Name] = i
		}

		ot := s.OneTime
		switch {
		case ot != nil && ot.Mode == ModeHMAC:
			if len(s.Steps) > 0 {
				bad(at("sequences", i, "steps"), "a one-time sequence in hmac mode derives its steps from the key (one_time.steps says how many); remove steps")
			}
		case ot != nil && ot.Mode != ModeTOTP:
			// A bad mode: reported with one_time.mode.
		case len(s.Steps) == 0 && ot != nil:
			bad(at("sequences", i, "steps"), "at least one step required: in totp mode the static steps come before the code, which alone (6 digits) could be guessed")
		case len(s.Steps) == 0:
			bad(at("sequences", i, "steps"), "at least one step required")
		}
		if len(s.Steps) > maxSteps {
			bad(at("sequences", i, "steps"), "%d steps; at most %d allowed", len(s.Steps), maxSteps)
		}
		for j, p := range s.Steps {
			usePath(at("sequences", i, "steps", j), p)
		}
		switch {
		case ot != nil && s.KnockPage != "":
			bad(at("sequences", i, "knock_page"), "a one-time sequence derives its knock page from the key and the time; remove knock_page")
		case ot != nil:
		case s.KnockPage == "":
			bad(at("sequences", i, "knock_page"), "required: an absolute path like \"/k/open\"")
		default:
			usePath(at("sequences", i, "knock_page"), s.KnockPage)
		}
		if ot != nil {
			validateOneTime(func(p ...any) loc { return at(append([]any{"sequences", i, "one_time"}, p...)...) }, bad, ot, l.cfg.File)
		}

		if len(s.StepStatus) == 0 {
			bad(at("sequences", i, "step_status"), "at least one status required, like 404")
		}
		for j, st := range s.StepStatus {
			if st < 100 || st > 599 {
				bad(at("sequences", i, "step_status", j), "bad status %d: want 100 to 599", st)
			}
		}
		for j, st := range s.KnockPageStatus {
			if st < 100 || st > 599 {
				bad(at("sequences", i, "knock_page_status", j), "bad status %d: want 100 to 599", st)
			}
		}

		if len(s.Methods) == 0 {
			bad(at("sequences", i, "methods"), "at least one method required, like GET")
		}
		for j, m := range s.Methods {
			if !methodRe.MatchString(m) {
				bad(at("sequences", i, "methods", j), "bad method %q: want letters A-Z, like \"GET\"", m)
			}
		}

		positive(bad, at("sequences", i, "timeout"), s.Timeout)
		positive(bad, at("sequences", i, "window"), s.Window)

		if s.ClosePage != "" {
			usePath(at("sequences", i, "close_page"), s.ClosePage)
		}
		if s.CloseOnConnect && (s.GrantPrefix.IPv4 != 32 || s.GrantPrefix.IPv6 != 128) {
			bad(at("sequences", i, "close_on_connect"), "opens to one address: the first connection from it closes the grant; a grant_prefix wider than the address (here /%d, /%d) cannot be closed on connect",
				s.GrantPrefix.IPv4, s.GrantPrefix.IPv6)
		}
		if s.CloseKillsSessions && s.ClosePage == "" {
			bad(at("sequences", i, "close_kills_sessions"), "needs close_page: only a close from the close page ends sessions (revoke --kill-sessions does it by hand)")
		}
		if len(s.Ports) == 0 {
			bad(at("sequences", i, "ports"), "at least one port required, like \"22/tcp\"")
		}
		for j, p := range s.Ports {
			if slices.Contains(s.Ports[:j], p) {
				bad(at("sequences", i, "ports", j), "port %q listed twice", p.String())
			}
		}
	}
}

// validateOneTime checks a one_time block and settles its period.
func validateOneTime(at func(p ...any) loc, bad func(a loc, format string, args ...any), ot *OneTime, file string) {
	switch {
	case ot.KeyFile == "":
		bad(at("key_file"), "required: the file holding the sequence's key (webknock init --one-time writes one)")
	case !filepath.IsAbs(ot.KeyFile) && file != "":
		// Relative to the configuration file, which usually sits beside the keys.
		ot.KeyFile = filepath.Join(filepath.Dir(file), ot.KeyFile)
	}
	oneOf(bad, at("mode"), "mode", ot.Mode, ModeHMAC, ModeTOTP)
	switch ot.Mode {
	case ModeHMAC:
		if ot.Steps < 1 || ot.Steps > maxOneTimeSteps {
			bad(at("steps"), "bad steps %d: want 1 to %d", ot.Steps, maxOneTimeSteps)
		}
		switch {
		case ot.Period == 0:
			ot.Period = time.Minute
		case ot.Period < minPeriod || ot.Period > maxPeriod || ot.Period%time.Second != 0:
			bad(at("period"), "bad period %q: want whole seconds from %v to %v", ot.Period, minPeriod, maxPeriod)
		}
	case ModeTOTP:
		switch ot.Period {
		case 0:
			ot.Period = totpPeriod
		case totpPeriod:
		default:
			bad(at("period"), "bad period %q: totp mode uses %v, what authenticator apps use; remove period", ot.Period, totpPeriod)
		}
	}
	if ot.Skew < 0 || ot.Skew > maxSkew {
		bad(at("skew"), "bad skew %d: want 0 to %d time steps", ot.Skew, maxSkew)
	}
	if why := checkPath(ot.Prefix); why != "" {
		bad(at("prefix"), "bad prefix %q: %s", ot.Prefix, why)
	} else if len(ot.Prefix) > maxPathLen-maxOneTimeSuffix {
		bad(at("prefix"), "prefix %q: %d bytes; at most %d allowed", ot.Prefix, len(ot.Prefix), maxPathLen-maxOneTimeSuffix)
	}
}

func positive(bad func(a loc, format string, args ...any), a loc, d time.Duration) {
	if d <= 0 {
		bad(a, "want a positive duration like \"30s\", got %q", d)
	}
}

func oneOf(bad func(a loc, format string, args ...any), a loc, what, v string, allowed ...string) {
	if slices.Contains(allowed, v) {
		return
	}
	want := strings.Join(allowed[:len(allowed)-1], ", ") + " or " + allowed[len(allowed)-1]
	bad(a, "bad %s %q: want %s", what, v, want)
}

// checkPath says why p cannot be a step or knock page, or returns "".
func checkPath(p string) string {
	if !strings.HasPrefix(p, "/") {
		return `must start with "/"`
	}
	if len(p) > maxPathLen {
		return fmt.Sprintf("%d bytes; at most %d allowed", len(p), maxPathLen)
	}
	for i := 0; i < len(p); i++ {
		if !unreserved(p[i]) {
			return fmt.Sprintf("character %q not allowed; want A-Z a-z 0-9 - . _ ~ /", p[i:i+1])
		}
	}
	return ""
}

// unreserved reports whether b is an unreserved URL character (RFC 3986) or "/":
// such a path reaches the log byte for byte, never percent-encoded.
func unreserved(b byte) bool {
	return 'A' <= b && b <= 'Z' || 'a' <= b && b <= 'z' || '0' <= b && b <= '9' ||
		b == '-' || b == '.' || b == '_' || b == '~' || b == '/'
}

func validListen(s string) bool {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	return err == nil && n > 0
}

// sourceOf says where the value at p comes from: the file unless the
// environment or a flag set it.
func (l *loader) sourceOf(p fieldPath) source {
	if src, ok := l.origin[p.keyPath()]; ok {
		return src
	}
	return l.file
}

// skipped reports whether p, or a value containing it, failed to decode.
func (l *loader) skipped(p fieldPath) bool {
	for i := 1; i <= len(p); i++ {
		if l.failed[p[:i].String()] {
			return true
		}
	}
	return false
}
