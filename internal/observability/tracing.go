package observability

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/contrib/propagators/jaeger"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/credentials"

	"github.com/hardenedgo/ginservice/internal/clientip"
	"github.com/hardenedgo/ginservice/internal/striped"
)

// ScopeName is the instrumentation scope of the server spans: this
// package's import path, read at run time so a service made from the
// template with gonew reports its own module, not the template's.
var ScopeName = reflect.TypeOf(scopeMarker{}).PkgPath()

type scopeMarker struct{}

// Defaults of the tracing set-up where the OTEL_* variables are unset.
const (
	DefaultServiceName = "api"
	DefaultSampler     = "parentbased_traceidratio"
	// DefaultSamplerArg differs from the OpenTelemetry default (1.0): a
	// service under load must not export every request.
	DefaultSamplerArg  = 0.01
	DefaultPropagators = "tracecontext,baggage,jaeger"
)

// Tracing is the OpenTelemetry set-up of the process.
//
// With an exporter (OTEL_EXPORTER_OTLP_ENDPOINT set, or
// OTEL_TRACES_EXPORTER=otlp) spans are sampled by OTEL_TRACES_SAMPLER and
// exported in batches. Without one the provider is still an SDK provider whose
// sampler records only requests whose caller sampled them, so an incoming
// traceparent or uber-trace-id is continued (logs carry the caller's trace id,
// outbound calls carry it on) and nothing is exported. OTEL_SDK_DISABLED=true
// turns the SDK off entirely (no-op provider).
type Tracing struct {
	provider trace.TracerProvider
	// root is the exporting provider's sampler's rule for root spans: the
	// middleware decides root requests itself (see Middleware).
	root       rootRule
	sdk        *sdktrace.TracerProvider // nil with OTEL_SDK_DISABLED=true
	propagator propagation.TextMapPropagator
	exporting  bool
	// stats counts the exported spans' way to the collector (nil while
	// nothing is exported).
	stats       *spanStats
	serviceName string
	describe    string
	// errors is the SDK's error handler once InstallGlobal has run.
	errors *otelErrorHandler
	// open counts the recording server spans not yet ended: the first
	// Shutdown waits briefly for them (see spanSettle); settled marks that
	// it did, so a later one (a no-op) does not wait again.
	open    striped.Int64
	settled atomic.Bool
}

// spanSettle is how long Shutdown waits for the server spans still open:
// a request cut by the forced close can still be unwinding through its
// handlers (HTTP/2 handlers run on goroutines of their own, past the
// connection's close) and ends its span a moment later, after its access
// line. A span ended after the SDK's shutdown is lost.
const spanSettle = time.Second

// SetupTracing configures tracing from the standard OTEL_* variables read
// through getenv (never the process environment directly, so tests and
// callers control it). A bad value is an error naming the variable.
// Recognised: OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER (otlp|none),
// OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _PROTOCOL (http/protobuf|http/json|grpc),
// _HEADERS, _TIMEOUT (ms), _COMPRESSION (gzip|none), _INSECURE,
// OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER,
// OTEL_TRACES_SAMPLER_ARG, OTEL_PROPAGATORS, OTEL_BSP_SCHEDULE_DELAY,
// OTEL_BSP_EXPORT_TIMEOUT, OTEL_BSP_MAX_QUEUE_SIZE,
// OTEL_BSP_MAX_EXPORT_BATCH_SIZE.
func SetupTracing(ctx context.Context, getenv func(string) string, serviceVersion string) (*Tracing, error) {
	env := func(k string) string { return strings.TrimSpace(getenv(k)) }

	prop, err := parsePropagators(env("OTEL_PROPAGATORS"))
	if err != nil {
		return nil, err
	}
	attrs, err := parseHeaders(env("OTEL_RESOURCE_ATTRIBUTES"))
	if err != nil {
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	// OTEL_SERVICE_NAME wins over a service.name in
	// OTEL_RESOURCE_ATTRIBUTES, which wins over the default (as the SDK's
	// own resource detection orders them).
	t := &Tracing{propagator: prop, serviceName: firstNonEmpty(
		env("OTEL_SERVICE_NAME"), attrs[string(semconv.ServiceNameKey)], DefaultServiceName)}

	disabled, err := parseBoolVar("OTEL_SDK_DISABLED", env("OTEL_SDK_DISABLED"))
	if err != nil {
		return nil, err
	}
	if disabled {
		// No tracing at all: callers' trace context is neither continued
		// nor passed on (a no-op provider alone would still hand the
		// incoming headers through to the dependencies and the logs).
		t.provider = noop.NewTracerProvider()
		t.propagator = propagation.NewCompositeTextMapPropagator()
		t.describe = "disabled (OTEL_SDK_DISABLED=true)"
		return t, nil
	}

	exporting := false
	endpoint := firstNonEmpty(env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), env("OTEL_EXPORTER_OTLP_ENDPOINT"))
	switch exp := strings.ToLower(env("OTEL_TRACES_EXPORTER")); exp {
	case "":
		exporting = endpoint != ""
	case "otlp":
		exporting = true
	case "none":
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER: %q is not supported (want otlp or none)", exp)
	}

	res, err := buildResource(ctx, t.serviceName, serviceVersion, attrs)
	if err != nil {
		return nil, err
	}
	// Every variable is checked whether spans are exported or not: a
	// configuration that starts with tracing off starts with it on too, and
	// a bad value fails the deployment, not the day tracing is switched on.
	// (Without the check the SDK, which reads some of them from the process
	// environment itself, would log a plain-text line and carry on.)
	sampler, root, samplerDesc, err := parseSampler(env("OTEL_TRACES_SAMPLER"), env("OTEL_TRACES_SAMPLER_ARG"))
	if err != nil {
		return nil, err
	}
	expCfg, err := parseExporter(env)
	if err != nil {
		return nil, err
	}
	bspOpts, inQueue, err := batchOptions(env)
	if err != nil {
		return nil, err
	}
	if err := checkSpanLimits(getenv); err != nil { // untrimmed, as the SDK reads them
		return nil, err
	}

	if !exporting {
		// Continue sampled callers' traces (so the trace stays joined through
		// this service to its dependencies) but start none of our own.
		t.sdk = sdktrace.NewTracerProvider(
			sdktrace.WithResource(res),
			sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())),
		)
		t.provider = continueOnly{tp: t.sdk}
		t.describe = "off (no OTLP endpoint): incoming trace context is continued, nothing is exported"
		if strings.EqualFold(env("OTEL_TRACES_EXPORTER"), "none") {
			t.describe = "off (OTEL_TRACES_EXPORTER=none): incoming trace context is continued, nothing is exported"
		}
		return t, nil
	}

	exporter, expDesc, err := newExporter(ctx, expCfg)
	if err != nil {
		return nil, err
	}
	t.stats = &spanStats{unsent: inQueue}
	t.sdk = sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sampler),
		sdktrace.WithSpanProcessor(newCountingBatcher(exporter, t.stats, bspOpts...)),
		sdktrace.WithIDGenerator(idGenerator{}),
	)
	t.provider = t.sdk
	t.root = root
	t.exporting = true
	t.describe = expDesc + ", sampler " + samplerDesc
	return t, nil
}

// continueOnly is the tracer provider while nothing is exported: it starts
// a span only under a valid parent, a caller's trace being continued.
// Without one it starts none, so the outbound call or Redis command of a
// request that came without trace context carries no made-up trace id
// (which no line of this service's log would show) to the dependency.
type continueOnly struct {
	embedded.TracerProvider
	tp trace.TracerProvider
}

func (p continueOnly) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return continueOnlyTracer{t: p.tp.Tracer(name, opts...)}
}

type continueOnlyTracer struct {
	embedded.Tracer
	t trace.Tracer
}

func (t continueOnlyTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, trace.SpanFromContext(ctx)
	}
	return t.t.Start(ctx, name, opts...)
}

// SDKProvider is the SDK's tracer provider behind Provider (nil with
// OTEL_SDK_DISABLED=true): where span processors are registered.
func (t *Tracing) SDKProvider() *sdktrace.TracerProvider { return t.sdk }

// Provider is the tracer provider to hand to instrumented clients (Redis,
// outbound HTTP).
func (t *Tracing) Provider() trace.TracerProvider { return t.provider }

// Propagator reads and writes trace headers: W3C traceparent + baggage and
// Jaeger's uber-trace-id by default.
func (t *Tracing) Propagator() propagation.TextMapPropagator { return t.propagator }

// Exporting reports whether spans leave the process.
func (t *Tracing) Exporting() bool { return t.exporting }

// String describes the set-up for the start-up log line.
func (t *Tracing) String() string { return t.describe }

// LogValue makes the set-up loggable as one attribute.
func (t *Tracing) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Bool("exporting", t.exporting),
		slog.String("service_name", t.serviceName),
		slog.String("setup", t.describe),
	)
}

// InstallGlobal makes this set-up the process-wide OpenTelemetry default
// (for libraries that read otel.GetTracerProvider) and routes the SDK's own
// errors (an unreachable collector, a full queue) to logger, rate limited.
// Call it once, from run; tests pass Provider and Propagator explicitly
// instead so they can run in parallel.
func (t *Tracing) InstallGlobal(logger *slog.Logger) {
	otel.SetTracerProvider(t.provider)
	otel.SetTextMapPropagator(t.propagator)
	t.errors = &otelErrorHandler{log: newLimitedLog(logger, rate.Every(10*time.Second), 3)}
	otel.SetErrorHandler(t.errors)
	if t.stats != nil {
		t.stats.dropLog.Store(newLimitedLog(logger, rate.Every(10*time.Second), 1))
	}
}

// settleSpans waits until the recording server spans have ended, for at
// most spanSettle and never past ctx: a handler that outlives the forced
// close for good costs the exit that second, not its other spans.
func (t *Tracing) settleSpans(ctx context.Context) {
	if !t.settled.CompareAndSwap(false, true) || t.open.Load() <= 0 {
		return
	}
	deadline := time.NewTimer(spanSettle)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for t.open.Load() > 0 {
		select {
		case <-tick.C:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// ForceFlush exports the spans ended so far.
func (t *Tracing) ForceFlush(ctx context.Context) error {
	if t.sdk == nil {
		return nil
	}
	if err := t.sdk.ForceFlush(ctx); err != nil {
		return fmt.Errorf("flush spans: %w", err)
	}
	return nil
}

// Shutdown flushes the spans still queued and stops the exporter; ctx bounds
// how long an unreachable collector may hold up the exit. The count of SDK
// error lines the rate limit held back is written last. Sampled spans that
// never reached the collector, in the process's life, make an error that
// says how many and why: the exit's own loss (a collector down, the last
// batch failing) is never scraped, and its SDK error line may be one of
// those the rate limit held back.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t.sdk == nil {
		return nil
	}
	t.settleSpans(ctx)
	err := t.sdk.Shutdown(ctx)
	if t.errors != nil {
		t.errors.log.Flush(context.Background(), "opentelemetry error")
	}
	if st := t.stats; st != nil {
		if l := st.dropLog.Load(); l != nil {
			l.Flush(context.Background(), spansDroppedMsg)
		}
		queued, exported, failed := st.queued.Load(), st.exported.Load(), st.failed.Load()
		if lost := queued - exported; queued > exported {
			loss := fmt.Errorf("%d of the %d sampled spans since start never reached the collector: %d in failed exports, %d dropped with the export queue full or still queued at exit",
				lost, queued, failed, lost-failed)
			if err == nil {
				return loss
			}
			return fmt.Errorf("tracing shutdown: %w; %w", err, loss) // one line
		}
	}
	if err != nil {
		return fmt.Errorf("tracing shutdown: %w", err)
	}
	return nil
}

type otelErrorHandler struct{ log *limitedLog }

func (h *otelErrorHandler) Handle(err error) {
	h.log.Log(context.Background(), slog.LevelWarn, "opentelemetry error", slog.String("error", err.Error()))
}

// untraced are the routes that never get a span: probes are called every
// few seconds by every kubelet and would drown the real traces.
var untraced = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// Middleware starts the server span of each request, named by method and
// route template ("GET /api/v1/items/:id"; the method alone for unmatched
// routes, so raw paths never become span names), continuing an incoming
// traceparent or uber-trace-id. Probes are not traced. A request whose
// client went away ends with status 499 and an error status, as in the
// access log.
//
// It does what otelgin does, except that the request attributes are only
// computed for spans that are recorded: at a 1% sampling rate the other 99%
// of requests pay for the span context only.
func (t *Tracing) Middleware() gin.HandlerFunc {
	st := &serverTracer{
		tracer:    t.provider.Tracer(ScopeName),
		prop:      t.propagator,
		startOpts: []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)},
		root:      t.root,
		exporting: t.exporting,
		open:      &t.open,
	}
	// The header names the propagators read, canonical, to tell cheaply
	// whether a request carries trace context at all (most do not).
	var fields []string
	for _, f := range st.prop.Fields() {
		fields = append(fields, http.CanonicalHeaderKey(f))
	}
	exporting := t.exporting
	// The closure holds only what must live while the handlers run; the
	// span set-up and the recorded span's attributes are in noinline
	// methods, so their locals are not on the stack under every handler
	// (see accessLogger.done).
	return func(c *gin.Context) {
		route := c.FullPath()
		if untraced[route] {
			c.Next()
			return
		}
		incoming := false
		for _, f := range fields {
			if len(c.Request.Header[f]) > 0 {
				incoming = true
				break
			}
		}
		if !incoming && !exporting {
			// Nothing to continue and nothing to record: a span here would
			// only carry a random trace id that no backend ever sees. Most
			// requests of a service that does not export take this path and
			// pay nothing for tracing (the access line's trace_id is empty).
			c.Next()
			return
		}
		span := st.begin(c, route, incoming)
		if span == nil {
			c.Next() // a dropped root request: its span context is set
			return
		}
		// Also when a handler panics through us, which by then is only
		// http.ErrAbortHandler (the recovery middleware below turns other
		// panics into a 500 and re-panics that after a cut response). From
		// a closure, so the SDK's End, whose recover() then sees nothing,
		// adds no "exception" event: that panic is net/http's way to cut
		// a response, not a crash, and the span's status already says why.
		recording := span.IsRecording()
		var stripe uint32
		if recording {
			stripe = st.open.Add(1)
		}
		defer func() {
			span.End()
			if recording {
				st.open.AddAt(stripe, -1)
			}
		}()
		c.Next()
		if recording {
			st.finish(c, span)
		}
	}
}

// serverTracer is the tracing middleware's span set-up and completion.
type serverTracer struct {
	tracer    trace.Tracer
	prop      propagation.TextMapPropagator
	startOpts []trace.SpanStartOption
	root      rootRule
	exporting bool
	open      *striped.Int64 // Tracing.open
}

// begin puts the request's span context into c.Request and returns its
// span, or nil for a root request the sampler drops (which gets a span
// context and nothing to end).
//
//go:noinline
func (st *serverTracer) begin(c *gin.Context, route string, incoming bool) trace.Span {
	r := c.Request
	ctx := r.Context()
	if incoming {
		ctx = st.prop.Extract(ctx, headerCarrier(r.Header))
		if !st.exporting && !trace.SpanContextFromContext(ctx).IsValid() {
			// Trace headers with no trace to continue (baggage alone, a
			// malformed traceparent) and nothing to record: no span, so
			// no made-up trace id in the logs or to the dependencies.
			// The baggage goes on.
			if ctx != r.Context() {
				c.Request = r.WithContext(ctx)
			}
			return nil
		}
	}
	method := methodLabel(r.Method)
	// The samplers in use ignore the span name; building "METHOD
	// /route" is left to the spans that are recorded.
	var span trace.Span
	if !incoming && st.exporting {
		// A root request while exporting: most are not sampled (1% by
		// default), and for those the SDK would only build a
		// non-recording span around fresh ids. Draw the ids and apply
		// the provider's sampler's root rule here; a dropped request
		// gets its span context without the SDK's span set-up (its id
		// still goes to the logs and, marked not sampled, to the
		// dependencies). A sampled one is started by the SDK with these
		// very ids (idGenerator), whose sampler then decides the same
		// (TestRootRuleMatchesSampler).
		tid, sid := newTraceIDs()
		if !st.root.sampled(tid) {
			sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid})
			c.Request = r.WithContext(trace.ContextWithSpanContext(ctx, sc))
			return nil
		}
		// The preset ids stay out of the request's context: only this
		// Start reads them.
		_, span = st.tracer.Start(context.WithValue(ctx, presetIDsKey{}, presetIDs{tid, sid}), method, st.startOpts...)
		ctx = trace.ContextWithSpan(ctx, span)
	} else {
		ctx, span = st.tracer.Start(ctx, method, st.startOpts...)
	}
	if span.IsRecording() {
		if name := spanName(method, route); name != method {
			span.SetName(name)
		}
		span.SetAttributes(requestAttrs(c, method, route)...)
	}
	c.Request = r.WithContext(ctx)
	return span
}

// finish records the response on a recorded span.
//
//go:noinline
func (st *serverTracer) finish(c *gin.Context, span trace.Span) {
	finishSpan(c, span, c.Writer.Status())
}

// finishSpan records the response, with status, on a recorded span: by the
// tracing middleware, and by the access middleware for a response net/http
// cut off (a panic went through the tracing middleware, which records
// nothing then).
func finishSpan(c *gin.Context, span trace.Span, status int) {
	if clientAborted(c, connOf(c)) {
		span.SetAttributes(semconv.HTTPResponseStatusCode(StatusClientClosedRequest), semconv.ErrorTypeKey.String("client_closed_request"))
		span.SetStatus(codes.Error, "client went away before the response")
		return
	}
	if serverCut(c, connOf(c)) {
		// No http.response.status_code: whatever the handler wrote after
		// its connection broke (a 400 for the body it could no longer
		// read, the 200 it had started) never reached the client whole.
		// The access line and the request counter keep the handler's
		// status, with the same error.
		span.SetAttributes(semconv.ErrorTypeKey.String("server_closed"))
		span.SetStatus(codes.Error, "connection closed by the server while serving the request (forced shutdown)")
		return
	}
	span.SetAttributes(semconv.HTTPResponseStatusCode(status))
	if c.GetBool(keyWriteTimeout) {
		span.SetAttributes(semconv.ErrorTypeKey.String("write_timeout"))
		span.SetStatus(codes.Error, "HTTP/2 stream reset by the server at HTTP_WRITE_TIMEOUT")
		return
	}
	if size := bodySent(c); size > 0 {
		span.SetAttributes(semconv.HTTPResponseBodySize(size))
	}
	if status >= 500 {
		span.SetAttributes(semconv.ErrorTypeKey.String(codeLabel(status)))
		if !spanHasError(span) { // a panic's own description says more
			span.SetStatus(codes.Error, http.StatusText(status))
		}
	}
	if len(c.Errors) > 0 {
		span.SetStatus(codes.Error, spanText(c.Errors.String()))
	}
}

// spanHasError reports whether span (an SDK span) already has an error
// status, e.g. the panic's own.
func spanHasError(span trace.Span) bool {
	ro, ok := span.(sdktrace.ReadOnlySpan)
	return ok && ro.Status().Code == codes.Error
}

// idGenerator draws trace and span ids as the SDK's default generator does
// (math/rand/v2), except that a root span started with presetIDs in its
// context gets those: the middleware has already sampled on them.
type idGenerator struct{}

type presetIDsKey struct{}

type presetIDs struct {
	trace trace.TraceID
	span  trace.SpanID
}

func (idGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if p, ok := ctx.Value(presetIDsKey{}).(presetIDs); ok {
		return p.trace, p.span
	}
	return newTraceIDs()
}

func (idGenerator) NewSpanID(context.Context, trace.TraceID) trace.SpanID { return newSpanID() }

func newTraceIDs() (trace.TraceID, trace.SpanID) {
	var tid trace.TraceID
	for !tid.IsValid() {
		binary.NativeEndian.PutUint64(tid[:8], rand.Uint64())
		binary.NativeEndian.PutUint64(tid[8:], rand.Uint64())
	}
	return tid, newSpanID()
}

func newSpanID() trace.SpanID {
	var sid trace.SpanID
	for !sid.IsValid() {
		binary.NativeEndian.PutUint64(sid[:], rand.Uint64())
	}
	return sid
}

// headerCarrier is propagation.HeaderCarrier without the allocation of
// canonicalising the propagators' lower-case header names on every Get.
type headerCarrier http.Header

// canonicalTraceHeaders maps the header names the supported propagators ask
// for to their canonical form (read-only).
var canonicalTraceHeaders = map[string]string{
	"traceparent":   "Traceparent",
	"tracestate":    "Tracestate",
	"baggage":       "Baggage",
	"uber-trace-id": "Uber-Trace-Id",
}

func (h headerCarrier) Get(key string) string {
	if ck, ok := canonicalTraceHeaders[key]; ok {
		if v := h[ck]; len(v) > 1 {
			switch ck {
			case "Tracestate":
				// Several tracestate lines are one list (W3C Trace
				// Context §3.3.1.1, RFC 9110 §5.3): every vendor's
				// entry is kept, not only the first line's.
				return strings.Join(v, ",")
			case "Traceparent":
				// traceparent is a single value; two of them are no
				// parent to continue (the W3C test suite expects a new
				// trace), rather than whichever came first.
				return ""
			}
		}
		if v := h[ck]; len(v) > 0 {
			if ck == "Uber-Trace-Id" && strings.IndexByte(v[0], '%') >= 0 {
				// jaeger-client-go's HTTP propagator sends the header
				// URL-encoded ("…%3A…%3A0%3A1") and decodes it on
				// receipt; OpenTelemetry's Jaeger propagator does not.
				if u, err := url.QueryUnescape(v[0]); err == nil {
					return u
				}
			}
			return v[0]
		}
		return ""
	}
	return http.Header(h).Get(key)
}

// Values returns every line of a header (propagation.ValuesGetter): W3C
// baggage may come in several "baggage" lines, all of which count.
func (h headerCarrier) Values(key string) []string {
	if ck, ok := canonicalTraceHeaders[key]; ok {
		return h[ck]
	}
	return http.Header(h).Values(key)
}

func (h headerCarrier) Set(key, value string) { http.Header(h).Set(key, value) }

func (h headerCarrier) Keys() []string { return propagation.HeaderCarrier(h).Keys() }

// spanText is a client-supplied string as a span keeps it: cut like the
// access line's path, and valid UTF-8. The path is percent-decoded and a
// header may hold any byte, and protobuf refuses a string that is not
// UTF-8: one such attribute failed the OTLP export of its whole batch.
func spanText(s string) string {
	return strings.ToValidUTF8(cutLong(s), "\uFFFD")
}

func requestAttrs(c *gin.Context, method, route string) []attribute.KeyValue {
	r := c.Request
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	attrs := make([]attribute.KeyValue, 0, 12)
	attrs = append(attrs,
		semconv.HTTPRequestMethodKey.String(method),
		semconv.URLPath(spanText(r.URL.Path)),
		semconv.URLScheme(scheme),
		semconv.ClientAddress(clientip.Of(c)),
		semconv.NetworkProtocolVersion(protocolVersion(r)),
	)
	if method == methodOther {
		attrs = append(attrs, semconv.HTTPRequestMethodOriginal(spanText(r.Method)))
	}
	if r.URL.RawQuery != "" {
		attrs = append(attrs, semconv.URLQuery(spanText(redactQuery(r.URL.RawQuery))))
	}
	if route != "" {
		attrs = append(attrs, semconv.HTTPRoute(route))
	}
	if ua := r.UserAgent(); ua != "" {
		attrs = append(attrs, semconv.UserAgentOriginal(spanText(ua)))
	}
	if host, port := splitHost(r.Host); host != "" {
		attrs = append(attrs, semconv.ServerAddress(spanText(host)))
		if port > 0 {
			attrs = append(attrs, semconv.ServerPort(port))
		}
	}
	return attrs
}

// methodOther is the method label of a method outside HTTP's own.
const methodOther = "_OTHER"

// spanName is the server span's name by the HTTP semantic conventions:
// "METHOD /route", the method alone for unmatched routes (raw paths never
// become names), and "HTTP" for a method outside HTTP's own.
func spanName(method, route string) string {
	if method == methodOther {
		method = "HTTP"
	}
	if route == "" {
		return method
	}
	return method + " " + route
}

// splitHost splits a Host header into server.address and server.port (0
// when it has none): "example.com:8443", "[::1]:80", "[::1]", "example.com".
func splitHost(h string) (string, int) {
	if h == "" {
		return "", 0
	}
	if host, port, err := net.SplitHostPort(h); err == nil {
		if p, err := strconv.Atoi(port); err == nil && p > 0 && p < 65536 {
			return host, p
		}
		return host, 0
	}
	return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), 0
}

// sensitiveQueryKeys are the query parameters whose values the HTTP
// semantic conventions ask to redact from url.query (signed URLs' keys and
// signatures).
var sensitiveQueryKeys = map[string]bool{"AWSAccessKeyId": true, "Signature": true, "sig": true, "X-Goog-Signature": true}

// redactQuery replaces the values of sensitiveQueryKeys with "REDACTED".
func redactQuery(q string) string {
	if !strings.Contains(q, "=") {
		return q
	}
	parts := strings.Split(q, "&")
	changed := false
	for i, p := range parts {
		k, _, ok := strings.Cut(p, "=")
		if ok && sensitiveQueryKeys[k] {
			parts[i], changed = k+"=REDACTED", true
		}
	}
	if !changed {
		return q
	}
	return strings.Join(parts, "&")
}

func parsePropagators(v string) (propagation.TextMapPropagator, error) {
	if v == "" {
		v = DefaultPropagators
	}
	var ps []propagation.TextMapPropagator
	none := false
	for _, name := range strings.Split(v, ",") {
		switch n := strings.ToLower(strings.TrimSpace(name)); n {
		case "tracecontext":
			ps = append(ps, propagation.TraceContext{})
		case "baggage":
			ps = append(ps, propagation.Baggage{})
		case "jaeger":
			ps = append(ps, jaeger.Jaeger{})
		case "none":
			none = true
		case "":
		default:
			return nil, fmt.Errorf("OTEL_PROPAGATORS: %q is not supported (want tracecontext, baggage, jaeger or none)", n)
		}
	}
	// Jaeger's extractor runs first, so that a request carrying both
	// uber-trace-id and traceparent continues the W3C context (and keeps
	// its tracestate and sampling decision): in a composite propagator the
	// last extractor that finds a context wins.
	slices.SortStableFunc(ps, func(a, b propagation.TextMapPropagator) int {
		_, aj := a.(jaeger.Jaeger)
		_, bj := b.(jaeger.Jaeger)
		switch {
		case aj && !bj:
			return -1
		case bj && !aj:
			return 1
		}
		return 0
	})
	if none && len(ps) > 0 {
		// Which one was meant is a guess either way: callers' traces
		// dropped, or joined after all.
		return nil, fmt.Errorf("OTEL_PROPAGATORS: none cannot be combined with other propagators, got %q", v)
	}
	return propagation.NewCompositeTextMapPropagator(ps...), nil
}

// rootRule is how a sampler this package builds decides a root span (one
// without a parent): on its trace id alone, as sdktrace.TraceIDRatioBased
// does (its last 8 bytes, shifted right by one, below the bound), every id
// (always_on) or none (always_off). The middleware applies it to root
// requests without a call into the sampler; TestRootRuleMatchesSampler
// holds it to the SDK's decisions.
type rootRule struct {
	all   bool
	bound uint64
}

func (r rootRule) sampled(tid trace.TraceID) bool {
	return r.all || binary.BigEndian.Uint64(tid[8:16])>>1 < r.bound
}

// ratioRule is the root rule of sdktrace.TraceIDRatioBased(f).
func ratioRule(f float64) rootRule {
	switch {
	case f >= 1:
		return rootRule{all: true}
	case f <= 0:
		return rootRule{}
	}
	return rootRule{bound: uint64(f * (1 << 63))}
}

// samplers are the OTEL_TRACES_SAMPLER values supported, each with the
// sampler it builds from the ratio (used by the *traceidratio ones) and that
// sampler's rule for root spans.
var samplers = []struct {
	name  string
	build func(ratio float64) (sdktrace.Sampler, rootRule)
}{
	{"always_on", func(float64) (sdktrace.Sampler, rootRule) { return sdktrace.AlwaysSample(), rootRule{all: true} }},
	{"always_off", func(float64) (sdktrace.Sampler, rootRule) { return sdktrace.NeverSample(), rootRule{} }},
	{"traceidratio", func(f float64) (sdktrace.Sampler, rootRule) { return sdktrace.TraceIDRatioBased(f), ratioRule(f) }},
	{"parentbased_always_on", func(float64) (sdktrace.Sampler, rootRule) {
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), rootRule{all: true}
	}},
	{"parentbased_always_off", func(float64) (sdktrace.Sampler, rootRule) {
		return sdktrace.ParentBased(sdktrace.NeverSample()), rootRule{}
	}},
	{"parentbased_traceidratio", func(f float64) (sdktrace.Sampler, rootRule) {
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(f)), ratioRule(f)
	}},
}

func parseSampler(name, arg string) (sdktrace.Sampler, rootRule, string, error) {
	if name == "" {
		name = DefaultSampler
	}
	name = strings.ToLower(name)
	ratio := DefaultSamplerArg
	if arg != "" {
		// Checked whatever the sampler: a bad ratio left for always_on
		// would fail the day someone switches to a ratio sampler.
		f, err := strconv.ParseFloat(arg, 64)
		if err != nil || !(f >= 0 && f <= 1) { // also NaN
			return nil, rootRule{}, "", fmt.Errorf("OTEL_TRACES_SAMPLER_ARG: %q is not a ratio between 0 and 1", arg)
		}
		ratio = f
	}
	desc := name
	if strings.HasSuffix(name, "traceidratio") {
		desc += "(" + strconv.FormatFloat(ratio, 'g', -1, 64) + ")"
	}
	for _, s := range samplers {
		if s.name == name {
			sampler, rule := s.build(ratio)
			return sampler, rule, desc, nil
		}
	}
	return nil, rootRule{}, "", fmt.Errorf("OTEL_TRACES_SAMPLER: %q is not supported (want always_on, always_off, traceidratio or parentbased_*)", name)
}

// protocolVersion is network.protocol.version as the HTTP semantic
// conventions spell it: "1.1", "1.0", "2" (not r.Proto's "2.0").
func protocolVersion(r *http.Request) string {
	switch {
	case r.ProtoMajor == 1 && r.ProtoMinor == 1:
		return "1.1"
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return "1.0"
	case r.ProtoMajor == 2:
		return "2"
	case r.ProtoMinor == 0:
		return strconv.Itoa(r.ProtoMajor)
	}
	return strconv.Itoa(r.ProtoMajor) + "." + strconv.Itoa(r.ProtoMinor)
}

// exporterConfig is the OTLP exporter's set-up from the
// OTEL_EXPORTER_OTLP_* variables.
type exporterConfig struct {
	protocol    string // http/protobuf, http/json or grpc
	endpointURL string // always set: the variables' or the default (defaultEndpoint)
	headers     map[string]string
	timeout     time.Duration // 0: the exporter's default
	gzip        bool
	tls         *tls.Config // from the CERTIFICATE and CLIENT_* files; nil: system roots
}

// defaultEndpoint is the OTLP endpoint without an endpoint variable, as
// the OpenTelemetry specification sets it: plain HTTP to a collector on
// localhost. (The Go exporters' own default speaks TLS to localhost, which
// a local collector or agent does not.)
func defaultEndpoint(protocol string) string {
	if protocol == "grpc" {
		return "http://localhost:4317"
	}
	return "http://localhost:4318/v1/traces"
}

// parseExporter reads and checks the OTLP exporter variables without
// building anything. Signal-specific variables win over the generic ones.
func parseExporter(env func(string) string) (exporterConfig, error) {
	get := func(suffix string) (string, string) {
		if v := env("OTEL_EXPORTER_OTLP_TRACES_" + suffix); v != "" {
			return "OTEL_EXPORTER_OTLP_TRACES_" + suffix, v
		}
		return "OTEL_EXPORTER_OTLP_" + suffix, env("OTEL_EXPORTER_OTLP_" + suffix)
	}
	var c exporterConfig
	protoVar, protocol := get("PROTOCOL")
	protocol = strings.ToLower(protocol) // as the sampler and exporter names
	switch protocol {
	case "":
		protocol = "http/protobuf"
	case "http/protobuf", "http/json", "grpc":
	default:
		return c, fmt.Errorf("%s: %q is not supported (want http/protobuf, http/json or grpc)", protoVar, protocol)
	}
	c.protocol = protocol
	if hv, h := get("HEADERS"); h != "" {
		var err error
		if c.headers, err = parseHeaders(h); err != nil {
			return c, fmt.Errorf("%s: %w", hv, err)
		}
		if err = checkHeaders(c.headers, protocol == "grpc"); err != nil {
			return c, fmt.Errorf("%s: %w", hv, err)
		}
	}
	if tv, s := get("TIMEOUT"); s != "" {
		d, err := parseMillis(tv, s)
		if err != nil {
			return c, err
		}
		c.timeout = d
	}
	cv, compression := get("COMPRESSION")
	switch strings.ToLower(compression) {
	case "", "none":
	case "gzip":
		c.gzip = true
	default:
		return c, fmt.Errorf("%s: %q is not supported (want gzip or none)", cv, compression)
	}
	// INSECURE is checked and otherwise has no effect: the specification
	// applies it only to a gRPC endpoint without a scheme, and every
	// endpoint here has one (http: plain, https: TLS).
	iv, insecureS := get("INSECURE")
	var err error
	if _, err = parseBoolVar(iv, insecureS); err != nil {
		return c, err
	}
	if c.tls, err = exporterTLS(get); err != nil {
		return c, err
	}

	// The generic endpoint is a base URL (the signal path is appended);
	// the traces one is used as is.
	if v := env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"); v != "" {
		if _, err := parseEndpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v); err != nil {
			return c, err
		}
		c.endpointURL = v
	} else if v := env("OTEL_EXPORTER_OTLP_ENDPOINT"); v != "" {
		u, err := parseEndpoint("OTEL_EXPORTER_OTLP_ENDPOINT", v)
		if err != nil {
			return c, err
		}
		if protocol != "grpc" {
			u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/traces"
		}
		c.endpointURL = u.String()
	} else {
		c.endpointURL = defaultEndpoint(protocol)
	}
	return c, nil
}

// exporterTLS reads the collector's CA certificate and the client
// certificate and key (mutual TLS) from the files the CERTIFICATE,
// CLIENT_CERTIFICATE and CLIENT_KEY variables name. The exporters would read
// them too, but would log a missing or unreadable file in plain text and
// export without it.
func exporterTLS(get func(suffix string) (string, string)) (*tls.Config, error) {
	caVar, ca := get("CERTIFICATE")
	certVar, cert := get("CLIENT_CERTIFICATE")
	keyVar, key := get("CLIENT_KEY")
	if ca == "" && cert == "" && key == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", caVar, err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: %q holds no PEM certificate", caVar, ca)
		}
	}
	switch {
	case cert == "" && key == "":
	case cert == "" || key == "":
		return nil, fmt.Errorf("%s: %s and %s must be set together", certVar, certVar, keyVar)
	default:
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", certVar, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// newExporter builds the OTLP exporter from c explicitly, so the set-up
// depends only on getenv. (The exporter also reads the process environment
// itself; options passed here take precedence.)
func newExporter(ctx context.Context, c exporterConfig) (sdktrace.SpanExporter, string, error) {
	if c.protocol == "grpc" {
		// The endpoint's scheme decides plain or TLS; the files' TLS
		// settings apply to an https one.
		opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpointURL(c.endpointURL)}
		if c.tls != nil && strings.HasPrefix(strings.ToLower(c.endpointURL), "https:") {
			opts = append(opts, otlptracegrpc.WithTLSCredentials(credentials.NewTLS(c.tls)))
		}
		if c.headers != nil {
			opts = append(opts, otlptracegrpc.WithHeaders(c.headers))
		}
		if c.timeout > 0 {
			opts = append(opts, otlptracegrpc.WithTimeout(c.timeout))
		}
		if c.gzip {
			opts = append(opts, otlptracegrpc.WithCompressor("gzip"))
		}
		exp, err := otlptracegrpc.New(ctx, opts...)
		if err != nil {
			return nil, "", fmt.Errorf("OTLP/gRPC exporter: %w", err)
		}
		return exp, "OTLP grpc to " + redacted(c.endpointURL), nil
	}
	opts := []otlptracehttp.Option{}
	if c.protocol == "http/json" {
		opts = append(opts, otlptracehttp.WithEncoding(otlptracehttp.EncodingJSON))
	}
	opts = append(opts, otlptracehttp.WithEndpointURL(c.endpointURL))
	if c.tls != nil {
		opts = append(opts, otlptracehttp.WithTLSClientConfig(c.tls))
	}
	if c.headers != nil {
		opts = append(opts, otlptracehttp.WithHeaders(c.headers))
	}
	if c.timeout > 0 {
		opts = append(opts, otlptracehttp.WithTimeout(c.timeout))
	}
	if c.gzip {
		opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.GzipCompression))
	} else {
		opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.NoCompression))
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, "", fmt.Errorf("OTLP/HTTP exporter: %w", err)
	}
	return exp, "OTLP " + c.protocol + " to " + redacted(c.endpointURL), nil
}

// redacted is an endpoint URL fit for the logs: a password in it is
// replaced by xxxxx.
func redacted(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		return ""
	}
	return u.Redacted()
}

func parseEndpoint(name, v string) (*url.URL, error) {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		// host:port without a scheme fails to parse at all ("first path
		// segment in URL cannot contain colon"): the same message.
		return nil, fmt.Errorf("%s: %q must be an http:// or https:// URL with a host", name, v)
	}
	if p := u.Port(); p != "" {
		// url.Parse takes any digits; a dial refuses them at every export.
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%s: port %q of %q is not between 1 and 65535", name, p, v)
		}
	}
	return u, nil
}

// checkHeaders refuses exporter headers that every export would fail on:
// a name that is not an HTTP token or a value with control characters
// (net/http refuses to send them), and for gRPC, whose metadata is
// stricter, a name outside [0-9a-z_.-] once lowercased, a reserved grpc-
// name, or a value outside printable ASCII.
func checkHeaders(h map[string]string, grpc bool) error {
	for k, v := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("%q is not a valid header name", k)
		}
		if !httpguts.ValidHeaderFieldValue(v) {
			return fmt.Errorf("the value of %q holds a control character", k)
		}
		if !grpc {
			continue
		}
		lk := strings.ToLower(k)
		if strings.HasPrefix(lk, "grpc-") || strings.ContainsFunc(lk, func(r rune) bool {
			return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r == '_' || r == '.' || r == '-')
		}) {
			return fmt.Errorf("%q is not a valid gRPC metadata key", k)
		}
		if !strings.HasSuffix(lk, "-bin") && strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r > 0x7e }) {
			return fmt.Errorf("the value of %q holds a character gRPC metadata does not carry (printable ASCII only)", k)
		}
	}
	return nil
}

// parseHeaders reads the W3C-baggage-like "k=v,k2=v2" list (values
// URL-encoded) of OTEL_EXPORTER_OTLP_HEADERS and OTEL_RESOURCE_ATTRIBUTES.
func parseHeaders(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("%q is not key=value", kv)
		}
		dv, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("%q: %w", strings.TrimSpace(k), err)
		}
		out[strings.TrimSpace(k)] = dv
	}
	return out, nil
}

// Bounds of the batch processor's and exporter's settings. A value past
// them is a typo more likely than a choice: the SDK allocates the span
// queue up front (a queue of 2e9 spans ends the process out of memory
// before it logs a line), and milliseconds past about 292 years overflow a
// time.Duration into a negative timeout.
const (
	maxQueueSize = 1 << 20
	maxMillis    = 3_600_000 // one hour
)

// parseMillis reads a positive number of milliseconds, at most maxMillis.
func parseMillis(name, s string) (time.Duration, error) {
	ms, err := strconv.Atoi(s)
	if err != nil || ms <= 0 || ms > maxMillis {
		return 0, fmt.Errorf("%s: %q is not a number of milliseconds from 1 to %d", name, s, maxMillis)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// batchOptions are the batch processor's options from the OTEL_BSP_*
// variables, and the most spans it holds before it drops any: its queue
// and the batch being filled.
func batchOptions(env func(string) string) ([]sdktrace.BatchSpanProcessorOption, uint64, error) {
	var opts []sdktrace.BatchSpanProcessorOption
	for _, v := range []struct {
		name string
		opt  func(time.Duration) sdktrace.BatchSpanProcessorOption
	}{
		{"OTEL_BSP_SCHEDULE_DELAY", sdktrace.WithBatchTimeout},
		{"OTEL_BSP_EXPORT_TIMEOUT", sdktrace.WithExportTimeout},
	} {
		if s := env(v.name); s != "" {
			d, err := parseMillis(v.name, s)
			if err != nil {
				return nil, 0, err
			}
			opts = append(opts, v.opt(d))
		}
	}
	size := func(name string, limit int) (int, error) {
		s := env(name)
		if s == "" {
			return 0, nil
		}
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > limit {
			return 0, fmt.Errorf("%s: %q is not a whole number from 1 to %d", name, s, limit)
		}
		return n, nil
	}
	queue, err := size("OTEL_BSP_MAX_QUEUE_SIZE", maxQueueSize)
	if err != nil {
		return nil, 0, err
	}
	if queue > 0 {
		opts = append(opts, sdktrace.WithMaxQueueSize(queue))
	} else {
		queue = sdktrace.DefaultMaxQueueSize
	}
	// A batch cannot be larger than the queue it is taken from (the SDK
	// would shrink it without a word).
	batch, err := size("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", maxQueueSize)
	if err != nil {
		return nil, 0, err
	}
	if batch > queue {
		return nil, 0, fmt.Errorf("OTEL_BSP_MAX_EXPORT_BATCH_SIZE: %d is larger than the span queue (OTEL_BSP_MAX_QUEUE_SIZE, %d)", batch, queue)
	}
	if batch > 0 {
		opts = append(opts, sdktrace.WithMaxExportBatchSize(batch))
	} else {
		batch = min(sdktrace.DefaultMaxExportBatchSize, queue)
	}
	return opts, uint64(queue + batch), nil
}

// spanLimitVars are the span limits the SDK reads from the process
// environment (integers; negative means unlimited).
var spanLimitVars = []string{
	"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT",
	"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
	"OTEL_SPAN_EVENT_COUNT_LIMIT", "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
	"OTEL_SPAN_LINK_COUNT_LIMIT", "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
}

// checkSpanLimits rejects a span limit that is not an integer, spaces
// included (the SDK reads them from the process environment as they are,
// and would log a plain-text line and use its default). The line is still
// printed once, before main: go.opentelemetry.io/auto/sdk, which the
// OpenTelemetry API imports, reads the same variables when it is
// initialised.
func checkSpanLimits(env func(string) string) error {
	for _, k := range spanLimitVars {
		if v := env(k); v != "" {
			if _, err := strconv.Atoi(v); err != nil {
				return fmt.Errorf("%s: %q is not an integer", k, v)
			}
		}
	}
	return nil
}

// buildResource describes the service without resource.Default, which
// reads the process environment behind getenv's back.
// name is the service name as resolved from OTEL_SERVICE_NAME and attrs
// (OTEL_RESOURCE_ATTRIBUTES).
func buildResource(ctx context.Context, name, version string, attrs map[string]string) (*resource.Resource, error) {
	kvs := []attribute.KeyValue{semconv.ServiceName(name)}
	if version != "" {
		kvs = append(kvs, semconv.ServiceVersion(version))
	}
	for k, v := range attrs {
		if k == string(semconv.ServiceNameKey) {
			continue // resolved into name
		}
		kvs = append(kvs, attribute.String(k, v))
	}
	res, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithAttributes(kvs...),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	return res, nil
}

// parseBoolVar reads an OTEL_* boolean: "true" or "false" in any case, as
// the specification has them. Anything else is refused: the SDK would
// take "1" or "yes" for false, and Go's ParseBool "1" and "t" for true;
// neither reading of such a value can be trusted.
func parseBoolVar(name, v string) (bool, error) {
	switch {
	case v == "", strings.EqualFold(v, "false"):
		return false, nil
	case strings.EqualFold(v, "true"):
		return true, nil
	}
	return false, fmt.Errorf("%s: %q is not true or false", name, v)
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}
