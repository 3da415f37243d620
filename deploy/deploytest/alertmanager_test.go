package deploytest

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func alertmanagerConfig(t *testing.T) string {
	return filepath.Join(repoRoot(t), "deploy", "alertmanager", "alertmanager.yaml")
}

func TestAlertmanagerConfigIsValid(t *testing.T) {
	amtool := tool(t, "amtool", "prometheus-alertmanager")
	cfg := alertmanagerConfig(t)
	// check-config loads the file strictly (unknown fields fail) and parses
	// the templates it names.
	out, err := run(t, filepath.Dir(cfg), amtool, "check-config", cfg)
	if err != nil || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("amtool check-config: %v\n%s", err, out)
	}
	if !strings.Contains(out, "1 templates") {
		t.Errorf("the WeCom template was not loaded:\n%s", out)
	}
}

// routeOf asks amtool which receiver a label set reaches.
func routeOf(t *testing.T, amtool string, labels map[string]string) string {
	t.Helper()
	args := []string{"config", "routes", "test", "--config.file=" + alertmanagerConfig(t)}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, k+"="+labels[k])
	}
	out, err := run(t, t.TempDir(), amtool, args...)
	if err != nil {
		t.Fatalf("amtool %v: %v\n%s", args, err, out)
	}
	// The receiver is the last line (warnings about --alertmanager.url come first).
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func TestEveryAlertRoutesToWeCom(t *testing.T) {
	amtool := tool(t, "amtool", "prometheus-alertmanager")
	n := 0
	for _, g := range baseRuleGroups(t) {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			labels := map[string]string{"alertname": r.Alert, "namespace": "api", "job": "api-metrics"}
			for k, v := range r.Labels {
				labels[k] = v
			}
			if got := routeOf(t, amtool, labels); got != "wecom-oncall" {
				t.Errorf("%s (severity %s) routes to %q, want wecom-oncall", r.Alert, r.Labels["severity"], got)
			}
			n++
		}
	}
	if n == 0 {
		t.Fatal("no alerts")
	}
	// Control: an alert of somebody else without a known severity does not page.
	if got := routeOf(t, amtool, map[string]string{"alertname": "Other", "severity": "info"}); got == "wecom-oncall" {
		t.Error("an info alert routes to WeCom: the route matches everything")
	}
}

func TestDevAlertsDoNotPage(t *testing.T) {
	// The dev overlay's namespace is where the chaos experiments fail pods,
	// add latency and burn CPU on purpose: none of its alerts pages.
	amtool := tool(t, "amtool", "prometheus-alertmanager")
	dev := loadApp(t, "deploy/k8s/overlays/dev").namespace
	prod := loadApp(t, "deploy/k8s/overlays/prod").namespace
	n := 0
	for _, g := range baseRuleGroups(t) {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			for _, ns := range []string{dev, prod} {
				labels := map[string]string{"alertname": r.Alert, "namespace": ns, "job": "api-metrics"}
				for k, v := range r.Labels {
					labels[k] = v
				}
				got := routeOf(t, amtool, labels)
				switch {
				case ns == dev && got == "wecom-oncall":
					t.Errorf("%s (severity %s) in the dev namespace %s pages wecom-oncall", r.Alert, r.Labels["severity"], ns)
				case ns == prod && got != "wecom-oncall":
					t.Errorf("%s (severity %s) in the prod namespace %s routes to %q, want wecom-oncall", r.Alert, r.Labels["severity"], ns, got)
				}
			}
			n++
		}
	}
	if n == 0 {
		t.Fatal("no alerts")
	}
}

func TestWeComReceiver(t *testing.T) {
	data, err := os.ReadFile(alertmanagerConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Global    map[string]any `json:"global"`
		Receivers []struct {
			Name          string           `json:"name"`
			WechatConfigs []map[string]any `json:"wechat_configs"`
		} `json:"receivers"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	var wecom []map[string]any
	for _, r := range cfg.Receivers {
		if r.Name == "wecom-oncall" {
			wecom = r.WechatConfigs
		}
	}
	if len(wecom) != 1 {
		t.Fatalf("receiver wecom-oncall has %d wechat_configs, want 1", len(wecom))
	}
	w := wecom[0]
	if w["send_resolved"] != true || w["agent_id"] == nil || (w["to_party"] == nil && w["to_user"] == nil && w["to_tag"] == nil) {
		t.Errorf("wechat_config %v: needs send_resolved, agent_id and a recipient", w)
	}
	// No real credential is committed: placeholders only.
	for _, k := range []string{"wechat_api_secret", "wechat_api_corp_id"} {
		if v, _ := cfg.Global[k].(string); !strings.HasPrefix(v, "CHANGE-ME") {
			t.Errorf("global.%s = %q: keep a CHANGE-ME placeholder in the repository", k, v)
		}
	}
	if _, ok := w["api_secret"]; ok {
		t.Error("api_secret in the receiver: keep the placeholder in global only")
	}
}

func TestWeComTemplateRenders(t *testing.T) {
	amtool := tool(t, "amtool", "prometheus-alertmanager")
	tmpl := filepath.Join(repoRoot(t), "deploy", "alertmanager", "wecom.tmpl")
	out, err := run(t, t.TempDir(), amtool, "template", "render", "--template.glob="+tmpl, `--template.text={{ template "wecom.api.message" . }}`)
	if err != nil {
		t.Fatalf("amtool template render: %v\n%s", err, out)
	}
	if !strings.Contains(out, "RESOLVED") && !strings.Contains(out, "FIRING") {
		t.Errorf("rendered message has no status:\n%s", out)
	}
	// WeCom rejects markdown messages over 4096 bytes.
	if len(out) > 4096 {
		t.Errorf("rendered message is %d bytes", len(out))
	}
}
