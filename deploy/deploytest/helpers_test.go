package deploytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hardenedgo/ginservice/internal/testkit"

	"golang.org/x/mod/modfile"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func repoRoot(t testing.TB) string { return testkit.ModuleRoot(t) }

// modulePath and goDirective read go.mod, so nothing here hard-codes the
// template's module path (a gonew copy runs these tests under its own).
func readGoMod(t testing.TB) *modfile.File {
	t.Helper()
	p := filepath.Join(repoRoot(t), "go.mod")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.ParseLax(p, data, nil)
	if err != nil {
		t.Fatalf("parse go.mod: %v", err)
	}
	return f
}

// tool finds a real program the tests run (promtool, amtool). On CI
// (CI=true) a missing program is a failure; elsewhere the test is skipped.
func tool(t testing.TB, name, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("%s not found (Debian package %s; `bash scripts/ci-deps.sh` installs it)", name, debianPackage)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// --- Custom resources: small local types holding exactly the fields the
// manifests use, registered in the scheme so the strict decoder rejects any
// other field (a typo in a CRD manifest fails here, not in the cluster).

type ServiceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel,omitempty"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		ScrapeClassicHistograms *bool `json:"scrapeClassicHistograms,omitempty"`
		Endpoints               []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type PrometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              struct {
		Groups []RuleGroup `json:"groups"`
	} `json:"spec"`
}

// RuleGroup is also the promtool rule file format (json tags = yaml keys).
type RuleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []Rule `json:"rules"`
}

type Rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ChaosEngine mirrors the fields of litmuschaos.io/v1alpha1 ChaosEngine
// (chaos-operator api/litmuschaos/v1alpha1/chaosengine_types.go) we use.
type ChaosEngine struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              struct {
		EngineState string `json:"engineState"`
		Appinfo     struct {
			Appns    string `json:"appns"`
			Applabel string `json:"applabel"`
			AppKind  string `json:"appkind"`
		} `json:"appinfo"`
		ChaosServiceAccount string `json:"chaosServiceAccount"`
		JobCleanUpPolicy    string `json:"jobCleanUpPolicy,omitempty"`
		Experiments         []struct {
			Name string `json:"name"`
			Spec struct {
				Components struct {
					Env []corev1.EnvVar `json:"env,omitempty"`
				} `json:"components"`
				Probe []ChaosProbe `json:"probe"`
			} `json:"spec"`
		} `json:"experiments"`
	} `json:"spec"`
}

type ChaosProbe struct {
	Name            string `json:"name"`
	Type            string `json:"type"`
	Mode            string `json:"mode"`
	HTTPProbeInputs *struct {
		URL    string `json:"url"`
		Method struct {
			Get *struct {
				Criteria     string `json:"criteria"`
				ResponseCode string `json:"responseCode"`
			} `json:"get,omitempty"`
		} `json:"method"`
	} `json:"httpProbe/inputs,omitempty"`
	PromProbeInputs *struct {
		Endpoint   string `json:"endpoint"`
		Query      string `json:"query"`
		Comparator struct {
			Type     string `json:"type"`
			Criteria string `json:"criteria"`
			Value    string `json:"value"`
		} `json:"comparator"`
	} `json:"promProbe/inputs,omitempty"`
	RunProperties struct {
		ProbeTimeout         string `json:"probeTimeout"`
		Interval             string `json:"interval"`
		Retry                int    `json:"retry,omitempty"`
		ProbePollingInterval string `json:"probePollingInterval,omitempty"`
		InitialDelay         string `json:"initialDelay,omitempty"`
	} `json:"runProperties"`
}

func (o *ServiceMonitor) DeepCopyObject() runtime.Object { return deepCopy(o) }
func (o *PrometheusRule) DeepCopyObject() runtime.Object { return deepCopy(o) }
func (o *ChaosEngine) DeepCopyObject() runtime.Object    { return deepCopy(o) }

func deepCopy[T any, PT interface {
	*T
	runtime.Object
}](in PT) runtime.Object {
	b, err := json.Marshal(in)
	if err != nil {
		panic(err)
	}
	out := PT(new(T))
	if err := json.Unmarshal(b, out); err != nil {
		panic(err)
	}
	return out
}

// decoder is strict: unknown or duplicate fields and unregistered kinds fail.
var decoder = sync.OnceValue(func() runtime.Decoder {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, autoscalingv2.AddToScheme,
		policyv1.AddToScheme, networkingv1.AddToScheme, rbacv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	s.AddKnownTypeWithName(schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"}, &ServiceMonitor{})
	s.AddKnownTypeWithName(schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "PrometheusRule"}, &PrometheusRule{})
	s.AddKnownTypeWithName(schema.GroupVersionKind{Group: "litmuschaos.io", Version: "v1alpha1", Kind: "ChaosEngine"}, &ChaosEngine{})
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
})

// decode decodes one YAML or JSON document strictly.
func decode(data []byte) (runtime.Object, error) {
	obj, _, err := decoder().Decode(data, nil, nil)
	return obj, err
}

// objects is the decoded output of one kustomization.
type objects struct {
	dir  string
	list []runtime.Object
}

func (o objects) String() string { return o.dir }

// kustomize builds dir (relative to the repository root) on disk.
func kustomize(t testing.TB, dir string) objects {
	t.Helper()
	return kustomizeFS(t, filesys.MakeFsOnDisk(), filepath.Join(repoRoot(t), dir), dir)
}

func kustomizeFS(t testing.TB, fs filesys.FileSystem, path, label string) objects {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(fs, path)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", label, err)
	}
	out := objects{dir: label}
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatalf("%s: %s: %v", label, r.CurId(), err)
		}
		obj, err := decode(y)
		if err != nil {
			t.Fatalf("%s: %s does not decode strictly: %v\n%s", label, r.CurId(), err, y)
		}
		out.list = append(out.list, obj)
	}
	return out
}

// get returns the single object of type T named name (fails otherwise).
func get[T runtime.Object](t testing.TB, objs objects, name string) T {
	t.Helper()
	var found []T
	for _, o := range objs.list {
		if v, ok := o.(T); ok {
			if m, err := metaOf(o); err == nil && m.GetName() == name {
				found = append(found, v)
			}
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("%s: want exactly one %T named %q, found %d", objs, zero, name, len(found))
	}
	return found[0]
}

// all returns every object of type T.
func all[T runtime.Object](objs objects) []T {
	var out []T
	for _, o := range objs.list {
		if v, ok := o.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func metaOf(o runtime.Object) (metav1.Object, error) {
	m, ok := o.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no metadata", o)
	}
	return m, nil
}

// podTemplates lists every pod template of the workloads, by "Kind/name".
func podTemplates(objs objects) map[string]*corev1.PodTemplateSpec {
	out := map[string]*corev1.PodTemplateSpec{}
	for _, o := range objs.list {
		switch w := o.(type) {
		case *appsv1.Deployment:
			out["Deployment/"+w.Name] = &w.Spec.Template
		case *appsv1.StatefulSet:
			out["StatefulSet/"+w.Name] = &w.Spec.Template
		case *appsv1.DaemonSet:
			out["DaemonSet/"+w.Name] = &w.Spec.Template
		}
	}
	return out
}

// containerEnv resolves the environment of a container: envFrom ConfigMaps
// (from the same build) then env values, as the kubelet does. Values that
// come from the downward API are returned as "<fieldRef>" placeholders.
func containerEnv(t testing.TB, objs objects, c corev1.Container) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil {
			t.Fatalf("%s: container %s: only configMapRef envFrom is expected", objs, c.Name)
		}
		cm := get[*corev1.ConfigMap](t, objs, from.ConfigMapRef.Name)
		for k, v := range cm.Data {
			env[from.Prefix+k] = v
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			env[e.Name] = "<valueFrom>"
			continue
		}
		env[e.Name] = e.Value
	}
	return env
}

func containerByName(t testing.TB, spec *corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

// run executes a program and returns its combined output.
func run(t testing.TB, dir string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.String(), err
}

// trimLines is for readable failure messages.
func trimLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n")
}
