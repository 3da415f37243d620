package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"syscall"

	"github.com/gin-gonic/gin"

	"github.com/hardenedgo/ginservice/internal/health"
	"github.com/hardenedgo/ginservice/internal/items"
	"github.com/hardenedgo/ginservice/internal/observability"
	"github.com/hardenedgo/ginservice/internal/problem"
)

var pong = []byte(`{"message":"pong"}`)

func ping(c *gin.Context) {
	c.Data(http.StatusOK, "application/json; charset=utf-8", pong)
}

// healthz is liveness: the process can serve. It checks no dependency, so a
// Redis outage never gets every pod restarted.
func healthz(c *gin.Context) {
	c.Data(http.StatusOK, "application/json; charset=utf-8", []byte(`{"status":"ok"}`))
}

func readyz(r *health.Readiness) gin.HandlerFunc {
	return func(c *gin.Context) {
		ok, rep := r.Evaluate(c.Request.Context())
		code := http.StatusOK
		if !ok {
			code = http.StatusServiceUnavailable
		}
		c.Header("Cache-Control", "no-store")
		c.JSON(code, rep)
	}
}

func methodNotAllowed(c *gin.Context) {
	// Gin has set Allow already when it knows the methods of the path.
	problem.Abort(c, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed here", c.Request.Method))
}

// maxIDLen bounds the item id so a client cannot make us carry huge keys to
// the dependency.
const maxIDLen = 64

func getItem(d Deps) gin.HandlerFunc {
	return func(c *gin.Context) {
		id := c.Param("id")
		// "." and ".." would walk the dependency's URL path (items/..),
		// which url.PathEscape leaves alone.
		if len(id) > maxIDLen || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
			problem.Abort(c, http.StatusBadRequest, fmt.Sprintf("item id must be 1 to %d characters", maxIDLen))
			return
		}
		ctx := problem.RequestContext(c) // the lines of the breaker and the client name the request
		it, err := d.Items.Get(ctx, id)
		switch {
		case err == nil:
		case errors.Is(err, items.ErrNotFound):
			problem.Abort(c, http.StatusNotFound, "no such item")
			return
		case ctx.Err() != nil:
			// The client left (net/http cancels the context when the
			// connection is closed, or half-closed, by the peer); the
			// access log records 499. The response is cut, not sent empty:
			// a client that only half-closed still reads, and must not take
			// a bodiless 200 for an answer.
			observability.MarkClientAbort(c)
			panic(http.ErrAbortHandler)
		default:
			d.Logger.WarnContext(ctx, "items dependency failed", slog.String("error", err.Error()), slog.String("id", id))
			problem.Abort(c, http.StatusServiceUnavailable, "items dependency unavailable")
			return
		}
		if it.Degraded {
			c.Header("X-Degraded", "true")
			d.Metrics.Degraded(c.FullPath())
		}
		c.JSON(http.StatusOK, it)
	}
}

// echo returns the JSON body it was sent. The body is read whole first so a
// transport failure (truncated body, client gone: 499) is told apart from a
// body too slow for HTTP_READ_TIMEOUT (408: bodyLimit leaves the answer
// time to be written), a malformed document (400) and an oversized one
// (413).
func echo(c *gin.Context) {
	body, err := io.ReadAll(c.Request.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			problem.Abort(c, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", mbe.Limit))
		case isTimeout(err):
			// Our read deadline, not the client leaving: it is still there
			// and gets an answer, then net/http closes.
			problem.Abort(c, http.StatusRequestTimeout, "request body not received within the read timeout")
		case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, context.Canceled), isConnError(err),
			c.Request.Context().Err() != nil: // HTTP/2: the client reset the stream or closed the connection
			observability.MarkTruncatedBody(c)
			problem.Abort(c, http.StatusBadRequest, "request body ended early")
		default:
			problem.Abort(c, http.StatusBadRequest, "request body could not be read")
		}
		return
	}
	if !json.Valid(body) {
		problem.Abort(c, http.StatusBadRequest, "request body is not valid JSON")
		return
	}
	c.Data(http.StatusOK, "application/json; charset=utf-8", body)
}

// isConnError reports read errors caused by the peer's connection going away
// (reset, closed): client trouble, never a 500.
func isConnError(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

// isTimeout reports a read that ran into the connection's read deadline
// (HTTP_READ_TIMEOUT).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
