package sample

import (
	"context"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Sampler measures a host.
type Sampler interface {
	// Sample returns one reading of the host. Rates in it are averaged over
	// the time since the previous call (or since the Sampler was built).
	// The caller owns the returned message.
	Sample(ctx context.Context) (*pb.Sample, error)
	// Facts returns what the host reports when it registers. The caller
	// owns the returned message.
	Facts(ctx context.Context) (*pb.NodeFacts, error)
}

var (
	_ Sampler = (*Host)(nil)
	_ Sampler = (*Fake)(nil)
)
