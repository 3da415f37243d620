package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
	"github.com/tsenart/vegeta/v12/lib/plot"
)

// faultServer serves a known mix on loopback: /ok 200, /fail 500, /eof
// closes the connection without a response (FIN: the client reads EOF),
// /reset aborts it (SO_LINGER 0: RST), /slow answers after 2 s (beyond the
// tests' timeout). hits counts requests that reached a handler.
func faultServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = w.Write([]byte(`{"message":"pong"}`))
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "boom", http.StatusInternalServerError)
	})
	hijack := func(linger bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			if linger {
				_ = conn.(*net.TCPConn).SetLinger(0)
			}
			_ = conn.Close()
		}
	}
	mux.HandleFunc("/eof", hijack(false))
	mux.HandleFunc("/reset", hijack(true))
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, &hits
}

// closedPort returns a loopback address nobody listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func get(urls ...string) []vegeta.Target {
	out := make([]vegeta.Target, 0, len(urls))
	for _, u := range urls {
		out = append(out, vegeta.Target{Method: http.MethodGet, URL: u})
	}
	return out
}

func TestAttackKnownMix(t *testing.T) {
	srv, _ := faultServer(t)
	refused := "http://" + closedPort(t) + "/"
	// Round-robin over seven targets, 10 rounds: exactly 10 requests each.
	targets := get(srv.URL+"/ok", srv.URL+"/ok", srv.URL+"/fail", srv.URL+"/eof",
		srv.URL+"/reset", srv.URL+"/slow", refused)
	const perTarget = 10

	p := plot.New(plot.Title("mix"), plot.Label(PlotLabel))
	var seen int
	start := time.Now()
	sum, err := Attack(context.Background(), Options{
		Targets:     targets,
		Rate:        0,
		Workers:     7,
		Duration:    20 * time.Second, // bound; MaxRequests ends it first
		MaxRequests: uint64(len(targets) * perTarget),
		Timeout:     300 * time.Millisecond,
		KeepAlive:   true,
	}, func(r *vegeta.Result) error { seen++; return p.Add(r) })
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("attack took %s; MaxRequests did not stop it", d)
	}

	if sum.Requests != uint64(len(targets)*perTarget) || seen != len(targets)*perTarget {
		t.Fatalf("requests %d, observed %d; want %d", sum.Requests, seen, len(targets)*perTarget)
	}
	wantCodes := map[int]uint64{200: 2 * perTarget, 500: perTarget, 0: 4 * perTarget}
	for c, n := range wantCodes {
		if sum.StatusCodes[c] != n {
			t.Errorf("status %d: %d, want %d (all: %v)", c, sum.StatusCodes[c], n, sum.StatusCodes)
		}
	}
	if len(sum.StatusCodes) != len(wantCodes) {
		t.Errorf("status codes %v, want only %v", sum.StatusCodes, wantCodes)
	}
	wantKinds := map[string]uint64{KindEOF: perTarget, KindReset: perTarget, KindTimeout: perTarget, KindRefused: perTarget, KindOther: 0}
	for k, n := range wantKinds {
		if sum.TransportErrors[k] != n {
			t.Errorf("%s: %d, want %d (all: %v, examples: %q)", k, sum.TransportErrors[k], n, sum.TransportErrors, sum.Examples)
		}
	}
	if want := 2.0 / 7; sum.Success < want-0.001 || sum.Success > want+0.001 {
		t.Errorf("success %.4f, want %.4f", sum.Success, want)
	}
	// Timeouts bound the latency from below at p90 and above at max.
	if sum.Latencies.Max < 300*time.Millisecond || sum.Latencies.Max > 2*time.Second {
		t.Errorf("max latency %s, want about the 300ms timeout", sum.Latencies.Max)
	}
	if sum.Latencies.P50 <= 0 || sum.Latencies.P50 > sum.Latencies.P90 || sum.Latencies.P90 > sum.Latencies.P99 || sum.Latencies.P99 > sum.Latencies.Max {
		t.Errorf("latencies not ordered: %+v", sum.Latencies)
	}

	// The printed summary names every kind with its count.
	var out bytes.Buffer
	PrintSummary(&out, Options{Targets: targets, Workers: 7, MaxRequests: 70, Timeout: time.Second}, sum)
	for _, re := range []string{
		`status codes +0 \(no response\): 40  200: 20  500: 10`,
		`(?m)^  eof +10  e\.g\. .*EOF`,
		`(?m)^  connection reset +10  e\.g\. .*connection reset by peer`,
		`(?m)^  connection refused +10  e\.g\. .*connection refused`,
		// http.Client adds "(Client.Timeout exceeded ...)" unless its
		// own timer loses the race with the request's context deadline,
		// which it can with a transport other than *http.Transport.
		`(?m)^  timeout +10  e\.g\. .*(Timeout|context deadline exceeded)`,
		`(?m)^  other +0$`,
		`success +28\.57%`,
	} {
		if !regexp.MustCompile(re).MatchString(out.String()) {
			t.Errorf("summary does not match %q:\n%s", re, out.String())
		}
	}

	// The plot holds one series per outcome, with data points.
	p.Close()
	var html bytes.Buffer
	if _, err := p.WriteTo(&html); err != nil {
		t.Fatal(err)
	}
	h := html.String()
	for _, label := range []string{"OK", "ERROR 500", "ERROR eof", "ERROR connection reset", "ERROR timeout", "ERROR connection refused"} {
		if !strings.Contains(h, `": `+label+`"`) {
			t.Errorf("plot has no series %q", label)
		}
	}
	if rows := strings.Count(h, "\n    ["); rows < 70 {
		t.Errorf("plot has %d data rows, want one per request (70)", rows)
	}
}

func TestAttackFixedRate(t *testing.T) {
	srv, hits := faultServer(t)
	sum, err := Attack(context.Background(), Options{
		Targets:   get(srv.URL + "/ok"),
		Rate:      200,
		Workers:   4,
		Duration:  500 * time.Millisecond,
		Timeout:   time.Second,
		KeepAlive: true,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 200/s for 0.5 s is 100 requests; the pacer catches up when late, so
	// only a starved machine sends fewer.
	if sum.Requests < 80 || sum.Requests > 101 {
		t.Errorf("requests %d, want about 100", sum.Requests)
	}
	if got := hits.Load(); got != int64(sum.Requests) {
		t.Errorf("server saw %d requests, summary %d", got, sum.Requests)
	}
	if sum.Success != 1 || sum.StatusCodes[200] != sum.Requests {
		t.Errorf("success %v codes %v", sum.Success, sum.StatusCodes)
	}
	if sum.Rate < 150 || sum.Rate > 250 {
		t.Errorf("rate %.1f/s, want about 200", sum.Rate)
	}
}

func TestAttackStopsOnContext(t *testing.T) {
	srv, _ := faultServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	sum, err := Attack(ctx, Options{
		Targets: get(srv.URL + "/ok"), Rate: 100, Workers: 2,
		Duration: 20 * time.Second, Timeout: time.Second, KeepAlive: true,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("attack ran %s after its context ended", d)
	}
	if sum.Requests == 0 || sum.Requests > 60 {
		t.Errorf("requests %d, want about 30", sum.Requests)
	}
}

func TestRemoteTargetsRefused(t *testing.T) {
	for _, u := range []string{
		"http://example.com/",
		"http://93.184.216.34/",
		"https://10.0.0.1:8443/x",
		"http://[2001:db8::1]/",
		"http://127.0.0.1.nip.io/",
		"http://0.0.0.0:1234/",
	} {
		t.Run(u, func(t *testing.T) {
			o := Options{Targets: get(u), Rate: 10, Workers: 1, Duration: time.Second, Timeout: time.Second}
			_, err := Attack(context.Background(), o, func(*vegeta.Result) error {
				t.Error("a request was sent")
				return nil
			})
			if err == nil || !strings.Contains(err.Error(), "-allow-remote") {
				t.Fatalf("err = %v, want a refusal naming -allow-remote", err)
			}
			o.AllowRemote = true
			if err := o.Validate(); err != nil {
				t.Errorf("with AllowRemote: %v", err)
			}
		})
	}
	for _, u := range []string{"http://127.0.0.1:1/", "http://127.9.9.9/", "http://[::1]:80/", "http://localhost:8/", "http://[::ffff:127.0.0.1]/"} {
		o := Options{Targets: get(u), Rate: 10, Workers: 1, Duration: time.Second, Timeout: time.Second}
		if err := o.Validate(); err != nil {
			t.Errorf("%s refused: %v", u, err)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Options{Targets: get("http://127.0.0.1:1/"), Rate: 10, Workers: 1, Duration: time.Second, Timeout: time.Second}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Options){
		"no targets":        func(o *Options) { o.Targets = nil },
		"relative url":      func(o *Options) { o.Targets = get("/api/v1/ping") },
		"ftp":               func(o *Options) { o.Targets = get("ftp://127.0.0.1/") },
		"negative rate":     func(o *Options) { o.Rate = -1 },
		"max no workers":    func(o *Options) { o.Rate, o.Workers = 0, 0 },
		"unbounded":         func(o *Options) { o.Duration, o.MaxRequests = 0, 0 },
		"no timeout":        func(o *Options) { o.Timeout = 0 },
		"max below workers": func(o *Options) { o.Workers, o.MaxWorkers = 10, 5 },
	} {
		o := ok
		mut(&o)
		if err := o.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct{ msg, want string }{
		{`Get "http://127.0.0.1:1/x": EOF`, KindEOF},
		{`Get "http://127.0.0.1:1/x": unexpected EOF`, KindEOF},
		{`unexpected EOF`, KindEOF},
		{`Post "http://127.0.0.1:1/x": http: server closed idle connection`, KindEOF},
		{`Get "http://127.0.0.1:1/x": read tcp 127.0.0.1:5->127.0.0.1:1: read: connection reset by peer`, KindReset},
		{`Post "http://127.0.0.1:1/x": write tcp 127.0.0.1:5->127.0.0.1:1: write: broken pipe`, KindReset},
		{`Get "http://127.0.0.1:1/x": dial tcp 127.0.0.1:1: connect: connection refused`, KindRefused},
		{`Get "http://127.0.0.1:1/x": context deadline exceeded (Client.Timeout exceeded while awaiting headers)`, KindTimeout},
		{`context deadline exceeded (Client.Timeout or context cancellation while reading body)`, KindTimeout},
		{`Get "https://127.0.0.1:1/x": net/http: TLS handshake timeout`, KindTimeout},
		{`Get "http://127.0.0.1:1/x": dial tcp 127.0.0.1:1: i/o timeout`, KindTimeout},
		{`Get "http://127.0.0.1:1/x": net/http: HTTP/1.x transport connection broken: malformed HTTP response "xx"`, KindOther},
		{`Get "http://127.0.0.1:1/x": tls: failed to verify certificate: x509: certificate signed by unknown authority`, KindOther},
		// The URL must not decide the kind.
		{`Get "http://127.0.0.1:1/EOF/timeout": tls: bad certificate`, KindOther},
		{`Get "http://127.0.0.1:1/connection refused": EOF`, KindEOF},
	} {
		if got := Classify(c.msg); got != c.want {
			t.Errorf("Classify(%q) = %q, want %q", c.msg, got, c.want)
		}
	}
}

// TestRunCommandLine drives the program as a user would: flags, summary on
// stdout, plot, raw results and JSON summary files.
func TestRunCommandLine(t *testing.T) {
	srv, _ := faultServer(t)
	dir := t.TempDir()
	plotFile := filepath.Join(dir, "plot.html")
	jsonFile := filepath.Join(dir, "summary.json")
	resultsFile := filepath.Join(dir, "results.bin")
	bodyFile := filepath.Join(dir, "body.json")
	if err := os.WriteFile(bodyFile, []byte(`{"a":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"loadtest",
		"-rate", "0", "-workers", "2", "-max-requests", "20", "-duration", "10s", "-timeout", "1s",
		"-method", "POST", "-body", bodyFile, "-H", "X-Test: 1",
		"-plot", plotFile, "-json", jsonFile, "-results", resultsFile, "-name", "cli",
		"-url", srv.URL + "/ok", srv.URL + "/fail",
	}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, re := range []string{`(?m)^status codes +200: 10  500: 10$`, `(?m)^success +50\.00%`, `(?m)^plot +` + regexp.QuoteMeta(plotFile) + `$`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("stdout does not match %q:\n%s", re, out)
		}
	}

	html, err := os.ReadFile(plotFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(html, []byte("<html")) || !bytes.Contains(html, []byte(`"cli: OK"`)) || !bytes.Contains(html, []byte(`"cli: ERROR 500"`)) {
		t.Errorf("plot lacks the html page or its series (%d bytes)", len(html))
	}

	var js struct {
		Requests    uint64             `json:"requests"`
		StatusCodes map[string]uint64  `json:"status_codes"`
		Latency     map[string]float64 `json:"latency_seconds"`
	}
	b, err := os.ReadFile(jsonFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &js); err != nil {
		t.Fatal(err)
	}
	if js.Requests != 20 || js.StatusCodes["200"] != 10 || js.StatusCodes["500"] != 10 || js.Latency["max"] <= 0 {
		t.Errorf("json summary %s", b)
	}

	f, err := os.Open(resultsFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := vegeta.NewDecoder(f)
	var n int
	for {
		var r vegeta.Result
		if err := dec.Decode(&r); err != nil {
			break
		}
		if r.Method != http.MethodPost || r.BytesOut != 7 {
			t.Errorf("result %+v: want POST with the 7-byte body", r)
		}
		n++
	}
	if n != 20 {
		t.Errorf("results file holds %d results, want 20", n)
	}

	// -json -: stdout is the JSON alone (it parses); the human summary
	// goes to stderr.
	stdout.Reset()
	stderr.Reset()
	if err := run(context.Background(), []string{"loadtest", "-rate", "0", "-workers", "1", "-max-requests", "3", "-timeout", "1s",
		"-plot", "", "-json", "-", srv.URL + "/ok"}, &stdout, &stderr); err != nil {
		t.Fatalf("run -json -: %v\n%s", err, stderr.String())
	}
	js.Requests = 0
	if err := json.Unmarshal(stdout.Bytes(), &js); err != nil || js.Requests != 3 {
		t.Errorf("-json - stdout is not the JSON summary (%v):\n%s", err, stdout.String())
	}
	if !regexp.MustCompile(`(?m)^status codes +200: 3$`).MatchString(stderr.String()) {
		t.Errorf("-json -: the human summary is not on stderr:\n%s", stderr.String())
	}
}

func TestRunRefusesRemoteAndDocumentsIt(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"loadtest", "-duration", "1s", "http://example.com/"}, &stdout, &stderr)
	var ue usageError
	if err == nil || !strings.Contains(err.Error(), "-allow-remote") || !errors.As(err, &ue) {
		t.Fatalf("err = %v, want a usage error naming -allow-remote", err)
	}
	if stdout.Len() != 0 {
		t.Errorf("a summary was printed: %s", stdout.String())
	}

	stderr.Reset()
	if err := run(context.Background(), []string{"loadtest", "-h"}, &stdout, &stderr); err == nil {
		t.Fatal("-h: want flag.ErrHelp")
	}
	help := stderr.String()
	for _, want := range []string{"-allow-remote", "loopback", "-rate", "-workers", "-max-requests", "-plot"} {
		if !strings.Contains(help, want) {
			t.Errorf("-h lacks %q", want)
		}
	}
}

// A target named localhost goes to 127.0.0.1 whatever the resolver says of
// the name (a container without /etc/hosts would ask DNS, with its search
// domains), and the server still sees the name in Host.
func TestLocalhostIsPinnedToLoopback(t *testing.T) {
	hosts := make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case hosts <- r.Host:
		default:
		}
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	targets := get("http://LocalHost:" + port + "/x")
	pinned := pinLocalhost(targets)
	if pinned[0].URL != "http://127.0.0.1:"+port+"/x" || pinned[0].Header.Get("Host") != "LocalHost:"+port {
		t.Fatalf("pinned target %s, Host %q", pinned[0].URL, pinned[0].Header.Get("Host"))
	}
	if targets[0].URL != "http://LocalHost:"+port+"/x" || targets[0].Header.Get("Host") != "" {
		t.Fatalf("the caller's target was changed: %+v", targets[0])
	}
	sum, err := Attack(context.Background(), Options{Targets: targets, Rate: 0, Workers: 1, MaxRequests: 3, Timeout: time.Second, KeepAlive: true}, nil)
	if err != nil || sum.Requests != 3 || sum.StatusCodes[200] != 3 {
		t.Fatalf("attack: %+v, %v", sum, err)
	}
	if h := <-hosts; h != "LocalHost:"+port {
		t.Errorf("server saw Host %q", h)
	}
}

// A sink that fails during the attack (here -results on a full device)
// does not lose the summary of the attack that ran: it is printed, then
// the error is returned.
func TestRunPrintsTheSummaryWhenASinkFails(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full on this system")
	}
	srv, _ := faultServer(t)
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"loadtest", "-rate", "0", "-workers", "2", "-max-requests", "300", "-timeout", "1s",
		"-plot", "", "-results", "/dev/full", srv.URL + "/ok"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("run with -results /dev/full: %v, want the write error", err)
	}
	if !regexp.MustCompile(`(?m)^status codes +200: 300$`).MatchString(stdout.String()) {
		t.Errorf("no summary of the 300 requests sent:\n%s", stdout.String())
	}
}

// closingServer answers the first request of each connection and closes the
// connection as its second one arrives, without an answer: what a server
// whose keep-alive timeout just ran out does to a client that reuses it.
func closingServer(t *testing.T) *httptest.Server {
	t.Helper()
	type served struct{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := r.Context().Value(served{}).(*int)
		if *n++; *n > 1 {
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				_ = c.Close()
			}
			return
		}
		_, _ = w.Write([]byte(`{"message":"pong"}`))
	}))
	srv.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, served{}, new(int)) // one counter per connection
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// Requests that meet a kept-alive connection the server has closed, on
// real sockets: GETs are replayed by net/http on a new connection (all
// answered, the replays counted), a POST fails with an EOF that names the
// kept-alive connection and its idle time, and the summary says so.
func TestAttackStaleConnections(t *testing.T) {
	srv := closingServer(t)
	o := Options{Targets: get(srv.URL + "/ping"), Rate: 5, Workers: 1, MaxRequests: 3,
		Duration: 10 * time.Second, Timeout: time.Second, KeepAlive: true}
	sum, err := Attack(context.Background(), o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.StatusCodes[200] != 3 || sum.TransportErrorCount() != 0 {
		t.Fatalf("GETs: codes %v (examples %q), want 3 answered", sum.StatusCodes, sum.Examples)
	}
	// Each request after the first met a closed connection: 200 ms idle.
	if st := sum.Stale; st.Replayed != 2 || st.Failed != 0 || st.MinIdle < 100*time.Millisecond || st.MaxIdle > 2*time.Second {
		t.Errorf("GETs: stale connections %+v, want 2 replayed after ~200ms idle", st)
	}

	srv = closingServer(t)
	o.Targets = []vegeta.Target{{Method: http.MethodPost, URL: srv.URL + "/orders", Body: []byte(`{"n":1}`)}}
	if sum, err = Attack(context.Background(), o, nil); err != nil {
		t.Fatal(err)
	}
	// The second POST fails on the closed connection; the third gets a
	// new one.
	if sum.StatusCodes[200] != 2 || sum.TransportErrors[KindEOF] != 1 {
		t.Fatalf("POSTs: codes %v, errors %v, want 2 answered and 1 eof", sum.StatusCodes, sum.TransportErrors)
	}
	if ex := sum.Examples[KindEOF]; !strings.Contains(ex, "EOF (on a kept-alive connection idle ") {
		t.Errorf("the eof %q does not name the kept-alive connection", ex)
	}
	if st := sum.Stale; st.Replayed != 0 || st.Failed != 1 {
		t.Errorf("POSTs: stale connections %+v, want 1 failed", st)
	}
	var b bytes.Buffer
	PrintSummary(&b, o, sum)
	if !regexp.MustCompile(`(?m)^stale connections\s+1 kept-alive connections were found closed when reused \(0 requests replayed by net/http, 1 failed\), idle \S+ to \S+: the server \(or a proxy\) closes idle connections after \S+ or less$`).MatchString(b.String()) {
		t.Errorf("summary does not report the stale connection:\n%s", b.String())
	}

	// Without keep-alive no connection is reused, and none is stale.
	srv = closingServer(t)
	o.KeepAlive = false
	if sum, err = Attack(context.Background(), o, nil); err != nil {
		t.Fatal(err)
	}
	if sum.StatusCodes[200] != 3 || sum.Stale.Total() != 0 {
		t.Errorf("no keep-alive: codes %v, stale %+v; want 3 answered, none stale", sum.StatusCodes, sum.Stale)
	}
}

// The client of an attack: HTTP/2 over TLS only when asked (HTTP/1.1, the
// protocol of the keep-alive EOF story, otherwise), a self-signed
// certificate accepted only with Insecure, and a redirect reported, not
// followed.
func TestAttackClientOptions(t *testing.T) {
	var protos sync.Map
	var followed atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/proto", func(w http.ResponseWriter, r *http.Request) { protos.Store(r.Proto, true) })
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) })
	mux.HandleFunc("/elsewhere", func(http.ResponseWriter, *http.Request) { followed.Add(1) })
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake at the end
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)

	for _, h2 := range []bool{false, true} {
		protos.Clear()
		sum, err := Attack(context.Background(), Options{Targets: get(srv.URL+"/proto", srv.URL+"/moved"), Workers: 1, MaxRequests: 4,
			Duration: 10 * time.Second, Timeout: time.Second, KeepAlive: true, HTTP2: h2, Insecure: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if sum.StatusCodes[200] != 2 || sum.StatusCodes[302] != 2 {
			t.Errorf("HTTP2 %v: codes %v (examples %q), want 2 × 200 and 2 × 302", h2, sum.StatusCodes, sum.Examples)
		}
		want := "HTTP/1.1"
		if h2 {
			want = "HTTP/2.0"
		}
		var got []string
		protos.Range(func(k, _ any) bool { got = append(got, k.(string)); return true })
		if len(got) != 1 || got[0] != want {
			t.Errorf("HTTP2 %v: the server saw %v, want only %s", h2, got, want)
		}
	}
	if n := followed.Load(); n != 0 {
		t.Errorf("redirects followed %d times, want none", n)
	}
	sum, err := Attack(context.Background(), Options{Targets: get(srv.URL + "/proto"), Workers: 1, MaxRequests: 1,
		Duration: 10 * time.Second, Timeout: time.Second, KeepAlive: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.TransportErrorCount() != 1 || !strings.Contains(sum.Examples[KindOther], "certificate") {
		t.Errorf("without Insecure: codes %v, examples %q; want the self-signed certificate refused", sum.StatusCodes, sum.Examples)
	}
}
