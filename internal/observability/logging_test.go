package observability

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/problem"
	"github.com/hardenedgo/ginservice/internal/testkit"

	"go.opentelemetry.io/otel/trace"
)

func TestLoggerAddsTraceIDs(t *testing.T) {
	var buf bytes.Buffer
	logger, err := NewLogger(&buf, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))

	logger.With(slog.String("component", "x")).WithGroup("g").InfoContext(ctx, "with span", slog.Int("n", 1))
	logger.InfoContext(context.Background(), "without span")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("lines: %q", lines)
	}
	var with, without map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &with); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &without); err != nil {
		t.Fatal(err)
	}
	// Inside a group the ids land in the group; they are still on the line.
	if !strings.Contains(lines[0], `"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"`) || !strings.Contains(lines[0], `"span_id":"00f067aa0ba902b7"`) || with["component"] != "x" {
		t.Errorf("line with a span: %s", lines[0])
	}
	if _, ok := without["trace_id"]; ok {
		t.Errorf("line without a span has a trace_id: %s", lines[1])
	}
	if _, err := NewLogger(&buf, "loud", "json"); err == nil {
		t.Error("bad level accepted")
	}
	if _, err := NewLogger(&buf, "info", "xml"); err == nil {
		t.Error("bad format accepted")
	}
}

// Through a BufferedWriter, info lines wait for the interval while a
// warning flushes everything before it at once.
func TestWarningsFlushBufferedLog(t *testing.T) {
	var out testkit.SyncBuffer
	bw := NewBufferedWriter(&out, 32<<10, time.Hour)
	defer bw.Close()
	logger, err := NewLogger(bw, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	logger.Info("first")
	if out.String() != "" {
		t.Fatalf("info line written through at once: %q", out.String())
	}
	logger.With(slog.String("k", "v")).Warn("trouble")
	s := out.String()
	if !strings.Contains(s, `"msg":"first"`) || !strings.Contains(s, `"msg":"trouble"`) || strings.Index(s, "first") > strings.Index(s, "trouble") {
		t.Fatalf("warning did not flush in order: %q", s)
	}
}

// A line written with a context that carries a request ID gets request_id,
// with or without a span; one that names its request itself keeps its own
// (one key per line).
func TestLoggerAddsRequestID(t *testing.T) {
	var buf bytes.Buffer
	logger, err := NewLogger(&buf, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	ctx := problem.WithRequestID(context.Background(), "rid-1")
	logger.InfoContext(ctx, "in a request")
	logger.InfoContext(ctx, "names its own", slog.String("request_id", "rid-own"))
	logger.InfoContext(context.Background(), "outside any request")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("lines: %q", lines)
	}
	for i, want := range []string{`"request_id":"rid-1"`, `"request_id":"rid-own"`, ""} {
		if n := strings.Count(lines[i], `"request_id"`); want == "" && n != 0 || want != "" && (n != 1 || !strings.Contains(lines[i], want)) {
			t.Errorf("line %d: %s, want %q once", i, lines[i], want)
		}
	}
}

// LOG_FORMAT, like LOG_LEVEL, is read without regard to case.
func TestLoggerFormatAnyCase(t *testing.T) {
	for format, want := range map[string]string{"TEXT": "level=INFO msg=hello", "Json": `"level":"INFO","msg":"hello"`} {
		var buf bytes.Buffer
		logger, err := NewLogger(&buf, "Info", format)
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		logger.Info("hello")
		if !strings.Contains(buf.String(), want) {
			t.Errorf("LOG_FORMAT=%s wrote %q, want %s", format, buf.String(), want)
		}
	}
}
