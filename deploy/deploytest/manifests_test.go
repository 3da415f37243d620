package deploytest

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"go/version"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/hardenedgo/ginservice/internal/config"
)

// overlays are the deployable kustomizations; every rule holds in each.
var overlays = []string{"deploy/k8s/overlays/dev", "deploy/k8s/overlays/prod"}

// recommendedSysctls are the article's values (chapter 1 and 4.4: somaxconn
// and tcp_max_syn_backlog 65535, fin_timeout 30, tw_reuse 1, keepalive
// 600/15/5).
var recommendedSysctls = map[string]string{
	"net.core.somaxconn":            "65535",
	"net.ipv4.tcp_max_syn_backlog":  "65535",
	"net.ipv4.tcp_fin_timeout":      "30",
	"net.ipv4.tcp_tw_reuse":         "1",
	"net.ipv4.tcp_keepalive_time":   "600",
	"net.ipv4.tcp_keepalive_intvl":  "15",
	"net.ipv4.tcp_keepalive_probes": "5",
}

// ingressNginxUpstreamKeepaliveDefault is ingress-nginx's default
// upstream-keepalive-timeout (seconds), used if the reference controller
// ConfigMap does not set it.
const ingressNginxUpstreamKeepaliveDefault = 60

// app gathers the service's objects of one overlay.
type app struct {
	objs      objects
	deploy    *appsv1.Deployment
	pod       *corev1.PodSpec
	container corev1.Container
	env       map[string]string
	cfg       config.Config
	namespace string
	podLabels labels.Set
	httpPort  int32
	adminPort int32
}

func loadApp(t *testing.T, dir string) app {
	t.Helper()
	objs := kustomize(t, dir)
	d := get[*appsv1.Deployment](t, objs, "api")
	a := app{objs: objs, deploy: d, pod: &d.Spec.Template.Spec, namespace: d.Namespace, podLabels: d.Spec.Template.Labels}
	a.container = containerByName(t, a.pod, "api")
	a.env = containerEnv(t, objs, a.container)
	cfg, err := config.Load(func(k string) string { return a.env[k] })
	if err != nil {
		t.Fatalf("%s: the api container's environment is not a valid configuration: %v", dir, err)
	}
	a.cfg = cfg
	for _, p := range a.container.Ports {
		switch p.Name {
		case "http":
			a.httpPort = p.ContainerPort
		case "admin":
			a.adminPort = p.ContainerPort
		}
	}
	if a.httpPort == 0 || a.adminPort == 0 {
		t.Fatalf("%s: api container must name its ports http and admin: %+v", dir, a.container.Ports)
	}
	return a
}

func forEachOverlay(t *testing.T, f func(t *testing.T, a app)) {
	for _, dir := range overlays {
		t.Run(filepath.Base(dir), func(t *testing.T) { f(t, loadApp(t, dir)) })
	}
}

func portOf(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return int32(n)
}

func TestStrictDecodingRejectsUnknownFields(t *testing.T) {
	// The guarantee every other test leans on: a misspelt field fails.
	bad := []string{
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 3}\n",
		"apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 80, targetport: 8080}]}\n",
		"apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\nspec: {selector: {}, endpoints: [{port: admin, intervall: 15s}]}\n",
		"apiVersion: litmuschaos.io/v1alpha1\nkind: ChaosEngine\nmetadata: {name: x}\nspec: {engineState: active, appinfo: {appns: a}, chaosServiceAccount: s, experiments: [], extra: 1}\n",
		"apiVersion: example.com/v1\nkind: Unknown\nmetadata: {name: x}\n",
	}
	for _, doc := range bad {
		if _, err := decode([]byte(doc)); err == nil {
			t.Errorf("decoded without error:\n%s", doc)
		}
	}
	good := "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 3}\n"
	if _, err := decode([]byte(good)); err != nil {
		t.Errorf("valid Deployment rejected: %v", err)
	}
}

func TestEveryKustomizationBuildsAndDecodesStrictly(t *testing.T) {
	// kustomize() fails the test on a build error or a non-strict object.
	for _, dir := range append(slices.Clone(overlays), "deploy/k8s/base", "deploy/k8s/redis", "deploy/k8s/jaeger", "deploy/k8s/ingress-nginx", "deploy/chaos") {
		t.Run(dir, func(t *testing.T) {
			objs := kustomize(t, dir)
			if len(objs.list) == 0 {
				t.Fatal("no objects")
			}
		})
	}
}

// minReplicas is the HPA's floor, the replica count the overlay runs with
// when idle.
func minReplicas(t *testing.T, a app) int32 {
	t.Helper()
	hpa := get[*autoscalingv2.HorizontalPodAutoscaler](t, a.objs, "api")
	if hpa.Spec.MinReplicas == nil {
		t.Fatal("HPA api has no minReplicas (the default, 1, cannot survive a rollout or a node drain)")
	}
	return *hpa.Spec.MinReplicas
}

func TestReplicasRateLimitInstancesAndHPA(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		// The HPA owns the replica count: a spec.replicas in the manifests
		// resets a scaled-out Deployment to that number on every apply.
		if a.deploy.Spec.Replicas != nil {
			t.Errorf("Deployment api sets replicas %d: the HPA owns the count (its minReplicas is the floor)", *a.deploy.Spec.Replicas)
		}
		hpa := get[*autoscalingv2.HorizontalPodAutoscaler](t, a.objs, "api")
		if hpa.Spec.ScaleTargetRef.Kind != "Deployment" || hpa.Spec.ScaleTargetRef.Name != "api" {
			t.Errorf("HPA targets %+v", hpa.Spec.ScaleTargetRef)
		}
		floor := minReplicas(t, a)
		// Three everywhere: one pod cannot survive a rollout or a node
		// drain, and with two a pod-delete experiment leaves one.
		if floor < 3 {
			t.Errorf("HPA minReplicas = %d, want at least 3", floor)
		}
		if int32(a.cfg.RateLimitInstances) != floor {
			t.Errorf("RATELIMIT_INSTANCES = %d, HPA minReplicas = %d: at the minimum the local fallback would admit %d/%d of the intended rate",
				a.cfg.RateLimitInstances, floor, floor, a.cfg.RateLimitInstances)
		}
		if hpa.Spec.MaxReplicas <= floor {
			t.Errorf("HPA maxReplicas %d <= minReplicas %d", hpa.Spec.MaxReplicas, floor)
		}
		if len(hpa.Spec.Metrics) == 0 {
			t.Error("HPA has no metrics")
		}
		for _, m := range hpa.Spec.Metrics {
			if m.Resource != nil && m.Resource.Name == corev1.ResourceCPU && a.container.Resources.Requests.Cpu().IsZero() {
				t.Error("HPA scales on CPU utilization but the container requests no CPU")
			}
		}
		if b := hpa.Spec.Behavior; b == nil || b.ScaleDown == nil || b.ScaleDown.StabilizationWindowSeconds == nil || *b.ScaleDown.StabilizationWindowSeconds < 60 {
			t.Error("HPA scale-down needs a stabilization window (each scale-down is a graceful shutdown)")
		}
	})
}

func TestTopologySpread(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		keys := map[string]corev1.TopologySpreadConstraint{}
		for _, c := range a.pod.TopologySpreadConstraints {
			keys[c.TopologyKey] = c
			sel, err := metav1.LabelSelectorAsSelector(c.LabelSelector)
			if err != nil || sel.Empty() || !sel.Matches(a.podLabels) {
				t.Errorf("spread on %s: selector %v does not select the pods %v", c.TopologyKey, c.LabelSelector, a.podLabels)
			}
			if c.MaxSkew != 1 {
				t.Errorf("spread on %s: maxSkew %d, want 1", c.TopologyKey, c.MaxSkew)
			}
			// Nodes the pods cannot run on (tainted: cordoned, draining,
			// control plane; outside the node affinity) must not count as
			// empty domains, or a hard spread leaves pods Pending in a drain.
			if p := c.NodeTaintsPolicy; p == nil || *p != corev1.NodeInclusionPolicyHonor {
				t.Errorf("spread on %s: nodeTaintsPolicy %s, want Honor", c.TopologyKey, ptrString(p))
			}
			if p := c.NodeAffinityPolicy; p == nil || *p != corev1.NodeInclusionPolicyHonor {
				t.Errorf("spread on %s: nodeAffinityPolicy %s, want Honor (explicitly)", c.TopologyKey, ptrString(p))
			}
		}
		zone, ok := keys["topology.kubernetes.io/zone"]
		if !ok {
			t.Error("no topology spread across zones (topology.kubernetes.io/zone)")
		}
		node, ok2 := keys["kubernetes.io/hostname"]
		if !ok2 {
			t.Error("no topology spread across nodes (kubernetes.io/hostname)")
		}
		if ok && ok2 && node.WhenUnsatisfiable != corev1.DoNotSchedule {
			t.Errorf("node spread must be hard (DoNotSchedule), got %s", node.WhenUnsatisfiable)
		}
		_ = zone
	})
}

func TestProbes(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		c := a.container
		check := func(kind string, p *corev1.Probe, path, portName string, port int32) {
			if p == nil || p.HTTPGet == nil {
				t.Errorf("%s probe: want httpGet %s", kind, path)
				return
			}
			if p.HTTPGet.Path != path {
				t.Errorf("%s probe path %q, want %q", kind, p.HTTPGet.Path, path)
			}
			if p.HTTPGet.Port != intstr.FromString(portName) && p.HTTPGet.Port != intstr.FromInt32(port) {
				t.Errorf("%s probe port %s, want %s (%d)", kind, p.HTTPGet.Port.String(), portName, port)
			}
			if p.TimeoutSeconds < 1 || p.PeriodSeconds < 1 || p.FailureThreshold < 1 {
				t.Errorf("%s probe: timeout/period/failureThreshold must be set: %+v", kind, p.ProbeHandler)
			}
		}
		// Start-up and readiness on the public port: they answer whether
		// that listener serves. Liveness on the admin port: a public accept
		// queue full under overload must not fail it and restart a pod that
		// is only busy, moving its load onto the others.
		check("startup", c.StartupProbe, "/healthz", "http", a.httpPort)
		check("liveness", c.LivenessProbe, "/healthz", "admin", a.adminPort)
		check("readiness", c.ReadinessProbe, "/readyz", "http", a.httpPort)
		if p := c.LivenessProbe; p != nil && p.TimeoutSeconds < 5 {
			t.Errorf("liveness probe timeout %ds: a busy process (GC, CPU throttling) needs at least 5s before it counts as dead", p.TimeoutSeconds)
		}
		if c.StartupProbe != nil && c.StartupProbe.PeriodSeconds*c.StartupProbe.FailureThreshold < 10 {
			t.Error("startup probe allows less than 10s to start")
		}
		// The probes must reach the listener the service really opens.
		if got := portOf(t, a.cfg.HTTPAddr); got != a.httpPort {
			t.Errorf("HTTP_ADDR port %d != containerPort http %d", got, a.httpPort)
		}
		if got := portOf(t, a.cfg.AdminAddr); got != a.adminPort {
			t.Errorf("ADMIN_ADDR port %d != containerPort admin %d", got, a.adminPort)
		}
	})
}

// postDrainSteps reads from cmd/api/run.go the bounded steps that follow
// the drain of the public listener: in shutdown, every
// context.WithTimeout(..., <constant>) (the admin listener's shutdown); in
// run, the same inside the function that calls shutdown (the trace flush).
// Reading the source keeps the budget below in step with the code.
func postDrainSteps(t *testing.T) (total time.Duration, steps []string) {
	t.Helper()
	path := filepath.Join(repoRoot(t), "cmd", "api", "run.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	drain := false
	collect := func(where string, n ast.Node) {
		ast.Inspect(n, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 2 || !isSelector(call.Fun, "context", "WithTimeout") {
				return true
			}
			if isSelector(call.Args[1], "cfg", "ShutdownTimeout") {
				drain = true
				return true
			}
			d, ok := constDuration(call.Args[1])
			if !ok {
				t.Errorf("%s: context.WithTimeout with a bound that is not a constant duration", where)
				return true
			}
			total += d
			steps = append(steps, fmt.Sprintf("%s in %s", types.ExprString(call.Args[1]), where))
			return true
		})
	}
	for _, decl := range f.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Recv != nil {
			continue
		}
		switch fn.Name.Name {
		case "shutdown":
			collect("shutdown", fn.Body)
		case "run":
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				lit, ok := n.(*ast.FuncLit)
				if !ok || !callsFunc(lit.Body, "shutdown") {
					return true
				}
				collect("run (after shutdown)", lit.Body)
				return false
			})
		}
	}
	if !drain || len(steps) < 2 {
		t.Fatalf("%s: did not find the drain (SHUTDOWN_TIMEOUT) and the bounded steps after it (admin listener, trace flush); found %v: update postDrainSteps", path, steps)
	}
	return total, steps
}

func isSelector(e ast.Expr, x, sel string) bool {
	s, ok := e.(*ast.SelectorExpr)
	if !ok || s.Sel.Name != sel {
		return false
	}
	id, ok := s.X.(*ast.Ident)
	return ok && id.Name == x
}

func callsFunc(n ast.Node, name string) bool {
	found := false
	ast.Inspect(n, func(n ast.Node) bool {
		if c, ok := n.(*ast.CallExpr); ok {
			if id, ok := c.Fun.(*ast.Ident); ok && id.Name == name {
				found = true
			}
		}
		return !found
	})
	return found
}

// constDuration evaluates N, time.Unit and N * time.Unit.
func constDuration(e ast.Expr) (time.Duration, bool) {
	units := map[string]time.Duration{"Nanosecond": time.Nanosecond, "Microsecond": time.Microsecond, "Millisecond": time.Millisecond, "Second": time.Second, "Minute": time.Minute}
	switch e := e.(type) {
	case *ast.ParenExpr:
		return constDuration(e.X)
	case *ast.BasicLit:
		n, err := strconv.ParseInt(e.Value, 0, 64)
		return time.Duration(n), err == nil && e.Kind == token.INT
	case *ast.SelectorExpr:
		if id, ok := e.X.(*ast.Ident); ok && id.Name == "time" {
			d, ok := units[e.Sel.Name]
			return d, ok
		}
	case *ast.BinaryExpr:
		if e.Op == token.MUL {
			x, okx := constDuration(e.X)
			y, oky := constDuration(e.Y)
			return x * y, okx && oky
		}
	}
	return 0, false
}

func TestGracefulShutdownBudget(t *testing.T) {
	after, steps := postDrainSteps(t)
	forEachOverlay(t, func(t *testing.T, a app) {
		ps := a.container.Lifecycle
		if ps == nil || ps.PreStop == nil {
			t.Fatal("api container has no preStop hook")
		}
		var preStop time.Duration
		switch {
		case ps.PreStop.Sleep != nil:
			preStop = time.Duration(ps.PreStop.Sleep.Seconds) * time.Second
		default:
			// The distroless image has no shell or sleep binary.
			t.Fatalf("preStop must be the native sleep action, got %+v", ps.PreStop)
		}
		if preStop < 3*time.Second {
			t.Errorf("preStop sleep %s: too short for endpoints to propagate", preStop)
		}
		grace := a.pod.TerminationGracePeriodSeconds
		if grace == nil {
			t.Fatal("terminationGracePeriodSeconds not set (default 30s)")
		}
		// After the drain, cmd/api/run.go still shuts the admin listener
		// down and flushes the spans, each with its own bound.
		need := preStop + a.cfg.ShutdownDelay + a.cfg.ShutdownTimeout + after
		if got := time.Duration(*grace) * time.Second; got <= need {
			t.Errorf("terminationGracePeriodSeconds %s <= preStop %s + SHUTDOWN_DELAY %s + SHUTDOWN_TIMEOUT %s + after the drain %s (%s) = %s: draining requests or their spans get SIGKILL",
				got, preStop, a.cfg.ShutdownDelay, a.cfg.ShutdownTimeout, after, strings.Join(steps, ", "), need)
		}
		if s := a.deploy.Spec.Strategy; s.RollingUpdate == nil || s.RollingUpdate.MaxUnavailable == nil || s.RollingUpdate.MaxUnavailable.IntValue() != 0 {
			t.Error("rolling update must keep maxUnavailable 0")
		}
	})
}

func TestResourcesAndGoRuntimeLimits(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		// Every container of every workload has requests and limits.
		for wl, tpl := range podTemplates(a.objs) {
			for _, c := range append(slices.Clone(tpl.Spec.InitContainers), tpl.Spec.Containers...) {
				r := c.Resources
				for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
					req, okReq := r.Requests[name]
					lim, okLim := r.Limits[name]
					if !okReq || !okLim {
						t.Errorf("%s container %s: %s request and limit required", wl, c.Name, name)
						continue
					}
					if req.Cmp(lim) > 0 {
						t.Errorf("%s container %s: %s request %s > limit %s", wl, c.Name, name, req.String(), lim.String())
					}
				}
			}
		}
		env := map[string]*corev1.EnvVar{}
		for i := range a.container.Env {
			env[a.container.Env[i].Name] = &a.container.Env[i]
		}
		ref := func(name string) *corev1.ResourceFieldSelector {
			e := env[name]
			if e == nil || e.ValueFrom == nil || e.ValueFrom.ResourceFieldRef == nil {
				t.Errorf("%s must come from resourceFieldRef", name)
				return nil
			}
			if e.ValueFrom.ResourceFieldRef.ContainerName != "api" {
				t.Errorf("%s refers to container %q", name, e.ValueFrom.ResourceFieldRef.ContainerName)
			}
			return e.ValueFrom.ResourceFieldRef
		}
		// GOMAXPROCS is left to the runtime: since Go 1.25 (for modules
		// whose go directive is >= 1.25) it defaults to the cgroup CPU limit
		// and follows changes to it. Setting the variable turns both off.
		if _, ok := a.env["GOMAXPROCS"]; ok {
			t.Error("GOMAXPROCS is set: it turns off the runtime's own value from the cgroup CPU limit (Go >= 1.25) and its updates")
		}
		if a.container.Resources.Limits.Cpu().IsZero() {
			t.Error("no CPU limit: the runtime's GOMAXPROCS would be the node's CPU count")
		}
		if v := readGoMod(t).Go.Version; version.Compare("go"+v, "go1.25") < 0 {
			t.Errorf("go.mod says go %s: the runtime sets GOMAXPROCS from the cgroup limit only for go >= 1.25", v)
		}
		for _, g := range readGoMod(t).Godebug {
			if g.Key == "containermaxprocs" || g.Key == "updatemaxprocs" {
				t.Errorf("go.mod sets godebug %s=%s: GOMAXPROCS must follow the cgroup CPU limit", g.Key, g.Value)
			}
		}
		if r := ref("GOMEMLIMIT"); r != nil {
			// GOMEMLIMIT takes bytes: no divisor.
			if !r.Divisor.IsZero() && r.Divisor.Cmp(resource.MustParse("1")) != 0 {
				t.Errorf("GOMEMLIMIT divisor %s: the runtime wants bytes", r.Divisor.String())
			}
			limit := a.container.Resources.Limits.Memory()
			switch r.Resource {
			case "limits.memory":
			case "requests.memory":
				// Headroom under the hard limit, but not so much memory idles.
				req := a.container.Resources.Requests.Memory()
				ratio := float64(req.Value()) / float64(limit.Value())
				if ratio < 0.8 || ratio > 0.95 {
					t.Errorf("GOMEMLIMIT = requests.memory = %.0f%% of the limit; want 80%%..95%%", ratio*100)
				}
			default:
				t.Errorf("GOMEMLIMIT from %s", r.Resource)
			}
		}
	})
}

func ptrString[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}

// effective returns the container-level value if set, else the pod-level one.
func effective[T any](c *T, p *T) *T {
	if c != nil {
		return c
	}
	return p
}

func TestRestrictedSecurityContext(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		var privileged []string
		for wl, tpl := range podTemplates(a.objs) {
			spec := tpl.Spec
			if spec.HostNetwork || spec.HostPID || spec.HostIPC {
				t.Errorf("%s uses host namespaces", wl)
			}
			if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
				t.Errorf("%s mounts a service account token", wl)
			}
			psc := spec.SecurityContext
			if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("%s: pod seccompProfile must be RuntimeDefault", wl)
			}
			if psc == nil {
				psc = &corev1.PodSecurityContext{}
			}
			for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
				sc := c.SecurityContext
				if sc == nil {
					t.Errorf("%s container %s: no securityContext", wl, c.Name)
					continue
				}
				if sc.Privileged != nil && *sc.Privileged {
					privileged = append(privileged, wl+"/"+c.Name)
					continue // the sysctl init container, checked below
				}
				if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
					t.Errorf("%s container %s: allowPrivilegeEscalation must be false", wl, c.Name)
				}
				if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
					t.Errorf("%s container %s: readOnlyRootFilesystem must be true", wl, c.Name)
				}
				if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
					t.Errorf("%s container %s: capabilities must drop ALL and add none", wl, c.Name)
				}
				if nr := effective(sc.RunAsNonRoot, psc.RunAsNonRoot); nr == nil || !*nr {
					t.Errorf("%s container %s: runAsNonRoot must be true", wl, c.Name)
				}
				if uid := effective(sc.RunAsUser, psc.RunAsUser); uid == nil || *uid == 0 {
					t.Errorf("%s container %s: needs a non-zero runAsUser (the image may default to root)", wl, c.Name)
				}
				if sc.SeccompProfile != nil && sc.SeccompProfile.Type == corev1.SeccompProfileTypeUnconfined {
					t.Errorf("%s container %s: seccomp Unconfined", wl, c.Name)
				}
			}
		}
		if want := []string{"Deployment/api/sysctl"}; !slices.Equal(privileged, want) {
			t.Errorf("privileged containers %v, want only %v", privileged, want)
		}
	})
}

// sysctlArgs parses `sysctl -w k=v ...`.
func sysctlArgs(t *testing.T, c corev1.Container) map[string]string {
	t.Helper()
	cmd := append(slices.Clone(c.Command), c.Args...)
	if len(cmd) < 3 || filepath.Base(cmd[0]) != "sysctl" || cmd[1] != "-w" {
		t.Fatalf("sysctl init container runs %q, want sysctl -w key=value...", cmd)
	}
	out := map[string]string{}
	for _, kv := range cmd[2:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("sysctl argument %q is not key=value", kv)
		}
		out[k] = v
	}
	return out
}

func TestSysctlInitContainer(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		if len(a.pod.InitContainers) != 1 || a.pod.InitContainers[0].Name != "sysctl" {
			t.Fatalf("want one init container named sysctl, got %d", len(a.pod.InitContainers))
		}
		c := a.pod.InitContainers[0]
		got := sysctlArgs(t, c)
		if !maps.Equal(got, recommendedSysctls) {
			t.Errorf("sysctls %v\nwant the article's %v", got, recommendedSysctls)
		}
		sc := c.SecurityContext
		if sc == nil || sc.Privileged == nil || !*sc.Privileged {
			t.Error("the sysctl init container must be privileged (it writes /proc/sys)")
		}
		if !strings.HasPrefix(c.Image, "busybox:") || strings.HasSuffix(c.Image, ":latest") {
			t.Errorf("sysctl image %q: want a pinned busybox (it has sysctl)", c.Image)
		}
		// No pod-level sysctls at the same time (two sources of truth).
		if a.pod.SecurityContext != nil && len(a.pod.SecurityContext.Sysctls) > 0 {
			t.Error("both the init container and pod-level sysctls are set")
		}
	})
}

func TestPodSysctlsComponent(t *testing.T) {
	// Build a throwaway overlay (prod + the component) in memory, from a copy
	// of deploy/k8s, so the repository is never written to.
	root := repoRoot(t)
	fs := filesys.MakeFsInMemory()
	src := filepath.Join(root, "deploy", "k8s")
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		return fs.WriteFile(filepath.Join("/repo", rel), data)
	})
	if err != nil {
		t.Fatal(err)
	}
	overlay := "/repo/deploy/k8s/overlays/test-pod-sysctls"
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../prod\ncomponents:\n  - ../../components/pod-sysctls\n"
	if err := fs.WriteFile(overlay+"/kustomization.yaml", []byte(k)); err != nil {
		t.Fatal(err)
	}
	objs := kustomizeFS(t, fs, overlay, "prod+pod-sysctls")
	d := get[*appsv1.Deployment](t, objs, "api")
	if n := len(d.Spec.Template.Spec.InitContainers); n != 0 {
		t.Errorf("component left %d init containers", n)
	}
	got := map[string]string{}
	for _, s := range d.Spec.Template.Spec.SecurityContext.Sysctls {
		got[s.Name] = s.Value
	}
	if !maps.Equal(got, recommendedSysctls) {
		t.Errorf("pod sysctls %v\nwant %v", got, recommendedSysctls)
	}
	for wl, tpl := range podTemplates(objs) {
		for _, c := range append(slices.Clone(tpl.Spec.InitContainers), tpl.Spec.Containers...) {
			if c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged {
				t.Errorf("%s/%s is privileged with the pod-sysctls component", wl, c.Name)
			}
		}
	}
}

func TestServiceExposesOnlyThePublicPort(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		svc := get[*corev1.Service](t, a.objs, "api")
		if svc.Spec.Type != "" && svc.Spec.Type != corev1.ServiceTypeClusterIP {
			t.Errorf("Service api is %s; the Ingress is the way in", svc.Spec.Type)
		}
		if !labels.SelectorFromSet(svc.Spec.Selector).Matches(a.podLabels) || len(svc.Spec.Selector) == 0 {
			t.Errorf("Service api selector %v does not select the pods %v", svc.Spec.Selector, a.podLabels)
		}
		if len(svc.Spec.Ports) != 1 {
			t.Fatalf("Service api has %d ports, want only the public one", len(svc.Spec.Ports))
		}
		tp := svc.Spec.Ports[0].TargetPort
		if tp != intstr.FromString("http") && tp != intstr.FromInt32(a.httpPort) {
			t.Errorf("Service api targets %s, want the public port (http/%d)", tp.String(), a.httpPort)
		}
		// Every Service selecting these pods, other than the headless metrics
		// one, must stay off the admin port.
		for _, s := range all[*corev1.Service](a.objs) {
			if len(s.Spec.Selector) == 0 || !labels.SelectorFromSet(s.Spec.Selector).Matches(a.podLabels) {
				continue
			}
			for _, p := range s.Spec.Ports {
				if p.TargetPort == intstr.FromString("admin") || p.TargetPort == intstr.FromInt32(a.adminPort) || (p.TargetPort.IntValue() == 0 && p.TargetPort.StrVal == "" && p.Port == a.adminPort) {
					if s.Spec.ClusterIP != corev1.ClusterIPNone {
						t.Errorf("Service %s exposes the admin port through a cluster IP", s.Name)
					}
				}
			}
		}
	})
}

func TestServiceMonitorScrapesTheAdminPort(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		sm := get[*ServiceMonitor](t, a.objs, "api")
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil || sel.Empty() {
			t.Fatalf("ServiceMonitor selector %v", sm.Spec.Selector)
		}
		var selected []*corev1.Service
		for _, s := range all[*corev1.Service](a.objs) {
			if sel.Matches(labels.Set(s.Labels)) {
				selected = append(selected, s)
			}
		}
		if len(selected) != 1 || selected[0].Name != "api-metrics" {
			t.Fatalf("ServiceMonitor selects %d Services, want only api-metrics", len(selected))
		}
		ms := selected[0]
		if ms.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Error("metrics Service must be headless (Prometheus scrapes each pod)")
		}
		if len(ms.Spec.Ports) != 1 || ms.Spec.Ports[0].Name != "admin" {
			t.Fatalf("metrics Service ports %+v, want only admin", ms.Spec.Ports)
		}
		if tp := ms.Spec.Ports[0].TargetPort; tp != intstr.FromString("admin") && tp != intstr.FromInt32(a.adminPort) {
			t.Errorf("metrics Service targets %s", tp.String())
		}
		if !labels.SelectorFromSet(ms.Spec.Selector).Matches(a.podLabels) {
			t.Error("metrics Service does not select the api pods")
		}
		if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "admin" || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("ServiceMonitor endpoints %+v, want port admin path /metrics", sm.Spec.Endpoints)
		}
	})
}

func TestNetworkPolicyLimitsAdminPortToPrometheus(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		np := get[*networkingv1.NetworkPolicy](t, a.objs, "api")
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil || sel.Empty() || !sel.Matches(a.podLabels) {
			t.Fatalf("NetworkPolicy api does not select the api pods")
		}
		if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
			t.Fatal("NetworkPolicy api does not restrict ingress")
		}
		isAdmin := func(p networkingv1.NetworkPolicyPort) bool {
			return p.Port == nil || *p.Port == intstr.FromString("admin") || *p.Port == intstr.FromInt32(a.adminPort)
		}
		adminRules := 0
		publicOpen := false
		for i, r := range np.Spec.Ingress {
			if len(r.Ports) == 0 {
				t.Errorf("ingress rule %d allows every port", i)
				continue
			}
			admin := slices.ContainsFunc(r.Ports, isAdmin)
			if !admin {
				for _, p := range r.Ports {
					if *p.Port == intstr.FromString("http") || *p.Port == intstr.FromInt32(a.httpPort) {
						publicOpen = true
					}
				}
				continue
			}
			adminRules++
			if len(r.From) == 0 {
				t.Errorf("ingress rule %d opens the admin port to everyone", i)
			}
			for _, peer := range r.From {
				if peer.IPBlock != nil || peer.PodSelector == nil || peer.NamespaceSelector == nil {
					t.Errorf("rule %d: admin peers must name both the Prometheus namespace and pods: %+v", i, peer)
					continue
				}
				ps, _ := metav1.LabelSelectorAsSelector(peer.PodSelector)
				ns, _ := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
				if ps.Empty() || ns.Empty() || !strings.Contains(ps.String(), "prometheus") {
					t.Errorf("rule %d: admin peer %s in %s is not Prometheus", i, ps, ns)
				}
			}
		}
		if adminRules != 1 {
			t.Errorf("%d rules mention the admin port, want exactly 1 (Prometheus)", adminRules)
		}
		if !publicOpen {
			t.Error("no rule admits the public port")
		}
		// The reference Redis has no password: only the api pods reach it.
		rnp := get[*networkingv1.NetworkPolicy](t, a.objs, "redis")
		for _, r := range rnp.Spec.Ingress {
			for _, peer := range r.From {
				ps, _ := metav1.LabelSelectorAsSelector(peer.PodSelector)
				if peer.PodSelector == nil || !ps.Matches(a.podLabels) || ps.Empty() {
					t.Errorf("redis NetworkPolicy admits %+v", peer)
				}
			}
			if len(r.From) == 0 {
				t.Error("redis NetworkPolicy admits everyone")
			}
		}
	})
}

func TestPodDisruptionBudget(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		pdb := get[*policyv1.PodDisruptionBudget](t, a.objs, "api")
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || sel.Empty() || !sel.Matches(a.podLabels) {
			t.Fatal("PDB does not select the api pods")
		}
		replicas := int(minReplicas(t, a))
		switch {
		case pdb.Spec.MaxUnavailable != nil:
			n, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MaxUnavailable, replicas, false)
			if err != nil || n < 1 || n >= replicas {
				t.Errorf("PDB maxUnavailable %s of %d replicas: must allow 1..%d", pdb.Spec.MaxUnavailable.String(), replicas, replicas-1)
			}
		case pdb.Spec.MinAvailable != nil:
			n, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MinAvailable, replicas, true)
			if err != nil || n >= replicas || n < 1 {
				t.Errorf("PDB minAvailable %s of %d replicas blocks drains or protects nothing", pdb.Spec.MinAvailable.String(), replicas)
			}
		default:
			t.Error("PDB sets neither maxUnavailable nor minAvailable")
		}
	})
}

func TestServiceAccountHasNoToken(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		sa := get[*corev1.ServiceAccount](t, a.objs, a.pod.ServiceAccountName)
		if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
			t.Errorf("ServiceAccount %s automounts its token", sa.Name)
		}
		if a.pod.ServiceAccountName != "api" {
			t.Errorf("pods run as %q, want the api ServiceAccount", a.pod.ServiceAccountName)
		}
	})
}

func TestConfigMapHoldsOnlyKnownVariables(t *testing.T) {
	known := map[string]bool{"GOMAXPROCS": true, "GOMEMLIMIT": true}
	for _, v := range config.Vars() {
		known[v.Name] = true
	}
	forEachOverlay(t, func(t *testing.T, a app) {
		for k := range a.env {
			if known[k] || strings.HasPrefix(k, "OTEL_") || strings.HasPrefix(k, "K8S_") {
				continue
			}
			t.Errorf("variable %s is not read by the service (typo?)", k)
		}
		// The references in the environment resolve inside the overlay.
		redis, err := url.Parse(a.cfg.RedisURL)
		if err != nil || redis.Hostname() == "" {
			t.Fatalf("REDIS_URL %q", a.cfg.RedisURL)
		}
		svcPort(t, a.objs, redis.Hostname(), redis.Port())
		otlp, err := url.Parse(a.env["OTEL_EXPORTER_OTLP_ENDPOINT"])
		if err != nil || otlp.Hostname() == "" {
			t.Fatalf("OTEL_EXPORTER_OTLP_ENDPOINT %q", a.env["OTEL_EXPORTER_OTLP_ENDPOINT"])
		}
		svcPort(t, a.objs, otlp.Hostname(), otlp.Port())
		if a.env["OTEL_SERVICE_NAME"] == "" {
			t.Error("OTEL_SERVICE_NAME not set")
		}
		if len(a.cfg.TrustedProxies) == 0 {
			t.Error("TRUSTED_PROXIES empty: behind ingress-nginx every client would share the controller's rate-limit key")
		}
	})
}

// svcPort checks that Service name in the build exposes port.
func svcPort(t *testing.T, objs objects, name, port string) {
	t.Helper()
	svc := get[*corev1.Service](t, objs, name)
	for _, p := range svc.Spec.Ports {
		if strconv.Itoa(int(p.Port)) == port {
			return
		}
	}
	t.Errorf("Service %s has no port %s", name, port)
}

// seconds parses an ingress-nginx timeout annotation (seconds, optional "s").
func seconds(t *testing.T, s string) time.Duration {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSuffix(s, "s"))
	if err != nil {
		t.Fatalf("timeout %q: %v", s, err)
	}
	return time.Duration(n) * time.Second
}

func TestIngressAlignedWithServerTimeouts(t *testing.T) {
	ctrl := get[*corev1.ConfigMap](t, kustomize(t, "deploy/k8s/ingress-nginx"), "ingress-nginx-controller")
	upstreamKeepalive := time.Duration(ingressNginxUpstreamKeepaliveDefault) * time.Second
	if v, ok := ctrl.Data["upstream-keepalive-timeout"]; ok {
		upstreamKeepalive = seconds(t, v)
	}
	if n, err := strconv.Atoi(ctrl.Data["upstream-keepalive-connections"]); err != nil || n < 1 {
		t.Errorf("upstream-keepalive-connections %q: the upstream keep-alive pool must be on", ctrl.Data["upstream-keepalive-connections"])
	}
	forEachOverlay(t, func(t *testing.T, a app) {
		ing := get[*networkingv1.Ingress](t, a.objs, "api")
		ann := ing.Annotations
		const p = "nginx.ingress.kubernetes.io/"
		if upstreamKeepalive >= a.cfg.IdleTimeout {
			t.Errorf("ingress-nginx upstream-keepalive-timeout %s >= HTTP_IDLE_TIMEOUT %s: nginx reuses connections the server is closing (502)", upstreamKeepalive, a.cfg.IdleTimeout)
		}
		if a.cfg.IdleTimeout <= 60*time.Second {
			t.Errorf("HTTP_IDLE_TIMEOUT %s must outlive the 60s keep-alive of common proxies and load balancers", a.cfg.IdleTimeout)
		}
		if v := ann[p+"proxy-http-version"]; v != "" && v != "1.1" {
			t.Errorf("proxy-http-version %q: upstream keep-alive needs 1.1", v)
		}
		if ann[p+"service-upstream"] == "true" {
			t.Error("service-upstream=true pins keep-alive connections to a terminating pod through the ClusterIP")
		}
		if ann[p+"connection-proxy-header"] != "" {
			t.Error("connection-proxy-header overrides the Connection \"\" that upstream keep-alive needs")
		}
		if read := seconds(t, ann[p+"proxy-read-timeout"]); read < a.cfg.WriteTimeout {
			t.Errorf("proxy-read-timeout %s < HTTP_WRITE_TIMEOUT %s: nginx answers 504 while the server still works", read, a.cfg.WriteTimeout)
		}
		if send := seconds(t, ann[p+"proxy-send-timeout"]); send < a.cfg.ReadHeaderTimeout {
			t.Errorf("proxy-send-timeout %s shorter than HTTP_READ_HEADER_TIMEOUT %s", send, a.cfg.ReadHeaderTimeout)
		}
		if c := seconds(t, ann[p+"proxy-connect-timeout"]); c > 10*time.Second {
			t.Errorf("proxy-connect-timeout %s: a dead pod should be skipped quickly", c)
		}
		// Above MAX_BODY_BYTES: at or below it nginx refuses an oversized
		// body itself, with an HTML 413, before the service's problem+json.
		body, err := resource.ParseQuantity(strings.Replace(strings.Replace(ann[p+"proxy-body-size"], "m", "Mi", 1), "k", "Ki", 1))
		if err != nil || body.Value() <= a.cfg.MaxBodyBytes {
			t.Errorf("proxy-body-size %q <= MAX_BODY_BYTES %d: the 413 must come from the service (problem+json), not nginx", ann[p+"proxy-body-size"], a.cfg.MaxBodyBytes)
		}
		next := strings.Fields(ann[p+"proxy-next-upstream"])
		if len(next) == 0 || slices.Contains(next, "non_idempotent") || slices.ContainsFunc(next, func(s string) bool { return strings.HasPrefix(s, "http_") }) {
			t.Errorf("proxy-next-upstream %q: retry connect errors/timeouts only, never a sent non-idempotent request or a 5xx", next)
		}
		// The backend is the public Service port.
		if len(ing.Spec.Rules) == 0 || ing.Spec.Rules[0].HTTP == nil {
			t.Fatal("Ingress has no HTTP rule")
		}
		for _, path := range ing.Spec.Rules[0].HTTP.Paths {
			b := path.Backend.Service
			if b == nil || b.Name != "api" || (b.Port.Name != "http" && b.Port.Number != get[*corev1.Service](t, a.objs, "api").Spec.Ports[0].Port) {
				t.Errorf("Ingress path %s backend %+v, want Service api port http", path.Path, b)
			}
		}
		if ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != "nginx" {
			t.Error("Ingress class must be nginx (the annotations are ingress-nginx's)")
		}
	})
}

func TestNamespaceAndImages(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		ns := get[*corev1.Namespace](t, a.objs, a.namespace)
		if ns.Labels["pod-security.kubernetes.io/warn"] != "restricted" || ns.Labels["pod-security.kubernetes.io/audit"] != "restricted" {
			t.Errorf("namespace %s: warn/audit must report drift from restricted: %v", ns.Name, ns.Labels)
		}
		for _, o := range a.objs.list {
			m, _ := metaOf(o)
			if _, isNS := o.(*corev1.Namespace); !isNS && m.GetNamespace() != a.namespace {
				t.Errorf("%T %s in namespace %q, want %q", o, m.GetName(), m.GetNamespace(), a.namespace)
			}
		}
		img := a.container.Image
		if img == "api" || strings.HasSuffix(img, ":latest") || !strings.Contains(img, ":") && !strings.Contains(img, "@sha256:") {
			t.Errorf("api image %q: overlays must set a registry and a tag or digest", img)
		}
		for wl, tpl := range podTemplates(a.objs) {
			for _, c := range append(slices.Clone(tpl.Spec.InitContainers), tpl.Spec.Containers...) {
				if !strings.Contains(c.Image, ":") || strings.HasSuffix(c.Image, ":latest") {
					t.Errorf("%s/%s image %q is not pinned to a version", wl, c.Name, c.Image)
				}
			}
		}
		// The dashboard ConfigMap carries the JSON file as is.
		cm := get[*corev1.ConfigMap](t, a.objs, "api-grafana-dashboard")
		if cm.Labels["grafana_dashboard"] != "1" || cm.Data["api-dashboard.json"] == "" {
			t.Errorf("dashboard ConfigMap: labels %v, keys %v", cm.Labels, slices.Collect(maps.Keys(cm.Data)))
		}
	})
}

func TestEveryServiceSelectsPods(t *testing.T) {
	forEachOverlay(t, func(t *testing.T, a app) {
		tpls := podTemplates(a.objs)
		for _, s := range all[*corev1.Service](a.objs) {
			found := false
			for _, tpl := range tpls {
				if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(tpl.Labels)) && len(s.Spec.Selector) > 0 {
					found = true
					for _, p := range s.Spec.Ports {
						if p.TargetPort.Type == intstr.String && !hasPortName(tpl.Spec.Containers, p.TargetPort.StrVal) {
							t.Errorf("Service %s targets port %q that no container names", s.Name, p.TargetPort.StrVal)
						}
					}
				}
			}
			if !found {
				t.Errorf("Service %s selects no pod template", s.Name)
			}
		}
	})
}

func hasPortName(cs []corev1.Container, name string) bool {
	for _, c := range cs {
		for _, p := range c.Ports {
			if p.Name == name {
				return true
			}
		}
	}
	return false
}
