package firewall

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// generationer is a ruleset whose kernel numbers every change to the
// ruleset (nftables' generation, one per committed batch, whoever sent
// it). When the number is that of the last clean check, nothing has
// changed since, and the check lists nothing: an idle daemon's check
// costs one netlink round trip, not a listing of every element.
type generationer interface {
	generation(ctx context.Context) (uint32, error)
}

var _ generationer = (*nftRules)(nil)

// genTimeout bounds a generation query that ctx leaves unbounded.
const genTimeout = 5 * time.Second

// generation asks the kernel for the ruleset's generation (NFT_MSG_GETGEN)
// on a socket of its own, in our network namespace.
func (r *nftRules) generation(ctx context.Context) (uint32, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: r.netns})
	if err != nil {
		return 0, fmt.Errorf("nftables generation: %w", err)
	}
	defer c.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(genTimeout)
	}
	if err := c.SetDeadline(deadline); err != nil {
		return 0, fmt.Errorf("nftables generation: %w", err)
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("nftables generation: %w", err)
	}
	for _, m := range msgs {
		if id, ok := parseGen(m.Data); ok {
			return id, nil
		}
	}
	return 0, errors.New("nftables generation: no NFTA_GEN_ID in the answer")
}

// parseGen reads NFTA_GEN_ID from the payload of an NFT_MSG_NEWGEN.
func parseGen(data []byte) (uint32, bool) {
	if len(data) < 4 {
		return 0, false
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return 0, false
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() == unix.NFTA_GEN_ID && len(ad.Bytes()) == 4 {
			return ad.Uint32(), true
		}
	}
	return 0, false
}
