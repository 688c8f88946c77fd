package grpcx

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hostscale/hostscale/internal/promtest"
	"github.com/hostscale/hostscale/internal/syncbuf"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stuck holds the handler of "stuck" calls, which ignore their context,
// until the test that made it closes it.
var stuck chan struct{}

// entered counts the "wait" and "stuck" calls that reached their handler.
var entered atomic.Int32

// testService has one unary method that panics on "panic" and echoes
// anything else.
var testService = grpc.ServiceDesc{
	ServiceName: "test.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, req any) (any, error) {
				switch req.(*wrapperspb.StringValue).Value {
				case "panic":
					panic("boom")
				case "wait":
					entered.Add(1)
					<-ctx.Done()
					return nil, ctx.Err()
				case "stuck":
					entered.Add(1)
					<-stuck
				}
				return req, nil
			}
			return icpt(ctx, in, &grpc.UnaryServerInfo{FullMethod: "/test.Echo/Echo"}, h)
		},
	}},
}

// serveOn serves the test service on lis and returns the function that
// cancels Serve and returns its result; the test's cleanup calls it too.
func serveOn(t *testing.T, cfg ServerConfig, lis net.Listener, grace time.Duration) func() error {
	t.Helper()
	s, err := NewServer(cfg)
	require.NoError(t, err)
	s.RegisterService(&testService, struct{}{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis, grace) }()
	var (
		once    sync.Once
		stopErr error
	)
	stop := func() error {
		once.Do(func() {
			cancel()
			stopErr = <-done
		})
		return stopErr
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// listen listens on a kernel-chosen loopback port.
func listen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return lis
}

// serve serves the test service and returns a connection to it and the
// function that cancels Serve and returns its result.
func serve(t *testing.T, cfg ServerConfig, grace time.Duration) (*grpc.ClientConn, func() error) {
	t.Helper()
	lis := listen(t)
	stop := serveOn(t, cfg, lis, grace)
	conn, err := Dial(lis.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn, stop
}

func start(t *testing.T, cfg ServerConfig) *grpc.ClientConn {
	t.Helper()
	conn, stop := serve(t, cfg, time.Second)
	t.Cleanup(func() { require.NoError(t, stop()) })
	return conn
}

func echo(ctx context.Context, conn *grpc.ClientConn, s string) error {
	return conn.Invoke(ctx, "/test.Echo/Echo", wrapperspb.String(s), new(wrapperspb.StringValue))
}

func TestServer_panicBecomesInternalAndServerKeepsServing(t *testing.T) {
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	cfg := DefaultServerConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	cfg.Registerer = reg
	conn := start(t, cfg)
	ctx := context.Background()

	err := echo(ctx, conn, "panic")
	require.Equal(t, codes.Internal, status.Code(err))
	require.NotContains(t, status.Convert(err).Message(), "boom", "panic values stay in the log")
	require.Contains(t, logs.String(), "boom")
	require.NoError(t, echo(ctx, conn, "hello"))
	require.Equal(t, 1.0, promtest.Get(t, reg, "grpc_server_handled_total", map[string]string{"grpc_method": "/test.Echo/Echo", "grpc_code": "Internal"}))
	require.Equal(t, 1.0, promtest.Get(t, reg, "grpc_server_handled_total", map[string]string{"grpc_method": "/test.Echo/Echo", "grpc_code": "OK"}))
}

func TestServer_oversizeRequestIsResourceExhausted(t *testing.T) {
	cfg := DefaultServerConfig()
	cfg.MaxRecvMessageSize = 1 << 20
	conn := start(t, cfg)
	err := conn.Invoke(context.Background(), "/test.Echo/Echo", wrapperspb.String(strings.Repeat("x", 2<<20)), new(wrapperspb.StringValue))
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	require.NoError(t, echo(context.Background(), conn, "still fine"))
}

func TestServer_healthReflectionAndUnknownMethods(t *testing.T) {
	conn := start(t, DefaultServerConfig())
	ctx := context.Background()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.Status)

	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}))
	r, err := stream.Recv()
	require.NoError(t, err)
	var names []string
	for _, s := range r.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	require.Contains(t, names, "grpc.health.v1.Health")
	require.Contains(t, names, "test.Echo")
	require.NoError(t, stream.CloseSend())

	err = conn.Invoke(ctx, "/test.Echo/Nope", wrapperspb.String(""), new(wrapperspb.StringValue))
	require.Equal(t, codes.Unimplemented, status.Code(err))
}

func TestServerConfig_Validate(t *testing.T) {
	c := DefaultServerConfig()
	require.NoError(t, c.Validate())
	c.MaxRecvMessageSize = 0
	require.Error(t, c.Validate())
	c = DefaultServerConfig()
	c.KeepaliveMinTime = 0
	require.Error(t, c.Validate())
}

// A graceful stop waits for calls up to the grace, then ends their
// contexts; a handler that ignores its context does not hold the server
// for ever.
func TestServe_stopEndsCallsAfterTheGraceAndLeavesStuckHandlers(t *testing.T) {
	defer func(d time.Duration) { stopWait = d }(stopWait)
	stopWait = time.Second
	stuck = make(chan struct{})
	run := func(calls ...string) (error, time.Duration, []error) {
		conn, stop := serve(t, DefaultServerConfig(), 300*time.Millisecond)
		entered.Store(0)
		errs := make(chan error, len(calls))
		for _, c := range calls {
			go func() { errs <- echo(context.Background(), conn, c) }()
		}
		// Every call has reached its handler before the stop.
		require.Eventually(t, func() bool {
			return int(entered.Load()) == len(calls)
		}, 5*time.Second, 5*time.Millisecond)
		start := time.Now()
		err := stop()
		took := time.Since(start)
		var callErrs []error
		for range calls {
			callErrs = append(callErrs, <-errs)
		}
		return err, took, callErrs
	}

	// A call that waits on its context ends with the forced stop.
	err, took, callErrs := run("wait")
	require.NoError(t, err)
	require.GreaterOrEqual(t, took, 300*time.Millisecond, "the grace was given")
	require.Less(t, took, 300*time.Millisecond+stopWait)
	require.Equal(t, codes.Unavailable, status.Code(callErrs[0]), callErrs[0])

	// One that ignores it is left behind, and said so.
	err, took, _ = run("stuck")
	require.ErrorContains(t, err, "handlers still running")
	require.GreaterOrEqual(t, took, 300*time.Millisecond+stopWait)
	close(stuck)
	// goleak (TestMain) checks that the stuck handler's goroutines end
	// once it returns.
}

// pingCounter parses the HTTP/2 frames written on a connection, after
// skip bytes of preface, and counts the PINGs that are not
// acknowledgements.
type pingCounter struct {
	mu    sync.Mutex
	skip  int
	buf   []byte
	pings int
}

func (c *pingCounter) wrote(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.skip > 0 {
		n := min(c.skip, len(p))
		c.skip -= n
		p = p[n:]
	}
	c.buf = append(c.buf, p...)
	for len(c.buf) >= 9 {
		length := int(c.buf[0])<<16 | int(c.buf[1])<<8 | int(c.buf[2])
		if len(c.buf) < 9+length {
			return
		}
		if typ, flags := c.buf[3], c.buf[4]; typ == 0x6 && flags&0x1 == 0 {
			c.pings++
		}
		c.buf = c.buf[9+length:]
	}
}

func (c *pingCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pings
}

type countingConn struct {
	net.Conn
	c *pingCounter
}

func (cc countingConn) Write(p []byte) (int, error) {
	n, err := cc.Conn.Write(p)
	cc.c.wrote(p[:n])
	return n, err
}

type countingListener struct {
	net.Listener
	c *pingCounter
}

func (l countingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{conn, l.c}, nil
}

// One small call at a time is how most of the API is used; with gRPC's
// dynamic flow control each call's data made the receiving side send a
// PING to estimate the bandwidth, and wait for its acknowledgement.
func TestServerAndDial_smallCallsSendNoPings(t *testing.T) {
	lis := listen(t)
	fromServer := &pingCounter{}
	stop := serveOn(t, DefaultServerConfig(), countingListener{lis, fromServer}, time.Second)
	defer func() { require.NoError(t, stop()) }()

	fromClient := &pingCounter{skip: len("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")}
	conn, err := Dial(lis.Addr().String(), grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return countingConn{c, fromClient}, nil
	}))
	require.NoError(t, err)
	defer conn.Close()

	for i := range 20 {
		require.NoError(t, echo(context.Background(), conn, strings.Repeat("x", 100+i)))
	}
	require.Zero(t, fromServer.count(), "PINGs from the server")
	require.Zero(t, fromClient.count(), "PINGs from the client")
}

// A client of several addresses calls the first that accepts; when that
// one goes, the next.
func TestDialAny_firstThatAnswersThenTheNext(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	require.NoError(t, dead.Close())

	// a and b serve the test service, each counting its calls.
	type srv struct {
		addr string
		reg  *prometheus.Registry
		stop func() error
	}
	startCounting := func() srv {
		cfg := DefaultServerConfig()
		cfg.Registerer = prometheus.NewRegistry()
		lis := listen(t)
		return srv{lis.Addr().String(), cfg.Registerer.(*prometheus.Registry), serveOn(t, cfg, lis, time.Second)}
	}
	calls := func(s srv) float64 {
		return promtest.Value(promtest.Find(t, s.reg, "grpc_server_handled_total", map[string]string{"grpc_method": "/test.Echo/Echo"}))
	}
	a, b := startCounting(), startCounting()

	conn, err := DialAny([]string{deadAddr, a.addr, b.addr})
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		require.NoError(t, echo(ctx, conn, "x"))
	}
	require.EqualValues(t, 3, calls(a), "the first address that accepts takes the calls")
	require.Zero(t, calls(b))

	require.NoError(t, a.stop())
	require.Eventually(t, func() bool { return echo(ctx, conn, "x") == nil }, 10*time.Second, 20*time.Millisecond)
	require.Positive(t, calls(b), "with the first gone, the next takes the calls")

	for _, bad := range [][]string{nil, {"127.0.0.1"}, {a.addr, "nonsense"}} {
		_, err := DialAny(bad)
		require.Error(t, err, "%q", bad)
	}
}

// TestServer_auditedCallsAreLoggedAtInfo: with Audit, every call of an
// audited method leaves an info record naming its caller and peer, failed
// or not; without it, a successful call leaves none at info.
func TestServer_auditedCallsAreLoggedAtInfo(t *testing.T) {
	var logs syncbuf.Buffer
	cfg := DefaultServerConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	audit := true
	var mu sync.Mutex
	cfg.Audit = func(string) bool { mu.Lock(); defer mu.Unlock(); return audit }
	cfg.Authorize = func(ctx context.Context, _ string) (context.Context, error) { return WithCaller(ctx, "deploy"), nil }
	conn := start(t, cfg)
	ctx := context.Background()
	require.NoError(t, echo(ctx, conn, "hello"))
	require.Equal(t, codes.Internal, status.Code(echo(ctx, conn, "panic")))
	out := logs.String()
	require.Regexp(t, `level=INFO msg="grpc call" method=/test.Echo/Echo kind=unary code=OK elapsed=\S+ caller=deploy audit=true peer=127.0.0.1:\d+`, out)
	require.Regexp(t, `level=WARN msg="grpc call" method=/test.Echo/Echo kind=unary code=Internal .* audit=true`, out)

	mu.Lock()
	audit = false
	mu.Unlock()
	before := strings.Count(logs.String(), "\n")
	require.NoError(t, echo(ctx, conn, "quiet"))
	require.Equal(t, before, strings.Count(logs.String(), "\n"), "an unaudited success logs nothing at info")
}
