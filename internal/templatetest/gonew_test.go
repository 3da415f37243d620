// Package templatetest proves the module works as a gonew template: a new
// module made from the committed tree builds, vets, passes its tests and
// does not name the template any more.
package templatetest_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"
)

// gonewVersion is pinned so the test does not change under us; CI fetches
// it from the Go module proxy.
const gonewVersion = "v0.52.0"

func moduleRoot(t testing.TB) string { return testkit.ModuleRoot(t) }

// goEnv returns the environment for the go commands: ours, minus the
// variables the test sets itself.
func goEnv(set ...string) []string {
	drop := map[string]bool{}
	for _, kv := range set {
		k, _, _ := strings.Cut(kv, "=")
		drop[k] = true
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !drop[k] {
			env = append(env, kv)
		}
	}
	return append(env, set...)
}

// run runs a command and fails the test with its output when it fails.
func run(t *testing.T, ctx context.Context, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("%s %s (%s)", name, strings.Join(args, " "), time.Since(start).Round(100*time.Millisecond))
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// proxyFromHEAD writes a file:// module proxy holding the module at the
// repository's HEAD, the way a module proxy would serve it: a zip of the
// committed files (ignored files and exec bits gone), .info, .mod, an empty
// @v/list (pseudo-versions are not listed) and @latest.
func proxyFromHEAD(t *testing.T, ctx context.Context, root, modPath, dir string) string {
	t.Helper()
	git, err := exec.LookPath("git")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("git not found")
		}
		t.Skip("git not installed")
	}
	top := strings.TrimSpace(run(t, ctx, root, os.Environ(), git, "rev-parse", "--show-toplevel"))
	if top == "" {
		t.Fatal("not a git work tree")
	}
	// Resolve symlinks so the module root is found inside the work tree.
	top, _ = filepath.EvalSymlinks(top)
	realRoot, _ := filepath.EvalSymlinks(root)
	subdir, err := filepath.Rel(top, realRoot)
	if err != nil {
		t.Fatal(err)
	}
	if subdir == "." {
		subdir = ""
	}
	if dirty := run(t, ctx, root, os.Environ(), git, "status", "--porcelain", "--untracked-files=no"); dirty != "" {
		t.Logf("uncommitted changes are not part of the test (it uses HEAD):\n%s", dirty)
	}
	rev := strings.TrimSpace(run(t, ctx, root, os.Environ(), git, "rev-parse", "HEAD"))
	sec, err := strconv.ParseInt(strings.TrimSpace(run(t, ctx, root, os.Environ(), git, "show", "-s", "--format=%ct", "HEAD")), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	when := time.Unix(sec, 0).UTC()
	version := module.PseudoVersion("v0", "", when, rev[:12])

	esc, err := module.EscapePath(modPath)
	if err != nil {
		t.Fatal(err)
	}
	vdir := filepath.Join(dir, filepath.FromSlash(esc), "@v")
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		t.Fatal(err)
	}
	zf, err := os.Create(filepath.Join(vdir, version+".zip"))
	if err != nil {
		t.Fatal(err)
	}
	if err := modzip.CreateFromVCS(zf, module.Version{Path: modPath, Version: version}, top, rev, subdir); err != nil {
		zf.Close()
		t.Fatalf("module zip from HEAD: %v", err)
	}
	if err := zf.Close(); err != nil {
		t.Fatal(err)
	}
	gomod := run(t, ctx, top, os.Environ(), git, "show", rev+":"+filepath.ToSlash(filepath.Join(subdir, "go.mod")))
	info, _ := json.Marshal(struct {
		Version string
		Time    time.Time
	}{version, when})
	for name, data := range map[string][]byte{
		filepath.Join(vdir, version+".mod"):                    []byte(gomod),
		filepath.Join(vdir, version+".info"):                   info,
		filepath.Join(vdir, "list"):                            nil,
		filepath.Join(dir, filepath.FromSlash(esc), "@latest"): info,
	} {
		if err := os.WriteFile(name, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return version
}

// templateWords are the words that name the template: the elements of its
// module path after the host (owner and name). They are derived, not
// written here, so this file does not name the template either.
func templateWords(modPath string) []string {
	parts := strings.Split(modPath, "/")
	if len(parts) > 1 {
		parts = parts[1:]
	}
	return parts
}

// leftovers lists file:line of every case-insensitive mention of words.
func leftovers(t *testing.T, dir string, words []string) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		for _, w := range words {
			if strings.Contains(strings.ToLower(rel), strings.ToLower(w)) {
				hits = append(hits, rel+" (file name)")
			}
		}
		if d.IsDir() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
		for n := 1; sc.Scan(); n++ {
			line := bytes.ToLower(sc.Bytes())
			for _, w := range words {
				if bytes.Contains(line, []byte(strings.ToLower(w))) {
					hits = append(hits, rel+":"+strconv.Itoa(n)+": "+strings.TrimSpace(sc.Text()))
					break
				}
			}
		}
		return sc.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// TestGonew makes a new module from the committed tree with gonew, through
// a module proxy, the way a user would, then runs the documented rename
// step and checks the result builds, vets, passes its fast tests and no
// longer names the template.
func TestGonew(t *testing.T) {
	if testing.Short() {
		t.Skip("slow (30-90s): proxy from HEAD, gonew, build, vet and test of the copy")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	root := moduleRoot(t)
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	srcMod := modfile.ModulePath(gomod)
	dstMod := "example.com/acme/newsvc"
	if srcMod == dstMod {
		dstMod = "example.com/other/newsvc"
	}
	words := templateWords(srcMod)

	tmp := t.TempDir()
	proxyDir := filepath.Join(tmp, "proxy")
	version := proxyFromHEAD(t, ctx, root, srcMod, proxyDir)
	t.Logf("proxy: %s@%s", srcMod, version)

	realProxy := strings.TrimSpace(run(t, ctx, root, os.Environ(), "go", "env", "GOPROXY"))
	goproxy := "file://" + filepath.ToSlash(proxyDir)
	if realProxy != "" && realProxy != "off" {
		goproxy += "," + realProxy
	}

	// gonew itself, built from the Go module proxy into a private GOBIN.
	gobin := filepath.Join(tmp, "bin")
	run(t, ctx, tmp, goEnv("GOBIN="+gobin, "GOFLAGS=", "GOWORK=off"),
		"go", "install", "golang.org/x/tools/cmd/gonew@"+gonewVersion)

	// The template module lands read-only in a private module cache, so
	// the user's cache is not touched; emptied before TempDir removal.
	modcache := filepath.Join(tmp, "modcache")
	t.Cleanup(func() {
		c := exec.Command("go", "clean", "-modcache")
		c.Env = goEnv("GOMODCACHE="+modcache, "GOFLAGS=")
		_ = c.Run()
	})
	work := filepath.Join(tmp, "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	gonewEnv := goEnv("GOPROXY="+goproxy, "GOSUMDB=off", "GOFLAGS=-mod=mod", "GOMODCACHE="+modcache,
		"GONOPROXY=", "GOPRIVATE=", "GONOSUMDB=", "GOWORK=off")
	run(t, ctx, work, gonewEnv, filepath.Join(gobin, "gonew"), srcMod, dstMod, "newsvc")
	out := filepath.Join(work, "newsvc")

	newMod, err := os.ReadFile(filepath.Join(out, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if got := modfile.ModulePath(newMod); got != dstMod {
		t.Fatalf("go.mod of the copy says module %q, want %q", got, dstMod)
	}
	before := leftovers(t, out, words)
	t.Logf("after gonew, %d line(s) still name the template (rename.sh's job):\n%s", len(before), strings.Join(before, "\n"))
	for _, h := range before {
		if strings.Contains(h, ".go:") {
			t.Errorf("gonew left a Go mention of the template: %s", h)
		}
	}

	// The documented one-line step; scripts run through bash because
	// module zips drop the exec bit.
	run(t, ctx, out, os.Environ(), "bash", "scripts/rename.sh")
	if after := leftovers(t, out, words); len(after) > 0 {
		t.Errorf("after rename.sh the copy still names the template:\n%s", strings.Join(after, "\n"))
	}
	if msg := run(t, ctx, out, os.Environ(), "bash", "scripts/rename.sh"); !strings.Contains(msg, "nothing to do") {
		t.Errorf("a second rename.sh run should find nothing to do, said:\n%s", msg)
	}

	// Build, vet and the fast tests of the copy, with the real module cache
	// for dependencies (the copy's go.sum is the template's).
	buildEnv := goEnv("GOPROXY="+goproxy, "GOSUMDB=off", "GOFLAGS=-mod=mod -buildvcs=false",
		"GONOPROXY=", "GOPRIVATE=", "GONOSUMDB=", "GOWORK=off")
	run(t, ctx, out, buildEnv, "go", "build", "./...")
	// vet type-checks every package's tests too, so all of them compile.
	run(t, ctx, out, buildEnv, "go", "vet", "./...")
	// The tests that show the copy is a working service under its new
	// path: the end-to-end run of cmd/api, config, the handler, and the
	// scripts without their exec bits. The rest of the suite already runs
	// in the template itself; running its timing-sensitive drills a second
	// time, concurrently, would only add load and flakiness.
	testOut := run(t, ctx, out, buildEnv, "go", "test", "-short", "-count=1",
		"./cmd/...", "./internal/config/...", "./internal/server/...", "./internal/scripttest/...")
	t.Logf("go test in the copy:\n%s", testOut)
	if !strings.Contains(testOut, dstMod+"/cmd/api") {
		t.Errorf("the copy's tests did not include %s/cmd/api:\n%s", dstMod, testOut)
	}
}
