package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"golang.org/x/net/http2"
	"golang.org/x/time/rate"

	"github.com/hardenedgo/ginservice/internal/observability"
	"github.com/hardenedgo/ginservice/internal/testkit"
	"github.com/hardenedgo/ginservice/internal/testkit/otlptest"
	"github.com/hardenedgo/ginservice/internal/testkit/redistest"
)

// End-to-end observability checks through run, as an operator sees them:
// spans at an OTLP endpoint, the admin scrape, the log.

func getWith(t *testing.T, url string, headers map[string]string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestRunExportsTraces: with OTEL_EXPORTER_OTLP_ENDPOINT set, run exports
// server spans named by route template that continue both a W3C traceparent
// and a Jaeger uber-trace-id, and never spans for probes.
func TestRunExportsTraces(t *testing.T) {
	sink := otlptest.Start(t)
	r := startRun(t, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": sink.URL,
		"OTEL_BSP_SCHEDULE_DELAY":     "100",
	})
	const w3c, w3cParent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	const jaeger, jaegerParent = "a3ce929d0e0e4736", "53995c3f42cd8ad8"
	const probe = "33333333333333333333333333333333"
	if c := getWith(t, "http://"+r.public+"/api/v1/ping", map[string]string{"traceparent": "00-" + w3c + "-" + w3cParent + "-01"}); c != 200 {
		t.Fatalf("ping = %d", c)
	}
	if c := getWith(t, "http://"+r.public+"/api/v1/items/5", map[string]string{"uber-trace-id": jaeger + ":" + jaegerParent + ":0:1"}); c != 200 {
		t.Fatalf("items = %d", c)
	}
	getWith(t, "http://"+r.public+"/readyz", map[string]string{"traceparent": "00-" + probe + "-4444444444444444-01"})
	padded := "0000000000000000" + jaeger
	spans := sink.WaitTraces(t, w3c, padded)
	var gotPing, gotItems bool
	for _, sp := range spans {
		tr, parent := hex.EncodeToString(sp.GetTraceId()), hex.EncodeToString(sp.GetParentSpanId())
		switch {
		case tr == w3c && sp.GetName() == "GET /api/v1/ping" && parent == w3cParent:
			gotPing = true
		case tr == padded && sp.GetName() == "GET /api/v1/items/:id" && parent == jaegerParent:
			gotItems = true
		case tr == probe:
			t.Errorf("probe traced: %q", sp.GetName())
		}
	}
	if !gotPing || !gotItems {
		for _, sp := range spans {
			t.Logf("span %q trace %x parent %x", sp.GetName(), sp.GetTraceId(), sp.GetParentSpanId())
		}
		t.Fatalf("continued traceparent: %v, continued uber-trace-id: %v", gotPing, gotItems)
	}
	var logged bool
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && !logged; time.Sleep(50 * time.Millisecond) {
		for _, l := range r.logs.lines() {
			logged = logged || (l["msg"] == "request" && l["trace_id"] == w3c && l["span_id"] != "" && l["span_id"] != w3cParent)
		}
	}
	if !logged {
		t.Errorf("the access line of the traced ping lacks its trace_id/span_id")
	}
}

// TestRunRedisSpanPerRequest: concurrent requests share the limiter's
// Redis pipelines, but each exported request span has its own Redis child
// span, in its own trace.
func TestRunRedisSpanPerRequest(t *testing.T) {
	rs := redistest.Start(t)
	sink := otlptest.Start(t)
	r := startRun(t, map[string]string{
		"REDIS_URL":       rs.URL(),
		"RATELIMIT_RATE":  "1000000",
		"RATELIMIT_BURST": "1000000",
		// Every decision on Redis: a busy machine (the race detector,
		// other test packages) can take the default 20 ms budget, and
		// the fallback then decides without Redis, so without a span.
		"RATELIMIT_REDIS_TIMEOUT":     "5s",
		"OTEL_EXPORTER_OTLP_ENDPOINT": sink.URL,
		"OTEL_TRACES_SAMPLER":         "always_on",
		"OTEL_BSP_SCHEDULE_DELAY":     "100",
	})
	waitFor(t, 5*time.Second, "limiter on Redis", func() bool { return strings.Contains(readyzStatus(t, r.public), `"redis":"ok"`) })
	const workers, each = 16, 20
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if c, _ := get(t, "http://"+r.public+"/api/v1/ping"); c != 200 {
					t.Errorf("ping = %d", c)
				}
			}
		}()
	}
	wg.Wait()
	var pings, redis []*tracepb.Span
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		pings, redis = nil, nil
		for _, sp := range sink.Spans() {
			switch sp.GetName() {
			case "GET /api/v1/ping":
				pings = append(pings, sp)
			case "EVALSHA":
				redis = append(redis, sp)
			}
		}
		if len(pings) == workers*each && len(redis) >= workers*each {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d request spans and %d Redis spans exported in 10 s, want %d of each\n%s", len(pings), len(redis), workers*each, r.logs)
		}
	}
	under := map[string]int{}
	shared := 0
	for _, sp := range redis {
		under[hex.EncodeToString(sp.GetTraceId())+hex.EncodeToString(sp.GetParentSpanId())]++
		for _, kv := range sp.GetAttributes() {
			if kv.GetKey() == "db.operation.batch.size" && kv.GetValue().GetIntValue() > 1 {
				shared++
			}
		}
	}
	lacking := 0
	for _, sp := range pings {
		if under[hex.EncodeToString(sp.GetTraceId())+hex.EncodeToString(sp.GetSpanId())] != 1 {
			lacking++
		}
	}
	t.Logf("%d requests, %d Redis spans, %d of them from a shared pipeline", len(pings), len(redis), shared)
	if lacking > 0 || len(redis) != len(pings) {
		t.Errorf("%d of %d request spans lack their own Redis span (%d Redis spans in all)", lacking, len(pings), len(redis))
	}
}

const spansNotExported = "tracing: spans not exported"

// TestRunCountsSpanExport: the tracing_spans_* counters tell an operator
// whether spans reach the collector: all exported with a healthy one, all
// failed with one that refuses connections, and dropped (queued minus
// exported minus failed) when one hangs and the exporter's queue fills.
func TestRunCountsSpanExport(t *testing.T) {
	type counts struct{ queued, exported, failed float64 }
	read := func(admin string) counts {
		return counts{
			metric(t, admin, "tracing_spans_queued_total"),
			metric(t, admin, "tracing_spans_exported_total"),
			metric(t, admin, "tracing_spans_export_failed_total"),
		}
	}
	pings := func(r *running, n int) {
		for range n {
			if c, _ := get(t, "http://"+r.public+"/api/v1/ping"); c != 200 {
				t.Fatalf("ping = %d", c)
			}
		}
	}
	env := func(endpoint string, extra ...string) map[string]string {
		m := map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
			"OTEL_TRACES_SAMPLER":         "always_on",
			"OTEL_BSP_SCHEDULE_DELAY":     "50",
			"OTEL_BSP_EXPORT_TIMEOUT":     "500",
		}
		for i := 0; i+1 < len(extra); i += 2 {
			m[extra[i]] = extra[i+1]
		}
		return m
	}

	t.Run("healthy collector", func(t *testing.T) {
		sink := otlptest.Start(t)
		r := startRun(t, env(sink.URL))
		if c := read(r.admin); c != (counts{}) {
			t.Fatalf("before any request: %+v, want zeros", c)
		}
		pings(r, 20)
		waitFor(t, 10*time.Second, "20 spans exported", func() bool { return read(r.admin) == counts{20, 20, 0} })
		if got := len(sink.Spans()); got != 20 {
			t.Errorf("collector received %d spans, the counter says 20", got)
		}
	})

	t.Run("collector refusing connections", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now: connection refused
		r := startRun(t, env("http://"+addr))
		pings(r, 10)
		waitFor(t, 10*time.Second, "10 spans failed", func() bool { return read(r.admin) == counts{10, 0, 10} })
		// The exit says so, whatever the rate limit of the SDK's error
		// lines held back: the count is never scraped after it.
		r.stop(t)
		want := "10 of the 10 sampled spans since start never reached the collector: 10 in failed exports, 0 dropped"
		if l := r.logs.last(spansNotExported, ""); l == nil || l["level"] != "WARN" || !strings.Contains(fmt.Sprint(l["error"]), want) {
			t.Errorf("exit line %v, want a WARN saying %q", l, want)
		}
	})

	t.Run("hanging collector, queue full", func(t *testing.T) {
		// Accepts connections and never answers: every export waits its
		// OTEL_BSP_EXPORT_TIMEOUT while the 4-span queue overflows.
		r := startRun(t, env("http://"+hangingListener(t),
			"OTEL_BSP_MAX_QUEUE_SIZE", "4", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2", "OTEL_BSP_EXPORT_TIMEOUT", "2000"))
		pings(r, 50)
		// A span ends after its response is written: wait for the last.
		waitFor(t, 5*time.Second, "50 spans queued", func() bool { return read(r.admin).queued == 50 })
		c := read(r.admin)
		if c.queued != 50 || c.exported != 0 {
			t.Fatalf("counters %+v: want 50 queued, 0 exported", c)
		}
		// At most the queue (4), the batch being filled (2) and the batch
		// being exported (2) are neither failed nor dropped.
		if dropped := c.queued - c.exported - c.failed; dropped < 50-8 {
			t.Errorf("queued - exported - failed = %v, want >= 42 dropped (counters %+v)", dropped, c)
		}
		// The log says so while it happens, not only the counters: one
		// line, the rest held back and counted.
		if l := r.logs.last("tracing: spans dropped", ""); l == nil || l["level"] != "WARN" {
			t.Errorf("no WARN line while spans were dropped:\n%s", r.logs)
		}
	})
}

// TestRunScrapePassesPromtool: the admin scrape of a running service
// carries the connection, TLS and kernel families and passes promtool.
func TestRunScrapePassesPromtool(t *testing.T) {
	r := startRun(t, nil)
	get(t, "http://"+r.public+"/api/v1/ping")
	c, err := net.Dial("tcp", r.public)
	if err != nil {
		t.Fatal(err)
	}
	c.Close() // a connection closed by its peer before any request
	_, body := get(t, "http://"+r.admin+"/metrics")
	for _, want := range []string{
		`http_server_connections{state="idle"}`,
		`http_server_connection_transitions_total{state="closed"}`,
		`http_server_connections_closed_total{reason="peer_closed",state="new"}`,
		`http_server_tls_handshake_errors_total{reason="eof"}`,
		`kernel_tcp_listen_overflows_total`,
		`kernel_tcp_sockets{state="tw"}`,
		`kernel_sysctl{name="net.core.somaxconn"}`,
		`service_build_info{`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s (is it wired in run?)", want)
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not installed (Debian package prometheus)")
		}
		t.Skip("promtool not installed")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestRunTLSHandshakeErrors: with TLS_CERT_FILE/TLS_KEY_FILE, a client that
// hangs up mid-handshake is counted as reason eof and logged as one
// structured line, not a raw net/http line.
func TestRunTLSHandshakeErrors(t *testing.T) {
	cert, key := testkit.WriteSelfSignedCert(t)
	r := startRun(t, map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key})

	// Half of a real ClientHello, then FIN.
	a, b := net.Pipe()
	go tls.Client(a, &tls.Config{ServerName: "x", InsecureSkipVerify: true}).Handshake()
	buf := make([]byte, 4096)
	n, err := b.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	c, err := net.Dial("tcp", r.public)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(buf[:n/2])
	c.Close()

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Get("https://" + r.public + "/api/v1/ping")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The certificate's expiry, for the ApiTLSCertificateExpiringSoon alert.
	if got, want := metric(t, r.admin, "http_server_tls_certificate_expiry_timestamp_seconds"), float64(resp.TLS.PeerCertificates[0].NotAfter.Unix()); got != want {
		t.Errorf("certificate expiry gauge %v, want %v (the served certificate's NotAfter)", got, want)
	}

	deadline := time.Now().Add(5 * time.Second)
	for {
		_, body := get(t, "http://"+r.admin+"/metrics")
		if strings.Contains(body, `http_server_tls_handshake_errors_total{reason="eof"} 1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handshake EOF not counted:\n%s", grepLines(body, "tls_handshake"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Log lines may sit in a buffer for a moment.
	var structured, raw bool
	for deadline = time.Now().Add(5 * time.Second); time.Now().Before(deadline) && !structured; time.Sleep(50 * time.Millisecond) {
		for _, l := range r.logs.lines() {
			structured = structured || (l["msg"] == "tls handshake error" && l["reason"] == "eof")
			m, _ := l["msg"].(string)
			raw = raw || strings.HasPrefix(m, "http: TLS handshake error")
		}
	}
	if !structured || raw {
		t.Fatalf("structured line: %v, raw net/http line: %v\n%s", structured, raw, r.logs)
	}
}

// TestRunTLSRejectedRequest: on the TLS listener a request net/http answers
// itself (headers over HTTP_MAX_HEADER_BYTES) cannot get the problem
// response, but it is counted as rejected{code="unknown"} and logged; a
// served HTTPS request is not.
func TestRunTLSRejectedRequest(t *testing.T) {
	cert, key := testkit.WriteSelfSignedCert(t)
	r := startRun(t, map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key})
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Get("https://" + r.public + "/api/v1/ping")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	c, err := tls.Dial("tcp", r.public, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	go io.WriteString(c, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 70<<10)+"\r\n\r\n")
	resp, err = http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", resp.StatusCode)
	}

	waitFor(t, 5*time.Second, "the TLS rejection counted once", func() bool {
		return metric(t, r.admin, `http_server_rejected_requests_total{code="unknown"}`) == 1
	})
	waitFor(t, 5*time.Second, "a 'request rejected' line", func() bool {
		for _, l := range r.logs.lines() {
			if l["msg"] == "request rejected" {
				return true
			}
		}
		return false
	})
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestRunTLSHTTP2: on the TLS listener HTTP/2 serves concurrent requests on
// one connection; the per-connection telemetry stays out of their way (the
// race detector watches the access middleware and the connection hooks).
func TestRunTLSHTTP2(t *testing.T) {
	cert, key := testkit.WriteSelfSignedCert(t)
	r := startRun(t, map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key, "RATELIMIT_BURST": "1000"})
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := hc.Get("https://" + r.public + "/api/v1/items/" + strconv.Itoa(i))
			if err != nil {
				errs <- err
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
				errs <- fmt.Errorf("%s %d", resp.Proto, resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The client dialed connections in parallel before it knew the server
	// speaks HTTP/2 and keeps the unused ones: closing them keeps the
	// shutdown at the end of the test short (it once took SHUTDOWN_TIMEOUT
	// with them open).
	hc.CloseIdleConnections()
}

// TestRunShutdownReachesLateHTTP2Connections: a TLS connection accepted
// before the drain began that becomes an HTTP/2 connection after it began,
// and carries no request, still gets told to go away (GOAWAY), so the drain
// ends in about a second instead of waiting SHUTDOWN_TIMEOUT for it. (One
// that serves a request goes away after it by itself.) Clients that dial
// several connections at once and keep the spare ones idle do this.
func TestRunShutdownReachesLateHTTP2Connections(t *testing.T) {
	cert, key := testkit.WriteSelfSignedCert(t)
	r := startRun(t, map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key, "SHUTDOWN_TIMEOUT": "6s"})
	raw, err := net.Dial("tcp", r.public) // accepted; its TLS handshake waits for us
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	r.cancel() // the drain starts: the listener closes, HTTP/2 connections get GOAWAY
	time.Sleep(300 * time.Millisecond)

	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	// The client connection preface and an empty SETTINGS frame (RFC 9113
	// section 3.4), then nothing: an idle HTTP/2 connection.
	if _, err := io.WriteString(tc, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil {
		t.Fatal(err)
	}
	goAway := make(chan bool, 1)
	go func() {
		// Read frames until the server closes the connection; note GOAWAY.
		seen := false
		var hdr [9]byte
		for {
			if _, err := io.ReadFull(tc, hdr[:]); err != nil {
				goAway <- seen
				return
			}
			seen = seen || hdr[3] == 0x7
			n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
			if _, err := io.CopyN(io.Discard, tc, int64(n)); err != nil {
				goAway <- seen
				return
			}
		}
	}()

	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		if d := time.Since(start); d > 4*time.Second {
			t.Errorf("drain took %s", d)
		}
		r.done <- nil // for startRun's cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return")
	}
	select {
	case seen := <-goAway:
		if !seen {
			t.Error("the connection was closed without a GOAWAY")
		}
	case <-time.After(5 * time.Second):
		t.Error("the late HTTP/2 connection is still open after the drain")
	}
}

// A collector that takes connections and never answers (overloaded, or a
// half-dead proxy in front of it) costs the shutdown its 5 s flush budget
// and the spans, logged, but the shutdown stays clean: run returns nil and
// the process exits 0.
func TestShutdownWithHungCollectorIsClean(t *testing.T) {
	r := startRun(t, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + hangingListener(t),
		"OTEL_TRACES_SAMPLER":         "always_on",
		"OTEL_BSP_SCHEDULE_DELAY":     "600000", // the spans wait for the shutdown's flush
	})
	if code, _ := get(t, "http://"+r.public+"/api/v1/ping"); code != 200 {
		t.Fatalf("ping = %d", code)
	}
	if err := r.stop(t); err != nil {
		t.Errorf("run = %v after a shutdown whose only trouble was the collector, want nil (exit 0)", err)
	}
	if l := r.logs.last(spansNotExported, ""); l == nil || l["level"] != "WARN" || !strings.Contains(fmt.Sprint(l["error"]), "1 of the 1 sampled spans since start never reached the collector") {
		t.Errorf("no warning that the span was not exported: %v\n%s", l, r.logs)
	}
}

// A start-up that fails after tracing is set up (here the admin port is
// taken) stops the span exporter's goroutines: run leaves nothing behind.
func TestFailedStartStopsTheExporter(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	env := baseEnv(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
		"ADMIN_ADDR":                  busy.Addr().String(),
	})
	if err := run(t.Context(), []string{"api"}, envFunc(env), io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "ADMIN_ADDR") {
		t.Fatalf("run = %v, want the ADMIN_ADDR error", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "batchSpanProcessor).processQueue") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the span processor still runs after run returned")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hangingListener listens on loopback, accepts connections and never reads
// or answers (a collector that hangs, a half-dead proxy in front of it);
// it returns its address. Everything is closed when the test ends.
func hangingListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestShutdownLogsEveryClosedConnection: the connections SIGTERM's drain
// closes end after http.Server.Shutdown has returned (net/http runs their
// close hooks on their own goroutines); the process must wait for them, or
// their "connection closed" lines are lost at exit. Over the rate limit,
// the count of the lines held back is written instead: none unaccounted.
func TestShutdownLogsEveryClosedConnection(t *testing.T) {
	t.Run("tls_handshakes", testShutdownCountsSuppressedHandshakeLines)
	for _, n := range []int{4, 25} { // within the burst, and over it
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			p := startBinary(t, map[string]string{"LOG_LEVEL": "debug", "SHUTDOWN_DELAY": "0s"})
			conns := make([]net.Conn, n)
			for i := range conns {
				c := dialPublic(t, p.public)
				if _, err := io.WriteString(c, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("connection %d: %v %v", i, resp, err)
				}
				resp.Body.Close()
				conns[i] = c // kept alive, idle
			}
			sigterm(t, p)
			if p.err != nil {
				t.Fatalf("exit: %v\n%s", p.err, p.logs)
			}
			logged, suppressed := 0, 0
			for _, l := range p.logs.lines() {
				if l["msg"] != "connection closed" {
					continue
				}
				if s, ok := l["suppressed"].(float64); ok {
					suppressed += int(s)
				}
				if l["state"] == "idle" && l["reason"] == "server" {
					logged++
				}
			}
			if logged+suppressed != n || logged == 0 {
				t.Fatalf("%d idle connections closed by the drain: %d close lines, %d more counted as suppressed\n%s", n, logged, suppressed, p.logs)
			}
		})
	}
}

// TestHTTP2WriteTimeoutIsNotAClientAbort: on HTTP/2 the server's write
// timeout resets the stream and cancels the request's context, as a client
// that leaves does. A body that arrives after HTTP_WRITE_TIMEOUT gets no
// answer (the client sees a stream error); its access line must say the
// server cut it, not 499, and it is no client abort. A client that does
// leave, on the same server, still is one.
func TestHTTP2WriteTimeoutIsNotAClientAbort(t *testing.T) {
	cert, key := testkit.WriteSelfSignedCert(t)
	r := startRun(t, map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key,
		"HTTP_READ_TIMEOUT": "5s", "HTTP_WRITE_TIMEOUT": "1s", "BREAKER_TIMEOUT": "200ms"})
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	post := func(ctx context.Context, id string, pause time.Duration) (*http.Response, error) {
		pr, pw := io.Pipe()
		go func() {
			_, _ = io.WriteString(pw, "{")
			select {
			case <-time.After(pause):
				_, _ = io.WriteString(pw, "}")
				pw.Close()
			case <-ctx.Done():
				pw.CloseWithError(ctx.Err())
			}
		}()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+r.public+"/api/v1/echo", pr)
		req.ContentLength = 2
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Request-ID", id)
		return hc.Do(req)
	}
	// In time: answered.
	resp, err := post(context.Background(), "h2-in-time", 100*time.Millisecond)
	if err != nil || resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK {
		t.Fatalf("a body within the write timeout: %v %v", resp, err)
	}
	resp.Body.Close()
	// After the write deadline: the server resets the stream.
	if resp, err := post(context.Background(), "h2-write-timeout", 1600*time.Millisecond); err == nil {
		resp.Body.Close()
		t.Fatalf("a response past the write timeout reached the client: %d", resp.StatusCode)
	}
	// A client that leaves while its body is stalled.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if resp, err := post(ctx, "h2-client-left", time.Hour); err == nil {
		resp.Body.Close()
		t.Fatal("the client's timeout did not end its request")
	}
	find := func(id string) map[string]any { return r.logs.last("request", id) }
	waitFor(t, 5*time.Second, "the access lines", func() bool {
		return find("h2-write-timeout") != nil && find("h2-client-left") != nil
	})
	if l := find("h2-write-timeout"); l["status"] == float64(499) || l["level"] != "WARN" ||
		!strings.HasPrefix(fmt.Sprint(l["error"]), "write_timeout") {
		t.Errorf("access line of the stream the write timeout reset: %v", l)
	}
	if l := find("h2-client-left"); l["status"] != float64(499) || l["error"] != nil {
		t.Errorf("access line of the client that left: %v", l)
	}
	if l := find("h2-in-time"); l["status"] != float64(200) || l["error"] != nil {
		t.Errorf("access line of the answered request: %v", l)
	}
	if n := metric(t, r.admin, `http_server_client_aborts_total{route="/api/v1/echo"}`); n != 1 {
		t.Errorf("client aborts = %v, want 1 (the client that left, not the write timeout)", n)
	}
	// The client that left did so in the middle of its body (a stream
	// reset): a truncated body, as on HTTP/1.
	if n := metric(t, r.admin, `http_server_truncated_bodies_total{route="/api/v1/echo"}`); n != 1 {
		t.Errorf("truncated bodies = %v, want 1 (the upload the client reset)", n)
	}
}

// testShutdownCountsSuppressedHandshakeLines: a burst of failed TLS
// handshakes, over the log's rate limit, then SIGTERM: the lines written
// and the count of those held back add up to the handshakes counted.
func testShutdownCountsSuppressedHandshakeLines(t *testing.T) {
	cert, key := testkit.WriteSelfSignedCert(t)
	p := startBinary(t, map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key, "SHUTDOWN_DELAY": "0s"})
	const n = 30
	hello := clientHello(t)
	for range n {
		c, err := net.Dial("tcp", p.public)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(hello[:len(hello)/2]) // half a ClientHello, then FIN
		c.Close()
	}
	waitFor(t, 5*time.Second, "the handshake errors counted", func() bool {
		return metric(t, p.admin, `http_server_tls_handshake_errors_total{reason="eof"}`) == n
	})
	sigterm(t, p)
	logged, suppressed := 0, 0
	for _, l := range p.logs.lines() {
		if l["msg"] != "tls handshake error" {
			continue
		}
		if s, ok := l["suppressed"].(float64); ok {
			suppressed += int(s)
		}
		if l["reason"] == "eof" && l["remote_addr"] != nil { // the exit's count line has none
			logged++
		}
	}
	if logged+suppressed != n || suppressed == 0 {
		t.Fatalf("%d failed handshakes: %d lines, %d more counted as suppressed\n%s", n, logged, suppressed, p.logs)
	}
}

// TestForcedShutdownIsNotAClientAbort: a request still in flight when
// SHUTDOWN_TIMEOUT runs out has its connection closed by the server. The
// handler then sees its body break and its context cancelled, as if the
// client had left; the access line must say the server cut it (not 499,
// not a truncated body) and the close line names the request, at INFO.
func TestForcedShutdownIsNotAClientAbort(t *testing.T) {
	sink := otlptest.Start(t)
	p := startBinary(t, map[string]string{"SHUTDOWN_DELAY": "0s", "SHUTDOWN_TIMEOUT": "1s", "HTTP_READ_TIMEOUT": "30s", "HTTP_WRITE_TIMEOUT": "30s",
		"OTEL_EXPORTER_OTLP_ENDPOINT": sink.URL, "OTEL_TRACES_SAMPLER": "always_on"})
	c := dialPublic(t, p.public)
	// An upload that is still coming when the drain's time is up.
	fmt.Fprint(c, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nX-Request-ID: cut-by-shutdown\r\n\r\n{\"a\":")
	waitFor(t, 10*time.Second, "the handler reading the body", func() bool {
		return metric(t, p.admin, "http_server_requests_in_flight") == 1
	})
	sigterm(t, p)
	access, closed := p.logs.last("request", "cut-by-shutdown"), p.logs.last("connection closed", "cut-by-shutdown")
	if access == nil || access["status"] == float64(499) || access["level"] != "WARN" || !strings.HasPrefix(fmt.Sprint(access["error"]), "server_closed") {
		t.Errorf("access line of the request the forced close cut: %v\n%s", access, p.logs)
	}
	checkServerClosedSpan(t, sink, access)
	if closed == nil || closed["reason"] != "shutdown_timeout" || closed["state"] != "active" || closed["level"] != "INFO" {
		t.Errorf("close line of the connection the forced close cut: %v", closed)
	}
	summary := p.logs.last("shutdown: requests in flight cut", "")
	if summary == nil || summary["connections"] != float64(1) || summary["level"] != "WARN" {
		t.Errorf("the shutdown's summary of the requests it cut: %v", summary)
	}
}

// TestContinueThenClientLeaves: after net/http's "100 Continue" a client
// that sends part of its body and leaves is a client that left in the
// middle of its request (the 100 is not the response): its close line is
// state active, at INFO, with the request's ID, as without Expect; on TLS
// too.
func TestContinueThenClientLeaves(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", useTLS), func(t *testing.T) {
			env := map[string]string{}
			if useTLS {
				cert, key := testkit.WriteSelfSignedCert(t)
				env = map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key}
			}
			r := startRun(t, env)
			var c net.Conn
			var err error
			if useTLS {
				c, err = tls.Dial("tcp", r.public, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
			} else {
				c, err = net.Dial("tcp", r.public)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			id := fmt.Sprintf("continue-then-gone-%v", useTLS)
			fmt.Fprintf(c, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\nX-Request-ID: %s\r\n\r\n", id)
			br := bufio.NewReader(c)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, err := br.ReadString('\n')
			if err != nil || !strings.Contains(line, "100 Continue") {
				t.Fatalf("no 100 Continue: %q %v", line, err)
			}
			fmt.Fprint(c, `{"a":`)
			time.Sleep(100 * time.Millisecond)
			c.Close()
			var closed map[string]any
			waitFor(t, 5*time.Second, "the close line", func() bool {
				closed = r.logs.last("connection closed", id)
				return closed != nil
			})
			if closed["reason"] != "peer_closed" || closed["state"] != "active" || closed["level"] != "INFO" {
				t.Errorf("close line: %v", closed)
			}
		})
	}
}

// TestHTTP2IdleTimeoutIsCountedAsSuch: HTTP/2 has no read deadline between
// requests; its server closes a connection idle for HTTP_IDLE_TIMEOUT
// itself. That close is the idle timeout, as for HTTP/1, not "server" (the
// EOF diagnosis and the keep-alive dashboards read idle_timeout).
func TestHTTP2IdleTimeoutIsCountedAsSuch(t *testing.T) {
	cert, key := testkit.WriteSelfSignedCert(t)
	r := startRun(t, map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key, "HTTP_IDLE_TIMEOUT": "1s", "LOG_LEVEL": "debug"})
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://" + r.public + "/api/v1/ping")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("not HTTP/2: %s", resp.Proto)
	}
	series := `http_server_connections_closed_total{reason="idle_timeout",state="idle"}`
	waitFor(t, 10*time.Second, "the idle HTTP/2 connection closed as idle_timeout", func() bool {
		return metric(t, r.admin, series) == 1
	})
	if n := sumMetric(t, r.admin, "http_server_connections_closed_total", `reason="server"`); n > 0 {
		t.Errorf("%v connections closed with reason server", n)
	}
	// Its close line counts the one request it carried (the HTTP/2
	// server's pass through active at its start is none).
	waitFor(t, 5*time.Second, "the close line", func() bool {
		for _, l := range r.logs.lines() {
			if l["msg"] == "connection closed" && l["reason"] == "idle_timeout" {
				if l["requests"] != float64(1) {
					t.Fatalf("close line of an HTTP/2 connection with one request: %v", l)
				}
				return true
			}
		}
		return false
	})
}

// TestForcedShutdownIsNotAClientAbortHTTP2: the same over HTTP/2, where
// the request has a stream of its own on a connection the forced close
// ends.
func TestForcedShutdownIsNotAClientAbortHTTP2(t *testing.T) {
	cert, key := testkit.WriteSelfSignedCert(t)
	sink := otlptest.Start(t)
	p := startBinary(t, map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key,
		"SHUTDOWN_DELAY": "0s", "SHUTDOWN_TIMEOUT": "1s", "HTTP_READ_TIMEOUT": "30s", "HTTP_WRITE_TIMEOUT": "30s",
		"OTEL_EXPORTER_OTLP_ENDPOINT": sink.URL, "OTEL_TRACES_SAMPLER": "always_on"})
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = io.WriteString(pw, `{"a":`) }() // then nothing more
	req, _ := http.NewRequest(http.MethodPost, "https://"+p.public+"/api/v1/echo", pr)
	req.ContentLength = 100
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-ID", "h2-cut-by-shutdown")
	done := make(chan error, 1)
	go func() {
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	waitFor(t, 10*time.Second, "the handler reading the body", func() bool {
		return metric(t, p.admin, "http_server_requests_in_flight") == 1
	})
	sigterm(t, p)
	<-done
	access := p.logs.last("request", "h2-cut-by-shutdown")
	if access == nil || access["status"] == float64(499) || access["level"] != "WARN" || !strings.HasPrefix(fmt.Sprint(access["error"]), "server_closed") {
		t.Errorf("access line of the HTTP/2 request the forced close cut: %v\n%s", access, p.logs)
	}
	checkServerClosedSpan(t, sink, access)
}

// checkServerClosedSpan: the span of the request the forced close cut while
// its body was still coming, flushed at exit, is an error with
// error.type=server_closed and no response status: the 400 the handler
// wrote for the body it could no longer read never reached the client.
func checkServerClosedSpan(t *testing.T, sink *otlptest.Receiver, access map[string]any) {
	t.Helper()
	var span *tracepb.Span
	for _, sp := range sink.Spans() {
		if hex.EncodeToString(sp.GetTraceId()) == access["trace_id"] && sp.GetName() == "POST /api/v1/echo" {
			span = sp
		}
	}
	if span == nil {
		t.Fatalf("no span of the cut request (trace %v) reached the collector by exit", access["trace_id"])
	}
	attrs := map[string]string{}
	for _, kv := range span.GetAttributes() {
		attrs[kv.GetKey()] = fmt.Sprint(kv.GetValue().GetValue())
	}
	if span.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_ERROR || !strings.Contains(attrs["error.type"], "server_closed") {
		t.Errorf("span of the cut request: status %v, attributes %v; want an error with error.type server_closed", span.GetStatus(), attrs)
	}
	if code, ok := attrs["http.response.status_code"]; ok {
		t.Errorf("span of a request cut before any response says http.response.status_code %s", code)
	}
}

// TestRedisClientLinesHeldBackAtExit: go-redis's own lines while Redis is
// down, through the real binary: three, then the rest held back, whose
// number the exit writes rather than losing.
func TestRedisClientLinesHeldBackAtExit(t *testing.T) {
	rs := redistest.Start(t)
	p := startBinary(t, map[string]string{"REDIS_URL": rs.URL(), "SHUTDOWN_DELAY": "0s"})
	waitFor(t, 5*time.Second, "limiter on Redis", func() bool { return strings.Contains(readyzStatus(t, p.public), `"redis":"ok"`) })
	rs.Kill()
	written := func() int { return strings.Count(p.logs.String(), `"msg":"redis client","detail":`) }
	// The limiter's probe dials every few hundred ms; requests dial too.
	waitFor(t, 10*time.Second, "three redis client lines", func() bool {
		get(t, "http://"+p.public+"/api/v1/ping")
		time.Sleep(50 * time.Millisecond)
		return written() >= 3
	})
	for range 40 { // two seconds more of failed dials (a probe every 250 ms), held back
		get(t, "http://"+p.public+"/api/v1/ping")
		time.Sleep(50 * time.Millisecond)
	}
	sigterm(t, p)
	exit := p.logs.last("redis client", "")
	if exit == nil || exit["detail"] != "lines over the rate limit, not written" || exit["suppressed"] == nil || exit["level"] != "WARN" {
		t.Fatalf("last redis client line %v, want the exit's WARN count of lines held back:\n%s", exit, p.logs.String())
	}
	t.Logf("%d redis client lines written, %v held back at exit", written(), exit["suppressed"])
}

// sigterm sends p SIGTERM and waits for it to exit (15 s at most).
func sigterm(t *testing.T, p *proc) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}

// TestForcedShutdownCutResponse: the item handler, whose dependency call the
// forced close cancels, cuts its response (http.ErrAbortHandler); that is
// still the server's doing: logged at WARN with server_closed, no 500 on
// the error budget.
func TestForcedShutdownCutResponse(t *testing.T) {
	p := startBinary(t, map[string]string{"SHUTDOWN_DELAY": "0s", "SHUTDOWN_TIMEOUT": "1s",
		"BREAKER_TIMEOUT": "10s", "DOWNSTREAM_ATTEMPT_TIMEOUT": "9s"})
	put(t, "http://"+p.admin+"/debug/faults", `{"latency":"5s"}`)
	c := dialPublic(t, p.public)
	fmt.Fprint(c, "GET /api/v1/items/4 HTTP/1.1\r\nHost: x\r\nX-Request-ID: items-cut-by-shutdown\r\n\r\n")
	waitFor(t, 10*time.Second, "the handler waiting for the dependency", func() bool {
		return metric(t, p.admin, "http_server_requests_in_flight") == 1
	})
	sigterm(t, p)
	access := p.logs.last("request", "items-cut-by-shutdown")
	if access == nil || access["status"] == float64(500) || access["status"] == float64(499) || access["level"] != "WARN" ||
		!strings.HasPrefix(fmt.Sprint(access["error"]), "server_closed") {
		t.Errorf("access line of the item request the forced close cut: %v\n%s", access, p.logs)
	}
}

// TestHTTP2IdleTimeoutClientClosesOnGoAway: a client that closes its
// connection when the idle timeout's GOAWAY comes (browsers do) ended it
// because of the idle timeout too.
func TestHTTP2IdleTimeoutClientClosesOnGoAway(t *testing.T) {
	cert, key := testkit.WriteSelfSignedCert(t)
	r := startRun(t, map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key, "HTTP_IDLE_TIMEOUT": "1s"})
	h := target{addr: r.public, tls: true}.dialH2(t)
	if h == nil {
		t.FailNow()
	}
	defer h.c.Close()
	if err := h.headers(1, true, ":method", "GET", ":path", "/api/v1/ping"); err != nil {
		t.Fatal(err)
	}
	_ = h.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY: %v", err)
		}
		if _, ok := f.(*http2.GoAwayFrame); ok {
			break
		}
	}
	h.c.Close() // close_notify, FIN
	waitFor(t, 5*time.Second, "the close counted as the idle timeout", func() bool {
		return metric(t, r.admin, `http_server_connections_closed_total{reason="idle_timeout",state="idle"}`) == 1
	})
}

// TestH2CPrefaceCloseLineNamesItsRequest: the h2c preface on the plain
// listener is refused with a 400 on the HTTP/1 connection it came on; that
// connection's close line names the request, as for any other.
func TestH2CPrefaceCloseLineNamesItsRequest(t *testing.T) {
	r := startRun(t, map[string]string{"LOG_LEVEL": "debug"})
	c := dialPublic(t, r.public)
	io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id := resp.Header.Get("X-Request-ID")
	if resp.StatusCode != http.StatusBadRequest || id == "" {
		t.Fatalf("h2c preface: %d, request ID %q", resp.StatusCode, id)
	}
	c.Close()
	waitFor(t, 5*time.Second, "the close line naming the request", func() bool {
		return r.logs.last("connection closed", id) != nil
	})
}

// With tracing off (the default) a request without trace context has no
// trace_id; the lines its work writes (the outbound retries, the breaker's
// fallback) still carry its request_id, as its access line does.
func TestRequestLinesCarryTheRequestID(t *testing.T) {
	r := startRun(t, map[string]string{"LOG_LEVEL": "debug"})
	put(t, "http://"+r.admin+"/debug/faults", `{"error_rate":1}`)
	req, _ := http.NewRequest(http.MethodGet, "http://"+r.public+"/api/v1/items/7", nil)
	req.Header.Set("X-Request-ID", "rid-dependency-down")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Degraded") != "true" {
		t.Fatalf("items with the dependency down: %d, X-Degraded %q", resp.StatusCode, resp.Header.Get("X-Degraded"))
	}
	msgs := []string{"request", "retrying outbound request", "items fallback", "fallback served"}
	waitFor(t, 5*time.Second, "the request's lines", func() bool {
		for _, m := range msgs {
			if r.logs.last(m, "rid-dependency-down") == nil {
				return false
			}
		}
		return true
	})
	for _, m := range msgs {
		if l := r.logs.last(m, "rid-dependency-down"); l["trace_id"] != nil && l["trace_id"] != "" {
			t.Errorf("%q has a trace_id with tracing off and no caller context: %v", m, l)
		}
	}
}

// go-redis's own lines (dial failures in an outage) are thinned to three,
// then one per interval, each saying how many were held back since the one
// before. The service's interval is 10 s; the test's 300 ms.
func TestRedisClientLinesCountWhatTheyHoldBack(t *testing.T) {
	var buf testkit.SyncBuffer
	r := &redisLogger{}
	r.l.Store(observability.NewLimitedLog(slog.New(slog.NewJSONHandler(&buf, nil)), rate.Every(300*time.Millisecond), 3))
	for i := range 10 { // at once: three written, seven held back
		r.Printf(context.Background(), "dial tcp: connection refused %d", i)
	}
	time.Sleep(400 * time.Millisecond)
	r.Printf(context.Background(), "dial tcp: connection refused %d", 10)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4 (three, then one after the interval):\n%s", len(lines), buf.String())
	}
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[3]), &last); err != nil {
		t.Fatal(err)
	}
	if last["msg"] != "redis client" || last["level"] != "WARN" || last["suppressed"] != float64(7) {
		t.Errorf("fourth line %v, want a WARN redis client line with suppressed 7", last)
	}
	if strings.Contains(lines[2], "suppressed") {
		t.Errorf("nothing was held back before the third line: %s", lines[2])
	}

	// Held back after the last line written: the exit's flush tells.
	r.Printf(context.Background(), "dial tcp: connection refused %d", 11)
	r.Printf(context.Background(), "dial tcp: connection refused %d", 12)
	r.l.Load().Flush(context.Background(), redisLogMsg)
	lines = strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 5 || !strings.Contains(lines[4], `"level":"WARN","msg":"redis client","suppressed":2`) {
		t.Errorf("after two more lines held back, the flush wrote %q, want a WARN redis client line with suppressed 2", lines[len(lines)-1])
	}
}
