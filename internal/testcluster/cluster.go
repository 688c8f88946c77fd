package testcluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/hostscale/hostscale/internal/acl"
	"github.com/hostscale/hostscale/internal/freeport"
	"github.com/hostscale/hostscale/internal/grpcx"
	"github.com/hostscale/hostscale/internal/syncbuf"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Options configure a cluster.
type Options struct {
	// Nodes is the number of controllers (default 3).
	Nodes int
	// Launcher starts each controller.
	Launcher Launcher
	// Raft timings; zero keeps the controller defaults.
	HeartbeatTimeout, ElectionTimeout time.Duration
	// Args are extra flags for process launchers.
	Args []string
	// ClientTLS is how the harness's connections (Node.Conn) speak to
	// controllers that serve TLS (their -tls-* flags in Args); nil:
	// plaintext.
	ClientTLS *tls.Config
	// ClientToken, when set, is the ACL token the harness's connections
	// send (for controllers with an -acl-file in Args).
	ClientToken string
	// Net, when set, runs node i on the Net's host i, at that host's
	// address with the default ports (7700 gRPC, 7701 Raft, 7702 HTTP),
	// so that a test can cut the nodes apart (Net.Partition). It needs a
	// launcher that starts processes (BinaryLauncher).
	Net *Net
	// DataDir, when set, gives the data directory of the node with the
	// id (a StallDisk's, say); by default each node has one in the
	// cluster's temporary directory.
	DataDir func(id string) string
}

// Node is one controller of the cluster. Its addresses stay the same
// across restarts.
type Node struct {
	ID       string
	DataDir  string
	GRPCAddr string
	RaftAddr string
	HTTPAddr string
	// Host is the Net host the node runs on (Options.Net), or nil.
	Host *Host

	c    *Cluster
	mu   sync.Mutex
	proc Process
	conn *grpc.ClientConn
	log  *syncbuf.Buffer
	// args follow Options.Args on this node's command line (RestartWith).
	args []string
}

// Cluster is a set of controllers started by Start.
type Cluster struct {
	t     testing.TB
	opts  Options
	dir   string
	mu    sync.Mutex
	nodes []*Node
}

// Start launches opts.Nodes controllers bootstrapped as one cluster and
// registers their teardown with t.Cleanup. It does not wait for a leader:
// call WaitLeader.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Launcher == nil {
		t.Fatal("testcluster: Options.Launcher is required")
	}
	c := &Cluster{t: t, opts: opts, dir: t.TempDir()}
	t.Cleanup(c.Close)
	specs := make([]Spec, opts.Nodes)
	var peers []string
	for i := range specs {
		n := c.newNode(fmt.Sprintf("c%d", i+1))
		specs[i] = c.spec(n)
		peers = append(peers, n.ID+"="+n.RaftAddr)
	}
	for i, n := range c.nodes {
		specs[i].Peers = strings.Join(peers, ",")
		c.launch(n, specs[i])
	}
	return c
}

func (c *Cluster) newNode(id string) *Node {
	c.t.Helper()
	dir := filepath.Join(c.dir, id)
	if c.opts.DataDir != nil {
		dir = c.opts.DataDir(id)
	}
	n := &Node{ID: id, DataDir: dir, c: c, log: &syncbuf.Buffer{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	if nt := c.opts.Net; nt != nil {
		if len(c.nodes) >= len(nt.hosts) {
			c.t.Fatalf("testcluster: node %s: the Net has only %d hosts", id, len(nt.hosts))
		}
		n.Host = nt.hosts[len(c.nodes)]
		n.GRPCAddr, n.RaftAddr, n.HTTPAddr = n.Host.IP+":7700", n.Host.IP+":7701", n.Host.IP+":7702"
	}
	c.nodes = append(c.nodes, n)
	return n
}

// spec binds the node's listeners: new ports the first time, outside the
// kernel's ephemeral range (freeport), so that no outgoing connection takes
// them while the node is down; the same addresses on a restart. A node on
// a Net host has its host's own address, which nothing else takes, and
// binds it inside the host: it gets no listeners.
func (c *Cluster) spec(n *Node) Spec {
	c.t.Helper()
	s := Spec{
		ID:               n.ID,
		DataDir:          n.DataDir,
		Host:             n.Host,
		HeartbeatTimeout: c.opts.HeartbeatTimeout,
		ElectionTimeout:  c.opts.ElectionTimeout,
		Args:             append(slices.Clone(c.opts.Args), n.args...),
		Log:              n.log,
	}
	if n.Host == nil {
		listen := func(addr *string) net.Listener {
			var l net.Listener
			var err error
			if *addr == "" {
				l, err = freeport.Listen()
			} else {
				// A restarted node needs its old ports.
				l, err = freeport.Relisten(*addr, 5*time.Second)
			}
			if err != nil {
				c.t.Fatalf("testcluster: listen %s: %v", *addr, err)
			}
			*addr = l.Addr().String()
			return l
		}
		s.GRPC, s.Raft, s.HTTP = listen(&n.GRPCAddr), listen(&n.RaftAddr), listen(&n.HTTPAddr)
	}
	s.GRPCAddr, s.RaftAddr, s.HTTPAddr = n.GRPCAddr, n.RaftAddr, n.HTTPAddr
	return s
}

func (c *Cluster) launch(n *Node, spec Spec) {
	c.t.Helper()
	p, err := c.opts.Launcher.Launch(spec)
	if err != nil {
		c.t.Fatalf("testcluster: launch %s: %v", n.ID, err)
	}
	n.mu.Lock()
	n.proc = p
	n.mu.Unlock()
}

// Nodes returns every node, running or not.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.nodes...)
}

// Node returns the node with the given id, or nil.
func (c *Cluster) Node(id string) *Node {
	for _, n := range c.Nodes() {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// Running returns the nodes whose controller runs.
func (c *Cluster) Running() []*Node {
	var out []*Node
	for _, n := range c.Nodes() {
		if n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// Running reports whether the node's controller runs.
func (n *Node) Running() bool {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p == nil {
		return false
	}
	select {
	case <-p.Done():
		return false
	default:
		return true
	}
}

// WaitExited waits until the node's process has exited, by itself (a node
// that gives up) or otherwise, or timeout.
func (n *Node) WaitExited(ctx context.Context, timeout time.Duration) error {
	return Eventually(ctx, timeout, func(context.Context) error {
		if n.Running() {
			return fmt.Errorf("%s still runs", n.ID)
		}
		return nil
	})
}

// Conn returns a client connection to the node's gRPC API; it survives the
// node's restarts.
func (n *Node) Conn() *grpc.ClientConn {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conn == nil {
		n.c.mu.Lock()
		cfg, token := n.c.opts.ClientTLS, n.c.opts.ClientToken
		n.c.mu.Unlock()
		conn, err := grpcx.Dial(n.GRPCAddr, grpcx.WithTLS(cfg), grpc.WithPerRPCCredentials(acl.Credentials(func() string { return token })))
		if err != nil {
			n.c.t.Fatalf("testcluster: dial %s: %v", n.ID, err)
		}
		n.conn = conn
	}
	return n.conn
}

// Cluster returns a ClusterService client for the node.
func (n *Node) Cluster() pb.ClusterServiceClient { return pb.NewClusterServiceClient(n.Conn()) }

// Pools returns a PoolService client for the node.
func (n *Node) Pools() pb.PoolServiceClient { return pb.NewPoolServiceClient(n.Conn()) }

// Nodes returns a NodeService client for the node.
func (n *Node) Nodes() pb.NodeServiceClient { return pb.NewNodeServiceClient(n.Conn()) }

// Metrics returns a MetricsService client for the node.
func (n *Node) Metrics() pb.MetricsServiceClient { return pb.NewMetricsServiceClient(n.Conn()) }

// Log returns what the node has logged so far.
func (n *Node) Log() string { return n.log.String() }

// Status asks the node for its status with a short deadline.
func (n *Node) Status(ctx context.Context) (*pb.GetStatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return n.Cluster().GetStatus(ctx, &pb.GetStatusRequest{})
}

// Kill ends the node abruptly.
func (n *Node) Kill() {
	n.c.t.Helper()
	if p := n.process(); p != nil {
		if err := p.Kill(); err != nil {
			n.c.t.Errorf("testcluster: kill %s: %v", n.ID, err)
		}
	}
}

// Pause freezes the node's controller (SIGSTOP for a process) until
// Resume; it fails the test for a launcher whose processes cannot pause.
func (n *Node) Pause() {
	n.c.t.Helper()
	pauser, ok := n.process().(Pauser)
	if !ok {
		n.c.t.Fatalf("testcluster: pause %s: its launcher's processes cannot pause", n.ID)
	}
	if err := pauser.Pause(); err != nil {
		n.c.t.Fatalf("testcluster: pause %s: %v", n.ID, err)
	}
}

// Signal sends sig to the node's controller; it fails the test for a
// launcher whose processes take no signals.
func (n *Node) Signal(sig os.Signal) {
	n.c.t.Helper()
	s, ok := n.process().(Signaler)
	if !ok {
		n.c.t.Fatalf("testcluster: signal %s: its launcher's processes take no signals", n.ID)
	}
	if err := s.Signal(sig); err != nil {
		n.c.t.Fatalf("testcluster: signal %s: %v", n.ID, err)
	}
}

// Resume thaws a paused node.
func (n *Node) Resume() {
	n.c.t.Helper()
	if pauser, ok := n.process().(Pauser); ok {
		if err := pauser.Resume(); err != nil {
			n.c.t.Fatalf("testcluster: resume %s: %v", n.ID, err)
		}
	}
}

// Stop shuts the node down gracefully.
func (n *Node) Stop() {
	n.c.t.Helper()
	if p := n.process(); p != nil {
		if err := p.Stop(); err != nil {
			n.c.t.Errorf("testcluster: stop %s: %v\n%s", n.ID, err, n.Log())
		}
	}
}

// Restart starts a stopped or killed node again on the same addresses and
// data directory.
func (n *Node) Restart() {
	n.c.t.Helper()
	if n.Running() {
		n.c.t.Fatalf("testcluster: restart %s: still running", n.ID)
	}
	n.c.launch(n, n.c.spec(n))
}

// RestartWith is Restart with args after Options.Args on the node's command
// line from now on (flags given twice take the later value), as an
// operator restarts one controller with a changed flag.
func (n *Node) RestartWith(args ...string) {
	n.c.t.Helper()
	n.mu.Lock()
	n.args = slices.Clone(args)
	n.mu.Unlock()
	n.Restart()
}

// SetClientTLS changes how the harness's connections speak to the nodes
// (Options.ClientTLS) and drops those it has: the next Conn of each node
// dials again.
func (c *Cluster) SetClientTLS(cfg *tls.Config) {
	c.mu.Lock()
	c.opts.ClientTLS = cfg
	c.mu.Unlock()
	for _, n := range c.Nodes() {
		n.mu.Lock()
		if n.conn != nil {
			n.conn.Close()
			n.conn = nil
		}
		n.mu.Unlock()
	}
}

func (n *Node) process() Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

// AddNode starts a new controller with an empty data directory and no
// peers, and adds it to the cluster through AddMember on any running node.
func (c *Cluster) AddNode(ctx context.Context, id string) (*Node, error) {
	c.t.Helper()
	members := c.Running()
	if len(members) == 0 {
		return nil, fmt.Errorf("no running node to join through")
	}
	n := c.newNode(id)
	c.launch(n, c.spec(n))
	err := Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		via := members[0] // any member: a follower forwards to the leader
		_, err := via.Cluster().AddMember(ctx, &pb.AddMemberRequest{Id: id, RaftAddress: n.RaftAddr, ApiAddress: n.GRPCAddr})
		return err
	})
	return n, err
}

// StartLed is Start and WaitLeader: it fails the test when no leader is
// ready within timeout, and logs which node leads and how soon.
func StartLed(ctx context.Context, t testing.TB, opts Options, timeout time.Duration) (*Cluster, *Node) {
	t.Helper()
	c := Start(t, opts)
	leader, took, err := c.WaitLeader(ctx, timeout)
	if err != nil {
		t.Fatalf("testcluster: no leader: %v", err)
	}
	t.Logf("leader %s after %v", leader.ID, took)
	return c, leader
}

// WaitLeader waits until every running node names the same leader, the
// leader has caught up, every node knows the leader's API address, and
// every running member's API address is in the state. It
// returns the leader and how long that took.
func (c *Cluster) WaitLeader(ctx context.Context, timeout time.Duration) (*Node, time.Duration, error) {
	start := time.Now()
	var leader *Node
	err := Eventually(ctx, timeout, func(ctx context.Context) error {
		leader = nil
		running := c.Running()
		if len(running) == 0 {
			return fmt.Errorf("no node runs")
		}
		var want string
		for _, n := range running {
			st, err := n.Status(ctx)
			if err != nil {
				return fmt.Errorf("%s: %w", n.ID, err)
			}
			if st.Leader.GetId() == "" || st.Leader.GetApiAddress() == "" {
				return fmt.Errorf("%s knows no leader address yet", n.ID)
			}
			if want == "" {
				want = st.Leader.Id
			} else if st.Leader.Id != want {
				return fmt.Errorf("%s follows %s, others %s", n.ID, st.Leader.Id, want)
			}
			if st.Id == want {
				if !st.LeaderReady {
					return fmt.Errorf("leader %s is catching up", n.ID)
				}
				// Every running member has announced its API address:
				// the cluster writes nothing more on its own.
				for _, r := range running {
					found := false
					for _, m := range st.Members {
						found = found || (m.Id == r.ID && m.ApiAddress != "")
					}
					if !found {
						return fmt.Errorf("%s has not announced its API address yet", r.ID)
					}
				}
				leader = n
			}
		}
		if leader == nil {
			return fmt.Errorf("leader %s is not running", want)
		}
		return nil
	})
	return leader, time.Since(start), err
}

// WaitNewLeader waits until the running nodes other than old all name one
// leader that is not old, and that leader has caught up; it returns that
// leader and its term. old may still run and even believe it leads (cut
// off, or hung): it is not asked.
func (c *Cluster) WaitNewLeader(ctx context.Context, old *Node, timeout time.Duration) (*Node, uint64, error) {
	var leader *Node
	var term uint64
	err := Eventually(ctx, timeout, func(ctx context.Context) error {
		leader = nil
		var want string
		for _, n := range c.Running() {
			if n == old {
				continue
			}
			st, err := n.Status(ctx)
			if err != nil {
				return fmt.Errorf("%s: %w", n.ID, err)
			}
			id := st.Leader.GetId()
			if id == "" || id == old.ID {
				return fmt.Errorf("%s follows %q", n.ID, id)
			}
			if want == "" {
				want = id
			} else if id != want {
				return fmt.Errorf("%s follows %s, another node %s", n.ID, id, want)
			}
			if st.Id == id && st.LeaderReady {
				leader, term = n, st.Term
			}
		}
		if leader == nil {
			return fmt.Errorf("no ready leader but %s yet", old.ID)
		}
		return nil
	})
	return leader, term, err
}

// Close stops every node (killing those that do not stop) and closes the
// client connections. Start registers it with t.Cleanup.
func (c *Cluster) Close() {
	for _, n := range c.Nodes() {
		if n.Running() {
			n.Stop()
		}
		n.mu.Lock()
		if n.conn != nil {
			n.conn.Close()
			n.conn = nil
		}
		n.mu.Unlock()
	}
	if c.t.Failed() {
		for _, n := range c.Nodes() {
			log := n.Log()
			// The whole log outlives the test's temporary directory.
			name := strings.NewReplacer("/", "_", " ", "_").Replace(c.t.Name())
			where := filepath.Join(os.TempDir(), fmt.Sprintf("%s-%s-%d.log", name, n.ID, time.Now().UnixNano()))
			if err := os.WriteFile(where, []byte(log), 0o644); err != nil {
				where = err.Error()
			}
			c.t.Logf("---- log of %s (whole: %s) ----\n%s", n.ID, where, tail(log, 8000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// Eventually calls f until it returns nil or timeout passes, and returns
// f's last error then. f gets a context bounded by the timeout.
func Eventually(ctx context.Context, timeout time.Duration, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	for {
		if err = f(ctx); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %v: %w", timeout, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
