package raftnode

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// LogWriteStallLimit is how long a write to the log store may run before
// the node calls its disk stalled (its /readyz fails): an fsync takes
// milliseconds, a stall as long as the disk does not answer.
const LogWriteStallLimit = 5 * time.Second

// watchedLogs is the durable log store with its writes in progress timed,
// so that one that does not return shows (Node.LogWriteInProgress).
// hashicorp/raft's leader loop writes the leader's log itself and waits
// for it: while the disk stalls, the leader commits nothing and cannot
// notice it lost its lease, yet its heartbeats go on and it keeps its
// leadership.
type watchedLogs struct {
	raft.LogStore

	mu      sync.Mutex
	next    uint64
	running map[uint64]time.Time
}

func newWatchedLogs(s raft.LogStore) *watchedLogs {
	return &watchedLogs{LogStore: s, running: map[uint64]time.Time{}}
}

// begin records a write starting now; end(id) records its end.
func (w *watchedLogs) begin() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	id := w.next
	w.next++
	w.running[id] = time.Now()
	return id
}

func (w *watchedLogs) end(id uint64) {
	w.mu.Lock()
	delete(w.running, id)
	w.mu.Unlock()
}

func (w *watchedLogs) StoreLog(l *raft.Log) error {
	defer w.end(w.begin())
	return w.LogStore.StoreLog(l)
}

func (w *watchedLogs) StoreLogs(ls []*raft.Log) error {
	defer w.end(w.begin())
	return w.LogStore.StoreLogs(ls)
}

func (w *watchedLogs) DeleteRange(lo, hi uint64) error {
	defer w.end(w.begin())
	return w.LogStore.DeleteRange(lo, hi)
}

// IsMonotonic passes on the store's answer (raft.MonotonicLogStore):
// raft-wal's log must not have gaps, and Raft acts on it.
func (w *watchedLogs) IsMonotonic() bool {
	m, ok := w.LogStore.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

// inProgress is how long the oldest write still running has run, or zero.
func (w *watchedLogs) inProgress() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var oldest time.Time
	for _, t := range w.running {
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	if oldest.IsZero() {
		return 0
	}
	return time.Since(oldest)
}
