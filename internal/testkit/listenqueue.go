package testkit

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var listenRow = regexp.MustCompile(`(?m)^LISTEN\s+(\d+)\s+(\d+)\s`)

// ListenQueue returns the accept queue of the TCP listener on port as the
// kernel holds it, read with ss (iproute2): the connections waiting in it
// (Recv-Q of a LISTEN socket) and its limit, min(backlog, somaxconn)
// (Send-Q). With nsPID > 0 it is read in that process's network
// namespace (nsenter).
func ListenQueue(t testing.TB, port string, nsPID int) (queued, limit int) {
	t.Helper()
	args := []string{"ss", "-Hltn", "sport = :" + port}
	if nsPID > 0 {
		args = append([]string{"nsenter", "-t", strconv.Itoa(nsPID), "-n"}, args...)
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	m := listenRow.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no listening socket on port %s in ss's output:\n%s", port, out)
	}
	queued, _ = strconv.Atoi(string(m[1]))
	limit, _ = strconv.Atoi(string(m[2]))
	return queued, limit
}

// Somaxconn reads net.core.somaxconn of the test's network namespace: the
// accept-queue limit of a listener opened now (Go asks for it; nginx's
// backlog= is capped by it).
func Somaxconn(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
