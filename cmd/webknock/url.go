package main

// This file holds `webknock url`: the URLs a client requests now, for
// one-time sequences derived from the key and the time.

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/knock"
)

func urlFlags(fs *pflag.FlagSet) {
	fs.String("sequence", "", "the sequence `NAME` (default: the only one)")
	fs.String("at", "", "the URLs of `TIME` (RFC 3339, like 2026-11-22T19:00:00Z) instead of now")
	fs.String("base", "", "print each path after `URL`, the site's scheme and host, like https://www.example.com (default: paths only)")
}

// runURL is `webknock url`: the URLs to request, one a line, on stdout;
// how long they stay valid on stderr.
func runURL(_ context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) > 0 {
		return usagef(env, fs, "unexpected argument %q", args[0])
	}
	at := time.Now()
	if s, _ := fs.GetString("at"); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return usagef(env, fs, "bad --at %q: want RFC 3339 time, like 2026-11-22T19:00:00Z", s)
		}
		at = t
	}
	base, err := baseFlag(env, fs)
	if err != nil {
		return err
	}
	_, ks, err := loadSequence(env, fs)
	if err != nil {
		return err
	}
	paths, step := ks.PathsAt(at)
	var b strings.Builder
	for _, p := range paths {
		b.WriteString(base + p + "\n")
	}
	if _, err := fmt.Fprint(env.stdout, b.String()); err != nil {
		return err
	}
	fmt.Fprintln(env.stderr, validity(ks, step))
	return nil
}

// validity says how long the paths of time step t of ks stay valid.
func validity(ks knock.Sequence, t int64) string {
	ot := ks.OneTime
	if ot == nil {
		return fmt.Sprintf("sequence %s: static paths; they never change", ks.Name)
	}
	p := int64(ot.Period / time.Second)
	end := time.Unix((t+1)*p, 0)
	msg := fmt.Sprintf("sequence %s (%s): time step T=%d of %v; current until %s", ks.Name, ot.Mode, t, ot.Period, rfc3339(end))
	if ot.Skew > 0 {
		msg += fmt.Sprintf("; the server accepts them until %s (skew %d: clocks may differ by up to %v)",
			rfc3339(end.Add(time.Duration(ot.Skew)*ot.Period)), ot.Skew, time.Duration(ot.Skew)*ot.Period)
	}
	return msg + "; each time step opens at most once"
}

// sequenceFlag returns the sequence that --sequence names; without it, the
// loadSequence loads the configuration of -c and returns the sequence
// --sequence names, as configured and with its key, for url and helper.
func loadSequence(env *environment, fs *pflag.FlagSet) (*config.Sequence, knock.Sequence, error) {
	cfg, err := loadConfig(env, fs, nil)
	if err != nil {
		return nil, knock.Sequence{}, err
	}
	s, err := sequenceFlag(env, fs, cfg)
	if err != nil {
		return nil, knock.Sequence{}, err
	}
	ks, err := knockSequence(s)
	if err != nil {
		return nil, knock.Sequence{}, fmt.Errorf("sequence %s: %w", s.Name, err)
	}
	return s, ks, nil
}

// only one.
func sequenceFlag(env *environment, fs *pflag.FlagSet, cfg *config.Config) (*config.Sequence, error) {
	name, _ := fs.GetString("sequence")
	names := make([]string, len(cfg.Sequences))
	for i := range cfg.Sequences {
		if cfg.Sequences[i].Name == name || name == "" && len(cfg.Sequences) == 1 {
			return &cfg.Sequences[i], nil
		}
		names[i] = cfg.Sequences[i].Name
	}
	if name == "" {
		return nil, usagef(env, fs, "--sequence NAME is required: %s has %s", cfg.File, strings.Join(names, ", "))
	}
	return nil, usagef(env, fs, "unknown sequence %q: %s has %s", name, cfg.File, strings.Join(names, ", "))
}

// hostRe matches a DNS name or an IP address, as a URL's host holds it.
var hostRe = regexp.MustCompile(`^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$`)

// baseFlag returns --base as scheme://host[:port], or "".
func baseFlag(env *environment, fs *pflag.FlagSet) (string, error) {
	s, _ := fs.GetString("base")
	if s == "" {
		return "", nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !hostRe.MatchString(u.Hostname()) || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		// A path would be logged before the knock paths, and never match.
		return "", usagef(env, fs, "bad --base %q: want the site's scheme and host only, like https://www.example.com", s)
	}
	return u.Scheme + "://" + u.Host, nil
}
