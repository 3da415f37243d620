package resilience

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hardenedgo/ginservice/internal/items"
)

func TestBreakerConfigValidate(t *testing.T) {
	ok := DefaultBreakerConfig()
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	tests := []struct {
		name    string
		mutate  func(*BreakerConfig)
		wantVar string
	}{
		{"zero timeout", func(c *BreakerConfig) { c.Timeout = 0 }, "BREAKER_TIMEOUT"},
		{"sub-millisecond timeout", func(c *BreakerConfig) { c.Timeout = time.Microsecond }, "BREAKER_TIMEOUT"},
		{"no concurrency", func(c *BreakerConfig) { c.MaxConcurrent = 0 }, "BREAKER_MAX_CONCURRENT"},
		{"concurrency past the bound", func(c *BreakerConfig) { c.MaxConcurrent = MaxBulkhead + 1 }, "BREAKER_MAX_CONCURRENT"},
		{"error percent 0", func(c *BreakerConfig) { c.ErrorPercent = 0 }, "BREAKER_ERROR_PERCENT"},
		{"error percent 101", func(c *BreakerConfig) { c.ErrorPercent = 101 }, "BREAKER_ERROR_PERCENT"},
		{"no volume", func(c *BreakerConfig) { c.RequestVolume = 0 }, "BREAKER_REQUEST_VOLUME"},
		{"negative sleep", func(c *BreakerConfig) { c.SleepWindow = -time.Second }, "BREAKER_SLEEP_WINDOW"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultBreakerConfig()
			tt.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantVar+":") {
				t.Fatalf("Validate() = %v, want an error naming %s", err, tt.wantVar)
			}
			if _, err := NewHystrixBreaker("x", c, discardLogger(), prometheus.NewRegistry()); err == nil {
				t.Fatal("NewHystrixBreaker accepted an invalid config")
			}
		})
	}
}

func newTestBreaker(t testing.TB, cfg BreakerConfig, reg prometheus.Registerer) *HystrixBreaker {
	t.Helper()
	b, err := NewHystrixBreaker("items", cfg, discardLogger(), reg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The circuit opens after the configured volume at the error threshold; while
// open the downstream gets nothing; after the sleep window exactly one probe
// goes through; a healthy probe closes it.
func TestBreakerOpensProbesAndCloses(t *testing.T) {
	t.Parallel()
	const volume = 5
	bcfg := BreakerConfig{Timeout: 500 * time.Millisecond, MaxConcurrent: 20, ErrorPercent: 50, RequestVolume: volume, SleepWindow: 300 * time.Millisecond}
	s := newStack(t, bcfg, testClientConfig(), discardLogger())
	ctx := ctxTimeout(t, 30*time.Second)
	open := func() float64 { return metric(t, s.reg, "breaker_open", map[string]string{"command": "items"}) }

	get := func() items.Item {
		t.Helper()
		it, err := s.src.Get(ctx, "42")
		if err != nil {
			t.Fatalf("Get: %v (want the fallback, never an error)", err)
		}
		return it
	}

	if it := get(); it.Degraded || it.Name != "item 42" {
		t.Fatalf("healthy downstream: got %+v", it)
	}
	s.ds.setMode(mode{kind: modeFailing})
	opened := false
	for range 200 {
		before := s.ds.hits.Load()
		if it := get(); !it.Degraded || it.Source != "fallback" || it.ID != "42" {
			t.Fatalf("failing downstream: got %+v, want the degraded fallback", it)
		}
		if s.ds.hits.Load() == before {
			opened = true
			break
		}
		time.Sleep(2 * time.Millisecond) // hystrix counts asynchronously
	}
	if !opened {
		t.Fatal("circuit never opened")
	}
	// The healthy first call counts too: volume requests, >= 50% failed.
	if n := s.ds.hits.Load(); n < volume {
		t.Fatalf("circuit opened after %d calls, want >= request volume %d", n, volume)
	}
	if open() != 1 || !s.br.Open() {
		t.Fatalf("breaker_open = %v, want 1", open())
	}

	// Open: nothing reaches the downstream, every caller gets the fallback.
	frozen := s.ds.hits.Load()
	for range 20 {
		if it := get(); !it.Degraded {
			t.Fatalf("open circuit served %+v", it)
		}
	}
	if got := s.ds.hits.Load(); got != frozen {
		t.Fatalf("open circuit let %d calls through", got-frozen)
	}
	eventually(t, 2*time.Second, func() bool { return s.event(t, "short_circuited") >= 20 }, "short_circuited >= 20")
	if got := metric(t, s.reg, "items_fallbacks_total", map[string]string{"reason": "open"}); got < 20 {
		t.Fatalf("items_fallbacks_total{reason=open} = %v, want >= 20", got)
	}

	// After the sleep window a failing probe keeps it open.
	time.Sleep(bcfg.SleepWindow + 50*time.Millisecond)
	get()
	get()
	if got := s.ds.hits.Load() - frozen; got != 1 {
		t.Fatalf("after the sleep window %d calls reached the downstream, want 1 probe", got)
	}
	if !s.br.Open() {
		t.Fatal("a failed probe closed the circuit")
	}

	// After the next window, concurrent callers: one probe, the rest fall back.
	s.ds.setMode(mode{kind: modeHealthy, delay: 100 * time.Millisecond})
	time.Sleep(bcfg.SleepWindow + 50*time.Millisecond)
	before := s.ds.hits.Load()
	var wg sync.WaitGroup
	var fresh, degraded atomic.Int32
	for range 8 {
		wg.Go(func() {
			it, err := s.src.Get(ctx, "42")
			switch {
			case err != nil:
				t.Errorf("Get: %v", err)
			case it.Degraded:
				degraded.Add(1)
			default:
				fresh.Add(1)
			}
		})
	}
	wg.Wait()
	if got := s.ds.hits.Load() - before; got != 1 || fresh.Load() != 1 || degraded.Load() != 7 {
		t.Fatalf("half-open: %d downstream calls, %d fresh, %d degraded; want 1, 1, 7", got, fresh.Load(), degraded.Load())
	}
	eventually(t, 2*time.Second, func() bool { return open() == 0 }, "breaker_open back to 0 after a healthy probe")
	before = s.ds.hits.Load()
	if it := get(); it.Degraded {
		t.Fatalf("closed circuit served %+v", it)
	}
	if s.ds.hits.Load() != before+1 {
		t.Fatal("closed circuit did not call the downstream")
	}
}

// A call admitted before the circuit opened that ends well after it did (a
// slow success amid failures, or a caller error) leaves the circuit open:
// hystrix-go alone closes an open circuit on any success and cuts the
// sleep window short. Only the probe's success closes it. The slow caller
// still gets its own result.
func TestBreakerLateSuccessKeepsTheCircuitOpen(t *testing.T) {
	t.Parallel()
	for _, slow := range []error{nil, items.ErrNotFound} {
		b := newTestBreaker(t, BreakerConfig{Timeout: 5 * time.Second, MaxConcurrent: 50, ErrorPercent: 50, RequestVolume: 5, SleepWindow: time.Minute}, prometheus.NewRegistry())
		ctx := ctxTimeout(t, 30*time.Second)
		fb := func(context.Context, error) error { return errors.New("fallback") }
		release, slowDone := make(chan struct{}), make(chan error, 1)
		started := make(chan struct{})
		go func() {
			slowDone <- b.Do(ctx, func(context.Context) error { close(started); <-release; return slow }, fb)
		}()
		<-started
		boom := errors.New("boom")
		for i := 0; i < 500 && !b.Open(); i++ {
			_ = b.Do(ctx, func(context.Context) error { return boom }, fb)
			time.Sleep(2 * time.Millisecond) // hystrix counts asynchronously
		}
		if !b.Open() {
			t.Fatal("circuit never opened")
		}
		close(release)
		if err := <-slowDone; !errors.Is(err, slow) && err != slow {
			t.Errorf("slow call = %v, want its own result %v", err, slow)
		}
		time.Sleep(50 * time.Millisecond) // hystrix's report of the slow call
		reached := false
		_ = b.Do(ctx, func(context.Context) error { reached = true; return boom }, fb)
		if !b.Open() || reached {
			t.Errorf("slow call ending with %v: circuit open=%v, next call reached the dependency=%v; want open and short-circuited for the sleep window", slow, b.Open(), reached)
		}
	}
}

// The same under concurrent load: with half the calls failing and a sleep
// window of an hour (so no probe ever runs), once the circuit has opened
// no call reaches the dependency but those already admitted. Successes
// that end while it is open (reported to hystrix a little later, on its
// own goroutines) must not close it.
func TestBreakerStaysOpenUnderConcurrentSuccesses(t *testing.T) {
	t.Parallel()
	const workers = 64
	b := newTestBreaker(t, BreakerConfig{Timeout: 5 * time.Second, MaxConcurrent: 200, ErrorPercent: 50, RequestVolume: 20, SleepWindow: time.Hour}, prometheus.NewRegistry())
	ctx := ctxTimeout(t, 30*time.Second)
	fb := func(context.Context, error) error { return nil }
	boom := errors.New("boom")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var n, ran, ranAfterOpen atomic.Int64
	var opened atomic.Bool
	for range workers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := n.Add(1)
				_ = b.Do(ctx, func(context.Context) error {
					ran.Add(1)
					if opened.Load() {
						ranAfterOpen.Add(1)
					}
					if i%2 == 0 {
						return boom
					}
					return nil
				}, fb)
			}
		})
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && !opened.Load() {
		opened.Store(b.Open())
		time.Sleep(100 * time.Microsecond)
	}
	time.Sleep(time.Second) // the circuit is open: nothing new should run
	close(stop)
	wg.Wait()
	if !opened.Load() {
		t.Fatalf("the circuit never opened in %d calls", n.Load())
	}
	// Calls admitted just before it opened may start just after.
	if got := ranAfterOpen.Load(); got > workers {
		t.Errorf("%d calls reached the dependency after the circuit opened (sleep window 1h, %d workers): it was closed without a probe", got, workers)
	}
	if !b.Open() {
		t.Error("the circuit is closed at the end, with no probe possible")
	}
}

// A slow downstream: the caller gets the fallback within the timeout plus a
// small margin, and the downstream sees its request cancelled.
func TestBreakerSlowDownstreamIsCancelled(t *testing.T) {
	t.Parallel()
	const timeout = 150 * time.Millisecond
	bcfg := DefaultBreakerConfig()
	bcfg.Timeout = timeout
	s := newStack(t, bcfg, testClientConfig(), discardLogger())
	s.ds.setMode(mode{kind: modeSlow, delay: 10 * time.Second})

	start := time.Now()
	it, err := s.src.Get(ctxTimeout(t, 10*time.Second), "7")
	elapsed := time.Since(start)
	if err != nil || !it.Degraded {
		t.Fatalf("Get = %+v, %v; want the fallback", it, err)
	}
	if elapsed < timeout-5*time.Millisecond || elapsed > timeout+200*time.Millisecond {
		t.Fatalf("fallback after %s, want about %s", elapsed, timeout)
	}
	eventually(t, 2*time.Second, func() bool { return s.ds.cancelled.Load() == 1 }, "downstream sees the request cancelled")
	eventually(t, 2*time.Second, func() bool { return s.event(t, "timeout") == 1 }, "timeout event counted")
	if got := s.event(t, "failure"); got != 0 {
		t.Fatalf("failure events = %v, want 0 (a timeout is counted as a timeout)", got)
	}
	if got := metric(t, s.reg, "items_fallbacks_total", map[string]string{"reason": "timeout"}); got != 1 {
		t.Fatalf("items_fallbacks_total{reason=timeout} = %v, want 1", got)
	}
}

// panicAfterFetch calls the real downstream, then panics, as a decoding bug
// in the command would.
type panicAfterFetch struct{ src items.Source }

func (p panicAfterFetch) Get(ctx context.Context, id string) (items.Item, error) {
	if _, err := p.src.Get(ctx, id); err != nil {
		return items.Item{}, err
	}
	var m map[string]int
	m[id]++ // nil map write: a real runtime panic
	return items.Item{}, nil
}

// A panicking command: fallback served, process alive, failure counted,
// logged with its stack.
func TestBreakerPanicInCommand(t *testing.T) {
	t.Parallel()
	logs := &testkit.SyncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, nil))
	ds := newDownstream(t, 0)
	reg := prometheus.NewRegistry()
	hs, err := items.NewHTTPSource(ds.URL(), newTestClient(t, testClientConfig(), reg))
	if err != nil {
		t.Fatal(err)
	}
	br, err := NewHystrixBreaker("items", DefaultBreakerConfig(), logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	src, err := NewItemSource(panicAfterFetch{hs}, br, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	it, err := src.Get(ctxTimeout(t, 5*time.Second), "9")
	if err != nil || !it.Degraded {
		t.Fatalf("Get = %+v, %v; want the fallback", it, err)
	}
	if ds.hits.Load() != 1 {
		t.Fatalf("downstream hits = %d, want 1", ds.hits.Load())
	}
	eventually(t, 2*time.Second, func() bool {
		return metric(t, reg, "breaker_events_total", map[string]string{"command": "items", "event": "failure"}) == 1
	}, "panic counted as a failure")
	if got := metric(t, reg, "items_fallbacks_total", map[string]string{"reason": "panic"}); got != 1 {
		t.Fatalf("items_fallbacks_total{reason=panic} = %v, want 1", got)
	}
	out := logs.String()
	if !strings.Contains(out, "panic in breaker command") || !strings.Contains(out, "assignment to entry in nil map") || !strings.Contains(out, "goroutine ") {
		t.Fatalf("panic not logged with its stack:\n%s", out)
	}

	// Still alive and serving through the same breaker.
	got, err := Execute(context.Background(), br, func(context.Context) (int, error) { return 7, nil }, nil)
	if err != nil || got != 7 {
		t.Fatalf("after the panic: %v, %v", got, err)
	}
}

// Caller errors are not failures: a 404 passes through as items.ErrNotFound
// and a 400 is answered with the fallback; neither opens the circuit.
func TestBreakerCallerErrorsAreNotFailures(t *testing.T) {
	t.Parallel()
	bcfg := BreakerConfig{Timeout: time.Second, MaxConcurrent: 10, ErrorPercent: 10, RequestVolume: 3, SleepWindow: time.Minute}
	s := newStack(t, bcfg, testClientConfig(), discardLogger())
	ctx := ctxTimeout(t, 10*time.Second)

	s.ds.setMode(mode{kind: modeNotFound})
	for i := range 20 {
		it, err := s.src.Get(ctx, "missing")
		if err != items.ErrNotFound || it.Degraded {
			t.Fatalf("call %d: Get = %+v, %v; want items.ErrNotFound untouched", i, it, err)
		}
	}
	s.ds.setMode(mode{kind: modeStatus, status: 400})
	for i := range 10 {
		it, err := s.src.Get(ctx, "bad")
		if err != nil || !it.Degraded {
			t.Fatalf("call %d: Get = %+v, %v; want the fallback", i, it, err)
		}
	}
	if got := s.ds.hits.Load(); got != 30 {
		t.Fatalf("downstream hits = %d, want 30 (the circuit must stay closed)", got)
	}
	eventually(t, 2*time.Second, func() bool { return s.event(t, "success") == 30 }, "30 successes recorded")
	if got := s.event(t, "failure"); got != 0 || s.br.Open() {
		t.Fatalf("failures = %v, open = %v; caller errors must not count", got, s.br.Open())
	}
	if got := metric(t, s.reg, "items_fallbacks_total", map[string]string{"reason": "caller_error"}); got != 10 {
		t.Fatalf("items_fallbacks_total{reason=caller_error} = %v, want 10", got)
	}
}

// A 401 or 403 blames this service's credentials, not the caller: every
// call fails alike, so they are failures and open the circuit (and so show
// in readiness), instead of a fallback that hides them.
func TestBreakerOpensOnRejectedCredentials(t *testing.T) {
	t.Parallel()
	for _, code := range []int{401, 403} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			t.Parallel()
			bcfg := BreakerConfig{Timeout: time.Second, MaxConcurrent: 10, ErrorPercent: 10, RequestVolume: 3, SleepWindow: time.Minute}
			s := newStack(t, bcfg, testClientConfig(), discardLogger())
			ctx := ctxTimeout(t, 10*time.Second)
			s.ds.setMode(mode{kind: modeStatus, status: code})
			eventually(t, 5*time.Second, func() bool {
				it, err := s.src.Get(ctx, "7")
				if err != nil || !it.Degraded {
					t.Fatalf("Get = %+v, %v; want the fallback", it, err)
				}
				return s.br.Open()
			}, "the circuit opens")
			if got := metric(t, s.reg, "items_fallbacks_total", map[string]string{"reason": "caller_error"}); got != 0 {
				t.Errorf("%d answered as %v caller errors", code, got)
			}
		})
	}
}

// A caller who goes away gets ctx.Err(), no fallback, and no failure is
// counted, however many do it.
func TestBreakerCallerCancelIsNotAFailure(t *testing.T) {
	t.Parallel()
	bcfg := BreakerConfig{Timeout: 5 * time.Second, MaxConcurrent: 20, ErrorPercent: 10, RequestVolume: 3, SleepWindow: time.Minute}
	s := newStack(t, bcfg, testClientConfig(), discardLogger())
	s.ds.setMode(mode{kind: modeSlow, delay: 10 * time.Second})

	// The callers leave once all ten requests have reached the downstream
	// (a fixed delay could cancel a request not sent yet on a loaded
	// machine: then the downstream never sees it).
	ctx, cancelAll := context.WithCancel(context.Background())
	defer cancelAll()
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			it, err := s.src.Get(ctx, "1")
			if !errors.Is(err, context.Canceled) || it != (items.Item{}) {
				t.Errorf("Get = %+v, %v; want context.Canceled", it, err)
			}
		})
	}
	eventually(t, 5*time.Second, func() bool { return s.ds.hits.Load() == 10 }, "downstream receives 10 requests")
	cancelAll()
	wg.Wait()
	eventually(t, 5*time.Second, func() bool { return s.ds.cancelled.Load() == 10 }, "downstream sees 10 cancellations")
	// Already cancelled: the downstream is not even called.
	if _, err := s.src.Get(ctx, "1"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get with a cancelled context = %v", err)
	}
	time.Sleep(50 * time.Millisecond) // let hystrix's metrics goroutine catch up
	for _, ev := range []string{"failure", "timeout", "fallback_success"} {
		if got := s.event(t, ev); got != 0 {
			t.Errorf("%s events = %v, want 0", ev, got)
		}
	}
	if s.br.Open() || s.ds.hits.Load() != 10 {
		t.Fatalf("open = %v, hits = %d; want closed, 10", s.br.Open(), s.ds.hits.Load())
	}
}

// The bulkhead slot is held until the work really ends, even when the work
// ignores its context (afex/hystrix-go#84 frees it at the timeout).
func TestBreakerBulkheadHoldsSlotUntilWorkEnds(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	b := newTestBreaker(t, BreakerConfig{Timeout: 50 * time.Millisecond, MaxConcurrent: 2, ErrorPercent: 50, RequestVolume: 100, SleepWindow: time.Second}, reg)
	release := make(chan struct{})
	var started, finished atomic.Int32
	stuck := func(context.Context) error { // ignores its context on purpose
		started.Add(1)
		<-release
		finished.Add(1)
		return nil
	}
	do := func(run func(context.Context) error) error {
		var cause error
		err := b.Do(context.Background(), run, func(_ context.Context, c error) error { cause = c; return nil })
		if err != nil {
			t.Fatalf("Do: %v", err)
		}
		return cause
	}
	for i := range 2 {
		if cause := do(stuck); !errors.Is(cause, ErrTimeout) {
			t.Fatalf("call %d: cause %v, want ErrTimeout", i, cause)
		}
	}
	if cause := do(stuck); !errors.Is(cause, ErrRejected) {
		t.Fatalf("third call: cause %v, want ErrRejected while two timed-out calls still run", cause)
	}
	if started.Load() != 2 {
		t.Fatalf("%d runs started, want 2", started.Load())
	}
	if got := metric(t, reg, "breaker_events_total", map[string]string{"event": "rejected"}); got != 1 {
		t.Fatalf("rejected events = %v, want 1", got)
	}
	close(release)
	eventually(t, 2*time.Second, func() bool { return finished.Load() == 2 }, "stuck runs end")
	eventually(t, 2*time.Second, func() bool {
		return do(func(context.Context) error { return nil }) == nil
	}, "slots free again once the work ended")
}

// A run that finishes after its timeout must not race with the caller: the
// caller gets the fallback value, the late value is dropped (-race checks).
// Each run returns only once its timeout's fallback has been called, so it
// is late however slowly the machine schedules the breaker's timer.
func TestBreakerLateResultDoesNotRace(t *testing.T) {
	t.Parallel()
	b := newTestBreaker(t, BreakerConfig{Timeout: 10 * time.Millisecond, MaxConcurrent: 50, ErrorPercent: 100, RequestVolume: 1000, SleepWindow: time.Second}, prometheus.NewRegistry())
	var runs sync.WaitGroup
	var callers sync.WaitGroup
	for range 20 {
		runs.Add(1)
		fellBack := make(chan struct{})
		callers.Go(func() {
			got, err := Execute(context.Background(), b,
				func(context.Context) ([]int, error) {
					defer runs.Done()
					select { // ignores ctx: finishes late
					case <-fellBack:
					case <-time.After(5 * time.Second):
						t.Error("the run was not timed out within 5s")
					}
					return []int{1, 2, 3}, nil
				},
				func(_ context.Context, cause error) ([]int, error) {
					defer close(fellBack)
					if !errors.Is(cause, ErrTimeout) {
						t.Errorf("cause %v, want ErrTimeout", cause)
					}
					return []int{0}, nil
				})
			if err != nil || len(got) != 1 || got[0] != 0 {
				t.Errorf("Execute = %v, %v; want the fallback value", got, err)
			}
			got[0] = 9 // the caller owns its value; writing it must not race with the run
		})
	}
	callers.Wait()
	runs.Wait()
}

// Several breakers with the same name in one process (two servers, parallel
// tests) get their own hystrix command and settings.
func TestBreakersWithTheSameNameAreIndependent(t *testing.T) {
	t.Parallel()
	fast := newTestBreaker(t, BreakerConfig{Timeout: 20 * time.Millisecond, MaxConcurrent: 5, ErrorPercent: 50, RequestVolume: 2, SleepWindow: time.Minute}, prometheus.NewRegistry())
	slow := newTestBreaker(t, BreakerConfig{Timeout: 2 * time.Second, MaxConcurrent: 5, ErrorPercent: 50, RequestVolume: 2, SleepWindow: time.Minute}, prometheus.NewRegistry())
	if fast.command == slow.command {
		t.Fatalf("both breakers use hystrix command %q", fast.command)
	}
	work := func(ctx context.Context) (string, error) {
		select {
		case <-time.After(100 * time.Millisecond):
			return "done", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	fb := func(context.Context, error) (string, error) { return "fallback", nil }
	if got, _ := Execute(context.Background(), fast, work, fb); got != "fallback" {
		t.Fatalf("fast breaker: %q, want its 20ms timeout to fire", got)
	}
	if got, _ := Execute(context.Background(), slow, work, fb); got != "done" {
		t.Fatalf("slow breaker: %q, want its 2s timeout not to fire", got)
	}
	// Open the fast one; the slow one stays closed.
	eventually(t, 5*time.Second, func() bool {
		_, _ = Execute(context.Background(), fast, func(context.Context) (string, error) { return "", errors.New("down") }, fb)
		return fast.Open()
	}, "fast breaker opens")
	if slow.Open() {
		t.Fatal("opening one breaker opened the other")
	}
}

func TestBreakerReturnsCallerContextError(t *testing.T) {
	t.Parallel()
	b := newTestBreaker(t, DefaultBreakerConfig(), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran, fellBack := false, false
	err := b.Do(ctx, func(context.Context) error { ran = true; return nil }, func(context.Context, error) error { fellBack = true; return nil })
	if !errors.Is(err, context.Canceled) || ran || fellBack {
		t.Fatalf("Do = %v, ran %v, fallback %v; want context.Canceled only", err, ran, fellBack)
	}
}

func TestBreakerWithoutFallbackReturnsCause(t *testing.T) {
	t.Parallel()
	b := newTestBreaker(t, DefaultBreakerConfig(), prometheus.NewRegistry())
	boom := errors.New("boom")
	if err := b.Do(context.Background(), func(context.Context) error { return boom }, nil); !errors.Is(err, boom) {
		t.Fatalf("Do = %v, want boom", err)
	}
	failing := func(context.Context, error) error { return errors.New("no cache") }
	err := b.Do(context.Background(), func(context.Context) error { return boom }, failing)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "no cache") {
		t.Fatalf("Do with a failing fallback = %v", err)
	}
}

func TestIsFailure(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{context.Canceled, false},
		{items.ErrNotFound, false},
		{&items.StatusError{StatusCode: 400}, false},
		{&items.StatusError{StatusCode: 409}, false},
		// This service's credentials, not the caller's request.
		{&items.StatusError{StatusCode: 401}, true},
		{&items.StatusError{StatusCode: 403}, true},
		{&items.StatusError{StatusCode: 407}, true},
		{&items.StatusError{StatusCode: 408}, true},
		{&items.StatusError{StatusCode: 429}, true},
		{&items.StatusError{StatusCode: 500}, true},
		{context.DeadlineExceeded, true},
		{errors.New("connection refused"), true},
		{&PanicError{Value: "x"}, true},
	}
	for _, tt := range tests {
		if got := IsFailure(tt.err); got != tt.want {
			t.Errorf("IsFailure(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestFallbackReason(t *testing.T) {
	for cause, want := range map[error]string{
		ErrOpen: "open", ErrTimeout: "timeout", ErrRejected: "rejected",
		&PanicError{Value: 1}: "panic", errors.New("x"): "failure",
	} {
		if got := FallbackReason(cause); got != want {
			t.Errorf("FallbackReason(%v) = %q, want %q", cause, got, want)
		}
	}
}

// The metric names and labels docs/metrics.md fixes are exported.
func TestBreakerMetricsExported(t *testing.T) {
	t.Parallel()
	s := newStack(t, DefaultBreakerConfig(), testClientConfig(), discardLogger())
	if _, err := s.src.Get(ctxTimeout(t, 5*time.Second), "1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, func() bool { return s.event(t, "success") == 1 }, "success counted")
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string][]string{}
	for _, mf := range mfs {
		for _, lp := range mf.GetMetric()[0].GetLabel() {
			labels[mf.GetName()] = append(labels[mf.GetName()], lp.GetName())
		}
	}
	want := map[string]string{
		"breaker_open":                         "command",
		"breaker_events_total":                 "command,event",
		"http_client_requests_total":           "code,host,method",
		"http_client_request_duration_seconds": "host",
		"http_client_connections_total":        "host,reused",
		"items_fallbacks_total":                "reason",
	}
	for name, l := range want {
		if got := strings.Join(labels[name], ","); got != l {
			t.Errorf("%s labels = %q, want %q", name, got, l)
		}
	}
	for _, ev := range []string{"success", "failure", "timeout", "rejected", "short_circuited", "fallback_success", "fallback_failure"} {
		found := false
		for _, mf := range mfs {
			if mf.GetName() != "breaker_events_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				found = found || hasLabels(m, map[string]string{"event": ev})
			}
		}
		if !found {
			t.Errorf("breaker_events_total{event=%q} not exported", ev)
		}
	}
	// Two breakers with one name on one registry would make breaker_open ambiguous.
	if _, err := NewHystrixBreaker("items", DefaultBreakerConfig(), discardLogger(), s.reg); err == nil {
		t.Fatal("a second breaker named items on the same registry was accepted")
	}
	// Another name on the same registry is fine and shares the counters.
	if _, err := NewHystrixBreaker("prices", DefaultBreakerConfig(), discardLogger(), s.reg); err != nil {
		t.Fatal(err)
	}
}

// hystrix returns a call's ticket to its pool only after the caller has its
// answer, through one metrics goroutine; at a high call rate finished calls
// pile up holding tickets. With a pool sized like the bulkhead that turned
// into rejections, counted as errors, which opened the circuit of a healthy
// dependency. No healthy call may be refused.
func TestBreakerHighCallRateHasNoSpuriousRejections(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	b := newTestBreaker(t, DefaultBreakerConfig(), reg)
	var calls, fallbacks atomic.Int64
	deadline := time.Now().Add(500 * time.Millisecond)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				calls.Add(1)
				_ = b.Do(context.Background(), work, func(_ context.Context, cause error) error {
					if fallbacks.Add(1) == 1 {
						t.Errorf("healthy call fell back: %v", cause)
					}
					return nil
				})
			}
		})
	}
	wg.Wait()
	if fallbacks.Load() != 0 || b.Open() {
		t.Fatalf("%d of %d healthy calls fell back; circuit open: %v", fallbacks.Load(), calls.Load(), b.Open())
	}
	t.Logf("%d calls", calls.Load())
}
