package fleet

import (
	"context"
	"crypto/ed25519"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// rolePermissions reads the permissions docs/fleet.md gives each role
// (for group "prod"), for group "test": what the test proves is what the
// operator is told.
func rolePermissions(t *testing.T) (detector, enforcer *server.Permissions) {
	t.Helper()
	doc, err := os.ReadFile("../docs/fleet.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	start := strings.Index(text, "<!-- BEGIN role permissions")
	end := strings.Index(text, "<!-- END role permissions")
	if start < 0 || end < start {
		t.Fatal("docs/fleet.md has no role permissions block")
	}
	block := strings.ReplaceAll(text[start:end], "webknock-prod-", "webknock-test-")
	allow := func(role string) *server.Permissions {
		i := strings.Index(block, role+" = {")
		if i < 0 {
			t.Fatalf("docs/fleet.md: no %s permissions", role)
		}
		rest := block[i:]
		pub := rest[strings.Index(rest, "publish:"):]
		pub = pub[strings.Index(pub, "[")+1 : strings.Index(pub, "]")]
		sub := rest[strings.Index(rest, "subscribe:"):]
		sub = sub[strings.Index(sub, "[")+1 : strings.Index(sub, "]")]
		subjects := func(list string) []string {
			var out []string
			for _, f := range strings.Fields(strings.ReplaceAll(list, ",", " ")) {
				out = append(out, strings.Trim(f, `"`))
			}
			return out
		}
		return &server.Permissions{Publish: &server.SubjectPermission{Allow: subjects(pub)}, Subscribe: &server.SubjectPermission{Allow: subjects(sub)}}
	}
	return allow("DETECTOR"), allow("ENFORCER")
}

func TestRolePermissions(t *testing.T) {
	detectorPermissions, enforcerPermissions := rolePermissions(t)
	if len(enforcerPermissions.Publish.Allow) == 0 || slices.ContainsFunc(enforcerPermissions.Publish.Allow, func(s string) bool { return strings.HasPrefix(s, "$KV.") }) {
		t.Fatalf("docs/fleet.md lets an enforcer write keys: %v", enforcerPermissions.Publish.Allow)
	}
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
		Users: []*server.User{
			{Username: "detector", Password: "d", Permissions: detectorPermissions},
			{Username: "enforcer", Password: "e", Permissions: enforcerPermissions},
		}})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer func() { s.Shutdown(); s.WaitForShutdown() }()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("not ready")
	}
	url := s.ClientURL()
	as := func(user, pass string) *Client {
		t.Helper()
		c, err := dial(ConnOptions{Servers: []string{url}, Group: "test"}, nats.UserInfo(user, pass))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		for deadline := time.Now().Add(10 * time.Second); !c.Connected(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("not connected")
			}
		}
		return c
	}
	key := newKey(t)
	det := as("detector", "d")
	pub, res := newPublisher(t, det, key)
	pub.Publish(grantOf("198.51.100.1", time.Now().Add(time.Hour)), &Used{Sequence: "ssh", Step: 1, TTL: time.Minute})
	if err := res.next(t); err != nil {
		t.Fatalf("a detector's publish: %v", err)
	}
	pub.Publish(grantOf("198.51.100.2", time.Now().Add(time.Hour)), &Used{Sequence: "ssh", Step: 1, TTL: time.Minute})
	if err := res.next(t); Reason(err) != RefusedUsed {
		t.Fatalf("a detector's reuse of a step: %v, want %s", err, RefusedUsed)
	}

	enf := startEnforcer(t, as("enforcer", "e"), key.Public().(ed25519.PublicKey))
	if s := enf.snapshot(t); s != [2]int{1, 0} {
		t.Fatalf("an enforcer's snapshot: %v", s)
	}
	enf.a.next(t)
	if n, err := pub.Revoke(context.Background(), netip.MustParsePrefix("198.51.100.1/32"), ""); err != nil || n != 1 {
		t.Fatalf("a detector's revoke: %d, %v", n, err)
	}
	if c := enf.a.next(t); c != "remove ssh.198-51-100-1.32" {
		t.Fatalf("change %q", c)
	}

	// An enforcer's credentials cannot write a grant.
	forger := NewPublisher(PublisherOptions{Client: as("enforcer", "e"), Key: key, Detector: "x"})
	defer forger.Close()
	g := grantOf("198.51.100.3", time.Now().Add(time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	value, err := sign(g, "test", "x", key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := forger.o.Client.js.Publish(ctx, "$KV."+GrantsBucket("test")+"."+Key(g.Source, g.Sequence), value); err == nil {
		t.Fatal("an enforcer's credentials wrote a grant")
	}
	enf.a.quiet(t, 300*time.Millisecond)
}
