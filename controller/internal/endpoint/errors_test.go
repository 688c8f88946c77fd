package endpoint

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/controller/internal/raftnode"
)

// Raft's errors become the codes a client acts on: what it may retry is
// UNAVAILABLE, a failed log write on the leader included, which names the
// disk's error.
func TestRaftError_codes(t *testing.T) {
	disk := &raftnode.LogStoreError{Err: &os.PathError{Op: "write", Path: "wal/1.wal", Err: syscall.EIO}}
	for _, c := range []struct {
		err  error
		code codes.Code
		says string
	}{
		{raft.ErrNotLeader, codes.Unavailable, "not the leader"},
		{raft.ErrLeadershipLost, codes.Unavailable, "retry with the same request_id"},
		{fmt.Errorf("apply: %w", disk), codes.Unavailable, "could not write its Raft log (write wal/1.wal: input/output error) and no longer leads; the write may still commit: retry with the same request_id"},
		{raft.ErrAbortedByRestore, codes.Aborted, "restore"},
		{errors.New("something else"), codes.Internal, "something else"},
		{status.Error(codes.NotFound, "kept"), codes.NotFound, "kept"},
	} {
		err := raftError("apply", c.err)
		require.Equal(t, c.code, status.Code(err), "%v", c.err)
		require.ErrorContains(t, err, c.says)
	}
	require.NoError(t, raftError("apply", nil))
}
