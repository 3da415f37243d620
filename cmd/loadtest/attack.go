package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// Options describe one attack.
type Options struct {
	// Targets are hit round-robin, in order.
	Targets []vegeta.Target
	// Rate is requests per second; 0 sends as fast as Workers allow
	// (closed loop: each worker waits for its response before the next).
	Rate int
	// Workers is the initial number of workers, and the concurrency when
	// Rate is 0. At a fixed rate vegeta adds workers when responses are
	// slow, up to MaxWorkers (0: no cap).
	Workers    uint64
	MaxWorkers uint64
	// Duration bounds the attack (0: until MaxRequests).
	Duration time.Duration
	// Timeout bounds one request, body included.
	Timeout time.Duration
	// MaxRequests bounds the number of requests (0: until Duration).
	MaxRequests uint64
	// KeepAlive reuses connections (the default of real clients).
	KeepAlive bool
	// HTTP2 negotiates HTTP/2 over TLS (default: HTTP/1.1 everywhere,
	// the protocol of the keep-alive EOF story).
	HTTP2 bool
	// Insecure skips TLS certificate verification (self-signed test
	// certificates).
	Insecure bool
	// AllowRemote permits targets that are not loopback addresses.
	AllowRemote bool
	// Name labels the results (vegeta's attack name).
	Name string
}

// Error kinds of transport errors (requests that got no complete response).
const (
	KindEOF     = "eof"
	KindReset   = "connection reset"
	KindRefused = "connection refused"
	KindTimeout = "timeout"
	KindOther   = "other"
)

// Kinds lists the transport error kinds in report order.
var Kinds = []string{KindEOF, KindReset, KindRefused, KindTimeout, KindOther}

// Latencies of all requests, transport errors included (a timeout's latency
// is the timeout).
type Latencies struct {
	Mean, P50, P90, P99, Max time.Duration
}

// Summary is what an attack did.
type Summary struct {
	Requests uint64
	// Duration is from the first request sent to the last; Wait is from
	// the last sent to the last response.
	Duration, Wait time.Duration
	// Rate is requests sent per second; Throughput is successful (2xx and
	// 3xx) responses per second over Duration+Wait.
	Rate, Throughput float64
	// Success is the ratio of 2xx/3xx responses to requests.
	Success   float64
	Latencies Latencies
	// StatusCodes counts responses by status; 0 counts requests that got
	// no response (transport errors).
	StatusCodes map[int]uint64
	// TransportErrors counts the status-0 requests by kind; Examples keeps
	// the first message of each kind.
	TransportErrors map[string]uint64
	Examples        map[string]string
	// Stale counts the kept-alive connections the server had closed by the
	// time a request was sent on them.
	Stale StaleConns
}

// Validate checks the options, including the loopback rule.
func (o Options) Validate() error {
	if len(o.Targets) == 0 {
		return errors.New("no targets: give at least one URL")
	}
	for _, t := range o.Targets {
		u, err := url.Parse(t.URL)
		if err != nil {
			return fmt.Errorf("target %q: %w", t.URL, err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("target %q: want an absolute http:// or https:// URL", t.URL)
		}
		if t.Method == "" {
			return fmt.Errorf("target %q: no method", t.URL)
		}
		if !o.AllowRemote && !IsLoopbackHost(u.Hostname()) {
			return fmt.Errorf("target %q is not a loopback address (127.0.0.0/8, ::1, localhost): "+
				"load is only sent elsewhere with -allow-remote", t.URL)
		}
	}
	if o.Rate < 0 {
		return fmt.Errorf("rate %d: must be >= 0", o.Rate)
	}
	if o.Rate == 0 && o.Workers == 0 {
		return errors.New("rate 0 (max throughput) needs workers > 0: the workers are the concurrency")
	}
	if o.Duration < 0 {
		return fmt.Errorf("duration %s: must be >= 0", o.Duration)
	}
	if o.Duration == 0 && o.MaxRequests == 0 {
		return errors.New("unbounded attack: give a duration or a maximum number of requests")
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("timeout %s: must be > 0", o.Timeout)
	}
	if o.MaxWorkers != 0 && o.MaxWorkers < o.Workers {
		return fmt.Errorf("max workers %d below workers %d", o.MaxWorkers, o.Workers)
	}
	return nil
}

// IsLoopbackHost reports whether host (a URL's Hostname) is a loopback IP
// literal or "localhost" (which Attack sends to 127.0.0.1 itself, see
// pinLocalhost). Other names are not resolved: a name that resolves to
// loopback today may not tomorrow, and the check must hold for every
// request sent.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	return a.Unmap().IsLoopback()
}

// pinLocalhost sends the targets named localhost to 127.0.0.1, with the
// name kept in the Host header. The name is not resolved: Go looks it up in
// /etc/hosts and then in DNS with the search domains, so where /etc/hosts
// lacks it (a bare container) it could name a remote host.
func pinLocalhost(targets []vegeta.Target) []vegeta.Target {
	out := make([]vegeta.Target, len(targets))
	for i, t := range targets {
		out[i] = t
		u, err := url.Parse(t.URL)
		if err != nil || !strings.EqualFold(u.Hostname(), "localhost") {
			continue
		}
		host, port := u.Host, u.Port()
		u.Host = "127.0.0.1"
		if port != "" {
			u.Host = net.JoinHostPort("127.0.0.1", port)
		}
		out[i].URL = u.String()
		out[i].Header = t.Header.Clone()
		if out[i].Header == nil {
			out[i].Header = http.Header{}
		}
		if out[i].Header.Get("Host") == "" {
			out[i].Header.Set("Host", host)
		}
	}
	return out
}

// maxPacer stops the attack after max hits.
type maxPacer struct {
	vegeta.Pacer
	max uint64
}

func (p maxPacer) Pace(elapsed time.Duration, hits uint64) (time.Duration, bool) {
	if p.max > 0 && hits >= p.max {
		return 0, true
	}
	return p.Pacer.Pace(elapsed, hits)
}

// Attack runs the attack described by o until its duration or request count
// is reached or ctx is done, calls observe (if not nil) with every result in
// arrival order, and summarises. An observe error is returned after the
// attack, which is not interrupted by it.
func Attack(ctx context.Context, o Options, observe func(*vegeta.Result) error) (Summary, error) {
	if err := o.Validate(); err != nil {
		return Summary{}, err
	}
	conns := &connTracker{}
	opts := []func(*vegeta.Attacker){
		vegeta.Client(newClient(o, conns)),
		vegeta.Workers(o.Workers),
		// Bodies are drained but not kept: a long attack would hold
		// every response in memory.
		vegeta.MaxBody(0),
	}
	if o.Rate == 0 {
		opts = append(opts, vegeta.MaxWorkers(o.Workers))
	} else if o.MaxWorkers > 0 {
		opts = append(opts, vegeta.MaxWorkers(o.MaxWorkers))
	}
	atk := vegeta.NewAttacker(opts...)

	pacer := maxPacer{Pacer: vegeta.ConstantPacer{Freq: o.Rate, Per: time.Second}, max: o.MaxRequests}
	stop := context.AfterFunc(ctx, func() { atk.Stop() })
	defer stop()

	var (
		m        vegeta.Metrics
		codes    = map[int]uint64{}
		kinds    = map[string]uint64{}
		examples = map[string]string{}
		obsErr   error
	)
	targets := o.Targets
	if !o.AllowRemote {
		targets = pinLocalhost(targets)
	}
	for res := range atk.Attack(vegeta.NewStaticTargeter(targets...), pacer, o.Duration, o.Name) {
		m.Add(res)
		codes[int(res.Code)]++
		if res.Code == 0 {
			k := Classify(res.Error)
			kinds[k]++
			if _, ok := examples[k]; !ok {
				examples[k] = res.Error
			}
		}
		if observe != nil && obsErr == nil {
			obsErr = observe(res)
		}
	}
	m.Close()

	s := Summary{
		Requests:   m.Requests,
		Duration:   m.Duration,
		Wait:       m.Wait,
		Rate:       m.Rate,
		Throughput: m.Throughput,
		Success:    m.Success,
		Latencies: Latencies{
			Mean: m.Latencies.Mean,
			P50:  m.Latencies.P50,
			P90:  m.Latencies.P90,
			P99:  m.Latencies.P99,
			Max:  m.Latencies.Max,
		},
		StatusCodes:     codes,
		TransportErrors: kinds,
		Examples:        examples,
		Stale:           conns.snapshot(),
	}
	if obsErr != nil {
		return s, fmt.Errorf("recording results: %w", obsErr)
	}
	return s, nil
}

// Classify names the kind of a transport error from its message (vegeta
// keeps errors as strings). The "Get \"URL\": " prefix of *url.Error is
// skipped first, so a URL containing e.g. "EOF" or "timeout" cannot mislead.
func Classify(msg string) string {
	m := stripURLPrefix(msg)
	switch {
	case strings.Contains(m, "connection refused"):
		return KindRefused
	case strings.Contains(m, "connection reset"), strings.Contains(m, "broken pipe"),
		strings.Contains(m, "forcibly closed"):
		// Broken pipe: the peer reset the connection while we wrote.
		return KindReset
	case strings.Contains(m, "Timeout"), strings.Contains(m, "timeout"),
		strings.Contains(m, "deadline exceeded"):
		// Client.Timeout, i/o timeout, TLS handshake timeout, timeout
		// awaiting response headers, context deadline exceeded.
		return KindTimeout
	case strings.Contains(m, "EOF"), strings.Contains(m, "server closed idle connection"),
		strings.Contains(m, "server closed connection"):
		// EOF: the peer closed before any response byte; unexpected
		// EOF: it closed in the middle of one.
		return KindEOF
	default:
		return KindOther
	}
}

// stripURLPrefix turns `Get "http://x/y": EOF` into `EOF`.
func stripURLPrefix(msg string) string {
	op, rest, ok := strings.Cut(msg, " ")
	if !ok || op == "" || strings.ContainsAny(op, `":`) || !strings.HasPrefix(rest, `"`) {
		return msg
	}
	q, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return msg
	}
	return strings.TrimPrefix(rest[len(q):], ": ")
}

// SortedCodes returns the status codes of s in ascending order.
func (s Summary) SortedCodes() []int {
	out := make([]int, 0, len(s.StatusCodes))
	for c := range s.StatusCodes {
		out = append(out, c)
	}
	sort.Ints(out)
	return out
}

// TransportErrorCount is the number of requests that got no response.
func (s Summary) TransportErrorCount() uint64 { return s.StatusCodes[0] }
