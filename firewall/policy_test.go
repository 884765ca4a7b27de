package firewall

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/webknock/webknock/internal/statedir"
)

// seqs are the tests' configured sequences.
var seqs = []Sequence{
	{Name: "ssh", Ports: []Port{ssh}, Window: 10 * time.Minute},
	{Name: "web", Ports: []Port{alt, dns}, Window: time.Hour},
}

func (e *env) policyOptions() Options {
	o := e.options()
	o.Sequences = seqs
	return o
}

// TestUntrustedState: a state file or directory that another user could
// have written is refused before anything changes in the firewall, so a
// planted grants.json never opens a port; Probe refuses it too.
func TestUntrustedState(t *testing.T) {
	planted := Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh, {"tcp", 1}, {"udp", 65535}},
		Until: time.Date(2037, 1, 1, 0, 0, 0, 0, time.UTC)}
	tests := []struct {
		name string
		root bool // needs root (chown)
		// spoil makes the state file path in dir untrusted.
		spoil func(t *testing.T, dir, path string)
	}{
		{"file writable by everyone", false, func(t *testing.T, _, path string) { chmod(t, path, 0o666) }},
		{"file writable by its group", false, func(t *testing.T, _, path string) { chmod(t, path, 0o620) }},
		{"file is a symbolic link", false, func(t *testing.T, dir, path string) {
			real := filepath.Join(t.TempDir(), "planted.json")
			if err := os.Rename(path, real); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(real, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"file owned by another user", true, func(t *testing.T, _, path string) {
			if err := os.Chown(path, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory writable by everyone", false, func(t *testing.T, dir, _ string) { chmod(t, dir, 0o777) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("skipping: chown needs root")
			}
			e := newEnv(t)
			for _, name := range []string{stateFile, dryRunStateFile} {
				path := filepath.Join(e.dir, name)
				if err := writeState(path, stateDoc{Grants: []Grant{planted}}); err != nil {
					t.Fatal(err)
				}
				tc.spoil(t, e.dir, path)
			}
			_, err := e.tryOpen(e.options())
			var oe *OptionError
			if !errors.Is(err, statedir.ErrUntrusted) || !errors.As(err, &oe) || oe.Option != "state_dir" {
				t.Fatalf("open = %v, want an untrusted state_dir", err)
			}
			for _, fam := range families {
				if h := e.tabs(fam).snapshots(""); len(h) != 0 {
					t.Errorf("%v: open changed the tables: %+v", fam, h)
				}
			}
			err = Probe(ctx0, Options{Backend: backendDryRun, StateDir: e.dir})
			if !errors.Is(err, statedir.ErrUntrusted) {
				t.Errorf("Probe = %v, want the state refused", err)
			}
		})
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// TestGrantPolicy: Grant refuses a sequence or ports that are not
// configured, and cuts until to the wall clock's now plus the window,
// whatever the log's clock says.
func TestGrantPolicy(t *testing.T) {
	tests := []struct {
		name    string
		g       Grant
		want    time.Time // the applied until; zero: refused
		wantErr error
		log     string
	}{
		{"allowed", Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(5 * time.Minute)}, t0.Add(5 * time.Minute), nil, ""},
		{"unknown sequence", Grant{IP: c1, Sequence: "gone", Ports: []Port{ssh}, Until: t0.Add(time.Minute)}, time.Time{}, ErrNotAllowed, ""},
		{"port not the sequence's", Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh, alt}, Until: t0.Add(time.Minute)}, time.Time{}, ErrNotAllowed, ""},
		{"log clock years ahead", Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: time.Date(2037, 6, 1, 0, 0, 0, 0, time.UTC)},
			t0.Add(10 * time.Minute), nil, `level=WARN msg="grant cut to its window from now: the log's clock is ahead of this host's"`},
		{"log clock past 2038", Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC)},
			t0.Add(10 * time.Minute), nil, "grant cut to its window from now"},
		{"log clock seconds ahead", Grant{IP: c6, Sequence: "web", Ports: []Port{dns}, Until: t0.Add(time.Hour + 30*time.Second)},
			t0.Add(time.Hour), nil, `level=DEBUG msg="grant cut to its window from now`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			f := e.open(e.policyOptions())
			got, err := f.Firewall.Grant(ctx0, tc.g)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Grant(%v) = %v, want %v", tc.g, err, tc.wantErr)
				}
				if gs := f.Grants(); len(gs) != 0 {
					t.Errorf("Grants() = %v after a refused grant", gs)
				}
				return
			}
			if err != nil || !got.Until.Equal(tc.want) {
				t.Fatalf("Grant(%v) = %v, %v; want until %v", tc.g, got, err, tc.want)
			}
			if gs := f.Grants(); len(gs) != 1 || !gs[0].Until.Equal(tc.want) {
				t.Errorf("Grants() = %v, want until %v", gs, tc.want)
			}
			fam := familyOf(tc.g.IP)
			want := grantLine(netip.PrefixFrom(tc.g.IP, tc.g.IP.BitLen()).String(), tc.g.Ports[0], tc.g.Sequence, tc.want)
			if d := diffLines(e.chain(fam), e.chainOnly(want)); d != "" {
				t.Error(d)
			}
			if !strings.Contains(e.log.String(), tc.log) {
				t.Errorf("log lacks %s:\n%s", tc.log, e.log)
			}
		})
	}
}

// TestClockAheadWarnedOnce: a log clock that is ahead makes every grant cut,
// but is warned about once; the other cuts are logged at debug level.
func TestClockAheadWarnedOnce(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.policyOptions())
	for _, ip := range []netip.Addr{c1, c6} {
		g := Grant{IP: ip, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(24 * time.Hour)}
		if got, err := f.Firewall.Grant(ctx0, g); err != nil || !got.Until.Equal(t0.Add(10*time.Minute)) {
			t.Fatalf("Grant(%v) = %v, %v; want until %v", g, got, err, t0.Add(10*time.Minute))
		}
	}
	log := e.log.String()
	if n := strings.Count(log, `level=WARN msg="grant cut to its window from now`); n != 1 {
		t.Errorf("%d warnings about the log's clock, want 1:\n%s", n, log)
	}
	if n := strings.Count(log, `level=DEBUG msg="grant cut to its window from now`); n != 1 {
		t.Errorf("%d debug records of a cut grant, want 1:\n%s", n, log)
	}
}

// TestLoadedPolicy: grants loaded from the state file, or rebuilt from the
// rules' comments, are held to the configured sequences: unknown ones,
// ports that are not the sequence's and ends beyond now plus the window are
// dropped, each with a warning, and their rules deleted.
func TestLoadedPolicy(t *testing.T) {
	c3, c4 := mustAddr("192.0.2.3"), mustAddr("192.0.2.4")
	live := t0.Add(5 * time.Minute)
	loaded := []Grant{
		{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: live},
		{IP: c2, Sequence: "gone", Ports: []Port{ssh}, Until: live},
		{IP: c6, Sequence: "web", Ports: []Port{alt, ssh}, Until: live},
		{IP: c3, Sequence: "ssh", Ports: []Port{ssh}, Until: time.Date(2037, 1, 1, 0, 0, 0, 0, time.UTC)},
		{IP: c4, Sequence: "web", Ports: []Port{ssh}, Until: live},
	}
	wantLog := []string{
		`msg="loaded grant dropped" ip=198.51.100.2 sequence=gone ports=[22/tcp] until=2026-11-22T19:06:34.000Z reason="its sequence is not configured"`,
		`msg="loaded grant dropped" ip=192.0.2.3 sequence=ssh ports=[22/tcp] until=2037-01-01T00:00:00.000Z reason="it ends later than now plus its sequence's window"`,
		`msg="loaded grant dropped" ip=192.0.2.4 sequence=web ports=[22/tcp] until=2026-11-22T19:06:34.000Z reason="none of its ports belongs to its sequence"`,
		`msg="loaded grant's ports dropped: not its sequence's" ip=2001:db8::7 sequence=web ports=[2222/tcp] until=2026-11-22T19:06:34.000Z fixed=[22/tcp]`,
	}
	for _, source := range []string{"state file", "rule comments"} {
		t.Run(source, func(t *testing.T) {
			e := newEnv(t)
			for _, g := range loaded {
				fam := familyOf(g.IP)
				var specs []string
				for _, e := range entriesOf(g, false) {
					specs = append(specs, entryRule(e).String())
				}
				e.plant(fam, "WEBKNOCK", specs...)
			}
			if source == "state file" {
				e.writeState(loaded...)
			}
			f := e.open(e.policyOptions())
			want := []Grant{
				{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: live},
				{IP: c6, Sequence: "web", Ports: []Port{alt}, Until: live},
			}
			if gs := f.Grants(); !slices.EqualFunc(gs, want, grantEqual) {
				t.Errorf("Grants() = %v, want %v", gs, want)
			}
			if d := diffLines(e.chain(ipv4), e.chainOnly(grantLine("192.0.2.1/32", ssh, "ssh", live))); d != "" {
				t.Errorf("IPv4: %s", d)
			}
			if d := diffLines(e.chain(ipv6), e.chainOnly(grantLine("2001:db8::7/128", alt, "web", live))); d != "" {
				t.Errorf("IPv6: %s", d)
			}
			for _, s := range wantLog {
				if !strings.Contains(e.log.String(), "level=WARN "+s) {
					t.Errorf("log lacks %s:\n%s", s, e.log)
				}
			}
		})
	}
}

// TestReconfigurePolicy: a reload holds the grants to the new sequences: a
// removed sequence's grants are revoked at once, ports no longer the
// sequence's are closed, a shortened window cuts the grants, with the new
// rule in place before the old one goes.
func TestReconfigurePolicy(t *testing.T) {
	e := newEnv(t)
	o := e.policyOptions()
	o.Sequences = append(slices.Clone(seqs), Sequence{Name: "old", Ports: []Port{ssh}, Window: time.Hour})
	f := e.open(o)
	grants := []Grant{
		{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: t0.Add(10 * time.Minute)},
		{IP: c2, Sequence: "web", Ports: []Port{alt, dns}, Until: t0.Add(time.Hour)},
		{IP: c6, Sequence: "old", Ports: []Port{ssh}, Until: t0.Add(30 * time.Minute)},
	}
	for _, g := range grants {
		if err := f.grant(g); err != nil {
			t.Fatal(err)
		}
	}
	o.Sequences = []Sequence{
		{Name: "ssh", Ports: []Port{ssh}, Window: 5 * time.Minute},
		{Name: "web", Ports: []Port{alt}, Window: time.Hour},
	}
	if err := f.Reconfigure(ctx0, o); err != nil {
		t.Fatalf("Reconfigure = %v", err)
	}
	cut := t0.Add(5 * time.Minute)
	want := []Grant{
		{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Until: cut},
		{IP: c2, Sequence: "web", Ports: []Port{alt}, Until: t0.Add(time.Hour)},
	}
	if gs := f.Grants(); !slices.EqualFunc(gs, want, grantEqual) {
		t.Errorf("Grants() = %v, want %v", gs, want)
	}
	if gs := e.readState(); !slices.EqualFunc(gs, want, grantEqual) {
		t.Errorf("state file = %v, want %v", gs, want)
	}
	wantV4 := e.chainOnly(grantLine("198.51.100.2/32", alt, "web", t0.Add(time.Hour)), grantLine("192.0.2.1/32", ssh, "ssh", cut))
	slices.Sort(wantV4[2:])
	got := e.chain(ipv4)
	slices.Sort(got[2:])
	if d := diffLines(got, wantV4); d != "" {
		t.Errorf("IPv4: %s", d)
	}
	if c := e.chain(ipv6); len(c) != 2 {
		t.Errorf("IPv6: %q, want no grant", c)
	}
	if !strings.Contains(e.log.String(), `level=INFO msg="sequence removed; grant revoked" ip=2001:db8::7 sequence=old`) {
		t.Errorf("log lacks the revoke:\n%s", e.log)
	}
	// Once granted, c1 was never without a rule.
	granted := false
	for _, h := range e.v4.snapshots("WEBKNOCK") {
		has := slices.ContainsFunc(h.rules, func(r string) bool { return strings.HasPrefix(r, "-s 192.0.2.1/32 ") })
		if granted && !has {
			t.Errorf("after %s, 192.0.2.1 had no rule: %q", h.op, h.rules)
		}
		granted = granted || has
	}
	// New grants follow the new sequences.
	if err := f.grant(Grant{IP: c6, Sequence: "old", Ports: []Port{ssh}, Until: t0.Add(time.Minute)}); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("Grant of a removed sequence = %v, want ErrNotAllowed", err)
	}
}

// TestRevokeRemembered: a revoke is remembered, across restarts, so that a
// knock logged before it (a log read again) never grants again; a knock
// after it does. Records are forgotten once no such grant could be live.
func TestRevokeRemembered(t *testing.T) {
	e := newEnv(t)
	o := e.policyOptions()
	f := e.open(o)
	knocked := t0.Add(-time.Minute)
	g := Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Knocked: knocked, Until: knocked.Add(10 * time.Minute)}
	if err := f.grant(g); err != nil {
		t.Fatal(err)
	}
	if err := f.revoke(c1); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		knocked time.Time
		revoked bool
	}{
		{"the same line again", knocked, true},
		{"knocked at the revoke", t0, true},
		{"knocked after the revoke", t0.Add(time.Second), false},
		{"not from a log", time.Time{}, false},
	}
	try := func(f *fw, when string) {
		t.Helper()
		for _, tc := range tests {
			g := Grant{IP: c1, Sequence: "ssh", Ports: []Port{ssh}, Knocked: tc.knocked, Until: t0.Add(5 * time.Minute)}
			err := f.grant(g)
			if errors.Is(err, ErrRevoked) != tc.revoked || (!tc.revoked && err != nil) {
				t.Errorf("%s: %s: Grant = %v, want revoked %v", when, tc.name, err, tc.revoked)
			}
			if !tc.revoked {
				f.revoke(c1)
			}
		}
	}
	try(f, "running")
	if doc := e.readDoc(); len(doc.Revoked) != 1 || doc.Revoked[0].Source.Prefix != host(c1) {
		t.Errorf("state file revokes = %v, want c1's", doc.Revoked)
	}
	f.Close()
	f = e.open(o)
	try(f, "after a restart")

	// Once the longest window has passed since the revoke, no grant of an
	// earlier knock can be live: the record goes.
	f.advance(e.clk, time.Hour+time.Second)
	f.waitFor(t, "the revoke forgotten", func() bool { return len(e.readDoc().Revoked) == 0 })
}

// TestRevokeBound: the remembered revokes are bounded; the oldest goes.
func TestRevokeBound(t *testing.T) {
	w := &worker{revoked: map[netip.Prefix]time.Time{}}
	first := netip.AddrFrom4([4]byte{10, 0, 0, 0})
	a := first
	for i := range maxRevokes + 1 {
		w.recordRevoke(host(a), t0.Add(time.Duration(i)*time.Second))
		a = a.Next()
	}
	if _, ok := w.revoked[host(first)]; ok || len(w.revoked) != maxRevokes {
		t.Errorf("%d revokes, the oldest kept %v; want %d, the oldest gone", len(w.revoked), ok, maxRevokes)
	}
}
