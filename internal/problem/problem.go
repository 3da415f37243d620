// Package problem writes RFC 9457 problem details (application/problem+json)
// and carries the one application error type whose message is safe to show.
package problem

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
)

// ContentType is the media type of every error response.
const ContentType = "application/problem+json"

// Details is the RFC 9457 body. Extra members (e.g. request_id) go in Extra.
type Details struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail,omitempty"`
	Instance  string `json:"instance,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}

// Error is an error whose status and message are safe to send to the client.
// Anything else that reaches the error handler is logged and answered with a
// generic 500: internal details never leak into responses.
type Error struct {
	Status int
	Detail string
	Err    error // cause, for the log only
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Detail + ": " + e.Err.Error()
	}
	return e.Detail
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an *Error with the given status and client-safe detail.
func New(status int, detail string) *Error { return &Error{Status: status, Detail: detail} }

// Wrap returns an *Error that keeps err as its cause for the log.
func Wrap(status int, detail string, err error) *Error {
	return &Error{Status: status, Detail: detail, Err: err}
}

// From maps any error to (status, detail). Unknown errors become a 500 with a
// generic detail.
func From(err error) (int, string) {
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Status, pe.Detail
	}
	return http.StatusInternalServerError, "internal error"
}

// Make builds the body for status with an optional detail.
func Make(status int, detail, instance, requestID string) Details {
	return Details{
		Type:      "about:blank",
		Title:     http.StatusText(status),
		Status:    status,
		Detail:    detail,
		Instance:  instance,
		RequestID: requestID,
	}
}

// Write writes a problem response to w. The caller sets any extra headers
// (Retry-After, Allow, ...) before calling it.
func Write(w http.ResponseWriter, status int, detail, instance, requestID string) {
	body, _ := json.Marshal(Make(status, detail, instance, requestID))
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
