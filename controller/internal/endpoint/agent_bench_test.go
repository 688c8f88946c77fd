package endpoint

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// BenchmarkCheckSample is the check every agent's sample passes on the
// leader before it is stored.
func BenchmarkCheckSample(b *testing.B) {
	now := time.Now()
	s := &pb.Sample{
		Time: timestamppb.New(now), CpuPercent: 23.5, CpuCorePercent: []float64{20, 30, 25, 19}, Load1: 1.2, Load5: 0.9, Load15: 0.7,
		MemoryUsedPercent: 41, MemoryUsedBytes: 3 << 30, NetRxBytesPerSecond: 1e6, NetTxBytesPerSecond: 2e6, TcpConnections: 120, Processes: 210,
		Disks:     []*pb.DiskUsage{{Mount: "/", UsedPercent: 55, UsedBytes: 50 << 30, TotalBytes: 100 << 30}},
		Instances: []*pb.InstanceUsage{{Id: "web-1", CpuPercent: 12}, {Id: "web-2", CpuPercent: 8}},
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := checkSample("samples[0]", s, now, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}
