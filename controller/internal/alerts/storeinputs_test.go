package alerts

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/metricstore"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestStoreInputs_readsNewestValueAndWindow(t *testing.T) {
	st := metricstore.New(10)
	for i, cpu := range []float64{95, 40, 97} {
		st.Add("n1", &pb.Sample{Time: timestamppb.New(t0.Add(time.Duration(i) * time.Second)), CpuPercent: cpu,
			Disks: []*pb.DiskUsage{{UsedPercent: 50}, {UsedPercent: 93}}})
	}
	in := &StoreInputs{Store: st, NodeList: []NodeInfo{{Name: "n1"}}, From: t0}
	v, at, ok := in.Value("n1", "cpu_percent")
	require.True(t, ok)
	require.Equal(t, 97.0, v)
	require.Equal(t, t0.Add(2*time.Second), at)
	v, _, _ = in.Value("n1", "disk_used_percent")
	require.Equal(t, 93.0, v, "the fullest mount")
	_, _, ok = in.Value("n1", "nope")
	require.False(t, ok)
	_, _, ok = in.Value("n2", "cpu_percent")
	require.False(t, ok)
	in.From = t0.Add(time.Minute)
	_, _, ok = in.Value("n1", "cpu_percent")
	require.False(t, ok, "nothing since From")

	w := in.Window("n1", "cpu_percent", t0.Add(time.Second))
	require.Equal(t, []Sample{{t0.Add(time.Second), 40}, {t0.Add(2 * time.Second), 97}}, w)

	in.Latest = func(node string) (time.Time, [metricstore.NumSeries]float64, bool) {
		var vs [metricstore.NumSeries]float64
		vs[metricstore.CPUPercent] = 12
		return t0, vs, node == "n1"
	}
	v, _, ok = in.Value("n1", "cpu_percent")
	require.True(t, ok)
	require.Equal(t, 12.0, v)

	// A dip in the window keeps a pending alert from firing.
	ev, err := NewEvaluator(DefaultConfig())
	require.NoError(t, err)
	in = &StoreInputs{Store: st, NodeList: []NodeInfo{{Name: "n1"}}, From: t0.Add(-time.Minute)}
	r := cpuRule()
	r.For = 2 * time.Second
	cur := map[Fingerprint]Alert{}
	Apply(cur, ev.Evaluate(t0, []Rule{r}, in, cur)...)
	require.Equal(t, []string{"pending->inactive/flapped"}, kinds(ev.Evaluate(t0.Add(2*time.Second), []Rule{r}, in, cur)))
}
