package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hardenedgo/ginservice/internal/testkit"
)

// startBinaryInNetns runs the binary in a network namespace of its own, as
// a pod's container runs, with net.core.somaxconn set there before it
// starts, as the sysctl init container of deploy/k8s sets it.
func startBinaryInNetns(t *testing.T, somaxconn int, extra map[string]string) *proc {
	t.Helper()
	return startBinaryInNetnsScript(t, `echo "`+strconv.Itoa(somaxconn)+`" > /proc/sys/net/core/somaxconn`, extra)
}

// startBinaryInNetnsScript runs the binary in a network namespace of its
// own, after the shell commands setup have run there (as root, with
// extra in the environment).
func startBinaryInNetnsScript(t *testing.T, setup string, extra map[string]string) *proc {
	t.Helper()
	requireNetns(t)
	// unshare execs sh, which execs the binary: one process, whose PID
	// names the namespace.
	cmd := exec.Command("unshare", "--net", "sh", "-ec", "ip link set lo up\n"+setup+"\nexec \"$1\"", "sh", binPath)
	return startCommand(t, cmd, extra, nil)
}

// requireNetns fails the test (skips it outside CI) unless network
// namespaces can be made here and the tools that set them up are present.
func requireNetns(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"unshare", "ip", "nsenter", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found (util-linux, iproute2): %v", tool, err)
		}
	}
	if out, err := exec.Command("unshare", "--net", "true").CombinedOutput(); err != nil {
		// Creating a network namespace needs CAP_SYS_ADMIN: root on CI,
		// where this test must run.
		if os.Getenv("CI") != "" {
			t.Fatalf("cannot create a network namespace (CI is set, so this test must run; run as root): %v %s", err, out)
		}
		t.Skipf("cannot create a network namespace here (not root?): %v %s", err, out)
	}
}

// netnsDial dials addr from inside the network namespace of process pid:
// the socket is created on a thread moved into that namespace, which is
// thrown away afterwards (its goroutine exits locked to it).
func netnsDial(pid int, addr string, timeout time.Duration) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns: %w", err)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, timeout)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// netnsClient is an HTTP client whose connections are made in pid's
// network namespace.
func netnsClient(pid int) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
			return netnsDial(pid, addr, 2*time.Second)
		},
	}}
}

func scrapeWith(t *testing.T, client *http.Client, admin, series string) float64 {
	t.Helper()
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	v, ok := seriesValue(string(b), series)
	if !ok {
		t.Fatalf("no series %s in the scrape", series)
	}
	return v
}

// TestListenBacklogFollowsTheNetnsSomaxconn holds the service to SPEC §5's
// "listen backlog respects net.core.somaxconn" where it matters, in a pod's
// own network namespace: the binary starts in a fresh namespace whose
// somaxconn is 5, is stopped (SIGSTOP, as a process that stops accepting:
// CPU-throttled, stuck in GC, frozen) and is sent more connections than
// that. The accept queue holds somaxconn+1 of them (the kernel refuses a
// connection only when the queue already holds more than the backlog), the
// other clients' SYNs are dropped and time out, and the service's own
// kernel counters, read from its namespace and nobody else's, count those
// drops and nothing else. Once it runs again the queued connections are
// served.
func TestListenBacklogFollowsTheNetnsSomaxconn(t *testing.T) {
	const somaxconn = 5
	p := startBinaryInNetns(t, somaxconn, map[string]string{"RATELIMIT_ENABLED": "false"})
	pid := p.cmd.Process.Pid
	client := netnsClient(pid)

	if got := scrapeWith(t, client, p.admin, `kernel_sysctl{name="net.core.somaxconn"}`); got != somaxconn {
		t.Fatalf(`kernel_sysctl{name="net.core.somaxconn"} = %v in the service's namespace, want %d`, got, somaxconn)
	}
	overflows0 := scrapeWith(t, client, p.admin, "kernel_tcp_listen_overflows_total")
	drops0 := scrapeWith(t, client, p.admin, "kernel_tcp_listen_drops_total")
	if overflows0 != 0 {
		t.Fatalf("a fresh namespace already counts %v listen overflows", overflows0)
	}

	// The listener's backlog as the kernel holds it: ss's Send-Q of a
	// LISTEN socket is its maximum accept queue, Recv-Q what waits in it.
	_, port, _ := net.SplitHostPort(p.public)
	if _, backlog := testkit.ListenQueue(t, port, pid); backlog != somaxconn {
		t.Fatalf("public listener's backlog %d, want the namespace's somaxconn %d", backlog, somaxconn)
	}
	// The service reports the same limit for both its listeners, and an
	// empty queue while it accepts.
	for _, l := range []string{"public", "admin"} {
		if got := scrapeWith(t, client, p.admin, `http_server_listen_queue_limit_connections{listener="`+l+`"}`); got != somaxconn {
			t.Fatalf("http_server_listen_queue_limit_connections{listener=%q} = %v, want %d", l, got, somaxconn)
		}
		if got := scrapeWith(t, client, p.admin, `http_server_listen_queue_connections{listener="`+l+`"}`); got != 0 {
			t.Fatalf("http_server_listen_queue_connections{listener=%q} = %v while the service accepts, want 0", l, got)
		}
	}

	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := sync.OnceFunc(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	t.Cleanup(cont)
	// The signal takes a moment to stop every thread; one still running
	// could accept a connection.
	waitStopped(t, pid)

	// Fill the queue one connection at a time: somaxconn+1 fit.
	var connected []net.Conn
	t.Cleanup(func() {
		for _, c := range connected {
			c.Close()
		}
	})
	for i := range somaxconn + 1 {
		c, err := netnsDial(pid, p.public, 2*time.Second)
		if err != nil {
			t.Fatalf("connection %d of the %d the queue holds: %v", i+1, somaxconn+1, err)
		}
		connected = append(connected, c)
	}
	// All of them in the queue before more come: a handshake whose last
	// ACK found the queue full would leave a client that believes it is
	// connected and a server that dropped it.
	waitFor(t, 2*time.Second, "the accept queue to fill", func() bool {
		queued, _ := testkit.ListenQueue(t, port, pid)
		return queued == somaxconn+1
	})

	// Then more at once: every SYN finds the queue full and is dropped,
	// and so is its retransmission; the clients time out.
	const more = 10
	var (
		mu     sync.Mutex
		got    []string
		wg     sync.WaitGroup
		extras []net.Conn
	)
	for range more {
		wg.Go(func() {
			c, err := netnsDial(pid, p.public, 1500*time.Millisecond)
			mu.Lock()
			defer mu.Unlock()
			var ne net.Error
			switch {
			case err == nil:
				extras = append(extras, c)
				got = append(got, "connected")
			case errors.As(err, &ne) && ne.Timeout():
				got = append(got, "timeout")
			default:
				got = append(got, err.Error())
			}
		})
	}
	wg.Wait()
	for _, c := range extras {
		c.Close()
	}
	cont()
	timedOut := 0
	for _, g := range got {
		if g == "timeout" {
			timedOut++
		}
	}
	t.Logf("somaxconn %d, a stopped service: %d connections queued, then %d more: %d timed out", somaxconn, len(connected), more, timedOut)
	if timedOut != more {
		t.Fatalf("clients beyond a full queue: %v; want every one to time out", got)
	}

	// Once the process runs again it accepts and reads the queued
	// connections, each of which had waited out the stop (the 1.5 s
	// timeouts of the clients after them at least).
	waitFor(t, 5*time.Second, "the queued connections' first reads", func() bool {
		return scrapeWith(t, client, p.admin, "http_server_accept_wait_seconds_count") == float64(len(connected))
	})
	if short := scrapeWith(t, client, p.admin, `http_server_accept_wait_seconds_bucket{le="1"}`); short != 0 {
		t.Errorf("accept waits: %v of the %d queued connections waited 1 s or less, want none", short, len(connected))
	}

	// The queued connections are served.
	for i, c := range connected {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(c, "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
			t.Fatalf("queued connection %d: write: %v", i, err)
		}
		b := make([]byte, 12)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "HTTP/1.1 200" {
			t.Fatalf("queued connection %d: got %q, %v; want HTTP/1.1 200", i, b, err)
		}
	}

	overflows := scrapeWith(t, client, p.admin, "kernel_tcp_listen_overflows_total") - overflows0
	drops := scrapeWith(t, client, p.admin, "kernel_tcp_listen_drops_total") - drops0
	t.Logf("ListenOverflows +%v, ListenDrops +%v", overflows, drops)
	// Each refused client's SYN counts, its retransmitted SYN again: at
	// least one per refused client; the connected ones add nothing.
	if overflows < float64(timedOut) {
		t.Fatalf("ListenOverflows +%v for %d refused clients, want at least one each", overflows, timedOut)
	}
	if drops < overflows {
		t.Fatalf("ListenDrops +%v below ListenOverflows +%v (drops include overflows)", drops, overflows)
	}
}

// waitStopped waits until every thread of process pid is stopped (state T
// in /proc/PID/task/*/stat).
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		stats, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		stopped := len(stats) > 0
		for _, f := range stats {
			b, err := os.ReadFile(f)
			// The state follows the command name's closing parenthesis.
			i := bytes.LastIndexByte(b, ')')
			if err != nil || i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
				stopped = false
				break
			}
		}
		if stopped {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d did not stop", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
