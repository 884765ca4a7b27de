package weblog

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
)

// Preset log formats, parsed by the scanner in this file.
const (
	Common        = "common"         // %h %l %u %t "%r" %>s %b
	Combined      = "combined"       // common "%{Referer}i" "%{User-Agent}i"
	VHostCombined = "vhost_combined" // %v:%p combined
)

type preset uint8

const (
	custom preset = iota
	common
	combined
	vhostCombined
)

// Parser turns access log lines of one format into Requests. It is not safe
// for concurrent use: give each goroutine its own.
type Parser struct {
	preset         preset
	custom         *customFormat
	hasXFF         bool
	trustedProxies []netip.Prefix
	zones          zoneCache
}

// NewParser compiles a format: a preset name or an nginx log_format string.
// trusted lists our own reverse proxies; see clientOf.
func NewParser(format string, trusted []netip.Prefix) (*Parser, error) {
	p := &Parser{trustedProxies: trusted}
	switch format {
	case Common:
		p.preset = common
	case Combined:
		p.preset = combined
	case VHostCombined:
		p.preset = vhostCombined
	default:
		if err := notAFormat(format); err != nil {
			return nil, err
		}
		cf, err := compileCustom(format)
		if err != nil {
			return nil, err
		}
		p.custom, p.hasXFF = cf, cf.has("http_x_forwarded_for")
	}
	if len(trusted) > 0 && !p.hasXFF {
		return nil, fmt.Errorf("trusted_proxies is set but the format has no $http_x_forwarded_for: every request would come from the proxy")
	}
	return p, nil
}

// nginxMainFormat is the format nginx.conf ships under the name main.
const nginxMainFormat = `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" "$http_x_forwarded_for"`

// notAFormat explains a format with no $variable, which cannot be a usable
// nginx log_format string: most often the name of one, or of a server.
func notAFormat(format string) error {
	word := strings.TrimSpace(format)
	if word == "" || strings.Contains(format, "$") {
		return nil // compileCustom explains
	}
	switch lower := strings.ToLower(word); lower {
	case "main":
		return fmt.Errorf("%q is the name nginx.conf gives its default log_format, not a format: "+
			"for a log written with access_log ... main, paste the format itself: format: '%s' "+
			"(combined is the built-in equivalent without the last field, $http_x_forwarded_for: what nginx writes when access_log names no format)",
			word, nginxMainFormat)
	case Common, Combined, VHostCombined:
		return fmt.Errorf("unknown format %q: the names are in lower case: %s", word, lower)
	case "nginx":
		return fmt.Errorf("%q is not a format: nginx writes combined when access_log names no format; "+
			"else paste the string of the log_format it names (for main: '%s')", word, nginxMainFormat)
	case "apache", "apache2", "httpd":
		return fmt.Errorf("%q is not a format: Apache writes the format its CustomLog line names: "+
			"usually combined, common, or vhost_combined (other_vhosts_access.log)", word)
	}
	if strings.Contains(word, "%") {
		return fmt.Errorf("%q looks like an Apache LogFormat string: name the format instead: "+
			"combined, common or vhost_combined", word)
	}
	return fmt.Errorf("unknown format %q: want combined, common, vhost_combined or an nginx log_format string "+
		"(with $variables; the name of a log_format will not do: paste its string)", word)
}

// CheckFormat reports whether format can be parsed: a preset or a usable
// nginx log_format string.
func CheckFormat(format string) error {
	_, err := NewParser(format, nil)
	return err
}

// Parse parses one line (without its newline). A line that does not match
// the format exactly, anchored at both ends, is refused: text inside one
// field can never be read as another. For a line that parses but whose
// client may not knock (reasons loopback, unroutable, forwarded) the Request
// is returned along with the error.
func (p *Parser) Parse(line []byte) (Request, error) {
	if len(line) > MaxLineBytes {
		return Request{}, errorf(ReasonOverlong, "line of %d bytes exceeds %d", len(line), MaxLineBytes)
	}
	var (
		r      Request
		remote string
		xff    string
		perr   *ParseError
	)
	if p.custom != nil {
		remote, xff, perr = p.custom.parse(line, &r, &p.zones)
	} else {
		remote, perr = p.parsePreset(line, &r)
	}
	if perr != nil {
		return Request{}, perr
	}
	a, perr := parseRemote(remote)
	if perr != nil {
		return Request{}, perr
	}
	r.RemoteAddr = a
	r.Client, perr = p.clientOf(a, xff)
	if perr != nil {
		return r, perr
	}
	return r, nil
}

var errFormat = &ParseError{Reason: ReasonFormat, Msg: "line does not match the log format"}

// parsePreset scans the Apache/nginx common family:
//
//	[vhost:port ]client - user [02/Jan/2006:15:04:05 -0700] "request" status bytes[ "referer" "user agent"]
func (p *Parser) parsePreset(s []byte, r *Request) (remote string, _ *ParseError) {
	if p.preset == vhostCombined {
		i := bytes.IndexByte(s, ' ')
		if i <= 0 {
			return "", errFormat
		}
		v, ok := unescape(s[:i])
		c := strings.LastIndexByte(v, ':')
		if !ok || c < 1 {
			return "", errFormat
		}
		if port, ok := digits([]byte(v[c+1:])); !ok || port > 65535 {
			return "", errFormat
		}
		r.VHost, s = v, s[i+1:]
	}
	i := bytes.IndexByte(s, ' ')
	if i <= 0 {
		return "", errFormat
	}
	remote, s = string(s[:i]), s[i+1:]
	if !bytes.HasPrefix(s, []byte("- ")) {
		return "", errFormat
	}
	s = s[2:]
	// $remote_user is unquoted and may hold spaces and brackets, but never an
	// unescaped '"': the first `] "` ends the timestamp before the request.
	j := bytes.Index(s, []byte(`] "`))
	k := j - timeLocalLen - 2 // index of the space before '['
	if j < 0 || k < 0 || s[k] != ' ' || s[k+1] != '[' {
		return "", errFormat
	}
	user, ok := unescape(s[:k])
	if !ok {
		return "", errFormat
	}
	r.User = user
	t, ok := parseTimeLocal(s[k+2:j], &p.zones)
	if !ok {
		return "", errorf(ReasonTime, "bad timestamp %q", s[k+2:j])
	}
	r.Time = t
	s = s[j+3:]
	e := quotedEnd(s)
	if e < 0 {
		return "", errFormat
	}
	req, ok := unescape(s[:e])
	if !ok {
		return "", errFormat
	}
	r.splitRequestLine(req)
	s = s[e+1:]
	// " status bytes"
	if len(s) == 0 || s[0] != ' ' {
		return "", errFormat
	}
	s = s[1:]
	i = bytes.IndexByte(s, ' ')
	if i < 0 {
		return "", errFormat
	}
	status, ok := parseStatus(s[:i])
	if !ok {
		return "", errFormat
	}
	r.Status = status
	s = s[i+1:]
	if p.preset == common {
		if r.Bytes, ok = number(s, -1); !ok {
			return "", errFormat
		}
		return remote, nil
	}
	i = bytes.IndexByte(s, ' ')
	if i < 0 {
		return "", errFormat
	}
	if r.Bytes, ok = number(s[:i], -1); !ok {
		return "", errFormat
	}
	s = s[i+1:]
	// "referer" "user agent" and the end of the line
	if len(s) < 2 || s[0] != '"' {
		return "", errFormat
	}
	e = quotedEnd(s[1:])
	if e < 0 {
		return "", errFormat
	}
	if r.Referer, ok = unescape(s[1 : e+1]); !ok {
		return "", errFormat
	}
	s = s[e+2:]
	if len(s) < 3 || s[0] != ' ' || s[1] != '"' {
		return "", errFormat
	}
	e = quotedEnd(s[2:])
	if e < 0 || e+3 != len(s) {
		return "", errFormat
	}
	if r.UserAgent, ok = unescape(s[2 : e+2]); !ok {
		return "", errFormat
	}
	return remote, nil
}

// parseStatus accepts three digits from 100 to 999, or "-" (Apache, when no
// status was set) as 0.
func parseStatus(s []byte) (int, bool) {
	if len(s) == 1 && s[0] == '-' {
		return 0, true
	}
	n, ok := digits(s)
	return n, ok && len(s) == 3 && n >= 100
}
