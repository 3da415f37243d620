// Package items is the dependency behind /api/v1/items/:id: the Source
// interface the handler calls, and the built-in simulated dependency whose
// latency and error rate can be changed at run time (PUT /debug/faults).
package items

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// Item is what /api/v1/items/:id returns.
type Item struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Price    int64  `json:"price_cents"`
	Source   string `json:"source"`
	Degraded bool   `json:"degraded"`
}

// Source fetches items. Implementations honour ctx cancellation.
type Source interface {
	Get(ctx context.Context, id string) (Item, error)
}

// ErrNotFound is returned when the dependency has no such item. It is a
// caller error, not a dependency failure.
var ErrNotFound = errors.New("item not found")

// ErrInjected is the failure the simulated dependency returns at its
// configured error rate.
var ErrInjected = errors.New("simulated dependency failure")

// Faults are the simulated dependency's run-time knobs.
type Faults struct {
	Latency   time.Duration `json:"latency"`
	ErrorRate float64       `json:"error_rate"`
}

// Simulated is an in-process dependency with injectable latency and errors.
type Simulated struct {
	mu     sync.RWMutex
	faults Faults
}

// NewSimulated returns a healthy simulated dependency.
func NewSimulated() *Simulated { return &Simulated{} }

// SetFaults replaces the current faults.
func (s *Simulated) SetFaults(f Faults) error {
	if f.Latency < 0 {
		return fmt.Errorf("latency must be >= 0, got %s", f.Latency)
	}
	if f.ErrorRate < 0 || f.ErrorRate > 1 {
		return fmt.Errorf("error_rate must be within [0,1], got %v", f.ErrorRate)
	}
	s.mu.Lock()
	s.faults = f
	s.mu.Unlock()
	return nil
}

// Faults returns the current faults.
func (s *Simulated) Faults() Faults {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.faults
}

// Get waits the configured latency (or until ctx is done), fails at the
// configured rate, and otherwise returns a deterministic item.
func (s *Simulated) Get(ctx context.Context, id string) (Item, error) {
	f := s.Faults()
	if f.Latency > 0 {
		t := time.NewTimer(f.Latency)
		select {
		case <-ctx.Done():
			t.Stop()
			return Item{}, ctx.Err()
		case <-t.C:
		}
	}
	if f.ErrorRate > 0 && rand.Float64() < f.ErrorRate {
		return Item{}, ErrInjected
	}
	var sum int64
	for _, r := range id {
		sum = sum*31 + int64(r)
	}
	if sum < 0 {
		sum = -sum
	}
	return Item{ID: id, Name: "item " + id, Price: 100 + sum%9900, Source: "simulated"}, nil
}

// Handler serves the simulated dependency over HTTP, as a real one would
// be reached: GET /items/{id} answers the item as JSON, 503 at the
// configured error rate (after the configured latency), and nothing to a
// caller that went away meanwhile. The service serves it on loopback when
// DOWNSTREAM_URL is unset, so its default calls go through the resilient
// client, its pool, timeouts and retries, like calls to a real dependency.
func (s *Simulated) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		it, err := s.Get(r.Context(), r.PathValue("id"))
		switch {
		case r.Context().Err() != nil:
			return // the caller gave up (its attempt timeout): nobody reads an answer
		case errors.Is(err, ErrInjected):
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(it)
	})
	return mux
}
