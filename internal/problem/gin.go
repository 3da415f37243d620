package problem

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"net/http"

	"github.com/gin-gonic/gin"
)

// RequestIDHeader is the header that carries the request ID on every
// response (X-Request-ID), in canonical form so it can index an http.Header
// directly: Header.Get and Set would canonicalise "X-Request-ID" into a new
// string on every request.
const RequestIDHeader = "X-Request-Id"

// NewRequestID returns 128 random bits in hex. Request IDs correlate log
// lines; they are not secrets, so math/rand/v2's per-thread ChaCha8 (no
// lock, no syscall) is enough and much cheaper than crypto/rand.
func NewRequestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return hex.EncodeToString(b[:])
}

// RequestID returns the request ID the request-ID middleware has set on the
// response headers h, or "".
func RequestID(h http.Header) string {
	if v := h[RequestIDHeader]; len(v) > 0 {
		return v[0]
	}
	return ""
}

type requestIDKey struct{}

// requestIDCtx carries a request ID: one allocation, where
// context.WithValue would take a second one to box the string.
type requestIDCtx struct {
	context.Context
	id string
}

func (c *requestIDCtx) Value(key any) any {
	if key == (requestIDKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// WithRequestID returns ctx carrying the request ID id, which the service's
// log handler adds to every line written with that context.
func WithRequestID(ctx context.Context, id string) context.Context {
	return &requestIDCtx{Context: ctx, id: id}
}

// RequestIDFrom returns the request ID ctx carries (WithRequestID), or "".
func RequestIDFrom(ctx context.Context) string {
	if c, ok := ctx.Value(requestIDKey{}).(*requestIDCtx); ok {
		return c.id
	}
	return ""
}

// RequestContext returns the request's context carrying its request ID
// (from the response header the request-ID middleware set): pass it to the
// work a handler does (the limiter, the dependency), so that the lines that
// work logs carry the request_id of the access line, with or without a
// trace. One context node; the request itself is not copied.
func RequestContext(c *gin.Context) context.Context {
	ctx := c.Request.Context()
	if id := RequestID(c.Writer.Header()); id != "" {
		return WithRequestID(ctx, id)
	}
	return ctx
}

// Abort writes a problem response for status and stops the Gin chain.
// The request ID is taken from the response header the request-ID
// middleware has already set.
func Abort(c *gin.Context, status int, detail string) {
	Write(c.Writer, status, detail, c.Request.URL.Path, RequestID(c.Writer.Header()))
	c.Abort()
}
