//go:build unix

package scripttest_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit"
	"github.com/hardenedgo/ginservice/internal/testkit/redistest"
)

// startService builds and runs the real cmd/api on free loopback ports with
// env added, and returns its public and admin addresses.
func startService(t *testing.T, env ...string) (public, admin string) {
	t.Helper()
	public, admin, _ = startServiceLog(t, env...)
	return public, admin
}

// startServiceLog is startService that also returns the file its stdout
// (the JSON log) goes to.
func startServiceLog(t *testing.T, env ...string) (public, admin, logFile string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "api")
	build := exec.Command("go", "build", "-o", bin, "./cmd/api")
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/api: %v\n%s", err, out)
	}
	cmd := exec.Command(bin)
	cmd.Env = append([]string{"HTTP_ADDR=127.0.0.1:0", "ADMIN_ADDR=127.0.0.1:0", "SHUTDOWN_DELAY=0s", "LOG_FLUSH_INTERVAL=10ms"}, env...)
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logFile = filepath.Join(t.TempDir(), "service.log")
	lf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lf.Close() })
	stdout := io.TeeReader(pipe, lf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	addrs := make(chan [2]string, 1)
	go func() {
		defer close(done)
		br := bufio.NewReader(stdout)
		if public, admin, err := testkit.Listening(br); err == nil {
			addrs <- [2]string{public, admin}
		}
		_, _ = io.Copy(io.Discard, br)
		_ = cmd.Wait()
	}()
	select {
	case a := <-addrs:
		return a[0], a[1], logFile
	case <-done:
		t.Fatal("the service exited before it listened")
	case <-time.After(30 * time.Second):
		t.Fatal("the service did not start")
	}
	return "", "", ""
}

// TestDiagnoseServiceMetrics provokes, against the real service, each way a
// connection or request can end badly, and checks that the service section
// of the report names it from the service's own metrics.
func TestDiagnoseServiceMetrics(t *testing.T) {
	need(t, "curl")
	public, admin := startService(t, "HTTP_READ_HEADER_TIMEOUT=300ms", "HTTP_IDLE_TIMEOUT=300ms")
	metricsURL := "http://" + admin + "/metrics"

	// Nothing has gone wrong yet.
	out, code := script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", metricsURL)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	checkFindings(t, out)
	svc := section(out, "4. Service")
	mustContain(t, "service, clean", svc,
		"[OK] no connection was reset or left mid-request, and none was cut by a timeout, since the service started")
	// Its accept queue, read from its own listener: empty, at the limit
	// the namespace's somaxconn gave it.
	n := strconv.Itoa(testkit.Somaxconn(t))
	mustContain(t, "service, accept queue", svc,
		"public listener's accept queue now: 0 waiting, limit "+n+" (net.core.somaxconn now "+n+")")
	// The reference nginx configuration against this instance's timeouts,
	// read from its metrics: its 300ms idle timeout loses the race.
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", metricsURL, "-N", filepath.Join(repoRoot(t), "deploy", "nginx", "nginx.conf"))
	checkFindings(t, out)
	mustContain(t, "proxy conf against the instance", section(out, "2. Proxy"),
		"the service's idle timeout 0.3s, write timeout 30s, from "+metricsURL,
		"[WARN] upstream api (127.0.0.1:8080) keeps idle connections for 60s, not less than the service's idle timeout 0.3s")

	// nginx's error log says upstream connections died, the service closed
	// none as idle: the keep-alive order is ruled out, and said so.
	errlog := filepath.Join(t.TempDir(), "error.log")
	if err := os.WriteFile(errlog, []byte(errorSample), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", metricsURL, "-e", errlog)
	checkFindings(t, out)
	svc = section(out, "4. Service")
	mustContain(t, "service, proxy errors without idle closes", svc,
		"[NOTE] the service closed no connection by its idle timeout since the service started, yet nginx lost 7 upstream connections under a request")
	if strings.Contains(svc, "[WARN] keep-alive order") {
		t.Errorf("keep-alive order blamed with no idle close:\n%s", svc)
	}

	// A client that gives up on a slow request: the dependency answers in 2 s.
	req, _ := http.NewRequest(http.MethodPut, "http://"+admin+"/debug/faults", strings.NewReader(`{"latency":"2s"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// A patient one gets the fallback at BREAKER_TIMEOUT (1s), after the
	// client's attempts timed out (400ms) and were retried.
	patient := &http.Client{Timeout: 5 * time.Second}
	if resp, err := patient.Get("http://" + public + "/api/v1/items/2"); err != nil || resp.Header.Get("X-Degraded") != "true" {
		t.Fatalf("a 2 s dependency did not give the fallback: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	impatient := &http.Client{Timeout: 200 * time.Millisecond}
	if _, err := impatient.Get("http://" + public + "/api/v1/items/1"); err == nil {
		t.Fatal("a 2 s request answered within 200 ms")
	}
	// One that aborts its connection (SO_LINGER 0: a reset) mid-request.
	rc, err := net.Dial("tcp", public)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(rc, "GET /api/v1/items/3 HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(200 * time.Millisecond)
	rc.(*net.TCPConn).SetLinger(0)
	rc.Close()
	// Headers over the limit.
	big, _ := http.NewRequest(http.MethodGet, "http://"+public+"/api/v1/ping", nil)
	big.Header.Set("X-Big", strings.Repeat("a", 70<<10))
	if resp, err := http.DefaultClient.Do(big); err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// A client that starts a request and stalls past the read-header timeout.
	c, err := net.Dial("tcp", public)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHo")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	io.Copy(io.Discard, c) // until the server closes it
	c.Close()
	// A client that resets its connection (SO_LINGER 0) after a response.
	c, err = net.Dial("tcp", public)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
		resp.Body.Close()
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	// A kept-alive connection left idle past the idle timeout.
	c, err = net.Dial("tcp", public)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err == nil {
		resp.Body.Close()
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	io.Copy(io.Discard, br) // the server closes it after 300 ms
	c.Close()
	// The 499 is counted when the abandoned handler returns.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(metricsURL)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), `http_server_client_aborts_total{route="/api/v1/items/:id"} 2`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the abandoned requests were never counted as client aborts:\n%s", body)
		}
		time.Sleep(50 * time.Millisecond)
	}

	out, code = script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", metricsURL)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	checkFindings(t, out)
	svc = section(out, "4. Service")
	mustContain(t, "service", svc,
		"-- connections (now: ",
		"[WARN] clients left in the middle of a request: 1 connections, 2 requests logged as 499 since the service started",
		"[WARN] 1 connections were reset by the peer (RST) in the middle of a request since the service started",
		"[NOTE] 1 connections were reset by the peer (RST) between requests or before the first since the service started",
		"[WARN] 1 connections were cut by the read-header/read timeout since the service started",
		"[NOTE] 1 idle keep-alive connections were closed by the service's idle timeout since the service started",
		"[WARN] the service rejected requests before routing since the service started (408: 1, 431: 1)")
	mustContain(t, "service, dependency", svc,
		"[WARN] responses were served from the fallback since the service started (timeout: 1)",
		"[NOTE] the service retried calls to its dependencies since the service started (timeout: ")
	mustMatch(t, "service", svc, `(?m)^  peer_reset \(idle\)\s+1$`, `(?m)^  peer_reset \(active\)\s+1$`, `(?m)^  idle_timeout \(idle\)\s+1$`, `(?m)^  read_timeout \((new|active)\)\s+1$`)
	mustContain(t, "summary", section(out, "Summary"), "clients left in the middle of a request", "rejected requests before routing")
	if strings.Contains(out, "[WARN] keep-alive order") {
		t.Errorf("keep-alive order blamed without the proxy's logs:\n%s", svc)
	}

	// The same idle close next to nginx's premature closes: the two layers
	// are joined into one finding.
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", metricsURL, "-e", errlog)
	checkFindings(t, out)
	svc = section(out, "4. Service")
	mustContain(t, "service, proxy errors and idle closes", svc,
		"[WARN] keep-alive order: nginx lost 7 upstream connections under a request, and the service closed 1 idle connections by its own idle timeout since the service started")
	if strings.Contains(svc, "[NOTE] 1 idle keep-alive connections") || strings.Contains(svc, "closed no connection by its idle timeout") {
		t.Errorf("the joined finding should replace the idle-close notes:\n%s", svc)
	}
	mustContain(t, "summary, keep-alive order", section(out, "Summary"), "keep-alive order: nginx lost 7")
	// With a configuration whose order is right (nginx's 0.1s below the
	// service's 0.3s) the race is ruled out: a restart or a crash, said so.
	conf := filepath.Join(t.TempDir(), "nginx-T.txt")
	if err := os.WriteFile(conf, []byte("http {\n upstream api { server 127.0.0.1:8080; keepalive 8; keepalive_timeout 100ms; }\n"+
		" server { listen 80; location / { proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", metricsURL, "-e", errlog, "-N", conf)
	checkFindings(t, out)
	svc = section(out, "4. Service")
	mustContain(t, "service, proxy errors, idle closes, right order", svc,
		"[NOTE] nginx lost 7 upstream connections under a request, though its keepalive_timeout is below the service's idle timeout (--nginx-conf above)",
		"this process started 20")
	if strings.Contains(svc, "[WARN] keep-alive order") {
		t.Errorf("keep-alive order blamed although --nginx-conf found it right:\n%s", svc)
	}
	// -p: only the errors of upstreams on that port are lined up.
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", metricsURL, "-e", errlog, "-p", "8080")
	mustContain(t, "service, -p 8080", section(out, "4. Service"), "[WARN] keep-alive order: nginx lost 7 upstream connections")
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", metricsURL, "-e", errlog, "-p", "8081")
	if svc := section(out, "4. Service"); strings.Contains(svc, "keep-alive order") || strings.Contains(svc, "nginx lost") {
		t.Errorf("-p 8081 lined up errors of the upstream on 8080:\n%s", svc)
	}

	// Over an interval, only what happens meanwhile counts.
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "1", "-m", metricsURL)
	svc = section(out, "4. Service")
	// The window is at least the interval; a busy machine makes it longer.
	mustMatch(t, "service, interval", svc,
		`in-last-[1-9][0-9]*s`,
		`\[OK\] no connection was reset or left mid-request, and none was cut by a timeout, in the last [1-9][0-9]*s`)

	// Wrong or unreachable URLs are reported, not fatal.
	out, code = script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", "http://"+public+"/healthz")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	mustContain(t, "not metrics", section(out, "4. Service"), "[SKIP] http://"+public+"/healthz has no http_server_connections_closed_total")
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", "http://"+public+"/healthz", "-N", filepath.Join(repoRoot(t), "deploy", "nginx", "nginx.conf"))
	mustContain(t, "not metrics, nginx conf", section(out, "2. Proxy"), "from the service's defaults (http://"+public+"/healthz has no http_server_timeout_seconds: an older build?)")
	dead := "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t)) // nothing listens there
	out, code = script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", "http://"+dead+"/metrics")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	mustContain(t, "unreachable", section(out, "4. Service"), "[WARN] could not read the service's metrics at http://"+dead+"/metrics")
	mustContain(t, "unreachable, summary", section(out, "Summary"), "could not read the service's metrics")
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", "http://"+dead+"/metrics", "-N", filepath.Join(repoRoot(t), "deploy", "nginx", "nginx.conf"))
	mustContain(t, "unreachable, nginx conf", section(out, "2. Proxy"), "from the service's defaults (could not read http://"+dead+"/metrics)")
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0")
	mustContain(t, "no --metrics", section(out, "4. Service"), "[SKIP] no --metrics given")
}

// Requests the forced close cut when SHUTDOWN_TIMEOUT ran out are their own
// finding, when a scrape caught the count before the process exited (here
// a recorded page).
func TestDiagnoseShutdownCut(t *testing.T) {
	svc := diagnosePage(t, "# TYPE http_server_connections_closed_total counter\n"+
		`http_server_connections_closed_total{reason="peer_closed",state="idle"} 12`+"\n"+
		`http_server_connections_closed_total{reason="shutdown_timeout",state="active"} 3`+"\n")
	mustContain(t, "service, requests cut at shutdown", svc,
		"shutdown_timeout (active)",
		"[WARN] 3 requests in flight were cut when the shutdown's drain ran out of time (SHUTDOWN_TIMEOUT) since the service started")
	if strings.Contains(svc, "[OK] no connection was reset") {
		t.Errorf("OK despite requests cut at shutdown:\n%s", svc)
	}
}

// HTTP/2 protocol errors the server answered are a finding by their type:
// the rapid-reset pattern a warning, the rest a note.
func TestDiagnoseHTTP2Errors(t *testing.T) {
	for _, tc := range []struct {
		page, want string
	}{
		{`http_server_http2_errors_total{type="conn_ENHANCE_YOUR_CALM_too_many_early_resets"} 2` + "\n" +
			`http_server_http2_errors_total{type="stream_PROTOCOL_ERROR_over_max_streams"} 5` + "\n",
			"[WARN] HTTP/2 clients reset streams as fast as they opened them since the service started (conn_ENHANCE_YOUR_CALM_too_many_early_resets: 2, stream_PROTOCOL_ERROR_over_max_streams: 5)"},
		{`http_server_http2_errors_total{type="conn_PROTOCOL_ERROR_reset_idle_stream"} 1` + "\n",
			"[NOTE] HTTP/2 clients broke the protocol since the service started (conn_PROTOCOL_ERROR_reset_idle_stream: 1)"},
	} {
		svc := diagnosePage(t, "# TYPE http_server_connections_closed_total counter\n"+
			`http_server_connections_closed_total{reason="peer_closed",state="idle"} 12`+"\n"+
			"# TYPE http_server_http2_errors_total counter\n"+tc.page)
		mustContain(t, "service, HTTP/2 errors", svc, tc.want)
		if strings.Contains(svc, "[OK] no rejected requests") {
			t.Errorf("OK despite HTTP/2 errors:\n%s", svc)
		}
	}
}

// The accept queue's findings, from a recorded page: a queue over half
// full, and a limit below the namespace's somaxconn now (raised after the
// service started), a warning only when handshakes were dropped.
func TestDiagnoseListenQueue(t *testing.T) {
	page := func(queue, limit, somaxconn, overflows int) string {
		return "# TYPE http_server_connections_closed_total counter\n" +
			`http_server_connections_closed_total{reason="peer_closed",state="idle"} 12` + "\n" +
			`http_server_listen_queue_connections{listener="admin"} 0` + "\n" +
			`http_server_listen_queue_connections{listener="public"} ` + strconv.Itoa(queue) + "\n" +
			`http_server_listen_queue_limit_connections{listener="admin"} 4096` + "\n" +
			`http_server_listen_queue_limit_connections{listener="public"} ` + strconv.Itoa(limit) + "\n" +
			`kernel_sysctl{name="net.core.somaxconn"} ` + strconv.Itoa(somaxconn) + "\n" +
			`kernel_tcp_listen_overflows_total ` + strconv.Itoa(overflows) + "\n"
	}
	for _, tc := range []struct {
		name      string
		page      string
		want, not []string
	}{
		{"empty", page(0, 4096, 4096, 0),
			[]string{"public listener's accept queue now: 0 waiting, limit 4096 (net.core.somaxconn now 4096)", "[OK] no rejected requests"},
			[]string{"half full", "but net.core.somaxconn"}},
		{"half full", page(300, 512, 512, 0),
			[]string{"[WARN] the public listener's accept queue is more than half full: 300 of 512 connections wait to be accepted"},
			[]string{"[OK] no rejected requests", "but net.core.somaxconn"}},
		{"exactly half", page(256, 512, 512, 0),
			[]string{"[OK] no rejected requests"}, []string{"half full"}},
		{"raised later", page(0, 4096, 65535, 0),
			[]string{"[NOTE] the public listener's accept queue limit is 4096, but net.core.somaxconn is now 65535"},
			[]string{"[OK] no rejected requests"}},
		{"raised later, overflowing", page(0, 128, 4096, 9),
			[]string{"[WARN] the public listener's accept queue limit is 128, but net.core.somaxconn is now 4096"}, nil},
	} {
		svc := diagnosePage(t, tc.page)
		mustContain(t, tc.name, svc, tc.want...)
		for _, n := range tc.not {
			if strings.Contains(svc, n) {
				t.Errorf("%s: %q in:\n%s", tc.name, n, svc)
			}
		}
	}
}

// Retransmissions on the service's client connections, from a recorded
// page: a note under 1% of the closed connections, a warning above.
func TestDiagnoseRetransmissions(t *testing.T) {
	page := func(segs, conns, closed int) string {
		return "# TYPE http_server_connections_closed_total counter\n" +
			`http_server_connections_closed_total{reason="peer_closed",state="idle"} ` + strconv.Itoa(closed) + "\n" +
			`http_server_retransmitted_segments_total ` + strconv.Itoa(segs) + "\n" +
			`http_server_retransmitting_connections_total ` + strconv.Itoa(conns) + "\n"
	}
	svc := diagnosePage(t, page(0, 0, 500))
	mustContain(t, "none", svc, "[OK] no rejected requests, TLS handshake or HTTP/2 errors, listen queue overflows or backlog, retransmissions")
	svc = diagnosePage(t, page(7, 3, 500))
	mustContain(t, "few", svc, "[NOTE] 3 of the 500 connections closed since the service started needed retransmissions (7 segments sent again)")
	svc = diagnosePage(t, page(90, 30, 500))
	mustContain(t, "many", svc, "[WARN] 30 of the 500 connections closed since the service started needed retransmissions (90 segments sent again)")
	if strings.Contains(svc, "[OK] no rejected requests") {
		t.Errorf("OK despite retransmissions:\n%s", svc)
	}
}

// The service's own log, read with -l: a response cut by the write timeout
// while its client had stopped reading shows with its request_id and the
// bytes never sent; a missing file, a log with no close lines and no -l at
// all are said so.
func TestDiagnoseServiceLog(t *testing.T) {
	// The write timeout runs from the end of the request headers: 3 s
	// leave a busy machine time to read the body and start the answer.
	public, _, logFile := startServiceLog(t, "HTTP_WRITE_TIMEOUT=3s", "BREAKER_TIMEOUT=500ms", "MAX_BODY_BYTES=67108864", "RATELIMIT_ENABLED=false")
	// An 8 MB echo, more than both socket buffers hold, whose client never
	// reads the answer.
	// Its receive buffer is small from the start (set before connect: set
	// after, it would shrink the window under data in flight, which the
	// service then resends).
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", public)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := `"` + strings.Repeat("a", 8<<20) + `"`
	fmt.Fprintf(c, "POST /api/v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-ID: cut-by-write-timeout\r\nContent-Length: %d\r\n\r\n", len(body))
	if _, err := io.WriteString(c, body); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, _ := os.ReadFile(logFile)
		if strings.Contains(string(b), `"msg":"connection closed","reason":"write_timeout"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write_timeout close line:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}

	out, _ := script(t, nil, "diagnose-eof.sh", "-i", "0", "-l", logFile)
	checkFindings(t, out)
	sec := section(out, "5. Service")
	mustMatch(t, "service log", sec,
		`-- [1-9][0-9]* close lines \(.*write_timeout: 1`,
		`\[WARN\] 1 responses were cut by the write timeout: their clients never got them whole \(request_id cut-by-write-timeout; up to [1-9][0-9]* bytes still unsent in the kernel: the client had stopped reading\)`)
	mustContain(t, "service log, summary", section(out, "Summary"), "1 responses were cut by the write timeout")
	if strings.Contains(sec, "needed retransmissions") {
		t.Errorf("retransmissions on loopback with a client that only stopped reading:\n%s", sec)
	}

	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0", "-l", filepath.Join(t.TempDir(), "missing.log"))
	checkFindings(t, out)
	mustContain(t, "missing log", section(out, "5. Service"), "[WARN] cannot read the service log ")
	other := filepath.Join(t.TempDir(), "other.log")
	if err := os.WriteFile(other, []byte(`{"level":"INFO","msg":"request","status":200}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0", "-l", other)
	mustContain(t, "no close lines", section(out, "5. Service"), "[SKIP] no 'connection closed' lines in "+other)
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0")
	mustContain(t, "no -l", section(out, "5. Service"), "[SKIP] no --service-log given")
	// Lines of a build or system without TCP_INFO, and the count of lines
	// the log's rate limit held back.
	old := filepath.Join(t.TempDir(), "old.log")
	if err := os.WriteFile(old, []byte(
		`{"level":"INFO","msg":"connection closed","reason":"peer_reset","state":"idle","remote_addr":"[2001:db8::1]:4711"}`+"\n"+
			`{"level":"INFO","msg":"connection closed","reason":"idle_timeout","state":"idle","remote_addr":"10.0.0.1:4711","suppressed":12}`+"\n"+
			`{"level":"INFO","msg":"connection closed","reason":"peer_reset","state":"active","remote_addr":"10.0.0.2:4711"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ = script(t, nil, "diagnose-eof.sh", "-i", "0", "-l", old)
	checkFindings(t, out)
	mustContain(t, "old build", section(out, "5. Service"),
		"-- 3 close lines (idle_timeout: 1, peer_reset: 2)",
		"[NOTE] the close lines carry no TCP_INFO fields (tcp_retrans, tcp_rtt_ms)",
		"[NOTE] the log's rate limit held back 12 close lines (at most 5 a second are written): the counts above are lower bounds")
}

// Connections that waited in the accept queue, from a recorded page: a
// note when a few waited over 100 ms, a warning over 1% of them.
func TestDiagnoseAcceptWait(t *testing.T) {
	page := func(fast, total int) string {
		return "# TYPE http_server_connections_closed_total counter\n" +
			`http_server_connections_closed_total{reason="peer_closed",state="idle"} 12` + "\n" +
			"# TYPE http_server_accept_wait_seconds histogram\n" +
			`http_server_accept_wait_seconds_bucket{le="0.05"} ` + strconv.Itoa(fast) + "\n" +
			`http_server_accept_wait_seconds_bucket{le="0.1"} ` + strconv.Itoa(fast) + "\n" +
			`http_server_accept_wait_seconds_bucket{le="+Inf"} ` + strconv.Itoa(total) + "\n" +
			`http_server_accept_wait_seconds_count ` + strconv.Itoa(total) + "\n"
	}
	svc := diagnosePage(t, page(1000, 1000))
	mustContain(t, "none waited", svc, "[OK] no rejected requests")
	svc = diagnosePage(t, page(999, 1000))
	mustContain(t, "a few", svc, "[NOTE] 1 of the 1000 connections accepted since the service started waited over 100 ms before the service read them")
	svc = diagnosePage(t, page(900, 1000))
	mustContain(t, "many", svc, "[WARN] 100 of the 1000 connections accepted since the service started waited over 100 ms before the service read them")
	if strings.Contains(svc, "[OK] no rejected requests") {
		t.Errorf("OK despite connections left waiting:\n%s", svc)
	}
}

// diagnosePage runs diagnose-eof.sh -i 0 on a recorded metrics page served
// on loopback, checks its exit and the shape of its findings, and returns
// its service section.
func diagnosePage(t *testing.T, page string) string {
	t.Helper()
	need(t, "curl")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, page) }))
	defer srv.Close()
	out, code := script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", srv.URL+"/metrics")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	checkFindings(t, out)
	return section(out, "4. Service")
}

// TestDiagnoseKeepAliveRace provokes the keep-alive race against the real
// service with no proxy in front: a client reuses a kept-alive connection
// after the service closed it by its idle timeout, and its request meets a
// reset (the kernel's TCPAbortOnData). Over an interval, the report lines
// the idle closes up with the kernel counter and names the race.
func TestDiagnoseKeepAliveRace(t *testing.T) {
	need(t, "curl")
	if _, err := os.Stat("/proc/net/netstat"); err != nil {
		t.Skip("no /proc/net/netstat: the kernel counter is Linux's")
	}
	public, admin := startService(t, "HTTP_IDLE_TIMEOUT=1s")

	cmd := exec.Command("bash", filepath.Join("scripts", "diagnose-eof.sh"), "-i", "5", "-m", "http://"+admin+"/metrics")
	cmd.Dir = repoRoot(t)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	// The first line of the report comes after the first reading of the
	// counters and metrics: the race must fall after it.
	br := bufio.NewReader(stdout)
	var out strings.Builder
	first, err := br.ReadString('\n')
	out.WriteString(first)
	if err != nil {
		t.Fatalf("no report: %v\n%s", err, out.String())
	}
	report := make(chan struct{})
	go func() {
		defer close(report)
		_, _ = io.Copy(&out, br)
	}()

	// The race on the wire: a request crosses the service's FIN. Linux
	// counts TCPAbortOnData only when the data reaches a closed socket
	// that has not sent its FIN out yet (FIN_WAIT1); a request sent long
	// after the FIN went out meets a timewait socket's reset, which no
	// counter names. To hold the FIN back for the whole idle timeout, each
	// client shrinks its receive window and pipelines requests without
	// reading: the answers wait in the service's send queue, the idle
	// timeout closes the connection with its FIN queued behind them, and
	// the next request arrives at a closed socket with data still unsent.
	dialer := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024)
		}); err != nil {
			return err
		}
		return serr
	}}
	const pipelined = 60
	req := "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n"
	lost := 0
	for range 3 {
		c, err := dialer.Dial("tcp", public)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, strings.Repeat(req, pipelined)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond) // HTTP_IDLE_TIMEOUT=1s
		_, _ = io.WriteString(c, req)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		answered := 0
		for {
			resp, err := http.ReadResponse(r, nil)
			if err != nil {
				break
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			answered++
		}
		if answered <= pipelined {
			lost++ // the last request met the closed connection
		}
		c.Close()
	}
	if lost != 3 {
		t.Fatalf("%d of 3 requests sent after the idle timeout were lost, want 3: the service's idle timeout did not close the connections", lost)
	}

	select {
	case <-report:
	case <-time.After(90 * time.Second):
		t.Fatal("diagnose-eof.sh did not finish")
	}
	_ = cmd.Wait()
	svc := section(out.String(), "4. Service")
	mustMatch(t, "service, keep-alive race", svc,
		`\[WARN\] keep-alive race: the service closed [3-9] idle connections by its idle timeout in the last [1-9][0-9]*s, and [1-9][0-9]* requests reached connections it had already closed \(TCPAbortOnData\)`,
		`Transport.IdleConnTimeout`)
	mustContain(t, "summary", section(out.String(), "Summary"), "keep-alive race")
}

// The service as the client in the keep-alive race, end to end: a real
// dependency that closes each kept-alive connection as its second request
// arrives, as one whose keep-alive timeout just ran out does. The service's
// GET is replayed by net/http on a new connection (the caller gets its
// item, not the fallback), and the diagnosis names the stale connection,
// the dependency, and the idle time that bounds its keep-alive timeout.
func TestDiagnoseStaleDependencyConnections(t *testing.T) {
	need(t, "curl")
	type served struct{}
	dep := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := r.Context().Value(served{}).(*int)
		if *n++; *n > 1 {
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				c.Close() // the request read, the connection closed: no answer
			}
			return
		}
		id := strings.TrimPrefix(r.URL.Path, "/items/")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":%q,"name":"item %s","price":100}`, id, id)
	}))
	// One counter per connection; its requests are served one at a time.
	dep.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, served{}, new(int))
	}
	dep.Start()
	t.Cleanup(dep.Close)
	public, admin := startService(t, "DOWNSTREAM_URL="+dep.URL, "DOWNSTREAM_IDLE_CONN_TIMEOUT=30s")
	metricsURL := "http://" + admin + "/metrics"

	for i, pause := range []time.Duration{0, 1200 * time.Millisecond} {
		time.Sleep(pause)
		resp, err := http.Get(fmt.Sprintf("http://%s/api/v1/items/%d", public, i+1))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("X-Degraded") != "" {
			t.Fatalf("item %d: %d %s (degraded %q): want the dependency's answer", i+1, resp.StatusCode, body, resp.Header.Get("X-Degraded"))
		}
	}
	out, code := script(t, nil, "diagnose-eof.sh", "-i", "0", "-m", metricsURL)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	checkFindings(t, out)
	svc := section(out, "4. Service")
	host := strings.TrimPrefix(dep.URL, "http://")
	mustContain(t, "service, stale dependency connections", svc,
		"[NOTE] 1 calls to dependencies found their kept-alive connection closed by the dependency since the service started ("+host+": 1); idle 1 to 2 s at the shortest")
	// The explanation and the advice, their lines joined.
	mustContain(t, "service, stale dependency connections", strings.Join(strings.Fields(svc), " "),
		"the others fail with EOF or a reset (0 of these)",
		"keep DOWNSTREAM_IDLE_CONN_TIMEOUT (now 30s) below the dependency's keep-alive timeout, under 1 s")
	if strings.Contains(svc, "[OK] no rejected requests") {
		t.Errorf("OK despite a stale dependency connection:\n%s", svc)
	}
}

// A stale connection whose failure reached a caller is a warning; one
// closed almost at once says so.
func TestDiagnoseStaleDependencyConnectionsPage(t *testing.T) {
	svc := diagnosePage(t, "# TYPE http_server_connections_closed_total counter\n"+
		`http_server_connections_closed_total{reason="peer_closed",state="idle"} 12`+"\n"+
		"# TYPE http_client_stale_connection_idle_seconds histogram\n"+
		`http_client_stale_connection_idle_seconds_bucket{host="a:80",le="0.25"} 2`+"\n"+
		`http_client_stale_connection_idle_seconds_bucket{host="a:80",le="0.5"} 3`+"\n"+
		`http_client_stale_connection_idle_seconds_bucket{host="a:80",le="+Inf"} 3`+"\n"+
		`http_client_stale_connection_idle_seconds_count{host="a:80"} 3`+"\n"+
		`http_client_stale_connection_idle_seconds_bucket{host="b:80",le="0.25"} 0`+"\n"+
		`http_client_stale_connection_idle_seconds_bucket{host="b:80",le="0.5"} 1`+"\n"+
		`http_client_stale_connection_idle_seconds_bucket{host="b:80",le="+Inf"} 1`+"\n"+
		`http_client_stale_connection_idle_seconds_count{host="b:80"} 1`+"\n"+
		"# TYPE http_client_attempt_errors_total counter\n"+
		`http_client_attempt_errors_total{connection="reused",host="a:80",kind="eof"} 2`+"\n"+
		`http_client_attempt_errors_total{connection="none",host="a:80",kind="refused"} 7`+"\n"+
		`http_client_attempt_errors_total{connection="reused",host="a:80",kind="timeout"} 5`+"\n"+
		`http_client_attempt_errors_total{connection="reused",host="b:80",kind="reset"} 1`+"\n"+
		"# TYPE http_client_idle_timeout_seconds gauge\n"+
		"http_client_idle_timeout_seconds 30\n")
	mustContain(t, "service, stale connections that failed", svc,
		"[WARN] 4 calls to dependencies found their kept-alive connection closed by the dependency since the service started (a:80: 3, b:80: 1); idle under 0.25 s at the shortest")
	mustContain(t, "service, stale connections that failed", strings.Join(strings.Fields(svc), " "),
		"the others fail with EOF or a reset (3 of these)",
		"The dependency closed connections idle under 0.25 s")
}
