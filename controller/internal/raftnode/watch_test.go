package raftnode

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// blockingStore is an in-memory log store whose writes wait on release
// while it is open.
type blockingStore struct {
	*raft.InmemStore
	release chan struct{}
}

func (s *blockingStore) StoreLogs(ls []*raft.Log) error {
	<-s.release
	return s.InmemStore.StoreLogs(ls)
}

type monotonicStore struct{ *raft.InmemStore }

func (monotonicStore) IsMonotonic() bool { return true }

// A write that does not return shows as in progress, for as long as it
// runs; one that returned does not.
func TestWatchedLogs_timesTheWriteInProgress(t *testing.T) {
	s := &blockingStore{InmemStore: raft.NewInmemStore(), release: make(chan struct{})}
	w := newWatchedLogs(s)
	require.Zero(t, w.inProgress())

	done := make(chan error, 1)
	go func() { done <- w.StoreLogs([]*raft.Log{{Index: 1, Term: 1}}) }()
	require.Eventually(t, func() bool { return w.inProgress() >= 50*time.Millisecond }, 5*time.Second, 5*time.Millisecond)
	first := w.inProgress()
	require.Eventually(t, func() bool { return w.inProgress() > first }, 5*time.Second, 5*time.Millisecond, "it grows while the write runs")

	close(s.release)
	require.NoError(t, <-done)
	require.Zero(t, w.inProgress())
	require.NoError(t, w.StoreLog(&raft.Log{Index: 2, Term: 1}))
	require.NoError(t, w.DeleteRange(2, 2))
	require.Zero(t, w.inProgress())
	last, err := w.LastIndex()
	require.NoError(t, err)
	require.Equal(t, uint64(1), last)
}

// raft-wal tells Raft its log has no gaps (raft.MonotonicLogStore); the
// wrapper must not hide it, nor claim it for a store that does not.
func TestWatchedLogs_passesOnMonotonic(t *testing.T) {
	require.True(t, newWatchedLogs(monotonicStore{raft.NewInmemStore()}).IsMonotonic())
	require.False(t, newWatchedLogs(raft.NewInmemStore()).IsMonotonic())
}

// What timing a write adds to it, on an in-memory store (a real one's
// fsync takes tens of microseconds or more).
func BenchmarkWatchedLogs_StoreLogs(b *testing.B) {
	for _, c := range []struct {
		name  string
		store func() raft.LogStore
	}{
		{"bare", func() raft.LogStore { return raft.NewInmemStore() }},
		{"watched", func() raft.LogStore { return newWatchedLogs(raft.NewInmemStore()) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := c.store()
			logs := []*raft.Log{{Term: 1, Data: make([]byte, 100)}}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				logs[0].Index = uint64(i + 1)
				if err := s.StoreLogs(logs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
