package main

// Fault drills against the real binary and a real redis-server: `make drills`
// runs them verbosely and they print their figures. They also run in
// `make test`.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit/redistest"
)

// slowestAccess is the largest latency_ms of the access lines in logs: what
// the service itself measured, as opposed to what the load loop saw
// (which adds the client's and the scheduler's delays).
func slowestAccess(logs string) time.Duration {
	var slowest float64
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, `"msg":"request"`) {
			continue
		}
		var m struct {
			Latency float64 `json:"latency_ms"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Latency > slowest {
			slowest = m.Latency
		}
	}
	return time.Duration(slowest * float64(time.Millisecond))
}

// loadResult counts what a bounded load loop saw.
type loadResult struct {
	wait      func()
	mu        sync.Mutex
	codes     map[int]int
	errs      map[string]int
	latencies []time.Duration
}

func (r *loadResult) add(code int, err error, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errs[err.Error()]++
		return
	}
	r.codes[code]++
	r.latencies = append(r.latencies, d)
}

func (r *loadResult) quantile(q float64) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.latencies) == 0 {
		return 0
	}
	l := append([]time.Duration(nil), r.latencies...)
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l[int(q*float64(len(l)-1))]
}

// load runs workers against url until stop closes or maxPerWorker requests
// each, whichever comes first.
func load(url string, workers, maxPerWorker int, stop <-chan struct{}) *loadResult {
	res := &loadResult{codes: map[int]int{}, errs: map[string]int{}}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 5 * time.Second}
			for range maxPerWorker {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				resp, err := c.Get(url)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					res.add(resp.StatusCode, nil, time.Since(start))
				} else {
					res.add(0, err, 0)
				}
			}
		}()
	}
	res.wait = wg.Wait
	return res
}

func (r *loadResult) String() string {
	r.mu.Lock()
	n := len(r.latencies)
	r.mu.Unlock()
	return "requests=" + strconv.Itoa(n) + " codes=" + fmtMap(r.codes) + " errors=" + strconv.Itoa(len(r.errs)) +
		" p50=" + r.quantile(.5).String() + " p99=" + r.quantile(.99).String() + " max=" + r.quantile(1).String()
}

func fmtMap(m map[int]int) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, strconv.Itoa(k)+":"+strconv.Itoa(v))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, " ") + "}"
}

var metricLine = regexp.MustCompile(`(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) ([0-9.eE+-]+)`)

// metric returns the value of the series whose text (name{labels}) is
// exactly series, or -1.
func metric(t *testing.T, admin, series string) float64 {
	t.Helper()
	_, body := get(t, "http://"+admin+"/metrics")
	if v, ok := seriesValue(body, series); ok {
		return v
	}
	return -1
}

// seriesValue returns the value of the series whose text (name{labels})
// is exactly series in a text-format scrape.
func seriesValue(scrape, series string) (float64, bool) {
	for _, m := range metricLine.FindAllStringSubmatch(scrape, -1) {
		if m[1] == series {
			v, _ := strconv.ParseFloat(m[2], 64)
			return v, true
		}
	}
	return 0, false
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < timeout {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s", what, timeout)
	return 0
}

func readyzStatus(t *testing.T, public string) string {
	_, body := get(t, "http://"+public+"/readyz")
	return body
}

// TestDrillRedisKilledAndRestarted: Redis dies under load and comes back.
// Expect no error and no 5xx for callers, /readyz degraded (still 200)
// while the local fallback decides, and Redis back in charge after restart.
func TestDrillRedisKilledAndRestarted(t *testing.T) {
	rs := redistest.Start(t)
	p := startBinary(t, map[string]string{
		"REDIS_URL":       rs.URL(),
		"RATELIMIT_RATE":  "1000000",
		"RATELIMIT_BURST": "1000000",
	})
	waitFor(t, 5*time.Second, "limiter on Redis", func() bool { return strings.Contains(readyzStatus(t, p.public), `"redis":"ok"`) })

	stop := make(chan struct{})
	res := load("http://"+p.public+"/api/v1/ping", 8, 100000, stop)
	time.Sleep(500 * time.Millisecond)

	rs.Kill()
	killedAt := time.Now()
	toDegraded := waitFor(t, 3*time.Second, "readyz degraded after Redis died", func() bool {
		b := readyzStatus(t, p.public)
		return strings.Contains(b, `"redis":"degraded"`) && strings.Contains(b, `"status":"degraded"`)
	})
	if fa := metric(t, p.admin, "ratelimit_fallback_active"); fa != 1 {
		t.Errorf("ratelimit_fallback_active = %v during the outage, want 1", fa)
	}
	time.Sleep(time.Second)
	rs.Restart()
	toRedis := waitFor(t, 10*time.Second, "back on Redis after restart", func() bool {
		return strings.Contains(readyzStatus(t, p.public), `"redis":"ok"`)
	})
	time.Sleep(300 * time.Millisecond)
	close(stop)
	res.wait()

	local := metric(t, p.admin, `ratelimit_decisions_total{backend="local",result="allowed"}`)
	time.Sleep(200 * time.Millisecond) // the binary's log is flushed every 100 ms
	t.Logf("redis killed under load: %s; slowest in the service's own access log %s; degraded after %s, outage %s, back on Redis %s after restart; local decisions %v",
		res, slowestAccess(p.logs.String()), toDegraded, time.Since(killedAt).Round(time.Millisecond), toRedis, local)
	if len(res.errs) != 0 || len(res.codes) != 1 || res.codes[200] == 0 {
		t.Fatalf("callers saw failures: %s %v", res, res.errs)
	}
	if local <= 0 {
		t.Errorf("no local fallback decisions were counted")
	}
	if fa := metric(t, p.admin, "ratelimit_fallback_active"); fa != 0 {
		t.Errorf("ratelimit_fallback_active = %v after recovery, want 0", fa)
	}
}

// TestDrillRedisSlow: Redis answers 100ms late. The limiter's 20ms budget
// keeps request latency far below the Redis delay.
func TestDrillRedisSlow(t *testing.T) {
	rs := redistest.Start(t)
	proxy := redistest.NewProxy(t, rs.Addr)
	p := startBinary(t, map[string]string{
		"REDIS_URL":       proxy.URL(),
		"RATELIMIT_RATE":  "1000000",
		"RATELIMIT_BURST": "1000000",
	})
	waitFor(t, 5*time.Second, "limiter on Redis", func() bool { return strings.Contains(readyzStatus(t, p.public), `"redis":"ok"`) })
	proxy.SetDelay(100 * time.Millisecond)
	stop := make(chan struct{})
	res := load("http://"+p.public+"/api/v1/ping", 4, 100000, stop)
	time.Sleep(2 * time.Second)
	close(stop)
	res.wait()
	time.Sleep(200 * time.Millisecond) // the binary's log is flushed every 100 ms
	t.Logf("redis slowed by 100ms: %s; slowest in the service's own access log %s", res, slowestAccess(p.logs.String()))
	if len(res.errs) != 0 || res.codes[200] == 0 || len(res.codes) != 1 {
		t.Fatalf("callers saw failures: %s %v", res, res.errs)
	}
	if p99 := res.quantile(.99); p99 >= 100*time.Millisecond {
		t.Fatalf("p99 %s: requests waited for slow Redis instead of the fallback", p99)
	}
	// The load loop's maximum includes the client's scheduling; the
	// service's own measure of its slowest request must stay under the
	// Redis delay (it is the 20 ms budget plus scheduling).
	if slowest := slowestAccess(p.logs.String()); slowest >= 100*time.Millisecond {
		t.Fatalf("the service took %s for a request: it waited for slow Redis", slowest)
	}
	if metric(t, p.admin, `ratelimit_redis_errors_total{kind="timeout"}`) <= 0 {
		t.Errorf("Redis budget overruns were not counted")
	}
}

// TestDrillDependencyErroringAndSlow: the dependency fails, then is slow,
// then heals. Expect only degraded 200s, the breaker open, then closed.
func TestDrillDependencyErroringAndSlow(t *testing.T) {
	p := startBinary(t, map[string]string{
		"RATELIMIT_RATE":         "1000000",
		"RATELIMIT_BURST":        "1000000",
		"BREAKER_TIMEOUT":        "200ms",
		"BREAKER_REQUEST_VOLUME": "10",
		"BREAKER_SLEEP_WINDOW":   "500ms",
	})
	url := "http://" + p.public + "/api/v1/items/42"
	fetch := func() (int, bool, time.Duration) {
		start := time.Now()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Degraded") == "true", time.Since(start)
	}

	put(t, "http://"+p.admin+"/debug/faults", `{"error_rate":1}`)
	var degraded atomic.Int64
	for range 40 {
		code, deg, _ := fetch()
		if code != 200 {
			t.Fatalf("erroring dependency answered %d, want a degraded 200", code)
		}
		if deg {
			degraded.Add(1)
		}
	}
	open := metric(t, p.admin, `breaker_open{command="items"}`)
	t.Logf("dependency erroring: 40/40 answered 200, %d degraded, breaker_open=%v", degraded.Load(), open)
	if degraded.Load() != 40 || open != 1 {
		t.Fatalf("want 40 degraded and the circuit open; got %d and %v", degraded.Load(), open)
	}

	// Healed: after the sleep window one probe closes the circuit.
	put(t, "http://"+p.admin+"/debug/faults", `{"error_rate":0}`)
	closedAfter := waitFor(t, 5*time.Second, "circuit closed after the dependency healed", func() bool {
		_, deg, _ := fetch()
		return !deg && metric(t, p.admin, `breaker_open{command="items"}`) == 0
	})
	t.Logf("dependency healed: circuit closed %s later", closedAfter)

	// Slow: each call is cut at the breaker timeout and degraded.
	put(t, "http://"+p.admin+"/debug/faults", `{"latency":"2s"}`)
	var worst time.Duration
	for range 5 {
		code, deg, d := fetch()
		if code != 200 || !deg {
			t.Fatalf("slow dependency: %d degraded=%v", code, deg)
		}
		worst = max(worst, d)
	}
	t.Logf("dependency slow (2s): degraded answers, slowest %s (breaker timeout 200ms)", worst)
	if worst > 700*time.Millisecond {
		t.Fatalf("slow dependency answered after %s, want about the 200ms breaker timeout", worst)
	}
	// The latency histogram brackets answers cut at the breaker timeout
	// with an edge just above it, 0.22 (the default edges around it are 0.1
	// and 0.25).
	const bucket = `http_server_request_duration_seconds_bucket{method="GET",route="/api/v1/items/:id",le="%s"}`
	time.Sleep(100 * time.Millisecond) // the access middleware observes after the answer is written
	above, below := metric(t, p.admin, fmt.Sprintf(bucket, "0.22")), metric(t, p.admin, fmt.Sprintf(bucket, "0.1"))
	t.Logf("items latency: %v answers within 0.1 s, %v within 0.22 s", below, above)
	if above < 0 || above-below < 1 {
		t.Errorf("no answer in the bucket (0.1, 0.22] that ends above the 200ms breaker timeout: le=0.1 %v, le=0.22 %v", below, above)
	}
}

// TestDrillStalledStdout: the real binary's stdout is a pipe that stops
// being read once the service is listening, as when a log shipper hangs.
// The service must keep answering: after the first log lines are dropped
// (log_lines_dropped_total > 0), a further second of load succeeds in
// full. Without the drop, every request that logs blocks on the pipe.
func TestDrillStalledStdout(t *testing.T) {
	release := make(chan struct{})
	p := startBinaryOut(t, map[string]string{"RATELIMIT_RATE": "1000000", "RATELIMIT_BURST": "1000000"},
		func(logs *logSink) io.Writer { return &stallingWriter{logs: logs, release: release} })
	// Cleanups run last-registered first: stdout moves again before the
	// process is stopped and waited for.
	t.Cleanup(func() { close(release) })
	public, admin := p.public, p.admin

	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	var ok, failed atomic.Int64
	load := func(until time.Time) {
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(until) {
					resp, err := client.Get("http://" + public + "/api/v1/ping")
					if err != nil {
						failed.Add(1)
						continue
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						ok.Add(1)
					} else {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
	}
	// Until lines are dropped (the pipe, the buffers and the queue fill,
	// then one write is stuck for a second), at most 20 s.
	deadline := time.Now().Add(20 * time.Second)
	for metric(t, admin, "log_lines_dropped_total") <= 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no log line dropped after 20 s of load on a stalled stdout (%d ok, %d failed)", ok.Load(), failed.Load())
		}
		load(time.Now().Add(500 * time.Millisecond))
	}
	before := ok.Load()
	load(time.Now().Add(time.Second))
	after := ok.Load() - before
	t.Logf("stalled stdout: %d requests ok, %d failed, %d in the second after the first drop; %v lines dropped",
		ok.Load(), failed.Load(), after, metric(t, admin, "log_lines_dropped_total"))
	if failed.Load() != 0 || after < 100 {
		t.Fatalf("the service did not keep serving: %d failed, %d answered in the second after lines were first dropped", failed.Load(), after)
	}
	if code, _ := get(t, "http://"+public+"/readyz"); code != http.StatusOK {
		t.Errorf("readyz = %d while stdout is stalled", code)
	}
}

// stallingWriter passes the service's output to the log sink until the
// service is listening, then takes no more bytes until release is closed:
// a stdout nobody reads.
type stallingWriter struct {
	logs    *logSink
	release chan struct{}
}

func (w *stallingWriter) Write(p []byte) (int, error) {
	if w.logs.listening.Load() {
		<-w.release
		return len(p), nil
	}
	return w.logs.Write(p)
}
