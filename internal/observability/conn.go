package observability

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hardenedgo/ginservice/internal/problem"
	"github.com/hardenedgo/ginservice/internal/striped"
)

// Why a connection ended. The listener wrapper (ConnMetrics.Listener) sees
// the first read or write error of each connection, which tells who closed
// it: the peer (EOF: a FIN; reset: an RST), a deadline of ours (idle,
// read-header/read or write timeout), or the server with no error at all
// (Connection: close, shutdown, a protocol error).
const (
	CloseReasonPeerClosed   = "peer_closed"
	CloseReasonPeerReset    = "peer_reset"
	CloseReasonIdleTimeout  = "idle_timeout"
	CloseReasonReadTimeout  = "read_timeout"
	CloseReasonWriteTimeout = "write_timeout"
	CloseReasonServer       = "server"
	// CloseReasonShutdownTimeout: the server cut a request in flight when
	// the drain ran out of time (SHUTDOWN_TIMEOUT, MarkForcedClose).
	CloseReasonShutdownTimeout = "shutdown_timeout"
	// CloseReasonUnknown: the connection did not come from the wrapped
	// listener, so only its states are known.
	CloseReasonUnknown = "unknown"
)

// rejectedUnknown is the code label of a request net/http rejected on the
// TLS listener, whose status the service cannot read.
const rejectedUnknown = "unknown"

// cause kinds recorded on a tracked connection (first one wins: the first
// error ends an HTTP/1 connection; later ones are consequences).
const (
	causeNone int32 = iota
	causePeerClosed
	causePeerReset
	causeReadTimeout
	causeWriteTimeout
)

// connStates are the http.ConnState values that are gauge states.
var connStates = [...]string{
	http.StateNew:      "new",
	http.StateActive:   "active",
	http.StateIdle:     "idle",
	http.StateHijacked: "hijacked",
	http.StateClosed:   "closed",
}

// ConnMetrics counts the public listener's connections by http.ConnState and
// tells why each one ended. Wire ConnState into http.Server.ConnState and
// serve on Listener(ln) to get close reasons; ConnState alone still gives
// the state gauge and transitions (reason "unknown").
type ConnMetrics struct {
	// The state gauge and transition counters change twice per request on
	// every kept-alive connection: striped, each connection on its own
	// stripe (round robin at accept), summed at scrape.
	gauges      [http.StateHijacked + 1]striped.Int64
	transitions [http.StateClosed + 1]striped.Int64
	nextStripe  atomic.Uint32
	epoch       time.Time // the clock of connection ages: time.Since(epoch)
	closed      *prometheus.CounterVec
	rejected    *prometheus.CounterVec
	// Retransmissions on the accepted connections, from TCP_INFO at close.
	retransSegs  prometheus.Counter
	retransConns prometheus.Counter
	// acceptWait: how long each connection waited for the service to first
	// read it (TCP_INFO at that read).
	acceptWait prometheus.Histogram
	log        *limitedLog // "connection closed"
	rejectLog  *limitedLog // "request rejected": its own budget and suppressed count
	// forcedClose: the server is being closed with requests in flight
	// (MarkForcedClose); cut counts the connections it cut under one.
	forcedClose atomic.Bool
	cut         atomic.Int64
	// ending counts the tracked connections whose close is being
	// recorded: off the gauges, close line not yet written.
	ending atomic.Int64
	// idleTimeout is the server's keep-alive idle timeout (SetIdleTimeout):
	// an HTTP/2 connection idle that long is closed by the HTTP/2 server
	// itself, not by a read deadline.
	idleTimeout atomic.Int64
	// handshakes: TLS connections whose handshake runs, by remote address
	// (ServerErrorLog's lookup).
	handshakes sync.Map
	// untracked holds the state of connections that did not come through
	// Listener (a net.Conn -> http.ConnState), to move the gauge.
	untracked sync.Map
}

// NewConnMetrics registers http_server_connections{state},
// http_server_connection_transitions_total{state},
// http_server_connections_closed_total{reason,state} and
// http_server_rejected_requests_total{code} on reg. Unusual ends (resets,
// timeouts before a request) and rejected requests are logged at info, the
// rest at debug, at most 5 lines a second of each ("connection closed",
// "request rejected").
func NewConnMetrics(reg prometheus.Registerer, logger *slog.Logger) *ConnMetrics {
	m := &ConnMetrics{
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_server_connections_closed_total",
			Help: "Connections closed, by who closed them (reason: peer_closed, peer_reset, idle_timeout, read_timeout, write_timeout, server, shutdown_timeout: a request in flight cut when SHUTDOWN_TIMEOUT ran out, unknown) and the state they were in.",
		}, []string{"reason", "state"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_server_rejected_requests_total",
			Help: "Requests net/http answered itself, before routing, by status code: 400 malformed request line or headers, 408 request line or headers cut off by the read-header timeout, 417 an Expect header other than 100-continue, 431 headers over HTTP_MAX_HEADER_BYTES, 501 unsupported transfer encoding, 505 unsupported HTTP version; unknown: one of these on the TLS listener, where the answer is encrypted before the service can read its status (headers that stall there get no answer at all, only a read_timeout close). They have no access line. Plain HTTP on the TLS port is a TLS handshake error (reason other), not counted here.",
		}, []string{"code"}),
		retransSegs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "http_server_retransmitted_segments_total",
			Help: "TCP segments the service retransmitted on the connections it accepted (lost segments or lost ACKs between the client and the service), counted as each connection closes (TCP_INFO, Linux). kernel_tcp_retrans_segs_total counts every socket of the network namespace, outbound ones included.",
		}),
		retransConns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "http_server_retransmitting_connections_total",
			Help: "Accepted connections on which the service retransmitted at least one TCP segment, counted as each closes; against http_server_connections_closed_total, the share of clients behind a lossy path.",
		}),
		acceptWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "http_server_accept_wait_seconds",
			Help:    "How long each accepted connection had waited when the service first read it: since the last segment its client sent (the handshake's ACK, or its first request bytes), from TCP_INFO at the kernel's clock tick (Linux). Long waits: the accept queue was backed up (CPU throttling, a burst of connections, a stopped process), which a scrape-time sample of http_server_listen_queue_connections misses.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}),
		log:       newLimitedLog(logger, 5, 10),
		rejectLog: newLimitedLog(logger, 5, 10),
		epoch:     time.Now(),
	}
	for _, code := range []string{"400", "408", "417", "431", "501", "505", rejectedUnknown} {
		m.rejected.WithLabelValues(code)
	}
	// Series exist from the start, so rate() works on the first increment.
	for _, r := range []string{CloseReasonPeerClosed, CloseReasonPeerReset, CloseReasonReadTimeout, CloseReasonWriteTimeout, CloseReasonServer} {
		for _, s := range []string{"new", "active", "idle"} {
			m.closed.WithLabelValues(r, s)
		}
	}
	m.closed.WithLabelValues(CloseReasonShutdownTimeout, "active")
	m.closed.WithLabelValues(CloseReasonIdleTimeout, "idle")
	reg.MustRegister(connCollector{m}, m.closed, m.rejected, m.retransSegs, m.retransConns, m.acceptWait)
	return m
}

// ServerTimeouts registers http_server_timeout_seconds{timeout}: the read
// header, read, write and idle timeouts srv enforces (0: none), as set when
// it is called. The EOF diagnosis compares them with the timeouts of the
// proxy in front (scripts/diagnose-eof.sh): its upstream keep-alive must
// end before the idle timeout, its read timeout after the write timeout.
func ServerTimeouts(reg prometheus.Registerer, srv *http.Server) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "http_server_timeout_seconds",
		Help: "The public server's timeouts in force: read_header, read, write and idle (the keep-alive idle timeout); 0 means none.",
	}, []string{"timeout"})
	// net/http falls back to the read timeout for these two when they are 0.
	header, idle := srv.ReadHeaderTimeout, srv.IdleTimeout
	if header == 0 {
		header = srv.ReadTimeout
	}
	if idle == 0 {
		idle = srv.ReadTimeout
	}
	for _, t := range []struct {
		name string
		d    time.Duration
	}{
		{"read_header", header}, {"read", srv.ReadTimeout},
		{"write", srv.WriteTimeout}, {"idle", idle},
	} {
		g.WithLabelValues(t.name).Set(max(t.d, 0).Seconds())
	}
	reg.MustRegister(g)
}

// HTTP2Errors counts the HTTP/2 server's protocol errors by type on srv
// (http.HTTP2Config.CountError, which it sets, keeping the rest of srv.HTTP2):
// http_server_http2_errors_total{type}. Each is a stream the server reset
// or a connection it ended with GOAWAY because the client broke the
// protocol, which that client sees as a stream error or an EOF. A type is
// net/http's: stream_ or conn_, the HTTP/2 error code and its own name, e.g.
// conn_ENHANCE_YOUR_CALM_too_many_early_resets (a client resetting streams
// as fast as it opens them: the "rapid reset" attack),
// stream_PROTOCOL_ERROR_over_max_streams, conn_FLOW_CONTROL_ERROR_data_flow,
// or a frame_ name for a malformed frame. A fixed set.
func HTTP2Errors(reg prometheus.Registerer, srv *http.Server) {
	cv := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "http_server_http2_errors_total",
		Help: "HTTP/2 protocol errors the server answered with a stream reset or a GOAWAY, by net/http's error type (stream_ or conn_, the HTTP/2 error code, the error, e.g. conn_ENHANCE_YOUR_CALM_too_many_early_resets; frame_ for a malformed frame).",
	}, []string{"type"})
	reg.MustRegister(cv)
	conf := &http.HTTP2Config{}
	if srv.HTTP2 != nil {
		*conf = *srv.HTTP2
	}
	next := conf.CountError
	conf.CountError = func(errType string) {
		cv.WithLabelValues(errType).Inc()
		if next != nil {
			next(errType)
		}
	}
	srv.HTTP2 = conf
}

// Connections returns the number of open connections in state s (New,
// Active, Idle or Hijacked).
func (m *ConnMetrics) Connections(s http.ConnState) int64 { return m.gauges[s].Load() }

// Transitions returns how many times connections entered state s.
func (m *ConnMetrics) Transitions(s http.ConnState) int64 { return m.transitions[s].Load() }

var (
	connGaugeDesc = prometheus.NewDesc("http_server_connections",
		"Open connections of the public listener by http.ConnState (new, active, idle, hijacked).", []string{"state"}, nil)
	connTransitionsDesc = prometheus.NewDesc("http_server_connection_transitions_total",
		"Connection state transitions of the public listener, by the state entered (closed included).", []string{"state"}, nil)
)

// connCollector exposes the striped connection counters.
type connCollector struct{ m *ConnMetrics }

func (c connCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- connGaugeDesc
	ch <- connTransitionsDesc
}

func (c connCollector) Collect(ch chan<- prometheus.Metric) {
	for s := http.StateNew; s <= http.StateHijacked; s++ {
		ch <- prometheus.MustNewConstMetric(connGaugeDesc, prometheus.GaugeValue, float64(c.m.Connections(s)), connStates[s])
	}
	for s := http.StateNew; s <= http.StateClosed; s++ {
		ch <- prometheus.MustNewConstMetric(connTransitionsDesc, prometheus.CounterValue, float64(c.m.Transitions(s)), connStates[s])
	}
}

// Listener wraps ln so that every accepted connection records the first
// error that ends it. Serve (or ServeTLS) on the returned listener.
func (m *ConnMetrics) Listener(ln net.Listener) net.Listener {
	return &trackingListener{Listener: ln, m: m}
}

// ConnState is the http.Server.ConnState hook.
func (m *ConnMetrics) ConnState(c net.Conn, s http.ConnState) {
	if s > http.StateClosed {
		return
	}
	// Monotonic time since the metrics were created: one clock read, where
	// time.Now takes two (wall and monotonic), twice per request.
	now := time.Since(m.epoch)
	prev, known := http.StateNew, false
	tc := trackedOf(c)
	var stripe uint32 // connections from another listener share stripe 0
	if tc != nil {
		stripe = tc.stripe
	}
	m.transitions[s].AddAt(stripe, 1)
	if tc != nil {
		p := tc.state.Swap(int32(s) + 1)
		prev, known = http.ConnState(p-1), p != 0
		// Twice per request on every kept-alive connection: each flag is
		// stored only when it changes (an atomic store is a locked
		// instruction, a load is not).
		begun := false
		if s == http.StateActive || s == http.StateIdle {
			unset(&tc.idleRead)
			begun = unset(&tc.begun)
			if tc.idleDeadlines.Load() != 0 {
				tc.idleDeadlines.Store(0)
			}
			unset(&tc.answered)
		}
		if s == http.StateIdle && tc.lead.Load() != 0 {
			tc.lead.Store(0) // the next request's first byte is still to come
		}
		if s == http.StateActive {
			unset(&tc.wrote)
			if prev == http.StateNew && known && isHTTP2(c) {
				// The HTTP/2 server passes through active once as it
				// starts, after the preface: not a request.
				tc.h2.Store(true)
			} else if !begun {
				tc.requests.Add(1) // else counted as it began
			}
			tc.route, tc.requestID, tc.status = "", "", 0
			unset(&tc.routed)
			unset(&tc.completed)
		}
		if _, isTLS := c.(*tls.Conn); isTLS {
			if s == http.StateNew {
				tc.records.Store(&tlsRecords{})
				// Until the handshake is over: ServerErrorLog looks a
				// failed one up by the address net/http logs it with.
				tc.handshakeKey = remoteAddr(tc.Conn)
				if _, taken := m.handshakes.LoadOrStore(tc.handshakeKey, tc); taken {
					// Two handshakes from one address (listeners sharing
					// these metrics): neither is looked up.
					m.handshakes.Store(tc.handshakeKey, handshakeCollision)
				}
			} else if prev == http.StateNew && known {
				if !m.handshakes.CompareAndDelete(tc.handshakeKey, tc) {
					m.handshakes.CompareAndDelete(tc.handshakeKey, handshakeCollision)
				}
			}
		}
		since := now - time.Duration(tc.changed.Swap(int64(now)))
		if s == http.StateClosed {
			// On TLS net/http's own rejections cannot be read on the way
			// out (see ended).
			_, isTLS := c.(*tls.Conn)
			// Counted last, after the gauges: a reader that sees the close
			// counted sees the gauges settled. ending covers the gap in
			// between, when the gauges no longer count the connection
			// and its close line is not written yet (Settle).
			m.ending.Add(1)
			defer func() {
				defer m.ending.Add(-1)
				m.ended(tc, prev, since, now, isTLS)
			}()
		}
	} else {
		var v any
		if s == http.StateClosed || s == http.StateHijacked {
			v, known = m.untracked.LoadAndDelete(c)
		} else {
			v, known = m.untracked.Swap(c, s)
		}
		if known {
			prev = v.(http.ConnState)
		}
		if s == http.StateClosed {
			defer m.closed.WithLabelValues(CloseReasonUnknown, connStates[prev]).Inc()
		}
	}
	if known && prev <= http.StateHijacked {
		m.gauges[prev].AddAt(stripe, -1)
	}
	// A hijacked connection leaves the server: it is counted until the
	// hijacker closes it, which only a tracked connection can see.
	if s < http.StateHijacked || (s == http.StateHijacked && tc != nil) {
		m.gauges[s].AddAt(stripe, 1)
	}
}

// SetIdleTimeout tells the metrics the server's keep-alive idle timeout in
// force (IdleTimeout, or ReadTimeout when that is 0), so that an HTTP/2
// connection the server closes after that long idle is counted as
// idle_timeout, as an HTTP/1 one is.
func (m *ConnMetrics) SetIdleTimeout(d time.Duration) { m.idleTimeout.Store(int64(d)) }

// MarkForcedClose says that http.Server.Close is about to end the
// connections still serving requests (the drain ran out of time): the
// requests it cuts are logged as the server's doing, not as clients that
// left.
func (m *ConnMetrics) MarkForcedClose() { m.forcedClose.Store(true) }

// CutByForcedClose returns the number of connections the forced close cut
// while they served a request (reason shutdown_timeout).
func (m *ConnMetrics) CutByForcedClose() int64 { return m.cut.Load() }

// Open returns the number of connections counted as new, active or idle.
func (m *ConnMetrics) Open() int64 {
	return m.gauges[http.StateNew].Load() + m.gauges[http.StateActive].Load() + m.gauges[http.StateIdle].Load()
}

// Settle waits, until ctx is done, for the end of every connection still
// counted as new, active or idle and for the close lines of those whose
// close is being recorded, then writes the counts of "connection
// closed" and "request rejected" lines the rate limit held back. Call it
// after http.Server.Shutdown (or Close) returns and before the process
// exits: Shutdown closes idle connections' sockets and returns, while each
// connection's goroutine runs its StateClosed hook (its close line and
// count) afterwards, so a process exiting at once loses them. Hijacked
// connections are their hijacker's and are not waited for.
func (m *ConnMetrics) Settle(ctx context.Context) error {
	var err error
	busy := func() bool { return m.Open() > 0 || m.ending.Load() > 0 }
	if busy() {
		tick := time.NewTicker(2 * time.Millisecond)
	wait:
		for busy() {
			select {
			case <-ctx.Done():
				err = ctx.Err()
				break wait
			case <-tick.C:
			}
		}
		tick.Stop()
	}
	m.log.Flush(context.Background(), "connection closed")
	m.rejectLog.Flush(context.Background(), "request rejected")
	return err
}

// isHTTP2 reports whether c is a TLS connection that negotiated HTTP/2.
func isHTTP2(c net.Conn) bool {
	tc, ok := c.(*tls.Conn)
	return ok && tc.ConnectionState().NegotiatedProtocol == "h2"
}

// ended counts and logs a closed tracked connection.
func (m *ConnMetrics) ended(tc *trackedConn, prev http.ConnState, inState, now time.Duration, isTLS bool) {
	reason := CloseReasonServer
	level := slog.LevelDebug
	cause := tc.cause.Load()
	// A connection counts as active when it broke mid-request by either
	// account: net/http marks it active once request bytes were read (a
	// stalled header), and it passes through idle after a handler whose
	// client left.
	if cause != causeNone && tc.causeState.Load() == int32(http.StateActive)+1 {
		prev = http.StateActive
	}
	// A connection net/http closes without marking it idle after a whole
	// answer (Connection: close, HTTP/1.0): the request was over when the
	// server closed it, or when the client, which had its answer, did.
	// Its close line still names that request (afterAnswer).
	afterAnswer := false
	switch {
	case (cause == causePeerClosed || cause == causePeerReset) && prev == http.StateActive &&
		tc.causeServed.Load() && tc.causeState.Load() == int32(http.StateIdle)+1:
		prev, afterAnswer = http.StateIdle, true
	case cause == causeNone && prev == http.StateActive && !tc.begun.Load() && tc.answeredRequest():
		prev, afterAnswer = http.StateIdle, true
	}
	// The next request on a kept-alive HTTP/1 connection had begun: the
	// connection is in the middle of it, whatever net/http's state says
	// (nextRequestBegun).
	if prev == http.StateIdle && tc.begun.Load() {
		prev = http.StateActive
	}
	// priorRequest: the request fields are the last served request's, not
	// the one the connection broke in.
	priorRequest := false
	switch cause {
	case causePeerClosed:
		reason = CloseReasonPeerClosed
		if prev == http.StateActive {
			level = slog.LevelInfo // the client left in the middle of a request
		}
	case causePeerReset:
		reason = CloseReasonPeerReset
		level = slog.LevelInfo
	case causeReadTimeout:
		reason = CloseReasonReadTimeout
		if prev == http.StateIdle && tc.idleRead.Load() {
			// The next request had begun on the kept-alive connection
			// (net/http reads its first bytes before it marks the
			// connection active) and stalled: the read-header deadline,
			// not the idle timeout.
			prev, priorRequest = http.StateActive, true
		}
		if prev == http.StateIdle {
			reason = CloseReasonIdleTimeout
		} else {
			level = slog.LevelInfo // slow or silent client: cut off by a read deadline
		}
	case causeWriteTimeout:
		reason = CloseReasonWriteTimeout
		level = slog.LevelInfo
	}
	if it := time.Duration(m.idleTimeout.Load()); tc.h2.Load() && prev == http.StateIdle && it > 0 && inState >= it &&
		(cause == causeNone || cause == causePeerClosed) {
		// HTTP/2 keeps no read deadline: its server sends a connection
		// idle for the idle timeout a GOAWAY and closes it a second later,
		// unless the client, told, closes first.
		reason, level = CloseReasonIdleTimeout, slog.LevelDebug
	}
	if tc.serverCut.Load() {
		// A request in flight cut by the server's forced close.
		reason, level = CloseReasonShutdownTimeout, slog.LevelInfo
		m.cut.Add(1)
	}
	state := connStates[prev]
	defer m.closed.WithLabelValues(reason, state).Inc() // after the log line, for the same reason
	if isTLS && prev == http.StateActive && !tc.routed.Load() && cause == causeReadTimeout && tc.answered.Load() {
		// net/http answered a request whose request line or headers the
		// read-header deadline cut off (its 400; 408 on the plain
		// listener, see reject).
		m.rejectLog.Log(context.Background(), slog.LevelInfo, "request rejected",
			slog.String("detail", "net/http answered a request on the TLS listener whose request line and headers did not arrive within the read-header timeout (408 on the plain listener), and closed the connection"),
			slog.String("remote_addr", remoteAddr(tc.Conn)),
		)
		m.rejected.WithLabelValues(rejectedUnknown).Inc()
	}
	if isTLS && cause == causeNone && prev == http.StateActive && !tc.routed.Load() && tc.answered.Load() {
		// The server closed a TLS connection in the middle of a request
		// that never reached the handlers, after writing to it: net/http
		// answered it itself (its only other way out before routing, a
		// read error, would have set a cause; a shutdown closing a
		// connection whose next request was still coming in writes
		// nothing but its close_notify). On plaintext the answer is
		// rewritten and counted with its status (reject); here it was
		// encrypted before this wrapper saw it. HTTP/2 requests are never marked routed,
		// but an HTTP/2 connection closes its streams, and so goes idle,
		// before it closes, whatever ended it (a protocol error, a forced
		// close): it never gets here as active.
		m.rejectLog.Log(context.Background(), slog.LevelInfo, "request rejected",
			slog.String("detail", "net/http answered a request on the TLS listener itself and closed the connection: a malformed request line or header (400), an Expect header other than 100-continue (417), headers over HTTP_MAX_HEADER_BYTES (431), an unsupported transfer encoding (501) or HTTP version (505)"),
			slog.String("remote_addr", remoteAddr(tc.Conn)),
		)
		// After the line: whoever sees the count can find the line.
		m.rejected.WithLabelValues(rejectedUnknown).Inc()
	}
	attrs := []slog.Attr{
		slog.String("reason", reason),
		slog.String("state", state),
		slog.String("remote_addr", remoteAddr(tc.Conn)),
		slog.Int64("requests", tc.requests.Load()),
		slog.Float64("age_ms", float64((now-tc.start).Microseconds())/1000),
		slog.Float64("in_state_ms", float64(inState.Microseconds())/1000),
	}
	if (prev == http.StateActive || afterAnswer) && tc.requestID != "" && !priorRequest {
		// It broke while serving this request, or closed right after
		// answering it: its access line has the same request_id (and says
		// 200 when the write timeout cut the response the client never
		// got).
		attrs = append(attrs,
			slog.String("route", tc.route),
			slog.String("request_id", tc.requestID),
			slog.Int("logged_status", tc.status))
	}
	st := tc.tcp.Load()
	if st != nil {
		attrs = append(attrs, st.attrs()...)
		if st.retrans >= lossyRetrans {
			// However it ended, its client is behind a lossy path: the
			// line that names it is logged by default.
			level = max(level, slog.LevelInfo)
		}
	}
	m.log.Log(context.Background(), level, "connection closed", attrs...)
	if st != nil && st.retrans > 0 {
		m.retransSegs.Add(float64(st.retrans))
		m.retransConns.Inc()
	}
}

func remoteAddr(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil {
		return a.String()
	}
	return ""
}

// trackedOf finds the tracked connection under c (ServeTLS wraps it in a
// *tls.Conn).
func trackedOf(c net.Conn) *trackedConn {
	for range 4 {
		if tc, ok := c.(*trackedConn); ok {
			return tc
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}

type trackingListener struct {
	net.Listener
	m *ConnMetrics
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	now := time.Since(l.m.epoch)
	tc := &trackedConn{Conn: c, m: l.m, start: now, stripe: l.m.nextStripe.Add(1) % striped.Stripes}
	tc.changed.Store(int64(now))
	return tc, nil
}

// trackedConn records the first error that ends the connection.
type trackedConn struct {
	net.Conn
	m        *ConnMetrics
	stripe   uint32        // of the ConnMetrics counters
	start    time.Duration // accepted, on the ConnMetrics clock (since epoch)
	changed  atomic.Int64  // last state change, on the same clock
	state    atomic.Int32  // http.ConnState + 1; 0 before the first
	requests atomic.Int64  // HTTP/1: requests served; HTTP/2: times it went from idle to busy
	cause    atomic.Int32
	// causeState is state's value when cause was recorded.
	causeState atomic.Int32
	// causeServed: when cause was recorded, the HTTP/1 request in hand had
	// been through the handlers (routed, not handling): the peer closed
	// after its response, even if net/http had not marked the connection
	// idle (it never does before closing a Connection: close one).
	causeServed atomic.Bool
	// aborting is set while a read deadline in the past is pending:
	// net/http cancels its background read that way after every request,
	// and the timeout that follows is not a timeout of the peer.
	aborting atomic.Bool
	closed   atomic.Bool
	// wrote: response bytes were sent since the current request started.
	wrote atomic.Bool
	// begun: HTTP/1, idle: net/http has the first bytes of the next
	// request and is reading it (nextRequestBegun). idleDeadlines counts
	// the read deadlines set since the connection went idle, which is how
	// that is seen.
	begun         atomic.Bool
	idleDeadlines atomic.Int32
	// answered: on TLS, the server wrote a record other than an alert while
	// a request was being read and before it was routed: net/http's own
	// answer to a request it rejected, encrypted.
	answered atomic.Bool
	// handshakeKey: on TLS, the remote address the connection is known by
	// in ConnMetrics.handshakes while its handshake runs.
	handshakeKey string
	// rejectedID: the request ID of the problem response sent to plain
	// HTTP on the TLS port (reject), for its handshake error line.
	rejectedID string
	// The request the connection is serving or has just served, as the
	// access middleware logged it (empty before a handler has run for the
	// current request). Written and read on the connection's own goroutine
	// (net/http runs the handler, the StateActive and StateClosed hooks
	// there).
	route     string
	requestID string
	status    int
	// routed: the current request reached the access middleware (atomic:
	// Close may read it from another goroutine, Server.Close's).
	routed atomic.Bool
	// completed: the current HTTP/1 request's handlers answered it whole
	// (served).
	completed atomic.Bool
	// handling: requests the access middleware is running for (HTTP/1:
	// 0 or 1); serverCut: Close came (from Server.Close) while one was.
	handling  atomic.Int32
	serverCut atomic.Bool
	// idleRead: bytes came in while the connection was idle, the start of
	// its next request (reset at each state change).
	idleRead atomic.Bool
	// h2: the connection speaks HTTP/2 (set as its server starts).
	h2 atomic.Bool
	// lead is the first byte of the current request as read (plus one; 0:
	// none yet), over TLS the first byte of the TLS stream.
	lead atomic.Int32
	// records, on a TLS connection, follows the peer's TLS records (set by
	// the first state hook, which gets the *tls.Conn, before the
	// handshake's first read).
	records atomic.Pointer[tlsRecords]
	// tcp: the kernel's view of the connection as it was closed (Close,
	// before the socket goes), for its close line.
	tcp atomic.Pointer[tcpStats]
	// read: the service has read from the connection (its accept wait is
	// measured).
	read atomic.Bool
}

// routing marks the current request as handed to the handlers (the access
// middleware, first thing).
func (c *trackedConn) routing() {
	c.routed.Store(true)
	unset(&c.completed)
	c.handling.Add(1)
}

// streamStarted and streamDone bracket an HTTP/2 request on the connection
// (several at once), for cutByServer.
func (c *trackedConn) streamStarted() { c.handling.Add(1) }
func (c *trackedConn) streamDone()    { c.handling.Add(-1) }

// served records the request the access middleware has just logged;
// complete: its handlers answered it whole (no abort, no client gone, no
// server cut).
func (c *trackedConn) served(route, requestID string, status int, complete bool) {
	c.route, c.requestID, c.status = route, requestID, status
	if complete {
		c.completed.Store(true)
	}
	c.handling.Add(-1)
}

// cutByServer reports whether the server closed the connection while a
// handler was serving its request (http.Server.Close: SHUTDOWN_TIMEOUT ran
// out), before the peer did anything: the request's read or write errors,
// and its cancelled context, are the server's doing, not a client's.
func (c *trackedConn) cutByServer() bool { return c.serverCut.Load() }

// noteForcedCut records that Server.Close at the drain's deadline
// (MarkForcedClose) is closing this connection under a running handler.
func (c *trackedConn) noteForcedCut() {
	if c.m.forcedClose.Load() && c.handling.Load() > 0 && c.cause.Load() == causeNone {
		c.serverCut.Store(true)
	}
}

type connCtxKey struct{}

// ConnContext is the http.Server.ConnContext hook. It puts the tracked
// connection into the context of its requests, so that the access
// middleware can tell it which request it is serving: a connection that
// then breaks (a write timeout, a reset, a client gone mid-request) is
// logged with that request's ID and route, the link between the access
// line and the EOF the client saw. One allocation per connection.
func (m *ConnMetrics) ConnContext(ctx context.Context, c net.Conn) context.Context {
	if tc := trackedOf(c); tc != nil {
		return context.WithValue(ctx, connCtxKey{}, tc)
	}
	return ctx
}

func trackedFrom(ctx context.Context) *trackedConn {
	tc, _ := ctx.Value(connCtxKey{}).(*trackedConn)
	return tc
}

func (c *trackedConn) Read(b []byte) (int, error) {
	if !c.read.Load() {
		// The first read: how long the connection waited for it.
		c.read.Store(true)
		if st := readTCPStats(c.Conn); st != nil {
			c.m.acceptWait.Observe(float64(st.sinceRecvMillis) / 1000)
		}
	}
	n, err := c.Conn.Read(b)
	if r := c.records.Load(); r != nil && n > 0 {
		had := r.alert.Load()
		r.feed(b[:n])
		if !had && r.alert.Load() {
			st := c.state.Load()
			if st == int32(http.StateActive)+1 && (c.wrote.Load() || c.answeredRequest()) {
				st = int32(http.StateIdle) + 1 // as in note
			}
			r.alertState.Store(st)
			r.alertServed.Store(c.answeredRequest())
		}
	}
	if n > 0 && c.lead.Load() == 0 {
		c.lead.Store(int32(b[0]) + 1)
	}
	if n > 0 && c.state.Load() == int32(http.StateIdle)+1 && !c.idleRead.Load() {
		// The next request has begun (net/http marks the connection
		// active only later, if at all): nothing of its response is out.
		c.idleRead.Store(true)
		c.wrote.Store(false)
	}
	if err != nil {
		c.note(err, true)
	}
	return n, err
}

// continueLine is the interim response net/http sends, in a write of its
// own, to a request with "Expect: 100-continue" when the handler starts
// reading the body: not the response, which is still to come.
const continueLine = "HTTP/1.1 100 Continue\r\n\r\n"

func (c *trackedConn) Write(b []byte) (int, error) {
	// Before the write: the peer may read the response and close before
	// this goroutine runs again.
	if len(b) > 0 && !c.wrote.Load() && string(b) != continueLine {
		c.wrote.Store(true)
		// The first bytes of a response: net/http's own rejections of a
		// request it could not parse are written here in one piece.
		// A 1xx/2xx/3xx status line is ruled out by one byte.
		if len(b) > 12 && b[9] >= '4' {
			if r, ok := parseRejection(b); ok {
				return c.reject(b, r)
			}
		}
	}
	if r := c.records.Load(); r != nil {
		switch {
		case isTLSAlert(b):
			// crypto/tls's Close writes close_notify before it closes this
			// connection; the peer may answer it by closing, which ends a
			// handler's body read before Close below runs.
			c.noteForcedCut()
			if !r.sentAlert.Swap(true) && r.alert.Load() && c.cause.Load() == causeNone {
				// The server's first alert, usually its close_notify on
				// the way out, after one of the peer's: the peer closed.
				// Decided now, not at Close: when the server is the one
				// closing, its alert makes the client answer with one,
				// which may be read before Close.
				c.notePeerAlert(r)
			}
		case len(b) > 0 && !c.routed.Load() && !c.h2.Load() && !c.answered.Load() &&
			(c.state.Load() == int32(http.StateActive)+1 || c.begun.Load()):
			// Before any handler, what the server writes on a request
			// is net/http's own answer: it rejected the request (see
			// ended).
			c.answered.Store(true)
		}
	}
	n, err := c.Conn.Write(b)
	if err != nil {
		c.note(err, false)
	}
	return n, err
}

// isTLSAlert reports whether b starts with an alert record as crypto/tls
// writes it (see tlsRecords).
func isTLSAlert(b []byte) bool {
	if len(b) < 5 {
		return false
	}
	n := int(b[3])<<8 | int(b[4])
	return b[0] == 0x15 || (b[0] == 0x17 && n == 19)
}

// tlsRecords follows the record boundaries of what a TLS peer sends, to
// tell whether the last record was an alert: a TLS peer that closes
// politely sends close_notify, which crypto/tls turns into net/http's end
// of the connection with no read under it failing. An alert is a record of
// content type alert (TLS 1.2) or, in TLS 1.3, where it travels as
// encrypted application data, a record with a 19-byte payload (a 2-byte
// alert, its inner type byte and a 16-byte AEAD tag): no HTTP/1 request or HTTP/2
// frame a client sends is that small unless it writes 2 bytes at a time,
// and the next record clears it. Only the connection's reading goroutine
// feeds it.
type tlsRecords struct {
	hdr    [5]byte
	nhdr   int
	remain int
	alert  atomic.Bool // the last record the peer sent was an alert
	// alertState is the connection's state (http.ConnState + 1) when that
	// alert came, idle if the response was out by then: a client that
	// closes politely in the middle of a request left it then, whatever
	// state the connection has reached when the close is decided.
	alertState atomic.Int32
	// alertServed: the request in hand had been served when that alert
	// came (trackedConn.answeredRequest).
	alertServed atomic.Bool
	// sentAlert: the server has sent an alert (its close_notify, or a
	// handshake failure).
	sentAlert atomic.Bool
	// plainAlert is the description of the peer's last record, plus one,
	// when that was an unencrypted alert (0 otherwise): a TLS 1.3 client
	// built on OpenSSL that refuses the server's certificate says so in
	// clear after the server has switched to encrypted records, so
	// crypto/tls reports only that it could not decrypt it.
	plainAlert atomic.Int32
	inPlain    bool    // the record being read is an unencrypted alert
	body       [2]byte // its level and description
	nbody      int
}

func (r *tlsRecords) feed(b []byte) {
	for len(b) > 0 {
		if r.remain > 0 {
			k := min(r.remain, len(b))
			if r.inPlain {
				r.nbody += copy(r.body[r.nbody:], b[:k])
				if r.nbody == 2 {
					r.plainAlert.Store(int32(r.body[1]) + 1)
				}
			}
			r.remain -= k
			b = b[k:]
			continue
		}
		k := copy(r.hdr[r.nhdr:], b)
		r.nhdr += k
		b = b[k:]
		if r.nhdr < len(r.hdr) {
			return
		}
		r.nhdr = 0
		r.remain = int(r.hdr[3])<<8 | int(r.hdr[4])
		r.alert.Store(r.hdr[0] == 0x15 || (r.hdr[0] == 0x17 && r.remain == 19))
		r.plainAlert.Store(0)
		r.inPlain, r.nbody = r.hdr[0] == 0x15 && r.remain == 2, 0
	}
}

// peerPlainAlert returns the description of the unencrypted alert that was
// the peer's last record, if it was one.
func (c *trackedConn) peerPlainAlert() (tls.AlertError, bool) {
	r := c.records.Load()
	if r == nil || !r.alert.Load() {
		return 0, false
	}
	d := r.plainAlert.Load()
	return tls.AlertError(d - 1), d > 0
}

// handshakeCollision stands in ConnMetrics.handshakes for an address two
// handshakes came from at once.
var handshakeCollision = &trackedConn{}

// tlsHandshake returns the TLS connection from addr whose handshake runs,
// or nil (also when two run from that address).
func (m *ConnMetrics) tlsHandshake(addr string) *trackedConn {
	if m == nil {
		return nil
	}
	tc, _ := m.handshakes.Load(addr)
	c, _ := tc.(*trackedConn)
	if c == handshakeCollision {
		return nil
	}
	return c
}

// notePeerAlert records that the peer closed with an alert (close_notify),
// in the state the connection was in when the alert came.
func (c *trackedConn) notePeerAlert(r *tlsRecords) {
	if c.closed.Load() {
		return
	}
	if c.cause.CompareAndSwap(causeNone, causePeerClosed) {
		c.causeState.Store(r.alertState.Load())
		c.causeServed.Store(r.alertServed.Load())
	}
}

func (c *trackedConn) note(err error, read bool) {
	// Cheap checks first: this runs after every request on a kept-alive
	// connection (net/http aborts its background read with a deadline).
	if c.cause.Load() != causeNone || c.closed.Load() {
		return // not the first cause, or our own Close
	}
	if read && c.aborting.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
		return // net/http ending its background read, not the peer; a reset that lands meanwhile still counts
	}
	var k int32
	switch {
	case read && err == io.EOF:
		k = causePeerClosed
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		k = causePeerReset
	case errors.Is(err, os.ErrDeadlineExceeded):
		k = causeReadTimeout
		if !read {
			k = causeWriteTimeout
		}
	case read && errors.Is(err, io.EOF):
		k = causePeerClosed
	default:
		return
	}
	if c.cause.CompareAndSwap(causeNone, k) {
		// The state the connection was in when it broke: a client that
		// leaves mid-request is seen by net/http's background read while
		// active, although the connection passes through idle before it
		// is closed. A peer that closes right after reading a response can
		// beat net/http's switch to idle: once response bytes are out, the
		// request is not what it left. Nor once the handlers have answered
		// it whole (the access line is written, without a 499): a client
		// that half-closes after its request (nc -N, some health checks)
		// may send its FIN before net/http writes the answer out, and
		// still reads all of it.
		st := c.state.Load()
		if st == int32(http.StateActive)+1 && (c.wrote.Load() || c.answeredRequest()) {
			st = int32(http.StateIdle) + 1
		}
		c.causeState.Store(st)
		c.causeServed.Store(c.answeredRequest())
	}
}

// answeredRequest reports whether the HTTP/1 request in hand has been
// through the handlers (routed, no longer handling) and answered whole.
func (c *trackedConn) answeredRequest() bool {
	return c.routed.Load() && c.handling.Load() == 0 && c.completed.Load() && !c.h2.Load()
}

// abortBefore: net/http aborts a pending read by setting a deadline long in
// the past (time.Unix(1, 0)); real deadlines are now plus a timeout.
var abortBefore = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func (c *trackedConn) SetReadDeadline(t time.Time) error {
	if ab := !t.IsZero() && t.Before(abortBefore); ab != c.aborting.Load() {
		c.aborting.Store(ab)
	}
	if c.state.Load() == int32(http.StateIdle)+1 && !c.h2.Load() && c.idleDeadlines.Add(1) == 2 {
		// An idle HTTP/1 connection gets two read deadlines: the idle
		// timeout, then, once the first bytes of the next request are
		// in (net/http peeks at four), the read-header timeout.
		c.nextRequestBegun()
	}
	return c.Conn.SetReadDeadline(t)
}

// nextRequestBegun marks the next request on a kept-alive HTTP/1 connection
// as begun. net/http marks the connection active only when it reads bytes
// off the wire for it: a pipelined request, already in its buffer, is read,
// answered or rejected with the connection still idle. Nothing of its
// response is out, no handler has seen it, and the request the connection
// last served is done. Called on the connection's own goroutine.
func (c *trackedConn) nextRequestBegun() {
	if c.begun.Load() {
		return
	}
	c.begun.Store(true)
	unset(&c.wrote)
	unset(&c.routed)
	unset(&c.completed)
	c.route, c.requestID, c.status = "", "", 0
	// Counted here: a rejected request never makes the connection active.
	c.requests.Add(1)
	if c.lead.Load() == 0 {
		c.lead.Store(leadPipelined) // nothing of it read while idle
	}
}

// unset sets b to false and reports whether it was true, storing only if
// it was.
func unset(b *atomic.Bool) bool {
	if !b.Load() {
		return false
	}
	b.Store(false)
	return true
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	c.aborting.Store(!t.IsZero() && t.Before(abortBefore))
	return c.Conn.SetDeadline(t)
}

// CloseWrite keeps net/http's graceful close (FIN, then drain) working.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *trackedConn) Close() error {
	r := c.records.Load()
	if r != nil && !r.sentAlert.Load() && r.alert.Load() && c.cause.Load() == causeNone {
		// Closed without an alert of the server's (crypto/tls sends
		// close_notify only after a complete handshake): the peer's last
		// word was an alert, so the peer ended it.
		c.notePeerAlert(r)
	}
	first := c.closed.CompareAndSwap(false, true)
	if first {
		c.noteForcedCut()
	}
	st := c.state.Load()
	if first && r == nil && c.cause.Load() == causeReadTimeout && !c.wrote.Load() &&
		(st == int32(http.StateActive)+1 && !c.routed.Load() || st == int32(http.StateIdle)+1 && (c.idleRead.Load() || c.begun.Load())) {
		// A request whose headers the read-header deadline cut off after
		// a complete request line: net/http closes without a word (it
		// answers 400 only when the request line itself is cut, which
		// reject turns into 408). The client, still there, gets the same
		// 408 problem either way. A request that reached the handlers
		// is theirs to answer (or to cut), whatever deadline hit it.
		_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.reject(nil, rejection{proto: "HTTP/1.1", code: http.StatusRequestTimeout,
			detail: "request line and headers not received within the read-header timeout"})
	}
	if first {
		c.tcp.Store(readTCPStats(c.Conn)) // for its close line and count
		// A hijacked connection leaves the gauge when its owner closes it.
		if c.state.CompareAndSwap(int32(http.StateHijacked)+1, int32(http.StateClosed)+1) {
			c.m.gauges[http.StateHijacked].AddAt(c.stripe, -1)
		}
	}
	return c.Conn.Close()
}

// NetConn returns the accepted connection, for code that needs the
// *net.TCPConn.
func (c *trackedConn) NetConn() net.Conn { return c.Conn }

// A rejection is a response net/http writes itself when it cannot read a
// request (conn.serve): a status line, fixed text/plain headers, a short text
// body, then it closes the connection. No handler runs, so such a request
// has no access line, no request ID and no problem body.
type rejection struct {
	proto  string // "HTTP/1.1", or "HTTP/1.0" for plain HTTP on the TLS port
	code   int
	detail string
	// tls: plain HTTP on the TLS port, already counted and logged as a TLS
	// handshake error (ServerErrorLog).
	tls bool
}

// The exact bytes net/http writes for its rejections (net/http/server.go).
// Handler responses cannot start this way: net/http writes a handler's
// headers (here always X-Request-Id) before its Content-Type/Connection
// pair.
const (
	netHTTPErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
	netHTTPPlainOnTLS   = "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server."
	// net/http's answer to an Expect other than 100-continue, without a
	// body; a handler's response would have X-Request-Id (sorted after
	// Connection) before Date.
	netHTTPExpectationFailed = " 417 Expectation Failed\r\nConnection: close\r\nDate: "
)

// parseRejection recognises net/http's rejection forms:
//
//	HTTP/1.1 431 Request Header Fields Too Large<errorHeaders>431 Request Header Fields Too Large
//	HTTP/1.1 400 Bad Request<errorHeaders>400 Bad Request
//	HTTP/1.1 400 Bad Request: missing required Host header<errorHeaders>...
//	HTTP/1.1 501 Not Implemented<errorHeaders>Unsupported transfer encoding
//	HTTP/1.1 417 Expectation Failed\r\nConnection: close\r\nDate: ...\r\nContent-Length: 0\r\n\r\n
//	HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n
func parseRejection(b []byte) (rejection, bool) {
	if bytes.HasPrefix(b, []byte(netHTTPPlainOnTLS)) {
		return rejection{proto: "HTTP/1.0", code: http.StatusBadRequest, detail: "plain HTTP request sent to the TLS port", tls: true}, true
	}
	if (bytes.HasPrefix(b, []byte("HTTP/1.1")) || bytes.HasPrefix(b, []byte("HTTP/1.0"))) && bytes.HasPrefix(b[8:], []byte(netHTTPExpectationFailed)) &&
		len(b) == 8+len(netHTTPExpectationFailed)+len(http.TimeFormat)+len("\r\nContent-Length: 0\r\n\r\n") && bytes.HasSuffix(b, []byte("\r\nContent-Length: 0\r\n\r\n")) {
		return rejection{proto: string(b[:8]), code: http.StatusExpectationFailed, detail: "unsupported Expect header (only 100-continue is)"}, true
	}
	if !bytes.HasPrefix(b, []byte("HTTP/1.1 ")) || b[12] != ' ' {
		return rejection{}, false
	}
	code := 0
	for _, d := range b[9:12] {
		if d < '0' || d > '9' {
			return rejection{}, false
		}
		code = code*10 + int(d-'0')
	}
	if code < 400 || code > 599 {
		return rejection{}, false
	}
	eol := bytes.Index(b, []byte("\r\n"))
	if eol < 13 || !bytes.HasPrefix(b[eol:], []byte(netHTTPErrorHeaders)) {
		return rejection{}, false
	}
	r := rejection{proto: "HTTP/1.1", code: code}
	reason := string(b[13:eol])
	if i := strings.Index(reason, ": "); i >= 0 {
		r.detail = reason[i+2:] // a statusError's text, e.g. "missing required Host header"
	}
	if r.detail == "" {
		switch code {
		case http.StatusRequestHeaderFieldsTooLarge:
			r.detail = "request line and headers larger than the server accepts (HTTP_MAX_HEADER_BYTES)"
		case http.StatusNotImplemented:
			r.detail = "unsupported transfer encoding"
		case http.StatusBadRequest:
			r.detail = "malformed request"
		default:
			r.detail = strings.ToLower(http.StatusText(code))
		}
	}
	return r, true
}

// leadLooksHTTP reports whether the current request began with a letter,
// as every HTTP method does.
func (c *trackedConn) leadLooksHTTP() bool {
	l := c.lead.Load()
	if l == leadPipelined {
		return true // it followed a request net/http could read
	}
	b := l - 1
	return b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z'
}

// leadPipelined is lead for a request pipelined behind another: its bytes
// came in with the one before, and where it starts is net/http's to know.
const leadPipelined = -1

// reject sends the problem+json form of net/http's rejection instead of its
// plain text, with a fresh X-Request-ID as on every other response, counts
// it and logs it (rate limited: a client that sends garbage in a loop
// cannot flood the log). It reports len(orig) written, as net/http expects.
// Plain HTTP on the TLS port gets the same response and is counted as a
// TLS handshake error only.
func (c *trackedConn) reject(orig []byte, r rejection) (int, error) {
	if cause := c.cause.Load(); r.code == http.StatusBadRequest && !r.tls && (cause == causePeerClosed || cause == causePeerReset) && c.leadLooksHTTP() {
		// net/http answers 400 to a request line or headers the client cut
		// off by leaving: what came was the start of a request (a method's
		// first letter), nobody reads the answer. Not a rejection; the
		// close line says the peer left (state active). Bytes that could
		// not start a request (a TLS ClientHello, binary) stay a malformed
		// request, however the client then left.
		n, err := c.Conn.Write(orig)
		if err != nil {
			c.note(err, false)
		}
		return n, err
	}
	if r.code == http.StatusBadRequest && !r.tls && c.cause.Load() == causeReadTimeout {
		// net/http answers 400 to a request line or headers cut off by
		// the read-header (or read) deadline: the client was too slow, the
		// request was not malformed.
		r.code, r.detail = http.StatusRequestTimeout, "request line and headers not received within the read-header timeout"
	}
	id := problem.NewRequestID()
	body, _ := json.Marshal(problem.Make(r.code, r.detail, "", id))
	var buf bytes.Buffer
	buf.Grow(256 + len(body))
	fmt.Fprintf(&buf, "%s %d %s\r\n", r.proto, r.code, http.StatusText(r.code))
	buf.WriteString("Cache-Control: no-store\r\nConnection: close\r\n")
	fmt.Fprintf(&buf, "Content-Length: %d\r\n", len(body))
	buf.WriteString("Content-Type: " + problem.ContentType + "\r\n")
	buf.WriteString(problem.RequestIDHeader + ": " + id + "\r\n\r\n")
	buf.Write(body)

	if r.tls {
		c.rejectedID = id // for the handshake error line that follows
	} else {
		c.m.rejected.WithLabelValues(strconv.Itoa(r.code)).Inc()
		c.m.rejectLog.Log(context.Background(), slog.LevelInfo, "request rejected",
			slog.Int("status", r.code),
			slog.String("detail", r.detail),
			slog.String("remote_addr", remoteAddr(c.Conn)),
			slog.String("request_id", id),
		)
	}
	if _, err := c.Conn.Write(buf.Bytes()); err != nil {
		c.note(err, false)
		return 0, err
	}
	return len(orig), nil
}
