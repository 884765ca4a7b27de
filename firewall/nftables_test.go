package firewall

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/webknock/webknock/internal/realtest"
	"golang.org/x/sys/unix"
)

// The real nftables tests: each makes a network namespace of its own; the
// ruleset talks to it over netlink, nft inspects it and tampers with it.

// nftNS is a network namespace of a test's own.
type nftNS struct {
	t    *testing.T
	name string
	fd   int
}

var nftNSSeq atomic.Int32

// newNFTNS makes a network namespace, deleted when the test ends. It
// skips (or fails, with WK_E2E=require) without root, ip and nft.
func newNFTNS(t *testing.T) *nftNS {
	t.Helper()
	realtest.Require(t, "the real-nftables test", "ip", "nft")
	name := fmt.Sprintf("wk-nft-%d-%d", os.Getpid(), nftNSSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		if os.Getenv(realtest.Env) == "require" {
			t.Fatalf("cannot create network namespace %s: %v: %s", name, err, out)
		}
		t.Skipf("skipping: cannot create network namespace %s: %v: %s", name, err, out)
	}
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = f.Close()
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete network namespace %s: %v: %s", name, err, out)
		}
	})
	return &nftNS{t: t, name: name, fd: int(f.Fd())}
}

// nft runs nft in the namespace; it must succeed.
func (ns *nftNS) nft(args ...string) string {
	ns.t.Helper()
	out, err := ns.try(args...)
	if err != nil {
		ns.t.Fatalf("nft %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

func (ns *nftNS) try(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.name, "nft"}, args...)...).CombinedOutput()
	return string(out), err
}

// nftElem is an element as `nft -j` lists it.
type nftElem struct {
	expires int // seconds; 0: none
	comment string
}

// elems lists a set of table inet webknock: its elements by key as nft
// writes them ("192.0.2.7 . tcp . 22", "10.0.0.0/24 . tcp . 22").
func (ns *nftNS) elems(set string) map[string]nftElem {
	ns.t.Helper()
	out := ns.nft("-j", "list", "set", "inet", "webknock", set)
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		ns.t.Fatalf("nft -j: %v: %s", err, out)
	}
	m := map[string]nftElem{}
	for _, o := range doc.Nftables {
		raw, ok := o["set"]
		if !ok {
			continue
		}
		var s struct {
			Elem []any `json:"elem"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			ns.t.Fatal(err)
		}
		for _, e := range s.Elem {
			var el nftElem
			if w, ok := e.(map[string]any)["elem"].(map[string]any); ok {
				e = w["val"]
				if x, ok := w["expires"].(float64); ok {
					el.expires = int(x)
				}
				el.comment, _ = w["comment"].(string)
			}
			m[nftJSONKey(e)] = el
		}
	}
	return m
}

func nftJSONKey(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.Itoa(int(x))
	case map[string]any:
		if c, ok := x["concat"].([]any); ok {
			parts := make([]string, len(c))
			for i, p := range c {
				parts[i] = nftJSONKey(p)
			}
			return strings.Join(parts, " . ")
		}
		if p, ok := x["prefix"].(map[string]any); ok {
			return fmt.Sprintf("%v/%v", p["addr"], p["len"])
		}
		if r, ok := x["range"].([]any); ok && len(r) == 2 {
			return nftJSONKey(r[0]) + "-" + nftJSONKey(r[1])
		}
	}
	return fmt.Sprint(v)
}

// testWriter sends the log to the test's.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func nftTestOptions(t *testing.T, dir string) *Options {
	return &Options{
		Table: "webknock", Hook: nftHookInput, StateDir: dir, Clock: realClock{}, CallTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// rules is a ruleset of family fam in the namespace.
func (ns *nftNS) rules(fam family, o *Options) *nftRules {
	r := newNFTRulesNetns(fam, o, ns.fd)
	ns.t.Cleanup(r.close)
	return r
}

// ready is a ruleset whose table, chain and sets exist, reconciled with
// want and t.
func (ns *nftNS) ready(fam family, o *Options, want []entry, t tail) *nftRules {
	ns.t.Helper()
	r := ns.rules(fam, o)
	if err := r.ensure(context.Background()); err != nil {
		ns.t.Fatal(err)
	}
	lost, used, err := r.reconcile(context.Background(), want, t)
	if err != nil || lost != nil || used != nil {
		ns.t.Fatalf("reconcile: lost %v, used %v: %v", lost, used, err)
	}
	return r
}

func ent(src string, port Port, seq string, until time.Time, door bool) entry {
	p, err := netip.ParsePrefix(src)
	if err != nil {
		a := netip.MustParseAddr(src)
		p = netip.PrefixFrom(a, a.BitLen())
	}
	return entry{src: p, port: port, seq: seq, until: until.Unix(), door: door}
}

var (
	nftSSH = Port{"tcp", 22}
	nftDNS = Port{"udp", 53}
)

func protectTail() tail {
	return tail{protect: true, ports: []Port{nftSSH, nftDNS},
		allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16"),
			netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("2001:db8:1::/48")}}
}

// TestNFTLayout checks the table, chains and sets ensure and reconcile make,
// for both families in one table, as nft lists them.
func TestNFTLayout(t *testing.T) {
	ns := newNFTNS(t)
	ctx := context.Background()
	o := nftTestOptions(t, "/var/lib/webknock")
	r4, r6 := ns.rules(ipv4, o), ns.rules(ipv6, o)
	// Both families at once, as their workers do.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, r := range []*nftRules{r4, r6} {
		wg.Go(func() { errs[i] = r.ensure(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	before := ns.nft("-a", "list", "ruleset")
	for _, r := range []*nftRules{r4, r6} {
		if err := r.ensure(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if after := ns.nft("-a", "list", "ruleset"); after != before {
		t.Errorf("a second ensure changed the ruleset:\n%s\nwas:\n%s", after, before)
	}
	tl := protectTail()
	until := time.Now().Add(time.Hour)
	w4 := []entry{ent("192.0.2.7", nftSSH, "ssh", until, false), ent("198.51.100.0/24", nftSSH, "ssh", until, false),
		ent("192.0.2.8", nftSSH, "ssh", until, true)}
	w6 := []entry{ent("2001:db8::7", nftSSH, "ssh", until, false), ent("2001:db8:2::/64", nftDNS, "ssh", until, false)}
	for _, x := range []struct {
		r    *nftRules
		want []entry
	}{{r4, w4}, {r6, w6}} {
		lost, used, err := x.r.reconcile(ctx, x.want, tl)
		if err != nil || lost != nil || used != nil {
			t.Fatalf("reconcile: lost %v, used %v: %v", lost, used, err)
		}
	}
	out := ns.nft("list", "ruleset")
	t.Logf("the ruleset:\n%s", out)
	for _, want := range []string{
		"table inet webknock {",
		"chain ipv4 {\n\t\ttype filter hook input priority filter - 10; policy accept;\n" +
			"\t\tcounter packets 0 bytes 0 comment \"webknock:owner:/var/lib/webknock\"\n" +
			"\t\tmeta nfproto != ipv4 return comment \"webknock:nfproto\"\n" +
			"\t\tmeta l4proto . th dport != @ports4 return comment \"webknock:ports\"\n" +
			"\t\tip saddr . meta l4proto . th dport @grant4 accept comment \"webknock:grants\"\n" +
			"\t\tip saddr . meta l4proto . th dport @net4 accept comment \"webknock:nets\"\n" +
			"\t\tct state new ip saddr . meta l4proto . th dport @door4 delete @door4 { ip saddr . meta l4proto . th dport } accept comment \"webknock:doors\"\n" +
			"\t\tip saddr @allow4 accept comment \"webknock:allow\"\n" +
			"\t\ttcp flags != syn / fin,syn,rst,ack ct state new reject with tcp reset comment \"webknock:reset\"\n" +
			"\t\ttcp flags & rst != rst ct direction reply reject with tcp reset comment \"webknock:reset\"\n" +
			"\t\tct state new drop comment \"webknock:protect\"\n\t}",
		"ip6 saddr . meta l4proto . th dport @grant6 accept",
		"meta nfproto != ipv6 return",
		"set net4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tflags interval,timeout\n",
		"set door4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tsize 1048576\n\t\tflags dynamic,timeout\n",
		"set allow6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = { 2001:db8:1::/48 }",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the ruleset lacks\n%s", want)
		}
	}
	if got := ns.elems("allow4"); len(got) != 2 || !hasKeys(got, "10.0.0.0/8", "192.168.0.0/16") {
		t.Errorf("allow4 = %v; want 10.0.0.0/8 and 192.168.0.0/16 (10.1.0.0/16 merged)", got)
	}
	if got := ns.elems("ports6"); !hasKeys(got, "tcp . 22", "udp . 53") || len(got) != 2 {
		t.Errorf("ports6 = %v", got)
	}
	for _, x := range []struct {
		r    *nftRules
		want []entry
	}{{r4, w4}, {r6, w6}} {
		if d, err := x.r.inspect(ctx, x.want, nil, tl); err != nil || !d.clean() {
			t.Errorf("%s: inspect after reconcile: %+v, %v", x.r.fam, d, err)
		}
	}
	// Without protect the tail goes, the guarded ports stay.
	off := tail{ports: tl.ports}
	if _, _, err := r4.reconcile(ctx, w4, off); err != nil {
		t.Fatal(err)
	}
	out = ns.nft("list", "chain", "inet", "webknock", "ipv4")
	if strings.Contains(out, "webknock:protect") || strings.Contains(out, "webknock:allow") || !strings.Contains(out, "webknock:doors") {
		t.Errorf("protect off, the chain is\n%s", out)
	}
	if got := ns.elems("ports4"); len(got) != 2 {
		t.Errorf("ports4 = %v", got)
	}
	if d, err := r4.inspect(ctx, w4, nil, off); err != nil || !d.clean() {
		t.Errorf("inspect: %+v, %v", d, err)
	}
	if d, err := r4.inspect(ctx, w4, nil, tl); err != nil || !d.tail {
		t.Errorf("inspect wanting protect: %+v, %v; want tail", d, err)
	}
}

func hasKeys[V any](m map[string]V, keys ...string) bool {
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			return false
		}
	}
	return true
}

// TestNFTAddList adds grants of each kind and lists them back.
func TestNFTAddList(t *testing.T) {
	ns := newNFTNS(t)
	ctx := context.Background()
	o := nftTestOptions(t, "")
	until := time.Now().Add(10 * time.Minute).Truncate(time.Second)
	r4 := ns.ready(ipv4, o, nil, tail{ports: []Port{nftSSH, nftDNS}})
	r6 := ns.ready(ipv6, o, nil, tail{ports: []Port{nftSSH, nftDNS}})
	es4 := []entry{ent("192.0.2.7", nftSSH, "ssh", until, false), ent("192.0.2.7", nftDNS, "ssh", until, false),
		ent("198.51.100.0/24", nftSSH, "office", until, false), ent("192.0.2.9", nftSSH, "once", until, true)}
	es6 := []entry{ent("2001:db8::7", nftSSH, "ssh", until, false), ent("2001:db8:5::/48", nftSSH, "office", until, false),
		ent("2001:db8::9", nftDNS, "once", until, true)}
	for _, x := range []struct {
		r  *nftRules
		es []entry
	}{{r4, es4}, {r6, es6}} {
		left, err := x.r.add(ctx, x.es)
		if err != nil || left != nil {
			t.Fatalf("add: %v, left %v", err, left)
		}
		got, err := x.r.list(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !sameEntries(got, x.es) {
			t.Errorf("%s: list = %v; want %v", x.r.fam, got, x.es)
		}
	}
	if got := ns.elems("net4"); got["198.51.100.0/24 . tcp . 22"].comment != grantComment("office", until.Unix()) {
		t.Errorf("net4 = %v", got)
	}
	if got := ns.elems("door6"); got["2001:db8::9 . udp . 53"].comment != grantComment("once", until.Unix()) {
		t.Errorf("door6 = %v", got)
	}
	if got := r4.describe(es4[2]); got != "ip saddr 198.51.100.0/24 . tcp . 22 @net4 (office until "+until.UTC().Format(time.RFC3339)+")" {
		t.Errorf("describe = %q", got)
	}
	if got := r6.describe(es6[0]); !strings.HasPrefix(got, "ip6 saddr 2001:db8::7 . tcp . 22 @grant6 (ssh until ") {
		t.Errorf("describe = %q", got)
	}
	// An element without our comment is not listed.
	ns.nft("add", "element", "inet", "webknock", "grant4", "{ 203.0.113.1 . tcp . 22 timeout 1h }")
	if got, err := r4.list(ctx); err != nil || len(got) != len(es4) {
		t.Errorf("list with a stranger's element = %v, %v", got, err)
	}
	// An entry already over is not added.
	if left, err := r4.add(ctx, []entry{ent("192.0.2.50", nftSSH, "ssh", time.Now().Add(-time.Second), false)}); err != nil || left != nil {
		t.Errorf("add of an ended entry: %v, %v", left, err)
	}
	if got := ns.elems("grant4"); hasKeys(got, "192.0.2.50 . tcp . 22") {
		t.Errorf("an ended entry was added: %v", got)
	}
	// A network overlapping another on the same port is refused with a
	// clear error, and nothing is added.
	_, err := r4.add(ctx, []entry{ent("192.0.2.60", nftSSH, "wide", until, false), ent("198.51.0.0/16", nftSSH, "wide", until, false)})
	if err == nil || !strings.Contains(err.Error(), "overlaps 198.51.100.0/24") {
		t.Errorf("overlapping network: %v", err)
	}
	if got := ns.elems("grant4"); hasKeys(got, "192.0.2.60 . tcp . 22") {
		t.Errorf("a refused add left %v", got)
	}
	if _, err := r4.add(ctx, []entry{ent("10.5.0.0/16", nftSSH, "a", until, false), ent("10.5.1.0/24", nftSSH, "b", until, false)}); err == nil ||
		!strings.Contains(err.Error(), "overlaps 10.5.0.0/16") {
		t.Errorf("two overlapping networks in one add: %v", err)
	}
	// So does reconcile: the one it cannot hold is lost, the others stay.
	wide := ent("198.51.0.0/16", nftSSH, "wide", until, false)
	lost, used, err := r4.reconcile(ctx, append(slices.Clone(es4), wide), tail{ports: []Port{nftSSH, nftDNS}})
	if err == nil || !slices.Equal(lost, []entry{wide}) || used != nil {
		t.Errorf("reconcile with an overlapping network: lost %v, used %v: %v", lost, used, err)
	}
	if got, err := r4.list(ctx); err != nil || !sameEntries(got, es4) {
		t.Errorf("list after: %v, %v", got, err)
	}
	// A stale network overlapping a new one goes first in the batch.
	if _, _, err := r4.reconcile(ctx, []entry{wide}, tail{ports: []Port{nftSSH, nftDNS}}); err != nil {
		t.Errorf("reconcile replacing a network by a wider one: %v", err)
	}
	if got, err := r4.list(ctx); err != nil || !sameEntries(got, []entry{wide}) {
		t.Errorf("list after: %v, %v", got, err)
	}
	// Without its table, add says errNoChain.
	ns.nft("delete", "table", "inet", "webknock")
	if _, err := r4.add(ctx, es4[:1]); !errors.Is(err, errNoChain) {
		t.Errorf("add without a table: %v; want errNoChain", err)
	}
	if _, err := r4.list(ctx); !errors.Is(err, errNoChain) {
		t.Errorf("list without a table: %v; want errNoChain", err)
	}
}

func sameEntries(a, b []entry) bool {
	key := func(e entry) string { return fmt.Sprint(e) }
	x, y := make([]string, len(a)), make([]string, len(b))
	for i, e := range a {
		x[i] = key(e)
	}
	for i, e := range b {
		y[i] = key(e)
	}
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

// TestNFTShared checks the element two entries share: an extension refreshes
// its timeout; deleting one entry leaves the other's.
func TestNFTShared(t *testing.T) {
	ns := newNFTNS(t)
	ctx := context.Background()
	r := ns.ready(ipv4, nftTestOptions(t, ""), nil, tail{ports: []Port{nftSSH}})
	now := time.Now()
	short := ent("192.0.2.7", nftSSH, "ssh", now.Add(time.Minute), false)
	long := ent("192.0.2.7", nftSSH, "web", now.Add(5*time.Minute), false)
	key := "192.0.2.7 . tcp . 22"
	expires := func(want time.Duration, comment string) {
		t.Helper()
		el, ok := ns.elems("grant4")[key]
		if !ok {
			t.Fatalf("no element %s", key)
		}
		if d := time.Duration(el.expires)*time.Second - want; d.Abs() > 2*time.Second || el.comment != comment {
			t.Errorf("element expires in %ds with comment %q; want %s and %q", el.expires, el.comment, want, comment)
		}
	}
	if _, err := r.add(ctx, []entry{short}); err != nil {
		t.Fatal(err)
	}
	expires(time.Minute, grantComment("ssh", short.until))
	// The extension: the element now ends later.
	if _, err := r.add(ctx, []entry{long}); err != nil {
		t.Fatal(err)
	}
	expires(5*time.Minute, grantComment("web", long.until))
	// The extension ends first: the element goes back to the other's until.
	if _, err := r.del(ctx, long); err != nil {
		t.Fatal(err)
	}
	expires(time.Minute, grantComment("ssh", short.until))
	if _, err := r.del(ctx, short); err != nil {
		t.Fatal(err)
	}
	if got := ns.elems("grant4"); len(got) != 0 {
		t.Errorf("after both deletes: %v", got)
	}
	// A grant and its replacement with the same until share it too.
	if _, err := r.add(ctx, []entry{short, long}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.del(ctx, short); err != nil {
		t.Fatal(err)
	}
	expires(5*time.Minute, grantComment("web", long.until))
}

// TestNFTDelGone deletes elements that are already gone: deleted by someone
// else, or expired.
func TestNFTDelGone(t *testing.T) {
	ns := newNFTNS(t)
	ctx := context.Background()
	r := ns.ready(ipv4, nftTestOptions(t, ""), nil, tail{ports: []Port{nftSSH}})
	now := time.Now()
	a := ent("192.0.2.7", nftSSH, "ssh", now.Add(time.Hour), false)
	b := ent("192.0.2.8", nftSSH, "ssh", now.Add(time.Hour), true)
	soon := entry{src: netip.MustParsePrefix("192.0.2.9/32"), port: nftSSH, seq: "ssh", until: now.Unix() + 2}
	soonNet := entry{src: netip.MustParsePrefix("192.0.3.0/24"), port: nftSSH, seq: "ssh", until: now.Unix() + 2}
	if _, err := r.add(ctx, []entry{a, b, soon, soonNet}); err != nil {
		t.Fatal(err)
	}
	if got := ns.elems("net4"); got["192.0.3.0/24 . tcp . 22"].expires == 0 {
		t.Fatalf("net4 = %v", got)
	}
	ns.nft("delete", "element", "inet", "webknock", "grant4", "{ 192.0.2.7 . tcp . 22 }")
	ns.nft("delete", "element", "inet", "webknock", "door4", "{ 192.0.2.8 . tcp . 22 }")
	for _, e := range []entry{a, b} {
		if _, err := r.del(ctx, e); err != nil {
			t.Errorf("delete of %s, gone: %v", r.describe(e), err)
		}
	}
	// Expired, but maybe not collected yet.
	time.Sleep(time.Until(time.Unix(soon.until, 0).Add(200 * time.Millisecond)))
	// The kernel expires them, a network's too (an interval set of
	// concatenations takes timeouts).
	for _, set := range []string{"grant4", "net4"} {
		if got := ns.elems(set); len(got) != 0 {
			t.Errorf("expired element still listed: %s %v", set, got)
		}
	}
	for _, e := range []entry{soon, soonNet} {
		if _, err := r.del(ctx, e); err != nil {
			t.Errorf("delete of an expired element: %v", err)
		}
	}
	// Without the table the element is gone too.
	ns.nft("delete", "table", "inet", "webknock")
	if _, err := r.del(ctx, a); err != nil {
		t.Errorf("delete without a table: %v", err)
	}
}

// TestNFTChunks adds 5,000 entries in one call: more than one batch holds.
func TestNFTChunks(t *testing.T) {
	ns := newNFTNS(t)
	ctx := context.Background()
	r := ns.ready(ipv4, nftTestOptions(t, ""), nil, tail{ports: []Port{nftSSH}})
	until := time.Now().Add(time.Hour)
	es := make([]entry, 5000)
	for i := range es {
		es[i] = ent(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), nftSSH, "ssh", until, i%5 == 0)
	}
	start := time.Now()
	if left, err := r.add(ctx, es); err != nil || left != nil {
		t.Fatalf("add: %v, left %v", err, left)
	}
	t.Logf("add of %d entries: %s", len(es), time.Since(start))
	got, err := r.list(ctx)
	if err != nil || len(got) != len(es) {
		t.Fatalf("list: %d entries, %v", len(got), err)
	}
	start = time.Now()
	if d, err := r.inspect(ctx, es, nil, tail{ports: []Port{nftSSH}}); err != nil || !d.clean() {
		t.Errorf("inspect: %+v, %v", d, err)
	}
	t.Logf("inspect of %d entries: %s", len(es), time.Since(start))
	start = time.Now()
	const n = 100
	for i := range n {
		e := ent(fmt.Sprintf("192.0.2.%d", i), nftSSH, "ssh", until, false)
		if _, err := r.add(ctx, []entry{e}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.del(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("one add and one delete, %d entries in the set: %s", len(es), time.Since(start)/n)
	// A reconcile that deletes them all, in batches.
	start = time.Now()
	if _, _, err := r.reconcile(ctx, nil, tail{ports: []Port{nftSSH}}); err != nil {
		t.Fatal(err)
	}
	t.Logf("reconcile deleting %d entries: %s", len(es), time.Since(start))
	if got := ns.elems("grant4"); len(got) != 0 {
		t.Errorf("%d elements left", len(got))
	}
}

// TestNFTInspect tampers with the ruleset as others might, and checks that
// inspect sees each change and reconcile repairs it.
func TestNFTInspect(t *testing.T) {
	ns := newNFTNS(t)
	ctx := context.Background()
	tl := protectTail()
	until := time.Now().Add(time.Hour)
	want := []entry{ent("192.0.2.7", nftSSH, "ssh", until, false), ent("192.0.2.7", nftDNS, "ssh", until, false),
		ent("198.51.100.0/24", nftSSH, "office", until, false), ent("192.0.2.8", nftSSH, "once", until, true)}
	r := ns.ready(ipv4, nftTestOptions(t, "/var/lib/webknock"), want, tl)
	check := func(what string, wantDrift drift, wantUsed int) {
		t.Helper()
		d, err := r.inspect(ctx, want, nil, tl)
		if err != nil {
			t.Fatalf("%s: inspect: %v", what, err)
		}
		if d != wantDrift {
			t.Errorf("%s: drift %+v; want %+v", what, d, wantDrift)
		}
		// Repair as the worker does.
		if d.noChain {
			if err := r.ensure(ctx); err != nil {
				t.Fatalf("%s: ensure: %v", what, err)
			}
		}
		lost, used, err := r.reconcile(ctx, want, tl)
		if err != nil || lost != nil || len(used) != wantUsed {
			t.Fatalf("%s: reconcile: lost %v, used %v: %v", what, lost, used, err)
		}
		if d, err := r.inspect(ctx, slices.DeleteFunc(slices.Clone(want), func(e entry) bool { return slices.Contains(used, e) }), nil, tl); err != nil || !d.clean() {
			t.Errorf("%s: after the repair: %+v, %v", what, d, err)
		}
	}
	check("untouched", drift{}, 0)

	ns.nft("delete", "element", "inet", "webknock", "grant4", "{ 192.0.2.7 . udp . 53 }")
	check("element deleted", drift{missing: 1}, 0)

	ns.nft("add", "element", "inet", "webknock", "grant4", "{ 203.0.113.9 . tcp . 22 timeout 1h comment \"webknock:ssh:"+strconv.FormatInt(until.Unix(), 10)+"\" }")
	ns.nft("add", "element", "inet", "webknock", "net4", "{ 203.0.114.0/24 . tcp . 22 timeout 1h }")
	check("elements added", drift{extra: 2}, 0)

	// Someone makes a grant longer.
	ns.nft("delete", "element", "inet", "webknock", "grant4", "{ 192.0.2.7 . tcp . 22 }")
	ns.nft("add", "element", "inet", "webknock", "grant4", "{ 192.0.2.7 . tcp . 22 timeout 10h comment \"webknock:ssh:"+strconv.FormatInt(until.Unix(), 10)+"\" }")
	check("element extended", drift{missing: 1}, 0)

	ns.nft("flush", "chain", "inet", "webknock", "ipv4")
	check("chain flushed", drift{marker: true, tail: true}, 0)

	ns.nft("delete", "rule", "inet", "webknock", "ipv4", "handle", ruleHandle(t, ns, "webknock:protect"))
	check("drop deleted", drift{tail: true}, 0)

	ns.nft("insert", "rule", "inet", "webknock", "ipv4", "tcp", "dport", "22", "accept")
	check("rule inserted", drift{marker: true, tail: true, extra: 1}, 0)

	ns.nft("flush", "set", "inet", "webknock", "allow4")
	check("always_allow flushed", drift{tail: true}, 0)

	ns.nft("add", "element", "inet", "webknock", "ports4", "{ tcp . 80 }")
	check("port added", drift{tail: true}, 0)

	ns.nft("add", "table", "inet", "webknock", "{ flags dormant; }")
	check("table dormant", drift{tail: true}, 0)

	ns.nft("add", "chain", "inet", "webknock", "ipv4", "{ policy drop; }")
	check("policy changed", drift{tail: true}, 0)

	ns.nft("add", "table", "inet", "webknock", "{ flags dormant; }")
	ns.nft("flush", "chain", "inet", "webknock", "ipv4")
	ns.nft("delete", "chain", "inet", "webknock", "ipv4")
	check("table dormant, chain deleted", drift{noChain: true, missing: len(want), tail: true}, 0)

	ns.nft("delete", "table", "inet", "webknock")
	check("table deleted", drift{noChain: true, missing: len(want), tail: true}, 0)

	// A connection used the door.
	ns.nft("delete", "element", "inet", "webknock", "door4", "{ 192.0.2.8 . tcp . 22 }")
	check("door used", drift{used: 1}, 1)
	if got := ns.elems("door4"); len(got) != 0 {
		t.Errorf("a used door was restored: %v", got)
	}
	want = want[:3]

	// Elements a delete is retried for are not extra.
	doomed := ent("192.0.2.99", nftSSH, "ssh", until, false)
	if _, err := r.add(ctx, []entry{doomed}); err != nil {
		t.Fatal(err)
	}
	if d, err := r.inspect(ctx, want, []entry{doomed}, tl); err != nil || !d.clean() {
		t.Errorf("doomed: %+v, %v", d, err)
	}
	if d, err := r.inspect(ctx, want, nil, tl); err != nil || d != (drift{extra: 1}) {
		t.Errorf("not doomed: %+v, %v", d, err)
	}
}

// ruleHandle finds the handle of the first rule of chain ipv4 with comment.
func ruleHandle(t *testing.T, ns *nftNS, comment string) string {
	t.Helper()
	for _, l := range strings.Split(ns.nft("-a", "list", "chain", "inet", "webknock", "ipv4"), "\n") {
		if strings.Contains(l, `comment "`+comment+`"`) {
			if _, h, ok := strings.Cut(l, "# handle "); ok {
				return strings.TrimSpace(h)
			}
		}
	}
	t.Fatalf("no rule with comment %s", comment)
	return ""
}

// TestNFTOwnership refuses tables that are not ours, and adopts an empty chain.
func TestNFTOwnership(t *testing.T) {
	ctx := context.Background()
	t.Run("foreign", func(t *testing.T) {
		ns := newNFTNS(t)
		ns.nft("add", "table", "inet", "webknock")
		ns.nft("add", "chain", "inet", "webknock", "other", "{ type filter hook input priority 0; policy accept; }")
		r := ns.rules(ipv4, nftTestOptions(t, "/var/lib/webknock"))
		err := r.probe(ctx)
		var oe *OptionError
		if !errors.As(err, &oe) || oe.Option != "table" || !strings.Contains(err.Error(), "chain other") ||
			!strings.Contains(err.Error(), "table inet webknock") || !strings.Contains(err.Error(), "firewall.table") {
			t.Errorf("probe: %v", err)
		}
		t.Log(err)
		for name, fn := range map[string]func(context.Context) error{"ensure": r.ensure, "owned": r.owned} {
			if err := fn(ctx); err == nil || !strings.Contains(err.Error(), "chain other") {
				t.Errorf("%s: %v", name, err)
			}
		}
		if _, _, err := r.reconcile(ctx, nil, tail{}); err == nil {
			t.Error("reconcile took a foreign table")
		}
		if out := ns.nft("list", "table", "inet", "webknock"); strings.Contains(out, "ipv4") {
			t.Errorf("the foreign table was changed:\n%s", out)
		}
	})
	t.Run("foreign rules", func(t *testing.T) {
		ns := newNFTNS(t)
		ns.nft("add", "table", "inet", "webknock")
		ns.nft("add", "chain", "inet", "webknock", "ipv4", "{ type filter hook input priority 0; policy accept; }")
		ns.nft("add", "rule", "inet", "webknock", "ipv4", "tcp", "dport", "80", "accept")
		r := ns.rules(ipv4, nftTestOptions(t, ""))
		if err := r.probe(ctx); err == nil || !strings.Contains(err.Error(), "1 rule in chain ipv4") {
			t.Errorf("probe: %v", err)
		}
	})
	t.Run("other state_dir", func(t *testing.T) {
		ns := newNFTNS(t)
		ns.ready(ipv4, nftTestOptions(t, "/srv/a"), nil, tail{})
		r := ns.rules(ipv4, nftTestOptions(t, "/srv/b"))
		err := r.probe(ctx)
		var oe *OptionError
		if !errors.As(err, &oe) || oe.Option != "table" || !strings.Contains(err.Error(), "state_dir /srv/a") {
			t.Errorf("probe: %v", err)
		}
		t.Log(err)
		if err := r.ensure(ctx); err == nil {
			t.Error("ensure took another webknock's table")
		}
		// The other family too: one table for both.
		if err := ns.rules(ipv6, nftTestOptions(t, "/srv/b")).ensure(ctx); err == nil {
			t.Error("ensure of IPv6 took another webknock's table")
		}
		if err := ns.rules(ipv6, nftTestOptions(t, "/srv/a")).ensure(ctx); err != nil {
			t.Error(err)
		}
	})
	t.Run("empty chain adopted", func(t *testing.T) {
		ns := newNFTNS(t)
		ns.nft("add", "table", "inet", "webknock")
		ns.nft("add", "chain", "inet", "webknock", "ipv4", "{ type filter hook input priority -10; policy accept; }")
		r := ns.rules(ipv4, nftTestOptions(t, ""))
		if err := r.probe(ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.ensure(ctx); err != nil {
			t.Fatal(err)
		}
		if out := ns.nft("list", "chain", "inet", "webknock", "ipv4"); !strings.Contains(out, `comment "webknock:owner"`) {
			t.Errorf("no marker:\n%s", out)
		}
	})
	t.Run("flush", func(t *testing.T) {
		ns := newNFTNS(t)
		r := ns.ready(ipv4, nftTestOptions(t, ""), nil, tail{})
		ns.ready(ipv6, nftTestOptions(t, ""), nil, tail{})
		if err := r.owned(ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.flush(ctx); err != nil {
			t.Fatal(err)
		}
		if out, err := ns.try("list", "table", "inet", "webknock"); err == nil {
			t.Errorf("table left:\n%s", out)
		}
		if err := r.flush(ctx); err != nil {
			t.Errorf("flush without a table: %v", err)
		}
		if err := r.owned(ctx); err != nil {
			t.Errorf("owned without a table: %v", err)
		}
		if err := r.probe(ctx); err != nil {
			t.Errorf("probe without a table: %v", err)
		}
	})
}

// TestNFTHook checks the forward hook, and that a chain hooked otherwise is
// rebuilt.
func TestNFTHook(t *testing.T) {
	ns := newNFTNS(t)
	ctx := context.Background()
	o := nftTestOptions(t, "")
	ns.ready(ipv4, o, nil, tail{})
	o2 := *o
	o2.Hook = nftHookForward
	r := ns.rules(ipv4, &o2)
	if err := r.ensureHook(ctx); err != nil {
		t.Fatal(err)
	}
	d, err := r.inspect(ctx, nil, nil, tail{})
	if err != nil || d != (drift{tail: true}) {
		t.Errorf("inspect: %+v, %v", d, err)
	}
	if _, _, err := r.reconcile(ctx, nil, tail{}); err != nil {
		t.Fatal(err)
	}
	if out := ns.nft("list", "chain", "inet", "webknock", "ipv4"); !strings.Contains(out, "hook forward priority filter - 10") {
		t.Errorf("chain:\n%s", out)
	}
}

// TestNFTMonitor checks that the monitor tells of others' changes to our
// table at once, and stays quiet for ours and for other tables.
func TestNFTMonitor(t *testing.T) {
	ns := newNFTNS(t)
	ctx := context.Background()
	o := nftTestOptions(t, "")
	r := ns.ready(ipv4, o, nil, tail{ports: []Port{nftSSH}})
	r6 := ns.ready(ipv6, o, nil, tail{ports: []Port{nftSSH}})
	stop := make(chan struct{})
	hints := r.watch(stop)
	quiet := func(what string) {
		t.Helper()
		select {
		case h := <-hints:
			t.Errorf("%s: hint %q", what, h)
		case <-time.After(300 * time.Millisecond):
		}
	}
	told := func(what string, words ...string) {
		t.Helper()
		select {
		case h := <-hints:
			t.Logf("%s: %s", what, h)
			for _, w := range words {
				if !strings.Contains(h, w) {
					t.Errorf("%s: hint %q lacks %q", what, h, w)
				}
			}
		case <-time.After(time.Second):
			t.Errorf("%s: no hint within a second", what)
		}
	}
	until := time.Now().Add(time.Hour)
	e := ent("192.0.2.7", nftSSH, "ssh", until, false)
	if _, err := r.add(ctx, []entry{e}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.del(ctx, e); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.reconcile(ctx, []entry{e}, protectTail()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r6.reconcile(ctx, nil, protectTail()); err != nil {
		t.Fatal(err)
	}
	quiet("our own changes")
	// Many at once: the monitor reads them all, or says it missed some.
	many := make([]entry, 5000)
	for i := range many {
		many[i] = ent(fmt.Sprintf("10.0.%d.%d", i>>8&255, i&255), nftSSH, "ssh", until, false)
	}
	if _, err := r.add(ctx, many); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.reconcile(ctx, []entry{e}, protectTail()); err != nil {
		t.Fatal(err)
	}
	quiet("our own 5,000 elements")
	ns.nft("add", "table", "inet", "other")
	ns.nft("add", "set", "inet", "other", "grant4", "{ type ipv4_addr; }")
	ns.nft("add", "element", "inet", "other", "grant4", "{ 192.0.2.1 }")
	quiet("another table's changes")
	ns.nft("add", "element", "inet", "webknock", "grant6", "{ 2001:db8::1 . tcp . 22 }")
	quiet("the other family's set")
	ns.nft("delete", "element", "inet", "webknock", "grant4", "{ 192.0.2.7 . tcp . 22 }")
	told("element deleted", "element of set grant4", "nft (pid ")
	ns.nft("delete", "table", "inet", "webknock")
	told("table deleted", "table inet webknock deleted", "nft (pid ")
	quiet("after the hint")
	close(stop)
	select {
	case _, ok := <-hints:
		if ok {
			t.Error("a hint after stop")
		}
	case <-time.After(time.Second):
		t.Error("the channel is still open a second after stop")
	}
}

// TestNFTUsable probes nftables here.
func TestNFTUsable(t *testing.T) {
	realtest.Require(t, "the real-nftables test", "nft")
	if err := nftUsable(context.Background(), &Options{CallTimeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
}

func TestNFTNew(t *testing.T) {
	o := nftTestOptions(t, "")
	r := newNFTRules(ipv6, o)
	if r.name() != "nftables" || r.chain != "ipv6" || r.setName(nftGrant) != "grant6" || r.retrier().cmd != "nftables" {
		t.Errorf("ruleset %s, chain %s, set %s", r.name(), r.chain, r.setName(nftGrant))
	}
	// A hook nftables cannot use is refused by the one check of the options.
	o.Backend, o.Hook = backendNFTables, "DOCKER-USER"
	var oe *OptionError
	if err := CheckOptions(*o); !errors.As(err, &oe) || oe.Option != "hook" {
		t.Errorf("hook DOCKER-USER: %v", err)
	}
}

// TestNFTPackets sends TCP connections through the rules: a veth pair
// between a client namespace and the firewall's.
func TestNFTPackets(t *testing.T) {
	srv := newNFTNS(t)
	cli := newNFTNS(t)
	for _, args := range [][]string{
		{"link", "add", "wkc", "netns", cli.name, "type", "veth", "peer", "name", "wks", "netns", srv.name},
		{"-n", cli.name, "addr", "add", "192.0.2.1/24", "dev", "wkc"},
		{"-n", cli.name, "addr", "add", "192.0.2.3/24", "dev", "wkc"},
		{"-n", srv.name, "addr", "add", "192.0.2.2/24", "dev", "wks"},
		{"-n", cli.name, "link", "set", "wkc", "up"},
		{"-n", srv.name, "link", "set", "wks", "up"},
		{"-n", srv.name, "link", "set", "lo", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ctx := context.Background()
	var ln net.Listener
	inNetns(t, srv.fd, func() {
		var err error
		ln, err = net.Listen("tcp4", "192.0.2.2:22")
		if err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, 1)
				for {
					if _, err := c.Read(b); err != nil {
						return
					}
					if _, err := c.Write(b); err != nil {
						return
					}
				}
			}()
		}
	}()
	dial := func(from string) (net.Conn, error) {
		var c net.Conn
		var err error
		inNetns(t, cli.fd, func() {
			d := net.Dialer{Timeout: 500 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
			c, err = d.Dial("tcp4", "192.0.2.2:22")
		})
		return c, err
	}
	echo := func(c net.Conn) error {
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte{'x'}); err != nil {
			return err
		}
		_, err := c.Read(make([]byte, 1))
		return err
	}
	connects := func(what, from string, want bool) net.Conn {
		t.Helper()
		c, err := dial(from)
		if err == nil {
			err = echo(c)
		}
		if (err == nil) != want {
			t.Errorf("%s: connection from %s: %v; want connected %v", what, from, err, want)
		}
		return c
	}
	tl := tail{protect: true, ports: []Port{nftSSH}}
	r := srv.ready(ipv4, nftTestOptions(t, ""), nil, tl)
	connects("protected", "192.0.2.1", false)
	until := time.Now().Add(time.Hour)
	grant := ent("192.0.2.1", nftSSH, "ssh", until, false)
	if _, err := r.add(ctx, []entry{grant}); err != nil {
		t.Fatal(err)
	}
	c := connects("granted", "192.0.2.1", true)
	connects("another address", "192.0.2.3", false)
	if _, err := r.del(ctx, grant); err != nil {
		t.Fatal(err)
	}
	if c != nil {
		if err := echo(c); err != nil {
			t.Errorf("an established session ended with its grant: %v", err)
		}
		c.Close()
	}
	connects("revoked", "192.0.2.1", false)
	// A door: the first connection goes through, and holds; the next is
	// dropped.
	door := ent("192.0.2.1", nftSSH, "once", until, true)
	if _, err := r.add(ctx, []entry{door}); err != nil {
		t.Fatal(err)
	}
	first := connects("door", "192.0.2.1", true)
	if got := srv.elems("door4"); len(got) != 0 {
		t.Errorf("door still open after a connection: %v", got)
	}
	connects("door used", "192.0.2.1", false)
	if first != nil {
		if err := echo(first); err != nil {
			t.Errorf("the door's connection broke: %v", err)
		}
		first.Close()
	}
	if d, err := r.inspect(ctx, []entry{door}, nil, tl); err != nil || d != (drift{used: 1}) {
		t.Errorf("inspect: %+v, %v; want used 1", d, err)
	}
	// A network grant.
	if _, err := r.add(ctx, []entry{ent("192.0.2.0/24", nftSSH, "office", until, false)}); err != nil {
		t.Fatal(err)
	}
	connects("network", "192.0.2.3", true)
}

// inNetns runs fn on a thread in the network namespace fd: the sockets it
// opens stay there.
func inNetns(t *testing.T, fd int, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is not unlocked: it dies with its namespace.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			t.Error(err)
			return
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}

// Without a kernel.

func TestNFTRanges(t *testing.T) {
	r := &nftRules{fam: ipv4}
	for _, c := range []struct {
		first, last string
		want        string
	}{
		{"10.0.0.0", "10.0.0.255", "10.0.0.0/24"},
		{"10.0.0.1", "10.0.0.1", "10.0.0.1/32"},
		{"0.0.0.0", "255.255.255.255", "0.0.0.0/0"},
		{"10.0.0.1", "10.0.0.255", ""},
		{"10.0.0.0", "10.0.1.254", ""},
	} {
		p, ok := nftRangePrefix(netip.MustParseAddr(c.first), netip.MustParseAddr(c.last))
		if got := map[bool]string{true: p.String()}[ok]; got != c.want {
			t.Errorf("%s-%s: %q; want %q", c.first, c.last, got, c.want)
		}
	}
	tl := &tail{allow: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("11.0.0.0/8"), netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("255.255.255.0/24"),
		netip.MustParsePrefix("2001:db8::/32")}}
	rs := r.allowRanges(tl)
	want := []nftRange{
		{netip.MustParseAddr("10.0.0.0"), netip.MustParseAddr("11.255.255.255")},
		{netip.MustParseAddr("192.168.1.0"), netip.MustParseAddr("192.168.1.255")},
		{netip.MustParseAddr("255.255.255.0"), netip.MustParseAddr("255.255.255.255")},
	}
	if !slices.Equal(rs, want) {
		t.Errorf("ranges %v; want %v", rs, want)
	}
	back, ok := r.parseAllow(nftAllowElems(rs))
	if !ok || !slices.Equal(back, rs) {
		t.Errorf("parsed back %v, %v", back, ok)
	}
	if all := r.allowRanges(&tail{allow: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}); len(nftAllowElems(all)) != 1 {
		t.Errorf("0.0.0.0/0: %v", nftAllowElems(all))
	}
}

// TestNFTGeneration: the kernel's generation stays while nothing changes
// and moves with our own change and with anyone else's.
func TestNFTGeneration(t *testing.T) {
	ns := newNFTNS(t)
	ctx := context.Background()
	r := ns.ready(ipv4, nftTestOptions(t, ""), nil, tail{ports: []Port{nftSSH}})
	gen := func() uint32 {
		t.Helper()
		n, err := r.generation(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	g1 := gen()
	if g2 := gen(); g2 != g1 {
		t.Errorf("generation moved with no change: %d, then %d", g1, g2)
	}
	if left, err := r.add(ctx, []entry{ent("192.0.2.7", nftSSH, "ssh", time.Now().Add(time.Hour), false)}); err != nil || left != nil {
		t.Fatalf("add: %v, left %v", err, left)
	}
	g3 := gen()
	if g3 == g1 {
		t.Error("generation did not move with our own change")
	}
	ns.nft("add", "element", "inet", "webknock", "grant4", "{ 203.0.113.1 . tcp . 22 timeout 1h }")
	if gen() == g3 {
		t.Error("generation did not move with another's change")
	}
}
