package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// TestAutoscale_scaleToZeroAndBack: a pool that scales to zero after 3s
// without requests goes from 1 instance to none, its process stopped;
// then requests sent to it are held at the balancer while the leader
// starts an instance again, and every one is answered by it. The same
// again with the leader killed as the request is sent.
func TestAutoscale_scaleToZeroAndBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newFleet(t, ctx, 1)
	pol := fastPolicy(pb.ScalingMetric_SCALING_METRIC_REQUESTS_PER_INSTANCE, 20)
	pol.ScaleToZeroAfter = durationpb.New(3 * time.Second)
	pol.ActivationTimeout = durationpb.New(30 * time.Second)
	f.createPoolToZero(pol, 4, nil)
	first := f.settled("web", 1, 30*time.Second)[0]

	get := func() (string, error) {
		c := &http.Client{Timeout: 40 * time.Second}
		resp, err := c.Get("http://" + f.lbAddr + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("%s: %s", resp.Status, body)
		}
		return resp.Header.Get("X-Instance"), nil
	}
	// Served while the pool has its instance.
	require.NoError(t, testcluster.Eventually(ctx, 20*time.Second, func(context.Context) error {
		id, err := get()
		if err == nil && id != first.Id {
			err = fmt.Errorf("answered by %q, want %s", id, first.Id)
		}
		return err
	}))
	served := time.Now()

	// Idle: down to no instance, its process gone.
	f.settled("web", 0, 60*time.Second)
	t.Logf("scaled to zero %v after the last request", time.Since(served).Round(time.Millisecond))
	idle := f.lastActed("web")
	require.Equal(t, "idle", idle.LimitedBy, idle.Reason)
	require.Equal(t, uint32(0), idle.Desired)
	require.GreaterOrEqual(t, idle.Time.AsTime().Sub(served), 3*time.Second-500*time.Millisecond, "scaled to zero before scale_to_zero_after")
	// Asleep, the pool is not evaluated: no event is written for it.
	asleep := f.eventCount("web")
	time.Sleep(3 * time.Second) // three evaluation periods
	require.Equal(t, asleep, f.eventCount("web"), "events written for a pool asleep")

	// Requests to the empty pool are held, then served by a new instance.
	const clients = 5
	var wg sync.WaitGroup
	errs := make([]error, clients)
	ids := make([]string, clients)
	took := make([]time.Duration, clients)
	start := time.Now()
	for i := range clients {
		wg.Go(func() {
			ids[i], errs[i] = get()
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	for i := range clients {
		require.NoError(t, errs[i], "request %d", i)
		require.NotEqual(t, first.Id, ids[i], "request %d answered by the stopped instance", i)
	}
	t.Logf("held requests answered after %v (cold start through the balancer)", took)
	act := f.lastActed("web")
	require.Equal(t, "activation", act.LimitedBy, act.Reason)
	require.Equal(t, uint32(1), act.Desired)
	ins := f.settled("web", 1, 30*time.Second)
	require.Equal(t, ins[0].Id, ids[0])

	// Idle again, then the leader dies: a request held meanwhile is
	// reported to the next leader, which activates the pool.
	f.settled("web", 0, 60*time.Second)
	old := f.leader()
	old.Kill()
	start = time.Now()
	id, err := get()
	require.NoError(t, err, "a request held across the leader's death")
	require.NotEqual(t, ins[0].Id, id)
	t.Logf("with the leader %s killed as it was sent, a held request was answered after %v", old.ID, time.Since(start).Round(time.Millisecond))
	act = f.lastActed("web")
	require.Equal(t, "activation", act.LimitedBy, act.Reason)
}

// createPoolToZero creates the pool web of the demo backend with env, one
// instance at first, autoscaled by pol between 0 and max.
func (f *fleet) createPoolToZero(pol *pb.ScalingPolicy, max uint32, env map[string]string) {
	f.t.Helper()
	_, err := f.pools().CreatePool(f.ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "web", PathPrefix: "/",
		Template: &pb.InstanceTemplate{
			Command: f.bin + "/hostscale-demo", HealthPath: "/healthz", Env: env,
			HealthInterval: durationpb.New(200 * time.Millisecond), StopGrace: durationpb.New(5 * time.Second),
		},
		Selector: "tier=web", Min: 0, Max: max, Desired: 1, Scaling: pol,
	}})
	require.NoError(f.t, err)
}

// eventCount returns how many scale events the pool has.
func (f *fleet) eventCount(pool string) int {
	f.t.Helper()
	evs, err := f.pools().ListScaleEvents(f.ctx, &pb.ListScaleEventsRequest{Pool: pool, PageSize: 1000})
	require.NoError(f.t, err)
	return len(evs.Events)
}

// lastActed returns the pool's newest acting scale event.
func (f *fleet) lastActed(pool string) *pb.ScaleEvent {
	f.t.Helper()
	evs, err := f.pools().ListScaleEvents(f.ctx, &pb.ListScaleEventsRequest{Pool: pool, ActedOnly: true, PageSize: 1})
	require.NoError(f.t, err)
	require.NotEmpty(f.t, evs.Events)
	return evs.Events[0]
}

// TestAutoscale_concurrencyPerInstance: eight clients each keep one slow
// request (200 ms) in flight; with a target of 2 in flight per instance
// the pool goes from 1 to 4 and never past it. Idle, it goes to zero; then
// a burst of 7 requests held at the balancer wakes it with 4 instances
// (ceil(7/2)), not 1, and every request is answered.
func TestAutoscale_concurrencyPerInstance(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newFleet(t, ctx, 2)
	pol := fastPolicy(pb.ScalingMetric_SCALING_METRIC_CONCURRENCY_PER_INSTANCE, 2)
	pol.ScaleToZeroAfter = durationpb.New(3 * time.Second)
	pol.ActivationTimeout = durationpb.New(30 * time.Second)
	// Slow to start, so that a burst is all held before the first
	// instance takes it.
	f.createPoolToZero(pol, 6, map[string]string{"DEMO_LATENCY": "200ms", "DEMO_STARTUP_DELAY": "1s"})
	// Routed, so that no request of the load is held for want of it.
	f.waitRouted(f.settled("web", 1, 30*time.Second), 10*time.Second)

	l := f.startLoad(8)
	f.settled("web", 4, 60*time.Second)
	evs, err := f.pools().ListScaleEvents(ctx, &pb.ListScaleEventsRequest{Pool: "web", PageSize: 1000, ActedOnly: true})
	require.NoError(t, err)
	require.NotEmpty(t, evs.Events)
	for _, ev := range evs.Events {
		require.LessOrEqual(t, ev.Desired, uint32(4), "8 in flight at 2 each: %s", ev.Reason)
		require.Equal(t, pb.ScalingMetric_SCALING_METRIC_CONCURRENCY_PER_INSTANCE, ev.Metric)
		require.Contains(t, ev.Reason, "requests in flight per instance")
		t.Logf("%d→%d: %s", ev.PreviousDesired, ev.Desired, ev.Reason)
	}
	l.end()
	require.Zero(t, l.failed.Load(), "failed requests: %v", l.errs)

	f.settled("web", 0, 60*time.Second)
	const burst = 7
	var wg sync.WaitGroup
	codes := make([]int, burst)
	for i := range burst {
		wg.Go(func() {
			c := &http.Client{Timeout: 40 * time.Second}
			resp, err := c.Get("http://" + f.lbAddr + "/")
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes[i] = resp.StatusCode
		})
	}
	// The pool wakes with as many instances as the held burst needs.
	require.NoError(t, testcluster.Eventually(ctx, 20*time.Second, func(context.Context) error {
		if n := len(f.instances("web")); n < 4 {
			return fmt.Errorf("%d instances, want 4", n)
		}
		return nil
	}))
	wg.Wait()
	for i, c := range codes {
		require.Equal(t, http.StatusOK, c, "request %d", i)
	}
	act := f.lastActed("web")
	require.Equal(t, "activation", act.LimitedBy, act.Reason)
	require.Equal(t, uint32(4), act.Desired, act.Reason)
	require.Contains(t, act.Reason, "4 instances at 2.0 in flight each")
	t.Logf("woken: %s", act.Reason)
}

// TestAutoscale_aBalancerThatLeaves: a second balancer serves a pool that
// scales to zero after 8s idle. Killed, it says nothing, and its silence
// holds the pool up: it may be routing requests it cannot report; until,
// silent for -balancer-lost-after (15s), it is presumed gone and the pool
// goes to zero. Started again and stopped with SIGTERM, it drains and
// tells the leader it leaves: the pool goes to zero 8s after its last
// request, without waiting.
func TestAutoscale_aBalancerThatLeaves(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const lostAfter = 15 * time.Second
	f := newFleetWith(t, ctx, 1, nil, func(o *testcluster.Options) {
		o.Args = append(o.Args, "-balancer-lost-after", lostAfter.String())
	})
	const zeroAfter = 8 * time.Second // past the 5s a silent balancer is trusted
	pol := fastPolicy(pb.ScalingMetric_SCALING_METRIC_REQUESTS_PER_INSTANCE, 20)
	pol.ScaleToZeroAfter = durationpb.New(zeroAfter)
	f.createPoolToZero(pol, 4, nil)
	f.settled("web", 1, 30*time.Second)

	lbAddr, lbAdmin, lbDir := freePort(t, "127.0.0.1"), freePort(t, "127.0.0.1"), t.TempDir()
	start := func() *proc {
		return startProc(t, "lb2", filepath.Join(f.bin, "hostscale-balancer"), "-listen", lbAddr, "-http-addr", lbAdmin,
			"-controllers", f.controllers, "-name", "lb2", "-data-dir", lbDir)
	}
	// reported waits until lb2 has sent the leader a stats report since
	// the last request (its first after the request, maybe not with it).
	reported := func() {
		t.Helper()
		reports := func() (int, error) {
			resp, err := http.Get("http://" + lbAdmin + "/metrics")
			if err != nil {
				return 0, err
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			for _, line := range strings.Split(string(body), "\n") {
				if v, ok := strings.CutPrefix(line, "hostscale_balancer_controller_stats_reports_total "); ok {
					return strconv.Atoi(v)
				}
			}
			return 0, errors.New("no hostscale_balancer_controller_stats_reports_total")
		}
		n0, err := reports()
		require.NoError(t, err)
		require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
			n, err := reports()
			if err == nil && n < n0+2 {
				err = fmt.Errorf("%d reports since the request, want 2", n-n0)
			}
			return err
		}))
	}
	serve := func() time.Time {
		t.Helper()
		c := &http.Client{Timeout: 5 * time.Second}
		require.NoError(t, testcluster.Eventually(ctx, 20*time.Second, func(context.Context) error {
			resp, err := c.Get("http://" + lbAddr + "/")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("lb2 answered %s", resp.Status)
			}
			return nil
		}))
		return time.Now()
	}
	desired := func() uint32 {
		t.Helper()
		r, err := f.pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "web"})
		require.NoError(t, err)
		return r.Pool.Desired
	}

	listed := func() map[string]*pb.BalancerStatus {
		t.Helper()
		resp, err := pb.NewBalancerServiceClient(f.leader().Conn()).ListBalancers(ctx, &pb.ListBalancersRequest{})
		require.NoError(t, err)
		out := map[string]*pb.BalancerStatus{}
		for _, b := range resp.Balancers {
			out[b.Name] = b
		}
		return out
	}
	lb2 := start()
	last := serve()
	reported()
	lb2.kill()
	killed := time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	// lb2 reports every second: its last report came at most about a
	// second before it was killed.
	for time.Since(killed) < lostAfter-3*time.Second {
		require.Equal(t, uint32(1), desired(), "scaled down %v after the last request, %v after lb2 was killed",
			time.Since(last).Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
		<-tick.C
	}
	f.settled("web", 0, 30*time.Second)
	lost := f.lastActed("web")
	require.Equal(t, "idle", lost.LimitedBy, lost.Reason)
	t.Logf("scaled to zero %v after lb2 was killed, %v after its last request", lost.Time.AsTime().Sub(killed).Round(time.Millisecond), lost.Time.AsTime().Sub(last).Round(time.Millisecond))
	require.GreaterOrEqual(t, lost.Time.AsTime().Sub(killed), lostAfter-2*time.Second, "lb2 was presumed gone before -balancer-lost-after")
	require.True(t, listed()["lb2"].GetLost(), "lb2 is listed as lost")
	require.False(t, listed()["lb1"].GetLost())
	m := httpGet(t, "http://"+f.leader().HTTPAddr+"/metrics")
	require.Contains(t, m, `hostscale_controller_balancer_up{balancer="lb2"} 0`)
	require.NotContains(t, m, `hostscale_controller_balancer_in_sync{balancer="lb2"}`, "a lost balancer's table says nothing")
	require.Contains(t, m, `hostscale_controller_balancer_up{balancer="lb1"} 1`)

	lb2 = start()
	last = serve()
	reported()
	require.Eventually(t, func() bool { b := listed()["lb2"]; return b != nil && b.InSync && b.ReportedAt != nil },
		10*time.Second, 50*time.Millisecond, "lb2 listed, in sync, reporting")
	lb2.stop(t)
	require.Contains(t, lb2.log(), "left the controllers")
	require.Nil(t, listed()["lb2"], "lb2 is no longer listed once it left")
	require.NotNil(t, listed()["lb1"])
	f.settled("web", 0, 30*time.Second)
	t.Logf("scaled to zero %v after lb2's last request, lb2 having left", time.Since(last).Round(time.Millisecond))
	idle := f.lastActed("web")
	require.Equal(t, "idle", idle.LimitedBy, idle.Reason)
	require.GreaterOrEqual(t, idle.Time.AsTime().Sub(last), zeroAfter-500*time.Millisecond, "scale_to_zero_after counts from lb2's last request")
	require.Contains(t, f.leader().Log(), "balancer left")
}
