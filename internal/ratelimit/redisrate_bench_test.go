//go:build redisratebench

// The comparison with go-redis/redis_rate lives behind the redisratebench
// build tag so the service (and its normal test run) never links redis_rate.
// Run it with the command in benchmarks/ratelimit.md.

package ratelimit

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/hardenedgo/ginservice/internal/testkit/redistest"
)

const benchCallers = 64

// benchRounds is BENCH_ROUNDS, 2 when unset.
func benchRounds() int {
	if v, err := strconv.Atoi(os.Getenv("BENCH_ROUNDS")); err == nil && v > 0 {
		return v
	}
	return 2
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

type benchResult struct {
	name      string
	calls     int64
	allowed   int64
	errs      int64
	elapsed   time.Duration
	p50, p99  time.Duration
	scriptOps int64   // EVALSHA+EVAL calls seen by Redis
	writes    int64   // SET+HSET calls seen by Redis (the buckets' state written)
	redisCPU  float64 // seconds of redis-server CPU (user+sys) during the run
	procCPU   float64 // seconds of this process's CPU during the run
}

func (r benchResult) perSec() float64 { return float64(r.calls) / r.elapsed.Seconds() }

// runCallers runs benchCallers goroutines calling allow for d; keyOf picks
// the key of caller g's i-th call.
func runCallers(name string, srv *redistest.Server, d time.Duration, keyOf func(g, i int) string,
	allow func(ctx context.Context, key string) (bool, error)) benchResult {
	before := scriptCalls(srv)
	writesBefore := stateWrites(srv)
	cpuBefore := redisCPU(srv)
	procBefore := processCPU()
	var wg sync.WaitGroup
	var calls, allowed, errs atomic.Int64
	lats := make([][]time.Duration, benchCallers)
	start := time.Now()
	deadline := start.Add(d)
	for g := 0; g < benchCallers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			l := make([]time.Duration, 0, 1<<14)
			for i := 0; ; i++ {
				t0 := time.Now()
				if !t0.Before(deadline) {
					break
				}
				ok, err := allow(ctx, keyOf(g, i))
				l = append(l, time.Since(t0))
				if err != nil {
					errs.Add(1)
				} else if ok {
					allowed.Add(1)
				}
			}
			calls.Add(int64(len(l)))
			lats[g] = l
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	return benchResult{
		name: name, calls: calls.Load(), allowed: allowed.Load(), errs: errs.Load(), elapsed: elapsed,
		p50: quantile(all, 0.50), p99: quantile(all, 0.99), scriptOps: scriptCalls(srv) - before,
		writes:   stateWrites(srv) - writesBefore,
		redisCPU: redisCPU(srv) - cpuBefore, procCPU: processCPU() - procBefore,
	}
}

func redisCPU(srv *redistest.Server) float64 {
	info, err := srv.Do("INFO", "cpu")
	if err != nil {
		return 0
	}
	var sum float64
	for _, l := range strings.Split(info, "\n") {
		l = strings.TrimSpace(l)
		for _, k := range []string{"used_cpu_user:", "used_cpu_sys:"} {
			if v, ok := strings.CutPrefix(l, k); ok {
				f, _ := strconv.ParseFloat(v, 64)
				sum += f
			}
		}
	}
	return sum
}

func processCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// stateWrites counts the commands the two scripts store a bucket with:
// HSET (this limiter) and SET (redis_rate). Commands a script runs show in
// INFO commandstats under their own names.
func stateWrites(srv *redistest.Server) int64 {
	a, _ := srv.CommandCalls("hset")
	b, _ := srv.CommandCalls("set")
	return a + b
}

func scriptCalls(srv *redistest.Server) int64 {
	a, _ := srv.CommandCalls("evalsha")
	b, _ := srv.CommandCalls("eval")
	return a + b
}

// TestCompareRedisRate: 64 concurrent callers against one loopback Redis,
// this limiter vs redis_rate v10 Allow, alternating runs in one process.
//
// "distinct keys": every call is admitted (rate far above the load), so
// every call is a Redis decision for both: this measures the Redis path
// (pipelining vs one round trip per call). "one hot key": all callers on one
// key at 100/s, the flood case the denied-key cache exists for.
func TestCompareRedisRate(t *testing.T) {
	srv := redistest.Start(t)
	d := envDuration("BENCH_DURATION", 3*time.Second)
	rounds := benchRounds()

	pipelines := 0
	if v, err := strconv.Atoi(os.Getenv("BENCH_PIPELINES")); err == nil {
		pipelines = v
	}
	// One limit for both, far above the load on any key (12 800 keys share
	// at most ~10 calls/s each), so every call is admitted, and low enough
	// that both record every call: at 1e9/s redis_rate's increment (1e-9 s)
	// is below the precision of its float seconds (~6e-8 s in 2026), its
	// TAT never moves and it skips its SET, doing less work than under any
	// limit that limits. BENCH_RATE overrides it (burst = rate).
	rate := 100_000
	if v, err := strconv.Atoi(os.Getenv("BENCH_RATE")); err == nil && v > 0 {
		rate = v
	}
	ours := newTestLimiter(t, Config{RedisURL: srv.URL(), Rate: float64(rate), Burst: rate, RedisTimeout: time.Second, Pipelines: pipelines})
	// redis_rate at its best: a pool as large as the callers (the go-redis
	// default, 10 per CPU, would make callers queue for connections).
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: benchCallers})
	t.Cleanup(func() { rdb.Close() })
	theirs := redis_rate.NewLimiter(rdb)
	// And as most users run it: go-redis defaults (pool of 10 per CPU).
	rdbDefault := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdbDefault.Close() })
	theirsDefault := redis_rate.NewLimiter(rdbDefault)
	bigLimit := redis_rate.Limit{Rate: rate, Burst: rate, Period: time.Second}

	distinct := func(g, i int) string { return "c" + strconv.Itoa(g) + "-" + strconv.Itoa(i%200) }
	oursAllow := func(l *testLimiter) func(ctx context.Context, key string) (bool, error) {
		return func(ctx context.Context, key string) (bool, error) {
			dec, err := l.Allow(ctx, key, 1)
			return dec.Allowed, err
		}
	}
	theirsAllow := func(rr *redis_rate.Limiter, lim redis_rate.Limit) func(ctx context.Context, key string) (bool, error) {
		return func(ctx context.Context, key string) (bool, error) {
			r, err := rr.Allow(ctx, key, lim)
			if err != nil {
				return false, err
			}
			return r.Allowed > 0, nil
		}
	}

	if os.Getenv("BENCH_PROFILE_OURS") != "" {
		// Only this limiter on distinct keys, for go test -cpuprofile.
		r := runCallers("distinct keys: this limiter", srv, d, distinct, oursAllow(ours))
		fmt.Printf("%.0f decisions/s, redis-server CPU %.0f%%, client CPU %.0f%%\n", r.perSec(), 100*r.redisCPU/r.elapsed.Seconds(), 100*r.procCPU/r.elapsed.Seconds())
		return
	}
	var results []benchResult
	// Warm both (connections, script cache).
	runCallers("warm-up", srv, 300*time.Millisecond, distinct, oursAllow(ours))
	runCallers("warm-up", srv, 300*time.Millisecond, distinct, theirsAllow(theirs, bigLimit))
	runCallers("warm-up", srv, 300*time.Millisecond, distinct, theirsAllow(theirsDefault, bigLimit))
	for r := 0; r < rounds; r++ {
		results = append(results,
			runCallers("distinct keys: this limiter", srv, d, distinct, oursAllow(ours)),
			runCallers("distinct keys: redis_rate v10, pool 64", srv, d, distinct, theirsAllow(theirs, bigLimit)),
			runCallers("distinct keys: redis_rate v10, default pool", srv, d, distinct, theirsAllow(theirsDefault, bigLimit)))
	}

	hot := newTestLimiter(t, Config{RedisURL: srv.URL(), Rate: 100, Burst: 100, RedisTimeout: time.Second, Pipelines: pipelines})
	hotKey := func(g, i int) string { return "hot" }
	results = append(results,
		runCallers("one hot key 100/s: this limiter", srv, d, hotKey, oursAllow(hot)),
		runCallers("one hot key 100/s: redis_rate v10", srv, d, func(g, i int) string { return "hot2" }, theirsAllow(theirs, redis_rate.PerSecond(100))))

	var sumOurs, sumTheirs, sumDefault float64
	fmt.Printf("\nGOMAXPROCS=%d, %d callers, %s per run, redis-server %s\n\n", runtime.GOMAXPROCS(0), benchCallers, d, redisVersion(srv))
	fmt.Println("| run | decisions/s | p50 | p99 | admitted | errors | Redis script calls/s | bucket writes/s | redis-server CPU | client CPU | redis-server µs/decision | client µs/decision |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range results {
		fmt.Printf("| %s | %.0f | %s | %s | %d | %d | %.0f | %.0f | %.0f%% | %.0f%% | %.2f | %.2f |\n", r.name, r.perSec(), r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond),
			r.allowed, r.errs, float64(r.scriptOps)/r.elapsed.Seconds(), float64(r.writes)/r.elapsed.Seconds(), 100*r.redisCPU/r.elapsed.Seconds(), 100*r.procCPU/r.elapsed.Seconds(),
			1e6*r.redisCPU/float64(r.calls), 1e6*r.procCPU/float64(r.calls))
		switch r.name {
		case "distinct keys: this limiter":
			sumOurs += r.perSec()
		case "distinct keys: redis_rate v10, pool 64":
			sumTheirs += r.perSec()
		case "distinct keys: redis_rate v10, default pool":
			sumDefault += r.perSec()
		}
		if r.errs != 0 {
			t.Errorf("%s: %d errors", r.name, r.errs)
		}
		// A limiter that admits a call without recording it is not doing
		// the work being compared.
		if strings.HasPrefix(r.name, "distinct keys") && r.writes < r.allowed*99/100 {
			t.Errorf("%s: %d calls admitted but only %d bucket writes in Redis", r.name, r.allowed, r.writes)
		}
	}
	ratio := sumOurs / max(sumTheirs, sumDefault)
	fmt.Printf("\nthroughput ratio, distinct keys, %d rounds: %.2fx redis_rate with a pool of 64, %.2fx with the default pool\n",
		rounds, sumOurs/sumTheirs, sumOurs/sumDefault)
	// The 2x target is reported, not enforced: on a shared 2-core machine the
	// ratio swings with the neighbours' load (see benchmarks/ratelimit.md).
	// BENCH_ENFORCE=1 turns a miss into a failure.
	if ratio < 2 {
		fmt.Printf("target >= 2x redis_rate's throughput NOT met: %.2fx\n", ratio)
		if os.Getenv("BENCH_ENFORCE") != "" {
			t.Errorf("throughput %.2fx redis_rate's best, target >= 2x", ratio)
		}
	}
	if ours.FallbackActive() {
		t.Errorf("the limiter fell back during the benchmark: %s", ours.logs.String())
	}
}

func redisVersion(srv *redistest.Server) string {
	info, err := srv.Do("INFO", "server")
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "redis_version:"); ok {
			return v
		}
	}
	return "?"
}

// TestClusterThroughput: 64 callers on distinct keys against a 3-master
// Cluster on loopback (all on the same machine as the client), every call a
// Redis decision through its master's route.
func TestClusterThroughput(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rl := newTestLimiter(t, Config{RedisURL: cl.URL(), Rate: 100_000, Burst: 100_000, RedisTimeout: time.Second})
	d := envDuration("BENCH_DURATION", 4*time.Second)
	distinct := func(g, i int) string { return "c" + strconv.Itoa(g) + "-" + strconv.Itoa(i%200) }
	for round := 0; round < benchRounds(); round++ {
		var calls, errs atomic.Int64
		var wg sync.WaitGroup
		end := time.Now().Add(d)
		for g := 0; g < benchCallers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; time.Now().Before(end); i++ {
					if _, err := rl.Allow(context.Background(), distinct(g, i), 1); err != nil {
						errs.Add(1)
					}
					calls.Add(1)
				}
			}()
		}
		wg.Wait()
		fmt.Printf("round %d: %.0f decisions/s, %d errors, fallback %v\n", round+1, float64(calls.Load())/d.Seconds(), errs.Load(), rl.FallbackActive())
		if errs.Load() != 0 || rl.FallbackActive() {
			t.Errorf("round %d: %d errors, fallback %v", round+1, errs.Load(), rl.FallbackActive())
		}
	}
}
