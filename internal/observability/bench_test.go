package observability_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/github.com/gin-gonic/gin/otelgin"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/hardenedgo/ginservice/internal/health"
	"github.com/hardenedgo/ginservice/internal/items"
	"github.com/hardenedgo/ginservice/internal/observability"
	"github.com/hardenedgo/ginservice/internal/server"
)

// discardWriter is the cheapest http.ResponseWriter, so the benchmark
// measures the middleware and not a recorder.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}

var pong = []byte(`{"message":"pong"}`)

func pingEngine(mw ...gin.HandlerFunc) *gin.Engine {
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.ContextWithFallback = true
	e.Use(mw...)
	e.GET("/api/v1/ping", func(c *gin.Context) { c.Data(http.StatusOK, "application/json; charset=utf-8", pong) })
	return e
}

func serve(b *testing.B, h http.Handler, headers map[string]string) {
	req := httptest.NewRequest(http.MethodGet, "/api/v1/ping", nil)
	req.RemoteAddr = "10.1.2.3:4567"
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
	}
}

func benchTracing(b *testing.B, env map[string]string) *observability.Tracing {
	tr, err := observability.SetupTracing(context.Background(), func(k string) string { return env[k] }, "bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tr.Shutdown(ctx)
	})
	return tr
}

func accessMW(b *testing.B) gin.HandlerFunc {
	logger, err := observability.NewLogger(io.Discard, "info", "json")
	if err != nil {
		b.Fatal(err)
	}
	return observability.Access(logger, observability.NewHTTPMetrics(prometheus.NewRegistry()), observability.AccessOptions{})
}

// BenchmarkObservabilityOverhead: one GET /api/v1/ping through a bare Gin
// engine, then with this package's middleware (access log + RED metrics,
// then server spans in each tracing mode). The differences to "bare" are
// the per-request cost. Exporting variants send to a loopback OTLP
// receiver.
func BenchmarkObservabilityOverhead(b *testing.B) {
	b.Run("bare_gin", func(b *testing.B) { serve(b, pingEngine(), nil) })
	b.Run("access_log+metrics", func(b *testing.B) { serve(b, pingEngine(accessMW(b)), nil) })
	b.Run("access_log_off+metrics", func(b *testing.B) {
		logger, _ := observability.NewLogger(io.Discard, "warn", "json")
		serve(b, pingEngine(observability.Access(logger, observability.NewHTTPMetrics(prometheus.NewRegistry()), observability.AccessOptions{})), nil)
	})

	type mode struct {
		name    string
		env     func(rc string) map[string]string
		headers map[string]string
	}
	sampledParent := map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	modes := []mode{
		{"tracing_disabled_noop", func(string) map[string]string { return map[string]string{"OTEL_SDK_DISABLED": "true"} }, nil},
		{"tracing_off_default", func(string) map[string]string { return nil }, nil},
		{"tracing_off_sampled_caller", func(string) map[string]string { return nil }, sampledParent},
		{"tracing_on_ratio0.01", func(rc string) map[string]string {
			return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rc}
		}, nil},
		{"tracing_on_ratio1.0", func(rc string) map[string]string {
			return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rc, "OTEL_TRACES_SAMPLER_ARG": "1"}
		}, nil},
	}
	for _, m := range modes {
		b.Run("access+"+m.name, func(b *testing.B) {
			rc := startReceiverB(b)
			tr := benchTracing(b, m.env(rc))
			serve(b, pingEngine(tr.Middleware(), accessMW(b)), m.headers)
		})
	}
	// otelgin with the same provider, for comparison with our middleware.
	b.Run("access+otelgin_ratio0.01", func(b *testing.B) {
		rc := startReceiverB(b)
		tr := benchTracing(b, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rc})
		og := otelgin.Middleware("api", otelgin.WithTracerProvider(tr.Provider()), otelgin.WithPropagators(tr.Propagator()),
			otelgin.WithMeterProvider(noop.NewMeterProvider()))
		serve(b, pingEngine(og, accessMW(b)), nil)
	})
	// The whole public chain of internal/server (request id, tracing,
	// access, recovery, body limit; no rate limiter), for scale.
	b.Run("server_chain+tracing_on_ratio0.01", func(b *testing.B) {
		rc := startReceiverB(b)
		tr := benchTracing(b, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rc})
		logger, _ := observability.NewLogger(io.Discard, "info", "json")
		rd := health.NewReadiness()
		rd.SetReady()
		h := server.NewServer(server.Deps{Logger: logger, Metrics: observability.NewHTTPMetrics(prometheus.NewRegistry()),
			Readiness: rd, Items: items.NewSimulated(), MaxBodyBytes: 1 << 20, Tracing: tr.Middleware(), Exemplars: tr.Exporting()})
		serve(b, h, nil)
	})
}

// startReceiverB is a discarding OTLP endpoint for benchmarks (decoding
// spans would be measured too).
func startReceiverB(b *testing.B) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	b.Cleanup(srv.Close)
	return srv.URL
}
