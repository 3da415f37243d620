package observability

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// NewRegistry returns the service's dedicated registry with the Go and
// process collectors and service_build_info. Nothing is registered in the
// global default registry, so tests can run many servers in one process.
func NewRegistry(version, commit string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
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
