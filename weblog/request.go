// Package weblog reads web server access logs: it parses one line into a
// Request (own escape-aware scanner for the preset formats, gonx for custom
// nginx log_format strings) and finds the lines worth parsing in a stream.
package weblog

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Request is one access log line.
type Request struct {
	Client       netip.Addr // who the request is attributed to (see Parser)
	RemoteAddr   netip.Addr // the peer address the web server saw
	Time         time.Time  // the line's own timestamp, zone kept
	Method       string     // empty when the request line is malformed
	Target       string     // request target as sent
	Path         string     // Target up to the first '?' or '#'
	Protocol     string     // "HTTP/1.1"; empty for HTTP/0.9 or malformed requests
	RequestLine  string     // the whole request line, unescaped
	Status       int        // 0 when the log has "-"
	Bytes        int64      // -1 when the log has "-" or the format has none
	Referer      string
	UserAgent    string
	User         string // $remote_user / %u
	VHost        string // vhost_combined's %v:%p, or $host
	ForwardedFor string // X-Forwarded-For as logged, when the format has it
}

// Reason says why a line was skipped; it is stable text for counters.
type Reason string

// Reasons a line is skipped.
const (
	ReasonFormat     Reason = "format"     // the line does not match the log format
	ReasonTime       Reason = "time"       // the timestamp is not a valid time
	ReasonClient     Reason = "client"     // the client is not an IP address (unix:, a host name)
	ReasonLoopback   Reason = "loopback"   // a loopback client: a reverse proxy not in trusted_proxies
	ReasonUnroutable Reason = "unroutable" // unspecified, multicast, link-local, broadcast, zoned
	ReasonForwarded  Reason = "forwarded"  // from a trusted proxy with no usable X-Forwarded-For
	ReasonOverlong   Reason = "overlong"   // longer than MaxLineBytes
)

// Mismatch reports whether r means the line is not in the log format (as
// opposed to a line in the format from a client that cannot knock): many
// such lines mean log.format is wrong.
func (r Reason) Mismatch() bool { return r == ReasonFormat || r == ReasonTime }

// ReasonOf returns the reason of a Parse error; an error of another kind
// counts as a format mismatch.
func ReasonOf(err error) Reason {
	if pe := (*ParseError)(nil); errors.As(err, &pe) {
		return pe.Reason
	}
	return ReasonFormat
}

// ParseError is the error for a line that cannot be used.
type ParseError struct {
	Reason Reason
	Msg    string
}

func (e *ParseError) Error() string { return string(e.Reason) + ": " + e.Msg }

func errorf(r Reason, format string, args ...any) *ParseError {
	return &ParseError{Reason: r, Msg: fmt.Sprintf(format, args...)}
}

// splitRequestLine fills Method, Target, Path and Protocol from a request
// line ("GET /x?y HTTP/1.1", or "GET /x" for HTTP/0.9). A line of any other
// shape leaves them empty: such a request can never knock.
func (r *Request) splitRequestLine(line string) {
	r.RequestLine = line
	m, rest, ok := strings.Cut(line, " ")
	if !ok || !isToken(m) || rest == "" {
		return
	}
	target, proto, hasProto := strings.Cut(rest, " ")
	if hasProto && (!strings.HasPrefix(proto, "HTTP/") || strings.IndexByte(proto, ' ') >= 0) {
		return
	}
	if target == "" {
		return
	}
	r.Method, r.Target, r.Protocol = m, target, proto
	r.Path = target
	if i := strings.IndexAny(target, "?#"); i >= 0 {
		r.Path = target[:i]
	}
}

// isToken reports whether s is an HTTP method token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}
