// Package server builds the public Gin handler (routes and the middleware
// chain) and the admin handler (metrics, pprof, fault injection).
package server

import (
	"log/slog"
	"net/http"
	"net/netip"

	"github.com/gin-gonic/gin"

	"github.com/hardenedgo/ginservice/internal/health"
	"github.com/hardenedgo/ginservice/internal/items"
	"github.com/hardenedgo/ginservice/internal/observability"
)

// Deps is everything the public handler needs. Optional pieces are nil when
// the feature is off.
type Deps struct {
	Logger    *slog.Logger
	Metrics   *observability.HTTPMetrics
	Readiness *health.Readiness
	Items     items.Source

	// MaxBodyBytes caps request bodies (413 above it).
	MaxBodyBytes int64
	// Timeouts are the http.Server's (NewHTTPServer): the body limit needs
	// them to leave the answer to a body that misses the read deadline
	// time to be written.
	Timeouts Timeouts
	// TrustedProxies are the peers whose X-Forwarded-For is believed.
	TrustedProxies []netip.Prefix

	// Tracing starts the server span (nil: no tracing middleware).
	Tracing gin.HandlerFunc
	// Exemplars: tracing exports spans, so the latency observation of a
	// recorded span carries its trace id (observability.AccessOptions).
	Exemplars bool
	// RateLimit guards /api/v1 (nil: no limit).
	RateLimit gin.HandlerFunc
}

func init() {
	// Gin's debug route dump and warnings are not wanted in a service; the
	// mode is process-wide in Gin, so it is set once here.
	gin.SetMode(gin.ReleaseMode)
}

// NewServer returns the public HTTP handler.
func NewServer(d Deps) http.Handler {
	e := gin.New()
	e.HandleMethodNotAllowed = true
	// Gin answers a path that differs from a route by a trailing slash with
	// a redirect of its own, before any middleware runs: no request ID, no
	// access line, no metrics. Such paths are 404 problems like any other
	// unknown path.
	e.RedirectTrailingSlash = false
	e.ContextWithFallback = true // c.Done()/c.Value() follow the request context
	e.RemoteIPHeaders = []string{"X-Forwarded-For", "X-Real-IP"}
	proxies := make([]string, 0, len(d.TrustedProxies))
	for _, p := range d.TrustedProxies {
		proxies = append(proxies, p.String())
	}
	// nil trusts nobody: the client IP is the peer address unless the peer
	// is a configured proxy. (Gin trusts every proxy by default.)
	if len(proxies) == 0 {
		proxies = nil
	}
	if err := e.SetTrustedProxies(proxies); err != nil {
		// Prefixes were validated by config; this cannot happen.
		panic(err)
	}
	e.Use(middlewares(d)...)
	routes(e, d)
	// Zero series for every route, so alerts see 0 rather than no data.
	for _, r := range e.Routes() {
		d.Metrics.InitRoutes(r.Path)
	}
	return e
}
