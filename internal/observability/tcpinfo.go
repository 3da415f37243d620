package observability

import (
	"log/slog"
)

// tcpStats is what the kernel knew of a connection when the service closed
// it (TCP_INFO, Linux): the close line's evidence of the network under an
// EOF. Retransmissions mean lost segments or ACKs on the path; unacked
// segments and unsent bytes at close are response data the client had not
// received when the connection ended.
type tcpStats struct {
	rttMicros    uint32 // smoothed round-trip time
	retrans      uint32 // segments retransmitted over the connection's life
	unacked      uint32 // segments sent and not yet acknowledged
	notsentBytes uint32 // bytes still in the send queue, never sent
	// sinceRecvMillis: time since the last segment from the peer (its
	// last ACK, data included), at the kernel's clock tick.
	sinceRecvMillis uint32
}

// lossyRetrans retransmissions on one connection make its close line an
// info line, even for a clean close: past the first, each waited for a
// retransmission timeout (200 ms and more), which its client felt.
const lossyRetrans = 3

func (s *tcpStats) attrs() []slog.Attr {
	return []slog.Attr{
		slog.Float64("tcp_rtt_ms", float64(s.rttMicros)/1000),
		slog.Int("tcp_retrans", int(s.retrans)),
		slog.Int("tcp_unacked_segs", int(s.unacked)),
		slog.Int("tcp_notsent_bytes", int(s.notsentBytes)),
	}
}
