package firewall

import (
	"reflect"
	"testing"
)

// FuzzParseState: a state file of any content is read or refused with an
// error, never a panic; what is read holds only valid grants, and writing
// it out and reading it again gives the same state.
func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"version":1,"grants":[{"ip":"203.0.113.7","sequence":"ssh","ports":["22/tcp"],"until":"2026-11-22T19:11:30Z"}]}`))
	f.Add([]byte(`{"version":2,"grants":[],"pending":[{"ip":"2001:db8::1","sequence":"a","ports":["1/udp","65535/tcp"],"until":"2037-01-01T00:00:00Z","knocked":"2026-01-01T00:00:00Z"}],"revoked":[{"ip":"::ffff:192.0.2.1","at":"2026-11-22T19:00:00Z"}]}`))
	f.Add([]byte(`{"version":2,"grants":[{"ip":"0.0.0.0","sequence":"x y","ports":["0/tcp"],"until":"1970-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"version":2,"grants":[{"ip":"192.0.2.77","bits":24,"sequence":"ssh","ports":["22/tcp"],"until":"2026-11-22T19:11:30Z"},{"ip":"2001:db8:1:2::","bits":64,"sequence":"ssh","ports":["22/tcp"],"until":"2026-11-22T19:11:30Z"}],"revoked":[{"ip":"198.51.100.0/24","at":"2026-11-22T19:00:00Z"},{"ip":"::ffff:192.0.2.0/120","at":"2026-11-22T19:00:00Z"}]}`))
	f.Add([]byte(`{"version":2,"grants":[{"ip":"192.0.2.1","bits":8,"sequence":"ssh","ports":["22/tcp"],"until":"2026-11-22T19:11:30Z"}],"revoked":[{"ip":"0.0.0.0/0","at":"2026-11-22T19:00:00Z"}]}`))
	f.Add([]byte(`{"version":3}`))
	f.Add([]byte(`{"version":2,"extra":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, err := parseState("grants.json", b)
		if err != nil {
			return
		}
		for _, gs := range [][]Grant{doc.Grants, doc.Pending} {
			for _, g := range gs {
				n, err := normalizeGrant(g)
				if err != nil || checkUntil(n) != nil || !reflect.DeepEqual(n, g) {
					t.Fatalf("parseState(%q) accepted %+v (%v)", b, g, err)
				}
			}
		}
		path := t.TempDir() + "/grants.json"
		if err := writeState(path, doc); err != nil {
			t.Fatalf("writeState of a parsed state: %v", err)
		}
		again, err := readState(path)
		if err != nil {
			t.Fatalf("readState of a written state: %v", err)
		}
		doc.Version = stateVersion
		if doc.Grants == nil {
			doc.Grants = []Grant{}
		}
		if !reflect.DeepEqual(stripMono(again), stripMono(doc)) {
			t.Fatalf("round trip of %q:\n%+v\nwant\n%+v", b, again, doc)
		}
	})
}

// stripMono drops what JSON does not keep (time zones are compared by instant).
func stripMono(d stateDoc) stateDoc {
	fix := func(gs []Grant) []Grant {
		out := make([]Grant, len(gs))
		for i, g := range gs {
			g.Until = g.Until.UTC()
			g.Knocked = g.Knocked.UTC()
			out[i] = g
		}
		return out
	}
	d.Grants, d.Pending = fix(d.Grants), fix(d.Pending)
	rs := make([]revoked, len(d.Revoked))
	for i, r := range d.Revoked {
		r.At = r.At.UTC()
		rs[i] = r
	}
	d.Revoked = rs
	return d
}
