//go:build !linux

package web

import (
	"errors"
	"net"
)

// peerCred is Linux only: elsewhere every admin request is refused.
func peerCred(net.Conn) (peer, error) {
	return peer{}, errors.New("peer credentials are only read on Linux")
}
