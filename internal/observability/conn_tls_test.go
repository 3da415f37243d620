package observability

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"

	"github.com/hardenedgo/ginservice/internal/testkit"
)

// serveTracked runs srv (its handler set; ConnState and ConnContext filled
// in here) over plain HTTP on loopback behind m's listener, and returns its
// address.
func serveTracked(t *testing.T, m *ConnMetrics, srv *http.Server) string {
	t.Helper()
	srv.ConnState, srv.ConnContext = m.ConnState, m.ConnContext
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(m.Listener(ln))
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// dialTLSH1 opens an HTTP/1.1 TLS connection to addr (5 s deadline),
// closed when the test ends.
func dialTLSH1(t *testing.T, addr string) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c
}

// serveTLSTracked runs srv (its handler set; ConnState, ConnContext, error
// log and certificate filled in here) over TLS on loopback behind m's
// listener, and returns its address.
func serveTLSTracked(t *testing.T, m *ConnMetrics, srv *http.Server) string {
	t.Helper()
	srv.ConnState, srv.ConnContext = m.ConnState, m.ConnContext
	srv.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(m.Listener(ln), "", "")
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestRejectedOnTLSListenerCounted: on the TLS listener net/http's own
// answer to a request it cannot read is encrypted before the connection
// wrapper sees it, so it cannot be rewritten; it is still counted
// (rejected{code="unknown"}) and logged. Connections the server closes after
// a handler ran (Connection: close, a handler aborting with
// http.ErrAbortHandler, a forced close over HTTP/1 or HTTP/2) are not.
func TestRejectedOnTLSListenerCounted(t *testing.T) {
	e, m, _, logs := accessEngine(AccessOptions{})
	e.GET("/fast", func(c *gin.Context) { c.String(http.StatusOK, "fast") })
	e.GET("/abort", func(c *gin.Context) { panic(http.ErrAbortHandler) })
	inSlow := make(chan int, 2)
	e.GET("/slow", func(c *gin.Context) {
		inSlow <- c.Request.ProtoMajor
		<-c.Request.Context().Done() // until the server closes the connection
	})
	srv := &http.Server{Handler: e, MaxHeaderBytes: 1 << 10}
	addr := serveTLSTracked(t, m, srv)

	rejected := func() float64 { return testutil.ToFloat64(m.rejected.WithLabelValues(rejectedUnknown)) }
	closes := func() int { return strings.Count(logs.String(), `"msg":"connection closed"`) }
	// raw sends a request on a new HTTP/1.1 TLS connection and returns the
	// response status.
	raw := func(req string) int {
		t.Helper()
		c := dialTLSH1(t, addr)
		defer c.Close()
		go io.WriteString(c, req) // the server may answer before a large request is all written
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return 0 // no response: the connection was cut
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		// Wait for the server to close its side, so the close is counted
		// before the next check.
		io.Copy(io.Discard, c)
		return resp.StatusCode
	}

	// Served requests, one closed by the server after the handler.
	if got := raw("GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); got != http.StatusOK {
		t.Fatalf("GET /fast: %d", got)
	}
	if got := raw("GET /abort HTTP/1.1\r\nHost: x\r\n\r\n"); got != 0 {
		t.Fatalf("GET /abort answered %d, want the connection cut", got)
	}
	// The close line comes after the rejection check (ended): once both
	// connections have one, their verdict is in.
	eventually(t, "both connections closed", func() bool { return closes() >= 2 }, logs.String)
	if n := rejected(); n != 0 {
		t.Fatalf("rejected{unknown} = %v after served requests, want 0\n%s", n, logs)
	}

	// Headers over the limit: net/http answers 431 itself.
	if got := raw("GET /fast HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 70<<10) + "\r\n\r\n"); got != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("big headers: %d, want 431", got)
	}
	eventually(t, "rejected{unknown} = 1", func() bool { return rejected() == 1 }, logs.String)
	// A malformed request line.
	if got := raw("NOT HTTP AT ALL\r\n\r\n"); got != http.StatusBadRequest {
		t.Fatalf("garbage: %d, want 400", got)
	}
	eventually(t, "rejected{unknown} = 2", func() bool { return rejected() == 2 }, logs.String)
	if n := strings.Count(logs.String(), `"msg":"request rejected"`); n != 2 {
		t.Errorf("%d 'request rejected' lines, want 2:\n%s", n, logs)
	}

	// A forced close (http.Server.Close at the end of a drain that ran out
	// of time) cuts requests that are in a handler: over HTTP/1 the server
	// closes a connection that is active, which is not a rejection. HTTP/2
	// requests are not marked routed: this counts on an HTTP/2 connection
	// closing its streams, and so going idle, before it closes.
	h2 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	for _, c := range []*http.Client{h1, h2} {
		go func() {
			if resp, err := c.Get("https://" + addr + "/slow"); err == nil {
				resp.Body.Close()
			}
		}()
	}
	protos := map[int]bool{}
	for range 2 {
		select {
		case p := <-inSlow:
			protos[p] = true
		case <-time.After(5 * time.Second):
			t.Fatal("requests did not reach /slow")
		}
	}
	if !protos[1] || !protos[2] {
		t.Fatalf("protocols in /slow: %v, want HTTP/1 and HTTP/2", protos)
	}
	before := closes()
	srv.Close()
	eventually(t, "both connections closed", func() bool { return closes() >= before+2 }, logs.String)
	if n := rejected(); n != 2 {
		t.Fatalf("rejected{unknown} = %v after a forced close of requests in handlers, want 2\n%s", n, logs)
	}
}

// A TLS client that closes politely sends close_notify before its FIN, and
// net/http reads that as the end of the connection without an error the
// wrapper under TLS could see: the close still counts as the peer's, over
// HTTP/1 and HTTP/2. The server's own close of an idle connection (at
// shutdown) still counts as the server's.
func TestTLSPeerCloseCountsAsPeerClosed(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	m := NewConnMetrics(reg, logger)
	mux := http.NewServeMux()
	mux.HandleFunc("/fast", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "fast") })
	srv := &http.Server{Handler: mux}
	addr := serveTLSTracked(t, m, srv)
	closed := func(reason string) float64 {
		return testutil.ToFloat64(m.closed.WithLabelValues(reason, "idle"))
	}
	get := func(proto string) *http.Client {
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{proto}}, ForceAttemptHTTP2: proto == "h2"}
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		resp, err := c.Get("https://" + addr + "/fast")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if want := map[string]int{"http/1.1": 1, "h2": 2}[proto]; resp.ProtoMajor != want {
			t.Fatalf("%s: served over HTTP/%d", proto, resp.ProtoMajor)
		}
		return c
	}
	for i, proto := range []string{"http/1.1", "h2"} {
		c := get(proto)
		c.CloseIdleConnections() // close_notify, then FIN
		eventually(t, proto+" client close", func() bool { return closed(CloseReasonPeerClosed) == float64(i+1) })
		if n := closed(CloseReasonServer); n != 0 {
			t.Fatalf("%s: a client's close counted %v times as the server's\n%s", proto, n, logs)
		}
	}
	// The server closes an idle connection: still the server's.
	c := get("http/1.1")
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "server close", func() bool { return closed(CloseReasonServer) == 1 })
	if n := closed(CloseReasonPeerClosed); n != 2 {
		t.Errorf("peer closes = %v after the server's close, want 2", n)
	}
}

// tlsRecords finds record boundaries however the bytes arrive: a record
// split anywhere, headers split, several records in one read.
func TestTLSRecordsFollowBoundaries(t *testing.T) {
	rec := func(typ byte, n int) []byte {
		return append([]byte{typ, 3, 3, byte(n >> 8), byte(n)}, make([]byte, n)...)
	}
	appData, alert13, alert12, small := rec(0x17, 300), rec(0x17, 19), rec(0x15, 26), rec(0x17, 20)
	stream := func(rs ...[]byte) []byte { return bytes.Join(rs, nil) }
	for _, tc := range []struct {
		name string
		in   []byte
		want bool
	}{
		{"application data", stream(appData), false},
		{"TLS 1.3 close_notify last", stream(appData, alert13), true},
		{"TLS 1.2 alert last", stream(appData, alert12), true},
		{"data after an alert-sized record", stream(alert13, appData), false},
		{"a 20-byte payload is data", stream(appData, small), false},
	} {
		for chunk := 1; chunk <= len(tc.in); chunk++ { // every way of cutting it into equal reads
			var r tlsRecords
			for b := tc.in; len(b) > 0; {
				k := min(chunk, len(b))
				r.feed(b[:k])
				b = b[k:]
			}
			if r.alert.Load() != tc.want || r.remain != 0 || r.nhdr != 0 {
				t.Fatalf("%s in reads of %d: alert %v (want %v), remain %d, nhdr %d", tc.name, chunk, r.alert.Load(), tc.want, r.remain, r.nhdr)
			}
		}
	}
	if !isTLSAlert(alert13) || !isTLSAlert(alert12) || isTLSAlert(appData) || isTLSAlert(small) || isTLSAlert([]byte{0x15}) {
		t.Error("isTLSAlert misreads a record")
	}
}

// TestTLSPoliteCloseMidRequestIsActive: a TLS client that closes politely
// (close_notify, then FIN) while its request is served left in the middle of
// the request, even when the handler goes on and writes its response before
// the server notices: the state is the one the close_notify came in.
func TestTLSPoliteCloseMidRequestIsActive(t *testing.T) {
	e, m, _, logs := accessEngine(AccessOptions{})
	e.GET("/linger", func(c *gin.Context) {
		time.Sleep(300 * time.Millisecond) // deaf to the context
		c.String(http.StatusOK, "late")
	})
	addr := serveTLSTracked(t, m, &http.Server{Handler: e})
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /linger HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(100 * time.Millisecond)
	c.Close()
	eventually(t, "the close counted", func() bool {
		return testutil.ToFloat64(m.closed.WithLabelValues(CloseReasonPeerClosed, "active"))+
			testutil.ToFloat64(m.closed.WithLabelValues(CloseReasonPeerClosed, "idle")) == 1
	}, logs.String)
	if n := testutil.ToFloat64(m.closed.WithLabelValues(CloseReasonPeerClosed, "active")); n != 1 {
		t.Fatalf("a polite close mid-request counted as peer_closed idle\n%s", logs)
	}
}

// TestHijackedCloseIsNotAServerCut: a handler that hijacks its connection
// and closes it is not the server's forced close: only MarkForcedClose
// (the drain ran out of time) makes a close under a running handler the
// server's doing.
func TestHijackedCloseIsNotAServerCut(t *testing.T) {
	e, m, _, logs := accessEngine(AccessOptions{})
	e.GET("/ws", func(c *gin.Context) {
		conn, _, err := c.Writer.Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\n\r\n")
		conn.Close()
	})
	addr := serveTracked(t, m, &http.Server{Handler: e})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
	io.Copy(io.Discard, c)
	eventually(t, "the access line", func() bool { return strings.Contains(logs.String(), `"msg":"request"`) }, logs.String)
	if strings.Contains(logs.String(), "server_closed") {
		t.Fatalf("a hijacked connection its handler closed logged as the server's forced close:\n%s", logs)
	}
}

// TestHTTP2WriteTimeoutWhateverTheHandlerMarked: the write timer's stream
// reset cancels the request's context, and a handler that answers a
// cancelled context by marking a client abort (the template's pattern)
// does not make it one: the deadline decides.
func TestHTTP2WriteTimeoutWhateverTheHandlerMarked(t *testing.T) {
	const writeTimeout = 300 * time.Millisecond
	e, m, hm, logs := accessEngine(AccessOptions{WriteTimeout: writeTimeout})
	e.GET("/slow", func(c *gin.Context) {
		<-c.Request.Context().Done() // until the write timer resets the stream
		MarkClientAbort(c)
		c.Abort()
	})
	addr := serveTLSTracked(t, m, &http.Server{Handler: e, WriteTimeout: writeTimeout})
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + addr + "/slow")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a response past the write timeout reached the client: %s %d", resp.Proto, resp.StatusCode)
	}
	eventually(t, "the access line", func() bool { return strings.Contains(logs.String(), `"msg":"request"`) }, logs.String)
	if n := testutil.ToFloat64(hm.AbortsCounter("/slow")); n != 0 || !strings.Contains(logs.String(), "write_timeout") {
		t.Fatalf("a stream the write timer reset: %v client aborts\n%s", n, logs)
	}
}

// accessEngine is a gin engine with the access middleware, the connection
// metrics to wire into its server, and the log both write (JSON, debug).
func accessEngine(opts AccessOptions) (*gin.Engine, *ConnMetrics, *HTTPMetrics, *testkit.SyncBuffer) {
	logs := &testkit.SyncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	m, hm := NewConnMetrics(reg, logger), NewHTTPMetrics(reg)
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.Use(Access(logger, hm, opts))
	return e, m, hm, logs
}

// On the TLS listener net/http's answers to a pipelined request it rejects
// and to a request line the read-header deadline cut off are counted as
// rejected{unknown} too; a stalled request that net/http closes without an
// answer is not a rejection. A stalled second request's close line does not
// carry the request served before it.
func TestTLSRejectionsOfPipelinedAndSlowRequests(t *testing.T) {
	e, m, _, logs := accessEngine(AccessOptions{})
	e.GET("/fast", func(c *gin.Context) {
		c.Header("X-Request-Id", "answered-before") // what the access line and the connection record
		c.String(http.StatusOK, "fast")
	})
	srv := &http.Server{Handler: e, ReadHeaderTimeout: 300 * time.Millisecond, IdleTimeout: 5 * time.Second}
	addr := serveTLSTracked(t, m, srv)
	rejected := func() float64 { return testutil.ToFloat64(m.rejected.WithLabelValues(rejectedUnknown)) }
	closes := func() int { return strings.Count(logs.String(), `"msg":"connection closed"`) }
	// exchange sends raw on a new HTTP/1.1 TLS connection and returns the
	// statuses of the responses, until the server closes it.
	exchange := func(raw string) []int {
		t.Helper()
		c := dialTLSH1(t, addr)
		defer c.Close()
		before := closes()
		io.WriteString(c, raw)
		var codes []int
		br := bufio.NewReader(c)
		for {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				break
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes = append(codes, resp.StatusCode)
		}
		eventually(t, "the close", func() bool { return closes() > before }, logs.String)
		return codes
	}
	const first = "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
	if got := exchange(first + "NOT HTTP AT ALL\r\n\r\n"); len(got) != 2 || got[1] != http.StatusBadRequest {
		t.Fatalf("pipelined garbage: %v, want 200 then 400", got)
	}
	if n := rejected(); n != 1 {
		t.Fatalf("rejected{unknown} = %v after a pipelined rejection, want 1\n%s", n, logs)
	}
	if got := exchange("GET /fa"); len(got) != 1 || got[0] != http.StatusBadRequest {
		t.Fatalf("stalled request line: %v, want net/http's 400", got)
	}
	if n := rejected(); n != 2 {
		t.Fatalf("rejected{unknown} = %v after a request line cut by the read-header timeout, want 2\n%s", n, logs)
	}
	// Stalled headers: net/http closes without a word; nothing answered.
	// The request served before them is not the one the connection broke in.
	if got := exchange(first + "GET /fast HTTP/1.1\r\nHost: x\r\n"); len(got) != 1 {
		t.Fatalf("stalled pipelined headers: %v, want only the first answer", got)
	}
	if n := rejected(); n != 2 {
		t.Fatalf("rejected{unknown} = %v after stalled headers nobody answered, want 2\n%s", n, logs)
	}
	// Each connection broke in a request: the server closed the first
	// after its rejection, the read-header deadline cut the other two.
	if n, r := testutil.ToFloat64(m.closed.WithLabelValues(CloseReasonServer, "active")), testutil.ToFloat64(m.closed.WithLabelValues(CloseReasonReadTimeout, "active")); n != 1 || r != 2 {
		t.Errorf("server/active closes = %v, read_timeout/active = %v, want 1 and 2\n%s", n, r, logs)
	}
	if !strings.Contains(logs.String(), `"request_id":"answered-before"`) {
		t.Fatalf("the access lines lack the handler's request ID:\n%s", logs)
	}
	if strings.Contains(logs.String(), `"logged_status"`) {
		t.Errorf("a close line names a request that was answered before the connection broke:\n%s", logs)
	}

	// A shutdown that closes a connection whose next request is still
	// coming in answers nothing: no rejection.
	c := dialTLSH1(t, addr)
	br := bufio.NewReader(c)
	io.WriteString(c, first)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	before := closes()
	io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: x\r\n") // more than the four bytes net/http waits for
	time.Sleep(50 * time.Millisecond)
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the close", func() bool { return closes() > before }, logs.String)
	if n := rejected(); n != 2 {
		t.Fatalf("rejected{unknown} = %v after a shutdown mid-request, want 2\n%s", n, logs)
	}
}

// ServerErrorLog finds a failing handshake's connection by the remote
// address net/http logs. Two handshakes from one address at once (two
// listeners sharing the metrics) give no answer rather than the other's,
// and every entry goes when its connection leaves the handshake.
func TestHandshakeLookupByAddress(t *testing.T) {
	m := NewConnMetrics(prometheus.NewRegistry(), discardLogger())
	newConn := func() (*tls.Conn, *trackedConn) {
		a, b := net.Pipe() // every pipe's remote address is "pipe"
		t.Cleanup(func() { a.Close(); b.Close() })
		tc := &trackedConn{Conn: a, m: m}
		return tls.Server(tc, &tls.Config{}), tc
	}
	entries := func() int {
		n := 0
		m.handshakes.Range(func(any, any) bool { n++; return true })
		return n
	}
	c1, tc1 := newConn()
	m.ConnState(c1, http.StateNew)
	if got := m.tlsHandshake("pipe"); got != tc1 {
		t.Fatalf("lookup of the one handshake from pipe: %p, want %p", got, tc1)
	}
	c2, _ := newConn()
	m.ConnState(c2, http.StateNew)
	if got := m.tlsHandshake("pipe"); got != nil {
		t.Fatalf("lookup with two handshakes from pipe: %p, want none", got)
	}
	m.ConnState(c1, http.StateActive)
	if got := m.tlsHandshake("pipe"); got != nil {
		t.Fatalf("lookup after the first left its handshake: %p, want none (which one is left is not known)", got)
	}
	m.ConnState(c2, http.StateClosed)
	m.ConnState(c1, http.StateClosed)
	if n := entries(); n != 0 {
		t.Fatalf("%d handshake entries left after both connections closed", n)
	}
	c3, tc3 := newConn()
	m.ConnState(c3, http.StateNew)
	if got := m.tlsHandshake("pipe"); got != tc3 {
		t.Fatalf("lookup of a later handshake: %p, want %p", got, tc3)
	}
	m.ConnState(c3, http.StateClosed)
	if n := entries(); n != 0 {
		t.Fatalf("%d handshake entries left", n)
	}
}

// A client that breaks the HTTP/2 protocol gets a GOAWAY (or a stream
// reset) and sees an EOF or a stream error; the server counts the error by
// net/http's type. The server's own HTTP2 settings are kept.
func TestHTTP2ProtocolErrorsCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewConnMetrics(reg, discardLogger())
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		HTTP2:   &http.HTTP2Config{MaxConcurrentStreams: 7},
	}
	HTTP2Errors(reg, srv)
	addr := serveTLSTracked(t, m, srv)
	count := func(typ string) float64 {
		v, _ := testkit.Metric(t, reg, "http_server_http2_errors_total", "type", typ)
		return v
	}

	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	// A reset of a stream the client never opened: a connection error.
	fr.WriteRSTStream(1, http2.ErrCodeCancel)
	var goAway *http2.GoAwayFrame
	maxStreams := uint32(0)
	for goAway == nil {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY: %v", err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			goAway = f
		case *http2.SettingsFrame:
			if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok {
				maxStreams = v
			}
		}
	}
	if goAway.ErrCode != http2.ErrCodeProtocol {
		t.Errorf("GOAWAY %v, want PROTOCOL_ERROR", goAway.ErrCode)
	}
	eventually(t, "the error counted", func() bool { return count("conn_PROTOCOL_ERROR_reset_idle_stream") == 1 })
	if maxStreams != 7 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d, want the server's 7", maxStreams)
	}
}

// TestForcedCloseDecidedAtCloseNotify: crypto/tls's Close writes
// close_notify before it closes the connection under it, and a peer that
// closes on it ends the stream (and the handler's body read) before that
// close: the forced close is decided at the alert, so the request is still
// the server's cut, never a 499. The alert's write is held here to give
// the peer that head start every time.
func TestForcedCloseDecidedAtCloseNotify(t *testing.T) {
	e, m, hm, logs := accessEngine(AccessOptions{})
	reading := make(chan struct{})
	e.POST("/upload", func(c *gin.Context) {
		close(reading)
		if _, err := io.ReadAll(c.Request.Body); err != nil {
			c.AbortWithStatus(http.StatusBadRequest)
		}
	})
	srv := &http.Server{Handler: e, ConnState: m.ConnState, ConnContext: m.ConnContext,
		ErrorLog:  slog.NewLogLogger(slog.DiscardHandler, slog.LevelError),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(m.Listener(slowAlertListener{ln}), "", "")
	defer srv.Close()

	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	go io.WriteString(pw, `{"a":`) // then nothing more
	req, _ := http.NewRequest(http.MethodPost, "https://"+ln.Addr().String()+"/upload", pr)
	req.ContentLength = 100
	done := make(chan error, 1)
	go func() {
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case <-reading:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler never ran")
	}
	m.MarkForcedClose()
	srv.Close()
	<-done
	eventually(t, "the access line", func() bool { return strings.Contains(logs.String(), `"msg":"request"`) }, logs.String)
	if n := testutil.ToFloat64(hm.AbortsCounter("/upload")); n != 0 || !strings.Contains(logs.String(), "server_closed") {
		t.Fatalf("a stream the forced close cut, its peer closing at close_notify: %v client aborts\n%s", n, logs)
	}
}

// slowAlertListener's connections hold every write of an alert record (a
// close_notify on the way out) for 300 ms after it went out.
type slowAlertListener struct{ net.Listener }

func (l slowAlertListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return slowAlertConn{c}, nil
}

type slowAlertConn struct{ net.Conn }

func (c slowAlertConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if isTLSAlert(b) {
		time.Sleep(300 * time.Millisecond)
	}
	return n, err
}
