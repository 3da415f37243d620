package ratelimit

import (
	"context"
	"errors"
	"net"
	"reflect"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/hardenedgo/ginservice/internal/connerr"
)

// redisSpans gives each Redis decision a traced request waits for a client
// span of its own, in that request's trace. The backend coalesces
// concurrent calls into one pipeline, so the pipeline is no single
// request's work: one span for it, parented to whichever call came first,
// would leave every other request of the batch without its Redis span and
// put the whole batch into one request's trace. A call's span covers what
// its request waited: the queue for the next pipeline and the round trip;
// db.operation.batch.size says how many calls shared that round trip.
// scopeName is the instrumentation scope of the Redis spans: this package's
// import path, read at run time so a service made from the template with
// gonew reports its own module.
var scopeName = reflect.TypeOf(redisSpans{}).PkgPath()

type redisSpans struct {
	tracer trace.Tracer
	attrs  []attribute.KeyValue // db.system.name, db.namespace, the node (single node)
}

func newRedisSpans(tp trace.TracerProvider, rdb redis.UniversalClient) *redisSpans {
	if tp == nil {
		return nil
	}
	s := &redisSpans{
		tracer: tp.Tracer(scopeName),
		attrs:  []attribute.KeyValue{semconv.DBSystemNameRedis},
	}
	if c, ok := rdb.(*redis.Client); ok {
		o := c.Options()
		s.attrs = append(s.attrs, semconv.DBNamespace(strconv.Itoa(o.DB)))
		s.attrs = append(s.attrs, serverAttrs(o.Addr)...)
	}
	return s
}

// serverAttrs are server.address and server.port of a node's host:port.
func serverAttrs(addr string) []attribute.KeyValue {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil
	}
	p, _ := strconv.Atoi(port)
	return []attribute.KeyValue{semconv.ServerAddress(host), semconv.ServerPort(p)}
}

// start begins the span of one decision when ctx carries a recording span
// (a sampled request); otherwise it returns ctx and a nil span. node is the
// Cluster master's address, "" for a single node. Calls outside requests
// (the probes) get no span: as root spans, repeated every probe interval
// during an outage, they would be noise.
func (s *redisSpans) start(ctx context.Context, node string) (context.Context, trace.Span) {
	if s == nil || !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, nil
	}
	attrs := s.attrs
	if node != "" {
		attrs = append(attrs[:len(attrs):len(attrs)], serverAttrs(node)...)
	}
	return s.tracer.Start(ctx, "EVALSHA", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
}

// end ends a span start began (nil: nothing to do) with what the call got.
func endRedisSpan(span trace.Span, rep reply, err error) {
	if span == nil {
		return
	}
	op := "EVALSHA"
	if rep.eval {
		op = "EVAL" // NOSCRIPT: the script was sent again in full
		span.SetName(op)
	}
	span.SetAttributes(semconv.DBOperationName(op))
	if rep.batch > 1 {
		span.SetAttributes(semconv.DBOperationBatchSize(rep.batch))
	}
	if err != nil {
		var re redis.Error // an error reply: its first word (ERR, READONLY, ...)
		if errors.As(err, &re) {
			code, _, _ := strings.Cut(re.Error(), " ")
			span.SetAttributes(semconv.DBResponseStatusCode(code))
		}
		span.SetAttributes(semconv.ErrorTypeKey.String(redisErrorType(err)))
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// redisErrorType is a decision's error.type: timeout (the budget ran out),
// queue_full, canceled (the request went away), closed, the error reply's
// first word, or refused, reset, eof; _OTHER for the rest.
func redisErrorType(err error) string {
	var re redis.Error
	switch {
	case errors.Is(err, errQueueFull):
		return "queue_full"
	case errors.Is(err, errClosed):
		return "closed"
	case errors.Is(err, errBudget), outOfTime(err):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &re):
		code, _, _ := strings.Cut(re.Error(), " ")
		return code
	}
	if k := connerr.Kind(err); k != "" {
		return k
	}
	return semconv.ErrorTypeOther.Value.AsString()
}
