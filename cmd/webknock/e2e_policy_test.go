package main

import (
	"strings"
	"testing"
	"time"
)

// TestE2EPolicy proves each per-sequence policy key with real nginx and
// iptables: allow_from denies a knock from outside it, the close page ends
// its client's grant, an expired sequence grants nothing, grant_prefix
// opens the client's whole network, and expires cuts a grant short. A
// replay of the access log nginx wrote gives the same events.
func TestE2EPolicy(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.startListener()
	expires := time.Now().Add(40 * time.Second).UTC().Truncate(time.Second)
	cfg := e.writeConfig(e2eConf{seqs: `  - name: ssh
    steps: [/k/a1, /k/b2, /k/c3]
    knock_page: /k/open
    close_page: /k/bye
    window: 10m
    allow_from: [192.0.2.8/30, "2001:db8::/64"]
  - name: old
    steps: [/o/a1]
    knock_page: /o/open
    expires: "2020-01-01T00:00:00Z"
  - name: wide
    steps: [/w/a1]
    knock_page: /w/open
    window: 10m
    expires: "` + expires.Format(time.RFC3339) + `"
    grant_prefix: {ipv4: 24, ipv6: 64}
`})
	d := e.startDaemon(cfg)
	e.assertOpen()

	// allow_from: 192.0.2.12 is outside 192.0.2.8/30; 192.0.2.11 inside.
	e.knock(cliV4[1], fullKnock...)
	if rec := d.wait(t, "knock denied by the sequence's policy", cliV4[1]); rec["reason"] != "allow_from" {
		t.Errorf("denied record %v, want reason allow_from", rec)
	}
	e.assertOpen()
	e.knockGranted(d, cliV4[0])
	e.assertOpen(cliV4[0])

	// close_page: the client ends its own grant.
	e.knock(cliV4[0], "/k/bye")
	d.wait(t, "grant closed by its client", cliV4[0])
	e.assertOpen()
	if r := e.grantRules("iptables"); len(r) != 0 {
		t.Errorf("grant rules after the close = %q, want none", r)
	}

	// expires in the past: the sequence grants nothing.
	e.knock(cliV4[0], "/o/a1", "/o/open")
	if rec := d.wait(t, "knock denied by the sequence's policy", cliV4[0]); rec["reason"] != "expired" {
		t.Errorf("denied record %v, want reason expired", rec)
	}
	e.assertOpen()

	// grant_prefix: a knock from 192.0.2.13 opens 192.0.2.0/24, one from
	// 2001:db8::11 opens 2001:db8::/64; expires cuts both grants.
	e.knock(cliV4[2], "/w/a1", "/w/open")
	g4 := d.wait(t, "grant", cliV4[2])
	e.knock(cliV6[0], "/w/a1", "/w/open")
	d.wait(t, "grant", cliV6[0])
	e.assertOpen(append(cliV4[:4:4], cliV6...)...)
	for v6, src := range map[bool]string{false: "192.0.2.0/24 ", true: "2001:db8::/64 "} {
		els := e.ipsetElements(v6)
		var wide []string
		for _, el := range els {
			if strings.Contains(el, " webknock:wide:") {
				wide = append(wide, el)
			}
		}
		if len(wide) != 1 || !strings.HasPrefix(wide[0], src) {
			t.Errorf("grant set elements %q: want one of wide, for %s", els, src)
		}
	}
	if u := untilOf(t, g4); !u.Equal(expires) {
		t.Errorf("grant until %v, want it cut to expires %v", u, expires)
	}
	waitUntil(t, expires.Add(time.Second))
	// The two families end in either order.
	removed := map[any]bool{}
	for range 2 {
		removed[d.wait(t, "grant removed", "")["ip"]] = true
	}
	if !removed["192.0.2.0/24"] || !removed["2001:db8::/64"] {
		t.Errorf("grants removed at expiry: %v, want 192.0.2.0/24 and 2001:db8::/64", removed)
	}
	e.assertOpen()

	// replay of what nginx logged: the same decisions.
	out, errOut, code := runCmd(t, "", "replay", "-c", cfg, e.log)
	if code != 0 {
		t.Fatalf("replay: exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"denied   " + cliV4[1] + "       ssh         by allow_from",
		"grant    " + cliV4[0] + "       ssh ",
		"close    " + cliV4[0] + "       ssh ",
		"denied   " + cliV4[0] + "       old         by expired",
		"until " + expires.Format(time.RFC3339) + " 22/tcp to 192.0.2.0/24",
		"until " + expires.Format(time.RFC3339) + " 22/tcp to 2001:db8::/64",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("replay lacks %q:\n%s", want, out)
		}
	}
}

// TestE2ECloseKillsSessions: with close_kills_sessions, the close page ends
// the grant and the client's established session too; without it, the
// session outlives the close (only new connections are refused).
func TestE2ECloseKillsSessions(t *testing.T) {
	e := newE2E(t, "nginx")
	e.startNginx()
	e.startEcho()
	d := e.startDaemon(e.writeConfig(e2eConf{seqs: `  - name: ssh
    steps: [/k/a1, /k/b2, /k/c3]
    knock_page: /k/open
    close_page: /k/bye
    close_kills_sessions: true
  - name: keep
    steps: [/q/a1]
    knock_page: /q/open
    close_page: /q/bye
`}))
	for _, tc := range []struct {
		seq, src string
		knock    []string
		bye      string
		kills    bool
	}{
		{"ssh", cliV4[0], fullKnock, "/k/bye", true},
		{"keep", cliV4[1], []string{"/q/a1", "/q/open"}, "/q/bye", false},
	} {
		t.Run(tc.seq, func(t *testing.T) {
			e.knock(tc.src, tc.knock...)
			d.wait(t, "grant", tc.src)
			s := e.session(tc.src)
			s.t = t
			if got := s.do("ping"); got != "ok" {
				t.Fatalf("ping over a granted session: %s", got)
			}
			e.knock(tc.src, tc.bye)
			d.wait(t, "grant closed by its client", tc.src)
			want := "ok"
			if tc.kills {
				if rec := d.wait(t, "sessions of a closed grant ended", tc.src); rec["sessions"] != float64(1) {
					t.Errorf("sessions ended: %v, want 1", rec["sessions"])
				}
				want = "err reset"
			}
			if got := s.do("ping"); got != want {
				t.Errorf("ping after the close: %s, want %s", got, want)
			}
			if got := s.do("dial"); got == "ok" {
				t.Errorf("a new connection after the close was let in")
			}
		})
	}
}
