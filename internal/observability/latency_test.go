package observability

import (
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A request cut at a timeout takes the timeout and a little more: the
// latency histogram has an edge just above each timeout it is given, so
// such requests are bracketed by (timeout, 1.1 × timeout], not by the next
// default edge.
func TestLatencyBucketAboveTimeout(t *testing.T) {
	for _, c := range []struct {
		timeouts []time.Duration
		want     []float64 // edges added to latencyBuckets
	}{
		{nil, nil},
		{[]time.Duration{time.Second}, []float64{1.1}},
		{[]time.Duration{200 * time.Millisecond}, []float64{0.22}},
		{[]time.Duration{time.Millisecond}, []float64{0.0011}},
		{[]time.Duration{2300 * time.Millisecond}, nil}, // 2.5 is within 10 % above
		{[]time.Duration{time.Second, time.Second, 0}, []float64{1.1}},
	} {
		got := latencyEdges(c.timeouts...)
		var added []float64
		for _, e := range got {
			if !slices.Contains(latencyBuckets, e) {
				added = append(added, e)
			}
		}
		if !slices.Equal(added, c.want) || !slices.IsSorted(got) || len(got) != len(latencyBuckets)+len(c.want) {
			t.Errorf("timeouts %v: buckets %v, want %v added to %v", c.timeouts, got, c.want, latencyBuckets)
		}
	}

	// Through the histogram: requests cut at a 1 s timeout fall in le=1.1.
	reg := prometheus.NewRegistry()
	m := NewHTTPMetrics(reg, time.Second)
	h := m.duration.WithLabelValues("GET", "/api/v1/items/:id")
	for range 98 {
		h.Observe(0.004)
	}
	h.Observe(1.003)
	h.Observe(1.012)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[float64]uint64{}
	for _, mf := range mfs {
		if mf.GetName() == "http_server_request_duration_seconds" {
			for _, b := range mf.GetMetric()[0].GetHistogram().GetBucket() {
				counts[b.GetUpperBound()] = b.GetCumulativeCount()
			}
		}
	}
	if counts[1] != 98 || counts[1.1] != 100 {
		t.Errorf("cumulative counts le=1: %d, le=1.1: %d; want 98 and 100 (buckets %v)", counts[1], counts[1.1], counts)
	}
}
