package problem

import (
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

// Abort writes a problem response for status and stops the Gin chain.
// The request ID is taken from the response header the request-ID
// middleware has already set.
func Abort(c *gin.Context, status int, detail string) {
	Write(c.Writer, status, detail, c.Request.URL.Path, RequestID(c.Writer.Header()))
	c.Abort()
}
