package raftmetrics

import (
	"testing"
	"time"

	gometrics "github.com/armon/go-metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/hostscale/hostscale/internal/promtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func count(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) uint64 {
	t.Helper()
	m := promtest.Find(t, reg, name, labels)
	if m == nil || m.GetHistogram() == nil {
		return 0
	}
	return m.GetHistogram().GetSampleCount()
}

func sum(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	m := promtest.Find(t, reg, name, labels)
	require.NotNil(t, m, name)
	return m.GetHistogram().GetSampleSum()
}

// Raft's reports, as hashicorp/raft makes them through go-metrics' global
// functions, reach every attached node and stop at its detach.
func TestAttach_raftReportsBecomePrometheusMetrics(t *testing.T) {
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	detachA := New(regA).Attach()
	detachB := New(regB).Attach()
	defer detachB()

	start := time.Now().Add(-3 * time.Millisecond)
	gometrics.MeasureSince([]string{"raft", "commitTime"}, start)
	gometrics.MeasureSince([]string{"raft", "leader", "dispatchLog"}, start)
	gometrics.MeasureSince([]string{"raft", "rpc", "appendEntries", "storeLogs"}, start)
	gometrics.MeasureSince([]string{"raft", "fsm", "applyBatch"}, start)
	gometrics.AddSample([]string{"raft", "leader", "lastContact"}, 40)
	peer := []gometrics.Label{{Name: "peer_id", Value: "c2"}}
	gometrics.MeasureSinceWithLabels([]string{"raft", "replication", "appendEntries", "rpc"}, start, peer)
	gometrics.MeasureSince([]string{"raft", "replication", "appendEntries", "rpc", "c2"}, start)
	gometrics.MeasureSinceWithLabels([]string{"raft", "replication", "heartbeat"}, start, peer)
	gometrics.MeasureSince([]string{"raft", "snapshot", "persist"}, start)
	gometrics.MeasureSince([]string{"raft", "net", "getRPCType"}, start) // not exported
	gometrics.IncrCounter([]string{"raft", "state", "candidate"}, 1)
	gometrics.IncrCounter([]string{"raft", "state", "leader"}, 1)
	gometrics.IncrCounter([]string{"raft", "transition", "leader_lease_timeout"}, 1)

	for _, reg := range []*prometheus.Registry{regA, regB} {
		for _, name := range []string{"hostscale_raft_commit_seconds", "hostscale_raft_leader_log_write_seconds",
			"hostscale_raft_follower_log_write_seconds", "hostscale_raft_fsm_apply_seconds"} {
			require.EqualValues(t, 1, count(t, reg, name, nil), name)
			s := sum(t, reg, name, nil)
			require.True(t, s >= 0.003 && s < 1, "%s: %v s for a 3 ms stage", name, s)
		}
		require.InDelta(t, 0.040, sum(t, reg, "hostscale_raft_leader_last_contact_seconds", nil), 1e-6, "milliseconds become seconds")
		require.EqualValues(t, 1, count(t, reg, "hostscale_raft_append_entries_seconds", map[string]string{"peer": "c2"}),
			"the labelled report counts, the name-suffixed one does not")
		require.EqualValues(t, 1, count(t, reg, "hostscale_raft_heartbeat_seconds", map[string]string{"peer": "c2"}))
		require.EqualValues(t, 1, count(t, reg, "hostscale_raft_snapshot_seconds", map[string]string{"stage": "persist"}))
		require.Equal(t, 1.0, promtest.Get(t, reg, "hostscale_raft_state_changes_total", map[string]string{"state": "candidate"}))
		require.Equal(t, 1.0, promtest.Get(t, reg, "hostscale_raft_state_changes_total", map[string]string{"state": "leader"}))
		require.Equal(t, 1.0, promtest.Get(t, reg, "hostscale_raft_timeouts_total", map[string]string{"timeout": "leader_lease"}))
	}

	detachA()
	detachA()
	gometrics.MeasureSince([]string{"raft", "commitTime"}, start)
	require.EqualValues(t, 1, count(t, regA, "hostscale_raft_commit_seconds", nil), "detached: no more reports")
	require.EqualValues(t, 2, count(t, regB, "hostscale_raft_commit_seconds", nil))
}
