package observability

import (
	"bytes"
	"context"
	"crypto/tls"
	"log"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// TLS handshake failure reasons (label values of
// http_server_tls_handshake_errors_total).
const (
	TLSReasonEOF            = "eof"             // the client went away (EOF, reset) mid-handshake
	TLSReasonTimeout        = "timeout"         // the handshake outlived the server's read deadline
	TLSReasonBadCertificate = "bad_certificate" // a certificate was refused, by either side
	TLSReasonOther          = "other"           // not TLS, no common version or cipher, ...
)

const tlsHandshakePrefix = "http: TLS handshake error from "

// ServerErrorLog returns the logger for http.Server.ErrorLog. net/http
// reports every failed TLS handshake there as a free-text line ("http: TLS
// handshake error from 10.0.0.1:5555: EOF"); those become
// http_server_tls_handshake_errors_total{reason} and a structured line
// (reason, remote_addr, error), at most 5 a second for each reason (after a
// burst of 10) so a handshake flood or a port scan cannot flood the log, and
// a flood of one reason (health checks' eof) cannot hide the rare lines of
// another (bad_certificate). Every other line net/http writes
// (accept errors, superfluous WriteHeader calls, ...) goes to logger at warn,
// rate limited the same way.
//
// conns, when the server's connections come through conns.Listener, lets a
// handshake error line say more than net/http's text: a client that refused
// the certificate with an unencrypted alert (OpenSSL's TLS 1.3 clients:
// curl, Python) is bad_certificate, not the "bad record MAC" crypto/tls
// makes of it; plain HTTP on the TLS port gets the request ID of the
// problem response it was sent. It may be nil.
func ServerErrorLog(logger *slog.Logger, reg prometheus.Registerer, conns *ConnMetrics) *log.Logger {
	cv := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "http_server_tls_handshake_errors_total",
		Help: "Failed TLS handshakes on the public listener, by reason (eof, timeout, bad_certificate, other).",
	}, []string{"reason"})
	reg.MustRegister(cv)
	w := &errorLogWriter{
		conns:    conns,
		tlsLogs:  map[string]*limitedLog{},
		otherLog: newLimitedLog(logger, 5, 10),
		counters: map[string]prometheus.Counter{},
	}
	for _, r := range tlsReasons {
		w.counters[r] = cv.WithLabelValues(r)
		w.tlsLogs[r] = newLimitedLog(logger, 5, 10)
	}
	return log.New(w, "", 0)
}

// FlushServerErrorLog writes the counts of the lines a ServerErrorLog's
// rate limit held back since its last line ("tls handshake error", "http
// server error"), for the exit: the line that would have carried them
// never comes. Another logger is left alone.
func FlushServerErrorLog(l *log.Logger) {
	if l == nil {
		return
	}
	if w, ok := l.Writer().(*errorLogWriter); ok {
		for _, r := range tlsReasons {
			w.tlsLogs[r].Flush(context.Background(), "tls handshake error", slog.String("reason", r))
		}
		w.otherLog.Flush(context.Background(), "http server error")
	}
}

type errorLogWriter struct {
	conns    *ConnMetrics
	tlsLogs  map[string]*limitedLog // by reason; read-only after construction
	otherLog *limitedLog
	counters map[string]prometheus.Counter // read-only after construction
}

var tlsReasons = []string{TLSReasonEOF, TLSReasonTimeout, TLSReasonBadCertificate, TLSReasonOther}

// Write receives one log line per call (log.Logger guarantees it).
func (w *errorLogWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimRight(p, "\n"))
	ctx := context.Background()
	if rest, ok := strings.CutPrefix(line, tlsHandshakePrefix); ok {
		addr, msg, _ := strings.Cut(rest, ": ")
		reason := classifyTLSError(msg)
		var more []slog.Attr
		// net/http logs the failure on the connection's goroutine, before
		// it closes it: the connection is still known by its address.
		if tc := w.conns.tlsHandshake(addr); tc != nil {
			if a, ok := tc.peerPlainAlert(); ok && reason == TLSReasonOther && isCertificateAlert(a) {
				reason = TLSReasonBadCertificate
				more = append(more, slog.String("peer_alert", a.Error()+" (sent unencrypted, which crypto/tls could not read as such)"))
			}
			if tc.rejectedID != "" {
				more = append(more, slog.String("request_id", tc.rejectedID))
			}
		}
		defer w.counters[reason].Inc() // after the line: whoever sees the count finds the line
		level := slog.LevelWarn
		if reason == TLSReasonEOF {
			// TCP health checks and impatient clients do this all day.
			level = slog.LevelInfo
		}
		attrs := append([]slog.Attr{
			slog.String("reason", reason),
			slog.String("remote_addr", addr),
			slog.String("error", msg),
		}, more...)
		w.tlsLogs[reason].Log(ctx, level, "tls handshake error", attrs...)
		return len(p), nil
	}
	w.otherLog.Log(ctx, slog.LevelWarn, "http server error", slog.String("error", strings.TrimPrefix(line, "http: ")))
	return len(p), nil
}

// isCertificateAlert reports whether a peer's alert refuses a certificate
// (RFC 8446 §6.2): bad_certificate, unsupported_certificate,
// certificate_revoked, certificate_expired, certificate_unknown,
// unknown_ca, certificate_required.
func isCertificateAlert(a tls.AlertError) bool {
	switch a {
	case 42, 43, 44, 45, 46, 48, 116:
		return true
	}
	return false
}

// classifyTLSError maps the error text of a failed handshake to a reason.
// Text is all net/http hands over; crypto/tls's messages are stable.
func classifyTLSError(msg string) string {
	m := strings.ToLower(msg)
	switch {
	case m == "eof", strings.Contains(m, "unexpected eof"), strings.HasSuffix(m, ": eof"),
		strings.Contains(m, "connection reset by peer"), strings.Contains(m, "broken pipe"):
		return TLSReasonEOF
	case strings.Contains(m, "timeout"), strings.Contains(m, "deadline exceeded"):
		return TLSReasonTimeout
	case strings.Contains(m, "certificate"):
		// "remote error: tls: bad certificate", "... unknown certificate
		// authority", "tls: failed to verify certificate", "certificate
		// required", "expired certificate".
		return TLSReasonBadCertificate
	default:
		return TLSReasonOther
	}
}
