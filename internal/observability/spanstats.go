package observability

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// spanStats follows the sampled spans from the end of each span to the
// collector: how many the batch processor was handed, how many the
// collector accepted, and how many were in batches whose export failed.
// The SDK's batch processor drops spans silently when its queue is full
// (a collector that is down or slower than the traffic); the difference
// queued - exported - failed is those drops, plus at most one queue and
// one batch still on their way.
type spanStats struct {
	queued, exported, failed atomic.Uint64
	// handed counts the spans given to the exporter (exported, failed or
	// being sent); unsent is how many the batch processor holds at most
	// before it drops one (its queue and the batch being filled).
	handed atomic.Uint64
	unsent uint64
	// dropLog, once InstallGlobal has run, says that spans are being
	// dropped: queued - handed beyond unsent cannot all be held, the
	// queue is full.
	dropLog atomic.Pointer[limitedLog]
}

const spansDroppedMsg = "tracing: spans dropped"

// countingProcessor counts the sampled spans handed to the batch
// processor it wraps (the only ones it exports).
type countingProcessor struct {
	sdktrace.SpanProcessor
	stats *spanStats
}

func (p countingProcessor) OnEnd(s sdktrace.ReadOnlySpan) {
	if s.SpanContext().IsSampled() {
		st := p.stats
		if q := st.queued.Add(1); q-st.handed.Load() > st.unsent {
			if l := st.dropLog.Load(); l != nil {
				l.Log(context.Background(), slog.LevelWarn, spansDroppedMsg,
					slog.String("detail", "the export queue is full: the collector is down or slower than the traffic; raise OTEL_BSP_MAX_QUEUE_SIZE or lower the sampling ratio"))
			}
		}
	}
	p.SpanProcessor.OnEnd(s)
}

// countingExporter counts the outcome of every batch the processor exports.
type countingExporter struct {
	sdktrace.SpanExporter
	stats *spanStats
}

func (e countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.stats.handed.Add(uint64(len(spans)))
	err := e.SpanExporter.ExportSpans(ctx, spans)
	if err != nil {
		e.stats.failed.Add(uint64(len(spans)))
	} else {
		e.stats.exported.Add(uint64(len(spans)))
	}
	return err
}

// newCountingBatcher is sdktrace.WithBatcher(exporter, opts...) with both
// ends counted in stats.
func newCountingBatcher(exporter sdktrace.SpanExporter, stats *spanStats, opts ...sdktrace.BatchSpanProcessorOption) sdktrace.SpanProcessor {
	return countingProcessor{
		SpanProcessor: sdktrace.NewBatchSpanProcessor(countingExporter{SpanExporter: exporter, stats: stats}, opts...),
		stats:         stats,
	}
}

// Collectors are the span export counters, registered whatever the
// tracing mode (they stay 0 while nothing is exported), so dashboards and
// alerts find the series:
//
//	tracing_spans_queued_total         sampled spans handed to the exporter's queue
//	tracing_spans_exported_total       spans the collector accepted
//	tracing_spans_export_failed_total  spans in batches whose export failed
func (t *Tracing) Collectors() []prometheus.Collector {
	st := t.stats
	if st == nil {
		st = &spanStats{} // not exporting: counters that stay 0
	}
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
			return float64(v.Load())
		})
	}
	return []prometheus.Collector{
		counter("tracing_spans_queued_total",
			"Sampled spans handed to the OTLP exporter's queue. Minus exported and failed: spans dropped because the queue was full (collector down or too slow), plus at most one queue and one batch in flight.",
			&st.queued),
		counter("tracing_spans_exported_total", "Spans the OTLP collector accepted.", &st.exported),
		counter("tracing_spans_export_failed_total",
			"Spans in export batches that failed: collector unreachable, refusing, or slower than OTEL_BSP_EXPORT_TIMEOUT.",
			&st.failed),
	}
}
