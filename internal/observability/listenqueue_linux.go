package observability

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// tcpListen is TCP_LISTEN of the kernel's TCP states (tcp_states.h).
const tcpListen = 10

// listenQueue reads a listening socket's accept queue and its limit. For a
// socket in LISTEN state the kernel's tcp_info carries them in tcpi_unacked
// (sk_ack_backlog) and tcpi_sacked (sk_max_ack_backlog).
func listenQueue(ln net.Listener) (length, limit uint32, err error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return 0, 0, fmt.Errorf("%T is not a socket", ln)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return 0, 0, err
	}
	if serr != nil {
		return 0, 0, serr
	}
	if info.State != tcpListen {
		return 0, 0, errors.New("socket is not listening")
	}
	return info.Unacked, info.Sacked, nil
}
