package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/hardenedgo/ginservice/internal/problem"
)

// recordingLimiter answers with a fixed decision and records keys.
type recordingLimiter struct {
	mu   sync.Mutex
	keys []string
	d    Decision
	err  error
}

func (l *recordingLimiter) Allow(_ context.Context, key string, _ int) (Decision, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys = append(l.keys, key)
	return l.d, l.err
}

func (l *recordingLimiter) lastKey() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.keys[len(l.keys)-1]
}

// newEngine builds an engine the way the service does: trusted proxies
// from TRUSTED_PROXIES (nil when empty), the limiter on /api/v1.
func newEngine(t *testing.T, l Limiter, trusted []string, opts MiddlewareOptions) *gin.Engine {
	t.Helper()
	gin.SetMode(gin.TestMode)
	e := gin.New()
	if err := e.SetTrustedProxies(trusted); err != nil {
		t.Fatal(err)
	}
	api := e.Group("/api/v1", Middleware(l, opts))
	api.GET("/ping", func(c *gin.Context) { c.JSON(http.StatusOK, gin.H{"message": "pong"}) })
	return e
}

func do(e http.Handler, remote string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "/api/v1/ping", nil)
	req.RemoteAddr = remote
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	e.ServeHTTP(w, req)
	return w
}

func TestMiddlewareHeadersAndDenial(t *testing.T) {
	rl := newTestLimiter(t, Config{Rate: 1, Burst: 2})
	e := newEngine(t, rl, nil, MiddlewareOptions{})
	for i, want := range []int{1, 0} {
		w := do(e, "192.0.2.1:1234", nil)
		if w.Code != http.StatusOK {
			t.Fatalf("request %d: %d", i, w.Code)
		}
		if w.Header().Get(HeaderLimit) != "2" || w.Header().Get(HeaderRemaining) != strconv.Itoa(want) {
			t.Fatalf("request %d headers: %v", i, w.Header())
		}
		if r := w.Header().Get(HeaderReset); r != strconv.Itoa(i+1) {
			t.Fatalf("request %d: RateLimit-Reset %q, want %d", i, r, i+1)
		}
		if w.Header().Get(HeaderRetryAfter) != "" {
			t.Fatalf("Retry-After on an allowed response")
		}
	}
	w := do(e, "192.0.2.1:1234", nil)
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("third request: %d, want 429", w.Code)
	}
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, problem.ContentType) {
		t.Fatalf("429 Content-Type %q", ct)
	}
	if ra := w.Header().Get(HeaderRetryAfter); ra != "1" {
		t.Fatalf("Retry-After %q, want 1 (whole seconds, rounded up)", ra)
	}
	if w.Header().Get(HeaderLimit) != "2" || w.Header().Get(HeaderRemaining) != "0" || w.Header().Get(HeaderReset) != "2" {
		t.Fatalf("429 headers: %v", w.Header())
	}
	var body problem.Details
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Status != 429 || !strings.Contains(body.Detail, "retry after 1s") {
		t.Fatalf("429 body %s: %v", w.Body, err)
	}
	// Another client is not affected.
	if w := do(e, "192.0.2.2:1234", nil); w.Code != http.StatusOK {
		t.Fatalf("other client: %d", w.Code)
	}
}

func TestMiddlewareRetryAfterRounding(t *testing.T) {
	for _, tc := range []struct {
		retry time.Duration
		want  string
	}{
		{0, "1"}, {time.Millisecond, "1"}, {time.Second, "1"}, {time.Second + time.Nanosecond, "2"}, {2500 * time.Millisecond, "3"},
	} {
		l := &recordingLimiter{d: Decision{Limit: 5, RetryAfter: tc.retry, ResetAfter: tc.retry}}
		w := do(newEngine(t, l, nil, MiddlewareOptions{}), "192.0.2.1:1", nil)
		if w.Code != 429 || w.Header().Get(HeaderRetryAfter) != tc.want {
			t.Fatalf("RetryAfter %s: status %d, Retry-After %q, want %s", tc.retry, w.Code, w.Header().Get(HeaderRetryAfter), tc.want)
		}
	}
}

// TestMiddlewareXFF: X-Forwarded-For changes the key only when the peer is a
// trusted proxy (engine configured as the service does from TRUSTED_PROXIES).
func TestMiddlewareXFF(t *testing.T) {
	xff := map[string]string{"X-Forwarded-For": "203.0.113.9"}
	t.Run("no trusted proxies", func(t *testing.T) {
		l := &recordingLimiter{d: Decision{Allowed: true, Limit: 1}}
		e := newEngine(t, l, nil, MiddlewareOptions{})
		do(e, "198.51.100.7:5555", xff)
		if got := l.lastKey(); got != "198.51.100.7" {
			t.Fatalf("key %q, want the peer address", got)
		}
	})
	t.Run("untrusted peer", func(t *testing.T) {
		l := &recordingLimiter{d: Decision{Allowed: true, Limit: 1}}
		e := newEngine(t, l, []string{"10.0.0.0/8"}, MiddlewareOptions{})
		do(e, "198.51.100.7:5555", xff)
		if got := l.lastKey(); got != "198.51.100.7" {
			t.Fatalf("key %q: an untrusted peer's X-Forwarded-For was believed", got)
		}
	})
	t.Run("trusted proxy", func(t *testing.T) {
		l := &recordingLimiter{d: Decision{Allowed: true, Limit: 1}}
		e := newEngine(t, l, []string{"10.0.0.0/8"}, MiddlewareOptions{})
		do(e, "10.1.2.3:5555", xff)
		if got := l.lastKey(); got != "203.0.113.9" {
			t.Fatalf("key %q, want the client from X-Forwarded-For of a trusted proxy", got)
		}
	})
	t.Run("spoofing a limited client's key", func(t *testing.T) {
		// End to end with the real limiter: rotating XFF from an untrusted
		// peer does not escape the limit.
		rl := newTestLimiter(t, Config{Rate: 0.001, Burst: 1})
		e := newEngine(t, rl, []string{"10.0.0.0/8"}, MiddlewareOptions{})
		if w := do(e, "198.51.100.7:1", map[string]string{"X-Forwarded-For": "1.1.1.1"}); w.Code != 200 {
			t.Fatalf("first: %d", w.Code)
		}
		if w := do(e, "198.51.100.7:2", map[string]string{"X-Forwarded-For": "2.2.2.2"}); w.Code != 429 {
			t.Fatalf("second with another XFF: %d, want 429", w.Code)
		}
	})
}

// An IPv6 client is limited by its /64, so it cannot take a fresh bucket
// per address; IPv4, also IPv4-mapped, by the address.
func TestMiddlewareIPv6KeyedByPrefix(t *testing.T) {
	l := &recordingLimiter{d: Decision{Allowed: true, Limit: 1}}
	e := newEngine(t, l, nil, MiddlewareOptions{})
	for remote, want := range map[string]string{
		"[2001:db8:1:2::1]:5555":            "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff:ffff:ffff:1]:5": "2001:db8:1:2::/64",
		"[2001:db8:1:3::1]:5555":            "2001:db8:1:3::/64",
		"[::ffff:192.0.2.7]:5555":           "192.0.2.7",
		"192.0.2.7:5555":                    "192.0.2.7",
	} {
		do(e, remote, nil)
		if got := l.lastKey(); got != want {
			t.Errorf("peer %s: key %q, want %q", remote, got, want)
		}
	}
	// End to end: rotating addresses inside one /64 does not escape the limit.
	rl := newTestLimiter(t, Config{Rate: 0.001, Burst: 1})
	e = newEngine(t, rl, nil, MiddlewareOptions{})
	if w := do(e, "[2001:db8::1]:1", nil); w.Code != 200 {
		t.Fatalf("first: %d", w.Code)
	}
	if w := do(e, "[2001:db8::2]:1", nil); w.Code != 429 {
		t.Fatalf("another address of the same /64: %d, want 429", w.Code)
	}
	if w := do(e, "[2001:db8:0:1::1]:1", nil); w.Code != 200 {
		t.Fatalf("another /64: %d, want 200", w.Code)
	}
}

func TestMiddlewareKeyHeader(t *testing.T) {
	l := &recordingLimiter{d: Decision{Allowed: true, Limit: 1}}
	e := newEngine(t, l, nil, MiddlewareOptions{KeyHeader: "X-API-Key"})
	do(e, "192.0.2.1:1", nil)
	if got := l.lastKey(); got != "192.0.2.1" {
		t.Fatalf("no header: key %q", got)
	}
	do(e, "192.0.2.1:1", map[string]string{"X-API-Key": "secret-a"})
	a := l.lastKey()
	do(e, "192.0.2.1:1", map[string]string{"X-API-Key": "secret-b"})
	b := l.lastKey()
	if a == b || !strings.HasSuffix(a, "|192.0.2.1") || strings.Contains(a, "secret") {
		t.Fatalf("keys %q, %q: want distinct, hashed, with the IP", a, b)
	}
}

func TestMiddlewareFailsOpenOnError(t *testing.T) {
	l := &recordingLimiter{err: errors.New("misconfigured")}
	logs := &logSink{}
	e := newEngine(t, l, nil, MiddlewareOptions{Logger: newTextLogger(logs)})
	if w := do(e, "192.0.2.1:1", nil); w.Code != http.StatusOK {
		t.Fatalf("limiter error: %d, want the request through", w.Code)
	}
	if !strings.Contains(logs.String(), "misconfigured") {
		t.Fatalf("error not logged: %q", logs.String())
	}
}
