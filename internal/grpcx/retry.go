package grpcx

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/hostscale/hostscale/internal/backoff"
)

// RetryUnavailable is a unary client interceptor that calls again a call
// that failed UNAVAILABLE (a cluster electing a leader, a leader that just
// stepped down, a controller gone) for up to budget from its first attempt,
// and within the call's context: first after base, then after twice as
// long each time, up to max. Then it returns the last error, the last
// UNAVAILABLE when the context ends during an attempt.
//
// A request with a string field request_id left empty gets a random id
// before the first attempt, and every attempt sends the same: a write the
// cluster took before its answer was lost is applied once, not again.
func RetryUnavailable(base, max, budget time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if m, ok := req.(proto.Message); ok {
			stampRequestID(m)
		}
		end := time.Now().Add(budget)
		var last error
		for n := 0; ; n++ {
			err := invoker(ctx, method, req, reply, cc, opts...)
			if err != nil && last != nil && ended(ctx) {
				// The context ended during a retry: the attempt before
				// says why the call never succeeded, which a bare
				// DEADLINE_EXCEEDED would hide.
				return last
			}
			last = err
			wait := backoff.Exponential(base, max, n)
			if status.Code(err) != codes.Unavailable || time.Now().Add(wait).After(end) {
				return err
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return err
			case <-t.C:
			}
		}
	}
}

// ended reports whether ctx is done or past its deadline: gRPC's own
// timer may end a call at the deadline a moment before ctx says so.
func ended(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// stampRequestID sets m's request_id, a string field, to a random id when
// it is empty.
func stampRequestID(m proto.Message) {
	r := m.ProtoReflect()
	fd := r.Descriptor().Fields().ByName("request_id")
	if fd == nil || fd.Kind() != protoreflect.StringKind || fd.Cardinality() == protoreflect.Repeated || r.Get(fd).String() != "" {
		return
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	r.Set(fd, protoreflect.ValueOfString(hex.EncodeToString(b[:])))
}
