package deploytest

import (
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// protobufAccept asks /metrics for the protobuf exposition, the only one
// that carries native histograms (what a Prometheus that ingests them asks for).
const protobufAccept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"

// servedNativeHistograms runs the service, sends it one API request (so the
// per-route histograms have a series) and returns the histograms its
// /metrics serves in native form.
func servedNativeHistograms(t *testing.T) map[string]bool {
	t.Helper()
	bin := buildWithDockerfileLine(t)
	httpAddr, adminAddr := freePort(t), freePort(t)
	startService(t, bin, append(serviceFreeEnv(), "HTTP_ADDR="+httpAddr, "ADMIN_ADDR="+adminAddr,
		"SHUTDOWN_DELAY=0s", "SHUTDOWN_TIMEOUT=2s", "LOG_LEVEL=warn"), httpAddr)
	resp, err := http.Get("http://" + httpAddr + "/api/v1/ping")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	req, _ := http.NewRequest(http.MethodGet, "http://"+adminAddr+"/metrics", nil)
	req.Header.Set("Accept", protobufAccept)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	format := expfmt.ResponseFormat(resp.Header)
	if format.FormatType() != expfmt.TypeProtoDelim {
		t.Fatalf("/metrics answered %q to a protobuf scrape", resp.Header.Get("Content-Type"))
	}
	native := map[string]bool{}
	dec := expfmt.NewDecoder(resp.Body, format)
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding the protobuf scrape: %v", err)
		}
		if mf.GetType() != dto.MetricType_HISTOGRAM {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetHistogram().Schema != nil { // set only on native histograms
				native[mf.GetName()] = true
			}
		}
	}
	return native
}

// documentedNativeHistograms are the rows of docs/metrics.md whose type
// says "native".
func documentedNativeHistograms(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `([a-z_:]+)` \\| ([^|]*)\\|")
	out := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if m := row.FindStringSubmatch(line); m != nil && strings.Contains(m[2], "native") {
			out[m[1]] = true
		}
	}
	return out
}

// bucketQueries returns, for each histogram whose classic _bucket series an
// alert, the dashboard or a chaos probe queries, one place that does.
func bucketQueries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	note := func(where, expr string) {
		for _, m := range metricNames(expr) {
			if base, ok := strings.CutSuffix(m, "_bucket"); ok {
				out[base] = where
			}
		}
	}
	exprs, _, _ := dashboardExprs(t)
	for where, e := range exprs {
		note("dashboard panel "+where, e)
	}
	for where, e := range alertAndChaosQueries(t) {
		note(where, e)
	}
	return out
}

// A histogram served both classic and native loses its classic _bucket
// series in a Prometheus that ingests native histograms (Prometheus 3 with
// scrape_native_histograms, or 2.x with --enable-feature=native-histograms)
// unless the scrape job keeps them: the p99 alert and panels would go empty
// without an error. The ServiceMonitor keeps them.
func TestClassicBucketsKeptForTheQueriesThatUseThem(t *testing.T) {
	native := servedNativeHistograms(t)
	documented := documentedNativeHistograms(t)
	if !native["http_server_request_duration_seconds"] {
		t.Fatalf("http_server_request_duration_seconds is not served as a native histogram; served natively: %v", slices.Sorted(mapsKeys(native)))
	}
	for name := range native {
		if !documented[name] {
			t.Errorf("%s is served as a native histogram; docs/metrics.md does not say so", name)
		}
	}
	queried := bucketQueries(t)
	var affected []string
	for base, where := range queried {
		if native[base] || documented[base] {
			affected = append(affected, base+" ("+where+")")
		}
	}
	if len(affected) == 0 {
		t.Fatalf("no query reads the _bucket series of a native histogram; queried: %v", queried)
	}
	slices.Sort(affected)
	forEachOverlay(t, func(t *testing.T, a app) {
		sm := get[*ServiceMonitor](t, a.objs, "api")
		if sm.Spec.ScrapeClassicHistograms == nil || !*sm.Spec.ScrapeClassicHistograms {
			t.Errorf("ServiceMonitor does not set scrapeClassicHistograms: true, so a Prometheus that ingests native histograms drops the classic series that these read:\n  %s",
				strings.Join(affected, "\n  "))
		}
	})
}

func mapsKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
