// Package config loads webknock's configuration — defaults, then the YAML
// file, then WEBKNOCK_ environment variables, then changed command-line
// flags — and validates it, reporting every problem with its source, line
// and field.
package config

import (
	"net/netip"
	"slices"
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
	Hooks     Hooks
	Web       Web
	Fleet     Fleet
	// Warnings are risky choices that are allowed (check prints them).
	Warnings []*FieldError
}

// Log says which access logs to follow and how to read them.
type Log struct {
	Paths          []string // may be empty when Syslog.Listen is set
	Format         string   // combined | common | vhost_combined | an nginx log_format string
	Start          string   // saved | end | beginning
	TrustedProxies []netip.Prefix
	// Reorder is how long a knock step that arrives ahead of the steps
	// before it waits for them: the skew tolerated between the lines of
	// several web servers. 0 (the default) takes every line as it comes,
	// and a step out of order resets the client's progress.
	Reorder time.Duration
	Syslog  Syslog
}

// Syslog configures the syslog listener: web servers send their access
// log lines to webknock as syslog messages.
type Syslog struct {
	Listen []string // unixgram:PATH | udp:HOST:PORT | tcp:HOST:PORT
	// AllowUIDs are the senders accepted on unixgram (kernel credentials).
	AllowUIDs []uint32
	// AllowFrom are the senders accepted on udp and tcp; empty: loopback only.
	AllowFrom []netip.Prefix
	// SocketGroup is the group of unixgram sockets (mode 0660); -1: the
	// daemon's.
	SocketGroup int
	TLS         SyslogTLS
	MaxMessage  int           // bytes
	MaxConns    int           // tcp connections at once, per listener
	IdleTimeout time.Duration // tcp: a silent connection is closed
}

// SyslogTLS is the tcp listener's TLS; a client certificate is required.
type SyslogTLS struct {
	CertFile, KeyFile, ClientCAFile string
}

// Firewall configures webknock's own iptables chain or nftables table.
type Firewall struct {
	Backend     string // iptables | nftables | dry-run
	Chain       string // iptables
	Table       string // nftables
	Hook        string // iptables: the chain that jumps to ours; nftables: input or forward
	Protect     bool
	AlwaysAllow []netip.Prefix
	// IPv6 false leaves IPv6 unmanaged, knowingly: without it, a host with
	// IPv6 and protect on needs a working IPv6 firewall.
	IPv6 bool
	// MaxGrants bounds the live grants; the caps bound those of one
	// sequence, of one IPv4 /24 and of one IPv6 /64. Each is at least 1.
	MaxGrants            int
	MaxGrantsPerSequence int
	MaxGrantsPerIPv4Net  int
	MaxGrantsPerIPv6Net  int
	// CheckInterval is the period of the integrity check; 0: the
	// backend's own (a minute with iptables, 30 s with nftables).
	CheckInterval time.Duration
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
	// ClosePage, if set, ends the grant of the client that requests it.
	ClosePage string
	// CloseKillsSessions makes a close also end the client's established
	// connections to the sequence's ports.
	CloseKillsSessions bool
	// CloseOnConnect ends the grant of a port at the first new connection
	// to it from the granted address (nftables only).
	CloseOnConnect bool
	// AllowFrom lists the networks that may knock; empty: anyone.
	AllowFrom []netip.Prefix
	// Expires is the time after which the sequence grants nothing, and
	// no grant of it lasts; zero: never.
	Expires time.Time
	// GrantPrefix widens each grant to the client's network.
	GrantPrefix GrantPrefix
}

// GrantPrefix is the length of the network a grant opens, per family.
type GrantPrefix struct {
	IPv4 int // 16 to 32; 32 opens the client's address alone
	IPv6 int // 32 to 128; 128 opens the client's address alone
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

// Fleet joins the daemon to a fleet: grants travel through a NATS
// JetStream key-value bucket between detectors and enforcers.
type Fleet struct {
	Servers         []string // nats://HOST:PORT | tls://HOST:PORT
	Role            string   // "" (no fleet) | detector | enforcer | both
	Group           string   // names the buckets: webknock-<group>-grants
	CredentialsFile string   // a NATS .creds file
	TLS             FleetTLS
	SigningKeyFile  string   // detector: its ed25519 private key
	TrustedKeys     []string // enforcer: base64 ed25519 public keys of the detectors
	// Replicas of the buckets, when a detector creates them: 3 on a
	// cluster of three servers survives the loss of one.
	Replicas int
}

// FleetTLS is the TLS of the connection to the bus.
type FleetTLS struct {
	CAFile, CertFile, KeyFile string
}

// Hooks are the commands run for events, each an argv (never a shell)
// whose arguments may hold the placeholders {ip}, {sequence}, {until},
// {ports} and {event}; an empty argv runs nothing.
type Hooks struct {
	OnGrant   []string      // after the firewall applied a grant
	OnEnd     []string      // when a grant ends: expired, revoked, closed or cut by policy
	OnLockout []string      // when an address is locked out
	Timeout   time.Duration // each run's deadline, after which its process group is killed
	// MaxRunning bounds the runs at once; more wait in a bounded queue,
	// and beyond it are dropped.
	MaxRunning int
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
	// LogsOnCommandLine says the logs are named on the command line
	// (replay): log.paths may then be empty.
	LogsOnCommandLine bool
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
			Syslog: Syslog{
				AllowUIDs:   []uint32{0},
				SocketGroup: -1,
				MaxMessage:  16384,
				MaxConns:    64,
				IdleTimeout: 5 * time.Minute,
			},
		},
		StateDir: "/var/lib/webknock",
		Firewall: Firewall{
			Backend: "iptables",
			Chain:   "WEBKNOCK",
			Table:   "webknock",
			Hook:    "INPUT",
			Protect: true,
			IPv6:    true,

			MaxGrants:            65536,
			MaxGrantsPerSequence: 1024,
			MaxGrantsPerIPv4Net:  64,
			MaxGrantsPerIPv6Net:  64,
		},
		Lockout: Lockout{
			Failures: 5,
			Period:   10 * time.Minute,
			Duration: 15 * time.Minute,
		},
		Hooks: Hooks{Timeout: 10 * time.Second, MaxRunning: 4},
		Fleet: Fleet{Group: "default", Replicas: 1},
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
		StepStatus:  []int{404},
		Methods:     []string{"GET", "HEAD"},
		Timeout:     30 * time.Second,
		Window:      10 * time.Minute,
		Ports:       []Port{{Number: 22, Proto: "tcp"}},
		GrantPrefix: GrantPrefix{IPv4: 32, IPv6: 128},
	}
}

// oneTimeDefaults returns the values of a one_time block's unset keys;
// Period is settled by validation, once the mode is known.
func oneTimeDefaults() OneTime {
	return OneTime{Mode: ModeHMAC, Prefix: "/k/", Steps: 2, Skew: 1}
}

// overrideFlags are the flags that override configuration keys, in the
// order help lists them.
var overrideFlags = []struct {
	name, key, usage string
	list             bool // a comma-separated list
}{
	{"log-format", "log.format", "log format: combined, common, vhost_combined or an nginx log_format string (overrides log.format)", false},
	{"log-start", "log.start", "where to start reading logs: saved, end or beginning (overrides log.start)", false},
	{"log-paths", "log.paths", "access logs to follow, comma separated, globs allowed (overrides log.paths)", true},
	{"state-dir", "state_dir", "directory for grants and log positions (overrides state_dir)", false},
	{"firewall-backend", "firewall.backend", "firewall backend: iptables, nftables or dry-run (overrides firewall.backend)", false},
	{"web-listen", "web.listen", "host:port of the status page and API, empty disables (overrides web.listen)", false},
}

// flagKeys maps the flags of RegisterFlags to the keys they override.
var flagKeys = func() map[string]string {
	m := make(map[string]string, len(overrideFlags))
	for _, f := range overrideFlags {
		m[f.name] = f.key
	}
	return m
}()

// FlagKeys returns the keys a flag can override, in the order of
// RegisterFlags.
func FlagKeys() []string {
	keys := make([]string, len(overrideFlags))
	for i, f := range overrideFlags {
		keys[i] = f.key
	}
	return keys
}

// RegisterFlags defines the flags that override the named keys, or all of
// FlagKeys when none is named, so a command offers only the overrides it
// uses. Naming a key no flag overrides panics. Their defaults are empty on
// purpose: only flags the user sets take effect.
func RegisterFlags(fs *pflag.FlagSet, keys ...string) {
	for _, k := range keys {
		if !slices.Contains(FlagKeys(), k) {
			panic("config: no flag overrides " + k)
		}
	}
	for _, f := range overrideFlags {
		switch {
		case len(keys) > 0 && !slices.Contains(keys, f.key):
		case f.list:
			fs.StringSlice(f.name, nil, f.usage)
		default:
			fs.String(f.name, "", f.usage)
		}
	}
}
