package resilience_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hardenedgo/ginservice/internal/health"
	"github.com/hardenedgo/ginservice/internal/items"
	"github.com/hardenedgo/ginservice/internal/observability"
	"github.com/hardenedgo/ginservice/internal/resilience"
	"github.com/hardenedgo/ginservice/internal/server"
)

// BenchmarkItemsPath compares GET /api/v1/items/:id of the service (Gin
// middleware chain, ItemSource, breaker, resilient client, one loopback
// round trip to the dependency) with a direct call to the dependency (the
// same loopback round trip, plain http.Client).
func BenchmarkItemsPath(b *testing.B) {
	dep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/items/")
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(items.Item{ID: id, Name: "item " + id, Price: 100})
	}))
	b.Cleanup(dep.Close)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()

	client, err := resilience.NewClient(resilience.DefaultClientConfig(), logger, reg, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(client.CloseIdleConnections)
	httpSrc, err := items.NewHTTPSource(dep.URL, client)
	if err != nil {
		b.Fatal(err)
	}
	br, err := resilience.NewHystrixBreaker("items", resilience.DefaultBreakerConfig(), logger, reg)
	if err != nil {
		b.Fatal(err)
	}
	src, err := resilience.NewItemSource(httpSrc, br, logger, reg)
	if err != nil {
		b.Fatal(err)
	}
	readiness := health.NewReadiness()
	readiness.SetReady()
	h := server.NewServer(server.Deps{
		Logger:       logger,
		Metrics:      observability.NewHTTPMetrics(reg),
		Readiness:    readiness,
		Items:        src,
		MaxBodyBytes: 1 << 20,
	})
	svc := httptest.NewServer(h)
	b.Cleanup(svc.Close)

	plainTr := http.DefaultTransport.(*http.Transport).Clone()
	plainTr.MaxIdleConnsPerHost = 128
	b.Cleanup(plainTr.CloseIdleConnections)
	plain := &http.Client{Transport: plainTr}
	direct, err := items.NewHTTPSource(dep.URL, plain)
	if err != nil {
		b.Fatal(err)
	}

	get := func(b *testing.B, url string) {
		resp, err := plain.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Degraded") != "" {
			b.Fatalf("status %d, X-Degraded %q", resp.StatusCode, resp.Header.Get("X-Degraded"))
		}
	}

	b.Run("direct-dependency-call", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := direct.Get(context.Background(), "42"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("service-handler-in-process", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/items/42", nil))
			if rec.Code != http.StatusOK || rec.Header().Get("X-Degraded") != "" {
				b.Fatalf("status %d, X-Degraded %q", rec.Code, rec.Header().Get("X-Degraded"))
			}
		}
	})
	b.Run("dependency-over-loopback-GET", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			get(b, dep.URL+"/items/42")
		}
	})
	b.Run("service-over-loopback-GET", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			get(b, svc.URL+"/api/v1/items/42")
		}
	})
}
