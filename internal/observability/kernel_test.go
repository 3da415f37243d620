package observability

import (
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fakeProc writes a minimal procfs tree: self -> 4242, its net files, the
// namespace's sockstat and the sysctls.
func fakeProc(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("4242", filepath.Join(root, "self")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "4242"), 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestKernelCollectorReadsProcfs(t *testing.T) {
	root := fakeProc(t, map[string]string{
		"4242/net/netstat": "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeouts TCPAbortOnData TCPAbortOnClose TCPAbortOnTimeout\n" +
			"TcpExt: 0 7 9 4 1 2 3\n" +
			"IpExt: InOctets OutOctets\n" +
			"IpExt: 100 200\n",
		"4242/net/snmp": "Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n" +
			"Tcp: 1 200 120000 -1 10 20 0 11 3 1000 1100 13 0 5 0\n",
		"net/sockstat":                      "sockets: used 16\nTCP: inuse 2 orphan 1 tw 945 alloc 3 mem 0\nUDP: inuse 0 mem 0\n",
		"net/sockstat6":                     "TCP6: inuse 31\nUDP6: inuse 1\nUDPLITE6: inuse 0\nRAW6: inuse 0\nFRAG6: inuse 0 memory 0\n",
		"sys/net/core/somaxconn":            "4096\n",
		"sys/net/ipv4/tcp_max_syn_backlog":  "8192\n",
		"sys/net/ipv4/tcp_keepalive_time":   "600\n",
		"sys/net/ipv4/tcp_keepalive_intvl":  "30\n",
		"sys/net/ipv4/tcp_keepalive_probes": "5\n",
		"sys/net/ipv4/tcp_fin_timeout":      "15\n",
		"sys/net/ipv4/tcp_tw_reuse":         "1\n",
	})
	c := NewKernelCollector(root, discardLogger())
	want := `
# HELP kernel_tcp_listen_overflows_total TcpExt ListenOverflows: SYNs and completed handshakes that found a listener's accept queue full (a client's retransmitted SYN counts again).
# TYPE kernel_tcp_listen_overflows_total counter
kernel_tcp_listen_overflows_total 7
# HELP kernel_tcp_listen_drops_total TcpExt ListenDrops: SYNs and handshakes dropped at a listener for any reason (overflows included).
# TYPE kernel_tcp_listen_drops_total counter
kernel_tcp_listen_drops_total 9
# HELP kernel_tcp_abort_on_data_total TcpExt TCPAbortOnData: connections reset because data arrived after the application closed its socket, or closed with SO_LINGER 0.
# TYPE kernel_tcp_abort_on_data_total counter
kernel_tcp_abort_on_data_total 1
# HELP kernel_tcp_abort_on_close_total TcpExt TCPAbortOnClose: connections reset because the application closed them with unread data.
# TYPE kernel_tcp_abort_on_close_total counter
kernel_tcp_abort_on_close_total 2
# HELP kernel_tcp_abort_on_timeout_total TcpExt TCPAbortOnTimeout: connections dropped after exhausting retransmissions, keepalive or zero-window probes.
# TYPE kernel_tcp_abort_on_timeout_total counter
kernel_tcp_abort_on_timeout_total 3
# HELP kernel_tcp_timeouts_total TcpExt TCPTimeouts: retransmission timeouts.
# TYPE kernel_tcp_timeouts_total counter
kernel_tcp_timeouts_total 4
# HELP kernel_tcp_retrans_segs_total Tcp RetransSegs: TCP segments retransmitted.
# TYPE kernel_tcp_retrans_segs_total counter
kernel_tcp_retrans_segs_total 13
# HELP kernel_tcp_estab_resets_total Tcp EstabResets: established connections reset (RST received or sent).
# TYPE kernel_tcp_estab_resets_total counter
kernel_tcp_estab_resets_total 11
# HELP kernel_tcp_sockets TCP sockets by state (/proc/net/sockstat and sockstat6): inuse (IPv4 and IPv6) and tw of the network namespace; orphan and alloc are the node's, which the kernel counts globally.
# TYPE kernel_tcp_sockets gauge
kernel_tcp_sockets{state="alloc"} 3
kernel_tcp_sockets{state="inuse"} 33
kernel_tcp_sockets{state="orphan"} 1
kernel_tcp_sockets{state="tw"} 945
# HELP kernel_sysctl Effective value of a kernel setting in this network namespace.
# TYPE kernel_sysctl gauge
kernel_sysctl{name="net.core.somaxconn"} 4096
kernel_sysctl{name="net.ipv4.tcp_fin_timeout"} 15
kernel_sysctl{name="net.ipv4.tcp_keepalive_intvl"} 30
kernel_sysctl{name="net.ipv4.tcp_keepalive_probes"} 5
kernel_sysctl{name="net.ipv4.tcp_keepalive_time"} 600
kernel_sysctl{name="net.ipv4.tcp_max_syn_backlog"} 8192
kernel_sysctl{name="net.ipv4.tcp_tw_reuse"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// Missing or broken files make metrics absent; the scrape still succeeds.
func TestKernelCollectorMissingFiles(t *testing.T) {
	cases := map[string]string{
		"empty root":   t.TempDir(),
		"missing root": filepath.Join(t.TempDir(), "nope"),
		"only sockstat and one sysctl": fakeProc(t, map[string]string{
			"net/sockstat":                 "sockets: used 1\nTCP: inuse 5 orphan 0 tw 6 alloc 7 mem 0\n",
			"sys/net/core/somaxconn":       "128\n",
			"4242/net/netstat":             "TcpExt: ListenOverflows\nTcpExt: 1 2\n", // malformed
			"sys/net/ipv4/tcp_fin_timeout": "soon\n",                                 // not a number
		}),
	}
	for name, root := range cases {
		t.Run(name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(NewKernelCollector(root, discardLogger()))
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatalf("gather: %v", err)
			}
			got := map[string]int{}
			for _, mf := range mfs {
				got[mf.GetName()] = len(mf.GetMetric())
			}
			if name != "only sockstat and one sysctl" {
				if len(got) != 0 {
					t.Fatalf("reported %v from nothing", got)
				}
				return
			}
			if got["kernel_tcp_sockets"] != 4 || got["kernel_sysctl"] != 1 || len(got) != 2 {
				t.Fatalf("families = %v, want 4 socket states and somaxconn only", got)
			}
		})
	}
}

func gatherValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	t.Fatalf("%s not collected", name)
	return 0
}

func TestKernelCollectorCountsIPv6Sockets(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("sockstat is Linux's")
	}
	if _, err := os.Stat("/proc/net/sockstat6"); err != nil {
		t.Skip("IPv6 is disabled here: no /proc/net/sockstat6")
	}
	ln, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Skipf("no dual-stack listener: %v", err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	const n = 50
	accepted := make(chan net.Conn, n)
	go func() {
		for range n {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	for range n {
		c, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		select {
		case s := <-accepted:
			defer s.Close()
		case <-time.After(5 * time.Second):
			t.Fatal("connection not accepted")
		}
	}
	v4 := func() int {
		b, err := os.ReadFile("/proc/net/sockstat")
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b)[strings.Index(string(b), "TCP: inuse "):])
		v, err := strconv.Atoi(f[2])
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewKernelCollector("/proc", discardLogger()))
	before := v4()
	mfs, err := reg.Gather()
	after := v4()
	if err != nil {
		t.Fatal(err)
	}
	inuse := -1.0
	for _, mf := range mfs {
		if mf.GetName() != "kernel_tcp_sockets" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == "inuse" {
				inuse = m.GetGauge().GetValue()
			}
		}
	}
	if floor := float64(max(before, after) + n - 10); inuse < floor {
		// Without sockstat6 inuse is the IPv4 count alone.
		t.Fatalf("inuse %v with %d accepted IPv6 connections open and %d-%d IPv4 sockets: want at least %v", inuse, n, before, after, floor)
	}
}
