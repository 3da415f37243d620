package observability

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// KernelSysctls are the sysctls exported as kernel_sysctl{name}: the ones the
// EOF diagnosis compares with the recommended values (backlog sizes, TCP
// keepalive, FIN/TIME_WAIT handling). They are read through /proc/sys of the
// process's own network namespace, so in a pod they are the pod's values.
var KernelSysctls = []string{
	"net.core.somaxconn",
	"net.ipv4.tcp_max_syn_backlog",
	"net.ipv4.tcp_keepalive_time",
	"net.ipv4.tcp_keepalive_intvl",
	"net.ipv4.tcp_keepalive_probes",
	"net.ipv4.tcp_fin_timeout",
	"net.ipv4.tcp_tw_reuse",
}

// kernelCounter is one TCP counter of /proc/self/net/{netstat,snmp}.
type kernelCounter struct {
	desc *prometheus.Desc
	get  func(procfs.ProcNetstat, procfs.ProcSnmp) *float64
}

type kernelCollector struct {
	fs       procfs.FS
	root     string
	fsErr    error
	counters []kernelCounter
	sockets  *prometheus.Desc
	sysctl   *prometheus.Desc
	log      *limitedLog
}

// NewKernelCollector returns the collector of the process's network-namespace
// TCP counters (ListenOverflows, ListenDrops, TCPAbortOn*, TCPTimeouts,
// RetransSegs, EstabResets), TCP socket counts and the KernelSysctls, read
// with procfs under procRoot ("/proc" in production). A file that is missing
// or unreadable (not Linux, a locked-down sandbox) makes its metrics absent;
// the scrape never fails because of it. Read problems are logged at debug,
// at most once a minute.
func NewKernelCollector(procRoot string, logger *slog.Logger) prometheus.Collector {
	fs, err := procfs.NewFS(procRoot)
	counter := func(name, help string, get func(procfs.ProcNetstat, procfs.ProcSnmp) *float64) kernelCounter {
		return kernelCounter{desc: prometheus.NewDesc(name, help, nil, nil), get: get}
	}
	return &kernelCollector{
		fs:    fs,
		root:  procRoot,
		fsErr: err,
		counters: []kernelCounter{
			counter("kernel_tcp_listen_overflows_total", "TcpExt ListenOverflows: SYNs and completed handshakes that found a listener's accept queue full (a client's retransmitted SYN counts again).",
				func(n procfs.ProcNetstat, _ procfs.ProcSnmp) *float64 { return n.ListenOverflows }),
			counter("kernel_tcp_listen_drops_total", "TcpExt ListenDrops: SYNs and handshakes dropped at a listener for any reason (overflows included).",
				func(n procfs.ProcNetstat, _ procfs.ProcSnmp) *float64 { return n.ListenDrops }),
			counter("kernel_tcp_abort_on_data_total", "TcpExt TCPAbortOnData: connections reset because data arrived after the application closed its socket, or closed with SO_LINGER 0.",
				func(n procfs.ProcNetstat, _ procfs.ProcSnmp) *float64 { return n.TCPAbortOnData }),
			counter("kernel_tcp_abort_on_close_total", "TcpExt TCPAbortOnClose: connections reset because the application closed them with unread data.",
				func(n procfs.ProcNetstat, _ procfs.ProcSnmp) *float64 { return n.TCPAbortOnClose }),
			counter("kernel_tcp_abort_on_timeout_total", "TcpExt TCPAbortOnTimeout: connections dropped after exhausting retransmissions, keepalive or zero-window probes.",
				func(n procfs.ProcNetstat, _ procfs.ProcSnmp) *float64 { return n.TCPAbortOnTimeout }),
			counter("kernel_tcp_timeouts_total", "TcpExt TCPTimeouts: retransmission timeouts.",
				func(n procfs.ProcNetstat, _ procfs.ProcSnmp) *float64 { return n.TCPTimeouts }),
			counter("kernel_tcp_retrans_segs_total", "Tcp RetransSegs: TCP segments retransmitted.",
				func(_ procfs.ProcNetstat, s procfs.ProcSnmp) *float64 { return s.RetransSegs }),
			counter("kernel_tcp_estab_resets_total", "Tcp EstabResets: established connections reset (RST received or sent).",
				func(_ procfs.ProcNetstat, s procfs.ProcSnmp) *float64 { return s.EstabResets }),
		},
		sockets: prometheus.NewDesc("kernel_tcp_sockets", "TCP sockets by state (/proc/net/sockstat and sockstat6): inuse (IPv4 and IPv6) and tw of the network namespace; orphan and alloc are the node's, which the kernel counts globally.", []string{"state"}, nil),
		sysctl:  prometheus.NewDesc("kernel_sysctl", "Effective value of a kernel setting in this network namespace.", []string{"name"}, nil),
		log:     newLimitedLog(logger, 1.0/60, 1),
	}
}

func (k *kernelCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range k.counters {
		ch <- c.desc
	}
	ch <- k.sockets
	ch <- k.sysctl
}

func (k *kernelCollector) Collect(ch chan<- prometheus.Metric) {
	if k.fsErr != nil {
		k.problem("procfs", k.fsErr)
		return
	}
	k.collectTCP(ch)
	k.collectSockets(ch)
	for _, name := range KernelSysctls {
		v, err := k.fs.SysctlInts(name)
		if err != nil || len(v) == 0 {
			k.problem(name, err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(k.sysctl, prometheus.GaugeValue, float64(v[0]), name)
	}
}

// collectTCP reads /proc/<self>/net/{netstat,snmp}: the counters of the
// network namespace this process lives in (the pod's, not the node's).
func (k *kernelCollector) collectTCP(ch chan<- prometheus.Metric) {
	self, err := k.fs.Self()
	if err != nil {
		k.problem("self", err)
		return
	}
	netstat, nerr := self.Netstat()
	if nerr != nil {
		k.problem("net/netstat", nerr)
	} else if netstat.TCPAbortOnTimeout == nil {
		// procfs v0.23 declares TCPAbortOnTimeout but never parses it.
		netstat.TCPAbortOnTimeout = tcpExtField(k.root, self.PID, "TCPAbortOnTimeout")
	}
	snmp, serr := self.Snmp()
	if serr != nil {
		k.problem("net/snmp", serr)
	}
	for _, c := range k.counters {
		if v := c.get(netstat, snmp); v != nil {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, *v)
		}
	}
}

// collectSockets reads /proc/net/sockstat, and sockstat6 for the IPv6
// sockets: a listener on ":port" is an IPv6 socket, and so is every
// connection it accepts, IPv4 clients' included, so without sockstat6 the
// service's own connections would be missing from inuse. tw already counts
// both families. sockstat6 is absent when IPv6 is disabled: inuse is then
// the IPv4 count alone.
func (k *kernelCollector) collectSockets(ch chan<- prometheus.Metric) {
	st, err := k.fs.NetSockstat()
	if err != nil {
		k.problem("net/sockstat", err)
		return
	}
	inuse6 := 0
	if st6, err := k.fs.NetSockstat6(); err == nil {
		for _, p := range st6.Protocols {
			if p.Protocol == "TCP6" {
				inuse6 = p.InUse
			}
		}
	}
	for _, p := range st.Protocols {
		if p.Protocol != "TCP" {
			continue
		}
		ch <- prometheus.MustNewConstMetric(k.sockets, prometheus.GaugeValue, float64(p.InUse+inuse6), "inuse")
		for _, s := range []struct {
			state string
			v     *int
		}{{"tw", p.TW}, {"orphan", p.Orphan}, {"alloc", p.Alloc}} {
			if s.v != nil {
				ch <- prometheus.MustNewConstMetric(k.sockets, prometheus.GaugeValue, float64(*s.v), s.state)
			}
		}
	}
}

func (k *kernelCollector) problem(what string, err error) {
	msg := "missing"
	if err != nil {
		msg = err.Error()
	}
	k.log.Log(context.Background(), slog.LevelDebug, "kernel metrics unavailable",
		slog.String("source", what), slog.String("error", msg))
}

// tcpExtField reads one TcpExt counter of /proc/<pid>/net/netstat (pairs of
// "TcpExt: names..." and "TcpExt: values..." lines); nil if absent.
func tcpExtField(root string, pid int, field string) *float64 {
	b, err := os.ReadFile(filepath.Join(root, strconv.Itoa(pid), "net", "netstat"))
	if err != nil {
		return nil
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(names) != len(values) {
			continue
		}
		for j, n := range names {
			if n == field {
				v, err := strconv.ParseFloat(values[j], 64)
				if err != nil {
					return nil
				}
				return &v
			}
		}
	}
	return nil
}
