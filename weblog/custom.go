package weblog

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/satyrius/gonx"
)

// customFormat is an nginx log_format string, matched by gonx.
type customFormat struct {
	g    *gonx.Parser
	lits []string // literal text around vars: lits[0] vars[0] lits[1] ... lits[n]
	vars []string
}

// Variables that hold no space a client could choose, so they may come
// before $remote_addr without letting a client forge the address field
// ($host is validated by nginx; the raw $http_host is not). Any variable
// may come before it in quotes, which nginx escapes inside values.
var serverVars = map[string]bool{
	"host": true, "server_name": true, "server_addr": true, "server_port": true, "hostname": true,
	"time_local": true, "time_iso8601": true, "msec": true, "pid": true,
	"connection": true, "remote_port": true, "request_id": true, "scheme": true,
	"status": true, "request_method": true, "request_time": true, "request_length": true,
	"body_bytes_sent": true, "bytes_sent": true, "gzip_ratio": true,
	"upstream_status": true, "upstream_cache_status": true,
}

// Variables nginx (and ingress-nginx) define, and the prefixes of families.
var (
	nginxVars = map[string]bool{
		"ancient_browser": true, "args": true, "binary_remote_addr": true,
		"body_bytes_sent": true, "bytes_sent": true, "connection": true,
		"connection_requests": true, "connection_time": true, "content_length": true,
		"content_type": true, "document_root": true, "document_uri": true,
		"fastcgi_path_info": true, "fastcgi_script_name": true, "gzip_ratio": true,
		"host": true, "hostname": true, "http2": true, "http3": true, "https": true,
		"invalid_referer": true, "is_args": true, "limit_conn_status": true,
		"limit_rate": true, "limit_req_status": true, "modern_browser": true,
		"msec": true, "msie": true, "nginx_version": true, "pid": true, "pipe": true,
		"proxy_add_x_forwarded_for": true, "proxy_host": true, "proxy_port": true,
		"proxy_protocol_addr": true, "proxy_protocol_port": true,
		"proxy_protocol_server_addr": true, "proxy_protocol_server_port": true,
		"query_string": true, "realip_remote_addr": true, "realip_remote_port": true,
		"realpath_root": true, "remote_addr": true, "remote_port": true,
		"remote_user": true, "request": true, "request_body": true,
		"request_body_file": true, "request_completion": true,
		"request_filename": true, "request_id": true, "request_length": true,
		"request_method": true, "request_time": true, "request_uri": true,
		"scheme": true, "secure_link": true, "secure_link_expires": true,
		"server_addr": true, "server_name": true, "server_port": true,
		"server_protocol": true, "status": true, "tcpinfo_rtt": true,
		"tcpinfo_rttvar": true, "tcpinfo_snd_cwnd": true, "tcpinfo_rcv_space": true,
		"time_iso8601": true, "time_local": true, "uid_got": true, "uid_reset": true,
		"uid_set": true, "uri": true,
		// ingress-nginx
		"proxy_upstream_name": true, "proxy_alternative_upstream_name": true, "req_id": true,
	}
	nginxVarPrefixes = []string{"arg_", "cookie_", "http_", "sent_http_", "sent_trailer_",
		"upstream_", "ssl_", "geoip_", "proxy_protocol_tlv_", "jwt_"}
)

func knownVar(v string) bool {
	if nginxVars[v] {
		return true
	}
	for _, p := range nginxVarPrefixes {
		if strings.HasPrefix(v, p) && len(v) > len(p) {
			return true
		}
	}
	return false
}

func isVarByte(c byte) bool {
	return c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// compileCustom checks an nginx log_format string and compiles it.
func compileCustom(format string) (cf *customFormat, err error) {
	if strings.TrimSpace(format) == "" {
		return nil, fmt.Errorf("empty log format")
	}
	cf = &customFormat{}
	lit := 0
	for i := 0; i < len(format); i++ {
		if format[i] != '$' {
			continue
		}
		j := i + 1
		for j < len(format) && isVarByte(format[j]) {
			j++
		}
		if j == i+1 {
			if j < len(format) && format[j] == '{' {
				return nil, fmt.Errorf("${name} variables are not supported; write $name followed by a separator")
			}
			return nil, fmt.Errorf("a lone $ at byte %d", i)
		}
		v := format[i+1 : j]
		if !knownVar(v) {
			return nil, fmt.Errorf("unknown variable $%s", v)
		}
		if j < len(format) && format[j] == '$' {
			return nil, fmt.Errorf("$%s is followed directly by another variable: put a separator between them", v)
		}
		cf.lits = append(cf.lits, format[lit:i])
		cf.vars = append(cf.vars, v)
		lit = j
		i = j - 1
	}
	cf.lits = append(cf.lits, format[lit:])
	seen := map[string]bool{}
	for _, v := range cf.vars {
		if seen[v] {
			return nil, fmt.Errorf("$%s appears twice", v)
		}
		seen[v] = true
	}
	switch {
	case !seen["remote_addr"]:
		return nil, fmt.Errorf("the format has no $remote_addr: webknock cannot know the client")
	case !seen["time_local"] && !seen["time_iso8601"] && !seen["msec"]:
		return nil, fmt.Errorf("the format has no $time_local, $time_iso8601 or $msec")
	case !seen["request"] && !(seen["request_method"] && seen["request_uri"]):
		return nil, fmt.Errorf("the format has no $request (or $request_method and $request_uri)")
	case !seen["status"]:
		return nil, fmt.Errorf("the format has no $status")
	}
	for i, v := range cf.vars {
		if v == "remote_addr" {
			break
		}
		quoted := strings.HasSuffix(cf.lits[i], `"`) && strings.HasPrefix(cf.lits[i+1], `"`)
		if !serverVars[v] && !quoted {
			return nil, fmt.Errorf("$%s comes before $remote_addr: a client could forge the address field", v)
		}
	}
	defer func() {
		if r := recover(); r != nil {
			cf, err = nil, fmt.Errorf("cannot compile log format: %v", r)
		}
	}()
	cf.g = gonx.NewParser(format)
	return cf, nil
}

func (cf *customFormat) has(v string) bool {
	for _, x := range cf.vars {
		if x == v {
			return true
		}
	}
	return false
}

// parse matches a line with gonx, then checks the match is the whole line
// (gonx anchors only the start) and fills r from the known variables.
func (cf *customFormat) parse(line []byte, r *Request, zc *zoneCache) (remote, xff string, _ *ParseError) {
	s := string(line)
	e, err := cf.g.ParseString(s)
	if err != nil {
		return "", "", errFormat
	}
	vals := make(map[string]string, len(cf.vars))
	rest := s
	for i, v := range cf.vars {
		val, _ := e.Field(v)
		if !strings.HasPrefix(rest, cf.lits[i]) {
			return "", "", errFormat
		}
		rest = rest[len(cf.lits[i]):]
		if !strings.HasPrefix(rest, val) {
			return "", "", errFormat
		}
		rest = rest[len(val):]
		vals[v] = val
	}
	if rest != cf.lits[len(cf.lits)-1] {
		return "", "", errFormat
	}
	dec := func(v string) (string, bool) {
		raw, ok := vals[v]
		if !ok {
			return "", true
		}
		return unescape([]byte(raw))
	}
	var ok bool
	switch {
	case cf.has("time_local"):
		r.Time, ok = parseTimeLocal([]byte(vals["time_local"]), zc)
	case cf.has("time_iso8601"):
		var err error
		r.Time, err = time.Parse(time.RFC3339, vals["time_iso8601"])
		ok = err == nil
	default:
		r.Time, ok = parseMsec(vals["msec"])
	}
	if !ok {
		return "", "", errorf(ReasonTime, "bad timestamp")
	}
	if cf.has("request") {
		req, ok := dec("request")
		if !ok {
			return "", "", errFormat
		}
		r.splitRequestLine(req)
	} else {
		m, ok1 := dec("request_method")
		u, ok2 := dec("request_uri")
		proto, ok3 := dec("server_protocol")
		if !ok1 || !ok2 || !ok3 {
			return "", "", errFormat
		}
		line := m + " " + u
		if proto != "" {
			line += " " + proto
		}
		r.splitRequestLine(line)
	}
	status, ok := parseStatus([]byte(vals["status"]))
	if !ok {
		return "", "", errFormat
	}
	r.Status = status
	r.Bytes = -1
	for _, v := range [...]string{"body_bytes_sent", "bytes_sent"} {
		if raw, has := vals[v]; has {
			if r.Bytes, ok = number([]byte(raw), -1); !ok {
				return "", "", errFormat
			}
			break
		}
	}
	fields := [...]struct {
		dst *string
		v   string
	}{
		{&r.Referer, "http_referer"}, {&r.UserAgent, "http_user_agent"},
		{&r.User, "remote_user"}, {&r.ForwardedFor, "http_x_forwarded_for"},
		{&r.VHost, "host"},
	}
	for _, f := range fields {
		if *f.dst, ok = dec(f.v); !ok {
			return "", "", errFormat
		}
	}
	if r.ForwardedFor == "-" {
		r.ForwardedFor = ""
	}
	return vals["remote_addr"], r.ForwardedFor, nil
}

// parseMsec parses $msec, seconds since the epoch with milliseconds.
func parseMsec(s string) (time.Time, bool) {
	sec, frac, _ := strings.Cut(s, ".")
	n, err := strconv.ParseInt(sec, 10, 64)
	if err != nil || n < 0 || len(frac) > 3 {
		return time.Time{}, false
	}
	ms := 0
	if frac != "" {
		f, err := strconv.Atoi((frac + "00")[:3])
		if err != nil || f < 0 {
			return time.Time{}, false
		}
		ms = f
	}
	return time.Unix(n, int64(ms)*int64(time.Millisecond)).UTC(), true
}
