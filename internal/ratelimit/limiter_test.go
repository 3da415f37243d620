package ratelimit

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/hardenedgo/ginservice/internal/health"
	"github.com/hardenedgo/ginservice/internal/testkit"
	"github.com/hardenedgo/ginservice/internal/testkit/redistest"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{Rate: 100, Burst: 200}
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"rate zero", func(c *Config) { c.Rate = 0 }, "RATELIMIT_RATE"},
		{"rate negative", func(c *Config) { c.Rate = -1 }, "RATELIMIT_RATE"},
		{"rate huge", func(c *Config) { c.Rate = 1e12 }, "RATELIMIT_RATE"},
		{"burst zero", func(c *Config) { c.Burst = 0 }, "RATELIMIT_BURST"},
		// A refill of 1e10 s would overflow RateLimit-Reset's Duration.
		{"refill past a Duration", func(c *Config) { c.Burst = 1_000_000_000; c.Rate = 0.1 }, "RATELIMIT_BURST"},
		{"mode", func(c *Config) { c.OnRedisError = "ignore" }, "RATELIMIT_ON_REDIS_ERROR"},
		{"instances", func(c *Config) { c.Instances = -2 }, "RATELIMIT_INSTANCES"},
		{"share too small", func(c *Config) { c.Rate = 0.002; c.Instances = 3 }, "RATELIMIT_INSTANCES"},
		{"timeout", func(c *Config) { c.RedisTimeout = -time.Second }, "RATELIMIT_REDIS_TIMEOUT"},
		{"url scheme", func(c *Config) { c.RedisURL = "http://localhost:6379" }, "REDIS_URL"},
		{"url param", func(c *Config) { c.RedisURL = "redis://localhost:6379?bogus=1" }, "REDIS_URL"},
		{"cluster url param", func(c *Config) { c.RedisURL = "redis://a:1?addr=b:2&bogus=1" }, "REDIS_URL"},
	} {
		c := ok
		tc.mod(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one naming %s", tc.name, err, tc.want)
		}
	}
	for _, u := range []string{"redis://localhost:6379/2", "rediss://user:pw@h:6380", "redis://h1:1?addr=h2:2&addr=h3:3"} {
		c := ok
		c.RedisURL = u
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
	// The refill is the rate rounded down to 0.001 token/s: never more
	// than configured (rounded to the nearest, 0.0015/s was 0.002/s).
	for rate, want := range map[float64]int64{0.001: 1, 0.0015: 1, 0.0025: 2, 0.3: 300, 0.7: 700, 1.001: 1001, 100: 100000, 1e9: 1e12} {
		if got := ratePerMs(rate); got != want {
			t.Errorf("ratePerMs(%v) = %d, want %d", rate, got, want)
		}
	}
	c := ok
	c.RedisURL = "redis://user:hunter2@host:notaport"
	if err := c.Validate(); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("bad URL error leaks the password or passes: %v", err)
	}
}

func TestParseRedisURL(t *testing.T) {
	o, err := parseRedisURL("redis://h1:7001?addr=h2:7002&addr=h3:7003")
	if err != nil || o.cluster == nil || len(o.cluster.Addrs) != 3 {
		t.Fatalf("cluster URL: %+v, %v", o, err)
	}
	o, err = parseRedisURL("redis://:pw@h:6379/3")
	if err != nil || o.single == nil || o.single.DB != 3 || o.single.Password != "pw" {
		t.Fatalf("single URL: %+v, %v", o, err)
	}
	// "addr=" inside a password does not make it a cluster.
	o, err = parseRedisURL("redis://:addr=x@h:6379")
	if err != nil || o.single == nil || o.single.Password != "addr=x" {
		t.Fatalf("password with addr=: %+v, %v", o, err)
	}
	if o, err := parseRedisURL("redis://h"); err != nil || o.single.Addr != "h:6379" {
		t.Fatalf("no port: %+v, %v (go-redis defaults to 6379)", o, err)
	}
	// Ports no dialer can use are refused at start, naming the address and
	// never the password.
	for raw, addr := range map[string]string{
		"redis://:secret@h:99999":                            "h:99999",
		"redis://:secret@h:0/1":                              "h:0",
		"redis://:secret@h1:7001?addr=h2:70000&addr=h3:7003": "h2:70000",
		"redis://:secret@h1:7001?addr=h2&addr=h3:7003":       "h2",
	} {
		_, err := parseRedisURL(raw)
		if err == nil {
			t.Errorf("%s accepted", raw)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, "secret") || !strings.Contains(msg, addr) {
			t.Errorf("%s: %q (want %s named, the password not)", raw, msg, addr)
		}
	}
}

func TestLocalLimiter(t *testing.T) {
	rl := newTestLimiter(t, Config{Rate: 1, Burst: 3})
	ctx := context.Background()
	if got := rl.Health(ctx); got != health.StatusDisabled {
		t.Fatalf("Health = %s without REDIS_URL, want disabled", got)
	}
	for i := 0; i < 3; i++ {
		if d, err := rl.Allow(ctx, "k", 1); err != nil || !d.Allowed || d.Remaining != 2-i {
			t.Fatalf("call %d: %+v, %v", i, d, err)
		}
	}
	d, _ := rl.Allow(ctx, "k", 1)
	if d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > time.Second {
		t.Fatalf("4th: %+v", d)
	}
	if got := metric(t, rl.reg, "ratelimit_decisions_total", "result", "allowed", "backend", "local"); got != 3 {
		t.Fatalf("local allowed = %v", got)
	}
	if got := metric(t, rl.reg, "ratelimit_decisions_total", "result", "denied", "backend", "local"); got != 1 {
		t.Fatalf("local denied = %v", got)
	}
	if _, err := rl.Allow(ctx, "k", 4); err == nil {
		t.Fatal("cost > burst accepted")
	}
	if _, err := rl.Allow(ctx, "k", -1); err == nil {
		t.Fatal("negative cost accepted")
	}
}

// TestMetricNames checks that every ratelimit_* name in docs/metrics.md is
// exported, with its documented label values, before any decision.
func TestMetricNames(t *testing.T) {
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile("`(ratelimit_[a-z_]+)`").FindAllStringSubmatch(string(doc), -1)
	if len(want) < 4 {
		t.Fatalf("docs/metrics.md lists %d ratelimit metrics", len(want))
	}
	reg := prometheus.NewRegistry()
	rl, err := New(context.Background(), Config{Rate: 1, Burst: 1}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer rl.Close()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
	}
	for _, w := range want {
		if !have[w[1]] {
			t.Errorf("%s documented but not exported (have %v)", w[1], have)
		}
	}
	for _, b := range []string{"redis", "local", "cache", "allow", "deny"} {
		for _, r := range []string{"allowed", "denied"} {
			if !strings.Contains(gatherText(t, reg), `ratelimit_decisions_total{backend="`+b+`",result="`+r+`"}`) {
				t.Errorf("series result=%s backend=%s not pre-created", r, b)
			}
		}
	}
	// A second limiter on the same registry is a wiring error, reported.
	if _, err := New(context.Background(), Config{Rate: 1, Burst: 1}, nil, reg); err == nil {
		t.Fatal("duplicate registration not reported")
	}
}

func gatherText(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			b.WriteString(mf.GetName() + "{")
			for i, l := range m.GetLabel() {
				if i > 0 {
					b.WriteString(",")
				}
				b.WriteString(l.GetName() + `="` + l.GetValue() + `"`)
			}
			b.WriteString("}\n")
		}
	}
	return b.String()
}

func TestSpanEvent(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	rl := newTestLimiter(t, Config{Rate: 1, Burst: 1})
	ctx, span := tp.Tracer("test").Start(context.Background(), "request")
	rl.Allow(ctx, "k", 1)
	rl.Allow(ctx, "k", 1)
	span.End()
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	ev := spans[0].Events()
	if len(ev) != 2 || ev[0].Name != "ratelimit.decision" {
		t.Fatalf("events %+v", ev)
	}
	got := map[string]string{}
	for _, a := range ev[1].Attributes {
		got[string(a.Key)] = a.Value.String()
	}
	if got["ratelimit.allowed"] != "false" || got["ratelimit.backend"] != "local" || got["ratelimit.limit"] != "1" {
		t.Fatalf("attributes %v", got)
	}
	// Without a recording span, nothing is recorded and nothing breaks.
	if _, err := rl.Allow(context.Background(), "k2", 1); err != nil {
		t.Fatal(err)
	}
}

// TestRedisSpans: with a TracerProvider, the Redis round trip of a decision
// a sampled request waits for is a client span under that request's span,
// and the decision an event on the request span.
func TestRedisSpans(t *testing.T) {
	srv := redistest.Start(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	rl := newTestLimiter(t, Config{RedisURL: srv.URL(), Rate: 10, Burst: 10, RedisTimeout: time.Second, TracerProvider: tp})
	// The start-up probe (PING, SCRIPT LOAD, one decision on the probe
	// bucket) runs outside any request: as root spans, repeated every probe
	// interval during an outage, it would be noise.
	for _, s := range rec.Ended() {
		t.Errorf("span %q from the probe", s.Name())
	}
	// decide makes one decision under a request span and returns the
	// EVALSHA span under it (nil if none).
	decide := func() sdktrace.ReadOnlySpan {
		t.Helper()
		ctx, span := tp.Tracer("test").Start(context.Background(), "GET /api/v1/ping")
		if _, err := rl.Allow(ctx, "k", 1); err != nil {
			t.Fatal(err) // also with Redis gone: the fallback decides
		}
		span.End()
		for _, s := range rec.Ended() {
			if s.Parent().SpanID() == span.SpanContext().SpanID() && s.Name() == "EVALSHA" {
				return s
			}
		}
		return nil
	}
	child := decide()
	if child == nil {
		var names []string
		for _, s := range rec.Ended() {
			names = append(names, s.Name())
		}
		t.Fatalf("no EVALSHA span under the request span; spans: %v", names)
	}
	host, port, _ := net.SplitHostPort(srv.Addr)
	got := map[string]string{}
	for _, kv := range child.Attributes() {
		got[string(kv.Key)] = kv.Value.Emit()
	}
	want := map[string]string{"db.system.name": "redis", "db.operation.name": "EVALSHA", "db.namespace": "0", "server.address": host, "server.port": port}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("span attribute %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if scope := child.InstrumentationScope().Name; !strings.HasSuffix(scope, "/internal/ratelimit") || scope != scopeName {
		t.Errorf("instrumentation scope %q, want this package's path", scope)
	}
	if child.SpanKind() != trace.SpanKindClient || child.Status().Code != codes.Unset {
		t.Errorf("span kind %v status %v, want a client span without error", child.SpanKind(), child.Status())
	}

	// Redis gone: the decision that finds out has an error span saying how.
	srv.Kill()
	failed := decide()
	if failed == nil {
		t.Fatal("no EVALSHA span for the decision that met Redis gone")
	}
	errType := ""
	for _, kv := range failed.Attributes() {
		if kv.Key == "error.type" {
			errType = kv.Value.AsString()
		}
	}
	if failed.Status().Code != codes.Error || (errType != "eof" && errType != "reset" && errType != "refused") {
		t.Errorf("span of the failed call: status %v, error.type %q; want an error, eof, reset or refused", failed.Status(), errType)
	}
}

// isRedisSpan: a span of a Redis command or pipeline, by its db.system
// (older semantic conventions, as redisotel writes it) or db.system.name.
func isRedisSpan(s sdktrace.ReadOnlySpan) bool {
	for _, kv := range s.Attributes() {
		if (kv.Key == "db.system" || kv.Key == "db.system.name") && kv.Value.AsString() == "redis" {
			return true
		}
	}
	return false
}

// TestRedisSpansPerRequestUnderLoad: concurrent decisions share pipelines,
// but each sampled request gets its own Redis span in its own trace, and
// an unsampled request none.
func TestRedisSpansPerRequestUnderLoad(t *testing.T) {
	srv := redistest.Start(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())))
	defer tp.Shutdown(context.Background())
	rl := newTestLimiter(t, Config{RedisURL: srv.URL(), Rate: 1e6, Burst: 1e6, RedisTimeout: 5 * time.Second, Pipelines: 1, TracerProvider: tp})

	const workers, each = 32, 20
	type req struct {
		span    trace.SpanContext
		sampled bool
	}
	reqs := make(chan req, workers*each)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				ctx := context.Background()
				sampled := w%4 != 0 // a quarter of the callers sent traceparent ...-00
				if !sampled {
					var tid trace.TraceID
					var sid trace.SpanID
					tid[0], tid[15], sid[7] = byte(w+1), byte(i+1), 1
					ctx = trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))
				}
				ctx, span := tp.Tracer("test").Start(ctx, "GET /api/v1/ping")
				if _, err := rl.Allow(ctx, fmt.Sprintf("k%d-%d", w, i), 1); err != nil {
					t.Error(err)
				}
				span.End()
				reqs <- req{span.SpanContext(), sampled}
			}
		}()
	}
	wg.Wait()
	close(reqs)

	children := map[trace.SpanID][]sdktrace.ReadOnlySpan{}
	batched := 0
	for _, s := range rec.Ended() {
		if !isRedisSpan(s) {
			continue
		}
		children[s.Parent().SpanID()] = append(children[s.Parent().SpanID()], s)
		for _, kv := range s.Attributes() {
			if kv.Key == "db.operation.batch.size" && kv.Value.AsInt64() > 1 {
				batched++
			}
		}
	}
	wrong := 0
	for r := range reqs {
		got := children[r.span.SpanID()]
		switch {
		case r.sampled && (len(got) != 1 || got[0].SpanContext().TraceID() != r.span.TraceID()):
			wrong++
		case !r.sampled && len(got) != 0:
			wrong++
		}
	}
	t.Logf("%d decisions, %d Redis spans of a pipeline shared with other calls", workers*each, batched)
	if wrong > 0 {
		t.Errorf("%d of %d requests lack their own Redis span (or an unsampled one has one)", wrong, workers*each)
	}
	if batched == 0 {
		t.Errorf("no decision shared a pipeline: the test did not exercise batching")
	}
}

// The start-up line says the rate as a number in both modes: a log store
// that types its fields (Elasticsearch, Loki's JSON parsing into
// Prometheus-style values) maps the key once.
func TestStartLineRateIsANumber(t *testing.T) {
	srv := redistest.Start(t)
	for _, url := range []string{"", srv.URL()} {
		var logs testkit.SyncBuffer
		logger := slog.New(slog.NewJSONHandler(&logs, nil))
		rl, err := New(context.Background(), Config{RedisURL: url, Rate: 100, Burst: 10, Instances: 4, RedisTimeout: time.Second}, logger, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		rl.Close()
		var line map[string]any
		for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && strings.HasPrefix(fmt.Sprint(m["msg"]), "ratelimit: ") && m["rate"] != nil {
				line = m
			}
		}
		if _, ok := line["rate"].(float64); !ok {
			t.Errorf("REDIS_URL %q: start line %v: rate is not a number", url, line)
		}
	}
}
