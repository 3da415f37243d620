//go:build !linux

package observability

import (
	"errors"
	"net"
)

// listenQueue needs Linux's TCP_INFO for a listening socket.
func listenQueue(net.Listener) (length, limit uint32, err error) {
	return 0, 0, errors.New("listen queue: Linux only")
}
