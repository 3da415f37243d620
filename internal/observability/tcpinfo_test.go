package observability

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// closeLine returns the first "connection closed" line with reason.
func closeLine(logs, reason string) map[string]any {
	for _, l := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "connection closed" && m["reason"] == reason {
			return m
		}
	}
	return nil
}

// The close line carries the kernel's view of the connection as the
// service closed it: a clean one (client left after its answer) has a
// round-trip time and nothing outstanding; one cut by the write timeout
// while its client stopped reading still had response bytes in the send
// queue, never sent.
func TestCloseLineCarriesTCPStats(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_INFO is Linux only")
	}
	t.Parallel()
	t.Run("clean", func(t *testing.T) {
		t.Parallel()
		cs := startConnServer(t, true, nil)
		c := cs.dial(t)
		sendRequest(t, c, "/fast", "")
		readResponse(t, bufio.NewReader(c))
		eventually(t, "idle", func() bool { return cs.gauge(http.StateIdle) == 1 })
		c.Close()
		var line map[string]any
		eventually(t, "close line", func() bool {
			line = closeLine(cs.logs.String(), CloseReasonPeerClosed)
			return line != nil
		}, cs.dump)
		rtt, ok := line["tcp_rtt_ms"].(float64)
		if !ok || rtt <= 0 || rtt > 1000 {
			t.Errorf("tcp_rtt_ms = %v on loopback, want a small positive time: %v", line["tcp_rtt_ms"], line)
		}
		for _, k := range []string{"tcp_retrans", "tcp_unacked_segs", "tcp_notsent_bytes"} {
			if v, ok := line[k].(float64); !ok || v != 0 {
				t.Errorf("%s = %v on a clean loopback connection, want 0: %v", k, line[k], line)
			}
		}
		if v := testutil.ToFloat64(cs.m.retransConns); v != 0 {
			t.Errorf("http_server_retransmitting_connections_total = %v with no retransmission", v)
		}
	})
	t.Run("write timeout with a client that stopped reading", func(t *testing.T) {
		t.Parallel()
		cs := startConnServer(t, true, func(s *http.Server) {
			s.WriteTimeout = 300 * time.Millisecond
			chunk := make([]byte, 64<<10)
			s.Handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				for range 1024 { // 64 MB, far more than both socket buffers hold
					if _, err := w.Write(chunk); err != nil {
						return
					}
				}
			})
		})
		c := cs.dial(t)
		c.(*net.TCPConn).SetReadBuffer(4096)
		sendRequest(t, c, "/big", "")
		var line map[string]any
		eventually(t, "write timeout close line", func() bool {
			line = closeLine(cs.logs.String(), CloseReasonWriteTimeout)
			return line != nil
		}, cs.dump)
		if v, ok := line["tcp_notsent_bytes"].(float64); !ok || v <= 0 {
			t.Errorf("tcp_notsent_bytes = %v for a response cut with its client not reading, want > 0: %v", line["tcp_notsent_bytes"], line)
		}
		t.Logf("close line: %v", line)
	})
}

// BenchmarkReadTCPStats is the cost TCP_INFO adds to each connection's
// close.
func BenchmarkReadTCPStats(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("TCP_INFO is Linux only")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		if readTCPStats(c) == nil {
			b.Fatal("no TCP_INFO")
		}
	}
}

// A connection the service leaves in the accept queue is measured when it
// is first read: one that waited 400 ms lands in the histogram above
// 0.25 s, one read at once below 0.1 s.
func TestAcceptWait(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_INFO is Linux only")
	}
	reg := prometheus.NewPedanticRegistry()
	m := NewConnMetrics(reg, discardLogger())
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ln := m.Listener(raw)
	accept := func() net.Conn {
		t.Helper()
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, _ = c.Read(make([]byte, 16)) // the first read, which measures
		_, _ = c.Read(make([]byte, 16)) // and only the first
		return c
	}
	slow, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	time.Sleep(400 * time.Millisecond) // queued, not accepted
	defer accept().Close()
	fast, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	defer accept().Close()

	h := histogramOf(t, reg, "http_server_accept_wait_seconds")
	if h.GetSampleCount() != 2 {
		t.Fatalf("%d waits observed, want 2 (one per connection)", h.GetSampleCount())
	}
	var le01, le025 uint64
	for _, b := range h.GetBucket() {
		switch b.GetUpperBound() {
		case 0.1:
			le01 = b.GetCumulativeCount()
		case 0.25:
			le025 = b.GetCumulativeCount()
		}
	}
	if le01 != 1 || le025 != 1 {
		t.Fatalf("waits: %d at most 0.1 s, %d at most 0.25 s (sum %.3f s); want the fast one under 0.1 s and the queued one over 0.25 s",
			le01, le025, h.GetSampleSum())
	}
	t.Logf("accept waits: sum %.3f s", h.GetSampleSum())
}

func histogramOf(t *testing.T, g prometheus.Gatherer, name string) *dto.Histogram {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetHistogram()
		}
	}
	t.Fatalf("no histogram %s", name)
	return nil
}
