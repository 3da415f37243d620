package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/hardenedgo/ginservice/internal/health"
	"github.com/hardenedgo/ginservice/internal/items"
	"github.com/hardenedgo/ginservice/internal/observability"
	"github.com/hardenedgo/ginservice/internal/problem"
)

type fixture struct {
	h     http.Handler
	logs  *testkit.SyncBuffer
	reg   *prometheus.Registry
	ready *health.Readiness
	m     *observability.HTTPMetrics
}

type itemsFunc func(ctx context.Context, id string) (items.Item, error)

func (f itemsFunc) Get(ctx context.Context, id string) (items.Item, error) { return f(ctx, id) }

func newFixture(t *testing.T, mod func(*Deps)) *fixture {
	t.Helper()
	logs := &testkit.SyncBuffer{}
	logger, err := observability.NewLogger(logs, "debug", "json")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := observability.NewHTTPMetrics(reg)
	ready := health.NewReadiness()
	ready.SetReady()
	d := Deps{
		Logger:       logger,
		Metrics:      m,
		Readiness:    ready,
		Items:        items.NewSimulated(),
		MaxBodyBytes: 64,
	}
	if mod != nil {
		mod(&d)
	}
	return &fixture{h: NewServer(d), logs: logs, reg: reg, ready: ready, m: m}
}

func (f *fixture) do(req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	return rec
}

func TestRoutes(t *testing.T) {
	f := newFixture(t, func(d *Deps) {
		d.Items = itemsFunc(func(ctx context.Context, id string) (items.Item, error) {
			switch id {
			case "missing":
				return items.Item{}, items.ErrNotFound
			case "broken":
				return items.Item{}, errors.New("db on fire: password=hunter2")
			case "fallback":
				return items.Item{ID: id, Degraded: true, Source: "fallback"}, nil
			}
			return items.Item{ID: id, Name: "n", Source: "test"}, nil
		})
	})
	tests := []struct {
		name        string
		method      string
		path        string
		body        string
		header      map[string]string
		wantStatus  int
		wantProblem bool
		wantBody    string // substring
		wantHeader  map[string]string
	}{
		{name: "healthz", method: "GET", path: "/healthz", wantStatus: 200, wantBody: `"status":"ok"`},
		{name: "readyz", method: "GET", path: "/readyz", wantStatus: 200, wantBody: `"status":"ok"`},
		{name: "ping", method: "GET", path: "/api/v1/ping", wantStatus: 200, wantBody: `{"message":"pong"}`},
		{name: "item", method: "GET", path: "/api/v1/items/7", wantStatus: 200, wantBody: `"id":"7"`},
		{name: "item not found", method: "GET", path: "/api/v1/items/missing", wantStatus: 404, wantProblem: true},
		{name: "item dependency failure hides details", method: "GET", path: "/api/v1/items/broken", wantStatus: 503, wantProblem: true, wantBody: "items dependency unavailable"},
		{name: "item degraded", method: "GET", path: "/api/v1/items/fallback", wantStatus: 200, wantBody: `"degraded":true`, wantHeader: map[string]string{"X-Degraded": "true"}},
		{name: "item id too long", method: "GET", path: "/api/v1/items/" + strings.Repeat("x", 65), wantStatus: 400, wantProblem: true},
		{name: "item id dot-dot", method: "GET", path: "/api/v1/items/%2E%2E", wantStatus: 400, wantProblem: true},
		{name: "item id dot", method: "GET", path: "/api/v1/items/%2E", wantStatus: 400, wantProblem: true},
		{name: "item id with dots", method: "GET", path: "/api/v1/items/a..b", wantStatus: 200, wantBody: `"id":"a..b"`},
		{name: "echo", method: "POST", path: "/api/v1/echo", body: `{"a":[1,2]}`, wantStatus: 200, wantBody: `{"a":[1,2]}`},
		{name: "echo malformed", method: "POST", path: "/api/v1/echo", body: `{"a":`, wantStatus: 400, wantProblem: true, wantBody: "not valid JSON"},
		{name: "echo empty", method: "POST", path: "/api/v1/echo", body: ``, wantStatus: 400, wantProblem: true},
		{name: "echo too large", method: "POST", path: "/api/v1/echo", body: `{"a":"` + strings.Repeat("x", 100) + `"}`, wantStatus: 413, wantProblem: true},
		{name: "not found", method: "GET", path: "/nope", wantStatus: 404, wantProblem: true},
		{name: "method not allowed", method: "DELETE", path: "/api/v1/ping", wantStatus: 405, wantProblem: true, wantHeader: map[string]string{"Allow": "GET, HEAD"}},
		{name: "head healthz", method: "HEAD", path: "/healthz", wantStatus: 200},
		{name: "head readyz", method: "HEAD", path: "/readyz", wantStatus: 200},
		{name: "head ping", method: "HEAD", path: "/api/v1/ping", wantStatus: 200},
		{name: "head item", method: "HEAD", path: "/api/v1/items/7", wantStatus: 200},
		{name: "head on a POST route", method: "HEAD", path: "/api/v1/echo", wantStatus: 405, wantProblem: true, wantHeader: map[string]string{"Allow": "POST"}},
		{name: "trailing slash is not redirected", method: "GET", path: "/api/v1/ping/", wantStatus: 404, wantProblem: true},
		{name: "trailing slash on POST", method: "POST", path: "/api/v1/echo/", body: `{}`, wantStatus: 404, wantProblem: true},
		{name: "missing trailing slash", method: "GET", path: "/api/v1/items", wantStatus: 404, wantProblem: true},
		{name: "echo wrong method", method: "GET", path: "/api/v1/echo", wantStatus: 405, wantProblem: true},
		{name: "request id echoed", method: "GET", path: "/api/v1/ping", header: map[string]string{"X-Request-ID": "abc-123.x:y_z"}, wantStatus: 200, wantHeader: map[string]string{"X-Request-ID": "abc-123.x:y_z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			req := httptest.NewRequest(tt.method, tt.path, body)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			rec := f.do(req)
			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d; body %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if id := rec.Header().Get("X-Request-ID"); id == "" {
				t.Error("no X-Request-ID on the response")
			}
			if tt.wantProblem {
				if ct := rec.Header().Get("Content-Type"); ct != problem.ContentType {
					t.Errorf("Content-Type = %q, want %q", ct, problem.ContentType)
				}
				var p problem.Details
				if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
					t.Fatalf("problem body: %v: %s", err, rec.Body)
				}
				if p.Status != tt.wantStatus || p.Title == "" || p.Type == "" {
					t.Errorf("problem = %+v", p)
				}
				if p.RequestID != rec.Header().Get("X-Request-ID") {
					t.Errorf("problem request_id %q != header %q", p.RequestID, rec.Header().Get("X-Request-ID"))
				}
				if strings.Contains(rec.Body.String(), "hunter2") {
					t.Errorf("internal error detail leaked: %s", rec.Body)
				}
			}
			if tt.wantBody != "" && !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("body %q does not contain %q", rec.Body, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if got := rec.Header().Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestRequestIDValidation(t *testing.T) {
	f := newFixture(t, nil)
	for _, bad := range []string{"", strings.Repeat("a", 129), "has space", "inj\"ect", "new\nline", "é"} {
		req := httptest.NewRequest("GET", "/api/v1/ping", nil)
		req.Header.Set("X-Request-ID", bad)
		rec := f.do(req)
		got := rec.Header().Get("X-Request-ID")
		if got == bad || !validRequestID(got) {
			t.Errorf("incoming %q: response id %q, want a fresh valid one", bad, got)
		}
	}
	ok := strings.Repeat("a", 128)
	req := httptest.NewRequest("GET", "/api/v1/ping", nil)
	req.Header.Set("X-Request-ID", ok)
	if got := f.do(req).Header().Get("X-Request-ID"); got != ok {
		t.Errorf("128-char id not echoed: %q", got)
	}
}

func TestPanicIsRecovered(t *testing.T) {
	f := newFixture(t, func(d *Deps) {
		d.Items = itemsFunc(func(context.Context, string) (items.Item, error) { panic("boom") })
	})
	for range 3 {
		rec := f.do(httptest.NewRequest("GET", "/api/v1/items/1", nil))
		if rec.Code != 500 || rec.Header().Get("Content-Type") != problem.ContentType {
			t.Fatalf("status %d ct %q", rec.Code, rec.Header().Get("Content-Type"))
		}
		if strings.Contains(rec.Body.String(), "boom") {
			t.Fatalf("panic value leaked to the client: %s", rec.Body)
		}
	}
	if n := testutil.ToFloat64(f.m.PanicsCounter("/api/v1/items/:id")); n != 3 {
		t.Errorf("panics counted %v, want 3", n)
	}
	logs := f.logs.String()
	if !strings.Contains(logs, `"panic":"boom"`) || !strings.Contains(logs, "goroutine") {
		t.Errorf("panic not logged with a stack:\n%s", logs)
	}
	if !strings.Contains(logs, `"status":500`) {
		t.Errorf("access line for the panic does not say 500:\n%s", logs)
	}
	// The server still serves.
	if rec := f.do(httptest.NewRequest("GET", "/api/v1/ping", nil)); rec.Code != 200 {
		t.Fatalf("after panics: %d", rec.Code)
	}
}

// A handler that panics after its status line is out cannot get a 500:
// the response is cut (the connection on HTTP/1, the stream on HTTP/2),
// so the client sees it broken instead of a complete-looking 200, and the
// request is logged and counted as 500. So is a handler that aborts its
// response on purpose (http.ErrAbortHandler), which no line used to
// record. Over real connections: an in-process recorder cannot show what
// the client reads.
func TestPanicAfterTheFirstWriteCutsTheResponse(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "http1", true: "http2"}[h2], func(t *testing.T) {
			logs := &testkit.SyncBuffer{}
			logger, err := observability.NewLogger(logs, "info", "json")
			if err != nil {
				t.Fatal(err)
			}
			m := observability.NewHTTPMetrics(prometheus.NewRegistry())
			e := gin.New()
			e.Use(middlewares(Deps{Logger: logger, Metrics: m, MaxBodyBytes: 1 << 20})...)
			e.GET("/stream", func(c *gin.Context) {
				c.Status(http.StatusOK)
				_, _ = c.Writer.WriteString(`{"items":[1,2,`)
				c.Writer.Flush()
				panic("boom")
			})
			e.GET("/abort", func(c *gin.Context) { panic(http.ErrAbortHandler) })
			e.GET("/ok", func(c *gin.Context) { c.String(http.StatusOK, "ok") })
			srv := httptest.NewUnstartedServer(e)
			srv.Config.ErrorLog = log.New(io.Discard, "", 0) // HTTP/2 logs the abort
			if h2 {
				srv.EnableHTTP2 = true
				srv.StartTLS()
			} else {
				srv.Start()
			}
			defer srv.Close()
			client := srv.Client()

			for _, path := range []string{"/stream", "/abort"} {
				resp, err := client.Get(srv.URL + path)
				if err == nil {
					body, rerr := io.ReadAll(resp.Body)
					resp.Body.Close()
					if rerr == nil {
						t.Errorf("%s: status %d, body %q read without an error: a cut response looks complete", path, resp.StatusCode, body)
					}
				}
			}
			if n := testutil.ToFloat64(m.RequestsCounter("GET", "/stream", "500")); n != 1 {
				t.Errorf("/stream counted %v times as 500, want 1", n)
			}
			if n := testutil.ToFloat64(m.RequestsCounter("GET", "/stream", "200")); n != 0 {
				t.Errorf("/stream counted %v times as 200, want 0", n)
			}
			if n := testutil.ToFloat64(m.RequestsCounter("GET", "/abort", "500")); n != 1 {
				t.Errorf("/abort counted %v times as 500, want 1", n)
			}
			if n := testutil.ToFloat64(m.PanicsCounter("/stream")); n != 1 {
				t.Errorf("panics on /stream: %v, want 1", n)
			}
			var lines int
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, `"msg":"request"`) && (strings.Contains(l, `"route":"/stream"`) || strings.Contains(l, `"route":"/abort"`)) {
					lines++
					if !strings.Contains(l, `"status":500`) || !strings.Contains(l, `"level":"ERROR"`) {
						t.Errorf("access line of a cut response: %s", l)
					}
				}
			}
			if lines != 2 {
				t.Errorf("%d access lines for the two cut responses, want 2:\n%s", lines, logs)
			}
			if resp, err := client.Get(srv.URL + "/ok"); err != nil || resp.StatusCode != 200 {
				t.Fatalf("after the cut responses: %v", err)
			} else {
				resp.Body.Close()
			}
		})
	}
}

// A handler that ran into HTTP_READ_TIMEOUT on its body, wrote part of a
// response and panicked: the response is cut, counted once as 500. The
// connection wrapper's 408 for headers cut off by a deadline is not sent
// on top of it: this request reached the handlers.
func TestCutResponseAfterBodyTimeoutGetsNo408(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	logger, err := observability.NewLogger(logs, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := observability.NewHTTPMetrics(reg)
	cm := observability.NewConnMetrics(reg, logger)
	e := gin.New()
	e.Use(middlewares(Deps{Logger: logger, Metrics: m, MaxBodyBytes: 1 << 20})...)
	e.POST("/upload", func(c *gin.Context) {
		_, _ = io.ReadAll(c.Request.Body) // runs into the read timeout
		c.Status(http.StatusOK)
		_, _ = c.Writer.WriteString(`{"items":[1,2,`)
		panic("boom")
	})
	srv := &http.Server{Handler: e, ReadTimeout: 300 * time.Millisecond, ConnState: cm.ConnState, ConnContext: cm.ConnContext,
		ErrorLog: log.New(io.Discard, "", 0)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(cm.Listener(ln))
	defer srv.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	raw, _ := io.ReadAll(c)
	if strings.Contains(string(raw), " 408 ") {
		t.Errorf("a 408 was sent for a request the handler had taken: %q", raw)
	}
	if n := testutil.ToFloat64(m.RequestsCounter("POST", "/upload", "500")); n != 1 {
		t.Errorf("counted %v times as 500, want 1", n)
	}
	if strings.Contains(logs.String(), `"msg":"request rejected"`) {
		t.Errorf("also logged as rejected:\n%s", logs)
	}
}

// A recorded span of a request that panicked says why, whether the
// recovery answered 500 or had to cut a response already begun.
func TestPanicSpanSaysWhy(t *testing.T) {
	tr, err := observability.SetupTracing(context.Background(), func(string) string { return "" }, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	rec := tracetest.NewSpanRecorder()
	tr.SDKProvider().RegisterSpanProcessor(rec)
	f := newFixture(t, func(d *Deps) {
		d.Tracing = tr.Middleware()
		d.Items = itemsFunc(func(context.Context, string) (items.Item, error) { panic("boom") })
	})
	// Tracing does not export here: a sampled caller's span is continued
	// and recorded.
	req := httptest.NewRequest("GET", "/api/v1/items/1", nil)
	req.Header.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	if rec := f.do(req); rec.Code != 500 {
		t.Fatalf("status %d", rec.Code)
	}
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	if st := spans[0].Status(); st.Code != codes.Error || !strings.Contains(st.Description, "panic: boom") {
		t.Errorf("span status %+v, want an error saying panic: boom", st)
	}

	// A panic after the first write: the response is cut, and the span,
	// which the tracing middleware does not complete on a panic, still
	// gets the 500 and the reason.
	logger, err := observability.NewLogger(io.Discard, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	e := gin.New()
	e.Use(middlewares(Deps{Logger: logger, Metrics: observability.NewHTTPMetrics(prometheus.NewRegistry()), Tracing: tr.Middleware(), MaxBodyBytes: 1 << 20})...)
	e.GET("/stream", func(c *gin.Context) {
		c.Status(http.StatusOK)
		_, _ = c.Writer.WriteString(`{"items":[1,`)
		c.Writer.Flush()
		panic("boom")
	})
	srv := httptest.NewUnstartedServer(e)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	defer srv.Close()
	req2, _ := http.NewRequest("GET", srv.URL+"/stream", nil)
	req2.Header.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203331-01")
	if resp, err := http.DefaultClient.Do(req2); err == nil {
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	var cut sdktrace.ReadOnlySpan
	for _, sp := range rec.Ended() {
		if sp.Name() == "GET /stream" {
			cut = sp
		}
	}
	if cut == nil {
		t.Fatalf("no span for the cut response")
	}
	code := int64(0)
	for _, kv := range cut.Attributes() {
		if kv.Key == "http.response.status_code" {
			code = kv.Value.AsInt64()
		}
	}
	if st := cut.Status(); code != 500 || st.Code != codes.Error || !strings.Contains(st.Description, "panic: boom") {
		t.Errorf("cut response's span: status code %d, status %+v; want 500 and an error saying panic: boom", code, st)
	}
	// The http.ErrAbortHandler that cut it is no crash of its own: the
	// span has no "exception" event for it (only the status above).
	for _, ev := range cut.Events() {
		if ev.Name == "exception" {
			t.Errorf("cut response's span has an exception event %v", ev.Attributes)
		}
	}
}

func TestReadinessLifecycle(t *testing.T) {
	ready := health.NewReadiness()
	f := newFixture(t, func(d *Deps) { d.Readiness = ready })
	check := func(want int, wantStatus string) {
		t.Helper()
		rec := f.do(httptest.NewRequest("GET", "/readyz", nil))
		var rep health.Report
		_ = json.Unmarshal(rec.Body.Bytes(), &rep)
		if rec.Code != want || rep.Status != wantStatus {
			t.Fatalf("readyz = %d %q, want %d %q", rec.Code, rep.Status, want, wantStatus)
		}
	}
	check(503, "starting")
	ready.SetReady()
	check(200, "ok")
	state := health.StatusDegraded
	ready.Register("redis", func(context.Context) health.Status { return state })
	check(200, "degraded")
	state = health.StatusDown
	check(503, "down")
	state = health.StatusOK
	check(200, "ok")
	ready.SetShuttingDown()
	check(503, "shutting_down")
	// Liveness is unaffected by readiness.
	if rec := f.do(httptest.NewRequest("GET", "/healthz", nil)); rec.Code != 200 {
		t.Fatalf("healthz during shutdown = %d", rec.Code)
	}
}

func TestAccessLogAndMetrics(t *testing.T) {
	f := newFixture(t, nil)
	req := httptest.NewRequest("GET", "/api/v1/items/12345", nil)
	req.Header.Set("X-Request-ID", "req-1")
	f.do(req)
	f.do(httptest.NewRequest("GET", "/healthz", nil))
	f.do(httptest.NewRequest("GET", "/some/random/path", nil))

	var line map[string]any
	for _, l := range strings.Split(strings.TrimSpace(f.logs.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["request_id"] == "req-1" {
			line = m
		}
		if strings.Contains(l, `"route":"/healthz"`) {
			t.Errorf("probe was access-logged: %s", l)
		}
	}
	if line == nil {
		t.Fatalf("no access line for req-1:\n%s", f.logs)
	}
	for _, k := range []string{"method", "route", "status", "latency_ms", "bytes", "client_ip", "request_id", "trace_id", "span_id"} {
		if _, ok := line[k]; !ok {
			t.Errorf("access line lacks %q: %v", k, line)
		}
	}
	if line["route"] != "/api/v1/items/:id" || line["status"] != float64(200) {
		t.Errorf("access line = %v", line)
	}
	if n := testutil.ToFloat64(f.m.RequestsCounter("GET", "/api/v1/items/:id", "200")); n != 1 {
		t.Errorf("requests{route=template} = %v, want 1", n)
	}
	if n := testutil.ToFloat64(f.m.RequestsCounter("GET", observability.RouteUnmatched, "404")); n != 1 {
		t.Errorf("requests{route=unmatched} = %v, want 1", n)
	}
	// No raw path ever becomes a label value.
	mfs, _ := f.reg.Gather()
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if strings.Contains(lp.GetValue(), "12345") || strings.Contains(lp.GetValue(), "random") {
					t.Errorf("%s has raw path label %s=%s", mf.GetName(), lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}

// A long path (up to the 64 KB header limit) is cut in the access line, for
// matched and unmatched routes alike: one request, one line of bounded size.
func TestLongPathIsCutInTheAccessLine(t *testing.T) {
	long := strings.Repeat("x", 30<<10)
	for _, p := range []string{"/api/v1/items/" + long, "/no/such/route/" + long} {
		f := newFixture(t, nil)
		f.do(httptest.NewRequest("GET", p, nil))
		lines := strings.Split(strings.TrimSpace(f.logs.String()), "\n")
		if len(lines) != 1 {
			t.Fatalf("GET %.30s…: %d log lines, want 1", p, len(lines))
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(lines[0]), &m); err != nil {
			t.Fatalf("access line: %v", err)
		}
		got, _ := m["path"].(string)
		want := p[:observability.MaxLoggedPath] + "…(+" + strconv.Itoa(len(p)-observability.MaxLoggedPath) + " bytes)"
		if got != want {
			t.Errorf("GET %.30s… (%d bytes): path logged as %.40q… (%d bytes), want the first %d bytes and the count", p, len(p), got, len(got), observability.MaxLoggedPath)
		}
		if len(lines[0]) > observability.MaxLoggedPath+1024 {
			t.Errorf("access line of %d bytes for a %d-byte path", len(lines[0]), len(p))
		}
	}
}

func TestClientGoneIsLogged499(t *testing.T) {
	started := make(chan struct{})
	f := newFixture(t, func(d *Deps) {
		d.Items = itemsFunc(func(ctx context.Context, id string) (items.Item, error) {
			close(started)
			<-ctx.Done()
			return items.Item{}, ctx.Err()
		})
	})
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest("GET", "/api/v1/items/1", nil).WithContext(ctx)
	done := make(chan struct{})
	cut := false
	go func() {
		defer close(done)
		// The handler cuts the response as net/http's http.ErrAbortHandler
		// does; net/http recovers it, here the test does.
		defer func() {
			if v := recover(); v != nil {
				if v != http.ErrAbortHandler {
					panic(v)
				}
				cut = true
			}
		}()
		f.do(req)
	}()
	<-started
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("handler did not return after the client left")
	}
	if !cut {
		t.Error("the response to a client that left was not cut (http.ErrAbortHandler)")
	}
	logs := f.logs.String()
	if c := strings.Count(logs, `"msg":"request"`); c != 1 {
		t.Fatalf("%d access lines, want exactly 1:\n%s", c, logs)
	}
	if !strings.Contains(logs, `"status":499`) || strings.Contains(logs, `"status":500`) || strings.Contains(logs, `"status":503`) {
		t.Errorf("client abort not logged as 499:\n%s", logs)
	}
	if n := testutil.ToFloat64(f.m.AbortsCounter("/api/v1/items/:id")); n != 1 {
		t.Errorf("aborts = %v, want 1", n)
	}
}

// truncatedReader yields part of a body and then fails like a connection
// that closed early.
type truncatedReader struct{ r io.Reader }

func (t truncatedReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err == io.EOF {
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

func TestTruncatedBody(t *testing.T) {
	f := newFixture(t, nil)
	req := httptest.NewRequest("POST", "/api/v1/echo", truncatedReader{strings.NewReader(`{"a":`)})
	rec := f.do(req)
	if rec.Code >= 500 {
		t.Fatalf("truncated body got %d", rec.Code)
	}
	if !strings.Contains(f.logs.String(), `"status":499`) {
		t.Errorf("truncated body not logged as 499:\n%s", f.logs)
	}
	if n := testutil.ToFloat64(f.m.TruncatedCounter("/api/v1/echo")); n != 1 {
		t.Errorf("truncated = %v, want 1", n)
	}
}

func TestTrustedProxies(t *testing.T) {
	var seen string
	f := newFixture(t, func(d *Deps) {
		d.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		d.RateLimit = func(c *gin.Context) { seen = c.ClientIP() }
	})
	cases := []struct{ peer, xff, want string }{
		{"192.0.2.1:1234", "203.0.113.9", "192.0.2.1"},  // untrusted peer: XFF ignored
		{"10.1.2.3:1234", "203.0.113.9", "203.0.113.9"}, // trusted proxy: XFF believed
		{"10.1.2.3:1234", "", "10.1.2.3"},
	}
	for _, c := range cases {
		req := httptest.NewRequest("GET", "/api/v1/ping", nil)
		req.RemoteAddr = c.peer
		if c.xff != "" {
			req.Header.Set("X-Forwarded-For", c.xff)
		}
		f.do(req)
		if seen != c.want {
			t.Errorf("peer %s xff %q: client ip %q, want %q", c.peer, c.xff, seen, c.want)
		}
	}
	// No trusted proxies at all: XFF never believed.
	f2 := newFixture(t, func(d *Deps) { d.RateLimit = func(c *gin.Context) { seen = c.ClientIP() } })
	req := httptest.NewRequest("GET", "/api/v1/ping", nil)
	req.RemoteAddr = "10.1.2.3:1"
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	f2.do(req)
	if seen != "10.1.2.3" {
		t.Errorf("no trusted proxies: client ip %q, want the peer", seen)
	}
}

func TestRateLimitOnlyOnAPI(t *testing.T) {
	f := newFixture(t, func(d *Deps) {
		d.RateLimit = func(c *gin.Context) { problem.Abort(c, http.StatusTooManyRequests, "slow down") }
	})
	if rec := f.do(httptest.NewRequest("GET", "/api/v1/ping", nil)); rec.Code != 429 {
		t.Errorf("api route = %d, want 429", rec.Code)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if rec := f.do(httptest.NewRequest("GET", p, nil)); rec.Code != 200 {
			t.Errorf("%s = %d: probes must never be limited", p, rec.Code)
		}
	}
}

// The limiter runs before the body limit: a body announced too large gets
// its 413 with the RateLimit-* headers, like every response of a limited
// route (a limited client gets its 429 first).
func TestBodyLimitAnswersAfterTheRateLimiter(t *testing.T) {
	f := newFixture(t, func(d *Deps) {
		d.RateLimit = func(c *gin.Context) { c.Header("RateLimit-Limit", "10"); c.Next() }
	})
	req := httptest.NewRequest("POST", "/api/v1/echo", strings.NewReader(strings.Repeat("x", 100)))
	rec := f.do(req)
	if rec.Code != 413 || rec.Header().Get("RateLimit-Limit") != "10" {
		t.Errorf("oversized body: %d, RateLimit-Limit %q; want 413 with the header", rec.Code, rec.Header().Get("RateLimit-Limit"))
	}
}

func TestAdmin(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	observability.NewHTTPMetrics(reg)
	sim := items.NewSimulated()
	h := NewAdmin(AdminDeps{Logger: logger, Gatherer: reg, Faults: sim})
	do := func(method, path, body string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
		return rec
	}
	if rec := do("GET", "/metrics", ""); rec.Code != 200 || !strings.Contains(rec.Body.String(), "http_server_requests_in_flight") {
		t.Errorf("/metrics = %d", rec.Code)
	}
	if rec := do("GET", "/debug/pprof/", ""); rec.Code != 404 {
		t.Errorf("pprof without PPROF_ENABLED = %d, want 404", rec.Code)
	}
	for _, c := range []struct{ method, path, allow string }{
		{"POST", "/metrics", "GET, HEAD"},
		{"DELETE", "/debug/faults", "GET, HEAD, PUT"},
	} {
		rec := do(c.method, c.path, "")
		if rec.Code != 405 || rec.Header().Get("Allow") != c.allow || rec.Header().Get("Content-Type") != problem.ContentType {
			t.Errorf("%s %s = %d Allow %q, want a 405 problem allowing %s", c.method, c.path, rec.Code, rec.Header().Get("Allow"), c.allow)
		}
	}
	if rec := do("HEAD", "/metrics", ""); rec.Code != 200 {
		t.Errorf("HEAD /metrics = %d", rec.Code)
	}
	if rec := do("GET", "/nope", ""); rec.Code != 404 {
		t.Errorf("GET /nope = %d", rec.Code)
	}
	if rec := do("PUT", "/debug/faults", `{"latency":"200ms","error_rate":0.5}`); rec.Code != 200 {
		t.Fatalf("PUT faults = %d %s", rec.Code, rec.Body)
	}
	if f := sim.Faults(); f.Latency != 200*time.Millisecond || f.ErrorRate != 0.5 {
		t.Errorf("faults = %+v", f)
	}
	for _, bad := range []string{`{"latency":"fast"}`, `{"error_rate":2}`, `{"nope":1}`, `not json`, `{"latency":"-1s"}`} {
		if rec := do("PUT", "/debug/faults", bad); rec.Code != 400 || rec.Header().Get("Content-Type") != problem.ContentType {
			t.Errorf("PUT %s = %d, want 400 problem", bad, rec.Code)
		}
	}
	if f := sim.Faults(); f.Latency != 200*time.Millisecond {
		t.Errorf("bad input changed faults: %+v", f)
	}
	hp := NewAdmin(AdminDeps{Logger: logger, Gatherer: reg, Pprof: true})
	rec := httptest.NewRecorder()
	hp.ServeHTTP(rec, httptest.NewRequest("GET", "/debug/pprof/", nil))
	if rec.Code != 200 {
		t.Errorf("pprof enabled = %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	hp.ServeHTTP(rec, httptest.NewRequest("POST", "/debug/pprof/profile", nil))
	if rec.Code != 405 {
		t.Errorf("POST pprof = %d, want 405", rec.Code)
	}
	rec = httptest.NewRecorder()
	hp.ServeHTTP(rec, httptest.NewRequest("PUT", "/debug/faults", strings.NewReader(`{}`)))
	if rec.Code != 409 {
		t.Errorf("faults without a simulated dependency = %d, want 409", rec.Code)
	}
}

// The admin listener answers liveness like the public one (the kubelet's
// liveness probe goes there): same status, body and content type.
func TestAdminHealthz(t *testing.T) {
	f := newFixture(t, nil)
	pub := f.do(httptest.NewRequest("GET", "/healthz", nil))
	if pub.Code != 200 {
		t.Fatalf("public /healthz = %d", pub.Code)
	}
	h := NewAdmin(AdminDeps{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Gatherer: prometheus.NewRegistry()})
	do := func(method string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, "/healthz", nil))
		return rec
	}
	rec := do("GET")
	if rec.Code != 200 || rec.Body.String() != pub.Body.String() || rec.Header().Get("Content-Type") != pub.Header().Get("Content-Type") {
		t.Errorf("admin /healthz = %d %q %q, want the public %d %q %q", rec.Code, rec.Header().Get("Content-Type"), rec.Body,
			pub.Code, pub.Header().Get("Content-Type"), pub.Body)
	}
	if rec := do("HEAD"); rec.Code != 200 {
		t.Errorf("HEAD admin /healthz = %d", rec.Code)
	}
	if rec := do("POST"); rec.Code != 405 || rec.Header().Get("Allow") != "GET, HEAD" || rec.Header().Get("Content-Type") != problem.ContentType {
		t.Errorf("POST admin /healthz = %d Allow %q, want a 405 problem allowing GET, HEAD", rec.Code, rec.Header().Get("Allow"))
	}
}

// failingCollector is a collector that errors on every scrape, like a
// team's own collector whose backend is down.
type failingCollector struct{ desc *prometheus.Desc }

func (f failingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }
func (f failingCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(f.desc, errors.New("backend unreachable"))
}

// blockingCollector holds every scrape until release is closed.
type blockingCollector struct {
	desc             *prometheus.Desc
	entered, release chan struct{}
}

func (b blockingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- b.desc }
func (b blockingCollector) Collect(ch chan<- prometheus.Metric) {
	b.entered <- struct{}{}
	<-b.release
	ch <- prometheus.MustNewConstMetric(b.desc, prometheus.GaugeValue, 1)
}

// A failing collector costs its own series only: /metrics still answers 200
// with every other series, logs the error and counts it.
func TestMetricsSurviveAFailingCollector(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	reg := prometheus.NewRegistry()
	observability.NewHTTPMetrics(reg)
	reg.MustRegister(failingCollector{prometheus.NewDesc("team_backend_up", "a team's collector", nil, nil)})
	h := NewAdmin(AdminDeps{Logger: slog.New(slog.NewJSONHandler(logs, nil)), Gatherer: reg, Registerer: reg})
	for i := 1; i <= 2; i++ {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body := rec.Body.String()
		if rec.Code != 200 || !strings.Contains(body, "http_server_requests_in_flight") {
			t.Fatalf("scrape %d with a failing collector: %d\n%.300s", i, rec.Code, body)
		}
		if strings.Contains(body, "team_backend_up") {
			t.Errorf("the failing collector's series was served")
		}
		if i == 2 {
			// The first scrape's outcome, as the handler's own metrics.
			for _, want := range []string{`promhttp_metric_handler_errors_total{cause="gathering"} 1`, `promhttp_metric_handler_requests_total{code="200"} 1`} {
				if !strings.Contains(body, want) {
					t.Errorf("second scrape lacks %s", want)
				}
			}
		}
	}
	if !strings.Contains(logs.String(), "backend unreachable") {
		t.Errorf("the collector's error was not logged: %s", logs.String())
	}
}

// More concurrent scrapes than MaxConcurrentScrapes get 503 at once instead
// of piling up behind a slow collector.
func TestMetricsScrapesAreBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	bc := blockingCollector{prometheus.NewDesc("slow_collector", "blocks", nil, nil), make(chan struct{}, MaxConcurrentScrapes+1), make(chan struct{})}
	reg.MustRegister(bc)
	h := NewAdmin(AdminDeps{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Gatherer: reg})
	codes := make(chan int, MaxConcurrentScrapes)
	for range MaxConcurrentScrapes {
		go func() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			codes <- rec.Code
		}()
		<-bc.entered
	}
	extra := make(chan int, 1)
	go func() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		extra <- rec.Code
	}()
	select {
	case code := <-extra:
		if code != http.StatusServiceUnavailable {
			t.Errorf("scrape %d while %d are in flight: %d, want 503", MaxConcurrentScrapes+1, MaxConcurrentScrapes, code)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("scrape %d waited behind the %d in flight instead of getting a 503", MaxConcurrentScrapes+1, MaxConcurrentScrapes)
		defer func() { <-extra }()
	}
	close(bc.release)
	for range MaxConcurrentScrapes {
		if code := <-codes; code != 200 {
			t.Errorf("a held scrape ended %d, want 200", code)
		}
	}
}

func TestGeneratedRequestIDsAreUniqueAndValid(t *testing.T) {
	seen := make(map[string]bool, 10000)
	for range 10000 {
		id := problem.NewRequestID()
		if !validRequestID(id) || len(id) != 32 {
			t.Fatalf("generated id %q is not a valid 32-char id", id)
		}
		if seen[id] {
			t.Fatalf("duplicate request id %q", id)
		}
		seen[id] = true
	}
}

// errReader fails like a socket whose peer reset the connection mid-body.
type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestBodyReadConnErrorsAre499(t *testing.T) {
	for _, err := range []error{
		&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)},
		net.ErrClosed,
	} {
		f := newFixture(t, nil)
		rec := f.do(httptest.NewRequest("POST", "/api/v1/echo", errReader{err}))
		if rec.Code >= 500 {
			t.Errorf("%v: status %d", err, rec.Code)
		}
		if !strings.Contains(f.logs.String(), `"status":499`) {
			t.Errorf("%v: not logged as 499:\n%s", err, f.logs)
		}
	}
	// The read deadline (HTTP_READ_TIMEOUT) is ours, not the client
	// leaving: 408, not logged as an abort.
	f := newFixture(t, nil)
	rec := f.do(httptest.NewRequest("POST", "/api/v1/echo", errReader{&net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}}))
	if rec.Code != http.StatusRequestTimeout || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Errorf("read deadline: %d %s, want a 408 problem", rec.Code, rec.Header().Get("Content-Type"))
	}
	if strings.Contains(f.logs.String(), `"status":499`) || !strings.Contains(f.logs.String(), `"status":408`) {
		t.Errorf("read deadline not logged as 408:\n%s", f.logs)
	}
	// Any other read error is the client's bad request, not an abort.
	f = newFixture(t, nil)
	if rec := f.do(httptest.NewRequest("POST", "/api/v1/echo", errReader{errors.New("weird")})); rec.Code != 400 {
		t.Errorf("other read error: %d, want 400", rec.Code)
	}
	if strings.Contains(f.logs.String(), `"status":499`) {
		t.Errorf("other read error logged as 499")
	}
}

// TestEveryAnswerGoesThroughTheChain: answers that Gin or net/http would
// give on their own, before any middleware (a trailing-slash redirect, the
// general OPTIONS * handler) or with a body net/http drops (HEAD), are
// served through the chain over a real socket: each carries a request ID
// and has exactly one access line with the status and the bytes sent.
func TestEveryAnswerGoesThroughTheChain(t *testing.T) {
	f := newFixture(t, nil)
	srv := NewHTTPServer(f.h, Timeouts{ReadHeader: 5 * time.Second, Read: 5 * time.Second, Write: 5 * time.Second, Idle: 5 * time.Second},
		1<<16, slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	cases := []struct {
		name, method, target, body string
		proto                      string // default HTTP/1.1
		wantDetail                 string // in the problem body
		wantStatus                 int
		wantLength                 int64 // Content-Length header
		wantBytes                  float64
	}{
		{name: "OPTIONS *", method: "OPTIONS", target: "*", wantStatus: 200, wantLength: 0, wantBytes: 0},
		{name: "h2c preface", method: "PRI", target: "*", proto: "HTTP/2.0", wantStatus: 400, wantLength: -1, wantDetail: "h2c"},
		{name: "HEAD ping", method: "HEAD", target: "/api/v1/ping", wantStatus: 200, wantLength: int64(len(`{"message":"pong"}`)), wantBytes: 0},
		{name: "GET with a trailing slash", method: "GET", target: "/api/v1/ping/", wantStatus: 404, wantLength: -1},
		{name: "POST with a trailing slash", method: "POST", target: "/api/v1/echo/", body: "{}", wantStatus: 404, wantLength: -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			proto := "HTTP/1.1"
			if tc.proto != "" {
				proto = tc.proto
			}
			req := tc.method + " " + tc.target + " " + proto + "\r\nHost: svc\r\nConnection: close\r\n"
			if tc.proto == "HTTP/2.0" {
				req = "PRI * HTTP/2.0\r\n\r\nSM\r\n" // the h2c preface: no headers
			}
			if tc.body != "" {
				req += "Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(tc.body)) + "\r\n"
			}
			if _, err := io.WriteString(conn, req+"\r\n"+tc.body); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: tc.method})
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, tc.wantStatus, body)
			}
			if tc.wantLength >= 0 && (resp.ContentLength != tc.wantLength || len(body) != 0) {
				t.Errorf("Content-Length %d and %d body bytes, want %d and none", resp.ContentLength, len(body), tc.wantLength)
			}
			if !strings.Contains(string(body), tc.wantDetail) {
				t.Errorf("body %s lacks %q", body, tc.wantDetail)
			}
			if tc.wantStatus >= 400 && resp.Header.Get("Content-Type") != problem.ContentType {
				t.Errorf("Content-Type %q, want a problem", resp.Header.Get("Content-Type"))
			}
			id := resp.Header.Get("X-Request-ID")
			if id == "" {
				t.Fatal("no X-Request-ID")
			}
			var lines []map[string]any
			for _, l := range strings.Split(strings.TrimSpace(f.logs.String()), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "request" && m["request_id"] == id {
					lines = append(lines, m)
				}
			}
			if len(lines) != 1 {
				t.Fatalf("%d access lines for request %s, want 1:\n%s", len(lines), id, f.logs)
			}
			wantMethod := tc.method
			if wantMethod == "PRI" {
				wantMethod = "_OTHER" // method labels are bounded to the standard ones
			}
			if l := lines[0]; l["status"] != float64(tc.wantStatus) || l["method"] != wantMethod {
				t.Errorf("access line %v", l)
			} else if tc.wantLength >= 0 && l["bytes"] != tc.wantBytes {
				t.Errorf("access line bytes %v, want %v (nothing was sent)", l["bytes"], tc.wantBytes)
			}
		})
	}
}

// TestDrainingClosesHTTP1Connections: once the service is shutting down,
// every HTTP/1 response tells its client to close the connection (404s and
// probes included); HTTP/2 forbids the header (GOAWAY does that job).
func TestDrainingClosesHTTP1Connections(t *testing.T) {
	f := newFixture(t, nil)
	for _, path := range []string{"/api/v1/ping", "/nope", "/readyz"} {
		if got := f.do(httptest.NewRequest(http.MethodGet, path, nil)).Header().Get("Connection"); got != "" {
			t.Errorf("ready, GET %s: Connection %q, want none", path, got)
		}
	}
	f.ready.SetShuttingDown()
	for _, path := range []string{"/api/v1/ping", "/nope", "/readyz"} {
		if got := f.do(httptest.NewRequest(http.MethodGet, path, nil)).Header().Get("Connection"); got != "close" {
			t.Errorf("shutting down, GET %s: Connection %q, want close", path, got)
		}
	}
	h2 := httptest.NewRequest(http.MethodGet, "/api/v1/ping", nil)
	h2.Proto, h2.ProtoMajor, h2.ProtoMinor = "HTTP/2.0", 2, 0
	if got := f.do(h2).Header().Get("Connection"); got != "" {
		t.Errorf("shutting down, HTTP/2: Connection %q, want none", got)
	}
}
