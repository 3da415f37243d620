package ratelimit

import (
	"hash/maphash"
	"sync"
)

// shardCount spreads keys over independent locks so concurrent callers on
// different keys rarely contend.
const shardCount = 64

// shardedMap is a bounded map of per-key state whose entries expire: an
// expired entry means the same as no entry (a full bucket, no cached denial),
// so dropping it loses nothing. Expired entries are swept lazily when a shard
// grows past a threshold that doubles with the live size (amortised O(1) per
// insert, no background goroutine); if a shard is still at its cap after a
// sweep, arbitrary live entries are evicted so memory stays bounded even
// under a flood of distinct keys.
type shardedMap[V any] struct {
	seed        maphash.Seed
	maxPerShard int
	expired     func(v *V, nowMs int64) bool
	// idle, if set, picks the entries to evict first when a shard is at its
	// cap after the sweep: ones that hold nothing a caller is waiting on.
	idle   func(v *V, nowMs int64) bool
	shards [shardCount]mapShard[V]
}

type mapShard[V any] struct {
	mu      sync.Mutex
	m       map[string]*V
	sweepAt int
	_       [40]byte // keep hot shards on separate cache lines
}

const minSweep = 64

func newShardedMap[V any](maxKeys int, expired func(v *V, nowMs int64) bool) *shardedMap[V] {
	s := &shardedMap[V]{
		seed:        maphash.MakeSeed(),
		maxPerShard: max(1, maxKeys/shardCount),
		expired:     expired,
	}
	for i := range s.shards {
		s.shards[i].m = make(map[string]*V)
		s.shards[i].sweepAt = minSweep
	}
	return s
}

func (s *shardedMap[V]) shard(key string) *mapShard[V] {
	return &s.shards[maphash.String(s.seed, key)%shardCount]
}

// insertLocked adds v under key; the caller holds sh.mu and has checked the
// key is absent.
func (s *shardedMap[V]) insertLocked(sh *mapShard[V], key string, v *V, nowMs int64) {
	if n := len(sh.m); n >= sh.sweepAt || n >= s.maxPerShard {
		for k, e := range sh.m {
			if s.expired(e, nowMs) {
				delete(sh.m, k)
			}
		}
		if len(sh.m) >= s.maxPerShard {
			// Evict down to 7/8 of the cap so the next inserts do not each
			// pay a full sweep: idle entries first, then arbitrary victims
			// (map order is random).
			keep := s.maxPerShard - max(1, s.maxPerShard/8)
			if s.idle != nil {
				for k, e := range sh.m {
					if len(sh.m) <= keep {
						break
					}
					if s.idle(e, nowMs) {
						delete(sh.m, k)
					}
				}
			}
			for k := range sh.m {
				if len(sh.m) <= keep {
					break
				}
				delete(sh.m, k)
			}
		}
		sh.sweepAt = min(max(minSweep, 2*len(sh.m)), s.maxPerShard)
	}
	sh.m[key] = v
}

// len counts the entries (for tests and debugging; takes every lock).
func (s *shardedMap[V]) len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
