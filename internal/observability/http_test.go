package observability_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit/otlptest"

	"github.com/hardenedgo/ginservice/internal/items"
)

// metricValue finds one sample line of a text scrape.
func metricValue(t *testing.T, scrape, series string) string {
	t.Helper()
	for _, l := range strings.Split(scrape, "\n") {
		if strings.HasPrefix(l, series+" ") {
			return strings.TrimPrefix(l, series+" ")
		}
	}
	return ""
}

// TestREDMetricsProvoked drives the real public handler over real sockets
// and reads the admin scrape: client aborts, truncated bodies, in-flight,
// response sizes, connection states and the bounded method label.
func TestREDMetricsProvoked(t *testing.T) {
	s := startStack(t, stackOptions{})
	base := "http://" + s.public

	// A client that leaves while the dependency is slow: 499, one abort.
	if err := s.sim.SetFaults(items.Faults{Latency: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/items/1", nil)
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("expected the client timeout")
	}
	cancel()

	// While a slow request is in flight: in-flight 1, one active connection.
	slow := make(chan error, 1)
	go func() {
		resp, err := http.Get(base + "/api/v1/items/2")
		if err == nil {
			resp.Body.Close()
		}
		slow <- err
	}()
	eventually(t, "in flight", func() bool {
		m := scrape(t, s, "")
		return metricValue(t, m, "http_server_requests_in_flight") == "1" &&
			metricValue(t, m, `http_server_connections{state="active"}`) == "1"
	})
	if err := s.sim.SetFaults(items.Faults{}); err != nil {
		t.Fatal(err)
	}
	if err := <-slow; err != nil {
		t.Fatal(err)
	}

	// Truncated bodies: Content-Length 100, 5 bytes, hang up.
	const truncated = 3
	for range truncated {
		c, err := net.Dial("tcp", s.public)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":")
		c.Close()
	}
	// Two pings for the size histogram, and a method nobody routes.
	do(t, base+"/api/v1/ping", nil)
	do(t, base+"/api/v1/ping", nil)
	c, err := net.Dial("tcp", s.public)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "BREW /api/v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c.Close()

	eventually(t, "truncated bodies counted", func() bool {
		return metricValue(t, scrape(t, s, ""), `http_server_truncated_bodies_total{route="/api/v1/echo"}`) == fmt.Sprint(truncated)
	})
	m := scrape(t, s, "")
	for series, want := range map[string]string{
		`http_server_client_aborts_total{route="/api/v1/items/:id"}`:                         "1",
		`http_server_client_aborts_total{route="/api/v1/echo"}`:                              fmt.Sprint(truncated),
		`http_server_requests_total{code="499",method="GET",route="/api/v1/items/:id"}`:      "1",
		`http_server_requests_total{code="499",method="POST",route="/api/v1/echo"}`:          fmt.Sprint(truncated),
		`http_server_requests_total{code="200",method="GET",route="/api/v1/ping"}`:           "2",
		`http_server_requests_total{code="405",method="_OTHER",route="unmatched"}`:           "1",
		`http_server_response_size_bytes_sum{method="GET",route="/api/v1/ping"}`:             "36", // 2 x {"message":"pong"}
		`http_server_response_size_bytes_count{method="GET",route="/api/v1/ping"}`:           "2",
		`http_server_requests_in_flight`:                                                     "0",
		`http_server_request_duration_seconds_count{method="GET",route="/api/v1/items/:id"}`: "2",
		`http_server_connections{state="active"}`:                                            "0",
	} {
		if got := metricValue(t, m, series); got != want {
			t.Errorf("%s = %q, want %s", series, got, want)
		}
	}
	// The truncated-body clients hung up mid-request.
	if got := metricValue(t, m, `http_server_connections_closed_total{reason="peer_closed",state="active"}`); got == "" || got == "0" {
		t.Errorf("peer closes of active connections not counted: %q", got)
	}
	if strings.Contains(m, "BREW") {
		t.Errorf("a raw method became a label value")
	}
	// One access line per request with status 499 for each client that left.
	count499 := func() int {
		n := 0
		for _, l := range logLines(s.logs, "request") {
			if l["status"] == float64(499) {
				n++
			}
		}
		return n
	}
	eventually(t, "499 access lines", func() bool { return count499() >= truncated+1 })
	time.Sleep(50 * time.Millisecond)
	if n := count499(); n != truncated+1 {
		t.Errorf("%d access lines with status 499, want %d", n, truncated+1)
	}
}

var exemplarRE = regexp.MustCompile(`http_server_request_duration_seconds_bucket\{[^}]*route="/api/v1/ping"[^}]*\} \d+ # \{trace_id="([0-9a-f]{32})"\}`)

// Sampled requests leave their trace id on the latency histogram
// (OpenMetrics exemplars); unsampled ones do not.
func TestLatencyExemplars(t *testing.T) {
	rc := otlptest.Start(t)
	s := startStack(t, stackOptions{env: map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL,
		"OTEL_TRACES_SAMPLER_ARG":     "0",
	}})
	base := "http://" + s.public
	do(t, base+"/api/v1/ping", nil) // root, not sampled
	om := scrape(t, s, "application/openmetrics-text; version=1.0.0")
	if exemplarRE.MatchString(om) {
		t.Fatalf("exemplar from an unsampled request:\n%s", om)
	}
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	do(t, base+"/api/v1/ping", map[string]string{"traceparent": "00-" + trace + "-00f067aa0ba902b7-01"})
	om = scrape(t, s, "application/openmetrics-text; version=1.0.0")
	mm := exemplarRE.FindStringSubmatch(om)
	if mm == nil || mm[1] != trace {
		t.Fatalf("no exemplar with trace_id %s on the ping latency buckets:\n%s", trace, grep(om, "route=\"/api/v1/ping\""))
	}

	// Tracing off: a caller's sampled context is continued, but no span of
	// this process is exported, so no exemplar may point at the trace.
	off := startStack(t, stackOptions{})
	do(t, "http://"+off.public+"/api/v1/ping", map[string]string{"traceparent": "00-" + trace + "-00f067aa0ba902b7-01"})
	if om := scrape(t, off, "application/openmetrics-text; version=1.0.0"); exemplarRE.MatchString(om) {
		t.Fatalf("exemplar while tracing exports nothing:\n%s", grep(om, "route=\"/api/v1/ping\""))
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestPromtoolCheckMetrics lints a real scrape, after traffic, with the
// Prometheus project's own checker.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not installed (Debian package prometheus); scripts/ci-deps.sh installs it")
		}
		t.Skip("promtool not installed (apt-get install prometheus)")
	}
	s := startStack(t, stackOptions{})
	base := "http://" + s.public
	do(t, base+"/api/v1/ping", nil)
	do(t, base+"/api/v1/items/1", nil)
	do(t, base+"/nope", nil)
	body := scrape(t, s, "")
	for _, want := range []string{
		"http_server_requests_total", "http_server_request_duration_seconds_bucket", "http_server_response_size_bytes_bucket",
		"http_server_requests_in_flight", "http_server_connections{",
		"http_server_connection_transitions_total", "http_server_connections_closed_total", "http_server_tls_handshake_errors_total",
		"kernel_tcp_listen_overflows_total", "kernel_tcp_abort_on_timeout_total", "kernel_tcp_sockets", "kernel_sysctl{name=\"net.core.somaxconn\"}",
		"service_build_info{", "go_goroutines", "process_open_fds",
		"go_sched_latencies_seconds_bucket", "go_sched_pauses_total_gc_seconds_bucket",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}
