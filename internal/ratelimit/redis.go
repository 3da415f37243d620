package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
// The bucket's capacity and refill (1e-6 tokens per ms) are written into
// the script (bucketScript), so a call carries only KEYS[1], the bucket
// hash, and ARGV[1], the cost in tokens. The reply is one integer: the
// tokens left in 1e-6 units if the call was admitted, -1 minus them if it
// was not. Everything else a decision reports (whole tokens left, the wait
// until the cost is affordable, the time until the bucket is full) follows
// from that number and the bucket's parameters, so the client computes it
// (bucketParams.decode) instead of Redis.
//
// Cost inside Redis is what bounds the shared limiter's throughput, so the
// script is kept lean: no math.* or tonumber (floor(a/b) is (a - a%b)/b,
// strings coerce in arithmetic), and an integer reply rather than a table
// (building and converting a 4-element table was about 10% of the script's
// time). Needs Redis >= 5 (effects replication by default, so TIME may
// precede writes).
const bucketLua = `
local cap = %d
local rate = %d
local need = ARGV[1] * 1000000
local t = redis.call('TIME')
local clock = t[1] * 1000 + (t[2] - t[2] %% 1000) / 1000
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
if tokens < need then return -1 - tokens end
if need > 0 then
  tokens = tokens - need
  redis.call('HSET', KEYS[1], 'tk', tokens, 'ts', now)
  local x = cap - tokens + rate - 1
  local ttl = now + (x - x %% rate) / rate - clock
  if ttl < 1000 then ttl = 1000 end
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return tokens
`

// bucketParams are a bucket's capacity and refill in the script's fixed-point
// units.
type bucketParams struct {
	capUnits int64 // burst * 1e6
	rate     int64 // 1e-6 tokens per ms, >= 1
}

func newBucketParams(burst int, rate float64) bucketParams {
	return bucketParams{capUnits: int64(burst) * unitsPerToken, rate: ratePerMs(rate)}
}

// bucketScript is the Lua source for a bucket with these parameters. Every
// instance with the same RATELIMIT_RATE and RATELIMIT_BURST runs the same
// script (one SHA); a differently configured one loads its own.
func bucketScript(p bucketParams) string {
	return fmt.Sprintf(bucketLua, p.capUnits, p.rate)
}

// decode turns the script's reply for a call of cost tokens into a decision:
// whether it was admitted, the whole tokens left, the wait until another
// call of that cost can pass (0 if one can now) and the time until the
// bucket is full (0 if it is). The waits count whole milliseconds from the
// millisecond the bucket was read at: they are at most 1 ms longer than the
// time left on the server's microsecond clock and never shorter, so a
// denied key cached for wait is not asked again before it can pass. (After
// the server clock stepped back they count from the stored time, which is
// ahead: the key may then be asked again early, and Redis, which decides,
// denies it again.)
func (p bucketParams) decode(v int64, cost int) reply {
	r := reply{allowed: v >= 0}
	tokens := v
	if !r.allowed {
		tokens = -1 - v
	}
	// Also after an admitted call: a bucket it left short of another call
	// of the same cost is answered locally until then (keyCache).
	if need := int64(cost) * unitsPerToken; tokens < need {
		r.wait = time.Duration(ceilDiv(need-tokens, p.rate)) * time.Millisecond
	}
	r.remaining = tokens / unitsPerToken
	if tokens < p.capUnits {
		r.full = time.Duration(ceilDiv(p.capUnits-tokens, p.rate)) * time.Millisecond
	}
	return r
}

// redisKey is the bucket's Redis key: the whole key is the hash tag.
func redisKey(key string) string { return "rl:{" + key + "}" }

// noRetry marks the script call as never to be retried by go-redis: after a
// timeout or a dropped connection the script may already have run, and
// running it again would charge the caller twice. (MaxRetries is -1 as well;
// this also covers the Cluster client, whose redirect budget would otherwise
// re-send a pipeline after a network error. MOVED/ASK are still followed:
// those replies mean the script did not run.)
type noRetry struct{ *redis.IntCmd }

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
// many calls (about 20 on average with 64 callers), so throughput is not
// bound by one round trip per call, and Redis reads and writes once per
// batch.
type redisBackend struct {
	client  redis.UniversalClient
	params  bucketParams
	src     string // the script's source, for EVAL after NOSCRIPT
	script  *redis.Script
	sha     any // script.Hash(), boxed once for the command's arguments
	budget  time.Duration
	now     func() time.Duration
	onNoScr func(n int)

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
	rkey any // the bucket's Redis key (redisKey), boxed for the command's arguments
	cost int
	// deadline on the limiter clock: the caller stops waiting then.
	deadline time.Duration
	cmd      *redis.IntCmd
	// answered is when the reply was read (limiter clock).
	answered time.Duration
	eval     bool // re-sent with EVAL after NOSCRIPT
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
	batch     int  // calls in the pipeline that carried this one
	eval      bool // sent again with EVAL after NOSCRIPT
}

func newRedisBackend(client redis.UniversalClient, burst int, rate float64, budget time.Duration, pipelines int, now func() time.Duration, onNoScript func(int)) *redisBackend {
	params := newBucketParams(burst, rate)
	src := bucketScript(params)
	b := &redisBackend{
		client:  client,
		params:  params,
		src:     src,
		script:  redis.NewScript(src),
		budget:  budget,
		now:     now,
		onNoScr: onNoScript,
		queue:   make(chan *call, queueDepth),
		stop:    make(chan struct{}),
	}
	b.sha = b.script.Hash()
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
func (b *redisBackend) allow(ctx context.Context, rkey any, cost int, deadline time.Duration) (reply, error) {
	left := deadline - b.now()
	if left <= 0 {
		return reply{}, errBudget
	}
	c := b.calls.Get().(*call)
	c.rkey, c.cost, c.deadline, c.eval = rkey, cost, deadline, false
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
		c.cmd = nil
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
	// The latest deadline in the batch bounds the whole round trip: each
	// caller gives up at its own deadline (its timer in allow), and a call
	// with little budget left, one that waited for another call of its key,
	// must not cut the round trip short for the others, which would then
	// fail with a timeout Redis did not cause. Calls already past their
	// deadline are not sent. The pipeline is no single request's work:
	// each traced call has its own span (redisSpans), none the pipeline.
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
	last := batch[0].deadline
	for _, c := range batch[1:] {
		last = max(last, c.deadline)
	}
	left := last - now
	ctx, cancel := context.WithTimeout(context.Background(), left)
	defer cancel()

	pipe := b.client.Pipeline()
	for _, c := range batch {
		c.cmd = redis.NewIntCmd(ctx, "evalsha", b.sha, 1, c.rkey, c.cost)
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
			c.eval = true
			c.cmd = redis.NewIntCmd(ctx, "eval", b.src, 1, c.rkey, c.cost)
			_ = pipe.Process(ctx, noRetry{c.cmd})
		}
		_, _ = pipe.Exec(ctx)
		answered = b.now()
		for _, c := range again {
			c.answered = answered
		}
	}
	for _, c := range batch {
		r := b.params.parseReply(c.cmd, c.cost)
		r.answered = c.answered
		r.batch = len(batch)
		r.eval = c.eval
		c.done <- r
	}
}

func isNoScript(err error) bool {
	return err != nil && (errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT"))
}

// parseReply decodes the script's reply to a call of cost tokens.
func (p bucketParams) parseReply(cmd *redis.IntCmd, cost int) reply {
	v, err := cmd.Result()
	if err != nil {
		return reply{err: err}
	}
	return p.decode(v, cost)
}

// probe reports whether the node answers PING within the budget and runs
// the script. A first PING with a generous timeout may dial a new
// connection (DNS, TCP, TLS): dialing is not what the budget measures.
func (b *redisBackend) probe(ctx context.Context) error {
	return b.probeNode(ctx, b.client, probeKey)
}

// probeNode is probe sent to one node: for a Cluster master, the node
// itself, with key a bucket in one of its slots (a node that lost its slots
// answers MOVED, which fails the probe).
func (b *redisBackend) probeNode(ctx context.Context, node redis.UniversalClient, key string) error {
	warm, cancel := context.WithTimeout(ctx, max(time.Second, b.budget))
	err := node.Ping(warm).Err()
	cancel()
	if err != nil {
		return err
	}
	timed, cancel := context.WithTimeout(ctx, b.budget)
	defer cancel()
	start := time.Now()
	if err := node.Ping(timed).Err(); err != nil {
		return fmt.Errorf("PING within the %s budget: %w", b.budget, err)
	}
	if d := time.Since(start); d > b.budget {
		return fmt.Errorf("PING took %s, over the %s budget", d, b.budget)
	}
	// Load the script now so the first decisions do not pay a NOSCRIPT
	// round trip.
	loadCtx, cancel := context.WithTimeout(ctx, max(time.Second, b.budget))
	defer cancel()
	_ = b.script.Load(loadCtx, node).Err()
	// Then one decision, as the callers make them, on a key of its own: a
	// node that answers PING may still refuse the script's writes (a
	// replica after a failover: READONLY; maxmemory: OOM), and going back
	// to it would only fail the next call and flap.
	if err := b.script.Run(loadCtx, node, []string{key}, 1).Err(); err != nil {
		return fmt.Errorf("bucket script: %w", err)
	}
	return nil
}

// isProbeKey reports a probe bucket (probeKey, or a Cluster master's
// ratelimit:probe:N) among a command's arguments.
func isProbeKey(arg any) bool {
	k, ok := arg.(string)
	return ok && strings.HasPrefix(k, strings.TrimSuffix(probeKey, "}"))
}

// probeName names the probe buckets: probeKey, and ratelimit:probe:N for
// the masters of a Cluster (never a client's key: the braces hold a name,
// not an address or a hash).
const probeName = "ratelimit:probe"

// probeKey is the bucket the probe spends a token of.
var probeKey = redisKey(probeName)
