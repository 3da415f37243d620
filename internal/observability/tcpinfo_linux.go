package observability

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// tcpInfo reads the TCP_INFO of s, an accepted connection or a listener as
// net returns them (*net.TCPConn, *net.TCPListener).
func tcpInfo(s any) (*unix.TCPInfo, error) {
	sc, ok := s.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("%T is not a socket", s)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return nil, err
	}
	return info, serr
}

// readTCPStats reads c's TCP_INFO; nil when c is not a TCP socket or the
// kernel does not answer.
func readTCPStats(c any) *tcpStats {
	info, err := tcpInfo(c)
	if err != nil {
		return nil
	}
	return &tcpStats{rttMicros: info.Rtt, retrans: info.Total_retrans, unacked: info.Unacked, notsentBytes: info.Notsent_bytes,
		sinceRecvMillis: info.Last_ack_recv}
}

// tcpListen is TCP_LISTEN of the kernel's TCP states (tcp_states.h).
const tcpListen = 10

// listenQueue reads a listening socket's accept queue and its limit. For a
// socket in LISTEN state the kernel's tcp_info carries them in tcpi_unacked
// (sk_ack_backlog) and tcpi_sacked (sk_max_ack_backlog).
func listenQueue(ln any) (length, limit uint32, err error) {
	info, err := tcpInfo(ln)
	if err != nil {
		return 0, 0, err
	}
	if info.State != tcpListen {
		return 0, 0, errors.New("socket is not listening")
	}
	return info.Unacked, info.Sacked, nil
}
