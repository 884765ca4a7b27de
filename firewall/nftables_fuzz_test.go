package firewall

import (
	"bytes"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
)

// FuzzNFTElement: any key the kernel lists is read without a panic, and
// one that reads as ours is exactly the key webknock writes for it.
func FuzzNFTElement(f *testing.F) {
	for _, fam := range families {
		r := &nftRules{fam: fam}
		for _, e := range []entry{
			{src: netip.MustParsePrefix("192.0.2.7/32"), port: ssh},
			{src: netip.MustParsePrefix("198.51.100.0/24"), port: Port{Proto: "udp", Number: 53}},
			{src: netip.MustParsePrefix("2001:db8::7/128"), port: ssh},
			{src: netip.MustParsePrefix("2001:db8::/48"), port: ssh},
		} {
			key, end := r.elemKey(nftKeyOf(e))
			f.Add(uint8(fam), key, end)
		}
	}
	f.Fuzz(func(t *testing.T, fam uint8, key, end []byte) {
		r := &nftRules{fam: family(fam % 2)}
		for _, kind := range []string{nftGrant, nftNet, nftDoor} {
			k, ok := r.parseElem(kind, nftables.SetElement{Key: key, KeyEnd: end})
			if !ok {
				continue
			}
			k2, e2 := r.elemKey(k)
			if !bytes.Equal(k2, key) || !bytes.Equal(e2, end) {
				t.Fatalf("%s: key %x end %x read as %+v, written back as %x %x", kind, key, end, k, k2, e2)
			}
		}
	})
}

// FuzzNFTMonitor: any message on the nftables netlink group is read
// without a panic, by the nftables monitor and by the iptables backend's.
func FuzzNFTMonitor(f *testing.F) {
	f.Add(uint16(10<<8|16), []byte{1, 0, 0, 0, 13, 0, 1, 0, 'w', 'e', 'b', 'k', 'n', 'o', 'c', 'k', 0})
	f.Add(uint16(10<<8|16), []byte{1, 0, 0, 0})
	f.Add(uint16(10<<8|14), []byte{1, 0, 0, 0, 8, 0, 2, 0, 0, 0, 0, 7, 8, 0, 3, 0, 'n', 'f', 't', 0})
	// iptables-nft's table filter, for the iptables backend's monitor.
	f.Add(uint16(10<<8|6), []byte{2, 0, 0, 0, 11, 0, 1, 0, 'f', 'i', 'l', 't', 'e', 'r', 0, 0, 13, 0, 2, 0, 'W', 'E', 'B', 'K', 'N', 'O', 'C', 'K', 0})
	f.Fuzz(func(t *testing.T, typ uint16, data []byte) {
		m := netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(typ)}, Data: data}
		r := &nftRules{fam: ipv4, table: "webknock", log: slog.New(slog.DiscardHandler)}
		if ev, ok := (nftWatch{event: r.event}).read(m); ok {
			_ = ev.who()
		}
		ipt := &iptRules{fam: ipv4, chain: "WEBKNOCK", hook: "INPUT"}
		if ev, ok := (nftWatch{event: ipt.event}).read(m); ok {
			_ = ev.who()
		}
	})
}
