package observability_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/hardenedgo/ginservice/internal/observability"
	"github.com/hardenedgo/ginservice/internal/testkit/otlptest"
)

// TestServerSpanProtocolVersion: network.protocol.version as the HTTP
// semantic conventions spell it, "2" for HTTP/2 (not "2.0", which queries
// written for other instrumentations would miss) and "1.1" for HTTP/1.1.
func TestServerSpanProtocolVersion(t *testing.T) {
	ctx := context.Background()
	rc := otlptest.Start(t)
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL, "OTEL_TRACES_SAMPLER": "always_on"}
	tr, err := observability.SetupTracing(ctx, func(k string) string { return env[k] }, "v1")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(ctx)
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.Use(tr.Middleware())
	e.GET("/v", func(c *gin.Context) { c.String(http.StatusOK, c.Request.Proto) })
	srv := httptest.NewUnstartedServer(e)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()

	h1 := srv.Client().Transport.(*http.Transport).Clone()
	h1.Protocols = new(http.Protocols)
	h1.Protocols.SetHTTP1(true)
	h1.TLSClientConfig.NextProtos = []string{"http/1.1"}
	for _, c := range []*http.Client{srv.Client(), {Transport: h1}} {
		resp, err := c.Get(srv.URL + "/v")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := tr.ForceFlush(fctx); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, sp := range rc.Spans() {
		v, _ := attr(sp.GetAttributes(), "network.protocol.version")
		got = append(got, v.GetStringValue())
	}
	if len(got) != 2 || got[0] != "2" || got[1] != "1.1" {
		t.Fatalf("network.protocol.version of an HTTP/2 and an HTTP/1.1 request: %q, want [2 1.1]", got)
	}
}
