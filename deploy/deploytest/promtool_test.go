package deploytest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// requiredAlerts are the alerts the issue asks for, by name.
var requiredAlerts = []string{
	"ApiHighErrorRate",             // error rate > 1% for 5m (the article's WeCom rule)
	"ApiHighLatencyP99",            // p99 latency
	"ApiCircuitBreakerOpen",        // breaker open
	"ApiRateLimiterFallbackActive", // limiter fallback active
	"ApiListenQueueOverflows",      // listen overflows rising
	"ApiPodRestarting",             // pod restarts
	"ApiTargetDown",                // a pod's scrape failing
	"ApiTargetMissing",             // no scrape target at all: every other alert is blind
}

// baseRuleGroups are the rule groups of the base PrometheusRule.
func baseRuleGroups(t *testing.T) []RuleGroup {
	t.Helper()
	return get[*PrometheusRule](t, kustomize(t, "deploy/k8s/base"), "api").Spec.Groups
}

// writeRules writes groups in promtool's rule file format.
func writeRules(t *testing.T, path string, groups []RuleGroup) {
	t.Helper()
	data, err := yaml.Marshal(map[string]any{"groups": groups})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// promtoolTest runs the unit tests of testdata/alerts_test.yaml against groups.
func promtoolTest(t *testing.T, promtool string, groups []RuleGroup) (string, error) {
	t.Helper()
	dir := t.TempDir()
	writeRules(t, filepath.Join(dir, "rules.yaml"), groups)
	tests, err := os.ReadFile(filepath.Join("testdata", "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts_test.yaml"), tests, 0o644); err != nil {
		t.Fatal(err)
	}
	return run(t, dir, promtool, "test", "rules", "alerts_test.yaml")
}

func TestAlertRulesShape(t *testing.T) {
	groups := baseRuleGroups(t)
	byName := map[string]Rule{}
	for _, g := range groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			byName[r.Alert] = r
			switch r.Labels["severity"] {
			case "critical", "warning":
			default:
				t.Errorf("%s: severity %q, want critical or warning (Alertmanager routes on it)", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: summary and description annotations required", r.Alert)
			}
		}
	}
	for _, name := range requiredAlerts {
		if _, ok := byName[name]; !ok {
			t.Errorf("alert %s missing", name)
		}
	}
	er := byName["ApiHighErrorRate"]
	if d, err := time.ParseDuration(er.For); err != nil || d != 5*time.Minute {
		t.Errorf("ApiHighErrorRate for %q, want 5m", er.For)
	}
	if !strings.Contains(er.Expr, "> 0.01") || !strings.Contains(er.Expr, `code=~"5.."`) {
		t.Errorf("ApiHighErrorRate expr must compare the 5xx ratio with 0.01: %s", er.Expr)
	}
	// deploy/README.md's alert table is what on-call reads first: every
	// alert has a row.
	readme, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for name := range byName {
		if !strings.Contains(string(readme), "| "+name+" |") {
			t.Errorf("deploy/README.md's alert table has no row for %s", name)
		}
	}
	// The overlays ship the base rules unchanged.
	for _, dir := range overlays {
		got := get[*PrometheusRule](t, kustomize(t, dir), "api").Spec.Groups
		if !reflect.DeepEqual(got, groups) {
			t.Errorf("%s changes the alert rules", dir)
		}
	}
}

func TestAlertRulesWithPromtool(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	groups := baseRuleGroups(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "rules.yaml")
	writeRules(t, p, groups)
	if out, err := run(t, dir, promtool, "check", "rules", p); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	out, err := promtoolTest(t, promtool, groups)
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules did not report success:\n%s", out)
	}
}

func TestAlertUnitTestsCatchWrongRules(t *testing.T) {
	// Controls: the same unit tests must fail against broken variants of
	// the error-rate rule, or they prove nothing.
	promtool := tool(t, "promtool", "prometheus")
	mutations := []struct {
		name   string
		mutate func(*Rule)
	}{
		{"threshold 3% (would not fire at 2%)", func(r *Rule) { r.Expr = strings.Replace(r.Expr, "> 0.01", "> 0.03", 1) }},
		{"threshold 0.1% (would fire at 0.5%)", func(r *Rule) { r.Expr = strings.Replace(r.Expr, "> 0.01", "> 0.001", 1) }},
		{"for 1m (fires before 5 minutes)", func(r *Rule) { r.For = "1m" }},
		{"4xx counted as errors", func(r *Rule) { r.Expr = strings.Replace(r.Expr, `code=~"5.."`, `code=~"[45].."`, 1) }},
	}
	for _, m := range mutations {
		t.Run(m.name, func(t *testing.T) {
			groups := baseRuleGroups(t)
			found := false
			for gi := range groups {
				for ri := range groups[gi].Rules {
					if groups[gi].Rules[ri].Alert == "ApiHighErrorRate" {
						before := groups[gi].Rules[ri]
						m.mutate(&groups[gi].Rules[ri])
						if reflect.DeepEqual(before, groups[gi].Rules[ri]) {
							t.Fatal("mutation did not change the rule")
						}
						found = true
					}
				}
			}
			if !found {
				t.Fatal("ApiHighErrorRate not found")
			}
			if out, err := promtoolTest(t, promtool, groups); err == nil {
				t.Fatalf("promtool test rules passed against a broken rule:\n%s", out)
			}
		})
	}
}
