package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// bucketLua is the shared token bucket. One hash per key, rl:{key}: the key
// is its own hash tag, so keys spread over every Cluster shard (a global tag
// would put them all on one). Time is the Redis server's (TIME), never the
// caller's, so instance clocks cannot refill a bucket, and is held in whole
// milliseconds; tokens are integers in 1e-6 units. A stored time is never
// moved backwards: if the server clock steps back (NTP, failover to a
// replica whose clock lags) time stands still instead of refilling twice.
// The key expires when the bucket is full again (at least 1 s, so a huge
// rate cannot produce a zero TTL): an absent key means a full bucket.
//
// KEYS[1] bucket hash; ARGV[1] burst (tokens); ARGV[2] refill in 1e-6 tokens
// per ms; ARGV[3] cost (tokens). Returns {allowed 0|1, whole tokens left,
// µs until cost is affordable (0 if it is), µs until full}, the waits measured
// from the server's microsecond clock (as it reads, even if it stepped back)
// to the millisecond at which the bucket holds the tokens.
//
// The arithmetic avoids math.* and tonumber (floor(a/b) is (a - a%b)/b,
// strings coerce in arithmetic): a Lua function call is a measurable share
// of the script's cost inside Redis. Needs Redis >= 5 (effects replication
// by default, so TIME may precede writes).
const bucketLua = `
local cap = ARGV[1] * 1000000
local rate = ARGV[2] + 0
local need = ARGV[3] * 1000000
local t = redis.call('TIME')
local now_us = t[1] * 1000000 + t[2]
local clock = (now_us - now_us % 1000) / 1000
local now = clock
local tokens = cap
local s = redis.call('HMGET', KEYS[1], 'tk', 'ts')
local last = s[2]
if last then
  last = last + 0
  if now < last then now = last end
  tokens = s[1] + (now - last) * rate
  if tokens > cap then tokens = cap end
end
local allowed = 0
if tokens >= need then
  allowed = 1
  if need > 0 then
    tokens = tokens - need
    redis.call('HSET', KEYS[1], 'tk', tokens, 'ts', now)
    local x = cap - tokens + rate - 1
    local ttl = now + (x - x % rate) / rate - clock
    if ttl < 1000 then ttl = 1000 end
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
end
local wait = 0
if tokens < need then
  local x = need - tokens + rate - 1
  wait = (now + (x - x % rate) / rate) * 1000 - now_us
end
local full = 0
if tokens < cap then
  local x = cap - tokens + rate - 1
  full = (now + (x - x % rate) / rate) * 1000 - now_us
end
return {allowed, (tokens - tokens % 1000000) / 1000000, wait, full}
`

// redisKey is the bucket's Redis key: the whole key is the hash tag.
func redisKey(key string) string { return "rl:{" + key + "}" }

// noRetry marks the script call as never to be retried by go-redis: after a
// timeout or a dropped connection the script may already have run, and
// running it again would charge the caller twice. (MaxRetries is -1 as well;
// this also covers the Cluster client, whose redirect budget would otherwise
// re-send a pipeline after a network error. MOVED/ASK are still followed:
// those replies mean the script did not run.)
type noRetry struct{ *redis.Cmd }

func (noRetry) NoRetry() bool { return true }

var (
	errBudget    = errors.New("ratelimit: Redis decision exceeded its budget")
	errQueueFull = errors.New("ratelimit: Redis pipeline queue full")
	errClosed    = errors.New("ratelimit: limiter closed")
)

// redisBackend runs the bucket script, coalescing concurrent calls into
// pipelines (auto-pipelining): up to `pipelines` batches are in flight and
// every call that arrives meanwhile joins the next one. At low load a call
// goes out alone at once (no added wait); under load one round trip serves
// dozens of calls (about 30 with 64 callers), so throughput is not bound by
// one round trip per call, and Redis reads and writes once per batch.
type redisBackend struct {
	client   redis.UniversalClient
	script   *redis.Script
	burstArg string
	rateArg  string
	budget   time.Duration
	now      func() time.Duration
	onNoScr  func(n int)

	queue chan *call
	calls sync.Pool // *call, each with its reply channel
	stop  chan struct{}
	wg    sync.WaitGroup
}

const (
	maxBatch   = 512
	queueDepth = 8192
)

type call struct {
	ctx  context.Context
	rkey string
	cost int
	// deadline on the limiter clock: the caller stops waiting then.
	deadline time.Duration
	cmd      *redis.Cmd
	// answered is when the reply was read (limiter clock).
	answered time.Duration
	done     chan reply
	timer    *time.Timer // the caller's deadline
}

type reply struct {
	allowed   bool
	remaining int64
	wait      time.Duration // until cost is affordable again; 0 if it is
	full      time.Duration
	answered  time.Duration // when the reply was read (limiter clock)
	err       error
}

func newRedisBackend(client redis.UniversalClient, burst int, rate float64, budget time.Duration, pipelines int, now func() time.Duration, onNoScript func(int)) *redisBackend {
	b := &redisBackend{
		client:   client,
		script:   redis.NewScript(bucketLua),
		burstArg: strconv.Itoa(burst),
		rateArg:  strconv.FormatInt(ratePerMs(rate), 10),
		budget:   budget,
		now:      now,
		onNoScr:  onNoScript,
		queue:    make(chan *call, queueDepth),
		stop:     make(chan struct{}),
	}
	b.calls.New = func() any {
		t := time.NewTimer(time.Hour)
		t.Stop()
		return &call{done: make(chan reply, 1), timer: t}
	}
	for range pipelines {
		b.wg.Add(1)
		go b.worker()
	}
	return b
}

func (b *redisBackend) close() {
	close(b.stop)
	b.wg.Wait()
}

// allow asks Redis, waiting until deadline (limiter clock) at most,
// queueing included. The worker also bounds its pipeline by the earliest
// deadline of its batch, but go-redis does not apply the context deadline on
// every path (a fresh connection's handshake uses its own timeouts), so the
// caller keeps its own timer; it lives in the pooled call, so it costs a
// Reset, not an allocation.
func (b *redisBackend) allow(ctx context.Context, key string, cost int, deadline time.Duration) (reply, error) {
	left := deadline - b.now()
	if left <= 0 {
		return reply{}, errBudget
	}
	c := b.calls.Get().(*call)
	c.ctx, c.rkey, c.cost, c.deadline = ctx, redisKey(key), cost, deadline
	select {
	case b.queue <- c:
	case <-b.stop:
		b.calls.Put(c)
		return reply{}, errClosed
	default:
		b.calls.Put(c)
		return reply{}, errQueueFull
	}
	c.timer.Reset(left)
	select {
	case r := <-c.done:
		c.timer.Stop()
		c.ctx, c.cmd = nil, nil
		b.calls.Put(c) // answered: the worker no longer touches c
		return r, r.err
	case <-c.timer.C:
		return reply{}, errBudget // c is abandoned to the worker and the GC
	case <-ctx.Done():
		c.timer.Stop()
		return reply{}, ctx.Err()
	case <-b.stop:
		c.timer.Stop()
		return reply{}, errClosed
	}
}

func (b *redisBackend) worker() {
	defer b.wg.Done()
	batch := make([]*call, 0, maxBatch)
	for {
		select {
		case <-b.stop:
			return
		case c := <-b.queue:
			batch = append(batch[:0], c)
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case c := <-b.queue:
				batch = append(batch, c)
			default:
				break fill
			}
		}
		b.exec(batch)
		clear(batch) // drop references to finished calls
	}
}

func (b *redisBackend) exec(batch []*call) {
	// The earliest deadline in the batch bounds the whole round trip: past
	// it callers start to give up on the answer, and a Redis that slow is
	// about to be bypassed anyway. Calls already past their deadline are not
	// sent. The first call's context (minus its cancellation) parents the
	// Redis span when tracing is on.
	now := b.now()
	live := batch[:0]
	for _, c := range batch {
		if c.deadline <= now {
			c.done <- reply{err: errBudget}
			continue
		}
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	batch = live
	first := batch[0].deadline
	for _, c := range batch[1:] {
		first = min(first, c.deadline)
	}
	left := first - now
	ctx, cancel := context.WithTimeout(context.WithoutCancel(batch[0].ctx), left)
	defer cancel()

	pipe := b.client.Pipeline()
	for _, c := range batch {
		c.cmd = redis.NewCmd(ctx, "evalsha", b.script.Hash(), 1, c.rkey, b.burstArg, b.rateArg, c.cost)
		_ = pipe.Process(ctx, noRetry{c.cmd})
	}
	_, _ = pipe.Exec(ctx)
	answered := b.now()
	for _, c := range batch {
		c.answered = answered
	}

	// NOSCRIPT (SCRIPT FLUSH, a restarted or new node): the script did not
	// run, so sending it again with EVAL cannot double-count. Redis caches it
	// again for the next EVALSHA.
	var again []*call
	for _, c := range batch {
		if isNoScript(c.cmd.Err()) {
			again = append(again, c)
		}
	}
	if len(again) > 0 {
		b.onNoScr(len(again))
		pipe = b.client.Pipeline()
		for _, c := range again {
			c.cmd = redis.NewCmd(ctx, "eval", bucketLua, 1, c.rkey, b.burstArg, b.rateArg, c.cost)
			_ = pipe.Process(ctx, noRetry{c.cmd})
		}
		_, _ = pipe.Exec(ctx)
		answered = b.now()
		for _, c := range again {
			c.answered = answered
		}
	}
	for _, c := range batch {
		r := parseReply(c.cmd)
		r.answered = c.answered
		c.done <- r
	}
}

func isNoScript(err error) bool {
	return err != nil && (errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT"))
}

func parseReply(cmd *redis.Cmd) reply {
	v, err := cmd.Result()
	if err != nil {
		return reply{err: err}
	}
	vals, ok := v.([]any)
	if !ok || len(vals) != 4 {
		return reply{err: fmt.Errorf("ratelimit: unexpected script reply %v", v)}
	}
	var n [4]int64
	for i, x := range vals {
		if n[i], ok = x.(int64); !ok {
			return reply{err: fmt.Errorf("ratelimit: unexpected script reply %v", v)}
		}
	}
	return reply{
		allowed:   n[0] == 1,
		remaining: n[1],
		wait:      time.Duration(n[2]) * time.Microsecond,
		full:      time.Duration(n[3]) * time.Microsecond,
	}
}

// probe reports whether Redis (every master of a Cluster) answers PING
// within the budget. A first PING with a generous timeout may dial a new
// connection (DNS, TCP, TLS): dialing is not what the budget measures.
func (b *redisBackend) probe(ctx context.Context) error {
	each := func(ctx context.Context, fn func(context.Context, redis.Cmdable) error) error {
		if cc, ok := b.client.(*redis.ClusterClient); ok {
			return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return fn(ctx, c) })
		}
		return fn(ctx, b.client)
	}
	ping := func(ctx context.Context, c redis.Cmdable) error { return c.Ping(ctx).Err() }
	warm, cancel := context.WithTimeout(ctx, max(time.Second, b.budget))
	err := each(warm, ping)
	cancel()
	if err != nil {
		return err
	}
	timed, cancel := context.WithTimeout(ctx, b.budget)
	defer cancel()
	start := time.Now()
	if err := each(timed, ping); err != nil {
		return fmt.Errorf("PING within the %s budget: %w", b.budget, err)
	}
	if d := time.Since(start); d > b.budget {
		return fmt.Errorf("PING took %s, over the %s budget", d, b.budget)
	}
	// Load the script now so the first decisions do not pay a NOSCRIPT
	// round trip (a Cluster client loads it on every master).
	loadCtx, cancel := context.WithTimeout(ctx, max(time.Second, b.budget))
	defer cancel()
	_ = b.script.Load(loadCtx, b.client).Err()
	return nil
}
