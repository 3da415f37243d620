// Package health tracks liveness and readiness: the process lifecycle
// (starting, ready, shutting down) and the state of each dependency check.
package health

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
)

// Status of one dependency as reported by /readyz.
type Status string

const (
	StatusOK       Status = "ok"
	StatusDegraded Status = "degraded" // working on a fallback; still ready
	StatusDisabled Status = "disabled" // not configured
	StatusDown     Status = "down"     // not ready
)

// Check reports the current state of one dependency. It must be cheap and
// must not block: readiness is probed often, so checks report state that is
// kept up to date elsewhere (e.g. by a background prober).
type Check func(ctx context.Context) Status

type phase int32

const (
	phaseStarting phase = iota
	phaseReady
	phaseShuttingDown
)

// Readiness is the state behind /readyz.
type Readiness struct {
	phase  atomic.Int32
	mu     sync.RWMutex
	checks map[string]Check
}

// NewReadiness returns a Readiness in the starting phase (not ready).
func NewReadiness() *Readiness {
	return &Readiness{checks: map[string]Check{}}
}

// Register adds a named dependency check.
func (r *Readiness) Register(name string, c Check) {
	r.mu.Lock()
	r.checks[name] = c
	r.mu.Unlock()
}

// SetReady marks start-up complete.
func (r *Readiness) SetReady() { r.phase.CompareAndSwap(int32(phaseStarting), int32(phaseReady)) }

// SetShuttingDown makes readiness fail from now on; it never goes back.
func (r *Readiness) SetShuttingDown() { r.phase.Store(int32(phaseShuttingDown)) }

// ShuttingDown reports whether shutdown has begun.
func (r *Readiness) ShuttingDown() bool { return phase(r.phase.Load()) == phaseShuttingDown }

// Report is the /readyz body.
type Report struct {
	Status string            `json:"status"` // ok | degraded | starting | shutting_down | down
	Checks map[string]Status `json:"checks"`
}

// Evaluate runs every check and says whether the instance is ready.
func (r *Readiness) Evaluate(ctx context.Context) (bool, Report) {
	r.mu.RLock()
	names := make([]string, 0, len(r.checks))
	for n := range r.checks {
		names = append(names, n)
	}
	sort.Strings(names)
	rep := Report{Status: "ok", Checks: make(map[string]Status, len(names))}
	ready := true
	for _, n := range names {
		s := r.checks[n](ctx)
		rep.Checks[n] = s
		switch s {
		case StatusDegraded:
			if rep.Status == "ok" {
				rep.Status = "degraded"
			}
		case StatusDown:
			rep.Status = "down"
			ready = false
		}
	}
	r.mu.RUnlock()
	switch phase(r.phase.Load()) {
	case phaseStarting:
		return false, Report{Status: "starting", Checks: rep.Checks}
	case phaseShuttingDown:
		return false, Report{Status: "shutting_down", Checks: rep.Checks}
	}
	return ready, rep
}
