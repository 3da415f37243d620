package observability

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// readTCPStats reads c's TCP_INFO; nil when c is not a TCP socket or the
// kernel does not answer.
func readTCPStats(c net.Conn) *tcpStats {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var info *unix.TCPInfo
	if err := rc.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || info == nil {
		return nil
	}
	return &tcpStats{rttMicros: info.Rtt, retrans: info.Total_retrans, unacked: info.Unacked, notsentBytes: info.Notsent_bytes,
		sinceRecvMillis: info.Last_ack_recv}
}
