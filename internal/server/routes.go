package server

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/hardenedgo/ginservice/internal/problem"
)

// routes is the whole public API.
func routes(e *gin.Engine, d Deps) {
	e.NoRoute(func(c *gin.Context) { problem.Abort(c, http.StatusNotFound, "no such route") })
	e.NoMethod(methodNotAllowed)

	e.GET("/healthz", healthz)
	e.GET("/readyz", readyz(d.Readiness))

	api := e.Group("/api/v1")
	if d.RateLimit != nil {
		api.Use(d.RateLimit)
	}
	api.GET("/ping", ping)
	api.GET("/items/:id", getItem(d))
	api.POST("/echo", echo)
}
