package hook

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"
)

// The placeholders an argument may hold.
const (
	PlaceholderIP       = "ip"
	PlaceholderSequence = "sequence"
	PlaceholderUntil    = "until"
	PlaceholderPorts    = "ports"
	PlaceholderEvent    = "event"
)

// placeholders lists them in the order messages name them.
var placeholders = []string{PlaceholderIP, PlaceholderSequence, PlaceholderUntil, PlaceholderPorts, PlaceholderEvent}

const wantPlaceholders = "want {ip}, {sequence}, {until}, {ports} or {event}; write {{ and }} for a literal brace"

// Vars are the values of one event's placeholders.
type Vars struct {
	Event string // {event}: grant, lockout, or why a grant ended (expired, revoked, closed, policy)
	// IP is {ip}: the address the rule opens (a full-length prefix,
	// written as a bare address) or the network, when a sequence widens
	// its grants.
	IP       netip.Prefix
	Sequence string    // {sequence}
	Until    time.Time // {until}, in RFC 3339 UTC; zero: empty
	Ports    []string  // {ports}, comma separated: 22/tcp,443/tcp
}

// value returns the text of placeholder name.
func (v *Vars) value(name string) string {
	switch name {
	case PlaceholderIP:
		return formatIP(v.IP)
	case PlaceholderSequence:
		return v.Sequence
	case PlaceholderUntil:
		if v.Until.IsZero() {
			return ""
		}
		return v.Until.UTC().Format(time.RFC3339)
	case PlaceholderPorts:
		return strings.Join(v.Ports, ",")
	case PlaceholderEvent:
		return v.Event
	}
	return ""
}

// formatIP writes a single address without its prefix length, as the
// firewall rule has it.
func formatIP(p netip.Prefix) string {
	switch {
	case !p.IsValid():
		return ""
	case p.Bits() == p.Addr().BitLen():
		return p.Addr().String()
	}
	return p.String()
}

// part is a literal text or, when name is set, a placeholder.
type part struct {
	text, name string
}

// Command is one parsed argv: a fixed program and arguments that may hold
// placeholders.
type Command struct {
	args [][]part
}

// ArgError is a problem with one argument of a command (0 is the program).
type ArgError struct {
	Arg int
	Err error
}

func (e *ArgError) Error() string { return fmt.Sprintf("argument %d: %v", e.Arg, e.Err) }

func (e *ArgError) Unwrap() error { return e.Err }

// ErrNoCommand is the error of an empty argv.
var ErrNoCommand = errors.New("no command")

// Parse reads an argv whose arguments may hold placeholders. The program,
// argv[0], must be an absolute path without any. Every problem is
// returned, each an *ArgError, joined.
func Parse(argv []string) (*Command, error) {
	if len(argv) == 0 {
		return nil, ErrNoCommand
	}
	var errs []error
	c := &Command{args: make([][]part, len(argv))}
	for i, a := range argv {
		parts, err := parseArg(a)
		switch {
		case err != nil:
			errs = append(errs, &ArgError{Arg: i, Err: err})
		case i == 0 && !filepath.IsAbs(a):
			errs = append(errs, &ArgError{Arg: 0, Err: fmt.Errorf("program %q is not an absolute path", a)})
		case i == 0 && (len(parts) != 1 || parts[0].name != ""):
			errs = append(errs, &ArgError{Arg: 0, Err: fmt.Errorf("program %q holds a placeholder: the program must be fixed", a)})
		}
		c.args[i] = parts
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// parseArg splits one argument into literal text and placeholders.
func parseArg(s string) ([]part, error) {
	var parts []part
	var lit strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '{' && i+1 < len(s) && s[i+1] == '{', c == '}' && i+1 < len(s) && s[i+1] == '}':
			lit.WriteByte(c)
			i++
		case c == '}':
			return nil, fmt.Errorf(`unbalanced "}" at byte %d of %q: %s`, i, s, wantPlaceholders)
		case c == '{':
			end := strings.IndexAny(s[i+1:], "{}")
			if end < 0 || s[i+1+end] == '{' {
				return nil, fmt.Errorf(`unbalanced "{" at byte %d of %q: %s`, i, s, wantPlaceholders)
			}
			name := s[i+1 : i+1+end]
			if !known(name) {
				return nil, fmt.Errorf("unknown placeholder {%s} in %q: %s", name, s, wantPlaceholders)
			}
			if lit.Len() > 0 {
				parts = append(parts, part{text: lit.String()})
				lit.Reset()
			}
			parts = append(parts, part{name: name})
			i += end + 1
		default:
			lit.WriteByte(c)
		}
	}
	if lit.Len() > 0 || len(parts) == 0 {
		parts = append(parts, part{text: lit.String()})
	}
	return parts, nil
}

func known(name string) bool {
	for _, p := range placeholders {
		if p == name {
			return true
		}
	}
	return false
}

// Path returns the program.
func (c *Command) Path() string { return c.args[0][0].text }

// Expand returns the argv with the placeholders replaced by v's values.
// Each argument stays one argument, whatever its values hold: nothing is
// split again, and no shell ever reads it.
func (c *Command) Expand(v Vars) []string {
	out := make([]string, len(c.args))
	for i, parts := range c.args {
		var b strings.Builder
		for _, p := range parts {
			if p.name != "" {
				b.WriteString(v.value(p.name))
			} else {
				b.WriteString(p.text)
			}
		}
		out[i] = b.String()
	}
	return out
}
