package deploytest

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// chaosEngines decodes every ChaosEngine file of deploy/chaos strictly.
func chaosEngines(t *testing.T) []*ChaosEngine {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "deploy", "chaos", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out []*ChaosEngine
	for _, f := range files {
		base := filepath.Base(f)
		if base == "kustomization.yaml" || base == "rbac.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := decode(data)
		if err != nil {
			t.Fatalf("%s does not decode strictly: %v", base, err)
		}
		e, ok := obj.(*ChaosEngine)
		if !ok {
			t.Fatalf("%s: %T, want a ChaosEngine", base, obj)
		}
		out = append(out, e)
	}
	return out
}

func envOf(e *ChaosEngine, i int) map[string]string {
	m := map[string]string{}
	for _, v := range e.Spec.Experiments[i].Spec.Components.Env {
		m[v.Name] = v.Value
	}
	return m
}

func TestChaosExperiments(t *testing.T) {
	engines := chaosEngines(t)
	rbac := kustomize(t, "deploy/chaos")
	dev := loadApp(t, "deploy/k8s/overlays/dev")
	rb := get[*rbacv1.RoleBinding](t, rbac, "api-chaos")
	sa := get[*corev1.ServiceAccount](t, rbac, rb.Subjects[0].Name)

	want := []string{"pod-cpu-hog", "pod-delete", "pod-network-latency"}
	var got []string
	for _, e := range engines {
		if len(e.Spec.Experiments) != 1 {
			t.Errorf("%s: one experiment per engine (apply them one at a time)", e.Name)
			continue
		}
		x := e.Spec.Experiments[0]
		got = append(got, x.Name)
		env := envOf(e, 0)

		// The engine targets the dev overlay's api pods, in its namespace.
		if e.Namespace != dev.namespace || e.Spec.Appinfo.Appns != dev.namespace {
			t.Errorf("%s: namespace %q / appns %q, want the dev overlay's %q", e.Name, e.Namespace, e.Spec.Appinfo.Appns, dev.namespace)
		}
		sel, err := labels.Parse(e.Spec.Appinfo.Applabel)
		if err != nil || !sel.Matches(dev.podLabels) {
			t.Errorf("%s: applabel %q does not select the api pods", e.Name, e.Spec.Appinfo.Applabel)
		}
		if e.Spec.Appinfo.AppKind != "deployment" {
			t.Errorf("%s: appkind %q", e.Name, e.Spec.Appinfo.AppKind)
		}
		if e.Spec.ChaosServiceAccount != sa.Name || sa.Namespace != dev.namespace {
			t.Errorf("%s: runs as %q in %q; deploy/chaos creates %q in %q", e.Name, e.Spec.ChaosServiceAccount, e.Namespace, sa.Name, sa.Namespace)
		}
		if e.Spec.EngineState != "active" || e.Spec.JobCleanUpPolicy != "delete" {
			t.Errorf("%s: engineState %q jobCleanUpPolicy %q", e.Name, e.Spec.EngineState, e.Spec.JobCleanUpPolicy)
		}
		if d, err := time.ParseDuration(env["TOTAL_CHAOS_DURATION"] + "s"); err != nil || d < 30*time.Second || d > 5*time.Minute {
			t.Errorf("%s: TOTAL_CHAOS_DURATION %q", e.Name, env["TOTAL_CHAOS_DURATION"])
		}
		if tc, ok := env["TARGET_CONTAINER"]; ok && tc != dev.container.Name {
			t.Errorf("%s: TARGET_CONTAINER %q", e.Name, tc)
		}

		// Every experiment proves something: a continuous HTTP probe on the
		// public API, plus a Prometheus probe.
		var http, prom bool
		for _, p := range x.Spec.Probe {
			if p.RunProperties.ProbeTimeout == "" || p.RunProperties.Interval == "" {
				t.Errorf("%s/%s: probeTimeout and interval required", e.Name, p.Name)
			}
			for _, d := range []string{p.RunProperties.ProbeTimeout, p.RunProperties.Interval} {
				if _, err := time.ParseDuration(d); err != nil {
					t.Errorf("%s/%s: %q is not a duration (Litmus 3 wants units)", e.Name, p.Name, d)
				}
			}
			switch p.Type {
			case "httpProbe":
				in := p.HTTPProbeInputs
				if in == nil || in.Method.Get == nil || in.Method.Get.ResponseCode != "200" || in.Method.Get.Criteria != "==" {
					t.Errorf("%s/%s: want GET == 200", e.Name, p.Name)
					continue
				}
				if !strings.HasPrefix(in.URL, "http://api/") || p.Mode != "Continuous" {
					t.Errorf("%s/%s: want a Continuous probe of the api Service, got %s %s", e.Name, p.Name, p.Mode, in.URL)
				}
				http = true
			case "promProbe":
				in := p.PromProbeInputs
				if in == nil || in.Query == "" || in.Comparator.Criteria == "" || in.Comparator.Value == "" {
					t.Errorf("%s/%s: incomplete promProbe", e.Name, p.Name)
					continue
				}
				if !strings.Contains(in.Query, `namespace="`+dev.namespace+`"`) {
					t.Errorf("%s/%s: query does not filter the target namespace: %s", e.Name, p.Name, in.Query)
				}
				prom = true
			default:
				t.Errorf("%s/%s: probe type %q", e.Name, p.Name, p.Type)
			}
		}
		if !http || !prom {
			t.Errorf("%s: needs an httpProbe and a promProbe (http %v, prom %v)", e.Name, http, prom)
		}

		switch x.Name {
		case "pod-delete":
			// Graceful deletes exercise preStop, SHUTDOWN_DELAY and draining.
			if env["FORCE"] != "false" {
				t.Errorf("pod-delete FORCE=%q, want false", env["FORCE"])
			}
		case "pod-network-latency":
			// Latency towards Redis only, above the limiter budget.
			if env["DESTINATION_HOSTS"] != "redis" {
				t.Errorf("pod-network-latency DESTINATION_HOSTS %q, want redis", env["DESTINATION_HOSTS"])
			}
			lat, err := time.ParseDuration(env["NETWORK_LATENCY"] + "ms")
			if err != nil || lat <= dev.cfg.RateLimitTimeout {
				t.Errorf("NETWORK_LATENCY %q must exceed RATELIMIT_REDIS_TIMEOUT %s", env["NETWORK_LATENCY"], dev.cfg.RateLimitTimeout)
			}
		case "pod-cpu-hog":
			if env["CPU_CORES"] == "" {
				t.Error("pod-cpu-hog: CPU_CORES not set")
			}
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("experiments %v, want %v", got, want)
	}
}
