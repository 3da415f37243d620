package observability

import (
	"regexp"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// runtimeMetrics are the runtime/metrics the Go collector serves on top of
// its defaults: how long runnable goroutines wait for the scheduler
// (go_sched_latencies_seconds: rises when the process has more work than
// its CPUs) and the garbage collector's stop-the-world pauses
// (go_sched_pauses_total_gc_seconds): 20 series. CFS throttling
// hardly shows in the first (a throttled process's goroutines are not
// runnable until it runs again); the kubelet's cAdvisor counts that.
var runtimeMetrics = collectors.GoRuntimeMetricsRule{
	Matcher: regexp.MustCompile(`^/sched/(latencies|pauses/total/gc):seconds$`),
}

// NewRegistry returns the service's dedicated registry with the Go and
// process collectors and service_build_info. Nothing is registered in the
// global default registry, so tests can run many servers in one process.
func NewRegistry(version, commit string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(runtimeMetrics)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	bi := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "service_build_info",
		Help: "Build information of the running binary; always 1.",
	}, []string{"version", "commit", "goversion"})
	bi.WithLabelValues(version, commit, runtime.Version()).Set(1)
	reg.MustRegister(bi)
	return reg
}

// LogDrops is log_lines_dropped_total: the lines b dropped because stdout
// was stalled. With b nil (LOG_FLUSH_INTERVAL=0: unbuffered logs, which
// block instead) it stays 0.
func LogDrops(b *BufferedWriter) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "log_lines_dropped_total",
		Help: "Log lines dropped because stdout did not keep up: the log queue full and a write unfinished after a second (a stalled log pipeline, or one slower than about 64 KB/s); the service keeps serving instead of blocking on its logs.",
	}, func() float64 {
		if b == nil {
			return 0
		}
		return float64(b.Dropped())
	})
}
