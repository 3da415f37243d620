package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/hardenedgo/ginservice/internal/testkit"
)

// scrapeNoKeepAlive reads series from the admin listener over a connection
// that is closed right after, so the scrape itself leaves no goroutine or
// descriptor behind in the service.
func scrapeNoKeepAlive(t *testing.T, admin string, series ...string) []float64 {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	out := make([]float64, len(series))
	for i, s := range series {
		out[i] = -1
		for _, m := range metricLine.FindAllStringSubmatch(string(b), -1) {
			if m[1] == s {
				out[i], _ = strconv.ParseFloat(m[2], 64)
			}
		}
	}
	return out
}

// openConnections is the sum of http_server_connections over its states.
func openConnections(t *testing.T, admin string) float64 {
	t.Helper()
	v := scrapeNoKeepAlive(t, admin,
		`http_server_connections{state="new"}`, `http_server_connections{state="active"}`,
		`http_server_connections{state="idle"}`, `http_server_connections{state="hijacked"}`)
	return v[0] + v[1] + v[2] + v[3]
}

// target is the public listener under abuse: plain TCP, or TLS (the
// HTTP-level abuses then run inside a completed handshake).
type target struct {
	addr string
	tls  bool
}

// abuse is one way a client misbehaves, on a connection of its own.
type abuse struct {
	name string
	do   func(t *testing.T, tg target)
}

// dial connects (and, on TLS, shakes hands) with a 10 s deadline on all I/O.
func (tg target) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := tg.dialTCP(t)
	if c == nil || !tg.tls {
		return c
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err = tc.Handshake(); err != nil {
		t.Errorf("TLS handshake: %v", err)
		c.Close()
		return nil
	}
	return tc
}

// dialTCP connects without TLS, whatever the listener speaks.
func (tg target) dialTCP(t *testing.T) (net.Conn, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", tg.addr, 5*time.Second)
	if err != nil {
		t.Errorf("dial: %v", err)
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, nil
}

// tcpOf is the TCP connection under c.
func tcpOf(c net.Conn) *net.TCPConn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn().(*net.TCPConn)
	}
	return c.(*net.TCPConn)
}

// sendAndRead writes raw bytes, reads whatever comes back until the server
// closes or 2 s pass, and returns it.
func sendAndRead(t *testing.T, tg target, raw string) string {
	c := tg.dial(t)
	if c == nil {
		return ""
	}
	defer c.Close()
	_, _ = io.WriteString(c, raw)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

var abuses = []abuse{
	{"connect and leave", func(t *testing.T, tg target) {
		if c := tg.dial(t); c != nil {
			c.Close()
		}
	}},
	{"half a request line, then leave", func(t *testing.T, tg target) {
		if c := tg.dial(t); c != nil {
			io.WriteString(c, "GET /api/v1/pi")
			c.Close()
		}
	}},
	{"TLS ClientHello on the plain port", func(t *testing.T, tg target) {
		sendAndRead(t, tg, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"+strings.Repeat("\x00", 64))
	}},
	{"binary garbage", func(t *testing.T, tg target) {
		sendAndRead(t, tg, "\x00\xff\xfe\r\n\r\n")
	}},
	{"headers over the limit", func(t *testing.T, tg target) {
		sendAndRead(t, tg, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 70<<10)+"\r\n\r\n")
	}},
	{"body cut short", func(t *testing.T, tg target) {
		if c := tg.dial(t); c != nil {
			io.WriteString(c, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":")
			c.Close()
		}
	}},
	{"broken chunked body", func(t *testing.T, tg target) {
		sendAndRead(t, tg, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
	}},
	{"body over the limit, announced", func(t *testing.T, tg target) {
		sendAndRead(t, tg, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\nConnection: close\r\n\r\n{")
	}},
	{"body over the limit, chunked", func(t *testing.T, tg target) {
		c := tg.dial(t)
		if c == nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
		chunk := fmt.Sprintf("%x\r\n%s\r\n", 64<<10, strings.Repeat(" ", 64<<10))
		for range 20 { // 1.3 MB, over MAX_BODY_BYTES
			if _, err := io.WriteString(c, chunk); err != nil {
				break
			}
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.Copy(io.Discard, c)
	}},
	{"reset right after the request", func(t *testing.T, tg target) {
		if c := tg.dial(t); c != nil {
			io.WriteString(c, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
			tcpOf(c).SetLinger(0)
			c.Close()
		}
	}},
	{"write side closed after the request", func(t *testing.T, tg target) {
		c := tg.dial(t)
		if c == nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
		closeWrite(c)
		_, _ = io.Copy(io.Discard, c)
	}},
	{"ten pipelined requests, one answer read", func(t *testing.T, tg target) {
		c := tg.dial(t)
		if c == nil {
			return
		}
		defer c.Close()
		io.WriteString(c, strings.Repeat("GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n", 10))
		_, _ = http.ReadResponse(bufio.NewReader(c), nil)
	}},
	{"bad method, bad version, no Host, absolute URI", func(t *testing.T, tg target) {
		sendAndRead(t, tg, "G@T /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
		sendAndRead(t, tg, "GET /api/v1/ping HTTP/9.9\r\nHost: x\r\n\r\n")
		sendAndRead(t, tg, "GET /api/v1/ping HTTP/1.1\r\n\r\n")
		sendAndRead(t, tg, "GET http://elsewhere.example/api/v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	}},
	{"Expect: 100-continue, then nothing", func(t *testing.T, tg target) {
		if c := tg.dial(t); c != nil {
			io.WriteString(c, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
			time.Sleep(50 * time.Millisecond)
			c.Close()
		}
	}},
	{"slowloris, cut off by the read-header timeout", func(t *testing.T, tg target) {
		c := tg.dial(t)
		if c == nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nX-Slow: a")
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, _ = io.Copy(io.Discard, c) // returns when the server cuts it off
	}},
	{"leaves while the dependency is slow", func(t *testing.T, tg target) {
		if c := tg.dial(t); c != nil {
			io.WriteString(c, "GET /api/v1/items/7 HTTP/1.1\r\nHost: x\r\n\r\n")
			time.Sleep(30 * time.Millisecond)
			c.Close()
		}
	}},
}

// closeWrite half-closes c: close_notify and FIN on TLS, FIN on TCP.
func closeWrite(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		_ = tc.CloseWrite()
		return
	}
	_ = c.(*net.TCPConn).CloseWrite()
}

// clientHello is the first flight of a real TLS client.
func clientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	go tls.Client(a, &tls.Config{ServerName: "localhost", InsecureSkipVerify: true}).Handshake()
	buf := make([]byte, 4096)
	n, err := b.Read(buf)
	a.Close()
	b.Close()
	if err != nil || n < 100 {
		t.Fatalf("ClientHello: %d bytes, %v", n, err)
	}
	return buf[:n]
}

// tlsAbuses misbehave at the TLS layer, before any HTTP.
func tlsAbuses(hello []byte) []abuse {
	return []abuse{
		{"plain HTTP on the TLS port", func(t *testing.T, tg target) {
			if c, _ := tg.dialTCP(t); c != nil {
				defer c.Close()
				io.WriteString(c, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				_, _ = io.Copy(io.Discard, c)
			}
		}},
		{"half a ClientHello, then leave", func(t *testing.T, tg target) {
			if c, _ := tg.dialTCP(t); c != nil {
				c.Write(hello[:len(hello)/2])
				c.Close()
			}
		}},
		{"ClientHello, then silence until the handshake is cut off", func(t *testing.T, tg target) {
			if c, _ := tg.dialTCP(t); c != nil {
				defer c.Close()
				c.Write(hello)
				_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
				_, _ = io.Copy(io.Discard, c)
			}
		}},
		{"handshake, then leave", func(t *testing.T, tg target) {
			if c := tg.dial(t); c != nil {
				c.Close()
			}
		}},
		{"handshake, then reset", func(t *testing.T, tg target) {
			if c := tg.dial(t); c != nil {
				tcpOf(c).SetLinger(0)
				tcpOf(c).Close()
			}
		}},
		{"HTTP/2 preface, then garbage", func(t *testing.T, tg target) {
			if h := tg.dialH2(t); h != nil {
				defer h.c.Close()
				io.WriteString(h.c, "\x00\x00\x04\xff\xff\xff\xff\xff\xff\x01\x02\x03\x04") // a frame of unknown type and bad length
				_ = h.c.SetReadDeadline(time.Now().Add(2 * time.Second))
				_, _ = io.Copy(io.Discard, h.c)
			}
		}},
		{"HTTP/2 rapid reset: 100 streams opened and cancelled at once", func(t *testing.T, tg target) {
			h := tg.dialH2(t)
			if h == nil {
				return
			}
			defer h.c.Close()
			for i := range 100 {
				id := uint32(2*i + 1)
				if h.headers(id, true, ":method", "GET", ":path", "/api/v1/items/"+strconv.Itoa(i)) != nil ||
					h.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
					break
				}
			}
			_ = h.c.SetReadDeadline(time.Now().Add(time.Second))
			_, _ = io.Copy(io.Discard, h.c)
		}},
		{"HTTP/2 reset of a stream never opened", func(t *testing.T, tg target) {
			if h := tg.dialH2(t); h != nil {
				defer h.c.Close()
				h.fr.WriteRSTStream(1, http2.ErrCodeCancel) // a connection error: GOAWAY
				_ = h.c.SetReadDeadline(time.Now().Add(2 * time.Second))
				_, _ = io.Copy(io.Discard, h.c)
			}
		}},
		{"HTTP/2 request body announced, never sent, connection dropped", func(t *testing.T, tg target) {
			h := tg.dialH2(t)
			if h == nil {
				return
			}
			h.headers(1, false, ":method", "POST", ":path", "/api/v1/echo", "content-type", "application/json", "content-length", "100")
			time.Sleep(50 * time.Millisecond)
			h.c.Close()
		}},
	}
}

// h2conn is an HTTP/2 connection spoken frame by frame, past its preface
// and SETTINGS.
type h2conn struct {
	c  net.Conn
	fr *http2.Framer
}

// dialH2 shakes hands offering only h2 and sends the client preface; nil
// (and an error) if the server does not choose h2.
func (tg target) dialH2(t *testing.T) *h2conn {
	t.Helper()
	c, _ := tg.dialTCP(t)
	if c == nil {
		return nil
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", NextProtos: []string{"h2"}})
	if err := tc.Handshake(); err != nil || tc.ConnectionState().NegotiatedProtocol != "h2" {
		t.Errorf("h2 handshake: %v, protocol %q", err, tc.ConnectionState().NegotiatedProtocol)
		c.Close()
		return nil
	}
	io.WriteString(tc, http2.ClientPreface)
	h := &h2conn{c: tc, fr: http2.NewFramer(tc, tc)}
	h.fr.WriteSettings()
	return h
}

// headers opens stream id with the given header fields (name, value, ...)
// after :scheme and :authority.
func (h *h2conn) headers(id uint32, endStream bool, kv ...string) error {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	kv = append([]string{":scheme", "https", ":authority", "x"}, kv...)
	for i := 0; i+1 < len(kv); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: endStream, EndHeaders: true})
}

// Misbehaving clients, many at once, each kind many times: afterwards the
// service has no more goroutines, descriptors or connections than before,
// answered none of them with a 5xx, and still serves.
func TestMisbehavingClientsLeakNothing(t *testing.T) {
	const rounds = 8
	p, client, scheme := abuseBinary(t, nil)
	abuseAndSettle(t, p, client, scheme, abuses, rounds)
	// Each kind was answered as it should be: the abuse reached the paths
	// it was meant for.
	atLeast(t, p.admin, map[string]float64{
		`http_server_rejected_requests_total{code="400"}`: 3 * rounds, // garbage, bad method, no Host (half a request line is a client that left)
		`http_server_rejected_requests_total{code="408"}`: 2 * rounds, // slowloris, ClientHello (no line end: the read-header timeout)
		`http_server_rejected_requests_total{code="431"}`: rounds,
	})
}

// The same over TLS, with the handshake's and HTTP/2's own misbehaviours
// added (among them HTTP/2 rapid reset, CVE-2023-44487).
func TestMisbehavingTLSClientsLeakNothing(t *testing.T) {
	const rounds = 8
	cert, key := testkit.WriteSelfSignedCert(t)
	p, client, scheme := abuseBinary(t, map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key})
	abuseAndSettle(t, p, client, scheme, append(tlsAbuses(clientHello(t)), abuses...), rounds)
	atLeast(t, p.admin, map[string]float64{
		// half a ClientHello; a ClientHello and silence
		`http_server_tls_handshake_errors_total{reason="eof"}`:     rounds,
		`http_server_tls_handshake_errors_total{reason="timeout"}`: rounds,
		// the rapid resets reached the handlers (800 in a run here; net/http
		// may skip handlers of streams reset before they start)
		`http_server_requests_total{code="499",method="GET",route="/api/v1/items/:id"}`: 10 * rounds,
		// the resets of streams never opened
		`http_server_http2_errors_total{type="conn_PROTOCOL_ERROR_reset_idle_stream"}`: rounds,
	})
}

// abuseBinary starts the binary for the abuse tests (extra: more
// environment) and returns it with a client for its public listener.
func abuseBinary(t *testing.T, extra map[string]string) (*proc, *http.Client, string) {
	t.Helper()
	env := map[string]string{
		"HTTP_READ_HEADER_TIMEOUT": "300ms",
		"RATELIMIT_RATE":           "1000000",
		"RATELIMIT_BURST":          "1000000",
		"LOG_FLUSH_INTERVAL":       "10ms",
	}
	for k, v := range extra {
		env[k] = v
	}
	p := startBinary(t, env)
	scheme := "http"
	tr := &http.Transport{DisableKeepAlives: true}
	if extra["TLS_CERT_FILE"] != "" {
		scheme = "https"
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	return p, &http.Client{Transport: tr, Timeout: 5 * time.Second}, scheme
}

// abuseAndSettle sends rounds of every abuse, 32 at a time, and checks that
// the service then settles back to its goroutines, descriptors and
// connections from before, with no 5xx, and still answers.
func abuseAndSettle(t *testing.T, p *proc, client *http.Client, scheme string, kinds []abuse, rounds int) {
	t.Helper()
	tg := target{addr: p.public, tls: scheme == "https"}
	// The dependency answers after 200 ms, so that clients can leave while
	// it works; the breaker's timeout (1 s) is not reached.
	put(t, "http://"+p.admin+"/debug/faults", `{"latency":"200ms"}`)

	// Warm up every route once (the breaker starts its goroutines on its
	// first command), then wait for the service to settle.
	for _, u := range []string{"/api/v1/ping", "/api/v1/items/1", "/nope"} {
		resp, err := client.Get(scheme + "://" + p.public + u)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	waitFor(t, 5*time.Second, "no open connections before the abuse", func() bool { return openConnections(t, p.admin) == 0 })
	time.Sleep(300 * time.Millisecond)
	base := scrapeNoKeepAlive(t, p.admin, "go_goroutines", "process_open_fds")
	if base[0] <= 0 || base[1] <= 0 {
		t.Fatalf("baseline goroutines %v, fds %v", base[0], base[1])
	}

	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	start := time.Now()
	for range rounds {
		for _, a := range kinds {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				a.do(t, tg)
			}()
		}
	}
	wg.Wait()
	t.Logf("%d misbehaving clients of %d kinds in %s", rounds*len(kinds), len(kinds), time.Since(start).Round(time.Millisecond))

	select {
	case <-p.exited:
		t.Fatalf("the service exited: %v\n%s", p.err, p.logs)
	default:
	}
	put(t, "http://"+p.admin+"/debug/faults", `{"latency":"0s"}`)
	// A leak of one kind of connection would leave at least `rounds` of
	// goroutines and descriptors; the slack of 2 absorbs the ones that come
	// and go on their own (a timer's, a scrape's connection just closed),
	// which made a run under load miss the baseline by one.
	const slack = 2
	var got []float64
	settled := func() bool {
		if openConnections(t, p.admin) != 0 {
			return false
		}
		got = scrapeNoKeepAlive(t, p.admin, "go_goroutines", "process_open_fds")
		return got[0] <= base[0]+slack && got[1] <= base[1]+slack
	}
	deadline := time.Now().Add(10 * time.Second)
	for !settled() {
		if time.Now().After(deadline) {
			got = scrapeNoKeepAlive(t, p.admin, "go_goroutines", "process_open_fds")
			t.Fatalf("10 s after the abuse: %v open connections, goroutines %v (before %v), open fds %v (before %v)",
				openConnections(t, p.admin), got[0], base[0], got[1], base[1])
		}
		time.Sleep(100 * time.Millisecond)
	}

	// No 5xx for any of it, in the access log or the rejection log, except
	// net/http's own answers to protocol features the client asked for and
	// no server here supports: 501 (a transfer encoding) and 505 (an HTTP
	// version).
	var fivexx []string
	for _, l := range p.logs.lines() {
		if st, ok := l["status"].(float64); ok && st >= 500 && st != 501 && st != 505 {
			fivexx = append(fivexx, fmt.Sprint(l))
		}
	}
	if len(fivexx) > 0 {
		t.Errorf("%d lines with a 5xx status:\n%s", len(fivexx), strings.Join(fivexx, "\n"))
	}
	// The handlers' answers, the same on both listeners.
	atLeast(t, p.admin, map[string]float64{
		`http_server_requests_total{code="413",method="POST",route="/api/v1/echo"}`:     float64(2 * rounds),
		`http_server_requests_total{code="400",method="POST",route="/api/v1/echo"}`:     float64(rounds), // broken chunked body
		`http_server_requests_total{code="499",method="GET",route="/api/v1/items/:id"}`: float64(rounds),
		`http_server_truncated_bodies_total{route="/api/v1/echo"}`:                      float64(rounds),
	})
	if v := scrapeNoKeepAlive(t, p.admin, `http_server_panics_total{route="/api/v1/echo"}`); v[0] > 0 {
		t.Errorf("panics on /api/v1/echo: %v", v[0])
	}
	resp, err := client.Get(scheme + "://" + p.public + "/api/v1/ping")
	if err != nil {
		t.Fatalf("after the abuse: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "pong") {
		t.Fatalf("after the abuse: %d %s", resp.StatusCode, body)
	}
}

// atLeast checks that each series has reached its value.
func atLeast(t *testing.T, admin string, want map[string]float64) {
	t.Helper()
	for series, w := range want {
		if got := scrapeNoKeepAlive(t, admin, series)[0]; got < w {
			t.Errorf("%s = %v, want at least %v", series, got, w)
		}
	}
}
