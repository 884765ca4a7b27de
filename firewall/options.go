package firewall

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Sequence is what the configuration allows one knock sequence to open:
// its ports, for at most its window from now.
type Sequence struct {
	Name   string
	Ports  []Port
	Window time.Duration
	// CloseOnConnect: the first new connection from the granted address
	// to a port ends that port's grant, in the kernel's packet path
	// (nftables only). A grant to a network is not closed on connect.
	CloseOnConnect bool
}

// OptionError is a problem with one option. Option is the configuration key
// below `firewall.` ("backend", "chain", "hook", "always_allow", "ipv6",
// "max_grants", a Cap),
// or a top-level key: "state_dir", or "sequences" for the ports and windows
// of the sequences.
type OptionError struct {
	Option string
	Err    error
}

func (e *OptionError) Error() string {
	switch e.Option {
	case "state_dir", "sequences":
		return e.Option + ": " + e.Err.Error()
	}
	return "firewall." + e.Option + ": " + e.Err.Error()
}

func (e *OptionError) Unwrap() error { return e.Err }

func optErr(option string, format string, args ...any) error {
	return &OptionError{Option: option, Err: fmt.Errorf(format, args...)}
}

// nameRe is what iptables accepts as a chain name, less oddities: no
// leading `-` or `!` that would read as an option or a negation.
var nameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,27}$`)

// builtin are the chains iptables defines in some table; targets are names
// a chain cannot take because -j would mean the target.
var (
	builtin = []string{"INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"}
	targets = []string{"ACCEPT", "DROP", "REJECT", "RETURN", "QUEUE", "NFQUEUE", "LOG", "MARK", "CONNMARK", "TRACE"}
)

// CheckOptions checks o without touching the kernel or the file system, as
// `webknock check` and Open do: every problem, each an *OptionError, joined.
func CheckOptions(o Options) error {
	var errs []error
	switch o.Backend {
	case "", backendIPTables, backendNFTables, backendDryRun:
	default:
		errs = append(errs, optErr("backend", "unknown backend %q: want %s, %s or %s", o.Backend, backendIPTables, backendNFTables, backendDryRun))
	}
	for _, s := range o.Sequences {
		if s.CloseOnConnect && o.Backend != backendNFTables {
			errs = append(errs, optErr("sequences", "sequence %q: close_on_connect needs firewall.backend %s: the first connection ends the grant in the kernel's packet path, by deleting a set element; an iptables rule cannot delete itself", s.Name, backendNFTables))
		}
	}
	if o.Backend == backendNFTables {
		errs = append(errs, checkNFTNames(o)...)
	} else {
		errs = append(errs, checkIPTNames(o)...)
	}
	for _, n := range o.AlwaysAllow {
		if !n.IsValid() {
			errs = append(errs, optErr("always_allow", "bad network %s", n))
		}
	}
	for _, l := range []struct {
		option string
		n      int
	}{
		{"max_grants", o.MaxGrants},
		{CapSequence.String(), o.MaxGrantsPerSequence},
		{CapIPv4Net.String(), o.MaxGrantsPerIPv4Net},
		{CapIPv6Net.String(), o.MaxGrantsPerIPv6Net},
	} {
		if l.n > maxMaxGrants {
			errs = append(errs, optErr(l.option, "%d grants: at most %d allowed, what the state file holds", l.n, maxMaxGrants))
		}
	}
	if o.StateDir != "" && !filepath.IsAbs(o.StateDir) {
		errs = append(errs, optErr("state_dir", "%q is relative; want an absolute path like /var/lib/webknock", o.StateDir))
	}
	for _, p := range o.Ports {
		if err := p.check(); err != nil {
			errs = append(errs, &OptionError{Option: "sequences", Err: err})
		}
	}
	names := map[string]bool{}
	for _, s := range o.Sequences {
		switch {
		case !seqRe.MatchString(s.Name):
			errs = append(errs, optErr("sequences", "bad sequence name %q: want 1 to 32 characters of A-Z a-z 0-9 _ -", s.Name))
		case names[s.Name]:
			errs = append(errs, optErr("sequences", "sequence %q named twice", s.Name))
		}
		names[s.Name] = true
		if s.Window <= 0 {
			errs = append(errs, optErr("sequences", "sequence %q: window %s: want a positive duration", s.Name, s.Window))
		}
		if len(s.Ports) == 0 {
			errs = append(errs, optErr("sequences", "sequence %q: no ports", s.Name))
		}
		for _, p := range s.Ports {
			if err := p.check(); err != nil {
				errs = append(errs, optErr("sequences", "sequence %q: %w", s.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// where names our rules for the log: the chain (iptables) or the table
// (nftables).
func (o *Options) where() (key, name string) {
	if o.Backend == backendNFTables {
		return keyTable, "inet " + o.Table
	}
	return keyChain, o.Chain
}

// tableRe is what webknock accepts as an nftables table name.
var tableRe = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,31}$`)

// checkNFTNames checks the table and the hook of the nftables backend.
func checkNFTNames(o Options) []error {
	var errs []error
	if t := cmp.Or(o.Table, defaultTable); !tableRe.MatchString(t) {
		errs = append(errs, optErr("table", "%q is not a table name webknock accepts: want 1 to 32 characters of A-Z a-z 0-9 _ -, the first a letter", t))
	}
	switch h := strings.ToLower(cmp.Or(o.Hook, nftHookInput)); h {
	case nftHookInput, nftHookForward:
	default:
		hint := ""
		if o.Hook == "DOCKER-USER" {
			hint = "; for Docker's containers, forward"
		}
		errs = append(errs, optErr("hook", "%q is not an nftables hook webknock uses: want input or forward%s", o.Hook, hint))
	}
	return errs
}

// checkIPTNames checks the chain and the hook of the iptables backend
// (and of dry-run, which mimics it).
func checkIPTNames(o Options) []error {
	var errs []error
	chain, hook := cmp.Or(o.Chain, defaultChain), cmp.Or(o.Hook, defaultHook)
	chainOK := true
	switch upper := strings.ToUpper(chain); {
	case !nameRe.MatchString(chain):
		chainOK = false
		errs = append(errs, optErr("chain", "%q is not a chain name iptables accepts: want 1 to 28 characters of A-Z a-z 0-9 _ . -, the first a letter or digit", chain))
	case slices.Contains(builtin, upper):
		chainOK = false
		errs = append(errs, optErr("chain", "%q is a built-in chain; webknock needs a chain of its own, such as %s", chain, defaultChain))
	case slices.Contains(targets, upper):
		chainOK = false
		errs = append(errs, optErr("chain", "%q is the name of a target; choose another, such as %s", chain, defaultChain))
	}
	switch upper := strings.ToUpper(hook); {
	case !nameRe.MatchString(hook):
		errs = append(errs, optErr("hook", "%q is not a chain name iptables accepts: want 1 to 28 characters of A-Z a-z 0-9 _ . -, the first a letter or digit", hook))
	case slices.Contains(builtin, upper) && hook != upper:
		// iptables names are case-sensitive: "input" would be a user chain
		// that nothing jumps to.
		errs = append(errs, optErr("hook", "%q names no chain of table filter; did you mean %s?", hook, upper))
	case hook == "PREROUTING" || hook == "POSTROUTING":
		errs = append(errs, optErr("hook", "%s is not a chain of table filter; want INPUT, FORWARD or a user chain such as DOCKER-USER", hook))
	case hook == "OUTPUT":
		errs = append(errs, optErr("hook", "OUTPUT sees only what this host sends; want INPUT, FORWARD or a user chain such as DOCKER-USER"))
	case slices.Contains(targets, upper):
		errs = append(errs, optErr("hook", "%q is the name of a target, not a chain", hook))
	case chainOK && hook == chain:
		errs = append(errs, optErr("chain", "chain and hook are both %q: the hook is the chain that jumps to webknock's own", chain))
	}
	return errs
}

// Defaults of Options.
const (
	defaultChain   = "WEBKNOCK"
	defaultHook    = "INPUT"
	defaultTable   = "webknock"
	nftHookInput   = "input"
	nftHookForward = "forward"
	// nftCheckInterval is the nftables backend's slow listing: the
	// netlink monitor tells of changes at once; the listing catches what
	// it cannot see (elements used by a connection).
	nftCheckInterval = 30 * time.Second
	defaultLockWait  = 5 * time.Second
	// defaultCheckInterval is the iptables backend's: a check lists the
	// hook and our chain (two iptables runs) and the grant sets; with
	// iptables-nft the monitor tells of changes to the chain at once.
	defaultCheckInterval = time.Minute
	defaultMaxGrants     = 1 << 16
	// A leaked static sequence can take at most this many of the table's
	// places; every other sequence keeps the rest.
	defaultMaxPerSequence = 1024
	// One /24 or /64 is one site, one NAT pool, one LAN: 64 people knocking
	// at once from one is already a crowd.
	defaultMaxPerIPv4Net = 64
	defaultMaxPerIPv6Net = 64
	// maxMaxGrants is the most any of the bounds may be: the state file
	// holds that many grants, with room for the revokes.
	maxMaxGrants = maxStateBytes / 512
)

// normalize checks o (CheckOptions) and applies the defaults.
func (o Options) normalize() (Options, error) {
	if err := CheckOptions(o); err != nil {
		return o, err
	}
	o.Backend = cmp.Or(o.Backend, backendIPTables)
	o.Chain = cmp.Or(o.Chain, defaultChain)
	o.Table = cmp.Or(o.Table, defaultTable)
	if o.Backend == backendNFTables {
		o.Hook = strings.ToLower(cmp.Or(o.Hook, nftHookInput))
		if o.CheckInterval <= 0 {
			o.CheckInterval = nftCheckInterval
		}
	}
	o.Hook = cmp.Or(o.Hook, defaultHook)
	o.Ports = uniquePorts(o.Ports)
	var allow []netip.Prefix
	for _, n := range o.AlwaysAllow {
		if n.Addr().Is4In6() && n.Bits() >= 96 {
			n = netip.PrefixFrom(n.Addr().Unmap(), n.Bits()-96)
		}
		n = n.Masked()
		if !slices.Contains(allow, n) {
			allow = append(allow, n)
		}
	}
	o.AlwaysAllow = allow
	if o.Sequences != nil {
		seqs := make([]Sequence, len(o.Sequences))
		for i, s := range o.Sequences {
			seqs[i] = Sequence{Name: s.Name, Ports: uniquePorts(s.Ports), Window: s.Window, CloseOnConnect: s.CloseOnConnect}
		}
		o.Sequences = seqs
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.LockWait <= 0 {
		o.LockWait = defaultLockWait
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = o.LockWait + 5*time.Second
	}
	if o.CheckInterval <= 0 {
		o.CheckInterval = defaultCheckInterval
	}
	if o.MaxGrants <= 0 {
		o.MaxGrants = defaultMaxGrants
	}
	if o.MaxGrantsPerSequence <= 0 {
		o.MaxGrantsPerSequence = defaultMaxPerSequence
	}
	if o.MaxGrantsPerIPv4Net <= 0 {
		o.MaxGrantsPerIPv4Net = defaultMaxPerIPv4Net
	}
	if o.MaxGrantsPerIPv6Net <= 0 {
		o.MaxGrantsPerIPv6Net = defaultMaxPerIPv6Net
	}
	return o, nil
}

func uniquePorts(ps []Port) []Port {
	var out []Port
	for _, p := range ps {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// policy is what the configured sequences allow. Its zero value allows
// everything: no sequences given (Flush, tests of the mechanics).
type policy struct {
	seqs    map[string]Sequence // nil: no policy
	longest time.Duration       // the longest window
}

func newPolicy(ss []Sequence) policy {
	if ss == nil {
		return policy{}
	}
	p := policy{seqs: make(map[string]Sequence, len(ss))}
	for _, s := range ss {
		p.seqs[s.Name] = s
		p.longest = max(p.longest, s.Window)
	}
	return p
}

// door tells whether g's entries close on the first connection: its
// sequence says so, and it opens to one address.
func (p policy) door(g Grant) bool {
	return p.seqs[g.Sequence].CloseOnConnect && g.Bits == 0
}

// verdict is what the policy makes of a grant.
type verdict struct {
	g       Grant  // the grant as allowed: ports outside left out, until cut
	unknown bool   // its sequence is not configured
	dropped []Port // ports the sequence does not have
	cut     time.Duration
}

// judge checks g against the policy at wall-clock time now. It is the one
// place the configuration is applied to a grant; the callers differ only in
// what they do about its verdict: a new grant is refused or cut, a loaded
// one dropped, one of a reconfigured sequence revoked or trimmed.
func (p policy) judge(g Grant, now time.Time) verdict {
	v := verdict{g: g}
	if p.seqs == nil {
		return v
	}
	s, ok := p.seqs[g.Sequence]
	if !ok {
		v.unknown = true
		return v
	}
	v.g.Ports = nil
	for _, port := range g.Ports {
		if slices.Contains(s.Ports, port) {
			v.g.Ports = append(v.g.Ports, port)
		} else {
			v.dropped = append(v.dropped, port)
		}
	}
	// Rules hold whole seconds: the limit is rounded down, never up.
	if limit := now.Add(s.Window).Truncate(time.Second).UTC(); g.Until.After(limit) {
		v.cut = g.Until.Sub(limit)
		v.g.Until = limit
	}
	return v
}

// reason says in a few words why a loaded grant is dropped, or "".
func (v verdict) reason() string {
	switch {
	case v.unknown:
		return "its sequence is not configured"
	case len(v.g.Ports) == 0:
		return "none of its ports belongs to its sequence"
	case v.cut > 0:
		return "it ends later than now plus its sequence's window"
	}
	return ""
}
