package resilience

import (
	"context"
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/hardenedgo/ginservice/internal/items"
)

// ItemSource is an items.Source that degrades instead of failing: it runs
// the dependency through a Breaker and, on open circuit, timeout,
// rejection, failure or panic, answers with a fallback item marked
// Degraded (and a nil error). items.ErrNotFound passes through untouched,
// and a caller who went away gets ctx.Err(): neither is a dependency
// failure.
type ItemSource struct {
	src       items.Source
	br        Breaker
	logger    *slog.Logger
	fallbacks *prometheus.CounterVec
}

var _ items.Source = (*ItemSource)(nil)

// NewItemSource wraps src with br.
func NewItemSource(src items.Source, br Breaker, logger *slog.Logger, reg prometheus.Registerer) (*ItemSource, error) {
	fb, err := registerCounterVec(reg, prometheus.CounterOpts{
		Name: "items_fallbacks_total",
		Help: "Items served from the fallback, by reason: open, timeout, rejected, panic, failure, caller_error.",
	}, []string{"reason"})
	if err != nil {
		return nil, err
	}
	for _, r := range []string{"open", "timeout", "rejected", "panic", "failure", "caller_error"} {
		fb.WithLabelValues(r)
	}
	return &ItemSource{src: src, br: br, logger: logger, fallbacks: fb}, nil
}

// Get implements items.Source.
func (s *ItemSource) Get(ctx context.Context, id string) (items.Item, error) {
	it, err := Execute(ctx, s.br,
		func(ctx context.Context) (items.Item, error) { return s.src.Get(ctx, id) },
		func(ctx context.Context, cause error) (items.Item, error) {
			return s.fallback(ctx, id, FallbackReason(cause), cause), nil
		})
	switch {
	case err == nil:
		return it, nil
	case ctx.Err() != nil:
		return items.Item{}, ctx.Err()
	case errors.Is(err, items.ErrNotFound):
		return items.Item{}, err
	default:
		// Another caller error (say a 400 from the dependency): it does not
		// count against the circuit, but it is still no reason for an error
		// page.
		return s.fallback(ctx, id, "caller_error", err), nil
	}
}

// fallback is the degraded answer: the id the client asked for and nothing
// the dependency would have told us.
func (s *ItemSource) fallback(ctx context.Context, id, reason string, cause error) items.Item {
	s.fallbacks.WithLabelValues(reason).Inc()
	trace.SpanFromContext(ctx).SetAttributes(
		attribute.Bool("item.degraded", true),
		attribute.String("item.fallback_reason", reason),
	)
	s.logger.DebugContext(ctx, "items fallback", slog.String("id", id), slog.String("reason", reason), slog.String("cause", cause.Error()))
	return items.Item{ID: id, Source: "fallback", Degraded: true}
}
