package ratelimit

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/hardenedgo/ginservice/internal/testkit/redistest"
)

// Decision cost of each backend. The comparison with redis_rate (64
// callers, decisions/s, p50/p99) is in redisrate_bench_test.go behind the
// redisratebench tag; figures in benchmarks/ratelimit.md.

func benchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "client-" + strconv.Itoa(i)
	}
	return keys
}

func BenchmarkLocalAllow(b *testing.B) {
	rl := newTestLimiter(b, Config{Rate: 1e9, Burst: 1_000_000_000})
	keys := benchKeys(10_000)
	var n atomic.Uint64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, err := rl.Allow(ctx, keys[n.Add(1)%uint64(len(keys))], 1); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkRedisAllow(b *testing.B) {
	srv := redistest.Start(b)
	rl := newTestLimiter(b, Config{RedisURL: srv.URL(), Rate: 1e9, Burst: 1_000_000_000, RedisTimeout: time.Second})
	keys := benchKeys(10_000)
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		ctx := context.Background()
		for i := 0; b.Loop(); i++ {
			if _, err := rl.Allow(ctx, keys[i%len(keys)], 1); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("64-callers", func(b *testing.B) {
		var n atomic.Uint64
		b.ReportAllocs()
		b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			ctx := context.Background()
			for pb.Next() {
				if _, err := rl.Allow(ctx, keys[n.Add(1)%uint64(len(keys))], 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	// One client far over its limit: answered from the denied-key cache.
	b.Run("flooding-key", func(b *testing.B) {
		hot := newTestLimiter(b, Config{RedisURL: srv.URL(), Rate: 10, Burst: 10, RedisTimeout: time.Second})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			ctx := context.Background()
			for pb.Next() {
				if _, err := hot.Allow(ctx, "flooder", 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// BenchmarkMiddleware is the cost the limiter adds to a Gin request (local
// backend), against the same route without it.
func BenchmarkMiddleware(b *testing.B) {
	gin.SetMode(gin.ReleaseMode)
	rl := newTestLimiter(b, Config{Rate: 1e9, Burst: 1_000_000_000})
	for _, tc := range []struct {
		name string
		mw   []gin.HandlerFunc
	}{
		{"bare", nil},
		{"limited", []gin.HandlerFunc{Middleware(rl, MiddlewareOptions{})}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := gin.New()
			e.GET("/api/v1/ping", append(tc.mw, func(c *gin.Context) { c.String(http.StatusOK, "pong") })...)
			req := httptest.NewRequest(http.MethodGet, "/api/v1/ping", nil)
			req.RemoteAddr = "192.0.2.1:1234"
			b.ReportAllocs()
			for b.Loop() {
				w := httptest.NewRecorder()
				e.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatal(w.Code)
				}
			}
		})
	}
}
