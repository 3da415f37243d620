package problem

import "github.com/gin-gonic/gin"

// RequestIDHeader is the header that carries the request ID on every response.
const RequestIDHeader = "X-Request-ID"

// Abort writes a problem response for status and stops the Gin chain.
// The request ID is taken from the response header the request-ID
// middleware has already set.
func Abort(c *gin.Context, status int, detail string) {
	Write(c.Writer, status, detail, c.Request.URL.Path, c.Writer.Header().Get(RequestIDHeader))
	c.Abort()
}
