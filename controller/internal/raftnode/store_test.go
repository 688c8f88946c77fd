package raftnode

import (
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// TestStores_reopenAfterTheTailWasTruncated: a follower that led while cut
// off holds entries the new leader never committed, and Raft deletes them
// from the tail of its log. Its store must still open and read its whole
// log afterwards. raft-wal up to v0.4.0 marked the tail segment sealed without writing
// its index, and a node restarted after such a truncation panicked in
// raft.NewRaft ("sealed segment has no index block", hashicorp/raft-wal#31).
func TestStores_reopenAfterTheTailWasTruncated(t *testing.T) {
	for _, store := range []string{StoreWAL, StoreBoltDB} {
		t.Run(store, func(t *testing.T) {
			cfg := Config{DataDir: t.TempDir(), LogStore: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			var closers []io.Closer
			logs, _, err := openStores(cfg, &closers)
			require.NoError(t, err)
			for i := uint64(1); i <= 20; i++ {
				require.NoError(t, logs.StoreLog(&raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: []byte(fmt.Sprint(i))}))
			}
			require.NoError(t, logs.DeleteRange(15, 20)) // what raft's "clearing log suffix" does
			require.NoError(t, logs.StoreLog(&raft.Log{Index: 15, Term: 2, Type: raft.LogCommand, Data: []byte("new 15")}))
			for i := len(closers) - 1; i >= 0; i-- {
				require.NoError(t, closers[i].Close())
			}

			var again []io.Closer
			logs, _, err = openStores(cfg, &again)
			require.NoError(t, err)
			defer func() {
				for i := len(again) - 1; i >= 0; i-- {
					_ = again[i].Close()
				}
			}()
			last, err := logs.LastIndex()
			require.NoError(t, err)
			require.Equal(t, uint64(15), last)
			for i := uint64(1); i <= 15; i++ {
				var l raft.Log
				require.NoError(t, logs.GetLog(i, &l), "log %d", i)
				want := fmt.Sprint(i)
				if i == 15 {
					want = "new 15"
				}
				require.Equal(t, want, string(l.Data))
			}
		})
	}
}
