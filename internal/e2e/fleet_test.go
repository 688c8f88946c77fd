package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// ttl is the controllers' heartbeat TTL in these tests.
const ttl = 5 * time.Second

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds every hostscale binary once per test run.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "hostscale-e2e-bin-")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{
			"github.com/hostscale/hostscale/controller/cmd/hostscale-controller",
			"github.com/hostscale/hostscale/agent/cmd/hostscale-agent",
			"github.com/hostscale/hostscale/balancer/cmd/hostscale-balancer",
			"github.com/hostscale/hostscale/internal/cmd/hostscale-demo",
			"github.com/hostscale/hostscale/controller/cmd/hostscale",
		} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, filepath.Base(pkg)), pkg).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	require.NoError(t, buildErr)
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// proc is one process started by a test.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	logs bytes.Buffer
}

func startProc(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	return startProcCmd(t, name, exec.Command(bin, args...))
}

// startProcCmd is startProc for a command made elsewhere (in a
// testcluster.Net host, say).
func startProcCmd(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	p.cmd.Stdout = p.cmd.Stderr
	require.NoError(t, p.cmd.Start())
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.logs.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		_ = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s log:\n%s", p.name, tail(p.log(), 60))
		}
	})
	return p
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// stop sends SIGTERM and waits.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not stop within 30s", p.name)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freePort(t *testing.T, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// fleet is three controllers, agents and a balancer on loopback.
type fleet struct {
	t           *testing.T
	ctx         context.Context
	bin         string
	cl          *testcluster.Cluster
	controllers string
	agents      map[string]*agentProc
	balancer    *proc
	lbAddr      string
	lbDataDir   string
	// pinned, when set, is the leader the helpers ask, without waiting
	// for every running controller to agree: one may be hung.
	pinned *testcluster.Node
	// clientArgs are flags every agent and the balancer get (-tls-*).
	clientArgs []string
}

type agentProc struct {
	*proc
	node, ip, dataDir string
	args              []string
}

func newFleet(t *testing.T, ctx context.Context, agents int) *fleet {
	return newFleetArgs(t, ctx, agents, nil)
}

// newFleetArgs is newFleet with extra flags for each agent, by index.
func newFleetArgs(t *testing.T, ctx context.Context, agents int, agentArgs func(i int) []string) *fleet {
	return newFleetWith(t, ctx, agents, agentArgs, nil)
}

// newFleetWith is newFleetArgs whose controllers' options cluster, when
// set, changes before they start.
func newFleetWith(t *testing.T, ctx context.Context, agents int, agentArgs func(i int) []string, cluster func(*testcluster.Options)) *fleet {
	return newFleetClients(t, ctx, agents, agentArgs, cluster, nil)
}

// newFleetClients is newFleetWith whose agents and balancer also get
// clientArgs.
func newFleetClients(t *testing.T, ctx context.Context, agents int, agentArgs func(i int) []string, cluster func(*testcluster.Options), clientArgs []string) *fleet {
	f := &fleet{t: t, ctx: ctx, bin: binaries(t), agents: map[string]*agentProc{}, clientArgs: clientArgs}
	// Cleanups run last-registered first: this one runs after every agent
	// is gone. An instance killed while its agent lived may have been
	// started again, and would outlive the agent into the next test.
	t.Cleanup(func() { f.killInstances("") })
	opts := testcluster.Options{
		Launcher: testcluster.BinaryLauncher{Path: filepath.Join(f.bin, "hostscale-controller")},
		Args:     []string{"-heartbeat-ttl", ttl.String(), "-drain-deadline", "5s"},
	}
	if cluster != nil {
		cluster(&opts)
	}
	f.cl = testcluster.Start(t, opts)
	_, _, err := f.cl.WaitLeader(ctx, 30*time.Second)
	require.NoError(t, err)
	var addrs []string
	for _, n := range f.cl.Nodes() {
		addrs = append(addrs, n.GRPCAddr)
	}
	f.controllers = strings.Join(addrs, ",")
	for i := range agents {
		node := fmt.Sprintf("host-%c", 'a'+i)
		a := &agentProc{node: node, ip: fmt.Sprintf("127.0.0.%d", 2+i), dataDir: t.TempDir()}
		if agentArgs != nil {
			a.args = agentArgs(i)
		}
		f.agents[node] = a
		f.startAgent(a)
	}
	for node := range f.agents {
		f.waitAgent(node)
	}
	f.lbAddr, f.lbDataDir = freePort(t, "127.0.0.1"), t.TempDir()
	f.balancer = startProc(t, "balancer", filepath.Join(f.bin, "hostscale-balancer"), append([]string{"-listen", f.lbAddr,
		"-http-addr", "127.0.0.1:0", "-controllers", f.controllers, "-name", "lb1", "-data-dir", f.lbDataDir}, clientArgs...)...)
	t.Cleanup(func() { f.killInstances("") })
	return f
}

func (f *fleet) startAgent(a *agentProc) {
	a.proc = startProcCmd(f.t, a.node, exec.Command(filepath.Join(f.bin, "hostscale-agent"), f.agentArgs(a)...))
}

// agentArgs are a's flags: the fleet's, then the test's (which win). The
// machine's own disk and memory put no agent under a condition: a test
// that wants one sets its thresholds.
func (f *fleet) agentArgs(a *agentProc) []string {
	return append([]string{"-node-id", a.node, "-controllers", f.controllers,
		"-interval", "200ms", "-labels", "tier=web", "-advertise-addr", a.ip, "-data-dir", a.dataDir, "-http-addr", "", "-log-level", "debug",
		"-disk-pressure-free", "0", "-memory-pressure-free", "0"}, append(slices.Clone(f.clientArgs), a.args...)...)
}

// waitAgent waits until node's agent streams to the leader.
func (f *fleet) waitAgent(node string) {
	f.t.Helper()
	require.NoError(f.t, testcluster.Eventually(f.ctx, 20*time.Second, func(ctx context.Context) error {
		l := f.leader()
		r, err := l.Nodes().GetNode(ctx, &pb.GetNodeRequest{Node: node})
		if err != nil {
			return err
		}
		if r.Node.Status != pb.NodeStatus_NODE_STATUS_UP || r.Node.Controller != l.ID {
			return fmt.Errorf("%s is %v on %q", node, r.Node.Status, r.Node.Controller)
		}
		return nil
	}))
}

// leader returns the current leader.
func (f *fleet) leader() *testcluster.Node {
	if f.pinned != nil {
		return f.pinned
	}
	n, _, err := f.cl.WaitLeader(f.ctx, 20*time.Second)
	require.NoError(f.t, err)
	return n
}

func (f *fleet) pools() pb.PoolServiceClient { return f.leader().Pools() }

// createPool creates a pool of the demo backend.
func (f *fleet) createPool(name string, desired uint32, env map[string]string) {
	_, err := f.pools().CreatePool(f.ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: name, PathPrefix: "/",
		Template: &pb.InstanceTemplate{
			Command: filepath.Join(f.bin, "hostscale-demo"), Env: env, HealthPath: "/healthz",
			HealthInterval: durationpb.New(200 * time.Millisecond), StopGrace: durationpb.New(5 * time.Second),
		},
		Selector: "tier=web", Max: 20, Desired: desired,
	}})
	require.NoError(f.t, err)
}

func (f *fleet) instances(pool string) []*pb.Instance {
	r, err := f.pools().ListInstances(f.ctx, &pb.ListInstancesRequest{Pool: pool, Consistent: true})
	require.NoError(f.t, err)
	return r.Instances
}

// settled waits until the pool has exactly n instances, all healthy and
// none being removed, and every host runs exactly the processes assigned
// to it; it returns the instances.
func (f *fleet) settled(pool string, n int, timeout time.Duration) []*pb.Instance {
	f.t.Helper()
	return f.settledOn(pool, n, nil, timeout)
}

// settledOn is settled, and also waits until the instances are spread over
// the nodes as `on` says (when it is set).
func (f *fleet) settledOn(pool string, n int, on map[string]int, timeout time.Duration) []*pb.Instance {
	f.t.Helper()
	var ins []*pb.Instance
	err := testcluster.Eventually(f.ctx, timeout, func(ctx context.Context) error {
		r, err := f.pools().ListInstances(ctx, &pb.ListInstancesRequest{Pool: pool, Consistent: true})
		if err != nil {
			return err
		}
		ins = r.Instances
		if len(ins) != n {
			return fmt.Errorf("%d instances, want %d", len(ins), n)
		}
		want := map[string]int{}
		for _, in := range ins {
			if in.State != pb.InstanceState_INSTANCE_STATE_HEALTHY || in.Draining || in.Stop {
				return fmt.Errorf("%s is %v (draining %v)", in.Id, in.State, in.Draining)
			}
			want[in.Id]++
		}
		running := runningInstances()
		for id, c := range running {
			if strings.HasPrefix(id, pool+"-") && want[id] != c {
				return fmt.Errorf("instance %s runs %d times, assigned %d", id, c, want[id])
			}
		}
		for id := range want {
			if running[id] != 1 {
				return fmt.Errorf("instance %s runs %d times", id, running[id])
			}
		}
		if on != nil && !maps.Equal(on, perNode(ins)) {
			return fmt.Errorf("instances on %v, want %v", perNode(ins), on)
		}
		return nil
	})
	require.NoError(f.t, err)
	return ins
}

// runningInstances counts the live processes of each instance id, read
// from their environment (HOSTSCALE_INSTANCE) in /proc.
func runningInstances() map[string]int {
	out := map[string]int{}
	for _, env := range instanceProcs() {
		out[env["HOSTSCALE_INSTANCE"]]++
	}
	return out
}

// instanceProcs returns the environment of every live instance process.
func instanceProcs() map[int]map[string]string {
	out := map[int]map[string]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || bytes.Contains(stat[bytes.LastIndexByte(stat, ')'):], []byte(") Z")) {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !bytes.Contains(data, []byte("HOSTSCALE_INSTANCE=")) || !bytes.Contains(data, []byte("HOSTSCALE_E2E=")) {
			continue
		}
		env := map[string]string{}
		for _, kv := range bytes.Split(data, []byte{0}) {
			if k, v, ok := strings.Cut(string(kv), "="); ok {
				env[k] = v
			}
		}
		if env["HOSTSCALE_E2E"] != e2eRun {
			continue
		}
		out[pid] = env
	}
	return out
}

// e2eRun marks this test process's instances: they inherit it from the
// agents, which inherit it from the test.
var e2eRun = strconv.Itoa(os.Getpid())

func init() { os.Setenv("HOSTSCALE_E2E", e2eRun) }

// killInstances kills the instance processes of one node, or of all.
func (f *fleet) killInstances(node string) int {
	n := 0
	for pid, env := range instanceProcs() {
		if node == "" || env["HOSTSCALE_NODE"] == node {
			if p, err := os.FindProcess(pid); err == nil && p.Kill() == nil {
				n++
			}
		}
	}
	return n
}

// load sends requests through the balancer from a few clients until
// stopped, counting answers by instance and failures.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	by         map[string]int
	errs       []string
	stop       chan struct{}
	stopOnce   sync.Once
	wg         sync.WaitGroup
}

func (f *fleet) startLoad(clients int) *load {
	l := &load{by: map[string]int{}, stop: make(chan struct{})}
	for range clients {
		l.wg.Go(func() {
			c := &http.Client{Timeout: 10 * time.Second}
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				l.one(c, "http://"+f.lbAddr+"/")
			}
		})
	}
	return l
}

func (l *load) one(c *http.Client, url string) {
	resp, err := c.Get(url)
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			l.ok.Add(1)
			l.mu.Lock()
			l.by[resp.Header.Get("X-Instance")]++
			l.mu.Unlock()
			return
		}
		err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.errs) < 10 {
		l.errs = append(l.errs, err.Error())
	}
	l.mu.Unlock()
}

func (l *load) end() {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
}

// served returns the instances that answered, and resets the count.
func (l *load) served() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	by := l.by
	l.by = map[string]int{}
	return by
}

func killPid(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}

// balancerSees returns "" when the table the balancer applied routes the
// instances' pool to exactly their addresses, else what differs.
func (f *fleet) balancerSees(ins []*pb.Instance) string {
	data, err := os.ReadFile(filepath.Join(f.lbDataDir, "table.json"))
	if err != nil {
		return err.Error()
	}
	var table struct {
		Pools []struct {
			Name     string `json:"name"`
			Backends []struct {
				Address string `json:"address"`
			} `json:"backends"`
		} `json:"pools"`
	}
	if err := json.Unmarshal(data, &table); err != nil {
		return err.Error()
	}
	var want, have []string
	for _, in := range ins {
		want = append(want, in.Address)
	}
	for _, p := range table.Pools {
		if p.Name == ins[0].Pool {
			for _, b := range p.Backends {
				have = append(have, b.Address)
			}
		}
	}
	slices.Sort(want)
	slices.Sort(have)
	if !slices.Equal(want, have) {
		return fmt.Sprintf("balancer routes to %v, want %v", have, want)
	}
	return ""
}

// waitRouted waits until the balancer routes the instances' pool to
// exactly their addresses (balancerSees), or fails the test after timeout.
func (f *fleet) waitRouted(ins []*pb.Instance, timeout time.Duration) {
	f.t.Helper()
	require.NoError(f.t, testcluster.Eventually(f.ctx, timeout, func(context.Context) error {
		if v := f.balancerSees(ins); v != "" {
			return fmt.Errorf("%s", v)
		}
		return nil
	}))
}

// startRateLoad sends rps requests a second through the balancer, each in
// its own goroutine (at most 256 at once), until ended.
func (f *fleet) startRateLoad(rps int) *load {
	l := &load{by: map[string]int{}, stop: make(chan struct{})}
	sem := make(chan struct{}, 256)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	l.wg.Go(func() {
		t := time.NewTicker(time.Second / time.Duration(rps))
		defer t.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-t.C:
			}
			select {
			case sem <- struct{}{}:
			default:
				l.failed.Add(1) // the balancer cannot keep up
				continue
			}
			l.wg.Go(func() {
				defer func() { <-sem }()
				l.one(c, "http://"+f.lbAddr+"/")
			})
		}
	})
	return l
}
