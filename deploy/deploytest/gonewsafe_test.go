package deploytest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// deploymentFiles are the non-Go files these tests cover. A gonew copy
// rewrites only go.mod and Go imports, so none of them may name the module.
var deploymentFiles = []string{
	"Dockerfile", ".dockerignore",
	"deploy/k8s", "deploy/chaos", "deploy/alertmanager", "deploy/README.md",
	"deploy/deploytest/testdata",
}

// moduleNamePatterns: the module path, its path without the host, and each
// distinctive element after the host (>= 6 characters, as a whole word,
// case-sensitive), read from go.mod so a gonew copy checks its own name.
func moduleNamePatterns(t *testing.T) []*regexp.Regexp {
	t.Helper()
	mod := readGoMod(t).Module.Mod.Path
	out := []*regexp.Regexp{regexp.MustCompile(regexp.QuoteMeta(mod))}
	elems := strings.Split(mod, "/")
	if len(elems) > 1 {
		out = append(out, regexp.MustCompile(regexp.QuoteMeta(strings.Join(elems[1:], "/"))))
		for _, e := range elems[1:] {
			if len(e) >= 6 {
				out = append(out, regexp.MustCompile(`(^|[^A-Za-z0-9_.-])`+regexp.QuoteMeta(e)+`($|[^A-Za-z0-9_-])`))
			}
		}
	}
	return out
}

func TestDeploymentFilesDoNotNameTheModule(t *testing.T) {
	root := repoRoot(t)
	pats := moduleNamePatterns(t)
	checked := 0
	for _, p := range deploymentFiles {
		err := filepath.WalkDir(filepath.Join(root, p), func(path string, d os.DirEntry, err error) error {
			if os.IsNotExist(err) && path == filepath.Join(root, p) {
				return nil // deploy/README.md may not exist yet in a partial tree
			}
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			checked++
			rel, _ := filepath.Rel(root, path)
			for _, re := range pats {
				if loc := re.FindIndex(data); loc != nil {
					line := 1 + strings.Count(string(data[:loc[0]]), "\n")
					t.Errorf("%s:%d names the module (%s): a gonew copy would keep it", rel, line, re)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if checked < 20 {
		t.Fatalf("only %d files checked", checked)
	}
}

func TestModuleNamePatterns(t *testing.T) {
	pats := moduleNamePatterns(t)
	mod := readGoMod(t).Module.Mod.Path
	last := mod[strings.LastIndex(mod, "/")+1:]
	hits := func(s string) bool {
		for _, re := range pats {
			if re.MatchString(s) {
				return true
			}
		}
		return false
	}
	if !hits("image: ghcr.io/x/" + mod) {
		t.Error("the module path is not caught")
	}
	if len(last) >= 6 && !hits("name: "+last+"\n") {
		t.Errorf("the element %q is not caught", last)
	}
	if hits("name: api\nimage: registry.example.com/api:1.0.0\n") {
		t.Error("neutral names are flagged")
	}
}
