package resilience

import (
	"context"
	"errors"
	"io"
	"log"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestClientConfigValidate(t *testing.T) {
	if err := DefaultClientConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	tests := []struct {
		mutate  func(*ClientConfig)
		wantVar string
	}{
		{func(c *ClientConfig) { c.AttemptTimeout = 0 }, "DOWNSTREAM_ATTEMPT_TIMEOUT"},
		{func(c *ClientConfig) { c.MaxAttempts = 0 }, "DOWNSTREAM_MAX_ATTEMPTS"},
		{func(c *ClientConfig) { c.BackoffBase = time.Second }, "ClientConfig.BackoffBase"},
		{func(c *ClientConfig) { c.BackoffCap = 0 }, "ClientConfig.BackoffCap"},
		{func(c *ClientConfig) { c.MaxRetryAfter = -1 }, "ClientConfig.MaxRetryAfter"},
		{func(c *ClientConfig) { c.RetryBudgetRatio = 1.5 }, "DOWNSTREAM_RETRY_BUDGET_RATIO"},
		{func(c *ClientConfig) { c.RetryBudgetRatio = math.NaN() }, "DOWNSTREAM_RETRY_BUDGET_RATIO"},
		{func(c *ClientConfig) { c.RetryBudgetBurst = -1 }, "ClientConfig.RetryBudgetBurst"},
		{func(c *ClientConfig) { c.MaxIdleConns = 0 }, "ClientConfig.MaxIdleConns"},
		{func(c *ClientConfig) { c.MaxIdleConnsPerHost = 1000 }, "ClientConfig.MaxIdleConnsPerHost"},
		{func(c *ClientConfig) { c.MaxConnsPerHost = -1 }, "DOWNSTREAM_MAX_CONNS_PER_HOST"},
		{func(c *ClientConfig) { c.IdleConnTimeout = 0 }, "DOWNSTREAM_IDLE_CONN_TIMEOUT"},
		{func(c *ClientConfig) { c.DialTimeout = 0 }, "ClientConfig.DialTimeout"},
		{func(c *ClientConfig) { c.KeepAlive = -1 }, "ClientConfig.KeepAlive"},
		{func(c *ClientConfig) { c.TLSHandshakeTimeout = 0 }, "ClientConfig.TLSHandshakeTimeout"},
		{func(c *ClientConfig) { c.ResponseHeaderTimeout = 0 }, "ClientConfig.ResponseHeaderTimeout"},
		{func(c *ClientConfig) { c.ExpectContinueTimeout = 0 }, "ClientConfig.ExpectContinueTimeout"},
	}
	// A connection cap below the idle cap is fine: it lowers the idle cap.
	low := DefaultClientConfig()
	low.MaxConnsPerHost = 2
	c, err := NewClient(low, discardLogger(), prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatalf("MaxConnsPerHost 2: %v", err)
	}
	if got := c.transport.MaxIdleConnsPerHost; got != 2 {
		t.Fatalf("MaxConnsPerHost 2: idle per host %d, want 2", got)
	}
	for _, tt := range tests {
		c := DefaultClientConfig()
		tt.mutate(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tt.wantVar+":") {
			t.Errorf("Validate() = %v, want an error naming %s", err, tt.wantVar)
		}
		if _, err := NewClient(c, discardLogger(), prometheus.NewRegistry(), nil); err == nil {
			t.Errorf("NewClient accepted a config with a bad %s", tt.wantVar)
		}
	}
}

func mustGet(t testing.TB, ctx context.Context, c *Client, url string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.Do(req)
}

func readAll(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return string(b)
}

// Connection failures on an idempotent request are retried.
func TestClientRetriesConnectionFailures(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		kind    string
		reasons []string
	}{
		{modeReset, []string{"reset", "eof"}}, // an RST can surface as either, depending on timing
		{modeEOF, []string{"eof"}},
		{modeAbort, []string{"eof"}},
	} {
		t.Run(tt.kind, func(t *testing.T) {
			t.Parallel()
			ds := newDownstream(t, 0)
			reg := prometheus.NewRegistry()
			c := newTestClient(t, testClientConfig(), reg)
			ds.setMode(mode{kind: tt.kind, first: 2})
			resp, err := mustGet(t, ctxTimeout(t, 5*time.Second), c, ds.URL()+"/items/1")
			if err != nil {
				t.Fatalf("Do: %v (want the retries to hide the failures)", err)
			}
			if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, `"id":"1"`) {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
			if ds.hits.Load() != 3 {
				t.Fatalf("downstream hits = %d, want 3", ds.hits.Load())
			}
			var retries float64
			for _, r := range tt.reasons {
				retries += metric(t, reg, "http_client_retries_total", map[string]string{"host": ds.Host(), "reason": r})
			}
			if retries != 2 {
				t.Fatalf("retries with reason in %v = %v, want 2", tt.reasons, retries)
			}
			if got := metric(t, reg, "http_client_requests_total", map[string]string{"host": ds.Host(), "method": "GET", "code": "error"}); got != 2 {
				t.Fatalf("requests{code=error} = %v, want 2", got)
			}
		})
	}
}

func TestClientRetriesRefusedConnections(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there any more
	reg := prometheus.NewRegistry()
	cfg := testClientConfig()
	cfg.MaxAttempts = 3
	c := newTestClient(t, cfg, reg)
	_, err = mustGet(t, ctxTimeout(t, 5*time.Second), c, "http://"+addr+"/items/1")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Do = %v, want connection refused", err)
	}
	if got := metric(t, reg, "http_client_retries_total", map[string]string{"reason": "refused"}); got != 2 {
		t.Fatalf("refused retries = %v, want 2", got)
	}
}

// A POST without Idempotency-Key is never retried; with one it is, and its
// body is rewound for every attempt.
func TestClientRetriesOnlyIdempotentRequests(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{modeReset, modeStatus} {
		t.Run("POST without key "+kind, func(t *testing.T) {
			t.Parallel()
			ds := newDownstream(t, 0)
			reg := prometheus.NewRegistry()
			c := newTestClient(t, testClientConfig(), reg)
			ds.setMode(mode{kind: kind, status: http.StatusServiceUnavailable})
			req, _ := http.NewRequestWithContext(ctxTimeout(t, 5*time.Second), http.MethodPost, ds.URL()+"/orders", strings.NewReader("pay 10"))
			resp, err := c.Do(req)
			if err == nil {
				readAll(t, resp)
				if resp.StatusCode != http.StatusServiceUnavailable {
					t.Fatalf("status %d", resp.StatusCode)
				}
			}
			if ds.hits.Load() != 1 {
				t.Fatalf("downstream saw %d POSTs, want exactly 1", ds.hits.Load())
			}
			if got := metric(t, reg, "http_client_retries_total", nil); got != 0 {
				t.Fatalf("retries = %v, want 0", got)
			}
		})
	}
	t.Run("POST with Idempotency-Key", func(t *testing.T) {
		t.Parallel()
		ds := newDownstream(t, 0)
		c := newTestClient(t, testClientConfig(), prometheus.NewRegistry())
		ds.setMode(mode{kind: modeStatus, status: http.StatusServiceUnavailable, first: 2})
		req, _ := http.NewRequestWithContext(ctxTimeout(t, 5*time.Second), http.MethodPost, ds.URL()+"/orders", strings.NewReader("pay 10"))
		req.Header.Set("Idempotency-Key", "order-1")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if resp.StatusCode != 200 || ds.hits.Load() != 3 {
			t.Fatalf("status %d after %d attempts, want 200 after 3", resp.StatusCode, ds.hits.Load())
		}
		for i, h := range ds.hitsLog() {
			if h.method != http.MethodPost || h.body != "pay 10" {
				t.Fatalf("attempt %d: %s with body %q, want the body rewound", i+1, h.method, h.body)
			}
		}
	})
	t.Run("body without GetBody", func(t *testing.T) {
		t.Parallel()
		ds := newDownstream(t, 0)
		c := newTestClient(t, testClientConfig(), prometheus.NewRegistry())
		ds.setMode(mode{kind: modeStatus, status: http.StatusServiceUnavailable})
		req, _ := http.NewRequestWithContext(ctxTimeout(t, 5*time.Second), http.MethodPut, ds.URL()+"/x", io.NopCloser(strings.NewReader("v")))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if ds.hits.Load() != 1 {
			t.Fatalf("a body that cannot be rewound was sent %d times", ds.hits.Load())
		}
	})
	t.Run("GetBody fails", func(t *testing.T) {
		t.Parallel()
		ds := newDownstream(t, 0)
		c := newTestClient(t, testClientConfig(), prometheus.NewRegistry())
		ds.setMode(mode{kind: modeStatus, status: http.StatusServiceUnavailable})
		req, _ := http.NewRequestWithContext(ctxTimeout(t, 5*time.Second), http.MethodPut, ds.URL()+"/x", strings.NewReader("v"))
		// A rewind that fails (with an error a transport failure could
		// also give): no retry, and the caller gets the answer in hand.
		req.GetBody = func() (io.ReadCloser, error) { return nil, io.ErrUnexpectedEOF }
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("err = %v, want the first attempt's answer", err)
		}
		readAll(t, resp)
		if resp.StatusCode != http.StatusServiceUnavailable || ds.hits.Load() != 1 {
			t.Fatalf("status %d after %d attempts, want the first attempt's 503", resp.StatusCode, ds.hits.Load())
		}
	})
}

// Retry-After is honoured, but not past the caller's deadline nor above
// MaxRetryAfter.
func TestClientRetryAfter(t *testing.T) {
	t.Parallel()
	t.Run("honoured", func(t *testing.T) {
		t.Parallel()
		ds := newDownstream(t, 0)
		reg := prometheus.NewRegistry()
		c := newTestClient(t, testClientConfig(), reg)
		ds.setMode(mode{kind: modeStatus, status: http.StatusServiceUnavailable, retryAfter: "1", first: 1})
		resp, err := mustGet(t, ctxTimeout(t, 5*time.Second), c, ds.URL()+"/items/1")
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		log := ds.hitsLog()
		if resp.StatusCode != 200 || len(log) != 2 {
			t.Fatalf("status %d after %d attempts", resp.StatusCode, len(log))
		}
		if gap := log[1].at.Sub(log[0].at); gap < 990*time.Millisecond {
			t.Fatalf("retried after %s, want Retry-After: 1 respected", gap)
		}
		if got := metric(t, reg, "http_client_retries_total", map[string]string{"reason": "status_503"}); got != 1 {
			t.Fatalf("retries{status_503} = %v", got)
		}
	})
	t.Run("429 beyond the deadline", func(t *testing.T) {
		t.Parallel()
		ds := newDownstream(t, 0)
		c := newTestClient(t, testClientConfig(), prometheus.NewRegistry())
		ds.setMode(mode{kind: modeStatus, status: http.StatusTooManyRequests, retryAfter: "2"})
		start := time.Now()
		resp, err := mustGet(t, ctxTimeout(t, 500*time.Millisecond), c, ds.URL()+"/items/1")
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if resp.StatusCode != http.StatusTooManyRequests || ds.hits.Load() != 1 || time.Since(start) > 300*time.Millisecond {
			t.Fatalf("status %d, %d attempts, %s; want the 429 at once", resp.StatusCode, ds.hits.Load(), time.Since(start))
		}
	})
	for _, ra := range []string{"30", "10000000000"} { // the second overflows a Duration
		t.Run("above MaxRetryAfter: "+ra, func(t *testing.T) {
			t.Parallel()
			ds := newDownstream(t, 0)
			c := newTestClient(t, testClientConfig(), prometheus.NewRegistry())
			ds.setMode(mode{kind: modeStatus, status: http.StatusServiceUnavailable, retryAfter: ra})
			resp, err := mustGet(t, context.Background(), c, ds.URL()+"/items/1")
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, resp)
			if resp.StatusCode != http.StatusServiceUnavailable || ds.hits.Load() != 1 {
				t.Fatalf("status %d after %d attempts; want the 503 at once", resp.StatusCode, ds.hits.Load())
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"", 0, false},
		{"3", 3 * time.Second, true},
		{" 0 ", 0, true},
		{"-1", 0, false},
		{"+5", 0, false},
		{"5s", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"9223372036", 9223372036 * time.Second, true},
		// Past what a Duration holds: the longest wait, never a wrapped,
		// negative one that would retry at once.
		{"9223372037", time.Duration(math.MaxInt64), true},
		{"10000000000", time.Duration(math.MaxInt64), true},
		{"99999999999999999999999", time.Duration(math.MaxInt64), true},
		{now.Add(10 * time.Second).Format(http.TimeFormat), 10 * time.Second, true},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0, true},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("parseRetryAfter(%q) = %s, %v; want %s, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestBackoffIsFullJitterAndCapped(t *testing.T) {
	c := &Client{cfg: ClientConfig{BackoffBase: 10 * time.Millisecond, BackoffCap: 50 * time.Millisecond}}
	for attempt, bound := range map[int]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 40 * time.Millisecond, 4: 50 * time.Millisecond, 40: 50 * time.Millisecond} {
		var lo, hi time.Duration = bound, 0
		for range 2000 {
			d := c.backoff(attempt)
			if d < 0 || d > bound {
				t.Fatalf("backoff(%d) = %s, outside [0, %s]", attempt, d, bound)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		// Full jitter spreads over the whole range.
		if lo > bound/10 || hi < bound*9/10 {
			t.Errorf("backoff(%d) spans [%s, %s], want most of [0, %s]", attempt, lo, hi, bound)
		}
	}
}

// During a total outage the retry budget caps retries near ratio*requests.
func TestClientRetryBudgetCapsRetries(t *testing.T) {
	t.Parallel()
	ds := newDownstream(t, 0)
	reg := prometheus.NewRegistry()
	cfg := testClientConfig()
	cfg.MaxAttempts = 4
	cfg.RetryBudgetRatio = 0.1
	cfg.RetryBudgetBurst = 5
	cfg.BackoffCap = time.Millisecond
	c := newTestClient(t, cfg, reg)
	ds.setMode(mode{kind: modeStatus, status: http.StatusServiceUnavailable})
	const requests = 200
	ctx := ctxTimeout(t, 30*time.Second)
	for range requests {
		resp, err := mustGet(t, ctx, c, ds.URL()+"/items/1")
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	retries := metric(t, reg, "http_client_retries_total", nil)
	// Without a budget: 3 retries per request = 600.
	if limit := 5 + 0.1*requests; retries > limit || retries < limit-2 {
		t.Fatalf("retries = %v during a total outage, want about %v (burst + 10%%)", retries, limit)
	}
	if got := ds.hits.Load(); got != requests+int64(retries) {
		t.Fatalf("downstream hits = %d, want %d", got, requests+int64(retries))
	}
}

// A per-attempt timeout inside the caller's deadline: a stuck attempt is
// cancelled and retried.
func TestClientAttemptTimeout(t *testing.T) {
	t.Parallel()
	ds := newDownstream(t, 0)
	reg := prometheus.NewRegistry()
	cfg := testClientConfig()
	cfg.AttemptTimeout = 100 * time.Millisecond
	c := newTestClient(t, cfg, reg)
	ds.setMode(mode{kind: modeSlow, delay: 5 * time.Second, first: 1})
	start := time.Now()
	resp, err := mustGet(t, ctxTimeout(t, 5*time.Second), c, ds.URL()+"/items/1")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != 200 || time.Since(start) > time.Second {
		t.Fatalf("status %d after %s", resp.StatusCode, time.Since(start))
	}
	if got := metric(t, reg, "http_client_retries_total", map[string]string{"reason": "timeout"}); got != 1 {
		t.Fatalf("retries{timeout} = %v, want 1", got)
	}
	eventually(t, 2*time.Second, func() bool { return ds.cancelled.Load() == 1 }, "the stuck attempt is cancelled at the downstream")

	// The caller's deadline wins over the attempt timeout and is not retried.
	ds.setMode(mode{kind: modeSlow, delay: 5 * time.Second})
	before := ds.hits.Load()
	cfg.AttemptTimeout = time.Second
	c2 := newTestClient(t, cfg, prometheus.NewRegistry())
	if _, err := mustGet(t, ctxTimeout(t, 100*time.Millisecond), c2, ds.URL()+"/items/1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do = %v, want the caller's deadline", err)
	}
	if ds.hits.Load() != before+1 {
		t.Fatalf("%d attempts after the caller's deadline, want 1", ds.hits.Load()-before)
	}
}

// A downstream that closes idle connections early (here 20ms, and a client
// that keeps them 90s: the misconfiguration behind most EOFs) under a
// keep-alive load: no error reaches the caller.
func TestClientIdleCloseUnderKeepAliveLoad(t *testing.T) {
	t.Parallel()
	const idle = 20 * time.Millisecond
	ds := newDownstream(t, idle)
	reg := prometheus.NewRegistry()
	cfg := testClientConfig()
	cfg.IdleConnTimeout = 90 * time.Second
	ctx := ctxTimeout(t, 30*time.Second)
	var wg sync.WaitGroup
	var failures atomic.Int32
	// One client per worker, so each connection's idle time is the worker's
	// pause, which straddles the server's idle timeout.
	for range 4 {
		c := newTestClient(t, cfg, reg)
		wg.Go(func() {
			for range 50 {
				resp, err := mustGet(t, ctx, c, ds.URL()+"/items/1")
				if err != nil {
					failures.Add(1)
					t.Errorf("Do: %v", err)
					continue
				}
				readAll(t, resp)
				if resp.StatusCode != 200 {
					failures.Add(1)
					t.Errorf("status %d", resp.StatusCode)
				}
				time.Sleep(idle - 5*time.Millisecond + rand.N(10*time.Millisecond))
			}
		})
	}
	wg.Wait()
	reused := metric(t, reg, "http_client_connections_total", map[string]string{"reused": "true"})
	fresh := metric(t, reg, "http_client_connections_total", map[string]string{"reused": "false"})
	retries := metric(t, reg, "http_client_retries_total", nil)
	// GotConn fires again when net/http itself replays a GET that hit a
	// connection the server had just closed; our retries cover the rest.
	t.Logf("200 requests: %v reused connections, %v new (%v replayed by net/http), %v retries by the client, %d failures",
		reused, fresh, reused+fresh-200-retries, retries, failures.Load())
	if reused < 10 || fresh < 10 {
		t.Fatalf("reused %v, new %v: the load did not exercise both keep-alive and server-side idle closes", reused, fresh)
	}
	// Every replay by net/http found a pooled connection closed, and so
	// did every retry of ours after an EOF or reset on one.
	replays := reused + fresh - 200 - retries
	staleConns := metric(t, reg, "http_client_stale_connection_idle_seconds", nil)
	t.Logf("stale connections counted: %v", staleConns)
	if staleConns < replays || staleConns > replays+retries {
		t.Errorf("stale connections %v, want within [%v, %v] (net/http's replays, plus our retries)", staleConns, replays, replays+retries)
	}
}

// histogramSum returns the sum of the histogram series name{labels} in reg.
func histogramSum(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	var sum float64
	for _, m := range seriesOf(t, reg, name, labels) {
		sum += m.GetHistogram().GetSampleSum()
	}
	return sum
}

// A pooled connection the downstream closed as it was reused, on real
// sockets: net/http replays a GET on a new connection by itself, and a
// POST fails with EOF; both are counted with the connection's idle time,
// and the POST's error names the kept-alive connection. A failure on a new
// connection and a refused dial are told apart from them.
func TestClientStaleConnections(t *testing.T) {
	t.Parallel()
	const pause = 60 * time.Millisecond
	ds := newDownstream(t, 0)
	reg := prometheus.NewRegistry()
	c := newTestClient(t, testClientConfig(), reg)
	host := ds.Host()
	ctx := ctxTimeout(t, 10*time.Second)
	stale := map[string]string{"host": host}
	errsOn := func(kind, conn string) float64 {
		return metric(t, reg, "http_client_attempt_errors_total", map[string]string{"host": host, "kind": kind, "connection": conn})
	}

	// GET: the first request leaves its connection in the pool; the
	// downstream closes it as the second arrives.
	resp, err := mustGet(t, ctx, c, ds.URL()+"/items/1")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	time.Sleep(pause)
	ds.setMode(mode{kind: modeEOF, first: 1})
	resp, err = mustGet(t, ctx, c, ds.URL()+"/items/2")
	if err != nil {
		t.Fatalf("GET on a stale connection: %v (want net/http's replay to hide it)", err)
	}
	readAll(t, resp)
	if ds.hits.Load() != 3 {
		t.Fatalf("downstream hits %d, want 3 (the stale attempt and net/http's replay)", ds.hits.Load())
	}
	if got := metric(t, reg, "http_client_stale_connection_idle_seconds", stale); got != 1 {
		t.Fatalf("stale connections after the replayed GET = %v, want 1", got)
	}
	if got := histogramSum(t, reg, "http_client_stale_connection_idle_seconds", stale); got < pause.Seconds() || got > 5 {
		t.Errorf("idle of the stale connection %.3fs, want about %s", got, pause)
	}
	if got := metric(t, reg, "http_client_attempt_errors_total", nil); got != 0 {
		t.Errorf("attempt errors %v after a hidden replay, want 0", got)
	}

	// POST, not replayable: the EOF reaches the caller, saying where.
	time.Sleep(pause)
	ds.setMode(mode{kind: modeEOF, first: 1})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ds.URL()+"/orders", strings.NewReader("pay 10"))
	if resp, err = c.Do(req); err == nil {
		readAll(t, resp)
		t.Fatalf("POST on a stale connection: status %d, want an EOF", resp.StatusCode)
	}
	if !errors.Is(err, io.EOF) || !strings.Contains(err.Error(), "(on a kept-alive connection idle ") {
		t.Errorf("POST error %q: want an EOF naming the kept-alive connection and its idle time", err)
	}
	if got := errsOn("eof", "reused"); got != 1 {
		t.Errorf("attempt errors {eof, reused} = %v, want 1", got)
	}
	if got := metric(t, reg, "http_client_stale_connection_idle_seconds", stale); got != 2 {
		t.Errorf("stale connections after the POST = %v, want 2", got)
	}

	// A new connection closed without an answer is not a stale one.
	c2 := newTestClient(t, testClientConfig(), reg)
	ds.setMode(mode{kind: modeEOF, first: 1})
	req, _ = http.NewRequestWithContext(ctx, http.MethodPost, ds.URL()+"/orders", strings.NewReader("pay 10"))
	if resp, err = c2.Do(req); err == nil {
		readAll(t, resp)
		t.Fatal("POST on a new connection closed without an answer succeeded")
	}
	if strings.Contains(err.Error(), "kept-alive") {
		t.Errorf("error on a new connection %q names a kept-alive one", err)
	}
	if got := errsOn("eof", "new"); got != 1 {
		t.Errorf("attempt errors {eof, new} = %v, want 1", got)
	}

	// No connection at all: a refused dial.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	req, _ = http.NewRequestWithContext(ctx, http.MethodPost, "http://"+closed+"/orders", strings.NewReader("pay 10"))
	if _, err = c2.Do(req); err == nil {
		t.Fatal("POST to a closed port succeeded")
	}
	if got := metric(t, reg, "http_client_attempt_errors_total", map[string]string{"host": closed, "kind": "refused", "connection": "none"}); got != 1 {
		t.Errorf("attempt errors {refused, none} = %v, want 1", got)
	}
	if got := metric(t, reg, "http_client_stale_connection_idle_seconds", stale); got != 2 {
		t.Errorf("stale connections = %v after failures on no pooled connection, want still 2", got)
	}
	if got := metric(t, reg, "http_client_idle_timeout_seconds", nil); got != testClientConfig().IdleConnTimeout.Seconds() {
		t.Errorf("http_client_idle_timeout_seconds = %v, want %v", got, testClientConfig().IdleConnTimeout.Seconds())
	}
}

// With tracing, the failed attempt's client span says the same: its status
// names the kept-alive connection and its idle time, and error.type is eof.
func TestClientStaleConnectionSpan(t *testing.T) {
	t.Parallel()
	ds := newDownstream(t, 0)
	rec, tp := recordingProvider(t)
	reg := prometheus.NewRegistry()
	c, err := NewClient(testClientConfig(), discardLogger(), reg, tp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	ctx := ctxTimeout(t, 5*time.Second)
	resp, err := mustGet(t, ctx, c, ds.URL()+"/items/1")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	time.Sleep(50 * time.Millisecond)
	ds.setMode(mode{kind: modeEOF, first: 1})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ds.URL()+"/orders", strings.NewReader("pay 10"))
	if resp, err = c.Do(req); err == nil {
		readAll(t, resp)
		t.Fatal("POST on a stale connection succeeded")
	}
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d client spans, want 2", len(spans))
	}
	sp := spans[1]
	if d := sp.Status().Description; !strings.Contains(d, "(on a kept-alive connection idle ") {
		t.Errorf("span status %q does not name the kept-alive connection", d)
	}
	var errType string
	for _, kv := range sp.Attributes() {
		if kv.Key == "error.type" {
			errType = kv.Value.AsString()
		}
	}
	if errType != "eof" {
		t.Errorf("error.type %q, want eof", errType)
	}
	if got := metric(t, reg, "http_client_attempt_errors_total", map[string]string{"kind": "eof", "connection": "reused"}); got != 1 {
		t.Errorf("attempt errors {eof, reused} = %v with tracing, want 1", got)
	}
}

func TestClientMetrics(t *testing.T) {
	t.Parallel()
	ds := newDownstream(t, 0)
	reg := prometheus.NewRegistry()
	c := newTestClient(t, testClientConfig(), reg)
	ctx := ctxTimeout(t, 5*time.Second)
	for range 2 {
		resp, err := mustGet(t, ctx, c, ds.URL()+"/items/1")
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
	}
	host := ds.Host()
	// The stale-connection series of the host exists from its first
	// connection, at 0.
	if len(seriesOf(t, reg, "http_client_stale_connection_idle_seconds", map[string]string{"host": host})) == 0 {
		t.Error("no http_client_stale_connection_idle_seconds series for the host after its first connection")
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"http_client_requests_total", map[string]string{"host": host, "method": "GET", "code": "200"}, 2},
		{"http_client_request_duration_seconds", map[string]string{"host": host}, 2},
		{"http_client_connections_total", map[string]string{"host": host, "reused": "false"}, 1},
		{"http_client_connections_total", map[string]string{"host": host, "reused": "true"}, 1},
	}
	for _, ck := range checks {
		if got := metric(t, reg, ck.name, ck.labels); got != ck.want {
			t.Errorf("%s%v = %v, want %v", ck.name, ck.labels, got, ck.want)
		}
	}
	// A second client on the same registry shares the metrics.
	if _, err := NewClient(testClientConfig(), discardLogger(), reg, nil); err != nil {
		t.Fatal(err)
	}
}

// With a tracer provider every attempt is a client span and the trace
// context reaches the downstream; without one nothing is injected.
func TestClientPropagatesTraceContext(t *testing.T) {
	t.Parallel()
	ds := newDownstream(t, 0)
	rec, tp := recordingProvider(t)
	c, err := NewClient(testClientConfig(), discardLogger(), prometheus.NewRegistry(), tp, WithPropagator(propagation.TraceContext{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)

	ctx, parent := tp.Tracer("test").Start(ctxTimeout(t, 5*time.Second), "handler")
	ds.setMode(mode{kind: modeStatus, status: http.StatusBadGateway, first: 1})
	resp, err := mustGet(t, ctx, c, ds.URL()+"/items/1")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	parent.End()
	traceID := parent.SpanContext().TraceID().String()
	log := ds.hitsLog()
	if len(log) != 2 {
		t.Fatalf("%d attempts, want 2", len(log))
	}
	for i, h := range log {
		if !strings.Contains(h.traceparent, traceID) {
			t.Fatalf("attempt %d: traceparent %q does not carry trace %s", i+1, h.traceparent, traceID)
		}
	}
	clientSpans, resent := 0, 0
	for _, s := range rec.Ended() {
		if s.SpanKind().String() == "client" {
			clientSpans++
			if s.Name() != http.MethodGet {
				t.Errorf("client span named %q, want GET", s.Name())
			}
			for _, a := range s.Attributes() {
				if a.Key == "http.request.resend_count" && a.Value.AsInt64() == 1 {
					resent++
				}
			}
			if s.Parent().SpanID() != parent.SpanContext().SpanID() {
				t.Errorf("client span %q is not a child of the handler span", s.Name())
			}
		}
	}
	if clientSpans != 2 || resent != 1 {
		t.Fatalf("%d client spans, %d with http.request.resend_count 1; want one per attempt (2), the retry marked", clientSpans, resent)
	}

	plain := newTestClient(t, testClientConfig(), prometheus.NewRegistry())
	resp, err = mustGet(t, ctx, plain, ds.URL()+"/items/1")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if log := ds.hitsLog(); log[len(log)-1].traceparent != "" {
		t.Fatalf("no tracer provider, yet traceparent %q was sent", log[len(log)-1].traceparent)
	}
}

// A failed attempt's client span names what went wrong in a few words
// (error.type), not the Go type of the transport's error; the error the
// caller gets is still the transport's, timeouts included.
func TestClientSpanErrorType(t *testing.T) {
	t.Parallel()
	ds := newDownstream(t, 0)
	rec, tp := recordingProvider(t)
	// client has an attempt timeout of d: a short one for the timeout
	// case, a long one for the rest (a TLS handshake on a loaded machine
	// must not become a timeout).
	client := func(d time.Duration) *Client {
		cfg := testClientConfig()
		cfg.MaxAttempts = 1
		cfg.AttemptTimeout = d
		cfg.ResponseHeaderTimeout = d
		c, err := NewClient(cfg, discardLogger(), prometheus.NewRegistry(), tp)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.CloseIdleConnections)
		return c
	}
	quick, patient := client(200*time.Millisecond), client(10*time.Second)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedURL := "http://" + closed.Addr().String() + "/items/1"
	closed.Close()
	tlsSrv := httptest.NewUnstartedServer(http.NotFoundHandler())
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the client's "bad certificate"
	tlsSrv.StartTLS()                                   // with a certificate the client does not trust
	t.Cleanup(tlsSrv.Close)
	tlsURL := tlsSrv.URL + "/items/1"

	for _, tc := range []struct {
		name, url, want string
		mode            mode
		cancelAfter     time.Duration
		timeout         bool // what the caller's error says, and the quick client
	}{
		{name: "attempt timeout", mode: mode{kind: modeSlow, delay: time.Minute}, want: "timeout", timeout: true},
		{name: "reset", mode: mode{kind: modeReset}, want: "reset"},
		{name: "eof", mode: mode{kind: modeEOF}, want: "eof"},
		{name: "caller cancelled", mode: mode{kind: modeSlow, delay: time.Minute}, cancelAfter: 100 * time.Millisecond, want: "canceled"},
		{name: "refused", url: refusedURL, want: "refused"},
		{name: "untrusted certificate", url: tlsURL, want: "tls"},
	} {
		ds.setMode(tc.mode)
		url := tc.url
		if url == "" {
			url = ds.URL() + "/items/1"
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if tc.cancelAfter > 0 {
			time.AfterFunc(tc.cancelAfter, cancel)
		}
		before := len(rec.Ended())
		c := patient
		if tc.timeout {
			c = quick
		}
		resp, err := mustGet(t, ctx, c, url)
		cancel()
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%s: got %d, want an error", tc.name, resp.StatusCode)
		}
		var ne net.Error
		if isTimeout := errors.As(err, &ne) && ne.Timeout(); isTimeout != tc.timeout {
			t.Errorf("%s: caller's error %v: Timeout() = %v, want %v", tc.name, err, isTimeout, tc.timeout)
		}
		ended := rec.Ended()[before:]
		if len(ended) != 1 {
			t.Fatalf("%s: %d spans ended, want the attempt's", tc.name, len(ended))
		}
		got := ""
		for _, a := range ended[0].Attributes() {
			if a.Key == "error.type" {
				got = a.Value.AsString()
			}
		}
		if got != tc.want {
			t.Errorf("%s: error.type %q, want %q (error %v)", tc.name, got, tc.want, err)
		}
	}
	// A failed lookup, as the dialer reports it (no query leaves the
	// machine for this).
	dnsErr := &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "x.invalid", IsNotFound: true}}
	if got := spanErrorType(dnsErr); got != "name_resolution_error" {
		t.Errorf("lookup failure: error.type %q, want name_resolution_error", got)
	}
}

func TestIsReplayable(t *testing.T) {
	mk := func(method, key string, body io.Reader) *http.Request {
		r, _ := http.NewRequest(method, "http://127.0.0.1/", body)
		if key != "" {
			r.Header.Set("Idempotency-Key", key)
		}
		return r
	}
	tests := []struct {
		req  *http.Request
		want bool
	}{
		{mk("GET", "", nil), true},
		{mk("HEAD", "", nil), true},
		{mk("PUT", "", strings.NewReader("x")), true},
		{mk("DELETE", "", nil), true},
		{mk("POST", "", strings.NewReader("x")), false},
		{mk("PATCH", "", nil), false},
		{mk("POST", "k1", strings.NewReader("x")), true},
		{mk("PUT", "", io.NopCloser(strings.NewReader("x"))), false}, // no GetBody
	}
	for _, tt := range tests {
		if got := isReplayable(tt.req); got != tt.want {
			t.Errorf("isReplayable(%s key=%q) = %v, want %v", tt.req.Method, tt.req.Header.Get("Idempotency-Key"), got, tt.want)
		}
	}
}

func TestRetryBudget(t *testing.T) {
	b := newRetryBudget(0.5, 2)
	if !b.withdraw() || !b.withdraw() || b.withdraw() {
		t.Fatal("burst of 2 not honoured")
	}
	b.deposit()
	if b.withdraw() {
		t.Fatal("half a token allowed a retry")
	}
	b.deposit()
	if !b.withdraw() {
		t.Fatal("two deposits of 0.5 did not allow a retry")
	}
	for range 100 {
		b.deposit()
	}
	n := 0
	for b.withdraw() {
		n++
	}
	if n != 2 {
		t.Fatalf("%d retries after a long healthy period, want the burst (2)", n)
	}
	zero := newRetryBudget(0.1, 0)
	for range 10 {
		zero.deposit()
	}
	if !zero.withdraw() {
		t.Fatal("burst 0: ten requests at 10% did not earn one retry")
	}
	// Small ratios refill too: 0.0004 is 4 retries per 10 000 requests.
	small := newRetryBudget(0.0004, 0)
	n = 0
	for range 100_000 {
		small.deposit()
		if small.withdraw() {
			n++
		}
	}
	if n != 40 {
		t.Fatalf("ratio 0.0004 over 100 000 requests allowed %d retries, want 40", n)
	}
}

// TestAttemptTimeoutAboveTheTransportBackstop: an attempt timeout longer
// than the transport's response-header backstop (1s by default) is the
// one that counts; the backstop used to cut every attempt at 1s, so a
// dependency answering in 1.3s was retried and failed.
func TestAttemptTimeoutAboveTheTransportBackstop(t *testing.T) {
	ds := newDownstream(t, 0)
	ds.setMode(mode{kind: modeHealthy, delay: 1300 * time.Millisecond})
	cfg := testClientConfig()
	cfg.AttemptTimeout = 3 * time.Second
	c := newTestClient(t, cfg, prometheus.NewRegistry())
	req, _ := http.NewRequest(http.MethodGet, ds.URL()+"/items/1", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("a 1.3s answer within a 3s attempt timeout failed: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || ds.hits.Load() != 1 {
		t.Fatalf("status %d after %d attempts, want 200 after 1", resp.StatusCode, ds.hits.Load())
	}
}

// recordingProvider is a tracer provider that records every span in rec.
func recordingProvider(t *testing.T) (*tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return rec, tp
}
