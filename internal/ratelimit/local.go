package ratelimit

import (
	"time"
)

// localBucket is an exact in-memory token bucket per key, with the same
// fixed-point arithmetic as the Lua script (tokens in 1e-6 units, time in
// whole milliseconds), so both backends answer alike and report exact
// Remaining and reset times (golang.org/x/time/rate cannot report them for a
// key without reserving). Idle keys expire as soon as their bucket is full
// again, which is when keeping them stops mattering.
type localBucket struct {
	burst    int
	capUnits int64
	rate     int64 // units per millisecond
	now      func() time.Duration
	m        *shardedMap[bucketState]
}

type bucketState struct {
	tokens int64 // units, as of last
	last   int64 // ms on the limiter's clock; never moves backwards
	fullAt int64 // ms at which the bucket is full again: the entry is dead weight after it
}

func newLocalBucket(rate float64, burst, maxKeys int, now func() time.Duration) *localBucket {
	return &localBucket{
		burst:    burst,
		capUnits: int64(burst) * unitsPerToken,
		rate:     ratePerMs(rate),
		now:      now,
		m: newShardedMap(maxKeys, func(s *bucketState, nowMs int64) bool {
			return s.fullAt <= nowMs
		}),
	}
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// refill adds elapsed ms worth of tokens without overflowing int64 however
// long the key was idle.
func refill(tokens, capUnits, rate, elapsed int64) int64 {
	room := capUnits - tokens
	if room <= 0 || elapsed >= ceilDiv(room, rate) {
		return capUnits
	}
	return tokens + elapsed*rate
}

func (b *localBucket) allow(key string, cost int) Decision {
	nowNs := b.now()
	nowMs := int64(nowNs / time.Millisecond)
	need := int64(cost) * unitsPerToken
	sh := b.m.shard(key)
	sh.mu.Lock()
	st := sh.m[key]
	tokens, t := b.capUnits, nowMs
	if st != nil {
		t = max(t, st.last)
		tokens = refill(st.tokens, b.capUnits, b.rate, t-st.last)
	}
	allowed := tokens >= need
	if allowed && need > 0 {
		tokens -= need
		if st == nil {
			st = &bucketState{}
			b.m.insertLocked(sh, key, st, nowMs)
		}
		st.tokens, st.last = tokens, t
		st.fullAt = t + ceilDiv(b.capUnits-tokens, b.rate)
	}
	sh.mu.Unlock()
	return decide(allowed, b.burst, tokens, need, b.capUnits, b.rate, t, nowNs)
}

// decide builds the Decision for a bucket holding tokens at ms t, observed
// at nowNs (a denial always has tokens < need). Tokens arrive on millisecond boundaries, so the waits are
// measured from nowNs to the boundary at which the bucket holds need (or is
// full), not rounded to whole milliseconds from now.
func decide(allowed bool, burst int, tokens, need, capUnits, rate, t int64, nowNs time.Duration) Decision {
	d := Decision{Allowed: allowed, Limit: burst, Remaining: int(tokens / unitsPerToken)}
	if !allowed {
		d.RetryAfter = time.Duration(t+ceilDiv(need-tokens, rate))*time.Millisecond - nowNs
	}
	if tokens < capUnits {
		d.ResetAfter = time.Duration(t+ceilDiv(capUnits-tokens, rate))*time.Millisecond - nowNs
	}
	return d
}
