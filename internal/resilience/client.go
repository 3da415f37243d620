package resilience

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/hardenedgo/ginservice/internal/connerr"
)

// ClientConfig tunes the outbound client. The comments name the environment
// variables the service exposes them as.
type ClientConfig struct {
	// Retries.
	AttemptTimeout   time.Duration // DOWNSTREAM_ATTEMPT_TIMEOUT: one attempt, headers and body; inside the caller's deadline
	MaxAttempts      int           // DOWNSTREAM_MAX_ATTEMPTS: first try included; 1 disables retries
	BackoffBase      time.Duration // ClientConfig.BackoffBase: full-jitter backoff, first retry waits up to this
	BackoffCap       time.Duration // ClientConfig.BackoffCap: upper bound of one backoff
	MaxRetryAfter    time.Duration // ClientConfig.MaxRetryAfter: a longer Retry-After is not waited for
	RetryBudgetRatio float64       // DOWNSTREAM_RETRY_BUDGET_RATIO: retries per request, on average, per host
	RetryBudgetBurst int           // ClientConfig.RetryBudgetBurst: retries allowed before the ratio applies

	// Transport.
	MaxIdleConns          int           // ClientConfig.MaxIdleConns: idle connections kept, all hosts
	MaxIdleConnsPerHost   int           // ClientConfig.MaxIdleConnsPerHost: well above the stdlib's 2
	MaxConnsPerHost       int           // DOWNSTREAM_MAX_CONNS_PER_HOST: 0 = unlimited
	IdleConnTimeout       time.Duration // DOWNSTREAM_IDLE_CONN_TIMEOUT: shorter than the peer's keep-alive timeout
	DialTimeout           time.Duration // ClientConfig.DialTimeout
	KeepAlive             time.Duration // ClientConfig.KeepAlive: TCP keep-alive probe interval
	TLSHandshakeTimeout   time.Duration // ClientConfig.TLSHandshakeTimeout
	ResponseHeaderTimeout time.Duration // ClientConfig.ResponseHeaderTimeout: transport backstop; never shorter than AttemptTimeout
	ExpectContinueTimeout time.Duration // ClientConfig.ExpectContinueTimeout
}

// DefaultClientConfig returns defaults sized for a dependency behind a
// 1s breaker timeout: two or three attempts fit in it.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		AttemptTimeout:   400 * time.Millisecond,
		MaxAttempts:      3,
		BackoffBase:      20 * time.Millisecond,
		BackoffCap:       200 * time.Millisecond,
		MaxRetryAfter:    2 * time.Second,
		RetryBudgetRatio: 0.1,
		RetryBudgetBurst: 10,

		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 128,
		MaxConnsPerHost:     256,
		// Below the 60s of nginx/ALB and the 75s of this service's own
		// HTTP_IDLE_TIMEOUT: the client, not the peer, closes idle
		// connections, so a request never races a server-side close.
		IdleConnTimeout:       30 * time.Second,
		DialTimeout:           time.Second,
		KeepAlive:             30 * time.Second,
		TLSHandshakeTimeout:   2 * time.Second,
		ResponseHeaderTimeout: time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// Validate reports the first bad setting, naming its environment variable
// for the settings config reads from one (DOWNSTREAM_*), its field for the
// others, which only code sets.
func (c ClientConfig) Validate() error {
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"DOWNSTREAM_ATTEMPT_TIMEOUT", c.AttemptTimeout},
		{"ClientConfig.BackoffBase", c.BackoffBase},
		{"ClientConfig.BackoffCap", c.BackoffCap},
		{"DOWNSTREAM_IDLE_CONN_TIMEOUT", c.IdleConnTimeout},
		{"ClientConfig.DialTimeout", c.DialTimeout},
		{"ClientConfig.TLSHandshakeTimeout", c.TLSHandshakeTimeout},
		{"ClientConfig.ResponseHeaderTimeout", c.ResponseHeaderTimeout},
		{"ClientConfig.ExpectContinueTimeout", c.ExpectContinueTimeout},
	}
	for _, p := range positive {
		if p.d <= 0 {
			return fmt.Errorf("%s: must be > 0, got %s", p.name, p.d)
		}
	}
	switch {
	case c.MaxRetryAfter < 0:
		return fmt.Errorf("ClientConfig.MaxRetryAfter: must be >= 0, got %s", c.MaxRetryAfter)
	case c.KeepAlive < 0:
		return fmt.Errorf("ClientConfig.KeepAlive: must be >= 0, got %s", c.KeepAlive)
	case c.BackoffBase > c.BackoffCap:
		return fmt.Errorf("ClientConfig.BackoffBase: %s is above ClientConfig.BackoffCap %s", c.BackoffBase, c.BackoffCap)
	case c.MaxAttempts < 1 || c.MaxAttempts > 10:
		return fmt.Errorf("DOWNSTREAM_MAX_ATTEMPTS: must be within [1, 10], got %d", c.MaxAttempts)
	case !(c.RetryBudgetRatio >= 0 && c.RetryBudgetRatio <= 1): // NaN too
		return fmt.Errorf("DOWNSTREAM_RETRY_BUDGET_RATIO: must be within [0, 1], got %v", c.RetryBudgetRatio)
	case c.RetryBudgetBurst < 0:
		return fmt.Errorf("ClientConfig.RetryBudgetBurst: must be >= 0, got %d", c.RetryBudgetBurst)
	case c.MaxIdleConns < 1:
		return fmt.Errorf("ClientConfig.MaxIdleConns: must be >= 1, got %d", c.MaxIdleConns)
	case c.MaxIdleConnsPerHost < 1 || c.MaxIdleConnsPerHost > c.MaxIdleConns:
		return fmt.Errorf("ClientConfig.MaxIdleConnsPerHost: must be within [1, ClientConfig.MaxIdleConns=%d], got %d", c.MaxIdleConns, c.MaxIdleConnsPerHost)
	case c.MaxConnsPerHost < 0:
		return fmt.Errorf("DOWNSTREAM_MAX_CONNS_PER_HOST: must be >= 0 (0 = unlimited), got %d", c.MaxConnsPerHost)
	}
	return nil
}

// ClientOption customises NewClient.
type ClientOption func(*clientOptions)

type clientOptions struct {
	propagator propagation.TextMapPropagator
}

// WithPropagator sets the propagator that injects trace context into
// outbound requests; the default is otel.GetTextMapPropagator().
func WithPropagator(p propagation.TextMapPropagator) ClientOption {
	return func(o *clientOptions) { o.propagator = p }
}

// Client is the resilient outbound HTTP client. Do retries what is safe to
// retry; a Client is safe for concurrent use.
type Client struct {
	cfg       ClientConfig
	transport *http.Transport
	rt        http.RoundTripper
	logger    *slog.Logger

	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	retries   *prometheus.CounterVec
	conns     *prometheus.CounterVec
	errs      *prometheus.CounterVec   // failed attempts by error kind and connection
	staleIdle *prometheus.HistogramVec // idle time of pooled connections found closed

	budgets sync.Map // host -> *retryBudget
}

// NewClient builds a Client. tp nil means no client spans and no trace
// propagation.
func NewClient(cfg ClientConfig, logger *slog.Logger, reg prometheus.Registerer, tp trace.TracerProvider, opts ...ClientOption) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var o clientOptions
	for _, opt := range opts {
		opt(&o)
	}
	c := &Client{cfg: cfg, logger: logger}
	var err error
	if c.requests, err = registerCounterVec(reg, prometheus.CounterOpts{
		Name: "http_client_requests_total",
		Help: "Outbound HTTP attempts by host, method and status code (code=\"error\" for transport errors).",
	}, []string{"host", "method", "code"}); err != nil {
		return nil, err
	}
	if c.retries, err = registerCounterVec(reg, prometheus.CounterOpts{
		Name: "http_client_retries_total",
		Help: "Outbound HTTP retries by host and reason (eof, reset, refused, timeout, status_429, status_502, status_503, status_504).",
	}, []string{"host", "reason"}); err != nil {
		return nil, err
	}
	if c.conns, err = registerCounterVec(reg, prometheus.CounterOpts{
		Name: "http_client_connections_total",
		Help: "Connections obtained for outbound HTTP attempts, by host and whether they were reused (keep-alive).",
	}, []string{"host", "reused"}); err != nil {
		return nil, err
	}
	if c.errs, err = registerCounterVec(reg, prometheus.CounterOpts{
		Name: "http_client_attempt_errors_total",
		Help: "Outbound HTTP attempts that failed without a response, by host, kind (eof, reset, refused, timeout, canceled, name_resolution_error, tls, other) and the connection they failed on: new, reused (kept alive: an eof or reset there is mostly the peer having closed it while idle) or none (no connection was made).",
	}, []string{"host", "kind", "connection"}); err != nil {
		return nil, err
	}
	if c.duration, err = register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "http_client_request_duration_seconds",
		Help:    "Outbound HTTP attempt latency until the response headers (or the error), by host.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"host"}), "http_client_request_duration_seconds"); err != nil {
		return nil, err
	}
	// Buckets around the keep-alive timeouts servers ship with (gunicorn
	// 2 s, Node.js and Apache 5 s, Tomcat 20 s, nginx 75 s, load balancers
	// 60 s and up).
	if c.staleIdle, err = register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "http_client_stale_connection_idle_seconds",
		Help:    "How long each pooled outbound connection had been idle when reusing it failed because the peer had closed it: an eof or reset on it, or net/http replaying the request on a new connection by itself (idempotent requests). Failures start at about the peer's keep-alive timeout; DOWNSTREAM_IDLE_CONN_TIMEOUT must be below it.",
		Buckets: []float64{.25, .5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120},
	}, []string{"host"}), "http_client_stale_connection_idle_seconds"); err != nil {
		return nil, err
	}
	idleTimeout, err := register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "http_client_idle_timeout_seconds",
		Help: "DOWNSTREAM_IDLE_CONN_TIMEOUT: pooled outbound connections idle longer are closed by the service before their peer does.",
	}), "http_client_idle_timeout_seconds")
	if err != nil {
		return nil, err
	}
	idleTimeout.Set(cfg.IdleConnTimeout.Seconds())

	idlePerHost := cfg.MaxIdleConnsPerHost
	if cfg.MaxConnsPerHost > 0 {
		// More idle connections than connections cannot exist; a lower
		// connection cap simply lowers the idle one.
		idlePerHost = min(idlePerHost, cfg.MaxConnsPerHost)
	}
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: cfg.KeepAlive}
	// A backstop for callers without a deadline: it must not cut an attempt
	// short of DOWNSTREAM_ATTEMPT_TIMEOUT.
	headerTimeout := max(cfg.ResponseHeaderTimeout, cfg.AttemptTimeout)
	c.transport = &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          cfg.MaxIdleConns,
		MaxIdleConnsPerHost:   idlePerHost,
		MaxConnsPerHost:       cfg.MaxConnsPerHost,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		TLSHandshakeTimeout:   cfg.TLSHandshakeTimeout,
		ResponseHeaderTimeout: headerTimeout,
		ExpectContinueTimeout: cfg.ExpectContinueTimeout,
	}
	c.rt = connTracking{c: c, rt: c.transport}
	if tp != nil {
		prop := o.propagator
		if prop == nil {
			prop = otel.GetTextMapPropagator()
		}
		// One client span per attempt, so retries show in the trace; the
		// span's error is connTracking's, naming a kept-alive connection.
		c.rt = otelhttp.NewTransport(resendCount{c.rt},
			otelhttp.WithTracerProvider(tp),
			otelhttp.WithPropagators(prop),
			// Our own Prometheus metrics cover outbound calls; keep otelhttp
			// away from the global meter provider.
			otelhttp.WithMeterProvider(noop.NewMeterProvider()),
			// The HTTP semantic conventions name a client span by its
			// method alone ("GET"); otelhttp's default is "HTTP GET".
			otelhttp.WithSpanNameFormatter(clientSpanName),
		)
	}
	return c, nil
}

// connTracking follows the connections each attempt gets (httptrace), under
// otelhttp: it counts them, counts failed attempts by kind and connection,
// and notes a pooled connection the peer had closed, in the stale histogram
// and in the error the caller and the client span see: "EOF (on a
// kept-alive connection idle 4.98s)".
type connTracking struct {
	c  *Client
	rt http.RoundTripper
}

func (t connTracking) RoundTrip(req *http.Request) (*http.Response, error) {
	c, host := t.c, req.URL.Host
	var u connerr.Use
	ctx := httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			c.conns.WithLabelValues(host, strconv.FormatBool(info.Reused)).Inc()
			// The host's stale series exists from its first connection on,
			// so increase() sees the first stale one too.
			stale := c.staleIdle.WithLabelValues(host)
			// net/http replays a request on a new connection by itself
			// when the pooled one it tried was closed by the peer.
			if idle, ok := u.Got(info); ok {
				stale.Observe(idle.Seconds())
			}
		},
	})
	resp, err := t.rt.RoundTrip(req.WithContext(ctx))
	if err == nil {
		return resp, nil
	}
	kind := spanErrorType(err)
	if kind == "" {
		kind = "other"
	}
	got, reused, idle := u.Last()
	conn := "none"
	switch {
	case reused:
		conn = "reused"
	case got:
		conn = "new"
	}
	c.errs.WithLabelValues(host, kind, conn).Inc()
	if reused && (kind == "eof" || kind == "reset") {
		// The peer closed the pooled connection as it was reused: the
		// client side of the keep-alive race. The error says so, with the
		// idle time that points at the peer's keep-alive timeout.
		c.staleIdle.WithLabelValues(host).Observe(idle.Seconds())
		err = connerr.OnKeptAlive(err, idle)
	}
	return resp, err
}

type resendKey struct{}

// resendCount sits under otelhttp: it marks a retried attempt's client span
// with http.request.resend_count (HTTP semantic conventions), which only
// the retry loop knows.
type resendCount struct{ rt http.RoundTripper }

func (r resendCount) RoundTrip(req *http.Request) (*http.Response, error) {
	if n, ok := req.Context().Value(resendKey{}).(int); ok {
		trace.SpanFromContext(req.Context()).SetAttributes(semconv.HTTPRequestResendCount(n))
	}
	resp, err := r.rt.RoundTrip(req)
	if err != nil {
		if kind := spanErrorType(err); kind != "" {
			err = &typedError{err: err, kind: kind}
		}
	}
	return resp, err
}

// typedError carries a failed attempt's error.type up to otelhttp, which
// records semconv.ErrorType(err): that reads an ErrorType method, and
// without one it is the error's Go type, "*errors.errorString" for a
// cancelled attempt and "*net.OpError" for most connection failures.
// Everything else about the error is the transport's.
type typedError struct {
	err  error
	kind string
}

func (e *typedError) Error() string     { return e.err.Error() }
func (e *typedError) Unwrap() error     { return e.err }
func (e *typedError) ErrorType() string { return e.kind }

// Timeout keeps url.Error.Timeout (a type assertion on its Err, not
// errors.As) answering as it would for the transport's own error.
func (e *typedError) Timeout() bool {
	var t interface{ Timeout() bool }
	return errors.As(e.err, &t) && t.Timeout()
}

// spanErrorType is the error.type of a failed attempt's client span: the
// retry reasons' names (refused, reset, eof, timeout), canceled,
// name_resolution_error and tls; "" leaves otelhttp's type name.
func spanErrorType(err error) string {
	var dnsErr *net.DNSError
	var recErr tls.RecordHeaderError
	var certErr *tls.CertificateVerificationError
	var alert tls.AlertError
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &dnsErr):
		return "name_resolution_error"
	case errors.As(err, &certErr), errors.As(err, &recErr), errors.As(err, &alert):
		return "tls"
	}
	return connerr.Kind(err)
}

// clientSpanName names an outbound attempt's span: the method, "HTTP" for
// one outside HTTP's own (which would make a span name per method).
func clientSpanName(_ string, r *http.Request) string {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return r.Method
	case "":
		return http.MethodGet
	}
	return "HTTP"
}

// CloseIdleConnections closes idle keep-alive connections (at shutdown).
func (c *Client) CloseIdleConnections() { c.transport.CloseIdleConnections() }

// Do sends req, retrying when that is safe and useful:
//   - only requests that can be replayed: idempotent methods (GET, HEAD,
//     OPTIONS, TRACE, PUT, DELETE) or an Idempotency-Key header, and a body
//     that can be rewound (GetBody);
//   - only on connection errors (EOF, reset, refused), attempt timeouts and
//     429/502/503/504;
//   - with full-jitter exponential backoff, or Retry-After when longer
//     (never longer than MaxRetryAfter nor past the caller's deadline);
//   - only while the host's retry budget allows, so retries cannot
//     multiply an outage.
//
// Each attempt has its own timeout inside the caller's deadline. Redirects
// are not followed. The caller must close the response body.
func (c *Client) Do(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	host := req.URL.Host
	replayable := isReplayable(req)
	budget := c.budget(host)
	budget.deposit()
	var body io.ReadCloser // the rewound request body of the next attempt
	for attempt := 1; ; attempt++ {
		resp, cancel, err := c.attempt(req, body, host, attempt-1)
		reason := retryReason(ctx, resp, err)
		if reason == "" || !replayable || attempt >= c.cfg.MaxAttempts {
			return finish(resp, cancel, err)
		}
		wait := c.backoff(attempt)
		if resp != nil {
			if ra, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
				if ra > c.cfg.MaxRetryAfter {
					return finish(resp, cancel, err)
				}
				wait = max(wait, ra)
			}
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= wait {
			// Waiting would outlive the caller: give them the answer we have.
			return finish(resp, cancel, err)
		}
		// The body is rewound before the answer in hand is let go: if it
		// cannot be, the caller gets that answer.
		body = nil
		if req.Body != nil && req.Body != http.NoBody {
			b, gerr := req.GetBody()
			if gerr != nil {
				c.logger.DebugContext(ctx, "request body not rewound, not retried", slog.String("host", host), slog.String("error", gerr.Error()))
				return finish(resp, cancel, err)
			}
			body = b
		}
		if !budget.withdraw() {
			c.logger.DebugContext(ctx, "retry budget exhausted", slog.String("host", host), slog.String("reason", reason))
			closeBody(body)
			return finish(resp, cancel, err)
		}
		if resp != nil {
			drain(resp.Body)
		}
		cancel()
		c.retries.WithLabelValues(host, reason).Inc()
		if c.logger.Enabled(ctx, slog.LevelDebug) {
			attrs := []any{slog.String("host", host), slog.String("method", req.Method), slog.Int("attempt", attempt+1),
				slog.String("reason", reason), slog.String("wait", wait.String())}
			if err != nil {
				// Names a kept-alive connection the peer had closed, and its idle time.
				attrs = append(attrs, slog.String("error", err.Error()))
			}
			c.logger.DebugContext(ctx, "retrying outbound request", attrs...)
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				closeBody(body)
				return nil, &url.Error{Op: urlOp(req.Method), URL: redact(req.URL), Err: ctx.Err()}
			case <-t.C:
			}
		}
	}
}

func closeBody(b io.ReadCloser) {
	if b != nil {
		_ = b.Close()
	}
}

// attempt sends one attempt under its own timeout, with body (a rewound
// copy of the request's) when it is not nil. The returned cancel must be
// called once the response is done with (finish ties it to Body.Close).
func (c *Client) attempt(req *http.Request, body io.ReadCloser, host string, resend int) (*http.Response, context.CancelFunc, error) {
	actx, cancel := context.WithTimeout(req.Context(), c.cfg.AttemptTimeout)
	if resend > 0 {
		actx = context.WithValue(actx, resendKey{}, resend)
	}
	areq := req.WithContext(actx)
	if body != nil {
		areq.Body = body
	}
	start := time.Now()
	resp, err := c.rt.RoundTrip(areq)
	c.duration.WithLabelValues(host).Observe(time.Since(start).Seconds())
	code := "error"
	if err == nil {
		code = strconv.Itoa(resp.StatusCode)
	} else {
		err = &url.Error{Op: urlOp(req.Method), URL: redact(req.URL), Err: err}
	}
	c.requests.WithLabelValues(host, req.Method, code).Inc()
	return resp, cancel, err
}

func finish(resp *http.Response, cancel context.CancelFunc, err error) (*http.Response, error) {
	if cancel == nil {
		return resp, err
	}
	if err != nil || resp == nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelOnClose ends the attempt's context when the caller is done with the
// body: cancelling earlier would cut the body short.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// drain reads a little of a response we are retrying past, so its
// connection goes back to the pool instead of being closed.
func drain(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 4<<10)
	_ = body.Close()
}

func isReplayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return req.Header.Get("Idempotency-Key") != "" || req.Header.Get("X-Idempotency-Key") != ""
}

// retryReason classifies one attempt's outcome: "" means do not retry.
func retryReason(ctx context.Context, resp *http.Response, err error) string {
	if ctx.Err() != nil {
		return "" // the caller gave up
	}
	if err != nil {
		if errors.Is(err, ErrOpen) {
			return "" // retrying an open breaker defeats it
		}
		// A timeout here is this attempt's: the caller still has time.
		return connerr.Kind(err)
	}
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return "status_" + strconv.Itoa(resp.StatusCode)
	}
	return ""
}

// backoff is "full jitter": uniform in [0, min(cap, base*2^(attempt-1))].
func (c *Client) backoff(attempt int) time.Duration {
	d := c.cfg.BackoffCap
	if shift := attempt - 1; shift < 30 {
		d = min(d, c.cfg.BackoffBase<<shift)
	}
	return rand.N(d + 1)
}

// parseRetryAfter reads delay-seconds or an HTTP date (RFC 9110 §10.2.3).
// delay-seconds is digits only; a value too large for a Duration is the
// longest one (a server that asks to wait that long is not retried), not
// one that wraps around to a negative wait and a retry at once.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if d, ok := delaySeconds(v); ok {
		return d, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// delaySeconds parses 1*DIGIT as seconds, saturating at the longest
// Duration.
func delaySeconds(v string) (time.Duration, bool) {
	const maxSeconds = int64(math.MaxInt64 / time.Second)
	var s int64
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false
		}
		if s = s*10 + int64(v[i]-'0'); s > maxSeconds {
			s = maxSeconds + 1
		}
	}
	if s > maxSeconds {
		return time.Duration(math.MaxInt64), true
	}
	return time.Duration(s) * time.Second, true
}

func (c *Client) budget(host string) *retryBudget {
	if b, ok := c.budgets.Load(host); ok {
		return b.(*retryBudget)
	}
	b, _ := c.budgets.LoadOrStore(host, newRetryBudget(c.cfg.RetryBudgetRatio, c.cfg.RetryBudgetBurst))
	return b.(*retryBudget)
}

// retryBudget is a token bucket filled by requests, not by time: each
// request deposits ratio tokens (up to the burst), each retry takes one.
// During a total outage retries are at most burst + ratio*requests. Tokens
// are counted in millionths so that ten deposits of 0.1 make exactly one,
// and a ratio as small as 0.0004 still refills.
type retryBudget struct {
	mu       sync.Mutex
	micro    int64
	deposit1 int64
	capacity int64
}

const microToken = 1_000_000

func newRetryBudget(ratio float64, burst int) *retryBudget {
	deposit := int64(math.Round(ratio * microToken))
	if ratio > 0 {
		deposit = max(deposit, 1) // a ratio under a millionth still refills
	}
	return &retryBudget{
		micro:    int64(burst) * microToken,
		deposit1: deposit,
		// At least one token, or a zero burst would never let a retry through.
		capacity: int64(max(burst, 1)) * microToken,
	}
}

func (b *retryBudget) deposit() {
	b.mu.Lock()
	b.micro = min(b.capacity, b.micro+b.deposit1)
	b.mu.Unlock()
}

func (b *retryBudget) withdraw() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.micro < microToken {
		return false
	}
	b.micro -= microToken
	return true
}

func urlOp(method string) string {
	if method == "" {
		return "Get"
	}
	return method[:1] + strings.ToLower(method[1:])
}

// redact drops userinfo and query from URLs that go into errors and logs.
func redact(u *url.URL) string {
	r := *u
	r.User = nil
	r.RawQuery = ""
	r.ForceQuery = false
	return r.String()
}
