//go:build !linux

package observability

import "net"

// readTCPStats needs Linux's TCP_INFO.
func readTCPStats(net.Conn) *tcpStats { return nil }
