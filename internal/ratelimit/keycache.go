package ratelimit

import (
	"time"
)

// keyCache is what this instance knows about a key between Redis calls. It
// keeps a flood from one client from costing Redis one call per request:
//
//   - Denials. Once Redis has said a bucket is short of cost until some
//     instant, calls for that cost (or more) are denied here until then.
//     This is exact: no instance can add tokens to a bucket, so a bucket
//     short of cost stays short until its refill time whatever the others
//     do.
//   - In-flight calls. Without this, every request that arrives while the
//     key's Redis call is in flight would make its own call, and at 100k
//     requests/s one round trip lets dozens through to Redis per token. A
//     call joins the queue only while the tokens known to be left (at the
//     last answer) exceed what the calls already in flight can take;
//     otherwise it waits for one of them to answer and looks again. A
//     well-behaved hot key with tokens to spare is not serialised.
//
// An entry with nothing pending is kept for keyKeep after its key's last
// call, then swept; the map is bounded by MaxLocalKeys, and at that cap
// such entries are evicted before cached denials and calls in flight.
type keyCache struct {
	m *shardedMap[keyEntry]
}

type keyEntry struct {
	until    time.Duration // denied until, on the limiter clock; 0: no denial known
	reset    time.Duration // full at, on the limiter clock
	cost     int           // the cost that was denied
	limit    int
	known    int // whole tokens left at the last answer; -1 unknown
	inflight int // Redis calls for this key in flight from this instance
	wake     chan struct{}
	seen     time.Duration // last admitted or answered, on the limiter clock
	rkey     any           // the bucket's Redis key, made once per entry
}

// keyKeep is how long an entry with nothing pending outlives its key's last
// call. A key that comes back within it finds its entry (and the tokens
// known left) instead of allocating a new one: at tens of thousands of keys
// a second, dropping entries as soon as their call returns cost a map insert,
// an allocation and a share of a sweep per decision.
const keyKeep = time.Second

func newKeyCache(maxKeys int) *keyCache {
	idle := func(e *keyEntry, nowMs int64) bool {
		return e.inflight == 0 && e.until <= time.Duration(nowMs)*time.Millisecond
	}
	m := newShardedMap(maxKeys, func(e *keyEntry, nowMs int64) bool {
		return idle(e, nowMs) && e.seen+keyKeep <= time.Duration(nowMs)*time.Millisecond
	})
	// At the cap, kept entries go before cached denials and calls in flight.
	m.idle = idle
	return &keyCache{m: m}
}

// admission is the outcome of keyCache.admit: exactly one of a cached
// denial, a channel to wait on, or a permit (entry) to call Redis with.
type admission struct {
	denied bool
	d      Decision
	wait   <-chan struct{}
	entry  *keyEntry
}

func (c *keyCache) admit(key string, cost int, now time.Duration) admission {
	sh := c.m.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.m[key]
	if e != nil && now < e.until && cost >= e.cost {
		// A smaller cost than the one denied may be affordable: not here.
		return admission{denied: true, d: Decision{Limit: e.limit, RetryAfter: e.until - now, ResetAfter: max(0, e.reset-now)}}
	}
	if e == nil {
		e = &keyEntry{known: -1, rkey: redisKey(key)}
		c.m.insertLocked(sh, key, e, int64(now/time.Millisecond))
	}
	e.seen = now
	if e.inflight > 0 && (e.inflight+1)*max(cost, 1) > e.known {
		if e.wake == nil {
			e.wake = make(chan struct{})
		}
		return admission{wait: e.wake}
	}
	e.inflight++
	return admission{entry: e}
}

// done returns the permit of admit and records Redis's answer (rep nil when
// the call failed): a bucket left short of cost is denied until rep.wait
// after the answer was read.
func (c *keyCache) done(key string, e *keyEntry, cost, limit int, rep *reply) {
	sh := c.m.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e.inflight--
	if rep != nil {
		e.seen = rep.answered
		e.known = int(rep.remaining)
		if rep.wait > 0 {
			// Timed from when the reply was read, a little after Redis ran
			// the script: the entry outlives the true refill instant by the
			// reply's transit time (microseconds on a LAN). The token is not
			// lost — it waits in the bucket for the next call — and starting
			// the entry any earlier would send the next call to Redis before
			// the token exists, a second script call per token in a flood.
			e.until, e.reset, e.cost, e.limit = rep.answered+rep.wait, rep.answered+rep.full, cost, limit
		}
	}
	if e.wake != nil {
		close(e.wake)
		e.wake = nil
	}
}
