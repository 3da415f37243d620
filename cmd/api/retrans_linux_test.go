package main

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit"
)

// TestCloseLineShowsRetransmissions: the service runs in a network
// namespace of its own and its client in another, joined by a veth pair,
// as a pod and a client on another node. While the service writes a
// response, the client's ACKs are dropped (a pfifo of length 0 on the
// client's side): the response reaches the client, the service does not
// know it and retransmits. When the client leaves, the connection's close
// line says how many segments were retransmitted, the service counts them,
// and the namespace's RetransSegs counter agrees: the network, not the
// service, was at fault.
func TestCloseLineShowsRetransmissions(t *testing.T) {
	requireNetns(t)
	if _, err := exec.LookPath("tc"); err != nil {
		t.Fatalf("tc not found (iproute2): %v", err)
	}
	// The client's namespace: a process that holds it.
	holder := exec.Command("unshare", "--net", "sh", "-ec", `ip link set lo up; exec sleep 120`)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	cpid := holder.Process.Pid
	waitFor(t, 5*time.Second, "the client's namespace", func() bool {
		return exec.Command("nsenter", "-t", strconv.Itoa(cpid), "-n", "ip", "link", "show", "lo", "up").Run() == nil
	})

	const svcIP, cliIP = "10.213.0.1", "10.213.0.2"
	p := startBinaryInNetnsScript(t,
		`ip link add vsvc type veth peer name vcli netns "$CLIENT_PID"
ip addr add `+svcIP+`/24 dev vsvc
ip link set vsvc up
nsenter -t "$CLIENT_PID" -n sh -ec "ip addr add `+cliIP+`/24 dev vcli; ip link set vcli up"`,
		map[string]string{
			"CLIENT_PID": strconv.Itoa(cpid), "HTTP_ADDR": svcIP + ":0",
			"RATELIMIT_ENABLED": "false", "BREAKER_TIMEOUT": "1s",
		})
	spid := p.cmd.Process.Pid
	admin := netnsClient(spid)

	// The dependency answers in 3 s: the item request gets the fallback
	// at BREAKER_TIMEOUT, 1 s after it was sent.
	req, _ := http.NewRequest(http.MethodPut, "http://"+p.admin+"/debug/faults", strings.NewReader(`{"latency":"3s"}`))
	resp, err := admin.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	retrans0 := scrapeWith(t, admin, p.admin, "kernel_tcp_retrans_segs_total")

	c, err := netnsDial(cpid, p.public, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s from the client's namespace: %v", p.public, err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET /api/v1/items/1 HTTP/1.1\r\nHost: x\r\nX-Request-ID: retransmitted\r\n\r\n")
	time.Sleep(300 * time.Millisecond) // the request is in; its answer comes at 1 s
	tc := func(args ...string) {
		t.Helper()
		cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(cpid), "-n", "tc"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("tc %v: %v %s", args, err, out)
		}
	}
	tc("qdisc", "add", "dev", "vcli", "root", "pfifo", "limit", "0")
	// The answer leaves at 1 s and is retransmitted while no ACK returns:
	// after 200 ms, 400 ms and 800 ms, the next one 1.6 s later, after the
	// drop ends (the client's FIN then acknowledges it all).
	time.Sleep(3000 * time.Millisecond)
	tc("qdisc", "del", "dev", "vcli", "root")

	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	r, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the answer: %v", err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusOK || r.Header.Get("X-Degraded") != "true" {
		t.Fatalf("answer %d degraded=%q, want the 200 fallback", r.StatusCode, r.Header.Get("X-Degraded"))
	}
	c.Close()

	// The connection was idle, its request answered, when the client left:
	// its close line is found by the client's address.
	var line map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for line == nil {
		for _, l := range p.logs.lines() {
			if l["msg"] == "connection closed" && l["remote_addr"] == c.LocalAddr().String() {
				line = l
			}
		}
		if line == nil && time.Now().After(deadline) {
			t.Fatalf("no close line for %s:\n%s", c.LocalAddr(), p.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A clean close, logged at info (LOG_LEVEL's default) for its
	// retransmissions.
	n, ok := line["tcp_retrans"].(float64)
	if !ok || n < 3 || line["level"] != "INFO" || line["reason"] != "peer_closed" {
		t.Fatalf("close line %v: want a peer_closed line at INFO with tcp_retrans at least 3", line)
	}
	if rtt, ok := line["tcp_rtt_ms"].(float64); !ok || rtt <= 0 {
		t.Errorf("close line %v: no round-trip time", line)
	}
	retrans := scrapeWith(t, admin, p.admin, "kernel_tcp_retrans_segs_total") - retrans0
	if retrans < n {
		t.Errorf("the namespace's RetransSegs rose by %v, below the connection's own %v", retrans, n)
	}
	// The service's own counts: this connection's segments, one connection
	// (the scrapes' connections, on the admin listener, are not counted).
	if got := scrapeWith(t, admin, p.admin, "http_server_retransmitted_segments_total"); got != n {
		t.Errorf("http_server_retransmitted_segments_total = %v, want the close line's %v", got, n)
	}
	if got := scrapeWith(t, admin, p.admin, "http_server_retransmitting_connections_total"); got != 1 {
		t.Errorf("http_server_retransmitting_connections_total = %v, want 1", got)
	}
	t.Logf("close line: reason %v, tcp_retrans %v, tcp_rtt_ms %v; namespace RetransSegs +%v", line["reason"], n, line["tcp_rtt_ms"], retrans)

	// The EOF diagnosis reads the same from the service's log, by client.
	logFile := filepath.Join(t.TempDir(), "service.log")
	if err := os.WriteFile(logFile, []byte(p.logs.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bash", filepath.Join(testkit.ModuleRoot(t), "scripts", "diagnose-eof.sh"), "-i", "0", "-l", logFile).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); err != nil && (!ok || ee.ExitCode() != 3) {
		t.Fatalf("diagnose-eof.sh -l: %v\n%s", err, out)
	}
	want := fmt.Sprintf("connections in the log needed retransmissions (%d segments sent again, up to %d on one; round trip up to ", int(n), int(n))
	if !strings.Contains(string(out), want) || !strings.Contains(string(out), cliIP+" (1 connections, "+strconv.Itoa(int(n))+" segments)") {
		t.Errorf("diagnose-eof.sh -l does not name the retransmissions to %s:\n%s", cliIP, out)
	}
	if i := strings.Index(string(out), "== 5."); i >= 0 {
		t.Logf("%s", out[i:])
	}
}
