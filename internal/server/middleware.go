package server

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/hardenedgo/ginservice/internal/health"
	"github.com/hardenedgo/ginservice/internal/observability"
	"github.com/hardenedgo/ginservice/internal/problem"
)

// middlewares is the one place that states the order of the chain. Each
// piece sees the request after the ones above it and the response before
// them:
//
//  0. drain          - from the first instant of shutdown, HTTP/1 responses
//     carry "Connection: close"
//  1. request ID     - every response, even a panic's, carries X-Request-ID
//  2. tracing        - the server span wraps everything measured below
//  3. access         - metrics + one log line with the final status (499 for
//     clients that left), after recovery has turned panics into 500s
//  4. recovery       - panics become 500 problem responses; the process lives
//
// Then, on the /api/v1 group only (routes.go):
//
//  5. rate limiter   - probes are never limited; every response of a
//     limited route, a 413 included, carries the RateLimit-* headers
//  6. body limit     - 413 before any handler reads an oversized body (the
//     other routes read no body); the answer to a body that misses the
//     read deadline gets time to be written
func middlewares(d Deps) []gin.HandlerFunc {
	var chain []gin.HandlerFunc
	if d.Readiness != nil {
		chain = append(chain, closeWhenDraining(d.Readiness))
	}
	chain = append(chain, requestID())
	if d.Tracing != nil {
		chain = append(chain, d.Tracing)
	}
	chain = append(chain,
		observability.Access(d.Logger, d.Metrics, observability.AccessOptions{Quiet: []string{"/healthz", "/readyz"}, WriteTimeout: d.Timeouts.Write, Exemplars: d.Exemplars}),
		recovery(d.Logger, d.Metrics),
	)
	return chain
}

// apiMiddlewares is the /api/v1 group's part of the chain.
func apiMiddlewares(d Deps) []gin.HandlerFunc {
	var chain []gin.HandlerFunc
	if d.RateLimit != nil {
		chain = append(chain, d.RateLimit)
	}
	return append(chain, bodyLimit(d.MaxBodyBytes, d.Timeouts))
}

// closeWhenDraining makes every HTTP/1 response carry "Connection: close"
// from the moment the service stops being ready (SIGTERM). Keep-alive
// clients then leave their connections one response at a time, each told
// so, during SHUTDOWN_DELAY. Otherwise they would meet the listener's
// close: http.Server.Shutdown closes idle connections, and a request
// written onto one at that instant fails with EOF, which clients retry only
// for idempotent requests (a POST fails). A connection left idle through
// the whole delay can still meet it. HTTP/2 connections get GOAWAY from
// Shutdown.
func closeWhenDraining(r *health.Readiness) gin.HandlerFunc {
	return func(c *gin.Context) {
		if r.ShuttingDown() && c.Request.ProtoMajor == 1 {
			c.Writer.Header()["Connection"] = []string{"close"}
		}
		c.Next()
	}
}

// validRequestID accepts 1-128 characters of [A-Za-z0-9._:-], so a client
// cannot inject arbitrary bytes into logs and headers.
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9',
			b == '.', b == '_', b == ':', b == '-':
		default:
			return false
		}
	}
	return true
}

func requestID() gin.HandlerFunc {
	return func(c *gin.Context) {
		var id string
		if v := c.Request.Header[problem.RequestIDHeader]; len(v) > 0 && validRequestID(v[0]) {
			id = v[0]
		} else {
			id = problem.NewRequestID()
		}
		c.Writer.Header()[problem.RequestIDHeader] = []string{id}
		c.Next()
	}
}

// recovery turns a panic into a 500 problem response, logs the stack and
// counts it. http.ErrAbortHandler is re-panicked: it is net/http's way to
// abort a response on purpose.
func recovery(logger *slog.Logger, m *observability.HTTPMetrics) gin.HandlerFunc {
	return func(c *gin.Context) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			m.Panic(c.FullPath())
			observability.MarkPanic(c, v)
			logger.ErrorContext(c.Request.Context(), "panic recovered",
				slog.String("panic", fmt.Sprint(v)),
				slog.String("route", c.FullPath()),
				slog.String("request_id", problem.RequestID(c.Writer.Header())),
				slog.String("stack", string(debug.Stack())))
			if c.Writer.Written() {
				// The status line (and maybe part of the body) is out: a
				// 500 cannot be sent. Finishing the response would hand
				// the client a complete-looking one (a chunked body gets
				// its last chunk); instead net/http cuts it, the
				// connection on HTTP/1, the stream on HTTP/2, so the
				// client sees it broken. Logged and counted as 500.
				panic(http.ErrAbortHandler)
			}
			problem.Abort(c, http.StatusInternalServerError, "internal error")
		}()
		c.Next()
	}
}

// bodyLimit rejects bodies announced larger than max at once and caps the
// rest (chunked or lying clients) with http.MaxBytesReader.
//
// It also leaves room for the answer to a body that misses the read
// deadline. The write deadline runs from the end of the headers, the read
// deadline from the start of the request: with HTTP_WRITE_TIMEOUT no longer
// than HTTP_READ_TIMEOUT (the defaults: 30s and 30s) the write deadline
// falls at the same moment as the read deadline, and the handler's 408 (or
// whatever it answers to the read error) would be cut to an EOF on HTTP/1,
// a stream reset on HTTP/2, whose write timer cannot be moved once it has
// fired. So the write deadline is moved now, while it still can be, to a
// moment after the read deadline, and put back once the body has been read
// to its end: a body that took longer than the write timeout still gets no
// answer. A handler that does not read its body to the end keeps the later
// deadline (HTTP_READ_TIMEOUT plus a second).
func bodyLimit(max int64, t Timeouts) gin.HandlerFunc {
	move := t.Read > 0 && t.Write > 0 && t.Read+readTimeoutAnswerGrace > t.Write
	return func(c *gin.Context) {
		if c.Request.ContentLength > max {
			problem.Abort(c, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", max))
			return
		}
		if c.Request.Body != nil && c.Request.Body != http.NoBody {
			if len(c.Request.Header["Expect"]) > 0 {
				// net/http answers "Expect: 100-continue" through the body
				// it gave the handler: when the handler never reads it, it
				// sends the response without the 100 and without waiting
				// for the body. It looks for its own reader in its own
				// request, so the wrapped body goes on a copy; otherwise
				// a handler that answers without reading (an early 4xx)
				// would leave the client waiting, and the server draining
				// a body that is never sent, until HTTP_READ_TIMEOUT.
				c.Request = c.Request.WithContext(c.Request.Context())
			}
			body := http.MaxBytesReader(c.Writer, c.Request.Body, max)
			if move {
				now := time.Now() // about the end of the headers
				rc := http.NewResponseController(c.Writer)
				_ = rc.SetWriteDeadline(now.Add(t.Read + readTimeoutAnswerGrace))
				body = &deadlineBody{ReadCloser: body, rc: rc, writeDeadline: now.Add(t.Write), moved: now.Add(t.Read + readTimeoutAnswerGrace)}
			}
			c.Request.Body = body
		}
		c.Next()
	}
}

// readTimeoutAnswerGrace is how long the answer to a body that missed the
// read deadline may take to be written.
const readTimeoutAnswerGrace = time.Second

// deadlineBody puts the write deadline bodyLimit moved back once the body
// has been read to its end (or failed other than by the read deadline).
type deadlineBody struct {
	io.ReadCloser
	rc            *http.ResponseController
	writeDeadline time.Time // the server's, put back
	moved         time.Time // bodyLimit's, while the body is read
	done          bool
	restored      bool
}

// WriteDeadline is the write deadline in force, for the access line
// (observability.WriteDeadliner). Read and the access middleware run on the
// handler's goroutine.
func (b *deadlineBody) WriteDeadline() time.Time {
	if b.restored {
		return b.writeDeadline
	}
	return b.moved
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !b.done {
		b.done = true
		if !isTimeout(err) {
			_ = b.rc.SetWriteDeadline(b.writeDeadline)
			b.restored = true
		}
	}
	return n, err
}
