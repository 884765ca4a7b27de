package config

import (
	"os/user"
	"strconv"
)

// setSyslog decodes log.syslog.
func (l *loader) setSyslog(a loc, v any) {
	sl := &l.cfg.Log.Syslog
	l.mapping(a, v, "syslog settings", func(a loc, v any) {
		switch a.p[len(a.p)-1] {
		case "listen":
			l.setStrings(a, v, &sl.Listen)
		case "allow_uids":
			l.setUIDs(a, v, &sl.AllowUIDs)
		case "allow_from":
			l.setPrefixes(a, v, &sl.AllowFrom)
		case "socket_group":
			l.setGroup(a, v, &sl.SocketGroup)
		case "max_message":
			l.setInt(a, v, &sl.MaxMessage)
		case "max_connections":
			l.setInt(a, v, &sl.MaxConns)
		case "idle_timeout":
			l.setDuration(a, v, &sl.IdleTimeout)
		case "tls":
			l.mapping(a, v, "TLS settings", func(a loc, v any) {
				switch a.p[len(a.p)-1] {
				case "cert_file":
					l.setString(a, v, &sl.TLS.CertFile)
				case "key_file":
					l.setString(a, v, &sl.TLS.KeyFile)
				case "client_ca_file":
					l.setString(a, v, &sl.TLS.ClientCAFile)
				default:
					l.unknown(a)
				}
			})
		default:
			l.unknown(a)
		}
	})
}

// setUIDs reads user ids: numbers, or user names looked up now.
func (l *loader) setUIDs(a loc, v any, dst *[]uint32) bool {
	return eachItem(l, a, v, "user ids or names", dst, func(a loc, item any) (uint32, bool) {
		if n, ok := toInt(item); ok {
			if n < 0 || n > 1<<32-2 {
				l.failf(a, "bad user id %d", n)
				return 0, false
			}
			return uint32(n), true
		}
		name, ok := item.(string)
		if !ok {
			l.failf(a, "want a user id or name, got %s", describe(item))
			return 0, false
		}
		u, err := user.Lookup(name)
		if err != nil {
			l.failf(a, "unknown user %q", name)
			return 0, false
		}
		n, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			l.failf(a, "user %q has the id %q", name, u.Uid)
			return 0, false
		}
		return uint32(n), true
	})
}

// setGroup reads a group id or name.
func (l *loader) setGroup(a loc, v any, dst *int) {
	if n, ok := toInt(v); ok {
		if n < 0 || n > 1<<32-2 {
			l.failf(a, "bad group id %d", n)
			return
		}
		*dst = n
		l.set(a)
		return
	}
	name, ok := v.(string)
	if !ok {
		l.failf(a, "want a group id or name, got %s", describe(v))
		return
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		l.failf(a, "unknown group %q", name)
		return
	}
	n, err := strconv.Atoi(g.Gid)
	if err != nil {
		l.failf(a, "group %q has the id %q", name, g.Gid)
		return
	}
	*dst = n
	l.set(a)
}
