// Package resilience protects calls to dependencies: a circuit breaker with
// a bulkhead and fallbacks (hystrix-go, with its known defects neutralised),
// the degrading items source built on it, and a resilient outbound HTTP
// client (tuned transport, budgeted retries with full-jitter backoff).
package resilience

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hardenedgo/ginservice/internal/items"
)

// Breaker runs a call to a dependency under a circuit breaker.
//
// Contract, whatever the implementation:
//   - run gets a context that is cancelled when the call times out or the
//     caller goes away; it may outlive Do, so it must hand results back
//     through its return value or a channel, never through variables the
//     caller reads (Execute does that for you);
//   - fallback, when the call is not served by run, is called on the
//     caller's goroutine before Do returns, with the cause (ErrOpen,
//     ErrTimeout, ErrRejected, *PanicError or the failure); its error is
//     what Do returns;
//   - errors the classifier calls caller errors (not failures) are returned
//     as they are, without fallback, and do not count against the circuit;
//   - when the caller's context is done, Do returns ctx.Err() without
//     fallback: nobody is waiting for the answer.
type Breaker interface {
	Do(ctx context.Context, run func(ctx context.Context) error, fallback func(ctx context.Context, err error) error) error
}

// Causes handed to fallbacks. They do not name the library behind the
// Breaker, so callers keep working if it is replaced.
var (
	ErrOpen     = errors.New("circuit open")
	ErrTimeout  = errors.New("command timed out")
	ErrRejected = errors.New("bulkhead full")
)

// PanicError is a panic recovered inside a command. It counts as a failure.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic in command: %v", e.Value) }

// FallbackReason names why a fallback was served, for logs, metrics and
// spans: open, timeout, rejected, panic, or failure.
func FallbackReason(cause error) string {
	var pe *PanicError
	switch {
	case errors.Is(cause, ErrOpen):
		return "open"
	case errors.Is(cause, ErrTimeout):
		return "timeout"
	case errors.Is(cause, ErrRejected):
		return "rejected"
	case errors.As(cause, &pe):
		return "panic"
	default:
		return "failure"
	}
}

// IsFailure is the default error classifier: it says whether err means the
// dependency is unhealthy. Caller errors are not failures: a cancelled
// context, items.ErrNotFound, and any error that reports CallerError() true
// (items.StatusError does for 4xx other than 408 and 429). Counting them
// would let a client sending bad ids open the circuit for everybody
// (afex/hystrix-go#72).
func IsFailure(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, items.ErrNotFound) {
		return false
	}
	var ce interface{ CallerError() bool }
	if errors.As(err, &ce) && ce.CallerError() {
		return false
	}
	return true
}

// Execute runs a value-returning call through b. The value travels through
// a channel, so a run that finishes after its timeout cannot race with the
// caller reading the result (afex/hystrix-go#36, #37, #71). fallback may be
// nil: then the cause is returned as the error.
func Execute[T any](ctx context.Context, b Breaker, run func(ctx context.Context) (T, error), fallback func(ctx context.Context, cause error) (T, error)) (T, error) {
	var zero T
	// Capacity 1 and a single send: run never blocks, even when nobody reads.
	out := make(chan T, 1)
	wrapped := func(ctx context.Context) error {
		v, err := run(ctx)
		if err != nil {
			return err
		}
		out <- v
		return nil
	}
	// The fallback runs on this goroutine (Breaker contract), so plain
	// variables are safe here.
	var fbVal T
	fbUsed := false
	var fb func(ctx context.Context, cause error) error
	if fallback != nil {
		fb = func(ctx context.Context, cause error) error {
			v, err := fallback(ctx, cause)
			fbVal, fbUsed = v, true
			return err
		}
	}
	err := b.Do(ctx, wrapped, fb)
	if fbUsed {
		return fbVal, err
	}
	if err != nil {
		return zero, err
	}
	select {
	case v := <-out:
		return v, nil
	default:
		return zero, errors.New("resilience: breaker reported success without a result")
	}
}

// MaxBulkhead is the largest BREAKER_MAX_CONCURRENT: a bulkhead wider than
// this does not protect anything (the outbound client's default connection
// cap is 256).
const MaxBulkhead = 10000

// BreakerConfig holds one command's settings. They are applied once, when
// the breaker is built.
type BreakerConfig struct {
	Timeout       time.Duration // BREAKER_TIMEOUT: the work is cancelled after this
	MaxConcurrent int           // BREAKER_MAX_CONCURRENT: bulkhead size
	ErrorPercent  int           // BREAKER_ERROR_PERCENT: error rate that opens the circuit
	RequestVolume int           // BREAKER_REQUEST_VOLUME: requests in the 10s window before it may open
	SleepWindow   time.Duration // BREAKER_SLEEP_WINDOW: open time before one probe
}

// DefaultBreakerConfig returns the documented defaults.
func DefaultBreakerConfig() BreakerConfig {
	return BreakerConfig{
		Timeout:       time.Second,
		MaxConcurrent: 100,
		ErrorPercent:  50,
		RequestVolume: 20,
		SleepWindow:   5 * time.Second,
	}
}

// Validate reports the first bad setting, naming its environment variable.
func (c BreakerConfig) Validate() error {
	switch {
	case c.Timeout < time.Millisecond:
		// hystrix counts in whole milliseconds; 0 would silently mean its default.
		return fmt.Errorf("BREAKER_TIMEOUT: must be >= 1ms, got %s", c.Timeout)
	case c.MaxConcurrent < 1 || c.MaxConcurrent > MaxBulkhead:
		// hystrix fills a pool of 2x this many tickets at start: 1e8 took
		// 1.6 GB and 4 s before the first request, 1e9 more memory than a
		// pod has.
		return fmt.Errorf("BREAKER_MAX_CONCURRENT: must be within [1, %d], got %d", MaxBulkhead, c.MaxConcurrent)
	case c.ErrorPercent < 1 || c.ErrorPercent > 100:
		return fmt.Errorf("BREAKER_ERROR_PERCENT: must be within [1, 100], got %d", c.ErrorPercent)
	case c.RequestVolume < 1:
		return fmt.Errorf("BREAKER_REQUEST_VOLUME: must be >= 1, got %d", c.RequestVolume)
	case c.SleepWindow < time.Millisecond:
		return fmt.Errorf("BREAKER_SLEEP_WINDOW: must be >= 1ms, got %s", c.SleepWindow)
	}
	return nil
}
