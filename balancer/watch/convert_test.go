package watch

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/balancer"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestFromProto_mapsPoliciesWeightsAndAnyHost(t *testing.T) {
	in := &pb.Table{
		Version: &pb.TableVersion{Term: 3, Index: 42},
		Pools: []*pb.TablePool{
			{Name: "web", Hosts: []string{"example.com", "*.example.com"}, PathPrefix: "/", Policy: pb.Policy_POLICY_ROUND_ROBIN,
				Backends: []*pb.TableBackend{{Address: "10.0.0.1:80", Weight: 7}, {Address: "10.0.0.2:80", Draining: true}}},
			{Name: "api", PathPrefix: "/api", Policy: pb.Policy_POLICY_LEAST_REQUEST},
			{Name: "old", Hosts: []string{"old.example"}, Policy: pb.Policy_POLICY_UNSPECIFIED,
				Backends: []*pb.TableBackend{{Address: "[fd00::1]:8080", Weight: 1000}}},
		},
	}
	got, err := FromProto(in)
	require.NoError(t, err)
	want := &balancer.Table{
		Version: balancer.Version{Term: 3, Index: 42},
		Pools: []balancer.Pool{
			{Name: "web", Hosts: []string{"example.com", "*.example.com"}, PathPrefix: "/", Policy: balancer.PolicyRoundRobin,
				Backends: []balancer.Backend{{Address: "10.0.0.1:80", Weight: 7}, {Address: "10.0.0.2:80", Weight: DefaultWeight, Draining: true}}},
			{Name: "api", Hosts: []string{"*"}, PathPrefix: "/api", Policy: balancer.PolicyLeastRequest, Backends: []balancer.Backend{}},
			{Name: "old", Hosts: []string{"old.example"}, Policy: balancer.PolicyLeastRequest,
				Backends: []balancer.Backend{{Address: "[fd00::1]:8080", Weight: 1000}}},
		},
	}
	require.Equal(t, want, got)
	require.NoError(t, got.Validate())

	// The result shares nothing with the message.
	in.Pools[0].Hosts[0] = "changed.example"
	require.Equal(t, "example.com", got.Pools[0].Hosts[0])
}

func TestFromProto_carriesHTTPSRedirect(t *testing.T) {
	got, err := FromProto(&pb.Table{Version: &pb.TableVersion{Term: 1, Index: 1}, Pools: []*pb.TablePool{
		{Name: "shop", Hosts: []string{"shop.example"}, HttpsRedirect: true},
		{Name: "api", Hosts: []string{"api.example"}},
	}})
	require.NoError(t, err)
	require.True(t, got.Pools[0].HTTPSRedirect)
	require.False(t, got.Pools[1].HTTPSRedirect)
}

func TestFromProto_convertsHoldWhenEmpty(t *testing.T) {
	got, err := FromProto(&pb.Table{Version: &pb.TableVersion{Index: 1}, Pools: []*pb.TablePool{
		{Name: "unset"},
		{Name: "zero", Hosts: []string{"zero.example"}, HoldWhenEmpty: durationpb.New(0)},
		{Name: "held", Hosts: []string{"held.example"}, HoldWhenEmpty: durationpb.New(30*time.Second + 500*time.Millisecond)},
	}})
	require.NoError(t, err)
	require.Zero(t, got.Pools[0].HoldWhenEmpty)
	require.Zero(t, got.Pools[1].HoldWhenEmpty)
	require.Equal(t, 30*time.Second+500*time.Millisecond, got.Pools[2].HoldWhenEmpty)
	require.NoError(t, got.Validate())

	// A valid duration beyond the balancer's bounds converts, and Apply's
	// validation refuses it naming the field.
	got, err = FromProto(&pb.Table{Version: &pb.TableVersion{Index: 1}, Pools: []*pb.TablePool{
		{Name: "long", HoldWhenEmpty: durationpb.New(time.Hour)}}})
	require.NoError(t, err)
	require.ErrorContains(t, got.Validate(), "pools[0].hold_when_empty: 1h0m0s is outside 0..5m0s")
	got, err = FromProto(&pb.Table{Version: &pb.TableVersion{Index: 1}, Pools: []*pb.TablePool{
		{Name: "neg", HoldWhenEmpty: durationpb.New(-time.Second)}}})
	require.NoError(t, err)
	require.ErrorIs(t, got.Validate(), balancer.ErrInvalidTable)
}

func TestFromProto_emptyTableIsValid(t *testing.T) {
	got, err := FromProto(&pb.Table{Version: &pb.TableVersion{}})
	require.NoError(t, err)
	require.Empty(t, got.Pools)
	require.NoError(t, got.Validate())
}

func TestFromProto_rejectsWhatCannotBeMapped(t *testing.T) {
	tests := []struct {
		name string
		in   *pb.Table
		want string
	}{
		{"nil table", nil, "nil table"},
		{"no version", &pb.Table{}, "no version"},
		{"unknown policy", &pb.Table{Version: &pb.TableVersion{Index: 1}, Pools: []*pb.TablePool{
			{Name: "a"}, {Name: "b", Policy: pb.Policy(9)}}}, "pools[1].policy: unknown policy 9"},
		{"weight too large", &pb.Table{Version: &pb.TableVersion{Index: 1}, Pools: []*pb.TablePool{
			{Name: "a", Backends: []*pb.TableBackend{{Address: "10.0.0.1:1", Weight: balancer.MaxWeight + 1}}}}},
			"pools[0].backends[0].weight: 10001 is above 10000"},
		{"hold with mixed signs", &pb.Table{Version: &pb.TableVersion{Index: 1}, Pools: []*pb.TablePool{
			{Name: "a"}, {Name: "b", HoldWhenEmpty: &durationpb.Duration{Seconds: 1, Nanos: -1}}}},
			"pools[1].hold_when_empty"},
		{"hold beyond the wire's range", &pb.Table{Version: &pb.TableVersion{Index: 1}, Pools: []*pb.TablePool{
			{Name: "a", HoldWhenEmpty: &durationpb.Duration{Seconds: 1 << 40}}}},
			"pools[0].hold_when_empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := FromProto(tc.in)
			require.ErrorIs(t, err, balancer.ErrInvalidTable)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestFromProto_hostNameBackendFailsValidation(t *testing.T) {
	// Controllers accept host names in backend addresses; the balancer
	// routes to IP addresses only, so Apply refuses such a table.
	got, err := FromProto(&pb.Table{Version: &pb.TableVersion{Index: 1}, Pools: []*pb.TablePool{
		{Name: "a", Backends: []*pb.TableBackend{{Address: "db.internal:5432"}}}}})
	require.NoError(t, err)
	err = got.Validate()
	require.ErrorIs(t, err, balancer.ErrInvalidTable)
	require.Contains(t, err.Error(), "pools[0].backends[0].address")
}

func TestParseControllers(t *testing.T) {
	got, err := ParseControllers(" 10.0.0.1:7800, ctl-2.example:7800,,10.0.0.1:7800,[fd00::1]:7800 ")
	require.NoError(t, err)
	require.Equal(t, []string{"10.0.0.1:7800", "ctl-2.example:7800", "[fd00::1]:7800"}, got)

	got, err = ParseControllers("")
	require.NoError(t, err)
	require.Empty(t, got)

	for in, want := range map[string]string{
		"10.0.0.1":        `"10.0.0.1": expected host:port`,
		":7800":           `":7800": missing host`,
		"10.0.0.1:0":      "port must be 1-65535",
		"10.0.0.1:http":   "port must be 1-65535",
		"a:1,b:70000":     `"b:70000": port must be 1-65535`,
		"10.0.0.1:1:2:3:": "expected host:port",
	} {
		_, err := ParseControllers(in)
		require.ErrorContains(t, err, want, in)
	}
}

func TestNameFromHostnameAndValidName(t *testing.T) {
	for in, want := range map[string]string{
		"edge-1":                       "edge-1",
		"Edge_1.DC2.example.com":       "edge-1-dc2-example-com",
		"--x--":                        "x",
		"...":                          "",
		strings.Repeat("a", 70):        strings.Repeat("a", 63),
		strings.Repeat("a", 62) + ".b": strings.Repeat("a", 62),
	} {
		got := NameFromHostname(in)
		require.Equal(t, want, got, in)
		require.True(t, got == "" || ValidName(got), got)
	}
	require.True(t, ValidName("a"))
	require.False(t, ValidName(""))
	require.False(t, ValidName("Edge"))
	require.False(t, ValidName("-a"))
	require.False(t, ValidName("a-"))
	require.False(t, ValidName(strings.Repeat("a", 64)))
}

func TestStatsToProto_copiesCountersWithBoundsInSeconds(t *testing.T) {
	bounds := bucketBounds([]time.Duration{500 * time.Microsecond, 250 * time.Millisecond, 2 * time.Second})
	require.Equal(t, []float64{0.0005, 0.25, 2}, bounds)
	now := time.Date(2025, 3, 1, 12, 0, 0, 7, time.UTC)
	stats := []balancer.BackendStats{
		{Pool: "api", Address: "10.0.0.1:80", Requests: 10, Errors: 2, InFlight: 3, InFlightSeconds: 12.5, Ejected: true,
			LatencyEWMA: time.Millisecond, LatencySum: time.Second, LatencyCounts: []uint64{4, 3, 2, 1}},
		{Pool: "web", Address: "[fd00::1]:8080", LatencyCounts: []uint64{0, 0, 0, 0}},
	}
	pools := []balancer.PoolStats{
		{Pool: "api", Unserved: 4, Held: balancer.HeldCounts{Served: 1, TimedOut: 2}},
		{Pool: "idle", Waiting: 3, Unserved: 7},
		{Pool: "web"},
	}
	got := statsToProto("edge-1", bounds, stats, pools, now)
	want := &pb.ReportStatsRequest{
		Balancer:     "edge-1",
		Time:         timestamppb.New(now),
		BucketBounds: []float64{0.0005, 0.25, 2},
		Backends: []*pb.BackendCounters{
			{Pool: "api", Address: "10.0.0.1:80", Requests: 10, Errors: 2, InFlight: 3, InFlightSeconds: proto.Float64(12.5), LatencyCounts: []uint64{4, 3, 2, 1}},
			{Pool: "web", Address: "[fd00::1]:8080", InFlightSeconds: proto.Float64(0), LatencyCounts: []uint64{0, 0, 0, 0}},
		},
		// Every pool, with or without backends.
		Pools: []*pb.PoolCounters{
			{Pool: "api", Unserved: 4},
			{Pool: "idle", Waiting: 3, Unserved: 7},
			{Pool: "web"},
		},
	}
	require.True(t, proto.Equal(want, got), "got %v", got)

	// The request does not share the counters.
	stats[0].LatencyCounts[0] = 99
	require.Equal(t, uint64(4), got.Backends[0].LatencyCounts[0])

	// A balancer without a table reports no backends and no pools.
	empty := statsToProto("edge-1", bounds, nil, nil, now)
	require.Empty(t, empty.Backends)
	require.Empty(t, empty.Pools)

	// Waiting saturates at the wire's width.
	huge := statsToProto("edge-1", bounds, nil, []balancer.PoolStats{{Pool: "a", Waiting: 1 << 40}}, now)
	require.Equal(t, uint32(math.MaxUint32), huge.Pools[0].Waiting)
}
