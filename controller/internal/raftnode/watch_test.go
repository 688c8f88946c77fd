package raftnode

import (
	"errors"
	"os"
	"sync/atomic"
	"syscall"
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

// failingStore is an in-memory log store whose writes fail with err while
// it is set.
type failingStore struct {
	*raft.InmemStore
	err atomic.Pointer[error]
}

func (s *failingStore) StoreLogs(ls []*raft.Log) error {
	if err := s.err.Load(); err != nil {
		return *err
	}
	return s.InmemStore.StoreLogs(ls)
}

func (s *failingStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

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

// Writes failing in a row show from the start of the first, with the
// last error; one that succeeds clears them.
func TestWatchedLogs_timesFailuresInARow(t *testing.T) {
	s := &failingStore{InmemStore: raft.NewInmemStore()}
	w := newWatchedLogs(s)
	d, err := w.failing()
	require.Zero(t, d)
	require.NoError(t, err)

	eio, erofs := errors.New("input/output error"), errors.New("read-only file system")
	s.err.Store(&eio)
	start := time.Now()
	require.ErrorIs(t, w.StoreLogs([]*raft.Log{{Index: 1, Term: 1}}), eio, "the store's error is returned")
	// It grows; once it is past 20 ms, a second failure in a row must not
	// start it again (that would give microseconds).
	require.Eventually(t, func() bool { d, _ := w.failing(); return d >= 20*time.Millisecond }, 5*time.Second, time.Millisecond)
	s.err.Store(&erofs)
	require.ErrorIs(t, w.StoreLog(&raft.Log{Index: 1, Term: 1}), erofs)
	d, err = w.failing()
	require.ErrorIs(t, err, erofs, "the last error")
	require.GreaterOrEqual(t, d, 20*time.Millisecond, "counted from the first failure")
	require.LessOrEqual(t, d, time.Since(start))

	s.err.Store(nil)
	require.NoError(t, w.StoreLogs([]*raft.Log{{Index: 1, Term: 1}}))
	d, err = w.failing()
	require.Zero(t, d)
	require.NoError(t, err)
	require.Zero(t, w.inProgress())
}

// Behind Raft's log cache, which flattens the store's error to a string, a
// failed write is a LogStoreError carrying the durable store's own error.
func TestTypedLogs_failedWritesAreLogStoreErrors(t *testing.T) {
	s := &failingStore{InmemStore: raft.NewInmemStore()}
	w := newWatchedLogs(s)
	cache, err := raft.NewLogCache(8, w)
	require.NoError(t, err)
	logs := typedLogs{LogStore: cache, durable: w}
	require.NoError(t, logs.StoreLogs([]*raft.Log{{Index: 1, Term: 1}}))

	erofs := syscall.EROFS
	var e error = &os.PathError{Op: "write", Path: "wal/1.wal", Err: erofs}
	s.err.Store(&e)
	for _, err := range []error{logs.StoreLogs([]*raft.Log{{Index: 2, Term: 1}}), logs.StoreLog(&raft.Log{Index: 2, Term: 1})} {
		var lse *LogStoreError
		require.ErrorAs(t, err, &lse)
		require.ErrorIs(t, err, erofs, "the durable store's error, not the cache's string")
		require.Equal(t, "write to the Raft log store: write wal/1.wal: read-only file system", err.Error())
	}
}

// raft-wal tells Raft its log has no gaps (raft.MonotonicLogStore); the
// wrapper must not hide it, nor claim it for a store that does not.
func TestWatchedLogs_passesOnMonotonic(t *testing.T) {
	require.True(t, newWatchedLogs(monotonicStore{raft.NewInmemStore()}).IsMonotonic())
	require.False(t, newWatchedLogs(raft.NewInmemStore()).IsMonotonic())
	for _, durable := range []raft.LogStore{monotonicStore{raft.NewInmemStore()}, raft.NewInmemStore()} {
		w := newWatchedLogs(durable)
		cache, err := raft.NewLogCache(8, w)
		require.NoError(t, err)
		require.Equal(t, w.IsMonotonic(), typedLogs{LogStore: cache, durable: w}.IsMonotonic(), "through the cache and typedLogs")
	}
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

// failingStable is a stable store whose writes fail with err.
type failingStable struct {
	*raft.InmemStore
	err error
}

func (s failingStable) Set([]byte, []byte) error       { return s.err }
func (s failingStable) SetUint64([]byte, uint64) error { return s.err }

// A failed write to the stable store is reported, naming the key and the
// error, before Raft gets the error; reads pass through.
func TestCheckedStable_reportsFailedWrites(t *testing.T) {
	var reported []error
	s := checkedStable{StableStore: failingStable{raft.NewInmemStore(), syscall.EIO}, failed: func(err error) { reported = append(reported, err) }}
	require.ErrorIs(t, s.SetUint64([]byte("CurrentTerm"), 4), syscall.EIO)
	require.ErrorIs(t, s.Set([]byte("LastVoteCand"), []byte("c2")), syscall.EIO)
	require.Len(t, reported, 2)
	require.EqualError(t, reported[0], "save Raft's CurrentTerm: input/output error")
	require.ErrorIs(t, reported[1], syscall.EIO)
	v, err := s.GetUint64([]byte("CurrentTerm"))
	require.NoError(t, err)
	require.Zero(t, v, "nothing was saved")

	ok := checkedStable{StableStore: raft.NewInmemStore(), failed: func(err error) { t.Fatalf("reported %v", err) }}
	require.NoError(t, ok.SetUint64([]byte("CurrentTerm"), 4))
	v, err = ok.GetUint64([]byte("CurrentTerm"))
	require.NoError(t, err)
	require.Equal(t, uint64(4), v)
}
