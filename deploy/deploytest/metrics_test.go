package deploytest

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// The prometheus module (promql/parser) is not a dependency of this module
// and is too large to add for a test, so metric names are taken from the
// expressions with a small tokenizer, and promtool (a real PromQL parser)
// checks the syntax of the same expressions in TestDashboardQueriesParse.

var (
	reString    = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	reMatchers  = regexp.MustCompile(`\{[^{}]*\}`)
	reRanges    = regexp.MustCompile(`\[[^\[\]]*\]`)
	reLabelList = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	reToken     = regexp.MustCompile(`[0-9][0-9A-Za-z_.]*|[A-Za-z_:][A-Za-z0-9_:]*`)
	promqlWords = map[string]bool{
		"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"by": true, "without": true, "on": true, "ignoring": true,
		"group_left": true, "group_right": true, "inf": true, "nan": true,
		"atan2": true, "Inf": true, "NaN": true,
	}
)

// metricNames returns the metric names a PromQL expression selects.
func metricNames(expr string) []string {
	s := reString.ReplaceAllString(expr, `""`)
	s = reMatchers.ReplaceAllString(s, "{}")
	s = reRanges.ReplaceAllString(s, "")
	for {
		next := reLabelList.ReplaceAllString(s, " ")
		if next == s {
			break
		}
		s = next
	}
	seen := map[string]bool{}
	for _, loc := range reToken.FindAllStringIndex(s, -1) {
		tok := s[loc[0]:loc[1]]
		if tok[0] >= '0' && tok[0] <= '9' || promqlWords[tok] {
			continue
		}
		// A name followed by "(" is a function or aggregation.
		if rest := strings.TrimLeft(s[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") {
			continue
		}
		// A modifier like "@ start()" is handled above; "offset 5m" leaves
		// only the number.
		seen[tok] = true
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestMetricNameExtraction(t *testing.T) {
	cases := []struct {
		expr string
		want []string
	}{
		{`up{job="api-metrics"} == 0`, []string{"up"}},
		{`sum by (namespace, job) (rate(http_server_requests_total{code=~"5.."}[5m])) / sum by (namespace, job) (rate(http_server_requests_total[5m])) > 0.01`,
			[]string{"http_server_requests_total"}},
		{`histogram_quantile(0.99, sum by (le, route) (rate(http_server_request_duration_seconds_bucket{route="/api/v1/items/:id", x='a{b}(c)'}[$__rate_interval])))`,
			[]string{"http_server_request_duration_seconds_bucket"}},
		{`a_total / on(pod) group_left(version) b_info offset 5m`, []string{"a_total", "b_info"}},
		{`sum(rate(x_total[5m:1m])) without (instance) > bool 1e-9 or vector(0)`, []string{"x_total"}},
		{`max by (pod) (increase(kube_pod_container_status_restarts_total{container="api"}[15m]))`, []string{"kube_pod_container_status_restarts_total"}},
		{"label_replace(foo, \"dst\", \"$1\", \"src\", \"(.*)\") and bar", []string{"bar", "foo"}},
	}
	for _, c := range cases {
		if got := metricNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%q) = %v, want %v", c.expr, got, c.want)
		}
	}
}

// documentedMetrics reads the metric names of docs/metrics.md (first column
// of its table; "..._on_close_total" continues the previous name).
func documentedMetrics(t *testing.T) (names map[string]bool, prefixes []string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	names = map[string]bool{}
	reCode := regexp.MustCompile("`([^`]+)`")
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first := strings.SplitN(line[1:], "|", 2)[0]
		prev := ""
		for _, m := range reCode.FindAllStringSubmatch(first, -1) {
			name := m[1]
			switch {
			case strings.HasSuffix(name, "_*"):
				prefixes = append(prefixes, strings.TrimSuffix(name, "*"))
				continue
			case strings.HasPrefix(name, "..."):
				suffix := strings.TrimPrefix(name, "...")
				seg := "_" + strings.SplitN(strings.TrimPrefix(suffix, "_"), "_", 2)[0] + "_"
				i := strings.Index(prev, seg)
				if i < 0 {
					t.Fatalf("docs/metrics.md: cannot expand %q after %q", name, prev)
				}
				name = prev[:i] + suffix
			}
			names[name] = true
			prev = name
		}
	}
	if len(names) < 10 {
		t.Fatalf("docs/metrics.md: only %d metric names found", len(names))
	}
	return names, prefixes
}

// allowedMetric: documented names (histograms with their _bucket/_sum/_count
// series), the go_/process_ collectors, kube-state-metrics (kube_), the
// kubelet's cAdvisor (container_) and Prometheus's own "up".
func allowedMetric(name string, documented map[string]bool, prefixes []string) bool {
	if documented[name] || name == "up" || strings.HasPrefix(name, "kube_") || strings.HasPrefix(name, "container_") {
		return true
	}
	for _, p := range prefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok && documented[base] {
			return true
		}
	}
	return false
}

func TestDocumentedMetricsParsing(t *testing.T) {
	names, prefixes := documentedMetrics(t)
	for _, n := range []string{"http_server_requests_total", "kernel_tcp_abort_on_close_total", "kernel_tcp_abort_on_timeout_total", "breaker_open", "service_build_info"} {
		if !names[n] {
			t.Errorf("%s not read from docs/metrics.md", n)
		}
	}
	if !slices.Contains(prefixes, "go_") || !slices.Contains(prefixes, "process_") {
		t.Errorf("prefixes %v, want go_ and process_", prefixes)
	}
	if allowedMetric("http_server_request_total", names, prefixes) {
		t.Error("a misspelt name is allowed")
	}
	if !allowedMetric("http_server_request_duration_seconds_bucket", names, prefixes) {
		t.Error("histogram buckets of a documented histogram are not allowed")
	}
}

// dashboardExprs returns every PromQL expression of the dashboard, by panel.
func dashboardExprs(t *testing.T) (exprs map[string]string, labelValues []string, dash map[string]any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "k8s", "base", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	exprs = map[string]string{}
	var walkPanels func(ps []any)
	walkPanels = func(ps []any) {
		for _, p := range ps {
			pm, _ := p.(map[string]any)
			title, _ := pm["title"].(string)
			targets, _ := pm["targets"].([]any)
			for _, tg := range targets {
				tm, _ := tg.(map[string]any)
				expr, _ := tm["expr"].(string)
				if expr == "" {
					t.Errorf("panel %q has a target without expr", title)
					continue
				}
				ref, _ := tm["refId"].(string)
				exprs[fmt.Sprintf("%s [%s]", title, ref)] = expr
			}
			if sub, ok := pm["panels"].([]any); ok {
				walkPanels(sub)
			}
		}
	}
	panels, _ := dash["panels"].([]any)
	walkPanels(panels)
	tpl, _ := dash["templating"].(map[string]any)
	vars, _ := tpl["list"].([]any)
	reLV := regexp.MustCompile(`^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)`)
	for _, v := range vars {
		vm, _ := v.(map[string]any)
		if def, ok := vm["definition"].(string); ok && def != "" {
			m := reLV.FindStringSubmatch(def)
			if m == nil {
				t.Errorf("template variable %v: unsupported query %q", vm["name"], def)
				continue
			}
			labelValues = append(labelValues, m[1])
		}
	}
	return exprs, labelValues, dash
}

func TestDashboardQueriesUseDocumentedMetrics(t *testing.T) {
	names, prefixes := documentedMetrics(t)
	exprs, lv, dash := dashboardExprs(t)
	if len(exprs) < 10 {
		t.Fatalf("only %d queries in the dashboard", len(exprs))
	}
	used := map[string]bool{}
	for where, e := range exprs {
		ms := metricNames(e)
		if len(ms) == 0 {
			t.Errorf("%s: no metric in %q", where, e)
		}
		for _, m := range ms {
			used[m] = true
			if !allowedMetric(m, names, prefixes) {
				t.Errorf("%s: metric %q is not in docs/metrics.md", where, m)
			}
		}
		if !strings.Contains(e, `namespace="$namespace"`) {
			t.Errorf("%s: query ignores the namespace variable: %s", where, e)
		}
	}
	for _, m := range lv {
		if !allowedMetric(m, names, prefixes) {
			t.Errorf("template variable uses undocumented metric %q", m)
		}
	}
	// The panels the issue asks for: QPS, p99, error rate, 429 rate,
	// breaker state, connections by state, kernel TCP counters; and CPU
	// throttling and run-queue wait, which tell a starved pod from slow code.
	for _, m := range []string{"http_server_requests_total", "http_server_request_duration_seconds_bucket", "breaker_open",
		"http_server_connections", "kernel_tcp_listen_overflows_total", "kernel_tcp_listen_drops_total", "ratelimit_fallback_active",
		"go_sched_latencies_seconds_bucket", "container_cpu_cfs_throttled_periods_total"} {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
	joined := strings.Join(slices.Collect(mapsValues(exprs)), "\n")
	for _, want := range []string{`code="429"`, `code=~"5.."`, `histogram_quantile(0.99`, `by (state)`} {
		if !strings.Contains(joined, want) {
			t.Errorf("no dashboard query contains %s", want)
		}
	}
	// Portable: the data source is a variable, the uid is fixed.
	if uid, _ := dash["uid"].(string); uid == "" {
		t.Error("dashboard has no uid")
	}
	raw, _ := json.Marshal(dash)
	if strings.Contains(string(raw), `"uid":"prometheus"`) || !strings.Contains(string(raw), `${datasource}`) {
		t.Error("panels must use the ${datasource} variable, not a fixed data source")
	}
	ids := map[float64]bool{}
	panels, _ := dash["panels"].([]any)
	for _, p := range panels {
		id, _ := p.(map[string]any)["id"].(float64)
		if ids[id] {
			t.Errorf("duplicate panel id %v", id)
		}
		ids[id] = true
	}
}

func mapsValues(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// grafanaVars turns the dashboard's variables into plain PromQL.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "${namespace}", "api", "$namespace", "api")

func TestDashboardQueriesParse(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	exprs, _, _ := dashboardExprs(t)
	// Each query becomes a recording rule: `promtool check rules` parses it
	// with Prometheus's own PromQL parser.
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range exprs {
			if !yield(k) {
				return
			}
		}
	})
	for i, k := range keys {
		e, _ := json.Marshal(grafanaVars.Replace(exprs[k]))
		fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %s\n", i, e)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "dashboard-rules.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, dir, promtool, "check", "rules", p); err != nil {
		t.Fatalf("dashboard queries do not parse: %v\n%s", err, out)
	}
}

// alertAndChaosQueries returns the PromQL of every alert and recording rule
// and of every chaos probe, by where it is.
func alertAndChaosQueries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, g := range baseRuleGroups(t) {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out["alert "+r.Alert] = r.Expr
			} else {
				out["record "+r.Record] = r.Expr
			}
		}
	}
	for _, e := range chaosEngines(t) {
		for _, x := range e.Spec.Experiments {
			for _, p := range x.Spec.Probe {
				if p.PromProbeInputs != nil {
					out["chaos "+e.Name+"/"+p.Name] = p.PromProbeInputs.Query
				}
			}
		}
	}
	return out
}

func TestAlertAndChaosQueriesUseDocumentedMetrics(t *testing.T) {
	names, prefixes := documentedMetrics(t)
	queries := alertAndChaosQueries(t)
	if len(queries) < 5 {
		t.Fatalf("only %d alert and chaos queries found", len(queries))
	}
	for where, expr := range queries {
		ms := metricNames(expr)
		if len(ms) == 0 {
			t.Errorf("%s: no metric in %q", where, expr)
		}
		for _, m := range ms {
			if !allowedMetric(m, names, prefixes) {
				t.Errorf("%s: metric %q is not in docs/metrics.md", where, m)
			}
		}
	}
}

// panelExprs returns the queries of the panel titled title, with the
// dashboard's variables replaced (plain PromQL).
func panelExprs(t *testing.T, title string) []string {
	t.Helper()
	exprs, _, _ := dashboardExprs(t)
	var out []string
	for _, k := range slices.Sorted(maps.Keys(exprs)) {
		if strings.HasPrefix(k, title+" [") {
			out = append(out, grafanaVars.Replace(exprs[k]))
		}
	}
	if len(out) == 0 {
		t.Fatalf("no panel %q", title)
	}
	return out
}

func TestDashboardShowsFailuresAndQuietTimes(t *testing.T) {
	// Evaluated by promtool on series of known values: the panels must show
	// what they are there for, not only parse.
	promtool := tool(t, "promtool", "prometheus")
	var b strings.Builder
	b.WriteString("rule_files: []\nevaluation_interval: 1m\ntests:\n")

	// Error rate: traffic and no 5xx yet is 0%, not an empty panel.
	errRate := panelExprs(t, "Error rate (5xx / all)")
	b.WriteString("  - name: no 5xx yet reads 0\n    interval: 1m\n    input_series:\n")
	b.WriteString("      - series: 'http_server_requests_total{namespace=\"api\",job=\"api-metrics\",pod=\"api-a\",route=\"/api/v1/ping\",code=\"200\"}'\n        values: '0+60x20'\n")
	b.WriteString("    promql_expr_test:\n")
	for _, e := range errRate {
		q, _ := json.Marshal(e)
		fmt.Fprintf(&b, "      - expr: %s\n        eval_time: 10m\n        exp_samples:\n          - labels: '{}'\n            value: 0\n", q)
	}

	// Effective sysctls: one pod tuned, one that kept the kernel defaults.
	// For every sysctl, some column of the table shows the untuned value.
	untuned := map[string]string{
		"net.core.somaxconn": "4096", "net.ipv4.tcp_max_syn_backlog": "1024", "net.ipv4.tcp_fin_timeout": "60",
		"net.ipv4.tcp_tw_reuse": "2", "net.ipv4.tcp_keepalive_time": "7200", "net.ipv4.tcp_keepalive_intvl": "75",
		"net.ipv4.tcp_keepalive_probes": "9",
	}
	b.WriteString("  - name: an untuned pod shows in the sysctl table\n    interval: 1m\n    input_series:\n")
	for _, name := range slices.Sorted(maps.Keys(recommendedSysctls)) {
		fmt.Fprintf(&b, "      - series: 'kernel_sysctl{namespace=\"api\",job=\"api-metrics\",pod=\"api-tuned\",name=\"%s\"}'\n        values: '%sx10'\n", name, recommendedSysctls[name])
		fmt.Fprintf(&b, "      - series: 'kernel_sysctl{namespace=\"api\",job=\"api-metrics\",pod=\"api-untuned\",name=\"%s\"}'\n        values: '%sx10'\n", name, untuned[name])
	}
	var shown []string
	for _, e := range panelExprs(t, "Effective sysctls") {
		shown = append(shown, fmt.Sprintf(`((%s) == on (name) kernel_sysctl{pod="api-untuned"})`, e))
	}
	q, _ := json.Marshal(fmt.Sprintf("count by (name) (%s)", strings.Join(shown, " or ")))
	fmt.Fprintf(&b, "    promql_expr_test:\n      - expr: %s\n        eval_time: 5m\n        exp_samples:\n", q)
	for _, name := range slices.Sorted(maps.Keys(recommendedSysctls)) {
		fmt.Fprintf(&b, "          - labels: '{name=\"%s\"}'\n            value: 1\n", name)
	}

	// Accept wait: 60 new connections a minute, 6 of them waited over
	// 100 ms (3 up to 250 ms, 3 up to 500 ms). The panel shows the share
	// over 100 ms (0.1) and the p99 wait (inside the 250-500 ms bucket:
	// 0.25 + (0.99*60 - 57) / 3 * 0.25 = 0.45 s).
	wait := panelExprs(t, "Accept wait: share of new connections that waited over 100 ms, and p99")
	if len(wait) != 2 {
		t.Fatalf("accept wait panel: %d queries, want the share and the p99", len(wait))
	}
	b.WriteString("  - name: accept wait share and p99\n    interval: 1m\n    input_series:\n")
	for _, bk := range []struct{ le, perMin string }{{"0.05", "50"}, {"0.1", "54"}, {"0.25", "57"}, {"0.5", "60"}, {"+Inf", "60"}} {
		fmt.Fprintf(&b, "      - series: 'http_server_accept_wait_seconds_bucket{namespace=\"api\",job=\"api-metrics\",pod=\"api-a\",le=\"%s\"}'\n        values: '0+%sx20'\n", bk.le, bk.perMin)
	}
	b.WriteString("      - series: 'http_server_accept_wait_seconds_count{namespace=\"api\",job=\"api-metrics\",pod=\"api-a\"}'\n        values: '0+60x20'\n")
	b.WriteString("    promql_expr_test:\n")
	for i, want := range []string{"0.1", "0.45"} {
		q, _ := json.Marshal("round(" + wait[i] + ", 0.001)") // promtool compares floats exactly
		fmt.Fprintf(&b, "      - expr: %s\n        eval_time: 10m\n        exp_samples:\n          - labels: '{pod=\"api-a\"}'\n            value: %s\n", q, want)
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard_test.yaml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, dir, promtool, "test", "rules", "dashboard_test.yaml")
	if err != nil || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s\n%s", err, out, b.String())
	}
}
