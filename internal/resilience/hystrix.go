package resilience

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/afex/hystrix-go/hystrix"
	metricCollector "github.com/afex/hystrix-go/hystrix/metric_collector"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/hardenedgo/ginservice/internal/health"
)

// HystrixBreaker is the Breaker on afex/hystrix-go. hystrix-go is
// unmaintained and has known defects; this wrapper neutralises them:
//
//   - #84, a timed-out call keeps running and its bulkhead slot is freed:
//     run gets a child context whose deadline is the command timeout, and
//     the bulkhead is our own semaphore, held until run really returns;
//   - a panic in the command kills the process (it runs on a hystrix
//     goroutine that Gin's recovery cannot see): recovered, logged with its
//     stack, counted as a failure, and the fallback is served;
//   - #72, every error counts as a failure: caller errors (see IsFailure)
//     are reported to hystrix as successes and returned as they are;
//   - #36/#37/#71, writes to captured variables after a timeout race:
//     results travel through channels (Execute), the fallback runs on the
//     caller's goroutine;
//   - settings are global and fixed at first use: every instance gets its
//     own command name, configured and created in the constructor, so
//     several servers or tests in one process never share or re-size a
//     circuit.
type HystrixBreaker struct {
	name      string // metric label, e.g. "items"
	command   string // unique hystrix command name
	timeout   time.Duration
	slots     chan struct{}
	isFailure func(error) bool
	logger    *slog.Logger
	circuit   *hystrix.CircuitBreaker
	events    *prometheus.CounterVec // curried with command
	open      atomic.Bool            // last state seen by Do, for transition logs
}

// BreakerOption customises a HystrixBreaker.
type BreakerOption func(*HystrixBreaker)

// WithFailureClassifier replaces IsFailure: isFailure(err) says whether err
// counts against the circuit and triggers the fallback.
func WithFailureClassifier(isFailure func(error) bool) BreakerOption {
	return func(b *HystrixBreaker) { b.isFailure = isFailure }
}

// Breaker events, the values of breaker_events_total{event}.
const (
	eventSuccess         = "success"
	eventFailure         = "failure"
	eventTimeout         = "timeout"
	eventRejected        = "rejected"
	eventShortCircuited  = "short_circuited"
	eventFallbackSuccess = "fallback_success"
	eventFallbackFailure = "fallback_failure"
)

// NewHystrixBreaker configures and creates the hystrix command for one
// dependency. name is the metric label (breaker_open{command}); the hystrix
// command behind it is name plus a random suffix.
func NewHystrixBreaker(name string, cfg BreakerConfig, logger *slog.Logger, reg prometheus.Registerer, opts ...BreakerOption) (*HystrixBreaker, error) {
	if name == "" {
		return nil, errors.New("resilience: breaker name must not be empty")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	events, err := registerCounterVec(reg, prometheus.CounterOpts{
		Name: "breaker_events_total",
		Help: "Circuit breaker events by command: success, failure, timeout, rejected, short_circuited, fallback_success, fallback_failure. failure/timeout/short_circuited are what hystrix recorded (it drops samples when its metrics queue is full, at tens of thousands of calls per second); success (the dependency answered, caller errors included), rejected and fallback_* are exact.",
	}, []string{"command", "event"})
	if err != nil {
		return nil, err
	}
	b := &HystrixBreaker{
		name:      name,
		timeout:   cfg.Timeout,
		slots:     make(chan struct{}, cfg.MaxConcurrent),
		isFailure: IsFailure,
		logger:    logger.With(slog.String("command", name)),
		events:    events.MustCurryWith(prometheus.Labels{"command": name}),
	}
	for _, o := range opts {
		o(b)
	}
	// Pre-create every series so dashboards show zeros, not gaps.
	for _, e := range []string{eventSuccess, eventFailure, eventTimeout, eventRejected, eventShortCircuited, eventFallbackSuccess, eventFallbackFailure} {
		b.events.WithLabelValues(e)
	}

	if err := b.createCommand(cfg); err != nil {
		return nil, err
	}

	openGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "breaker_open",
		Help:        "1 while the circuit of the command is open.",
		ConstLabels: prometheus.Labels{"command": name},
	}, func() float64 {
		if b.Open() {
			return 1
		}
		return 0
	})
	if err := reg.Register(openGauge); err != nil {
		return nil, fmt.Errorf("resilience: register breaker_open{command=%q} (one breaker per name and registry): %w", name, err)
	}
	return b, nil
}

// createCommand picks an unused command name, applies the settings and
// creates the circuit now, so its pool size and settings are fixed here and
// not by whichever request comes first.
func (b *HystrixBreaker) createCommand(cfg BreakerConfig) error {
	sink := &collectorSink{events: b.events}
	for range 8 {
		cmd := fmt.Sprintf("%s#%016x", b.name, rand.Uint64())
		if _, taken := hystrix.GetCircuitSettings()[cmd]; taken {
			continue
		}
		hystrixPlugin.route(cmd, sink)
		hystrix.ConfigureCommand(cmd, hystrix.CommandConfig{
			Timeout: ceilMillis(cfg.Timeout),
			// The real bulkhead is b.slots. hystrix's own pool frees a slot on
			// timeout (#84) and, worse, only after the caller has its answer:
			// the ticket goes back through an unbuffered channel to a single
			// metrics goroutine, so under a high call rate finished calls pile
			// up holding tickets, and a pool sized like the bulkhead rejects
			// healthy calls (rejections count as errors and can open the
			// circuit; seen at ~100k calls/s with a 200-ticket pool, and
			// bursts of over 10k pending calls with 64 concurrent callers on
			// 2 saturated cores). The headroom absorbs such pile-ups; a ticket
			// is one pointer, so it costs 256 KiB per command.
			MaxConcurrentRequests:  2*cfg.MaxConcurrent + hystrixPoolHeadroom,
			RequestVolumeThreshold: cfg.RequestVolume,
			SleepWindow:            ceilMillis(cfg.SleepWindow),
			ErrorPercentThreshold:  cfg.ErrorPercent,
		})
		circuit, created, err := hystrix.GetCircuit(cmd)
		hystrixPlugin.unroute(cmd)
		if err != nil {
			return fmt.Errorf("resilience: create hystrix command %s: %w", cmd, err)
		}
		if !created {
			continue
		}
		b.command, b.circuit = cmd, circuit
		return nil
	}
	return errors.New("resilience: no free hystrix command name")
}

// hystrixPoolHeadroom is added to hystrix's ticket pool; see createCommand.
const hystrixPoolHeadroom = 1 << 15

func ceilMillis(d time.Duration) int {
	return int((d + time.Millisecond - 1) / time.Millisecond)
}

// Name is the metric label of the breaker.
func (b *HystrixBreaker) Name() string { return b.name }

// Open reports whether the circuit is open now.
func (b *HystrixBreaker) Open() bool { return b.circuit.IsOpen() }

// Check is a health.Check: degraded while the circuit is open (the
// fallback answers, the instance stays ready).
func (b *HystrixBreaker) Check(context.Context) health.Status {
	if b.Open() {
		return health.StatusDegraded
	}
	return health.StatusOK
}

// call states: who owns the bulkhead slot.
const (
	callIdle      int32 = iota // run has not started
	callRunning                // run started: it frees the slot when it returns
	callAbandoned              // Do returned first: Do freed the slot, run must not start
)

type call struct {
	b      *HystrixBreaker
	run    func(ctx context.Context) error
	ctx    context.Context // the work's context: the caller's, with the command deadline
	cancel context.CancelFunc
	state  atomic.Int32
	result chan error // run's own error, sent once
	// openAtStart: the circuit was open when Do began. A call that finds it
	// still open when it runs was let through as the half-open probe.
	openAtStart bool
	// probeOK: this call was the probe and the dependency answered; hystrix
	// closes the circuit on it. Written before result is sent.
	probeOK bool
}

// Do implements Breaker.
func (b *HystrixBreaker) Do(ctx context.Context, run func(ctx context.Context) error, fallback func(ctx context.Context, err error) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case b.slots <- struct{}{}:
	default:
		b.events.WithLabelValues(eventRejected).Inc()
		return b.fallback(ctx, ErrRejected, fallback)
	}
	// The work's deadline is made here rather than on hystrix's goroutine,
	// whose small fresh stack would have to grow for it on every call.
	rctx, cancel := context.WithTimeout(ctx, b.timeout)
	c := &call{b: b, run: run, ctx: rctx, cancel: cancel, result: make(chan error, 1), openAtStart: b.circuit.IsOpen()}
	// The caller's ctx goes to hystrix so that a caller who leaves is
	// reported as context_canceled, not as a failure.
	herr := hystrix.DoC(ctx, b.command, c.exec, nil)
	if c.state.CompareAndSwap(callIdle, callAbandoned) {
		cancel()
		<-b.slots
	}
	// run may have finished in the same instant hystrix gave up; if it has
	// an answer (success or caller error), that answer wins.
	select {
	case err := <-c.result:
		if err == nil || !b.isFailure(err) && !isPanic(err) && ctx.Err() == nil {
			// Counted here: hystrix is told of the probe's success only
			// (see succeeded).
			b.events.WithLabelValues(eventSuccess).Inc()
			if c.probeOK && b.open.CompareAndSwap(true, false) {
				b.logger.InfoContext(ctx, "circuit closed")
			}
			return err
		}
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	cause := translate(herr)
	if errors.Is(cause, ErrOpen) && b.open.CompareAndSwap(false, true) {
		b.logger.WarnContext(ctx, "circuit opened: serving fallbacks")
	}
	return b.fallback(ctx, cause, fallback)
}

// exec is the hystrix run function. It runs on a hystrix goroutine.
func (c *call) exec(hctx context.Context) error {
	if !c.state.CompareAndSwap(callIdle, callRunning) {
		// Do has already returned: the caller has the fallback.
		return ErrTimeout
	}
	defer func() { <-c.b.slots }()
	defer c.cancel()
	// While the circuit is open only its half-open probe is let through
	// (hystrix's AllowRequest): a call that saw it open before hystrix
	// admitted it and still sees it open now is the probe. (One that saw
	// it closed was admitted as an ordinary call, even if it opened since.)
	probe := c.openAtStart && c.b.circuit.IsOpen()
	err := c.safeRun(c.ctx)
	report := c.report(hctx, err, probe) // before result: Do reads probeOK after it
	c.result <- err
	return report
}

// report is what hystrix is told of a run that returned err.
func (c *call) report(hctx context.Context, err error, probe bool) error {
	switch {
	case err == nil:
		return c.succeeded(probe)
	case isPanic(err):
		return err
	case hctx.Err() != nil:
		// The caller left: hystrix records context_canceled or
		// context_deadline_exceeded, neither of which is a failure.
		return hctx.Err()
	case errors.Is(c.ctx.Err(), context.DeadlineExceeded):
		// Our deadline fired before hystrix's timer: still a timeout, not a
		// failure of some other kind (nor a context_deadline_exceeded, which
		// hystrix would not count at all).
		return hystrix.ErrTimeout
	case !c.b.isFailure(err):
		return c.succeeded(probe)
	default:
		return err
	}
}

// succeeded is what a call that went well reports to hystrix. hystrix-go
// closes an open circuit on any success it is told of, and forgets the
// errors that opened it: a call admitted before the circuit opened that
// ends well after it did (a slow success amid failures, or a caller
// error) would cut the sleep window short and send the traffic back to a
// dependency that is still failing. Whether the circuit is open when
// hystrix reads the report cannot be known here (it reads it later, on
// its own goroutines), so every call but the probe reports
// context_canceled, which hystrix counts as a request and not as an
// error: the error percentage is the same, and only the probe's success
// closes the circuit. The caller gets the real result either way (Do
// reads c.result), and Do counts the success.
func (c *call) succeeded(probe bool) error {
	if probe {
		c.probeOK = true
		return nil
	}
	return context.Canceled
}

func (c *call) safeRun(ctx context.Context) (err error) {
	defer func() {
		if p := recover(); p != nil {
			stack := debug.Stack()
			c.b.logger.ErrorContext(ctx, "panic in breaker command",
				slog.Any("panic", p), slog.String("stack", string(stack)))
			err = &PanicError{Value: p, Stack: stack}
		}
	}()
	return c.run(ctx)
}

func isPanic(err error) bool {
	var pe *PanicError
	return errors.As(err, &pe)
}

// translate maps hystrix's errors to ours.
func translate(herr error) error {
	switch {
	case errors.Is(herr, hystrix.ErrCircuitOpen):
		return ErrOpen
	case errors.Is(herr, hystrix.ErrTimeout):
		return ErrTimeout
	case errors.Is(herr, hystrix.ErrMaxConcurrency):
		return ErrRejected
	case herr == nil:
		return errors.New("resilience: breaker returned no result")
	default:
		return herr
	}
}

// fallback serves fallback (on the caller's goroutine) and counts it.
func (b *HystrixBreaker) fallback(ctx context.Context, cause error, fallback func(ctx context.Context, err error) error) error {
	reason := FallbackReason(cause)
	span := trace.SpanFromContext(ctx)
	span.AddEvent("breaker.fallback", trace.WithAttributes(
		attribute.String("breaker.command", b.name),
		attribute.String("breaker.reason", reason),
	))
	if fallback == nil {
		return cause
	}
	if err := fallback(ctx, cause); err != nil {
		b.events.WithLabelValues(eventFallbackFailure).Inc()
		return fmt.Errorf("fallback after %w: %w", cause, err)
	}
	b.events.WithLabelValues(eventFallbackSuccess).Inc()
	b.logger.DebugContext(ctx, "fallback served", slog.String("reason", reason), slog.String("cause", cause.Error()))
	return nil
}

// hystrixPlugin routes hystrix's process-wide metric-collector plugin to
// per-breaker Prometheus counters. hystrix keeps its plugin registry in a
// package variable and calls the plugin with nothing but the command name,
// so this is the one piece of package state here, mirroring hystrix's own:
// the plugin is registered once per process, and a command's route only
// exists while its constructor creates the circuit (the collector it gets
// then keeps the sink).
var hystrixPlugin = &pluginRouter{}

type pluginRouter struct {
	once   sync.Once
	mu     sync.Mutex
	routes map[string]*collectorSink
}

func (p *pluginRouter) route(cmd string, s *collectorSink) {
	p.once.Do(func() { metricCollector.Registry.Register(p.collectorFor) })
	p.mu.Lock()
	if p.routes == nil {
		p.routes = map[string]*collectorSink{}
	}
	p.routes[cmd] = s
	p.mu.Unlock()
}

func (p *pluginRouter) unroute(cmd string) {
	p.mu.Lock()
	delete(p.routes, cmd)
	p.mu.Unlock()
}

func (p *pluginRouter) collectorFor(cmd string) metricCollector.MetricCollector {
	p.mu.Lock()
	s := p.routes[cmd]
	p.mu.Unlock()
	if s == nil {
		// A command created by someone else in this process.
		return &collectorSink{}
	}
	return s
}

// collectorSink is a hystrix MetricCollector writing to breaker_events_total.
// hystrix calls Update from its metrics goroutine, after the call returned.
type collectorSink struct {
	events *prometheus.CounterVec // nil: discard
}

func (s *collectorSink) Update(r metricCollector.MetricResult) {
	if s.events == nil {
		return
	}
	for _, e := range []struct {
		name string
		n    float64
	}{
		{eventFailure, r.Failures},
		{eventTimeout, r.Timeouts},
		{eventRejected, r.Rejects},
		{eventShortCircuited, r.ShortCircuits},
		// hystrix never runs our fallbacks (Do does, on the caller's
		// goroutine, and counts them), so these stay zero unless it does.
		{eventFallbackSuccess, r.FallbackSuccesses},
		{eventFallbackFailure, r.FallbackFailures},
	} {
		if e.n > 0 {
			s.events.WithLabelValues(e.name).Add(e.n)
		}
	}
}

// Reset is called when a circuit closes; counters are monotonic, so nothing.
func (s *collectorSink) Reset() {}

// registerCounterVec registers a counter vector, or returns the one already
// registered under the same name (several breakers share one registry).
func registerCounterVec(reg prometheus.Registerer, opts prometheus.CounterOpts, labels []string) (*prometheus.CounterVec, error) {
	return register(reg, prometheus.NewCounterVec(opts, labels), opts.Name)
}

// register registers c, or returns the collector of the same description
// already registered on reg: a second Client or Breaker on one registry
// shares the series.
func register[T prometheus.Collector](reg prometheus.Registerer, c T, name string) (T, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(T); ok {
				return existing, nil
			}
		}
		var zero T
		return zero, fmt.Errorf("resilience: register %s: %w", name, err)
	}
	return c, nil
}
