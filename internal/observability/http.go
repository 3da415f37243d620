package observability

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/hardenedgo/ginservice/internal/clientip"
	"github.com/hardenedgo/ginservice/internal/problem"
	"github.com/hardenedgo/ginservice/internal/striped"
)

// StatusClientClosedRequest is logged (never sent) when the client went away
// before the response: nginx's 499.
const StatusClientClosedRequest = 499

// RouteUnmatched labels requests that matched no route, so raw paths never
// become label values.
const RouteUnmatched = "unmatched"

const (
	keyClientAbort  = "observability.client_abort"
	keyTruncated    = "observability.truncated_body"
	keyWriteTimeout = "observability.write_timeout"
	keyServerCut    = "observability.server_cut" // HTTP/2: see Access
)

// MarkPanic records on the request's span, when it is recorded, that a
// handler panicked with v (the recovery's 500, or the cut response when
// the status line was already out, would otherwise not say why).
func MarkPanic(c *gin.Context, v any) {
	if span := trace.SpanFromContext(c.Request.Context()); span.IsRecording() {
		span.SetStatus(codes.Error, spanText("panic: "+fmt.Sprint(v)))
	}
}

// MarkTruncatedBody records that the request body ended early (the client
// sent fewer bytes than announced and went away): the request is logged as
// 499 and counted as a truncated body and a client abort.
func MarkTruncatedBody(c *gin.Context) {
	c.Set(keyTruncated, true)
	c.Set(keyClientAbort, true)
}

// MarkClientAbort records that the client went away before the response.
func MarkClientAbort(c *gin.Context) { c.Set(keyClientAbort, true) }

// HTTPMetrics are the RED metrics of the public listener.
type HTTPMetrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	size      *prometheus.HistogramVec
	inFlight  *striped.Int64 // a Prometheus gauge is a CAS loop on one shared line
	aborts    *prometheus.CounterVec
	truncated *prometheus.CounterVec
	panics    *prometheus.CounterVec
	degraded  *prometheus.CounterVec

	// series caches the children of each (method, route): three
	// WithLabelValues per request hash their labels every time. Routes are
	// templates and methods are bounded, so the map stays small; it is
	// copied on write and read without a lock.
	series   atomic.Pointer[map[seriesKey]*routeSeries]
	seriesMu sync.Mutex
}

type seriesKey struct{ method, route string }

type routeSeries struct {
	method, route string
	requests      *prometheus.CounterVec
	duration      prometheus.Observer
	size          prometheus.Observer
	codes         atomic.Pointer[map[int]prometheus.Counter] // copy on write
	codesMu       sync.Mutex
}

func (m *HTTPMetrics) seriesOf(method, route string) *routeSeries {
	k := seriesKey{method, route}
	if cur := m.series.Load(); cur != nil {
		if rs, ok := (*cur)[k]; ok {
			return rs
		}
	}
	m.seriesMu.Lock()
	defer m.seriesMu.Unlock()
	cur := m.series.Load()
	if cur != nil {
		if rs, ok := (*cur)[k]; ok {
			return rs
		}
	}
	rs := &routeSeries{
		method: method, route: route, requests: m.requests,
		duration: m.duration.WithLabelValues(method, route),
		size:     m.size.WithLabelValues(method, route),
	}
	next := make(map[seriesKey]*routeSeries, 1)
	if cur != nil {
		for kk, v := range *cur {
			next[kk] = v
		}
	}
	next[k] = rs
	m.series.Store(&next)
	return rs
}

func (rs *routeSeries) code(status int) prometheus.Counter {
	if cur := rs.codes.Load(); cur != nil {
		if c, ok := (*cur)[status]; ok {
			return c
		}
	}
	rs.codesMu.Lock()
	defer rs.codesMu.Unlock()
	cur := rs.codes.Load()
	if cur != nil {
		if c, ok := (*cur)[status]; ok {
			return c
		}
	}
	c := rs.requests.WithLabelValues(rs.method, rs.route, codeLabel(status))
	next := make(map[int]prometheus.Counter, 1)
	if cur != nil {
		for kk, v := range *cur {
			next[kk] = v
		}
	}
	next[status] = c
	rs.codes.Store(&next)
	return c
}

// latencyBuckets are the classic buckets of the latency histogram before
// latencyEdges adds the timeouts'.
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// latencyEdges returns latencyBuckets with an edge 10 % above each timeout
// (to the microsecond) that has none there yet. Requests the
// timeout cuts (a fallback served at BREAKER_TIMEOUT) take it and a little
// more: without the edge they fall in the bucket above (1 s: (1, 2.5]),
// and histogram_quantile, interpolating in it, reads a p99 of up to 2.5 s
// for answers that all came after 1 s.
func latencyEdges(timeouts ...time.Duration) []float64 {
	b := slices.Clone(latencyBuckets)
	for _, t := range timeouts {
		if t <= 0 {
			continue
		}
		lo := t.Seconds()
		edge := math.Round(lo*1.1e6) / 1e6 // le="1.1", not "1.1000000000000001"
		if slices.ContainsFunc(b, func(e float64) bool { return e > lo && e <= edge }) {
			continue
		}
		b = append(b, edge)
	}
	slices.Sort(b)
	return slices.Compact(b)
}

// NewHTTPMetrics registers the HTTP server metrics on reg. The latency
// histogram gets a bucket edge just above each of timeouts (the breaker's),
// so requests cut at one read as taking it, not up to the next edge.
func NewHTTPMetrics(reg prometheus.Registerer, timeouts ...time.Duration) *HTTPMetrics {
	m := &HTTPMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_server_requests_total",
			Help: "HTTP requests served, by route template and status code (499: the client went away).",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                            "http_server_request_duration_seconds",
			Help:                            "HTTP request latency by route template.",
			Buckets:                         latencyEdges(timeouts...),
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  100,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"method", "route"}),
		size: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "http_server_response_size_bytes",
			Help:    "HTTP response body size by route template: the bytes the handlers wrote (0 for HEAD). A response cut short (a 499, a write timeout) may have reached the client in part or not at all.",
			Buckets: prometheus.ExponentialBuckets(64, 4, 8),
		}, []string{"method", "route"}),
		inFlight: &striped.Int64{},
		aborts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_server_client_aborts_total",
			Help: "Requests whose client went away before the response (logged as status 499).",
		}, []string{"route"}),
		truncated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_server_truncated_bodies_total",
			Help: "Requests whose body ended before its announced length (unexpected EOF).",
		}, []string{"route"}),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_server_panics_total",
			Help: "Handler panics recovered into a 500.",
		}, []string{"route"}),
		degraded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_server_degraded_responses_total",
			Help: "Responses served from a fallback (X-Degraded: true).",
		}, []string{"route"}),
	}
	inFlight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "http_server_requests_in_flight",
		Help: "HTTP requests being served.",
	}, func() float64 { return float64(m.inFlight.Load()) })
	reg.MustRegister(m.requests, m.duration, m.size, inFlight, m.aborts, m.truncated, m.panics, m.degraded)
	return m
}

// InitRoutes creates the zero series of the per-route counters (aborts,
// truncated bodies, panics, fallbacks) for every route template and for
// unmatched requests, so rate() and alerts see 0 instead of no data before
// the first event.
func (m *HTTPMetrics) InitRoutes(routes ...string) {
	for _, r := range routes {
		m.initRoute(routeLabel(r))
	}
	m.initRoute(RouteUnmatched)
}

func (m *HTTPMetrics) initRoute(r string) {
	m.aborts.WithLabelValues(r)
	m.truncated.WithLabelValues(r)
	m.panics.WithLabelValues(r)
	m.degraded.WithLabelValues(r)
}

// Panic counts a recovered panic on route.
func (m *HTTPMetrics) Panic(route string) { m.panics.WithLabelValues(routeLabel(route)).Inc() }

// Degraded counts a fallback response on route.
func (m *HTTPMetrics) Degraded(route string) { m.degraded.WithLabelValues(routeLabel(route)).Inc() }

func routeLabel(r string) string {
	if r == "" {
		return RouteUnmatched
	}
	return r
}

// codeLabels holds the label strings of every status code, so the hot path does
// not format integers.
var codeLabels = func() [600]string {
	var a [600]string
	for i := range a {
		a[i] = strconv.Itoa(i)
	}
	return a
}()

func codeLabel(c int) string {
	if c >= 0 && c < len(codeLabels) {
		return codeLabels[c]
	}
	return strconv.Itoa(c)
}

// AccessOptions tune the access middleware.
type AccessOptions struct {
	// Quiet lists route templates that are measured but not logged
	// (liveness and readiness probes), unless they answer 5xx: then at
	// warn.
	Quiet []string
	// Exemplars attaches the trace id of a recorded span to its latency
	// observation: set it when tracing exports spans (a caller's sampled
	// trace continued while nothing is exported is recorded, but has no
	// span of this process to show).
	Exemplars bool
	// WriteTimeout is the server's HTTP_WRITE_TIMEOUT (0: none). On HTTP/2
	// a stream that runs past it is reset by the server, which cancels
	// the request's context as a client that leaves does; with it the
	// access line tells the two apart (see WriteDeadliner).
	WriteTimeout time.Duration
}

// WriteDeadliner is a request body that knows the write deadline in force
// when a middleware moved it from the one the server set (server's body
// limit does, while the body is read).
type WriteDeadliner interface {
	WriteDeadline() time.Time
}

// writeTimeoutSlack: an HTTP/2 stream's write timer starts when its headers
// are read, a moment before the access middleware's clock; a stream cut
// within this much of the deadline counted from that clock is the timer's.
const writeTimeoutSlack = 100 * time.Millisecond

// Access returns the middleware that measures every request and writes one
// access line per request. A request whose client went away is logged and
// counted as 499 exactly once, whatever the handler wrote. When the request's
// span is sampled, its trace id is attached to the latency observation as an
// exemplar, so a slow bucket on the dashboard links to a trace.
func Access(logger *slog.Logger, m *HTTPMetrics, opts AccessOptions) gin.HandlerFunc {
	quiet := make(map[string]bool, len(opts.Quiet))
	for _, q := range opts.Quiet {
		quiet[q] = true
	}
	a := &accessLogger{logger: logger, m: m, quiet: quiet, writeTimeout: opts.WriteTimeout, exemplars: opts.Exemplars}
	return func(c *gin.Context) {
		start := time.Now()
		stripe := m.inFlight.Add(1)
		tc := connOf(c)
		// HTTP/2: the connection under the stream, only to tell whether
		// the server closed it while this request was served.
		var under *trackedConn
		if tc != nil {
			tc.routing()
		} else if c.Request.ProtoMajor == 2 {
			if under = trackedFrom(c.Request.Context()); under != nil {
				under.streamStarted()
			}
		}
		// Deferred: http.ErrAbortHandler panics through every middleware on
		// purpose (net/http then cuts the response: the connection on
		// HTTP/1, the stream on HTTP/2). Such a request must not leak an
		// in-flight request, and is measured and logged on its way out.
		defer func() {
			m.inFlight.AddAt(stripe, -1)
			if v := recover(); v != nil {
				markServerCut(c, under)
				a.cut(c, tc, start, time.Since(start))
				if under != nil {
					under.streamDone()
				}
				panic(v)
			}
			if under != nil {
				under.streamDone()
			}
		}()
		c.Next()
		markServerCut(c, under)
		a.done(c, tc, start, time.Since(start), 0)
	}
}

// markServerCut records, for an HTTP/2 request, that the server closed its
// connection while it was served (the forced close at SHUTDOWN_TIMEOUT).
func markServerCut(c *gin.Context, under *trackedConn) {
	if under != nil && under.cutByServer() {
		c.Set(keyServerCut, true)
	}
}

// serverCut reports whether the server closed the request's connection
// while it was served.
func serverCut(c *gin.Context, tc *trackedConn) bool {
	if tc != nil {
		return tc.cutByServer()
	}
	return c.Request.ProtoMajor == 2 && c.GetBool(keyServerCut)
}

// cut measures and logs a request whose response net/http cuts off (a
// panic of http.ErrAbortHandler went through): 499 if the client had
// left, else 500, whatever status line had gone out. The client sees a
// broken response, never a complete-looking one.
func (a *accessLogger) cut(c *gin.Context, tc *trackedConn, start time.Time, elapsed time.Duration) {
	status := http.StatusInternalServerError
	if serverCut(c, tc) {
		// The server's forced close broke the request and the handler
		// gave up on it: not a failure of the service's own (no 500 on
		// the error budget); logged as the server's doing with the
		// handler's status.
		status = c.Writer.Status()
	}
	// The tracing middleware's own completion does not run on a panic.
	if span := trace.SpanFromContext(c.Request.Context()); span.IsRecording() {
		finishSpan(c, span, status)
	}
	a.done(c, tc, start, elapsed, status)
}

// accessLogger is the access middleware's work after the handlers.
type accessLogger struct {
	logger       *slog.Logger
	m            *HTTPMetrics
	quiet        map[string]bool
	writeTimeout time.Duration
	exemplars    bool
}

// streamTimedOut reports whether an HTTP/2 request ended past its write
// deadline: then the server resets the stream (HTTP_WRITE_TIMEOUT) and the
// client gets no response, as on HTTP/1, where the connection's close line
// says write_timeout; HTTP/2 keeps its connection, so the access line says
// it. The reset also cancels the request's context, as a client that
// leaves does: that is how a stream cut a moment before this middleware's
// clock reached the deadline is told apart.
func (a *accessLogger) streamTimedOut(c *gin.Context, tc *trackedConn, end time.Time, start time.Time) bool {
	if tc != nil || c.Request.ProtoMajor < 2 || a.writeTimeout <= 0 {
		return false
	}
	deadline, early := start.Add(a.writeTimeout), min(a.writeTimeout/10, writeTimeoutSlack)
	if wd, ok := c.Request.Body.(WriteDeadliner); ok {
		if d := wd.WriteDeadline(); !d.IsZero() {
			deadline, early = d, 0 // set on this clock
		}
	}
	if c.Request.Context().Err() != nil {
		deadline = deadline.Add(-early)
	}
	return !end.Before(deadline)
}

// done measures and logs one finished request. It is kept out of the
// middleware's closure (noinline) on purpose: its locals (the log record,
// the attributes) are over 2 KB, and a frame that size under every handler
// pushes a connection goroutine's stack past 8 KB, which the GC shrinks
// between requests and the next request grows again by copying it.
//
// A non-zero status replaces the handlers' (unless the client left).
//
//go:noinline
func (a *accessLogger) done(c *gin.Context, tc *trackedConn, start time.Time, elapsed time.Duration, status int) {
	logger, m, quiet := a.logger, a.m, a.quiet

	route := routeLabel(c.FullPath())
	complete := status == 0 // not a response cut by a panic (cut)
	if status == 0 {
		status = c.Writer.Status()
	}
	timedOut := a.streamTimedOut(c, tc, start.Add(elapsed), start)
	cutByServer := serverCut(c, tc)
	if timedOut {
		c.Set(keyWriteTimeout, true) // for clientAborted, here and in the span
	}
	if clientAborted(c, tc) {
		complete = false
		status = StatusClientClosedRequest
		m.aborts.WithLabelValues(route).Inc()
		if c.GetBool(keyTruncated) {
			m.truncated.WithLabelValues(route).Inc()
		}
	}
	size := bodySent(c)
	requestID := problem.RequestID(c.Writer.Header())
	if tc != nil {
		// If the connection breaks before the response is out (the
		// write timeout, a reset), its close line names this request.
		tc.served(route, requestID, status, complete && !cutByServer)
	}
	method := methodLabel(c.Request.Method)
	span := trace.SpanFromContext(c.Request.Context())
	sc := span.SpanContext()
	rs := m.seriesOf(method, route)
	rs.code(status).Inc()
	// An exemplar only for a span this process records and exports: a
	// caller's sampled context continued while tracing is off would point
	// at a trace that has no span of ours.
	if eo, ok := rs.duration.(prometheus.ExemplarObserver); ok && a.exemplars && span.IsRecording() {
		eo.ObserveWithExemplar(elapsed.Seconds(), prometheus.Labels{"trace_id": sc.TraceID().String()})
	} else {
		rs.duration.Observe(elapsed.Seconds())
	}
	rs.size.Observe(float64(size))

	if quiet[route] && status < 500 {
		return
	}
	level := slog.LevelInfo
	switch {
	case status >= 500 && quiet[route]:
		// A probe that fails says the state the service is in (not ready
		// while it starts and through every shutdown), which its own lines
		// tell; at ERROR every rollout would write errors.
		level = slog.LevelWarn
	case status >= 500:
		level = slog.LevelError
	case timedOut || cutByServer:
		level = slog.LevelWarn
	}
	h := logger.Handler()
	if !h.Enabled(context.Background(), level) {
		return
	}
	// trace_id and span_id are always present (empty without a span) so
	// every access line has the same keys; the background context keeps
	// the trace handler from adding them twice.
	latencyUS := elapsed.Microseconds()
	if th, ok := h.(traceHandler); ok && th.json && level < slog.LevelWarn {
		// The JSON sink is known: encode the line directly (same shape
		// as slog's). Errors go through slog below, so they flush.
		line := accessLine{
			time: start.Add(elapsed), level: "INFO", method: method, route: route,
			path: cutLong(c.Request.URL.Path), status: status, latencyUS: latencyUS, bytes: size,
			clientIP: clientip.Of(c), requestID: requestID,
			span: sc,
		}
		_ = line.write(th.w)
		return
	}
	var traceID, spanID string
	if sc.IsValid() {
		traceID, spanID = sc.TraceID().String(), sc.SpanID().String()
	}
	// A record without a caller PC: the access line's source is always
	// this function, and runtime.Callers is a tenth of the line's cost.
	r := slog.NewRecord(start.Add(elapsed), level, "request", 0)
	r.AddAttrs(
		slog.String("method", method),
		slog.String("route", route),
		slog.String("path", cutLong(c.Request.URL.Path)),
		slog.Int("status", status),
		slog.Float64("latency_ms", float64(latencyUS)/1000),
		slog.Int("bytes", size),
		slog.String("client_ip", clientip.Of(c)),
		slog.String("request_id", requestID),
		slog.String("trace_id", traceID),
		slog.String("span_id", spanID),
	)
	switch {
	case timedOut:
		r.AddAttrs(slog.String("error", "write_timeout: HTTP/2 stream reset by the server at HTTP_WRITE_TIMEOUT, the client got no response"))
	case cutByServer:
		r.AddAttrs(slog.String("error", "server_closed: the server closed the connection while serving the request (a forced close: SHUTDOWN_TIMEOUT ran out), the client got no complete response"))
	}
	_ = h.Handle(context.Background(), r)
}

// MaxLoggedPath is how much of a request path an access line and a span
// keep, and of a User-Agent in a span. Either may be as long as the header
// limit (64 KB); kept whole, every such request would write a 64 KB log
// line, past what log shippers accept as one line (Docker's json-file
// splits at 16 KB), also for unmatched routes, which no limiter meters.
const MaxLoggedPath = 2048

// cutLong is p cut to MaxLoggedPath bytes at a UTF-8 boundary, with the
// number of bytes left out, e.g. "/aaaa…(+28672 bytes)".
func cutLong(p string) string {
	if len(p) <= MaxLoggedPath {
		return p
	}
	cut := MaxLoggedPath
	for cut > MaxLoggedPath-utf8.UTFMax && !utf8.RuneStart(p[cut]) {
		cut--
	}
	return p[:cut] + "…(+" + strconv.Itoa(len(p)-cut) + " bytes)"
}

// bodySent is the size of the response body the handlers sent: what they
// wrote, except for HEAD, whose body net/http drops. It is what left the
// handlers, not what the client received: a response cut short (the client
// left, a stream reset, the write timeout) may have reached it in part or
// not at all, and a write HTTP/2 refused after its stream ended counts 0.
func bodySent(c *gin.Context) int {
	if c.Request.Method == http.MethodHead {
		return 0
	}
	return max(0, c.Writer.Size())
}

// connOf returns the request's tracked connection when it is HTTP/1 (HTTP/2
// serves many requests at once on one connection, and its broken streams do
// not close it), or nil.
func connOf(c *gin.Context) *trackedConn {
	if c.Request.ProtoMajor != 1 && c.Request.TLS != nil {
		return nil // HTTP/2; without TLS (h2c's preface, refused) the connection is HTTP/1's
	}
	return trackedFrom(c.Request.Context())
}

// clientAborted reports whether the client went away before the response:
// a handler said so, or the request context was cancelled (net/http cancels
// it when the connection closes; BaseContext keeps shutdown from doing so).
// net/http also cancels it when a read or a write runs into the server's
// own deadline (HTTP_READ_TIMEOUT: a body too slow; HTTP_WRITE_TIMEOUT: a
// response past it, once it outgrows net/http's buffer); the tracked
// connection tc, when known, tells those apart, and the handler's answer
// stands (the connection's close line says which deadline cut it). On
// HTTP/2 there is no such record: the access middleware marks a stream
// that ran past its write deadline (streamTimedOut).
func clientAborted(c *gin.Context, tc *trackedConn) bool {
	if serverCut(c, tc) || tc == nil && c.Request.ProtoMajor == 2 && c.GetBool(keyWriteTimeout) {
		return false // the server's doing, whatever the handler made of it
	}
	if c.GetBool(keyClientAbort) {
		return true
	}
	if c.Request.Context().Err() == nil {
		return false
	}
	if tc == nil {
		return true
	}
	cause := tc.cause.Load()
	return cause != causeReadTimeout && cause != causeWriteTimeout
}

// methodLabel bounds the method label: net/http accepts any token as a
// method, and every new one would be a new series and span name.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return methodOther
}

// The accessors below expose single series for tests and drills.

// RequestsCounter returns the http_server_requests_total series.
func (m *HTTPMetrics) RequestsCounter(method, route, code string) prometheus.Counter {
	return m.requests.WithLabelValues(method, route, code)
}

// AbortsCounter returns the client-abort series of route.
func (m *HTTPMetrics) AbortsCounter(route string) prometheus.Counter {
	return m.aborts.WithLabelValues(route)
}

// TruncatedCounter returns the truncated-body series of route.
func (m *HTTPMetrics) TruncatedCounter(route string) prometheus.Counter {
	return m.truncated.WithLabelValues(route)
}

// PanicsCounter returns the panic series of route.
func (m *HTTPMetrics) PanicsCounter(route string) prometheus.Counter {
	return m.panics.WithLabelValues(route)
}
