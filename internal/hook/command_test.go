package hook

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// testVars are the values the table's expansions use.
var testVars = Vars{
	Event:    EventGrant,
	IP:       netip.MustParsePrefix("192.0.2.7/32"),
	Sequence: "ssh",
	Until:    time.Date(2026, 11, 22, 20, 11, 34, 0, time.FixedZone("CET", 3600)),
	Ports:    []string{"22/tcp", "443/tcp"},
}

var parseTests = []struct {
	name string
	argv []string
	vars *Vars // nil: testVars
	want []string
	err  string // in the error; "" for none
}{
	{name: "no placeholder", argv: []string{"/bin/echo", "hello", ""}, want: []string{"/bin/echo", "hello", ""}},
	{name: "every placeholder", argv: []string{"/bin/echo", "{ip}", "{sequence}", "{until}", "{ports}", "{event}"},
		want: []string{"/bin/echo", "192.0.2.7", "ssh", "2026-11-22T19:11:34Z", "22/tcp,443/tcp", "grant"}},
	{name: "inside a larger argument", argv: []string{"/usr/bin/curl", "--data-urlencode", "ip={ip}", "x{sequence}-{event}y"},
		want: []string{"/usr/bin/curl", "--data-urlencode", "ip=192.0.2.7", "xssh-granty"}},
	{name: "escaped braces", argv: []string{"/usr/bin/curl", "-d", `{{"ip":"{ip}","until":"{until}"}}`, "{{ip}}", "}}{{"},
		want: []string{"/usr/bin/curl", "-d", `{"ip":"192.0.2.7","until":"2026-11-22T19:11:34Z"}`, "{ip}", "}{"}},
	{name: "a widened grant's network", argv: []string{"/bin/echo", "{ip}"},
		vars: &Vars{IP: netip.MustParsePrefix("192.0.2.0/24")}, want: []string{"/bin/echo", "192.0.2.0/24"}},
	{name: "IPv6", argv: []string{"/bin/echo", "{ip}", "{ip}x"},
		vars: &Vars{IP: netip.MustParsePrefix("2001:db8::7/128")}, want: []string{"/bin/echo", "2001:db8::7", "2001:db8::7x"}},
	{name: "values never split or read again", argv: []string{"/bin/echo", "{sequence}", "a {event} b"},
		vars: &Vars{Sequence: "x y; {ip} $(id)", Event: "{event}"}, want: []string{"/bin/echo", "x y; {ip} $(id)", "a {event} b"}},
	{name: "a lockout: no until, no ports", argv: []string{"/bin/echo", "{until}", "{ports}", "{event}"},
		vars: &Vars{Event: EventLockout}, want: []string{"/bin/echo", "", "", "lockout"}},

	{name: "empty", argv: nil, err: "no command"},
	{name: "relative program", argv: []string{"echo", "x"}, err: `argument 0: program "echo" is not an absolute path`},
	{name: "placeholder in the program", argv: []string{"/usr/bin/{event}"}, err: `argument 0: program "/usr/bin/{event}" holds a placeholder`},
	{name: "unknown placeholder", argv: []string{"/bin/echo", "ip={addr}"}, err: `argument 1: unknown placeholder {addr} in "ip={addr}": want {ip}, {sequence}, {until}, {ports} or {event}`},
	{name: "placeholders are lower case", argv: []string{"/bin/echo", "{IP}"}, err: "unknown placeholder {IP}"},
	{name: "empty placeholder", argv: []string{"/bin/echo", "{}"}, err: "unknown placeholder {}"},
	{name: "unclosed brace", argv: []string{"/bin/echo", "ip={ip"}, err: `argument 1: unbalanced "{" at byte 3 of "ip={ip"`},
	{name: "brace inside a placeholder", argv: []string{"/bin/echo", "{ip{event}}"}, err: `unbalanced "{" at byte 0`},
	{name: "lone closing brace", argv: []string{"/bin/echo", "ip}"}, err: `argument 1: unbalanced "}" at byte 2 of "ip}"`},
	{name: "escape then a lone brace", argv: []string{"/bin/echo", "{{ip}"}, err: `unbalanced "}" at byte 4`},
	{name: "every bad argument named", argv: []string{"/bin/echo", "{a}", "ok", "{b}"},
		err: "argument 1: unknown placeholder {a} in \"{a}\": want {ip}, {sequence}, {until}, {ports} or {event}; write {{ and }} for a literal brace\n" +
			"argument 3: unknown placeholder {b}"},
}

func TestParse(t *testing.T) {
	for _, tt := range parseTests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(tt.argv)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Parse(%q) = %v, want an error with %q", tt.argv, err, tt.err)
				}
				if len(tt.argv) > 0 && !errors.As(err, new(*ArgError)) {
					t.Errorf("Parse(%q) error %v is no *ArgError", tt.argv, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q) = %v", tt.argv, err)
			}
			v := testVars
			if tt.vars != nil {
				v = *tt.vars
			}
			if got := c.Expand(v); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%q).Expand(%+v) = %q, want %q", tt.argv, v, got, tt.want)
			}
			if got := unparse(c); !reflect.DeepEqual(got, tt.argv) {
				t.Errorf("unparse(Parse(%q)) = %q", tt.argv, got)
			}
		})
	}
}

// unparse writes c back as Parse reads it.
func unparse(c *Command) []string {
	out := make([]string, len(c.args))
	for i, parts := range c.args {
		var b strings.Builder
		for _, p := range parts {
			if p.name != "" {
				b.WriteString("{" + p.name + "}")
			} else {
				b.WriteString(strings.NewReplacer("{", "{{", "}", "}}").Replace(p.text))
			}
		}
		out[i] = b.String()
	}
	return out
}

// FuzzParse: an argument either parses, and then reads back the same and
// expands to one argument that holds its values verbatim, or is refused
// with an *ArgError naming it.
func FuzzParse(f *testing.F) {
	for _, tt := range parseTests {
		for _, a := range tt.argv[min(1, len(tt.argv)):] {
			f.Add(a)
		}
	}
	f.Fuzz(func(t *testing.T, arg string) {
		c, err := Parse([]string{"/bin/echo", arg})
		if err != nil {
			var ae *ArgError
			if !errors.As(err, &ae) || ae.Arg != 1 {
				t.Fatalf("Parse(%q) = %v, want an *ArgError of argument 1", arg, err)
			}
			return
		}
		if got := unparse(c); got[1] != arg {
			t.Fatalf("unparse(Parse(%q)) = %q", arg, got[1])
		}
		// Values that look like placeholders and arguments stay text.
		odd := Vars{Event: "{ip} x", Sequence: "} {", Ports: []string{"a b", "{ports}"}}
		got := c.Expand(odd)
		if len(got) != 2 || got[0] != "/bin/echo" {
			t.Fatalf("Parse(%q).Expand = %q, want 2 arguments", arg, got)
		}
		if !strings.ContainsAny(arg, "{}") && got[1] != arg {
			t.Fatalf("Parse(%q).Expand = %q, want it unchanged", arg, got[1])
		}
	})
}
