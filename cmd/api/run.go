package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/hardenedgo/ginservice/internal/config"
	"github.com/hardenedgo/ginservice/internal/health"
	"github.com/hardenedgo/ginservice/internal/items"
	"github.com/hardenedgo/ginservice/internal/observability"
	"github.com/hardenedgo/ginservice/internal/ratelimit"
	"github.com/hardenedgo/ginservice/internal/resilience"
	"github.com/hardenedgo/ginservice/internal/server"
)

// exitCoder is an error that chooses the process exit code.
type exitCoder interface{ ExitCode() int }

type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }
func (e exitError) ExitCode() int { return e.code }

// run is the whole program; main only calls it, and tests call it too.
// It returns when ctx is cancelled or SIGINT/SIGTERM arrives and the
// shutdown sequence has finished.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	rev := buildCommit() // -X main.commit, else the VCS revision the go command stamped
	prog := "api"
	if len(args) > 0 {
		prog = filepath.Base(args[0])
	}
	if len(args) > 1 {
		switch args[1] {
		case "-h", "-help", "--help", "help":
			config.Usage(stdout, prog)
			return nil
		case "version", "-version", "--version":
			fmt.Fprintf(stdout, "%s %s (commit %s, %s)\n", prog, version, rev, runtime.Version())
			return nil
		case "healthcheck":
			return healthcheck(ctx, getenv)
		default:
			return exitError{2, fmt.Errorf("unknown argument %q: see %s -h", args[1], prog)}
		}
	}

	// --- Configuration: fail fast with one line naming the variable.
	cfg, err := config.Load(getenv)
	if err != nil {
		return exitError{2, err}
	}
	// Tracing from the standard OTEL_* variables, checked here too, before
	// anything is logged: exporting only when an OTLP endpoint is
	// configured; incoming trace context is continued either way so logs
	// carry the caller's trace_id.
	tracing, err := observability.SetupTracing(ctx, getenv, version)
	if err != nil {
		return exitError{2, fmt.Errorf("config: OTEL_*: %w", err)}
	}
	// The exporter's goroutines end with run: a start-up that fails below
	// stops them here (the normal exit flushes them in the shutdown).
	defer func() {
		tctx, tcancel := context.WithTimeout(context.Background(), time.Second)
		defer tcancel()
		_ = tracing.Shutdown(tctx) // a no-op once shut down
	}()
	logOut := stdout
	var logBuf *observability.BufferedWriter
	if cfg.LogFlushInterval > 0 {
		logBuf = observability.NewBufferedWriter(stdout, 64<<10, cfg.LogFlushInterval)
		defer logBuf.Close()
		logOut = logBuf
	}
	logger, err := observability.NewLogger(logOut, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return exitError{2, fmt.Errorf("config: LOG_LEVEL/LOG_FORMAT: %w", err)}
	}
	logger.Info("starting", slog.String("version", version), slog.String("commit", rev), slog.Any("config", cfg))
	for _, w := range cfg.Warnings() {
		logger.Warn("config: " + w)
	}

	// go-redis logs dial failures through a process-wide logger; route it
	// into slog so a Redis outage shows up as JSON lines, not raw text.
	redisLog := redisLogs.use(logger)
	redisLoggerOnce.Do(func() { redis.SetLogger(&redisLogs) })

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	// --- Telemetry.
	reg := observability.NewRegistry(version, rev)
	// The pod's own kernel TCP counters: listen overflows, aborts, resets.
	reg.MustRegister(observability.NewKernelCollector("/proc", logger))
	reg.MustRegister(observability.LogDrops(logBuf))
	httpMetrics := observability.NewHTTPMetrics(reg, cfg.BreakerTimeout)
	connMetrics := observability.NewConnMetrics(reg, logger)
	readiness := health.NewReadiness()

	tracing.InstallGlobal(logger)
	reg.MustRegister(tracing.Collectors()...)
	logger.Info("tracing", slog.Any("tracing", tracing))
	// Redis spans only when spans are exported (one per decision); the
	// outbound client always gets the provider so a sampled caller's trace
	// stays joined through this service even when it exports nothing itself.
	var redisTP trace.TracerProvider
	if tracing.Exporting() {
		redisTP = tracing.Provider()
	}

	// --- Rate limiting: Redis when REDIS_URL is set, else in memory. A
	// Redis that is down at start is not fatal: the fallback decides and a
	// background probe switches back when Redis answers.
	var rateLimit gin.HandlerFunc
	if cfg.RateLimitEnabled {
		limiter, err := ratelimit.New(ctx, ratelimit.Config{
			RedisURL:       cfg.RedisURL,
			Rate:           cfg.RateLimitRate,
			Burst:          cfg.RateLimitBurst,
			OnRedisError:   cfg.RateLimitOnError,
			Instances:      cfg.RateLimitInstances,
			RedisTimeout:   cfg.RateLimitTimeout,
			KeyHeader:      cfg.RateLimitKeyHeader,
			TracerProvider: redisTP,
		}, logger, reg)
		if err != nil {
			return exitError{2, fmt.Errorf("config: rate limiter: %w", err)}
		}
		defer limiter.Close()
		readiness.Register("redis", limiter.Health)
		rateLimit = ratelimit.Middleware(limiter, ratelimit.MiddlewareOptions{KeyHeader: cfg.RateLimitKeyHeader, Logger: logger})
	} else {
		logger.Info("ratelimit: off (RATELIMIT_ENABLED=false)")
		// /readyz always names its redis check; with no limiter nothing
		// uses Redis.
		readiness.Register("redis", func(context.Context) health.Status { return health.StatusDisabled })
	}

	// --- The items dependency: DOWNSTREAM_URL, or the built-in simulated
	// one served on loopback; either way through the resilient client
	// (pool, timeouts, retries, outbound metrics and spans), behind the
	// circuit breaker and fallback. PUT /debug/faults drives the simulated
	// one.
	sim := items.NewSimulated()
	downstream := cfg.DownstreamURL
	if downstream == "" {
		simLn, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("simulated dependency: %w", err)
		}
		simSrv := &http.Server{
			Handler:           sim.Handler(),
			ReadHeaderTimeout: 5 * time.Second,
			// Longer than the client's idle timeout, as a dependency's
			// keep-alive must be: the client closes idle connections first.
			IdleTimeout: cfg.DownstreamIdleTimeout + 30*time.Second,
			ErrorLog:    slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		}
		go func() { _ = simSrv.Serve(simLn) }()
		// Closed last: the public server's drain still calls it.
		defer simSrv.Close()
		downstream = "http://" + simLn.Addr().String()
		logger.Info("items: built-in simulated dependency (DOWNSTREAM_URL unset)", slog.String("url", downstream))
	}
	ccfg := resilience.DefaultClientConfig()
	ccfg.AttemptTimeout = cfg.DownstreamAttemptTimeout
	ccfg.MaxAttempts = cfg.DownstreamMaxAttempts
	ccfg.RetryBudgetRatio = cfg.DownstreamRetryBudget
	ccfg.IdleConnTimeout = cfg.DownstreamIdleTimeout
	ccfg.MaxConnsPerHost = cfg.DownstreamMaxConns
	client, err := resilience.NewClient(ccfg, logger, reg, tracing.Provider(), resilience.WithPropagator(tracing.Propagator()))
	if err != nil {
		return exitError{2, fmt.Errorf("config: downstream client: %w", err)}
	}
	defer client.CloseIdleConnections()
	base, err := items.NewHTTPSource(downstream, client)
	if err != nil {
		return exitError{2, fmt.Errorf("config: DOWNSTREAM_URL: %w", err)}
	}
	breaker, err := resilience.NewHystrixBreaker("items", resilience.BreakerConfig{
		Timeout:       cfg.BreakerTimeout,
		MaxConcurrent: cfg.BreakerMaxConcurrent,
		ErrorPercent:  cfg.BreakerErrorPercent,
		RequestVolume: cfg.BreakerVolume,
		SleepWindow:   cfg.BreakerSleepWindow,
	}, logger, reg)
	if err != nil {
		return exitError{2, fmt.Errorf("config: breaker: %w", err)}
	}
	readiness.Register("items", breaker.Check)
	src, err := resilience.NewItemSource(base, breaker, logger, reg)
	if err != nil {
		return fmt.Errorf("items source: %w", err)
	}

	// --- Handlers and servers.
	trusted, _ := cfg.TrustedPrefixes() // validated by config.Load
	timeouts := server.Timeouts{
		ReadHeader: cfg.ReadHeaderTimeout,
		Read:       cfg.ReadTimeout,
		Write:      cfg.WriteTimeout,
		Idle:       cfg.IdleTimeout,
	}
	public := server.NewHTTPServer(server.NewServer(server.Deps{
		Logger:         logger,
		Metrics:        httpMetrics,
		Readiness:      readiness,
		Items:          src,
		MaxBodyBytes:   cfg.MaxBodyBytes,
		Timeouts:       timeouts,
		TrustedProxies: trusted,
		Tracing:        tracing.Middleware(),
		Exemplars:      tracing.Exporting(),
		RateLimit:      rateLimit,
	}), timeouts, cfg.MaxHeaderBytes, logger)
	adminSim := sim
	if cfg.DownstreamURL != "" {
		adminSim = nil
	}
	admin := server.NewHTTPServer(server.NewAdmin(server.AdminDeps{
		Logger:     logger,
		Gatherer:   reg,
		Registerer: reg,
		Pprof:      cfg.PprofEnabled,
		Faults:     adminSim,
	}), server.Timeouts{ReadHeader: 5 * time.Second, Read: 30 * time.Second, Write: 60 * time.Second, Idle: 120 * time.Second}, 1<<16, logger)

	if cfg.TLSCertFile != "" {
		// Read now, so a bad pair is a configuration error (exit 2) and not a
		// listener that fails after start-up; renewed files are picked up
		// without a restart.
		cert, err := server.LoadCertificate(cfg.TLSCertFile, cfg.TLSKeyFile, logger)
		if err != nil {
			return exitError{2, fmt.Errorf("config: %w", err)}
		}
		public.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: cert.GetCertificate}
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "http_server_tls_certificate_expiry_timestamp_seconds",
			Help: "When the public listener's certificate in service expires (Unix time); follows renewed files (looked for on a TLS handshake, at most every 10 s).",
		}, func() float64 { return float64(cert.NotAfter().Unix()) }))
	}

	// Listen before reporting ready. net.Listen on Linux uses
	// net.core.somaxconn as the accept backlog.
	// net/http's own error lines (TLS handshake failures above all) become
	// counters and rate-limited structured lines; connection states and who
	// closed each connection are measured on the listener.
	public.ErrorLog = observability.ServerErrorLog(logger, reg, connMetrics)
	observability.ServerTimeouts(reg, public)
	observability.HTTP2Errors(reg, public)
	connMetrics.SetIdleTimeout(cmp.Or(public.IdleTimeout, public.ReadTimeout)) // net/http's fallback
	public.ConnState = connMetrics.ConnState
	public.ConnContext = connMetrics.ConnContext // close lines name the request a connection broke on
	rawLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	pubLn := connMetrics.Listener(rawLn)
	adminLn, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		pubLn.Close()
		return fmt.Errorf("ADMIN_ADDR %s: %w", cfg.AdminAddr, err)
	}
	queues := observability.NewListenQueues(logger)
	queues.Add("public", rawLn)
	queues.Add("admin", adminLn)
	reg.MustRegister(queues)

	// --- Lifecycle: the servers run as a group; the first to fail, a
	// signal or ctx ends them all through the shutdown sequence.
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		var err error
		if cfg.TLSCertFile != "" {
			err = public.ServeTLS(pubLn, "", "") // the certificate comes from TLSConfig
		} else {
			err = public.Serve(pubLn)
		}
		return serveErr("public", err)
	})
	g.Go(func() error { return serveErr("admin", admin.Serve(adminLn)) })
	g.Go(func() error {
		<-gctx.Done()
		err := shutdown(ctx.Err() != nil, stop, cfg, logger, readiness, public, admin, connMetrics.MarkForcedClose)
		// The connections Shutdown closed end on their own goroutines,
		// after it returned: their close lines and counts are waited for
		// (briefly: a handler that outlived a forced close holds its
		// connection's).
		sctx, scancel := context.WithTimeout(context.Background(), time.Second)
		defer scancel()
		if serr := connMetrics.Settle(sctx); serr != nil {
			logger.Warn("shutdown: connections still open at exit", slog.Int64("connections", connMetrics.Open()))
		}
		observability.FlushServerErrorLog(public.ErrorLog)
		redisLog.Flush(context.Background(), redisLogMsg)
		if n := connMetrics.CutByForcedClose(); n > 0 {
			// The count dies with the process, most likely unscraped: the
			// log keeps it.
			logger.Warn("shutdown: requests in flight cut", slog.Int64("connections", n),
				slog.String("timeout", cfg.ShutdownTimeout.String()),
				slog.String("detail", "SHUTDOWN_TIMEOUT ran out before these requests ended; their access lines say server_closed"))
		}
		// Spans of the drained requests are flushed before the exit. Best
		// effort: a collector that is down or hangs costs at most 5s and
		// the spans, and is logged; it does not fail a clean shutdown.
		tctx, tcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer tcancel()
		if terr := tracing.Shutdown(tctx); terr != nil {
			logger.Warn("tracing: spans not exported", slog.String("error", terr.Error()))
		}
		return err
	})

	readiness.SetReady()
	logger.Info("listening", slog.String("public", pubLn.Addr().String()), slog.String("admin", adminLn.Addr().String()))
	if logBuf != nil {
		_ = logBuf.Flush() // start-up lines at once, not after the first interval
	}

	err = g.Wait()
	logger.Info("stopped", slog.Any("error", err))
	return err
}

var (
	redisLoggerOnce sync.Once
	// redisLogs is go-redis's logger, process-wide: it writes to the
	// current run's log.
	redisLogs redisLogger
)

const redisLogMsg = "redis client"

// redisLogger adapts slog to go-redis's internal logger. While Redis is
// down the client logs every failed dial of the background probe; three
// "redis client" WARN lines, then one every 10 s, say as much, each with
// the number held back since the one before (the limiter logs
// transitions). At exit a last line gives the number held back since.
type redisLogger struct {
	l atomic.Pointer[observability.LimitedLog]
}

// use directs the lines to logger from now on and returns the limit they
// go through, to flush at exit.
func (r *redisLogger) use(logger *slog.Logger) *observability.LimitedLog {
	l := observability.NewLimitedLog(logger, rate.Every(10*time.Second), 3)
	r.l.Store(l)
	return l
}

func (r *redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if l := r.l.Load(); l != nil {
		l.Log(ctx, slog.LevelWarn, redisLogMsg, slog.String("detail", fmt.Sprintf(format, v...)))
	}
}

func serveErr(name string, err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("%s listener: %w", name, err)
}

// shutdown is the SIGTERM sequence: readiness fails at once; traffic is still
// served for SHUTDOWN_DELAY while load balancers take the pod out; then the
// listener closes and in-flight requests drain for up to SHUTDOWN_TIMEOUT.
// The admin listener closes last so the drain can be watched.
//
// During the delay every HTTP/1 response carries "Connection: close"
// (server.closeWhenDraining): the pod's endpoint is gone by then (preStop
// waits for it), but connections already open to it are not moved by
// kube-proxy or a proxy's keep-alive pool. Each leaves after its next
// response, told so, and reconnects to a pod still in the endpoints;
// otherwise it would meet Shutdown's close of idle connections, and a
// request written at that instant fails (clients retry only idempotent
// ones). The price: a client still routed here opens a connection per
// request until the listener closes, and one still in the kernel's accept
// queue at that moment is reset. With the endpoint removed first, few are.
func shutdown(signalled bool, stopSignals func(), cfg config.Config, logger *slog.Logger, readiness *health.Readiness, public, admin *http.Server, forcing func()) error {
	stopSignals() // a second SIGTERM/SIGINT now kills the process at once
	readiness.SetShuttingDown()
	if signalled && cfg.ShutdownDelay > 0 {
		logger.Info("shutdown: not ready, still serving", slog.String("delay", cfg.ShutdownDelay.String()))
		time.Sleep(cfg.ShutdownDelay)
	}
	logger.Info("shutdown: closing listener, draining", slog.String("timeout", cfg.ShutdownTimeout.String()))
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	var errs []error
	if err := drain(sctx, public); err != nil {
		forcing() // the requests still in flight are cut by the server
		_ = public.Close()
		errs = append(errs, fmt.Errorf("drain public listener: %w", err))
	}
	actx, acancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer acancel()
	if err := admin.Shutdown(actx); err != nil {
		_ = admin.Close()
	}
	return errors.Join(errs...)
}

// drain is srv.Shutdown(ctx), with the shutdown signal repeated every
// 500 ms while it waits. Shutdown tells HTTP/2 connections to go away
// (GOAWAY) once, as it starts; a TLS connection still in its handshake at
// that moment becomes an HTTP/2 connection that never hears it, keeps
// serving its client, and holds the drain until SHUTDOWN_TIMEOUT, when it
// is cut with whatever it carries. Shutdown again reaches it (connections
// that already have their GOAWAY do not get a second one).
func drain(ctx context.Context, srv *http.Server) error {
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctx) }()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			again, cancel := context.WithCancel(ctx)
			cancel() // only the signal: the first call does the waiting
			_ = srv.Shutdown(again)
		}
	}
}

// healthcheck is `api healthcheck`: the container image has no curl, so the
// binary probes its own /healthz, on loopback unless HTTP_ADDR names a host.
func healthcheck(ctx context.Context, getenv func(string) string) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return exitError{2, err}
	}
	host, port, err := net.SplitHostPort(cfg.HTTPAddr)
	if err != nil {
		return exitError{2, fmt.Errorf("HTTP_ADDR %q: %w", cfg.HTTPAddr, err)}
	}
	// Probe the address the service listens on; all interfaces (the
	// container's usual :8080) are probed on loopback.
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	scheme := "http"
	tr := &http.Transport{DisableKeepAlives: true}
	if cfg.TLSCertFile != "" {
		scheme = "https"
		// The probe talks to this very process on loopback.
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // loopback self-probe
	}
	client := &http.Client{Timeout: 3 * time.Second, Transport: tr}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort(host, port)+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return exitError{1, fmt.Errorf("healthcheck: %w", err)}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return exitError{1, fmt.Errorf("healthcheck: /healthz answered %d", resp.StatusCode)}
	}
	return nil
}
