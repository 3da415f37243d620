package server

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hardenedgo/ginservice/internal/items"
	"github.com/hardenedgo/ginservice/internal/problem"
)

// AdminDeps is what the admin listener serves.
type AdminDeps struct {
	Logger   *slog.Logger
	Gatherer prometheus.Gatherer
	// Registerer takes the /metrics handler's own metrics
	// (promhttp_metric_handler_requests_total, _requests_in_flight and
	// _errors_total); nil: none.
	Registerer prometheus.Registerer
	Pprof      bool
	// Faults is the simulated dependency; nil when DOWNSTREAM_URL is set
	// (then PUT /debug/faults answers 409).
	Faults *items.Simulated
}

// MaxConcurrentScrapes is how many /metrics requests are served at once;
// more get 503 instead of piling up (a scrape loop, a misconfigured pair of
// Prometheus servers).
const MaxConcurrentScrapes = 4

// metricsHandler serves d.Gatherer in the Prometheus text or OpenMetrics
// format (exemplars are only exposed in OpenMetrics). A collector that fails,
// one of the service's or one a team adds, does not blank out every other
// series in the middle of an incident: what could be gathered is served,
// and the error is logged and counted in
// promhttp_metric_handler_errors_total{cause="gathering"}.
func metricsHandler(d AdminDeps) http.Handler {
	h := promhttp.HandlerFor(d.Gatherer, promhttp.HandlerOpts{
		EnableOpenMetrics:   true,
		ErrorLog:            slog.NewLogLogger(d.Logger.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            d.Registerer,
		MaxRequestsInFlight: MaxConcurrentScrapes,
	})
	if d.Registerer == nil {
		return h
	}
	return promhttp.InstrumentMetricHandler(d.Registerer, h)
}

// NewAdmin returns the admin handler on its own mux: it is never exposed on
// the public port, and it is not traced, logged or rate limited.
func NewAdmin(d AdminDeps) http.Handler {
	mux := http.NewServeMux()
	// Liveness, as on the public port: 200 while the process runs. The
	// kubelet probes it here, where a full public accept queue (overload)
	// cannot make it fail and restart a pod that is only busy.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	mux.Handle("GET /metrics", metricsHandler(d))
	if d.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /debug/faults", func(w http.ResponseWriter, r *http.Request) {
		if d.Faults == nil {
			problem.Write(w, http.StatusConflict, "DOWNSTREAM_URL is set: there is no simulated dependency", r.URL.Path, "")
			return
		}
		writeFaults(w, d.Faults.Faults())
	})
	mux.HandleFunc("PUT /debug/faults", func(w http.ResponseWriter, r *http.Request) {
		if d.Faults == nil {
			problem.Write(w, http.StatusConflict, "DOWNSTREAM_URL is set: there is no simulated dependency", r.URL.Path, "")
			return
		}
		f, err := decodeFaults(http.MaxBytesReader(w, r.Body, 4096))
		if err == nil {
			err = d.Faults.SetFaults(f)
		}
		if err != nil {
			problem.Write(w, http.StatusBadRequest, err.Error(), r.URL.Path, "")
			return
		}
		d.Logger.Warn("simulated dependency faults changed", slog.String("latency", f.Latency.String()), slog.Float64("error_rate", f.ErrorRate))
		writeFaults(w, f)
	})
	// The catch-all below matches every method, so the mux's own 405 never
	// happens: each route's other methods get a 405 problem here.
	methods := map[string]string{"/healthz": "GET, HEAD", "/metrics": "GET, HEAD", "/debug/faults": "GET, HEAD, PUT"}
	if d.Pprof {
		methods["/debug/pprof/"] = "GET, HEAD"
	}
	for path, allow := range methods {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			problem.Write(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed here", r.URL.Path, "")
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		problem.Write(w, http.StatusNotFound, "no such admin route", r.URL.Path, "")
	})
	return mux
}

type faultsJSON struct {
	Latency   string  `json:"latency"`
	ErrorRate float64 `json:"error_rate"`
}

// decodeFaults reads {"latency":"200ms","error_rate":0.5}; both optional.
func decodeFaults(r io.Reader) (items.Faults, error) {
	var in faultsJSON
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return items.Faults{}, fmt.Errorf("want {\"latency\":\"200ms\",\"error_rate\":0.5}: %w", err)
	}
	var f items.Faults
	if in.Latency != "" {
		d, err := time.ParseDuration(in.Latency)
		if err != nil {
			return items.Faults{}, fmt.Errorf("latency: %w", err)
		}
		f.Latency = d
	}
	f.ErrorRate = in.ErrorRate
	return f, nil
}

func writeFaults(w http.ResponseWriter, f items.Faults) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(faultsJSON{Latency: f.Latency.String(), ErrorRate: f.ErrorRate})
}
