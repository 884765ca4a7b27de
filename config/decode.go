package config

import (
	"fmt"
	"maps"
	"math"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// decodeRoot decodes one layer's nested map over l.cfg. Every value the
// layer does not mention keeps its earlier value.
func (l *loader) decodeRoot(a loc, root map[string]any) {
	l.mapping(a, root, "", func(a loc, v any) {
		switch a.p[len(a.p)-1] {
		case "log":
			l.mapping(a, v, "log settings", func(a loc, v any) {
				switch a.p[len(a.p)-1] {
				case "paths":
					l.setStrings(a, v, &l.cfg.Log.Paths)
				case "format":
					l.setString(a, v, &l.cfg.Log.Format)
				case "start":
					l.setString(a, v, &l.cfg.Log.Start)
				case "trusted_proxies":
					l.setPrefixes(a, v, &l.cfg.Log.TrustedProxies)
				case "reorder":
					l.setDuration(a, v, &l.cfg.Log.Reorder)
				case "syslog":
					l.setSyslog(a, v)
				default:
					l.unknown(a)
				}
			})
		case "state_dir":
			l.setString(a, v, &l.cfg.StateDir)
		case "firewall":
			l.mapping(a, v, "firewall settings", func(a loc, v any) {
				switch a.p[len(a.p)-1] {
				case "backend":
					l.setString(a, v, &l.cfg.Firewall.Backend)
				case "chain":
					l.setString(a, v, &l.cfg.Firewall.Chain)
				case "table":
					l.setString(a, v, &l.cfg.Firewall.Table)
				case "hook":
					l.setString(a, v, &l.cfg.Firewall.Hook)
				case "protect":
					l.setBool(a, v, &l.cfg.Firewall.Protect)
				case "always_allow":
					l.setPrefixes(a, v, &l.cfg.Firewall.AlwaysAllow)
				case "ipv6":
					l.setBool(a, v, &l.cfg.Firewall.IPv6)
				case "max_grants":
					l.setInt(a, v, &l.cfg.Firewall.MaxGrants)
				case "max_grants_per_sequence":
					l.setInt(a, v, &l.cfg.Firewall.MaxGrantsPerSequence)
				case "max_grants_per_ipv4_24":
					l.setInt(a, v, &l.cfg.Firewall.MaxGrantsPerIPv4Net)
				case "max_grants_per_ipv6_64":
					l.setInt(a, v, &l.cfg.Firewall.MaxGrantsPerIPv6Net)
				case "check_interval":
					l.setDuration(a, v, &l.cfg.Firewall.CheckInterval)
				default:
					l.unknown(a)
				}
			})
		case "sequences":
			l.setSequences(a, v)
		case "lockout":
			l.mapping(a, v, "lockout settings", func(a loc, v any) {
				switch a.p[len(a.p)-1] {
				case "failures":
					l.setInt(a, v, &l.cfg.Lockout.Failures)
				case "period":
					l.setDuration(a, v, &l.cfg.Lockout.Period)
				case "duration":
					l.setDuration(a, v, &l.cfg.Lockout.Duration)
				default:
					l.unknown(a)
				}
			})
		case "hooks":
			l.mapping(a, v, "hooks settings", func(a loc, v any) {
				switch a.p[len(a.p)-1] {
				case "on_grant":
					l.setArgv(a, v, &l.cfg.Hooks.OnGrant)
				case "on_end":
					l.setArgv(a, v, &l.cfg.Hooks.OnEnd)
				case "on_lockout":
					l.setArgv(a, v, &l.cfg.Hooks.OnLockout)
				case "timeout":
					l.setDuration(a, v, &l.cfg.Hooks.Timeout)
				case "max_running":
					l.setInt(a, v, &l.cfg.Hooks.MaxRunning)
				default:
					l.unknown(a)
				}
			})
		case "web":
			l.mapping(a, v, "web settings", func(a loc, v any) {
				switch a.p[len(a.p)-1] {
				case "listen":
					l.setString(a, v, &l.cfg.Web.Listen)
				case "token_file":
					l.setString(a, v, &l.cfg.Web.TokenFile)
				case "socket":
					l.setString(a, v, &l.cfg.Web.Socket)
				default:
					l.unknown(a)
				}
			})
		case "fleet":
			l.setFleet(a, v)
		default:
			l.unknown(a)
		}
	})
}

func (l *loader) setSequences(a loc, v any) {
	var items []any
	switch v := v.(type) {
	case nil:
	case []any:
		items = v
	default:
		l.failf(a, "want a list of sequences, got %s", describe(v))
		return
	}
	var seqs []Sequence
	for i, item := range items {
		a := a.index(i)
		s := sequenceDefaults()
		if item == nil {
			l.failf(a, "want a mapping of sequence settings, got null")
		}
		l.mapping(a, item, "sequence settings", func(a loc, v any) {
			switch a.p[len(a.p)-1] {
			case "name":
				l.setString(a, v, &s.Name)
			case "steps":
				l.setStrings(a, v, &s.Steps)
			case "step_status":
				l.setStatuses(a, v, &s.StepStatus)
			case "methods":
				if l.setStrings(a, v, &s.Methods) {
					for j, m := range s.Methods {
						s.Methods[j] = strings.ToUpper(m)
					}
				}
			case "knock_page":
				l.setString(a, v, &s.KnockPage)
			case "knock_page_status":
				l.setStatuses(a, v, &s.KnockPageStatus)
			case "timeout":
				l.setDuration(a, v, &s.Timeout)
			case "window":
				l.setDuration(a, v, &s.Window)
			case "ports":
				l.setPorts(a, v, &s.Ports)
			case "close_page":
				l.setString(a, v, &s.ClosePage)
			case "close_kills_sessions":
				l.setBool(a, v, &s.CloseKillsSessions)
			case "close_on_connect":
				l.setBool(a, v, &s.CloseOnConnect)
			case "allow_from":
				l.setPrefixes(a, v, &s.AllowFrom)
			case "expires":
				l.setTime(a, v, &s.Expires)
			case "grant_prefix":
				l.mapping(a, v, "grant prefix lengths", func(a loc, v any) {
					switch a.p[len(a.p)-1] {
					case "ipv4":
						l.setInt(a, v, &s.GrantPrefix.IPv4)
					case "ipv6":
						l.setInt(a, v, &s.GrantPrefix.IPv6)
					default:
						l.unknown(a)
					}
				})
			case "one_time":
				ot := oneTimeDefaults()
				s.OneTime = &ot
				l.mapping(a, v, "one-time settings", func(a loc, v any) {
					switch a.p[len(a.p)-1] {
					case "key_file":
						l.setString(a, v, &ot.KeyFile)
					case "mode":
						l.setString(a, v, &ot.Mode)
					case "prefix":
						l.setString(a, v, &ot.Prefix)
					case "steps":
						l.setInt(a, v, &ot.Steps)
					case "period":
						l.setDuration(a, v, &ot.Period)
					case "skew":
						l.setInt(a, v, &ot.Skew)
					default:
						l.unknown(a)
					}
				})
			default:
				l.unknown(a)
			}
		})
		seqs = append(seqs, s)
	}
	l.cfg.Sequences = seqs
	l.set(a)
}

// mapping calls fn for each key of the mapping v, in order; null is an
// empty mapping.
func (l *loader) mapping(a loc, v any, what string, fn func(a loc, v any)) {
	var m map[string]any
	switch v := v.(type) {
	case nil:
		return
	case map[string]any:
		m = v
	case map[any]any:
		m = make(map[string]any, len(v))
		for k, x := range v {
			m[fmt.Sprint(k)] = x
		}
	default:
		l.failf(a, "want a mapping of %s, got %s", what, describe(v))
		return
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fn(a.key(k), m[k])
	}
}

func (l *loader) unknown(a loc) { l.failf(a, "unknown key") }

// set notes where the value at a now comes from.
func (l *loader) set(a loc) {
	if a.src.file {
		delete(l.origin, a.p.keyPath())
		return
	}
	l.origin[a.p.keyPath()] = a.src
}

// describe names a decoded value for a message.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("%q", v)
	case []any, []string:
		return "a list"
	case map[string]any, map[any]any:
		return "a mapping"
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1e15 {
			return fmt.Sprintf("%.1f", v) // 5.0, not 5: a float where an integer is wanted
		}
		return fmt.Sprint(v)
	case bool, int, int64, uint64:
		return fmt.Sprint(v)
	case time.Time:
		return "a timestamp"
	default:
		return fmt.Sprintf("a %T", v)
	}
}

// setString: null is the empty string.
func (l *loader) setString(a loc, v any, dst *string) {
	switch v := v.(type) {
	case nil:
		*dst = ""
	case string:
		*dst = v
	default:
		l.failf(a, "want a string, got %s", describe(v))
		return
	}
	l.set(a)
}

// list returns the items of a list value; null is the empty list.
func (l *loader) list(a loc, v any, what string) ([]any, bool) {
	switch v := v.(type) {
	case nil:
		return nil, true
	case []any:
		return v, true
	case []string:
		out := make([]any, len(v))
		for i, s := range v {
			out[i] = s
		}
		return out, true
	default:
		l.failf(a, "want a list of %s, got %s", what, describe(v))
		return nil, false
	}
}

// eachItem decodes every item of a list with dec, reporting each bad one,
// and stores the result only when all are good. An empty list is nil.
func eachItem[T any](l *loader, a loc, v any, what string, dst *[]T, dec func(a loc, item any) (T, bool)) bool {
	items, ok := l.list(a, v, what)
	if !ok {
		return false
	}
	var out []T
	for i, item := range items {
		x, good := dec(a.index(i), item)
		ok = ok && good
		out = append(out, x)
	}
	if !ok {
		l.failed[a.p.String()] = true
		return false
	}
	*dst = out
	l.set(a)
	return true
}

func (l *loader) setStrings(a loc, v any, dst *[]string) bool {
	return eachItem(l, a, v, "strings", dst, func(a loc, item any) (string, bool) {
		s, ok := item.(string)
		if !ok {
			l.failf(a, "want a string, got %s", describe(item))
		}
		return s, ok
	})
}

// setArgv: a command, each argument a string. A number must be quoted:
// what YAML makes of it (010, 1e3) need not be the text written.
func (l *loader) setArgv(a loc, v any, dst *[]string) bool {
	return eachItem(l, a, v, "arguments", dst, func(a loc, item any) (string, bool) {
		s, ok := item.(string)
		if !ok {
			l.failf(a, "want a string, got %s; quote it", describe(item))
		}
		return s, ok
	})
}

func (l *loader) setPrefixes(a loc, v any, dst *[]netip.Prefix) bool {
	return eachItem(l, a, v, "CIDRs", dst, func(a loc, item any) (netip.Prefix, bool) {
		s, ok := item.(string)
		if !ok {
			l.failf(a, "want a CIDR like \"192.0.2.0/24\" as a string, got %s", describe(item))
			return netip.Prefix{}, false
		}
		p, err := parsePrefix(s)
		if err != nil {
			l.failf(a, "bad CIDR %q: want an IP address or CIDR like \"192.0.2.0/24\" or \"2001:db8::/32\"", s)
			return netip.Prefix{}, false
		}
		return p, true
	})
}

// parsePrefix reads a CIDR, or a bare address as a /32 or /128, masked.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if addr.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("address %q has a zone", s)
	}
	// Clients are compared as IPv4 when they arrive as IPv4-mapped IPv6.
	addr = addr.Unmap()
	return netip.PrefixFrom(addr, addr.BitLen()), nil
}

func (l *loader) setStatuses(a loc, v any, dst *[]int) bool {
	return eachItem(l, a, v, "HTTP status codes", dst, func(a loc, item any) (int, bool) {
		n, ok := toInt(item)
		if !ok {
			l.failf(a, "want an HTTP status code like 404, got %s", describe(item))
		}
		return n, ok
	})
}

func (l *loader) setPorts(a loc, v any, dst *[]Port) bool {
	return eachItem(l, a, v, "ports", dst, func(a loc, item any) (Port, bool) {
		var s string
		switch item := item.(type) {
		case string:
			s = item
		case int, int64, uint64:
			s = fmt.Sprint(item)
		default:
			l.failf(a, "want a port like \"22/tcp\", got %s", describe(item))
			return Port{}, false
		}
		p, ok := parsePort(s)
		if !ok {
			l.failf(a, "bad port %q: want PORT, PORT/tcp or PORT/udp with PORT 1 to 65535", s)
		}
		return p, ok
	})
}

// parsePort reads "22/tcp", "53/udp" or "22" (tcp).
func parsePort(s string) (Port, bool) {
	num, proto, found := strings.Cut(s, "/")
	proto = strings.ToLower(proto)
	if !found {
		proto = "tcp"
	}
	if proto != "tcp" && proto != "udp" {
		return Port{}, false
	}
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return Port{}, false
	}
	return Port{Number: uint16(n), Proto: proto}, true
}

// toInt accepts an integer, or a string of one (from the environment).
func toInt(v any) (int, bool) {
	switch v := v.(type) {
	case int:
		return v, true
	case int64:
		if v >= math.MinInt && v <= math.MaxInt {
			return int(v), true
		}
	case uint64:
		if v <= math.MaxInt {
			return int(v), true
		}
	case string:
		n, err := strconv.Atoi(strings.TrimSpace(v))
		return n, err == nil
	}
	return 0, false
}

func (l *loader) setInt(a loc, v any, dst *int) {
	n, ok := toInt(v)
	if !ok {
		l.failf(a, "want an integer, got %s", describe(v))
		return
	}
	*dst = n
	l.set(a)
}

func (l *loader) setBool(a loc, v any, dst *bool) {
	var b bool
	switch v := v.(type) {
	case bool:
		b = v
	case string:
		var err error
		if b, err = strconv.ParseBool(strings.TrimSpace(v)); err != nil {
			l.failf(a, "want true or false, got %q", v)
			return
		}
	default:
		l.failf(a, "want true or false, got %s", describe(v))
		return
	}
	*dst = b
	l.set(a)
}

// bareNumber is a duration without a unit, which Go reads as nanoseconds
// only when it is 0; we refuse it always.
var bareNumber = regexp.MustCompile(`^[-+]?[0-9.]+$`)

func (l *loader) setDuration(a loc, v any, dst *time.Duration) {
	var s string
	switch v := v.(type) {
	case string:
		s = v
	case int, int64, uint64:
		s = fmt.Sprint(v)
	case float64:
		s = strconv.FormatFloat(v, 'g', -1, 64)
	default:
		l.failf(a, "want a duration like \"30s\", got %s", describe(v))
		return
	}
	if bareNumber.MatchString(s) {
		l.failf(a, "bad duration %q: missing unit; want e.g. \"30s\", \"10m\", \"1h30m\"", s)
		return
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		l.failf(a, "bad duration %q: want e.g. \"30s\", \"10m\", \"1h30m\"", s)
		return
	}
	*dst = d
	l.set(a)
}

// setTime reads an RFC 3339 time. YAML may have decoded an unquoted one
// already; a date alone is refused, its time zone would be a guess.
func (l *loader) setTime(a loc, v any, dst *time.Time) {
	var t time.Time
	switch v := v.(type) {
	case time.Time:
		t = v
	case string:
		var err error
		if t, err = time.Parse(time.RFC3339, strings.TrimSpace(v)); err != nil {
			l.failf(a, "bad time %q: want RFC 3339 with a time zone, like \"2027-01-31T18:00:00Z\"", v)
			return
		}
	default:
		l.failf(a, "want an RFC 3339 time like \"2027-01-31T18:00:00Z\", got %s", describe(v))
		return
	}
	*dst = t.UTC()
	l.set(a)
}
