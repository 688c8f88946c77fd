package raftnode

import (
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// LogWriteStallLimit is how long a write to the log store may run before
// the node calls its disk stalled (its /readyz fails): an fsync takes
// milliseconds, a stall as long as the disk does not answer.
const LogWriteStallLimit = 5 * time.Second

// watchedLogs is the durable log store with its writes in progress timed,
// so that one that does not return shows (Node.LogWriteInProgress), and
// its failures in a row timed (Node.LogWritesFailing).
// hashicorp/raft's leader loop writes the leader's log itself and waits
// for it: while the disk stalls, the leader commits nothing and cannot
// notice it lost its lease, yet its heartbeats go on and it keeps its
// leadership.
type watchedLogs struct {
	raft.LogStore

	mu      sync.Mutex
	next    uint64
	running map[uint64]time.Time
	// failedSince is when the first of the writes that failed in a row
	// began, zero since one succeeded; failed is the last one's error.
	failedSince time.Time
	failed      error
}

func newWatchedLogs(s raft.LogStore) *watchedLogs {
	return &watchedLogs{LogStore: s, running: map[uint64]time.Time{}}
}

// begin records a write starting now; end(id, err) records its end and
// its outcome.
func (w *watchedLogs) begin() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	id := w.next
	w.next++
	w.running[id] = time.Now()
	return id
}

func (w *watchedLogs) end(id uint64, err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err == nil:
		w.failedSince, w.failed = time.Time{}, nil
	case w.failedSince.IsZero():
		w.failedSince, w.failed = w.running[id], err
	default:
		w.failed = err
	}
	delete(w.running, id)
	return err
}

func (w *watchedLogs) StoreLog(l *raft.Log) error {
	id := w.begin()
	return w.end(id, w.LogStore.StoreLog(l))
}

func (w *watchedLogs) StoreLogs(ls []*raft.Log) error {
	id := w.begin()
	return w.end(id, w.LogStore.StoreLogs(ls))
}

func (w *watchedLogs) DeleteRange(lo, hi uint64) error {
	id := w.begin()
	return w.end(id, w.LogStore.DeleteRange(lo, hi))
}

// IsMonotonic passes on the store's answer (raft.MonotonicLogStore):
// raft-wal's log must not have gaps, and Raft acts on it.
func (w *watchedLogs) IsMonotonic() bool { return monotonic(w.LogStore) }

func monotonic(s raft.LogStore) bool {
	m, ok := s.(raft.MonotonicLogStore)
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

// failing is how long the writes have failed in a row, from the start of
// the first, and the last one's error; zero and nil once one succeeded.
func (w *watchedLogs) failing() (time.Duration, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failedSince.IsZero() {
		return 0, nil
	}
	return time.Since(w.failedSince), w.failed
}

// LogStoreError is a write to the Raft log store that failed: the disk is
// full, read-only or failing. A leader whose log write fails answers the
// writes it carried with it and steps down.
type LogStoreError struct{ Err error }

func (e *LogStoreError) Error() string { return "write to the Raft log store: " + e.Err.Error() }
func (e *LogStoreError) Unwrap() error { return e.Err }

// typedLogs is the log store Raft uses (the cache in front of the durable
// store) with its write errors made LogStoreErrors carrying the durable
// store's own error, which the cache flattens to a string.
type typedLogs struct {
	raft.LogStore
	durable *watchedLogs
}

func (s typedLogs) typed(err error) error {
	if err == nil {
		return nil
	}
	if _, last := s.durable.failing(); last != nil {
		err = last
	}
	return &LogStoreError{Err: err}
}

func (s typedLogs) StoreLog(l *raft.Log) error { return s.typed(s.LogStore.StoreLog(l)) }

func (s typedLogs) StoreLogs(ls []*raft.Log) error { return s.typed(s.LogStore.StoreLogs(ls)) }

func (s typedLogs) DeleteRange(lo, hi uint64) error { return s.typed(s.LogStore.DeleteRange(lo, hi)) }

// IsMonotonic passes on the store's answer, as watchedLogs does.
func (s typedLogs) IsMonotonic() bool { return monotonic(s.LogStore) }

// checkedStable is the stable store with its failed writes reported to
// failed before Raft sees them (Config.StableStoreFailed).
type checkedStable struct {
	raft.StableStore
	failed func(error)
}

func (s checkedStable) check(key []byte, err error) error {
	if err != nil {
		s.failed(fmt.Errorf("save Raft's %s: %w", key, err))
	}
	return err
}

func (s checkedStable) Set(key, val []byte) error { return s.check(key, s.StableStore.Set(key, val)) }

func (s checkedStable) SetUint64(key []byte, val uint64) error {
	return s.check(key, s.StableStore.SetUint64(key, val))
}
