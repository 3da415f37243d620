package observability_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit/otlptest"

	"github.com/hardenedgo/ginservice/internal/testkit"

	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/hardenedgo/ginservice/internal/items"
	"github.com/hardenedgo/ginservice/internal/observability"
)

// downstream is the items dependency: it records the trace headers it
// receives and answers /items/{id}; /items/slow waits for the caller to go.
type downstream struct {
	url     string
	mu      sync.Mutex
	headers []http.Header
}

func startDownstream(t *testing.T) *downstream {
	t.Helper()
	d := &downstream{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		d.headers = append(d.headers, r.Header.Clone())
		d.mu.Unlock()
		if r.PathValue("id") == "slow" {
			select {
			case <-r.Context().Done():
			case <-time.After(3 * time.Second):
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"`+r.PathValue("id")+`","name":"n","price_cents":1,"source":"downstream"}`)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	d.url = "http://" + ln.Addr().String()
	return d
}

func (d *downstream) last() http.Header {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.headers) == 0 {
		return nil
	}
	return d.headers[len(d.headers)-1]
}

func spanNamed(spans []*tracepb.Span, name string) []*tracepb.Span {
	var out []*tracepb.Span
	for _, s := range spans {
		if s.GetName() == name {
			out = append(out, s)
		}
	}
	return out
}

func hexID(b []byte) string { return hex.EncodeToString(b) }

func flush(t *testing.T, s *stack) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.tracing.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestTracesReachOTLPReceiver runs the real public handler with tracing
// exported over OTLP/HTTP to a receiver on loopback, and checks what a
// Jaeger would store.
func TestTracesReachOTLPReceiver(t *testing.T) {
	rc := otlptest.Start(t)
	ds := startDownstream(t)
	s := startStack(t, stackOptions{
		env: map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL,
			"OTEL_SERVICE_NAME":           "obs-test",
			"OTEL_RESOURCE_ATTRIBUTES":    "deployment.environment=test",
			// Roots are never sampled: only callers' sampled traces are.
			"OTEL_TRACES_SAMPLER_ARG": "0",
		},
		downstream: ds.url,
	})
	if !s.tracing.Exporting() {
		t.Fatal("tracing not exporting with an endpoint set")
	}
	base := "http://" + s.public

	// 1. W3C traceparent, sampled.
	const w3cTrace, w3cParent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	if code, _ := do(t, base+"/api/v1/ping", map[string]string{"traceparent": "00-" + w3cTrace + "-" + w3cParent + "-01"}); code != 200 {
		t.Fatalf("ping = %d", code)
	}
	// 2. Jaeger uber-trace-id with a 64-bit trace id, sampled, through the
	// breaker and the resilient client to the dependency.
	const jTrace, jParent = "a3ce929d0e0e4736", "53995c3f42cd8ad8"
	if code, body := do(t, base+"/api/v1/items/42", map[string]string{"uber-trace-id": jTrace + ":" + jParent + ":0:1"}); code != 200 || !strings.Contains(body, `"source":"downstream"`) {
		t.Fatalf("items = %d %s", code, body)
	}
	outbound := ds.last()
	// 3. Unmatched route with a long path, sampled caller.
	const nfTrace = "11111111111111111111111111111111"
	nfPath := "/no/such/path/" + strings.Repeat("x", 8000)
	if code, _ := do(t, base+nfPath, map[string]string{"traceparent": "00-" + nfTrace + "-2222222222222222-01", "User-Agent": "ua/" + strings.Repeat("u", 5000)}); code != 404 {
		t.Fatalf("unmatched = %d", code)
	}
	// 4. Probes are never traced, even when the caller samples.
	const probeTrace = "33333333333333333333333333333333"
	do(t, base+"/healthz", map[string]string{"traceparent": "00-" + probeTrace + "-4444444444444444-01"})
	do(t, base+"/readyz", map[string]string{"traceparent": "00-" + probeTrace + "-4444444444444444-01"})
	// 5. Unsampled caller and root requests: nothing exported.
	do(t, base+"/api/v1/ping", map[string]string{"traceparent": "00-55555555555555555555555555555555-6666666666666666-00"})
	for range 5 {
		do(t, base+"/api/v1/ping", nil)
	}
	// 6. A client that leaves while the dependency is slow.
	const abortTrace = "77777777777777777777777777777777"
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/items/slow", nil)
	req.Header.Set("traceparent", "00-"+abortTrace+"-8888888888888888-01")
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("expected the client timeout")
	}
	cancel()
	eventually(t, "the aborted request's access line", func() bool {
		for _, l := range logLines(s.logs, "request") {
			if l["trace_id"] == abortTrace {
				return true
			}
		}
		return false
	})

	// 7. A path and a User-Agent that are not UTF-8 (%ff decodes to the
	// byte 0xff): protobuf refuses such strings, and one of them would
	// have failed the export of the whole batch, these spans included.
	const badTrace = "99999999999999999999999999999999"
	if code, _ := do(t, base+"/no/such/%ff", map[string]string{"traceparent": "00-" + badTrace + "-aaaaaaaaaaaaaaaa-01", "User-Agent": "ua/\xff\xfe"}); code != 404 {
		t.Fatalf("non-UTF-8 path = %d", code)
	}

	flush(t, s)
	spans := rc.Spans()
	byTrace := map[string][]*tracepb.Span{}
	for _, sp := range spans {
		byTrace[hexID(sp.GetTraceId())] = append(byTrace[hexID(sp.GetTraceId())], sp)
	}
	for _, sp := range spans {
		t.Logf("span %q trace %s span %s parent %s kind %v status %v", sp.GetName(), hexID(sp.GetTraceId()), hexID(sp.GetSpanId()), hexID(sp.GetParentSpanId()), sp.GetKind(), sp.GetStatus().GetCode())
	}

	// 1: the ping span continues the W3C trace.
	ping := spanNamed(byTrace[w3cTrace], "GET /api/v1/ping")
	if len(ping) != 1 {
		t.Fatalf("want 1 ping span in trace %s, got %d", w3cTrace, len(ping))
	}
	if got := hexID(ping[0].GetParentSpanId()); got != w3cParent {
		t.Errorf("ping parent = %s, want the caller's %s", got, w3cParent)
	}
	if ping[0].GetKind() != tracepb.Span_SPAN_KIND_SERVER || ping[0].GetStatus().GetCode() != tracepb.Status_STATUS_CODE_UNSET {
		t.Errorf("ping kind %v status %v", ping[0].GetKind(), ping[0].GetStatus())
	}
	if v, ok := attr(ping[0].GetAttributes(), "http.response.status_code"); !ok || v.GetIntValue() != 200 {
		t.Errorf("ping status code attribute = %v", v)
	}
	if v, ok := attr(ping[0].GetAttributes(), "http.route"); !ok || v.GetStringValue() != "/api/v1/ping" {
		t.Errorf("ping http.route = %v", v)
	}

	// 2: the Jaeger trace id is left-padded to 128 bits and continued; the
	// outbound call is a child of the server span, and the dependency got
	// the same trace in both header formats.
	padded := "0000000000000000" + jTrace
	jspans := byTrace[padded]
	item := spanNamed(jspans, "GET /api/v1/items/:id")
	if len(item) != 1 {
		t.Fatalf("want 1 items span in trace %s, got %d (%d spans in the trace)", padded, len(item), len(jspans))
	}
	if got := hexID(item[0].GetParentSpanId()); got != jParent {
		t.Errorf("items parent = %s, want the Jaeger caller's %s", got, jParent)
	}
	var client *tracepb.Span
	for _, sp := range jspans {
		if sp.GetKind() == tracepb.Span_SPAN_KIND_CLIENT {
			client = sp
		}
	}
	if client != nil && client.GetName() != "GET" {
		t.Errorf("client span named %q, want GET (HTTP semantic conventions)", client.GetName())
	}
	if client == nil {
		t.Fatalf("no client span for the outbound call in trace %s", padded)
	}
	if hexID(client.GetParentSpanId()) != hexID(item[0].GetSpanId()) {
		t.Errorf("client span parent %s, want the server span %s", hexID(client.GetParentSpanId()), hexID(item[0].GetSpanId()))
	}
	if tp := outbound.Get("traceparent"); tp != "00-"+padded+"-"+hexID(client.GetSpanId())+"-01" {
		t.Errorf("dependency got traceparent %q, want trace %s parent %s", tp, padded, hexID(client.GetSpanId()))
	}
	if ut := outbound.Get("uber-trace-id"); !strings.HasPrefix(ut, padded+":"+hexID(client.GetSpanId())) {
		t.Errorf("dependency got uber-trace-id %q", ut)
	}

	// 3: unmatched routes are named by the method only.
	nf := byTrace[nfTrace]
	if len(nf) != 1 || nf[0].GetName() != "GET" {
		t.Fatalf("unmatched route spans = %v", nf)
	}
	if v, _ := attr(nf[0].GetAttributes(), "http.response.status_code"); v.GetIntValue() != 404 {
		t.Errorf("unmatched status code attribute = %v", v)
	}
	if _, ok := attr(nf[0].GetAttributes(), "http.route"); ok {
		t.Errorf("unmatched span carries http.route")
	}
	wantPath := nfPath[:observability.MaxLoggedPath] + "…(+" + strconv.Itoa(len(nfPath)-observability.MaxLoggedPath) + " bytes)"
	if v, _ := attr(nf[0].GetAttributes(), "url.path"); v.GetStringValue() != wantPath {
		t.Errorf("unmatched url.path attribute of %d bytes, want the path cut to %d", len(v.GetStringValue()), observability.MaxLoggedPath)
	}
	if v, _ := attr(nf[0].GetAttributes(), "user_agent.original"); !strings.HasPrefix(v.GetStringValue(), "ua/uuu") || !strings.HasSuffix(v.GetStringValue(), "…(+2955 bytes)") {
		t.Errorf("unmatched user_agent.original attribute of %d bytes, want the header cut to %d", len(v.GetStringValue()), observability.MaxLoggedPath)
	}

	// 7: exported, with the invalid bytes replaced.
	bad := byTrace[badTrace]
	if len(bad) != 1 {
		t.Fatalf("want 1 span for the non-UTF-8 path, got %d", len(bad))
	}
	if v, _ := attr(bad[0].GetAttributes(), "url.path"); v.GetStringValue() != "/no/such/\uFFFD" {
		t.Errorf("non-UTF-8 url.path attribute = %q", v.GetStringValue())
	}
	if v, _ := attr(bad[0].GetAttributes(), "user_agent.original"); v.GetStringValue() != "ua/\uFFFD" {
		t.Errorf("non-UTF-8 user_agent.original attribute = %q", v.GetStringValue())
	}

	// 4, 5: nothing for probes, unsampled callers or unsampled roots.
	if n := len(byTrace[probeTrace]); n != 0 {
		t.Errorf("%d probe spans exported", n)
	}
	if n := len(byTrace["55555555555555555555555555555555"]); n != 0 {
		t.Errorf("%d spans of an unsampled caller exported", n)
	}

	// 6: the client left: the server span says 499 and error.
	ab := spanNamed(byTrace[abortTrace], "GET /api/v1/items/:id")
	if len(ab) != 1 {
		t.Fatalf("want 1 span for the aborted request, got %d", len(ab))
	}
	if ab[0].GetStatus().GetCode() != tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("aborted request status %v, want error", ab[0].GetStatus())
	}
	if v, _ := attr(ab[0].GetAttributes(), "http.response.status_code"); v.GetIntValue() != 499 {
		t.Errorf("aborted request status code attribute = %v, want 499", v)
	}
	for _, ev := range ab[0].GetEvents() {
		if ev.GetName() == "exception" { // net/http's abort of the handler is no crash
			t.Errorf("aborted request's span has an exception event %v", ev.GetAttributes())
		}
	}

	// Every exported span belongs to a trace a caller sampled.
	for tr := range byTrace {
		switch tr {
		case w3cTrace, padded, nfTrace, abortTrace, badTrace:
		default:
			t.Errorf("unexpected trace %s exported", tr)
		}
	}
	res := rc.Resource()
	for k, want := range map[string]string{"service.name": "obs-test", "service.version": "v-test", "deployment.environment": "test"} {
		if v, ok := attr(res, k); !ok || v.GetStringValue() != want {
			t.Errorf("resource %s = %v, want %s", k, v, want)
		}
	}

	// Logs of a sampled request carry its ids; the access line matches
	// the exported span.
	var found bool
	for _, l := range logLines(s.logs, "request") {
		if l["trace_id"] == w3cTrace && l["span_id"] == hexID(ping[0].GetSpanId()) && l["route"] == "/api/v1/ping" {
			found = true
		}
	}
	if !found {
		t.Errorf("no access line with the ping span's trace_id and span_id:\n%s", s.logs)
	}
}

// With sampler always_on every API request is exported, named by its route
// template, with the limiter's decision and the breaker's fallback as events.
func TestTracesAlwaysOnRoutesAndFallback(t *testing.T) {
	rc := otlptest.Start(t)
	s := startStack(t, stackOptions{env: map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT":    rc.URL + "/",
		"OTEL_TRACES_SAMPLER":            "always_on",
		"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
	}})
	base := "http://" + s.public
	if err := s.sim.SetFaults(items.Faults{ErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	do(t, base+"/api/v1/ping", nil)
	if resp, err := http.Head(base + "/api/v1/ping"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD /api/v1/ping: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if code, body := do(t, base+"/api/v1/items/7", nil); code != 200 || !strings.Contains(body, `"degraded":true`) {
		t.Fatalf("failing dependency: %d %s", code, body)
	}
	do(t, base+"/healthz", nil)
	flush(t, s)
	names := map[string]int{}
	for _, sp := range rc.Spans() {
		names[sp.GetName()]++
		var limited bool
		for _, e := range sp.GetEvents() {
			limited = limited || e.GetName() == "ratelimit.decision"
		}
		if !limited {
			t.Errorf("span %q has no ratelimit.decision event", sp.GetName())
		}
		// The body size is what was sent: HEAD sends none.
		size, hasSize := attr(sp.GetAttributes(), "http.response.body.size")
		switch sp.GetName() {
		case "GET /api/v1/ping":
			if size.GetIntValue() != int64(len(`{"message":"pong"}`)) {
				t.Errorf("GET span body size %v", size)
			}
		case "HEAD /api/v1/ping":
			if hasSize {
				t.Errorf("HEAD span has a body size: %v", size)
			}
		}
		if sp.GetName() == "GET /api/v1/items/:id" {
			var ev bool
			for _, e := range sp.GetEvents() {
				ev = ev || e.GetName() == "breaker.fallback"
			}
			if !ev {
				t.Errorf("degraded items span has no breaker.fallback event")
			}
			if v, _ := attr(sp.GetAttributes(), "item.degraded"); !v.GetBoolValue() {
				t.Errorf("degraded items span lacks item.degraded")
			}
		}
	}
	if names["GET /api/v1/ping"] != 1 || names["HEAD /api/v1/ping"] != 1 || names["GET /api/v1/items/:id"] != 1 || len(names) != 3 {
		t.Fatalf("span names = %v", names)
	}
}

// Root requests are sampled once, on the ids they end up with: at ratio 0.5
// about half are exported (sampling twice would export a quarter), each
// exported span has the trace and span id its access line logged, the
// others log a trace id that is never exported, and a dependency called by
// an unsampled request gets that trace id marked not sampled.
func TestRootSamplingDecidedOnce(t *testing.T) {
	rc := otlptest.Start(t)
	ds := startDownstream(t)
	s := startStack(t, stackOptions{
		env:        map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL, "OTEL_TRACES_SAMPLER_ARG": "0.5"},
		downstream: ds.url,
	})
	base := "http://" + s.public
	const n = 400
	for range n {
		if code, _ := do(t, base+"/api/v1/ping", nil); code != 200 {
			t.Fatalf("ping = %d", code)
		}
	}
	flush(t, s)
	exported := map[string]string{} // trace id -> span id
	for _, sp := range spanNamed(rc.Spans(), "GET /api/v1/ping") {
		if len(sp.GetParentSpanId()) != 0 {
			t.Errorf("root request exported with a parent: %x", sp.GetParentSpanId())
		}
		exported[hexID(sp.GetTraceId())] = hexID(sp.GetSpanId())
	}
	// Binomial(400, 0.5): mean 200, sd 10.
	if len(exported) < 140 || len(exported) > 260 {
		t.Fatalf("%d of %d root requests exported at ratio 0.5", len(exported), n)
	}
	var logged, unsampled int
	for _, l := range logLines(s.logs, "request") {
		if l["route"] != "/api/v1/ping" {
			continue
		}
		logged++
		tid, _ := l["trace_id"].(string)
		sid, _ := l["span_id"].(string)
		if len(tid) != 32 || len(sid) != 16 {
			t.Fatalf("access line without ids: %v", l)
		}
		if want, ok := exported[tid]; ok {
			if sid != want {
				t.Errorf("trace %s: logged span %s, exported %s", tid, sid, want)
			}
			continue
		}
		unsampled++
	}
	if logged != n || unsampled != n-len(exported) {
		t.Fatalf("%d access lines, %d unsampled; want %d, %d", logged, unsampled, n, n-len(exported))
	}

	// An unsampled root request calling the dependency.
	for i := 0; ; i++ {
		if i == 50 {
			t.Fatal("50 item requests and every one sampled at ratio 0.5")
		}
		before := len(rc.Spans())
		if code, _ := do(t, base+"/api/v1/items/1", nil); code != 200 {
			t.Fatalf("items = %d", code)
		}
		flush(t, s)
		if len(rc.Spans()) != before {
			continue // sampled; try again
		}
		lines := logLines(s.logs, "request")
		tid := lines[len(lines)-1]["trace_id"].(string)
		tp := ds.last().Get("traceparent")
		if !strings.HasPrefix(tp, "00-"+tid+"-") || !strings.HasSuffix(tp, "-00") {
			t.Fatalf("dependency got traceparent %q, want trace %s marked not sampled", tp, tid)
		}
		break
	}
}

// Without an endpoint nothing is exported, but a caller's trace is still
// continued: the logs carry its trace id and the dependency receives it,
// sampled flag intact, so the trace stays joined through this service.
func TestTracingOffStillContinuesCallers(t *testing.T) {
	ds := startDownstream(t)
	s := startStack(t, stackOptions{downstream: ds.url})
	if s.tracing.Exporting() {
		t.Fatal("exporting without an endpoint")
	}
	const caller = "0af7651916cd43dd8448eb211c80319c"
	do(t, "http://"+s.public+"/api/v1/items/1", map[string]string{"traceparent": "00-" + caller + "-b7ad6b7169203331-01"})
	if tp := ds.last().Get("traceparent"); !strings.HasPrefix(tp, "00-"+caller+"-") || !strings.HasSuffix(tp, "-01") || strings.Contains(tp, "b7ad6b7169203331") {
		t.Errorf("dependency got traceparent %q, want trace %s continued by a span of ours, sampled", tp, caller)
	}
	do(t, "http://"+s.public+"/api/v1/ping", nil)
	var continued, root bool
	for _, l := range logLines(s.logs, "request") {
		switch {
		case l["trace_id"] == caller && l["span_id"] != "b7ad6b7169203331":
			continued = true
		case l["route"] == "/api/v1/ping":
			// No caller context and nothing exported: no span, so no
			// made-up trace id; the keys are there, empty (request_id
			// correlates the lines).
			tid, tok := l["trace_id"].(string)
			sid, sok := l["span_id"].(string)
			root = tok && sok && tid == "" && sid == ""
		}
	}
	if !continued || !root {
		t.Fatalf("access lines: continued=%v root-without-id=%v\n%s", continued, root, s.logs)
	}

	// No trace context: the dependency gets no made-up trace id either
	// (none of this service's lines would show it).
	do(t, "http://"+s.public+"/api/v1/items/2", map[string]string{"X-Request-ID": "no-context"})
	if h := ds.last(); h.Get("traceparent") != "" || h.Get("uber-trace-id") != "" {
		t.Errorf("a request without trace context sent the dependency traceparent %q uber-trace-id %q", h.Get("traceparent"), h.Get("uber-trace-id"))
	}
	// Trace headers without a trace to continue: baggage alone goes on, a
	// malformed traceparent is ignored; no trace id is made up for either.
	do(t, "http://"+s.public+"/api/v1/items/3", map[string]string{"X-Request-ID": "baggage-only", "baggage": "k=v"})
	if h := ds.last(); h.Get("traceparent") != "" || h.Get("baggage") != "k=v" {
		t.Errorf("baggage alone: dependency got traceparent %q baggage %q", h.Get("traceparent"), h.Get("baggage"))
	}
	do(t, "http://"+s.public+"/api/v1/items/4", map[string]string{"X-Request-ID": "malformed", "traceparent": "garbage"})
	if h := ds.last(); h.Get("traceparent") != "" {
		t.Errorf("malformed traceparent: dependency got traceparent %q", h.Get("traceparent"))
	}
	for _, l := range logLines(s.logs, "request") {
		switch l["request_id"] {
		case "no-context", "baggage-only", "malformed":
			if l["trace_id"] != "" || l["span_id"] != "" {
				t.Errorf("%s: access line has trace_id %v span_id %v", l["request_id"], l["trace_id"], l["span_id"])
			}
		}
	}
}

func TestSetupTracingFromEnv(t *testing.T) {
	ctx := context.Background()
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	for name, tc := range map[string]struct {
		env       map[string]string
		exporting bool
		contains  string
	}{
		"nothing set":                {nil, false, "off"},
		"endpoint":                   {map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, true, "http://jaeger:4318/v1/traces, sampler parentbased_traceidratio(0.01)"},
		"traces endpoint used as is": {map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom"}, true, "to http://c:4318/custom,"},
		// The specification's defaults: plain HTTP to localhost (the Go
		// exporters' own would speak TLS there).
		"exporter otlp, no endpoint":       {map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, "OTLP http/protobuf to http://localhost:4318/v1/traces,"},
		"exporter otlp, no endpoint, grpc": {map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, true, "OTLP grpc to http://localhost:4317,"},
		"exporter none wins":               {map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318"}, false, "off (OTEL_TRACES_EXPORTER=none)"},
		"protocol any case":                {map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "HTTP/JSON", "OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP"}, true, "OTLP http/json to"},
		"sdk disabled":                     {map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318"}, false, "disabled"},
		"sdk disabled, any case":           {map[string]string{"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318"}, false, "disabled"},
		"sdk not disabled":                 {map[string]string{"OTEL_SDK_DISABLED": "False", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318"}, true, "sampler"},
		"grpc":                             {map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, true, "OTLP grpc to http://j:4317"},
		"sampler and ratio":                {map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}, true, "sampler traceidratio(0.5)"},
		"always_on":                        {map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318", "OTEL_TRACES_SAMPLER": "always_on"}, true, "sampler always_on"},
		"password not described":           {map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://u:s3cret@j:4318"}, true, "to http://u:xxxxx@j:4318/v1/traces,"},
		"batch settings at their bounds": {map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318",
			"OTEL_BSP_MAX_QUEUE_SIZE": "1048576", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1048576", "OTEL_BSP_SCHEDULE_DELAY": "3600000",
			"OTEL_BSP_EXPORT_TIMEOUT": "1", "OTEL_EXPORTER_OTLP_TIMEOUT": "3600000"}, true, "sampler"},
		"batch larger than the default queue, in a larger queue": {map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318",
			"OTEL_BSP_MAX_QUEUE_SIZE": "8192", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"}, true, "sampler"},
	} {
		t.Run(name, func(t *testing.T) {
			tr, err := observability.SetupTracing(ctx, env(tc.env), "v1")
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Shutdown(ctx)
			if tr.Exporting() != tc.exporting || !strings.Contains(tr.String(), tc.contains) {
				t.Fatalf("exporting=%v %q, want %v containing %q", tr.Exporting(), tr.String(), tc.exporting, tc.contains)
			}
		})
	}
	for v, val := range map[string]string{
		"OTEL_TRACES_SAMPLER":                   "jaeger_remote",
		"OTEL_TRACES_SAMPLER_ARG":               "2",
		"OTEL_EXPORTER_OTLP_PROTOCOL":           "carrier-pigeon",
		"OTEL_EXPORTER_OTLP_ENDPOINT":           "jaeger:4318",
		"OTEL_TRACES_EXPORTER":                  "zipkin",
		"OTEL_PROPAGATORS":                      "tracecontext,xray",
		"OTEL_SDK_DISABLED":                     "perhaps",
		"OTEL_EXPORTER_OTLP_TIMEOUT":            "10s",
		"OTEL_EXPORTER_OTLP_HEADERS":            "novalue",
		"OTEL_BSP_MAX_QUEUE_SIZE":               "-1",
		"OTEL_EXPORTER_OTLP_COMPRESSION":        "zip",
		"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT":       "many",
		"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT":     "1k",
		"OTEL_SPAN_EVENT_COUNT_LIMIT":           " 0", // the SDK reads it untrimmed, and ignores it
		"OTEL_EXPORTER_OTLP_CERTIFICATE":        "/nonexistent/ca.pem",
		"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": "tracing_test.go", // a file, but no PEM
		"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "tracing_test.go", // without its key
	} {
		// Checked whether spans are exported or not: with an endpoint,
		// without one (tracing off), and with the exporter turned off.
		for _, base := range []map[string]string{
			{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318"},
			{},
			{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318"},
		} {
			e := map[string]string{v: val}
			for k, bv := range base {
				if k != v {
					e[k] = bv
				}
			}
			_, err := observability.SetupTracing(ctx, env(e), "v1")
			if err == nil || !strings.HasPrefix(err.Error(), v+":") || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s=%q with %v: error %v, want one line starting with the variable", v, val, base, err)
			}
		}
	}
	// More bad values of some of them: numbers that are not ratios, a
	// key=value list with a bad escape (named by its key, not as a header).
	for _, c := range []struct{ v, val, want string }{
		{"OTEL_TRACES_SAMPLER_ARG", "NaN", ""},
		{"OTEL_TRACES_SAMPLER_ARG", "nan", ""},
		{"OTEL_TRACES_SAMPLER_ARG", "-0.1", ""},
		{"OTEL_TRACES_SAMPLER_ARG", "+Inf", ""},
		{"OTEL_TRACES_SAMPLER_ARG", "1.0001", ""},
		{"OTEL_TRACES_SAMPLER_ARG", "0x1p-1x", ""},
		{"OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4318", `OTEL_EXPORTER_OTLP_ENDPOINT: "127.0.0.1:4318" must be an http:// or https:// URL with a host`},
		{"OTEL_RESOURCE_ATTRIBUTES", "team=%zz", `OTEL_RESOURCE_ATTRIBUTES: "team": invalid URL escape "%zz"`},
		{"OTEL_EXPORTER_OTLP_HEADERS", "api-key=%zz", `OTEL_EXPORTER_OTLP_HEADERS: "api-key": invalid URL escape "%zz"`},
		// Headers every export would fail on, and a port no dial takes.
		{"OTEL_EXPORTER_OTLP_HEADERS", "bad key=1", `OTEL_EXPORTER_OTLP_HEADERS: "bad key" is not a valid header name`},
		{"OTEL_EXPORTER_OTLP_HEADERS", "x-api=a%0Ab", `OTEL_EXPORTER_OTLP_HEADERS: the value of "x-api" holds a control character`},
		{"OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api=a%00b", ""},
		{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:99999", `OTEL_EXPORTER_OTLP_ENDPOINT: port "99999" of "http://127.0.0.1:99999" is not between 1 and 65535`},
		{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://j:0/v1/traces", ""},
		// none with others: dropping callers' traces or joining them is a
		// guess either way.
		{"OTEL_PROPAGATORS", "none,tracecontext", `OTEL_PROPAGATORS: none cannot be combined with other propagators, got "none,tracecontext"`},
		{"OTEL_PROPAGATORS", "jaeger, None", ""},
		// Past what the SDK can take: a queue it cannot allocate, a
		// timeout that overflows into a negative duration, a batch larger
		// than the queue (the default 2048).
		{"OTEL_BSP_MAX_QUEUE_SIZE", "2000000000", ""},
		{"OTEL_BSP_MAX_QUEUE_SIZE", "1048577", ""},
		{"OTEL_BSP_SCHEDULE_DELAY", "9999999999999", ""},
		{"OTEL_BSP_EXPORT_TIMEOUT", "3600001", ""},
		{"OTEL_EXPORTER_OTLP_TIMEOUT", "9999999999999", ""},
		{"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0", ""},
		{"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2049", `OTEL_BSP_MAX_EXPORT_BATCH_SIZE: 2049 is larger than the span queue (OTEL_BSP_MAX_QUEUE_SIZE, 2048)`},
		// Booleans are "true" or "false" (any case), as the specification
		// has them: the SDK reads "1" as false and Go's ParseBool as true.
		{"OTEL_SDK_DISABLED", "1", `OTEL_SDK_DISABLED: "1" is not true or false`},
		{"OTEL_SDK_DISABLED", "t", ""},
		{"OTEL_EXPORTER_OTLP_INSECURE", "1", ""},
		{"OTEL_EXPORTER_OTLP_TRACES_INSECURE", "yes", ""},
	} {
		e := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318", c.v: c.val}
		_, err := observability.SetupTracing(ctx, env(e), "v1")
		if err == nil || !strings.HasPrefix(err.Error(), c.v+":") || (c.want != "" && err.Error() != c.want) {
			t.Errorf("%s=%q: error %v, want one naming the variable %s", c.v, c.val, err, c.want)
		}
	}
	// gRPC metadata is stricter than HTTP headers: names in [0-9a-z_.-]
	// (any case), none of gRPC's own, values in printable ASCII.
	for _, h := range []string{"x!key=1", "grpc-timeout=1S", "x-api=%C3%A9", "x-api=a%09b"} {
		_, err := observability.SetupTracing(ctx, env(map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_HEADERS": h}), "v1")
		if err == nil || !strings.HasPrefix(err.Error(), "OTEL_EXPORTER_OTLP_HEADERS:") {
			t.Errorf("gRPC with OTEL_EXPORTER_OTLP_HEADERS=%q: error %v, want one naming the variable", h, err)
		}
	}
	for _, h := range []string{"X-Api-Key=Abc", "trace.bin-bin=%C3%A9"} {
		tr, err := observability.SetupTracing(ctx, env(map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_HEADERS": h}), "v1")
		if err != nil {
			t.Errorf("gRPC with OTEL_EXPORTER_OTLP_HEADERS=%q: %v", h, err)
			continue
		}
		tr.Shutdown(ctx)
	}
	// A bad ratio fails with any sampler, not the day a ratio sampler is
	// chosen.
	for _, sampler := range []string{"always_on", "parentbased_always_off"} {
		_, err := observability.SetupTracing(ctx, env(map[string]string{"OTEL_TRACES_SAMPLER": sampler, "OTEL_TRACES_SAMPLER_ARG": "abc"}), "v1")
		if err == nil || !strings.HasPrefix(err.Error(), "OTEL_TRACES_SAMPLER_ARG:") {
			t.Errorf("OTEL_TRACES_SAMPLER=%s OTEL_TRACES_SAMPLER_ARG=abc: error %v, want one naming OTEL_TRACES_SAMPLER_ARG", sampler, err)
		}
	}
}

// The service name comes from OTEL_SERVICE_NAME, else from service.name in
// OTEL_RESOURCE_ATTRIBUTES, else the default; the spans' resource and the
// start-up log agree.
func TestServiceName(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name, attrs, want string
	}{
		{"", "", observability.DefaultServiceName},
		{"", "team=a,service.name=checkout", "checkout"},
		{"orders", "service.name=checkout", "orders"},
	} {
		e := map[string]string{"OTEL_SERVICE_NAME": c.name, "OTEL_RESOURCE_ATTRIBUTES": c.attrs}
		tr, err := observability.SetupTracing(ctx, func(k string) string { return e[k] }, "v1")
		if err != nil {
			t.Fatal(err)
		}
		rec := tracetest.NewSpanRecorder()
		tr.SDKProvider().RegisterSpanProcessor(rec)
		// Not exporting: a sampled caller's span is continued and recorded.
		parent := trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled, Remote: true}))
		_, span := tr.Provider().Tracer("test").Start(parent, "s")
		span.End()
		var got string
		for _, kv := range rec.Ended()[0].Resource().Attributes() {
			if kv.Key == "service.name" {
				got = kv.Value.AsString()
			}
		}
		logged := ""
		for _, a := range tr.LogValue().Group() {
			if a.Key == "service_name" {
				logged = a.Value.String()
			}
		}
		if got != c.want || logged != c.want {
			t.Errorf("OTEL_SERVICE_NAME=%q OTEL_RESOURCE_ATTRIBUTES=%q: resource %q, logged %q, want %q", c.name, c.attrs, got, logged, c.want)
		}
		_ = tr.Shutdown(ctx)
	}
}

// The default propagators accept both header formats; OTEL_PROPAGATORS
// narrows them.
func TestPropagators(t *testing.T) {
	ctx := context.Background()
	tr, err := observability.SetupTracing(ctx, func(string) string { return "" }, "v1")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Join(tr.Propagator().Fields(), ",")
	for _, f := range []string{"traceparent", "baggage", "uber-trace-id"} {
		if !strings.Contains(fields, f) {
			t.Errorf("default propagators lack %s: %s", f, fields)
		}
	}
	propagators := func(v string) func(string) string {
		return func(k string) string {
			if k == "OTEL_PROPAGATORS" {
				return v
			}
			return ""
		}
	}
	tr2, err := observability.SetupTracing(ctx, propagators("tracecontext"), "v1")
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set("uber-trace-id", "a3ce929d0e0e4736:53995c3f42cd8ad8:0:1")
	if trace.SpanContextFromContext(tr2.Propagator().Extract(ctx, propagation.HeaderCarrier(h))).IsValid() {
		t.Errorf("tracecontext-only propagator accepted uber-trace-id")
	}
	if !trace.SpanContextFromContext(tr.Propagator().Extract(ctx, propagation.HeaderCarrier(h))).IsValid() {
		t.Errorf("default propagators rejected uber-trace-id")
	}
	tr3, err := observability.SetupTracing(ctx, propagators("none"), "v1")
	if err != nil {
		t.Fatal(err)
	}
	if f := tr3.Propagator().Fields(); len(f) != 0 {
		t.Errorf("OTEL_PROPAGATORS=none reads and writes %v", f)
	}
}

// InstallGlobal routes the SDK's own errors (an unreachable collector) to
// the service log, rate limited.
func TestInstallGlobalRoutesSDKErrors(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	logger, _ := observability.NewLogger(logs, "info", "json")
	tr, err := observability.SetupTracing(context.Background(), func(string) string { return "" }, "v1")
	if err != nil {
		t.Fatal(err)
	}
	tr.InstallGlobal(logger)
	if otel.GetTracerProvider() != tr.Provider() {
		t.Error("global tracer provider not installed")
	}
	for range 20 {
		otel.Handle(errors.New("traces export: connection refused"))
	}
	if n := len(logLines(logs, "opentelemetry error")); n < 1 || n > 3 {
		t.Fatalf("%d lines for 20 SDK errors, want 1 to 3:\n%s", n, logs)
	}
	// At exit, the count of the lines held back: 20 in all.
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	lines := logLines(logs, "opentelemetry error")
	total := 0
	for _, l := range lines {
		total++
		if n, ok := l["suppressed"].(float64); ok {
			total += int(n)
			if _, hasErr := l["error"]; !hasErr {
				total-- // the last line only counts
			}
		}
	}
	if total != 20 {
		t.Fatalf("lines and suppressed counts add up to %d for 20 SDK errors:\n%s", total, logs)
	}
}

// TestTracesOverMutualTLS: spans reach a collector that has its own CA and
// demands a client certificate, from the files named by
// OTEL_EXPORTER_OTLP_CERTIFICATE, _CLIENT_CERTIFICATE and _CLIENT_KEY; without
// them nothing gets through.
func TestTracesOverMutualTLS(t *testing.T) {
	ctx := context.Background()
	srvCert, srvPEM, srvKey := testkit.SelfSignedCert(t)
	_, cliPEM, cliKey := testkit.SelfSignedClientCert(t)
	clientCAs := x509.NewCertPool()
	clientCAs.AppendCertsFromPEM(cliPEM)
	rc := otlptest.StartTLS(t, srvCert, clientCAs)
	caFile, _ := testkit.WritePEM(t, srvPEM, srvKey)
	certFile, keyFile := testkit.WritePEM(t, cliPEM, cliKey)

	export := func(extra map[string]string) int {
		t.Helper()
		env := map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL,
			"OTEL_TRACES_SAMPLER":         "always_on",
			"OTEL_EXPORTER_OTLP_TIMEOUT":  "1000",
		}
		for k, v := range extra {
			env[k] = v
		}
		tr, err := observability.SetupTracing(ctx, func(k string) string { return env[k] }, "v1")
		if err != nil {
			t.Fatal(err)
		}
		before := len(rc.Spans())
		_, span := tr.Provider().Tracer("test").Start(ctx, "over-tls")
		span.End()
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_ = tr.ForceFlush(fctx)
		cancel()
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_ = tr.Shutdown(sctx)
		cancel()
		return len(rc.Spans()) - before
	}
	if n := export(map[string]string{"OTEL_EXPORTER_OTLP_CERTIFICATE": caFile}); n != 0 {
		t.Errorf("without a client certificate %d spans got through", n)
	}
	if n := export(map[string]string{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": certFile, "OTEL_EXPORTER_OTLP_CLIENT_KEY": keyFile}); n != 0 {
		t.Errorf("without the collector's CA %d spans got through", n)
	}
	if n := export(map[string]string{
		"OTEL_EXPORTER_OTLP_CERTIFICATE":               caFile,
		"OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": certFile,
		"OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY":         keyFile,
	}); n != 1 {
		t.Errorf("with the CA and the client certificate %d spans arrived, want 1", n)
	}
}

// TestGRPCExportSchemeWins: an https:// gRPC endpoint is spoken to over
// TLS whatever OTEL_EXPORTER_OTLP_INSECURE says (the specification applies
// it only to an endpoint without a scheme), and an http:// one in plain
// text whatever certificate files are set: what reaches a listener there
// starts with a TLS handshake record, or with HTTP/2's preface.
func TestGRPCExportSchemeWins(t *testing.T) {
	ctx := context.Background()
	_, caPEM, caKey := testkit.SelfSignedCert(t)
	caFile, _ := testkit.WritePEM(t, caPEM, caKey)
	firstBytes := func(scheme string, extra map[string]string) []byte {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		env := map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": scheme + "://" + ln.Addr().String(),
			"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			"OTEL_TRACES_SAMPLER":         "always_on",
			"OTEL_EXPORTER_OTLP_TIMEOUT":  "500",
		}
		for k, v := range extra {
			env[k] = v
		}
		tr, err := observability.SetupTracing(ctx, func(k string) string { return env[k] }, "v1")
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan []byte, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				got <- nil
				return
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 3)
			n, _ := io.ReadFull(c, b)
			got <- b[:n]
		}()
		_, span := tr.Provider().Tracer("test").Start(ctx, "scheme")
		span.End()
		fctx, cancel := context.WithTimeout(ctx, time.Second)
		_ = tr.ForceFlush(fctx)
		cancel()
		var b []byte
		select {
		case b = <-got:
		case <-time.After(5 * time.Second):
		}
		sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		_ = tr.Shutdown(sctx)
		cancel()
		return b
	}
	if b := firstBytes("https", map[string]string{"OTEL_EXPORTER_OTLP_INSECURE": "true"}); len(b) < 1 || b[0] != 0x16 {
		t.Errorf("https:// endpoint with INSECURE=true: first bytes %q, want a TLS handshake record (0x16)", b)
	}
	if b := firstBytes("http", map[string]string{"OTEL_EXPORTER_OTLP_CERTIFICATE": caFile}); string(b) != "PRI" {
		t.Errorf("http:// endpoint with a CA file: first bytes %q, want HTTP/2's plain-text preface", b)
	}
}

// TestIncomingContextForms: what callers really send. A request with both
// traceparent and uber-trace-id continues the W3C context, with its
// sampling decision and tracestate; jaeger-client-go's HTTP propagator
// sends uber-trace-id URL-encoded; W3C baggage may come in several lines.
func TestIncomingContextForms(t *testing.T) {
	ds := startDownstream(t)
	s := startStack(t, stackOptions{downstream: ds.url})
	get := func(h http.Header) http.Header {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+s.public+"/api/v1/items/1", nil)
		req.Header = h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return ds.last()
	}
	const w3c, jTrace = "0af7651916cd43dd8448eb211c80319c", "a3ce929d0e0e4736a3ce929d0e0e4736"

	both := http.Header{}
	both.Set("traceparent", "00-"+w3c+"-b7ad6b7169203331-00")
	both.Set("tracestate", "congo=t61rcWkgMzE")
	both.Set("uber-trace-id", jTrace+":00f067aa0ba902b7:0:1")
	out := get(both)
	if tp := out.Get("traceparent"); !strings.HasPrefix(tp, "00-"+w3c+"-") || !strings.HasSuffix(tp, "-00") || out.Get("tracestate") != "congo=t61rcWkgMzE" {
		t.Errorf("traceparent and uber-trace-id: dependency got traceparent %q tracestate %q, want the W3C trace %s, unsampled, its tracestate",
			tp, out.Get("tracestate"), w3c)
	}

	encoded := http.Header{}
	encoded.Set("uber-trace-id", jTrace+"%3A00f067aa0ba902b7%3A0%3A1")
	if tp := get(encoded).Get("traceparent"); !strings.HasPrefix(tp, "00-"+jTrace+"-") || !strings.HasSuffix(tp, "-01") {
		t.Errorf("URL-encoded uber-trace-id: dependency got traceparent %q, want trace %s continued, sampled", tp, jTrace)
	}

	bag := http.Header{}
	bag.Set("traceparent", "00-"+w3c+"-b7ad6b7169203331-01")
	bag.Add("baggage", "a=1")
	bag.Add("baggage", "b=2")
	if b := strings.Join(get(bag).Values("baggage"), ","); !strings.Contains(b, "a=1") || !strings.Contains(b, "b=2") {
		t.Errorf("two baggage lines: dependency got baggage %q, want a=1 and b=2", b)
	}
	// W3C's limit, 8192 bytes: under it the baggage goes on, over it
	// none of it does (as the README says).
	for size, want := range map[int]bool{8000: true, 9000: false} {
		big := http.Header{}
		big.Set("traceparent", "00-"+w3c+"-b7ad6b7169203331-01")
		big.Set("baggage", "k="+strings.Repeat("v", size-2))
		if got := get(big).Get("baggage") != ""; got != want {
			t.Errorf("a %d-byte baggage passed on: %v, want %v", size, got, want)
		}
	}

	// Several tracestate lines are one list: each vendor's entry goes on.
	states := http.Header{}
	states.Set("traceparent", "00-"+w3c+"-b7ad6b7169203331-01")
	states.Add("tracestate", "congo=t61rcWkgMzE")
	states.Add("tracestate", "rojo=00f067aa0ba902b7")
	if ts := get(states).Get("tracestate"); !strings.Contains(ts, "congo=t61rcWkgMzE") || !strings.Contains(ts, "rojo=00f067aa0ba902b7") {
		t.Errorf("two tracestate lines: dependency got tracestate %q, want congo and rojo", ts)
	}

	// Two traceparent lines are no parent: a new trace, not the first line's.
	twice := http.Header{}
	twice.Add("traceparent", "00-"+w3c+"-b7ad6b7169203331-01")
	twice.Add("traceparent", "00-"+jTrace+"-00f067aa0ba902b7-01")
	if tp := get(twice).Get("traceparent"); strings.Contains(tp, w3c) || strings.Contains(tp, jTrace) {
		t.Errorf("two traceparent lines: dependency got traceparent %q, want a new trace", tp)
	}
}

// OTEL_SDK_DISABLED=true is no tracing at all, as documented: not even the
// caller's context is read or passed on.
func TestSDKDisabledPropagatesNothing(t *testing.T) {
	tr, err := observability.SetupTracing(context.Background(), func(k string) string {
		if k == "OTEL_SDK_DISABLED" {
			return "true"
		}
		return ""
	}, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if f := tr.Propagator().Fields(); len(f) != 0 {
		t.Errorf("disabled tracing reads and writes %v", f)
	}
	h := http.Header{}
	h.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	h.Set("uber-trace-id", "a3ce929d0e0e4736:53995c3f42cd8ad8:0:1")
	if trace.SpanContextFromContext(tr.Propagator().Extract(context.Background(), propagation.HeaderCarrier(h))).IsValid() {
		t.Error("disabled tracing continued the caller's trace")
	}
}

// TestServerSpanSemconv: the server span's name and attributes by the HTTP
// semantic conventions: server.address without the port (server.port on
// its own), url.query with signatures redacted, and for a method outside
// HTTP's own the name "HTTP" and the original method.
func TestServerSpanSemconv(t *testing.T) {
	rc := otlptest.Start(t)
	s := startStack(t, stackOptions{env: map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL,
		"OTEL_TRACES_SAMPLER":         "always_on",
	}})
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.public+"/api/v1/ping?a=1&sig=secret&b=2", nil)
	req.Host = "api.example.com:8443"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	req, _ = http.NewRequest("PROPFIND", "http://"+s.public+"/api/v1/ping", nil)
	req.Host = "[::1]"
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	flush(t, s)
	str := func(sp *tracepb.Span, k string) string {
		v, _ := attr(sp.GetAttributes(), k)
		return v.GetStringValue()
	}
	var get, other *tracepb.Span
	for _, sp := range rc.Spans() {
		switch sp.GetName() {
		case "GET /api/v1/ping":
			get = sp
		case "HTTP": // an unmatched route: the method alone
			other = sp
		}
	}
	if get == nil || other == nil {
		var names []string
		for _, sp := range rc.Spans() {
			names = append(names, sp.GetName())
		}
		t.Fatalf("spans %v, want GET /api/v1/ping and HTTP", names)
	}
	if a := str(get, "server.address"); a != "api.example.com" {
		t.Errorf("server.address %q", a)
	}
	if p, _ := attr(get.GetAttributes(), "server.port"); p.GetIntValue() != 8443 {
		t.Errorf("server.port %v", p)
	}
	if q := str(get, "url.query"); q != "a=1&sig=REDACTED&b=2" {
		t.Errorf("url.query %q", q)
	}
	if m, o := str(other, "http.request.method"), str(other, "http.request.method_original"); m != "_OTHER" || o != "PROPFIND" {
		t.Errorf("method %q, original %q", m, o)
	}
	if a := str(other, "server.address"); a != "::1" {
		t.Errorf("server.address of [::1]: %q", a)
	}
	if _, has := attr(other.GetAttributes(), "server.port"); has {
		t.Error("server.port without a port in Host")
	}
}

// TestShutdownWaitsForOpenServerSpans: a request still in its handlers when
// tracing shuts down (at exit, one the forced close cut and that is still
// unwinding) ends its span a moment later; Shutdown waits for it, so that
// span is exported rather than lost. One that never ends costs the exit
// about a second, not the spans already ended.
func TestShutdownWaitsForOpenServerSpans(t *testing.T) {
	rc := otlptest.Start(t)
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL, "OTEL_TRACES_SAMPLER": "always_on"}
	tr, err := observability.SetupTracing(context.Background(), func(k string) string { return env[k] }, "v1")
	if err != nil {
		t.Fatal(err)
	}
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.Use(tr.Middleware())
	entered, release := make(chan string, 2), make(chan struct{})
	e.GET("/slow/:name", func(c *gin.Context) {
		entered <- c.Param("name")
		if c.Param("name") == "stuck" {
			<-c.Request.Context().Done() // until the client gives up
		} else {
			<-release
		}
		c.Status(http.StatusNoContent)
	})
	e.GET("/fast", func(c *gin.Context) { c.Status(http.StatusNoContent) })
	srv := httptest.NewServer(e)
	defer srv.Close()

	do(t, srv.URL+"/fast", nil)
	go func() { _, _ = http.Get(srv.URL + "/slow/late") }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/slow/stuck", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	<-entered
	time.AfterFunc(200*time.Millisecond, func() { close(release) })
	start := time.Now()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	took := time.Since(start)
	names := map[string]bool{}
	for _, sp := range rc.Spans() {
		names[sp.GetName()] = true
	}
	if !names["GET /fast"] || !names["GET /slow/:name"] {
		t.Errorf("exported spans %v: want GET /fast and the one that ended during the shutdown", names)
	}
	// The stuck request's span is still open: Shutdown gave up on it after
	// about a second rather than waiting for it.
	if took < 200*time.Millisecond || took > 5*time.Second {
		t.Errorf("shutdown took %v: want it to wait for the open spans, about a second at most", took)
	}
	// A second Shutdown (run's deferred one) is a no-op and does not wait
	// for the stuck span again.
	start = time.Now()
	_ = tr.Shutdown(context.Background())
	if again := time.Since(start); again > 500*time.Millisecond {
		t.Errorf("a second shutdown waited %v for the span still open", again)
	}
}
