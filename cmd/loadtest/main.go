// Command loadtest sends HTTP load (vegeta as a library) at a fixed rate or
// as fast as a fixed number of workers allow, then prints throughput, success
// ratio, latency percentiles, a status-code histogram and transport errors by
// kind (EOF, connection reset, connection refused, timeout), and writes a
// latency-over-time HTML plot. It refuses non-loopback targets unless
// -allow-remote is given. See benchmarks/http.md for examples.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
	"github.com/tsenart/vegeta/v12/lib/plot"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first Ctrl-C stops the attack and still prints the summary of
	// what was sent; requests in flight may take up to -timeout. A second
	// one ends the program at once: the handler is released after the first.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a bad command line (exit code 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ", ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

const usageHead = `Usage: loadtest [flags] [URL ...]

Sends HTTP load with vegeta: at a fixed rate (-rate 500) or as fast as
-workers N concurrent workers allow (-rate 0 -workers N), for -duration or
-max-requests, then prints throughput, success ratio, p50/p90/p99/max
latency, the status-code histogram, transport errors by kind (eof,
connection reset, connection refused, timeout, other) and the kept-alive
connections the server had closed when they were reused (stale
connections: replayed by net/http, or failed), and writes a
latency-over-time plot (HTML, open it in a browser).

Targets are the URLs given with -url or as arguments (hit round-robin with
-method, -body and -H), or a vegeta targets file (-targets).

Only loopback targets (127.0.0.0/8, ::1, localhost) are attacked unless
-allow-remote is given; redirects are not followed and HTTP(S)_PROXY is
ignored for the same reason.

Examples:
  go run ./cmd/loadtest -rate 500 -duration 30s http://127.0.0.1:8080/api/v1/ping
  go run ./cmd/loadtest -rate 0 -workers 32 -duration 10s -plot ping.html \
      -url http://127.0.0.1:8080/api/v1/ping -url http://127.0.0.1:8080/api/v1/items/1

Flags:
`

// run is the whole program; tests call it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	prog := "loadtest"
	if len(args) > 0 {
		prog = filepath.Base(args[0])
		args = args[1:]
	}
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		urls        listFlag
		headers     listFlag
		targetsFile = fs.String("targets", "", "vegeta targets `file` (http format: \"GET http://...\" lines, headers, @body); instead of URLs")
		method      = fs.String("method", http.MethodGet, "HTTP method for the URLs")
		bodyFile    = fs.String("body", "", "file whose content is sent as the request body")
		rate        = fs.Int("rate", 50, "requests per second; 0: as fast as -workers allow")
		workers     = fs.Uint64("workers", 10, "initial workers; with -rate 0 the fixed concurrency")
		maxWorkers  = fs.Uint64("max-workers", 0, "cap on workers at a fixed rate (0: vegeta adds workers as needed)")
		duration    = fs.Duration("duration", 10*time.Second, "attack duration (0: until -max-requests)")
		timeout     = fs.Duration("timeout", 5*time.Second, "timeout of one request, body included")
		maxRequests = fs.Uint64("max-requests", 0, "stop after this many requests (0: no limit)")
		keepAlive   = fs.Bool("keepalive", true, "reuse connections")
		http2       = fs.Bool("http2", false, "negotiate HTTP/2 over TLS (default HTTP/1.1)")
		insecure    = fs.Bool("insecure", false, "skip TLS certificate verification")
		allowRemote = fs.Bool("allow-remote", false, "allow targets that are not loopback addresses (load other hosts only if you own them)")
		name        = fs.String("name", "", "attack name (labels the plot and raw results)")
		plotFile    = fs.String("plot", "loadtest-plot.html", "write the latency-over-time HTML plot here (empty: no plot)")
		resultsFile = fs.String("results", "", "write raw results here in vegeta's binary format (vegeta report/plot read it)")
		jsonFile    = fs.String("json", "", "write the summary as JSON here (- for stdout, with the text summary on stderr)")
	)
	fs.Var(&urls, "url", "target `URL` (repeatable)")
	fs.Var(&headers, "H", "request header `Name: value` (repeatable)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageHead)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	urls = append(urls, fs.Args()...)

	hdr := http.Header{}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return usageError{fmt.Errorf("-H %q: want Name: value", h)}
		}
		hdr.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	var body []byte
	if *bodyFile != "" {
		b, err := os.ReadFile(*bodyFile)
		if err != nil {
			return usageError{fmt.Errorf("-body: %w", err)}
		}
		body = b
	}

	var targets []vegeta.Target
	if *targetsFile != "" {
		if len(urls) > 0 {
			return usageError{errors.New("give either -targets or URLs, not both")}
		}
		b, err := os.ReadFile(*targetsFile)
		if err != nil {
			return usageError{fmt.Errorf("-targets: %w", err)}
		}
		targets, err = vegeta.ReadAllTargets(vegeta.NewHTTPTargeter(bytes.NewReader(b), body, hdr))
		if err != nil {
			return usageError{fmt.Errorf("-targets %s: %w", *targetsFile, err)}
		}
	}
	for _, u := range urls {
		targets = append(targets, vegeta.Target{Method: strings.ToUpper(*method), URL: u, Body: body, Header: hdr})
	}

	opts := Options{
		Targets:     targets,
		Rate:        *rate,
		Workers:     *workers,
		MaxWorkers:  *maxWorkers,
		Duration:    *duration,
		Timeout:     *timeout,
		MaxRequests: *maxRequests,
		KeepAlive:   *keepAlive,
		HTTP2:       *http2,
		Insecure:    *insecure,
		AllowRemote: *allowRemote,
		Name:        *name,
	}
	if err := opts.Validate(); err != nil {
		return usageError{err}
	}

	// Result sinks: the plot and, on request, the raw results file.
	var (
		p     *plot.Plot
		sinks []func(*vegeta.Result) error
	)
	if *plotFile != "" {
		title := "loadtest"
		if *name != "" {
			title += ": " + *name
		}
		p = plot.New(plot.Title(title), plot.Downsample(4000), plot.Label(PlotLabel))
		sinks = append(sinks, p.Add)
	}
	var results *os.File
	var resultsBuf *bufio.Writer
	if *resultsFile != "" {
		f, err := os.Create(*resultsFile)
		if err != nil {
			return fmt.Errorf("-results: %w", err)
		}
		defer f.Close() // on early return; closed with its error below
		results, resultsBuf = f, bufio.NewWriter(f)
		sinks = append(sinks, vegeta.NewEncoder(resultsBuf).Encode)
	}
	observe := func(r *vegeta.Result) error {
		for _, s := range sinks {
			if err := s(r); err != nil {
				return err
			}
		}
		return nil
	}

	// With -json - the JSON is stdout's only content, so that it parses;
	// the human summary goes to stderr.
	human := stdout
	if *jsonFile == "-" {
		human = stderr
	}
	fmt.Fprintf(stderr, "%s: %s\n", prog, describe(opts))
	sum, err := Attack(ctx, opts, observe)
	if err != nil && sum.Requests == 0 {
		return err
	}
	// A sink that failed (say -results on a full disk) stopped recording;
	// the attack ran on, and its summary is still printed before the error.
	sinkErr := err
	if ctx.Err() != nil {
		fmt.Fprintf(stderr, "%s: interrupted; summary of the requests sent so far\n", prog)
	}
	PrintSummary(human, opts, sum)

	if p != nil {
		if err := writePlot(*plotFile, p); err != nil {
			return err
		}
		fmt.Fprintf(human, "%-*s%s\n", labelWidth, "plot", *plotFile)
	}
	if results != nil {
		if err := resultsBuf.Flush(); err != nil {
			return fmt.Errorf("-results: %w", err)
		}
		if err := results.Close(); err != nil {
			return fmt.Errorf("-results: %w", err)
		}
		fmt.Fprintf(human, "%-*s%s (vegeta report %s)\n", labelWidth, "results", *resultsFile, *resultsFile)
	}
	if *jsonFile != "" {
		b, err := json.MarshalIndent(JSONSummary(opts, sum), "", "  ")
		if err != nil {
			return fmt.Errorf("summary json: %w", err)
		}
		b = append(b, '\n')
		if *jsonFile == "-" {
			_, err = stdout.Write(b)
		} else {
			err = os.WriteFile(*jsonFile, b, 0o644)
		}
		if err != nil {
			return fmt.Errorf("-json: %w", err)
		}
	}
	return sinkErr
}

func writePlot(path string, p *plot.Plot) error {
	p.Close()
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("-plot: %w", err)
	}
	bw := bufio.NewWriter(f)
	if _, err := p.WriteTo(bw); err != nil {
		f.Close()
		return fmt.Errorf("-plot: %w", err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("-plot: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("-plot: %w", err)
	}
	return nil
}

// PlotLabel splits the plot into one series per outcome: OK, each error
// status, each transport error kind. "ERROR" in a label makes vegeta draw it
// in a failure colour.
func PlotLabel(r *vegeta.Result) string {
	switch {
	case r.Code == 0:
		return "ERROR " + Classify(r.Error)
	case r.Code >= 200 && r.Code < 400:
		return "OK"
	default:
		return fmt.Sprintf("ERROR %d", r.Code)
	}
}

func describe(o Options) string {
	var mode string
	if o.Rate == 0 {
		mode = fmt.Sprintf("max throughput, %d workers", o.Workers)
	} else {
		mode = fmt.Sprintf("%d req/s", o.Rate)
	}
	var bound []string
	if o.Duration > 0 {
		bound = append(bound, "for at most "+o.Duration.String())
	}
	if o.MaxRequests > 0 {
		bound = append(bound, fmt.Sprintf("at most %d requests", o.MaxRequests))
	}
	return fmt.Sprintf("%s, %s, timeout %s, %d target(s)", mode, strings.Join(bound, ", "), o.Timeout, len(o.Targets))
}
