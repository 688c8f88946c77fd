package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// followerRig is a balancer whose controller list starts with a follower,
// which it watches, and a backend, for pools created on the leader.
type followerRig struct {
	t       *testing.T
	ctx     context.Context
	leader  *testcluster.Node
	watched *testcluster.Node
	backend string
	p       *proc
	client  *http.Client
}

// newFollowerRig starts a backend listening on backendIP and the balancer,
// listening on lbIP and started by command with its arguments, watching a
// follower of c; the pool "before" serves through it.
func newFollowerRig(ctx context.Context, t *testing.T, c *testcluster.Cluster, leader *testcluster.Node, backendIP, lbIP string, command func(args ...string) *exec.Cmd) *followerRig {
	t.Helper()
	r := &followerRig{t: t, ctx: ctx, leader: leader, client: &http.Client{Timeout: 2 * time.Second}}
	controllers := []string{}
	for _, n := range c.Nodes() {
		if n != leader && r.watched == nil {
			r.watched = n
			controllers = append([]string{n.GRPCAddr}, controllers...) // first: the one it watches
		} else {
			controllers = append(controllers, n.GRPCAddr)
		}
	}
	lis, err := net.Listen("tcp", backendIP+":0")
	require.NoError(t, err)
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok "+r.URL.Path) })}
	go backend.Serve(lis)
	t.Cleanup(func() { backend.Close() })
	r.backend = lis.Addr().String()
	r.pool("before")
	r.p = startBinaryCmd(t, command("-listen", lbIP+":0", "-http-addr", lbIP+":0",
		"-controllers", strings.Join(controllers, ","), "-name", "edge"))
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error { return r.serves("/before") }))
	require.True(t, r.watching(), "the balancer watches the follower listed first")
	return r
}

// pool creates a pool of the backend on the leader.
func (r *followerRig) pool(name string) {
	r.t.Helper()
	_, err := r.leader.Pools().CreatePool(r.ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: name, PathPrefix: "/" + name, Backends: []*pb.Backend{{Address: r.backend}}}})
	require.NoError(r.t, err)
}

func (r *followerRig) serves(path string) error {
	resp, err := r.client.Get("http://" + r.p.proxy + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "ok "+path {
		return fmt.Errorf("%s: %d %q", path, resp.StatusCode, body)
	}
	return nil
}

// watching reports whether the balancer watches the follower.
func (r *followerRig) watching() bool {
	_, body := get(r.t, "http://"+r.p.admin+"/metrics")
	return strings.Contains(body, `hostscale_balancer_controller_connected{controller="`+r.watched.GRPCAddr+`"} 1`)
}

// newPoolServes creates the pool "during" on the leader and waits until it
// serves through the balancer, which must have left the follower by then;
// "before" serves all along. It returns how long after since it served.
func (r *followerRig) newPoolServes(since time.Time, within time.Duration) time.Duration {
	r.t.Helper()
	r.pool("during")
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		<-tick.C
		require.NoError(r.t, r.serves("/before"), "the pool it had, %v in", time.Since(since).Round(time.Millisecond))
		if r.serves("/during") == nil {
			break
		}
		require.Less(r.t, time.Since(since), within, "the pool created on the leader never reached the balancer: %s", r.p.logs())
	}
	took := time.Since(since)
	require.False(r.t, r.watching(), "the balancer left the follower")
	return took
}

// TestBinary_followerCutOffFromTheLeaderStopsFeedingTables: the balancer,
// on a host of its own, watches a follower; that follower is then cut off
// from the other two controllers (the balancer still reaches all three).
// The follower's table can no longer change, so it ends the watch, and
// the balancer takes its tables from the majority: a pool created there
// serves through the balancer. The balancer serves the pools it has all
// along, without a failed request.
func TestBinary_followerCutOffFromTheLeaderStopsFeedingTables(t *testing.T) {
	ctrl := testcluster.BuildController(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	nt := testcluster.NewNet(t, 4) // three controllers, then the balancer's host
	c, leader := testcluster.StartLed(ctx, t, testcluster.Options{Launcher: testcluster.BinaryLauncher{Path: ctrl}, Net: nt}, 30*time.Second)
	h := nt.Hosts()[3]
	// The backend listens on the test process's own address on the Net.
	r := newFollowerRig(ctx, t, c, leader, nt.Addr(), h.IP, func(args ...string) *exec.Cmd { return h.Command(binPath, args...) })

	var rest []*testcluster.Host
	for _, n := range c.Nodes() {
		if n != r.watched {
			rest = append(rest, n.Host)
		}
	}
	nt.Partition([]*testcluster.Host{r.watched.Host}, rest) // the balancer's host is in neither: it reaches all
	took := r.newPoolServes(time.Now(), 20*time.Second)
	t.Logf("the majority's new pool serves through the balancer %v after the cut", took.Round(time.Millisecond))
}

// TestBinary_followerWithABadDiskStopsFeedingTables: the balancer watches
// a follower whose disk then stalls, or answers every write with an error.
// The follower still hears the leader's heartbeats, but it stores no
// entry, so its table stays as it was while the leader and the other
// follower commit. Its log writes stuck or failing past the watch's limit,
// it ends the watch, and a pool created on the leader serves through the
// balancer; the pools it had serve all along.
func TestBinary_followerWithABadDiskStopsFeedingTables(t *testing.T) {
	ctrl := testcluster.BuildController(t)
	for _, c := range []struct {
		name string
		fail func(*testcluster.StallDisk)
	}{
		{"stalled", (*testcluster.StallDisk).Stall},
		{"failing", func(d *testcluster.StallDisk) { d.Fail(syscall.EIO) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// Mounted before the cluster starts, so unmounted after it stopped.
			disks := map[string]*testcluster.StallDisk{}
			for i := range 3 {
				disks[fmt.Sprintf("c%d", i+1)] = testcluster.NewStallDisk(t)
			}
			cl, leader := testcluster.StartLed(ctx, t, testcluster.Options{
				Launcher: testcluster.BinaryLauncher{Path: ctrl},
				DataDir:  func(id string) string { return disks[id].Dir },
			}, 30*time.Second)
			// Whatever the test's end, the disks answer before the nodes stop.
			t.Cleanup(func() {
				for _, d := range disks {
					d.Resume()
				}
			})
			r := newFollowerRig(ctx, t, cl, leader, "127.0.0.1", "127.0.0.1", func(args ...string) *exec.Cmd { return exec.Command(binPath, args...) })

			c.fail(disks[r.watched.ID])
			took := r.newPoolServes(time.Now(), 20*time.Second)
			t.Logf("the leader's new pool serves through the balancer %v after the follower's disk went bad", took.Round(time.Millisecond))
			code, body := get(t, "http://"+r.watched.HTTPAddr+"/readyz")
			require.Equal(t, http.StatusServiceUnavailable, code, "the follower's /readyz: %s", body)
			t.Logf("the follower's /readyz: %s", strings.TrimSpace(body))
		})
	}
}

// TestBinary_stalledDataDirHoldsNoTableBack: the balancer saves each table
// it applies in its -data-dir, whose disk then stalls. Tables still come
// into force as they arrive: a pool created on the leader serves through
// the balancer while the write of its table is held, and so does one
// created after it. Once the disk answers, the table saved is the last.
func TestBinary_stalledDataDirHoldsNoTableBack(t *testing.T) {
	ctrl := testcluster.BuildController(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	disk := testcluster.NewStallDisk(t) // before the balancer: unmounted after it stopped
	cl, leader := testcluster.StartLed(ctx, t, testcluster.Options{Launcher: testcluster.BinaryLauncher{Path: ctrl}}, 30*time.Second)
	r := newFollowerRig(ctx, t, cl, leader, "127.0.0.1", "127.0.0.1", func(args ...string) *exec.Cmd {
		return exec.Command(binPath, append(args, "-data-dir", disk.Dir)...)
	})
	t.Cleanup(disk.Resume) // runs before the balancer stops
	saved := func() string {
		b, err := os.ReadFile(filepath.Join(disk.Dir, "table.json"))
		require.NoError(t, err)
		return string(b)
	}
	require.Contains(t, saved(), `"before"`)

	disk.Stall()
	for _, pool := range []string{"during", "after"} {
		r.pool(pool)
		require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error { return r.serves("/" + pool) }),
			"the pool %s through the balancer whose disk is stalled", pool)
		require.NoError(t, r.serves("/before"))
	}
	require.Positive(t, disk.Held(), "the table's write is held")

	disk.Resume()
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
		if s := saved(); !strings.Contains(s, `"after"`) {
			return fmt.Errorf("saved table: %s", s)
		}
		return nil
	}))
}
