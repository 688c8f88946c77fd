package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/internal/grpcx"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// simAgent speaks the agent's side of AgentService.Connect, as many
// agents in one process, so that a test can put a fleet of hundreds of
// hosts on a controller cluster: it registers, follows redirects to the
// leader, sends a sample every interval and reports every assigned
// instance healthy at once, without running anything.
type simAgent struct {
	node        string
	controllers []string
	interval    time.Duration
	stats       *simStats

	mu        sync.Mutex
	instances map[string]string // assigned instance → pool
}

// simStats is what a fleet of simulated agents measured.
type simStats struct {
	mu       sync.Mutex
	ackWaits []time.Duration // batch sent → its Ack
	connects atomic.Int64    // Welcomes received
	failures atomic.Int64    // streams that ended with an error
	lastErr  atomic.Value    // string
}

func (s *simStats) ackWait(d time.Duration) {
	s.mu.Lock()
	s.ackWaits = append(s.ackWaits, d)
	s.mu.Unlock()
}

// takeAckWaits returns the waits recorded since the last call.
func (s *simStats) takeAckWaits() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.ackWaits
	s.ackWaits = nil
	return w
}

// run keeps a stream to the leader open until ctx ends, reconnecting
// after a short random wait when it fails, as the agent does.
func (a *simAgent) run(ctx context.Context) {
	next := a.controllers[rand.IntN(len(a.controllers))]
	for ctx.Err() == nil {
		redirect, err := a.stream(ctx, next)
		switch {
		case ctx.Err() != nil:
			return
		case redirect != "":
			next = redirect
			continue
		case err != nil:
			a.stats.failures.Add(1)
			a.stats.lastErr.Store(fmt.Sprintf("%s: %v", a.node, err))
		}
		next = a.controllers[rand.IntN(len(a.controllers))]
		select {
		case <-ctx.Done():
		case <-time.After(100*time.Millisecond + rand.N(400*time.Millisecond)):
		}
	}
}

// stream runs one stream to addr; it returns the leader's address when
// addr redirected to it.
func (a *simAgent) stream(ctx context.Context, addr string) (redirect string, err error) {
	conn, err := grpcx.Dial(addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := pb.NewAgentServiceClient(conn).Connect(sctx)
	if err != nil {
		return "", err
	}
	if err := st.Send(&pb.ConnectRequest{Message: &pb.ConnectRequest_Hello{Hello: &pb.Hello{
		Node:     a.node,
		Facts:    &pb.NodeFacts{Hostname: a.node, CpuCount: 4, MemoryBytes: 8 << 30, Os: "linux", AgentVersion: "sim"},
		Labels:   map[string]string{"tier": "web"},
		Interval: durationpb.New(a.interval),
	}}}); err != nil {
		return "", err
	}
	first, err := st.Recv()
	if err != nil {
		return "", err
	}
	if r := first.GetRedirect(); r != nil {
		if r.LeaderAddress == "" {
			return "", errors.New("redirected with no leader known")
		}
		return r.LeaderAddress, nil
	}
	if first.GetWelcome() == nil {
		return "", fmt.Errorf("first answer %T, not a welcome", first.Message)
	}
	a.stats.connects.Add(1)

	var (
		sendMu sync.Mutex
		sentMu sync.Mutex
		sent   = map[uint64]time.Time{}
	)
	send := func(m *pb.ConnectRequest) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return st.Send(m)
	}
	var sender sync.WaitGroup
	defer func() { cancel(); sender.Wait() }()
	sender.Go(func() {
		// Agents started together do not sample in step.
		t := time.NewTimer(rand.N(a.interval))
		defer t.Stop()
		for seq := uint64(1); ; seq++ {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
			}
			t.Reset(a.interval)
			now := time.Now()
			sentMu.Lock()
			sent[seq] = now
			sentMu.Unlock()
			err := send(&pb.ConnectRequest{Message: &pb.ConnectRequest_Samples{Samples: &pb.SampleBatch{
				Seq: seq,
				Samples: []*pb.Sample{{
					Time: timestamppb.New(now), CpuPercent: 10 + rand.Float64()*20, CpuCorePercent: []float64{20, 10, 15, 5},
					Load1: 0.5, MemoryUsedPercent: 40, MemoryUsedBytes: 3 << 30, Processes: 120,
				}},
			}}})
			if err != nil {
				cancel()
				return
			}
		}
	})
	for {
		m, err := st.Recv()
		if err != nil {
			if sctx.Err() != nil && ctx.Err() == nil {
				return "", errors.New("send failed")
			}
			return "", err
		}
		switch msg := m.Message.(type) {
		case *pb.ConnectResponse_Ack:
			sentMu.Lock()
			at, ok := sent[msg.Ack.Seq]
			delete(sent, msg.Ack.Seq)
			sentMu.Unlock()
			if ok {
				a.stats.ackWait(time.Since(at))
			}
		case *pb.ConnectResponse_Assignments:
			if err := send(&pb.ConnectRequest{Message: &pb.ConnectRequest_Instances{Instances: a.assign(msg.Assignments)}}); err != nil {
				return "", err
			}
		}
	}
}

// assign takes the leader's assignments and returns the report of them,
// every instance healthy.
func (a *simAgent) assign(asg *pb.Assignments) *pb.InstanceReport {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.instances = map[string]string{}
	r := &pb.InstanceReport{}
	for i, in := range asg.Instances {
		a.instances[in.Instance] = in.Pool
		r.Instances = append(r.Instances, &pb.InstanceStatus{
			Id: in.Instance, Pool: in.Pool, State: pb.InstanceState_INSTANCE_STATE_HEALTHY,
			Address: fmt.Sprintf("127.0.0.1:%d", 20000+i), Since: timestamppb.Now(), Pid: uint32(1000 + i),
		})
	}
	return r
}

// assigned lists the instances the agent was last assigned.
func (a *simAgent) assigned() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Sorted(maps.Keys(a.instances))
}

// simFleet is n simulated agents.
type simFleet struct {
	started time.Time
	agents  []*simAgent
	stats   *simStats
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// startSimFleet starts n simulated agents named sim-0001…, each
// sampling every interval, against the controllers.
func startSimFleet(ctx context.Context, n int, interval time.Duration, controllers []string) *simFleet {
	ctx, cancel := context.WithCancel(ctx)
	f := &simFleet{started: time.Now(), stats: &simStats{}, cancel: cancel}
	for i := range n {
		a := &simAgent{node: fmt.Sprintf("sim-%04d", i+1), controllers: controllers, interval: interval, stats: f.stats}
		f.agents = append(f.agents, a)
		f.wg.Go(func() { a.run(ctx) })
	}
	return f
}

// stop ends every stream and waits for the agents.
func (f *simFleet) stop() {
	f.cancel()
	f.wg.Wait()
}
