package sample

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// FakeStart is the time of a Fake's first sample.
var FakeStart = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// Fake is a deterministic Sampler for tests. Its n-th sample (from 1) has
// Processes = n, Time = FakeStart + n seconds, and values derived from n, so
// a test can tell samples apart and check their order. It is safe for
// concurrent use.
type Fake struct {
	mu  sync.Mutex
	n   uint32
	err error
}

// NewFake returns a Fake whose first sample is number 1.
func NewFake() *Fake { return &Fake{} }

// SetErr makes every following Sample fail with err (nil: succeed again).
func (f *Fake) SetErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// Taken returns how many samples the Fake has returned.
func (f *Fake) Taken() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int(f.n)
}

// Sample implements Sampler.
func (f *Fake) Sample(ctx context.Context) (*pb.Sample, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	f.n++
	n := f.n
	return &pb.Sample{
		Time:                    timestamppb.New(FakeStart.Add(time.Duration(n) * time.Second)),
		CpuPercent:              float64(n % 101),
		CpuCorePercent:          []float64{float64(n % 101), float64((n * 3) % 101)},
		Load1:                   float64(n%10) / 10,
		Load5:                   0.5,
		Load15:                  0.25,
		MemoryUsedPercent:       50,
		MemoryUsedBytes:         1 << 30,
		SwapUsedPercent:         1,
		SwapUsedBytes:           1 << 20,
		Disks:                   []*pb.DiskUsage{{Mount: "/", UsedPercent: 40, UsedBytes: 40 << 30, TotalBytes: 100 << 30}},
		DiskReadBytesPerSecond:  1000,
		DiskWriteBytesPerSecond: 2000,
		NetRxBytesPerSecond:     3000,
		NetTxBytesPerSecond:     4000,
		TcpConnections:          10,
		Processes:               n,
	}, nil
}

// Facts implements Sampler.
func (f *Fake) Facts(ctx context.Context) (*pb.NodeFacts, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &pb.NodeFacts{
		Hostname:     "fake-host",
		CpuCount:     2,
		MemoryBytes:  2 << 30,
		Os:           "linux",
		Platform:     "fake 1.0",
		Kernel:       "6.0.0-fake",
		AgentVersion: "test",
		BootTime:     timestamppb.New(FakeStart),
	}, nil
}
