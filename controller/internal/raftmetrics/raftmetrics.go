// Package raftmetrics exports hashicorp/raft's own timers and counters as
// Prometheus metrics: the figures Consul and Nomad operators watch
// (commit time, log writes, AppendEntries round trips, last contact), under
// this project's names.
//
// Raft reports through go-metrics' process-wide sink. The first Attach
// points that sink at this package, which hands every report to each
// attached node's metrics; with several nodes in one process (tests, the
// benchmark), each node's figures therefore hold all of theirs.
package raftmetrics

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gometrics "github.com/armon/go-metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are one node's Raft metrics.
type Metrics struct {
	commit, leaderWrite, followerWrite, fsmApply, lastContact prometheus.Histogram
	appendEntries, heartbeat, snapshot                        *prometheus.HistogramVec
	stateChanges, timeouts                                    *prometheus.CounterVec
}

// buckets run from 100 µs to 10 s.
var buckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// New registers a node's Raft metrics in reg.
func New(reg prometheus.Registerer) *Metrics {
	h := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	}
	hv := func(name, help, label string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, []string{label})
	}
	m := &Metrics{
		commit:        h("hostscale_raft_commit_seconds", "On the leader: time from an entry's log write to its commit by a quorum (Raft's commitTime)."),
		leaderWrite:   h("hostscale_raft_leader_log_write_seconds", "On the leader: time to write the entries taken from its apply queue at once to the log store, fsync included (Raft's leader.dispatchLog)."),
		followerWrite: h("hostscale_raft_follower_log_write_seconds", "On a follower: time to write one AppendEntries' entries to the log store, fsync included."),
		fsmApply:      h("hostscale_raft_fsm_apply_seconds", "Time the state machine took to apply one batch of committed entries."),
		lastContact:   h("hostscale_raft_leader_last_contact_seconds", "On the leader: time since each follower last answered, sampled at every lease check."),
		appendEntries: hv("hostscale_raft_append_entries_seconds", "On the leader: AppendEntries round trip to each follower, its log write included.", "peer"),
		heartbeat:     hv("hostscale_raft_heartbeat_seconds", "On the leader: heartbeat round trip to each follower.", "peer"),
		snapshot: hv("hostscale_raft_snapshot_seconds",
			"Snapshot stages: capture (the state machine's copy of the state), persist (writing it to the snapshot store), restore.", "stage"),
		stateChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hostscale_raft_state_changes_total",
			Help: "Times this node became follower, candidate (stood for election) or leader.",
		}, []string{"state"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hostscale_raft_timeouts_total",
			Help: "heartbeat: a follower heard no leader in time; leader_lease: a leader lost contact with a quorum and stepped down.",
		}, []string{"timeout"}),
	}
	reg.MustRegister(m.commit, m.leaderWrite, m.followerWrite, m.fsmApply, m.lastContact,
		m.appendEntries, m.heartbeat, m.snapshot, m.stateChanges, m.timeouts)
	return m
}

var (
	installOnce sync.Once
	attached    atomic.Pointer[[]*Metrics]
	attachMu    sync.Mutex
)

// Attach makes m receive Raft's reports until the returned function is
// called.
func (m *Metrics) Attach() (detach func()) {
	installOnce.Do(func() {
		cfg := gometrics.DefaultConfig("")
		cfg.EnableHostname = false
		cfg.EnableHostnameLabel = false
		cfg.EnableRuntimeMetrics = false
		cfg.EnableTypePrefix = false
		cfg.TimerGranularity = time.Millisecond
		if _, err := gometrics.NewGlobal(cfg, sink{}); err != nil {
			panic(err) // only a bad filter configuration fails
		}
	})
	change := func(f func([]*Metrics) []*Metrics) {
		attachMu.Lock()
		defer attachMu.Unlock()
		var cur []*Metrics
		if p := attached.Load(); p != nil {
			cur = *p
		}
		next := f(cur)
		attached.Store(&next)
	}
	change(func(cur []*Metrics) []*Metrics { return append(append([]*Metrics(nil), cur...), m) })
	var once sync.Once
	return func() {
		once.Do(func() {
			change(func(cur []*Metrics) []*Metrics {
				var next []*Metrics
				for _, x := range cur {
					if x != m {
						next = append(next, x)
					}
				}
				return next
			})
		})
	}
}

// each calls f for every attached node's metrics.
func each(f func(*Metrics)) {
	if p := attached.Load(); p != nil {
		for _, m := range *p {
			f(m)
		}
	}
}

// sink is go-metrics' view of this package.
type sink struct{}

func (sink) SetGauge([]string, float32)                              {}
func (sink) SetGaugeWithLabels([]string, float32, []gometrics.Label) {}
func (sink) EmitKey([]string, float32)                               {}
func (s sink) IncrCounter(key []string, val float32)                 { s.IncrCounterWithLabels(key, val, nil) }
func (s sink) AddSample(key []string, val float32)                   { s.AddSampleWithLabels(key, val, nil) }
func (sink) IncrCounterWithLabels(key []string, val float32, _ []gometrics.Label) {
	var state, timeout string
	switch strings.Join(key, ".") {
	case "raft.state.follower":
		state = "follower"
	case "raft.state.candidate":
		state = "candidate"
	case "raft.state.leader":
		state = "leader"
	case "raft.transition.heartbeat_timeout":
		timeout = "heartbeat"
	case "raft.transition.leader_lease_timeout":
		timeout = "leader_lease"
	default:
		return
	}
	each(func(m *Metrics) {
		if state != "" {
			m.stateChanges.WithLabelValues(state).Add(float64(val))
		} else {
			m.timeouts.WithLabelValues(timeout).Add(float64(val))
		}
	})
}

// AddSampleWithLabels takes Raft's timers, in milliseconds.
func (sink) AddSampleWithLabels(key []string, val float32, labels []gometrics.Label) {
	secs := float64(val) / 1000
	peer := func() string {
		for _, l := range labels {
			if l.Name == "peer_id" {
				return l.Value
			}
		}
		return ""
	}
	var pick func(*Metrics) prometheus.Observer
	switch strings.Join(key, ".") {
	case "raft.commitTime":
		pick = func(m *Metrics) prometheus.Observer { return m.commit }
	case "raft.leader.dispatchLog":
		pick = func(m *Metrics) prometheus.Observer { return m.leaderWrite }
	case "raft.rpc.appendEntries.storeLogs":
		pick = func(m *Metrics) prometheus.Observer { return m.followerWrite }
	case "raft.fsm.applyBatch", "raft.fsm.apply":
		pick = func(m *Metrics) prometheus.Observer { return m.fsmApply }
	case "raft.leader.lastContact":
		pick = func(m *Metrics) prometheus.Observer { return m.lastContact }
	case "raft.replication.appendEntries.rpc":
		// Reported twice, with the peer as a label and as a name suffix;
		// the labelled one is kept.
		p := peer()
		if p == "" {
			return
		}
		pick = func(m *Metrics) prometheus.Observer { return m.appendEntries.WithLabelValues(p) }
	case "raft.replication.heartbeat":
		p := peer()
		if p == "" {
			return
		}
		pick = func(m *Metrics) prometheus.Observer { return m.heartbeat.WithLabelValues(p) }
	case "raft.fsm.snapshot":
		pick = func(m *Metrics) prometheus.Observer { return m.snapshot.WithLabelValues("capture") }
	case "raft.snapshot.persist":
		pick = func(m *Metrics) prometheus.Observer { return m.snapshot.WithLabelValues("persist") }
	case "raft.fsm.restore":
		pick = func(m *Metrics) prometheus.Observer { return m.snapshot.WithLabelValues("restore") }
	default:
		return
	}
	each(func(m *Metrics) { pick(m).Observe(secs) })
}
