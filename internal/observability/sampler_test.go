package observability

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// TestRootRuleMatchesSampler holds the middleware's root-request rule to
// the SDK sampler it stands for: for every sampler and ratio the
// configuration accepts, a root span (no parent) is sampled by the rule
// exactly when the SDK's ShouldSample says RecordAndSample, on random trace
// ids and on the ids at the ratio's bound.
func TestRootRuleMatchesSampler(t *testing.T) {
	args := []string{"", "0", "1e-12", "0.01", "0.25", "0.5", "0.999999", "1"}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, smp := range samplers {
		name := smp.name
		for _, arg := range args {
			sampler, rule, desc, err := parseSampler(name, arg)
			if err != nil {
				t.Fatalf("%s %q: %v", name, arg, err)
			}
			ids := make([]trace.TraceID, 0, 20010)
			for range 20000 {
				var tid trace.TraceID
				binary.NativeEndian.PutUint64(tid[:8], rng.Uint64())
				binary.NativeEndian.PutUint64(tid[8:], rng.Uint64())
				ids = append(ids, tid)
			}
			// The ids whose low half, shifted right by one, sits just
			// below, at and just above the bound, and the extremes.
			for _, x := range []uint64{rule.bound - 1, rule.bound, rule.bound + 1, 0, 1<<63 - 1} {
				for _, low := range []uint64{x << 1, x<<1 | 1} {
					var tid trace.TraceID
					tid[0] = 1
					binary.BigEndian.PutUint64(tid[8:], low)
					ids = append(ids, tid)
				}
			}
			sampledN := 0
			for _, tid := range ids {
				want := sampler.ShouldSample(sdktrace.SamplingParameters{
					ParentContext: context.Background(), TraceID: tid, Name: "GET", Kind: trace.SpanKindServer,
				}).Decision == sdktrace.RecordAndSample
				if got := rule.sampled(tid); got != want {
					t.Fatalf("%s: trace id %s: rule says sampled=%v, the SDK sampler %v", desc, tid, got, want)
				}
				if want {
					sampledN++
				}
			}
			t.Logf("%s: %d of %d sampled", desc, sampledN, len(ids))
		}
	}
}
