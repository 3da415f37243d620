package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit"
	"github.com/hardenedgo/ginservice/internal/testkit/redistest"
)

// logSink collects the service's stdout and reports the listening
// addresses from its "listening" line.
type logSink struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	addrs     chan [2]string
	once      sync.Once
	line      []byte
	listening atomic.Bool // the "listening" line has been written
}

func newLogSink() *logSink { return &logSink{addrs: make(chan [2]string, 1)} }

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	s.line = append(s.line, p...)
	for {
		i := bytes.IndexByte(s.line, '\n')
		if i < 0 {
			break
		}
		var m map[string]any
		if json.Unmarshal(s.line[:i], &m) == nil && m["msg"] == "listening" {
			s.once.Do(func() { s.addrs <- [2]string{fmt.Sprint(m["public"]), fmt.Sprint(m["admin"])} })
			s.listening.Store(true)
		}
		s.line = s.line[i+1:]
	}
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// lines returns the parsed JSON log lines.
func (s *logSink) lines() []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(s.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// last returns the last log line with message msg and, unless id is
// empty, request_id id; nil if there is none.
func (s *logSink) last(msg, id string) map[string]any {
	var found map[string]any
	for _, l := range s.lines() {
		if l["msg"] == msg && (id == "" || l["request_id"] == id) {
			found = l
		}
	}
	return found
}

func envFunc(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func baseEnv(extra map[string]string) map[string]string {
	env := map[string]string{
		"HTTP_ADDR":      "127.0.0.1:0",
		"ADMIN_ADDR":     "127.0.0.1:0",
		"SHUTDOWN_DELAY": "0s",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

type running struct {
	public, admin string
	logs          *logSink
	cancel        context.CancelFunc
	done          chan error
}

// startRun runs the service in-process through run, as main does.
func startRun(t *testing.T, extra map[string]string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := newLogSink()
	r := &running{logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx, []string{"api"}, envFunc(baseEnv(extra)), logs, io.Discard) }()
	select {
	case a := <-logs.addrs:
		r.public, r.admin = a[0], a[1]
	case err := <-r.done:
		t.Fatalf("run exited early: %v\n%s", err, logs)
	case <-time.After(10 * time.Second):
		t.Fatalf("service did not start:\n%s", logs)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			t.Errorf("run did not return after cancel")
		}
	})
	return r
}

// stop cancels r's run, as SIGTERM does, and returns what run returned.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // for startRun's cleanup
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("run did not return:\n%s", r.logs)
		return nil
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The start-up log warns when HTTP_IDLE_TIMEOUT is shorter than the
// common proxies' keep-alive, and only then.
func TestRunWarnsOfShortIdleTimeout(t *testing.T) {
	warned := func(r *running) bool {
		for _, l := range r.logs.lines() {
			if m, _ := l["msg"].(string); l["level"] == "WARN" && strings.HasPrefix(m, "config: HTTP_IDLE_TIMEOUT 30s ") {
				return true
			}
		}
		return false
	}
	if r := startRun(t, map[string]string{"HTTP_IDLE_TIMEOUT": "30s"}); !warned(r) {
		t.Errorf("no warning for a 30s idle timeout:\n%s", r.logs)
	}
	if r := startRun(t, nil); strings.Contains(r.logs.String(), "HTTP_IDLE_TIMEOUT") && strings.Contains(r.logs.String(), `"level":"WARN"`) {
		t.Errorf("the default idle timeout warns:\n%s", r.logs)
	}
}

func TestRunServes(t *testing.T) {
	r := startRun(t, nil)
	if code, body := get(t, "http://"+r.public+"/healthz"); code != 200 {
		t.Fatalf("healthz = %d %s", code, body)
	}
	if code, body := get(t, "http://"+r.public+"/readyz"); code != 200 || !strings.Contains(body, `"status":"ok"`) || !strings.Contains(body, `"redis":"disabled"`) || !strings.Contains(body, `"items":"ok"`) {
		t.Fatalf("readyz = %d %s", code, body)
	}
	if code, body := get(t, "http://"+r.public+"/api/v1/ping"); code != 200 || body != `{"message":"pong"}` {
		t.Fatalf("ping = %d %s", code, body)
	}
	code, body := get(t, "http://"+r.admin+"/metrics")
	if code != 200 {
		t.Fatalf("metrics = %d", code)
	}
	for _, want := range []string{`http_server_requests_total{code="200",method="GET",route="/api/v1/ping"}`, "service_build_info{", "go_goroutines", "process_open_fds",
		// Zero series before the first event, for every route and for
		// unmatched requests: rate() and alerts see 0, not no data.
		`http_server_client_aborts_total{route="/api/v1/echo"} 0`, `http_server_client_aborts_total{route="unmatched"} 0`,
		`http_server_truncated_bodies_total{route="unmatched"} 0`, `http_server_panics_total{route="unmatched"} 0`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// The public port never serves admin routes.
	if code, _ := get(t, "http://"+r.public+"/metrics"); code != 404 {
		t.Errorf("public /metrics = %d, want 404", code)
	}
}

func TestRunBadConfig(t *testing.T) {
	cases := [][2]string{
		{"HTTP_READ_TIMEOUT", "soon"},
		{"RATELIMIT_RATE", "-1"},
		{"RATELIMIT_ON_REDIS_ERROR", "maybe"},
		{"TRUSTED_PROXIES", "10.0.0.0/8,not-an-ip"},
		{"HTTP_MAX_HEADER_BYTES", "1000000"},
		{"LOG_LEVEL", "loud"},
		{"PPROF_ENABLED", "yes please"},
		{"REDIS_URL", "http://redis:6379"},
		{"REDIS_URL", "redis://:s3cret@redis:99999"},
		{"REDIS_URL", "redis://redis:6379?addr=redis-2:0"},
		{"RATELIMIT_REDIS_TIMEOUT", "1h"},
		// OpenTelemetry's variables too: checked before anything is logged.
		{"OTEL_TRACES_SAMPLER", "bogus"},
		{"OTEL_SDK_DISABLED", "1"},
	}
	for _, c := range cases {
		name, val := c[0], c[1]
		var stdout bytes.Buffer
		err := run(context.Background(), []string{"api"}, envFunc(baseEnv(map[string]string{name: val})), &stdout, io.Discard)
		var ec exitCoder
		if err == nil || !errors.As(err, &ec) || ec.ExitCode() == 0 {
			t.Errorf("%s=%q: err %v, want a non-zero exit", name, val, err)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, name) || strings.Contains(msg, "\n") {
			t.Errorf("%s=%q: message %q must be one line naming the variable", name, val, msg)
		}
		if strings.Contains(msg, "s3cret") {
			t.Errorf("%s=%q: message %q shows the password", name, val, msg)
		}
		if stdout.Len() != 0 {
			t.Errorf("%s: bad config must not start anything, logged %q", name, stdout.String())
		}
	}
}

func TestRunHelpListsEveryVariable(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"api", "-h"}, envFunc(nil), &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"HTTP_ADDR", "ADMIN_ADDR", "REDIS_URL", "RATELIMIT_RATE", "RATELIMIT_BURST", "RATELIMIT_ON_REDIS_ERROR",
		"TRUSTED_PROXIES", "DOWNSTREAM_URL", "HTTP_IDLE_TIMEOUT", "SHUTDOWN_DELAY", "SHUTDOWN_TIMEOUT", "RATELIMIT_INSTANCES",
		"RATELIMIT_REDIS_TIMEOUT", "BREAKER_TIMEOUT", "BREAKER_MAX_CONCURRENT", "BREAKER_ERROR_PERCENT", "BREAKER_REQUEST_VOLUME",
		"BREAKER_SLEEP_WINDOW", "HTTP_READ_HEADER_TIMEOUT", "HTTP_READ_TIMEOUT", "HTTP_WRITE_TIMEOUT", "HTTP_MAX_HEADER_BYTES",
		"MAX_BODY_BYTES", "LOG_LEVEL", "LOG_FORMAT", "PPROF_ENABLED", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if !strings.Contains(out.String(), v) {
			t.Errorf("-h does not list %s", v)
		}
	}
}

func TestSlowlorisIsCutOff(t *testing.T) {
	r := startRun(t, map[string]string{"HTTP_READ_HEADER_TIMEOUT": "1s"})
	conn, err := net.Dial("tcp", r.public)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	closed := make(chan time.Duration, 1)
	go func() {
		// The server closes the connection; our read then returns.
		_, _ = io.Copy(io.Discard, conn)
		closed <- time.Since(start)
	}()
	req := "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 20)
	for i := 0; i < len(req); i++ {
		if _, err := conn.Write([]byte{req[i]}); err != nil {
			break // cut off
		}
		select {
		case d := <-closed:
			if d > 2500*time.Millisecond {
				t.Fatalf("slow client cut off after %s, want about 1s", d)
			}
			return
		case <-time.After(time.Second / 4):
		}
	}
	select {
	case d := <-closed:
		if d > 2500*time.Millisecond {
			t.Fatalf("slow client cut off after %s, want about 1s", d)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("slow-header client was never cut off")
	}
}

func TestHugeHeadersGet431(t *testing.T) {
	r := startRun(t, nil)
	req, _ := http.NewRequest("GET", "http://"+r.public+"/api/v1/ping", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 70*1024))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("70 KB of headers: %d, want 431", resp.StatusCode)
	}
	// net/http answers before any handler runs; the answer still carries a
	// request ID and a problem body, and the rejection is logged and counted.
	id := resp.Header.Get("X-Request-ID")
	if resp.Header.Get("Content-Type") != "application/problem+json" || len(id) != 32 || !strings.Contains(string(body), `"request_id":"`+id+`"`) {
		t.Errorf("431 response: %v %s", resp.Header, body)
	}
	if code, _ := get(t, "http://"+r.public+"/healthz"); code != 200 {
		t.Fatal("not healthy after 431")
	}
	// The limit is the configured one to the byte: request line and
	// headers of 65536 bytes pass, one more gets 431 (net/http alone would
	// let 4 KB more through).
	for total, want := range map[int]int{65536: 200, 65537: 431} {
		head := "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: "
		raw := head + strings.Repeat("a", total-len(head)-4) + "\r\n\r\n"
		if len(raw) != total {
			t.Fatalf("built %d bytes, want %d", len(raw), total)
		}
		c, err := net.Dial("tcp", r.public)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, raw)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%d bytes of request line and headers: %v", total, err)
		}
		resp.Body.Close()
		c.Close()
		if resp.StatusCode != want {
			t.Errorf("%d bytes of request line and headers: %d, want %d", total, resp.StatusCode, want)
		}
	}
	if n := metric(t, r.admin, `http_server_rejected_requests_total{code="431"}`); n != 2 {
		t.Errorf("rejected 431 = %v, want 2", n)
	}
	waitFor(t, 3*time.Second, "the rejected request's log line", func() bool {
		logs := r.logs.String() // written within LOG_FLUSH_INTERVAL
		return strings.Contains(logs, `"msg":"request rejected","status":431`) && strings.Contains(logs, id)
	})
}

func TestTruncatedBodiesAndGoneClients(t *testing.T) {
	r := startRun(t, nil)
	const n = 50
	for i := range n {
		conn, err := net.Dial("tcp", r.public)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nX-Request-ID: trunc-%d\r\n\r\n{\"a\":", i)
		conn.Close()
	}
	// A client that waits for a slow dependency and leaves.
	put(t, "http://"+r.admin+"/debug/faults", `{"latency":"2s"}`)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+r.public+"/api/v1/items/1", nil)
	req.Header.Set("X-Request-ID", "gone-1")
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("expected the client timeout")
	}
	cancel()
	put(t, "http://"+r.admin+"/debug/faults", `{"latency":"0s"}`)

	deadline := time.Now().Add(5 * time.Second)
	var got499, got5xx int
	for time.Now().Before(deadline) {
		got499, got5xx = 0, 0
		for _, l := range r.logs.lines() {
			if l["msg"] != "request" {
				continue
			}
			id, _ := l["request_id"].(string)
			if !strings.HasPrefix(id, "trunc-") && id != "gone-1" {
				continue
			}
			switch st := l["status"].(float64); {
			case st == 499:
				got499++
			case st >= 500:
				got5xx++
			}
		}
		if got499 >= n+1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got499 != n+1 || got5xx != 0 {
		t.Fatalf("logged %d x 499 and %d x 5xx, want %d and 0", got499, got5xx, n+1)
	}
	if code, _ := get(t, "http://"+r.public+"/healthz"); code != 200 {
		t.Fatal("not healthy after truncated bodies")
	}
	_, metrics := get(t, "http://"+r.admin+"/metrics")
	for _, want := range []string{
		fmt.Sprintf(`http_server_truncated_bodies_total{route="/api/v1/echo"} %d`, n),
		fmt.Sprintf(`http_server_client_aborts_total{route="/api/v1/echo"} %d`, n),
		`http_server_client_aborts_total{route="/api/v1/items/:id"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func put(t *testing.T, url, body string) {
	t.Helper()
	req, _ := http.NewRequest("PUT", url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PUT %s %s = %d", url, body, resp.StatusCode)
	}
}

// --- Real-process tests: the binary built once, driven by real signals.

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "api-bin-")
	if err != nil {
		panic(err)
	}
	binPath = filepath.Join(dir, "api")
	out, err := exec.Command("go", "build", "-ldflags", "-X main.version=v9.9.9-test -X main.commit=c0ffee", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type proc struct {
	cmd           *exec.Cmd
	logs          *logSink
	public, admin string
	exited        chan struct{} // closed when the process has exited
	err           error         // its exit status, valid after exited
}

func startBinary(t *testing.T, extra map[string]string) *proc {
	t.Helper()
	return startBinaryOut(t, extra, nil)
}

// startBinaryOut is startBinary with the binary's stdout going to
// stdout(logs) instead of the log sink itself (nil: the sink).
func startBinaryOut(t *testing.T, extra map[string]string, stdout func(*logSink) io.Writer) *proc {
	t.Helper()
	return startCommand(t, exec.Command(binPath), extra, stdout)
}

// startCommand is startBinaryOut for a command that runs the binary (the
// binary itself, or a wrapper that ends by exec'ing it).
func startCommand(t *testing.T, cmd *exec.Cmd, extra map[string]string, stdout func(*logSink) io.Writer) *proc {
	t.Helper()
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range baseEnv(extra) {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logs := newLogSink()
	cmd.Stdout = logs
	cmd.Stderr = logs
	if stdout != nil {
		cmd.Stdout = stdout(logs)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, logs: logs, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case a := <-logs.addrs:
		p.public, p.admin = a[0], a[1]
	case <-p.exited:
		t.Fatalf("binary exited early: %v\n%s", p.err, logs)
	case <-time.After(15 * time.Second):
		t.Fatalf("binary did not start:\n%s", logs)
	}
	return p
}

func TestBinaryVersionAndHealthcheck(t *testing.T) {
	out, err := exec.Command(binPath, "version").Output()
	if err != nil || !strings.Contains(string(out), "v9.9.9-test") || !strings.Contains(string(out), "c0ffee") {
		t.Fatalf("version: %v %q", err, out)
	}
	p := startBinary(t, nil)
	hc := exec.Command(binPath, "healthcheck")
	hc.Env = []string{"HTTP_ADDR=" + p.public}
	if out, err := hc.CombinedOutput(); err != nil {
		t.Fatalf("healthcheck against a live server: %v %s", err, out)
	}
	// A service bound to one address is probed there (127.0.0.2: loopback
	// on Linux, but not the 127.0.0.1 of the all-interfaces case).
	pb := startBinary(t, map[string]string{"HTTP_ADDR": "127.0.0.2:0"})
	hc = exec.Command(binPath, "healthcheck")
	hc.Env = []string{"HTTP_ADDR=" + pb.public}
	if out, err := hc.CombinedOutput(); err != nil {
		t.Fatalf("healthcheck against a server on %s: %v %s", pb.public, err, out)
	}
	_, metrics := get(t, "http://"+p.admin+"/metrics")
	if !strings.Contains(metrics, `service_build_info{commit="c0ffee",goversion=`) || !strings.Contains(metrics, `version="v9.9.9-test"`) {
		t.Errorf("build info does not carry the stamped version")
	}
	// Nothing listens here: the probe must fail.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	hc = exec.Command(binPath, "healthcheck")
	hc.Env = []string{"HTTP_ADDR=" + dead}
	if err := hc.Run(); err == nil {
		t.Fatal("healthcheck against nothing succeeded")
	}
	// Bad config through the real binary: non-zero exit, one line on stderr.
	// An OpenTelemetry variable too, with tracing off (no endpoint): the SDK
	// alone would log a plain-text line and start.
	for _, kv := range []string{"HTTP_IDLE_TIMEOUT=forever", "OTEL_TRACES_SAMPLER=bogus"} {
		bad := exec.Command(binPath)
		bad.Env = []string{kv, "HTTP_ADDR=127.0.0.1:0", "ADMIN_ADDR=127.0.0.1:0"}
		var stderr bytes.Buffer
		bad.Stderr = &stderr
		done := make(chan error, 1)
		if err := bad.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- bad.Wait() }()
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			_ = bad.Process.Kill()
			<-done
			t.Fatalf("%s: the service started", kv)
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Fatalf("%s: exit %v", kv, err)
		}
		name, _, _ := strings.Cut(kv, "=")
		if s := strings.TrimSpace(stderr.String()); strings.Count(s, "\n") != 0 || !strings.Contains(s, name) {
			t.Fatalf("%s: stderr = %q", kv, s)
		}
	}
}

// TestGracefulShutdownUnderLoad sends keep-alive load (GETs, POSTs and slow
// dependency calls) through a dialer that plays a Kubernetes Service: new
// connections go to instance A until A's /readyz answers 503, then to
// instance B, as kube-proxy does once A's endpoint is removed. Connections
// already open stay on A (kube-proxy does not move them). A gets SIGTERM
// under that load, and no request may fail: A must let its keep-alive
// connections go itself, each after a response that says so, before its
// listener closes, and finish the calls still in flight when it closes.
func TestGracefulShutdownUnderLoad(t *testing.T) {
	env := map[string]string{
		"SHUTDOWN_DELAY":   "1s",
		"SHUTDOWN_TIMEOUT": "10s",
		"RATELIMIT_RATE":   "1000000",
		"RATELIMIT_BURST":  "1000000",
		"BREAKER_TIMEOUT":  "10s",
		// One attempt waits out the slow dependency below (the default
		// 400ms would give up and serve the fallback early).
		"DOWNSTREAM_ATTEMPT_TIMEOUT": "5s",
	}
	p := startBinary(t, env)
	next := startBinary(t, env)
	// The slow calls start 0.7s before SIGTERM and end 0.8s after the
	// listener closes (SHUTDOWN_DELAY 1s): the drain must wait for them.
	put(t, "http://"+p.admin+"/debug/faults", `{"latency":"2500ms"}`)

	var endpoint atomic.Value // where new connections go
	endpoint.Store(p.public)
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, endpoint.Load().(string))
	}
	const base = "http://api.test" // the Service's name: the dialer picks the instance

	var ok, failed, slowOK atomic.Int64
	var failures sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var workers atomic.Int64
	worker := func(path string, maxReq int) {
		defer wg.Done()
		tr := &http.Transport{MaxIdleConnsPerHost: 1, DialContext: dial}
		defer tr.CloseIdleConnections()
		c := &http.Client{Timeout: 15 * time.Second, Transport: tr}
		w := workers.Add(1)
		for i := 0; i < maxReq; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := fmt.Sprintf("w%d-%d", w, i)
			var req *http.Request
			if path == "/api/v1/echo" {
				// Not idempotent: net/http does not retry it on a reused
				// connection the server closed, so a close that races a
				// request shows here (a GET would be retried silently).
				req, _ = http.NewRequest(http.MethodPost, base+path, strings.NewReader(`{"id":"`+id+`"}`))
				req.Header.Set("Content-Type", "application/json")
			} else {
				req, _ = http.NewRequest(http.MethodGet, base+path, nil)
			}
			req.Header.Set("X-Request-ID", id)
			resp, err := c.Do(req)
			if err != nil {
				failed.Add(1)
				failures.Store(err.Error(), true)
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if path == "/api/v1/items/1" && resp.Header.Get("X-Degraded") != "" {
				// The fallback would end the call early: it must wait
				// out the dependency, through the listener's close.
				failed.Add(1)
				failures.Store("a slow call was answered from the fallback", true)
				continue
			}
			if resp.StatusCode == 200 {
				ok.Add(1)
				if path == "/api/v1/items/1" {
					slowOK.Add(1)
				}
			} else {
				failed.Add(1)
				failures.Store(fmt.Sprintf("status %d on %s", resp.StatusCode, path), true)
			}
		}
	}
	for i := range 16 {
		wg.Add(1)
		if i%2 == 0 {
			go worker("/api/v1/ping", 200000)
		} else {
			go worker("/api/v1/echo", 200000)
		}
	}
	time.Sleep(300 * time.Millisecond)
	for range 4 {
		wg.Add(1)
		go worker("/api/v1/items/1", 1)
	}
	time.Sleep(700 * time.Millisecond) // the slow calls are in flight now

	sigAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Readiness fails at once (a fresh connection each probe); the
	// endpoint is then removed.
	probe := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var notReadyAfter time.Duration
	for time.Since(sigAt) < 2*time.Second {
		resp, err := probe.Get("http://" + p.public + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 503 {
				notReadyAfter = time.Since(sigAt)
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	endpoint.Store(next.public)
	removedAt := time.Now()
	if notReadyAfter == 0 || notReadyAfter > 500*time.Millisecond {
		t.Errorf("/readyz not 503 within 500ms of SIGTERM (after %s)", notReadyAfter)
	}

	var exitErr error
	select {
	case <-p.exited:
		exitErr = p.err
	case <-time.After(20 * time.Second):
		t.Fatal("process did not exit after SIGTERM")
	}
	exitedAfter := time.Since(sigAt)
	time.Sleep(200 * time.Millisecond) // the load goes on, on the other instance
	close(stop)
	wg.Wait()
	if exitErr != nil {
		t.Fatalf("exit: %v\n%s", exitErr, p.logs)
	}

	// After its endpoint was removed, the draining instance served at most
	// the request each kept-alive connection was carrying: every response
	// told its client to go (Connection: close).
	var lingering, servedByNext int
	var closedAt time.Time
	var slowEnds []time.Time
	for _, l := range p.logs.lines() {
		at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(l["time"]))
		if err != nil {
			t.Fatalf("log line without a readable time: %v %v", l, err)
		}
		switch route := fmt.Sprint(l["route"]); {
		case l["msg"] == "shutdown: closing listener, draining":
			closedAt = at
		case l["msg"] == "request" && route == "/api/v1/items/:id":
			slowEnds = append(slowEnds, at)
		case l["msg"] == "request" && at.After(removedAt.Add(100*time.Millisecond)):
			lingering++
		}
	}
	if closedAt.IsZero() {
		t.Fatalf("no 'closing listener' line:\n%s", p.logs)
	}
	if len(slowEnds) != 4 {
		t.Fatalf("the draining instance logged %d slow calls, want the 4 in flight at SIGTERM", len(slowEnds))
	}
	for _, end := range slowEnds {
		if !end.After(closedAt) {
			t.Errorf("a slow call ended %s before the listener closed: the drain's wait was not tested", closedAt.Sub(end))
		}
	}
	for _, l := range next.logs.lines() {
		if l["msg"] == "request" {
			servedByNext++
		}
	}
	t.Logf("shutdown under load: %d ok, %d failed; not ready %s after SIGTERM; exited %s after SIGTERM; after the endpoint's removal the draining instance served %d requests on old connections, the other %d",
		ok.Load(), failed.Load(), notReadyAfter, exitedAfter.Round(time.Millisecond), lingering, servedByNext)
	if failed.Load() != 0 {
		var msgs []string
		failures.Range(func(k, _ any) bool { msgs = append(msgs, k.(string)); return true })
		t.Fatalf("%d requests failed: %s", failed.Load(), strings.Join(msgs, "; "))
	}
	if lingering > 16 {
		t.Errorf("the draining instance went on serving %d requests on kept-alive connections after its endpoint was removed: it did not let them go", lingering)
	}
	if servedByNext == 0 {
		t.Errorf("no request reached the other instance: the load did not move")
	}
	if ok.Load() < 100 {
		t.Fatalf("only %d requests succeeded: the load did not run", ok.Load())
	}
	if slowOK.Load() < 4 {
		t.Fatalf("only %d slow /api/v1/items calls completed, want the 4 in flight at SIGTERM", slowOK.Load())
	}
}

func TestRunRateLimitAndDegradation(t *testing.T) {
	r := startRun(t, map[string]string{"RATELIMIT_RATE": "1", "RATELIMIT_BURST": "2", "BREAKER_REQUEST_VOLUME": "1000"})
	var codes []int
	var last *http.Response
	for range 3 {
		resp, err := http.Get("http://" + r.public + "/api/v1/ping")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
		last = resp
		if resp.Header.Get("RateLimit-Limit") == "" || resp.Header.Get("RateLimit-Remaining") == "" || resp.Header.Get("RateLimit-Reset") == "" {
			t.Errorf("response %d lacks RateLimit-* headers: %v", resp.StatusCode, resp.Header)
		}
	}
	if codes[0] != 200 || codes[1] != 200 || codes[2] != 429 {
		t.Fatalf("codes = %v, want 200 200 429", codes)
	}
	if ra := last.Header.Get("Retry-After"); ra != "1" || last.Header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("429: Retry-After %q, Content-Type %q", ra, last.Header.Get("Content-Type"))
	}
	// Probes are never limited.
	for range 5 {
		if code, _ := get(t, "http://"+r.public+"/readyz"); code != 200 {
			t.Fatalf("readyz limited: %d", code)
		}
	}

	// A failing dependency degrades to the fallback, never an error page.
	r2 := startRun(t, map[string]string{"RATELIMIT_RATE": "10000", "RATELIMIT_BURST": "10000"})
	put(t, "http://"+r2.admin+"/debug/faults", `{"error_rate":1}`)
	resp, err := http.Get("http://" + r2.public + "/api/v1/items/9")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Degraded") != "true" || !strings.Contains(string(body), `"degraded":true`) {
		t.Fatalf("failing dependency: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	_, metrics := get(t, "http://"+r2.admin+"/metrics")
	if !strings.Contains(metrics, `http_server_degraded_responses_total{route="/api/v1/items/:id"} 1`) {
		t.Errorf("degraded response not counted")
	}
}

// RATELIMIT_ENABLED=false: the same tight limit never answers 429, the
// responses carry no RateLimit-* headers, and /readyz has no redis entry.
func TestRunRateLimitDisabled(t *testing.T) {
	r := startRun(t, map[string]string{"RATELIMIT_ENABLED": "false", "RATELIMIT_RATE": "1", "RATELIMIT_BURST": "1"})
	for i := range 5 {
		resp, err := http.Get("http://" + r.public + "/api/v1/ping")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d with the limiter off", i, resp.StatusCode)
		}
		for _, h := range []string{"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} {
			if v := resp.Header.Get(h); v != "" {
				t.Errorf("%s = %q with the limiter off", h, v)
			}
		}
		if resp.Header.Get("X-Request-ID") == "" {
			t.Errorf("no X-Request-ID")
		}
	}
	if code, body := get(t, "http://"+r.public+"/readyz"); code != 200 || !strings.Contains(body, `"redis":"disabled"`) {
		t.Errorf("readyz = %d %s", code, body)
	}
	if !strings.Contains(r.logs.String(), "RATELIMIT_ENABLED=false") {
		t.Errorf("start-up log does not say the limiter is off:\n%s", r.logs)
	}
}

func TestVCSCommit(t *testing.T) {
	rev := []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "0123abc"}, {Key: "vcs.modified", Value: "false"}}
	dirty := []debug.BuildSetting{{Key: "vcs.revision", Value: "0123abc"}, {Key: "vcs.modified", Value: "true"}}
	for _, tc := range []struct {
		name, commit string
		settings     []debug.BuildSetting
		want         string
	}{
		{"stamped by -X wins", "feed42", rev, "feed42"},
		{"vcs revision", "unknown", rev, "0123abc"},
		{"uncommitted changes", "unknown", dirty, "0123abc-dirty"},
		{"no vcs info (go run, -buildvcs=false)", "unknown", nil, "unknown"},
	} {
		if got := vcsCommit(tc.commit, tc.settings); got != tc.want {
			t.Errorf("%s: vcsCommit = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// The classic Go "EOF": HTTP_WRITE_TIMEOUT runs from the end of the request
// headers, so a request whose body arrives slowly gets its response written
// after the deadline. Its access line says 200, the client gets a closed
// connection and no response. The connection's close line names the same
// request, so the two can be put together; likewise for a client that
// leaves mid-request.
func TestBrokenConnectionsNameTheirRequest(t *testing.T) {
	r := startRun(t, map[string]string{"HTTP_WRITE_TIMEOUT": "300ms", "BREAKER_TIMEOUT": "250ms"})
	// A request whose body arrives after the write deadline.

	c := dialPublic(t, r.public)
	fmt.Fprint(c, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-Request-ID: write-timeout-1\r\n\r\n")
	time.Sleep(500 * time.Millisecond) // past the write deadline
	fmt.Fprint(c, "{}")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
		resp.Body.Close()
		t.Fatalf("a response past the write timeout reached the client: %d", resp.StatusCode)
	}

	// The same with a response larger than net/http's 4 KB buffer: the
	// handler's own write fails at the deadline and net/http cancels the
	// request's context, which is still the server's timeout, not a
	// client that left.
	c2, err := net.Dial("tcp", r.public)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	big := `{"a":"` + strings.Repeat("x", 16<<10) + `"}`
	fmt.Fprintf(c2, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\nX-Request-ID: write-timeout-2\r\n\r\n", len(big))
	time.Sleep(500 * time.Millisecond) // past the write deadline
	fmt.Fprint(c2, big)
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c2)

	// A client that leaves while the dependency is slow: a run with the
	// default timeouts, so the client is surely gone before the breaker
	// answers.
	r2 := startRun(t, nil)
	put(t, "http://"+r2.admin+"/debug/faults", `{"latency":"2s"}`)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+r2.public+"/api/v1/items/2", nil)
	req.Header.Set("X-Request-ID", "gone-2")
	if _, err := (&http.Transport{}).RoundTrip(req); err == nil {
		t.Fatal("expected the client timeout")
	}

	find := func(msg, id string) map[string]any {
		for _, run := range []*running{r, r2} {
			for _, l := range run.logs.lines() {
				if l["msg"] == msg && l["request_id"] == id {
					return l
				}
			}
		}
		return nil
	}
	waitFor(t, 5*time.Second, "access and close lines of both requests", func() bool {
		return find("request", "write-timeout-1") != nil && find("connection closed", "write-timeout-1") != nil &&
			find("request", "write-timeout-2") != nil && find("connection closed", "write-timeout-2") != nil &&
			find("request", "gone-2") != nil && find("connection closed", "gone-2") != nil
	})
	if l := find("request", "write-timeout-1"); l["status"] != float64(200) {
		t.Errorf("access line of the timed-out write: %v", l)
	}
	if l := find("connection closed", "write-timeout-1"); l["reason"] != "write_timeout" || l["state"] != "active" ||
		l["route"] != "/api/v1/echo" || l["logged_status"] != float64(200) {
		t.Errorf("close line of the timed-out write: %v", l)
	}
	if l := find("request", "write-timeout-2"); l["status"] != float64(200) {
		t.Errorf("access line of the write that timed out in the handler: %v", l)
	}
	if l := find("connection closed", "write-timeout-2"); l["reason"] != "write_timeout" || l["logged_status"] != float64(200) {
		t.Errorf("close line of the write that timed out in the handler: %v", l)
	}
	if n := metric(t, r.admin, `http_server_client_aborts_total{route="/api/v1/echo"}`); n != 0 {
		t.Errorf("the server's write timeouts counted as %v client aborts", n)
	}
	if l := find("request", "gone-2"); l["status"] != float64(499) {
		t.Errorf("access line of the client that left: %v", l)
	}
	if l := find("connection closed", "gone-2"); l["reason"] != "peer_closed" || l["state"] != "active" ||
		l["route"] != "/api/v1/items/:id" || l["logged_status"] != float64(499) {
		t.Errorf("close line of the client that left: %v", l)
	}
	if n := metric(t, r.admin, `http_server_connections_closed_total{reason="write_timeout",state="active"}`); n != 2 {
		t.Errorf("write_timeout closes = %v, want 2", n)
	}
}

// A body slower than HTTP_READ_TIMEOUT is the server's deadline, not a
// client that left: the client, still there, gets a 408 problem and the
// access line says 408 (nginx's client_body_timeout answers the same).
func TestSlowBodyGets408(t *testing.T) {
	for _, write := range []string{"30s", "1s"} {
		// HTTP_WRITE_TIMEOUT equal to HTTP_READ_TIMEOUT (as in the
		// defaults, 30s and 30s): the write deadline, which runs from the
		// end of the headers, falls a moment after the body's read
		// deadline, and the 408 must still reach the client.
		t.Run("write_timeout_"+write, func(t *testing.T) {
			r := startRun(t, map[string]string{"HTTP_READ_HEADER_TIMEOUT": "500ms", "HTTP_READ_TIMEOUT": "1s", "HTTP_WRITE_TIMEOUT": write, "BREAKER_TIMEOUT": "200ms", "RATELIMIT_REDIS_TIMEOUT": "20ms"})
			start := time.Now() // before the server can start its read deadline
			c := dialPublic(t, r.public)
			fmt.Fprint(c, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\nX-Request-ID: slow-body-1\r\n\r\n{\"")
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no response to a stalled body: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestTimeout || resp.Header.Get("Content-Type") != "application/problem+json" ||
				resp.Header.Get("X-Request-ID") != "slow-body-1" {
				t.Fatalf("stalled body: %d %v %s", resp.StatusCode, resp.Header, body)
			}
			if d := time.Since(start); d < 900*time.Millisecond || d > 3*time.Second {
				t.Errorf("answered after %s, want about HTTP_READ_TIMEOUT (1s)", d)
			}
			waitFor(t, 3*time.Second, "the access line", func() bool {
				l := r.logs.last("request", "slow-body-1")
				return l != nil && l["status"] == float64(408)
			})
			if n := metric(t, r.admin, `http_server_client_aborts_total{route="/api/v1/echo"}`); n != 0 {
				t.Errorf("a stalled body counted as a client abort: %v", n)
			}
		})
	}
	// HTTP/2 over TLS, equal timeouts: its write timer starts with the
	// stream, before the read timer, and cannot be moved once it fired.
	t.Run("http2_write_timeout_1s", func(t *testing.T) {
		cert, key := testkit.WriteSelfSignedCert(t)
		r := startRun(t, map[string]string{"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key,
			"HTTP_READ_HEADER_TIMEOUT": "500ms", "HTTP_READ_TIMEOUT": "1s", "HTTP_WRITE_TIMEOUT": "1s", "BREAKER_TIMEOUT": "200ms", "RATELIMIT_REDIS_TIMEOUT": "20ms"})
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		pr, pw := io.Pipe()
		defer pw.Close()
		go func() { _, _ = io.WriteString(pw, `{"`) }() // then nothing: the body stalls
		req, _ := http.NewRequest(http.MethodPost, "https://"+r.public+"/api/v1/echo", pr)
		req.ContentLength = 10
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Request-ID", "slow-body-h2")
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("no response to a stalled body: %v", err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.ProtoMajor != 2 || resp.StatusCode != http.StatusRequestTimeout || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Fatalf("stalled body over HTTP/2: %s %d %v %q, read error %v", resp.Proto, resp.StatusCode, resp.Header, body, err)
		}
	})
}

// A REDIS_URL database the server does not have is bad configuration: exit 2
// with one line, not a service that sits on its fallback for good.
func TestRunRedisMissingDatabase(t *testing.T) {
	rs := redistest.Start(t, redistest.WithArgs("--databases", "2", "--requirepass", "s3cret"))
	env := baseEnv(map[string]string{"REDIS_URL": "redis://:s3cret@" + rs.Addr + "/5"})
	err := run(context.Background(), []string{"api"}, envFunc(env), io.Discard, io.Discard)
	var ec exitCoder
	if err == nil || !errors.As(err, &ec) || ec.ExitCode() != 2 {
		t.Fatalf("err %v, want exit 2", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "REDIS_URL") || !strings.Contains(msg, "DB index") || strings.Contains(msg, "\n") {
		t.Errorf("message %q must be one line naming REDIS_URL and the server's answer", msg)
	}
	if strings.Contains(msg, "s3cret") {
		t.Errorf("message %q shows the password", msg)
	}
}

// sumMetric sums the series of name whose labels contain every fragment
// (e.g. `code="200"`), or returns -1 when there is none.
func sumMetric(t *testing.T, admin, name string, fragments ...string) float64 {
	t.Helper()
	_, body := get(t, "http://"+admin+"/metrics")
	sum, found := 0.0, false
next:
	for _, m := range metricLine.FindAllStringSubmatch(body, -1) {
		if m[1] != name && !strings.HasPrefix(m[1], name+"{") {
			continue
		}
		for _, f := range fragments {
			if !strings.Contains(m[1], f) {
				continue next
			}
		}
		v, _ := strconv.ParseFloat(m[2], 64)
		sum, found = sum+v, true
	}
	if !found {
		return -1
	}
	return sum
}

// With no DOWNSTREAM_URL the built-in simulated dependency is reached over
// loopback HTTP through the resilient client, like a real one: the default
// service exercises the outbound pool, timeouts and retries, and reports
// them.
func TestSimulatedDependencyGoesThroughTheResilientClient(t *testing.T) {
	r := startRun(t, nil)
	if code, body := get(t, "http://"+r.public+"/api/v1/items/7"); code != 200 || !strings.Contains(body, `"source":"simulated"`) || strings.Contains(body, `"degraded":true`) {
		t.Fatalf("items = %d %s", code, body)
	}
	if n := sumMetric(t, r.admin, "http_client_requests_total", `code="200"`, `host="127.0.0.1:`, `method="GET"`); n != 1 {
		t.Errorf("http_client_requests_total{code=200} = %v, want 1", n)
	}
	// Failing attempts are retried (GET is idempotent), then the breaker's
	// fallback answers.
	put(t, "http://"+r.admin+"/debug/faults", `{"error_rate":1}`)
	if code, body := get(t, "http://"+r.public+"/api/v1/items/7"); code != 200 || !strings.Contains(body, `"degraded":true`) {
		t.Fatalf("items with a failing dependency = %d %s", code, body)
	}
	if n := sumMetric(t, r.admin, "http_client_retries_total", `reason="status_503"`); n < 1 {
		t.Errorf("http_client_retries_total{reason=status_503} = %v, want >= 1", n)
	}
	if n := sumMetric(t, r.admin, "http_client_requests_total", `code="503"`); n < 2 {
		t.Errorf("http_client_requests_total{code=503} = %v, want the attempt and its retries (>= 2)", n)
	}
}

// Every response of a limited route carries the RateLimit-* headers, a 413
// for a body announced too large included (the body limit runs after the
// limiter).
func TestTooLargeBodyCarriesRateLimitHeaders(t *testing.T) {
	r := startRun(t, map[string]string{"MAX_BODY_BYTES": "1024"})
	req, _ := http.NewRequest(http.MethodPost, "http://"+r.public+"/api/v1/echo", strings.NewReader(strings.Repeat("x", 2048)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413", resp.StatusCode)
	}
	for _, h := range []string{"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "X-Request-ID"} {
		if resp.Header.Get(h) == "" {
			t.Errorf("413 without %s: %v", h, resp.Header)
		}
	}
}

// TestHalfClosedClientGetsNoEmptyAnswer: a client that sends its request
// and shuts down its writing side is taken by net/http as gone (it cancels
// the request's context), so the item handler gives up and the access line
// says 499. The client may still be reading: it must see the response cut,
// not a complete-looking empty 200.
func TestHalfClosedClientGetsNoEmptyAnswer(t *testing.T) {
	r := startRun(t, nil)
	put(t, "http://"+r.admin+"/debug/faults", `{"latency":"600ms"}`)
	c := dialPublic(t, r.public)
	fmt.Fprint(c, "GET /api/v1/items/7 HTTP/1.1\r\nHost: x\r\nX-Request-ID: half-closed-1\r\n\r\n")
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	if len(got) != 0 {
		t.Errorf("the half-closed client read %q, want the response cut (nothing)", got)
	}
	waitFor(t, 5*time.Second, "the access line", func() bool {
		l := r.logs.last("request", "half-closed-1")
		return l != nil && l["status"] == float64(499)
	})
}

// TestExpectContinueUnreadBody: a request with "Expect: 100-continue" whose
// handler answers without reading the body gets its answer at once, no 100
// and no wait for a body it has not sent (as net/http does it), and a
// handler that reads the body still gets it after the 100.
func TestExpectContinueUnreadBody(t *testing.T) {
	r := startRun(t, map[string]string{"HTTP_READ_HEADER_TIMEOUT": "2s", "HTTP_READ_TIMEOUT": "3s"})
	c := dialPublic(t, r.public)
	start := time.Now()
	fmt.Fprint(c, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || time.Since(start) > time.Second {
		t.Fatalf("GET with an unsent body and Expect: %d after %s, want 200 at once", resp.StatusCode, time.Since(start))
	}

	c2, err := net.Dial("tcp", r.public)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	fmt.Fprint(c2, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c2)
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, "100 Continue") {
		t.Fatalf("no 100 Continue for a handler that reads: %q %v", line, err)
	}
	br.ReadString('\n')
	fmt.Fprint(c2, `{"a":1}`)
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"a":1`) {
		t.Fatalf("echo after 100 Continue: %d %s", resp.StatusCode, body)
	}
}

// dialPublic opens a TCP connection to addr, closed when the test ends.
func dialPublic(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestSecondSignalExitsAtOnce: the first SIGTERM starts the graceful
// shutdown (here a 20 s SHUTDOWN_DELAY); a second one, or a second Ctrl-C,
// ends the process at once, killed by that signal, instead of waiting out
// the delay and the drain.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			p := startBinary(t, map[string]string{"SHUTDOWN_DELAY": "20s", "SHUTDOWN_TIMEOUT": "20s"})
			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "the shutdown's first line", func() bool {
				return p.logs.last("shutdown: not ready, still serving", "") != nil
			})
			select {
			case <-p.exited:
				t.Fatalf("exited before the second signal: %v\n%s", p.err, p.logs)
			default:
			}
			start := time.Now()
			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-p.exited:
			case <-time.After(5 * time.Second):
				t.Fatalf("still running 5s after a second %v (the delay is 20s)", sig)
			}
			var ee *exec.ExitError
			if !errors.As(p.err, &ee) {
				t.Fatalf("exit %v, want killed by %v", p.err, sig)
			}
			ws, ok := ee.Sys().(syscall.WaitStatus)
			if !ok || !ws.Signaled() || ws.Signal() != sig {
				t.Fatalf("exit status %v, want killed by %v", p.err, sig)
			}
			t.Logf("second %v: exited %v after it", sig, time.Since(start).Round(time.Millisecond))
		})
	}
}
