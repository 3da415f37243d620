// Package ratelimit is the service's token-bucket rate limiter: a Redis Lua
// bucket shared by every instance (exact across instances, Redis server time,
// one hash per key), an exact in-memory bucket for REDIS_URL unset and as the
// fallback while Redis fails, and the Gin middleware that applies it.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
)

// Decision is the outcome of one Allow call.
type Decision struct {
	Allowed bool
	// Limit is the bucket capacity (burst) of the backend that decided.
	Limit int
	// Remaining is the number of whole tokens left after this call.
	Remaining int
	// RetryAfter is, on a denial, how long until the cost can be paid.
	RetryAfter time.Duration
	// ResetAfter is how long until the bucket is full again.
	ResetAfter time.Duration
}

// Limiter decides whether key may spend cost tokens now.
type Limiter interface {
	Allow(ctx context.Context, key string, cost int) (Decision, error)
}

// Fallback modes for RATELIMIT_ON_REDIS_ERROR.
const (
	OnErrorLocal = "local" // an in-memory bucket with this instance's share of the rate
	OnErrorAllow = "allow" // fail open
	OnErrorDeny  = "deny"  // fail closed
)

// Bounds of the fixed-point arithmetic shared by the Lua script and the local
// bucket: a token is 1e6 units and time is counted in whole milliseconds, so
// the refill per millisecond (rate*1000 units) must be a whole number >= 1
// and every value stays below 2^53, where Lua numbers (doubles) are exact.
const (
	unitsPerToken = 1_000_000
	minRate       = 0.001
	maxRate       = 1e9
	maxBurst      = 1_000_000_000
	maxRefill     = 1e9 * time.Second // a full refill, so Reset and Retry-After fit a Duration
)

// ErrInvalidCost is returned by Allow for a cost below 0 or above the burst:
// such a call could never succeed, and answering "retry after X" would be a
// lie (go-redis/redis_rate returns a bogus RetryAfter there).
var ErrInvalidCost = errors.New("ratelimit: cost must be between 0 and the burst")

// Config of the limiter. The lead's config package fills it from the
// environment; the comments name the variables.
type Config struct {
	// RedisURL (REDIS_URL): redis://[user:pass@]host:port/db for one node,
	// redis://h1:p1?addr=h2:p2&addr=h3:p3 for a Redis Cluster (the go-redis
	// ParseClusterURL form); rediss:// for TLS. Empty: in-memory limiter.
	RedisURL string
	// Rate (RATELIMIT_RATE) is the refill in tokens per second per key.
	Rate float64
	// Burst (RATELIMIT_BURST) is the bucket capacity per key.
	Burst int
	// OnRedisError (RATELIMIT_ON_REDIS_ERROR): local, allow or deny. Empty means local.
	OnRedisError string
	// Instances (RATELIMIT_INSTANCES) is the number of replicas sharing the
	// limit; the in-memory bucket admits Rate/Instances and Burst/Instances
	// (at least 1). 0 means 1.
	Instances int
	// RedisTimeout (RATELIMIT_REDIS_TIMEOUT) is the budget of one Redis
	// decision; past it the fallback decides. 0 means 20ms.
	RedisTimeout time.Duration
	// KeyHeader is an optional request header (e.g. X-API-Key) whose value
	// joins the client IP in the key. Used by the middleware options.
	KeyHeader string
	// TracerProvider, when set, gives each Redis decision a sampled
	// request waits for a span in that request's trace (redisSpans). Nil:
	// no Redis spans.
	TracerProvider trace.TracerProvider

	// ProbeInterval is how often a failing Redis is probed. 0 means 250ms.
	ProbeInterval time.Duration
	// MaxLocalKeys bounds the keys held in memory by the local bucket and
	// by the denied-key cache (each). 0 means 100000.
	MaxLocalKeys int
	// Pipelines is the number of Redis pipelines that may be in flight at
	// once; concurrent decisions are coalesced into them. 0 means 2.
	Pipelines int

	// routeSweep is how often a Redis Cluster master's route checks that
	// its node still serves slots (0: 30s; tests shorten it).
	routeSweep time.Duration
}

const (
	defaultRedisTimeout  = 20 * time.Millisecond
	defaultProbeInterval = 250 * time.Millisecond
	defaultMaxLocalKeys  = 100_000
	defaultPipelines     = 2
)

func (c Config) withDefaults() Config {
	if c.OnRedisError == "" {
		c.OnRedisError = OnErrorLocal
	}
	if c.Instances == 0 {
		c.Instances = 1
	}
	if c.RedisTimeout == 0 {
		c.RedisTimeout = defaultRedisTimeout
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = defaultProbeInterval
	}
	if c.MaxLocalKeys == 0 {
		c.MaxLocalKeys = defaultMaxLocalKeys
	}
	if c.Pipelines == 0 {
		c.Pipelines = defaultPipelines
	}
	if c.routeSweep == 0 {
		c.routeSweep = 30 * time.Second
	}
	return c
}

// Validate checks the configuration; every message names the environment
// variable at fault. Zero values that have defaults are accepted.
func (c Config) Validate() error {
	c = c.withDefaults()
	if math.IsNaN(c.Rate) || c.Rate < minRate || c.Rate > maxRate {
		return fmt.Errorf("RATELIMIT_RATE=%v: must be between %v and %v tokens per second", c.Rate, minRate, maxRate)
	}
	if c.Burst < 1 || c.Burst > maxBurst {
		// A burst below 1 could never admit the middleware's cost of 1: the
		// "cost > burst" mistake is caught here, at start, not per request.
		return fmt.Errorf("RATELIMIT_BURST=%d: must be between 1 and %d", c.Burst, maxBurst)
	}
	switch c.OnRedisError {
	case OnErrorLocal, OnErrorAllow, OnErrorDeny:
	default:
		return fmt.Errorf("RATELIMIT_ON_REDIS_ERROR=%q: must be local, allow or deny", c.OnRedisError)
	}
	if float64(c.Burst)/c.Rate > maxRefill.Seconds() {
		// RateLimit-Reset and Retry-After are Durations: a bucket that
		// takes longer to refill would overflow them into nonsense.
		return fmt.Errorf("RATELIMIT_BURST=%d at RATELIMIT_RATE=%v takes %.3g s to refill: at most %.0f s (about 31 years)", c.Burst, c.Rate, float64(c.Burst)/c.Rate, maxRefill.Seconds())
	}
	if c.Instances < 1 {
		return fmt.Errorf("RATELIMIT_INSTANCES=%d: must be >= 1", c.Instances)
	}
	if c.Rate/float64(c.Instances) < minRate {
		return fmt.Errorf("RATELIMIT_INSTANCES=%d: the local share RATELIMIT_RATE/RATELIMIT_INSTANCES is below %v tokens per second", c.Instances, minRate)
	}
	if c.RedisTimeout < 0 {
		return fmt.Errorf("RATELIMIT_REDIS_TIMEOUT=%s: must be > 0", c.RedisTimeout)
	}
	if c.ProbeInterval < 0 || c.MaxLocalKeys < 0 || c.Pipelines < 0 {
		return errors.New("ratelimit: ProbeInterval, MaxLocalKeys and Pipelines must not be negative")
	}
	if c.RedisURL != "" {
		if _, err := parseRedisURL(c.RedisURL); err != nil {
			return fmt.Errorf("REDIS_URL: %w", err)
		}
	}
	return nil
}

// ratePerMs is the refill in units (1e-6 token) per millisecond, the integer
// the script and the local bucket work with: RATE to 0.001 token/s, rounded
// down, so a rate between two steps never admits more than configured
// (0.0015/s rounded to the nearest would be 0.002/s, a third more). The
// 1e-6 absorbs float error (1.001*1000 is 1000.9999999999999).
func ratePerMs(rate float64) int64 {
	return max(1, int64(math.Floor(rate*1000+1e-6)))
}

// redisOptions is what REDIS_URL parses to: one node or a cluster.
type redisOptions struct {
	single  *redis.Options
	cluster *redis.ClusterOptions
}

// CheckRedisURL reports what is wrong with a REDIS_URL value, as New would,
// without connecting: config refuses it at start with the same words.
func CheckRedisURL(raw string) error {
	_, err := parseRedisURL(raw)
	return err
}

// parseRedisURL accepts the single-node form (go-redis ParseURL) and the
// cluster form with addr= parameters (go-redis ParseClusterURL). The
// password never appears in the error.
func parseRedisURL(raw string) (redisOptions, error) {
	if u, err := url.Parse(raw); err == nil && u.Query().Has("addr") {
		o, err := redis.ParseClusterURL(raw)
		if err != nil {
			return redisOptions{}, fmt.Errorf("not a cluster URL redis://h1:p1?addr=h2:p2: %w", scrubURLError(err, raw))
		}
		for _, a := range o.Addrs {
			if err := checkRedisAddr(a); err != nil {
				return redisOptions{}, err
			}
		}
		return redisOptions{cluster: o}, nil
	}
	o, err := redis.ParseURL(raw)
	if err != nil {
		return redisOptions{}, fmt.Errorf("not a URL redis://[user:password@]host:port/db: %w", scrubURLError(err, raw))
	}
	if err := checkRedisAddr(o.Addr); err != nil {
		return redisOptions{}, err
	}
	return redisOptions{single: o}, nil
}

// checkRedisAddr refuses an address go-redis accepts but can never dial
// (redis://h:99999): without the check the service would start and stay
// on its fallback, logging dial errors.
func checkRedisAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("address %q: port %q is not a number from 1 to 65535", net.JoinHostPort(host, port), port)
	}
	return nil
}

// scrubURLError keeps net/url from echoing the whole URL, password included.
func scrubURLError(err error, raw string) error {
	msg := err.Error()
	if strings.Contains(msg, raw) {
		return errors.New(strings.ReplaceAll(msg, raw, "<REDIS_URL>"))
	}
	return err
}
