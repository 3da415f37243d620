package resilience

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hardenedgo/ginservice/internal/items"
)

// Modes of the test downstream.
const (
	modeHealthy  = "healthy"  // 200 with an item (after delay, if set)
	modeFailing  = "failing"  // 500
	modeSlow     = "slow"     // waits delay or until the request is cancelled
	modeStatus   = "status"   // status, with Retry-After if set
	modeReset    = "reset"    // closes the connection with RST after reading the request
	modeEOF      = "eof"      // closes the connection cleanly (FIN) after reading the request
	modeAbort    = "abort"    // the handler panics (http.ErrAbortHandler)
	modeNotFound = "notfound" // 404
)

// mode is what the downstream does. With first > 0 only the first `first`
// requests get the fault; later ones are healthy.
type mode struct {
	kind       string
	delay      time.Duration
	status     int
	retryAfter string
	first      int
}

type hit struct {
	at          time.Time
	method      string
	path        string // escaped
	body        string
	traceparent string
}

// downstream is a real HTTP server on loopback whose behaviour tests switch
// at run time.
type downstream struct {
	srv       *httptest.Server
	stop      chan struct{}
	hits      atomic.Int64 // requests received
	cancelled atomic.Int64 // requests whose context ended before the answer

	mu        sync.Mutex
	mode      mode
	remaining int
	log       []hit
}

// newDownstream starts the server; idleTimeout > 0 sets its keep-alive
// idle timeout.
func newDownstream(t testing.TB, idleTimeout time.Duration) *downstream {
	t.Helper()
	d := &downstream{stop: make(chan struct{}), mode: mode{kind: modeHealthy}}
	d.srv = httptest.NewUnstartedServer(http.HandlerFunc(d.serve))
	d.srv.Config.IdleTimeout = idleTimeout
	d.srv.Start()
	t.Cleanup(func() {
		close(d.stop)
		d.srv.Close()
	})
	return d
}

func (d *downstream) URL() string { return d.srv.URL }

// Host is host:port, the value of the host metric label.
func (d *downstream) Host() string { return strings.TrimPrefix(d.srv.URL, "http://") }

func (d *downstream) setMode(m mode) {
	d.mu.Lock()
	d.mode, d.remaining = m, m.first
	d.mu.Unlock()
}

func (d *downstream) hitsLog() []hit {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]hit(nil), d.log...)
}

// next returns the mode for this request.
func (d *downstream) next() mode {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.mode
	if m.first > 0 {
		if d.remaining == 0 {
			return mode{kind: modeHealthy}
		}
		d.remaining--
	}
	return m
}

func (d *downstream) serve(w http.ResponseWriter, r *http.Request) {
	d.hits.Add(1)
	body, _ := io.ReadAll(r.Body)
	d.mu.Lock()
	d.log = append(d.log, hit{at: time.Now(), method: r.Method, path: r.URL.EscapedPath(),
		body: string(body), traceparent: r.Header.Get("Traceparent")})
	d.mu.Unlock()

	m := d.next()
	switch m.kind {
	case modeHealthy:
		if m.delay > 0 && !d.wait(r, m.delay) {
			return
		}
		id := strings.TrimPrefix(r.URL.Path, "/items/")
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(items.Item{ID: id, Name: "item " + id, Price: 100})
	case modeFailing:
		http.Error(w, "boom", http.StatusInternalServerError)
	case modeSlow:
		if d.wait(r, m.delay) {
			w.WriteHeader(http.StatusOK)
		}
	case modeStatus:
		if m.retryAfter != "" {
			w.Header().Set("Retry-After", m.retryAfter)
		}
		http.Error(w, http.StatusText(m.status), m.status)
	case modeReset, modeEOF:
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		if tc, ok := conn.(*net.TCPConn); ok && m.kind == modeReset {
			_ = tc.SetLinger(0) // close with RST
		}
		_ = conn.Close()
	case modeAbort:
		panic(http.ErrAbortHandler)
	case modeNotFound:
		http.NotFound(w, r)
	default:
		panic("unknown mode " + m.kind)
	}
}

// wait sleeps d or until the request is cancelled (counted) or the server
// stops; it reports whether the full delay elapsed.
func (d *downstream) wait(r *http.Request, delay time.Duration) bool {
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		d.cancelled.Add(1)
		return false
	case <-d.stop:
		return false
	}
}

// discardLogger drops everything.
func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// seriesOf returns the series name{labels} in reg.
func seriesOf(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var out []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabels(m, labels) {
				out = append(out, m)
			}
		}
	}
	return out
}

// metric returns the value of the series name{labels} in reg (0 if absent).
// Several series are summed; a histogram counts its samples.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	var sum float64
	for _, m := range seriesOf(t, reg, name, labels) {
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	got := map[string]string{}
	for _, lp := range m.GetLabel() {
		got[lp.GetName()] = lp.GetValue()
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// eventually polls cond until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: "+format, append([]any{timeout}, args...)...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testClientConfig is DefaultClientConfig with quick backoff for tests.
func testClientConfig() ClientConfig {
	c := DefaultClientConfig()
	c.BackoffBase = time.Millisecond
	c.BackoffCap = 5 * time.Millisecond
	return c
}

func newTestClient(t testing.TB, cfg ClientConfig, reg prometheus.Registerer) *Client {
	t.Helper()
	c, err := NewClient(cfg, discardLogger(), reg, nil)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// stack is the full items path of the service: ItemSource -> breaker ->
// HTTPSource -> resilient client -> downstream.
type stack struct {
	ds  *downstream
	reg *prometheus.Registry
	br  *HystrixBreaker
	src *ItemSource
}

func newStack(t testing.TB, bcfg BreakerConfig, ccfg ClientConfig, logger *slog.Logger) *stack {
	t.Helper()
	ds := newDownstream(t, 0)
	reg := prometheus.NewRegistry()
	client := newTestClient(t, ccfg, reg)
	hs, err := items.NewHTTPSource(ds.URL(), client)
	if err != nil {
		t.Fatal(err)
	}
	br, err := NewHystrixBreaker("items", bcfg, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	src, err := NewItemSource(hs, br, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	return &stack{ds: ds, reg: reg, br: br, src: src}
}

func (s *stack) event(t testing.TB, ev string) float64 {
	return metric(t, s.reg, "breaker_events_total", map[string]string{"command": "items", "event": ev})
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
