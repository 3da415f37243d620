package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/hardenedgo/ginservice/internal/health"
)

// RateLimiter is the service's Limiter: the Redis bucket when REDIS_URL is
// set (with the denied-key cache in front and the configured fallback
// behind), the local bucket otherwise.
type RateLimiter struct {
	cfg    Config
	logger *slog.Logger
	m      *metrics
	now    func() time.Duration

	local *localBucket  // REDIS_URL unset: the limiter; else the `local` fallback
	redis *redisBackend // nil without REDIS_URL
	cache *keyCache
	rdb   redis.UniversalClient
	spans *redisSpans // nil: no Redis spans

	// fallback: the whole of Redis is on the fallback (one node failing;
	// a Cluster unreachable at start or without a slot map).
	fallback      atomic.Bool
	fallbackSince atomic.Int64 // limiter clock, ns
	tripped       chan struct{}
	probeCtx      context.Context
	stopProbe     context.CancelFunc
	wg            sync.WaitGroup
	closeOnce     sync.Once
	closeErr      error

	// Cluster only: one route per master, each with its own pipelines and
	// fallback state, so a failing master sends only its own keys to the
	// fallback.
	cc         *redis.ClusterClient
	routes     sync.Map // *redis.Client (a master) -> *route
	routesMu   sync.Mutex
	closing    bool // under routesMu: no new routes
	routesDown atomic.Int32
	gaugeMu    sync.Mutex
}

var _ Limiter = (*RateLimiter)(nil)

// New builds the limiter. With REDIS_URL set it never fails because Redis is
// unreachable: it starts on the fallback, probes in the background and moves
// to Redis when Redis answers (a Cluster whose slot map loads starts on the
// Cluster, with only its unusable masters' keys on the fallback). It does
// fail if Redis answers that the URL's database does not exist, which no
// retry can change. reg receives the ratelimit_* metrics; a nil reg keeps
// them private.
func New(ctx context.Context, cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*RateLimiter, error) {
	epoch := time.Now()
	return newLimiter(ctx, cfg, logger, reg, func() time.Duration { return time.Since(epoch) })
}

func newLimiter(ctx context.Context, cfg Config, logger *slog.Logger, reg prometheus.Registerer, now func() time.Duration) (*RateLimiter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	r := &RateLimiter{
		cfg:    cfg,
		logger: logger,
		m:      m,
		now:    now,
		// Without Redis, or while Redis fails, each instance admits its share.
		local: newLocalBucket(cfg.Rate/float64(cfg.Instances), max(1, cfg.Burst/cfg.Instances), cfg.MaxLocalKeys, now),
	}
	if cfg.RedisURL == "" {
		logger.Info("ratelimit: in-memory limiter (REDIS_URL unset)", "rate", float64(r.local.rate)/1000, "burst", r.local.burst)
		return r, nil
	}

	rdb, err := newRedisClient(cfg)
	if err != nil {
		return nil, err
	}
	// Only the decisions a request waits for are traced, each in its own
	// request's trace (redisSpans).
	r.spans = newRedisSpans(cfg.TracerProvider, rdb)
	r.rdb = rdb
	r.cache = newKeyCache(cfg.MaxLocalKeys)
	pipelines := cfg.Pipelines
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		// Decisions and probes go through the masters' routes: this
		// backend runs no pipelines.
		r.cc, pipelines = cc, 0
	}
	r.redis = r.newBackend(pipelines)
	r.tripped = make(chan struct{}, 1)
	r.probeCtx, r.stopProbe = context.WithCancel(context.WithoutCancel(ctx))

	// Start on the fallback and let a first probe move us to Redis, so a
	// Redis that is down at boot delays start-up by at most one probe.
	r.fallback.Store(true)
	r.fallbackSince.Store(int64(now()))
	m.fallbackActive.Set(1)
	bootCtx, cancel := context.WithTimeout(ctx, max(2*time.Second, 2*cfg.RedisTimeout))
	err = r.probeAll(bootCtx)
	cancel()
	if err != nil && isMissingDB(err) {
		// No probe will ever succeed: this is a configuration error, not
		// an outage to ride out on the fallback.
		_ = r.Close()
		return nil, fmt.Errorf("ratelimit: REDIS_URL %s names a database the server does not have: %w", redactURL(cfg.RedisURL), err)
	}
	if err == nil {
		r.fallback.Store(false)
		r.syncGauge()
		logger.Info("ratelimit: Redis limiter", "redis", redactURL(cfg.RedisURL), "rate", cfg.Rate, "burst", cfg.Burst,
			"budget", cfg.RedisTimeout.String(), "on_redis_error", cfg.OnRedisError)
		if n := r.routesDown.Load(); n > 0 {
			logger.Warn("ratelimit: Redis Cluster masters not usable at start, the fallback decides their keys until they answer",
				"masters", n, "fallback", cfg.OnRedisError)
		}
	} else {
		logger.Warn("ratelimit: Redis not usable at start (unreachable, refusing or too slow), fallback decides until it answers",
			"redis", redactURL(cfg.RedisURL), "fallback", cfg.OnRedisError, "cause", err)
		r.tripped <- struct{}{}
	}
	r.wg.Add(1)
	go r.probeLoop()
	return r, nil
}

// newRedisClient builds the go-redis client from REDIS_URL with the settings
// the limiter relies on; values given as URL parameters are kept where they
// do not defeat those guarantees.
func newRedisClient(cfg Config) (redis.UniversalClient, error) {
	o, err := parseRedisURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	// Connections: one per pipeline plus room for probes and script loads.
	pool := cfg.Pipelines + 2
	ioTimeout := max(time.Second, 2*cfg.RedisTimeout) // probes; decisions use the budget via their context
	if o.cluster != nil {
		c := o.cluster
		c.MaxRetries = -1 // never re-send a script that may have run
		c.ContextTimeoutEnabled = true
		c.DialTimeout = orDefault(c.DialTimeout, ioTimeout)
		c.ReadTimeout = orDefault(c.ReadTimeout, ioTimeout)
		c.WriteTimeout = orDefault(c.WriteTimeout, ioTimeout)
		c.PoolSize = orDefault(c.PoolSize, pool)
		c.DialerRetries = orDefault(c.DialerRetries, 1)
		c.Protocol = orDefault(c.Protocol, 2) // no RESP3 push handling per reply
		return redis.NewClusterClient(c), nil
	}
	c := o.single
	c.MaxRetries = -1
	c.ContextTimeoutEnabled = true
	c.DialTimeout = orDefault(c.DialTimeout, ioTimeout)
	c.ReadTimeout = orDefault(c.ReadTimeout, ioTimeout)
	c.WriteTimeout = orDefault(c.WriteTimeout, ioTimeout)
	c.PoolSize = orDefault(c.PoolSize, pool)
	c.DialerRetries = orDefault(c.DialerRetries, 1)
	c.Protocol = orDefault(c.Protocol, 2)
	return redis.NewClient(c), nil
}

func orDefault[T comparable](v, d T) T {
	var zero T
	if v == zero {
		return d
	}
	return v
}

// Allow decides whether key may spend cost tokens. It returns an error only
// for a cost outside [0, burst]; Redis failures are answered by the
// fallback, never passed to the caller.
func (r *RateLimiter) Allow(ctx context.Context, key string, cost int) (Decision, error) {
	if cost < 0 || cost > r.cfg.Burst {
		return Decision{}, fmt.Errorf("%w: cost %d, RATELIMIT_BURST %d", ErrInvalidCost, cost, r.cfg.Burst)
	}
	d, b := r.decide(ctx, key, cost)
	r.m.decision(d.Allowed, b)
	// Recorded on the request's span when one is being recorded; with
	// tracing off this is one context lookup.
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.AddEvent("ratelimit.decision", trace.WithAttributes(
			attribute.Bool("ratelimit.allowed", d.Allowed),
			attribute.String("ratelimit.backend", b.String()),
			attribute.Int("ratelimit.limit", d.Limit),
			attribute.Int("ratelimit.remaining", d.Remaining),
			attribute.Int64("ratelimit.retry_after_ms", d.RetryAfter.Milliseconds()),
		))
	}
	return d, nil
}

func (r *RateLimiter) decide(ctx context.Context, key string, cost int) (Decision, backend) {
	if r.redis == nil {
		return r.local.allow(key, cost), backendLocal
	}
	if r.fallback.Load() {
		return r.fallbackDecision(key, cost)
	}
	now := r.now()
	deadline := now + r.cfg.RedisTimeout
	var timer *time.Timer
	for {
		a := r.cache.admit(key, cost, now)
		if a.denied {
			return a.d, backendCache
		}
		if a.wait == nil && timer != nil && deadline-now < r.cfg.RedisTimeout/2 {
			// This call waited for another call of its key and has less
			// than half its budget left: sent now, it would likely run out
			// on a Redis that is only a little slow, and hold a pipeline
			// for nothing. The fallback decides this request; Redis stays
			// in use.
			r.cache.done(key, a.entry, cost, r.cfg.Burst, nil)
			return r.fallbackDecision(key, cost)
		}
		if a.wait != nil {
			// Another call for this key is in flight and may take what is
			// left: wait for its answer (within this call's own budget),
			// then look again.
			if timer == nil {
				timer = time.NewTimer(deadline - now)
				defer timer.Stop()
			}
			select {
			case <-a.wait:
			case <-timer.C:
				// The call waited on is late; it trips the fallback itself.
				return r.fallbackDecision(key, cost)
			case <-ctx.Done():
				return r.fallbackDecision(key, cost)
			}
			if r.fallback.Load() {
				return r.fallbackDecision(key, cost)
			}
			now = r.now()
			continue
		}
		if r.cc == nil {
			return r.askRedis(ctx, key, cost, a.entry, nil, now, deadline)
		}
		rt, err := r.routeFor(ctx, a.entry.rkey.(string))
		if err != nil || rt == nil || rt.fallback.Load() {
			r.cache.done(key, a.entry, cost, r.cfg.Burst, nil)
			if err != nil {
				r.trip(ctx, fmt.Errorf("cluster slot map: %w", err))
			}
			return r.fallbackDecision(key, cost)
		}
		return r.askRedis(ctx, key, cost, a.entry, rt, now, deadline)
	}
}

// askRedis asks the bucket script through rt's pipelines, or the single
// node's when rt is nil; a failure trips rt (or the whole of Redis).
func (r *RateLimiter) askRedis(ctx context.Context, key string, cost int, e *keyEntry, rt *route, start, deadline time.Duration) (Decision, backend) {
	b, trip, node := r.redis, r.trip, ""
	if rt != nil {
		b, trip, node = rt.b, rt.trip, rt.addr
	}
	sctx, span := r.spans.start(ctx, node)
	rep, err := b.allow(sctx, e.rkey, cost, deadline)
	endRedisSpan(span, rep, err)
	r.m.redisDuration.Observe(min(r.now()-start, r.cfg.RedisTimeout).Seconds())
	if err != nil {
		r.cache.done(key, e, cost, r.cfg.Burst, nil)
		if ctx.Err() != nil {
			// The caller went away: not Redis's fault, and nobody reads the answer.
			return r.fallbackDecision(key, cost)
		}
		if deadline-start < r.cfg.RedisTimeout && outOfTime(err) {
			// This call spent part of its budget waiting for another
			// call of the same key, and what was left ran out: not
			// Redis being slow (a call that had the whole budget says
			// that). This request is decided by the fallback; Redis
			// stays in use.
			return r.fallbackDecision(key, cost)
		}
		if isTimeout(err) {
			r.m.redisErrors[errTimeout].Inc()
		} else {
			r.m.redisErrors[errOther].Inc()
		}
		trip(ctx, err)
		return r.fallbackDecision(key, cost)
	}
	r.cache.done(key, e, cost, r.cfg.Burst, &rep)
	d := Decision{Allowed: rep.allowed, Limit: r.cfg.Burst, Remaining: int(rep.remaining), ResetAfter: rep.full}
	if !rep.allowed {
		d.RetryAfter = rep.wait
	}
	return d, backendRedis
}

// probeAll is the probe of the whole of Redis: the node answers within the
// budget and runs the script. In a Cluster it succeeds once the slot map
// loads: every master gets its route and its own probe, and a master that
// fails it has only its keys sent to the fallback (its route's prober
// brings them back).
func (r *RateLimiter) probeAll(ctx context.Context) error {
	if r.cc == nil {
		return r.redis.probe(ctx)
	}
	return r.cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		rt := r.addRoute(node)
		if rt == nil {
			return errClosed
		}
		if err := rt.probe(ctx); err != nil {
			rt.trip(ctx, err)
		}
		return nil
	})
}

// isMissingDB reports Redis refusing the URL's database number (SELECT
// past the server's `databases`): "ERR DB index is out of range", "ERR
// invalid DB index" on older servers.
func isMissingDB(err error) bool {
	var re redis.Error // a reply from the server, not a network error
	return errors.As(err, &re) && strings.Contains(re.Error(), "DB index")
}

// outOfTime reports whether err is a call's budget running out (not a
// full queue or a failure of Redis).
func outOfTime(err error) bool {
	if errors.Is(err, errBudget) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isTimeout(err error) bool {
	if errors.Is(err, errBudget) || errors.Is(err, errQueueFull) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (r *RateLimiter) fallbackDecision(key string, cost int) (Decision, backend) {
	switch r.cfg.OnRedisError {
	case OnErrorAllow:
		return Decision{Allowed: true, Limit: r.cfg.Burst, Remaining: r.cfg.Burst - cost}, backendAllow
	case OnErrorDeny:
		return Decision{Limit: r.cfg.Burst, RetryAfter: time.Second, ResetAfter: time.Second}, backendDeny
	}
	// The local share may be smaller than a cost the global bucket accepts:
	// charge at most the whole local bucket rather than deny forever.
	return r.local.allow(key, min(cost, r.local.burst)), backendLocal
}

// trip switches to the fallback after a failed or late Redis call; the
// prober brings Redis back. ctx is the call's: the line carries the trace
// ids of the request that found Redis failing.
func (r *RateLimiter) trip(ctx context.Context, cause error) {
	if !r.fallback.CompareAndSwap(false, true) {
		return
	}
	r.fallbackSince.Store(int64(r.now()))
	r.syncGauge()
	r.logger.WarnContext(ctx, "ratelimit: Redis failing, fallback decides", "fallback", r.cfg.OnRedisError,
		"budget", r.cfg.RedisTimeout.String(), "cause", cause)
	select {
	case r.tripped <- struct{}{}:
	default:
	}
}

func (r *RateLimiter) probeLoop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.probeCtx.Done():
			return
		case <-r.tripped:
		}
		var lastErr error
		for r.fallback.Load() {
			// Wait first: right after a failure a probe would most likely
			// fail too, and a one-off hiccup should not cause a flap.
			select {
			case <-r.probeCtx.Done():
				return
			case <-time.After(r.cfg.ProbeInterval):
			}
			if lastErr = r.probeAll(r.probeCtx); lastErr == nil {
				since := time.Duration(r.fallbackSince.Load())
				r.fallback.Store(false)
				r.syncGauge()
				r.logger.Info("ratelimit: Redis answers again, fallback left", "fallback_for", (r.now() - since).Round(time.Millisecond).String())
			}
		}
	}
}

// Health is the readiness check of the limiter: disabled without REDIS_URL,
// degraded while the fallback decides, ok on Redis.
func (r *RateLimiter) Health(context.Context) health.Status {
	switch {
	case r.redis == nil:
		return health.StatusDisabled
	case r.onFallback():
		return health.StatusDegraded
	}
	return health.StatusOK
}

// FallbackActive reports whether the fallback currently decides, for all
// keys or (Cluster) for the keys of a failing master.
func (r *RateLimiter) FallbackActive() bool { return r.redis != nil && r.onFallback() }

func (r *RateLimiter) onFallback() bool { return r.fallback.Load() || r.routesDown.Load() > 0 }

// syncGauge sets ratelimit_fallback_active and ratelimit_fallback_masters
// from the current state; the lock keeps two transitions from writing their
// values out of order.
func (r *RateLimiter) syncGauge() {
	r.gaugeMu.Lock()
	defer r.gaugeMu.Unlock()
	if r.onFallback() {
		r.m.fallbackActive.Set(1)
	} else {
		r.m.fallbackActive.Set(0)
	}
	r.m.fallbackMasters.Set(float64(r.routesDown.Load()))
}

// Close stops the prober and the pipeline workers and closes the Redis
// client. Decisions after Close come from the fallback.
func (r *RateLimiter) Close() error {
	r.closeOnce.Do(func() {
		if r.redis == nil {
			return
		}
		r.fallback.Store(true) // no new calls into the closing pipeline
		r.routesMu.Lock()
		r.closing = true
		r.routesMu.Unlock()
		r.stopProbe()
		r.wg.Wait()
		r.redis.close()
		r.routes.Range(func(_, v any) bool {
			v.(*route).b.close()
			return true
		})
		r.closeErr = r.rdb.Close()
	})
	return r.closeErr
}

// redactURL drops the password from a Redis URL for the log.
func redactURL(raw string) string {
	o, err := parseRedisURL(raw)
	if err != nil {
		return "<invalid>"
	}
	if o.cluster != nil {
		return fmt.Sprintf("cluster %v", o.cluster.Addrs)
	}
	return o.single.Addr
}
