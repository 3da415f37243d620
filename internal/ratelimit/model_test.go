package ratelimit

import (
	"context"
	"fmt"
	"math/big"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// refBucket is the reference: a textbook token bucket in exact rational
// arithmetic, refilled continuously and sampled at whole milliseconds (the
// granularity the limiter promises), with time that never runs backwards.
type refBucket struct {
	rate   *big.Rat // tokens per ms
	burst  *big.Rat
	tokens *big.Rat
	last   int64
	fullAt int64 // ms at which the stored state refills completely
	seen   bool
}

func newRefBucket(rate float64, burst int) *refBucket {
	r, ok := new(big.Rat).SetString(strconv.FormatFloat(rate, 'f', -1, 64))
	if !ok {
		panic(rate)
	}
	return &refBucket{rate: r.Quo(r, big.NewRat(1000, 1)), burst: big.NewRat(int64(burst), 1)}
}

type refResult struct {
	allowed   bool
	remaining int64
	retryAtMs int64 // absolute ms at which cost is affordable; only when denied
	fullAtMs  int64 // absolute ms at which the bucket is full; -1 if full
	atMs      int64 // the bucket's time the decision was taken at (never behind its stored time)
	nextAtMs  int64 // absolute ms at which another call of this cost can pass; -1 if now
}

func ceilRat(x *big.Rat) int64 {
	q, m := new(big.Int).QuoRem(x.Num(), x.Denom(), new(big.Int))
	if m.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	return q.Int64()
}

func (b *refBucket) take(nowMs int64, cost int) refResult {
	tokens := new(big.Rat).Set(b.burst)
	t := nowMs
	if b.seen {
		t = max(t, b.last)
		tokens.Mul(b.rate, big.NewRat(t-b.last, 1))
		tokens.Add(tokens, b.tokens)
		if tokens.Cmp(b.burst) > 0 {
			tokens.Set(b.burst)
		}
	}
	c := big.NewRat(int64(cost), 1)
	res := refResult{allowed: tokens.Cmp(c) >= 0, fullAtMs: -1, atMs: t}
	if res.allowed && cost > 0 {
		tokens.Sub(tokens, c)
		b.tokens, b.last, b.seen = tokens, t, true
		b.fullAt = t + ceilRat(new(big.Rat).Quo(new(big.Rat).Sub(b.burst, tokens), b.rate))
	}
	res.remaining = new(big.Int).Quo(tokens.Num(), tokens.Denom()).Int64()
	res.nextAtMs = -1
	if tokens.Cmp(c) < 0 {
		res.nextAtMs = t + ceilRat(new(big.Rat).Quo(new(big.Rat).Sub(c, tokens), b.rate))
	}
	if !res.allowed {
		res.retryAtMs = res.nextAtMs
	}
	if tokens.Cmp(b.burst) < 0 {
		res.fullAtMs = t + ceilRat(new(big.Rat).Quo(new(big.Rat).Sub(b.burst, tokens), b.rate))
	}
	return res
}

// modelCase is one random configuration.
type modelCase struct {
	rate  float64
	burst int
}

var modelCases = []modelCase{
	{1, 1}, {0.5, 3}, {3.3, 7}, {7.25, 20}, {100, 200}, {1000, 10}, {12345.678, 50000}, {0.001, 2},
}

// step picks the next fake time (µs), mostly forward by a little, sometimes
// a long idle (to pass expiry) and sometimes backwards (a clock step).
func step(rng *rand.Rand, nowUs int64, rate float64, burst int) int64 {
	fill := int64(float64(burst) / rate * 1e6) // µs to refill completely
	switch p := rng.IntN(100); {
	case p < 3:
		return nowUs - rng.Int64N(5_000_000) // backwards up to 5 s
	case p < 8:
		return nowUs + fill + rng.Int64N(fill+1) // idle past full
	case p < 40:
		return nowUs // same instant
	default:
		return nowUs + rng.Int64N(max(2, 3*int64(1e6/rate))) // around a token's time
	}
}

func TestLocalBucketMatchesModel(t *testing.T) {
	for _, mc := range modelCases {
		t.Run(fmt.Sprintf("rate=%g,burst=%d", mc.rate, mc.burst), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(mc.burst), uint64(mc.rate*1000)))
			var nowUs int64 = 1_000_000_000 // arbitrary epoch
			b := newLocalBucket(mc.rate, mc.burst, 1000, func() time.Duration { return time.Duration(nowUs) * time.Microsecond })
			refs := map[string]*refBucket{}
			for i := 0; i < 4000; i++ {
				nowUs = step(rng, nowUs, mc.rate, mc.burst)
				key := "k" + strconv.Itoa(rng.IntN(3))
				cost := rng.IntN(min(mc.burst, 5) + 1)
				if refs[key] == nil {
					refs[key] = newRefBucket(mc.rate, mc.burst)
				}
				want := refs[key].take(nowUs/1000, cost)
				got := b.allow(key, cost)
				checkDecision(t, i, key, cost, nowUs, mc.burst, got, want)
			}
		})
	}
}

func checkDecision(t *testing.T, i int, key string, cost int, nowUs int64, burst int, got Decision, want refResult) {
	t.Helper()
	now := time.Duration(nowUs) * time.Microsecond
	wantRetry := time.Duration(0)
	if !want.allowed {
		wantRetry = time.Duration(want.retryAtMs)*time.Millisecond - now
	}
	wantReset := time.Duration(0)
	if want.fullAtMs >= 0 {
		wantReset = time.Duration(want.fullAtMs)*time.Millisecond - now
	}
	if got.Allowed != want.allowed || int64(got.Remaining) != want.remaining || got.Limit != burst ||
		got.RetryAfter != wantRetry || got.ResetAfter != wantReset {
		t.Fatalf("call %d key %s cost %d at %dµs: got %+v, want allowed=%v remaining=%d retry=%s reset=%s",
			i, key, cost, nowUs, got, want.allowed, want.remaining, wantRetry, wantReset)
	}
}

// TestScriptMatchesModel runs the real Lua script (in miniredis, whose TIME
// follows a fake clock and whose keys expire as the clock advances) against
// the reference. A TTL shorter than the time to refill, a clock that moves
// backwards, or float truncation of Remaining would all diverge here.
func TestScriptMatchesModel(t *testing.T) {
	for _, mc := range modelCases {
		t.Run(fmt.Sprintf("rate=%g,burst=%d", mc.rate, mc.burst), func(t *testing.T) {
			mr := miniredis.RunT(t)
			rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			t.Cleanup(func() { rdb.Close() })
			params := newBucketParams(mc.burst, mc.rate)
			script := redis.NewScript(bucketScript(params))
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(uint64(mc.burst), uint64(mc.rate*1000)))
			var nowUs int64 = 1_700_000_000_000_000 // a realistic Unix time in µs
			mr.SetTime(time.UnixMicro(nowUs))
			refs := map[string]*refBucket{}
			high := nowUs // miniredis TTLs only move forward
			for i := 0; i < 800; i++ {
				nowUs = step(rng, nowUs, mc.rate, mc.burst)
				mr.SetTime(time.UnixMicro(nowUs))
				if nowUs > high {
					mr.FastForward(time.Duration(nowUs-high) * time.Microsecond)
					high = nowUs
				}
				key := "k" + strconv.Itoa(rng.IntN(3))
				cost := rng.IntN(min(mc.burst, 5) + 1)
				if refs[key] == nil {
					refs[key] = newRefBucket(mc.rate, mc.burst)
				}
				// An absent key is a full bucket. It may vanish only once the
				// server clock has reached the time the bucket is full again;
				// earlier would hand out tokens twice.
				if ref := refs[key]; ref.seen && !mr.Exists(redisKey(key)) {
					if high < ref.fullAt*1000 {
						t.Fatalf("call %d: key %s expired at %dµs, before the bucket refilled at %dms", i, key, high, ref.fullAt)
					}
					ref.seen = false
				}
				want := refs[key].take(nowUs/1000, cost)
				v, err := script.Run(ctx, rdb, []string{redisKey(key)}, cost).Int64()
				if err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
				rep := params.decode(v, cost)
				got := Decision{Allowed: rep.allowed, Limit: mc.burst, Remaining: int(rep.remaining), ResetAfter: rep.full}
				if !rep.allowed {
					got.RetryAfter = rep.wait
				}
				// The script's waits count whole ms from the bucket's time.
				checkDecision(t, i, key, cost, want.atMs*1000, mc.burst, got, want)
				// The wait after an admitted call too: the denied-key cache
				// answers the next calls from it without asking Redis.
				wantNext := time.Duration(0)
				if want.nextAtMs >= 0 {
					wantNext = time.Duration(want.nextAtMs-want.atMs) * time.Millisecond
				}
				if rep.wait != wantNext {
					t.Fatalf("call %d: wait for the next call %s, want %s", i, rep.wait, wantNext)
				}
				if exact := time.Duration(want.retryAtMs*1000-nowUs) * time.Microsecond; !want.allowed && want.atMs == nowUs/1000 &&
					(got.RetryAfter < exact || got.RetryAfter >= exact+time.Millisecond) {
					t.Fatalf("call %d: RetryAfter %s, want within 1 ms above the exact %s", i, got.RetryAfter, exact)
				}
				// Expiry: never before the bucket is full again, and at least
				// 1 s when just written (go-zero's floor(2*burst/rate) TTL is 0
				// for small bursts).
				if nowUs >= high && want.fullAtMs >= 0 {
					ttl := mr.TTL(redisKey(key))
					toFull := time.Duration(want.fullAtMs)*time.Millisecond - time.Duration(nowUs)*time.Microsecond
					if ttl < toFull {
						t.Fatalf("call %d: TTL %s shorter than the time to refill %s", i, ttl, toFull)
					}
					if want.allowed && cost > 0 && ttl < time.Second {
						t.Fatalf("call %d: TTL %s right after a write, want >= 1s", i, ttl)
					}
				}
			}
		})
	}
}

func TestShardedMapBounded(t *testing.T) {
	var nowUs int64
	b := newLocalBucket(1, 10, 640, func() time.Duration { return time.Duration(nowUs) * time.Microsecond })
	for i := 0; i < 100_000; i++ {
		b.allow("key"+strconv.Itoa(i), 1)
	}
	if n := b.m.len(); n > 640 {
		t.Fatalf("local bucket holds %d keys, cap 640", n)
	}
	// Once every bucket is full again the entries are dead weight: the next
	// inserts sweep them.
	nowUs += 11 * 1e6
	for i := 0; i < 64*minSweep; i++ {
		b.allow("fresh"+strconv.Itoa(i), 1)
	}
	if n := b.m.len(); n > 64*minSweep {
		t.Fatalf("expired keys not swept: %d", n)
	}
	// A key that is still draining survives small inserts: eviction only
	// happens at the cap.
	b2 := newLocalBucket(1, 2, 64000, func() time.Duration { return time.Duration(nowUs) * time.Microsecond })
	b2.allow("hot", 2)
	for i := 0; i < 1000; i++ {
		b2.allow("other"+strconv.Itoa(i), 1)
	}
	if d := b2.allow("hot", 1); d.Allowed {
		t.Fatal("a drained key was forgotten well below the cap")
	}
}

func TestKeyCache(t *testing.T) {
	c := newKeyCache(1000)
	now := 10 * time.Second
	a := c.admit("k", 2, now)
	if a.entry == nil || a.denied || a.wait != nil {
		t.Fatalf("first call must go to Redis: %+v", a)
	}
	// Nothing known about the key yet: a second call waits for the first.
	w := c.admit("k", 2, now)
	if w.wait == nil {
		t.Fatalf("concurrent call on an unknown key: %+v, want to wait", w)
	}
	c.done("k", a.entry, 2, 5, &reply{allowed: true, remaining: 1, wait: 300 * time.Millisecond, full: time.Second, answered: now})
	select {
	case <-w.wait:
	default:
		t.Fatal("waiter not woken by the answer")
	}
	if got := c.admit("k", 2, now+100*time.Millisecond); !got.denied || got.d.RetryAfter != 200*time.Millisecond || got.d.Limit != 5 || got.d.ResetAfter != 900*time.Millisecond {
		t.Fatalf("cached denial = %+v", got)
	}
	if got := c.admit("k", 3, now); !got.denied {
		t.Fatal("a bigger cost must be denied from the cache too")
	}
	b := c.admit("k", 1, now)
	if b.entry == nil {
		t.Fatalf("a smaller cost may be affordable: must ask Redis, got %+v", b)
	}
	c.done("k", b.entry, 1, 5, nil) // failed call: releases the permit only
	if got := c.admit("k", 2, now+300*time.Millisecond); got.denied {
		t.Fatal("entry used at its expiry")
	}
	// A key with tokens to spare is not serialised.
	h := c.admit("hot", 1, now)
	c.done("hot", h.entry, 1, 100, &reply{allowed: true, remaining: 50, answered: now})
	for i := 0; i < 50; i++ {
		if got := c.admit("hot", 1, now); got.entry == nil {
			t.Fatalf("call %d on a key with 50 tokens left had to wait", i)
		}
	}
	if got := c.admit("hot", 1, now); got.wait == nil {
		t.Fatal("51 calls in flight on 50 known tokens: the 51st should wait")
	}
}

// TestKeyCacheKeepsEntries: an entry outlives its call by keyKeep, so a key
// that comes back soon finds the tokens known left (its concurrent calls go
// out together) even after sweeps of its shard; then it is swept.
func TestKeyCacheKeepsEntries(t *testing.T) {
	c := newKeyCache(1 << 20) // no cap pressure: only sweeps remove entries
	now := 10 * time.Second
	a := c.admit("k", 1, now)
	c.done("k", a.entry, 1, 100, &reply{allowed: true, remaining: 50, answered: now})
	churn := func(at time.Duration, tag string) {
		for i := 0; i < 64*300; i++ { // ~300 inserts per shard: several sweeps each
			e := c.admit(tag+strconv.Itoa(i), 1, at)
			c.done(tag+strconv.Itoa(i), e.entry, 1, 100, &reply{allowed: true, remaining: 99, answered: at})
		}
	}
	churn(now+100*time.Millisecond, "x")
	later := now + 500*time.Millisecond
	first, second := c.admit("k", 1, later), c.admit("k", 1, later)
	if first.entry == nil || second.entry == nil {
		t.Fatalf("a key back within %s waited for its own first call: %+v %+v", keyKeep, first, second)
	}
	c.done("k", first.entry, 1, 100, &reply{allowed: true, remaining: 49, answered: later})
	c.done("k", second.entry, 1, 100, &reply{allowed: true, remaining: 48, answered: later})
	churn(later+keyKeep+time.Millisecond, "y")
	again := later + keyKeep + 2*time.Millisecond
	if x := c.admit("k", 1, again); x.entry == nil {
		t.Fatalf("first call after the entry expired: %+v", x)
	}
	if w := c.admit("k", 1, again); w.wait == nil {
		t.Fatalf("entry not swept %s after its last call: a concurrent call did not wait (%+v)", keyKeep, w)
	}
}

// TestKeyCacheEvictsIdleFirst: at the cap, entries with nothing pending go
// before a cached denial, so a flooding key keeps being answered locally
// while many other keys pass through.
func TestKeyCacheEvictsIdleFirst(t *testing.T) {
	c := newKeyCache(shardCount * 16)
	now := 10 * time.Second
	f := c.admit("flood", 1, now)
	c.done("flood", f.entry, 1, 10, &reply{remaining: 0, wait: time.Minute, full: time.Minute, answered: now})
	for i := 0; i < shardCount*16*20; i++ {
		k := "k" + strconv.Itoa(i)
		e := c.admit(k, 1, now)
		c.done(k, e.entry, 1, 10, &reply{allowed: true, remaining: 9, answered: now})
	}
	if n := c.m.len(); n > shardCount*16 {
		t.Fatalf("cache holds %d entries, cap %d", n, shardCount*16)
	}
	if d := c.admit("flood", 1, now+time.Second); !d.denied {
		t.Fatalf("the flooding key's cached denial was evicted for idle entries: %+v", d)
	}
}

// A hot key stays exact while other keys come and go and sweeps run
// concurrently: a swept entry is only ever a full bucket.
func TestLocalBucketExactUnderChurn(t *testing.T) {
	epoch := time.Now()
	b := newLocalBucket(1000, 50, 1_000_000, func() time.Duration { return time.Since(epoch) })
	var admitted atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if b.allow("hot", 1).Allowed {
					admitted.Add(1)
				}
			}
		})
	}
	for g := range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				b.allow("churn"+strconv.Itoa(g)+"-"+strconv.Itoa(i), 1) // full again 1 ms later
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	// The window is the bucket's clock from its epoch, which is before the
	// first call: the callers start before the sleep, and on a loaded
	// machine they run for a while before it (a window that began at the
	// sleep once came out 4 tokens short).
	elapsed := time.Since(epoch)
	// Tokens arrive once a millisecond: the bound is the burst plus one per
	// started millisecond.
	bound := 50 + int64(elapsed/time.Millisecond) + 2
	// Only the upper bound is the point (a swept entry must never hand out
	// a fresh bucket early); how much of it the callers reach depends on
	// the CPU they get, so the floor is just the burst.
	if got := admitted.Load(); got > bound || got < 50 {
		t.Fatalf("hot key admitted %d over %s, bound %d", got, elapsed, bound)
	}
	if n := b.m.len(); n > 100_000 {
		t.Errorf("%d live keys: expired churn keys were not swept", n)
	}
}
