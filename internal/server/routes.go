package server

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/hardenedgo/ginservice/internal/problem"
)

// routes is the whole public API.
func routes(e *gin.Engine, d Deps) {
	e.NoRoute(noRoute)
	e.NoMethod(methodNotAllowed)

	get(e, "/healthz", healthz)
	get(e, "/readyz", readyz(d.Readiness))

	api := e.Group("/api/v1", apiMiddlewares(d)...)
	get(api, "/ping", ping)
	get(api, "/items/:id", getItem(d))
	api.POST("/echo", echo)
}

// get registers a GET route and its HEAD twin: HTTP requires a server to
// answer HEAD wherever it answers GET (RFC 9110 §9.1), and uptime checkers
// and load balancers send it. net/http sends HEAD responses without their
// body; Gin alone would answer 405.
func get(r gin.IRoutes, path string, h ...gin.HandlerFunc) {
	r.GET(path, h...)
	r.HEAD(path, h...)
}

// noRoute answers requests no route matches: 404, except OPTIONS * (a
// question about the server, not a resource: RFC 9110 §9.3.7), which gets
// the empty 200 net/http would have sent, and an h2c preface (400). The server leaves OPTIONS * to the
// handler (DisableGeneralOptionsHandler) so that answer, too, carries a
// request ID and an access line.
func noRoute(c *gin.Context) {
	if c.Request.Method == http.MethodOptions && c.Request.RequestURI == "*" {
		c.Status(http.StatusOK)
		return
	}
	if c.Request.Method == "PRI" && c.Request.RequestURI == "*" {
		// The preface of HTTP/2 without TLS (h2c "prior knowledge"), which
		// this server does not speak: the problem says so, rather than "no
		// such route". 400, not 505: a client (or a scanner) that sends it
		// must not count as a server error on the dashboards and alerts.
		problem.Abort(c, http.StatusBadRequest, "HTTP/2 without TLS (h2c) is not served: use HTTP/1.1, or HTTP/2 over TLS")
		return
	}
	problem.Abort(c, http.StatusNotFound, "no such route")
}
