package ratelimit

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// route is the path to one Redis Cluster master: its own pipelines (sent
// through the Cluster client, so MOVED and ASK are still followed) and its
// own fallback state. A master that fails or turns slow sends only the keys
// of its slots to the fallback; the other masters keep deciding theirs
// exactly. Each route's prober brings it back, or retires it once a
// failover has given its slots to another master (whose route then takes
// the keys).
type route struct {
	r        *RateLimiter
	node     *redis.Client // the master itself, for probes
	addr     string
	b        *redisBackend
	probeKey atomic.Pointer[string] // a bucket in one of the master's slots
	fallback atomic.Bool
	since    atomic.Int64 // limiter clock, ns
	tripped  chan struct{}
	retired  atomic.Bool
}

func (r *RateLimiter) newBackend(pipelines int) *redisBackend {
	return newRedisBackend(r.rdb, r.cfg.Burst, r.cfg.Rate, r.cfg.RedisTimeout, pipelines, r.now,
		func(n int) { r.m.redisErrors[errNoScript].Add(float64(n)) })
}

// routeFor is the route of the master serving rkey's slot, from the Cluster
// client's slot map (refreshed by go-redis after MOVED replies and errors,
// and by the probers). nil once the limiter is closing.
func (r *RateLimiter) routeFor(ctx context.Context, rkey string) (*route, error) {
	node, err := r.cc.MasterForKey(ctx, rkey)
	if err != nil {
		return nil, err
	}
	if v, ok := r.routes.Load(node); ok {
		return v.(*route), nil
	}
	return r.addRoute(node), nil
}

func (r *RateLimiter) addRoute(node *redis.Client) *route {
	r.routesMu.Lock()
	defer r.routesMu.Unlock()
	if v, ok := r.routes.Load(node); ok {
		return v.(*route)
	}
	if r.closing {
		return nil
	}
	rt := &route{r: r, node: node, addr: node.Options().Addr, b: r.newBackend(r.cfg.Pipelines), tripped: make(chan struct{}, 1)}
	rt.setProbeKey()
	r.routes.Store(node, rt)
	r.wg.Add(1)
	go rt.probeLoop()
	return rt
}

// setProbeKey picks a probe bucket in a slot the master serves in the
// current slot map (a few tries with three masters; the map is local). Not
// found: the probe fails on MOVED until the map changes.
func (rt *route) setProbeKey() {
	k := probeKey
	for i := 0; i < 1<<16; i++ {
		c := redisKey(probeName + ":" + strconv.Itoa(i))
		if n, err := rt.r.cc.MasterForKey(rt.r.probeCtx, c); err == nil && n == rt.node {
			k = c
			break
		}
	}
	rt.probeKey.Store(&k)
}

// probe checks the master on its own: PING within the budget and one
// decision on its probe bucket.
func (rt *route) probe(ctx context.Context) error {
	return rt.b.probeNode(ctx, rt.node, *rt.probeKey.Load())
}

// trip sends the route's keys to the fallback after a failed or late call.
func (rt *route) trip(ctx context.Context, cause error) {
	if rt.retired.Load() || !rt.fallback.CompareAndSwap(false, true) {
		return
	}
	r := rt.r
	rt.since.Store(int64(r.now()))
	r.routesDown.Add(1)
	r.syncGauge()
	r.logger.WarnContext(ctx, "ratelimit: Redis Cluster master failing, fallback decides for its keys", "node", rt.addr,
		"fallback", r.cfg.OnRedisError, "budget", r.cfg.RedisTimeout.String(), "cause", cause)
	select {
	case rt.tripped <- struct{}{}:
	default:
	}
}

func (rt *route) probeLoop() {
	r := rt.r
	defer r.wg.Done()
	sweep := time.NewTicker(r.cfg.routeSweep)
	defer sweep.Stop()
	for {
		select {
		case <-r.probeCtx.Done():
			return
		case <-sweep.C:
			// A route nobody uses any more (a manual failover demoted its
			// master, a node was replaced) would otherwise keep its
			// goroutines for the life of the process.
			if !r.isMaster(rt.node) {
				r.retire(rt)
				return
			}
			continue
		case <-rt.tripped:
		}
		for rt.fallback.Load() {
			select {
			case <-r.probeCtx.Done():
				return
			case <-time.After(r.cfg.ProbeInterval):
			}
			err := rt.probe(r.probeCtx)
			if err == nil {
				since := time.Duration(rt.since.Load())
				if rt.fallback.CompareAndSwap(true, false) {
					r.routesDown.Add(-1)
				}
				r.syncGauge()
				r.logger.Info("ratelimit: Redis Cluster master answers again, fallback left for its keys", "node", rt.addr,
					"fallback_for", (r.now() - since).Round(time.Millisecond).String())
				continue
			}
			if !r.isMaster(rt.node) {
				r.retire(rt)
				return
			}
			// Still a master, with a freshly loaded slot map: the probe
			// bucket's slot may have moved to another master (resharding).
			rt.setProbeKey()
		}
	}
}

// isMaster reports whether node still serves slots in a freshly loaded slot
// map (it answers true when the map cannot be loaded: no grounds to retire).
func (r *RateLimiter) isMaster(node *redis.Client) bool {
	ctx, cancel := context.WithTimeout(r.probeCtx, max(time.Second, r.cfg.RedisTimeout))
	defer cancel()
	var found atomic.Bool
	err := r.cc.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error {
		if c == node {
			found.Store(true)
		}
		return nil
	})
	return err != nil || found.Load()
}

// retire drops a route whose master lost its slots (failed over, demoted,
// replaced): its keys now map to another master's route.
func (r *RateLimiter) retire(rt *route) {
	r.routesMu.Lock()
	r.routes.Delete(rt.node)
	r.routesMu.Unlock()
	rt.retired.Store(true)
	attrs := []any{"node", rt.addr}
	if rt.fallback.CompareAndSwap(true, false) {
		r.routesDown.Add(-1)
		attrs = append(attrs, "fallback_for", (r.now() - time.Duration(rt.since.Load())).Round(time.Millisecond).String())
	}
	r.syncGauge()
	r.logger.Info("ratelimit: Redis Cluster master no longer serves slots, its keys follow their new master", attrs...)
	rt.b.close()
}
