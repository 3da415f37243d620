package observability

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hardenedgo/ginservice/internal/testkit"
)

// TestListenQueuesCountsUnacceptedConnections fills a real listener's accept
// queue (connections dialled, none accepted) and reads it back, then
// accepts them and sees it empty.
func TestListenQueuesCountsUnacceptedConnections(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_INFO of a listening socket is Linux only")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	q := NewListenQueues(discardLogger())
	q.Add("public", ln)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(q)

	// The limit Go asked for is net.core.somaxconn, read once when the
	// net package first listens; the kernel caps it at the same value.
	somaxconn := testkit.Somaxconn(t)
	if v, ok := testkit.Metric(t, reg, "http_server_listen_queue_limit_connections", "listener", "public"); !ok || int(v) != somaxconn {
		t.Fatalf("limit = %v (present %v), want somaxconn %d", v, ok, somaxconn)
	}
	if v, _ := testkit.Metric(t, reg, "http_server_listen_queue_connections", "listener", "public"); v != 0 {
		t.Fatalf("queue = %v before any connection, want 0", v)
	}

	const n = 7
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Dial returns when the client has the SYN-ACK; the server side joins
	// the queue when the final ACK arrives, a moment later on loopback.
	waitMetric(t, reg, "http_server_listen_queue_connections", n)

	for range n {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	waitMetric(t, reg, "http_server_listen_queue_connections", 0)

	// A closed listener is no longer reported, and the scrape still works.
	ln.Close()
	if _, ok := testkit.Metric(t, reg, "http_server_listen_queue_connections", "listener", "public"); ok {
		t.Fatal("closed listener still reported")
	}
}

func waitMetric(t *testing.T, g prometheus.Gatherer, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, ok := testkit.Metric(t, g, name, "listener", "public")
		if ok && v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v (present %v), want %v", name, v, ok, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A listener that is not a socket (a wrapper, a test double) is skipped,
// not an error of the scrape.
func TestListenQueuesSkipsNonSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	q := NewListenQueues(discardLogger())
	q.Add("wrapped", struct{ net.Listener }{ln})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(q)
	if _, ok := testkit.Metric(t, reg, "http_server_listen_queue_connections"); ok {
		t.Fatal("a wrapped listener was reported")
	}
}
