package knock

import (
	"errors"
	"fmt"
	"hash"
	"hash/maphash"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultMaxClients bounds the client table when Config.MaxClients is 0.
// A full table of first steps takes about 16 MiB.
const DefaultMaxClients = 100000

// Sequence is one secret series of paths and what it opens.
type Sequence struct {
	Name            string
	Steps           []string      // >= 1 paths, in order
	StepStatus      []int         // a step advances only with one of these statuses
	Methods         []string      // upper case; hits with other methods never change anything
	KnockPage       string        // the final hit that grants
	KnockPageStatus []int         // nil/empty: any status
	Timeout         time.Duration // from the first step to the knock page
	Window          time.Duration // how long access lasts after the knock page
	Ports           []string      // opaque to knock, copied into grant events ("22/tcp")
	// OneTime, if set, derives the paths from a key and the time step:
	// in hmac mode every step and the knock page (Steps and KnockPage stay
	// empty), in totp mode the knock page only (after the static Steps).
	OneTime *OneTime
	// ClosePage, if set, ends the grant of the client that requests it
	// (with one of Methods, whatever the status).
	ClosePage string
	// AllowFrom lists the networks that may be granted; empty: any.
	AllowFrom []netip.Prefix
	// Expires, if set, is when the sequence stops granting; no grant of
	// it lasts beyond.
	Expires time.Time
	// GrantBits4 and GrantBits6 widen a grant to the client's network of
	// that many bits; 0 grants the client's address alone.
	GrantBits4, GrantBits6 int
}

// source returns what a grant of s to client opens: the client's address,
// or its network when s widens grants.
func (s *Sequence) source(client netip.Addr) netip.Prefix {
	bits := s.GrantBits6
	if client.Is4() {
		bits = s.GrantBits4
	}
	if bits == 0 {
		bits = client.BitLen()
	}
	p, _ := client.Prefix(bits) // bits is checked by New
	return p
}

// allows reports whether s may grant to client at time at, and if not, why.
func (s *Sequence) allows(client netip.Addr, at time.Time) (bool, string) {
	if len(s.AllowFrom) > 0 && !slices.ContainsFunc(s.AllowFrom, func(p netip.Prefix) bool { return p.Contains(client) }) {
		return false, DeniedSource
	}
	if !s.Expires.IsZero() && !at.Before(s.Expires) {
		return false, DeniedExpired
	}
	return true, ""
}

// until returns when a grant of s made at time at ends: after the window,
// or when the sequence expires, whichever comes first.
func (s *Sequence) until(at time.Time) time.Time {
	u := at.Add(s.Window)
	if !s.Expires.IsZero() && s.Expires.Before(u) {
		return s.Expires
	}
	return u
}

// Why a knock page was refused (Event.Reason of KindDenied).
const (
	DeniedSource  = "allow_from" // the client is outside the sequence's allow_from
	DeniedExpired = "expired"    // the sequence has expired
)

// Mode says which paths of a one-time sequence are derived.
type Mode uint8

// The one-time modes of DESIGN.md.
const (
	ModeHMAC Mode = iota + 1 // steps and knock page: Prefix + Token
	ModeTOTP                 // knock page only: Prefix + Code
)

// String returns the mode's name in the configuration.
func (m Mode) String() string {
	switch m {
	case ModeHMAC:
		return "hmac"
	case ModeTOTP:
		return "totp"
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// OneTime makes a sequence's paths one-time (DESIGN.md, "One-time sequences").
type OneTime struct {
	Mode   Mode
	Key    []byte // KeyBytes bytes
	Prefix string // every derived path starts with it
	Steps  int    // hmac: derived steps before the derived knock page
	// Period is the time step: whole seconds; TOTPPeriod in totp mode.
	Period time.Duration
	Skew   int // time steps accepted either side of the line's own
}

// steps returns the number of steps before the knock page.
func (s *Sequence) steps() int {
	if s.OneTime != nil && s.OneTime.Mode == ModeHMAC {
		return s.OneTime.Steps
	}
	return len(s.Steps)
}

// PathsAt returns the paths a client requests at time at, in order (the
// steps, then the knock page), and the time step T that one-time paths
// carry (0 for a static sequence).
func (s *Sequence) PathsAt(at time.Time) ([]string, int64) {
	ot := s.OneTime
	if ot == nil {
		return append(slices.Clone(s.Steps), s.KnockPage), 0
	}
	t := TimeStep(at, ot.Period)
	if ot.Mode == ModeTOTP {
		return append(slices.Clone(s.Steps), ot.Prefix+Code(ot.Key, t)), t
	}
	paths := make([]string, ot.Steps+1)
	for i := range paths {
		paths[i] = ot.Prefix + Token(ot.Key, s.Name, i+1, t)
	}
	return paths, t
}

// Lockout ignores an address that fails too often.
type Lockout struct {
	Failures int           // 0 disables lockout
	Period   time.Duration // failures counted within this period
	Duration time.Duration // how long the address is then ignored
}

// Config is everything a Tracker needs.
type Config struct {
	Sequences []Sequence
	Lockout   Lockout
	// MaxClients bounds the client table; 0 means DefaultMaxClients. When
	// it is full, first steps are evicted before clients that got further
	// (see the package documentation).
	MaxClients int
}

// New checks cfg and returns an empty Tracker. The error lists every problem.
func New(cfg Config) (*Tracker, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	maxClients := cfg.MaxClients
	switch {
	case maxClients == 0:
		maxClients = DefaultMaxClients
	case maxClients < 0:
		bad("max clients: %d is negative", maxClients)
	}
	lo := cfg.Lockout
	switch {
	case lo.Failures < 0:
		bad("lockout: failures: %d is negative", lo.Failures)
	case lo.Failures > 0:
		if lo.Period <= 0 {
			bad("lockout: period: %v is not positive", lo.Period)
		}
		if lo.Duration <= 0 {
			bad("lockout: duration: %v is not positive", lo.Duration)
		}
	}
	if len(cfg.Sequences) == 0 {
		bad("sequences: none")
	}

	t := &Tracker{
		paths:   make(map[uint64][]pathRef),
		seed:    maphash.MakeSeed(),
		lockout: lo,
		max:     maxClients,
		// A quarter of the table, rounded, is kept for first steps.
		maxProtected: maxClients - (maxClients+2)/4,
		clients:      make(map[netip.Addr]*entry),
	}
	for c := range t.lists {
		r := &t.lists[c].root
		r.next, r.prev = r, r
	}
	owner := make(map[string]string) // path → where it is used, for the error
	names := make(map[string]bool)
	for i, s := range cfg.Sequences {
		where := fmt.Sprintf("sequence %q", s.Name)
		if s.Name == "" {
			where = fmt.Sprintf("sequence %d", i)
		}
		if names[s.Name] {
			// Events name their sequence; two alike would be ambiguous.
			bad("%s: name used twice", where)
		}
		names[s.Name] = true
		ot := s.OneTime
		switch {
		case ot == nil && len(s.Steps) == 0, ot != nil && ot.Mode == ModeTOTP && len(s.Steps) == 0:
			bad("%s: steps: none", where)
		case ot != nil && ot.Mode == ModeHMAC && len(s.Steps) > 0:
			bad("%s: steps: hmac mode derives its steps; want none", where)
		case len(s.Steps) > maxSteps:
			bad("%s: steps: %d, more than %d", where, len(s.Steps), maxSteps)
		}
		if ot != nil {
			for _, msg := range checkOneTime(ot) {
				bad("%s: one-time: %s", where, msg)
			}
			if s.KnockPage != "" {
				bad("%s: knock page: a one-time sequence derives it; want none", where)
			}
			ot = cloneOneTime(ot)
			s.OneTime = ot
		}
		addPath := func(field, path string, step int32) {
			switch {
			case path == "":
				bad("%s: %s: empty path", where, field)
			case owner[path] != "":
				bad("%s: %s: path %q already used by %s", where, field, path, owner[path])
			default:
				owner[path] = where + " " + field
				h := maphash.String(t.seed, path)
				t.paths[h] = append(t.paths[h], pathRef{path: path, seq: int32(i), step: step, t: noStep})
			}
		}
		for j, p := range s.Steps {
			addPath(fmt.Sprintf("steps[%d]", j), p, int32(j))
		}
		if ot == nil {
			addPath("knock page", s.KnockPage, knockPage)
		}
		if s.ClosePage != "" {
			addPath("close page", s.ClosePage, closePage)
		}
		if s.GrantBits4 < 0 || s.GrantBits4 > 32 {
			bad("%s: grant bits: IPv4 /%d is not a prefix length", where, s.GrantBits4)
		}
		if s.GrantBits6 < 0 || s.GrantBits6 > 128 {
			bad("%s: grant bits: IPv6 /%d is not a prefix length", where, s.GrantBits6)
		}
		for _, p := range s.AllowFrom {
			if !p.IsValid() {
				bad("%s: allow from: an invalid network", where)
			}
		}
		if len(s.StepStatus) == 0 {
			bad("%s: step status: none, no step could ever advance", where)
		}
		if len(s.Methods) == 0 {
			bad("%s: methods: none, no hit could ever knock", where)
		}
		for _, m := range s.Methods {
			// Hits are compared byte for byte; "get" would silently never match.
			if m == "" || m != strings.ToUpper(m) {
				bad("%s: methods: %q is not an upper-case method", where, m)
			}
		}
		if s.Timeout <= 0 {
			bad("%s: timeout: %v is not positive", where, s.Timeout)
		}
		if s.Window <= 0 {
			bad("%s: window: %v is not positive", where, s.Window)
		}
		// Own copies: a caller reusing its slices must not change a running tracker.
		s.Steps = slices.Clone(s.Steps)
		s.StepStatus = slices.Clone(s.StepStatus)
		s.Methods = slices.Clone(s.Methods)
		s.KnockPageStatus = slices.Clone(s.KnockPageStatus)
		s.Ports = slices.Clone(s.Ports)
		s.AllowFrom = slices.Clone(s.AllowFrom)
		t.seqs = append(t.seqs, s)
	}
	t.used = make([]int64, len(t.seqs))
	t.cache = make([][]derivedStep, len(t.seqs))
	t.macs = make([]hash.Hash, len(t.seqs))
	t.derived = make(map[uint64][]pathRef)
	t.grants = make(map[grantKey]time.Time)
	for i, s := range t.seqs {
		t.used[i] = noStep
		ot := s.OneTime
		if ot == nil {
			continue
		}
		// A static path with the shape of a one-time path could be taken
		// for one (or the other way round).
		for _, p := range slices.Sorted(maps.Keys(owner)) {
			if LooksOneTime(p, ot.Prefix, ot.Mode) {
				bad("%s: path %q has the shape of a one-time path of sequence %q", owner[p], p, s.Name)
			}
		}
		t.prefixes.add(ot.Prefix, int32(i))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("knock config: %w", errors.Join(errs...))
	}
	return t, nil
}

// Limits on what a progress entry holds.
const (
	maxSteps = math.MaxInt16 - 1 // steps before the knock page
	maxSkew  = math.MaxInt8      // time steps either side
)

// checkOneTime returns the problems of ot.
func checkOneTime(ot *OneTime) []string {
	var out []string
	bad := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	if len(ot.Key) != KeyBytes {
		bad("key: %d bytes, want %d", len(ot.Key), KeyBytes)
	}
	if !strings.HasPrefix(ot.Prefix, "/") {
		bad("prefix: %q does not start with /", ot.Prefix)
	}
	if ot.Period < time.Second || ot.Period%time.Second != 0 {
		bad("period: %v is not a positive number of whole seconds", ot.Period)
	}
	if ot.Skew < 0 || ot.Skew > maxSkew {
		bad("skew: %d, want 0 to %d", ot.Skew, maxSkew)
	}
	switch ot.Mode {
	case ModeHMAC:
		if ot.Steps < 1 || ot.Steps > maxSteps {
			bad("steps: %d, want 1 to %d", ot.Steps, maxSteps)
		}
	case ModeTOTP:
		if ot.Period != TOTPPeriod {
			bad("period: %v; totp mode uses %v", ot.Period, TOTPPeriod)
		}
	default:
		bad("mode: %v", ot.Mode)
	}
	return out
}

// cloneOneTime returns a copy of ot that shares nothing with it.
func cloneOneTime(ot *OneTime) *OneTime {
	c := *ot
	c.Key = slices.Clone(ot.Key)
	return &c
}
