package observability

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/otel/trace"
)

// The hand-written access line must be byte-for-byte what slog's JSON
// handler writes for the same record, for any string a client can send.
func TestAccessLineMatchesSlog(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	spans := []trace.SpanContext{trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}), {}}
	paths := []string{"/api/v1/ping", `/a"b\c`, "/tab\there\nnl\x01\x1f", "/bad\xff\xfeutf8", "/line\u2028sep\u2029", "/ünï/😀", "<>&", ""}
	for i, p := range paths {
		sc := spans[i%len(spans)]
		lat := []int64{38, 0, 1000, 1_234_567, 2_000_000_123}[i%5]
		tm := time.Date(2026, 11, 25, 9, 23, 59, []int{275381233, 0, 120000000}[i%3], []*time.Location{time.UTC, time.FixedZone("x", 3600)}[i%2])
		l := accessLine{
			time: tm, level: "INFO",
			method: "GET", route: "/api/v1/items/:id", path: p, status: 499, latencyUS: lat, bytes: 85,
			clientIP: "192.0.2.1", requestID: "abc-1", span: sc,
		}
		var got bytes.Buffer
		if err := l.write(&got); err != nil {
			t.Fatal(err)
		}
		var want bytes.Buffer
		h := slog.NewJSONHandler(&want, nil)
		r := slog.NewRecord(l.time, slog.LevelInfo, "request", 0)
		r.AddAttrs(
			slog.String("method", l.method), slog.String("route", l.route), slog.String("path", l.path),
			slog.Int("status", l.status), slog.Float64("latency_ms", float64(l.latencyUS)/1000), slog.Int("bytes", l.bytes),
			slog.String("client_ip", l.clientIP), slog.String("request_id", l.requestID),
			slog.String("trace_id", traceIDOrEmpty(sc)), slog.String("span_id", spanIDOrEmpty(sc)),
		)
		if err := h.Handle(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		if got.String() != want.String() {
			t.Errorf("path %q:\n got %s\nwant %s", p, got.String(), want.String())
		}
	}
}

func traceIDOrEmpty(sc trace.SpanContext) string {
	if sc.IsValid() {
		return sc.TraceID().String()
	}
	return ""
}

func spanIDOrEmpty(sc trace.SpanContext) string {
	if sc.IsValid() {
		return sc.SpanID().String()
	}
	return ""
}

func BenchmarkAccessLine(b *testing.B) {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	l := accessLine{
		time: time.Now(), level: "INFO",
		method: "GET", route: "/api/v1/ping", path: "/api/v1/ping", status: 200, latencyUS: 38, bytes: 18,
		clientIP: "192.0.2.1", requestID: "4bf92f3577b34da6a3ce929d0e0e4736",
		span: trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}),
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = l.write(io.Discard)
	}
}

// A path past MaxLoggedPath is cut at a UTF-8 boundary and says how much
// was left out; shorter ones are logged as they are.
func TestLoggedPath(t *testing.T) {
	long := "/" + strings.Repeat("a", 30<<10)
	emoji := "/" + strings.Repeat("a", MaxLoggedPath-3) + "😀" + "tail" // the rune straddles the limit
	for _, tc := range []struct {
		in, want string
	}{
		{"/api/v1/ping", "/api/v1/ping"},
		{long[:MaxLoggedPath], long[:MaxLoggedPath]},
		{long[:MaxLoggedPath+1], long[:MaxLoggedPath] + "…(+1 bytes)"},
		{long, long[:MaxLoggedPath] + "…(+" + strconv.Itoa(len(long)-MaxLoggedPath) + " bytes)"},
		{emoji, emoji[:MaxLoggedPath-2] + "…(+" + strconv.Itoa(len(emoji)-(MaxLoggedPath-2)) + " bytes)"},
	} {
		got := cutLong(tc.in)
		if got != tc.want {
			t.Errorf("cutLong(%d bytes) = %.40q… (%d bytes), want %d bytes", len(tc.in), got, len(got), len(tc.want))
		}
		if !utf8.ValidString(got) {
			t.Errorf("cutLong(%d bytes) is not valid UTF-8", len(tc.in))
		}
	}
	// Bytes that are not UTF-8 at the limit: cut at the limit all the same.
	bad := "/" + strings.Repeat("\x80", MaxLoggedPath+10)
	if got := cutLong(bad); !strings.HasPrefix(got, bad[:MaxLoggedPath-utf8.UTFMax]) || len(got) > MaxLoggedPath+20 {
		t.Errorf("cutLong(invalid UTF-8) = %d bytes", len(got))
	}
}

// Probes are measured but not logged; a probe that answers 5xx (readiness
// while the service starts or shuts down) is logged at WARN, not ERROR,
// while any other route's 5xx stays an ERROR.
func TestQuietRoutesFailAtWarn(t *testing.T) {
	e, _, _, logs := accessEngine(AccessOptions{Quiet: []string{"/readyz"}})
	ready := http.StatusOK
	e.GET("/readyz", func(c *gin.Context) { c.Status(ready) })
	e.GET("/work", func(c *gin.Context) { c.Status(http.StatusServiceUnavailable) })
	get := func(path string) {
		w := httptest.NewRecorder()
		e.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
	}
	get("/readyz")
	if strings.Contains(logs.String(), `"route":"/readyz"`) {
		t.Fatalf("a passing probe was logged:\n%s", logs)
	}
	ready = http.StatusServiceUnavailable
	get("/readyz")
	get("/work")
	var probe, work map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		switch m["route"] {
		case "/readyz":
			probe = m
		case "/work":
			work = m
		}
	}
	if probe["level"] != "WARN" || probe["status"] != float64(503) {
		t.Errorf("failing probe's line: %v, want WARN 503", probe)
	}
	if work["level"] != "ERROR" {
		t.Errorf("another route's 503: %v, want ERROR", work)
	}
}
