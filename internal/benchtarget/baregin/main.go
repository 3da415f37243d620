// Command baregin is the baseline of scripts/bench-http.sh: a bare gin.New()
// engine serving GET /api/v1/ping with the same bytes and content type as the
// real service, on a plain http.Server as gin's own Run() builds it. The
// difference between the two is the cost of the service's middleware chain
// and server tuning. With BARE_TUNED=1 it serves on the service's own
// http.Server (server.NewHTTPServer, default timeouts): the difference is
// then the chain alone. With BARE_OTEL=1 the engine is instrumented the
// stock way a team adds OpenTelemetry to a Gin service: otelgin's
// middleware, an SDK tracer provider with a batching OTLP/HTTP exporter, its
// sampler and endpoint from the standard OTEL_* variables; the difference to
// bare is then what stock tracing costs, for comparison with the service's
// own tracing. With PPROF_ADDR set it also serves net/http/pprof there
// (scripts/bench-http.sh -p profiles both sides alike).
//
//	HTTP_ADDR=127.0.0.1:0 baregin   # prints "listening 127.0.0.1:PORT"
//	PPROF_ADDR=127.0.0.1:0 ...      # also prints "pprof 127.0.0.1:PORT"
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/contrib/instrumentation/github.com/gin-gonic/gin/otelgin"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/hardenedgo/ginservice/internal/config"
	"github.com/hardenedgo/ginservice/internal/server"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "baregin:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := os.Getenv("HTTP_ADDR")
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	if os.Getenv("BARE_OTEL") == "1" {
		shutdown, err := stockTracing(e)
		if err != nil {
			return err
		}
		defer shutdown()
	}
	pong := []byte(`{"message":"pong"}`)
	e.GET("/api/v1/ping", func(c *gin.Context) {
		c.Data(http.StatusOK, "application/json; charset=utf-8", pong)
	})

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	if a := os.Getenv("PPROF_ADDR"); a != "" {
		pln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("listen %s: %w", a, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		go func() { _ = http.Serve(pln, mux) }()
		fmt.Println("pprof", pln.Addr())
	}
	fmt.Println("listening", ln.Addr())

	// Like gin's Engine.Run: no timeouts. ReadHeaderTimeout only, so an
	// abandoned benchmark connection cannot pin a goroutine forever; it
	// costs one deadline per request, as in the service.
	srv := &http.Server{Handler: e, ReadHeaderTimeout: 10 * time.Second}
	if os.Getenv("BARE_TUNED") == "1" {
		// The service's http.Server exactly (timeouts, header limit, error
		// log) with the embedded defaults: the difference to the service is
		// then the middleware chain alone.
		cfg, err := config.Load(func(string) string { return "" })
		if err != nil {
			return err
		}
		logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
		srv = server.NewHTTPServer(e, server.Timeouts{
			ReadHeader: cfg.ReadHeaderTimeout, Read: cfg.ReadTimeout, Write: cfg.WriteTimeout, Idle: cfg.IdleTimeout,
		}, cfg.MaxHeaderBytes, logger)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// stockTracing instruments e with otelgin and an SDK tracer provider set up
// from the OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT,
// OTEL_TRACES_SAMPLER and its argument), W3C trace context and baggage.
func stockTracing(e *gin.Engine) (func(), error) {
	exp, err := otlptracehttp.New(context.Background())
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	e.Use(otelgin.Middleware("baregin"))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tp.Shutdown(ctx)
	}, nil
}
