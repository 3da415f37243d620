package observability

import (
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestKernelCollectorSeesListenOverflow overflows a real accept queue: a
// listening socket with backlog 1 that never accepts, and more clients
// than the queue holds. The kernel drops their SYNs and counts
// ListenOverflows and ListenDrops in this network namespace.
func TestKernelCollectorSeesListenOverflow(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewKernelCollector("/proc", discardLogger()))

	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))

	overflows0 := gatherValue(t, reg, "kernel_tcp_listen_overflows_total")
	drops0 := gatherValue(t, reg, "kernel_tcp_listen_drops_total")

	// The queue holds backlog+1 = 2 connections; the other SYNs are dropped.
	const clients = 12
	var wg sync.WaitGroup
	var mu sync.Mutex
	var connected, timedOut int
	var conns []net.Conn
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				timedOut++
				return
			}
			connected++
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}

	overflows := gatherValue(t, reg, "kernel_tcp_listen_overflows_total") - overflows0
	drops := gatherValue(t, reg, "kernel_tcp_listen_drops_total") - drops0
	t.Logf("backlog 1, %d clients: %d connected, %d timed out; ListenOverflows +%v, ListenDrops +%v", clients, connected, timedOut, overflows, drops)
	if timedOut == 0 {
		t.Fatalf("no client was refused by the full queue: the kernel accepted %d connections on a backlog of 1", connected)
	}
	// Every refused client's SYN was dropped at least once.
	if overflows < float64(timedOut) || drops < overflows {
		t.Fatalf("ListenOverflows +%v, ListenDrops +%v for %d dropped clients", overflows, drops, timedOut)
	}
}

// A listener on ":port" is an IPv6 socket, and so is every connection it
// accepts, IPv4 clients' included: inuse must count them (sockstat6), or
// the service's own connections are missing from it. The test holds 50
// such connections open; inuse must exceed the IPv4 count read around the
// scrape by at least most of them (other processes' sockets come and go).
