package fleet

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestKeyRoundTrip(t *testing.T) {
	for _, s := range []string{"198.51.100.7/32", "198.51.100.0/24", "2001:db8::1/128", "2001:db8::/64", "::1:2/128", "1:2:3:4:5:6:7:8/128", "1:2:3::/48"} {
		p := netip.MustParsePrefix(s)
		k := Key(p, "ssh-2_x")
		got, seq, ok := parseKey(k)
		if !ok || got != p || seq != "ssh-2_x" {
			t.Errorf("parseKey(Key(%s)) = %s %q %v (key %q)", p, got, seq, ok, k)
		}
		if !keyChars(k) {
			t.Errorf("Key(%s) = %q: characters a bucket key may not hold", p, k)
		}
	}
	for _, k := range []string{"", "ssh", "ssh.1-2-3-4", "ssh.1-2-3-4.x", "ssh.1-2-3-4.33", "ssh.1-2-3-0.8", "ssh.01-2-3-4.32"} {
		if _, _, ok := parseKey(k); ok {
			t.Errorf("parseKey(%q) accepted", k)
		}
	}
}

func keyChars(k string) bool {
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_=/.", c)) {
			return false
		}
	}
	return true
}

func TestVerify(t *testing.T) {
	key, other := newKey(t), newKey(t)
	pub := key.Public().(ed25519.PublicKey)
	until := time.Unix(1_900_000_000, 0)
	g := grantOf("198.51.100.7", until)
	good, err := sign(g, "test", "web1", key)
	if err != nil {
		t.Fatal(err)
	}
	k := Key(g.Source, g.Sequence)
	v, err := verify(k, good, "test", []ed25519.PublicKey{other.Public().(ed25519.PublicKey), pub})
	if err != nil {
		t.Fatal(err)
	}
	if v.Source != g.Source || v.Sequence != "ssh" || !v.Until.Equal(until) || !v.Knocked.Equal(g.Knocked) || len(v.Ports) != 1 || v.Ports[0] != (Port{"tcp", 22}) || v.Detector != "web1" {
		t.Errorf("verify = %+v, want the grant signed", v)
	}
	if v.Origin() != "fleet:web1/"+KeyID(pub) {
		t.Errorf("Origin = %q", v.Origin())
	}
	edit := func(f func(r *record)) []byte {
		var r record
		if err := json.Unmarshal(good, &r); err != nil {
			t.Fatal(err)
		}
		f(&r)
		b, _ := json.Marshal(r)
		return b
	}
	byOther, _ := sign(g, "test", "web1", other)
	for _, tc := range []struct {
		name, key string
		value     []byte
		trusted   []ed25519.PublicKey
		reason    string
	}{
		{"later until", k, edit(func(r *record) { r.Until += int64(time.Hour) }), nil, RefusedSignature},
		{"other port", k, edit(func(r *record) { r.Ports = []string{"23/tcp"} }), nil, RefusedSignature},
		{"other detector", k, edit(func(r *record) { r.Detector = "web2" }), nil, RefusedSignature},
		{"other source, its key", "ssh.198-51-100-8.32", edit(func(r *record) { r.Source = "198.51.100.8" }), nil, RefusedSignature},
		{"under another key", "ssh.198-51-100-8.32", good, nil, RefusedMalformed},
		{"unknown key", k, byOther, nil, RefusedUnknownKey},
		{"key id of a trusted key, signed by another", k, edit(func(r *record) { r.Sig = ed25519.Sign(other, r.signedBytes()) }), nil, RefusedSignature},
		{"no trusted keys", k, good, []ed25519.PublicKey{}, RefusedUnknownKey},
		{"other group", k, edit(func(r *record) { r.Group = "prod" }), nil, RefusedGroup},
		{"not JSON", k, []byte("hello"), nil, RefusedMalformed},
		{"unknown field", k, []byte(strings.Replace(string(good), `{"v":1`, `{"v":1,"x":1`, 1)), nil, RefusedMalformed},
		{"version", k, edit(func(r *record) { r.V = 2 }), nil, RefusedMalformed},
		{"newline in a field", k, edit(func(r *record) { r.Detector = "web1\nssh" }), nil, RefusedMalformed},
		{"oversized", k, append(good, make([]byte, maxRecord)...), nil, RefusedMalformed},
		{"bad source", k, edit(func(r *record) { r.Source = "198.51.100.7/24" }), nil, RefusedMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trusted := tc.trusted
			if trusted == nil {
				trusted = []ed25519.PublicKey{pub}
			}
			_, err := verify(tc.key, tc.value, "test", trusted)
			if !errors.Is(err, ErrRefused) || Reason(err) != tc.reason {
				t.Fatalf("verify = %v (reason %q), want refused for %s", err, Reason(err), tc.reason)
			}
		})
	}
}

func FuzzVerify(f *testing.F) {
	key := newKey(f)
	g := grantOf("2001:db8::7", time.Unix(1_900_000_000, 0))
	good, _ := sign(g, "test", "web1", key)
	f.Add(Key(g.Source, g.Sequence), good)
	f.Add("ssh.1-2-3-4.32", []byte(`{"v":1,"group":"test","source":"1.2.3.4","sequence":"ssh","ports":["22/tcp"]}`))
	trusted := []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}
	f.Fuzz(func(t *testing.T, k string, value []byte) {
		v, err := verify(k, value, "test", trusted)
		if err != nil {
			if Reason(err) == "" {
				t.Fatalf("verify error without a reason: %v", err)
			}
			return
		}
		if Key(v.Source, v.Sequence) != k || len(v.Ports) == 0 {
			t.Fatalf("verify accepted %q under %q as %+v", value, k, v)
		}
	})
}

// A knock published by a detector opens on the enforcer; its key
// expiring ends nothing early (the kernel ends the grant), a delete (a
// revoke) ends it at once.
func TestPublishApplyRevoke(t *testing.T) {
	b := newBus(t)
	key := newKey(t)
	pub, res := newPublisher(t, connect(t, b.url()), key)
	enf := startEnforcer(t, connect(t, b.url()), key.Public().(ed25519.PublicKey))

	g := grantOf("198.51.100.7", time.Now().Add(time.Hour))
	publishOK(t, pub, res, g)
	if s := enf.snapshot(t); s != [2]int{0, 0} && s != [2]int{1, 0} {
		t.Fatalf("snapshot %v", s)
	}
	k := Key(g.Source, "ssh")
	if c := enf.a.next(t); c != "apply "+k {
		t.Fatalf("change %q, want apply", c)
	}
	n, err := pub.Revoke(context.Background(), netip.MustParsePrefix("198.51.100.0/24"), "")
	if err != nil || n != 1 {
		t.Fatalf("Revoke = %d, %v", n, err)
	}
	if c := enf.a.next(t); c != "remove "+k {
		t.Fatalf("change %q, want remove", c)
	}
	if got := enf.e.Counts(); got[ResultApplied] != 1 || got[ResultRevoked] != 1 {
		t.Errorf("counts %v", got)
	}

	// A grant with a second to go: its key expires and the enforcer
	// leaves the end to the kernel.
	short := grantOf("198.51.100.8", time.Now().Add(1500*time.Millisecond))
	publishOK(t, pub, res, short)
	if c := enf.a.next(t); c != "apply "+Key(short.Source, "ssh") {
		t.Fatalf("change %q", c)
	}
	enf.a.quiet(t, 4*time.Second)
}

// Records the enforcer must refuse, each counted by its reason.
func TestEnforcerRefuses(t *testing.T) {
	b := newBus(t)
	key, stranger := newKey(t), newKey(t)
	c := connect(t, b.url())
	kv, err := c.bucket(context.Background(), GrantsBucket("test"), true, 1)
	if err != nil {
		t.Fatal(err)
	}
	enf := startEnforcer(t, connect(t, b.url()), key.Public().(ed25519.PublicKey))
	enf.snapshot(t)
	put := func(g Grant, k ed25519.PrivateKey, tamper func([]byte) []byte) {
		t.Helper()
		v, err := sign(g, "test", "web1", k)
		if err != nil {
			t.Fatal(err)
		}
		if tamper != nil {
			v = tamper(v)
		}
		if _, err := kv.Put(context.Background(), Key(g.Source, g.Sequence), v); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	put(grantOf("198.51.100.1", now.Add(time.Hour)), stranger, nil)
	put(grantOf("198.51.100.2", now.Add(time.Hour)), key, func(v []byte) []byte {
		return []byte(strings.Replace(string(v), `"22/tcp"`, `"23/tcp"`, 1))
	})
	put(grantOf("198.51.100.3", now.Add(-time.Minute)), key, nil)
	put(grantOf("198.51.100.4", now.Add(2*time.Hour)), key, nil)
	other := grantOf("198.51.100.5", now.Add(time.Hour))
	other.Sequence = "ftp"
	put(other, key, nil)
	put(grantOf("198.51.100.6", now.Add(time.Hour)), key, nil) // the one good record, last
	if c := enf.a.next(t); c != "apply ssh.198-51-100-6.32" {
		t.Fatalf("change %q: only the good record applies", c)
	}
	want := map[string]uint64{RefusedUnknownKey: 1, RefusedSignature: 1, RefusedExpired: 1, RefusedWindow: 1, RefusedSequence: 1, ResultApplied: 1}
	got := enf.e.Counts()
	for k, n := range want {
		if got[k] != n {
			t.Errorf("count %s = %d, want %d (all: %v)", k, got[k], n, got)
		}
	}
}

// The bus down: no new grants (a publish fails at once, and is not sent
// later); what the enforcer applied stays; after the bus is back the
// detector publishes again and the enforcer resumes.
func TestBusDownFailsClosed(t *testing.T) {
	b := newBus(t)
	key := newKey(t)
	pub, res := newPublisher(t, connect(t, b.url()), key)
	enf := startEnforcer(t, connect(t, b.url()), key.Public().(ed25519.PublicKey))
	g1 := grantOf("198.51.100.1", time.Now().Add(time.Hour))
	publishOK(t, pub, res, g1)
	enf.snapshot(t)
	if c := enf.a.next(t); c != "apply ssh.198-51-100-1.32" {
		t.Fatal(c)
	}

	b.stop()
	pub.Publish(grantOf("198.51.100.2", time.Now().Add(time.Hour)), nil)
	if err := res.next(t); Reason(err) != RefusedUnavailable {
		t.Fatalf("publish with the bus down: %v, want %s", err, RefusedUnavailable)
	}
	if got := enf.a.keys(); len(got) != 1 {
		t.Fatalf("held %v with the bus down, want the grant applied before", got)
	}

	b.start()
	if s := enf.snapshot(t); s[1] != 0 {
		t.Fatalf("snapshot after the restart %v: removed a live grant", s)
	}
	g3 := grantOf("198.51.100.3", time.Now().Add(time.Hour))
	deadline := time.Now().Add(10 * time.Second)
	for {
		pub.Publish(g3, nil)
		err := res.next(t)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish after the bus came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		c := enf.a.next(t)
		if c == "apply ssh.198-51-100-3.32" {
			break
		}
		if c != "apply ssh.198-51-100-1.32" {
			t.Fatalf("change %q", c)
		}
	}
	if got := enf.a.keys(); strings.Join(got, " ") != "ssh.198-51-100-1.32 ssh.198-51-100-3.32" {
		t.Fatalf("held %v; the grant refused while the bus was down must never appear", got)
	}
}

// An enforcer cut off from the bus while a grant is revoked and another
// made reconciles when it is back: the revoked one removed, the new one
// applied.
func TestEnforcerReconcilesAfterPartition(t *testing.T) {
	b := newBus(t)
	key := newKey(t)
	pub, res := newPublisher(t, connect(t, b.url()), key)
	px := newProxy(t, "127.0.0.1:"+itoa(b.port))
	for _, ip := range []string{"198.51.100.1", "198.51.100.2"} {
		publishOK(t, pub, res, grantOf(ip, time.Now().Add(time.Hour)))
	}
	enf := startEnforcer(t, connect(t, px.url()), key.Public().(ed25519.PublicKey))
	if s := enf.snapshot(t); s != [2]int{2, 0} {
		t.Fatalf("first snapshot %v", s)
	}
	enf.a.next(t)
	enf.a.next(t)
	px.partition()
	if n, err := pub.Revoke(context.Background(), netip.MustParsePrefix("198.51.100.1/32"), "ssh"); err != nil || n != 1 {
		t.Fatalf("Revoke = %d, %v", n, err)
	}
	publishOK(t, pub, res, grantOf("198.51.100.3", time.Now().Add(time.Hour)))
	enf.a.quiet(t, 500*time.Millisecond)
	px.mend()
	// The watch may catch up by itself before the new snapshot: either way
	// the revoked grant goes.
	enf.snapshot(t)
	if n := enf.e.Counts()[ResultRevoked]; n != 1 {
		t.Errorf("revoked %d grants, want 1", n)
	}
	if got := strings.Join(enf.a.keys(), " "); got != "ssh.198-51-100-2.32 ssh.198-51-100-3.32" {
		t.Fatalf("held %s after reconciling", got)
	}
}

// A restarted enforcer (its firewall kept its grants) takes the bucket as
// it is: live grants stay, grants revoked while it was stopped go, and so
// do grants whose signer is no longer trusted.
func TestEnforcerRestart(t *testing.T) {
	b := newBus(t)
	key := newKey(t)
	pub, res := newPublisher(t, connect(t, b.url()), key)
	for _, ip := range []string{"198.51.100.1", "198.51.100.2"} {
		publishOK(t, pub, res, grantOf(ip, time.Now().Add(time.Hour)))
	}
	// A grant of a detector whose key is no longer trusted.
	retired, resRetired := newPublisher(t, connect(t, b.url()), newKey(t))
	publishOK(t, retired, resRetired, grantOf("198.51.100.3", time.Now().Add(time.Hour)))
	// The grants a firewall kept across the restart: one the bus still
	// has, one revoked meanwhile, one signed by the retired key.
	a := newApplier()
	for _, g := range []Grant{grantOf("198.51.100.1", time.Now().Add(time.Hour)), grantOf("198.51.100.9", time.Now().Add(time.Hour)),
		grantOf("198.51.100.3", time.Now().Add(time.Hour))} {
		a.held[Key(g.Source, g.Sequence)] = Verified{Grant: g}
	}
	snaps := make(chan [2]int, 1)
	e := NewEnforcer(EnforcerOptions{Client: connect(t, b.url()), Trusted: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}, Apply: a,
		Window: func(string) (time.Duration, bool) { return time.Hour, true }, OnSnapshot: func(x, y int) { snaps <- [2]int{x, y} }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case s := <-snaps:
		if s != [2]int{2, 2} {
			t.Errorf("snapshot %v, want 2 applied, 2 removed", s)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no snapshot")
	}
	if got := strings.Join(a.keys(), " "); got != "ssh.198-51-100-1.32 ssh.198-51-100-2.32" {
		t.Fatalf("held %s", got)
	}
}

// A detector restart loses nothing: the grants it published stay in the
// bucket, and a new detector process publishes as before.
func TestDetectorRestart(t *testing.T) {
	b := newBus(t)
	key := newKey(t)
	enf := startEnforcer(t, connect(t, b.url()), key.Public().(ed25519.PublicKey))
	c1 := connect(t, b.url())
	pub1, res1 := newPublisher(t, c1, key)
	publishOK(t, pub1, res1, grantOf("198.51.100.1", time.Now().Add(time.Hour)))
	pub1.Close()
	c1.Close()
	c2 := connect(t, b.url())
	pub2, res2 := newPublisher(t, c2, key)
	publishOK(t, pub2, res2, grantOf("198.51.100.2", time.Now().Add(time.Hour)))
	enf.snapshot(t)
	for range 2 {
		enf.a.next(t)
	}
	if got := strings.Join(enf.a.keys(), " "); got != "ssh.198-51-100-1.32 ssh.198-51-100-2.32" {
		t.Fatalf("held %s", got)
	}
	kv, err := c2.bucket(context.Background(), GrantsBucket("test"), false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(context.Background(), "ssh.198-51-100-1.32"); err != nil {
		t.Fatalf("the first detector's grant: %v", err)
	}
}

// Two detectors reading the same stream: a one-time step grants once.
func TestOneTimeStepAcrossDetectors(t *testing.T) {
	b := newBus(t)
	key := newKey(t)
	pubA, resA := newPublisher(t, connect(t, b.url()), key)
	pubB, resB := newPublisher(t, connect(t, b.url()), key)
	used := &Used{Sequence: "otp", Step: 58_000_000, TTL: 3 * time.Minute}
	pubA.Publish(grantOf("198.51.100.1", time.Now().Add(time.Hour)), used)
	if err := resA.next(t); err != nil {
		t.Fatal(err)
	}
	pubB.Publish(grantOf("198.51.100.1", time.Now().Add(time.Hour)), used)
	if err := resB.next(t); Reason(err) != RefusedUsed {
		t.Fatalf("second detector: %v, want %s", err, RefusedUsed)
	}
	// The next step is new to both.
	publishUsedOK(t, pubB, resB, grantOf("198.51.100.1", time.Now().Add(time.Hour)), &Used{Sequence: "otp", Step: 58_000_001, TTL: 3 * time.Minute})
	if _, f := pubB.Counts(); f[RefusedUsed] != 1 {
		t.Errorf("failed counts %v", f)
	}
}

// The buckets' keys carry their TTL: a grant's key leaves the bucket when
// the grant ends.
func TestKeyTTL(t *testing.T) {
	b := newBus(t)
	key := newKey(t)
	c := connect(t, b.url())
	pub, res := newPublisher(t, c, key)
	g := grantOf("198.51.100.1", time.Now().Add(1200*time.Millisecond))
	publishOK(t, pub, res, g)
	kv, err := c.bucket(context.Background(), GrantsBucket("test"), false, 0)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := kv.Get(context.Background(), Key(g.Source, g.Sequence))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the key outlived its grant by 10s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A watch whose consumer is gone (its server died) while the connection
// stays up falls behind the stream: the enforcer watches again within
// seconds, not after the client's missed heartbeats.
func TestEnforcerWatchStall(t *testing.T) {
	b := newBus(t)
	key := newKey(t)
	c := connect(t, b.url())
	pub, res := newPublisher(t, c, key)
	publishOK(t, pub, res, grantOf("198.51.100.1", time.Now().Add(time.Hour)))
	enf := startEnforcer(t, connect(t, b.url()), key.Public().(ed25519.PublicKey))
	enf.snapshot(t)
	enf.a.next(t)
	ctx := context.Background()
	stream, err := c.js.Stream(ctx, "KV_"+GrantsBucket("test"))
	if err != nil {
		t.Fatal(err)
	}
	deleted := 0
	for name := range stream.ConsumerNames(ctx).Name() {
		if err := stream.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
		deleted++
	}
	if deleted == 0 {
		t.Fatal("the watch has no consumer to delete")
	}
	publishOK(t, pub, res, grantOf("198.51.100.2", time.Now().Add(time.Hour)))
	// A new watch, with its snapshot (the client's own recovery, after two
	// missed heartbeats 5 s apart, would bring no snapshot).
	if s := enf.snapshot(t); s != [2]int{2, 0} {
		t.Fatalf("snapshot of the new watch %v, want both grants", s)
	}
	if c := enf.a.next(t); c != "apply ssh.198-51-100-2.32" {
		t.Fatalf("change %q", c)
	}
}

// A bucket whose stream's last messages are gone (purged, or expired
// keys whose markers ended) is not a watch fallen behind: the enforcer
// keeps its watch.
func TestEnforcerWatchAfterPurge(t *testing.T) {
	b := newBus(t)
	key := newKey(t)
	c := connect(t, b.url())
	pub, res := newPublisher(t, c, key)
	publishOK(t, pub, res, grantOf("198.51.100.1", time.Now().Add(time.Hour)))
	ctx := context.Background()
	stream, err := c.js.Stream(ctx, "KV_"+GrantsBucket("test"))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	enf := startEnforcer(t, connect(t, b.url()), key.Public().(ed25519.PublicKey))
	if s := enf.snapshot(t); s != [2]int{0, 0} {
		t.Fatalf("snapshot %v of a purged bucket", s)
	}
	// Three checks of the watch against the stream.
	select {
	case s := <-enf.snapshots:
		t.Fatalf("a second snapshot %v: the watch was made again", s)
	case <-time.After(3*stallCheck + 500*time.Millisecond):
	}
	publishOK(t, pub, res, grantOf("198.51.100.2", time.Now().Add(time.Hour)))
	if c := enf.a.next(t); c != "apply ssh.198-51-100-2.32" {
		t.Fatalf("change %q", c)
	}
}
