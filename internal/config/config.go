// Package config is the service's one typed configuration, read from
// environment variables (12-factor), defaulted and validated at start.
package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caarlos0/env/v11"
	"golang.org/x/net/http/httpguts"

	"github.com/hardenedgo/ginservice/internal/ratelimit"
)

// Config holds every setting. The env tag names the variable, envDefault its
// default and help its meaning (printed by `api -h`).
type Config struct {
	// Listeners and http.Server tuning.
	HTTPAddr          string        `env:"HTTP_ADDR" envDefault:":8080" help:"public listener address"`
	AdminAddr         string        `env:"ADMIN_ADDR" envDefault:":9090" help:"admin listener: /metrics, /healthz (liveness), /debug/pprof/ (with PPROF_ENABLED), PUT /debug/faults"`
	ReadHeaderTimeout time.Duration `env:"HTTP_READ_HEADER_TIMEOUT" envDefault:"5s" help:"time to read request headers; slower clients are cut off"`
	ReadTimeout       time.Duration `env:"HTTP_READ_TIMEOUT" envDefault:"30s" help:"time to read a whole request, body included"`
	WriteTimeout      time.Duration `env:"HTTP_WRITE_TIMEOUT" envDefault:"30s" help:"time from the end of the request headers to the end of the response"`
	IdleTimeout       time.Duration `env:"HTTP_IDLE_TIMEOUT" envDefault:"75s" help:"keep-alive idle timeout; must outlive the proxy's upstream keep-alive (nginx/ingress-nginx 60s, AWS ALB 60s; GCP LB 600s: set 620s there)"`
	MaxHeaderBytes    int           `env:"HTTP_MAX_HEADER_BYTES" envDefault:"65536" help:"largest request line and header block, in bytes (8192 to 65536); larger gets 431"`
	MaxBodyBytes      int64         `env:"MAX_BODY_BYTES" envDefault:"1048576" help:"largest request body; larger gets 413"`
	TLSCertFile       string        `env:"TLS_CERT_FILE" help:"serve the public listener over TLS with this certificate (PEM); needs TLS_KEY_FILE. Renewed files (cert-manager) are picked up at the first handshake 10 s or more after the last look, no restart"`
	TLSKeyFile        string        `env:"TLS_KEY_FILE" help:"private key (PEM) for TLS_CERT_FILE"`
	TrustedProxies    []string      `env:"TRUSTED_PROXIES" envSeparator:"," help:"comma-separated CIDRs or IPs whose X-Forwarded-For is believed; empty: the client is the peer address"`

	// Lifecycle.
	ShutdownDelay   time.Duration `env:"SHUTDOWN_DELAY" envDefault:"5s" help:"after SIGTERM: /readyz fails and traffic is still served this long before the listeners close"`
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"20s" help:"how long in-flight requests may drain after the listeners close"`

	// Logs and admin.
	LogLevel     string `env:"LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	LogFormat    string `env:"LOG_FORMAT" envDefault:"json" help:"json, or text for local reading"`
	PprofEnabled bool   `env:"PPROF_ENABLED" envDefault:"false" help:"serve /debug/pprof/ on the admin listener"`
	// LogFlushInterval batches log writes; 0 writes every line at once.
	LogFlushInterval time.Duration `env:"LOG_FLUSH_INTERVAL" envDefault:"100ms" help:"logs are written in batches at least this often, 1ms to 1m (one write(2) per line costs ~6% CPU at full load); lines are dropped and counted (log_lines_dropped_total) rather than block requests once a write to stdout has not finished for 1s with the queue full (stdout stalled, or slower than the logs); 0: every line written at once by the request, which then waits on a stalled stdout"`

	// Rate limiting.
	RateLimitEnabled   bool          `env:"RATELIMIT_ENABLED" envDefault:"true" help:"false: no rate limiting on /api/v1 (a gateway in front limits instead; no RateLimit-* headers, no Redis)"`
	RedisURL           string        `env:"REDIS_URL" help:"redis://[:password@]host:port/db, or a cluster as redis://h1:p1?addr=h2:p2&addr=h3:p3; empty: in-memory limiter. Unreachable at start: the fallback decides until Redis answers; a db the server does not have: exit 2"`
	RateLimitRate      float64       `env:"RATELIMIT_RATE" envDefault:"100" help:"tokens per second per key"`
	RateLimitBurst     int           `env:"RATELIMIT_BURST" envDefault:"200" help:"bucket capacity per key"`
	RateLimitOnError   string        `env:"RATELIMIT_ON_REDIS_ERROR" envDefault:"local" help:"when Redis fails or is slow: local (in-memory bucket), allow or deny"`
	RateLimitInstances int           `env:"RATELIMIT_INSTANCES" envDefault:"1" help:"replicas sharing the limit; the local fallback admits RATE/INSTANCES per key"`
	RateLimitTimeout   time.Duration `env:"RATELIMIT_REDIS_TIMEOUT" envDefault:"20ms" help:"budget of one Redis decision before the fallback decides (shorter than HTTP_WRITE_TIMEOUT; over 250ms warns at start)"`
	RateLimitKeyHeader string        `env:"RATELIMIT_KEY_HEADER" help:"optional request header (e.g. X-API-Key) added to the client IP to form the limiter key; clients choose its value, so set it only behind a gateway that authenticates that header"`

	// The dependency behind /api/v1/items/:id.
	DownstreamURL string `env:"DOWNSTREAM_URL" help:"base URL of the items dependency (GET {url}/items/{id}); empty: the built-in simulated dependency, served on a loopback port and called through the same resilient client"`

	// Outbound client to DOWNSTREAM_URL (the rest keeps the tuned defaults of
	// resilience.DefaultClientConfig).
	DownstreamAttemptTimeout time.Duration `env:"DOWNSTREAM_ATTEMPT_TIMEOUT" envDefault:"400ms" help:"timeout of one outbound attempt, inside the breaker timeout"`
	DownstreamMaxAttempts    int           `env:"DOWNSTREAM_MAX_ATTEMPTS" envDefault:"3" help:"outbound attempts per call, first included (1 disables retries); only idempotent requests are retried"`
	DownstreamRetryBudget    float64       `env:"DOWNSTREAM_RETRY_BUDGET_RATIO" envDefault:"0.1" help:"retries allowed per request on average, so retries cannot multiply an outage"`
	DownstreamIdleTimeout    time.Duration `env:"DOWNSTREAM_IDLE_CONN_TIMEOUT" envDefault:"30s" help:"idle outbound connections are closed after this; keep it below the dependency's keep-alive timeout"`
	DownstreamMaxConns       int           `env:"DOWNSTREAM_MAX_CONNS_PER_HOST" envDefault:"256" help:"outbound connections per host (0: unlimited)"`

	// Circuit breaker (hystrix) around the dependency.
	BreakerTimeout       time.Duration `env:"BREAKER_TIMEOUT" envDefault:"1s" help:"command timeout; the work is cancelled and the fallback served (must be shorter than HTTP_WRITE_TIMEOUT)"`
	BreakerMaxConcurrent int           `env:"BREAKER_MAX_CONCURRENT" envDefault:"100" help:"bulkhead: concurrent calls to the dependency, 1 to 10000"`
	BreakerErrorPercent  int           `env:"BREAKER_ERROR_PERCENT" envDefault:"50" help:"error percentage that opens the circuit"`
	BreakerVolume        int           `env:"BREAKER_REQUEST_VOLUME" envDefault:"20" help:"minimum requests in the 10s window before the circuit may open"`
	BreakerSleepWindow   time.Duration `env:"BREAKER_SLEEP_WINDOW" envDefault:"5s" help:"open time before one probe is let through"`
}

// Load reads the configuration through getenv and validates it. The error is
// one line naming the variable at fault.
func Load(getenv func(string) string) (Config, error) {
	var cfg Config
	vars := Vars()
	m := make(map[string]string, len(vars))
	for _, v := range vars {
		if val := getenv(v.Name); val != "" {
			m[v.Name] = val
		}
	}
	if err := env.ParseWithOptions(&cfg, env.Options{Environment: m}); err != nil {
		return Config{}, explain(err, vars, m)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// explain turns the library's error (which names struct fields) into one
// line naming the environment variable and its bad value.
func explain(err error, vars []Var, m map[string]string) error {
	var agg env.AggregateError
	if errors.As(err, &agg) && len(agg.Errors) > 0 {
		err = agg.Errors[0]
	}
	var pe env.ParseError
	if errors.As(err, &pe) {
		for _, v := range vars {
			if v.field == pe.Name {
				if errors.Is(pe.Err, strconv.ErrRange) {
					return fmt.Errorf("config: %s=%q: out of range", v.Name, m[v.Name])
				}
				return fmt.Errorf("config: %s=%q: want %s", v.Name, m[v.Name], kind(v.typ))
			}
		}
	}
	return fmt.Errorf("config: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
}

func kind(t reflect.Type) string {
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		return "a duration in Go syntax such as 250ms or 5s"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.Float64:
		return "a number"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		return "a whole number"
	}
	return "a " + t.String()
}

func bad(name string, format string, args ...any) error {
	return fmt.Errorf("config: %s: %s", name, fmt.Sprintf(format, args...))
}

// Validate checks ranges and relations between settings.
func (c Config) Validate() error {
	// The server's timeouts and the shutdown budget under a millisecond are
	// a unit typo ("5ns" for "5s"): every request would time out, or
	// shutdown would cut every connection.
	positive := []struct {
		name string
		d    time.Duration
		min  time.Duration
	}{
		{"HTTP_READ_HEADER_TIMEOUT", c.ReadHeaderTimeout, time.Millisecond},
		{"HTTP_READ_TIMEOUT", c.ReadTimeout, time.Millisecond},
		{"HTTP_WRITE_TIMEOUT", c.WriteTimeout, time.Millisecond},
		{"HTTP_IDLE_TIMEOUT", c.IdleTimeout, time.Millisecond},
		{"SHUTDOWN_TIMEOUT", c.ShutdownTimeout, time.Millisecond},
		// Under a millisecond every Redis decision or dependency call runs
		// out of time: the limiter stays on its fallback, every item is
		// degraded (20us for 20ms is a unit typo).
		{"RATELIMIT_REDIS_TIMEOUT", c.RateLimitTimeout, time.Millisecond},
		{"BREAKER_TIMEOUT", c.BreakerTimeout, time.Millisecond},
		{"BREAKER_SLEEP_WINDOW", c.BreakerSleepWindow, 1},
	}
	for _, p := range positive {
		switch {
		case p.d <= 0:
			return bad(p.name, "must be > 0, got %s", p.d)
		case p.d < p.min:
			return bad(p.name, "must be at least %s, got %s", p.min, p.d)
		}
	}
	// 0 or 1ms to 1m: a ticker of 1ns keeps a core busy flushing nothing,
	// and past a minute a quiet service's lines would wait that long (and
	// be lost with the process).
	if c.LogFlushInterval != 0 && (c.LogFlushInterval < time.Millisecond || c.LogFlushInterval > time.Minute) {
		return bad("LOG_FLUSH_INTERVAL", "must be 0 or within [1ms, 1m], got %s", c.LogFlushInterval)
	}
	if c.ShutdownDelay < 0 {
		return bad("SHUTDOWN_DELAY", "must be >= 0, got %s", c.ShutdownDelay)
	}
	if c.ReadHeaderTimeout > c.ReadTimeout {
		return bad("HTTP_READ_HEADER_TIMEOUT", "%s is longer than HTTP_READ_TIMEOUT %s", c.ReadHeaderTimeout, c.ReadTimeout)
	}
	if c.BreakerTimeout >= c.WriteTimeout {
		// The handler would answer after the write deadline: the client
		// gets a closed connection instead of the fallback.
		return bad("BREAKER_TIMEOUT", "%s must be shorter than HTTP_WRITE_TIMEOUT %s, or a dependency call that runs into it answers after the write deadline (the client sees EOF, not the fallback)", c.BreakerTimeout, c.WriteTimeout)
	}
	if c.RateLimitTimeout >= c.WriteTimeout {
		return bad("RATELIMIT_REDIS_TIMEOUT", "%s must be shorter than HTTP_WRITE_TIMEOUT %s: it is how long a request may wait on a slow Redis before the fallback decides", c.RateLimitTimeout, c.WriteTimeout)
	}
	if c.RateLimitEnabled && c.RateLimitTimeout+c.BreakerTimeout >= c.WriteTimeout {
		// An item request may wait for both, one after the other.
		return bad("BREAKER_TIMEOUT", "%s plus RATELIMIT_REDIS_TIMEOUT %s must be shorter than HTTP_WRITE_TIMEOUT %s: an item request can wait on a slow Redis and then on the dependency, and would answer after the write deadline", c.BreakerTimeout, c.RateLimitTimeout, c.WriteTimeout)
	}
	if err := checkListenAddr("HTTP_ADDR", c.HTTPAddr); err != nil {
		return err
	}
	if err := checkListenAddr("ADMIN_ADDR", c.AdminAddr); err != nil {
		return err
	}
	if c.HTTPAddr == c.AdminAddr && !strings.HasSuffix(c.HTTPAddr, ":0") {
		return bad("ADMIN_ADDR", "must differ from HTTP_ADDR (%s)", c.HTTPAddr)
	}
	if c.MaxHeaderBytes < 8192 || c.MaxHeaderBytes > 65536 {
		return bad("HTTP_MAX_HEADER_BYTES", "must be within [8192, 65536], got %d", c.MaxHeaderBytes)
	}
	if c.MaxBodyBytes < 1 {
		return bad("MAX_BODY_BYTES", "must be >= 1, got %d", c.MaxBodyBytes)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return bad("TLS_CERT_FILE", "TLS_CERT_FILE and TLS_KEY_FILE must be set together")
	}
	if _, err := c.TrustedPrefixes(); err != nil {
		return err
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		return bad("LOG_LEVEL", "want debug, info, warn or error, got %q", c.LogLevel)
	}
	switch strings.ToLower(c.LogFormat) {
	case "json", "text":
	default:
		return bad("LOG_FORMAT", "want json or text, got %q", c.LogFormat)
	}
	if c.RedisURL != "" {
		// The limiter's own parser: every node's port (the URL's own and a
		// cluster's addr= parameters) is checked, since go-redis accepts
		// redis://h:99999 and would only fail to dial, leaving the limiter
		// on its fallback for good.
		if err := ratelimit.CheckRedisURL(c.RedisURL); err != nil {
			return bad("REDIS_URL", "%v", err)
		}
	}
	if c.RateLimitRate <= 0 {
		return bad("RATELIMIT_RATE", "must be > 0, got %v", c.RateLimitRate)
	}
	if c.RateLimitBurst < 1 {
		return bad("RATELIMIT_BURST", "must be >= 1, got %d", c.RateLimitBurst)
	}
	switch c.RateLimitOnError {
	case "local", "allow", "deny":
	default:
		return bad("RATELIMIT_ON_REDIS_ERROR", "want local, allow or deny, got %q", c.RateLimitOnError)
	}
	if c.RateLimitInstances < 1 {
		return bad("RATELIMIT_INSTANCES", "must be >= 1, got %d", c.RateLimitInstances)
	}
	if c.RateLimitKeyHeader != "" && !httpguts.ValidHeaderFieldName(c.RateLimitKeyHeader) {
		// No request can carry such a header: the setting would silently
		// do nothing.
		return bad("RATELIMIT_KEY_HEADER", "%q is not a header name", c.RateLimitKeyHeader)
	}
	if c.DownstreamURL != "" {
		// The URL may carry a password (sent as basic auth): errors show it
		// masked, like the start-up line.
		u, err := url.Parse(c.DownstreamURL)
		switch {
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			return bad("DOWNSTREAM_URL", "want an absolute http(s) URL, got %q", MaskURL(c.DownstreamURL))
		case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
			return bad("DOWNSTREAM_URL", "must not have a query or fragment (item paths are appended to it), got %q", MaskURL(c.DownstreamURL))
		}
	}
	if c.DownstreamAttemptTimeout <= 0 {
		return bad("DOWNSTREAM_ATTEMPT_TIMEOUT", "must be > 0, got %s", c.DownstreamAttemptTimeout)
	}
	if c.DownstreamMaxAttempts < 1 || c.DownstreamMaxAttempts > 10 {
		return bad("DOWNSTREAM_MAX_ATTEMPTS", "must be within [1, 10], got %d", c.DownstreamMaxAttempts)
	}
	if !(c.DownstreamRetryBudget >= 0 && c.DownstreamRetryBudget <= 1) { // NaN too
		return bad("DOWNSTREAM_RETRY_BUDGET_RATIO", "must be within [0, 1], got %v", c.DownstreamRetryBudget)
	}
	if c.DownstreamIdleTimeout <= 0 {
		return bad("DOWNSTREAM_IDLE_CONN_TIMEOUT", "must be > 0, got %s", c.DownstreamIdleTimeout)
	}
	if c.DownstreamMaxConns < 0 {
		return bad("DOWNSTREAM_MAX_CONNS_PER_HOST", "must be >= 0, got %d", c.DownstreamMaxConns)
	}
	if c.BreakerMaxConcurrent < 1 {
		return bad("BREAKER_MAX_CONCURRENT", "must be >= 1, got %d", c.BreakerMaxConcurrent)
	}
	if c.BreakerErrorPercent < 1 || c.BreakerErrorPercent > 100 {
		return bad("BREAKER_ERROR_PERCENT", "must be within [1, 100], got %d", c.BreakerErrorPercent)
	}
	if c.BreakerVolume < 1 {
		return bad("BREAKER_REQUEST_VOLUME", "must be >= 1, got %d", c.BreakerVolume)
	}
	return nil
}

// checkListenAddr accepts host:port with a port number (0 for any free
// one); the host may be empty (all interfaces). Service names such as
// :http are refused: the healthcheck subcommand builds a URL from the port.
func checkListenAddr(name, addr string) error {
	if addr == "" {
		return bad(name, "must not be empty")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return bad(name, "want host:port such as :8080 or 127.0.0.1:8080, got %q", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return bad(name, "want a port number from 0 to 65535 in %q", addr)
	}
	return nil
}

// proxyKeepAlive is the upstream keep-alive timeout of the common proxies
// (nginx and ingress-nginx 60s, AWS ALB 60s by default).
const proxyKeepAlive = 60 * time.Second

// slowRedisBudget is the RATELIMIT_REDIS_TIMEOUT above which the start-up
// log warns.
const slowRedisBudget = 250 * time.Millisecond

// Warnings are settings that are valid but likely to hurt, one line each,
// naming the variable, for the start-up log.
func (c Config) Warnings() []string {
	var w []string
	if c.RateLimitEnabled && c.RedisURL != "" && c.RateLimitTimeout > slowRedisBudget {
		w = append(w, fmt.Sprintf("RATELIMIT_REDIS_TIMEOUT %s: while Redis is slow (not down) every rate-limited request waits up to this long before the fallback decides; "+
			"a Redis decision takes about a millisecond, the default budget is 20ms", c.RateLimitTimeout))
	}
	if c.DownstreamAttemptTimeout >= c.BreakerTimeout {
		w = append(w, fmt.Sprintf("DOWNSTREAM_ATTEMPT_TIMEOUT %s is not shorter than BREAKER_TIMEOUT %s: an attempt that times out is never retried, the breaker gives up first", c.DownstreamAttemptTimeout, c.BreakerTimeout))
	}
	if c.IdleTimeout > 0 && c.IdleTimeout <= proxyKeepAlive {
		w = append(w, fmt.Sprintf("HTTP_IDLE_TIMEOUT %s does not outlive the %s upstream keep-alive of nginx, ingress-nginx and AWS ALB: "+
			"such a proxy can send a request on a connection this server has just closed, and its client gets a 502 or EOF", c.IdleTimeout, proxyKeepAlive))
	}
	return w
}

// TrustedPrefixes parses TRUSTED_PROXIES; a bare IP is a single-address prefix.
func (c Config) TrustedPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range c.TrustedProxies {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, bad("TRUSTED_PROXIES", "%q is neither a CIDR nor an IP address", s)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// Shown is every setting by variable name as the start-up log line shows
// it: passwords in URLs masked.
func (c Config) Shown() map[string]string {
	out := map[string]string{}
	v := reflect.ValueOf(c)
	for _, f := range Vars() {
		val := fmt.Sprint(v.FieldByName(f.field).Interface())
		if (f.Name == "REDIS_URL" || f.Name == "DOWNSTREAM_URL") && val != "" {
			val = MaskURL(val)
		}
		out[f.Name] = val
	}
	return out
}

// LogValue makes the configuration one group of attributes, sorted by
// variable name: an object in JSON, config.NAME=value in text.
func (c Config) LogValue() slog.Value {
	shown := c.Shown()
	names := slices.Sorted(maps.Keys(shown))
	attrs := make([]slog.Attr, 0, len(names))
	for _, n := range names {
		attrs = append(attrs, slog.String(n, shown[n]))
	}
	return slog.GroupValue(attrs...)
}

// MaskURL hides the password of a URL.
func MaskURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparseable)"
	}
	return u.Redacted()
}

// Var describes one environment variable.
type Var struct {
	Name    string
	Default string
	Help    string
	field   string
	typ     reflect.Type
}

// Vars lists every variable in declaration order.
func Vars() []Var {
	t := reflect.TypeOf(Config{})
	out := make([]Var, 0, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Tag.Get("env")
		if name == "" {
			continue
		}
		out = append(out, Var{Name: name, Default: f.Tag.Get("envDefault"), Help: f.Tag.Get("help"), field: f.Name, typ: f.Type})
	}
	return out
}

// Usage writes the `api -h` text: every variable, its default and meaning.
func Usage(w io.Writer, prog string) {
	fmt.Fprintf(w, "Usage: %s [healthcheck | version]\n\n", prog)
	fmt.Fprintln(w, "Configured by environment variables (durations in Go syntax: 250ms, 5s):")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tMEANING")
	for _, v := range Vars() {
		d := v.Default
		if d == "" {
			d = "(empty)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Name, d, v.Help)
	}
	for _, v := range otelVars {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v[0], v[1], v[2])
	}
	_ = tw.Flush()
}

// otelVars are the OpenTelemetry variables the service reads (the SDK reads
// some of them again itself). Each is checked at start whether tracing
// exports or not: a bad value exits like any other.
var otelVars = [][3]string{
	{"OTEL_EXPORTER_OTLP_ENDPOINT", "(empty)", "OTLP endpoint (e.g. http://jaeger:4318); tracing is off unless this or OTEL_TRACES_EXPORTER=otlp is set"},
	{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "http/protobuf, http/json or grpc"},
	{"OTEL_TRACES_EXPORTER", "(empty)", "otlp to enable tracing (without an endpoint: http://localhost:4318, or http://localhost:4317 for grpc), none to disable it"},
	{"OTEL_SERVICE_NAME", "api", "service.name of the traces (else a service.name in OTEL_RESOURCE_ATTRIBUTES)"},
	{"OTEL_TRACES_SAMPLER", "parentbased_traceidratio", "sampler; with OTEL_TRACES_SAMPLER_ARG (default 0.01)"},
	{"OTEL_PROPAGATORS", "tracecontext,baggage,jaeger", "incoming/outgoing trace headers; none for neither, on its own"},
	{"OTEL_RESOURCE_ATTRIBUTES", "(empty)", "extra resource attributes, k=v,k2=v2"},
	{"OTEL_TRACES_SAMPLER_ARG", "0.01", "sampling ratio of the ratio samplers, 0 to 1"},
	{"OTEL_SDK_DISABLED", "false", "true: no tracing at all, not even continuing callers' traces"},
	{"OTEL_EXPORTER_OTLP_HEADERS", "(empty)", "headers of the export requests, k=v,k2=v2 (e.g. an API key)"},
	{"OTEL_EXPORTER_OTLP_TIMEOUT", "10000", "export timeout in ms, 1 to 3600000"},
	{"OTEL_EXPORTER_OTLP_COMPRESSION", "(empty)", "gzip or none"},
	{"OTEL_EXPORTER_OTLP_INSECURE", "false", "checked, no effect: the endpoint's scheme decides (http: plain, https: TLS), as the specification has it for endpoints with a scheme"},
	{"OTEL_EXPORTER_OTLP_CERTIFICATE", "(empty)", "PEM file of the CA that signed the collector's certificate (default: the system roots)"},
	{"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "(empty)", "PEM client certificate for mutual TLS, with OTEL_EXPORTER_OTLP_CLIENT_KEY"},
	{"OTEL_EXPORTER_OTLP_CLIENT_KEY", "(empty)", "PEM key of the client certificate"},
	{"OTEL_EXPORTER_OTLP_TRACES_*", "(empty)", "the traces-only form of each OTEL_EXPORTER_OTLP_* above (ENDPOINT, PROTOCOL, HEADERS, TIMEOUT, COMPRESSION, INSECURE, CERTIFICATE, CLIENT_CERTIFICATE, CLIENT_KEY); wins over it"},
	{"OTEL_BSP_SCHEDULE_DELAY", "5000", "ms between span batches, 1 to 3600000"},
	{"OTEL_BSP_EXPORT_TIMEOUT", "30000", "ms one batch export may take, 1 to 3600000"},
	{"OTEL_BSP_MAX_QUEUE_SIZE", "2048", "spans queued for export (at most 1048576); more are dropped"},
	{"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512", "spans per export request, at most the queue size"},
	{"OTEL_*_LIMIT", "SDK defaults", "the SDK's span limits (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, OTEL_SPAN_EVENT_COUNT_LIMIT, OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, ...): integers, negative for no limit"},
}
