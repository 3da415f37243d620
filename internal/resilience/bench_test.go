package resilience

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"testing"

	"github.com/afex/hystrix-go/hystrix"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hardenedgo/ginservice/internal/items"
)

// sink defeats dead-code elimination of the direct calls.
var sink error

//go:noinline
func work(context.Context) error { return nil }

// BenchmarkBreaker is the per-call overhead of the breaker around a call that
// does nothing: direct call, raw hystrix.DoC, our HystrixBreaker.Do, and
// Execute (Do plus the typed result channel).
func BenchmarkBreaker(b *testing.B) {
	ctx := context.Background()
	cfg := DefaultBreakerConfig()
	br, err := NewHystrixBreaker("bench", cfg, discardLogger(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	raw := fmt.Sprintf("bench-raw#%x", rand.Uint64())
	hystrix.ConfigureCommand(raw, hystrix.CommandConfig{Timeout: 1000, MaxConcurrentRequests: 200, RequestVolumeThreshold: 20, SleepWindow: 5000, ErrorPercentThreshold: 50})
	fb := func(context.Context, error) error { return nil }
	cases := []struct {
		name string
		call func() error
	}{
		{"direct", func() error { return work(ctx) }},
		{"hystrix.DoC", func() error { return hystrix.DoC(ctx, raw, work, fb) }},
		{"HystrixBreaker.Do", func() error { return br.Do(ctx, work, fb) }},
		{"Execute", func() error {
			_, err := Execute(ctx, br, func(ctx context.Context) (int, error) { return 1, work(ctx) }, nil)
			return err
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				sink = c.call()
			}
		})
		b.Run(c.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := c.call(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkItemSource is the items path without the network: the simulated
// dependency called directly and through ItemSource (breaker + fallback).
func BenchmarkItemSource(b *testing.B) {
	ctx := context.Background()
	sim := items.NewSimulated()
	reg := prometheus.NewRegistry()
	br, err := NewHystrixBreaker("items", DefaultBreakerConfig(), discardLogger(), reg)
	if err != nil {
		b.Fatal(err)
	}
	src, err := NewItemSource(sim, br, discardLogger(), reg)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		src  items.Source
	}{{"simulated-direct", sim}, {"simulated-via-ItemSource", src}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				it, err := c.src.Get(ctx, "42")
				if err != nil || it.Degraded {
					b.Fatalf("%+v, %v", it, err)
				}
			}
		})
	}
}

// BenchmarkHTTPItem is one item fetched from a real downstream on loopback:
// with a plain http.Client, with the resilient Client, and through the whole
// ItemSource path (breaker + resilient client).
func BenchmarkHTTPItem(b *testing.B) {
	ctx := context.Background()
	ds := newDownstream(b, 0)
	reg := prometheus.NewRegistry()
	plainTr := http.DefaultTransport.(*http.Transport).Clone()
	plainTr.MaxIdleConnsPerHost = 128
	b.Cleanup(plainTr.CloseIdleConnections)
	plain, err := items.NewHTTPSource(ds.URL(), &http.Client{Transport: plainTr})
	if err != nil {
		b.Fatal(err)
	}
	resilient, err := items.NewHTTPSource(ds.URL(), newTestClient(b, DefaultClientConfig(), reg))
	if err != nil {
		b.Fatal(err)
	}
	br, err := NewHystrixBreaker("items", DefaultBreakerConfig(), discardLogger(), reg)
	if err != nil {
		b.Fatal(err)
	}
	full, err := NewItemSource(resilient, br, discardLogger(), reg)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		src  items.Source
	}{{"direct-http.Client", plain}, {"resilient-Client", resilient}, {"ItemSource+breaker+resilient-Client", full}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				it, err := c.src.Get(ctx, "42")
				if err != nil || it.Degraded {
					b.Fatalf("%+v, %v", it, err)
				}
			}
		})
	}
}
