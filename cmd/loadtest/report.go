package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// labelWidth aligns the summary's values (main prints its file lines with
// the same width).
const labelWidth = 21

// PrintSummary writes the human-readable summary.
func PrintSummary(w io.Writer, o Options, s Summary) {
	line := func(label, format string, args ...any) {
		fmt.Fprintf(w, "%-*s%s\n", labelWidth, label, fmt.Sprintf(format, args...))
	}
	line("mode", "%s", describe(o))
	line("requests", "%d in %s (%.1f/s sent), last response %s after the last request",
		s.Requests, round(s.Duration), s.Rate, round(s.Wait))
	line("throughput", "%.1f successful/s", s.Throughput)
	line("success", "%.2f%% (2xx/3xx of all requests)", 100*s.Success)
	l := s.Latencies
	line("latency", "mean %s  p50 %s  p90 %s  p99 %s  max %s",
		round(l.Mean), round(l.P50), round(l.P90), round(l.P99), round(l.Max))
	var codes []string
	for _, c := range s.SortedCodes() {
		label := strconv.Itoa(c)
		if c == 0 {
			label = "0 (no response)"
		}
		codes = append(codes, fmt.Sprintf("%s: %d", label, s.StatusCodes[c]))
	}
	line("status codes", "%s", strings.Join(codes, "  "))
	line("transport errors", "%d", s.TransportErrorCount())
	for _, k := range Kinds {
		if n := s.TransportErrors[k]; n > 0 {
			line("  "+k, "%d  e.g. %s", n, s.Examples[k])
		} else {
			line("  "+k, "0")
		}
	}
	if st := s.Stale; st.Total() > 0 {
		// Connections closed after a short idle are a server dropping
		// requests (a crash, a handler that hangs up), not a keep-alive
		// timeout, which no server sets that low.
		hint := ""
		if st.MinIdle >= 100*time.Millisecond {
			hint = fmt.Sprintf(": the server (or a proxy) closes idle connections after %s or less", round(st.MinIdle))
		}
		line("stale connections", "%d kept-alive connections were found closed when reused (%d requests replayed by net/http, %d failed), idle %s to %s%s",
			st.Total(), st.Replayed, st.Failed, round(st.MinIdle), round(st.MaxIdle), hint)
	} else {
		line("stale connections", "0")
	}
}

// round keeps three significant digits, enough for a latency report.
func round(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}

// jsonSummary is the -json form: durations in seconds, codes as strings.
type jsonSummary struct {
	Mode            string             `json:"mode"`
	Requests        uint64             `json:"requests"`
	DurationSeconds float64            `json:"duration_seconds"`
	WaitSeconds     float64            `json:"wait_seconds"`
	Rate            float64            `json:"rate"`
	Throughput      float64            `json:"throughput"`
	Success         float64            `json:"success_ratio"`
	LatencySeconds  map[string]float64 `json:"latency_seconds"`
	StatusCodes     map[string]uint64  `json:"status_codes"`
	TransportErrors map[string]uint64  `json:"transport_errors"`
	Examples        map[string]string  `json:"transport_error_examples,omitempty"`
	Stale           jsonStale          `json:"stale_connections"`
}

// jsonStale is StaleConns for -json.
type jsonStale struct {
	Replayed       uint64  `json:"replayed"`
	Failed         uint64  `json:"failed"`
	MinIdleSeconds float64 `json:"min_idle_seconds"`
	MaxIdleSeconds float64 `json:"max_idle_seconds"`
}

// JSONSummary converts s for -json.
func JSONSummary(o Options, s Summary) any {
	codes := make(map[string]uint64, len(s.StatusCodes))
	for c, n := range s.StatusCodes {
		codes[strconv.Itoa(c)] = n
	}
	kinds := make(map[string]uint64, len(Kinds))
	for _, k := range Kinds {
		kinds[k] = s.TransportErrors[k]
	}
	return jsonSummary{
		Mode:            describe(o),
		Requests:        s.Requests,
		DurationSeconds: s.Duration.Seconds(),
		WaitSeconds:     s.Wait.Seconds(),
		Rate:            s.Rate,
		Throughput:      s.Throughput,
		Success:         s.Success,
		LatencySeconds: map[string]float64{
			"mean": s.Latencies.Mean.Seconds(),
			"p50":  s.Latencies.P50.Seconds(),
			"p90":  s.Latencies.P90.Seconds(),
			"p99":  s.Latencies.P99.Seconds(),
			"max":  s.Latencies.Max.Seconds(),
		},
		StatusCodes:     codes,
		TransportErrors: kinds,
		Examples:        s.Examples,
		Stale: jsonStale{
			Replayed:       s.Stale.Replayed,
			Failed:         s.Stale.Failed,
			MinIdleSeconds: s.Stale.MinIdle.Seconds(),
			MaxIdleSeconds: s.Stale.MaxIdle.Seconds(),
		},
	}
}
