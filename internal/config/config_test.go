package config

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

func envOf(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

func TestDefaults(t *testing.T) {
	c, err := Load(envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != ":8080" || c.AdminAddr != ":9090" || c.RateLimitRate != 100 || c.RateLimitBurst != 200 ||
		c.RateLimitOnError != "local" || c.RateLimitTimeout != 20*time.Millisecond || c.ShutdownDelay != 5*time.Second ||
		c.ShutdownTimeout != 20*time.Second || c.MaxBodyBytes != 1<<20 || c.BreakerTimeout != time.Second {
		t.Errorf("defaults = %+v", c)
	}
	// The server must outlive the 60 s upstream keep-alive of common proxies.
	if c.IdleTimeout <= 60*time.Second {
		t.Errorf("HTTP_IDLE_TIMEOUT default %s must exceed 60s", c.IdleTimeout)
	}
	if c.MaxHeaderBytes > 65536 {
		t.Errorf("HTTP_MAX_HEADER_BYTES default %d > 65536", c.MaxHeaderBytes)
	}
}

func TestBadValuesNameTheVariable(t *testing.T) {
	cases := []map[string]string{
		{"HTTP_READ_HEADER_TIMEOUT": "10s", "HTTP_READ_TIMEOUT": "5s"},
		{"BREAKER_TIMEOUT": "30s"}, // not shorter than HTTP_WRITE_TIMEOUT's 30s
		{"HTTP_WRITE_TIMEOUT": "500ms"},
		{"SHUTDOWN_DELAY": "-1s"},
		{"LOG_FLUSH_INTERVAL": "1ns"},
		{"HTTP_READ_HEADER_TIMEOUT": "5ns"},
		{"HTTP_IDLE_TIMEOUT": "999us"},
		{"SHUTDOWN_TIMEOUT": "20us"},
		{"LOG_FLUSH_INTERVAL": "-1s"},
		{"LOG_FLUSH_INTERVAL": "2m"},
		{"MAX_BODY_BYTES": "0"},
		{"TLS_CERT_FILE": "/x.pem"},
		{"LOG_FORMAT": "xml"},
		{"RATELIMIT_BURST": "0"},
		{"RATELIMIT_INSTANCES": "0"},
		{"DOWNSTREAM_URL": "ftp://x"},
		{"DOWNSTREAM_URL": "ftp://u:pw@x/"},
		{"DOWNSTREAM_URL": "http://u:pw@x/?q=1"},
		{"DOWNSTREAM_URL": "http://u:pw@x/#f"},
		{"DOWNSTREAM_URL": "http://u:pw@x/?"},
		{"DOWNSTREAM_URL": "http://u:pw@[::1"},
		{"RATELIMIT_REDIS_TIMEOUT": "20us"},
		{"BREAKER_TIMEOUT": "999us"},
		{"BREAKER_TIMEOUT": "29s", "RATELIMIT_REDIS_TIMEOUT": "1s"}, // together past the 30s write timeout
		{"BREAKER_ERROR_PERCENT": "101"},
		{"BREAKER_SLEEP_WINDOW": "0s"},
		{"HTTP_ADDR": ":1", "ADMIN_ADDR": ":1"},
		{"RATELIMIT_REDIS_TIMEOUT": "fast"},
		{"HTTP_ADDR": "8080"},
		{"HTTP_ADDR": "127.0.0.1:99999"},
		{"ADMIN_ADDR": "localhost:http"},
		{"RATELIMIT_KEY_HEADER": "X API Key"},
		{"RATELIMIT_KEY_HEADER": "X-Key:"},
		{"DOWNSTREAM_RETRY_BUDGET_RATIO": "NaN"},
		{"REDIS_URL": "redis://:pw@h:99999"},
		{"REDIS_URL": "redis://h:0/1"},
		{"REDIS_URL": "redis://h1:7001?addr=h2:70000"},
		{"REDIS_URL": "redis://h1:7001?addr=h2"},
		{"REDIS_URL": "rediss://h:port"},
		{"REDIS_URL": "http://:pw@h:6379"},
	}
	for _, kv := range cases {
		_, err := Load(envOf(kv))
		if err == nil {
			t.Errorf("%v accepted", kv)
			continue
		}
		named := false
		for k := range kv {
			named = named || strings.Contains(err.Error(), k)
		}
		if !named || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %q must be one line naming the variable", kv, err)
		}
		if strings.Contains(err.Error(), ":pw@") || strings.Contains(err.Error(), "u:pw") {
			t.Errorf("%v: %q shows the password", kv, err)
		}
	}
	// Valid Redis URLs: with or without a port (go-redis uses 6379), a
	// cluster's nodes.
	for _, u := range []string{"redis://redis", "redis://:pw@redis:6379/2", "rediss://r:6380", "redis://h1:7001?addr=h2:7002&addr=h3:7003"} {
		if _, err := Load(envOf(map[string]string{"REDIS_URL": u})); err != nil {
			t.Errorf("REDIS_URL=%s refused: %v", u, err)
		}
	}
}

// The start-up line shows the configuration: passwords in URLs are masked.
func TestLogValueMasksPasswords(t *testing.T) {
	c, err := Load(envOf(map[string]string{
		"REDIS_URL":      "redis://u:redispw@127.0.0.1:6379/0",
		"DOWNSTREAM_URL": "http://svc:downpw@items:8080/v1",
	}))
	if err != nil {
		t.Fatal(err)
	}
	lv := c.Shown()
	for k, v := range lv {
		if strings.Contains(v, "redispw") || strings.Contains(v, "downpw") {
			t.Errorf("%s=%q shows a password", k, v)
		}
	}
	if lv["DOWNSTREAM_URL"] != "http://svc:xxxxx@items:8080/v1" {
		t.Errorf("DOWNSTREAM_URL shown as %q", lv["DOWNSTREAM_URL"])
	}
	// And so the start-up line writes it: one object of every variable.
	var out bytes.Buffer
	slog.New(slog.NewJSONHandler(&out, nil)).Info("starting", slog.Any("config", c))
	var line struct{ Config map[string]string }
	if err := json.Unmarshal(out.Bytes(), &line); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if len(line.Config) != len(Vars()) || line.Config["DOWNSTREAM_URL"] != lv["DOWNSTREAM_URL"] || strings.Contains(out.String(), "pw") {
		t.Errorf("start-up line %s", out.String())
	}
}

// An idle timeout the common proxies outlive is allowed, with a warning;
// the default gets none.
func TestWarnings(t *testing.T) {
	c, err := Load(envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("defaults warn: %q", w)
	}
	for idle, shown := range map[string]string{"60s": "1m0s", "30s": "30s"} {
		c, err := Load(envOf(map[string]string{"HTTP_IDLE_TIMEOUT": idle}))
		if err != nil {
			t.Fatal(err)
		}
		if w := c.Warnings(); len(w) != 1 || !strings.HasPrefix(w[0], "HTTP_IDLE_TIMEOUT "+shown+" ") {
			t.Errorf("HTTP_IDLE_TIMEOUT=%s: warnings %q", idle, w)
		}
	}
	// An attempt timeout the breaker always cuts first.
	c, _ = Load(envOf(map[string]string{"DOWNSTREAM_ATTEMPT_TIMEOUT": "1s"}))
	if w := c.Warnings(); len(w) != 1 || !strings.HasPrefix(w[0], "DOWNSTREAM_ATTEMPT_TIMEOUT 1s is not shorter than BREAKER_TIMEOUT 1s") {
		t.Errorf("DOWNSTREAM_ATTEMPT_TIMEOUT=1s: warnings %q", w)
	}
	c, _ = Load(envOf(map[string]string{"HTTP_IDLE_TIMEOUT": "61s"}))
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("61s warns: %q", w)
	}
	// A Redis budget long enough to stall every request on a slow Redis
	// warns, only when Redis is used; past the write timeout it is refused.
	redis := map[string]string{"REDIS_URL": "redis://r:6379", "RATELIMIT_REDIS_TIMEOUT": "2s"}
	c, _ = Load(envOf(redis))
	if w := c.Warnings(); len(w) != 1 || !strings.HasPrefix(w[0], "RATELIMIT_REDIS_TIMEOUT 2s:") {
		t.Errorf("RATELIMIT_REDIS_TIMEOUT=2s: warnings %q", w)
	}
	for k, v := range map[string]string{"RATELIMIT_REDIS_TIMEOUT": "250ms", "REDIS_URL": "", "RATELIMIT_ENABLED": "false"} {
		env := map[string]string{"REDIS_URL": "redis://r:6379", "RATELIMIT_REDIS_TIMEOUT": "2s", k: v}
		c, _ = Load(envOf(env))
		if w := c.Warnings(); len(w) != 0 {
			t.Errorf("%v warns: %q", env, w)
		}
	}
	if _, err := Load(envOf(map[string]string{"RATELIMIT_REDIS_TIMEOUT": "1h"})); err == nil || !strings.Contains(err.Error(), "RATELIMIT_REDIS_TIMEOUT") {
		t.Errorf("RATELIMIT_REDIS_TIMEOUT=1h (past HTTP_WRITE_TIMEOUT): %v", err)
	}
}

// A whole number too large for its setting says so, rather than "want a
// whole number".
func TestOutOfRangeNumber(t *testing.T) {
	_, err := Load(envOf(map[string]string{"RATELIMIT_BURST": "99999999999999999999"}))
	if err == nil || err.Error() != `config: RATELIMIT_BURST="99999999999999999999": out of range` {
		t.Fatalf("error %v", err)
	}
}

// Addresses net.Listen takes are accepted, and so is a real header name.
func TestGoodValuesAccepted(t *testing.T) {
	for _, kv := range []map[string]string{
		{"HTTP_ADDR": ":8081"},
		{"HTTP_ADDR": "127.0.0.1:0", "ADMIN_ADDR": "127.0.0.1:0"},
		{"HTTP_ADDR": "[::1]:8081"},
		{"HTTP_ADDR": "localhost:8081"},
		{"RATELIMIT_KEY_HEADER": "X-API-Key"},
		{"LOG_FLUSH_INTERVAL": "0"},
		{"LOG_FLUSH_INTERVAL": "1ms"},
		{"LOG_FLUSH_INTERVAL": "1m"},
		{"LOG_FORMAT": "Text", "LOG_LEVEL": "WARN"}, // case, as for both in NewLogger
		{"LOG_FORMAT": "JSON"},
	} {
		if _, err := Load(envOf(kv)); err != nil {
			t.Errorf("%v: %v", kv, err)
		}
	}
}

func TestTrustedProxiesAndMasking(t *testing.T) {
	c, err := Load(envOf(map[string]string{"TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7,::1", "REDIS_URL": "redis://:s3cret@redis:6379/0"}))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := c.TrustedPrefixes()
	if len(p) != 3 || p[1].String() != "192.168.1.7/32" || p[2].String() != "::1/128" {
		t.Errorf("prefixes = %v", p)
	}
	if v := c.Shown()["REDIS_URL"]; strings.Contains(v, "s3cret") {
		t.Errorf("password not masked: %s", v)
	}
}

// The README's configuration table lists every variable `api -h` lists.
func TestReadmeListsEveryVariable(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range Vars() {
		if !strings.Contains(string(b), "| `"+v.Name+"` |") {
			t.Errorf("README.md configuration table lacks %s", v.Name)
		}
	}
}
