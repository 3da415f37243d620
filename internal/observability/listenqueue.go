package observability

import (
	"context"
	"log/slog"
	"net"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// ListenQueues reports the accept queue of the service's own listeners: how
// many connections have finished their handshake and wait for accept(2),
// and the most the kernel holds before it drops handshakes (what
// kernel_tcp_listen_overflows_total then counts). The queue is read at
// scrape time (TCP_INFO on the listening socket, as ss reads it): it is 0
// while the process keeps up, and grows when the process falls behind its
// connections (CPU throttling, a burst of new connections, long GC
// pauses). The limit is fixed when a listener is opened: min(backlog,
// net.core.somaxconn at that moment); a kernel_sysctl somaxconn above it
// means the setting was raised after the process started.
//
// Linux only; elsewhere, and for a listener that is closed or is not a
// TCP socket, it reports nothing.
type ListenQueues struct {
	length, limit *prometheus.Desc
	log           *limitedLog

	mu        sync.Mutex
	listeners []namedListener
}

type namedListener struct {
	name string
	ln   net.Listener
}

// NewListenQueues returns a collector with no listeners; Add names them.
func NewListenQueues(logger *slog.Logger) *ListenQueues {
	return &ListenQueues{
		length: prometheus.NewDesc("http_server_listen_queue_connections",
			"Connections with a finished TCP handshake waiting in the listener's accept queue for the process to accept them, read at scrape time (TCP_INFO).",
			[]string{"listener"}, nil),
		limit: prometheus.NewDesc("http_server_listen_queue_limit_connections",
			"Most connections the listener's accept queue holds: min(listen backlog, net.core.somaxconn when the listener was opened). A full queue drops handshakes (kernel_tcp_listen_overflows_total).",
			[]string{"listener"}, nil),
		log: newLimitedLog(logger, 1.0/60, 1),
	}
}

// Add reports ln's queue as listener=name. ln is the listener net.Listen
// returned (a *net.TCPListener), not a wrapper around it.
func (q *ListenQueues) Add(name string, ln net.Listener) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.listeners = append(q.listeners, namedListener{name, ln})
}

func (q *ListenQueues) Describe(ch chan<- *prometheus.Desc) {
	ch <- q.length
	ch <- q.limit
}

func (q *ListenQueues) Collect(ch chan<- prometheus.Metric) {
	q.mu.Lock()
	ls := append([]namedListener(nil), q.listeners...)
	q.mu.Unlock()
	for _, l := range ls {
		length, limit, err := listenQueue(l.ln)
		if err != nil {
			q.log.Log(context.Background(), slog.LevelDebug, "listen queue not readable",
				slog.String("listener", l.name), slog.String("error", err.Error()))
			continue
		}
		ch <- prometheus.MustNewConstMetric(q.length, prometheus.GaugeValue, float64(length), l.name)
		ch <- prometheus.MustNewConstMetric(q.limit, prometheus.GaugeValue, float64(limit), l.name)
	}
}
