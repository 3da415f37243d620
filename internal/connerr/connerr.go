// Package connerr names the network errors a client meets on a connection,
// for error.type span attributes and retry reasons, and follows the
// connections a request gets to tell the keep-alive race from the rest.
package connerr

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
)

// Kind names a transport error that a retry may cure: refused, reset, eof
// or timeout; "" for any other.
func Kind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		strings.Contains(err.Error(), "server closed idle connection"):
		return "eof"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return ""
}
