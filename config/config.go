// Package config loads webknock's configuration — defaults, then the YAML
// file, then WEBKNOCK_ environment variables, then changed command-line
// flags — and validates it, reporting every problem with its source, line
// and field.
package config

import (
	"net/netip"
	"strconv"
	"time"

	"github.com/spf13/pflag"
)

// Config is one complete, validated configuration.
type Config struct {
	File      string // the YAML file it was loaded from
	Log       Log
	StateDir  string
	Firewall  Firewall
	Sequences []Sequence
	Lockout   Lockout
	Web       Web
	// Warnings are risky choices that are allowed (check prints them).
	Warnings []*FieldError
}

// Log says which access logs to follow and how to read them.
type Log struct {
	Paths          []string
	Format         string // combined | common | vhost_combined | an nginx log_format string
	Start          string // saved | end | beginning
	TrustedProxies []netip.Prefix
}

// Firewall configures webknock's own iptables chain.
type Firewall struct {
	Backend     string // iptables | dry-run
	Chain       string
	Hook        string
	Protect     bool
	AlwaysAllow []netip.Prefix
	// IPv6 false leaves IPv6 unmanaged, knowingly: without it, a host with
	// IPv6 and protect on needs a working IPv6 firewall.
	IPv6 bool
}

// Sequence is one secret sequence of URL paths and the ports it opens.
type Sequence struct {
	Name            string
	Steps           []string
	StepStatus      []int
	Methods         []string // upper case
	KnockPage       string
	KnockPageStatus []int // empty: any status
	Timeout         time.Duration
	Window          time.Duration
	Ports           []Port
	// OneTime makes the paths one-time: derived from a key and the time
	// step (hmac mode: no Steps or KnockPage), or a static Steps with a
	// knock page of Prefix and the RFC 6238 code (totp mode). nil: static.
	OneTime *OneTime
}

// The one-time modes.
const (
	ModeHMAC = "hmac"
	ModeTOTP = "totp"
)

// OneTime configures a one-time sequence (DESIGN.md, "One-time sequences").
type OneTime struct {
	KeyFile string // a relative path is relative to the configuration file's directory
	Mode    string // ModeHMAC or ModeTOTP
	Prefix  string // every one-time path starts with it
	Steps   int    // hmac: derived steps before the derived knock page
	// Period is the time step: 60s by default in hmac mode, always 30s in
	// totp mode (what authenticator apps use).
	Period time.Duration
	Skew   int // time steps accepted either side of the line's own
}

// Port is a TCP or UDP port.
type Port struct {
	Number uint16
	Proto  string // "tcp" or "udp"
}

// String returns the port as "22/tcp".
func (p Port) String() string {
	return strconv.Itoa(int(p.Number)) + "/" + p.Proto
}

// Lockout ignores an address that fails too often; Failures 0 disables it.
type Lockout struct {
	Failures int
	Period   time.Duration
	Duration time.Duration
}

// Web configures the status page and API; an empty Listen disables it.
type Web struct {
	Listen    string
	TokenFile string
	Socket    string // the admin API's unix socket; empty disables it
}

// Options says where Load finds the configuration.
type Options struct {
	Path    string         // YAML file (required)
	Environ []string       // e.g. os.Environ(); only WEBKNOCK_ variables are read; nil reads none
	Flags   *pflag.FlagSet // optional; only flags the user changed override
	// CheckFormat optionally validates log.format further (main plugs in the
	// log parser's compiler); its error becomes a problem on log.format.
	CheckFormat func(format string) error
	// Check optionally applies the checks of the packages that will use
	// the configuration (firewall names, key files, log directories); it
	// runs whenever the file could be parsed, so it must bear values that
	// Load itself refused (problems on values that did not decode are
	// dropped). Each problem's Field is a path
	// like "firewall.chain" or "sequences[1].ports[0]"; Load fills in its
	// source and line.
	Check func(cfg *Config) (errs, warnings []*FieldError)
}

// defaults returns the configuration used for every key the file, the
// environment and the flags leave unset.
func defaults() Config {
	return Config{
		Log: Log{
			Paths:  []string{"/var/log/nginx/access.log"},
			Format: "combined",
			Start:  "saved",
		},
		StateDir: "/var/lib/webknock",
		Firewall: Firewall{
			Backend: "iptables",
			Chain:   "WEBKNOCK",
			Hook:    "INPUT",
			Protect: true,
			IPv6:    true,
		},
		Lockout: Lockout{
			Failures: 5,
			Period:   10 * time.Minute,
			Duration: 15 * time.Minute,
		},
		Web: Web{
			Listen:    "127.0.0.1:7080",
			TokenFile: "/etc/webknock/token",
			Socket:    "/run/webknock/webknock.sock",
		},
	}
}

// sequenceDefaults returns the values of a sequence's unset keys.
func sequenceDefaults() Sequence {
	return Sequence{
		StepStatus: []int{404},
		Methods:    []string{"GET", "HEAD"},
		Timeout:    30 * time.Second,
		Window:     10 * time.Minute,
		Ports:      []Port{{Number: 22, Proto: "tcp"}},
	}
}

// oneTimeDefaults returns the values of a one_time block's unset keys;
// Period is settled by validation, once the mode is known.
func oneTimeDefaults() OneTime {
	return OneTime{Mode: ModeHMAC, Prefix: "/k/", Steps: 2, Skew: 1}
}

// flagKeys maps the flags of RegisterFlags to the keys they override.
var flagKeys = map[string]string{
	"log-format":       "log.format",
	"log-start":        "log.start",
	"log-paths":        "log.paths",
	"state-dir":        "state_dir",
	"firewall-backend": "firewall.backend",
	"web-listen":       "web.listen",
}

// RegisterFlags defines the flags that override configuration keys. Their
// defaults are empty on purpose: only flags the user sets take effect.
func RegisterFlags(fs *pflag.FlagSet) {
	fs.String("log-format", "", "log format: combined, common, vhost_combined or an nginx log_format string (overrides log.format)")
	fs.String("log-start", "", "where to start reading logs: saved, end or beginning (overrides log.start)")
	fs.StringSlice("log-paths", nil, "access logs to follow, comma separated, globs allowed (overrides log.paths)")
	fs.String("state-dir", "", "directory for grants and log positions (overrides state_dir)")
	fs.String("firewall-backend", "", "firewall backend: iptables or dry-run (overrides firewall.backend)")
	fs.String("web-listen", "", "host:port of the status page and API, empty disables (overrides web.listen)")
}
