package items

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordingServer answers GET /items/{id} on loopback and records the
// escaped paths it saw.
func recordingServer(t *testing.T, handler func(w http.ResponseWriter, r *http.Request)) (*httptest.Server, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.Method+" "+r.URL.EscapedPath())
		mu.Unlock()
		handler(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), paths...)
	}
}

func TestHTTPSourceGet(t *testing.T) {
	srv, seen := recordingServer(t, func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("Accept"); got != "application/json" {
			http.Error(w, "accept "+got, http.StatusNotAcceptable)
			return
		}
		switch r.URL.Path {
		case "/prefix/items/7":
			fmt.Fprint(w, `{"id":"7","name":"seven","price_cents":700,"source":"db"}`)
		case "/prefix/items/a/b c":
			fmt.Fprint(w, `{"name":"slashed"}`)
		case "/prefix/items/missing":
			http.NotFound(w, r)
		case "/prefix/items/bad-request":
			http.Error(w, "no", http.StatusBadRequest)
		case "/prefix/items/forbidden":
			http.Error(w, "no", http.StatusForbidden)
		case "/prefix/items/unauthorized":
			http.Error(w, "who", http.StatusUnauthorized)
		case "/prefix/items/gone":
			http.Error(w, "gone", http.StatusGone)
		case "/prefix/items/throttled":
			http.Error(w, "slow down", http.StatusTooManyRequests)
		case "/prefix/items/broken":
			http.Error(w, "boom", http.StatusInternalServerError)
		case "/prefix/items/garbage":
			fmt.Fprint(w, `{"id":`)
		case "/prefix/items/degraded":
			fmt.Fprint(w, `{"id":"degraded","degraded":true,"source":"fallback"}`)
		default:
			http.Error(w, "unexpected "+r.URL.Path, http.StatusTeapot)
		}
	})
	src, err := NewHTTPSource(srv.URL+"/prefix/", srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	it, err := src.Get(ctx, "7")
	if err != nil || it != (Item{ID: "7", Name: "seven", Price: 700, Source: "db"}) {
		t.Fatalf("Get(7) = %+v, %v", it, err)
	}
	it, err = src.Get(ctx, "a/b c")
	if err != nil || it.ID != "a/b c" || it.Name != "slashed" || it.Source != "downstream" {
		t.Fatalf("Get(a/b c) = %+v, %v; want id and source filled in", it, err)
	}
	if paths := seen(); paths[1] != "GET /prefix/items/a%2Fb%20c" {
		t.Fatalf("id not path-escaped: %q", paths[1])
	}
	if _, err := src.Get(ctx, "missing"); err != ErrNotFound {
		t.Fatalf("404: %v, want ErrNotFound itself", err)
	}
	if _, err := src.Get(ctx, "gone"); err != ErrNotFound {
		t.Fatalf("410: %v, want ErrNotFound", err)
	}
	var se *StatusError
	for id, want := range map[string]struct {
		code   int
		caller bool
	}{
		"bad-request": {400, true},
		// This service's credentials: every call fails alike, a failure.
		"forbidden":    {403, false},
		"unauthorized": {401, false},
		"throttled":    {429, false},
		"broken":       {500, false},
	} {
		_, err := src.Get(ctx, id)
		if !errors.As(err, &se) || se.StatusCode != want.code || se.CallerError() != want.caller {
			t.Errorf("Get(%s) = %v, want StatusError %d caller=%v", id, err, want.code, want.caller)
		}
	}
	if _, err := src.Get(ctx, "garbage"); err == nil || !strings.Contains(err.Error(), "decode") {
		t.Fatalf("truncated JSON: %v, want a decode error", err)
	}
	if it, err := src.Get(ctx, "degraded"); err != nil || !it.Degraded {
		t.Fatalf("a degraded answer from the dependency must stay degraded: %+v, %v", it, err)
	}
}

func TestHTTPSourceHonoursContext(t *testing.T) {
	release := make(chan struct{})
	srv, _ := recordingServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	defer close(release)
	src, err := NewHTTPSource(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := src.Get(ctx, "1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get = %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Get returned after %s", d)
	}
}

func TestHTTPSourceLimitsBody(t *testing.T) {
	srv, _ := recordingServer(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"id":"1","name":"`+strings.Repeat("x", maxItemBytes)+`"}`)
	})
	src, err := NewHTTPSource(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Get(context.Background(), "1"); err == nil {
		t.Fatal("a body over the limit was accepted")
	}
}

func TestNewHTTPSourceValidates(t *testing.T) {
	for _, u := range []string{"", "localhost:8080", "ftp://h/", "http://", "http://h/?q=1", "://x",
		"ftp://u:s3cret@h/", "http://u:s3cret@h/?q=1", "http://u:s3cret@h/?", "http://u:s3cret@[::1"} {
		_, err := NewHTTPSource(u, http.DefaultClient)
		if err == nil {
			t.Errorf("NewHTTPSource(%q) accepted", u)
		} else if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("NewHTTPSource(%q): %q shows the password", u, err)
		}
	}
	if _, err := NewHTTPSource("http://127.0.0.1:1", nil); err == nil {
		t.Error("nil client accepted")
	}
	if _, err := NewHTTPSource("https://items.internal/api", http.DefaultClient); err != nil {
		t.Errorf("valid URL rejected: %v", err)
	}
}

// Credentials in the base URL reach the dependency as basic auth and never
// appear in an error (errors end up in the logs).
func TestHTTPSourceCredentialsStayOutOfErrors(t *testing.T) {
	var gotUser, gotPass string
	srv, _ := recordingServer(t, func(w http.ResponseWriter, r *http.Request) {
		gotUser, gotPass, _ = r.BasicAuth()
		http.Error(w, "boom", http.StatusInternalServerError)
	})
	base := strings.Replace(srv.URL, "http://", "http://svc:s3cret@", 1)
	src, err := NewHTTPSource(base, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	_, err = src.Get(context.Background(), "1")
	if err == nil {
		t.Fatal("500 answered without an error")
	}
	if gotUser != "svc" || gotPass != "s3cret" {
		t.Errorf("dependency saw basic auth %q:%q, want svc:s3cret", gotUser, gotPass)
	}
	if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "svc:xxxxx@") {
		t.Errorf("error %q: want the password masked", err)
	}
	srv.Close() // a transport error now
	if _, err := src.Get(context.Background(), "1"); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("transport error %v: want one, with the password masked", err)
	}
}

// The simulated dependency over HTTP, read by the HTTP source: items as
// the in-process Get makes them, 503 at the injected error rate (a
// dependency failure, not a caller error), and the latency bounded by the
// caller's context.
func TestSimulatedHandler(t *testing.T) {
	sim := NewSimulated()
	srv := httptest.NewServer(sim.Handler())
	t.Cleanup(srv.Close)
	src, err := NewHTTPSource(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	want, _ := sim.Get(ctx, "a b")
	got, err := src.Get(ctx, "a b")
	if err != nil || got != want {
		t.Fatalf("Get = %+v, %v; want %+v", got, err, want)
	}
	if err := sim.SetFaults(Faults{ErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	var se *StatusError
	if _, err := src.Get(ctx, "1"); !errors.As(err, &se) || se.StatusCode != http.StatusServiceUnavailable || se.CallerError() {
		t.Fatalf("injected failure = %v, want a 503 that is not a caller error", err)
	}
	if err := sim.SetFaults(Faults{Latency: time.Minute}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := src.Get(cctx, "1"); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("slow dependency: %v after %s, want the caller's deadline", err, time.Since(start))
	}
	if r, err := http.Post(srv.URL+"/items/1", "application/json", nil); err != nil || r.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST = %v %v, want 405", r, err)
	} else {
		r.Body.Close()
	}
}
