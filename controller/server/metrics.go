package server

import (
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hostscale/hostscale/controller/internal/agents"
	"github.com/hostscale/hostscale/controller/internal/fsm"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// raftCollector exports Raft's and the state's gauges at scrape time.
type raftCollector struct {
	raft *raft.Raft
	fsm  *fsm.FSM
	// logWrite is how long the log store's oldest write in progress has
	// run (raftnode.Node.LogWriteInProgress); logFailing how long its
	// writes have failed in a row (raftnode.Node.LogWritesFailing).
	logWrite   func() time.Duration
	logFailing func() (time.Duration, error)

	state, term, commit, applied, lastLog, leader, peers, pools, logWriteDesc, logFailingDesc *prometheus.Desc
}

func newRaftCollector(r *raft.Raft, f *fsm.FSM, logWrite func() time.Duration, logFailing func() (time.Duration, error)) *raftCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &raftCollector{
		raft:     r,
		fsm:      f,
		logWrite: logWrite, logFailing: logFailing,
		state:   d("hostscale_raft_state", "1 for this node's current Raft state.", "state"),
		term:    d("hostscale_raft_term", "Current Raft term."),
		commit:  d("hostscale_raft_commit_index", "Raft commit index."),
		applied: d("hostscale_raft_applied_index", "Raft index last applied to the state machine."),
		lastLog: d("hostscale_raft_last_log_index", "Last Raft log index stored."),
		leader:  d("hostscale_raft_leader", "1 when this node is the leader."),
		peers:   d("hostscale_raft_servers", "Servers in the Raft configuration."),
		pools:   d("hostscale_state_pools", "Pools in the replicated state."),
		logWriteDesc: d("hostscale_raft_log_write_in_progress_seconds",
			"How long the oldest write to the Raft log store still running has run; 0 when none runs. Seconds mean a stalled disk."),
		logFailingDesc: d("hostscale_raft_log_writes_failing_seconds",
			"How long the writes to the Raft log store have failed in a row, from the first; 0 since one succeeded. Seconds mean a disk that answers with errors (full, read-only, failing)."),
	}
}

func (c *raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.term, c.commit, c.applied, c.lastLog, c.leader, c.peers, c.pools, c.logWriteDesc, c.logFailingDesc} {
		ch <- d
	}
}

func (c *raftCollector) Collect(ch chan<- prometheus.Metric) {
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	st := c.raft.State()
	for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		v := 0.0
		if s == st {
			v = 1
		}
		g(c.state, v, s.String())
	}
	g(c.term, float64(c.raft.CurrentTerm()))
	g(c.commit, float64(c.raft.CommitIndex()))
	g(c.applied, float64(c.raft.AppliedIndex()))
	g(c.lastLog, float64(c.raft.LastIndex()))
	isLeader := 0.0
	if st == raft.Leader {
		isLeader = 1
	}
	g(c.leader, isLeader)
	if f := c.raft.GetConfiguration(); f.Error() == nil {
		g(c.peers, float64(len(f.Configuration().Servers)))
	}
	pools := 0
	c.fsm.Read(func(s *pb.State) { pools = len(s.Pools) })
	g(c.pools, float64(pools))
	g(c.logWriteDesc, c.logWrite().Seconds())
	failing, _ := c.logFailing()
	g(c.logFailingDesc, failing.Seconds())
}

// conditionCollector exports, on the leader, how many nodes are under
// each condition their agents reported.
type conditionCollector struct {
	hub  *agents.Hub
	desc *prometheus.Desc
}

func newConditionCollector(hub *agents.Hub) *conditionCollector {
	return &conditionCollector{hub: hub, desc: prometheus.NewDesc("hostscale_nodes_under_condition",
		"On the leader: nodes whose agent reports the condition (disk_pressure, memory_pressure, disk_stalled); they take no new instance.",
		[]string{"condition"}, nil)}
}

func (c *conditionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *conditionCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.hub.ConditionCounts()
	for v := range pb.NodeConditionType_name {
		t := pb.NodeConditionType(v)
		if t == pb.NodeConditionType_NODE_CONDITION_TYPE_UNSPECIFIED {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[t]), agents.ConditionName(t))
	}
}
