// Package observability holds the service's logs, metrics and traces: the
// slog set-up, the dedicated Prometheus registry, the HTTP RED middleware and
// access log, and the connection and kernel telemetry that explains EOFs.
package observability

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/trace"

	"github.com/hardenedgo/ginservice/internal/problem"
)

// NewLogger returns a slog logger writing JSON (or text) to w at level. Every
// record logged with a context that carries a span gets trace_id and span_id,
// one whose context carries a request ID (problem.WithRequestID) request_id.
// w must take concurrent writes (a *BufferedWriter, an *os.File): the access
// line is written to it directly, next to slog's handler and its lock.
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(strings.ToLower(level))); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler
	format = strings.ToLower(format) // as the level: "JSON" and "Text" too
	switch format {
	case "json", "":
		h = slog.NewJSONHandler(w, opts)
	case "text":
		h = slog.NewTextHandler(w, opts)
	default:
		return nil, fmt.Errorf("log format %q: want json or text", format)
	}
	th := traceHandler{Handler: h}
	if format != "text" {
		th.json, th.w = true, w
	}
	if f, ok := w.(flusher); ok {
		th.flush = f
	}
	return slog.New(th), nil
}

type flusher interface{ Flush() error }

// traceHandler adds trace_id and span_id from the record's context, and the
// request_id it carries (problem.WithRequestID) unless the line has one. When the
// writer is buffered (a BufferedWriter), warnings and errors are flushed at
// once: the lines before a crash are the ones that matter.
type traceHandler struct {
	slog.Handler
	flush flusher
	// The raw JSON sink, for the access line's hand-written encoder; unset
	// once attributes or groups are added (WithAttrs/WithGroup).
	json bool
	w    io.Writer
}

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	if id := problem.RequestIDFrom(ctx); id != "" && !hasAttr(r, "request_id") {
		r.AddAttrs(slog.String("request_id", id))
	}
	err := h.Handler.Handle(ctx, r)
	if h.flush != nil && r.Level >= slog.LevelWarn {
		if ferr := h.flush.Flush(); err == nil {
			err = ferr
		}
	}
	return err
}

func (h traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return traceHandler{Handler: h.Handler.WithAttrs(as), flush: h.flush}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{Handler: h.Handler.WithGroup(name), flush: h.flush}
}

// hasAttr reports whether r has a top-level attribute named key.
func hasAttr(r slog.Record, key string) bool {
	found := false
	r.Attrs(func(a slog.Attr) bool {
		found = a.Key == key
		return !found
	})
	return found
}
