package firewall

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/webknock/webknock/internal/realtest"
)

// BenchmarkNFTGrant measures Grant on the nftables backend in a network
// namespace of its own: each iteration a new IPv6 client, with every
// earlier one still granted.
//
//	sudo go test ./firewall -run '^$' -bench NFTGrant -benchtime 10000x
func BenchmarkNFTGrant(b *testing.B) {
	realtest.Require(b, "the nftables benchmark", "ip", "nft")
	name := fmt.Sprintf("wk-nftb-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		b.Fatalf("ip netns add: %v: %s", err, out)
	}
	b.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ns, err := os.Open("/run/netns/" + name)
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	o, err := Options{Backend: backendNFTables, Protect: true, Ports: []Port{ssh}, StateDir: b.TempDir(),
		Sequences: []Sequence{{Name: "ssh", Ports: []Port{ssh}, Window: time.Hour}},
		Logger:    slog.New(slog.DiscardHandler)}.normalize()
	if err != nil {
		b.Fatal(err)
	}
	var rss [2]ruleset
	for _, fam := range families {
		rss[fam] = newNFTRulesNetns(fam, &o, int(ns.Fd()))
	}
	f := newFirewall(o, rss)
	ctx := context.Background()
	if err := f.start(ctx); err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	until := time.Now().Add(time.Hour)
	for i := 0; b.Loop(); i++ {
		ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 1, 14: byte(i >> 8), 15: byte(i)})
		if i >= 1<<16 {
			b.Fatal("at most 65,536 iterations")
		}
		if _, err := f.Grant(ctx, Grant{IP: ip, Sequence: "ssh", Ports: []Port{ssh}, Until: until}); err != nil {
			b.Fatal(err)
		}
	}
}
