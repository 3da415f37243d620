//go:build !linux

package observability

import "errors"

// readTCPStats needs Linux's TCP_INFO.
func readTCPStats(any) *tcpStats { return nil }

// listenQueue needs Linux's TCP_INFO of a listening socket.
func listenQueue(any) (length, limit uint32, err error) {
	return 0, 0, errors.New("listen queue: Linux only")
}
