package main

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/hardenedgo/ginservice/internal/connerr"
)

// StaleConns counts the requests that met a kept-alive connection the
// server had already closed: the client's side of the keep-alive race, the
// classic EOF. net/http replays an idempotent request on a new connection
// by itself (Replayed, invisible otherwise); any other request fails with
// an eof or reset (Failed, counted among the transport errors too). MinIdle
// and MaxIdle bound how long those connections had been idle: failures
// that start at some idle time point at the server's (or a proxy's)
// keep-alive timeout.
type StaleConns struct {
	Replayed, Failed uint64
	MinIdle, MaxIdle time.Duration
}

// Total is the number of stale connections met.
func (s StaleConns) Total() uint64 { return s.Replayed + s.Failed }

// newClient is the HTTP client of an attack: vegeta's own defaults and the
// options Attack used to set through vegeta (TLS, timeout, keep-alive,
// HTTP/2, no redirects, no proxy for loopback attacks), with a transport
// that follows the connections each request gets.
func newClient(o Options, conns *connTracker) *http.Client {
	dialer := &net.Dialer{KeepAlive: 30 * time.Second}
	if !o.KeepAlive {
		dialer.KeepAlive = 0
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: o.Insecure}, //nolint:gosec // only with -insecure
		MaxIdleConnsPerHost: vegeta.DefaultConnections,
		MaxConnsPerHost:     vegeta.DefaultMaxConnections,
		DisableKeepAlives:   !o.KeepAlive,
	}
	if !o.AllowRemote {
		// HTTP_PROXY in the environment must not relay the load either.
		tr.Proxy = nil
	}
	if o.HTTP2 {
		tr.ForceAttemptHTTP2 = true
	} else {
		// HTTP/1.1 even where TLS would offer HTTP/2.
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	conns.rt = tr
	return &http.Client{
		Timeout:   o.Timeout,
		Transport: conns,
		// A redirect is reported, not followed: following one could carry
		// the load to a host the loopback check never saw.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// connTracker is the attack's transport: it notes the stale connections
// requests meet, and names the kept-alive connection in the error of a
// request that failed on one: "EOF (on a kept-alive connection idle 75s)".
type connTracker struct {
	rt http.RoundTripper

	mu    sync.Mutex
	stale StaleConns
}

func (t *connTracker) RoundTrip(req *http.Request) (*http.Response, error) {
	var u connerr.Use
	ctx := httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if idle, stale := u.Got(info); stale {
				t.note(idle, false) // replayed by net/http on a new connection
			}
		},
	})
	resp, err := t.rt.RoundTrip(req.WithContext(ctx))
	if err != nil {
		if _, reused, idle := u.Last(); reused {
			if k := Classify(err.Error()); k == KindEOF || k == KindReset {
				t.note(idle, true)
				err = connerr.OnKeptAlive(err, idle)
			}
		}
	}
	return resp, err
}

func (t *connTracker) note(idle time.Duration, failed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := &t.stale
	if s.Total() == 0 || idle < s.MinIdle {
		s.MinIdle = idle
	}
	s.MaxIdle = max(s.MaxIdle, idle)
	if failed {
		s.Failed++
	} else {
		s.Replayed++
	}
}

func (t *connTracker) snapshot() StaleConns {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stale
}
