package metricstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func sample(sec int, cpu float64) *pb.Sample {
	return &pb.Sample{Time: timestamppb.New(t0.Add(time.Duration(sec) * time.Second)), CpuPercent: cpu, MemoryUsedBytes: 16 << 30,
		Disks: []*pb.DiskUsage{{Mount: "/", UsedPercent: 40}, {Mount: "/var", UsedPercent: 91}}}
}

func TestStore_keepsTheNewestCapacitySamplesInOrder(t *testing.T) {
	s := New(3)
	for i := range 5 {
		require.True(t, s.Add("n1", sample(i, float64(i))))
	}
	require.False(t, s.Add("n1", sample(4, 99)), "not newer")
	require.False(t, s.Add("n1", sample(1, 99)), "older")
	pts := s.Series("n1", CPUPercent, time.Time{})
	require.Equal(t, []float64{2, 3, 4}, values(pts))
	require.Equal(t, t0.Add(2*time.Second), pts[0].Time)
	require.Equal(t, []float64{3, 4}, values(s.Series("n1", CPUPercent, t0.Add(3*time.Second))))
	require.Equal(t, []float64{91, 91, 91}, values(s.Series("n1", DiskUsedPercent, time.Time{})), "the fullest mount")
	require.InDelta(t, float64(16<<30), s.Series("n1", MemoryUsedBytes, time.Time{})[0].Value, float64(16<<30)*1e-6)
	newest, ok := s.Newest("n1")
	require.True(t, ok)
	require.Equal(t, t0.Add(4*time.Second), newest)
	require.Nil(t, s.Series("n2", CPUPercent, time.Time{}))
	s.Forget("n1")
	require.Empty(t, s.Nodes())
}

func values(pts []Point) []float64 {
	var out []float64
	for _, p := range pts {
		out = append(out, p.Value)
	}
	return out
}

func TestQuantile(t *testing.T) {
	vs := []float64{}
	for i := 100; i >= 1; i-- {
		vs = append(vs, float64(i))
	}
	require.Equal(t, 95.0, Quantile(vs, 0.95))
	require.Equal(t, 100.0, Quantile(vs, 1))
	require.Equal(t, 1.0, Quantile([]float64{1}, 0.5))
}

func TestSeriesIndex(t *testing.T) {
	for i, n := range SeriesNames {
		j, ok := SeriesIndex(n)
		require.True(t, ok)
		require.Equal(t, i, j)
	}
	_, ok := SeriesIndex("bogus")
	require.False(t, ok)
}

func BenchmarkStore_Add(b *testing.B) {
	s := New(300)
	smp := sample(0, 50)
	names := make([]string, 1000)
	for i := range names {
		names[i] = fmt.Sprintf("node-%d", i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		smp.Time = timestamppb.New(t0.Add(time.Duration(i) * time.Millisecond))
		s.Add(names[i%len(names)], smp)
	}
}

func TestStore_Latest(t *testing.T) {
	s := New(4)
	_, _, ok := s.Latest("n1")
	require.False(t, ok)
	s.Add("n1", sample(1, 10))
	s.Add("n1", sample(2, 20))
	at, vs, ok := s.Latest("n1")
	require.True(t, ok)
	require.Equal(t, t0.Add(2*time.Second), at)
	require.Equal(t, 20.0, vs[CPUPercent])
	require.Equal(t, 91.0, vs[DiskUsedPercent])
}
