// Command otlpsink is a minimal OTLP/HTTP trace receiver for
// scripts/bench-http.sh: it accepts POST /v1/traces (protobuf or JSON,
// optionally gzip), decodes protobuf batches to count spans, answers 200, and
// reports its counts on GET /stats. Tracing-on benchmark rounds export to it
// so the cost measured includes real span export, and the script can check
// spans actually arrived.
//
//	HTTP_ADDR=127.0.0.1:0 otlpsink   # prints "listening 127.0.0.1:PORT"
package main

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

type sink struct {
	requests atomic.Int64
	spans    atomic.Int64
	bytes    atomic.Int64
	bad      atomic.Int64
}

func (s *sink) traces(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	var body io.Reader = http.MaxBytesReader(w, r.Body, 64<<20)
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(body)
		if err != nil {
			s.bad.Add(1)
			http.Error(w, "bad gzip", http.StatusBadRequest)
			return
		}
		defer zr.Close()
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil {
		s.bad.Add(1)
		http.Error(w, "read body", http.StatusBadRequest)
		return
	}
	s.requests.Add(1)
	s.bytes.Add(int64(len(b)))
	ct := "application/x-protobuf"
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		// JSON export is counted as a request only; the benchmark uses
		// the default protobuf encoding.
		ct = "application/json"
	} else {
		var req coltrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(b, &req); err != nil {
			s.bad.Add(1)
			http.Error(w, "bad protobuf", http.StatusBadRequest)
			return
		}
		var n int64
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				n += int64(len(ss.GetSpans()))
			}
		}
		s.spans.Add(n)
	}
	// An empty ExportTraceServiceResponse: full success.
	w.Header().Set("Content-Type", ct)
	if ct == "application/json" {
		_, _ = w.Write([]byte("{}"))
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *sink) stats(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]int64{
		"requests": s.requests.Load(),
		"spans":    s.spans.Load(),
		"bytes":    s.bytes.Load(),
		"rejected": s.bad.Load(),
	})
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "otlpsink:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := os.Getenv("HTTP_ADDR")
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	s := &sink{}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/traces", s.traces)
	mux.HandleFunc("GET /stats", s.stats)

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	fmt.Println("listening", ln.Addr())

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	fmt.Fprintf(os.Stderr, "otlpsink: requests=%d spans=%d bytes=%d rejected=%d\n",
		s.requests.Load(), s.spans.Load(), s.bytes.Load(), s.bad.Load())
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
