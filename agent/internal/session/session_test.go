package session

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hostscale/hostscale/agent/internal/controllertest"
	"github.com/hostscale/hostscale/agent/internal/sample"
	"github.com/hostscale/hostscale/internal/promtest"
	"github.com/hostscale/hostscale/internal/syncbuf"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const wait = 5 * time.Second

func testConfig(controllers ...string) Config {
	cfg := DefaultConfig()
	cfg.Node = "node-1"
	cfg.Labels = map[string]string{"zone": "a"}
	cfg.Controllers = controllers
	cfg.Interval = 50 * time.Millisecond
	cfg.BackoffBase = 20 * time.Millisecond
	cfg.BackoffMax = 200 * time.Millisecond
	cfg.HelloTimeout = 2 * time.Second
	cfg.Facts = sample.NewFake()
	return cfg
}

// running starts s.Run and stops it at the end of the test.
func running(t *testing.T, s *Session) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, s.Run(ctx)) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

func offer(t *testing.T, s *Session, src *sample.Fake, n int) {
	t.Helper()
	for range n {
		smp, err := src.Sample(context.Background())
		require.NoError(t, err)
		s.Offer(smp)
	}
}

func seq(from, to uint32) []uint32 {
	var out []uint32
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func TestSession_sendsHelloThenSamplesInOrderThenHeartbeats(t *testing.T) {
	c := controllertest.Start(t, "c1")
	reg := prometheus.NewRegistry()
	cfg := testConfig(c.Addr())
	cfg.Registerer = reg
	s, err := New(cfg)
	require.NoError(t, err)
	require.ErrorIs(t, s.Ready(), ErrNotConnected)
	running(t, s)

	require.Eventually(t, s.Connected, wait, 5*time.Millisecond)
	require.NoError(t, s.Ready())
	require.Equal(t, 1.0, promtest.Get(t, reg, "hostscale_agent_connected", nil))
	require.Len(t, c.Hellos(), 1)
	h := c.Hellos()[0]
	require.Equal(t, "node-1", h.GetNode())
	require.Equal(t, map[string]string{"zone": "a"}, h.GetLabels())
	require.Equal(t, "fake-host", h.GetFacts().GetHostname())
	require.Equal(t, uint32(2), h.GetFacts().GetCpuCount())
	require.Equal(t, 50*time.Millisecond, h.GetInterval().AsDuration())

	src := sample.NewFake()
	for range 10 {
		offer(t, s, src, 1)
		time.Sleep(time.Millisecond) // let batches of one and of several both happen
	}
	require.Eventually(t, func() bool {
		nums, _ := c.Received()
		return len(nums) == 10
	}, wait, 5*time.Millisecond)
	nums, late := c.Received()
	require.Equal(t, seq(1, 10), nums)
	require.NotContains(t, late, true, "samples taken while connected are not late")
	require.Eventually(t, func() bool { return s.Buffered() == 0 }, wait, 5*time.Millisecond)

	// Idle: heartbeats about every interval.
	require.Eventually(t, func() bool { return c.Heartbeats() >= 3 }, wait, 10*time.Millisecond)
	require.Equal(t, 10.0, promtest.Get(t, reg, "hostscale_agent_samples_acked_total", nil))
	require.Equal(t, 0.0, promtest.Get(t, reg, "hostscale_agent_samples_dropped_total", nil))
}

func TestSession_heartbeatsWithinWelcomeTTL(t *testing.T) {
	c := controllertest.Start(t, "c1")
	c.Set(controllertest.Behaviour{TTL: 300 * time.Millisecond})
	cfg := testConfig(c.Addr())
	cfg.Interval = time.Hour
	s, err := New(cfg)
	require.NoError(t, err)
	running(t, s)
	// With an hour's interval, only the TTL (a heartbeat every TTL/3) can
	// explain heartbeats.
	require.Eventually(t, func() bool { return c.Heartbeats() >= 3 }, wait, 10*time.Millisecond)
}

func TestSession_splitsBacklogByWelcomeMaxBatch(t *testing.T) {
	c := controllertest.Start(t, "c1")
	c.Set(controllertest.Behaviour{MaxBatch: 3})
	s, err := New(testConfig(c.Addr()))
	require.NoError(t, err)
	src := sample.NewFake()
	offer(t, s, src, 10)
	running(t, s)

	require.Eventually(t, func() bool {
		nums, _ := c.Received()
		return len(nums) == 10
	}, wait, 5*time.Millisecond)
	nums, late := c.Received()
	require.Equal(t, seq(1, 10), nums)
	require.NotContains(t, late, false, "samples taken before the stream are late")
	for _, n := range c.BatchSizes() {
		require.LessOrEqual(t, n, 3)
	}
}

func TestSession_followsRedirectAtOnce(t *testing.T) {
	leader := controllertest.Start(t, "leader")
	follower := controllertest.Start(t, "follower")
	follower.Set(controllertest.Behaviour{Redirect: &pb.Redirect{LeaderId: "leader", LeaderAddress: leader.Addr()}})
	cfg := testConfig(follower.Addr())
	// A back-off this long would fail the test: a Redirect is followed
	// without one.
	cfg.BackoffBase = 10 * time.Second
	cfg.BackoffMax = 10 * time.Second
	s, err := New(cfg)
	require.NoError(t, err)
	running(t, s)

	require.Eventually(t, func() bool { return leader.OpenStreams() == 1 }, 2*time.Second, 5*time.Millisecond)
	require.Eventually(t, s.Connected, wait, 5*time.Millisecond)
	require.Len(t, follower.Attempts(), 1)

	src := sample.NewFake()
	offer(t, s, src, 3)
	require.Eventually(t, func() bool {
		nums, _ := leader.Received()
		return len(nums) == 3
	}, wait, 5*time.Millisecond)
}

func TestSession_redirectWithoutLeaderTriesNextControllerAfterBackoff(t *testing.T) {
	follower := controllertest.Start(t, "follower")
	follower.Set(controllertest.Behaviour{Redirect: &pb.Redirect{}})
	leader := controllertest.Start(t, "leader")
	cfg := testConfig(follower.Addr(), leader.Addr())
	cfg.BackoffBase = 200 * time.Millisecond
	s, err := New(cfg)
	require.NoError(t, err)
	running(t, s)

	require.Eventually(t, func() bool { return leader.OpenStreams() == 1 }, wait, 5*time.Millisecond)
	gap := leader.Attempts()[0].Sub(follower.Attempts()[0])
	require.GreaterOrEqual(t, gap, 180*time.Millisecond, "an unknown leader is a failure: back off")
}

func TestSession_keepsAskingOftenWhileTheClusterElects(t *testing.T) {
	// Every controller answers, none knows a leader: an election is on.
	// The waits stay short instead of growing as from a dead cluster.
	c1 := controllertest.Start(t, "c1")
	c2 := controllertest.Start(t, "c2")
	for _, c := range []*controllertest.Controller{c1, c2} {
		c.Set(controllertest.Behaviour{Redirect: &pb.Redirect{}})
	}
	cfg := testConfig(c1.Addr(), c2.Addr())
	cfg.BackoffBase, cfg.BackoffMax = 50*time.Millisecond, 10*time.Second
	s, err := New(cfg)
	require.NoError(t, err)
	running(t, s)
	// Growing waits (50ms doubling) would need over 6s for ten attempts;
	// capped at four bases they take about 2s.
	require.Eventually(t, func() bool { return len(c1.Attempts())+len(c2.Attempts()) >= 10 }, 4*time.Second, 10*time.Millisecond)
}

func TestSession_buffersWhileAllControllersDownAndSendsLateInOrder(t *testing.T) {
	c := controllertest.Start(t, "c1")
	reg := prometheus.NewRegistry()
	cfg := testConfig(c.Addr())
	cfg.BufferSize = 5
	cfg.Registerer = reg
	s, err := New(cfg)
	require.NoError(t, err)
	running(t, s)
	require.Eventually(t, s.Connected, wait, 5*time.Millisecond)

	src := sample.NewFake()
	offer(t, s, src, 2)
	require.Eventually(t, func() bool { return s.Buffered() == 0 }, wait, 5*time.Millisecond)

	c.Stop()
	require.Eventually(t, func() bool { return !s.Connected() }, wait, 5*time.Millisecond)
	require.Equal(t, 0.0, promtest.Get(t, reg, "hostscale_agent_connected", nil))
	offer(t, s, src, 8) // samples 3..10; the bound of 5 keeps 6..10
	require.Equal(t, 5, s.Buffered())
	require.Equal(t, 3.0, promtest.Get(t, reg, "hostscale_agent_samples_dropped_total", nil))
	require.Equal(t, 5.0, promtest.Get(t, reg, "hostscale_agent_samples_buffered", nil))
	// Stay down over several back-off rounds.
	require.Eventually(t, func() bool {
		return promtest.Get(t, reg, "hostscale_agent_reconnects_total", nil) >= 4
	}, wait, 5*time.Millisecond)

	c.Restart()
	require.Eventually(t, func() bool { return s.Buffered() == 0 }, wait, 5*time.Millisecond)
	offer(t, s, src, 1)
	require.Eventually(t, func() bool {
		nums, _ := c.Received()
		return len(nums) == 8
	}, wait, 5*time.Millisecond)
	nums, late := c.Received()
	require.Equal(t, []uint32{1, 2, 6, 7, 8, 9, 10, 11}, nums, "acknowledged samples are not resent; buffered ones come first, in order")
	require.Equal(t, []bool{false, false, true, true, true, true, true, false}, late)
}

func TestSession_resendsUnacknowledgedBatchesLate(t *testing.T) {
	c := controllertest.Start(t, "c1")
	c.Set(controllertest.Behaviour{NoAck: true})
	cfg := testConfig(c.Addr())
	cfg.AckTimeout = 200 * time.Millisecond
	s, err := New(cfg)
	require.NoError(t, err)
	running(t, s)
	require.Eventually(t, s.Connected, wait, 5*time.Millisecond)
	src := sample.NewFake()
	offer(t, s, src, 2)
	require.Eventually(t, func() bool {
		nums, _ := c.Received()
		return len(nums) == 2
	}, wait, 5*time.Millisecond)

	// Unacknowledged past AckTimeout: the stream is given up; the samples
	// are sent again on the next one, now late.
	c.Set(controllertest.Behaviour{})
	require.Eventually(t, func() bool { return len(c.Attempts()) >= 2 && s.Buffered() == 0 }, wait, 5*time.Millisecond)
	nums, late := c.Received()
	require.Equal(t, []uint32{1, 2, 1, 2}, nums)
	require.Equal(t, []bool{false, false, true, true}, late)
}

// A controller that went silent (nothing, not even an Ack, for AckTimeout)
// is not tried again first: a controller cut off from the network would
// only make that attempt wait out its Hello timeout, while the new leader
// counts down the node's heartbeat TTL.
func TestSession_leavesASilentControllerForTheNextOne(t *testing.T) {
	c1 := controllertest.Start(t, "c1")
	c2 := controllertest.Start(t, "c2")
	c1.Set(controllertest.Behaviour{NoAck: true})
	cfg := testConfig(c1.Addr(), c2.Addr())
	cfg.AckTimeout = 200 * time.Millisecond
	s, err := New(cfg)
	require.NoError(t, err)
	running(t, s)
	require.Eventually(t, s.Connected, wait, 5*time.Millisecond)
	offer(t, s, sample.NewFake(), 1)
	require.Eventually(t, func() bool { return len(c2.Attempts()) >= 1 && s.Buffered() == 0 }, wait, 5*time.Millisecond,
		"the sample reaches c2")
	require.Len(t, c1.Attempts(), 1, "c1 was not tried again before c2")
}

func TestSession_backsOffWhileRefusedAndResetsAfterWelcome(t *testing.T) {
	c1 := controllertest.Start(t, "c1")
	c2 := controllertest.Start(t, "c2")
	refuse := controllertest.Behaviour{Refuse: status.Error(codes.Unavailable, "not now")}
	c1.Set(refuse)
	c2.Set(refuse)
	cfg := testConfig(c1.Addr(), c2.Addr())
	cfg.BackoffBase = 40 * time.Millisecond
	cfg.BackoffMax = 640 * time.Millisecond
	s, err := New(cfg)
	require.NoError(t, err)
	// Always the longest wait, so the spacing is exact.
	s.jitter = func(n int64) int64 { return n - 1 }
	running(t, s)

	attempts := func() []time.Time {
		all := append(c1.Attempts(), c2.Attempts()...)
		slicesSortTimes(all)
		return all
	}
	require.Eventually(t, func() bool { return len(attempts()) >= 6 }, wait, 5*time.Millisecond)
	at := attempts()[:6]
	// Waits 40, 80, 160, 320, 640 ms: doubling, never spinning.
	want := 40 * time.Millisecond
	for i := 1; i < len(at); i++ {
		require.GreaterOrEqual(t, at[i].Sub(at[i-1]), want-5*time.Millisecond, "gap %d", i)
		want = min(2*want, cfg.BackoffMax)
	}
	// The controllers are tried in turn.
	require.Len(t, c1.Attempts(), len(c2.Attempts())+len(attempts())%2)

	c1.Set(controllertest.Behaviour{})
	c2.Set(controllertest.Behaviour{})
	require.Eventually(t, s.Connected, 3*time.Second, 5*time.Millisecond)
	before := len(attempts())
	dropped := time.Now()
	c1.DropStreams()
	c2.DropStreams()
	require.Eventually(t, func() bool { return len(attempts()) > before }, wait, 2*time.Millisecond)
	gap := attempts()[before].Sub(dropped)
	require.Less(t, gap, 300*time.Millisecond, "back-off starts over after a Welcome")
	require.Eventually(t, s.Connected, wait, 5*time.Millisecond)
}

func TestSession_backoffBounds(t *testing.T) {
	s, err := New(testConfig("127.0.0.1:1"))
	require.NoError(t, err)
	for n := range 12 {
		hi := min(s.cfg.BackoffBase<<n, s.cfg.BackoffMax)
		for range 200 {
			d := s.backoff(n)
			require.GreaterOrEqual(t, d, s.cfg.BackoffBase)
			require.LessOrEqual(t, d, hi)
		}
	}
}

func TestSession_refusalCodesAreLoggedAsErrors(t *testing.T) {
	c := controllertest.Start(t, "c1")
	c.Set(controllertest.Behaviour{Refuse: status.Error(codes.InvalidArgument, "hello.node: bad")})
	var logs syncbuf.Buffer
	cfg := testConfig(c.Addr())
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	s, err := New(cfg)
	require.NoError(t, err)
	running(t, s)
	require.Eventually(t, func() bool { return len(c.Attempts()) >= 2 }, wait, 5*time.Millisecond)
	require.Contains(t, logs.String(), "level=ERROR")
	require.Contains(t, logs.String(), "code=InvalidArgument")
	require.False(t, s.Connected())
}

func TestSession_splitsBatchesOnResourceExhausted(t *testing.T) {
	c := controllertest.Start(t, "c1")
	c.Set(controllertest.Behaviour{ExhaustAbove: 2, MaxBatch: 10})
	reg := prometheus.NewRegistry()
	cfg := testConfig(c.Addr())
	cfg.Registerer = reg
	s, err := New(cfg)
	require.NoError(t, err)
	src := sample.NewFake()
	offer(t, s, src, 8)
	running(t, s)

	require.Eventually(t, func() bool { return s.Buffered() == 0 }, wait, 5*time.Millisecond)
	nums, _ := c.Received()
	require.Equal(t, seq(1, 8), nums)
	for _, n := range c.BatchSizes() {
		require.LessOrEqual(t, n, 2)
	}
	require.Equal(t, 0.0, promtest.Get(t, reg, "hostscale_agent_samples_dropped_total", nil))
}

func TestSession_dropsASingleSampleTheControllerCannotTake(t *testing.T) {
	c := controllertest.Start(t, "c1")
	c.Set(controllertest.Behaviour{Poison: 3})
	reg := prometheus.NewRegistry()
	cfg := testConfig(c.Addr())
	cfg.Registerer = reg
	s, err := New(cfg)
	require.NoError(t, err)
	src := sample.NewFake()
	offer(t, s, src, 4)
	running(t, s)

	require.Eventually(t, func() bool { return s.Buffered() == 0 }, wait, 5*time.Millisecond)
	nums, _ := c.Received()
	require.Equal(t, []uint32{1, 2, 4}, nums)
	require.Equal(t, 1.0, promtest.Get(t, reg, "hostscale_agent_samples_dropped_total", nil))
}

func TestSession_dropsASampleTheControllerRefusesAsInvalid(t *testing.T) {
	c := controllertest.Start(t, "c1")
	c.Set(controllertest.Behaviour{Invalid: 3})
	reg := prometheus.NewRegistry()
	cfg := testConfig(c.Addr())
	cfg.Registerer = reg
	s, err := New(cfg)
	require.NoError(t, err)
	src := sample.NewFake()
	offer(t, s, src, 4)
	running(t, s)

	require.Eventually(t, func() bool { return s.Buffered() == 0 }, wait, 5*time.Millisecond)
	nums, _ := c.Received()
	require.Equal(t, []uint32{1, 2, 4}, nums)
	require.Equal(t, 1.0, promtest.Get(t, reg, "hostscale_agent_samples_dropped_total", nil))
}

func TestSession_givesUpOnSilentControllerAndStopsOnCancel(t *testing.T) {
	// A port whose backlog accepts connections that nobody ever answers.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = lis.Close() })
	reg := prometheus.NewRegistry()
	cfg := testConfig(lis.Addr().String())
	cfg.HelloTimeout = 100 * time.Millisecond
	cfg.Registerer = reg
	s, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	require.Eventually(t, func() bool {
		return promtest.Get(t, reg, "hostscale_agent_reconnects_total", nil) >= 2
	}, wait, 5*time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(wait):
		t.Fatal("Run did not return after cancel")
	}
}

func TestConfig_Validate(t *testing.T) {
	good := testConfig("127.0.0.1:7700")
	require.NoError(t, good.Validate())
	for name, mut := range map[string]func(*Config){
		"noNode":        func(c *Config) { c.Node = "" },
		"noControllers": func(c *Config) { c.Controllers = nil },
		"emptyAddr":     func(c *Config) { c.Controllers = []string{""} },
		"zeroInterval":  func(c *Config) { c.Interval = 0 },
		"zeroBuffer":    func(c *Config) { c.BufferSize = 0 },
		"backoff":       func(c *Config) { c.BackoffMax = c.BackoffBase / 2 },
		"inflight":      func(c *Config) { c.MaxInFlight = 0 },
	} {
		t.Run(name, func(t *testing.T) {
			c := good
			mut(&c)
			require.Error(t, c.Validate())
		})
	}
}

// blockingInstances is an Instances whose Assign waits on release, as the
// driver waits on a stalled disk to save what it was assigned.
type blockingInstances struct {
	release chan struct{}
	mu      sync.Mutex
	entered int
	applied []uint64 // the index of each Assignments applied
}

func (b *blockingInstances) Assign(a *pb.Assignments) bool {
	b.mu.Lock()
	b.entered++
	b.mu.Unlock()
	<-b.release
	b.mu.Lock()
	defer b.mu.Unlock()
	b.applied = append(b.applied, a.GetIndex())
	return true
}

func (b *blockingInstances) Report() *pb.InstanceReport { return &pb.InstanceReport{} }

func (b *blockingInstances) Changed() <-chan struct{} { return make(chan struct{}) }

func (b *blockingInstances) state() (entered int, applied []uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.entered, append([]uint64(nil), b.applied...)
}

// While the driver waits to apply assignments (its disk stalled), the
// stream goes on: samples and heartbeats reach the controller. The
// assignments that came meanwhile are applied after, the latest only.
func TestSession_assignmentsDoNotHoldTheStream(t *testing.T) {
	c := controllertest.Start(t, "c1")
	inst := &blockingInstances{release: make(chan struct{})}
	cfg := testConfig(c.Addr())
	cfg.Instances = inst
	s, err := New(cfg)
	require.NoError(t, err)
	running(t, s)
	require.Eventually(t, s.Connected, wait, 5*time.Millisecond)

	c.Assign(&pb.Assignments{Term: 1, Index: 1})
	require.Eventually(t, func() bool { n, _ := inst.state(); return n == 1 }, wait, 5*time.Millisecond)
	c.Assign(&pb.Assignments{Term: 1, Index: 2})
	c.Assign(&pb.Assignments{Term: 1, Index: 3})
	src := sample.NewFake()
	offer(t, s, src, 5)
	beats := c.Heartbeats()
	require.Eventually(t, func() bool {
		nums, _ := c.Received()
		return len(nums) == 5 && c.Heartbeats() >= beats+3
	}, wait, 5*time.Millisecond, "samples and heartbeats while Assign waits")

	close(inst.release)
	require.Eventually(t, func() bool {
		_, applied := inst.state()
		return slices.Equal(applied, []uint64{1, 3})
	}, wait, 5*time.Millisecond, "the first, then the latest")
}

// fakeConditions is a ConditionSource a test sets.
type fakeConditions struct {
	mu      sync.Mutex
	list    []*pb.NodeCondition
	changed chan struct{}
}

func newFakeConditions(list ...*pb.NodeCondition) *fakeConditions {
	return &fakeConditions{list: list, changed: make(chan struct{})}
}

func (f *fakeConditions) Conditions() []*pb.NodeCondition {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.list)
}

func (f *fakeConditions) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *fakeConditions) set(list ...*pb.NodeCondition) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.list = list
	close(f.changed)
	f.changed = make(chan struct{})
}

func TestSession_sendsConditionsInTheHelloAndOnEveryChange(t *testing.T) {
	c := controllertest.Start(t, "c1")
	disk := &pb.NodeCondition{Type: pb.NodeConditionType_NODE_CONDITION_TYPE_DISK_PRESSURE, Message: "1 GiB free"}
	mem := &pb.NodeCondition{Type: pb.NodeConditionType_NODE_CONDITION_TYPE_MEMORY_PRESSURE, Message: "100 MiB available"}
	conds := newFakeConditions(disk)
	cfg := testConfig(c.Addr())
	cfg.Conditions = conds
	s, err := New(cfg)
	require.NoError(t, err)
	running(t, s)
	require.Eventually(t, s.Connected, wait, 5*time.Millisecond)
	require.Len(t, c.Hellos(), 1)
	require.Len(t, c.Hellos()[0].GetConditions(), 1)
	require.True(t, proto.Equal(disk, c.Hellos()[0].GetConditions()[0]), "the Hello carries the conditions")
	require.Empty(t, c.Conditions(), "nothing changed since the Hello")

	conds.set(disk, mem)
	require.Eventually(t, func() bool { return len(c.Conditions()) == 1 }, wait, 5*time.Millisecond)
	require.Len(t, c.Conditions()[0].GetConditions(), 2)
	conds.set()
	require.Eventually(t, func() bool { return len(c.Conditions()) == 2 }, wait, 5*time.Millisecond)
	require.Empty(t, c.Conditions()[1].GetConditions(), "an empty set says no condition holds")

	// A new stream's Hello has the set as it is then.
	conds.set(mem)
	require.Eventually(t, func() bool { return len(c.Conditions()) == 3 }, wait, 5*time.Millisecond)
	c.DropStreams()
	require.Eventually(t, func() bool { return len(c.Hellos()) == 2 && s.Connected() }, wait, 5*time.Millisecond)
	require.Len(t, c.Hellos()[1].GetConditions(), 1)
	require.True(t, proto.Equal(mem, c.Hellos()[1].GetConditions()[0]))
}

// failingFacts reads no facts.
type failingFacts struct{}

func (failingFacts) Facts(context.Context) (*pb.NodeFacts, error) {
	return nil, errors.New("no facts here")
}

func TestSession_helloCarriesTheAllowedCommandsWithOrWithoutFacts(t *testing.T) {
	for name, facts := range map[string]FactSource{"facts read": sample.NewFake(), "no facts": failingFacts{}} {
		t.Run(name, func(t *testing.T) {
			c := controllertest.Start(t, "c1")
			cfg := testConfig(c.Addr())
			cfg.Facts = facts
			cfg.AllowedCommands = []string{"/srv/apps/**"}
			s, err := New(cfg)
			require.NoError(t, err)
			running(t, s)
			require.Eventually(t, func() bool { return len(c.Hellos()) > 0 }, wait, 5*time.Millisecond)
			require.Equal(t, []string{"/srv/apps/**"}, c.Hellos()[0].GetFacts().GetAllowedCommands())
		})
	}
}
