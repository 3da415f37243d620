// Package redistest starts real redis-server processes for tests: a single
// node or a small Redis Cluster on free loopback ports, each in its own temp
// dir, stopped by PID when the test ends. It can kill and restart a node for
// fault tests, and put a delaying TCP proxy in front of one.
//
// A missing redis-server binary fails the test when the CI environment
// variable is set (CI must run the real-process tests) and skips it otherwise.
package redistest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is one redis-server process on 127.0.0.1.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	args []string

	// Port is fixed for the life of the Server so a restarted node is found
	// again at the same address.
	Port int
	// Addr is "127.0.0.1:Port".
	Addr string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

// Option adjusts the redis-server command line.
type Option func(*[]string)

// WithArgs appends raw redis-server arguments, e.g. WithArgs("--maxmemory", "10mb").
func WithArgs(args ...string) Option {
	return func(a *[]string) { *a = append(*a, args...) }
}

// Binary returns the path of name (redis-server, redis-cli) or ends the test:
// t.Fatal on CI (a missing binary is a broken CI machine, never a pass), t.Skip
// elsewhere.
func Binary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not found (CI is set, so the real-process tests must run): %v; install it with `bash scripts/ci-deps.sh` or apt-get install redis-server", name, err)
	}
	t.Skipf("%s not found: %v (install redis-server to run this test; on CI it is mandatory)", name, err)
	return ""
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago: the
// kernel picks it (listen on :0), we release it and hand it to the child.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs a standalone redis-server and waits until it answers PING.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	bin := Binary(t, "redis-server")
	var extra []string
	for _, o := range opts {
		o(&extra)
	}
	var lastErr error
	// The port can be taken between FreePort and the child's bind; try again
	// with a new one rather than fail.
	for attempt := 0; attempt < 3; attempt++ {
		s := &Server{t: t, bin: bin, dir: t.TempDir(), Port: FreePort(t)}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
		s.args = append([]string{
			"--port", strconv.Itoa(s.Port),
			"--bind", "127.0.0.1",
			"--protected-mode", "no",
			"--save", "",
			"--appendonly", "no",
			"--daemonize", "no",
			"--dir", s.dir,
			"--logfile", filepath.Join(s.dir, "redis.log"),
		}, extra...)
		if lastErr = s.start(); lastErr == nil {
			t.Cleanup(s.Stop)
			return s
		}
	}
	t.Fatalf("redistest: start redis-server: %v", lastErr)
	return nil
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd := exec.Command(s.bin, s.args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("redis-server exited at start: %s", s.logTail())
		default:
		}
		if err := ping(s.Addr); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.killLocked()
	return fmt.Errorf("redis-server on %s did not answer PING within 10s: %s", s.Addr, s.logTail())
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// URL is the REDIS_URL of this node.
func (s *Server) URL() string { return "redis://" + s.Addr }

// PID of the running process, 0 when it is not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Kill sends SIGKILL to the process (a crash: no shutdown, no save) and waits
// for it to exit.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.t.Errorf("redistest: redis-server pid %d did not exit after SIGKILL", s.cmd.Process.Pid)
	}
	s.cmd = nil
}

// Restart starts the server again on the same port after Kill. It retries
// for a few seconds because the port may linger briefly.
func (s *Server) Restart() {
	s.t.Helper()
	var err error
	for i := 0; i < 20; i++ {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("redistest: restart redis-server on %s: %v", s.Addr, err)
}

// Stop kills the process if it still runs. It is registered with t.Cleanup.
func (s *Server) Stop() { s.Kill() }

// Do sends one command over a fresh connection and returns the reply as text
// (simple strings, integers and bulk strings; arrays are joined with "\n").
// It is meant for test set-up and assertions (INFO, SCRIPT FLUSH, CONFIG SET),
// not for load.
func (s *Server) Do(args ...string) (string, error) { return Do(s.Addr, args...) }

// Do sends one command to addr; see Server.Do.
func Do(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	return readReply(bufio.NewReader(c))
}

func readReply(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", err
		}
		parts := make([]string, 0, max(n, 0))
		for i := 0; i < n; i++ {
			p, err := readReply(r)
			if err != nil {
				return "", err
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, "\n"), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

func ping(addr string) error {
	got, err := Do(addr, "PING")
	if err != nil {
		if strings.Contains(err.Error(), "NOAUTH") {
			return nil // up, and requiring a password (--requirepass)
		}
		return err
	}
	if got != "PONG" {
		return fmt.Errorf("PING answered %q", got)
	}
	return nil
}

// CommandCalls returns the number of calls of a command (lower case, e.g.
// "evalsha") from INFO commandstats.
func (s *Server) CommandCalls(name string) (int64, error) {
	return CommandCalls(s.Addr, name)
}

// CommandCalls reads INFO commandstats on addr; see Server.CommandCalls.
func CommandCalls(addr, name string) (int64, error) {
	info, err := Do(addr, "INFO", "commandstats")
	if err != nil {
		return 0, err
	}
	prefix := "cmdstat_" + strings.ToLower(name) + ":"
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		for _, kv := range strings.Split(strings.TrimPrefix(line, prefix), ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				return strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return 0, nil // never called
}
