package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/alertconfig"
	"github.com/hostscale/hostscale/controller/server"
	"github.com/hostscale/hostscale/controller/server/servertest"
	"github.com/hostscale/hostscale/internal/testcluster"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func startAlertCluster(t *testing.T, webhooks ...string) *testcluster.Cluster {
	t.Helper()
	return testcluster.Start(t, testcluster.Options{
		Nodes: 3,
		Launcher: servertest.Launcher{Configure: func(c *server.Config) {
			c.HeartbeatTTL = 5 * time.Second
			c.AlertInterval = 100 * time.Millisecond
			c.AlertGroupWait = 100 * time.Millisecond
			c.AlertGroupInterval = 200 * time.Millisecond
			c.AlertWebhooks = webhooks
		}},
		HeartbeatTimeout: 500 * time.Millisecond,
		ElectionTimeout:  500 * time.Millisecond,
	})
}

// feed streams cpu samples for node to the cluster's leader every 100ms
// until ctx ends; cpu(i) gives the i-th value.
func feed(t *testing.T, ctx context.Context, c *testcluster.Cluster, node string, cpu func(i int) float64) {
	t.Helper()
	go func() {
		for i := 0; ctx.Err() == nil; {
			leader, _, err := c.WaitLeader(ctx, 10*time.Second)
			if err != nil {
				return
			}
			s, err := pb.NewAgentServiceClient(leader.Conn()).Connect(ctx)
			if err != nil {
				continue
			}
			if s.Send(hello(node)) != nil {
				continue
			}
			if first, err := s.Recv(); err != nil || first.GetWelcome() == nil {
				continue
			}
			for ; ctx.Err() == nil; i++ {
				if s.Send(batch(uint64(i+1), sampleAt(time.Now(), cpu(i)))) != nil {
					break
				}
				if _, err := s.Recv(); err != nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
}

func alertOf(ctx context.Context, n *testcluster.Node, rule string) (*pb.Alert, error) {
	resp, err := pb.NewAlertServiceClient(n.Conn()).ListAlerts(ctx, &pb.ListAlertsRequest{})
	if err != nil {
		return nil, err
	}
	for _, a := range resp.Alerts {
		if a.Rule == rule {
			return a, nil
		}
	}
	return nil, fmt.Errorf("no %s alert", rule)
}

// waitAlert waits up to timeout for rule's alert on n to be in state and
// returns it.
func waitAlert(t *testing.T, ctx context.Context, n *testcluster.Node, rule string, state pb.AlertState, timeout time.Duration) *pb.Alert {
	t.Helper()
	var a *pb.Alert
	require.NoError(t, testcluster.Eventually(ctx, timeout, func(ctx context.Context) error {
		var err error
		a, err = alertOf(ctx, n, rule)
		if err == nil && a.State != state {
			err = fmt.Errorf("%s is %v at %v", rule, a.State, a.Value)
		}
		return err
	}))
	return a
}

// webhookReceiver counts Alertmanager webhook deliveries by status and
// idempotency key.
type webhookReceiver struct {
	mu     sync.Mutex
	bodies []map[string]any
	keys   map[string]int
}

func (w *webhookReceiver) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(rw, err.Error(), 400)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.bodies = append(w.bodies, body)
	w.keys[r.Header.Get("Idempotency-Key")]++
	rw.WriteHeader(200)
}

// count returns how many deliveries had the given status (firing,
// resolved) for the alert name.
func (w *webhookReceiver) count(status, alertname string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, b := range w.bodies {
		if b["status"] == status && b["version"] == "4" {
			if gl, _ := b["groupLabels"].(map[string]any); gl["alertname"] == alertname {
				n++
			}
		}
	}
	return n
}

func TestAlerts_highCPUFiresSurvivesFullRestartAndResolves(t *testing.T) {
	rcv := &webhookReceiver{keys: map[string]int{}}
	hook := httptest.NewServer(rcv)
	defer hook.Close()
	c := startAlertCluster(t, hook.URL)
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	alertsAPI := pb.NewAlertServiceClient(leader.Conn())

	// The defaults are installed once.
	require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
		r, err := alertsAPI.ListRules(ctx, &pb.ListRulesRequest{})
		if err == nil && len(r.Rules) < 4 {
			err = fmt.Errorf("%d rules", len(r.Rules))
		}
		return err
	}))
	_, err := alertsAPI.CreateRule(ctx, &pb.CreateRuleRequest{Rule: &pb.AlertRule{
		Name: "cpu-hot", Metric: "cpu_percent", Op: ">", Threshold: 90, For: durationpb.New(time.Second),
		Annotations: map[string]string{"summary": "CPU on {{ .Node }} is {{ .Value }}"}, Severity: pb.Severity_SEVERITY_CRITICAL,
	}})
	require.NoError(t, err)

	var hot atomic.Bool
	hot.Store(true)
	fctx, stopFeed := context.WithCancel(ctx)
	defer stopFeed()
	feed(t, fctx, c, "busy-1", func(int) float64 {
		if hot.Load() {
			return 97
		}
		return 10
	})

	var pendingSeen bool
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		a, err := alertOf(ctx, leader, "cpu-hot")
		if err != nil {
			return err
		}
		pendingSeen = pendingSeen || a.State == pb.AlertState_ALERT_STATE_PENDING
		if a.State != pb.AlertState_ALERT_STATE_FIRING {
			return fmt.Errorf("cpu-hot is %v", a.State)
		}
		return nil
	}))
	require.True(t, pendingSeen, "pending before firing")
	firing, err := alertOf(ctx, leader, "cpu-hot")
	require.NoError(t, err)
	require.Equal(t, "busy-1", firing.Node)
	require.Equal(t, 97.0, firing.Value)
	require.Equal(t, "CPU on busy-1 is 97", firing.Annotations["summary"])
	require.GreaterOrEqual(t, firing.FiredAt.AsTime().Sub(firing.ActiveSince.AsTime()), time.Second, "fired after `for`")
	require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(context.Context) error {
		if n := rcv.count("firing", "cpu-hot"); n != 1 {
			return fmt.Errorf("%d firing deliveries", n)
		}
		return nil
	}))

	// Stop every controller and start them again: still firing, with its
	// original start time.
	stopFeed()
	for _, n := range c.Nodes() {
		n.Stop()
	}
	for _, n := range c.Nodes() {
		n.Restart()
	}
	leader = waitLeader(t, c)
	for _, n := range c.Running() {
		a, err := alertOf(ctx, n, "cpu-hot")
		require.NoError(t, err)
		require.Equal(t, pb.AlertState_ALERT_STATE_FIRING, a.State, n.ID)
		require.True(t, a.ActiveSince.AsTime().Equal(firing.ActiveSince.AsTime()), n.ID)
		require.True(t, a.FiredAt.AsTime().Equal(firing.FiredAt.AsTime()), "not fired again on %s", n.ID)
	}

	// Back under the threshold: resolved, delivered once; the firing
	// notification was not sent again by the restarted cluster.
	hot.Store(false)
	fctx, stopFeed = context.WithCancel(ctx)
	defer stopFeed()
	feed(t, fctx, c, "busy-1", func(int) float64 { return 10 })
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		a, err := alertOf(ctx, leader, "cpu-hot")
		if err == nil && a.State != pb.AlertState_ALERT_STATE_RESOLVED {
			err = fmt.Errorf("cpu-hot is %v", a.State)
		}
		if err == nil && rcv.count("resolved", "cpu-hot") != 1 {
			err = fmt.Errorf("%d resolved deliveries", rcv.count("resolved", "cpu-hot"))
		}
		return err
	}))
	time.Sleep(500 * time.Millisecond) // five more notifier rounds: nothing else may arrive
	require.Equal(t, 1, rcv.count("firing", "cpu-hot"))
	require.Equal(t, 1, rcv.count("resolved", "cpu-hot"))
	for k, n := range rcv.keys {
		require.Equal(t, 1, n, "key %s delivered %d times", k, n)
	}
}

func TestAlerts_flappingInsideForNeverFires(t *testing.T) {
	c := startAlertCluster(t)
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	_, err := pb.NewAlertServiceClient(leader.Conn()).CreateRule(ctx, &pb.CreateRuleRequest{Rule: &pb.AlertRule{
		Name: "cpu-flap", Metric: "cpu_percent", Op: ">", Threshold: 90, For: durationpb.New(2 * time.Second),
	}})
	require.NoError(t, err)
	fctx, stopFeed := context.WithCancel(ctx)
	defer stopFeed()
	// Above for 400ms, below for 200ms: never above for the whole `for`
	// (2s, so that a stalled feeder on a loaded machine does not fire it).
	feed(t, fctx, c, "flappy-1", func(i int) float64 {
		if i%6 < 4 {
			return 95
		}
		return 20
	})
	deadline := time.Now().Add(5 * time.Second)
	pendingSeen := false
	for time.Now().Before(deadline) {
		if a, err := alertOf(ctx, leader, "cpu-flap"); err == nil {
			require.NotEqual(t, pb.AlertState_ALERT_STATE_FIRING, a.State, "a value flapping inside `for` fired")
			pendingSeen = pendingSeen || a.State == pb.AlertState_ALERT_STATE_PENDING
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.True(t, pendingSeen, "the condition held now and then: the alert went pending and was reset")
}

// A rule on a node condition fires while the node's agent reports it and
// resolves once the agent no longer does.
func TestAlerts_nodeConditionRuleFiresAndResolves(t *testing.T) {
	c := startAlertCluster(t)
	leader := waitLeader(t, c)
	f := follower(c, leader)
	ctx := ctxT(t)
	_, err := pb.NewAlertServiceClient(f.Conn()).CreateRule(ctx, &pb.CreateRuleRequest{Rule: &pb.AlertRule{
		Name: "disk-full", Kind: pb.AlertRuleKind_ALERT_RULE_KIND_NODE_CONDITION, Metric: "disk_pressure",
		Severity: pb.Severity_SEVERITY_CRITICAL, Annotations: map[string]string{"summary": "{{ .Node }} is short of disk"},
	}})
	require.NoError(t, err)
	rules, err := pb.NewAlertServiceClient(f.Conn()).ListRules(ctx, &pb.ListRulesRequest{Consistent: true})
	require.NoError(t, err)
	var names []string
	for _, r := range rules.Rules {
		names = append(names, r.Name)
	}
	require.Contains(t, names, "node-disk-stalled", "a new cluster's default rules")

	send := liveAgent(t, ctx, leader.Conn(), helloUnder("full-1", diskPressure(time.Now())))
	a := waitAlert(t, ctx, f, "disk-full", pb.AlertState_ALERT_STATE_FIRING, 10*time.Second)
	require.Equal(t, "full-1", a.Node)
	require.Equal(t, "full-1 is short of disk", a.Annotations["summary"])
	require.Equal(t, 1.0, a.Value)

	send(conditions())
	waitAlert(t, ctx, f, "disk-full", pb.AlertState_ALERT_STATE_RESOLVED, 10*time.Second)
}

// TestAlerts_poolErrorRatioFiresAndResolves: a balancer reports, through a
// follower, a pool whose backend fails a quarter of its requests; a pool
// rule on error_ratio over 10s fires on that pool, and resolves once the
// errors stop.
func TestAlerts_poolErrorRatioFiresAndResolves(t *testing.T) {
	c := startAlertCluster(t)
	leader := waitLeader(t, c)
	f := follower(c, leader)
	ctx := ctxT(t)
	_, err := pb.NewPoolServiceClient(f.Conn()).CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "web", PathPrefix: "/", Backends: []*pb.Backend{{Address: "127.0.0.1:9"}}}})
	require.NoError(t, err)
	_, err = pb.NewAlertServiceClient(f.Conn()).CreateRule(ctx, &pb.CreateRuleRequest{Rule: &pb.AlertRule{
		Name: "web-errors", Kind: pb.AlertRuleKind_ALERT_RULE_KIND_POOL_THRESHOLD, Metric: "error_ratio", Op: ">", Threshold: 0.1,
		Window: durationpb.New(10 * time.Second), Selector: "pool=web", Severity: pb.Severity_SEVERITY_CRITICAL,
		Annotations: map[string]string{"summary": `{{ .Pool }} fails {{ printf "%.0f" .Value }} of 1`},
	}})
	require.NoError(t, err)

	// The balancer's reports: 20 more requests each, 5 of them failing
	// while failing is set.
	var failing atomic.Bool
	failing.Store(true)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		lb := pb.NewBalancerServiceClient(f.Conn())
		var requests, errs uint64
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			requests += 20
			if failing.Load() {
				errs += 5
			}
			busy := float64(requests) / 100
			_, _ = lb.ReportStats(rctx, &pb.ReportStatsRequest{Balancer: "lb-1", Time: timestamppb.Now(),
				Backends: []*pb.BackendCounters{{Pool: "web", Address: "127.0.0.1:9", Requests: requests, Errors: errs, InFlightSeconds: &busy}},
				Pools:    []*pb.PoolCounters{{Pool: "web"}}})
			select {
			case <-rctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { stop(); <-done }()

	start := time.Now()
	a := waitAlert(t, ctx, f, "web-errors", pb.AlertState_ALERT_STATE_FIRING, 30*time.Second)
	require.GreaterOrEqual(t, time.Since(start), 9*time.Second, "fired before the leader had a whole window of reports")
	require.Equal(t, "web", a.Pool)
	require.Empty(t, a.Node)
	require.Equal(t, "web", a.Labels["pool"])
	require.InDelta(t, 0.25, a.Value, 0.01)
	require.Equal(t, "web fails 0 of 1", a.Annotations["summary"])

	failing.Store(false)
	waitAlert(t, ctx, f, "web-errors", pb.AlertState_ALERT_STATE_RESOLVED, 30*time.Second)
}

// TestTraffic_fromAnyNode: a balancer's reports through one follower are
// the traffic GetTraffic answers from the other, which asks the leader;
// bad requests name their field.
func TestTraffic_fromAnyNode(t *testing.T) {
	c := startAlertCluster(t)
	leader := waitLeader(t, c)
	var fs []*testcluster.Node
	for _, n := range c.Nodes() {
		if n != leader {
			fs = append(fs, n)
		}
	}
	ctx := ctxT(t)
	for _, name := range []string{"api", "web"} {
		_, err := pb.NewPoolServiceClient(leader.Conn()).CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
			Name: name, PathPrefix: "/" + name, Backends: []*pb.Backend{{Address: "127.0.0.1:9"}, {Address: "127.0.0.1:10"}}}})
		require.NoError(t, err)
	}
	lb := pb.NewBalancerServiceClient(fs[0].Conn())
	report := func(i uint64) {
		busy1, busy2 := float64(i)*0.3, float64(i)*0.1 // 1.5 and 0.5 in flight at 5 reports a second
		_, err := lb.ReportStats(ctx, &pb.ReportStatsRequest{Balancer: "lb-1", Time: timestamppb.Now(), BucketBounds: []float64{0.01, 0.1},
			Backends: []*pb.BackendCounters{
				{Pool: "web", Address: "127.0.0.1:9", Requests: 20 * i, Errors: 4 * i, InFlightSeconds: &busy1, LatencyCounts: []uint64{20 * i, 0, 0}},
				{Pool: "web", Address: "127.0.0.1:10", Requests: 20 * i, InFlightSeconds: &busy2, LatencyCounts: []uint64{0, 20 * i, 0}},
			},
			Pools: []*pb.PoolCounters{{Pool: "web"}, {Pool: "api", Waiting: 3}}})
		require.NoError(t, err)
	}
	api := pb.NewPoolServiceClient(fs[1].Conn())
	var web *pb.PoolTraffic
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for i := uint64(0); ; i++ {
		report(i)
		resp, err := api.GetTraffic(ctx, &pb.GetTrafficRequest{Pool: "web", Window: durationpb.New(5 * time.Second)})
		require.NoError(t, err)
		require.Equal(t, leader.ID, resp.Leader)
		require.Len(t, resp.Pools, 1)
		if web = resp.Pools[0]; len(web.Backends) == 2 && web.RequestRate > 0 && i >= 5 {
			break
		}
		require.Less(t, i, uint64(100), "no traffic after 20 s: %v", web)
		<-tick.C
	}
	// The reports reach the leader every 200 ms of the test's clock, not
	// the leader's: the rates are close, not exact.
	require.InDelta(t, 200, web.RequestRate, 40)
	require.InDelta(t, 0.1, web.ErrorRatio, 1e-9)
	require.InDelta(t, 2, web.InFlight, 0.5)
	require.False(t, web.Covered, "a 5s window the leader has not had yet")
	require.InDelta(t, 10, web.P50LatencyMs, 1e-9, "half of the requests under 10 ms")
	require.InDelta(t, 10+90*0.9, web.P95LatencyMs, 1e-9)
	require.Equal(t, "127.0.0.1:10", web.Backends[0].Address)
	require.Zero(t, web.Backends[0].ErrorRate)
	require.InDelta(t, 0.5, web.Backends[0].InFlight, 0.15)
	require.InDelta(t, 20, web.Backends[1].ErrorRate, 5)

	all, err := api.GetTraffic(ctx, &pb.GetTrafficRequest{})
	require.NoError(t, err)
	require.Len(t, all.Pools, 2)
	require.Equal(t, "api", all.Pools[0].Pool)
	require.EqualValues(t, 3, all.Pools[0].Waiting)
	require.Zero(t, all.Pools[0].RequestRate)
	require.Empty(t, all.Pools[1].Backends, "backends only for one pool")

	for name, tc := range map[string]struct {
		req  *pb.GetTrafficRequest
		code codes.Code
		msg  string
	}{
		"unknown pool":     {&pb.GetTrafficRequest{Pool: "nope"}, codes.NotFound, "nope"},
		"bad pool name":    {&pb.GetTrafficRequest{Pool: "No_Pool"}, codes.InvalidArgument, "pool"},
		"window too short": {&pb.GetTrafficRequest{Window: durationpb.New(time.Millisecond)}, codes.InvalidArgument, "window"},
		"window too long":  {&pb.GetTrafficRequest{Window: durationpb.New(time.Hour)}, codes.InvalidArgument, "window"},
		"window not valid": {&pb.GetTrafficRequest{Window: &durationpb.Duration{Seconds: 5, Nanos: -1}}, codes.InvalidArgument, "window"},
	} {
		for _, n := range []*testcluster.Node{leader, fs[1]} {
			_, err := pb.NewPoolServiceClient(n.Conn()).GetTraffic(ctx, tc.req)
			require.Equal(t, tc.code, status.Code(err), "%s on %s: %v", name, n.ID, err)
			require.Contains(t, status.Convert(err).Message(), tc.msg, name)
		}
	}
}

func TestAlerts_badRulesNameTheFieldAndStoreNothing(t *testing.T) {
	c := startAlertCluster(t)
	leader := waitLeader(t, c)
	f := follower(c, leader)
	ctx := ctxT(t)
	api := pb.NewAlertServiceClient(f.Conn())
	good := func() *pb.AlertRule {
		return &pb.AlertRule{Name: "ok", Metric: "cpu_percent", Op: ">", Threshold: 90, For: durationpb.New(time.Minute)}
	}
	for name, tc := range map[string]struct {
		mutate func(r *pb.AlertRule)
		field  string
	}{
		"unknown metric":   {func(r *pb.AlertRule) { r.Metric = "cpu" }, "rule.metric"},
		"unknown operator": {func(r *pb.AlertRule) { r.Op = "=>" }, "rule.op"},
		"negative for":     {func(r *pb.AlertRule) { r.For = durationpb.New(-time.Second) }, "rule.for"},
		"invalid selector": {func(r *pb.AlertRule) { r.Selector = "tier in web" }, "rule.selector"},
		"bad template":     {func(r *pb.AlertRule) { r.Annotations = map[string]string{"summary": "{{ .Value "} }, "rule.annotations.summary"},
		"bad name":         {func(r *pb.AlertRule) { r.Name = "Not OK" }, "rule.name"},
		"unknown severity": {func(r *pb.AlertRule) { r.Severity = 42 }, "rule.severity"},
		"unknown condition": {func(r *pb.AlertRule) {
			r.Kind, r.Metric, r.Op, r.Threshold = pb.AlertRuleKind_ALERT_RULE_KIND_NODE_CONDITION, "disk_full", "", 0
		}, "rule.metric"},
		"unknown kind": {func(r *pb.AlertRule) { r.Kind = 42 }, "rule.kind"},
		"unknown pool metric": {func(r *pb.AlertRule) {
			r.Kind = pb.AlertRuleKind_ALERT_RULE_KIND_POOL_THRESHOLD
		}, "rule.metric"},
		"pool window too short": {func(r *pb.AlertRule) {
			r.Kind, r.Metric, r.Window = pb.AlertRuleKind_ALERT_RULE_KIND_POOL_THRESHOLD, "error_ratio", durationpb.New(time.Second)
		}, "rule.window"},
		"invalid window": {func(r *pb.AlertRule) {
			r.Kind, r.Metric, r.Window = pb.AlertRuleKind_ALERT_RULE_KIND_POOL_THRESHOLD, "error_ratio", &durationpb.Duration{Seconds: 1, Nanos: -1}
		}, "rule.window"},
	} {
		t.Run(name, func(t *testing.T) {
			r := good()
			tc.mutate(r)
			_, err := api.CreateRule(ctx, &pb.CreateRuleRequest{Rule: r})
			require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
			require.Contains(t, status.Convert(err).Message(), tc.field)
		})
	}
	_, err := api.CreateRule(ctx, &pb.CreateRuleRequest{})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	rules, err := api.ListRules(ctx, &pb.ListRulesRequest{Consistent: true})
	require.NoError(t, err)
	for _, r := range rules.Rules {
		require.NotEqual(t, "ok", r.Name)
	}
	_, err = api.UpdateRule(ctx, &pb.UpdateRuleRequest{Rule: good()})
	require.Equal(t, codes.NotFound, status.Code(err), "%v", err)
	_, err = api.CreateRule(ctx, &pb.CreateRuleRequest{Rule: good()})
	require.NoError(t, err)
	_, err = api.CreateRule(ctx, &pb.CreateRuleRequest{Rule: good()})
	require.Equal(t, codes.AlreadyExists, status.Code(err))
	_, err = api.DeleteRule(ctx, &pb.DeleteRuleRequest{Rule: "ok"})
	require.NoError(t, err)
}

func TestAlerts_leaderKilledBeforeDeliveryDeliversOnce(t *testing.T) {
	rcv := &webhookReceiver{keys: map[string]int{}}
	hook := httptest.NewServer(rcv)
	defer hook.Close()
	c := testcluster.Start(t, testcluster.Options{
		Nodes: 3,
		Launcher: servertest.Launcher{Configure: func(c *server.Config) {
			c.HeartbeatTTL = 30 * time.Second
			c.AlertInterval = 100 * time.Millisecond
			// The first notification of a group waits 1.5s: long enough to
			// kill the leader after the transition and before the send.
			c.AlertGroupWait = 1500 * time.Millisecond
			c.AlertGroupInterval = 200 * time.Millisecond
			c.AlertWebhooks = []string{hook.URL}
		}},
		HeartbeatTimeout: 500 * time.Millisecond,
		ElectionTimeout:  500 * time.Millisecond,
	})
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	_, err := pb.NewAlertServiceClient(leader.Conn()).CreateRule(ctx, &pb.CreateRuleRequest{Rule: &pb.AlertRule{
		Name: "cpu-now", Metric: "cpu_percent", Op: ">", Threshold: 90,
	}})
	require.NoError(t, err)
	fctx, stopFeed := context.WithCancel(ctx)
	defer stopFeed()
	feed(t, fctx, c, "hot-1", func(int) float64 { return 99 })

	waitAlert(t, ctx, leader, "cpu-now", pb.AlertState_ALERT_STATE_FIRING, 10*time.Second)
	require.Zero(t, rcv.count("firing", "cpu-now"), "still inside group_wait")
	leader.Kill()
	waitLeader(t, c)
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
		if n := rcv.count("firing", "cpu-now"); n != 1 {
			return fmt.Errorf("%d firing deliveries", n)
		}
		return nil
	}))
	time.Sleep(time.Second) // ten more notifier rounds on the new leader
	require.Equal(t, 1, rcv.count("firing", "cpu-now"), "delivered exactly once across the failover")
}

func TestAlerts_silenceSuppressesDeliveryWhileItLasts(t *testing.T) {
	rcv := &webhookReceiver{keys: map[string]int{}}
	hook := httptest.NewServer(rcv)
	defer hook.Close()
	c := startAlertCluster(t, hook.URL)
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	api := pb.NewAlertServiceClient(follower(c, leader).Conn())

	// Bad silences are refused and store nothing.
	_, err := api.CreateSilence(ctx, &pb.CreateSilenceRequest{Silence: &pb.Silence{EndsAt: timestamppb.New(time.Now().Add(time.Hour))}})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	_, err = api.CreateSilence(ctx, &pb.CreateSilenceRequest{Silence: &pb.Silence{
		Matchers: []*pb.SilenceMatcher{{Name: "alertname", Value: "x", IsEqual: true}},
		StartsAt: timestamppb.New(time.Now()), EndsAt: timestamppb.New(time.Now().Add(-time.Hour)),
	}})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)

	ends := time.Now().Add(3 * time.Second)
	sil, err := api.CreateSilence(ctx, &pb.CreateSilenceRequest{Silence: &pb.Silence{
		Matchers: []*pb.SilenceMatcher{{Name: "alertname", Value: "cpu-quiet", IsEqual: true}},
		EndsAt:   timestamppb.New(ends), CreatedBy: "test", Comment: "maintenance",
	}})
	require.NoError(t, err)
	list, err := api.ListSilences(ctx, &pb.ListSilencesRequest{Consistent: true})
	require.NoError(t, err)
	require.Len(t, list.Silences, 1)
	require.Equal(t, sil.Silence.Id, list.Silences[0].Id)

	_, err = api.CreateRule(ctx, &pb.CreateRuleRequest{Rule: &pb.AlertRule{Name: "cpu-quiet", Metric: "cpu_percent", Op: ">", Threshold: 90}})
	require.NoError(t, err)
	fctx, stopFeed := context.WithCancel(ctx)
	defer stopFeed()
	feed(t, fctx, c, "muted-1", func(int) float64 { return 99 })
	waitAlert(t, ctx, leader, "cpu-quiet", pb.AlertState_ALERT_STATE_FIRING, 10*time.Second)
	for time.Now().Before(ends.Add(-200 * time.Millisecond)) {
		require.Zero(t, rcv.count("firing", "cpu-quiet"), "delivered while silenced")
		time.Sleep(50 * time.Millisecond)
	}
	require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(context.Context) error {
		if n := rcv.count("firing", "cpu-quiet"); n != 1 {
			return fmt.Errorf("%d firing deliveries after the silence", n)
		}
		return nil
	}))
	_, err = api.DeleteSilence(ctx, &pb.DeleteSilenceRequest{Silence: sil.Silence.Id})
	require.NoError(t, err)
	_, err = api.DeleteSilence(ctx, &pb.DeleteSilenceRequest{Silence: sil.Silence.Id})
	require.Equal(t, codes.NotFound, status.Code(err))
}

func TestAlerts_routedByLabelsToTheirReceivers(t *testing.T) {
	pager, ops := &webhookReceiver{keys: map[string]int{}}, &webhookReceiver{keys: map[string]int{}}
	pagerSrv, opsSrv := httptest.NewServer(pager), httptest.NewServer(ops)
	defer pagerSrv.Close()
	defer opsSrv.Close()
	delivery, err := alertconfig.Parse([]byte(fmt.Sprintf(`{
	  "receivers": [
	    {"name": "ops", "kind": "webhook", "url": %q, "send_resolved": true},
	    {"name": "pager", "kind": "webhook", "url": %q, "send_resolved": true}
	  ],
	  "route": {"receiver": "ops", "group_by": ["alertname"], "group_wait": "100ms", "group_interval": "200ms",
	    "routes": [{"matchers": ["severity=critical"], "receiver": "pager"}]}
	}`, opsSrv.URL, pagerSrv.URL)))
	require.NoError(t, err)
	c := testcluster.Start(t, testcluster.Options{
		Nodes: 3,
		Launcher: servertest.Launcher{Configure: func(c *server.Config) {
			c.AlertInterval = 100 * time.Millisecond
			c.AlertDelivery = &delivery
		}},
		HeartbeatTimeout: 500 * time.Millisecond,
		ElectionTimeout:  500 * time.Millisecond,
	})
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	api := pb.NewAlertServiceClient(leader.Conn())
	for _, r := range []*pb.AlertRule{
		{Name: "cpu-page", Metric: "cpu_percent", Op: ">", Threshold: 90, Severity: pb.Severity_SEVERITY_CRITICAL},
		{Name: "cpu-note", Metric: "cpu_percent", Op: ">", Threshold: 80, Severity: pb.Severity_SEVERITY_WARNING},
	} {
		_, err := api.CreateRule(ctx, &pb.CreateRuleRequest{Rule: r})
		require.NoError(t, err)
	}
	fctx, stopFeed := context.WithCancel(ctx)
	defer stopFeed()
	feed(t, fctx, c, "routed-1", func(int) float64 { return 95 })
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(context.Context) error {
		if pager.count("firing", "cpu-page") != 1 || ops.count("firing", "cpu-note") != 1 {
			return fmt.Errorf("pager %d, ops %d", pager.count("firing", "cpu-page"), ops.count("firing", "cpu-note"))
		}
		return nil
	}))
	require.Zero(t, pager.count("firing", "cpu-note"), "a warning does not page")
	require.Zero(t, ops.count("firing", "cpu-page"), "the critical alert went to the pager only")
}

func TestAlerts_defaultNodeDownRuleFires(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{
		Nodes: 3,
		Launcher: servertest.Launcher{Configure: func(c *server.Config) {
			c.HeartbeatTTL = time.Second
			c.AlertInterval = 100 * time.Millisecond
		}},
		HeartbeatTimeout: 500 * time.Millisecond,
		ElectionTimeout:  500 * time.Millisecond,
	})
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	sctx, cancel := context.WithCancel(ctx)
	_, first := agentStream(t, sctx, leader.Conn(), "gone-1")
	require.NotNil(t, first.GetWelcome())
	cancel() // the agent dies
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		a, err := alertOf(ctx, leader, "node-down")
		if err == nil && (a.State != pb.AlertState_ALERT_STATE_FIRING || a.Node != "gone-1") {
			err = fmt.Errorf("node-down is %v on %q", a.State, a.Node)
		}
		return err
	}))
}
