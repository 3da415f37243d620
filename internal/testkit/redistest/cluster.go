package redistest

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cluster is a Redis Cluster of masters without replicas on loopback.
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts n cluster-enabled redis-server nodes (n >= 3, the
// minimum redis-cli accepts), joins them with
// `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes` and waits
// until every node reports cluster_state:ok.
func StartCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	return startCluster(t, n, 0, opts...)
}

// StartClusterWithReplicas starts masters masters with replicas replicas
// each (redis-cli --cluster-replicas), so a master that dies is replaced by
// its replica after the node timeout (2 s here): a real failover.
func StartClusterWithReplicas(t testing.TB, masters, replicas int, opts ...Option) *Cluster {
	t.Helper()
	return startCluster(t, masters*(1+replicas), replicas, opts...)
}

func startCluster(t testing.TB, n, replicas int, opts ...Option) *Cluster {
	t.Helper()
	if n/(1+replicas) < 3 {
		t.Fatalf("redistest: a cluster needs at least 3 masters, got %d", n/(1+replicas))
	}
	cli := Binary(t, "redis-cli")
	c := &Cluster{}
	for i := 0; i < n; i++ {
		// The bus port defaults to port+10000, which may be taken or above
		// 65535; give each node a free one explicitly.
		bus := FreePort(t)
		nodeOpts := append([]Option{WithArgs(
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(bus),
			"--cluster-node-timeout", "2000",
		)}, opts...)
		c.Nodes = append(c.Nodes, Start(t, nodeOpts...))
	}
	args := []string{"--cluster", "create"}
	for _, s := range c.Nodes {
		args = append(args, s.Addr)
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redistest: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if err := c.waitOK(30 * time.Second); err != nil {
		t.Fatalf("redistest: cluster did not converge: %v\n%s", err, out)
	}
	if replicas > 0 {
		// A replica that has not finished its first sync cannot fail over.
		if err := c.waitReplicationLinks(30*time.Second, n-n/(1+replicas)); err != nil {
			t.Fatalf("redistest: replicas did not sync: %v", err)
		}
	}
	return c
}

// waitReplicationLinks waits until want nodes report master_link_status:up.
func (c *Cluster) waitReplicationLinks(timeout time.Duration, want int) error {
	deadline := time.Now().Add(timeout)
	up := 0
	for time.Now().Before(deadline) {
		up = 0
		for _, s := range c.Nodes {
			if info, err := s.Do("INFO", "replication"); err == nil && strings.Contains(info, "master_link_status:up") {
				up++
			}
		}
		if up >= want {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("after %s: %d of %d replication links up", timeout, up, want)
}

func (c *Cluster) waitOK(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		ok := true
		for _, s := range c.Nodes {
			info, err := s.Do("CLUSTER", "INFO")
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				ok = false
				last = fmt.Sprintf("%s: %v %s", s.Addr, err, firstLine(info))
				break
			}
			// Every node must know every other node's slots, or a client
			// seeded from it gets a partial map.
			if !strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(len(c.Nodes))) {
				ok = false
				last = s.Addr + ": not all nodes known yet"
				break
			}
		}
		if ok {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("after %s: %s", timeout, last)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// URL is the REDIS_URL of the cluster in go-redis ParseClusterURL form:
// redis://h1:p1?addr=h2:p2&addr=h3:p3.
func (c *Cluster) URL() string {
	var b strings.Builder
	b.WriteString("redis://" + c.Nodes[0].Addr)
	for i, s := range c.Nodes[1:] {
		if i == 0 {
			b.WriteString("?")
		} else {
			b.WriteString("&")
		}
		b.WriteString("addr=" + s.Addr)
	}
	return b.String()
}

// CommandCalls sums INFO commandstats calls of name over all nodes.
func (c *Cluster) CommandCalls(name string) (int64, error) {
	var sum int64
	for _, s := range c.Nodes {
		n, err := s.CommandCalls(name)
		if err != nil {
			return 0, err
		}
		sum += n
	}
	return sum, nil
}

// Masters are the nodes that are masters now (ROLE), in node order;
// nodes that do not answer are left out.
func (c *Cluster) Masters() []*Server {
	var out []*Server
	for _, s := range c.Nodes {
		if role, err := s.Do("ROLE"); err == nil && strings.HasPrefix(role, "master") {
			out = append(out, s)
		}
	}
	return out
}

// KeysPerNode returns DBSIZE of every node, in node order.
func (c *Cluster) KeysPerNode() ([]int, error) {
	out := make([]int, len(c.Nodes))
	for i, s := range c.Nodes {
		v, err := s.Do("DBSIZE")
		if err != nil {
			return nil, err
		}
		if out[i], err = strconv.Atoi(v); err != nil {
			return nil, err
		}
	}
	return out, nil
}
