package deploytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	appsv1 "k8s.io/api/apps/v1"
)

// instr is one Dockerfile instruction.
type instr struct {
	cmd   string // upper case: FROM, RUN, ...
	flags []string
	args  []string
	json  bool // exec form
	line  int
}

type stage struct {
	image, name string
	instrs      []instr
}

func (s stage) all(cmd string) []instr {
	var out []instr
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// dockerfile parses the repository's Dockerfile with BuildKit's parser.
func dockerfile(t *testing.T) (global []instr, stages []stage) {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile warning: %s", w.Short)
	}
	for _, n := range res.AST.Children {
		in := instr{cmd: strings.ToUpper(n.Value), flags: n.Flags, json: n.Attributes["json"], line: n.StartLine}
		for a := n.Next; a != nil; a = a.Next {
			in.args = append(in.args, a.Value)
		}
		if in.cmd == "FROM" {
			s := stage{image: in.args[0]}
			if len(in.args) == 3 && strings.EqualFold(in.args[1], "AS") {
				s.name = in.args[2]
			}
			stages = append(stages, s)
		}
		if len(stages) == 0 {
			global = append(global, in)
			continue
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
	}
	return global, stages
}

// argDefaults maps ARG NAME=default of the global scope.
func argDefaults(global []instr) map[string]string {
	m := map[string]string{}
	for _, in := range global {
		if in.cmd != "ARG" {
			continue
		}
		for _, a := range in.args {
			k, v, _ := strings.Cut(a, "=")
			m[k] = v
		}
	}
	return m
}

// goBuild returns the build stage's `go build` RUN command (shell form).
func goBuild(t *testing.T, stages []stage) string {
	t.Helper()
	var found []string
	for _, s := range stages {
		for _, in := range s.all("RUN") {
			cmd := strings.Join(in.args, " ")
			if strings.Contains(cmd, "go build") {
				if in.json {
					t.Errorf("line %d: the go build RUN must be shell form (it expands ${VERSION})", in.line)
				}
				found = append(found, cmd)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("want exactly one RUN with go build, found %d", len(found))
	}
	return found[0]
}

var reLdflags = regexp.MustCompile(`-ldflags[= ]+(?:"([^"]*)"|'([^']*)'|(\S+))`)

func TestDockerfile(t *testing.T) {
	global, stages := dockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a multi-stage build", len(stages))
	}
	args := argDefaults(global)
	names := map[string]bool{}
	for _, s := range stages {
		if strings.HasSuffix(s.image, ":latest") || (!strings.Contains(s.image, ":") && s.image != "scratch" && !names[s.image]) {
			t.Errorf("FROM %s: pin a tag", s.image)
		}
		if s.name != "" {
			names[s.name] = true
		}
		for _, in := range s.instrs {
			if in.cmd == "ADD" && slices.ContainsFunc(in.args, func(a string) bool {
				return strings.Contains(a, "://") || strings.HasPrefix(a, "git@")
			}) {
				t.Errorf("line %d: ADD of a remote URL (unverified download); use a build stage with a checksum", in.line)
			}
			if in.cmd == "COPY" {
				for _, f := range in.flags {
					if from, ok := strings.CutPrefix(f, "--from="); ok && !names[from] {
						t.Errorf("line %d: COPY --from=%s names no earlier stage", in.line, from)
					}
				}
			}
		}
	}

	// Build stage: the Go toolchain of go.mod.
	build := stages[0]
	goVersion := readGoMod(t).Go.Version
	img := strings.ReplaceAll(build.image, "${GO_VERSION}", args["GO_VERSION"])
	if !strings.HasPrefix(img, "golang:"+goVersion) {
		t.Errorf("build stage FROM %s (GO_VERSION=%s), want golang:%s (go.mod's go directive)", build.image, args["GO_VERSION"], goVersion)
	}

	// The go build line: static, reproducible paths, stripped, stamped.
	cmd := goBuild(t, stages)
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/api", "-o "} {
		if !strings.Contains(cmd, want) {
			t.Errorf("go build line lacks %s: %s", want, cmd)
		}
	}
	m := reLdflags.FindStringSubmatch(cmd)
	if m == nil {
		t.Fatalf("go build line has no -ldflags: %s", cmd)
	}
	ld := strings.Fields(m[1] + m[2] + m[3])
	for _, want := range []string{"-s", "-w"} {
		if !slices.Contains(ld, want) {
			t.Errorf("-ldflags %q lacks %s", ld, want)
		}
	}
	// -X main.version (not a module path, which a gonew rename would break).
	for _, v := range []string{"main.version=", "main.commit="} {
		i := slices.IndexFunc(ld, func(s string) bool { return strings.HasPrefix(s, v) })
		if i < 1 || ld[i-1] != "-X" {
			t.Errorf("-ldflags %q lacks -X %s...", ld, v)
		}
	}

	// Final stage: distroless static nonroot (or scratch), non-root user.
	final := stages[len(stages)-1]
	if !(strings.HasPrefix(final.image, "gcr.io/distroless/static") && strings.Contains(final.image, ":nonroot")) && final.image != "scratch" {
		t.Errorf("final stage FROM %s, want gcr.io/distroless/static-*:nonroot or scratch", final.image)
	}
	users := final.all("USER")
	if len(users) == 0 {
		t.Fatal("final stage has no USER")
	}
	user := users[len(users)-1].args[0]
	uidStr, _, _ := strings.Cut(user, ":")
	uid, err := strconv.Atoi(uidStr)
	if err != nil || uid == 0 {
		// Numeric, so that Kubernetes can verify runAsNonRoot.
		t.Errorf("USER %q: want a numeric non-root uid", user)
	}
	// The Deployment runs as the same uid.
	d := get[*appsv1.Deployment](t, kustomize(t, overlays[0]), "api")
	if sc := d.Spec.Template.Spec.SecurityContext; sc == nil || sc.RunAsUser == nil || int(*sc.RunAsUser) != uid {
		t.Errorf("Deployment runAsUser != Dockerfile USER %d", uid)
	}

	// Ports: both listeners, matching the ENV defaults of the image.
	var exposed []string
	for _, in := range final.all("EXPOSE") {
		exposed = append(exposed, in.args...)
	}
	env := map[string]string{}
	for _, in := range final.all("ENV") {
		for i := 0; i+1 < len(in.args); i += 3 { // key, value, "="
			env[in.args[i]] = in.args[i+1]
		}
	}
	for _, v := range []string{"HTTP_ADDR", "ADMIN_ADDR"} {
		_, port, _ := strings.Cut(env[v], ":")
		if port == "" || !slices.Contains(exposed, port) {
			t.Errorf("%s=%q: port not in EXPOSE %v", v, env[v], exposed)
		}
	}
	if !slices.Contains(exposed, "8080") || !slices.Contains(exposed, "9090") {
		t.Errorf("EXPOSE %v, want 8080 and 9090", exposed)
	}

	// ENTRYPOINT and HEALTHCHECK run the copied binary in exec form (no shell).
	eps := final.all("ENTRYPOINT")
	if len(eps) != 1 || !eps[0].json {
		t.Fatal("final stage needs one exec-form ENTRYPOINT")
	}
	bin := eps[0].args[0]
	copied := false
	for _, in := range final.all("COPY") {
		if in.args[len(in.args)-1] == bin && slices.ContainsFunc(in.flags, func(f string) bool { return strings.HasPrefix(f, "--from=") }) {
			copied = true
		}
	}
	if !copied {
		t.Errorf("ENTRYPOINT %s is not COPY --from the build stage", bin)
	}
	hcs := final.all("HEALTHCHECK")
	if len(hcs) != 1 || !hcs[0].json || len(hcs[0].args) != 3 || hcs[0].args[0] != "CMD" || hcs[0].args[1] != bin || hcs[0].args[2] != "healthcheck" {
		t.Errorf("HEALTHCHECK must be CMD [%q, \"healthcheck\"] in exec form, got %v", bin, hcs)
	}
	if len(hcs) == 1 && !slices.ContainsFunc(hcs[0].flags, func(f string) bool { return strings.HasPrefix(f, "--timeout=") }) {
		t.Error("HEALTHCHECK without --timeout")
	}
	for _, in := range final.all("RUN") {
		t.Errorf("line %d: RUN in the final stage (distroless has no shell)", in.line)
	}
}

// contextFiles are the files `go build ./cmd/api` reads for the target
// platform of the image, relative to the repository root.
func contextFiles(t *testing.T) []string {
	t.Helper()
	root := repoRoot(t)
	cmd := exec.Command("go", "list", "-deps", "-f", `{{if .Module}}{{if .Module.Main}}{{.Dir}}|{{join .GoFiles ","}}|{{join .EmbedFiles ","}}{{end}}{{end}}`, "./cmd/api")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list ./cmd/api: %v\n%s", err, out)
	}
	files := []string{"go.mod", "go.sum"}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		parts := strings.Split(line, "|")
		if len(parts) != 3 {
			continue
		}
		rel, err := filepath.Rel(root, parts[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, list := range parts[1:] {
			for _, f := range strings.Split(list, ",") {
				if f != "" {
					files = append(files, filepath.ToSlash(filepath.Join(rel, f)))
				}
			}
		}
	}
	return files
}

func TestDockerignoreKeepsWhatTheBuildNeeds(t *testing.T) {
	requireCmdAPI(t)
	f, err := os.Open(filepath.Join(repoRoot(t), ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	excluded := func(p string) bool {
		ok, err := pm.MatchesOrParentMatches(p)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	needed := contextFiles(t)
	if len(needed) < 5 {
		t.Fatalf("go list found only %v", needed)
	}
	for _, p := range needed {
		if excluded(p) {
			t.Errorf(".dockerignore drops %s, which the build needs", p)
		}
	}
	// And keeps out what the image must not see or does not need.
	for _, p := range []string{".git/config", ".env", "deploy/k8s/base/config.env", "bin/api", "internal/config/config_test.go", "cmd/api/run_test.go", "internal/x/testdata/big.bin", "benchmarks/results.txt"} {
		if !excluded(p) {
			t.Errorf(".dockerignore lets %s into the build context", p)
		}
	}
}

// requireCmdAPI fails on CI, and skips elsewhere, until the service exists.
func requireCmdAPI(t *testing.T) {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(repoRoot(t), "cmd", "api", "*.go"))
	if len(m) > 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("cmd/api has no Go files")
	}
	t.Skip("cmd/api has no Go files yet")
}
