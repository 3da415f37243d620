package ratelimit

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// backend is the `backend` label of ratelimit_decisions_total.
type backend uint8

const (
	backendRedis backend = iota // the shared Lua bucket decided
	backendLocal                // the in-memory bucket (REDIS_URL unset, or fallback local)
	backendCache                // the denied-key cache answered without Redis
	backendAllow                // fallback allow
	backendDeny                 // fallback deny
	numBackends
)

func (b backend) String() string {
	switch b {
	case backendRedis:
		return "redis"
	case backendLocal:
		return "local"
	case backendCache:
		return "cache"
	case backendAllow:
		return "allow"
	case backendDeny:
		return "deny"
	}
	return "unknown"
}

// Kinds, the `kind` label of ratelimit_redis_errors_total.
const (
	errTimeout  = "timeout"
	errOther    = "error"
	errNoScript = "noscript"
)

// metrics holds the children resolved once, so a decision costs two atomic
// adds rather than label lookups.
type metrics struct {
	allowed, denied [numBackends]prometheus.Counter
	redisErrors     map[string]prometheus.Counter
	redisDuration   prometheus.Histogram
	fallbackActive  prometheus.Gauge
	fallbackMasters prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ratelimit_decisions_total",
		Help: "Rate limiter decisions by result (allowed, denied) and the backend that decided (redis, local, cache, allow, deny).",
	}, []string{"result", "backend"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ratelimit_redis_errors_total",
		Help: "Redis rate limiter calls that failed (error), blew their budget (timeout) or found the script missing (noscript).",
	}, []string{"kind"})
	dur := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ratelimit_redis_duration_seconds",
		Help:    "Latency of one Redis rate limiter decision, queueing in the pipeline included; calls that blew the budget are observed at the budget.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .02, .05, .1, .25},

		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  100,
		NativeHistogramMinResetDuration: 0,
	})
	active := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ratelimit_fallback_active",
		Help: "1 while the configured fallback decides instead of Redis: for every key, or in a Redis Cluster for the keys of failing masters.",
	})
	masters := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ratelimit_fallback_masters",
		Help: "Redis Cluster masters whose keys the fallback decides (0 outside Cluster mode).",
	})
	for _, c := range []prometheus.Collector{decisions, errs, dur, active, masters} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("ratelimit: register metrics: %w", err)
		}
	}
	m := &metrics{
		redisErrors:     map[string]prometheus.Counter{},
		redisDuration:   dur,
		fallbackActive:  active,
		fallbackMasters: masters,
	}
	for b := range numBackends {
		// Creating every child up front exports zeros, so dashboards and
		// alerts see the series before the first event.
		m.allowed[b] = decisions.WithLabelValues("allowed", b.String())
		m.denied[b] = decisions.WithLabelValues("denied", b.String())
	}
	for _, k := range []string{errTimeout, errOther, errNoScript} {
		m.redisErrors[k] = errs.WithLabelValues(k)
	}
	return m, nil
}

func (m *metrics) decision(allowed bool, backend backend) {
	if allowed {
		m.allowed[backend].Inc()
	} else {
		m.denied[backend].Inc()
	}
}
