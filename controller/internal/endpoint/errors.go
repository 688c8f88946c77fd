package endpoint

import (
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/controller/internal/raftnode"
)

// invalid returns an INVALID_ARGUMENT error whose message starts with the
// field path and whose BadRequest detail carries it for machines.
func invalid(field, format string, args ...any) error {
	desc := fmt.Sprintf(format, args...)
	st := status.New(codes.InvalidArgument, field+": "+desc)
	if d, err := st.WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: desc}},
	}); err == nil {
		st = d
	}
	return st.Err()
}

// raftError maps an error from hashicorp/raft to a gRPC status: the one
// table where raft's sentinels become codes.
func raftError(op string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var store *raftnode.LogStoreError
	switch {
	case errors.As(err, &store):
		// A leader whose log write failed steps down; what it carried
		// was not sent to the others, but its log may hold it.
		return status.Errorf(codes.Unavailable, "%s: this node could not write its Raft log (%v) and no longer leads; the write may still commit: retry with the same request_id", op, store.Err)
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return status.Errorf(codes.Unavailable, "%s: this node is not the leader; retry", op)
	case errors.Is(err, raft.ErrLeadershipLost):
		return status.Errorf(codes.Unavailable, "%s: leadership was lost while the write was in flight; it may still commit: retry with the same request_id", op)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return status.Errorf(codes.Unavailable, "%s: raft is busy; retry", op)
	case errors.Is(err, raft.ErrRaftShutdown):
		return status.Errorf(codes.Unavailable, "%s: this node is shutting down; retry on another", op)
	case errors.Is(err, raft.ErrAbortedByRestore):
		return status.Errorf(codes.Aborted, "%s: aborted by a snapshot restore; retry", op)
	case errors.Is(err, raft.ErrUnsupportedProtocol):
		return status.Errorf(codes.FailedPrecondition, "%s: %v", op, err)
	}
	return status.Errorf(codes.Internal, "%s: %v", op, err)
}
