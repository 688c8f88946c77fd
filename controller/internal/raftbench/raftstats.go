package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	gometrics "github.com/armon/go-metrics"
)

// hashicorp/raft times its own stages through go-metrics' global sink;
// raftStages points that sink at memory for the measured seconds of each
// case, so that the report can say where a write's Raft time went, bare
// and through the API alike. All three nodes of a case share the sink:
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
	return fmt.Sprintf("%.0f", float64(s.mean)/float64(time.Microsecond))
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

var (
	raftSinkMu sync.Mutex
	raftSink   *gometrics.InmemSink
	raftSince  time.Time
)

// resetRaftStages starts a new measurement.
func resetRaftStages() {
	raftSinkMu.Lock()
	defer raftSinkMu.Unlock()
	raftSink = gometrics.NewInmemSink(time.Hour, time.Hour)
	raftSince = time.Now()
	cfg := gometrics.DefaultConfig("")
	cfg.EnableHostname = false
	cfg.EnableHostnameLabel = false
	cfg.EnableRuntimeMetrics = false
	if _, err := gometrics.NewGlobal(cfg, raftSink); err != nil {
		panic(err)
	}
}

// readRaftStages returns the figures since the last reset.
func readRaftStages() *raftStages {
	raftSinkMu.Lock()
	defer raftSinkMu.Unlock()
	if raftSink == nil {
		return nil
	}
	type acc struct {
		n   int
		sum float64
	}
	sums := map[string]*acc{}
	add := func(name string, n int, sum float64) {
		a := sums[name]
		if a == nil {
			a = &acc{}
			sums[name] = a
		}
		a.n += n
		a.sum += sum
	}
	for _, iv := range raftSink.Data() {
		iv.RLock()
		for key, v := range iv.Samples {
			name, labels, _ := strings.Cut(key, ";")
			// AppendEntries round trips are kept per peer twice, as a
			// name suffix and as a label; the labelled one is summed.
			if name == "raft.replication.appendEntries.rpc" && labels == "" {
				continue
			}
			add(name, v.Count, v.Sum)
		}
		iv.RUnlock()
	}
	stage := func(name string) raftStage {
		a := sums[name]
		if a == nil || a.n == 0 {
			return raftStage{}
		}
		// go-metrics keeps timers in milliseconds.
		return raftStage{n: a.n, mean: time.Duration(a.sum / float64(a.n) * float64(time.Millisecond))}
	}
	return &raftStages{
		dispatch:      stage("raft.leader.dispatchLog"),
		followerWrite: stage("raft.rpc.appendEntries.storeLogs"),
		appendRPC:     stage("raft.replication.appendEntries.rpc"),
		commit:        stage("raft.commitTime"),
		elapsed:       time.Since(raftSince),
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
