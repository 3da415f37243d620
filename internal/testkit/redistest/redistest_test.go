package redistest

import (
	"net"
	"strings"
	"testing"
	"time"
)

func TestServerKillRestart(t *testing.T) {
	s := Start(t)
	if _, err := s.Do("SET", "k", "v"); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := s.Do("GET", "k"); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v; want v", got, err)
	}
	pid := s.PID()
	if pid == 0 {
		t.Fatal("no PID for a running server")
	}
	s.Kill()
	if s.PID() != 0 {
		t.Fatal("PID still set after Kill")
	}
	if _, err := s.Do("PING"); err == nil {
		t.Fatal("PING answered after Kill")
	}
	s.Restart()
	if s.PID() == 0 || s.PID() == pid {
		t.Fatalf("restart PID = %d, old %d", s.PID(), pid)
	}
	// Killed without save: the restarted node is empty.
	if got, err := s.Do("EXISTS", "k"); err != nil || got != "0" {
		t.Fatalf("EXISTS after restart = %q, %v; want 0", got, err)
	}
	if _, err := s.Do("EVAL", "return 1", "0"); err != nil {
		t.Fatal(err)
	}
	n, err := s.CommandCalls("eval")
	if err != nil || n != 1 {
		t.Fatalf("CommandCalls(eval) = %d, %v; want 1", n, err)
	}
}

func TestProxyDelay(t *testing.T) {
	s := Start(t)
	p := NewProxy(t, s.Addr)
	start := time.Now()
	if got, err := Do(p.Addr, "PING"); err != nil || got != "PONG" {
		t.Fatalf("PING via proxy = %q, %v", got, err)
	}
	fast := time.Since(start)
	p.SetDelay(100 * time.Millisecond)
	start = time.Now()
	if _, err := Do(p.Addr, "PING"); err != nil {
		t.Fatal(err)
	}
	// One chunk each way: at least 2x the delay.
	if slow := time.Since(start); slow < 200*time.Millisecond {
		t.Fatalf("delayed PING took %s (undelayed %s); want >= 200ms", slow, fast)
	}
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p.SetDelay(0)
	// One round trip so the proxy has surely accepted and tracked c.
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 7)); err != nil {
		t.Fatal(err)
	}
	p.DropConnections()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read on a dropped connection succeeded")
	}
}

func TestCluster(t *testing.T) {
	c := StartCluster(t, 3)
	if !strings.HasPrefix(c.URL(), "redis://127.0.0.1:") || strings.Count(c.URL(), "addr=") != 2 {
		t.Fatalf("URL = %q", c.URL())
	}
	slots, err := c.Nodes[0].Do("CLUSTER", "INFO")
	if err != nil || !strings.Contains(slots, "cluster_slots_assigned:16384") {
		t.Fatalf("CLUSTER INFO = %q, %v", slots, err)
	}
}
