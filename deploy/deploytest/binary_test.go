package deploytest

import (
	"bufio"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/config"
)

// forbiddenInBinary are this package's test-only modules.
var forbiddenInBinary = []string{
	"sigs.k8s.io/kustomize/api",
	"sigs.k8s.io/kustomize/kyaml",
	"github.com/moby/buildkit",
	"github.com/moby/patternmatcher",
	"k8s.io/api",
	"k8s.io/apimachinery",
}

// builtBinary is the service built once per test run by the Dockerfile's own
// `go build` line.
var builtBinary struct {
	once sync.Once
	path string
	err  error
	out  string
}

const testVersion = "v0.0.0-deploytest"
const testCommit = "0123abc"

// buildWithDockerfileLine runs the RUN line of the Dockerfile (variables
// expanded by sh, as in the image build) with -o pointing at a temp dir.
func buildWithDockerfileLine(t *testing.T) string {
	t.Helper()
	requireCmdAPI(t)
	_, stages := dockerfile(t)
	line := goBuild(t, stages)
	builtBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "deploytest-bin-")
		if err != nil {
			builtBinary.err = err
			return
		}
		bin := filepath.Join(dir, "api")
		i := strings.Index(line, "-o ")
		if i < 0 {
			builtBinary.err = fmt.Errorf("no -o in %q", line)
			return
		}
		rest := strings.Fields(line[i+3:])
		cmdline := strings.Replace(line, "-o "+rest[0], "-o "+bin, 1)
		cmd := exec.Command("sh", "-c", cmdline)
		cmd.Dir = repoRoot(t)
		cmd.Env = append(os.Environ(),
			"VERSION="+testVersion, "COMMIT="+testCommit,
			"TARGETOS="+runtime.GOOS, "TARGETARCH="+runtime.GOARCH,
			"PATH="+filepath.Join(runtime.GOROOT(), "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		builtBinary.path, builtBinary.err, builtBinary.out = bin, err, cmdline+"\n"+string(out)
	})
	if builtBinary.err != nil {
		t.Fatalf("Dockerfile build line failed: %v\n%s", builtBinary.err, builtBinary.out)
	}
	return builtBinary.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBinary.path != "" {
		os.RemoveAll(filepath.Dir(builtBinary.path))
	}
	os.Exit(code)
}

func TestBinaryHasNoTestOnlyDependencies(t *testing.T) {
	bin := buildWithDockerfileLine(t)
	out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, out)
	}
	info := string(out)
	deps, bad := testOnlyDeps(info)
	for _, m := range bad {
		t.Errorf("the service binary links test-only module %s", m)
	}
	if deps < 5 {
		t.Fatalf("go version -m lists %d deps; unexpected output:\n%s", deps, info)
	}
	// With -trimpath the Go command leaves -ldflags out of the build info:
	// the version stamp is checked on the running binary
	// (TestImageHealthcheckAndVersionStamp), stripping on the ELF file.
	for _, want := range []string{"build\tCGO_ENABLED=0", "build\t-trimpath=true"} {
		if !strings.Contains(info, want) {
			t.Errorf("go version -m lacks %q:\n%s", want, trimLines(info, 20))
		}
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, sec := range []string{".symtab", ".debug_info"} {
		if f.Section(sec) != nil {
			t.Errorf("binary has a %s section: not built with -ldflags \"-s -w\"", sec)
		}
	}
	if f.Section(".interp") != nil {
		t.Error("binary has an ELF interpreter: not static (CGO_ENABLED=0), it cannot run on distroless/static")
	}
}

// testOnlyDeps counts the dep lines of `go version -m` output and returns
// the test-only modules among them.
func testOnlyDeps(info string) (deps int, bad []string) {
	for _, line := range strings.Split(info, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "dep" || f[0] == "=>") {
			deps++
			for _, forbidden := range forbiddenInBinary {
				if f[1] == forbidden || strings.HasPrefix(f[1], forbidden+"/") {
					bad = append(bad, f[1])
				}
			}
		}
	}
	return deps, bad
}

func TestTestOnlyDepsDetection(t *testing.T) {
	info := "x: go1.26\n\tpath\tx/cmd/api\n\tdep\tgithub.com/gin-gonic/gin\tv1.12.0\n\tdep\tk8s.io/apimachinery\tv0.37.2\n\tdep\tk8s.io/apiextensions\tv1\n\tdep\tsigs.k8s.io/kustomize/api\tv0.21.0\n"
	deps, bad := testOnlyDeps(info)
	if deps != 4 || len(bad) != 2 || bad[0] != "k8s.io/apimachinery" || bad[1] != "sigs.k8s.io/kustomize/api" {
		t.Errorf("testOnlyDeps = %d, %v", deps, bad)
	}
}

// serviceFreeEnv is the test's environment without any variable the service
// reads, so a REDIS_URL or OTEL_* of the machine cannot change the run.
func serviceFreeEnv() []string {
	read := map[string]bool{}
	for _, v := range config.Vars() {
		read[v.Name] = true
	}
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if read[k] || strings.HasPrefix(k, "OTEL_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// service is the built binary running as a child process.
type service struct {
	cmd    *exec.Cmd
	logs   *strings.Builder // stdout and stderr; read it only after exited
	exited chan error       // the process's exit, once its output is drained
}

// startService runs bin with env and waits until it answers /healthz on
// httpAddr. The process is killed when the test ends if it is still running.
func startService(t *testing.T, bin string, env []string, httpAddr string) *service {
	t.Helper()
	srv := exec.Command(bin)
	srv.Env = env
	stdout, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	srv.Stderr = srv.Stdout
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	svc := &service{cmd: srv, logs: &strings.Builder{}, exited: make(chan error, 1)}
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			svc.logs.WriteString(sc.Text() + "\n")
		}
	}()
	go func() { <-logsDone; svc.exited <- srv.Wait() }()
	t.Cleanup(func() {
		if srv.ProcessState == nil {
			_ = srv.Process.Kill()
			<-svc.exited
		}
	})

	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return svc
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("service did not answer /healthz on %s: %v", httpAddr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestImageHealthcheckAndVersionStamp(t *testing.T) {
	bin := buildWithDockerfileLine(t)
	httpAddr, adminAddr := freePort(t), freePort(t)
	env := append(serviceFreeEnv(), "HTTP_ADDR="+httpAddr, "ADMIN_ADDR="+adminAddr, "SHUTDOWN_DELAY=0s", "SHUTDOWN_TIMEOUT=2s", "LOG_LEVEL=warn")

	healthcheck := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "healthcheck")
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
	// Nothing listens yet: the HEALTHCHECK command must fail.
	if err := healthcheck(); err == nil {
		t.Fatal("api healthcheck succeeded with no server running")
	}

	svc := startService(t, bin, env, httpAddr)
	if err := healthcheck(); err != nil {
		t.Fatalf("api healthcheck against a running service: %v", err)
	}

	// -X main.version reached the binary: service_build_info carries it.
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var info string
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "service_build_info{") {
			info = line
		}
	}
	if !strings.Contains(info, `version="`+testVersion+`"`) || !strings.Contains(info, `commit="`+testCommit+`"`) {
		t.Errorf("service_build_info %q does not carry the stamped version %s and commit %s", info, testVersion, testCommit)
	}

	// SIGTERM: the service drains and exits cleanly; then the check fails.
	if err := svc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-svc.exited:
		if err != nil {
			t.Errorf("service exited with %v after SIGTERM\n%s", err, svc.logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("service did not exit within 15s of SIGTERM")
	}
	if err := healthcheck(); err == nil {
		t.Error("api healthcheck succeeded after the service stopped")
	}
}
