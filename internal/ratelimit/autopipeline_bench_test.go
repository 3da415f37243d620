//go:build redisratebench

package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hardenedgo/ginservice/internal/testkit/redistest"
)

// TestCompareAutoPipeline puts this limiter's pipelining next to go-redis's
// own automatic pipelining (v9.22+, experimental), both running the same
// bucket script on the distinct-keys load of TestCompareRedisRate: the
// limiter's full Allow against a bare EVALSHA through
// Client.AutoPipelineWithOptions, half-duplex (one batch per round trip)
// and full-duplex (one connection written and read at once). It shows
// whether a different client-side batching would move the ceiling that
// benchmarks/ratelimit.md describes.
func TestCompareAutoPipeline(t *testing.T) {
	srv := redistest.Start(t)
	d := envDuration("BENCH_DURATION", 3*time.Second)
	rounds := benchRounds()
	const bigRate, bigBurst = 1e9, 1_000_000_000
	distinct := func(g, i int) string { return "c" + strconv.Itoa(g) + "-" + strconv.Itoa(i%200) }

	ours := newTestLimiter(t, Config{RedisURL: srv.URL(), Rate: bigRate, Burst: bigBurst, RedisTimeout: time.Second})
	oursAllow := func(ctx context.Context, key string) (bool, error) {
		dec, err := ours.Allow(ctx, key, 1)
		return dec.Allowed, err
	}
	script := redis.NewScript(bucketScript(newBucketParams(bigBurst, bigRate)))
	autoPipelined := func(fullDuplex bool) func(ctx context.Context, key string) (bool, error) {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
		t.Cleanup(func() { rdb.Close() })
		if err := script.Load(context.Background(), rdb).Err(); err != nil {
			t.Fatal(err)
		}
		opt := redis.DefaultBlockingAutoPipelineOptions()
		opt.FullDuplex = fullDuplex
		ap, err := rdb.AutoPipelineWithOptions(opt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ap.Close() })
		sha := script.Hash()
		return func(ctx context.Context, key string) (bool, error) {
			v, err := ap.EvalSha(ctx, sha, []string{redisKey(key)}, 1).Int64()
			return v >= 0, err
		}
	}
	contenders := []struct {
		name  string
		allow func(ctx context.Context, key string) (bool, error)
	}{
		{"this limiter (Allow)", oursAllow},
		{"go-redis AutoPipeline, half-duplex (EVALSHA)", autoPipelined(false)},
		{"go-redis AutoPipeline, full-duplex (EVALSHA)", autoPipelined(true)},
	}
	for _, c := range contenders {
		runCallers("warm-up", srv, 300*time.Millisecond, distinct, c.allow)
	}
	fmt.Printf("\n%d callers, %s per run, %d rounds\n\n", benchCallers, d, rounds)
	fmt.Println("| run | decisions/s | p50 | p99 | errors | redis-server CPU | client CPU | redis-server µs/decision | client µs/decision |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for r := 0; r < rounds; r++ {
		for _, c := range contenders {
			res := runCallers(c.name, srv, d, distinct, c.allow)
			fmt.Printf("| %s | %.0f | %s | %s | %d | %.0f%% | %.0f%% | %.2f | %.2f |\n", c.name, res.perSec(),
				res.p50.Round(time.Microsecond), res.p99.Round(time.Microsecond), res.errs,
				100*res.redisCPU/res.elapsed.Seconds(), 100*res.procCPU/res.elapsed.Seconds(),
				1e6*res.redisCPU/float64(res.calls), 1e6*res.procCPU/float64(res.calls))
			if res.errs != 0 {
				t.Errorf("%s: %d errors", c.name, res.errs)
			}
		}
	}
}
