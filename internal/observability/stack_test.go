package observability_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit"

	"github.com/prometheus/client_golang/prometheus"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"

	"github.com/hardenedgo/ginservice/internal/health"
	"github.com/hardenedgo/ginservice/internal/items"
	"github.com/hardenedgo/ginservice/internal/observability"
	"github.com/hardenedgo/ginservice/internal/ratelimit"
	"github.com/hardenedgo/ginservice/internal/resilience"
	"github.com/hardenedgo/ginservice/internal/server"
)

// logLines returns the JSON log lines of buf whose msg is msg.
func logLines(s *testkit.SyncBuffer, msg string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(s.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func attr(kvs []*commonpb.KeyValue, key string) (*commonpb.AnyValue, bool) {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			return kv.GetValue(), true
		}
	}
	return nil, false
}

// stack is the public handler of internal/server wired with this package's
// middleware, metrics, connection and error-log hooks exactly as run wires
// them, on a real loopback listener, plus an admin listener for scrapes.
type stack struct {
	public, admin string
	reg           *prometheus.Registry
	logs          *testkit.SyncBuffer
	tracing       *observability.Tracing
	sim           *items.Simulated
}

type stackOptions struct {
	env        map[string]string
	downstream string // base URL of an items dependency; empty: simulated
}

var breakerSeq atomic.Int64

func startStack(t *testing.T, o stackOptions) *stack {
	t.Helper()
	ctx := context.Background()
	logs := &testkit.SyncBuffer{}
	logger, err := observability.NewLogger(logs, "debug", "json")
	if err != nil {
		t.Fatal(err)
	}
	reg := observability.NewRegistry("v-test", "c0ffee")
	tr, err := observability.SetupTracing(ctx, func(k string) string { return o.env[k] }, "v-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		tr.Shutdown(sctx)
	})
	s := &stack{reg: reg, logs: logs, tracing: tr, sim: items.NewSimulated()}

	var src items.Source = s.sim
	if o.downstream != "" {
		client, err := resilience.NewClient(resilience.DefaultClientConfig(), logger, reg, tr.Provider(), resilience.WithPropagator(tr.Propagator()))
		if err != nil {
			t.Fatal(err)
		}
		if src, err = items.NewHTTPSource(o.downstream, client); err != nil {
			t.Fatal(err)
		}
	}
	bcfg := resilience.DefaultBreakerConfig()
	bcfg.Timeout = 2 * time.Second
	br, err := resilience.NewHystrixBreaker(fmt.Sprintf("obs-test-%d", breakerSeq.Add(1)), bcfg, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	isrc, err := resilience.NewItemSource(src, br, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	limiter, err := ratelimit.New(ctx, ratelimit.Config{Rate: 1e6, Burst: 1e6}, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { limiter.Close() })
	readiness := health.NewReadiness()
	readiness.SetReady()
	h := server.NewServer(server.Deps{
		Logger:       logger,
		Metrics:      observability.NewHTTPMetrics(reg),
		Readiness:    readiness,
		Items:        isrc,
		MaxBodyBytes: 1 << 20,
		Tracing:      tr.Middleware(),
		Exemplars:    tr.Exporting(),
		RateLimit:    ratelimit.Middleware(limiter, ratelimit.MiddlewareOptions{Logger: logger}),
	})
	conns := observability.NewConnMetrics(reg, logger)
	reg.MustRegister(observability.NewKernelCollector("/proc", logger))
	pub := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       75 * time.Second,
		ConnState:         conns.ConnState,
		ErrorLog:          observability.ServerErrorLog(logger, reg, conns),
		BaseContext:       func(net.Listener) context.Context { return context.Background() },
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.public = ln.Addr().String()
	go pub.Serve(conns.Listener(ln))
	adm := &http.Server{Handler: server.NewAdmin(server.AdminDeps{Logger: logger, Gatherer: reg})}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.admin = aln.Addr().String()
	go adm.Serve(aln)
	t.Cleanup(func() { pub.Close(); adm.Close() })
	return s
}

// do sends a GET with extra headers and returns status and body.
func do(t *testing.T, url string, headers map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape fetches the admin /metrics in the given format ("" = text).
func scrape(t *testing.T, s *stack, accept string) string {
	t.Helper()
	h := map[string]string{}
	if accept != "" {
		h["Accept"] = accept
	}
	code, body := do(t, "http://"+s.admin+"/metrics", h)
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	return body
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
