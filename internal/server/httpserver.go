package server

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Timeouts are the http.Server limits (see config for their meaning).
type Timeouts struct {
	ReadHeader time.Duration
	Read       time.Duration
	Write      time.Duration
	Idle       time.Duration
}

// headerSlack is what net/http reads past MaxHeaderBytes before it answers
// 431 (its bufio slack, 4096 bytes).
const headerSlack = 4096

// NewHTTPServer returns an http.Server with every timeout and the header
// limit set, and net/http's own error log routed into slog. The zero-value
// http.Server has no timeouts at all: one slow client can hold a connection
// (and a goroutine) forever.
//
// maxHeaderBytes (more than headerSlack) is the most an HTTP/1 request line
// and headers may take: net/http allows MaxHeaderBytes plus headerSlack, so
// the server gets the difference. HTTP/2 advertises its own header list
// limit from the same field.
func NewHTTPServer(h http.Handler, t Timeouts, maxHeaderBytes int, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    maxHeaderBytes - headerSlack,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		// Requests get a context that is not cancelled by shutdown: in-flight
		// work drains instead of failing.
		BaseContext: func(net.Listener) context.Context { return context.Background() },
		// OPTIONS * goes to the handler, not to net/http's built-in
		// answer: the public handler gives the same empty 200 with a
		// request ID and an access line (the admin mux answers 400).
		DisableGeneralOptionsHandler: true,
	}
}
