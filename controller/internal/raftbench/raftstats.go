package main

import (
	"fmt"
	"io"
	"log"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hostscale/hostscale/controller/internal/raftmetrics"
)

// hashicorp/raft times its own stages; raftmetrics turns them into
// Prometheus histograms, which raftStages reads for the measured seconds of
// each case, so that the report can say where a write's Raft time went,
// bare and through the API alike. All three nodes of a case feed them:
// leader-only and follower-only figures have names of their own.

// raftStage is the mean of one raft timer and how often it ran.
type raftStage struct {
	n    int
	mean time.Duration
}

func (s raftStage) String() string {
	if s.n == 0 {
		return "-"
	}
	return usText(s.mean)
}

// raftStages are a case's figures over its measured seconds.
type raftStages struct {
	// dispatch is the leader's log write of the entries taken from its
	// apply queue at once (encoding, append, fsync).
	dispatch raftStage
	// followerWrite is a follower's log write of one AppendEntries.
	followerWrite raftStage
	// appendRPC is an AppendEntries round trip as the leader sees it:
	// transport, the follower's queue, its log write and its answer.
	appendRPC raftStage
	// commit is an entry's time from dispatch to commit on the leader.
	commit  raftStage
	elapsed time.Duration
}

var raftStats struct {
	sync.Mutex
	reg    *prometheus.Registry
	detach func()
	since  time.Time
}

// resetRaftStages starts a new measurement.
func resetRaftStages() {
	raftStats.Lock()
	defer raftStats.Unlock()
	if raftStats.detach != nil {
		raftStats.detach()
	}
	raftStats.reg = prometheus.NewRegistry()
	raftStats.detach = raftmetrics.New(raftStats.reg).Attach()
	raftStats.since = time.Now()
}

// readRaftStages returns the figures since the last reset.
func readRaftStages() *raftStages {
	raftStats.Lock()
	defer raftStats.Unlock()
	if raftStats.reg == nil {
		return nil
	}
	families, err := raftStats.reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	stage := func(name string) raftStage {
		var n uint64
		var sum float64
		for _, f := range families {
			if f.GetName() != name {
				continue
			}
			for _, m := range f.GetMetric() { // one per peer, for round trips
				n += m.GetHistogram().GetSampleCount()
				sum += m.GetHistogram().GetSampleSum()
			}
		}
		if n == 0 {
			return raftStage{}
		}
		return raftStage{n: int(n), mean: time.Duration(sum / float64(n) * float64(time.Second))}
	}
	return &raftStages{
		dispatch:      stage("hostscale_raft_leader_log_write_seconds"),
		followerWrite: stage("hostscale_raft_follower_log_write_seconds"),
		appendRPC:     stage("hostscale_raft_append_entries_seconds"),
		commit:        stage("hostscale_raft_commit_seconds"),
		elapsed:       time.Since(raftStats.since),
	}
}

// reportRaftStages prints each case's Raft stages.
func reportRaftStages(w io.Writer, rs []result) {
	var tw *tabwriter.Writer
	for _, r := range rs {
		st := r.raft
		if st == nil || st.commit.n == 0 {
			continue
		}
		if tw == nil {
			fmt.Fprintln(w, "\nRaft's own stages, from its metrics, mean µs (entries per leader log write, AppendEntries per follower per second):")
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "store\tclients\tmode\tentries/s\tcommands per entry\tentries per log write\tleader log write\tAppendEntries round trip\tfollower log write\tAppendEntries/s\tdispatch->commit\t")
		}
		perEntry := "1"
		if r.perEntry > 0 {
			perEntry = fmt.Sprintf("%.1f", r.perEntry)
		}
		secs := st.elapsed.Seconds()
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\t%s\t%.1f\t%s\t%s\t%s\t%.0f\t%s\t\n", r.store, r.clients, r.mode,
			float64(st.commit.n)/secs, perEntry, float64(st.commit.n)/float64(max(st.dispatch.n, 1)),
			st.dispatch, st.appendRPC, st.followerWrite, float64(st.followerWrite.n)/secs/2, st.commit)
	}
	if tw != nil {
		tw.Flush()
	}
}
