package observability

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type connServer struct {
	m       *ConnMetrics
	reg     *prometheus.Registry
	srv     *http.Server
	addr    string
	release chan struct{}
	logs    *testkit.SyncBuffer
}

// startConnServer serves /slow (blocks until release is closed or the
// client leaves), /fast and /hijack on a real loopback listener with the
// connection metrics wired as in production.
func startConnServer(t *testing.T, track bool, tune func(*http.Server)) *connServer {
	t.Helper()
	logs := &testkit.SyncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	cs := &connServer{m: NewConnMetrics(reg, logger), reg: reg, release: make(chan struct{}), logs: logs}
	mux := http.NewServeMux()
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-cs.release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "slow")
	})
	mux.HandleFunc("/fast", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "fast") })
	mux.HandleFunc("/hijack", func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
		brw.Flush()
		time.Sleep(100 * time.Millisecond) // the test sees the hijacked state
		c.Close()
	})
	cs.srv = &http.Server{Handler: mux, ConnState: cs.m.ConnState, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 5 * time.Second}
	if tune != nil {
		tune(cs.srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cs.addr = ln.Addr().String()
	if track {
		ln = cs.m.Listener(ln)
	}
	go cs.srv.Serve(ln)
	t.Cleanup(func() { cs.srv.Close() })
	return cs
}

// dump lists the non-zero close counters and the log, for failures.
func (cs *connServer) dump() string {
	var b strings.Builder
	for _, r := range []string{CloseReasonPeerClosed, CloseReasonPeerReset, CloseReasonIdleTimeout, CloseReasonReadTimeout, CloseReasonWriteTimeout, CloseReasonServer, CloseReasonShutdownTimeout, CloseReasonUnknown} {
		for _, s := range []string{"new", "active", "idle"} {
			if n := cs.closedCount(r, s); n != 0 {
				fmt.Fprintf(&b, "closed{%s,%s} = %v\n", r, s, n)
			}
		}
	}
	return b.String() + cs.logs.String()
}

// gauge reads http_server_connections{state} as a scrape sees it.
func (cs *connServer) gauge(state http.ConnState) float64 {
	return cs.scraped("http_server_connections", connStates[state])
}

// scraped gathers the registry and returns name{state=state}; a missing
// series is a test failure (reported as -1).
func (cs *connServer) scraped(name, state string) float64 {
	mfs, err := cs.reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "state" && l.GetValue() == state {
					if g := m.GetGauge(); g != nil {
						return g.GetValue()
					}
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}

// dial connects to the server; the connection is closed when the test ends
// if the test has not closed it itself.
func (cs *connServer) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", cs.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (cs *connServer) closedCount(reason, state string) float64 {
	return testutil.ToFloat64(cs.m.closed.WithLabelValues(reason, state))
}

// eventually polls cond for up to 3 s (connection state changes happen on
// the server's goroutines).
func eventually(t *testing.T, what string, cond func() bool, dump ...func() string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			var extra string
			for _, d := range dump {
				extra += "\n" + d()
			}
			t.Fatalf("timed out waiting for %s%s", what, extra)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sendRequest(t *testing.T, c net.Conn, path string, extra string) {
	t.Helper()
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", path, extra); err != nil {
		t.Fatal(err)
	}
}

func readResponse(t *testing.T, br *bufio.Reader) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

func TestConnStatesAndPeerClose(t *testing.T) {
	cs := startConnServer(t, true, nil)
	c := cs.dial(t)
	eventually(t, "new", func() bool { return cs.gauge(http.StateNew) == 1 })
	br := bufio.NewReader(c)
	sendRequest(t, c, "/slow", "")
	eventually(t, "active", func() bool { return cs.gauge(http.StateActive) == 1 && cs.gauge(http.StateNew) == 0 })
	close(cs.release)
	readResponse(t, br)
	eventually(t, "idle", func() bool { return cs.gauge(http.StateIdle) == 1 && cs.gauge(http.StateActive) == 0 })
	// A second request on the kept-alive connection.
	sendRequest(t, c, "/fast", "")
	readResponse(t, br)
	c.Close() // the peer closes an idle keep-alive connection (FIN)
	eventually(t, "closed by peer", func() bool { return cs.closedCount(CloseReasonPeerClosed, "idle") == 1 }, cs.dump)
	for s := http.StateNew; s <= http.StateHijacked; s++ {
		if g := cs.gauge(s); g != 0 {
			t.Errorf("gauge %s = %v after close", connStates[s], g)
		}
	}
	want := map[http.ConnState]float64{http.StateNew: 1, http.StateActive: 2, http.StateIdle: 2, http.StateClosed: 1}
	for s, n := range want {
		if got := cs.scraped("http_server_connection_transitions_total", connStates[s]); got != n || float64(cs.m.Transitions(s)) != n {
			t.Errorf("transitions to %s = %v, want %v", connStates[s], got, n)
		}
	}
	if !strings.Contains(cs.logs.String(), `"reason":"peer_closed","state":"idle"`) || !strings.Contains(cs.logs.String(), `"requests":2`) {
		t.Errorf("close not logged with reason and request count:\n%s", cs.logs)
	}
}

// Each way a connection ends, provoked for real, gets its own reason.
func TestConnCloseReasons(t *testing.T) {
	t.Parallel()
	t.Run("idle timeout", func(t *testing.T) {
		t.Parallel()
		cs := startConnServer(t, true, func(s *http.Server) { s.IdleTimeout = 150 * time.Millisecond })
		c := cs.dial(t)
		sendRequest(t, c, "/fast", "")
		readResponse(t, bufio.NewReader(c))
		eventually(t, "idle timeout", func() bool { return cs.closedCount(CloseReasonIdleTimeout, "idle") == 1 })
		if n := cs.closedCount(CloseReasonPeerClosed, "idle"); n != 0 {
			t.Fatalf("idle timeout also counted as a peer close")
		}
	})
	t.Run("silent client cut off by read-header timeout", func(t *testing.T) {
		t.Parallel()
		cs := startConnServer(t, true, func(s *http.Server) { s.ReadHeaderTimeout = 150 * time.Millisecond })
		cs.dial(t) // connects and says nothing
		eventually(t, "read timeout in state new", func() bool { return cs.closedCount(CloseReasonReadTimeout, "new") == 1 })
	})
	t.Run("slowloris cut off mid-header", func(t *testing.T) {
		t.Parallel()
		cs := startConnServer(t, true, func(s *http.Server) { s.ReadHeaderTimeout = 150 * time.Millisecond })
		c := cs.dial(t)
		io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: x\r\nX-Slow: a")
		eventually(t, "read timeout in state active", func() bool { return cs.closedCount(CloseReasonReadTimeout, "active") == 1 })
		if !strings.Contains(cs.logs.String(), `"level":"INFO","msg":"connection closed","reason":"read_timeout","state":"active"`) {
			t.Errorf("slowloris cut-off not logged at info:\n%s", cs.logs)
		}
	})
	t.Run("peer reset", func(t *testing.T) {
		t.Parallel()
		cs := startConnServer(t, true, nil)
		c := cs.dial(t)
		sendRequest(t, c, "/fast", "")
		readResponse(t, bufio.NewReader(c))
		eventually(t, "idle", func() bool { return cs.gauge(http.StateIdle) == 1 })
		c.(*net.TCPConn).SetLinger(0) // close sends RST
		c.Close()
		eventually(t, "reset", func() bool { return cs.closedCount(CloseReasonPeerReset, "idle") == 1 })
	})
	t.Run("client leaves mid-request", func(t *testing.T) {
		t.Parallel()
		cs := startConnServer(t, true, nil)
		c := cs.dial(t)
		sendRequest(t, c, "/slow", "")
		eventually(t, "active", func() bool { return cs.gauge(http.StateActive) == 1 })
		c.Close()
		eventually(t, "peer close while active", func() bool { return cs.closedCount(CloseReasonPeerClosed, "active") == 1 })
	})
	t.Run("server closes after Connection: close", func(t *testing.T) {
		t.Parallel()
		cs := startConnServer(t, true, nil)
		c := cs.dial(t)
		sendRequest(t, c, "/fast", "Connection: close\r\n")
		readResponse(t, bufio.NewReader(c))
		eventually(t, "server close", func() bool { return cs.closedCount(CloseReasonServer, "active") == 1 })
		// The aborted background read after each request is not a timeout.
		if n := cs.closedCount(CloseReasonReadTimeout, "active"); n != 0 {
			t.Fatalf("background-read abort counted as a read timeout")
		}
	})
	t.Run("shutdown closes idle connections", func(t *testing.T) {
		t.Parallel()
		cs := startConnServer(t, true, nil)
		c := cs.dial(t)
		sendRequest(t, c, "/fast", "")
		readResponse(t, bufio.NewReader(c))
		eventually(t, "idle", func() bool { return cs.gauge(http.StateIdle) == 1 })
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := cs.srv.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		eventually(t, "server close of idle", func() bool { return cs.closedCount(CloseReasonServer, "idle") == 1 })
	})
	t.Run("hijacked connection leaves the gauge when closed", func(t *testing.T) {
		t.Parallel()
		cs := startConnServer(t, true, nil)
		c := cs.dial(t)
		sendRequest(t, c, "/hijack", "")
		eventually(t, "hijacked", func() bool { return cs.gauge(http.StateHijacked) == 1 && cs.gauge(http.StateActive) == 0 })
		readResponse(t, bufio.NewReader(c))
		eventually(t, "hijacked conn closed", func() bool { return cs.gauge(http.StateHijacked) == 0 })
	})
	t.Run("without the listener wrapper", func(t *testing.T) {
		t.Parallel()
		cs := startConnServer(t, false, nil)
		c := cs.dial(t)
		sendRequest(t, c, "/fast", "")
		readResponse(t, bufio.NewReader(c))
		eventually(t, "idle", func() bool { return cs.gauge(http.StateIdle) == 1 })
		c.Close()
		eventually(t, "unknown close", func() bool {
			return testutil.ToFloat64(cs.m.closed.WithLabelValues(CloseReasonUnknown, "idle")) == 1
		})
		if g := cs.gauge(http.StateIdle); g != 0 {
			t.Fatalf("idle gauge %v after close", g)
		}
	})
}

// A flood of connection events is logged at a bounded rate, and the next
// line says how many were left out.
// floodCloses opens n connections and resets each before a request, and
// waits until every close is counted.
func floodCloses(t *testing.T, cs *connServer, n int) {
	t.Helper()
	for range n {
		c := cs.dial(t)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	eventually(t, "all closes counted", func() bool {
		return cs.closedCount(CloseReasonPeerReset, "new")+cs.closedCount(CloseReasonPeerClosed, "new") == float64(n)
	})
}

func TestConnLogIsRateLimited(t *testing.T) {
	cs := startConnServer(t, true, nil)
	const n = 60
	floodCloses(t, cs, n)
	lines := strings.Count(cs.logs.String(), `"msg":"connection closed"`)
	if lines >= n/2 || lines < 10 {
		t.Fatalf("%d of %d closes logged, want the burst of 10 and a few more", lines, n)
	}
	time.Sleep(250 * time.Millisecond) // one token
	c := cs.dial(t)
	c.Close()
	eventually(t, "suppressed count", func() bool { return strings.Contains(cs.logs.String(), `"suppressed":`) })
}

// blockingWriter holds every write whose text contains match until
// release is closed, and says on blocked when the first one arrives.
type blockingWriter struct {
	match   string
	blocked chan struct{}
	release chan struct{}
	once    sync.Once
	buf     testkit.SyncBuffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	if strings.Contains(string(p), w.match) {
		w.once.Do(func() { close(w.blocked) })
		<-w.release
	}
	return w.buf.Write(p)
}

// TestSettleWaitsForCloseLines: a connection's close leaves the gauges
// before its close line is written. Settle, which the process calls before
// it exits, must wait for that line too, or the last connections of a
// drain end unlogged and uncounted.
func TestSettleWaitsForCloseLines(t *testing.T) {
	w := &blockingWriter{match: `"msg":"connection closed"`, blocked: make(chan struct{}), release: make(chan struct{})}
	m := NewConnMetrics(prometheus.NewRegistry(), slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})))
	a, b := net.Pipe()
	defer b.Close()
	tc := &trackedConn{Conn: a, m: m, stripe: 1}
	for _, s := range []http.ConnState{http.StateNew, http.StateActive, http.StateIdle} {
		m.ConnState(tc, s)
	}
	a.Close()
	go m.ConnState(tc, http.StateClosed)
	select {
	case <-w.blocked:
	case <-time.After(5 * time.Second):
		t.Fatal("no close line was written")
	}
	if n := m.Open(); n != 0 {
		t.Fatalf("%d connections still open on the gauges while the close line is written", n)
	}
	settled := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		settled <- m.Settle(ctx)
	}()
	select {
	case err := <-settled:
		close(w.release)
		t.Fatalf("Settle returned (%v) before the close line was written", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(w.release)
	select {
	case err := <-settled:
		if err != nil {
			t.Fatalf("Settle: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Settle did not return once the close line was written")
	}
	if !strings.Contains(w.buf.String(), `"msg":"connection closed"`) {
		t.Fatalf("no close line: %s", w.buf.String())
	}
}

// BenchmarkConnStateKeepAliveRequest: the two transitions (active, idle)
// every request on a kept-alive connection costs, on a tracked connection.
func BenchmarkConnStateKeepAliveRequest(b *testing.B) {
	m := NewConnMetrics(prometheus.NewRegistry(), discardLogger())
	a, c := net.Pipe()
	defer a.Close()
	defer c.Close()
	tc := &trackedConn{Conn: a, m: m, stripe: 1}
	m.ConnState(tc, http.StateNew)
	b.ReportAllocs()
	for b.Loop() {
		m.ConnState(tc, http.StateActive)
		m.ConnState(tc, http.StateIdle)
	}
}

// net/http answers requests it cannot parse itself, before any handler:
// the tracked connection turns those answers into problem+json with a
// request ID, counts them by code and logs them.
func TestRejectedRequestsGetProblemAndRequestID(t *testing.T) {
	cases := []struct {
		name, raw   string
		code        int
		detail      string
		closesEarly bool
	}{
		{"headers over the limit", "GET /fast HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", 431, "HTTP_MAX_HEADER_BYTES", true},
		{"garbage request line", "NOT HTTP AT ALL\r\n\r\n", 400, "malformed request", false},
		{"invalid header name", "GET /fast HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", 400, "invalid header name", false},
		{"no Host", "GET /fast HTTP/1.1\r\n\r\n", 400, "missing required Host header", false},
		{"unsupported transfer encoding", "POST /fast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "unsupported transfer encoding", false},
		{"unsupported version", "GET /fast HTTP/3.0\r\nHost: x\r\n\r\n", 505, "unsupported protocol version", false},
		{"unsupported Expect", "GET /fast HTTP/1.1\r\nHost: x\r\nExpect: foo\r\n\r\n", 417, "unsupported Expect header", false},
		{"unsupported Expect, HTTP/1.0", "GET /fast HTTP/1.0\r\nHost: x\r\nExpect: foo\r\n\r\n", 417, "unsupported Expect header", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A server each: the log lines are rate limited.
			cs := startConnServer(t, true, func(s *http.Server) { s.MaxHeaderBytes = 1 << 10 })
			c := cs.dial(t)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			// The server may answer and close before a large request is
			// all written: write from another goroutine, read here.
			go io.WriteString(c, tc.raw)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.code, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("Content-Type %q", ct)
			}
			id := resp.Header.Get("X-Request-ID")
			if len(id) != 32 {
				t.Errorf("X-Request-ID %q", id)
			}
			var p struct {
				Status    int    `json:"status"`
				Title     string `json:"title"`
				Detail    string `json:"detail"`
				RequestID string `json:"request_id"`
			}
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			if p.Status != tc.code || p.Title != http.StatusText(tc.code) || p.RequestID != id || !strings.Contains(p.Detail, tc.detail) {
				t.Errorf("problem %+v, want status %d, detail containing %q, request_id %s", p, tc.code, tc.detail, id)
			}
			if !resp.Close {
				t.Error("response does not close the connection")
			}
			eventually(t, "log line", func() bool {
				return strings.Contains(cs.logs.String(), `"msg":"request rejected","status":`+strconv.Itoa(tc.code)) &&
					strings.Contains(cs.logs.String(), `"request_id":"`+id+`"`)
			}, cs.logs.String)
			if got := testutil.ToFloat64(cs.m.rejected.WithLabelValues(strconv.Itoa(tc.code))); got != 1 {
				t.Errorf("rejected{code=%d} = %v, want 1", tc.code, got)
			}
		})
	}

	// Handler responses are never taken for a rejection, even a plain-text
	// 400 that closes the connection and has no Date (the closest a
	// handler can come to net/http's own bytes).
	cs2 := startConnServer(t, true, func(s *http.Server) {
		s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Date"] = nil
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, "400 Bad Request")
		})
	})
	resp, err := http.Get("http://" + cs2.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || string(body) != "400 Bad Request" || resp.Header.Get("X-Request-ID") != "" {
		t.Errorf("handler's own 400 was rewritten: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if got := testutil.ToFloat64(cs2.m.rejected.WithLabelValues("400")); got != 0 {
		t.Errorf("handler's 400 counted as rejected: %v", got)
	}
}

func TestParseRejectionLeavesOtherBytesAlone(t *testing.T) {
	for _, b := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nok",
		"HTTP/1.1 400 Bad Request\r\nDate: x\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n",
		"HTTP/1.1 40x Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n",
		"HTTP/1.1 400Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n",
		"HTTP/1.1 400 \r\n",
		// A handler's 417 carries its headers (X-Request-Id) before Date,
		// or a body.
		"HTTP/1.1 417 Expectation Failed\r\nConnection: close\r\nX-Request-Id: 1\r\nDate: Mon, 30 Nov 2026 22:42:02 GMT\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 417 Expectation Failed\r\nConnection: close\r\nDate: Mon, 30 Nov 2026 22:42:02 GMT\r\nContent-Length: 2\r\n\r\nno",
		"\x17\x03\x03\x00\x20 encrypted record bytes......",
		"SSH-2.0-OpenSSH_9.6\r\n",
	} {
		if r, ok := parseRejection([]byte(b)); ok {
			t.Errorf("%q taken for a rejection: %+v", b, r)
		}
	}
}

// A request line or headers cut off by the read-header deadline: net/http
// answers 400 as if the request were malformed; the client was too slow, and
// gets a 408 problem.
func TestStalledHeadersGet408(t *testing.T) {
	for _, stalled := range []string{
		"GET /fast HTTP/1.1\r\nHo",                // net/http answers 400
		"GET /fast HTTP/1.1\r\nHost: x\r\nX-A: b", // net/http closes without a word
		"GET /fa", // the request line itself
	} {
		t.Run(strconv.Quote(stalled), func(t *testing.T) { stalledHeadersGet408(t, stalled) })
	}
}

func stalledHeadersGet408(t *testing.T, stalled string) {
	cs := startConnServer(t, true, func(s *http.Server) { s.ReadHeaderTimeout = 200 * time.Millisecond })
	c := cs.dial(t)
	io.WriteString(c, stalled)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to stalled headers: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || resp.Header.Get("Content-Type") != "application/problem+json" ||
		len(resp.Header.Get("X-Request-ID")) != 32 || !strings.Contains(string(body), "read-header timeout") {
		t.Fatalf("stalled headers: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	eventually(t, "counted as 408", func() bool {
		return testutil.ToFloat64(cs.m.rejected.WithLabelValues("408")) == 1 &&
			testutil.ToFloat64(cs.m.rejected.WithLabelValues("400")) == 0
	}, cs.dump)
}

// TestServerTimeouts exports the timeouts net/http enforces, its fallbacks
// included: a zero read-header or idle timeout means the read timeout.
func TestServerTimeouts(t *testing.T) {
	for _, tc := range []struct {
		name string
		srv  *http.Server
		want string
	}{
		{"all set", &http.Server{ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 45 * time.Second, IdleTimeout: 75 * time.Second},
			`idle 75 read 30 read_header 5 write 45`},
		{"fallbacks", &http.Server{ReadTimeout: 30 * time.Second, WriteTimeout: 1500 * time.Millisecond},
			`idle 30 read 30 read_header 30 write 1.5`},
		{"none", &http.Server{IdleTimeout: -1},
			`idle 0 read 0 read_header 0 write 0`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			ServerTimeouts(reg, tc.srv)
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, mf := range mfs {
				if mf.GetName() != "http_server_timeout_seconds" {
					continue
				}
				for _, m := range mf.GetMetric() {
					got = append(got, m.GetLabel()[0].GetValue(), strconv.FormatFloat(m.GetGauge().GetValue(), 'f', -1, 64))
				}
			}
			if s := strings.Join(got, " "); s != tc.want {
				t.Errorf("got %q, want %q", s, tc.want)
			}
		})
	}
}

// TestRejectionLinesHaveTheirOwnBudget: a flood of closed connections uses
// up the "connection closed" lines' budget, not the rejections': the
// request rejected right after still gets its line, with no suppressed
// count of closes folded in.
func TestRejectionLinesHaveTheirOwnBudget(t *testing.T) {
	cs := startConnServer(t, true, nil)
	floodCloses(t, cs, 60)
	c := cs.dial(t)
	defer c.Close()
	io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: x\r\nExpect: foo\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 417 {
		t.Fatalf("Expect: foo: %v %v", resp, err)
	}
	eventually(t, "the rejection's line", func() bool { return strings.Contains(cs.logs.String(), `"msg":"request rejected"`) })
	for _, l := range strings.Split(cs.logs.String(), "\n") {
		if strings.Contains(l, `"msg":"request rejected"`) && strings.Contains(l, `"suppressed"`) {
			t.Errorf("the rejection's line counts suppressed lines of another kind: %s", l)
		}
	}
}

// TestClientLeavingMidHeadersIsNoRejection: a client that closes or resets
// in the middle of its request line or headers gets net/http's 400 written
// to a socket nobody reads. That is a client that left (the close line says
// so), not a malformed request: no rejection is counted.
func TestClientLeavingMidHeadersIsNoRejection(t *testing.T) {
	for _, reset := range []bool{false, true} {
		t.Run(fmt.Sprintf("reset=%v", reset), func(t *testing.T) {
			cs := startConnServer(t, true, nil)
			c := cs.dial(t)
			io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: x\r\nX-Cut: y")
			time.Sleep(100 * time.Millisecond) // read by the server
			if reset {
				c.(*net.TCPConn).SetLinger(0)
			}
			c.Close()
			reason := CloseReasonPeerClosed
			if reset {
				reason = CloseReasonPeerReset
			}
			eventually(t, "the close counted", func() bool {
				return testutil.ToFloat64(cs.m.closed.WithLabelValues(reason, "active")) == 1
			}, cs.dump)
			for _, code := range []string{"400", "408"} {
				if n := testutil.ToFloat64(cs.m.rejected.WithLabelValues(code)); n != 0 {
					t.Errorf("a client that left mid-headers counted as %v rejected %s", n, code)
				}
			}
		})
	}
}

// TestStalledSecondRequestIsNoIdleTimeout: on a kept-alive connection the
// next request's first bytes arrive, then nothing. net/http reads them
// before it marks the connection active and cuts it at the read-header
// deadline: a stalled request (408, read_timeout, active), as on a fresh
// connection, not the keep-alive idle timeout.
func TestStalledSecondRequestIsNoIdleTimeout(t *testing.T) {
	for _, stalled := range []string{
		"GET /fast HTTP/1.1\r\nHost: x\r\n", // net/http closes without a word
		"GET /fast HTTP/1.1\r\nHo",          // net/http answers 400
		"GET /fa",                           // the request line itself
	} {
		t.Run(strconv.Quote(stalled), func(t *testing.T) { stalledSecondRequest(t, stalled) })
	}
}

func stalledSecondRequest(t *testing.T, stalled string) {
	cs := startConnServer(t, true, func(s *http.Server) {
		s.ReadHeaderTimeout = 300 * time.Millisecond
		s.IdleTimeout = 5 * time.Second
	})
	c := cs.dial(t)
	br := bufio.NewReader(c)
	io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	time.Sleep(100 * time.Millisecond) // idle
	io.WriteString(c, stalled)
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to the stalled second request: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("stalled second request: %d", resp.StatusCode)
	}
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Fatalf("more after the 408: %q", rest)
	}
	eventually(t, "counted as a stalled request", func() bool {
		return testutil.ToFloat64(cs.m.closed.WithLabelValues(CloseReasonReadTimeout, "active")) == 1 &&
			testutil.ToFloat64(cs.m.closed.WithLabelValues(CloseReasonIdleTimeout, "idle")) == 0 &&
			testutil.ToFloat64(cs.m.rejected.WithLabelValues("408")) == 1
	}, cs.dump)
}

// A request pipelined behind another is in net/http's buffer before the
// first is answered: net/http reads it without marking the connection
// active again. Its rejection is still rewritten, counted and logged, and
// a pipelined request that stalls is cut by the read-header deadline, not
// counted as the idle timeout.
func TestPipelinedRejections(t *testing.T) {
	first := "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, tc := range []struct {
		name, second string
		code         int
	}{
		{"garbage", "NOT HTTP AT ALL\r\n\r\n", http.StatusBadRequest},
		{"unsupported version", "GET /fast HTTP/3.0\r\nHost: x\r\n\r\n", http.StatusHTTPVersionNotSupported},
		{"unsupported transfer encoding", "POST /fast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", http.StatusNotImplemented},
		{"stalled request line", "GET /fa", http.StatusRequestTimeout},
		{"stalled headers", "GET /fast HTTP/1.1\r\nHost: x\r\n", http.StatusRequestTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := startConnServer(t, true, func(s *http.Server) { s.ReadHeaderTimeout = 300 * time.Millisecond })
			c := cs.dial(t)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, first+tc.second) // one write: the second is buffered with the first
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("first request: %v %v", resp, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			resp, err = http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer to the pipelined request: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			id := resp.Header.Get("X-Request-ID")
			if resp.StatusCode != tc.code || resp.Header.Get("Content-Type") != "application/problem+json" || len(id) != 32 {
				t.Fatalf("pipelined request answered %d %v %q, want the %d problem with a request ID", resp.StatusCode, resp.Header, body, tc.code)
			}
			eventually(t, "counted, logged, and the close counted as mid-request", func() bool {
				return testutil.ToFloat64(cs.m.rejected.WithLabelValues(strconv.Itoa(tc.code))) == 1 &&
					strings.Contains(cs.logs.String(), `"request_id":"`+id+`"`) &&
					cs.closedCount(CloseReasonIdleTimeout, "idle")+cs.closedCount(CloseReasonServer, "idle") == 0 &&
					strings.Contains(cs.logs.String(), `"msg":"connection closed"`)
			}, cs.dump)
			if !strings.Contains(cs.logs.String(), `"state":"active","remote_addr"`) || !strings.Contains(cs.logs.String(), `"requests":2`) {
				t.Errorf("close line does not say the connection was in its second request:\n%s", cs.logs)
			}
		})
	}
}

// A pipelined request the client cuts short by leaving is no rejection,
// as the same bytes sent after the first answer are not: the client left.
func TestPipelinedRequestCutByClientIsNoRejection(t *testing.T) {
	cs := startConnServer(t, true, nil)
	c := cs.dial(t)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\nGET /fa")
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
	eventually(t, "the close", func() bool { return cs.closedCount(CloseReasonPeerClosed, "active") == 1 }, cs.dump)
	if n := testutil.ToFloat64(cs.m.rejected.WithLabelValues("400")); n != 0 {
		t.Fatalf("rejected{400} = %v for a request the client cut short, want 0\n%s", n, cs.dump())
	}
}

// A stalled start of a next request (fewer bytes than net/http waits for
// before it reads a request) is cut by the idle deadline: the connection
// broke in that request, and its close line does not name the request
// answered before it.
func TestStalledRequestStartNamesNoEarlierRequest(t *testing.T) {
	e, m, _, logs := accessEngine(AccessOptions{})
	e.GET("/fast", func(c *gin.Context) {
		c.Header("X-Request-Id", "answered-before")
		c.String(http.StatusOK, "fast")
	})
	addr := serveTracked(t, m, &http.Server{Handler: e, IdleTimeout: 300 * time.Millisecond})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	io.WriteString(c, "GE")
	io.Copy(io.Discard, br)
	eventually(t, "the close line", func() bool { return strings.Contains(logs.String(), `"msg":"connection closed"`) }, logs.String)
	if !strings.Contains(logs.String(), `"request_id":"answered-before"`) {
		t.Fatalf("the access line lacks the handler's request ID:\n%s", logs)
	}
	if !strings.Contains(logs.String(), `"reason":"read_timeout","state":"active"`) || strings.Contains(logs.String(), `"logged_status"`) {
		t.Errorf("close line: want read_timeout, active, without the request answered before:\n%s", logs)
	}
}

// A client that closes its connection as soon as it has read a complete
// answer on a Connection: close (or HTTP/1.0) request did not leave in the
// middle of a request: net/http closes such a connection without marking it
// idle, and the client's FIN can reach its pending read first. Nor does the
// server's own close after such an answer count as one mid-request.
func TestClientClosingAfterItsAnswerIsNoMidRequestLeave(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", useTLS), func(t *testing.T) { clientClosingAfterItsAnswer(t, useTLS) })
	}
}

func clientClosingAfterItsAnswer(t *testing.T, useTLS bool) {
	e, m, _, logs := accessEngine(AccessOptions{})
	e.GET("/fast", func(c *gin.Context) { c.String(http.StatusOK, "fast") })
	var dial func() net.Conn
	if useTLS {
		addr := serveTLSTracked(t, m, &http.Server{Handler: e})
		dial = func() net.Conn { return dialTLSH1(t, addr) } // closes with close_notify, then FIN
	} else {
		addr := serveTracked(t, m, &http.Server{Handler: e})
		dial = func() net.Conn {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
	}
	// A race: about one connection in a hundred shows it here.
	n := 400
	if useTLS {
		n = 100 // handshakes take longer
	}
	for i := range n {
		c := dial()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if i%2 == 0 {
			io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		} else {
			io.WriteString(c, "GET /fast HTTP/1.0\r\n\r\n")
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		c.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "fast" {
			t.Fatalf("answer %d %q", resp.StatusCode, body)
		}
	}
	closed := func() float64 {
		var sum float64
		for _, r := range []string{CloseReasonPeerClosed, CloseReasonPeerReset, CloseReasonServer} {
			for _, st := range []string{"new", "active", "idle"} {
				sum += testutil.ToFloat64(m.closed.WithLabelValues(r, st))
			}
		}
		return sum
	}
	eventually(t, "every connection closed", func() bool { return closed() == float64(n) }, logs.String)
	// The server's own close after the answer is no close mid-request
	// either.
	for _, r := range []string{CloseReasonPeerClosed, CloseReasonPeerReset, CloseReasonServer} {
		if got := testutil.ToFloat64(m.closed.WithLabelValues(r, "active")); got != 0 {
			t.Errorf("%s/active = %v for connections closed after a complete answer, want 0", r, got)
		}
	}
	if strings.Contains(logs.String(), `"level":"INFO","msg":"connection closed"`) {
		t.Errorf("a close after a complete answer was logged as noteworthy:\n%s", logs)
	}
}

// TestHalfCloseAfterAnswerIsNoMidRequestLeave: a client that half-closes
// its connection after its request and reads the whole answer did not
// leave mid-request, also when its FIN arrives after the handlers answered
// (the access line says 200) but before net/http writes the answer out.
// A middleware outside the access middleware holds that window open.
func TestHalfCloseAfterAnswerIsNoMidRequestLeave(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	m, hm := NewConnMetrics(reg, logger), NewHTTPMetrics(reg)
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	finRead := make(chan struct{})
	e.Use(func(c *gin.Context) {
		c.Next()
		// Answered and logged; the client's FIN is read meanwhile (net/
		// http's background read cancels the request's context).
		select {
		case <-c.Request.Context().Done():
		case <-time.After(5 * time.Second):
		}
		close(finRead)
	})
	e.Use(Access(logger, hm, AccessOptions{}))
	answered := make(chan struct{})
	e.GET("/fast", func(c *gin.Context) {
		c.String(http.StatusOK, "fast")
		close(answered)
	})
	addr := serveTracked(t, m, &http.Server{Handler: e})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	<-answered
	eventually(t, "the access line", func() bool { return strings.Contains(logs.String(), `"msg":"request"`) }, logs.String)
	c.(*net.TCPConn).CloseWrite()
	<-finRead
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "fast" {
		t.Fatalf("answer %d %q", resp.StatusCode, body)
	}
	eventually(t, "the close counted", func() bool {
		return testutil.ToFloat64(m.closed.WithLabelValues(CloseReasonPeerClosed, "idle"))+
			testutil.ToFloat64(m.closed.WithLabelValues(CloseReasonPeerClosed, "active")) == 1
	}, logs.String)
	if n := testutil.ToFloat64(m.closed.WithLabelValues(CloseReasonPeerClosed, "active")); n != 0 ||
		strings.Contains(logs.String(), `"level":"INFO","msg":"connection closed"`) || strings.Contains(logs.String(), `"status":499`) {
		t.Fatalf("a client that half-closed after its answer was written counted as leaving mid-request\n%s", logs)
	}
}
