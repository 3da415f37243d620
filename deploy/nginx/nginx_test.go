//go:build unix

// Package nginx_test proves the reference nginx.conf against real processes:
// real nginx in front of the real service on loopback, with the keep-alive
// timeouts scaled down so a run takes seconds.
package nginx_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/hardenedgo/ginservice/internal/config"
	"github.com/hardenedgo/ginservice/internal/testkit"
)

var update = flag.Bool("update", false, "rewrite nginx.conf from nginx.conf.tmpl")

// params fills nginx.conf.tmpl.
type params struct {
	User            string // empty: nginx's default
	WorkerProcesses string
	PidFile         string
	ErrorLog        string
	AccessLog       string
	TempDir         string // empty: nginx's compiled-in temp paths

	Listen    string
	Backlog   int // listen backlog=; 0: nginx's default (511 on Linux)
	Upstreams []string

	UpstreamKeepalive        int
	UpstreamKeepaliveTimeout string
	ClientKeepaliveTimeout   string
	ProxyConnectTimeout      string
	ProxySendTimeout         string
	ProxyReadTimeout         string
	ProxyNextUpstreamTimeout string
}

// reference are the production values rendered into nginx.conf.
func reference() params {
	return params{
		WorkerProcesses:          "auto",
		PidFile:                  "/run/nginx.pid",
		ErrorLog:                 "/var/log/nginx/error.log",
		AccessLog:                "/var/log/nginx/access.log",
		Listen:                   "80",
		Backlog:                  65535, // capped by net.core.somaxconn
		Upstreams:                []string{"127.0.0.1:8080"},
		UpstreamKeepalive:        64,
		UpstreamKeepaliveTimeout: "60s", // < HTTP_IDLE_TIMEOUT 75s
		ClientKeepaliveTimeout:   "75s", // > common LB idle 60s
		ProxyConnectTimeout:      "5s",
		ProxySendTimeout:         "60s",
		ProxyReadTimeout:         "60s",
		ProxyNextUpstreamTimeout: "10s",
	}
}

func render(t *testing.T, p params) []byte {
	t.Helper()
	tmpl, err := template.New("nginx.conf.tmpl").Option("missingkey=error").ParseFiles("nginx.conf.tmpl")
	if err != nil {
		t.Fatalf("parse template: %v", err)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, p); err != nil {
		t.Fatalf("render template: %v", err)
	}
	return b.Bytes()
}

// nginxBinary finds nginx. On CI a missing binary fails the test: the suite
// installs it (scripts/ci-deps.sh), so absence there is a broken setup.
func nginxBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"nginx", "/usr/sbin/nginx"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("nginx not found (apt-get install nginx-light or nginx)")
	}
	t.Skip("nginx not installed; set CI=true to make this a failure")
	return ""
}

// TestReferenceConfig keeps nginx.conf equal to the template rendered with
// the production values, and lets nginx itself parse it (nginx -t).
func TestReferenceConfig(t *testing.T) {
	want := render(t, reference())
	if *update {
		if err := os.WriteFile("nginx.conf", want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("nginx.conf is stale: run go test ./deploy/nginx -run TestReferenceConfig -update")
	}

	// The directives the EOF diagnosis depends on, checked on the text a
	// user reads rather than on the template.
	for _, re := range []string{
		`(?m)^\s*keepalive \d+;`,
		`(?m)^\s*keepalive_timeout 60s;`,
		`(?m)^\s*proxy_http_version 1\.1;`,
		`(?m)^\s*proxy_set_header Connection "";`,
		`(?m)^\s*proxy_read_timeout\s+60s;`,
		`(?m)^\s*proxy_send_timeout\s+60s;`,
		`(?m)^\s*proxy_next_upstream error timeout;`,
		`(?m)^\s*listen 80 backlog=65535;`,
	} {
		if !regexp.MustCompile(re).Match(got) {
			t.Errorf("nginx.conf lacks %s", re)
		}
	}
	if regexp.MustCompile(`(?m)^\s*proxy_next_upstream[^;]*non_idempotent`).Match(got) {
		t.Error("nginx.conf retries non-idempotent requests")
	}
	// nginx's body cap sits above the service's, so the service answers the
	// bodies it refuses (problem+json 413), not nginx (an HTML page).
	if limit, maxBody := clientMaxBodySize(t, got), defaultMaxBodyBytes(t); limit <= maxBody {
		t.Errorf("client_max_body_size %d <= MAX_BODY_BYTES %d: nginx answers 413 itself, as HTML", limit, maxBody)
	}

	// nginx -t on the reference, with paths moved under a temp prefix so it
	// runs unprivileged; everything else is byte-for-byte the reference.
	bin := nginxBinary(t)
	dir := t.TempDir()
	conf := string(got)
	for _, r := range [][2]string{
		{"/run/nginx.pid", filepath.Join(dir, "nginx.pid")},
		{"/var/log/nginx/", dir + "/"},
	} {
		conf = strings.ReplaceAll(conf, r[0], r[1])
	}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-t", "-q", "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log")).CombinedOutput()
	if err != nil {
		t.Fatalf("nginx -t rejects the reference config: %v\n%s", err, out)
	}
}

// TestListenBacklog runs nginx with and without listen's backlog= and
// reads the accept queue the kernel gave each listener (ss's Send-Q of a
// LISTEN socket): without it nginx's queue stays at 511 whatever
// net.core.somaxconn says; with the reference's backlog=65535 it is as
// long as somaxconn allows, as the service's own listener is.
func TestListenBacklog(t *testing.T) {
	nginxBinary(t)
	if _, err := exec.LookPath("ss"); err != nil {
		t.Fatalf("ss not found (iproute2): %v", err)
	}
	somaxconn := testkit.Somaxconn(t)
	for _, c := range []struct {
		backlog int
		want    int
	}{
		{0, min(511, somaxconn)},
		{reference().Backlog, min(reference().Backlog, somaxconn)},
		{37, min(37, somaxconn)},
	} {
		p := testParams(t, "127.0.0.1:1", time.Second)
		p.Backlog = c.backlog
		px := runNginx(t, p)
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(px.url, "http://"))
		_, got := testkit.ListenQueue(t, port, 0)
		t.Logf("backlog=%d, somaxconn %d: accept queue %d", c.backlog, somaxconn, got)
		if got != c.want {
			t.Errorf("listen backlog=%d with somaxconn %d: accept queue %d, want %d", c.backlog, somaxconn, got, c.want)
		}
	}
}

// clientMaxBodySize reads client_max_body_size (bytes) from an nginx config.
func clientMaxBodySize(t *testing.T, conf []byte) int64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*client_max_body_size\s+(\d+)([kKmMgG]?);`).FindSubmatch(conf)
	if m == nil {
		t.Fatal("nginx config sets no client_max_body_size (the default, 1m, equals MAX_BODY_BYTES)")
	}
	n, err := strconv.ParseInt(string(m[1]), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	switch strings.ToLower(string(m[2])) {
	case "k":
		n <<= 10
	case "m":
		n <<= 20
	case "g":
		n <<= 30
	}
	if n == 0 {
		t.Fatal("client_max_body_size 0: nginx would accept and buffer bodies of any size")
	}
	return n
}

// defaultMaxBodyBytes is the service's MAX_BODY_BYTES default.
func defaultMaxBodyBytes(t *testing.T) int64 {
	t.Helper()
	cfg, err := config.Load(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	return cfg.MaxBodyBytes
}

// TestOversizedBodyAnsweredByService sends a body just over MAX_BODY_BYTES
// through real nginx: the 413 must be the service's problem+json, which
// needs nginx's client_max_body_size above the service's limit.
func TestOversizedBodyAnsweredByService(t *testing.T) {
	api := startAPI(t, longIdle)
	px := startNginx(t, api.addr, shortIdle)
	waitHTTP(t, px.url+"/healthz", 5*time.Second)
	maxBody := defaultMaxBodyBytes(t)
	body := `{"pad":"` + strings.Repeat("x", int(maxBody)) + `"}`
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Post(px.url+"/api/v1/echo", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("POST of %d bytes (MAX_BODY_BYTES %d): %d %s, want the service's 413 problem+json\n%.300s",
			len(body), maxBody, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
}

// apiBinary is built once by TestMain.
var apiBinary string

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		dir, err := os.MkdirTemp("", "nginxtest-api-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "api")
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/api")
		cmd.Dir = filepath.Join("..", "..") // the module root
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build ./cmd/api: %v\n%s", err, out)
			return 1
		}
		apiBinary = bin
		return m.Run()
	}()
	os.Exit(code)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitHTTP polls url until it answers 200, for at most d.
func waitHTTP(t *testing.T, url string, d time.Duration) {
	t.Helper()
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(d)
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not answering 200 after %s (last error %v)", url, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends a process we started: the signal first, SIGKILL after grace.
func stop(cmd *exec.Cmd, sig syscall.Signal, grace time.Duration, done <-chan struct{}) {
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// startProcess runs cmd in its own process group (so nginx's workers go
// with their master) and stops it at cleanup.
func startProcess(t *testing.T, cmd *exec.Cmd, sig syscall.Signal) {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { stop(cmd, sig, 10*time.Second, done) })
}

// service is a running cmd/api: its public and admin addresses.
type service struct{ addr, admin string }

// startAPI runs the service with the given keep-alive idle timeout.
func startAPI(t *testing.T, idle time.Duration) service {
	t.Helper()
	if apiBinary == "" {
		t.Fatal("api binary not built")
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	logPath := filepath.Join(t.TempDir(), "api.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logFile.Close() })
	cmd := exec.Command(apiBinary)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HTTP_ADDR=" + addr,
		"ADMIN_ADDR=" + admin,
		"HTTP_IDLE_TIMEOUT=" + idle.String(),
		// The limiter must not be what answers here.
		"RATELIMIT_RATE=1000000",
		"RATELIMIT_BURST=1000000",
		"SHUTDOWN_DELAY=0s",
		"SHUTDOWN_TIMEOUT=2s",
		"LOG_LEVEL=warn",
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	startProcess(t, cmd, syscall.SIGTERM)
	waitHTTP(t, "http://"+addr+"/healthz", 15*time.Second)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("api log:\n%s", tail(b, 40))
		}
	})
	return service{addr: addr, admin: admin}
}

type proxy struct {
	url       string
	conf      string
	errorLog  string
	accessLog string
}

// startNginx runs nginx in the foreground from its own prefix directory.
func startNginx(t *testing.T, upstream string, upstreamKeepalive time.Duration) proxy {
	t.Helper()
	return runNginx(t, testParams(t, upstream, upstreamKeepalive))
}

// testParams are the reference values with the timeouts scaled down to
// what a test can wait for, on a free loopback port and in a temp
// directory.
func testParams(t *testing.T, upstream string, upstreamKeepalive time.Duration) params {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	p := params{
		WorkerProcesses: "1",
		PidFile:         filepath.Join(dir, "nginx.pid"),
		ErrorLog:        filepath.Join(dir, "error.log"),
		AccessLog:       filepath.Join(dir, "access.log"),
		TempDir:         dir,
		Listen:          fmt.Sprintf("127.0.0.1:%d", port),
		Backlog:         reference().Backlog,
		Upstreams:       []string{upstream},

		UpstreamKeepalive:        64,
		UpstreamKeepaliveTimeout: ms(upstreamKeepalive),
		// The test client never idles this long, so the client side of
		// nginx is not what is being measured.
		ClientKeepaliveTimeout:   "60s",
		ProxyConnectTimeout:      "1s",
		ProxySendTimeout:         "6s",
		ProxyReadTimeout:         "6s",
		ProxyNextUpstreamTimeout: "2s",
	}
	if os.Geteuid() == 0 {
		// Workers would otherwise run as nobody and could not use the
		// 0700 temp directory.
		p.User = "root"
	}
	return p
}

// runNginx starts nginx with p (from testParams) and waits until it
// listens.
func runNginx(t *testing.T, p params) proxy {
	t.Helper()
	bin := nginxBinary(t)
	dir := p.TempDir
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, render(t, p), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", conf, "-e", p.ErrorLog, "-g", "daemon off;")
	// nginx reports start-up errors on stderr before its error log is open.
	stderr, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stderr.Close() })
	cmd.Stdout, cmd.Stderr = stderr, stderr
	// SIGQUIT: graceful stop, workers finish and exit with the master.
	startProcess(t, cmd, syscall.SIGQUIT)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.Listen, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(p.ErrorLog)
			se, _ := os.ReadFile(stderr.Name())
			t.Fatalf("nginx did not listen on %s: %v\n%s\n%s", p.Listen, err, se, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return proxy{url: "http://" + p.Listen, conf: conf, errorLog: p.ErrorLog, accessLog: p.AccessLog}
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// outcome is what a load run saw, from the client and from nginx's logs.
type outcome struct {
	requests  int
	status    map[int]int
	getBad    int      // GETs answered 502/504: nginx should have retried them
	transport []string // client-side errors (none expected either way)
	bad       []string // gaps after which a request got a 502/504
	premature int      // "upstream prematurely closed connection"
	reset     int      // "Connection reset by peer" / "Broken pipe" towards upstream
	retried   int      // access lines with two upstream attempts
	errLines  []string
}

func (o *outcome) failures() int { return o.status[502] + o.status[504] + o.premature + o.reset }

func (o *outcome) String() string {
	return fmt.Sprintf("requests=%d status=%v get_502=%d transport_errors=%d premature_close=%d reset=%d retried=%d bad_gaps=%v",
		o.requests, o.status, o.getBad, len(o.transport), o.premature, o.reset, o.retried, o.bad)
}

// load sends bursts of concurrent GET /api/v1/ping and POST /api/v1/echo
// through one keep-alive client, sleeping gaps[i] after burst i. The gaps
// sit around the keep-alive timeouts, where an upstream connection is
// reused just before or just after one side gives it up. Every burst after
// the first finds burst idle upstream connections of the same age.
func load(t *testing.T, px proxy, o *outcome, gaps []time.Duration) {
	t.Helper()
	tr := &http.Transport{
		MaxIdleConns:        burst * 2,
		MaxIdleConnsPerHost: burst * 2,
		IdleConnTimeout:     30 * time.Second, // < nginx's client keepalive_timeout (60s)
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var mu sync.Mutex
	prev := time.Duration(0)
	for round, gap := range gaps {
		var wg sync.WaitGroup
		failed := false
		for i := range burst {
			wg.Go(func() {
				var req *http.Request
				if i%2 == 0 {
					req, _ = http.NewRequestWithContext(ctx, http.MethodGet, px.url+"/api/v1/ping", nil)
				} else {
					body := fmt.Sprintf(`{"round":%d,"i":%d,"pad":"%s"}`, round, i, strings.Repeat("x", 256))
					req, _ = http.NewRequestWithContext(ctx, http.MethodPost, px.url+"/api/v1/echo", strings.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
				}
				resp, err := c.Do(req)
				mu.Lock()
				defer mu.Unlock()
				o.requests++
				if err != nil {
					o.transport = append(o.transport, err.Error())
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				o.status[resp.StatusCode]++
				if resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusGatewayTimeout {
					failed = true
					if req.Method == http.MethodGet {
						o.getBad++
					}
				}
			})
		}
		wg.Wait()
		if failed && round > 0 {
			o.bad = append(o.bad, prev.String())
		}
		if ctx.Err() != nil {
			t.Fatalf("load ran out of time after %d rounds", round)
		}
		time.Sleep(gap)
		prev = gap
	}
	// nginx writes the access line when the request ends; give the last
	// lines a moment to land.
	time.Sleep(100 * time.Millisecond)
	o.readLogs(t, px)
}

// readLogs counts, over the whole of nginx's logs so far, the error lines
// that mark a reused upstream connection dying under a request, and the
// requests nginx passed to a second attempt.
func (o *outcome) readLogs(t *testing.T, px proxy) {
	t.Helper()
	o.premature, o.reset, o.errLines = 0, 0, nil
	b, err := os.ReadFile(px.errorLog)
	if err != nil {
		t.Fatalf("read nginx error log: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, "upstream prematurely closed"):
			o.premature++
		case strings.Contains(line, "reset by peer"), strings.Contains(line, "Broken pipe"):
			o.reset++
		default:
			continue
		}
		o.errLines = append(o.errLines, line)
	}
	b, err = os.ReadFile(px.accessLog)
	if err != nil {
		t.Fatalf("read nginx access log: %v", err)
	}
	o.retried = len(regexp.MustCompile(`us="[^"]*,`).FindAll(b, -1))
	if n := bytes.Count(b, []byte(" /api/v1/")); n != o.requests {
		t.Errorf("nginx logged %d requests, the client sent %d", n, o.requests)
	}
}

// diagnose runs scripts/diagnose-eof.sh on the configuration and logs of
// nginx and on the service's metrics, and returns its proxy and service
// sections: the script must read real nginx input and output and the real
// service's metrics, not only the samples of its own tests.
func diagnose(t *testing.T, px proxy, api service) (proxySection, serviceSection string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join("scripts", "diagnose-eof.sh"),
		"-a", px.accessLog, "-e", px.errorLog, "-N", px.conf, "-m", "http://"+api.admin+"/metrics", "-i", "0")
	cmd.Dir = filepath.Join("..", "..")
	out, err := cmd.CombinedOutput()
	s := string(out)
	// Exit 3: a finished report whose summary lists warnings.
	warned := strings.Contains(s, "warning(s), client layer first:")
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 3 && warned) || err == nil && warned {
		t.Fatalf("diagnose-eof.sh: %v (summary lists warnings: %v)\n%s", err, warned, out)
	}
	i := strings.Index(s, "== 2. Proxy")
	j := strings.Index(s, "== 3. Kernel")
	k := strings.Index(s, "== 4. Service")
	l := strings.Index(s, "== Summary")
	if i < 0 || j < i || k < j || l < k {
		t.Fatalf("diagnose-eof.sh printed no proxy or service section:\n%s", s)
	}
	if !strings.Contains(s[k:l], "closed by (state)") {
		t.Fatalf("diagnose-eof.sh did not read the service's metrics:\n%s", s[k:l])
	}
	return s[i:j], s[k:l]
}

// sweep returns idle gaps from t+from to t+to in steps. The client starts
// its clock after reading the last response of a burst, a little after
// nginx and the service started theirs, so a reused connection meets the
// service's close at a gap slightly below the service's idle timeout; the
// sweep leans to the short side.
func sweep(t, from, to, step time.Duration) []time.Duration {
	var gaps []time.Duration
	for off := from; off <= to; off += step {
		gaps = append(gaps, t+off)
	}
	return gaps
}

// The reference 60s < 75s, scaled down to keep rounds cheap. In the wrong
// order the service's idle timeout is shortIdle, so the fine sweep sits
// there; in the reference order that is nginx's own timeout.
const (
	shortIdle = 500 * time.Millisecond
	longIdle  = 750 * time.Millisecond
	burst     = 16
)

// TestKeepaliveOrder runs the same load against two setups: the reference
// order (nginx gives up idle upstream connections before the service) and
// the wrong order. The first must be clean; the second must show the
// failure, which proves the load can catch it.
func TestKeepaliveOrder(t *testing.T) {
	// One pass: 36 rounds, ~20s. Both setups run in parallel.
	gaps := append(sweep(shortIdle, -12*time.Millisecond, 3*time.Millisecond, 500*time.Microsecond),
		sweep(longIdle, -10*time.Millisecond, 2*time.Millisecond, 3*time.Millisecond)...)

	t.Run("nginx-shorter-than-service", func(t *testing.T) {
		t.Parallel()
		api := startAPI(t, longIdle)
		px := startNginx(t, api.addr, shortIdle)
		waitHTTP(t, px.url+"/healthz", 5*time.Second)
		o := &outcome{status: map[int]int{}}
		load(t, px, o, gaps)
		t.Logf("reference order (nginx %s < service %s): %s", shortIdle, longIdle, o)
		if o.failures() != 0 || o.retried != 0 || len(o.transport) != 0 {
			t.Errorf("want no 502/504, premature close, reset or retry; got %s\n%s\n%v",
				o, strings.Join(o.errLines, "\n"), o.transport)
		}
		if o.status[200] != o.requests {
			t.Errorf("want every request 200, got %s", o)
		}
		report, svc := diagnose(t, px, api)
		for _, want := range []string{"[OK] no 499, 502, 503 or 504 among", "[OK] no upstream connection errors in the error log"} {
			if !strings.Contains(report, want) {
				t.Errorf("diagnose-eof.sh on the clean logs: missing %q in\n%s", want, report)
			}
		}
		if !strings.Contains(report, "keepalive_timeout 0.5s is below the service's idle timeout 0.75s") {
			t.Errorf("diagnose-eof.sh did not pass the keep-alive order of the configurations:\n%s", report)
		}
		// In this order nginx closes every idle upstream connection
		// first: the service sees its peer leave, and never times one out.
		if !regexp.MustCompile(`(?m)^  peer_closed \(idle\)\s+[1-9]`).MatchString(svc) {
			t.Errorf("the service counted no idle connection closed by nginx:\n%s", svc)
		}
		if strings.Contains(svc, "idle_timeout") || strings.Contains(svc, "keep-alive order") {
			t.Errorf("the service timed out idle connections nginx should have closed first:\n%s", svc)
		}
	})

	t.Run("nginx-longer-than-service", func(t *testing.T) {
		t.Parallel()
		api := startAPI(t, shortIdle)
		px := startNginx(t, api.addr, longIdle)
		waitHTTP(t, px.url+"/healthz", 5*time.Second)
		o := &outcome{status: map[int]int{}}
		// The failure is a race (a request written onto a connection the
		// service is closing), so it needs several tries at the boundary;
		// a pass usually shows it, three passes are the bound.
		for pass := 1; pass <= 3; pass++ {
			load(t, px, o, gaps)
			t.Logf("wrong order (nginx %s > service %s), pass %d: %s", longIdle, shortIdle, pass, o)
			if o.failures() > 0 || o.retried > 0 {
				break
			}
		}
		if o.failures() == 0 && o.retried == 0 {
			t.Errorf("the wrong order went unnoticed: %s", o)
		}
		// A GET that dies on a reused connection is retried on a fresh
		// one; only non-idempotent requests reach the client as 502.
		if o.getBad != 0 {
			t.Errorf("nginx answered %d GETs with 502/504 instead of retrying: %s", o.getBad, o)
		}
		if len(o.transport) != 0 {
			t.Errorf("client transport errors: %v", o.transport)
		}
		report, svc := diagnose(t, px, api)
		want := fmt.Sprintf("upstream connections died under a request (prematurely closed: %d, reset by peer: ", o.premature)
		if o.premature+o.reset > 0 && !strings.Contains(report, want) {
			t.Errorf("diagnose-eof.sh missed the premature closes: want %q in\n%s", want, report)
		}
		if !strings.Contains(report, "keeps idle connections for 0.75s, not less than the service's idle timeout 0.5s") {
			t.Errorf("diagnose-eof.sh did not flag the keep-alive order of the configurations:\n%s", report)
		}
		// The service's own metrics name the other side of the race: it
		// closed idle connections nginx was about to reuse, and the
		// report joins the two layers into one finding.
		if !regexp.MustCompile(`(?m)^  idle_timeout \(idle\)\s+[1-9]`).MatchString(svc) {
			t.Errorf("the service counted no idle timeout of its own:\n%s", svc)
		}
		if o.premature+o.reset > 0 && !strings.Contains(svc, "[WARN] keep-alive order: nginx lost ") {
			t.Errorf("diagnose-eof.sh did not join nginx's premature closes to the service's idle timeouts:\n%s", svc)
		}
		if n := o.status[502]; n > 0 && !strings.Contains(report, fmt.Sprintf("[WARN] %d requests ended with 502", n)) {
			t.Errorf("diagnose-eof.sh did not count %d 502s:\n%s", n, report)
		}
		for _, l := range o.errLines[:min(len(o.errLines), 3)] {
			t.Log(l)
		}
	})
}
