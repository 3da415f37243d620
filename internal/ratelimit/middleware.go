package ratelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/hardenedgo/ginservice/internal/clientip"
	"github.com/hardenedgo/ginservice/internal/problem"
)

// MiddlewareOptions configures Middleware.
type MiddlewareOptions struct {
	// KeyHeader, when set (e.g. X-API-Key), adds that header's value to the
	// key: clients behind one IP with different keys get separate buckets.
	// The value is hashed, so secrets never reach Redis or logs.
	KeyHeader string
	// Logger receives limiter errors (misconfiguration only). Nil: discarded.
	Logger *slog.Logger
}

// Response headers (draft-ietf-httpapi-ratelimit-headers).
const (
	HeaderLimit      = "RateLimit-Limit"
	HeaderRemaining  = "RateLimit-Remaining"
	HeaderReset      = "RateLimit-Reset"
	HeaderRetryAfter = "Retry-After"
)

// Middleware limits each request by client key, one token per request. The
// key is the client IP as c.ClientIP() finds it (clientip.Of): the peer
// address, or X-Forwarded-For only when the peer is one of the engine's
// trusted proxies (engine.SetTrustedProxies from TRUSTED_PROXIES; nil
// trusts none). Every response carries RateLimit-Limit,
// RateLimit-Remaining and RateLimit-Reset; a denial is a 429 problem with
// Retry-After in whole seconds (at least 1). A limiter error (only possible
// through misconfiguration) lets the request through and is logged: the
// limiter must not take the API down.
func Middleware(l Limiter, opts MiddlewareOptions) gin.HandlerFunc {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// The limit is the same for every request of a limiter: its header
	// value is formatted once (and again only if it ever changes). The
	// slice is shared, read-only, by all responses.
	var limitHdr atomic.Pointer[limitHeader]
	return func(c *gin.Context) {
		key := RequestKey(c, opts.KeyHeader)
		ctx := problem.RequestContext(c) // the limiter's lines name the request
		d, err := l.Allow(ctx, key, 1)
		if err != nil {
			logger.ErrorContext(ctx, "ratelimit: limiter error, request let through", "err", err)
			c.Next()
			return
		}
		// Canonical keys assigned directly: Header.Set would canonicalise
		// "RateLimit-Limit" on every request, and this runs on every one.
		h := c.Writer.Header()
		lh := limitHdr.Load()
		if lh == nil || lh.limit != d.Limit {
			lh = &limitHeader{limit: d.Limit, value: []string{strconv.Itoa(d.Limit)}}
			limitHdr.Store(lh)
		}
		h[canonLimit] = lh.value
		// One allocation for both per-request values.
		vals := []string{strconv.Itoa(max(0, d.Remaining)), strconv.FormatInt(ceilSeconds(d.ResetAfter, 0), 10)}
		h[canonRemaining] = vals[0:1:1]
		h[canonReset] = vals[1:2:2]
		if !d.Allowed {
			retry := ceilSeconds(d.RetryAfter, 1)
			h[canonRetryAfter] = []string{strconv.FormatInt(retry, 10)}
			problem.Abort(c, http.StatusTooManyRequests, "rate limit exceeded, retry after "+strconv.FormatInt(retry, 10)+"s")
			return
		}
		c.Next()
	}
}

// ipKey is the limiter key of a client IP. An IPv6 client is keyed by its
// /64: that is what one subscriber or host gets (RFC 6177), and keying by
// the whole address would let it take a fresh bucket for every one of its
// 2^64 addresses. IPv4 (also IPv4-mapped IPv6) is keyed by the address.
func ipKey(ip string) string {
	if strings.IndexByte(ip, ':') < 0 {
		return ip // IPv4: the hot path, no parsing
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	if a.Is4In6() {
		return a.Unmap().String()
	}
	p, err := a.WithZone("").Prefix(64)
	if err != nil {
		return ip
	}
	return p.String()
}

type limitHeader struct {
	limit int
	value []string
}

// Canonical forms of the response headers (http.CanonicalHeaderKey).
var (
	canonLimit      = http.CanonicalHeaderKey(HeaderLimit)
	canonRemaining  = http.CanonicalHeaderKey(HeaderRemaining)
	canonReset      = http.CanonicalHeaderKey(HeaderReset)
	canonRetryAfter = http.CanonicalHeaderKey(HeaderRetryAfter)
)

// ceilSeconds rounds d up to whole seconds, at least floor: a client told
// "0" would retry at once and be denied again.
func ceilSeconds(d time.Duration, floor int64) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, floor)
}

// RequestKey is the limiter key of a request: the client IP (an IPv6
// client by its /64), prefixed by a hash of the KeyHeader value when that
// header is configured and present.
func RequestKey(c *gin.Context, keyHeader string) string {
	ip := ipKey(clientip.Of(c))
	if keyHeader == "" {
		return ip
	}
	v := c.GetHeader(keyHeader)
	if v == "" {
		return ip
	}
	sum := sha256.Sum256([]byte(v))
	return hex.EncodeToString(sum[:12]) + "|" + ip
}
