package clientip

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/gin-gonic/gin"
)

// Of must agree with Gin's ClientIP for every peer address and forwarding
// header, with and without trusted proxies.
func TestOfMatchesGin(t *testing.T) {
	gin.SetMode(gin.ReleaseMode)
	addrs := []string{
		"10.1.2.3:4567", "127.0.0.1:80", "[::1]:8080", "[2001:db8::1]:443",
		"[2001:0db8:0000::1]:443", "[::ffff:10.0.0.1]:80", "[fe80::1%eth0]:80",
		"010.1.2.3:80", "1.2.3.4", "", "garbage", ":80", "[::1:80", "[]:80",
		" 10.1.2.3:4567", "10.1.2.3:", "[2001:DB8::1]:443",
	}
	headers := []map[string]string{
		nil,
		{"X-Forwarded-For": "203.0.113.9"},
		{"X-Forwarded-For": "203.0.113.9, 10.0.0.1"},
		{"X-Real-IP": "198.51.100.7"},
		{"X-Forwarded-For": "not-an-ip"},
	}
	for _, trusted := range [][]string{nil, {"10.0.0.0/8", "::1/128"}} {
		e := gin.New()
		if err := e.SetTrustedProxies(trusted); err != nil {
			t.Fatal(err)
		}
		var got, want string
		e.GET("/", func(c *gin.Context) { got, want = Of(c), c.ClientIP() })
		for _, a := range addrs {
			for _, h := range headers {
				req := httptest.NewRequest(http.MethodGet, "/", nil)
				req.RemoteAddr = a
				for k, v := range h {
					req.Header.Set(k, v)
				}
				e.ServeHTTP(httptest.NewRecorder(), req)
				if got != want {
					t.Errorf("trusted=%v addr=%q headers=%v: Of=%q, ClientIP=%q", trusted, a, h, got, want)
				}
			}
		}
	}
}

func TestOfDoesNotAllocate(t *testing.T) {
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	var allocs float64
	e.GET("/", func(c *gin.Context) {
		allocs = testing.AllocsPerRun(100, func() { _ = Of(c) })
	})
	for _, a := range []string{"10.1.2.3:4567", "[2001:db8::1]:443"} {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.RemoteAddr = a
		e.ServeHTTP(httptest.NewRecorder(), req)
		if allocs != 0 {
			t.Errorf("%s: %v allocations per call", a, allocs)
		}
	}
}

func BenchmarkClientIP(b *testing.B) {
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	for _, tc := range []struct {
		name string
		fn   func(*gin.Context) string
	}{{"gin", (*gin.Context).ClientIP}, {"clientip.Of", Of}} {
		b.Run(tc.name, func(b *testing.B) {
			e.GET("/"+tc.name, func(c *gin.Context) {
				for b.Loop() {
					_ = tc.fn(c)
				}
			})
			req := httptest.NewRequest(http.MethodGet, "/"+tc.name, nil)
			req.RemoteAddr = "10.1.2.3:4567"
			b.ReportAllocs()
			e.ServeHTTP(httptest.NewRecorder(), req)
		})
	}
}
