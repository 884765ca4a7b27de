package weblog

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSyslogAddr(t *testing.T) {
	cases := []struct {
		in   string
		want SyslogAddr
		err  string // part of the error; "" means none
	}{
		{"unixgram:/run/webknock/log.sock", SyslogAddr{"unixgram", "/run/webknock/log.sock", true}, ""},
		{"udp:127.0.0.1:5514", SyslogAddr{"udp", "127.0.0.1:5514", true}, ""},
		{"udp:[::1]:5514", SyslogAddr{"udp", "[::1]:5514", true}, ""},
		{"udp:[::ffff:127.0.0.1]:514", SyslogAddr{"udp", "127.0.0.1:514", true}, ""},
		{"tcp:0.0.0.0:6514", SyslogAddr{"tcp", "0.0.0.0:6514", false}, ""},
		{"tcp:[::]:6514", SyslogAddr{"tcp", "[::]:6514", false}, ""},
		{"tcp:192.0.2.1:6514", SyslogAddr{"tcp", "192.0.2.1:6514", false}, ""},
		{"udp:127.0.0.1:0", SyslogAddr{"udp", "127.0.0.1:0", true}, ""},

		{"unixgram:run/log.sock", SyslogAddr{}, "not absolute"},
		{"unixgram:/run/../log.sock", SyslogAddr{}, "not clean"},
		{"unixgram:/" + strings.Repeat("x", 120), SyslogAddr{}, "at most 107"},
		{"udp:localhost:514", SyslogAddr{}, "not an IP address"},
		{"udp::514", SyslogAddr{}, "not an IP address"},
		{"udp:127.0.0.1", SyslogAddr{}, "HOST:PORT"},
		{"udp:127.0.0.1:65536", SyslogAddr{}, "port"},
		{"udp:127.0.0.1:syslog", SyslogAddr{}, "port"},
		{"tcp:[fe80::1%eth0]:514", SyslogAddr{}, "zoned"},
		{"unix:/run/log.sock", SyslogAddr{}, "network"},
		{"/run/log.sock", SyslogAddr{}, "want unixgram"},
		{"", SyslogAddr{}, "want unixgram"},
	}
	for _, c := range cases {
		got, err := ParseSyslogAddr(c.in)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("ParseSyslogAddr(%q): %v", c.in, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("ParseSyslogAddr(%q) = %+v, %v, want an error with %q", c.in, got, err, c.err)
		case got != c.want:
			t.Errorf("ParseSyslogAddr(%q) = %+v, want %+v", c.in, got, c.want)
		}
	}
}

func TestCheckSyslog(t *testing.T) {
	p := newTestPKI(t)
	tlsOK := SyslogTLS{CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: p.caFile}
	badCA := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(badCA, []byte("not a certificate"), 0o600)
	dir := t.TempDir()
	cases := []struct {
		name string
		o    SyslogOptions
		want []string // each error's text, in order
	}{
		{"empty", SyslogOptions{}, nil},
		{"loopback without tls", SyslogOptions{Listen: []string{"udp:127.0.0.1:5514", "tcp:127.0.0.1:6514", "udp:0.0.0.0:514"}}, nil},
		{"remote tcp with tls", SyslogOptions{Listen: []string{"tcp:0.0.0.0:6514"}, TLS: tlsOK}, nil},
		{"tls with loopback only", SyslogOptions{Listen: []string{"tcp:127.0.0.1:6514"}, TLS: tlsOK}, nil},
		{"unixgram", SyslogOptions{Listen: []string{"unixgram:" + dir + "/log.sock"}, AllowUIDs: []uint32{0}}, nil},
		{"remote tcp without tls", SyslogOptions{Listen: []string{"udp:127.0.0.1:514", "tcp:0.0.0.0:6514"}},
			[]string{`log.syslog.listen[1] "tcp:0.0.0.0:6514": not loopback: needs log.syslog.tls cert_file, key_file and client_ca_file`}},
		{"half tls", SyslogOptions{Listen: []string{"tcp:0.0.0.0:6514"}, TLS: SyslogTLS{CertFile: p.serverCert, KeyFile: p.serverKey}},
			[]string{
				`log.syslog.listen[0] "tcp:0.0.0.0:6514": not loopback: needs log.syslog.tls cert_file, key_file and client_ca_file`,
				`log.syslog.tls: cert_file, key_file and client_ca_file go together (a client certificate is always required)`,
			}},
		{"bad client ca", SyslogOptions{Listen: []string{"tcp:0.0.0.0:6514"}, TLS: SyslogTLS{CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: badCA}},
			[]string{`log.syslog.tls: client_ca_file ` + badCA + `: no PEM certificate in it`}},
		{"duplicates", SyslogOptions{Listen: []string{"udp:127.0.0.1:514", "tcp:127.0.0.1:514", "udp:[::ffff:127.0.0.1]:514"}},
			[]string{`log.syslog.listen[2] "udp:[::ffff:127.0.0.1]:514": same socket as log.syslog.listen[0] "udp:127.0.0.1:514"`}},
		{"bad listen", SyslogOptions{Listen: []string{"udp:localhost:514", "unixgram:log.sock"}},
			[]string{
				`log.syslog.listen[0] "udp:localhost:514": host "localhost" is not an IP address`,
				`log.syslog.listen[1] "unixgram:log.sock": socket path "log.sock" is not absolute`,
			}},
		{"no uids", SyslogOptions{Listen: []string{"unixgram:" + dir + "/log.sock"}},
			[]string{`log.syslog.allow_uids: empty: every sender to a unixgram socket would be refused`}},
		{"limits", SyslogOptions{MaxMessage: 1 << 20, MaxConns: -1, IdleTimeout: -1, SocketGroup: -2, AllowFrom: []netip.Prefix{{}}},
			[]string{
				`log.syslog.allow_from[0]: not a valid prefix`,
				`log.syslog.socket_group -2: want a group id, or -1`,
				`log.syslog.max_message 1048576: want 0 (16384) up to 65536 bytes`,
				`log.syslog.max_connections -1: want 0 (64) or more`,
				`log.syslog.idle_timeout -1ns: want 0 (5m) or more`,
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			for _, err := range CheckSyslog(c.o) {
				got = append(got, err.Error())
			}
			if !equalStrings(got, c.want) {
				t.Errorf("CheckSyslog = %q, want %q", got, c.want)
			}
			// ListenSyslog refuses exactly what CheckSyslog does.
			if len(c.want) > 0 {
				s, err := ListenSyslog(t.Context(), c.o)
				if err == nil {
					s.Close()
					t.Fatal("ListenSyslog accepted it")
				}
				for _, w := range c.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("ListenSyslog: %v, want %q in it", err, w)
					}
				}
			}
		})
	}
}
