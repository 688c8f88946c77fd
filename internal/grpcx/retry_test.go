package grpcx

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// flakyPools fails ScalePool UNAVAILABLE (or with code) its first fails
// calls, and records every call's request id.
type flakyPools struct {
	pb.UnimplementedPoolServiceServer
	fails int
	code  codes.Code
	// hang: after the failures, calls wait for their context to end.
	hang bool

	mu  sync.Mutex
	ids []string
}

func (f *flakyPools) ScalePool(ctx context.Context, req *pb.ScalePoolRequest) (*pb.ScalePoolResponse, error) {
	f.mu.Lock()
	f.ids = append(f.ids, req.RequestId)
	n := len(f.ids)
	f.mu.Unlock()
	if n <= f.fails {
		return nil, status.Error(f.code, "no leader is known; retry")
	}
	if f.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &pb.ScalePoolResponse{Index: 7}, nil
}

func (f *flakyPools) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ids...)
}

// retryClient serves f on loopback and returns a client whose calls go
// through RetryUnavailable, for up to budget.
func retryClient(t *testing.T, f *flakyPools, budget time.Duration) pb.PoolServiceClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := grpc.NewServer()
	pb.RegisterPoolServiceServer(s, f)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	conn, err := Dial(lis.Addr().String(), grpc.WithChainUnaryInterceptor(RetryUnavailable(10*time.Millisecond, 40*time.Millisecond, budget)))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return pb.NewPoolServiceClient(conn)
}

// A call that fails UNAVAILABLE is sent again, with the request id it was
// given before the first attempt, until it succeeds.
func TestRetryUnavailable_retriesWithOneRequestID(t *testing.T) {
	f := &flakyPools{fails: 3, code: codes.Unavailable}
	pools := retryClient(t, f, time.Minute)
	req := &pb.ScalePoolRequest{Pool: "web", Desired: 3}
	resp, err := pools.ScalePool(context.Background(), req)
	require.NoError(t, err)
	require.Equal(t, uint64(7), resp.Index)
	ids := f.calls()
	require.Len(t, ids, 4)
	require.Len(t, ids[0], 32, "a random id: %q", ids[0])
	for _, id := range ids {
		require.Equal(t, ids[0], id, "every attempt sends the same id")
	}

	// An id the caller set is kept.
	f2 := &flakyPools{fails: 1, code: codes.Unavailable}
	_, err = retryClient(t, f2, time.Minute).ScalePool(context.Background(), &pb.ScalePoolRequest{RequestId: "mine", Pool: "web"})
	require.NoError(t, err)
	require.Equal(t, []string{"mine", "mine"}, f2.calls())
}

// Other errors are returned at once; UNAVAILABLE ones until the context
// ends, then the last of them.
func TestRetryUnavailable_givesUpWithTheContext(t *testing.T) {
	f := &flakyPools{fails: 1, code: codes.InvalidArgument}
	_, err := retryClient(t, f, time.Minute).ScalePool(context.Background(), &pb.ScalePoolRequest{Pool: "web"})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Len(t, f.calls(), 1)

	for _, c := range []struct {
		name            string
		budget, timeout time.Duration
	}{{"context", time.Minute, 300 * time.Millisecond}, {"budget", 300 * time.Millisecond, time.Minute}} {
		t.Run(c.name, func(t *testing.T) {
			f := &flakyPools{fails: 1 << 30, code: codes.Unavailable}
			ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
			defer cancel()
			start := time.Now()
			_, err := retryClient(t, f, c.budget).ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web"})
			require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
			require.ErrorContains(t, err, "no leader is known")
			require.Less(t, time.Since(start), 5*time.Second)
			n := len(f.calls())
			require.Greater(t, n, 3, "it kept trying")
			require.Less(t, n, 15, "backing off up to max between attempts")
		})
	}
}

// TestRetryUnavailable_aContextEndingDuringAnAttemptGivesTheLastUnavailable:
// when the context ends while a retry is in flight, the caller learns why
// the call never succeeded, not only that its time ran out.
func TestRetryUnavailable_aContextEndingDuringAnAttemptGivesTheLastUnavailable(t *testing.T) {
	f := &flakyPools{fails: 1, code: codes.Unavailable, hang: true}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := retryClient(t, f, time.Minute).ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web"})
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "no leader is known")
	require.Len(t, f.calls(), 2)

	// A first attempt that outlives the context has nothing better to say.
	f = &flakyPools{hang: true}
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = retryClient(t, f, time.Minute).ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web"})
	require.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
}
