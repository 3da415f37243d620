package server_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hardenedgo/ginservice/internal/health"
	"github.com/hardenedgo/ginservice/internal/items"
	"github.com/hardenedgo/ginservice/internal/observability"
	"github.com/hardenedgo/ginservice/internal/ratelimit"
	"github.com/hardenedgo/ginservice/internal/server"
)

// netHTTPWriter does what net/http's response does with the handler's
// headers on every request (clone them when the status is written, then
// serialise them sorted), so extra response headers cost here what they
// cost on a real connection.
type netHTTPWriter struct {
	h       http.Header
	written bool
}

func (w *netHTTPWriter) Header() http.Header { return w.h }
func (w *netHTTPWriter) WriteHeader(int) {
	if w.written {
		return
	}
	w.written = true
	_ = w.h.Clone().Write(io.Discard)
}
func (w *netHTTPWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(b), nil
}

// benchServeParallel is benchServe from GOMAXPROCS goroutines at once, as
// under real load: shared counters, gauges and locks then bounce between
// cores, which a single goroutine never shows.
func benchServeParallel(b *testing.B, h http.Handler) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		serveOne := pingServer(h)
		for pb.Next() {
			serveOne()
		}
	})
}

func benchServe(b *testing.B, h http.Handler) {
	serveOne := pingServer(h)
	b.ReportAllocs()
	for b.Loop() {
		serveOne()
	}
}

// pingServer returns a function that serves one GET /api/v1/ping, as wrk
// sends it, through h into a reused writer.
func pingServer(h http.Handler) func() {
	req := httptest.NewRequest(http.MethodGet, "/api/v1/ping", nil)
	req.RemoteAddr = "10.1.2.3:4567"
	req.Header.Set("User-Agent", "wrk")
	w := &netHTTPWriter{h: http.Header{}}
	return func() {
		clear(w.h)
		w.written = false
		h.ServeHTTP(w, req)
	}
}

// fullChain is the public handler as cmd/api builds it on its embedded
// defaults: request ID, tracing (not exporting), access metrics and log
// line (JSON, batched), recovery, body limit, the in-memory rate limiter
// (set out of the way, as in scripts/bench-http.sh).
func fullChain(b *testing.B, level string) http.Handler {
	return tracedChain(b, level, nil)
}

// tracedChain is fullChain with tracing set up from env (nil: the
// embedded defaults, not exporting).
func tracedChain(b *testing.B, level string, env map[string]string) http.Handler {
	ctx := context.Background()
	bw := observability.NewBufferedWriter(io.Discard, 64<<10, 100*time.Millisecond)
	b.Cleanup(func() { bw.Close() })
	logger, err := observability.NewLogger(bw, level, "json")
	if err != nil {
		b.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	tr, err := observability.SetupTracing(ctx, func(k string) string { return env[k] }, "bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_ = tr.Shutdown(sctx)
	})
	rl, err := ratelimit.New(ctx, ratelimit.Config{Rate: 1e9, Burst: 1e9, OnRedisError: "local", Instances: 1, RedisTimeout: 20 * time.Millisecond}, logger, reg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rl.Close() })
	rd := health.NewReadiness()
	rd.SetReady()
	return server.NewServer(server.Deps{
		Logger:       logger,
		Metrics:      observability.NewHTTPMetrics(reg),
		Readiness:    rd,
		Items:        items.NewSimulated(),
		MaxBodyBytes: 1 << 20,
		Tracing:      tr.Middleware(),
		Exemplars:    tr.Exporting(),
		RateLimit:    ratelimit.Middleware(rl, ratelimit.MiddlewareOptions{Logger: logger}),
	})
}

func bareGin() *gin.Engine {
	e := gin.New()
	pong := []byte(`{"message":"pong"}`)
	e.GET("/api/v1/ping", func(c *gin.Context) { c.Data(http.StatusOK, "application/json; charset=utf-8", pong) })
	return e
}

// BenchmarkChain is one GET /api/v1/ping through a bare gin.New() engine
// and through the service's whole public chain, in process. The
// difference is the chain's CPU cost per request; scripts/bench-http.sh
// measures the same over real connections.
func BenchmarkChain(b *testing.B) {
	b.Run("bare_gin", func(b *testing.B) { benchServe(b, bareGin()) })
	b.Run("full", func(b *testing.B) { benchServe(b, fullChain(b, "info")) })
	b.Run("full_log_warn", func(b *testing.B) { benchServe(b, fullChain(b, "warn")) })
	for _, ratio := range []string{"0", "0.01", "1"} {
		b.Run("full_traced_"+ratio, func(b *testing.B) {
			benchServe(b, tracedChain(b, "info", map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": otlpDiscard(b), "OTEL_TRACES_SAMPLER_ARG": ratio,
			}))
		})
	}
	b.Run("parallel/bare_gin", func(b *testing.B) { benchServeParallel(b, bareGin()) })
	b.Run("parallel/full", func(b *testing.B) { benchServeParallel(b, fullChain(b, "info")) })
	b.Run("parallel/full_log_warn", func(b *testing.B) { benchServeParallel(b, fullChain(b, "warn")) })
}

// otlpDiscard is an OTLP/HTTP endpoint on loopback that reads and drops
// what it is sent, so exporting costs the service what it costs against a
// collector.
func otlpDiscard(b *testing.B) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	b.Cleanup(srv.Close)
	return srv.URL
}
