package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
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

// abuse is one way a client misbehaves, on a connection of its own.
type abuse struct {
	name string
	do   func(t *testing.T, addr string)
}

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Errorf("dial: %v", err)
		return nil
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// sendAndRead writes raw bytes, reads whatever comes back until the server
// closes or 2 s pass, and returns it.
func sendAndRead(t *testing.T, addr, raw string) string {
	c := dialRaw(t, addr)
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
	{"connect and leave", func(t *testing.T, addr string) {
		if c := dialRaw(t, addr); c != nil {
			c.Close()
		}
	}},
	{"half a request line, then leave", func(t *testing.T, addr string) {
		if c := dialRaw(t, addr); c != nil {
			io.WriteString(c, "GET /api/v1/pi")
			c.Close()
		}
	}},
	{"TLS ClientHello on the plain port", func(t *testing.T, addr string) {
		sendAndRead(t, addr, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"+strings.Repeat("\x00", 64))
	}},
	{"binary garbage", func(t *testing.T, addr string) {
		sendAndRead(t, addr, "\x00\xff\xfe\r\n\r\n")
	}},
	{"headers over the limit", func(t *testing.T, addr string) {
		sendAndRead(t, addr, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 70<<10)+"\r\n\r\n")
	}},
	{"body cut short", func(t *testing.T, addr string) {
		if c := dialRaw(t, addr); c != nil {
			io.WriteString(c, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":")
			c.Close()
		}
	}},
	{"broken chunked body", func(t *testing.T, addr string) {
		sendAndRead(t, addr, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
	}},
	{"body over the limit, announced", func(t *testing.T, addr string) {
		sendAndRead(t, addr, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\nConnection: close\r\n\r\n{")
	}},
	{"body over the limit, chunked", func(t *testing.T, addr string) {
		c := dialRaw(t, addr)
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
	{"reset right after the request", func(t *testing.T, addr string) {
		if c := dialRaw(t, addr); c != nil {
			io.WriteString(c, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}},
	{"write side closed after the request", func(t *testing.T, addr string) {
		c := dialRaw(t, addr)
		if c == nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
		c.(*net.TCPConn).CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	}},
	{"ten pipelined requests, one answer read", func(t *testing.T, addr string) {
		c := dialRaw(t, addr)
		if c == nil {
			return
		}
		defer c.Close()
		io.WriteString(c, strings.Repeat("GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n", 10))
		_, _ = http.ReadResponse(bufio.NewReader(c), nil)
	}},
	{"bad method, bad version, no Host, absolute URI", func(t *testing.T, addr string) {
		sendAndRead(t, addr, "G@T /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
		sendAndRead(t, addr, "GET /api/v1/ping HTTP/9.9\r\nHost: x\r\n\r\n")
		sendAndRead(t, addr, "GET /api/v1/ping HTTP/1.1\r\n\r\n")
		sendAndRead(t, addr, "GET http://elsewhere.example/api/v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	}},
	{"Expect: 100-continue, then nothing", func(t *testing.T, addr string) {
		if c := dialRaw(t, addr); c != nil {
			io.WriteString(c, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
			time.Sleep(50 * time.Millisecond)
			c.Close()
		}
	}},
	{"slowloris, cut off by the read-header timeout", func(t *testing.T, addr string) {
		c := dialRaw(t, addr)
		if c == nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nX-Slow: a")
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, _ = io.Copy(io.Discard, c) // returns when the server cuts it off
	}},
	{"leaves while the dependency is slow", func(t *testing.T, addr string) {
		if c := dialRaw(t, addr); c != nil {
			io.WriteString(c, "GET /api/v1/items/7 HTTP/1.1\r\nHost: x\r\n\r\n")
			time.Sleep(30 * time.Millisecond)
			c.Close()
		}
	}},
}

// Misbehaving clients, many at once, each kind many times: afterwards the
// service has no more goroutines, descriptors or connections than before,
// answered none of them with a 5xx, and still serves.
func TestMisbehavingClientsLeakNothing(t *testing.T) {
	p := startBinary(t, map[string]string{
		"HTTP_READ_HEADER_TIMEOUT": "300ms",
		"RATELIMIT_RATE":           "1000000",
		"RATELIMIT_BURST":          "1000000",
		"LOG_FLUSH_INTERVAL":       "10ms",
	})
	// The dependency answers after 200 ms, so that clients can leave while
	// it works; the breaker's timeout (1 s) is not reached.
	put(t, "http://"+p.admin+"/debug/faults", `{"latency":"200ms"}`)

	// Warm up every route once (the breaker starts its goroutines on its
	// first command), then wait for the service to settle.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	for _, u := range []string{"/api/v1/ping", "/api/v1/items/1", "/nope"} {
		resp, err := client.Get("http://" + p.public + u)
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

	const rounds = 8
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	start := time.Now()
	for range rounds {
		for _, a := range abuses {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				a.do(t, p.public)
			}()
		}
	}
	wg.Wait()
	t.Logf("%d misbehaving clients of %d kinds in %s", rounds*len(abuses), len(abuses), time.Since(start).Round(time.Millisecond))

	select {
	case <-p.exited:
		t.Fatalf("the service exited: %v\n%s", p.err, p.logs)
	default:
	}
	put(t, "http://"+p.admin+"/debug/faults", `{"latency":"0s"}`)
	var got []float64
	settled := func() bool {
		if openConnections(t, p.admin) != 0 {
			return false
		}
		got = scrapeNoKeepAlive(t, p.admin, "go_goroutines", "process_open_fds")
		return got[0] <= base[0] && got[1] <= base[1]
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
	if v := scrapeNoKeepAlive(t, p.admin, `http_server_panics_total{route="/api/v1/echo"}`); v[0] > 0 {
		t.Errorf("panics on /api/v1/echo: %v", v[0])
	}
	// Each kind was answered as it should be: the abuse reached the paths
	// it was meant for.
	for series, want := range map[string]float64{
		`http_server_rejected_requests_total{code="400"}`:                               4 * rounds, // ClientHello, garbage, bad method, no Host
		`http_server_rejected_requests_total{code="408"}`:                               rounds,     // slowloris
		`http_server_rejected_requests_total{code="431"}`:                               rounds,
		`http_server_requests_total{code="413",method="POST",route="/api/v1/echo"}`:     2 * rounds,
		`http_server_requests_total{code="400",method="POST",route="/api/v1/echo"}`:     rounds, // broken chunked body
		`http_server_requests_total{code="499",method="GET",route="/api/v1/items/:id"}`: rounds,
		`http_server_truncated_bodies_total{route="/api/v1/echo"}`:                      rounds,
	} {
		if got := scrapeNoKeepAlive(t, p.admin, series)[0]; got < want {
			t.Errorf("%s = %v, want at least %v", series, got, want)
		}
	}
	code, body := get(t, "http://"+p.public+"/api/v1/ping")
	if code != 200 || !strings.Contains(body, "pong") {
		t.Fatalf("after the abuse: %d %s", code, body)
	}
}
