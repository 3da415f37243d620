//go:build unix

package ratelimit

import (
	"syscall"
	"testing"
	"time"

	"github.com/hardenedgo/ginservice/internal/testkit/redistest"
)

// TestRedisClusterMasterStopped: one master stops answering (SIGSTOP: its
// connections stay open, nothing comes back, as behind a network
// partition) for less than the node timeout. Its keys wait at most one
// budget and then go to the fallback; the other masters keep deciding
// theirs; after SIGCONT the master's keys return to it.
func TestRedisClusterMasterStopped(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	rl := newTestLimiter(t, Config{RedisURL: cl.URL(), Rate: 1000, Burst: 1000, RedisTimeout: outageBudget, ProbeInterval: 100 * time.Millisecond})
	stopped := cl.Nodes[2]
	signal := func(sig syscall.Signal) func() {
		return func() {
			if err := syscall.Kill(stopped.PID(), sig); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(signal(syscall.SIGCONT))
	outageUnderLoad(t, rl, signal(syscall.SIGSTOP), signal(syscall.SIGCONT), 10*time.Second, func() { otherMastersDecide(t, rl, stopped.Addr) })
}
