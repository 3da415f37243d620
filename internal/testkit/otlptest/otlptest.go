// Package otlptest is a minimal OTLP/HTTP trace collector on loopback for
// tests: it decodes ExportTraceServiceRequest protobufs (gzip or plain) the
// way Jaeger's OTLP endpoint does and keeps the spans.
package otlptest

import (
	"compress/gzip"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Receiver collects the spans exported to URL.
type Receiver struct {
	// URL is the base to use as OTEL_EXPORTER_OTLP_ENDPOINT.
	URL string

	mu       sync.Mutex
	spans    []*tracepb.Span
	resource []*commonpb.KeyValue
	requests atomic.Int64
}

// Start serves POST /v1/traces on a free loopback port until the test ends.
// A request that is not a protobuf ExportTraceServiceRequest fails the test.
func Start(t testing.TB) *Receiver {
	t.Helper()
	return start(t, nil)
}

// StartTLS is Start over TLS with cert; with clientCAs it also demands a
// client certificate signed by one of them (mutual TLS). URL is https://.
func StartTLS(t testing.TB, cert tls.Certificate, clientCAs *x509.CertPool) *Receiver {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAs != nil {
		cfg.ClientCAs, cfg.ClientAuth = clientCAs, tls.RequireAndVerifyClientCert
	}
	return start(t, cfg)
}

func start(t testing.TB, tlsCfg *tls.Config) *Receiver {
	t.Helper()
	rc := &Receiver{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", func(w http.ResponseWriter, r *http.Request) {
		rc.requests.Add(1)
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		b, err := io.ReadAll(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
			t.Errorf("exporter sent Content-Type %q", ct)
		}
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(b, &req); err != nil {
			t.Errorf("undecodable OTLP request: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		for _, rs := range req.GetResourceSpans() {
			rc.resource = rs.GetResource().GetAttributes()
			for _, ss := range rs.GetScopeSpans() {
				rc.spans = append(rc.spans, ss.GetSpans()...)
			}
		}
		rc.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0)}
	scheme := "http"
	if tlsCfg != nil {
		ln, scheme = tls.NewListener(ln, tlsCfg), "https"
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	rc.URL = scheme + "://" + ln.Addr().String()
	return rc
}

// Spans returns a copy of the spans received so far.
func (rc *Receiver) Spans() []*tracepb.Span {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]*tracepb.Span(nil), rc.spans...)
}

// Resource returns the resource attributes of the latest export.
func (rc *Receiver) Resource() []*commonpb.KeyValue {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.resource
}

// Requests is the number of export requests received.
func (rc *Receiver) Requests() int64 { return rc.requests.Load() }

// WaitTraces waits until a span of each hex trace id has arrived and returns
// all spans; it fails the test after 10s.
func (rc *Receiver) WaitTraces(t testing.TB, traceIDs ...string) []*tracepb.Span {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		spans := rc.Spans()
		seen := map[string]bool{}
		for _, sp := range spans {
			seen[hex.EncodeToString(sp.GetTraceId())] = true
		}
		all := true
		for _, tr := range traceIDs {
			all = all && seen[tr]
		}
		if all {
			return spans
		}
		if time.Now().After(deadline) {
			t.Fatalf("spans of %v not exported within 10s (got %d spans)", traceIDs, len(spans))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
