// Package controllertest is a fake AgentService on a loopback port for the
// agent's tests: a test sets how it answers (welcome, redirect, refuse,
// drop, withhold acks, reject large batches) and reads what it received.
package controllertest

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hostscale/hostscale/internal/freeport"
	"github.com/hostscale/hostscale/internal/grpcx"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Behaviour is how a Controller answers the next streams.
type Behaviour struct {
	// Refuse fails every Connect at once with this error.
	Refuse error
	// Redirect answers the Hello with this Redirect.
	Redirect *pb.Redirect
	// MaxBatch and TTL go into the Welcome.
	MaxBatch uint32
	TTL      time.Duration
	// NoAck leaves batches unacknowledged.
	NoAck bool
	// ExhaustAbove fails a batch of more samples with RESOURCE_EXHAUSTED.
	ExhaustAbove int
	// Poison fails a batch holding the sample with this Processes value
	// with RESOURCE_EXHAUSTED.
	Poison uint32
	// Invalid fails a batch holding the sample with this Processes value
	// with INVALID_ARGUMENT naming the sample's field in a BadRequest
	// detail, as the controller does for a value no host can produce.
	Invalid uint32
}

// Controller is an AgentService on a loopback port whose answers a
// test sets and whose received messages it reads.
type Controller struct {
	pb.UnimplementedAgentServiceServer
	t    testing.TB
	name string
	addr string
	srv  *grpcx.Server

	mu         sync.Mutex
	b          Behaviour
	attempts   []time.Time
	hellos     []*pb.Hello
	batches    []*pb.SampleBatch // accepted ones
	heartbeats int
	reports    int
	conditions []*pb.NodeConditions
	open       int
	drop       chan struct{}
	// assign carries assignments to send on the open stream (Assign).
	assign chan *pb.Assignments
}

// Start serves a Controller named name on a loopback port until the test
// ends; the port is outside the kernel's ephemeral range (freeport), so
// that Restart can bind it again. It welcomes and acknowledges everything
// until Set says otherwise.
func Start(t testing.TB, name string) *Controller {
	f := &Controller{t: t, name: name, drop: make(chan struct{}), assign: make(chan *pb.Assignments)}
	lis, err := freeport.Listen()
	require.NoError(t, err)
	f.serve(lis)
	return f
}

func (f *Controller) serve(lis net.Listener) {
	srv, err := grpcx.NewServer(grpcx.DefaultServerConfig())
	require.NoError(f.t, err)
	pb.RegisterAgentServiceServer(srv, f)
	f.mu.Lock()
	f.addr = lis.Addr().String()
	f.srv = srv
	f.mu.Unlock()
	go func() { _ = srv.Server.Serve(lis) }()
	f.t.Cleanup(srv.Stop)
}

// Stop closes the port and every stream.
func (f *Controller) Stop() { f.srv.Stop() }

// Restart serves again on the same port.
func (f *Controller) Restart() {
	lis, err := freeport.Relisten(f.addr, 5*time.Second)
	require.NoError(f.t, err)
	f.serve(lis)
}

// Set changes how the following streams are answered.
func (f *Controller) Set(b Behaviour) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.b = b
}

// DropStreams ends every open stream with UNAVAILABLE.
func (f *Controller) DropStreams() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.drop)
	f.drop = make(chan struct{})
}

// Connect implements AgentService.
func (f *Controller) Connect(stream pb.AgentService_ConnectServer) error {
	f.mu.Lock()
	f.attempts = append(f.attempts, time.Now())
	b := f.b
	drop := f.drop
	f.mu.Unlock()
	if b.Refuse != nil {
		return b.Refuse
	}
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := m.GetHello()
	if hello == nil {
		return status.Error(codes.FailedPrecondition, "first message must be a Hello")
	}
	f.mu.Lock()
	f.hellos = append(f.hellos, hello)
	f.mu.Unlock()
	if b.Redirect != nil {
		return stream.Send(&pb.ConnectResponse{Message: &pb.ConnectResponse_Redirect{Redirect: b.Redirect}})
	}
	err = stream.Send(&pb.ConnectResponse{Message: &pb.ConnectResponse_Welcome{Welcome: &pb.Welcome{
		Controller: f.name, Term: 1, HeartbeatTtl: durationpb.New(b.TTL), MaxBatch: b.MaxBatch,
	}}})
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.open++
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.open--
		f.mu.Unlock()
	}()
	in := make(chan *pb.ConnectRequest)
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case in <- m:
			case <-stream.Context().Done():
				return
			}
		}
	}()
	for {
		select {
		case a := <-f.assign:
			if err := stream.Send(&pb.ConnectResponse{Message: &pb.ConnectResponse_Assignments{Assignments: a}}); err != nil {
				return err
			}
		case <-drop:
			return status.Error(codes.Unavailable, "dropped by test")
		case err := <-errc:
			return err
		case <-stream.Context().Done():
			return stream.Context().Err()
		case m := <-in:
			switch m := m.GetMessage().(type) {
			case *pb.ConnectRequest_Heartbeat:
				f.mu.Lock()
				f.heartbeats++
				f.mu.Unlock()
			case *pb.ConnectRequest_Instances:
				f.mu.Lock()
				f.reports++
				f.mu.Unlock()
			case *pb.ConnectRequest_Conditions:
				f.mu.Lock()
				f.conditions = append(f.conditions, m.Conditions)
				f.mu.Unlock()
			case *pb.ConnectRequest_Samples:
				batch := m.Samples
				if b.ExhaustAbove > 0 && len(batch.GetSamples()) > b.ExhaustAbove {
					return status.Errorf(codes.ResourceExhausted, "batch of %d over %d", len(batch.GetSamples()), b.ExhaustAbove)
				}
				for i, s := range batch.GetSamples() {
					if b.Poison != 0 && s.GetProcesses() == b.Poison {
						return status.Error(codes.ResourceExhausted, "poison sample")
					}
					if b.Invalid != 0 && s.GetProcesses() == b.Invalid {
						field := fmt.Sprintf("samples[%d].processes", i)
						st, _ := status.New(codes.InvalidArgument, field+": refused").WithDetails(&errdetails.BadRequest{
							FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: "refused"}},
						})
						return st.Err()
					}
				}
				f.mu.Lock()
				f.batches = append(f.batches, proto.Clone(batch).(*pb.SampleBatch))
				f.mu.Unlock()
				if b.NoAck {
					continue
				}
				n := uint32(len(batch.GetSamples()))
				if err := stream.Send(&pb.ConnectResponse{Message: &pb.ConnectResponse_Ack{
					Ack: &pb.Ack{Seq: batch.GetSeq(), Accepted: n}}}); err != nil {
					return err
				}
			default:
				return status.Error(codes.InvalidArgument, "unexpected message")
			}
		}
	}
}

// Assign sends a to the agent on its open stream, waiting until one is
// open.
func (f *Controller) Assign(a *pb.Assignments) { f.assign <- a }

// Reports counts the instance reports received.
func (f *Controller) Reports() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reports
}

// Conditions returns every set of conditions sent on a stream, in order.
func (f *Controller) Conditions() []*pb.NodeConditions {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*pb.NodeConditions(nil), f.conditions...)
}

// Received returns the Processes value (the Fake's sample number) of every
// sample received, in order, and their late flags.
func (f *Controller) Received() (nums []uint32, late []bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.batches {
		for _, s := range b.GetSamples() {
			nums = append(nums, s.GetProcesses())
			late = append(late, s.GetLate())
		}
	}
	return nums, late
}

// Attempts returns when each Connect call arrived.
func (f *Controller) Attempts() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.attempts...)
}

// OpenStreams returns how many welcomed streams are open.
func (f *Controller) OpenStreams() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.open
}

// Heartbeats returns how many heartbeats arrived.
func (f *Controller) Heartbeats() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.heartbeats
}

// BatchSizes returns the size of every accepted batch, in order.
func (f *Controller) BatchSizes() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int
	for _, b := range f.batches {
		out = append(out, len(b.GetSamples()))
	}
	return out
}

// Addr returns the controller's host:port.
func (f *Controller) Addr() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addr
}

// Hellos returns every Hello received, in order.
func (f *Controller) Hellos() []*pb.Hello {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*pb.Hello(nil), f.hellos...)
}

// Samples returns every sample of the accepted batches, in order.
func (f *Controller) Samples() []*pb.Sample {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*pb.Sample
	for _, b := range f.batches {
		out = append(out, b.GetSamples()...)
	}
	return out
}
